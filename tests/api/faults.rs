//! Issue "Hardening": faults and races *under load*. The single-request versions live in
//! `token_gate.rs` (Keycloak down), `b2b.rs` (store down), `proxy.rs` (502/504) and
//! `redis.rs`; here several client tasks keep the sidecar busy while the fault comes, flaps
//! and goes, and every answer is checked.
//!
//! Every loop is bounded twice, by a count and by a deadline, every request by a timeout, and
//! everything talks to loopback only. Each test finishes in a few seconds.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use identity_sidecar::store::{
    MembershipSource, MembershipType, NewContract, NewOrganization, Organization, Store, contracts,
    memberships, organizations, users,
};
use serde_json::{Value, json};
use sqlx::Connection as _;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::helpers::TestDatabase;
use crate::helpers::records;
use crate::helpers::{
    FakeKeycloak, HangingServer, MEMORY_TURN, Mode, ResettingServer, TestApp, base_env, closed_port, metric,
    rss, set,
};

/// Keycloak's "all my organizations" scope: the claim is complete, absence means removal.
const FULL: &str = "openid email profile organization:*";
const SHARED_REDIS: &str = "redis://127.0.0.1:6379";
/// No request in these tests may take longer than this, whatever happens.
const REQUEST_LIMIT: Duration = Duration::from_secs(15);

fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers().get(name).map(|v| v.to_str().unwrap_or("<not ASCII>").to_owned()).unwrap_or_default()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

/// A forward-auth call as APISIX makes it, bounded by [`REQUEST_LIMIT`].
async fn forward_auth(app: &TestApp, token: &str) -> reqwest::Response {
    let call = app.forward_auth("GET", "/").bearer_auth(token).send();
    tokio::time::timeout(REQUEST_LIMIT, call).await.expect("answered in time").expect("sidecar answers")
}

/// An active, unbounded contract of `organization`, with `max_learners` seats.
fn contract(
    key: &str,
    organization: &str,
    membership_type: MembershipType,
    seats: Option<i64>,
) -> NewContract {
    NewContract { max_learners: seats, ..records::contract(key, organization, membership_type) }
}

/// An organization linked to Keycloak by id and alias (`alias` = key).
async fn linked_org(store: &Store, key: &str) -> Organization {
    let new = NewOrganization {
        key: key.into(),
        name: format!("{key} Inc"),
        description: String::new(),
        keycloak_id: Some(Uuid::new_v4()),
        keycloak_alias: Some(key.into()),
        email_domains: Vec::new(),
    };
    organizations::insert(&mut store.conn().await.unwrap(), &new).await.unwrap()
}

