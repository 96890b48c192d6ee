//! The public port: forward-auth, `/_sidecar/me`, enrollment-code redemption
//! ([`crate::codes::redeem`]), and (when `upstream.url` is set) the reverse proxy for every
//! other path.
//!
//! Every request goes through [`admit`]: authenticate (token → principal), authorize
//! (`[[auth.rules]]`), then render the owned header set. Forward-auth returns those headers;
//! the proxy strips the client's identity headers and injects them.
//!
//! Both fail closed (docs/contract.md §2, §6 v2): forward-auth judges the forwarded URI read as bytes and
//! refuses a forwarded request it cannot read unambiguously rather than judge its own path,
//! and only a bodiless `OPTIONS` with `Origin`, `Access-Control-Request-Method` and no method
//! override is a preflight that passes without a token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use percent_encoding::{AsciiSet, CONTROLS, percent_encode};
use serde_json::json;

use crate::auth::gate::Caller;
use crate::auth::rules::{Decision, Holdings};
use crate::config::TokenSource;
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
    /// Where the validated token came from (`None`: anonymous or a preflight). The proxy
    /// hands the app that credential alone.
    pub credential: Option<TokenSource>,
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
    let preflight = is_preflight(method, headers);
    let (caller, credential) = if preflight {
        // Browsers send no credentials on a CORS preflight; it must reach the app's CORS
        // handling whatever the rules say.
        (Caller::Anonymous, None)
    } else {
        state.auth.authenticate_with_source(headers).await.map_err(ApiError::from)?
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
/// removes them all ([`crate::proxy`]).
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

/// Bytes that may stand in a request target as they are (RFC 3986 `unreserved`, `reserved`
/// and `%`); every other byte of a forwarded URI is percent-encoded. Hand-written because
/// `percent_encoding` ships sets for other contexts (path segments, query, userinfo), none of
/// which keeps every reserved character as it is.
const NOT_IN_URI: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// The forwarded URI as text the rules can read: every byte a URI may not hold as it is
/// (non-ASCII, controls, space, backslash…) percent-encoded, never dropped. nginx passes
/// `$request_uri` raw, so `/courses/intro?q=<0xFF>` arrives with the byte itself; reading it
/// as text would fail, and the rules must still apply to that path (docs/contract.md §6 v2).
pub fn forwarded_uri_text(raw: &[u8]) -> String {
    percent_encode(raw, NOT_IN_URI).to_string()
}

/// The original request a gateway asks about: its method and, when known, its URI.
#[derive(Debug, PartialEq, Eq)]
pub struct Forwarded {
    pub method: Method,
    /// `None` only when no `[[auth.rules]]` are configured: then no rule can apply, whatever
    /// the path.
    pub uri: Option<String>,
}

/// Reads the original method and URI of a forward-auth request (docs/contract.md §6 v2), refusing (the
/// `Err` is the reason, for a 403) whatever would leave the rules applied to a guess:
///
/// - `X-Forwarded-Uri` or `X-Forwarded-Method` more than once, from any peer;
/// - an `X-Forwarded-Method` that is not a method, or an empty `X-Forwarded-Uri`;
/// - with rules configured: no `X-Forwarded-Uri`, or one from a peer that is not trusted.
///
/// The request's own path (`/_sidecar/auth`) is never used: no rule covers it, so falling
/// back to it would let anything through. The method falls back to the request's own (a
/// gateway that sends no `X-Forwarded-Method` asks with the original method); from an
/// untrusted peer the forwarded one is ignored.
pub fn read_forwarded(
    headers: &HeaderMap,
    own_method: &Method,
    trusted: bool,
    rules_configured: bool,
) -> Result<Forwarded, &'static str> {
    let single = |name: &str| {
        let mut values = headers.get_all(name).iter();
        let first = values.next();
        if values.next().is_some() { Err(()) } else { Ok(first) }
    };
    let uri =
        single("x-forwarded-uri").map_err(|()| "The request carries X-Forwarded-Uri more than once.")?;
    let method = single("x-forwarded-method")
        .map_err(|()| "The request carries X-Forwarded-Method more than once.")?;
    let method = match method.filter(|_| trusted) {
        Some(value) => {
            Method::from_bytes(value.as_bytes()).map_err(|_| "X-Forwarded-Method is not a method.")?
        }
        None => own_method.clone(),
    };
    let uri = match uri {
        Some(_) if !trusted && rules_configured => {
            return Err(
                "X-Forwarded-Uri is believed from trusted proxies only, and without it the rules cannot be applied.",
            );
        }
        Some(_) if !trusted => None,
        Some(value) if value.is_empty() => return Err("X-Forwarded-Uri is empty."),
        Some(value) => Some(forwarded_uri_text(value.as_bytes())),
        None if rules_configured => {
            return Err("X-Forwarded-Uri is missing, and without it the rules cannot be applied.");
        }
        None => None,
    };
    Ok(Forwarded { method, uri })
}

