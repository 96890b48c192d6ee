//! The rows of the store as the rest of the sidecar sees them.
//!
//! Field names are the wire names of docs/contract.md §1/§6, so the admin API serialises these types as they
//! are: `key`, `organization` (an organization's *key*, never its row id), dates as `YYYY-MM-DD`,
//! timestamps as RFC 3339, `price` as a decimal string. Internal row ids are kept on the types
//! (other store calls take them) but never serialised.
//!
//! The `New*` types are the writable fields of a row: the admin API deserialises a create body
//! into them (unknown fields are rejected), and an update takes the same type holding the full
//! desired state after a JSON merge patch has been applied to the current row.
//!
//! The B2B words the rows use (membership types, sources, "valid on a day", "full") are
//! [`crate::b2b`]'s; the enums are re-exported here because the store's calls take them.

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::b2b::{self, text_enum};

pub use crate::b2b::{AttachmentSource, MembershipSource, MembershipType, iso_date};

/// Whether `key` is a valid organization or contract key: `[a-z0-9_-]{1,64}`.
/// The database checks the same rule; callers check first to answer 422 with the field named.
pub fn is_valid_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Whether `price` is a non-negative decimal string such as `0`, `12` or `12.50`.
pub fn is_valid_price(price: &str) -> bool {
    let mut parts = price.splitn(2, '.');
    let int = parts.next().unwrap_or_default();
    let frac = parts.next();
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

/// A B2B organization. Without `keycloak_id` and `keycloak_alias` it is *local*: reconciliation
/// never adds, removes or un-flags its memberships.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Organization {
    #[serde(skip)]
    pub id: i64,
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub key: String,
    pub name: String,
    pub description: String,
    pub keycloak_id: Option<Uuid>,
    pub keycloak_alias: Option<String>,
    /// Lower-case e-mail domains whose addresses the organization's managers may assign seats
    /// to (docs/contract.md §11, §12); empty: managers cannot assign.
    pub email_domains: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Organization {
    /// Not linked to Keycloak: reconciliation leaves its memberships alone.
    pub fn is_local(&self) -> bool {
        self.keycloak_id.is_none() && self.keycloak_alias.is_none()
    }

    /// Whether `email`'s domain (after its last `@`, compared case-insensitively) is exactly one
    /// of [`email_domains`](Self::email_domains): `jo@acme.com` is admitted by `acme.com`, not
    /// `jo@mail.acme.com`. An address without a local part or domain is never admitted, and an
    /// organization without domains admits nobody.
    pub fn admits_email(&self, email: &str) -> bool {
        let Some((local, domain)) = email.rsplit_once('@') else {
            return false;
        };
        !local.is_empty()
            && !domain.is_empty()
            && self.email_domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// A lower-case DNS name of two or more labels (letters, digits, inner hyphens), at most 253
/// characters, e.g. `example.com`: what an organization's `email_domains` may hold.
pub fn is_valid_email_domain(domain: &str) -> bool {
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    domain.len() <= 253 && domain.split('.').count() >= 2 && domain.split('.').all(label)
}

/// The writable fields of an organization (create, or full state for an update).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrganization {
    /// `[a-z0-9_-]{1,64}`; never changes.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub key: String,
    /// Not blank.
    #[schema(pattern = "\\S")]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub keycloak_id: Option<Uuid>,
    /// Not blank (null: no alias).
    #[serde(default)]
    #[schema(pattern = "\\S")]
    pub keycloak_alias: Option<String>,
    /// Lower-case e-mail domains (`example.com`) managers may assign seats to; default none.
    #[serde(default)]
    pub email_domains: Vec<String>,
}

impl From<&Organization> for NewOrganization {
    /// The writable state of a stored organization: serialise it, apply a JSON merge patch,
    /// deserialise the result and pass it to `organizations::update`.
    fn from(o: &Organization) -> Self {
        Self {
            key: o.key.clone(),
            name: o.name.clone(),
            description: o.description.clone(),
            keycloak_id: o.keycloak_id,
            keycloak_alias: o.keycloak_alias.clone(),
            email_domains: o.email_domains.clone(),
        }
    }
}

/// A contract: what an organization's users are entitled to, for how long and for how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Contract {
    #[serde(skip)]
    pub id: i64,
    #[serde(skip)]
    pub organization_id: i64,
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub key: String,
    /// The organization's key.
    pub organization: String,
    pub name: String,
    pub membership_type: MembershipType,
    pub active: bool,
    #[serde(with = "iso_date::option")]
    pub starts_on: Option<Date>,
    #[serde(with = "iso_date::option")]
    pub ends_on: Option<Date>,
    /// `None` or `0`: unlimited.
    #[schema(minimum = 0)]
    pub max_learners: Option<i64>,
    /// Decimal string; `None` or zero: free.
    #[schema(pattern = "^[0-9]+(\\.[0-9]+)?$")]
    pub price: Option<String>,
    /// Seats taken: attachments (all sources, forced ones included) plus `allocated` seat
    /// assignments that have not reached their `expires_at` (docs/contract.md §12). It may
    /// exceed `max_learners` after forced attachments or a lowered limit.
    #[schema(minimum = 0)]
    pub seats_used: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Contract {
    /// Active and `starts_on <= today <= ends_on` ([`b2b::valid_on`]).
    pub fn is_valid_on(&self, today: Date) -> bool {
        b2b::valid_on(self.active, self.starts_on, self.ends_on, today)
    }

    /// Has a seat limit (`max_learners` set and not 0).
    pub fn is_limited(&self) -> bool {
        self.max_learners.is_some_and(|m| m > 0)
    }

    /// Every seat is taken (never true for an unlimited contract; [`b2b::is_full`]).
    pub fn is_full(&self) -> bool {
        b2b::is_full(self.max_learners, self.seats_used)
    }
}

/// The writable fields of a contract. `organization` is the organization's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewContract {
    /// `[a-z0-9_-]{1,64}`; never changes.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub key: String,
    /// The key of an existing organization.
    pub organization: String,
    /// Not blank.
    #[schema(pattern = "\\S")]
    pub name: String,
    pub membership_type: MembershipType,
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub active: bool,
    #[serde(default, with = "iso_date::option")]
    pub starts_on: Option<Date>,
    /// Not before `starts_on`.
    #[serde(default, with = "iso_date::option")]
    pub ends_on: Option<Date>,
    /// Seats; null or 0: unlimited.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub max_learners: Option<i64>,
    /// A non-negative decimal string such as `"12.50"`; null or zero: free.
    #[serde(default)]
    #[schema(pattern = "^[0-9]+(\\.[0-9]+)?$")]
    pub price: Option<String>,
}

impl From<&Contract> for NewContract {
    /// The writable state of a stored contract (for a merge patch, as for organizations).
    fn from(c: &Contract) -> Self {
        Self {
            key: c.key.clone(),
            organization: c.organization.clone(),
            name: c.name.clone(),
            membership_type: c.membership_type,
            active: c.active,
            starts_on: c.starts_on,
            ends_on: c.ends_on,
            max_learners: c.max_learners,
            price: c.price.clone(),
        }
    }
}

fn yes() -> bool {
    true
}

/// A user as last seen in a token (`sub` is Keycloak's subject).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct User {
    pub sub: String,
    pub email: Option<String>,
    pub username: Option<String>,
    pub name: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_login_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// What a login tells us about the user (recorded when a per-user transaction starts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub email: Option<String>,
    pub username: Option<String>,
    pub name: Option<String>,
}

