//! Issue "Token gate": forward-auth answers, every rejection class of docs/contract.md §2, key rotation,
//! single-flight refetch, Keycloak outages, path rules, readiness and metrics.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::forward_auth::{raw, request};
use crate::helpers::{EchoUpstream, FakeKeycloak, KeyKind, Mode, TestApp, base_env, metric, set};

fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers().get(name).map(|v| v.to_str().unwrap()).unwrap_or_else(|| panic!("no {name}"))
}

#[tokio::test]
async fn a_valid_token_gets_200_with_identity_headers() {
    let kc = FakeKeycloak::start().await;
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__OIDC__CLIENT_ROLES_OF", r#"["app"]"#);
    let app = TestApp::spawn_with(env).await;
    let token = kc
        .token()
        .sub("u-1")
        .email("zoë@example.org")
        .preferred_username("zoe")
        .name("Zoë, Q")
        .realm_roles(&["learner", "staff"])
        .client_roles("app", &["editor"])
        .organization(json!({"acme": {"id": "6f1c2b1e-8a6f-4a51-9f53-1d3c6f0e1a11"}}))
        .sign();
    let res = app.forward_auth("GET", "/courses/1").bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-identity-status"), "authenticated");
    assert_eq!(header(&res, "x-identity-subject"), "u-1");
    assert_eq!(header(&res, "x-identity-email"), "zo%C3%AB@example.org");
    assert_eq!(header(&res, "x-identity-username"), "zoe");
    assert_eq!(header(&res, "x-identity-name"), "Zo%C3%AB%2C Q");
    assert_eq!(header(&res, "x-identity-roles"), "app:editor,learner,staff");
    // No organization is known locally, so the B2B lists are empty.
    for empty in ["x-identity-organizations", "x-identity-managed-organizations", "x-identity-contracts"] {
        assert_eq!(header(&res, empty), "", "{empty}");
    }
    let entitlements = header(&res, "x-identity-entitlements").to_owned();
    let jwks: jsonwebtoken::jwk::JwkSet =
        app.get("/_sidecar/jwks.json").send().await.unwrap().json().await.unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["apps"]);
    validation.set_issuer(&["identity-sidecar"]);
    let claims = jsonwebtoken::decode::<Value>(&entitlements, &key, &validation).unwrap().claims;
    assert_eq!(claims["sub"], "u-1");
    assert_eq!(claims["organizations"], json!([]));
    let userinfo: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD.decode(header(&res, "x-userinfo")).unwrap(),
    )
    .unwrap();
    assert_eq!(userinfo["sub"], "u-1");
    assert_eq!(userinfo["email"], "zoë@example.org");
    assert_eq!(userinfo["organization"]["acme"]["id"], "6f1c2b1e-8a6f-4a51-9f53-1d3c6f0e1a11");
    assert_eq!(
        userinfo["b2b"],
        json!({"organizations": [], "managed_organizations": [], "contracts": [], "active_organization": null})
    );
    assert!(userinfo.get("realm_access").is_none());
}

#[tokio::test]
async fn a_request_without_a_token_is_anonymous_with_every_owned_header_empty() {
    let kc = FakeKeycloak::start().await;
    let app = TestApp::spawn(&kc).await;
    let res = app.forward_auth("GET", "/").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-identity-status"), "anonymous");
    for name in ["x-identity-subject", "x-identity-roles", "x-identity-entitlements", "x-userinfo"] {
        assert_eq!(header(&res, name), "", "{name}");
    }
}

