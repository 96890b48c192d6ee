//! Keycloak's organization scopes in a token's `scope` (docs/contract.md §3, §10;
//! docs/keycloak.md): `organization:*` grants every organization of the user (the claim is
//! complete), `organization:<alias>` grants that one organization (the claim names only it),
//! and the plain `organization` scope makes Keycloak ask the user to pick one at login (or take
//! their only one). Keycloak writes the granted scope into the token's `scope` exactly as the
//! client requested it.

/// The plain scope: Keycloak asks the user to pick one organization.
pub const PICK: &str = "organization";

/// The prefix of a scope with a value (`organization:*`, `organization:<alias>`).
const WITH_VALUE: &str = "organization:";

/// The alias of a single-organization scope: `Some` when `scope` holds one
/// `organization:<alias>` (not `organization:*`), `None` when it holds none or more than one
/// (the same alias twice counts once).
pub fn single_alias(scope: &str) -> Option<&str> {
    let mut found = None;
    for alias in scope.split_whitespace().filter_map(single) {
        match found {
            None => found = Some(alias),
            Some(earlier) if earlier == alias => {}
            Some(_) => return None,
        }
    }
    found
}

/// Whether `scope` holds the plain `organization` scope.
pub fn has_pick(scope: &str) -> bool {
    scope.split_whitespace().any(|s| s == PICK)
}

/// Whether the token's organization claim is partial by construction: its `scope` holds
/// `organization` or an `organization:<alias>`, so Keycloak put at most one organization in
/// the claim, whatever else the user belongs to. Such a claim is never authoritative for
/// removals.
pub fn is_partial(scope: &str) -> bool {
    scope.split_whitespace().any(|s| s == PICK || single(s).is_some())
}

/// The alias of one `organization:<alias>` scope token.
fn single(token: &str) -> Option<&str> {
    token.strip_prefix(WITH_VALUE).filter(|alias| !alias.is_empty() && *alias != "*")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_single_organization_scope_names_its_alias_and_two_name_none() {
        assert_eq!(single_alias("openid organization:acme email"), Some("acme"));
        assert_eq!(single_alias("organization:acme organization:acme"), Some("acme"));
        assert_eq!(single_alias("organization:acme organization:globex"), None);
        assert_eq!(single_alias("organization:* organization:acme"), Some("acme"));
        assert_eq!(single_alias("organization:*"), None);
        assert_eq!(single_alias("organization organization:"), None);
        assert_eq!(single_alias("xorganization:acme"), None);
        assert_eq!(single_alias(""), None);
    }

    #[test]
    fn the_plain_and_single_organization_scopes_make_a_claim_partial_and_the_full_one_does_not() {
        assert!(is_partial("openid organization"));
        assert!(is_partial("organization:acme"));
        assert!(is_partial("organization:* organization"));
        assert!(!is_partial("openid organization:* email"));
        assert!(!is_partial("openid organizations"));
        assert!(!is_partial(""));
        assert!(has_pick("email organization"));
        assert!(!has_pick("organization:acme"));
    }
}
