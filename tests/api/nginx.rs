//! A real forward-auth client: Debian's nginx with `auth_request`, running the recipe users
//! copy — `deploy/nginx/identity-sidecar.conf` byte for byte, and `deploy/nginx/site.conf`
//! with only its marked addresses and the snippet's path replaced — in front of the echo
//! upstream, asking the sidecar about every request. `docs/integrations/nginx.md` prints both
//! files; a test keeps the page equal to them.

use std::path::Path;
use std::process::Command;

use identity_sidecar::headers::OWNED;

use crate::forward_auth::{raw, request};
use crate::helpers::binary::free_port;
use crate::helpers::gateway::{self, Gateway, Scene, repo_file};
use crate::helpers::{EchoUpstream, FakeKeycloak, TestApp, base_env, closed_port, metric, set};

const SNIPPET: &str = "deploy/nginx/identity-sidecar.conf";
const SITE: &str = "deploy/nginx/site.conf";
/// Where site.conf expects the snippet (Debian's snippets folder).
const SNIPPET_INCLUDE: &str = "include /etc/nginx/snippets/identity-sidecar.conf;";

/// The nginx binary, or a failure that says how to install it.
fn nginx_binary() -> &'static str {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect(
            "nginx is not installed: run `apt-get install -y nginx-light` (scripts/services does it as root)",
        )
}

/// Replaces `from`, which must occur exactly once, by `to`: the documented edits of site.conf.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{SITE} no longer has exactly one {from:?}");
    text.replacen(from, to, 1)
}

/// site.conf as a user edits it: the sidecar, the app and the listen address, and the path of
/// the snippet (which the tests include from the repository, unchanged).
fn site_conf(snippet: &Path, listen: u16, sidecar: u16, app: u16) -> String {
    let site = std::fs::read_to_string(repo_file(SITE)).unwrap();
    let site = replace_once(&site, "server 127.0.0.1:8080;", &format!("server 127.0.0.1:{sidecar};"));
    let site = replace_once(&site, "server 127.0.0.1:8000;", &format!("server 127.0.0.1:{app};"));
    let site = replace_once(&site, "listen 80;", &format!("listen 127.0.0.1:{listen};"));
    replace_once(&site, SNIPPET_INCLUDE, &format!("include {};", snippet.display()))
}

/// A minimal nginx.conf around site.conf, as Debian's own includes conf.d in `http {}`.
fn main_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  \
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {d}/site.conf;\n}}\n"
    )
}

/// Writes nginx.conf and site.conf into a fresh folder; returns it and the nginx.conf path.
fn write_confs(
    snippet: &Path,
    listen: u16,
    sidecar: u16,
    app: u16,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    std::fs::write(dir.path().join("site.conf"), site_conf(snippet, listen, sidecar, app)).unwrap();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, main_conf(dir.path())).unwrap();
    (dir, conf)
}

/// nginx running the recipe (or `snippet`, a deliberately edited copy of it).
async fn start_recipe(sidecar: u16, app: u16, snippet: Option<&Path>) -> Gateway {
    let port = free_port();
    let shipped = repo_file(SNIPPET);
    let (dir, conf) = write_confs(snippet.unwrap_or(&shipped), port, sidecar, app);
    let mut cmd = Command::new(nginx_binary());
    cmd.arg("-p").arg(dir.path()).arg("-c").arg(&conf).arg("-e").arg(dir.path().join("error.log"));
    let log = dir.path().join("stderr.log");
    Gateway::start(cmd, port, dir, log).await
}

#[test]
fn the_nginx_recipe_passes_nginx_t_as_printed() {
    // Only the snippet's path differs from the shipped site.conf: its addresses are loopback
    // ones nginx can resolve, and `nginx -t` binds nothing.
    let dir = tempfile::tempdir().unwrap();
    let site = std::fs::read_to_string(repo_file(SITE)).unwrap();
    let site = replace_once(&site, SNIPPET_INCLUDE, &format!("include {};", repo_file(SNIPPET).display()));
    std::fs::write(dir.path().join("site.conf"), site).unwrap();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, main_conf(dir.path())).unwrap();
    let out = Command::new(nginx_binary())
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .output()
        .unwrap();
    assert!(out.status.success(), "nginx -t fails: {}", String::from_utf8_lossy(&out.stderr));
}

