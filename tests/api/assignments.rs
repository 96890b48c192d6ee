//! Seat assignments by e-mail (docs/contract.md §12) and the seed's code and seat workflows:
//! creation all or nothing on seats, listing by state, revocation, expiry, acceptance by a
//! login with a verified e-mail (membership, attachment, Keycloak push, headers), erasure, the
//! codes' redeem links, revoking every unredeemed code and the usage report.
//!
//! Every case runs on SQLite and PostgreSQL except the race between two replicas, which needs
//! PostgreSQL (the one backend where transactions really run side by side).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{Connection as _, Row as _};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::app::{base_env, with_admin_token};
use crate::helpers::{Db, Fixture, TestApp, metric, on_both_databases, set};

const ACME_KC_ID: &str = "5c2d7a10-3b4e-4f5a-8c9d-0e1f2a3b4c5d";

struct World(Fixture);

impl std::ops::Deref for World {
    type Target = Fixture;

    fn deref(&self) -> &Fixture {
        &self.0
    }
}

struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    async fn from(res: reqwest::Response) -> Answer {
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(json!(text)) };
        Answer { status, body }
    }
}

async fn start(db: Db) -> World {
    World(Fixture::start(db).await)
}

impl World {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut req = self.admin(method, path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        Answer::from(req.send().await.unwrap()).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.call(Method::DELETE, path, None).await
    }

    async fn org(&self, key: &str, keycloak_id: Option<&str>) {
        let a =
            self.post("/organizations", json!({"key": key, "name": key, "keycloak_id": keycloak_id})).await;
        assert_eq!(a.status, 201, "{}", a.body);
    }

    async fn contract(&self, key: &str, org: &str, max_learners: Option<i64>) {
        let body = json!({"key": key, "organization": org, "name": key, "membership_type": "code",
                          "max_learners": max_learners});
        let a = self.post("/contracts", body).await;
        assert_eq!(a.status, 201, "{}", a.body);
    }

    async fn assign(&self, contract: &str, body: Value) -> Answer {
        self.post(&format!("/contracts/{contract}/assignments"), body).await
    }

    async fn seats_used(&self, contract: &str) -> i64 {
        let a = self.get(&format!("/contracts/{contract}")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.body["seats_used"].as_i64().unwrap()
    }

    async fn assignments(&self, contract: &str, query: &str) -> Vec<Value> {
        let a = self.get(&format!("/contracts/{contract}/assignments?{query}")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["total"], a.body["items"].as_array().unwrap().len());
        a.body["items"].as_array().unwrap().clone()
    }

    /// `X-Identity-Contracts` of a forward-auth request with this token.
    async fn contracts_header(&self, token: &str) -> String {
        let res = self.app.forward_auth("GET", "/").bearer_auth(token).send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.headers()["x-identity-contracts"].to_str().unwrap().to_owned()
    }

    async fn jobs(&self) -> Vec<String> {
        let sql = "SELECT kind FROM jobs ORDER BY id";
        if self.app.database_url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(&self.app.database_url).await.unwrap();
            sqlx::query(sql).fetch_all(&mut c).await.unwrap().iter().map(|r| r.get("kind")).collect()
        } else {
            let mut c = sqlx::SqliteConnection::connect(&self.app.database_url).await.unwrap();
            sqlx::query(sql).fetch_all(&mut c).await.unwrap().iter().map(|r| r.get("kind")).collect()
        }
    }

    async fn actions(&self, query: &str) -> Vec<String> {
        let a = self.get(&format!("/audit?{query}")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.body["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap().to_owned()).collect()
    }
}

fn emails(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("learner{i}@example.org")).collect()
}

fn in_secs(secs: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::seconds(secs)).format(&Rfc3339).unwrap()
}

// --- creation -------------------------------------------------------------------------------

