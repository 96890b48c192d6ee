//! `/admin/v1/contracts`: list (optionally of one organization), create, show, merge-patch,
//! delete, members. Answers carry `seats_used`.
//!
//! Every write invalidates every cached login after its commit: validity dates, the type and
//! the organization of a contract decide what the headers show.

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
    Contract, ContractMember, NewAuditEvent, NewContract, is_valid_key, is_valid_price,
};
use crate::store::{Conn, StoreError, audit, contracts, organizations};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(members))
}

/// The document's name for a merge patch of a contract.
type ContractPatch = Patch<NewContract>;

/// Fields a merge patch may not set to `null` (dates, seats and price may: unbounded, unlimited,
/// free).
const NOT_NULL: &[&str] = &["key", "organization", "name", "membership_type", "active"];

/// The rules a well-typed contract must follow (422 when broken). Whether the organization
/// exists is checked against the store, in the writing transaction.
fn validate(new: &NewContract) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if !is_valid_key(&new.key) {
        errors.push(FieldError::new("key", "must match [a-z0-9_-]{1,64}"));
    }
    if new.name.trim().is_empty() {
        errors.push(FieldError::new("name", "must not be empty"));
    }
    if let (Some(starts), Some(ends)) = (new.starts_on, new.ends_on)
        && ends < starts
    {
        errors.push(FieldError::new("ends_on", "must not be before starts_on"));
    }
    if new.max_learners.is_some_and(|m| m < 0) {
        errors.push(FieldError::new("max_learners", "must be 0 or more (0 or null: unlimited)"));
    }
    if new.price.as_deref().is_some_and(|p| !is_valid_price(p)) {
        errors.push(FieldError::new("price", "must be a non-negative decimal string such as \"12.50\""));
    }
    if errors.is_empty() { Ok(()) } else { Err(ApiError::Unprocessable(errors)) }
}

fn no_such(key: &str) -> impl FnOnce() -> String + '_ {
    move || format!("No contract with key `{key}`.")
}

/// 422 naming `organization` unless the organization exists.
async fn check_organization(conn: &mut Conn, key: &str) -> Result<(), ApiError> {
    match organizations::get(conn, key).await {
        Ok(_) => Ok(()),
        Err(StoreError::NotFound) => Err(ApiError::Unprocessable(vec![FieldError::new(
            "organization",
            "no organization has this key",
        )])),
        Err(e) => Err(e.into()),
    }
}

/// The contracts, by key; of one organization with `?organization=`.
#[utoipa::path(
    get,
    path = "/contracts",
    operation_id = "list_contracts",
    tag = "contracts",
    params(
        ("organization" = Option<String>, Query, description = "Only this organization's contracts (its key)."),
        PageQuery,
    ),
    responses(
        (status = 200, description = "One page of contracts.", body = Page<Contract>),
        (status = 400, description = "A query parameter is malformed, repeated or unknown."),
        (status = 422, description = "`limit` is out of range."),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    admin: Admin,
    mut params: Params,
) -> Result<Json<Page<Contract>>, ApiError> {
    let page = params.page()?;
    let organization = admin.filter_organization(params.string("organization")?)?;
    params.finish()?;
    let mut conn = state.store.conn().await?;
    let items = contracts::list(&mut conn, organization.as_deref(), page.limit, page.offset).await?;
    let total = contracts::count(&mut conn, organization.as_deref()).await?;
    Ok(Json(Page::new(items, total, page)))
}

/// Creates a contract of an existing organization.
#[utoipa::path(
    post,
    path = "/contracts",
    operation_id = "create_contract",
    tag = "contracts",
    request_body = NewContract,
    responses(
        (status = 201, description = "Created.", body = Contract,
            headers(("Location" = String, description = "The contract's URL."))),
        (status = 400, description = "Not a JSON object, a wrong type or an unknown field."),
        (status = 409, description = "The key is already in use."),
        (status = 422, description = "A value breaks a rule (key format, dates, seats, price), or no organization has the key given."),
    )
)]
async fn create(
    State(state): State<AppState>,
    admin: Admin,
    AdminJson(new): AdminJson<NewContract>,
) -> Result<Response, ApiError> {
    validate(&new)?;
    let mut tx = state.store.begin().await?;
    check_organization(&mut tx, &new.organization).await?;
    let contract = contracts::insert(&mut tx, &new).await?;
    audit::insert(
        &mut tx,
        &with_contract(admin.event("contract.create", "admin API"), &contract, json!(new)),
    )
    .await?;
    tx.commit().await?;
    state.entitlements.invalidate_all().await;
    Ok(created(format!("/admin/v1/contracts/{}", contract.key), contract))
}

/// One contract, with `seats_used`.
#[utoipa::path(
    get,
    path = "/contracts/{key}",
    operation_id = "get_contract",
    tag = "contracts",
    params(("key" = String, Path, description = "The contract's key.")),
    responses(
        (status = 200, description = "The contract.", body = Contract),
        (status = 404, description = "No contract has this key."),
    )
)]
async fn show(State(state): State<AppState>, Path(key): Path<String>) -> Result<Json<Contract>, ApiError> {
    let mut conn = state.store.conn().await?;
    Ok(Json(contracts::get(&mut conn, &key).await.or_not_found(no_such(&key))?))
}

