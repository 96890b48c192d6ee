//! `TestApp`: the real `identity_sidecar::App`, built from env-style config pairs exactly as
//! the binary would read them, bound on `127.0.0.1:0`, stopped when dropped.

use std::net::SocketAddr;
use std::time::Duration;

use identity_sidecar::{App, AppHandle, Config};

use super::databases::{Db, TestDatabase};
use super::keycloak::FakeKeycloak;

/// A running sidecar and a client for it.
pub struct TestApp {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub http: reqwest::Client,
    handle: Option<AppHandle>,
    /// Keeps the SQLite file (and anything else on disk) alive as long as the app.
    pub dir: tempfile::TempDir,
    /// The app's database URL (a SQLite file in `dir`, or a PostgreSQL test database).
    pub database_url: String,
}

/// Config pairs every test app starts from: the fake Keycloak as issuer, audience `app`,
/// loopback ports chosen by the OS, a private SQLite file.
pub fn base_env(kc: &FakeKeycloak) -> Vec<(String, String)> {
    [
        ("SIDECAR__OIDC__ISSUER", kc.issuer()),
        ("SIDECAR__OIDC__AUDIENCES", r#"["app"]"#.to_string()),
        ("SIDECAR__SERVER__LISTEN", "127.0.0.1:0".to_string()),
        ("SIDECAR__SERVER__ADMIN_LISTEN", "127.0.0.1:0".to_string()),
        ("SIDECAR__SERVER__SHUTDOWN_GRACE_SECS", "5".to_string()),
        ("SIDECAR__OIDC__HTTP_TIMEOUT_SECS", "2".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The static admin token test apps accept (audit actor `admin:ops`).
pub const ADMIN_TOKEN: &str = "ops-static-admin-token-0123456789";

/// Configures [`ADMIN_TOKEN`] as the static admin token named `ops`.
pub fn with_admin_token(env: &mut Vec<(String, String)>) {
    use sha2::Digest as _;
    let sha256 = hex::encode(sha2::Sha256::digest(ADMIN_TOKEN.as_bytes()));
    set(
        env,
        "SIDECAR__ADMIN__TOKEN_SHA256",
        serde_json::json!([{"name": "ops", "sha256": sha256}]).to_string(),
    );
}

/// Points the config at `db`: the default SQLite file, or a fresh PostgreSQL database whose
/// guard the caller keeps for the test's lifetime.
pub async fn use_database(db: Db, env: &mut Vec<(String, String)>) -> Option<TestDatabase> {
    match db {
        Db::Sqlite => None,
        Db::Postgres => {
            let database = TestDatabase::create().await;
            set(env, "SIDECAR__DATABASE__URL", database.url.clone());
            Some(database)
        }
    }
}

/// Sets (or replaces) one pair.
pub fn set(env: &mut Vec<(String, String)>, key: &str, value: impl Into<String>) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.into()));
}

impl TestApp {
    /// Starts an app with the base config and waits until it is ready.
    pub async fn spawn(kc: &FakeKeycloak) -> TestApp {
        Self::spawn_with(base_env(kc)).await
    }

    /// Starts an app with these config pairs and waits until it is ready.
    pub async fn spawn_with(env: Vec<(String, String)>) -> TestApp {
        let app = Self::start(env).await;
        app.wait_ready(Duration::from_secs(10)).await;
        app
    }

    /// Starts an app without waiting for readiness.
    pub async fn start(mut env: Vec<(String, String)>) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        if !env.iter().any(|(k, _)| k == "SIDECAR__DATABASE__URL") {
            let db = dir.path().join("sidecar.db");
            env.push(("SIDECAR__DATABASE__URL".into(), format!("sqlite://{}?mode=rwc", db.display())));
        }
        let database_url =
            env.iter().find(|(k, _)| k == "SIDECAR__DATABASE__URL").map(|(_, v)| v.clone()).unwrap();
        let config = Config::load(None, env).expect("test config is valid");
        let app = App::build(config).await.expect("app builds");
        let (public, admin) = (app.public_addr(), app.admin_addr());
        let http = reqwest::Client::builder().no_proxy().build().expect("client");
        TestApp { public, admin, http, handle: Some(app.spawn()), dir, database_url }
    }

    /// A store handle on the app's own database, for seeding and asserting on rows.
    pub async fn store(&self) -> identity_sidecar::store::Store {
        identity_sidecar::store::Store::connect(&self.database_url, 2).await.expect("test store connects")
    }

    pub async fn wait_ready(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let ready = self.http.get(self.admin_url("/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the app did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path))
    }

    /// A forward-auth call as APISIX makes it (original method and URI in X-Forwarded-*).
    pub fn forward_auth(&self, method: &str, uri: &str) -> reqwest::RequestBuilder {
        self.http
            .get(self.url("/_sidecar/auth"))
            .header("x-forwarded-method", method)
            .header("x-forwarded-uri", uri)
    }

    /// Status of a forward-auth call for `/` with this bearer token.
    pub async fn auth_status(&self, token: &str) -> u16 {
        self.forward_auth("GET", "/")
            .bearer_auth(token)
            .send()
            .await
            .expect("sidecar answers")
            .status()
            .as_u16()
    }

    /// The Prometheus text from the admin port.
    pub async fn metrics(&self) -> String {
        self.http.get(self.admin_url("/metrics")).send().await.unwrap().text().await.unwrap()
    }

    /// Graceful shutdown; returns what the app's run returned.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.handle.take().expect("running").shutdown().await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.shutdown_token().cancel();
        }
    }
}

/// The value of a counter line (`name{labels} value`) in Prometheus text, 0 when absent.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}
