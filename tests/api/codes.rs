//! Enrollment codes (docs/contract.md §6, §7): generation, listing (JSON and CSV) and revocation on the
//! admin port; redemption on the public port in both forms, with its statuses and messages,
//! seats, memberships, the Keycloak job it queues, the failure limit, the cache invalidation
//! that makes the very next request see the contract, what is refused before the body is
//! read; and the users lookup and erasure.
//!
//! Every case runs on SQLite and PostgreSQL (a fresh database per test) except the seat race
//! (PostgreSQL: the one backend where redemptions really run side by side), the log check
//! (the real binary, on SQLite), and the checks made before a redemption reaches the store —
//! authentication before the body, the content type, cross-site requests (docs/contract.md §7 v2) — and
//! the CSV formula defusing, which no database changes (SQLite).

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{Connection as _, Row as _};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::binary::Binary;
use crate::helpers::{ADMIN_TOKEN, Db, FakeKeycloak, Fixture, TestApp, metric, on_both_databases, set};

const INVALID: &str = "Invalid or expired enrollment code.";
const NO_CONTRACT: &str = "No contracts found for this code.";
const FULL: &str = "Contract is full.";

/// A Keycloak organization id for the linked organization of the tests.
const ACME_KC_ID: &str = "0b7f3c2a-5d1e-4f6a-9b8c-7d6e5f4a3b21";

/// The fixture, with this file's admin and redemption calls.
struct World(Fixture);

impl std::ops::Deref for World {
    type Target = Fixture;

    fn deref(&self) -> &Fixture {
        &self.0
    }
}

/// An answer: status, JSON body (null when empty) and headers.
struct Answer {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

impl Answer {
    async fn from(res: reqwest::Response) -> Answer {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
        Answer { status, body, headers }
    }

    fn detail(&self) -> &str {
        self.body["detail"].as_str().unwrap_or_default()
    }
}

async fn start(db: Db) -> World {
    World(Fixture::start(db).await)
}

async fn start_with(db: Db, configure: impl FnOnce(&mut Vec<(String, String)>)) -> World {
    World(Fixture::start_with(db, |_, env| configure(env)).await)
}

impl World {
    async fn get(&self, path: &str) -> Answer {
        Answer::from(self.admin(Method::GET, path).send().await.unwrap()).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        Answer::from(self.admin(Method::POST, path).json(&body).send().await.unwrap()).await
    }

    async fn patch(&self, path: &str, body: Value) -> Answer {
        Answer::from(self.admin(Method::PATCH, path).json(&body).send().await.unwrap()).await
    }

    async fn put(&self, path: &str, body: Value) -> Answer {
        Answer::from(self.admin(Method::PUT, path).json(&body).send().await.unwrap()).await
    }

    async fn delete(&self, path: &str) -> Answer {
        Answer::from(self.admin(Method::DELETE, path).send().await.unwrap()).await
    }

    /// Creates an organization, linked to Keycloak when `keycloak_id` is given.
    async fn org(&self, key: &str, keycloak_id: Option<&str>) {
        let a =
            self.post("/organizations", json!({"key": key, "name": key, "keycloak_id": keycloak_id})).await;
        assert_eq!(a.status, 201, "{}", a.body);
    }

    /// Creates a contract of `org` with `extra` fields merged in.
    async fn contract(&self, key: &str, org: &str, membership_type: &str, extra: Value) {
        let mut body =
            json!({"key": key, "organization": org, "name": key, "membership_type": membership_type});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let a = self.post("/contracts", body).await;
        assert_eq!(a.status, 201, "{}", a.body);
    }

    /// Generates codes with this body; returns them.
    async fn generate(&self, contract: &str, body: Value) -> Vec<String> {
        let a = self.post(&format!("/contracts/{contract}/codes"), body).await;
        assert_eq!(a.status, 201, "{}", a.body);
        let items = a.body["items"].as_array().unwrap();
        assert_eq!(a.body["total"], items.len());
        items.iter().map(|c| c["code"].as_str().unwrap().to_owned()).collect()
    }

    /// The contract's codes as JSON items, keyed by code.
    async fn code(&self, contract: &str, code: &str) -> Value {
        let a = self.get(&format!("/contracts/{contract}/codes?limit=1000")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.body["items"].as_array().unwrap().iter().find(|c| c["code"] == code).cloned().expect("listed")
    }

    async fn seats_used(&self, contract: &str) -> i64 {
        let a = self.get(&format!("/contracts/{contract}")).await;
        a.body["seats_used"].as_i64().unwrap()
    }

    fn token(&self, sub: &str) -> String {
        self.kc.token().sub(sub).sign()
    }

    /// `POST /_sidecar/enrollment-codes/{code}/redeem` as `sub`.
    async fn redeem(&self, sub: &str, code: &str) -> Answer {
        self.redeem_with(&self.token(sub), code).await
    }

    async fn redeem_with(&self, token: &str, code: &str) -> Answer {
        let url = self.app.url(&format!("/_sidecar/enrollment-codes/{code}/redeem"));
        Answer::from(self.app.http.post(url).bearer_auth(token).send().await.unwrap()).await
    }

    /// `POST /_sidecar/enrollment-codes/redeem` with `{"code": …}` as `sub`.
    async fn redeem_in_body(&self, sub: &str, code: &str) -> Answer {
        let url = self.app.url("/_sidecar/enrollment-codes/redeem");
        let res = self.app.http.post(url).bearer_auth(self.token(sub)).json(&json!({"code": code}));
        Answer::from(res.send().await.unwrap()).await
    }

    /// Every job as (kind, payload), oldest first, read straight from the table.
    async fn jobs(&self) -> Vec<(String, Value)> {
        let sql = "SELECT kind, CAST(payload AS TEXT) AS payload FROM jobs ORDER BY id";
        let rows: Vec<(String, String)> = if self.app.database_url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(&self.app.database_url).await.unwrap();
            let rows = sqlx::query(sql).fetch_all(&mut c).await.unwrap();
            rows.iter().map(|r| (r.get("kind"), r.get("payload"))).collect()
        } else {
            let mut c = sqlx::SqliteConnection::connect(&self.app.database_url).await.unwrap();
            let rows = sqlx::query(sql).fetch_all(&mut c).await.unwrap();
            rows.iter().map(|r| (r.get("kind"), r.get("payload"))).collect()
        };
        rows.into_iter().map(|(kind, payload)| (kind, serde_json::from_str(&payload).unwrap())).collect()
    }

