//! The active organization of a request (docs/contract.md §10): which one of the user's
//! organizations the session acts for, chosen per token from the login's cached [`Facts`] and
//! the token's `scope` and organization claim — no database, so the cached path stays cheap.
//!
//! The sources, in order:
//!
//! 1. **scope**: the token's `scope` holds exactly one `organization:<alias>`
//!    ([`org_scope::single_alias`]) naming an organization the user is a member of;
//! 2. **selection**: the session's selection ([`Facts::selection`], read from the store when the
//!    login was reconciled), while the user is still a member of it;
//! 3. **pick**: the `scope` holds the plain `organization` scope and the claim exactly one
//!    organization the user is a member of (Keycloak asked the user to pick one at login);
//! 4. **only**: the user has exactly one organization;
//! 5. none.
//!
//! Only source 1 fixes the choice (a selection answers 409 then); a selection beats Keycloak's
//! pick, so a learner with one Keycloak and one code organization can still switch.

use crate::auth::org_claim::ClaimedOrg;
use crate::auth::org_scope;
use crate::b2b::Facts;

/// Where the active organization came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A single-organization scope `organization:<alias>` (source 1): fixed for the token.
    Scope,
    /// The session's selection (source 2).
    Selection,
    /// The plain `organization` scope with a one-organization claim (source 3).
    Pick,
    /// The user's only organization (source 4).
    Only,
}

impl Source {
    /// The `source` of `GET /_sidecar/active-organization`: both of Keycloak's scopes answer
    /// `scope` (the SPEC's closed list has no separate name for Keycloak's pick).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Scope | Source::Pick => "scope",
            Source::Selection => "selection",
            Source::Only => "only",
        }
    }

    /// Whether the source fixes the organization for the token: only a single-organization
    /// scope does, and a selection then answers 409.
    pub fn is_fixed(self) -> bool {
        self == Source::Scope
    }
}

/// The active organization of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Active<'a> {
    /// The organization's key.
    pub key: &'a str,
    pub source: Source,
}

/// Chooses the active organization from a login's facts and one token's `scope` and claim
/// (the sources of the module docs, in order).
pub fn choose<'f>(facts: &'f Facts, scope: &str, claimed: &[ClaimedOrg]) -> Option<Active<'f>> {
    let member = |key: &str| facts.organizations.iter().find(|o| o.key == key).map(|o| o.key.as_str());
    let by_alias = |alias: &str| {
        let (_, key) = facts.aliases.iter().find(|(a, _)| a == alias)?;
        member(key)
    };
    let active = |key, source| Some(Active { key, source });
    if let Some(key) = org_scope::single_alias(scope).and_then(by_alias) {
        return active(key, Source::Scope);
    }
    if let Some(key) = facts.selection.as_deref().and_then(member) {
        return active(key, Source::Selection);
    }
    if org_scope::has_pick(scope)
        && let [entry] = claimed
    {
        let by_id = entry
            .id
            .and_then(|id| facts.organizations.iter().find(|o| o.keycloak_id == Some(id)))
            .map(|o| o.key.as_str());
        if let Some(key) = by_id.or_else(|| by_alias(&entry.alias)) {
            return active(key, Source::Pick);
        }
    }
    if let [only] = facts.organizations.as_slice() {
        return active(only.key.as_str(), Source::Only);
    }
    None
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::b2b::EntitledOrganization;

    fn facts(keys: &[&str], selection: Option<&str>) -> Facts {
        Facts {
            organizations: keys
                .iter()
                .enumerate()
                .map(|(i, key)| EntitledOrganization {
                    key: (*key).into(),
                    name: key.to_uppercase(),
                    keycloak_id: Some(Uuid::from_u128(i as u128 + 1)),
                    manager: false,
                })
                .collect(),
            aliases: keys.iter().map(|k| (format!("kc-{k}"), (*k).to_owned())).collect(),
            selection: selection.map(str::to_owned),
            ..Facts::default()
        }
    }

    fn claim(alias: &str) -> ClaimedOrg {
        ClaimedOrg { alias: alias.into(), id: None }
    }

    fn chosen<'f>(f: &'f Facts, scope: &str, claimed: &[ClaimedOrg]) -> Option<(&'f str, Source)> {
        choose(f, scope, claimed).map(|a| (a.key, a.source))
    }

    #[test]
    fn the_sources_apply_in_the_order_of_the_contract() {
        let f = facts(&["acme", "globex", "initech"], Some("globex"));
        let picked = [claim("kc-initech")];
        // 1. a single-organization scope beats the selection
        assert_eq!(chosen(&f, "openid organization:kc-acme", &[]), Some(("acme", Source::Scope)));
        // 2. the selection beats Keycloak's pick
        assert_eq!(chosen(&f, "openid organization", &picked), Some(("globex", Source::Selection)));
        // 3. Keycloak's pick, without a selection
        let f = facts(&["acme", "globex", "initech"], None);
        assert_eq!(chosen(&f, "openid organization", &picked), Some(("initech", Source::Pick)));
        // 4. the only organization
        let only = facts(&["acme"], None);
        assert_eq!(chosen(&only, "openid", &[]), Some(("acme", Source::Only)));
        // 5. none
        assert_eq!(chosen(&f, "openid", &[]), None);
    }

    #[test]
    fn a_source_that_names_no_membership_is_skipped() {
        let f = facts(&["acme", "globex"], Some("gone"));
        assert_eq!(chosen(&f, "organization:kc-unknown", &[]), None, "scope and selection name no member");
        assert_eq!(chosen(&f, "organization", &[claim("kc-unknown")]), None);
        assert_eq!(chosen(&f, "organization", &[claim("kc-acme"), claim("kc-globex")]), None, "two claimed");
        assert_eq!(chosen(&f, "openid", &[claim("kc-acme")]), None, "a claim without the pick scope");
        let two_scopes = "organization:kc-acme organization:kc-globex";
        let f = facts(&["acme", "globex"], Some("globex"));
        assert_eq!(chosen(&f, two_scopes, &[]), Some(("globex", Source::Selection)));
    }

    #[test]
    fn keycloaks_pick_matches_by_id_before_alias() {
        let f = facts(&["acme", "globex"], None);
        let entry = ClaimedOrg { alias: "renamed".into(), id: Some(Uuid::from_u128(2)) };
        assert_eq!(chosen(&f, "organization", &[entry]), Some(("globex", Source::Pick)));
    }

    #[test]
    fn only_the_single_organization_scope_fixes_the_choice() {
        assert!(Source::Scope.is_fixed());
        for s in [Source::Selection, Source::Pick, Source::Only] {
            assert!(!s.is_fixed());
        }
        assert_eq!(Source::Pick.as_str(), "scope");
    }
}
