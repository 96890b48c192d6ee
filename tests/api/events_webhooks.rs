//! Change events pushed to webhooks (docs/contract.md §13, docs/events.md), as a receiver
//! written against the public libraries sees them: every delivery is verified by
//! `standardwebhooks` and parsed by the CloudEvents SDK (tests/webhooks/receiver.py), and
//! what arrives is compared with the pull feed `GET /admin/v1/events`.
//!
//! Changes are real: admin API calls, logins through forward auth, a code redeemed on the
//! public port. Outages are real too: the receiver process is killed (connection refused) or
//! answers 500. The receiver examples of docs/events.md run here as printed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::helpers::webhooks::{Received, Receiver, new_secret, receiver_venv, secret_file};
use crate::helpers::{Db, Fixture, metric, on_both_databases, set};

/// How long a delivery may take to show up; generous for a loaded machine, never waited out
/// when things work (every wait polls its condition).
const WITHIN: Duration = Duration::from_secs(30);

struct Hooks {
    f: Fixture,
    /// Holds the secret files.
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Hooks {
    type Target = Fixture;

    fn deref(&self) -> &Fixture {
        &self.f
    }
}

/// One `[[events.webhooks]]` entry.
struct Hook<'a> {
    name: &'a str,
    url: String,
    secrets: &'a [&'a str],
    types: &'a [&'a str],
}

