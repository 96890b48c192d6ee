//! Cross-site write protection for the public port (docs/contract.md §7 v2).
//!
//! Behind APISIX's `openid-connect` plugin a browser's session cookie becomes a bearer token
//! on its way to the sidecar, so a page on another site that makes the victim's browser
//! `fetch` a write route would act with the victim's identity. Browsers say where a request
//! comes from: `Origin` (every `POST`) and `Sec-Fetch-Site` (every current browser). A request
//! is **cross-site** when
//!
//! - its `Origin`, if present, is not the request's own origin — the scheme and host as the
//!   sidecar received them (`http` and `Host`), or, from a trusted peer, as the gateway saw
//!   them (`X-Forwarded-Proto` / `X-Forwarded-Host`); `Origin: null` and anything that is not a
//!   readable origin count as another origin; or
//! - its `Sec-Fetch-Site`, if present, is neither `same-origin` nor `none`.
//!
//! A cross-site request is refused (403) unless its `Origin` is listed in
//! `server.allowed_origins`. A request with neither header (curl, a server-side client) is not
//! cross-site: those clients hold their own tokens and carry nobody's cookie.
//!
//! Fail closed: when the request's own origin cannot be read unambiguously (no `Host`, two
//! `X-Forwarded-Host` values, a `Host` that differs from the HTTP/2 authority) no `Origin`
//! can match it. Origins compare by scheme and host ignoring ASCII case, with the scheme's
//! default port written or not.
//!
//! [`judge`] is the pure decision; [`check`] applies it to a request on the public port and is
//! what every state-changing public route calls (redemption here; docs/contract.md §10 and §11 later).

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue, Uri};

use crate::config::Origin;
use crate::error::ApiError;
use crate::state::AppState;

/// What [`judge`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Same-origin, or a client that says nothing about where it comes from.
    NotCrossSite,
    /// Cross-site, from an origin listed in `server.allowed_origins`.
    Allowed,
    /// Cross-site from an origin not listed (or none, or an unreadable one): refuse.
    Refused,
}

/// Decides whether a request is cross-site and, if so, whether its origin is allowed.
///
/// `uri` is the request target (HTTP/2 carries the host there as `:authority`); `trusted`
/// says whether the peer's `X-Forwarded-Proto` / `X-Forwarded-Host` are believed.
pub fn judge(headers: &HeaderMap, uri: &Uri, trusted: bool, allowed: &[Origin]) -> Verdict {
    let origin = match single(headers, "origin") {
        Presence::Absent => None,
        Presence::One(value) => Some(value.to_str().ok().and_then(Origin::parse)),
        Presence::Many => Some(None),
    };
    let fetch_cross_site = match single(headers, "sec-fetch-site") {
        Presence::Absent => false,
        Presence::One(value) => !matches!(value.as_bytes(), b"same-origin" | b"none"),
        Presence::Many => true,
    };
    let cross_site = fetch_cross_site
        || match &origin {
            None => false,
            Some(None) => true,
            Some(Some(origin)) => own_origin(headers, uri, trusted).as_ref() != Some(origin),
        };
    match origin {
        _ if !cross_site => Verdict::NotCrossSite,
        Some(Some(origin)) if allowed.contains(&origin) => Verdict::Allowed,
        _ => Verdict::Refused,
    }
}

