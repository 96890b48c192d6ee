//! Organizations: the B2B customers, optionally linked to a Keycloak organization by id and/or
//! alias (both unique). Keys never change once created (no statement here updates `key`).

use uuid::Uuid;

use super::codec::{At, KcId, now};
use super::model::{NewOrganization, Organization, OrganizationMember};
use super::{Backend, Conn, StoreError, page};

from_row!(Organization, |row| Ok(Organization {
    id: row.try_get("id")?,
    key: row.try_get("key")?,
    name: row.try_get("name")?,
    description: row.try_get("description")?,
    keycloak_id: row.try_get::<Option<KcId>, _>("keycloak_id")?.map(|k| k.0),
    keycloak_alias: row.try_get("keycloak_alias")?,
    email_domains: serde_json::from_str(row.try_get::<&str, _>("email_domains")?)
        .map_err(|e| sqlx::Error::Decode(e.into()))?,
    created_at: row.try_get("created_at")?,
    updated_at: row.try_get("updated_at")?,
}));

from_row!(OrganizationMember, |row| Ok(OrganizationMember {
    sub: row.try_get("sub")?,
    email: row.try_get("email")?,
    username: row.try_get("username")?,
    name: row.try_get("name")?,
    keep_until_seen: row.try_get("keep_until_seen")?,
    manager: row.try_get("manager")?,
    source: row.try_get("source")?,
    created_at: row.try_get("created_at")?,
    updated_at: row.try_get("updated_at")?,
}));

/// Creates an organization. A taken `key`, `keycloak_id` or `keycloak_alias` is a `Conflict`.
pub async fn insert(conn: &mut Conn, new: &NewOrganization) -> Result<Organization, StoreError> {
    let at = At(now());
    let org = run!(conn, |c| {
        sqlx::query_as::<_, Organization>(
            "INSERT INTO organizations
                 (key, name, description, keycloak_id, keycloak_alias, email_domains, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $7, $6, $6)
             RETURNING id, key, name, description, keycloak_id, keycloak_alias, email_domains,
                       created_at, updated_at",
        )
        .bind(&new.key)
        .bind(&new.name)
        .bind(&new.description)
        .bind(new.keycloak_id.map(KcId))
        .bind(&new.keycloak_alias)
        .bind(at)
        .bind(serde_json::to_string(&new.email_domains).expect("strings serialise"))
        .fetch_one(c)
        .await
    })?;
    Ok(org)
}

/// Replaces the writable fields of the organization `new.key` (the key itself never changes).
pub async fn update(conn: &mut Conn, new: &NewOrganization) -> Result<Organization, StoreError> {
    let at = At(now());
    let org = run!(conn, |c| {
        sqlx::query_as::<_, Organization>(
            "UPDATE organizations
                SET name = $2, description = $3, keycloak_id = $4, keycloak_alias = $5,
                    updated_at = $6, email_domains = $7
              WHERE key = $1
             RETURNING id, key, name, description, keycloak_id, keycloak_alias, email_domains,
                       created_at, updated_at",
        )
        .bind(&new.key)
        .bind(&new.name)
        .bind(&new.description)
        .bind(new.keycloak_id.map(KcId))
        .bind(&new.keycloak_alias)
        .bind(at)
        .bind(serde_json::to_string(&new.email_domains).expect("strings serialise"))
        .fetch_optional(c)
        .await
    })?;
    org.ok_or(StoreError::NotFound)
}

/// Records the Keycloak id an alias-only organization learned from a claim (docs/contract.md §3).
/// `Conflict` if another organization already holds that id.
pub async fn set_keycloak_id(conn: &mut Conn, id: i64, keycloak_id: Uuid) -> Result<(), StoreError> {
    let at = At(now());
    let done = run!(conn, |c| {
        sqlx::query("UPDATE organizations SET keycloak_id = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(KcId(keycloak_id))
            .bind(at)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    if done == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// The organization with this key.
pub async fn get(conn: &mut Conn, key: &str) -> Result<Organization, StoreError> {
    let org = run!(conn, |c| {
        sqlx::query_as::<_, Organization>(
            "SELECT id, key, name, description, keycloak_id, keycloak_alias, email_domains, created_at, updated_at
               FROM organizations
              WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(c)
        .await
    })?;
    org.ok_or(StoreError::NotFound)
}

/// The organization linked to this Keycloak organization id, if any.
pub async fn by_keycloak_id(conn: &mut Conn, keycloak_id: Uuid) -> Result<Option<Organization>, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, Organization>(
            "SELECT id, key, name, description, keycloak_id, keycloak_alias, email_domains, created_at, updated_at
               FROM organizations
              WHERE keycloak_id = $1",
        )
        .bind(KcId(keycloak_id))
        .fetch_optional(c)
        .await
    })?)
}

/// The organization linked to this Keycloak organization alias, if any.
pub async fn by_alias(conn: &mut Conn, alias: &str) -> Result<Option<Organization>, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, Organization>(
            "SELECT id, key, name, description, keycloak_id, keycloak_alias, email_domains, created_at, updated_at
               FROM organizations
              WHERE keycloak_alias = $1",
        )
        .bind(alias)
        .fetch_optional(c)
        .await
    })?)
}

