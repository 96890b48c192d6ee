//! The Redis tier (`cache.redis_url` or `cache.redis_urls`, docs/contract.md §4 and §8): replicas share reconciled logins and
//! invalidations. Without it every process caches in memory on its own; with it a login
//! reconciled by one replica is served by the others without touching the database, and an
//! admin write or code redemption on one replica invalidates cached logins on all of them.
//!
//! # What lives in Redis
//!
//! Every key carries the format version [`KEY_VERSION`], so two versions of the sidecar
//! sharing a Redis (a rolling deploy) never read each other's entries. A user's keys share
//! the hash tag `{<user tag>}` (the first 8 bytes of SHA-256 of the sub, in hex), so they live
//! in one hash slot and the one multi-key command works on Redis Cluster.
//!
//! * `identity-sidecar:v2:{<user tag>}:login:<hex login key>` — a reconciled login: the
//!   user's [`Facts`], the sub, when the entry stops being current (`expires_at`:
//!   reconciliation time + `reconcile.max_age_secs`, never past the access token's expiry) and
//!   the two epochs read before the reconciliation read the database. It expires with `EX` at
//!   `expires_at`.
//! * `identity-sidecar:v2:epoch` — the global epoch, replaced on every organization or
//!   contract write (`invalidate_all`).
//! * `identity-sidecar:v2:{<user tag>}:epoch` — the user's epoch, replaced on every change to
//!   that user outside a login (`invalidate_user`).
//! * the channel `identity-sidecar:invalidate` — `<origin> all` or `<origin> user:<sub>`, where
//!   `origin` identifies the publishing process so it can skip its own messages. Not
//!   versioned: every version reads these messages. On a single Redis an invalidation also
//!   replaces version 1's epochs (`identity-sidecar:epoch`, `identity-sidecar:epoch:user:<sub>`),
//!   so v1 replicas stop serving what this version invalidated.
//!
//! # Where
//!
//! [`Target`] (`cache.redis_mode`): one server (`standalone`) through a reconnecting
//! connection manager, Redis Cluster through the crate's cluster client (seed nodes; it
//! follows the slots itself), or the primary that Redis Sentinel names (`sentinel`, see
//! [`super::sentinel`]: found through the crate's sentinel client, followed across a
//! failover). `rediss://` connects with rustls, verifying the server against
//! `cache.redis_ca_file` or the system's roots. A cluster relays every `PUBLISH` to all its
//! nodes, so the subscriber listens on one seed node and moves to the next after a failure.
//! Under Sentinel the subscriber listens on the primary and moves when the sentinels name
//! another (checked every [`TICK`]); a replica also relays the primary's `PUBLISH`es, so a
//! subscriber still on a demoted primary that follows the new one misses nothing. Writes the
//! old primary took after the new one was promoted are lost with it, an epoch change among
//! them: so a process that moves to another primary replaces the global epoch there once
//! (as after a failed publish), and every entry shared before is reconciled again.
//!
//! # Why a Redis entry written before an invalidation is never served after it
//!
//! A lookup sends two commands at once (one round trip): `GET` of the global epoch and
//! `MGET` of the entry with its user's epoch (one hash slot); an entry whose recorded epochs
//! differ from the current ones is a miss. On a miss the epochs just read are the ones the
//! reconciliation's result is written with — read *before* the reconciliation reads the
//! database. The two reads need not be atomic together: each epoch is read after the lookup
//! began and before the reconciliation, which is all the argument below uses (an epoch that
//! changes between the two reads makes the entry written a miss, never a stale hit). An invalidation commits its database write
//! first and then replaces the epoch. So if a reconciliation read data older than a write, its
//! epoch read came before that write's epoch change, the entry records the old epoch, and
//! every lookup after the change sees a mismatch — however late the entry itself is written.
//! This is the argument of [`Logins::generation`](crate::entitlements::Logins::generation), moved
//! to Redis. The epoch is replaced before the message is published (the `PUBLISH` is sent
//! once the `SET` has answered): a replica that receives the message and misses locally
//! always finds the new epoch.
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
//! # Trust (`cache.redis_key_file`)
//!
//! Without a key file Redis is inside the trust boundary: whoever can write to it can write
//! a login entry naming any organizations and contracts, and every replica serves it. With
//! one ([`EntryKeys`]), every login entry is written as [`SIGNED_PREFIX`], an HMAC-SHA256 and
//! the JSON, the HMAC taken over the entry's Redis key name and the JSON (so an entry cannot
//! be moved to another login either); an entry whose HMAC no configured key verifies, or one
//! without an HMAC, is a miss — counted as `redis_errors_total{op="lookup",kind=…}` and logged
//! at warn without its value — and the replica reconciles from the database and overwrites
//! it. The first key signs and every key verifies, so keys rotate without a flag day.
//!
//! What a key does not stop: the epochs and the channel are not signed, so write access to
//! Redis can still replay an entry this sidecar really wrote for that login (the user's own
//! facts as of its reconciliation) until the entry's signed `expires_at` passes — at most
//! `reconcile.max_age_secs` after it was written — even past an invalidation, by restoring
//! the old epoch too; and it can drop entries or publish invalidations (more reconciliations,
//! never other facts).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use futures_util::StreamExt as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::b2b::Facts;
use crate::config::{CacheConfig, RedisMode};
use crate::entitlements::memory::LoginKey;
use crate::entitlements::sentinel::{Primary, PrimaryConnection};
use crate::metrics::Metrics;

