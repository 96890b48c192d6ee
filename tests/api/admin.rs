//! Issue "B2B core", admin part: the admin API on the admin port — authentication,
//! organizations, contracts, user memberships and attachments, audit — and that an admin change
//! shows in the very next forward-auth answer.
//!
//! The CRUD, membership and attachment cases run on SQLite and on PostgreSQL (a fresh database
//! per test); authentication and cache invalidation do not depend on the backend and run on
//! SQLite.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, Db, Fixture, TestApp, metric, on_both_databases, set};

/// The fixture, with this file's admin API calls.
struct Admin(Fixture);

impl std::ops::Deref for Admin {
    type Target = Fixture;

    fn deref(&self) -> &Fixture {
        &self.0
    }
}

async fn start(db: Db) -> Admin {
    Admin(Fixture::start(db).await)
}

async fn start_with(db: Db, configure: impl FnOnce(&mut Vec<(String, String)>)) -> Admin {
    Admin(Fixture::start_with(db, |_, env| configure(env)).await)
}

impl Admin {
    /// A request to `/admin/v1{path}` with the static admin token.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.admin(method, path)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let res = request.send().await.expect("the admin port answers");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
        (status, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.request(Method::GET, path)).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.request(Method::POST, path).json(&body)).await
    }

    async fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        self.send(
            self.request(Method::POST, path).header("content-type", "application/json").body(body.to_owned()),
        )
        .await
    }

    async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        let request =
            self.request(Method::PATCH, path).header("content-type", "application/merge-patch+json");
        self.send(request.body(body.to_string())).await
    }

    async fn put(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        let request = self.request(Method::PUT, path);
        self.send(match body {
            Some(body) => request.json(&body),
            None => request,
        })
        .await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// Creates a local organization (no Keycloak link).
    async fn org(&self, key: &str) -> Value {
        let (status, body) =
            self.post("/organizations", json!({"key": key, "name": key.to_uppercase()})).await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Creates a contract of `org` with `extra` fields merged in.
    async fn contract(&self, key: &str, org: &str, membership_type: &str, extra: Value) -> Value {
        let mut body =
            json!({"key": key, "organization": org, "name": key, "membership_type": membership_type});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (status, body) = self.post("/contracts", body).await;
        assert_eq!(status, 201, "{body}");
        body
    }

    async fn seats_used(&self, contract: &str) -> i64 {
        let (status, body) = self.get(&format!("/contracts/{contract}")).await;
        assert_eq!(status, 200, "{body}");
        body["seats_used"].as_i64().unwrap()
    }

    /// The audit events matching `query`, newest first, as (actor, action, contract) triples.
    async fn audit(&self, query: &str) -> Vec<(String, String, Option<String>)> {
        let (status, body) = self.get(&format!("/audit?{query}")).await;
        assert_eq!(status, 200, "{body}");
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["actor"].as_str().unwrap().to_owned(),
                    e["action"].as_str().unwrap().to_owned(),
                    e["contract"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }
}

/// The `field`s of a problem body's `errors`.
fn fields(body: &Value) -> Vec<&str> {
    body["errors"]
        .as_array()
        .map(|e| e.iter().map(|f| f["field"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

fn keys(items: &Value) -> Vec<&str> {
    items.as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap()).collect()
}

on_both_databases!(
    organizations_are_created_read_merge_patched_listed_and_deleted,
    contracts_are_validated_created_patched_and_deleted_with_seats_used,
    an_admin_membership_defaults_to_keep_until_seen_and_takes_given_flags,
    attaching_respects_seats_unless_forced,
    removing_a_membership_detaches_sso_contracts_and_keeps_code_attachments,
);

// --- authentication -------------------------------------------------------------------------

#[tokio::test]
async fn admin_routes_need_a_static_token_or_a_keycloak_admin_role() {
    let admin = start_with(Db::Sqlite, |env| {
        set(env, "SIDECAR__OIDC__CLIENT_ROLES_OF", r#"["sidecar"]"#);
        set(env, "SIDECAR__ADMIN__REQUIRED_ROLES", r#"["identity-sidecar-admin", "sidecar:admin"]"#);
    })
    .await;
    let url = admin.app.admin_url("/admin/v1/organizations");
    let http = &admin.app.http;

    let res = http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert_eq!(res.headers()["content-type"], "application/problem+json");

    let res = http.get(&url).bearer_auth("not-the-admin-token").send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let res = http.get(&url).header("authorization", format!("Basic {ADMIN_TOKEN}")).send().await.unwrap();
    assert_eq!(res.status(), 401, "only the Bearer scheme carries the token");

    let learner = admin.kc.token().realm_roles(&["learner"]).sign();
    assert_eq!(http.get(&url).bearer_auth(&learner).send().await.unwrap().status(), 403);
    let forged = admin
        .kc
        .attacks()
        .signed_by_stranger(&admin.kc.token().realm_roles(&["identity-sidecar-admin"]).claims());
    assert_eq!(http.get(&url).bearer_auth(&forged).send().await.unwrap().status(), 401);

    let realm_admin =
        admin.kc.token().preferred_username("alice").realm_roles(&["identity-sidecar-admin"]).sign();
    assert_eq!(http.get(&url).bearer_auth(&realm_admin).send().await.unwrap().status(), 200);
    let client_admin = admin
        .kc
        .token()
        .sub("sub-of-bob")
        .remove_claim("preferred_username")
        .client_roles("sidecar", &["admin"])
        .sign();
    assert_eq!(http.get(&url).bearer_auth(&client_admin).send().await.unwrap().status(), 200);
    assert_eq!(http.get(&url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().status(), 200);

    // Writes name their admin in the audit trail.
    admin.org("acme").await;
    for (token, sub) in [(ADMIN_TOKEN, "u-1"), (realm_admin.as_str(), "u-2"), (client_admin.as_str(), "u-3")]
    {
        let put = http.put(admin.app.admin_url(&format!("/admin/v1/users/{sub}/organizations/acme")));
        assert_eq!(put.bearer_auth(token).send().await.unwrap().status(), 201);
    }
    let actors: Vec<String> =
        admin.audit("organization=acme").await.into_iter().map(|(actor, ..)| actor).collect();
    assert_eq!(actors, ["admin:sub-of-bob", "admin:alice", "admin:ops", "admin:ops"]);

    // Health, metrics and keys stay open; unknown admin paths are problem JSON 404s.
    for path in ["/healthz", "/readyz", "/metrics", "/.well-known/jwks.json"] {
        assert_eq!(http.get(admin.app.admin_url(path)).send().await.unwrap().status(), 200, "{path}");
    }
    let (status, body) = admin.get("/nothing-here").await;
    assert_eq!((status, body["status"].as_u64()), (404, Some(404)));
    let text = admin.app.metrics().await;
    assert!(metric(&text, "identity_sidecar_requests_total{mode=\"admin\",class=\"4xx\"}") >= 4.0, "{text}");
}

// --- organizations --------------------------------------------------------------------------

async fn organizations_are_created_read_merge_patched_listed_and_deleted(db: Db) {
    let admin = start(db).await;
    let kc_id = "6f1c2b1e-8a6f-4a51-9f53-1d3c6f0e1a11";
    let acme = json!({"key": "acme", "name": "Acme", "description": "Rockets", "keycloak_id": kc_id,
                      "keycloak_alias": "acme"});
    let res = admin.request(Method::POST, "/organizations").json(&acme).send().await.unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["location"], "/admin/v1/organizations/acme");
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["keycloak_id"], kc_id);
    assert_eq!(created["description"], "Rockets");
    assert!(created.get("id").is_none(), "row ids stay internal");

    // Taken unique fields are 409 naming the field.
    for (body, field) in [
        (json!({"key": "acme", "name": "Again"}), "key"),
        (json!({"key": "acme2", "name": "Acme 2", "keycloak_alias": "acme"}), "keycloak_alias"),
        (json!({"key": "acme3", "name": "Acme 3", "keycloak_id": kc_id}), "keycloak_id"),
    ] {
        let (status, problem) = admin.post("/organizations", body).await;
        assert_eq!(status, 409, "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains(field), "{problem}");
    }

    // Rules broken → 422; malformed JSON, wrong types and unknown fields → 400; field named.
    for (body, status, field) in [
        (r#"{"key": "Not A Key", "name": "x"}"#, 422, "key"),
        (r#"{"key": "x", "name": ""}"#, 422, "name"),
        (r#"{"key": "x"}"#, 422, "name"),
        (r#"{"key": "x", "name": "X", "keycloak_id": "not-a-uuid"}"#, 422, "keycloak_id"),
        (r#"{"key": "x", "name": "X", "colour": "red"}"#, 400, "colour"),
        (r#"{"key": "x", "name": 5}"#, 400, "name"),
        (r#"{"key": "x", "name": "X", "keycloak_alias": ["a"]}"#, 400, "keycloak_alias"),
    ] {
        let (got, problem) = admin.post_raw("/organizations", body).await;
        assert_eq!(got, status, "{body}: {problem}");
        assert_eq!(fields(&problem), [field], "{body}: {problem}");
    }
    let (status, problem) = admin.post_raw("/organizations", r#"{"key": "x", "#).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["title"], "Bad Request");

    let (status, body) = admin.get("/organizations/acme").await;
    assert_eq!((status, &body["name"]), (200, &json!("Acme")));
    let (status, problem) = admin.get("/organizations/nope").await;
    assert_eq!((status, problem["status"].as_u64()), (404, Some(404)));

    // Merge patch: absent = unchanged, null = cleared (nullable fields only), key fixed.
    let (status, body) = admin.patch("/organizations/acme", json!({"name": "Acme Inc"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["name"], &body["description"], &body["keycloak_alias"]),
        (&json!("Acme Inc"), &json!("Rockets"), &json!("acme"))
    );
    let (status, body) =
        admin.patch("/organizations/acme", json!({"keycloak_alias": null, "key": "acme"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((&body["keycloak_alias"], &body["keycloak_id"]), (&Value::Null, &json!(kc_id)));
    for (patch, status, field) in [
        (json!({"description": null}), 422, "description"),
        (json!({"name": null}), 422, "name"),
        (json!({"key": "other"}), 422, "key"),
        (json!({"keycloak_alias": ""}), 422, "keycloak_alias"),
        (json!({"nmae": "typo"}), 400, "nmae"),
        (json!({"name": 3}), 400, "name"),
        (json!(["name"]), 400, "body"),
    ] {
        let (got, problem) = admin.patch("/organizations/acme", patch.clone()).await;
        assert_eq!(got, status, "{patch}: {problem}");
        assert_eq!(fields(&problem), [field], "{patch}: {problem}");
    }
    assert_eq!(admin.patch("/organizations/nope", json!({"name": "x"})).await.0, 404);
    let (_, body) = admin.get("/organizations/acme").await;
    assert_eq!(
        (&body["name"], &body["description"]),
        (&json!("Acme Inc"), &json!("Rockets")),
        "refused patches changed nothing"
    );

    // Lists page with {items, total, limit, offset}.
    admin.org("beta").await;
    admin.org("gamma").await;
    let (_, page) = admin.get("/organizations?limit=2").await;
    assert_eq!(keys(&page["items"]), ["acme", "beta"]);
    assert_eq!((&page["total"], &page["limit"], &page["offset"]), (&json!(3), &json!(2), &json!(0)));
    let (_, page) = admin.get("/organizations?limit=2&offset=2").await;
    assert_eq!(keys(&page["items"]), ["gamma"]);
    let (_, page) = admin.get("/organizations").await;
    assert_eq!(page["limit"], 100);
    for (query, status, field) in [
        ("limit=0", 422, "limit"),
        ("limit=1001", 422, "limit"),
        ("limit=x", 400, "limit"),
        ("offset=-1", 400, "offset"),
        ("colour=red", 400, "colour"),
    ] {
        let (got, problem) = admin.get(&format!("/organizations?{query}")).await;
        assert_eq!((got, fields(&problem)), (status, vec![field]), "{query}: {problem}");
    }

    // Deleting: refused while contracts exist; members go with the organization.
    admin.contract("beta-1", "beta", "code", json!({})).await;
    let (status, problem) = admin.delete("/organizations/beta").await;
    assert_eq!(status, 409, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("contracts"));
    assert_eq!(admin.put("/users/u-1/organizations/gamma", None).await.0, 201);
    assert_eq!(admin.delete("/organizations/gamma").await.0, 204);
    assert_eq!(admin.get("/organizations/gamma").await.0, 404);
    assert_eq!(admin.delete("/organizations/gamma").await.0, 404);
    let (_, user) = admin.get("/users/u-1").await;
    assert_eq!(user["memberships"], json!([]));

    let trail: Vec<String> =
        admin.audit("organization=gamma").await.into_iter().map(|(_, action, _)| action).collect();
    assert_eq!(trail, ["organization.delete", "membership.remove", "membership.add", "organization.create"]);
    let trail = admin.audit("organization=acme").await;
    assert_eq!(trail.len(), 3, "create and two applied patches: {trail:?}");
    assert!(trail.iter().all(|(actor, ..)| actor == "admin:ops"));
}

// --- contracts ------------------------------------------------------------------------------

async fn contracts_are_validated_created_patched_and_deleted_with_seats_used(db: Db) {
    let admin = start(db).await;
    admin.org("acme").await;
    admin.org("other").await;
    let full = json!({"key": "acme-2026", "organization": "acme", "name": "Acme 2026", "membership_type": "auto",
                      "starts_on": "2026-01-01", "ends_on": "2026-12-31", "max_learners": 5, "price": "12.50"});
    let res = admin.request(Method::POST, "/contracts").json(&full).send().await.unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["location"], "/admin/v1/contracts/acme-2026");
    let created: Value = res.json().await.unwrap();
    for field in
        ["key", "organization", "name", "membership_type", "starts_on", "ends_on", "max_learners", "price"]
    {
        assert_eq!(created[field], full[field], "{field}");
    }
    assert_eq!((&created["active"], &created["seats_used"]), (&json!(true), &json!(0)));

    let with = |changes: Value| {
        let mut body = full.clone();
        body["key"] = json!("x-1");
        body.as_object_mut().unwrap().extend(changes.as_object().unwrap().clone());
        body
    };
    for (body, status, field) in [
        (with(json!({"ends_on": "2025-12-31"})), 422, "ends_on"),
        (with(json!({"price": "-1"})), 422, "price"),
        (with(json!({"price": "12,50"})), 422, "price"),
        (with(json!({"price": 12.5})), 400, "price"),
        (with(json!({"max_learners": -1})), 422, "max_learners"),
        (with(json!({"max_learners": "5"})), 400, "max_learners"),
        (with(json!({"membership_type": "sometimes"})), 422, "membership_type"),
        (with(json!({"starts_on": "2026-13-01"})), 422, "starts_on"),
        (with(json!({"starts_on": "01/02/2026"})), 422, "starts_on"),
        (with(json!({"active": "yes"})), 400, "active"),
        (with(json!({"seats_used": 3})), 400, "seats_used"),
        (with(json!({"key": "X 1"})), 422, "key"),
        (with(json!({"organization": "nope"})), 422, "organization"),
    ] {
        let (got, problem) = admin.post("/contracts", body.clone()).await;
        assert_eq!(got, status, "{body}: {problem}");
        assert_eq!(fields(&problem), [field], "{body}: {problem}");
    }
    let (status, problem) = admin.post("/contracts", full.clone()).await;
    assert_eq!(status, 409, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("key"));

    // Nothing half-written: the refused contracts left no row and no audit event.
    assert_eq!(admin.get("/contracts/x-1").await.0, 404);
    let store = admin.app.store().await;
    let mut conn = store.conn().await.unwrap();
    assert_eq!(identity_sidecar::store::contracts::count(&mut conn, None).await.unwrap(), 1);
    assert!(admin.audit("contract=x-1").await.is_empty());

    // Lists, all or of one organization.
    admin.contract("other-1", "other", "code", json!({"price": null, "max_learners": null})).await;
    let (_, page) = admin.get("/contracts").await;
    assert_eq!((keys(&page["items"]), &page["total"]), (vec!["acme-2026", "other-1"], &json!(2)));
    let (_, page) = admin.get("/contracts?organization=other").await;
    assert_eq!((keys(&page["items"]), &page["total"]), (vec!["other-1"], &json!(1)));
    let (_, page) = admin.get("/contracts?organization=nobody").await;
    assert_eq!(page["total"], 0);
    assert_eq!(admin.get("/contracts?organisation=other").await.0, 400);

    // Merge patch.
    let (status, body) = admin.patch("/contracts/acme-2026", json!({"price": null, "ends_on": null})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["price"], &body["ends_on"], &body["max_learners"]),
        (&Value::Null, &Value::Null, &json!(5))
    );
    for (patch, status, field) in [
        (json!({"ends_on": "2025-06-30"}), 422, "ends_on"),
        (json!({"active": null}), 422, "active"),
        (json!({"membership_type": null}), 422, "membership_type"),
        (json!({"organization": "nope"}), 422, "organization"),
        (json!({"key": "renamed"}), 422, "key"),
        (json!({"seats_used": 0}), 400, "seats_used"),
        (json!({"starts_on": 20260101}), 400, "starts_on"),
    ] {
        let (got, problem) = admin.patch("/contracts/acme-2026", patch.clone()).await;
        assert_eq!(got, status, "{patch}: {problem}");
        assert_eq!(fields(&problem), [field], "{patch}: {problem}");
    }
    let (status, body) =
        admin.patch("/contracts/acme-2026", json!({"organization": "other", "active": false})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((&body["organization"], &body["active"]), (&json!("other"), &json!(false)));
    assert_eq!(admin.patch("/contracts/nope", json!({"name": "x"})).await.0, 404);

    // Members and seats; a contract somebody holds cannot be deleted.
    assert_eq!(admin.put("/users/u-1/contracts/acme-2026", None).await.0, 201);
    assert_eq!(admin.seats_used("acme-2026").await, 1);
    let (_, members) = admin.get("/contracts/acme-2026/members").await;
    assert_eq!(
        (&members["items"][0]["sub"], &members["items"][0]["source"], &members["total"]),
        (&json!("u-1"), &json!("admin"), &json!(1))
    );
    let (status, problem) = admin.delete("/contracts/acme-2026").await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(admin.delete("/users/u-1/contracts/acme-2026").await.0, 204);
    assert_eq!(admin.delete("/contracts/acme-2026").await.0, 204);
    assert_eq!(admin.get("/contracts/acme-2026").await.0, 404);
    assert_eq!(admin.delete("/contracts/acme-2026").await.0, 404);

    let trail: Vec<String> =
        admin.audit("contract=acme-2026").await.into_iter().map(|(_, action, _)| action).collect();
    assert_eq!(
        trail,
        [
            "contract.delete",
            "attachment.remove",
            "attachment.add",
            "contract.update",
            "contract.update",
            "contract.create"
        ]
    );
}

// --- users ----------------------------------------------------------------------------------

async fn an_admin_membership_defaults_to_keep_until_seen_and_takes_given_flags(db: Db) {
    let admin = start(db).await;
    admin.org("acme").await;

    let (status, m) = admin.put("/users/u-1/organizations/acme", None).await;
    assert_eq!(status, 201, "{m}");
    assert_eq!(
        (&m["organization"], &m["keep_until_seen"], &m["manager"], &m["source"]),
        (&json!("acme"), &json!(true), &json!(false), &json!("admin"))
    );
    let (status, m) = admin.put("/users/u-1/organizations/acme", Some(json!({"manager": true}))).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!((&m["keep_until_seen"], &m["manager"]), (&json!(true), &json!(true)));
    let (status, m) =
        admin.put("/users/u-1/organizations/acme", Some(json!({"keep_until_seen": false}))).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!((&m["keep_until_seen"], &m["manager"]), (&json!(false), &json!(true)));
    let (status, m) = admin.put("/users/u-1/organizations/acme", Some(json!({}))).await;
    assert_eq!((status, &m["manager"]), (200, &json!(true)), "an empty body changes nothing");
    let (status, m) = admin
        .put("/users/u-2/organizations/acme", Some(json!({"manager": true, "keep_until_seen": false})))
        .await;
    assert_eq!((status, &m["keep_until_seen"], &m["manager"]), (201, &json!(false), &json!(true)));

    for (body, status, field) in
        [(json!({"bogus": 1}), 400, "bogus"), (json!({"manager": "yes"}), 400, "manager")]
    {
        let (got, problem) = admin.put("/users/u-1/organizations/acme", Some(body.clone())).await;
        assert_eq!((got, fields(&problem)), (status, vec![field]), "{body}: {problem}");
    }
    assert_eq!(admin.put("/users/u-1/organizations/nope", None).await.0, 404);
    assert_eq!(admin.put("/users/ghost/organizations/nope", None).await.0, 404);
    assert_eq!(admin.get("/users/ghost").await.0, 404, "a refused change creates no user row");

    let (status, user) = admin.get("/users/u-1").await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(
        (&user["sub"], &user["last_login_at"], &user["attachments"]),
        (&json!("u-1"), &Value::Null, &json!([]))
    );
    assert_eq!(user["memberships"][0]["organization"], "acme");
    assert_eq!(
        (&user["memberships"][0]["manager"], &user["memberships"][0]["source"]),
        (&json!(true), &json!("admin"))
    );

    let (_, members) = admin.get("/organizations/acme/members").await;
    assert_eq!(members["total"], 2);
    assert_eq!(members["items"][0]["sub"], "u-1");

    // The audit trail, newest first, paged by cursor.
    let trail: Vec<String> = admin.audit("sub=u-1").await.into_iter().map(|(_, action, _)| action).collect();
    assert_eq!(
        trail,
        ["membership.update", "membership.update", "membership.add"],
        "no event for a change of nothing"
    );
    let (_, page) = admin.get("/audit?sub=u-1&limit=2").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let before = page["next_before"].as_i64().expect("a next page");
    let (_, older) = admin.get(&format!("/audit?sub=u-1&before={before}")).await;
    assert_eq!(
        (older["items"][0]["action"].as_str(), &older["next_before"]),
        (Some("membership.add"), &Value::Null)
    );
    assert_eq!(
        older["items"][0]["detail"],
        json!({"keep_until_seen": true, "manager": false, "source": "admin"})
    );
    assert_eq!(admin.get("/audit?limit=0").await.0, 422);
    assert_eq!(admin.get("/audit?actor=x").await.0, 400);

    let (status, removed) = admin.delete("/users/u-1/organizations/acme").await;
    assert_eq!((status, removed), (200, json!({"organization": "acme", "detached_contracts": []})));
    assert_eq!(admin.delete("/users/u-1/organizations/acme").await.0, 404);
    assert_eq!(admin.delete("/users/ghost/organizations/acme").await.0, 404);
    assert_eq!(admin.get("/users/ghost").await.0, 404);
}

async fn attaching_respects_seats_unless_forced(db: Db) {
    let admin = start(db).await;
    admin.org("acme").await;
    admin.contract("one-seat", "acme", "code", json!({"max_learners": 1})).await;

    let (status, a) = admin.put("/users/a/contracts/one-seat", None).await;
    assert_eq!(status, 201, "{a}");
    assert_eq!(
        (&a["contract"], &a["source"], &a["valid_today"]),
        (&json!("one-seat"), &json!("admin"), &json!(true))
    );
    assert_eq!(admin.put("/users/a/contracts/one-seat", None).await.0, 200, "already attached");
    assert_eq!(admin.seats_used("one-seat").await, 1);

    let (status, problem) = admin.put("/users/b/contracts/one-seat", None).await;
    assert_eq!((status, problem["detail"].as_str()), (409, Some("Contract is full.")));
    assert_eq!(admin.seats_used("one-seat").await, 1);
    assert_eq!(admin.get("/users/b").await.0, 404, "the refused attach rolled back the user row too");
    assert_eq!(admin.put("/users/b/contracts/one-seat?force=maybe", None).await.0, 400);

    let (status, b) = admin.put("/users/b/contracts/one-seat?force=true", None).await;
    assert_eq!(status, 201, "{b}");
    assert_eq!(admin.seats_used("one-seat").await, 2);
    let (_, events) = admin.get("/audit?sub=b").await;
    assert_eq!(events["items"][0]["detail"], json!({"source": "admin", "forced": true}));
    assert_eq!(events["items"][0]["organization"], "acme");

    assert_eq!(admin.delete("/users/b/contracts/one-seat").await.0, 204);
    assert_eq!(admin.seats_used("one-seat").await, 1);
    assert_eq!(admin.delete("/users/b/contracts/one-seat").await.0, 404);
    assert_eq!(admin.put("/users/a/contracts/nope", None).await.0, 404);
    let trail = admin.audit("contract=one-seat").await;
    let actions: Vec<&str> = trail.iter().map(|(_, action, _)| action.as_str()).collect();
    assert_eq!(
        actions,
        ["attachment.remove", "attachment.add", "attachment.add", "contract.create"],
        "no event for the refusal"
    );
}

async fn removing_a_membership_detaches_sso_contracts_and_keeps_code_attachments(db: Db) {
    let admin = start(db).await;
    admin.org("acme").await;
    admin.org("beta").await;
    for (key, org, kind) in [
        ("acme-auto", "acme", "auto"),
        ("acme-managed", "acme", "managed"),
        ("acme-code", "acme", "code"),
        ("acme-redeemed", "acme", "auto"),
        ("acme-admin", "acme", "auto"),
        ("beta-auto", "beta", "auto"),
    ] {
        admin.contract(key, org, kind, json!({})).await;
    }
    assert_eq!(admin.put("/users/u-1/organizations/acme", None).await.0, 201);
    // v2 (docs/contract.md §12): an admin's attachment stays like a code's, even of an SSO contract.
    for contract in ["acme-code", "acme-admin", "beta-auto"] {
        assert_eq!(admin.put(&format!("/users/u-1/contracts/{contract}"), None).await.0, 201);
    }
    // SSO attachments as a login makes them, and an auto contract the user got by redeeming a
    // code (theirs): seeded as reconciliation and a redemption would.
    let store = admin.app.store().await;
    use identity_sidecar::store::model::AttachmentSource;
    for (key, source) in [
        ("acme-auto", AttachmentSource::Sso),
        ("acme-managed", AttachmentSource::Sso),
        ("acme-redeemed", AttachmentSource::Code),
    ] {
        let id =
            identity_sidecar::store::contracts::get(&mut store.conn().await.unwrap(), key).await.unwrap().id;
        let mut tx = store.begin().await.unwrap();
        identity_sidecar::store::attachments::attach(&mut tx, "u-1", id, source).await.unwrap();
        tx.commit().await.unwrap();
    }

    let (status, removed) = admin.delete("/users/u-1/organizations/acme").await;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["detached_contracts"], json!(["acme-auto", "acme-managed"]));
    let (_, user) = admin.get("/users/u-1").await;
    assert_eq!(user["memberships"], json!([]));
    let held: Vec<&str> =
        user["attachments"].as_array().unwrap().iter().map(|a| a["contract"].as_str().unwrap()).collect();
    assert_eq!(held, ["acme-admin", "acme-code", "acme-redeemed", "beta-auto"]);
    assert_eq!(admin.seats_used("acme-auto").await, 0);
    assert_eq!(admin.seats_used("acme-redeemed").await, 1);

    let trail = admin.audit("sub=u-1&limit=3").await;
    assert_eq!(
        trail,
        [
            ("admin:ops".into(), "membership.remove".into(), None),
            ("admin:ops".into(), "attachment.remove".into(), Some("acme-managed".into())),
            ("admin:ops".into(), "attachment.remove".into(), Some("acme-auto".into())),
        ]
    );
}

// --- invalidation ---------------------------------------------------------------------------

#[tokio::test]
async fn an_admin_change_shows_in_the_very_next_forward_auth_request() {
    let admin = start(Db::Sqlite).await;
    admin.org("acme").await;
    admin.contract("acme-code", "acme", "code", json!({})).await;
    let token = admin.kc.token().sub("u-1").sign();
    let headers = || b2b_headers(&admin.app, &token);
    let none = (String::new(), String::new(), String::new());
    assert_eq!(headers().await, none);
    assert_eq!(headers().await, none);
    let hit = "identity_sidecar_cache_lookups_total{cache=\"login\",result=\"hit\"}";
    assert_eq!(metric(&admin.app.metrics().await, hit), 1.0, "the login is cached");

    // A membership change drops the user's cached login…
    assert_eq!(admin.put("/users/u-1/organizations/acme", Some(json!({"manager": true}))).await.0, 201);
    assert_eq!(headers().await, ("acme".into(), "acme".into(), String::new()));
    // …so does an attachment…
    assert_eq!(admin.put("/users/u-1/contracts/acme-code", None).await.0, 201);
    assert_eq!(headers().await, ("acme".into(), "acme".into(), "acme-code".into()));
    // …a new auto contract drops every login, and the next reconciliation attaches it…
    admin.contract("acme-sso", "acme", "auto", json!({})).await;
    assert_eq!(headers().await, ("acme".into(), "acme".into(), "acme-code,acme-sso".into()));
    // …and removing the membership takes the SSO contract away, not the code one.
    assert_eq!(admin.delete("/users/u-1/organizations/acme").await.0, 200);
    assert_eq!(headers().await, (String::new(), String::new(), "acme-code".into()));
    // A contract write is seen too: one that ended is gone from the headers.
    let (status, _) =
        admin.patch("/contracts/acme-code", json!({"ends_on": "2000-01-01", "starts_on": null})).await;
    assert_eq!(status, 200);
    assert_eq!(headers().await, none);
}

/// Organizations, managed organizations and contracts of a forward-auth answer for `token`.
async fn b2b_headers(app: &TestApp, token: &str) -> (String, String, String) {
    let res = app.forward_auth("GET", "/").bearer_auth(token).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let h = |name: &str| res.headers()[name].to_str().unwrap().to_owned();
    (h("x-identity-organizations"), h("x-identity-managed-organizations"), h("x-identity-contracts"))
}
