//! Connection limits over raw sockets (docs/contract.md §2 *(v2)* "Connections"): a silent connection is
//! closed after the header read timeout, a keep-alive connection lives its idle timeout, at
//! most `server.max_connections` are served at once, a stalled request body ends in 408, and
//! HTTP/2 has HTTP/1's header limits. Timing bounds are generous: this machine is busy.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::{
    ADMIN_TOKEN, EchoUpstream, FakeKeycloak, HangingServer, TestApp, base_env, set, with_admin_token,
};

/// An app with small connection timeouts: header 1 s, idle 3 s, body 1 s.
async fn app_with(kc: &FakeKeycloak, upstream: Option<&EchoUpstream>, extra: &[(&str, &str)]) -> TestApp {
    let mut env = base_env(kc);
    with_admin_token(&mut env);
    set(&mut env, "SIDECAR__SERVER__HEADER_READ_TIMEOUT_SECS", "1");
    set(&mut env, "SIDECAR__SERVER__IDLE_TIMEOUT_SECS", "3");
    set(&mut env, "SIDECAR__SERVER__BODY_READ_TIMEOUT_SECS", "1");
    if let Some(upstream) = upstream {
        set(&mut env, "SIDECAR__UPSTREAM__URL", upstream.url());
    }
    for (k, v) in extra {
        set(&mut env, k, *v);
    }
    TestApp::spawn_with(env).await
}

/// Waits until the server closes `stream` (EOF or reset), at most `within`; returns how long
/// that took, or `None` when it stayed open.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|()| started.elapsed())
}

/// Reads one HTTP/1.1 response (head, then a `Content-Length` body) and returns its status
/// and head; 0 when the connection closed first.
async fn read_response(stream: &mut TcpStream, within: Duration) -> (u16, String) {
    let mut data = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if data.len() >= end + 4 + length {
                    return;
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => data.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&data).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(read.is_ok() || status != 0, "no response within {within:?}");
    (status, text)
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    let kc = FakeKeycloak::start().await;
    let app = app_with(&kc, None, &[]).await;
    let mut stream = TcpStream::connect(app.public).await.unwrap();
    let started = Instant::now();
    let closed = closed_within(&mut stream, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "a silent connection stayed open");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "closed before the timeout: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
}

#[tokio::test]
async fn a_keep_alive_connection_is_usable_while_idle_and_closed_after_the_idle_timeout() {
    let kc = FakeKeycloak::start().await;
    let app = app_with(&kc, None, &[]).await;
    let mut stream = TcpStream::connect(app.admin).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
    stream.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut stream, Duration::from_secs(5)).await.0, 200);

    // Idle for longer than the header read timeout (1 s), shorter than the idle timeout (3 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    stream.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut stream, Duration::from_secs(5)).await.0, 200, "idle connection was closed");

    let idle = closed_within(&mut stream, Duration::from_secs(15)).await;
    let idle = idle.expect("an idle keep-alive connection stayed open past the idle timeout");
    assert!(idle >= Duration::from_millis(2500), "closed before the idle timeout: {idle:?}");
    assert!(idle < Duration::from_secs(9), "{idle:?}");
}

