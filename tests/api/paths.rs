//! Path rules fail closed (docs/contract.md §2 v2), through the real App over raw TCP: every spelling of a
//! protected path that an app server would route to the same place is refused like the path
//! itself and never reaches the upstream; paths the gate cannot read get a 400 problem; a
//! login still passes. Raw sockets, because HTTP clients normalise `\`, dot segments and
//! percent-encoding before sending.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::{EchoUpstream, FakeKeycloak, TestApp, base_env, set};

/// A proxy in front of the echo upstream, with `/courses` requiring a login.
async fn courses_app(kc: &FakeKeycloak, upstream: &EchoUpstream) -> TestApp {
    let mut env = base_env(kc);
    set(&mut env, "SIDECAR__UPSTREAM__URL", upstream.url());
    set(&mut env, "SIDECAR__AUTH__RULES", r#"[{"prefix":"/courses","require":true}]"#);
    TestApp::spawn_with(env).await
}

/// An answer read off the wire.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn problem(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.head))
    }
}

/// Sends `GET <target>` as raw bytes (the target exactly as given, never normalised) with
/// `extra` header lines, on a connection the server closes after answering, and reads the
/// whole answer (at most 10 s).
async fn get_raw(app: &TestApp, target: &[u8], extra: &str) -> Answer {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: app.example\r\n{extra}Connection: close\r\n\r\n").as_bytes(),
    );
    let mut stream = TcpStream::connect(app.public).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the sidecar answers and closes the connection")
        .expect("read the answer");
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Answer { status, head, body: answer[split + 4..].to_vec() }
}

/// The bypasses an outside review found against a rule on `/courses`, and a few more spellings
/// of the same kind.
const SPELLINGS: [&str; 14] = [
    "/courses/x",
    "/Courses/x",
    "/COURSES/X",
    "/courses;jsessionid=1/x",
    "/;/courses/x",
    "/courses%3B/x",
    "/courses.json",
    "/courses./x",
    "/courses%20/x",
    "/courses\\x",
    "/courses%5Cx",
    "/courses%5cx",
    "//./courses%2Fx",
    "/Courses.;v=1/x?y=1",
];

#[tokio::test]
async fn every_spelling_of_a_protected_path_asks_for_a_login_and_never_reaches_the_upstream() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = courses_app(&kc, &upstream).await;
    for target in SPELLINGS {
        let answer = get_raw(&app, target.as_bytes(), "").await;
        assert_eq!(answer.status, 401, "{target}: {}", answer.head);
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"), "{target}");
    }
    assert_eq!(upstream.request_count(), 0, "the upstream saw {:?}", upstream.requests());
    // Paths that only look alike are not under the rule.
    for target in ["/coursesx", "/courses.json/x", "/x/courses"] {
        assert_eq!(get_raw(&app, target.as_bytes(), "").await.status, 200, "{target}");
    }
    assert_eq!(upstream.request_count(), 3);
}

#[tokio::test]
async fn a_login_still_passes_under_every_spelling() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = courses_app(&kc, &upstream).await;
    let bearer = format!("Authorization: Bearer {}\r\n", kc.token().sub("u-paths").sign());
    let answer = get_raw(&app, b"/courses/x", &bearer).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    let seen = upstream.last_request().expect("the upstream saw the request");
    assert_eq!(seen.path, "/courses/x");
    assert_eq!(seen.header("x-identity-subject"), Some("u-paths"));
    for target in ["/Courses/x", "/courses.json", "/courses\\x"] {
        assert_eq!(get_raw(&app, target.as_bytes(), &bearer).await.status, 200, "{target}");
    }
}

#[tokio::test]
async fn a_path_the_gate_cannot_read_gets_a_400_problem_and_never_reaches_the_upstream() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = courses_app(&kc, &upstream).await;
    for (target, why) in [
        ("/courses%0a/x", "control character"),
        ("/public/%00", "control character"),
        ("/courses/%252e%252e/admin", "percent-encoded twice"),
        ("/%2563ourses/x", "percent-encoded twice"),
        ("/courses/%ff", "not valid UTF-8"),
        ("/public/..%3B/courses", "only of dots"),
        ("/public/.../courses", "only of dots"),
        ("/public/..%5Ccourses", "only of dots"),
    ] {
        let answer = get_raw(&app, target.as_bytes(), "").await;
        assert_eq!(answer.status, 400, "{target}: {}", answer.head);
        assert_eq!(answer.header("content-type"), Some("application/problem+json"), "{target}");
        let detail = answer.problem()["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains(why), "{target}: {detail}");
    }
    // A raw byte that is not UTF-8 never gets as far as the rules: hyper refuses the request
    // line itself.
    let answer = get_raw(&app, b"/courses/\xff", "").await;
    assert_eq!(answer.status, 400, "{}", answer.head);
    assert_eq!(upstream.request_count(), 0, "the upstream saw {:?}", upstream.requests());
}

#[tokio::test]
async fn forward_auth_judges_the_folded_forwarded_uri_too() {
    let kc = FakeKeycloak::start().await;
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__AUTH__RULES", r#"[{"prefix":"/courses","require":true}]"#);
    let app = TestApp::spawn_with(env).await;
    // Loopback is a trusted peer by default, so X-Forwarded-Uri is believed.
    for uri in ["/Courses/x", "/courses;jsessionid=1/x", "/courses.json", "/courses\\x"] {
        let res = app.forward_auth("GET", uri).send().await.unwrap();
        assert_eq!(res.status(), 401, "{uri}");
    }
    let token = kc.token().sign();
    let res = app.forward_auth("GET", "/Courses/x").bearer_auth(token).send().await.unwrap();
    assert_eq!(res.status(), 200);
}
