//! Arbitrary header name/value pairs as a client sends them, then the strip-then-inject step
//! of docs/contract.md §5. Invariants: no client value of an owned header (any spelling) survives, every
//! header the sidecar emits is there exactly once with the rendered value, and every other
//! header is exactly as the client sent it.
//!
//! Input format: records separated by `\n`, each `name:value` (split at the first `:`);
//! records whose name or value `http` refuses are skipped, as hyper would refuse them. The
//! whole input, read as text, is also the caller's identity (subject, email, name, roles,
//! organizations), so values that need percent-encoding are rendered too.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use identity_sidecar::auth::validate::Principal;
use identity_sidecar::headers::{B2b, OWNED, Status, inject, is_owned, render};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut sent = HeaderMap::new();
    for record in data.split(|b| *b == b'\n') {
        let Some(colon) = record.iter().position(|b| *b == b':') else { continue };
        let (name, value) = (&record[..colon], &record[colon + 1..]);
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) else {
            continue;
        };
        sent.append(name, value);
    }
    let text = String::from_utf8_lossy(data).into_owned();
    let words: Vec<String> = text.split(['\n', ':']).map(str::to_owned).collect();
    let principal = Principal {
        sub: text.clone(),
        sid: None,
        exp: u64::MAX,
        scope: String::new(),
        email: Some(text.clone()),
        preferred_username: words.first().cloned(),
        name: words.last().cloned(),
        roles: words.clone(),
        organizations: Default::default(),
        userinfo: serde_json::Map::new(),
    };
    let b2b = B2b {
        organizations: words.clone(),
        managed_organizations: words.iter().take(2).cloned().collect(),
        contracts: words.iter().rev().take(3).cloned().collect(),
        entitlements: String::new(),
        active_organization: words.first().cloned(),
    };
    let rendered = match data.first().map(|b| b % 3) {
        Some(0) => render(Status::Authenticated, Some((&principal, &b2b)), true),
        Some(1) => render(Status::Stale, Some((&principal, &b2b)), false),
        _ => render(Status::Anonymous, None, true),
    };
    assert_eq!(rendered.len(), OWNED.len(), "not every owned header rendered");
    if data.first().is_some_and(|b| b % 3 != 2) {
        // The subject is encoded, never dropped: it decodes back to what the token said.
        let subject = rendered[1].1.to_str().expect("an encoded value is visible ASCII");
        let decoded = percent_encoding::percent_decode_str(subject).decode_utf8().expect("UTF-8");
        assert_eq!(decoded, text, "the subject does not round-trip");
    }
    let mut headers = sent.clone();
    inject(&mut headers, &rendered);

    for (name, value) in &rendered {
        let got: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
        assert_eq!(got, vec![value], "{name}: not exactly the rendered value once");
    }
    for name in headers.keys() {
        if is_owned(name.as_str()) {
            assert!(OWNED.contains(name), "a client-sent owned header survived: {name}");
        }
    }
    for name in sent.keys() {
        if !is_owned(name.as_str()) {
            let before: Vec<&HeaderValue> = sent.get_all(name).iter().collect();
            let after: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
            assert_eq!(before, after, "{name}: a header the sidecar does not own was changed");
        }
    }
    let kept = sent.keys().filter(|n| !is_owned(n.as_str())).count();
    assert_eq!(headers.keys_len(), kept + OWNED.len(), "headers appeared or vanished");
});
