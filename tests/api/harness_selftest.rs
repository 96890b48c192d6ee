//! Self-tests of the test helpers: if one of these fails, sidecar test failures mean nothing.
//!
//! Each fake is checked the way the sidecar will use it — over HTTP with reqwest, tokens
//! verified with jsonwebtoken against the JWKS actually served.

use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::{self as sig, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use futures_util::{SinkExt as _, StreamExt as _};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::keys::{self, KeyMaterial};
use crate::helpers::tokens::{peek_claims, peek_header};
use crate::helpers::upstream::{HOP_RESPONSE_HEADERS, big_body, sha256_hex};
use crate::helpers::{Echo, EchoUpstream, FakeKeycloak, HangingServer, KeyKind, Mode, closed_port};

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client")
}

async fn fetch_jwks(kc: &FakeKeycloak) -> JwkSet {
    let res = client().get(kc.jwks_url()).send().await.expect("JWKS request");
    assert_eq!(res.status(), 200);
    res.json().await.expect("JWKS parses as a jsonwebtoken JwkSet")
}

/// Verify `token` as a strict resource server would, with the key named by its `kid`.
fn verify(token: &str, jwks: &JwkSet, alg: Algorithm, issuer: &str) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks.find(&kid).ok_or("kid not in JWKS")?;
    verify_with(token, jwk, alg, issuer)
}

fn verify_with(token: &str, jwk: &Jwk, alg: Algorithm, issuer: &str) -> Result<Value, String> {
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&["account"]);
    decode::<Value>(token, &key, &validation).map(|d| d.claims).map_err(|e| e.to_string())
}

/// `(tag, content, rest)` of the first DER element of `input` (definite lengths only).
fn der(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (len, start) = if input[1] < 0x80 {
        (input[1] as usize, 2)
    } else {
        let n = (input[1] & 0x7f) as usize;
        (input[2..2 + n].iter().fold(0usize, |acc, b| acc << 8 | *b as usize), 2 + n)
    };
    (tag, &input[start..start + len], &input[start + len..])
}

#[tokio::test]
async fn discovery_names_the_issuer_and_a_jwks_with_the_default_key_and_an_enc_key() {
    let kc = FakeKeycloak::start().await;
    let http = client();

    let doc: Value = http.get(kc.discovery_url()).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["issuer"], kc.issuer());
    assert_eq!(doc["token_endpoint"], kc.token_url());
    assert!(doc["authorization_endpoint"].as_str().unwrap().starts_with(&kc.issuer()));
    let jwks_uri = doc["jwks_uri"].as_str().unwrap();
    assert_eq!(jwks_uri, kc.jwks_url());

    let jwks: Value = http.get(jwks_uri).send().await.unwrap().json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    let sig_keys: Vec<&Value> = keys.iter().filter(|k| k["use"] == "sig").collect();
    assert_eq!(sig_keys.len(), 1);
    assert_eq!(sig_keys[0]["kid"], kc.default_kid());
    assert_eq!(sig_keys[0]["kty"], "RSA");
    assert_eq!(sig_keys[0]["alg"], "RS256");
    let enc: Vec<&Value> = keys.iter().filter(|k| k["use"] == "enc").collect();
    assert_eq!(enc.len(), 1);
    assert_eq!(enc[0]["alg"], "RSA-OAEP");
    assert_eq!(enc[0]["kid"], kc.enc_kid());
    assert_ne!(enc[0]["n"], sig_keys[0]["n"], "the enc key is a different key");

    assert_eq!((kc.discovery_fetches(), kc.jwks_fetches()), (1, 1));

    kc.publish_enc_key(false);
    assert_eq!(fetch_jwks(&kc).await.keys.len(), 1);
    assert_eq!(kc.jwks_fetches(), 2);
}

#[tokio::test]
async fn discovery_can_be_patched_to_point_elsewhere() {
    let kc = FakeKeycloak::start().await;
    kc.patch_discovery(json!({"jwks_uri": "http://internal:8080/certs", "userinfo_endpoint": null}));
    let doc: Value = client().get(kc.discovery_url()).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["jwks_uri"], "http://internal:8080/certs");
    assert!(doc.get("userinfo_endpoint").is_none());
    assert_eq!(doc["issuer"], kc.issuer());
}

