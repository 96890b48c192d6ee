//! A fake Keycloak realm `test` on `127.0.0.1:0`: OIDC discovery, JWKS, the token endpoint
//! (client credentials) and the organization part of the admin API, with switches to make it
//! fail, hang or slow down, and counters to see how often the sidecar called it.
//!
//! Paths and JSON shapes follow Keycloak 26 so the sidecar's client code is exercised as it
//! will be in production; only what the sidecar uses is implemented.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Form, Json};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::keys::{self, KeyKind, KeyMaterial};
use super::tokens::{Attacks, TokenBuilder};
use super::{ServerTask, bind, serve_on};

/// A key id as published in the JWKS.
pub type Kid = String;

/// How discovery and JWKS requests are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer normally.
    Normal,
    /// Answer `500` with a Keycloak-style error body.
    Fail,
    /// Accept the request and never answer (the connection stays open).
    Hang,
}

const REALM: &str = "test";

/// Handle to a running fake Keycloak. Cheap to clone; the server stops when the last clone
/// is dropped or on [`FakeKeycloak::stop`].
#[derive(Clone)]
pub struct FakeKeycloak {
    inner: Arc<Inner>,
    server: Arc<ServerTask>,
}

/// Shared state of one fake Keycloak, also held by token builders.
pub struct Inner {
    addr: SocketAddr,
    state: Mutex<RealmState>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
    token_requests: AtomicUsize,
    add_member_calls: AtomicUsize,
    admin_requests: AtomicUsize,
}

/// A key the realm can sign with, published or not.
struct RealmKey {
    kid: Kid,
    alg: Algorithm,
    material: Arc<KeyMaterial>,
    published: bool,
}

/// What a token builder needs to sign: the key, its kid and the algorithm it is published with.
#[derive(Clone)]
pub struct Signer {
    pub kid: Kid,
    pub alg: Algorithm,
    pub material: Arc<KeyMaterial>,
}

#[derive(Clone)]
struct Org {
    id: Uuid,
    alias: String,
    name: String,
    description: String,
}

struct RealmState {
    keys: Vec<RealmKey>,
    default_kid: Option<Kid>,
    next_rsa_slot: usize,
    enc_kid: Kid,
    publish_enc: bool,
    discovery_mode: Mode,
    jwks_mode: Mode,
    jwks_delay: Duration,
    discovery_patch: Map<String, Value>,
    attacker: HashMap<KeyKind, Arc<KeyMaterial>>,
    client_id: String,
    client_secret: String,
    admin_token_ttl: u64,
    admin_tokens: HashMap<String, Instant>,
    orgs: Vec<Org>,
    /// org id → member user ids, in the order they were added.
    members: BTreeMap<Uuid, Vec<String>>,
    fail_add_member: usize,
    fail_remove_member: usize,
    /// Every add- and remove-member call received, in order (failed ones included).
    membership_calls: Vec<MembershipCall>,
}

/// An add- or remove-member call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipCall {
    Add { org: String, user: String },
    Remove { org: String, user: String },
}

impl FakeKeycloak {
    /// Start a realm `test` with one published RS256 signing key (the default signer) and
    /// one `use: "enc"` RSA-OAEP key, like a fresh Keycloak realm.
    pub async fn start() -> FakeKeycloak {
        let state = RealmState {
            keys: Vec::new(),
            default_kid: None,
            next_rsa_slot: keys::RSA_SLOT_FIRST_REALM,
            enc_kid: keys::random_kid(),
            publish_enc: true,
            discovery_mode: Mode::Normal,
            jwks_mode: Mode::Normal,
            jwks_delay: Duration::ZERO,
            discovery_patch: Map::new(),
            attacker: HashMap::new(),
            client_id: "identity-sidecar".into(),
            client_secret: format!("secret-{}", Uuid::new_v4().simple()),
            admin_token_ttl: 300,
            admin_tokens: HashMap::new(),
            orgs: Vec::new(),
            members: BTreeMap::new(),
            fail_add_member: 0,
            fail_remove_member: 0,
            membership_calls: Vec::new(),
        };
        // Bound before the router is built: the issuer contains the port.
        let listener = bind().await;
        let addr = listener.local_addr().expect("local addr");
        let inner = Arc::new(Inner {
            addr,
            state: Mutex::new(state),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
            add_member_calls: AtomicUsize::new(0),
            admin_requests: AtomicUsize::new(0),
        });
        let server = serve_on(listener, router(inner.clone()));
        let kc = FakeKeycloak { inner, server: Arc::new(server) };
        kc.rotate(KeyKind::Rs256);
        kc
    }

