//! The Redis tier (`cache.redis_url`, SPEC §4 and §8): replicas share reconciled logins and
//! invalidations. Without it every process caches in memory on its own; with it a login
//! reconciled by one replica is served by the others without touching the database, and an
//! admin write or code redemption on one replica invalidates cached logins on all of them.
//!
//! # What lives in Redis
//!
//! * `identity-sidecar:login:v1:<hex login key>` — a reconciled login: the user's
//!   [`Snapshot`], the sub, when the entry stops being current (`expires_at`: reconciliation
//!   time + `reconcile.max_age_secs`, never past the access token's expiry) and the two epochs
//!   read before the reconciliation read the database. It expires with `EX` at `expires_at`.
//! * `identity-sidecar:epoch` — the global epoch, replaced on every organization or contract
//!   write (`invalidate_all`).
//! * `identity-sidecar:epoch:user:<sub>` — the user's epoch, replaced on every change to that
//!   user outside a login (`invalidate_user`).
//! * the channel `identity-sidecar:invalidate` — `<origin> all` or `<origin> user:<sub>`, where
//!   `origin` identifies the publishing process so it can skip its own messages.
//!
//! # Why a Redis entry written before an invalidation is never served after it
//!
//! A lookup is one `MGET` of the entry and both current epochs (one round trip, atomic in
//! Redis); an entry whose recorded epochs differ from the current ones is a miss. On a miss
//! the epochs just read are the ones the reconciliation's result is written with — read
//! *before* the reconciliation reads the database. An invalidation commits its database write
//! first and then replaces the epoch. So if a reconciliation read data older than a write, its
//! epoch read came before that write's epoch change, the entry records the old epoch, and
//! every lookup after the change sees a mismatch — however late the entry itself is written.
//! This is the argument of [`Logins::generation`](crate::entitlements::logins::Logins), moved
//! to Redis. The epoch is replaced before the message is published (same pipeline, same
//! connection, so Redis runs them in that order): a replica that receives the message and
//! misses locally always finds the new epoch.
//!
//! Epochs are random tokens, not `INCR` counters: a counter starts again at 1 when Redis loses
//! its data (it may keep nothing on disk) or when a user's epoch key expires, and a repeated
//! value would make an old entry look current again. A random 64-bit token never comes back.
//! A missing epoch reads as "none", which differs from every token. A user's epoch key lives
//! [`USER_EPOCH_TTL_SECS`], longer than any entry ([`MAX_ENTRY_TTL_SECS`]), so every entry that
//! recorded "none" before the key was set has expired before the key does.
//!
//! An entry found in Redis is installed in the memory tier with the generation captured before
//! the lookup, so an invalidation applied meanwhile keeps it out of memory; it keeps its
//! `expires_at`, so moving between replicas never extends a login past `max_age_secs`. That is
//! why every process applies an invalidation to its memory only *after* the epoch changed (the
//! publisher after its pipeline returned, the others when the message arrives): a lookup that
//! still saw the old epoch captured its generation before the memory was invalidated.
//!
//! # Failures
//!
//! Redis is an accelerator, never a dependency of a request. Every command runs with a
//! [`COMMAND_TIMEOUT`] (a hung Redis costs a login at most that per command); a failed or
//! timed-out lookup is a miss, a failed write is skipped, a failed publish is remembered and
//! turned into one `all` invalidation once Redis answers again. The subscriber reconnects by
//! itself with backoff; while it is disconnected the process keeps serving from memory, and
//! after every (re)subscription it drops its memory tier, since messages may have been missed.
//! If Redis is unreachable for a replica while another replica can still reach it, that other
//! replica may serve an invalidated login until the entry expires (`max_age_secs` at most) —
//! the same bound as without Redis. Errors are counted (`identity_sidecar_redis_errors_total`)
//! and logged once per outage, not once per request.
//!
//! Keys for one login and its user live in different hash slots: this needs a single Redis
//! (optionally with replicas or Sentinel), not Redis Cluster.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::entitlements::logins::LoginKey;
use crate::metrics::Metrics;
use crate::reconcile::apply::Snapshot;

