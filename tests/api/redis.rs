//! The Redis tier (`cache.redis_url`): logins shared between replicas, the invalidation bus,
//! and what happens when Redis goes away, comes back, or hangs.
//!
//! Every test runs against a real Redis of its own: a `redis-server` the test starts on a free
//! port ([`TestRedis`]) and stops when it ends. Tests must not share one: the global epoch and
//! the invalidation channel belong to everything on a Redis, so an `all` invalidation published
//! by a test running beside another (three tests here publish one) replaces that test's epoch
//! and empties its replicas' memory — a login stored by replica A then misses on replica B,
//! which reconciles (this made `a_login_reconciled_by_one_replica_…` fail in 3 of 12 runs on a
//! busy machine, and could fail every assertion here that counts lookups or generations).
//! Epochs are random tokens, never asserted on.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use identity_sidecar::b2b::{EntitledContract, EntitledOrganization, Facts, HeldContract};
use identity_sidecar::entitlements::Logins;
use identity_sidecar::entitlements::redis::{Invalidation, Lookup, RedisTier, Target};
use identity_sidecar::metrics::Metrics;
use identity_sidecar::store::model::{MembershipType, NewContract, NewOrganization};
use identity_sidecar::store::{contracts, organizations};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::TestDatabase;
use crate::helpers::{FakeKeycloak, HangingServer, TestApp, base_env, closed_port, metric, set};

pub(crate) const QUERIES: &str = "identity_sidecar_store_queries_total";
pub(crate) const SUBSCRIBED: &str = "identity_sidecar_redis_subscribed";
pub(crate) const RECEIVED: &str = r#"identity_sidecar_redis_invalidations_total{direction="received"}"#;
pub(crate) const REDIS_HITS: &str = r#"identity_sidecar_cache_lookups_total{cache="redis",result="hit"}"#;
const REDIS_MISSES: &str = r#"identity_sidecar_cache_lookups_total{cache="redis",result="miss"}"#;
const BAD_SIGNATURE: &str = r#"identity_sidecar_redis_errors_total{op="lookup",kind="bad_signature"}"#;
const UNSIGNED: &str = r#"identity_sidecar_redis_errors_total{op="lookup",kind="unsigned"}"#;
/// Two keys for `cache.redis_key_file`, as `openssl rand -base64 32` and `-hex 32` print them.
const OLD_KEY: &str = "5VP1oqZGYTfBQXz0AhcdEACzVaj1ij+AnH5+V4x3jGc=";
const NEW_KEY: &str = "17742bbee4b94841811f5efdd94256b1dddc40a5d28637778d2abe583df06f77";

pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

/// Status, organizations and contracts a forward-auth call reports for this token.
pub(crate) async fn facts(app: &TestApp, token: &str) -> (u16, String, String) {
    let res = app.forward_auth("GET", "/").bearer_auth(token).send().await.expect("sidecar answers");
    let facts = (
        res.status().as_u16(),
        header(&res, "x-identity-organizations"),
        header(&res, "x-identity-contracts"),
    );
    assert_eq!(header(&res, "x-identity-status"), "authenticated");
    facts
}

