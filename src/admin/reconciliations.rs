//! The `/reconcile` routes of the admin API:
//! - `POST /reconcile/users/{sub}` reconciles one user now against a stated organization set
//!   (body `{"organizations": …}` in any claim shape) or, without a body, against the user's
//!   organizations in Keycloak. Removal is authoritative either way: the set is the user's
//!   complete membership (see [`crate::keycloak::stated`]). `?dry_run=true` answers the plan
//!   and writes nothing.
//! - `POST /reconcile` queues a `reconcile.all` job (every known user against Keycloak) and
//!   answers 202 with its id; `GET /admin/v1/jobs/{id}` follows it.
//! - `POST /reconcile/contracts/{key}` attaches a contract to every current member of its
//!   organization, in ascending `sub` order, while seats last.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::OrNotFound;
use super::extract::{OptionalJson, Params};
use super::guard::Admin;
use super::sync::keycloak;
use crate::auth::org_claim::parse_org_claim;
use crate::error::ApiError;
use crate::keycloak::jobs::{RECONCILE_ALL, ReconcileAllPayload};
use crate::keycloak::stated::{Reconciled, Source, StatedSet, reconcile_from_keycloak, reconcile_stated};
use crate::reconcile::apply::Mode;
use crate::state::AppState;
use crate::store::model::{AttachOutcome, AttachmentSource, NewAuditEvent};
use crate::store::{attachments, audit, contracts, jobs, organizations};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(queue_all))
        .routes(routes!(one_user))
        .routes(routes!(one_contract))
}

/// The body of `POST /reconcile/users/{sub}`: the user's complete organization set, in any
/// shape the organization claim takes (`["acme"]`, `{"acme": {"id": "…"}}`, `"acme"`, …;
/// `null` or `[]` for none).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Stated {
    /// The organization claim, in any of its shapes.
    organizations: Value,
}

/// Reconciles one user now against a stated organization set, or without a body against the
/// user's organizations in Keycloak. The set is the user's complete membership.
#[utoipa::path(
    post,
    path = "/reconcile/users/{sub}",
    operation_id = "reconcile_user",
    tag = "reconcile",
    params(
        ("sub" = String, Path, description = "The user's Keycloak subject."),
        ("dry_run" = Option<bool>, Query, description = "Answer the plan and write nothing (default false)."),
    ),
    request_body(content = Option<Stated>, description = "Optional: without a body the organizations are read from Keycloak."),
    responses(
        (status = 200, description = "What the reconciliation did (or would do).", body = Reconciled),
        (status = 400, description = "Not a JSON object, a wrong type, an unknown field or query parameter; or no body while `keycloak_admin` is not configured."),
        (status = 404, description = "Keycloak has no user with this subject (no body)."),
        (status = 422, description = "`organizations` is missing."),
        (status = 502, description = "A Keycloak admin API call failed (no body)."),
    )
)]
async fn one_user(
    State(state): State<AppState>,
    admin: Admin,
    Path(sub): Path<String>,
    mut params: Params,
    OptionalJson(body): OptionalJson<Option<Stated>>,
) -> Result<Json<Reconciled>, ApiError> {
    let mode = if params.boolean("dry_run")?.unwrap_or(false) { Mode::DryRun } else { Mode::Apply };
    params.finish()?;
    let actor = admin.actor();
    let reconciled = match body {
        Some(stated) => {
            let claimed = parse_org_claim(Some(&stated.organizations));
            let stated = StatedSet { claimed: &claimed.orgs, ignored: claimed.ignored, source: Source::Body };
            reconcile_stated(&state.store, &sub, &stated, &actor, mode).await?
        }
        None => {
            let Some(keycloak) = state.keycloak.as_deref() else {
                return Err(ApiError::BadRequest {
                    detail: format!(
                        "Send the user's organizations as {{\"organizations\": [...]}}; without a body \
                         they are read from Keycloak, but {}",
                        crate::keycloak::NOT_CONFIGURED
                    ),
                    errors: vec![],
                });
            };
            match reconcile_from_keycloak(&state.store, keycloak, &sub, &actor, mode).await {
                Err(crate::keycloak::Error::Keycloak(e)) if e.status() == Some(404) => {
                    return Err(ApiError::NotFound(format!("Keycloak has no user `{sub}`.")));
                }
                other => other?,
            }
        }
    };
    if reconciled.changed && mode == Mode::Apply {
        state.entitlements.invalidate_user(&sub).await;
    }
    Ok(Json(reconciled))
}

/// The answer of `POST /reconcile`.
#[derive(Debug, Serialize, ToSchema)]
struct Queued {
    /// Follow it at `GET /admin/v1/jobs/{job_id}`.
    job_id: i64,
}