    /// Stop the server: the port refuses connections and open connections are cut.
    pub fn stop(&self) {
        self.server.stop();
    }

    // ----- addresses -------------------------------------------------------------------

    /// `http://127.0.0.1:PORT` — what `keycloak_admin.url` takes.
    pub fn base_url(&self) -> String {
        self.inner.base_url()
    }

    /// The realm name, `test`.
    pub fn realm(&self) -> &'static str {
        REALM
    }

    /// `http://127.0.0.1:PORT/realms/test` — the `iss` of every token.
    pub fn issuer(&self) -> String {
        self.inner.issuer()
    }

    /// `<issuer>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer())
    }

    /// `<issuer>/protocol/openid-connect/certs`.
    pub fn jwks_url(&self) -> String {
        format!("{}/protocol/openid-connect/certs", self.issuer())
    }

    /// `<issuer>/protocol/openid-connect/token`.
    pub fn token_url(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer())
    }

    /// A JWKS holding the attacker's public key under the realm's default kid (for `jku`).
    pub fn attacker_jwks_url(&self) -> String {
        format!("{}/attacker/jwks.json", self.base_url())
    }

    /// The attacker's self-signed certificate as PEM (for `x5u`).
    pub fn attacker_cert_url(&self) -> String {
        format!("{}/attacker/cert.pem", self.base_url())
    }

    // ----- tokens ----------------------------------------------------------------------

    /// A builder for an access token shaped like Keycloak's, signed by the default key.
    pub fn token(&self) -> TokenBuilder {
        TokenBuilder::new(self.inner.clone())
    }

    /// Builders for hostile tokens.
    pub fn attacks(&self) -> Attacks {
        Attacks::new(self.inner.clone())
    }

    // ----- keys ------------------------------------------------------------------------

    /// Publish a new signing key (with the kind's default algorithm); the default signer
    /// does not change.
    pub fn add_key(&self, kind: KeyKind) -> Kid {
        self.add_key_with_alg(kind, kind.default_alg())
    }

    /// Publish a new signing key whose JWK says `alg` (e.g. an RSA key for PS256).
    pub fn add_key_with_alg(&self, kind: KeyKind, alg: Algorithm) -> Kid {
        self.inner.new_key(kind, alg, true)
    }

    /// Create a signing key that is not in the JWKS (yet): tokens signed with it carry an
    /// unknown kid until [`FakeKeycloak::publish_key`].
    pub fn add_unpublished_key(&self, kind: KeyKind) -> Kid {
        self.inner.new_key(kind, kind.default_alg(), false)
    }

    /// Put a key created with [`FakeKeycloak::add_unpublished_key`] into the JWKS.
    pub fn publish_key(&self, kid: &str) {
        let mut st = self.inner.lock();
        st.keys.iter_mut().find(|k| k.kid == kid).expect("unknown kid").published = true;
    }

    /// Add a key and make it the default signer; older keys stay published until removed.
    pub fn rotate(&self, kind: KeyKind) -> Kid {
        let kid = self.add_key(kind);
        self.set_default(&kid);
        kid
    }

    /// Make `kid` the key new tokens are signed with.
    pub fn set_default(&self, kid: &str) {
        let mut st = self.inner.lock();
        assert!(st.keys.iter().any(|k| k.kid == kid), "unknown kid {kid}");
        st.default_kid = Some(kid.to_string());
    }

    /// Forget a key: it leaves the JWKS and cannot sign any more. Removing the default signer
    /// makes the first remaining key the default.
    pub fn remove_key(&self, kid: &str) {
        let mut st = self.inner.lock();
        st.keys.retain(|k| k.kid != kid);
        if st.default_kid.as_deref() == Some(kid) {
            st.default_kid = st.keys.first().map(|k| k.kid.clone());
        }
    }

    /// The kid new tokens are signed with.
    pub fn default_kid(&self) -> Kid {
        self.inner.signer(None).kid
    }

    /// The kids of the published signing keys, in the order they were added.
    pub fn kids(&self) -> Vec<Kid> {
        self.inner.lock().keys.iter().filter(|k| k.published).map(|k| k.kid.clone()).collect()
    }

    /// Whether the JWKS carries the `use: "enc"` key (default true).
    pub fn publish_enc_key(&self, publish: bool) {
        self.inner.lock().publish_enc = publish;
    }

    /// The kid of the `use: "enc"` key.
    pub fn enc_kid(&self) -> Kid {
        self.inner.lock().enc_kid.clone()
    }

    /// The JWKS document as currently served.
    pub fn jwks(&self) -> Value {
        self.inner.jwks()
    }

    // ----- failure switches and counters -----------------------------------------------

    /// How discovery and JWKS requests are answered.
    pub fn set_mode(&self, mode: Mode) {
        let mut st = self.inner.lock();
        st.discovery_mode = mode;
        st.jwks_mode = mode;
    }

    /// How discovery requests alone are answered.
    pub fn set_discovery_mode(&self, mode: Mode) {
        self.inner.lock().discovery_mode = mode;
    }

    /// How JWKS requests alone are answered.
    pub fn set_jwks_mode(&self, mode: Mode) {
        self.inner.lock().jwks_mode = mode;
    }

    /// Delay every JWKS answer (to make concurrent unknown-kid requests overlap).
    pub fn set_jwks_delay(&self, delay: Duration) {
        self.inner.lock().jwks_delay = delay;
    }

    /// Merge fields into the discovery document (a `null` removes the field), e.g.
    /// `json!({"issuer": "https://elsewhere"})` or a different `jwks_uri`.
    pub fn patch_discovery(&self, patch: Value) {
        let Value::Object(patch) = patch else { panic!("discovery patch must be an object") };
        self.inner.lock().discovery_patch.extend(patch);
    }

    /// JWKS requests received (every mode counts).
    pub fn jwks_fetches(&self) -> usize {
        self.inner.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Discovery requests received (every mode counts).
    pub fn discovery_fetches(&self) -> usize {
        self.inner.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Token endpoint requests received (successful or not).
    pub fn token_requests(&self) -> usize {
        self.inner.token_requests.load(Ordering::SeqCst)
    }

    /// Admin API requests received (any path, authorised or not).
    pub fn admin_requests(&self) -> usize {
        self.inner.admin_requests.load(Ordering::SeqCst)
    }

    // ----- admin client ----------------------------------------------------------------

    /// The confidential client allowed to use the token endpoint: `(client_id, secret)`.
    pub fn admin_client(&self) -> (String, String) {
        let st = self.inner.lock();
        (st.client_id.clone(), st.client_secret.clone())
    }

    /// Lifetime (`expires_in`) of tokens issued from now on (default 300 s).
    pub fn set_admin_token_ttl(&self, secs: u64) {
        self.inner.lock().admin_token_ttl = secs;
    }

    /// Invalidate every issued admin token: the admin API answers 401 until a new one is used.
    pub fn revoke_admin_tokens(&self) {
        self.inner.lock().admin_tokens.clear();
    }

    // ----- organizations ---------------------------------------------------------------

    /// Create an organization; returns its id.
    pub fn add_org(&self, alias: &str, name: &str, description: &str) -> Uuid {
        let id = Uuid::new_v4();
        self.add_org_with_id(id, alias, name, description);
        id
    }

    /// Create an organization with a chosen id.
    pub fn add_org_with_id(&self, id: Uuid, alias: &str, name: &str, description: &str) {
        let mut st = self.inner.lock();
        assert!(!st.orgs.iter().any(|o| o.id == id || o.alias == alias), "duplicate org");
        st.orgs.push(Org { id, alias: alias.into(), name: name.into(), description: description.into() });
    }

    /// Change an organization's alias, name and description (its id stays).
    pub fn rename_org(&self, id: Uuid, alias: &str, name: &str, description: &str) {
        let mut st = self.inner.lock();
        let org = st.orgs.iter_mut().find(|o| o.id == id).expect("unknown org");
        org.alias = alias.into();
        org.name = name.into();
        org.description = description.into();
    }

    /// Delete an organization and its memberships.
    pub fn remove_org(&self, id: Uuid) {
        let mut st = self.inner.lock();
        st.orgs.retain(|o| o.id != id);
        st.members.remove(&id);
    }

    /// User ids that are members of `org_id`, in the order they were added.
    pub fn members(&self, org_id: Uuid) -> Vec<String> {
        self.inner.lock().members.get(&org_id).cloned().unwrap_or_default()
    }

    /// Make `user_id` a member of exactly these organizations.
    pub fn set_user_orgs(&self, user_id: &str, orgs: Vec<Uuid>) {
        let mut st = self.inner.lock();
        for members in st.members.values_mut() {
            members.retain(|m| m != user_id);
        }
        for org in orgs {
            st.members.entry(org).or_default().push(user_id.to_string());
        }
    }

    /// Answer the next `n` add-member calls with 500.
    pub fn fail_next_add_member(&self, n: usize) {
        self.inner.lock().fail_add_member = n;
    }

    /// Answer the next `n` remove-member calls with 500.
    pub fn fail_next_remove_member(&self, n: usize) {
        self.inner.lock().fail_remove_member = n;
    }

    /// Every add- and remove-member call received so far, in order (failed ones included).
    pub fn membership_calls(&self) -> Vec<MembershipCall> {
        self.inner.lock().membership_calls.clone()
    }

    /// Add-member calls received (failed ones included).
    pub fn add_member_calls(&self) -> usize {
        self.inner.add_member_calls.load(Ordering::SeqCst)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, RealmState> {
        // A test that panicked while holding the lock must not hide its own failure behind
        // poison errors in the server.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn issuer(&self) -> String {
        format!("{}/realms/{REALM}", self.base_url())
    }

    fn new_key(&self, kind: KeyKind, alg: Algorithm, published: bool) -> Kid {
        assert!(kind.signs(alg), "a {kind:?} key cannot sign {alg:?}");
        let mut st = self.lock();
        let material = if kind == KeyKind::Rs256 {
            st.next_rsa_slot += 1;
            keys::rsa_slot(st.next_rsa_slot - 1)
        } else {
            KeyMaterial::generate(kind)
        };
        let kid = keys::random_kid();
        st.keys.push(RealmKey { kid: kid.clone(), alg, material, published });
        kid
    }

    /// The signing key `kid`, or the default signer.
    pub fn signer(&self, kid: Option<&str>) -> Signer {
        let st = self.lock();
        let kid = kid.or(st.default_kid.as_deref()).expect("the realm has no signing key");
        let key = st.keys.iter().find(|k| k.kid == kid).unwrap_or_else(|| panic!("unknown kid {kid}"));
        Signer { kid: key.kid.clone(), alg: key.alg, material: key.material.clone() }
    }

    /// The first realm key (default first) that satisfies `pred`.
    pub fn find_signer(&self, pred: impl Fn(&KeyKind, Algorithm) -> bool) -> Option<Signer> {
        let default = self.signer(None);
        if pred(&default.material.kind, default.alg) {
            return Some(default);
        }
        let st = self.lock();
        st.keys.iter().find(|k| pred(&k.material.kind, k.alg)).map(|k| Signer {
            kid: k.kid.clone(),
            alg: k.alg,
            material: k.material.clone(),
        })
    }

    /// The attacker's key: same kind and algorithm as the default signer, presented under the
    /// default signer's kid, never published by the realm.
    pub fn attacker(&self) -> Signer {
        let default = self.signer(None);
        let kind = default.material.kind;
        let mut st = self.lock();
        let material = st
            .attacker
            .entry(kind)
            .or_insert_with(|| match kind {
                KeyKind::Rs256 => keys::rsa_slot(keys::RSA_SLOT_ATTACKER),
                other => KeyMaterial::generate(other),
            })
            .clone();
        Signer { kid: default.kid, alg: default.alg, material }
    }

    pub fn enc_kid(&self) -> Kid {
        self.lock().enc_kid.clone()
    }

    fn jwks(&self) -> Value {
        let st = self.lock();
        let mut keys: Vec<Value> =
            st.keys.iter().filter(|k| k.published).map(|k| k.material.jwk(&k.kid, k.alg)).collect();
        if st.publish_enc {
            let mut enc = keys::rsa_slot(keys::RSA_SLOT_ENC).public_jwk.clone();
            enc.insert("kid".into(), json!(st.enc_kid));
            enc.insert("use".into(), json!("enc"));
            enc.insert("alg".into(), json!("RSA-OAEP"));
            keys.push(Value::Object(enc));
        }
        json!({ "keys": keys })
    }

    fn discovery(&self) -> Value {
        let issuer = self.issuer();
        let oidc = format!("{issuer}/protocol/openid-connect");
        let mut doc = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{oidc}/auth"),
            "token_endpoint": format!("{oidc}/token"),
            "introspection_endpoint": format!("{oidc}/token/introspect"),
            "userinfo_endpoint": format!("{oidc}/userinfo"),
            "end_session_endpoint": format!("{oidc}/logout"),
            "jwks_uri": format!("{oidc}/certs"),
            "check_session_iframe": format!("{oidc}/login-status-iframe.html"),
            "grant_types_supported": ["authorization_code", "implicit", "refresh_token", "password", "client_credentials"],
            "response_types_supported": ["code", "none", "id_token", "token", "id_token token", "code id_token", "code token", "code id_token token"],
            "subject_types_supported": ["public", "pairwise"],
            "id_token_signing_alg_values_supported": ["PS384", "RS384", "EdDSA", "ES384", "ES256", "RS256", "ES512", "PS256", "PS512", "RS512"],
            "userinfo_signing_alg_values_supported": ["PS384", "RS384", "EdDSA", "ES384", "ES256", "RS256", "ES512", "PS256", "PS512", "RS512", "none"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post", "tls_client_auth", "client_secret_jwt"],
            "scopes_supported": ["openid", "email", "profile", "roles", "organization", "offline_access", "web-origins", "acr", "basic"],
            "claims_supported": ["aud", "sub", "iss", "auth_time", "name", "given_name", "family_name", "preferred_username", "email", "acr"],
            "code_challenge_methods_supported": ["plain", "S256"],
        });
        let patch = self.lock().discovery_patch.clone();
        let map = doc.as_object_mut().expect("object");
        for (k, v) in patch {
            if v.is_null() {
                map.remove(&k);
            } else {
                map.insert(k, v);
            }
        }
        doc
    }
}

// ----- HTTP --------------------------------------------------------------------------------

type Shared = Arc<Inner>;

fn router(kc: Shared) -> Router {
    let realm = format!("/realms/{REALM}");
    let admin = format!("/admin/realms/{REALM}/organizations");
    Router::new()
        .route(&format!("{realm}/.well-known/openid-configuration"), get(discovery))
        .route(&format!("{realm}/protocol/openid-connect/certs"), get(certs))
        .route(&format!("{realm}/protocol/openid-connect/token"), post(token))
        .route(&admin, get(list_orgs))
        .route(&format!("{admin}/{{org_id}}"), get(get_org))
        .route(&format!("{admin}/{{org_id}}/members"), post(add_member).get(list_members))
        .route(&format!("{admin}/{{org_id}}/members/{{user_id}}"), delete(remove_member))
        .route(&format!("{admin}/members/{{user_id}}/organizations"), get(user_orgs))
        .route("/attacker/jwks.json", get(attacker_jwks))
        .route("/attacker/cert.pem", get(attacker_cert))
        .with_state(kc)
}

/// Applies a [`Mode`]: `Some(response)` when the request must not be answered normally.
async fn misbehave(mode: Mode) -> Option<Response> {
    match mode {
        Mode::Normal => None,
        Mode::Fail => {
            Some((StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "unknown_error"}))).into_response())
        }
        Mode::Hang => std::future::pending().await,
    }
}