    /// The audit events of `query`, newest first, as (actor, action) pairs, and the raw JSON.
    async fn audit(&self, query: &str) -> (Vec<(String, String)>, Value) {
        let a = self.get(&format!("/audit?{query}")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let pairs = a.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["actor"].as_str().unwrap().to_owned(), e["action"].as_str().unwrap().to_owned()))
            .collect();
        (pairs, a.body)
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

fn parse_time(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap(), &Rfc3339).unwrap()
}

/// A code in the right format that was never issued.
const NEVER_ISSUED: &str = "ZZZZZ-ZZZZZ-ZZZZZ-ZZZZZ-ZZZZZ";

on_both_databases!(
    unknown_unusable_and_spent_codes_are_invalid_unless_the_valid_contract_is_full,
    codes_of_contracts_not_valid_today_find_no_contract,
    a_valid_code_attaches_the_user_and_queues_a_keycloak_push_only_for_a_new_linked_membership,
    an_unlimited_code_admits_users_until_the_seats_run_out,
    anonymous_and_bad_tokens_are_refused_in_both_forms,
    the_next_forward_auth_request_after_a_redemption_shows_the_contract,
    eleven_failed_attempts_in_a_minute_get_429_with_retry_after,
    generation_follows_seats_price_and_type_and_lists_as_json_and_csv,
    thousands_of_codes_are_generated_at_once_and_exported_whole,
    a_revoked_code_is_invalid_and_a_redeemed_code_cannot_be_revoked,
    users_are_found_by_email_and_erased_with_their_seats_freed,
);

// --- step 1 and 2 ---------------------------------------------------------------------------

async fn unknown_unusable_and_spent_codes_are_invalid_unless_the_valid_contract_is_full(db: Db) {
    let w = start(db).await;
    w.org("acme", None).await;
    w.contract("two-seats", "acme", "code", json!({"max_learners": 2})).await;

    for unknown in [NEVER_ISSUED, "not-a-code", "%20"] {
        let a = w.redeem("ann", unknown).await;
        assert_eq!((a.status, a.detail()), (404, INVALID), "{unknown}");
        assert_eq!(a.headers["content-type"], "application/problem+json");
    }

    let hour = time::Duration::hours(1);
    let now = OffsetDateTime::now_utc();
    let later = w.generate("two-seats", json!({"count": 1, "activates_at": rfc3339(now + hour)})).await;
    let over = w
        .generate(
            "two-seats",
            json!({"count": 1, "activates_at": rfc3339(now - 2 * hour), "expires_at": rfc3339(now - hour)}),
        )
        .await;
    for code in [&later[0], &over[0]] {
        let a = w.redeem("bob", code).await;
        assert_eq!((a.status, a.detail()), (404, INVALID), "{}", a.body);
    }

    // One-time codes: the first redeemer's; someone else gets 404 while seats are left…
    let codes = w.generate("two-seats", json!({"count": 2})).await;
    assert_eq!(w.redeem("ann", &codes[0]).await.status, 201);
    let a = w.redeem("bob", &codes[0]).await;
    assert_eq!((a.status, a.detail()), (404, INVALID));
    // …and 409 once the contract is full, for spent, early and expired codes alike.
    assert_eq!(w.redeem("carol", &codes[1]).await.status, 201);
    assert_eq!(w.seats_used("two-seats").await, 2);
    for code in [&codes[0], &later[0], &over[0]] {
        let a = w.redeem("dave", code).await;
        assert_eq!((a.status, a.detail()), (409, FULL), "{}", a.body);
    }
    let a = w.redeem("dave", NEVER_ISSUED).await;
    assert_eq!((a.status, a.detail()), (404, INVALID), "an unknown code has no contract to be full");
    assert_eq!(w.code("two-seats", &codes[0]).await["redeemed_by"], "ann", "the refusal changed nothing");

    let text = w.app.metrics().await;
    for (result, n) in [("invalid", 7.0), ("full", 3.0), ("created", 2.0)] {
        let line = format!("identity_sidecar_code_redemptions_total{{result=\"{result}\"}}");
        assert_eq!(metric(&text, &line), n, "{result}: {text}");
    }
}

async fn codes_of_contracts_not_valid_today_find_no_contract(db: Db) {
    let w = start(db).await;
    w.org("acme", None).await;
    let today = OffsetDateTime::now_utc().date();
    let tomorrow = today.next_day().unwrap().to_string();
    let yesterday = today.previous_day().unwrap().to_string();
    for (key, extra) in [
        ("inactive", json!({"active": false})),
        ("not-started", json!({"starts_on": tomorrow})),
        ("ended", json!({"ends_on": yesterday})),
    ] {
        w.contract(key, "acme", "code", extra).await;
        let code = w.generate(key, json!({})).await.remove(0);
        let a = w.redeem("ann", &code).await;
        assert_eq!((a.status, a.detail()), (404, NO_CONTRACT), "{key}: {}", a.body);
        assert_eq!(w.seats_used(key).await, 0);
    }
    // A contract whose last day is today is still valid.
    w.contract(
        "last-day",
        "acme",
        "code",
        json!({"starts_on": today.to_string(), "ends_on": today.to_string()}),
    )
    .await;
    let code = w.generate("last-day", json!({})).await.remove(0);
    assert_eq!(w.redeem("ann", &code).await.status, 201);
    assert_eq!(w.get("/users/ann").await.body["memberships"][0]["organization"], "acme");
}

// --- step 3 and 5 ---------------------------------------------------------------------------

async fn a_valid_code_attaches_the_user_and_queues_a_keycloak_push_only_for_a_new_linked_membership(db: Db) {
    let w = start(db).await;
    w.org("acme", Some(ACME_KC_ID)).await;
    w.org("local", None).await;
    w.contract("acme-course", "acme", "code", json!({"max_learners": 5, "price": "100.00"})).await;
    w.contract("acme-extra", "acme", "code", json!({})).await;
    w.contract("local-course", "local", "code", json!({})).await;
    let codes = w.generate("acme-course", json!({})).await;
    assert_eq!(codes.len(), 5);

    let before = OffsetDateTime::now_utc();
    let a = w.redeem("ann", &codes[0]).await;
    let after = OffsetDateTime::now_utc();
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(
        (&a.body["key"], &a.body["organization"], &a.body["membership_type"], &a.body["seats_used"]),
        (&json!("acme-course"), &json!("acme"), &json!("code"), &json!(1))
    );
    assert_eq!(a.headers["content-type"], "application/json");

    let user = w.get("/users/ann").await.body;
    let m = &user["memberships"][0];
    assert_eq!(
        (&m["organization"], &m["keep_until_seen"], &m["manager"], &m["source"]),
        (&json!("acme"), &json!(true), &json!(false), &json!("code"))
    );
    assert_eq!(
        (&user["attachments"][0]["contract"], &user["attachments"][0]["source"]),
        (&json!("acme-course"), &json!("code"))
    );
    assert_eq!(user["email"], "testuser@example.com", "the redeemer's profile is recorded");

    let push =
        ("keycloak.add_member".to_owned(), json!({"organization_keycloak_id": ACME_KC_ID, "sub": "ann"}));
    assert_eq!(w.jobs().await, std::slice::from_ref(&push));

    let listed = w.code("acme-course", &codes[0]).await;
    assert_eq!(
        (&listed["redeemed"], &listed["redeemed_by"], &listed["redemptions"]),
        (&json!(true), &json!("ann"), &json!(1))
    );
    let at = parse_time(&listed["redeemed_at"]);
    assert!(before - time::Duration::seconds(1) <= at && at <= after, "{at}");

    // The same user again: 200 with the contract, nothing new — with the same code or another
    // (which stays unspent for somebody else).
    for code in [&codes[0], &codes[1]] {
        let a = w.redeem("ann", code).await;
        assert_eq!((a.status, &a.body["key"]), (200, &json!("acme-course")), "{}", a.body);
    }
    assert_eq!(w.code("acme-course", &codes[1]).await["redeemed"], false);
    assert_eq!(w.seats_used("acme-course").await, 1);

    // A second contract of the same organization: the membership exists, so no second push.
    let extra = w.generate("acme-extra", json!({})).await.remove(0);
    assert_eq!(w.redeem("ann", &extra).await.status, 201);
    // An existing membership keeps its flags and source.
    assert_eq!(
        w.put("/users/bob/organizations/acme", json!({"keep_until_seen": false, "manager": true}))
            .await
            .status,
        201
    );
    assert_eq!(w.redeem("bob", &extra).await.status, 201);
    let m = &w.get("/users/bob").await.body["memberships"][0];
    assert_eq!(
        (&m["keep_until_seen"], &m["manager"], &m["source"]),
        (&json!(false), &json!(true), &json!("admin"))
    );
    // A local organization: membership, but nothing to push.
    let local = w.generate("local-course", json!({})).await.remove(0);
    assert_eq!(w.redeem("carol", &local).await.status, 201);
    assert_eq!(w.get("/users/carol").await.body["memberships"][0]["source"], "code");
    assert_eq!(w.jobs().await, [push], "one push: ann's new membership of the linked organization");

    // Audited as the code's doing, naming the code only by its fingerprint; each redemption is
    // also a `code.redeem` event of its own (newest first).
    let (trail, raw) = w.audit("sub=ann").await;
    assert_eq!(
        trail,
        [
            ("code".into(), "code.redeem".into()),
            ("code".into(), "attachment.add".into()),
            ("code".into(), "code.redeem".into()),
            ("code".into(), "attachment.add".into()),
            ("code".into(), "membership.add".into()),
        ]
    );
    let raw = raw.to_string();
    for code in codes.iter().chain([&extra, &local]) {
        assert!(!raw.contains(code.as_str()), "a code in the audit trail: {raw}");
    }
    let fingerprint = &hex::encode(Sha256::digest(codes[0].as_bytes()))[..8];
    assert!(raw.contains(fingerprint), "{raw}");

    let text = w.app.metrics().await;
    assert_eq!(metric(&text, "identity_sidecar_code_redemptions_total{result=\"created\"}"), 4.0);
    assert_eq!(metric(&text, "identity_sidecar_code_redemptions_total{result=\"already\"}"), 2.0);
}

async fn an_unlimited_code_admits_users_until_the_seats_run_out(db: Db) {
    let w = start(db).await;
    w.org("acme", None).await;
    w.contract("open", "acme", "code", json!({})).await;
    let codes = w.generate("open", json!({})).await;
    assert_eq!(codes.len(), 1);
    let code = &codes[0];
    assert_eq!(w.code("open", code).await["redemption"], "unlimited");
    assert_eq!(w.patch("/contracts/open", json!({"max_learners": 3})).await.status, 200);

    for sub in ["u1", "u2", "u3"] {
        let a = w.redeem(sub, code).await;
        assert_eq!(a.status, 201, "{sub}: {}", a.body);
    }
    let a = w.redeem("u4", code).await;
    assert_eq!((a.status, a.detail()), (409, FULL));
    assert_eq!(w.redeem("u2", code).await.status, 200, "a holder is answered 200 even when full");
    assert_eq!(w.seats_used("open").await, 3);
    let listed = w.code("open", code).await;
    assert_eq!((&listed["redemptions"], &listed["redeemed_by"]), (&json!(3), &Value::Null));
    assert_eq!(w.get("/users/u4").await.status, 404, "a refused redemption leaves no user row");
}

async fn anonymous_and_bad_tokens_are_refused_in_both_forms(db: Db) {
    let w = start(db).await;
    w.org("acme", None).await;
    w.contract("c", "acme", "code", json!({})).await;
    let code = w.generate("c", json!({})).await.remove(0);
    let http = &w.app.http;
    let path_form = w.app.url(&format!("/_sidecar/enrollment-codes/{code}/redeem"));
    let body_form = w.app.url("/_sidecar/enrollment-codes/redeem");
    let stranger = w.kc.attacks().signed_by_stranger(&w.kc.token().sub("ann").claims());
    for url in [&path_form, &body_form] {
        let a = Answer::from(http.post(url).json(&json!({"code": code})).send().await.unwrap()).await;
        assert_eq!(a.status, 401);
        assert_eq!(a.headers["www-authenticate"], "Bearer");
        let a = Answer::from(
            http.post(url).bearer_auth(&stranger).json(&json!({"code": code})).send().await.unwrap(),
        )
        .await;
        assert_eq!(a.status, 401);
        let challenge = a.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer error=\"invalid_token\""), "{challenge}");
    }
    assert_eq!(w.seats_used("c").await, 0);
    assert_eq!(http.get(&path_form).bearer_auth(w.token("ann")).send().await.unwrap().status(), 405);
    // A body that is not {"code": "…"}: 400/422 naming the field.
    for (body, status, field) in
        [(json!({"kode": code}), 400, "kode"), (json!({}), 422, "code"), (json!({"code": 5}), 400, "code")]
    {
        let res = http.post(&body_form).bearer_auth(w.token("ann")).json(&body).send().await.unwrap();
        let a = Answer::from(res).await;
        assert_eq!((a.status, &a.body["errors"][0]["field"]), (status, &json!(field)), "{body}: {}", a.body);
    }
    let a = w.redeem_in_body("ann", &code.to_lowercase().replace('-', "")).await;
    assert_eq!(a.status, 201, "a code typed in lower case without dashes: {}", a.body);
}

