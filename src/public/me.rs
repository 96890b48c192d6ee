//! `/_sidecar/me`: the caller's identity and entitlements as JSON — the claims of the
//! entitlement token the headers carry, plus the identity status, roles and the active
//! organization (`null` when none, where the token leaves it out). For an app's
//! frontend that wants to know who is signed in without parsing a token.

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use super::gate::Authenticated;
use crate::error::ApiError;
use crate::state::AppState;

/// The handler: an authenticated caller only (401 otherwise, through [`Authenticated`]).
pub async fn me(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (b2b, status) = state.entitlements.facts(&principal).await?;
    let payload = b2b.entitlement_token().split('.').nth(1).unwrap_or_default();
    let mut claims: serde_json::Value = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_else(|| json!({"sub": principal.sub}));
    claims["status"] = json!(status.as_str());
    claims["roles"] = json!(principal.roles);
    // The token leaves a null member out; here it is always present (docs/contract.md §10).
    claims["active_organization"] = json!(b2b.active_organization);
    Ok(Json(claims))
}
