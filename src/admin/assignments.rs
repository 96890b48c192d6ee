//! Seat assignments by e-mail (docs/contract.md §12) and the seed's per-contract workflows:
//! `POST|GET /contracts/{key}/assignments`, `DELETE /assignments/{id}`,
//! `POST /contracts/{key}/codes/revoke` (every unredeemed code at once) and
//! `GET /contracts/{key}/usage`.
//!
//! Every route finds its contract (or assignment) through [`contract`] or [`assignment`], the
//! one place that turns a path into a row and answers 404 — also for a row outside the
//! caller's scope, so an organization manager (docs/contract.md §11, `admin::manage`, where
//! these handlers serve the same routes) never learns what another organization holds.
//! A manager assigns seats only to e-mails of the organization's `email_domains`; the others
//! are answered in `rejected`.
//!
//! E-mails are trimmed and lower-cased (Keycloak stores them lower-cased), checked for the
//! shape `local@domain` (no spaces, no control characters, at most 254 characters), and
//! deduplicated; a rejected one is answered in `rejected` with a reason and does not stop the
//! others. Seats are all or nothing: when the contract has fewer free seats than new
//! assignments, the answer is 409 and nothing is written.

use std::collections::HashSet;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AdminJson, PageQuery, Params};
use super::guard::Admin;
use super::{OrNotFound, Page};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;
use crate::store::assignments::{self, MAX_EMAILS, Usage};
use crate::store::model::{Assignment, AssignmentState, Contract, NewAuditEvent};
use crate::store::{Conn, StoreError, audit, codes, contracts, organizations};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(create, list))
        .routes(routes!(revoke))
        .routes(routes!(revoke_codes))
        .routes(routes!(usage))
}

/// The path of a contract's routes. Named, not positional, so the same handler also serves
/// the manage route whose path names the organization too.
#[derive(Debug, Deserialize)]
pub(super) struct ContractPath {
    key: String,
}

/// The path of an assignment's route (named, as [`ContractPath`]).
#[derive(Debug, Deserialize)]
pub(super) struct AssignmentPath {
    id: String,
}

/// The contract a route names by key, or 404 when there is none or it lies outside `admin`'s
/// scope. The one place a route resolves its contract (and thereby its organization).
pub(super) async fn contract(conn: &mut Conn, admin: &Admin, key: &str) -> Result<Contract, ApiError> {
    let detail = || format!("No contract with key `{key}`.");
    let contract = contracts::get(conn, key).await.or_not_found(detail)?;
    admin.within(&contract.organization, detail)?;
    Ok(contract)
}

/// The assignment a route names by id, or 404 (also outside `admin`'s scope); see [`contract`].
pub(super) async fn assignment(conn: &mut Conn, admin: &Admin, id: &str) -> Result<Assignment, ApiError> {
    let detail = || "No such assignment.".to_owned();
    let unknown = || ApiError::NotFound(detail());
    let id: i64 = id.parse().map_err(|_| unknown())?;
    let found = assignments::get(conn, id).await.map_err(|e| match e {
        StoreError::NotFound => unknown(),
        other => other.into(),
    })?;
    admin.within(&found.organization, detail)?;
    Ok(found)
}

/// The body of an assignment request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Assign {
    /// E-mail addresses (1 to 1000); trimmed and lower-cased; duplicates count once.
    emails: Vec<String>,
    /// When seats not accepted by then are released (default: never); in the future.
    #[serde(default, with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
}

/// An e-mail that got no assignment, and why.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Rejected {
    /// As given.
    email: String,
    detail: String,
}

/// The answer of an assignment request.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Assigned {
    /// New `allocated` assignments, each holding a seat.
    created: Vec<Assignment>,
    /// E-mails that already had a live (`allocated` or `accepted`) assignment of the contract.
    existing: Vec<Assignment>,
    /// E-mails that are not addresses.
    rejected: Vec<Rejected>,
}

/// Trims and lower-cases an e-mail; `Err` says why it is not one.
pub fn normalize_email(raw: &str) -> Result<String, &'static str> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err("is empty");
    }
    if email.len() > 254 {
        return Err("is longer than 254 characters");
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains a space or a control character");
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err("has no @");
    };
    if local.is_empty() || domain.is_empty() || domain.starts_with('.') || domain.ends_with('.') {
        return Err("is not of the form name@domain");
    }
    if local.contains('@') || !domain.contains('.') && domain != "localhost" {
        return Err("is not of the form name@domain");
    }
    Ok(email)
}

