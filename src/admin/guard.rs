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

use axum::extract::{FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::auth::authenticator::extract_token;
use crate::config::{StaticToken, TokenSource};
use crate::error::ApiError;
use crate::reconcile::apply::Actor;
use crate::state::AppState;
use crate::store::model::NewAuditEvent;

/// An authenticated admin; handlers take it to name the actor of their audit events.
#[derive(Debug, Clone)]
pub struct Admin {
    actor: String,
}

impl Admin {
    /// `admin:<who>`.
    pub fn actor(&self) -> Actor {
        Actor(self.actor.clone())
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
    let response = match authenticate(&state, request.headers()).await {
        Ok(admin) => {
            request.extensions_mut().insert(admin);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    };
    state.metrics.count_response("admin", response.status().as_u16());
    response
}

async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Admin, ApiError> {
    let Some(token) =
        extract_token(headers, &[TokenSource::Authorization]).map_err(ApiError::InvalidToken)?
    else {
        return Err(ApiError::Unauthenticated);
    };
    let admin = &state.config.admin;
    if let Some(name) = static_token_name(token, &admin.token_sha256) {
        return Ok(Admin { actor: format!("admin:{name}") });
    }
    let principal = state.auth.authenticator.principal(token).await.map_err(ApiError::from)?;
    if !admin.required_roles.iter().any(|role| principal.roles.contains(role)) {
        return Err(ApiError::Forbidden("The token does not carry an admin role.".into()));
    }
    let who = principal.preferred_username.as_deref().filter(|u| !u.is_empty()).unwrap_or(&principal.sub);
    Ok(Admin { actor: format!("admin:{who}") })
}

/// The name of the static token whose hash is SHA-256(`token`). Every configured hash is
/// compared, each in constant time, so the answer's timing says nothing about which (or how
/// much of one) matched.
fn static_token_name<'c>(token: &str, configured: &'c [StaticToken]) -> Option<&'c str> {
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut found = None;
    for t in configured {
        // Validated as 64 hex digits at startup; either case is accepted.
        let Ok(expected) = <[u8; 32]>::try_from(hex::decode(&t.sha256).unwrap_or_default()) else {
            continue;
        };
        if constant_time_eq(&digest, &expected) && found.is_none() {
            found = Some(t.name.as_str());
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
    for role in &config.admin.required_roles {
        if let Some((client, _)) = role.split_once(':')
            && !config.oidc.client_roles_of.iter().any(|c| c == client)
        {
            tracing::warn!(
                role = %role,
                "admin.required_roles names a client role of a client missing from oidc.client_roles_of; \
                 it will only match a realm role of that exact name"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, sha256: String) -> StaticToken {
        StaticToken { name: name.into(), sha256 }
    }

    #[test]
    fn a_static_token_matches_by_its_sha256_in_either_case() {
        let hash = hex::encode(Sha256::digest(b"s3cret"));
        let tokens = [token("other", "00".repeat(32)), token("ops", hash.to_uppercase())];
        assert_eq!(static_token_name("s3cret", &tokens), Some("ops"));
        assert_eq!(static_token_name("s3cret ", &tokens), None);
        assert_eq!(static_token_name("", &tokens), None);
        assert_eq!(static_token_name("s3cret", &[]), None);
    }
}
