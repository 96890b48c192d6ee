//! Delivery of change events to a target — a webhook ([`super::webhook`]) or the Redis stream
//! ([`super::stream`]) — in sequence order, at least once, from any replica.
//!
//! # One deliverer per target, across replicas
//!
//! Every replica runs one loop per configured target; the target's row in `event_deliveries`
//! says where it stands (`delivered`: the last sequence acknowledged) and who delivers it now
//! (a lease: `lease_owner` until `lease_until`). A loop sends only after taking or renewing the
//! lease in one guarded `UPDATE` ([`store::events::lease`]), and one attempt ends (the
//! target's timeout) before the lease does, so two replicas never deliver one target at once.
//! The position moves only under the lease and only forward ([`store::events::advance`]).
//! A replica that stops gives its lease up; one that dies leaves it to expire, after which
//! another replica resumes at the stored position and sends the unacknowledged event again,
//! with the same `webhook-id` — at least once.
//!
//! # Order and retries
//!
//! Events go one at a time, in sequence order: the next is sent only after the previous one
//! was acknowledged. A failure is retried with exponential backoff (`events.retry_base_ms`
//! doubled per failure, at most `events.retry_max_secs`) for as long as the event is within
//! `events.retention_days`; an event older than that can no longer be delivered in order, so
//! the target is marked `dead` (counted, shown by `GET /admin/v1/events/webhooks`) rather than
//! skipping it silently.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::CloudEvent;
use crate::metrics::Metrics;
use crate::store::events::{self as stored, Delivery, StoredEvent};
use crate::store::{Store, StoreError, now};

/// Events read per round; the loop sends them one by one.
const BATCH: u32 = 100;

/// How long a lease outlives one attempt's timeout: a replica must renew it before each
/// attempt, so this is slack for the statements around the attempt.
const LEASE_SLACK: Duration = Duration::from_secs(5);

/// What a target does with one event: `Ok` once the target acknowledged it.
pub enum Sender {
    Webhook(super::webhook::Webhook),
    Stream(super::stream::Stream),
}

impl Sender {
    async fn send(&self, event: &CloudEvent) -> Result<(), String> {
        match self {
            Sender::Webhook(webhook) => webhook.send(event).await,
            Sender::Stream(stream) => stream.send(event).await,
        }
    }

    /// The longest one attempt takes.
    fn timeout(&self) -> Duration {
        match self {
            Sender::Webhook(webhook) => webhook.timeout(),
            Sender::Stream(_) => super::stream::TIMEOUT,
        }
    }
}

/// One target: its name (the key of its row and its metrics label), the audit actions it
/// receives (its `types`), and how to send.
pub struct Target {
    pub name: String,
    pub actions: Vec<&'static str>,
    pub sender: Sender,
}