/// Organizations that a claim could refer to: those whose `keycloak_id` is in `ids` or whose
/// `keycloak_alias` is in `aliases`, ordered by key. One statement whatever the claim's size;
/// choosing among them (id first, then alias without id) is the reconciliation planner's job.
pub async fn matching_claim(
    conn: &mut Conn,
    ids: &[Uuid],
    aliases: &[String],
) -> Result<Vec<Organization>, StoreError> {
    if ids.is_empty() && aliases.is_empty() {
        return Ok(Vec::new());
    }
    // The sets are bound as one parameter each: a PostgreSQL array, or a JSON array that
    // SQLite unnests with json_each (it has no arrays). SQLite stores ids as hyphenated text.
    let orgs = match conn.backend() {
        Backend::Sqlite(c) => {
            let ids: Vec<String> = ids.iter().map(|u| u.hyphenated().to_string()).collect();
            sqlx::query_as::<_, Organization>(
                "SELECT id, key, name, description, keycloak_id, keycloak_alias, email_domains,
                        created_at, updated_at
                   FROM organizations
                  WHERE keycloak_id IN (SELECT value FROM json_each($1))
                     OR keycloak_alias IN (SELECT value FROM json_each($2))
                  ORDER BY key",
            )
            .bind(serde_json::to_string(&ids).expect("strings serialise"))
            .bind(serde_json::to_string(aliases).expect("strings serialise"))
            .fetch_all(c)
            .await
        }
        Backend::Postgres(c) => {
            sqlx::query_as::<_, Organization>(
                "SELECT id, key, name, description, keycloak_id, keycloak_alias, email_domains,
                        created_at, updated_at
                   FROM organizations
                  WHERE keycloak_id = ANY($1)
                     OR keycloak_alias = ANY($2)
                  ORDER BY key",
            )
            .bind(ids)
            .bind(aliases)
            .fetch_all(c)
            .await
        }
    }?;
    Ok(orgs)
}

/// One page of organizations in key order.
pub async fn list(conn: &mut Conn, limit: u32, offset: u32) -> Result<Vec<Organization>, StoreError> {
    let (limit, offset) = page(limit, offset);
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, Organization>(
            "SELECT id, key, name, description, keycloak_id, keycloak_alias, email_domains, created_at, updated_at
               FROM organizations
              ORDER BY key
              LIMIT $1 OFFSET $2",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(c)
        .await
    })?)
}

/// Number of organizations (for paging).
pub async fn count(conn: &mut Conn) -> Result<i64, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM organizations").fetch_one(c).await
    })?)
}

/// Deletes an organization and its memberships. `InUse` while it has contracts.
pub async fn delete(conn: &mut Conn, key: &str) -> Result<(), StoreError> {
    let done = run!(conn, |c| {
        sqlx::query("DELETE FROM organizations WHERE key = $1")
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

/// One page of an organization's members with what the user last told us, in `sub` order.
pub async fn members(
    conn: &mut Conn,
    organization_id: i64,
    limit: u32,
    offset: u32,
) -> Result<Vec<OrganizationMember>, StoreError> {
    let (limit, offset) = page(limit, offset);
    Ok(run!(conn, |c| {
        sqlx::query_as::<_, OrganizationMember>(
            "SELECT m.sub, u.email, u.username, u.name, m.keep_until_seen, m.manager, m.source,
                    m.created_at, m.updated_at
               FROM memberships m
               JOIN users u ON u.sub = m.sub
              WHERE m.organization_id = $1
              ORDER BY m.sub
              LIMIT $2 OFFSET $3",
        )
        .bind(organization_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(c)
        .await
    })?)
}

/// Number of an organization's members (for paging).
pub async fn count_members(conn: &mut Conn, organization_id: i64) -> Result<i64, StoreError> {
    Ok(run!(conn, |c| {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM memberships WHERE organization_id = $1")
            .bind(organization_id)
            .fetch_one(c)
            .await
    })?)
}
