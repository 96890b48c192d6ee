//! The durable job worker: background tasks owned by the [`App`](crate::App), one per job
//! kind, that claim due jobs from the store ([`crate::store::jobs`]), run them and record the
//! result — `complete`, `retry` with exponential backoff, or `fail` when retrying cannot help.
//!
//! Kinds and payloads:
//! - [`ADD_MEMBER`] `{"organization_keycloak_id": "<uuid>", "sub": "<user id>"}`: adds the user
//!   to the Keycloak organization (enqueued by a code redemption that created a membership,
//!   docs/contract.md §7). "Already a member" is success. Retried until it succeeds; given up only when
//!   Keycloak says the organization or the user does not exist (or the payload is malformed).
//! - [`REMOVE_MEMBER`] (same payload): removes the user from the Keycloak organization
//!   (enqueued by an admin or manager removal when `keycloak_admin.push_memberships` is on,
//!   see [`super::push`]). "Not a member" (`404`) is success; retried like an add.
//! - [`RECONCILE_ALL`] `{"actor": "admin:<who>"}`: walks every known user in `sub` order,
//!   reads each one's organizations from Keycloak and reconciles (see [`super::stated`]).
//!   Progress `{done, total, errors, after}` is saved at least every second and at the end;
//!   `after` is the last user done, so a retried or interrupted job resumes there. A user
//!   Keycloak does not know (`404`) counts as an error and is skipped; Keycloak or the
//!   database being unavailable ends the attempt, to be retried later.
//!
//! Membership jobs of one user and organization run in the order they were queued
//! ([`jobs::claim_in_order`]): an add and a removal run on different workers, and a retried
//! add must not overtake the removal queued after it, or Keycloak would end in the opposite
//! state of the store.
//!
//! # Delivery
//!
//! At least once. A claim is a lease (`next_run_at` of a running job): until it expires no
//! other worker — on any replica, `FOR UPDATE SKIP LOCKED` on PostgreSQL — takes the job; if
//! the worker dies, the job is claimed again after it. The lease is long enough for one
//! attempt ([`lease_for`]), and a reconciliation renews it with every progress write. A job
//! that outlives its lease anyway (a stalled process) may run twice, which both handlers
//! tolerate: adding a member twice is "already a member", reconciling twice changes nothing.
//! Replicas' clocks must agree (NTP): leases and due times are compared to the claimer's clock.
//!
//! # Waking up
//!
//! A worker polls every [`POLL_INTERVAL`] when idle, sooner when a retry it scheduled falls
//! due, and at once when [`Jobs::kick`] is called after an enqueue (on this replica;
//! other replicas find the job at their next poll). On shutdown it finishes the job in hand —
//! a reconciliation stops between two users and saves its place — and returns; queued jobs
//! wait in the store for the next start.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Error;
use super::client::{AddMember, KeycloakAdmin, RemoveMember};
use super::stated::reconcile_from_keycloak;
use crate::entitlements::Entitlements;
use crate::metrics::Metrics;
use crate::reconcile::apply::{Actor, Mode};
use crate::store::model::Job;
use crate::store::{Store, StoreError, jobs, users};

/// Adds a user to a Keycloak organization. Defined with its payload in the store layer, so a
/// login's reconciliation (below this module) can queue one when it accepts a seat assignment.
pub use crate::store::jobs::{ADD_MEMBER, AddMemberPayload};
/// Reconciles every known user against Keycloak.
pub const RECONCILE_ALL: &str = "reconcile.all";
/// Removes a user from a Keycloak organization.
pub const REMOVE_MEMBER: &str = "keycloak.remove_member";
/// The kinds that change a Keycloak membership: they run in order per user and organization.
const MEMBERSHIP: [&str; 2] = [ADD_MEMBER, REMOVE_MEMBER];
/// Every kind a worker runs (one worker task each).
pub const KINDS: [&str; 3] = [ADD_MEMBER, RECONCILE_ALL, REMOVE_MEMBER];

/// How often an idle worker looks for due jobs.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Longest delay between two attempts of a job.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Users read per page by a reconciliation.
const USERS_PER_PAGE: u32 = 100;
/// A running reconciliation saves its progress (and renews its lease) at least this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The payload of a [`RECONCILE_ALL`] job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileAllPayload {
    /// The audit actor of every change, `admin:<who>`.
    pub actor: String,
}

/// The progress of a [`RECONCILE_ALL`] job, as `GET /admin/v1/jobs/{id}` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileProgress {
    /// Users handled (reconciled, or skipped with an error).
    pub done: u64,
    /// Known users when the job started (more may come while it runs).
    pub total: u64,
    /// Users skipped because Keycloak refused to list their organizations (e.g. deleted there).
    pub errors: u64,
    /// The last user handled: where a resumed job continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// How an attempt ended.
