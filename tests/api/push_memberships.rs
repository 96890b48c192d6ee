//! Two-way membership (`keycloak_admin.push_memberships`, docs/contract.md §11): admin
//! membership changes of Keycloak-linked organizations reach the fake Keycloak through durable
//! jobs written in the change's transaction; local organizations, the option off and erasure
//! never push. Also the audit events of updates, which record the values before and after.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{Connection as _, Row as _};
use uuid::Uuid;

use identity_sidecar::store::jobs;
use identity_sidecar::store::model::{Job, JobStatus};

use crate::helpers::{Db, Fixture, MembershipCall, metric, on_both_databases, set, with_keycloak_admin};

/// A sidecar wired to the fake realm's admin API, with `push_memberships` as given.
struct Sidecar(Fixture);

impl std::ops::Deref for Sidecar {
    type Target = Fixture;

    fn deref(&self) -> &Fixture {
        &self.0
    }
}

async fn start(db: Db, push: bool) -> Sidecar {
    Sidecar(
        Fixture::start_with(db, |kc, env| {
            with_keycloak_admin(kc, env);
            set(env, "SIDECAR__KEYCLOAK_ADMIN__PUSH_MEMBERSHIPS", push.to_string());
            set(env, "SIDECAR__ADMIN__DELEGATE_TO_MANAGERS", "true");
        })
        .await,
    )
}

impl Sidecar {
    /// `(status, JSON body or null)` of an admin API call.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.admin(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let res = request.send().await.expect("the admin port answers");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
    }

    /// An organization linked to the Keycloak organization `id` (or local with `None`).
    async fn org(&self, key: &str, id: Option<Uuid>) {
        let body = json!({"key": key, "name": key.to_uppercase(), "keycloak_id": id});
        let (status, body) = self.call(Method::POST, "/organizations", Some(body)).await;
        assert_eq!(status, 201, "{body}");
    }

    async fn add(&self, sub: &str, org: &str) -> u16 {
        self.call(Method::PUT, &format!("/users/{sub}/organizations/{org}"), None).await.0
    }

    async fn remove(&self, sub: &str, org: &str) -> u16 {
        self.call(Method::DELETE, &format!("/users/{sub}/organizations/{org}"), None).await.0
    }

    /// Every job, oldest first.
    async fn jobs(&self) -> Vec<Job> {
        let store = self.app.store().await;
        let mut conn = store.conn().await.unwrap();
        let mut all = Vec::new();
        for id in self.job_ids().await {
            all.push(jobs::get(&mut conn, id).await.unwrap());
        }
        all
    }

    async fn job_ids(&self) -> Vec<i64> {
        let sql = "SELECT id FROM jobs ORDER BY id";
        let url = &self.app.database_url;
        if url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query(sql).fetch_all(&mut c).await.unwrap().iter().map(|r| r.get("id")).collect()
        } else {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query(sql).fetch_all(&mut c).await.unwrap().iter().map(|r| r.get("id")).collect()
        }
    }

    /// Waits until every job has finished (10 s at most); returns them, oldest first.
    async fn settled(&self) -> Vec<Job> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let all = self.jobs().await;
            if all.iter().all(|j| matches!(j.status, JobStatus::Done | JobStatus::Failed)) {
                return all;
            }
            assert!(tokio::time::Instant::now() < deadline, "jobs never finished: {all:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The newest audit event matching `query`.
    async fn last_event(&self, query: &str) -> Value {
        let (status, page) = self.call(Method::GET, &format!("/audit?{query}&limit=1"), None).await;
        assert_eq!(status, 200, "{page}");
        page["items"][0].clone()
    }

    /// Runs `sql` (one or more statements) on the app's database.
    async fn execute(&self, sqlite: &'static str, postgres: &'static str) {
        let url = &self.app.database_url;
        if url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::raw_sql(postgres).execute(&mut c).await.unwrap();
        } else {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::raw_sql(sqlite).execute(&mut c).await.unwrap();
        }
    }
}

fn add(org: Uuid, user: &str) -> MembershipCall {
    MembershipCall::Add { org: org.to_string(), user: user.into() }
}

fn remove(org: Uuid, user: &str) -> MembershipCall {
    MembershipCall::Remove { org: org.to_string(), user: user.into() }
}