/// Waits until `check` holds, polling; panics with `what` after `within`.
pub(crate) async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The store query count once background work (the JWKS persisted after start) has settled.
pub(crate) async fn settled_queries(app: &TestApp) -> f64 {
    let mut last = metric(&app.metrics().await, QUERIES);
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let now = metric(&app.metrics().await, QUERIES);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// The Redis lines of a metrics page, for failure messages.
pub(crate) fn redis_lines(metrics: &str) -> String {
    metrics.lines().filter(|l| l.contains("redis") && !l.starts_with('#')).collect::<Vec<_>>().join("; ")
}

pub(crate) async fn wait_subscribed(app: &TestApp, within: Duration) {
    eventually(within, "the app subscribes to Redis invalidations", || async {
        metric(&app.metrics().await, SUBSCRIBED) == 1.0
    })
    .await;
}

/// An organization claimed as `alias` with one `auto` contract; returns their keys.
pub(crate) async fn seed_org(app: &TestApp, alias: &str) -> (String, String) {
    let store = app.store().await;
    let mut conn = store.conn().await.unwrap();
    let org = unique("org");
    organizations::insert(
        &mut conn,
        &NewOrganization {
            key: org.clone(),
            name: "Acme".into(),
            description: String::new(),
            keycloak_id: None,
            keycloak_alias: Some(alias.into()),
            email_domains: Vec::new(),
        },
    )
    .await
    .unwrap();
    let contract = add_contract(app, &org).await;
    (org, contract)
}

pub(crate) async fn add_contract(app: &TestApp, org: &str) -> String {
    let store = app.store().await;
    let mut conn = store.conn().await.unwrap();
    let key = unique("contract");
    contracts::insert(
        &mut conn,
        &NewContract {
            key: key.clone(),
            organization: org.into(),
            name: "Everyone".into(),
            membership_type: MembershipType::Auto,
            active: true,
            starts_on: Some(time::macros::date!(2020 - 01 - 01)),
            ends_on: Some(time::macros::date!(2099 - 12 - 31)),
            max_learners: None,
            price: None,
        },
    )
    .await
    .unwrap();
    key
}

/// Two replicas on one PostgreSQL database and the test's Redis.
async fn two_replicas(kc: &FakeKeycloak, redis: &TestRedis) -> (TestApp, TestApp, TestDatabase) {
    let db = TestDatabase::create().await;
    let mut env = base_env(kc);
    set(&mut env, "SIDECAR__DATABASE__URL", db.url.clone());
    set(&mut env, "SIDECAR__CACHE__REDIS_URL", redis.url());
    let a = TestApp::spawn_with(env.clone()).await;
    let b = TestApp::spawn_with(env).await;
    wait_subscribed(&a, Duration::from_secs(5)).await;
    wait_subscribed(&b, Duration::from_secs(5)).await;
    (a, b, db)
}

#[tokio::test]
async fn a_login_reconciled_by_one_replica_is_served_by_another_without_the_database() {
    let kc = FakeKeycloak::start().await;
    let redis = TestRedis::start().await;
    let (a, b, _db) = two_replicas(&kc, &redis).await;
    let alias = unique("acme");
    let (org, contract) = seed_org(&a, &alias).await;
    let token = kc.token().sub(&unique("u")).organization(json!([alias])).sign();

    assert_eq!(facts(&a, &token).await, (200, org.clone(), contract.clone()));

    let before = settled_queries(&b).await;
    assert_eq!(facts(&b, &token).await, (200, org.clone(), contract.clone()));
    let metrics = b.metrics().await;
    assert_eq!(
        metric(&metrics, QUERIES),
        before,
        "B reconciled instead of using A's result; A: {} B: {}",
        redis_lines(&a.metrics().await),
        redis_lines(&metrics)
    );
    assert_eq!(metric(&metrics, REDIS_HITS), 1.0);
    // And then it is in B's memory: no Redis lookup either.
    assert_eq!(facts(&b, &token).await, (200, org, contract));
    let metrics = b.metrics().await;
    assert_eq!(metric(&metrics, REDIS_HITS) + metric(&metrics, REDIS_MISSES), 1.0);
    assert_eq!(metric(&metrics, QUERIES), before);
}

/// Two replicas on one PostgreSQL database and the test's Redis, each with its own
/// `cache.redis_key_file` (lines as given); `dir` holds the files.
async fn two_replicas_with_keys(
    kc: &FakeKeycloak,
    redis: &TestRedis,
    dir: &tempfile::TempDir,
    keys_a: &[&str],
    keys_b: &[&str],
) -> (TestApp, TestApp, TestDatabase) {
    let db = TestDatabase::create().await;
    let mut replicas = Vec::new();
    for (name, keys) in [("a", keys_a), ("b", keys_b)] {
        let file = dir.path().join(format!("redis-keys-{name}"));
        std::fs::write(&file, format!("# {name}\n{}\n", keys.join("\n"))).unwrap();
        let mut env = base_env(kc);
        set(&mut env, "SIDECAR__DATABASE__URL", db.url.clone());
        set(&mut env, "SIDECAR__CACHE__REDIS_URL", redis.url());
        set(&mut env, "SIDECAR__CACHE__REDIS_KEY_FILE", file.display().to_string());
        let app = TestApp::spawn_with(env).await;
        wait_subscribed(&app, Duration::from_secs(5)).await;
        replicas.push(app);
    }
    let b = replicas.pop().unwrap();
    let a = replicas.pop().unwrap();
    (a, b, db)
}

/// Raw access to the test's Redis, as an attacker with write access has it.
struct RawRedis(redis::aio::MultiplexedConnection);

impl RawRedis {
    async fn connect(redis: &TestRedis) -> RawRedis {
        RawRedis(redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap())
    }

    /// The names of the login entries, sorted.
    async fn logins(&mut self) -> Vec<String> {
        let mut keys: Vec<String> =
            redis::cmd("KEYS").arg("identity-sidecar:v2:{*}:login:*").query_async(&mut self.0).await.unwrap();
        keys.sort();
        keys
    }

    /// The one login entry `act` writes: its name.
    async fn written_by(&mut self, act: impl Future<Output = ()>) -> String {
        let before = self.logins().await;
        act.await;
        let after = self.logins().await;
        let new: Vec<_> = after.into_iter().filter(|k| !before.contains(k)).collect();
        assert_eq!(new.len(), 1, "expected one new login entry: {new:?}");
        new.into_iter().next().unwrap()
    }

    async fn get(&mut self, name: &str) -> Vec<u8> {
        redis::cmd("GET").arg(name).query_async::<Option<Vec<u8>>>(&mut self.0).await.unwrap().expect("entry")
    }

    async fn set(&mut self, name: &str, value: &[u8]) {
        redis::cmd("SET").arg(name).arg(value).arg("KEEPTTL").query_async::<()>(&mut self.0).await.unwrap();
    }
}

/// `haystack` with every `from` replaced by `to`, on bytes.
fn replace_bytes(haystack: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = std::str::from_utf8(haystack).expect("the JSON part is UTF-8");
    assert!(text.contains(from), "{from} not in the entry");
    text.replace(from, to).into_bytes()
}

#[tokio::test]
async fn with_a_key_file_a_login_stored_by_one_replica_is_served_by_another_with_the_same_key() {
    let kc = FakeKeycloak::start().await;
    let redis = TestRedis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _db) = two_replicas_with_keys(&kc, &redis, &dir, &[NEW_KEY], &[NEW_KEY]).await;
    let alias = unique("acme");
    let (org, contract) = seed_org(&a, &alias).await;
    let token = kc.token().sub(&unique("u")).organization(json!([alias])).sign();
    let mut raw = RawRedis::connect(&redis).await;
    let name = raw
        .written_by(async {
            assert_eq!(facts(&a, &token).await, (200, org.clone(), contract.clone()));
        })
        .await;
    let value = raw.get(&name).await;
    assert!(value.starts_with(b"hs256:"), "the entry is not signed");

    let before = settled_queries(&b).await;
    assert_eq!(facts(&b, &token).await, (200, org, contract));
    let metrics = b.metrics().await;
    assert_eq!(metric(&metrics, QUERIES), before, "B reconciled instead of using A's signed entry");
    assert_eq!(metric(&metrics, REDIS_HITS), 1.0);
    assert_eq!(metric(&metrics, BAD_SIGNATURE) + metric(&metrics, UNSIGNED), 0.0);
}