/// The request's own origin: scheme and host as received, or as a trusted gateway received
/// them. `None` when it cannot be told unambiguously.
fn own_origin(headers: &HeaderMap, uri: &Uri, trusted: bool) -> Option<Origin> {
    let forwarded = |name| match trusted.then(|| single(headers, name)) {
        None | Some(Presence::Absent) => Ok(None),
        // A list (`a, b`) names several hops: which one the browser saw is a guess.
        Some(Presence::One(v)) => {
            v.to_str().ok().filter(|v| !v.contains(',')).map(|v| Some(v.trim())).ok_or(())
        }
        Some(Presence::Many) => Err(()),
    };
    let https = match forwarded("x-forwarded-proto").ok()? {
        None => false,
        Some(proto) if proto.eq_ignore_ascii_case("https") => true,
        Some(proto) if proto.eq_ignore_ascii_case("http") => false,
        Some(_) => return None,
    };
    let host = match forwarded("x-forwarded-host").ok()? {
        Some(host) => host,
        None => {
            let header = match single(headers, "host") {
                Presence::Absent => None,
                Presence::One(v) => Some(v.to_str().ok()?),
                Presence::Many => return None,
            };
            match (header, uri.authority().map(|a| a.as_str())) {
                (Some(h), Some(a)) if !h.eq_ignore_ascii_case(a) => return None,
                (Some(h), _) => h,
                (None, Some(a)) => a,
                (None, None) => return None,
            }
        }
    };
    Origin::from_authority(https, host)
}

enum Presence<'a> {
    Absent,
    One(&'a HeaderValue),
    Many,
}

/// A header that must appear at most once: two values are ambiguous, never "pick one".
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Presence<'a> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Presence::Absent,
        (Some(v), None) => Presence::One(v),
        (Some(_), Some(_)) => Presence::Many,
    }
}

