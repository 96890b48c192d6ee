//! The real client of `X-Userinfo`: mitol-django-apigateway (MIT Open Learning's Django app
//! that logs users in from APISIX's header) in the minimal Django project under
//! `tests/django/`, served by gunicorn, behind the sidecar in proxy mode.
//!
//! The Python side is installed from PyPI into a virtualenv cached in `target/django-venv`
//! (pinned by `tests/django/requirements.txt`, rebuilt when that file changes). Each test runs
//! its own gunicorn on a free port with its own SQLite database, and stops it by pid.
//! `docs/integrations/django.md` shows these files; the last test keeps the page verbatim.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::forward_auth::raw;
use crate::helpers::binary::free_port;
use crate::helpers::python::{self, run};
use crate::helpers::{FakeKeycloak, TestApp, base_env, metric, set};

/// The Django project the tests run and the page shows.
fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/django")
}

/// The virtualenv with the pinned packages of `tests/django/requirements.txt`.
fn venv() -> PathBuf {
    python::venv("django-venv", "tests/django/requirements.txt")
}

/// gunicorn serving the test project; stopped (SIGTERM, then SIGKILL) by its pid when dropped.
struct Gunicorn {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Gunicorn {
    /// Migrates a fresh database and starts gunicorn with `gunicorn.conf.py` plus `extra`
    /// command-line settings, on a free port.
    fn start(extra: &[&str]) -> Gunicorn {
        let venv = venv();
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("db.sqlite3");
        let env = [("DJANGO_DATABASE", database.as_os_str()), ("PYTHONDONTWRITEBYTECODE", "1".as_ref())];
        run(
            Command::new(venv.join("bin/python"))
                .args(["manage.py", "migrate", "--noinput"])
                .current_dir(project())
                .envs(env),
            "manage.py migrate",
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("gunicorn.log")).unwrap();
        let child = Command::new(venv.join("bin/gunicorn"))
            .args(["-c", "gunicorn.conf.py", "--workers", "1", "--bind"])
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .current_dir(project())
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("gunicorn starts");
        let mut gunicorn = Gunicorn { child, port, dir };
        gunicorn.wait_listening();
        gunicorn
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline || self.child.try_wait().unwrap().is_some() {
                panic!("gunicorn did not listen:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gunicorn.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The `global_id`s of the users Django has stored.
    async fn users(&self) -> Vec<String> {
        use sqlx::Connection as _;
        let url = format!("sqlite://{}", self.dir.path().join("db.sqlite3").display());
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let mut users: Vec<String> =
            sqlx::query_scalar("SELECT global_id FROM users_user").fetch_all(&mut db).await.unwrap();
        users.sort();
        users
    }
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its worker; SIGKILL only if it does not within 10 s.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sidecar configured by `tests/django/sidecar.toml` (the page's file), with the test's
/// issuer, ports, database and upstream in place of the example ones.
fn sidecar_toml_env(kc: &FakeKeycloak, upstream: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(project().join("sidecar.toml")).unwrap();
    let toml::Value::Table(sections) = toml::from_str(&text).unwrap() else { unreachable!() };
    let mut env = Vec::new();
    for (section, keys) in sections {
        let toml::Value::Table(keys) = keys else { panic!("[{section}] is a table") };
        for (key, value) in keys {
            let value = match value {
                toml::Value::String(s) => s,
                other @ (toml::Value::Array(_) | toml::Value::Table(_)) => {
                    serde_json::to_string(&other).unwrap()
                }
                other => other.to_string(),
            };
            env.push((format!("SIDECAR__{}__{}", section.to_uppercase(), key.to_uppercase()), value));
        }
    }
    for (key, value) in base_env(kc) {
        set(&mut env, &key, value);
    }
    set(&mut env, "SIDECAR__UPSTREAM__URL", upstream);
    env
}

/// `GET /me` through the sidecar: who Django logged in.
async fn me(app: &TestApp, token: Option<&str>) -> Value {
    let mut request = app.get("/me");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let res = request.send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// A user's fields as the test project's `/me` view returns them.
fn user(sub: &str, username: &str, email: &str, name: &str, optin: bool, country: &str) -> Value {
    json!({
        "authenticated": true, "global_id": sub, "username": username, "email": email, "name": name,
        "profile": {"email_optin": optin, "country_code": country},
    })
}

/// A forged `X-Userinfo` value naming `sub`.
fn forged(sub: &str) -> String {
    STANDARD
        .encode(json!({"sub": sub, "preferred_username": sub, "email": "m@evil", "name": sub}).to_string())
}

#[tokio::test]
async fn a_valid_token_creates_and_logs_in_the_django_user_with_the_mapped_fields() {
    let gunicorn = Gunicorn::start(&[]);
    let kc = FakeKeycloak::start().await;
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__UPSTREAM__URL", gunicorn.url(""));
    let app = TestApp::spawn_with(env).await;

    assert_eq!(me(&app, None).await, json!({"authenticated": false}));
    let token = kc
        .token()
        .sub("5d1c4c4e-2f7b-4d2a-9a51-0e3c2c1f7a10")
        .preferred_username("zoe")
        .email("zoe@example.org")
        .name("Zoë Ämm-Łukasz 李")
        .claim("email_optin", json!(true))
        .claim("country_code", json!("DE"))
        .sign();
    // The default claim list maps every user field; the custom mapper claims are not in it,
    // so additional_models falls back to its defaults (what `["*"]` is for).
    let zoe = user(
        "5d1c4c4e-2f7b-4d2a-9a51-0e3c2c1f7a10",
        "zoe",
        "zoe@example.org",
        "Zoë Ämm-Łukasz 李",
        false,
        "",
    );
    assert_eq!(me(&app, Some(&token)).await, zoe, "{}", gunicorn.log());
    assert_eq!(me(&app, Some(&token)).await, zoe, "the second request finds the same user");
    assert_eq!(gunicorn.users().await, ["5d1c4c4e-2f7b-4d2a-9a51-0e3c2c1f7a10"]);

    // The login made a Django session; a later request with its cookie but no token has an
    // empty X-Userinfo, and the middleware logs the session out.
    let res = app.get("/me").bearer_auth(&token).send().await.unwrap();
    let session = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next())
        .find(|c| c.starts_with("sessionid="))
        .expect("a session cookie")
        .to_owned();
    let res = app.get("/me").header("cookie", &session).send().await.unwrap();
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"authenticated": false}));
}

#[tokio::test]
async fn with_every_claim_in_x_userinfo_the_custom_mapper_claims_reach_additional_models() {
    let gunicorn = Gunicorn::start(&[]);
    let kc = FakeKeycloak::start().await;
    let mut env = sidecar_toml_env(&kc, &gunicorn.url(""));
    // A small bound, so that a token gunicorn still takes (its Authorization line must stay
    // under 8190 bytes too) can outgrow it.
    set(&mut env, "SIDECAR__HEADERS__MAX_USERINFO_BYTES", "2000");
    let app = TestApp::spawn_with(env).await;

    let token = kc
        .token()
        .sub("9b0a7e52-6a43-4c8e-8f0e-3d1a2b4c5d6e")
        .preferred_username("kim")
        .email("kim@example.org")
        .name("Kim Ñúñez")
        .claim("email_optin", json!(true))
        .claim("country_code", json!("DE"))
        .sign();
    assert_eq!(
        me(&app, Some(&token)).await,
        user("9b0a7e52-6a43-4c8e-8f0e-3d1a2b4c5d6e", "kim", "kim@example.org", "Kim Ñúñez", true, "DE"),
        "{}",
        gunicorn.log()
    );

    // A token whose claims outgrow headers.max_userinfo_bytes: the big custom claim is left
    // out (and counted); the login, the mapped fields and the small custom claim still work.
    let token = kc
        .token()
        .sub("0f4e2d6c-1b3a-4e5f-8a7b-9c0d1e2f3a4b")
        .preferred_username("lee")
        .email("lee@example.org")
        .name("Lee")
        .claim("country_code", json!("FR"))
        .claim("avatar", json!("a".repeat(3000)))
        .sign();
    assert_eq!(
        me(&app, Some(&token)).await,
        user("0f4e2d6c-1b3a-4e5f-8a7b-9c0d1e2f3a4b", "lee", "lee@example.org", "Lee", false, "FR")
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, "identity_sidecar_userinfo_claims_dropped_total{list=\"extra\"}"),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_forged_x_userinfo_never_logs_anyone_in_even_with_gunicorns_dangerous_header_map() {
    let gunicorn = Gunicorn::start(&["--header-map", "dangerous"]);
    let kc = FakeKeycloak::start().await;
    let app = TestApp::spawn_with(sidecar_toml_env(&kc, &gunicorn.url(""))).await;

    // The control: straight to gunicorn, the underscore spelling logs mallory in. This is
    // the attack the sidecar must stop.
    let direct = reqwest::Client::new();
    let res = direct.get(gunicorn.url("/me")).header("X_Userinfo", forged("mallory")).send().await.unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["global_id"], "mallory", "{}", gunicorn.log());

    // Through the sidecar, over a raw socket so no client library normalises the names:
    // anonymous with any spelling, and a valid login keeps its own identity.
    let token = kc.token().sub("alice").preferred_username("alice").email("a@x.org").name("Alice").sign();
    for header in ["X-Userinfo", "X_Userinfo", "x_userinfo", "X-USERINFO", "x-userinfo"] {
        for credential in [None, Some(&token)] {
            let mut request = format!(
                "GET /me HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}: {}\r\nConnection: close\r\n",
                forged("eve")
            );
            if let Some(token) = credential {
                request.push_str(&format!("Authorization: Bearer {token}\r\n"));
            }
            request.push_str("\r\n");
            let answer = raw(app.public, request.as_bytes()).await;
            assert_eq!(answer.status, 200, "{header}");
            let who: Value = serde_json::from_slice(&answer.body).unwrap();
            let want = match credential {
                None => json!({"authenticated": false}),
                Some(_) => user("alice", "alice", "a@x.org", "Alice", false, ""),
            };
            assert_eq!(who, want, "{header}, token: {}", credential.is_some());
        }
    }
    assert_eq!(gunicorn.users().await, ["alice", "mallory"], "eve was never created");
}

/// One fenced code block of the page and the file it claims to show.
struct Shown {
    path: String,
    code: String,
}

/// The blocks of `docs/integrations/django.md` that follow a `<!-- file: PATH -->` line.
fn shown_files(page: &str) -> Vec<Shown> {
    let mut out = Vec::new();
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        let Some(path) = line.trim().strip_prefix("<!-- file: ").and_then(|r| r.strip_suffix(" -->")) else {
            continue;
        };
        let fence = lines.next().expect("a code block after the file marker");
        assert!(fence.starts_with("```"), "{path}: the marker is followed by {fence:?}");
        let mut code = String::new();
        for line in lines.by_ref() {
            if line == "```" {
                break;
            }
            code.push_str(line);
            code.push('\n');
        }
        out.push(Shown { path: path.to_owned(), code });
    }
    out
}

#[test]
fn the_django_page_shows_the_test_projects_files_verbatim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("docs/integrations/django.md")).unwrap();
    let shown = shown_files(&page);
    let paths: Vec<&str> = shown.iter().map(|s| s.path.as_str()).collect();
    for required in [
        "tests/django/sidecar.toml",
        "tests/django/gunicorn.conf.py",
        "tests/django/requirements.txt",
        "tests/django/project/settings.py",
        "tests/django/users/models.py",
    ] {
        assert!(paths.contains(&required), "the page does not show {required}: {paths:?}");
    }
    for Shown { path, code } in shown {
        let file = std::fs::read_to_string(root.join(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(code, file, "docs/integrations/django.md shows {path} differently");
    }
}
