//! From a verified principal to its B2B facts: the cached login when there is one, else a
//! reconciliation (docs/contract.md §4), else — when the store is down — the last known facts marked
//! `stale` or a 503, as `reconcile.on_store_error` says. With Redis, a login missing from
//! memory is looked up in the shared tier before it is reconciled (see [`crate::cache`]).

use std::sync::Arc;

use time::{Date, OffsetDateTime};

use crate::auth::gate::unix_now;
use crate::auth::validate::Principal;
use crate::b2b::Facts;
use crate::cache::{Invalidation, Lookup};
use crate::config::OnStoreError;
use crate::entitlements::logins::{LoginKey, RenderContext, login_key, render};
use crate::error::ApiError;
use crate::headers::{B2b, Status};
use crate::reconcile::apply::{Actor, Mode, Reconciliation};
use crate::reconcile::plan::{UnclaimedMemberships, unclaimed_memberships};
use crate::state::AppState;
use crate::store::model::Profile;

impl AppState {
    /// The render context of the entitlement token.
    pub fn render_context(&self) -> RenderContext<'_> {
        let e = &self.config.entitlements;
        RenderContext { signer: &self.signer, issuer: &e.issuer, audience: &e.audience, ttl_secs: e.ttl_secs }
    }

    /// The caller's B2B facts and the status to report.
    pub async fn b2b(&self, p: &Principal) -> Result<(Arc<B2b>, Status), ApiError> {
        let reconcile = &self.config.reconcile;
        let unclaimed = unclaimed_memberships(reconcile.removal, &p.scope, &reconcile.full_membership_scopes);
        let key = login_key(p, unclaimed);
        let now = unix_now();
        let today = OffsetDateTime::now_utc().date();
        if let Some(entry) = self.logins.get(&key) {
            self.metrics.count_cache("login", "hit");
            return Ok((entry.b2b(p, &self.render_context(), now, today), Status::Authenticated));
        }
        self.metrics.count_cache("login", "miss");
        // Boxed: a login's future (Redis, the store's queries) is large, and every cached
        // request would otherwise carry its space in the handler's future and copy it each
        // time a layer moves that future.
        Box::pin(self.login(p, key, unclaimed, now, today)).await
    }

    /// A login that is not cached here: the Redis tier, else a reconciliation, else (store
    /// down) the last known facts or 503.
    async fn login(
        &self,
        p: &Principal,
        key: LoginKey,
        unclaimed: UnclaimedMemberships,
        now: u64,
        today: Date,
    ) -> Result<(Arc<B2b>, Status), ApiError> {
        let reconcile = &self.config.reconcile;
        // Captured before anything is read (Redis or the store): an invalidation from here on
        // keeps what is read out of the memory tier.
        let generation = self.logins.generation();
        let mut epochs = None;
        if let Some(shared) = &self.shared {
            match shared.lookup(&key, &p.sub).await {
                Lookup::Hit(login) => {
                    // Reconciled by another replica: its deadline stays, so the login is still
                    // reconciled again `max_age_secs` after that replica did it.
                    let until = p.exp.min(login.expires_at);
                    let entry = self.logins.put(key, &p.sub, login.snapshot, until, generation);
                    self.last_known.insert(p.sub.clone(), entry.snapshot.clone());
                    return Ok((entry.b2b(p, &self.render_context(), now, today), Status::Authenticated));
                }
                Lookup::Miss(current) => epochs = Some(current),
                Lookup::Unavailable => {}
            }
        }
        let profile =
            Profile { email: p.email.clone(), username: p.preferred_username.clone(), name: p.name.clone() };
        let actor = Actor("login".into());
        let result = Reconciliation {
            sub: &p.sub,
            profile: Some(&profile),
            claimed: &p.organizations.orgs,
            unclaimed,
            today,
            actor: &actor,
            mode: Mode::Apply,
        }
        .run(&self.store)
        .await;
        match result {
            Ok((outcome, snapshot)) => {
                self.count_reconciliation(&outcome);
                self.last_known.insert(p.sub.clone(), Arc::new(snapshot.clone()));
                if let (Some(shared), Some(epochs)) = (&self.shared, epochs) {
                    let until = p.exp.min(now.saturating_add(reconcile.max_age_secs));
                    shared.store(&key, &p.sub, &snapshot, epochs, until).await;
                }
                let entry = self.logins.put(key, &p.sub, snapshot, p.exp, generation);
                Ok((entry.b2b(p, &self.render_context(), now, today), Status::Authenticated))
            }
            Err(e) => {
                self.metrics.reconciliations.get_or_create(&vec![("result", "error")]).inc();
                tracing::warn!(error = %e, "reconciliation failed; the store is unreachable or failing");
                match reconcile.on_store_error {
                    OnStoreError::Reject => Err(ApiError::Unavailable {
                        retry_after_secs: 5,
                        detail: "Entitlements are unavailable right now.".into(),
                    }),
                    OnStoreError::Degrade => {
                        let last = self.last_known.get(&p.sub).unwrap_or_else(|| Arc::new(Facts::default()));
                        let b2b = render(&last, p, &self.render_context(), now, today);
                        Ok((Arc::new(b2b), Status::Stale))
                    }
                }
            }
        }
    }

    fn count_reconciliation(&self, outcome: &crate::reconcile::apply::Outcome) {
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
        m.unknown_organizations.inc_by(plan.unknown_count() as u64);
    }
}

impl AppState {
    /// An organization or contract changed: every cached login is stale, here and — through
    /// Redis, when configured — on every replica. Call it after the write committed.
    pub async fn invalidate_all(&self) {
        self.invalidate(Invalidation::All).await;
    }

    /// One user's memberships or attachments changed outside a login (admin, code): that
    /// user's cached logins are stale everywhere. Call it after the write committed.
    pub async fn invalidate_user(&self, sub: &str) {
        self.invalidate(Invalidation::User(sub.to_owned())).await;
    }

    /// Redis first, memory second: a request here that misses memory in between must not
    /// find the old Redis entry still current and put it back into memory (its generation,
    /// captured before its Redis lookup, predates the memory bump, so `Logins::put` refuses).
    async fn invalidate(&self, inv: Invalidation) {
        if let Some(shared) = &self.shared {
            shared.publish(&inv).await;
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
}
