//! Reconciliation against the store: load the user's rows, plan, write, all in one
//! transaction that starts by locking the user's row (`Store::begin_user`), so two replicas
//! reconciling the same user at once run one after the other and never duplicate or lose a
//! row. Seats are re-checked atomically by `attachments::claim_seat` whatever the plan predicted,
//! as the transaction's last writes (see `claim_seats`).
//!
//! Every reconciliation runs through [`Reconciliation::run`]: a login's (claimed set from the
//! token) and an admin's or a job's (a stated or Keycloak-reported set, see
//! [`crate::keycloak::stated`]). The admin API's membership removal reuses step 3 through
//! [`remove_membership`].

use std::collections::HashSet;

use serde::Serialize;
use time::Date;

use crate::auth::org_claim::ClaimedOrg;
use crate::b2b::{
    AttachmentSource, EntitledContract, EntitledOrganization, Facts, HeldContract, MembershipSource,
};
use crate::reconcile::accept::{AcceptedAssignment, accept_assignments};
use crate::reconcile::plan::{
    ContractRef, CurrentAttachment, CurrentMembership, KnownContract, KnownOrg, OrgRef, Plan,
    UnclaimedMemberships, UserState, detached_on_removal, plan,
};
use crate::store::model::{Attachment, Membership, NewAuditEvent, Profile};
use crate::store::user_rows::{self, UserRows};
use crate::store::{Store, StoreError, Tx, attachments, audit, memberships, organizations};

/// What a reconciliation did (the admin API's answer; the login path counts it).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub plan: Plan,
    /// Contracts the plan wanted to attach but the atomic seat check refused.
    pub full_at_apply: Vec<ContractRef>,
    /// Whether anything was written.
    pub changed: bool,
    /// Seat assignments the login accepted (docs/contract.md §12), before the plan was made.
    #[serde(skip)]
    pub accepted_assignments: Vec<AcceptedAssignment>,
}

/// Who causes a change, for audit events: `login`, `admin:<who>`, `code`.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// Whether a reconciliation writes what it plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plan and write, in one transaction.
    Apply,
    /// Plan, then roll back: nothing is written (the admin API's `?dry_run=true`).
    DryRun,
}

/// One reconciliation of one user: whose, against which claimed set, and how.
#[derive(Debug, Clone, Copy)]
pub struct Reconciliation<'a> {
    /// The user's subject.
    pub sub: &'a str,
    /// What a login says about the user, recorded on the user's row; `None` (admin, jobs)
    /// leaves the row's profile and login time as they were.
    pub profile: Option<&'a Profile>,
    /// The organizations claimed for the user: a token's claim, or a stated set.
    pub claimed: &'a [ClaimedOrg],
    /// Whether memberships the claimed set does not name are removed.
    pub unclaimed: UnclaimedMemberships,
    /// The token's e-mail, lower-cased, when its `email_verified` is true: a login accepts the
    /// seat assignments that name it ([`crate::reconcile::accept`]). `None` for admins and jobs.
    pub verified_email: Option<&'a str>,
    /// The UTC date contracts are judged valid on.
    pub today: Date,
    /// Who causes the changes, for the audit trail.
    pub actor: &'a Actor,
    pub mode: Mode,
    /// A login's session (`sid`, `""` without one): its active-organization selection is read
    /// by the statement that records the login (`Store::begin_login`, so only with a
    /// `profile`) into [`Facts::selection`], sparing the login a second connection and a
    /// statement. `None` (admins, jobs): not read.
    pub session: Option<&'a str>,
}

