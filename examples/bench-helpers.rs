//! Helper processes and tools for `scripts/bench` (not part of the product; built with
//! `cargo build --release --example bench-helpers`).
//!
//! Servers (each binds the given loopback address, `127.0.0.1:0` by default, writes the bound
//! address to `--addr-file` and serves until killed):
//!
//! - `issuer`: a fake OIDC issuer — discovery document and JWKS (from `--jwks`), as Keycloak
//!   lays them out under `/realms/<realm>`.
//! - `echo`: the upstream app — a minimal hyper HTTP/1.1 server answering `200 ok`. A request
//!   carrying `x-bench-echo: headers` gets the headers it arrived with as its body (the
//!   script's pre-flight checks read the injected identity headers this way).
//! - `passthrough --upstream URL`: the baseline proxy — the sidecar's stack (axum + hyper-util
//!   pooled client) forwarding every request unchanged, no auth.
//! - `trivial [--headers-file F]`: the forward-auth baseline — the sidecar's server stack
//!   (axum) answering 200; with `F` (`name: value` lines), with those response headers, so the
//!   bytes on the wire match the sidecar's answer.
//!
//! Tools:
//!
//! - `jwks --key PEM --kid KID`: the public JWKS of an RSA private key (PKCS#8 PEM).
//! - `mint --kind cached|signature|users|wrong-issuer --count N …`: Keycloak-shaped RS256
//!   access tokens, one per line (see [`mint`]).
//! - `free-port`: prints a free loopback port (for Apache, which cannot report one).
//! - `report --dir DIR`: merges the raw results of one run into `results.json` and a
//!   markdown table (see [`report`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

// The fake issuer of the integration tests and the micro benchmarks: keys, JWK, JWS signing and
// the claims of a Keycloak access token, so the bench mints the tokens the tests validate.
#[allow(dead_code, reason = "the tests use more of the fake issuer than the bench does")]
#[path = "../tests/api/helpers/keys.rs"]
mod keys;

use keys::KeyMaterial;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        bail!(
            "usage: bench-helpers <issuer|echo|passthrough|trivial|jwks|mint|free-port|report> [--flag value]…"
        );
    };
    let flags = Flags::parse(rest)?;
    match command.as_str() {
        "issuer" => serve(&flags, issuer(&flags)?),
        "echo" => run(echo(flags.addr()?, flags.path("addr-file")?)),
        "passthrough" => serve(&flags, passthrough(&flags)?),
        "trivial" => serve(&flags, trivial(&flags)?),
        "jwks" => {
            let key = RsaKey::load(&flags.path("key")?, flags.get("kid")?)?;
            println!("{}", key.jwks());
            Ok(())
        }
        "mint" => mint(&flags),
        "free-port" => {
            // Bound, read, released: a small race, fine on a machine the bench owns.
            println!("{}", std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
            Ok(())
        }
        "report" => report::run(&flags.path("dir")?),
        other => bail!("unknown command {other:?}"),
    }
}

/// `--name value` pairs.
struct Flags(BTreeMap<String, String>);

impl Flags {
    fn parse(args: &[String]) -> anyhow::Result<Flags> {
        let mut map = BTreeMap::new();
        let mut it = args.iter();
        while let Some(name) = it.next() {
            let key = name.strip_prefix("--").with_context(|| format!("expected --flag, got {name:?}"))?;
            let value = it.next().with_context(|| format!("--{key} needs a value"))?;
            map.insert(key.to_owned(), value.clone());
        }
        Ok(Flags(map))
    }

    fn get(&self, name: &str) -> anyhow::Result<&str> {
        self.0.get(name).map(String::as_str).with_context(|| format!("--{name} is required"))
    }

    fn get_or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.0.get(name).map_or(default, String::as_str)
    }

    fn path(&self, name: &str) -> anyhow::Result<PathBuf> {
        self.get(name).map(PathBuf::from)
    }

    fn number(&self, name: &str) -> anyhow::Result<u64> {
        self.get(name)?.parse().with_context(|| format!("--{name} must be a whole number"))
    }

    /// The listen address: loopback only.
    fn addr(&self) -> anyhow::Result<SocketAddr> {
        let addr: SocketAddr = self.get_or("listen", "127.0.0.1:0").parse().context("--listen")?;
        anyhow::ensure!(addr.ip().is_loopback(), "--listen must be a loopback address");
        Ok(addr)
    }
}

fn run(future: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(future)
}

/// Serves an axum router the way the sidecar does (`axum::serve`, connect info).
fn serve(flags: &Flags, router: Router) -> anyhow::Result<()> {
    let addr = flags.addr()?;
    let addr_file = flags.path("addr-file")?;
    run(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        write_addr(&addr_file, listener.local_addr()?)?;
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await?;
        Ok(())
    })
}

