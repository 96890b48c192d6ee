//! Typed configuration, loaded once: built-in defaults, then a TOML file, then
//! `SIDECAR__SECTION__KEY` environment variables (lists and tables written as JSON).
//!
//! Every struct denies unknown fields, so a typo is a startup error that names the key.
//! Secrets are [`SecretString`]s: they print as `[REDACTED]` in `check-config` and in any
//! `Debug` output, and each one also accepts a `<key>_file` variant read at load time.
//!
//! Plain data: this module imports nothing else of the crate, so every module may read it.
//! [`Config::load`] checks what the values themselves say (ranges, required keys, URL shapes).
//! A value that only its reader can judge — an `oidc.algorithms` name, an `auth.rules` prefix,
//! the `cache.redis_key_file` contents — is refused by that reader's constructor, and
//! [`crate::app::check`] runs those constructors for `check-config` and for startup alike.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

mod origin;

pub use origin::Origin;

/// The whole configuration. Sections follow docs/contract.md §8.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub oidc: OidcConfig,
    pub organizations: OrganizationsConfig,
    pub reconcile: ReconcileConfig,
    pub auth: AuthConfig,
    pub database: DatabaseConfig,
    pub cache: CacheConfig,
    pub entitlements: EntitlementsConfig,
    pub headers: HeadersConfig,
    pub keycloak_admin: KeycloakAdminConfig,
    pub admin: AdminConfig,
    pub codes: CodesConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub events: EventsConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public port: reverse proxy, forward-auth, `/_sidecar/*`.
    pub listen: SocketAddr,
    /// Admin port: health, metrics, admin API. Never route it through the gateway.
    pub admin_listen: SocketAddr,
    /// Optional third port serving only `GET /metrics`, so Prometheus can scrape from outside
    /// the pod while `admin_listen` stays on loopback. `None`: no such port.
    pub metrics_listen: Option<SocketAddr>,
    /// Paths under this prefix are served by the sidecar, never proxied.
    pub reserved_prefix: String,
    /// Peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Origins (`scheme://host[:port]`) whose cross-site requests may still use the public
    /// port's write routes (code redemption, docs/contract.md §7). A request is cross-site when its
    /// `Origin` differs from the request's own origin or its `Sec-Fetch-Site` is neither
    /// `same-origin` nor `none`; unlisted, it is refused with 403 (see
    /// [`crate::cross_site`]). Each entry is checked when the configuration is read.
    pub allowed_origins: Vec<Origin>,
    /// How long in-flight requests may run after SIGTERM before they are cut.
    pub shutdown_grace_secs: u64,
    /// A new connection must deliver its first complete request head within this time of
    /// being accepted, or it is closed — also one that sends nothing at all.
    pub header_read_timeout_secs: u64,
    /// A keep-alive connection with no request in flight is closed after this long; its next
    /// request head must be complete within this time of the previous response's end. Keep
    /// it longer than the gateway's upstream keep-alive (60 s for nginx and APISIX), so the
    /// gateway never sends on a connection the sidecar is closing.
    pub idle_timeout_secs: u64,
    /// A request body that delivers nothing for this long while it is read ends the request:
    /// 408 when nothing was answered yet, otherwise the connection is cut.
    pub body_read_timeout_secs: u64,
    /// Connections served at once on each listener; further ones wait in the kernel backlog
    /// until one closes. Keep it under the process's file descriptor limit.
    pub max_connections: usize,
    /// More request header fields than this: 431.
    pub max_headers: usize,
    /// A request head (request line + headers) larger than this: 431.
    pub max_header_bytes: usize,
    /// Changes of the active organization (`PUT`/`DELETE /_sidecar/active-organization`) one
    /// user may make per minute on one replica; beyond it, 429 with `Retry-After`. 0: no limit.
    pub max_selections_per_minute: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().expect("valid"),
            admin_listen: "127.0.0.1:8081".parse().expect("valid"),
            metrics_listen: None,
            reserved_prefix: "/_sidecar".into(),
            trusted_proxies: [
                "127.0.0.0/8",
                "::1/128",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "fc00::/7",
            ]
            .iter()
            .map(|n| n.parse().expect("valid"))
            .collect(),
            allowed_origins: Vec::new(),
            shutdown_grace_secs: 30,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 75,
            body_read_timeout_secs: 30,
            max_connections: 10_000,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            max_selections_per_minute: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// The app behind the sidecar; unset = forward-auth only.
    pub url: Option<String>,
    /// Time allowed for the upstream's response headers, counted from when the request body
    /// last moved (a slow upload is not cut; neither is a response body).
    pub timeout_secs: u64,
    /// Time allowed to open a connection to the upstream.
    pub connect_timeout_secs: u64,
    /// How long an idle pooled upstream connection is kept.
    pub pool_idle_timeout_secs: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self { url: None, timeout_secs: 30, connect_timeout_secs: 5, pool_idle_timeout_secs: 90 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The realm's issuer URL; `iss` must equal it exactly.
    pub issuer: String,
    /// Overrides `<issuer>/.well-known/openid-configuration` (Keycloak's internal hostname).
    pub discovery_url: Option<String>,
    /// Overrides the discovery document's `jwks_uri`.
    pub jwks_url: Option<String>,
    /// Accepted when in `aud` or equal to `azp`.
    pub audiences: Vec<String>,
    /// Allow an empty `audiences` list (a warning is logged at every start).
    pub allow_any_audience: bool,
    /// Accepted signature algorithms. HMAC and `none` are never accepted.
    pub algorithms: Vec<String>,
    /// Explicit typing (docs/contract.md §2): `typ` claim `Bearer`, or header `typ` `at+jwt`.
    pub require_typ: bool,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway_secs: u64,
    /// Tokens longer than this are rejected before any decoding.
    pub max_token_bytes: usize,
    /// An unknown `kid` refetches the JWKS at most this often.
    pub jwks_min_refresh_secs: u64,
    /// Background JWKS refresh interval.
    pub jwks_refresh_secs: u64,
    /// Timeout of each discovery/JWKS request.
    pub http_timeout_secs: u64,
    /// Extra CA bundle (PEM) for Keycloak's TLS.
    pub ca_file: Option<PathBuf>,
    /// Where tokens are read from, in order: `authorization`, `x-access-token`.
    pub token_sources: Vec<TokenSource>,
    /// Clients whose roles appear in `X-Identity-Roles` as `client:role`.
    pub client_roles_of: Vec<String>,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            discovery_url: None,
            jwks_url: None,
            audiences: Vec::new(),
            allow_any_audience: false,
            algorithms: ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
                .map(String::from)
                .to_vec(),
            require_typ: true,
            leeway_secs: 30,
            max_token_bytes: 16 * 1024,
            jwks_min_refresh_secs: 10,
            jwks_refresh_secs: 300,
            http_timeout_secs: 5,
            ca_file: None,
            token_sources: vec![TokenSource::Authorization],
            client_roles_of: Vec::new(),
        }
    }
}

