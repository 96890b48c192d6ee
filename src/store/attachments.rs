//! Contract attachments (user × contract) and the seat counter that goes with them.
//!
//! Invariant: `contracts.seats_used` = number of `attachments` rows of the contract; a seat is
//! free when `seats_used + seats_allocated` (the `allocated` seat assignments, see
//! [`super::assignments`]) is below `max_learners`. Every
//! function that inserts or deletes an attachment changes the counter in the same transaction
//! (hence `&mut Tx`), so the counter can be checked and taken atomically without counting rows
//! under a lock. Why the guarded `UPDATE` cannot overfill is explained in the module docs of
//! [`super`] ("Seats"). Callers that attach several contracts in one transaction go in
//! ascending contract id order, so two transactions never wait for each other's seat rows in
//! opposite orders.

use super::codec::{At, now};
use super::model::{AttachOutcome, Attachment, AttachmentSource};
use super::{Conn, StoreError, Tx};

from_row!(Attachment, |row| Ok(Attachment {
    sub: row.try_get("sub")?,
    contract_id: row.try_get("contract_id")?,
    contract: row.try_get("contract")?,
    contract_name: row.try_get("contract_name")?,
    organization_id: row.try_get("organization_id")?,
    organization: row.try_get("organization")?,
    membership_type: row.try_get("membership_type")?,
    active: row.try_get("active")?,
    starts_on: row.try_get("starts_on")?,
    ends_on: row.try_get("ends_on")?,
    source: row.try_get("source")?,
    created_at: row.try_get("created_at")?,
}));

/// The user's attachments with what headers and the entitlement token need from each contract,
/// in contract key order. Validity is judged by the caller at serving time.
pub async fn list_for_user(conn: &mut Conn, sub: &str) -> Result<Vec<Attachment>, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, Attachment>(
            "SELECT a.sub, a.contract_id, c.key AS contract, c.name AS contract_name,
                    c.organization_id, o.key AS organization, c.membership_type, c.active,
                    c.starts_on, c.ends_on, a.source, a.created_at
               FROM attachments a
               JOIN contracts c ON c.id = a.contract_id
               JOIN organizations o ON o.id = c.organization_id
              WHERE a.sub = $1
              ORDER BY c.key",
        )
        .bind(sub)
        .fetch_all(c)
        .await
    })?)
}

/// Attaches the user to the contract if a seat is free, taking the seat.
///
/// 1. Insert the attachment, doing nothing if it exists (→ `AlreadyAttached`, no seat taken;
///    on PostgreSQL a concurrent uncommitted insert of the same pair makes this wait for it).
/// 2. Take a seat with the guarded increment; on a full contract it matches no row, the
///    attachment just inserted is deleted again (→ `Full`, nothing changed).
///
/// On PostgreSQL the insert's foreign-key check takes a `KEY SHARE` lock on the contract row and
/// the increment a `NO KEY UPDATE` lock; those two do not conflict, so attachers queue only on
/// the increment, where the `WHERE` clause is re-checked against the committed count.
pub async fn attach(
    tx: &mut Tx,
    sub: &str,
    contract_id: i64,
    source: AttachmentSource,
) -> Result<AttachOutcome, StoreError> {
    if !insert(tx, sub, contract_id, source).await? {
        return Ok(AttachOutcome::AlreadyAttached);
    }
    Ok(if claim_seat(tx, sub, contract_id).await? { AttachOutcome::Attached } else { AttachOutcome::Full })
}

