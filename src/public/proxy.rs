//! The forwarding step of reverse proxy mode: every path outside the reserved prefix is
//! admitted ([`admit`]: authenticate, authorize, render headers) and forwarded to the
//! [`Upstream`] (`upstream.url`, its target and pooled client) with bodies streamed both ways.
//! Each forward counts its upstream outcome (`upstream_responses`, `upstream_duration_seconds`);
//! the request itself is counted by the router's layer (mode `proxy`).
//!
//! Header discipline, in order: drop hop-by-hop headers (including those named by
//! `Connection`), strip every client-sent identity header, inject the fresh set, leave only
//! the validated credential, drop the headers frameworks route by (`X-Original-URL`,
//! method overrides), set `X-Forwarded-*` (appended to only for trusted peers, and
//! `X-Forwarded-Prefix/-Uri/-Method` dropped from the others). WebSocket upgrades are tunnelled.
//! `upstream.timeout_secs` bounds the wait for response headers after the request body last
//! moved; it never cuts a response body, a slow upload or a WebSocket. While the upstream
//! waits for body bytes the client has not sent, that clock stops: a stalled client body is
//! `server.body_read_timeout_secs`' business (408, see [`crate::server`]), not a 504.
//! Dropping the handler future (client gone) drops the upstream request with it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use tracing::Instrument as _;

use super::gate::{METHOD_OVERRIDE_HEADERS, admit};
use crate::auth::authenticator::{X_ACCESS_TOKEN, is_bearer};
use crate::config::TokenSource;
use crate::error::ApiError;
use crate::state::AppState;
use crate::upstream::{TargetError, Upstream};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
/// `Proxy-Connection` was never standard, but old clients and some apps still send it, and
/// RFC 9110 §7.6.1 lists it among the fields an intermediary should remove.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let has_token = |name: HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