/// Where a request's access token may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Authorization,
    /// `X-Access-Token: <token>` (APISIX openid-connect in session mode).
    XAccessToken,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrganizationsConfig {
    /// Name of the token claim holding Keycloak organizations.
    pub claim: String,
}

impl Default for OrganizationsConfig {
    fn default() -> Self {
        Self { claim: "organization".into() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// When an absent or partial claim removes memberships (docs/contract.md §3).
    pub removal: Removal,
    /// With `removal = "scope"`: scopes that make the claim authoritative.
    pub full_membership_scopes: Vec<String>,
    /// A login is reconciled again when its last reconciliation is older than this.
    pub max_age_secs: u64,
    /// What to do when the store is unreachable.
    pub on_store_error: OnStoreError,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            removal: Removal::Scope,
            full_membership_scopes: vec!["organization:*".into()],
            max_age_secs: 300,
            on_store_error: OnStoreError::Degrade,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Removal {
    Scope,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    Degrade,
    Reject,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Path rules; the longest matching prefix wins. No rule: anonymous passes.
    pub rules: Vec<RuleConfig>,
}

/// One `[[auth.rules]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    pub prefix: String,
    pub require: bool,
    pub roles_any: Vec<String>,
    pub organizations_any: Vec<String>,
    pub contracts_any: Vec<String>,
    /// An authenticated request must have an active organization (docs/contract.md §10):
    /// without one, 403 with the problem type `urn:identity-sidecar:active-organization-required`.
    /// Implies a login, like `require`.
    pub active_organization: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH?mode=rwc` (default) or `postgres://…`.
    #[serde(serialize_with = "redact")]
    pub url: SecretString,
    pub url_file: Option<PathBuf>,
    pub max_connections: u32,
    /// Apply migrations when `serve` starts.
    pub migrate_on_start: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from("sqlite://identity-sidecar.db?mode=rwc"),
            url_file: None,
            max_connections: 10,
            migrate_on_start: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How Redis is reached: one server (`redis_url`), a cluster (`redis_urls` of seed
    /// nodes) or a primary found through Sentinel (`redis_urls` of the sentinels).
    pub redis_mode: RedisMode,
    /// Shared cache and invalidation bus for replicas (`standalone`); unset = per-process
    /// memory. `rediss://` for TLS.
    #[serde(serialize_with = "redact_opt")]
    pub redis_url: Option<SecretString>,
    pub redis_url_file: Option<PathBuf>,
    /// `cluster`: seed nodes; `sentinel`: the sentinels. URLs may carry a password.
    #[serde(serialize_with = "redact_all")]
    pub redis_urls: Vec<SecretString>,
    /// `sentinel`: the name of the monitored primary.
    pub sentinel_master: Option<String>,
    /// PEM file of the CA(s) that sign the Redis server certificates (`rediss://`); unset:
    /// the system's roots.
    pub redis_ca_file: Option<PathBuf>,
    /// Keys that sign and verify the login entries shared through Redis (HMAC-SHA256 over
    /// key name and value), one per line, hex or standard base64, at least 32 bytes each; the
    /// first signs, all verify (rotation). Unset: Redis is inside the trust boundary — write
    /// access to it can forge any user's entitlements. Read and checked by
    /// [`crate::app::check`] (`check-config` and startup).
    pub redis_key_file: Option<PathBuf>,
    /// Bound of each in-memory cache, in entries (tokens, logins, last known entitlements,
    /// failed-redemption counters).
    pub max_entries: u64,
    /// Bound of the in-memory token and login caches together, in estimated bytes (half
    /// each); an entry weighs at least its share of `max_entries`, so both bounds hold.
    pub max_bytes: u64,
}

/// `cache.redis_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server (with or without replicas behind it): `cache.redis_url`.
    Standalone,
    /// A primary and replicas watched by Sentinel: `cache.redis_urls` of the sentinels and
    /// `cache.sentinel_master`.
    Sentinel,
    /// Redis Cluster: `cache.redis_urls` of seed nodes.
    Cluster,
}

impl CacheConfig {
    /// Whether a Redis tier is configured, in any mode.
    pub fn has_redis(&self) -> bool {
        self.redis_url.is_some() || !self.redis_urls.is_empty()
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            redis_mode: RedisMode::Standalone,
            redis_url: None,
            redis_url_file: None,
            redis_urls: Vec::new(),
            sentinel_master: None,
            redis_ca_file: None,
            redis_key_file: None,
            max_entries: 200_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EntitlementsConfig {
    pub issuer: String,
    pub audience: String,
    pub ttl_secs: u64,
    /// ES256 private key (PEM, PKCS#8). Unset: an ephemeral key (single replica only).
    pub signing_key_file: Option<PathBuf>,
    /// Retired keys still published in the JWKS during rotation.
    pub previous_key_files: Vec<PathBuf>,
}

impl Default for EntitlementsConfig {
    fn default() -> Self {
        Self {
            issuer: "identity-sidecar".into(),
            audience: "apps".into(),
            ttl_secs: 300,
            signing_key_file: None,
            previous_key_files: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadersConfig {
    /// Emit `X-Userinfo`.
    pub userinfo: bool,
    /// The token claims `X-Userinfo` copies, each as received and only when the token has
    /// it (docs/contract.md §5 v2). `["*"]` copies every claim, as APISIX's openid-connect plugin does in
    /// bearer mode, so custom mapper claims reach apps such as mitol-django-apigateway.
    pub userinfo_claims: Vec<String>,
    /// The largest `X-Userinfo` value, in bytes as sent (base64). Beyond it, claims outside
    /// [`DEFAULT_USERINFO_CLAIMS`] are left out, largest first (see [`crate::headers`]).
    pub max_userinfo_bytes: usize,
    /// Remove `Authorization` and `X-Access-Token` before forwarding.
    pub hide_credentials: bool,
    /// `X-Identity-Contracts` and the entitlement token's `contracts` list only the active
    /// organization's contracts, and none while no organization is active (docs/contract.md
    /// §10). `X-Identity-Organizations` always lists every organization.
    pub scope_to_active_organization: bool,
}

/// The default of `headers.userinfo_claims`, and the claims an oversized `X-Userinfo` keeps
/// longest.
pub const DEFAULT_USERINFO_CLAIMS: [&str; 8] = [
    "sub",
    "email",
    "email_verified",
    "preferred_username",
    "name",
    "given_name",
    "family_name",
    "organization",
];

/// Bounds of `headers.max_userinfo_bytes`: below the lower one not even a subject and the
/// `b2b` object fit; above the upper one no common server takes the header line (gunicorn
/// stops at 8190 bytes, nginx's `large_client_header_buffers` at 8k by default).
pub const MAX_USERINFO_BYTES_RANGE: std::ops::RangeInclusive<usize> = 256..=65536;

impl Default for HeadersConfig {
    fn default() -> Self {
        Self {
            userinfo: true,
            userinfo_claims: DEFAULT_USERINFO_CLAIMS.map(str::to_owned).to_vec(),
            max_userinfo_bytes: 8000,
            hide_credentials: false,
            scope_to_active_organization: false,
        }
    }
}

impl HeadersConfig {
    /// Whether `userinfo_claims` is `["*"]`: every claim of the token.
    pub fn all_userinfo_claims(&self) -> bool {
        self.userinfo_claims.len() == 1 && self.userinfo_claims[0] == "*"
    }

    fn validate(&self) -> anyhow::Result<()> {
        for (i, claim) in self.userinfo_claims.iter().enumerate() {
            if claim.is_empty() {
                bail!(
                    "headers.userinfo_claims[{i}] is empty: name a claim, or write [\"*\"] for every claim"
                );
            }
            if claim == "*" && self.userinfo_claims.len() > 1 {
                bail!("headers.userinfo_claims: \"*\" (every claim) must be the only entry");
            }
        }
        if !MAX_USERINFO_BYTES_RANGE.contains(&self.max_userinfo_bytes) {
            bail!(
                "headers.max_userinfo_bytes must be between {} and {} (default 8000, under gunicorn's \
                 8190-byte header line)",
                MAX_USERINFO_BYTES_RANGE.start(),
                MAX_USERINFO_BYTES_RANGE.end()
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeycloakAdminConfig {
    /// Keycloak base URL, e.g. `https://keycloak.internal`.
    pub url: Option<String>,
    pub realm: Option<String>,
    pub client_id: Option<String>,
    #[serde(serialize_with = "redact_opt")]
    pub client_secret: Option<SecretString>,
    pub client_secret_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// Timeout of each admin API and token request.
    pub timeout_secs: u64,
    /// Organizations per page when listing them (`max`; Keycloak's own default is 10).
    pub page_size: u32,
    /// First delay before a failed Keycloak job is retried; it doubles per attempt (with
    /// jitter) up to 5 minutes.
    pub retry_base_ms: u64,
    /// Two-way membership (docs/contract.md §11): every admin or manager change to a membership
    /// of a Keycloak-linked organization (add, remove) is pushed to Keycloak by a durable job.
    /// Off by default: Keycloak organizations may serve other clients. Needs the rest of
    /// `keycloak_admin` (a startup error without it).
    pub push_memberships: bool,
}

impl KeycloakAdminConfig {
    /// Whether every setting the admin client needs is there (url, realm, client id, secret).
    pub fn is_configured(&self) -> bool {
        self.missing().is_empty()
    }

    /// The names of the required settings that are not set.
    pub fn missing(&self) -> Vec<&'static str> {
        let blank = |v: Option<&str>| v.is_none_or(|v| v.trim().is_empty());
        let mut missing = Vec::new();
        if blank(self.url.as_deref()) {
            missing.push("url");
        }
        if blank(self.realm.as_deref()) {
            missing.push("realm");
        }
        if blank(self.client_id.as_deref()) {
            missing.push("client_id");
        }
        if blank(self.client_secret.as_ref().map(|s| s.expose_secret())) {
            missing.push("client_secret");
        }
        missing
    }
}

impl Default for KeycloakAdminConfig {
    fn default() -> Self {
        Self {
            url: None,
            realm: None,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            ca_file: None,
            timeout_secs: 10,
            page_size: 100,
            retry_base_ms: 1000,
            push_memberships: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Realm or client roles that grant the admin API.
    pub required_roles: Vec<String>,
    /// Static admin tokens by SHA-256; the name is the audit actor.
    pub token_sha256: Vec<StaticToken>,
    /// Realm or client roles that grant read-only access to the admin API (every `GET`).
    pub read_roles: Vec<String>,
    /// Whether organization managers manage their own organizations on the public port
    /// (`/_sidecar/manage/organizations/{key}`).
    pub delegate_to_managers: bool,
    /// Writes per manager (by `sub`) in any minute before 429, per replica; 0 = no limit.
    pub manager_writes_per_minute: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            required_roles: vec!["identity-sidecar-admin".into()],
            token_sha256: Vec::new(),
            read_roles: vec!["identity-sidecar-viewer".into()],
            delegate_to_managers: false,
            manager_writes_per_minute: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    pub name: String,
    pub sha256: String,
    /// What the token may do; `write` when not given.
    #[serde(default)]
    pub access: AdminAccess,
}

/// What an admin credential may do: `read` allows every `GET` of the admin API, `write`
/// everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminAccess {
    Read,
    #[default]
    Write,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodesConfig {
    /// Failed redemptions per user in any minute before 429 (per replica; 0 = no limit).
    pub max_failures_per_minute: u32,
    /// A link that redeems a code, `{code}` standing for the percent-encoded code (an http(s)
    /// URL; checked at startup). Adds `redeem_url` to the codes listing and CSV export.
    pub redeem_url_template: Option<String>,
}

impl Default for CodesConfig {
    fn default() -> Self {
        Self { max_failures_per_minute: 10, redeem_url_template: None }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `identity_sidecar=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Json, level: "info".into() }
    }
}

/// Traces over OTLP/HTTP (see [`crate::telemetry`]); off while no endpoint is set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's base URL (`/v1/traces` is appended), e.g. `http://otel-collector:4318`.
    /// Unset: `OTEL_EXPORTER_OTLP_ENDPOINT` when set, else no traces.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of every span.
    pub service_name: String,
    /// The share of traces recorded and exported, 0.0 to 1.0, judged by trace id.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { otlp_endpoint: None, service_name: "identity-sidecar".into(), sample_ratio: 1.0 }
    }
}

/// Change events (SPEC §13, docs/events.md): the pull feed, webhooks and the Redis stream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// CloudEvents `source` of every event.
    pub source: String,
    /// Days an event stays in the feed and deliverable; older ones are gone (`410`) and a
    /// webhook still waiting for one becomes `dead`.
    pub retention_days: u32,
    /// How often each replica numbers committed events and looks for new ones to deliver,
    /// while a webhook or the Redis stream is configured (milliseconds).
    pub poll_interval_ms: u64,
    /// How long one webhook attempt may take before it counts as failed.
    pub webhook_timeout_secs: u64,
    /// First retry delay after a failed delivery; doubled per failure up to `retry_max_secs`.
    pub retry_base_ms: u64,
    /// Longest delay between two delivery attempts.
    pub retry_max_secs: u64,
    /// Webhooks (`[[events.webhooks]]`), each delivered in sequence order.
    pub webhooks: Vec<WebhookConfig>,
    /// A Redis stream key every event is appended to (`XADD`), through `cache.redis_*`.
    pub redis_stream: Option<String>,
    /// Approximate cap of the Redis stream's length (`MAXLEN ~`).
    pub redis_stream_max_len: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            source: "identity-sidecar".into(),
            retention_days: 7,
            poll_interval_ms: 200,
            webhook_timeout_secs: 10,
            retry_base_ms: 1000,
            retry_max_secs: 300,
            webhooks: Vec::new(),
            redis_stream: None,
            redis_stream_max_len: 100_000,
        }
    }
}

impl EventsConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if self.source.is_empty() {
            bail!("events.source must not be empty (CloudEvents requires a source)");
        }
        if !(1..=3650).contains(&self.retention_days) {
            bail!("events.retention_days must be between 1 and 3650");
        }
        if !(10..=60_000).contains(&self.poll_interval_ms) {
            bail!("events.poll_interval_ms must be between 10 and 60000");
        }
        if !(1..=300).contains(&self.webhook_timeout_secs) {
            bail!("events.webhook_timeout_secs must be between 1 and 300");
        }
        if self.retry_base_ms == 0 || self.retry_max_secs == 0 {
            bail!("events.retry_base_ms and events.retry_max_secs must be at least 1");
        }
        if self.redis_stream.as_deref().is_some_and(str::is_empty) {
            bail!("events.redis_stream must name a stream key, e.g. \"identity-sidecar:events\"");
        }
        if self.redis_stream_max_len == 0 {
            bail!("events.redis_stream_max_len must be at least 1");
        }
        let mut names = std::collections::HashSet::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let name_ok = !w.name.is_empty()
                && w.name.len() <= 64
                && w.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                bail!("events.webhooks[{i}].name must be 1 to 64 letters, digits, '-' or '_'");
            }
            if !names.insert(w.name.as_str()) {
                bail!("events.webhooks[{i}].name {:?} is used twice", w.name);
            }
            let uri: Option<http::Uri> = w.url.parse().ok();
            let url_ok = uri.as_ref().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
            });
            if !url_ok {
                bail!("events.webhooks[{i}].url must be an http:// or https:// URL");
            }
        }
        Ok(())
    }
}

/// One webhook receiver (Standard Webhooks signing, CloudEvents bodies).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names the webhook's delivery position; renaming starts a new one at the newest event.
    pub name: String,
    /// The receiver's `http://` or `https://` URL.
    pub url: String,
    /// A file of `whsec_<base64>` secrets, one per line: the first signs, every line is a
    /// signature (rotation).
    pub secret_file: PathBuf,
    /// Event type prefixes to deliver (e.g. `identity-sidecar.membership.`); empty: all.
    #[serde(default)]
    pub types: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

fn redact<S: serde::Serializer>(_: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("[REDACTED]")
}

fn redact_all<S: serde::Serializer>(v: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|_| "[REDACTED]"))
}

fn redact_opt<S: serde::Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("[REDACTED]"),
        None => s.serialize_none(),
    }
}

