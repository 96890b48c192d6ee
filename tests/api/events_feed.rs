//! Issue 12, docs/contract.md §13: the pull feed of change events, `GET /admin/v1/events`, as a
//! consumer sees it — CloudEvents 1.0 in a batch, paged by `after`/`limit`, filtered by
//! `types`, its refusals, the retention's edge (410), skip events written only when the skip
//! state changes, failed changes writing nothing, and (on PostgreSQL) a reader paging while
//! fifty writers commit out of insertion order, who must see every event exactly once.
//!
//! Every case runs on SQLite and PostgreSQL except the concurrency case (PostgreSQL: the one
//! backend where writers really commit side by side). What the feed serves is compared with
//! the audit rows themselves, read straight from the app's database.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{Connection as _, Row as _};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use identity_sidecar::events::TYPES;
use identity_sidecar::store::codec::At;

use crate::helpers::{ADMIN_TOKEN, Db, Fixture, on_both_databases, set};

/// A static token configured with `access = "read"`.
const READ_TOKEN: &str = "auditor-static-read-token-0123456789";

/// The organization claim's complete form: absence from the claim means removal.
const FULL_SCOPE: &str = "openid email profile organization:*";

const BATCH: &str = "application/cloudevents-batch+json";

/// The app with the write token and [`READ_TOKEN`], `events.source` set to a value of the
/// test's own, and `configure` last.
struct World(Fixture);

impl std::ops::Deref for World {
    type Target = Fixture;

    fn deref(&self) -> &Fixture {
        &self.0
    }
}

/// An answer: status, content type and JSON body (null when empty).
struct Answer {
    status: u16,
    content_type: String,
    body: Value,
}

impl Answer {
    async fn from(res: reqwest::Response) -> Answer {
        let status = res.status().as_u16();
        let content_type =
            res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let text = res.text().await.unwrap();
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
        Answer { status, content_type, body }
    }

    /// The events of a 200 batch.
    fn events(&self) -> Vec<Value> {
        assert_eq!(self.status, 200, "{}", self.body);
        assert_eq!(self.content_type, BATCH);
        self.body.as_array().expect("a JSON array").clone()
    }

    /// The fields a problem answer names.
    fn fields(&self) -> Vec<String> {
        assert_eq!(self.content_type, "application/problem+json", "{}", self.body);
        self.body["errors"]
            .as_array()
            .map(|errors| errors.iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }
}

const SOURCE: &str = "urn:test:identity-sidecar";

async fn start(db: Db) -> World {
    start_with(db, |_| {}).await
}

async fn start_with(db: Db, configure: impl FnOnce(&mut Vec<(String, String)>)) -> World {
    World(
        Fixture::start_with(db, |_, env| {
            use sha2::Digest as _;
            let sha = |t: &str| hex::encode(sha2::Sha256::digest(t.as_bytes()));
            let tokens = json!([
                {"name": "ops", "sha256": sha(ADMIN_TOKEN)},
                {"name": "auditor", "sha256": sha(READ_TOKEN), "access": "read"},
            ]);
            set(env, "SIDECAR__ADMIN__TOKEN_SHA256", tokens.to_string());
            set(env, "SIDECAR__EVENTS__SOURCE", SOURCE);
            configure(env);
        })
        .await,
    )
}

impl World {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let request = self.admin(method, path);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        Answer::from(request.send().await.unwrap()).await
    }

    /// A write through the admin API that must answer `status`.
    async fn must(&self, method: Method, path: &str, body: Option<Value>, status: u16) -> Value {
        let a = self.call(method.clone(), path, body).await;
        assert_eq!(a.status, status, "{method} {path}: {}", a.body);
        a.body
    }

    /// `GET /admin/v1/events?{query}` with the write token.
    async fn feed(&self, query: &str) -> Answer {
        self.call(Method::GET, &format!("/events?{query}"), None).await
    }