#[tokio::test]
async fn minted_tokens_verify_against_the_served_jwks_for_every_key_kind_and_algorithm() {
    let kc = FakeKeycloak::start().await;
    let cases = [
        (KeyKind::Rs256, Algorithm::RS256),
        (KeyKind::Rs256, Algorithm::RS384),
        (KeyKind::Rs256, Algorithm::RS512),
        (KeyKind::Rs256, Algorithm::PS256),
        (KeyKind::Rs256, Algorithm::PS384),
        (KeyKind::Rs256, Algorithm::PS512),
        (KeyKind::Es256, Algorithm::ES256),
        (KeyKind::Es384, Algorithm::ES384),
        (KeyKind::EdDSA, Algorithm::EdDSA),
    ];
    let kids: Vec<String> = cases.iter().map(|(kind, alg)| kc.add_key_with_alg(*kind, *alg)).collect();
    let jwks = fetch_jwks(&kc).await;
    assert_eq!(jwks.keys.len(), cases.len() + 2, "default + added signing keys + enc key");

    for ((kind, alg), kid) in cases.iter().zip(&kids) {
        let token = kc.token().key(kid).sub("u1").sign();
        let header = peek_header(&token);
        assert_eq!(header["kid"], json!(kid), "{kind:?}/{alg:?}");
        assert_eq!(header["alg"], json!(alg));
        let claims = verify(&token, &jwks, *alg, &kc.issuer())
            .unwrap_or_else(|e| panic!("{kind:?}/{alg:?} does not verify: {e}"));
        assert_eq!(claims["sub"], "u1");
    }

    // One RSA key can also sign with an algorithm other than the one it is published with.
    let ps = kc.token().alg(Algorithm::PS256).sign();
    verify(&ps, &jwks, Algorithm::PS256, &kc.issuer()).expect("RS256-published key signs PS256");
}

/// The bench helpers (`examples/bench-helpers.rs`) and the micro benchmarks mint with this same
/// issuer code; the bench's realm key comes from a PKCS#8 PEM file, as `openssl genpkey` writes.
#[test]
fn a_realm_key_read_from_pem_publishes_a_jwk_that_verifies_what_it_signs() {
    use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};

    let pkcs8 = RsaKeyPair::generate(KeySize::Rsa2048).unwrap().as_der().unwrap();
    let pem = keys::pem("PRIVATE KEY", pkcs8.as_ref());
    let key = KeyMaterial::rsa_from_pkcs8_pem(&pem).expect("a PKCS#8 RSA key loads");
    let issuer = "http://127.0.0.1:1/realms/bench";
    let mut claims = keys::access_token_claims(issuer, 300);
    claims.insert("sub".into(), json!("bench-user"));
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "bench-rs256"});
    let token = keys::jws(&header, &Value::Object(claims), &key.encoding, Algorithm::RS256);
    let jwk: Jwk = serde_json::from_value(key.jwk("bench-rs256", Algorithm::RS256)).unwrap();
    let verified = verify_with(&token, &jwk, Algorithm::RS256, issuer).expect("verifies with its JWK");
    assert_eq!((verified["sub"].as_str(), verified["typ"].as_str()), (Some("bench-user"), Some("Bearer")));

    let ec = KeyMaterial::generate(KeyKind::Es256);
    let not_rsa = keys::pem("PUBLIC KEY", &ec.spki_der);
    assert!(KeyMaterial::rsa_from_pkcs8_pem(&not_rsa).is_err(), "a public key is not a realm key");
    assert!(KeyMaterial::rsa_from_pkcs8_pem("not pem").is_err());
}

#[tokio::test]
async fn rsa_keys_within_one_fake_keycloak_are_distinct() {
    let kc = FakeKeycloak::start().await;
    let second = kc.add_key(KeyKind::Rs256);
    let jwks = kc.jwks();
    let n =
        |kid: &str| jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).unwrap()["n"].clone();
    assert_ne!(n(&kc.default_kid()), n(&second));
}

