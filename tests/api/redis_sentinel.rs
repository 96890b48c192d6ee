//! The Redis tier under Sentinel (`cache.redis_mode = "sentinel"`): logins and invalidations
//! shared through the primary the sentinels name, and a failover while requests run.
//!
//! Every test starts its own primary, a replica of it (`--replicaof`) and a sentinel watching
//! them — `redis-server` processes from Debian's packages on free ports, stopped by pid when
//! the test ends ([`TestSentinel`]). The sentinel declares a primary down after one second of
//! silence, so a killed primary is replaced within a few seconds; every wait polls a condition
//! (what the sentinel reports, who is subscribed where) under a generous deadline.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use identity_sidecar::entitlements::redis::{CHANNEL, RedisTier, Target};
use identity_sidecar::metrics::Metrics;
use serde_json::json;

use crate::helpers::{
    ADMIN_TOKEN, FakeKeycloak, TestApp, TestDatabase, base_env, closed_port, metric, set, with_admin_token,
};
use crate::redis::{
    QUERIES, RECEIVED, a_published_invalidation_reaches_both_replicas, b_serves_what_a_reconciled,
    eventually, facts, seed_org, settled_queries, test_ca, unique, wait_subscribed,
};

/// The name the sentinel monitors the primary under.
const MASTER: &str = "sidecar-primary";

/// The CA and one server certificate (for 127.0.0.1) shared by every process of a TLS set.
struct TlsFiles {
    ca: String,
    cert: String,
    key: String,
}

/// One `redis-server` of the test's own.
struct Server {
    port: u16,
    child: Child,
}

impl Server {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A primary, its replica and one sentinel watching them (quorum 1, down after 1 s, failover
/// timeout 3 s), over TLS when asked; each process stopped by its pid when dropped.
struct TestSentinel {
    primary: Server,
    replica: Server,
    sentinel: Server,
    tls: Option<TlsFiles>,
    dir: tempfile::TempDir,
}

impl TestSentinel {
    async fn start() -> TestSentinel {
        TestSentinel::start_with(false).await
    }

    async fn start_with(tls: bool) -> TestSentinel {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let tls = tls.then(|| {
            let (ca_pem, ca) = test_ca("identity-sidecar sentinel test CA");
            let key = rcgen::KeyPair::generate().unwrap();
            let params =
                rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            let file = |name: &str, text: String| {
                let path = dir.path().join(name);
                std::fs::write(&path, text).unwrap();
                path.to_str().unwrap().to_owned()
            };
            TlsFiles {
                ca: file("ca.pem", ca_pem),
                cert: file("server.pem", cert.pem()),
                key: file("server.key", key.serialize_pem()),
            }
        });
        let primary =
            start_server(tls.as_ref(), |port| server_args(tls.as_ref(), dir.path(), port, None)).await;
        let replica = start_server(tls.as_ref(), |port| {
            server_args(tls.as_ref(), dir.path(), port, Some(primary.port))
        })
        .await;
        let conf = |port: u16| {
            let path = dir.path().join(format!("sentinel-{port}.conf"));
            let listen = match &tls {
                None => format!("port {port}\n"),
                Some(t) => format!(
                    "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                     tls-auth-clients no\ntls-replication yes\n",
                    t.cert, t.key, t.ca
                ),
            };
            std::fs::write(
                &path,
                format!(
                    "{listen}bind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {primary} 1\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 3000\n",
                    dir = dir.path().display(),
                    primary = primary.port,
                ),
            )
            .unwrap();
            let mut command = Command::new("redis-server");
            command.arg(path).arg("--sentinel");
            command
        };
        let sentinel = start_server(tls.as_ref(), conf).await;
        let set = TestSentinel { primary, replica, sentinel, tls, dir };
        // A failover needs a replica the sentinel knows and considers in sync.
        eventually(Duration::from_secs(30), "the sentinel sees a healthy replica", || async {
            set.replicas().await.iter().any(|r| {
                r.get("flags").is_some_and(|f| f == "slave")
                    && r.get("master-link-status").is_some_and(|s| s == "ok")
            })
        })
        .await;
        set
    }

    fn url(&self, port: u16) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{port}")
    }

    /// The sentinels to configure: one that is not running, then the real one (a sidecar
    /// must move on to the next sentinel when one does not answer).
    fn sentinel_urls(&self) -> Vec<String> {
        vec![self.url(closed_port()), self.url(self.sentinel.port)]
    }

    /// Config pairs for a sidecar in sentinel mode on this set.
    fn env(&self, env: &mut Vec<(String, String)>) {
        set(env, "SIDECAR__CACHE__REDIS_MODE", "sentinel");
        set(env, "SIDECAR__CACHE__REDIS_URLS", serde_json::to_string(&self.sentinel_urls()).unwrap());
        set(env, "SIDECAR__CACHE__SENTINEL_MASTER", MASTER);
        if let Some(tls) = &self.tls {
            set(env, "SIDECAR__CACHE__REDIS_CA_FILE", tls.ca.clone());
        }
    }

    /// A stand-in for another replica of the sidecar.
    fn handle(&self) -> Arc<RedisTier> {
        let mut target = Target::sentinel(&self.sentinel_urls(), MASTER);
        if let Some(tls) = &self.tls {
            target = target.with_ca(std::fs::read(&tls.ca).unwrap());
        }
        Arc::new(RedisTier::connect(&target, None, Arc::new(Metrics::new())).unwrap())
    }

    async fn raw(&self, port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        raw_client(self.tls.as_ref(), port).get_multiplexed_async_connection().await
    }

    async fn ask_sentinel<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut conn = self.raw(self.sentinel.port).await?;
        redis::cmd("SENTINEL").arg(args).query_async(&mut conn).await
    }