// --- invalidation ---------------------------------------------------------------------------

async fn the_next_forward_auth_request_after_a_redemption_shows_the_contract(db: Db) {
    let w = start(db).await;
    w.org("acme", Some(ACME_KC_ID)).await;
    w.contract("acme-course", "acme", "code", json!({})).await;
    let code = w.generate("acme-course", json!({})).await.remove(0);
    let token = w.token("ann");
    let contracts = |token: String| {
        let app = &w.app;
        async move {
            let res = app.forward_auth("GET", "/").bearer_auth(&token).send().await.unwrap();
            assert_eq!(res.status(), 200);
            let h = |name: &str| res.headers()[name].to_str().unwrap().to_owned();
            (h("x-identity-organizations"), h("x-identity-contracts"))
        }
    };
    assert_eq!(contracts(token.clone()).await, (String::new(), String::new()));
    assert_eq!(contracts(token.clone()).await, (String::new(), String::new()));
    let hit = "identity_sidecar_cache_lookups_total{cache=\"login\",result=\"hit\"}";
    assert_eq!(metric(&w.app.metrics().await, hit), 1.0, "the login is cached");

    assert_eq!(w.redeem_with(&token, &code).await.status, 201);
    // Same token, same login: the redemption dropped the cached one. The claim is authoritative
    // and empty, yet the code membership stays (keep_until_seen).
    assert_eq!(contracts(token.clone()).await, ("acme".into(), "acme-course".into()));
    assert_eq!(contracts(token).await, ("acme".into(), "acme-course".into()));
}

