//! The application: checks the configuration ([`check`]), binds the public and admin
//! listeners and the optional metrics listener (port 0 works), builds the shared state, owns
//! the background tasks and stops everything on shutdown. Tests start the same `App` that
//! `main` starts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::{HeaderName, HeaderValue, Request};
use futures_util::FutureExt as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::Auth;
use crate::auth::authenticator::{Authenticator, token_cache};
use crate::auth::discovery::Discovery;
use crate::auth::jwks::Jwks;
use crate::config::Config;
use crate::keycloak::jobs::{Jobs, Worker};
use crate::metrics::Metrics;
use crate::state::{AppState, Inner};

mod check;

pub use check::{Checked, check};

/// A built, not yet running application.
pub struct App {
    state: AppState,
    public: TcpListener,
    admin: TcpListener,
    /// `server.metrics_listen`: `/metrics` only, when set.
    metrics: Option<TcpListener>,
    /// Change-event delivery targets (`events.webhooks`, `events.redis_stream`).
    event_targets: Vec<crate::events::deliver::Target>,
}

/// A running application.
pub struct AppHandle {
    shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    grace: Duration,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl App {
    /// Checks `config` ([`check`]), builds state and binds listeners. Keys are loaded in the
    /// background after `spawn`; `/readyz` reports when they are there.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let Checked { policy, rules } = check(&config)?;
        if config.oidc.audiences.is_empty() {
            tracing::warn!("oidc.allow_any_audience is on: tokens for any client are accepted");
        }
        let metrics = Arc::new(Metrics::new());
        let discovery = Discovery::new(&config.oidc)?;
        let jwks = Arc::new(Jwks::new(
            discovery,
            Duration::from_secs(config.oidc.jwks_min_refresh_secs),
            metrics.clone(),
        ));
        let authenticator = Authenticator {
            policy,
            jwks: jwks.clone(),
            tokens: token_cache(cache_budget(&config)),
            sources: config.oidc.token_sources.clone(),
            metrics: metrics.clone(),
        };
        let auth = Auth { authenticator, rules, trusted_proxies: config.server.trusted_proxies.clone() };
        let public = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot bind server.listen {}", config.server.listen))?;
        let admin = TcpListener::bind(config.server.admin_listen)
            .await
            .with_context(|| format!("cannot bind server.admin_listen {}", config.server.admin_listen))?;
        let metrics_listener = match config.server.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind server.metrics_listen {addr}"))?,
            ),
            None => None,
        };
        let upstream = match &config.upstream.url {
            Some(url) => Some(crate::upstream::Upstream::new(url, &config.upstream)?),
            None => None,
        };
        let store = crate::store::Store::connect(config.database_url(), config.database.max_connections)
            .await
            .context("cannot open database.url")?;
        if config.database.migrate_on_start {
            store.migrate().await.context("database migrations failed")?;
        }
        let entitlements = crate::entitlements::Entitlements::build(
            &config,
            store.clone(),
            metrics.clone(),
            cache_budget(&config),
        )
        .await?;
        load_persisted_keys(&store, &jwks, &config.oidc.issuer).await;
        let event_targets = crate::events::targets(&config, entitlements.redis())?;
        let keycloak = keycloak_admin(&config)?;
        let code_failures =
            crate::codes::FailureLimiter::new(config.codes.max_failures_per_minute, config.cache.max_entries);
        let selection_changes = crate::codes::FailureLimiter::new(
            config.server.max_selections_per_minute,
            config.cache.max_entries,
        );
        let state = AppState::new(Inner {
            config: Arc::new(config),
            auth,
            entitlements: Arc::new(entitlements),
            store,
            upstream,
            keycloak,
            jobs: Jobs::default(),
            metrics,
            code_failures,
            selection_changes,
        });
        Ok(App { state, public, admin, metrics: metrics_listener, event_targets })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public.local_addr().expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener has an address")
    }

    /// The address of the metrics listener, when `server.metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|l| l.local_addr().expect("bound listener has an address"))
    }

    /// Starts serving and the background tasks.
    pub fn spawn(self) -> AppHandle {
        let public_addr = self.public_addr();
        let admin_addr = self.admin_addr();
        let shutdown = CancellationToken::new();
        let grace = Duration::from_secs(self.state.config.server.shutdown_grace_secs);
        let mut tasks = JoinSet::new();

        let manage = crate::admin::manage::routes(&self.state);
        let public = with_request_id(crate::public::router(self.state.clone(), manage));
        let admin = with_request_id(crate::admin::router(self.state.clone(), shutdown.clone()));
        let limits = crate::server::Limits::from_config(&self.state.config.server);
        // The admin port outlives the public one: while the public port drains, `/readyz`
        // answers 503 (the token above is cancelled) so a load balancer stops sending work,
        // and `/metrics` still shows the drain. It stops once the public port has drained.
        let admin_stop = CancellationToken::new();
        let public_served = crate::server::serve(self.public, public, limits, shutdown.clone());
        tasks.spawn({
            let admin_stop = admin_stop.clone();
            async move {
                public_served.await;
                admin_stop.cancel();
                Ok(())
            }
        });
        if let Some(listener) = self.metrics {
            // Like the admin port, the metrics port shows the drain until the public port is done.
            let router = with_request_id(crate::admin::metrics_router(self.state.clone()));
            tasks.spawn(crate::server::serve(listener, router, limits, admin_stop.clone()).map(Ok));
        }
        tasks.spawn(crate::server::serve(self.admin, admin, limits, admin_stop).map(Ok));
        let state = &self.state;
        // Background statements are counted apart from requests' (see `Store::with_own_counter`).
        let background = state.store.with_own_counter();
        let keys = KeyRefresh {
            jwks: state.auth.authenticator.jwks.clone(),
            store: background.clone(),
            issuer: state.config.oidc.issuer.clone(),
            every: Duration::from_secs(state.config.oidc.jwks_refresh_secs.max(1)),
        };
        tasks.spawn(keys.run(shutdown.clone()));
        if let Some(subscriber) = self.state.entitlements.invalidation_subscriber(shutdown.clone()) {
            tasks.spawn(subscriber);
        }
        let worker = Worker {
            store: background,
            keycloak: state.keycloak.clone(),
            entitlements: state.entitlements.clone(),
            metrics: state.metrics.clone(),
            jobs: state.jobs.clone(),
            timeout_secs: state.config.keycloak_admin.timeout_secs,
            retry_base: Duration::from_millis(state.config.keycloak_admin.retry_base_ms),
        };
        for kind in crate::keycloak::jobs::KINDS {
            tasks.spawn(crate::keycloak::jobs::run(worker.clone(), kind, shutdown.clone()));
        }
        if !self.event_targets.is_empty() {
            // Without a target nothing runs in the background: the pull feed numbers events
            // itself on each read.
            let events = &state.config.events;
            let background = state.store.with_own_counter();
            let every = Duration::from_millis(events.poll_interval_ms);
            tasks.spawn(crate::events::run_sequencer(
                background.clone(),
                state.metrics.clone(),
                every,
                shutdown.clone(),
            ));
            let deliverer = Arc::new(crate::events::deliver::Deliverer {
                store: background,
                metrics: state.metrics.clone(),
                owner: crate::events::deliver::owner_id(),
                source: events.source.clone(),
                retention: time::Duration::days(i64::from(events.retention_days)),
                poll: every,
                retry_base: Duration::from_millis(events.retry_base_ms),
                retry_max: Duration::from_secs(events.retry_max_secs),
            });
            for target in self.event_targets {
                tasks.spawn(deliverer.clone().run(target, shutdown.clone()));
            }
        }
        tracing::info!(%public_addr, %admin_addr, "identity-sidecar serving");
        AppHandle { shutdown, tasks, public_addr, admin_addr, grace }
    }
}

