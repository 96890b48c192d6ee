//! Column codecs whose storage differs between the backends, so that store functions can bind
//! one Rust value and run the same SQL text on both.
//!
//! - [`At`]: timestamps. PostgreSQL stores `timestamptz`. SQLite has no time type, and sqlx's own
//!   SQLite encoding of `OffsetDateTime` is RFC 3339 with trailing subsecond zeros trimmed
//!   (`…:05Z` sorts *after* `…:05.5Z`), which breaks `ORDER BY` and `<` on TEXT. `At` writes a
//!   fixed-width UTC form, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, so text order is time order. Both
//!   backends keep microseconds; [`now`] truncates to them so a value reads back equal.
//!   Decoding needs no wrapper: sqlx reads that form (and PostgreSQL's) into `OffsetDateTime`.
//! - [`KcId`]: Keycloak ids. PostgreSQL stores `uuid`; SQLite stores lower-case hyphenated TEXT
//!   (sqlx's default there is a 16-byte BLOB, unreadable in the `sqlite3` shell and impossible to
//!   compare with the strings of a JSON array, see `organizations::matching_claim`).
//! - The text enums of [`super::model`] (`MembershipType`, sources, …): TEXT on both, with a
//!   `CHECK` constraint listing the allowed values.
//!
//! Dates (`time::Date`) need nothing: sqlx writes `YYYY-MM-DD` on SQLite, which sorts as a date.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Database, Decode, Encode, Postgres, Sqlite, Type};
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};
use uuid::Uuid;

use super::model::{
    AssignmentState, AttachmentSource, JobStatus, MembershipSource, MembershipType, Redemption,
};

/// The current time, truncated to the microseconds both backends store.
pub fn now() -> OffsetDateTime {
    truncate(OffsetDateTime::now_utc())
}

/// `t` in UTC, truncated to microseconds: what the store gives back after storing `t`.
pub fn truncate(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(UtcOffset::UTC);
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000).expect("a truncated nanosecond is in range")
}

const SQLITE_TIMESTAMP: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// A timestamp parameter (see the module docs for why it is not a plain `OffsetDateTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At(pub OffsetDateTime);

impl Type<Sqlite> for At {
    fn type_info() -> SqliteTypeInfo {
        <str as Type<Sqlite>>::type_info()
    }
}

impl Encode<'_, Sqlite> for At {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        let text = self.0.to_offset(UtcOffset::UTC).format(SQLITE_TIMESTAMP)?;
        Encode::<Sqlite>::encode(text, buf)
    }
}

impl Type<Postgres> for At {
    fn type_info() -> PgTypeInfo {
        <OffsetDateTime as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for At {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Postgres>::encode_by_ref(&self.0, buf)
    }
}

/// A Keycloak organization id as a parameter or a column (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KcId(pub Uuid);

impl Type<Sqlite> for KcId {
    fn type_info() -> SqliteTypeInfo {
        <str as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <str as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for KcId {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Sqlite>::encode(self.0.hyphenated().to_string(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for KcId {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Self(<&str as Decode<Sqlite>>::decode(value)?.parse()?))
    }
}

impl Type<Postgres> for KcId {
    fn type_info() -> PgTypeInfo {
        <Uuid as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for KcId {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Postgres>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for KcId {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Self(<Uuid as Decode<Postgres>>::decode(value)?))
    }
}

/// TEXT columns holding one of an enum's `as_str()` values, on any backend.
macro_rules! text_column {
    ($($ty:ty),+ $(,)?) => {$(
        impl<DB: Database> Type<DB> for $ty
        where
            str: Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: Database> Encode<'q, DB> for $ty
        where
            &'q str: Encode<'q, DB>,
        {
            fn encode_by_ref(&self, buf: &mut DB::ArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<'q, DB>>::encode(self.as_str(), buf)
            }
        }

        impl<'r, DB: Database> Decode<'r, DB> for $ty
        where
            &'r str: Decode<'r, DB>,
        {
            fn decode(value: DB::ValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(<&str as Decode<'r, DB>>::decode(value)?.parse()?)
            }
        }
    )+};
}

text_column!(MembershipType, MembershipSource, AttachmentSource, Redemption, JobStatus, AssignmentState);

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn sqlite_timestamps_are_fixed_width_so_text_order_is_time_order() {
        let fmt = |t: OffsetDateTime| t.format(SQLITE_TIMESTAMP).unwrap();
        let whole = fmt(datetime!(2026-01-02 03:04:05 UTC));
        let half = fmt(datetime!(2026-01-02 03:04:05.5 UTC));
        assert_eq!(whole, "2026-01-02T03:04:05.000000Z");
        assert!(whole < half);
    }

    #[test]
    fn truncate_keeps_microseconds_in_utc() {
        let t = datetime!(2026-01-02 03:04:05.123456789 +02:00);
        assert_eq!(truncate(t), datetime!(2026-01-02 01:04:05.123456 UTC));
    }
}