/// `/_sidecar/auth`: APISIX `forward-auth` and nginx `auth_request`. The original method and
/// URI come from `X-Forwarded-Method` / `X-Forwarded-Uri`, believed from trusted peers only
/// ([`read_forwarded`]); the headers judged (credentials, preflight) are the forwarded
/// request's, which both gateways pass along.
///
/// Every refusal of unreadable or ambiguous input is a **403** with a problem body saying
/// why, 400s from [`admit`] included: nginx's `auth_request` passes on only 2xx, 401 and 403
/// and turns anything else into a bodiless 500.
async fn forward_auth(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    // Read from the request itself: a `HeaderMap` extractor would copy every header.
    let headers = request.headers();
    let trusted = state.is_trusted(peer.ip());
    let rules_configured = !state.config.auth.rules.is_empty();
    let response = match read_forwarded(headers, request.method(), trusted, rules_configured) {
        Err(reason) => ApiError::Forbidden(reason.into()).into_response(),
        Ok(Forwarded { method, uri }) => {
            // No URI only without rules, where every path gets the same verdict: "/" stands
            // for "no path", and no rule can apply to it.
            let uri = uri.as_deref().unwrap_or("/");
            match admit(&state, &method, uri, headers).await {
                Ok(admission) => {
                    let mut response = StatusCode::OK.into_response();
                    response.headers_mut().extend(admission.headers);
                    response
                }
                Err(ApiError::BadRequest { detail, errors }) => {
                    crate::error::problem(StatusCode::FORBIDDEN, Some(&detail), &errors)
                }
                Err(e) => e.into_response(),
            }
        }
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
        Err(failure) => return Err(failure.into()),
    };
    let (b2b, status) = state.entitlements.facts(&principal).await?;
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
    ([(header::CONTENT_TYPE, "application/json")], state.entitlements.signer().jwks_bytes()).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static [u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        h
    }

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

    #[test]
    fn bytes_a_uri_may_not_hold_are_percent_encoded_never_dropped() {
        assert_eq!(forwarded_uri_text(b"/courses/intro?q=\xff"), "/courses/intro?q=%FF");
        assert_eq!(forwarded_uri_text(b"/courses/\xff"), "/courses/%FF");
        assert_eq!(forwarded_uri_text("/caf\u{e9}".as_bytes()), "/caf%C3%A9");
        assert_eq!(forwarded_uri_text(b"/a b\t\\c"), "/a%20b%09%5Cc");
        // Reserved characters and existing escapes stay as they are: the rules decode once.
        let kept = "/a;b=c/d%2F:@!$&'()*+,?x=1#f";
        assert_eq!(forwarded_uri_text(kept.as_bytes()), kept);
    }

    fn read(
        pairs: &[(&'static str, &'static [u8])],
        trusted: bool,
        rules: bool,
    ) -> Result<Forwarded, &'static str> {
        read_forwarded(&headers(pairs), &Method::GET, trusted, rules)
    }

    #[test]
    fn the_forwarded_uri_is_read_as_bytes_and_never_replaced_by_a_guess() {
        let ok =
            read(&[("x-forwarded-uri", b"/p?q=\xff"), ("x-forwarded-method", b"POST")], true, true).unwrap();
        assert_eq!(ok, Forwarded { method: Method::POST, uri: Some("/p?q=%FF".into()) });
        // With rules: a missing, empty or untrusted URI is refused.
        assert!(read(&[], true, true).is_err());
        assert!(read(&[("x-forwarded-uri", b"")], true, true).is_err());
        assert!(read(&[("x-forwarded-uri", b"/open")], false, true).is_err());
        // Without rules: no path is needed, and an untrusted one is ignored.
        assert_eq!(read(&[], true, false), Ok(Forwarded { method: Method::GET, uri: None }));
        let untrusted = read(&[("x-forwarded-uri", b"/p"), ("x-forwarded-method", b"OPTIONS")], false, false);
        assert_eq!(untrusted, Ok(Forwarded { method: Method::GET, uri: None }));
    }

    #[test]
    fn a_forwarded_header_given_twice_or_an_invalid_method_is_refused_even_without_rules() {
        for rules in [true, false] {
            let twice_uri = read(&[("x-forwarded-uri", b"/a"), ("x-forwarded-uri", b"/b")], true, rules);
            assert!(twice_uri.unwrap_err().contains("X-Forwarded-Uri more than once"));
            let twice_method = [
                ("x-forwarded-uri", b"/a" as &[u8]),
                ("x-forwarded-method", b"GET"),
                ("x-forwarded-method", b"GET"),
            ];
            assert!(
                read(&twice_method, true, rules).unwrap_err().contains("X-Forwarded-Method more than once")
            );
            assert!(read(&twice_method, false, rules).is_err(), "from an untrusted peer too");
            let bad_method = read(&[("x-forwarded-uri", b"/a"), ("x-forwarded-method", b"G T")], true, rules);
            assert_eq!(bad_method, Err("X-Forwarded-Method is not a method."));
        }
    }
}
