//! Reverse proxy mode (docs/contract.md §5 headers, §6 proxy), seen from both ends: requests go through
//! the real sidecar to the echo upstream, and every test asserts on what the upstream reports
//! it received or on what the client got back — never on the sidecar's internals.
//!
//! Timing assertions use generous bounds (hundreds of milliseconds of slack) so a loaded
//! machine does not make them flaky; memory assertions measure the whole test process, which
//! holds the client, the sidecar and the upstream, so any of them buffering 50 MB would show.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{self, SHA256};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::{SinkExt as _, Stream, StreamExt as _};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::helpers::binary::{Binary, JSON_LOGS, proxy_toml};
use crate::helpers::upstream::{HOP_RESPONSE_HEADERS, big_body, sha256_hex};
use crate::helpers::{
    Echo, EchoUpstream, FakeKeycloak, HangingServer, MEMORY_TURN, TestApp, base_env, closed_port, metric,
    rss, set,
};

/// Every header the sidecar owns (docs/contract.md §5), lower-case.
const OWNED: [&str; 12] = [
    "x-identity-status",
    "x-identity-subject",
    "x-identity-email",
    "x-identity-username",
    "x-identity-name",
    "x-identity-roles",
    "x-identity-organizations",
    "x-identity-managed-organizations",
    "x-identity-contracts",
    "x-identity-entitlements",
    "x-userinfo",
    "x-identity-active-organization",
];

/// The base test config with `upstream.url` set.
fn proxy_env(kc: &FakeKeycloak, upstream_url: &str) -> Vec<(String, String)> {
    let mut env = base_env(kc);
    set(&mut env, "SIDECAR__UPSTREAM__URL", upstream_url);
    env
}

async fn proxy_app(kc: &FakeKeycloak, upstream: &EchoUpstream) -> TestApp {
    TestApp::spawn_with(proxy_env(kc, &upstream.url())).await
}

/// Whether a received header name is an owned one in any spelling (`_` read as `-`).
fn is_owned_spelling(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('_', "-");
    n.starts_with("x-identity-") || n == "x-userinfo" || n == "x-id-token"
}

fn decode_userinfo(value: &str) -> Value {
    let raw = STANDARD.decode(value).expect("X-Userinfo is standard base64");
    serde_json::from_slice(&raw).expect("X-Userinfo holds JSON")
}

async fn assert_problem(res: reqwest::Response, status: u16) {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: Value = res.json().await.expect("problem JSON");
    assert_eq!(body["status"], status, "{body}");
}

// ---------------------------------------------------------------------------------------------
// Identity headers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_valid_token_reaches_the_upstream_with_every_identity_header() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let mut env = proxy_env(&kc, &upstream.url());
    set(&mut env, "SIDECAR__OIDC__CLIENT_ROLES_OF", r#"["app"]"#);
    let app = TestApp::spawn_with(env).await;
    let token = kc
        .token()
        .sub("user-1")
        .email("zoe@example.org")
        .preferred_username("zoe")
        .name("Zoë Ämm")
        .given_name("Zoë")
        .family_name("Ämm")
        .realm_roles(&["staff", "learner"])
        .client_roles("app", &["editor"])
        .client_roles("other", &["not-listed"])
        .organization(json!(["acme"]))
        .sign();

    let res = app.get("/courses/1").bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let echo = Echo::from_response(res).await;

    for name in OWNED {
        assert_eq!(echo.header_all(name).len(), 1, "{name} exactly once: {:?}", echo.headers);
    }
    assert_eq!(echo.header("x-identity-status"), Some("authenticated"));
    assert_eq!(echo.header("x-identity-subject"), Some("user-1"));
    assert_eq!(echo.header("x-identity-email"), Some("zoe@example.org"));
    assert_eq!(echo.header("x-identity-username"), Some("zoe"));
    assert_eq!(echo.header("x-identity-name"), Some("Zo%C3%AB %C3%84mm"));
    assert_eq!(echo.header("x-identity-roles"), Some("app:editor,learner,staff"));
    // The user belongs to no known organization: the B2B lists are there, empty, and the
    // entitlement token is a compact JWS saying so.
    for name in ["x-identity-organizations", "x-identity-managed-organizations", "x-identity-contracts"] {
        assert_eq!(echo.header(name), Some(""), "{name}");
    }
    let entitlements = echo.header("x-identity-entitlements").unwrap();
    assert_eq!(entitlements.split('.').count(), 3, "{entitlements}");
    let claims = crate::helpers::tokens::peek_claims(entitlements);
    assert_eq!((claims["sub"].as_str(), &claims["organizations"]), (Some("user-1"), &json!([])));
    let userinfo = decode_userinfo(echo.header("x-userinfo").unwrap());
    assert_eq!(
        userinfo,
        json!({
            "sub": "user-1",
            "email": "zoe@example.org",
            "email_verified": true,
            "preferred_username": "zoe",
            "name": "Zoë Ämm",
            "given_name": "Zoë",
            "family_name": "Ämm",
            "organization": ["acme"],
            "b2b": {"organizations": [], "managed_organizations": [], "contracts": [], "active_organization": null},
        })
    );
    // By default the app keeps the token (it may call APIs with it).
    assert_eq!(echo.header("authorization"), Some(format!("Bearer {token}").as_str()));
}

