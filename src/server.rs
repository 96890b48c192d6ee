//! The HTTP server loop for both ports: hyper-util's HTTP/1 + HTTP/2 connection builder with
//! limits `axum::serve` does not expose, graceful shutdown that lets in-flight requests finish,
//! upgrades (WebSockets through the proxy) and `ConnectInfo`.
//!
//! Connection limits (docs/contract.md §2 *(v2)* "Connections"), per listener:
//!
//! - **First request head.** A new connection must deliver a complete request head (HTTP/1)
//!   or its first request (HTTP/2) within `server.header_read_timeout_secs` of being accepted,
//!   or it is closed. This includes a connection that sends nothing at all: hyper-util reads
//!   the first bytes itself to choose HTTP/1 or HTTP/2, and hyper's own header timer only
//!   starts after that read, so without this a silent connection stayed open forever.
//! - **Idle keep-alive.** After a response has been sent in full, a connection with no request
//!   in flight may stay open `server.idle_timeout_secs`; its next request head must be complete
//!   within that time of the previous response's end. (hyper's HTTP/1 header-read timer also
//!   restarts whenever a connection goes idle, so it cannot tell "idle" from "slow head";
//!   our own per-connection watchdog does both and hyper's timer is only a backstop set
//!   beyond them.) Trickling the next head therefore buys no more time than idling would.
//!   HTTP/2 connections idle out the same way (GOAWAY, then closed).
//! - **Connection count.** At most `server.max_connections` connections are open at once;
//!   beyond that the accept loop waits and new connections queue in the kernel's backlog. A
//!   connection upgraded to a WebSocket keeps its slot until the socket closes.
//!   Accept errors (out of file descriptors) are logged at most once a second with the
//!   number of failures not logged.
//! - **Request bodies.** A request body that delivers nothing for
//!   `server.body_read_timeout_secs` while the sidecar waits for it fails; when no response
//!   was produced yet, the answer is a 408 problem whatever the handler made of the failure.
//!   A response already under way (a proxied stream) is cut instead.
//! - **Header limits.** More than `server.max_headers` header fields or a head larger than
//!   `server.max_header_bytes` is refused with 431 over HTTP/1 (by hyper) and HTTP/2 (the
//!   header list size by h2 — it answers 431 itself — and the count here), before any route.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, Version, header};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::config::ServerConfig;

/// Connection limits, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time from accept to the first complete request head.
    pub header_read_timeout: Duration,
    /// Time an idle keep-alive connection stays open.
    pub idle_timeout: Duration,
    /// Time a request body may deliver nothing while it is being read.
    pub body_read_timeout: Duration,
    /// Connections served at once per listener.
    pub max_connections: usize,
    /// More header fields than this: 431 (HTTP/1 by hyper, HTTP/2 here).
    pub max_headers: usize,
    /// hyper's HTTP/1 read buffer and the HTTP/2 header list size: 431 beyond it.
    pub max_header_bytes: usize,
}

impl Limits {
    pub fn from_config(server: &ServerConfig) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(server.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(server.idle_timeout_secs),
            body_read_timeout: Duration::from_secs(server.body_read_timeout_secs),
            max_connections: server.max_connections,
            max_headers: server.max_headers,
            // hyper's read buffer holds the request head; it cannot be smaller than 8 KiB.
            max_header_bytes: server.max_header_bytes.max(8192),
        }
    }
}

/// Serves `router` on `listener` until `stop` is cancelled, then waits for open connections
/// to finish their in-flight requests (the caller bounds that wait).
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, stop: CancellationToken) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A backstop only: the connection watchdog closes earlier (see the module docs).
        .header_read_timeout(limits.header_read_timeout + limits.idle_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(limits.max_header_bytes as u32);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Every connection task holds a sender; when all are gone, every connection is closed.
    let (open, mut all_closed) = mpsc::channel::<Infallible>(1);
    let mut accept_errors = AcceptErrors::default();
    loop {
        // Waiting for a slot before accepting leaves further connections in the backlog.
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_errors.record(&e, std::time::Instant::now());
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let io = Counted { stream, _slot: slot };
        let connection = serve_connection(builder.clone(), io, peer, router.clone(), limits, stop.clone());
        let open = open.clone();
        tokio::spawn(async move {
            connection.await;
            drop(open);
        });
    }
    drop(listener);
    drop(open);
    let _ = all_closed.recv().await;
}

