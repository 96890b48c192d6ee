//! Seat assignments by e-mail (docs/contract.md §12) and the per-contract usage report.
//!
//! # Seats
//!
//! `contracts.seats_allocated` counts the contract's rows in state `allocated` and is changed
//! only in the transaction that moves a row into or out of that state. A seat is free when
//! `seats_used + seats_allocated < max_learners` ([`super::attachments`]'s guarded increment
//! checks exactly that), so attachments, code redemptions and assignments share one counter
//! row and one lock.
//!
//! An `allocated` row past its `expires_at` still counts in `seats_allocated` until it is
//! marked `expired` ([`super::seats::expire_due`]). Reads never wait for that: a contract as read
//! ([`super::contracts`]) counts only allocated rows that have not expired, and this module
//! reads such rows as `expired`. Rows are marked (and audited, actor `system`) by
//! [`super::seats::expire_due`] whenever a seat check finds the contract full and before assignments are
//! created for it; so a seat is never refused because of an expired assignment, and no
//! background task is needed.
//!
//! # Locks (PostgreSQL)
//!
//! Every writer of an assignment's state locks the contract row first (a no-op or counting
//! `UPDATE`), then the assignment rows: the same order for creation, acceptance, revocation and
//! expiry, so they never deadlock on each other. Once the contract row is locked, each later
//! statement of the transaction (READ COMMITTED: a fresh snapshot per statement) sees every
//! change committed by whoever held the lock before, so guarded state changes are exact.

use serde::Serialize;
use time::{Date, OffsetDateTime};
use utoipa::ToSchema;

use super::codec::{At, now};
use super::model::{Assignment, AssignmentState, AttachmentSource};
use super::seats::{expire_due, lock_contract};
use super::{Conn, StoreError, Tx, attachments, page};

/// Most e-mails one creation request may name.
pub const MAX_EMAILS: usize = 1000;

from_row!(Assignment, |row| Ok(Assignment {
    id: row.try_get("id")?,
    contract_id: row.try_get("contract_id")?,
    contract: row.try_get("contract")?,
    organization: row.try_get("organization")?,
    email: row.try_get("email")?,
    state: row.try_get("state")?,
    created_at: row.try_get("created_at")?,
    expires_at: row.try_get("expires_at")?,
    accepted_at: row.try_get("accepted_at")?,
    sub: row.try_get("sub")?,
    revoked_at: row.try_get("revoked_at")?,
}));

/// The columns of an [`Assignment`]; `$1` must be bound to now. An allocated row past its
/// `expires_at` reads as `expired`.
macro_rules! assignment_columns {
    () => {
        "a.id, a.contract_id, c.key AS contract, o.key AS organization, a.email,
         CASE WHEN a.state = 'allocated' AND a.expires_at <= $1 THEN 'expired' ELSE a.state END AS state,
         a.created_at, a.expires_at, a.accepted_at, a.sub,
         CASE WHEN a.state = 'revoked' THEN a.ended_at END AS revoked_at
           FROM seat_assignments a
           JOIN contracts c ON c.id = a.contract_id
           JOIN organizations o ON o.id = c.organization_id"
    };
}

/// What [`create`] made of a list of e-mails.
#[derive(Debug, Default)]
pub struct Created {
    /// New `allocated` assignments, in the order of the e-mails.
    pub created: Vec<Assignment>,
    /// Live (`allocated` or `accepted`) assignments the contract already had for an e-mail.
    pub existing: Vec<Assignment>,
    /// Assignments past their `expires_at` that were marked `expired` first.
    pub expired: u64,
}

