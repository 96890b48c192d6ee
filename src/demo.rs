//! `identity-sidecar demo`: the real server on embedded defaults (SQLite in a data directory,
//! in-memory cache), a development issuer on loopback, an echo upstream — or the user's own
//! app with `--upstream URL` (docs/contract.md §8 *(v2)*) — a sample organization with contracts, and
//! ready-to-paste `curl` commands with tokens: also a learner of two organizations who switches
//! between them (§10) and a manager generating codes for their organization (§11).
//!
//! The development issuer lives only here: nothing in the configuration can start it, so
//! `serve` can never trust tokens it mints. It signs ES256 access tokens shaped like
//! Keycloak's (with an `organization` claim) using an ephemeral key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::config::Config;
use crate::entitlements::Signer;
use crate::store::memberships::Flags;
use crate::store::model::{MembershipSource, MembershipType, NewContract, NewOrganization};
use crate::store::{Store, contracts, memberships, organizations, users};
use crate::{App, AppHandle};

/// Where and how the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Public port of the sidecar (admin = port + 1).
    pub port: u16,
    /// Where the SQLite file goes.
    pub data_dir: PathBuf,
    /// The user's own app (`http://…`) to front instead of the built-in echo app.
    pub upstream: Option<String>,
}

/// The organization every demo user belongs to, and its Keycloak id.
const ORG: &str = "acme";
const ORG_ID: &str = "6b3c8f9e-1f57-4c8a-9d8e-2f3a4b5c6d7e";
const AUDIENCE: &str = "demo-app";
/// A second Keycloak-linked organization, so a learner in both can switch (docs/contract.md §10).
const ORG2: &str = "globex";
const ORG2_ID: &str = "0d9a7c61-5e2b-4f38-b1c4-8a7e6f5d4c3b";
/// The sample manager of [`ORG`] (docs/contract.md §11).
const MANAGER: &str = "erin";

/// A running demo: the sidecar and its helpers.
pub struct Demo {
    pub app: AppHandle,
    pub issuer: String,
    /// The user's app given with `--upstream`, or `None` for the built-in echo app.
    pub own_app: Option<String>,
    pub commands: Vec<(String, String)>,
    _helpers: Vec<tokio::task::JoinHandle<()>>,
}

/// The development issuer: discovery, JWKS and a token endpoint for sample users.
#[derive(Clone)]
struct Issuer {
    url: String,
    signer: std::sync::Arc<Signer>,
}

impl Issuer {
    fn token(&self, user: &str, organizations: Value, roles: &[&str], ttl_secs: u64) -> String {
        let now = crate::auth::authenticator::unix_now();
        let claims = json!({
            "iss": self.url,
            "sub": format!("demo-{user}"),
            "aud": "account",
            "azp": AUDIENCE,
            "typ": "Bearer",
            "iat": now,
            "exp": now + ttl_secs,
            "sid": Uuid::new_v4().to_string(),
            "scope": "openid email profile organization:*",
            "email": format!("{user}@example.org"),
            "email_verified": true,
            "preferred_username": user,
            "name": format!("{} Example", capitalise(user)),
            "given_name": capitalise(user),
            "family_name": "Example",
            "realm_access": {"roles": roles},
            "organization": organizations,
        });
        self.signer.sign(&claims).expect("an ES256 key signs JSON claims")
    }
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

async fn discovery(State(issuer): State<Issuer>) -> impl IntoResponse {
    axum::Json(json!({
        "issuer": issuer.url,
        "jwks_uri": format!("{}/protocol/openid-connect/certs", issuer.url),
        "token_endpoint": format!("{}/protocol/openid-connect/token", issuer.url),
        "id_token_signing_alg_values_supported": ["ES256"],
    }))
}

async fn certs(State(issuer): State<Issuer>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], issuer.signer.jwks_bytes())
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    user: String,
}

/// `POST …/token?user=NAME`: a fresh 12-hour token for a sample user (a member of `acme`).
async fn mint(State(issuer): State<Issuer>, Query(q): Query<TokenQuery>) -> impl IntoResponse {
    let user: String = q.user.chars().filter(|c| c.is_ascii_alphanumeric()).take(32).collect();
    axum::Json(json!({
        "access_token": issuer.token(&user, json!({ORG: {"id": ORG_ID}}), &["learner"], 12 * 3600),
        "token_type": "Bearer",
        "expires_in": 12 * 3600,
    }))
}

