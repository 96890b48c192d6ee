//! The access log of the real binary: one JSON line at `info` per public request, with method,
//! path (no query, an enrollment code replaced), status, duration, mode and request id — and
//! never the token or the code.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::binary::{Binary, JSON_LOGS, proxy_toml};
use crate::helpers::{EchoUpstream, FakeKeycloak};

#[tokio::test]
async fn every_public_request_writes_one_access_line_without_token_or_code() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let mut bin = Binary::start(&proxy_toml(&upstream.url(), &kc.issuer(), JSON_LOGS));
    bin.wait_ready(Duration::from_secs(20)).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let token = kc.token().sub("logged").sign();
    let code = "SECRETCODE1234ABCD";
    let query_secret = "querysecret5678";

    let proxied = http
        .get(bin.url(&format!("/orders/7?state={query_secret}")))
        .bearer_auth(&token)
        .header("x-request-id", "access-proxied")
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 200);
    let redeemed = http
        .post(bin.url(&format!("/_sidecar/enrollment-codes/{code}/redeem")))
        .bearer_auth(&token)
        .header("x-request-id", "access-redeem")
        .send()
        .await
        .unwrap();
    let redeem_status = redeemed.status().as_u16();

    // The line is written after the answer; give the writer a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = bin.stderr();
    let access: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "access")
        .collect();
    let line = |id: &str| {
        let lines: Vec<&Value> = access.iter().filter(|l| l["request_id"] == id).collect();
        assert_eq!(lines.len(), 1, "one access line for {id}:\n{log}");
        lines[0].clone()
    };

    let proxied = line("access-proxied");
    assert_eq!(proxied["level"], "INFO", "{proxied}");
    assert_eq!(proxied["method"], "GET");
    assert_eq!(proxied["path"], "/orders/7", "no query: {proxied}");
    assert_eq!(proxied["status"], 200);
    assert_eq!(proxied["mode"], "proxy");
    assert!(proxied["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{proxied}");

    let redeem = line("access-redeem");
    assert_eq!(redeem["method"], "POST");
    assert_eq!(redeem["path"], "/_sidecar/enrollment-codes/{code}/redeem", "{redeem}");
    assert_eq!(redeem["status"], redeem_status);
    assert_eq!(redeem["mode"], "redeem");

    // The line holds its request's fields itself, without the span objects other lines carry.
    assert!(proxied.get("span").is_none() && proxied.get("spans").is_none(), "{proxied}");

    for secret in [token.as_str(), code, query_secret] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
    // The token's signature alone must not appear either (a log may cut a token into parts).
    let signature = token.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "the token's signature is in the log:\n{log}");
}

#[tokio::test]
async fn the_access_lines_still_queued_at_sigterm_are_written_before_the_process_exits() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let mut bin = Binary::start(&proxy_toml(&upstream.url(), &kc.issuer(), JSON_LOGS));
    bin.wait_ready(Duration::from_secs(20)).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let token = kc.token().sub("flushed").sign();

    // Lines leave through a writer thread: stop the process right after the last answer, so
    // some of them are still queued when the signal arrives.
    let requests = 300;
    let answers = futures_util::future::join_all((0..requests).map(|i| {
        http.get(bin.url("/orders/1")).bearer_auth(&token).header("x-request-id", format!("flush-{i}")).send()
    }))
    .await;
    for answer in answers {
        assert_eq!(answer.unwrap().status(), 200);
    }
    bin.terminate();
    let exit = bin.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(exit.code(), Some(0), "log:\n{}", bin.stderr());

    let log = bin.stderr();
    let mut ids: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "access")
        .filter_map(|l| l["request_id"].as_str().map(str::to_owned))
        .filter(|id| id.starts_with("flush-"))
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..requests).map(|i| format!("flush-{i}")).collect();
    expected.sort();
    assert_eq!(ids, expected, "one access line per request, none lost at shutdown");
}

#[tokio::test]
async fn a_line_written_during_a_request_names_the_request_span_and_its_id() {
    let kc = FakeKeycloak::start().await;
    // An upstream that refuses connections: the proxy warns inside the request.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut bin = Binary::start(&proxy_toml(&refused, &kc.issuer(), JSON_LOGS));
    bin.wait_ready(Duration::from_secs(20)).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let token = kc.token().sub("spanned").sign();
    let answer = http
        .get(bin.url("/orders/1"))
        .bearer_auth(&token)
        .header("x-request-id", "span-warned")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 502);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = bin.stderr();
    let lines: Vec<Value> = log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect();
    let warning = lines
        .iter()
        .find(|l| l["message"] == "upstream request failed")
        .unwrap_or_else(|| panic!("no upstream warning:\n{log}"));
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["span"]["request_id"], "span-warned", "{warning}");
    let access = lines
        .iter()
        .find(|l| l["message"] == "access" && l["request_id"] == "span-warned")
        .unwrap_or_else(|| panic!("no access line:\n{log}"));
    assert_eq!(access["status"], 502, "{access}");
}
