//! Admin authentication (docs/contract.md §6), a middleware on every `/admin/v1/*` route.
//!
//! `Authorization: Bearer X` is accepted when either
//! - SHA-256(X), lower-case hex, is one of `admin.token_sha256` (a static token for scripts and
//!   operators; the configured `name` becomes the audit actor `admin:<name>`), or
//! - X is a valid Keycloak access token holding one of `admin.required_roles`, as a realm role
//!   or as `client:role` for a client listed in `oidc.client_roles_of` (the principal's
//!   roles); the actor is `admin:<preferred_username>`, or `admin:<sub>` without one.
//!
//! No token, or a token that is neither → 401 with a `Bearer` challenge; a valid Keycloak
//! token without an admin role → 403. Static tokens are checked first: hashing is cheap and has
//! no side effects, and an opaque static token never needs the JWKS.
//!
//! Read-only access (docs/contract.md §11): a static token with `access = "read"`, or a
//! Keycloak token holding one of `admin.read_roles` (and none of `admin.required_roles`), may
//! use every `GET` (and `HEAD`) of `/admin/v1`; any other method is 403 before the handler
//! runs. Handlers that show enrollment codes mask them for read access ([`Admin::masks_codes`]).
//!
//! Every [`Admin`] also carries a [`Scope`]: the whole API for the admin port, one organization
//! for a manager on the public port (`super::manage`). A handler reachable from a manage route
//! checks that what it touches lies within the scope ([`Admin::within`], 404 otherwise).

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::auth::authenticator::extract_token;
use crate::config::{AdminAccess, StaticToken, TokenSource};
use crate::error::ApiError;
use crate::reconcile::apply::Actor;
use crate::state::AppState;
use crate::store::model::NewAuditEvent;

/// An authenticated admin; handlers take it to name the actor of their audit events, to mask
/// what read access may not see and to keep within its scope.
#[derive(Debug, Clone)]
pub struct Admin {
    actor: String,
    access: AdminAccess,
    scope: Scope,
}

/// What an [`Admin`] may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything: an admin on the admin port.
    All,
    /// One organization (by key) and what belongs to it: a manager on the public port.
    Organization(String),
}

impl Admin {
    /// A manager of the organization `key` (docs/contract.md §11): write access within it,
    /// audited as `manager:<sub>`.
    pub fn manager(sub: &str, key: &str) -> Admin {
        Admin {
            actor: format!("manager:{sub}"),
            access: AdminAccess::Write,
            scope: Scope::Organization(key.to_owned()),
        }
    }

    /// `admin:<who>`, or `manager:<sub>`.
    pub fn actor(&self) -> Actor {
        Actor(self.actor.clone())
    }

    /// Read or write.
    pub fn access(&self) -> AdminAccess {
        self.access
    }

    /// Whether enrollment codes are shown as their fingerprint (read access): a read-only
    /// admin cannot redeem what it sees.
    pub fn masks_codes(&self) -> bool {
        self.access == AdminAccess::Read
    }

    /// The organization this admin is limited to, if any.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The key of the one organization this admin may reach, `None` for the whole API. A list
    /// handler filters by it.
    pub fn organization(&self) -> Option<&str> {
        match &self.scope {
            Scope::All => None,
            Scope::Organization(key) => Some(key),
        }
    }

    /// The `organization` filter of a list: the query's own for the whole API; for one
    /// organization, that organization (a query naming another one is 404, as if unknown).
    pub fn filter_organization(&self, asked: Option<String>) -> Result<Option<String>, ApiError> {
        match (&self.scope, asked) {
            (Scope::All, asked) => Ok(asked),
            (Scope::Organization(own), Some(other)) if *own != other => {
                Err(ApiError::NotFound(format!("No organization with key `{other}`.")))
            }
            (Scope::Organization(own), _) => Ok(Some(own.clone())),
        }
    }

    /// `Ok` when something of the organization `key` is within this admin's scope; otherwise
    /// 404 with `detail` (the same answer as for something that does not exist, so a manager
    /// learns nothing about other organizations).
    pub fn within(&self, key: &str, detail: impl FnOnce() -> String) -> Result<(), ApiError> {
        match &self.scope {
            Scope::Organization(own) if own != key => Err(ApiError::NotFound(detail())),
            _ => Ok(()),
        }
    }