impl Reconciliation<'_> {
    /// Reconciles the user in one transaction: what was planned (and written, unless a dry
    /// run), and the user's B2B facts afterwards (a dry run's are those before).
    pub async fn run(&self, store: &Store) -> Result<(Outcome, Facts), StoreError> {
        let sub = self.sub;
        // A login's first statement also reads its assignments count and its session's
        // selection (`Store::begin_login`).
        let (mut tx, pending, selection) = match self.profile {
            Some(profile) => {
                let (tx, _user, pending, selection) =
                    store.begin_login(sub, profile, self.verified_email, self.session).await?;
                (tx, self.verified_email.filter(|_| pending), selection)
            }
            None => (store.begin_user(sub, None).await?.0, None, None),
        };
        let mut accepted = Vec::new();
        if let (Some(email), Mode::Apply) = (pending, self.mode) {
            accepted = accept_assignments(&mut tx, sub, email, self.today, &self.actor.0).await?;
        }
        let ids: Vec<uuid::Uuid> = self.claimed.iter().filter_map(|c| c.id).collect();
        let aliases: Vec<String> = self.claimed.iter().map(|c| c.alias.clone()).collect();
        let rows = user_rows::load(&mut tx, sub, &ids, &aliases).await?;
        let plan = plan(self.claimed, self.unclaimed, &to_plan_input(&rows), self.today);
        let mut outcome = Outcome {
            changed: !plan.is_empty() || !accepted.is_empty(),
            accepted_assignments: accepted,
            ..Outcome::default()
        };
        if self.mode == Mode::DryRun {
            tx.rollback().await?;
            outcome.plan = plan;
            return Ok((outcome, facts(&rows.memberships, &rows.attachments)));
        }
        let unclaimed = write_plan(&mut tx, sub, &plan, self.actor).await?;
        // A plan that changes no membership or attachment (the usual returning login; a skip
        // only touches the skip state) leaves the rows as read: the facts are made from them,
        // without reading them again.
        let (after_memberships, mut after_attachments) = if plan.is_empty() {
            (rows.memberships, rows.attachments)
        } else {
            user_rows::held(&mut tx, sub).await?
        };
        // The seats last: each locks its contract row until the commit (see `claim_seats`).
        outcome.full_at_apply = claim_seats(&mut tx, sub, unclaimed, self.actor).await?;
        if !outcome.full_at_apply.is_empty() {
            after_attachments = attachments::list_for_user(&mut tx, sub).await?;
        }
        let after = facts(&after_memberships, &after_attachments);
        tx.commit().await?;
        outcome.plan = plan;
        Ok((outcome, Facts { selection, ..after }))
    }
}

/// Reads a user's current B2B facts without reconciling (degraded paths, admin views).
pub async fn current_facts(store: &Store, sub: &str) -> Result<Facts, StoreError> {
    let mut conn = store.conn().await?;
    let m = memberships::list_for_user(&mut conn, sub).await?;
    let a = attachments::list_for_user(&mut conn, sub).await?;
    Ok(facts(&m, &a))
}

/// The plan's view of the rows the store loaded.
fn to_plan_input(rows: &UserRows) -> UserState {
    let mut organizations: Vec<KnownOrg> = rows
        .claimed
        .iter()
        .map(|o| KnownOrg {
            id: o.id,
            key: o.key.clone(),
            keycloak_id: o.keycloak_id,
            keycloak_alias: o.keycloak_alias.clone(),
        })
        .collect();
    for m in &rows.memberships {
        if !organizations.iter().any(|o| o.id == m.organization_id) {
            organizations.push(KnownOrg {
                id: m.organization_id,
                key: m.organization.clone(),
                keycloak_id: m.keycloak_id,
                keycloak_alias: m.keycloak_alias.clone(),
            });
        }
    }
    UserState {
        organizations,
        memberships: rows
            .memberships
            .iter()
            .map(|m| CurrentMembership {
                organization_id: m.organization_id,
                keep_until_seen: m.keep_until_seen,
                manager: m.manager,
                source: m.source,
            })
            .collect(),
        contracts: rows
            .sso_contracts
            .iter()
            .map(|c| KnownContract {
                id: c.id,
                key: c.key.clone(),
                organization_id: c.organization_id,
                membership_type: c.membership_type,
                active: c.active,
                starts_on: c.starts_on,
                ends_on: c.ends_on,
                max_learners: c.max_learners,
                seats_used: c.seats_used,
            })
            .collect(),
        attachments: rows
            .attachments
            .iter()
            .map(|a| CurrentAttachment { contract_id: a.contract_id, source: a.source })
            .collect(),
    }
}

