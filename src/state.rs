//! The state every handler shares, built once by [`App::build`](crate::App::build).

use std::sync::Arc;

use ipnet::IpNet;

use crate::auth::gate::Authenticator;
use crate::auth::jwks::Jwks;
use crate::auth::rules::Rules;
use crate::config::Config;
use crate::metrics::Metrics;

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
    /// Token → principal, for the public port and admin Keycloak-token auth.
    pub auth: Authenticator,
    /// The issuer's keys; readiness and the background refresher read it too.
    pub jwks: Arc<Jwks>,
    /// `[[auth.rules]]`, prepared for matching.
    pub rules: Rules,
    /// Peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Counters and histograms, rendered at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The app behind the sidecar, in reverse proxy mode.
    pub upstream: Option<crate::upstream::Upstream>,
    /// Organizations, contracts, memberships, users, audit, jobs, the persisted JWKS.
    pub store: crate::store::Store,
    /// A verified principal's B2B facts (memory tier, Redis tier, reconciliation, last known
    /// facts) and the signed entitlement token; public handlers ask it for facts, writers
    /// (admin, code redemption, Keycloak jobs) tell it what to invalidate after they commit.
    pub entitlements: Arc<crate::entitlements::Entitlements>,
    /// The Keycloak admin client (`keycloak_admin`), when configured: organization sync,
    /// reconciliation from Keycloak and the job worker's membership pushes. `None`: those
    /// features answer that it is not configured, and Keycloak jobs wait in the queue.
    pub keycloak: Option<Arc<crate::keycloak::KeycloakAdmin>>,
    /// Wakes this process's job workers after an enqueue ([`AppState::kick_jobs`]).
    pub jobs_notify: Arc<tokio::sync::Notify>,
    /// Failed enrollment-code redemptions per user, for the 429 of docs/contract.md §7 (this replica only).
    pub code_failures: crate::codes::FailureLimiter,
}

impl AppState {
    pub fn new(inner: Inner) -> AppState {
        AppState(Arc::new(inner))
    }

    /// Tells this process's job workers to look for due jobs now rather than at their next
    /// poll. Call it after committing a transaction that enqueued a job (other replicas find
    /// the job at their next poll, within a second).
    pub fn kick_jobs(&self) {
        self.jobs_notify.notify_waiters();
    }

    /// Whether `X-Forwarded-*` from this peer may be believed.
    pub fn is_trusted(&self, peer: std::net::IpAddr) -> bool {
        let peer = match peer {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(peer),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }
}