/// A user's membership in an organization, with the organization's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Membership {
    pub sub: String,
    #[serde(skip)]
    pub organization_id: i64,
    /// The organization's key.
    pub organization: String,
    pub organization_name: String,
    pub keycloak_id: Option<Uuid>,
    pub keycloak_alias: Option<String>,
    pub keep_until_seen: bool,
    pub manager: bool,
    pub source: MembershipSource,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Membership {
    /// The organization is local (no Keycloak link): reconciliation leaves this membership alone.
    pub fn is_local(&self) -> bool {
        self.keycloak_id.is_none() && self.keycloak_alias.is_none()
    }
}

/// A user's contract, with what the headers and the entitlement token need from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Attachment {
    pub sub: String,
    #[serde(skip)]
    pub contract_id: i64,
    /// The contract's key.
    pub contract: String,
    pub contract_name: String,
    #[serde(skip)]
    pub organization_id: i64,
    /// The contract's organization's key.
    pub organization: String,
    pub membership_type: MembershipType,
    pub active: bool,
    #[serde(with = "iso_date::option")]
    pub starts_on: Option<Date>,
    #[serde(with = "iso_date::option")]
    pub ends_on: Option<Date>,
    pub source: AttachmentSource,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Attachment {
    /// The contract is active and `starts_on <= today <= ends_on` ([`b2b::valid_on`]).
    pub fn is_valid_on(&self, today: Date) -> bool {
        b2b::valid_on(self.active, self.starts_on, self.ends_on, today)
    }
}