async fn twelve_emails_for_ten_free_seats_are_refused_and_nothing_is_written(db: Db) {
    let w = start(db).await;
    w.org("acme", None).await;
    w.contract("ten", "acme", Some(10)).await;

    let a = w.assign("ten", json!({"emails": emails(12)})).await;
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(a.body["detail"].as_str().unwrap().contains("too few free seats"), "{}", a.body);
    assert!(w.assignments("ten", "").await.is_empty(), "nothing written");
    assert_eq!(w.seats_used("ten").await, 0);
    assert!(!w.actions("contract=ten").await.contains(&"assignment.create".to_owned()));

    // Ten distinct addresses once trimmed and lower-cased, plus one that is not an address.
    let mut list = emails(9);
    list.push(" Learner0@EXAMPLE.org ".into());
    list.push("Mixed.Case@Example.ORG".into());
    list.push("not an address".into());
    let a = w.assign("ten", json!({"emails": list})).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let created = a.body["created"].as_array().unwrap();
    assert_eq!(created.len(), 10, "{}", a.body);
    assert_eq!(a.body["existing"], json!([]));
    assert_eq!(a.body["rejected"][0]["email"], "not an address");
    assert!(a.body["rejected"][0]["detail"].as_str().unwrap().contains("space"), "{}", a.body);
    let mixed = created.iter().find(|c| c["email"] == "mixed.case@example.org").expect("lower-cased");
    assert_eq!(
        (&mixed["state"], &mixed["contract"], &mixed["organization"], &mixed["sub"], &mixed["expires_at"]),
        (&json!("allocated"), &json!("ten"), &json!("acme"), &Value::Null, &Value::Null)
    );
    assert_eq!(w.seats_used("ten").await, 10, "every assignment holds a seat");

    // Already assigned addresses take no new seat; a new one on a full contract is refused.
    let a = w.assign("ten", json!({"emails": ["MIXED.case@example.org"]})).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(
        (a.body["created"].as_array().unwrap().len(), &a.body["existing"][0]["id"]),
        (0, &mixed["id"])
    );
    assert_eq!(w.assign("ten", json!({"emails": ["new@example.org"]})).await.status, 409);

    // Bad bodies.
    assert_eq!(w.assign("ten", json!({"emails": []})).await.status, 422);
    assert_eq!(w.assign("ten", json!({"emails": ["a@x.org"], "expires_at": in_secs(-60)})).await.status, 422);
    assert_eq!(w.assign("ten", json!({"emails": "a@x.org"})).await.status, 400);
    assert_eq!(w.assign("ten", json!({"emails": ["a@x.org"], "extra": 1})).await.status, 400);
    assert_eq!(w.assign("nope", json!({"emails": ["a@x.org"]})).await.status, 404);
    assert_eq!(w.get("/contracts/ten/assignments?state=maybe").await.status, 400);

    // An unlimited contract never runs out.
    w.contract("open", "acme", None).await;
    let a = w.assign("open", json!({"emails": emails(12)})).await;
    assert_eq!((a.status, a.body["created"].as_array().unwrap().len()), (201, 12), "{}", a.body);

    assert_eq!(w.actions("contract=ten").await.iter().filter(|a| *a == "assignment.create").count(), 10);
    let metrics = w.app.metrics().await;
    assert!(metrics.contains("assignments_total{state=\"allocated\"} 22"), "{metrics}");
}

// --- acceptance ----------------------------------------------------------------------------

