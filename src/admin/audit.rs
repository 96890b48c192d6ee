//! `GET /admin/v1/audit?sub=&organization=&contract=&limit=&before=`: the audit trail, newest
//! first.
//!
//! It pages by cursor rather than offset because it grows while it is read: the answer's
//! `next_before` (the id of its oldest event, or null on the last page) is passed back as
//! `?before=` for the next, older page.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::Params;
use super::guard::Admin;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::audit;
use crate::store::model::{AuditEvent, AuditQuery};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(list))
}

/// One page of the audit trail, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AuditPage {
    items: Vec<AuditEvent>,
    limit: u32,
    /// Pass as `?before=` for the next, older page; null on the last page.
    next_before: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/audit",
    operation_id = "list_audit_events",
    tag = "audit",
    params(
        ("sub" = Option<String>, Query, description = "Only events about this user."),
        ("organization" = Option<String>, Query, description = "Only events about this organization (its key)."),
        ("contract" = Option<String>, Query, description = "Only events about this contract (its key)."),
        ("before" = Option<i64>, Query, minimum = 0, description = "Only events older than this event id (`next_before` of the previous page)."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 100)."),
    ),
    responses(
        (status = 200, description = "One page of events.", body = AuditPage),
        (status = 400, description = "A query parameter is malformed, repeated or unknown."),
        (status = 422, description = "`limit` is out of range."),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    admin: Admin,
    mut params: Params,
) -> Result<Json<AuditPage>, ApiError> {
    let query = AuditQuery {
        sub: params.string("sub")?,
        organization: admin.filter_organization(params.string("organization")?)?,
        contract: params.string("contract")?,
        before_id: params.number::<i64>("before")?,
        limit: params.limit()?,
    };
    params.finish()?;
    let mut conn = state.store.conn().await?;
    let items = audit::query(&mut conn, &query).await?;
    let next_before = (items.len() == query.limit as usize).then(|| items.last().map(|e| e.id)).flatten();
    Ok(Json(AuditPage { items, limit: query.limit, next_before }))
}
