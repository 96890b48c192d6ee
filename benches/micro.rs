//! Criterion micro-benchmarks of the pure hot-path code: token validation per algorithm
//! (`pre_parse`, `KeySet::select`, `verify_signature`, `check_claims`), the organization
//! claim, the reconciliation plan and header rendering.
//!
//! `cargo bench --bench micro` (add `-- validate` to run one group). Keys and tokens come from
//! the integration tests' fake issuer (`tests/api/helpers/keys.rs`, included below), so the
//! benchmarks validate the same Keycloak-shaped tokens the tests do; keys are generated at
//! start, nothing is read from disk.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use identity_sidecar::auth::jwks::KeySet;
use identity_sidecar::auth::org_claim::parse_org_claim;
use identity_sidecar::auth::validate::{
    Policy, Principal, UserinfoClaims, check_claims, pre_parse, verify_signature,
};
use identity_sidecar::b2b::{AttachmentSource, MembershipSource, MembershipType};
use identity_sidecar::headers::{B2b, Status, render};
use identity_sidecar::reconcile::plan::{
    CurrentAttachment, CurrentMembership, KnownContract, KnownOrg, UnclaimedMemberships, UserState, plan,
};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use uuid::Uuid;

#[allow(dead_code, reason = "the tests use more of the fake issuer than the benchmarks do")]
#[path = "../tests/api/helpers/keys.rs"]
mod keys;

use keys::{KeyKind, KeyMaterial};

/// Fixed ids, so every run plans the same work.
fn org_id(i: u128) -> Uuid {
    Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 + i)
}

fn now() -> u64 {
    keys::now() as u64
}

/// One signing key and the kid it is published under.
struct Signer {
    kid: &'static str,
    alg: Algorithm,
    key: Arc<KeyMaterial>,
}

/// One key per algorithm family the sidecar accepts (the RSA key signs RS256 and PS256).
fn signers() -> Vec<Signer> {
    let rsa = keys::rsa_slot(keys::RSA_SLOT_FIRST_REALM);
    vec![
        Signer { kid: "rsa-rs256", alg: Algorithm::RS256, key: rsa.clone() },
        Signer { kid: "rsa-ps256", alg: Algorithm::PS256, key: rsa },
        Signer { kid: "ec-p256", alg: Algorithm::ES256, key: KeyMaterial::generate(KeyKind::Es256) },
        Signer { kid: "ed25519", alg: Algorithm::EdDSA, key: KeyMaterial::generate(KeyKind::EdDSA) },
    ]
}

/// The issuer's JWKS: each signer's public key with its kid and alg (the RSA key twice).
fn jwks(signers: &[Signer]) -> Vec<u8> {
    let keys: Vec<Value> = signers.iter().map(|s| s.key.jwk(s.kid, s.alg)).collect();
    serde_json::to_vec(&json!({ "keys": keys })).unwrap()
}

/// A Keycloak 26 access token's claims (the fake issuer's), for audience `app`, with five
/// organizations (ids and attributes) and a few more roles.
fn claims() -> Value {
    let orgs: serde_json::Map<String, Value> = (0..5)
        .map(|i| (format!("org-{i}"), json!({"id": org_id(i).to_string(), "region": ["eu"]})))
        .collect();
    let mut claims = keys::access_token_claims("https://sso.example.com/realms/acme", 3600);
    claims.insert("aud".into(), json!(["app", "account"]));
    claims.insert("sub".into(), json!("0b6f8a4e-3c1d-4f2a-9e7b-5d4c3b2a1f00"));
    claims.insert(
        "resource_access".into(),
        json!({"app": {"roles": ["viewer"]}, "account": {"roles": ["manage-account", "view-profile"]}}),
    );
    claims.insert("organization".into(), Value::Object(orgs));
    Value::Object(claims)
}

fn sign(signer: &Signer, claims: &Value) -> String {
    let header = json!({"alg": signer.alg, "typ": "JWT", "kid": signer.kid});
    keys::jws(&header, claims, &signer.key.encoding, signer.alg)
}

fn policy() -> Policy {
    Policy {
        issuer: "https://sso.example.com/realms/acme".into(),
        audiences: vec!["app".into()],
        algorithms: vec![Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA],
        require_typ: true,
        leeway_secs: 30,
        max_token_bytes: 16 * 1024,
        org_claim: "organization".into(),
        client_roles_of: vec!["app".into()],
        userinfo: UserinfoClaims::from_config(&Default::default()),
    }
}

/// The whole pure validation path, as `auth::authenticator` runs it on a token-cache miss.
fn validate(token: &str, keys: &KeySet, policy: &Policy, now: u64) -> Principal {
    let unverified = pre_parse(token, policy).unwrap();
    let key = keys.select(unverified.kid.as_deref(), unverified.alg).unwrap();
    verify_signature(&unverified, &key.key).unwrap();
    check_claims(&unverified, policy, now).unwrap()
}