/// nginx cannot remove headers by prefix, so the recipe names each owned header: this fails
/// when the sidecar gains one (`src/headers.rs` OWNED) that the recipe does not cover.
#[test]
fn the_nginx_recipe_covers_every_header_the_sidecar_owns() {
    let snippet = std::fs::read_to_string(repo_file(SNIPPET)).unwrap();
    let (auth, rest) =
        snippet.split_once("location @identity_sidecar_down").expect("the auth location comes first");
    let app = rest.split_once("location / {").expect("a location /").1;
    let names: Vec<String> = OWNED.iter().map(|n| n.as_str().to_owned()).collect();
    assert!(names.iter().any(|n| n == "x-identity-active-organization"), "the v2 header is owned");
    for name in &names {
        let title: Vec<String> = name.split('-').map(|p| p[..1].to_ascii_uppercase() + &p[1..]).collect();
        let title = title.join("-");
        // The recipe's variable: $identity_status for X-Identity-Status, $identity_userinfo
        // for X-Userinfo.
        let short = name.trim_start_matches("x-identity-").trim_start_matches("x-").replace('-', "_");
        let var = format!("identity_{short}");
        let upstream_var = format!("upstream_http_{}", name.replace('-', "_"));
        for (part, line) in [
            (auth, format!("proxy_set_header {title} \"\";")),
            (app, format!("auth_request_set ${var} ${upstream_var};")),
            (app, format!("proxy_set_header {title} ${var};")),
        ] {
            assert!(part.contains(&line), "{SNIPPET} does not cover {title}: no {line:?}");
        }
    }
    assert!(
        auth.contains("proxy_set_header X-Id-Token \"\";")
            && app.contains("proxy_set_header X-Id-Token \"\";")
    );
    // Underscore spellings are dropped by nginx's defaults, which the recipe must not undo.
    for undo in ["underscores_in_headers on", "ignore_invalid_headers off"] {
        assert!(!snippet.contains(undo), "{SNIPPET} turns off the drop of underscore headers");
    }
}

#[test]
fn the_nginx_page_prints_the_recipe_files_verbatim() {
    let page = std::fs::read_to_string(repo_file("docs/integrations/nginx.md")).unwrap();
    for file in [SITE, SNIPPET] {
        let text = std::fs::read_to_string(repo_file(file)).unwrap();
        assert!(
            page.contains(&format!("```nginx\n{text}```\n")),
            "docs/integrations/nginx.md does not print {file} as it is"
        );
    }
}

#[tokio::test]
async fn every_owned_header_reaches_the_app_through_nginx_and_no_forged_one() {
    let scene = Scene::start().await;
    let nginx = start_recipe(scene.app.public.port(), scene.upstream.addr().port(), None).await;
    gateway::check_identity_headers(&scene, &nginx, &[]).await;
    gateway::check_forgeries_after_filler(&scene, &nginx, &[]).await;
}

#[tokio::test]
async fn nginx_applies_path_rules_to_the_uri_the_client_sent() {
    let scene = Scene::start().await;
    let nginx = start_recipe(scene.app.public.port(), scene.upstream.addr().port(), None).await;
    gateway::check_path_rules(&scene, &nginx).await;
}

#[tokio::test]
async fn nginx_passes_the_sidecars_401_and_403_to_the_client() {
    let scene = Scene::start().await;
    let nginx = start_recipe(scene.app.public.port(), scene.upstream.addr().port(), None).await;
    gateway::check_refusals(&scene, &nginx).await;
}

#[tokio::test]
async fn an_unreachable_sidecar_is_a_503_with_retry_after_through_nginx() {
    let upstream = EchoUpstream::start().await;
    let nginx = start_recipe(closed_port(), upstream.addr().port(), None).await;
    gateway::check_sidecar_down(&upstream, &nginx).await;

    let scene = Scene::start().await;
    let nginx = start_recipe(scene.app.public.port(), closed_port(), None).await;
    gateway::check_app_down(&nginx).await;
}

#[tokio::test]
async fn nginx_auth_request_copies_identity_headers_and_refuses_bad_tokens() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__AUTH__RULES", r#"[{"prefix":"/private","require":true}]"#);
    let app = TestApp::spawn_with(env).await;
    let nginx = start_recipe(app.public.port(), upstream.addr().port(), None).await;
    let port = nginx.port;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");

    // A valid token: the upstream sees the sidecar's headers, not the client's.
    let token = kc.token().sub("nginx-user").email("n@x.org").realm_roles(&["learner"]).sign();
    let res = http
        .get(url("/private/page?q=1"))
        .bearer_auth(&token)
        .header("X-Identity-Subject", "spoofed")
        .header("X-Identity-Email", "spoofed@evil")
        .header("X-Userinfo", "c3Bvb2ZlZA==")
        .header("X_Identity_Roles", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echo = crate::helpers::Echo::from_response(res).await;
    assert_eq!(echo.path, "/private/page");
    assert_eq!(echo.header("x-identity-status"), Some("authenticated"));
    assert_eq!(echo.header("x-identity-subject"), Some("nginx-user"));
    assert_eq!(echo.header("x-identity-email"), Some("n@x.org"));
    assert_eq!(echo.header("x-identity-roles"), Some("learner"));
    assert!(echo.header("x-identity-entitlements").is_some_and(|v| v.split('.').count() == 3));
    let all: Vec<(String, String)> = echo.headers.clone();
    assert!(!all.iter().any(|(_, v)| v.contains("spoofed") || v == "admin"), "{all:?}");
    assert!(!all.iter().any(|(n, _)| n.contains('_')), "underscore headers reached the upstream: {all:?}");

    // Invalid token: 401 to the client, nothing forwarded.
    let before = upstream.request_count();
    let res = http.get(url("/private/page")).bearer_auth("garbage").send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = http.get(url("/open")).bearer_auth(kc.token().exp_in(-300).sign()).send().await.unwrap();
    assert_eq!(res.status(), 401, "a bad token is never downgraded to anonymous");
    // No token on a required path: 401; on an open path: anonymous reaches the upstream.
    assert_eq!(http.get(url("/private/page")).send().await.unwrap().status(), 401);
    assert_eq!(upstream.request_count(), before);
    let res = http.get(url("/open")).header("X-Identity-Subject", "spoofed").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let echo = crate::helpers::Echo::from_response(res).await;
    assert_eq!(echo.header("x-identity-status"), Some("anonymous"));
    // nginx passes no header for an empty value, and never the client's.
    assert_eq!(echo.header("x-identity-subject"), None);
}