#[derive(Debug)]
enum Attempt {
    Done,
    /// Failed; may succeed later.
    Retry(String),
    /// Failed for good.
    Fail(String),
    /// Stopped by shutdown; due again at once, resuming where it stopped.
    Interrupted,
}

/// The delay before attempt `attempts + 1`: `base` doubled per attempt made so far, capped at
/// [`MAX_BACKOFF`], then scaled by `jitter` (in `[0.5, 1]`, "equal jitter": replicas that
/// failed together do not retry together, and the delay never exceeds the cap).
pub fn backoff(attempts: i64, base: Duration, jitter: f64) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let delay = base.saturating_mul(2u32.saturating_pow(doublings)).min(MAX_BACKOFF);
    delay.mul_f64(jitter.clamp(0.5, 1.0))
}

/// How long a claim holds a job: one attempt may fetch a token and call Keycloak twice (a
/// `401` is retried with a fresh token), each bounded by `keycloak_admin.timeout_secs`; a
/// reconciliation renews its lease as it goes.
pub fn lease_for(timeout_secs: u64) -> Duration {
    Duration::from_secs(timeout_secs.saturating_mul(4).saturating_add(30))
}

/// Wakes this process's job workers: a handle every writer that enqueues a job holds, cheap
/// to clone.
#[derive(Clone, Default)]
pub struct Jobs(Arc<Notify>);

impl Jobs {
    /// Tells this process's job workers to look for due jobs now rather than at their next
    /// poll. Call it after committing a transaction that enqueued a job (other replicas find
    /// the job at their next poll, within a second).
    pub fn kick(&self) {
        self.0.notify_waiters();
    }
}

/// What a job worker works with: the parts of the application it needs, not all of it.
#[derive(Clone)]
pub struct Worker {
    /// Where jobs wait; its statements are counted apart from requests'
    /// (`Store::with_own_counter`).
    pub store: Store,
    /// `None`: `keycloak_admin` is not configured, and jobs wait in the queue.
    pub keycloak: Option<Arc<KeycloakAdmin>>,
    /// Told which users' cached logins a `reconcile.all` job changed.
    pub entitlements: Arc<Entitlements>,
    /// Queue depth and job results.
    pub metrics: Arc<Metrics>,
    /// The kicks that wake this worker before its next poll.
    pub jobs: Jobs,
    /// `keycloak_admin.timeout_secs`: bounds one call, and so a job's lease.
    pub timeout_secs: u64,
    /// `keycloak_admin.retry_base_ms`: the first retry's delay, doubled per attempt.
    pub retry_base: Duration,
}

