//! What a cached value costs in memory, and the byte budget that bounds the in-memory token
//! and login caches (`cache.max_bytes`, docs/contract.md §2 *(v2)*).
//!
//! A count bound alone is not a memory bound: a token's claims are as large as its issuer
//! makes them (10,000 distinct 15 KB tokens grew the process by 150 MiB), so each moka cache
//! weighs its entries with an estimate of the heap they hold: every string's capacity, every
//! vector's and map's slots, the JSON claims kept for `X-Userinfo`, plus a fixed allowance
//! for the cache's own bookkeeping. The estimate errs high rather than low.

use std::mem::size_of;

use serde_json::Value;

use crate::auth::validate::Principal;
use crate::b2b::Facts;

/// moka's bookkeeping per entry (hash, access-order and write-order nodes, expiry timer),
/// the `Arc` header and allocator rounding, rounded up.
pub const ENTRY_OVERHEAD: usize = 256;

/// One cache's bounds: at most `max_entries` entries and at most `max_bytes` estimated bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheBudget {
    pub max_entries: u64,
    pub max_bytes: u64,
}

impl CacheBudget {
    /// A bound by count only (each entry weighs one slot of `64 KiB`, far above any real one).
    pub fn entries(max_entries: u64) -> CacheBudget {
        CacheBudget { max_entries, max_bytes: max_entries.saturating_mul(64 * 1024) }
    }

    /// The capacity to give moka: total weight.
    pub fn capacity(&self) -> u64 {
        self.max_bytes
    }

    /// The weight of an entry estimated at `bytes`: never less than the entry's share of
    /// `max_bytes` by count, so the cache also holds at most `max_entries` entries.
    pub fn weight(&self, bytes: usize) -> u32 {
        let floor = (self.max_bytes / self.max_entries.max(1)).max(1);
        u32::try_from((bytes as u64).max(floor)).unwrap_or(u32::MAX)
    }
}

/// Heap bytes of a string: its length (strings decoded from JSON are allocated to size; the
/// `String` itself is counted by its owner).
fn string(s: &str) -> usize {
    s.len()
}

fn opt_string(s: &Option<String>) -> usize {
    s.as_deref().map_or(0, string)
}

/// Estimated bytes of a JSON value held in memory (itself included): serde_json's `Map` is a
/// B-tree, whose nodes hold a key, a value and about two words of structure per entry.
pub fn json(value: &Value) -> usize {
    size_of::<Value>()
        + match value {
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
            Value::String(s) => string(s),
            Value::Array(items) => items.iter().map(json).sum(),
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| size_of::<String>() + string(k) + json(v) + 2 * size_of::<usize>())
                .sum(),
        }
}

/// Estimated bytes of a cached principal with its 32-byte key.
pub fn principal(p: &Principal) -> usize {
    let roles: usize = p.roles.iter().map(|r| size_of::<String>() + string(r)).sum();
    let orgs: usize = p
        .organizations
        .orgs
        .iter()
        .map(|o| size_of::<crate::auth::org_claim::ClaimedOrg>() + string(&o.alias))
        .sum();
    let userinfo: usize = p
        .userinfo
        .iter()
        .map(|(k, v)| size_of::<String>() + string(k) + json(v) + 2 * size_of::<usize>())
        .sum();
    ENTRY_OVERHEAD
        + 32
        + size_of::<Principal>()
        + string(&p.sub)
        + opt_string(&p.sid)
        + string(&p.scope)
        + opt_string(&p.email)
        + opt_string(&p.preferred_username)
        + opt_string(&p.name)
        + roles
        + orgs
        + userinfo
}

/// Estimated bytes of a user's B2B facts.
pub fn facts(s: &Facts) -> usize {
    let orgs: usize = s
        .organizations
        .iter()
        .map(|o| size_of::<crate::b2b::EntitledOrganization>() + string(&o.key) + string(&o.name))
        .sum();
    let contracts: usize = s
        .contracts
        .iter()
        .map(|c| {
            size_of::<crate::b2b::HeldContract>() + string(&c.contract.key) + string(&c.contract.organization)
        })
        .sum();
    size_of::<Facts>() + orgs + contracts
}