#[tokio::test]
async fn beyond_max_connections_a_new_connection_is_served_only_when_another_closes() {
    let kc = FakeKeycloak::start().await;
    // Long header timeout: the two silent connections must hold their slots.
    let app = app_with(
        &kc,
        None,
        &[("SIDECAR__SERVER__MAX_CONNECTIONS", "2"), ("SIDECAR__SERVER__HEADER_READ_TIMEOUT_SECS", "60")],
    )
    .await;
    let first = TcpStream::connect(app.public).await.unwrap();
    let _second = TcpStream::connect(app.public).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut third = TcpStream::connect(app.public).await.unwrap();
    third.write_all(b"GET /_sidecar/auth HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(1500), third.read(&mut buf)).await;
    assert!(early.is_err(), "a third connection was served while two were open: {early:?}");

    drop(first);
    let (status, _) = read_response(&mut third, Duration::from_secs(10)).await;
    assert_ne!(status, 0, "the third connection was not served after one closed");
}

#[tokio::test]
async fn a_stalled_admin_request_body_is_answered_408() {
    let kc = FakeKeycloak::start().await;
    let app = app_with(&kc, None, &[]).await;
    let mut stream = TcpStream::connect(app.admin).await.unwrap();
    let head = format!(
        "POST /admin/v1/organizations HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"key\":\"a"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (status, text) = read_response(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(status, 408, "{text}");
    assert!(text.to_ascii_lowercase().contains("application/problem+json"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    let store = app.store().await;
    let mut conn = store.conn().await.unwrap();
    let orgs = identity_sidecar::store::organizations::count(&mut conn).await.unwrap();
    assert_eq!(orgs, 0, "a stalled request changed something");
}

#[tokio::test]
async fn a_stalled_proxied_request_body_is_answered_408_not_504() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = app_with(&kc, Some(&upstream), &[("SIDECAR__UPSTREAM__TIMEOUT_SECS", "1")]).await;
    let mut stream = TcpStream::connect(app.public).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let (status, text) = read_response(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(status, 408, "{text}");
}

#[tokio::test]
async fn an_upstream_that_never_answers_a_complete_body_is_still_a_504() {
    let kc = FakeKeycloak::start().await;
    let mut env = base_env(&kc);
    let hanging = HangingServer::start().await;
    set(&mut env, "SIDECAR__UPSTREAM__URL", hanging.url());
    set(&mut env, "SIDECAR__UPSTREAM__TIMEOUT_SECS", "1");
    set(&mut env, "SIDECAR__SERVER__BODY_READ_TIMEOUT_SECS", "30");
    let app = TestApp::spawn_with(env).await;
    let mut stream = TcpStream::connect(app.public).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789")
        .await
        .unwrap();
    let (status, text) = read_response(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(status, 504, "the client sent everything; the wait is the upstream's: {text}");
}

#[tokio::test]
async fn a_slow_but_moving_proxied_body_is_not_cut() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = app_with(&kc, Some(&upstream), &[]).await;
    let mut stream = TcpStream::connect(app.public).await.unwrap();
    stream.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\n\r\n").await.unwrap();
    // 5 chunks, 400 ms apart: 2 s in all, never 1 s (the body timeout) without a byte.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        stream.write_all(b"0123456789").await.unwrap();
    }
    let (status, text) = read_response(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"body_len\":50"), "{text}");
}

#[tokio::test]
async fn http2_requests_with_too_many_headers_are_refused_431_before_any_route() {
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = app_with(&kc, Some(&upstream), &[("SIDECAR__SERVER__HEADER_READ_TIMEOUT_SECS", "10")]).await;
    let io = TokioIo::new(TcpStream::connect(app.public).await.unwrap());
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake::<_, _, Empty<bytes::Bytes>>(TokioExecutor::new(), io)
            .await
            .expect("h2c prior-knowledge handshake");
    tokio::spawn(connection);

    let request = |headers: usize| {
        let mut builder = http::Request::get(format!("http://{}/page", app.public));
        for i in 0..headers {
            builder = builder.header(format!("x-h{i}"), "v");
        }
        builder.body(Empty::new()).unwrap()
    };
    let fine = sender.send_request(request(5)).await.unwrap();
    assert_eq!(fine.status(), 200);
    let _ = fine.into_body().collect().await;
    assert_eq!(upstream.request_count(), 1);

    let refused = sender.send_request(request(150)).await.unwrap();
    assert_eq!(refused.status(), 431);
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    assert_eq!(upstream.request_count(), 1, "a request with 150 headers reached the upstream");

    // The header list size limit (max_header_bytes) holds too; h2 itself answers 431.
    let mut big = http::Request::get(format!("http://{}/page", app.public));
    big = big.header("x-big", "a".repeat(100 * 1024));
    let big = sender.send_request(big.body(Empty::new()).unwrap()).await;
    assert!(big.as_ref().is_ok_and(|r| r.status() == 431) || big.is_err(), "{big:?}");
    assert_eq!(upstream.request_count(), 1, "an oversized head reached the upstream");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let kc = FakeKeycloak::start().await;
    let app = app_with(&kc, None, &[]).await;
    let io = TokioIo::new(TcpStream::connect(app.admin).await.unwrap());
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake::<_, _, Empty<bytes::Bytes>>(TokioExecutor::new(), io)
            .await
            .expect("h2c prior-knowledge handshake");
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/healthz", app.admin)).body(Empty::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await;
    let idle_from = Instant::now();

    // GOAWAY, then the connection ends: after the idle timeout (3 s), not the header one (1 s).
    let ended = tokio::time::timeout(Duration::from_secs(15), connection).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open");
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(2500), "closed before the idle timeout: {idle:?}");
}
