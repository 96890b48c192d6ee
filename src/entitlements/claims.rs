//! The claims of the entitlement token `X-Identity-Entitlements` (docs/contract.md §5), also the body of
//! `GET /_sidecar/me`.

use serde::{Deserialize, Serialize};

use crate::b2b::{EntitledContract, EntitledOrganization};

/// The entitlement token's payload. Optional profile fields are `null` when the access token
/// has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitlementClaims {
    /// `entitlements.issuer`.
    pub iss: String,
    /// `entitlements.audience`.
    pub aud: String,
    /// The Keycloak subject.
    pub sub: String,
    /// Seconds since the epoch.
    pub iat: u64,
    /// Seconds since the epoch; see [`exp_for`].
    pub exp: u64,
    pub email: Option<String>,
    pub preferred_username: Option<String>,
    pub name: Option<String>,
    /// The user's organizations.
    pub organizations: Vec<EntitledOrganization>,
    /// The contracts attached to the user and valid when the token was made (only the active
    /// organization's with `headers.scope_to_active_organization`).
    pub contracts: Vec<EntitledContract>,
    /// The key of the request's active organization (docs/contract.md §10); left out when none
    /// is active (members whose value is null are left out, §5 v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_organization: Option<String>,
}

/// The entitlement token's `exp`: `ttl_secs` from `now`, but never after the access token's
/// `exp`, so the entitlements cannot outlive the login they were derived from.
pub fn exp_for(now: u64, ttl_secs: u64, token_exp: u64) -> u64 {
    now.saturating_add(ttl_secs).min(token_exp)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::date;
    use uuid::Uuid;

    use super::*;
    use crate::b2b::MembershipType;

    #[test]
    fn claims_serialize_as_the_spec_shows_with_dates_as_days_and_null_when_unbounded() {
        let claims = EntitlementClaims {
            iss: "identity-sidecar".into(),
            aud: "apps".into(),
            sub: "user-1".into(),
            iat: 1_000,
            exp: 1_300,
            email: Some("ada@example.com".into()),
            preferred_username: Some("ada".into()),
            name: None,
            organizations: vec![EntitledOrganization {
                key: "acme".into(),
                name: "Acme".into(),
                keycloak_id: Some(Uuid::from_u128(1)),
                manager: true,
            }],
            contracts: vec![EntitledContract {
                key: "acme-2026".into(),
                organization: "acme".into(),
                membership_type: MembershipType::Managed,
                starts_on: Some(date!(2026 - 01 - 05)),
                ends_on: None,
            }],
            active_organization: None,
        };
        let value = serde_json::to_value(&claims).unwrap();
        assert_eq!(
            value,
            json!({
                "iss": "identity-sidecar", "aud": "apps", "sub": "user-1", "iat": 1000, "exp": 1300,
                "email": "ada@example.com", "preferred_username": "ada", "name": null,
                "organizations": [{
                    "key": "acme", "name": "Acme",
                    "keycloak_id": "00000000-0000-0000-0000-000000000001", "manager": true
                }],
                "contracts": [{
                    "key": "acme-2026", "organization": "acme", "membership_type": "managed",
                    "starts_on": "2026-01-05", "ends_on": null
                }]
            })
        );
        let back: EntitlementClaims = serde_json::from_value(value).unwrap();
        assert_eq!(back, claims);

        let active = EntitlementClaims { active_organization: Some("acme".into()), ..claims };
        let value = serde_json::to_value(&active).unwrap();
        assert_eq!(value["active_organization"], "acme");
        assert_eq!(serde_json::from_value::<EntitlementClaims>(value).unwrap(), active);
    }

    #[test]
    fn exp_is_the_ttl_but_never_after_the_access_token() {
        assert_eq!(exp_for(1_000, 300, 5_000), 1_300);
        assert_eq!(exp_for(1_000, 300, 1_100), 1_100);
        assert_eq!(exp_for(u64::MAX - 1, 300, u64::MAX), u64::MAX);
    }
}