/// Changes a contract by a JSON merge patch (RFC 7396) of its writable fields; `null` clears
/// the dates (unbounded), `max_learners` (unlimited) or `price` (free). The key cannot change.
/// Lowering `max_learners` below `seats_used` detaches nobody; it only stops new attachments.
/// The audit event's `detail` is `{"before": …, "after": …}`, every writable field of each.
#[utoipa::path(
    patch,
    path = "/contracts/{key}",
    operation_id = "update_contract",
    tag = "contracts",
    params(("key" = String, Path, description = "The contract's key.")),
    request_body(content = ContractPatch, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The contract as changed.", body = Contract),
        (status = 400, description = "Not a JSON object, a wrong type or an unknown field."),
        (status = 404, description = "No contract has this key."),
        (status = 422, description = "A value breaks a rule, a required field is set to null, the key would change, or no organization has the key given."),
    )
)]
async fn update(
    State(state): State<AppState>,
    admin: Admin,
    Path(key): Path<String>,
    AdminJson(patch): AdminJson<Value>,
) -> Result<Json<Contract>, ApiError> {
    let mut tx = state.store.begin().await?;
    let current = contracts::get(&mut tx, &key).await.or_not_found(no_such(&key))?;
    let wanted: NewContract = merge_patch(&NewContract::from(&current), &patch, NOT_NULL)?;
    if wanted.key != current.key {
        return Err(ApiError::Unprocessable(vec![FieldError::new("key", "cannot be changed")]));
    }
    validate(&wanted)?;
    if wanted.organization != current.organization {
        check_organization(&mut tx, &wanted.organization).await?;
    }
    let contract = contracts::update(&mut tx, &wanted).await?;
    // Every writable field before and after (docs/admin-api.md, "Audit events of updates");
    // a move shows as `organization` changing.
    let detail = json!({"before": NewContract::from(&current), "after": wanted});
    let event = with_contract(admin.event("contract.update", "admin API"), &contract, detail);
    audit::insert(&mut tx, &event).await?;
    tx.commit().await?;
    state.entitlements.invalidate_all().await;
    Ok(Json(contract))
}

/// Deletes a contract nobody holds (409 otherwise) with its enrollment codes.
#[utoipa::path(
    delete,
    path = "/contracts/{key}",
    operation_id = "delete_contract",
    tag = "contracts",
    params(("key" = String, Path, description = "The contract's key.")),
    responses(
        (status = 204, description = "Deleted, with its enrollment codes."),
        (status = 404, description = "No contract has this key."),
        (status = 409, description = "Users are still attached to the contract."),
    )
)]
async fn remove(
    State(state): State<AppState>,
    admin: Admin,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.store.begin().await?;
    let contract = contracts::get(&mut tx, &key).await.or_not_found(no_such(&key))?;
    contracts::delete(&mut tx, &key).await.map_err(|e| match e {
        StoreError::InUse => ApiError::Conflict(
            "Users are still attached to the contract; detach them or set it inactive.".into(),
        ),
        other => other.into(),
    })?;
    audit::insert(
        &mut tx,
        // The contract as it was: the `data` of its `contract.deleted` event (docs/events.md).
        &with_contract(
            admin.event("contract.delete", "admin API"),
            &contract,
            json!({"before": NewContract::from(&contract)}),
        ),
    )
    .await?;
    tx.commit().await?;
    state.entitlements.invalidate_all().await;
    Ok(StatusCode::NO_CONTENT)
}

/// The contract's holders (its attachments; `seats_used` also counts allocated seat
/// assignments, so `total` is counted on its own).
#[utoipa::path(
    get,
    path = "/contracts/{key}/members",
    operation_id = "list_contract_members",
    tag = "contracts",
    params(("key" = String, Path, description = "The contract's key."), PageQuery),
    responses(
        (status = 200, description = "One page of holders.", body = Page<ContractMember>),
        (status = 400, description = "A query parameter is malformed or unknown."),
        (status = 404, description = "No contract has this key."),
        (status = 422, description = "`limit` is out of range."),
    )
)]
async fn members(
    State(state): State<AppState>,
    Path(key): Path<String>,
    mut params: Params,
) -> Result<Json<Page<ContractMember>>, ApiError> {
    let page = params.page()?;
    params.finish()?;
    let mut conn = state.store.conn().await?;
    let contract = contracts::get(&mut conn, &key).await.or_not_found(no_such(&key))?;
    let items = contracts::members(&mut conn, contract.id, page.limit, page.offset).await?;
    let total = contracts::member_count(&mut conn, contract.id).await?;
    Ok(Json(Page::new(items, total, page)))
}

/// A contract-level audit event (organization and contract keys set); `detail` null means none.
fn with_contract(event: NewAuditEvent, contract: &Contract, detail: Value) -> NewAuditEvent {
    NewAuditEvent {
        organization: Some(contract.organization.clone()),
        contract: Some(contract.key.clone()),
        detail: (!detail.is_null()).then_some(detail),
        ..event
    }
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;
    use crate::store::model::MembershipType;

    fn contract() -> NewContract {
        NewContract {
            key: "acme-2026".into(),
            organization: "acme".into(),
            name: "Acme 2026".into(),
            membership_type: MembershipType::Auto,
            active: true,
            starts_on: Some(date!(2026 - 01 - 01)),
            ends_on: Some(date!(2026 - 01 - 01)),
            max_learners: Some(0),
            price: Some("12.50".into()),
        }
    }

    #[test]
    fn a_one_day_free_unlimited_contract_is_valid() {
        assert!(validate(&contract()).is_ok());
        assert!(validate(&NewContract { price: Some("0".into()), max_learners: None, ..contract() }).is_ok());
    }

    #[test]
    fn dates_seats_and_price_are_checked_together() {
        let bad = NewContract {
            ends_on: Some(date!(2025 - 12 - 31)),
            max_learners: Some(-1),
            price: Some("-1".into()),
            ..contract()
        };
        let Err(ApiError::Unprocessable(errors)) = validate(&bad) else { panic!("expected 422") };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["ends_on", "max_learners", "price"]);
    }
}