async fn discovery(State(kc): State<Shared>) -> Response {
    kc.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    let mode = kc.lock().discovery_mode;
    if let Some(res) = misbehave(mode).await {
        return res;
    }
    Json(kc.discovery()).into_response()
}

async fn certs(State(kc): State<Shared>) -> Response {
    kc.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let (mode, delay) = {
        let st = kc.lock();
        (st.jwks_mode, st.jwks_delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(res) = misbehave(mode).await {
        return res;
    }
    // Read after the delay: a rotation during a slow fetch is visible, as in Keycloak.
    ([(header::CACHE_CONTROL, "no-cache")], Json(kc.jwks())).into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": description}))).into_response()
}

/// Client credentials from HTTP Basic (`client_secret_basic`, form-urlencoded parts per
/// RFC 6749 §2.3.1) or from the body (`client_secret_post`); Basic wins, as in Keycloak.
fn client_credentials(headers: &HeaderMap, form: &HashMap<String, String>) -> Option<(String, String)> {
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let decoded = String::from_utf8(STANDARD.decode(basic.trim()).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        let unform = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
        };
        return Some((unform(id), unform(secret)));
    }
    Some((form.get("client_id")?.clone(), form.get("client_secret")?.clone()))
}

async fn token(
    State(kc): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    kc.token_requests.fetch_add(1, Ordering::SeqCst);
    let (client_id, client_secret, ttl) = {
        let st = kc.lock();
        (st.client_id.clone(), st.client_secret.clone(), st.admin_token_ttl)
    };
    let Some((id, secret)) = client_credentials(&headers, &form) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Invalid client or Invalid client credentials",
        );
    };
    if id != client_id || secret != client_secret {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Invalid client or Invalid client credentials",
        );
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "Unsupported grant_type");
    }
    let access_token = TokenBuilder::new(kc.clone())
        .sub(&Uuid::new_v4().to_string())
        .preferred_username(&format!("service-account-{client_id}"))
        .azp(&client_id)
        .scope("email profile")
        .remove_claim("sid")
        .remove_claim("email")
        .remove_claim("name")
        .remove_claim("given_name")
        .remove_claim("family_name")
        .claim("clientId", json!(client_id))
        .exp_in(ttl as i64)
        .sign();
    kc.lock().admin_tokens.insert(access_token.clone(), Instant::now() + Duration::from_secs(ttl));
    Json(json!({
        "access_token": access_token,
        "expires_in": ttl,
        "refresh_expires_in": 0,
        "token_type": "Bearer",
        "not-before-policy": 0,
        "scope": "email profile",
    }))
    .into_response()
}

