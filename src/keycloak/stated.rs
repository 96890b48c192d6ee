//! Reconciling one user against a stated organization set
//! (`POST /admin/v1/reconcile/users/{sub}`, `reconcile --sub`, and each user of a
//! `reconcile.all` job): the same reconciliation as a login (docs/contract.md §4,
//! [`Reconciliation`]), fed with an organization set an admin states or that Keycloak's admin
//! API reports, instead of a token's claim.
//!
//! Removal is always authoritative here ([`UnclaimedMemberships::Remove`]): the set is the
//! user's complete membership (the admin states it in full; Keycloak's list of a user's
//! organizations is complete by construction), so a linked organization missing from it loses
//! the user, unless the membership is flagged `keep_until_seen`. No profile is recorded (there
//! is no token to read it from) and the login time stays as it was.

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::Error;
use super::client::{KcOrganization, KeycloakAdmin};
use crate::auth::org_claim::ClaimedOrg;
use crate::reconcile::apply::{Actor, Mode, Outcome, Reconciliation};
use crate::reconcile::plan::{ContractRef, OrgRef, UnclaimedMemberships};
use crate::store::{Store, StoreError};

/// Where the organization set of an admin reconciliation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = ReconcileSource)]
pub enum Source {
    /// The request body (`{"organizations": …}`, any claim shape).
    Body,
    /// Keycloak's admin API: the user's organizations with ids and aliases.
    Keycloak,
}

/// What an admin reconciliation did, or in a dry run would do. Organizations and contracts
/// are named by key, every list sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Reconciled {
    pub sub: String,
    pub dry_run: bool,
    pub source: Source,
    /// Whether anything was (in a dry run: would be) written.
    pub changed: bool,
    pub organizations: OrganizationChanges,
    pub contracts: ContractChanges,
    /// Entries matching no organization known here; ignored, as on login.
    pub unknown_organizations: Vec<UnknownOrganization>,
    /// Entries whose alias belongs to an organization linked to another Keycloak id; ignored.
    pub alias_mismatches: Vec<UnknownOrganization>,
    /// Malformed entries of the stated set, dropped (a body only).
    pub ignored_entries: usize,
}

/// Membership changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OrganizationChanges {
    /// New memberships (`source=claim`).
    pub added: Vec<String>,
    /// Memberships of linked organizations missing from the set (and not flagged).
    pub removed: Vec<String>,
    /// Memberships whose `keep_until_seen` flag was cleared because the set names them.
    pub unflagged: Vec<String>,
    /// Alias-only organizations that learned their Keycloak id.
    pub learned_keycloak_id: Vec<String>,
}

/// Attachment changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ContractChanges {
    /// `auto`/`managed` contracts attached (`source=sso`).
    pub attached: Vec<String>,
    /// `auto`/`managed` contracts of removed organizations detached (code attachments stay).
    pub detached: Vec<String>,
    /// Contracts that would have been attached but have no free seat.
    pub skipped_full: Vec<String>,
}

/// A stated organization that matched nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UnknownOrganization {
    pub alias: String,
    pub keycloak_id: Option<Uuid>,
}

impl Reconciled {
    fn new(sub: &str, source: Source, mode: Mode, ignored: usize, outcome: &Outcome) -> Reconciled {
        let keys = |orgs: &[OrgRef]| orgs.iter().map(|o| o.key.clone()).collect::<Vec<_>>();
        let contract_keys = |c: &mut dyn Iterator<Item = &ContractRef>| {
            let mut keys: Vec<String> = c.map(|c| c.key.clone()).collect();
            keys.sort();
            keys.dedup();
            keys
        };
        let plan = &outcome.plan;
        let refused = |c: &&ContractRef| outcome.full_at_apply.iter().any(|f| f.id == c.id);
        let mut learned: Vec<String> =
            plan.learn_keycloak_ids.iter().map(|l| l.organization.key.clone()).collect();
        learned.sort();
        Reconciled {
            sub: sub.to_owned(),
            dry_run: mode == Mode::DryRun,
            source,
            changed: outcome.changed,
            organizations: OrganizationChanges {
                added: keys(&plan.add_memberships),
                removed: keys(&plan.remove_memberships),
                unflagged: keys(&plan.unflag_memberships),
                learned_keycloak_id: learned,
            },
            contracts: ContractChanges {
                attached: contract_keys(&mut plan.attach_contracts.iter().filter(|c| !refused(c))),
                detached: contract_keys(&mut plan.detach_contracts.iter()),
                skipped_full: contract_keys(&mut plan.skipped_full.iter().chain(&outcome.full_at_apply)),
            },
            unknown_organizations: plan
                .unknown_claims
                .iter()
                .map(|c| UnknownOrganization { alias: c.alias.clone(), keycloak_id: c.id })
                .collect(),
            alias_mismatches: plan
                .alias_mismatches
                .iter()
                .map(|m| UnknownOrganization { alias: m.alias.clone(), keycloak_id: Some(m.claimed_id) })
                .collect(),
            ignored_entries: ignored,
        }
    }
}

