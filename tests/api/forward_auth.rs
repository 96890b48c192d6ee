//! Forward-auth input fails closed (docs/contract.md §6 v2): the forwarded URI is read as bytes and never
//! replaced by the sidecar's own path; a missing, untrusted, doubled or unreadable forwarded
//! request is refused with a 403 that says why; every refusal carries its problem
//! `Content-Type`. Requests go over raw TCP where an HTTP client would refuse or merge what a
//! gateway really sends (a raw `0xFF` in a header, a header given twice).
//!
//! [`raw`] is also used by `token_gate` and `nginx` for the same reason.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::helpers::{FakeKeycloak, Mode, TestApp, base_env, set};

/// An HTTP/1.1 answer read off a raw socket.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// `(lower-case name, value)` in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (a problem document, say).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an RFC 9457 refusal: this status, the problem content type, and a `detail`
    /// that contains `says`.
    pub fn assert_problem(&self, status: u16, says: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{self:?}");
        let detail = self.json()["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains(says), "detail {detail:?} does not say {says:?}");
    }
}

/// A request with these header lines (each without CRLF), `Host` and `Connection: close`
/// added, and no body. Bytes, so a line may hold what no HTTP client would send.
pub fn request(method: &str, target: &[u8], lines: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("{method} ").into_bytes();
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for line in lines {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Sends raw bytes (which should ask for `Connection: close`) and reads the answer to the end
/// of the connection. A server that answers without one panics the test: every case here
/// expects an answer.
pub async fn raw(addr: impl ToSocketAddrs, bytes: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    // A server may answer and close before reading everything; a failed write is fine.
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    // Generous: the machine is busy, and a closed connection ends the read long before.
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no end of answer within 30 s: {:?}", String::from_utf8_lossy(&answer));
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| {
        panic!("no complete answer head: {:?}", String::from_utf8_lossy(&answer));
    });
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = answer[end + 4..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body);
    }
    Answer { status, headers, body }
}

/// The payload of a chunked body (no trailers expected).
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size =
            std::str::from_utf8(&rest[..eol]).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size.filter(|&s| s > 0) else { break };
        let start = eol + 2;
        out.extend_from_slice(&rest[start..(start + size).min(rest.len())]);
        rest = rest.get(start + size + 2..).unwrap_or_default();
    }
    out
}

/// An app whose `/courses` need a login and `/staff` the `staff` role.
async fn rules_app(kc: &FakeKeycloak, trusted_proxies: Option<&str>) -> TestApp {
    let mut env = base_env(kc);
    let rules = json!([
        {"prefix": "/courses", "require": true},
        {"prefix": "/staff", "roles_any": ["staff"]},
    ]);
    set(&mut env, "SIDECAR__AUTH__RULES", rules.to_string());
    if let Some(cidrs) = trusted_proxies {
        set(&mut env, "SIDECAR__SERVER__TRUSTED_PROXIES", cidrs);
    }
    TestApp::spawn_with(env).await
}

/// A forward-auth request as nginx sends it: the original URI in `X-Forwarded-Uri`, raw.
fn auth(uri: &[u8], extra: &[&[u8]]) -> Vec<u8> {
    let mut line = b"X-Forwarded-Uri: ".to_vec();
    line.extend_from_slice(uri);
    let mut lines: Vec<&[u8]> = vec![b"X-Forwarded-Method: GET", &line];
    lines.extend_from_slice(extra);
    request("GET", b"/_sidecar/auth", &lines)
}

#[tokio::test]
async fn a_raw_non_ascii_byte_in_the_forwarded_uri_is_judged_on_that_path_not_dropped() {
    let kc = FakeKeycloak::start().await;
    let app = rules_app(&kc, None).await;
    let bearer = format!("Authorization: Bearer {}", kc.token().sub("u-raw").sign());

    // In the query: the path is still /courses/intro, which needs a login.
    let anonymous = raw(app.public, &auth(b"/courses/intro?q=\xff", &[])).await;
    anonymous.assert_problem(401, "Authentication is required");
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    let signed_in = raw(app.public, &auth(b"/courses/intro?q=\xff", &[bearer.as_bytes()])).await;
    assert_eq!(signed_in.status, 200, "{signed_in:?}");
    assert_eq!(signed_in.header("x-identity-subject"), Some("u-raw"));
    // An open path with the same byte in its query passes: the byte is read, not refused.
    let open = raw(app.public, &auth(b"/open?q=\xff\xfe", &[])).await;
    assert_eq!(open.status, 200, "{open:?}");
    assert_eq!(open.header("x-identity-status"), Some("anonymous"));

    // In the path: decoded bytes that are not UTF-8 cannot be matched, so they are refused
    // (403, the status nginx passes on), signed in or not.
    for uri in [&b"/courses/\xff"[..], b"/open/\xff", b"/courses\xff/x"] {
        raw(app.public, &auth(uri, &[])).await.assert_problem(403, "");
        raw(app.public, &auth(uri, &[bearer.as_bytes()])).await.assert_problem(403, "");
    }
}