/// The sidecar with these webhooks and fast retries (`retry_base_ms` 50, `retry_max_secs` 1),
/// once every webhook's delivery position exists (a new webhook starts at the newest event,
/// so changes made before would not be its to deliver).
async fn start(db: Db, hooks: &[Hook<'_>], configure: impl FnOnce(&mut Vec<(String, String)>)) -> Hooks {
    let dir = tempfile::tempdir().unwrap();
    let webhooks: Vec<Value> = hooks
        .iter()
        .map(|h| {
            let file = secret_file(dir.path(), &format!("{}.secret", h.name), h.secrets);
            json!({"name": h.name, "url": h.url, "secret_file": file, "types": h.types})
        })
        .collect();
    let f = Fixture::start_with(db, |_, env| {
        set(env, "SIDECAR__EVENTS__WEBHOOKS", Value::from(webhooks).to_string());
        set(env, "SIDECAR__EVENTS__POLL_INTERVAL_MS", "50");
        set(env, "SIDECAR__EVENTS__RETRY_BASE_MS", "50");
        set(env, "SIDECAR__EVENTS__RETRY_MAX_SECS", "1");
        set(env, "SIDECAR__EVENTS__WEBHOOK_TIMEOUT_SECS", "5");
        configure(env);
    })
    .await;
    let w = Hooks { f, _dir: dir };
    for hook in hooks {
        w.wait_target(hook.name, "its position to exist", |t| t["state"] != "pending").await;
    }
    w
}

impl Hooks {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.admin(method.clone(), path);
        if let Some(body) = body {
            req = req.json(&body);
            if method == Method::PATCH {
                req = req.header("content-type", "application/merge-patch+json");
            }
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(json!(text)))
    }

    /// An admin call that must succeed; its body.
    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, body) = self.call(method.clone(), path, body).await;
        assert!((200..300).contains(&status), "{method} {path} → {status}: {body}");
        body
    }

    /// An organization whose Keycloak alias is its key, so an organization claim names it.
    async fn org(&self, key: &str) {
        let body = json!({"key": key, "name": key, "keycloak_alias": key});
        self.ok(Method::POST, "/organizations", Some(body)).await;
    }

    async fn contract(&self, key: &str, org: &str, membership_type: &str, max_learners: Option<i64>) {
        let body = json!({"key": key, "organization": org, "name": key, "membership_type": membership_type,
                          "max_learners": max_learners});
        self.ok(Method::POST, "/contracts", Some(body)).await;
    }

    /// A new login (its own session, so it reconciles) that must pass forward auth.
    async fn login(&self, sub: &str, email: &str, organizations: Value) {
        let sid = uuid::Uuid::new_v4().to_string();
        let token = self.kc.token().sub(sub).sid(&sid).email(email).organization(organizations).sign();
        assert_eq!(self.app.auth_status(&token).await, 200, "login of {sub}");
    }

    /// The pull feed, every event within retention, optionally filtered by type prefixes.
    async fn feed(&self, types: Option<&str>) -> Vec<Value> {
        let mut path = "/events?limit=1000".to_owned();
        if let Some(types) = types {
            path.push_str(&format!("&types={types}"));
        }
        let res = self.admin(Method::GET, &path).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/cloudevents-batch+json");
        res.json::<Vec<Value>>().await.unwrap()
    }

    /// `GET /admin/v1/events/webhooks`.
    async fn targets(&self) -> Value {
        self.ok(Method::GET, "/events/webhooks", None).await
    }

    async fn target(&self, name: &str) -> Value {
        let list = self.targets().await;
        list["items"].as_array().unwrap().iter().find(|t| t["name"] == name).cloned().unwrap_or_else(|| {
            panic!("no target {name} in {list}");
        })
    }

    /// Polls the target's status until `until` holds; returns it.
    async fn wait_target(&self, name: &str, what: &str, until: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let target = self.target(name).await;
            if until(&target) {
                return target;
            }
            assert!(tokio::time::Instant::now() < deadline, "{name}: waited for {what}; now {target}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `receiver` holds exactly the events of the feed (filtered by `types`) and
    /// the webhook reports nothing left; asserts they match one to one, in order.
    async fn delivered_as_fed(&self, name: &str, receiver: &Receiver, types: Option<&str>) -> Vec<Received> {
        let feed = self.feed(types).await;
        let got = receiver.wait_for(feed.len(), WITHIN).await;
        assert_same(&got, &feed);
        let target = self.wait_target(name, "lag 0", |t| t["lag"] == 0).await;
        assert_eq!((&target["state"], &target["failures"]), (&json!("active"), &json!(0)), "{target}");
        // Nothing more arrives for the same changes (a repeat would show up by now: the
        // position reached the head, so nothing is left to send).
        assert_eq!(receiver.received().await.len(), feed.len(), "a repeated delivery");
        got
    }
}

/// The receiver got exactly `feed`: same ids, sequences, types, subjects and data, in order.
fn assert_same(got: &[Received], feed: &[Value]) {
    let got_ids: Vec<(&str, &str, &str)> =
        got.iter().map(|r| (r.webhook_id.as_str(), r.sequence.as_str(), r.kind.as_str())).collect();
    let fed_ids: Vec<(&str, &str, &str)> = feed
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["sequence"].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(got_ids, fed_ids, "the webhook's events are the feed's, in the same order");
    for (r, e) in got.iter().zip(feed) {
        assert_eq!(r.id, r.webhook_id, "webhook-id is the event id");
        assert_eq!(r.subject.as_deref(), e["subject"].as_str());
        assert_eq!(r.source, e["source"].as_str().unwrap());
        assert_eq!(r.data, e["data"], "{}", r.id);
        assert_eq!(r.content_type.as_deref(), Some("application/cloudevents+json"));
    }
    let mut sequences: Vec<&str> = got.iter().map(|r| r.sequence.as_str()).collect();
    sequences.dedup();
    assert_eq!(sequences.len(), got.len(), "each event once");
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "in sequence order: {sequences:?}");
    assert!(sequences.iter().all(|s| s.len() == 20));
}