async fn a_verified_login_accepts_its_assignment_and_an_unverified_one_does_not(db: Db) {
    let w = start(db).await;
    w.org("acme", Some(ACME_KC_ID)).await;
    w.contract("c", "acme", Some(3)).await;
    let a = w.assign("c", json!({"emails": ["Ann.Lee@Example.org"]})).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let id = a.body["created"][0]["id"].as_i64().unwrap();

    let unverified =
        w.kc.token()
            .sub("ann")
            .sid("s1")
            .email("ann.lee@example.org")
            .claim("email_verified", json!(false))
            .sign();
    assert_eq!(w.contracts_header(&unverified).await, "");
    assert_eq!(w.assignments("c", "state=allocated").await.len(), 1, "an unverified e-mail never accepts");
    let missing =
        w.kc.token().sub("ann").sid("s2").email("ann.lee@example.org").remove_claim("email_verified");
    assert_eq!(w.contracts_header(&missing.sign()).await, "");
    assert_eq!(w.seats_used("c").await, 1);

    // A new login (another session) with the e-mail verified, in another case.
    let verified = w.kc.token().sub("ann").sid("s3").email("ANN.LEE@example.ORG").sign();
    assert_eq!(w.contracts_header(&verified).await, "c");
    assert_eq!(w.seats_used("c").await, 1, "the assignment's seat became the attachment: counted once");
    let accepted = w.assignments("c", "state=accepted").await;
    assert_eq!((accepted.len(), &accepted[0]["id"], &accepted[0]["sub"]), (1, &json!(id), &json!("ann")));
    assert!(accepted[0]["accepted_at"].is_string());
    assert!(w.assignments("c", "state=allocated").await.is_empty());

    let user = w.get("/users/ann").await;
    assert_eq!(user.status, 200, "{}", user.body);
    let m = &user.body["memberships"][0];
    assert_eq!(
        (&m["organization"], &m["source"], &m["keep_until_seen"]),
        (&json!("acme"), &json!("assignment"), &json!(true))
    );
    let att = &user.body["attachments"][0];
    assert_eq!((&att["contract"], &att["source"]), (&json!("c"), &json!("assignment")));
    assert_eq!(
        w.jobs().await,
        ["keycloak.add_member"],
        "a new membership of a linked organization is pushed"
    );

    // The next login without the organization in its claim keeps both (§4 step 3 spares them).
    let again = w.kc.token().sub("ann").sid("s4").email("ann.lee@example.org").organization(json!([])).sign();
    assert_eq!(w.contracts_header(&again).await, "c");
    assert_eq!(w.seats_used("c").await, 1);
    assert_eq!(w.delete(&format!("/assignments/{id}")).await.status, 409, "accepted: no longer revocable");

    let actions = w.actions("sub=ann").await;
    for action in ["assignment.accept", "membership.add", "attachment.add"] {
        assert!(actions.contains(&action.to_owned()), "{action} in {actions:?}");
    }
    let metrics = w.app.metrics().await;
    assert!(metrics.contains("assignments_total{state=\"accepted\"} 1"), "{metrics}");
}

async fn an_attached_user_accepts_and_the_assignment_seat_is_released(db: Db) {
    let w = start(db).await;
    w.org("acme", None).await;
    w.contract("c", "acme", Some(2)).await;
    let token =
        w.kc.token().sub("bob").sid("s1").email("bob@example.org").claim("email_verified", json!(false));
    assert_eq!(w.contracts_header(&token.sign()).await, "");
    let a = w.call(Method::PUT, "/users/bob/contracts/c", None).await;
    assert!(a.status == 200 || a.status == 201 || a.status == 204, "{} {}", a.status, a.body);
    assert_eq!(w.seats_used("c").await, 1);
    assert_eq!(w.assign("c", json!({"emails": ["bob@example.org"]})).await.status, 201);
    assert_eq!(w.seats_used("c").await, 2);

    let verified = w.kc.token().sub("bob").sid("s2").email("bob@example.org").sign();
    assert_eq!(w.contracts_header(&verified).await, "c");
    assert_eq!(w.seats_used("c").await, 1, "the assignment's seat is released");
    assert_eq!(w.assignments("c", "state=accepted").await.len(), 1);
    let user = w.get("/users/bob").await;
    assert_eq!(user.body["attachments"][0]["source"], "admin", "the existing attachment stays as it was");
}

// --- expiry and revocation -----------------------------------------------------------------

