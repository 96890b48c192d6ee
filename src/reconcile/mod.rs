//! Reconciliation of a login's Keycloak organization claim into B2B memberships and contract
//! attachments (docs/contract.md §4).
//!
//! [`plan`] is the decision, pure and unit-tested: it compares what the token claims with what
//! the store holds for one user and lists the changes. Applying them in one transaction is the
//! store's job; this module performs no IO.

pub mod apply;
pub mod plan;

pub use plan::{
    AliasMismatch, ContractRef, CurrentAttachment, CurrentMembership, KnownContract, KnownOrg, LearnedId,
    OrgRef, Plan, UserSnapshot, detached_on_removal, plan, removal_is_authoritative,
};
