//! A real gateway (nginx, Caddy) running a recipe from `deploy/` in front of the echo upstream
//! and the sidecar, and the checks every recipe must pass (issue 15, docs/contract.md §6 v2): every owned
//! header reaches the app; forged dash and underscore spellings never do, also after 100+
//! filler headers; path rules judge the original URI, raw bytes included; 401 and 403 reach
//! the client as the sidecar gave them; a `..` path is refused, never a 500; an unreachable
//! sidecar is a 503 with `Retry-After`.
//!
//! Requests go over raw TCP ([`crate::forward_auth::raw`]): an HTTP client would refuse to send
//! a raw `0xFF` or normalise a hostile header.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use identity_sidecar::headers::OWNED;

use super::{Echo, EchoUpstream, FakeKeycloak, TestApp, base_env, set};
use crate::forward_auth::{Answer, raw, request};

/// A file of the repository (`deploy/nginx/site.conf`).
pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A gateway process started by a test; killed (by its own handle, so by its pid) when
/// dropped.
pub struct Gateway {
    child: Child,
    /// Where clients connect (127.0.0.1).
    pub port: u16,
    /// Holds the gateway's configuration, logs and temporary files.
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Starts `command` (its stdout and stderr go to `log`) and waits until `port` accepts.
    pub async fn start(mut command: Command, port: u16, dir: tempfile::TempDir, log: PathBuf) -> Gateway {
        let out = std::fs::File::create(&log).expect("gateway log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
        let mut gateway = Gateway { child, port, dir, log };
        // Generous: the machine is busy.
        for _ in 0..600 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return gateway;
            }
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!("the gateway exited ({status}): {}", gateway.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the gateway did not listen on {port} within 30 s: {}", gateway.log());
    }

    /// What the gateway wrote to its log (and, for nginx, its error log in `dir`).
    pub fn log(&self) -> String {
        let mut text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default());
        text
    }

    /// Sends raw request bytes to the gateway.
    pub async fn raw(&self, bytes: &[u8]) -> Answer {
        raw(("127.0.0.1", self.port), bytes).await
    }
}

/// The sidecar behind a recipe: `/courses` needs a login, `/staff` the `staff` role,
/// everything else is open. `server.max_headers` is raised so a request with 100+ filler
/// headers is judged (the default, 100, answers it 431).
pub struct Scene {
    pub kc: FakeKeycloak,
    pub upstream: EchoUpstream,
    pub app: TestApp,
}

impl Scene {
    pub async fn start() -> Scene {
        let kc = FakeKeycloak::start().await;
        let upstream = EchoUpstream::start().await;
        let mut env = base_env(&kc);
        set(
            &mut env,
            "SIDECAR__AUTH__RULES",
            r#"[{"prefix":"/courses","require":true},{"prefix":"/staff","require":true,"roles_any":["staff"]}]"#,
        );
        set(&mut env, "SIDECAR__SERVER__MAX_HEADERS", "400");
        let app = TestApp::spawn_with(env).await;
        Scene { kc, upstream, app }
    }

    /// A token with a value for every claim-backed owned header.
    pub fn learner_token(&self) -> String {
        self.kc.token().sub("gw-learner").email("learner@example.org").realm_roles(&["learner"]).sign()
    }

    /// The sidecar's own forward-auth answer for `uri` with this `Authorization` value.
    pub async fn sidecar_answer(&self, uri: &str, bearer: Option<&str>) -> reqwest::Response {
        let mut req = self.app.forward_auth("GET", uri);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("the sidecar answers")
    }
}

/// Header names the gateway must strip when a client sends them, in dash and underscore
/// spellings: every owned header (the v2 `X-Identity-Active-Organization` among them), `X-Id-Token`, and
/// `extra` (for a recipe that strips by prefix: a name no version has owned yet).
pub fn forged_lines(extra: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = OWNED.iter().map(|n| n.as_str().to_owned()).collect();
    names.push("x-id-token".into());
    names.extend(extra.iter().map(|s| s.to_ascii_lowercase()));
    let mut lines = Vec::new();
    for name in names {
        // Title-Case as clients send it, all-underscore, and mixed (`x-identity_email`).
        let title: String = name
            .split('-')
            .map(|p| {
                let mut c = p.chars();
                c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("-");
        lines.push(format!("{title}: forged-{name}"));
        lines.push(format!("{}: forged-{name}", title.replace('-', "_")));
        if let Some(i) = name.rfind('-') {
            let mut mixed = name.clone();
            mixed.replace_range(i..=i, "_");
            lines.push(format!("{mixed}: forged-{name}"));
        }
    }
    lines
}

/// `n` harmless headers, to push identity headers past a 100-header reading limit.
pub fn filler_lines(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("X-Filler-{i}: {i}")).collect()
}

/// A GET with these header lines, over raw TCP.
pub fn get(target: &[u8], lines: &[String]) -> Vec<u8> {
    let refs: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    request("GET", target, &refs)
}

/// The echo of an answer that reached the app.
pub fn echo_of(answer: &Answer) -> Echo {
    assert_eq!(answer.status, 200, "{answer:?}");
    serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("not an echo ({e}): {:?}", String::from_utf8_lossy(&answer.body)))
}

