//! The admin port: health, readiness, metrics and the entitlement JWKS (unauthenticated), and
//! the admin API under `/admin/v1` (every route behind [`guard::require_admin`]). It binds
//! `127.0.0.1` by default and must never be routed through the gateway. The optional metrics
//! port (`server.metrics_listen`, [`metrics_router`]) serves the same `/metrics` and nothing
//! else, for a Prometheus that cannot reach loopback.
//!
//! One file per resource; each exposes a `router()` merged below. Conventions shared by all:
//! - bodies are read by [`extract::AdminJson`] (400/422 naming the field), query strings by
//!   [`extract::Params`] (unknown parameters refused);
//! - lists answer the envelope [`Page`]: `{items, total, limit, offset}`;
//! - a write runs in one store transaction together with its audit event(s) (actor
//!   `admin:<who>`), and only after the commit are caches invalidated: every organization or
//!   contract write drops every cached login, a user's membership or attachment change drops
//!   that user's;
//! - store failures map to HTTP through `From<StoreError> for ApiError`, after a handler has
//!   said what it knows better (which organization is missing, what still refers to a row);
//! - every route is registered with `utoipa_axum::routes!` from a handler carrying
//!   `#[utoipa::path]`, so the OpenAPI document ([`openapi`]) lists exactly what is served.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::state::AppState;
use crate::store::StoreError;

mod assignments;
mod audit;
mod codes;
mod contracts;
mod events;
pub mod extract;
pub mod guard;
mod jobs;
pub mod manage;
mod openapi;
mod organizations;
mod reconciliations;
mod sync;
mod users;

/// The admin router. `shutdown` is the app's shutdown token: once it is cancelled, `/readyz`
/// answers 503 while the public port drains.
pub fn router(state: AppState, shutdown: CancellationToken) -> Router {
    guard::warn_about_unreachable_roles(&state.config);
    let guard = axum::middleware::from_fn_with_state(state.clone(), guard::require_admin);
    let (router, doc) = routes(|api| api.route_layer(guard)).split_for_parts();
    router
        .layer(Extension(openapi::Document::new(&doc)))
        .layer(Extension(Draining(shutdown)))
        .fallback(not_found)
        .with_state(state)
}

/// The metrics port (`server.metrics_listen`): the admin port's own `/metrics` handler and
/// nothing else (every other path is 404), so exposing it reveals no admin route.
pub fn metrics_router(state: AppState) -> Router {
    Router::new().route("/metrics", axum::routing::get(metrics)).fallback(not_found).with_state(state)
}

/// Cancelled from the moment shutdown starts (SIGTERM): the app is draining and must get no
/// new work.
#[derive(Clone)]
struct Draining(CancellationToken);

/// Every route of the admin port, and the OpenAPI document that describes them. `guard`
/// installs the admin authentication on the `/admin/v1` routes (it must add no route: the
/// unit test passes one that does nothing and compares routes with the document).
fn routes(guard: impl FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    let mut api = guard(
        OpenApiRouter::default()
            .merge(organizations::router())
            .merge(contracts::router())
            .merge(codes::router())
            .merge(assignments::router())
            .merge(users::router())
            .merge(audit::router())
            .merge(events::router())
            .merge(sync::router())
            .merge(reconciliations::router())
            .merge(jobs::router())
            .routes(routes!(openapi::openapi_json)),
    );
    openapi::guarded(api.get_openapi_mut());
    let mut all = OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(jwks))
        .nest("/admin/v1", api);
    openapi::finish(all.get_openapi_mut());
    all
}

/// One page of a list: `items`, the `total` number of matching rows, and the `limit` and
/// `offset` that produced the page.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[schema(minimum = 0)]
    pub total: i64,
    pub limit: u32,
    pub offset: u32,
}

impl<T> Page<T> {
    fn new(items: Vec<T>, total: i64, page: extract::PageQuery) -> Page<T> {
        Page { items, total, limit: page.limit, offset: page.offset }
    }
}

/// A 201 answer with the new resource and its `Location`.
fn created(location: String, body: impl Serialize) -> Response {
    (StatusCode::CREATED, [(header::LOCATION, location)], axum::Json(body)).into_response()
}

/// Store results whose `NotFound` deserves a better sentence than the generic one.
trait OrNotFound<T> {
    fn or_not_found(self, detail: impl FnOnce() -> String) -> Result<T, ApiError>;
}

impl<T> OrNotFound<T> for Result<T, StoreError> {
    fn or_not_found(self, detail: impl FnOnce() -> String) -> Result<T, ApiError> {
        self.map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound(detail()),
            other => other.into(),
        })
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("No such path.".into())
}

/// Alive: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain"))
)]
async fn healthz() -> &'static str {
    "ok"
}

/// Ready: a key set is loaded, so tokens can be verified, and the app is not shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "`ready`", body = String, content_type = "text/plain"),
        (status = 503, description = "No signing keys loaded yet, or shutting down (in-flight requests are draining)."),
    )
)]
async fn readyz(
    State(state): State<AppState>,
    Extension(Draining(draining)): Extension<Draining>,
) -> Response {
    if draining.is_cancelled() {
        // Retry-After is for the caller's next probe; this process will not be ready again.
        ApiError::Unavailable {
            retry_after_secs: 1,
            detail: "Shutting down; draining in-flight requests.".into(),
        }
        .into_response()
    } else if state.auth.authenticator.jwks.is_loaded() {
        "ready".into_response()
    } else {
        ApiError::Unavailable { retry_after_secs: 1, detail: "No signing keys loaded yet.".into() }
            .into_response()
    }
}

/// Prometheus metrics, in the OpenMetrics text format the registry writes.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "The OpenMetrics text format.", body = String, content_type = "application/openmetrics-text"))
)]
async fn metrics(State(state): State<AppState>) -> Response {
    let counted = state.metrics.store_queries.get();
    state.metrics.store_queries.inc_by(state.store.queries().saturating_sub(counted));
    (StatusCode::OK, [(header::CONTENT_TYPE, crate::metrics::Metrics::CONTENT_TYPE)], state.metrics.render())
        .into_response()
}

/// The entitlement token's public keys (the same document as the public port's
/// `/_sidecar/jwks.json`).
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    operation_id = "jwks",
    tag = "operations",
    responses((status = 200, description = "A JSON Web Key Set: `{keys: [...]}`.", body = Object))
)]
async fn jwks(state: State<AppState>) -> Response {
    crate::public::entitlement_jwks(state).await
}