// --- failure limit --------------------------------------------------------------------------

async fn eleven_failed_attempts_in_a_minute_get_429_with_retry_after(db: Db) {
    let w = start(db).await;
    w.org("acme", None).await;
    w.contract("c", "acme", "code", json!({})).await;
    let code = w.generate("c", json!({})).await.remove(0);
    for i in 0..10 {
        let a = if i % 2 == 0 {
            w.redeem("mallory", NEVER_ISSUED).await
        } else {
            w.redeem_in_body("mallory", "guess").await
        };
        assert_eq!(a.status, 404, "attempt {}", i + 1);
    }
    let a = w.redeem("mallory", NEVER_ISSUED).await;
    assert_eq!(a.status, 429, "{}", a.body);
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(a.headers["content-type"], "application/problem+json");
    // The brake holds for valid codes too, and is per user.
    assert_eq!(w.redeem_in_body("mallory", &code).await.status, 429);
    assert_eq!(w.redeem("ann", &code).await.status, 201);
    assert_eq!(w.redeem("ann", &code).await.status, 200, "successes never count");
    let text = w.app.metrics().await;
    assert_eq!(metric(&text, "identity_sidecar_code_redemptions_total{result=\"rate_limited\"}"), 2.0);
}

// --- admin: generation, listing, revocation -------------------------------------------------