async fn expiry_and_revocation_release_the_seat(db: Db) {
    let w = start(db).await;
    w.org("acme", None).await;
    w.contract("one", "acme", Some(1)).await;
    let a = w.assign("one", json!({"emails": ["soon@example.org"], "expires_at": in_secs(2)})).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let soon = a.body["created"][0]["id"].as_i64().unwrap();
    assert_eq!(w.seats_used("one").await, 1);
    assert_eq!(w.assign("one", json!({"emails": ["later@example.org"]})).await.status, 409);

    // At expires_at the seat is free at once, before anything marks the row.
    let deadline = Instant::now() + Duration::from_secs(15);
    while w.seats_used("one").await != 0 {
        assert!(Instant::now() < deadline, "the expired assignment still holds its seat");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let expired = w.assignments("one", "state=expired").await;
    assert_eq!((expired.len(), &expired[0]["id"]), (1, &json!(soon)));
    assert!(w.assignments("one", "state=allocated").await.is_empty());
    assert_eq!(w.delete(&format!("/assignments/{soon}")).await.status, 409, "expired: not revocable");
    let late = w.kc.token().sub("late").sid("s").email("soon@example.org").sign();
    assert_eq!(w.contracts_header(&late).await, "", "an expired assignment is never accepted");

    // A code takes the freed seat at once: the seat check marks the expired row on the way.
    assert!(!w.actions("contract=one").await.contains(&"assignment.expire".to_owned()));
    let codes = w.post("/contracts/one/codes", json!({"count": 1})).await;
    let code = codes.body["items"][0]["code"].as_str().unwrap().to_owned();
    let res = w
        .app
        .http
        .post(w.app.url(&format!("/_sidecar/enrollment-codes/{code}/redeem")))
        .bearer_auth(w.kc.token().sub("carol").sign())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert!(w.actions("contract=one").await.contains(&"assignment.expire".to_owned()));
    assert_eq!(w.seats_used("one").await, 1);
    assert_eq!(w.assign("one", json!({"emails": ["later@example.org"]})).await.status, 409);

    // Revocation releases the seat; twice is 409, unknown ids 404.
    assert_eq!(w.delete("/users/carol/contracts/one").await.status / 100, 2);
    let a = w.assign("one", json!({"emails": ["later@example.org"]})).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let later = a.body["created"][0]["id"].as_i64().unwrap();
    assert_eq!(w.seats_used("one").await, 1);
    assert_eq!(w.delete(&format!("/assignments/{later}")).await.status, 204);
    assert_eq!(w.seats_used("one").await, 0);
    assert_eq!(w.delete(&format!("/assignments/{later}")).await.status, 409);
    assert_eq!(w.delete("/assignments/999999").await.status, 404);
    assert_eq!(w.delete("/assignments/nope").await.status, 404);
    let revoked = w.assignments("one", "state=revoked").await;
    assert!(revoked[0]["revoked_at"].is_string(), "{revoked:?}");
    assert!(w.actions("contract=one").await.contains(&"assignment.revoke".to_owned()));
    let revoked_by_then = w.kc.token().sub("lou").sid("s").email("later@example.org").sign();
    assert_eq!(w.contracts_header(&revoked_by_then).await, "", "a revoked assignment is never accepted");
}

// --- erasure --------------------------------------------------------------------------------

async fn erasing_a_user_empties_the_email_of_their_assignments(db: Db) {
    let w = start(db).await;
    w.org("acme", None).await;
    w.contract("c", "acme", Some(5)).await;
    assert_eq!(w.assign("c", json!({"emails": ["dan@example.org", "eve@example.org"]})).await.status, 201);
    let dan = w.kc.token().sub("dan").sid("s").email("dan@example.org").sign();
    assert_eq!(w.contracts_header(&dan).await, "c");

    assert_eq!(w.delete("/users/dan").await.status, 204);
    let all = w.assignments("c", "").await;
    let accepted: Vec<&Value> = all.iter().filter(|a| a["state"] == "accepted").collect();
    assert_eq!((accepted.len(), &accepted[0]["email"]), (1, &Value::Null), "{all:?}");
    let other: Vec<&Value> = all.iter().filter(|a| a["state"] == "allocated").collect();
    assert_eq!(other[0]["email"], "eve@example.org", "other people's assignments stay");
    assert_eq!(w.seats_used("c").await, 1, "dan's seat went with him, eve's stays");
}

// --- the seed's code and seat workflows ---------------------------------------------------------

async fn codes_carry_redeem_links_are_revoked_at_once_and_usage_adds_up(db: Db) {
    let w = World(
        Fixture::start_with(db, |_, env| {
            set(env, "SIDECAR__CODES__REDEEM_URL_TEMPLATE", "https://learn.example.com/enrollmentcode/{code}")
        })
        .await,
    );
    w.org("acme", None).await;
    w.contract("c", "acme", Some(10)).await;
    let a = w.post("/contracts/c/codes", json!({"count": 4})).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let codes: Vec<String> =
        a.body["items"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap().to_owned()).collect();

    let listed = w.get("/contracts/c/codes").await;
    for item in listed.body["items"].as_array().unwrap() {
        let code = item["code"].as_str().unwrap();
        assert_eq!(item["redeem_url"], format!("https://learn.example.com/enrollmentcode/{code}"));
    }
    let csv = w.admin(Method::GET, "/contracts/c/codes").header("accept", "text/csv").send().await.unwrap();
    let csv = csv.text().await.unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().ends_with(",redeem_url"), "{csv}");
    for line in lines {
        let code = line.split(',').next().unwrap();
        assert!(line.ends_with(&format!(",https://learn.example.com/enrollmentcode/{code}")), "{line}");
    }

    let res = w
        .app
        .http
        .post(w.app.url(&format!("/_sidecar/enrollment-codes/{}/redeem", codes[0])))
        .bearer_auth(w.kc.token().sub("ann").sign())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(w.call(Method::DELETE, &format!("/codes/{}", codes[1]), None).await.status, 204);

    let a = w.post("/contracts/c/codes/revoke", json!({})).await;
    assert_eq!((a.status, &a.body), (200, &json!({"revoked": 2})));
    assert_eq!(w.post("/contracts/c/codes/revoke", json!({})).await.body, json!({"revoked": 0}));
    assert_eq!(w.post("/contracts/nope/codes/revoke", json!({})).await.status, 404);
    assert!(w.actions("contract=c").await.contains(&"code.revoke_all".to_owned()));

    // Assignments in every state, and an admin attachment.
    let a = w.assign("c", json!({"emails": ["a@example.org", "b@example.org", "c@example.org"]})).await;
    let ids: Vec<i64> =
        a.body["created"].as_array().unwrap().iter().map(|c| c["id"].as_i64().unwrap()).collect();
    assert_eq!(w.delete(&format!("/assignments/{}", ids[2])).await.status, 204);
    let b = w.kc.token().sub("bee").sid("s").email("b@example.org").sign();
    assert_eq!(w.contracts_header(&b).await, "c");
    assert_eq!(w.call(Method::PUT, "/users/zed/contracts/c", None).await.status / 100, 2);

    let usage = w.get("/contracts/c/usage").await;
    assert_eq!(usage.status, 200, "{}", usage.body);
    assert_eq!(
        usage.body,
        json!({
            "max_learners": 10,
            "seats_used": 4,
            "attachments_by_source": {"sso": 0, "code": 1, "admin": 1, "assignment": 1},
            "codes": {"issued": 4, "redeemed": 1, "revoked": 3},
            "assignments": {"allocated": 1, "accepted": 1, "expired": 0, "revoked": 1},
        })
    );
    assert_eq!(w.get("/contracts/nope/usage").await.status, 404);
}

