//! `/admin/v1/organizations`: list, create, show, merge-patch, delete, members.
//!
//! Every write invalidates every cached login after its commit (docs/contract.md §4: a new alias or id can
//! make a claim match, a deleted organization takes its memberships with it).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AdminJson, PageQuery, Params, Patch, merge_patch};
use super::guard::Admin;
use super::{OrNotFound, Page, created};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;
use crate::store::model::{
    NewAuditEvent, NewOrganization, Organization, OrganizationMember, is_valid_email_domain, is_valid_key,
};
use crate::store::{StoreError, audit, organizations};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(members))
}

/// The document's name for a merge patch of an organization.
type OrganizationPatch = Patch<NewOrganization>;

/// Fields a merge patch may not set to `null`.
const NOT_NULL: &[&str] = &["key", "name", "description"];

/// The rules a well-typed organization must follow (422 when broken).
fn validate(new: &NewOrganization) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if !is_valid_key(&new.key) {
        errors.push(FieldError::new("key", "must match [a-z0-9_-]{1,64}"));
    }
    if new.name.trim().is_empty() {
        errors.push(FieldError::new("name", "must not be empty"));
    }
    if new.keycloak_alias.as_deref().is_some_and(|a| a.trim().is_empty()) {
        errors.push(FieldError::new("keycloak_alias", "must not be empty (use null to clear it)"));
    }
    errors.extend(email_domain_errors(&new.email_domains));
    if errors.is_empty() { Ok(()) } else { Err(ApiError::Unprocessable(errors)) }
}

/// At most this many `email_domains` per organization.
const MAX_EMAIL_DOMAINS: usize = 100;

/// The rule violations of `email_domains`, each naming its entry (`email_domains.2`): a
/// lower-case domain ([`is_valid_email_domain`]), listed once, at most [`MAX_EMAIL_DOMAINS`].
fn email_domain_errors(domains: &[String]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if domains.len() > MAX_EMAIL_DOMAINS {
        errors
            .push(FieldError::new("email_domains", format!("must hold at most {MAX_EMAIL_DOMAINS} domains")));
    }
    for (i, domain) in domains.iter().enumerate() {
        let field = format!("email_domains.{i}");
        if !is_valid_email_domain(domain) {
            errors.push(FieldError::new(
                field,
                "must be a lower-case domain such as example.com (no @, no wildcard)",
            ));
        } else if domains[..i].contains(domain) {
            errors.push(FieldError::new(field, "is listed twice"));
        }
    }
    errors
}

/// The path of an organization's routes. On a manage route the organization is `{org}`
/// (`/_sidecar/manage/organizations/{org}`), hence the alias.
#[derive(Debug, serde::Deserialize)]
pub(super) struct OrganizationPath {
    #[serde(alias = "org")]
    key: String,
}

fn no_such(key: &str) -> impl FnOnce() -> String + '_ {
    move || format!("No organization with key `{key}`.")
}

/// The organizations, by key.
#[utoipa::path(
    get,
    path = "/organizations",
    operation_id = "list_organizations",
    tag = "organizations",
    params(PageQuery),
    responses(
        (status = 200, description = "One page of organizations.", body = Page<Organization>),
        (status = 400, description = "A query parameter is malformed or unknown."),
        (status = 422, description = "`limit` is out of range."),
    )
)]
async fn list(
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Json<Page<Organization>>, ApiError> {
    let page = params.page()?;
    params.finish()?;
    let mut conn = state.store.conn().await?;
    let items = organizations::list(&mut conn, page.limit, page.offset).await?;
    let total = organizations::count(&mut conn).await?;
    Ok(Json(Page::new(items, total, page)))
}

/// Creates an organization.
#[utoipa::path(
    post,
    path = "/organizations",
    operation_id = "create_organization",
    tag = "organizations",
    request_body = NewOrganization,
    responses(
        (status = 201, description = "Created.", body = Organization,
            headers(("Location" = String, description = "The organization's URL."))),
        (status = 400, description = "Not a JSON object, a wrong type or an unknown field."),
        (status = 409, description = "The key, Keycloak id or alias is already in use."),
        (status = 422, description = "A value breaks a rule (key format, blank name or alias)."),
    )
)]
async fn create(
    State(state): State<AppState>,
    admin: Admin,
    AdminJson(new): AdminJson<NewOrganization>,
) -> Result<Response, ApiError> {
    validate(&new)?;
    let mut tx = state.store.begin().await?;
    let org = organizations::insert(&mut tx, &new).await?;
    let event = admin.event("organization.create", "admin API");
    audit::insert(&mut tx, &with_org(event, &org.key, json!(new))).await?;
    tx.commit().await?;
    state.entitlements.invalidate_all().await;
    Ok(created(format!("/admin/v1/organizations/{}", org.key), org))
}

/// One organization.
#[utoipa::path(
    get,
    path = "/organizations/{key}",
    operation_id = "get_organization",
    tag = "organizations",
    params(("key" = String, Path, description = "The organization's key.")),
    responses(
        (status = 200, description = "The organization.", body = Organization),
        (status = 404, description = "No organization has this key."),
    )
)]
pub(super) async fn show(
    State(state): State<AppState>,
    admin: Admin,
    Path(OrganizationPath { key }): Path<OrganizationPath>,
) -> Result<Json<Organization>, ApiError> {
    admin.within(&key, no_such(&key))?;
    let mut conn = state.store.conn().await?;
    Ok(Json(organizations::get(&mut conn, &key).await.or_not_found(no_such(&key))?))
}

