//! The gate every public request passes: who is calling, and may they.
//!
//! [`admit`] is the whole decision for a request the sidecar hands on (forward-auth, proxy),
//! in this order:
//!
//! 1. **judge the path**: a path the rules cannot read is refused (400), never matched as
//!    "no rule";
//! 2. **preflight**: a CORS preflight ([`is_preflight`]) passes as anonymous without looking
//!    for a token;
//! 3. **authenticate**: token → principal ([`crate::auth::authenticator`]), or anonymous; a token that
//!    cannot be accepted is a 401 (503 while no keys were ever loaded);
//! 4. **facts**: the caller's B2B memberships and contracts;
//! 5. **authorize**: `[[auth.rules]]` against roles, organizations, contracts and the active
//!    organization (401/403);
//! 6. **render**: the owned header set, empty values where nothing applies.
//!
//! Routes of the sidecar's own that need a caller and not the header set (`/me`, code
//! redemption) take the [`Authenticated`] extractor instead, or [`MaybeAuthenticated`] where
//! anonymous callers are welcome: a handler that names one cannot run before the caller is
//! known, and its failure is mapped to HTTP in one place (`impl From<Failure> for ApiError`).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};

use crate::auth::authenticator::Caller;
use crate::auth::rules::{Decision, Holdings};
use crate::auth::validate::Principal;
use crate::config::TokenSource;
use crate::error::ApiError;
use crate::headers::{self, B2b, Status};
use crate::state::AppState;

/// A caller whose token was accepted. As a handler argument it authenticates from the
/// request's headers before anything else of the request (its body above all) is read; an
/// anonymous caller gets a 401 with a bare `Bearer` challenge, a refused token a 401
/// `invalid_token`, and a sidecar without keys a 503.
pub struct Authenticated(pub Arc<Principal>);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match MaybeAuthenticated::from_request_parts(parts, state).await? {
            MaybeAuthenticated(Some(principal)) => Ok(Authenticated(principal)),
            MaybeAuthenticated(None) => Err(ApiError::Unauthenticated),
        }
    }
}

/// The caller's principal, or `None` for a request without a token. A token that was sent
/// and cannot be accepted is still refused (401/503): a bad token never passes as anonymous.
pub struct MaybeAuthenticated(pub Option<Arc<Principal>>);

impl FromRequestParts<AppState> for MaybeAuthenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match state.auth.authenticator.authenticate(&parts.headers).await? {
            Caller::Authenticated(principal) => Ok(MaybeAuthenticated(Some(principal))),
            Caller::Anonymous => Ok(MaybeAuthenticated(None)),
        }
    }
}

