//! A webhook receiver nobody here wrote the checks of: `tests/webhooks/receiver.py`, run in a
//! virtualenv with the PyPI packages `standardwebhooks` (signature verification) and
//! `cloudevents` (the CloudEvents SDK parses each body), pinned in
//! `tests/webhooks/requirements.txt`. It records every event it accepted, in arrival order,
//! and can be told to answer 500 or be stopped and started again on the same port (the two
//! kinds of outage a sidecar meets). A receiver runs as a child process, stopped by its pid
//! when stopped or dropped.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use super::python::venv;

/// The virtualenv with the receiver's packages (built once, shared by the tests).
pub fn receiver_venv() -> PathBuf {
    venv("webhooks-venv", "tests/webhooks/requirements.txt")
}

/// A fresh Standard Webhooks secret, `whsec_<base64 of 24 random bytes>`.
pub fn new_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Writes `secrets` (one per line) to `dir/name` and returns the path, for `secret_file`.
pub fn secret_file(dir: &Path, name: &str, secrets: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, secrets.iter().map(|s| format!("{s}\n")).collect::<String>()).unwrap();
    path
}

/// One event the receiver verified and parsed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Received {
    pub webhook_id: String,
    pub id: String,
    pub sequence: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub subject: Option<String>,
    pub source: String,
    pub content_type: Option<String>,
    pub data: Value,
}

/// The receiver process.
pub struct Receiver {
    secret: String,
    port: u16,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Receiver {
    /// Starts a receiver on a free port that verifies with `secret`.
    pub async fn start(secret: &str) -> Receiver {
        let mut receiver = Receiver {
            secret: secret.to_owned(),
            port: 0,
            child: None,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        receiver.spawn();
        receiver
    }

    fn spawn(&mut self) {
        let python = receiver_venv().join("bin/python");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhooks/receiver.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(self.port.to_string())
            .arg(&self.secret)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the webhook receiver");
        // The first line says the port once the socket listens; a restart binds the same one.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("listening ").unwrap_or_else(|| {
            let _ = child.kill();
            panic!("the webhook receiver did not start: {line:?}")
        });
        self.port = port.parse().unwrap();
        self.child = Some(child);
    }

    /// The URL to configure as the webhook's `url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Kills the process (by its pid): connections to its port are refused from now on.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with nothing recorded.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// From now on every delivery is answered `status` (e.g. 500) and not recorded.
    pub async fn fail_with(&self, status: u16) {
        self.control(&format!("fail/{status}")).await;
    }

    /// Ends [`Receiver::fail_with`].
    pub async fn recover(&self) {
        self.control("ok").await;
    }

    async fn control(&self, what: &str) {
        let url = format!("http://127.0.0.1:{}/_control/{what}", self.port);
        assert_eq!(self.http.post(url).send().await.unwrap().status(), 204);
    }

    /// What it accepted so far, in arrival order.
    pub async fn received(&self) -> Vec<Received> {
        let url = format!("http://127.0.0.1:{}/received", self.port);
        self.http.get(url).send().await.unwrap().json().await.unwrap()
    }

    /// Deliveries it refused (bad signature or body), with the reason.
    pub async fn refused(&self) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/refused", self.port);
        self.http.get(url).send().await.unwrap().json().await.unwrap()
    }

    /// Waits until it accepted at least `n` events; returns them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.received().await;
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the receiver got {} of {n} events: {got:#?}\nrefused: {:?}",
                got.len(),
                self.refused().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}
