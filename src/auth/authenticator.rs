//! The request-level authentication step: find the token, answer from the token cache or run
//! the validation policy (refetching keys once on an unknown `kid`), and classify the caller.
//!
//! A request without a token is anonymous; a request whose token fails is rejected and never
//! downgraded to anonymous (docs/contract.md §2).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use moka::Expiry;
use sha2::{Digest, Sha256};

use crate::auth::jwks::Jwks;
use crate::auth::validate::{Policy, Principal, Reject, check_claims, pre_parse, verify_signature};
use crate::config::TokenSource;
use crate::metrics::Metrics;
use crate::weigh::{CacheBudget, ENTRY_OVERHEAD, json, opt_string, string};

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
/// in estimated bytes (a principal weighs what its claims hold: see [`weight`]).
pub fn token_cache(budget: CacheBudget) -> TokenCache {
    moka::sync::Cache::builder()
        .max_capacity(budget.capacity())
        .weigher(move |_: &[u8; 32], p: &Arc<Principal>| budget.weight(weight(p)))
        .expire_after(UntilExp)
        .build()
}

/// Estimated bytes of a cached principal with its 32-byte key (see [`crate::weigh`]).
pub fn weight(p: &Principal) -> usize {
    let roles: usize = p.roles.iter().map(|r| size_of::<String>() + string(r)).sum();
    let orgs: usize = p
        .organizations
        .orgs
        .iter()
        .map(|o| size_of::<crate::auth::org_claim::ClaimedOrg>() + string(&o.alias))
        .sum();
    let userinfo: usize = p
        .userinfo
        .iter()
        .map(|(k, v)| size_of::<String>() + string(k) + json(v) + 2 * size_of::<usize>())
        .sum();
    ENTRY_OVERHEAD
        + 32
        + size_of::<Principal>()
        + string(&p.sub)
        + opt_string(&p.sid)
        + string(&p.scope)
        + opt_string(&p.email)
        + opt_string(&p.preferred_username)
        + opt_string(&p.name)
        + roles
        + orgs
        + userinfo
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A token found in a request, and the source it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential<'h> {
    pub token: &'h str,
    pub source: TokenSource,
}

/// The token of a request, from the configured sources (see [`find_credential`]).
pub fn extract_token<'h>(headers: &'h HeaderMap, sources: &[TokenSource]) -> Result<Option<&'h str>, Reject> {
    find_credential(headers, sources).map(|found| found.map(|c| c.token))
}

/// The credential of a request, read from the configured sources, refusing every reading
/// that is not the only one (docs/contract.md §2 v2). An app behind the sidecar may parse credentials
/// differently (split on any whitespace, take the last header, read another source), so
/// whatever it could read other than the validated token is [`Reject::Ambiguous`]:
///
/// - more than one `Authorization` header, whatever their schemes (and whether or not
///   `authorization` is a configured source);
/// - a configured source header present more than once;
/// - a value that starts with `Bearer` in any case but is not exactly `Bearer`, one space and
///   a non-empty token without whitespace (`Bearer<TAB>t`, `Bearer  t`, `Bearer t x`,
///   `Bearert`, `Bearer `);
/// - different tokens in two sources (the same token twice is one credential; the first
///   source in order is the one reported).
///
/// A non-Bearer `Authorization` (Basic for the app, say) is not ours and is skipped; a
/// configured credential header that is not visible ASCII is [`Reject::Malformed`], never an
/// anonymous request.
pub fn find_credential<'h>(
    headers: &'h HeaderMap,
    sources: &[TokenSource],
) -> Result<Option<Credential<'h>>, Reject> {
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    let first_authorization = authorization.next();
    if authorization.next().is_some() {
        return Err(Reject::Ambiguous);
    }
    let mut found: Option<Credential<'h>> = None;
    for &source in sources {
        let token = match source {
            TokenSource::Authorization => {
                let Some(value) = first_authorization else { continue };
                value.to_str().map_err(|_| Reject::Malformed)?;
                if !is_bearer(value.as_bytes()) {
                    continue;
                }
                bearer_token(value)?
            }
            TokenSource::XAccessToken => {
                let mut values = headers.get_all(X_ACCESS_TOKEN).iter();
                let Some(value) = values.next() else { continue };
                if values.next().is_some() {
                    return Err(Reject::Ambiguous);
                }
                let text = value.to_str().map_err(|_| Reject::Malformed)?;
                if text.is_empty() {
                    continue;
                }
                // APISIX sends the bare token; a `Bearer ` prefix is tolerated, exactly.
                if is_bearer(value.as_bytes()) { bearer_token(value)? } else { plain_token(text)? }
            }
        };
        match found {
            None => found = Some(Credential { token, source }),
            Some(first) if first.token == token => {}
            Some(_) => return Err(Reject::Ambiguous),
        }
    }
    Ok(found)
}

