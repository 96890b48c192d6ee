//! The seat counter of a contract, shared by attachments and seat assignments: its lock and
//! the expiry of assignments past their `expires_at`, which releases their seats
//! (docs/contract.md §12; the rules are in [`super::assignments`]' module docs).
//!
//! Its own module so that [`super::attachments`] (which expires due assignments when a seat
//! check finds the contract full) and [`super::assignments`] (which attaches on acceptance)
//! both build on it without depending on each other.

use serde_json::json;

use super::codec::{At, now};
use super::model::NewAuditEvent;
use super::{StoreError, Tx, audit};

/// Audit actor of changes nobody asked for (expiry).
const SYSTEM_ACTOR: &str = "system";

/// Locks the contract row (the seat counter) until the transaction ends; see the module docs.
pub(super) async fn lock_contract(tx: &mut Tx, contract_id: i64) -> Result<bool, StoreError> {
    let done = run!(tx, |c| {
        sqlx::query("UPDATE contracts SET seats_allocated = seats_allocated WHERE id = $1")
            .bind(contract_id)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(done == 1)
}

/// Marks the contract's allocated assignments past their `expires_at` as `expired`, releases
/// their seats and audits each (actor `system`). Returns how many.
pub async fn expire_due(tx: &mut Tx, contract_id: i64) -> Result<u64, StoreError> {
    let at = now();
    if !lock_contract(tx, contract_id).await? {
        return Ok(0);
    }
    let expired = run!(tx, |c| {
        sqlx::query_as::<_, (i64, String, String)>(
            "UPDATE seat_assignments
                SET state = 'expired', ended_at = $2
              WHERE contract_id = $1 AND state = 'allocated' AND expires_at <= $2
             RETURNING id,
                       (SELECT c.key FROM contracts c WHERE c.id = seat_assignments.contract_id),
                       (SELECT o.key FROM contracts c JOIN organizations o ON o.id = c.organization_id
                         WHERE c.id = seat_assignments.contract_id)",
        )
        .bind(contract_id)
        .bind(At(at))
        .fetch_all(c)
        .await
    })?;
    if expired.is_empty() {
        return Ok(0);
    }
    let n = expired.len() as i64;
    run!(tx, |c| {
        sqlx::query("UPDATE contracts SET seats_allocated = seats_allocated - $2 WHERE id = $1")
            .bind(contract_id)
            .bind(n)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    for (id, contract, organization) in expired {
        let event = NewAuditEvent {
            actor: SYSTEM_ACTOR.into(),
            action: "assignment.expire".into(),
            sub: None,
            organization: Some(organization),
            contract: Some(contract),
            reason: Some("expires_at reached".into()),
            detail: Some(json!({ "assignment": id })),
        };
        audit::insert(tx, &event).await?;
    }
    Ok(n as u64)
}