/// Drives one change of every kind the closed list names (but `assignment.expired`) through
/// the admin API, logins and a code redemption; returns how many events of each type they
/// must produce.
async fn every_kind_of_change(w: &Hooks) -> Vec<(&'static str, usize)> {
    w.org("acme").await;
    w.ok(Method::PATCH, "/organizations/acme", Some(json!({"name": "Acme Corp"}))).await;
    w.contract("acme-sso", "acme", "auto", Some(1)).await;
    w.contract("acme-admin", "acme", "code", None).await;
    w.ok(Method::PATCH, "/contracts/acme-admin", Some(json!({"name": "Acme by hand"}))).await;

    // Memberships by the admin API: added, updated (flags), an admin attachment.
    w.ok(Method::PUT, "/users/ann/organizations/acme", None).await; // membership.added
    let flags = json!({"manager": true, "keep_until_seen": false});
    w.ok(Method::PUT, "/users/ann/organizations/acme", Some(flags)).await; // membership.updated
    w.ok(Method::PUT, "/users/ann/contracts/acme-admin", None).await; // attachment.attached
    // Ann's login takes the SSO contract's one seat; Bob's finds it full, twice: one skip event.
    w.login("ann", "ann@example.org", json!(["acme"])).await; // attachment.attached
    w.login("bob", "bob@example.org", json!(["acme"])).await; // membership.added, skipped_full
    w.login("bob", "bob@example.org", json!(["acme"])).await; // nothing new
    w.ok(Method::DELETE, "/users/bob/organizations/acme", None).await; // membership.removed
    w.ok(Method::DELETE, "/users/ann/contracts/acme-admin", None).await; // attachment.detached

    // Codes and assignments in an organization without SSO contracts.
    w.org("beta").await;
    w.contract("beta-codes", "beta", "code", Some(10)).await;
    let codes = w.ok(Method::POST, "/contracts/beta-codes/codes", Some(json!({"count": 1}))).await;
    let code = codes["items"][0]["code"].as_str().unwrap().to_owned();
    let res = w
        .app
        .http
        .post(w.app.url(&format!("/_sidecar/enrollment-codes/{code}/redeem")))
        .bearer_auth(w.kc.token().sub("carol").email("carol@example.org").sign())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());

    // Assignments: one accepted by a verified login, one revoked.
    let a = w
        .ok(Method::POST, "/contracts/beta-codes/assignments", Some(json!({"emails": ["dora@example.org"]})))
        .await;
    assert_eq!(a["created"].as_array().unwrap().len(), 1, "{a}");
    let b = w
        .ok(Method::POST, "/contracts/beta-codes/assignments", Some(json!({"emails": ["eve@example.org"]})))
        .await;
    w.login("dora", "dora@example.org", json!([])).await; // accepted, membership.added, attached
    let eve = b["created"][0]["id"].as_i64().unwrap();
    w.ok(Method::DELETE, &format!("/assignments/{eve}"), None).await;

    // Carol is erased: her attachment and membership go with her, then user.erased.
    w.ok(Method::DELETE, "/users/carol", None).await;

    // Deletions carry the object before.
    w.org("gone").await;
    w.contract("gone-1", "gone", "code", None).await;
    w.ok(Method::DELETE, "/contracts/gone-1", None).await;
    w.ok(Method::DELETE, "/organizations/gone", None).await;

    vec![
        ("identity-sidecar.organization.created", 3),
        ("identity-sidecar.organization.updated", 1),
        ("identity-sidecar.organization.deleted", 1),
        ("identity-sidecar.contract.created", 4),
        ("identity-sidecar.contract.updated", 1),
        ("identity-sidecar.contract.deleted", 1),
        // ann (admin), bob (login), carol (code), dora (assignment)
        ("identity-sidecar.membership.added", 4),
        ("identity-sidecar.membership.updated", 1),
        // bob (admin), carol (erased)
        ("identity-sidecar.membership.removed", 2),
        // ann (admin), ann (login, SSO), carol (code), dora (assignment)
        ("identity-sidecar.attachment.attached", 4),
        // ann (admin), carol (erased)
        ("identity-sidecar.attachment.detached", 2),
        ("identity-sidecar.attachment.skipped_full", 1),
        ("identity-sidecar.code.redeemed", 1),
        ("identity-sidecar.assignment.created", 2),
        ("identity-sidecar.assignment.accepted", 1),
        ("identity-sidecar.assignment.revoked", 1),
        ("identity-sidecar.user.erased", 1),
    ]
}

