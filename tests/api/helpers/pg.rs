//! A fresh PostgreSQL database per test on the local server (127.0.0.1:5432, user postgres;
//! `SIDECAR_TEST_POSTGRES_URL` overrides the server), dropped when the guard goes away, and
//! the one fault the tests inject into it: making it unreachable and bringing it back.

use sqlx::Connection as _;

/// The server URL without a database name.
pub fn server_url() -> String {
    std::env::var("SIDECAR_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database that exists for one test.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let name = format!("sidecar_it_{}", uuid::Uuid::new_v4().simple());
        let mut admin =
            sqlx::PgConnection::connect(&format!("{}/postgres", server_url())).await.unwrap_or_else(|e| {
                panic!("PostgreSQL is required at {} (run scripts/services): {e}", server_url())
            });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let url = format!("{}/{name}", server_url());
        TestDatabase { name, url }
    }
}

impl TestDatabase {
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

/// A connection to the server's `postgres` database, for statements about test databases.
pub async fn maintenance() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&format!("{}/postgres", server_url())).await.unwrap()
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime; do the async cleanup on a thread of its own.
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