async fn add_contract(store: &Store, new: NewContract) {
    contracts::insert(&mut store.conn().await.unwrap(), &new).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 1. Keycloak's JWKS down, hanging and flapping while requests keep coming
// ---------------------------------------------------------------------------------------------

/// `oidc.http_timeout_secs` in the flapping test.
const KEYCLOAK_TIMEOUT: Duration = Duration::from_secs(1);
/// What a loaded 2-core CI machine may add to a request on top of one Keycloak timeout.
const LATENCY_MARGIN: Duration = Duration::from_millis(750);

struct KeyOutcome {
    unknown_kid: bool,
    status: u16,
    took: Duration,
}

/// Eight clients send fresh tokens for ~3 s — five signed by the published key, three naming
/// kids Keycloak never published — while a controller switches Keycloak's
/// discovery and JWKS between hanging, failing and normal every 200 ms. Refetches are not
/// throttled (`jwks_min_refresh_secs = 0`) and the background refresh runs every second, so
/// the flapping reaches every fetch path as often as it can. (This found requests naming an
/// unknown kid each fetching again behind a hung fetch, one after the other: 2 s and more.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_keys_keep_passing_and_unknown_kids_fail_within_the_timeout_while_keycloak_flaps() {
    let kc = FakeKeycloak::start().await;
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__OIDC__HTTP_TIMEOUT_SECS", KEYCLOAK_TIMEOUT.as_secs().to_string());
    set(&mut env, "SIDECAR__OIDC__JWKS_MIN_REFRESH_SECS", "0");
    set(&mut env, "SIDECAR__OIDC__JWKS_REFRESH_SECS", "1");
    let app = Arc::new(TestApp::spawn_with(env).await);
    let fetches_before = kc.jwks_fetches();

    let deadline = Instant::now() + Duration::from_secs(3);
    let controller = tokio::spawn({
        let kc = kc.clone();
        async move {
            let mut flips = 0;
            // Each mode five times in 3 s, in an order where a fetch that hangs sometimes ends
            // (1 s later) in another hang: the worst moment for whoever queued behind it to
            // start a fetch of its own.
            use Mode::{Fail as F, Hang as H, Normal as N};
            let pattern = [H, F, N, H, H, F, N, F, H, N, N, H, F, H, N];
            for mode in pattern.into_iter().cycle().take(100) {
                if Instant::now() >= deadline {
                    break;
                }
                kc.set_mode(mode);
                flips += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            kc.set_mode(Mode::Normal);
            flips
        }
    });
    let mut clients = JoinSet::new();
    for client in 0..8 {
        let (app, kc) = (app.clone(), kc.clone());
        clients.spawn(async move {
            // One login per client (its sid stays), so after the first request only the
            // token path runs: every token is new (fresh `jti`), so each is validated.
            let (sub, sid) = (format!("client-{client}"), Uuid::new_v4().to_string());
            let mut outcomes = Vec::new();
            // Five clients send known-key tokens, three send unknown kids.
            let unknown_kid = client >= 5;
            for _ in 0..1000 {
                if Instant::now() >= deadline {
                    break;
                }
                let token = kc.token().sub(&sub).sid(&sid);
                let token = if unknown_kid { token.kid(&unique("never-published")) } else { token };
                let token = token.sign();
                let started = Instant::now();
                let status = forward_auth(&app, &token).await.status().as_u16();
                outcomes.push(KeyOutcome { unknown_kid, status, took: started.elapsed() });
            }
            outcomes
        });
    }
    let outcomes: Vec<KeyOutcome> = clients.join_all().await.into_iter().flatten().collect();
    let flips = controller.await.unwrap();

    let known: Vec<&KeyOutcome> = outcomes.iter().filter(|o| !o.unknown_kid).collect();
    let unknown: Vec<&KeyOutcome> = outcomes.iter().filter(|o| o.unknown_kid).collect();
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
    println!(
        "{} requests ({} unknown kids), {flips} mode flips, {} JWKS fetches, slowest {slowest:?}",
        outcomes.len(),
        unknown.len(),
        kc.jwks_fetches() - fetches_before
    );
    assert!(flips >= 10, "the controller flipped Keycloak {flips} times");
    assert!(known.len() >= 100 && unknown.len() >= 6, "{} known, {} unknown", known.len(), unknown.len());
    let failed: Vec<u16> = known.iter().filter(|o| o.status != 200).map(|o| o.status).collect();
    assert!(failed.is_empty(), "known-key requests not answered 200: {failed:?}");
    let wrong: Vec<u16> = unknown.iter().filter(|o| o.status != 401).map(|o| o.status).collect();
    assert!(wrong.is_empty(), "unknown-kid requests not answered 401: {wrong:?}");
    let limit = KEYCLOAK_TIMEOUT + LATENCY_MARGIN;
    let slow: Vec<Duration> = outcomes.iter().filter(|o| o.took > limit).map(|o| o.took).collect();
    assert!(slow.is_empty(), "{} requests took longer than {limit:?}: {slow:?}", slow.len());

    // The flapping really reached Keycloak, in every mode.
    let metrics = app.metrics().await;
    assert!(metric(&metrics, r#"identity_sidecar_jwks_fetches_total{result="error"}"#) >= 2.0, "{metrics}");
    assert!(metric(&metrics, r#"identity_sidecar_jwks_fetches_total{result="ok"}"#) >= 2.0, "{metrics}");
    // And afterwards Keycloak is simply back.
    assert_eq!(app.auth_status(&kc.token().sign()).await, 200);
}

// ---------------------------------------------------------------------------------------------
// 2. PostgreSQL unreachable in the middle of the load
// ---------------------------------------------------------------------------------------------

/// Where the store outage stands; a request is judged by the phases it was sent and answered in.
const HEALTHY: u8 = 0;
const CLOSING: u8 = 1;
const DOWN: u8 = 2;
const REOPENING: u8 = 3;
const BACK: u8 = 4;
/// The clients stop sending.
const STOPPED: u8 = 5;

#[derive(Debug)]
struct LoginOutcome {
    /// A new login (fresh sid) rather than a request of a cached one.
    new_login: bool,
    sent: u8,
    answered: u8,
    status: u16,
    identity_status: String,
    retry_after: String,
    organizations: String,
    took: Duration,
}

/// How many requests of each kind were sent and answered within one phase of
/// [`store_outage_under_load`].
#[derive(Default)]
struct PhaseCounts {
    new_healthy: AtomicUsize,
    new_down: AtomicUsize,
    cached_down: AtomicUsize,
}

/// A snapshot of [`PhaseCounts`].
struct Seen {
    new_healthy: usize,
    new_down: usize,
    cached_down: usize,
}

impl PhaseCounts {
    fn count(&self, new_login: bool, sent: u8, answered: u8) {
        let counter = match (new_login, sent, answered) {
            (true, HEALTHY, HEALTHY) => &self.new_healthy,
            (true, DOWN, DOWN) => &self.new_down,
            (false, DOWN, DOWN) => &self.cached_down,
            _ => return,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }

    /// Waits until `enough` holds, for at most 20 s (then the assertions say what is missing).
    async fn wait(&self, enough: impl Fn(&Seen) -> bool) {
        let give_up = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = Seen {
                new_healthy: self.new_healthy.load(Ordering::SeqCst),
                new_down: self.new_down.load(Ordering::SeqCst),
                cached_down: self.cached_down.load(Ordering::SeqCst),
            };
            if enough(&seen) || Instant::now() >= give_up {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every row a login can write, as (kind, identity): what must survive an outage.
async fn rows(url: &str) -> BTreeSet<String> {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let memberships: Vec<(String, i64)> =
        sqlx::query_as("SELECT sub, organization_id FROM memberships").fetch_all(&mut conn).await.unwrap();
    let attachments: Vec<(String, i64)> =
        sqlx::query_as("SELECT sub, contract_id FROM attachments").fetch_all(&mut conn).await.unwrap();
    let audit: Vec<(i64,)> =
        sqlx::query_as("SELECT id FROM audit_events").fetch_all(&mut conn).await.unwrap();
    let users: Vec<(String,)> = sqlx::query_as("SELECT sub FROM users").fetch_all(&mut conn).await.unwrap();
    let mut all = BTreeSet::new();
    all.extend(memberships.into_iter().map(|(s, o)| format!("membership {s} {o}")));
    all.extend(attachments.into_iter().map(|(s, c)| format!("attachment {s} {c}")));
    all.extend(audit.into_iter().map(|(id,)| format!("audit {id}")));
    all.extend(users.into_iter().map(|(s,)| format!("user {s}")));
    all
}

/// Contracts whose `seats_used` differs from their number of attachments: `(key, seats_used,
/// attachments)`. Empty when every attach and detach was all-or-nothing.
async fn seat_mismatches(url: &str) -> Vec<(String, i64, i64)> {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_as(
        "SELECT c.key, c.seats_used, (SELECT count(*) FROM attachments a WHERE a.contract_id = c.id) AS n \
         FROM contracts c WHERE c.seats_used <> (SELECT count(*) FROM attachments a WHERE a.contract_id = c.id)",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// Logins keep coming — new ones (fresh sids, some for known users, some for new users) and
/// requests of already reconciled ones — while the app's PostgreSQL database refuses
/// connections and has its open ones terminated (0.8 s into the load, for at least 1.5 s and
/// until enough requests fell into the outage), then comes back. Checked here: cached logins are 200 `authenticated` throughout, every answer comes
/// within 3 s, the next new login after recovery reconciles, no row written before the fault
/// is lost and no seat counter drifts. The callers judge the new logins by `on_store_error`.
async fn store_outage_under_load(on_store_error: &str) -> Vec<LoginOutcome> {
    let kc = FakeKeycloak::start().await;
    let db = TestDatabase::create().await;
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__DATABASE__URL", db.url.clone());
    set(&mut env, "SIDECAR__RECONCILE__ON_STORE_ERROR", on_store_error);
    let app = Arc::new(TestApp::spawn_with(env).await);
    let store = app.store().await;
    linked_org(&store, "alpha").await;
    linked_org(&store, "india").await;
    add_contract(&store, contract("a-auto", "alpha", MembershipType::Auto, None)).await;
    add_contract(&store, contract("i-managed", "india", MembershipType::Managed, Some(1000))).await;
    store.close().await;

    // Reconciled before the load starts: these tokens are answered from the login cache.
    let mut cached = Vec::new();
    for i in 0..8 {
        let token = kc.token().sub(&format!("cached-{i}")).scope(FULL).organization(json!(["alpha"])).sign();
        let res = forward_auth(&app, &token).await;
        assert_eq!((res.status().as_u16(), header(&res, "x-identity-status")), (200, "authenticated".into()));
        cached.push(token);
    }
    let cached = Arc::new(cached);

    let phase = Arc::new(AtomicU8::new(HEALTHY));
    // Answers seen so far in each phase, by kind: the phases last until enough requests fell
    // into them (never less than their nominal time), so a slow machine gives the checks
    // below as many requests per phase as a fast one rather than fewer.
    let seen = Arc::new(PhaseCounts::default());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut clients = JoinSet::new();
    for client in 0..6 {
        let (app, kc, phase, cached) = (app.clone(), kc.clone(), phase.clone(), cached.clone());
        let seen = seen.clone();
        clients.spawn(async move {
            let mut outcomes = Vec::new();
            for n in 0..2000 {
                if Instant::now() >= deadline || phase.load(Ordering::SeqCst) == STOPPED {
                    break;
                }
                // Clients 0–3 log in anew each time; 4–5 replay cached logins.
                let new_login = client < 4;
                let token = if new_login {
                    // Known users (a few subs per client, revisited) and brand-new ones.
                    let sub =
                        if n % 3 == 0 { unique("newcomer") } else { format!("user-{client}-{}", n % 4) };
                    let claim = if n % 2 == 0 { json!(["alpha"]) } else { json!(["alpha", "india"]) };
                    kc.token().sub(&sub).scope(FULL).organization(claim).sign()
                } else {
                    cached[n % cached.len()].clone()
                };
                let sent = phase.load(Ordering::SeqCst);
                let started = Instant::now();
                let res = forward_auth(&app, &token).await;
                let answered = phase.load(Ordering::SeqCst);
                seen.count(new_login, sent, answered);
                outcomes.push(LoginOutcome {
                    new_login,
                    sent,
                    answered,
                    status: res.status().as_u16(),
                    identity_status: header(&res, "x-identity-status"),
                    retry_after: header(&res, "retry-after"),
                    organizations: header(&res, "x-identity-organizations"),
                    took: started.elapsed(),
                });
            }
            outcomes
        });
    }

    tokio::time::sleep(Duration::from_millis(800)).await;
    seen.wait(|s| s.new_healthy >= 5).await;
    let before = rows(&db.url).await;
    phase.store(CLOSING, Ordering::SeqCst);
    db.close().await;
    phase.store(DOWN, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    seen.wait(|s| s.new_down >= 10 && s.cached_down >= 10).await;
    phase.store(REOPENING, Ordering::SeqCst);
    db.reopen().await;
    phase.store(BACK, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    phase.store(STOPPED, Ordering::SeqCst);
    let outcomes: Vec<LoginOutcome> = clients.join_all().await.into_iter().flatten().collect();

    let count = |p: &dyn Fn(&LoginOutcome) -> bool| outcomes.iter().filter(|o| p(o)).count();
    println!(
        "{on_store_error}: {} requests; new logins healthy/down/back: {}/{}/{}; cached during the outage: {}; slowest {:?}",
        outcomes.len(),
        count(&|o| o.new_login && o.answered == HEALTHY),
        count(&|o| o.new_login && o.sent == DOWN && o.answered == DOWN),
        count(&|o| o.new_login && o.sent >= BACK),
        count(&|o| !o.new_login && o.sent == DOWN),
        outcomes.iter().map(|o| o.took).max().unwrap_or_default(),
    );
    assert!(count(&|o| o.new_login && o.answered == HEALTHY) >= 5, "too few logins before the outage");
    assert!(count(&|o| o.new_login && o.sent == DOWN && o.answered == DOWN) >= 10, "too few during it");
    assert!(count(&|o| !o.new_login && o.sent == DOWN && o.answered == DOWN) >= 10, "too few cached");

    for o in outcomes.iter().filter(|o| !o.new_login) {
        assert_eq!(
            (o.status, o.identity_status.as_str(), o.organizations.as_str()),
            (200, "authenticated", "alpha"),
            "{o:?}"
        );
    }
    // A degraded or refused answer comes promptly, not after a pool timeout.
    let slow: Vec<&LoginOutcome> = outcomes.iter().filter(|o| o.took > Duration::from_secs(3)).collect();
    assert!(slow.is_empty(), "slow answers: {slow:?}");

    // After recovery the next new login reconciles, for a known user and for a new one.
    for sub in ["user-0-1".to_owned(), unique("after")] {
        let token = kc.token().sub(&sub).scope(FULL).organization(json!(["alpha", "india"])).sign();
        let res = forward_auth(&app, &token).await;
        assert_eq!(res.status(), 200, "{sub}");
        assert_eq!(header(&res, "x-identity-status"), "authenticated", "{sub}");
        assert_eq!(header(&res, "x-identity-organizations"), "alpha,india", "{sub}");
        assert_eq!(header(&res, "x-identity-contracts"), "a-auto,i-managed", "{sub}");
    }
    // Nothing written before the fault was lost, and no seat counter drifted from its rows.
    let after = rows(&db.url).await;
    let lost: Vec<&String> = before.difference(&after).collect();
    assert!(lost.is_empty(), "rows lost in the outage: {lost:?}");
    assert!(after.len() > before.len(), "logins after the outage wrote nothing");
    assert_eq!(seat_mismatches(&db.url).await, []);
    outcomes
}

/// Whether both ends of a request fell in one of the healthy phases (before or after).
fn healthy(o: &LoginOutcome) -> bool {
    (o.sent == HEALTHY && o.answered == HEALTHY) || o.sent >= BACK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_degrade_an_unreachable_database_mid_load_gives_stale_answers_and_never_a_5xx() {
    let outcomes = store_outage_under_load("degrade").await;
    for o in outcomes.iter().filter(|o| o.new_login) {
        assert_eq!(o.status, 200, "{o:?}");
        let allowed: &[&str] = if healthy(o) {
            &["authenticated"]
        } else if o.sent == DOWN && o.answered == DOWN {
            &["stale"]
        } else {
            &["authenticated", "stale"]
        };
        assert!(allowed.contains(&o.identity_status.as_str()), "{o:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_reject_an_unreachable_database_mid_load_refuses_new_logins_with_retry_after() {
    let outcomes = store_outage_under_load("reject").await;
    for o in outcomes.iter().filter(|o| o.new_login) {
        let refused = o.status == 503 && o.retry_after.parse::<u64>().is_ok_and(|s| s > 0);
        let served = o.status == 200 && o.identity_status == "authenticated";
        if healthy(o) {
            assert!(served, "{o:?}");
        } else if o.sent == DOWN && o.answered == DOWN {
            assert!(refused, "{o:?}");
        } else {
            assert!(served || refused, "{o:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. An upstream that refuses, resets or hangs, many times over
// ---------------------------------------------------------------------------------------------

/// The allowed growth of the process's resident memory over 2,000 failed requests, after a
/// warm-up round of as many. Measured: under 2 MiB. A pending upstream request kept per
/// failure (its connection, buffers and task) would take tens of MiB.
const FAILURE_MEMORY_BOUND: u64 = 16 * 1024 * 1024;

/// Sends `n` anonymous requests through `app`, `concurrency` at a time, on connections that
/// are not kept alive (so none of the sidecar's connection tasks outlives its request), and
/// returns each status.
async fn hammer(client: &reqwest::Client, app: &TestApp, n: usize, concurrency: usize) -> Vec<u16> {
    futures_util::stream::iter(0..n)
        .map(|i| {
            let call = client.get(app.url(&format!("/failing/{i}"))).send();
            async move {
                let res = tokio::time::timeout(REQUEST_LIMIT, call).await.expect("answered in time");
                res.expect("the sidecar answers").status().as_u16()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// The number of tasks alive on this test's runtime (the apps, their connections, the fakes)
/// once it has not changed for 300 ms, or after 5 s.
async fn settled_tasks() -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = metrics.num_alive_tasks();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let alive = metrics.num_alive_tasks();
        if alive != last {
            (last, since) = (alive, Instant::now());
        } else if since.elapsed() >= Duration::from_millis(300) {
            break;
        }
    }
    last
}

/// 2,000 proxied requests to upstreams that fail in every way TCP allows — nothing listening
/// (900), a RST at once, after a few request bytes or after a line that is not HTTP (900),
/// and accepting but never answering (200) — are answered 502, 502 and 504, each as a problem,
/// and leave no task or memory behind: after a warm-up round of the same 2,000, the runtime
/// has no more tasks than before and the process's RSS grew by less than 16 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_resetting_and_hanging_upstreams_under_load_get_502_and_504_and_leak_nothing() {
    let kc = FakeKeycloak::start().await;
    let resetting = ResettingServer::start().await;
    let hanging = HangingServer::start().await;
    let app_for = async |url: String| {
        let mut env = base_env(&kc);
        set(&mut env, "SIDECAR__UPSTREAM__URL", url);
        set(&mut env, "SIDECAR__UPSTREAM__TIMEOUT_SECS", "1");
        TestApp::spawn_with(env).await
    };
    let refused = app_for(format!("http://127.0.0.1:{}", closed_port())).await;
    let reset = app_for(resetting.url()).await;
    let hung = app_for(hanging.url()).await;
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().unwrap();

    // Warm-up: one full round first, so pools, allocator arenas and lazily built state have
    // reached their working size before anything is measured.
    let round = async || {
        tokio::join!(
            hammer(&client, &refused, 900, 32),
            hammer(&client, &reset, 900, 32),
            hammer(&client, &hung, 200, 100),
        )
    };
    let _turn = MEMORY_TURN.lock().await;
    round().await;
    let tasks_before = settled_tasks().await;
    let rss_before = rss();
    // Counted from here: a warm-up request may time out on a loaded machine (its answer is
    // not checked), but every measured one must be answered 502 and counted as a failure.
    let failures_before = upstream_failures(&reset).await;

    let started = Instant::now();
    let (a, b, c) = round().await;
    let took = started.elapsed();
    let tasks_after = settled_tasks().await;
    let rss_after = rss();
    println!(
        "2000 failing requests in {took:?}; tasks {tasks_before} → {tasks_after}; \
         RSS {} → {} MiB; {} resets, {} hanging connections accepted",
        rss_before >> 20,
        rss_after >> 20,
        resetting.accepted(),
        hanging.accepted()
    );
    for (what, statuses, want) in [("refused", &a, 502), ("reset", &b, 502), ("hanging", &c, 504)] {
        let wrong: Vec<&u16> = statuses.iter().filter(|s| **s != want).collect();
        assert!(wrong.is_empty(), "{what}: answers other than {want}: {wrong:?}");
    }
    assert!(resetting.accepted() >= 1800, "the resetting upstream saw {} connections", resetting.accepted());
    assert!(hanging.accepted() >= 400, "the hanging upstream saw {} connections", hanging.accepted());
    assert!(tasks_after <= tasks_before, "tasks left behind: {tasks_before} before, {tasks_after} after");
    let grown = rss_after.saturating_sub(rss_before);
    assert!(grown < FAILURE_MEMORY_BOUND, "RSS grew by {} MiB", grown >> 20);

    // Each app still answers as it should (its serve loop and pool survived), with a problem.
    for (app, want) in [(&refused, 502), (&reset, 502), (&hung, 504)] {
        let res = client.get(app.url("/after")).send().await.unwrap();
        assert_eq!(res.status(), want);
        assert_eq!(header(&res, "content-type"), "application/problem+json");
    }
    // The measured 900 and the one above, each answered 502, each counted as an upstream failure.
    let failures = upstream_failures(&reset).await - failures_before;
    assert_eq!(failures, 901.0, "{}", reset.metrics().await);
}

/// Upstream answers counted as a failure to connect or an error on the connection.
async fn upstream_failures(app: &TestApp) -> f64 {
    let metrics = app.metrics().await;
    metric(&metrics, r#"identity_sidecar_upstream_responses_total{outcome="error"}"#)
        + metric(&metrics, r#"identity_sidecar_upstream_responses_total{outcome="connect_error"}"#)
}

// ---------------------------------------------------------------------------------------------
// 4. Races between two replicas on one PostgreSQL and one Redis
// ---------------------------------------------------------------------------------------------

/// Two app instances on one fresh PostgreSQL database and the shared Redis, with the linked
/// organizations `alpha`, `india` and `romeo` seeded.
struct Replicas {
    a: TestApp,
    b: TestApp,
    kc: FakeKeycloak,
    store: Store,
    romeo: Organization,
    /// Declared last so it drops last: the database outlives the apps' connections.
    db: TestDatabase,
}

impl Replicas {
    async fn start() -> Replicas {
        let kc = FakeKeycloak::start().await;
        let db = TestDatabase::create().await;
        let mut env = base_env(&kc);
        set(&mut env, "SIDECAR__DATABASE__URL", db.url.clone());
        set(&mut env, "SIDECAR__CACHE__REDIS_URL", SHARED_REDIS);
        let a = TestApp::spawn_with(env.clone()).await;
        let b = TestApp::spawn_with(env).await;
        let store = a.store().await;
        linked_org(&store, "alpha").await;
        linked_org(&store, "india").await;
        let romeo = linked_org(&store, "romeo").await;
        Replicas { a, b, kc, store, romeo, db }
    }

    /// Replica A for even `i`, B for odd.
    fn replica(&self, i: usize) -> &TestApp {
        if i.is_multiple_of(2) { &self.a } else { &self.b }
    }

    /// A new login (fresh sid) of `sub` claiming `claim` with the full-membership scope.
    fn token(&self, sub: &str, claim: Value) -> String {
        self.kc.token().sub(sub).sid(&Uuid::new_v4().to_string()).scope(FULL).organization(claim).sign()
    }

    async fn sql<T>(&self, sql: &'static str, sub_or_key: &str) -> Vec<T>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        let mut conn = sqlx::PgConnection::connect(&self.db.url).await.unwrap();
        sqlx::query_as(sql).bind(sub_or_key).fetch_all(&mut conn).await.unwrap()
    }
}

/// docs/contract.md §4 "serialised per user" across replicas: one user logs in 100 times — distinct
/// sessions, alternating replicas, 16 at a time — while an admin membership flagged
/// `keep_until_seen` on an organization the claim does not name must survive every one of
/// those authoritative reconciliations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_logging_in_on_two_replicas_at_once_writes_each_row_once_and_keeps_a_flagged_membership() {
    let r = Replicas::start().await;
    add_contract(&r.store, contract("a-auto", "alpha", MembershipType::Auto, None)).await;
    add_contract(&r.store, contract("a-managed", "alpha", MembershipType::Managed, Some(5))).await;
    add_contract(&r.store, contract("r-auto", "romeo", MembershipType::Auto, None)).await;
    let u = unique("racer");
    let mut conn = r.store.conn().await.unwrap();
    users::ensure(&mut conn, &u).await.unwrap();
    assert!(
        memberships::add(
            &mut conn,
            &u,
            r.romeo.id,
            MembershipSource::Admin,
            memberships::Flags { keep_until_seen: true, manager: false }
        )
        .await
        .unwrap()
    );
    drop(conn);

    let tokens: Vec<String> = (0..100).map(|_| r.token(&u, json!(["alpha"]))).collect();
    let r = &r;
    let answers: Vec<(u16, String, String, String)> = futures_util::stream::iter(tokens.iter().enumerate())
        .map(|(i, token)| async move {
            let res = forward_auth(r.replica(i), token).await;
            let facts = (
                header(&res, "x-identity-status"),
                header(&res, "x-identity-organizations"),
                header(&res, "x-identity-contracts"),
            );
            (res.status().as_u16(), facts.0, facts.1, facts.2)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for answer in &answers {
        let want = (200, "authenticated", "alpha,romeo", "a-auto,a-managed,r-auto");
        assert_eq!((answer.0, answer.1.as_str(), answer.2.as_str(), answer.3.as_str()), want);
    }

    let members: Vec<(String, bool, String)> = r
        .sql(
            "SELECT o.key, m.keep_until_seen, m.source FROM memberships m \
             JOIN organizations o ON o.id = m.organization_id WHERE m.sub = $1 ORDER BY o.key",
            &u,
        )
        .await;
    assert_eq!(
        members,
        [("alpha".into(), false, "claim".into()), ("romeo".into(), true, "admin".into())],
        "one membership per organization; the flagged one kept and still flagged"
    );
    let held: Vec<(String,)> = r
        .sql(
            "SELECT c.key FROM attachments a JOIN contracts c ON c.id = a.contract_id WHERE a.sub = $1 ORDER BY 1",
            &u,
        )
        .await;
    assert_eq!(held, [("a-auto".into(),), ("a-managed".into(),), ("r-auto".into(),)]);
    assert_eq!(seat_mismatches(&r.db.url).await, []);
    let seats: Vec<(String, i64)> =
        r.sql("SELECT key, seats_used FROM contracts WHERE key LIKE $1 ORDER BY key", "%").await;
    assert_eq!(seats, [("a-auto".into(), 1), ("a-managed".into(), 1), ("r-auto".into(), 1)]);
    let trail: Vec<(String, String)> = r
        .sql(
            "SELECT action, coalesce(organization, contract) FROM audit_events WHERE sub = $1 ORDER BY id",
            &u,
        )
        .await;
    assert_eq!(trail.len(), 4, "one membership and three attachments, each written once: {trail:?}");
}

/// docs/contract.md §4 step 4 "two replicas racing for the last seat never overfill a contract": 30 new
/// users log in at once, split across both replicas, on a 10-seat `auto` contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_users_racing_for_ten_seats_on_two_replicas_get_exactly_ten() {
    let r = Replicas::start().await;
    add_contract(&r.store, contract("i-seats", "india", MembershipType::Auto, Some(10))).await;
    let subs: Vec<String> = (0..30).map(|i| unique(&format!("seat-{i}"))).collect();
    let tokens: Vec<String> = subs.iter().map(|s| r.token(s, json!(["india"]))).collect();
    let r = &r;

    let answers = futures_util::future::join_all(tokens.iter().enumerate().map(|(i, token)| async move {
        let res = forward_auth(r.replica(i), token).await;
        (res.status().as_u16(), header(&res, "x-identity-status"), header(&res, "x-identity-contracts"))
    }))
    .await;
    assert!(answers.iter().all(|(s, st, _)| *s == 200 && st == "authenticated"), "{answers:?}");
    let seated = answers.iter().filter(|(_, _, contracts)| contracts == "i-seats").count();
    assert_eq!(seated, 10, "{answers:?}");

    let held: Vec<(i64,)> = r
        .sql(
            "SELECT count(*) FROM attachments a JOIN contracts c ON c.id = a.contract_id WHERE c.key = $1",
            "i-seats",
        )
        .await;
    assert_eq!(held, [(10,)]);
    let seats: Vec<(i64,)> = r.sql("SELECT seats_used FROM contracts WHERE key = $1", "i-seats").await;
    assert_eq!(seats, [(10,)]);
    let members: Vec<(i64,)> = r
        .sql(
            "SELECT count(*) FROM memberships m JOIN organizations o ON o.id = m.organization_id WHERE o.key = $1",
            "india",
        )
        .await;
    assert_eq!(members, [(30,)], "every racer is a member, seated or not");
    let skips = metric(&r.a.metrics().await, "identity_sidecar_seat_limit_skips_total")
        + metric(&r.b.metrics().await, "identity_sidecar_seat_limit_skips_total");
    assert_eq!(skips, 20.0, "each of the 20 without a seat was skipped once");
    // A racer that found the contract full at its seat claim withdrew the `attachment.add` it
    // had written ahead of the claim: the trail holds exactly the ten seats and twenty skips.
    let trail: Vec<(String, i64)> = r
        .sql(
            "SELECT action, count(*) FROM audit_events WHERE contract = $1 GROUP BY action ORDER BY action",
            "i-seats",
        )
        .await;
    assert_eq!(trail, [("attachment.add".into(), 10), ("attachment.skipped_full".into(), 20)]);
}
