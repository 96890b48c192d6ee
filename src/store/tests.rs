//! Contract tests of the store: every test body below runs twice, on SQLite (a file in a fresh
//! temporary directory) and on PostgreSQL (a fresh database with a random name, dropped
//! afterwards, also when the test fails), as `store::tests::on_sqlite::<name>` and
//! `store::tests::on_postgres::<name>`.
//!
//! The databases and the macro are the integration tests' own (`tests/api/helpers/databases.rs`),
//! so PostgreSQL is required here as there: when it cannot be reached the `on_postgres` tests
//! fail with a message saying how to provide it; they never skip. `SIDECAR_TEST_POSTGRES_URL`
//! points them at another server.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use time::macros::date;
use tokio::sync::Barrier;
use uuid::Uuid;

use super::codec::truncate;
use super::*;

#[allow(dead_code, reason = "the integration tests use more of it (closing a database, its URL)")]
#[path = "../../tests/api/helpers/databases.rs"]
mod databases;

use databases::{Db, on_both_databases};

/// Enough connections for the 20-way seat race to really run 20 transactions at once.
const TEST_POOL_SIZE: u32 = 24;

/// Runs `body` against a migrated store on a fresh database of the given kind.
async fn with_store<F, Fut>(db: Db, body: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    // Dropped after the store, also when `body` panics (a PostgreSQL drop forces connections
    // closed).
    let database = db.fresh().await;
    let store = Store::connect(&database.url, TEST_POOL_SIZE).await.expect("open the test database");
    store.migrate().await.expect("migrate");
    body(store.clone()).await;
    store.close().await;
}

on_both_databases!(with with_store:
    migrations_apply_and_a_second_run_changes_nothing,
    organizations_round_trip_and_are_found_by_keycloak_id_and_alias,
    a_taken_key_alias_or_keycloak_id_is_a_conflict_naming_it,
    deleting_an_organization_with_contracts_or_a_contract_with_users_is_in_use,
    organizations_list_in_key_order_page_by_page,
    contracts_keep_dates_price_limits_and_type,
    seats_are_never_oversold_by_concurrent_attaches,
    detaching_frees_a_seat_and_attaching_twice_takes_one,
    transactions_of_one_user_run_one_after_the_other,
    first_logins_of_one_new_user_racing_create_one_row,
    the_jwks_cache_keeps_the_last_good_key_set_per_issuer,
    memberships_carry_flags_and_their_organizations_link,
    user_rows_load_memberships_claimed_organizations_and_sso_contracts,
    audit_events_filter_by_subject_organization_and_contract_newest_first,
    erasing_a_user_frees_their_seats_and_keeps_the_audit_trail,
    members_of_an_organization_and_of_a_contract_page_in_subject_order,
    a_one_time_code_belongs_to_its_first_redeemer,
    jobs_are_claimed_once_retried_and_finished_in_due_order,
    jobs_of_a_family_about_the_same_payload_are_claimed_in_queue_order,
    users_are_found_by_email_ignoring_case_and_walked_in_order,
    every_database_operation_is_counted,
    a_closed_pool_is_unavailable,
);

