//! The Keycloak organization claim (SPEC §3), normalised to a sorted set of (alias, optional id).
//! Pure code: a claim of any shape yields a clear result, never a panic.

use serde_json::Value;
use uuid::Uuid;

/// One organization named by the token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimedOrg {
    /// The Keycloak organization alias.
    pub alias: String,
    /// The Keycloak organization id, when the mapper adds it.
    pub id: Option<Uuid>,
}

/// The normalised claim: entries sorted by alias and deduplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ClaimedOrgs {
    /// Well-formed entries, sorted by (alias, id), no duplicates.
    pub orgs: Vec<ClaimedOrg>,
    /// Entries that were ignored because they were malformed.
    pub ignored: usize,
}

/// Parses the claim value (`None` when the token has no such claim).
pub fn parse_org_claim(value: Option<&Value>) -> ClaimedOrgs {
    let _ = value;
    todo!("helper")
}