/// Changes an organization by a JSON merge patch (RFC 7396) of its writable fields; `null`
/// clears `keycloak_id` or `keycloak_alias`. The key cannot change. The audit event's
/// `detail` is `{"before": …, "after": …}`, every writable field of each.
#[utoipa::path(
    patch,
    path = "/organizations/{key}",
    operation_id = "update_organization",
    tag = "organizations",
    params(("key" = String, Path, description = "The organization's key.")),
    request_body(content = OrganizationPatch, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The organization as changed.", body = Organization),
        (status = 400, description = "Not a JSON object, a wrong type or an unknown field."),
        (status = 404, description = "No organization has this key."),
        (status = 409, description = "The Keycloak id or alias is already in use."),
        (status = 422, description = "A value breaks a rule, a required field is set to null, or the key would change."),
    )
)]
async fn update(
    State(state): State<AppState>,
    admin: Admin,
    Path(key): Path<String>,
    AdminJson(patch): AdminJson<Value>,
) -> Result<Json<Organization>, ApiError> {
    let mut tx = state.store.begin().await?;
    let current = organizations::get(&mut tx, &key).await.or_not_found(no_such(&key))?;
    let wanted: NewOrganization = merge_patch(&NewOrganization::from(&current), &patch, NOT_NULL)?;
    if wanted.key != current.key {
        return Err(ApiError::Unprocessable(vec![FieldError::new("key", "cannot be changed")]));
    }
    validate(&wanted)?;
    let org = organizations::update(&mut tx, &wanted).await?;
    // Every writable field before and after (docs/admin-api.md, "Audit events of updates").
    let detail = json!({"before": NewOrganization::from(&current), "after": wanted});
    audit::insert(&mut tx, &with_org(admin.event("organization.update", "admin API"), &key, detail)).await?;
    tx.commit().await?;
    state.entitlements.invalidate_all().await;
    Ok(Json(org))
}

/// Deletes an organization without contracts (409 otherwise). Its memberships go with it (the
/// database cascades); each is recorded in the audit trail first, since the rows will not be
/// there to ask later.
#[utoipa::path(
    delete,
    path = "/organizations/{key}",
    operation_id = "delete_organization",
    tag = "organizations",
    params(("key" = String, Path, description = "The organization's key.")),
    responses(
        (status = 204, description = "Deleted, with its memberships."),
        (status = 404, description = "No organization has this key."),
        (status = 409, description = "The organization still has contracts."),
    )
)]
async fn remove(
    State(state): State<AppState>,
    admin: Admin,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.store.begin().await?;
    let org = organizations::get(&mut tx, &key).await.or_not_found(no_such(&key))?;
    let mut members = Vec::new();
    loop {
        let page = organizations::members(&mut tx, org.id, 1000, members.len() as u32).await?;
        let done = page.len() < 1000;
        members.extend(page);
        if done {
            break;
        }
    }
    organizations::delete(&mut tx, &key).await.map_err(|e| match e {
        StoreError::InUse => {
            ApiError::Conflict("The organization still has contracts; delete or move them first.".into())
        }
        other => other.into(),
    })?;
    for member in &members {
        let event = admin.event("membership.remove", "organization deleted");
        let event = NewAuditEvent { sub: Some(member.sub.clone()), ..event };
        audit::insert(&mut tx, &with_org(event, &key, Value::Null)).await?;
    }
    // The organization as it was: the `data` of its `organization.deleted` event.
    let detail = json!({"members": members.len(), "before": NewOrganization::from(&org)});
    audit::insert(&mut tx, &with_org(admin.event("organization.delete", "admin API"), &key, detail)).await?;
    tx.commit().await?;
    state.entitlements.invalidate_all().await;
    Ok(StatusCode::NO_CONTENT)
}

/// The organization's members, by `sub`.
#[utoipa::path(
    get,
    path = "/organizations/{key}/members",
    operation_id = "list_organization_members",
    tag = "organizations",
    params(("key" = String, Path, description = "The organization's key."), PageQuery),
    responses(
        (status = 200, description = "One page of members.", body = Page<OrganizationMember>),
        (status = 400, description = "A query parameter is malformed or unknown."),
        (status = 404, description = "No organization has this key."),
        (status = 422, description = "`limit` is out of range."),
    )
)]
pub(super) async fn members(
    State(state): State<AppState>,
    admin: Admin,
    Path(OrganizationPath { key }): Path<OrganizationPath>,
    mut params: Params,
) -> Result<Json<Page<OrganizationMember>>, ApiError> {
    admin.within(&key, no_such(&key))?;
    let page = params.page()?;
    params.finish()?;
    let mut conn = state.store.conn().await?;
    let org = organizations::get(&mut conn, &key).await.or_not_found(no_such(&key))?;
    let items = organizations::members(&mut conn, org.id, page.limit, page.offset).await?;
    let total = organizations::count_members(&mut conn, org.id).await?;
    Ok(Json(Page::new(items, total, page)))
}

/// An organization-level audit event; `detail` null means none.
fn with_org(event: NewAuditEvent, key: &str, detail: Value) -> NewAuditEvent {
    NewAuditEvent {
        organization: Some(key.to_owned()),
        detail: (!detail.is_null()).then_some(detail),
        ..event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(key: &str, name: &str, alias: Option<&str>) -> NewOrganization {
        NewOrganization {
            key: key.into(),
            name: name.into(),
            description: String::new(),
            keycloak_id: None,
            keycloak_alias: alias.map(Into::into),
            email_domains: Vec::new(),
        }
    }

    #[test]
    fn keys_names_and_aliases_are_checked_together() {
        assert!(validate(&org("acme", "Acme", Some("acme"))).is_ok());
        let Err(ApiError::Unprocessable(errors)) = validate(&org("Acme!", " ", Some(""))) else {
            panic!("expected 422");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["key", "name", "keycloak_alias"]);
    }
}