/// What every target's loop on this replica shares.
pub struct Deliverer {
    /// Background statements are counted apart from requests'.
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// This replica, as a lease owner (random per start).
    pub owner: String,
    pub source: String,
    pub retention: time::Duration,
    pub poll: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

/// How a round ended.
enum Stop {
    /// Nothing to send now — caught up, another replica holds the lease (or took it), or the
    /// target just died: wait a poll interval and look again.
    Wait,
    Shutdown,
}

impl Deliverer {
    /// Delivers `target` until shutdown; at shutdown gives the lease up.
    pub async fn run(self: Arc<Self>, target: Target, shutdown: CancellationToken) -> anyhow::Result<()> {
        let lease = target.sender.timeout() + LEASE_SLACK;
        let mut created = false;
        loop {
            if !created {
                created = self.create(&target.name).await.inspect_err(|e| self.warn(&target, e)).is_ok();
            }
            let round = if created { self.round(&target, lease, &shutdown).await } else { Ok(Stop::Wait) };
            match round {
                Ok(Stop::Shutdown) => break,
                Ok(Stop::Wait) => {}
                Err(error) => self.warn(&target, &error),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
        if let Ok(mut conn) = self.store.conn().await {
            let _ = stored::release(&mut conn, &target.name, &self.owner).await;
        }
        Ok(())
    }

    /// The target's row, created at the newest event when it is new.
    async fn create(&self, name: &str) -> Result<(), StoreError> {
        stored::sequence_pending(&self.store).await?;
        let mut conn = self.store.conn().await?;
        let head = stored::head(&mut conn).await?;
        stored::ensure_target(&mut conn, name, head).await
    }

    /// Takes the lease, then sends what is new, one event at a time, until nothing is left.
    async fn round(
        &self,
        target: &Target,
        lease: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Stop, StoreError> {
        loop {
            let Some(delivery) = self.renew(target, lease).await? else {
                return Ok(Stop::Wait);
            };
            let mut conn = self.store.conn().await?;
            // Read the head first: no event of the target's types lies between `delivered` and
            // `head` beyond what the query returns, so an empty answer may move the position there.
            let head = stored::head(&mut conn).await?;
            self.metrics
                .event_delivery_lag
                .get_or_create(&Metrics::target(&target.name))
                .set(head - delivery.delivered);
            let batch = stored::after(&mut conn, delivery.delivered, head, &target.actions, BATCH).await?;
            drop(conn);
            if batch.is_empty() {
                if head > delivery.delivered {
                    let mut conn = self.store.conn().await?;
                    stored::advance(&mut conn, &target.name, &self.owner, head, now()).await?;
                }
                return Ok(Stop::Wait);
            }
            for event in &batch {
                // Checked between events, not only between rounds: with a backlog (or a steady
                // stream) a round does not end, and a replica asked to stop would deliver until
                // the shutdown grace ran out, then be cut off holding the lease — stalling the
                // other replicas for a whole lease.
                if shutdown.is_cancelled() {
                    return Ok(Stop::Shutdown);
                }
                match self.deliver(target, lease, event, shutdown).await? {
                    None => {}
                    Some(stop) => return Ok(stop),
                }
            }
        }
    }

    /// Sends one event until the target acknowledges it; `Some` when the round must stop.
    async fn deliver(
        &self,
        target: &Target,
        lease: Duration,
        event: &StoredEvent,
        shutdown: &CancellationToken,
    ) -> Result<Option<Stop>, StoreError> {
        let Some(cloud) = CloudEvent::from_stored(&self.source, event) else {
            return Ok(None);
        };
        let mut failures: u32 = 0;
        loop {
            if event.audit.at < now() - self.retention {
                return self.die(target, event).await;
            }
            if self.renew(target, lease).await?.is_none() {
                return Ok(Some(Stop::Wait));
            }
            let labels = Metrics::target(&target.name);
            match target.sender.send(&cloud).await {
                Ok(()) => {
                    let mut conn = self.store.conn().await?;
                    if !stored::advance(&mut conn, &target.name, &self.owner, event.sequence, now()).await? {
                        return Ok(Some(Stop::Wait));
                    }
                    self.metrics.events_delivered.get_or_create(&labels).inc();
                    return Ok(None);
                }
                Err(error) => {
                    self.metrics.event_delivery_failures.get_or_create(&labels).inc();
                    let mut conn = self.store.conn().await?;
                    let detail = format!("{}: {error}", cloud.sequence);
                    if !stored::failed(&mut conn, &target.name, &self.owner, &detail, now()).await? {
                        return Ok(Some(Stop::Wait));
                    }
                    drop(conn);
                    if failures == 0 {
                        tracing::warn!(event_target = %target.name, sequence = %cloud.sequence, error = %error, "event delivery failed; retrying with backoff");
                    }
                    failures = failures.saturating_add(1);
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(Some(Stop::Shutdown)),
                        _ = tokio::time::sleep(self.backoff(failures)) => {}
                    }
                }
            }
        }
    }

    /// `retry_base × 2^(failures − 1)`, at most `retry_max`.
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
        self.retry_base.saturating_mul(factor).min(self.retry_max)
    }

    async fn renew(&self, target: &Target, lease: Duration) -> Result<Option<Delivery>, StoreError> {
        let at = now();
        let until = at + lease;
        let mut conn = self.store.conn().await?;
        stored::lease(&mut conn, &target.name, &self.owner, at, until).await
    }

    async fn die(&self, target: &Target, event: &StoredEvent) -> Result<Option<Stop>, StoreError> {
        let reason = format!(
            "event {} is older than events.retention_days and was never acknowledged",
            super::format_sequence(event.sequence)
        );
        let mut conn = self.store.conn().await?;
        if stored::mark_dead(&mut conn, &target.name, &self.owner, &reason).await? {
            self.metrics.event_targets_dead.get_or_create(&Metrics::target(&target.name)).inc();
            tracing::error!(event_target = %target.name, "event delivery target is dead: {reason}");
        }
        Ok(Some(Stop::Wait))
    }

    fn warn(&self, target: &Target, error: &StoreError) {
        tracing::warn!(event_target = %target.name, error = %error, "event delivery paused: the store failed");
    }
}

/// A lease owner id for this replica: random, so a restarted process is a new owner.
pub fn owner_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