/// The outcome of [`admit`]: who called and the headers to hand on.
pub struct Admission {
    /// Who called (anonymous for a preflight).
    pub caller: Caller,
    /// Where the validated token came from (`None`: anonymous or a preflight). The proxy
    /// hands the app that credential alone.
    pub credential: Option<TokenSource>,
    /// The owned header set, rendered.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Judge the path, authenticate, authorize and render the header set for a request to
/// `raw_path` (the steps of the module docs, in order).
pub async fn admit(
    state: &AppState,
    method: &Method,
    raw_path: &str,
    headers: &HeaderMap,
) -> Result<Admission, ApiError> {
    // Judged before anything else: a path the gate cannot read is refused, never matched
    // as "no rule".
    let applicable = state.auth.rules.judge(raw_path).map_err(|e| ApiError::BadRequest {
        detail: format!("The request path is not acceptable: {e}."),
        errors: vec![],
    })?;
    let preflight = is_preflight(method, headers);
    let (caller, credential) = if preflight {
        // Browsers send no credentials on a CORS preflight; it must reach the app's CORS
        // handling whatever the rules say.
        (Caller::Anonymous, None)
    } else {
        state.auth.authenticator.authenticate_with_source(headers).await?
    };
    let (b2b, status) = match &caller {
        Caller::Authenticated(p) => state.entitlements.facts(p).await?,
        Caller::Anonymous => (Arc::new(B2b::default()), Status::Anonymous),
    };
    if !preflight {
        let holdings = match &caller {
            Caller::Anonymous => None,
            Caller::Authenticated(p) => Some(Holdings {
                roles: &p.roles,
                organizations: &b2b.organizations,
                contracts: &b2b.contracts,
                active_organization: b2b.active_organization.as_deref(),
            }),
        };
        match applicable.decide(holdings) {
            Decision::Allow => {}
            Decision::Unauthenticated => return Err(ApiError::Unauthenticated),
            Decision::Forbidden => {
                return Err(ApiError::Forbidden("You do not have access to this resource.".into()));
            }
            Decision::ActiveOrganizationRequired => return Err(ApiError::ActiveOrganizationRequired),
        }
    }
    let config = &state.config.headers;
    let max_userinfo = config.userinfo.then_some(config.max_userinfo_bytes);
    let rendered = match &caller {
        Caller::Anonymous => headers::render(Status::Anonymous, None, max_userinfo),
        Caller::Authenticated(p) => headers::render(status, Some((p, &b2b)), max_userinfo),
    };
    let trimmed = rendered.userinfo;
    state.metrics.count_userinfo_dropped(trimmed.extra, trimmed.default);
    if trimmed.omitted {
        state.metrics.count_userinfo_omitted();
    }
    Ok(Admission { caller, credential, headers: rendered.headers })
}

/// The headers some frameworks take the request's method from instead of the request line.
/// One of them makes an `OPTIONS` an ordinary request (never a preflight), and the proxy
/// removes them all ([`super::proxy`]).
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] =
    ["x-http-method-override", "x-http-method", "x-method-override"];

/// Whether a request is a CORS preflight, which passes without a token (docs/contract.md §2 v2): `OPTIONS`
/// with `Origin` and `Access-Control-Request-Method`, no body and no method-override header.
/// Anything else that looks like one is an ordinary request, judged by the rules: a body or
/// an override could make the app treat it as something other than a preflight.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    let no_body = !headers.contains_key(header::TRANSFER_ENCODING)
        && headers.get_all(header::CONTENT_LENGTH).iter().all(|v| v.as_bytes() == b"0");
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        && no_body
        && !METHOD_OVERRIDE_HEADERS.iter().any(|name| headers.contains_key(*name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::public::tests::headers;

    const PREFLIGHT: [(&str, &[u8]); 2] =
        [("origin", b"https://app.example"), ("access-control-request-method", b"POST")];

    #[test]
    fn only_a_bodiless_options_with_origin_and_request_method_and_no_override_is_a_preflight() {
        assert!(is_preflight(&Method::OPTIONS, &headers(&PREFLIGHT)));
        let with_zero_length = [PREFLIGHT[0], PREFLIGHT[1], ("content-length", b"0")];
        assert!(is_preflight(&Method::OPTIONS, &headers(&with_zero_length)));

        assert!(!is_preflight(&Method::GET, &headers(&PREFLIGHT)));
        assert!(!is_preflight(&Method::OPTIONS, &headers(&PREFLIGHT[..1])), "no request method");
        assert!(!is_preflight(&Method::OPTIONS, &headers(&PREFLIGHT[1..])), "no origin");
        let extra: [(&str, &[u8]); 6] = [
            ("content-length", b"5"),
            ("content-length", b"x"),
            ("transfer-encoding", b"chunked"),
            ("x-http-method-override", b"DELETE"),
            ("x-http-method", b"DELETE"),
            ("x-method-override", b"DELETE"),
        ];
        for pair in extra {
            let h = headers(&[PREFLIGHT[0], PREFLIGHT[1], pair]);
            assert!(!is_preflight(&Method::OPTIONS, &h), "{pair:?}");
        }
    }
}
