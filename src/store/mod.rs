//! Persistence: organizations, contracts, users, memberships, attachments, audit, JWKS cache,
//! enrollment codes and durable jobs, on embedded SQLite (default, one replica) or PostgreSQL
//! (several replicas). The URL scheme picks the backend; nothing above this module knows which.
//!
//! # One SQL text, two pools
//!
//! [`Store`] holds either an `SqlitePool` or a `PgPool`, and the store functions (one file per
//! table group) run the same SQL text on both through the `run!` macro, which expands the
//! statement once per backend. This was chosen over sqlx's `Any` driver because `Any` only
//! decodes a handful of scalar types: dates, timestamps, UUIDs and JSON would have to be TEXT in
//! PostgreSQL too and be converted by hand on every row. Here PostgreSQL keeps `date`,
//! `timestamptz`, `uuid`, `boolean` and `jsonb` (what an operator querying production expects),
//! SQLite keeps its affinities, and [`codec`] bridges the two places where the storage of a
//! value differs (timestamps, Keycloak ids). The shared SQL sticks to what both dialects accept:
//! `$n` placeholders (sqlx-sqlite reads `$n` as "the n-th argument"), `RETURNING`,
//! `ON CONFLICT … DO UPDATE/NOTHING`, `TRUE`/`FALSE`, `lower()`. Where the dialects really differ,
//! the function matches on `Backend` and shows both statements side by side (sets bound as
//! arrays vs JSON, `FOR UPDATE SKIP LOCKED`, `BEGIN IMMEDIATE`); there are four such places.
//!
//! # Transactions and locks
//!
//! Store functions take a [`Conn`]: a pooled connection in autocommit mode ([`Store::conn`]) or
//! the connection of a transaction ([`Tx`] derefs to `Conn`). Functions that run more than one
//! statement that must stand or fall together (attach with a seat, erase a user) take `&mut Tx`.
//!
//! - *SQLite* has one writer at a time. Every [`Tx`] begins with `BEGIN IMMEDIATE`, taking the
//!   write lock up front: a deferred transaction that reads first and writes later can fail with
//!   `SQLITE_BUSY` on the lock upgrade, which `busy_timeout` cannot wait out (two such
//!   transactions would deadlock). WAL keeps readers (autocommit `Conn`s) running beside the
//!   writer. Before `BEGIN IMMEDIATE`, a [`Tx`] waits for its turn on an in-process FIFO lock
//!   (`tokio::sync::Mutex`, at most `SQLITE_BUSY_TIMEOUT`) and holds it until it ends: writers
//!   of this process then queue in arrival order instead of polling SQLite's lock in
//!   `busy_timeout`'s sleeps, which wake late and in no order (a login storm's p99 was ten
//!   times its median). `busy_timeout` still covers writers outside the queue: autocommit
//!   statements and other processes on the same file (the command-line tools).
//! - *PostgreSQL* runs at READ COMMITTED. Serialisation comes from row locks, taken in a fixed
//!   order: the user row first ([`Store::begin_user`]), then contract rows in ascending id order
//!   (seat counters, `attachments`). Deadlocks are still possible if a caller breaks that order;
//!   PostgreSQL then aborts one transaction, which surfaces as [`StoreError::Unavailable`].
//!
//! # Seats
//!
//! `contracts.seats_used` counts the contract's attachments and is changed only in the
//! transaction that inserts or deletes an attachment, by a guarded `UPDATE … SET seats_used =
//! seats_used + 1 WHERE … seats_used < max_learners` (see [`attachments::attach`]). On PostgreSQL
//! the `UPDATE` locks the contract row; a concurrent attacher blocks on that lock and, once the
//! first commits, PostgreSQL re-evaluates the `WHERE` clause against the committed row (READ
//! COMMITTED's re-check of updated rows), so the last seat goes to exactly one of them and the
//! other's `UPDATE` matches no row. The lock lasts until the commit, so the reconciliation of a
//! login claims its seats as its last statements (`attachments::claim_seat`). On SQLite the
//! whole transaction holds the single write lock, so check and increment cannot interleave with
//! another writer at all.
//!
//! Seat assignments by e-mail ([`assignments`]) hold seats too: `contracts.seats_allocated`
//! counts the `allocated` ones, is kept on the same row in the same way, and the guard reads
//! `seats_used + seats_allocated < max_learners`, so attachments, redemptions and assignments
//! contend for one row lock. Every writer of an assignment's state locks the contract row
//! before the assignment rows.
//!
//! # Per-user serialisation
//!
//! [`Store::begin_user`] starts a transaction by upserting the user row
//! (`INSERT … ON CONFLICT (sub) DO UPDATE … RETURNING`). On PostgreSQL that row stays locked
//! until commit, so a second reconciliation of the same user (another request, another replica)
//! waits at its own upsert and then reads what the first committed; a brand-new `sub` is
//! covered too, because the second insert waits on the first's uncommitted unique-index entry
//! and then takes the `DO UPDATE` path. On SQLite `BEGIN IMMEDIATE` already serialises it.
//!
//! # Counting
//!
//! Every connection checkout, statement, `BEGIN` and `COMMIT` issued through a [`Store`] bumps
//! [`Store::queries`], so a test can prove that a cached request did no database I/O.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgConnection, PgPool, Postgres, SqlSafeStr, Sqlite, SqliteConnection, SqlitePool, Transaction};
use tracing::Instrument as _;

