//! Issue "B2B core": what a login does to a user's organizations and contracts (docs/contract.md §3, §4),
//! the B2B headers it earns (§5), and what the store holds afterwards.
//!
//! Every case runs twice, on SQLite and on PostgreSQL (the `on_sqlite` / `on_postgres` modules
//! at the bottom). Organizations, contracts and pre-existing memberships are seeded through the
//! store directly, on the app's own database; logins go through forward-auth as APISIX sends
//! them. Every login carries a fresh `sid`, so the sidecar sees a new login and reconciles
//! instead of answering from its login cache — except where a test reuses a token on purpose.
//!
//! The world of every case: organizations `alpha`, `india` and `romeo` linked to Keycloak (id
//! and alias), `whiskey` local (neither), and users that start with nothing.

use std::sync::Arc;
use std::time::Duration;

use AttachmentSource::{Admin as ByAdmin, Code as ByCode, Sso};
use MembershipSource::{Admin, Claim, Code};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use identity_sidecar::auth::org_claim::ClaimedOrgs;
use identity_sidecar::auth::validate::Principal;
use identity_sidecar::entitlements::Signer;
use identity_sidecar::entitlements::{Logins, RenderContext, login_key};
use identity_sidecar::reconcile::apply::current_facts;
use identity_sidecar::reconcile::plan::UnclaimedMemberships;
use identity_sidecar::store::{
    Attachment, AttachmentSource, AuditEvent, AuditQuery, Contract, Membership, MembershipSource,
    MembershipType, NewContract, NewOrganization, Organization, Store, Tx, attachments, audit, contracts,
    memberships, organizations, users,
};
use serde_json::{Value, json};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::helpers::records::contract;
use crate::helpers::{Db, Fixture, metric, on_both_databases, set};

/// Keycloak's "all my organizations" scope: the claim is complete, absence means removal.
const FULL: &str = "openid email profile organization:*";
/// The plain `organization` scope: the claim may be partial, so it only adds.
const PARTIAL: &str = "openid email profile organization";

/// One running sidecar on a fresh database, with the four organizations seeded.
struct World {
    /// A second pool on the app's database, for seeding and reading rows.
    store: Store,
    alpha: Organization,
    india: Organization,
    romeo: Organization,
    whiskey: Organization,
    /// The app, its Keycloak and its database; declared last so it drops last: the database
    /// outlives the pool above.
    fixture: Fixture,
}

impl std::ops::Deref for World {
    type Target = Fixture;

    fn deref(&self) -> &Fixture {
        &self.fixture
    }
}

/// What a forward-auth answer told the app, with every representation cross-checked.
#[derive(Debug)]
struct Facts {
    status: String,
    organizations: Vec<String>,
    managed: Vec<String>,
    contracts: Vec<String>,
    /// The entitlement token's payload.
    entitlements: Value,
    /// Each owned header with its size as the upstream receives it (docs/contract.md §5): name,
    /// `: `, value and CRLF.
    owned: Vec<(String, usize)>,
}

/// A fault injected into the app's database.
enum Fault {
    /// SQLite: a transaction holding the write lock, so every write transaction of the sidecar
    /// waits out its busy timeout and fails.
    SqliteWriteLock(Tx),
    /// PostgreSQL: the database refuses connections and its open ones were terminated.
    PostgresClosed,
}

fn today() -> Date {
    OffsetDateTime::now_utc().date()
}

const DAY: time::Duration = time::Duration::days(1);

impl World {
    async fn new(db: Db) -> World {
        World::with_env(db, &[]).await
    }

    async fn with_env(db: Db, extra: &[(&str, &str)]) -> World {
        let fixture = Fixture::start_with(db, |_, env| {
            for (key, value) in extra {
                set(env, key, *value);
            }
        })
        .await;
        let store = fixture.app.store().await;
        let mut conn = store.conn().await.unwrap();
        let mut org = async |key: &str, linked: bool| {
            let new = NewOrganization {
                key: key.into(),
                name: format!("{key} Inc"),
                description: String::new(),
                keycloak_id: linked.then(Uuid::new_v4),
                keycloak_alias: linked.then(|| key.to_owned()),
                email_domains: Vec::new(),
            };
            organizations::insert(&mut conn, &new).await.unwrap()
        };
        let alpha = org("alpha", true).await;
        let india = org("india", true).await;
        let romeo = org("romeo", true).await;
        let whiskey = org("whiskey", false).await;
        drop(conn);
        World { store, alpha, india, romeo, whiskey, fixture }
    }

    // --- seeding, through the store ---

    async fn add_org(&self, new: NewOrganization) -> Organization {
        organizations::insert(&mut self.store.conn().await.unwrap(), &new).await.unwrap()
    }

    async fn add_contract(&self, new: NewContract) -> Contract {
        contracts::insert(&mut self.store.conn().await.unwrap(), &new).await.unwrap()
    }

    async fn update_contract(&self, new: NewContract) -> Contract {
        contracts::update(&mut self.store.conn().await.unwrap(), &new).await.unwrap()
    }

    async fn seed_membership(&self, sub: &str, org: &Organization, source: MembershipSource, keep: bool) {
        let mut conn = self.store.conn().await.unwrap();
        users::ensure(&mut conn, sub).await.unwrap();
        assert!(
            memberships::add(
                &mut conn,
                sub,
                org.id,
                source,
                memberships::Flags { keep_until_seen: keep, manager: false }
            )
            .await
            .unwrap()
        );
    }