async fn generation_follows_seats_price_and_type_and_lists_as_json_and_csv(db: Db) {
    let w = start(db).await;
    w.org("acme", None).await;
    w.contract("seats", "acme", "code", json!({"max_learners": 3})).await;
    w.contract("unlimited", "acme", "code", json!({"max_learners": 0})).await;
    w.contract("free-sso", "acme", "auto", json!({"max_learners": 50, "price": "0"})).await;
    w.contract("paid-sso", "acme", "managed", json!({"max_learners": 2, "price": "9.90"})).await;

    let seats = w.generate("seats", json!({})).await;
    assert_eq!(seats.len(), 3);
    for code in &seats {
        let groups: Vec<&str> = code.split('-').collect();
        assert_eq!(groups.len(), 5, "{code}");
        assert!(
            groups
                .iter()
                .all(|g| g.len() == 5 && g.bytes().all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b)))
        );
    }
    assert_eq!(w.generate("unlimited", json!({})).await.len(), 1);
    assert_eq!(w.generate("free-sso", json!({})).await.len(), 0);
    // An empty body is a generation with defaults too.
    let res = w.admin(Method::POST, "/contracts/paid-sso/codes").send().await.unwrap();
    let a = Answer::from(res).await;
    assert_eq!((a.status, a.body["total"].as_u64()), (201, Some(2)), "{}", a.body);
    let window = json!({"count": 2, "activates_at": "2030-01-01T00:00:00Z", "expires_at": "2030-02-01T00:00:00+01:00"});
    let free = w.generate("free-sso", window).await;
    assert_eq!(free.len(), 2);
    let listed = w.code("free-sso", &free[0]).await;
    assert_eq!(
        (&listed["redemption"], &listed["activates_at"], &listed["expires_at"], &listed["revoked"]),
        (&json!("one-time"), &json!("2030-01-01T00:00:00Z"), &json!("2030-01-31T23:00:00Z"), &json!(false))
    );

    for (body, status, field) in [
        (json!({"count": 0}), 422, "count"),
        (json!({"count": 10_001}), 422, "count"),
        (
            json!({"activates_at": "2030-01-02T00:00:00Z", "expires_at": "2030-01-01T00:00:00Z"}),
            422,
            "expires_at",
        ),
        (json!({"expires_at": "tomorrow"}), 422, "expires_at"),
        (json!({"count": "2"}), 400, "count"),
        (json!({"redemption": "unlimited"}), 400, "redemption"),
    ] {
        let a = w.post("/contracts/seats/codes", body.clone()).await;
        assert_eq!((a.status, &a.body["errors"][0]["field"]), (status, &json!(field)), "{body}: {}", a.body);
    }
    assert_eq!(w.post("/contracts/nope/codes", json!({})).await.status, 404);
    assert_eq!(w.get("/contracts/nope/codes").await.status, 404);

    // JSON pages.
    let a = w.get("/contracts/seats/codes?limit=2").await;
    assert_eq!(
        (a.body["total"].as_i64(), a.body["limit"].as_i64(), a.body["offset"].as_i64()),
        (Some(3), Some(2), Some(0))
    );
    let page: Vec<&str> =
        a.body["items"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap()).collect();
    assert_eq!(page, [seats[0].as_str(), seats[1].as_str()], "oldest first");

    // CSV: every code, header first.
    assert_eq!(w.redeem("ann", &seats[1]).await.status, 201);
    assert_eq!(w.delete(&format!("/codes/{}", seats[2])).await.status, 204);
    let res =
        w.admin(Method::GET, "/contracts/seats/codes").header("accept", "text/csv").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/csv; charset=utf-8");
    assert!(res.headers()["content-disposition"].to_str().unwrap().contains("seats-codes.csv"));
    let text = res.text().await.unwrap();
    assert!(text.ends_with("\r\n"));
    let rows = parse_csv(&text);
    assert_eq!(
        rows[0],
        [
            "code",
            "contract",
            "redemption",
            "activates_at",
            "expires_at",
            "revoked",
            "revoked_at",
            "redeemed",
            "redeemed_by",
            "redeemed_at",
            "redemptions",
            "created_at"
        ]
    );
    assert_eq!(rows.len(), 4);
    let column = |name: &str| rows[0].iter().position(|h| h == name).unwrap();
    let row = |code: &str| rows.iter().find(|r| r[0] == code).unwrap();
    assert_eq!(rows[1..].iter().map(|r| r[0].as_str()).collect::<Vec<_>>(), seats);
    assert_eq!(row(&seats[0])[column("redeemed")], "false");
    assert_eq!(row(&seats[1])[column("redeemed_by")], "ann");
    assert!(OffsetDateTime::parse(&row(&seats[1])[column("redeemed_at")], &Rfc3339).is_ok());
    assert_eq!(row(&seats[2])[column("revoked")], "true");
    assert_eq!(row(&seats[0])[column("redemption")], "one-time");
    assert_eq!(row(&seats[0])[column("expires_at")], "");
    // The JSON answer stays the default, and a CSV page can be asked for.
    let res = w
        .admin(Method::GET, "/contracts/seats/codes?limit=1&offset=1")
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    let rows = parse_csv(&res.text().await.unwrap());
    assert_eq!((rows.len(), rows[1][0].as_str()), (2, seats[1].as_str()));

    // The audit trail says how many, never which.
    let (trail, raw) = w.audit("contract=seats").await;
    assert!(trail.contains(&("admin:ops".into(), "code.generate".into())), "{trail:?}");
    assert!(trail.contains(&("admin:ops".into(), "code.revoke".into())), "{trail:?}");
    for code in &seats {
        assert!(!raw.to_string().contains(code.as_str()));
    }
}

async fn thousands_of_codes_are_generated_at_once_and_exported_whole(db: Db) {
    let w = start(db).await;
    w.org("acme", None).await;
    w.contract("big", "acme", "code", json!({})).await;
    let first = w.generate("big", json!({})).await;
    let batch = w.generate("big", json!({"count": 2500})).await;
    assert_eq!(batch.len(), 2500);
    let distinct: std::collections::HashSet<&String> = first.iter().chain(&batch).collect();
    assert_eq!(distinct.len(), 2501);

    let res = w.admin(Method::GET, "/contracts/big/codes").header("accept", "text/csv").send().await.unwrap();
    let rows = parse_csv(&res.text().await.unwrap());
    let exported: Vec<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
    let made: Vec<&str> = first.iter().chain(&batch).map(String::as_str).collect();
    assert_eq!(exported, made, "every code, oldest first, beyond one page");
    let a = w.get("/contracts/big/codes?limit=1000&offset=2000").await;
    assert_eq!((a.body["total"].as_i64(), a.body["items"].as_array().unwrap().len()), (Some(2501), 501));
}

/// RFC 4180: CRLF records, quoted fields may hold commas, quotes (doubled) and line breaks.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let (mut row, mut field) = (Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {
                assert_eq!(chars.next(), Some('\n'), "CR without LF");
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(row.is_empty() && field.is_empty(), "the last record ends with CRLF");
    rows
}

