//! The reconciliation plan (docs/contract.md §3 matching, §4 steps 1–4): claimed organizations plus the
//! stored state of one user in, a list of changes out.
//!
//! Pure code: no IO, `today` passed in. The input types are this module's own so that the
//! plan does not depend on how the store lays out its rows; the caller maps rows into a
//! [`UserState`]. Seat counts in that state are a prediction: the store re-checks every
//! attachment atomically when it applies the plan, because another replica may take the last
//! seat in between.
//!
//! Decisions the contract leaves open, made here:
//! - Removing a membership detaches the user from that organization's `auto` and `managed`
//!   contracts whatever the attachment's source, `sso` or `admin`, and keeps `code`
//!   attachments. The protection an admin has is the membership's `keep_until_seen` flag
//!   (which admin memberships get by default): once a membership is really removed, the
//!   organization's SSO contracts go with it, so a company stops paying for a seat of someone
//!   who left. A redeemed code is the learner's own entitlement and stays.
//! - A membership whose organization is not in the state is left alone: the plan cannot
//!   tell whether it is Keycloak-linked.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Serialize, Serializer};
use time::Date;
use uuid::Uuid;

use crate::auth::org_claim::ClaimedOrg;
use crate::b2b::{AttachmentSource, MembershipSource, MembershipType, is_full, valid_on};
use crate::config::Removal;

/// An organization the plan may match or touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownOrg {
    /// The store's row id.
    pub id: i64,
    /// The organization's slug.
    pub key: String,
    /// The Keycloak organization id, when linked by id (or learned).
    pub keycloak_id: Option<Uuid>,
    /// The Keycloak organization alias, when linked by alias.
    pub keycloak_alias: Option<String>,
}

impl KnownOrg {
    /// Linked to Keycloak by id or alias. An unlinked ("local") organization's memberships are
    /// never added, removed or un-flagged by reconciliation.
    pub fn is_linked(&self) -> bool {
        self.keycloak_id.is_some() || self.keycloak_alias.is_some()
    }

    fn to_ref(&self) -> OrgRef {
        OrgRef { id: self.id, key: self.key.clone() }
    }
}

/// One of the user's memberships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentMembership {
    /// [`KnownOrg::id`] of the organization.
    pub organization_id: i64,
    /// Protects the membership from removal until the claim has named the organization once.
    pub keep_until_seen: bool,
    pub manager: bool,
    pub source: MembershipSource,
}

/// A contract of an organization in the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownContract {
    /// The store's row id.
    pub id: i64,
    /// The contract's slug.
    pub key: String,
    /// [`KnownOrg::id`] of the contract's organization.
    pub organization_id: i64,
    pub membership_type: MembershipType,
    pub active: bool,
    /// First valid day (UTC); `None` = unbounded.
    pub starts_on: Option<Date>,
    /// Last valid day (UTC), inclusive; `None` = unbounded.
    pub ends_on: Option<Date>,
    /// `None` or `0` = unlimited.
    pub max_learners: Option<i64>,
    /// Attachments counted when the state was read.
    pub seats_used: i64,
}

impl KnownContract {
    fn to_ref(&self) -> ContractRef {
        ContractRef { id: self.id, key: self.key.clone(), organization_id: self.organization_id }
    }
}

/// One of the user's contract attachments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentAttachment {
    /// [`KnownContract::id`] of the attached contract.
    pub contract_id: i64,
    pub source: AttachmentSource,
}

/// What the store holds that matters for one user's reconciliation, in the plan's own terms
/// (the rows the store loads are mapped into it; [`Plan::apply_to`] gives the state after).
///
/// The caller must load, for the plan to be right:
/// - `organizations`: every organization whose `keycloak_id` is one of the claimed ids or
///   whose `keycloak_alias` is one of the claimed aliases, and every organization the user is
///   a member of (an organization missing here makes its claim entry "unknown");
/// - `contracts`: every contract of those organizations;
/// - `memberships` and `attachments`: all of the user's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserState {
    pub organizations: Vec<KnownOrg>,
    pub memberships: Vec<CurrentMembership>,
    pub contracts: Vec<KnownContract>,
    pub attachments: Vec<CurrentAttachment>,
}

/// An organization named in a plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct OrgRef {
    pub id: i64,
    pub key: String,
}

/// A contract named in a plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ContractRef {
    pub id: i64,
    pub key: String,
    pub organization_id: i64,
}

/// An alias-only organization matched by an id-bearing claim entry: it learns the id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LearnedId {
    pub organization: OrgRef,
    pub keycloak_id: Uuid,
}

/// A claim entry whose alias names an organization holding a different Keycloak id. It does
/// not match; the caller logs a warning (an alias reused after an organization was recreated
/// in Keycloak, or a mis-linked organization).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AliasMismatch {
    /// The claimed alias.
    pub alias: String,
    /// The id the claim gave with it.
    pub claimed_id: Uuid,
    /// The organization holding the alias.
    pub organization: OrgRef,
    /// The id that organization holds.
    pub organization_keycloak_id: Uuid,
}