/// Refuses a cross-site request from an origin not in `server.allowed_origins` with 403.
/// `peer` is the TCP peer (its forwarded headers are believed when it is a trusted proxy).
pub fn check(state: &AppState, peer: IpAddr, headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let allowed = &state.config.server.allowed_origins;
    match judge(headers, uri, state.is_trusted(peer), allowed) {
        Verdict::NotCrossSite | Verdict::Allowed => Ok(()),
        Verdict::Refused => Err(ApiError::Forbidden(
            "Cross-site request refused: its Origin is not listed in server.allowed_origins.".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(text: &str) -> Origin {
        Origin::parse(text).unwrap_or_else(|| panic!("{text}"))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        h
    }

    fn verdict(pairs: &[(&str, &str)], trusted: bool, allowed: &[&str]) -> Verdict {
        let allowed: Vec<Origin> = allowed.iter().map(|a| origin(a)).collect();
        judge(&headers(pairs), &Uri::from_static("/x"), trusted, &allowed)
    }

    #[test]
    fn a_request_without_origin_or_fetch_metadata_is_not_cross_site() {
        assert_eq!(verdict(&[("host", "a.example")], false, &[]), Verdict::NotCrossSite);
        assert_eq!(verdict(&[], false, &[]), Verdict::NotCrossSite);
    }

    #[test]
    fn the_same_origin_passes_in_any_spelling() {
        let h =
            [("host", "App.Example:80"), ("origin", "http://app.example"), ("sec-fetch-site", "same-origin")];
        assert_eq!(verdict(&h, false, &[]), Verdict::NotCrossSite);
        let h = [("host", "app.example:8080"), ("origin", "http://app.example:8080")];
        assert_eq!(verdict(&h, false, &[]), Verdict::NotCrossSite);
        assert_eq!(verdict(&[("sec-fetch-site", "none")], false, &[]), Verdict::NotCrossSite, "typed URL");
    }

    #[test]
    fn another_origin_is_refused_unless_listed() {
        let h = [("host", "app.example"), ("origin", "https://evil.example")];
        assert_eq!(verdict(&h, false, &[]), Verdict::Refused);
        assert_eq!(verdict(&h, false, &["https://other.example"]), Verdict::Refused);
        assert_eq!(verdict(&h, false, &["HTTPS://EVIL.example:443"]), Verdict::Allowed);
        // Scheme and port are part of the origin.
        let h = [("host", "app.example"), ("origin", "https://app.example")];
        assert_eq!(verdict(&h, false, &[]), Verdict::Refused, "https page, http as received");
        let h = [("host", "app.example:8080"), ("origin", "http://app.example")];
        assert_eq!(verdict(&h, false, &[]), Verdict::Refused);
    }

    #[test]
    fn origin_null_unreadable_or_repeated_is_cross_site_and_never_allowed() {
        for value in ["null", "https://app.example/", "not an origin"] {
            let h = [("host", "app.example"), ("origin", value)];
            assert_eq!(verdict(&h, false, &["https://app.example"]), Verdict::Refused, "{value}");
        }
        let h = [("host", "app.example"), ("origin", "http://app.example"), ("origin", "http://app.example")];
        assert_eq!(verdict(&h, false, &["http://app.example"]), Verdict::Refused);
    }

    #[test]
    fn fetch_metadata_other_than_same_origin_or_none_is_cross_site() {
        for value in ["cross-site", "same-site", "Same-Origin", "bogus"] {
            let h = [("host", "app.example"), ("sec-fetch-site", value)];
            assert_eq!(verdict(&h, false, &[]), Verdict::Refused, "{value}");
        }
        // With a listed Origin the same request is allowed…
        let h =
            [("host", "app.example"), ("origin", "https://shop.example"), ("sec-fetch-site", "same-site")];
        assert_eq!(verdict(&h, false, &["https://shop.example"]), Verdict::Allowed);
        // …but the same origin says nothing when fetch metadata says cross-site.
        let h = [("host", "app.example"), ("origin", "http://app.example"), ("sec-fetch-site", "cross-site")];
        assert_eq!(verdict(&h, false, &[]), Verdict::Refused);
        let h = [("host", "a"), ("sec-fetch-site", "same-origin"), ("sec-fetch-site", "same-origin")];
        assert_eq!(verdict(&h, false, &[]), Verdict::Refused, "two values");
    }

    #[test]
    fn forwarded_scheme_and_host_count_only_from_trusted_peers() {
        let h = [
            ("host", "sidecar:8080"),
            ("x-forwarded-proto", "HTTPS"),
            ("x-forwarded-host", "App.Example"),
            ("origin", "https://app.example"),
        ];
        assert_eq!(verdict(&h, true, &[]), Verdict::NotCrossSite);
        assert_eq!(verdict(&h, false, &[]), Verdict::Refused, "an untrusted peer's claim is ignored");
        // The scheme alone forwarded: the host is the received one.
        let h = [("host", "app.example"), ("x-forwarded-proto", "https"), ("origin", "https://app.example")];
        assert_eq!(verdict(&h, true, &[]), Verdict::NotCrossSite);
        // A forwarded host with a port.
        let h =
            [("host", "s"), ("x-forwarded-host", "app.example:8443"), ("origin", "http://app.example:8443")];
        assert_eq!(verdict(&h, true, &[]), Verdict::NotCrossSite);
    }

    #[test]
    fn an_own_origin_that_cannot_be_told_matches_no_origin() {
        let o = ("origin", "https://app.example");
        for h in [
            vec![o],
            vec![("host", "app.example"), ("host", "app.example"), o],
            vec![("host", "x"), ("x-forwarded-proto", "https"), ("x-forwarded-host", "app.example, x"), o],
            vec![("host", "x"), ("x-forwarded-proto", "https, http"), ("x-forwarded-host", "app.example"), o],
            vec![("host", "x"), ("x-forwarded-proto", "wss"), ("x-forwarded-host", "app.example"), o],
            vec![
                ("host", "x"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "app.example"),
                ("x-forwarded-host", "app.example"),
                o,
            ],
        ] {
            assert_eq!(verdict(&h, true, &[]), Verdict::Refused, "{h:?}");
            assert_eq!(verdict(&h, true, &["https://app.example"]), Verdict::Allowed, "{h:?}: listed");
        }
    }

    #[test]
    fn the_http2_authority_is_the_host_and_must_agree_with_a_host_header() {
        let allowed: [Origin; 0] = [];
        let uri = Uri::from_static("http://app.example/_sidecar/x");
        let h = headers(&[("origin", "http://app.example")]);
        assert_eq!(judge(&h, &uri, false, &allowed), Verdict::NotCrossSite);
        let h = headers(&[("host", "other.example"), ("origin", "http://app.example")]);
        assert_eq!(judge(&h, &uri, false, &allowed), Verdict::Refused);
    }
}