/// The invalidation channel. Not versioned: its payload is the same in every version, so
/// replicas of two versions sharing a Redis drop each other's invalidated logins.
pub const CHANNEL: &str = "identity-sidecar:invalidate";
/// The format version every key name carries: entries and epochs of another version are
/// never read. Raised whenever a key's name or value changes shape.
pub const KEY_VERSION: &str = "v2";
/// The global epoch.
pub const EPOCH_KEY: &str = "identity-sidecar:v2:epoch";
/// The global epoch of version 1 (before versioned epochs), replaced beside ours so that v1
/// replicas sharing this Redis during a rolling deploy stop serving what we invalidated.
const V1_EPOCH_KEY: &str = "identity-sidecar:epoch";
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

/// The start of a signed login entry: then 32 bytes of HMAC-SHA256, then the JSON. A JSON
/// entry starts with `{`, so the two forms never look alike.
pub const SIGNED_PREFIX: &[u8] = b"hs256:";
/// Length of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;
/// Shortest key `cache.redis_key_file` accepts, in bytes (that of SHA-256's output).
pub const MIN_KEY_BYTES: usize = 32;
/// A key with fewer distinct byte values is refused as not random (32 random bytes have
/// about 30; a typed word or a repeated pattern has far fewer).
const MIN_DISTINCT_BYTES: usize = 16;

/// The keys of `cache.redis_key_file`, one per line: the first signs every login entry
/// written to Redis, every one verifies (rotation). Never printed.
#[derive(Clone)]
pub struct EntryKeys {
    /// One HMAC state per key, already keyed: cloned for each use.
    macs: Vec<Hmac<Sha256>>,
}

impl std::fmt::Debug for EntryKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EntryKeys({} keys, redacted)", self.macs.len())
    }
}