    async fn seed_attachment(&self, sub: &str, contract: &Contract, source: AttachmentSource) {
        let mut tx = self.store.begin().await.unwrap();
        users::ensure(&mut tx, sub).await.unwrap();
        assert!(attachments::force_attach(&mut tx, sub, contract.id, source).await.unwrap());
        tx.commit().await.unwrap();
    }

    // --- reading rows ---

    async fn organization(&self, key: &str) -> Organization {
        organizations::get(&mut self.store.conn().await.unwrap(), key).await.unwrap()
    }

    async fn seats_used(&self, key: &str) -> i64 {
        contracts::get(&mut self.store.conn().await.unwrap(), key).await.unwrap().seats_used
    }

    async fn membership_rows(&self, sub: &str) -> Vec<Membership> {
        memberships::list_for_user(&mut self.store.conn().await.unwrap(), sub).await.unwrap()
    }

    /// (organization, keep_until_seen, source) of each membership, in key order.
    async fn memberships(&self, sub: &str) -> Vec<(String, bool, MembershipSource)> {
        let rows = self.membership_rows(sub).await;
        rows.into_iter().map(|m| (m.organization, m.keep_until_seen, m.source)).collect()
    }

    async fn attachment_rows(&self, sub: &str) -> Vec<Attachment> {
        attachments::list_for_user(&mut self.store.conn().await.unwrap(), sub).await.unwrap()
    }

    /// (contract, source) of each attachment, in key order.
    async fn attachments(&self, sub: &str) -> Vec<(String, AttachmentSource)> {
        self.attachment_rows(sub).await.into_iter().map(|a| (a.contract, a.source)).collect()
    }

    async fn audit_events(&self, sub: &str) -> Vec<AuditEvent> {
        let query = AuditQuery { sub: Some(sub.into()), limit: 1000, ..AuditQuery::default() };
        let mut events = audit::query(&mut self.store.conn().await.unwrap(), &query).await.unwrap();
        events.reverse();
        events
    }

    /// The user's audit trail, oldest first, as `action organization-or-contract`.
    async fn audit(&self, sub: &str) -> Vec<String> {
        self.audit_events(sub)
            .await
            .into_iter()
            .map(|e| format!("{} {}", e.action, e.organization.or(e.contract).unwrap_or_default()))
            .collect()
    }

    // --- logins, through forward-auth ---

    /// A token of `sub` with a fresh `sid`: a new login for the sidecar.
    fn token(&self, sub: &str, scope: &str, claim: Option<Value>) -> String {
        let sid = Uuid::new_v4().to_string();
        let token = self.kc.token().sub(sub).scope(scope).sid(&sid);
        match claim {
            Some(claim) => token.organization(claim).sign(),
            None => token.sign(),
        }
    }

    /// A new login; it must be answered `authenticated`.
    async fn login(&self, sub: &str, scope: &str, claim: Option<Value>) -> Facts {
        let facts = self.request(&self.token(sub, scope, claim)).await;
        assert_eq!(facts.status, "authenticated");
        facts
    }

    async fn send(&self, token: &str) -> reqwest::Response {
        self.app.forward_auth("GET", "/").bearer_auth(token).send().await.expect("sidecar answers")
    }

    /// A forward-auth call that must answer 200.
    async fn request(&self, token: &str) -> Facts {
        let res = self.send(token).await;
        let status = res.status();
        if status != 200 {
            panic!("forward-auth answered {status}: {}", res.text().await.unwrap_or_default());
        }
        Facts::read(&res)
    }

    // --- faults ---

    async fn break_store(&self) -> Fault {
        match &self.db {
            None => Fault::SqliteWriteLock(self.store.begin().await.unwrap()),
            Some(db) => {
                db.close().await;
                Fault::PostgresClosed
            }
        }
    }

    async fn mend_store(&self, fault: Fault) {
        match (fault, &self.db) {
            (Fault::SqliteWriteLock(tx), _) => tx.rollback().await.unwrap(),
            (Fault::PostgresClosed, Some(db)) => db.reopen().await,
            (Fault::PostgresClosed, None) => unreachable!("only a PostgreSQL world closes its database"),
        }
    }
}

impl Facts {
    /// Reads the owned headers and checks that the lists, the entitlement token and the
    /// `b2b` object of `X-Userinfo` all say the same.
    fn read(res: &reqwest::Response) -> Facts {
        let header = |name: &str| {
            let value = res.headers().get(name).unwrap_or_else(|| panic!("no {name}"));
            value.to_str().unwrap().to_owned()
        };
        let list = |name: &str| -> Vec<String> {
            let value = header(name);
            if value.is_empty() { Vec::new() } else { value.split(',').map(str::to_owned).collect() }
        };
        let organizations = list("x-identity-organizations");
        let managed = list("x-identity-managed-organizations");
        let contracts = list("x-identity-contracts");

        let jws = header("x-identity-entitlements");
        let payload = jws.split('.').nth(1).expect("a compact JWS");
        let entitlements: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        let keys = |items: &Value, only_managed: bool| -> Vec<String> {
            let items = items.as_array().expect("a list");
            let items = items.iter().filter(|o| !only_managed || o["manager"] == json!(true));
            items.map(|o| o["key"].as_str().unwrap().to_owned()).collect()
        };
        assert_eq!(keys(&entitlements["organizations"], false), organizations, "token vs header");
        assert_eq!(keys(&entitlements["organizations"], true), managed, "token vs header");
        assert_eq!(keys(&entitlements["contracts"], false), contracts, "token vs header");

        let userinfo: Value =
            serde_json::from_slice(&STANDARD.decode(header("x-userinfo")).unwrap()).unwrap();
        let active = header("x-identity-active-organization");
        let active = if active.is_empty() { Value::Null } else { json!(active) };
        assert_eq!(entitlements.get("active_organization").cloned().unwrap_or(Value::Null), active, "token");
        let b2b = json!({"organizations": organizations, "managed_organizations": managed,
                         "contracts": contracts, "active_organization": active});
        assert_eq!(userinfo["b2b"], b2b, "x-userinfo vs headers");

        let owned: Vec<(String, usize)> = res
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("x-identity-") || name.as_str() == "x-userinfo")
            .map(|(name, value)| (name.as_str().to_owned(), name.as_str().len() + 2 + value.len() + 2))
            .collect();
        Facts { status: header("x-identity-status"), organizations, managed, contracts, entitlements, owned }
    }
}