/// The invalidation channel.
pub const CHANNEL: &str = "identity-sidecar:invalidate";
/// The global epoch.
pub const EPOCH_KEY: &str = "identity-sidecar:epoch";
/// Longest life of a login entry in Redis, whatever `reconcile.max_age_secs` says.
pub const MAX_ENTRY_TTL_SECS: u64 = 86_400;
/// Life of a user's epoch key after its last change; longer than any entry.
pub const USER_EPOCH_TTL_SECS: u64 = 2 * MAX_ENTRY_TTL_SECS;
/// Upper bound on each Redis command, as a request sees it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// Upper bound on connecting and subscribing, and on the subscriber's health ping.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the subscriber pings its connection and retries a failed publish.
const TICK: Duration = Duration::from_secs(1);
/// Longest wait between two subscription attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What an invalidation drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// Every cached login (an organization or contract was written).
    All,
    /// One user's cached logins and last known facts.
    User(String),
}

impl Invalidation {
    /// The channel payload: `<origin> all` or `<origin> user:<sub>`.
    fn encode(&self, origin: &str) -> String {
        match self {
            Invalidation::All => format!("{origin} all"),
            Invalidation::User(sub) => format!("{origin} user:{sub}"),
        }
    }

    /// The origin and the invalidation of a payload; `None` for anything else.
    fn decode(payload: &str) -> Option<(&str, Invalidation)> {
        let (origin, what) = payload.split_once(' ')?;
        let inv = match what {
            "all" => Invalidation::All,
            _ => Invalidation::User(what.strip_prefix("user:")?.to_owned()),
        };
        Some((origin, inv))
    }
}

/// The epochs current when a lookup missed; a reconciliation's result is written with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epochs {
    all: Option<String>,
    user: Option<String>,
}

/// A login found in Redis.
#[derive(Debug, Clone)]
pub struct SharedLogin {
    pub snapshot: Snapshot,
    /// Unix time after which the login must be reconciled again.
    pub expires_at: u64,
}

/// The answer of [`SharedCache::lookup`].
#[derive(Debug)]
pub enum Lookup {
    /// A current entry.
    Hit(SharedLogin),
    /// No current entry; write the reconciliation's result with these epochs.
    Miss(Epochs),
    /// Redis did not answer: nothing may be written for this reconciliation.
    Unavailable,
}

/// A login entry as stored.
#[derive(Serialize, Deserialize)]
struct Stored {
    sub: String,
    expires_at: u64,
    epoch: Option<String>,
    user_epoch: Option<String>,
    snapshot: Snapshot,
}

/// One process's handle on the Redis tier: commands through a reconnecting connection
/// manager, and [`SharedCache::run_subscriber`] for the bus.
pub struct SharedCache {
    client: redis::Client,
    conn: ConnectionManager,
    /// This process on the channel: messages from it are already applied.
    origin: String,
    metrics: Arc<Metrics>,
    /// A publish failed: send one `all` once Redis answers again.
    pending: AtomicBool,
    /// Whether the last command succeeded; errors are logged on the change only.
    healthy: AtomicBool,
    /// Whether the subscriber is currently subscribed.
    subscribed: AtomicBool,
}

impl SharedCache {
    /// A handle on the Redis at `url`. Does no IO: Redis may come up later. Fails only on a
    /// malformed URL (without echoing it: it may hold a password).
    pub fn new(url: &str, metrics: Arc<Metrics>) -> anyhow::Result<SharedCache> {
        let client = redis::Client::open(url)
            .ok()
            .context("cache.redis_url is not a valid Redis URL (redis://host:port/db)")?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // Fail fast while Redis is down: the next command starts the next attempt.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client
            .get_connection_manager_lazy(config)
            .context("cannot set up the Redis connection manager")?;
        Ok(SharedCache {
            client,
            conn,
            origin: uuid::Uuid::new_v4().simple().to_string(),
            metrics,
            pending: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            subscribed: AtomicBool::new(false),
        })
    }

    /// Whether Redis answers a `PING` now (startup check).
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        tokio::time::timeout(CONNECT_TIMEOUT, redis::cmd("PING").query_async::<()>(&mut conn))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether the subscriber is subscribed (it has dropped the memory tier since).
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// The current entry of a login, or the epochs to write a fresh one with. One round trip.
    pub async fn lookup(&self, key: &LoginKey, sub: &str) -> Lookup {
        let mut conn = self.conn.clone();
        let keys = [login_key(key), EPOCH_KEY.to_owned(), user_epoch_key(sub)];
        let mut mget = redis::cmd("MGET");
        mget.arg(&keys);
        let answer = mget.query_async::<(Option<Vec<u8>>, Option<String>, Option<String>)>(&mut conn);
        let Some((entry, all, user)) = self.run("lookup", answer).await else {
            self.count_lookup("miss");
            return Lookup::Unavailable;
        };
        let epochs = Epochs { all, user };
        let found = entry.and_then(|bytes| match serde_json::from_slice::<Stored>(&bytes) {
            Ok(stored) => Some(stored),
            Err(e) => {
                tracing::debug!(error = %e, "unreadable login entry in Redis; treated as a miss");
                self.count_error("lookup", "decode");
                None
            }
        });
        match found {
            Some(s)
                if s.sub == sub
                    && s.epoch == epochs.all
                    && s.user_epoch == epochs.user
                    && s.expires_at > crate::auth::gate::unix_now() =>
            {
                self.count_lookup("hit");
                Lookup::Hit(SharedLogin { snapshot: s.snapshot, expires_at: s.expires_at })
            }
            _ => {
                self.count_lookup("miss");
                Lookup::Miss(epochs)
            }
        }
    }