/// Sets `X-Forwarded-For/-Proto/-Host`: appended to (For) or kept (Proto, Host) for trusted
/// peers, replaced for everyone else.
fn set_forwarded(headers: &mut HeaderMap, peer: SocketAddr, trusted: bool) {
    let for_name = HeaderName::from_static("x-forwarded-for");
    let proto_name = HeaderName::from_static("x-forwarded-proto");
    let host_name = HeaderName::from_static("x-forwarded-host");
    let ip = peer.ip().to_string();
    let prior_for = trusted
        .then(|| {
            let all: Vec<&str> = headers.get_all(&for_name).iter().filter_map(|v| v.to_str().ok()).collect();
            (!all.is_empty()).then(|| all.join(", "))
        })
        .flatten();
    let xff = match prior_for {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip,
    };
    let keep = |h: &HeaderMap, n: &HeaderName| trusted.then(|| h.get(n).cloned()).flatten();
    let proto = keep(headers, &proto_name).unwrap_or(HeaderValue::from_static("http"));
    let host = keep(headers, &host_name).or_else(|| headers.get(header::HOST).cloned());
    headers.remove(&for_name);
    if !trusted {
        // Other spellings of the same claims, which apps also read, and the original
        // prefix, URI and method some frameworks route by: only a trusted proxy may state
        // them.
        for name in [
            "forwarded",
            "x-real-ip",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-forwarded-uri",
            "x-forwarded-method",
        ] {
            headers.remove(name);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(for_name, v);
    }
    headers.insert(proto_name, proto);
    match host {
        Some(h) => headers.insert(host_name, h),
        None => headers.remove(&host_name),
    };
}

/// Headers some frameworks route by instead of the request line (IIS/ASP.NET URL rewriting,
/// Symfony and Zend path overrides). Removed from every peer, trusted ones included: an
/// in-cluster gateway is trusted and passes its clients' headers through, so the app would
/// route a request the rules judged on another path or method.
const ROUTING_HEADERS: [&str; 2] = ["x-original-url", "x-rewrite-url"];

/// Removes [`ROUTING_HEADERS`] and the method-override headers.
fn strip_routing_headers(headers: &mut HeaderMap) {
    for name in ROUTING_HEADERS.iter().chain(&METHOD_OVERRIDE_HEADERS) {
        headers.remove(*name);
    }
}

/// Leaves the app the credential the sidecar validated and nothing it could read instead
/// (docs/contract.md §2 v2): the validated token stays where it came from; any other token-source header
/// (`X-Access-Token`, or a Bearer `Authorization`) goes, configured as a source or not; a
/// non-Bearer `Authorization` (Basic for the app) stays unchanged. `validated` is `None`
/// for an anonymous caller or a preflight, whose tokens nobody checked.
fn keep_only_the_validated_credential(headers: &mut HeaderMap, validated: Option<TokenSource>) {
    if validated != Some(TokenSource::XAccessToken) {
        headers.remove(X_ACCESS_TOKEN);
    }
    if validated != Some(TokenSource::Authorization) {
        let values = headers.get_all(header::AUTHORIZATION);
        // Several values only reach here unvalidated (a preflight): none can be trusted.
        if values.iter().count() > 1 || values.iter().any(|v| is_bearer(v.as_bytes())) {
            headers.remove(header::AUTHORIZATION);
        }
    }
}

/// The fallback handler in proxy mode: every path outside the reserved prefix.
pub async fn forward(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let Some(upstream) = state.upstream.as_ref() else {
        return Err(ApiError::NotFound("No such path.".into()));
    };
    proxy(&state, upstream, peer, &mut request).await
}

async fn proxy(
    state: &AppState,
    upstream: &Upstream,
    peer: SocketAddr,
    request: &mut Request,
) -> Result<Response, ApiError> {
    let admission = admit(state, request.method(), request.uri().path(), request.headers()).await?;
    let target = upstream.target(request.uri()).map_err(|e| match e {
        TargetError::InvalidUri => {
            ApiError::BadRequest { detail: "Invalid request URI.".into(), errors: vec![] }
        }
        TargetError::Build(e) => ApiError::Internal(e.into()),
    })?;
    let websocket = is_websocket_upgrade(request.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut *request));

    let (mut parts, body) = std::mem::take(request).into_parts();
    let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    crate::headers::inject(&mut parts.headers, &admission.headers);
    keep_only_the_validated_credential(&mut parts.headers, admission.credential);
    strip_routing_headers(&mut parts.headers);
    if state.config.headers.hide_credentials {
        parts.headers.remove(header::AUTHORIZATION);
        parts.headers.remove("x-access-token");
    }
    set_forwarded(&mut parts.headers, peer, state.auth.is_trusted(peer.ip()));
    if let (true, Some(up)) = (websocket, upgrade_value) {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, up);
    }
    parts.uri = target;
    // The upstream speaks HTTP/1.1 whatever the client spoke.
    parts.version = axum::http::Version::HTTP_11;
    let started = Instant::now();
    let progress = Progress::new(started);
    let span = tracing::info_span!("upstream", otel.kind = "client", method = %parts.method);
    crate::telemetry::inject_trace(&span, &mut parts.headers);
    let outbound = axum::http::Request::from_parts(parts, Body::new(progress.track(body)));

    let sent = await_headers(upstream.client().request(outbound), &progress, upstream.timeout())
        .instrument(span)
        .await;
    state.metrics.observe_upstream(started.elapsed().as_secs_f64());
    let mut response = match sent {
        Err(TimedOut) => {
            state.metrics.count_upstream("timeout");
            return Err(ApiError::GatewayTimeout);
        }
        Ok(Err(e)) if crate::server::is_body_stall(&e) => {
            // The client stopped sending its body; the server loop answers 408.
            state.metrics.count_upstream("client_body_stalled");
            return Err(ApiError::BadRequest {
                detail: "The request body stopped arriving.".into(),
                errors: vec![],
            });
        }
        Ok(Err(e)) => {
            state.metrics.count_upstream(if e.is_connect() { "connect_error" } else { "error" });
            tracing::warn!(error = %e, "upstream request failed");
            return Err(ApiError::BadGateway("The upstream could not be reached.".into()));
        }
        Ok(Ok(r)) => r,
    };
    state.metrics.count_upstream(crate::metrics::status_class(response.status().as_u16()));

    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let (mut c, mut u) = (TokioIo::new(client), TokioIo::new(upstream));
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                }
                Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
            }
        });
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// The response-header timeout ran out.
struct TimedOut;

/// Waits for the upstream's response headers. The timeout runs from the moment the request
/// body last moved (or from the start, for a body sent at once): an upload that keeps
/// flowing is not cut however long it takes, while an upstream that stops reading it, or
/// that has it all and stays silent, is given up on after `timeout`.
async fn await_headers<F: std::future::Future>(
    pending: F,
    progress: &Progress,
    timeout: Duration,
) -> Result<F::Output, TimedOut> {
    let mut pending = std::pin::pin!(pending);
    loop {
        // While the client owes body bytes, the clock is stopped (checked again later).
        let deadline = progress.last().unwrap_or_else(Instant::now) + timeout;
        tokio::select! {
            result = &mut pending => return Ok(result),
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                if progress.last().is_some_and(|last| last + timeout <= Instant::now()) {
                    return Err(TimedOut);
                }
            }
        }
    }
}

/// When the outbound request body last yielded a frame (or ended), shared between the body
/// (which hyper polls only as fast as the upstream accepts data) and [`await_headers`].
#[derive(Clone)]
struct Progress {
    origin: Instant,
    /// Milliseconds after `origin`; [`WAITING_FOR_CLIENT`] while the body waits for the client.
    last_ms: Arc<AtomicU64>,
}

