//! The real `identity-sidecar` binary as a child process, configured by a TOML file the way a
//! new user would run it.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// The configuration of a binary in reverse proxy mode in front of `upstream`, trusting
/// `issuer`, on SQLite in its own directory; `tables` (more TOML tables, e.g. `[log]`) is
/// appended. Give it to [`Binary::start`]; a key of `[server]` goes in as an environment
/// variable (`SIDECAR__SERVER__…`) with [`Binary::start_with_env`].
pub fn proxy_toml(upstream: &str, issuer: &str, tables: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{public}}"
admin_listen = "127.0.0.1:{{admin}}"

[upstream]
url = "{upstream}"

[oidc]
issuer = "{issuer}"
audiences = ["app"]

[database]
url = "sqlite://{{dir}}/sidecar.db?mode=rwc"

{tables}
"#
    )
}

/// JSON logs at `info`, for tests that read the binary's log lines.
pub const JSON_LOGS: &str = "[log]\nformat = \"json\"\nlevel = \"info\"";

/// A free loopback port (bound, read, released: a small race, fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running binary; killed when dropped.
pub struct Binary {
    pub child: Child,
    pub public: u16,
    pub admin: u16,
    pub dir: tempfile::TempDir,
}

impl Binary {
    /// Writes `toml` (with `{public}`, `{admin}` and `{dir}` placeholders filled in) to
    /// `config.toml` in a fresh directory and runs `identity-sidecar --config it serve`.
    pub fn start(toml: &str) -> Binary {
        Binary::start_with_env(toml, &[])
    }

    /// Like [`Binary::start`], with extra environment variables for the process.
    pub fn start_with_env(toml: &str, env: &[(&str, &str)]) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let (public, admin) = (free_port(), free_port());
        let text = toml
            .replace("{public}", &public.to_string())
            .replace("{admin}", &admin.to_string())
            .replace("{dir}", &dir.path().display().to_string());
        let config: PathBuf = dir.path().join("config.toml");
        std::fs::write(&config, text).unwrap();
        // Logs go to a file, not a pipe nobody drains (a full pipe would block the process).
        let log = std::fs::File::create(dir.path().join("sidecar.log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_identity-sidecar"));
        command.arg("--config").arg(&config).arg("serve").env_remove("RUST_LOG");
        // The test's own settings (and a developer's OTLP collector) stay out of the child.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SIDECAR") || k.starts_with("OTEL_")) {
            command.env_remove(key);
        }
        command.envs(env.iter().copied());
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the binary starts");
        Binary { child, public, admin, dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    /// Polls `/readyz` until 200 (panics with the process's stderr after `within`).
    pub async fn wait_ready(&mut self, within: Duration) {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if http.get(self.admin_url("/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the binary exited early with {status}: {}", self.stderr());
            }
            if tokio::time::Instant::now() > deadline {
                panic!("the binary did not become ready: {}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (up to `within`).
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "the binary did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the process logged (stderr) so far.
    pub fn stderr(&mut self) -> String {
        std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