impl EntryKeys {
    /// Reads and checks a key file (see [`EntryKeys::parse`]). Errors name the file and the
    /// line, never a key.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<EntryKeys> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cache.redis_key_file: cannot read {}", path.display()))?;
        EntryKeys::parse(&text).with_context(|| format!("cache.redis_key_file {}", path.display()))
    }

    /// One key per line, at least [`MIN_KEY_BYTES`] bytes each, written as hex (a line of
    /// hex digits only, e.g. `openssl rand -hex 32`) or else as standard padded base64
    /// (`openssl rand -base64 32`). Blank lines and lines starting with `#` are ignored.
    /// Refused: no key at all, a line that is neither, a short key, or one with fewer than
    /// 16 distinct byte values (not random: a word, `000…`, a repeated pattern).
    pub fn parse(text: &str) -> anyhow::Result<EntryKeys> {
        let mut macs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let is_hex = line.len().is_multiple_of(2) && line.bytes().all(|b| b.is_ascii_hexdigit());
            let key = if is_hex {
                hex::decode(line).ok()
            } else {
                base64::engine::general_purpose::STANDARD.decode(line).ok()
            };
            let Some(key) = key else {
                bail!(
                    "line {n} is neither hex nor standard base64 (generate a key with `openssl rand -base64 32`)"
                );
            };
            if key.len() < MIN_KEY_BYTES {
                bail!(
                    "line {n}: a key must be at least {MIN_KEY_BYTES} bytes, this one has {} \
                     (generate one with `openssl rand -base64 32`)",
                    key.len()
                );
            }
            let mut seen = [false; 256];
            key.iter().for_each(|&b| seen[usize::from(b)] = true);
            if seen.iter().filter(|&&s| s).count() < MIN_DISTINCT_BYTES {
                bail!("line {n}: the key does not look random (generate one with `openssl rand -base64 32`)");
            }
            macs.push(Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length"));
        }
        if macs.is_empty() {
            bail!("no key in the file (one per line; generate one with `openssl rand -base64 32`)");
        }
        Ok(EntryKeys { macs })
    }

    /// The HMAC state of `mac` after the entry's name (length-prefixed, so name and value
    /// never run into each other) and its JSON.
    fn keyed(mac: &Hmac<Sha256>, name: &str, json: &[u8]) -> Hmac<Sha256> {
        let mut mac = mac.clone();
        mac.update(&(name.len() as u64).to_be_bytes());
        mac.update(name.as_bytes());
        mac.update(json);
        mac
    }

    /// The value to store under `name`: prefix, tag of the first key, JSON.
    fn seal(&self, name: &str, json: &[u8]) -> Vec<u8> {
        let tag = Self::keyed(&self.macs[0], name, json).finalize().into_bytes();
        let mut value = Vec::with_capacity(SIGNED_PREFIX.len() + TAG_LEN + json.len());
        value.extend_from_slice(SIGNED_PREFIX);
        value.extend_from_slice(&tag);
        value.extend_from_slice(json);
        value
    }

    /// The JSON of a value read under `name`, when some key verifies its tag (in constant
    /// time); why not otherwise.
    fn open<'v>(&self, name: &str, value: &'v [u8]) -> Result<&'v [u8], &'static str> {
        let Some((tag, json)) = split_signed(value) else { return Err("unsigned") };
        if self.macs.iter().any(|mac| Self::keyed(mac, name, json).verify_slice(tag).is_ok()) {
            Ok(json)
        } else {
            Err("bad_signature")
        }
    }
}

/// Tag and JSON of a signed value; `None` for any other value.
fn split_signed(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = value.strip_prefix(SIGNED_PREFIX)?;
    (rest.len() >= TAG_LEN).then(|| rest.split_at(TAG_LEN))
}

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
    pub facts: Facts,
    /// Unix time after which the login must be reconciled again.
    pub expires_at: u64,
}

/// The answer of [`RedisTier::lookup`].
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
    /// The user's facts. The field keeps its wire name, so replicas of different versions
    /// read each other's entries.
    snapshot: Facts,
}

/// One process's handle on the Redis tier: commands through a reconnecting connection
/// manager, and [`RedisTier::run_subscriber`] for the bus.
pub struct RedisTier {
    /// Where the subscriber connects: the server (standalone), or each seed node in turn
    /// (cluster: a cluster forwards every `PUBLISH` to all its nodes). Empty under Sentinel:
    /// the subscriber connects to the primary the sentinels name.
    subscribe_to: Vec<redis::Client>,
    /// Which of `subscribe_to` the next subscription tries (moves on after a failure).
    next_subscriber: std::sync::atomic::AtomicUsize,
    conn: Commands,
    /// Cluster mode: keep to commands whose keys share one hash slot.
    cluster: bool,
    /// This process on the channel: messages from it are already applied.
    origin: String,
    metrics: Arc<Metrics>,
    /// A publish failed: send one `all` once Redis answers again.
    pending: AtomicBool,
    /// Whether the last command succeeded; errors are logged on the change only.
    healthy: AtomicBool,
    /// Whether the subscriber is currently subscribed.
    subscribed: AtomicBool,
    /// `cache.redis_key_file`: login entries are signed and verified. `None`: Redis is
    /// trusted (a signed entry is read without checking its tag).
    keys: Option<EntryKeys>,
}

/// Where the tier connects: `cache.redis_mode`, its URLs, and the CA of `rediss://` servers.
#[derive(Clone)]
pub struct Target {
    mode: RedisMode,
    urls: Vec<String>,
    /// PEM of `cache.redis_ca_file`; `None`: the system's roots.
    ca: Option<Vec<u8>>,
    /// `cache.sentinel_master` (sentinel mode).
    master: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // URLs may hold a password.
        write!(f, "Target({:?}, {} URLs, redacted)", self.mode, self.urls.len())
    }
}