    /// Shares a reconciliation's result until `expires_at` (unix), recorded with the epochs
    /// its lookup returned. Best effort.
    pub async fn store(
        &self,
        key: &LoginKey,
        sub: &str,
        snapshot: &Snapshot,
        epochs: Epochs,
        expires_at: u64,
    ) {
        let ttl = expires_at.saturating_sub(crate::auth::gate::unix_now()).min(MAX_ENTRY_TTL_SECS);
        if ttl == 0 {
            return;
        }
        let stored = Stored {
            sub: sub.to_owned(),
            expires_at,
            epoch: epochs.all,
            user_epoch: epochs.user,
            snapshot: snapshot.clone(),
        };
        let Ok(bytes) = serde_json::to_vec(&stored) else { return };
        let mut conn = self.conn.clone();
        let mut set = redis::cmd("SET");
        set.arg(login_key(key)).arg(bytes).arg("EX").arg(ttl);
        self.run("store", set.query_async::<()>(&mut conn)).await;
    }

    /// Makes `inv` effective on every other replica: replaces the epoch (so no replica serves
    /// an older Redis entry) and then publishes it (so replicas drop their memory tier). The
    /// caller applies it to its own memory afterwards. Never fails: a failure is logged,
    /// counted and retried as one `all` invalidation once Redis answers.
    pub async fn publish(&self, inv: &Invalidation) {
        if !self.send(inv).await {
            self.pending.store(true, Ordering::Release);
        }
    }

    async fn send(&self, inv: &Invalidation) -> bool {
        let token = format!("{:016x}", rand::random::<u64>());
        let mut pipe = redis::pipe();
        match inv {
            Invalidation::All => pipe.cmd("SET").arg(EPOCH_KEY).arg(&token).ignore(),
            Invalidation::User(sub) => pipe
                .cmd("SET")
                .arg(user_epoch_key(sub))
                .arg(&token)
                .arg("EX")
                .arg(USER_EPOCH_TTL_SECS)
                .ignore(),
        };
        pipe.cmd("PUBLISH").arg(CHANNEL).arg(inv.encode(&self.origin)).ignore();
        let mut conn = self.conn.clone();
        let sent = self.run("publish", pipe.query_async::<()>(&mut conn)).await.is_some();
        if sent {
            self.metrics.redis_invalidations.get_or_create(&vec![("direction", "published")]).inc();
        }
        sent
    }

    /// A failed publish is owed: send one `all` now (subscriber tick, after reconnecting).
    async fn flush_pending(&self) {
        if self.pending.swap(false, Ordering::AcqRel) && !self.send(&Invalidation::All).await {
            self.pending.store(true, Ordering::Release);
        }
    }