fn count(got: &[Received], kind: &str) -> usize {
    got.iter().filter(|r| r.kind == kind).count()
}

// --- every type, once, in order -------------------------------------------------------------

async fn every_change_arrives_once_in_sequence_order_signed_and_as_the_feed_has_it(db: Db) {
    let secret = new_secret();
    let receiver = Receiver::start(&secret).await;
    let hook = Hook { name: "lms", url: receiver.url(), secrets: &[&secret], types: &[] };
    let w = start(db, &[hook], |_| {}).await;

    let expected = every_kind_of_change(&w).await;
    let got = w.delivered_as_fed("lms", &receiver, None).await;

    for (kind, n) in &expected {
        assert_eq!(count(&got, kind), *n, "{kind}: {:#?}", got.iter().map(|r| &r.kind).collect::<Vec<_>>());
    }
    let kinds = expected.iter().map(|(k, _)| *k).collect::<Vec<_>>();
    assert!(got.iter().all(|r| kinds.contains(&r.kind.as_str())), "only the changes made");
    assert_eq!(got.len(), expected.iter().map(|(_, n)| n).sum::<usize>());
    assert!(receiver.refused().await.is_empty());

    // A few payloads as a consumer reads them.
    let skipped = got.iter().find(|r| r.kind.ends_with("skipped_full")).unwrap();
    assert_eq!((skipped.subject.as_deref(), &skipped.data["contract"]), (Some("bob"), &json!("acme-sso")));
    let deleted = got.iter().find(|r| r.kind.ends_with("organization.deleted")).unwrap();
    assert_eq!((deleted.subject.as_deref(), &deleted.data["name"]), (Some("gone"), &json!("gone")));
    let updated = got.iter().find(|r| r.kind.ends_with("organization.updated")).unwrap();
    assert_eq!(updated.data["name"], "Acme Corp", "the object after the change");
    let erased = got.iter().find(|r| r.kind.ends_with("user.erased")).unwrap();
    assert_eq!((erased.subject.as_deref(), &erased.data["actor"]), (Some("carol"), &json!("admin:ops")));

    let text = w.app.metrics().await;
    let delivered = metric(&text, "identity_sidecar_events_delivered_total{target=\"lms\"}");
    assert_eq!(delivered as usize, got.len(), "{text}");
}

// --- outages -----------------------------------------------------------------------------

