//! Importing Keycloak's organizations (`POST /admin/v1/sync/organizations`, `sync-orgs`).
//!
//! Every Keycloak organization is matched as a claim entry with an id is (docs/contract.md §3): first the
//! organization holding its `keycloak_id`; failing that, the one holding its alias without an
//! id, which learns the id. A match whose name, description or alias differ is updated; an
//! unmatched one is created with a key derived from its alias ([`key_from_alias`]). Keys never
//! change, nothing is deleted (an organization gone from Keycloak keeps its row and members
//! until an admin deletes it), and local organizations are untouched.
//!
//! Conflicts are reported, not forced: an alias held by an organization linked to *another*
//! Keycloak id (typically an organization deleted and recreated in Keycloak under the same
//! alias) is left for an admin to resolve, as is a renamed alias that another organization
//! already holds.
//!
//! The organizations are read from Keycloak first and written in one transaction afterwards,
//! so no HTTP call runs while the database is locked and a failure writes nothing.

use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use super::Error;
use super::client::{KcOrganization, KeycloakAdmin};
use crate::reconcile::apply::Actor;
use crate::store::model::{NewAuditEvent, NewOrganization, Organization};
use crate::store::{Conn, Store, StoreError, audit, organizations};

/// Longest key (`[a-z0-9_-]{1,64}`).
const MAX_KEY: usize = 64;

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SyncReport {
    /// Organizations created from Keycloak.
    pub created: u32,
    /// Linked organizations whose name, description, alias or id changed.
    pub updated: u32,
    /// Linked organizations already up to date.
    pub skipped: u32,
    /// Keycloak organizations left alone because their alias is taken (see the module docs).
    pub conflicts: Vec<SyncConflict>,
}

impl SyncReport {
    /// Whether anything was written (cached logins must then be invalidated).
    pub fn changed(&self) -> bool {
        self.created + self.updated > 0
    }
}

/// A Keycloak organization that could not be imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SyncConflict {
    pub keycloak_id: Uuid,
    pub keycloak_alias: String,
    pub detail: String,
}

/// Lists Keycloak's organizations and imports them (see the module docs), auditing each
/// change with `actor`. The caller invalidates cached logins when [`SyncReport::changed`].
pub async fn sync_organizations(
    store: &Store,
    keycloak: &KeycloakAdmin,
    actor: &Actor,
) -> Result<SyncReport, Error> {
    let listed = keycloak.list_organizations().await?;
    let mut report = SyncReport::default();
    let mut tx = store.begin().await?;
    for org in &listed {
        import(&mut tx, org, actor, &mut report).await?;
    }
    tx.commit().await?;
    tracing::info!(
        listed = listed.len(),
        created = report.created,
        updated = report.updated,
        skipped = report.skipped,
        conflicts = report.conflicts.len(),
        "Keycloak organizations synced"
    );
    Ok(report)
}

async fn import(
    conn: &mut Conn,
    org: &KcOrganization,
    actor: &Actor,
    report: &mut SyncReport,
) -> Result<(), StoreError> {
    let alias = org.alias_or_name().to_owned();
    let name = if org.name.trim().is_empty() { alias.clone() } else { org.name.clone() };
    let description = org.description.clone().unwrap_or_default();
    let conflict =
        |detail: String| SyncConflict { keycloak_id: org.id, keycloak_alias: alias.clone(), detail };

    let alias_holder = organizations::by_alias(conn, &alias).await?;
    let existing = match organizations::by_keycloak_id(conn, org.id).await? {
        Some(linked) => {
            if let Some(holder) = alias_holder.as_ref().filter(|h| h.id != linked.id) {
                let detail = format!(
                    "organization `{}` is linked to this id, but the alias is held by organization `{}`",
                    linked.key, holder.key
                );
                report.conflicts.push(conflict(detail));
                return Ok(());
            }
            linked
        }
        None => match alias_holder {
            Some(holder) if holder.keycloak_id.is_some() => {
                let detail = format!(
                    "the alias is held by organization `{}`, linked to another Keycloak organization",
                    holder.key
                );
                report.conflicts.push(conflict(detail));
                return Ok(());
            }
            Some(holder) => holder,
            None => {
                let key = unique_key(conn, &key_from_alias(&alias)).await?;
                let new = NewOrganization {
                    key,
                    name,
                    description,
                    keycloak_id: Some(org.id),
                    keycloak_alias: Some(alias),
                    // Which domains managers may assign seats to is the operator's choice,
                    // not Keycloak's (its organization domains serve identity-provider routing).
                    email_domains: Vec::new(),
                };
                let created = organizations::insert(conn, &new).await?;
                audit::insert(conn, &event(actor, "organization.create", &created.key, json!(new))).await?;
                report.created += 1;
                return Ok(());
            }
        },
    };

    let before = NewOrganization::from(&existing);
    let wanted = NewOrganization {
        name,
        description,
        keycloak_id: Some(org.id),
        keycloak_alias: Some(alias),
        ..before.clone()
    };
    if wanted == before {
        report.skipped += 1;
        return Ok(());
    }
    organizations::update(conn, &wanted).await?;
    let detail = json!({"before": before, "after": wanted});
    audit::insert(conn, &event(actor, "organization.update", &existing.key, detail)).await?;
    report.updated += 1;
    Ok(())
}