/// The bounds of the token cache and of the login cache: `cache.max_entries` each, and half
/// of `cache.max_bytes` each, so the two together stay within `cache.max_bytes`.
pub fn cache_budget(config: &Config) -> crate::weigh::CacheBudget {
    crate::weigh::CacheBudget { max_entries: config.cache.max_entries, max_bytes: config.cache.max_bytes / 2 }
}

/// The Keycloak admin client when `keycloak_admin` is complete; a warning names what is
/// missing when it is only partly set (a half-done configuration is usually a mistake).
pub fn keycloak_admin(config: &Config) -> anyhow::Result<Option<Arc<crate::keycloak::KeycloakAdmin>>> {
    let kc = &config.keycloak_admin;
    let missing = kc.missing();
    if !missing.is_empty() && missing.len() < 4 {
        tracing::warn!(
            missing = missing.join(", "),
            "keycloak_admin is partly configured; organization sync, reconciliation from Keycloak \
             and membership pushes stay off until it is complete"
        );
    }
    let client = crate::keycloak::KeycloakAdmin::from_config(kc).context("keycloak_admin")?;
    Ok(client.map(Arc::new))
}

/// Request ids: kept when the caller sent one, generated otherwise, passed on to the
/// upstream (it is in the request headers) and echoed in the response. One span per request,
/// the server span of the request's trace when traces are on (continuing the caller's
/// `traceparent`, see [`crate::telemetry`]).
fn with_request_id(router: Router) -> Router {
    router
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            // The path only: queries can hold codes or tokens.
            let span = tracing::info_span!("request", otel.kind = "server", request_id = %id, method = %req.method(), path = %crate::telemetry::loggable_path(req.uri().path()));
            crate::telemetry::continue_trace(&span, req.headers());
            span
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, RandomRequestId))
}

