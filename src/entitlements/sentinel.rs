//! Redis Sentinel (`cache.redis_mode = "sentinel"`): which server is the primary now, and one
//! connection to it that follows a failover. Used by the Redis tier ([`super::redis`]).
//!
//! # Finding the primary
//!
//! The crate's [`SentinelClient`] asks the sentinels (`cache.redis_urls`) for the primary
//! named `cache.sentinel_master` as the Sentinel client protocol says: a sentinel that does
//! not know the name, or names a primary it flags as down, is skipped for the next one, and
//! the server named must confirm with `ROLE` that it is a primary. [`Primary`] then keeps one
//! multiplexed connection to it for every command.
//!
//! # Following a failover
//!
//! The connection is forgotten, and the next command asks the sentinels again, when:
//!
//! * a command on it fails because the connection is gone (the primary died, or Sentinel
//!   demoted it: Sentinel closes every client of a server it turns into a replica);
//! * a write is refused with `READONLY` (the server is a replica now);
//! * the sentinels name another server ([`Primary::moved_from`], asked by the invalidation
//!   subscriber once a second). This one matters: after a failover Sentinel reconfigures the
//!   old primary, and so closes its clients, only when it next inspects it — about ten
//!   seconds later, measured here — and until then the old primary still answers as one.
//!
//! Asking runs one at a time, in a task of its own: a request that gives up after its
//! command timeout does not abort it, so a slow sentinel is still asked to the end. After a
//! failed attempt the next one waits [`RETRY_AFTER`]; meanwhile commands fail at once (the
//! Redis tier treats that as Redis being away: memory tier and database).
//!
//! # Credentials and TLS
//!
//! All sentinel URLs share one scheme and one set of credentials, which serve both the
//! sentinels and the primary (the common setup, e.g. one `requirepass` everywhere). With
//! `rediss://` the sentinels and the primary are reached over TLS, verified against
//! `cache.redis_ca_file` or the system's roots; the primary is reached at the address the
//! sentinels announce, so its certificate must name that address.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, RedisError, RedisResult};

/// Longest a lookup of the primary may take: the crate asks the sentinels (each with its own
/// connect and response timeouts) and then the primary.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed lookup, the next one waits this long; commands fail at once meanwhile.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);

/// The primary of `cache.sentinel_master`, found through the sentinels, and a connection to
/// it that is replaced when the primary moves.
pub struct Primary {
    /// The crate's sentinel client (it caches a connection per sentinel). Locked by whoever
    /// looks up the primary: one lookup at a time.
    sentinels: Arc<tokio::sync::Mutex<Sentinels>>,
    /// The primary found last, with its connection; `None` until found or once forgotten.
    current: std::sync::Mutex<Option<Current>>,
    /// Numbers the lookups, so that a failure forgets only the connection it happened on.
    lookups: AtomicU64,
    /// `cache.sentinel_master`, for `SENTINEL GET-MASTER-ADDR-BY-NAME`.
    master: String,
    /// Timeouts of the connections to the primary and to a sentinel (for the address check).
    config: AsyncConnectionConfig,
    /// The sentinels as configured, for [`Primary::moved_from`].
    sentinel_clients: Vec<redis::Client>,
    /// Which sentinel [`Primary::moved_from`] asks, and a connection to it once made.
    watch: tokio::sync::Mutex<Watch>,
}

/// The sentinel [`Primary::moved_from`] asks.
#[derive(Default)]
struct Watch {
    /// Index into `sentinel_clients` of the sentinel to ask (modulo their number).
    next: usize,
    conn: Option<MultiplexedConnection>,
}

struct Sentinels {
    client: SentinelClient,
    /// When the last lookup failed; `None` after a success.
    failed_at: Option<Instant>,
}

/// A primary found by lookup number `id`.
#[derive(Clone)]
pub struct Current {
    /// The lookup's number (for [`Primary::forget`]).
    pub id: u64,
    /// `host:port` as the sentinels announced it.
    pub addr: String,
    /// A client of the primary (the subscriber opens its own connection with it).
    pub client: redis::Client,
    conn: MultiplexedConnection,
}

