//! Logging and tracing setup. Logs: JSON (containers) or pretty (terminals), filtered by
//! `log.level` (`RUST_LOG` wins when set, for one-off debugging); what of a request may be
//! logged ([`loggable_path`]) and the access-log line of a public request ([`access_log`]).
//! A request thread formats its line and hands it to a writer thread through a bounded queue
//! ([`LOG_QUEUE_LINES`]); the writer thread writes to stderr, so a slow log pipe does not
//! hold a request up while the queue has room. When it is full, requests wait for room: an
//! identity gate's access log is an audit trail, and a dropped line would be a silent hole
//! in it. The [`Logs`] guard flushes the queue when dropped; `main` keeps it to the end.
//! Traces (optional, off unless
//! `telemetry.otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set): the crate's `tracing`
//! spans at `info` and above become OpenTelemetry spans, exported over OTLP/HTTP with JSON
//! bodies by the SDK's batch processor on a thread of its own, so a slow collector never
//! holds up a request; [`Traces::shutdown`] exports what is still queued.
//!
//! W3C trace context: with traces on, a request's `traceparent` / `tracestate` continues the
//! trace ([`continue_trace`]) and the proxied request carries the sidecar's own upstream span
//! ([`inject_trace`]); with traces off both do nothing and the client's headers pass as they
//! came. A header from any peer is believed: it can only place this request in a trace its
//! sender chose. Its sampled flag is not obeyed: the sampler judges the trace id by
//! `telemetry.sample_ratio`.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, Registry};

use crate::config::{LogConfig, LogFormat, TelemetryConfig};

/// Whether spans are exported: set once by [`init_with_traces`]. [`continue_trace`] and
/// [`inject_trace`] read it, so a sidecar without traces never touches trace headers.
static TRACING: AtomicBool = AtomicBool::new(false);

/// The OTLP path a base endpoint gets, as `OTEL_EXPORTER_OTLP_ENDPOINT` does.
const TRACES_PATH: &str = "/v1/traces";

/// Log lines the writer thread's queue holds (about 300 bytes each as JSON, so a few MiB at
/// most): a second or more of lines at the benchmark's rates, for a log pipe that stalls
/// briefly. Beyond it, requests wait for the pipe (see the module comment).
pub const LOG_QUEUE_LINES: usize = 16_384;

/// The log writer thread of an installed subscriber. Dropping it writes the lines still
/// queued (waiting up to a second) and stops the thread; a line logged after that is lost,
/// so keep it until the process is about to exit.
#[must_use = "dropping it stops the log writer; keep it until the process exits"]
pub struct Logs {
    _writer: tracing_appender::non_blocking::WorkerGuard,
}

/// Installs the global subscriber, logs only. Called once by `main` for the short commands;
/// tests don't call it.
pub fn init(config: &LogConfig) -> anyhow::Result<Logs> {
    install(config, None)
}

/// Installs the global subscriber for `serve`: logs, and traces when an OTLP endpoint is
/// configured (`telemetry.otlp_endpoint`, else `OTEL_EXPORTER_OTLP_ENDPOINT`). Keep the
/// returned [`Traces`] and call [`Traces::shutdown`] after the app stopped, then drop
/// [`Logs`] (the shutdown may log).
pub fn init_with_traces(log: &LogConfig, telemetry: &TelemetryConfig) -> anyhow::Result<(Logs, Traces)> {
    let from_env = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()));
    if telemetry.otlp_endpoint.is_none() && !from_env {
        return Ok((install(log, None)?, Traces { provider: None }));
    }
    let provider = tracer_provider(telemetry)?;
    let logs = install(log, Some(&provider))?;
    TRACING.store(true, Ordering::Release);
    Ok((logs, Traces { provider: Some(provider) }))
}