async fn a_receiver_outage_delays_delivery_and_loses_or_reorders_nothing(db: Db) {
    let secret = new_secret();
    let mut receiver = Receiver::start(&secret).await;
    let hook = Hook { name: "crm", url: receiver.url(), secrets: &[&secret], types: &[] };
    let w = start(db, &[hook], |_| {}).await;
    w.org("before").await;
    receiver.wait_for(1, WITHIN).await;
    // Recorded before it answered: stop it only once the sidecar has the acknowledgement.
    w.wait_target("crm", "the first event acknowledged", |t| t["lag"] == 0).await;

    // Down: connections are refused.
    receiver.stop();
    for key in ["down-1", "down-2", "down-3"] {
        w.org(key).await;
    }
    let t = w
        .wait_target("crm", "failures while refused", |t| {
            t["failures"].as_i64() > Some(0) && t["lag"].as_i64() > Some(0)
        })
        .await;
    assert_eq!(t["state"], "active", "{t}");
    assert!(t["last_error"].as_str().unwrap().contains("cannot connect"), "{t}");

    // Up again, but answering 500.
    receiver.restart();
    receiver.fail_with(500).await;
    let refused_so_far = t["attempts_failed"].as_i64().unwrap();
    w.org("failing-1").await;
    w.org("failing-2").await;
    let t = w
        .wait_target("crm", "failures answered 500", |t| {
            t["attempts_failed"].as_i64() > Some(refused_so_far)
                && t["last_error"].as_str().is_some_and(|e| e.contains("500"))
        })
        .await;
    assert!(t["lag"].as_i64().unwrap() > 0, "{t}");
    let text = w.app.metrics().await;
    assert!(metric(&text, "identity_sidecar_event_delivery_failures_total{target=\"crm\"}") > 0.0, "{text}");
    assert!(receiver.received().await.is_empty(), "nothing accepted while failing");

    // Recovered: everything since the outage arrives, in order, no gap.
    receiver.recover().await;
    w.org("after").await;
    let feed = w.feed(None).await;
    let missed = &feed[1..];
    let got = receiver.wait_for(missed.len(), WITHIN).await;
    assert_same(&got, missed);
    let t = w.wait_target("crm", "lag 0", |t| t["lag"] == 0).await;
    assert_eq!((&t["state"], &t["failures"], &t["last_error"]), (&json!("active"), &json!(0), &Value::Null));
    assert!(t["attempts_failed"].as_i64().unwrap() > 0, "failures ever stay counted: {t}");
    let subjects: Vec<_> = got.iter().map(|r| r.subject.clone().unwrap()).collect();
    assert_eq!(subjects, ["down-1", "down-2", "down-3", "failing-1", "failing-2", "after"]);
}

// --- a types filter --------------------------------------------------------------------------

async fn a_webhook_with_a_types_filter_gets_only_those_types(db: Db) {
    let secret = new_secret();
    let members = Receiver::start(&secret).await;
    let all = Receiver::start(&secret).await;
    let hooks = [
        Hook {
            name: "members",
            url: members.url(),
            secrets: &[&secret],
            types: &["identity-sidecar.membership."],
        },
        Hook { name: "all", url: all.url(), secrets: &[&secret], types: &[] },
    ];
    let w = start(db, &hooks, |_| {}).await;
    w.org("acme").await;
    w.contract("acme-sso", "acme", "auto", None).await;
    w.login("ann", "ann@example.org", json!(["acme"])).await;
    w.ok(Method::PUT, "/users/ann/organizations/acme", Some(json!({"manager": true}))).await;
    w.ok(Method::DELETE, "/users/ann/organizations/acme", None).await;
    w.org("last").await;

    // The whole feed reached `all`: `members` has seen every change by then too.
    w.delivered_as_fed("all", &all, None).await;
    let got = w.delivered_as_fed("members", &members, Some("identity-sidecar.membership.")).await;
    let kinds: Vec<&str> = got.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "identity-sidecar.membership.added",
            "identity-sidecar.membership.updated",
            "identity-sidecar.membership.removed"
        ]
    );
    // Its position still moved past the events it does not receive.
    let head = w.targets().await["head"].clone();
    assert_eq!(w.target("members").await["delivered"], head);
}

// --- secret rotation -------------------------------------------------------------------------

async fn during_a_rotation_a_receiver_verifying_with_either_secret_accepts(db: Db) {
    let (old, new) = (new_secret(), new_secret());
    let with_old = Receiver::start(&old).await;
    let with_new = Receiver::start(&new).await;
    let with_neither = Receiver::start(&new_secret()).await;
    let both: &[&str] = &[&new, &old];
    let hooks = [
        Hook { name: "old", url: with_old.url(), secrets: both, types: &[] },
        Hook { name: "new", url: with_new.url(), secrets: both, types: &[] },
        Hook { name: "neither", url: with_neither.url(), secrets: both, types: &[] },
    ];
    let w = start(db, &hooks, |_| {}).await;
    w.org("acme").await;
    w.org("beta").await;

    w.delivered_as_fed("old", &with_old, None).await;
    w.delivered_as_fed("new", &with_new, None).await;
    // A receiver holding another secret refuses (400): the sidecar keeps retrying the first.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while with_neither.refused().await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the third receiver never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(with_neither.received().await.is_empty());
    let first = &w.feed(None).await[0];
    assert!(with_neither.refused().await.iter().all(|r| r["webhook_id"] == first["id"]));
    let t = w.wait_target("neither", "failures", |t| t["failures"].as_i64() > Some(0)).await;
    assert!(t["last_error"].as_str().unwrap().contains("400"), "{t}");
}

