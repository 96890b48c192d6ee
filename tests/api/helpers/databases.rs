//! The one way a test gets a database: [`Db`] names the backend, [`TestDatabase`] is a fresh
//! PostgreSQL database for one test (dropped when the guard goes away, also when the test
//! panics), [`Db::fresh`] an empty database of either kind by URL, and [`on_both_databases!`]
//! declares a case once per backend.
//!
//! Two test crates use this file: the integration binary (`tests/api/helpers`) and the store's
//! contract tests inside the library (`src/store/tests.rs` includes it with `#[path]`), so both
//! make, name and drop their databases the same way and read the same variable.
//!
//! The server is the local one (`postgres://postgres@127.0.0.1:5432`, what `scripts/services`
//! starts); `SIDECAR_TEST_POSTGRES_URL` points the tests at another server or role, given as
//! the server (`postgres://USER:PASSWORD@HOST:PORT`) or as a database on it (`…/postgres`). Its
//! user needs CREATEDB. When PostgreSQL is not there the PostgreSQL cases fail saying so; they
//! never skip.

use sqlx::Connection as _;

/// The variable that names another PostgreSQL server.
pub const POSTGRES_URL_VAR: &str = "SIDECAR_TEST_POSTGRES_URL";

/// Which database a case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// An empty database of one kind, and the guard that keeps it.
pub struct FreshDatabase {
    /// Its URL: a SQLite file (created on first connect) or a PostgreSQL database.
    pub url: String,
    /// The PostgreSQL database, dropped with this; `None` on SQLite.
    pub postgres: Option<TestDatabase>,
    /// The SQLite file's directory, removed with this.
    _dir: tempfile::TempDir,
}

impl Db {
    /// A fresh, empty database of this kind, for a case that needs its URL before any app.
    pub async fn fresh(self) -> FreshDatabase {
        let dir = tempfile::tempdir().expect("temp dir");
        let postgres = match self {
            Db::Sqlite => None,
            Db::Postgres => Some(TestDatabase::create().await),
        };
        let url = match &postgres {
            Some(database) => database.url.clone(),
            None => format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display()),
        };
        FreshDatabase { url, postgres, _dir: dir }
    }
}

/// The server URL without a database name.
pub fn server_url() -> String {
    let url = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    // A database on the server (`…/postgres`) names the same server: cut the path.
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, _database)) => format!("{scheme}://{authority}"),
            None => url,
        },
        None => url,
    }
}

/// The server as a message may show it: host and port, never the user's password.
fn server_for_messages() -> String {
    let url = server_url();
    url.rsplit_once('@').map_or(url.clone(), |(_, host)| host.to_owned())
}

/// A connection to the server's `postgres` database, for statements about test databases.
pub async fn maintenance() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&format!("{}/postgres", server_url())).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is required and is not reachable at {}: {e}. Start it (scripts/services) \
             or set {POSTGRES_URL_VAR} to a server whose user may CREATE DATABASE.",
            server_for_messages()
        )
    })
}

/// A database that exists for one test.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// Creates an empty database with a random name (`sidecar_test_<uuid>`).
    pub async fn create() -> TestDatabase {
        let name = format!("sidecar_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut maintenance().await)
            .await
            .expect("CREATE DATABASE (does the test user have CREATEDB?)");
        let url = format!("{}/{name}", server_url());
        TestDatabase { name, url }
    }

    /// Makes the database unreachable, as a failed-over or stopped server looks to the app:
    /// new connections are refused and every open one (the app's pool) is terminated.
    pub async fn close(&self) {
        let mut admin = maintenance().await;
        let sql = format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false", self.name);
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.unwrap();
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(&self.name)
            .execute(&mut admin)
            .await
            .unwrap();
    }

    /// Accepts connections again after [`TestDatabase::close`].
    pub async fn reopen(&self) {
        let sql = format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", self.name);
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut maintenance().await).await.unwrap();
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime (and during a panic's unwinding); do the async
        // cleanup on a thread of its own. FORCE ends the connections a failed test left open.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(mut admin) =
                    sqlx::PgConnection::connect(&format!("{}/postgres", server_url())).await
                {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await;
                }
            });
        })
        .join();
    }
}

/// Declares each case once per backend, as `<module>::on_sqlite::<case>` and
/// `<module>::on_postgres::<case>`. The calling module has [`Db`] in scope.
///
/// `on_both_databases!(a, b)` runs `async fn a(db: Db)`; `on_both_databases!(with run: a, b)`
/// runs `run(db, a)`, for cases that take something `run` makes from the database (the store
/// contract tests take a migrated `Store`).
macro_rules! on_both_databases {
    (with $runner:ident: $($case:ident),+ $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$runner(super::Db::Sqlite, super::$case).await;
                }
            )+
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$runner(super::Db::Postgres, super::$case).await;
                }
            )+
        }
    };
    ($($case:ident),+ $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Db::Sqlite).await;
                }
            )+
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Db::Postgres).await;
                }
            )+
        }
    };
}
pub(crate) use on_both_databases;
