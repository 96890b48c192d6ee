//! `POST /admin/v1/sync/organizations`: imports Keycloak's organizations (see
//! [`crate::keycloak::sync`]): creates missing ones, updates linked ones, never changes a key,
//! never deletes. Answers `{created, updated, skipped, conflicts}`; every cached login is
//! invalidated when something was written.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;

use super::extract::Params;
use super::guard::Admin;
use crate::error::ApiError;
use crate::keycloak::sync::{SyncReport, sync_organizations};
use crate::keycloak::{KeycloakAdmin, NOT_CONFIGURED};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/sync/organizations", post(sync))
}

/// The Keycloak admin client, or 503 saying that `keycloak_admin` is not configured.
pub(super) fn keycloak(state: &AppState) -> Result<&KeycloakAdmin, ApiError> {
    state
        .keycloak
        .as_deref()
        .ok_or_else(|| ApiError::Unavailable { retry_after_secs: 60, detail: NOT_CONFIGURED.into() })
}

async fn sync(
    State(state): State<AppState>,
    admin: Admin,
    params: Params,
) -> Result<Json<SyncReport>, ApiError> {
    params.finish()?;
    let report = sync_organizations(&state.store, keycloak(&state)?, &admin.actor()).await?;
    if report.changed() {
        state.invalidate_all().await;
    }
    Ok(Json(report))
}
