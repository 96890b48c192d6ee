//! Change-event delivery (docs/contract.md §13) as a receiver sees it across the things that go
//! wrong in production: a sidecar killed while a webhook request is open and restarted on the
//! same database, two replicas sharing one database and one webhook, the Redis stream across a
//! restart, and changes whose transaction fails.
//!
//! The webhook receiver is the test helpers' [`Receiver`], which records every request (its
//! `webhook-id`, the event's sequence, arrival order, whether it was acknowledged) and the most
//! requests it ever had open at once. The kill uses the real binary (SIGKILL: no lease release,
//! no clean shutdown); replicas are two in-process apps on one PostgreSQL database.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection as _;

use crate::helpers::binary::{Binary, proxy_toml};
use crate::helpers::receiver::{Answer, Arrival, Receiver};
use crate::helpers::{
    ADMIN_TOKEN, Db, FakeKeycloak, Fixture, TestApp, TestDatabase, base_env, closed_port, on_both_databases,
    set, with_admin_token,
};

/// A Standard Webhooks secret (`whsec_` + base64).
const SECRET: &str = "whsec_ZXZlbnRzLWRlbGl2ZXJ5LXRlc3Qtc2VjcmV0";

/// The webhook's name (its delivery position).
const HOOK: &str = "lms";

/// A secret file for the webhook, in `dir`.
fn secret_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("webhook-secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    path.display().to_string()
}

/// A JSON answer from any admin port: status and body (null when empty).
async fn call(http: &reqwest::Client, method: Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut req = http.request(method, url).bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("the admin port answers");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
}

/// Creates organization `key` through the admin port at `admin` (`http://host:port`).
async fn create_org(http: &reqwest::Client, admin: &str, key: &str) {
    let url = format!("{admin}/admin/v1/organizations");
    let (status, body) = call(http, Method::POST, url, Some(json!({"key": key, "name": key}))).await;
    assert_eq!(status, 201, "{key}: {body}");
}

/// Renames organization `key` (an `organization.updated` event).
async fn rename_org(http: &reqwest::Client, admin: &str, key: &str) {
    let url = format!("{admin}/admin/v1/organizations/{key}");
    let (status, body) =
        call(http, Method::PATCH, url, Some(json!({"name": format!("{key} renamed")}))).await;
    assert_eq!(status, 200, "{key}: {body}");
}

/// The whole pull feed from the start, in sequence order.
async fn feed(http: &reqwest::Client, admin: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = "0".to_owned();
    loop {
        let url = format!("{admin}/admin/v1/events?after={after}&limit=1000");
        let (status, body) = call(http, Method::GET, url, None).await;
        assert_eq!(status, 200, "{body}");
        let page = body.as_array().unwrap().clone();
        let Some(last) = page.last() else { return events };
        after = last["sequence"].as_str().unwrap().to_owned();
        events.extend(page);
    }
}

/// The webhook's status row from `GET /admin/v1/events/webhooks`.
async fn target(http: &reqwest::Client, admin: &str, name: &str) -> Value {
    let (status, body) = call(http, Method::GET, format!("{admin}/admin/v1/events/webhooks"), None).await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().iter().find(|t| t["name"] == name).cloned().expect("target listed")
}