/// Admin API guard: a live token from the token endpoint, as `Authorization: Bearer`.
/// Returns the 401 to send, or `None` when the caller may proceed.
fn unauthorized(kc: &Inner, headers: &HeaderMap) -> Option<Response> {
    kc.admin_requests.fetch_add(1, Ordering::SeqCst);
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let st = kc.lock();
    match bearer.and_then(|t| st.admin_tokens.get(t)) {
        Some(expiry) if *expiry > Instant::now() => None,
        _ => {
            Some((StatusCode::UNAUTHORIZED, Json(json!({"error": "HTTP 401 Unauthorized"}))).into_response())
        }
    }
}

fn org_json(org: &Org, brief: bool) -> Value {
    let mut v = json!({
        "id": org.id,
        "name": org.name,
        "alias": org.alias,
        "enabled": true,
        "description": org.description,
        "domains": [],
    });
    if !brief {
        v["attributes"] = json!({});
    }
    v
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": what}))).into_response()
}

async fn list_orgs(
    State(kc): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(res) = unauthorized(&kc, &headers) {
        return res;
    }
    let number = |name: &str, default: usize| match q.get(name) {
        None => Some(default),
        Some(v) => v.parse::<usize>().ok(),
    };
    // Keycloak's defaults: first=0, max=10, brief representation.
    let (Some(first), Some(max)) = (number("first", 0), number("max", 10)) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "first and max must be non-negative integers"})),
        )
            .into_response();
    };
    let brief = q.get("briefRepresentation").map(|v| v != "false").unwrap_or(true);
    let search = q.get("search").map(|s| s.to_lowercase());
    let mut orgs = kc.lock().orgs.clone();
    orgs.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    let page: Vec<Value> = orgs
        .iter()
        .filter(|o| match &search {
            Some(s) => o.name.to_lowercase().contains(s) || o.alias.to_lowercase().contains(s),
            None => true,
        })
        .skip(first)
        .take(max)
        .map(|o| org_json(o, brief))
        .collect();
    Json(page).into_response()
}