/// Written atomically, so the script never reads half an address.
fn write_addr(file: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(&tmp, file)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Servers

/// Discovery and JWKS under `/realms/<realm>`; the issuer URL is `--issuer` (the script knows
/// the port only after binding, so the discovery document is built per request from `Host`).
fn issuer(flags: &Flags) -> anyhow::Result<Router> {
    let jwks = std::fs::read_to_string(flags.path("jwks")?).context("--jwks")?;
    let realm = flags.get_or("realm", "bench").to_owned();
    let jwks: Arc<str> = jwks.into();
    let prefix = format!("/realms/{realm}");
    let discovery = move |headers: axum::http::HeaderMap| {
        let realm = realm.clone();
        async move {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
            let issuer = format!("http://{host}/realms/{realm}");
            axum::Json(json!({
                "issuer": issuer,
                "jwks_uri": format!("{issuer}/protocol/openid-connect/certs"),
                "token_endpoint": format!("{issuer}/protocol/openid-connect/token"),
                "id_token_signing_alg_values_supported": ["RS256"],
            }))
        }
    };
    let certs = move || {
        let jwks = jwks.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], jwks.to_string()) }
    };
    Ok(Router::new()
        .route(&format!("{prefix}/.well-known/openid-configuration"), get(discovery))
        .route(&format!("{prefix}/protocol/openid-connect/certs"), get(certs)))
}

/// The upstream app: plain hyper, HTTP/1.1 keep-alive, `200 ok`.
async fn echo(addr: SocketAddr, addr_file: PathBuf) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    write_addr(&addr_file, listener.local_addr()?)?;
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|req: hyper::Request<Incoming>| async move {
                let body = if req.headers().get("x-bench-echo").is_some_and(|v| v == "headers") {
                    let mut text = String::new();
                    for (name, value) in req.headers() {
                        text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
                    }
                    Bytes::from(text)
                } else {
                    Bytes::from_static(b"ok\n")
                };
                let mut response = hyper::Response::new(Full::new(body));
                response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                Ok::<_, Infallible>(response)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// 200, optionally with a fixed header set.
fn trivial(flags: &Flags) -> anyhow::Result<Router> {
    let mut headers = axum::http::HeaderMap::new();
    if let Some(file) = flags.0.get("headers-file") {
        for line in std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?.lines() {
            if let Some((name, value)) = line.split_once(':') {
                headers.append(
                    axum::http::HeaderName::from_bytes(name.trim().as_bytes())?,
                    HeaderValue::from_str(value.trim())?,
                );
            }
        }
    }
    Ok(Router::new().fallback(move || {
        let headers = headers.clone();
        async move { (StatusCode::OK, headers) }
    }))
}

#[derive(Clone)]
struct Passthrough {
    client: Client<HttpConnector, Body>,
    upstream: Uri,
}

/// The baseline proxy: same server and client stack as the sidecar's proxy mode, no auth, no
/// header work beyond the target URI.
fn passthrough(flags: &Flags) -> anyhow::Result<Router> {
    let upstream: Uri = flags.get("upstream")?.parse().context("--upstream")?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client =
        Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).build(connector);
    Ok(Router::new().fallback(forward).with_state(Passthrough { client, upstream }))
}

async fn forward(State(state): State<Passthrough>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut uri = state.upstream.clone().into_parts();
    uri.path_and_query = pq.parse().ok();
    parts.uri = match Uri::from_parts(uri) {
        Ok(uri) => uri,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    parts.version = axum::http::Version::HTTP_11;
    match state.client.request(axum::http::Request::from_parts(parts, body)).await {
        Ok(response) => response.map(Body::new),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and tokens

/// The realm key of a bench run: an RSA key shared by `jwks` and `mint` through a PEM file.
struct RsaKey {
    kid: String,
    material: KeyMaterial,
}

impl RsaKey {
    fn load(pem: &Path, kid: &str) -> anyhow::Result<RsaKey> {
        let text = std::fs::read_to_string(pem).with_context(|| format!("cannot read {}", pem.display()))?;
        let material = KeyMaterial::rsa_from_pkcs8_pem(&text).map_err(anyhow::Error::msg)?;
        Ok(RsaKey { kid: kid.to_owned(), material })
    }

    fn jwks(&self) -> Value {
        json!({ "keys": [self.material.jwk(&self.kid, Algorithm::RS256)] })
    }

    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.kid});
        keys::jws(&header, claims, &self.material.encoding, Algorithm::RS256)
    }
}

