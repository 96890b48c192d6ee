//! Issue "Ship it": `identity-sidecar demo` starts, and every `curl` command it prints works
//! exactly as printed.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::helpers::binary::free_port;

#[tokio::test]
async fn the_demo_starts_and_every_command_it_prints_works_as_printed() {
    let dir = tempfile::tempdir().unwrap();
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
        .arg(dir.path())
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

    let commands: Vec<&String> = printed.iter().filter(|l| l.starts_with("curl ")).collect();
    assert!(commands.len() >= 11, "{printed:#?}");
    let mut outputs = Vec::new();
    for command in &commands {
        let out = tokio::process::Command::new("sh").arg("-c").arg(command.as_str()).output().await.unwrap();
        assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!text.is_empty(), "{command} printed nothing");
        outputs.push(text);
    }
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
    child.start_kill().unwrap();
}