    /// The audit reason of a change made through this admin's API: `admin API`, or `manage
    /// API` for a manager on the public port.
    pub fn reason(&self) -> &'static str {
        match self.scope {
            Scope::All => "admin API",
            Scope::Organization(_) => "manage API",
        }
    }

    /// An audit event by this admin; the caller fills in what it is about.
    pub fn event(&self, action: &str, reason: &str) -> NewAuditEvent {
        NewAuditEvent {
            actor: self.actor.clone(),
            action: action.to_owned(),
            reason: Some(reason.to_owned()),
            ..NewAuditEvent::default()
        }
    }
}

/// The middleware: authenticates, then hands the [`Admin`] to the handler.
pub async fn require_admin(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let response = match authenticate(&state, request.headers(), request.method()).await {
        Ok(admin) => {
            request.extensions_mut().insert(admin);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    };
    state.metrics.count_response("admin", response.status().as_u16());
    response
}

async fn authenticate(state: &AppState, headers: &HeaderMap, method: &Method) -> Result<Admin, ApiError> {
    let admin = identify(state, headers).await?;
    if admin.access == AdminAccess::Read && !matches!(*method, Method::GET | Method::HEAD) {
        return Err(ApiError::Forbidden("Read-only admin access: only GET requests are allowed.".into()));
    }
    Ok(admin)
}

/// Who the credential is and what it may do.
async fn identify(state: &AppState, headers: &HeaderMap) -> Result<Admin, ApiError> {
    let Some(token) =
        extract_token(headers, &[TokenSource::Authorization]).map_err(ApiError::InvalidToken)?
    else {
        return Err(ApiError::Unauthenticated);
    };
    let admin = &state.config.admin;
    if let Some(t) = static_token(token, &admin.token_sha256) {
        return Ok(Admin { actor: format!("admin:{}", t.name), access: t.access, scope: Scope::All });
    }
    let principal = state.auth.authenticator.principal(token).await.map_err(ApiError::from)?;
    let holds = |roles: &[String]| roles.iter().any(|role| principal.roles.contains(role));
    let access = if holds(&admin.required_roles) {
        AdminAccess::Write
    } else if holds(&admin.read_roles) {
        AdminAccess::Read
    } else {
        return Err(ApiError::Forbidden("The token does not carry an admin role.".into()));
    };
    let who = principal.preferred_username.as_deref().filter(|u| !u.is_empty()).unwrap_or(&principal.sub);
    Ok(Admin { actor: format!("admin:{who}"), access, scope: Scope::All })
}

/// The static token whose hash is SHA-256(`token`). Every configured hash is compared, each in
/// constant time, so the answer's timing says nothing about which (or how much of one) matched.
fn static_token<'c>(token: &str, configured: &'c [StaticToken]) -> Option<&'c StaticToken> {
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut found = None;
    for t in configured {
        // Validated as 64 hex digits at startup; either case is accepted.
        let Ok(expected) = <[u8; 32]>::try_from(hex::decode(&t.sha256).unwrap_or_default()) else {
            continue;
        };
        if constant_time_eq(&digest, &expected) && found.is_none() {
            found = Some(t);
        }
    }
    found
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Admin>().cloned().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("admin route without the require_admin middleware"))
        })
    }
}

/// Logs, once at startup, required roles that can never match: a `client:role` whose client is
/// not in `oidc.client_roles_of` is not among a principal's roles.
pub fn warn_about_unreachable_roles(config: &crate::config::Config) {
    let roles = config.admin.required_roles.iter().map(|r| (r, "admin.required_roles"));
    for (role, key) in roles.chain(config.admin.read_roles.iter().map(|r| (r, "admin.read_roles"))) {
        if let Some((client, _)) = role.split_once(':')
            && !config.oidc.client_roles_of.iter().any(|c| c == client)
        {
            tracing::warn!(
                role = %role,
                key,
                "an admin role names a client role of a client missing from oidc.client_roles_of; \
                 it will only match a realm role of that exact name"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, sha256: String) -> StaticToken {
        StaticToken { name: name.into(), sha256, access: AdminAccess::Write }
    }

    #[test]
    fn a_static_token_matches_by_its_sha256_in_either_case() {
        let hash = hex::encode(Sha256::digest(b"s3cret"));
        let tokens = [token("other", "00".repeat(32)), token("ops", hash.to_uppercase())];
        let name = |token: &str, tokens: &[StaticToken]| static_token(token, tokens).map(|t| t.name.clone());
        assert_eq!(name("s3cret", &tokens).as_deref(), Some("ops"));
        assert_eq!(name("s3cret ", &tokens), None);
        assert_eq!(name("", &tokens), None);
        assert_eq!(name("s3cret", &[]), None);
    }
}