fn summary(jobs: &[Job]) -> Vec<(&str, JobStatus, i64)> {
    jobs.iter().map(|j| (j.kind.as_str(), j.status, j.attempts)).collect()
}

const ADD: &str = "keycloak.add_member";
const REMOVE: &str = "keycloak.remove_member";

on_both_databases!(
    an_admin_add_and_remove_reach_keycloak_and_are_retried_until_it_answers,
    already_a_member_and_not_a_member_answers_complete_the_jobs,
    a_local_organization_never_pushes,
    with_push_memberships_off_nothing_is_pushed,
    erasing_a_user_never_pushes,
    a_membership_change_that_fails_writes_no_job,
    an_add_and_a_removal_reach_keycloak_in_the_order_they_were_made,
    patching_an_organization_or_a_contract_audits_the_values_before_and_after,
    a_managers_removal_reaches_keycloak_retried_until_it_answers,
);

async fn an_admin_add_and_remove_reach_keycloak_and_are_retried_until_it_answers(db: Db) {
    let s = start(db, true).await;
    let acme = s.kc.add_org("acme", "Acme", "");
    s.org("acme", Some(acme)).await;

    s.kc.fail_next_add_member(2);
    assert_eq!(s.add("u-1", "acme").await, 201);
    let job = s.last_event("sub=u-1").await["detail"]["keycloak_job"].as_i64().expect("the job is audited");
    let done = s.settled().await;
    assert_eq!(summary(&done), [(ADD, JobStatus::Done, 3)]);
    assert_eq!(done[0].id, job);
    assert_eq!(s.kc.members(acme), ["u-1"]);

    s.kc.fail_next_remove_member(2);
    assert_eq!(s.remove("u-1", "acme").await, 200);
    let done = s.settled().await;
    assert_eq!(summary(&done), [(ADD, JobStatus::Done, 3), (REMOVE, JobStatus::Done, 3)]);
    assert!(s.kc.members(acme).is_empty());
    assert_eq!(
        s.kc.membership_calls(),
        [
            add(acme, "u-1"),
            add(acme, "u-1"),
            add(acme, "u-1"),
            remove(acme, "u-1"),
            remove(acme, "u-1"),
            remove(acme, "u-1")
        ]
    );

    let text = s.app.metrics().await;
    let count = |result: &str| {
        metric(&text, &format!("identity_sidecar_jobs_total{{kind=\"{REMOVE}\",result=\"{result}\"}}"))
    };
    assert_eq!((count("retry"), count("ok")), (2.0, 1.0), "{text}");
    assert!(text.contains(&format!("identity_sidecar_jobs_queue_depth{{kind=\"{REMOVE}\"}}")), "{text}");
}

async fn already_a_member_and_not_a_member_answers_complete_the_jobs(db: Db) {
    let s = start(db, true).await;
    let acme = s.kc.add_org("acme", "Acme", "");
    s.org("acme", Some(acme)).await;

    s.kc.set_user_orgs("u-1", vec![acme]);
    assert_eq!(s.add("u-1", "acme").await, 201);
    assert_eq!(summary(&s.settled().await), [(ADD, JobStatus::Done, 1)], "409 is success");
    assert_eq!(s.kc.members(acme), ["u-1"]);

    s.kc.set_user_orgs("u-1", vec![]);
    assert_eq!(s.remove("u-1", "acme").await, 200);
    assert_eq!(
        summary(&s.settled().await),
        [(ADD, JobStatus::Done, 1), (REMOVE, JobStatus::Done, 1)],
        "404 is success"
    );
    assert_eq!(s.kc.membership_calls(), [add(acme, "u-1"), remove(acme, "u-1")]);
}

async fn a_local_organization_never_pushes(db: Db) {
    let s = start(db, true).await;
    s.org("local", None).await;
    assert_eq!(s.add("u-1", "local").await, 201);
    assert_eq!(s.remove("u-1", "local").await, 200);
    assert!(s.jobs().await.is_empty());
    assert_eq!(s.last_event("sub=u-1").await["action"], "membership.remove");
    assert!(s.kc.membership_calls().is_empty());
}

