//! The memory tier: reconciled logins in this process (docs/contract.md §4).
//!
//! A *login* is identified by (sub, sid, claimed organization set, removal authority, and the
//! profile fields the user row records). The first request of a login reconciles it; every
//! other request of that login is answered from memory and touches no database, until
//! `reconcile.max_age_secs` passes, the token expires, or an invalidation drops it.
//!
//! Invalidations (an admin write, a code redemption) bump `generation`; a reconciliation that
//! started before the bump does not cache its result, so a write can never be hidden by a
//! slower, older read. With Redis, invalidations reach every replica (see [`super::redis`]).
//!
//! Each entry is weighed in estimated bytes ([`weight`]) so `cache.max_bytes` bounds the tier.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::Expiry;
use sha2::{Digest, Sha256};
use time::Date;

use crate::auth::validate::Principal;
use crate::b2b::Facts;
use crate::entitlements::active::choose;
use crate::entitlements::exp_for;
use crate::entitlements::render::{RenderContext, render_for};
use crate::headers::B2b;
use crate::reconcile::plan::UnclaimedMemberships;
use crate::weigh::{CacheBudget, ENTRY_OVERHEAD, string};

/// A login's cache key: a hash of everything that makes it a new login.
pub type LoginKey = [u8; 32];

/// Computes the login key of a principal.
pub fn login_key(p: &Principal, unclaimed: UnclaimedMemberships) -> LoginKey {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(p.sub.as_bytes());
    field(p.sid.as_deref().unwrap_or("").as_bytes());
    field(&[u8::from(unclaimed == UnclaimedMemberships::Remove)]);
    for org in &p.organizations.orgs {
        field(org.alias.as_bytes());
        field(org.id.map(|id| id.into_bytes()).as_ref().map_or(&[][..], |b| &b[..]));
    }
    field(b"|");
    for v in [&p.email, &p.preferred_username, &p.name] {
        field(v.as_deref().unwrap_or("").as_bytes());
    }
    h.finalize().into()
}

/// A reconciled login.
pub struct LoginEntry {
    /// Whose login it is (a user invalidation drops every login of that `sub`).
    pub sub: String,
    /// The user's B2B facts as reconciled.
    pub facts: Arc<Facts>,
    /// Latest token expiry seen for this login; the entry never outlives it.
    token_exp: u64,
    /// The last rendered B2B facts (incl. the signed token), reused while still right.
    rendered: Mutex<Option<Rendered>>,
}

struct Rendered {
    b2b: Arc<B2b>,
    day: Date,
    /// Expiry of the entitlement token inside `b2b`.
    jws_exp: u64,
    /// The access token expiry it was signed for (the JWS never outlives it).
    token_exp: u64,
}

struct EntryExpiry {
    max_age: Duration,
}

impl Expiry<LoginKey, Arc<LoginEntry>> for EntryExpiry {
    fn expire_after_create(&self, _: &LoginKey, v: &Arc<LoginEntry>, _: Instant) -> Option<Duration> {
        let until_exp =
            Duration::from_secs(v.token_exp.saturating_sub(crate::auth::authenticator::unix_now()));
        Some(self.max_age.min(until_exp))
    }
}

/// The in-memory tier of reconciled logins.
pub struct Logins {
    cache: moka::sync::Cache<LoginKey, Arc<LoginEntry>>,
    generation: AtomicU64,
}

impl Logins {
    /// A cache of at most `max_entries` logins.
    pub fn new(max_entries: u64, max_age: Duration) -> Logins {
        Logins::bounded(CacheBudget::entries(max_entries), max_age)
    }

    /// A cache bounded in entries and in estimated bytes (see [`weight`]).
    pub fn bounded(budget: CacheBudget, max_age: Duration) -> Logins {
        Logins {
            cache: moka::sync::Cache::builder()
                .max_capacity(budget.capacity())
                .weigher(move |_: &LoginKey, entry: &Arc<LoginEntry>| {
                    budget.weight(weight(&entry.sub, &entry.facts))
                })
                .expire_after(EntryExpiry { max_age })
                .support_invalidation_closures()
                .build(),
            generation: AtomicU64::new(0),
        }
    }

    /// The invalidation generation; capture it before reading the store.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A reconciled login, if cached and not past its token's expiry.
    pub fn get(&self, key: &LoginKey) -> Option<Arc<LoginEntry>> {
        self.cache.get(key)
    }

    /// Caches a reconciliation's result unless an invalidation happened since `generation`.
    pub fn put(
        &self,
        key: LoginKey,
        sub: &str,
        facts: Facts,
        token_exp: u64,
        generation: u64,
    ) -> Arc<LoginEntry> {
        let entry = Arc::new(LoginEntry {
            sub: sub.to_owned(),
            facts: Arc::new(facts),
            token_exp,
            rendered: Mutex::new(None),
        });
        if self.generation() == generation {
            self.cache.insert(key, entry.clone());
        }
        entry
    }

    /// Drops every cached login (any organization or contract write).
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
    }

    /// Drops one user's cached logins (admin change to the user, code redemption).
    pub fn invalidate_user(&self, sub: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let sub = sub.to_owned();
        // Only fails when closures are not enabled, which `new` does.
        let _ = self.cache.invalidate_entries_if(move |_, v| v.sub == sub);
    }

    /// Number of cached logins (metrics, memory benchmark).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Estimated bytes held (the weighted size), after pending evictions ran.
    pub fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }
}

