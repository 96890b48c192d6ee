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
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use moka::Expiry;
use sha2::{Digest, Sha256};
use time::Date;

use crate::auth::validate::Principal;
use crate::b2b::Facts;
use crate::entitlements::active::choose;
use crate::entitlements::exp_for;
use crate::entitlements::render::{RenderContext, render_for};
use crate::headers::{self, B2b, Rendered as RenderedHeaders, Status};
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
    /// The last rendered B2B facts (incl. the signed token), reused while still right, and
    /// the owned header set last rendered from them.
    rendered: Mutex<Option<Rendered>>,
}

struct Rendered {
    b2b: Arc<B2b>,
    day: Date,
    /// Expiry of the entitlement token inside `b2b`.
    jws_exp: u64,
    /// The access token expiry it was signed for (the JWS never outlives it).
    token_exp: u64,
    /// The owned header set rendered from `b2b` for one token, if rendered yet.
    headers: Option<HeadersFor>,
}

/// The owned header set as rendered for one token's principal (its roles, profile and
/// `X-Userinfo` claims are the token's own, not the login's).
struct HeadersFor {
    /// The token's principal, as the token cache holds it: the same token is the same
    /// `Arc`. Weak, so a principal the token cache dropped is not kept alive here; the weak
    /// pointer still holds its allocation, so no other principal can take its address.
    principal: Weak<Principal>,
    /// `headers.max_userinfo_bytes` it was rendered with (`None`: `X-Userinfo` off).
    max_userinfo: Option<usize>,
    headers: Arc<RenderedHeaders>,
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
        let mut slot = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        current(&mut slot, &self.facts, principal, ctx, now, today).b2b.clone()
    }

    /// [`LoginEntry::b2b`] and the owned header set rendered from it for this token
    /// (`max_userinfo` as [`headers::render`] takes it). The header set is rendered once per
    /// token and B2B facts: the next request with the same token (the token cache's same
    /// principal) clones it, until the facts are rendered anew or another token of the login
    /// comes.
    pub fn admit(
        &self,
        principal: &Arc<Principal>,
        ctx: &RenderContext<'_>,
        now: u64,
        today: Date,
        max_userinfo: Option<usize>,
    ) -> (Arc<B2b>, Arc<RenderedHeaders>) {
        let mut slot = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        let r = current(&mut slot, &self.facts, principal, ctx, now, today);
        if let Some(h) = &r.headers
            && std::ptr::eq(h.principal.as_ptr(), Arc::as_ptr(principal))
            && h.max_userinfo == max_userinfo
        {
            return (r.b2b.clone(), h.headers.clone());
        }
        let headers =
            Arc::new(headers::render(Status::Authenticated, Some((principal, &r.b2b)), max_userinfo));
        r.headers =
            Some(HeadersFor { principal: Arc::downgrade(principal), max_userinfo, headers: headers.clone() });
        (r.b2b.clone(), headers)
    }
}

/// The rendering in `slot` if still right for this request (see [`LoginEntry::b2b`]), else a
/// new one put there.
fn current<'a>(
    slot: &'a mut Option<Rendered>,
    facts: &Facts,
    principal: &Principal,
    ctx: &RenderContext<'_>,
    now: u64,
    today: Date,
) -> &'a mut Rendered {
    let active = choose(facts, &principal.scope, &principal.organizations.orgs).map(|a| a.key);
    let still_right = slot.as_ref().is_some_and(|r| {
        r.day == today
            && r.b2b.active_organization.as_deref() == active
            && r.token_exp <= principal.exp
            && r.jws_exp > now + ctx.ttl_secs / 2
            && r.jws_exp <= principal.exp
    });
    if !still_right {
        *slot = None;
    }
    slot.get_or_insert_with(|| {
        let b2b = Arc::new(render_for(facts, active, principal, ctx, now, today));
        let jws_exp = exp_for(now, ctx.ttl_secs, principal.exp);
        Rendered { b2b, day: today, jws_exp, token_exp: principal.exp, headers: None }
    })
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