    /// Every event from the start of the retention, read in pages of `limit` (with `types`
    /// when given), until a page comes back short.
    async fn read_all(&self, limit: u32, types: Option<&str>) -> Vec<Value> {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = format!("limit={limit}");
            if let Some(after) = &after {
                query.push_str(&format!("&after={after}"));
            }
            if let Some(types) = types {
                query.push_str(&format!("&types={types}"));
            }
            let page = self.feed(&query).await.events();
            if let Some(last) = page.last() {
                after = Some(last["sequence"].as_str().unwrap().to_owned());
            }
            let short = page.len() < limit as usize;
            seen.extend(page);
            if short {
                return seen;
            }
        }
    }

    /// An organization linked to Keycloak (id and alias = key), so a claim of `key` names it.
    async fn linked_org(&self, key: &str) {
        let body = json!({"key": key, "name": format!("{key} Inc"),
                          "keycloak_id": Uuid::new_v4(), "keycloak_alias": key});
        self.must(Method::POST, "/organizations", Some(body), 201).await;
    }

    async fn contract(&self, key: &str, org: &str, membership_type: &str, extra: Value) {
        let mut body =
            json!({"key": key, "organization": org, "name": key, "membership_type": membership_type});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        self.must(Method::POST, "/contracts", Some(body), 201).await;
    }

    async fn codes(&self, contract: &str, body: Value) -> Vec<String> {
        let body = self.must(Method::POST, &format!("/contracts/{contract}/codes"), Some(body), 201).await;
        body["items"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap().to_owned()).collect()
    }

    /// A new login (fresh `sid`) of `sub` claiming `orgs`, through forward-auth.
    async fn login(&self, sub: &str, orgs: Value) {
        let token = self.token(sub, orgs);
        let status = self.app.forward_auth("GET", "/").bearer_auth(token).send().await.unwrap().status();
        assert_eq!(status, 200, "login of {sub}");
    }

    fn token(&self, sub: &str, orgs: Value) -> String {
        let sid = Uuid::new_v4().to_string();
        self.kc.token().sub(sub).scope(FULL_SCOPE).sid(&sid).organization(orgs).sign()
    }

    async fn redeem(&self, sub: &str, code: &str) -> Answer {
        let url = self.app.url(&format!("/_sidecar/enrollment-codes/{code}/redeem"));
        let token = self.kc.token().sub(sub).sign();
        Answer::from(self.app.http.post(url).bearer_auth(token).send().await.unwrap()).await
    }

    /// The audit rows whose action is a change event, as (`evt-<id>`, action), by sequence
    /// (unnumbered rows last, by id).
    async fn change_rows(&self) -> Vec<(String, String)> {
        let actions: Vec<String> = TYPES.iter().map(|(a, _)| format!("'{a}'")).collect();
        let sql = format!(
            "SELECT id, action FROM audit_events WHERE action IN ({})
              ORDER BY sequence IS NULL, sequence, id",
            actions.join(", ")
        );
        let rows = self.rows(&sql).await;
        rows.into_iter().map(|(id, action)| (format!("evt-{id}"), action)).collect()
    }

    /// `(id, action)` of each row of `sql` on the app's database.
    async fn rows(&self, sql: &str) -> Vec<(i64, String)> {
        let url = &self.app.database_url;
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        if url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            let rows = sqlx::query(sql).fetch_all(&mut c).await.unwrap();
            rows.iter().map(|r| (r.get("id"), r.get("action"))).collect()
        } else {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            let rows = sqlx::query(sql).fetch_all(&mut c).await.unwrap();
            rows.iter().map(|r| (r.get("id"), r.get("action"))).collect()
        }
    }

    /// Back-dates the audit rows numbered up to `upto` to `at`: how events age past the
    /// retention without waiting days.
    async fn age(&self, upto: i64, at: OffsetDateTime) {
        let url = &self.app.database_url;
        let sql = "UPDATE audit_events SET at = $1 WHERE sequence <= $2";
        let done = if url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query(sql).bind(At(at)).bind(upto).execute(&mut c).await.unwrap().rows_affected()
        } else {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query(sql).bind(At(at)).bind(upto).execute(&mut c).await.unwrap().rows_affected()
        };
        assert!(done > 0, "nothing aged");
    }
}

fn sequence(event: &Value) -> i64 {
    event["sequence"].as_str().unwrap().parse().unwrap()
}

fn ids(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// The one event of `kind` about `subject`.
fn one<'a>(events: &'a [Value], kind: &str, subject: &str) -> &'a Value {
    let found: Vec<&Value> = events.iter().filter(|e| e["type"] == kind && e["subject"] == subject).collect();
    assert_eq!(found.len(), 1, "{kind} {subject}: {events:#?}");
    found[0]
}