    /// The bus: applies other processes' invalidations with `apply` until `stop`. Reconnects
    /// with backoff; after each (re)subscription applies [`Invalidation::All`], since messages
    /// may have been missed. Returns only when stopped.
    pub async fn run_subscriber(
        self: Arc<Self>,
        apply: impl Fn(&Invalidation) + Send + Sync + 'static,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(100);
        let mut was_up = true;
        loop {
            let subscribed = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                r = tokio::time::timeout(CONNECT_TIMEOUT, self.subscribe()) => r,
            };
            match subscribed {
                Ok(Ok((sink, stream))) => {
                    apply(&Invalidation::All);
                    self.subscribed.store(true, Ordering::Release);
                    self.metrics.redis_subscribed.set(1);
                    tracing::info!("subscribed to Redis invalidations");
                    backoff = Duration::from_millis(100);
                    was_up = true;
                    let stopped = self.listen(sink, stream, &apply, &stop).await;
                    self.subscribed.store(false, Ordering::Release);
                    self.metrics.redis_subscribed.set(0);
                    if stopped {
                        return Ok(());
                    }
                    tracing::warn!(
                        "lost the Redis invalidation subscription; serving from memory, reconnecting"
                    );
                }
                Ok(Err(e)) => {
                    self.count_error("subscribe", "error");
                    if std::mem::take(&mut was_up) {
                        tracing::warn!(error = %e, "cannot subscribe to Redis invalidations; serving from memory, retrying");
                    }
                }
                Err(_) => {
                    self.count_error("subscribe", "timeout");
                    if std::mem::take(&mut was_up) {
                        tracing::warn!(
                            "subscribing to Redis invalidations timed out; serving from memory, retrying"
                        );
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn subscribe(&self) -> redis::RedisResult<(redis::aio::PubSubSink, redis::aio::PubSubStream)> {
        let (mut sink, stream) = self.client.get_async_pubsub().await?.split();
        sink.subscribe(CHANNEL).await?;
        Ok((sink, stream))
    }

    /// Applies messages until the connection is lost (false) or `stop` (true).
    async fn listen(
        &self,
        mut sink: redis::aio::PubSubSink,
        mut stream: redis::aio::PubSubStream,
        apply: &impl Fn(&Invalidation),
        stop: &CancellationToken,
    ) -> bool {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return true,
                msg = stream.next() => {
                    let Some(msg) = msg else { return false };
                    let payload = String::from_utf8_lossy(msg.get_payload_bytes());
                    match Invalidation::decode(&payload) {
                        Some((origin, _)) if origin == self.origin => {}
                        Some((_, inv)) => {
                            apply(&inv);
                            self.metrics.redis_invalidations.get_or_create(&vec![("direction", "received")]).inc();
                        }
                        None => tracing::debug!("ignoring an unreadable invalidation message"),
                    }
                }
                _ = tick.tick() => {
                    // A half-open or hung connection never ends the stream; a ping notices.
                    let pong = tokio::time::timeout(CONNECT_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        self.count_error("subscribe", "timeout");
                        return false;
                    }
                    self.flush_pending().await;
                }
            }
        }
    }

    /// Runs one command under [`COMMAND_TIMEOUT`]; `None` (counted, logged once per outage)
    /// when it failed.
    async fn run<T>(
        &self,
        op: &'static str,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
            Ok(Ok(value)) => {
                if !self.healthy.swap(true, Ordering::AcqRel) {
                    tracing::info!("Redis answers again");
                }
                Some(value)
            }
            Ok(Err(e)) => {
                self.count_error(op, "error");
                if self.healthy.swap(false, Ordering::AcqRel) {
                    tracing::warn!(op, error = %e, "Redis command failed; continuing without the shared cache");
                }
                None
            }
            Err(_) => {
                self.count_error(op, "timeout");
                if self.healthy.swap(false, Ordering::AcqRel) {
                    tracing::warn!(op, "Redis command timed out; continuing without the shared cache");
                }
                None
            }
        }
    }

    fn count_error(&self, op: &'static str, kind: &'static str) {
        self.metrics.redis_errors.get_or_create(&vec![("op", op), ("kind", kind)]).inc();
    }

    fn count_lookup(&self, result: &'static str) {
        self.metrics.cache.get_or_create(&vec![("cache", "redis"), ("result", result)]).inc();
    }
}

fn login_key(key: &LoginKey) -> String {
    format!("identity-sidecar:login:v1:{}", hex::encode(key))
}

fn user_epoch_key(sub: &str) -> String {
    format!("identity-sidecar:epoch:user:{sub}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_round_trip_through_their_payload() {
        for inv in [Invalidation::All, Invalidation::User("u 1:x".into()), Invalidation::User(String::new())]
        {
            let payload = inv.encode("origin");
            assert_eq!(Invalidation::decode(&payload), Some(("origin", inv)));
        }
    }

    #[test]
    fn unreadable_payloads_are_ignored() {
        for payload in ["", "all", "origin", "origin everything", "origin users:u1"] {
            assert_eq!(Invalidation::decode(payload), None, "{payload}");
        }
    }

    #[test]
    fn a_malformed_url_is_a_config_error_that_does_not_echo_it() {
        let err = SharedCache::new("http://user:hunter2@host", Arc::new(Metrics::new())).err().unwrap();
        assert!(!format!("{err:#}").contains("hunter2"));
    }
}
