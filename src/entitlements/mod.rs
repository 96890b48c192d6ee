//! Entitlements: from a verified principal to its B2B facts, and the signed entitlement token
//! that carries them (docs/contract.md §4, §5).
//!
//! [`Entitlements`] is the one component a request asks ([`Entitlements::facts`]) and the one
//! that forgets ([`Entitlements::invalidate_all`], [`Entitlements::invalidate_user`]). It owns
//! everything on a login's path; a login goes, in order:
//!
//! 1. **memory** ([`memory`]): a login this process reconciled (or found in Redis) is answered
//!    from memory, touching neither Redis nor the database;
//! 2. **Redis** ([`redis`], with `cache.redis_url`): a login another replica reconciled is
//!    taken from there and kept in memory;
//! 3. **reconcile**: else the user's memberships and contracts are reconciled with the token's
//!    organization claim in the store ([`crate::reconcile`]), and the result is kept in memory,
//!    in Redis and as the user's last known facts;
//! 4. **last known or 503**: when the store fails, `reconcile.on_store_error` says: `degrade`
//!    serves the last known facts marked `stale`, `reject` answers [`Unavailable`] (503).
//!
//! Every answer is rendered for the day of the request ([`mod@render`]): the header values and the
//! entitlement token, signed by [`Signer`] (whose public keys both ports serve as a JWKS).
//!
//! An invalidation is published through Redis first and applied to memory second (see
//! [`Entitlements::invalidate_user`]); writers call it after their write committed. The Redis
//! subscriber applies other replicas' invalidations ([`Entitlements::apply_invalidation`]).

pub mod active;
pub mod claims;
pub mod memory;
pub mod redis;
pub mod render;
pub mod sentinel;
pub mod signer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use time::{Date, OffsetDateTime};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use claims::{EntitlementClaims, exp_for};
pub use memory::{LoginEntry, LoginKey, Logins, login_key};
pub use redis::{EntryKeys, Invalidation, RedisTier};
pub use render::{RenderContext, render};
pub use signer::{KeyError, SignError, Signer};

use crate::auth::authenticator::unix_now;
use crate::auth::validate::Principal;
use crate::b2b::Facts;
use crate::config::{Config, OnStoreError, ReconcileConfig};
use crate::headers::{B2b, Status};
use crate::metrics::Metrics;
use crate::reconcile::apply::{Actor, Mode, Outcome, Reconciliation};
use crate::reconcile::plan::{UnclaimedMemberships, unclaimed_memberships};
use crate::store::model::Profile;
use crate::store::{Store, StoreError};
use crate::weigh::CacheBudget;

/// The store failed while reconciling a login and `reconcile.on_store_error = "reject"`: the
/// caller's facts are unknown (503, see `crate::error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("entitlements are unavailable: the store failed")
    }
}

impl std::error::Error for Unavailable {}

/// A login's path from principal to B2B facts, and the invalidations that end cached logins.
/// Built once by [`App::build`](crate::App::build) and shared (`AppState::entitlements`).
pub struct Entitlements {
    /// The memory tier: this process's reconciled logins and the invalidation generation.
    logins: Logins,
    /// Last known facts per user, served marked `stale` when the store fails and
    /// `reconcile.on_store_error = "degrade"`.
    last_known: moka::sync::Cache<String, Arc<Facts>>,
    /// The Redis tier (`cache.redis_url`): logins shared between replicas and the
    /// invalidation bus. `None`: this process caches on its own.
    redis: Option<Arc<RedisTier>>,
    /// Where a login is reconciled.
    store: Store,
    /// `[reconcile]`: when a claim is authoritative for removals, how long a login stays
    /// reconciled, and what a store failure does.
    policy: ReconcileConfig,
    /// Signs the entitlement token; its public keys are served as a JWKS on both ports.
    signer: Signer,
    /// `entitlements.issuer`: the token's `iss`.
    issuer: String,
    /// `entitlements.audience`: the token's `aud`.
    audience: String,
    /// `entitlements.ttl_secs`: the token's lifetime, never past the access token's.
    ttl_secs: u64,
    /// `headers.scope_to_active_organization`: contracts of the active organization only.
    scope_to_active_organization: bool,
    /// Login cache lookups and reconciliation counts.
    metrics: Arc<Metrics>,
}