/// The demo app behind the sidecar: answers with what it received.
async fn echo(method: Method, uri: Uri, headers: HeaderMap) -> impl IntoResponse {
    let received: serde_json::Map<String, Value> = headers
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-identity-") || n.as_str() == "x-userinfo")
        .map(|(n, v)| (n.as_str().to_owned(), json!(v.to_str().unwrap_or("<binary>"))))
        .collect();
    axum::Json(
        json!({"app": "demo upstream", "method": method.as_str(), "uri": uri.to_string(), "identity_headers": received}),
    )
}

async fn spawn_router(router: Router) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((addr, task))
}

/// Starts everything and returns the commands to print.
pub async fn start(options: DemoOptions) -> anyhow::Result<Demo> {
    if let Some(url) = &options.upstream {
        check_upstream(url)?;
    }
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("cannot create {}", options.data_dir.display()))?;

    let issuer_listener = TcpListener::bind("127.0.0.1:0").await?;
    let issuer_url = format!("http://{}/realms/demo", issuer_listener.local_addr()?);
    let issuer = Issuer { url: issuer_url.clone(), signer: std::sync::Arc::new(Signer::ephemeral()?) };
    let issuer_router = Router::new()
        .route("/realms/demo/.well-known/openid-configuration", get(discovery))
        .route("/realms/demo/protocol/openid-connect/certs", get(certs))
        .route("/realms/demo/protocol/openid-connect/token", post(mint))
        .with_state(issuer.clone());
    let issuer_task = tokio::spawn(async move {
        let _ = axum::serve(issuer_listener, issuer_router).await;
    });
    let mut helpers = vec![issuer_task];
    let upstream = match &options.upstream {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let (addr, task) = spawn_router(Router::new().fallback(any(echo))).await?;
            helpers.push(task);
            format!("http://{addr}")
        }
    };

    let admin_token = Uuid::new_v4().simple().to_string();
    let admin_sha = hex::encode(sha2::Sha256::digest(admin_token.as_bytes()));
    let db = options.data_dir.join("demo.db");
    let (public_port, admin_port) = (options.port, options.port.wrapping_add(1));
    let env = [
        ("SIDECAR__OIDC__ISSUER", issuer_url.clone()),
        ("SIDECAR__OIDC__AUDIENCES", json!([AUDIENCE]).to_string()),
        ("SIDECAR__SERVER__LISTEN", format!("127.0.0.1:{public_port}")),
        ("SIDECAR__SERVER__ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
        ("SIDECAR__UPSTREAM__URL", upstream.clone()),
        ("SIDECAR__DATABASE__URL", format!("sqlite://{}?mode=rwc", db.display())),
        ("SIDECAR__AUTH__RULES", r#"[{"prefix":"/courses","require":true}]"#.to_string()),
        ("SIDECAR__ADMIN__TOKEN_SHA256", json!([{"name": "demo", "sha256": admin_sha}]).to_string()),
        ("SIDECAR__ADMIN__DELEGATE_TO_MANAGERS", "true".to_string()),
    ];
    let config = Config::load(None, env.into_iter().map(|(k, v)| (k.to_owned(), v)))?;
    let store = Store::connect(config.database_url(), 2).await?;
    store.migrate().await?;
    seed(&store).await?;
    store.close().await;

    let app = App::build(config).await?.spawn();
    wait_ready(admin_port).await?;

    let public = format!("http://127.0.0.1:{public_port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    let code = generate_code(&admin, &admin_token).await?;
    let alice = issuer.token("alice", json!({ORG: {"id": ORG_ID}}), &["learner"], 12 * 3600);
    let bob = issuer.token("bob", json!([]), &["learner"], 12 * 3600);
    let dana =
        issuer.token("dana", json!({ORG: {"id": ORG_ID}, ORG2: {"id": ORG2_ID}}), &["learner"], 12 * 3600);
    let erin = issuer.token(MANAGER, json!({ORG: {"id": ORG_ID}}), &["learner"], 12 * 3600);
    let proxy = match &options.upstream {
        None => (
            "Proxy mode: alice (a member of acme) reaches the app; see the identity headers it received"
                .into(),
            format!("curl -s -H 'Authorization: Bearer {alice}' {public}/courses/intro"),
        ),
        Some(url) => (
            format!(
                "Proxy mode: alice (a member of acme) reaches your app at {url}; it receives her X-Identity-* headers (the forward-auth answer below lists them)"
            ),
            format!("curl -s -i -H 'Authorization: Bearer {alice}' {public}/"),
        ),
    };
    let commands = vec![
        proxy,
        (
            "Forward-auth: what APISIX or nginx asks the sidecar (the identity headers come back)".into(),
            format!(
                "curl -s -i -H 'Authorization: Bearer {alice}' -H 'X-Forwarded-Method: GET' -H 'X-Forwarded-Uri: /courses/intro' {public}/_sidecar/auth"
            ),
        ),
        (
            "Who am I: alice's identity and entitlements".into(),
            format!("curl -s -H 'Authorization: Bearer {alice}' {public}/_sidecar/me"),
        ),
        ("Anonymous on a protected path: 401".into(), format!("curl -s -i {public}/courses/intro")),
        (
            "Bob has no organization yet".into(),
            format!("curl -s -H 'Authorization: Bearer {bob}' {public}/_sidecar/me"),
        ),
        (
            "Bob redeems an enrollment code for acme's premium track (201; 200 when repeated)".into(),
            format!(
                "curl -s -X POST -H 'Authorization: Bearer {bob}' -H 'Content-Type: application/json' -d '{{\"code\":\"{code}\"}}' {public}/_sidecar/enrollment-codes/redeem"
            ),
        ),
        (
            "Bob's very next request carries acme and the premium contract".into(),
            format!("curl -s -H 'Authorization: Bearer {bob}' {public}/_sidecar/me"),
        ),
        (
            "Admin: what reconciling carol into acme would change (dry run, writes nothing)".into(),
            format!(
                "curl -s -X POST -H 'Authorization: Bearer {admin_token}' -H 'Content-Type: application/json' -d '{{\"organizations\":[\"acme\"]}}' '{admin}/admin/v1/reconcile/users/demo-carol?dry_run=true'"
            ),
        ),
        (
            "Admin: the organizations (static demo admin token)".into(),
            format!("curl -s -H 'Authorization: Bearer {admin_token}' {admin}/admin/v1/organizations"),
        ),
        (
            "Admin: acme's contracts with seats used".into(),
            format!(
                "curl -s -H 'Authorization: Bearer {admin_token}' '{admin}/admin/v1/contracts?organization=acme'"
            ),
        ),
        (
            "dana belongs to acme and globex: no active organization until she picks one".into(),
            format!("curl -s -H 'Authorization: Bearer {dana}' {public}/_sidecar/active-organization"),
        ),
        (
            "dana switches her session to globex".into(),
            format!(
                "curl -s -X PUT -H 'Authorization: Bearer {dana}' -H 'Content-Type: application/json' -d '{{\"organization\":\"globex\"}}' {public}/_sidecar/active-organization"
            ),
        ),
        (
            "Her very next request carries X-Identity-Active-Organization: globex".into(),
            format!(
                "curl -s -i -H 'Authorization: Bearer {dana}' -H 'X-Forwarded-Method: GET' -H 'X-Forwarded-Uri: /courses/intro' {public}/_sidecar/auth"
            ),
        ),
        (
            "erin, a manager of acme, generates codes for acme's premium track on the public port (201)"
                .into(),
            format!(
                "curl -s -i -X POST -H 'Authorization: Bearer {erin}' -H 'Content-Type: application/json' -d '{{\"count\":2}}' {public}/_sidecar/manage/organizations/acme/contracts/acme-premium/codes"
            ),
        ),
        (
            "erin manages only acme: globex answers 404".into(),
            format!(
                "curl -s -o /dev/null -w '%{{http_code}}\\n' -H 'Authorization: Bearer {erin}' {public}/_sidecar/manage/organizations/globex/contracts"
            ),
        ),
        (
            "A fresh token for any sample user from the development issuer".into(),
            format!("curl -s -X POST '{issuer_url}/protocol/openid-connect/token?user=carol'"),
        ),
    ];
    Ok(Demo { app, issuer: issuer_url, own_app: options.upstream, commands, _helpers: helpers })
}

/// `--upstream` must be a plain `http://host[:port]` URL: the sidecar proxies over plain HTTP
/// to an app beside it (as `upstream.url`). Checked here so the message names the flag.
fn check_upstream(url: &str) -> anyhow::Result<()> {
    let uri: axum::http::Uri = url
        .parse()
        .with_context(|| format!("--upstream {url:?} is not a URL; e.g. http://127.0.0.1:8000"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        anyhow::bail!(
            "--upstream must be an http:// URL of your app, e.g. http://127.0.0.1:8000 (got {url:?})"
        );
    }
    Ok(())
}

/// Generates enrollment codes for the premium contract through the admin API (the way an
/// operator would) and returns one.
async fn generate_code(admin: &str, token: &str) -> anyhow::Result<String> {
    let answer: Value = reqwest::Client::new()
        .post(format!("{admin}/admin/v1/contracts/acme-premium/codes"))
        .bearer_auth(token)
        .json(&json!({"count": 3}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    answer["items"][0]["code"].as_str().map(str::to_owned).context("the code generation answer has no code")
}

/// Seeds what is missing (a data directory of an older demo lacks globex and erin).
async fn seed(store: &Store) -> anyhow::Result<()> {
    let mut conn = store.conn().await?;
    if organizations::get(&mut conn, ORG).await.is_err() {
        seed_acme(&mut conn).await?;
    }
    if organizations::get(&mut conn, ORG2).await.is_err() {
        organizations::insert(
            &mut conn,
            &NewOrganization {
                key: ORG2.into(),
                name: "Globex Corporation".into(),
                description: "A second sample organization".into(),
                keycloak_id: Some(ORG2_ID.parse()?),
                keycloak_alias: Some(ORG2.into()),
                email_domains: Vec::new(),
            },
        )
        .await?;
        contracts::insert(
            &mut conn,
            &NewContract {
                key: "globex-all".into(),
                organization: ORG2.into(),
                name: "Every Globex learner".into(),
                membership_type: MembershipType::Auto,
                active: true,
                starts_on: None,
                ends_on: None,
                max_learners: None,
                price: None,
            },
        )
        .await?;
    }
    // erin manages acme (as an admin would set with `{"manager": true}`); her token claims
    // acme too, so her logins keep the membership.
    let sub = format!("demo-{MANAGER}");
    let acme = organizations::get(&mut conn, ORG).await?;
    users::ensure(&mut conn, &sub).await?;
    memberships::add(
        &mut conn,
        &sub,
        acme.id,
        MembershipSource::Admin,
        Flags { keep_until_seen: false, manager: true },
    )
    .await?;
    Ok(())
}

async fn seed_acme(conn: &mut crate::store::Conn) -> anyhow::Result<()> {
    organizations::insert(
        conn,
        &NewOrganization {
            key: ORG.into(),
            name: "Acme University".into(),
            description: "A sample customer organization".into(),
            keycloak_id: Some(ORG_ID.parse()?),
            keycloak_alias: Some(ORG.into()),
            email_domains: Vec::new(),
        },
    )
    .await?;
    for (key, name, membership_type, max) in [
        ("acme-all", "Every Acme learner", MembershipType::Auto, None),
        ("acme-premium", "Acme premium track", MembershipType::Code, Some(25)),
    ] {
        contracts::insert(
            conn,
            &NewContract {
                key: key.into(),
                organization: ORG.into(),
                name: name.into(),
                membership_type,
                active: true,
                starts_on: None,
                ends_on: None,
                max_learners: max,
                price: None,
            },
        )
        .await?;
    }
    Ok(())
}

async fn wait_ready(admin_port: u16) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{admin_port}/readyz");
    for _ in 0..100 {
        if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the demo sidecar did not become ready")
}

/// Prints the banner and the commands.
pub fn print(demo: &Demo, public_port: u16) {
    match &demo.own_app {
        None => {
            println!("identity-sidecar demo is running.");
            println!("  public port  http://127.0.0.1:{public_port}   (proxy → demo app, /_sidecar/*)");
        }
        Some(url) => {
            println!("identity-sidecar demo is running in front of your app.");
            println!(
                "  public port  http://127.0.0.1:{public_port}   (proxy → your app at {url}, /_sidecar/*)"
            );
        }
    }
    println!("  admin port   http://127.0.0.1:{}", public_port.wrapping_add(1));
    println!("  dev issuer   {}   (demo only; tokens last 12 hours)", demo.issuer);
    if demo.own_app.is_some() {
        println!();
        println!("Send your browser or client to the public port, not to your app: every request");
        println!("reaches your app with the sidecar's X-Identity-* headers (without a token:");
        println!("X-Identity-Status: anonymous and the others empty); paths under /courses need a token.");
    }
    println!();
    for (what, command) in &demo.commands {
        println!("# {what}");
        println!("{command}");
        println!();
    }
    println!("Press Ctrl-C to stop.");
}
