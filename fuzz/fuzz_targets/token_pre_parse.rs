//! Arbitrary bytes as a bearer token: the header checks (`pre_parse`) and, for what passes
//! them, the claim rules (`check_claims`) must answer with a `Reject` or a principal — never
//! panic, whatever the shape, encoding or size.
#![no_main]

use identity_sidecar::auth::validate::{Policy, check_claims, pre_parse};
use identity_sidecar::config::Config;
use libfuzzer_sys::fuzz_target;

/// Built from a configuration, as at startup, so the fuzzed policy has every field the real
/// one has.
fn policy() -> Policy {
    let mut config = Config::default();
    config.oidc.issuer = "https://kc.example/realms/r".into();
    config.oidc.audiences = vec!["app".into()];
    config.oidc.algorithms = ["RS256", "PS256", "ES256", "ES384", "EdDSA"].map(String::from).to_vec();
    config.oidc.client_roles_of = vec!["app".into()];
    Policy::try_new(&config).expect("allowed algorithms")
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