/// An attacker with write access to Redis but not the key: a signed entry edited to name
/// another organization, an unsigned forged entry (the format without a key), and a forged
/// entry with a made-up tag are each a miss; B reconciles from the database and answers the
/// user's real facts.
#[tokio::test]
async fn a_login_entry_tampered_with_or_forged_in_redis_is_a_miss_and_the_database_answers() {
    let kc = FakeKeycloak::start().await;
    let redis = TestRedis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _db) = two_replicas_with_keys(&kc, &redis, &dir, &[NEW_KEY], &[NEW_KEY]).await;
    let alias = unique("acme");
    let (org, contract) = seed_org(&a, &alias).await;
    // An organization the user does not belong to, with a contract of its own.
    let (other_org, other_contract) = seed_org(&a, &unique("other")).await;
    let sub = unique("u");
    let mut raw = RawRedis::connect(&redis).await;

    type Forge = fn(&[u8], &str, &str, &str, &str) -> Vec<u8>;
    let forgeries: [(&str, Forge, &str); 3] = [
        (
            "the signed value edited to name another organization",
            |value, org, contract, other_org, other_contract| {
                let (head, json) = value.split_at(6 + 32);
                let json = replace_bytes(json, org, other_org);
                [head, &replace_bytes(&json, contract, other_contract)].concat()
            },
            BAD_SIGNATURE,
        ),
        (
            "an unsigned entry naming another organization",
            |value, org, contract, other_org, other_contract| {
                let json = replace_bytes(&value[6 + 32..], org, other_org);
                replace_bytes(&json, contract, other_contract)
            },
            UNSIGNED,
        ),
        (
            "a forged entry with a made-up tag",
            |value, org, contract, other_org, other_contract| {
                let json = replace_bytes(&value[6 + 32..], org, other_org);
                [&b"hs256:"[..], &[0x42; 32], &replace_bytes(&json, contract, other_contract)].concat()
            },
            BAD_SIGNATURE,
        ),
    ];
    for (what, forge, counted) in forgeries {
        // A fresh session each time: a new login, in neither replica's memory.
        let token = kc.token().sub(&sub).sid(&unique("sid")).organization(json!([alias])).sign();
        let name = raw
            .written_by(async {
                assert_eq!(facts(&a, &token).await, (200, org.clone(), contract.clone()));
            })
            .await;
        let value = raw.get(&name).await;
        raw.set(&name, &forge(&value, &org, &contract, &other_org, &other_contract)).await;

        let metrics = b.metrics().await;
        let (rejected, before) = (metric(&metrics, counted), settled_queries(&b).await);
        assert_eq!(facts(&b, &token).await, (200, org.clone(), contract.clone()), "{what} was served");
        let metrics = b.metrics().await;
        assert_eq!(metric(&metrics, counted), rejected + 1.0, "{what}: not counted");
        assert!(metric(&metrics, QUERIES) > before, "{what}: B did not reconcile from the database");
        // B's own result replaced the forgery, signed again.
        assert!(raw.get(&name).await.starts_with(b"hs256:"), "{what}: not overwritten");
    }
}

