//! Arbitrary bytes as a bearer token: the header checks (`pre_parse`) and, for what passes
//! them, the claim rules (`check_claims`) must answer with a `Reject` or a principal — never
//! panic, whatever the shape, encoding or size.
#![no_main]

use identity_sidecar::auth::validate::{Policy, check_claims, parse_allowed_algorithm, pre_parse};
use libfuzzer_sys::fuzz_target;

fn policy() -> Policy {
    Policy {
        issuer: "https://kc.example/realms/r".into(),
        audiences: vec!["app".into()],
        algorithms: ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
            .iter()
            .map(|a| parse_allowed_algorithm(a).expect("allowed algorithm"))
            .collect(),
        require_typ: true,
        leeway_secs: 30,
        max_token_bytes: 16 * 1024,
        org_claim: "organization".into(),
        client_roles_of: vec!["app".into()],
    }
}

fuzz_target!(|data: &[u8]| {
    // Header values reach the validator as `&str` (non-ASCII credentials are refused before).
    let token = String::from_utf8_lossy(data);
    let policy = policy();
    if let Ok(unverified) = pre_parse(&token, &policy) {
        assert!(policy.algorithms.contains(&unverified.alg), "an algorithm outside the policy passed");
        for now in [0, 1_700_000_000, u64::MAX] {
            let _ = check_claims(&unverified, &policy, now);
        }
    }
});