fn membership(
    org: &str,
    keep_until_seen: bool,
    source: MembershipSource,
) -> (String, bool, MembershipSource) {
    (org.to_owned(), keep_until_seen, source)
}

fn attached(contract: &str, source: AttachmentSource) -> (String, AttachmentSource) {
    (contract.to_owned(), source)
}

// ------------------------------------------------------------------------------------------
// The cases. Each takes the database kind; the wrappers at the bottom run it on both.

/// The issue's table, step by step, on one user.
async fn logins_follow_the_issue_table_step_by_step(db: Db) {
    let w = World::new(db).await;
    let u = "steps";
    let a = || Some(json!(["alpha"]));
    let a_r = || Some(json!(["alpha", "romeo"]));

    // 1. {} + claim [A] → {A}: one organization added.
    let f = w.login(u, FULL, a()).await;
    assert_eq!(f.organizations, ["alpha"]);
    assert_eq!(w.memberships(u).await, [membership("alpha", false, Claim)]);
    assert_eq!(w.audit(u).await, ["membership.add alpha"]);

    // 2. {A} + R (flag false), claim [A] → {A}: R removed.
    w.seed_membership(u, &w.romeo, Claim, false).await;
    let f = w.login(u, FULL, a()).await;
    assert_eq!(f.organizations, ["alpha"]);
    assert_eq!(w.memberships(u).await, [membership("alpha", false, Claim)]);
    assert_eq!(w.audit(u).await[1..], ["membership.remove romeo"]);

    // 3. {A} + R (flag true), claim [A] → {A, R}: R kept, still flagged.
    w.seed_membership(u, &w.romeo, Code, true).await;
    let f = w.login(u, FULL, a()).await;
    assert_eq!(f.organizations, ["alpha", "romeo"]);
    assert_eq!(w.memberships(u).await, [membership("alpha", false, Claim), membership("romeo", true, Code)]);
    assert_eq!(w.audit(u).await.len(), 2, "nothing changed");

    // 4. {A, R (flag true)}, claim [A, R] → {A, R}: R's flag cleared, its source kept.
    let f = w.login(u, FULL, a_r()).await;
    assert_eq!(f.organizations, ["alpha", "romeo"]);
    assert_eq!(w.memberships(u).await, [membership("alpha", false, Claim), membership("romeo", false, Code)]);
    assert_eq!(w.audit(u).await[2..], ["membership.unflag romeo"]);

    // 5. {A, R} + W, claim [A, R] → {A, R, W}: the local W untouched.
    w.seed_membership(u, &w.whiskey, Admin, false).await;
    let whiskey_row = |rows: Vec<Membership>| rows.into_iter().find(|m| m.organization == "whiskey");
    let seeded = whiskey_row(w.membership_rows(u).await).unwrap();
    let f = w.login(u, FULL, a_r()).await;
    assert_eq!(f.organizations, ["alpha", "romeo", "whiskey"]);
    assert_eq!(whiskey_row(w.membership_rows(u).await), Some(seeded.clone()));
    assert_eq!(w.audit(u).await.len(), 3, "nothing changed");

    // 6. {A, R (flag cleared), W}, claim [A] → {A, W}: now R goes; W still untouched.
    let f = w.login(u, FULL, a()).await;
    assert_eq!(f.organizations, ["alpha", "whiskey"]);
    assert_eq!(
        w.memberships(u).await,
        [membership("alpha", false, Claim), membership("whiskey", false, Admin)]
    );
    assert_eq!(whiskey_row(w.membership_rows(u).await), Some(seeded));
    assert_eq!(
        w.audit(u).await,
        [
            "membership.add alpha",
            "membership.remove romeo",
            "membership.unflag romeo",
            "membership.remove romeo"
        ]
    );
}