/// Asserts that no forged value and no owned header in an underscore spelling reached the app.
pub fn assert_nothing_forged(echo: &Echo) {
    for (name, value) in &echo.headers {
        assert!(!value.contains("forged"), "a forged header reached the app: {name}: {value}");
        assert!(
            !(name.contains('_') && identity_sidecar::headers::is_owned(name)),
            "an underscore spelling reached the app: {name}: {value}"
        );
    }
}

/// Every owned header reaches the app with the value the sidecar gave (an empty value may
/// arrive empty or not at all), for a signed-in request carrying forged copies of all of
/// them; and an anonymous request with the same forgeries reaches the app as anonymous.
pub async fn check_identity_headers(scene: &Scene, gw: &Gateway, extra_forged: &[&str]) {
    let token = scene.learner_token();
    let mut lines = forged_lines(extra_forged);
    lines.push(format!("Authorization: Bearer {token}"));
    let echo = echo_of(&gw.raw(&get(b"/courses/intro?x=1", &lines)).await);
    assert_eq!(echo.path, "/courses/intro");
    assert_nothing_forged(&echo);

    let sidecar = scene.sidecar_answer("/courses/intro?x=1", Some(&token)).await;
    assert_eq!(sidecar.status(), 200);
    let mut non_empty = 0;
    for name in OWNED.iter() {
        let expected =
            sidecar.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let got = echo.header(name.as_str()).unwrap_or_default();
        assert_eq!(got, expected, "{name} at the app differs from the sidecar's answer: {:?}", echo.headers);
        assert!(echo.headers.iter().filter(|(n, _)| n == name.as_str()).count() <= 1, "{name} twice");
        non_empty += usize::from(!expected.is_empty());
    }
    // status, subject, email, username, roles, entitlements, userinfo at least.
    assert!(non_empty >= 7, "too few owned headers had a value: {:?}", echo.headers);
    assert_eq!(echo.header("x-identity-subject"), Some("gw-learner"));
    assert_eq!(echo.header("x-identity-roles"), Some("learner"));

    let anonymous = echo_of(&gw.raw(&get(b"/open", &forged_lines(extra_forged))).await);
    assert_nothing_forged(&anonymous);
    assert_eq!(anonymous.header("x-identity-status"), Some("anonymous"));
    for name in OWNED.iter().filter(|n| n.as_str() != "x-identity-status") {
        assert_eq!(
            anonymous.header(name.as_str()).unwrap_or_default(),
            "",
            "{name}: {:?}",
            anonymous.headers
        );
    }
}

/// The same forgeries after 120 filler headers (APISIX's Lua strip read only the first 100).
pub async fn check_forgeries_after_filler(scene: &Scene, gw: &Gateway, extra_forged: &[&str]) {
    for bearer in [None, Some(scene.learner_token())] {
        let mut lines = filler_lines(120);
        lines.extend(forged_lines(extra_forged));
        if let Some(token) = &bearer {
            lines.push(format!("Authorization: Bearer {token}"));
        }
        let echo = echo_of(&gw.raw(&get(b"/open/page", &lines)).await);
        assert_nothing_forged(&echo);
        assert!(echo.header("x-filler-119").is_some(), "the filler did not reach the app");
        let status = if bearer.is_some() { "authenticated" } else { "anonymous" };
        assert_eq!(echo.header("x-identity-status"), Some(status));
    }
}

