//! The request-level authentication step: find the token, answer from the token cache or run
//! the validation policy (refetching keys once on an unknown `kid`), and classify the caller.
//!
//! A request without a token is anonymous; a request whose token fails is rejected and never
//! downgraded to anonymous (SPEC §2).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use moka::Expiry;
use sha2::{Digest, Sha256};

use crate::auth::jwks::Jwks;
use crate::auth::validate::{Policy, Principal, Reject, check_claims, pre_parse, verify_signature};
use crate::config::TokenSource;
use crate::metrics::Metrics;

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    Anonymous,
    Authenticated(Arc<Principal>),
}

/// Why a token could not be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The token is bad: 401.
    Rejected(Reject),
    /// No key set was ever loaded, so nothing can be verified: 503.
    KeysUnavailable,
}

/// Validated tokens by SHA-256 of the token, each kept until its `exp`.
pub type TokenCache = moka::sync::Cache<[u8; 32], Arc<Principal>>;

struct UntilExp;

impl Expiry<[u8; 32], Arc<Principal>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Principal>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(value.exp.saturating_sub(unix_now())))
    }
}

/// A token cache whose entries never outlive their token, bounded by `budget` in entries and
/// in estimated bytes (a principal weighs what its claims hold: see [`crate::weigh`]).
pub fn token_cache(budget: crate::weigh::CacheBudget) -> TokenCache {
    moka::sync::Cache::builder()
        .max_capacity(budget.capacity())
        .weigher(move |_: &[u8; 32], p: &Arc<Principal>| budget.weight(crate::weigh::principal(p)))
        .expire_after(UntilExp)
        .build()
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The token of a request, from the configured sources in order. A non-Bearer
/// `Authorization` (Basic for the app, say) is not ours and is skipped; a credential header
/// that is not visible ASCII is a malformed token, never an anonymous request.
pub fn extract_token<'h>(headers: &'h HeaderMap, sources: &[TokenSource]) -> Result<Option<&'h str>, Reject> {
    for source in sources {
        let token = match source {
            TokenSource::Authorization => {
                let Some(value) = headers.get(header::AUTHORIZATION) else { continue };
                let value = value.to_str().map_err(|_| Reject::Malformed)?;
                let Some((scheme, token)) = value.split_once(' ') else { continue };
                if !scheme.eq_ignore_ascii_case("bearer") {
                    continue;
                }
                token.trim()
            }
            TokenSource::XAccessToken => {
                let Some(value) = headers.get("x-access-token") else { continue };
                let value = value.to_str().map_err(|_| Reject::Malformed)?.trim();
                value.strip_prefix("Bearer ").unwrap_or(value)
            }
        };
        if !token.is_empty() {
            return Ok(Some(token));
        }
    }
    Ok(None)
}

/// Authentication dependencies, shared by every request.
pub struct Authenticator {
    pub policy: Policy,
    pub jwks: Arc<Jwks>,
    pub tokens: TokenCache,
    pub sources: Vec<TokenSource>,
    pub metrics: Arc<Metrics>,
}

impl Authenticator {
    /// Classifies a request by its headers.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Failure> {
        let token = match extract_token(headers, &self.sources) {
            Ok(Some(token)) => token,
            Ok(None) => {
                self.decision("anonymous");
                return Ok(Caller::Anonymous);
            }
            Err(reject) => {
                self.decision(reject.code());
                return Err(Failure::Rejected(reject));
            }
        };
        match self.principal(token).await {
            Ok(p) => {
                self.decision("ok");
                Ok(Caller::Authenticated(p))
            }
            Err(failure) => {
                self.decision(match failure {
                    Failure::Rejected(r) => r.code(),
                    Failure::KeysUnavailable => "keys_unavailable",
                });
                Err(failure)
            }
        }
    }

    fn decision(&self, reason: &'static str) {
        self.metrics.count_auth(reason);
    }

    /// The principal for a token: cached, or validated now.
    pub async fn principal(&self, token: &str) -> Result<Arc<Principal>, Failure> {
        if token.len() > self.policy.max_token_bytes {
            return Err(Failure::Rejected(Reject::TooLarge));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(p) = self.tokens.get(&digest) {
            // The cache drops entries at `exp`; the leeway still applies at the boundary.
            if p.exp.saturating_add(self.policy.leeway_secs) > unix_now() {
                self.metrics.count_cache("token", "hit");
                return Ok(p);
            }
        }
        self.metrics.count_cache("token", "miss");
        // Boxed: validation may refetch the JWKS (an HTTP request, a large future) that a
        // cached token never needs but would otherwise carry and copy along.
        let principal = Arc::new(Box::pin(self.validate(token)).await?);
        self.tokens.insert(digest, principal.clone());
        Ok(principal)
    }

    async fn validate(&self, token: &str) -> Result<Principal, Failure> {
        let unverified = pre_parse(token, &self.policy).map_err(Failure::Rejected)?;
        let (keys, generation) = self.jwks.current();
        let verified = match keys.as_deref().map(|k| k.select(unverified.kid.as_deref(), unverified.alg)) {
            Some(Ok(key)) => verify_signature(&unverified, &key.key),
            Some(Err(Reject::UnknownKid)) | None => {
                // One shared refetch; `None` back means no newer keys could be had.
                let Some(fresh) = self.jwks.refresh_for_unknown_kid(generation).await else {
                    return Err(if keys.is_none() && !self.jwks.is_loaded() {
                        Failure::KeysUnavailable
                    } else {
                        Failure::Rejected(Reject::UnknownKid)
                    });
                };
                let key =
                    fresh.select(unverified.kid.as_deref(), unverified.alg).map_err(Failure::Rejected)?;
                verify_signature(&unverified, &key.key)
            }
            Some(Err(other)) => Err(other),
        };
        verified.map_err(Failure::Rejected)?;
        check_claims(&unverified, &self.policy, unix_now()).map_err(Failure::Rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_come_from_the_configured_sources_in_order() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwdw=="));
        h.insert("x-access-token", HeaderValue::from_static("abc"));
        let both = [TokenSource::Authorization, TokenSource::XAccessToken];
        assert_eq!(extract_token(&h, &both), Ok(Some("abc")));
        assert_eq!(extract_token(&h, &[TokenSource::Authorization]), Ok(None));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer xyz"));
        assert_eq!(extract_token(&h, &both), Ok(Some("xyz")));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(extract_token(&h, &[TokenSource::Authorization]), Ok(None));
        h.insert(header::AUTHORIZATION, HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap());
        assert_eq!(extract_token(&h, &[TokenSource::Authorization]), Err(Reject::Malformed));
    }
}