/// `Progress::last_ms` while the upstream wants body bytes the client has not sent yet.
const WAITING_FOR_CLIENT: u64 = u64::MAX;

impl Progress {
    fn new(origin: Instant) -> Progress {
        Progress { origin, last_ms: Arc::new(AtomicU64::new(0)) }
    }

    /// `None` while the body waits for the client.
    fn last(&self) -> Option<Instant> {
        match self.last_ms.load(Ordering::Relaxed) {
            WAITING_FOR_CLIENT => None,
            ms => Some(self.origin + Duration::from_millis(ms)),
        }
    }

    fn track(&self, inner: Body) -> Tracked {
        Tracked { inner, progress: self.clone() }
    }
}

/// A request body that reports each frame to its [`Progress`].
struct Tracked {
    inner: Body,
    progress: Progress,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let stamp = if polled.is_ready() {
            u64::try_from(self.progress.origin.elapsed().as_millis()).unwrap_or(WAITING_FOR_CLIENT - 1)
        } else {
            WAITING_FOR_CLIENT
        };
        self.progress.last_ms.store(stamp, Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    // Keeps an exact length exact, so the upstream gets Content-Length rather than chunks.
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-custom"));
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn forwarded_headers_are_appended_only_for_trusted_peers() {
        let peer: SocketAddr = "10.0.0.5:1234".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert(header::HOST, HeaderValue::from_static("app.example"));
        let mut trusted = h.clone();
        set_forwarded(&mut trusted, peer, true);
        assert_eq!(trusted["x-forwarded-for"], "1.2.3.4, 10.0.0.5");
        assert_eq!(trusted["x-forwarded-proto"], "https");
        assert_eq!(trusted["x-forwarded-host"], "app.example");
        h.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        h.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        let mut kept = h.clone();
        set_forwarded(&mut kept, peer, true);
        assert_eq!(kept["x-real-ip"], "1.2.3.4");
        set_forwarded(&mut h, peer, false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.5");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("forwarded") && !h.contains_key("x-real-ip"));
    }

    #[test]
    fn routing_headers_go_from_every_peer_and_forwarded_routing_from_untrusted_ones() {
        let peer: SocketAddr = "10.0.0.5:1234".parse().unwrap();
        let mut h = HeaderMap::new();
        for name in [
            "x-original-url",
            "x-rewrite-url",
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ] {
            h.insert(name, HeaderValue::from_static("/admin"));
        }
        for name in ["x-forwarded-prefix", "x-forwarded-uri", "x-forwarded-method"] {
            h.insert(name, HeaderValue::from_static("/admin"));
        }
        strip_routing_headers(&mut h);
        let mut trusted = h.clone();
        set_forwarded(&mut trusted, peer, true);
        assert!(trusted.contains_key("x-forwarded-prefix") && trusted.contains_key("x-forwarded-uri"));
        assert!(trusted.contains_key("x-forwarded-method"));
        set_forwarded(&mut h, peer, false);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-forwarded-for", "x-forwarded-proto"]);
    }

    #[test]
    fn the_app_receives_only_the_validated_credential() {
        let basic = HeaderValue::from_static("Basic dXNlcjpwdw==");
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert(X_ACCESS_TOKEN, HeaderValue::from_static("t"));
        let mut from_authorization = h.clone();
        keep_only_the_validated_credential(&mut from_authorization, Some(TokenSource::Authorization));
        assert_eq!(from_authorization[header::AUTHORIZATION], "Bearer t");
        assert!(!from_authorization.contains_key(X_ACCESS_TOKEN));
        let mut from_x_access_token = h.clone();
        keep_only_the_validated_credential(&mut from_x_access_token, Some(TokenSource::XAccessToken));
        assert_eq!(from_x_access_token[X_ACCESS_TOKEN], "t");
        assert!(!from_x_access_token.contains_key(header::AUTHORIZATION));
        let mut anonymous = h.clone();
        keep_only_the_validated_credential(&mut anonymous, None);
        assert!(anonymous.is_empty());

        let mut beside = HeaderMap::new();
        beside.insert(header::AUTHORIZATION, basic.clone());
        beside.insert(X_ACCESS_TOKEN, HeaderValue::from_static("t"));
        keep_only_the_validated_credential(&mut beside, Some(TokenSource::XAccessToken));
        assert_eq!(beside[header::AUTHORIZATION], basic);
        assert_eq!(beside[X_ACCESS_TOKEN], "t");
        let mut two = HeaderMap::new();
        two.append(header::AUTHORIZATION, basic.clone());
        two.append(header::AUTHORIZATION, basic);
        keep_only_the_validated_credential(&mut two, None);
        assert!(two.is_empty());
    }
}
