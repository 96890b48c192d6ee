//! Every row a reconciliation (docs/contract.md §4) reads about one user, in three statements:
//! the user's memberships (with each organization's Keycloak link) and attachments together, the
//! organizations the claim could refer to, and the `auto`/`managed` contracts of all those
//! organizations. Run it inside the per-user transaction ([`super::Store::begin_user`]) so the
//! plan is made from the rows it will be applied to. The rows stay the store's own types; the
//! reconciliation maps them into its plan's input.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::model::{Attachment, Contract, Membership, Organization};
use super::{Conn, StoreError, contracts, organizations};

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
    let (memberships, attachments) = held(conn, sub).await?;
    let claimed = organizations::matching_claim(conn, claimed_ids, claimed_aliases).await?;
    let org_ids: BTreeSet<i64> =
        memberships.iter().map(|m| m.organization_id).chain(claimed.iter().map(|o| o.id)).collect();
    let org_ids: Vec<i64> = org_ids.into_iter().collect();
    let sso_contracts = contracts::sso_contracts_of(conn, &org_ids).await?;
    Ok(UserRows { memberships, attachments, claimed, sso_contracts })
}

/// The user's memberships and attachments in one statement: what
/// [`super::memberships::list_for_user`] and [`super::attachments::list_for_user`] read, in the
/// same orders, as one `UNION ALL` whose `kind` column says which row is which. A login reads
/// both before and after it writes, so this spares it two round trips.
pub async fn held(conn: &mut Conn, sub: &str) -> Result<(Vec<Membership>, Vec<Attachment>), StoreError> {
    use sqlx::{FromRow as _, Row as _};
    // The columns both row types read by name; each branch leaves the other's as NULL, whose
    // type PostgreSQL takes from the other branch.
    Ok(run!(conn, |c| {
        let rows = sqlx::query(
            "SELECT 'm' AS kind, o.key AS sort_key,
                    m.sub, m.organization_id, o.key AS organization, o.name AS organization_name,
                    o.keycloak_id, o.keycloak_alias, m.keep_until_seen, m.manager, m.source,
                    m.created_at, m.updated_at,
                    NULL AS contract_id, NULL AS contract, NULL AS contract_name,
                    NULL AS membership_type, NULL AS active, NULL AS starts_on, NULL AS ends_on
               FROM memberships m
               JOIN organizations o ON o.id = m.organization_id
              WHERE m.sub = $1
             UNION ALL
             SELECT 'a', c.key,
                    a.sub, c.organization_id, o.key, NULL, NULL, NULL, NULL, NULL, a.source,
                    a.created_at, NULL,
                    a.contract_id, c.key, c.name, c.membership_type, c.active, c.starts_on, c.ends_on
               FROM attachments a
               JOIN contracts c ON c.id = a.contract_id
               JOIN organizations o ON o.id = c.organization_id
              WHERE a.sub = $1
              ORDER BY kind, sort_key",
        )
        .bind(sub)
        .fetch_all(c)
        .await;
        rows.and_then(|rows| {
            let (mut memberships, mut attachments) = (Vec::new(), Vec::new());
            for row in &rows {
                if row.try_get::<&str, _>("kind")? == "m" {
                    memberships.push(Membership::from_row(row)?);
                } else {
                    attachments.push(Attachment::from_row(row)?);
                }
            }
            Ok((memberships, attachments))
        })
    })?)
}
