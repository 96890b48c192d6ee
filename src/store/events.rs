//! Change events (docs/contract.md §13) as the store keeps them: audit rows with a `sequence`.
//!
//! # The outbox is the audit trail
//!
//! Every change already writes its audit row ([`super::audit::insert`]) in the change's own
//! transaction, so "no change without its event, no event without its change" holds by
//! construction, and a login costs no extra statement for its events. Which audit actions are
//! change events, and under which CloudEvents type, is [`crate::events`]' closed list.
//!
//! # Numbering after commit
//!
//! A row is written without a sequence. [`sequence_pending`] numbers committed rows in id order,
//! continuing after the highest sequence so far, in one statement, one step at a time: on
//! PostgreSQL under a transaction-level advisory lock taken before the statement's snapshot,
//! on SQLite under the single write lock (`BEGIN IMMEDIATE`). A step therefore sees every
//! number the previous step assigned, and its own numbers become visible together at its
//! commit. Readers filter on `sequence > after`: once a reader has seen N, every row numbered
//! N or less was numbered by a committed step it could already see, and a row that commits
//! later gets a number above the step's maximum. Writers never wait for the sequence: a login
//! inserts its row as before, and numbering costs one `UPDATE` per batch, not per change.
//!
//! Rows whose action is not a change event are numbered too (the sequence has gaps in the
//! feed); numbering everything keeps the step a single indexed statement.

use sqlx::AssertSqlSafe;
use time::OffsetDateTime;

use super::codec::At;
use super::model::AuditEvent;
use super::{Backend, Conn, Store, StoreError};

/// Rows one step numbers at most; [`sequence_pending`] repeats while steps come back full.
pub const SEQUENCE_BATCH: i64 = 1000;

/// Key of PostgreSQL's advisory lock that makes one sequencing step run at a time across
/// replicas (any constant no other part of the schema uses; "idsc" in ASCII).
const SEQUENCER_LOCK: i64 = 0x6964_7363;

/// A numbered audit row: a change event as stored.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub sequence: i64,
    pub audit: AuditEvent,
}

from_row!(StoredEvent, |row| Ok(StoredEvent {
    sequence: row.try_get("sequence")?,
    // The audit columns, read as the audit trail reads them.
    audit: sqlx::FromRow::from_row(row)?,
}));

/// Numbers every committed row that has no sequence yet; returns how many it numbered.
/// Cheap when there is nothing to do (one indexed lookup). On PostgreSQL a step another
/// replica is running right now is not waited for: its rows are numbered by it.
pub async fn sequence_pending(store: &Store) -> Result<u64, StoreError> {
    sequence_all(store, Wait::No).await
}

/// Like [`sequence_pending`], but on PostgreSQL a step running right now is waited for:
/// after this returns, every row committed before the call is numbered. The pull feed needs
/// that, or a read racing another replica's step would answer without changes committed
/// before it and a consumer that stops at a short page would think it had caught up.
pub async fn sequence_committed(store: &Store) -> Result<u64, StoreError> {
    sequence_all(store, Wait::Yes).await
}

/// Whether a step waits for another one running on PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Yes,
    No,
}

async fn sequence_all(store: &Store, wait: Wait) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let numbered = sequence_batch(store, wait).await?;
        total += numbered;
        if numbered < SEQUENCE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// One step: at most [`SEQUENCE_BATCH`] rows, in one transaction.
async fn sequence_batch(store: &Store, wait: Wait) -> Result<u64, StoreError> {
    // `MAX(sequence)` is read by the same statement that writes, after the lock: it includes
    // the previous step's numbers. `ROW_NUMBER` follows id order, so the rows of one
    // transaction keep their order.
    const NUMBER: &str = "UPDATE audit_events SET sequence = numbered.sequence
          FROM (SELECT id,
                       (SELECT COALESCE(MAX(sequence), 0) FROM audit_events)
                           + ROW_NUMBER() OVER (ORDER BY id) AS sequence
                  FROM audit_events
                 WHERE sequence IS NULL
                 ORDER BY id
                 LIMIT $1) AS numbered
         WHERE audit_events.id = numbered.id";
    let mut tx = store.begin().await?;
    let numbered = match tx.backend() {
        // `BEGIN IMMEDIATE` already made this the only writer.
        Backend::Sqlite(c) => sqlx::query(NUMBER).bind(SEQUENCE_BATCH).execute(c).await?.rows_affected(),
        Backend::Postgres(c) => {
            // Released at commit, after the commit is visible: the next step's snapshot
            // (taken after it acquires the lock) includes these numbers.
            if wait == Wait::Yes {
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SEQUENCER_LOCK).execute(&mut *c).await?;
            } else {
                let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                    .bind(SEQUENCER_LOCK)
                    .fetch_one(&mut *c)
                    .await?;
                if !locked {
                    return Ok(0);
                }
            }
            sqlx::query(NUMBER).bind(SEQUENCE_BATCH).execute(c).await?.rows_affected()
        }
    };
    tx.commit().await?;
    Ok(numbered)
}