impl Target {
    /// One server at `url` (`redis://` or `rediss://`).
    pub fn standalone(url: &str) -> Target {
        Target { mode: RedisMode::Standalone, urls: vec![url.to_owned()], ca: None, master: None }
    }

    /// A Redis Cluster reached through these seed nodes.
    pub fn cluster(urls: &[String]) -> Target {
        Target { mode: RedisMode::Cluster, urls: urls.to_vec(), ca: None, master: None }
    }

    /// The primary named `master` that these sentinels watch.
    pub fn sentinel(urls: &[String], master: &str) -> Target {
        Target { mode: RedisMode::Sentinel, urls: urls.to_vec(), ca: None, master: Some(master.to_owned()) }
    }

    /// `rediss://` servers are verified against this PEM CA (instead of the system's roots).
    pub fn with_ca(mut self, pem: Vec<u8>) -> Target {
        self.ca = Some(pem);
        self
    }

    /// The target `cache.*` describes (reads `cache.redis_ca_file`); `None` without Redis.
    pub fn from_config(cache: &CacheConfig) -> anyhow::Result<Option<Target>> {
        let urls: Vec<String> = match cache.redis_mode {
            RedisMode::Standalone => cache.redis_url.iter().map(|u| u.expose_secret().to_owned()).collect(),
            RedisMode::Cluster | RedisMode::Sentinel => {
                cache.redis_urls.iter().map(|u| u.expose_secret().to_owned()).collect()
            }
        };
        if urls.is_empty() {
            return Ok(None);
        }
        let ca = match &cache.redis_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("cache.redis_ca_file: cannot read {}", path.display()))?,
            ),
            None => None,
        };
        let master = match cache.redis_mode {
            RedisMode::Sentinel => match cache.sentinel_master.as_deref() {
                Some(master) if !master.is_empty() => Some(master.to_owned()),
                _ => bail!("cache.redis_mode is sentinel but cache.sentinel_master is not set"),
            },
            RedisMode::Standalone | RedisMode::Cluster => None,
        };
        Ok(Some(Target { mode: cache.redis_mode, urls, ca, master }))
    }

    /// The TLS material of `rediss://` connections, when a CA is configured.
    fn certificates(&self) -> Option<redis::TlsCertificates> {
        self.ca.clone().map(|pem| redis::TlsCertificates { client_tls: None, root_cert: Some(pem) })
    }

    /// A client of one server. Fails on a malformed URL, without echoing it.
    fn client(&self, url: &str) -> anyhow::Result<redis::Client> {
        const MALFORMED: &str =
            "cache.redis_url(s): not a valid Redis URL (redis://host:port/db or rediss://…)";
        match self.certificates() {
            Some(certs) => {
                if !url.starts_with("rediss://") {
                    bail!("cache.redis_ca_file is set: the Redis URLs must be rediss:// (TLS)");
                }
                redis::Client::build_with_tls(url, certs).ok().context(MALFORMED)
            }
            None => redis::Client::open(url).ok().context(MALFORMED),
        }
    }
}

/// The command connection: a reconnecting manager of one server, a cluster connection
/// (made on first use, since connecting a cluster needs a node that answers), or the
/// connection to the primary the sentinels name (found on first use, and again after a
/// failover).
#[derive(Clone)]
enum Commands {
    Single(ConnectionManager),
    Cluster(Arc<ClusterCommands>),
    Sentinel(Arc<Primary>),
}

/// A cluster client and its connection once made.
struct ClusterCommands {
    client: redis::cluster::ClusterClient,
    conn: tokio::sync::OnceCell<ClusterConnection>,
}

impl Commands {
    /// A connection to run one command on; for a cluster, connects first if needed.
    async fn get(&self) -> redis::RedisResult<Connection> {
        Ok(match self {
            Commands::Single(c) => Connection::Single(c.clone()),
            Commands::Cluster(c) => {
                Connection::Cluster(c.conn.get_or_try_init(|| c.client.get_async_connection()).await?.clone())
            }
            Commands::Sentinel(primary) => Connection::Sentinel(primary.connection().await?),
        })
    }
}

/// One of [`Commands`]' connections, as the crate's commands take it.
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(PrimaryConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
            Connection::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
            Connection::Sentinel(c) => c.get_db(),
        }
    }
}