/// The OTLP/HTTP exporter behind a batch processor. The configured endpoint wins over the
/// standard variables (which the exporter reads itself when none is configured).
fn tracer_provider(telemetry: &TelemetryConfig) -> anyhow::Result<SdkTracerProvider> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpJson);
    if let Some(base) = &telemetry.otlp_endpoint {
        exporter = exporter.with_endpoint(format!("{}{TRACES_PATH}", base.trim_end_matches('/')));
    }
    let exporter = exporter.build().map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(telemetry.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::TraceIdRatioBased(telemetry.sample_ratio))
        .with_resource(resource)
        .build())
}

fn install(config: &LogConfig, traces: Option<&SdkTracerProvider>) -> anyhow::Result<Logs> {
    let directives = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => v,
        _ => config.level.clone(),
    };
    let filter = EnvFilter::try_new(&directives)?;
    // Not lossy: a full queue makes the logging thread wait (see the module comment). The
    // writer thread flushes its buffer whenever the queue runs empty, so a line reaches stderr
    // as soon as the thread gets to it, and lines queued together leave in one write.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer.clone());
    let logs = match config.format {
        LogFormat::Json => {
            // Every line but the access line names the span it was written in (a warning
            // inside a request carries the request's id). The access line holds its request's
            // fields itself, so it is written without the span objects: writing the span
            // objects into every access line cost about half of the line (docs/benchmarks.md).
            let access = |m: &tracing::Metadata<'_>| m.target() == ACCESS_TARGET;
            let others = fmt
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_filter(filter.and(filter_fn(move |m| !access(m))));
            let access_lines = tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_filter(EnvFilter::try_new(&directives)?.and(filter_fn(access)));
            others.and_then(access_lines).boxed()
        }
        LogFormat::Pretty => fmt.with_filter(filter).boxed(),
    };
    // The crate's own spans only, whatever the log level: a request, its JWKS fetch,
    // reconciliation, transactions and upstream call, not every span of the libraries below.
    let otel = traces.map(|provider| {
        let targets = Targets::new().with_target(env!("CARGO_CRATE_NAME"), LevelFilter::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(env!("CARGO_CRATE_NAME")))
            .with_filter(targets)
    });
    Registry::default()
        .with(logs)
        .with(otel)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
    Ok(Logs { _writer: guard })
}

/// The trace exporter of a running `serve`; without an endpoint it holds nothing.
#[must_use = "call `shutdown` after the app stopped, or queued spans are lost"]
pub struct Traces {
    provider: Option<SdkTracerProvider>,
}

impl Traces {
    /// Exports the spans still queued and stops the exporter. Blocks until the collector
    /// answered or the exporter's timeout ran out: call it off the async threads.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "traces: the last spans could not be exported");
        }
    }
}

/// With traces on, makes `span` (a request's span) continue the trace the peer's
/// `traceparent` / `tracestate` names; otherwise does nothing.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    if !TRACING.load(Ordering::Acquire) {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // Fails only when no OpenTelemetry layer is installed, which TRACING rules out.
    let _ = span.set_parent(parent);
}

/// With traces on, replaces `traceparent` / `tracestate` in `headers` (a request about to
/// leave) with `span`'s, so the next service's spans hang under it; otherwise leaves the
/// headers as they are.
pub fn inject_trace(span: &tracing::Span, headers: &mut HeaderMap) {
    if !TRACING.load(Ordering::Acquire) {
        return;
    }
    headers.remove("traceparent");
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

/// A request path safe to log: a code is a bearer credential, so the segment after
/// `/enrollment-codes/` (public redemption) and after `/admin/v1/codes/` (admin revocation) is
/// replaced by `{code}`. `…/enrollment-codes/redeem` (the code is in the body) and
/// `/admin/v1/contracts/{key}/codes` (no code in the path) stay as they are. A manager's
/// revocation (`…/manage/organizations/{org}/codes/{code}`) is masked the same way.
pub fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    if let Some(masked) = managed_code_path(path) {
        return masked.into();
    }
    for (mark, keep) in [("/enrollment-codes/", Some("redeem")), ("/admin/v1/codes/", None)] {
        let Some(i) = path.find(mark) else { continue };
        let rest = &path[i + mark.len()..];
        let (segment, tail) = rest.find('/').map_or((rest, ""), |j| (&rest[..j], &rest[j..]));
        if segment.is_empty() || (Some(segment) == keep && tail.is_empty()) {
            return path.into();
        }
        return format!("{}{mark}{{code}}{tail}", &path[..i]).into();
    }
    path.into()
}