#[tokio::test]
async fn an_anonymous_request_carries_every_owned_header_empty_except_the_status() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await;

    let echo = Echo::from_response(app.get("/public").send().await.unwrap()).await;

    for name in OWNED {
        let expected = if name == "x-identity-status" { "anonymous" } else { "" };
        assert_eq!(echo.header_all(name), vec![expected], "{name}");
    }
}

/// Client-sent identity headers, each value marked so a leak is easy to spot.
const SPOOFED: [(&str, &str); 12] = [
    ("X-Identity-Subject", "spoof-subject"),
    ("X-Identity-Subject", "spoof-second-subject"),
    ("X_Identity_Subject", "spoof-underscore-subject"),
    ("x-identity_email", "spoof-mixed-email"),
    ("X-Identity-Status", "spoof-authenticated"),
    ("X_Identity_Roles", "spoof-admin"),
    ("X-Identity-Organizations", "spoof-org"),
    ("X-Identity-Not-Yet-Invented", "spoof-future"),
    ("X-Userinfo", "spoof-userinfo"),
    ("X_Userinfo", "spoof-underscore-userinfo"),
    ("X-Id-Token", "spoof-id-token"),
    ("X_ID_Token", "spoof-underscore-id-token"),
];

#[tokio::test]
async fn spoofed_identity_headers_in_any_spelling_never_reach_the_upstream() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await;
    let token = kc.token().sub("real-user").sign();

    for (who, token) in [("anonymous", None), ("authenticated", Some(&token))] {
        let mut req = app.get("/spoof").header("X_App_Flag", "underscores-do-travel");
        for (name, value) in SPOOFED {
            req = req.header(name, value);
        }
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let echo = Echo::from_response(req.send().await.unwrap()).await;

        // The control header proves underscore names cross the proxy at all, so the
        // absence of the spoofed ones below means they were stripped.
        assert_eq!(echo.header("x_app_flag"), Some("underscores-do-travel"), "{who}");
        for (name, value) in &echo.headers {
            assert!(!value.contains("spoof"), "{who}: client value reached the upstream in {name}: {value}");
            if is_owned_spelling(name) {
                assert!(
                    OWNED.contains(&name.as_str()),
                    "{who}: foreign spelling {name} reached the upstream"
                );
            }
        }
        assert_eq!(echo.header("x-identity-status"), Some(who));
        if token.is_some() {
            assert_eq!(echo.header("x-identity-subject"), Some("real-user"));
        }
    }
}

