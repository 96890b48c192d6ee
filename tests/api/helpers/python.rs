//! Python peers installed from PyPI into virtualenvs cached under Cargo's target directory
//! (`target/<name>`), so a fresh clone gets them on its first test run and later runs reuse
//! them: the Django client (`tests/django/requirements.txt`) and the PyPI build of Caddy
//! (`tests/caddy/requirements.txt`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Cargo's target directory (the venvs live there, outside the source tree).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Runs `command` to completion, panicking with its output when it fails.
pub fn run(command: &mut Command, what: &str) {
    let out = command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The virtualenv `target/<name>` with the pinned packages of `requirements` (a path in the
/// repository), created on first use and rebuilt when the file changes. Tests run as separate
/// processes: a file lock lets one build it while the others wait.
pub fn venv(name: &str, requirements: &str) -> PathBuf {
    use sha2::Digest as _;
    let dir = target_dir().join(name);
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join(requirements);
    let pins = hex::encode(sha2::Sha256::digest(std::fs::read(&requirements).unwrap()));
    let stamp = dir.join("requirements.sha256");
    std::fs::create_dir_all(target_dir()).unwrap();
    let lock = std::fs::File::create(target_dir().join(format!("{name}.lock"))).unwrap();
    lock.lock().unwrap_or_else(|e| panic!("lock target/{name}.lock: {e}"));
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == pins) {
        return dir;
    }
    let python = Command::new("python3")
        .args(["-c", "import sys, venv, ensurepip; print(sys.version_info >= (3, 11))"])
        .output();
    match python {
        Err(_) => panic!("python3 is missing: install it with `apt-get install python3 python3-venv`"),
        Ok(out) if !out.status.success() => panic!(
            "python3 cannot create virtualenvs (the venv/ensurepip modules are missing): \
             install them with `apt-get install python3-venv`\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Ok(out) if out.stdout.trim_ascii() != b"True" => {
            panic!("the Python peers need Python 3.11 or later; python3 is older")
        }
        Ok(_) => {}
    }
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("python3").arg("-m").arg("venv").arg(&dir), &format!("python3 -m venv target/{name}"));
    run(
        Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "--no-input", "-r"])
            .arg(&requirements),
        &format!("pip install -r {}", requirements.display()),
    );
    std::fs::write(&stamp, pins).unwrap();
    dir
}