async fn a_revoked_code_is_invalid_and_a_redeemed_code_cannot_be_revoked(db: Db) {
    let w = start(db).await;
    w.org("acme", None).await;
    w.contract("c", "acme", "code", json!({"max_learners": 5})).await;
    let codes = w.generate("c", json!({"count": 2})).await;

    let a = w.delete(&format!("/codes/{}", codes[0])).await;
    assert_eq!(a.status, 204, "{}", a.body);
    let listed = w.code("c", &codes[0]).await;
    assert_eq!(listed["revoked"], true);
    assert!(listed["revoked_at"].is_string());
    let a = w.redeem("ann", &codes[0]).await;
    assert_eq!((a.status, a.detail()), (404, INVALID));
    assert_eq!(
        w.delete(&format!("/codes/{}", codes[0].to_lowercase())).await.status,
        204,
        "again: still revoked"
    );

    assert_eq!(w.redeem("ann", &codes[1]).await.status, 201);
    let a = w.delete(&format!("/codes/{}", codes[1])).await;
    assert_eq!(a.status, 409, "{}", a.body);
    assert_eq!(w.code("c", &codes[1]).await["revoked"], false);
    assert_eq!(w.delete(&format!("/codes/{NEVER_ISSUED}")).await.status, 404);
    assert_eq!(w.delete("/codes/nonsense").await.status, 404);

    let (trail, raw) = w.audit("contract=c").await;
    let revocations = trail.iter().filter(|(_, action)| action == "code.revoke").count();
    assert_eq!(revocations, 1, "one event for one revocation: {trail:?}");
    let fingerprint = &hex::encode(Sha256::digest(codes[0].as_bytes()))[..8];
    assert!(raw.to_string().contains(fingerprint));
    assert!(!raw.to_string().contains(codes[0].as_str()));
}

// --- users ----------------------------------------------------------------------------------

async fn users_are_found_by_email_and_erased_with_their_seats_freed(db: Db) {
    let w = start(db).await;
    w.org("acme", Some(ACME_KC_ID)).await;
    w.contract("one-seat", "acme", "code", json!({"max_learners": 1})).await;
    let code = w.generate("one-seat", json!({"count": 1})).await.remove(0);
    let ann = w.kc.token().sub("ann").email("Ann.Smith@Example.org").name("Ann Smith").sign();
    assert_eq!(w.app.auth_status(&ann).await, 200);
    assert_eq!(w.redeem_with(&ann, &code).await.status, 201);
    assert_eq!(w.seats_used("one-seat").await, 1);
    let bob = w.kc.token().sub("bob").email("bob@example.org").sign();
    assert_eq!(w.app.auth_status(&bob).await, 200);

    let a = w.get("/users?email=ann.smith@EXAMPLE.org").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!((&a.body["total"], &a.body["items"][0]["sub"]), (&json!(1), &json!("ann")));
    assert_eq!(a.body["items"][0]["email"], "Ann.Smith@Example.org");
    assert_eq!(w.get("/users?email=nobody@example.org").await.body["total"], 0);
    assert_eq!(w.get("/users").await.status, 422);
    assert_eq!(w.get("/users?mail=x").await.status, 400);

    let a = w.delete("/users/ann").await;
    assert_eq!(a.status, 204, "{}", a.body);
    assert_eq!(w.get("/users/ann").await.status, 404);
    assert_eq!(w.get("/users?email=ann.smith@example.org").await.body["total"], 0);
    assert_eq!(w.seats_used("one-seat").await, 0, "the seat is free again");
    assert_eq!(w.delete("/users/ann").await.status, 404);
    assert_eq!(w.delete("/users/ghost").await.status, 404);
    assert_eq!(w.get("/users/ghost").await.status, 404, "erasing nobody creates nobody");
    assert_eq!(w.get("/users/bob").await.status, 200, "others stay");

    // The code stays spent but no longer points at the person.
    let listed = w.code("one-seat", &code).await;
    assert_eq!(
        (&listed["redeemed"], &listed["redeemed_by"], &listed["redeemed_at"], &listed["redemptions"]),
        (&json!(true), &json!("(erased)"), &Value::Null, &json!(0))
    );
    let a = w.redeem("carol", &code).await;
    assert_eq!((a.status, a.detail()), (404, INVALID));

    // The audit trail keeps the subject and nothing else about the person.
    let (trail, raw) = w.audit("sub=ann").await;
    assert_eq!(
        trail[..3],
        [
            ("admin:ops".into(), "user.erase".into()),
            ("admin:ops".into(), "membership.remove".into()),
            ("admin:ops".into(), "attachment.remove".into()),
        ]
    );
    let raw = raw.to_string().to_lowercase();
    assert!(!raw.contains("example.org") && !raw.contains("ann smith"), "{raw}");

    // The erased user's cached login is gone: their next request starts from nothing.
    let res = w.app.forward_auth("GET", "/").bearer_auth(&ann).send().await.unwrap();
    assert_eq!(res.headers()["x-identity-contracts"], "");
}

// --- PostgreSQL: the seat race ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_users_racing_for_ten_seats_with_forty_codes_get_exactly_ten_on_postgres() {
    let w = start_with(Db::Postgres, |env| set(env, "SIDECAR__DATABASE__MAX_CONNECTIONS", "20")).await;
    w.org("acme", Some(ACME_KC_ID)).await;
    w.contract("ten", "acme", "code", json!({"max_learners": 10})).await;
    let codes = w.generate("ten", json!({"count": 40})).await;
    let tokens: Vec<String> = (0..40).map(|i| w.token(&format!("racer-{i}"))).collect();
    let mut racers = tokio::task::JoinSet::new();
    for (code, token) in codes.into_iter().zip(tokens) {
        let http = w.app.http.clone();
        let url = w.app.url(&format!("/_sidecar/enrollment-codes/{code}/redeem"));
        racers.spawn(async move {
            let res = http.post(url).bearer_auth(token).send().await.unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            (status, body)
        });
    }
    let mut statuses = Vec::new();
    while let Some(result) = racers.join_next().await {
        let (status, body) = result.unwrap();
        if status == 409 {
            assert_eq!(body["detail"], FULL);
        }
        statuses.push(status);
    }
    statuses.sort();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 30, "{statuses:?}");
    assert_eq!(w.seats_used("ten").await, 10);
    assert_eq!(w.get("/contracts/ten/members").await.body["total"], 10);
    assert_eq!(w.jobs().await.len(), 10, "one push per new member, none for the refused");
}

