//! The active organization of a session (docs/contract.md §10): its five sources in order,
//! `GET|PUT|DELETE /_sidecar/active-organization`, the headers, token and `X-Userinfo` that
//! carry it, `headers.scope_to_active_organization`, the rule option, and what ends a
//! selection (a new session, a removed membership, erasure).
//!
//! Every case runs on SQLite and on PostgreSQL. Organizations `acme` and `globex` are linked to
//! Keycloak by alias; `school` is local (a code or admin organization). Logins go through
//! forward-auth as APISIX sends them; memberships come from the claim of a first login with
//! Keycloak's `organization:*` scope.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use identity_sidecar::store::{NewOrganization, Organization, Store, memberships, organizations, selections};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::records::contract;
use crate::helpers::{Db, Fixture, metric, on_both_databases, set};
use identity_sidecar::store::{MembershipSource, MembershipType, contracts, users};

/// Keycloak's "all my organizations" scope.
const ALL: &str = "openid email profile organization:*";
/// Keycloak's "pick one" scope.
const PICK: &str = "openid email profile organization";
const PROBLEM_TYPE: &str = "urn:identity-sidecar:active-organization-required";

struct World {
    store: Store,
    school: Organization,
    fixture: Fixture,
}

impl std::ops::Deref for World {
    type Target = Fixture;

    fn deref(&self) -> &Fixture {
        &self.fixture
    }
}

/// What one forward-auth answer says about the active organization, cross-checked between
/// the header, the entitlement token and `X-Userinfo`.
#[derive(Debug)]
struct Seen {
    active: Option<String>,
    organizations: String,
    contracts: String,
    token_contracts: Vec<String>,
}

impl World {
    async fn new(db: Db, extra: &[(&str, &str)]) -> World {
        let fixture = Fixture::start_with(db, |_, env| {
            for (key, value) in extra {
                set(env, key, *value);
            }
        })
        .await;
        let store = fixture.app.store().await;
        let mut conn = store.conn().await.unwrap();
        for key in ["acme", "globex"] {
            let new = NewOrganization {
                key: key.into(),
                name: format!("{key} Inc"),
                description: String::new(),
                keycloak_id: None,
                keycloak_alias: Some(key.into()),
                email_domains: Vec::new(),
            };
            organizations::insert(&mut conn, &new).await.unwrap();
        }
        let school = NewOrganization {
            key: "school".into(),
            name: "School".into(),
            description: String::new(),
            keycloak_id: None,
            keycloak_alias: None,
            email_domains: Vec::new(),
        };
        let school = organizations::insert(&mut conn, &school).await.unwrap();
        for (key, org) in [("acme-all", "acme"), ("globex-all", "globex"), ("school-all", "school")] {
            contracts::insert(&mut conn, &contract(key, org, MembershipType::Auto)).await.unwrap();
        }
        drop(conn);
        World { store, school, fixture }
    }

    /// A token of `sub` for session `sid` (`None`: a token without `sid`).
    fn token(&self, sub: &str, sid: Option<&str>, scope: &str, claim: &[&str]) -> String {
        let token = self.kc.token().sub(sub).scope(scope).organization(json!(claim));
        match sid {
            Some(sid) => token.sid(sid).sign(),
            None => token.remove_claim("sid").sign(),
        }
    }

    /// A user who is a member of acme and globex (a first login with `organization:*`).
    async fn member_of_both(&self, sub: &str) {
        let seen = self.see(&self.token(sub, Some(&new_sid()), ALL, &["acme", "globex"])).await;
        assert_eq!(seen.organizations, "acme,globex");
    }

    async fn join_school(&self, sub: &str) {
        let mut conn = self.store.conn().await.unwrap();
        users::ensure(&mut conn, sub).await.unwrap();
        let flags = memberships::Flags { keep_until_seen: true, manager: false };
        memberships::add(&mut conn, sub, self.school.id, MembershipSource::Admin, flags).await.unwrap();
    }