#[tokio::test]
async fn hide_credentials_removes_authorization_and_x_access_token() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let mut env = proxy_env(&kc, &upstream.url());
    set(&mut env, "SIDECAR__HEADERS__HIDE_CREDENTIALS", "true");
    let app = TestApp::spawn_with(env).await;
    let token = kc.token().sub("hidden").sign();

    let res = app.get("/").bearer_auth(&token).header("X-Access-Token", &token).send().await.unwrap();
    let echo = Echo::from_response(res).await;

    assert_eq!(echo.header("x-identity-subject"), Some("hidden"));
    assert_eq!(echo.header("authorization"), None);
    assert_eq!(echo.header("x-access-token"), None);
}

#[tokio::test]
async fn a_token_in_x_access_token_is_accepted_only_when_that_source_is_configured() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let token = kc.token().sub("session-user").sign();

    let default_app = proxy_app(&kc, &upstream).await;
    let res = default_app.get("/").header("X-Access-Token", &token).send().await.unwrap();
    let echo = Echo::from_response(res).await;
    assert_eq!(echo.header("x-identity-status"), Some("anonymous"));

    let mut env = proxy_env(&kc, &upstream.url());
    set(&mut env, "SIDECAR__OIDC__TOKEN_SOURCES", r#"["authorization","x-access-token"]"#);
    let app = TestApp::spawn_with(env).await;
    let res = app.get("/").header("X-Access-Token", &token).send().await.unwrap();
    let echo = Echo::from_response(res).await;
    assert_eq!(echo.header("x-identity-status"), Some("authenticated"));
    assert_eq!(echo.header("x-identity-subject"), Some("session-user"));
}

#[tokio::test]
async fn a_rejected_token_is_answered_by_the_sidecar_and_never_reaches_the_upstream() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await;
    let expired = kc.token().exp_in(-3600).sign();

    let res = app.get("/").bearer_auth(&expired).send().await.unwrap();

    assert!(res.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    assert_problem(res, 401).await;
    assert_eq!(upstream.request_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Request line, body and forwarding headers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn method_path_query_and_body_pass_unchanged() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await;

    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"] {
        let body = format!("{{\"method\":\"{method}\",\"ü\":\"%2F\"}}");
        let mut req = app
            .http
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                app.url("/api/a%20b/ü/c/?x=1&y=%2F&y=2&flag"),
            )
            .header("content-type", "application/json")
            .header("x-custom", "end-to-end");
        if method != "GET" {
            req = req.body(body.clone());
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200, "{method}");
        let echo = Echo::from_response(res).await;

        assert_eq!(echo.method, method);
        assert_eq!(echo.path, "/api/a%20b/%C3%BC/c/", "{method}");
        assert_eq!(echo.query.as_deref(), Some("x=1&y=%2F&y=2&flag"), "{method}");
        assert_eq!(echo.header("content-type"), Some("application/json"));
        assert_eq!(echo.header("x-custom"), Some("end-to-end"));
        if method == "GET" {
            assert_eq!(echo.body_len, 0);
        } else {
            assert_eq!(echo.body_len, body.len() as u64, "{method}");
            assert_eq!(echo.body_sha256, sha256_hex(body.as_bytes()), "{method}");
        }
    }

    // HEAD has no body to echo; the upstream's record shows what arrived.
    let res = app.http.head(app.url("/api/head?x=1")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let seen = upstream.last_request().unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str(), seen.query.as_deref()),
        ("HEAD", "/api/head", Some("x=1"))
    );
}

#[tokio::test]
async fn the_path_of_the_upstream_url_prefixes_forwarded_paths() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = TestApp::spawn_with(proxy_env(&kc, &format!("{}/app/", upstream.url()))).await;

    let echo = Echo::from_response(app.get("/courses?page=2").send().await.unwrap()).await;

    assert_eq!(echo.path, "/app/courses");
    assert_eq!(echo.query.as_deref(), Some("page=2"));
}