/// The organization set Keycloak reports for a user, as claim entries with ids.
pub fn claimed_from_keycloak(orgs: &[KcOrganization]) -> Vec<ClaimedOrg> {
    let mut claimed: Vec<ClaimedOrg> =
        orgs.iter().map(|o| ClaimedOrg { alias: o.alias_or_name().to_owned(), id: Some(o.id) }).collect();
    claimed.sort();
    claimed.dedup();
    claimed
}

/// A stated organization set: the user's complete membership and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct StatedSet<'a> {
    /// The organizations, as claim entries.
    pub claimed: &'a [ClaimedOrg],
    /// Malformed entries of the set that were dropped (reported back, a body only).
    pub ignored: usize,
    pub source: Source,
}

/// Reconciles `sub` against the stated set (authoritative; see the module docs). A
/// [`Mode::DryRun`] plans and writes nothing. The caller invalidates the user's cached logins
/// when [`Reconciled::changed`] and not a dry run.
pub async fn reconcile_stated(
    store: &Store,
    sub: &str,
    stated: &StatedSet<'_>,
    actor: &Actor,
    mode: Mode,
) -> Result<Reconciled, StoreError> {
    let reconciliation = Reconciliation {
        sub,
        profile: None,
        claimed: stated.claimed,
        unclaimed: UnclaimedMemberships::Remove,
        verified_email: None,
        today: OffsetDateTime::now_utc().date(),
        actor,
        mode,
        session: None,
    };
    let (outcome, _) = reconciliation.run(store).await?;
    for m in &outcome.plan.alias_mismatches {
        tracing::warn!(
            alias = %m.alias,
            claimed_id = %m.claimed_id,
            organization = %m.organization.key,
            "the alias belongs to an organization linked to another Keycloak id; not matched"
        );
    }
    Ok(Reconciled::new(sub, stated.source, mode, stated.ignored, &outcome))
}

/// Reads the user's organizations from Keycloak and reconciles against them.
pub async fn reconcile_from_keycloak(
    store: &Store,
    keycloak: &KeycloakAdmin,
    sub: &str,
    actor: &Actor,
    mode: Mode,
) -> Result<Reconciled, Error> {
    let orgs = keycloak.user_organizations(sub).await?;
    let claimed = claimed_from_keycloak(&orgs);
    let stated = StatedSet { claimed: &claimed, ignored: 0, source: Source::Keycloak };
    Ok(reconcile_stated(store, sub, &stated, actor, mode).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::plan::Plan;

    fn org(id: i64, key: &str) -> OrgRef {
        OrgRef { id, key: key.into() }
    }

    fn contract(id: i64, key: &str) -> ContractRef {
        ContractRef { id, key: key.into(), organization_id: 1 }
    }

    #[test]
    fn contracts_refused_at_apply_count_as_skipped_not_attached() {
        let outcome = Outcome {
            plan: Plan {
                add_memberships: vec![org(1, "acme")],
                attach_contracts: vec![contract(10, "a-open"), contract(11, "a-raced")],
                skipped_full: vec![contract(12, "a-full")],
                ..Plan::default()
            },
            full_at_apply: vec![contract(11, "a-raced")],
            changed: true,
            ..Outcome::default()
        };
        let r = Reconciled::new("u1", Source::Body, Mode::Apply, 2, &outcome);
        assert_eq!(r.organizations.added, ["acme"]);
        assert_eq!(r.contracts.attached, ["a-open"]);
        assert_eq!(r.contracts.skipped_full, ["a-full", "a-raced"]);
        assert_eq!(r.ignored_entries, 2);
        assert!(!r.dry_run);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["source"], "body");
        assert_eq!(json["organizations"]["removed"], serde_json::json!([]));
    }

    #[test]
    fn keycloak_organizations_become_id_bearing_entries() {
        let id = Uuid::from_u128(7);
        let orgs: Vec<KcOrganization> = serde_json::from_value(serde_json::json!([
            {"id": id, "name": "Acme", "alias": "acme"},
            {"id": id, "name": "Acme", "alias": "acme"},
        ]))
        .unwrap();
        assert_eq!(claimed_from_keycloak(&orgs), [ClaimedOrg { alias: "acme".into(), id: Some(id) }]);
    }
}
