//! `GET|PUT|DELETE /_sidecar/active-organization` (docs/contract.md §10): which of the
//! caller's organizations their session acts for, and the learner's switch.
//!
//! - `GET` answers `{"active", "source", "organizations": [{"key", "name"}]}`, the choice the
//!   headers of the same token carry ([`crate::entitlements::active`]).
//! - `PUT` with `{"organization": key}` stores the session's selection (per `sid`; one per user
//!   for tokens without one) and answers like `GET`: 422 (field `organization`) when the caller
//!   is not a member, 409 when a single-organization scope of the token fixes the choice.
//! - `DELETE` forgets the selection: 204.
//!
//! The writes run the checks of code redemption, in the same order: the caller's token (401,
//! before anything else is read), cross-site (403, [`crate::cross_site`]), for `PUT` a JSON body
//! (415, 413, 400), then the per-user limit `server.max_selections_per_minute` (429). A write
//! is audited in its transaction and then invalidates the user's cached logins on every
//! replica (Redis), so the very next request carries the new choice.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::gate::Authenticated;
use super::redeem::{read_body, same_site, says_json};
use crate::auth::validate::Principal;
use crate::b2b::Facts;
use crate::entitlements::active::{Active, Source, choose};
use crate::error::{ApiError, FieldError, problem};
use crate::state::AppState;
use crate::store::model::NewAuditEvent;
use crate::store::{audit, selections, users};

/// The audit actor of a selection: the user, through their session.
const ACTOR: &str = "session";

/// The answer of `GET` and `PUT`.
#[derive(Debug, Serialize)]
struct Answer<'a> {
    /// The active organization's key.
    active: Option<&'a str>,
    /// `scope`, `selection`, `only`, or `null` with no active organization.
    source: Option<&'static str>,
    /// Every organization of the user, so an app can draw a switcher.
    organizations: Vec<Named<'a>>,
}

#[derive(Debug, Serialize)]
struct Named<'a> {
    key: &'a str,
    name: &'a str,
}

fn answer(facts: &Facts, active: Option<Active<'_>>) -> Response {
    let body = Answer {
        active: active.map(|a| a.key),
        source: active.map(|a| a.source.as_str()),
        organizations: facts.organizations.iter().map(|o| Named { key: &o.key, name: &o.name }).collect(),
    };
    Json(body).into_response()
}

/// The body of `PUT`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Selection {
    organization: String,
}

/// `GET`: the caller's active organization for this token.
pub async fn get(
    State(state): State<AppState>,
    Authenticated(p): Authenticated,
) -> Result<Response, ApiError> {
    let (facts, _, _) = state.entitlements.lookup(&p).await?;
    Ok(answer(&facts, choose(&facts, &p.scope, &p.organizations.orgs)))
}

/// `PUT` with `{"organization": key}`: selects the session's active organization.
pub async fn put(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authenticated(p): Authenticated,
    request: Request,
) -> Result<Response, ApiError> {
    same_site(&state, peer, &request)?;
    if !says_json(request.headers()) {
        let detail = "The body must be JSON sent with Content-Type: application/json.";
        return Ok(problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, Some(detail), &[]));
    }
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(refused) => return Ok(refused),
    };
    let wanted = crate::error::json_body::parse::<Selection>(&body)?;
    limit(&state, &p)?;
    let (facts, _, _) = state.entitlements.lookup(&p).await?;
    if choose(&facts, &p.scope, &p.organizations.orgs).is_some_and(|a| a.source.is_fixed()) {
        state.metrics.count_selection("fixed");
        return Err(ApiError::Conflict(
            "The token's organization:<alias> scope fixes the active organization; sign in without it to switch."
                .into(),
        ));
    }
    let Some(org) = facts.organizations.iter().find(|o| o.key == wanted.organization) else {
        return Err(not_member(&state));
    };
    let mut tx = state.store.begin().await?;
    users::ensure(&mut tx, &p.sub).await?;
    if !selections::put(&mut tx, &p.sub, session(&p), &org.key).await? {
        // Deleted since the login was reconciled.
        return Err(not_member(&state));
    }
    audit::insert(&mut tx, &event(&p, "active_organization.selected", Some(&org.key))).await?;
    tx.commit().await?;
    state.entitlements.invalidate_user(&p.sub).await;
    state.metrics.count_selection("selected");
    Ok(answer(&facts, Some(Active { key: &org.key, source: Source::Selection })))
}

/// `DELETE`: forgets the session's selection (204 whether or not there was one).
pub async fn delete(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authenticated(p): Authenticated,
    request: Request,
) -> Result<Response, ApiError> {
    same_site(&state, peer, &request)?;
    limit(&state, &p)?;
    let mut tx = state.store.begin().await?;
    if selections::delete(&mut tx, &p.sub, session(&p)).await? {
        audit::insert(&mut tx, &event(&p, "active_organization.cleared", None)).await?;
    }
    tx.commit().await?;
    state.entitlements.invalidate_user(&p.sub).await;
    state.metrics.count_selection("cleared");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The session a selection belongs to: the token's `sid`, or `""` (one selection per user).
fn session(p: &Principal) -> &str {
    p.sid.as_deref().unwrap_or("")
}

/// Counts a write against the caller's per-minute limit, or refuses it (429).
fn limit(state: &AppState, p: &Principal) -> Result<(), ApiError> {
    match state.selection_changes.begin(&p.sub) {
        // Every write counts: nothing is forgiven.
        Ok(attempt) => {
            drop(attempt);
            Ok(())
        }
        Err(retry_after_secs) => {
            state.metrics.count_selection("rate_limited");
            Err(ApiError::TooManyRequests {
                retry_after_secs,
                detail: "Too many changes of the active organization; try again later.".into(),
            })
        }
    }
}

fn not_member(state: &AppState) -> ApiError {
    state.metrics.count_selection("not_member");
    ApiError::Unprocessable(vec![FieldError::new(
        "organization",
        "You are not a member of this organization.",
    )])
}

/// The audit event of a change (the session id stays out of the trail).
fn event(p: &Principal, action: &str, organization: Option<&str>) -> NewAuditEvent {
    NewAuditEvent {
        actor: ACTOR.into(),
        action: action.into(),
        sub: Some(p.sub.clone()),
        organization: organization.map(str::to_owned),
        contract: None,
        reason: Some("chosen by the user".into()),
        detail: None,
    }
}