/// docs/contract.md §3 matching: id first, whatever the alias; alias otherwise; an alias-only organization
/// learns its id; an alias held by an organization with another id does not match; unknown
/// entries are ignored and counted, never created.
async fn claims_match_by_id_then_by_alias_and_unknown_entries_create_nothing(db: Db) {
    let w = World::new(db).await;
    let alpha_id = w.alpha.keycloak_id.unwrap();

    // By id, although Keycloak now calls the organization something else.
    let f = w.login("by-id", FULL, Some(json!({"alpha-renamed": {"id": alpha_id}}))).await;
    assert_eq!(f.organizations, ["alpha"]);
    assert_eq!(f.entitlements["organizations"][0]["keycloak_id"], json!(alpha_id));
    assert_eq!(w.memberships("by-id").await, [membership("alpha", false, Claim)]);

    // By alias, in the mapper's default list shape and in the single-string shape.
    let f = w.login("by-alias", FULL, Some(json!(["alpha", "india"]))).await;
    assert_eq!(f.organizations, ["alpha", "india"]);
    let f = w.login("by-string", FULL, Some(json!("romeo"))).await;
    assert_eq!(f.organizations, ["romeo"]);

    // An id-bearing entry naming an alias-only organization matches it, which learns the id.
    let lima = w
        .add_org(NewOrganization {
            key: "lima".into(),
            name: "Lima".into(),
            description: String::new(),
            keycloak_id: None,
            keycloak_alias: Some("lima-kc".into()),
            email_domains: Vec::new(),
        })
        .await;
    let lima_id = Uuid::new_v4();
    let f = w.login("learner", FULL, Some(json!({"lima-kc": {"id": lima_id, "region": ["eu"]}}))).await;
    assert_eq!(f.organizations, ["lima"]);
    assert_eq!(f.entitlements["organizations"][0]["keycloak_id"], json!(lima_id));
    let learned = w.organization("lima").await;
    assert_eq!((learned.id, learned.keycloak_id), (lima.id, Some(lima_id)));
    assert_eq!(w.audit("learner").await, ["organization.learn_keycloak_id lima", "membership.add lima"]);

    // An alias whose organization holds a different id does not match (and teaches nothing).
    let f = w.login("mismatch", FULL, Some(json!({"alpha": {"id": Uuid::new_v4()}}))).await;
    assert!(f.organizations.is_empty());
    assert!(w.memberships("mismatch").await.is_empty());
    assert_eq!(w.organization("alpha").await.keycloak_id, Some(alpha_id));

    // Unknown ids and aliases are ignored: no organization, no membership, a metric.
    let count = async || organizations::count(&mut w.store.conn().await.unwrap()).await.unwrap();
    let before = count().await;
    let claim = json!({"ghost": {"id": Uuid::new_v4()}, "phantom": {}});
    let f = w.login("stranger", FULL, Some(claim)).await;
    assert!(f.organizations.is_empty());
    assert_eq!(count().await, before);
    assert!(w.memberships("stranger").await.is_empty());
    assert!(w.audit("stranger").await.is_empty());
    assert!(metric(&w.app.metrics().await, "identity_sidecar_unknown_organizations_total") >= 2.0);
}

/// docs/contract.md §3 removal authority: only `organization:*` makes an absent or partial claim remove.
async fn only_the_full_membership_scope_removes_organizations(db: Db) {
    let w = World::new(db).await;
    let u = "scoped";
    w.login(u, FULL, Some(json!(["alpha", "romeo"]))).await;
    w.seed_membership(u, &w.whiskey, Admin, false).await;

    // Without `organization:*`, an absent claim removes nothing...
    let f = w.login(u, PARTIAL, None).await;
    assert_eq!(f.organizations, ["alpha", "romeo", "whiskey"]);
    // ... and a single-organization claim only adds.
    let f = w.login(u, PARTIAL, Some(json!(["india"]))).await;
    assert_eq!(f.organizations, ["alpha", "india", "romeo", "whiskey"]);
    assert_eq!(w.memberships(u).await.len(), 4);

    // With it, an absent claim means "no organizations": every linked membership goes, the
    // local one stays.
    let f = w.login(u, FULL, None).await;
    assert_eq!(f.organizations, ["whiskey"]);
    assert_eq!(w.memberships(u).await, [membership("whiskey", false, Admin)]);
}

/// docs/contract.md §4 step 4: only `auto`/`managed` contracts valid today are attached; contracts outside
/// their dates never reach `X-Identity-Contracts`, whoever attached them.
async fn only_valid_sso_contracts_are_attached_and_shown(db: Db) {
    let w = World::new(db).await;
    let today = today();
    let u = "contracts";
    w.add_contract(contract("a-auto", "alpha", MembershipType::Auto)).await;
    w.add_contract(NewContract { active: false, ..contract("a-off", "alpha", MembershipType::Managed) })
        .await;
    w.add_contract(contract("a-code", "alpha", MembershipType::Code)).await;
    let future = w
        .add_contract(NewContract {
            starts_on: Some(today + DAY),
            ..contract("a-future", "alpha", MembershipType::Auto)
        })
        .await;
    let ended = w
        .add_contract(NewContract {
            ends_on: Some(today - DAY),
            ..contract("a-ended", "alpha", MembershipType::Managed)
        })
        .await;
    let last_day = w
        .add_contract(NewContract {
            starts_on: Some(today - DAY * 30),
            ends_on: Some(today),
            ..contract("a-last-day", "alpha", MembershipType::Managed)
        })
        .await;

    let f = w.login(u, FULL, Some(json!(["alpha"]))).await;
    assert_eq!(f.contracts, ["a-auto", "a-last-day"]);
    assert_eq!(w.attachments(u).await, [attached("a-auto", Sso), attached("a-last-day", Sso)]);
    let (starts, ends) = (last_day.starts_on.unwrap().to_string(), today.to_string());
    assert_eq!(
        f.entitlements["contracts"],
        json!([
            // Unbounded dates are null members, left out of the token (docs/contract.md §5 v2).
            {"key": "a-auto", "organization": "alpha", "membership_type": "auto"},
            {"key": "a-last-day", "organization": "alpha", "membership_type": "managed",
             "starts_on": starts, "ends_on": ends},
        ])
    );

    // Attached some other way, a contract outside its dates is held but not shown.
    w.seed_attachment(u, &future, ByAdmin).await;
    w.seed_attachment(u, &ended, ByAdmin).await;
    let f = w.login(u, FULL, Some(json!(["alpha"]))).await;
    assert_eq!(f.contracts, ["a-auto", "a-last-day"]);
    assert_eq!(w.attachments(u).await.len(), 4);

    // A contract attached while valid whose end passes: the next login no longer shows it,
    // and nothing detaches it (an ended contract is history, not a removal).
    w.update_contract(NewContract { ends_on: Some(today - DAY), ..NewContract::from(&last_day) }).await;
    let f = w.login(u, FULL, Some(json!(["alpha"]))).await;
    assert_eq!(f.contracts, ["a-auto"]);
    assert!(w.attachments(u).await.contains(&attached("a-last-day", Sso)));
}

