//! Issue "Ship it": `identity-sidecar demo` starts, and every `curl` command it prints works
//! exactly as printed — also with `demo --upstream URL` in front of the user's own app
//! (issue 15; the test's echo upstream plays that app).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::helpers::EchoUpstream;
use crate::helpers::binary::free_port;

/// Starts `identity-sidecar demo --port P --data-dir D [extra…]` and returns it with every
/// line it printed before "Press Ctrl-C".
async fn start_demo(dir: &std::path::Path, extra: &[&str]) -> (tokio::process::Child, Vec<String>) {
    let port = loop {
        let p = free_port();
        if std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_identity-sidecar"))
        .arg("demo")
        .arg("--port")
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("Press Ctrl-C") {
                return;
            }
            printed.push(line);
        }
        panic!("the demo exited early: {printed:?}");
    })
    .await
    .expect("the demo printed its commands");
    (child, printed)
}

/// Runs every printed `curl` line exactly as printed (through `sh -c`) and returns their
/// outputs; each must succeed and print something.
async fn run_printed_commands(printed: &[String]) -> Vec<String> {
    let commands: Vec<&String> = printed.iter().filter(|l| l.starts_with("curl ")).collect();
    assert!(commands.len() >= 16, "{printed:#?}");
    let mut outputs = Vec::new();
    for command in &commands {
        let out = tokio::process::Command::new("sh").arg("-c").arg(command.as_str()).output().await.unwrap();
        assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!text.is_empty(), "{command} printed nothing");
        outputs.push(text);
    }
    outputs
}

/// The output of the first printed `curl` command containing `needle`, and its index.
fn output_of<'a>(printed: &[String], outputs: &'a [String], needle: &str) -> (usize, &'a str) {
    let i = printed
        .iter()
        .filter(|l| l.starts_with("curl "))
        .position(|c| c.contains(needle))
        .unwrap_or_else(|| panic!("no printed command contains {needle:?}: {printed:#?}"));
    (i, &outputs[i])
}

/// The body of a `curl -i` output, as JSON.
fn body_of(output: &str) -> serde_json::Value {
    let (_, body) = output.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {output}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Issue 17 item 6: dana (in acme and globex) switches to globex, and erin (a manager of
/// acme) generates codes for acme on the public port but finds nothing of globex.
fn assert_switch_and_manage(printed: &[String], outputs: &[String]) {
    use serde_json::json;
    let (_, listed) = output_of(printed, outputs, "/_sidecar/active-organization");
    let listed: serde_json::Value = serde_json::from_str(listed).unwrap();
    assert_eq!(listed["active"], serde_json::Value::Null, "{listed}");
    let keys: Vec<_> = listed["organizations"].as_array().unwrap().iter().map(|o| &o["key"]).collect();
    assert_eq!(keys, [&json!("acme"), &json!("globex")], "{listed}");

    let (put, switched) = output_of(printed, outputs, "-X PUT");
    assert!(
        printed.iter().filter(|l| l.starts_with("curl ")).nth(put).unwrap().contains("active-organization")
    );
    let switched: serde_json::Value = serde_json::from_str(switched).unwrap();
    assert_eq!(switched["active"], "globex", "{switched}");
    assert_eq!(switched["source"], "selection", "{switched}");
    let next = &outputs[put + 1];
    assert!(next.starts_with("HTTP/1.1 200"), "dana's next request: {next}");
    assert!(next.contains("x-identity-active-organization: globex\r\n"), "dana's next request: {next}");

    let (_, generated) = output_of(printed, outputs, "/manage/organizations/acme/");
    assert!(generated.starts_with("HTTP/1.1 201"), "erin's code generation: {generated}");
    let generated = body_of(generated);
    let items = generated["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{generated}");
    assert!(items.iter().all(|c| c["contract"] == "acme-premium" && c["code"].is_string()), "{generated}");

    let (_, globex) = output_of(printed, outputs, "/manage/organizations/globex/");
    assert_eq!(globex, "404\n", "erin on globex");
}

#[tokio::test]
async fn the_demo_starts_and_every_command_it_prints_works_as_printed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, printed) = start_demo(dir.path(), &[]).await;
    let outputs = run_printed_commands(&printed).await;
    let all = outputs.join("\n");
    assert!(outputs[0].contains("\"x-identity-contracts\":\"acme-all\""), "proxy: {}", outputs[0]);
    assert!(outputs[1].starts_with("HTTP/1.1 200") && outputs[1].contains("x-identity-organizations: acme"));
    assert!(outputs.iter().any(|o| o.starts_with("HTTP/1.1 401")), "{all}");
    assert!(all.contains("\"access_token\""), "the dev issuer mints tokens");
    let redeemed =
        outputs.iter().position(|o| o.contains("\"key\":\"acme-premium\"")).expect("a redemption answer");
    assert!(outputs[redeemed + 1].contains("acme-premium"), "bob's next request: {}", outputs[redeemed + 1]);
    let dry_run = outputs.iter().find(|o| o.contains("\"dry_run\":true")).expect("a dry-run answer");
    let dry_run: serde_json::Value = serde_json::from_str(dry_run).unwrap();
    assert_eq!(dry_run["organizations"]["added"], serde_json::json!(["acme"]), "{dry_run}");
    assert_switch_and_manage(&printed, &outputs);
    child.start_kill().unwrap();
}

