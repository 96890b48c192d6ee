//! The last good JWKS document per issuer, so a restart during a Keycloak outage can still
//! validate tokens (docs/contract.md §2). One row per issuer, overwritten on every successful fetch.

use time::OffsetDateTime;

use super::codec::At;
use super::model::CachedJwks;
use super::{Conn, StoreError};

from_row!(CachedJwks, |row| Ok(CachedJwks {
    issuer: row.try_get("issuer")?,
    jwks: row.try_get("jwks")?,
    fetched_at: row.try_get("fetched_at")?,
}));

/// Stores `jwks` (the JSON text as fetched) as the issuer's last good key set.
pub async fn save(
    conn: &mut Conn,
    issuer: &str,
    jwks: &str,
    fetched_at: OffsetDateTime,
) -> Result<(), StoreError> {
    run!(conn, |c| {
        sqlx::query(
            "INSERT INTO jwks_cache (issuer, jwks, fetched_at) VALUES ($1, $2, $3)
             ON CONFLICT (issuer) DO UPDATE
                SET jwks = excluded.jwks, fetched_at = excluded.fetched_at",
        )
        .bind(issuer)
        .bind(jwks)
        .bind(At(fetched_at))
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// The issuer's last good key set, if one was ever stored.
pub async fn load(conn: &mut Conn, issuer: &str) -> Result<Option<CachedJwks>, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, CachedJwks>("SELECT issuer, jwks, fetched_at FROM jwks_cache WHERE issuer = $1")
            .bind(issuer)
            .fetch_optional(c)
            .await
    })?)
}