/// Result of an attach that respects the seat limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachOutcome {
    /// A new attachment; it took a seat.
    Attached,
    /// The user already held the contract; nothing changed.
    AlreadyAttached,
    /// No seat left; nothing changed.
    Full,
}

/// A member of an organization, for `GET /admin/v1/organizations/{key}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct OrganizationMember {
    pub sub: String,
    pub email: Option<String>,
    pub username: Option<String>,
    pub name: Option<String>,
    pub keep_until_seen: bool,
    pub manager: bool,
    pub source: MembershipSource,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A user holding a contract, for `GET /admin/v1/contracts/{key}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ContractMember {
    pub sub: String,
    pub email: Option<String>,
    pub username: Option<String>,
    pub name: Option<String>,
    pub source: AttachmentSource,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// One recorded change (docs/contract.md §1: every membership / attachment change, with actor and reason).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AuditEvent {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `login`, `admin:<who>` or `code`.
    pub actor: String,
    /// What happened, e.g. `membership.added`, `attachment.skipped_full`.
    pub action: String,
    pub sub: Option<String>,
    /// Organization key (kept as text: the event outlives the organization).
    pub organization: Option<String>,
    /// Contract key.
    pub contract: Option<String>,
    pub reason: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// An audit event to record; the store stamps `id` and `at`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewAuditEvent {
    pub actor: String,
    pub action: String,
    pub sub: Option<String>,
    pub organization: Option<String>,
    pub contract: Option<String>,
    pub reason: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// Which audit events to return, newest first. Unset filters match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub sub: Option<String>,
    pub organization: Option<String>,
    pub contract: Option<String>,
    /// Only events with a smaller id (for paging backwards).
    pub before_id: Option<i64>,
    pub limit: u32,
}

/// The last good JWKS document fetched from an issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedJwks {
    pub issuer: String,
    /// The JSON document exactly as fetched.
    pub jwks: String,
    pub fetched_at: OffsetDateTime,
}

/// How often an enrollment code can be redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum Redemption {
    /// By one user (that user may redeem it again: the answer is "already attached").
    #[serde(rename = "one-time")]
    OneTime,
    /// By any number of users, within the contract's seats.
    #[serde(rename = "unlimited")]
    Unlimited,
}

/// An enrollment code. The code itself is stored (not a hash): admins list and export codes to
/// hand them out (docs/contract.md §6), so the store must be able to give them back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollmentCode {
    #[serde(skip)]
    pub id: i64,
    pub code: String,
    #[serde(skip)]
    pub contract_id: i64,
    /// The contract's key.
    pub contract: String,
    pub redemption: Redemption,
    #[serde(with = "time::serde::rfc3339::option")]
    pub activates_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// For a one-time code: who redeemed it ([`super::codes::ERASED_REDEEMER`] once that user
    /// was erased: the code stays spent).
    pub redeemed_by: Option<String>,
    /// For a one-time code: when `redeemed_by` redeemed it (none once that user was erased).
    #[serde(with = "time::serde::rfc3339::option")]
    pub redeemed_at: Option<OffsetDateTime>,
    /// How many users redeemed it.
    pub redemptions: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl EnrollmentCode {
    /// Somebody redeemed it (a one-time code is spent; either kind can no longer be revoked).
    pub fn is_redeemed(&self) -> bool {
        self.redeemed_by.is_some() || self.redemptions > 0
    }

    /// Not revoked and within `activates_at <= now < expires_at`.
    pub fn is_usable_at(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none()
            && self.activates_at.is_none_or(|a| a <= now)
            && self.expires_at.is_none_or(|e| now < e)
    }
}

/// A code to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEnrollmentCode {
    pub code: String,
    pub redemption: Redemption,
    pub activates_at: Option<OffsetDateTime>,
    pub expires_at: Option<OffsetDateTime>,
}

/// Where a durable job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for `next_run_at`.
    Queued,
    /// Claimed by a worker until `next_run_at` (its lease); an expired lease makes it claimable.
    Running,
    /// Finished successfully.
    Done,
    /// Gave up; `last_error` says why.
    Failed,
}

/// A durable job: Keycloak pushes, background reconciliations (docs/contract.md §6, §7).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    pub status: JobStatus,
    pub attempts: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub next_run_at: OffsetDateTime,
    pub last_error: Option<String>,
    /// Free-form progress, e.g. `{"done": 10, "total": 200}`.
    pub progress: Option<serde_json::Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

text_enum!(Redemption { OneTime => "one-time", Unlimited => "unlimited" });
text_enum!(AssignmentState {
    Allocated => "allocated",
    Accepted => "accepted",
    Expired => "expired",
    Revoked => "revoked",
});
text_enum!(JobStatus { Queued => "queued", Running => "running", Done => "done", Failed => "failed" });

/// Where a seat assignment by e-mail stands (docs/contract.md §12): `allocated` holds a seat for
/// the e-mail; `accepted`, `expired` and `revoked` are final (an accepted one's seat became the
/// user's attachment; the other two released theirs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AssignmentState {
    Allocated,
    Accepted,
    Expired,
    Revoked,
}

/// A seat of a contract reserved for an e-mail address (docs/contract.md §12), as the admin API
/// shows it. An `allocated` assignment whose `expires_at` has passed is read as `expired` (its
/// seat is free from that instant), whether or not its row was marked yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Assignment {
    pub id: i64,
    #[serde(skip)]
    pub contract_id: i64,
    /// The contract's key.
    pub contract: String,
    /// The contract's organization's key.
    pub organization: String,
    /// Lower-cased; `null` once the user it belongs to was erased.
    pub email: Option<String>,
    pub state: AssignmentState,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the seat is released if nobody accepted it; `null`: never.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// When a login accepted it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub accepted_at: Option<OffsetDateTime>,
    /// The user who accepted it.
    pub sub: Option<String>,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    fn organization_with_domains(domains: &[&str]) -> Organization {
        Organization {
            id: 1,
            key: "acme".into(),
            name: "Acme".into(),
            description: String::new(),
            keycloak_id: None,
            keycloak_alias: None,
            email_domains: domains.iter().map(|d| d.to_string()).collect(),
            created_at: datetime!(2026-01-01 0:00 UTC),
            updated_at: datetime!(2026-01-01 0:00 UTC),
        }
    }

    #[test]
    fn an_organization_admits_an_email_whose_domain_is_exactly_one_of_its_domains_in_any_case() {
        let org = organization_with_domains(&["acme.com", "acme.co.uk"]);
        assert!(org.admits_email("jo@acme.com"));
        assert!(org.admits_email("Jo.Doe@ACME.Com"));
        assert!(org.admits_email("jo@acme.co.uk"));
        assert!(org.admits_email("\"odd@name\"@acme.com"), "the domain follows the last @");
        assert!(!org.admits_email("jo@mail.acme.com"), "no subdomains");
        assert!(!org.admits_email("jo@acme.com.evil.example"));
        assert!(!org.admits_email("jo@notacme.com"));
        assert!(!org.admits_email("acme.com"));
        assert!(!org.admits_email("@acme.com"));
        assert!(!org.admits_email("jo@"));
        assert!(!org.admits_email("jo@acme.com@evil.example"));
        assert!(!organization_with_domains(&[]).admits_email("jo@acme.com"), "no domains: nobody");
    }

    #[test]
    fn email_domains_are_lower_case_dns_names_of_two_labels_or_more() {
        for good in ["acme.com", "mail.acme.co.uk", "x-1.io", "123.example"] {
            assert!(is_valid_email_domain(good), "{good}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        for bad in [
            "",
            "acme",
            "Acme.com",
            "@acme.com",
            "*.acme.com",
            "acme..com",
            "-acme.com",
            "acme-.com",
            "acme.com.",
            long_label.as_str(),
        ] {
            assert!(!is_valid_email_domain(bad), "{bad}");
        }
    }

    #[test]
    fn keys_are_lowercase_slugs_up_to_64_bytes() {
        assert!(is_valid_key("acme_corp-2"));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key("Acme"));
        assert!(!is_valid_key("a b"));
        assert!(!is_valid_key(&"a".repeat(65)));
    }

    #[test]
    fn prices_are_plain_decimals() {
        for ok in ["0", "12", "12.50"] {
            assert!(is_valid_price(ok), "{ok}");
        }
        for bad in ["", ".5", "5.", "-1", "1e3", "1.2.3"] {
            assert!(!is_valid_price(bad), "{bad}");
        }
    }

    #[test]
    fn contract_serialises_with_wire_names_and_formats() {
        let c = Contract {
            id: 7,
            organization_id: 3,
            key: "acme-2026".into(),
            organization: "acme".into(),
            name: "Acme 2026".into(),
            membership_type: MembershipType::Managed,
            active: true,
            starts_on: Some(date!(2026 - 01 - 01)),
            ends_on: None,
            max_learners: Some(5),
            price: Some("12.50".into()),
            seats_used: 2,
            created_at: datetime!(2026-01-02 03:04:05 UTC),
            updated_at: datetime!(2026-01-02 03:04:05.5 UTC),
        };
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "key": "acme-2026", "organization": "acme", "name": "Acme 2026",
                "membership_type": "managed", "active": true,
                "starts_on": "2026-01-01", "ends_on": null,
                "max_learners": 5, "price": "12.50", "seats_used": 2,
                "created_at": "2026-01-02T03:04:05Z", "updated_at": "2026-01-02T03:04:05.5Z"
            })
        );
    }

    #[test]
    fn new_contract_rejects_unknown_fields_and_defaults_to_active() {
        let c: NewContract = serde_json::from_value(serde_json::json!({
            "key": "k", "organization": "o", "name": "n", "membership_type": "code",
            "ends_on": "2026-12-31"
        }))
        .unwrap();
        assert!(c.active);
        assert_eq!(c.ends_on, Some(date!(2026 - 12 - 31)));
        let err = serde_json::from_value::<NewContract>(serde_json::json!({
            "key": "k", "organization": "o", "name": "n", "membership_type": "code", "seats": 1
        }));
        assert!(err.is_err());
    }

    #[test]
    fn a_stored_contract_patches_through_its_writable_form() {
        let c = Contract {
            id: 1,
            organization_id: 1,
            key: "k".into(),
            organization: "o".into(),
            name: "n".into(),
            membership_type: MembershipType::Auto,
            active: true,
            starts_on: None,
            ends_on: Some(date!(2026 - 12 - 31)),
            max_learners: None,
            price: None,
            seats_used: 3,
            created_at: datetime!(2026-01-01 00:00 UTC),
            updated_at: datetime!(2026-01-01 00:00 UTC),
        };
        let mut json = serde_json::to_value(NewContract::from(&c)).unwrap();
        json["ends_on"] = serde_json::Value::Null;
        let patched: NewContract = serde_json::from_value(json).unwrap();
        assert_eq!(patched.ends_on, None);
        assert_eq!(patched.membership_type, MembershipType::Auto);
    }

    #[test]
    fn enums_round_trip_through_their_text() {
        for r in [Redemption::OneTime, Redemption::Unlimited] {
            assert_eq!(r.as_str().parse::<Redemption>().unwrap(), r);
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert!("sometimes".parse::<Redemption>().is_err());
    }
}