/// What CloudEvents 1.0 (structured JSON) and docs/events.md require of every event served.
fn assert_cloudevent(event: &Value) {
    let object = event.as_object().expect("an object");
    assert_eq!(event["specversion"], "1.0", "{event}");
    assert!(event["id"].as_str().is_some_and(|id| id.starts_with("evt-") && id.len() > 4), "{event}");
    assert_eq!(event["source"], SOURCE, "{event}");
    let kind = event["type"].as_str().unwrap();
    assert!(TYPES.iter().any(|(_, t)| *t == kind), "a type outside the closed list: {event}");
    OffsetDateTime::parse(event["time"].as_str().unwrap(), &Rfc3339).expect("time is RFC 3339");
    assert!(event["subject"].as_str().is_some_and(|s| !s.is_empty()), "{event}");
    let sequence = event["sequence"].as_str().unwrap();
    assert!(sequence.len() == 20 && sequence.bytes().all(|b| b.is_ascii_digit()), "{event}");
    assert_eq!(event["datacontenttype"], "application/json", "{event}");
    let data = event["data"].as_object().expect("data is an object");
    assert!(data["actor"].is_string(), "{event}");
    assert!(data.contains_key("reason"), "{event}");
    for key in object.keys() {
        // CloudEvents attribute names: lower-case letters and digits only.
        assert!(key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "{key}");
    }
}

on_both_databases!(
    the_feed_serves_every_change_as_a_cloudevent_once_in_sequence_order_across_pages,
    the_feed_refuses_bad_positions_limits_parameters_and_types_and_needs_an_admin,
    events_past_the_retention_are_gone_with_410_and_a_reader_without_a_position_starts_after_them,
    a_full_contract_skip_is_an_event_only_when_the_users_skip_state_changes,
    a_change_that_fails_writes_no_event,
);

// --- 1. shape, order, paging, filter -------------------------------------------------------

