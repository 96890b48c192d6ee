//! Users as last seen in their tokens. The row is also the per-user lock of reconciliation
//! (see [`super::Store::begin_user`] and the module docs of [`super`]).

use super::codec::{At, now};
use super::model::{Profile, User};
use super::{Conn, StoreError, Tx, page};

from_row!(User, |row| Ok(User {
    sub: row.try_get("sub")?,
    email: row.try_get("email")?,
    username: row.try_get("username")?,
    name: row.try_get("name")?,
    last_login_at: row.try_get("last_login_at")?,
    created_at: row.try_get("created_at")?,
    updated_at: row.try_get("updated_at")?,
}));

/// Upserts the user row as the first statement of a per-user transaction; on PostgreSQL the
/// `DO UPDATE` leaves the row locked until the transaction ends, serialising concurrent
/// reconciliations of one user. With `login`, records the profile and the login time (a token
/// without email keeps the last known one); without, changes nothing but still takes the lock.
/// Use through [`super::Store::begin_user`].
///
/// A login's statement answers two more questions, so that they cost no statement of their own:
/// - `verified_email` (lower-cased) is the token's e-mail when `email_verified` is true: how many
///   `allocated` seat assignments name it (docs/contract.md §12). The count includes assignments
///   past their `expires_at`; [`super::assignments::pending_for_email`] leaves those out.
/// - `session` is the login's `sid` (`""` without one): the key of the organization that
///   session selected, as [`super::selections::get`] reads it (reconciliation never changes
///   selections, so reading it first is reading it last).
pub(crate) async fn lock(
    tx: &mut Tx,
    sub: &str,
    login: Option<&Profile>,
    verified_email: Option<&str>,
    session: Option<&str>,
) -> Result<(User, LoginState), StoreError> {
    use sqlx::FromRow as _;
    let at = At(now());
    let user = match login {
        Some(p) => run!(tx, |c| {
            let row = sqlx::query(
                "INSERT INTO users (sub, email, username, name, last_login_at, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $5, $5)
                 ON CONFLICT (sub) DO UPDATE
                    SET email = COALESCE(excluded.email, users.email),
                        username = COALESCE(excluded.username, users.username),
                        name = COALESCE(excluded.name, users.name),
                        last_login_at = excluded.last_login_at,
                        updated_at = excluded.updated_at
                 RETURNING sub, email, username, name, last_login_at, created_at, updated_at,
                           (SELECT count(*) FROM seat_assignments s
                             WHERE s.email = $6 AND s.state = 'allocated') AS assignments,
                           (SELECT o.key FROM active_organization_selections s
                              JOIN organizations o ON o.id = s.organization_id
                             WHERE s.sub = $1 AND s.sid = $7) AS selection",
            )
            .bind(sub)
            .bind(&p.email)
            .bind(&p.username)
            .bind(&p.name)
            .bind(at)
            .bind(verified_email)
            .bind(session)
            .fetch_one(c)
            .await;
            row.and_then(|row| {
                use sqlx::Row as _;
                let state = LoginState {
                    assignments: row.try_get("assignments")?,
                    selection: row.try_get("selection")?,
                };
                Ok((User::from_row(&row)?, state))
            })
        })?,
        None => run!(tx, |c| {
            sqlx::query_as::<_, User>(
                "INSERT INTO users (sub, created_at, updated_at)
                 VALUES ($1, $2, $2)
                 ON CONFLICT (sub) DO UPDATE SET updated_at = users.updated_at
                 RETURNING sub, email, username, name, last_login_at, created_at, updated_at",
            )
            .bind(sub)
            .bind(at)
            .fetch_one(c)
            .await
        })
        .map(|user| (user, LoginState::default()))?,
    };
    Ok(user)
}

/// What [`lock`] learnt besides the user row (nothing without a login).
#[derive(Debug, Default)]
pub(crate) struct LoginState {
    /// `allocated` seat assignments naming the verified e-mail.
    pub assignments: i64,
    /// The organization key the session selected.
    pub selection: Option<String>,
}