    async fn forward(&self, token: &str, uri: &str) -> reqwest::Response {
        self.app.forward_auth("GET", uri).bearer_auth(token).send().await.expect("the sidecar answers")
    }

    /// A forward-auth call for `/`, which must be 200.
    async fn see(&self, token: &str) -> Seen {
        let res = self.forward(token, "/").await;
        assert_eq!(res.status(), 200);
        read(&res)
    }

    fn endpoint(&self, method: Method, token: &str) -> reqwest::RequestBuilder {
        self.app.http.request(method, self.app.url("/_sidecar/active-organization")).bearer_auth(token)
    }

    async fn get(&self, token: &str) -> Value {
        let res = self.endpoint(Method::GET, token).send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    async fn select(&self, token: &str, organization: &str) -> reqwest::Response {
        self.endpoint(Method::PUT, token).json(&json!({"organization": organization})).send().await.unwrap()
    }

    async fn clear(&self, token: &str) -> reqwest::Response {
        self.endpoint(Method::DELETE, token).send().await.unwrap()
    }

    async fn selections(&self, sub: &str) -> i64 {
        selections::count_for_user(&mut self.store.conn().await.unwrap(), sub).await.unwrap()
    }
}

fn new_sid() -> String {
    Uuid::new_v4().to_string()
}

fn header(res: &reqwest::Response, name: &str) -> String {
    let value = res.headers().get(name).unwrap_or_else(|| panic!("no {name}"));
    value.to_str().unwrap().to_owned()
}

fn read(res: &reqwest::Response) -> Seen {
    let active = header(res, "x-identity-active-organization");
    let active = (!active.is_empty()).then_some(active);
    let jws = header(res, "x-identity-entitlements");
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jws.split('.').nth(1).unwrap()).unwrap()).unwrap();
    match &active {
        Some(key) => assert_eq!(claims["active_organization"], json!(key), "token vs header"),
        None => assert!(claims.get("active_organization").is_none(), "a null member is left out: {claims}"),
    }
    let userinfo: Value =
        serde_json::from_slice(&STANDARD.decode(header(res, "x-userinfo")).unwrap()).unwrap();
    assert_eq!(userinfo["b2b"]["active_organization"], json!(active), "x-userinfo vs header");
    let token_contracts = claims["contracts"].as_array().unwrap().iter();
    let token_contracts = token_contracts.map(|c| c["key"].as_str().unwrap().to_owned()).collect();
    Seen {
        active,
        organizations: header(res, "x-identity-organizations"),
        contracts: header(res, "x-identity-contracts"),
        token_contracts,
    }
}

fn active(seen: &Seen) -> Option<&str> {
    seen.active.as_deref()
}

