//! The claims of the entitlement token `X-Identity-Entitlements` (docs/contract.md §5), also the body of
//! `GET /_sidecar/me`.
//!
//! Members whose value is null are left out of the token (contract §5 v2), at every level: an
//! absent profile field, an organization without a Keycloak id, an unbounded contract date,
//! no active organization. The token is the largest owned header, so every member it does not
//! carry is bytes under the header budget; apps read these members as optional. Only the
//! token's JSON leaves them out: the cached facts ([`EntitledOrganization`],
//! [`EntitledContract`]) keep their own serialised form, which replicas of another version
//! share through Redis.

use serde::{Deserialize, Serialize, Serializer};
use time::Date;
use uuid::Uuid;

use crate::b2b::{EntitledContract, EntitledOrganization, MembershipType, iso_date};

/// The entitlement token's payload. Optional members are left out of its JSON when they have
/// no value, and read back as `None` when absent.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The user's organizations.
    #[serde(serialize_with = "organizations_without_nulls")]
    pub organizations: Vec<EntitledOrganization>,
    /// The contracts attached to the user and valid when the token was made (only the active
    /// organization's with `headers.scope_to_active_organization`).
    #[serde(serialize_with = "contracts_without_nulls")]
    pub contracts: Vec<EntitledContract>,
    /// The key of the request's active organization (docs/contract.md §10); left out when none
    /// is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_organization: Option<String>,
}

/// An organization as the token prints it: [`EntitledOrganization`] without a null
/// `keycloak_id`. Borrowed, so signing copies nothing.
#[derive(Serialize)]
struct TokenOrganization<'a> {
    key: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    keycloak_id: Option<&'a Uuid>,
    manager: bool,
}

/// A contract as the token prints it: [`EntitledContract`] without null dates.
#[derive(Serialize)]
struct TokenContract<'a> {
    key: &'a str,
    organization: &'a str,
    membership_type: MembershipType,
    #[serde(skip_serializing_if = "Option::is_none", with = "iso_date::option")]
    starts_on: Option<Date>,
    #[serde(skip_serializing_if = "Option::is_none", with = "iso_date::option")]
    ends_on: Option<Date>,
}

fn organizations_without_nulls<S: Serializer>(
    items: &[EntitledOrganization],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(items.iter().map(|o| TokenOrganization {
        key: &o.key,
        name: &o.name,
        keycloak_id: o.keycloak_id.as_ref(),
        manager: o.manager,
    }))
}

fn contracts_without_nulls<S: Serializer>(items: &[EntitledContract], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(items.iter().map(|c| TokenContract {
        key: &c.key,
        organization: &c.organization,
        membership_type: c.membership_type,
        starts_on: c.starts_on,
        ends_on: c.ends_on,
    }))
}

/// The entitlement token's `exp`: `ttl_secs` from `now`, but never after the access token's
/// `exp`, so the entitlements cannot outlive the login they were derived from.
pub fn exp_for(now: u64, ttl_secs: u64, token_exp: u64) -> u64 {
    now.saturating_add(ttl_secs).min(token_exp)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use time::macros::date;
    use uuid::Uuid;

    use super::*;
    use crate::b2b::MembershipType;

    fn claims() -> EntitlementClaims {
        EntitlementClaims {
            iss: "identity-sidecar".into(),
            aud: "apps".into(),
            sub: "user-1".into(),
            iat: 1_000,
            exp: 1_300,
            email: Some("ada@example.com".into()),
            preferred_username: Some("ada".into()),
            name: Some("Ada".into()),
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
                ends_on: Some(date!(2026 - 12 - 31)),
            }],
            active_organization: Some("acme".into()),
        }
    }

    #[test]
    fn claims_serialize_as_the_spec_shows_with_dates_as_days() {
        let claims = claims();
        let value = serde_json::to_value(&claims).unwrap();
        assert_eq!(
            value,
            json!({
                "iss": "identity-sidecar", "aud": "apps", "sub": "user-1", "iat": 1000, "exp": 1300,
                "email": "ada@example.com", "preferred_username": "ada", "name": "Ada",
                "organizations": [{
                    "key": "acme", "name": "Acme",
                    "keycloak_id": "00000000-0000-0000-0000-000000000001", "manager": true
                }],
                "contracts": [{
                    "key": "acme-2026", "organization": "acme", "membership_type": "managed",
                    "starts_on": "2026-01-05", "ends_on": "2026-12-31"
                }],
                "active_organization": "acme"
            })
        );
        assert_eq!(serde_json::from_value::<EntitlementClaims>(value).unwrap(), claims);
    }

    #[test]
    fn members_whose_value_is_null_are_left_out_at_every_level_and_read_back_as_none() {
        let mut claims = claims();
        (claims.email, claims.preferred_username, claims.name, claims.active_organization) =
            (None, None, None, None);
        claims.organizations[0].keycloak_id = None;
        claims.organizations.push(EntitledOrganization {
            key: "globex".into(),
            name: "Globex".into(),
            keycloak_id: Some(Uuid::from_u128(2)),
            manager: false,
        });
        claims.contracts[0].ends_on = None;
        claims.contracts.push(EntitledContract {
            key: "globex-open".into(),
            organization: "globex".into(),
            membership_type: MembershipType::Auto,
            starts_on: None,
            ends_on: None,
        });
        let text = serde_json::to_string(&claims).unwrap();
        assert!(!text.contains("null"), "{text}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({
                "iss": "identity-sidecar", "aud": "apps", "sub": "user-1", "iat": 1000, "exp": 1300,
                "organizations": [
                    {"key": "acme", "name": "Acme", "manager": true},
                    {"key": "globex", "name": "Globex",
                     "keycloak_id": "00000000-0000-0000-0000-000000000002", "manager": false}
                ],
                "contracts": [
                    {"key": "acme-2026", "organization": "acme", "membership_type": "managed",
                     "starts_on": "2026-01-05"},
                    {"key": "globex-open", "organization": "globex", "membership_type": "auto"}
                ]
            })
        );
        // An app (or a test) reading the token back gets the same claims.
        assert_eq!(serde_json::from_str::<EntitlementClaims>(&text).unwrap(), claims);
    }

    #[test]
    fn the_cached_facts_keep_their_own_form_with_nulls() {
        // Replicas of another version share cached facts through Redis and may expect every
        // member; only the token's JSON leaves nulls out.
        let mut claims = claims();
        claims.organizations[0].keycloak_id = None;
        claims.contracts[0].starts_on = None;
        assert_eq!(serde_json::to_value(&claims.organizations[0]).unwrap()["keycloak_id"], Value::Null);
        let contract = serde_json::to_value(&claims.contracts[0]).unwrap();
        assert!(contract.as_object().unwrap().contains_key("starts_on"), "{contract}");
    }

    #[test]
    fn exp_is_the_ttl_but_never_after_the_access_token() {
        assert_eq!(exp_for(1_000, 300, 5_000), 1_300);
        assert_eq!(exp_for(1_000, 300, 1_100), 1_100);
        assert_eq!(exp_for(u64::MAX - 1, 300, u64::MAX), u64::MAX);
    }
}