async fn with_push_memberships_off_nothing_is_pushed(db: Db) {
    let s = start(db, false).await;
    let acme = s.kc.add_org("acme", "Acme", "");
    s.org("acme", Some(acme)).await;
    assert_eq!(s.add("u-1", "acme").await, 201);
    assert_eq!(s.last_event("sub=u-1").await["detail"]["keycloak_job"], Value::Null);
    assert_eq!(s.remove("u-1", "acme").await, 200);
    assert!(s.jobs().await.is_empty());
    assert!(s.kc.membership_calls().is_empty());
}

async fn erasing_a_user_never_pushes(db: Db) {
    let s = start(db, true).await;
    let acme = s.kc.add_org("acme", "Acme", "");
    s.org("acme", Some(acme)).await;
    assert_eq!(s.add("u-1", "acme").await, 201);
    s.settled().await;
    assert_eq!(s.call(Method::DELETE, "/users/u-1", None).await.0, 204);
    assert_eq!(summary(&s.jobs().await), [(ADD, JobStatus::Done, 1)], "no removal job");
    assert_eq!(s.kc.members(acme), ["u-1"], "Keycloak keeps the member");
}

async fn a_membership_change_that_fails_writes_no_job(db: Db) {
    let s = start(db, true).await;
    let acme = s.kc.add_org("acme", "Acme", "");
    s.org("acme", Some(acme)).await;
    assert_eq!(s.add("u-1", "acme").await, 201);
    // From now on the database refuses the audit events of these changes: the last write of
    // each, after its job was queued.
    s.execute(
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events
           WHEN NEW.sub = 'doomed' OR NEW.action = 'membership.remove'
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.sub = 'doomed' OR NEW.action = 'membership.remove' THEN
             RAISE EXCEPTION 'refused by the test';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events
           FOR EACH ROW EXECUTE FUNCTION refuse_audit();",
    )
    .await;
    assert!(s.add("doomed", "acme").await >= 500);
    assert!(s.remove("u-1", "acme").await >= 500);
    assert_eq!(summary(&s.settled().await), [(ADD, JobStatus::Done, 1)], "only u-1's add has a job");
    assert_eq!(s.call(Method::GET, "/users/doomed", None).await.0, 404);
    let (_, user) = s.call(Method::GET, "/users/u-1", None).await;
    assert_eq!(user["memberships"][0]["organization"], "acme", "the removal rolled back");
    assert_eq!(s.kc.members(acme), ["u-1"]);
}

async fn an_add_and_a_removal_reach_keycloak_in_the_order_they_were_made(db: Db) {
    let s = start(db, true).await;
    let acme = s.kc.add_org("acme", "Acme", "");
    s.org("acme", Some(acme)).await;
    // Keycloak refuses the add, which is retried; the removal queued after it waits for it
    // instead of running first (and the retried add then leaving a member behind).
    s.kc.fail_next_add_member(usize::MAX);
    assert_eq!(s.add("u-1", "acme").await, 201);
    assert_eq!(s.remove("u-1", "acme").await, 200);
    let refused = s.kc.add_member_calls();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.kc.add_member_calls() < refused + 2 {
        assert!(tokio::time::Instant::now() < deadline, "the add was not retried");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!s.kc.membership_calls().contains(&remove(acme, "u-1")), "the removal waits for the add");
    s.kc.fail_next_add_member(0);
    let done = s.settled().await;
    assert_eq!(
        done.iter().map(|j| (j.kind.as_str(), j.status)).collect::<Vec<_>>(),
        [(ADD, JobStatus::Done), (REMOVE, JobStatus::Done)]
    );
    let calls = s.kc.membership_calls();
    assert_eq!(calls.last(), Some(&remove(acme, "u-1")), "{calls:?}");
    assert!(s.kc.members(acme).is_empty(), "Keycloak ends as the store: no member");
}

