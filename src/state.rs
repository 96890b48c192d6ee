//! The state every handler shares, built once by [`App::build`](crate::App::build): one field
//! per part of the application, each owned by its module. Background tasks do not take it;
//! they take the parts they need (see `keycloak::jobs::Worker`).

use std::sync::Arc;

use crate::auth::Auth;
use crate::codes::FailureLimiter;
use crate::config::Config;
use crate::entitlements::Entitlements;
use crate::keycloak::KeycloakAdmin;
use crate::keycloak::jobs::Jobs;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::upstream::Upstream;

/// Shared state; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub struct Inner {
    /// The configuration as loaded; read by handlers for per-request switches.
    pub config: Arc<Config>,
    /// Who the caller is (tokens, the issuer's keys), which rules apply to a path, and which
    /// peers' forwarded headers are believed: the gate and the admin guard ask it.
    pub auth: Auth,
    /// A verified principal's B2B facts (memory tier, Redis tier, reconciliation, last known
    /// facts) and the signed entitlement token; public handlers ask it for facts, writers
    /// (admin, code redemption, Keycloak jobs) tell it what to invalidate after they commit.
    pub entitlements: Arc<Entitlements>,
    /// Organizations, contracts, memberships, users, audit, jobs, the persisted JWKS: the
    /// admin API and redemption write here (logins write through `entitlements`).
    pub store: Store,
    /// The app behind the sidecar, in reverse proxy mode.
    pub upstream: Option<Upstream>,
    /// The Keycloak admin client (`keycloak_admin`), when configured: organization sync,
    /// reconciliation from Keycloak and the job worker's membership pushes. `None`: those
    /// features answer that it is not configured, and Keycloak jobs wait in the queue.
    pub keycloak: Option<Arc<KeycloakAdmin>>,
    /// Wakes this process's job workers after a handler enqueued a job (`jobs.kick()`).
    pub jobs: Jobs,
    /// Counters and histograms, rendered at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Failed enrollment-code redemptions per user, for the 429 of docs/contract.md §7 (this
    /// replica only): the redemption route's own state.
    pub code_failures: FailureLimiter,
    /// Changes of the active organization per user (`server.max_selections_per_minute`, this
    /// replica only): every `PUT`/`DELETE /_sidecar/active-organization` counts.
    pub selection_changes: FailureLimiter,
}

impl AppState {
    pub fn new(inner: Inner) -> AppState {
        AppState(Arc::new(inner))
    }
}