impl Primary {
    /// The primary `master` watched by the sentinels `sentinels` (clients built from the
    /// configured URLs, already checked), over TLS verified with `certs` when the URLs are
    /// `rediss://`. Does no IO.
    pub fn new(
        sentinels: &[redis::Client],
        master: &str,
        certs: Option<redis::TlsCertificates>,
        config: AsyncConnectionConfig,
    ) -> anyhow::Result<Primary> {
        let infos: Vec<&redis::ConnectionInfo> = sentinels.iter().map(|c| c.get_connection_info()).collect();
        let Some(first) = infos.first() else { bail!("cache.redis_urls is empty") };
        let tls = |info: &redis::ConnectionInfo| matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        let credentials = |info: &redis::ConnectionInfo| {
            let r = info.redis_settings();
            (r.username().map(str::to_owned), r.password().map(str::to_owned), r.db())
        };
        if infos.iter().any(|i| tls(i) != tls(first) || credentials(i) != credentials(first)) {
            bail!(
                "cache.redis_urls: in sentinel mode every sentinel URL must use the same scheme \
                 (redis:// or rediss://), user, password and database"
            );
        }
        let mut builder = SentinelClientBuilder::new(
            infos.iter().map(|i| i.addr().clone()),
            master,
            SentinelServerType::Master,
        )
        .ok()
        .context("cache.redis_urls: cannot set up the sentinel client")?;
        let (username, password, db) = credentials(first);
        if let Some(username) = username {
            builder =
                builder.set_client_to_sentinel_username(&username).set_client_to_redis_username(&username);
        }
        if let Some(password) = password {
            builder =
                builder.set_client_to_sentinel_password(&password).set_client_to_redis_password(&password);
        }
        if db != 0 {
            builder = builder.set_client_to_redis_db(db);
        }
        if tls(first) {
            builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
            if let Some(certs) = certs {
                builder = builder
                    .set_client_to_sentinel_certificates(certs.clone())
                    .set_client_to_redis_certificates(certs);
            }
        }
        // The error may quote the configuration; it says nothing a config error needs.
        let client = builder.build().ok().context("cache.redis_urls: cannot set up the sentinel client")?;
        Ok(Primary {
            sentinels: Arc::new(tokio::sync::Mutex::new(Sentinels { client, failed_at: None })),
            current: std::sync::Mutex::new(None),
            lookups: AtomicU64::new(0),
            master: master.to_owned(),
            config,
            sentinel_clients: sentinels.to_vec(),
            watch: tokio::sync::Mutex::new(Watch::default()),
        })
    }

    fn peek(&self) -> Option<Current> {
        self.current.lock().expect("not poisoned").clone()
    }