fn token_validation(c: &mut Criterion) {
    let signers = signers();
    let jwks = jwks(&signers);
    let keys = KeySet::parse(&jwks).unwrap();
    let policy = policy();
    let claims = claims();
    let now = now();

    let mut group = c.benchmark_group("validate");
    for signer in &signers {
        let token = sign(signer, &claims);
        let alg = format!("{:?}", signer.alg);
        // Sanity: the token really validates.
        assert_eq!(validate(&token, &keys, &policy, now).sub, "0b6f8a4e-3c1d-4f2a-9e7b-5d4c3b2a1f00");
        group.bench_function(format!("full/{alg}"), |b| {
            b.iter(|| validate(black_box(&token), &keys, &policy, now))
        });
        let unverified = pre_parse(&token, &policy).unwrap();
        let key = keys.select(unverified.kid.as_deref(), unverified.alg).unwrap();
        group.bench_function(format!("verify_signature/{alg}"), |b| {
            b.iter(|| verify_signature(black_box(&unverified), &key.key).unwrap())
        });
    }
    let token = sign(&signers[0], &claims);
    group.bench_function("pre_parse", |b| b.iter(|| pre_parse(black_box(&token), &policy).unwrap()));
    let unverified = pre_parse(&token, &policy).unwrap();
    group.bench_function("check_claims", |b| {
        b.iter(|| check_claims(black_box(&unverified), &policy, now).unwrap())
    });
    group.bench_function("keyset_select", |b| {
        b.iter(|| keys.select(black_box(Some("ed25519")), Algorithm::EdDSA).is_ok())
    });
    group.bench_function("keyset_parse", |b| b.iter(|| KeySet::parse(black_box(&jwks)).unwrap().len()));
    group.finish();
}

fn org_claim(c: &mut Criterion) {
    let mut group = c.benchmark_group("org_claim");
    let aliases = json!(["acme", "globex", "initech", "umbrella", "hooli"]);
    let with_ids = claims()["organization"].clone();
    let stringified = json!(with_ids.to_string());
    for (name, value) in
        [("aliases_5", aliases), ("ids_and_attributes_5", with_ids), ("stringified_5", stringified)]
    {
        assert_eq!(parse_org_claim(Some(&value)).orgs.len(), 5, "{name}");
        group.bench_function(name, |b| b.iter(|| parse_org_claim(black_box(Some(&value)))));
    }
    group.finish();
}

/// Five linked organizations with two SSO contracts each; the user is a member of three
/// (one only kept until seen) and holds four attachments; the claim names four of the five.
fn reconcile_plan(c: &mut Criterion) {
    let organizations: Vec<KnownOrg> = (0..5)
        .map(|i| KnownOrg {
            id: i as i64 + 1,
            key: format!("org-{i}"),
            keycloak_id: (i % 2 == 0).then(|| org_id(i)),
            keycloak_alias: Some(format!("org-{i}")),
        })
        .collect();
    let contracts: Vec<KnownContract> = (0..10)
        .map(|i| KnownContract {
            id: i as i64 + 100,
            key: format!("contract-{i}"),
            organization_id: i as i64 / 2 + 1,
            membership_type: if i % 2 == 0 { MembershipType::Auto } else { MembershipType::Managed },
            active: true,
            starts_on: None,
            ends_on: None,
            max_learners: (i % 3 == 0).then_some(50),
            seats_used: 10,
        })
        .collect();
    let memberships = vec![
        CurrentMembership {
            organization_id: 1,
            keep_until_seen: false,
            manager: true,
            source: MembershipSource::Claim,
        },
        CurrentMembership {
            organization_id: 2,
            keep_until_seen: true,
            manager: false,
            source: MembershipSource::Admin,
        },
        CurrentMembership {
            organization_id: 5,
            keep_until_seen: false,
            manager: false,
            source: MembershipSource::Claim,
        },
    ];
    let attachments = [100, 101, 102, 108]
        .into_iter()
        .map(|id| CurrentAttachment { contract_id: id, source: AttachmentSource::Sso })
        .collect();
    let state = UserState { organizations, memberships, contracts, attachments };
    let claim: serde_json::Map<String, Value> =
        (0..4).map(|i| (format!("org-{i}"), json!({"id": org_id(i as u128).to_string()}))).collect();
    let claimed = parse_org_claim(Some(&Value::Object(claim))).orgs;
    let today = time::OffsetDateTime::now_utc().date();
    let sample = plan(&claimed, UnclaimedMemberships::Remove, &state, today);
    assert!(!sample.is_empty() && !sample.remove_memberships.is_empty(), "the plan has work: {sample:?}");
    c.bench_function("reconcile_plan/5_orgs_10_contracts", |b| {
        b.iter(|| plan(black_box(&claimed), UnclaimedMemberships::Remove, black_box(&state), today))
    });
    let settled = sample.apply_to(&state);
    c.bench_function("reconcile_plan/nothing_to_do", |b| {
        b.iter(|| plan(black_box(&claimed), UnclaimedMemberships::Remove, black_box(&settled), today))
    });
}

/// The owned header set of a user with 5 organizations and 10 contracts (docs/contract.md §5's budget).
fn headers(c: &mut Criterion) {
    let signers = signers();
    let keys = KeySet::parse(&jwks(&signers)).unwrap();
    let policy = policy();
    let principal = validate(&sign(&signers[2], &claims()), &keys, &policy, now());
    let b2b = B2b {
        organizations: (0..5).map(|i| format!("organization-{i}")).collect(),
        managed_organizations: vec!["organization-0".into()],
        contracts: (0..10).map(|i| format!("contract-{i:02}")).collect(),
        entitlements: format!("eyJhbGciOiJFUzI1NiJ9.{}.{}", "x".repeat(1400), "y".repeat(86)).into(),
        active_organization: Some("organization-0".into()),
    };
    let mut group = c.benchmark_group("headers");
    group.bench_function("render/userinfo", |b| {
        b.iter(|| render(Status::Authenticated, Some((black_box(&principal), black_box(&b2b))), Some(8000)))
    });
    group.bench_function("render/no_userinfo", |b| {
        b.iter(|| render(Status::Authenticated, Some((black_box(&principal), black_box(&b2b))), None))
    });
    group.bench_function("render/anonymous", |b| b.iter(|| render(Status::Anonymous, None, Some(8000))));
    group.finish();
}

criterion_group!(benches, token_validation, org_claim, reconcile_plan, headers);
criterion_main!(benches);