#[tokio::test]
async fn every_rejection_class_gets_401_with_an_invalid_token_challenge() {
    let kc = FakeKeycloak::start().await;
    let second = kc.add_key(KeyKind::Es256);
    let app = TestApp::spawn(&kc).await;
    let claims = kc.token().sub("u1").claims();
    let attacks = kc.attacks();
    let realm = kc.attacks().realm_signed();
    let cases: Vec<(&str, String)> = vec![
        ("alg none", attacks.alg_none(&claims)),
        ("HS256 keyed with the public key", attacks.hs256_with_public_key(&claims)),
        ("embedded jwk", attacks.with_embedded_jwk(&claims)),
        ("embedded jwk, realm-signed", realm.with_embedded_jwk(&claims)),
        ("jku", attacks.with_jku(&claims)),
        ("jku, realm-signed", realm.with_jku(&claims)),
        ("x5u", attacks.with_x5u(&claims)),
        ("x5u, realm-signed", realm.with_x5u(&claims)),
        ("x5c", attacks.with_x5c(&claims)),
        ("unknown crit, realm-signed", realm.with_crit(&claims)),
        ("empty signature", attacks.empty_signature(&claims)),
        ("ECDSA r=s=0", attacks.ecdsa_zero_signature(&claims)),
        ("key type mismatch", attacks.key_type_mismatch(&claims)),
        ("signed by a stranger", attacks.signed_by_stranger(&claims)),
        ("nested JWT", attacks.nested(&claims)),
        ("JWE", attacks.jwe_like()),
        ("oversized", attacks.oversized(17 * 1024)),
        ("garbage", attacks.garbage()),
        ("unknown kid", kc.token().kid("no-such-kid").sign()),
        ("no kid with two keys", kc.token().no_kid().sign()),
        ("expired", kc.token().exp_in(-120).sign()),
        ("not yet valid", kc.token().nbf_in(600).sign()),
        ("issued in the future", kc.token().iat_in(600).sign()),
        ("wrong issuer", kc.token().iss("https://evil.example/realms/test").sign()),
        ("wrong aud and azp", kc.token().aud(json!("other")).azp("other").sign()),
        ("ID token", kc.token().typ("ID").sign()),
        ("refresh token", kc.token().typ("Refresh").sign()),
        ("logout token", kc.token().typ("Logout").sign()),
        ("no typ and no at+jwt header", kc.token().remove_claim("typ").sign()),
        ("no sub", kc.token().remove_claim("sub").sign()),
        ("no exp", kc.token().remove_claim("exp").sign()),
    ];
    for (name, token) in cases {
        let res = app.forward_auth("GET", "/").bearer_auth(&token).send().await.unwrap();
        assert_eq!(res.status(), 401, "{name}");
        let challenge = header(&res, "www-authenticate");
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""),
            "{name}: {challenge}"
        );
        assert_eq!(header(&res, "content-type"), "application/problem+json", "{name}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["status"], 401, "{name}");
        assert!(res_has_no_identity(&body), "{name}");
    }
    // Sanity: the same app accepts a good token from either key.
    assert_eq!(app.auth_status(&kc.token().sub("u1").sign()).await, 200);
    assert_eq!(
        app.auth_status(&kc.token().key(&second).alg(jsonwebtoken::Algorithm::ES256).sign()).await,
        200
    );
}

fn res_has_no_identity(body: &Value) -> bool {
    body.get("sub").is_none() && body.get("x-identity-subject").is_none()
}

#[tokio::test]
async fn explicit_typing_accepts_an_at_jwt_header_without_a_typ_claim() {
    let kc = FakeKeycloak::start().await;
    let app = TestApp::spawn(&kc).await;
    let token = kc.token().remove_claim("typ").header("typ", json!("at+jwt")).sign();
    assert_eq!(app.auth_status(&token).await, 200);
    let token = kc.token().remove_claim("typ").header("typ", json!("application/at+jwt")).sign();
    assert_eq!(app.auth_status(&token).await, 200);
}

#[tokio::test]
async fn the_audience_may_be_in_aud_or_azp() {
    let kc = FakeKeycloak::start().await;
    let app = TestApp::spawn(&kc).await;
    assert_eq!(app.auth_status(&kc.token().aud(json!(["x", "app"])).azp("other").sign()).await, 200);
    assert_eq!(app.auth_status(&kc.token().aud(json!("account")).azp("app").sign()).await, 200);
}

#[tokio::test]
async fn every_accepted_algorithm_verifies_with_a_key_of_its_type() {
    use jsonwebtoken::Algorithm::*;
    let kc = FakeKeycloak::start().await;
    // Keycloak publishes one JWK per key provider, its `alg` naming the one algorithm it signs.
    let mut keys = vec![(kc.default_kid(), RS256)];
    for alg in [RS384, RS512, PS256, PS384, PS512] {
        keys.push((kc.add_key_with_alg(KeyKind::Rs256, alg), alg));
    }
    let es256 = kc.add_key(KeyKind::Es256);
    keys.push((es256.clone(), ES256));
    keys.push((kc.add_key(KeyKind::Es384), ES384));
    keys.push((kc.add_key(KeyKind::EdDSA), EdDSA));
    let app = TestApp::spawn(&kc).await;
    for (kid, alg) in &keys {
        assert_eq!(app.auth_status(&kc.token().key(kid).alg(*alg).sign()).await, 200, "{alg:?}");
    }
    // A JWK restricted to RS256 does not verify PS256, even though both are RSA.
    assert_eq!(app.auth_status(&kc.token().key(&keys[0].0).alg(PS256).sign()).await, 401);
}