impl LoginEntry {
    /// The B2B facts for this request: contracts valid `today`, the active organization of
    /// this token, and a signed entitlement token, re-signed only when the day changed, half
    /// its lifetime passed, this access token expires sooner than the one it was signed for,
    /// or this token's active organization differs (the login key has no `scope`, so two
    /// tokens of one login may choose differently; see `super::active`).
    pub fn b2b(&self, principal: &Principal, ctx: &RenderContext<'_>, now: u64, today: Date) -> Arc<B2b> {
        let active = choose(&self.facts, &principal.scope, &principal.organizations.orgs).map(|a| a.key);
        let mut slot = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = slot.as_ref()
            && r.day == today
            && r.b2b.active_organization.as_deref() == active
            && r.token_exp <= principal.exp
            && r.jws_exp > now + ctx.ttl_secs / 2
            && r.jws_exp <= principal.exp
        {
            return r.b2b.clone();
        }
        let b2b = Arc::new(render_for(&self.facts, active, principal, ctx, now, today));
        let jws_exp = exp_for(now, ctx.ttl_secs, principal.exp);
        *slot = Some(Rendered { b2b: b2b.clone(), day: today, jws_exp, token_exp: principal.exp });
        b2b
    }
}

/// Estimated bytes of a user's B2B facts.
fn facts_weight(s: &Facts) -> usize {
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
    let aliases: usize =
        s.aliases.iter().map(|(a, k)| size_of::<(String, String)>() + string(a) + string(k)).sum();
    size_of::<Facts>() + orgs + contracts + aliases + s.selection.as_deref().map_or(0, string)
}

/// Estimated bytes of a cached login entry: its key and `sub`, the user's [`Facts`], and the
/// B2B header set rendered from them later (the keys again, and the signed entitlement token:
/// the facts and the profile as JSON, base64-encoded, plus header and signature).
pub fn weight(sub: &str, s: &Facts) -> usize {
    let facts = facts_weight(s);
    let keys: usize = s.organizations.iter().map(|o| size_of::<String>() + 2 * string(&o.key)).sum::<usize>()
        + s.contracts.iter().map(|c| size_of::<String>() + string(&c.contract.key)).sum::<usize>();
    let jws = (facts + 512) * 4 / 3 + 256;
    ENTRY_OVERHEAD + 32 + string(sub) + facts + keys + jws
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::org_claim::{ClaimedOrg, ClaimedOrgs};
    use crate::b2b::EntitledOrganization;
    use crate::entitlements::Signer;

    fn org(key: &str) -> EntitledOrganization {
        EntitledOrganization { key: key.into(), name: key.into(), keycloak_id: None, manager: false }
    }

    fn principal(scope: &str, claimed: &str) -> Principal {
        Principal {
            sub: "u".into(),
            sid: Some("s".into()),
            exp: crate::auth::authenticator::unix_now() + 3600,
            scope: scope.into(),
            email: None,
            email_verified: false,
            preferred_username: None,
            name: None,
            roles: vec![],
            organizations: ClaimedOrgs {
                orgs: vec![ClaimedOrg { alias: claimed.into(), id: None }],
                ignored: 0,
            },
            userinfo: Default::default(),
        }
    }

    #[test]
    fn two_tokens_of_one_login_that_choose_differently_each_get_their_own_headers() {
        let logins = Logins::new(10, Duration::from_secs(300));
        let facts = Facts {
            organizations: vec![org("acme"), org("globex")],
            aliases: vec![("acme".into(), "acme".into()), ("globex".into(), "globex".into())],
            selection: Some("globex".into()),
            ..Facts::default()
        };
        let fixed = principal("openid organization:acme", "acme");
        let picked = principal("openid organization", "acme");
        let entry = logins.put([7; 32], "u", facts, fixed.exp, logins.generation());
        let signer = Signer::ephemeral().unwrap();
        let ctx = RenderContext {
            signer: &signer,
            issuer: "i",
            audience: "a",
            ttl_secs: 300,
            scope_to_active_organization: false,
        };
        let (now, today) = (crate::auth::authenticator::unix_now(), time::OffsetDateTime::now_utc().date());
        let first = entry.b2b(&fixed, &ctx, now, today);
        assert_eq!(first.active_organization.as_deref(), Some("acme"), "the scope fixes it");
        let second = entry.b2b(&picked, &ctx, now, today);
        assert_eq!(second.active_organization.as_deref(), Some("globex"), "the selection beats the pick");
        let again = entry.b2b(&picked, &ctx, now + 1, today);
        assert!(Arc::ptr_eq(&second, &again), "the same choice reuses the rendered set");
    }

    #[test]
    fn the_login_cache_stays_within_its_byte_budget() {
        let budget = CacheBudget { max_entries: 200_000, max_bytes: 1024 * 1024 };
        let logins = Logins::bounded(budget, Duration::from_secs(300));
        let exp = crate::auth::authenticator::unix_now() + 3600;
        for i in 0..1000usize {
            let organizations = (0..20)
                .map(|o| EntitledOrganization {
                    key: format!("organization-{o:04}-{}", "k".repeat(100)),
                    name: "n".repeat(200),
                    keycloak_id: None,
                    manager: false,
                })
                .collect();
            let facts = Facts { organizations, ..Facts::default() };
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            logins.put(key, &format!("user-{i}"), facts, exp, logins.generation());
        }
        assert!(logins.weighted_size() <= budget.max_bytes, "{} bytes", logins.weighted_size());
        assert!(logins.len() < 1000, "nothing was evicted");
    }
}
