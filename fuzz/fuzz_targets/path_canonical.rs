//! Arbitrary bytes as a request target for the path rules (docs/contract.md §2 v2). `Rules::judge` must
//! answer — the applicable rules or a refusal — and never panic. And no target is judged more
//! leniently than its folded path written plainly, which the target is a spelling of, for an
//! anonymous caller, a login without roles and a login with roles.
//!
//! The bytes are judged twice: read as text (`from_utf8_lossy`), and as forward-auth reads a
//! raw `X-Forwarded-Uri` (bytes outside printable ASCII percent-encoded, never dropped).
#![no_main]

use std::sync::LazyLock;

use identity_sidecar::auth::rules::{Decision, Holdings, PathError, Rules, folded_path};
use identity_sidecar::config::RuleConfig;
use libfuzzer_sys::fuzz_target;
use percent_encoding::{AsciiSet, CONTROLS, percent_encode};

fn rule(prefix: &str, require: bool, roles: &[&str]) -> RuleConfig {
    RuleConfig {
        prefix: prefix.into(),
        require,
        roles_any: roles.iter().map(|r| r.to_string()).collect(),
        ..RuleConfig::default()
    }
}

/// Plain (lower-case) prefixes, closed and open, nested and format-suffix look-alikes.
static RULES: LazyLock<Rules> = LazyLock::new(|| {
    Rules::try_new(&[
        rule("/courses", true, &[]),
        rule("/api", true, &[]),
        rule("/api/v1", false, &[]),
        rule("/api/v1/admin", true, &["admin"]),
        rule("/app", true, &[]),
        rule("/app.js", false, &[]),
        rule("/staff", false, &["staff"]),
        rule("/public", false, &[]),
        rule("/é", true, &[]),
    ])
    .expect("plain prefixes")
});

/// How strict a verdict is; a refused path is the strictest.
fn strictness(verdict: &Result<Decision, PathError>) -> u8 {
    match verdict {
        Ok(Decision::Allow) => 0,
        Ok(Decision::Forbidden) => 1,
        Ok(Decision::Unauthenticated) => 2,
        Err(_) => 3,
    }
}

fn check(raw: &str) {
    let rules = &*RULES;
    let judged = rules.judge(raw);
    let folded = folded_path(raw);
    assert_eq!(judged.is_err(), folded.is_err(), "judge and folded_path disagree on {raw:?}");
    let Ok(folded) = folded else { return };
    // The folded path written as a target that decodes to itself.
    let plain = folded.replace('%', "%25").replace('?', "%3F").replace('#', "%23");
    let plainly = rules.judge(&plain);
    assert!(plainly.is_ok(), "{raw:?} folds to {plain:?}, which is refused: {plainly:?}");
    assert_eq!(folded_path(&plain).as_deref(), Ok(folded.as_str()), "folding is not idempotent");

    let (roles, admin) = (vec!["staff".to_string()], vec!["admin".to_string()]);
    let callers = [
        None,
        Some(Holdings::default()),
        Some(Holdings { roles: &roles, ..Holdings::default() }),
        Some(Holdings { roles: &admin, ..Holdings::default() }),
    ];
    for caller in callers {
        let spelled = judged.as_ref().map(|a| a.decide(caller)).map_err(|e| *e);
        let written = plainly.as_ref().map(|a| a.decide(caller)).map_err(|e| *e);
        assert!(
            strictness(&spelled) >= strictness(&written),
            "{raw:?} → {spelled:?} is more lenient than {plain:?} → {written:?}"
        );
    }
}

/// What forward-auth percent-encodes in a raw header value: controls, space and non-ASCII.
const RAW_BYTES: &AsciiSet = &CONTROLS.add(b' ');

fuzz_target!(|data: &[u8]| {
    check(&String::from_utf8_lossy(data));
    check(&percent_encode(data, RAW_BYTES).to_string());
});
