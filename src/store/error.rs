//! What can go wrong in the store, in the terms callers act on.
//!
//! A rejection (`NotFound`, `Conflict`, `InUse`) is an answer about the data and maps to 404 /
//! 409; `Unavailable` is a breakage of the database link that the caller survives (reconcile
//! degrades to cached entitlements, docs/contract.md §4; the admin API answers 503); `Other` is a bug or an
//! unexpected database state (500, logged once). The classification reads the driver's error
//! codes, so it is the same on SQLite and PostgreSQL.

use std::fmt;

use sqlx::error::{DatabaseError, ErrorKind};
use sqlx::postgres::PgDatabaseError;

/// A store failure.
#[derive(Debug)]
pub enum StoreError {
    /// The row asked for does not exist.
    NotFound,
    /// A unique key is already taken. `what` names it as `table.column` (for a composite key
    /// `table.a, table.b`), e.g. `organizations.keycloak_alias`.
    Conflict { what: String },
    /// A foreign key refused the change: the row is still referenced (an organization that has
    /// contracts, a contract with attached users), or, on insert, the referenced row is missing
    /// (a membership for a `sub` without a user row: call `users::ensure` first).
    InUse,
    /// The database cannot be reached or is overloaded: connection, pool, I/O, lock-timeout
    /// errors and transaction conflicts that a later retry resolves.
    Unavailable(sqlx::Error),
    /// Anything else.
    Other(sqlx::Error),
}

impl StoreError {
    /// The column part of a `Conflict` on a single column (`keycloak_alias`), for naming the
    /// field in a 409/422 answer.
    pub fn conflict_column(&self) -> Option<&str> {
        match self {
            Self::Conflict { what } if !what.contains(',') => what.rsplit('.').next(),
            _ => None,
        }
    }

    /// The database is unreachable or overloaded; retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => f.write_str("not found"),
            Self::Conflict { what } => write!(f, "{what} is already taken"),
            Self::InUse => f.write_str("still referenced by other rows"),
            Self::Unavailable(e) => write!(f, "database unavailable: {e}"),
            Self::Other(e) => write!(f, "database error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unavailable(e) | Self::Other(e) => Some(e),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => Self::NotFound,
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(e),
            sqlx::Error::Database(db) => match db.kind() {
                ErrorKind::UniqueViolation => Self::Conflict { what: conflicting_key(db.as_ref()) },
                ErrorKind::ForeignKeyViolation => Self::InUse,
                // SQLite reports an `ON DELETE RESTRICT` refusal as SQLITE_CONSTRAINT_TRIGGER
                // (1811), which sqlx does not classify; the message is fixed by SQLite.
                _ if db.message() == "FOREIGN KEY constraint failed" => Self::InUse,
                _ if is_transient(db.as_ref()) => Self::Unavailable(e),
                _ => Self::Other(e),
            },
            _ => Self::Other(e),
        }
    }
}

/// `table.column` of a unique violation. SQLite says `UNIQUE constraint failed: t.a, t.b`;
/// PostgreSQL gives the table and `Key (a, b)=(…) already exists.` in the detail.
fn conflicting_key(db: &dyn DatabaseError) -> String {
    if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
        let table = pg.table().unwrap_or("?");
        let columns = pg
            .detail()
            .and_then(|d| d.strip_prefix("Key ("))
            .and_then(|d| d.split_once(")=").map(|(cols, _)| cols));
        return match columns {
            Some(cols) => cols.split(", ").map(|c| format!("{table}.{c}")).collect::<Vec<_>>().join(", "),
            None => pg.constraint().unwrap_or(table).to_string(),
        };
    }
    let msg = db.message();
    msg.strip_prefix("UNIQUE constraint failed: ").unwrap_or(msg).to_string()
}

/// Errors a later attempt can get past: the server going away or refusing connections, lock
/// timeouts, serialisation failures and deadlocks (one side of a deadlock is aborted).
fn is_transient(db: &dyn DatabaseError) -> bool {
    let Some(code) = db.code() else { return false };
    if db.try_downcast_ref::<PgDatabaseError>().is_some() {
        // 08: connection exception; 53: insufficient resources; 57P0x: shutdown / cannot
        // connect now; 40001 serialization_failure; 40P01 deadlock_detected; 55P03 lock timeout.
        return code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P0")
            || matches!(&*code, "40001" | "40P01" | "55P03");
    }
    // SQLite extended result code; the low byte is the primary code:
    // 5 BUSY, 6 LOCKED, 10 IOERR, 13 FULL, 14 CANTOPEN.
    code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14))
}