/// Mints `--count` tokens of `--kind`, one per line, to `--out`:
///
/// - `cached`: one user, one session (`bench-cached`): the cached-login scenarios;
/// - `signature`: one user and session (`bench-signature`), every token distinct (`jti`): each
///   request misses the token cache (a signature check) but hits the login cache (no writes);
/// - `users`: a new user and session per token: every request is a login with writes;
/// - `wrong-issuer`: like `cached` but from another issuer (pre-flight: must be refused);
/// - `expired`: like `cached` but expired a minute ago (pre-flight: must be refused).
///
/// All claim `--org` (default `benchorg`) in `organization`, `aud` = [`--audience`, account],
/// `azp` = `--audience`, the realm's default roles, and expire after `--ttl` seconds.
fn mint(flags: &Flags) -> anyhow::Result<()> {
    let key = Arc::new(RsaKey::load(&flags.path("key")?, flags.get("kid")?)?);
    let kind = flags.get("kind")?.to_owned();
    let count = flags.number("count")? as usize;
    let issuer = flags.get("issuer")?.to_owned();
    let audience = flags.get_or("audience", "app").to_owned();
    let org = flags.get_or("org", "benchorg").to_owned();
    let ttl: u64 = flags.get_or("ttl", "7200").parse().context("--ttl")?;
    let out = flags.path("out")?;
    anyhow::ensure!(
        matches!(kind.as_str(), "cached" | "signature" | "users" | "wrong-issuer" | "expired"),
        "--kind must be cached, signature, users, wrong-issuer or expired"
    );
    let ttl = if kind == "expired" { -60 } else { i64::try_from(ttl).context("--ttl")? };
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    // The fake issuer's access token (the tests' and the benchmarks'), made a bench user's.
    let claims = move |i: usize| -> Value {
        let (sub, sid, user) = match kind.as_str() {
            "users" => {
                (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string(), format!("u{run_id}{i}"))
            }
            "signature" => ("bench-signature".into(), "bench-signature-session".into(), "signature".into()),
            _ => ("bench-cached".into(), "bench-cached-session".into(), "cached".into()),
        };
        let iss = if kind == "wrong-issuer" { format!("{issuer}-other") } else { issuer.clone() };
        let mut claims = keys::access_token_claims(&iss, ttl);
        for (name, value) in [
            ("aud", json!([audience, "account"])),
            ("sub", json!(sub)),
            ("azp", json!(audience)),
            ("sid", json!(sid)),
            (
                "realm_access",
                json!({"roles": ["default-roles-bench", "offline_access", "uma_authorization"]}),
            ),
            ("name", json!("Bench User")),
            ("preferred_username", json!(user)),
            ("given_name", json!("Bench")),
            ("email", json!(format!("{user}@bench.example"))),
            ("organization", json!([org])),
        ] {
            claims.insert(name.into(), value);
        }
        Value::Object(claims)
    };
    // RS256 signing is ~1 ms per token: spread it over the cores.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(count.max(1));
    let claims = Arc::new(claims);
    let chunks: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (key, claims) = (key.clone(), claims.clone());
                scope.spawn(move || {
                    (0..count).filter(|i| i % threads == t).map(|i| key.sign(&claims(i))).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("minting thread")).collect()
    });
    let mut file = std::io::BufWriter::new(std::fs::File::create(&out)?);
    for i in 0..count {
        writeln!(file, "{}", chunks[i % threads][i / threads])?;
    }
    file.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report

mod report {
    //! Merges one run's raw results (`DIR/order`, and per scenario `ID.meta`, `ID.wrk.json`,
    //! `ID.oha.json`) into `DIR/../results.json` and `DIR/../results.md`, prints the table, and
    //! draws the ratio targets as `DIR/../ratios.svg`.
    //!
    //! A scenario run in rounds has its numbers in `ID.rN.meta` / `ID.rN.wrk.json` (round N)
    //! and its shared title in `ID.meta`. Its req/s, p50 and p99 are the medians over the
    //! rounds; a ratio is computed per round from the same round's numbers and reported as the
    //! median of those per-round ratios, so one slow minute on a shared machine moves one
    //! round's ratio instead of the result. Older single-run raw files still load.

    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    use std::path::Path;

    use anyhow::Context as _;
    use serde_json::{Map, Value, json};

    /// One scenario's numbers.
    #[derive(Default)]
    struct Row {
        id: String,
        meta: BTreeMap<String, String>,
        rps: Option<f64>,
        p50_ms: Option<f64>,
        p99_ms: Option<f64>,
        requests: Option<u64>,
        errors: Option<u64>,
        json: Map<String, Value>,
        /// The rounds (number, numbers) when the scenario ran in interleaved rounds.
        rounds: Vec<(u32, Row)>,
    }