async fn the_five_sources_apply_in_order(db: Db) {
    let w = World::new(db, &[]).await;
    let sub = "learner";
    w.member_of_both(sub).await;
    let session = new_sid();
    let all = w.token(sub, Some(&session), ALL, &["acme", "globex"]);

    // 5. two organizations, nothing chosen: none.
    assert_eq!(active(&w.see(&all).await), None);
    let body = w.get(&all).await;
    assert_eq!(
        body,
        json!({"active": null, "source": null,
               "organizations": [{"key": "acme", "name": "acme Inc"}, {"key": "globex", "name": "globex Inc"}]})
    );

    // 3. Keycloak's pick: the plain scope and a one-organization claim.
    let picked = w.token(sub, Some(&session), PICK, &["acme"]);
    assert_eq!(active(&w.see(&picked).await), Some("acme"));
    assert_eq!(w.get(&picked).await["source"], "scope");

    // 2. the session's selection beats the pick, and shows at the very next request.
    let res = w.select(&all, "globex").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!((&body["active"], &body["source"]), (&json!("globex"), &json!("selection")));
    assert_eq!(active(&w.see(&all).await), Some("globex"));
    assert_eq!(active(&w.see(&picked).await), Some("globex"));

    // 1. a single-organization scope beats the selection, and fixes it: 409.
    let fixed = w.token(sub, Some(&session), "openid organization:acme", &["acme"]);
    assert_eq!(active(&w.see(&fixed).await), Some("acme"));
    assert_eq!(w.get(&fixed).await["source"], "scope");
    let res = w.select(&fixed, "globex").await;
    assert_eq!(res.status(), 409);
    // Two single-organization scopes skip source 1.
    let two = w.token(sub, Some(&session), "organization:acme organization:globex", &["acme", "globex"]);
    assert_eq!(active(&w.see(&two).await), Some("globex"));

    // Clearing the selection brings the pick back.
    assert_eq!(w.clear(&all).await.status(), 204);
    assert_eq!(active(&w.see(&picked).await), Some("acme"));
    assert_eq!(active(&w.see(&all).await), None);

    // 4. the user's only organization.
    w.see(&w.token("single", Some(&new_sid()), ALL, &["acme"])).await;
    let only = w.token("single", Some(&new_sid()), ALL, &["acme"]);
    assert_eq!(active(&w.see(&only).await), Some("acme"));
    assert_eq!(w.get(&only).await["source"], "only");

    // /me says it too, null when none.
    let me: Value = w.app.get("/_sidecar/me").bearer_auth(&only).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["active_organization"], "acme");
    let me: Value = w.app.get("/_sidecar/me").bearer_auth(&all).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["active_organization"], Value::Null);
}

async fn a_new_session_starts_without_a_selection_and_tokens_without_sid_share_one(db: Db) {
    let w = World::new(db, &[]).await;
    let sub = "learner";
    w.member_of_both(sub).await;
    let first = w.token(sub, Some(&new_sid()), ALL, &["acme", "globex"]);
    assert_eq!(w.select(&first, "acme").await.status(), 200);
    assert_eq!(active(&w.see(&first).await), Some("acme"));

    let second = w.token(sub, Some(&new_sid()), ALL, &["acme", "globex"]);
    assert_eq!(active(&w.see(&second).await), None, "a new sid starts without one");

    let no_sid = w.token(sub, None, ALL, &["acme", "globex"]);
    assert_eq!(active(&w.see(&no_sid).await), None);
    assert_eq!(w.select(&no_sid, "globex").await.status(), 200);
    let another_no_sid = w.token(sub, None, ALL, &["acme", "globex"]);
    assert_eq!(active(&w.see(&another_no_sid).await), Some("globex"), "one selection per user without sid");
    assert_eq!(active(&w.see(&first).await), Some("acme"), "sessions keep their own");
    assert_eq!(w.selections(sub).await, 2);
}