/// Waits until the target's delivery position exists (a new target starts at the newest event,
/// so changes made before that would not be delivered to it).
async fn wait_target_created(http: &reqwest::Client, admin: &str, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let t = target(http, admin, name).await;
        if t["state"] == "active" {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the target was never created: {t}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the target is active with no lag; returns its status row. Polled: the
/// receiver records an acknowledgement before the sidecar has read it and moved the position.
async fn wait_caught_up(http: &reqwest::Client, admin: &str, name: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let t = target(http, admin, name).await;
        if t["state"] == "active" && t["lag"] == 0 {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "the target did not catch up: {t}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many requests were acknowledged.
fn acked(arrivals: &[Arrival]) -> usize {
    arrivals.iter().filter(|a| a.acked).count()
}

fn sequence(event: &Value) -> i64 {
    event["sequence"].as_str().unwrap().parse().unwrap()
}

/// What every delivery test asserts about the arrivals, against the feed (`expected`: the
/// events the webhook receives, in sequence order): each event arrived, in order, every repeat
/// of an event came right after it with the same `webhook-id`, and what was acknowledged is
/// exactly the feed's event.
fn assert_delivered_in_order_at_least_once(arrivals: &[Arrival], expected: &[Value]) {
    // Collapse runs of the same id: what remains must be the feed, once each, in order.
    let mut runs: Vec<&Arrival> = Vec::new();
    for a in arrivals {
        if runs.last().is_none_or(|last| last.webhook_id != a.webhook_id) {
            runs.push(a);
        }
    }
    let got: Vec<&str> = runs.iter().map(|a| a.webhook_id.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(got, want, "each event once, in sequence order (repeats only back to back)");
    for pair in runs.windows(2) {
        assert!(pair[0].sequence < pair[1].sequence, "sequence strictly increases: {pair:?}");
    }
    for a in arrivals {
        let event = expected.iter().find(|e| e["id"] == a.webhook_id.as_str()).unwrap();
        assert_eq!(&a.event, event, "the body is the feed's event, on every attempt");
        assert_eq!(a.event["id"], a.webhook_id.as_str(), "webhook-id is the event id");
    }
    let acked: Vec<&str> = {
        let mut ids: Vec<&str> = Vec::new();
        for a in arrivals.iter().filter(|a| a.acked) {
            if !ids.contains(&a.webhook_id.as_str()) {
                ids.push(&a.webhook_id);
            }
        }
        ids
    };
    assert_eq!(acked, want, "every event acknowledged, in order");
}

// --- 1. Killed mid-delivery, restarted on the same database ---------------------------------

/// The binary's configuration: a webhook to `receiver` with a short attempt timeout (so a dead
/// process's lease, timeout + 5 s, runs out soon) and fast polling.
fn binary_toml(kc: &FakeKeycloak, receiver: &Receiver, secret: &str) -> String {
    use sha2::Digest as _;
    let sha256 = hex::encode(sha2::Sha256::digest(ADMIN_TOKEN.as_bytes()));
    let tables = format!(
        r#"
[admin]
token_sha256 = [{{ name = "ops", sha256 = "{sha256}" }}]

[events]
poll_interval_ms = 20
webhook_timeout_secs = 2
retry_base_ms = 50
retry_max_secs = 1

[[events.webhooks]]
name = "{HOOK}"
url = "{url}"
secret_file = "{secret}"
"#,
        url = receiver.url(),
    );
    proxy_toml(&format!("http://127.0.0.1:{}", closed_port()), &kc.issuer(), &tables)
}

async fn a_sidecar_killed_while_a_webhook_request_is_open_resends_that_event_after_restart(db: Db) {
    let kc = FakeKeycloak::start().await;
    let receiver = Receiver::start().await;
    let database = db.fresh().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = binary_toml(&kc, &receiver, &secret_file(&dir));
    let env = [("SIDECAR__DATABASE__URL", database.url.as_str())];
    let http = reqwest::Client::new();

    let mut first = Binary::start_with_env(&toml, &env);
    first.wait_ready(Duration::from_secs(20)).await;
    let admin = first.admin_url("");
    wait_target_created(&http, &admin, HOOK).await;
    for key in ["org-1", "org-2", "org-3"] {
        create_org(&http, &admin, key).await;
    }
    receiver.wait_for(Duration::from_secs(10), "the first three acknowledged", |a| acked(a) == 3).await;

    // The receiver now keeps requests open: org-4's event is sent and never answered; org-5
    // and org-6 are committed and wait behind it.
    receiver.answer(Answer::Hold);
    for key in ["org-4", "org-5", "org-6"] {
        create_org(&http, &admin, key).await;
    }
    receiver.wait_for(Duration::from_secs(10), "org-4's event in flight", |a| a.len() == 4).await;
    assert_eq!(receiver.in_flight(), 1);
    first.child.kill().expect("SIGKILL");
    first.wait_exit(Duration::from_secs(10)).await;
    // The dead process's connection closes; the held request ends unanswered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while receiver.in_flight() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the killed sender's request stayed open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    receiver.answer(Answer::Ack);

    let mut second = Binary::start_with_env(&toml, &env);
    second.wait_ready(Duration::from_secs(20)).await;
    let admin = second.admin_url("");
    // The killed process's lease runs out 2 s + 5 s after its last renewal.
    receiver
        .wait_for(Duration::from_secs(30), "org-4..6 delivered after the restart", |a| acked(a) >= 6)
        .await;

    let events = feed(&http, &admin).await;
    let created: Vec<&Value> =
        events.iter().filter(|e| e["type"] == "identity-sidecar.organization.created").collect();
    assert_eq!(
        created.iter().map(|e| e["subject"].as_str().unwrap()).collect::<Vec<_>>(),
        ["org-1", "org-2", "org-3", "org-4", "org-5", "org-6"]
    );
    let arrivals = receiver.arrivals();
    assert_delivered_in_order_at_least_once(&arrivals, &events);
    let in_flight = &created[3]["id"];
    let attempts: Vec<&Arrival> =
        arrivals.iter().filter(|a| a.webhook_id == in_flight.as_str().unwrap()).collect();
    assert!(attempts.len() >= 2, "the event in flight at the kill is sent again: {arrivals:?}");
    assert!(!attempts[0].acked && attempts.last().unwrap().acked);
    assert_eq!(receiver.max_in_flight(), 1, "never two requests at once");
    wait_caught_up(&http, &admin, HOOK).await;
    drop(second);
    drop(database);
}

// --- 2. Two replicas, one database, one webhook ---------------------------------------------

/// A replica on `database` delivering to `receiver`, with attempts of at most 10 s: a replica
/// that vanished without giving its lease up would hold delivery for 15 s.
async fn replica(kc: &FakeKeycloak, database: &TestDatabase, receiver: &Receiver, secret: &str) -> TestApp {
    let mut env = base_env(kc);
    with_admin_token(&mut env);
    set(&mut env, "SIDECAR__DATABASE__URL", database.url.clone());
    set(&mut env, "SIDECAR__EVENTS__POLL_INTERVAL_MS", "20");
    set(&mut env, "SIDECAR__EVENTS__WEBHOOK_TIMEOUT_SECS", "10");
    set(&mut env, "SIDECAR__EVENTS__RETRY_BASE_MS", "50");
    set(
        &mut env,
        "SIDECAR__EVENTS__WEBHOOKS",
        json!([{"name": HOOK, "url": receiver.url(), "secret_file": secret}]).to_string(),
    );
    TestApp::spawn_with(env).await
}

/// `count` changes on the replica at `admin`: organizations `<prefix>-<i>` created, every
/// other one renamed.
async fn changes(admin: String, prefix: &'static str, count: usize) {
    let http = reqwest::Client::new();
    for i in 0..count {
        let key = format!("{prefix}-{i}");
        create_org(&http, &admin, &key).await;
        if i % 2 == 0 {
            rename_org(&http, &admin, &key).await;
        }
    }
}

async fn two_replicas_deliver_every_event_once_in_order_never_concurrently() {
    let kc = FakeKeycloak::start().await;
    let receiver = Receiver::start().await;
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(&dir);

    // Replica A alone first: it takes the lease and, renewing it every poll, keeps it while
    // it runs.
    let a = replica(&kc, &database, &receiver, &secret).await;
    let a_admin = a.admin_url("");
    wait_target_created(&a.http, &a_admin, HOOK).await;
    create_org(&a.http, &a_admin, "first").await;
    receiver.wait_for(Duration::from_secs(10), "the first event", |a| acked(a) == 1).await;
    let b = replica(&kc, &database, &receiver, &secret).await;
    let b_admin = b.admin_url("");

    // A receiver slower than the writers, so a backlog builds up and stays while A stops.
    receiver.answer(Answer::Slowly(Duration::from_millis(100)));
    tokio::join!(changes(a_admin.clone(), "a", 10), changes(b_admin.clone(), "b", 10));
    let b_writes = tokio::spawn(changes(b_admin.clone(), "late", 20));

    // A stops gracefully while events are still coming: it must give the lease up, so B takes
    // over at once rather than after a dead replica's 15 s.
    a.shutdown().await.unwrap();
    let stopped = tokio::time::Instant::now();
    let acked_by_a = acked(&receiver.arrivals());
    receiver
        .wait_for(Duration::from_secs(8), "delivery resumes on B soon after A stopped", |arrivals| {
            acked(arrivals) > acked_by_a
        })
        .await;
    let resumed = stopped.elapsed();
    b_writes.await.unwrap();

    let http = reqwest::Client::new();
    let total = feed(&http, &b_admin).await.len();
    assert_eq!(total, 1 + 15 + 15 + 30, "every change is one event");
    receiver.answer(Answer::Ack);
    receiver
        .wait_for(Duration::from_secs(60), "every event delivered", |arrivals| {
            let mut ids: Vec<&str> =
                arrivals.iter().filter(|a| a.acked).map(|a| a.webhook_id.as_str()).collect();
            ids.dedup();
            ids.len() == total
        })
        .await;
    let events = feed(&http, &b_admin).await;
    assert_delivered_in_order_at_least_once(&receiver.arrivals(), &events);
    assert_eq!(receiver.max_in_flight(), 1, "never two requests at the same time");
    let t = wait_caught_up(&http, &b_admin, HOOK).await;
    assert_eq!(t["failures"], 0, "{t}");
    assert!(resumed < Duration::from_secs(8), "resumed after {resumed:?}");
    drop(b);
}

// --- 3. The Redis stream -------------------------------------------------------------------

/// A stream key of this test's own on the local Redis, deleted when dropped.
struct StreamKey {
    key: String,
}

const LOCAL_REDIS: &str = "redis://127.0.0.1:6379";

impl StreamKey {
    fn new() -> StreamKey {
        StreamKey { key: format!("test:events:{}", uuid::Uuid::new_v4().simple()) }
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(LOCAL_REDIS)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("local Redis")
    }

    /// Every entry: its id and its fields.
    async fn entries(&self) -> Vec<(String, Vec<(String, String)>)> {
        let mut conn = self.conn().await;
        let reply: Vec<(String, Vec<String>)> =
            redis::cmd("XRANGE").arg(&self.key).arg("-").arg("+").query_async(&mut conn).await.unwrap();
        reply
            .into_iter()
            .map(|(id, flat)| (id, flat.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect()))
            .collect()
    }
}

impl Drop for StreamKey {
    fn drop(&mut self) {
        let key = self.key.clone();
        // Drop may run inside the test's runtime (or while it unwinds): a thread of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(mut conn) = redis::Client::open(LOCAL_REDIS).and_then(|c| c.get_connection()) {
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&key).query(&mut conn);
            }
        })
        .join();
    }
}

/// Waits until the stream target has delivered up to the head.
async fn wait_stream_caught_up(app: &TestApp) {
    let admin = app.admin_url("");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = call(&app.http, Method::GET, format!("{admin}/admin/v1/events/webhooks"), None).await;
        let t =
            body["items"].as_array().unwrap().iter().find(|t| t["name"] == "redis:stream").cloned().unwrap();
        if t["state"] == "active" && t["delivered"] == body["head"] {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the stream did not catch up: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An app on `database_url` appending every event to `stream`, capped near `max_len`.
async fn stream_app(kc: &FakeKeycloak, database_url: &str, stream: &StreamKey, max_len: usize) -> TestApp {
    let mut env = base_env(kc);
    with_admin_token(&mut env);
    set(&mut env, "SIDECAR__DATABASE__URL", database_url);
    set(&mut env, "SIDECAR__CACHE__REDIS_URL", LOCAL_REDIS);
    set(&mut env, "SIDECAR__EVENTS__REDIS_STREAM", stream.key.clone());
    set(&mut env, "SIDECAR__EVENTS__REDIS_STREAM_MAX_LEN", max_len.to_string());
    set(&mut env, "SIDECAR__EVENTS__POLL_INTERVAL_MS", "20");
    TestApp::spawn_with(env).await
}

async fn the_redis_stream_gets_every_event_by_sequence_capped_and_without_repeats_after_restart(db: Db) {
    let stream = StreamKey::new();
    let max_len = 10;
    let kc = FakeKeycloak::start().await;
    // Outlives both apps: the second starts on the first one's database.
    let database = db.fresh().await;
    let app = stream_app(&kc, &database.url, &stream, max_len).await;
    let admin = app.admin_url("");
    let http = &app.http;
    wait_target_created(http, &admin, "redis:stream").await;

    // Few events: nothing trimmed yet, so the stream is the feed, one entry per event.
    for i in 0..5 {
        create_org(http, &admin, &format!("org-{i}")).await;
    }
    wait_stream_caught_up(&app).await;
    let events = feed(http, &admin).await;
    assert_eq!(events.len(), 5);
    let entries = stream.entries().await;
    let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
    let want: Vec<String> = events.iter().map(|e| format!("{}-0", sequence(e))).collect();
    assert_eq!(ids, want, "entry id <sequence>-0, in order");
    for ((_, fields), event) in entries.iter().zip(&events) {
        let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["type", "subject", "event"]);
        assert_eq!(fields[0].1, event["type"].as_str().unwrap());
        assert_eq!(fields[1].1, event["subject"].as_str().unwrap());
        let parsed: Value = serde_json::from_str(&fields[2].1).expect("the event field is JSON");
        assert_eq!(&parsed, event, "the entry holds the feed's event");
    }

    // Many events: `MAXLEN ~` trims whole nodes (up to 100 entries each by Redis's default),
    // so the length stays near the cap, far below what was appended, and the entries left are
    // the newest ones, still in order.
    for i in 5..260 {
        create_org(http, &admin, &format!("org-{i}")).await;
    }
    wait_stream_caught_up(&app).await;
    let events = feed(http, &admin).await;
    assert_eq!(events.len(), 260);
    let entries = stream.entries().await;
    assert!(
        entries.len() >= max_len && entries.len() <= max_len + 100,
        "capped near {max_len}: {} entries",
        entries.len()
    );
    let tail: Vec<String> =
        events[events.len() - entries.len()..].iter().map(|e| format!("{}-0", sequence(e))).collect();
    assert_eq!(
        entries.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        tail,
        "the newest events, in order"
    );

    // A restart on the same database appends nothing twice. To cover the process that died
    // between its XADD and recording the acknowledgement, the position is moved back five
    // events while no sidecar runs: the restarted one appends those five again, Redis refuses
    // ids not above its top entry, and that counts as delivered.
    app.shutdown().await.unwrap();
    let back_to = sequence(&events[events.len() - 6]);
    move_position(&database.url, "redis:stream", back_to).await;
    let again = stream_app(&kc, &database.url, &stream, max_len).await;
    wait_stream_caught_up(&again).await;
    create_org(&again.http, &again.admin_url(""), "after-restart").await;
    wait_stream_caught_up(&again).await;
    let events = feed(&again.http, &again.admin_url("")).await;
    let entries = stream.entries().await;
    let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "no entry twice");
    let tail: Vec<String> =
        events[events.len() - ids.len()..].iter().map(|e| format!("{}-0", sequence(e))).collect();
    assert_eq!(ids, tail, "the newest events, in order, the one after the restart last");
    drop(again);
    drop(database);
}

/// Sets a target's delivery position straight in the database (no sidecar is running).
async fn move_position(database_url: &str, target: &str, to: i64) {
    let sql = "UPDATE event_deliveries SET delivered = $1 WHERE target = $2";
    if database_url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::query(sql).bind(to).bind(target).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        sqlx::query(sql).bind(to).bind(target).execute(&mut c).await.unwrap();
    }
}