/// Prefix of environment overrides; `__` separates section and key.
pub const ENV_PREFIX: &str = "SIDECAR__";

impl Config {
    /// Defaults, then the TOML file (when given), then `SIDECAR__*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Env values are typed by what the key holds so far: a bool stays a bool, a
        // string stays a string even when it looks like a number (a secret `12345`).
        let shape: serde_json::Value =
            figment.extract().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        figment = figment.merge(Serialized::globals(env_overrides(env, &shape)?));
        let mut config: Config = figment.extract().map_err(|e| {
            // figment's message names the key path and the source (file or env).
            anyhow::anyhow!("invalid configuration: {}", e.to_string().replace('\n', "; "))
        })?;
        config.read_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    /// Reads every `<key>_file` secret into its key.
    fn read_secret_files(&mut self) -> anyhow::Result<()> {
        if let Some(p) = &self.database.url_file {
            self.database.url = read_secret(p, "database.url_file")?;
        }
        if let Some(p) = &self.cache.redis_url_file {
            self.cache.redis_url = Some(read_secret(p, "cache.redis_url_file")?);
        }
        if let Some(p) = &self.keycloak_admin.client_secret_file {
            self.keycloak_admin.client_secret = Some(read_secret(p, "keycloak_admin.client_secret_file")?);
        }
        Ok(())
    }