#[tokio::test]
async fn algorithms_come_from_config_only() {
    let kc = FakeKeycloak::start().await;
    let ps256 = kc.add_key_with_alg(KeyKind::Rs256, jsonwebtoken::Algorithm::PS256);
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__OIDC__ALGORITHMS", r#"["PS256"]"#);
    let app = TestApp::spawn_with(env).await;
    assert_eq!(app.auth_status(&kc.token().sign()).await, 401, "RS256 is not configured");
    let token = kc.token().key(&ps256).alg(jsonwebtoken::Algorithm::PS256).sign();
    assert_eq!(app.auth_status(&token).await, 200);
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_after_one_refetch() {
    let kc = FakeKeycloak::start().await;
    let app = TestApp::spawn(&kc).await;
    assert_eq!(app.auth_status(&kc.token().sign()).await, 200);
    let before = kc.jwks_fetches();
    kc.rotate(KeyKind::Es256);
    assert_eq!(app.auth_status(&kc.token().sign()).await, 200);
    assert_eq!(kc.jwks_fetches() - before, 1);
    // A second token with the new key needs no fetch.
    assert_eq!(app.auth_status(&kc.token().sub("other").sign()).await, 200);
    assert_eq!(kc.jwks_fetches() - before, 1);
}

#[tokio::test]
async fn random_unknown_kids_cause_at_most_a_handful_of_jwks_fetches() {
    let kc = FakeKeycloak::start().await;
    let app = TestApp::spawn(&kc).await;
    let before = kc.jwks_fetches();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let token = kc.token().kid(&format!("random-{i}")).sign();
        let (client, url) = (app.http.clone(), app.url("/_sidecar/auth"));
        tasks
            .spawn(async move { client.get(url).bearer_auth(token).send().await.unwrap().status().as_u16() });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 401);
    }
    let fetches = kc.jwks_fetches() - before;
    assert!(fetches <= 2, "{fetches} JWKS fetches for 200 unknown kids");
}

#[tokio::test]
async fn waiters_on_an_unknown_kid_share_one_slow_fetch() {
    let kc = FakeKeycloak::start().await;
    let app = TestApp::spawn(&kc).await;
    kc.rotate(KeyKind::Es256);
    kc.set_jwks_delay(Duration::from_millis(300));
    let before = kc.jwks_fetches();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let token = kc.token().sub(&format!("u{i}")).sign();
        let (client, url) = (app.http.clone(), app.url("/_sidecar/auth"));
        tasks
            .spawn(async move { client.get(url).bearer_auth(token).send().await.unwrap().status().as_u16() });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(kc.jwks_fetches() - before, 1);
}