// --- 4. A failed change writes no event ----------------------------------------------------

async fn a_change_whose_transaction_fails_writes_no_event_and_the_sequence_goes_on(db: Db) {
    let f = Fixture::start(db).await;
    let admin = f.app.admin_url("");
    let http = &f.app.http;
    create_org(http, &admin, "acme").await;
    let contract = json!({"key": "one-seat", "organization": "acme", "name": "One seat",
                          "membership_type": "code", "max_learners": 1});
    let (status, body) =
        call(http, Method::POST, format!("{admin}/admin/v1/contracts"), Some(contract.clone())).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        call(http, Method::POST, format!("{admin}/admin/v1/contracts/one-seat/codes"), Some(json!({}))).await;
    assert_eq!(status, 201, "{body}");
    let code = body["items"][0]["code"].as_str().unwrap().to_owned();
    let redeem = |sub: &str| {
        let token = f.kc.token().sub(sub).sign();
        f.app
            .http
            .post(f.app.url(&format!("/_sidecar/enrollment-codes/{code}/redeem")))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(redeem("ann").await.unwrap().status(), 201);
    let before = feed(http, &admin).await;
    let head = sequence(before.last().unwrap());

    // Three changes that fail inside their transactions.
    let (status, body) =
        call(http, Method::POST, format!("{admin}/admin/v1/contracts"), Some(contract)).await;
    assert_eq!(status, 409, "a duplicate contract key: {body}");
    let (status, body) =
        call(http, Method::DELETE, format!("{admin}/admin/v1/organizations/acme"), None).await;
    assert_eq!(status, 409, "an organization with contracts: {body}");
    assert_eq!(redeem("bob").await.unwrap().status(), 409, "a full contract");

    assert_eq!(feed(http, &admin).await, before, "no event for a change that did not happen");
    create_org(http, &admin, "next").await;
    let after = feed(http, &admin).await;
    assert_eq!(after.len(), before.len() + 1);
    let next = after.last().unwrap();
    assert_eq!(next["subject"], "next");
    assert_eq!(sequence(next), head + 1, "the sequence goes on with no hole where the failures were");
    assert!(after.iter().all(|e| e["data"]["sub"] != "bob"), "no trace of the refused redemption");
}

on_both_databases!(
    a_sidecar_killed_while_a_webhook_request_is_open_resends_that_event_after_restart,
    the_redis_stream_gets_every_event_by_sequence_capped_and_without_repeats_after_restart,
    a_change_whose_transaction_fails_writes_no_event_and_the_sequence_goes_on,
);

mod on_postgres_only {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_deliver_every_event_once_in_order_never_concurrently() {
        super::two_replicas_deliver_every_event_once_in_order_never_concurrently().await;
    }
}
