//! `/metrics` as Prometheus reads it: served with the OpenMetrics content type, and parsed by
//! the OpenMetrics parser of Prometheus's own Python client (PyPI `prometheus-client`) with
//! every family's type intact, after real traffic.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::helpers::{EchoUpstream, FakeKeycloak, TestApp, base_env, python, set};

/// Reads OpenMetrics text on stdin; prints `{family: {"type": …, "samples": [[name, labels,
/// value], …]}}` as JSON. The parser raises on anything that is not valid OpenMetrics.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = {
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
print(json.dumps(out))
"#;

/// The families Prometheus's parser reads in `text`, by name.
fn parse_with_prometheus_client(text: &str) -> BTreeMap<String, serde_json::Value> {
    let venv = python::venv("prometheus-client-venv", "tests/prometheus/requirements.txt");
    let mut child = Command::new(venv.join("bin/python"))
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the venv's python runs");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus-client refused /metrics:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

#[tokio::test]
async fn prometheus_own_parser_reads_metrics_with_their_types_after_real_traffic() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__UPSTREAM__URL", upstream.url());
    let app = TestApp::spawn_with(env).await;
    let token = kc.token().sub("metrics").sign();
    for path in ["/a", "/b?x=1"] {
        assert_eq!(app.get(path).bearer_auth(&token).send().await.unwrap().status(), 200);
    }
    assert_eq!(app.forward_auth("GET", "/").bearer_auth(&token).send().await.unwrap().status(), 200);

    let res = app.http.get(app.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        "the content type names the format written"
    );
    let text = res.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let families = parse_with_prometheus_client(&text);

    for (family, kind) in [
        ("identity_sidecar_requests", "counter"),
        ("identity_sidecar_auth_decisions", "counter"),
        ("identity_sidecar_request_duration_seconds", "histogram"),
        ("identity_sidecar_upstream_duration_seconds", "histogram"),
        ("identity_sidecar_upstream_latency_seconds", "histogram"),
        ("identity_sidecar_requests_in_flight", "gauge"),
        ("identity_sidecar_jwks_stale", "gauge"),
        ("identity_sidecar_build", "info"),
    ] {
        let found = families.get(family).unwrap_or_else(|| panic!("{family} missing: {text}"));
        assert_eq!(found["type"], kind, "{family}: {found}");
    }
    let samples = |family: &str| families[family]["samples"].as_array().unwrap().clone();
    let sample = |family: &str, name: &str, labels: serde_json::Value| {
        samples(family)
            .into_iter()
            .find(|s| s[0] == name && s[1] == labels)
            .unwrap_or_else(|| panic!("{name} {labels} missing: {text}"))[2]
            .as_f64()
            .unwrap()
    };
    let proxy_2xx = serde_json::json!({"mode": "proxy", "class": "2xx"});
    assert_eq!(
        sample(
            "identity_sidecar_request_duration_seconds",
            "identity_sidecar_request_duration_seconds_count",
            proxy_2xx
        ),
        2.0
    );
    let fa_2xx = serde_json::json!({"mode": "forward_auth", "class": "2xx"});
    assert_eq!(
        sample(
            "identity_sidecar_request_duration_seconds",
            "identity_sidecar_request_duration_seconds_count",
            fa_2xx
        ),
        1.0
    );
    let proxy_2xx = serde_json::json!({"mode": "proxy", "class": "2xx"});
    assert_eq!(sample("identity_sidecar_requests", "identity_sidecar_requests_total", proxy_2xx), 2.0);
    // Every request is answered: none is still in flight.
    assert_eq!(
        sample(
            "identity_sidecar_requests_in_flight",
            "identity_sidecar_requests_in_flight",
            serde_json::json!({"mode": "proxy"})
        ),
        0.0
    );
    assert_eq!(
        sample(
            "identity_sidecar_upstream_duration_seconds",
            "identity_sidecar_upstream_duration_seconds_count",
            serde_json::json!({})
        ),
        2.0
    );
    let build = samples("identity_sidecar_build");
    assert_eq!(build.len(), 1, "{text}");
    assert_eq!(build[0][1]["version"], env!("CARGO_PKG_VERSION"));
    assert!(!build[0][1]["commit"].as_str().unwrap().is_empty());
    assert_eq!(build[0][2], 1.0);
}
