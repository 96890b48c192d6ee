//! The issuer's signing keys: parsed once per fetch into a [`KeySet`], served lock-free
//! from an [`ArcSwap`], refreshed in the background and on an unknown `kid`.
//!
//! An unknown `kid` triggers at most one fetch at a time (single-flight: waiters queue on a
//! mutex and take the outcome of the fetch that finished while they waited — the key set it
//! installed, or its failure) and at most one per `oidc.jwks_min_refresh_secs`, so a flood of
//! random kids costs Keycloak a handful of requests, and a request never waits for more than
//! one fetch (`oidc.http_timeout_secs`) however many queue while Keycloak hangs. A failed
//! fetch never replaces the last good key set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Mutex;
use tracing::Instrument as _;

use crate::auth::discovery::Discovery;
use crate::auth::validate::Reject;
use crate::metrics::Metrics;

/// What kind of key a JWK holds; decides which algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

/// One verification key from the issuer's JWKS.
pub struct VerifyKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it names one: the token's must then be the same.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

/// A parsed JWKS: only signing keys (`use` absent or `sig`) of supported types.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
}

impl KeySet {
    /// Parses a JWKS document; keys that are not for signing or not usable are skipped.
    pub fn parse(body: &[u8]) -> anyhow::Result<KeySet> {
        let set: JwkSet = serde_json::from_slice(body)?;
        let keys = set.keys.iter().filter_map(verify_key).collect();
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token. `UnknownKid` is the only answer a refetch can change.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&VerifyKey, Reject> {
        let key = match kid {
            Some(kid) => {
                self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)).ok_or(Reject::UnknownKid)?
            }
            None => match self.keys.as_slice() {
                [only] => only,
                [] => return Err(Reject::UnknownKid),
                _ => return Err(Reject::AmbiguousKey),
            },
        };
        if !key.kind.fits(alg) || key.alg.is_some_and(|a| a != alg) {
            return Err(Reject::KeyMismatch);
        }
        Ok(key)
    }
}

fn verify_key(jwk: &Jwk) -> Option<VerifyKey> {
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => KeyKind::Ed25519,
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(signing_alg(a)?),
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey { kid: jwk.common.key_id.clone(), kind, alg, key })
}

/// A JWK `alg` that names a signature algorithm; encryption algorithms make the key unusable.
fn signing_alg(a: KeyAlgorithm) -> Option<Algorithm> {
    use KeyAlgorithm as K;
    Some(match a {
        K::RS256 => Algorithm::RS256,
        K::RS384 => Algorithm::RS384,
        K::RS512 => Algorithm::RS512,
        K::PS256 => Algorithm::PS256,
        K::PS384 => Algorithm::PS384,
        K::PS512 => Algorithm::PS512,
        K::ES256 => Algorithm::ES256,
        K::ES384 => Algorithm::ES384,
        K::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The live key set and the machinery that keeps it fresh.
pub struct Jwks {
    current: ArcSwapOption<KeySet>,
    /// Bumped on every install, so a waiter can tell a fetch happened while it queued.
    generation: AtomicU64,
    /// Bumped when any fetch ends, failed or not, so a waiter can tell that a fetch it queued
    /// behind has failed and take that answer instead of starting another one.
    fetches_ended: AtomicU64,
    /// Single-flight gate for all fetches; holds the time of the last fetch caused by an
    /// unknown kid. Only those are throttled: a background refresh that just ran must not
    /// stop a rotation right after it from being picked up.
    fetch_gate: Mutex<Option<Instant>>,
    min_refresh: Duration,
    discovery: Discovery,
    /// Set while the serving key set came from the store rather than from Keycloak.
    stale: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Jwks {
    pub fn new(discovery: Discovery, min_refresh: Duration, metrics: Arc<Metrics>) -> Jwks {
        Jwks {
            current: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            fetches_ended: AtomicU64::new(0),
            fetch_gate: Mutex::new(None),
            min_refresh,
            discovery,
            stale: AtomicBool::new(false),
            metrics,
        }
    }

    /// The key set in force and its generation.
    pub fn current(&self) -> (Option<Arc<KeySet>>, u64) {
        let generation = self.generation.load(Ordering::Acquire);
        (self.current.load_full(), generation)
    }

    /// Whether a key set has been loaded (readiness).
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Installs a key set (from a fetch, or from the store when `stale`).
    pub fn install(&self, set: KeySet, stale: bool) {
        self.current.store(Some(Arc::new(set)));
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.stale.store(stale, Ordering::Relaxed);
        self.metrics.jwks_stale.set(i64::from(stale));
    }

    /// Fetches now (background refresh and startup). Returns the raw JWKS on success so the
    /// caller can persist it.
    pub async fn refresh(&self) -> anyhow::Result<Vec<u8>> {
        let _single_flight = self.fetch_gate.lock().await;
        self.fetch_and_install().await
    }

    /// Called when a token names a kid the current set lacks. `seen` is the generation the
    /// caller looked at. Returns the key set to retry with, or `None` when no new keys came.
    pub async fn refresh_for_unknown_kid(&self, seen: u64) -> Option<Arc<KeySet>> {
        let ended_before = self.fetches_ended.load(Ordering::Acquire);
        let mut last = self.fetch_gate.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            // Someone installed keys while we waited: retry with those, no fetch.
            return self.current.load_full();
        }
        if self.fetches_ended.load(Ordering::Acquire) != ended_before {
            // A fetch ended while we waited and brought no keys: Keycloak is failing or
            // hanging right now. Share that answer; a fetch of our own, queued behind it,
            // would make every waiter wait one timeout more than the one before it.
            self.metrics.jwks_fetches.get_or_create(&vec![("result", "shared_failure")]).inc();
            return None;
        }
        if last.is_some_and(|t| t.elapsed() < self.min_refresh) {
            self.metrics.jwks_fetches.get_or_create(&vec![("result", "throttled")]).inc();
            return None;
        }
        *last = Some(Instant::now());
        match self.fetch_and_install().await {
            Ok(_) => self.current.load_full(),
            Err(_) => None,
        }
    }

    async fn fetch_and_install(&self) -> anyhow::Result<Vec<u8>> {
        let result = async {
            let body = self.discovery.fetch_jwks().await?;
            let set = KeySet::parse(&body)?;
            anyhow::ensure!(!set.is_empty(), "the JWKS has no usable signing key");
            Ok::<_, anyhow::Error>((body, set))
        }
        .instrument(tracing::info_span!("jwks_fetch"))
        .await;
        let outcome = match result {
            Ok((body, set)) => {
                self.metrics.jwks_fetches.get_or_create(&vec![("result", "ok")]).inc();
                self.install(set, false);
                Ok(body)
            }
            Err(e) => {
                self.metrics.jwks_fetches.get_or_create(&vec![("result", "error")]).inc();
                tracing::warn!(error = %e, "JWKS fetch failed; keeping the last good key set");
                Err(e)
            }
        };
        self.fetches_ended.fetch_add(1, Ordering::AcqRel);
        outcome
    }
}
