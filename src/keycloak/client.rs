//! The Keycloak admin REST client: the four organization calls the sidecar makes, behind a
//! client-credentials token of its own service account.
//!
//! # Token
//!
//! The token comes from `{keycloak_admin.url}/realms/{realm}/protocol/openid-connect/token`,
//! built from the configured URL rather than read from the realm's discovery document: the
//! discovery document names Keycloak's *frontend* hostname (the one in tokens), which from
//! inside a cluster is often not reachable, while `keycloak_admin.url` is the address the
//! operator chose for exactly these calls. The client authenticates with `client_secret_post`
//! (id and secret in the form body, which needs no escaping rules beyond the form's own).
//!
//! The token is cached and fetched again [`REFRESH_MARGIN`] before it expires (half its
//! lifetime for very short-lived tokens). Fetching happens under an async mutex, so
//! concurrent callers share one token request (single flight) and the next caller finds the
//! fresh token. A `401` from the admin API (the token was revoked, or Keycloak restarted with
//! new keys) drops the cached token and the call is retried once with a new one.
//!
//! # Errors
//!
//! A [`KcError`] names the call that failed and the HTTP status or transport problem, and
//! never carries the token, the client secret or a response body beyond Keycloak's short
//! OAuth `error` code.

use std::fmt;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::KeycloakAdminConfig;

/// How long before its expiry a cached token is replaced.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// Characters escaped in a path segment or form value: everything but RFC 3986 unreserved.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The message features answer with when `keycloak_admin` is incomplete.
pub const NOT_CONFIGURED: &str =
    "keycloak_admin is not configured: set keycloak_admin.url, realm, client_id and client_secret.";

/// An organization as the admin API returns it (Keycloak 26 `OrganizationRepresentation`;
/// fields the sidecar does not use are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KcOrganization {
    pub id: Uuid,
    #[serde(default)]
    pub name: String,
    /// The alias tokens carry in the organization claim. Keycloak 26 always sets it.
    #[serde(default)]
    pub alias: String,
    #[serde(default)]
    pub description: Option<String>,
}

impl KcOrganization {
    /// The alias, or the name for an organization without one.
    pub fn alias_or_name(&self) -> &str {
        if self.alias.trim().is_empty() { &self.name } else { &self.alias }
    }
}

/// What adding a member did. Both are success: the user is a member now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddMember {
    Added,
    /// Keycloak answered `409`: the user already was a member.
    AlreadyMember,
}

/// What removing a member did. Both are success: the user is not a member now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveMember {
    Removed,
    /// Keycloak answered `404`: the user was not a member (or the organization or the user is
    /// gone), so there is nothing to remove.
    NotMember,
}

/// Which call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Token,
    ListOrganizations,
    AddMember,
    UserOrganizations,
    RemoveMember,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Call::Token => "token request",
            Call::ListOrganizations => "list organizations",
            Call::AddMember => "add organization member",
            Call::UserOrganizations => "list a user's organizations",
            Call::RemoveMember => "remove organization member",
        })
    }
}

/// A failed Keycloak call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KcError {
    pub call: Call,
    pub kind: KcErrorKind,
}

/// How a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KcErrorKind {
    /// Keycloak answered with this status; `error` is its OAuth error code when it sent one.
    Status { status: u16, error: Option<String> },
    /// No answer within `keycloak_admin.timeout_secs`.
    Timeout,
    /// The connection could not be made or broke.
    Transport(String),
    /// The answer was not the JSON expected.
    Body(String),
}

impl KcError {
    fn new(call: Call, kind: KcErrorKind) -> KcError {
        KcError { call, kind }
    }

    fn transport(call: Call, e: &reqwest::Error) -> KcError {
        let kind = if e.is_timeout() {
            KcErrorKind::Timeout
        } else if e.is_connect() {
            KcErrorKind::Transport("cannot connect".into())
        } else {
            // reqwest's own message names the URL, known from the config; the cause says more.
            let source = std::error::Error::source(e).map(|s| format!(": {s}")).unwrap_or_default();
            KcErrorKind::Transport(format!("request failed{source}"))
        };
        KcError::new(call, kind)
    }