#[tokio::test]
async fn default_claims_look_like_a_keycloak_access_token_and_setters_override_them() {
    let kc = FakeKeycloak::start().await;
    let claims = peek_claims(&kc.token().sign());
    assert_eq!(claims["iss"], kc.issuer());
    assert_eq!(claims["aud"], "account");
    assert_eq!(claims["azp"], "app");
    assert_eq!(claims["typ"], "Bearer");
    assert_eq!(claims["scope"], "openid email profile organization:*");
    assert!(claims["realm_access"]["roles"].is_array());
    assert!(claims["resource_access"]["account"]["roles"].is_array());
    for name in ["sub", "sid", "email", "preferred_username", "name", "given_name", "family_name"] {
        assert!(claims[name].is_string(), "{name}");
    }
    assert_eq!(claims["email_verified"], true);
    let exp = claims["exp"].as_i64().unwrap();
    assert_eq!(exp - claims["iat"].as_i64().unwrap(), 300);
    assert!(claims.get("organization").is_none());

    let token = kc
        .token()
        .sub("u1")
        .email("a@x.org")
        .name("A B")
        .preferred_username("ab")
        .azp("web")
        .aud(json!(["app", "account"]))
        .scope("openid")
        .organization(json!({"acme": {"id": "7d8b5a8e-0000-4000-8000-000000000001"}}))
        .sid("s1")
        .exp_in(-60)
        .realm_roles(&["admin"])
        .client_roles("app", &["editor"])
        .claim("custom", json!(42))
        .remove_claim("typ")
        .header("typ", json!("at+jwt"))
        .no_kid()
        .sign();
    let claims = peek_claims(&token);
    assert_eq!(claims["sub"], "u1");
    assert_eq!(claims["email"], "a@x.org");
    assert_eq!(claims["name"], "A B");
    assert_eq!(claims["preferred_username"], "ab");
    assert_eq!(claims["azp"], "web");
    assert_eq!(claims["aud"], json!(["app", "account"]));
    assert_eq!(claims["scope"], "openid");
    assert_eq!(claims["organization"]["acme"]["id"], "7d8b5a8e-0000-4000-8000-000000000001");
    assert_eq!(claims["sid"], "s1");
    assert!(claims["exp"].as_i64().unwrap() < claims["iat"].as_i64().unwrap());
    assert_eq!(claims["realm_access"]["roles"], json!(["admin"]));
    assert_eq!(claims["resource_access"]["app"]["roles"], json!(["editor"]));
    assert_eq!(claims["resource_access"]["account"]["roles"][0], "manage-account");
    assert_eq!(claims["custom"], 42);
    assert!(claims.get("typ").is_none());
    let header = peek_header(&token);
    assert_eq!(header["typ"], "at+jwt");
    assert!(header.get("kid").is_none());

    let odd = kc.token().kid("nobody-knows-me").remove_header("typ").sign();
    assert_eq!(peek_header(&odd)["kid"], "nobody-knows-me");
    assert!(peek_header(&odd).get("typ").is_none());
}

#[tokio::test]
async fn rotation_changes_the_default_kid_and_keeps_the_old_key_until_removed() {
    let kc = FakeKeycloak::start().await;
    let old = kc.default_kid();
    let new = kc.rotate(KeyKind::Es256);
    assert_ne!(old, new);
    assert_eq!(kc.default_kid(), new);
    assert_eq!(kc.kids(), vec![old.clone(), new.clone()]);
    assert_eq!(peek_header(&kc.token().sign())["kid"], json!(new));
    assert_eq!(peek_header(&kc.token().sign())["alg"], "ES256");

    let old_token = kc.token().key(&old).sign();
    let jwks = fetch_jwks(&kc).await;
    verify(&old_token, &jwks, Algorithm::RS256, &kc.issuer()).expect("old key still published");

    kc.remove_key(&old);
    assert_eq!(kc.kids(), vec![new.clone()]);
    let jwks = fetch_jwks(&kc).await;
    assert!(jwks.find(&old).is_none());
    assert_eq!(verify(&old_token, &jwks, Algorithm::RS256, &kc.issuer()), Err("kid not in JWKS".into()));

    kc.set_default(&kc.add_key(KeyKind::EdDSA));
    assert_eq!(peek_header(&kc.token().sign())["alg"], "EdDSA");

    let hidden = kc.add_unpublished_key(KeyKind::Es384);
    assert!(fetch_jwks(&kc).await.find(&hidden).is_none());
    kc.publish_key(&hidden);
    assert!(fetch_jwks(&kc).await.find(&hidden).is_some());
}

