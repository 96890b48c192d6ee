//! Prometheus metrics. Each [`App`](crate::App) owns its own registry (no process globals),
//! so two apps in one test process count separately. Label values come from small fixed
//! sets (reason codes, status classes), never from tokens, paths or users.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label pairs; keys and values are static strings from fixed sets.
pub type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the sidecar exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by `mode` (proxy, forward_auth, me, …) and status `class` (2xx …).
    pub requests: Family<Labels, Counter>,
    /// Authentication outcomes by `reason` (ok, anonymous, or a reject code).
    pub auth_decisions: Family<Labels, Counter>,
    /// JWKS fetches by `result` (ok, error, throttled).
    pub jwks_fetches: Family<Labels, Counter>,
    /// 1 while the key set in use came from the store, not from Keycloak.
    pub jwks_stale: Gauge,
    /// Cache lookups by `cache` (token, login, redis) and `result` (hit, miss).
    pub cache: Family<Labels, Counter>,
    /// Upstream responses by status `class` (2xx …, or error kinds).
    pub upstream_responses: Family<Labels, Counter>,
    /// Time to the upstream's response headers.
    pub upstream_latency: Histogram,
    /// Reconciliations by `result` (ok, error) and whether they `changed` anything.
    pub reconciliations: Family<Labels, Counter>,
    /// Changes written by reconciliation, by `kind`.
    pub reconcile_changes: Family<Labels, Counter>,
    /// SSO contracts skipped because they were full.
    pub seat_limit_skips: Counter,
    /// Claimed organizations that match no known organization.
    pub unknown_organizations: Counter,
    /// Store statements issued by requests and startup (a cached login must not move it);
    /// the job workers' background statements are not counted.
    pub store_queries: Counter,
    /// Redis commands that failed, by `op` (lookup, store, publish, subscribe) and `kind`
    /// (error, timeout, decode).
    pub redis_errors: Family<Labels, Counter>,
    /// Invalidations carried by Redis, by `direction` (published, received).
    pub redis_invalidations: Family<Labels, Counter>,
    /// 1 while subscribed to Redis invalidations.
    pub redis_subscribed: Gauge,
    /// Durable jobs not finished yet (queued or running), by `kind`; refreshed by each poll.
    pub jobs_queue_depth: Family<Labels, Gauge>,
    /// Job attempts by `kind` and `result` (ok, retry, failed).
    pub jobs: Family<Labels, Counter>,
    /// Enrollment-code redemptions by `result` (created, already, invalid, no_contract, full,
    /// rate_limited).
    pub code_redemptions: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("identity_sidecar");
        let requests = Family::default();
        registry.register("requests", "Requests by mode and status class", requests.clone());
        let auth_decisions = Family::default();
        registry.register("auth_decisions", "Authentication outcomes by reason", auth_decisions.clone());
        let jwks_fetches = Family::default();
        registry.register("jwks_fetches", "JWKS fetches by result", jwks_fetches.clone());
        let jwks_stale = Gauge::default();
        registry.register("jwks_stale", "1 while serving a persisted key set", jwks_stale.clone());
        let cache = Family::default();
        registry.register("cache_lookups", "Cache lookups by cache and result", cache.clone());
        let upstream_responses = Family::default();
        registry.register(
            "upstream_responses",
            "Upstream responses by status class",
            upstream_responses.clone(),
        );
        let upstream_latency = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "upstream_latency_seconds",
            "Time to upstream response headers",
            upstream_latency.clone(),
        );
        let reconciliations = Family::default();
        registry.register("reconciliations", "Login reconciliations by result", reconciliations.clone());
        let reconcile_changes = Family::default();
        registry.register(
            "reconcile_changes",
            "Changes written by reconciliation",
            reconcile_changes.clone(),
        );
        let seat_limit_skips = Counter::default();
        registry.register("seat_limit_skips", "SSO contracts skipped because full", seat_limit_skips.clone());
        let unknown_organizations = Counter::default();
        registry.register(
            "unknown_organizations",
            "Claimed organizations not known here",
            unknown_organizations.clone(),
        );
        let store_queries = Counter::default();
        registry.register("store_queries", "Store statements issued", store_queries.clone());
        let redis_errors = Family::default();
        registry.register(
            "redis_errors",
            "Failed Redis commands by operation and kind",
            redis_errors.clone(),
        );
        let redis_invalidations = Family::default();
        registry.register(
            "redis_invalidations",
            "Invalidations published to or received from Redis",
            redis_invalidations.clone(),
        );
        let redis_subscribed = Gauge::default();
        registry.register(
            "redis_subscribed",
            "1 while subscribed to Redis invalidations",
            redis_subscribed.clone(),
        );
        let jobs_queue_depth = Family::default();
        registry.register(
            "jobs_queue_depth",
            "Durable jobs queued or running, by kind",
            jobs_queue_depth.clone(),
        );
        let jobs = Family::default();
        registry.register("jobs", "Job attempts by kind and result", jobs.clone());
        let code_redemptions = Family::default();
        registry.register(
            "code_redemptions",
            "Enrollment-code redemptions by result",
            code_redemptions.clone(),
        );
        Metrics {
            jobs_queue_depth,
            jobs,
            code_redemptions,
            redis_errors,
            redis_invalidations,
            redis_subscribed,
            reconciliations,
            reconcile_changes,
            seat_limit_skips,
            unknown_organizations,
            store_queries,
            registry,
            requests,
            auth_decisions,
            jwks_fetches,
            jwks_stale,
            cache,
            upstream_responses,
            upstream_latency,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Adds an externally owned metric (store query counter, job queue gauges).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }
}

/// The status class label of an HTTP status.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
