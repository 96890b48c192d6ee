//! Every row a reconciliation (docs/contract.md §4) reads about one user, in four statements: the
//! user's memberships (with each organization's Keycloak link), their attachments, the
//! organizations the claim could refer to, and the `auto`/`managed` contracts of all those
//! organizations. Run it inside the per-user transaction ([`super::Store::begin_user`]) so the
//! plan is made from the rows it will be applied to. The rows stay the store's own types; the
//! reconciliation maps them into its plan's input.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::model::{Attachment, Contract, Membership, Organization};
use super::{Conn, StoreError, attachments, contracts, memberships, organizations};

/// The rows one user's reconciliation reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRows {
    /// Current memberships, organization key order.
    pub memberships: Vec<Membership>,
    /// Current attachments, contract key order.
    pub attachments: Vec<Attachment>,
    /// Organizations whose `keycloak_id` is among the claimed ids or whose `keycloak_alias` is
    /// among the claimed aliases (key order); matching rules are the planner's.
    pub claimed: Vec<Organization>,
    /// `auto` and `managed` contracts of the member and claimed organizations, whatever their
    /// dates and seats, ascending id (the order to attach them in).
    pub sso_contracts: Vec<Contract>,
}

/// Loads the [`UserRows`] of `sub` for a claim naming `claimed_ids` and `claimed_aliases`.
pub async fn load(
    conn: &mut Conn,
    sub: &str,
    claimed_ids: &[Uuid],
    claimed_aliases: &[String],
) -> Result<UserRows, StoreError> {
    let memberships = memberships::list_for_user(conn, sub).await?;
    let attachments = attachments::list_for_user(conn, sub).await?;
    let claimed = organizations::matching_claim(conn, claimed_ids, claimed_aliases).await?;
    let org_ids: BTreeSet<i64> =
        memberships.iter().map(|m| m.organization_id).chain(claimed.iter().map(|o| o.id)).collect();
    let org_ids: Vec<i64> = org_ids.into_iter().collect();
    let sso_contracts = contracts::sso_contracts_of(conn, &org_ids).await?;
    Ok(UserRows { memberships, attachments, claimed, sso_contracts })
}