async fn the_feed_serves_every_change_as_a_cloudevent_once_in_sequence_order_across_pages(db: Db) {
    let w = start(db).await;
    assert_eq!(w.feed("").await.events(), Vec::<Value>::new(), "nothing happened yet");

    w.linked_org("acme").await;
    w.contract("acme-sso", "acme", "auto", json!({})).await;
    w.contract("acme-code", "acme", "code", json!({"max_learners": 5})).await;
    w.must(Method::PATCH, "/contracts/acme-code", Some(json!({"name": "Acme courses"})), 200).await;
    w.contract("doomed", "acme", "code", json!({"price": "12.50"})).await;
    w.must(Method::DELETE, "/contracts/doomed", None, 204).await;
    w.login("bob", json!(["acme"])).await;
    let code = w.codes("acme-code", json!({"count": 1})).await.remove(0);
    assert_eq!(w.redeem("ann", &code).await.status, 201);
    w.must(Method::PUT, "/users/carol/organizations/acme", Some(json!({"manager": true})), 201).await;
    w.must(Method::DELETE, "/users/carol/organizations/acme", None, 200).await;

    let all = w.feed("limit=1000").await.events();
    for event in &all {
        assert_cloudevent(event);
    }
    // Exactly the change rows of the audit trail, in their order; nothing else (generating a
    // code is audited but no event).
    let rows = w.change_rows().await;
    assert_eq!(ids(&all), rows.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>());
    let sequences: Vec<i64> = all.iter().map(sequence).collect();
    assert!(sequences.windows(2).all(|p| p[0] < p[1]), "{sequences:?}");
    assert_eq!(
        kinds(&all),
        [
            "identity-sidecar.organization.created",
            "identity-sidecar.contract.created",
            "identity-sidecar.contract.created",
            "identity-sidecar.contract.updated",
            "identity-sidecar.contract.created",
            "identity-sidecar.contract.deleted",
            "identity-sidecar.membership.added",
            "identity-sidecar.attachment.attached",
            "identity-sidecar.membership.added",
            "identity-sidecar.attachment.attached",
            "identity-sidecar.code.redeemed",
            "identity-sidecar.membership.added",
            "identity-sidecar.membership.removed",
        ]
    );

    // `data`: the object after the change, or before it for a deletion, with actor and reason.
    let updated = one(&all, "identity-sidecar.contract.updated", "acme-code");
    assert_eq!(updated["data"]["name"], "Acme courses", "{updated}");
    assert_eq!(updated["data"]["max_learners"], 5, "{updated}");
    assert_eq!(
        (&updated["data"]["actor"], &updated["data"]["reason"]),
        (&json!("admin:ops"), &json!("admin API"))
    );
    let deleted = one(&all, "identity-sidecar.contract.deleted", "doomed");
    assert_eq!((&deleted["data"]["name"], &deleted["data"]["price"]), (&json!("doomed"), &json!("12.50")));
    assert_eq!(deleted["data"]["organization"], "acme");
    let created = one(&all, "identity-sidecar.organization.created", "acme");
    assert_eq!(created["data"]["keycloak_alias"], "acme", "{created}");
    let redeemed = one(&all, "identity-sidecar.code.redeemed", "ann");
    assert_eq!(
        (&redeemed["data"]["contract"], &redeemed["data"]["actor"]),
        (&json!("acme-code"), &json!("code"))
    );
    assert!(!redeemed.to_string().contains(&code), "the code itself is no event's business");
    let attached = all
        .iter()
        .find(|e| e["type"] == "identity-sidecar.attachment.attached" && e["subject"] == "bob")
        .unwrap();
    assert_eq!(
        (&attached["data"]["contract"], &attached["data"]["actor"]),
        (&json!("acme-sso"), &json!("login"))
    );
    let removed = one(&all, "identity-sidecar.membership.removed", "carol");
    assert_eq!(
        (&removed["data"]["organization"], &removed["data"]["sub"]),
        (&json!("acme"), &json!("carol"))
    );

    // Pages of any size, each resuming after the last sequence seen: everything once, in order.
    for limit in [1, 2, 5, 7] {
        assert_eq!(w.read_all(limit, None).await, all, "limit={limit}");
    }
    // Padded or not, `after` means the same position.
    let third = sequence(&all[2]);
    let padded = w.feed(&format!("after={}&limit=2", all[2]["sequence"].as_str().unwrap())).await.events();
    assert_eq!(padded, all[3..5]);
    assert_eq!(w.feed(&format!("after={third}&limit=2")).await.events(), padded);
    // The newest sequence: nothing new, not an error.
    let last = all.last().unwrap()["sequence"].as_str().unwrap().to_owned();
    assert_eq!(w.feed(&format!("after={last}")).await.events(), Vec::<Value>::new());

    // `types`: prefixes, several with commas, paged the same way.
    let memberships = w.read_all(1, Some("identity-sidecar.membership.")).await;
    let expected: Vec<Value> = all
        .iter()
        .filter(|e| kinds(std::slice::from_ref(e))[0].starts_with("identity-sidecar.membership."))
        .cloned()
        .collect();
    assert_eq!(memberships, expected);
    assert_eq!(memberships.len(), 4);
    let both = w.read_all(2, Some("identity-sidecar.contract.deleted,identity-sidecar.code.")).await;
    assert_eq!(kinds(&both), ["identity-sidecar.contract.deleted", "identity-sidecar.code.redeemed"]);
    assert_eq!(w.read_all(100, Some("identity-sidecar.")).await, all);
}

// --- 1. refusals and access ----------------------------------------------------------------