#[tokio::test]
async fn a_request_id_is_passed_on_when_sent_and_generated_when_absent() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await;

    let res = app.get("/").header("X-Request-Id", "req-from-gateway-42").send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "req-from-gateway-42");
    let echo = Echo::from_response(res).await;
    assert_eq!(echo.header_all("x-request-id"), vec!["req-from-gateway-42"]);

    let res = app.get("/").send().await.unwrap();
    let answered = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let echo = Echo::from_response(res).await;
    let generated = echo.header("x-request-id").expect("a request id is generated");
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");
    assert_eq!(answered, generated, "the client sees the id the upstream saw");
}

#[tokio::test]
async fn x_forwarded_headers_are_appended_to_for_a_trusted_peer() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await; // loopback is trusted by default

    let res = app
        .get("/")
        .header("X-Forwarded-For", "203.0.113.7")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "app.example")
        .send()
        .await
        .unwrap();
    let echo = Echo::from_response(res).await;

    assert_eq!(echo.header_all("x-forwarded-for"), vec!["203.0.113.7, 127.0.0.1"]);
    assert_eq!(echo.header_all("x-forwarded-proto"), vec!["https"]);
    assert_eq!(echo.header_all("x-forwarded-host"), vec!["app.example"]);
}

#[tokio::test]
async fn x_forwarded_headers_are_replaced_for_a_peer_that_is_not_trusted() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let mut env = proxy_env(&kc, &upstream.url());
    set(&mut env, "SIDECAR__SERVER__TRUSTED_PROXIES", r#"["10.0.0.0/8"]"#);
    let app = TestApp::spawn_with(env).await;

    let res = app
        .get("/")
        .header("X-Forwarded-For", "203.0.113.7")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "evil.example")
        .send()
        .await
        .unwrap();
    let echo = Echo::from_response(res).await;

    assert_eq!(echo.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(echo.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(echo.header_all("x-forwarded-host"), vec![app.public.to_string().as_str()]);
}

// ---------------------------------------------------------------------------------------------
// Hop-by-hop headers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hop_by_hop_request_headers_do_not_reach_the_upstream() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await;

    let res = app
        .get("/")
        .header("Connection", "x-foo")
        .header("X-Foo", "named-in-connection")
        .header("Keep-Alive", "timeout=5")
        .header("TE", "trailers")
        .header("Proxy-Authorization", "Basic dXNlcjpwYXNz")
        .header("Proxy-Connection", "keep-alive")
        .header("X-Kept", "end-to-end")
        .send()
        .await
        .unwrap();
    let echo = Echo::from_response(res).await;

    for name in ["connection", "x-foo", "keep-alive", "te", "proxy-authorization", "proxy-connection"] {
        assert_eq!(echo.header(name), None, "{name} reached the upstream: {:?}", echo.headers);
    }
    assert_eq!(echo.header("x-kept"), Some("end-to-end"));
}