async fn a_non_member_organization_is_422_naming_the_field_and_bad_bodies_are_refused(db: Db) {
    let w = World::new(db, &[]).await;
    let sub = "learner";
    w.member_of_both(sub).await;
    let token = w.token(sub, Some(&new_sid()), ALL, &["acme", "globex"]);
    for org in ["school", "nowhere"] {
        let res = w.select(&token, org).await;
        assert_eq!(res.status(), 422, "{org}");
        assert_eq!(header(&res, "content-type"), "application/problem+json");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["errors"][0]["field"], "organization", "{body}");
    }
    let res = w.endpoint(Method::PUT, &token).json(&json!({"organization": 7})).send().await.unwrap();
    assert_eq!(res.status(), 400);
    let res =
        w.endpoint(Method::PUT, &token).json(&json!({"organization": "acme", "x": 1})).send().await.unwrap();
    assert_eq!(res.status(), 400);
    let res = w.endpoint(Method::PUT, &token).body(r#"{"organization":"acme"}"#).send().await.unwrap();
    assert_eq!(res.status(), 415);
    let res = w.app.http.get(w.app.url("/_sidecar/active-organization")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(w.selections(sub).await, 0);
    let text = w.app.metrics().await;
    assert_eq!(
        metric(&text, r#"identity_sidecar_active_organization_selections_total{action="not_member"}"#),
        2.0
    );

    // A local (code or admin) organization can be selected once the user is a member.
    w.join_school(sub).await;
    let token = w.token(sub, Some(&new_sid()), ALL, &["acme", "globex"]);
    assert_eq!(w.select(&token, "school").await.status(), 200);
    assert_eq!(active(&w.see(&token).await), Some("school"));
}

async fn a_cross_site_write_is_refused_and_changes_nothing(db: Db) {
    let w = World::new(db, &[]).await;
    let sub = "learner";
    w.member_of_both(sub).await;
    let token = w.token(sub, Some(&new_sid()), ALL, &["acme", "globex"]);
    let res = w
        .endpoint(Method::PUT, &token)
        .header("origin", "https://evil.example")
        .json(&json!({"organization": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = w.endpoint(Method::DELETE, &token).header("sec-fetch-site", "cross-site").send().await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(w.selections(sub).await, 0);
    assert_eq!(active(&w.see(&token).await), None);
}

async fn too_many_changes_in_a_minute_are_429_with_retry_after(db: Db) {
    let w = World::new(db, &[("SIDECAR__SERVER__MAX_SELECTIONS_PER_MINUTE", "3")]).await;
    let sub = "learner";
    w.member_of_both(sub).await;
    let token = w.token(sub, Some(&new_sid()), ALL, &["acme", "globex"]);
    assert_eq!(w.select(&token, "acme").await.status(), 200);
    assert_eq!(w.clear(&token).await.status(), 204);
    assert_eq!(w.select(&token, "globex").await.status(), 200);
    let res = w.select(&token, "acme").await;
    assert_eq!(res.status(), 429);
    let retry: u64 = header(&res, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(w.clear(&token).await.status(), 429);
    assert_eq!(active(&w.see(&token).await), Some("globex"), "the refused writes changed nothing");
    let text = w.app.metrics().await;
    let count = |action: &str| {
        metric(
            &text,
            &format!(r#"identity_sidecar_active_organization_selections_total{{action="{action}"}}"#),
        )
    };
    assert_eq!((count("selected"), count("cleared"), count("rate_limited")), (2.0, 1.0, 2.0));
}

async fn scoping_to_the_active_organization_limits_contracts_and_empties_them_while_none_is_active(db: Db) {
    let w = World::new(db, &[("SIDECAR__HEADERS__SCOPE_TO_ACTIVE_ORGANIZATION", "true")]).await;
    let sub = "learner";
    w.member_of_both(sub).await;
    let token = w.token(sub, Some(&new_sid()), ALL, &["acme", "globex"]);
    let seen = w.see(&token).await;
    assert_eq!((seen.active.as_deref(), seen.contracts.as_str()), (None, ""));
    assert!(seen.token_contracts.is_empty());
    assert_eq!(seen.organizations, "acme,globex", "organizations always all");

    assert_eq!(w.select(&token, "globex").await.status(), 200);
    let seen = w.see(&token).await;
    assert_eq!(
        (seen.contracts.as_str(), seen.token_contracts.as_slice()),
        ("globex-all", &["globex-all".to_owned()][..])
    );
    assert_eq!(seen.organizations, "acme,globex");

    // Without the option every valid contract shows, whatever is active.
    let plain = World::new(Db::Sqlite, &[]).await;
    plain.member_of_both(sub).await;
    let token = plain.token(sub, Some(&new_sid()), ALL, &["acme", "globex"]);
    assert_eq!(plain.select(&token, "globex").await.status(), 200);
    assert_eq!(plain.see(&token).await.contracts, "acme-all,globex-all");
}

async fn a_rule_asking_for_an_active_organization_answers_403_with_its_problem_type(db: Db) {
    let rules = r#"[{"prefix":"/checkout","active_organization":true},{"prefix":"/staff","roles_any":["staff"],"active_organization":true}]"#;
    let w = World::new(db, &[("SIDECAR__AUTH__RULES", rules)]).await;
    let sub = "learner";
    w.member_of_both(sub).await;
    let token = w.token(sub, Some(&new_sid()), ALL, &["acme", "globex"]);
    let res = w.forward(&token, "/checkout/cart").await;
    assert_eq!(res.status(), 403);
    assert_eq!(header(&res, "content-type"), "application/problem+json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["type"], PROBLEM_TYPE, "{body}");
    assert_eq!(w.app.forward_auth("GET", "/checkout").send().await.unwrap().status(), 401, "anonymous");
    assert_eq!(w.forward(&token, "/elsewhere").await.status(), 200);

    assert_eq!(w.select(&token, "acme").await.status(), 200);
    let res = w.forward(&token, "/checkout/cart").await;
    assert_eq!(res.status(), 200);
    assert_eq!(read(&res).active.as_deref(), Some("acme"));
    // The role list still decides first: a plain 403.
    let res = w.forward(&token, "/staff").await;
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["type"], "about:blank");
}

async fn a_selection_is_ignored_once_the_membership_is_gone_and_erasure_removes_it(db: Db) {
    let w = World::new(db, &[]).await;
    let sub = "learner";
    w.member_of_both(sub).await;
    w.join_school(sub).await;
    let token = w.token(sub, Some(&new_sid()), ALL, &["acme", "globex"]);
    assert_eq!(w.select(&token, "school").await.status(), 200);
    assert_eq!(active(&w.see(&token).await), Some("school"));

    let res = w.admin(Method::DELETE, &format!("/users/{sub}/organizations/school")).send().await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let seen = w.see(&token).await;
    assert_eq!((seen.active.as_deref(), seen.organizations.as_str()), (None, "acme,globex"));
    assert_eq!(w.get(&token).await["source"], Value::Null);

    assert_eq!(w.select(&token, "acme").await.status(), 200);
    let audit: Value =
        w.admin(Method::GET, &format!("/audit?sub={sub}")).send().await.unwrap().json().await.unwrap();
    let actions: Vec<&str> = audit
        .as_array()
        .or_else(|| audit["items"].as_array())
        .expect("a list of events")
        .iter()
        .filter(|e| e["actor"] == "session")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.iter().filter(|a| **a == "active_organization.selected").count(), 2, "{audit}");

    assert!(w.selections(sub).await > 0);
    let res = w.admin(Method::DELETE, &format!("/users/{sub}")).send().await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(w.selections(sub).await, 0, "erasure removes the selections");
}

async fn a_single_or_picked_organization_scope_never_removes_memberships(db: Db) {
    let w = World::new(db, &[("SIDECAR__RECONCILE__REMOVAL", "always")]).await;
    let sub = "learner";
    w.member_of_both(sub).await;
    let fixed = w.token(sub, Some(&new_sid()), "openid organization:acme", &["acme"]);
    assert_eq!(w.see(&fixed).await.organizations, "acme,globex");
    let picked = w.token(sub, Some(&new_sid()), PICK, &["globex"]);
    assert_eq!(w.see(&picked).await.organizations, "acme,globex");
    // A complete claim still removes under `always`.
    let all = w.token(sub, Some(&new_sid()), ALL, &["acme"]);
    assert_eq!(w.see(&all).await.organizations, "acme");
}

async fn requests_after_a_selection_are_answered_from_the_cache_without_the_database(db: Db) {
    let w = World::new(db, &[]).await;
    let sub = "learner";
    w.member_of_both(sub).await;
    let token = w.token(sub, Some(&new_sid()), ALL, &["acme", "globex"]);
    assert_eq!(w.select(&token, "globex").await.status(), 200);
    assert_eq!(active(&w.see(&token).await), Some("globex"), "the login is reconciled again");
    let picked = w.token(sub, Some(&new_sid()), PICK, &["acme"]);
    assert_eq!(active(&w.see(&picked).await), Some("acme"));

    let queries = async || metric(&w.app.metrics().await, "identity_sidecar_store_queries_total");
    let before = queries().await;
    for _ in 0..10 {
        assert_eq!(active(&w.see(&token).await), Some("globex"));
        assert_eq!(active(&w.see(&picked).await), Some("acme"));
    }
    assert_eq!(
        queries().await,
        before,
        "cached requests chose their active organization without the database"
    );
}

on_both_databases!(
    requests_after_a_selection_are_answered_from_the_cache_without_the_database,
    the_five_sources_apply_in_order,
    a_new_session_starts_without_a_selection_and_tokens_without_sid_share_one,
    a_non_member_organization_is_422_naming_the_field_and_bad_bodies_are_refused,
    a_cross_site_write_is_refused_and_changes_nothing,
    too_many_changes_in_a_minute_are_429_with_retry_after,
    scoping_to_the_active_organization_limits_contracts_and_empties_them_while_none_is_active,
    a_rule_asking_for_an_active_organization_answers_403_with_its_problem_type,
    a_selection_is_ignored_once_the_membership_is_gone_and_erasure_removes_it,
    a_single_or_picked_organization_scope_never_removes_memberships,
);

/// Two replicas sharing PostgreSQL and Redis: a selection taken by A shows in A's next answer,
/// and in B's as soon as the invalidation arrives over the bus (milliseconds on loopback),
/// although B had the login in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selection_taken_on_one_replica_reaches_the_other_through_redis() {
    use std::time::Duration;

    use crate::helpers::{FakeKeycloak, TestApp, TestDatabase, base_env};
    use crate::redis::{TestRedis, eventually, wait_subscribed};

    let kc = FakeKeycloak::start().await;
    let redis = TestRedis::start().await;
    let db = TestDatabase::create().await;
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__DATABASE__URL", db.url.clone());
    set(&mut env, "SIDECAR__CACHE__REDIS_URL", redis.url());
    let a = TestApp::spawn_with(env.clone()).await;
    let b = TestApp::spawn_with(env).await;
    wait_subscribed(&a, Duration::from_secs(5)).await;
    wait_subscribed(&b, Duration::from_secs(5)).await;
    let store = a.store().await;
    let mut conn = store.conn().await.unwrap();
    let alias = |key: &str| format!("{key}-{}", Uuid::new_v4().simple());
    let (acme, globex) = (alias("acme"), alias("globex"));
    for key in [&acme, &globex] {
        let new = NewOrganization {
            key: key.clone(),
            name: key.clone(),
            description: String::new(),
            keycloak_id: None,
            keycloak_alias: Some(key.clone()),
            email_domains: Vec::new(),
        };
        organizations::insert(&mut conn, &new).await.unwrap();
    }
    drop(conn);

    let sub = format!("u-{}", Uuid::new_v4().simple());
    let token = kc.token().sub(&sub).sid(&new_sid()).organization(json!([acme, globex])).sign();
    let active_on = async |app: &TestApp| {
        let res = app.forward_auth("GET", "/").bearer_auth(&token).send().await.unwrap();
        assert_eq!(res.status(), 200);
        read(&res).active
    };
    assert_eq!(active_on(&a).await, None);
    assert_eq!(active_on(&b).await, None, "B holds the login now");

    let res = a
        .http
        .put(a.url("/_sidecar/active-organization"))
        .bearer_auth(&token)
        .json(&json!({"organization": globex}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(active_on(&a).await.as_deref(), Some(globex.as_str()), "A: the very next request");
    eventually(Duration::from_secs(2), "B shows the selection", || async {
        active_on(&b).await.as_deref() == Some(globex.as_str())
    })
    .await;

    let res = b.http.delete(b.url("/_sidecar/active-organization")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(active_on(&b).await, None);
    eventually(Duration::from_secs(2), "A forgets the selection", || async { active_on(&a).await.is_none() })
        .await;
}