#[tokio::test]
async fn with_rules_a_missing_or_untrusted_forwarded_uri_is_refused_never_replaced_by_the_auth_path() {
    let kc = FakeKeycloak::start().await;
    let token = kc.token().sign();
    let bearer = format!("Authorization: Bearer {token}");
    let app = rules_app(&kc, None).await;
    let missing = request("GET", b"/_sidecar/auth", &[b"X-Forwarded-Method: GET", bearer.as_bytes()]);
    raw(app.public, &missing).await.assert_problem(403, "X-Forwarded-Uri is missing");
    let empty = auth(b"", &[bearer.as_bytes()]);
    raw(app.public, &empty).await.assert_problem(403, "X-Forwarded-Uri is empty");

    // Loopback is not a trusted proxy here: its X-Forwarded-Uri is not believed, and the
    // rules cannot be applied without it, even for a signed-in caller on an open path.
    let untrusting = rules_app(&kc, Some(r#"["10.0.0.0/8"]"#)).await;
    for extra in [vec![], vec![bearer.as_bytes()]] {
        let answer = raw(untrusting.public, &auth(b"/open", &extra)).await;
        answer.assert_problem(403, "trusted proxies only");
    }
}

#[tokio::test]
async fn without_rules_a_missing_forwarded_uri_is_fine_and_an_untrusted_one_is_ignored() {
    let kc = FakeKeycloak::start().await;
    let bearer = format!("Authorization: Bearer {}", kc.token().sub("u-free").sign());
    let app = TestApp::spawn(&kc).await;
    let bare = raw(app.public, &request("GET", b"/_sidecar/auth", &[])).await;
    assert_eq!((bare.status, bare.header("x-identity-status")), (200, Some("anonymous")), "{bare:?}");
    let signed_in = raw(app.public, &request("GET", b"/_sidecar/auth", &[bearer.as_bytes()])).await;
    assert_eq!(signed_in.header("x-identity-subject"), Some("u-free"), "{signed_in:?}");

    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__SERVER__TRUSTED_PROXIES", r#"["10.0.0.0/8"]"#);
    let untrusting = TestApp::spawn_with(env).await;
    let ignored = raw(untrusting.public, &auth(b"/anything", &[])).await;
    assert_eq!(ignored.status, 200, "{ignored:?}");
}

#[tokio::test]
async fn a_forwarded_uri_or_method_given_twice_is_refused_even_without_rules() {
    let kc = FakeKeycloak::start().await;
    let bearer = format!("Authorization: Bearer {}", kc.token().sign());
    let open = TestApp::spawn(&kc).await;
    let ruled = rules_app(&kc, None).await;
    for app in [&open, &ruled] {
        let two_uris = auth(b"/courses/x", &[b"X-Forwarded-Uri: /open", bearer.as_bytes()]);
        raw(app.public, &two_uris).await.assert_problem(403, "X-Forwarded-Uri more than once");
        let two_methods = auth(b"/open", &[b"X-Forwarded-Method: OPTIONS", bearer.as_bytes()]);
        raw(app.public, &two_methods).await.assert_problem(403, "X-Forwarded-Method more than once");
        let bad_method = request(
            "GET",
            b"/_sidecar/auth",
            &[b"X-Forwarded-Method: GE(T", b"X-Forwarded-Uri: /open", bearer.as_bytes()],
        );
        raw(app.public, &bad_method).await.assert_problem(403, "not a method");
    }
}

#[tokio::test]
async fn an_unreadable_forwarded_path_is_a_403_that_says_why_never_a_400() {
    let kc = FakeKeycloak::start().await;
    let app = rules_app(&kc, None).await;
    for uri in ["/open/../courses/x", "/open/%2e%2e/courses/x", "/open/%00"] {
        let res = app.forward_auth("GET", uri).send().await.unwrap();
        assert_eq!(res.status(), 403, "{uri}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["status"], 403, "{uri}");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains("path")), "{uri}: {problem}");
    }
}

#[tokio::test]
async fn every_refusal_from_forward_auth_carries_the_problem_content_type_and_503_a_retry_after() {
    let kc = FakeKeycloak::start().await;
    let app = rules_app(&kc, None).await;
    let learner = format!("Authorization: Bearer {}", kc.token().realm_roles(&["learner"]).sign());
    let expired = format!("Authorization: Bearer {}", kc.token().exp_in(-300).sign());
    let cases: [(Vec<u8>, u16); 7] = [
        (auth(b"/courses/x", &[]), 401),
        (auth(b"/courses/x", &[expired.as_bytes()]), 401),
        (auth(b"/courses/x", &[b"Authorization: Bearer\tabc"]), 401),
        (auth(b"/staff", &[learner.as_bytes()]), 403),
        (auth(b"/open/../staff", &[learner.as_bytes()]), 403),
        (request("GET", b"/_sidecar/auth", &[learner.as_bytes()]), 403),
        (auth(b"/open", &[b"X-Forwarded-Uri: /staff", learner.as_bytes()]), 403),
    ];
    for (bytes, status) in cases {
        let answer = raw(app.public, &bytes).await;
        answer.assert_problem(status, "");
        if status == 401 {
            assert!(answer.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{answer:?}");
        }
    }

    // No key set yet (Keycloak down from the start): 503 with Retry-After.
    let down = FakeKeycloak::start().await;
    down.set_mode(Mode::Fail);
    let waiting = TestApp::start(base_env(&down)).await;
    let bearer = format!("Authorization: Bearer {}", down.token().sign());
    let answer = raw(waiting.public, &auth(b"/", &[bearer.as_bytes()])).await;
    answer.assert_problem(503, "");
    assert!(
        answer.header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s > 0)),
        "{answer:?}"
    );
}