    async fn replicas(&self) -> Vec<HashMap<String, String>> {
        self.ask_sentinel(&["REPLICAS", MASTER]).await.unwrap_or_default()
    }

    /// The primary's port as the sentinel reports it.
    async fn primary_port(&self) -> Option<u16> {
        let addr: Option<(String, u16)> =
            self.ask_sentinel(&["GET-MASTER-ADDR-BY-NAME", MASTER]).await.ok().flatten();
        addr.map(|(_, port)| port)
    }

    /// The login entries on the server at `port`, sorted.
    async fn logins(&self, port: u16) -> Vec<String> {
        let Ok(mut conn) = self.raw(port).await else { return Vec::new() };
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("identity-sidecar:v2:{*}:login:*")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        keys.sort();
        keys
    }

    /// How many clients are subscribed to the invalidation channel on the server at `port`.
    async fn subscribers(&self, port: u16) -> u64 {
        let Ok(mut conn) = self.raw(port).await else { return 0 };
        let numsub: redis::RedisResult<(String, u64)> =
            redis::cmd("PUBSUB").arg("NUMSUB").arg(CHANNEL).query_async(&mut conn).await;
        numsub.map(|(_, n)| n).unwrap_or(0)
    }

    /// Waits until the sentinel names the replica as the primary and it answers as one.
    async fn wait_promoted(&self) {
        eventually(Duration::from_secs(30), "the sentinel names the replica as the primary", || async {
            self.primary_port().await == Some(self.replica.port)
        })
        .await;
        eventually(Duration::from_secs(10), "the new primary answers as a primary", || async {
            let Ok(mut conn) = self.raw(self.replica.port).await else { return false };
            matches!(
                redis::cmd("ROLE").query_async::<redis::Role>(&mut conn).await,
                Ok(redis::Role::Primary { .. })
            )
        })
        .await;
    }
}

impl Drop for TestSentinel {
    fn drop(&mut self) {
        for server in [&mut self.sentinel, &mut self.replica, &mut self.primary] {
            server.kill();
        }
        let _ = &self.dir;
    }
}

/// A client of the server at `port`, verifying its certificate with the set's CA under TLS.
fn raw_client(tls: Option<&TlsFiles>, port: u16) -> redis::Client {
    match tls {
        None => redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap(),
        Some(t) => redis::Client::build_with_tls(
            format!("rediss://127.0.0.1:{port}"),
            redis::TlsCertificates { client_tls: None, root_cert: Some(std::fs::read(&t.ca).unwrap()) },
        )
        .unwrap(),
    }
}