/// Reserves one seat per e-mail (lower-cased, deduplicated by the caller) of the contract, all
/// or nothing: `Ok(None)` when the contract has fewer free seats than new e-mails — the caller
/// must then roll back (assignments were inserted before the count was checked). E-mails with
/// a live assignment go to `existing` and take no seat.
pub async fn create(
    tx: &mut Tx,
    contract_id: i64,
    emails: &[String],
    expires_at: Option<OffsetDateTime>,
) -> Result<Option<Created>, StoreError> {
    // Locks the contract row first and frees what has expired.
    let expired = expire_due(tx, contract_id).await?;
    let at = At(now());
    let mut new_ids = Vec::new();
    let mut existing_ids = Vec::new();
    for email in emails {
        let id = run!(tx, |c| {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO seat_assignments (contract_id, email, state, created_at, expires_at)
                 VALUES ($1, $2, 'allocated', $3, $4)
                 ON CONFLICT (contract_id, email) WHERE state IN ('allocated', 'accepted') DO NOTHING
                 RETURNING id",
            )
            .bind(contract_id)
            .bind(email)
            .bind(at)
            .bind(expires_at.map(At))
            .fetch_optional(c)
            .await
        })?;
        match id {
            Some(id) => new_ids.push(id),
            None => {
                let id = run!(tx, |c| {
                    sqlx::query_scalar::<_, i64>(
                        "SELECT id FROM seat_assignments
                          WHERE contract_id = $1 AND email = $2 AND state IN ('allocated', 'accepted')",
                    )
                    .bind(contract_id)
                    .bind(email)
                    .fetch_one(c)
                    .await
                })?;
                existing_ids.push(id);
            }
        }
    }
    if !new_ids.is_empty() {
        let n = new_ids.len() as i64;
        let seats = run!(tx, |c| {
            sqlx::query(
                "UPDATE contracts
                    SET seats_allocated = seats_allocated + $2
                  WHERE id = $1
                    AND (max_learners IS NULL OR max_learners = 0
                         OR seats_used + seats_allocated + $2 <= max_learners)",
            )
            .bind(contract_id)
            .bind(n)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        if seats == 0 {
            return Ok(None);
        }
    }
    let mut created = Vec::with_capacity(new_ids.len());
    for id in new_ids {
        created.push(get(tx, id).await?);
    }
    let mut existing = Vec::with_capacity(existing_ids.len());
    for id in existing_ids {
        existing.push(get(tx, id).await?);
    }
    Ok(Some(Created { created, existing, expired }))
}

/// The assignment with this id (`NotFound` if none).
pub async fn get(conn: &mut Conn, id: i64) -> Result<Assignment, StoreError> {
    let found = run!(conn, |c| {
        sqlx::query_as::<_, Assignment>(concat!("SELECT ", assignment_columns!(), " WHERE a.id = $2"))
            .bind(At(now()))
            .bind(id)
            .fetch_optional(c)
            .await
    })?;
    found.ok_or(StoreError::NotFound)
}

/// One page of the contract's assignments, oldest first, all or in one state (as read: an
/// allocated one past `expires_at` is `expired`).
pub async fn list(
    conn: &mut Conn,
    contract_id: i64,
    state: Option<AssignmentState>,
    limit: u32,
    offset: u32,
) -> Result<Vec<Assignment>, StoreError> {
    let (limit, offset) = page(limit, offset);
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, Assignment>(concat!(
            "SELECT * FROM (SELECT ",
            assignment_columns!(),
            " WHERE a.contract_id = $2) l
              WHERE $3 IS NULL OR l.state = $3
              ORDER BY l.id
              LIMIT $4 OFFSET $5"
        ))
        .bind(At(now()))
        .bind(contract_id)
        .bind(state.map(AssignmentState::as_str))
        .bind(limit)
        .bind(offset)
        .fetch_all(c)
        .await
    })?)
}

/// Number of the contract's assignments, all or in one state (as read), for paging.
pub async fn count(
    conn: &mut Conn,
    contract_id: i64,
    state: Option<AssignmentState>,
) -> Result<i64, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM (
                 SELECT CASE WHEN state = 'allocated' AND expires_at <= $1 THEN 'expired' ELSE state END AS state
                   FROM seat_assignments
                  WHERE contract_id = $2) l
              WHERE $3 IS NULL OR l.state = $3",
        )
        .bind(At(now()))
        .bind(contract_id)
        .bind(state.map(AssignmentState::as_str))
        .fetch_one(c)
        .await
    })?)
}

