//! Reconciliation of an organization set — a login's Keycloak organization claim, or a set an
//! admin states or Keycloak reports — into B2B memberships and contract attachments
//! (docs/contract.md §4).
//!
//! Two halves: [`plan`](mod@plan) is the decision, pure and unit-tested without IO: it
//! compares the claimed set with what the store holds for one user and lists the changes.
//! [`apply`](mod@apply) does the IO: it loads the user's rows, plans and writes the changes in
//! one per-user transaction of the store, and answers the user's B2B facts
//! ([`crate::b2b::Facts`]) afterwards. [`accept`](mod@accept) is a login's acceptance of the
//! seat assignments of its verified e-mail, run in the same transaction before the plan.

pub mod accept;
pub mod apply;
pub mod plan;

pub use plan::{
    AliasMismatch, ContractRef, CurrentAttachment, CurrentMembership, KnownContract, KnownOrg, LearnedId,
    OrgRef, Plan, UnclaimedMemberships, UserState, detached_on_removal, plan, unclaimed_memberships,
};
