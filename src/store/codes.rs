//! Enrollment codes and their redemptions (docs/contract.md §7). The redeem flow composes these with
//! [`super::attachments::attach`] and [`super::memberships::add`] in one [`Tx`]:
//! [`find`] → judge validity → [`claim_one_time`] (one-time codes) → attach → [`record_redemption`].
//!
//! Codes are stored as issued, not hashed: admins list and export them (JSON/CSV) to hand them
//! out, so the store must give them back. They are never logged.

use time::OffsetDateTime;

use super::codec::{At, now};
use super::model::{EnrollmentCode, NewEnrollmentCode};
use super::{Conn, StoreError, Tx, page};

/// What `redeemed_by` holds after the user who redeemed a one-time code was erased
/// ([`super::users::erase`]): the code stays spent, the link to the person is gone. Not a
/// Keycloak subject (those are UUIDs), so no user can ever match it.
pub const ERASED_REDEEMER: &str = "(erased)";

from_row!(EnrollmentCode, |row| Ok(EnrollmentCode {
    id: row.try_get("id")?,
    code: row.try_get("code")?,
    contract_id: row.try_get("contract_id")?,
    contract: row.try_get("contract")?,
    redemption: row.try_get("redemption")?,
    activates_at: row.try_get("activates_at")?,
    expires_at: row.try_get("expires_at")?,
    revoked_at: row.try_get("revoked_at")?,
    redeemed_by: row.try_get("redeemed_by")?,
    redeemed_at: row.try_get("redeemed_at")?,
    redemptions: row.try_get("redemptions")?,
    created_at: row.try_get("created_at")?,
}));

/// Creates codes for a contract, all or none (`Conflict` if a code already exists).
/// Returns how many were created.
pub async fn insert(tx: &mut Tx, contract_id: i64, codes: &[NewEnrollmentCode]) -> Result<u64, StoreError> {
    let at = At(now());
    for code in codes {
        run!(tx, |c| {
            sqlx::query(
                "INSERT INTO enrollment_codes
                     (code, contract_id, redemption, activates_at, expires_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&code.code)
            .bind(contract_id)
            .bind(code.redemption)
            .bind(code.activates_at.map(At))
            .bind(code.expires_at.map(At))
            .bind(at)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
    }
    Ok(codes.len() as u64)
}

/// The code, with its contract's key and redemption count.
pub async fn find(conn: &mut Conn, code: &str) -> Result<Option<EnrollmentCode>, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, EnrollmentCode>(
            "SELECT e.id, e.code, e.contract_id, c.key AS contract, e.redemption, e.activates_at,
                    e.expires_at, e.revoked_at, e.redeemed_by,
                    (SELECT r.at FROM redemptions r
                      WHERE r.code_id = e.id AND r.sub = e.redeemed_by) AS redeemed_at,
                    (SELECT count(*) FROM redemptions r WHERE r.code_id = e.id) AS redemptions,
                    e.created_at
               FROM enrollment_codes e
               JOIN contracts c ON c.id = e.contract_id
              WHERE e.code = $1",
        )
        .bind(code)
        .fetch_optional(c)
        .await
    })?)
}

/// How many codes the contract has.
pub async fn count_for_contract(conn: &mut Conn, contract_id: i64) -> Result<i64, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM enrollment_codes WHERE contract_id = $1")
            .bind(contract_id)
            .fetch_one(c)
            .await
    })?)
}

/// One page of a contract's codes, oldest first.
pub async fn list_for_contract(
    conn: &mut Conn,
    contract_id: i64,
    limit: u32,
    offset: u32,
) -> Result<Vec<EnrollmentCode>, StoreError> {
    let (limit, offset) = page(limit, offset);
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, EnrollmentCode>(
            "SELECT e.id, e.code, e.contract_id, c.key AS contract, e.redemption, e.activates_at,
                    e.expires_at, e.revoked_at, e.redeemed_by,
                    (SELECT r.at FROM redemptions r
                      WHERE r.code_id = e.id AND r.sub = e.redeemed_by) AS redeemed_at,
                    (SELECT count(*) FROM redemptions r WHERE r.code_id = e.id) AS redemptions,
                    e.created_at
               FROM enrollment_codes e
               JOIN contracts c ON c.id = e.contract_id
              WHERE e.contract_id = $1
              ORDER BY e.id
              LIMIT $2 OFFSET $3",
        )
        .bind(contract_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(c)
        .await
    })?)
}

/// Revokes a code nobody has redeemed yet. Returns whether it was revoked now (false: unknown,
/// already revoked or already redeemed — [`find`] tells which).
pub async fn revoke(conn: &mut Conn, code: &str) -> Result<bool, StoreError> {
    let at = At(now());
    let done = run!(conn, |c| {
        sqlx::query(
            "UPDATE enrollment_codes
                SET revoked_at = $2
              WHERE code = $1
                AND revoked_at IS NULL
                AND redeemed_by IS NULL
                AND NOT EXISTS (SELECT 1 FROM redemptions r WHERE r.code_id = enrollment_codes.id)",
        )
        .bind(code)
        .bind(at)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(done == 1)
}

/// Revokes every code of the contract that is neither revoked nor redeemed (the same guard as
/// [`revoke`], so a redemption racing it either claimed its code first or finds it revoked).
/// Returns how many.
pub async fn revoke_unredeemed(conn: &mut Conn, contract_id: i64) -> Result<u64, StoreError> {
    let at = At(now());
    Ok(run!(conn, |c| {
        sqlx::query(
            "UPDATE enrollment_codes
                SET revoked_at = $2
              WHERE contract_id = $1
                AND revoked_at IS NULL
                AND redeemed_by IS NULL
                AND NOT EXISTS (SELECT 1 FROM redemptions r WHERE r.code_id = enrollment_codes.id)",
        )
        .bind(contract_id)
        .bind(at)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?)
}

/// Claims a one-time code for `sub`: true if it was free or is already theirs, false if
/// someone else holds it. A guarded `UPDATE`, race-free like the seat counter (the second of
/// two concurrent claimers re-checks `redeemed_by` after the first commits).
pub async fn claim_one_time(tx: &mut Tx, code_id: i64, sub: &str) -> Result<bool, StoreError> {
    let done = run!(tx, |c| {
        sqlx::query(
            "UPDATE enrollment_codes
                SET redeemed_by = $2
              WHERE id = $1 AND (redeemed_by IS NULL OR redeemed_by = $2)",
        )
        .bind(code_id)
        .bind(sub)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(done == 1)
}

/// Records that `sub` redeemed the code at `at`; returns false if they already had.
pub async fn record_redemption(
    tx: &mut Tx,
    code_id: i64,
    sub: &str,
    at: OffsetDateTime,
) -> Result<bool, StoreError> {
    let done = run!(tx, |c| {
        sqlx::query(
            "INSERT INTO redemptions (code_id, sub, at) VALUES ($1, $2, $3)
             ON CONFLICT (code_id, sub) DO NOTHING",
        )
        .bind(code_id)
        .bind(sub)
        .bind(At(at))
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(done == 1)
}
