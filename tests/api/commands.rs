//! The operator commands of docs/contract.md §8 *(v2)* run as a user runs them — the real binary, stdin
//! piped, exit status and output read — and what they produce is used by a running sidecar:
//! `--version`, `hash-token`, `generate-signing-key`, `health [--ready]`, and an SQLite URL
//! without `mode=rwc` (issue 15, item 8).

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use sha2::Digest as _;
use tokio::io::AsyncWriteExt as _;

use crate::helpers::binary::Binary;
use crate::helpers::{FakeKeycloak, Mode};

const BIN: &str = env!("CARGO_BIN_EXE_identity-sidecar");

/// The binary with `args`, `stdin` piped in, no `SIDECAR*` variables from the test's
/// environment. Async, so the test's own servers (the fake Keycloak) keep answering meanwhile.
async fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut command = tokio::process::Command::new(BIN);
    command.args(args).env_remove("RUST_LOG");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SIDECAR")) {
        command.env_remove(key);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin).await.unwrap();
    drop(pipe);
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the command finished")
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn sha256_hex(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// A sidecar configured by `extra` (TOML appended to a minimal config naming `kc`).
fn sidecar(kc: &FakeKeycloak, admin_listen: &str, extra: &str) -> Binary {
    Binary::start(&format!(
        r#"
[server]
listen = "127.0.0.1:{{public}}"
admin_listen = "{admin_listen}:{{admin}}"

[oidc]
issuer = "{issuer}"
audiences = ["app"]

[database]
url = "sqlite://{{dir}}/sidecar.db"

{extra}
"#,
        issuer = kc.issuer()
    ))
}

#[tokio::test]
async fn version_prints_the_cargo_package_version() {
    let out = run(&["--version"], b"").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("identity-sidecar {}\n", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn hash_token_trims_one_trailing_newline_and_prints_lower_case_hex_sha256() {
    let expected = sha256_hex("s3cret-Admin_token.42");
    for input in ["s3cret-Admin_token.42", "s3cret-Admin_token.42\n", "s3cret-Admin_token.42\r\n"] {
        let out = run(&["hash-token"], input.as_bytes()).await;
        assert!(out.status.success(), "{input:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("{expected}\n"), "{input:?}");
    }
}

#[tokio::test]
async fn hash_token_refuses_a_token_the_admin_api_could_never_accept() {
    // A trailing space is not trimmed away silently: such a token can never be sent as
    // `Authorization: Bearer X` (the gate refuses whitespace in X), so its hash would match
    // nothing. Likewise an empty token and a second newline.
    for (input, reason) in [
        ("s3cret ", "space"),
        ("s3cret \n", "space"),
        ("", "empty"),
        ("\n", "empty"),
        ("s3cret\n\n", "line break"),
    ] {
        let out = run(&["hash-token"], input.as_bytes()).await;
        assert_eq!(out.status.code(), Some(1), "{input:?}");
        assert!(stdout(&out).is_empty(), "{input:?} printed a hash: {}", stdout(&out));
        let message = stderr(&out);
        assert!(message.contains(reason) && message.lines().count() == 1, "{input:?}: {message}");
    }
}

#[tokio::test]
async fn a_token_hashed_by_hash_token_opens_the_admin_api() {
    let token = "ops-2f9c1e7d4b8a6053";
    let out = run(&["hash-token"], format!("{token}\n").as_bytes()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let hash = stdout(&out).trim().to_owned();

    let kc = FakeKeycloak::start().await;
    let mut bin =
        sidecar(&kc, "127.0.0.1", &format!("[[admin.token_sha256]]\nname = \"ops\"\nsha256 = \"{hash}\""));
    bin.wait_ready(Duration::from_secs(30)).await;
    let http = reqwest::Client::new();
    let url = bin.admin_url("/admin/v1/organizations");
    let res = http.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let other = http.get(&url).bearer_auth("ops-wrong").send().await.unwrap();
    assert_eq!(other.status(), 401);
}

#[tokio::test]
async fn a_key_from_generate_signing_key_is_the_key_the_sidecar_signs_with_and_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("entitlements.pem");
    let key_arg = key.to_str().unwrap();
    let out = run(&["generate-signing-key", "--out", key_arg], b"").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    let kid = printed
        .split_whitespace()
        .skip_while(|w| *w != "kid")
        .nth(1)
        .expect("the kid is printed")
        .trim_end_matches(';')
        .to_owned();
    assert!(printed.contains(&format!("entitlements.signing_key_file = \"{key_arg}\"")), "{printed}");
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "PKCS#8 PEM: {pem}");
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // Never overwritten: a second run fails and leaves the first key as it was.
    let again = run(&["generate-signing-key", "--out", key_arg], b"").await;
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already exists"), "{}", stderr(&again));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), pem);

    let kc = FakeKeycloak::start().await;
    let mut bin = sidecar(&kc, "127.0.0.1", &format!("[entitlements]\nsigning_key_file = \"{key_arg}\""));
    bin.wait_ready(Duration::from_secs(30)).await;
    let http = reqwest::Client::new();
    for url in [bin.url("/_sidecar/jwks.json"), bin.admin_url("/.well-known/jwks.json")] {
        let jwks: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1), "{url}: {jwks}");
        assert_eq!(jwks["keys"][0]["kid"], kid.as_str(), "{url}: {jwks}");
        assert_eq!(jwks["keys"][0]["alg"], "ES256");
    }
    // The entitlement token of a logged-in request is signed with that key.
    let token = kc.token().sub("key-user").sign();
    let res = http
        .get(bin.url("/_sidecar/auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let entitlements = res.headers()["x-identity-entitlements"].to_str().unwrap().to_owned();
    assert_eq!(jwt_kid(&entitlements).as_deref(), Some(kid.as_str()), "{entitlements}");
    assert!(!bin.stderr().contains("ephemeral signing key"), "the configured key is used: {}", bin.stderr());
}

/// The `kid` in the header of a compact JWS.
fn jwt_kid(jws: &str) -> Option<String> {
    use base64::Engine as _;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jws.split('.').next()?).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    header["kid"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn health_exits_0_when_the_admin_port_answers_200_and_1_with_a_reason_otherwise() {
    // Keycloak answers 500 at first: the sidecar is alive but not ready.
    let kc = FakeKeycloak::start().await;
    kc.set_mode(Mode::Fail);
    // A wildcard admin address, as in a container: `health` asks 127.0.0.1.
    let mut bin = sidecar(&kc, "0.0.0.0", "");
    let config = bin.dir.path().join("config.toml");
    let config = config.to_str().unwrap();
    let health = |ready: bool| {
        let mut args = vec!["--config", config, "health"];
        if ready {
            args.push("--ready");
        }
        async move { run(&args, b"").await }
    };

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let alive = loop {
        let out = health(false).await;
        if out.status.success() || tokio::time::Instant::now() > deadline {
            break out;
        }
        assert!(bin.child.try_wait().unwrap().is_none(), "the sidecar exited: {}", bin.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(alive.status.success(), "{}", stderr(&alive));
    assert_eq!(stdout(&alive), format!("http://127.0.0.1:{}/healthz: 200 OK\n", bin.admin));

    let not_ready = health(true).await;
    assert_eq!(not_ready.status.code(), Some(1));
    let reason = stderr(&not_ready);
    assert_eq!(reason.lines().count(), 1, "{reason}");
    assert!(reason.contains(&format!("http://127.0.0.1:{}/readyz: 503", bin.admin)), "{reason}");
    assert!(reason.contains("No signing keys loaded yet."), "{reason}");

    kc.set_mode(Mode::Normal);
    bin.wait_ready(Duration::from_secs(30)).await;
    let ready = health(true).await;
    assert!(ready.status.success(), "{}", stderr(&ready));
    assert_eq!(stdout(&ready), format!("http://127.0.0.1:{}/readyz: 200 OK\n", bin.admin));

    // Nobody listening: 1, with the reason on one line.
    bin.terminate();
    assert!(bin.wait_exit(Duration::from_secs(20)).await.success());
    let gone = health(false).await;
    assert_eq!(gone.status.code(), Some(1));
    let reason = stderr(&gone);
    assert!(reason.lines().count() == 1 && reason.contains("refused"), "{reason}");
}

#[tokio::test]
async fn health_exits_1_not_2_when_the_configuration_is_bad() {
    // Docker reserves exit status 2 for HEALTHCHECK; a broken config is simply unhealthy.
    let out = run(&["--config", "/nonexistent/identity-sidecar.toml", "health"], b"").await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

/// A value only its reader can judge (a rule prefix, an algorithm) is refused by every command
/// that reads the configuration, as `serve` refuses it: `check-config` and `migrate` exit 2
/// before touching anything, `health` exits 1, each naming the key.
#[tokio::test]
async fn every_command_refuses_a_bad_rule_prefix_or_algorithm_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("never.db");
    let config = dir.path().join("sidecar.toml");
    let path = config.display().to_string();
    for (algorithms, prefix, says) in [
        (r#"["RS256"]"#, "/a/../admin", r#"auth.rules[0].prefix "/a/../admin""#),
        (r#"["RS256", "HS256"]"#, "/admin", r#"oidc.algorithms: "HS256""#),
    ] {
        let toml = format!(
            "[oidc]\nissuer = \"https://sso.example.com/realms/acme\"\naudiences = [\"app\"]\n\
             algorithms = {algorithms}\n[database]\nurl = \"sqlite://{}?mode=rwc\"\n\
             [[auth.rules]]\nprefix = \"{prefix}\"\nrequire = true\n",
            db.display()
        );
        std::fs::write(&config, toml).unwrap();
        for (command, status) in [("check-config", 2), ("migrate", 2), ("health", 1)] {
            let out = run(&["--config", &path, command], b"").await;
            assert_eq!(out.status.code(), Some(status), "{command}: {}", stderr(&out));
            assert!(stderr(&out).contains(says), "{command}: {}", stderr(&out));
        }
        assert!(!exists(&db), "migrate stopped before opening the database");
    }
}

/// `identity-sidecar migrate` with `database.url` = `url` (and a minimal OIDC config).
async fn migrate(url: &str) -> Output {
    let mut command = tokio::process::Command::new(BIN);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SIDECAR")) {
        command.env_remove(key);
    }
    command
        .arg("migrate")
        .env("SIDECAR__OIDC__ISSUER", "https://sso.example.com/realms/acme")
        .env("SIDECAR__OIDC__AUDIENCES", r#"["app"]"#)
        .env("SIDECAR__DATABASE__URL", url)
        .env("SIDECAR__LOG__LEVEL", "error")
        .output()
        .await
        .unwrap()
}

fn exists(path: &Path) -> bool {
    std::fs::metadata(path).is_ok()
}

#[tokio::test]
async fn an_sqlite_url_without_mode_rwc_creates_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidecar.db");
    let out = migrate(&format!("sqlite://{}", file.display())).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(exists(&file), "the database file was created");
    // And it holds the schema: a second run finds the migrations applied.
    let again = migrate(&format!("sqlite://{}", file.display())).await;
    assert!(again.status.success(), "{}", stderr(&again));
}

#[tokio::test]
async fn an_sqlite_file_that_cannot_be_opened_fails_with_a_message_saying_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing_dir = dir.path().join("no-such-dir");
    let out = migrate(&format!("sqlite://{}/sidecar.db", missing_dir.display())).await;
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(
        message.contains(&format!("the directory {} does not exist", missing_dir.display()))
            && message.contains("create it"),
        "{message}"
    );
    assert!(!exists(&missing_dir), "no directory is created behind the operator's back");

    // `mode=rw` asks for an existing file: not created, and the message says so.
    let file = dir.path().join("must-exist.db");
    let out = migrate(&format!("sqlite://{}?mode=rw", file.display())).await;
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(message.contains("mode=rw forbids creating it"), "{message}");
    assert!(!exists(&file));
}

// ---------------------------------------------------------------------------------------------
// scripts/services: the test command's set-up (issue 15, item 8)

/// A directory of stubs and a PATH like the test's own in which `id -u` says `uid`, `apt-get`
/// only records its arguments in `apt-get.log` (so nothing is really installed), and the
/// programs in `hidden` are gone: each PATH directory holding one is replaced by a mirror of
/// symlinks without it.
fn stub_path(root: &Path, uid: u32, hidden: &[&str]) -> String {
    use std::os::unix::fs::{PermissionsExt as _, symlink};
    let stubs = root.join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let script = |name: &str, body: &str| {
        let path = stubs.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script("id", &format!("echo {uid}"));
    script("apt-get", &format!("echo \"$@\" >> '{}'", root.join("apt-get.log").display()));
    let mut dirs = vec![stubs.display().to_string()];
    for (i, dir) in std::env::split_paths(&std::env::var_os("PATH").unwrap()).enumerate() {
        if !hidden.iter().any(|h| dir.join(h).exists()) {
            dirs.push(dir.display().to_string());
            continue;
        }
        let mirror = root.join(format!("mirror-{i}"));
        std::fs::create_dir_all(&mirror).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = entry.file_name();
            if !hidden.iter().any(|h| name == *h) {
                symlink(entry.path(), mirror.join(&name)).unwrap();
            }
        }
        dirs.push(mirror.display().to_string());
    }
    dirs.join(":")
}

/// Runs `scripts/services` with `path`; returns (exit status, stderr).
async fn services(path: &str) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services"))
        .env("PATH", path)
        .env_remove("SIDECAR_TEST_POSTGRES_URL")
        .output()
        .await
        .unwrap();
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test]
async fn services_does_nothing_when_everything_the_tests_need_is_present() {
    // The test command ran scripts/services before the tests, so everything is here.
    for uid in [1000, 0] {
        let dir = tempfile::tempdir().unwrap();
        let (status, stderr) = services(&stub_path(dir.path(), uid, &[])).await;
        assert_eq!(status, Some(0), "uid {uid}: {stderr}");
        assert_eq!(stderr, "", "uid {uid}");
        assert!(!exists(&dir.path().join("apt-get.log")), "uid {uid}: apt-get ran on a complete machine");
    }
}

#[tokio::test]
async fn services_names_what_is_missing_and_the_command_that_installs_it_when_not_root() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = services(&stub_path(dir.path(), 1000, &["caddy"])).await;
    assert_eq!(status, Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines[0], "scripts/services: missing: caddy", "{stderr}");
    assert_eq!(lines[1], "  Install them (as root): apt-get install -y caddy", "{stderr}");
    assert!(!exists(&dir.path().join("apt-get.log")), "not root: nothing is installed");
}

#[tokio::test]
async fn services_installs_exactly_the_missing_packages_by_name_when_root() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = services(&stub_path(dir.path(), 0, &["caddy"])).await;
    let log = std::fs::read_to_string(dir.path().join("apt-get.log")).expect("apt-get ran");
    let calls: Vec<&str> = log.lines().collect();
    assert_eq!(calls.len(), 1, "{log}");
    assert!(calls[0].ends_with(" install caddy"), "{log}");
    assert!(calls[0].contains("-y") && calls[0].contains("DPkg::Lock::Timeout"), "{log}");
    // The stub installed nothing, and the script says so instead of carrying on.
    assert_eq!(status, Some(1), "{stderr}");
    assert!(stderr.contains("apt-get could not install: caddy"), "{stderr}");
}
