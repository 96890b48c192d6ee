//! Delegated management (docs/contract.md §11): an organization's managers (memberships with
//! `manager = true`) manage that organization on the PUBLIC port with their own access token,
//! under `{reserved_prefix}/manage/organizations/{org}/…`, when `admin.delegate_to_managers`
//! is on (off, the routes do not exist and answer 404 like any unserved reserved path).
//!
//! The routes are the admin API's own handlers, not copies: [`authorize`] stands where the
//! admin port's `guard::require_admin` stands and hands the handler an [`Admin`] whose scope is
//! the one organization ([`Admin::manager`]); each handler wired here checks that what it
//! touches lies within that scope (`Admin::within`, `Admin::filter_organization`), so a
//! contract, code or member of another organization is 404 like one that does not exist.
//! Handlers read their path parameters by name (`{org}` is the organization; an organization's
//! own handlers accept it as an alias of `{key}`), so the longer manage path reaches them
//! unchanged.
//!
//! For every request, in this order:
//! 1. authenticate the caller's token (401 / 503 as on the other public routes);
//! 2. the caller must manage `{org}` (a membership with `manager = true`), else 404;
//! 3. a write (any method but `GET`/`HEAD`) must not be cross-site ([`crate::cross_site`],
//!    403) and must stay within `admin.manager_writes_per_minute` per manager (429 with
//!    `Retry-After`; per replica, as the redemption limiter);
//! 4. the handler runs with the manager's [`Admin`]; its audit events name `manager:<sub>`.
//!
//! The public port owns its route table (`public::router`), and the admin module sits above the
//! public one, so the app hands these routes to the public router ([`routes`]), which counts
//! them as mode `manage` like every route of its table.
//!
//! Adding a route for another admin handler: one line in [`routes`]' table, `pub(super)` on the
//! handler, a scope check in the handler, and named (not positional) path parameters.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};

use super::guard::Admin;
use super::{assignments, audit, codes, contracts, organizations, users};
use crate::codes::FailureLimiter;
use crate::error::ApiError;
use crate::public::gate::Authenticated;
use crate::state::AppState;
use crate::store::memberships;

/// The manage routes, paths relative to `{reserved_prefix}`; none when delegation is off.
pub fn routes(state: &AppState) -> Vec<(String, MethodRouter<AppState>)> {
    if !state.config.admin.delegate_to_managers {
        return Vec::new();
    }
    // The table: path below `/manage/organizations/{org}`, and the admin handlers it serves.
    let table: [(&'static str, MethodRouter<AppState>); 11] = [
        ("", get(organizations::show)),
        ("/members", get(organizations::members)),
        ("/members/{sub}", delete(users::delete_membership)),
        ("/contracts", get(contracts::list)),
        ("/contracts/{key}/codes", get(codes::list).post(codes::create)),
        ("/contracts/{key}/codes/revoke", post(assignments::revoke_codes)),
        ("/codes/{code}", delete(codes::revoke)),
        ("/contracts/{key}/assignments", get(assignments::list).post(assignments::create)),
        ("/assignments/{id}", delete(assignments::revoke)),
        ("/contracts/{key}/usage", get(assignments::usage)),
        ("/audit", get(audit::list)),
    ];
    let limiter =
        Arc::new(FailureLimiter::new(state.config.admin.manager_writes_per_minute, LIMITER_CAPACITY));
    table
        .into_iter()
        .map(|(path, handler)| {
            let manage = Manage { state: state.clone(), limiter: limiter.clone(), route: path };
            let handler = handler.layer(middleware::from_fn_with_state(manage, authorize));
            (format!("/manage/organizations/{{org}}{path}"), handler)
        })
        .collect()
}

/// Managers tracked by the write limiter at once (idle ones leave after a minute).
const LIMITER_CAPACITY: u64 = 100_000;

/// What [`authorize`] needs for one route.
#[derive(Clone)]
struct Manage {
    state: AppState,
    /// Counts every write per manager; shared by all manage routes.
    limiter: Arc<FailureLimiter>,
    /// The route's path below the organization, the `route` label of `manager_actions_total`.
    route: &'static str,
}

/// The manager-auth middleware of every manage route (the steps of the module docs).
async fn authorize(State(manage): State<Manage>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let admin = match admit(&manage, &mut parts).await {
        Ok(admin) => admin,
        Err(e) => return e.into_response(),
    };
    let method = parts.method.clone();
    parts.extensions.insert(admin);
    let response = next.run(Request::from_parts(parts, body)).await;
    if response.status().is_success() {
        manage.state.metrics.count_manager_action(manage.route, method_label(&method));
    }
    response
}

async fn admit(manage: &Manage, parts: &mut axum::http::request::Parts) -> Result<Admin, ApiError> {
    let state = &manage.state;
    let Authenticated(principal) = Authenticated::from_request_parts(parts, state).await?;
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| ApiError::NotFound("No such path.".into()))?;
    let org = params
        .iter()
        .find(|(name, _)| *name == "org")
        .map(|(_, value)| value.to_owned())
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a manage route without {{org}}")))?;
    let mut conn = state.store.conn().await?;
    let manages = memberships::list_for_user(&mut conn, &principal.sub)
        .await?
        .iter()
        .any(|m| m.manager && m.organization == org);
    drop(conn);
    if !manages {
        return Err(ApiError::NotFound(format!("No organization with key `{org}`.")));
    }
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        let ConnectInfo(peer) = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .cloned()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the public port without ConnectInfo")))?;
        let trusted = state.auth.is_trusted(peer.ip());
        crate::cross_site::check(&state.config.server.allowed_origins, trusted, &parts.headers, &parts.uri)?;
        // Every write counts (never forgiven): the limit is on changes, not on failures.
        let attempt =
            manage.limiter.begin(&principal.sub).map_err(|retry_after_secs| ApiError::TooManyRequests {
                retry_after_secs,
                detail: "Too many changes by this manager; retry later.".into(),
            })?;
        drop(attempt);
    }
    Ok(Admin::manager(&principal.sub, &org))
}

/// The `method` label: a fixed set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}
