//! Hostile HTTP on the public port, over raw TCP: oversized heads, too many headers,
//! conflicting framing, slow headers, non-ASCII credentials, very long paths. Each gets a
//! clean 4xx (or a closed connection) and nothing reaches the upstream.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::{EchoUpstream, FakeKeycloak, TestApp, base_env, set};

async fn proxy_app(kc: &FakeKeycloak, upstream: &EchoUpstream) -> TestApp {
    let mut env = base_env(kc);
    set(&mut env, "SIDECAR__UPSTREAM__URL", upstream.url());
    set(&mut env, "SIDECAR__SERVER__HEADER_READ_TIMEOUT_SECS", "1");
    TestApp::spawn_with(env).await
}

/// Sends raw bytes and returns the status code of the answer (0 when the connection closed
/// without one), reading at most 5 s.
async fn raw(app: &TestApp, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(app.public).await.unwrap();
    // A server may answer and close before reading everything; a failed write is fine.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn hostile_requests_get_a_clean_4xx_and_never_reach_the_upstream() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await;

    let huge_header = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024));
    assert_eq!(raw(&app, huge_header.as_bytes()).await, 431, "oversized header");

    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(raw(&app, many.as_bytes()).await, 431, "too many headers");

    let two_lengths = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde";
    assert_eq!(raw(&app, two_lengths).await, 400, "conflicting Content-Length");

    let long_path = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "p".repeat(100 * 1024));
    let status = raw(&app, long_path.as_bytes()).await;
    assert!(status == 414 || status == 431, "very long path: {status}");

    let mut bad_auth = b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \xff\xfe\xfd\r\n\r\n".to_vec();
    assert_eq!(raw(&app, &bad_auth).await, 401, "non-ASCII credentials are a bad token, not anonymous");
    bad_auth.clear();

    let dotdot = b"GET /a/%2e%2e/b HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(raw(&app, dotdot).await, 400, "dot-dot path");

    assert_eq!(upstream.request_count(), 0, "a hostile request reached the upstream");

    // Content-Length with Transfer-Encoding: hyper frames by Transfer-Encoding alone and drops
    // the length (RFC 9112 §6.1), so the smuggled second request stays body bytes of the
    // first and never becomes a request of its own at the upstream.
    let inner = "GET /smuggled HTTP/1.1\r\nHost: a\r\nX-A: bcdefgh\r\n\r\n";
    let head = "POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
    let smuggle = format!("{head}{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len());
    assert_eq!(raw(&app, smuggle.as_bytes()).await, 200);
    let seen: Vec<String> = upstream.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(seen, ["/first"], "the upstream saw {seen:?}");
    let first = upstream.last_request().unwrap();
    assert!(!first.headers.iter().any(|(n, v)| n == "content-length" && v == "4"), "{:?}", first.headers);
    // The sidecar still serves normal traffic.
    assert_eq!(raw(&app, b"GET /fine HTTP/1.1\r\nHost: a\r\n\r\n").await, 200);
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn a_client_that_sends_headers_slowly_is_cut_after_the_header_read_timeout() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = proxy_app(&kc, &upstream).await;
    let mut stream = TcpStream::connect(app.public).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    // The server answers 408 or simply closes; either way the read ends, well before 5 s.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the slow client was never cut");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    assert_eq!(upstream.request_count(), 0);
}