/// Reserves seats of a contract for e-mail addresses (docs/contract.md §12).
#[utoipa::path(
    post,
    path = "/contracts/{key}/assignments",
    operation_id = "create_assignments",
    tag = "assignments",
    params(("key" = String, Path, description = "The contract's key.")),
    request_body = Assign,
    responses(
        (status = 201, description = "What became of each e-mail.", body = Assigned),
        (status = 400, description = "Not a JSON object, a wrong type or an unknown field."),
        (status = 404, description = "No contract has this key."),
        (status = 409, description = "Fewer free seats than new assignments; nothing was written."),
        (status = 422, description = "No e-mails, more than 1000, or `expires_at` not in the future."),
    )
)]
pub(super) async fn create(
    State(state): State<AppState>,
    admin: Admin,
    Path(ContractPath { key }): Path<ContractPath>,
    AdminJson(body): AdminJson<Assign>,
) -> Result<Response, ApiError> {
    let rule = |field: &str, detail: String| ApiError::Unprocessable(vec![FieldError::new(field, detail)]);
    if body.emails.is_empty() || body.emails.len() > MAX_EMAILS {
        return Err(rule("emails", format!("must list 1 to {MAX_EMAILS} e-mail addresses")));
    }
    if body.expires_at.is_some_and(|t| t <= OffsetDateTime::now_utc()) {
        return Err(rule("expires_at", "must be in the future".into()));
    }
    let mut emails = Vec::new();
    let mut seen = HashSet::new();
    let mut rejected = Vec::new();
    for raw in &body.emails {
        match normalize_email(raw) {
            Ok(email) if seen.insert(email.clone()) => emails.push(email),
            Ok(_) => {}
            Err(why) => rejected.push(Rejected { email: raw.clone(), detail: format!("the e-mail {why}") }),
        }
    }
    let mut tx = state.store.begin().await?;
    let contract = contract(&mut tx, &admin, &key).await?;
    if admin.organization().is_some() {
        // A manager assigns only within the organization's e-mail domains (§11).
        let org = organizations::get(&mut tx, &contract.organization)
            .await
            .or_not_found(|| format!("No contract with key `{key}`."))?;
        emails.retain(|email| {
            let admitted = org.admits_email(email);
            if !admitted {
                rejected.push(Rejected {
                    email: email.clone(),
                    detail: "the e-mail is outside the organization's email_domains".into(),
                });
            }
            admitted
        });
    }
    let expires_at = body.expires_at.map(crate::store::codec::truncate);
    let Some(made) = assignments::create(&mut tx, contract.id, &emails, expires_at).await? else {
        tx.rollback().await?;
        return Err(ApiError::Conflict(format!(
            "The contract `{key}` has too few free seats for {} new assignments; nothing was assigned.",
            emails.len()
        )));
    };
    for a in &made.created {
        let event = NewAuditEvent {
            organization: Some(contract.organization.clone()),
            contract: Some(contract.key.clone()),
            detail: Some(json!({"assignment": a.id, "expires_at": a.expires_at.map(rfc3339)})),
            ..admin.event("assignment.create", admin.reason())
        };
        audit::insert(&mut tx, &event).await?;
    }
    tx.commit().await?;
    if !made.created.is_empty() {
        state.metrics.count_assignments("allocated", made.created.len() as u64);
    }
    if made.expired > 0 {
        state.metrics.count_assignments("expired", made.expired);
    }
    let body = Assigned { created: made.created, existing: made.existing, rejected };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// The contract's assignments, oldest first, all or in one `state` (an allocated assignment
/// past its `expires_at` is `expired`).
#[utoipa::path(
    get,
    path = "/contracts/{key}/assignments",
    operation_id = "list_assignments",
    tag = "assignments",
    params(
        ("key" = String, Path, description = "The contract's key."),
        ("state" = Option<AssignmentState>, Query, description = "Only assignments in this state."),
        PageQuery,
    ),
    responses(
        (status = 200, description = "One page of assignments.", body = Page<Assignment>),
        (status = 400, description = "A query parameter is malformed or unknown."),
        (status = 404, description = "No contract has this key."),
        (status = 422, description = "`limit` is out of range."),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    admin: Admin,
    Path(ContractPath { key }): Path<ContractPath>,
    mut params: Params,
) -> Result<Json<Page<Assignment>>, ApiError> {
    let filter = params
        .string("state")?
        .map(|s| {
            s.parse::<AssignmentState>().map_err(|_| ApiError::BadRequest {
                detail: "The query parameter `state` is invalid.".into(),
                errors: vec![FieldError::new("state", "must be allocated, accepted, expired or revoked")],
            })
        })
        .transpose()?;
    let page = params.page()?;
    params.finish()?;
    let mut conn = state.store.conn().await?;
    let contract = contract(&mut conn, &admin, &key).await?;
    let total = assignments::count(&mut conn, contract.id, filter).await?;
    let items = assignments::list(&mut conn, contract.id, filter, page.limit, page.offset).await?;
    Ok(Json(Page::new(items, total, page)))
}

/// Revokes an assignment nobody has accepted yet, releasing its seat: 204, 409 when it is not
/// `allocated` (accepted, expired or revoked), 404 when unknown.
#[utoipa::path(
    delete,
    path = "/assignments/{id}",
    operation_id = "revoke_assignment",
    tag = "assignments",
    params(("id" = i64, Path, description = "The assignment's id.")),
    responses(
        (status = 204, description = "Revoked; its seat is free."),
        (status = 404, description = "No such assignment."),
        (status = 409, description = "The assignment is accepted, expired or revoked already."),
    )
)]
pub(super) async fn revoke(
    State(state): State<AppState>,
    admin: Admin,
    Path(AssignmentPath { id }): Path<AssignmentPath>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.store.begin().await?;
    let found = assignment(&mut tx, &admin, &id).await?;
    if !assignments::revoke(&mut tx, &found).await? {
        tx.rollback().await?;
        let now = assignments::get(&mut state.store.conn().await?, found.id).await?;
        return Err(ApiError::Conflict(format!(
            "The assignment is {}; only an allocated assignment can be revoked.",
            now.state
        )));
    }
    let event = NewAuditEvent {
        organization: Some(found.organization.clone()),
        contract: Some(found.contract.clone()),
        detail: Some(json!({"assignment": found.id})),
        ..admin.event("assignment.revoke", admin.reason())
    };
    audit::insert(&mut tx, &event).await?;
    tx.commit().await?;
    state.metrics.count_assignments("revoked", 1);
    Ok(StatusCode::NO_CONTENT)
}

