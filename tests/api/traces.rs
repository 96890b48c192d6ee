//! OpenTelemetry traces (`[telemetry]`): the real binary exports its spans to an OTLP/HTTP
//! receiver, continues the caller's W3C trace context and hands the upstream its own; without
//! an endpoint it exports nothing and leaves the caller's trace headers alone.

use std::time::Duration;

use crate::helpers::binary::{Binary, proxy_toml};
use crate::helpers::otlp::{OtlpReceiver, ReceivedSpan};
use crate::helpers::{EchoUpstream, FakeKeycloak};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn sidecar_toml(upstream: &EchoUpstream, kc: &FakeKeycloak, telemetry: &str) -> String {
    proxy_toml(&upstream.url(), &kc.issuer(), telemetry)
}

/// Sends one proxied request with a client trace context, then stops the binary (SIGTERM, so
/// it flushes its spans) and returns the `traceparent` / `tracestate` the upstream received.
async fn proxied_request_then_stop(
    bin: &mut Binary,
    kc: &FakeKeycloak,
    upstream: &EchoUpstream,
) -> (Option<String>, Option<String>, String) {
    bin.wait_ready(Duration::from_secs(20)).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let token = kc.token().sub("traced").sign();
    let res = http
        .get(bin.url("/orders?code=SECRET"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "log:\n{}", bin.stderr());
    let seen = upstream.last_request().expect("the upstream got the request");
    bin.terminate();
    let exit = bin.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(0), "log:\n{}", bin.stderr());
    (seen.header("traceparent").map(str::to_owned), seen.header("tracestate").map(str::to_owned), token)
}

/// `span`'s ancestors, nearest first, as far as `spans` holds them.
fn ancestors<'a>(span: &ReceivedSpan, spans: &'a [ReceivedSpan]) -> Vec<&'a ReceivedSpan> {
    let mut chain = Vec::new();
    let mut parent = span.parent_span_id.clone();
    while let Some(p) = spans.iter().find(|s| s.span_id == parent && s.trace_id == span.trace_id) {
        chain.push(p);
        parent = p.parent_span_id.clone();
    }
    chain
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.name == name && s.trace_id == TRACE_ID).collect()
}

#[tokio::test]
async fn a_proxied_request_continues_the_callers_trace_and_hands_the_upstream_its_own_span() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let receiver = OtlpReceiver::start().await;
    let telemetry =
        format!("[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"sidecar-under-test\"", receiver.url());
    let mut bin = Binary::start(&sidecar_toml(&upstream, &kc, &telemetry));
    let (traceparent, tracestate, token) = proxied_request_then_stop(&mut bin, &kc, &upstream).await;

    // Exported by the time the process exited (shutdown flushes the batch).
    let spans = receiver.wait_for_span("upstream", Duration::from_secs(5)).await;
    let requests = named(&spans, "request");
    assert_eq!(requests.len(), 1, "one request span in the caller's trace: {spans:#?}");
    let request = requests[0];
    assert_eq!(request.parent_span_id, CLIENT_SPAN, "the request span hangs under the caller's span");
    assert_eq!(request.attribute("path"), Some("/orders"), "the path without its query");
    assert!(
        request.resource.to_string().contains("sidecar-under-test"),
        "service.name: {:?}",
        request.resource
    );

    for child in ["reconcile", "transaction", "upstream"] {
        let found = named(&spans, child);
        assert!(!found.is_empty(), "a {child} span in the caller's trace: {spans:#?}");
        let chain = ancestors(found[0], &spans);
        assert!(chain.iter().any(|s| s.span_id == request.span_id), "{child} descends from the request span");
    }
    let transaction = named(&spans, "transaction")[0];
    assert_eq!(
        ancestors(transaction, &spans)[0].name,
        "reconcile",
        "the login's transaction is the reconciliation's"
    );
    assert!(spans.iter().any(|s| s.name == "jwks_fetch"), "the startup JWKS fetch is a span too: {spans:#?}");

    // The upstream continues the same trace under the sidecar's upstream span.
    let upstream_span = named(&spans, "upstream")[0];
    let traceparent = traceparent.expect("the upstream got a traceparent");
    assert_eq!(traceparent, format!("00-{TRACE_ID}-{}-01", upstream_span.span_id));
    assert_ne!(upstream_span.span_id, CLIENT_SPAN);
    assert_eq!(tracestate.as_deref(), Some("vendor=abc"), "tracestate travels with the trace");

    // No credential or query reaches the collector.
    for body in receiver.bodies() {
        assert!(!body.contains(&token), "a token in an exported span");
        assert!(!body.contains("SECRET"), "a query in an exported span");
    }
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_the_callers_trace_headers_pass_unchanged() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let receiver = OtlpReceiver::start().await;
    let mut bin = Binary::start(&sidecar_toml(&upstream, &kc, ""));
    let (traceparent, tracestate, _) = proxied_request_then_stop(&mut bin, &kc, &upstream).await;

    assert_eq!(traceparent, Some(format!("00-{TRACE_ID}-{CLIENT_SPAN}-01")));
    assert_eq!(tracestate.as_deref(), Some("vendor=abc"));
    assert!(receiver.spans().is_empty(), "nothing was exported");
}

#[tokio::test]
async fn the_standard_otlp_endpoint_variable_turns_traces_on_when_the_key_is_unset() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let receiver = OtlpReceiver::start().await;
    let url = receiver.url();
    let mut bin =
        Binary::start_with_env(&sidecar_toml(&upstream, &kc, ""), &[("OTEL_EXPORTER_OTLP_ENDPOINT", &url)]);
    let (traceparent, _, _) = proxied_request_then_stop(&mut bin, &kc, &upstream).await;

    let spans = receiver.wait_for_span("upstream", Duration::from_secs(5)).await;
    let upstream_span = named(&spans, "upstream");
    assert_eq!(upstream_span.len(), 1, "{spans:#?}");
    assert_eq!(traceparent, Some(format!("00-{TRACE_ID}-{}-01", upstream_span[0].span_id)));
}