#[tokio::test]
async fn fail_and_hang_modes_apply_to_discovery_and_jwks_and_every_request_is_counted() {
    let kc = FakeKeycloak::start().await;
    // Only the hanging requests get the short timeout: under a loaded test run a normal
    // answer may take longer than 300 ms.
    let http = reqwest::Client::new();
    let hang = Duration::from_millis(300);

    kc.set_mode(Mode::Fail);
    assert_eq!(http.get(kc.discovery_url()).send().await.unwrap().status(), 500);
    assert_eq!(http.get(kc.jwks_url()).send().await.unwrap().status(), 500);

    kc.set_mode(Mode::Hang);
    let started = Instant::now();
    let err = http.get(kc.jwks_url()).timeout(hang).send().await.expect_err("a hanging JWKS never answers");
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(http.get(kc.discovery_url()).timeout(hang).send().await.unwrap_err().is_timeout());

    kc.set_mode(Mode::Normal);
    assert_eq!(http.get(kc.jwks_url()).send().await.unwrap().status(), 200);
    assert_eq!((kc.discovery_fetches(), kc.jwks_fetches()), (2, 3));

    kc.set_jwks_mode(Mode::Fail);
    assert_eq!(http.get(kc.discovery_url()).send().await.unwrap().status(), 200);
    assert_eq!(http.get(kc.jwks_url()).send().await.unwrap().status(), 500);
    kc.set_jwks_mode(Mode::Normal);
    kc.set_discovery_mode(Mode::Fail);
    assert_eq!(http.get(kc.discovery_url()).send().await.unwrap().status(), 500);
    assert_eq!(http.get(kc.jwks_url()).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_jwks_delay_holds_the_answer_back() {
    let kc = FakeKeycloak::start().await;
    kc.set_jwks_delay(Duration::from_millis(200));
    let started = Instant::now();
    fetch_jwks(&kc).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn a_stopped_fake_keycloak_cuts_pooled_connections_and_refuses_new_ones() {
    let kc = FakeKeycloak::start().await;
    let http = client();
    assert_eq!(http.get(kc.jwks_url()).send().await.unwrap().status(), 200);
    kc.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = http.get(kc.jwks_url()).send().await.expect_err("stopped");
    assert!(!err.is_timeout(), "{err}");
}

async fn admin_token(kc: &FakeKeycloak, http: &reqwest::Client) -> String {
    let (id, secret) = kc.admin_client();
    let res = http
        .post(kc.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=client_credentials&client_id={id}&client_secret={secret}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    body["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_token_endpoint_grants_client_credentials_by_form_or_basic_and_refuses_others() {
    let kc = FakeKeycloak::start().await;
    let http = client();
    let (id, secret) = kc.admin_client();

    let token = admin_token(&kc, &http).await;
    let claims = verify(&token, &fetch_jwks(&kc).await, Algorithm::RS256, &kc.issuer()).unwrap();
    assert_eq!(claims["azp"], id);

    let basic = STANDARD.encode(format!("{id}:{secret}"));
    let res = http
        .post(kc.token_url())
        .header("authorization", format!("Basic {basic}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let wrong = http
        .post(kc.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=client_credentials&client_id={id}&client_secret=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.json::<Value>().await.unwrap()["error"], "invalid_client");

    let password = http
        .post(kc.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=password&client_id={id}&client_secret={secret}"))
        .send()
        .await
        .unwrap();
    assert_eq!(password.status(), 400);
    assert_eq!(kc.token_requests(), 4);
}

#[tokio::test]
async fn the_organization_admin_api_pages_adds_members_and_fails_on_demand() {
    let kc = FakeKeycloak::start().await;
    let http = client();
    let base = format!("{}/admin/realms/test/organizations", kc.base_url());

    let ids: Vec<_> = (0..12)
        .map(|i| kc.add_org(&format!("org-{i:02}"), &format!("Org {i:02}"), &format!("Number {i}")))
        .collect();

    let anonymous = http.get(&base).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    let token = admin_token(&kc, &http).await;
    let page = |first: usize, max: usize| {
        let http = http.clone();
        let url = format!("{base}?first={first}&max={max}&briefRepresentation=true");
        let token = token.clone();
        async move {
            let res = http.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(res.status(), 200);
            res.json::<Vec<Value>>().await.unwrap()
        }
    };
    let first = page(0, 5).await;
    assert_eq!(first.len(), 5);
    assert_eq!(first[0]["alias"], "org-00");
    assert_eq!(first[0]["name"], "Org 00");
    assert_eq!(first[0]["description"], "Number 0");
    assert_eq!(first[0]["id"], ids[0].to_string());
    assert_eq!(first[0]["enabled"], true);
    assert_eq!(first[0]["domains"], json!([]));
    assert_eq!(page(10, 5).await.len(), 2);
    assert_eq!(page(12, 5).await.len(), 0);
    let default_page: Vec<Value> =
        http.get(&base).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(default_page.len(), 10, "Keycloak's default max is 10");

    kc.rename_org(ids[0], "org-zero", "Zero", "Renamed");
    let renamed: Value = http
        .get(format!("{base}/{}", ids[0]))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((&renamed["alias"], &renamed["name"]), (&json!("org-zero"), &json!("Zero")));
    assert_eq!(page(11, 1).await[0]["alias"], "org-zero", "listed by name");

    let members = format!("{base}/{}/members", ids[1]);
    let add = |body: Value| http.post(&members).bearer_auth(&token).json(&body).send();
    assert_eq!(add(json!("user-1")).await.unwrap().status(), 201);
    assert_eq!(add(json!("user-1")).await.unwrap().status(), 409);
    kc.fail_next_add_member(2);
    assert_eq!(add(json!("user-2")).await.unwrap().status(), 500);
    assert_eq!(add(json!("user-2")).await.unwrap().status(), 500);
    assert_eq!(add(json!("user-2")).await.unwrap().status(), 201);
    assert_eq!(kc.members(ids[1]), vec!["user-1".to_string(), "user-2".to_string()]);
    assert_eq!(kc.add_member_calls(), 5);

    let unknown_org = format!("{base}/{}/members", uuid::Uuid::new_v4());
    let res = http.post(unknown_org).bearer_auth(&token).json(&json!("user-1")).send().await.unwrap();
    assert_eq!(res.status(), 404);

    kc.set_user_orgs("user-1", vec![ids[3], ids[4]]);
    assert!(kc.members(ids[1]).iter().all(|m| m != "user-1"));
    let orgs: Vec<Value> = http
        .get(format!("{base}/members/user-1/organizations"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let aliases: Vec<&str> = orgs.iter().map(|o| o["alias"].as_str().unwrap()).collect();
    assert_eq!(aliases, vec!["org-03", "org-04"]);

    kc.revoke_admin_tokens();
    assert_eq!(http.get(&base).bearer_auth(&token).send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn attack_tokens_have_the_advertised_shape_and_the_realm_jwks_rejects_them() {
    let kc = FakeKeycloak::start().await;
    let jwks = fetch_jwks(&kc).await;
    let issuer = kc.issuer();
    let claims = kc.token().sub("victim").claims();
    let attacks = kc.attacks();
    let default_kid = json!(kc.default_kid());

    let none = attacks.alg_none(&claims);
    assert_eq!(peek_header(&none)["alg"], "none");
    assert!(none.ends_with('.'));

    // The HMAC really is keyed with the RSA public key's PEM: a confused verifier accepts it.
    let hs = attacks.hs256_with_public_key(&claims);
    assert_eq!(peek_header(&hs)["alg"], "HS256");
    assert_eq!(peek_header(&hs)["kid"], default_kid);
    // Rebuild the PEM from the served JWKS as an attacker would: (n, e) → SPKI → PEM.
    let jwk = serde_json::to_value(jwks.find(&kc.default_kid()).unwrap()).unwrap();
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    let e = URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap();
    let public = aws_lc_rs::rsa::PublicKey::from_der(&rsa_public_key_der(&n, &e)).unwrap();
    let pem = crate::helpers::keys::pem("PUBLIC KEY", public.as_der().unwrap().as_ref());
    let mut hmac = Validation::new(Algorithm::HS256);
    hmac.set_audience(&["account"]);
    decode::<Value>(&hs, &DecodingKey::from_secret(pem.as_bytes()), &hmac)
        .expect("HMAC keyed with the public PEM");
    assert!(verify(&hs, &jwks, Algorithm::RS256, &issuer).is_err());

    // Key injection: the attacker key in the header verifies the token, the realm key does not.
    let embedded = attacks.with_embedded_jwk(&claims);
    let header = peek_header(&embedded);
    assert_eq!(header["kid"], default_kid);
    let injected: Jwk = serde_json::from_value(header["jwk"].clone()).unwrap();
    verify_with(&embedded, &injected, Algorithm::RS256, &issuer).expect("attacker key verifies");
    assert!(verify(&embedded, &jwks, Algorithm::RS256, &issuer).is_err());

    let jku = attacks.with_jku(&claims);
    assert_eq!(peek_header(&jku)["jku"], kc.attacker_jwks_url());
    let attacker_set: JwkSet =
        client().get(kc.attacker_jwks_url()).send().await.unwrap().json().await.unwrap();
    verify(&jku, &attacker_set, Algorithm::RS256, &issuer).expect("attacker JWKS verifies");
    assert!(verify(&jku, &jwks, Algorithm::RS256, &issuer).is_err());

    let x5u = attacks.with_x5u(&claims);
    assert_eq!(peek_header(&x5u)["x5u"], kc.attacker_cert_url());
    let pem_cert = client().get(kc.attacker_cert_url()).send().await.unwrap().text().await.unwrap();
    assert!(pem_cert.starts_with("-----BEGIN CERTIFICATE-----\n"));

    let x5c = attacks.with_x5c(&claims);
    let cert = STANDARD.decode(peek_header(&x5c)["x5c"][0].as_str().unwrap()).unwrap();
    assert_self_signed(&cert, &sig::RSA_PKCS1_2048_8192_SHA256);
    assert!(verify(&x5c, &jwks, Algorithm::RS256, &issuer).is_err());

    // The realm-signed variants verify with the realm JWKS: only the header is wrong.
    let strict = kc.attacks().realm_signed();
    for token in [
        strict.with_embedded_jwk(&claims),
        strict.with_jku(&claims),
        strict.with_x5u(&claims),
        strict.with_x5c(&claims),
    ] {
        verify(&token, &jwks, Algorithm::RS256, &issuer).expect("realm-signed");
    }

    let crit = attacks.with_crit(&claims);
    assert_eq!(peek_header(&crit)["crit"], json!(["urn:example:unknown"]));

    let empty = attacks.empty_signature(&claims);
    assert_eq!(empty.split('.').count(), 3);
    assert!(empty.ends_with('.'));

    let zero = attacks.ecdsa_zero_signature(&claims);
    assert_eq!(peek_header(&zero)["alg"], "ES256");
    assert_eq!(URL_SAFE_NO_PAD.decode(zero.rsplit('.').next().unwrap()).unwrap(), vec![0u8; 64]);

    let mismatch = attacks.key_type_mismatch(&claims);
    assert_eq!(peek_header(&mismatch)["alg"], "ES256");
    assert_eq!(peek_header(&mismatch)["kid"], default_kid);

    let stranger = attacks.signed_by_stranger(&claims);
    assert_eq!(peek_header(&stranger)["kid"], default_kid);
    assert!(verify(&stranger, &jwks, Algorithm::RS256, &issuer).unwrap_err().contains("Signature"));

    let nested = attacks.nested(&claims);
    assert_eq!(peek_header(&nested)["cty"], "JWT");

    assert_eq!(attacks.jwe_like().split('.').count(), 5);

    let big = attacks.oversized(16 * 1024 + 1);
    assert!(big.len() > 16 * 1024 && big.len() < 17 * 1024, "{}", big.len());
    verify(&big, &jwks, Algorithm::RS256, &issuer).expect("oversized but valid");

    assert!(jsonwebtoken::decode_header(attacks.garbage()).is_err());
}

#[tokio::test]
async fn attacks_follow_the_default_key_kind() {
    let kc = FakeKeycloak::start().await;
    kc.rotate(KeyKind::Es256);
    let claims = kc.token().claims();
    let x5c = kc.attacks().with_x5c(&claims);
    assert_eq!(peek_header(&x5c)["alg"], "ES256");
    let cert = STANDARD.decode(peek_header(&x5c)["x5c"][0].as_str().unwrap()).unwrap();
    assert_self_signed(&cert, &sig::ECDSA_P256_SHA256_ASN1);
    let zero = kc.attacks().ecdsa_zero_signature(&claims);
    assert_eq!(peek_header(&zero)["kid"], json!(kc.default_kid()));
    // The RS→HS confusion still finds the (older) RSA key.
    let hs = kc.attacks().hs256_with_public_key(&claims);
    assert_eq!(peek_header(&hs)["kid"], json!(kc.kids()[0]));
}

/// DER `RSAPublicKey` (RFC 8017) from n and e.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else if content.len() < 0x100 {
            out.extend([0x81, content.len() as u8]);
        } else {
            out.extend([0x82, (content.len() >> 8) as u8, content.len() as u8]);
        }
        out.extend_from_slice(content);
        out
    }
    let int = |b: &[u8]| {
        let mut c = b.to_vec();
        if c[0] & 0x80 != 0 {
            c.insert(0, 0);
        }
        tlv(0x02, &c)
    };
    tlv(0x30, &[int(n), int(e)].concat())
}

/// The certificate's signature verifies over its TBS with the key in its own SPKI.
fn assert_self_signed(cert: &[u8], alg: &'static dyn sig::VerificationAlgorithm) {
    let (tag, body, rest) = der(cert);
    assert_eq!((tag, rest.len()), (0x30, 0));
    let (_, tbs, after_tbs) = der(body);
    let tbs_full = &body[..body.len() - after_tbs.len()];
    let (_, _sig_alg, after_alg) = der(after_tbs);
    let (bit_tag, bits, _) = der(after_alg);
    assert_eq!(bit_tag, 0x03);
    // The SPKI is the last element of the TBS.
    let mut element = tbs;
    let mut spki = &[][..];
    while !element.is_empty() {
        let (_, _, rest) = der(element);
        spki = &element[..element.len() - rest.len()];
        element = rest;
    }
    let (_, spki_body, _) = der(spki);
    let (_, _, key_bits) = der(spki_body);
    let (_, public_key, _) = der(key_bits);
    UnparsedPublicKey::new(alg, &public_key[1..])
        .verify(tbs_full, &bits[1..])
        .expect("self-signed certificate verifies");
}

#[tokio::test]
async fn the_echo_upstream_reports_method_path_query_headers_and_body_hash() {
    let upstream = EchoUpstream::start().await;
    let res = client()
        .post(format!("{}/a/b%20c?x=1&y=two", upstream.url()))
        .header("X-One", "1")
        .header("x-two", "a")
        .header("X-Two", "b")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echo = Echo::from_response(res).await;
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.path, "/a/b%20c");
    assert_eq!(echo.query.as_deref(), Some("x=1&y=two"));
    assert_eq!(echo.version, "HTTP/1.1");
    assert_eq!(echo.header("x-one"), Some("1"));
    assert_eq!(echo.header_all("X-TWO"), vec!["a", "b"]);
    assert_eq!(echo.header("content-length"), Some("5"));
    assert!(echo.header_names().iter().all(|n| *n == n.to_lowercase()));
    let one = echo.header_names().iter().position(|n| *n == "x-one").unwrap();
    let two = echo.header_names().iter().position(|n| *n == "x-two").unwrap();
    assert!(one < two, "arrival order");
    assert_eq!(echo.body_len, 5);
    assert_eq!(echo.body_sha256, sha256_hex(b"hello"));

    let recorded = upstream.last_request().unwrap();
    assert_eq!(recorded.method, "POST");
    assert_eq!(recorded.path, "/a/b%20c");
    assert_eq!(recorded.header("x-one"), Some("1"));
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test]
async fn a_one_megabyte_body_streams_through_both_ways() {
    let upstream = EchoUpstream::start().await;
    let http = client();
    let body = big_body(1 << 20);

    // Upload in 8 KiB chunks without a Content-Length (chunked transfer coding).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let res = http
        .put(format!("{}/upload", upstream.url()))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    let echo = Echo::from_response(res).await;
    assert_eq!(echo.body_len, 1 << 20);
    assert_eq!(echo.body_sha256, sha256_hex(&body));
    assert_eq!(echo.header("transfer-encoding"), Some("chunked"));

    let res = http.get(format!("{}/_test/big?bytes={}", upstream.url(), 1 << 20)).send().await.unwrap();
    assert_eq!(res.headers()["content-length"], (1 << 20).to_string().as_str());
    assert_eq!(res.bytes().await.unwrap().as_ref(), &body[..]);

    let res = http.get(format!("{}/_test/big?bytes=100000&chunked=1", upstream.url())).send().await.unwrap();
    assert!(res.headers().get("content-length").is_none());
    assert_eq!(res.bytes().await.unwrap().as_ref(), &big_body(100_000)[..]);
}

#[tokio::test]
async fn slow_chunks_arrive_one_by_one_and_delayed_headers_wait() {
    let upstream = EchoUpstream::start().await;
    let http = client();
    let started = Instant::now();
    let res = http.get(format!("{}/_test/slow-chunks?n=3&ms=150", upstream.url())).send().await.unwrap();
    let mut stream = res.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(&first[..], b"chunk 0\n");
    assert!(started.elapsed() < Duration::from_millis(150), "first chunk at once");
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"chunk 1\nchunk 2\n");
    assert!(started.elapsed() >= Duration::from_millis(300));

    let started = Instant::now();
    let res = http.get(format!("{}/_test/delay-headers?ms=200", upstream.url())).send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(Echo::from_response(res).await.path, "/_test/delay-headers");
}

#[tokio::test]
async fn status_paths_answer_the_requested_status() {
    let upstream = EchoUpstream::start().await;
    let http = client();
    let res = http.get(format!("{}/_test/status/418", upstream.url())).send().await.unwrap();
    assert_eq!(res.status(), 418);
    assert_eq!(Echo::from_response(res).await.path, "/_test/status/418");
    let res = http.delete(format!("{}/_test/status/204", upstream.url())).send().await.unwrap();
    assert_eq!(res.status(), 204);
    assert!(res.bytes().await.unwrap().is_empty());
    let res = http.get(format!("{}/_test/status/503", upstream.url())).send().await.unwrap();
    assert_eq!(res.status(), 503);
}

#[tokio::test]
async fn the_websocket_path_echoes_text_and_binary_and_reports_the_handshake() {
    let upstream = EchoUpstream::start().await;
    let url = format!("ws://{}/_test/ws?hello=1", upstream.addr());
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    request.headers_mut().insert("x-probe", "p1".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);

    let hello = ws.next().await.unwrap().unwrap();
    let hello: Value = serde_json::from_str(hello.to_text().unwrap()).unwrap();
    assert!(hello["headers"].as_array().unwrap().contains(&json!(["x-probe", "p1"])));

    ws.send(Message::text("ping me")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping me"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
    ws.close(None).await.unwrap();

    assert_eq!(upstream.last_request().unwrap().header("x-probe"), Some("p1"));
}

#[tokio::test]
async fn the_hop_path_sends_hop_by_hop_headers_on_the_wire() {
    let upstream = EchoUpstream::start().await;
    let mut stream = tokio::net::TcpStream::connect(upstream.addr()).await.unwrap();
    stream.write_all(b"GET /_test/hop HTTP/1.1\r\nHost: upstream\r\n\r\n").await.unwrap();
    let mut wire = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        while !wire.ends_with(b"0\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed early");
            wire.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the chunked body ends");
    let text = String::from_utf8_lossy(&wire).to_lowercase();
    for (name, value) in HOP_RESPONSE_HEADERS {
        assert!(text.contains(&format!("{name}: {}", value.to_lowercase())), "{name} missing in:\n{text}");
    }
    assert!(!text.contains("content-length"));
}

#[tokio::test]
async fn a_closed_port_refuses_and_a_hanging_server_never_answers() {
    let http = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let err = http.get(format!("http://127.0.0.1:{}/", closed_port())).send().await.unwrap_err();
    assert!(err.is_connect(), "{err}");

    let hanging = HangingServer::start().await;
    let err = http.get(hanging.url()).send().await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(hanging.accepted(), 1);
}