/// Rotation: B already has the new key first and the old one second; A still signs with the
/// old one. B serves A's entry, and A (old key only) refuses B's entry signed with the new key
/// until A gets it too.
#[tokio::test]
async fn during_key_rotation_a_replica_with_new_and_old_keys_accepts_an_entry_signed_with_the_old_one() {
    let kc = FakeKeycloak::start().await;
    let redis = TestRedis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _db) = two_replicas_with_keys(&kc, &redis, &dir, &[OLD_KEY], &[NEW_KEY, OLD_KEY]).await;
    let alias = unique("acme");
    let (org, contract) = seed_org(&a, &alias).await;
    let sub = unique("u");

    let token = kc.token().sub(&sub).sid(&unique("sid")).organization(json!([alias])).sign();
    assert_eq!(facts(&a, &token).await, (200, org.clone(), contract.clone()));
    let before = settled_queries(&b).await;
    assert_eq!(facts(&b, &token).await, (200, org.clone(), contract.clone()));
    let metrics = b.metrics().await;
    assert_eq!(metric(&metrics, QUERIES), before, "B refused an entry signed with its second key");
    assert_eq!(metric(&metrics, REDIS_HITS), 1.0);

    // The other way round: B signs with the new key, which A does not have yet.
    let token = kc.token().sub(&sub).sid(&unique("sid")).organization(json!([alias])).sign();
    assert_eq!(facts(&b, &token).await, (200, org.clone(), contract.clone()));
    let before = settled_queries(&a).await;
    assert_eq!(facts(&a, &token).await, (200, org, contract));
    let metrics = a.metrics().await;
    assert!(metric(&metrics, QUERIES) > before, "A served an entry signed with a key it does not have");
    assert_eq!(metric(&metrics, BAD_SIGNATURE), 1.0);
}

#[tokio::test]
async fn a_contract_write_invalidated_on_another_replica_reaches_every_replica_and_redis() {
    let kc = FakeKeycloak::start().await;
    let redis = TestRedis::start().await;
    let (a, b, _db) = two_replicas(&kc, &redis).await;
    let alias = unique("acme");
    let (org, first) = seed_org(&a, &alias).await;
    let token = kc.token().sub(&unique("u")).organization(json!([alias])).sign();
    assert_eq!(facts(&a, &token).await, (200, org.clone(), first.clone()));
    assert_eq!(facts(&b, &token).await, (200, org.clone(), first.clone()));

    // A new auto contract: until an invalidation, both replicas serve the login from memory.
    let second = add_contract(&a, &org).await;
    assert_eq!(facts(&a, &token).await.2, first);
    assert_eq!(facts(&b, &token).await.2, first);

    // What the admin API of a third replica does after the write.
    let received = (metric(&a.metrics().await, RECEIVED), metric(&b.metrics().await, RECEIVED));
    redis.handle().publish(&Invalidation::All).await;
    for (app, before) in [(&a, received.0), (&b, received.1)] {
        eventually(Duration::from_secs(1), "the invalidation is received", || async {
            metric(&app.metrics().await, RECEIVED) > before
        })
        .await;
    }
    let both = {
        let mut keys = [first, second];
        keys.sort();
        keys.join(",")
    };
    // B goes first: A's Redis entry predates the invalidation, so B must reconcile.
    let before = settled_queries(&b).await;
    assert_eq!(facts(&b, &token).await, (200, org.clone(), both.clone()));
    assert!(metric(&b.metrics().await, QUERIES) > before, "B served a stale Redis entry");
    assert_eq!(facts(&a, &token).await, (200, org, both));
}

#[tokio::test]
async fn an_invalidation_published_on_one_process_empties_the_others_memory_within_a_second() {
    let redis = TestRedis::start().await;
    let publisher = redis.handle();
    let subscriber = redis.handle();
    let logins = Arc::new(Logins::new(100, Duration::from_secs(300)));
    let stop = CancellationToken::new();
    let task = {
        let logins = logins.clone();
        tokio::spawn(subscriber.clone().run_subscriber(
            move |inv| match inv {
                Invalidation::All => logins.invalidate_all(),
                Invalidation::User(sub) => logins.invalidate_user(sub),
            },
            stop.clone(),
        ))
    };
    eventually(Duration::from_secs(2), "subscribed", || async { subscriber.is_subscribed() }).await;

    let exp = identity_sidecar::auth::authenticator::unix_now() + 300;
    let (u1, u2) = (unique("u"), unique("u"));
    let g = logins.generation();
    logins.put([1; 32], &u1, Facts::default(), exp, g);
    logins.put([2; 32], &u2, Facts::default(), exp, g);

    publisher.publish(&Invalidation::User(u1.clone())).await;
    eventually(Duration::from_secs(1), "u1's login is dropped", || async { logins.get(&[1; 32]).is_none() })
        .await;
    assert!(logins.get(&[2; 32]).is_some(), "only u1 was invalidated");

    publisher.publish(&Invalidation::All).await;
    eventually(Duration::from_secs(1), "every login is dropped", || async { logins.get(&[2; 32]).is_none() })
        .await;

    // A process skips its own messages: it applied them before publishing.
    let g = logins.generation();
    subscriber.publish(&Invalidation::All).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(logins.generation(), g);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), task).await.expect("the subscriber stops").unwrap().unwrap();
}

