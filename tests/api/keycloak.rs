//! The Keycloak admin side: the admin client's token (cached, shared, refreshed), organization
//! sync, the durable job queue (membership pushes with retries, restarts, several replicas),
//! admin reconciliation of one user, of every user as a job, and of a contract, and the
//! `sync-orgs` / `reconcile --sub` commands of the real binary.
//!
//! Everything runs on SQLite; the job queue and sync cases run on PostgreSQL as well.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use identity_sidecar::store::model::{Job, JobStatus};
use identity_sidecar::store::{Store, jobs};

use crate::helpers::{
    ADMIN_TOKEN, Db, FakeKeycloak, Fixture, TestApp, TestDatabase, base_env, metric, on_both_databases, set,
    with_admin_token, with_keycloak_admin,
};

/// Config pairs of a sidecar with a static admin token and the fake realm's admin client, on
/// `database_url` (a SQLite file of the app's own when `None`).
fn env_for(kc: &FakeKeycloak, database_url: Option<&str>) -> Vec<(String, String)> {
    let mut env = base_env(kc);
    with_admin_token(&mut env);
    with_keycloak_admin(kc, &mut env);
    if let Some(url) = database_url {
        set(&mut env, "SIDECAR__DATABASE__URL", url);
    }
    env
}

/// The fixture wired to the fake realm's admin API, with this file's admin calls.
struct Sidecar(Fixture);

impl std::ops::Deref for Sidecar {
    type Target = Fixture;

    fn deref(&self) -> &Fixture {
        &self.0
    }
}

async fn start(db: Db) -> Sidecar {
    start_with(db, |_| {}).await
}

async fn start_with(db: Db, configure: impl FnOnce(&mut Vec<(String, String)>)) -> Sidecar {
    Sidecar(
        Fixture::start_with(db, |kc, env| {
            with_keycloak_admin(kc, env);
            configure(env);
        })
        .await,
    )
}

/// `(status, JSON body or null)` of an admin API call with the static token.
async fn call(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request =
        app.http.request(method, app.admin_url(&format!("/admin/v1{path}"))).bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let res = request.send().await.expect("the admin port answers");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
}