/// The changes one reconciliation makes, each list sorted by key.
///
/// The first six lists are writes; `skipped_full`, `unknown_claims` and `alias_mismatches` are
/// diagnostics (audit events, metrics, warnings) and change nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Step 1: new memberships (`source=claim`, `keep_until_seen=false`).
    pub add_memberships: Vec<OrgRef>,
    /// Step 2: claimed organizations whose membership loses `keep_until_seen`.
    pub unflag_memberships: Vec<OrgRef>,
    /// Alias-only organizations that learn their Keycloak id from the claim.
    pub learn_keycloak_ids: Vec<LearnedId>,
    /// Step 3: memberships of linked, unclaimed, unflagged organizations
    /// ([`UnclaimedMemberships::Remove`] only).
    pub remove_memberships: Vec<OrgRef>,
    /// Step 3: `auto`/`managed` contracts of removed organizations, unless attached by code.
    pub detach_contracts: Vec<ContractRef>,
    /// Step 4: `auto`/`managed` contracts valid today of every organization the user is a
    /// member of after this plan, not yet attached and not predicted full. The store must
    /// still check seats atomically when attaching.
    pub attach_contracts: Vec<ContractRef>,
    /// Step 4: contracts that would be attached but are full.
    pub skipped_full: Vec<ContractRef>,
    /// Claim entries matching no organization (ignored, counted in a metric).
    #[serde(serialize_with = "serialize_claims")]
    pub unknown_claims: Vec<ClaimedOrg>,
    /// Claim entries whose alias belongs to an organization with a different Keycloak id.
    pub alias_mismatches: Vec<AliasMismatch>,
}

impl Plan {
    /// Nothing to write. Diagnostics (full contracts, unknown entries, mismatches) do not
    /// count: they recur on every reconciliation of the same input.
    pub fn is_empty(&self) -> bool {
        self.add_memberships.is_empty()
            && self.unflag_memberships.is_empty()
            && self.learn_keycloak_ids.is_empty()
            && self.remove_memberships.is_empty()
            && self.detach_contracts.is_empty()
            && self.attach_contracts.is_empty()
    }

    /// Sorts every list by key, so plans compare and print the same whatever the input order.
    fn sort(&mut self) {
        self.add_memberships.sort_by(|a, b| a.key.cmp(&b.key));
        self.unflag_memberships.sort_by(|a, b| a.key.cmp(&b.key));
        self.learn_keycloak_ids.sort_by(|a, b| a.organization.key.cmp(&b.organization.key));
        self.remove_memberships.sort_by(|a, b| a.key.cmp(&b.key));
        self.detach_contracts.sort_by(|a, b| a.key.cmp(&b.key));
        self.attach_contracts.sort_by(|a, b| a.key.cmp(&b.key));
        self.skipped_full.sort_by(|a, b| a.key.cmp(&b.key));
    }

    /// How many claim entries matched nothing.
    pub fn unknown_count(&self) -> usize {
        self.unknown_claims.len()
    }

    /// The state as it is after the plan is applied in full (every attachment succeeding),
    /// which is what the store's transaction produces when no other replica interferes.
    pub fn apply_to(&self, before: &UserState) -> UserState {
        let learned: HashMap<i64, Uuid> =
            self.learn_keycloak_ids.iter().map(|l| (l.organization.id, l.keycloak_id)).collect();
        let removed: HashSet<i64> = self.remove_memberships.iter().map(|o| o.id).collect();
        let unflagged: HashSet<i64> = self.unflag_memberships.iter().map(|o| o.id).collect();
        let detached: HashSet<i64> = self.detach_contracts.iter().map(|c| c.id).collect();
        let attached: HashSet<i64> = self.attach_contracts.iter().map(|c| c.id).collect();

        let organizations = before
            .organizations
            .iter()
            .map(|o| KnownOrg { keycloak_id: learned.get(&o.id).copied().or(o.keycloak_id), ..o.clone() })
            .collect();

        let mut memberships: Vec<CurrentMembership> = before
            .memberships
            .iter()
            .filter(|m| !removed.contains(&m.organization_id))
            .map(|m| CurrentMembership {
                keep_until_seen: m.keep_until_seen && !unflagged.contains(&m.organization_id),
                ..m.clone()
            })
            .collect();
        memberships.extend(self.add_memberships.iter().map(|o| CurrentMembership {
            organization_id: o.id,
            keep_until_seen: false,
            manager: false,
            source: MembershipSource::Claim,
        }));

        let mut attachments: Vec<CurrentAttachment> =
            before.attachments.iter().filter(|a| !detached.contains(&a.contract_id)).cloned().collect();
        attachments.extend(
            self.attach_contracts
                .iter()
                .map(|c| CurrentAttachment { contract_id: c.id, source: AttachmentSource::Sso }),
        );

        let contracts = before
            .contracts
            .iter()
            .map(|c| {
                let delta = i64::from(attached.contains(&c.id)) - i64::from(detached.contains(&c.id));
                KnownContract { seats_used: c.seats_used + delta, ..c.clone() }
            })
            .collect();

        UserState { organizations, memberships, contracts, attachments }
    }
}

fn serialize_claims<S: Serializer>(claims: &[ClaimedOrg], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Entry<'a> {
        alias: &'a str,
        id: Option<Uuid>,
    }
    s.collect_seq(claims.iter().map(|c| Entry { alias: &c.alias, id: c.id }))
}

/// What happens to the memberships a claim does not name
/// (docs/contract.md §3: whether the claim is the user's complete list, so removal is authoritative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnclaimedMemberships {
    /// The claimed set is complete: a linked organization it does not name loses the user,
    /// unless the membership is flagged `keep_until_seen` (step 3).
    Remove,
    /// The claimed set may be partial: nothing is removed; additions and un-flagging still
    /// happen.
    Keep,
}