async fn get_org(State(kc): State<Shared>, headers: HeaderMap, Path(org_id): Path<String>) -> Response {
    if let Some(res) = unauthorized(&kc, &headers) {
        return res;
    }
    let st = kc.lock();
    match st.orgs.iter().find(|o| o.id.to_string() == org_id) {
        Some(org) => Json(org_json(org, false)).into_response(),
        None => not_found("Organization not found"),
    }
}

async fn add_member(
    State(kc): State<Shared>,
    headers: HeaderMap,
    Path(org_id): Path<String>,
    body: Bytes,
) -> Response {
    kc.add_member_calls.fetch_add(1, Ordering::SeqCst);
    if let Some(res) = unauthorized(&kc, &headers) {
        return res;
    }
    let mut st = kc.lock();
    let user = serde_json::from_slice::<String>(&body).unwrap_or_default();
    st.membership_calls.push(MembershipCall::Add { org: org_id.clone(), user });
    if st.fail_add_member > 0 {
        st.fail_add_member -= 1;
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "unknown_error"}))).into_response();
    }
    let Some(org) = st.orgs.iter().find(|o| o.id.to_string() == org_id).map(|o| o.id) else {
        return not_found("Organization not found");
    };
    // Keycloak takes the user id as a bare JSON string.
    let Ok(user_id) = serde_json::from_slice::<String>(&body) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "user id must be a JSON string"})))
            .into_response();
    };
    let members = st.members.entry(org).or_default();
    if members.contains(&user_id) {
        return (
            StatusCode::CONFLICT,
            Json(json!({"errorMessage": "User is already a member of the organization."})),
        )
            .into_response();
    }
    members.push(user_id);
    StatusCode::CREATED.into_response()
}

