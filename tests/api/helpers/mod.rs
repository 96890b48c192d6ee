//! Test infrastructure shared by every integration test: the app fixture ([`Fixture`]), the
//! databases ([`databases`]), a fake Keycloak, token minting (well-formed and hostile), an echo
//! upstream and misbehaving servers.
//!
//! Everything listens on `127.0.0.1:0` and belongs to the test's own tokio runtime, so tests
//! run in parallel without sharing state. A server stops when the last handle to it is dropped
//! (or on `stop()`): its listener closes and every open connection is cut, which is what
//! "Keycloak went away" looks like to the sidecar's pooled HTTP client.
//!
//! # Use
//!
//! ```ignore
//! use crate::helpers::{Db, Echo, EchoUpstream, Fixture, KeyKind, Mode, TestApp, base_env, on_both_databases, set};
//! use serde_json::json;
//!
//! // Most files: the fixture — the real App on 127.0.0.1:0, a fresh fake Keycloak (realm
//! // "test", one RS256 key) as its issuer, the static admin token, and the database named.
//! async fn a_valid_token_passes_forward_auth(db: Db) {
//!     let f = Fixture::start_with(db, |_kc, env| set(env, "SIDECAR__SERVER__TRUSTED_PROXIES", "[]")).await;
//!     let token = f.kc.token().sub("u1").email("a@x.org").organization(json!(["acme"])).sign();
//!     assert_eq!(f.app.auth_status(&token).await, 200);
//!     let res = f.admin(reqwest::Method::GET, "/organizations").send().await.unwrap();
//!     assert_eq!(res.status(), 200);
//! }
//! on_both_databases!(a_valid_token_passes_forward_auth);   // on_sqlite:: and on_postgres::
//!
//! // Proxy mode: an echo upstream reports what it really received.
//! let upstream = EchoUpstream::start().await;
//! let mut env = base_env(&kc);
//! set(&mut env, "SIDECAR__UPSTREAM__URL", upstream.url());
//! let app = TestApp::spawn_with(env).await;
//! let echo = Echo::from_response(app.get("/hello").bearer_auth(&token).send().await.unwrap()).await;
//! assert_eq!(echo.header("x-identity-subject"), Some("u1"));
//!
//! // Hostile tokens, key rotation and Keycloak outages:
//! let claims = kc.token().sub("u1").claims();
//! let bad = [kc.attacks().alg_none(&claims), kc.attacks().hs256_with_public_key(&claims)];
//! let new_kid = kc.rotate(KeyKind::Es256);        // new default signer, old key still published
//! kc.set_mode(Mode::Fail);                        // discovery + JWKS answer 500
//! ```
//!
//! Failure injection elsewhere: [`closed_port`] (connection refused), [`HangingServer`]
//! (accepts, never answers), `EchoUpstream` paths under `/_test/` (slow headers, slow chunks,
//! big bodies, status codes, WebSocket echo, hop-by-hop response headers).

// These helpers are a library for many test files; not every item is used by every test yet.
#![allow(dead_code, reason = "shared test helpers; usage grows with the test suite")]

pub mod app;
pub mod binary;
pub mod databases;
pub mod fixture;
pub mod gateway;
pub mod keycloak;
pub mod keys;
pub mod otlp;
pub mod python;
pub mod receiver;
pub mod records;
pub mod tokens;
pub mod upstream;
pub mod webhooks;

// The short paths tests import; some are only named by tests the lead is still writing.
#[allow(unused_imports, reason = "re-exports for tests not written yet")]
pub use app::{ADMIN_TOKEN, TestApp, base_env, metric, set, use_database, with_admin_token};
pub(crate) use databases::on_both_databases;
#[allow(unused_imports, reason = "re-exports for tests not written yet")]
pub use databases::{Db, TestDatabase};
#[allow(unused_imports, reason = "re-exports for tests not written yet")]
pub use fixture::{Fixture, with_keycloak_admin};
#[allow(unused_imports, reason = "re-exports for tests not written yet")]
pub use keycloak::{FakeKeycloak, Kid, MembershipCall, Mode};
#[allow(unused_imports, reason = "re-exports for tests not written yet")]
pub use keys::KeyKind;
#[allow(unused_imports, reason = "re-exports for tests not written yet")]
pub use tokens::{Attacks, TokenBuilder};
#[allow(unused_imports, reason = "re-exports for tests not written yet")]
pub use upstream::{Echo, EchoUpstream, HangingServer, RecordedRequest, ResettingServer, closed_port};

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};
use tower::ServiceExt as _;

/// `VmRSS` of this process, in bytes (the test, the sidecar and its fakes together).
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kb * 1024
}

/// Tests that measure the process's memory take turns, so none sees another's buffers.
pub static MEMORY_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A server task that is aborted — with all of its connections — when this is dropped.
#[derive(Debug)]
pub struct ServerTask(AbortHandle);

impl ServerTask {
    /// Stop accepting and cut every open connection now.
    pub fn stop(&self) {
        self.0.abort();
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serve `router` over HTTP/1.1 (with upgrades, for WebSockets) on `127.0.0.1:0`.
///
/// Not `axum::serve`: its connection tasks outlive the accept loop, so a "stopped" server
/// would keep answering on pooled keep-alive connections. Here connections live in a
/// `JoinSet` owned by the accept task, and aborting that task closes them all.
pub async fn serve(router: Router) -> (SocketAddr, ServerTask) {
    let listener = bind().await;
    let addr = listener.local_addr().expect("local addr");
    (addr, serve_on(listener, router))
}

/// A listener on `127.0.0.1:0`.
pub async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0")
}

/// Like [`serve`], on a listener bound earlier (when the router needs to know its address).
pub fn serve_on(listener: TcpListener, router: Router) -> ServerTask {
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _peer)) = accepted else { continue };
                    let service = router
                        .clone()
                        .map_request(|req: hyper::Request<Incoming>| req.map(Body::new));
                    connections.spawn(async move {
                        // A client hanging up mid-request is normal in these tests.
                        // Room for more than hyper's default 100 header fields: the gateway
                        // tests forward 100+ filler headers to the echo app.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .max_headers(400)
                            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                            .with_upgrades()
                            .await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    ServerTask(task.abort_handle())
}