#[tokio::test]
async fn a_redis_entry_written_before_an_invalidation_is_never_served_after_it() {
    let redis = TestRedis::start().await;
    let replica = redis.handle();
    let admin = redis.handle();
    let sub = unique("u");
    let key: [u8; 32] = *uuid::Uuid::new_v4().as_bytes().repeat(2).first_chunk().unwrap();
    let snapshot = Facts {
        organizations: vec![EntitledOrganization {
            key: "acme".into(),
            name: "Acme".into(),
            keycloak_id: Some(uuid::Uuid::new_v4()),
            manager: true,
        }],
        contracts: vec![HeldContract {
            contract: EntitledContract {
                key: "c1".into(),
                organization: "acme".into(),
                membership_type: MembershipType::Managed,
                starts_on: Some(time::macros::date!(2020 - 01 - 01)),
                ends_on: None,
            },
            active: true,
        }],
        ..Facts::default()
    };
    let until = identity_sidecar::auth::authenticator::unix_now() + 60;

    // The invalidation lands while the reconciliation reads the database.
    let Lookup::Miss(epochs) = replica.lookup(&key, &sub).await else { panic!("a fresh key misses") };
    admin.publish(&Invalidation::User(sub.clone())).await;
    replica.store(&key, &sub, &snapshot, epochs, until).await;
    assert!(matches!(replica.lookup(&key, &sub).await, Lookup::Miss(_)), "a stale entry was served");

    // Written after it: served, intact, until the next invalidation of that user or of all.
    for invalidation in [Invalidation::User(sub.clone()), Invalidation::All] {
        let Lookup::Miss(epochs) = replica.lookup(&key, &sub).await else { panic!("still a miss") };
        replica.store(&key, &sub, &snapshot, epochs, until).await;
        match replica.lookup(&key, &sub).await {
            Lookup::Hit(login) => {
                assert_eq!(login.facts, snapshot);
                assert_eq!(login.expires_at, until);
            }
            other => panic!("expected a hit, got {other:?}"),
        }
        admin.publish(&invalidation).await;
        assert!(matches!(replica.lookup(&key, &sub).await, Lookup::Miss(_)), "{invalidation:?} ignored");
    }
}

/// A Redis of the test's own, on a free port, that it can kill and restart; killed when
/// dropped. Declare it before the apps that use it, so it outlives them.
pub(crate) struct TestRedis {
    port: u16,
    child: Option<Child>,
}