/// Queues a `reconcile.all` job → 202 `{job_id}` with `Location: /admin/v1/jobs/{id}`.
#[utoipa::path(
    post,
    path = "/reconcile",
    operation_id = "reconcile_all",
    tag = "reconcile",
    responses(
        (status = 202, description = "Queued: every known user will be reconciled against Keycloak.", body = Queued,
            headers(("Location" = String, description = "The job's URL."))),
        (status = 400, description = "A query parameter was given (there are none)."),
        (status = 503, description = "`keycloak_admin` is not configured."),
    )
)]
async fn queue_all(
    State(state): State<AppState>,
    admin: Admin,
    params: Params,
) -> Result<Response, ApiError> {
    params.finish()?;
    keycloak(&state)?;
    let payload = serde_json::to_value(ReconcileAllPayload { actor: admin.actor().0 })
        .map_err(|e| ApiError::Internal(e.into()))?;
    let mut tx = state.store.begin().await?;
    let job = jobs::enqueue(&mut tx, RECONCILE_ALL, &payload, OffsetDateTime::now_utc()).await?;
    let event = NewAuditEvent {
        detail: Some(json!({"job_id": job.id})),
        ..admin.event("reconcile.all.queued", "admin API")
    };
    audit::insert(&mut tx, &event).await?;
    tx.commit().await?;
    state.jobs.kick();
    let location = format!("/admin/v1/jobs/{}", job.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(Queued { job_id: job.id }))
        .into_response())
}

/// What attaching a contract to its organization's members did (counts of users).
#[derive(Debug, Serialize, ToSchema)]
struct ContractReconciled {
    contract: String,
    /// Newly attached (`source=admin`).
    attached: u64,
    /// Already held the contract.
    already: u64,
    /// Not attached: no free seat was left.
    skipped_full: u64,
}

/// Members read per page.
const MEMBERS_PER_PAGE: u32 = 500;

/// Attaches the contract to every current member of its organization in ascending `sub` order
/// while seats last (any membership type: the admin asks for it; validity is judged when
/// headers are served, as for every attachment). One per-user transaction each, so every
/// attachment serialises with that user's reconciliations and takes its seat atomically.
#[utoipa::path(
    post,
    path = "/reconcile/contracts/{key}",
    operation_id = "reconcile_contract",
    tag = "reconcile",
    params(("key" = String, Path, description = "The contract's key.")),
    responses(
        (status = 200, description = "How many members were attached, already held it, or found no seat.", body = ContractReconciled),
        (status = 400, description = "A query parameter was given (there are none)."),
        (status = 404, description = "No contract has this key."),
    )
)]
async fn one_contract(
    State(state): State<AppState>,
    admin: Admin,
    Path(key): Path<String>,
    params: Params,
) -> Result<Json<ContractReconciled>, ApiError> {
    params.finish()?;
    let contract = {
        let mut conn = state.store.conn().await?;
        contracts::get(&mut conn, &key).await.or_not_found(|| format!("No contract with key `{key}`."))?
    };
    let mut result =
        ContractReconciled { contract: contract.key.clone(), attached: 0, already: 0, skipped_full: 0 };
    let mut offset = 0;
    loop {
        let members = {
            let mut conn = state.store.conn().await?;
            organizations::members(&mut conn, contract.organization_id, MEMBERS_PER_PAGE, offset).await?
        };
        offset += members.len() as u32;
        for member in &members {
            let (mut tx, _) = state.store.begin_user(&member.sub, None).await?;
            match attachments::attach(&mut tx, &member.sub, contract.id, AttachmentSource::Admin).await? {
                AttachOutcome::Attached => {
                    let event = NewAuditEvent {
                        sub: Some(member.sub.clone()),
                        organization: Some(contract.organization.clone()),
                        contract: Some(contract.key.clone()),
                        detail: Some(json!({"source": "admin"})),
                        ..admin.event("attachment.add", "contract reconciled with its organization")
                    };
                    audit::insert(&mut tx, &event).await?;
                    tx.commit().await?;
                    state.entitlements.invalidate_user(&member.sub).await;
                    result.attached += 1;
                }
                AttachOutcome::AlreadyAttached => {
                    tx.rollback().await?;
                    result.already += 1;
                }
                AttachOutcome::Full => {
                    // A skip for a full contract is a change event when the member's skip
                    // state changes (docs/contract.md §13), as on a login's path.
                    if attachments::record_skip(&mut tx, &member.sub, contract.id).await? {
                        let event = NewAuditEvent {
                            sub: Some(member.sub.clone()),
                            organization: Some(contract.organization.clone()),
                            contract: Some(contract.key.clone()),
                            ..admin.event("attachment.skipped_full", "contract full")
                        };
                        audit::insert(&mut tx, &event).await?;
                        tx.commit().await?;
                    } else {
                        tx.rollback().await?;
                    }
                    result.skipped_full += 1;
                }
            }
        }
        if members.len() < MEMBERS_PER_PAGE as usize {
            break;
        }
    }
    state.metrics.seat_limit_skips.inc_by(result.skipped_full);
    let event = NewAuditEvent {
        organization: Some(contract.organization.clone()),
        contract: Some(contract.key.clone()),
        detail: Some(json!({
            "attached": result.attached, "already": result.already, "skipped_full": result.skipped_full,
        })),
        ..admin.event("contract.reconcile", "admin API")
    };
    let mut conn = state.store.conn().await?;
    audit::insert(&mut conn, &event).await?;
    Ok(Json(result))
}