/// `redis-server` for a primary, or a replica of the primary on `replica_of`, with its files
/// (a replica writes the copy it receives to disk) in `dir`.
fn server_args(tls: Option<&TlsFiles>, dir: &std::path::Path, port: u16, replica_of: Option<u16>) -> Command {
    let mut command = Command::new("redis-server");
    let port = port.to_string();
    match tls {
        None => command.args(["--port", &port]),
        Some(t) => command
            .args(["--port", "0", "--tls-port", &port])
            .args(["--tls-cert-file", &t.cert, "--tls-key-file", &t.key, "--tls-ca-cert-file", &t.ca])
            .args(["--tls-auth-clients", "no", "--tls-replication", "yes"]),
    };
    command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]).arg("--dir").arg(dir);
    if let Some(primary) = replica_of {
        command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
    }
    command
}

/// Starts the server `command(port)` makes on a free port and waits until it answers; the
/// answer must come from this child (its pid), not from a process that took the port first.
async fn start_server(tls: Option<&TlsFiles>, command: impl Fn(u16) -> Command) -> Server {
    for _ in 0..5 {
        let port = closed_port();
        let mut child = command(port)
            .args(["--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let pid = child.id();
        let client = raw_client(tls, port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break; // the port was taken: try another
            }
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && let Ok(info) = redis::cmd("INFO").arg("server").query_async::<String>(&mut c).await
            {
                if info.contains(&format!("process_id:{pid}\r\n")) {
                    return Server { port, child };
                }
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            assert!(Instant::now() < deadline, "redis-server did not answer within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("could not start a redis-server of the test's own");
}

/// Two sidecars in sentinel mode on one PostgreSQL database, with the static admin token.
async fn two_replicas(kc: &FakeKeycloak, set: &TestSentinel) -> (TestApp, TestApp, TestDatabase) {
    let db = TestDatabase::create().await;
    let mut env = base_env(kc);
    set_database(&mut env, &db);
    set.env(&mut env);
    with_admin_token(&mut env);
    let a = TestApp::spawn_with(env.clone()).await;
    let b = TestApp::spawn_with(env).await;
    wait_subscribed(&a, Duration::from_secs(10)).await;
    wait_subscribed(&b, Duration::from_secs(10)).await;
    (a, b, db)
}

fn set_database(env: &mut Vec<(String, String)>, db: &TestDatabase) {
    set(env, "SIDECAR__DATABASE__URL", db.url.clone());
}

#[tokio::test]
async fn through_sentinel_replicas_share_logins_and_invalidations_on_the_primary() {
    let kc = FakeKeycloak::start().await;
    let sentinel = TestSentinel::start().await;
    let (a, b, _db) = two_replicas(&kc, &sentinel).await;
    // Both subscribed on the primary (not on the replica, not on the sentinel).
    assert_eq!(sentinel.subscribers(sentinel.primary.port).await, 2);
    for _ in 0..2 {
        b_serves_what_a_reconciled(&kc, &a, &b).await;
    }

    // An invalidation published by a third process reaches both replicas.
    a_published_invalidation_reaches_both_replicas(&kc, &a, &b, &sentinel.handle()).await;
}

/// How the test forces the failover.
#[derive(Debug, Clone, Copy)]
enum Failover {
    /// `SENTINEL FAILOVER <master>`: the old primary stays up and is demoted later.
    Manual,
    /// The primary's process is killed: the sentinel finds it down and promotes the replica.
    KillPrimary,
}

/// Two sidecars answer a steady stream of forward-auth calls for a cached login while the
/// primary changes: every answer is 200 with the right organization (from memory or the
/// database while Redis is away), both subscriptions move to the new primary, an admin
/// change on A reaches B through it, and logins are shared through it again.
async fn failover_during_load(how: Failover) {
    let kc = FakeKeycloak::start().await;
    let mut sentinel = TestSentinel::start().await;
    let (a, b, _db) = two_replicas(&kc, &sentinel).await;
    let alias = unique("acme");
    let (org, contract) = seed_org(&a, &alias).await;
    let token = kc.token().sub(&unique("u")).organization(json!([alias])).sign();
    assert_eq!(facts(&a, &token).await, (200, org.clone(), contract.clone()));
    assert_eq!(facts(&b, &token).await, (200, org.clone(), contract.clone()));
    // A login shared before the failover, copied to the replica with everything else.
    let shared = kc.token().sub(&unique("u")).organization(json!([alias])).sign();
    assert_eq!(facts(&a, &shared).await, (200, org.clone(), contract.clone()));
    eventually(Duration::from_secs(10), "the replica has every login entry", || async {
        let on_primary = sentinel.logins(sentinel.primary.port).await;
        !on_primary.is_empty() && sentinel.logins(sentinel.replica.port).await == on_primary
    })
    .await;

    let stop = AtomicBool::new(false);
    let load = async {
        let mut answers = Vec::new();
        while !stop.load(Ordering::Acquire) {
            for app in [&a, &b] {
                let res = app.forward_auth("GET", "/").bearer_auth(&token).send().await;
                answers.push(match res {
                    Ok(res) => {
                        let orgs = res.headers().get("x-identity-organizations").cloned();
                        (
                            res.status().as_u16(),
                            orgs.map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default(),
                        )
                    }
                    Err(e) => (0, e.to_string()),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        answers
    };
    let failover = async {
        match how {
            Failover::Manual => {
                eventually(Duration::from_secs(20), "the sentinel accepts SENTINEL FAILOVER", || async {
                    sentinel.ask_sentinel::<()>(&["FAILOVER", MASTER]).await.is_ok()
                })
                .await
            }
            Failover::KillPrimary => sentinel.primary.kill(),
        }
        sentinel.wait_promoted().await;
        let promoted = Instant::now();
        // Both sidecars follow: their subscriptions are on the new primary. After `SENTINEL
        // FAILOVER` the old primary answers as one for about ten more seconds (until Sentinel
        // demotes it and closes its clients), so moving sooner shows that the sidecars ask
        // the sentinels; a killed primary needs a new lookup after the subscriber's backoff.
        let within = match how {
            Failover::Manual => Duration::from_secs(7),
            Failover::KillPrimary => Duration::from_secs(20),
        };
        eventually(within, "both sidecars subscribe on the new primary", || async {
            sentinel.subscribers(sentinel.replica.port).await == 2
        })
        .await;
        let moved = promoted.elapsed();
        // And keep answering a while on the new primary.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Release);
        moved
    };
    let (answers, moved) = tokio::join!(load, failover);

    let wrong: Vec<_> = answers.iter().filter(|(status, orgs)| *status != 200 || *orgs != org).collect();
    assert!(
        wrong.is_empty(),
        "{how:?}: {} of {} answers during the failover were not 200 with the organization: {:?}",
        wrong.len(),
        answers.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(answers.len() >= 20, "{how:?}: only {} answers during the failover", answers.len());
    eprintln!(
        "{how:?}: {} answers, all 200; subscriptions moved {moved:?} after the promotion",
        answers.len()
    );

    // What was shared before the failover is reconciled again: writes the old primary took
    // after the promotion are lost, so each replica replaced the global epoch on moving.
    let before = settled_queries(&b).await;
    assert_eq!(facts(&b, &shared).await, (200, org.clone(), contract.clone()));
    assert!(
        metric(&b.metrics().await, QUERIES) > before,
        "{how:?}: B served a login shared before the failover"
    );

    // An admin change on A reaches B through the new primary.
    let received = metric(&b.metrics().await, RECEIVED);
    let res = a
        .http
        .patch(a.admin_url(&format!("/admin/v1/contracts/{contract}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(facts(&a, &token).await, (200, org.clone(), String::new()));
    eventually(Duration::from_secs(5), "B receives A's invalidation and drops the contract", || async {
        facts(&b, &token).await == (200, org.clone(), String::new())
    })
    .await;
    assert!(metric(&b.metrics().await, RECEIVED) > received, "B reconciled for another reason");

    // Writes and reads go to the new primary: a login A reconciles is served by B from it.
    b_serves_what_a_reconciled(&kc, &a, &b).await;
}

#[tokio::test]
async fn when_the_primary_is_killed_during_load_cached_logins_keep_answering_and_invalidations_resume() {
    failover_during_load(Failover::KillPrimary).await;
}

#[tokio::test]
async fn on_a_sentinel_failover_during_load_cached_logins_keep_answering_and_invalidations_resume() {
    failover_during_load(Failover::Manual).await;
}

#[tokio::test]
async fn over_tls_replicas_share_logins_through_sentinel() {
    let kc = FakeKeycloak::start().await;
    let sentinel = TestSentinel::start_with(true).await;
    let (a, b, _db) = two_replicas(&kc, &sentinel).await;
    assert_eq!(sentinel.subscribers(sentinel.primary.port).await, 2);
    b_serves_what_a_reconciled(&kc, &a, &b).await;
}