    /// Rules that serde cannot express and that need no other module: the values' own shape.
    /// The rest is [`crate::app::check`]'s.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.oidc.issuer.is_empty() {
            bail!("oidc.issuer is required (the realm URL, e.g. https://sso.example.com/realms/acme)");
        }
        if self.oidc.audiences.is_empty() && !self.oidc.allow_any_audience {
            bail!(
                "oidc.audiences is empty: list the client ids this sidecar accepts, \
                 or set oidc.allow_any_audience = true"
            );
        }
        if self.oidc.algorithms.is_empty() {
            bail!("oidc.algorithms must list at least one algorithm");
        }
        if self.oidc.token_sources.is_empty() {
            bail!("oidc.token_sources must list at least one source");
        }
        self.headers.validate()?;
        let server = &self.server;
        for (key, secs) in [
            ("header_read_timeout_secs", server.header_read_timeout_secs),
            ("idle_timeout_secs", server.idle_timeout_secs),
            ("body_read_timeout_secs", server.body_read_timeout_secs),
        ] {
            // 0 would close every connection at once; a huge value would overflow the timers.
            if !(1..=86_400).contains(&secs) {
                bail!("server.{key} must be between 1 and 86400 seconds");
            }
        }
        if !(1..=1_000_000).contains(&server.max_connections) {
            bail!("server.max_connections must be between 1 and 1000000");
        }
        if self.cache.max_entries == 0 {
            bail!("cache.max_entries must be at least 1");
        }
        if self.cache.max_bytes < 1024 * 1024 {
            bail!("cache.max_bytes must be at least 1048576 (1 MiB)");
        }
        if !self.server.reserved_prefix.starts_with('/') || self.server.reserved_prefix.len() < 2 {
            bail!("server.reserved_prefix must start with '/' and name a path, e.g. /_sidecar");
        }
        for (i, t) in self.admin.token_sha256.iter().enumerate() {
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("admin.token_sha256[{i}].sha256 must be 64 hex characters");
            }
        }
        let kc = &self.keycloak_admin;
        if let Some(url) = &kc.url {
            let uri: http::Uri = url.parse().with_context(|| format!("keycloak_admin.url {url:?}"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                bail!("keycloak_admin.url must be an http:// or https:// URL, e.g. https://sso.example.com");
            }
        }
        if kc.timeout_secs == 0 {
            bail!("keycloak_admin.timeout_secs must be at least 1");
        }
        if !(1..=1000).contains(&kc.page_size) {
            bail!("keycloak_admin.page_size must be between 1 and 1000");
        }
        if kc.retry_base_ms == 0 {
            bail!("keycloak_admin.retry_base_ms must be at least 1");
        }
        if kc.push_memberships && !kc.is_configured() {
            bail!(
                "keycloak_admin.push_memberships = true needs keycloak_admin configured; missing: {}",
                kc.missing().iter().map(|k| format!("keycloak_admin.{k}")).collect::<Vec<_>>().join(", ")
            );
        }
        self.events.validate()?;
        if self.events.redis_stream.is_some() && !self.cache.has_redis() {
            bail!("events.redis_stream needs Redis: set cache.redis_url (or cache.redis_urls)");
        }
        if let Some(template) = &self.codes.redeem_url_template {
            let example = template.replace("{code}", "ABCD-EFGH");
            let ok = template.contains("{code}")
                && example.parse::<http::Uri>().is_ok_and(|uri| {
                    matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.host().is_some_and(|h| !h.is_empty())
                });
            if !ok {
                bail!(
                    "codes.redeem_url_template must be an http:// or https:// URL containing {{code}}, \
                     e.g. https://learn.example.com/enrollmentcode/{{code}}"
                );
            }
        }
        if let Some(url) = &self.upstream.url {
            let uri: http::Uri = url.parse().with_context(|| format!("upstream.url {url:?}"))?;
            if uri.scheme_str() != Some("http") {
                bail!("upstream.url must be an http:// URL (the app beside the sidecar)");
            }
        }
        let telemetry = &self.telemetry;
        if let Some(url) = &telemetry.otlp_endpoint {
            let uri: http::Uri = url.parse().with_context(|| format!("telemetry.otlp_endpoint {url:?}"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                bail!(
                    "telemetry.otlp_endpoint must be an http:// or https:// URL, e.g. http://otel-collector:4318"
                );
            }
        }
        if !(0.0..=1.0).contains(&telemetry.sample_ratio) {
            bail!("telemetry.sample_ratio must be between 0.0 and 1.0");
        }
        if telemetry.service_name.is_empty() {
            bail!("telemetry.service_name must not be empty");
        }
        let cache = &self.cache;
        match cache.redis_mode {
            RedisMode::Standalone if !cache.redis_urls.is_empty() => bail!(
                "cache.redis_urls is set but cache.redis_mode is standalone: \
                 set cache.redis_url, or cache.redis_mode = \"cluster\" or \"sentinel\""
            ),
            RedisMode::Standalone => {}
            mode @ (RedisMode::Cluster | RedisMode::Sentinel) => {
                let what = if mode == RedisMode::Cluster { "cluster" } else { "sentinel" };
                if cache.redis_url.is_some() {
                    bail!(
                        "cache.redis_mode is {what}: list the servers in cache.redis_urls, not cache.redis_url"
                    );
                }
                if cache.redis_urls.is_empty() {
                    bail!("cache.redis_mode is {what} but cache.redis_urls is empty");
                }
            }
        }
        if cache.redis_mode == RedisMode::Sentinel
            && cache.sentinel_master.as_deref().unwrap_or("").is_empty()
        {
            bail!("cache.redis_mode is sentinel but cache.sentinel_master is not set");
        }
        if cache.redis_key_file.is_some() && !cache.has_redis() {
            bail!("cache.redis_key_file is set but cache.redis_url is not: the keys sign Redis entries");
        }
        if cache.redis_ca_file.is_some() && !cache.has_redis() {
            bail!("cache.redis_ca_file is set but no Redis is configured (cache.redis_url)");
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets redacted (`check-config`).
    pub fn redacted_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// The database URL (a secret: never log it).
    pub fn database_url(&self) -> &str {
        self.database.url.expose_secret()
    }
}

fn read_secret(path: &Path, key: &str) -> anyhow::Result<SecretString> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{key}: cannot read {}", path.display()))?;
    Ok(SecretString::from(text.trim_end_matches(['\r', '\n']).to_string()))
}

/// Turns `SIDECAR__SECTION__KEY=value` pairs into a nested dictionary. Lists and tables are
/// JSON; a scalar is parsed as the type the key already holds in `shape` (defaults + file).
fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
    shape: &serde_json::Value,
) -> anyhow::Result<Dict> {
    let mut root = Dict::new();
    for (name, raw) in env {
        let Some(path) = name.strip_prefix(ENV_PREFIX) else { continue };
        let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
        if keys.iter().any(String::is_empty) {
            bail!("environment variable {name}: empty key segment");
        }
        let current = keys.iter().try_fold(shape, |v, k| v.get(k));
        let value = match current {
            Some(serde_json::Value::Bool(_)) => match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Value::from(true),
                "false" | "0" | "no" | "off" => Value::from(false),
                _ => bail!("environment variable {name} must be true or false"),
            },
            Some(serde_json::Value::Number(_)) => {
                let n: i64 = raw
                    .trim()
                    .parse()
                    .with_context(|| format!("environment variable {name} must be a whole number"))?;
                Value::from(n)
            }
            Some(serde_json::Value::Array(_) | serde_json::Value::Object(_)) => parse_json(&name, &raw)?,
            _ if raw.trim_start().starts_with(['[', '{']) => parse_json(&name, &raw)?,
            _ => Value::from(raw),
        };
        insert_path(&mut root, &keys, value);
    }
    Ok(root)
}