    /// The HTTP status Keycloak answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self.kind {
            KcErrorKind::Status { status, .. } => Some(status),
            _ => None,
        }
    }

    /// Retrying cannot help: Keycloak refused the request itself (`400` bad request or unknown
    /// user, `404` unknown organization or user, `422`). Everything else — no answer, `5xx`,
    /// `429`, and `401`/`403` (credentials or roles an operator can still fix) — may pass later.
    pub fn is_permanent(&self) -> bool {
        self.call != Call::Token && matches!(self.status(), Some(400 | 404 | 422))
    }
}

impl fmt::Display for KcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keycloak {} failed: ", self.call)?;
        match &self.kind {
            KcErrorKind::Status { status, error: Some(error) } => write!(f, "HTTP {status} ({error})"),
            KcErrorKind::Status { status, error: None } => write!(f, "HTTP {status}"),
            KcErrorKind::Timeout => f.write_str("timed out"),
            KcErrorKind::Transport(detail) => f.write_str(detail),
            KcErrorKind::Body(detail) => write!(f, "unexpected answer: {detail}"),
        }
    }
}

impl std::error::Error for KcError {}

/// A cached access token and when to replace it.
struct CachedToken {
    value: SecretString,
    refresh_at: Instant,
}

/// The admin API client of one realm. Cheap to share behind an `Arc`.
pub struct KeycloakAdmin {
    http: reqwest::Client,
    /// `{url}/admin/realms/{realm}`.
    admin_base: String,
    token_url: String,
    client_id: String,
    client_secret: SecretString,
    page_size: u32,
    token: Mutex<Option<CachedToken>>,
}

impl fmt::Debug for KeycloakAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret or the token.
        f.debug_struct("KeycloakAdmin")
            .field("admin_base", &self.admin_base)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
}

impl KeycloakAdmin {
    /// The client for `config`, or `None` when a required setting is missing (see
    /// [`KeycloakAdminConfig::is_configured`]). Fails on an unreadable `ca_file`.
    pub fn from_config(config: &KeycloakAdminConfig) -> anyhow::Result<Option<KeycloakAdmin>> {
        let (Some(url), Some(realm), Some(client_id), Some(secret)) =
            (&config.url, &config.realm, &config.client_id, &config.client_secret)
        else {
            return Ok(None);
        };
        if !config.is_configured() {
            return Ok(None);
        }
        let http = crate::auth::discovery::http_client(
            Duration::from_secs(config.timeout_secs),
            config.ca_file.as_deref(),
        )?;
        let base = url.trim_end_matches('/');
        let realm = utf8_percent_encode(realm, ESCAPED).to_string();
        Ok(Some(KeycloakAdmin {
            http,
            admin_base: format!("{base}/admin/realms/{realm}"),
            token_url: format!("{base}/realms/{realm}/protocol/openid-connect/token"),
            client_id: client_id.clone(),
            client_secret: secret.clone(),
            page_size: config.page_size.max(1),
            token: Mutex::new(None),
        }))
    }

    /// Every organization of the realm, paged with `first`/`max` until a short page, in
    /// Keycloak's order (by name). An organization listed twice (the list moved between two
    /// pages) is returned once.
    pub async fn list_organizations(&self) -> Result<Vec<KcOrganization>, KcError> {
        let call = Call::ListOrganizations;
        let mut all: Vec<KcOrganization> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut first: u64 = 0;
        loop {
            let url = format!(
                "{}/organizations?first={first}&max={}&briefRepresentation=false",
                self.admin_base, self.page_size
            );
            let res = self.send(call, |token| self.http.get(&url).bearer_auth(token)).await?;
            let page: Vec<KcOrganization> = json(call, res).await?;
            let len = page.len() as u64;
            let mut new = 0;
            for org in page {
                if seen.insert(org.id) {
                    all.push(org);
                    new += 1;
                }
            }
            if len < u64::from(self.page_size) {
                return Ok(all);
            }
            if new == 0 {
                // A full page of organizations already seen: the server ignores `first`.
                return Err(KcError::new(call, KcErrorKind::Body("paging does not advance".into())));
            }
            first += len;
        }
    }

