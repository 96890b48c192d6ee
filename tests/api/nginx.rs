//! A real forward-auth client: Debian's nginx with `auth_request` in front of the echo
//! upstream, asking the sidecar about every request (the configuration the README gives).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::forward_auth::{raw, request};
use crate::helpers::binary::free_port;
use crate::helpers::{EchoUpstream, FakeKeycloak, TestApp, base_env, metric, set};

/// The owned headers nginx copies from the auth answer onto the upstream request.
const COPIED: [&str; 11] = [
    "X-Identity-Status",
    "X-Identity-Subject",
    "X-Identity-Email",
    "X-Identity-Username",
    "X-Identity-Name",
    "X-Identity-Roles",
    "X-Identity-Organizations",
    "X-Identity-Managed-Organizations",
    "X-Identity-Contracts",
    "X-Identity-Entitlements",
    "X-Userinfo",
];

/// nginx's variable for an upstream response header (`X-Identity-Status` →
/// `upstream_http_x_identity_status`).
fn var(header: &str) -> String {
    header.to_ascii_lowercase().replace('-', "_")
}

/// The `auth_request` configuration from the README, with test ports.
pub fn nginx_conf(dir: &std::path::Path, listen: u16, sidecar: u16, upstream: u16) -> String {
    let mut copy = String::new();
    for h in COPIED {
        let v = var(h);
        copy.push_str(&format!(
            "      auth_request_set ${v} $upstream_http_{v};\n      proxy_set_header {h} ${v};\n"
        ));
    }
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{listen};
    location = /_sidecar_auth {{
      internal;
      proxy_pass http://127.0.0.1:{sidecar}/_sidecar/auth;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Forwarded-Method $request_method;
      proxy_set_header X-Forwarded-Uri $request_uri;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Proto $scheme;
      # The identity headers (entitlement token, X-Userinfo) outgrow the 4k default.
      proxy_buffer_size 16k;
      proxy_buffers 8 16k;
    }}
    location / {{
      auth_request /_sidecar_auth;
{copy}      proxy_pass http://127.0.0.1:{upstream};
    }}
  }}
}}
"#
    )
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_nginx(dir: &std::path::Path, conf: &str, port: u16) -> Nginx {
    for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let nginx = which_nginx();
    let child = Command::new(nginx)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts (scripts/services installs it)");
    let guard = Nginx(child);
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return guard;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    panic!("nginx did not listen: {log}");
}

fn which_nginx() -> &'static str {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nginx is installed (scripts/services installs Debian's nginx-light)")
}

#[tokio::test]
async fn nginx_auth_request_copies_identity_headers_and_refuses_bad_tokens() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__AUTH__RULES", r#"[{"prefix":"/private","require":true}]"#);
    let app = TestApp::spawn_with(env).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = nginx_conf(dir.path(), port, app.public.port(), upstream.addr().port());
    let _nginx = start_nginx(dir.path(), &conf, port).await;
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

/// nginx with the README's configuration in front of an app whose `/courses` need a login.
async fn courses_behind_nginx(
    kc: &FakeKeycloak,
    upstream: &EchoUpstream,
    edit: impl FnOnce(String) -> String,
) -> (TestApp, tempfile::TempDir, Nginx, u16) {
    let mut env = base_env(kc);
    set(&mut env, "SIDECAR__AUTH__RULES", r#"[{"prefix":"/courses","require":true}]"#);
    let app = TestApp::spawn_with(env).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = edit(nginx_conf(dir.path(), port, app.public.port(), upstream.addr().port()));
    let nginx = start_nginx(dir.path(), &conf, port).await;
    (app, dir, nginx, port)
}

#[tokio::test]
async fn a_raw_non_ascii_byte_in_a_protected_uri_is_refused_end_to_end_through_nginx() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let (app, _dir, _nginx, port) = courses_behind_nginx(&kc, &upstream, |conf| conf).await;
    let nginx = ("127.0.0.1", port);

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
        let line = "      proxy_set_header X-Forwarded-Uri $request_uri;\n";
        assert!(conf.contains(line), "the README configuration changed: {conf}");
        conf.replace(line, "")
    };
    let (_app, _dir, _nginx, port) = courses_behind_nginx(&kc, &upstream, forget).await;
    let nginx = ("127.0.0.1", port);
    // v1 judged the auth path itself, which no rule covers: everything passed. Now the rules
    // cannot be applied, so nothing does, signed in or not, open path or protected.
    let bearer = format!("Authorization: Bearer {}", kc.token().sign());
    for target in [&b"/courses/intro"[..], b"/open"] {
        assert_eq!(raw(nginx, &request("GET", target, &[])).await.status, 403);
        assert_eq!(raw(nginx, &request("GET", target, &[bearer.as_bytes()])).await.status, 403);
    }
    assert_eq!(upstream.request_count(), 0, "a request reached the app without being judged");
}