/// SQLite writers of one process begin in the order they asked (module docs, "Transactions and
/// locks"): six transactions waiting behind an open one begin one after the other, in their
/// arrival order, once it commits. Without the queue they would poll SQLite's lock in
/// `busy_timeout`'s sleeps and begin in whatever order those sleeps ended.
#[tokio::test(flavor = "current_thread")]
async fn sqlite_writers_begin_in_the_order_they_asked() {
    with_store(Db::Sqlite, |store| async move {
        let open = store.begin().await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let waiters: Vec<_> = (0..6)
            .map(|i| {
                let (store, order) = (store.clone(), order.clone());
                tokio::spawn(async move {
                    let tx = store.begin().await.unwrap();
                    order.lock().unwrap().push(i);
                    tx.commit().await.unwrap();
                })
            })
            .collect();
        // A current-thread runtime polls the spawned tasks in spawn order, each until it
        // waits for its turn; yielding lets all six get there.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(order.lock().unwrap().is_empty(), "nobody begins while a writer is open");
        open.commit().await.unwrap();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("each waiter begins").unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4, 5]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Fixtures

fn new_org(key: &str) -> NewOrganization {
    NewOrganization {
        key: key.into(),
        name: format!("{key} Inc."),
        description: String::new(),
        keycloak_id: None,
        keycloak_alias: None,
        email_domains: Vec::new(),
    }
}

fn new_contract(organization: &str, key: &str, membership_type: MembershipType) -> NewContract {
    NewContract {
        key: key.into(),
        organization: organization.into(),
        name: format!("{key} contract"),
        membership_type,
        active: true,
        starts_on: None,
        ends_on: None,
        max_learners: None,
        price: None,
    }
}

async fn add_org(store: &Store, new: NewOrganization) -> Organization {
    organizations::insert(&mut store.conn().await.unwrap(), &new).await.unwrap()
}

async fn add_contract(store: &Store, new: NewContract) -> Contract {
    contracts::insert(&mut store.conn().await.unwrap(), &new).await.unwrap()
}

async fn contract(store: &Store, key: &str) -> Contract {
    contracts::get(&mut store.conn().await.unwrap(), key).await.unwrap()
}

async fn add_user(store: &Store, sub: &str) {
    users::ensure(&mut store.conn().await.unwrap(), sub).await.unwrap();
}

async fn attach(store: &Store, sub: &str, contract_id: i64) -> AttachOutcome {
    let mut tx = store.begin().await.unwrap();
    let outcome = attachments::attach(&mut tx, sub, contract_id, AttachmentSource::Admin).await.unwrap();
    tx.commit().await.unwrap();
    outcome
}

async fn count_rows(store: &Store, table: &str) -> i64 {
    let mut conn = store.conn().await.unwrap();
    let sql = format!("SELECT count(*) FROM {table}");
    run!(conn, |c| { sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.clone())).fetch_one(c).await })
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Contract tests (each runs on both backends)

async fn migrations_apply_and_a_second_run_changes_nothing(store: Store) {
    store.migrate().await.expect("second migrate");
    for table in [
        "organizations",
        "contracts",
        "users",
        "memberships",
        "attachments",
        "audit_events",
        "jwks_cache",
        "enrollment_codes",
        "redemptions",
        "jobs",
        "active_organization_selections",
        "seat_assignments",
    ] {
        assert_eq!(count_rows(&store, table).await, 0, "{table}");
    }
    // One row per migration file, each applied once.
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite")).unwrap().count();
    assert_eq!(count_rows(&store, "_sqlx_migrations").await, files as i64);
}

async fn organizations_round_trip_and_are_found_by_keycloak_id_and_alias(store: Store) {
    let mut conn = store.conn().await.unwrap();
    let kc = Uuid::new_v4();
    let acme = organizations::insert(
        &mut conn,
        &NewOrganization {
            description: "Anvils".into(),
            keycloak_id: Some(kc),
            keycloak_alias: Some("acme-sso".into()),
            ..new_org("acme")
        },
    )
    .await
    .unwrap();
    assert_eq!(acme.key, "acme");
    assert_eq!(acme.description, "Anvils");
    assert!(!acme.is_local());
    assert_eq!(organizations::get(&mut conn, "acme").await.unwrap(), acme);
    assert_eq!(organizations::by_keycloak_id(&mut conn, kc).await.unwrap(), Some(acme.clone()));
    assert_eq!(organizations::by_alias(&mut conn, "acme-sso").await.unwrap(), Some(acme.clone()));
    assert_eq!(organizations::by_alias(&mut conn, "nope").await.unwrap(), None);
    assert!(matches!(organizations::get(&mut conn, "nope").await, Err(StoreError::NotFound)));

    let updated = organizations::update(
        &mut conn,
        &NewOrganization { name: "ACME".into(), keycloak_id: None, keycloak_alias: None, ..new_org("acme") },
    )
    .await
    .unwrap();
    assert_eq!(updated.name, "ACME");
    assert!(updated.is_local());
    assert_eq!(updated.created_at, acme.created_at);
    assert!(updated.updated_at >= acme.updated_at);

    organizations::set_keycloak_id(&mut conn, acme.id, kc).await.unwrap();
    assert_eq!(organizations::get(&mut conn, "acme").await.unwrap().keycloak_id, Some(kc));
    assert!(matches!(organizations::update(&mut conn, &new_org("ghost")).await, Err(StoreError::NotFound)));
}

async fn a_taken_key_alias_or_keycloak_id_is_a_conflict_naming_it(store: Store) {
    let mut conn = store.conn().await.unwrap();
    let kc = Uuid::new_v4();
    organizations::insert(
        &mut conn,
        &NewOrganization { keycloak_id: Some(kc), keycloak_alias: Some("acme".into()), ..new_org("acme") },
    )
    .await
    .unwrap();

    let conflict = |r: Result<Organization, StoreError>| match r {
        Err(e @ StoreError::Conflict { .. }) => e,
        other => panic!("expected a conflict, got {other:?}"),
    };
    let e = conflict(organizations::insert(&mut conn, &new_org("acme")).await);
    assert_eq!(e.to_string(), "organizations.key is already taken");
    assert_eq!(e.conflict_column(), Some("key"));
    let e = conflict(
        organizations::insert(
            &mut conn,
            &NewOrganization { keycloak_alias: Some("acme".into()), ..new_org("other") },
        )
        .await,
    );
    assert_eq!(e.conflict_column(), Some("keycloak_alias"));
    let e = conflict(
        organizations::insert(&mut conn, &NewOrganization { keycloak_id: Some(kc), ..new_org("other") })
            .await,
    );
    assert_eq!(e.conflict_column(), Some("keycloak_id"));

    let other = organizations::insert(&mut conn, &new_org("other")).await.unwrap();
    assert!(matches!(
        organizations::set_keycloak_id(&mut conn, other.id, kc).await,
        Err(StoreError::Conflict { .. })
    ));

    contracts::insert(&mut conn, &new_contract("acme", "c1", MembershipType::Auto)).await.unwrap();
    match contracts::insert(&mut conn, &new_contract("other", "c1", MembershipType::Code)).await {
        Err(StoreError::Conflict { what }) => assert_eq!(what, "contracts.key"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        contracts::insert(&mut conn, &new_contract("ghost", "c2", MembershipType::Code)).await,
        Err(StoreError::NotFound)
    ));
}

async fn deleting_an_organization_with_contracts_or_a_contract_with_users_is_in_use(store: Store) {
    add_org(&store, new_org("acme")).await;
    let c = add_contract(&store, new_contract("acme", "c1", MembershipType::Code)).await;
    let mut conn = store.conn().await.unwrap();
    assert!(matches!(organizations::delete(&mut conn, "acme").await, Err(StoreError::InUse)));

    add_user(&store, "u1").await;
    assert_eq!(attach(&store, "u1", c.id).await, AttachOutcome::Attached);
    assert!(matches!(contracts::delete(&mut conn, "c1").await, Err(StoreError::InUse)));

    let mut tx = store.begin().await.unwrap();
    attachments::detach(&mut tx, "u1", c.id).await.unwrap();
    tx.commit().await.unwrap();
    contracts::delete(&mut conn, "c1").await.unwrap();
    organizations::delete(&mut conn, "acme").await.unwrap();
    assert!(matches!(organizations::delete(&mut conn, "acme").await, Err(StoreError::NotFound)));
    assert!(matches!(contracts::delete(&mut conn, "c1").await, Err(StoreError::NotFound)));
}

async fn organizations_list_in_key_order_page_by_page(store: Store) {
    for key in ["delta", "alpha", "echo", "charlie", "bravo"] {
        add_org(&store, new_org(key)).await;
    }
    let mut conn = store.conn().await.unwrap();
    let mut pages = Vec::new();
    for offset in [0, 2, 4, 6] {
        let page = organizations::list(&mut conn, 2, offset).await.unwrap();
        pages.push(page.into_iter().map(|o| o.key).collect::<Vec<_>>());
    }
    assert_eq!(pages, [vec!["alpha", "bravo"], vec!["charlie", "delta"], vec!["echo"], vec![]]);
    assert_eq!(organizations::count(&mut conn).await.unwrap(), 5);
}

async fn contracts_keep_dates_price_limits_and_type(store: Store) {
    add_org(&store, new_org("acme")).await;
    add_org(&store, new_org("globex")).await;
    let new = NewContract {
        starts_on: Some(date!(2026 - 01 - 01)),
        ends_on: Some(date!(2026 - 12 - 31)),
        max_learners: Some(3),
        price: Some("12.50".into()),
        ..new_contract("acme", "acme-2026", MembershipType::Managed)
    };
    let c = add_contract(&store, new.clone()).await;
    assert_eq!(
        (c.key.as_str(), c.organization.as_str(), c.membership_type, c.active),
        ("acme-2026", "acme", MembershipType::Managed, true)
    );
    assert_eq!((c.starts_on, c.ends_on), (Some(date!(2026 - 01 - 01)), Some(date!(2026 - 12 - 31))));
    assert_eq!((c.max_learners, c.price.as_deref(), c.seats_used), (Some(3), Some("12.50"), 0));
    assert!(c.is_valid_on(date!(2026 - 12 - 31)));
    assert!(!c.is_valid_on(date!(2027 - 01 - 01)));
    assert_eq!(contract(&store, "acme-2026").await, c);

    let mut conn = store.conn().await.unwrap();
    let moved = contracts::update(
        &mut conn,
        &NewContract {
            organization: "globex".into(),
            active: false,
            ends_on: None,
            price: None,
            membership_type: MembershipType::Code,
            ..new.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(moved.organization, "globex");
    assert_eq!(
        (moved.active, moved.ends_on, moved.price, moved.membership_type),
        (false, None, None, MembershipType::Code)
    );
    assert!(matches!(
        contracts::update(&mut conn, &NewContract { organization: "ghost".into(), ..new.clone() }).await,
        Err(StoreError::NotFound)
    ));

    add_contract(&store, new_contract("acme", "acme-auto", MembershipType::Auto)).await;
    let keys = |cs: Vec<Contract>| cs.into_iter().map(|c| c.key).collect::<Vec<_>>();
    assert_eq!(keys(contracts::list(&mut conn, None, 10, 0).await.unwrap()), ["acme-2026", "acme-auto"]);
    assert_eq!(keys(contracts::list(&mut conn, Some("acme"), 10, 0).await.unwrap()), ["acme-auto"]);
    assert_eq!(contracts::count(&mut conn, Some("globex")).await.unwrap(), 1);
    assert_eq!(contracts::count(&mut conn, None).await.unwrap(), 2);
}

async fn seats_are_never_oversold_by_concurrent_attaches(store: Store) {
    add_org(&store, new_org("acme")).await;
    let c = add_contract(
        &store,
        NewContract { max_learners: Some(5), ..new_contract("acme", "five-seats", MembershipType::Auto) },
    )
    .await;

    let start = Arc::new(Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (store, start) = (store.clone(), start.clone());
            tokio::spawn(async move {
                let sub = format!("user-{i:02}");
                start.wait().await;
                let (mut tx, _) = store.begin_user(&sub, None).await.unwrap();
                let outcome = attachments::attach(&mut tx, &sub, c.id, AttachmentSource::Sso).await.unwrap();
                tx.commit().await.unwrap();
                outcome
            })
        })
        .collect();
    let mut attached = 0;
    for task in tasks {
        match task.await.unwrap() {
            AttachOutcome::Attached => attached += 1,
            AttachOutcome::Full => {}
            AttachOutcome::AlreadyAttached => panic!("every task attaches a different user"),
        }
    }
    assert_eq!(attached, 5);
    assert_eq!(contract(&store, "five-seats").await.seats_used, 5);
    assert_eq!(count_rows(&store, "attachments").await, 5);
    assert_eq!(count_rows(&store, "users").await, 20);
}

async fn detaching_frees_a_seat_and_attaching_twice_takes_one(store: Store) {
    add_org(&store, new_org("acme")).await;
    let one = add_contract(
        &store,
        NewContract { max_learners: Some(1), ..new_contract("acme", "one-seat", MembershipType::Code) },
    )
    .await;
    for sub in ["ann", "bob"] {
        add_user(&store, sub).await;
    }
    assert_eq!(attach(&store, "ann", one.id).await, AttachOutcome::Attached);
    assert_eq!(attach(&store, "ann", one.id).await, AttachOutcome::AlreadyAttached);
    assert_eq!(attach(&store, "bob", one.id).await, AttachOutcome::Full);
    assert_eq!(contract(&store, "one-seat").await.seats_used, 1);
    assert!(contract(&store, "one-seat").await.is_full());

    let mut tx = store.begin().await.unwrap();
    assert!(attachments::detach(&mut tx, "ann", one.id).await.unwrap());
    assert!(!attachments::detach(&mut tx, "ann", one.id).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(contract(&store, "one-seat").await.seats_used, 0);
    assert_eq!(attach(&store, "bob", one.id).await, AttachOutcome::Attached);

    // Forcing ignores the limit but still counts the seat.
    let mut tx = store.begin().await.unwrap();
    assert!(attachments::force_attach(&mut tx, "ann", one.id, AttachmentSource::Admin).await.unwrap());
    assert!(!attachments::force_attach(&mut tx, "ann", one.id, AttachmentSource::Admin).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(contract(&store, "one-seat").await.seats_used, 2);

    // 0 and NULL both mean unlimited.
    for (key, max) in [("zero", Some(0)), ("null", None)] {
        let c = add_contract(
            &store,
            NewContract { max_learners: max, ..new_contract("acme", key, MembershipType::Code) },
        )
        .await;
        for sub in ["ann", "bob"] {
            assert_eq!(attach(&store, sub, c.id).await, AttachOutcome::Attached);
        }
        assert_eq!(contract(&store, key).await.seats_used, 2);
    }

    let mut conn = store.conn().await.unwrap();
    let held = attachments::list_for_user(&mut conn, "ann").await.unwrap();
    assert_eq!(held.iter().map(|a| a.contract.as_str()).collect::<Vec<_>>(), ["null", "one-seat", "zero"]);
    assert_eq!(held[1].organization, "acme");
    assert_eq!(held[1].source, AttachmentSource::Admin);
}

async fn transactions_of_one_user_run_one_after_the_other(store: Store) {
    let first = Profile { email: Some("ann@example.com".into()), ..Profile::default() };
    let (mut tx, user) = store.begin_user("ann", Some(&first)).await.unwrap();
    assert_eq!(user.email.as_deref(), Some("ann@example.com"));
    assert!(user.last_login_at.is_some());

    let second = tokio::spawn({
        let store = store.clone();
        async move {
            let profile = Profile { name: Some("Ann".into()), ..Profile::default() };
            let (mut tx, user) = store.begin_user("ann", Some(&profile)).await.unwrap();
            // Sees what the first transaction committed before it got the lock.
            let memberships = memberships::list_for_user(&mut tx, "ann").await.unwrap();
            tx.commit().await.unwrap();
            (user, memberships.len())
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!second.is_finished(), "the second transaction of the same user must wait for the first");

    let org = organizations::insert(&mut tx, &new_org("acme")).await.unwrap();
    memberships::add(&mut tx, "ann", org.id, MembershipSource::Claim, memberships::Flags::default())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let (user, seen) = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second transaction proceeds once the first commits")
        .unwrap();
    assert_eq!(seen, 1);
    assert_eq!(user.email.as_deref(), Some("ann@example.com"), "kept");
    assert_eq!(user.name.as_deref(), Some("Ann"));
    assert_eq!(count_rows(&store, "users").await, 1);
}

async fn first_logins_of_one_new_user_racing_create_one_row(store: Store) {
    let start = Arc::new(Barrier::new(2));
    let tasks: Vec<_> = (0..2)
        .map(|i| {
            let (store, start) = (store.clone(), start.clone());
            tokio::spawn(async move {
                let profile = Profile { username: Some(format!("login-{i}")), ..Profile::default() };
                start.wait().await;
                let (tx, _) = store.begin_user("new-user", Some(&profile)).await.unwrap();
                tx.commit().await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(count_rows(&store, "users").await, 1);
    let user = users::get(&mut store.conn().await.unwrap(), "new-user").await.unwrap();
    assert!(user.username.unwrap().starts_with("login-"));
}

async fn the_jwks_cache_keeps_the_last_good_key_set_per_issuer(store: Store) {
    let mut conn = store.conn().await.unwrap();
    let issuer = "https://sso.example.com/realms/acme";
    assert_eq!(jwks::load(&mut conn, issuer).await.unwrap(), None);

    let t1 = time::macros::datetime!(2026-11-21 10:00:00.123456789 UTC);
    jwks::save(&mut conn, issuer, r#"{"keys":[{"kid":"a"}]}"#, t1).await.unwrap();
    let t2 = t1 + time::Duration::minutes(5);
    jwks::save(&mut conn, issuer, r#"{"keys":[{"kid":"b"}]}"#, t2).await.unwrap();
    jwks::save(&mut conn, "https://other", "{}", t1).await.unwrap();

    let cached = jwks::load(&mut conn, issuer).await.unwrap().unwrap();
    assert_eq!(cached.jwks, r#"{"keys":[{"kid":"b"}]}"#);
    assert_eq!(cached.fetched_at, truncate(t2), "microsecond precision, UTC");
}

async fn memberships_carry_flags_and_their_organizations_link(store: Store) {
    let kc = Uuid::new_v4();
    let acme = add_org(&store, NewOrganization { keycloak_id: Some(kc), ..new_org("acme") }).await;
    let local = add_org(&store, new_org("local")).await;
    add_user(&store, "ann").await;
    let mut conn = store.conn().await.unwrap();

    assert!(
        memberships::add(&mut conn, "ann", acme.id, MembershipSource::Claim, memberships::Flags::default())
            .await
            .unwrap()
    );
    assert!(
        !memberships::add(
            &mut conn,
            "ann",
            acme.id,
            MembershipSource::Code,
            memberships::Flags { keep_until_seen: true, manager: true }
        )
        .await
        .unwrap(),
        "an existing membership is left alone"
    );
    assert!(
        memberships::upsert(
            &mut conn,
            "ann",
            local.id,
            MembershipSource::Admin,
            memberships::Flags { keep_until_seen: true, manager: true }
        )
        .await
        .unwrap()
    );

    let list = memberships::list_for_user(&mut conn, "ann").await.unwrap();
    assert_eq!(list.len(), 2);
    let (m_acme, m_local) = (&list[0], &list[1]);
    assert_eq!(
        (m_acme.organization.as_str(), m_acme.keycloak_id, m_acme.is_local()),
        ("acme", Some(kc), false)
    );
    assert_eq!(
        (m_acme.keep_until_seen, m_acme.manager, m_acme.source),
        (false, false, MembershipSource::Claim)
    );
    assert_eq!(m_acme.organization_name, "acme Inc.");
    assert_eq!((m_local.is_local(), m_local.keep_until_seen, m_local.manager), (true, true, true));

    assert!(memberships::set_flags(&mut conn, "ann", acme.id, None, Some(true)).await.unwrap());
    assert!(
        !memberships::upsert(
            &mut conn,
            "ann",
            acme.id,
            MembershipSource::Admin,
            memberships::Flags { keep_until_seen: true, manager: true }
        )
        .await
        .unwrap()
    );
    let m = memberships::get(&mut conn, "ann", acme.id).await.unwrap().unwrap();
    assert_eq!(
        (m.keep_until_seen, m.manager, m.source),
        (true, true, MembershipSource::Claim),
        "upsert sets the flags and keeps the source"
    );
    assert!(!memberships::set_flags(&mut conn, "bob", acme.id, Some(true), None).await.unwrap());

    assert!(memberships::delete(&mut conn, "ann", acme.id).await.unwrap());
    assert!(!memberships::delete(&mut conn, "ann", acme.id).await.unwrap());
    assert_eq!(memberships::get(&mut conn, "ann", acme.id).await.unwrap(), None);

    // Deleting an organization ends its memberships.
    organizations::delete(&mut conn, "local").await.unwrap();
    assert!(memberships::list_for_user(&mut conn, "ann").await.unwrap().is_empty());
}

async fn user_rows_load_memberships_claimed_organizations_and_sso_contracts(store: Store) {
    let acme_id = Uuid::new_v4();
    let acme = add_org(
        &store,
        NewOrganization {
            keycloak_id: Some(acme_id),
            keycloak_alias: Some("acme".into()),
            ..new_org("acme")
        },
    )
    .await;
    add_org(&store, NewOrganization { keycloak_alias: Some("globex".into()), ..new_org("globex") }).await;
    let initech =
        add_org(&store, NewOrganization { keycloak_alias: Some("initech".into()), ..new_org("initech") })
            .await;
    let local = add_org(&store, new_org("local")).await;
    let acme_auto = add_contract(&store, new_contract("acme", "acme-auto", MembershipType::Auto)).await;
    add_contract(&store, new_contract("acme", "acme-code", MembershipType::Code)).await;
    add_contract(&store, new_contract("globex", "globex-managed", MembershipType::Managed)).await;
    let initech_managed =
        add_contract(&store, new_contract("initech", "initech-managed", MembershipType::Managed)).await;
    let local_auto = add_contract(&store, new_contract("local", "local-auto", MembershipType::Auto)).await;

    let (mut tx, _) = store.begin_user("ann", None).await.unwrap();
    memberships::add(&mut tx, "ann", acme.id, MembershipSource::Claim, memberships::Flags::default())
        .await
        .unwrap();
    memberships::add(
        &mut tx,
        "ann",
        local.id,
        MembershipSource::Admin,
        memberships::Flags { keep_until_seen: true, manager: false },
    )
    .await
    .unwrap();
    attachments::attach(&mut tx, "ann", acme_auto.id, AttachmentSource::Sso).await.unwrap();

    let before = store.queries();
    let rows = user_rows::load(
        &mut tx,
        "ann",
        &[acme_id, Uuid::new_v4()],
        &["initech".to_string(), "unknown".to_string()],
    )
    .await
    .unwrap();
    assert_eq!(store.queries() - before, 3, "three statements");
    tx.commit().await.unwrap();

    let keys = |it: Vec<&str>| it.into_iter().map(String::from).collect::<Vec<_>>();
    assert_eq!(
        rows.memberships.iter().map(|m| m.organization.as_str()).collect::<Vec<_>>(),
        keys(vec!["acme", "local"])
    );
    assert_eq!(
        rows.attachments.iter().map(|a| a.contract.as_str()).collect::<Vec<_>>(),
        keys(vec!["acme-auto"])
    );
    assert_eq!(rows.claimed.iter().map(|o| o.id).collect::<Vec<_>>(), [acme.id, initech.id]);
    assert_eq!(
        rows.sso_contracts.iter().map(|c| c.id).collect::<Vec<_>>(),
        [acme_auto.id, initech_managed.id, local_auto.id],
        "auto/managed contracts of member and claimed organizations, by id"
    );

    // The combined read of memberships and attachments gives, field for field, what the two
    // separate reads give.
    let mut conn = store.conn().await.unwrap();
    assert_eq!(rows.memberships, memberships::list_for_user(&mut conn, "ann").await.unwrap());
    assert_eq!(rows.attachments, attachments::list_for_user(&mut conn, "ann").await.unwrap());
    assert!(rows.memberships[0].keycloak_id.is_some() && rows.memberships[1].keep_until_seen);
    assert_eq!(user_rows::held(&mut conn, "nobody").await.unwrap(), (Vec::new(), Vec::new()));

    // An empty claim matches nothing, without a statement.
    assert!(organizations::matching_claim(&mut conn, &[], &[]).await.unwrap().is_empty());
}

async fn audit_events_filter_by_subject_organization_and_contract_newest_first(store: Store) {
    let mut conn = store.conn().await.unwrap();
    let event = |action: &str, sub: &str, org: Option<&str>, contract: Option<&str>| NewAuditEvent {
        actor: "login".into(),
        action: action.into(),
        sub: Some(sub.into()),
        organization: org.map(String::from),
        contract: contract.map(String::from),
        reason: Some("claimed".into()),
        detail: Some(serde_json::json!({"seats": 5})),
    };
    let mut ids = Vec::new();
    for e in [
        event("membership.added", "ann", Some("acme"), None),
        event("attachment.added", "ann", Some("acme"), Some("acme-auto")),
        event("membership.added", "bob", Some("acme"), None),
        event("attachment.skipped_full", "bob", Some("acme"), Some("acme-auto")),
        event("membership.added", "bob", Some("globex"), None),
    ] {
        ids.push(audit::insert(&mut conn, &e).await.unwrap());
    }
    let actions = |events: Vec<AuditEvent>| events.into_iter().map(|e| e.id).collect::<Vec<_>>();
    let q = |sub: Option<&str>, org: Option<&str>, contract: Option<&str>, limit| AuditQuery {
        sub: sub.map(String::from),
        organization: org.map(String::from),
        contract: contract.map(String::from),
        before_id: None,
        limit,
    };
    assert_eq!(
        actions(audit::query(&mut conn, &q(Some("bob"), None, None, 10)).await.unwrap()),
        [ids[4], ids[3], ids[2]]
    );
    assert_eq!(
        actions(audit::query(&mut conn, &q(None, Some("acme"), None, 2)).await.unwrap()),
        [ids[3], ids[2]]
    );
    assert_eq!(
        actions(audit::query(&mut conn, &q(Some("ann"), Some("acme"), Some("acme-auto"), 10)).await.unwrap()),
        [ids[1]]
    );
    let page = AuditQuery { before_id: Some(ids[3]), ..q(None, None, None, 2) };
    assert_eq!(actions(audit::query(&mut conn, &page).await.unwrap()), [ids[2], ids[1]]);
    let all = audit::query(&mut conn, &q(None, None, None, 100)).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].detail, Some(serde_json::json!({"seats": 5})));
    assert_eq!(all[0].reason.as_deref(), Some("claimed"));
}

async fn erasing_a_user_frees_their_seats_and_keeps_the_audit_trail(store: Store) {
    let acme = add_org(&store, new_org("acme")).await;
    let c1 = add_contract(
        &store,
        NewContract { max_learners: Some(2), ..new_contract("acme", "c1", MembershipType::Code) },
    )
    .await;
    let c2 = add_contract(&store, new_contract("acme", "c2", MembershipType::Code)).await;
    for sub in ["ann", "bob"] {
        add_user(&store, sub).await;
        attach(&store, sub, c1.id).await;
    }
    attach(&store, "ann", c2.id).await;
    let mut tx = store.begin().await.unwrap();
    memberships::add(
        &mut tx,
        "ann",
        acme.id,
        MembershipSource::Code,
        memberships::Flags { keep_until_seen: true, manager: false },
    )
    .await
    .unwrap();
    codes::insert(
        &mut tx,
        c1.id,
        &[NewEnrollmentCode {
            code: "code-1".into(),
            redemption: Redemption::Unlimited,
            activates_at: None,
            expires_at: None,
        }],
    )
    .await
    .unwrap();
    let code = codes::find(&mut tx, "code-1").await.unwrap().unwrap();
    codes::record_redemption(&mut tx, code.id, "ann", now()).await.unwrap();
    audit::insert(
        &mut tx,
        &NewAuditEvent {
            actor: "code".into(),
            action: "attachment.added".into(),
            sub: Some("ann".into()),
            ..NewAuditEvent::default()
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    assert!(users::erase(&mut tx, "ann").await.unwrap());
    assert!(!users::erase(&mut tx, "ann").await.unwrap());
    tx.commit().await.unwrap();

    assert_eq!(contract(&store, "c1").await.seats_used, 1);
    assert_eq!(contract(&store, "c2").await.seats_used, 0);
    let mut conn = store.conn().await.unwrap();
    assert!(matches!(users::get(&mut conn, "ann").await, Err(StoreError::NotFound)));
    assert!(users::get(&mut conn, "bob").await.is_ok());
    assert_eq!(count_rows(&store, "memberships").await, 0);
    assert_eq!(count_rows(&store, "redemptions").await, 0);
    assert_eq!(count_rows(&store, "attachments").await, 1);
    let trail =
        audit::query(&mut conn, &AuditQuery { sub: Some("ann".into()), limit: 10, ..AuditQuery::default() })
            .await
            .unwrap();
    assert_eq!(trail.len(), 1);
}

async fn members_of_an_organization_and_of_a_contract_page_in_subject_order(store: Store) {
    let acme = add_org(&store, new_org("acme")).await;
    let c = add_contract(&store, new_contract("acme", "c1", MembershipType::Auto)).await;
    for sub in ["carol", "ann", "bob"] {
        let profile = Profile { email: Some(format!("{sub}@example.com")), ..Profile::default() };
        let (mut tx, _) = store.begin_user(sub, Some(&profile)).await.unwrap();
        memberships::add(
            &mut tx,
            sub,
            acme.id,
            MembershipSource::Claim,
            memberships::Flags { keep_until_seen: false, manager: sub == "ann" },
        )
        .await
        .unwrap();
        attachments::attach(&mut tx, sub, c.id, AttachmentSource::Sso).await.unwrap();
        tx.commit().await.unwrap();
    }
    let mut conn = store.conn().await.unwrap();
    let page1 = organizations::members(&mut conn, acme.id, 2, 0).await.unwrap();
    let page2 = organizations::members(&mut conn, acme.id, 2, 2).await.unwrap();
    assert_eq!(
        page1.iter().chain(&page2).map(|m| m.sub.as_str()).collect::<Vec<_>>(),
        ["ann", "bob", "carol"]
    );
    assert!(page1[0].manager);
    assert_eq!(page1[0].email.as_deref(), Some("ann@example.com"));

    let holders = contracts::members(&mut conn, c.id, 10, 1).await.unwrap();
    assert_eq!(holders.iter().map(|m| m.sub.as_str()).collect::<Vec<_>>(), ["bob", "carol"]);
    assert_eq!(holders[0].source, AttachmentSource::Sso);
}

async fn a_one_time_code_belongs_to_its_first_redeemer(store: Store) {
    add_org(&store, new_org("acme")).await;
    let c = add_contract(&store, new_contract("acme", "c1", MembershipType::Code)).await;
    for sub in ["ann", "bob"] {
        add_user(&store, sub).await;
    }
    let expires = now() + time::Duration::days(30);
    let mut tx = store.begin().await.unwrap();
    let created = codes::insert(
        &mut tx,
        c.id,
        &[
            NewEnrollmentCode {
                code: "one-a".into(),
                redemption: Redemption::OneTime,
                activates_at: None,
                expires_at: Some(expires),
            },
            NewEnrollmentCode {
                code: "one-b".into(),
                redemption: Redemption::OneTime,
                activates_at: Some(now() + time::Duration::days(1)),
                expires_at: None,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(created, 2);
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    assert!(matches!(
        codes::insert(
            &mut tx,
            c.id,
            &[NewEnrollmentCode {
                code: "one-a".into(),
                redemption: Redemption::Unlimited,
                activates_at: None,
                expires_at: None,
            }],
        )
        .await,
        Err(StoreError::Conflict { .. })
    ));
    drop(tx);

    let mut tx = store.begin().await.unwrap();
    let code = codes::find(&mut tx, "one-a").await.unwrap().unwrap();
    assert_eq!(
        (code.contract.as_str(), code.redemption, code.expires_at),
        ("c1", Redemption::OneTime, Some(expires))
    );
    assert!(code.is_usable_at(now()));
    assert!(codes::claim_one_time(&mut tx, code.id, "ann").await.unwrap());
    assert!(codes::claim_one_time(&mut tx, code.id, "ann").await.unwrap(), "again: still ann's");
    assert!(!codes::claim_one_time(&mut tx, code.id, "bob").await.unwrap());
    assert!(codes::record_redemption(&mut tx, code.id, "ann", now()).await.unwrap());
    assert!(!codes::record_redemption(&mut tx, code.id, "ann", now()).await.unwrap());
    tx.commit().await.unwrap();

    let mut conn = store.conn().await.unwrap();
    let code = codes::find(&mut conn, "one-a").await.unwrap().unwrap();
    assert_eq!((code.redeemed_by.as_deref(), code.redemptions), (Some("ann"), 1));
    assert!(!codes::revoke(&mut conn, "one-a").await.unwrap(), "redeemed codes stay");
    assert!(codes::revoke(&mut conn, "one-b").await.unwrap());
    assert!(!codes::revoke(&mut conn, "one-b").await.unwrap());
    assert!(!codes::revoke(&mut conn, "nope").await.unwrap());
    let listed = codes::list_for_contract(&mut conn, c.id, 10, 0).await.unwrap();
    assert_eq!(listed.iter().map(|c| c.code.as_str()).collect::<Vec<_>>(), ["one-a", "one-b"]);
    assert!(listed[1].revoked_at.is_some());
    assert!(!listed[1].is_usable_at(now()));
    assert_eq!(codes::find(&mut conn, "nope").await.unwrap(), None);
}

async fn jobs_are_claimed_once_retried_and_finished_in_due_order(store: Store) {
    let mut conn = store.conn().await.unwrap();
    let t0 = time::macros::datetime!(2026-11-21 10:00:00 UTC);
    let payload = serde_json::json!({"sub": "ann", "organization": "acme"});
    // Due half a second later than `early`: on SQLite this only sorts right with fixed-width
    // timestamps ("…:00.500000Z" after "…:00.000000Z", whereas "…:00Z" sorts after "…:00.5Z").
    let late =
        jobs::enqueue(&mut conn, "push", &payload, t0 + time::Duration::milliseconds(500)).await.unwrap();
    let early = jobs::enqueue(&mut conn, "push", &payload, t0).await.unwrap();
    jobs::enqueue(&mut conn, "other", &payload, t0).await.unwrap();
    assert_eq!(jobs::pending(&mut conn, "push").await.unwrap(), 2);

    let now = t0 + time::Duration::seconds(1);
    let lease = now + time::Duration::seconds(60);
    let first = jobs::claim(&mut conn, "push", now, lease).await.unwrap().unwrap();
    assert_eq!(first.id, early.id);
    assert_eq!((first.status, first.attempts), (JobStatus::Running, 1));
    assert_eq!(first.payload, payload);
    let second = jobs::claim(&mut conn, "push", now, lease).await.unwrap().unwrap();
    assert_eq!(second.id, late.id);
    assert_eq!(jobs::claim(&mut conn, "push", now, lease).await.unwrap(), None, "both leased");

    jobs::retry(&mut conn, first.id, "keycloak: 503", now).await.unwrap();
    let again = jobs::claim(&mut conn, "push", now, lease).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempts), (first.id, 2));
    assert_eq!(again.last_error.as_deref(), Some("keycloak: 503"));
    jobs::set_progress(&mut conn, again.id, &serde_json::json!({"done": 1}), lease).await.unwrap();
    jobs::complete(&mut conn, again.id).await.unwrap();
    let done = jobs::get(&mut conn, again.id).await.unwrap();
    assert_eq!(done.status, JobStatus::Done);
    assert_eq!(done.progress, Some(serde_json::json!({"done": 1})));

    // A worker that died leaves its lease to expire; then the job is claimable again.
    let later = lease + time::Duration::seconds(1);
    let reclaimed =
        jobs::claim(&mut conn, "push", later, later + time::Duration::seconds(60)).await.unwrap().unwrap();
    assert_eq!((reclaimed.id, reclaimed.attempts), (late.id, 2));
    jobs::fail(&mut conn, late.id, "gave up").await.unwrap();
    assert_eq!(jobs::get(&mut conn, late.id).await.unwrap().status, JobStatus::Failed);
    assert_eq!(jobs::pending(&mut conn, "push").await.unwrap(), 0);
    assert!(matches!(jobs::get(&mut conn, 999_999).await, Err(StoreError::NotFound)));
    assert!(matches!(jobs::complete(&mut conn, 999_999).await, Err(StoreError::NotFound)));
}

async fn jobs_of_a_family_about_the_same_payload_are_claimed_in_queue_order(store: Store) {
    let mut conn = store.conn().await.unwrap();
    let t0 = time::macros::datetime!(2026-11-21 10:00:00 UTC);
    let (ann, bob) = (serde_json::json!({"sub": "ann"}), serde_json::json!({"sub": "bob"}));
    let family = ["add", "remove"];
    // Ann's removal is due before her add, but was queued after it.
    let add_ann = jobs::enqueue(&mut conn, "add", &ann, t0 + time::Duration::seconds(1)).await.unwrap();
    let remove_ann = jobs::enqueue(&mut conn, "remove", &ann, t0).await.unwrap();
    let remove_bob = jobs::enqueue(&mut conn, "remove", &bob, t0).await.unwrap();

    let now = t0 + time::Duration::seconds(2);
    let lease = now + time::Duration::seconds(60);
    let claim = async |conn: &mut Conn, kind: &str| {
        jobs::claim_in_order(conn, kind, family, now, lease).await.unwrap().map(|j| j.id)
    };
    assert_eq!(claim(&mut conn, "remove").await, Some(remove_bob.id), "Bob has nothing before");
    assert_eq!(claim(&mut conn, "remove").await, None, "Ann's removal waits for her add");
    assert_eq!(claim(&mut conn, "add").await, Some(add_ann.id));
    assert_eq!(claim(&mut conn, "remove").await, None, "a running add still holds it back");
    jobs::retry(&mut conn, add_ann.id, "keycloak: 503", now).await.unwrap();
    assert_eq!(claim(&mut conn, "remove").await, None, "so does a retrying one");
    assert_eq!(claim(&mut conn, "add").await, Some(add_ann.id));
    jobs::complete(&mut conn, add_ann.id).await.unwrap();
    assert_eq!(claim(&mut conn, "remove").await, Some(remove_ann.id));

    // A failed job holds nothing back.
    let add_again = jobs::enqueue(&mut conn, "add", &bob, t0).await.unwrap();
    assert_eq!(claim(&mut conn, "add").await, None, "Bob's removal is still running");
    jobs::fail(&mut conn, remove_bob.id, "gave up").await.unwrap();
    assert_eq!(claim(&mut conn, "add").await, Some(add_again.id));
}

async fn users_are_found_by_email_ignoring_case_and_walked_in_order(store: Store) {
    for (sub, email) in [("u3", "Ann@Example.com"), ("u1", "ann@example.com"), ("u2", "bob@example.com")] {
        let profile = Profile { email: Some(email.into()), username: Some(sub.into()), name: None };
        let (tx, _) = store.begin_user(sub, Some(&profile)).await.unwrap();
        tx.commit().await.unwrap();
    }
    let mut conn = store.conn().await.unwrap();
    let found = users::find_by_email(&mut conn, "ANN@example.COM").await.unwrap();
    assert_eq!(found.iter().map(|u| u.sub.as_str()).collect::<Vec<_>>(), ["u1", "u3"]);
    assert!(users::find_by_email(&mut conn, "nobody@example.com").await.unwrap().is_empty());

    assert_eq!(users::subs_after(&mut conn, None, 2).await.unwrap(), ["u1", "u2"]);
    assert_eq!(users::subs_after(&mut conn, Some("u2"), 2).await.unwrap(), ["u3"]);
    assert_eq!(users::count(&mut conn).await.unwrap(), 3);

    // A login without an email keeps the last known one.
    let (tx, user) = store.begin_user("u2", Some(&Profile::default())).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(user.email.as_deref(), Some("bob@example.com"));
}

async fn every_database_operation_is_counted(store: Store) {
    add_org(&store, new_org("acme")).await;
    let before = store.queries();
    let mut conn = store.conn().await.unwrap();
    organizations::get(&mut conn, "acme").await.unwrap();
    organizations::list(&mut conn, 10, 0).await.unwrap();
    drop(conn);
    assert_eq!(store.queries() - before, 3, "one checkout, two statements");

    let before = store.queries();
    let (tx, _) = store.begin_user("ann", None).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.queries() - before, 3, "BEGIN, upsert, COMMIT");

    let idle = store.queries();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.queries(), idle, "nothing happens on its own");
}

async fn a_closed_pool_is_unavailable(store: Store) {
    store.ping().await.unwrap();
    store.close().await;
    let err = store.conn().await.err().expect("closed");
    assert!(err.is_unavailable(), "{err}");
    assert!(store.ping().await.unwrap_err().is_unavailable());
}

// ---------------------------------------------------------------------------------------------
// Not per backend

#[test]
fn every_migration_file_is_embedded_in_its_migrator() {
    for (backend, postgres) in [("sqlite", false), ("postgres", true)] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(backend);
        let mut files: Vec<(i64, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| {
                let name = entry.unwrap().file_name().into_string().unwrap();
                let version = name.split('_').next().unwrap().parse().unwrap();
                let sql = std::fs::read_to_string(dir.join(&name)).unwrap();
                (version, sql)
            })
            .collect();
        files.sort();
        let embedded: Vec<(i64, String)> =
            migrator(postgres).iter().map(|m| (m.version, m.sql.as_str().to_string())).collect();
        assert_eq!(embedded, files, "{backend}: list every migration file in store::migrator");
    }
}

#[tokio::test]
async fn an_in_memory_sqlite_database_is_shared_by_the_pool_and_outlives_idle_connections() {
    let store = Store::connect("sqlite::memory:", 4).await.unwrap();
    store.migrate().await.unwrap();
    add_org(&store, new_org("acme")).await;
    // Hold several connections at once: each must see the same database.
    let mut a = store.conn().await.unwrap();
    let mut b = store.conn().await.unwrap();
    assert_eq!(organizations::count(&mut a).await.unwrap(), 1);
    assert_eq!(organizations::count(&mut b).await.unwrap(), 1);
}

/// Compile-time check: store futures can be spawned and held across awaits in handlers.
#[allow(dead_code)] // only compiled, never called
fn store_futures_are_send(store: Store, mut conn: Conn, mut tx: Tx) {
    fn send<T: Send>(_: T) {}
    send(store.begin_user("s", None));
    send(store.conn());
    send(audit::query(&mut conn, &AuditQuery::default()));
    send(user_rows::load(&mut conn, "s", &[], &[]));
    send(attachments::attach(&mut tx, "s", 1, AttachmentSource::Sso));
    send(users::erase(&mut tx, "s"));
    send(jobs::claim(&mut conn, "k", now(), now()));
    send(tx.commit());
}

#[tokio::test]
async fn a_database_url_of_another_kind_is_refused_without_echoing_it() {
    let err = Store::connect("mysql://root:hunter2@db/x", 1).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("must start with sqlite:"), "{text}");
    assert!(!text.contains("hunter2"));
}

/// docs/contract.md §13: a row that commits after a later-inserted row was numbered gets a
/// number above it, so a reader resuming after the highest sequence it saw misses nothing;
/// and a numbering step that waits (the pull feed's) finds every row committed before it even
/// while another step holds the lock. PostgreSQL: the backend where two writers are open at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_late_is_numbered_after_what_a_reader_has_seen_on_postgres() {
    with_store(Db::Postgres, |store| async move {
        let event = |sub: &str| NewAuditEvent {
            actor: "login".into(),
            action: "membership.add".into(),
            sub: Some(sub.into()),
            organization: None,
            contract: None,
            reason: None,
            detail: None,
        };
        let actions = ["membership.add"];
        let read = async |after: i64| {
            let mut conn = store.conn().await.unwrap();
            let rows = events::after(&mut conn, after, i64::MAX, &actions, 100).await.unwrap();
            rows.into_iter().map(|r| (r.sequence, r.audit.sub.unwrap())).collect::<Vec<_>>()
        };
        // `early` is inserted first and commits last.
        let mut early = store.begin().await.unwrap();
        audit::insert(&mut early, &event("early")).await.unwrap();
        let mut late = store.begin().await.unwrap();
        audit::insert(&mut late, &event("late")).await.unwrap();
        late.commit().await.unwrap();
        assert_eq!(events::sequence_pending(&store).await.unwrap(), 1);
        assert_eq!(read(0).await, [(1, "late".to_owned())]);
        early.commit().await.unwrap();
        assert_eq!(read(1).await, [], "committed, not numbered yet: invisible to the feed");
        assert_eq!(events::sequence_pending(&store).await.unwrap(), 1);
        assert_eq!(read(1).await, [(2, "early".to_owned())], "numbered above what the reader saw");

        // Another step holds the lock: the non-waiting step leaves the row to it, the waiting
        // one waits until it is gone and numbers the row committed before it was called.
        let mut other = store.begin().await.unwrap();
        let Backend::Postgres(c) = other.backend() else { unreachable!("a PostgreSQL store") };
        // The sequencing step's lock key ("idsc").
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(0x6964_7363_i64).execute(c).await.unwrap();
        let mut conn = store.conn().await.unwrap();
        audit::insert(&mut conn, &event("third")).await.unwrap();
        drop(conn);
        assert_eq!(events::sequence_pending(&store).await.unwrap(), 0, "another step runs");
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { events::sequence_committed(&store).await.unwrap() }
        });
        // Until PostgreSQL shows it queued behind the lock.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut conn = store.conn().await.unwrap();
            let Backend::Postgres(c) = conn.backend() else { unreachable!() };
            let queued: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_locks
                      WHERE locktype = 'advisory' AND NOT granted AND objid = 1768190819
                        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(c)
            .await
            .unwrap();
            if queued == 1 {
                break;
            }
            assert!(!waiting.is_finished(), "the waiting step did not wait for the lock");
            assert!(tokio::time::Instant::now() < deadline, "the waiting step never queued");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!waiting.is_finished());
        other.rollback().await.unwrap();
        assert_eq!(waiting.await.unwrap(), 1);
        assert_eq!(read(2).await, [(3, "third".to_owned())]);
    })
    .await;
}