    /// Adds the user (`user_id`: the Keycloak user id, which is the token's `sub`) to the
    /// organization. `409` means already a member, which is success too.
    pub async fn add_member(&self, organization: Uuid, user_id: &str) -> Result<AddMember, KcError> {
        let call = Call::AddMember;
        let url = format!("{}/organizations/{organization}/members", self.admin_base);
        // Keycloak takes the user id as a bare JSON string.
        let body = serde_json::to_string(user_id).expect("a string serialises");
        let res = self
            .send(call, |token| {
                self.http
                    .post(&url)
                    .bearer_auth(token)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?;
        match res.status().as_u16() {
            200..=299 => Ok(AddMember::Added),
            409 => Ok(AddMember::AlreadyMember),
            status => Err(KcError::new(call, KcErrorKind::Status { status, error: None })),
        }
    }

    /// Removes the user from the organization (`DELETE …/organizations/{id}/members/{userId}`,
    /// Keycloak's `OrganizationMemberResource`). Keycloak answers `204`, or `404` when the user
    /// is not a member (or either does not exist), which is success too: the user is not a
    /// member. Any other status is an error, classified as usual ([`KcError::is_permanent`]).
    pub async fn remove_member(&self, organization: Uuid, user_id: &str) -> Result<RemoveMember, KcError> {
        let call = Call::RemoveMember;
        let url = format!(
            "{}/organizations/{organization}/members/{}",
            self.admin_base,
            utf8_percent_encode(user_id, ESCAPED)
        );
        let res = self.send(call, |token| self.http.delete(&url).bearer_auth(token)).await?;
        match res.status().as_u16() {
            200..=299 => Ok(RemoveMember::Removed),
            404 => Ok(RemoveMember::NotMember),
            status => Err(KcError::new(call, KcErrorKind::Status { status, error: None })),
        }
    }

    /// The organizations the user is a member of (ids, aliases, names). `404` when Keycloak
    /// has no such user.
    pub async fn user_organizations(&self, user_id: &str) -> Result<Vec<KcOrganization>, KcError> {
        let call = Call::UserOrganizations;
        let url = format!(
            "{}/organizations/members/{}/organizations",
            self.admin_base,
            utf8_percent_encode(user_id, ESCAPED)
        );
        let res = self.send(call, |token| self.http.get(&url).bearer_auth(token)).await?;
        json(call, res).await
    }

    /// Sends the request `build` makes with a token; on `401` drops that token and tries once
    /// more with a new one. Any other status is the caller's to judge.
    async fn send(
        &self,
        call: Call,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, KcError> {
        let mut retried = false;
        loop {
            let token = self.token().await?;
            let res = build(token.expose_secret()).send().await.map_err(|e| KcError::transport(call, &e))?;
            if res.status() == reqwest::StatusCode::UNAUTHORIZED && !retried {
                self.forget(&token).await;
                retried = true;
                continue;
            }
            return Ok(res);
        }
    }

    /// A valid token: the cached one, or a new one fetched while holding the lock, so that
    /// callers arriving meanwhile wait for it instead of asking too.
    async fn token(&self) -> Result<SecretString, KcError> {
        let mut slot = self.token.lock().await;
        if let Some(cached) = slot.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok(cached.value.clone());
        }
        let fresh = self.fetch_token().await?;
        let value = fresh.value.clone();
        *slot = Some(fresh);
        Ok(value)
    }

    /// Drops the cached token if it is still `used` (another caller may have replaced it).
    async fn forget(&self, used: &SecretString) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|c| c.value.expose_secret() == used.expose_secret()) {
            *slot = None;
        }
    }