/// Creates the user row if it does not exist (an admin acting on a user who never logged in).
pub async fn ensure(conn: &mut Conn, sub: &str) -> Result<(), StoreError> {
    let at = At(now());
    run!(conn, |c| {
        sqlx::query(
            "INSERT INTO users (sub, created_at, updated_at) VALUES ($1, $2, $2)
             ON CONFLICT (sub) DO NOTHING",
        )
        .bind(sub)
        .bind(at)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// The user with this subject.
pub async fn get(conn: &mut Conn, sub: &str) -> Result<User, StoreError> {
    let user = run!(conn, |c| {
        sqlx::query_as::<_, User>(
            "SELECT sub, email, username, name, last_login_at, created_at, updated_at
               FROM users
              WHERE sub = $1",
        )
        .bind(sub)
        .fetch_optional(c)
        .await
    })?;
    user.ok_or(StoreError::NotFound)
}

/// Users whose last seen email is `email`, ignoring ASCII case (emails are not unique across
/// Keycloak users, hence a list).
pub async fn find_by_email(conn: &mut Conn, email: &str) -> Result<Vec<User>, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, User>(
            "SELECT sub, email, username, name, last_login_at, created_at, updated_at
               FROM users
              WHERE lower(email) = lower($1)
              ORDER BY sub",
        )
        .bind(email)
        .fetch_all(c)
        .await
    })?)
}

/// Up to `limit` subjects after `after`, in order: walks every known user for a background
/// reconciliation without holding a cursor open.
pub async fn subs_after(conn: &mut Conn, after: Option<&str>, limit: u32) -> Result<Vec<String>, StoreError> {
    let (limit, _) = page(limit, 0);
    Ok(run!(conn, |c| {
        sqlx::query_scalar::<_, String>(
            "SELECT sub FROM users WHERE $1 IS NULL OR sub > $1 ORDER BY sub LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(c)
        .await
    })?)
}

/// Number of known users.
pub async fn count(conn: &mut Conn) -> Result<i64, StoreError> {
    Ok(run!(conn, |c| { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM users").fetch_one(c).await })?)
}

/// Erases a user (admin `DELETE /users/{sub}`): unlinks the one-time codes they redeemed, frees
/// the seats of their attachments, then deletes their skips, attachments, memberships, redemptions, the
/// sessions' active-organization selections and the user row. The audit trail keeps the subject (it holds no other personal data); a one-time
/// code stays spent, its `redeemed_by` becomes [`super::codes::ERASED_REDEEMER`]. Returns
/// whether the user existed.
///
/// Lock order as in a redemption (user row, code rows, contract rows), so an erase and a
/// redemption running together cannot deadlock on PostgreSQL.
pub async fn erase(tx: &mut Tx, sub: &str) -> Result<bool, StoreError> {
    super::assignments::erase_email(tx, sub).await?;
    run!(tx, |c| {
        sqlx::query("UPDATE enrollment_codes SET redeemed_by = $2 WHERE redeemed_by = $1")
            .bind(sub)
            .bind(super::codes::ERASED_REDEEMER)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    // Each user holds a contract at most once, so one decrement per attachment row.
    run!(tx, |c| {
        sqlx::query(
            "UPDATE contracts
                SET seats_used = seats_used - 1
              WHERE id IN (SELECT contract_id FROM attachments WHERE sub = $1)",
        )
        .bind(sub)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    for statement in [
        "DELETE FROM attachment_skips WHERE sub = $1",
        "DELETE FROM attachments WHERE sub = $1",
        "DELETE FROM memberships WHERE sub = $1",
        "DELETE FROM redemptions WHERE sub = $1",
        "DELETE FROM active_organization_selections WHERE sub = $1",
    ] {
        run!(tx, |c| sqlx::query(statement).bind(sub).execute(c).await.map(|r| r.rows_affected()))?;
    }
    let done = run!(tx, |c| {
        sqlx::query("DELETE FROM users WHERE sub = $1").bind(sub).execute(c).await.map(|r| r.rows_affected())
    })?;
    Ok(done == 1)
}
