//! Prometheus metrics. Each [`App`](crate::App) owns its own registry (no process globals),
//! so two apps in one test process count separately. Label values come from small fixed
//! sets (reason codes, status classes), never from tokens, paths or users.
//!
//! A leaf: it imports nothing else of the crate, so every module may count, and callers pass
//! plain values (a count, a label from a fixed set), not their own types.

use std::sync::OnceLock;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Label pairs; keys and values are static strings from fixed sets.
pub type Labels = Vec<(&'static str, &'static str)>;

/// The label of an event delivery target: a webhook's configured name (a set the operator
/// fixes in the configuration) or `redis_stream`.
pub type TargetLabels = Vec<(&'static str, String)>;

/// Every metric the sidecar exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by `mode` (proxy, forward_auth, me, …) and status `class` (2xx …).
    pub requests: Family<Labels, Counter>,
    /// Time from a public request reaching its route to its response headers, by `mode` and
    /// status `class` (a streamed body's transfer is not included).
    pub request_duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// Public requests being handled now, by `mode`.
    pub requests_in_flight: Family<Labels, Gauge>,
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
    /// Time to the upstream's response headers (the v1 name, kept for existing alerts).
    pub upstream_latency: Histogram,
    /// The same time under the name of the `…_duration_seconds` convention.
    pub upstream_duration: Histogram,
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
    /// Claims left out of `X-Userinfo` to keep it under `headers.max_userinfo_bytes`, by
    /// `list`: `extra` (outside the default claim list) or `default`.
    pub userinfo_claims_dropped: Family<Labels, Counter>,
    /// `X-Userinfo` values left empty because even `sub` and `b2b` did not fit.
    pub userinfo_omitted: Counter,
    /// Requests of organization managers on the public port that succeeded (2xx), by `route`
    /// (the path below `/manage/organizations/{org}`) and `method`.
    pub manager_actions: Family<Labels, Counter>,
    /// Changes of a session's active organization by `action`: `selected`, `cleared`, or
    /// refused: `not_member` (422), `fixed` (409, a single-organization scope), `rate_limited`.
    pub active_organization_selections: Family<Labels, Counter>,
    /// Seat assignments entering a `state` (allocated, accepted, expired, revoked;
    /// docs/contract.md §12).
    pub assignments: Family<Labels, Counter>,
    /// Change events numbered into the sequence by this replica (docs/events.md); every audit
    /// row is numbered, so this counts the rows the feed and the targets can see.
    pub events_sequenced: Counter,
    /// Events acknowledged by a delivery `target` (a webhook's name, or `redis_stream`).
    pub events_delivered: Family<TargetLabels, Counter>,
    /// Failed delivery attempts per `target` (error, timeout, non-2xx answer).
    pub event_delivery_failures: Family<TargetLabels, Counter>,
    /// Sequence numbers between the newest event and the last one `target` acknowledged, as
    /// last seen by the replica delivering it.
    pub event_delivery_lag: Family<TargetLabels, Gauge>,
    /// Targets marked `dead` (fell behind `events.retention_days`), per `target`.
    pub event_targets_dead: Family<TargetLabels, Counter>,
    /// The series every request counts, resolved once (see [`Hot`]).
    hot: Hot,
}

/// Request modes counted in `requests`, and status classes.
const MODES: [&str; 7] = ["forward_auth", "proxy", "me", "redeem", "jwks", "other", "admin"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const UPSTREAM_OUTCOMES: [&str; 8] = ["1xx", "2xx", "3xx", "4xx", "5xx", "timeout", "connect_error", "error"];

/// Buckets of the latency histograms, in seconds: from a cached login (well under a
/// millisecond) to a slow upstream.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The sidecar's version (`CARGO_PKG_VERSION`) and the commit it was built from: the
/// `IDENTITY_SIDECAR_COMMIT` environment variable at build time (the image's build argument),
/// `unknown` when it was not set. Read at compile time so a binary always reports what it was
/// built from; no build script shells out to git, so a build from a source tarball works.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = match option_env!("IDENTITY_SIDECAR_COMMIT") {
    Some(commit) if !commit.is_empty() => commit,
    _ => "unknown",
};

/// Counters on every request's path, each taken from its family on first use and then kept,
/// so a request neither allocates a label vector nor takes a family's lock to count. A series
/// still appears in `/metrics` only once it has been counted (families are never cleared, so a
/// kept counter stays the family's own).
#[derive(Default)]
struct Hot {
    token_hit: OnceLock<Counter>,
    token_miss: OnceLock<Counter>,
    login_hit: OnceLock<Counter>,
    login_miss: OnceLock<Counter>,
    auth_ok: OnceLock<Counter>,
    auth_anonymous: OnceLock<Counter>,
    requests: [[OnceLock<Counter>; CLASSES.len()]; MODES.len()],
    durations: [[OnceLock<Histogram>; CLASSES.len()]; MODES.len()],
    in_flight: [OnceLock<Gauge>; MODES.len()],
    upstream: [OnceLock<Counter>; UPSTREAM_OUTCOMES.len()],
}