    /// The median (the mean of the middle two for an even count); `None` when empty.
    fn median(mut values: Vec<f64>) -> Option<f64> {
        values.retain(|v| v.is_finite());
        values.sort_by(f64::total_cmp);
        let n = values.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(values[n / 2]),
            _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
        }
    }

    /// `f` of two scenarios round by round (the rounds both ran), then the median of the
    /// per-round values, which it also returns; two single runs give their own value.
    fn paired(a: &Row, b: &Row, f: impl Fn(&Row, &Row) -> Option<f64>) -> Option<(f64, Vec<f64>)> {
        if a.rounds.is_empty() || b.rounds.is_empty() {
            return Some((f(a, b)?, Vec::new()));
        }
        let per_round: Vec<f64> = a
            .rounds
            .iter()
            .filter_map(|(n, x)| {
                let (_, y) = b.rounds.iter().find(|(m, _)| m == n)?;
                f(x, y)
            })
            .collect();
        Some((median(per_round.clone())?, per_round))
    }

    /// "a, b, c" with `digits` decimals.
    fn list(values: &[f64], digits: usize) -> String {
        values.iter().map(|v| format!("{v:.digits$}")).collect::<Vec<_>>().join(", ")
    }

    impl Row {
        fn meta_f64(&self, key: &str) -> Option<f64> {
            self.meta.get(key).and_then(|v| v.parse().ok())
        }

        fn ok(&self) -> bool {
            self.meta.get("status").is_none_or(|s| s == "ok")
        }
    }

    fn load_row(dir: &Path, id: &str) -> anyhow::Result<Row> {
        let mut row = load_one(dir, id)?;
        for n in 1u32.. {
            let rid = format!("{id}.r{n}");
            let exists = |ext: &str| dir.join(format!("{rid}.{ext}")).exists();
            if !exists("meta") && !exists("wrk.json") && !exists("oha.json") {
                break;
            }
            row.rounds.push((n, load_one(dir, &rid)?));
        }
        if !row.rounds.is_empty() {
            combine(&mut row);
        }
        Ok(row)
    }

    /// A scenario's figures from its rounds: medians for rates and latencies, sums for
    /// requests, errors and CPU seconds (so req per CPU-second spans every round), the highest
    /// peak RSS; the wrk summary kept in `json` is the median round's.
    fn combine(row: &mut Row) {
        let rounds = &row.rounds;
        row.rps = median(rounds.iter().filter_map(|(_, r)| r.rps).collect());
        row.p50_ms = median(rounds.iter().filter_map(|(_, r)| r.p50_ms).collect());
        row.p99_ms = median(rounds.iter().filter_map(|(_, r)| r.p99_ms).collect());
        let sum = |f: fn(&Row) -> Option<u64>| {
            let values: Vec<u64> = rounds.iter().filter_map(|(_, r)| f(r)).collect();
            (!values.is_empty()).then(|| values.iter().sum())
        };
        row.requests = sum(|r| r.requests);
        row.errors = sum(|r| r.errors);
        let cpu: Vec<f64> = rounds.iter().filter_map(|(_, r)| r.meta_f64("cpu_secs")).collect();
        if !cpu.is_empty() {
            row.meta.insert("cpu_secs".into(), format!("{:.2}", cpu.iter().sum::<f64>()));
        }
        if let Some(hwm) = rounds.iter().filter_map(|(_, r)| r.meta_f64("hwm_kib")).reduce(f64::max) {
            row.meta.insert("hwm_kib".into(), format!("{hwm:.0}"));
        }
        // Instruction counts (BENCH_PERF=stat) come from one round: per request of that round.
        if let Some((_, r)) = rounds.iter().find(|(_, r)| r.meta.contains_key("instructions_user")) {
            for key in ["instructions_user", "instructions_kernel"] {
                if let Some(v) = r.meta.get(key) {
                    row.meta.insert(key.into(), v.clone());
                }
            }
            if let Some(n) = r.requests {
                row.meta.insert("instructions_requests".into(), n.to_string());
            }
        }
        if let Some(mid) = row.rps
            && let Some((_, r)) = rounds.iter().filter(|(_, r)| r.rps.is_some()).min_by(|(_, a), (_, b)| {
                (a.rps.unwrap_or(0.0) - mid).abs().total_cmp(&(b.rps.unwrap_or(0.0) - mid).abs())
            })
        {
            row.json = r.json.clone();
        }
    }

    fn load_one(dir: &Path, id: &str) -> anyhow::Result<Row> {
        let mut row = Row { id: id.to_owned(), ..Row::default() };
        if let Ok(text) = std::fs::read_to_string(dir.join(format!("{id}.meta"))) {
            for line in text.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    row.meta.insert(k.trim().to_owned(), v.trim().to_owned());
                }
            }
        }
        let wrk = dir.join(format!("{id}.wrk.json"));
        let oha = dir.join(format!("{id}.oha.json"));
        if wrk.exists() {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&wrk)?)
                .with_context(|| format!("{} is not JSON", wrk.display()))?;
            let requests = v["requests"].as_u64().unwrap_or(0);
            let secs = v["window_us"].as_f64().unwrap_or(0.0) / 1e6;
            let errors = ["connect", "read", "write", "status", "timeout"]
                .iter()
                .map(|k| v["errors"][k].as_u64().unwrap_or(0))
                .sum::<u64>();
            row.requests = Some(requests);
            row.errors = Some(errors);
            row.rps = (secs > 0.0).then(|| requests as f64 / secs);
            row.p50_ms = v["latency_us"]["p50"].as_f64().map(|us| us / 1000.0);
            row.p99_ms = v["latency_us"]["p99"].as_f64().map(|us| us / 1000.0);
            row.json.insert("tool".into(), json!("wrk"));
            row.json.insert("wrk".into(), v);
        } else if oha.exists() {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&oha)?)
                .with_context(|| format!("{} is not JSON", oha.display()))?;
            let summary = &v["summary"];
            let total: u64 = v["statusCodeDistribution"]
                .as_object()
                .map(|m| m.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0);
            let ok: u64 = v["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
            // Requests still in flight when `-z` ends are "aborted due to deadline": not errors.
            let failed: u64 = v["errorDistribution"]
                .as_object()
                .map(|m| {
                    m.iter().filter(|(k, _)| !k.contains("deadline")).filter_map(|(_, n)| n.as_u64()).sum()
                })
                .unwrap_or(0);
            row.requests = Some(total);
            row.errors = Some(total.saturating_sub(ok) + failed);
            row.rps = summary["requestsPerSec"].as_f64();
            row.p50_ms = v["latencyPercentiles"]["p50"].as_f64().map(|s| s * 1000.0);
            row.p99_ms = v["latencyPercentiles"]["p99"].as_f64().map(|s| s * 1000.0);
            row.json.insert("tool".into(), json!("oha"));
            row.json.insert(
                "oha".into(),
                json!({"summary": summary, "latencyPercentiles": v["latencyPercentiles"],
                       "statusCodeDistribution": v["statusCodeDistribution"],
                       "errorDistribution": v["errorDistribution"]}),
            );
        }
        Ok(row)
    }

    #[derive(Default)]
    struct Target {
        name: &'static str,
        value: Option<f64>,
        unit: &'static str,
        rule: String,
        pass: Option<bool>,
        note: String,
        /// A ratio's or a p99 difference's per-round values (same round's numbers), in round
        /// order; `value` is their median. Empty for a single run and for other targets.
        rounds: Vec<f64>,
        /// A ratio target's minimum (drawn as the marker line of the chart).
        min: Option<f64>,
    }

    impl Target {
        /// The note followed by the per-round values, when there are several.
        fn how(&self) -> String {
            if self.rounds.len() > 1 {
                format!("{}; median of {} rounds: {}", self.note, self.rounds.len(), list(&self.rounds, 2))
            } else {
                self.note.clone()
            }
        }
    }

    pub fn run(dir: &Path) -> anyhow::Result<()> {
        let order = std::fs::read_to_string(dir.join("order")).context("no scenarios were recorded")?;
        let mut rows = Vec::new();
        for id in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !rows.iter().any(|r: &Row| r.id == id) {
                rows.push(load_row(dir, id)?);
            }
        }
        let run: BTreeMap<String, String> = std::fs::read_to_string(dir.join("run.meta"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let get = |id: &str| rows.iter().find(|r| r.id == id && r.ok() && r.rps.is_some());
        // A/B per round (the rounds both ran), then the median; a single run is its own ratio.
        let ratios = |a: &str, b: &str| paired(get(a)?, get(b)?, |x, y| Some(x.rps? / y.rps?));
        let ratio = |a: &str, b: &str| ratios(a, b).map(|(v, _)| v);
        let per_round = |a: &str, b: &str| ratios(a, b).map(|(_, r)| r).unwrap_or_default();
        let mut targets = Vec::new();
        let mut ratio_target = |name, a: &str, b: &str, min: f64, what: &str| {
            let value = ratio(a, b);
            targets.push(Target {
                name,
                value,
                unit: "×",
                rule: format!("≥ {min}"),
                pass: value.map(|v| v >= min),
                note: if value.is_some() {
                    what.to_owned()
                } else {
                    format!("not measured ({a} or {b} missing)")
                },
                rounds: per_round(a, b),
                min: Some(min),
            });
        };
        ratio_target(
            "proxy cached / pass-through proxy",
            "proxy_cached",
            "passthrough",
            0.8,
            "requests/s ratio, same round",
        );
        // Issue "performance round 2": forward-auth is judged against a handler that sends
        // the same header set, so the bytes of the headers count on both sides.
        ratio_target(
            "forward-auth cached / trivial handler sending the same headers",
            "fa_cached",
            "trivial_headers",
            0.9,
            "requests/s ratio, same round",
        );
        // p99(a) − p99(b), of the rounds where both ran fine.
        let p99_added = |a: &Row, b: &Row| {
            paired(a, b, |x, y| {
                if x.ok() && y.ok() { Some(x.p99_ms? - y.p99_ms?).filter(|v| v.is_finite()) } else { None }
            })
        };
        for (name, a, b) in [
            ("p99 added latency at 1,000 req/s, proxy", "rate_proxy", "rate_direct"),
            ("p99 added latency at 1,000 req/s, forward-auth", "rate_fa", "rate_trivial"),
        ] {
            let (ra, rb) = (rows.iter().find(|r| r.id == a), rows.iter().find(|r| r.id == b));
            let measured = match (ra, rb) {
                (Some(x), Some(y)) if x.ok() && y.ok() => p99_added(x, y),
                _ => None,
            };
            let (value, rounds) = match measured {
                Some((v, r)) => (Some(v), r),
                None => (None, Vec::new()),
            };
            // A skipped or failed run says why in its own note (a round's, when in rounds).
            let note = |r: &Row| {
                r.meta
                    .get("note")
                    .cloned()
                    .or_else(|| r.rounds.iter().find_map(|(_, x)| x.meta.get("note").cloned()))
            };
            let why = ra.or(rb).and_then(note).unwrap_or_else(|| "constant-rate runs missing".into());
            targets.push(Target {
                name,
                value,
                unit: "ms",
                rule: "≤ 1 ms".into(),
                pass: value.map(|v| v <= 1.0),
                note: if value.is_some() {
                    format!("oha -q 1000 with latency correction: p99({a}) − p99({b}), same round")
                } else {
                    format!("not measured: {why}")
                },
                rounds,
                ..Target::default()
            });
        }
        if let Some(value) = ratio("fa_cached", "trivial") {
            targets.push(Target {
                name: "forward-auth cached / trivial handler",
                value: Some(value),
                unit: "×",
                rule: "informational".into(),
                pass: None,
                note: "the trivial handler sends no identity headers".into(),
                rounds: per_round("fa_cached", "trivial"),
                min: None,
            });
        }
        {
            let peer = rows.iter().find(|r| r.id == "peer_apache");
            let value = ratio("proxy_cached", "peer_apache");
            let note = match (value, peer) {
                (Some(_), _) => {
                    "proxy cached vs Apache + mod_auth_openidc, same token and upstream".to_owned()
                }
                (None, Some(p)) => {
                    format!("not measured: {}", p.meta.get("note").cloned().unwrap_or_default())
                }
                (None, None) => "not measured".into(),
            };
            targets.push(Target {
                name: "proxy cached / mod_auth_openidc peer",
                value,
                unit: "×",
                rule: "≥ 4".into(),
                pass: value.map(|v| v >= 4.0),
                note,
                rounds: per_round("proxy_cached", "peer_apache"),
                min: Some(4.0),
            });
        }
        {
            // HAProxy verifies RSA on every request; the sidecar's token cache spares it that.
            let peer = rows.iter().find(|r| r.id == "peer_haproxy_jwt");
            let value = ratio("proxy_cached", "peer_haproxy_jwt");
            let note = match (value, peer) {
                (Some(_), _) => "proxy cached vs HAProxy jwt_verify gate, same token and upstream".to_owned(),
                (None, Some(p)) => {
                    format!("not measured: {}", p.meta.get("note").cloned().unwrap_or_default())
                }
                (None, None) => "not measured".into(),
            };
            targets.push(Target {
                name: "proxy cached / HAProxy JWT gate",
                value,
                unit: "×",
                rule: "≥ 1.6".into(),
                pass: value.map(|v| v >= 1.6),
                note,
                rounds: per_round("proxy_cached", "peer_haproxy_jwt"),
                min: Some(1.6),
            });
        }
        if let Some(value) = ratio("passthrough", "peer_haproxy_pass") {
            targets.push(Target {
                name: "sidecar stack pass-through / HAProxy pass-through",
                value: Some(value),
                unit: "×",
                rule: "informational".into(),
                pass: None,
                note: "the axum pass-through (the proxy target's baseline) against a C proxy".into(),
                rounds: per_round("passthrough", "peer_haproxy_pass"),
                min: None,
            });
        }
        {
            let sig = get("signature");
            let value =
                sig.and_then(|r| Some(r.requests? as f64 / r.meta_f64("cpu_secs").filter(|c| *c > 0.0)?));
            targets.push(Target {
                name: "RS256 validations per sidecar CPU-second",
                value,
                unit: "/s/core",
                rule: "≥ 10,000".into(),
                pass: value.map(|v| v >= 10_000.0),
                note: "signature-path requests ÷ the sidecar's CPU seconds (/proc/PID/stat), whole request included"
                    .into(),
                ..Target::default()
            });
        }
        {
            let value = get("storm_pg").and_then(|r| r.rps);
            targets.push(Target {
                name: "login storm on PostgreSQL",
                value,
                unit: "logins/s",
                rule: "≥ 2,000".into(),
                pass: value.map(|v| v >= 2000.0),
                note: rows
                    .iter()
                    .find(|r| r.id == "storm_pg")
                    .filter(|r| !r.ok())
                    .and_then(|r| r.meta.get("note").cloned())
                    .unwrap_or_else(|| {
                        "each request a new user and session: user, membership, attachment, audit".into()
                    }),
                ..Target::default()
            });
        }
        {
            let value = get("storm_sqlite").and_then(|r| r.p99_ms);
            targets.push(Target {
                name: "login storm on SQLite, p99",
                value,
                unit: "ms",
                rule: "≤ 100 ms".into(),
                pass: value.map(|v| v <= 100.0),
                note: "wrk at saturation, every request a new user and session (one writer at a time)".into(),
                ..Target::default()
            });
        }
        {
            let mem = rows.iter().find(|r| r.id == "memory" && r.ok());
            let value = mem.and_then(|r| {
                let before = r.meta_f64("rss_before_kib")?;
                let after = r.meta_f64("rss_after_kib")?;
                let logins = r.meta_f64("logins").filter(|n| *n > 0.0)?;
                Some((after - before) * 1024.0 / logins)
            });
            targets.push(Target {
                name: "RSS per cached login",
                value,
                unit: "bytes",
                rule: "≤ 4,096".into(),
                pass: value.map(|v| v <= 4096.0),
                note: mem
                    .map(|r| {
                        format!(
                            "(VmRSS after − before) ÷ {} logins via forward-auth",
                            r.meta.get("logins").cloned().unwrap_or_default()
                        )
                    })
                    .unwrap_or_else(|| "not measured".into()),
                ..Target::default()
            });
        }

        // Markdown.
        let mut md = String::new();
        let _ = writeln!(md, "## identity-sidecar benchmark ({} mode)\n", run.get("mode").map_or("?", |s| s));
        for key in [
            "started_at",
            "commit",
            "sidecar",
            "cpus",
            "kernel",
            "loadavg_start",
            "loadavg_end",
            "rounds",
            "wrk",
            "oha",
        ] {
            if let Some(v) = run.get(key) {
                let _ = writeln!(md, "- {key}: {v}");
            }
        }
        let _ = writeln!(md);
        let _ =
            writeln!(md, "| scenario | req/s | p50 ms | p99 ms | peak RSS MiB | requests | errors | notes |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---|");
        let num = |v: Option<f64>, digits: usize| v.map_or("–".to_owned(), |v| format!("{v:.digits$}"));
        for r in &rows {
            let title = r.meta.get("title").cloned().unwrap_or_else(|| r.id.clone());
            let mut notes = Vec::new();
            if !r.ok() {
                notes.push(format!("**{}**", r.meta.get("status").cloned().unwrap_or_default()));
            }
            if let Some(n) = r.meta.get("note") {
                notes.push(n.clone());
            }
            let round_rps: Vec<f64> = r.rounds.iter().filter_map(|(_, x)| x.rps).collect();
            if round_rps.len() > 1 {
                notes.push(format!("median of {} rounds: {} req/s", round_rps.len(), list(&round_rps, 0)));
            }
            if let Some(cpu) = r.meta_f64("cpu_secs")
                && let Some(req) = r.requests
                && cpu > 0.0
            {
                notes.push(format!(
                    "{:.0} req per CPU-s of {}",
                    req as f64 / cpu,
                    r.meta.get("process").map_or("it", |s| s)
                ));
            }
            let instructions_requests = r.meta.get("instructions_requests").and_then(|n| n.parse().ok());
            if let (Some(user), Some(kernel), Some(req)) = (
                r.meta_f64("instructions_user"),
                r.meta_f64("instructions_kernel"),
                instructions_requests.or(r.requests),
            ) && req > 0
            {
                notes.push(format!(
                    "{:.0}k instructions per request (user {:.0}k, kernel {:.0}k)",
                    (user + kernel) / req as f64 / 1e3,
                    user / req as f64 / 1e3,
                    kernel / req as f64 / 1e3
                ));
            }
            let hwm = r.meta_f64("hwm_kib").map(|k| k / 1024.0);
            let _ = writeln!(
                md,
                "| {title} | {} | {} | {} | {} | {} | {} | {} |",
                num(r.rps, 0),
                num(r.p50_ms, 3),
                num(r.p99_ms, 3),
                num(hwm, 1),
                r.requests.map_or("–".into(), |n| n.to_string()),
                r.errors.map_or("–".into(), |n| n.to_string()),
                notes.join("; ")
            );
        }
        let _ = writeln!(md, "\n| target | measured | rule | result | how |");
        let _ = writeln!(md, "|---|---:|---|---|---|");
        for t in &targets {
            let value = t.value.map_or("–".to_owned(), |v| match t.unit {
                "×" => format!("{v:.2} ×"),
                "ms" => format!("{v:.3} ms"),
                unit => format!("{v:.0} {unit}"),
            });
            let result = match t.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None if t.value.is_some() => "–",
                None => "not measured",
            };
            let _ = writeln!(md, "| {} | {value} | {} | {result} | {} |", t.name, t.rule, t.how());
        }

        // JSON.
        let scenarios: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("id".into(), json!(r.id));
                for (k, v) in &r.meta {
                    let v = v.parse::<f64>().map_or_else(|_| json!(v), |n| json!(n));
                    o.insert(k.clone(), v);
                }
                o.insert("requests_per_sec".into(), json!(r.rps));
                o.insert("p50_ms".into(), json!(r.p50_ms));
                o.insert("p99_ms".into(), json!(r.p99_ms));
                o.insert("requests".into(), json!(r.requests));
                o.insert("errors".into(), json!(r.errors));
                o.insert("peak_rss_kib".into(), json!(r.meta_f64("hwm_kib")));
                o.extend(r.json.clone());
                if !r.rounds.is_empty() {
                    let rounds: Vec<Value> = r
                        .rounds
                        .iter()
                        .map(|(n, x)| {
                            json!({"round": n, "requests_per_sec": x.rps, "p50_ms": x.p50_ms, "p99_ms": x.p99_ms,
                                   "requests": x.requests, "errors": x.errors,
                                   "cpu_secs": x.meta_f64("cpu_secs"), "peak_rss_kib": x.meta_f64("hwm_kib")})
                        })
                        .collect();
                    o.insert("rounds".into(), json!(rounds));
                }
                Value::Object(o)
            })
            .collect();
        let targets_json: Vec<Value> = targets
            .iter()
            .map(|t| {
                let mut o = json!({"name": t.name, "value": t.value, "unit": t.unit, "rule": t.rule, "pass": t.pass, "note": t.note});
                if !t.rounds.is_empty() {
                    o["rounds"] = json!(t.rounds);
                    o["aggregate"] = json!("median of the per-round ratios");
                }
                o
            })
            .collect();
        let out = json!({"run": run, "scenarios": scenarios, "targets": targets_json});
        let parent = dir.parent().unwrap_or(dir);
        std::fs::write(parent.join("results.json"), serde_json::to_string_pretty(&out)? + "\n")?;
        std::fs::write(parent.join("results.md"), &md)?;
        std::fs::write(parent.join("ratios.svg"), svg(&targets, &run))?;
        print!("{md}");
        Ok(())
    }

    fn xml_escape(text: &str) -> String {
        text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
    }

    /// The ratio targets as a horizontal bar chart: one bar per target at its measured median,
    /// green when met and red when not, the target as a dark marker line, each round's ratio as
    /// a small dot. Hand-written SVG text: a few dozen elements need no plotting crate, and the
    /// file stays readable in a diff when committed to the docs.
    fn svg(targets: &[Target], run: &BTreeMap<String, String>) -> String {
        let bars: Vec<&Target> = targets.iter().filter(|t| t.unit == "×" && t.min.is_some()).collect();
        // About 7.5 px per character of a 13 px sans-serif label, so the longest fits.
        let longest = bars.iter().map(|t| t.name.chars().count()).max().unwrap_or(0);
        let label_w = (longest as f64 * 7.5 + 20.0).max(300.0);
        let (plot_w, right_w, row_h, top) = (380.0, 150.0, 46.0, 80.0);
        let width = label_w + plot_w + right_w;
        let height = top + row_h * bars.len() as f64 + 40.0;
        let most = bars
            .iter()
            .flat_map(|t| t.value.into_iter().chain(t.min).chain(t.rounds.iter().copied()))
            .fold(1.0_f64, f64::max);
        // Axis end: the next whole number above everything drawn, with a little room.
        let axis_max = (most * 1.05).ceil();
        let step = if axis_max <= 2.0 {
            0.25
        } else if axis_max <= 5.0 {
            0.5
        } else {
            1.0
        };
        let x = |v: f64| label_w + v.clamp(0.0, axis_max) / axis_max * plot_w;
        let rounds =
            run.get("rounds").map_or(String::new(), |n| format!(", median of {n} interleaved rounds"));
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="13">"#
        );
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="10" y="22" font-size="15" font-weight="bold">identity-sidecar: throughput ratio targets{}</text>"#,
            xml_escape(&rounds)
        );
        let _ = writeln!(
            out,
            r##"<text x="10" y="42" fill="#555">scripts/bench {} mode, commit {}, {} CPUs, {}</text><text x="10" y="60" fill="#555">bar: measured median; line: target; dots: each round's ratio</text>"##,
            xml_escape(run.get("mode").map_or("?", |s| s)),
            xml_escape(run.get("commit").map_or("?", |s| s)),
            xml_escape(run.get("cpus").map_or("?", |s| s)),
            xml_escape(run.get("started_at").map_or("?", |s| s)),
        );
        // Grid and axis labels.
        let bottom = top + row_h * bars.len() as f64;
        let mut v = 0.0;
        while v <= axis_max + 1e-9 {
            let _ = writeln!(
                out,
                r##"<line x1="{0:.1}" y1="{top:.1}" x2="{0:.1}" y2="{bottom:.1}" stroke="#ddd"/><text x="{0:.1}" y="{1:.1}" text-anchor="middle" fill="#555">{v}×</text>"##,
                x(v),
                bottom + 16.0
            );
            v += step;
        }
        for (i, t) in bars.iter().enumerate() {
            let y = top + row_h * i as f64;
            let mid = y + row_h / 2.0;
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                label_w - 10.0,
                mid + 4.0,
                xml_escape(t.name)
            );
            let (colour, verdict) = match t.pass {
                Some(true) => ("#2e7d32", "PASS"),
                Some(false) => ("#c62828", "FAIL"),
                None => ("#9e9e9e", "not measured"),
            };
            if let Some(value) = t.value {
                let _ = writeln!(
                    out,
                    r#"<rect x="{label_w:.1}" y="{:.1}" width="{:.1}" height="18" fill="{colour}"/>"#,
                    mid - 9.0,
                    x(value) - label_w
                );
                for r in &t.rounds {
                    let _ = writeln!(
                        out,
                        r#"<circle cx="{:.1}" cy="{mid:.1}" r="3" fill="white" stroke="black"/>"#,
                        x(*r)
                    );
                }
            }
            if let Some(min) = t.min {
                let _ = writeln!(
                    out,
                    r#"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="black" stroke-width="3"/><text x="{0:.1}" y="{3:.1}" text-anchor="middle" font-size="11">target {4}</text>"#,
                    x(min),
                    mid - 15.0,
                    mid + 15.0,
                    mid - 17.0,
                    xml_escape(&t.rule)
                );
            }
            let shown = t.value.map_or("–".to_owned(), |v| format!("{v:.2} ×"));
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" fill="{colour}" font-weight="bold">{shown} {verdict}</text>"#,
                label_w + plot_w + 12.0,
                mid + 4.0
            );
        }
        out.push_str("</svg>\n");
        out
    }
}
