//! A durable job queue in the database, so any replica can run a job and report on it
//! (Keycloak membership pushes, background reconciliations with progress; docs/contract.md §6, §7).
//!
//! Life of a job: `queued` (due at `next_run_at`) → [`claim`]ed: `running`, with `next_run_at`
//! as the worker's lease → [`complete`] (`done`), [`retry`] (`queued` again, later) or
//! [`fail`] (`failed`). A `running` job whose lease expired (its worker died) is claimable again.

use serde_json::Value;
use time::OffsetDateTime;

use super::codec::{At, now};
use super::model::{Job, JobStatus};
use super::{Backend, Conn, StoreError};

/// Adds a user to a Keycloak organization (run by `keycloak::jobs`).
pub const ADD_MEMBER: &str = "keycloak.add_member";

/// The payload of an [`ADD_MEMBER`] or a `keycloak.remove_member` job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AddMemberPayload {
    /// The Keycloak organization (the organization's `keycloak_id`).
    pub organization_keycloak_id: uuid::Uuid,
    /// The Keycloak user id: the token's `sub`.
    pub sub: String,
}

impl AddMemberPayload {
    /// The payload as stored: `{"organization_keycloak_id": "<uuid>", "sub": "<user id>"}`.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a payload serialises")
    }
}

from_row!(Job, |row| Ok(Job {
    id: row.try_get("id")?,
    kind: row.try_get("kind")?,
    payload: row.try_get("payload")?,
    status: row.try_get("status")?,
    attempts: row.try_get("attempts")?,
    next_run_at: row.try_get("next_run_at")?,
    last_error: row.try_get("last_error")?,
    progress: row.try_get("progress")?,
    created_at: row.try_get("created_at")?,
    updated_at: row.try_get("updated_at")?,
}));

/// Queues a job of `kind`, due at `run_at`.
pub async fn enqueue(
    conn: &mut Conn,
    kind: &str,
    payload: &Value,
    run_at: OffsetDateTime,
) -> Result<Job, StoreError> {
    let at = At(now());
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, Job>(
            "INSERT INTO jobs (kind, payload, status, attempts, next_run_at, created_at, updated_at)
             VALUES ($1, $2, 'queued', 0, $3, $4, $4)
             RETURNING id, kind, payload, status, attempts, next_run_at, last_error, progress,
                       created_at, updated_at",
        )
        .bind(kind)
        .bind(payload)
        .bind(At(run_at))
        .bind(at)
        .fetch_one(c)
        .await
    })?)
}