async fn patching_an_organization_or_a_contract_audits_the_values_before_and_after(db: Db) {
    let s = start(db, false).await;
    s.org("acme", None).await;
    s.org("other", None).await;
    let patch = json!({"description": "Rockets", "keycloak_alias": "acme"});
    let (status, body) = s.call(Method::PATCH, "/organizations/acme", Some(patch)).await;
    assert_eq!(status, 200, "{body}");
    let event = s.last_event("organization=acme").await;
    assert_eq!(event["action"], "organization.update");
    assert_eq!(
        event["detail"],
        json!({
            "before": {"key": "acme", "name": "ACME", "description": "", "keycloak_id": null, "keycloak_alias": null, "email_domains": []},
            "after": {"key": "acme", "name": "ACME", "description": "Rockets", "keycloak_id": null, "keycloak_alias": "acme", "email_domains": []},
        })
    );

    let contract = json!({"key": "acme-1", "organization": "acme", "name": "A", "membership_type": "code",
                          "max_learners": 5, "price": "10.00"});
    assert_eq!(s.call(Method::POST, "/contracts", Some(contract)).await.0, 201);
    let patch = json!({"organization": "other", "max_learners": 10, "price": null});
    let (status, body) = s.call(Method::PATCH, "/contracts/acme-1", Some(patch)).await;
    assert_eq!(status, 200, "{body}");
    let event = s.last_event("contract=acme-1").await;
    assert_eq!((&event["action"], &event["organization"]), (&json!("contract.update"), &json!("other")));
    let (before, after) = (&event["detail"]["before"], &event["detail"]["after"]);
    assert_eq!(
        (&before["organization"], &before["max_learners"], &before["price"]),
        (&json!("acme"), &json!(5), &json!("10.00"))
    );
    assert_eq!(
        (&after["organization"], &after["max_learners"], &after["price"]),
        (&json!("other"), &json!(10), &Value::Null)
    );
    assert_eq!((&before["name"], &after["name"]), (&json!("A"), &json!("A")), "whole objects");
}

/// `push_memberships` needs the Keycloak admin client: refused when the configuration is read
/// (startup) and by `check-config`, naming the key.
#[tokio::test]
async fn push_memberships_without_keycloak_admin_is_refused_naming_the_key() {
    let env = [
        ("SIDECAR__OIDC__ISSUER", "https://sso.example.com/realms/acme"),
        ("SIDECAR__OIDC__AUDIENCES", r#"["app"]"#),
        ("SIDECAR__KEYCLOAK_ADMIN__PUSH_MEMBERSHIPS", "true"),
        ("SIDECAR__KEYCLOAK_ADMIN__URL", "http://127.0.0.1:9"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let err = format!("{:#}", identity_sidecar::Config::load(None, env).unwrap_err());
    assert!(err.contains("keycloak_admin.push_memberships"), "{err}");
    assert!(err.contains("keycloak_admin.realm") && !err.contains("keycloak_admin.url,"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        "[oidc]\nissuer = \"https://sso.example.com/realms/acme\"\naudiences = [\"app\"]\n\
         [keycloak_admin]\npush_memberships = true\n",
    )
    .unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_identity-sidecar"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SIDECAR")) {
        command.env_remove(key);
    }
    let out = command.arg("--config").arg(&config).arg("check-config").output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("keycloak_admin.push_memberships"), "{stderr}");
}

/// A manager's removal (`DELETE /_sidecar/manage/organizations/{org}/members/{sub}`) runs the
/// admin removal, so it is pushed the same way; the manager's own membership add is not theirs.
async fn a_managers_removal_reaches_keycloak_retried_until_it_answers(db: Db) {
    let s = start(db, true).await;
    let acme = s.kc.add_org("acme", "Acme", "");
    s.org("acme", Some(acme)).await;
    let (status, body) =
        s.call(Method::PUT, "/users/boss/organizations/acme", Some(json!({"manager": true}))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(s.add("u-1", "acme").await, 201);
    s.settled().await;
    assert_eq!(s.kc.members(acme), ["boss", "u-1"]);

    s.kc.fail_next_remove_member(2);
    let token = s.kc.token().sub("boss").sign();
    let res = s
        .app
        .http
        .delete(s.app.url("/_sidecar/manage/organizations/acme/members/u-1"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let done = s.settled().await;
    assert_eq!(
        done.last().map(|j| (j.kind.as_str(), j.status, j.attempts)),
        Some((REMOVE, JobStatus::Done, 3))
    );
    assert_eq!(s.kc.members(acme), ["boss"]);
    assert_eq!(s.kc.membership_calls().last(), Some(&remove(acme, "u-1")));
    let event = s.last_event("sub=u-1").await;
    assert_eq!(
        (event["actor"].clone(), event["action"].clone()),
        (json!("manager:boss"), json!("membership.remove"))
    );
}
