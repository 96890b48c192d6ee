//! Memberships (user × organization) with their flags. The user row must exist (foreign key):
//! reconciliation creates it in [`super::Store::begin_user`], an admin call first runs
//! [`super::users::ensure`].

use super::codec::{At, KcId, now};
use super::model::{Membership, MembershipSource};
use super::{Conn, StoreError};

from_row!(Membership, |row| Ok(Membership {
    sub: row.try_get("sub")?,
    organization_id: row.try_get("organization_id")?,
    organization: row.try_get("organization")?,
    organization_name: row.try_get("organization_name")?,
    keycloak_id: row.try_get::<Option<KcId>, _>("keycloak_id")?.map(|k| k.0),
    keycloak_alias: row.try_get("keycloak_alias")?,
    keep_until_seen: row.try_get("keep_until_seen")?,
    manager: row.try_get("manager")?,
    source: row.try_get("source")?,
    created_at: row.try_get("created_at")?,
    updated_at: row.try_get("updated_at")?,
}));

/// The user's memberships with each organization's key, name and Keycloak link, in key order.
pub async fn list_for_user(conn: &mut Conn, sub: &str) -> Result<Vec<Membership>, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, Membership>(
            "SELECT m.sub, m.organization_id, o.key AS organization, o.name AS organization_name,
                    o.keycloak_id, o.keycloak_alias, m.keep_until_seen, m.manager, m.source,
                    m.created_at, m.updated_at
               FROM memberships m
               JOIN organizations o ON o.id = m.organization_id
              WHERE m.sub = $1
              ORDER BY o.key",
        )
        .bind(sub)
        .fetch_all(c)
        .await
    })?)
}

/// One membership, if the user has it.
pub async fn get(conn: &mut Conn, sub: &str, organization_id: i64) -> Result<Option<Membership>, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, Membership>(
            "SELECT m.sub, m.organization_id, o.key AS organization, o.name AS organization_name,
                    o.keycloak_id, o.keycloak_alias, m.keep_until_seen, m.manager, m.source,
                    m.created_at, m.updated_at
               FROM memberships m
               JOIN organizations o ON o.id = m.organization_id
              WHERE m.sub = $1 AND m.organization_id = $2",
        )
        .bind(sub)
        .bind(organization_id)
        .fetch_optional(c)
        .await
    })?)
}

/// The two flags of a membership (docs/contract.md §1): kept until a login claims it, and
/// whether the member manages the organization. A struct so that a call names each flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    pub keep_until_seen: bool,
    pub manager: bool,
}

/// Adds a membership unless the user already has one (then nothing changes, flags included).
/// Returns whether it was added.
pub async fn add(
    conn: &mut Conn,
    sub: &str,
    organization_id: i64,
    source: MembershipSource,
    flags: Flags,
) -> Result<bool, StoreError> {
    let Flags { keep_until_seen, manager } = flags;
    let at = At(now());
    let done = run!(conn, |c| {
        sqlx::query(
            "INSERT INTO memberships
                 (sub, organization_id, keep_until_seen, manager, source, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)
             ON CONFLICT (sub, organization_id) DO NOTHING",
        )
        .bind(sub)
        .bind(organization_id)
        .bind(keep_until_seen)
        .bind(manager)
        .bind(source)
        .bind(at)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(done == 1)
}

/// Creates the membership with these flags, or sets the flags of the existing one (keeping its
/// source). Returns whether it was created. For the admin `PUT …/organizations/{org}`; two
/// statements, so run it in a [`super::Tx`] if the answer must be exact under concurrency.
pub async fn upsert(
    conn: &mut Conn,
    sub: &str,
    organization_id: i64,
    source: MembershipSource,
    flags: Flags,
) -> Result<bool, StoreError> {
    if add(conn, sub, organization_id, source, flags).await? {
        return Ok(true);
    }
    set_flags(conn, sub, organization_id, Some(flags.keep_until_seen), Some(flags.manager)).await?;
    Ok(false)
}

/// Changes the flags given (`None` leaves one as it is). Returns whether the membership exists.
pub async fn set_flags(
    conn: &mut Conn,
    sub: &str,
    organization_id: i64,
    keep_until_seen: Option<bool>,
    manager: Option<bool>,
) -> Result<bool, StoreError> {
    let at = At(now());
    let done = run!(conn, |c| {
        sqlx::query(
            "UPDATE memberships
                SET keep_until_seen = COALESCE($3, keep_until_seen),
                    manager = COALESCE($4, manager),
                    updated_at = $5
              WHERE sub = $1 AND organization_id = $2",
        )
        .bind(sub)
        .bind(organization_id)
        .bind(keep_until_seen)
        .bind(manager)
        .bind(at)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(done == 1)
}

/// Removes a membership (attachments are separate: see [`super::attachments::detach`]).
/// Returns whether there was one.
pub async fn delete(conn: &mut Conn, sub: &str, organization_id: i64) -> Result<bool, StoreError> {
    let done = run!(conn, |c| {
        sqlx::query("DELETE FROM memberships WHERE sub = $1 AND organization_id = $2")
            .bind(sub)
            .bind(organization_id)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(done == 1)
}