/// An attachment [`write_plan`] inserted, with its `attachment.add` event, whose seat
/// [`claim_seats`] has yet to take.
struct Unclaimed {
    contract: ContractRef,
    audit_id: i64,
}

/// Writes the plan, the new attachments without their seats; returns those, for
/// [`claim_seats`].
async fn write_plan(
    tx: &mut Tx,
    sub: &str,
    plan: &Plan,
    actor: &Actor,
) -> Result<Vec<Unclaimed>, StoreError> {
    let event = |action: &str, organization: Option<&str>, contract: Option<&str>, reason: &str| {
        audit_event(actor, sub, action, organization, contract, reason)
    };
    for learned in &plan.learn_keycloak_ids {
        organizations::set_keycloak_id(tx, learned.organization.id, learned.keycloak_id).await?;
        let e =
            event("organization.learn_keycloak_id", Some(&learned.organization.key), None, "claimed with id");
        audit::insert(tx, &e).await?;
    }
    for org in &plan.add_memberships {
        if memberships::add(tx, sub, org.id, MembershipSource::Claim, memberships::Flags::default()).await? {
            audit::insert(tx, &event("membership.add", Some(&org.key), None, "claimed")).await?;
        }
    }
    for org in &plan.unflag_memberships {
        memberships::set_flags(tx, sub, org.id, Some(false), None).await?;
        audit::insert(tx, &event("membership.unflag", Some(&org.key), None, "seen in claim")).await?;
    }
    write_removals(tx, sub, &plan.detach_contracts, &plan.remove_memberships, actor, &NOT_CLAIMED).await?;
    // A skip is audited (and is a change event) only when the user's skip state changes.
    for contract in &plan.skipped_full {
        if attachments::record_skip(tx, sub, contract.id).await? {
            audit::insert(tx, &event("attachment.skipped_full", None, Some(&contract.key), "contract full"))
                .await?;
        }
    }
    // Ascending contract id: concurrent transactions lock contract rows in one order.
    let mut attach: Vec<&ContractRef> = plan.attach_contracts.iter().collect();
    attach.sort_by_key(|c| c.id);
    let mut unclaimed = Vec::new();
    for contract in attach {
        if attachments::insert(tx, sub, contract.id, AttachmentSource::Sso).await? {
            let e = event("attachment.add", None, Some(&contract.key), "sso contract");
            let audit_id = audit::insert(tx, &e).await?;
            unclaimed.push(Unclaimed { contract: contract.clone(), audit_id });
        }
    }
    Ok(unclaimed)
}

/// Takes the seats of the attachments [`write_plan`] inserted, in ascending contract id, as
/// the transaction's last writes: a seat's increment locks its contract row until the commit,
/// and every new login attaching that contract queues on the lock, so it is held for one
/// statement and the commit rather than for the rest of the reconciliation. On a full contract
/// the attachment is deleted again, its `attachment.add` event withdrawn (neither was ever
/// visible outside the transaction) and the skip recorded. Returns the full contracts.
async fn claim_seats(
    tx: &mut Tx,
    sub: &str,
    unclaimed: Vec<Unclaimed>,
    actor: &Actor,
) -> Result<Vec<ContractRef>, StoreError> {
    let mut full = Vec::new();
    for Unclaimed { contract, audit_id } in unclaimed {
        if attachments::claim_seat(tx, sub, contract.id).await? {
            continue;
        }
        audit::withdraw(tx, audit_id).await?;
        if attachments::record_skip(tx, sub, contract.id).await? {
            let e = audit_event(
                actor,
                sub,
                "attachment.skipped_full",
                None,
                Some(&contract.key),
                "contract full",
            );
            audit::insert(tx, &e).await?;
        }
        full.push(contract);
    }
    Ok(full)
}

/// Why memberships are removed, as the audit trail records it.
#[derive(Debug, Clone, Copy)]
pub struct RemovalReasons {
    /// Reason of each `membership.remove` event.
    pub membership: &'static str,
    /// Reason of each `attachment.remove` event that follows from it.
    pub attachment: &'static str,
}