// --- falling behind the retention ----------------------------------------------------------

async fn a_webhook_behind_the_retention_is_dead_and_receives_nothing_more(db: Db) {
    let secret = new_secret();
    let mut down = Receiver::start(&secret).await;
    let up = Receiver::start(&secret).await;
    let hooks = [
        Hook { name: "down", url: down.url(), secrets: &[&secret], types: &[] },
        Hook { name: "up", url: up.url(), secrets: &[&secret], types: &[] },
    ];
    let w = start(db, &hooks, |env| set(env, "SIDECAR__EVENTS__RETENTION_DAYS", "1")).await;
    w.org("first").await;
    down.wait_for(1, WITHIN).await;
    w.wait_target("down", "the first event acknowledged", |t| t["lag"] == 0).await;

    down.stop();
    w.org("missed").await;
    let t = w.wait_target("down", "a failed attempt", |t| t["failures"].as_i64() > Some(0)).await;
    up.wait_for(2, WITHIN).await;
    // Two days pass for the events it has not acknowledged.
    let delivered: i64 = t["delivered"].as_str().unwrap().parse().unwrap();
    age_events_after(&w.app.database_url, delivered).await;
    // The replica retrying an event holds it in memory with its real time; a replica that
    // takes the webhook over reads the rows afresh. So a pretend other replica holds the lease
    // for two seconds, after which this one takes it back and reads the aged rows.
    hand_lease_away(&w.app.database_url, "down").await;

    let t = w.wait_target("down", "state dead", |t| t["state"] == "dead").await;
    assert!(t["last_error"].as_str().unwrap().contains("retention_days"), "{t}");
    assert_eq!(t["delivering"], false);
    assert!(t["lag"].as_i64().unwrap() > 0, "{t}");
    let text = w.app.metrics().await;
    assert_eq!(metric(&text, "identity_sidecar_event_targets_dead_total{target=\"down\"}"), 1.0, "{text}");
    assert_eq!(metric(&text, "identity_sidecar_event_targets_dead_total{target=\"up\"}"), 0.0, "{text}");

    // Back up: a later change reaches the live webhook, never the dead one.
    down.restart();
    w.org("later").await;
    up.wait_for(3, WITHIN).await;
    w.wait_target("up", "lag 0", |t| t["lag"] == 0).await;
    assert!(down.received().await.is_empty(), "a dead webhook receives nothing");
    assert_eq!(w.target("down").await["state"], "dead");
    assert_eq!(w.target("down").await["delivered"], t["delivered"], "its position stays");
}

/// Gives the webhook's lease to another owner for two seconds.
async fn hand_lease_away(database_url: &str, target: &str) {
    use sqlx::Connection as _;
    if database_url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::query(
            "UPDATE event_deliveries SET lease_owner = 'another-replica',
                    lease_until = now() + INTERVAL '2 seconds' WHERE target = $1",
        )
        .bind(target)
        .execute(&mut c)
        .await
        .unwrap();
    } else {
        let mut c = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        let until = sqlite_time(time::OffsetDateTime::now_utc() + time::Duration::seconds(2));
        sqlx::query(
            "UPDATE event_deliveries SET lease_owner = 'another-replica', lease_until = $1 WHERE target = $2",
        )
        .bind(until)
        .bind(target)
        .execute(&mut c)
        .await
        .unwrap();
    }
}

