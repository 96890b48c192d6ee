//! `/_sidecar/auth`: the forward-auth target of APISIX `forward-auth` and nginx
//! `auth_request`. The gateway asks about another request; this module reads which one
//! (method and URI from `X-Forwarded-*`, believed from trusted peers only), hands it to
//! [`admit`], and answers 200 with the owned header set or the refusal.
//!
//! It fails closed (docs/contract.md §6 v2): the forwarded URI is read as bytes, and a
//! forwarded request that cannot be read unambiguously is refused rather than judged by the
//! sidecar's own path.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use percent_encoding::{AsciiSet, CONTROLS, percent_encode};

use super::gate::admit;
use crate::error::ApiError;
use crate::state::AppState;

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
pub async fn forward_auth(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    // Read from the request itself: a `HeaderMap` extractor would copy every header.
    let headers = request.headers();
    let trusted = state.auth.is_trusted(peer.ip());
    let rules_configured = !state.config.auth.rules.is_empty();
    match read_forwarded(headers, request.method(), trusted, rules_configured) {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::public::tests::headers;

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
