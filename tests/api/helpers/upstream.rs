//! The app behind the sidecar, as seen by tests: an echo server that reports exactly what it
//! received, plus servers that refuse, reset or never answer.
//!
//! Any path answers `200` with JSON `{method, path, query, version, headers, body_len,
//! body_sha256}`; `headers` lists every received header as `[name, value]` in arrival order
//! (names lower-case; repeated names are grouped at their first position, as `http::HeaderMap`
//! keeps them). The request body is hashed as it streams in, never buffered. Paths under
//! `/_test/` misbehave on purpose:
//!
//! | path | behaviour |
//! |---|---|
//! | `/_test/big?bytes=N[&chunked=1]` | N bytes of [`big_body`] generated on the fly (`Content-Length` unless `chunked=1`) |
//! | `/_test/slow-chunks?n=5&ms=200` | `n` chunks `chunk <i>\n`, `ms` apart, the first at once |
//! | `/_test/delay-headers?ms=M` | sleeps `M` ms, then echoes |
//! | `/_test/status/{code}` | echoes with that status (no body for 204/304) |
//! | `/_test/ws[?hello=1]` | WebSocket echo (text → text, binary → binary); `hello=1` first sends the handshake's echo JSON |
//! | `/_test/hop` | echoes, with hop-by-hop response headers that must not reach the client |
//!
//! Every request (WebSocket handshakes too) is also recorded: [`EchoUpstream::requests`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::digest::{self, SHA256};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ServerTask, bind, serve};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// `[name, value]` in arrival order, names lower-case.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        first_header(&self.headers, name)
    }

    /// Every value of header `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        all_headers(&self.headers, name)
    }
}

/// The echo JSON, parsed.
#[derive(Debug, Clone, Deserialize)]
pub struct Echo {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub version: String,
    /// `[name, value]` in arrival order, names lower-case.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sha256: String,
}

impl Echo {
    /// Parse the echo body of a response (panics with the body when it is not an echo).
    pub async fn from_response(res: reqwest::Response) -> Echo {
        let status = res.status();
        let text = res.text().await.expect("response body");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not an echo ({status}): {e}: {text}"))
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        first_header(&self.headers, name)
    }

    /// Every value of header `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        all_headers(&self.headers, name)
    }

    /// The names of all received headers, lower-case, in arrival order.
    pub fn header_names(&self) -> Vec<&str> {
        self.headers.iter().map(|(n, _)| n.as_str()).collect()
    }
}

fn first_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn all_headers<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
}

/// The bytes `/_test/big?bytes=n` sends: `i % 251` at offset `i` (a prime period, so a
/// dropped or repeated chunk changes the hash).
pub fn big_body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Lower-case hex SHA-256, the form of `body_sha256`. Hashing uses aws-lc (native code even
/// in a debug build): the `sha2` crate does about 15 MB/s unoptimised, which made a 50 MB body
/// cost seconds of CPU on each side of a test.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&SHA256, bytes))
}

/// A running echo upstream. Cheap to clone; stops when the last clone is dropped.
#[derive(Clone)]
pub struct EchoUpstream {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<RecordedRequest>>>,
    server: Arc<ServerTask>,
}