/// Estimated bytes of a cached login entry: its key and `sub`, the user's [`Facts`], and the
/// B2B header set rendered from them later (the keys again, and the signed entitlement token:
/// the facts and the profile as JSON, base64-encoded, plus header and signature).
pub fn login(sub: &str, s: &Facts) -> usize {
    let facts = facts(s);
    let keys: usize = s.organizations.iter().map(|o| size_of::<String>() + 2 * string(&o.key)).sum::<usize>()
        + s.contracts.iter().map(|c| size_of::<String>() + string(&c.contract.key)).sum::<usize>();
    let jws = (facts + 512) * 4 / 3 + 256;
    ENTRY_OVERHEAD + 32 + string(sub) + facts + keys + jws
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_weighs_at_least_its_share_of_the_budget_by_count() {
        let budget = CacheBudget { max_entries: 1000, max_bytes: 1_000_000 };
        assert_eq!(budget.weight(10), 1000);
        assert_eq!(budget.weight(5000), 5000);
        assert_eq!(
            CacheBudget { max_entries: 10, max_bytes: 5 }.weight(0),
            1,
            "never zero: moka keeps weight-0 entries"
        );
        assert_eq!(budget.weight(usize::MAX), u32::MAX);
    }

    fn principal_with_claims(i: usize, claim_bytes: usize) -> Principal {
        let mut userinfo = serde_json::Map::new();
        userinfo.insert("name".into(), Value::String("n".repeat(claim_bytes)));
        Principal {
            sub: format!("user-{i}"),
            sid: Some(format!("session-{i}")),
            exp: crate::auth::gate::unix_now() + 3600,
            scope: "openid".into(),
            email: None,
            preferred_username: None,
            name: Some("n".repeat(claim_bytes)),
            roles: vec!["reader".into()],
            organizations: Default::default(),
            userinfo,
        }
    }

    #[test]
    fn the_token_cache_stays_within_its_byte_budget_whatever_the_tokens_size() {
        let budget = CacheBudget { max_entries: 200_000, max_bytes: 2 * 1024 * 1024 };
        let cache = crate::auth::gate::token_cache(budget);
        // 1,000 distinct tokens with 15 KB of claims each: ~30 MB if nothing bounded them.
        for i in 0..1000usize {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            cache.insert(key, std::sync::Arc::new(principal_with_claims(i, 7_500)));
        }
        cache.run_pending_tasks();
        assert!(cache.weighted_size() <= budget.max_bytes, "{} bytes", cache.weighted_size());
        assert!(cache.entry_count() < 1000, "nothing was evicted");
        assert!(cache.entry_count() > 0, "nothing was kept");
        // Each entry is weighed at no less than its claims' text.
        assert!(principal(&principal_with_claims(0, 7_500)) > 15_000);
    }

    #[test]
    fn the_token_cache_still_holds_at_most_max_entries_small_entries() {
        let budget = CacheBudget { max_entries: 50, max_bytes: 64 * 1024 * 1024 };
        let cache = crate::auth::gate::token_cache(budget);
        for i in 0..500usize {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            cache.insert(key, std::sync::Arc::new(principal_with_claims(i, 10)));
        }
        cache.run_pending_tasks();
        assert!(cache.entry_count() <= 50, "{}", cache.entry_count());
    }

    #[test]
    fn the_login_cache_stays_within_its_byte_budget() {
        use crate::b2b::EntitledOrganization;
        let budget = CacheBudget { max_entries: 200_000, max_bytes: 1024 * 1024 };
        let logins =
            crate::entitlements::logins::Logins::bounded(budget, std::time::Duration::from_secs(300));
        let exp = crate::auth::gate::unix_now() + 3600;
        for i in 0..1000usize {
            let organizations = (0..20)
                .map(|o| EntitledOrganization {
                    key: format!("organization-{o:04}-{}", "k".repeat(100)),
                    name: "n".repeat(200),
                    keycloak_id: None,
                    manager: false,
                })
                .collect();
            let facts = Facts { organizations, contracts: Vec::new() };
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            logins.put(key, &format!("user-{i}"), facts, exp, logins.generation());
        }
        assert!(logins.weighted_size() <= budget.max_bytes, "{} bytes", logins.weighted_size());
        assert!(logins.len() < 1000, "nothing was evicted");
    }

    #[test]
    fn large_claims_weigh_more_than_their_text() {
        let big = "x".repeat(15_000);
        let value = serde_json::json!({"name": big, "list": ["a", "b"]});
        assert!(json(&value) > 15_000);
    }
}