fn event(actor: &Actor, action: &str, key: &str, detail: serde_json::Value) -> NewAuditEvent {
    NewAuditEvent {
        actor: actor.0.clone(),
        action: action.to_owned(),
        organization: Some(key.to_owned()),
        reason: Some("keycloak sync".into()),
        detail: Some(detail),
        ..NewAuditEvent::default()
    }
}

/// An organization key from a Keycloak alias: lower-cased, every run of characters outside
/// `[a-z0-9_-]` replaced by one `-`, `-` trimmed from both ends, at most 64 characters;
/// `org` when nothing is left. `"ACME Corp!"` → `acme-corp`.
pub fn key_from_alias(alias: &str) -> String {
    let mut key = String::with_capacity(alias.len().min(MAX_KEY));
    let mut replaced = false;
    for c in alias.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
            key.push(c);
            replaced = false;
        } else if !replaced {
            key.push('-');
            replaced = true;
        }
    }
    let key = key.trim_matches('-');
    let key = key[..key.len().min(MAX_KEY)].trim_end_matches('-');
    if key.is_empty() { "org".to_owned() } else { key.to_owned() }
}

/// `base` with a numeric suffix (`-2`, `-3`, …) when it is taken, still at most 64 characters.
fn with_suffix(base: &str, n: u32) -> String {
    if n < 2 {
        return base.to_owned();
    }
    let suffix = format!("-{n}");
    let room = MAX_KEY - suffix.len();
    format!("{}{suffix}", base[..base.len().min(room)].trim_end_matches('-'))
}

/// The first of `base`, `base-2`, `base-3`, … that no organization holds.
async fn unique_key(conn: &mut Conn, base: &str) -> Result<String, StoreError> {
    let mut n = 1;
    loop {
        let key = with_suffix(base, n);
        match organizations::get(conn, &key).await {
            Err(StoreError::NotFound) => return Ok(key),
            Ok(Organization { .. }) => n += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::is_valid_key;

    #[test]
    fn aliases_become_valid_keys() {
        assert_eq!(key_from_alias("ACME Corp!"), "acme-corp");
        assert_eq!(key_from_alias("acme"), "acme");
        assert_eq!(key_from_alias("Globex_Intl-2"), "globex_intl-2");
        assert_eq!(key_from_alias("  Ünïcode  Örg "), "n-code-rg");
        assert_eq!(key_from_alias("!!!"), "org");
        assert_eq!(key_from_alias(""), "org");
        let long = key_from_alias(&format!("{}!{}", "a".repeat(63), "b".repeat(10)));
        assert_eq!(long, "a".repeat(63), "truncated to 64, then the dangling '-' trimmed");
        for alias in ["ACME Corp!", "x".repeat(200).as_str(), "--a--", "Société Générale"] {
            assert!(is_valid_key(&key_from_alias(alias)), "{alias}");
        }
    }

    #[test]
    fn suffixes_keep_keys_within_64_characters() {
        assert_eq!(with_suffix("acme", 1), "acme");
        assert_eq!(with_suffix("acme", 2), "acme-2");
        let long = "a".repeat(64);
        let suffixed = with_suffix(&long, 12);
        assert_eq!(suffixed.len(), 64);
        assert!(suffixed.ends_with("a-12") && is_valid_key(&suffixed));
    }
}