/// The login path is hot: looking for assignments must not cost a login without any a statement.
async fn a_verified_login_without_assignments_costs_no_extra_statement(db: Db) {
    let w = start(db).await;
    w.org("acme", None).await;
    w.contract("c", "acme", Some(5)).await;
    assert_eq!(w.assign("c", json!({"emails": ["someone@example.org"]})).await.status, 201);
    let queries = async || metric(&w.app.metrics().await, "identity_sidecar_store_queries_total");
    let mut cost = Vec::new();
    for (sub, email, verified) in [
        ("u-unverified", "nobody@example.org", false),
        ("u-verified", "nobody2@example.org", true),
        ("u-assigned", "someone@example.org", true),
    ] {
        let token = w.kc.token().sub(sub).email(email).claim("email_verified", json!(verified)).sign();
        let before = queries().await;
        let expected = if sub == "u-assigned" { "c" } else { "" };
        assert_eq!(w.contracts_header(&token).await, expected);
        cost.push(queries().await - before);
    }
    assert_eq!(cost[0], cost[1], "a verified e-mail without assignments adds no statement: {cost:?}");
    assert!(cost[2] > cost[1], "accepting an assignment does the work: {cost:?}");
}

async fn an_accepted_assignment_makes_the_user_a_member_of_the_keycloak_organization(db: Db) {
    let w = World(Fixture::start_with(db, crate::helpers::with_keycloak_admin).await);
    let acme = w.kc.add_org("acme", "Acme", "");
    w.org("acme", Some(&acme.to_string())).await;
    w.contract("c", "acme", Some(2)).await;
    assert_eq!(w.assign("c", json!({"emails": ["kim@example.org"]})).await.status, 201);
    let token = w.kc.token().sub("kim").email("kim@example.org").organization(json!([])).sign();
    assert_eq!(w.contracts_header(&token).await, "c");
    let deadline = Instant::now() + Duration::from_secs(15);
    while w.kc.members(acme) != ["kim"] {
        assert!(Instant::now() < deadline, "the add-member job never reached Keycloak");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

on_both_databases!(
    an_accepted_assignment_makes_the_user_a_member_of_the_keycloak_organization,
    a_verified_login_without_assignments_costs_no_extra_statement,
    twelve_emails_for_ten_free_seats_are_refused_and_nothing_is_written,
    a_verified_login_accepts_its_assignment_and_an_unverified_one_does_not,
    an_attached_user_accepts_and_the_assignment_seat_is_released,
    expiry_and_revocation_release_the_seat,
    erasing_a_user_empties_the_email_of_their_assignments,
    codes_carry_redeem_links_are_revoked_at_once_and_usage_adds_up,
);

// --- PostgreSQL: two replicas racing for the last seats ----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_to_accept_assignments_and_redeem_codes_never_overfill_on_postgres() {
    let w = World(
        Fixture::start_with(Db::Postgres, |_, env| set(env, "SIDECAR__DATABASE__MAX_CONNECTIONS", "20"))
            .await,
    );
    let mut env = base_env(&w.kc);
    with_admin_token(&mut env);
    set(&mut env, "SIDECAR__DATABASE__URL", w.app.database_url.clone());
    set(&mut env, "SIDECAR__DATABASE__MAX_CONNECTIONS", "20");
    let second = TestApp::spawn_with(env).await;

    w.org("acme", Some(ACME_KC_ID)).await;
    w.contract("ten", "acme", Some(10)).await;
    let assigned = emails(6);
    assert_eq!(w.assign("ten", json!({"emails": assigned})).await.status, 201);
    let codes: Vec<String> = w.post("/contracts/ten/codes", json!({"count": 20})).await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap().to_owned())
        .collect();

    let apps =
        [(w.app.http.clone(), w.app.public, w.app.admin), (second.http.clone(), second.public, second.admin)];
    let mut racers = tokio::task::JoinSet::new();
    for (i, email) in assigned.iter().enumerate() {
        let (http, public, _) = apps[i % 2].clone();
        let token = w.kc.token().sub(&format!("assigned-{i}")).email(email).sign();
        racers.spawn(async move {
            let res = http
                .get(format!("http://{public}/_sidecar/auth"))
                .header("x-forwarded-method", "GET")
                .header("x-forwarded-uri", "/")
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (
                "accept",
                res.status().as_u16(),
                res.headers()["x-identity-contracts"].to_str().unwrap().to_owned(),
            )
        });
    }
    for (i, code) in codes.iter().enumerate() {
        let (http, public, _) = apps[i % 2].clone();
        let token = w.kc.token().sub(&format!("redeemer-{i}")).sign();
        let url = format!("http://{public}/_sidecar/enrollment-codes/{code}/redeem");
        racers.spawn(async move {
            let res = http.post(url).bearer_auth(token).send().await.unwrap();
            ("redeem", res.status().as_u16(), String::new())
        });
    }
    for i in 0..2 {
        let (http, _, admin) = apps[i % 2].clone();
        let body = json!({"emails": [format!("late{i}@example.org")]});
        racers.spawn(async move {
            let res = http
                .post(format!("http://{admin}/admin/v1/contracts/ten/assignments"))
                .bearer_auth(crate::helpers::ADMIN_TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap();
            ("assign", res.status().as_u16(), String::new())
        });
    }
    let mut outcomes = Vec::new();
    while let Some(result) = racers.join_next().await {
        outcomes.push(result.unwrap());
    }
    let count =
        |kind: &str, status: u16| outcomes.iter().filter(|(k, s, _)| *k == kind && *s == status).count();
    assert_eq!(count("accept", 200), 6, "{outcomes:?}");
    assert!(outcomes.iter().filter(|(k, _, _)| *k == "accept").all(|(_, _, h)| h == "ten"), "{outcomes:?}");
    let redeemed = count("redeem", 201);
    let late = count("assign", 201);
    assert_eq!(redeemed + count("redeem", 409), 20, "{outcomes:?}");
    assert_eq!(late + count("assign", 409), 2, "{outcomes:?}");
    assert_eq!(redeemed + late, 4, "exactly the four free seats were taken: {outcomes:?}");

    assert_eq!(w.seats_used("ten").await, 10);
    let members = w.get("/contracts/ten/members").await;
    assert_eq!(members.body["total"], 6 + redeemed as i64, "{outcomes:?} {}", members.body);
    assert_eq!(w.assignments("ten", "state=allocated").await.len(), late);
    assert_eq!(w.assignments("ten", "state=accepted").await.len(), 6);
}
