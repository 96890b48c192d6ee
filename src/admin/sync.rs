//! `POST /admin/v1/sync/organizations`: imports Keycloak's organizations (see
//! [`crate::keycloak::sync`]): creates missing ones, updates linked ones, never changes a key,
//! never deletes. Answers `{created, updated, skipped, conflicts}`; every cached login is
//! invalidated when something was written.

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::Params;
use super::guard::Admin;
use crate::error::ApiError;
use crate::keycloak::sync::{SyncReport, sync_organizations};
use crate::keycloak::{KeycloakAdmin, NOT_CONFIGURED};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(sync))
}

/// The Keycloak admin client, or 503 saying that `keycloak_admin` is not configured.
pub(super) fn keycloak(state: &AppState) -> Result<&KeycloakAdmin, ApiError> {
    state
        .keycloak
        .as_deref()
        .ok_or_else(|| ApiError::Unavailable { retry_after_secs: 60, detail: NOT_CONFIGURED.into() })
}

/// Imports Keycloak's organizations.
#[utoipa::path(
    post,
    path = "/sync/organizations",
    operation_id = "sync_organizations",
    tag = "sync",
    responses(
        (status = 200, description = "What the sync did.", body = SyncReport),
        (status = 400, description = "A query parameter was given (there are none)."),
        (status = 502, description = "A Keycloak admin API call failed."),
        (status = 503, description = "`keycloak_admin` is not configured."),
    )
)]
async fn sync(
    State(state): State<AppState>,
    admin: Admin,
    params: Params,
) -> Result<Json<SyncReport>, ApiError> {
    params.finish()?;
    let report = sync_organizations(&state.store, keycloak(&state)?, &admin.actor()).await?;
    if report.changed() {
        state.entitlements.invalidate_all().await;
    }
    Ok(Json(report))
}
