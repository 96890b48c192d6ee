//! From a verified principal to its B2B facts: the cached login when there is one, else a
//! reconciliation (SPEC §4), else — when the store is down — the last known facts marked
//! `stale` or a 503, as `reconcile.on_store_error` says.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::auth::gate::unix_now;
use crate::auth::validate::Principal;
use crate::config::OnStoreError;
use crate::entitlements::logins::{RenderContext, login_key, render};
use crate::error::ApiError;
use crate::headers::{B2b, Status};
use crate::reconcile::apply::{Actor, Snapshot, reconcile_user};
use crate::reconcile::plan::removal_is_authoritative;
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
        let authoritative =
            removal_is_authoritative(reconcile.removal, &p.scope, &reconcile.full_membership_scopes);
        let key = login_key(p, authoritative);
        let now = unix_now();
        let today = OffsetDateTime::now_utc().date();
        if let Some(entry) = self.logins.get(&key) {
            self.metrics.cache.get_or_create(&vec![("cache", "login"), ("result", "hit")]).inc();
            return Ok((entry.b2b(p, &self.render_context(), now, today), Status::Authenticated));
        }
        self.metrics.cache.get_or_create(&vec![("cache", "login"), ("result", "miss")]).inc();

        let generation = self.logins.generation();
        let profile =
            Profile { email: p.email.clone(), username: p.preferred_username.clone(), name: p.name.clone() };
        let actor = Actor("login".into());
        let result = reconcile_user(
            &self.store,
            &p.sub,
            Some(&profile),
            &p.organizations.orgs,
            authoritative,
            today,
            &actor,
            false,
        )
        .await;
        match result {
            Ok((outcome, snapshot)) => {
                self.count_reconciliation(&outcome);
                self.last_known.insert(p.sub.clone(), Arc::new(snapshot.clone()));
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
                        let last =
                            self.last_known.get(&p.sub).unwrap_or_else(|| Arc::new(Snapshot::default()));
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
    /// An organization or contract changed: every cached login is stale (on every replica
    /// once the Redis bus carries it).
    pub async fn invalidate_all(&self) {
        self.logins.invalidate_all();
    }

    /// One user's memberships or attachments changed outside a login (admin, code).
    pub async fn invalidate_user(&self, sub: &str) {
        self.logins.invalidate_user(sub);
        self.last_known.invalidate(sub);
    }
}