/// A request counted in `requests_in_flight` until it is dropped: when its answer is out, or
/// when the client went away and the request's future was dropped mid-way.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn kept<'a>(
    slot: &'a OnceLock<Counter>,
    family: &Family<Labels, Counter>,
    labels: &[(&'static str, &'static str)],
) -> &'a Counter {
    slot.get_or_init(|| family.get_or_create(&labels.to_vec()).clone())
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
        let request_duration = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time to a public request's response headers, by mode and status class",
            request_duration.clone(),
        );
        let requests_in_flight = Family::default();
        registry.register(
            "requests_in_flight",
            "Public requests being handled, by mode",
            requests_in_flight.clone(),
        );
        registry.register(
            "build",
            "The version and commit of this binary",
            Info::new(vec![("version", VERSION), ("commit", COMMIT)]),
        );
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
        let upstream_latency = latency_histogram();
        registry.register(
            "upstream_latency_seconds",
            "Time to upstream response headers",
            upstream_latency.clone(),
        );
        let upstream_duration = latency_histogram();
        registry.register(
            "upstream_duration_seconds",
            "Time to upstream response headers",
            upstream_duration.clone(),
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
        let userinfo_claims_dropped = Family::default();
        registry.register(
            "userinfo_claims_dropped",
            "Claims left out of X-Userinfo to keep it under headers.max_userinfo_bytes, by list",
            userinfo_claims_dropped.clone(),
        );
        let active_organization_selections = Family::default();
        registry.register(
            "active_organization_selections",
            "Changes of a session's active organization by action (selected, cleared, not_member, fixed, rate_limited)",
            active_organization_selections.clone(),
        );
        let userinfo_omitted = Counter::default();
        registry.register(
            "userinfo_omitted",
            "X-Userinfo values left empty because sub and b2b alone exceed headers.max_userinfo_bytes",
            userinfo_omitted.clone(),
        );
        let manager_actions = Family::default();
        registry.register(
            "manager_actions",
            "Successful requests of organization managers on the manage routes, by route and method",
            manager_actions.clone(),
        );
        let assignments = Family::default();
        registry.register(
            "assignments",
            "Seat assignments entering a state (allocated, accepted, expired, revoked)",
            assignments.clone(),
        );
        let events_sequenced = Counter::default();
        registry.register(
            "events_sequenced",
            "Change events numbered into the sequence by this replica",
            events_sequenced.clone(),
        );
        let events_delivered = Family::default();
        registry.register(
            "events_delivered",
            "Change events acknowledged by a delivery target (webhook name or redis_stream)",
            events_delivered.clone(),
        );
        let event_delivery_failures = Family::default();
        registry.register(
            "event_delivery_failures",
            "Failed change-event delivery attempts per target",
            event_delivery_failures.clone(),
        );
        let event_delivery_lag = Family::default();
        registry.register(
            "event_delivery_lag",
            "Sequence numbers between the newest change event and the last one a target acknowledged",
            event_delivery_lag.clone(),
        );
        let event_targets_dead = Family::default();
        registry.register(
            "event_targets_dead",
            "Delivery targets marked dead because they fell behind events.retention_days",
            event_targets_dead.clone(),
        );
        Metrics {
            events_sequenced,
            events_delivered,
            event_delivery_failures,
            event_delivery_lag,
            event_targets_dead,
            manager_actions,
            assignments,
            userinfo_claims_dropped,
            userinfo_omitted,
            jobs_queue_depth,
            jobs,
            code_redemptions,
            active_organization_selections,
            hot: Hot::default(),
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
            upstream_duration,
            request_duration,
            requests_in_flight,
        }
    }

    /// The content type of [`render`](Self::render)'s output: the OpenMetrics text format
    /// (it ends with `# EOF`), which Prometheus asks for first.
    pub const CONTENT_TYPE: &'static str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

    /// The OpenMetrics text exposition format ([`CONTENT_TYPE`](Self::CONTENT_TYPE)).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The series of one delivery target in a `TargetLabels` family.
    pub fn target(name: &str) -> TargetLabels {
        vec![("target", name.to_owned())]
    }

    /// Counts `n` seat assignments entering `state`.
    pub fn count_assignments(&self, state: &'static str, n: u64) {
        self.assignments.get_or_create(&vec![("state", state)]).inc_by(n);
    }

    /// Counts a request in `requests` by `mode` and status `class`.
    pub fn count_request(&self, mode: &'static str, class: &'static str) {
        let labels = [("mode", mode), ("class", class)];
        match (MODES.iter().position(|m| *m == mode), CLASSES.iter().position(|c| *c == class)) {
            (Some(m), Some(c)) => kept(&self.hot.requests[m][c], &self.requests, &labels).inc(),
            _ => self.requests.get_or_create(&labels.to_vec()).inc(),
        };
    }

    /// Counts a manager's successful request in `manager_actions` (`route` from the fixed
    /// table of manage routes, `method` from a fixed set).
    pub fn count_manager_action(&self, route: &'static str, method: &'static str) {
        self.manager_actions.get_or_create(&vec![("route", route), ("method", method)]).inc();
    }

    /// Counts an answered request in `requests` by `mode` and the class of its `status`.
    pub fn count_response(&self, mode: &'static str, status: u16) {
        self.count_request(mode, status_class(status));
    }

    /// Records a public request's time to its response headers in `request_duration_seconds`
    /// by `mode` and the class of its `status`.
    pub fn observe_request(&self, mode: &'static str, status: u16, seconds: f64) {
        let class = status_class(status);
        let labels = [("mode", mode), ("class", class)];
        match (MODES.iter().position(|m| *m == mode), CLASSES.iter().position(|c| *c == class)) {
            (Some(m), Some(c)) => self.hot.durations[m][c]
                .get_or_init(|| self.request_duration.get_or_create(&labels.to_vec()).clone())
                .observe(seconds),
            _ => self.request_duration.get_or_create(&labels.to_vec()).observe(seconds),
        }
    }

    /// Counts a public request of `mode` in `requests_in_flight` until the returned guard is
    /// dropped.
    pub fn in_flight(&self, mode: &'static str) -> InFlight {
        let gauge = match MODES.iter().position(|m| *m == mode) {
            Some(m) => self.hot.in_flight[m]
                .get_or_init(|| self.requests_in_flight.get_or_create(&vec![("mode", mode)]).clone())
                .clone(),
            None => self.requests_in_flight.get_or_create(&vec![("mode", mode)]).clone(),
        };
        gauge.inc();
        InFlight(gauge)
    }

    /// Records the time to the upstream's response headers, under both names
    /// (`upstream_latency_seconds` of v1 and `upstream_duration_seconds`).
    pub fn observe_upstream(&self, seconds: f64) {
        self.upstream_latency.observe(seconds);
        self.upstream_duration.observe(seconds);
    }

    /// Counts an enrollment-code redemption in `code_redemptions` by `result` (created,
    /// already, invalid, no_contract, full, rate_limited).
    pub fn count_redemption(&self, result: &'static str) {
        self.code_redemptions.get_or_create(&vec![("result", result)]).inc();
    }

    /// Counts a change of a session's active organization (or its refusal) by `action`.
    pub fn count_selection(&self, action: &'static str) {
        self.active_organization_selections.get_or_create(&vec![("action", action)]).inc();
    }

    /// Counts a lookup in `cache_lookups` by `cache` and `result`.
    pub fn count_cache(&self, cache: &'static str, result: &'static str) {
        let labels = [("cache", cache), ("result", result)];
        let slot = match (cache, result) {
            ("token", "hit") => &self.hot.token_hit,
            ("token", "miss") => &self.hot.token_miss,
            ("login", "hit") => &self.hot.login_hit,
            ("login", "miss") => &self.hot.login_miss,
            _ => {
                self.cache.get_or_create(&labels.to_vec()).inc();
                return;
            }
        };
        kept(slot, &self.cache, &labels).inc();
    }

    /// Counts an authentication outcome in `auth_decisions` by `reason`.
    pub fn count_auth(&self, reason: &'static str) {
        let labels = [("reason", reason)];
        let slot = match reason {
            "ok" => &self.hot.auth_ok,
            "anonymous" => &self.hot.auth_anonymous,
            _ => {
                self.auth_decisions.get_or_create(&labels.to_vec()).inc();
                return;
            }
        };
        kept(slot, &self.auth_decisions, &labels).inc();
    }

    /// Counts an upstream response in `upstream_responses` by `outcome`.
    pub fn count_upstream(&self, outcome: &'static str) {
        let labels = [("outcome", outcome)];
        match UPSTREAM_OUTCOMES.iter().position(|o| *o == outcome) {
            Some(i) => kept(&self.hot.upstream[i], &self.upstream_responses, &labels).inc(),
            None => self.upstream_responses.get_or_create(&labels.to_vec()).inc(),
        };
    }

    /// Counts the claims one request's `X-Userinfo` left out for its size bound, by list:
    /// `extra` outside the default claims, `default` of them. Nothing, almost always: then no
    /// lock is taken and no series is created.
    pub fn count_userinfo_dropped(&self, extra: usize, default: usize) {
        for (list, n) in [("extra", extra), ("default", default)] {
            if n > 0 {
                self.userinfo_claims_dropped.get_or_create(&vec![("list", list)]).inc_by(n as u64);
            }
        }
    }

    /// Counts a request whose `X-Userinfo` was left empty: not even `sub` and `b2b` fit.
    pub fn count_userinfo_omitted(&self) {
        self.userinfo_omitted.inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_counters_count_in_their_family_and_appear_only_once_used() {
        let m = Metrics::new();
        assert!(!m.render().contains("mode=\"proxy\""));
        for _ in 0..3 {
            m.count_request("proxy", "2xx");
            m.count_cache("token", "hit");
            m.count_auth("ok");
            m.count_upstream("2xx");
        }
        m.count_request("proxy", "2xx");
        m.count_request("custom", "2xx");
        m.count_cache("redis", "hit");
        m.count_auth("expired");
        m.count_upstream("weird");
        let text = m.render();
        for line in [
            "identity_sidecar_requests_total{mode=\"proxy\",class=\"2xx\"} 4",
            "identity_sidecar_requests_total{mode=\"custom\",class=\"2xx\"} 1",
            "identity_sidecar_cache_lookups_total{cache=\"token\",result=\"hit\"} 3",
            "identity_sidecar_cache_lookups_total{cache=\"redis\",result=\"hit\"} 1",
            "identity_sidecar_auth_decisions_total{reason=\"ok\"} 3",
            "identity_sidecar_auth_decisions_total{reason=\"expired\"} 1",
            "identity_sidecar_upstream_responses_total{outcome=\"2xx\"} 3",
            "identity_sidecar_upstream_responses_total{outcome=\"weird\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("result=\"miss\""), "unused series appear: {text}");
        // A counter taken before is the family's own: get_or_create sees its counts.
        assert_eq!(m.requests.get_or_create(&vec![("mode", "proxy"), ("class", "2xx")]).get(), 4);
    }

    #[test]
    fn request_durations_in_flight_requests_and_build_info_are_exported() {
        let m = Metrics::new();
        let guard = m.in_flight("proxy");
        let custom = m.in_flight("custom");
        assert!(
            m.render().contains("identity_sidecar_requests_in_flight{mode=\"proxy\"} 1"),
            "{}",
            m.render()
        );
        drop(guard);
        drop(custom);
        m.observe_request("proxy", 200, 0.002);
        m.observe_request("proxy", 503, 0.2);
        m.observe_request("custom", 404, 0.01);
        m.observe_upstream(0.003);
        let text = m.render();
        for line in [
            "identity_sidecar_requests_in_flight{mode=\"proxy\"} 0",
            "identity_sidecar_requests_in_flight{mode=\"custom\"} 0",
            "identity_sidecar_request_duration_seconds_count{mode=\"proxy\",class=\"2xx\"} 1",
            "identity_sidecar_request_duration_seconds_count{mode=\"proxy\",class=\"5xx\"} 1",
            "identity_sidecar_request_duration_seconds_count{mode=\"custom\",class=\"4xx\"} 1",
            "identity_sidecar_upstream_latency_seconds_count 1",
            "identity_sidecar_upstream_duration_seconds_count 1",
            "# TYPE identity_sidecar_build info",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        let build = format!("identity_sidecar_build_info{{version=\"{VERSION}\",commit=\"{COMMIT}\"}} 1");
        assert!(text.contains(&build), "{build} missing in\n{text}");
    }

    #[test]
    fn userinfo_trimming_is_counted_by_list_and_nothing_appears_while_nothing_is_dropped() {
        let m = Metrics::new();
        m.count_userinfo_dropped(0, 0);
        assert!(!m.render().contains("userinfo_claims_dropped_total{"), "{}", m.render());
        m.count_userinfo_dropped(3, 0);
        m.count_userinfo_dropped(2, 1);
        m.count_userinfo_omitted();
        let text = m.render();
        for line in [
            "identity_sidecar_userinfo_claims_dropped_total{list=\"extra\"} 5",
            "identity_sidecar_userinfo_claims_dropped_total{list=\"default\"} 1",
            "identity_sidecar_userinfo_omitted_total 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