/// The job with this id.
pub async fn get(conn: &mut Conn, id: i64) -> Result<Job, StoreError> {
    let job = run!(conn, |c| {
        sqlx::query_as::<_, Job>(
            "SELECT id, kind, payload, status, attempts, next_run_at, last_error, progress,
                    created_at, updated_at
               FROM jobs
              WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(c)
        .await
    })?;
    job.ok_or(StoreError::NotFound)
}

/// Claims the oldest due job of `kind` for a worker until `lease_until`, counting an attempt.
/// One statement, so it needs no transaction. PostgreSQL: `FOR UPDATE SKIP LOCKED` lets
/// concurrent workers on several replicas each take a different job (without it, two workers
/// would pick the same id and the second, after waiting for the first, would claim it again:
/// the outer `WHERE id = …` is all it re-checks). SQLite: the statement runs under the single
/// write lock, so the sub-select and the update see the same state.
pub async fn claim(
    conn: &mut Conn,
    kind: &str,
    now: OffsetDateTime,
    lease_until: OffsetDateTime,
) -> Result<Option<Job>, StoreError> {
    let job = match conn.backend() {
        Backend::Sqlite(c) => {
            sqlx::query_as::<_, Job>(
                "UPDATE jobs
                    SET status = 'running', attempts = attempts + 1, next_run_at = $3,
                        updated_at = $2
                  WHERE id = (SELECT id FROM jobs
                               WHERE kind = $1 AND status IN ('queued', 'running')
                                 AND next_run_at <= $2
                               ORDER BY next_run_at, id
                               LIMIT 1)
                 RETURNING id, kind, payload, status, attempts, next_run_at, last_error,
                           progress, created_at, updated_at",
            )
            .bind(kind)
            .bind(At(now))
            .bind(At(lease_until))
            .fetch_optional(c)
            .await
        }
        Backend::Postgres(c) => {
            sqlx::query_as::<_, Job>(
                "UPDATE jobs
                    SET status = 'running', attempts = attempts + 1, next_run_at = $3,
                        updated_at = $2
                  WHERE id = (SELECT id FROM jobs
                               WHERE kind = $1 AND status IN ('queued', 'running')
                                 AND next_run_at <= $2
                               ORDER BY next_run_at, id
                               LIMIT 1
                               FOR UPDATE SKIP LOCKED)
                 RETURNING id, kind, payload, status, attempts, next_run_at, last_error,
                           progress, created_at, updated_at",
            )
            .bind(kind)
            .bind(At(now))
            .bind(At(lease_until))
            .fetch_optional(c)
            .await
        }
    }?;
    Ok(job)
}

/// Marks a job done.
pub async fn complete(conn: &mut Conn, id: i64) -> Result<(), StoreError> {
    set_status(conn, id, JobStatus::Done, None, None).await
}

/// Puts a job back in the queue after a failed attempt, due at `next_run_at` (the caller
/// computes the backoff from `attempts`).
pub async fn retry(
    conn: &mut Conn,
    id: i64,
    error: &str,
    next_run_at: OffsetDateTime,
) -> Result<(), StoreError> {
    set_status(conn, id, JobStatus::Queued, Some(error), Some(next_run_at)).await
}

/// Gives up on a job.
pub async fn fail(conn: &mut Conn, id: i64, error: &str) -> Result<(), StoreError> {
    set_status(conn, id, JobStatus::Failed, Some(error), None).await
}

async fn set_status(
    conn: &mut Conn,
    id: i64,
    status: JobStatus,
    error: Option<&str>,
    next_run_at: Option<OffsetDateTime>,
) -> Result<(), StoreError> {
    let at = At(now());
    let done = run!(conn, |c| {
        sqlx::query(
            "UPDATE jobs
                SET status = $2, last_error = $3, next_run_at = COALESCE($4, next_run_at),
                    updated_at = $5
              WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(error)
        .bind(next_run_at.map(At))
        .bind(at)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    if done == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Records a running job's progress (e.g. `{"done": 10, "total": 200}`) and extends its lease.
pub async fn set_progress(
    conn: &mut Conn,
    id: i64,
    progress: &Value,
    lease_until: OffsetDateTime,
) -> Result<(), StoreError> {
    let at = At(now());
    let done = run!(conn, |c| {
        sqlx::query("UPDATE jobs SET progress = $2, next_run_at = $3, updated_at = $4 WHERE id = $1")
            .bind(id)
            .bind(progress)
            .bind(At(lease_until))
            .bind(at)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    if done == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Jobs of `kind` not finished yet (queued or running): the queue-depth metric.
pub async fn pending(conn: &mut Conn, kind: &str) -> Result<i64, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM jobs WHERE kind = $1 AND status IN ('queued', 'running')",
        )
        .bind(kind)
        .fetch_one(c)
        .await
    })?)
}

/// Like [`claim`], for kinds whose jobs must run in the order they were queued when they are
/// about the same thing: a job of `kind` waits while an older job of either kind in `family`
/// with the same payload is not finished (queued, retrying or running). Adding and removing a
/// Keycloak member are such a family: without the order, a retried add could overtake a later
/// removal and leave the user a member in Keycloak after the store removed them. Ids follow
/// the commit order of the transactions that queued them when those serialise (a per-user
/// transaction does), so this is the order of the changes.
pub async fn claim_in_order(
    conn: &mut Conn,
    kind: &str,
    family: [&str; 2],
    now: OffsetDateTime,
    lease_until: OffsetDateTime,
) -> Result<Option<Job>, StoreError> {
    let job = match conn.backend() {
        Backend::Sqlite(c) => {
            sqlx::query_as::<_, Job>(
                "UPDATE jobs
                    SET status = 'running', attempts = attempts + 1, next_run_at = $3,
                        updated_at = $2
                  WHERE id = (SELECT id FROM jobs AS j
                               WHERE kind = $1 AND status IN ('queued', 'running')
                                 AND next_run_at <= $2
                                 AND NOT EXISTS (
                                     SELECT 1 FROM jobs AS earlier
                                      WHERE earlier.id < j.id AND earlier.kind IN ($4, $5)
                                        AND earlier.status IN ('queued', 'running')
                                        AND earlier.payload = j.payload)
                               ORDER BY next_run_at, id
                               LIMIT 1)
                 RETURNING id, kind, payload, status, attempts, next_run_at, last_error,
                           progress, created_at, updated_at",
            )
            .bind(kind)
            .bind(At(now))
            .bind(At(lease_until))
            .bind(family[0])
            .bind(family[1])
            .fetch_optional(c)
            .await
        }
        Backend::Postgres(c) => {
            // `SKIP LOCKED` as in `claim`; an earlier job another worker holds locked still
            // counts (NOT EXISTS reads it without locking), so the order holds across replicas.
            sqlx::query_as::<_, Job>(
                "UPDATE jobs
                    SET status = 'running', attempts = attempts + 1, next_run_at = $3,
                        updated_at = $2
                  WHERE id = (SELECT id FROM jobs AS j
                               WHERE kind = $1 AND status IN ('queued', 'running')
                                 AND next_run_at <= $2
                                 AND NOT EXISTS (
                                     SELECT 1 FROM jobs AS earlier
                                      WHERE earlier.id < j.id AND earlier.kind IN ($4, $5)
                                        AND earlier.status IN ('queued', 'running')
                                        AND earlier.payload = j.payload)
                               ORDER BY next_run_at, id
                               LIMIT 1
                               FOR UPDATE SKIP LOCKED)
                 RETURNING id, kind, payload, status, attempts, next_run_at, last_error,
                           progress, created_at, updated_at",
            )
            .bind(kind)
            .bind(At(now))
            .bind(At(lease_until))
            .bind(family[0])
            .bind(family[1])
            .fetch_optional(c)
            .await
        }
    }?;
    Ok(job)
}
