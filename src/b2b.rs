//! The vocabulary of B2B access that both the store and the reconciliation plan speak: how a
//! contract is held ([`MembershipType`]), why a user is a member or holds a contract
//! ([`MembershipSource`], [`AttachmentSource`]), the one definition of "valid on a day"
//! ([`valid_on`]) and of "full" ([`is_full`]), and a user's B2B facts as headers and the
//! entitlement token show them ([`Facts`]).
//!
//! It lives below both `store` and `reconcile` so that neither imports the other for these
//! words, and imports nothing of the crate. The text forms of the enums are what the database
//! stores and the admin API sends (docs/contract.md §1, §6).

use serde::{Deserialize, Serialize};
use time::Date;
use utoipa::ToSchema;
use uuid::Uuid;

time::serde::format_description!(pub iso_date, Date, "[year]-[month]-[day]");

/// How users come to hold a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MembershipType {
    /// Every member of the organization, attached on login.
    Auto,
    /// Like `auto`, for organizations whose membership is managed in Keycloak.
    Managed,
    /// Only through an enrollment code (or an admin).
    Code,
}

impl MembershipType {
    /// Attached by reconciliation (SSO) rather than by codes.
    pub fn is_sso(self) -> bool {
        matches!(self, Self::Auto | Self::Managed)
    }
}

/// Why a user is a member of an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MembershipSource {
    /// Added by reconciliation from the token's organization claim.
    Claim,
    /// Added by redeeming an enrollment code.
    Code,
    /// Added by an admin.
    Admin,
    /// Added when the user accepted a seat assignment by e-mail (docs/contract.md §12).
    Assignment,
}

/// Why a user holds a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttachmentSource {
    /// Attached by reconciliation (an `auto` or `managed` contract of a member organization).
    Sso,
    /// Attached by redeeming an enrollment code.
    Code,
    /// Attached by an admin.
    Admin,
    /// Attached when the user accepted a seat assignment by e-mail (docs/contract.md §12).
    Assignment,
}

/// Active and `starts_on <= today <= ends_on` (UTC dates; a missing bound is unbounded) — the
/// one definition of "valid on a day" (docs/contract.md §1), used by the plan, codes, the admin
/// views and the header renderer, which judges validity when it serves headers.
pub fn valid_on(active: bool, starts_on: Option<Date>, ends_on: Option<Date>, today: Date) -> bool {
    active && starts_on.is_none_or(|s| s <= today) && ends_on.is_none_or(|e| today <= e)
}

/// A contract is full when it has a seat limit (`max_learners > 0`) and every seat is taken.
pub fn is_full(max_learners: Option<i64>, seats_used: i64) -> bool {
    matches!(max_learners, Some(max) if max > 0 && seats_used >= max)
}

/// A user's stored B2B facts, as reconciliation leaves them: what the headers and the
/// entitlement token show. Cached per login (memory and Redis tiers) and as the last known
/// facts of a user; contract validity is judged when headers are served, not when cached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// Sorted by key.
    pub organizations: Vec<EntitledOrganization>,
    /// Every attached contract with what validity needs; filtered per request.
    pub contracts: Vec<HeldContract>,
    /// `(keycloak_alias, key)` of the user's organizations that have an alias, sorted: how a
    /// single-organization scope (`organization:<alias>`) names one (docs/contract.md §10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<(String, String)>,
    /// The organization key the login's session selected (`PUT /_sidecar/active-organization`),
    /// as read when the login was reconciled; it counts only while the user is still a member
    /// of it. `None` in a user's last known facts, which are not per session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<String>,
}

impl Facts {
    /// Contracts valid on `today`, sorted by key.
    pub fn valid_contracts(&self, today: Date) -> impl Iterator<Item = &EntitledContract> {
        self.contracts
            .iter()
            .filter(move |c| valid_on(c.active, c.contract.starts_on, c.contract.ends_on, today))
            .map(|c| &c.contract)
    }
}

/// An attached contract; whether it counts is judged when headers are served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldContract {
    pub contract: EntitledContract,
    pub active: bool,
}