/// How many codes a bulk revocation revoked.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RevokedCodes {
    #[schema(minimum = 0)]
    revoked: u64,
}

/// Revokes every code of the contract that nobody has redeemed (and is not revoked yet).
#[utoipa::path(
    post,
    path = "/contracts/{key}/codes/revoke",
    operation_id = "revoke_contract_codes",
    tag = "codes",
    params(("key" = String, Path, description = "The contract's key.")),
    responses(
        (status = 200, description = "How many codes were revoked now.", body = RevokedCodes),
        (status = 404, description = "No contract has this key."),
    )
)]
pub(super) async fn revoke_codes(
    State(state): State<AppState>,
    admin: Admin,
    Path(ContractPath { key }): Path<ContractPath>,
) -> Result<Json<RevokedCodes>, ApiError> {
    let mut tx = state.store.begin().await?;
    let contract = contract(&mut tx, &admin, &key).await?;
    let revoked = codes::revoke_unredeemed(&mut tx, contract.id).await?;
    if revoked > 0 {
        let event = NewAuditEvent {
            organization: Some(contract.organization.clone()),
            contract: Some(contract.key.clone()),
            detail: Some(json!({"count": revoked})),
            ..admin.event("code.revoke_all", admin.reason())
        };
        audit::insert(&mut tx, &event).await?;
    }
    tx.commit().await?;
    Ok(Json(RevokedCodes { revoked }))
}

/// The contract's seats, attachments by source, codes and assignments at a glance.
#[utoipa::path(
    get,
    path = "/contracts/{key}/usage",
    operation_id = "contract_usage",
    tag = "contracts",
    params(("key" = String, Path, description = "The contract's key.")),
    responses(
        (status = 200, description = "The usage report.", body = Usage),
        (status = 404, description = "No contract has this key."),
    )
)]
pub(super) async fn usage(
    State(state): State<AppState>,
    admin: Admin,
    Path(ContractPath { key }): Path<ContractPath>,
) -> Result<Json<Usage>, ApiError> {
    let mut conn = state.store.conn().await?;
    let contract = contract(&mut conn, &admin, &key).await?;
    let usage =
        assignments::usage(&mut conn, contract.id, contract.max_learners, contract.seats_used).await?;
    Ok(Json(usage))
}

#[cfg(test)]
mod tests {
    use super::normalize_email;

    #[test]
    fn emails_are_trimmed_and_lower_cased_and_non_addresses_refused() {
        assert_eq!(normalize_email("  Ann.Lee@Example.ORG "), Ok("ann.lee@example.org".into()));
        assert_eq!(normalize_email("bob@localhost"), Ok("bob@localhost".into()));
        for bad in
            ["", "   ", "ann", "@example.org", "ann@", "ann@example", "a b@x.org", "a@b@x.org", "a@.x.org"]
        {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        assert!(normalize_email(&format!("{}@x.org", "a".repeat(250))).is_err());
    }
}