impl Entitlements {
    /// The component as configured: reads the signing keys (`entitlements.*`) and the Redis
    /// key file, and connects to Redis lazily (a Redis that does not answer yet is logged, not
    /// fatal). `memory` bounds the memory tier.
    pub async fn build(
        config: &Config,
        store: Store,
        metrics: Arc<Metrics>,
        memory: CacheBudget,
    ) -> anyhow::Result<Entitlements> {
        let (signer, ephemeral) = Signer::from_files(
            config.entitlements.signing_key_file.as_deref(),
            &config.entitlements.previous_key_files,
        )?;
        if ephemeral {
            tracing::warn!(
                "entitlements.signing_key_file is not set: using an ephemeral signing key; \
                 replicas will disagree and tokens will not verify after a restart"
            );
        }
        let redis = match crate::entitlements::redis::Target::from_config(&config.cache)? {
            Some(target) => {
                let keys = match &config.cache.redis_key_file {
                    Some(path) => Some(EntryKeys::from_file(path)?),
                    None => None,
                };
                if keys.is_none() {
                    tracing::info!(
                        "cache.redis_key_file is not set: Redis entries are not signed, so Redis is \
                         inside the trust boundary"
                    );
                }
                let redis = RedisTier::connect(&target, keys, metrics.clone())?;
                if !redis.ping().await {
                    tracing::warn!(
                        "cache.redis_url(s): Redis does not answer; caching in memory only until it does"
                    );
                }
                Some(Arc::new(redis))
            }
            None => None,
        };
        let e = &config.entitlements;
        Ok(Entitlements {
            logins: Logins::bounded(memory, Duration::from_secs(config.reconcile.max_age_secs)),
            last_known: moka::sync::Cache::new(config.cache.max_entries),
            redis,
            store,
            policy: config.reconcile.clone(),
            signer,
            issuer: e.issuer.clone(),
            audience: e.audience.clone(),
            ttl_secs: e.ttl_secs,
            scope_to_active_organization: config.headers.scope_to_active_organization,
            metrics,
        })
    }