/// docs/contract.md §4: "contract validity is judged when the headers are served". A cached login
/// re-renders its headers when the UTC day changes; the HTTP tests cannot move the clock, so
/// this one renders the login entry — built from the rows a real login wrote — for today and
/// for tomorrow, through the same `LoginEntry::b2b` the request path calls.
async fn a_cached_login_drops_a_contract_the_day_after_it_ends(db: Db) {
    let w = World::new(db).await;
    let today = today();
    let u = "midnight";
    w.add_contract(contract("a-auto", "alpha", MembershipType::Auto)).await;
    w.add_contract(NewContract {
        ends_on: Some(today),
        ..contract("a-ends", "alpha", MembershipType::Managed)
    })
    .await;
    let token = w.token(u, FULL, Some(json!(["alpha"])));
    assert_eq!(w.request(&token).await.contracts, ["a-auto", "a-ends"]);
    assert_eq!(w.request(&token).await.contracts, ["a-auto", "a-ends"], "cached");

    let facts = current_facts(&w.store, u).await.unwrap();
    let now = OffsetDateTime::now_utc().unix_timestamp() as u64;
    let principal = Principal {
        sub: u.into(),
        sid: Some("s".into()),
        exp: now + 300,
        scope: FULL.into(),
        email: None,
        email_verified: false,
        preferred_username: None,
        name: None,
        roles: Vec::new(),
        organizations: ClaimedOrgs::default(),
        userinfo: serde_json::Map::new(),
    };
    let logins = Logins::new(10, Duration::from_secs(300));
    let entry = logins.put(
        login_key(&principal, UnclaimedMemberships::Remove),
        u,
        facts,
        principal.exp,
        logins.generation(),
    );
    let signer = Signer::ephemeral().unwrap();
    let ctx = RenderContext {
        signer: &signer,
        issuer: "identity-sidecar",
        audience: "apps",
        ttl_secs: 300,
        scope_to_active_organization: false,
    };

    let first = entry.b2b(&principal, &ctx, now, today);
    assert_eq!(first.contracts, ["a-auto", "a-ends"]);
    assert!(Arc::ptr_eq(&first, &entry.b2b(&principal, &ctx, now + 1, today)), "same day: reused");
    let tomorrow = entry.b2b(&principal, &ctx, now + 2, today + DAY);
    assert_eq!(tomorrow.contracts, ["a-auto"]);
    let payload = tomorrow.entitlement_token().split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["contracts"].as_array().unwrap().len(), 1, "the token follows the header");
}

/// docs/contract.md §4 step 4: a full contract is skipped, audited and counted; the rest is attached.
async fn a_full_contract_is_skipped_with_an_audit_event_and_a_metric(db: Db) {
    let w = World::new(db).await;
    let seat = w
        .add_contract(NewContract {
            max_learners: Some(1),
            ..contract("a-seat", "alpha", MembershipType::Managed)
        })
        .await;
    w.add_contract(contract("a-auto", "alpha", MembershipType::Auto)).await;
    w.seed_attachment("first-comer", &seat, Sso).await;

    let f = w.login("late", FULL, Some(json!(["alpha"]))).await;
    assert_eq!(f.contracts, ["a-auto"]);
    assert_eq!(w.attachments("late").await, [attached("a-auto", Sso)]);
    assert_eq!(w.seats_used("a-seat").await, 1);
    let events = w.audit_events("late").await;
    let skipped = events.iter().find(|e| e.action == "attachment.skipped_full").expect("a skip event");
    assert_eq!((skipped.contract.as_deref(), skipped.actor.as_str()), (Some("a-seat"), "login"));
    assert!(metric(&w.app.metrics().await, "identity_sidecar_seat_limit_skips_total") > 0.0);
}

/// docs/contract.md §4 step 3: removing an organization detaches its `auto` and `managed` contracts (seats
/// freed), keeps what a code attached.
async fn a_removed_organization_takes_its_sso_contracts_and_leaves_code_attachments(db: Db) {
    let w = World::new(db).await;
    let u = "leaver";
    w.add_contract(contract("a-auto", "alpha", MembershipType::Auto)).await;
    w.add_contract(contract("a-managed", "alpha", MembershipType::Managed)).await;
    let code = w.add_contract(contract("a-code", "alpha", MembershipType::Code)).await;
    w.add_contract(contract("i-auto", "india", MembershipType::Auto)).await;

    let f = w.login(u, FULL, Some(json!(["alpha", "india"]))).await;
    assert_eq!(f.contracts, ["a-auto", "a-managed", "i-auto"]);
    w.seed_attachment(u, &code, ByCode).await;

    let f = w.login(u, FULL, Some(json!(["india"]))).await;
    assert_eq!(f.organizations, ["india"]);
    assert_eq!(f.contracts, ["a-code", "i-auto"]);
    assert_eq!(w.memberships(u).await, [membership("india", false, Claim)]);
    assert_eq!(w.attachments(u).await, [attached("a-code", ByCode), attached("i-auto", Sso)]);
    assert_eq!((w.seats_used("a-auto").await, w.seats_used("a-managed").await), (0, 0));
    let trail = w.audit(u).await;
    for change in ["attachment.remove a-auto", "attachment.remove a-managed", "membership.remove alpha"] {
        assert!(trail.contains(&change.to_owned()), "{change} in {trail:?}");
    }
}