/// The header APISIX's openid-connect plugin puts the session's access token in.
pub const X_ACCESS_TOKEN: &str = "x-access-token";

/// Whether a credential value claims the Bearer scheme: it starts with `bearer` in any case.
/// Such a value is ours to validate (or to refuse), never passed on unread.
pub fn is_bearer(value: &[u8]) -> bool {
    value.get(..6).is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"bearer"))
}

/// `Bearer <token>`: the scheme (any case), exactly one space, a token.
fn bearer_token(value: &axum::http::HeaderValue) -> Result<&str, Reject> {
    let text = value.to_str().map_err(|_| Reject::Malformed)?;
    // `to_str` guarantees ASCII, so byte 6 is a character boundary.
    let token = text[6..].strip_prefix(' ').ok_or(Reject::Ambiguous)?;
    plain_token(token)
}

/// A token is non-empty and holds no whitespace: an app splitting on whitespace must read
/// the same token the sidecar validated.
fn plain_token(token: &str) -> Result<&str, Reject> {
    // Bytes, not chars: ASCII whitespace is never part of a multi-byte character, and a
    // byte loop skips decoding the token (a kilobyte or more) as UTF-8 on every request.
    if token.is_empty() || token.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(Reject::Ambiguous);
    }
    Ok(token)
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
        self.authenticate_with_source(headers).await.map(|(caller, _)| caller)
    }

    /// Classifies a request by its headers, and says which source the validated token came
    /// from (`None` for an anonymous caller), so the proxy can hand the app that one alone.
    pub async fn authenticate_with_source(
        &self,
        headers: &HeaderMap,
    ) -> Result<(Caller, Option<TokenSource>), Failure> {
        let Credential { token, source } = match find_credential(headers, &self.sources) {
            Ok(Some(credential)) => credential,
            Ok(None) => {
                self.decision("anonymous");
                return Ok((Caller::Anonymous, None));
            }
            Err(reject) => {
                self.decision(reject.code());
                return Err(Failure::Rejected(reject));
            }
        };
        match self.principal(token).await {
            Ok(p) => {
                self.decision("ok");
                Ok((Caller::Authenticated(p), Some(source)))
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
        h.insert(X_ACCESS_TOKEN, HeaderValue::from_static("abc"));
        let both = [TokenSource::Authorization, TokenSource::XAccessToken];
        assert_eq!(extract_token(&h, &both), Ok(Some("abc")));
        assert_eq!(extract_token(&h, &[TokenSource::Authorization]), Ok(None));
        // The same token in both sources is one credential, reported from the first source.
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        let found = find_credential(&h, &both).unwrap().unwrap();
        assert_eq!((found.token, found.source), ("abc", TokenSource::Authorization));
        let reversed = [TokenSource::XAccessToken, TokenSource::Authorization];
        assert_eq!(find_credential(&h, &reversed).unwrap().unwrap().source, TokenSource::XAccessToken);
        h.insert(header::AUTHORIZATION, HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap());
        assert_eq!(extract_token(&h, &[TokenSource::Authorization]), Err(Reject::Malformed));
    }

    fn with(pairs: &[(&'static str, &'static [u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        h
    }

    const BOTH: [TokenSource; 2] = [TokenSource::Authorization, TokenSource::XAccessToken];

    #[test]
    fn a_bearer_value_that_is_not_exactly_bearer_space_token_is_ambiguous() {
        for value in [
            &b"Bearer\tt"[..],
            b"Bearer  t",
            b"Bearer t x",
            b"Bearer t\t",
            b"Bearert",
            b"Bearer",
            b"Bearer ",
            b"bEaReR\tt",
        ] {
            let h = with(&[("authorization", value)]);
            let shown = String::from_utf8_lossy(value);
            assert_eq!(extract_token(&h, &BOTH), Err(Reject::Ambiguous), "{shown:?}");
            let h = with(&[("x-access-token", value)]);
            assert_eq!(extract_token(&h, &BOTH), Err(Reject::Ambiguous), "x-access-token {shown:?}");
        }
        for (value, token) in [("Bearer t", "t"), ("bearer t", "t"), ("BEARER a.b.c", "a.b.c")] {
            let h = with(&[("authorization", value.as_bytes())]);
            assert_eq!(extract_token(&h, &BOTH), Ok(Some(token)), "{value:?}");
        }
        assert_eq!(extract_token(&with(&[("x-access-token", b"a b")]), &BOTH), Err(Reject::Ambiguous));
        assert_eq!(extract_token(&with(&[("x-access-token", b"Bearer t")]), &BOTH), Ok(Some("t")));
    }

    #[test]
    fn more_than_one_authorization_header_is_ambiguous_whatever_the_schemes() {
        let cases: [&[(&str, &[u8])]; 4] = [
            &[("authorization", b"Bearer a"), ("authorization", b"Bearer a")],
            &[("authorization", b"Bearer a"), ("authorization", b"Bearer b")],
            &[("authorization", b"Basic dXNlcjpwdw=="), ("authorization", b"Bearer a")],
            &[("authorization", b"Basic dXNlcjpwdw=="), ("authorization", b"Basic eDp5")],
        ];
        for pairs in cases {
            let h = with(pairs);
            assert_eq!(extract_token(&h, &BOTH), Err(Reject::Ambiguous), "{pairs:?}");
            // Even where only X-Access-Token is read: the app behind may read either header.
            assert_eq!(extract_token(&h, &[TokenSource::XAccessToken]), Err(Reject::Ambiguous));
        }
    }

    #[test]
    fn a_token_source_given_twice_or_two_different_tokens_are_ambiguous() {
        let twice = with(&[("x-access-token", b"a"), ("x-access-token", b"a")]);
        assert_eq!(extract_token(&twice, &BOTH), Err(Reject::Ambiguous));
        // A source that is not configured is not read (the proxy removes it instead).
        assert_eq!(extract_token(&twice, &[TokenSource::Authorization]), Ok(None));
        let different = with(&[("authorization", b"Bearer a"), ("x-access-token", b"b")]);
        assert_eq!(extract_token(&different, &BOTH), Err(Reject::Ambiguous));
        assert_eq!(extract_token(&different, &[TokenSource::Authorization]), Ok(Some("a")));
        let basic_beside = with(&[("authorization", b"Basic dXNlcjpwdw=="), ("x-access-token", b"b")]);
        let found = find_credential(&basic_beside, &BOTH).unwrap().unwrap();
        assert_eq!((found.token, found.source), ("b", TokenSource::XAccessToken));
        assert_eq!(extract_token(&with(&[("x-access-token", b"")]), &BOTH), Ok(None), "empty is absent");
        assert_eq!(extract_token(&HeaderMap::new(), &BOTH), Ok(None));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Credential-header values built from the pieces that make them ambiguous.
        fn value() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                Just(&b"Bearer"[..]),
                Just(&b"bEARER"[..]),
                Just(&b"Basic"[..]),
                Just(&b" "[..]),
                Just(&b"\t"[..]),
                Just(&b"tok"[..]),
                Just(&b"en"[..]),
                Just(&b"."[..]),
            ];
            prop::collection::vec(piece, 0..6).prop_map(|pieces| pieces.concat())
        }

        fn headers() -> impl Strategy<Value = Vec<(bool, Vec<u8>)>> {
            // `true`: Authorization, `false`: X-Access-Token.
            prop::collection::vec((any::<bool>(), value()), 0..4)
        }

        proptest! {
            /// Whatever the sidecar accepts, an app reading any credential header any way
            /// (split on whitespace, first or last header, either source) finds that token
            /// or a non-Bearer value it never mistakes for one.
            #[test]
            fn an_accepted_token_is_the_only_token_an_app_can_read(pairs in headers()) {
                let mut h = HeaderMap::new();
                for (authorization, value) in &pairs {
                    let name = if *authorization { "authorization" } else { X_ACCESS_TOKEN };
                    h.append(name, HeaderValue::from_bytes(value).unwrap());
                }
                if let Ok(Some(token)) = extract_token(&h, &BOTH) {
                    prop_assert!(!token.is_empty() && !token.contains([' ', '\t']));
                    prop_assert!(h.get_all(header::AUTHORIZATION).iter().count() <= 1);
                    prop_assert!(h.get_all(X_ACCESS_TOKEN).iter().count() <= 1);
                    let bearer_form = |value: &HeaderValue| {
                        let text = value.to_str().unwrap();
                        text.len() > 7 && text.as_bytes()[6] == b' ' && &text[7..] == token
                    };
                    // A Bearer value anywhere is exactly `Bearer <token>`; a non-Bearer
                    // Authorization is the app's own (Basic…) and never names a token.
                    for value in h.get_all(header::AUTHORIZATION) {
                        prop_assert!(!is_bearer(value.as_bytes()) || bearer_form(value));
                    }
                    for value in h.get_all(X_ACCESS_TOKEN) {
                        let plain = value.to_str().unwrap();
                        prop_assert!(plain.is_empty() || plain == token || bearer_form(value), "{plain:?}");
                    }
                }
            }
        }
    }

    fn principal_with_claims(i: usize, claim_bytes: usize) -> Principal {
        let mut userinfo = serde_json::Map::new();
        userinfo.insert("name".into(), serde_json::Value::String("n".repeat(claim_bytes)));
        Principal {
            sub: format!("user-{i}"),
            sid: Some(format!("session-{i}")),
            exp: unix_now() + 3600,
            scope: "openid".into(),
            email: None,
            email_verified: false,
            preferred_username: None,
            name: Some("n".repeat(claim_bytes)),
            roles: vec!["reader".into()],
            organizations: Default::default(),
            userinfo,
        }
    }

    #[test]
    fn the_token_cache_stays_within_its_byte_budget_whatever_the_tokens_size() {
        let budget = CacheBudget { max_entries: 200_000, max_bytes: 2 * 1024 * 1024 };
        let cache = token_cache(budget);
        // 1,000 distinct tokens with 15 KB of claims each: ~30 MB if nothing bounded them.
        for i in 0..1000usize {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            cache.insert(key, std::sync::Arc::new(principal_with_claims(i, 7_500)));
        }
        cache.run_pending_tasks();
        assert!(cache.weighted_size() <= budget.max_bytes, "{} bytes", cache.weighted_size());
        assert!(cache.entry_count() < 1000, "nothing was evicted");
        assert!(cache.entry_count() > 0, "nothing was kept");
        // Each entry is weighed at no less than its claims' text.
        assert!(weight(&principal_with_claims(0, 7_500)) > 15_000);
    }

    #[test]
    fn the_token_cache_still_holds_at_most_max_entries_small_entries() {
        let budget = CacheBudget { max_entries: 50, max_bytes: 64 * 1024 * 1024 };
        let cache = token_cache(budget);
        for i in 0..500usize {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            cache.insert(key, std::sync::Arc::new(principal_with_claims(i, 10)));
        }
        cache.run_pending_tasks();
        assert!(cache.entry_count() <= 50, "{}", cache.entry_count());
    }
}