/// Path rules judge the URI the client sent: folded spellings, a raw non-ASCII byte, and a
/// `..` segment (refused, never a 500) — and nothing refused reaches the app.
pub async fn check_path_rules(scene: &Scene, gw: &Gateway) {
    let bearer = format!("Authorization: Bearer {}", scene.learner_token());
    let signed_in = [bearer.clone()];
    let before = scene.upstream.request_count();
    for target in [&b"/courses/intro"[..], b"/Courses/intro", b"/courses;x=1/intro"] {
        let answer = gw.raw(&get(target, &[])).await;
        assert_eq!(answer.status, 401, "{}: {answer:?}", String::from_utf8_lossy(target));
    }
    // A raw byte in the query: the rule still applies (nginx), or the gateway refuses the
    // request line itself (Caddy: Go's HTTP server answers 400).
    let answer = gw.raw(&get(b"/courses/intro?q=\xff", &[])).await;
    assert!([400, 401].contains(&answer.status), "{answer:?}");
    // A raw byte in the path is not readable once decoded: the sidecar refuses it, signed in
    // or not.
    for lines in [&[][..], &signed_in[..]] {
        let answer = gw.raw(&get(b"/courses/\xff", lines)).await;
        assert_eq!(answer.status, 403, "{answer:?}");
    }
    // `..` segments, as written and percent-encoded: the sidecar's 403, not a 500 (v1's nginx
    // recipe), and not let through.
    for target in [&b"/open/../courses/intro"[..], b"/open/%2e%2e/courses/intro", b"/courses/../staff/x"] {
        for lines in [&[][..], &signed_in[..]] {
            let answer = gw.raw(&get(target, lines)).await;
            assert_eq!(answer.status, 403, "{}: {answer:?}", String::from_utf8_lossy(target));
        }
    }
    assert_eq!(scene.upstream.request_count(), before, "a refused request reached the app");
    // Signed in, the protected path passes.
    let echo = echo_of(&gw.raw(&get(b"/courses/intro", &signed_in)).await);
    assert_eq!(echo.header("x-identity-subject"), Some("gw-learner"));
}

/// 401 (no token, bad token) and 403 (missing role) reach the client with the sidecar's
/// `WWW-Authenticate`, and nothing reaches the app.
pub async fn check_refusals(scene: &Scene, gw: &Gateway) {
    let before = scene.upstream.request_count();
    let anonymous = gw.raw(&get(b"/courses/intro", &[])).await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"), "{anonymous:?}");

    let bad = gw.raw(&get(b"/open", &["Authorization: Bearer not-a-token".to_owned()])).await;
    assert_eq!(bad.status, 401, "a bad token is never downgraded to anonymous: {bad:?}");
    let challenge = bad.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer error=\"invalid_token\""), "{bad:?}");

    let token = scene.learner_token();
    let forbidden = gw.raw(&get(b"/staff/report", &[format!("Authorization: Bearer {token}")])).await;
    assert_eq!(forbidden.status, 403, "{forbidden:?}");
    let sidecar = scene.sidecar_answer("/staff/report", Some(&token)).await;
    assert_eq!(sidecar.status(), 403);
    let expected = sidecar.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(forbidden.header("www-authenticate").map(str::to_owned), expected, "{forbidden:?}");
    // Each refusal is a problem document with at most one challenge.
    for answer in [&anonymous, &bad, &forbidden] {
        assert_eq!(answer.header("content-type"), Some("application/problem+json"), "{answer:?}");
        let challenges = answer.headers.iter().filter(|(n, _)| n == "www-authenticate").count();
        assert!(challenges <= 1, "{answer:?}");
    }
    assert_eq!(scene.upstream.request_count(), before, "a refused request reached the app");
}

/// With the sidecar unreachable, a request is answered 503 with `Retry-After`, never passed.
pub async fn check_sidecar_down(upstream: &EchoUpstream, gw: &Gateway) {
    for (target, lines) in
        [(&b"/open"[..], vec![]), (b"/courses/intro", vec!["Authorization: Bearer x.y.z".to_owned()])]
    {
        let answer = gw.raw(&get(target, &lines)).await;
        assert_eq!(answer.status, 503, "{answer:?}\n{}", gw.log());
        let retry = answer.header("retry-after").unwrap_or_default();
        assert!(retry.parse::<u32>().is_ok_and(|s| s > 0), "{answer:?}");
        assert_eq!(answer.header("content-type"), Some("application/problem+json"), "{answer:?}");
    }
    assert_eq!(upstream.request_count(), 0, "a request passed without the sidecar");
}

/// With the sidecar up and the app unreachable, the gateway's own 502 stands: the 503 is only
/// for an unreachable sidecar.
pub async fn check_app_down(gw: &Gateway) {
    let answer = gw.raw(&get(b"/open", &[])).await;
    assert_eq!(answer.status, 502, "{answer:?}\n{}", gw.log());
}
