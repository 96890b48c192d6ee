//! Arbitrary bytes as the organization claim: as JSON when they parse, and always as a string
//! claim (which `parse_org_claim` may unwrap once as stringified JSON). The result must be
//! sorted, deduplicated, bounded and deterministic — never a panic.
#![no_main]

use identity_sidecar::auth::org_claim::{ClaimedOrgs, MAX_ALIAS_BYTES, MAX_ENTRIES, parse_org_claim};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn check(value: &Value) {
    let got: ClaimedOrgs = parse_org_claim(Some(value));
    assert!(got.orgs.windows(2).all(|w| w[0] < w[1]), "not strictly sorted");
    assert!(
        got.orgs.windows(2).all(|w| !(w[0].alias == w[1].alias && w[0].id.is_none())),
        "an alias-only entry next to an id-bearing twin"
    );
    assert!(got.orgs.iter().all(|o| !o.alias.is_empty() && o.alias.len() <= MAX_ALIAS_BYTES));
    assert!(got.orgs.len() <= MAX_ENTRIES, "more entries than the cap");
    assert_eq!(got, parse_org_claim(Some(value)), "not deterministic");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        check(&value);
    }
    check(&Value::String(String::from_utf8_lossy(data).into_owned()));
});