/// Runs `$body` with `$c` bound to the backend's connection (`&mut SqliteConnection` or
/// `&mut PgConnection`): the body is compiled once per backend, the SQL text written once.
/// Counts one query.
macro_rules! run {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn.backend() {
            $crate::store::Backend::Sqlite($c) => $body,
            $crate::store::Backend::Postgres($c) => $body,
        }
    };
}

/// Implements `sqlx::FromRow` for both backends' rows with one body reading columns by name.
macro_rules! from_row {
    ($ty:ty, |$row:ident| $body:expr) => {
        impl<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> for $ty {
            fn from_row($row: &'r sqlx::sqlite::SqliteRow) -> Result<Self, sqlx::Error> {
                #[allow(unused_imports)]
                use sqlx::Row as _;
                $body
            }
        }
        impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for $ty {
            fn from_row($row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
                #[allow(unused_imports)]
                use sqlx::Row as _;
                $body
            }
        }
    };
}

pub mod assignments;
pub mod attachments;
pub mod audit;
pub mod codec;
pub mod codes;
pub mod contracts;
mod error;
pub mod events;
pub mod jobs;
pub mod jwks;
pub mod memberships;
pub mod model;
pub mod organizations;
mod seats;
pub mod selections;
pub mod user_rows;
pub mod users;

#[cfg(test)]
mod tests;

pub use codec::now;
pub use error::StoreError;
pub use model::*;

/// How long a request waits for a pooled connection before the store reports `Unavailable`
/// (sqlx's default is 30 s; a degraded answer now beats a timeout at the gateway).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an SQLite writer waits for the write lock before failing with `SQLITE_BUSY`.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The database: a pool on one of the two backends, plus the query counter. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    queries: Arc<AtomicU64>,
    /// SQLite's writers queue here, first come first served, before `BEGIN IMMEDIATE`
    /// (module docs, "Transactions and locks"). Unused on PostgreSQL.
    writer: Arc<tokio::sync::Mutex<()>>,
}

/// The `mode` query parameter of an SQLite URL, if any (`rwc`, `rw`, `ro`, `memory`).
fn sqlite_mode(url: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|pair| pair.strip_prefix("mode=")).map(str::to_owned)
}

