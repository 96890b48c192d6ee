//! The audit trail: every membership and attachment change, with actor, reason and time.
//! Rows are never updated; they name organizations and contracts by key so they outlive them.

use sqlx::AssertSqlSafe;

use super::codec::{At, now};
use super::model::{AuditEvent, AuditQuery, NewAuditEvent};
use super::{Conn, StoreError, Tx};

from_row!(AuditEvent, |row| Ok(AuditEvent {
    id: row.try_get("id")?,
    at: row.try_get("at")?,
    actor: row.try_get("actor")?,
    action: row.try_get("action")?,
    sub: row.try_get("sub")?,
    organization: row.try_get("organization")?,
    contract: row.try_get("contract")?,
    reason: row.try_get("reason")?,
    detail: row.try_get("detail")?,
}));

/// Records an event; returns its id.
pub async fn insert(conn: &mut Conn, event: &NewAuditEvent) -> Result<i64, StoreError> {
    let at = At(now());
    Ok(run!(conn, |c| {
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO audit_events
                 (at, actor, action, sub, organization, contract, reason, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             RETURNING id",
        )
        .bind(at)
        .bind(&event.actor)
        .bind(&event.action)
        .bind(&event.sub)
        .bind(&event.organization)
        .bind(&event.contract)
        .bind(&event.reason)
        .bind(&event.detail)
        .fetch_one(c)
        .await
    })?)
}

/// Deletes an event this transaction recorded and is about to undo before committing: the
/// `attachment.add` a login writes ahead of claiming the seat, when the contract turns out full
/// (`crate::reconcile::apply`). No committed row is ever deleted or changed.
pub(crate) async fn withdraw(tx: &mut Tx, id: i64) -> Result<(), StoreError> {
    run!(tx, |c| {
        sqlx::query("DELETE FROM audit_events WHERE id = $1")
            .bind(id)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// Events matching every filter set in `query`, newest first, at most `query.limit`.
///
/// The `WHERE` clause lists only the filters that are set, so each lookup can use its
/// `(column, id)` index; a fixed `($1 IS NULL OR sub = $1)` form would leave SQLite (which plans
/// a statement once) scanning the whole table.
pub async fn query(conn: &mut Conn, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
    let mut sql = String::from(
        "SELECT id, at, actor, action, sub, organization, contract, reason, detail
           FROM audit_events
          WHERE TRUE",
    );
    let mut texts: Vec<&str> = Vec::new();
    let filters = [("sub", &query.sub), ("organization", &query.organization), ("contract", &query.contract)];
    for (column, value) in filters {
        if let Some(value) = value {
            texts.push(value);
            sql.push_str(&format!(" AND {column} = ${}", texts.len()));
        }
    }
    let mut next = texts.len() + 1;
    if query.before_id.is_some() {
        sql.push_str(&format!(" AND id < ${next}"));
        next += 1;
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${next}"));
    let limit = i64::from(query.limit);

    Ok(run!(conn, |c| {
        let mut q = sqlx::query_as::<_, AuditEvent>(AssertSqlSafe(sql.as_str()));
        for text in &texts {
            q = q.bind(*text);
        }
        if let Some(before) = query.before_id {
            q = q.bind(before);
        }
        q.bind(limit).fetch_all(c).await
    })?)
}