/// Events after `after` and up to `upto`, in sequence order, at most `limit`, whose action is
/// one of `actions` (never empty: the caller passes the closed list or a part of it).
pub async fn after(
    conn: &mut Conn,
    after: i64,
    upto: i64,
    actions: &[&str],
    limit: u32,
) -> Result<Vec<StoredEvent>, StoreError> {
    debug_assert!(!actions.is_empty());
    // The list is short and fixed (the closed list of types); written as placeholders so each
    // distinct list is one prepared statement.
    let placeholders: Vec<String> = (0..actions.len()).map(|i| format!("${}", i + 4)).collect();
    let sql = format!(
        "SELECT sequence, id, at, actor, action, sub, organization, contract, reason, detail
           FROM audit_events
          WHERE sequence > $1 AND sequence <= $3 AND action IN ({})
          ORDER BY sequence
          LIMIT $2",
        placeholders.join(", ")
    );
    Ok(run!(conn, |c| {
        let mut q = sqlx::query_as::<_, StoredEvent>(AssertSqlSafe(sql.as_str()))
            .bind(after)
            .bind(i64::from(limit))
            .bind(upto);
        for action in actions {
            q = q.bind(*action);
        }
        q.fetch_all(c).await
    })?)
}

/// The highest sequence assigned so far (0 before the first).
pub async fn head(conn: &mut Conn) -> Result<i64, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(sequence) FROM audit_events").fetch_one(c).await
    })?
    .unwrap_or(0))
}

/// The time of the first row numbered after `after` (any action), if there is one: when it
/// is older than the retention, a reader resuming at `after` has missed events.
pub async fn next_at(conn: &mut Conn, after: i64) -> Result<Option<OffsetDateTime>, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_scalar::<_, OffsetDateTime>(
            "SELECT at FROM audit_events WHERE sequence > $1 ORDER BY sequence LIMIT 1",
        )
        .bind(after)
        .fetch_optional(c)
        .await
    })?)
}

/// The position just before the oldest row still within retention (written at or after
/// `cutoff`): where a reader without a position starts. The head when nothing is that recent.
///
/// "Oldest" by time, through the `at` index: a row's sequence follows its commit, so a row
/// written within a transaction's length of `cutoff` may sort just before this position and
/// be left out; the retention's edge is exact only to that length.
pub async fn start_of_retention(conn: &mut Conn, cutoff: OffsetDateTime) -> Result<i64, StoreError> {
    let oldest = run!(conn, |c| {
        sqlx::query_scalar::<_, i64>(
            "SELECT sequence FROM audit_events
              WHERE at >= $1 AND sequence IS NOT NULL
              ORDER BY at
              LIMIT 1",
        )
        .bind(At(cutoff))
        .fetch_optional(c)
        .await
    })?;
    match oldest {
        Some(sequence) => Ok(sequence - 1),
        None => head(conn).await,
    }
}

/// Where a delivery target (a webhook, the Redis stream) stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub target: String,
    /// The last sequence the target acknowledged (or had nothing to receive up to).
    pub delivered: i64,
    /// `active` or `dead`.
    pub state: String,
    /// Failed attempts since the last acknowledged event.
    pub failures: i64,
    /// Failed attempts ever.
    pub attempts_failed: i64,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<OffsetDateTime>,
    pub delivered_at: Option<OffsetDateTime>,
    /// The replica delivering it now, while `lease_until` lies ahead.
    pub lease_owner: Option<String>,
    pub lease_until: Option<OffsetDateTime>,
}

from_row!(Delivery, |row| Ok(Delivery {
    target: row.try_get("target")?,
    delivered: row.try_get("delivered")?,
    state: row.try_get("state")?,
    failures: row.try_get("failures")?,
    attempts_failed: row.try_get("attempts_failed")?,
    last_error: row.try_get("last_error")?,
    last_attempt_at: row.try_get("last_attempt_at")?,
    delivered_at: row.try_get("delivered_at")?,
    lease_owner: row.try_get("lease_owner")?,
    lease_until: row.try_get("lease_until")?,
}));