/// One organization of the user, as the entitlement token names it (docs/contract.md §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitledOrganization {
    pub key: String,
    pub name: String,
    pub keycloak_id: Option<Uuid>,
    pub manager: bool,
}

/// One contract of the user, as the entitlement token names it (docs/contract.md §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitledContract {
    pub key: String,
    /// The organization's key.
    pub organization: String,
    pub membership_type: MembershipType,
    /// `YYYY-MM-DD`, `null` when unbounded (left out of the entitlement token, so an absent
    /// member reads as unbounded too).
    #[serde(default, with = "iso_date::option")]
    pub starts_on: Option<Date>,
    /// `YYYY-MM-DD` (inclusive), `null` when unbounded (left out like `starts_on`).
    #[serde(default, with = "iso_date::option")]
    pub ends_on: Option<Date>,
}

/// `as_str`, `Display` and `FromStr` for a fieldless enum with one text form per variant, as
/// stored in the database and sent on the wire. Also used by the store for its own enums.
macro_rules! text_enum {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl ::std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!(concat!("unknown ", stringify!($ty), " {:?}"), other)),
                }
            }
        }
    };
}
pub(crate) use text_enum;

text_enum!(MembershipType { Auto => "auto", Managed => "managed", Code => "code" });
text_enum!(MembershipSource { Claim => "claim", Code => "code", Admin => "admin", Assignment => "assignment" });
text_enum!(AttachmentSource { Sso => "sso", Code => "code", Admin => "admin", Assignment => "assignment" });

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    const TODAY: Date = date!(2026 - 06 - 15);

    #[test]
    fn a_contract_is_valid_between_its_dates_inclusive_and_only_when_active() {
        let yesterday = TODAY.previous_day().unwrap();
        let tomorrow = TODAY.next_day().unwrap();
        assert!(valid_on(true, None, None, TODAY));
        assert!(!valid_on(false, None, None, TODAY));
        assert!(valid_on(true, Some(TODAY), Some(TODAY), TODAY));
        assert!(valid_on(true, Some(yesterday), Some(tomorrow), TODAY));
        assert!(!valid_on(true, Some(tomorrow), None, TODAY));
        assert!(!valid_on(true, None, Some(yesterday), TODAY));
    }

    #[test]
    fn a_contract_is_full_only_with_a_limit_and_every_seat_taken() {
        assert!(is_full(Some(2), 2));
        assert!(is_full(Some(2), 3));
        assert!(!is_full(Some(2), 1));
        assert!(!is_full(Some(0), 5));
        assert!(!is_full(None, 5));
    }

    #[test]
    fn facts_show_only_contracts_valid_today() {
        let held = |key: &str, active, ends_on| HeldContract {
            contract: EntitledContract {
                key: key.into(),
                organization: "acme".into(),
                membership_type: MembershipType::Auto,
                starts_on: None,
                ends_on,
            },
            active,
        };
        let facts = Facts {
            organizations: Vec::new(),
            aliases: Vec::new(),
            selection: None,
            contracts: vec![
                held("a-valid", true, Some(TODAY)),
                held("b-ended", true, TODAY.previous_day()),
                held("c-off", false, None),
            ],
        };
        let keys: Vec<&str> = facts.valid_contracts(TODAY).map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["a-valid"]);
    }

    #[test]
    fn the_enums_round_trip_through_their_text() {
        for t in [MembershipType::Auto, MembershipType::Managed, MembershipType::Code] {
            assert_eq!(t.as_str().parse::<MembershipType>().unwrap(), t);
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        for s in [
            MembershipSource::Claim,
            MembershipSource::Code,
            MembershipSource::Admin,
            MembershipSource::Assignment,
        ] {
            assert_eq!(s.as_str().parse::<MembershipSource>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in [
            AttachmentSource::Sso,
            AttachmentSource::Code,
            AttachmentSource::Admin,
            AttachmentSource::Assignment,
        ] {
            assert_eq!(s.as_str().parse::<AttachmentSource>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        let err = "SSO".parse::<AttachmentSource>().unwrap_err();
        assert_eq!(err.to_string(), "unknown AttachmentSource \"SSO\"");
    }
}