// --- the real binary: no code in the logs ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_form_redeems_and_no_code_ever_reaches_the_log() {
    let kc = FakeKeycloak::start().await;
    let sha256 = hex::encode(Sha256::digest(ADMIN_TOKEN.as_bytes()));
    let mut bin = Binary::start(&format!(
        r#"
[server]
listen = "127.0.0.1:{{public}}"
admin_listen = "127.0.0.1:{{admin}}"

[oidc]
issuer = "{issuer}"
audiences = ["app"]

[database]
url = "sqlite://{{dir}}/sidecar.db?mode=rwc"

[[admin.token_sha256]]
name = "ops"
sha256 = "{sha256}"

[log]
format = "json"
level = "debug"
"#,
        issuer = kc.issuer(),
    ));
    bin.wait_ready(Duration::from_secs(20)).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let admin = |method: Method, path: &str| {
        http.request(method, bin.admin_url(&format!("/admin/v1{path}"))).bearer_auth(ADMIN_TOKEN)
    };

    let res = admin(Method::POST, "/organizations")
        .json(&json!({"key": "acme", "name": "Acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let contract = json!({"key": "c", "organization": "acme", "name": "C", "membership_type": "code", "max_learners": 5});
    assert_eq!(admin(Method::POST, "/contracts").json(&contract).send().await.unwrap().status(), 201);
    let res = admin(Method::POST, "/contracts/c/codes").send().await.unwrap();
    assert_eq!(res.status(), 201);
    let generated: Value = res.json().await.unwrap();
    let codes: Vec<String> = generated["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 5);
    let csv = admin(Method::GET, "/contracts/c/codes").header("accept", "text/csv").send().await.unwrap();
    assert_eq!(csv.status(), 200);

    let token = kc.token().sub("ann").sign();
    let body_form = bin.url("/_sidecar/enrollment-codes/redeem");
    let res =
        http.post(&body_form).bearer_auth(&token).json(&json!({"code": codes[0]})).send().await.unwrap();
    assert_eq!(res.status(), 201);
    let contract: Value = res.json().await.unwrap();
    assert_eq!(contract["key"], "c");
    let res =
        http.post(&body_form).bearer_auth(&token).json(&json!({"code": codes[0]})).send().await.unwrap();
    assert_eq!(res.status(), 200);
    // The path form, a lower-case spelling, a failure and a revocation: none may be logged either.
    let lower = codes[1].to_lowercase();
    let res = http
        .post(bin.url(&format!("/_sidecar/enrollment-codes/{lower}/redeem")))
        .bearer_auth(kc.token().sub("bob").sign())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res =
        http.post(&body_form).bearer_auth(&token).json(&json!({"code": NEVER_ISSUED})).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(admin(Method::DELETE, &format!("/codes/{}", codes[2])).send().await.unwrap().status(), 204);

    // Logs are written as they happen; give the last lines a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = bin.stderr();
    assert!(log.contains("enrollment-codes/redeem"), "the requests were logged at debug: {log}");
    assert!(log.contains("enrollment-codes/{code}/redeem"), "the path form is logged redacted");
    assert!(log.contains("/admin/v1/codes/{code}"), "so is the revocation");
    for code in codes.iter().chain([&lower, &NEVER_ISSUED.to_owned()]) {
        let bare = code.replace('-', "");
        for form in [code.as_str(), bare.as_str()] {
            assert!(!log.contains(form), "the code {form} is in the log");
        }
    }
}

// --- before the body: authentication, cross-site requests, content type (docs/contract.md §7 v2) ---------

/// Sends `request` over a new connection and reads the answer's head (status line and
/// headers). The connection is handed back open: the client has not finished its body.
async fn raw_head(app: &TestApp, request: &[u8]) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(app.public).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut head = Vec::new();
    // Generous: this only keeps a broken server from hanging the test; the point is that an
    // answer comes at all while most of the declared body was never sent.
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without an answer: {}", String::from_utf8_lossy(&head));
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("an answer before the body was sent");
    (stream, String::from_utf8_lossy(&head).into_owned())
}

/// A request head declaring a 2 MB JSON body, followed by its first kilobyte only.
fn two_megabytes_declared(path: &str, authorization: Option<&str>) -> Vec<u8> {
    let auth = authorization.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: 2000000\r\n\r\n{{\"code\": \""
    )
    .into_bytes();
    request.extend(std::iter::repeat_n(b'A', 1000));
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redemption_is_authenticated_before_its_body_is_read() {
    let w = start(Db::Sqlite).await;
    let code_path = format!("/_sidecar/enrollment-codes/{NEVER_ISSUED}/redeem");
    for path in ["/_sidecar/enrollment-codes/redeem", code_path.as_str()] {
        let (_open, head) = raw_head(&w.app, &two_megabytes_declared(path, None)).await;
        assert!(head.starts_with("HTTP/1.1 401"), "anonymous, {path}: {head}");
        assert!(head.to_lowercase().contains("content-type: application/problem+json"), "{head}");
    }
    // Authenticated, the body form refuses the declared size before reading it.
    let token = w.token("ann");
    let request = two_megabytes_declared("/_sidecar/enrollment-codes/redeem", Some(&token));
    let (_open, head) = raw_head(&w.app, &request).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    // A chunked body has no declared size: it is cut as soon as it passes 4 KiB.
    let chunk = format!("{{\"code\": \"{}\"}}", "A".repeat(5000));
    let request = format!(
        "POST /_sidecar/enrollment-codes/redeem HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
        chunk.len()
    );
    let (_open, head) = raw_head(&w.app, request.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_form_needs_application_json() {
    let w = start(Db::Sqlite).await;
    w.org("acme", None).await;
    w.contract("c", "acme", "code", json!({"max_learners": 5})).await;
    let codes = w.generate("c", json!({})).await;
    let url = w.app.url("/_sidecar/enrollment-codes/redeem");
    let body = json!({"code": codes[0]}).to_string();
    let send = |content_type: Option<&'static str>, token: Option<String>| {
        let mut req = w.app.http.post(&url).body(body.clone());
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        async move { Answer::from(req.send().await.unwrap()).await }
    };
    for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let a = send(content_type, Some(w.token("ann"))).await;
        assert_eq!(a.status, 415, "{content_type:?}: {}", a.body);
        assert_eq!(a.headers["content-type"], "application/problem+json");
        assert!(a.detail().contains("application/json"), "{}", a.detail());
        // Authentication comes first.
        assert_eq!(send(content_type, None).await.status, 401, "{content_type:?}");
    }
    assert_eq!(w.code("c", &codes[0]).await["redeemed"], false, "a refused body redeemed nothing");
    let a = send(Some("Application/JSON; charset=utf-8"), Some(w.token("ann"))).await;
    assert_eq!(a.status, 201, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_redemptions_are_refused_unless_their_origin_is_allowed() {
    let w = start_with(Db::Sqlite, |env| {
        set(env, "SIDECAR__SERVER__ALLOWED_ORIGINS", r#"["https://Shop.Example:443"]"#);
    })
    .await;
    w.org("acme", None).await;
    w.contract("c", "acme", "code", json!({"max_learners": 10})).await;
    let codes = w.generate("c", json!({"count": 5})).await;
    let same_origin = format!("http://{}", w.app.public);
    let redeem = |sub: &str, code: &str, headers: &[(&str, &str)], body_form: bool| {
        let req = if body_form {
            let url = w.app.url("/_sidecar/enrollment-codes/redeem");
            w.app.http.post(url).json(&json!({"code": code}))
        } else {
            w.app.http.post(w.app.url(&format!("/_sidecar/enrollment-codes/{code}/redeem")))
        };
        let req = headers.iter().fold(req.bearer_auth(w.token(sub)), |r, (n, v)| r.header(*n, *v));
        async move { Answer::from(req.send().await.unwrap()).await }
    };

    // A page of another site, in both forms: 403, and the code stays unredeemed.
    for hostile in [
        vec![("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")],
        vec![("origin", "https://evil.example")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![("origin", same_origin.as_str()), ("sec-fetch-site", "cross-site")],
    ] {
        for body_form in [true, false] {
            let a = redeem("victim", &codes[0], &hostile, body_form).await;
            assert_eq!(a.status, 403, "{hostile:?} body form {body_form}: {}", a.body);
            assert_eq!(a.headers["content-type"], "application/problem+json");
            assert!(a.detail().contains("allowed_origins"), "{}", a.detail());
        }
    }
    assert_eq!(w.code("c", &codes[0]).await["redeemed"], false, "nothing was redeemed");
    assert_eq!(w.seats_used("c").await, 0);
    assert_eq!(w.get("/users/victim").await.status, 404, "not even a user row");
    // Authentication is checked first; the content type after the cross-site rule.
    let url = w.app.url("/_sidecar/enrollment-codes/redeem");
    let anonymous =
        w.app.http.post(&url).header("origin", "https://evil.example").json(&json!({"code": codes[0]}));
    assert_eq!(anonymous.send().await.unwrap().status(), 401);
    let form = w
        .app
        .http
        .post(&url)
        .bearer_auth(w.token("victim"))
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body(json!({"code": codes[0]}).to_string());
    assert_eq!(form.send().await.unwrap().status(), 403);

    // The page's own origin, a typed URL, an allowed origin, and a client that says nothing.
    let a =
        redeem("ann", &codes[0], &[("origin", &same_origin), ("sec-fetch-site", "same-origin")], true).await;
    assert_eq!(a.status, 201, "same origin: {}", a.body);
    let a = redeem("bob", &codes[1], &[("sec-fetch-site", "none")], false).await;
    assert_eq!(a.status, 201, "typed into the address bar: {}", a.body);
    let allowed = [("origin", "https://shop.example"), ("sec-fetch-site", "cross-site")];
    let a = redeem("carol", &codes[2], &allowed, true).await;
    assert_eq!(a.status, 201, "an allowed origin: {}", a.body);
    assert_eq!(redeem("dave", &codes[3], &[], true).await.status, 201, "curl");
    // Behind a TLS-terminating gateway (a trusted peer: loopback), the forwarded scheme and
    // host are the request's own origin.
    let behind = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "App.Example.com"),
        ("origin", "https://app.example.com"),
        ("sec-fetch-site", "same-origin"),
    ];
    assert_eq!(redeem("erin", &codes[4], &behind, true).await.status, 201);
    assert_eq!(w.seats_used("c").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_scheme_and_host_from_an_untrusted_peer_do_not_make_a_request_same_origin() {
    let w = start_with(Db::Sqlite, |env| set(env, "SIDECAR__SERVER__TRUSTED_PROXIES", "[]")).await;
    w.org("acme", None).await;
    w.contract("c", "acme", "code", json!({"max_learners": 10})).await;
    let code = w.generate("c", json!({})).await.remove(0);
    let res = w
        .app
        .http
        .post(w.app.url(&format!("/_sidecar/enrollment-codes/{code}/redeem")))
        .bearer_auth(w.token("victim"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(w.code("c", &code).await["redeemed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_cells_that_could_start_a_formula_are_prefixed_with_a_quote() {
    let w = start(Db::Sqlite).await;
    w.org("acme", None).await;
    w.contract("c", "acme", "code", json!({"max_learners": 10})).await;
    let codes = w.generate("c", json!({"count": 4})).await;
    // Subjects come from tokens: whoever controls one chooses what lands in the export.
    let hostile = ["=HYPERLINK(\"https://evil.example\",\"x\")", "+1+1", "-2+3", "@SUM(A1)"];
    for (code, sub) in codes.iter().zip(hostile) {
        assert_eq!(w.redeem(sub, code).await.status, 201, "{sub}");
    }
    let res = w.admin(Method::GET, "/contracts/c/codes").header("accept", "text/csv").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let rows = parse_csv(&res.text().await.unwrap());
    let column = rows[0].iter().position(|h| h == "redeemed_by").unwrap();
    for (code, sub) in codes.iter().zip(hostile) {
        let row = rows.iter().find(|r| r[0] == *code).unwrap();
        assert_eq!(row[column], format!("'{sub}"));
    }
    // JSON is data, not a spreadsheet: it shows the subject as it is.
    assert_eq!(w.code("c", &codes[0]).await["redeemed_by"], hostile[0]);
}