fn parse_json(name: &str, raw: &str) -> anyhow::Result<Value> {
    let json: serde_json::Value = serde_json::from_str(raw)
        .with_context(|| format!("environment variable {name} must be JSON, e.g. [\"a\",\"b\"]"))?;
    Ok(json_to_figment(json))
}

fn insert_path(dict: &mut Dict, keys: &[String], value: Value) {
    let (first, rest) = keys.split_first().expect("non-empty");
    if rest.is_empty() {
        dict.insert(first.clone(), value);
        return;
    }
    let entry = dict.entry(first.clone()).or_insert_with(|| Value::from(Dict::new()));
    if let Value::Dict(_, inner) = entry {
        insert_path(inner, rest, value);
    } else {
        let mut inner = Dict::new();
        insert_path(&mut inner, rest, value);
        *entry = Value::from(inner);
    }
}

fn json_to_figment(json: serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::from(String::new()),
        serde_json::Value::Bool(b) => Value::from(b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            _ => Value::from(n.to_string()),
        },
        serde_json::Value::String(s) => Value::from(s),
        serde_json::Value::Array(items) => {
            Value::from(items.into_iter().map(json_to_figment).collect::<Vec<_>>())
        }
        serde_json::Value::Object(map) => {
            Value::from(map.into_iter().map(|(k, v)| (k, json_to_figment(v))).collect::<Dict>())
        }
    }
}