/// docs/contract.md §4 step 4 for every membership the user has: a contract created after the user joined
/// is attached at their next login, for local organizations too.
async fn a_contract_created_later_is_attached_at_the_next_login(db: Db) {
    let w = World::new(db).await;
    let u = "member";
    w.add_contract(contract("a-old", "alpha", MembershipType::Auto)).await;
    w.seed_membership(u, &w.whiskey, Admin, true).await;
    assert_eq!(w.login(u, FULL, Some(json!(["alpha"]))).await.contracts, ["a-old"]);

    w.add_contract(contract("a-new", "alpha", MembershipType::Auto)).await;
    w.add_contract(contract("w-new", "whiskey", MembershipType::Managed)).await;
    let f = w.login(u, FULL, Some(json!(["alpha"]))).await;
    assert_eq!(f.contracts, ["a-new", "a-old", "w-new"]);
    assert_eq!(
        w.attachments(u).await,
        [attached("a-new", Sso), attached("a-old", Sso), attached("w-new", Sso)]
    );
    assert_eq!(w.audit(u).await[2..], ["attachment.add a-new", "attachment.add w-new"]);
}

/// docs/contract.md §4: "Reconciling twice with the same input changes nothing the second time."
async fn a_second_identical_login_writes_nothing(db: Db) {
    let w = World::new(db).await;
    let u = "twice";
    w.add_contract(contract("a-auto", "alpha", MembershipType::Auto)).await;
    w.add_contract(contract("r-managed", "romeo", MembershipType::Managed)).await;
    w.seed_membership(u, &w.india, Claim, false).await;
    let claim = || Some(json!({"alpha": {}, "romeo": {"id": w.romeo.keycloak_id}}));

    let first = w.login(u, FULL, claim()).await;
    assert_eq!(first.contracts, ["a-auto", "r-managed"]);
    let (trail, members, held) = (w.audit(u).await, w.membership_rows(u).await, w.attachment_rows(u).await);
    assert_eq!(trail.len(), 5, "{trail:?}");

    let second = w.login(u, FULL, claim()).await;
    assert_eq!((second.organizations, second.contracts), (first.organizations, first.contracts));
    assert_eq!(w.audit(u).await, trail);
    assert_eq!(w.membership_rows(u).await, members);
    assert_eq!(w.attachment_rows(u).await, held);
}

/// docs/contract.md §4 steps 2–3: an admin membership flagged `keep_until_seen` survives logins that do not
/// claim it, until a claim names it; from then on it is an ordinary membership.
async fn an_admin_membership_is_kept_until_the_claim_has_named_it_once(db: Db) {
    let w = World::new(db).await;
    let u = "kept";
    w.seed_membership(u, &w.romeo, Admin, true).await;

    let f = w.login(u, FULL, Some(json!(["alpha"]))).await;
    assert_eq!(f.organizations, ["alpha", "romeo"]);
    let f = w.login(u, FULL, None).await;
    assert_eq!(f.organizations, ["romeo"]);
    assert_eq!(w.memberships(u).await, [membership("romeo", true, Admin)]);

    let f = w.login(u, FULL, Some(json!(["alpha", "romeo"]))).await;
    assert_eq!(f.organizations, ["alpha", "romeo"]);
    assert_eq!(
        w.memberships(u).await,
        [membership("alpha", false, Claim), membership("romeo", false, Admin)]
    );

    let f = w.login(u, FULL, Some(json!(["alpha"]))).await;
    assert_eq!(f.organizations, ["alpha"]);
    assert_eq!(w.memberships(u).await, [membership("alpha", false, Claim)]);
}

/// How much of the optional data a large B2B user of the size tests carries.
#[derive(Clone, Copy)]
enum Filled {
    /// Only what docs/contract.md §5 states for its budget user (keys of about 10 characters, names
    /// of about 15) and dated contracts. Keycloak's default organization claim (a list of
    /// aliases) names the organizations, so they carry no Keycloak id, which the token then
    /// leaves out.
    Budget,
    /// Every optional member set: organizations linked to Keycloak by id (the claim is the map
    /// form with ids), contracts dated on both sides.
    Everything,
}

/// Requests as a user of 5 organizations (manager of two) and 10 contracts valid today (keys of
/// about 10 characters, names of about 15) with a long profile (e-mail, given and family name),
/// under the default configuration (`X-Userinfo` on), and returns what the second request's
/// owned headers said.
async fn large_b2b_user(w: &World, filled: Filled) -> Facts {
    let linked = matches!(filled, Filled::Everything);
    let today = today();
    let mut by_id = serde_json::Map::new();
    let mut aliases = Vec::new();
    for i in 1..=5 {
        let key = format!("org-key-{i:02}");
        let org = w
            .add_org(NewOrganization {
                key: key.clone(),
                name: format!("Organization {i:02}"),
                description: "A customer".into(),
                keycloak_id: linked.then(Uuid::new_v4),
                keycloak_alias: Some(key.clone()),
                email_domains: Vec::new(),
            })
            .await;
        by_id.insert(key.clone(), json!({"id": org.keycloak_id}));
        aliases.push(json!(key));
        for j in 0..2 {
            let membership_type = if j == 0 { MembershipType::Managed } else { MembershipType::Auto };
            let n = (i - 1) * 2 + j + 1;
            w.add_contract(NewContract {
                name: format!("Contract no. {n:02}"),
                starts_on: Some(today - DAY * 30),
                ends_on: Some(today + DAY * 335),
                max_learners: Some(500),
                price: Some("1200.00".into()),
                ..contract(&format!("contract{n:02}"), &key, membership_type)
            })
            .await;
        }
    }
    let claim = if linked { Value::Object(by_id) } else { Value::Array(aliases) };
    let u = Uuid::new_v4().to_string();
    let token = |w: &World| {
        w.kc.token()
            .sub(&u)
            .sid(&Uuid::new_v4().to_string())
            .email("marie-claire.dupont@example.org")
            .preferred_username("marie-claire.dupont")
            .name("Marie-Claire Dupont")
            .given_name("Marie-Claire")
            .family_name("Dupont")
            .organization(claim.clone())
            .sign()
    };
    w.request(&token(w)).await;
    // Manager of two of them (an admin flag), seen from the next login on.
    let mut conn = w.store.conn().await.unwrap();
    for key in ["org-key-01", "org-key-02"] {
        let org = organizations::get(&mut conn, key).await.unwrap();
        assert!(memberships::set_flags(&mut conn, &u, org.id, None, Some(true)).await.unwrap());
    }
    drop(conn);

    let f = w.request(&token(w)).await;
    assert_eq!((f.organizations.len(), f.managed.len(), f.contracts.len()), (5, 2, 10));
    f
}