/// Whether an absent or partial claim means "not a member" (docs/contract.md §3). `scope` is the token's
/// space-separated `scope`; a configured scope must equal one of its values exactly (`*` in
/// `organization:*` is Keycloak's literal scope value, not a pattern).
///
/// A token whose `scope` holds `organization` or an `organization:<alias>` carries at most the
/// one organization Keycloak picked (docs/contract.md §10): it is never complete, whatever
/// `mode` says ([`crate::auth::org_scope::is_partial`]).
pub fn unclaimed_memberships(mode: Removal, scope: &str, full_scopes: &[String]) -> UnclaimedMemberships {
    if crate::auth::org_scope::is_partial(scope) {
        return UnclaimedMemberships::Keep;
    }
    let complete = match mode {
        Removal::Always => true,
        Removal::Never => false,
        Removal::Scope => scope.split_whitespace().any(|s| full_scopes.iter().any(|f| f == s)),
    };
    if complete { UnclaimedMemberships::Remove } else { UnclaimedMemberships::Keep }
}

/// What the claim matched (docs/contract.md §3).
struct Matches {
    orgs: BTreeSet<i64>,
    learned: Vec<LearnedId>,
    unknown: Vec<ClaimedOrg>,
    mismatches: Vec<AliasMismatch>,
}

fn match_claims(claimed: &[ClaimedOrg], organizations: &[KnownOrg]) -> Matches {
    let mut by_id: HashMap<Uuid, &KnownOrg> =
        organizations.iter().filter_map(|o| Some((o.keycloak_id?, o))).collect();
    let by_alias: HashMap<&str, &KnownOrg> =
        organizations.iter().filter_map(|o| Some((o.keycloak_alias.as_deref()?, o))).collect();
    // Ids learned earlier in this claim count as held, so a second entry with the same alias
    // and another id is a mismatch here exactly as it will be on the next login.
    let mut learned_by_org: HashMap<i64, Uuid> = HashMap::new();
    let mut m =
        Matches { orgs: BTreeSet::new(), learned: Vec::new(), unknown: Vec::new(), mismatches: Vec::new() };

    for entry in claimed {
        let alias_org = by_alias.get(entry.alias.as_str()).copied();
        let Some(id) = entry.id else {
            match alias_org {
                Some(org) => _ = m.orgs.insert(org.id),
                None => m.unknown.push(entry.clone()),
            }
            continue;
        };
        if let Some(org) = by_id.get(&id) {
            m.orgs.insert(org.id);
            continue;
        }
        let Some(org) = alias_org else {
            m.unknown.push(entry.clone());
            continue;
        };
        match learned_by_org.get(&org.id).copied().or(org.keycloak_id) {
            None => {
                learned_by_org.insert(org.id, id);
                by_id.insert(id, org);
                m.orgs.insert(org.id);
                m.learned.push(LearnedId { organization: org.to_ref(), keycloak_id: id });
            }
            Some(held) => m.mismatches.push(AliasMismatch {
                alias: entry.alias.clone(),
                claimed_id: id,
                organization: org.to_ref(),
                organization_keycloak_id: held,
            }),
        }
    }
    m
}

/// Step 3's rule for attachments: when the user's memberships of the `removed` organizations
/// go, the user leaves those organizations' `auto` and `managed` contracts, except attachments
/// made by a code, a seat assignment or an admin (see the module docs; *v2*: before, admin
/// attachments went too). Shared by [`plan`] and the admin API's membership
/// removal, so both remove the same way. Sorted by key.
pub fn detached_on_removal(state: &UserState, removed: &HashSet<i64>) -> Vec<ContractRef> {
    let contracts: HashMap<i64, &KnownContract> = state.contracts.iter().map(|c| (c.id, c)).collect();
    let mut detach: Vec<ContractRef> = state
        .attachments
        .iter()
        .filter(|a| a.source == AttachmentSource::Sso)
        .filter_map(|a| contracts.get(&a.contract_id))
        .filter(|c| removed.contains(&c.organization_id) && c.membership_type.is_sso())
        .map(|c| c.to_ref())
        .collect();
    detach.sort_by(|a, b| a.key.cmp(&b.key));
    detach
}