impl EchoUpstream {
    pub async fn start() -> EchoUpstream {
        let log = Arc::new(Mutex::new(Vec::new()));
        let router = Router::new()
            .route("/_test/big", any(big))
            .route("/_test/slow-chunks", any(slow_chunks))
            .route("/_test/delay-headers", any(delay_headers))
            .route("/_test/status/{code}", any(status))
            .route("/_test/ws", get(ws))
            .route("/_test/hop", any(hop))
            .fallback(echo)
            .layer(middleware::from_fn_with_state(log.clone(), record))
            // The echo streams bodies of any size; the limit would only bite extractors anyway.
            .layer(DefaultBodyLimit::disable());
        let (addr, server) = serve(router).await;
        EchoUpstream { addr, log, server: Arc::new(server) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` — what `upstream.url` takes.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The most recent request.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).last().cloned()
    }

    /// How many requests arrived.
    pub fn request_count(&self) -> usize {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Stop: the port refuses connections and open HTTP connections are cut (upgraded
    /// WebSocket sessions run on their own tasks and end with the test's runtime).
    pub fn stop(&self) {
        self.server.stop();
    }
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect()
}

async fn record(State(log): State<Arc<Mutex<Vec<RecordedRequest>>>>, req: Request, next: Next) -> Response {
    let entry = RecordedRequest {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        headers: header_pairs(req.headers()),
    };
    log.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
    next.run(req).await
}

fn echo_json(parts: &Parts, body_len: u64, body_sha256: String) -> Value {
    json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": header_pairs(&parts.headers),
        "body_len": body_len,
        "body_sha256": body_sha256,
    })
}

/// Reads the request body chunk by chunk into a running hash; answers the echo JSON.
async fn echo_value(req: Request) -> Result<Value, Response> {
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut hasher = digest::Context::new(&SHA256);
    let mut len = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            (StatusCode::BAD_REQUEST, axum::Json(json!({"error": format!("body: {e}")}))).into_response()
        })?;
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok(echo_json(&parts, len, hex::encode(hasher.finish())))
}

async fn echo(req: Request) -> Response {
    match echo_value(req).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(res) => res,
    }
}

#[derive(Deserialize)]
struct BigQuery {
    bytes: usize,
    #[serde(default)]
    chunked: Option<u8>,
}

async fn big(Query(q): Query<BigQuery>) -> Response {
    const CHUNK: usize = 64 * 1024;
    let total = q.bytes;
    let stream = futures_util::stream::unfold(0usize, move |sent| async move {
        if sent >= total {
            return None;
        }
        let n = CHUNK.min(total - sent);
        let chunk: Vec<u8> = (sent..sent + n).map(|i| (i % 251) as u8).collect();
        Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), sent + n))
    });
    let mut res = Body::from_stream(stream).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if q.chunked.unwrap_or(0) == 0 {
        res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    }
    res
}

#[derive(Deserialize)]
struct SlowQuery {
    #[serde(default = "five")]
    n: usize,
    #[serde(default = "two_hundred")]
    ms: u64,
}

fn five() -> usize {
    5
}

fn two_hundred() -> u64 {
    200
}

async fn slow_chunks(Query(q): Query<SlowQuery>) -> Response {
    let delay = Duration::from_millis(q.ms);
    let stream = futures_util::stream::unfold(0usize, move |i| async move {
        if i >= q.n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(delay).await;
        }
        Some((Ok::<_, std::io::Error>(Bytes::from(format!("chunk {i}\n"))), i + 1))
    });
    ([(header::CONTENT_TYPE, "text/plain")], Body::from_stream(stream)).into_response()
}

#[derive(Deserialize)]
struct DelayQuery {
    #[serde(default)]
    ms: u64,
}

async fn delay_headers(Query(q): Query<DelayQuery>, req: Request) -> Response {
    tokio::time::sleep(Duration::from_millis(q.ms)).await;
    echo(req).await
}

async fn status(Path(code): Path<u16>, req: Request) -> Response {
    let Some(status) = (200..=599).contains(&code).then(|| StatusCode::from_u16(code).ok()).flatten() else {
        return (StatusCode::BAD_REQUEST, "status must be 200..=599").into_response();
    };
    let mut res = echo(req).await;
    if matches!(code, 204 | 304) {
        res = Response::new(Body::empty());
    }
    *res.status_mut() = status;
    res
}

#[derive(Deserialize)]
struct WsQuery {
    #[serde(default)]
    hello: Option<u8>,
}

async fn ws(Query(q): Query<WsQuery>, upgrade: WebSocketUpgrade, headers: HeaderMap) -> Response {
    let hello = (q.hello.unwrap_or(0) != 0)
        .then(|| json!({"path": "/_test/ws", "headers": header_pairs(&headers)}).to_string());
    upgrade.on_upgrade(move |socket| ws_echo(socket, hello))
}

async fn ws_echo(mut socket: WebSocket, hello: Option<String>) {
    if let Some(hello) = hello
        && socket.send(Message::Text(hello.into())).await.is_err()
    {
        return;
    }
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            Message::Text(t) => Message::Text(t),
            Message::Binary(b) => Message::Binary(b),
            Message::Close(_) => break,
            // Pings are answered by the library; pongs need nothing.
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

/// The hop-by-hop response headers `/_test/hop` sends, plus one end-to-end header that must
/// arrive (`x-end-to-end`).
pub const HOP_RESPONSE_HEADERS: &[(&str, &str)] = &[
    ("connection", "x-custom"),
    ("x-custom", "hop-only"),
    ("keep-alive", "timeout=5, max=100"),
    ("proxy-authenticate", "Basic realm=\"upstream\""),
    ("proxy-connection", "keep-alive"),
    ("transfer-encoding", "chunked"),
    ("x-end-to-end", "kept"),
];

async fn hop(req: Request) -> Response {
    let body = match echo_value(req).await {
        Ok(v) => v.to_string(),
        Err(res) => return res,
    };
    // A one-chunk stream: no Content-Length, so the chunked coding really applies.
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(body)) });
    let mut res = Body::from_stream(stream).into_response();
    for (name, value) in HOP_RESPONSE_HEADERS {
        res.headers_mut().insert(*name, HeaderValue::from_static(value));
    }
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// A loopback port nothing listens on (bound, then released; another process could take it
/// in between, which is unlikely enough for tests).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Accepts TCP connections and never answers (nor closes them until dropped).
pub struct HangingServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    _task: ServerTask,
}

impl HangingServer {
    pub async fn start() -> HangingServer {
        let listener = bind().await;
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                open.push(stream);
            }
        });
        HangingServer { addr, accepted, _task: ServerTask(task.abort_handle()) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Accepts TCP connections and resets them (`SO_LINGER` 0, then close: the peer gets a RST,
/// not a FIN). Connections take turns: reset at once; reset after reading a few bytes of the
/// request; reset after writing a line that is not HTTP.
pub struct ResettingServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    _task: ServerTask,
}

impl ResettingServer {
    pub async fn start() -> ResettingServer {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = bind().await;
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                // Each connection on its own task: a slow reader must not hold up the accepts.
                tokio::spawn(async move {
                    let _ = stream.set_zero_linger();
                    match n % 3 {
                        0 => {}
                        1 => {
                            let mut first = [0u8; 16];
                            let read = stream.read(&mut first);
                            let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
                        }
                        _ => {
                            let _ = stream.write_all(b"NOT HTTP AT ALL\r\n").await;
                        }
                    }
                    drop(stream);
                });
            }
        });
        ResettingServer { addr, accepted, _task: ServerTask(task.abort_handle()) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted (and reset) so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}