#[tokio::test]
async fn hop_by_hop_response_headers_do_not_reach_the_client() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await;

    let res = app.get("/_test/hop").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let headers = res.headers().clone();
    let echo = Echo::from_response(res).await;
    assert_eq!(echo.path, "/_test/hop", "the whole chunked body arrived");

    for (name, value) in HOP_RESPONSE_HEADERS {
        match *name {
            "x-end-to-end" => assert_eq!(headers.get(*name).unwrap(), value),
            // The sidecar frames the body itself (chunked, as it has no length): that one is
            // its own, not the upstream's, and cannot be told apart here.
            "transfer-encoding" => {}
            "connection" => assert!(
                headers.get_all(*name).iter().all(|v| !v.to_str().unwrap().contains("x-custom")),
                "the upstream's Connection reached the client: {headers:?}"
            ),
            _ => assert!(headers.get(*name).is_none(), "{name} reached the client: {headers:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------

/// 50 MiB: buffering it anywhere along the way would show in the process's memory.
const BIG: usize = 50 * 1024 * 1024;
/// The allowed growth of the process's resident memory while 50 MiB pass.
const MEMORY_BOUND: u64 = 30 * 1024 * 1024;

/// Samples `VmRSS` every few milliseconds on a plain thread (not held up by the test's
/// runtime) and keeps the peak: a buffer filled and freed between the "before" and "after"
/// readings still shows.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl PeakRss {
    fn start() -> PeakRss {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss()));
        let thread = std::thread::spawn({
            let (stop, peak) = (stop.clone(), peak.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        PeakRss { stop, peak, thread }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler thread");
        self.peak.load(Ordering::Relaxed).max(rss())
    }
}

/// [`big_body`]`(total)` as a stream of 62.75 KiB chunks. Its period (251) divides the chunk
/// size, so every chunk is a slice of one shared buffer: the test never holds the body.
fn big_stream(total: usize) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let pattern = Bytes::from(big_body(251 * 256));
    let chunk = pattern.len();
    futures_util::stream::iter((0..total).step_by(chunk))
        .map(move |start| Ok(pattern.slice(0..chunk.min(total - start))))
}

/// SHA-256 of [`big_body`]`(total)`, computed chunk by chunk (aws-lc, like the echo).
async fn big_sha256(total: usize) -> String {
    let mut hasher = digest::Context::new(&SHA256);
    let mut chunks = std::pin::pin!(big_stream(total));
    while let Some(chunk) = chunks.next().await {
        hasher.update(&chunk.unwrap());
    }
    hex::encode(hasher.finish())
}

#[tokio::test]
async fn a_fifty_megabyte_request_body_streams_to_the_upstream_in_bounded_memory() {
    let _turn = MEMORY_TURN.lock().await;
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await;
    let expected = big_sha256(BIG).await;
    // Warm the path (connections, pools, buffers) so only the big body is measured.
    let warm = app.http.put(app.url("/upload")).body(reqwest::Body::wrap_stream(big_stream(1 << 20)));
    assert_eq!(Echo::from_response(warm.send().await.unwrap()).await.body_len, 1 << 20);

    let before = rss();
    let peak = PeakRss::start();
    let res = app
        .http
        .put(app.url("/upload"))
        .body(reqwest::Body::wrap_stream(big_stream(BIG)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echo = Echo::from_response(res).await;
    let peak = peak.finish();

    assert_eq!(echo.body_len, BIG as u64);
    assert_eq!(echo.body_sha256, expected);
    let growth = peak.saturating_sub(before);
    assert!(growth < MEMORY_BOUND, "resident memory grew by {} MiB for a 50 MiB body", growth >> 20);
}

#[tokio::test]
async fn a_fifty_megabyte_response_body_streams_to_the_client_in_bounded_memory() {
    let _turn = MEMORY_TURN.lock().await;
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await;
    let expected = big_sha256(BIG).await;
    let warm = app.get(&format!("/_test/big?bytes={}", 1 << 20)).send().await.unwrap();
    assert_eq!(warm.bytes().await.unwrap().len(), 1 << 20);

    let before = rss();
    let peak = PeakRss::start();
    let res = app.get(&format!("/_test/big?bytes={BIG}")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-length"], BIG.to_string().as_str());
    let mut hasher = digest::Context::new(&SHA256);
    let mut len = 0usize;
    let mut body = res.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        len += chunk.len();
        hasher.update(&chunk);
    }
    let peak = peak.finish();

    assert_eq!(len, BIG);
    assert_eq!(hex::encode(hasher.finish()), expected);
    let growth = peak.saturating_sub(before);
    assert!(growth < MEMORY_BOUND, "resident memory grew by {} MiB for a 50 MiB body", growth >> 20);
}

#[tokio::test]
async fn a_slowly_streamed_response_reaches_the_client_chunk_by_chunk() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await;

    let started = Instant::now();
    let res = app.get("/_test/slow-chunks?n=5&ms=200").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    let mut all = first.to_vec();
    while let Some(chunk) = body.next().await {
        all.extend_from_slice(&chunk.unwrap());
    }
    let done_at = started.elapsed();

    assert!(first.starts_with(b"chunk 0\n"), "{first:?}");
    assert_eq!(all, b"chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
    assert!(first_at < Duration::from_millis(600), "first chunk after {first_at:?}");
    assert!(done_at >= Duration::from_millis(800), "whole body after {done_at:?}");
}

#[tokio::test]
async fn a_websocket_round_trips_through_the_sidecar_with_identity_headers() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let mut env = proxy_env(&kc, &upstream.url());
    // The response-header timeout must not cut an open WebSocket.
    set(&mut env, "SIDECAR__UPSTREAM__TIMEOUT_SECS", "1");
    let app = TestApp::spawn_with(env).await;
    let token = kc.token().sub("ws-user").sign();

    tokio::time::timeout(Duration::from_secs(10), async {
        let mut request = format!("ws://{}/_test/ws?hello=1", app.public).into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        headers.insert("x-identity-subject", "spoof-subject".parse().unwrap());
        let (mut ws, response) = tokio_tungstenite::connect_async(request).await.expect("handshake");
        assert_eq!(response.status(), 101);

        let hello = ws.next().await.unwrap().unwrap();
        let hello: Value = serde_json::from_str(hello.to_text().unwrap()).unwrap();
        let seen = hello["headers"].as_array().unwrap();
        assert!(seen.contains(&json!(["x-identity-status", "authenticated"])), "{hello}");
        assert!(seen.contains(&json!(["x-identity-subject", "ws-user"])), "{hello}");
        assert!(!hello.to_string().contains("spoof"), "{hello}");

        ws.send(Message::text("through the sidecar")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("through the sidecar"));
        tokio::time::sleep(Duration::from_millis(1300)).await;
        ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
        ws.close(None).await.unwrap();
    })
    .await
    .expect("the WebSocket session finishes in time");

    let handshake = upstream.last_request().unwrap();
    assert_eq!(handshake.path, "/_test/ws");
    assert_eq!(handshake.header("x-identity-subject"), Some("ws-user"));
}

#[tokio::test]
async fn a_slowly_streamed_response_body_is_not_cut_by_the_upstream_timeout() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let mut env = proxy_env(&kc, &upstream.url());
    set(&mut env, "SIDECAR__UPSTREAM__TIMEOUT_SECS", "1");
    let app = TestApp::spawn_with(env).await;

    let started = Instant::now();
    let res = app.get("/_test/slow-chunks?n=4&ms=500").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();

    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\nchunk 3\n");
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn a_slowly_uploaded_request_body_is_not_cut_by_the_upstream_timeout() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let mut env = proxy_env(&kc, &upstream.url());
    set(&mut env, "SIDECAR__UPSTREAM__TIMEOUT_SECS", "1");
    let app = TestApp::spawn_with(env).await;

    // Five chunks 400 ms apart: the upload alone outlasts the timeout, but never stalls.
    let chunks = futures_util::stream::iter(0..5).then(|i| async move {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        Ok::<_, std::io::Error>(Bytes::from(format!("part {i}\n")))
    });
    let started = Instant::now();
    let res =
        app.http.post(app.url("/upload")).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();

    assert_eq!(res.status(), 200);
    let echo = Echo::from_response(res).await;
    assert_eq!(echo.body_sha256, sha256_hex(b"part 0\npart 1\npart 2\npart 3\npart 4\n"));
    assert!(started.elapsed() >= Duration::from_millis(1600));
}

// ---------------------------------------------------------------------------------------------
// Upstream failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_closed_upstream_port_is_a_502_problem() {
    let kc = FakeKeycloak::start().await;
    let app = TestApp::spawn_with(proxy_env(&kc, &format!("http://127.0.0.1:{}", closed_port()))).await;

    let res = app.get("/anything").send().await.unwrap();

    assert_problem(res, 502).await;
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_a_504_problem_after_the_timeout() {
    let kc = FakeKeycloak::start().await;
    let hanging = HangingServer::start().await;
    let mut env = proxy_env(&kc, &hanging.url());
    set(&mut env, "SIDECAR__UPSTREAM__TIMEOUT_SECS", "1");
    let app = TestApp::spawn_with(env).await;

    let started = Instant::now();
    let res = app.get("/anything").send().await.unwrap();
    let took = started.elapsed();

    assert_problem(res, 504).await;
    assert!(hanging.accepted() >= 1);
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn upstream_response_headers_later_than_the_timeout_are_a_504_problem() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let mut env = proxy_env(&kc, &upstream.url());
    set(&mut env, "SIDECAR__UPSTREAM__TIMEOUT_SECS", "1");
    let app = TestApp::spawn_with(env).await;

    let started = Instant::now();
    let res = app.get("/_test/delay-headers?ms=3000").send().await.unwrap();

    assert!(started.elapsed() < Duration::from_millis(2500), "answered after {:?}", started.elapsed());
    assert_problem(res, 504).await;
}

#[tokio::test]
async fn a_stalled_request_body_is_a_408_problem_after_the_body_read_timeout() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let mut env = proxy_env(&kc, &upstream.url());
    set(&mut env, "SIDECAR__UPSTREAM__TIMEOUT_SECS", "1");
    set(&mut env, "SIDECAR__SERVER__BODY_READ_TIMEOUT_SECS", "1");
    let app = TestApp::spawn_with(env).await;

    // One chunk, then nothing: neither the body nor the response can make progress. The
    // client is the one stalling, so this is its timeout (docs/contract.md §2 v2), not the upstream's 504.
    let first = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"part 0\n"))]);
    let chunks = first.chain(futures_util::stream::pending());
    let started = Instant::now();
    let sent = app.http.post(app.url("/upload")).body(reqwest::Body::wrap_stream(chunks)).send();
    let res = tokio::time::timeout(Duration::from_secs(5), sent).await.expect("answered, not hung").unwrap();
    let took = started.elapsed();

    assert_problem(res, 408).await;
    assert!(took >= Duration::from_millis(900), "{took:?}");
}

