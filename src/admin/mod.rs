//! The admin port: health, readiness and metrics now; the admin API joins it later.
//! It binds `127.0.0.1` by default and must never be routed through the gateway.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(crate::public::entitlement_jwks))
        .with_state(state)
}

/// Alive: the process answers.
async fn healthz() -> &'static str {
    "ok"
}

/// Ready: a key set is loaded, so tokens can be verified.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.jwks.is_loaded() {
        "ready".into_response()
    } else {
        ApiError::Unavailable { retry_after_secs: 1, detail: "No signing keys loaded yet.".into() }
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let counted = state.metrics.store_queries.get();
    state.metrics.store_queries.inc_by(state.store.queries().saturating_sub(counted));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}