#[tokio::test]
async fn keycloak_down_after_start_keeps_known_keys_working() {
    let kc = FakeKeycloak::start().await;
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__OIDC__JWKS_MIN_REFRESH_SECS", "0");
    set(&mut env, "SIDECAR__OIDC__HTTP_TIMEOUT_SECS", "1");
    let app = TestApp::spawn_with(env).await;
    let good = kc.token().sign();
    for mode in [Mode::Fail, Mode::Hang] {
        kc.set_mode(mode);
        assert_eq!(app.auth_status(&good).await, 200);
        assert_eq!(app.auth_status(&kc.token().sub("fresh").sign()).await, 200, "new token, known key");
        // An unknown kid is refused promptly (within the fetch timeout), not hung.
        let started = std::time::Instant::now();
        assert_eq!(app.auth_status(&kc.token().kid("unknown").sign()).await, 401);
        assert!(started.elapsed() < Duration::from_secs(3), "{mode:?}: {:?}", started.elapsed());
    }
    kc.stop();
    assert_eq!(app.auth_status(&kc.token().sub("after-stop").sign()).await, 200);
    let ready = app.http.get(app.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn encryption_keys_in_the_jwks_are_ignored() {
    let kc = FakeKeycloak::start().await;
    let app = TestApp::spawn(&kc).await;
    // The enc key is published next to the signing key; a token naming it is refused and a
    // token without kid still finds the only signing key.
    assert_eq!(app.auth_status(&kc.token().kid(&kc.enc_kid()).sign()).await, 401);
    assert_eq!(app.auth_status(&kc.token().no_kid().sign()).await, 200);
}

#[tokio::test]
async fn readiness_waits_for_a_key_set_and_tokens_get_503_meanwhile() {
    let kc = FakeKeycloak::start().await;
    kc.set_mode(Mode::Fail);
    let app = TestApp::start(base_env(&kc)).await;
    let ready = app.http.get(app.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let healthy = app.http.get(app.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);
    let res = app.forward_auth("GET", "/").bearer_auth(kc.token().sign()).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    kc.set_mode(Mode::Normal);
    app.wait_ready(Duration::from_secs(10)).await;
    assert_eq!(app.auth_status(&kc.token().sign()).await, 200);
}

#[tokio::test]
async fn discovery_and_jwks_urls_can_be_overridden() {
    let kc = FakeKeycloak::start().await;
    kc.patch_discovery(json!({"jwks_uri": "http://127.0.0.1:9/unreachable"}));
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__OIDC__JWKS_URL", kc.jwks_url());
    let app = TestApp::spawn_with(env).await;
    assert_eq!(app.auth_status(&kc.token().sign()).await, 200);

    let kc2 = FakeKeycloak::start().await;
    let mut env = base_env(&kc2);
    set(&mut env, "SIDECAR__OIDC__DISCOVERY_URL", kc2.discovery_url());
    set(&mut env, "SIDECAR__OIDC__ISSUER", "https://public.example/realms/test");
    let app = TestApp::spawn_with(env).await;
    let token = kc2.token().iss("https://public.example/realms/test").sign();
    assert_eq!(app.auth_status(&token).await, 200);
}

async fn rules_app(kc: &FakeKeycloak) -> TestApp {
    let mut env = base_env(kc);
    set(
        &mut env,
        "SIDECAR__AUTH__RULES",
        json!([
            {"prefix": "/api", "require": true},
            {"prefix": "/api/admin", "require": true, "roles_any": ["admin"]},
            {"prefix": "/api/public", "require": false},
            {"prefix": "/staff", "roles_any": ["staff"]},
        ])
        .to_string(),
    );
    TestApp::spawn_with(env).await
}

#[tokio::test]
async fn path_rules_match_whole_segments_and_the_longest_prefix() {
    let kc = FakeKeycloak::start().await;
    let app = rules_app(&kc).await;
    let learner = kc.token().realm_roles(&["learner"]).sign();
    let admin = kc.token().realm_roles(&["admin"]).sign();
    let status = |method: &'static str, uri: &'static str, token: Option<String>| {
        let req = app.forward_auth(method, uri);
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("GET", "/api", None).await, 401);
    assert_eq!(status("GET", "/api/x", None).await, 401);
    assert_eq!(status("GET", "/apix", None).await, 200, "not a whole segment");
    assert_eq!(status("GET", "/api?x=1", None).await, 401, "query dropped");
    // Refused as unreadable: 403 in forward-auth, since nginx turns a 400 into a 500 (docs/contract.md §6 v2).
    assert_eq!(status("GET", "/other/../api/x", None).await, 403, ".. rejected");
    assert_eq!(status("GET", "/other/%2e%2e/api/x", None).await, 403, "encoded .. rejected");
    assert_eq!(status("GET", "/%61pi/x", None).await, 401, "percent-decoded before matching");
    assert_eq!(status("GET", "/api/public/x", None).await, 200, "longest prefix wins");
    assert_eq!(status("GET", "/api/x", Some(learner.clone())).await, 200);
    assert_eq!(status("GET", "/api/admin/x", Some(learner.clone())).await, 403);
    assert_eq!(status("GET", "/api/admin/x", Some(admin.clone())).await, 200);
    assert_eq!(status("GET", "/api/admin/x", None).await, 401, "401 before 403");
    assert_eq!(status("GET", "/staff", None).await, 401, "a roles rule implies a login");
    assert_eq!(status("GET", "/free", None).await, 200, "no rule: anonymous passes");
}

#[tokio::test]
async fn a_cors_preflight_passes_without_a_token() {
    let kc = FakeKeycloak::start().await;
    let app = rules_app(&kc).await;
    let res = app
        .forward_auth("OPTIONS", "/api/x")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-identity-status"), "anonymous");
    // A bare OPTIONS is no preflight.
    assert_eq!(app.forward_auth("OPTIONS", "/api/x").send().await.unwrap().status(), 401);
    let denied = app.forward_auth("GET", "/api/x").send().await.unwrap();
    assert_eq!(header(&denied, "www-authenticate"), "Bearer");
}

#[tokio::test]
async fn forwarded_method_and_uri_are_believed_only_from_trusted_peers() {
    let kc = FakeKeycloak::start().await;
    let mut env = base_env(&kc);
    set(
        &mut env,
        "SIDECAR__AUTH__RULES",
        r#"[{"prefix":"/","require":true},{"prefix":"/open","require":false}]"#,
    );
    set(&mut env, "SIDECAR__SERVER__TRUSTED_PROXIES", r#"["10.0.0.0/8"]"#);
    let app = TestApp::spawn_with(env).await;
    // Loopback is not trusted here: X-Forwarded-Uri is not believed, and without it the
    // rules cannot be applied, so the request is refused (docs/contract.md §6 v2; v1 judged the auth
    // path itself, which only a rule on `/` happened to cover).
    let res = app.forward_auth("GET", "/open").send().await.unwrap();
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn the_request_id_is_kept_or_generated() {
    let kc = FakeKeycloak::start().await;
    let app = TestApp::spawn(&kc).await;
    let res = app.forward_auth("GET", "/").header("x-request-id", "req-42").send().await.unwrap();
    assert_eq!(header(&res, "x-request-id"), "req-42");
    let res = app.forward_auth("GET", "/").send().await.unwrap();
    assert_eq!(header(&res, "x-request-id").len(), 36);
}

#[tokio::test]
async fn me_returns_the_callers_identity() {
    let kc = FakeKeycloak::start().await;
    let app = TestApp::spawn(&kc).await;
    let token = kc.token().sub("u-me").email("me@x.org").realm_roles(&["learner"]).sign();
    let me: Value = app.get("/_sidecar/me").bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["sub"], "u-me");
    assert_eq!(me["email"], "me@x.org");
    assert_eq!(me["roles"], json!(["learner"]));
    assert_eq!(app.get("/_sidecar/me").send().await.unwrap().status(), 401);
    let bad = app.get("/_sidecar/me").bearer_auth("garbage").send().await.unwrap();
    assert_eq!(bad.status(), 401);
}

#[tokio::test]
async fn metrics_count_auth_decisions_jwks_fetches_and_requests() {
    let kc = FakeKeycloak::start().await;
    let app = TestApp::spawn(&kc).await;
    app.auth_status(&kc.token().sign()).await;
    app.auth_status(&kc.token().exp_in(-100).sign()).await;
    app.forward_auth("GET", "/").send().await.unwrap();
    let text = app.metrics().await;
    assert_eq!(metric(&text, "identity_sidecar_auth_decisions_total{reason=\"ok\"}"), 1.0, "{text}");
    assert_eq!(metric(&text, "identity_sidecar_auth_decisions_total{reason=\"expired\"}"), 1.0);
    assert_eq!(metric(&text, "identity_sidecar_auth_decisions_total{reason=\"anonymous\"}"), 1.0);
    assert!(metric(&text, "identity_sidecar_jwks_fetches_total{result=\"ok\"}") >= 1.0);
    assert_eq!(metric(&text, "identity_sidecar_requests_total{mode=\"forward_auth\",class=\"2xx\"}"), 2.0);
    assert_eq!(metric(&text, "identity_sidecar_requests_total{mode=\"forward_auth\",class=\"4xx\"}"), 1.0);
}

#[tokio::test]
async fn every_public_route_is_counted_by_mode_and_status_class() {
    let kc = FakeKeycloak::start().await;
    let app = TestApp::spawn(&kc).await;
    let http = reqwest::Client::new();
    assert_eq!(app.get("/_sidecar/me").send().await.unwrap().status(), 401);
    for path in ["/_sidecar/enrollment-codes/redeem", "/_sidecar/enrollment-codes/X/redeem"] {
        assert_eq!(http.post(app.url(path)).send().await.unwrap().status(), 401, "{path}");
    }
    assert_eq!(app.get("/_sidecar/jwks.json").send().await.unwrap().status(), 200);
    for path in ["/_sidecar/nothing-here", "/no-upstream"] {
        assert_eq!(app.get(path).send().await.unwrap().status(), 404, "{path}");
    }
    let text = app.metrics().await;
    let requests = |mode: &str, class: &str| {
        metric(&text, &format!("identity_sidecar_requests_total{{mode=\"{mode}\",class=\"{class}\"}}"))
    };
    assert_eq!(requests("me", "4xx"), 1.0, "{text}");
    assert_eq!(requests("redeem", "4xx"), 2.0, "{text}");
    assert_eq!(requests("jwks", "2xx"), 1.0, "{text}");
    assert_eq!(requests("other", "4xx"), 2.0, "{text}");
}

#[tokio::test]
async fn the_admin_port_does_not_serve_public_paths_and_vice_versa() {
    let kc = FakeKeycloak::start().await;
    let app = TestApp::spawn(&kc).await;
    assert_eq!(app.get("/metrics").send().await.unwrap().status(), 404);
    assert_eq!(app.get("/readyz").send().await.unwrap().status(), 404);
    let res = app.http.get(app.admin_url("/_sidecar/auth")).send().await.unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn the_real_binary_started_from_a_toml_file_answers_forward_auth() {
    use crate::helpers::binary::Binary;
    let kc = FakeKeycloak::start().await;
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:{{public}}"
admin_listen = "127.0.0.1:{{admin}}"

[oidc]
issuer = "{issuer}"
audiences = ["app"]

[database]
url = "sqlite://{{dir}}/sidecar.db?mode=rwc"

[[auth.rules]]
prefix = "/private"
require = true

[log]
format = "json"
level = "debug"
"#,
        issuer = kc.issuer()
    );
    let mut bin = Binary::start(&toml);
    bin.wait_ready(Duration::from_secs(20)).await;
    let http = reqwest::Client::new();
    let token = kc.token().sub("bin-user").email("bin@x.org").sign();
    let res = http
        .get(bin.url("/_sidecar/auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/private/page")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-identity-subject"), "bin-user");
    let anonymous =
        http.get(bin.url("/_sidecar/auth")).header("x-forwarded-uri", "/private/page").send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    bin.terminate();
    assert!(bin.wait_exit(Duration::from_secs(10)).await.success());
    // Logs are JSON lines and never contain the token.
    let logs = bin.stderr();
    assert!(logs.lines().any(|l| l.starts_with('{')), "{logs}");
    assert!(!logs.contains(&token), "the token reached a log line");
}

#[tokio::test]
async fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_identity-sidecar"))
        .arg("check-config")
        .env("SIDECAR__OIDC__ISSUER", "https://kc.example/realms/r")
        .env("SIDECAR__OIDC__AUDIENCES", r#"["app"]"#)
        .env("SIDECAR__DATABASE__URL", "postgres://sidecar:hunter2@db/sidecar")
        .env("SIDECAR__KEYCLOAK_ADMIN__CLIENT_SECRET", "s3cret")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("issuer = \"https://kc.example/realms/r\""), "{text}");
    assert!(!text.contains("hunter2") && !text.contains("s3cret"), "{text}");
    assert!(text.contains("[REDACTED]"));
}

#[tokio::test]
async fn a_config_with_an_unknown_key_or_no_audience_refuses_to_start() {
    let run = |vars: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_identity-sidecar"));
        cmd.arg("check-config");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(&[("SIDECAR__OIDC__ISSUER", "https://kc/realms/r")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("oidc.audiences"));
    let out = run(&[
        ("SIDECAR__OIDC__ISSUER", "https://kc/realms/r"),
        ("SIDECAR__OIDC__AUDIENCES", r#"["app"]"#),
        ("SIDECAR__OIDC__AUDIENCE", "typo"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("audience"));
}

#[tokio::test]
async fn migrate_applies_the_schema_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/m.db?mode=rwc", dir.path().display());
    for _ in 0..2 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_identity-sidecar"))
            .arg("migrate")
            .env("SIDECAR__OIDC__ISSUER", "https://kc/realms/r")
            .env("SIDECAR__OIDC__AUDIENCES", r#"["app"]"#)
            .env("SIDECAR__DATABASE__URL", &url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let store = identity_sidecar::store::Store::connect(&url, 1).await.unwrap();
    let mut conn = store.conn().await.unwrap();
    assert_eq!(identity_sidecar::store::organizations::count(&mut conn).await.unwrap(), 0);
}

#[tokio::test]
async fn a_restart_during_a_keycloak_outage_becomes_ready_with_the_persisted_keys() {
    let kc = FakeKeycloak::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__DATABASE__URL", format!("sqlite://{}/keys.db?mode=rwc", dir.path().display()));
    let first = TestApp::spawn_with(env.clone()).await;
    assert_eq!(first.auth_status(&kc.token().sign()).await, 200);
    first.shutdown().await.unwrap();

    kc.set_mode(Mode::Fail);
    let second = TestApp::spawn_with(env).await;
    assert_eq!(second.auth_status(&kc.token().sub("after-restart").sign()).await, 200);
    let text = second.metrics().await;
    assert_eq!(metric(&text, "identity_sidecar_jwks_stale"), 1.0, "{text}");

    // Keycloak back: the next background fetch replaces the stale set.
    kc.set_mode(Mode::Normal);
    let fresh = kc.rotate(KeyKind::Es256);
    assert_eq!(second.auth_status(&kc.token().key(&fresh).sign()).await, 200);
    assert_eq!(metric(&second.metrics().await, "identity_sidecar_jwks_stale"), 0.0);
}

// ---------------------------------------------------------------------------------------------
// docs/contract.md §2 v2: ambiguous credentials, narrowed preflights, routing headers (raw sockets where a
// client library would merge or refuse what is sent)
// ---------------------------------------------------------------------------------------------

/// A proxy in front of `upstream` reading both token sources, with `/api` closed.
async fn gate_proxy(kc: &FakeKeycloak, upstream: &EchoUpstream, extra: &[(&str, &str)]) -> TestApp {
    let mut env = base_env(kc);
    set(&mut env, "SIDECAR__UPSTREAM__URL", upstream.url());
    set(&mut env, "SIDECAR__OIDC__TOKEN_SOURCES", r#"["authorization","x-access-token"]"#);
    set(&mut env, "SIDECAR__AUTH__RULES", r#"[{"prefix":"/api","require":true}]"#);
    for (key, value) in extra {
        set(&mut env, key, *value);
    }
    TestApp::spawn_with(env).await
}

#[tokio::test]
async fn ambiguous_credentials_are_a_bad_token_and_never_reach_the_app() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = gate_proxy(&kc, &upstream, &[]).await;
    let (a, b) = (kc.token().sub("alice").sign(), kc.token().sub("mallory").sign());
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "two Authorization headers",
            vec![format!("Authorization: Bearer {a}"), format!("Authorization: Bearer {a}")],
        ),
        (
            "Basic beside Bearer",
            vec!["Authorization: Basic dXNlcjpwdw==".into(), format!("Authorization: Bearer {a}")],
        ),
        ("Bearer and a tab", vec![format!("Authorization: Bearer\t{a}")]),
        ("two spaces", vec![format!("Authorization: Bearer  {a}")]),
        ("a second word", vec![format!("Authorization: Bearer {a} {b}")]),
        ("no space", vec![format!("Authorization: Bearer{a}")]),
        ("X-Access-Token twice", vec![format!("X-Access-Token: {a}"), format!("X-Access-Token: {a}")]),
        (
            "different tokens in two sources",
            vec![format!("Authorization: Bearer {a}"), format!("X-Access-Token: {b}")],
        ),
    ];
    for (what, lines) in &cases {
        let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        for (method, target) in [("GET", &b"/open"[..]), ("GET", b"/api/x")] {
            let answer = raw(app.public, &request(method, target, &lines)).await;
            answer.assert_problem(401, "ambiguous");
            let challenge = answer.header("www-authenticate").unwrap_or_default();
            assert!(challenge.starts_with("Bearer error=\"invalid_token\""), "{what}: {challenge}");
        }
        // The same through forward-auth.
        let mut forwarded: Vec<&[u8]> = vec![b"X-Forwarded-Method: GET", b"X-Forwarded-Uri: /open"];
        forwarded.extend(&lines);
        let answer = raw(app.public, &request("GET", b"/_sidecar/auth", &forwarded)).await;
        answer.assert_problem(401, "ambiguous");
    }
    assert_eq!(upstream.request_count(), 0, "an ambiguous request reached the app");
    let text = app.metrics().await;
    assert!(metric(&text, "identity_sidecar_auth_decisions_total{reason=\"ambiguous\"}") >= 24.0, "{text}");
}

#[tokio::test]
async fn the_app_receives_only_the_validated_credential_where_it_came_from() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = gate_proxy(&kc, &upstream, &[]).await;
    let token = kc.token().sub("alice").sign();
    let received = |lines: Vec<String>| {
        let bytes = request("GET", b"/api/x", &lines.iter().map(|l| l.as_bytes()).collect::<Vec<_>>());
        let (public, upstream) = (app.public, &upstream);
        async move {
            let answer = raw(public, &bytes).await;
            assert_eq!(answer.status, 200, "{answer:?}");
            upstream.last_request().unwrap()
        }
    };

    // Basic for the app beside APISIX's X-Access-Token: both reach the app unchanged.
    let seen =
        received(vec!["Authorization: Basic dXNlcjpwdw==".into(), format!("X-Access-Token: {token}")]).await;
    assert_eq!(seen.header_all("authorization"), ["Basic dXNlcjpwdw=="]);
    assert_eq!(seen.header_all("x-access-token"), [token.as_str()]);
    assert_eq!(seen.header("x-identity-subject"), Some("alice"));
    // The same token in both sources: the app gets the first source's copy alone.
    let seen =
        received(vec![format!("Authorization: Bearer {token}"), format!("X-Access-Token: {token}")]).await;
    assert_eq!(seen.header_all("authorization"), [format!("Bearer {token}")]);
    assert!(seen.header_all("x-access-token").is_empty(), "{:?}", seen.headers);

    // A proxy reading Authorization only: an X-Access-Token nobody checked never reaches the app.
    let upstream2 = EchoUpstream::start().await;
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__UPSTREAM__URL", upstream2.url());
    let only_authorization = TestApp::spawn_with(env).await;
    let forged = kc.token().sub("mallory").sign();
    let lines = [format!("Authorization: Bearer {token}"), format!("X-Access-Token: {forged}")];
    let bytes = request("GET", b"/x", &lines.iter().map(|l| l.as_bytes()).collect::<Vec<_>>());
    assert_eq!(raw(only_authorization.public, &bytes).await.status, 200);
    let seen = upstream2.last_request().unwrap();
    assert_eq!(seen.header("x-identity-subject"), Some("alice"));
    assert!(seen.header_all("x-access-token").is_empty(), "{:?}", seen.headers);
    let anonymous = request("GET", b"/x", &[format!("X-Access-Token: {forged}").as_bytes()]);
    assert_eq!(raw(only_authorization.public, &anonymous).await.status, 200);
    let seen = upstream2.last_request().unwrap();
    assert_eq!(seen.header("x-identity-status"), Some("anonymous"));
    assert!(seen.header_all("x-access-token").is_empty(), "{:?}", seen.headers);

    // A preflight passes unchecked, so its tokens are dropped (a Basic one stays).
    let preflight = request(
        "OPTIONS",
        b"/api/x",
        &[
            b"Origin: https://app.example",
            b"Access-Control-Request-Method: POST",
            b"Authorization: Bearer not-checked",
            b"X-Access-Token: not-checked",
        ],
    );
    assert_eq!(raw(app.public, &preflight).await.status, 200);
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.method, "OPTIONS");
    assert!(seen.header_all("authorization").is_empty() && seen.header_all("x-access-token").is_empty());
}

#[tokio::test]
async fn only_a_bodiless_options_with_origin_and_no_method_override_passes_as_a_preflight() {
    let kc = FakeKeycloak::start().await;
    let upstream = EchoUpstream::start().await;
    let app = gate_proxy(&kc, &upstream, &[]).await;
    let preflight: [&[u8]; 2] = [b"Origin: https://app.example", b"Access-Control-Request-Method: DELETE"];

    // Proxy mode, over raw TCP (bodies and framing as sent).
    let ok = raw(app.public, &request("OPTIONS", b"/api/x", &preflight)).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let zero =
        raw(app.public, &request("OPTIONS", b"/api/x", &[preflight[0], preflight[1], b"Content-Length: 0"]))
            .await;
    assert_eq!(zero.status, 200, "{zero:?}");
    let before = upstream.request_count();
    let refused: [(&str, Vec<u8>); 7] = [
        ("no Origin", request("OPTIONS", b"/api/x", &preflight[1..])),
        ("no request method", request("OPTIONS", b"/api/x", &preflight[..1])),
        ("a GET", request("GET", b"/api/x", &preflight)),
        (
            "X-HTTP-Method-Override",
            request("OPTIONS", b"/api/x", &[preflight[0], preflight[1], b"X-HTTP-Method-Override: DELETE"]),
        ),
        (
            "X-HTTP-Method",
            request("OPTIONS", b"/api/x", &[preflight[0], preflight[1], b"X-HTTP-Method: DELETE"]),
        ),
        (
            "X-Method-Override",
            request("OPTIONS", b"/api/x", &[preflight[0], preflight[1], b"X-Method-Override: DELETE"]),
        ),
        ("a body", {
            let mut r = request("OPTIONS", b"/api/x", &[preflight[0], preflight[1], b"Content-Length: 5"]);
            r.extend_from_slice(b"hello");
            r
        }),
    ];
    for (what, bytes) in &refused {
        assert_eq!(raw(app.public, bytes).await.status, 401, "{what}");
    }
    let mut chunked =
        request("OPTIONS", b"/api/x", &[preflight[0], preflight[1], b"Transfer-Encoding: chunked"]);
    chunked.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
    assert_eq!(raw(app.public, &chunked).await.status, 401, "a chunked body");
    assert_eq!(upstream.request_count(), before, "a false preflight reached the app");

    // Forward-auth: the method is the forwarded one, the headers the forwarded request's.
    let fa = |method: &'static str| {
        app.forward_auth(method, "/api/x")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "DELETE")
    };
    assert_eq!(fa("OPTIONS").send().await.unwrap().status(), 200);
    assert_eq!(fa("GET").send().await.unwrap().status(), 401, "forwarded GET");
    for name in ["x-http-method-override", "x-http-method", "x-method-override"] {
        assert_eq!(fa("OPTIONS").header(name, "DELETE").send().await.unwrap().status(), 401, "{name}");
    }
    assert_eq!(fa("OPTIONS").body("hello").send().await.unwrap().status(), 401, "a body");
}

#[tokio::test]
async fn routing_headers_never_reach_the_app_and_forwarded_routing_only_from_trusted_peers() {
    let kc = FakeKeycloak::start().await;
    const ALWAYS_REMOVED: [&str; 5] =
        ["x-original-url", "x-rewrite-url", "x-http-method-override", "x-http-method", "x-method-override"];
    const TRUSTED_ONLY: [&str; 3] = ["x-forwarded-prefix", "x-forwarded-uri", "x-forwarded-method"];
    for (trusted_proxies, trusted) in [(None, true), (Some(r#"["10.0.0.0/8"]"#), false)] {
        let upstream = EchoUpstream::start().await;
        let extra: Vec<(&str, &str)> =
            trusted_proxies.map(|t| ("SIDECAR__SERVER__TRUSTED_PROXIES", t)).into_iter().collect();
        let app = gate_proxy(&kc, &upstream, &extra).await;
        let mut req = app.get("/open/page");
        for name in ALWAYS_REMOVED.iter().chain(&TRUSTED_ONLY) {
            req = req.header(*name, "/api/admin");
        }
        assert_eq!(req.send().await.unwrap().status(), 200);
        let seen = upstream.last_request().unwrap();
        assert_eq!(seen.path, "/open/page");
        for name in ALWAYS_REMOVED {
            assert_eq!(seen.header(name), None, "{name} reached the app (trusted peer: {trusted})");
        }
        for name in TRUSTED_ONLY {
            let expected = trusted.then_some("/api/admin");
            assert_eq!(seen.header(name), expected, "{name} (trusted peer: {trusted})");
        }
    }
}