/// A worker for jobs of `kind` until `stop`. Never fails: problems are logged and retried.
pub async fn run(worker: Worker, kind: &'static str, stop: CancellationToken) -> anyhow::Result<()> {
    let state = &worker;
    let mut warned_unconfigured = false;
    // The earliest retry this worker scheduled: it wakes up for it rather than at the next poll.
    let mut retry_due: Option<Instant> = None;
    loop {
        // Registered before looking, so a kick while this worker looks is not lost.
        let kicked = state.jobs.0.notified();
        tokio::pin!(kicked);
        kicked.as_mut().enable();
        if stop.is_cancelled() {
            return Ok(());
        }
        let depth = refresh_depth(state, kind).await;
        match &state.keycloak {
            None => {
                if depth > 0 && !warned_unconfigured {
                    tracing::warn!(kind, queued = depth, "jobs wait for keycloak_admin to be configured");
                    warned_unconfigured = true;
                }
            }
            Some(keycloak) => match claim(state, kind).await {
                Ok(Some(job)) => {
                    if let Some(due) = run_one(state, keycloak, job, &stop).await {
                        retry_due = Some(retry_due.map_or(due, |d| d.min(due)));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(kind, error = %e, "cannot claim jobs; the store is unavailable"),
            },
        }
        let now = Instant::now();
        let wait =
            retry_due.map_or(POLL_INTERVAL, |due| due.saturating_duration_since(now).min(POLL_INTERVAL));
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = &mut kicked => {}
            _ = tokio::time::sleep(wait) => {}
        }
        if retry_due.is_some_and(|due| due <= Instant::now()) {
            retry_due = None;
        }
    }
}

/// Sets the queue-depth gauge of `kind`; returns the depth (0 when the store cannot say).
async fn refresh_depth(state: &Worker, kind: &'static str) -> i64 {
    let depth = async {
        let mut conn = state.store.conn().await?;
        jobs::pending(&mut conn, kind).await
    }
    .await;
    match depth {
        Ok(depth) => {
            state.metrics.jobs_queue_depth.get_or_create(&vec![("kind", kind)]).set(depth);
            depth
        }
        Err(_) => 0,
    }
}

async fn claim(state: &Worker, kind: &str) -> Result<Option<Job>, StoreError> {
    let now = OffsetDateTime::now_utc();
    let lease = lease_for(state.timeout_secs);
    let mut conn = state.store.conn().await?;
    if MEMBERSHIP.contains(&kind) {
        return jobs::claim_in_order(&mut conn, kind, MEMBERSHIP, now, now + lease).await;
    }
    jobs::claim(&mut conn, kind, now, now + lease).await
}

/// Runs one claimed job and records the result; returns when it is due again after a retry.
async fn run_one(
    state: &Worker,
    keycloak: &KeycloakAdmin,
    job: Job,
    stop: &CancellationToken,
) -> Option<Instant> {
    let kind: &'static str = KINDS.into_iter().find(|k| *k == job.kind).unwrap_or("unknown");
    let attempt = match kind {
        ADD_MEMBER => add_member(keycloak, &job).await,
        REMOVE_MEMBER => remove_member(keycloak, &job).await,
        RECONCILE_ALL => reconcile_all(state, keycloak, &job, stop).await,
        _ => Attempt::Fail(format!("unknown job kind {:?}", job.kind)),
    };
    let count = |result: &'static str| {
        state.metrics.jobs.get_or_create(&vec![("kind", kind), ("result", result)]).inc();
    };
    let mut due = None;
    let recorded = async {
        let mut conn = state.store.conn().await?;
        match &attempt {
            Attempt::Done => {
                jobs::complete(&mut conn, job.id).await?;
                count("ok");
                tracing::info!(job = job.id, kind, attempts = job.attempts, "job done");
            }
            Attempt::Retry(error) => {
                let delay = backoff(job.attempts, state.retry_base, rand::random_range(0.5..=1.0));
                let at = OffsetDateTime::now_utc() + delay;
                jobs::retry(&mut conn, job.id, error, at).await?;
                due = Some(Instant::now() + delay);
                count("retry");
                tracing::warn!(
                    job = job.id, kind, attempts = job.attempts, retry_in_ms = delay.as_millis() as u64,
                    error = %error, "job failed; will retry"
                );
            }
            Attempt::Fail(error) => {
                jobs::fail(&mut conn, job.id, error).await?;
                count("failed");
                tracing::error!(job = job.id, kind, attempts = job.attempts, error = %error, "job failed for good");
            }
            Attempt::Interrupted => {
                jobs::retry(&mut conn, job.id, "interrupted by shutdown; resumes", OffsetDateTime::now_utc())
                    .await?;
                tracing::info!(job = job.id, kind, "job interrupted by shutdown; it resumes on the next start");
            }
        }
        Ok::<_, StoreError>(())
    }
    .await;
    if let Err(e) = recorded {
        // The job stays claimed until its lease expires; then it runs again (at least once).
        tracing::warn!(job = job.id, kind, error = %e, "cannot record the job's result");
    }
    due
}

async fn add_member(keycloak: &KeycloakAdmin, job: &Job) -> Attempt {
    let payload: AddMemberPayload = match serde_json::from_value(job.payload.clone()) {
        Ok(p) => p,
        Err(e) => return Attempt::Fail(format!("invalid payload: {e}")),
    };
    match keycloak.add_member(payload.organization_keycloak_id, &payload.sub).await {
        Ok(added) => {
            tracing::info!(
                job = job.id,
                organization_keycloak_id = %payload.organization_keycloak_id,
                already_member = added == AddMember::AlreadyMember,
                "user added to the Keycloak organization"
            );
            Attempt::Done
        }
        Err(e) if e.is_permanent() => Attempt::Fail(e.to_string()),
        Err(e) => Attempt::Retry(e.to_string()),
    }
}

async fn remove_member(keycloak: &KeycloakAdmin, job: &Job) -> Attempt {
    let payload: AddMemberPayload = match serde_json::from_value(job.payload.clone()) {
        Ok(p) => p,
        Err(e) => return Attempt::Fail(format!("invalid payload: {e}")),
    };
    match keycloak.remove_member(payload.organization_keycloak_id, &payload.sub).await {
        Ok(removed) => {
            tracing::info!(
                job = job.id,
                organization_keycloak_id = %payload.organization_keycloak_id,
                not_member = removed == RemoveMember::NotMember,
                "user removed from the Keycloak organization"
            );
            Attempt::Done
        }
        Err(e) if e.is_permanent() => Attempt::Fail(e.to_string()),
        Err(e) => Attempt::Retry(e.to_string()),
    }
}