/// Step 2 of [`attach`] on its own: takes the seat of the attachment `insert` just made, or
/// deletes that attachment again when the contract is full. Whether the seat was taken.
///
/// The increment locks the contract row until the transaction ends, and every attacher of the
/// contract queues on that lock. A caller with more to do in the transaction may insert first
/// and claim the seat as its last statement before committing, so the lock is held for one
/// statement and the commit (reconciliation of a login does; `crate::reconcile::apply`).
pub(crate) async fn claim_seat(tx: &mut Tx, sub: &str, contract_id: i64) -> Result<bool, StoreError> {
    if take_seat(tx, contract_id).await? {
        return Ok(true);
    }
    // Full as counted: allocated assignments past their `expires_at` may still hold seats
    // until they are marked expired. Release them and try once more.
    if super::seats::expire_due(tx, contract_id).await? > 0 && take_seat(tx, contract_id).await? {
        return Ok(true);
    }
    run!(tx, |c| {
        sqlx::query("DELETE FROM attachments WHERE sub = $1 AND contract_id = $2")
            .bind(sub)
            .bind(contract_id)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(false)
}

/// The guarded increment: takes a seat if attachments plus allocated assignments leave one
/// free (or the contract is unlimited). Whether it did.
async fn take_seat(tx: &mut Tx, contract_id: i64) -> Result<bool, StoreError> {
    let seat = run!(tx, |c| {
        sqlx::query(
            "UPDATE contracts
                SET seats_used = seats_used + 1
              WHERE id = $1
                AND (max_learners IS NULL OR max_learners = 0
                     OR seats_used + seats_allocated < max_learners)",
        )
        .bind(contract_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(seat == 1)
}

/// Attaches the user whatever the seat limit (admin `?force=true`); the seat is still counted,
/// so `seats_used` may exceed `max_learners`. Returns whether a new attachment was made.
pub async fn force_attach(
    tx: &mut Tx,
    sub: &str,
    contract_id: i64,
    source: AttachmentSource,
) -> Result<bool, StoreError> {
    if !insert(tx, sub, contract_id, source).await? {
        return Ok(false);
    }
    run!(tx, |c| {
        sqlx::query("UPDATE contracts SET seats_used = seats_used + 1 WHERE id = $1")
            .bind(contract_id)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(true)
}

/// Removes the attachment and frees its seat. Returns whether there was one.
pub async fn detach(tx: &mut Tx, sub: &str, contract_id: i64) -> Result<bool, StoreError> {
    let done = run!(tx, |c| {
        sqlx::query("DELETE FROM attachments WHERE sub = $1 AND contract_id = $2")
            .bind(sub)
            .bind(contract_id)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    if done == 0 {
        return Ok(false);
    }
    // A skip recorded before the user got this seat is over: the next skip is a change again.
    // Cleared here rather than at attach, which is on every new login's path; while attached
    // no skip can happen, so the events are the same.
    run!(tx, |c| {
        sqlx::query("DELETE FROM attachment_skips WHERE sub = $1 AND contract_id = $2")
            .bind(sub)
            .bind(contract_id)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    run!(tx, |c| {
        sqlx::query("UPDATE contracts SET seats_used = seats_used - 1 WHERE id = $1")
            .bind(contract_id)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(true)
}

/// Inserts the attachment row unless it exists; whether it was inserted. No seat is taken:
/// callers count it themselves (an accepted assignment moves its seat, see
/// [`super::assignments::accept`]).
pub(crate) async fn insert(
    conn: &mut Conn,
    sub: &str,
    contract_id: i64,
    source: AttachmentSource,
) -> Result<bool, StoreError> {
    let at = At(now());
    let done = run!(conn, |c| {
        sqlx::query(
            "INSERT INTO attachments (sub, contract_id, source, created_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (sub, contract_id) DO NOTHING",
        )
        .bind(sub)
        .bind(contract_id)
        .bind(source)
        .bind(at)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(done == 1)
}

/// Records that a full contract skipped the user (`attachment_skips`); true when the user was
/// not marked skipped for it yet, which is when an `attachment.skipped_full` event is due
/// (docs/contract.md §13: only a change of the skip state is an event).
pub async fn record_skip(tx: &mut Tx, sub: &str, contract_id: i64) -> Result<bool, StoreError> {
    let inserted = run!(tx, |c| {
        sqlx::query(
            "INSERT INTO attachment_skips (sub, contract_id, skipped_at) VALUES ($1, $2, $3)
             ON CONFLICT (sub, contract_id) DO NOTHING",
        )
        .bind(sub)
        .bind(contract_id)
        .bind(At(now()))
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(inserted == 1)
}

/// Forgets the user's skips for the contracts of one organization: the membership that made
/// them relevant is gone, so a later skip is a change again.
pub async fn clear_skips(tx: &mut Tx, sub: &str, organization_id: i64) -> Result<(), StoreError> {
    run!(tx, |c| {
        sqlx::query(
            "DELETE FROM attachment_skips
              WHERE sub = $1
                AND contract_id IN (SELECT id FROM contracts WHERE organization_id = $2)",
        )
        .bind(sub)
        .bind(organization_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(())
}
