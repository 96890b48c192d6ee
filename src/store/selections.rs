//! The active organization a session selected (docs/contract.md §10): one row per user and
//! session (`sid`; the empty string for tokens without one, so such a user keeps one
//! selection). The row names the organization by id; deleting the organization deletes the
//! row (`ON DELETE CASCADE`), erasing the user deletes it too ([`super::users::erase`]).
//! Whether the user is still a member is not checked here: a selection whose membership is
//! gone is ignored when the active organization is chosen, so it needs no cleanup on removal.

use super::codec::{At, now};
use super::{Conn, StoreError};

/// The key of the organization the session `(sub, sid)` selected, if any.
pub async fn get(conn: &mut Conn, sub: &str, sid: &str) -> Result<Option<String>, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_scalar::<_, String>(
            "SELECT o.key
               FROM active_organization_selections s
               JOIN organizations o ON o.id = s.organization_id
              WHERE s.sub = $1 AND s.sid = $2",
        )
        .bind(sub)
        .bind(sid)
        .fetch_optional(c)
        .await
    })?)
}

/// Records that the session `(sub, sid)` selected the organization with key `organization`,
/// replacing an earlier selection of that session. The user row must exist. Returns `false`
/// when no organization has that key (nothing is written).
pub async fn put(conn: &mut Conn, sub: &str, sid: &str, organization: &str) -> Result<bool, StoreError> {
    let at = At(now());
    let written = run!(conn, |c| {
        sqlx::query(
            "INSERT INTO active_organization_selections (sub, sid, organization_id, selected_at)
             SELECT $1, $2, id, $4 FROM organizations WHERE key = $3
             ON CONFLICT (sub, sid) DO UPDATE
                SET organization_id = excluded.organization_id, selected_at = excluded.selected_at",
        )
        .bind(sub)
        .bind(sid)
        .bind(organization)
        .bind(at)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(written == 1)
}

/// Forgets the selection of the session `(sub, sid)`. Returns whether there was one.
pub async fn delete(conn: &mut Conn, sub: &str, sid: &str) -> Result<bool, StoreError> {
    let deleted = run!(conn, |c| {
        sqlx::query("DELETE FROM active_organization_selections WHERE sub = $1 AND sid = $2")
            .bind(sub)
            .bind(sid)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(deleted > 0)
}

/// Number of selections a user holds, over all sessions (tests, the erasure check).
pub async fn count_for_user(conn: &mut Conn, sub: &str) -> Result<i64, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM active_organization_selections WHERE sub = $1")
            .bind(sub)
            .fetch_one(c)
            .await
    })?)
}