/// Revokes an allocated assignment that has not expired, releasing its seat. `false` when it
/// is not (or no longer) allocated; nothing is changed then.
pub async fn revoke(tx: &mut Tx, assignment: &Assignment) -> Result<bool, StoreError> {
    lock_contract(tx, assignment.contract_id).await?;
    let done = run!(tx, |c| {
        sqlx::query(
            "UPDATE seat_assignments
                SET state = 'revoked', ended_at = $2
              WHERE id = $1 AND state = 'allocated' AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(assignment.id)
        .bind(At(now()))
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    if done == 0 {
        return Ok(false);
    }
    release_allocated(tx, assignment.contract_id, 0).await?;
    Ok(true)
}

/// One allocated seat leaves `seats_allocated`; `to_attachments` (0 or 1) of it moves to
/// `seats_used`.
async fn release_allocated(tx: &mut Tx, contract_id: i64, to_attachments: i64) -> Result<(), StoreError> {
    run!(tx, |c| {
        sqlx::query(
            "UPDATE contracts
                SET seats_allocated = seats_allocated - 1, seats_used = seats_used + $2
              WHERE id = $1",
        )
        .bind(contract_id)
        .bind(to_attachments)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// An allocated, unexpired assignment of an e-mail, with what acceptance needs to know about
/// its contract and organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: i64,
    pub contract_id: i64,
    pub contract: String,
    pub active: bool,
    pub starts_on: Option<Date>,
    pub ends_on: Option<Date>,
    pub organization_id: i64,
    pub organization: String,
    pub keycloak_id: Option<uuid::Uuid>,
}

from_row!(Pending, |row| Ok(Pending {
    id: row.try_get("id")?,
    contract_id: row.try_get("contract_id")?,
    contract: row.try_get("contract")?,
    active: row.try_get("active")?,
    starts_on: row.try_get("starts_on")?,
    ends_on: row.try_get("ends_on")?,
    organization_id: row.try_get("organization_id")?,
    organization: row.try_get("organization")?,
    keycloak_id: row.try_get::<Option<super::codec::KcId>, _>("keycloak_id")?.map(|k| k.0),
}));

/// The allocated, unexpired assignments of `email` (lower-cased), in ascending contract id (the
/// order contract rows are locked in). Validity of the contract is judged by the caller.
pub async fn pending_for_email(conn: &mut Conn, email: &str) -> Result<Vec<Pending>, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, Pending>(
            "SELECT a.id, a.contract_id, c.key AS contract, c.active, c.starts_on, c.ends_on,
                    c.organization_id, o.key AS organization, o.keycloak_id
               FROM seat_assignments a
               JOIN contracts c ON c.id = a.contract_id
               JOIN organizations o ON o.id = c.organization_id
              WHERE a.email = $1 AND a.state = 'allocated'
                AND (a.expires_at IS NULL OR a.expires_at > $2)
              ORDER BY a.contract_id, a.id",
        )
        .bind(email)
        .bind(At(now()))
        .fetch_all(c)
        .await
    })?)
}

/// Whether an acceptance attached the user or found them attached already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// The assignment's seat became the user's new attachment (`source = assignment`).
    Attached,
    /// The user held the contract already; the assignment's seat was released.
    AlreadyAttached,
}