    async fn fetch_token(&self) -> Result<CachedToken, KcError> {
        let call = Call::Token;
        let form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}",
            utf8_percent_encode(&self.client_id, ESCAPED),
            utf8_percent_encode(self.client_secret.expose_secret(), ESCAPED)
        );
        let asked_at = Instant::now();
        let res = self
            .http
            .post(&self.token_url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| KcError::transport(call, &e))?;
        let status = res.status();
        if !status.is_success() {
            let error = res.json::<OAuthError>().await.ok().map(|e| e.error.chars().take(64).collect());
            return Err(KcError::new(call, KcErrorKind::Status { status: status.as_u16(), error }));
        }
        let body: TokenResponse = res
            .json()
            .await
            .map_err(|_| KcError::new(call, KcErrorKind::Body("no access_token in the answer".into())))?;
        // Keycloak always sends expires_in; without it, assume its default lifetime.
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(60));
        Ok(CachedToken {
            value: SecretString::from(body.access_token),
            refresh_at: asked_at + usable_for(lifetime),
        })
    }
}

/// How long a token of `lifetime` is used: until [`REFRESH_MARGIN`] before it expires, or
/// half its lifetime when that is shorter.
fn usable_for(lifetime: Duration) -> Duration {
    lifetime - REFRESH_MARGIN.min(lifetime / 2)
}

/// A success status with a JSON body of type `T`, or the error.
async fn json<T: serde::de::DeserializeOwned>(call: Call, res: reqwest::Response) -> Result<T, KcError> {
    let status = res.status();
    if !status.is_success() {
        return Err(KcError::new(call, KcErrorKind::Status { status: status.as_u16(), error: None }));
    }
    let bytes = res.bytes().await.map_err(|e| KcError::transport(call, &e))?;
    serde_json::from_slice(&bytes).map_err(|e| KcError::new(call, KcErrorKind::Body(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_replaced_thirty_seconds_early_or_at_half_life() {
        assert_eq!(usable_for(Duration::from_secs(300)), Duration::from_secs(270));
        assert_eq!(usable_for(Duration::from_secs(60)), Duration::from_secs(30));
        assert_eq!(usable_for(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(usable_for(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn errors_name_the_call_and_status_and_classify_permanence() {
        let e = KcError::new(Call::AddMember, KcErrorKind::Status { status: 503, error: None });
        assert_eq!(e.to_string(), "Keycloak add organization member failed: HTTP 503");
        assert!(!e.is_permanent());
        let e = KcError::new(Call::AddMember, KcErrorKind::Status { status: 404, error: None });
        assert!(e.is_permanent());
        let e = KcError::new(
            Call::Token,
            KcErrorKind::Status { status: 401, error: Some("invalid_client".into()) },
        );
        assert_eq!(e.to_string(), "Keycloak token request failed: HTTP 401 (invalid_client)");
        assert!(!e.is_permanent(), "credentials can be fixed while the job waits");
        assert!(!KcError::new(Call::UserOrganizations, KcErrorKind::Timeout).is_permanent());
    }

    #[test]
    fn the_client_is_built_only_when_fully_configured() {
        let mut config = KeycloakAdminConfig {
            url: Some("http://kc:8080/".into()),
            realm: Some("acme".into()),
            client_id: Some("sidecar".into()),
            ..KeycloakAdminConfig::default()
        };
        assert!(KeycloakAdmin::from_config(&config).unwrap().is_none());
        assert_eq!(config.missing(), ["client_secret"]);
        config.client_secret = Some(SecretString::from("s3cret"));
        let client = KeycloakAdmin::from_config(&config).unwrap().unwrap();
        assert_eq!(client.admin_base, "http://kc:8080/admin/realms/acme");
        assert_eq!(client.token_url, "http://kc:8080/realms/acme/protocol/openid-connect/token");
        assert!(!format!("{client:?}").contains("s3cret"));
    }

    #[test]
    fn organizations_without_an_alias_fall_back_to_their_name() {
        let org: KcOrganization =
            serde_json::from_value(serde_json::json!({"id": Uuid::nil(), "name": "Acme", "enabled": true}))
                .unwrap();
        assert_eq!(org.alias_or_name(), "Acme");
        assert_eq!(org.description, None);
    }
}