async fn the_feed_refuses_bad_positions_limits_parameters_and_types_and_needs_an_admin(db: Db) {
    let w = start(db).await;
    w.linked_org("acme").await;
    w.linked_org("umbrella").await;
    let head = w.feed("").await.events().last().map(sequence).unwrap();

    for after in ["abc", "-1", "1.5", "", "000000000000000000001", "99999999999999999999", " 1", "0x10"] {
        let a = w.feed(&format!("after={}", urlencode(after))).await;
        assert_eq!((a.status, a.fields()), (400, vec!["after".to_owned()]), "after={after:?}: {}", a.body);
    }
    let a = w.feed(&format!("after={}", head + 1)).await;
    assert_eq!((a.status, a.fields()), (400, vec!["after".to_owned()]), "{}", a.body);
    assert!(a.body["detail"].as_str().unwrap().contains(&format!("{:020}", head)), "{}", a.body);
    assert_eq!(w.feed(&format!("after={head}")).await.events(), Vec::<Value>::new());
    assert_eq!(w.feed("after=0").await.events().len(), 2);

    for limit in ["0", "1001"] {
        let a = w.feed(&format!("limit={limit}")).await;
        assert_eq!((a.status, a.fields()), (422, vec!["limit".to_owned()]), "limit={limit}: {}", a.body);
    }
    assert_eq!(w.feed("limit=1000").await.events().len(), 2);
    let a = w.feed("limit=ten").await;
    assert_eq!((a.status, a.fields()), (400, vec!["limit".to_owned()]), "{}", a.body);

    let a = w.feed("after=0&cursor=5").await;
    assert_eq!((a.status, a.fields()), (400, vec!["cursor".to_owned()]), "{}", a.body);

    for types in ["membership.", "identity-sidecar.membership.added,identity-sidecar.nothing", "x"] {
        let a = w.feed(&format!("types={types}")).await;
        assert_eq!((a.status, a.fields()), (400, vec!["types".to_owned()]), "types={types}: {}", a.body);
    }

    let url = w.app.admin_url("/admin/v1/events");
    let anonymous = Answer::from(w.app.http.get(&url).send().await.unwrap()).await;
    assert_eq!(anonymous.status, 401);
    let wrong =
        Answer::from(w.app.http.get(&url).bearer_auth("not-a-token-of-ours").send().await.unwrap()).await;
    assert_eq!(wrong.status, 401);
    let read = Answer::from(w.app.http.get(&url).bearer_auth(READ_TOKEN).send().await.unwrap()).await;
    assert_eq!(read.events(), w.feed("").await.events(), "a read-only admin reads the same feed");
    // The feed is on the admin port only.
    let public = w.app.http.get(w.app.url("/admin/v1/events")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_ne!(public.status().as_u16(), 200);
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// --- 2. retention --------------------------------------------------------------------------

async fn events_past_the_retention_are_gone_with_410_and_a_reader_without_a_position_starts_after_them(
    db: Db,
) {
    let w = start_with(db, |env| set(env, "SIDECAR__EVENTS__RETENTION_DAYS", "3")).await;
    for org in ["old-1", "old-2", "new-1"] {
        w.linked_org(org).await;
    }
    let before = w.feed("").await.events();
    assert_eq!(before.len(), 3);
    let (old_1, old_2) = (sequence(&before[0]), sequence(&before[1]));
    // Four days ago: past a retention of three.
    w.age(old_2, OffsetDateTime::now_utc() - time::Duration::days(4)).await;
    w.linked_org("new-2").await;

    // Without a position: from the oldest event still kept.
    let kept = w.feed("").await.events();
    assert_eq!(kinds(&kept), ["identity-sidecar.organization.created"; 2]);
    assert_eq!(kept.iter().map(|e| e["subject"].as_str().unwrap()).collect::<Vec<_>>(), ["new-1", "new-2"]);
    assert_eq!(kept[0], before[2]);

    // A position before the aged events: the next event is past the retention → 410.
    for after in [0, old_1] {
        let a = w.feed(&format!("after={after}")).await;
        assert_eq!(a.status, 410, "after={after}: {}", a.body);
        assert_eq!(a.fields(), ["after"]);
        let detail = a.body["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("after={old_2:020}")), "where to resume: {detail}");
    }
    // Right after the last aged event: nothing was missed.
    assert_eq!(w.feed(&format!("after={old_2}")).await.events(), kept);

    // Everything aged: a reader without a position starts at the newest, and gets nothing.
    let newest = sequence(kept.last().unwrap());
    w.age(newest, OffsetDateTime::now_utc() - time::Duration::days(4)).await;
    assert_eq!(w.feed("").await.events(), Vec::<Value>::new());
    assert_eq!(w.feed(&format!("after={newest}")).await.events(), Vec::<Value>::new());
    assert_eq!(w.feed(&format!("after={old_2}")).await.status, 410);
}

// --- 3. attachment.skipped_full ------------------------------------------------------------

async fn a_full_contract_skip_is_an_event_only_when_the_users_skip_state_changes(db: Db) {
    let w = start(db).await;
    w.linked_org("acme").await;
    w.contract("acme-seat", "acme", "managed", json!({"max_learners": 1})).await;
    w.login("first", json!(["acme"])).await;
    let skips = async || {
        let all = w.feed("limit=1000&types=identity-sidecar.attachment.skipped_full").await.events();
        all.iter()
            .map(|e| (e["subject"].as_str().unwrap().to_owned(), e["data"]["contract"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(skips().await, vec![], "the first comer got the seat");

    let late = || ("late".to_owned(), json!("acme-seat"));
    w.login("late", json!(["acme"])).await;
    assert_eq!(skips().await, [late()]);
    // Reconciled again — by a login and by the admin API — the state is the same: no event.
    w.login("late", json!(["acme"])).await;
    let stated = json!({"organizations": ["acme"]});
    w.must(Method::POST, "/reconcile/users/late", Some(stated.clone()), 200).await;
    w.must(Method::POST, "/reconcile/users/late", Some(stated.clone()), 200).await;
    assert_eq!(skips().await, [late()]);
    let event = &w.feed("types=identity-sidecar.attachment.skipped_full").await.events()[0];
    assert_cloudevent(event);
    assert_eq!((&event["data"]["sub"], &event["data"]["actor"]), (&json!("late"), &json!("login")));

    // Out of the organization and back: the skip state starts afresh, so the next skip is one.
    w.must(Method::DELETE, "/users/late/organizations/acme", None, 200).await;
    w.login("late", json!(["acme"])).await;
    assert_eq!(skips().await, [late(), late()]);
    w.login("late", json!(["acme"])).await;
    assert_eq!(skips().await, [late(), late()]);

    // Removed by a login whose claim lacks the organization, then back: a skip again.
    w.login("late", json!([])).await;
    w.login("late", json!(["acme"])).await;
    assert_eq!(skips().await, [late(), late(), late()]);

    // The seat freed and taken: the skip state is over; full again later, a new skip.
    w.must(Method::DELETE, "/users/first/organizations/acme", None, 200).await;
    w.login("late", json!(["acme"])).await;
    let trail: Vec<Value> = w.feed("limit=1000&types=identity-sidecar.attachment.").await.events();
    let last = trail.last().unwrap();
    assert_eq!(
        (&last["type"], &last["subject"]),
        (&json!("identity-sidecar.attachment.attached"), &json!("late"))
    );
    w.login("first", json!(["acme"])).await;
    w.login("first", json!(["acme"])).await;
    let first = || ("first".to_owned(), json!("acme-seat"));
    assert_eq!(skips().await, [late(), late(), late(), first()]);

    // Reconciling the contract with its organization skips a member it finds full the same
    // way: once per skip state, whoever reconciles.
    w.must(Method::PUT, "/users/carol/organizations/acme", Some(json!({})), 201).await;
    let reconciled = w.must(Method::POST, "/reconcile/contracts/acme-seat", None, 200).await;
    assert_eq!(reconciled["skipped_full"], 2, "{reconciled}");
    let carol = || ("carol".to_owned(), json!("acme-seat"));
    assert_eq!(skips().await, [late(), late(), late(), first(), carol()]);
    w.must(Method::POST, "/reconcile/contracts/acme-seat", None, 200).await;
    w.login("carol", json!(["acme"])).await;
    assert_eq!(skips().await, [late(), late(), late(), first(), carol()]);
    let event = w.feed("types=identity-sidecar.attachment.skipped_full").await.events().pop().unwrap();
    assert_eq!((&event["subject"], &event["data"]["actor"]), (&json!("carol"), &json!("admin:ops")));
}

// --- 5. failed changes ----------------------------------------------------------------------

async fn a_change_that_fails_writes_no_event(db: Db) {
    let w = start(db).await;
    w.linked_org("acme").await;
    w.contract("one-seat", "acme", "code", json!({"max_learners": 1})).await;
    let codes = w.codes("one-seat", json!({"count": 2})).await;
    assert_eq!(w.redeem("ann", &codes[0]).await.status, 201);
    let before = w.feed("limit=1000").await.events();
    let rows_before = w.change_rows().await;

    let duplicate =
        json!({"key": "one-seat", "organization": "acme", "name": "again", "membership_type": "code"});
    assert_eq!(w.call(Method::POST, "/contracts", Some(duplicate)).await.status, 409);
    let org_again = json!({"key": "acme", "name": "again"});
    assert_eq!(w.call(Method::POST, "/organizations", Some(org_again)).await.status, 409);
    assert_eq!(w.redeem("bob", "ZZZZZ-ZZZZZ-ZZZZZ-ZZZZZ-ZZZZZ").await.status, 404, "never issued");
    for code in &codes {
        assert_eq!(w.redeem("bob", code).await.status, 409, "the contract is full");
    }
    assert_eq!(w.call(Method::DELETE, "/contracts/one-seat", None).await.status, 409, "ann holds it");
    assert_eq!(w.call(Method::DELETE, "/organizations/acme", None).await.status, 409, "it has a contract");
    let bad_patch = json!({"max_learners": -1});
    assert_eq!(w.call(Method::PATCH, "/contracts/one-seat", Some(bad_patch)).await.status, 422);

    assert_eq!(w.change_rows().await, rows_before, "no change row written");
    assert_eq!(w.feed("limit=1000").await.events(), before, "and no event served");
    // A change that works afterwards is the next event, right after the last one.
    assert_eq!(w.redeem("ann", &codes[1]).await.status, 200, "already attached: nothing new");
    w.must(Method::PATCH, "/contracts/one-seat", Some(json!({"max_learners": 2})), 200).await;
    let after =
        w.feed(&format!("after={}", before.last().unwrap()["sequence"].as_str().unwrap())).await.events();
    assert_eq!(kinds(&after), ["identity-sidecar.contract.updated"]);
}

// --- 4. a reader paging while writers commit out of order (PostgreSQL) ---------------------

/// Fifty writers at once — new users whose login attaches an SSO contract, and code
/// redemptions — on twenty connections, so transactions commit out of their insertion order,
/// while two readers page the feed seven events at a time. Once the writers stop and each
/// reader catches up, each has seen every change row exactly once, in increasing sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_paging_during_fifty_concurrent_writers_see_every_event_once_in_order_on_postgres() {
    let w = start_with(Db::Postgres, |env| set(env, "SIDECAR__DATABASE__MAX_CONNECTIONS", "20")).await;
    w.linked_org("acme").await;
    w.linked_org("local").await;
    w.contract("acme-sso", "acme", "auto", json!({})).await;
    w.contract("local-code", "local", "code", json!({})).await;
    let codes = w.codes("local-code", json!({"count": 25})).await;
    let w = std::sync::Arc::new(w);

    let writing = tokio_util::sync::CancellationToken::new();
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (w, writing) = (w.clone(), writing.clone());
        readers.spawn(async move {
            let mut seen: Vec<Value> = Vec::new();
            let mut after = 0i64;
            let mut pages = 0;
            loop {
                let done_writing = writing.is_cancelled();
                let page = w.feed(&format!("after={after}&limit=7")).await.events();
                pages += 1;
                if let Some(last) = page.last() {
                    after = sequence(last);
                }
                let caught_up = page.len() < 7;
                seen.extend(page);
                // Caught up after the writers stopped: nothing committed is left unread.
                if done_writing && caught_up {
                    return (seen, pages);
                }
                if caught_up {
                    // Polling: give the writers the machine between empty reads.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
    }

    let mut writers = tokio::task::JoinSet::new();
    for i in 0..25 {
        let w = w.clone();
        let token = w.token(&format!("sso-{i}"), json!(["acme"]));
        writers.spawn(async move {
            let res = w.app.forward_auth("GET", "/").bearer_auth(token).send().await.unwrap();
            assert_eq!(res.status(), 200);
        });
    }
    for (i, code) in codes.into_iter().enumerate() {
        let w = w.clone();
        writers.spawn(async move {
            let a = w.redeem(&format!("code-{i}"), &code).await;
            assert_eq!(a.status, 201, "{}", a.body);
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Some(result) =
        tokio::time::timeout_at(deadline, writers.join_next()).await.expect("writers finish")
    {
        result.unwrap();
    }
    writing.cancel();

    let rows = w.change_rows().await;
    // Each login: membership + attachment; each redemption: membership + attachment + code.
    let setup = 4;
    assert_eq!(rows.len(), setup + 25 * 2 + 25 * 3);
    let expected: Vec<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    while let Some(result) =
        tokio::time::timeout_at(deadline, readers.join_next()).await.expect("readers catch up")
    {
        let (seen, pages) = result.unwrap();
        let sequences: Vec<i64> = seen.iter().map(sequence).collect();
        assert!(sequences.windows(2).all(|p| p[0] < p[1]), "not strictly increasing: {sequences:?}");
        let seen_ids = ids(&seen);
        let unique: HashSet<&String> = seen_ids.iter().collect();
        assert_eq!(unique.len(), seen_ids.len(), "an event seen twice");
        // The same events, in the same (sequence) order as the database numbered them.
        assert_eq!(seen_ids, expected, "after {pages} pages");
    }
    // Every change row is numbered.
    let unnumbered = w.rows("SELECT id, action FROM audit_events WHERE sequence IS NULL").await;
    assert_eq!(unnumbered, vec![]);
}