/// docs/contract.md §5 size budget: for a user with 5 organizations and 10 contracts (keys of about
/// 10 characters, names of about 15), all owned headers together stay under 4 KiB with the
/// default configuration (`X-Userinfo` on), counted as the upstream receives them: name, `: `,
/// value and CRLF for each. The entitlement token leaves null members out (§5 v2; here the
/// organizations' Keycloak ids) and its JWS header carries `alg` and `kid` only, which is what
/// brings this user under the budget: 4,069 bytes, where v1's token (`typ` and five
/// `"keycloak_id":null`) made it 4,211.
async fn owned_headers_of_the_budget_b2b_user_stay_under_4_kib(db: Db) {
    let w = World::new(db).await;
    let f = large_b2b_user(&w, Filled::Budget).await;
    let total: usize = f.owned.iter().map(|(_, bytes)| bytes).sum();
    println!("owned headers of the budget user: {total} bytes {:?}", f.owned);
    assert_eq!(f.owned.len(), 12, "every owned header is counted: {:?}", f.owned);
    assert!(total < 4096, "owned headers take {total} bytes on the wire: {:?}", f.owned);
    let token = f.entitlements.to_string();
    assert!(!token.contains("null"), "a null member in the token: {token}");
    assert!(
        f.entitlements["organizations"].as_array().unwrap().iter().all(|o| o.get("keycloak_id").is_none())
    );
}

/// The same user with every optional member filled in: organizations linked to Keycloak by id
/// (the organization claim then carries the ids too, and `X-Userinfo` copies it as received)
/// and contracts dated on both sides. Nothing in it is null, so nothing is left out: it takes
/// 4,730 bytes on the wire (v1: 4,746), over the 4 KiB budget, and the bound here keeps it from
/// growing. Without `X-Userinfo` (`headers.userinfo = false`, for gateways kept at 4 KiB
/// buffers) it stays under 4 KiB, and no single header reaches 4 KiB.
async fn owned_headers_of_a_b2b_user_with_every_optional_member_stay_within_their_bounds(db: Db) {
    let w = World::new(db).await;
    let f = large_b2b_user(&w, Filled::Everything).await;
    let total: usize = f.owned.iter().map(|(_, bytes)| bytes).sum();
    println!(
        "owned headers of 5 organizations and 10 contracts, every member set: {total} bytes {:?}",
        f.owned
    );
    assert_eq!(f.owned.len(), 12, "every owned header is counted: {:?}", f.owned);
    let userinfo = f.owned.iter().find(|(n, _)| n == "x-userinfo").map(|(_, b)| b).unwrap();
    // `headers.userinfo = false` still sends the header, empty: name, `: ` and CRLF.
    let without_userinfo = total - userinfo + "x-userinfo: \r\n".len();
    assert!(without_userinfo < 4096, "without X-Userinfo: {without_userinfo} bytes: {:?}", f.owned);
    assert!(f.owned.iter().all(|(_, b)| *b < 4096), "a header over 4 KiB: {:?}", f.owned);
    assert!(total < 4800, "owned headers take {total} bytes on the wire: {:?}", f.owned);
    let organizations = f.entitlements["organizations"].as_array().unwrap();
    assert!(organizations.iter().all(|o| o["keycloak_id"].is_string()), "{organizations:?}");
}