/// `DELETE …/organizations/{id}/members/{userId}` as Keycloak 26's `OrganizationMemberResource`
/// answers it: `204`, or `404` when the organization is unknown or the user is not a member.
async fn remove_member(
    State(kc): State<Shared>,
    headers: HeaderMap,
    Path((org_id, user_id)): Path<(String, String)>,
) -> Response {
    if let Some(res) = unauthorized(&kc, &headers) {
        return res;
    }
    let mut st = kc.lock();
    st.membership_calls.push(MembershipCall::Remove { org: org_id.clone(), user: user_id.clone() });
    if st.fail_remove_member > 0 {
        st.fail_remove_member -= 1;
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "unknown_error"}))).into_response();
    }
    let Some(org) = st.orgs.iter().find(|o| o.id.to_string() == org_id).map(|o| o.id) else {
        return not_found("Organization not found");
    };
    let members = st.members.entry(org).or_default();
    let before = members.len();
    members.retain(|m| *m != user_id);
    if members.len() == before {
        // Keycloak's `getMember` throws NotFoundException: an empty 404.
        return StatusCode::NOT_FOUND.into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn list_members(State(kc): State<Shared>, headers: HeaderMap, Path(org_id): Path<String>) -> Response {
    if let Some(res) = unauthorized(&kc, &headers) {
        return res;
    }
    let st = kc.lock();
    let Some(org) = st.orgs.iter().find(|o| o.id.to_string() == org_id) else {
        return not_found("Organization not found");
    };
    let members: Vec<Value> = st
        .members
        .get(&org.id)
        .into_iter()
        .flatten()
        .map(|id| json!({"id": id, "username": id, "enabled": true, "membershipType": "UNMANAGED"}))
        .collect();
    Json(members).into_response()
}

async fn user_orgs(State(kc): State<Shared>, headers: HeaderMap, Path(user_id): Path<String>) -> Response {
    if let Some(res) = unauthorized(&kc, &headers) {
        return res;
    }
    let st = kc.lock();
    let orgs: Vec<Value> = st
        .orgs
        .iter()
        .filter(|o| st.members.get(&o.id).is_some_and(|m| m.contains(&user_id)))
        .map(|o| org_json(o, true))
        .collect();
    Json(orgs).into_response()
}

async fn attacker_jwks(State(kc): State<Shared>) -> Response {
    let attacker = kc.attacker();
    Json(json!({"keys": [attacker.material.jwk(&attacker.kid, attacker.alg)]})).into_response()
}

async fn attacker_cert(State(kc): State<Shared>) -> Response {
    let pem = keys::pem("CERTIFICATE", &kc.attacker().material.self_signed_cert_der());
    ([(header::CONTENT_TYPE, "application/pem-certificate-chain")], pem).into_response()
}