/// The fixed-width UTC text the store writes on SQLite (src/store/codec.rs).
fn sqlite_time(at: time::OffsetDateTime) -> String {
    at.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    ))
    .unwrap()
}

/// Moves the time of every event numbered after `after` two days back, in the app's database.
async fn age_events_after(database_url: &str, after: i64) {
    use sqlx::Connection as _;
    if database_url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::query("UPDATE audit_events SET at = at - INTERVAL '2 days' WHERE sequence > $1")
            .bind(after)
            .execute(&mut c)
            .await
            .unwrap();
    } else {
        let mut c = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        let two_days_ago = sqlite_time(time::OffsetDateTime::now_utc() - time::Duration::days(2));
        let done = sqlx::query("UPDATE audit_events SET at = $1 WHERE sequence > $2")
            .bind(two_days_ago)
            .bind(after)
            .execute(&mut c)
            .await
            .unwrap();
        assert!(done.rows_affected() > 0);
    }
}

on_both_databases!(
    every_change_arrives_once_in_sequence_order_signed_and_as_the_feed_has_it,
    a_receiver_outage_delays_delivery_and_loses_or_reorders_nothing,
    a_webhook_with_a_types_filter_gets_only_those_types,
    during_a_rotation_a_receiver_verifying_with_either_secret_accepts,
    a_webhook_behind_the_retention_is_dead_and_receives_nothing_more,
);

// --- the receiver examples of docs/events.md, as printed -----------------------------------

/// Runs an example receiver (`command` with the file, configured by `PORT=0` and
/// `WEBHOOK_SECRET`), points a webhook at it, and checks it printed the id of the event it
/// verified and handled.
async fn an_example_receives(db: Db, program: &Path, file: &str) {
    let secret = new_secret();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let mut child = tokio::process::Command::new(program)
        .arg(&script)
        .env("PORT", "0")
        .env("WEBHOOK_SECRET", &secret)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("run {file}: {e}"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WITHIN, lines.next_line()).await.unwrap().unwrap().unwrap();
    // "listening on http://127.0.0.1:<port>/"
    let url =
        first.split_whitespace().last().unwrap_or_else(|| panic!("{file} printed {first:?}")).to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{file} printed {first:?}");

    let hook = Hook { name: "example", url, secrets: &[&secret], types: &[] };
    let w = start(db, &[hook], |_| {}).await;
    w.org("acme").await;
    w.ok(Method::PUT, "/users/ann/organizations/acme", None).await;
    let feed = w.feed(None).await;
    for event in &feed {
        let line = tokio::time::timeout(WITHIN, lines.next_line()).await.unwrap().unwrap().unwrap();
        assert_eq!(
            line,
            format!("handled {} {}", event["id"].as_str().unwrap(), event["type"].as_str().unwrap())
        );
    }
    w.wait_target("example", "lag 0", |t| t["lag"] == 0).await;
    assert_eq!(w.target("example").await["failures"], 0);
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_receiver_example_verifies_and_handles_events_as_printed() {
    let python = receiver_venv().join("bin/python");
    an_example_receives(Db::Sqlite, &python, "docs/examples/webhook_receiver.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_receiver_example_verifies_and_handles_events_as_printed() {
    an_example_receives(Db::Sqlite, Path::new("node"), "docs/examples/webhook_receiver.mjs").await;
}

#[test]
fn the_events_page_prints_both_receiver_examples_verbatim() {
    let page = std::fs::read_to_string(crate::helpers::gateway::repo_file("docs/events.md")).unwrap();
    for (file, lang) in
        [("docs/examples/webhook_receiver.py", "python"), ("docs/examples/webhook_receiver.mjs", "js")]
    {
        let text = std::fs::read_to_string(crate::helpers::gateway::repo_file(file)).unwrap();
        assert!(
            page.contains(&format!("```{lang}\n{text}```\n")),
            "docs/events.md does not print {file} as it is"
        );
    }
}
