//! Contracts: what an organization's users hold, with validity dates and a seat limit.
//! `seats_used` is maintained by [`super::attachments`] and `seats_allocated` by
//! [`super::assignments`]; nothing here writes them. A contract as read reports in `seats_used`
//! its attachments plus its `allocated` assignments that have not reached `expires_at` (counted
//! live, so an assignment frees its seat at `expires_at` even before its state says `expired`).

use super::codec::{At, now};
use super::model::{Contract, ContractMember, NewContract};
use super::{Backend, Conn, StoreError, page};

from_row!(Contract, |row| Ok(Contract {
    id: row.try_get("id")?,
    organization_id: row.try_get("organization_id")?,
    key: row.try_get("key")?,
    organization: row.try_get("organization")?,
    name: row.try_get("name")?,
    membership_type: row.try_get("membership_type")?,
    active: row.try_get("active")?,
    starts_on: row.try_get("starts_on")?,
    ends_on: row.try_get("ends_on")?,
    max_learners: row.try_get("max_learners")?,
    price: row.try_get("price")?,
    seats_used: row.try_get("seats_used")?,
    created_at: row.try_get("created_at")?,
    updated_at: row.try_get("updated_at")?,
}));

from_row!(ContractMember, |row| Ok(ContractMember {
    sub: row.try_get("sub")?,
    email: row.try_get("email")?,
    username: row.try_get("username")?,
    name: row.try_get("name")?,
    source: row.try_get("source")?,
    created_at: row.try_get("created_at")?,
}));

/// Creates a contract in the organization `new.organization` (`NotFound` if there is none;
/// `Conflict` if the key is taken). Two statements; the second only reads back the row.
pub async fn insert(conn: &mut Conn, new: &NewContract) -> Result<Contract, StoreError> {
    let at = At(now());
    let id = run!(conn, |c| {
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO contracts
                 (key, organization_id, name, membership_type, active, starts_on, ends_on,
                  max_learners, price, seats_used, created_at, updated_at)
             SELECT $1, o.id, $3, $4, $5, $6, $7, $8, $9, 0, $10, $10
               FROM organizations o
              WHERE o.key = $2
             RETURNING id",
        )
        .bind(&new.key)
        .bind(&new.organization)
        .bind(&new.name)
        .bind(new.membership_type)
        .bind(new.active)
        .bind(new.starts_on)
        .bind(new.ends_on)
        .bind(new.max_learners)
        .bind(&new.price)
        .bind(at)
        .fetch_optional(c)
        .await
    })?
    .ok_or(StoreError::NotFound)?;
    get_by_id(conn, id).await
}

/// Replaces the writable fields of the contract `new.key`, including its organization.
/// `NotFound` if the contract or the organization does not exist. `seats_used` is untouched:
/// lowering `max_learners` below it detaches nobody, it only stops new attachments.
pub async fn update(conn: &mut Conn, new: &NewContract) -> Result<Contract, StoreError> {
    let at = At(now());
    let id = run!(conn, |c| {
        sqlx::query_scalar::<_, i64>(
            "UPDATE contracts
                SET organization_id = o.id, name = $3, membership_type = $4, active = $5,
                    starts_on = $6, ends_on = $7, max_learners = $8, price = $9, updated_at = $10
               FROM organizations o
              WHERE contracts.key = $1 AND o.key = $2
             RETURNING contracts.id",
        )
        .bind(&new.key)
        .bind(&new.organization)
        .bind(&new.name)
        .bind(new.membership_type)
        .bind(new.active)
        .bind(new.starts_on)
        .bind(new.ends_on)
        .bind(new.max_learners)
        .bind(&new.price)
        .bind(at)
        .fetch_optional(c)
        .await
    })?
    .ok_or(StoreError::NotFound)?;
    get_by_id(conn, id).await
}

/// The contract with this key.
pub async fn get(conn: &mut Conn, key: &str) -> Result<Contract, StoreError> {
    let contract = run!(conn, |c| {
        sqlx::query_as::<_, Contract>(
            "SELECT c.id, c.organization_id, c.key, o.key AS organization, c.name,
                    c.membership_type, c.active, c.starts_on, c.ends_on, c.max_learners, c.price,
                    c.seats_used + (SELECT count(*) FROM seat_assignments s
                                      WHERE s.contract_id = c.id AND s.state = 'allocated'
                                        AND (s.expires_at IS NULL OR s.expires_at > $2)) AS seats_used,
                    c.created_at, c.updated_at
               FROM contracts c
               JOIN organizations o ON o.id = c.organization_id
              WHERE c.key = $1",
        )
        .bind(key)
        .bind(At(now()))
        .fetch_optional(c)
        .await
    })?;
    contract.ok_or(StoreError::NotFound)
}

/// The contract with this row id.
pub async fn get_by_id(conn: &mut Conn, id: i64) -> Result<Contract, StoreError> {
    let contract = run!(conn, |c| {
        sqlx::query_as::<_, Contract>(
            "SELECT c.id, c.organization_id, c.key, o.key AS organization, c.name,
                    c.membership_type, c.active, c.starts_on, c.ends_on, c.max_learners, c.price,
                    c.seats_used + (SELECT count(*) FROM seat_assignments s
                                      WHERE s.contract_id = c.id AND s.state = 'allocated'
                                        AND (s.expires_at IS NULL OR s.expires_at > $2)) AS seats_used,
                    c.created_at, c.updated_at
               FROM contracts c
               JOIN organizations o ON o.id = c.organization_id
              WHERE c.id = $1",
        )
        .bind(id)
        .bind(At(now()))
        .fetch_optional(c)
        .await
    })?;
    contract.ok_or(StoreError::NotFound)
}