/// Serves one connection until it ends, idles out, or the server stops.
async fn serve_connection(
    builder: Arc<Builder<TokioExecutor>>,
    io: Counted,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = activity.clone();
        service_fn(move |req: Request<Incoming>| {
            let in_flight = InFlight::begin(&activity, req.version());
            handle(router.clone(), req, peer, limits, in_flight)
        })
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
    let mut connection = pin!(connection);
    tokio::select! {
        // Resets, timeouts and protocol errors are the client's business.
        _ = connection.as_mut() => return,
        _ = activity.idle_out(limits) => {
            // Nothing is in flight. HTTP/1 has nothing to say before closing; HTTP/2 sends
            // GOAWAY, and gets a bounded time to do so.
            if activity.http2.load(Ordering::Acquire) {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(limits.header_read_timeout, connection).await;
            }
            return;
        }
        _ = stop.cancelled() => {}
    }
    // Shutting down: an idle HTTP/1 connection (or one still sending its head) is closed at
    // once; otherwise in-flight requests finish first.
    if activity.in_flight.load(Ordering::Acquire) == 0 && !activity.http2.load(Ordering::Acquire) {
        return;
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// One request: header count check (HTTP/2; hyper does it for HTTP/1), the body stall
/// timeout, the router, and the 408 when the body stalled before an answer was made.
async fn handle(
    router: Router,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    limits: Limits,
    in_flight: InFlight,
) -> Result<Response<Guarded>, Infallible> {
    if req.headers().len() > limits.max_headers {
        let response = crate::error::problem(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Some("The request has too many header fields."),
            &[],
        );
        return Ok(response.map(|body| Guarded { body, _in_flight: in_flight }));
    }
    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
    let version = req.version();
    // A body already complete (a GET) needs no timer.
    let mut stalled = None;
    let req = req.map(|body| {
        if http_body::Body::is_end_stream(&body) {
            Body::new(body)
        } else {
            let flag = Arc::new(AtomicBool::new(false));
            stalled = Some(flag.clone());
            Body::new(StallTimeout::new(body, limits.body_read_timeout, flag))
        }
    });
    let mut response = router.oneshot(req).await.unwrap_or_else(|never| match never {});
    if stalled.is_some_and(|flag| flag.load(Ordering::Acquire)) {
        // Whatever the handler made of the failed read (axum's 400, the proxy's), the client
        // is at fault and nothing was answered yet.
        let request_id = response.headers().get("x-request-id").cloned();
        response = crate::error::problem(
            StatusCode::REQUEST_TIMEOUT,
            Some("The request body stopped arriving (server.body_read_timeout_secs)."),
            &[],
        );
        if version <= Version::HTTP_11 {
            // The rest of the body may still come; the connection cannot be reused.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(id) = request_id {
            response.headers_mut().insert("x-request-id", id);
        }
    }
    Ok(response.map(|body| Guarded { body, _in_flight: in_flight }))
}

/// What the idle watchdog knows of one connection.
struct Activity {
    origin: Instant,
    /// Requests whose response has not been sent in full.
    in_flight: AtomicUsize,
    /// Milliseconds after `origin` when the connection last became idle (accepted, or a
    /// response finished).
    idle_since_ms: AtomicU64,
    /// A request head has been received: idle time is now bounded by `idle_timeout`.
    served: AtomicBool,
    http2: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
            http2: AtomicBool::new(false),
        }
    }

    /// Completes once the connection has had nothing in flight for its limit: the header
    /// read timeout before the first request, the idle timeout after.
    async fn idle_out(&self, limits: Limits) {
        loop {
            let limit = if self.served.load(Ordering::Acquire) {
                limits.idle_timeout
            } else {
                limits.header_read_timeout
            };
            if self.in_flight.load(Ordering::Acquire) > 0 {
                // Checked again later rather than woken: one timer per busy connection and
                // limit, and nothing on the request path.
                tokio::time::sleep(limit).await;
                continue;
            }
            let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
            let deadline = self.origin + since + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A request in flight on its connection; dropped when its response body is done (or the
/// request is abandoned).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>, version: Version) -> InFlight {
        if version == Version::HTTP_2 {
            activity.http2.store(true, Ordering::Release);
        }
        activity.served.store(true, Ordering::Release);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let elapsed = u64::try_from(self.0.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Stored before the count drops, so a watchdog that sees zero sees this time.
        self.0.idle_since_ms.fetch_max(elapsed, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until hyper drops it.
pub struct Guarded {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The error a stalled request body fails with.
#[derive(Debug)]
pub struct BodyStalled;

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body stopped arriving")
    }
}

impl std::error::Error for BodyStalled {}

/// Whether `error` (or anything it wraps) is a stalled request body.
pub fn is_body_stall(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<BodyStalled>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// A request body that fails with [`BodyStalled`] when, while it is being read, no frame
/// arrives for `timeout`. Hand-written rather than tower-http's `TimeoutBody`: that one drops
/// the exact `size_hint` (the proxy would send chunks instead of `Content-Length`) and does
/// not tell the server loop that it fired, which the 408 needs.
struct StallTimeout {
    inner: Incoming,
    timeout: Duration,
    /// Runs only while the body is waiting for the client (not while nobody reads it).
    sleep: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    fired: Arc<AtomicBool>,
}

impl StallTimeout {
    fn new(inner: Incoming, timeout: Duration, fired: Arc<AtomicBool>) -> StallTimeout {
        StallTimeout { inner, timeout, sleep: None, waiting: false, fired }
    }
}

impl http_body::Body for StallTimeout {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting = false;
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = Instant::now() + this.timeout;
        let sleep = match &mut this.sleep {
            Some(sleep) => {
                if !this.waiting {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => this.sleep.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        this.waiting = true;
        if sleep.as_mut().poll(cx).is_ready() {
            this.fired.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(Box::new(BodyStalled))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The accepted socket, holding its connection slot until it is closed — also after an
/// upgrade, when hyper hands the socket to the WebSocket tunnel.
struct Counted {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Logs accept failures at most once a second, with the number left unlogged since: a
/// process out of file descriptors fails every accept, and logging each one made thousands
/// of lines a second. Hand-written: a rate-limiting crate would be more than these lines.
#[derive(Debug, Default)]
struct AcceptErrors {
    last_logged: Option<std::time::Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    /// Records one failure; returns the number of unlogged failures it reports when it logs.
    fn record(&mut self, error: &io::Error, now: std::time::Instant) -> Option<u64> {
        if self.last_logged.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.suppressed += 1;
            return None;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        self.last_logged = Some(now);
        tracing::warn!(error = %error, suppressed, "accept failed (suppressed: failures not logged in the last second)");
        Some(suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_accept_errors_is_logged_once_a_second_with_the_count_left_out() {
        let mut errors = AcceptErrors::default();
        let e = io::Error::from_raw_os_error(24); // EMFILE
        let t0 = std::time::Instant::now();
        assert_eq!(errors.record(&e, t0), Some(0));
        for i in 1..=999 {
            assert_eq!(errors.record(&e, t0 + Duration::from_micros(i * 900)), None);
        }
        assert_eq!(errors.record(&e, t0 + Duration::from_secs(1)), Some(999));
        assert_eq!(errors.record(&e, t0 + Duration::from_millis(1500)), None);
        assert_eq!(errors.record(&e, t0 + Duration::from_millis(2001)), Some(1));
    }
}
