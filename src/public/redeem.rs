//! Enrollment-code redemption on the public port (docs/contract.md §7), the HTTP part:
//! `POST /_sidecar/enrollment-codes/{code}/redeem`, or `POST /_sidecar/enrollment-codes/redeem`
//! with `{"code": …}` (which keeps the code out of gateway access logs and out of every path).
//! The redemption itself (steps 1–5 of §7, one transaction) is [`crate::codes::redeem`]; this
//! module checks the request before it, applies the failure limit, and maps the outcome to an
//! answer: 201/200 with the contract, 404 for an unusable code or a contract not valid today,
//! 409 when the contract is full, 429 after too many failures.
//!
//! Before any of that the handlers check, in this order: the caller's token (401, the
//! [`Authenticated`] extractor), read from the headers before a byte of the body is read; that
//! the request is not cross-site from an origin outside `server.allowed_origins` (403,
//! [`crate::cross_site`]); for the body form, `Content-Type: application/json` (415) and a body
//! of at most [`MAX_BODY_BYTES`] (413) that is `{"code": "…"}` (400/422); then the failure
//! limit (429).

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, FromRequest as _, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::gate::Authenticated;
use crate::auth::validate::Principal;
use crate::codes::redeem::{Outcome, Refusal, redeem};
use crate::error::{ApiError, problem};
use crate::state::AppState;
use crate::store::model::Profile;

const INVALID: &str = "Invalid or expired enrollment code.";
const NO_CONTRACT: &str = "No contracts found for this code.";
const FULL: &str = "Contract is full.";

/// The body of `POST …/enrollment-codes/redeem`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemBody {
    code: String,
}

/// The largest body the body form reads: `{"code": "…"}` with a 29-character code fits many
/// times over, and nothing larger is ever buffered.
pub const MAX_BODY_BYTES: usize = 4 * 1024;

// Both handlers name `Authenticated` before the whole `Request` and read the body themselves:
// a body extractor would run first and let anonymous clients make the sidecar hold bodies
// (150 of them with 2 MB each once took 300 MiB). The checks run in the order of the module
// docs (docs/contract.md §7 v2); authentication comes first so that a stranger learns nothing
// about the other checks, and a real user's refusal says what to fix.

/// `POST …/enrollment-codes/{code}/redeem`: the code in the path; the body is never read.
pub async fn from_path(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authenticated(principal): Authenticated,
    code: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    same_site(&state, peer, &request)?;
    let Ok(Path(code)) = code else {
        let detail = "The code in the path is not readable.".into();
        return Err(ApiError::BadRequest { detail, errors: vec![] });
    };
    handle(&state, &principal, code).await
}

/// `POST …/enrollment-codes/redeem` with `{"code": "…"}`.
pub async fn from_body(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authenticated(principal): Authenticated,
    request: Request,
) -> Result<Response, Response> {
    same_site(&state, peer, &request).map_err(IntoResponse::into_response)?;
    if !says_json(request.headers()) {
        let detail = "The body must be JSON sent with Content-Type: application/json.";
        return Err(problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, Some(detail), &[]));
    }
    let body = read_body(request).await?;
    // A body that is not `{"code": "…"}` is a client bug, not a guess: 400/422, not counted.
    let code = crate::error::json_body::parse::<RedeemBody>(&body).map_err(IntoResponse::into_response)?;
    handle(&state, &principal, code.code).await.map_err(IntoResponse::into_response)
}

/// Step 2 of the order above: refuses a cross-site request from an origin not allowed.
pub(super) fn same_site(state: &AppState, peer: SocketAddr, request: &Request) -> Result<(), ApiError> {
    let allowed = &state.config.server.allowed_origins;
    let trusted = state.auth.is_trusted(peer.ip());
    crate::cross_site::check(allowed, trusted, request.headers(), request.uri())
}

/// Whether the request says its body is JSON: one `Content-Type`, `application/json`,
/// parameters (`; charset=utf-8`) allowed. A form post (`application/x-www-form-urlencoded`,
/// `text/plain`) is what a cross-site page can send without a CORS preflight, so it is
/// refused (415), not guessed at.
pub(super) fn says_json(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok().is_some_and(is_json),
        _ => false,
    }
}

/// Whether a `Content-Type` value is `application/json`, in any case, with any parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default();
    essence.trim_matches([' ', '\t']).eq_ignore_ascii_case("application/json")
}

/// Reads at most [`MAX_BODY_BYTES`]: a larger `Content-Length` is refused before anything is
/// read, a longer body as soon as it passes the limit (413 either way).
pub(super) async fn read_body(request: Request) -> Result<Bytes, Response> {
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        let detail = format!("The body must not exceed {MAX_BODY_BYTES} bytes.");
        return Err(problem(StatusCode::PAYLOAD_TOO_LARGE, Some(&detail), &[]));
    }
    // axum's own limit (set on the route by `super::router`) and its statuses (413 over the
    // limit, 400 for a broken body), in the problem format.
    Bytes::from_request(request, &()).await.map_err(|e| problem(e.status(), Some(&e.body_text()), &[]))
}

/// Step 4: applies the failure limit, redeems `typed` for the caller, answers.
async fn handle(state: &AppState, principal: &Principal, typed: String) -> Result<Response, ApiError> {
    let attempt = match state.code_failures.begin(&principal.sub) {
        Ok(attempt) => attempt,
        Err(retry_after_secs) => {
            state.metrics.count_redemption("rate_limited");
            return Err(ApiError::TooManyRequests {
                retry_after_secs,
                detail: "Too many failed enrollment code attempts; try again later.".into(),
            });
        }
    };
    let profile = Profile {
        email: principal.email.clone(),
        username: principal.preferred_username.clone(),
        name: principal.name.clone(),
    };
    let outcome = match crate::codes::normalize(&typed) {
        None => Ok(Outcome::Refused(Refusal::Invalid)),
        Some(code) => redeem(&state.store, &principal.sub, &profile, &code, crate::store::now()).await,
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            // The database failed, not the caller.
            attempt.forgive();
            return Err(e.into());
        }
    };
    match outcome {
        Outcome::Created { contract, job } => {
            attempt.forgive();
            state.entitlements.invalidate_user(&principal.sub).await;
            if job.is_some() {
                // The push to Keycloak starts now rather than at the worker's next poll.
                state.jobs.kick();
            }
            state.metrics.count_redemption("created");
            Ok((StatusCode::CREATED, axum::Json(contract)).into_response())
        }
        Outcome::Already(contract) => {
            attempt.forgive();
            state.metrics.count_redemption("already");
            Ok((StatusCode::OK, axum::Json(contract)).into_response())
        }
        Outcome::Refused(refusal) => {
            drop(attempt); // counted as a failure
            let (result, error) = match refusal {
                Refusal::Invalid => ("invalid", ApiError::NotFound(INVALID.into())),
                Refusal::NoContract => ("no_contract", ApiError::NotFound(NO_CONTRACT.into())),
                Refusal::Full => ("full", ApiError::Conflict(FULL.into())),
            };
            state.metrics.count_redemption(result);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_form_takes_application_json_with_any_parameters() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json ;x=y",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for bad in [
            "",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "application/json-patch+json",
            "text/json",
            "application/json, text/plain",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
        let mut headers = HeaderMap::new();
        assert!(!says_json(&headers), "no Content-Type");
        headers.append(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(says_json(&headers));
        headers.append(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(!says_json(&headers), "two Content-Type headers");
    }
}
