//! Rows for tests that write to the store directly: the defaults every test would otherwise
//! spell out, so a test states only what matters to it (`NewContract { max_learners: …,
//! ..contract(…) }`).

use identity_sidecar::store::{MembershipType, NewContract};

/// An active contract of `organization` without dates, seat limit or price.
pub fn contract(key: &str, organization: &str, membership_type: MembershipType) -> NewContract {
    NewContract {
        key: key.into(),
        organization: organization.into(),
        name: format!("Contract {key}"),
        membership_type,
        active: true,
        starts_on: None,
        ends_on: None,
        max_learners: None,
        price: None,
    }
}
