//! A trace collector as tests see it: an OTLP/HTTP receiver accepting `POST /v1/traces` with
//! JSON bodies (the sidecar's `http-json` exporter), keeping every span it was sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;

use super::{ServerTask, serve};

/// One exported span, flattened out of its resource and scope.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub name: String,
    /// Lower-case hex, as OTLP/JSON writes ids.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// The span's `attributes` as sent (`[{key, value: {stringValue | intValue | …}}]`).
    pub attributes: Value,
    /// The resource's attributes (`service.name` among them).
    pub resource: Value,
}

impl ReceivedSpan {
    /// The string value of attribute `key`, if the span has it.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.as_array()?.iter().find(|a| a["key"] == key)?["value"]["stringValue"].as_str()
    }
}

/// What the receiver got: the request bodies as text, and their spans.
#[derive(Default)]
struct Received {
    bodies: Vec<String>,
    spans: Vec<ReceivedSpan>,
}

/// An OTLP/HTTP receiver on `127.0.0.1:0`; stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    _server: ServerTask,
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let received = Arc::new(Mutex::new(Received::default()));
        let router = Router::new().route("/v1/traces", post(traces)).with_state(received.clone());
        let (addr, server) = serve(router).await;
        OtlpReceiver { addr, received, _server: server }
    }

    /// The base URL, what `telemetry.otlp_endpoint` takes (`/v1/traces` is appended).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).spans.clone()
    }

    /// Every request body received so far, as text (for "never contains a token" checks).
    pub fn bodies(&self) -> Vec<String> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).bodies.clone()
    }

    /// Waits up to `within` for a span named `name`, then returns every span.
    pub async fn wait_for_span(&self, name: &str, within: Duration) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let spans = self.spans();
            if spans.iter().any(|s| s.name == name) || tokio::time::Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `POST /v1/traces`: an `ExportTraceServiceRequest` in OTLP/JSON; answers an empty
/// `ExportTraceServiceResponse` (full success).
async fn traces(State(received): State<Arc<Mutex<Received>>>, body: Bytes) -> (StatusCode, &'static str) {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "{}");
    };
    let mut received = received.lock().unwrap_or_else(|e| e.into_inner());
    received.bodies.push(String::from_utf8_lossy(&body).into_owned());
    for resource_spans in request["resourceSpans"].as_array().into_iter().flatten() {
        let resource = resource_spans["resource"]["attributes"].clone();
        for scope_spans in resource_spans["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope_spans["spans"].as_array().into_iter().flatten() {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_owned();
                received.spans.push(ReceivedSpan {
                    name: text("name"),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    attributes: span["attributes"].clone(),
                    resource: resource.clone(),
                });
            }
        }
    }
    (StatusCode::OK, "{}")
}