impl TestRedis {
    pub(crate) async fn start() -> TestRedis {
        // The port is free when chosen but may be taken before redis-server binds it (by
        // another test's server): then the server exits and another port is tried.
        for _ in 0..5 {
            let mut redis = TestRedis { port: closed_port(), child: None };
            if redis.try_start().await {
                return redis;
            }
        }
        panic!("could not start a redis-server of the test's own");
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A stand-in for a third replica (or the admin API of one): a handle on this Redis.
    fn handle(&self) -> Arc<RedisTier> {
        Arc::new(RedisTier::new(&self.url(), Arc::new(Metrics::new())).unwrap())
    }

    /// Starts the server again on the same port (after [`TestRedis::kill`]).
    async fn restart(&mut self) {
        assert!(self.try_start().await, "redis-server did not start again on port {}", self.port);
    }

    /// Spawns redis-server and waits until it answers; false when it exited instead (port
    /// taken). The answer must come from this child (its pid), not from a server that
    /// already held the port.
    async fn try_start(&mut self) -> bool {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let pid = child.id();
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && let Ok(info) = redis::cmd("INFO").arg("server").query_async::<String>(&mut c).await
            {
                if !info.contains(&format!("process_id:{pid}\r\n")) {
                    // Another server holds the port; ours is exiting or about to.
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
                self.child = Some(child);
                return true;
            }
            assert!(Instant::now() < deadline, "redis-server did not answer within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn when_redis_goes_away_requests_keep_working_and_the_bus_comes_back_with_it() {
    let kc = FakeKeycloak::start().await;
    let mut redis = TestRedis::start().await;
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__CACHE__REDIS_URL", redis.url());
    let app = TestApp::spawn_with(env).await;
    wait_subscribed(&app, Duration::from_secs(5)).await;
    let cached = kc.token().sub(&unique("u")).sign();
    assert_eq!(app.auth_status(&cached).await, 200);

    redis.kill();
    eventually(Duration::from_secs(3), "the subscription is lost", || async {
        metric(&app.metrics().await, SUBSCRIBED) == 0.0
    })
    .await;
    // From memory, and by reconciling a new login without Redis.
    assert_eq!(app.auth_status(&cached).await, 200);
    let started = Instant::now();
    assert_eq!(app.auth_status(&kc.token().sub(&unique("u")).sign()).await, 200);
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());

    redis.restart().await;
    wait_subscribed(&app, Duration::from_secs(5)).await;
    // Messages may have been missed while away: the memory tier was dropped.
    let before = settled_queries(&app).await;
    assert_eq!(app.auth_status(&cached).await, 200);
    assert!(metric(&app.metrics().await, QUERIES) > before, "the login was not reconciled again");

    let received = metric(&app.metrics().await, RECEIVED);
    let other = RedisTier::new(&redis.url(), Arc::new(Metrics::new())).unwrap();
    other.publish(&Invalidation::All).await;
    eventually(Duration::from_secs(2), "an invalidation is received again", || async {
        metric(&app.metrics().await, RECEIVED) > received
    })
    .await;
}

#[tokio::test]
async fn a_redis_url_on_a_closed_port_does_not_stop_the_app_from_serving() {
    let kc = FakeKeycloak::start().await;
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__CACHE__REDIS_URL", format!("redis://127.0.0.1:{}", closed_port()));
    let app = TestApp::spawn_with(env).await;
    let token = kc.token().sub(&unique("u")).sign();
    assert_eq!(app.auth_status(&token).await, 200);
    assert_eq!(app.auth_status(&token).await, 200);
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, SUBSCRIBED), 0.0);
    assert!(metrics.contains("identity_sidecar_redis_errors_total{op=\"lookup\""), "{metrics}");
}

#[tokio::test]
async fn a_hung_redis_never_holds_a_request_for_more_than_a_second() {
    let kc = FakeKeycloak::start().await;
    let hung = HangingServer::start().await;
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__CACHE__REDIS_URL", format!("redis://{}", hung.addr()));
    let app = TestApp::spawn_with(env).await;
    for _ in 0..3 {
        let token = kc.token().sub(&unique("u")).sign();
        for _ in 0..2 {
            let started = Instant::now();
            assert_eq!(app.auth_status(&token).await, 200);
            assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
        }
    }
    assert!(hung.accepted() > 0, "the app never tried Redis");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("identity_sidecar_redis_errors_total{op=\"lookup\",kind=\"timeout\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_invalidation_that_could_not_be_published_is_sent_as_all_once_redis_is_back() {
    let mut redis = TestRedis::start().await;
    let stop = CancellationToken::new();
    let (publisher, peer_metrics) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
    let publisher = Arc::new(RedisTier::new(&redis.url(), publisher).unwrap());
    let peer = Arc::new(RedisTier::new(&redis.url(), peer_metrics.clone()).unwrap());
    for cache in [&publisher, &peer] {
        tokio::spawn(cache.clone().run_subscriber(|_| {}, stop.clone()));
    }
    for cache in [&publisher, &peer] {
        eventually(Duration::from_secs(2), "subscribed", || async { cache.is_subscribed() }).await;
    }

    redis.kill();
    let started = Instant::now();
    publisher.publish(&Invalidation::User(unique("u"))).await;
    assert!(started.elapsed() < Duration::from_millis(500), "publishing waited {:?}", started.elapsed());

    redis.restart().await;
    eventually(Duration::from_secs(5), "the owed invalidation reaches the peer", || async {
        metric(&peer_metrics.render(), RECEIVED) >= 1.0
    })
    .await;
    stop.cancel();
}

/// Issue "B2B core", done when: two app instances sharing PostgreSQL + Redis agree after an
/// admin change without a restart. The change goes through A's admin API over HTTP; B learns
/// of it through the bus (asynchronous: milliseconds on loopback).
#[tokio::test]
async fn two_replicas_agree_after_an_admin_change_made_on_one_of_them() {
    use sha2::Digest as _;
    let kc = FakeKeycloak::start().await;
    let redis = TestRedis::start().await;
    let db = TestDatabase::create().await;
    let admin_token = "replica-admin-token";
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__DATABASE__URL", db.url.clone());
    set(&mut env, "SIDECAR__CACHE__REDIS_URL", redis.url());
    let sha = hex::encode(sha2::Sha256::digest(admin_token.as_bytes()));
    set(&mut env, "SIDECAR__ADMIN__TOKEN_SHA256", json!([{"name": "ops", "sha256": sha}]).to_string());
    let a = TestApp::spawn_with(env.clone()).await;
    let b = TestApp::spawn_with(env).await;
    wait_subscribed(&a, Duration::from_secs(5)).await;
    wait_subscribed(&b, Duration::from_secs(5)).await;

    let alias = unique("acme");
    let (org, first) = seed_org(&a, &alias).await;
    let token = kc.token().sub(&unique("u")).organization(json!([alias])).sign();
    assert_eq!(facts(&a, &token).await, (200, org.clone(), first.clone()));
    assert_eq!(facts(&b, &token).await, (200, org.clone(), first.clone()));

    // Deactivate the contract through A's admin API.
    let res = a
        .http
        .patch(a.admin_url(&format!("/admin/v1/contracts/{first}")))
        .bearer_auth(admin_token)
        .json(&json!({"active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    // A sees it on its very next request; B as soon as the invalidation arrives.
    assert_eq!(facts(&a, &token).await, (200, org.clone(), String::new()));
    eventually(Duration::from_secs(2), "B drops the deactivated contract", || async {
        facts(&b, &token).await == (200, org.clone(), String::new())
    })
    .await;
}

/// A login reconciled by `a` is served by `b` from Redis, without the database.
pub(crate) async fn b_serves_what_a_reconciled(kc: &FakeKeycloak, a: &TestApp, b: &TestApp) {
    let alias = unique("acme");
    let (org, contract) = seed_org(a, &alias).await;
    let token = kc.token().sub(&unique("u")).organization(json!([alias])).sign();
    assert_eq!(facts(a, &token).await, (200, org.clone(), contract.clone()));
    let before = settled_queries(b).await;
    let hits = metric(&b.metrics().await, REDIS_HITS);
    assert_eq!(facts(b, &token).await, (200, org, contract));
    let metrics = b.metrics().await;
    assert_eq!(metric(&metrics, QUERIES), before, "B reconciled; B: {}", redis_lines(&metrics));
    assert_eq!(metric(&metrics, REDIS_HITS), hits + 1.0);
}

/// A `redis-server` of the test's own speaking TLS only (`--port 0`), its certificate
/// signed by a CA made for the test.
struct TlsRedis {
    port: u16,
    child: Child,
    /// The CA's PEM, the server's certificate and key.
    dir: tempfile::TempDir,
}

/// A CA: its certificate (PEM) and issuer.
pub(crate) fn test_ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), rcgen::Issuer::new(params, key))
}

impl TlsRedis {
    async fn start() -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, ca) = test_ca("identity-sidecar test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        for _ in 0..5 {
            let port = closed_port();
            let path = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
            let mut child = Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--tls-cert-file", &path("server.pem"), "--tls-key-file", &path("server.key")])
                .args(["--tls-ca-cert-file", &path("ca.pem"), "--tls-auth-clients", "no"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            let tier = RedisTier::connect(
                &Target::standalone(&format!("rediss://127.0.0.1:{port}"))
                    .with_ca(std::fs::read(dir.path().join("ca.pem")).unwrap()),
                None,
                Arc::new(Metrics::new()),
            )
            .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken: try another
                }
                if tier.ping().await {
                    return TlsRedis { port, child, dir };
                }
                assert!(Instant::now() < deadline, "redis-server (TLS) did not answer within 10 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("could not start a TLS redis-server of the test's own");
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    fn ca_file(&self) -> String {
        self.dir.path().join("ca.pem").to_str().unwrap().to_owned()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn over_tls_replicas_share_logins_and_a_server_the_ca_did_not_sign_is_refused() {
    let kc = FakeKeycloak::start().await;
    let redis = TlsRedis::start().await;
    let db = TestDatabase::create().await;
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__DATABASE__URL", db.url.clone());
    set(&mut env, "SIDECAR__CACHE__REDIS_URL", redis.url());
    set(&mut env, "SIDECAR__CACHE__REDIS_CA_FILE", redis.ca_file());
    let a = TestApp::spawn_with(env.clone()).await;
    let b = TestApp::spawn_with(env).await;
    wait_subscribed(&a, Duration::from_secs(5)).await;
    wait_subscribed(&b, Duration::from_secs(5)).await;
    b_serves_what_a_reconciled(&kc, &a, &b).await;

    // Another CA: the server's certificate does not verify, nothing is sent.
    let (other_ca, _) = test_ca("another CA");
    let target = Target::standalone(&redis.url()).with_ca(other_ca.into_bytes());
    let stranger = RedisTier::connect(&target, None, Arc::new(Metrics::new())).unwrap();
    assert!(!stranger.ping().await, "a server the CA did not sign was accepted");
    // And plain text to a TLS-only server gets nowhere either.
    assert!(
        !RedisTier::new(&redis.url().replace("rediss", "redis"), Arc::new(Metrics::new()))
            .unwrap()
            .ping()
            .await
    );
}

/// Three `redis-server --cluster-enabled yes` of the test's own, joined by
/// `redis-cli --cluster create` (no replicas), each stopped by its pid; over TLS only (client
/// port and cluster bus) when started with [`TestCluster::start_tls`].
struct TestCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    /// The CA's PEM file under TLS.
    ca: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    async fn start() -> TestCluster {
        TestCluster::start_with(false).await
    }

    /// Every node on a TLS port only (`tls-cluster yes`: the bus too, and the nodes announce
    /// their TLS ports), its certificate signed by a CA made for the test.
    async fn start_tls() -> TestCluster {
        TestCluster::start_with(true).await
    }

    async fn start_with(tls: bool) -> TestCluster {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let path = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
        let ca = tls.then(|| {
            let (ca_pem, ca) = test_ca("identity-sidecar cluster test CA");
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
            std::fs::write(path("server.pem"), params.signed_by(&key, &ca).unwrap().pem()).unwrap();
            std::fs::write(path("server.key"), key.serialize_pem()).unwrap();
            std::fs::write(path("ca.pem"), ca_pem).unwrap();
            path("ca.pem")
        });
        let (mut ports, mut children) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (port, bus) = (closed_port(), closed_port());
            let mut command = Command::new("redis-server");
            match &ca {
                None => command.args(["--port", &port.to_string()]),
                Some(ca) => command
                    .args(["--port", "0", "--tls-port", &port.to_string(), "--tls-cluster", "yes"])
                    .args(["--tls-cert-file", &path("server.pem"), "--tls-key-file", &path("server.key")])
                    .args(["--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]),
            };
            let child = command
                .args(["--cluster-port", &bus.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(dir.path().join(format!("nodes-{port}.conf")))
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            ports.push(port);
            children.push(child);
        }
        let cluster = TestCluster { ports, children, ca, _dir: dir };
        for &port in &cluster.ports {
            let client = cluster.client(port);
            let deadline = Instant::now() + Duration::from_secs(10);
            while client.get_multiplexed_async_connection().await.is_err() {
                assert!(Instant::now() < deadline, "a cluster node did not answer within 10 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut cli = Command::new("redis-cli");
        if let Some(ca) = &cluster.ca {
            cli.args(["--tls", "--cacert", ca]);
        }
        let created = cli
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed");
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stdout));
        for &port in &cluster.ports {
            let client = cluster.client(port);
            let conn = client.get_multiplexed_async_connection().await.unwrap();
            eventually(Duration::from_secs(10), "the cluster is ok on every node", || {
                let mut conn = conn.clone();
                async move {
                    let info: String =
                        redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await.unwrap();
                    info.contains("cluster_state:ok")
                }
            })
            .await;
        }
        cluster
    }

    fn urls(&self) -> Vec<String> {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        self.ports.iter().map(|p| format!("{scheme}://127.0.0.1:{p}")).collect()
    }

    /// A client of one node (verifying it with the test's CA under TLS).
    fn client(&self, port: u16) -> redis::Client {
        match &self.ca {
            None => redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap(),
            Some(ca) => redis::Client::build_with_tls(
                format!("rediss://127.0.0.1:{port}"),
                redis::TlsCertificates { client_tls: None, root_cert: Some(std::fs::read(ca).unwrap()) },
            )
            .unwrap(),
        }
    }

    /// The target a publisher or replica uses.
    fn target(&self) -> Target {
        let target = Target::cluster(&self.urls());
        match &self.ca {
            None => target,
            Some(ca) => target.with_ca(std::fs::read(ca).unwrap()),
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn on_a_cluster_replicas_share_logins_and_invalidations() {
    replicas_share_logins_and_invalidations_on(TestCluster::start().await).await;
}

#[tokio::test]
async fn on_a_cluster_over_tls_replicas_share_logins_and_invalidations() {
    replicas_share_logins_and_invalidations_on(TestCluster::start_tls().await).await;
}

async fn replicas_share_logins_and_invalidations_on(cluster: TestCluster) {
    let kc = FakeKeycloak::start().await;
    let db = TestDatabase::create().await;
    let mut env = base_env(&kc);
    set(&mut env, "SIDECAR__DATABASE__URL", db.url.clone());
    set(&mut env, "SIDECAR__CACHE__REDIS_MODE", "cluster");
    set(&mut env, "SIDECAR__CACHE__REDIS_URLS", serde_json::to_string(&cluster.urls()).unwrap());
    if let Some(ca) = &cluster.ca {
        set(&mut env, "SIDECAR__CACHE__REDIS_CA_FILE", ca.clone());
    }
    let a = TestApp::spawn_with(env.clone()).await;
    let b = TestApp::spawn_with(env).await;
    wait_subscribed(&a, Duration::from_secs(5)).await;
    wait_subscribed(&b, Duration::from_secs(5)).await;
    // Several users, so their keys land in several slots (nodes).
    for _ in 0..3 {
        b_serves_what_a_reconciled(&kc, &a, &b).await;
    }

    // An invalidation published through the cluster reaches both replicas.
    let publisher = RedisTier::connect(&cluster.target(), None, Arc::new(Metrics::new())).unwrap();
    a_published_invalidation_reaches_both_replicas(&kc, &a, &b, &publisher).await;
}

/// A user's login is cached on both replicas; a contract added on A is not seen by B until an
/// invalidation published by a third process (`publisher`) has reached both, after which B
/// reads the store again and serves both contracts.
pub(crate) async fn a_published_invalidation_reaches_both_replicas(
    kc: &FakeKeycloak,
    a: &TestApp,
    b: &TestApp,
    publisher: &RedisTier,
) {
    let alias = unique("acme");
    let (org, first) = seed_org(a, &alias).await;
    let token = kc.token().sub(&unique("u")).organization(json!([alias])).sign();
    assert_eq!(facts(a, &token).await, (200, org.clone(), first.clone()));
    assert_eq!(facts(b, &token).await, (200, org.clone(), first.clone()));
    let second = add_contract(a, &org).await;
    assert_eq!(facts(b, &token).await.2, first, "served from memory until invalidated");
    let received = (metric(&a.metrics().await, RECEIVED), metric(&b.metrics().await, RECEIVED));
    // Connected first, as a process does at startup (`ping`, 1 s): connecting (a TLS handshake
    // per cluster node, or finding the primary through a sentinel) can take longer than one
    // command's 250 ms in a debug build on a busy machine.
    assert!(publisher.ping().await, "the publisher cannot reach Redis");
    publisher.publish(&Invalidation::All).await;
    for (app, before) in [(a, received.0), (b, received.1)] {
        eventually(Duration::from_secs(2), "the invalidation is received", || async {
            metric(&app.metrics().await, RECEIVED) > before
        })
        .await;
    }
    let mut both = [first, second];
    both.sort();
    let before = settled_queries(b).await;
    assert_eq!(facts(b, &token).await, (200, org, both.join(",")));
    assert!(metric(&b.metrics().await, QUERIES) > before, "B served a stale Redis entry");
}