impl Sidecar {
    async fn get(&self, path: &str) -> (u16, Value) {
        call(&self.app, Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        call(&self.app, Method::POST, path, body).await
    }

    /// `POST /sync/organizations`, expected to succeed.
    async fn sync(&self) -> Value {
        let (status, body) = self.post("/sync/organizations", None).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Creates an organization linked to Keycloak by `alias` and `id`.
    async fn linked_org(&self, key: &str, alias: &str, id: Option<Uuid>) {
        let body =
            json!({"key": key, "name": key.to_uppercase(), "keycloak_alias": alias, "keycloak_id": id});
        let (status, body) = self.post("/organizations", Some(body)).await;
        assert_eq!(status, 201, "{body}");
    }

    async fn contract(&self, key: &str, org: &str, membership_type: &str, max_learners: Option<i64>) {
        let body = json!({"key": key, "organization": org, "name": key, "membership_type": membership_type,
                          "max_learners": max_learners});
        let (status, body) = self.post("/contracts", Some(body)).await;
        assert_eq!(status, 201, "{body}");
    }

    /// The keys of a user's organizations and contracts (`GET /users/{sub}`).
    async fn holdings(&self, sub: &str) -> (Vec<String>, Vec<String>) {
        let (status, user) = self.get(&format!("/users/{sub}")).await;
        assert_eq!(status, 200, "{user}");
        let keys = |list: &Value, field: &str| -> Vec<String> {
            list.as_array().unwrap().iter().map(|i| i[field].as_str().unwrap().to_owned()).collect()
        };
        (keys(&user["memberships"], "organization"), keys(&user["attachments"], "contract"))
    }

    /// Number of audit events about `sub`.
    async fn audit_count(&self, sub: &str) -> usize {
        let (status, body) = self.get(&format!("/audit?sub={sub}&limit=1000")).await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().unwrap().len()
    }
}

/// Polls a job until `done` holds for it (10 s at most).
async fn wait_for_job(store: &Store, id: i64, done: impl Fn(&Job) -> bool) -> Job {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let job = jobs::get(&mut store.conn().await.unwrap(), id).await.unwrap();
        if done(&job) {
            return job;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {id} never got there: {job:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn finished(job: &Job) -> bool {
    matches!(job.status, JobStatus::Done | JobStatus::Failed)
}

/// Enqueues a `keycloak.add_member` job directly, as a code redemption does.
async fn enqueue_add_member(store: &Store, org: Uuid, sub: &str) -> i64 {
    let payload = json!({"organization_keycloak_id": org, "sub": sub});
    let mut conn = store.conn().await.unwrap();
    jobs::enqueue(&mut conn, "keycloak.add_member", &payload, time::OffsetDateTime::now_utc())
        .await
        .unwrap()
        .id
}

on_both_databases!(
    sync_imports_every_organization_page_by_page_and_then_skips_them,
    a_renamed_organization_is_updated_and_keeps_its_key,
    aliases_become_valid_unique_keys_and_alias_only_organizations_learn_their_id,
    an_add_member_job_is_retried_until_keycloak_accepts_it_and_runs_once,
    an_already_member_answer_counts_as_success,
    queued_jobs_survive_a_restart,
    reconcile_all_runs_as_a_job_and_reports_progress,
);

// --- the admin client's token ---------------------------------------------------------------

#[tokio::test]
async fn the_admin_token_is_fetched_once_and_shared_by_concurrent_calls() {
    let s = start(Db::Sqlite).await;
    // Ten calls at once before any token exists: they wait for one token request.
    let paths: Vec<String> = (0..10).map(|i| format!("/reconcile/users/c{i}")).collect();
    let calls = paths.iter().map(|path| s.post(path, None));
    for (status, body) in futures_util::future::join_all(calls).await {
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(s.kc.token_requests(), 1, "single flight");
    for i in 0..5 {
        let (status, body) = s.post(&format!("/reconcile/users/u{i}"), None).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(s.kc.token_requests(), 1, "15 admin calls, one token");
    assert_eq!(s.kc.admin_requests(), 15);
}

#[tokio::test]
async fn an_expiring_admin_token_is_replaced_and_a_revoked_one_is_fetched_again() {
    let s = start(Db::Sqlite).await;
    // A 4 s token is used for half its life (the 30 s margin would exceed it).
    s.kc.set_admin_token_ttl(4);
    assert_eq!(s.post("/reconcile/users/u1", None).await.0, 200);
    assert_eq!(s.post("/reconcile/users/u1", None).await.0, 200);
    assert_eq!(s.kc.token_requests(), 1);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(s.post("/reconcile/users/u1", None).await.0, 200);
    assert_eq!(s.kc.token_requests(), 2, "refreshed before it expired");

    // Revoked in Keycloak: the 401 drops the token and the call is made again with a new one.
    s.kc.set_admin_token_ttl(300);
    s.kc.revoke_admin_tokens();
    let before = s.kc.admin_requests();
    let (status, body) = s.post("/reconcile/users/u1", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((s.kc.token_requests(), s.kc.admin_requests() - before), (3, 2));
}

#[tokio::test]
async fn keycloak_failures_name_the_call_and_status_but_never_the_secret() {
    let s = start_with(Db::Sqlite, |env| {
        set(env, "SIDECAR__KEYCLOAK_ADMIN__CLIENT_SECRET", "wrong-secret-value");
    })
    .await;
    let (status, body) = s.post("/sync/organizations", None).await;
    assert_eq!(status, 502, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("token request") && detail.contains("401"), "{detail}");
    assert!(!detail.contains("wrong-secret-value"), "{detail}");
}

#[tokio::test]
async fn features_needing_keycloak_say_it_is_not_configured() {
    // The plain fixture: no `keycloak_admin` section.
    let fixture = Fixture::start(Db::Sqlite).await;
    let app = &fixture.app;
    for path in ["/sync/organizations", "/reconcile"] {
        let (status, body) = call(app, Method::POST, path, None).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert!(body["detail"].as_str().unwrap().contains("keycloak_admin is not configured"), "{body}");
    }
    let (status, body) = call(app, Method::POST, "/reconcile/users/u1", None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("keycloak_admin is not configured"), "{body}");
    // A stated set needs no Keycloak.
    let (status, body) =
        call(app, Method::POST, "/reconcile/users/u1", Some(json!({"organizations": []}))).await;
    assert_eq!(status, 200, "{body}");
}

// --- organization sync ----------------------------------------------------------------------

async fn sync_imports_every_organization_page_by_page_and_then_skips_them(db: Db) {
    let s = start(db).await;
    for i in 0..25 {
        s.kc.add_org(&format!("org-{i:02}"), &format!("Org {i:02}"), &format!("Number {i}"));
    }
    let before = s.kc.admin_requests();
    let report = s.sync().await;
    assert_eq!(report, json!({"created": 25, "updated": 0, "skipped": 0, "conflicts": []}));
    assert_eq!(s.kc.admin_requests() - before, 3, "pages of 10, 10 and 5");

    let (_, page) = s.get("/organizations?limit=100").await;
    assert_eq!(page["total"], 25);
    let first = &page["items"][0];
    assert_eq!(
        (&first["key"], &first["name"], &first["description"]),
        (&json!("org-00"), &json!("Org 00"), &json!("Number 0"))
    );
    assert_eq!(first["keycloak_alias"], "org-00");
    assert!(first["keycloak_id"].is_string());

    assert_eq!(s.sync().await, json!({"created": 0, "updated": 0, "skipped": 25, "conflicts": []}));
    let (_, events) = s.get("/audit?organization=org-07").await;
    let events = events["items"].as_array().unwrap();
    assert_eq!(events.len(), 1, "a second sync changes nothing: {events:?}");
    assert_eq!(
        (&events[0]["actor"], &events[0]["action"]),
        (&json!("admin:ops"), &json!("organization.create"))
    );
}

async fn a_renamed_organization_is_updated_and_keeps_its_key(db: Db) {
    let s = start(db).await;
    let acme = s.kc.add_org("acme", "Acme", "Rockets");
    s.kc.add_org("globex", "Globex", "");
    s.sync().await;
    s.kc.rename_org(acme, "acme-intl", "Acme International", "Rockets and anvils");
    let report = s.sync().await;
    assert_eq!(report, json!({"created": 0, "updated": 1, "skipped": 1, "conflicts": []}));
    let (status, org) = s.get("/organizations/acme").await;
    assert_eq!(status, 200, "the key never changes: {org}");
    assert_eq!(
        (&org["name"], &org["description"], &org["keycloak_alias"], &org["keycloak_id"]),
        (&json!("Acme International"), &json!("Rockets and anvils"), &json!("acme-intl"), &json!(acme))
    );
    assert_eq!(s.get("/organizations/acme-intl").await.0, 404);
    let (_, events) = s.get("/audit?organization=acme").await;
    assert_eq!(events["items"][0]["action"], "organization.update");
    assert_eq!(events["items"][0]["detail"]["before"]["keycloak_alias"], "acme");
    assert_eq!(events["items"][0]["detail"]["after"]["keycloak_alias"], "acme-intl");

    // Gone from Keycloak: kept here.
    s.kc.remove_org(acme);
    assert_eq!(s.sync().await["skipped"], 1);
    assert_eq!(s.get("/organizations/acme").await.0, 200);
}

async fn aliases_become_valid_unique_keys_and_alias_only_organizations_learn_their_id(db: Db) {
    let s = start(db).await;
    // A local organization already holds the key the alias would give.
    let (status, _) = s.post("/organizations", Some(json!({"key": "acme-corp", "name": "Local"}))).await;
    assert_eq!(status, 201);
    s.linked_org("globex", "globex", None).await;
    let acme = s.kc.add_org("ACME Corp!", "Acme Corp", "");
    let globex = s.kc.add_org("globex", "Globex Corporation", "Widgets");
    // An alias held by an organization linked to another Keycloak id is a conflict.
    s.linked_org("initech", "initech", Some(Uuid::new_v4())).await;
    let initech = s.kc.add_org("initech", "Initech", "");

    let report = s.sync().await;
    assert_eq!(
        (&report["created"], &report["updated"], &report["skipped"]),
        (&json!(1), &json!(1), &json!(0))
    );
    assert_eq!(report["conflicts"][0]["keycloak_id"], json!(initech));
    assert!(report["conflicts"][0]["detail"].as_str().unwrap().contains("initech"), "{report}");

    let (status, org) = s.get("/organizations/acme-corp-2").await;
    assert_eq!(status, 200, "{org}");
    assert_eq!((&org["keycloak_alias"], &org["keycloak_id"]), (&json!("ACME Corp!"), &json!(acme)));
    let (_, local) = s.get("/organizations/acme-corp").await;
    assert_eq!((&local["name"], &local["keycloak_id"]), (&json!("Local"), &Value::Null), "local stays local");
    let (_, learned) = s.get("/organizations/globex").await;
    assert_eq!(
        (&learned["keycloak_id"], &learned["name"], &learned["description"]),
        (&json!(globex), &json!("Globex Corporation"), &json!("Widgets"))
    );
}

// --- the job queue --------------------------------------------------------------------------

async fn an_add_member_job_is_retried_until_keycloak_accepts_it_and_runs_once(db: Db) {
    let s = start(db).await;
    let acme = s.kc.add_org("acme", "Acme", "");
    s.kc.fail_next_add_member(3);
    let store = s.app.store().await;
    let id = enqueue_add_member(&store, acme, "learner-1").await;
    let job = wait_for_job(&store, id, finished).await;
    assert_eq!((job.status, job.attempts), (JobStatus::Done, 4), "{job:?}");
    assert!(job.last_error.is_none(), "a finished job keeps no error: {job:?}");
    assert_eq!(s.kc.members(acme), ["learner-1"]);
    assert_eq!(s.kc.add_member_calls(), 4);

    let text = s.app.metrics().await;
    let kind = "kind=\"keycloak.add_member\"";
    assert_eq!(
        metric(&text, &format!("identity_sidecar_jobs_total{{{kind},result=\"retry\"}}")),
        3.0,
        "{text}"
    );
    assert_eq!(metric(&text, &format!("identity_sidecar_jobs_total{{{kind},result=\"ok\"}}")), 1.0, "{text}");
    assert!(text.contains(&format!("identity_sidecar_jobs_queue_depth{{{kind}}}")), "{text}");

    // The job view, as an admin sees it.
    let (status, view) = s.get(&format!("/jobs/{id}")).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        (&view["kind"], &view["status"], &view["attempts"]),
        (&json!("keycloak.add_member"), &json!("done"), &json!(4))
    );
    assert!(view.get("payload").is_none());
    assert_eq!(s.get("/jobs/999999").await.0, 404);
    assert_eq!(s.get("/jobs/nope").await.0, 404);

    // Keycloak says the organization does not exist: retrying cannot help.
    let id = enqueue_add_member(&store, Uuid::new_v4(), "learner-1").await;
    let job = wait_for_job(&store, id, finished).await;
    assert_eq!((job.status, job.attempts), (JobStatus::Failed, 1), "{job:?}");
    assert!(job.last_error.as_deref().unwrap().contains("HTTP 404"), "{job:?}");
}

async fn an_already_member_answer_counts_as_success(db: Db) {
    let s = start(db).await;
    let acme = s.kc.add_org("acme", "Acme", "");
    s.kc.set_user_orgs("learner-1", vec![acme]);
    let store = s.app.store().await;
    let id = enqueue_add_member(&store, acme, "learner-1").await;
    let job = wait_for_job(&store, id, finished).await;
    assert_eq!((job.status, job.attempts), (JobStatus::Done, 1), "{job:?}");
    assert_eq!(s.kc.members(acme), ["learner-1"]);
    assert_eq!(s.kc.add_member_calls(), 1);
}

async fn queued_jobs_survive_a_restart(db: Db) {
    let kc = FakeKeycloak::start().await;
    let database = db.fresh().await;
    let url = database.url.clone();
    let acme = kc.add_org("acme", "Acme", "");
    kc.fail_next_add_member(usize::MAX);
    let first = TestApp::spawn_with(env_for(&kc, Some(&url))).await;
    let store = first.store().await;
    let id = enqueue_add_member(&store, acme, "learner-1").await;
    wait_for_job(&store, id, |j| j.attempts >= 2 && j.status == JobStatus::Queued).await;
    first.shutdown().await.unwrap();

    kc.fail_next_add_member(0);
    let job = jobs::get(&mut store.conn().await.unwrap(), id).await.unwrap();
    assert_eq!(job.status, JobStatus::Queued, "shutdown left the job queued: {job:?}");
    assert!(kc.members(acme).is_empty());

    let second = TestApp::spawn_with(env_for(&kc, Some(&url))).await;
    let job = wait_for_job(&store, id, finished).await;
    assert_eq!(job.status, JobStatus::Done, "{job:?}");
    assert_eq!(kc.members(acme), ["learner-1"]);
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn idle_job_workers_poll_without_moving_the_request_query_counter() {
    let s = start(Db::Sqlite).await;
    let queries = async || metric(&s.app.metrics().await, "identity_sidecar_store_queries_total");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = queries().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(queries().await, before, "two polls of each worker happened meanwhile");
    let text = s.app.metrics().await;
    assert!(text.contains("identity_sidecar_jobs_queue_depth{kind=\"reconcile.all\"} 0"), "{text}");
}

#[tokio::test]
async fn two_replicas_share_the_queue_without_running_a_job_twice() {
    let kc = FakeKeycloak::start().await;
    let pg = TestDatabase::create().await;
    let first = TestApp::spawn_with(env_for(&kc, Some(&pg.url))).await;
    let second = TestApp::spawn_with(env_for(&kc, Some(&pg.url))).await;
    let acme = kc.add_org("acme", "Acme", "");
    let store = first.store().await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(enqueue_add_member(&store, acme, &format!("learner-{i:02}")).await);
    }
    for id in ids {
        wait_for_job(&store, id, finished).await;
    }
    let mut members = kc.members(acme);
    members.sort();
    assert_eq!(members, (0..30).map(|i| format!("learner-{i:02}")).collect::<Vec<_>>());
    assert_eq!(kc.add_member_calls(), 30, "every job ran once");
    let ran =
        |text: &str| metric(text, "identity_sidecar_jobs_total{kind=\"keycloak.add_member\",result=\"ok\"}");
    let (a, b) = (ran(&first.metrics().await), ran(&second.metrics().await));
    assert_eq!(a + b, 30.0);
    drop((first, second));
}

// --- reconciliation -------------------------------------------------------------------------

#[tokio::test]
async fn reconciling_a_user_takes_the_organization_set_in_every_claim_shape() {
    let s = start(Db::Sqlite).await;
    let acme = Uuid::new_v4();
    s.linked_org("acme", "acme", Some(acme)).await;
    s.contract("acme-auto", "acme", "auto", None).await;
    let shapes = [
        json!(["acme"]),
        json!({"acme": {"id": acme, "region": ["eu"]}}),
        json!({"acme": {}}),
        json!("acme"),
        json!("[\"acme\"]"),
    ];
    for (i, shape) in shapes.iter().enumerate() {
        let sub = format!("shape-{i}");
        let (status, body) =
            s.post(&format!("/reconcile/users/{sub}"), Some(json!({"organizations": shape}))).await;
        assert_eq!(status, 200, "{shape}: {body}");
        assert_eq!(
            (&body["source"], &body["dry_run"], &body["changed"]),
            (&json!("body"), &json!(false), &json!(true))
        );
        assert_eq!(body["organizations"]["added"], json!(["acme"]), "{shape}: {body}");
        assert_eq!(body["contracts"]["attached"], json!(["acme-auto"]), "{shape}: {body}");
        assert_eq!(s.holdings(&sub).await, (vec!["acme".into()], vec!["acme-auto".into()]));
    }

    // Unknown and malformed entries are reported; the stated set is complete: removal.
    let body = json!({"organizations": ["nobody", 42]});
    let (status, body) = s.post("/reconcile/users/shape-0", Some(body)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["organizations"]["removed"], json!(["acme"]));
    assert_eq!(body["contracts"]["detached"], json!(["acme-auto"]));
    assert_eq!(body["unknown_organizations"], json!([{"alias": "nobody", "keycloak_id": null}]));
    assert_eq!(body["ignored_entries"], 1);
    assert_eq!(s.holdings("shape-0").await, (vec![], vec![]));
    let (_, events) = s.get("/audit?sub=shape-0&limit=1").await;
    assert_eq!(events["items"][0]["actor"], "admin:ops");

    // The body is checked like every admin body.
    for (body, status) in [(json!({}), 422), (json!({"organizations": [], "extra": 1}), 400)] {
        assert_eq!(s.post("/reconcile/users/x", Some(body.clone())).await.0, status, "{body}");
    }
}

#[tokio::test]
async fn reconciling_a_user_without_a_body_reads_their_organizations_from_keycloak() {
    let s = start(Db::Sqlite).await;
    let acme = s.kc.add_org("acme", "Acme", "");
    let globex = s.kc.add_org("globex", "Globex", "");
    s.linked_org("acme", "acme", None).await;
    s.linked_org("globex", "globex", Some(globex)).await;
    s.contract("globex-managed", "globex", "managed", None).await;
    s.kc.set_user_orgs("u1", vec![acme, globex]);

    let (status, body) = s.post("/reconcile/users/u1", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["source"], "keycloak");
    assert_eq!(body["organizations"]["added"], json!(["acme", "globex"]));
    assert_eq!(body["organizations"]["learned_keycloak_id"], json!(["acme"]));
    assert_eq!(body["contracts"]["attached"], json!(["globex-managed"]));
    let (_, org) = s.get("/organizations/acme").await;
    assert_eq!(org["keycloak_id"], json!(acme));

    s.kc.set_user_orgs("u1", vec![acme]);
    let (_, body) = s.post("/reconcile/users/u1", None).await;
    assert_eq!(body["organizations"]["removed"], json!(["globex"]));
    assert_eq!(body["contracts"]["detached"], json!(["globex-managed"]));
    assert_eq!(s.holdings("u1").await, (vec!["acme".into()], vec![]));
    let (_, body) = s.post("/reconcile/users/u1", None).await;
    assert_eq!(body["changed"], false, "twice changes nothing the second time: {body}");
}

#[tokio::test]
async fn a_dry_run_answers_the_plan_and_writes_nothing() {
    let s = start(Db::Sqlite).await;
    s.linked_org("acme", "acme", None).await;
    s.contract("acme-auto", "acme", "auto", None).await;
    let (status, body) = s.post("/reconcile/users/u1", Some(json!({"organizations": ["acme"]}))).await;
    assert_eq!(status, 200, "{body}");
    s.linked_org("globex", "globex", None).await;
    s.contract("globex-auto", "globex", "auto", Some(1)).await;
    let audited = s.audit_count("u1").await;

    let stated = json!({"organizations": ["globex"]});
    let (status, body) = s.post("/reconcile/users/u1?dry_run=true", Some(stated.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((&body["dry_run"], &body["changed"]), (&json!(true), &json!(true)));
    assert_eq!(body["organizations"]["added"], json!(["globex"]));
    assert_eq!(body["organizations"]["removed"], json!(["acme"]));
    assert_eq!(body["contracts"]["attached"], json!(["globex-auto"]));
    assert_eq!(body["contracts"]["detached"], json!(["acme-auto"]));
    assert_eq!(s.audit_count("u1").await, audited, "no audit event");
    assert_eq!(s.holdings("u1").await, (vec!["acme".into()], vec!["acme-auto".into()]));
    let (_, contract) = s.get("/contracts/globex-auto").await;
    assert_eq!(contract["seats_used"], 0);

    // A dry run for someone never seen leaves no user row behind either.
    assert_eq!(s.post("/reconcile/users/ghost?dry_run=true", Some(stated)).await.0, 200);
    assert_eq!(s.get("/users/ghost").await.0, 404);
    assert_eq!(s.post("/reconcile/users/u1?dry_run=maybe", None).await.0, 400);
}

async fn reconcile_all_runs_as_a_job_and_reports_progress(db: Db) {
    let s = start(db).await;
    let acme = s.kc.add_org("acme", "Acme", "");
    s.linked_org("acme", "acme", Some(acme)).await;
    s.contract("acme-auto", "acme", "auto", None).await;
    // Five known users: two in acme according to Keycloak, one whose membership Keycloak no
    // longer lists, two without organizations.
    for sub in ["u1", "u2", "u3", "u4", "u5"] {
        let (status, body) =
            s.post(&format!("/reconcile/users/{sub}"), Some(json!({"organizations": []}))).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = s.post("/reconcile/users/u5", Some(json!({"organizations": ["acme"]}))).await;
    assert_eq!(status, 200);
    s.kc.set_user_orgs("u1", vec![acme]);
    s.kc.set_user_orgs("u3", vec![acme]);

    let res = s
        .app
        .http
        .post(s.app.admin_url("/admin/v1/reconcile"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    let id = body["job_id"].as_i64().unwrap();
    assert_eq!(location, format!("/admin/v1/jobs/{id}"));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let view = loop {
        let (status, view) = s.get(&format!("/jobs/{id}")).await;
        assert_eq!(status, 200, "{view}");
        if view["status"] == "done" || view["status"] == "failed" {
            break view;
        }
        assert!(tokio::time::Instant::now() < deadline, "the job did not finish: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((&view["kind"], &view["status"]), (&json!("reconcile.all"), &json!("done")), "{view}");
    let progress = &view["progress"];
    assert_eq!(
        (&progress["done"], &progress["total"], &progress["errors"]),
        (&json!(5), &json!(5), &json!(0))
    );
    for (sub, orgs) in [("u1", vec!["acme"]), ("u2", vec![]), ("u3", vec!["acme"]), ("u5", vec![])] {
        assert_eq!(s.holdings(sub).await.0, orgs, "{sub}");
    }
    assert_eq!(s.holdings("u3").await.1, ["acme-auto"]);
    let (_, events) = s.get("/audit?sub=u3&limit=1").await;
    assert_eq!(events["items"][0]["actor"], "admin:ops", "the job acts for the admin who queued it");
}

#[tokio::test]
async fn reconciling_a_contract_attaches_its_organizations_members_while_seats_last() {
    let s = start(Db::Sqlite).await;
    let (status, _) = s.post("/organizations", Some(json!({"key": "acme", "name": "Acme"}))).await;
    assert_eq!(status, 201);
    for sub in ["m3", "m1", "m2"] {
        let res = s.app.http.put(s.app.admin_url(&format!("/admin/v1/users/{sub}/organizations/acme")));
        assert_eq!(res.bearer_auth(ADMIN_TOKEN).send().await.unwrap().status(), 201);
    }
    s.contract("acme-pilot", "acme", "code", Some(2)).await;

    let (status, body) = s.post("/reconcile/contracts/acme-pilot", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"contract": "acme-pilot", "attached": 2, "already": 0, "skipped_full": 1}));
    assert_eq!(s.holdings("m1").await.1, ["acme-pilot"], "ascending sub order");
    assert_eq!(s.holdings("m2").await.1, ["acme-pilot"]);
    assert!(s.holdings("m3").await.1.is_empty());
    let (_, events) = s.get("/audit?sub=m1&limit=1").await;
    assert_eq!(
        (&events["items"][0]["action"], &events["items"][0]["actor"]),
        (&json!("attachment.add"), &json!("admin:ops"))
    );

    let (_, body) = s.post("/reconcile/contracts/acme-pilot", None).await;
    assert_eq!(body, json!({"contract": "acme-pilot", "attached": 0, "already": 2, "skipped_full": 1}));
    assert_eq!(s.post("/reconcile/contracts/nope", None).await.0, 404);
}

// --- commands -------------------------------------------------------------------------------

/// Runs the real binary with `args` and the given config pairs (nothing inherited).
fn run_binary(args: &[&str], env: &[(String, String)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_identity-sidecar"));
    command.args(args).env_remove("RUST_LOG");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SIDECAR")) {
        command.env_remove(key);
    }
    command.envs(env.iter().cloned()).output().expect("the binary runs")
}

#[tokio::test]
async fn the_sync_orgs_and_reconcile_commands_run_the_admin_operations() {
    let kc = FakeKeycloak::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("cli.db").display());
    let env = env_for(&kc, Some(&url));
    let acme = kc.add_org("acme", "Acme", "Rockets");
    kc.add_org("Globex Corp", "Globex", "");
    kc.set_user_orgs("u1", vec![acme]);

    let run = |args: &'static [&'static str]| {
        let env = env.clone();
        tokio::task::spawn_blocking(move || run_binary(args, &env))
    };
    let out = run(&["sync-orgs"]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report, json!({"created": 2, "updated": 0, "skipped": 0, "conflicts": []}));

    let out = run(&["reconcile", "--sub", "u1", "--dry-run"]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&plan["dry_run"], &plan["organizations"]["added"]), (&json!(true), &json!(["acme"])));

    let out = run(&["reconcile", "--sub", "u1"]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&done["source"], &done["organizations"]["added"]), (&json!("keycloak"), &json!(["acme"])));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(&kc.admin_client().1), "the secret never reaches a log line");

    // The rows are there for a server on the same database.
    let store = Store::connect(&url, 1).await.unwrap();
    let mut conn = store.conn().await.unwrap();
    let globex = identity_sidecar::store::organizations::get(&mut conn, "globex-corp").await.unwrap();
    assert_eq!(globex.keycloak_alias.as_deref(), Some("Globex Corp"));
    let members = identity_sidecar::store::memberships::list_for_user(&mut conn, "u1").await.unwrap();
    assert_eq!(members.iter().map(|m| m.organization.as_str()).collect::<Vec<_>>(), ["acme"]);
    let events = identity_sidecar::store::audit::query(
        &mut conn,
        &identity_sidecar::store::model::AuditQuery {
            sub: Some("u1".into()),
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(events.iter().all(|e| e.actor == "admin:cli"), "{events:?}");

    // Without keycloak_admin the commands say what is missing.
    let bare: Vec<(String, String)> =
        env.iter().filter(|(k, _)| !k.starts_with("SIDECAR__KEYCLOAK_ADMIN__")).cloned().collect();
    let out = tokio::task::spawn_blocking(move || run_binary(&["sync-orgs"], &bare)).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("keycloak_admin is not configured"));
}