/// docs/contract.md §4: "Requests of an already reconciled login touch no database."
async fn requests_of_a_reconciled_login_touch_no_database(db: Db) {
    let w = World::new(db).await;
    w.add_contract(contract("a-auto", "alpha", MembershipType::Auto)).await;
    let token = w.token("cached", FULL, Some(json!(["alpha"])));
    let first = w.request(&token).await;
    assert_eq!(first.contracts, ["a-auto"]);

    let queries = async || metric(&w.app.metrics().await, "identity_sidecar_store_queries_total");
    let before = queries().await;
    assert!(before > 0.0, "the reconciliation was counted");
    for _ in 0..20 {
        let f = w.request(&token).await;
        assert_eq!(
            (f.status.as_str(), &f.organizations, &f.contracts),
            ("authenticated", &first.organizations, &first.contracts)
        );
    }
    assert_eq!(queries().await, before);
    let hits =
        metric(&w.app.metrics().await, r#"identity_sidecar_cache_lookups_total{cache="login",result="hit"}"#);
    assert!(hits >= 20.0, "{hits} login cache hits");
}

/// docs/contract.md §4 `on_store_error = "degrade"` (the default): a new login while the store fails gets
/// the last known facts marked `stale`; a cached login is unaffected; the next request after
/// the store recovers reconciles.
async fn a_failing_store_degrades_new_logins_to_the_last_known_facts(db: Db) {
    let w = World::new(db).await;
    w.add_contract(contract("a-auto", "alpha", MembershipType::Auto)).await;
    let u = "degraded";
    let cached = w.token(u, FULL, Some(json!(["alpha"])));
    assert_eq!(w.request(&cached).await.organizations, ["alpha"]);

    let fault = w.break_store().await;
    let fresh = w.token(u, FULL, Some(json!(["alpha", "india"])));
    let f = w.request(&fresh).await;
    assert_eq!(
        (f.status.as_str(), f.organizations, f.contracts),
        ("stale", vec!["alpha".to_owned()], vec!["a-auto".to_owned()])
    );
    let f = w.request(&w.token("never-seen", FULL, Some(json!(["alpha"])))).await;
    assert_eq!((f.status.as_str(), f.organizations.len()), ("stale", 0));
    let f = w.request(&cached).await;
    assert_eq!((f.status.as_str(), f.organizations), ("authenticated", vec!["alpha".to_owned()]));
    assert!(
        metric(&w.app.metrics().await, r#"identity_sidecar_reconciliations_total{result="error"}"#) >= 2.0
    );

    w.mend_store(fault).await;
    let f = w.request(&fresh).await;
    assert_eq!(
        (f.status.as_str(), f.organizations),
        ("authenticated", vec!["alpha".to_owned(), "india".to_owned()])
    );
}

/// docs/contract.md §4 `on_store_error = "reject"`: a new login while the store fails is a 503 with
/// `Retry-After`; a cached login is unaffected.
async fn a_failing_store_rejects_new_logins_when_configured_to(db: Db) {
    let w = World::with_env(db, &[("SIDECAR__RECONCILE__ON_STORE_ERROR", "reject")]).await;
    let u = "rejected";
    let cached = w.token(u, FULL, Some(json!(["alpha"])));
    assert_eq!(w.request(&cached).await.organizations, ["alpha"]);

    let fault = w.break_store().await;
    let fresh = w.token(u, FULL, Some(json!(["alpha"])));
    let res = w.send(&fresh).await;
    assert_eq!(res.status(), 503);
    let retry_after = res.headers().get("retry-after").expect("Retry-After").to_str().unwrap();
    assert!(retry_after.parse::<u64>().unwrap() > 0);
    let f = w.request(&cached).await;
    assert_eq!((f.status.as_str(), f.organizations), ("authenticated", vec!["alpha".to_owned()]));

    w.mend_store(fault).await;
    assert_eq!(w.request(&fresh).await.status, "authenticated");
}

/// docs/contract.md §4 "serialised per user": ten new logins of one user at once write every row once.
async fn concurrent_logins_of_one_user_write_each_row_once(db: Db) {
    let w = World::new(db).await;
    let u = "racer";
    w.add_contract(contract("a-auto", "alpha", MembershipType::Auto)).await;
    w.add_contract(NewContract {
        max_learners: Some(5),
        ..contract("a-managed", "alpha", MembershipType::Managed)
    })
    .await;
    w.add_contract(contract("r-auto", "romeo", MembershipType::Auto)).await;
    let tokens: Vec<String> = (0..10).map(|_| w.token(u, FULL, Some(json!(["alpha", "romeo"])))).collect();

    let answers = futures_util::future::join_all(tokens.iter().map(|t| w.request(t))).await;
    for f in answers {
        assert_eq!(f.status, "authenticated");
        assert_eq!(f.organizations, ["alpha", "romeo"]);
        assert_eq!(f.contracts, ["a-auto", "a-managed", "r-auto"]);
    }
    assert_eq!(
        w.memberships(u).await,
        [membership("alpha", false, Claim), membership("romeo", false, Claim)]
    );
    assert_eq!(
        w.attachments(u).await,
        [attached("a-auto", Sso), attached("a-managed", Sso), attached("r-auto", Sso)]
    );
    for key in ["a-auto", "a-managed", "r-auto"] {
        assert_eq!(w.seats_used(key).await, 1, "{key}");
    }
    assert_eq!(w.audit(u).await.len(), 5, "two memberships and three attachments, once each");
    assert_eq!(
        metric(&w.app.metrics().await, r#"identity_sidecar_reconciliations_total{result="error"}"#),
        0.0
    );
}

// ------------------------------------------------------------------------------------------

on_both_databases!(
    logins_follow_the_issue_table_step_by_step,
    claims_match_by_id_then_by_alias_and_unknown_entries_create_nothing,
    only_the_full_membership_scope_removes_organizations,
    only_valid_sso_contracts_are_attached_and_shown,
    a_cached_login_drops_a_contract_the_day_after_it_ends,
    a_full_contract_is_skipped_with_an_audit_event_and_a_metric,
    a_removed_organization_takes_its_sso_contracts_and_leaves_code_attachments,
    a_contract_created_later_is_attached_at_the_next_login,
    a_second_identical_login_writes_nothing,
    an_admin_membership_is_kept_until_the_claim_has_named_it_once,
    owned_headers_of_the_budget_b2b_user_stay_under_4_kib,
    owned_headers_of_a_b2b_user_with_every_optional_member_stay_within_their_bounds,
    requests_of_a_reconciled_login_touch_no_database,
    a_failing_store_degrades_new_logins_to_the_last_known_facts,
    a_failing_store_rejects_new_logins_when_configured_to,
    concurrent_logins_of_one_user_write_each_row_once,
);