/// `…/manage/organizations/{org}/codes/{code}…` with the code replaced by `{code}`; `None` for
/// any other path.
fn managed_code_path(path: &str) -> Option<String> {
    const MARK: &str = "/manage/organizations/";
    let i = path.find(MARK)?;
    let mut segments = path[i + MARK.len()..].splitn(4, '/');
    let (org, codes, code) = (segments.next()?, segments.next()?, segments.next()?);
    if codes != "codes" || code.is_empty() {
        return None;
    }
    let tail = segments.next().map(|t| format!("/{t}")).unwrap_or_default();
    Some(format!("{}{MARK}{org}/codes/{{code}}{tail}", &path[..i]))
}

/// One answered public request, as the access log records it: plain values, so this module
/// needs no HTTP types.
pub struct Access<'a> {
    pub method: &'a str,
    /// The request path without its query (queries can hold codes or tokens); passed through
    /// [`loggable_path`] here.
    pub path: &'a str,
    pub status: u16,
    pub duration: std::time::Duration,
    /// The route's `mode` label (proxy, forward_auth, me, redeem, …).
    pub mode: &'static str,
    /// The `X-Request-Id` the request carried (the client's, or the one made for it).
    pub request_id: &'a str,
}

/// The access log's target: one line per public request ([`access_log`]).
const ACCESS_TARGET: &str = "identity_sidecar::access";

/// Whether the access log is on (`info` for `identity_sidecar::access`): the request layer
/// asks before it copies anything for the line, so a filtered-out access log costs nothing
/// per request.
pub fn access_log_enabled() -> bool {
    tracing::enabled!(target: "identity_sidecar::access", tracing::Level::INFO)
}

/// Writes the access-log line of one public request at `info`: method, path (an enrollment
/// code replaced by `{code}`), status, time to response headers in milliseconds, mode and
/// request id. Never a header, a query or a body, so never a token or a code.
pub fn access_log(access: &Access<'_>) {
    tracing::info!(
        target: "identity_sidecar::access",
        method = access.method,
        path = %loggable_path(access.path),
        status = access.status,
        duration_ms = access.duration.as_secs_f64() * 1000.0,
        mode = access.mode,
        request_id = access.request_id,
        "access"
    );
}

#[cfg(test)]
mod tests {
    use super::loggable_path;

    #[test]
    fn enrollment_codes_never_reach_a_log_line() {
        assert_eq!(
            loggable_path("/_sidecar/enrollment-codes/SECRET/redeem"),
            "/_sidecar/enrollment-codes/{code}/redeem"
        );
        assert_eq!(loggable_path("/_sidecar/enrollment-codes/redeem"), "/_sidecar/enrollment-codes/redeem");
        assert_eq!(loggable_path("/_sidecar/enrollment-codes/SECRET"), "/_sidecar/enrollment-codes/{code}");
        assert_eq!(loggable_path("/admin/v1/codes/SECRET"), "/admin/v1/codes/{code}");
        assert_eq!(loggable_path("/admin/v1/contracts/acme/codes"), "/admin/v1/contracts/acme/codes");
        assert_eq!(loggable_path("/api/x"), "/api/x");
        assert_eq!(
            loggable_path("/_sidecar/manage/organizations/acme/codes/SECRET"),
            "/_sidecar/manage/organizations/acme/codes/{code}"
        );
        assert_eq!(
            loggable_path("/_sidecar/manage/organizations/acme/contracts/c/codes"),
            "/_sidecar/manage/organizations/acme/contracts/c/codes"
        );
        assert_eq!(
            loggable_path("/_sidecar/manage/organizations/acme/codes/"),
            "/_sidecar/manage/organizations/acme/codes/"
        );
    }
}