/// Estimated bytes of a cached login entry: its key and `sub`, the user's [`Facts`], the
/// B2B facts rendered from them later (the keys again, and the signed entitlement token: the
/// facts and the profile as JSON, base64-encoded, plus header and signature), and the owned
/// header set rendered for one token ([`HEADER_SET`]: the token's bytes are shared, the lists
/// of keys are written again, `X-Userinfo` is the token's own).
pub fn weight(sub: &str, s: &Facts) -> usize {
    let facts = facts_weight(s);
    let keys: usize = s.organizations.iter().map(|o| size_of::<String>() + 2 * string(&o.key)).sum::<usize>()
        + s.contracts.iter().map(|c| size_of::<String>() + string(&c.contract.key)).sum::<usize>();
    let jws = (facts + 512) * 4 / 3 + 256;
    ENTRY_OVERHEAD + 32 + string(sub) + facts + 2 * keys + jws + HEADER_SET
}

/// Estimated bytes of a rendered owned header set beyond the lists of keys: twelve names and
/// values and an `X-Userinfo` of a usual Keycloak profile (the weigher does not see the
/// token's claims; `headers.max_userinfo_bytes` bounds a large one).
const HEADER_SET: usize =
    size_of::<RenderedHeaders>() + 12 * size_of::<(axum::http::HeaderName, axum::http::HeaderValue)>() + 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::org_claim::{ClaimedOrg, ClaimedOrgs};
    use crate::b2b::EntitledOrganization;
    use crate::entitlements::Signer;
    use axum::http::HeaderName;

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

    /// The value of one owned header in a rendered set.
    fn value<'a>(rendered: &'a RenderedHeaders, name: &HeaderName) -> &'a str {
        let (_, v) =
            rendered.headers.iter().find(|(n, _)| n == name).expect("every owned header is rendered");
        v.to_str().unwrap()
    }

    #[test]
    fn a_tokens_header_set_is_rendered_once_and_follows_its_token_and_its_facts() {
        use crate::headers::{ENTITLEMENTS, ROLES, USERINFO};
        let logins = Logins::new(10, Duration::from_secs(300));
        let facts = Facts {
            organizations: vec![org("acme")],
            aliases: vec![("acme".into(), "acme".into())],
            ..Facts::default()
        };
        let token = Arc::new(Principal { roles: vec!["learner".into()], ..principal("openid", "acme") });
        let entry = logins.put([8; 32], "u", facts, token.exp, logins.generation());
        let signer = Signer::ephemeral().unwrap();
        let ctx = RenderContext {
            signer: &signer,
            issuer: "i",
            audience: "a",
            ttl_secs: 300,
            scope_to_active_organization: false,
        };
        let (now, today) = (crate::auth::authenticator::unix_now(), time::OffsetDateTime::now_utc().date());
        let max = Some(4096);

        let (b2b, first) = entry.admit(&token, &ctx, now, today, max);
        let expected = headers::render(Status::Authenticated, Some((&token, &b2b)), max);
        assert_eq!(*first, expected, "what rendering the facts for this token gives");
        let (again_b2b, again) = entry.admit(&token, &ctx, now + 1, today, max);
        assert!(
            Arc::ptr_eq(&first, &again) && Arc::ptr_eq(&b2b, &again_b2b),
            "the same token: rendered once"
        );
        assert_eq!(value(&first, &ENTITLEMENTS).as_bytes(), &b2b.entitlements[..]);

        // A refreshed token of the same login is another principal with its own roles.
        let refreshed = Arc::new(Principal { roles: vec!["teacher".into()], ..principal("openid", "acme") });
        let (_, other) = entry.admit(&refreshed, &ctx, now + 1, today, max);
        assert_eq!(value(&other, &ROLES), "teacher");
        // A principal the token cache dropped never lends its header set to a newcomer, even
        // one the allocator would put at the same address.
        drop(token);
        let newcomer = Arc::new(Principal { roles: vec!["admin".into()], ..principal("openid", "acme") });
        let (_, theirs) = entry.admit(&newcomer, &ctx, now + 1, today, max);
        assert_eq!(value(&theirs, &ROLES), "admin");
        let (_, without) = entry.admit(&newcomer, &ctx, now + 1, today, None);
        assert_eq!(value(&without, &USERINFO), "", "X-Userinfo off: rendered anew");

        // The next day the facts (and their entitlement token) are rendered anew, and the
        // header set with them.
        let tomorrow = today.next_day().unwrap();
        let (next_b2b, next) = entry.admit(&newcomer, &ctx, now + 2, tomorrow, None);
        assert!(!Arc::ptr_eq(&b2b, &next_b2b) && !Arc::ptr_eq(&without, &next));
        assert_eq!(value(&next, &ENTITLEMENTS).as_bytes(), &next_b2b.entitlements[..]);
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