/// Plans one reconciliation (docs/contract.md §4 steps 1–4) of `claimed` against `state`.
///
/// `unclaimed` comes from [`unclaimed_memberships`]; `today` is the UTC date.
pub fn plan(claimed: &[ClaimedOrg], unclaimed: UnclaimedMemberships, state: &UserState, today: Date) -> Plan {
    let orgs: HashMap<i64, &KnownOrg> = state.organizations.iter().map(|o| (o.id, o)).collect();
    let memberships: HashMap<i64, &CurrentMembership> =
        state.memberships.iter().map(|m| (m.organization_id, m)).collect();
    let matches = match_claims(claimed, &state.organizations);
    let org_ref = |id: &i64| orgs[id].to_ref();

    let add_memberships: Vec<OrgRef> =
        matches.orgs.iter().filter(|id| !memberships.contains_key(id)).map(org_ref).collect();
    let unflag_memberships: Vec<OrgRef> = matches
        .orgs
        .iter()
        .filter(|id| memberships.get(id).is_some_and(|m| m.keep_until_seen))
        .map(org_ref)
        .collect();
    let remove_memberships: Vec<OrgRef> = if unclaimed == UnclaimedMemberships::Remove {
        state
            .memberships
            .iter()
            .filter(|m| !m.keep_until_seen && !matches.orgs.contains(&m.organization_id))
            .filter_map(|m| orgs.get(&m.organization_id))
            .filter(|o| o.is_linked())
            .map(|o| o.to_ref())
            .collect()
    } else {
        Vec::new()
    };

    let removed: HashSet<i64> = remove_memberships.iter().map(|o| o.id).collect();
    let detach_contracts = detached_on_removal(state, &removed);

    let member_after: HashSet<i64> = state
        .memberships
        .iter()
        .map(|m| m.organization_id)
        .chain(add_memberships.iter().map(|o| o.id))
        .filter(|id| !removed.contains(id))
        .collect();
    let attached: HashSet<i64> = state.attachments.iter().map(|a| a.contract_id).collect();
    let mut attach_contracts = Vec::new();
    let mut skipped_full = Vec::new();
    for c in &state.contracts {
        let wanted = member_after.contains(&c.organization_id)
            && c.membership_type.is_sso()
            && !attached.contains(&c.id)
            && valid_on(c.active, c.starts_on, c.ends_on, today);
        if !wanted {
            continue;
        }
        if is_full(c.max_learners, c.seats_used) {
            skipped_full.push(c.to_ref());
        } else {
            attach_contracts.push(c.to_ref());
        }
    }

    let mut plan = Plan {
        add_memberships,
        unflag_memberships,
        learn_keycloak_ids: matches.learned,
        remove_memberships,
        detach_contracts,
        attach_contracts,
        skipped_full,
        unknown_claims: matches.unknown,
        alias_mismatches: matches.mismatches,
    };
    plan.sort();
    plan
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use time::macros::date;

    use super::*;
    use UnclaimedMemberships::{Keep, Remove};

    const TODAY: Date = date!(2026 - 06 - 15);
    // The acceptance organizations: A, I and R are linked to Keycloak, W is local.
    const A: i64 = 1;
    const I: i64 = 2;
    const R: i64 = 3;
    const W: i64 = 4;

    fn kc(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn org(id: i64, key: &str, keycloak_id: Option<Uuid>, alias: Option<&str>) -> KnownOrg {
        KnownOrg { id, key: key.into(), keycloak_id, keycloak_alias: alias.map(Into::into) }
    }

    fn world() -> Vec<KnownOrg> {
        vec![
            org(A, "a", Some(kc(1)), Some("a")),
            org(I, "i", Some(kc(2)), Some("i")),
            org(R, "r", Some(kc(3)), Some("r")),
            org(W, "w", None, None),
        ]
    }

    /// A claim entry as Keycloak's mapper writes it with "Add organization id".
    fn claim(alias: &str, id: u128) -> ClaimedOrg {
        ClaimedOrg { alias: alias.into(), id: Some(kc(id)) }
    }

    /// A claim entry as the mapper's default writes it: the alias only.
    fn alias_claim(alias: &str) -> ClaimedOrg {
        ClaimedOrg { alias: alias.into(), id: None }
    }

    fn a() -> ClaimedOrg {
        claim("a", 1)
    }

    fn r() -> ClaimedOrg {
        claim("r", 3)
    }

    fn member(organization_id: i64, keep_until_seen: bool) -> CurrentMembership {
        CurrentMembership {
            organization_id,
            keep_until_seen,
            manager: false,
            source: MembershipSource::Claim,
        }
    }

    fn user_state(memberships: Vec<CurrentMembership>) -> UserState {
        UserState { organizations: world(), memberships, ..UserState::default() }
    }

    fn contract(id: i64, key: &str, org: i64, membership_type: MembershipType) -> KnownContract {
        KnownContract {
            id,
            key: key.into(),
            organization_id: org,
            membership_type,
            active: true,
            starts_on: None,
            ends_on: None,
            max_learners: None,
            seats_used: 0,
        }
    }

    fn attached(contract_id: i64, source: AttachmentSource) -> CurrentAttachment {
        CurrentAttachment { contract_id, source }
    }

    fn member_ids(s: &UserState) -> BTreeSet<i64> {
        s.memberships.iter().map(|m| m.organization_id).collect()
    }

    fn flag_of(s: &UserState, org: i64) -> bool {
        s.memberships.iter().find(|m| m.organization_id == org).unwrap().keep_until_seen
    }

    fn org_keys(refs: &[OrgRef]) -> Vec<&str> {
        refs.iter().map(|o| o.key.as_str()).collect()
    }

    fn contract_keys(refs: &[ContractRef]) -> Vec<&str> {
        refs.iter().map(|c| c.key.as_str()).collect()
    }

    /// Plans and applies one reconciliation, and checks that a second one changes nothing.
    fn reconcile(
        claimed: &[ClaimedOrg],
        unclaimed: UnclaimedMemberships,
        before: &UserState,
    ) -> (Plan, UserState) {
        let first = plan(claimed, unclaimed, before, TODAY);
        let after = first.apply_to(before);
        let second = plan(claimed, unclaimed, &after, TODAY);
        assert!(second.is_empty(), "reconciling again changed something: {second:?}");
        (first, after)
    }

    #[test]
    fn step1_a_first_login_adds_the_claimed_organization() {
        let (p, after) = reconcile(&[a()], Remove, &user_state(vec![]));
        assert_eq!(org_keys(&p.add_memberships), ["a"]);
        assert!(p.unflag_memberships.is_empty() && p.remove_memberships.is_empty());
        assert_eq!(member_ids(&after), [A].into());
        let added = &after.memberships[0];
        assert_eq!(
            (added.source, added.keep_until_seen, added.manager),
            (MembershipSource::Claim, false, false)
        );
    }

    #[test]
    fn step2_an_unclaimed_unflagged_linked_membership_is_removed() {
        let (p, after) = reconcile(&[a()], Remove, &user_state(vec![member(A, false), member(R, false)]));
        assert_eq!(org_keys(&p.remove_memberships), ["r"]);
        assert!(p.add_memberships.is_empty());
        assert_eq!(member_ids(&after), [A].into());
    }

    #[test]
    fn step3_a_flagged_membership_is_kept_while_unclaimed() {
        let before = user_state(vec![member(A, false), member(R, true)]);
        let (p, after) = reconcile(&[a()], Remove, &before);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(member_ids(&after), [A, R].into());
        assert!(flag_of(&after, R));
    }

    #[test]
    fn step4_claiming_a_flagged_organization_clears_its_flag() {
        let before = user_state(vec![member(A, false), member(R, true)]);
        let (p, after) = reconcile(&[a(), r()], Remove, &before);
        assert_eq!(org_keys(&p.unflag_memberships), ["r"]);
        assert!(p.add_memberships.is_empty() && p.remove_memberships.is_empty());
        assert_eq!(member_ids(&after), [A, R].into());
        assert!(!flag_of(&after, R));
    }

    #[test]
    fn step5_a_local_membership_is_untouched() {
        let local = CurrentMembership { source: MembershipSource::Admin, ..member(W, false) };
        let before = user_state(vec![member(A, false), member(R, false), local.clone()]);
        let (p, after) = reconcile(&[a(), r()], Remove, &before);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(member_ids(&after), [A, R, W].into());
        assert!(after.memberships.contains(&local));
    }

    #[test]
    fn step6_once_its_flag_is_cleared_an_unclaimed_membership_is_removed() {
        let before = user_state(vec![member(A, false), member(R, false), member(W, false)]);
        let (p, after) = reconcile(&[a()], Remove, &before);
        assert_eq!(org_keys(&p.remove_memberships), ["r"]);
        assert_eq!(member_ids(&after), [A, W].into());
    }

    #[test]
    fn the_acceptance_steps_chain_from_one_login_to_the_next() {
        let s0 = user_state(vec![]);
        let (_, s1) = reconcile(&[a()], Remove, &s0);
        // An admin adds R, protected until seen, and a local membership of W.
        let mut s2 = s1.clone();
        s2.memberships.push(CurrentMembership { source: MembershipSource::Admin, ..member(R, true) });
        let (_, s3) = reconcile(&[a()], Remove, &s2);
        assert_eq!(member_ids(&s3), [A, R].into());
        let (_, mut s4) = reconcile(&[a(), r()], Remove, &s3);
        assert!(!flag_of(&s4, R));
        s4.memberships.push(CurrentMembership { source: MembershipSource::Admin, ..member(W, false) });
        let (_, s5) = reconcile(&[a(), r()], Remove, &s4);
        assert_eq!(member_ids(&s5), [A, R, W].into());
        let (_, s6) = reconcile(&[a()], Remove, &s5);
        assert_eq!(member_ids(&s6), [A, W].into());
    }

    #[test]
    fn an_entry_with_an_id_matches_by_id_even_under_another_alias() {
        let (p, _) = reconcile(&[claim("a-renamed", 1)], Remove, &user_state(vec![]));
        assert_eq!(org_keys(&p.add_memberships), ["a"]);
        assert!(p.unknown_claims.is_empty() && p.learn_keycloak_ids.is_empty());
    }

    #[test]
    fn an_entry_without_an_id_matches_by_alias() {
        let (p, _) = reconcile(&[alias_claim("a"), alias_claim("i")], Remove, &user_state(vec![]));
        assert_eq!(org_keys(&p.add_memberships), ["a", "i"]);
    }

    #[test]
    fn an_id_bearing_entry_matching_an_alias_only_organization_teaches_it_the_id() {
        let mut before = user_state(vec![]);
        before.organizations.push(org(5, "learner", None, Some("l")));
        let (p, after) = reconcile(&[claim("l", 50)], Remove, &before);
        assert_eq!(org_keys(&p.add_memberships), ["learner"]);
        assert_eq!(
            p.learn_keycloak_ids,
            [LearnedId { organization: OrgRef { id: 5, key: "learner".into() }, keycloak_id: kc(50) }]
        );
        let learned = after.organizations.iter().find(|o| o.id == 5).unwrap();
        assert_eq!(learned.keycloak_id, Some(kc(50)));
    }

    #[test]
    fn an_alias_whose_organization_holds_another_id_does_not_match_and_is_reported() {
        let before = user_state(vec![member(R, false)]);
        let (p, after) = reconcile(&[claim("r", 99)], Remove, &before);
        assert_eq!(
            p.alias_mismatches,
            [AliasMismatch {
                alias: "r".into(),
                claimed_id: kc(99),
                organization: OrgRef { id: R, key: "r".into() },
                organization_keycloak_id: kc(3),
            }]
        );
        assert!(p.learn_keycloak_ids.is_empty());
        // Not matching, R counts as unclaimed.
        assert_eq!(org_keys(&p.remove_memberships), ["r"]);
        assert!(member_ids(&after).is_empty());
    }

    #[test]
    fn unknown_entries_are_ignored_and_counted() {
        let claimed = [claim("x", 77), alias_claim("nobody"), a()];
        let (p, _) = reconcile(&claimed, Remove, &user_state(vec![]));
        assert_eq!(org_keys(&p.add_memberships), ["a"]);
        assert_eq!(p.unknown_count(), 2);
        assert_eq!(p.unknown_claims, [claim("x", 77), alias_claim("nobody")]);
    }

    #[test]
    fn an_absent_authoritative_claim_removes_every_unflagged_linked_membership() {
        let before = user_state(vec![member(A, false), member(I, false), member(R, true), member(W, false)]);
        let (p, after) = reconcile(&[], Remove, &before);
        assert_eq!(org_keys(&p.remove_memberships), ["a", "i"]);
        assert_eq!(member_ids(&after), [R, W].into());
    }

    #[test]
    fn without_authority_nothing_is_removed_but_additions_and_unflagging_happen() {
        let before = user_state(vec![member(A, false), member(R, true)]);
        assert!(plan(&[], Keep, &before, TODAY).is_empty());
        let (p, after) = reconcile(&[r(), claim("i", 2)], Keep, &before);
        assert!(p.remove_memberships.is_empty());
        assert_eq!(org_keys(&p.add_memberships), ["i"]);
        assert_eq!(org_keys(&p.unflag_memberships), ["r"]);
        assert_eq!(member_ids(&after), [A, I, R].into());
    }

    #[test]
    fn only_valid_sso_contracts_are_attached() {
        let mut before = user_state(vec![]);
        before.contracts = vec![
            contract(10, "a-auto", A, MembershipType::Auto),
            KnownContract { active: false, ..contract(11, "a-managed-off", A, MembershipType::Managed) },
            contract(12, "a-code", A, MembershipType::Code),
            contract(13, "i-auto", I, MembershipType::Auto),
        ];
        let (p, after) = reconcile(&[a()], Remove, &before);
        assert_eq!(contract_keys(&p.attach_contracts), ["a-auto"]);
        assert_eq!(after.attachments, [attached(10, AttachmentSource::Sso)]);
        assert_eq!(after.contracts[0].seats_used, 1);
    }

    #[test]
    fn contracts_outside_their_dates_are_not_attached_and_bounds_are_inclusive() {
        let mut before = user_state(vec![member(A, false)]);
        let day = time::Duration::days(1);
        before.contracts = vec![
            KnownContract {
                starts_on: Some(TODAY + day),
                ..contract(10, "a-future", A, MembershipType::Auto)
            },
            KnownContract {
                ends_on: Some(TODAY - day),
                ..contract(11, "a-ended", A, MembershipType::Managed)
            },
            KnownContract {
                starts_on: Some(TODAY),
                ends_on: Some(TODAY),
                ..contract(12, "a-today", A, MembershipType::Managed)
            },
        ];
        let (p, _) = reconcile(&[a()], Remove, &before);
        assert_eq!(contract_keys(&p.attach_contracts), ["a-today"]);
    }

    #[test]
    fn a_full_contract_is_skipped_and_reported() {
        let mut before = user_state(vec![member(A, false)]);
        before.contracts = vec![
            KnownContract {
                max_learners: Some(2),
                seats_used: 2,
                ..contract(10, "a-full", A, MembershipType::Managed)
            },
            KnownContract {
                max_learners: Some(3),
                seats_used: 2,
                ..contract(11, "a-room", A, MembershipType::Managed)
            },
            KnownContract {
                max_learners: Some(0),
                seats_used: 9,
                ..contract(12, "a-unlimited", A, MembershipType::Auto)
            },
        ];
        let (p, _) = reconcile(&[a()], Remove, &before);
        assert_eq!(contract_keys(&p.attach_contracts), ["a-room", "a-unlimited"]);
        assert_eq!(contract_keys(&p.skipped_full), ["a-full"]);
    }

    #[test]
    fn removal_detaches_sso_attachments_of_sso_contracts_and_keeps_code_admin_and_assignment_ones() {
        // docs/contract.md §12 (v2): `assignment` and `admin` attachments survive step 3 like
        // `code` ones (v1 detached admin attachments of SSO contracts).
        let mut before = user_state(vec![member(A, false), member(R, false)]);
        before.contracts = vec![
            KnownContract { seats_used: 1, ..contract(30, "r-auto", R, MembershipType::Auto) },
            KnownContract { seats_used: 1, ..contract(31, "r-managed", R, MembershipType::Managed) },
            contract(32, "r-managed-by-code", R, MembershipType::Managed),
            contract(33, "r-code", R, MembershipType::Code),
            KnownContract { active: false, ..contract(34, "r-ended", R, MembershipType::Auto) },
            contract(35, "r-assigned", R, MembershipType::Auto),
        ];
        before.attachments = vec![
            attached(30, AttachmentSource::Sso),
            attached(31, AttachmentSource::Admin),
            attached(32, AttachmentSource::Code),
            attached(33, AttachmentSource::Code),
            attached(34, AttachmentSource::Sso),
            attached(35, AttachmentSource::Assignment),
        ];
        let (p, after) = reconcile(&[a()], Remove, &before);
        assert_eq!(contract_keys(&p.detach_contracts), ["r-auto", "r-ended"]);
        assert_eq!(
            after.attachments,
            [
                attached(31, AttachmentSource::Admin),
                attached(32, AttachmentSource::Code),
                attached(33, AttachmentSource::Code),
                attached(35, AttachmentSource::Assignment),
            ]
        );
        assert_eq!(after.contracts[0].seats_used, 0);
        assert_eq!(after.contracts[1].seats_used, 1);
    }

    #[test]
    fn contracts_of_a_removed_organization_are_not_attached() {
        let mut before = user_state(vec![member(R, false)]);
        before.contracts = vec![contract(30, "r-auto", R, MembershipType::Auto)];
        let (p, _) = reconcile(&[], Remove, &before);
        assert!(p.attach_contracts.is_empty());
    }

    #[test]
    fn a_new_auto_contract_is_back_filled_for_existing_members_of_any_source() {
        let mut before = user_state(vec![
            member(A, false),
            CurrentMembership { source: MembershipSource::Admin, ..member(W, true) },
        ]);
        before.contracts = vec![
            contract(10, "a-old", A, MembershipType::Auto),
            contract(11, "a-new", A, MembershipType::Auto),
            contract(40, "w-new", W, MembershipType::Managed),
        ];
        before.attachments = vec![attached(10, AttachmentSource::Sso)];
        let (p, _) = reconcile(&[a()], Remove, &before);
        assert_eq!(contract_keys(&p.attach_contracts), ["a-new", "w-new"]);
        assert!(p.add_memberships.is_empty() && p.remove_memberships.is_empty());
        assert!(p.unflag_memberships.is_empty(), "W is local: its flag stays");
    }

    #[test]
    fn removal_authority_follows_the_configured_mode_and_exact_scope_values() {
        let full = vec!["organization:*".to_owned()];
        assert_eq!(unclaimed_memberships(Removal::Scope, "openid organization:* email", &full), Remove);
        assert_eq!(unclaimed_memberships(Removal::Scope, "openid organization", &full), Keep);
        assert_eq!(unclaimed_memberships(Removal::Scope, "organization:acme", &full), Keep);
        assert_eq!(unclaimed_memberships(Removal::Scope, "", &full), Keep);
        assert_eq!(unclaimed_memberships(Removal::Always, "", &full), Remove);
        assert_eq!(unclaimed_memberships(Removal::Never, "organization:*", &full), Keep);
        assert_eq!(unclaimed_memberships(Removal::Scope, "organization:*", &[]), Keep);
    }

    #[test]
    fn a_single_or_picked_organization_scope_is_never_authoritative_for_removals() {
        let full = vec!["organization:*".to_owned(), "organization".to_owned()];
        for mode in [Removal::Scope, Removal::Always, Removal::Never] {
            for scope in ["openid organization", "organization:acme", "organization:* organization:acme"] {
                assert_eq!(unclaimed_memberships(mode, scope, &full), Keep, "{mode:?} {scope}");
            }
        }
        assert_eq!(unclaimed_memberships(Removal::Always, "openid organization:*", &full), Remove);
    }

    #[test]
    fn a_plan_serializes_for_the_dry_run_answer() {
        let (p, _) = reconcile(&[a(), alias_claim("nobody")], Remove, &user_state(vec![]));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["add_memberships"], serde_json::json!([{"id": A, "key": "a"}]));
        assert_eq!(json["unknown_claims"], serde_json::json!([{"alias": "nobody", "id": null}]));
    }

    // Property tests over small random worlds: up to 6 organizations of every link kind,
    // claims drawn from overlapping aliases and ids (so unknown entries, learning and
    // mismatches all occur), contracts of every type, date window and seat state.

    type ContractSeed = (u8, bool, Option<i64>, Option<i64>, Option<i64>, i64, Option<u8>);
    type OrgSeed = (u8, Option<(bool, u8)>, Vec<ContractSeed>);

    fn seed_contract() -> impl Strategy<Value = ContractSeed> {
        (
            0..3u8,
            any::<bool>(),
            proptest::option::of(-2..=2i64),
            proptest::option::of(-2..=2i64),
            proptest::option::of(0..3i64),
            0..4i64,
            proptest::option::of(0..3u8),
        )
    }

    fn seed_org() -> impl Strategy<Value = OrgSeed> {
        (
            0..4u8,
            proptest::option::of((any::<bool>(), 0..3u8)),
            proptest::collection::vec(seed_contract(), 0..3),
        )
    }

    fn seed_claims() -> impl Strategy<Value = Vec<ClaimedOrg>> {
        proptest::collection::vec((0..8u8, proptest::option::of(1..10u128)), 0..8).prop_map(|entries| {
            let mut claimed: Vec<ClaimedOrg> = entries
                .into_iter()
                .map(|(alias, id)| ClaimedOrg { alias: format!("o{alias}"), id: id.map(kc) })
                .collect();
            // As the claim parser delivers them: sorted, no duplicates.
            claimed.sort();
            claimed.dedup();
            claimed
        })
    }

    fn build(seeds: Vec<OrgSeed>) -> UserState {
        let mut s = UserState::default();
        for (i, (kind, membership, contracts)) in seeds.into_iter().enumerate() {
            let id = i as i64;
            // Ids and aliases are unique per organization, as the store's constraints make them.
            s.organizations.push(KnownOrg {
                id,
                key: format!("k{i}"),
                keycloak_id: (kind & 1 == 1).then(|| kc(i as u128 + 1)),
                keycloak_alias: (kind & 2 == 2).then(|| format!("o{i}")),
            });
            if let Some((keep_until_seen, source)) = membership {
                let source = [MembershipSource::Claim, MembershipSource::Code, MembershipSource::Admin]
                    [source as usize];
                s.memberships.push(CurrentMembership {
                    organization_id: id,
                    keep_until_seen,
                    manager: false,
                    source,
                });
            }
            for (j, (ty, active, start, end, max, used, attachment)) in contracts.into_iter().enumerate() {
                let cid = id * 10 + j as i64;
                let membership_type =
                    [MembershipType::Auto, MembershipType::Managed, MembershipType::Code][ty as usize];
                s.contracts.push(KnownContract {
                    id: cid,
                    key: format!("c{cid}"),
                    organization_id: id,
                    membership_type,
                    active,
                    starts_on: start.map(|d| TODAY + time::Duration::days(d)),
                    ends_on: end.map(|d| TODAY + time::Duration::days(d)),
                    max_learners: max,
                    seats_used: used,
                });
                if let Some(source) = attachment {
                    let source = [AttachmentSource::Sso, AttachmentSource::Code, AttachmentSource::Admin]
                        [source as usize];
                    s.attachments.push(CurrentAttachment { contract_id: cid, source });
                }
            }
        }
        s
    }

    fn case() -> impl Strategy<Value = (Vec<ClaimedOrg>, UnclaimedMemberships, UserState)> {
        let unclaimed = prop_oneof![Just(Remove), Just(Keep)];
        (seed_claims(), unclaimed, proptest::collection::vec(seed_org(), 0..6))
            .prop_map(|(claimed, unclaimed, orgs)| (claimed, unclaimed, build(orgs)))
    }

    proptest! {
        #[test]
        fn reconciling_the_applied_state_again_changes_nothing((claimed, auth, before) in case()) {
            let first = plan(&claimed, auth, &before, TODAY);
            let after = first.apply_to(&before);
            let second = plan(&claimed, auth, &after, TODAY);
            prop_assert!(second.is_empty(), "first {:?}\nsecond {:?}", first, second);
        }

        #[test]
        fn a_flagged_membership_is_never_removed((claimed, auth, before) in case()) {
            let p = plan(&claimed, auth, &before, TODAY);
            for m in before.memberships.iter().filter(|m| m.keep_until_seen) {
                prop_assert!(p.remove_memberships.iter().all(|o| o.id != m.organization_id));
            }
        }

        #[test]
        fn a_local_organization_is_never_added_removed_unflagged_or_linked(
            (claimed, auth, before) in case(),
        ) {
            let p = plan(&claimed, auth, &before, TODAY);
            let after = p.apply_to(&before);
            for local in before.organizations.iter().filter(|o| !o.is_linked()) {
                let touched = p
                    .add_memberships
                    .iter()
                    .chain(&p.unflag_memberships)
                    .chain(&p.remove_memberships)
                    .chain(p.learn_keycloak_ids.iter().map(|l| &l.organization))
                    .any(|o| o.id == local.id);
                prop_assert!(!touched, "{:?} touched by {:?}", local, p);
                let before_m = before.memberships.iter().find(|m| m.organization_id == local.id);
                let after_m = after.memberships.iter().find(|m| m.organization_id == local.id);
                prop_assert_eq!(before_m, after_m);
            }
        }

        #[test]
        fn attachments_never_exceed_free_seats((claimed, auth, before) in case()) {
            let p = plan(&claimed, auth, &before, TODAY);
            for c in &before.contracts {
                let count = p.attach_contracts.iter().filter(|a| a.id == c.id).count() as i64;
                if let Some(max) = c.max_learners.filter(|m| *m > 0) {
                    let free = (max - c.seats_used).max(0);
                    prop_assert!(count <= free, "{:?} attached {} times", c, count);
                }
                prop_assert!(count <= 1);
            }
        }

        #[test]
        fn without_authority_nothing_is_removed_or_detached((claimed, _auth, before) in case()) {
            let p = plan(&claimed, Keep, &before, TODAY);
            prop_assert!(p.remove_memberships.is_empty() && p.detach_contracts.is_empty());
        }

        #[test]
        fn every_attached_contract_is_a_valid_sso_contract_of_a_member_organization(
            (claimed, auth, before) in case(),
        ) {
            let p = plan(&claimed, auth, &before, TODAY);
            let after = p.apply_to(&before);
            let members: HashSet<i64> =
                after.memberships.iter().map(|m| m.organization_id).collect();
            for a in &p.attach_contracts {
                let c = before.contracts.iter().find(|c| c.id == a.id).unwrap();
                prop_assert!(members.contains(&c.organization_id) && c.membership_type.is_sso());
                prop_assert!(valid_on(c.active, c.starts_on, c.ends_on, TODAY));
            }
        }
    }
}
