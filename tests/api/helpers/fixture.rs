//! [`Fixture`]: the app most integration tests start from — the real sidecar wired to a fresh
//! fake Keycloak, with the static admin token, on the database the case names.
//!
//! A test file with more to say keeps its own wrapper (its request helpers, its seeded rows)
//! around a `Fixture`, so how an app, its issuer and its database are made and torn down is
//! written once.

use reqwest::Method;

use super::app::{ADMIN_TOKEN, TestApp, base_env, set, use_database, with_admin_token};
use super::databases::{Db, TestDatabase};
use super::keycloak::FakeKeycloak;

/// A running sidecar, the fake Keycloak it trusts and, on PostgreSQL, its own database.
pub struct Fixture {
    pub app: TestApp,
    pub kc: FakeKeycloak,
    /// Declared last so it drops last: the app's connections close before the database goes.
    pub db: Option<TestDatabase>,
}

impl Fixture {
    /// An app with the base config and [`ADMIN_TOKEN`], on `db`.
    pub async fn start(db: Db) -> Fixture {
        Fixture::start_with(db, |_, _| {}).await
    }

    /// Like [`Fixture::start`], with `configure` changing the config pairs last.
    pub async fn start_with(
        db: Db,
        configure: impl FnOnce(&FakeKeycloak, &mut Vec<(String, String)>),
    ) -> Fixture {
        let kc = FakeKeycloak::start().await;
        let mut env = base_env(&kc);
        with_admin_token(&mut env);
        let db = use_database(db, &mut env).await;
        configure(&kc, &mut env);
        let app = TestApp::spawn_with(env).await;
        Fixture { app, kc, db }
    }

    /// A request to `/admin/v1{path}` on the admin port, with the static admin token.
    pub fn admin(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.app
            .http
            .request(method, self.app.admin_url(&format!("/admin/v1{path}")))
            .bearer_auth(ADMIN_TOKEN)
    }
}

/// Points the config at the fake realm's admin API with its admin client, fast retries and
/// Keycloak's default page size (10), so paging is exercised with a handful of organizations.
pub fn with_keycloak_admin(kc: &FakeKeycloak, env: &mut Vec<(String, String)>) {
    let (client_id, secret) = kc.admin_client();
    set(env, "SIDECAR__KEYCLOAK_ADMIN__URL", kc.base_url());
    set(env, "SIDECAR__KEYCLOAK_ADMIN__REALM", kc.realm());
    set(env, "SIDECAR__KEYCLOAK_ADMIN__CLIENT_ID", client_id);
    set(env, "SIDECAR__KEYCLOAK_ADMIN__CLIENT_SECRET", secret);
    set(env, "SIDECAR__KEYCLOAK_ADMIN__TIMEOUT_SECS", "3");
    set(env, "SIDECAR__KEYCLOAK_ADMIN__RETRY_BASE_MS", "20");
    set(env, "SIDECAR__KEYCLOAK_ADMIN__PAGE_SIZE", "10");
}