#[cfg(test)]
mod docs_page;

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn base() -> Vec<(String, String)> {
        env(&[("SIDECAR__OIDC__ISSUER", "https://kc/realms/r"), ("SIDECAR__OIDC__AUDIENCES", "[\"app\"]")])
    }

    #[test]
    fn env_overrides_take_json_lists_and_tables() {
        let mut vars = base();
        vars.extend(env(&[
            ("SIDECAR__AUTH__RULES", r#"[{"prefix":"/admin","require":true,"roles_any":["admin"]}]"#),
            ("SIDECAR__OIDC__LEEWAY_SECS", "5"),
            ("SIDECAR__HEADERS__USERINFO", "false"),
            ("OTHER", "ignored"),
        ]));
        let c = Config::load(None, vars).unwrap();
        assert_eq!(c.oidc.audiences, vec!["app"]);
        assert_eq!(c.auth.rules[0].prefix, "/admin");
        assert!(c.auth.rules[0].require);
        assert_eq!(c.oidc.leeway_secs, 5);
        assert!(!c.headers.userinfo);
    }

    #[test]
    fn unknown_keys_are_an_error_naming_the_key() {
        let mut vars = base();
        vars.push(("SIDECAR__OIDC__AUDIENCE".into(), "app".into()));
        let err = Config::load(None, vars).unwrap_err().to_string();
        assert!(err.contains("audience"), "{err}");
    }

    #[test]
    fn empty_audiences_refuse_to_start_unless_allowed() {
        let vars = env(&[("SIDECAR__OIDC__ISSUER", "https://kc/realms/r")]);
        let err = Config::load(None, vars.clone()).unwrap_err().to_string();
        assert!(err.contains("oidc.audiences"), "{err}");
        let mut vars = vars;
        vars.push(("SIDECAR__OIDC__ALLOW_ANY_AUDIENCE".into(), "true".into()));
        assert!(Config::load(None, vars).is_ok());
    }

    #[test]
    fn secrets_are_redacted_and_read_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cr3t-value\n").unwrap();
        let mut vars = base();
        vars.push(("SIDECAR__KEYCLOAK_ADMIN__CLIENT_SECRET_FILE".into(), secret.display().to_string()));
        vars.push(("SIDECAR__DATABASE__URL".into(), "postgres://u:pw-123@db/x".into()));
        let c = Config::load(None, vars).unwrap();
        assert_eq!(c.keycloak_admin.client_secret.as_ref().unwrap().expose_secret(), "s3cr3t-value");
        let printed = c.redacted_toml().unwrap();
        assert!(!printed.contains("s3cr3t-value") && !printed.contains("pw-123"), "{printed}");
        assert!(!format!("{c:?}").contains("pw-123"));
    }

    /// The file's contents are checked by its reader (`app::check`'s tests); a key file
    /// without Redis is a mistake the configuration alone shows.
    #[test]
    fn a_redis_key_file_without_redis_stops_startup() {
        let mut vars = base();
        vars.push(("SIDECAR__CACHE__REDIS_KEY_FILE".into(), "/run/secrets/redis-keys".into()));
        let err = format!("{:#}", Config::load(None, vars).unwrap_err());
        assert!(err.contains("cache.redis_key_file") && err.contains("cache.redis_url is not"), "{err}");
    }

    /// Each `cache.redis_mode` needs its own URL keys, and only those.
    #[test]
    fn a_redis_mode_without_its_urls_stops_startup() {
        for (extra, says) in [
            (vec![("REDIS_MODE", "cluster")], "cache.redis_urls is empty"),
            (vec![("REDIS_MODE", "cluster"), ("REDIS_URL", "redis://a:6379")], "not cache.redis_url"),
            (vec![("REDIS_URLS", r#"["redis://a:6379"]"#)], "cache.redis_mode is standalone"),
            (vec![("REDIS_MODE", "sentinel"), ("REDIS_URLS", r#"["redis://s:26379"]"#)], "sentinel_master"),
            (vec![("REDIS_CA_FILE", "/etc/ca.pem")], "no Redis is configured"),
        ] {
            let mut vars = base();
            vars.extend(extra.iter().map(|(k, v)| (format!("SIDECAR__CACHE__{k}"), v.to_string())));
            let err = format!("{:#}", Config::load(None, vars).unwrap_err());
            assert!(err.contains(says), "{extra:?}: {err}");
        }
        let mut vars = base();
        vars.push(("SIDECAR__CACHE__REDIS_MODE".into(), "cluster".into()));
        vars.push(("SIDECAR__CACHE__REDIS_URLS".into(), r#"["redis://:pw@a:6379","redis://b:6379"]"#.into()));
        let config = Config::load(None, vars).unwrap();
        assert_eq!(config.cache.redis_mode, RedisMode::Cluster);
        assert!(config.cache.has_redis());
        assert!(!config.redacted_toml().unwrap().contains("pw@"), "a URL's password is printed");
    }

    #[test]
    fn numeric_looking_secrets_stay_strings() {
        let mut vars = base();
        vars.push(("SIDECAR__KEYCLOAK_ADMIN__CLIENT_SECRET".into(), "12345".into()));
        let c = Config::load(None, vars).unwrap();
        assert_eq!(c.keycloak_admin.client_secret.unwrap().expose_secret(), "12345");
    }

    #[test]
    fn toml_file_is_layered_under_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[oidc]\nissuer = \"https://file/realms/r\"\naudiences = [\"a\"]\n[[auth.rules]]\nprefix = \"/x\"\nrequire = true\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), env(&[("SIDECAR__OIDC__AUDIENCES", "[\"b\"]")])).unwrap();
        assert_eq!(c.oidc.issuer, "https://file/realms/r");
        assert_eq!(c.oidc.audiences, vec!["b"]);
        assert_eq!(c.auth.rules.len(), 1);
    }

    #[test]
    fn the_active_organization_settings_default_off_and_are_read_from_the_environment() {
        let defaults = Config::load(None, base()).unwrap();
        assert!(!defaults.headers.scope_to_active_organization);
        assert_eq!(defaults.server.max_selections_per_minute, 30);
        let mut vars = base();
        vars.push(("SIDECAR__SERVER__MAX_SELECTIONS_PER_MINUTE".into(), "0".into()));
        vars.push(("SIDECAR__HEADERS__SCOPE_TO_ACTIVE_ORGANIZATION".into(), "true".into()));
        vars.push((
            "SIDECAR__AUTH__RULES".into(),
            r#"[{"prefix":"/checkout","active_organization":true}]"#.into(),
        ));
        let c = Config::load(None, vars).unwrap();
        assert!(c.headers.scope_to_active_organization);
        assert_eq!(c.server.max_selections_per_minute, 0);
        assert!(c.auth.rules[0].active_organization && !c.auth.rules[0].require);
    }

    #[test]
    fn allowed_origins_must_be_bare_origins() {
        let mut vars = base();
        vars.push(("SIDECAR__SERVER__ALLOWED_ORIGINS".into(), r#"["HTTPS://Shop.Example:443"]"#.into()));
        let c = Config::load(None, vars).unwrap();
        assert_eq!(c.server.allowed_origins, [Origin::parse("https://shop.example").unwrap()]);
        for bad in ["https://shop.example/", "null", "shop.example", "*"] {
            let mut vars = base();
            vars.push(("SIDECAR__SERVER__ALLOWED_ORIGINS".into(), format!("[\"{bad}\"]")));
            let err = Config::load(None, vars).unwrap_err().to_string();
            assert!(err.contains("allowed_origins") && err.contains("not an origin"), "{bad}: {err}");
        }
    }

    #[test]
    fn userinfo_claims_and_their_bound_are_checked_at_startup() {
        for (claims, max, want) in [
            (r#"["*", "sub"]"#, "8000", "must be the only entry"),
            (r#"["sub", ""]"#, "8000", "userinfo_claims[1] is empty"),
            (r#"["*"]"#, "100", "max_userinfo_bytes must be between 256 and 65536"),
            (r#"["sub"]"#, "70000", "max_userinfo_bytes must be between 256 and 65536"),
        ] {
            let mut vars = base();
            vars.push(("SIDECAR__HEADERS__USERINFO_CLAIMS".into(), claims.into()));
            vars.push(("SIDECAR__HEADERS__MAX_USERINFO_BYTES".into(), max.into()));
            let err = format!("{:#}", Config::load(None, vars).unwrap_err());
            assert!(err.contains(want), "{claims} {max}: {err}");
        }
        let mut vars = base();
        vars.push(("SIDECAR__HEADERS__USERINFO_CLAIMS".into(), r#"["*"]"#.into()));
        let c = Config::load(None, vars).unwrap();
        assert!(c.headers.all_userinfo_claims());
        assert_eq!(c.headers.max_userinfo_bytes, 8000);
        assert!(!Config::default().headers.all_userinfo_claims());
    }

    /// `config/default.toml` must name every key (set or commented out) and its values must
    /// be the built-in defaults, so the documented file never drifts from the code.
    #[test]
    fn default_toml_documents_every_key_with_its_default() {
        let text = include_str!("../config/default.toml");
        let documented: toml::Value = toml::from_str(text).unwrap();
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let toml::Value::Table(sections) = &defaults else { panic!() };
        for (section, keys) in sections {
            let toml::Value::Table(keys) = keys else { panic!() };
            for (key, value) in keys {
                let header = format!("[{section}]");
                let block = text.split(&header).nth(1).unwrap_or_else(|| panic!("{header} missing"));
                let block = block.split("\n[").next().unwrap();
                let mentioned = block.lines().any(|l| {
                    let l = l.trim_start_matches(['#', ' ']);
                    l.starts_with(&format!("{key} =")) || l.starts_with(&format!("[[{section}.{key}]]"))
                });
                assert!(mentioned, "config/default.toml does not document {section}.{key}");
                if let Some(set) = documented.get(section).and_then(|s| s.get(key)) {
                    if section == "database" && key == "url" {
                        continue; // a secret: serialised redacted
                    }
                    assert_eq!(set, value, "{section}.{key} differs from the built-in default");
                }
            }
        }
        // Options without a default serialise as absent; spot-check they are documented.
        for key in ["issuer", "discovery_url", "jwks_url", "ca_file"] {
            assert!(text.contains(&format!("# {key} =")), "oidc.{key}");
        }
    }
}