async fn reconcile_all(
    state: &Worker,
    keycloak: &KeycloakAdmin,
    job: &Job,
    stop: &CancellationToken,
) -> Attempt {
    let payload: ReconcileAllPayload = match serde_json::from_value(job.payload.clone()) {
        Ok(p) => p,
        Err(e) => return Attempt::Fail(format!("invalid payload: {e}")),
    };
    let actor = Actor(payload.actor);
    let mut progress: ReconcileProgress =
        job.progress.clone().and_then(|p| serde_json::from_value(p).ok()).unwrap_or_default();
    let store = &state.store;
    let lease = lease_for(state.timeout_secs);
    let save = |progress: &ReconcileProgress| {
        let value = serde_json::to_value(progress).expect("progress serialises");
        async move {
            let mut conn = store.conn().await?;
            jobs::set_progress(&mut conn, job.id, &value, OffsetDateTime::now_utc() + lease).await
        }
    };
    if progress.done == 0 {
        let total = async {
            let mut conn = store.conn().await?;
            users::count(&mut conn).await
        }
        .await;
        match total {
            Ok(total) => progress.total = total.max(0) as u64,
            Err(e) => return Attempt::Retry(e.to_string()),
        }
        if let Err(e) = save(&progress).await {
            return Attempt::Retry(e.to_string());
        }
    }
    let mut saved_at = Instant::now();
    loop {
        let page = async {
            let mut conn = store.conn().await?;
            users::subs_after(&mut conn, progress.after.as_deref(), USERS_PER_PAGE).await
        }
        .await;
        let subs = match page {
            Ok(subs) if subs.is_empty() => break,
            Ok(subs) => subs,
            Err(e) => return Attempt::Retry(e.to_string()),
        };
        for sub in subs {
            if stop.is_cancelled() {
                return match save(&progress).await {
                    Ok(()) => Attempt::Interrupted,
                    Err(e) => Attempt::Retry(e.to_string()),
                };
            }
            match reconcile_from_keycloak(store, keycloak, &sub, &actor, Mode::Apply).await {
                Ok(done) => {
                    if done.changed {
                        state.entitlements.invalidate_user(&sub).await;
                    }
                }
                Err(Error::Keycloak(e)) if e.is_permanent() => {
                    tracing::warn!(job = job.id, sub = %sub, error = %e, "user skipped");
                    progress.errors += 1;
                }
                Err(e) => {
                    // Keycloak or the database is unavailable: stop here, resume later.
                    let _ = save(&progress).await;
                    return Attempt::Retry(e.to_string());
                }
            }
            progress.done += 1;
            progress.after = Some(sub);
            if saved_at.elapsed() >= PROGRESS_EVERY {
                if let Err(e) = save(&progress).await {
                    return Attempt::Retry(e.to_string());
                }
                saved_at = Instant::now();
            }
        }
    }
    progress.total = progress.total.max(progress.done);
    match save(&progress).await {
        Ok(()) => Attempt::Done,
        Err(e) => Attempt::Retry(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_five_minutes_with_bounded_jitter() {
        let base = Duration::from_secs(1);
        let full = |attempts| backoff(attempts, base, 1.0);
        assert_eq!([full(1), full(2), full(3), full(4)], [1, 2, 4, 8].map(Duration::from_secs));
        assert_eq!(full(9), Duration::from_secs(256));
        assert_eq!(full(10), MAX_BACKOFF);
        assert_eq!(full(i64::MAX), MAX_BACKOFF);
        assert_eq!(full(0), base, "a job never claimed yet waits the base");
        assert_eq!(backoff(3, base, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(3, base, 0.0), Duration::from_secs(2), "jitter is clamped to [0.5, 1]");
        assert_eq!(backoff(30, base, 0.75), MAX_BACKOFF.mul_f64(0.75));
    }

    #[test]
    fn the_add_member_payload_is_exactly_the_documented_shape() {
        let payload =
            AddMemberPayload { organization_keycloak_id: uuid::Uuid::from_u128(1), sub: "u1".into() };
        assert_eq!(
            payload.to_value(),
            serde_json::json!({"organization_keycloak_id": "00000000-0000-0000-0000-000000000001", "sub": "u1"})
        );
    }

    #[test]
    fn a_lease_covers_an_attempt_with_a_token_refresh() {
        assert_eq!(lease_for(10), Duration::from_secs(70));
    }
}