impl RedisTier {
    /// A handle on the Redis at `url`. Does no IO: Redis may come up later. Fails only on a
    /// malformed URL (without echoing it: it may hold a password).
    pub fn new(url: &str, metrics: Arc<Metrics>) -> anyhow::Result<RedisTier> {
        RedisTier::with_keys(url, None, metrics)
    }

    /// [`RedisTier::new`], signing and verifying login entries with `keys` when given.
    pub fn with_keys(url: &str, keys: Option<EntryKeys>, metrics: Arc<Metrics>) -> anyhow::Result<RedisTier> {
        RedisTier::connect(&Target::standalone(url), keys, metrics)
    }

    /// A handle on `target`, signing and verifying login entries with `keys` when given.
    /// Does no IO: Redis may come up later.
    pub fn connect(
        target: &Target,
        keys: Option<EntryKeys>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<RedisTier> {
        // rustls cannot choose between the two providers the dependency tree enables; an
        // error means a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let subscribe_to =
            target.urls.iter().map(|url| target.client(url)).collect::<anyhow::Result<Vec<_>>>()?;
        let conn = match target.mode {
            RedisMode::Cluster => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(
                    subscribe_to.iter().map(|c| c.get_connection_info().clone()),
                )
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(COMMAND_TIMEOUT)
                .retries(1);
                if let Some(certs) = target.certificates() {
                    builder = builder.certs(certs);
                }
                let client =
                    builder.build().ok().context("cache.redis_urls: cannot set up the cluster client")?;
                Commands::Cluster(Arc::new(ClusterCommands { client, conn: tokio::sync::OnceCell::new() }))
            }
            RedisMode::Sentinel => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT));
                let master = target.master.as_deref().context("cache.sentinel_master is not set")?;
                let primary = Primary::new(&subscribe_to, master, target.certificates(), config)?;
                Commands::Sentinel(Arc::new(primary))
            }
            RedisMode::Standalone => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    // Fail fast while Redis is down: the next command starts the next attempt.
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let conn = subscribe_to[0]
                    .get_connection_manager_lazy(config)
                    .context("cannot set up the Redis connection manager")?;
                Commands::Single(conn)
            }
        };
        let subscribe_to = if target.mode == RedisMode::Sentinel { Vec::new() } else { subscribe_to };
        Ok(RedisTier {
            subscribe_to,
            next_subscriber: std::sync::atomic::AtomicUsize::new(0),
            conn,
            cluster: target.mode == RedisMode::Cluster,
            origin: uuid::Uuid::new_v4().simple().to_string(),
            metrics,
            pending: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            subscribed: AtomicBool::new(false),
            keys,
        })
    }

    /// Whether Redis answers a `PING` now (startup check).
    pub async fn ping(&self) -> bool {
        let ping = async {
            let mut conn = self.conn.get().await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await
        };
        tokio::time::timeout(CONNECT_TIMEOUT, ping).await.is_ok_and(|r| r.is_ok())
    }

    /// Appends one entry with id `id` to the stream `key`, capped near `max_len` entries
    /// (`XADD key MAXLEN ~ max_len id field value …`; the change-event stream, docs/events.md).
    /// `Ok(false)` when the stream's top entry is at `id` or later already: the entry was
    /// appended before (a repeat after a restart), so it is not appended twice.
    pub async fn append_to_stream(
        &self,
        key: &str,
        max_len: u64,
        id: &str,
        fields: &[(&str, &str)],
    ) -> redis::RedisResult<bool> {
        let mut conn = self.conn.get().await?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key).arg("MAXLEN").arg("~").arg(max_len).arg(id);
        for (field, value) in fields {
            cmd.arg(*field).arg(*value);
        }
        match cmd.query_async::<String>(&mut conn).await {
            Ok(_) => Ok(true),
            Err(e) if e.to_string().contains("equal or smaller than the target stream top item") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the subscriber is subscribed (it has dropped the memory tier since).
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// The current entry of a login, or the epochs to write a fresh one with. One round trip.
    pub async fn lookup(&self, key: &LoginKey, sub: &str) -> Lookup {
        let name = login_key(key, sub);
        let answer = async {
            let mut conn = self.conn.get().await?;
            let mut user_conn = self.conn.get().await?;
            // Two commands, sent together: the global epoch, and the entry with the user's
            // epoch (one hash slot).
            let mut get = redis::cmd("GET");
            get.arg(EPOCH_KEY);
            let mut mget = redis::cmd("MGET");
            mget.arg(&name).arg(user_epoch_key(sub));
            let (all, entry_and_user) = tokio::join!(
                get.query_async::<Option<String>>(&mut conn),
                mget.query_async::<(Option<Vec<u8>>, Option<String>)>(&mut user_conn)
            );
            let (entry, user) = entry_and_user?;
            Ok((entry, all?, user))
        };
        let Some((entry, all, user)) = self.run("lookup", answer).await else {
            self.count_lookup("miss");
            return Lookup::Unavailable;
        };
        let epochs = Epochs { all, user };
        let json = entry.as_deref().and_then(|value| self.unseal(&name, value));
        let found = json.and_then(|bytes| match serde_json::from_slice::<Stored>(bytes) {
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
                    && s.expires_at > crate::auth::authenticator::unix_now() =>
            {
                self.count_lookup("hit");
                Lookup::Hit(SharedLogin { facts: s.snapshot, expires_at: s.expires_at })
            }
            _ => {
                self.count_lookup("miss");
                Lookup::Miss(epochs)
            }
        }
    }

    /// The JSON of an entry read under `name`: verified when keys are configured (`None`,
    /// counted and logged, when that fails), else taken as it is.
    fn unseal<'v>(&self, name: &str, value: &'v [u8]) -> Option<&'v [u8]> {
        let Some(keys) = &self.keys else {
            // Redis is trusted: a signed entry (from a replica with a key) reads as well.
            return Some(split_signed(value).map_or(value, |(_, json)| json));
        };
        match keys.open(name, value) {
            Ok(json) => Some(json),
            Err(kind) => {
                // The value is never logged: it is whatever was written to Redis.
                tracing::warn!(
                    entry = name,
                    reason = kind,
                    "a login entry in Redis failed verification with cache.redis_key_file; treated as a miss"
                );
                self.count_error("lookup", kind);
                None
            }
        }
    }

    /// Shares a reconciliation's result until `expires_at` (unix), recorded with the epochs
    /// its lookup returned. Best effort.
    pub async fn store(&self, key: &LoginKey, sub: &str, facts: &Facts, epochs: Epochs, expires_at: u64) {
        let ttl = expires_at.saturating_sub(crate::auth::authenticator::unix_now()).min(MAX_ENTRY_TTL_SECS);
        if ttl == 0 {
            return;
        }
        let stored = Stored {
            sub: sub.to_owned(),
            expires_at,
            epoch: epochs.all,
            user_epoch: epochs.user,
            snapshot: facts.clone(),
        };
        let Ok(json) = serde_json::to_vec(&stored) else { return };
        let name = login_key(key, sub);
        let value = match &self.keys {
            Some(keys) => keys.seal(&name, &json),
            None => json,
        };
        let mut set = redis::cmd("SET");
        set.arg(&name).arg(value).arg("EX").arg(ttl);
        let stored = async {
            let mut conn = self.conn.get().await?;
            set.query_async::<()>(&mut conn).await
        };
        self.run("store", stored).await;
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
        let (epoch, v1_epoch) = match inv {
            Invalidation::All => (EPOCH_KEY.to_owned(), V1_EPOCH_KEY.to_owned()),
            Invalidation::User(sub) => (user_epoch_key(sub), format!("identity-sidecar:epoch:user:{sub}")),
        };
        let set = |name: &str| {
            let mut set = redis::cmd("SET");
            set.arg(name).arg(&token);
            // The global epoch never expires: a missing one would read as "none" again.
            if let Invalidation::User(_) = inv {
                set.arg("EX").arg(USER_EPOCH_TTL_SECS);
            }
            set
        };
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(CHANNEL).arg(inv.encode(&self.origin));
        let sent = async {
            let mut conn = self.conn.get().await?;
            // The epoch first, then the message (a replica that receives it and misses
            // locally finds the new epoch): two commands in order, each to its own slot.
            set(&epoch).query_async::<()>(&mut conn).await?;
            if !self.cluster {
                // Version 1 replicas (on a single Redis only) read these names.
                set(&v1_epoch).query_async::<()>(&mut conn).await?;
            }
            publish.query_async::<()>(&mut conn).await
        };
        let sent = self.run("publish", sent).await.is_some();
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
        // Sentinel: the primary subscribed on last.
        let mut last_primary: Option<String> = None;
        loop {
            let subscribed = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                r = tokio::time::timeout(CONNECT_TIMEOUT, self.subscribe()) => r,
            };
            match subscribed {
                Ok(Ok((sink, stream, primary))) => {
                    apply(&Invalidation::All);
                    if let Some(now) = &primary {
                        if last_primary.as_ref().is_some_and(|last| last != now) {
                            // Another primary: what this process wrote to the old one after
                            // the new one took over is lost, epoch changes included. Replace
                            // the global epoch on the new one (sent at the first tick).
                            tracing::info!(primary = %now, "the Redis primary changed; invalidating every shared login once");
                            self.pending.store(true, Ordering::Release);
                        }
                        last_primary = Some(now.clone());
                    }
                    self.subscribed.store(true, Ordering::Release);
                    self.metrics.redis_subscribed.set(1);
                    tracing::info!("subscribed to Redis invalidations");
                    backoff = Duration::from_millis(100);
                    was_up = true;
                    let stopped = self.listen(sink, stream, primary.as_deref(), &apply, &stop).await;
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

    /// A subscription to [`CHANNEL`], and under Sentinel the primary's `host:port` it is on.
    async fn subscribe(
        &self,
    ) -> redis::RedisResult<(redis::aio::PubSubSink, redis::aio::PubSubStream, Option<String>)> {
        if let Commands::Sentinel(primary) = &self.conn {
            let current = primary.current().await?;
            let subscribed = async {
                let (mut sink, stream) = current.client.get_async_pubsub().await?.split();
                sink.subscribe(CHANNEL).await?;
                Ok((sink, stream, Some(current.addr.clone())))
            };
            // Cannot subscribe there: the primary may have moved; look it up again.
            return subscribed.await.inspect_err(|_| primary.forget(current.id));
        }
        // A cluster forwards every PUBLISH to all its nodes: any one node will do. After a
        // failure the next attempt goes to the next node.
        let i = self.next_subscriber.load(Ordering::Relaxed) % self.subscribe_to.len();
        let pubsub = match self.subscribe_to[i].get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                self.next_subscriber.store(i + 1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let (mut sink, stream) = pubsub.split();
        sink.subscribe(CHANNEL).await?;
        Ok((sink, stream, None))
    }

    /// Applies messages until the connection is lost (false) or `stop` (true). Under
    /// Sentinel (`primary`: where the subscription is) also until the sentinels name another
    /// primary (false).
    async fn listen(
        &self,
        mut sink: redis::aio::PubSubSink,
        mut stream: redis::aio::PubSubStream,
        primary: Option<&str>,
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
                    // Under Sentinel: has the primary moved? (Bounded: a sentinel that
                    // does not answer must not hold up the messages.)
                    if let (Some(at), Commands::Sentinel(sentinel)) = (primary, &self.conn)
                        && tokio::time::timeout(CONNECT_TIMEOUT, sentinel.moved_from(at)).await.unwrap_or(false)
                    {
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

/// The hash tag of a user's keys: the first 8 bytes of SHA-256 of the sub, in hex (a sub
/// may hold `{` or `}`, and its length is the identity provider's).
fn user_tag(sub: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&Sha256::digest(sub.as_bytes())[..8])
}

/// `identity-sidecar:v2:{<user tag>}:login:<hex login key>`: in the slot of its user's epoch.
fn login_key(key: &LoginKey, sub: &str) -> String {
    format!("identity-sidecar:{KEY_VERSION}:{{{}}}:login:{}", user_tag(sub), hex::encode(key))
}

/// `identity-sidecar:v2:{<user tag>}:epoch`: the user's epoch.
fn user_epoch_key(sub: &str) -> String {
    format!("identity-sidecar:{KEY_VERSION}:{{{}}}:epoch", user_tag(sub))
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

    const KEY_A: &str = "DhzIq9SPKM0kklBY1fQ5VFIzGl/WJslMFHX7wWWBhnw=";
    const KEY_B: &str = "bc09bea25524f76af620339b08ba86d7eb942509e063666277a7cdc98d0bfd1f";

    fn keys(lines: &[&str]) -> EntryKeys {
        EntryKeys::parse(&lines.join("\n")).unwrap()
    }

    #[test]
    fn a_key_file_takes_base64_and_hex_lines_and_skips_comments_and_blank_lines() {
        let k = keys(&["# rotated 2026-11", "", KEY_A, &format!("  {KEY_B}  ")]);
        assert_eq!(k.macs.len(), 2);
        assert_eq!(format!("{k:?}"), "EntryKeys(2 keys, redacted)");
    }

    #[test]
    fn a_weak_empty_or_unreadable_key_file_is_refused_without_echoing_a_key() {
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16].map(|b| b ^ 0x5a));
        let zeros = "00".repeat(32);
        let pattern = "0102".repeat(32);
        let word = base64::engine::general_purpose::STANDARD.encode("passwordpasswordpasswordpassword");
        for (text, says) in [
            ("", "no key"),
            ("# only a comment\n\n", "no key"),
            (short.as_str(), "at least 32 bytes"),
            (zeros.as_str(), "does not look random"),
            (pattern.as_str(), "does not look random"),
            (word.as_str(), "does not look random"),
            ("not a key at all!", "neither hex nor standard base64"),
        ] {
            let err = format!("{:#}", EntryKeys::parse(text).unwrap_err());
            assert!(err.contains(says), "{text:?}: {err}");
            if !text.is_empty() && !text.starts_with('#') {
                assert!(!err.contains(text), "the error echoes the key: {err}");
            }
        }
        // One bad line spoils the file, even after a good one: no key is silently dropped.
        let err = format!("{:#}", EntryKeys::parse(&format!("{KEY_A}\n{zeros}")).unwrap_err());
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_sealed_entry_opens_with_any_configured_key_under_its_own_name_only() {
        let (old, new) = (keys(&[KEY_A]), keys(&[KEY_B]));
        let rotated = keys(&[KEY_B, KEY_A]);
        let value = old.seal("login:1", b"{\"a\":1}");
        assert_eq!(old.open("login:1", &value), Ok(&b"{\"a\":1}"[..]));
        assert_eq!(rotated.open("login:1", &value), Ok(&b"{\"a\":1}"[..]), "the old key still verifies");
        assert_eq!(new.open("login:1", &value), Err("bad_signature"));
        assert_eq!(old.open("login:2", &value), Err("bad_signature"), "moved to another login");
        assert_eq!(old.open("login:1", b"{\"a\":1}"), Err("unsigned"));
        assert_eq!(old.open("login:1", SIGNED_PREFIX), Err("unsigned"), "too short for a tag");
        // The new key signs after rotation.
        assert_eq!(new.open("login:1", &rotated.seal("login:1", b"{}")), Ok(&b"{}"[..]));
        // Any changed byte, in the tag or the JSON, fails.
        for i in SIGNED_PREFIX.len()..value.len() {
            let mut tampered = value.clone();
            tampered[i] ^= 1;
            assert_eq!(old.open("login:1", &tampered), Err("bad_signature"), "byte {i}");
        }
    }

    #[test]
    fn sentinel_urls_that_differ_in_scheme_or_credentials_are_refused_without_echoing_them() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        for urls in [
            ["redis://:hunter2@a:26379", "redis://:other@b:26379"],
            ["redis://:hunter2@a:26379", "rediss://:hunter2@b:26379"],
            ["redis://u:hunter2@a:26379", "redis://:hunter2@b:26379"],
        ] {
            let target = Target::sentinel(&urls.map(String::from), "mymaster");
            let err =
                format!("{:#}", RedisTier::connect(&target, None, Arc::new(Metrics::new())).err().unwrap());
            assert!(err.contains("same scheme"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let same = ["redis://:hunter2@a:26379".to_owned(), "redis://:hunter2@b:26379/2".to_owned()];
        assert!(
            RedisTier::connect(&Target::sentinel(&same, "mymaster"), None, Arc::new(Metrics::new())).is_err()
        );
        let same = ["redis://:hunter2@a:26379/2".to_owned(), "redis://:hunter2@b:26379/2".to_owned()];
        assert!(
            RedisTier::connect(&Target::sentinel(&same, "mymaster"), None, Arc::new(Metrics::new())).is_ok()
        );
    }

    #[test]
    fn a_malformed_url_is_a_config_error_that_does_not_echo_it() {
        let err = RedisTier::new("http://user:hunter2@host", Arc::new(Metrics::new())).err().unwrap();
        assert!(!format!("{err:#}").contains("hunter2"));
    }
}