// ---------------------------------------------------------------------------------------------
// Reserved prefix and metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_reserved_path_is_a_404_from_the_sidecar_and_never_reaches_the_upstream() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await;

    for path in ["/_sidecar/unknown", "/_sidecar", "/_sidecar/auth/deeper", "/_sidecar/me/x?y=1"] {
        let res = app.get(path).send().await.unwrap();
        assert_problem(res, 404).await;
    }

    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn proxied_requests_are_counted_in_the_request_and_upstream_metrics() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await;

    for path in ["/", "/a", "/_test/status/404"] {
        app.get(path).send().await.unwrap().bytes().await.unwrap();
    }
    let text = app.metrics().await;

    let count = |series: &str| metric(&text, series);
    assert_eq!(count(r#"identity_sidecar_upstream_responses_total{outcome="2xx"}"#), 2.0, "{text}");
    assert_eq!(count(r#"identity_sidecar_upstream_responses_total{outcome="4xx"}"#), 1.0, "{text}");
    assert_eq!(count(r#"identity_sidecar_requests_total{mode="proxy",class="2xx"}"#), 2.0, "{text}");
    assert_eq!(count(r#"identity_sidecar_requests_total{mode="proxy",class="4xx"}"#), 1.0, "{text}");
    assert!(count("identity_sidecar_upstream_latency_seconds_count") >= 3.0, "{text}");
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------------------------

/// Waits until the upstream has received `n` requests (so they are in flight).
async fn wait_for_requests(upstream: &EchoUpstream, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while upstream.request_count() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the requests reached the upstream");
}

/// Polls `url` (an admin `/readyz`) until it answers `status`; returns the body.
async fn wait_for_readyz(http: &reqwest::Client, url: &str, status: u16) -> String {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match http.get(url).send().await {
                Ok(res) if res.status() == status => return res.text().await.unwrap_or_default(),
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{url} never answered {status}"))
}

#[tokio::test]
async fn readyz_answers_503_while_in_flight_proxied_requests_complete_during_a_graceful_shutdown() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await;
    let public = app.public;

    // One request still waits for its response headers, one is mid-body.
    let headers_pending = tokio::spawn(app.get("/_test/delay-headers?ms=1500").send());
    let body_pending = tokio::spawn({
        let request = app.get("/_test/slow-chunks?n=5&ms=300").send();
        async move {
            let res = request.await?;
            Ok::<_, reqwest::Error>((res.status(), res.text().await?))
        }
    });
    wait_for_requests(&upstream, 2).await;

    let readyz = app.admin_url("/readyz");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    assert_eq!(http.get(&readyz).send().await.unwrap().status(), 200);
    let shutdown = tokio::spawn(tokio::time::timeout(Duration::from_secs(10), app.shutdown()));
    // During the drain the admin port still answers, and says not ready.
    let draining = wait_for_readyz(&http, &readyz, 503).await;
    assert!(!headers_pending.is_finished(), "the 503 came while a request was still in flight");
    assert!(draining.contains("Shutting down"), "{draining}");
    let shutdown = shutdown.await.unwrap();
    shutdown.expect("shutdown finishes within the grace period").expect("shutdown is clean");

    let res = headers_pending.await.unwrap().expect("the delayed request is answered");
    assert_eq!(res.status(), 200);
    assert_eq!(Echo::from_response(res).await.path, "/_test/delay-headers");
    let (status, body) = body_pending.await.unwrap().expect("the streaming request is answered");
    assert_eq!(status, 200);
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
    assert!(tokio::net::TcpStream::connect(public).await.is_err(), "the public port is closed");
}

#[tokio::test]
async fn the_binary_answers_readyz_503_and_drains_an_in_flight_request_on_sigterm_and_exits_zero() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let mut bin = Binary::start_with_env(
        &proxy_toml(&upstream.url(), &kc.issuer(), JSON_LOGS),
        &[("SIDECAR__SERVER__SHUTDOWN_GRACE_SECS", "10")],
    );
    bin.wait_ready(Duration::from_secs(20)).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    let token = kc.token().sub("draining").sign();
    let in_flight = tokio::spawn({
        let request = http.get(bin.url("/_test/slow-chunks?n=5&ms=300")).bearer_auth(&token).send();
        async move {
            let res = request.await?;
            Ok::<_, reqwest::Error>((res.status(), res.text().await?))
        }
    });
    wait_for_requests(&upstream, 1).await;
    bin.terminate();
    // From SIGTERM on, /readyz says 503 so a load balancer sends no new work, while the
    // in-flight request still streams.
    wait_for_readyz(&http, &bin.admin_url("/readyz"), 503).await;
    assert!(!in_flight.is_finished(), "the 503 came while the request was still in flight");

    let (status, body) = in_flight.await.unwrap().unwrap_or_else(|e| panic!("{e}; log:\n{}", bin.stderr()));
    assert_eq!(status, 200);
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
    let exit = bin.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(0), "log:\n{}", bin.stderr());
}

#[tokio::test]
async fn an_upload_that_expects_100_continue_gets_one_and_then_the_answer() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await;

    // What curl does for bodies over 1 MiB: headers first, the body after "100 Continue".
    let mut stream = tokio::net::TcpStream::connect(app.public).await.unwrap();
    let head = "POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut wire = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        while !wire.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed early");
            wire.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("an interim answer");
    assert!(wire.starts_with(b"HTTP/1.1 100 Continue\r\n"), "{}", String::from_utf8_lossy(&wire));
    stream.write_all(b"hello world").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&rest).contains("body_sha256") || !rest.ends_with(b"}") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed early: {}", String::from_utf8_lossy(&rest));
            rest.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the final answer");
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains(&sha256_hex(b"hello world")), "{text}");
}