#[tokio::test]
async fn the_demo_fronts_the_users_own_app_with_upstream_and_its_commands_work_as_printed() {
    let app = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, printed) = start_demo(dir.path(), &["--upstream", &app.url()]).await;
    let banner = printed.join("\n");
    assert!(banner.contains("in front of your app"), "{banner}");
    assert!(banner.contains(&format!("proxy → your app at {}", app.url())), "{banner}");

    let outputs = run_printed_commands(&printed).await;
    let all = outputs.join("\n");
    // The proxy command reaches the user's app (not a built-in one) with alice's identity.
    assert!(outputs[0].starts_with("HTTP/1.1 200"), "proxy: {}", outputs[0]);
    let reached: Vec<_> = app.requests().into_iter().filter(|r| r.path == "/").collect();
    assert_eq!(reached.len(), 1, "exactly the proxy command reached the app: {:?}", app.requests());
    assert_eq!(reached[0].header("x-identity-subject"), Some("demo-alice"));
    assert_eq!(reached[0].header("x-identity-organizations"), Some("acme"));
    assert_eq!(reached[0].header("x-identity-contracts"), Some("acme-all"));
    assert!(!all.contains("\"app\":\"demo upstream\""), "the built-in echo app answered: {all}");
    // The rest of the tour behaves as with the built-in app.
    assert!(outputs[1].starts_with("HTTP/1.1 200") && outputs[1].contains("x-identity-organizations: acme"));
    assert!(outputs.iter().any(|o| o.starts_with("HTTP/1.1 401")), "{all}");
    let redeemed =
        outputs.iter().position(|o| o.contains("\"key\":\"acme-premium\"")).expect("a redemption answer");
    assert!(outputs[redeemed + 1].contains("acme-premium"), "bob's next request: {}", outputs[redeemed + 1]);
    assert_switch_and_manage(&printed, &outputs);
    // Only the proxy command is proxied; forward-auth and /_sidecar/* never reach the app.
    assert!(app.requests().iter().all(|r| r.path == "/"), "{:?}", app.requests());
    child.start_kill().unwrap();
}

#[tokio::test]
async fn the_demo_refuses_an_upstream_that_is_not_an_http_url() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["https://127.0.0.1:8000", "127.0.0.1:8000", "http://"] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_identity-sidecar"))
            .args(["demo", "--port", "1", "--data-dir"])
            .arg(dir.path())
            .args(["--upstream", bad])
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let message = String::from_utf8_lossy(&out.stderr);
        assert!(message.contains("--upstream"), "{bad}: {message}");
    }
}
