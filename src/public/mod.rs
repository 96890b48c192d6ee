//! The public port: everything a browser, an app or a gateway reaches. One request's path,
//! top to bottom:
//!
//! ```text
//! server::serve              connection limits, head and body timeouts (crate::server)
//!   request id + span        app::with_request_id
//!     router (this file)     the route table below; a path under server.reserved_prefix is
//!       │                    the sidecar's own, every other path is proxied (or 404)
//!       counted              one layer per route: requests_total and request_duration_seconds
//!       │                    {mode, class} of the answer, requests_in_flight{mode}, and
//!       │                    the access-log line
//!         handler
//!           forward_auth     /_sidecar/auth: read X-Forwarded-*, then gate::admit
//!           proxy            any other path: gate::admit, then forward upstream
//!           me, redeem,      gate::Authenticated extractor, then the handler's own work
//!           active_org
//!           manage           delegated management: the admin API's handlers behind the
//!                            manager check (admin::manage, handed in by the app)
//!           jwks             the entitlement token's public keys
//! ```
//!
//! [`gate::admit`] is the one decision for a request handed on: judge the path → preflight →
//! authenticate → B2B facts → authorize → render the owned headers. Routes that only need to
//! know the caller take [`gate::Authenticated`], which authenticates before any other part of
//! the request is read and maps a failure through `ApiError`.
//!
//! Every route is added through the route table in [`router`], which pairs it with the mode it
//! is counted as: a new route cannot forget its count.

pub mod active_org;
pub mod forward_auth;
pub mod gate;
pub mod me;
pub mod proxy;
pub mod redeem;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get, post};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::state::AppState;

/// The public router. Paths under `server.reserved_prefix` are the sidecar's own.
///
/// `manage` are the delegated-management routes (paths below the prefix), counted as mode
/// `manage`. The app passes them in from `admin::manage`, whose handlers are the admin API's:
/// the admin module sits above this one, so this one cannot name them (docs/architecture.md).
pub fn router(state: AppState, manage: Vec<(String, MethodRouter<AppState>)>) -> Router {
    let prefix = state.config.server.reserved_prefix.trim_end_matches('/').to_owned();
    let at = |path: &str| format!("{prefix}{path}");
    // The route table: path, mode it is counted as (`requests_total{mode}`), handler.
    let routes: [(String, Mode, MethodRouter<AppState>); 8] = [
        (at("/auth"), "forward_auth", any(forward_auth::forward_auth)),
        (at("/me"), "me", get(me::me)),
        (at("/jwks.json"), "jwks", get(entitlement_jwks)),
        (
            at("/enrollment-codes/redeem"),
            "redeem",
            post(redeem::from_body).layer(DefaultBodyLimit::max(redeem::MAX_BODY_BYTES)),
        ),
        (at("/enrollment-codes/{code}/redeem"), "redeem", post(redeem::from_path)),
        (
            at("/active-organization"),
            "active_organization",
            get(active_org::get)
                .put(active_org::put)
                .delete(active_org::delete)
                .layer(DefaultBodyLimit::max(redeem::MAX_BODY_BYTES)),
        ),
        // Reserved paths the sidecar does not serve stay 404, never proxied.
        (prefix.clone(), "other", any(not_found)),
        (at("/{*rest}"), "other", any(not_found)),
    ];
    let fallback =
        if state.upstream.is_some() { ("proxy", any(proxy::forward)) } else { ("other", any(not_found)) };
    let manage = manage.into_iter().map(|(path, handler)| (at(&path), "manage", handler));
    let router = routes.into_iter().chain(manage).fold(Router::new(), |router, (path, mode, handler)| {
        router.route(&path, counted(&state, mode, handler))
    });
    router.fallback(counted(&state, fallback.0, fallback.1)).with_state(state)
}

/// The `mode` label of `requests_total`: which kind of public request it was.
type Mode = &'static str;

/// What the request-metrics layer of one route needs.
#[derive(Clone)]
struct Counter {
    metrics: Arc<Metrics>,
    mode: Mode,
}

/// The request-metrics layer, around one route: counts the answer by `mode` and status class
/// and records its time to response headers, whatever produced it (the handler, an
/// extractor's rejection, the route's 405), counts the request in flight meanwhile, and
/// writes the request's one access-log line (`telemetry::access_log`).
fn counted(state: &AppState, mode: Mode, route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    let counter = Counter { metrics: state.metrics.clone(), mode };
    route.layer(middleware::from_fn_with_state(counter, count))
}

async fn count(State(counter): State<Counter>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let in_flight = counter.metrics.in_flight(counter.mode);
    // Kept for the access-log line (the request itself moves into the route), and only
    // copied when that line is written at all.
    let logged = crate::telemetry::access_log_enabled().then(|| {
        let request_id = request.headers().get(REQUEST_ID).cloned();
        (request.method().clone(), request.uri().path().to_owned(), request_id)
    });
    let response = next.run(request).await;
    drop(in_flight);
    let status = response.status().as_u16();
    let duration = started.elapsed();
    counter.metrics.count_response(counter.mode, status);
    counter.metrics.observe_request(counter.mode, status, duration.as_secs_f64());
    if let Some((method, path, request_id)) = logged {
        crate::telemetry::access_log(&crate::telemetry::Access {
            method: method.as_str(),
            path: &path,
            status,
            duration,
            mode: counter.mode,
            request_id: request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
        });
    }
    response
}

/// Set on every request before it reaches a route (`app::with_request_id`).
const REQUEST_ID: &str = "x-request-id";

/// `/_sidecar/jwks.json`: the entitlement token's public keys.
pub async fn entitlement_jwks(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], state.entitlements.signer().jwks_bytes()).into_response()
}

/// A reserved path the sidecar does not serve, or any path without an upstream.
async fn not_found() -> ApiError {
    ApiError::NotFound("No such path.".into())
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    /// A header map from name and raw value pairs, repeated names kept (the unit tests of
    /// forward-auth and the gate read hostile header sets).
    pub fn headers(pairs: &[(&'static str, &'static [u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        h
    }
}
