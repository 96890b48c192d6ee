//! What a cached value costs in memory, and the byte budget that bounds the in-memory token
//! and login caches (`cache.max_bytes`, docs/contract.md §2 *(v2)*).
//!
//! A count bound alone is not a memory bound: a token's claims are as large as its issuer
//! makes them (10,000 distinct 15 KB tokens grew the process by 150 MiB), so each moka cache
//! weighs its entries with an estimate of the heap they hold: every string's capacity, every
//! vector's and map's slots, the JSON claims kept for `X-Userinfo`, plus a fixed allowance
//! for the cache's own bookkeeping. The estimate errs high rather than low.
//!
//! Only the budget and the generic pieces live here, so this module depends on nothing of the
//! crate: each cache weighs its own values beside them (a principal in
//! [`crate::auth::authenticator`], a login in [`crate::entitlements::memory`]).

use std::mem::size_of;

use serde_json::Value;

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
pub fn string(s: &str) -> usize {
    s.len()
}

/// Heap bytes of an optional string (see [`string`]).
pub fn opt_string(s: &Option<String>) -> usize {
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

    #[test]
    fn large_claims_weigh_more_than_their_text() {
        let big = "x".repeat(15_000);
        let value = serde_json::json!({"name": big, "list": ["a", "b"]});
        assert!(json(&value) > 15_000);
    }
}