/// A new request id: a v4 UUID from the thread's random generator (`rand::rng()`, a CSPRNG
/// seeded from the system), where tower-http's `MakeRequestUuid` asks the system for 16 bytes
/// per request — a system call on every request that only needs an id nobody else has.
#[derive(Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut text = uuid::Uuid::encode_buffer();
        // Lower-case hex and hyphens: always a valid header value.
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut text)).ok().map(RequestId::new)
    }
}

/// A restart during a Keycloak outage: serve the last good key set from the store (marked
/// stale) until a fetch succeeds.
async fn load_persisted_keys(store: &crate::store::Store, jwks: &Jwks, issuer: &str) {
    let loaded = async {
        let mut conn = store.conn().await?;
        crate::store::jwks::load(&mut conn, issuer).await
    }
    .await;
    match loaded {
        Ok(Some(cached)) => match crate::auth::jwks::KeySet::parse(cached.jwks.as_bytes()) {
            Ok(set) if !set.is_empty() => jwks.install(set, true),
            _ => tracing::warn!("the persisted JWKS is unusable; waiting for Keycloak"),
        },
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the persisted JWKS"),
    }
}

/// The issuer's keys, kept fresh in the background: what the refresher needs of the app.
struct KeyRefresh {
    jwks: Arc<Jwks>,
    /// Where the last good key set is kept for a restart during a Keycloak outage.
    store: crate::store::Store,
    /// `oidc.issuer`: the key set's row in the store.
    issuer: String,
    /// `oidc.jwks_refresh_secs`.
    every: Duration,
}

impl KeyRefresh {
    /// Loads keys at start (retrying with backoff while none are loaded), then refreshes them
    /// every `oidc.jwks_refresh_secs`.
    async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(200);
        loop {
            let wait = match self.jwks.refresh().await {
                Ok(body) => {
                    self.persist(&body).await;
                    backoff = Duration::from_millis(200);
                    self.every
                }
                Err(_) if !self.jwks.is_loaded() => {
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    backoff
                }
                Err(_) => self.every.min(Duration::from_secs(30)),
            };
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Persists a freshly fetched JWKS (best effort: the store being down must not stop keys).
    async fn persist(&self, body: &[u8]) {
        let Ok(text) = std::str::from_utf8(body) else { return };
        let saved = async {
            let mut conn = self.store.conn().await?;
            crate::store::jwks::save(&mut conn, &self.issuer, text, time::OffsetDateTime::now_utc()).await
        }
        .await;
        if let Err(e) = saved {
            tracing::warn!(error = %e, "cannot persist the JWKS");
        }
    }
}

impl AppHandle {
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// A token that, when cancelled, starts a graceful shutdown: `/readyz` answers 503 from
    /// then on, the public port stops accepting and drains, background tasks stop.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, lets in-flight requests finish (up to `server.shutdown_grace_secs`),
    /// stops background tasks. `/readyz` answers 503 during the drain; the admin port closes
    /// after the public port.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Runs until the shutdown token is cancelled (or a server fails), then drains.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            Some(result) = self.tasks.join_next() => {
                if let Ok(Err(e)) = result { first_error = Some(e); }
                self.shutdown.cancel();
            }
        }
        let drained = tokio::time::timeout(self.grace, async {
            while let Some(result) = self.tasks.join_next().await {
                if let Ok(Err(e)) = result {
                    first_error.get_or_insert(e);
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown grace period over; cutting remaining requests");
            self.tasks.abort_all();
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use tower_http::request_id::MakeRequestId as _;

    use super::RandomRequestId;

    #[test]
    fn a_generated_request_id_is_a_fresh_v4_uuid() {
        let request = axum::http::Request::new(());
        let mut ids = (0..2).map(|_| {
            let id = RandomRequestId.make_request_id(&request).expect("an id");
            id.header_value().to_str().unwrap().to_owned()
        });
        let (a, b) = (ids.next().unwrap(), ids.next().unwrap());
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version(), Some(uuid::Version::Random));
        assert_eq!(parsed.hyphenated().to_string(), a, "lower-case, hyphenated");
    }
}