    /// The key set that signs the entitlement token (served as a JWKS).
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// What the entitlement token is signed with and says.
    pub fn render_context(&self) -> RenderContext<'_> {
        RenderContext {
            signer: &self.signer,
            issuer: &self.issuer,
            audience: &self.audience,
            ttl_secs: self.ttl_secs,
            scope_to_active_organization: self.scope_to_active_organization,
        }
    }

    /// The caller's B2B facts for this request and the status to report: `authenticated`, or
    /// `stale` when the store failed and the last known facts stand in.
    pub async fn facts(&self, p: &Principal) -> Result<(Arc<B2b>, Status), Unavailable> {
        self.lookup(p).await.map(|(_, b2b, status)| (b2b, status))
    }

    /// [`Entitlements::facts`] with the login's stored facts they were rendered from (the
    /// active-organization route lists the organizations' names and the choice's source).
    pub async fn lookup(&self, p: &Principal) -> Result<(Arc<Facts>, Arc<B2b>, Status), Unavailable> {
        let unclaimed =
            unclaimed_memberships(self.policy.removal, &p.scope, &self.policy.full_membership_scopes);
        let key = login_key(p, unclaimed);
        let now = unix_now();
        let today = OffsetDateTime::now_utc().date();
        if let Some(entry) = self.logins.get(&key) {
            self.metrics.count_cache("login", "hit");
            let b2b = entry.b2b(p, &self.render_context(), now, today);
            return Ok((entry.facts.clone(), b2b, Status::Authenticated));
        }
        self.metrics.count_cache("login", "miss");
        // Boxed: a login's future (Redis, the store's queries) is large, and every cached
        // request would otherwise carry its space in the handler's future and copy it each
        // time a layer moves that future.
        Box::pin(self.login(p, key, unclaimed, now, today)).await
    }

    /// A login that is not in memory: the Redis tier, else a reconciliation, else (store
    /// down) the last known facts or [`Unavailable`].
    async fn login(
        &self,
        p: &Principal,
        key: LoginKey,
        unclaimed: UnclaimedMemberships,
        now: u64,
        today: Date,
    ) -> Result<(Arc<Facts>, Arc<B2b>, Status), Unavailable> {
        // Captured before anything is read (Redis or the store): an invalidation from here on
        // keeps what is read out of the memory tier.
        let generation = self.logins.generation();
        let mut epochs = None;
        if let Some(redis) = &self.redis {
            match redis.lookup(&key, &p.sub).await {
                redis::Lookup::Hit(login) => {
                    // Reconciled by another replica: its deadline stays, so the login is still
                    // reconciled again `max_age_secs` after that replica did it.
                    let until = p.exp.min(login.expires_at);
                    let entry = self.logins.put(key, &p.sub, login.facts, until, generation);
                    self.remember(&p.sub, &entry.facts);
                    let b2b = entry.b2b(p, &self.render_context(), now, today);
                    return Ok((entry.facts.clone(), b2b, Status::Authenticated));
                }
                redis::Lookup::Miss(current) => epochs = Some(current),
                redis::Lookup::Unavailable => {}
            }
        }
        let profile =
            Profile { email: p.email.clone(), username: p.preferred_username.clone(), name: p.name.clone() };
        let actor = Actor("login".into());
        // Only a verified e-mail accepts seat assignments (docs/contract.md §12).
        let verified_email = p.email.as_deref().filter(|_| p.email_verified).map(|e| e.trim().to_lowercase());
        let result = async {
            let (outcome, facts) = Reconciliation {
                sub: &p.sub,
                profile: Some(&profile),
                claimed: &p.organizations.orgs,
                unclaimed,
                verified_email: verified_email.as_deref(),
                today,
                actor: &actor,
                mode: Mode::Apply,
                // The session's selection belongs to the login (its key holds the `sid`), so it
                // is read with the reconciliation, once per login, and cached with the facts
                // (docs/architecture.md).
                session: Some(p.sid.as_deref().unwrap_or("")),
            }
            .run(&self.store)
            .await?;
            Ok::<_, StoreError>((outcome, facts))
        }
        .instrument(tracing::info_span!("reconcile"))
        .await;
        match result {
            Ok((outcome, facts)) => {
                self.count_reconciliation(&outcome);
                if let (Some(redis), Some(epochs)) = (&self.redis, epochs) {
                    let until = p.exp.min(now.saturating_add(self.policy.max_age_secs));
                    redis.store(&key, &p.sub, &facts, epochs, until).await;
                }
                let entry = self.logins.put(key, &p.sub, facts, p.exp, generation);
                self.remember(&p.sub, &entry.facts);
                let b2b = entry.b2b(p, &self.render_context(), now, today);
                Ok((entry.facts.clone(), b2b, Status::Authenticated))
            }
            Err(e) => {
                self.metrics.reconciliations.get_or_create(&vec![("result", "error")]).inc();
                tracing::warn!(error = %e, "reconciliation failed; the store is unreachable or failing");
                match self.policy.on_store_error {
                    OnStoreError::Reject => Err(Unavailable),
                    OnStoreError::Degrade => {
                        let last = self.last_known.get(&p.sub).unwrap_or_else(|| Arc::new(Facts::default()));
                        let b2b = render(&last, p, &self.render_context(), now, today);
                        Ok((last, Arc::new(b2b), Status::Stale))
                    }
                }
            }
        }
    }

    /// Keeps a user's facts as their last known ones, without the session's selection: they
    /// stand in for any session of the user when the store fails. Facts without a selection
    /// (most logins) are shared with the login's cache entry, not copied.
    fn remember(&self, sub: &str, facts: &Arc<Facts>) {
        let last = if facts.selection.is_none() {
            facts.clone()
        } else {
            Arc::new(Facts { selection: None, ..Facts::clone(facts) })
        };
        self.last_known.insert(sub.to_owned(), last);
    }

    /// Counts a login's reconciliation and what it changed.
    fn count_reconciliation(&self, outcome: &Outcome) {
        let m = &self.metrics;
        let changed = if outcome.changed { "true" } else { "false" };
        m.reconciliations.get_or_create(&vec![("result", "ok"), ("changed", changed)]).inc();
        let plan = &outcome.plan;
        for (kind, n) in [
            ("membership_added", plan.add_memberships.len()),
            ("membership_unflagged", plan.unflag_memberships.len()),
            ("membership_removed", plan.remove_memberships.len()),
            ("contract_attached", plan.attach_contracts.len() - outcome.full_at_apply.len()),
            ("contract_detached", plan.detach_contracts.len()),
            ("keycloak_id_learned", plan.learn_keycloak_ids.len()),
        ] {
            if n > 0 {
                m.reconcile_changes.get_or_create(&vec![("kind", kind)]).inc_by(n as u64);
            }
        }
        m.seat_limit_skips.inc_by((plan.skipped_full.len() + outcome.full_at_apply.len()) as u64);
        if !outcome.accepted_assignments.is_empty() {
            m.count_assignments("accepted", outcome.accepted_assignments.len() as u64);
        }
        m.unknown_organizations.inc_by(plan.unknown_count() as u64);
    }

    /// An organization or contract changed: every cached login is stale, here and — through
    /// Redis, when configured — on every replica. Call it after the write committed.
    pub async fn invalidate_all(&self) {
        self.invalidate(Invalidation::All).await;
    }

    /// One user's memberships or attachments changed outside a login (admin, code, a
    /// Keycloak job): that user's cached logins are stale everywhere. Call it after the write
    /// committed.
    pub async fn invalidate_user(&self, sub: &str) {
        self.invalidate(Invalidation::User(sub.to_owned())).await;
    }

    /// Redis first, memory second: a request here that misses memory in between must not
    /// find the old Redis entry still current and put it back into memory (its generation,
    /// captured before its Redis lookup, predates the memory bump, so `Logins::put` refuses).
    async fn invalidate(&self, inv: Invalidation) {
        if let Some(redis) = &self.redis {
            redis.publish(&inv).await;
        }
        self.apply_invalidation(&inv);
    }

    /// Applies an invalidation to this process's memory only (the Redis subscriber calls it
    /// for other replicas' invalidations).
    pub fn apply_invalidation(&self, inv: &Invalidation) {
        match inv {
            Invalidation::All => self.logins.invalidate_all(),
            Invalidation::User(sub) => {
                self.logins.invalidate_user(sub);
                self.last_known.invalidate(sub);
            }
        }
    }

    /// The Redis tier, when `cache.redis_*` configures one (the change-event stream uses it).
    pub fn redis(&self) -> Option<Arc<RedisTier>> {
        self.redis.clone()
    }

    /// The task that applies other replicas' invalidations to this process until `stop`
    /// (see [`RedisTier::run_subscriber`]); `None` without Redis.
    pub fn invalidation_subscriber(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> Option<impl Future<Output = anyhow::Result<()>> + Send + 'static> {
        let redis = self.redis.clone()?;
        let this = self.clone();
        Some(redis.run_subscriber(move |inv| this.apply_invalidation(inv), stop))
    }
}