/// Says how to fix an SQLite file that would not open; SQLite itself only says "unable to
/// open database file" for a missing directory, a missing file under `mode=rw` and a
/// directory this user cannot write alike. The path is not secret (unlike a PostgreSQL URL).
fn sqlite_open_hint(file: &std::path::Path, mode: Option<&str>) -> String {
    let shown = file.display();
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    // A relative path is relative to the working directory, which the reader may not know.
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    if !dir.is_dir() {
        return format!(
            "cannot open the SQLite database {shown}: the directory {} does not exist \
             (create it, or point database.url elsewhere)",
            dir.display()
        );
    }
    if !file.exists() && matches!(mode, Some("rw" | "ro")) {
        return format!(
            "cannot open the SQLite database {shown}: the file does not exist and the URL's \
             mode={} forbids creating it (remove mode= from database.url to create it)",
            mode.unwrap_or_default()
        );
    }
    format!(
        "cannot open the SQLite database {shown} (check that this user may read and write it \
         and its directory {})",
        dir.display()
    )
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("Store")
            .field("backend", &if self.is_postgres() { "postgres" } else { "sqlite" })
            .field("queries", &self.queries())
            .finish()
    }
}

impl Store {
    /// Opens a pool for `url` (`sqlite:…` or `postgres://…`/`postgresql://…`) and checks that
    /// one connection works. SQLite connections run in WAL mode with foreign keys on and a
    /// busy timeout; an in-memory SQLite database (`sqlite::memory:`) keeps one connection open
    /// for the life of the pool, or the database would vanish with it.
    ///
    /// Error messages never contain the URL (it may carry a password).
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Store> {
        let max_connections = max_connections.max(1);
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options =
                PgConnectOptions::from_str(url).context("database.url is not a valid PostgreSQL URL")?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
                .context("cannot connect to PostgreSQL")?;
            Pool::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let mut options = SqliteConnectOptions::from_str(url)
                .context("database.url is not a valid SQLite URL")?
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true);
            let mode = sqlite_mode(url);
            // sqlx (like SQLite's own URIs) opens an existing file unless the URL says
            // `mode=rwc`, so `sqlite://sidecar.db` failed on first start with "unable to open
            // database file". A URL naming a file is how a user asks for that file: create it,
            // unless the URL chose a mode itself (`mode=rw`/`ro` mean "it must exist").
            if mode.is_none() {
                options = options.create_if_missing(true);
            }
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let mut pool =
                SqlitePoolOptions::new().max_connections(max_connections).acquire_timeout(ACQUIRE_TIMEOUT);
            if in_memory {
                pool = pool.min_connections(1).idle_timeout(None).max_lifetime(None);
            }
            let file = options.get_filename().to_owned();
            let pool = match pool.connect_with(options).await {
                Ok(pool) => pool,
                Err(e) if in_memory => return Err(e).context("cannot open the SQLite database"),
                Err(e) => return Err(e).context(sqlite_open_hint(&file, mode.as_deref())),
            };
            Pool::Sqlite(pool)
        } else {
            bail!("database.url must start with sqlite:, postgres:// or postgresql://");
        };
        Ok(Store { pool, queries: Arc::new(AtomicU64::new(0)), writer: Arc::default() })
    }

    /// Applies the migrations of this backend (`migrations/sqlite` or `migrations/postgres`).
    /// Safe to run from several replicas at once: sqlx takes an advisory lock on PostgreSQL.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = migrator(self.is_postgres());
        match &self.pool {
            Pool::Sqlite(p) => migrator.run(p).await,
            Pool::Postgres(p) => migrator.run(p).await,
        }
        .context("database migration failed")
    }

    /// Whether this store runs on PostgreSQL (multi-replica capable) rather than SQLite.
    pub fn is_postgres(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    /// Number of database operations (checkouts, statements, `BEGIN`s, `COMMIT`s) issued so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// The same pool with a counter of its own: for background work (the job workers' polling
    /// and jobs) that must not move [`Store::queries`], with which tests prove that a cached
    /// request touches no database.
    pub fn with_own_counter(&self) -> Store {
        Store { pool: self.pool.clone(), queries: Arc::new(AtomicU64::new(0)), writer: self.writer.clone() }
    }

    fn count(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
    }

    /// A pooled connection in autocommit mode: each statement is its own transaction.
    pub async fn conn(&self) -> Result<Conn, StoreError> {
        self.count();
        let inner = match &self.pool {
            Pool::Sqlite(p) => ConnInner::Sqlite(p.acquire().await?),
            Pool::Postgres(p) => ConnInner::Postgres(p.acquire().await?),
        };
        Ok(Conn { inner, queries: self.queries.clone() })
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE` on SQLite, see the module docs).
    /// Dropping the [`Tx`] without [`Tx::commit`] rolls it back.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        // Open until the transaction ends (commit, rollback or drop): its length in a trace.
        let span = tracing::info_span!("transaction");
        self.count();
        let (inner, turn) = match &self.pool {
            Pool::Sqlite(p) => {
                let turn = tokio::time::timeout(SQLITE_BUSY_TIMEOUT, self.writer.clone().lock_owned())
                    .await
                    .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolTimedOut))?;
                (ConnInner::SqliteTx(p.begin_with("BEGIN IMMEDIATE").await?), Some(turn))
            }
            Pool::Postgres(p) => (ConnInner::PostgresTx(p.begin().await?), None),
        };
        Ok(Tx(Conn { inner, queries: self.queries.clone() }, span, turn))
    }

    /// Begins a transaction serialised per user: upserts the user row first, which holds it
    /// locked until commit (PostgreSQL) or runs under SQLite's single write lock. With `login`,
    /// also records the login (profile fields and `last_login_at`); without, only locks.
    pub async fn begin_user(&self, sub: &str, login: Option<&Profile>) -> Result<(Tx, User), StoreError> {
        let mut tx = self.begin().await?;
        let (user, _) = users::lock(&mut tx, sub, login, None, None).await?;
        Ok((tx, user))
    }

    /// [`Store::begin_user`] for a login, answering in the same statement what the login asks
    /// besides (see `users::lock`): with the token's verified e-mail (lower-cased), whether
    /// `allocated` seat assignments name it; with the session (`sid`, `""` without one), the
    /// organization it selected.
    pub async fn begin_login(
        &self,
        sub: &str,
        login: &Profile,
        verified_email: Option<&str>,
        session: Option<&str>,
    ) -> Result<(Tx, User, bool, Option<String>), StoreError> {
        let mut tx = self.begin().await?;
        let (user, state) = users::lock(&mut tx, sub, Some(login), verified_email, session).await?;
        Ok((tx, user, state.assignments > 0, state.selection))
    }

    /// One round trip to the database (readiness probes).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        run!(conn, |c| sqlx::query("SELECT 1").execute(c).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Closes the pool; later calls fail with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }
}

/// The migrations of one backend, embedded at compile time.
///
/// Listed by hand rather than with `sqlx::migrate!`: that macro needs sqlx's `macros` feature,
/// whose proc-macro crate builds both drivers and the bundled SQLite a second time for the host.
/// The version, description and checksum (SHA-384 of the file) are what `migrate!` would record,
/// so switching to it later needs no database change. A unit test checks that every file in
/// `migrations/<backend>/` is listed here.
fn migrator(postgres: bool) -> Migrator {
    let files: &[(i64, &str, &'static str)] = if postgres {
        &[
            (1, "initial", include_str!("../../migrations/postgres/0001_initial.sql")),
            (
                2,
                "active organization",
                include_str!("../../migrations/postgres/0002_active_organization.sql"),
            ),
            (3, "seat_assignments", include_str!("../../migrations/postgres/0003_seat_assignments.sql")),
            (4, "delegation", include_str!("../../migrations/postgres/0004_delegation.sql")),
            (5, "change events", include_str!("../../migrations/postgres/0005_change_events.sql")),
        ]
    } else {
        &[
            (1, "initial", include_str!("../../migrations/sqlite/0001_initial.sql")),
            (2, "active organization", include_str!("../../migrations/sqlite/0002_active_organization.sql")),
            (3, "seat_assignments", include_str!("../../migrations/sqlite/0003_seat_assignments.sql")),
            (4, "delegation", include_str!("../../migrations/sqlite/0004_delegation.sql")),
            (5, "change events", include_str!("../../migrations/sqlite/0005_change_events.sql")),
        ]
    };
    Migrator::with_migrations(
        files
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(version, description.into(), MigrationType::Simple, sql.into_sql_str(), false)
            })
            .collect(),
    )
}

/// A connection store functions run on: autocommit ([`Store::conn`]) or inside a [`Tx`].
pub struct Conn {
    inner: ConnInner,
    queries: Arc<AtomicU64>,
}

enum ConnInner {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
    SqliteTx(Transaction<'static, Sqlite>),
    PostgresTx(Transaction<'static, Postgres>),
}

/// The backend's own connection, for [`run!`] and for the few statements that differ.
pub(crate) enum Backend<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

impl Conn {
    /// The connection to run one statement on; counts it.
    pub(crate) fn backend(&mut self) -> Backend<'_> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        match &mut self.inner {
            ConnInner::Sqlite(c) => Backend::Sqlite(c),
            ConnInner::Postgres(c) => Backend::Postgres(c),
            ConnInner::SqliteTx(t) => Backend::Sqlite(t),
            ConnInner::PostgresTx(t) => Backend::Postgres(t),
        }
    }

    /// Whether this connection is to PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.inner, ConnInner::Postgres(_) | ConnInner::PostgresTx(_))
    }
}

/// A write transaction. Derefs to [`Conn`], so every store function runs inside it.
/// Dropped without [`Tx::commit`], it rolls back. The span covers the transaction, from
/// `BEGIN` to its end. On SQLite it holds the writers' turn (module docs) until it ends:
/// [`Tx::commit`] and [`Tx::rollback`] pass the turn on once SQLite has answered; a dropped
/// `Tx` passes it on once its rollback is queued (fields drop in order), and a writer that
/// comes in before that rollback ran waits for it in `busy_timeout`.
pub struct Tx(
    Conn,
    tracing::Span,
    #[expect(dead_code, reason = "held for its drop: the turn passes on when the Tx ends")]
    Option<tokio::sync::OwnedMutexGuard<()>>,
);

impl Tx {
    /// Commits the transaction.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.0.queries.fetch_add(1, Ordering::Relaxed);
        match self.0.inner {
            ConnInner::SqliteTx(t) => t.commit().instrument(self.1).await?,
            ConnInner::PostgresTx(t) => t.commit().instrument(self.1).await?,
            ConnInner::Sqlite(_) | ConnInner::Postgres(_) => {
                unreachable!("a Tx holds a transaction")
            }
        }
        Ok(())
    }

    /// Rolls the transaction back explicitly (dropping it does the same, later).
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.0.queries.fetch_add(1, Ordering::Relaxed);
        match self.0.inner {
            ConnInner::SqliteTx(t) => t.rollback().instrument(self.1).await?,
            ConnInner::PostgresTx(t) => t.rollback().instrument(self.1).await?,
            ConnInner::Sqlite(_) | ConnInner::Postgres(_) => {
                unreachable!("a Tx holds a transaction")
            }
        }
        Ok(())
    }
}

impl Deref for Tx {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.0
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.0
    }
}

/// `limit`/`offset` as bound parameters (both backends take 64-bit integers there).
pub(crate) fn page(limit: u32, offset: u32) -> (i64, i64) {
    (i64::from(limit), i64::from(offset))
}
