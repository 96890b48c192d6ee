//! [`Receiver`]: a webhook receiver that records every `POST` it gets — its `webhook-id`, the
//! CloudEvent's `sequence`, the order of arrival and whether it was acknowledged — and counts
//! requests in flight, so a test can prove that delivery is ordered, at least once, and never
//! concurrent. It answers as told ([`Answer`]): at once, slowly, holding the request open until
//! released, or with an error status.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use tokio::sync::watch;

use super::ServerTask;

/// How the receiver answers the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 204 at once.
    Ack,
    /// 204 after this long (widens the window in which a second request could overlap).
    Slowly(Duration),
    /// Keeps every request open until the answer is changed, then answers the new way.
    Hold,
    /// This status at once.
    Fail(u16),
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub webhook_id: String,
    /// The CloudEvent's `sequence`, as a number.
    pub sequence: i64,
    /// The body (one CloudEvent).
    pub event: Value,
    /// Whether the receiver answered 2xx (false while held, when failed, or when the sender
    /// hung up first).
    pub acked: bool,
}

struct Shared {
    arrivals: Mutex<Vec<Arrival>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    answer: watch::Sender<Answer>,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _task: ServerTask,
}

/// Decrements the in-flight count however the request ends (answered, or dropped because the
/// sender hung up or was killed).
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Receiver {
    /// Starts on `127.0.0.1:0`, answering `Ack`.
    pub async fn start() -> Receiver {
        let shared = Arc::new(Shared {
            arrivals: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            answer: watch::Sender::new(Answer::Ack),
        });
        let router = Router::new().route("/hook", post(receive)).with_state(shared.clone());
        let (addr, task) = super::serve(router).await;
        Receiver { addr, shared, _task: task }
    }

    /// The webhook URL.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// How to answer from now on (held requests are answered this way too).
    pub fn answer(&self, answer: Answer) {
        self.shared.answer.send_replace(answer);
    }

    /// Every request so far, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.shared.arrivals.lock().unwrap().clone()
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests ever open at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// The `webhook-id`s acknowledged, in order, each once (a repeat is the same id again).
    pub fn acked_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for a in self.arrivals().into_iter().filter(|a| a.acked) {
            if !ids.contains(&a.webhook_id) {
                ids.push(a.webhook_id);
            }
        }
        ids
    }

    /// Waits until `check` holds for the arrivals (panics with them after `within`).
    pub async fn wait_for(&self, within: Duration, what: &str, check: impl Fn(&[Arrival]) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrivals = self.arrivals();
            if check(&arrivals) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {within:?}; arrivals: {:?}",
                arrivals.iter().map(|a| (&a.webhook_id, a.sequence, a.acked)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(shared.clone());
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let sequence = event["sequence"].as_str().and_then(|s| s.parse().ok()).unwrap_or(-1);
    let webhook_id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let index = {
        let mut arrivals = shared.arrivals.lock().unwrap();
        arrivals.push(Arrival { webhook_id, sequence, event, acked: false });
        arrivals.len() - 1
    };
    let mut answer = shared.answer.subscribe();
    let status = loop {
        let current = *answer.borrow_and_update();
        match current {
            Answer::Ack => break StatusCode::NO_CONTENT,
            Answer::Slowly(delay) => {
                tokio::time::sleep(delay).await;
                break StatusCode::NO_CONTENT;
            }
            Answer::Fail(status) => break StatusCode::from_u16(status).unwrap(),
            Answer::Hold => {
                // Wakes when the test changes the answer; dropped with the connection when the
                // sender goes away first.
                if answer.changed().await.is_err() {
                    break StatusCode::SERVICE_UNAVAILABLE;
                }
            }
        }
    };
    // Marked before the answer leaves: by the time the sender sees 2xx, the record says so.
    shared.arrivals.lock().unwrap()[index].acked = status.is_success();
    status
}