/// Accepts the assignment for `sub` in the caller's per-user transaction: the attachment
/// (`source = assignment`) takes the assignment's seat, or the seat is released when the user
/// is attached already. `None` when the assignment is no longer allocated (revoked, expired or
/// accepted meanwhile); nothing is changed then. Membership and audit are the caller's.
pub async fn accept(tx: &mut Tx, sub: &str, pending: &Pending) -> Result<Option<Accepted>, StoreError> {
    let inserted = attachments::insert(tx, sub, pending.contract_id, AttachmentSource::Assignment).await?;
    lock_contract(tx, pending.contract_id).await?;
    let at = At(now());
    let done = run!(tx, |c| {
        sqlx::query(
            "UPDATE seat_assignments
                SET state = 'accepted', sub = $2, accepted_at = $3
              WHERE id = $1 AND state = 'allocated' AND (expires_at IS NULL OR expires_at > $3)",
        )
        .bind(pending.id)
        .bind(sub)
        .bind(at)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    if done == 0 {
        if inserted {
            run!(tx, |c| {
                sqlx::query("DELETE FROM attachments WHERE sub = $1 AND contract_id = $2")
                    .bind(sub)
                    .bind(pending.contract_id)
                    .execute(c)
                    .await
                    .map(|r| r.rows_affected())
            })?;
        }
        return Ok(None);
    }
    release_allocated(tx, pending.contract_id, i64::from(inserted)).await?;
    Ok(Some(if inserted { Accepted::Attached } else { Accepted::AlreadyAttached }))
}

/// Erasure (docs/contract.md §12): the e-mail leaves every assignment the user accepted or
/// that names their last known e-mail; rows and states stay. Run before the user row goes.
pub async fn erase_email(tx: &mut Tx, sub: &str) -> Result<u64, StoreError> {
    Ok(run!(tx, |c| {
        sqlx::query(
            "UPDATE seat_assignments
                SET email = NULL
              WHERE email IS NOT NULL
                AND (sub = $1 OR email = (SELECT lower(u.email) FROM users u WHERE u.sub = $1))",
        )
        .bind(sub)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?)
}

/// A contract's seats, codes and assignments at a glance (`GET …/contracts/{key}/usage`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Usage {
    /// `null` or `0`: unlimited.
    pub max_learners: Option<i64>,
    /// Attachments plus allocated, unexpired assignments (as in the contract).
    pub seats_used: i64,
    /// Attachments per source (`sso`, `code`, `admin`, `assignment`); every source is listed.
    #[schema(value_type = Object)]
    pub attachments_by_source: std::collections::BTreeMap<String, i64>,
    pub codes: CodeUsage,
    pub assignments: AssignmentUsage,
}

/// Enrollment codes of a contract: made, redeemed at least once, revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct CodeUsage {
    pub issued: i64,
    pub redeemed: i64,
    pub revoked: i64,
}

/// Assignments of a contract per state (as read).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct AssignmentUsage {
    pub allocated: i64,
    pub accepted: i64,
    pub expired: i64,
    pub revoked: i64,
}

/// The usage report of a contract (three statements).
pub async fn usage(
    conn: &mut Conn,
    contract_id: i64,
    max_learners: Option<i64>,
    seats_used: i64,
) -> Result<Usage, StoreError> {
    let sources = run!(conn, |c| {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT source, count(*) FROM attachments WHERE contract_id = $1 GROUP BY source",
        )
        .bind(contract_id)
        .fetch_all(c)
        .await
    })?;
    let mut attachments_by_source: std::collections::BTreeMap<String, i64> = [
        AttachmentSource::Sso,
        AttachmentSource::Code,
        AttachmentSource::Admin,
        AttachmentSource::Assignment,
    ]
    .iter()
    .map(|s| (s.as_str().to_owned(), 0))
    .collect();
    attachments_by_source.extend(sources);
    let (issued, redeemed, revoked) = run!(conn, |c| {
        sqlx::query_as::<_, (i64, i64, i64)>(
            "SELECT count(*),
                    count(CASE WHEN redeemed_by IS NOT NULL
                                 OR EXISTS (SELECT 1 FROM redemptions r WHERE r.code_id = k.id)
                               THEN 1 END),
                    count(CASE WHEN revoked_at IS NOT NULL THEN 1 END)
               FROM enrollment_codes k
              WHERE contract_id = $1",
        )
        .bind(contract_id)
        .fetch_one(c)
        .await
    })?;
    let states = run!(conn, |c| {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT l.state, count(*) FROM (
                 SELECT CASE WHEN state = 'allocated' AND expires_at <= $1 THEN 'expired' ELSE state END AS state
                   FROM seat_assignments
                  WHERE contract_id = $2) l
              GROUP BY l.state",
        )
        .bind(At(now()))
        .bind(contract_id)
        .fetch_all(c)
        .await
    })?;
    let mut assignments = AssignmentUsage::default();
    for (state, n) in states {
        match state.parse::<AssignmentState>() {
            Ok(AssignmentState::Allocated) => assignments.allocated = n,
            Ok(AssignmentState::Accepted) => assignments.accepted = n,
            Ok(AssignmentState::Expired) => assignments.expired = n,
            Ok(AssignmentState::Revoked) => assignments.revoked = n,
            Err(_) => {}
        }
    }
    Ok(Usage {
        max_learners,
        seats_used,
        attachments_by_source,
        codes: CodeUsage { issued, redeemed, revoked },
        assignments,
    })
}
