//! The public port: forward-auth, `/_sidecar/me`, enrollment-code redemption
//! ([`crate::codes::redeem`]), and (when `upstream.url` is set) the reverse proxy for every
//! other path.
//!
//! Every request goes through [`admit`]: authenticate (token → principal), authorize
//! (`[[auth.rules]]`), then render the owned header set. Forward-auth returns those headers;
//! the proxy strips the client's identity headers and injects them.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use crate::auth::gate::{Caller, Failure};
use crate::auth::rules::{Decision, Holdings};
use crate::error::ApiError;
use crate::headers::{self, B2b, Status};
use crate::state::AppState;

/// The public router. Paths under `server.reserved_prefix` are the sidecar's own.
pub fn router(state: AppState) -> Router {
    let prefix = state.config.server.reserved_prefix.trim_end_matches('/').to_owned();
    let router = Router::new()
        .route(&format!("{prefix}/auth"), any(forward_auth))
        .route(&format!("{prefix}/me"), get(me))
        .route(&format!("{prefix}/jwks.json"), get(entitlement_jwks))
        .merge(crate::codes::redeem::router(&prefix));
    // Reserved paths the sidecar does not serve stay 404, never proxied.
    let router = router.route(&prefix, any(fallback)).route(&format!("{prefix}/{{*rest}}"), any(fallback));
    if state.upstream.is_some() {
        router.fallback(crate::proxy::forward).with_state(state)
    } else {
        router.fallback(fallback).with_state(state)
    }
}

/// The outcome of [`admit`]: who called and the headers to hand on.
pub struct Admission {
    pub caller: Caller,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Authenticate, authorize and render the header set for a request to `raw_path`.
pub async fn admit(
    state: &AppState,
    method: &Method,
    raw_path: &str,
    headers: &HeaderMap,
) -> Result<Admission, ApiError> {
    // Judged before anything else: a path the gate cannot read is refused, never matched
    // as "no rule".
    let applicable = state.rules.judge(raw_path).map_err(|e| ApiError::BadRequest {
        detail: format!("The request path is not acceptable: {e}."),
        errors: vec![],
    })?;
    let preflight = method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let caller = if preflight {
        // Browsers send no credentials on a CORS preflight; it must reach the app's CORS
        // handling whatever the rules say.
        Caller::Anonymous
    } else {
        state.auth.authenticate(headers).await.map_err(failure_to_error)?
    };
    let (b2b, status) = match &caller {
        Caller::Authenticated(p) => state.b2b(p).await?,
        Caller::Anonymous => (Arc::new(B2b::default()), Status::Anonymous),
    };
    if !preflight {
        let holdings = match &caller {
            Caller::Anonymous => None,
            Caller::Authenticated(p) => Some(Holdings {
                roles: &p.roles,
                organizations: &b2b.organizations,
                contracts: &b2b.contracts,
            }),
        };
        match applicable.decide(holdings) {
            Decision::Allow => {}
            Decision::Unauthenticated => return Err(ApiError::Unauthenticated),
            Decision::Forbidden => {
                return Err(ApiError::Forbidden("You do not have access to this resource.".into()));
            }
        }
    }
    let userinfo = state.config.headers.userinfo;
    let headers = match &caller {
        Caller::Anonymous => headers::render(Status::Anonymous, None, userinfo),
        Caller::Authenticated(p) => headers::render(status, Some((p, &b2b)), userinfo),
    };
    Ok(Admission { caller, headers })
}

/// `/_sidecar/auth`: APISIX `forward-auth` and nginx `auth_request`. The original method and
/// URI come from `X-Forwarded-Method` / `X-Forwarded-Uri`, believed from trusted peers only.
async fn forward_auth(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    // Read from the request itself: a `HeaderMap` extractor would copy every header.
    let headers = request.headers();
    let trusted = state.is_trusted(peer.ip());
    let forwarded = |name: &str| trusted.then(|| headers.get(name).and_then(|v| v.to_str().ok())).flatten();
    let original_method = forwarded("x-forwarded-method")
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or_else(|| request.method().clone());
    let original_uri = forwarded("x-forwarded-uri").unwrap_or_else(|| request.uri().path());
    let response = match admit(&state, &original_method, original_uri, headers).await {
        Ok(admission) => {
            let mut response = StatusCode::OK.into_response();
            response.headers_mut().extend(admission.headers);
            response
        }
        Err(e) => e.into_response(),
    };
    state.count("forward_auth", response.status().as_u16());
    response
}

/// `/_sidecar/me`: the caller's identity and entitlements as JSON — the claims of the
/// entitlement token the headers carry, plus the identity status and roles.
async fn me(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let response = match me_json(&state, &headers).await {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    };
    state.count("me", response.status().as_u16());
    response
}

async fn me_json(state: &AppState, headers: &HeaderMap) -> Result<serde_json::Value, ApiError> {
    let principal = match state.auth.authenticate(headers).await {
        Ok(Caller::Authenticated(p)) => p,
        Ok(Caller::Anonymous) => return Err(ApiError::Unauthenticated),
        Err(failure) => return Err(failure_to_error(failure)),
    };
    let (b2b, status) = state.b2b(&principal).await?;
    let payload = b2b.entitlements.split('.').nth(1).unwrap_or_default();
    let mut claims: serde_json::Value = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_else(|| json!({"sub": principal.sub}));
    claims["status"] = json!(status.as_str());
    claims["roles"] = json!(principal.roles);
    Ok(claims)
}

/// `/_sidecar/jwks.json`: the entitlement token's public keys.
pub async fn entitlement_jwks(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], state.signer.jwks_bytes()).into_response()
}

pub(crate) fn failure_to_error(failure: Failure) -> ApiError {
    match failure {
        Failure::Rejected(reject) => ApiError::InvalidToken(reject),
        Failure::KeysUnavailable => ApiError::Unavailable {
            retry_after_secs: 5,
            detail: "The identity provider's keys are not available yet.".into(),
        },
    }
}

async fn fallback(State(state): State<AppState>) -> Response {
    state.count("other", 404);
    ApiError::NotFound("No such path.".into()).into_response()
}

impl AppState {
    /// Counts a request by mode and status class.
    pub fn count(&self, mode: &'static str, status: u16) {
        self.metrics.count_request(mode, crate::metrics::status_class(status));
    }
}