/// nginx with the recipe (or an edited copy of its snippet) in front of an app whose
/// `/courses` need a login.
async fn courses_behind_nginx(
    kc: &FakeKeycloak,
    upstream: &EchoUpstream,
    edit: impl FnOnce(String) -> String,
) -> (TestApp, tempfile::TempDir, Gateway) {
    let mut env = base_env(kc);
    set(&mut env, "SIDECAR__AUTH__RULES", r#"[{"prefix":"/courses","require":true}]"#);
    let app = TestApp::spawn_with(env).await;
    let dir = tempfile::tempdir().unwrap();
    let snippet = dir.path().join("identity-sidecar.conf");
    std::fs::write(&snippet, edit(std::fs::read_to_string(repo_file(SNIPPET)).unwrap())).unwrap();
    let nginx = start_recipe(app.public.port(), upstream.addr().port(), Some(&snippet)).await;
    (app, dir, nginx)
}

#[tokio::test]
async fn a_raw_non_ascii_byte_in_a_protected_uri_is_refused_end_to_end_through_nginx() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let (app, _dir, nginx) = courses_behind_nginx(&kc, &upstream, |conf| conf).await;
    let nginx = ("127.0.0.1", nginx.port);

    // nginx passes `$request_uri` with the byte itself; the sidecar reads it as bytes, so the
    // rule on /courses still applies. An unreadable path (not UTF-8 once decoded) is refused
    // with 403, the other status `auth_request` passes on.
    let anonymous = raw(nginx, &request("GET", b"/courses/intro?q=\xff", &[])).await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let in_path = raw(nginx, &request("GET", b"/courses/\xff", &[])).await;
    assert_eq!(in_path.status, 403, "{in_path:?}");
    assert_eq!(upstream.request_count(), 0, "a refused request reached the app");

    // Signed in, the same query passes the gate (a byte in a query is no reason to refuse):
    // nginx forwards it, raw, and the echo app's own HTTP parser (hyper) refuses a raw byte in
    // a request line with a bodiless 400, so the pass shows in the sidecar's counters. The
    // path with the byte stays refused.
    let bearer = format!("Authorization: Bearer {}", kc.token().sub("u-raw").sign());
    let passed = "identity_sidecar_requests_total{mode=\"forward_auth\",class=\"2xx\"}";
    let before = metric(&app.metrics().await, passed);
    let signed_in = raw(nginx, &request("GET", b"/courses/intro?q=\xff", &[bearer.as_bytes()])).await;
    assert!(![401, 403, 500].contains(&signed_in.status), "{signed_in:?}");
    assert_eq!(metric(&app.metrics().await, passed), before + 1.0);
    let in_path = raw(nginx, &request("GET", b"/courses/\xff", &[bearer.as_bytes()])).await;
    assert_eq!(in_path.status, 403, "{in_path:?}");
    assert_eq!(metric(&app.metrics().await, passed), before + 1.0);
}

#[tokio::test]
async fn a_gateway_that_forgets_x_forwarded_uri_fails_closed_through_nginx() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let forget = |conf: String| {
        let line = "    proxy_set_header X-Forwarded-Uri $request_uri;\n";
        assert!(conf.contains(line), "the recipe changed: {conf}");
        conf.replace(line, "")
    };
    let (_app, _dir, nginx) = courses_behind_nginx(&kc, &upstream, forget).await;
    let nginx = ("127.0.0.1", nginx.port);
    // v1 judged the auth path itself, which no rule covers: everything passed. Now the rules
    // cannot be applied, so nothing does, signed in or not, open path or protected.
    let bearer = format!("Authorization: Bearer {}", kc.token().sign());
    for target in [&b"/courses/intro"[..], b"/open"] {
        assert_eq!(raw(nginx, &request("GET", target, &[])).await.status, 403);
        assert_eq!(raw(nginx, &request("GET", target, &[bearer.as_bytes()])).await.status, 403);
    }
    assert_eq!(upstream.request_count(), 0, "a request reached the app without being judged");
}