    /// The primary and its connection: the one found last, or a fresh lookup through the
    /// sentinels. Fails at once within [`RETRY_AFTER`] of a failed lookup.
    pub async fn current(self: &Arc<Self>) -> RedisResult<Current> {
        if let Some(current) = self.peek() {
            return Ok(current);
        }
        // Waiting here for another lookup may be abandoned by the caller at no cost.
        let sentinels = self.sentinels.clone().lock_owned().await;
        if let Some(current) = self.peek() {
            return Ok(current);
        }
        if sentinels.failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
            return Err(not_found("the last lookup of the primary failed; retrying shortly"));
        }
        let this = self.clone();
        // The lookup owns the lock and runs to its end even if this caller gives up.
        tokio::spawn(async move { this.look_up(sentinels).await })
            .await
            .unwrap_or_else(|_| Err(not_found("the lookup of the primary panicked")))
    }

    async fn look_up(&self, mut sentinels: tokio::sync::OwnedMutexGuard<Sentinels>) -> RedisResult<Current> {
        let found = tokio::time::timeout(RESOLVE_TIMEOUT, async {
            let client = sentinels.client.async_get_client().await?;
            let conn = client.get_multiplexed_async_connection_with_config(&self.config).await?;
            Ok::<_, RedisError>((client, conn))
        })
        .await
        .unwrap_or_else(|_| Err(not_found("the lookup of the primary timed out")));
        match found {
            Ok((client, conn)) => {
                sentinels.failed_at = None;
                let current = Current {
                    id: self.lookups.fetch_add(1, Ordering::Relaxed) + 1,
                    addr: client.get_connection_info().addr().to_string(),
                    client,
                    conn,
                };
                tracing::info!(primary = %current.addr, "Redis Sentinel: connected to the primary");
                *self.current.lock().expect("not poisoned") = Some(current.clone());
                Ok(current)
            }
            Err(e) => {
                sentinels.failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// Forgets the connection of lookup `id` (not a newer one): the next command looks up
    /// the primary again.
    pub fn forget(&self, id: u64) {
        let mut current = self.current.lock().expect("not poisoned");
        if current.as_ref().is_some_and(|c| c.id == id) {
            *current = None;
        }
    }

    /// A connection to the primary for one command (see [`PrimaryConnection`]).
    pub async fn connection(self: &Arc<Self>) -> RedisResult<PrimaryConnection> {
        let current = self.current().await?;
        Ok(PrimaryConnection { primary: self.clone(), id: current.id, conn: current.conn })
    }

    /// Whether the sentinels now name another primary than `addr` (`host:port`). If they
    /// name another than the one commands use, that connection is forgotten too. `false`
    /// when no sentinel answers (nothing is known to have moved).
    pub async fn moved_from(&self, addr: &str) -> bool {
        let Some(now) = self.announced().await else { return false };
        if let Some(current) = self.peek()
            && current.addr != now
        {
            tracing::info!(from = %current.addr, to = %now, "Redis Sentinel: the primary moved");
            self.forget(current.id);
        }
        addr != now
    }

    /// The primary's `host:port` as a sentinel announces it (`SENTINEL
    /// GET-MASTER-ADDR-BY-NAME`): the one asked last, over the connection kept to it, or else
    /// the next ones in turn. (Not the crate's `async_get_sentinel_client`: it keeps the
    /// connection it makes for whichever sentinel answers in the first sentinel's slot.)
    async fn announced(&self) -> Option<String> {
        let mut watch = self.watch.lock().await;
        let mut ask = redis::cmd("SENTINEL");
        ask.arg("GET-MASTER-ADDR-BY-NAME").arg(&self.master);
        for _ in 0..self.sentinel_clients.len() {
            if watch.conn.is_none() {
                let i = watch.next % self.sentinel_clients.len();
                // Moved on before connecting: if the caller gives up on a sentinel that does
                // not answer, the next check starts with the next one.
                watch.next = i + 1;
                let client = &self.sentinel_clients[i];
                if let Ok(conn) = client.get_multiplexed_async_connection_with_config(&self.config).await {
                    (watch.next, watch.conn) = (i, Some(conn));
                }
            }
            let Some(conn) = watch.conn.as_mut() else { continue };
            match ask.query_async::<Option<(String, u16)>>(conn).await {
                Ok(Some((host, port))) => return Some(format!("{host}:{port}")),
                Ok(None) => tracing::debug!("Redis Sentinel: a sentinel does not know cache.sentinel_master"),
                Err(e) => {
                    tracing::debug!(error = %e, "Redis Sentinel: a sentinel did not say where the primary is")
                }
            }
            watch.conn = None;
            watch.next += 1;
        }
        None
    }
}

fn not_found(why: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::MasterNameNotFoundBySentinel, why))
}

/// Whether an error on the primary's connection means the primary may have moved: the
/// connection is gone, or the server refuses writes as a replica.
fn lost_primary(e: &RedisError) -> bool {
    e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// A reply that is an error of a replica (`READONLY`), as a multiplexed connection returns
/// it (the command's caller turns it into an error).
fn read_only(value: &redis::Value) -> bool {
    matches!(value, redis::Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::ReadOnly))
}

/// The primary's connection for one command: forgets it (see [`Primary::forget`]) when the
/// command fails because the primary may have moved.
pub struct PrimaryConnection {
    primary: Arc<Primary>,
    id: u64,
    conn: MultiplexedConnection,
}

impl PrimaryConnection {
    fn check<T>(&self, answer: &RedisResult<T>, values: impl Fn(&T) -> bool) {
        let moved = match answer {
            Ok(value) => values(value),
            Err(e) => lost_primary(e),
        };
        if moved {
            self.primary.forget(self.id);
        }
    }
}

impl redis::aio::ConnectionLike for PrimaryConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let answer = self.conn.req_packed_command(cmd).await;
            self.check(&answer, read_only);
            answer
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let answer = self.conn.req_packed_commands(pipeline, offset, count).await;
            self.check(&answer, |values| values.iter().any(read_only));
            answer
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}