const DELIVERY_COLUMNS: &str = "target, delivered, state, failures, attempts_failed, last_error,
     last_attempt_at, delivered_at, lease_owner, lease_until";

/// Creates the target's row at `start` unless it exists (a new target starts at the newest
/// event; the pull feed covers what came before).
pub async fn ensure_target(conn: &mut Conn, target: &str, start: i64) -> Result<(), StoreError> {
    run!(conn, |c| {
        sqlx::query(
            "INSERT INTO event_deliveries (target, delivered, state) VALUES ($1, $2, 'active')
             ON CONFLICT (target) DO NOTHING",
        )
        .bind(target)
        .bind(start)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// Takes or renews the lease of an `active` target for `owner` until `until`: the row when
/// `owner` holds it now, `None` when another replica's lease still runs (or the target is dead).
/// One guarded `UPDATE`, so two replicas can never both get it.
pub async fn lease(
    conn: &mut Conn,
    target: &str,
    owner: &str,
    now: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<Option<Delivery>, StoreError> {
    let sql = format!(
        "UPDATE event_deliveries SET lease_owner = $2, lease_until = $4
          WHERE target = $1 AND state = 'active'
            AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < $3)
          RETURNING {DELIVERY_COLUMNS}"
    );
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, Delivery>(AssertSqlSafe(sql.as_str()))
            .bind(target)
            .bind(owner)
            .bind(At(now))
            .bind(At(until))
            .fetch_optional(c)
            .await
    })?)
}

/// Records that the target acknowledged everything up to `sequence` (an event, or a stretch
/// without events of its types). Only the lease holder moves it, and only forward; false when
/// `owner` lost the lease.
pub async fn advance(
    conn: &mut Conn,
    target: &str,
    owner: &str,
    sequence: i64,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let done = run!(conn, |c| {
        sqlx::query(
            "UPDATE event_deliveries
                SET delivered = $3, failures = 0, last_error = NULL, delivered_at = $4
              WHERE target = $1 AND lease_owner = $2 AND delivered <= $3",
        )
        .bind(target)
        .bind(owner)
        .bind(sequence)
        .bind(At(now))
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(done == 1)
}

/// Records a failed attempt (the error as the target's `last_error`); false when `owner` lost
/// the lease.
pub async fn failed(
    conn: &mut Conn,
    target: &str,
    owner: &str,
    error: &str,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let done = run!(conn, |c| {
        sqlx::query(
            "UPDATE event_deliveries
                SET failures = failures + 1, attempts_failed = attempts_failed + 1,
                    last_error = $3, last_attempt_at = $4
              WHERE target = $1 AND lease_owner = $2",
        )
        .bind(target)
        .bind(owner)
        .bind(error)
        .bind(At(now))
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(done == 1)
}

/// Marks the target `dead` (it fell behind the retention) and gives up its lease.
pub async fn mark_dead(conn: &mut Conn, target: &str, owner: &str, reason: &str) -> Result<bool, StoreError> {
    let done = run!(conn, |c| {
        sqlx::query(
            "UPDATE event_deliveries
                SET state = 'dead', last_error = $3, lease_owner = NULL, lease_until = NULL
              WHERE target = $1 AND lease_owner = $2 AND state = 'active'",
        )
        .bind(target)
        .bind(owner)
        .bind(reason)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(done == 1)
}

/// Gives up `owner`'s lease (at shutdown), so another replica takes over at once.
pub async fn release(conn: &mut Conn, target: &str, owner: &str) -> Result<(), StoreError> {
    run!(conn, |c| {
        sqlx::query(
            "UPDATE event_deliveries SET lease_owner = NULL, lease_until = NULL
              WHERE target = $1 AND lease_owner = $2",
        )
        .bind(target)
        .bind(owner)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// Every target's row, by name.
pub async fn deliveries(conn: &mut Conn) -> Result<Vec<Delivery>, StoreError> {
    let sql = format!("SELECT {DELIVERY_COLUMNS} FROM event_deliveries ORDER BY target");
    Ok(run!(conn, |c| sqlx::query_as::<_, Delivery>(AssertSqlSafe(sql.as_str())).fetch_all(c).await)?)
}
