//! The `sync-orgs` and `reconcile --sub` commands: the admin API's operations run once from
//! the command line against the configured database and Keycloak, without serving.
//!
//! Changes are audited with the actor [`ACTOR`]. With `cache.redis_url` set the invalidation
//! is published, so running replicas drop their cached logins at once; without Redis a
//! running server picks the change up when its cached logins age out
//! (`reconcile.max_age_secs`).

use std::sync::Arc;

use anyhow::Context;

use super::KeycloakAdmin;
use super::stated::{Reconciled, reconcile_from_keycloak};
use super::sync::{SyncReport, sync_organizations};
use crate::config::Config;
use crate::entitlements::redis::Target;
use crate::entitlements::{Invalidation, RedisTier};
use crate::metrics::Metrics;
use crate::reconcile::apply::{Actor, Mode};
use crate::store::Store;

/// The audit actor of command-line changes.
pub const ACTOR: &str = "admin:cli";

/// What a command needs: the store, the client, and Redis when configured.
struct Offline {
    store: Store,
    keycloak: KeycloakAdmin,
    shared: Option<RedisTier>,
}

impl Offline {
    async fn open(config: &Config) -> anyhow::Result<Offline> {
        let Some(keycloak) = KeycloakAdmin::from_config(&config.keycloak_admin).context("keycloak_admin")?
        else {
            anyhow::bail!("{}", super::NOT_CONFIGURED);
        };
        let store = Store::connect(config.database_url(), config.database.max_connections.min(2))
            .await
            .context("cannot open database.url")?;
        if config.database.migrate_on_start {
            store.migrate().await?;
        }
        let shared = match Target::from_config(&config.cache)? {
            Some(target) => Some(RedisTier::connect(&target, None, Arc::new(Metrics::new()))?),
            None => None,
        };
        Ok(Offline { store, keycloak, shared })
    }

    /// Tells running replicas (through Redis) that cached logins are stale.
    async fn invalidate(&self, inv: Invalidation) {
        match &self.shared {
            Some(shared) if shared.ping().await => shared.publish(&inv).await,
            Some(_) => tracing::warn!(
                "Redis does not answer: running replicas see the change within reconcile.max_age_secs"
            ),
            None => tracing::info!(
                "no cache.redis_url: a running server sees the change within reconcile.max_age_secs"
            ),
        }
    }
}

/// `identity-sidecar sync-orgs`: imports Keycloak's organizations.
pub async fn sync_orgs(config: &Config) -> anyhow::Result<SyncReport> {
    let cx = Offline::open(config).await?;
    let report = sync_organizations(&cx.store, &cx.keycloak, &Actor(ACTOR.into())).await?;
    if report.changed() {
        cx.invalidate(Invalidation::All).await;
    }
    cx.store.close().await;
    Ok(report)
}

/// `identity-sidecar reconcile --sub SUB [--dry-run]`: reconciles one user against their
/// organizations in Keycloak.
pub async fn reconcile_sub(config: &Config, sub: &str, mode: Mode) -> anyhow::Result<Reconciled> {
    let cx = Offline::open(config).await?;
    let reconciled =
        reconcile_from_keycloak(&cx.store, &cx.keycloak, sub, &Actor(ACTOR.into()), mode).await?;
    if reconciled.changed && mode == Mode::Apply {
        cx.invalidate(Invalidation::User(sub.to_owned())).await;
    }
    cx.store.close().await;
    Ok(reconciled)
}