/// One page of contracts in key order, all of them or those of one organization (by key).
pub async fn list(
    conn: &mut Conn,
    organization: Option<&str>,
    limit: u32,
    offset: u32,
) -> Result<Vec<Contract>, StoreError> {
    let (limit, offset) = page(limit, offset);
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, Contract>(
            "SELECT c.id, c.organization_id, c.key, o.key AS organization, c.name,
                    c.membership_type, c.active, c.starts_on, c.ends_on, c.max_learners, c.price,
                    c.seats_used + (SELECT count(*) FROM seat_assignments s
                                      WHERE s.contract_id = c.id AND s.state = 'allocated'
                                        AND (s.expires_at IS NULL OR s.expires_at > $4)) AS seats_used,
                    c.created_at, c.updated_at
               FROM contracts c
               JOIN organizations o ON o.id = c.organization_id
              WHERE $1 IS NULL OR o.key = $1
              ORDER BY c.key
              LIMIT $2 OFFSET $3",
        )
        .bind(organization)
        .bind(limit)
        .bind(offset)
        .bind(At(now()))
        .fetch_all(c)
        .await
    })?)
}

/// Number of contracts, all or of one organization (for paging).
pub async fn count(conn: &mut Conn, organization: Option<&str>) -> Result<i64, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*)
               FROM contracts c
               JOIN organizations o ON o.id = c.organization_id
              WHERE $1 IS NULL OR o.key = $1",
        )
        .bind(organization)
        .fetch_one(c)
        .await
    })?)
}

/// The `auto` and `managed` contracts of these organizations, whatever their dates, in
/// ascending id order (the order in which seat rows must be locked, see the module docs).
pub async fn sso_contracts_of(
    conn: &mut Conn,
    organization_ids: &[i64],
) -> Result<Vec<Contract>, StoreError> {
    if organization_ids.is_empty() {
        return Ok(Vec::new());
    }
    // A set parameter: PostgreSQL array vs SQLite JSON array (as in organizations::matching_claim).
    let contracts = match conn.backend() {
        Backend::Sqlite(c) => {
            sqlx::query_as::<_, Contract>(
                "SELECT c.id, c.organization_id, c.key, o.key AS organization, c.name,
                        c.membership_type, c.active, c.starts_on, c.ends_on, c.max_learners,
                        c.price, c.seats_used + (SELECT count(*) FROM seat_assignments s
                                      WHERE s.contract_id = c.id AND s.state = 'allocated'
                                        AND (s.expires_at IS NULL OR s.expires_at > $2)) AS seats_used,
                    c.created_at, c.updated_at
                   FROM contracts c
                   JOIN organizations o ON o.id = c.organization_id
                  WHERE c.organization_id IN (SELECT value FROM json_each($1))
                    AND c.membership_type IN ('auto', 'managed')
                  ORDER BY c.id",
            )
            .bind(serde_json::to_string(organization_ids).expect("integers serialise"))
            .bind(At(now()))
            .fetch_all(c)
            .await
        }
        Backend::Postgres(c) => {
            sqlx::query_as::<_, Contract>(
                "SELECT c.id, c.organization_id, c.key, o.key AS organization, c.name,
                        c.membership_type, c.active, c.starts_on, c.ends_on, c.max_learners,
                        c.price, c.seats_used + (SELECT count(*) FROM seat_assignments s
                                      WHERE s.contract_id = c.id AND s.state = 'allocated'
                                        AND (s.expires_at IS NULL OR s.expires_at > $2)) AS seats_used,
                    c.created_at, c.updated_at
                   FROM contracts c
                   JOIN organizations o ON o.id = c.organization_id
                  WHERE c.organization_id = ANY($1)
                    AND c.membership_type IN ('auto', 'managed')
                  ORDER BY c.id",
            )
            .bind(organization_ids)
            .bind(At(now()))
            .fetch_all(c)
            .await
        }
    }?;
    Ok(contracts)
}

/// Deletes a contract and its enrollment codes. `InUse` while users are attached to it.
pub async fn delete(conn: &mut Conn, key: &str) -> Result<(), StoreError> {
    let done = run!(conn, |c| {
        sqlx::query("DELETE FROM contracts WHERE key = $1")
            .bind(key)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    if done == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Number of users attached to a contract (for paging its members).
pub async fn member_count(conn: &mut Conn, contract_id: i64) -> Result<i64, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM attachments WHERE contract_id = $1")
            .bind(contract_id)
            .fetch_one(c)
            .await
    })?)
}

/// One page of the users attached to a contract, in `sub` order.
pub async fn members(
    conn: &mut Conn,
    contract_id: i64,
    limit: u32,
    offset: u32,
) -> Result<Vec<ContractMember>, StoreError> {
    let (limit, offset) = page(limit, offset);
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, ContractMember>(
            "SELECT a.sub, u.email, u.username, u.name, a.source, a.created_at
               FROM attachments a
               JOIN users u ON u.sub = a.sub
              WHERE a.contract_id = $1
              ORDER BY a.sub
              LIMIT $2 OFFSET $3",
        )
        .bind(contract_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(c)
        .await
    })?)
}