/// Reconciliation's step 3: the claim no longer names the organization.
const NOT_CLAIMED: RemovalReasons =
    RemovalReasons { membership: "not claimed", attachment: "organization no longer claimed" };

/// Removes one membership exactly as step 3 of a reconciliation removes one (the admin API's
/// `DELETE /admin/v1/users/{sub}/organizations/{org}`): detaches the user from the
/// organization's `auto` and `managed` contracts except code, admin and assignment attachments
/// ([`detached_on_removal`]), deletes the membership, and writes one audit event per change.
/// Run it in a per-user transaction. Returns the detached contracts, or `None` when the user is
/// not a member (nothing written).
pub async fn remove_membership(
    tx: &mut Tx,
    sub: &str,
    organization_id: i64,
    actor: &Actor,
    reasons: &RemovalReasons,
) -> Result<Option<Vec<ContractRef>>, StoreError> {
    let rows = user_rows::load(tx, sub, &[], &[]).await?;
    let Some(membership) = rows.memberships.iter().find(|m| m.organization_id == organization_id) else {
        return Ok(None);
    };
    let organization = OrgRef { id: organization_id, key: membership.organization.clone() };
    let detach = detached_on_removal(&to_plan_input(&rows), &HashSet::from([organization_id]));
    write_removals(tx, sub, &detach, std::slice::from_ref(&organization), actor, reasons).await?;
    Ok(Some(detach))
}

/// Detaches, then deletes memberships, auditing each row that really went.
async fn write_removals(
    tx: &mut Tx,
    sub: &str,
    detach: &[ContractRef],
    remove: &[OrgRef],
    actor: &Actor,
    reasons: &RemovalReasons,
) -> Result<(), StoreError> {
    for contract in detach {
        if attachments::detach(tx, sub, contract.id).await? {
            let e =
                audit_event(actor, sub, "attachment.remove", None, Some(&contract.key), reasons.attachment);
            audit::insert(tx, &e).await?;
        }
    }
    for org in remove {
        if memberships::delete(tx, sub, org.id).await? {
            attachments::clear_skips(tx, sub, org.id).await?;
            let e = audit_event(actor, sub, "membership.remove", Some(&org.key), None, reasons.membership);
            audit::insert(tx, &e).await?;
        }
    }
    Ok(())
}

fn audit_event(
    actor: &Actor,
    sub: &str,
    action: &str,
    organization: Option<&str>,
    contract: Option<&str>,
    reason: &str,
) -> NewAuditEvent {
    NewAuditEvent {
        actor: actor.0.clone(),
        action: action.to_owned(),
        sub: Some(sub.to_owned()),
        organization: organization.map(str::to_owned),
        contract: contract.map(str::to_owned),
        reason: Some(reason.to_owned()),
        detail: None,
    }
}

/// The B2B facts (the header/token view) of a user's memberships and attachments.
pub fn facts(memberships: &[Membership], attachments: &[Attachment]) -> Facts {
    let mut organizations: Vec<EntitledOrganization> = memberships
        .iter()
        .map(|m| EntitledOrganization {
            key: m.organization.clone(),
            name: m.organization_name.clone(),
            keycloak_id: m.keycloak_id,
            manager: m.manager,
        })
        .collect();
    organizations.sort_by(|a, b| a.key.cmp(&b.key));
    let mut contracts: Vec<HeldContract> = attachments
        .iter()
        .map(|a| HeldContract {
            contract: EntitledContract {
                key: a.contract.clone(),
                organization: a.organization.clone(),
                membership_type: a.membership_type,
                starts_on: a.starts_on,
                ends_on: a.ends_on,
            },
            active: a.active,
        })
        .collect();
    contracts.sort_by(|a, b| a.contract.key.cmp(&b.contract.key));
    let mut aliases: Vec<(String, String)> = memberships
        .iter()
        .filter_map(|m| Some((m.keycloak_alias.clone()?, m.organization.clone())))
        .collect();
    aliases.sort();
    Facts { organizations, contracts, aliases, selection: None }
}
