//! Redeeming an enrollment code (docs/contract.md §7) on the public port:
//! `POST /_sidecar/enrollment-codes/{code}/redeem`, or `POST /_sidecar/enrollment-codes/redeem`
//! with `{"code": …}` (which keeps the code out of gateway access logs and out of every path).
//!
//! The whole redemption is one transaction begun by [`Store::begin_user`], so it serialises with
//! the user's logins and admin changes, and runs the steps of §7 in order:
//!
//! 1. unknown code, revoked, outside `activates_at`/`expires_at`, or a one-time code someone
//!    else redeemed → 404 `Invalid or expired enrollment code.` — 409 `Contract is full.`
//!    instead when the contract is valid today and full;
//! 2. contract not valid today → 404 `No contracts found for this code.`;
//! 3. the user already holds the contract → 200 with it (nothing written: a one-time code is
//!    not spent on somebody who needs no seat);
//! 4. no seat left → 409 `Contract is full.` (taken atomically by `attachments::attach`);
//! 5. membership in the contract's organization (new ones: `source=code`,
//!    `keep_until_seen=true`; an existing one keeps its flags), attachment (`source=code`),
//!    redemption record, audit events (actor `code`), and — only for a new membership of an
//!    organization linked to Keycloak — a durable `keycloak.add_member` job, all committed
//!    together; then the user's cached logins are invalidated on every replica → 201.
//!
//! Before any of that the handlers check, in this order: the caller's token (401), read from
//! the headers before a byte of the body is read; that the request is not cross-site from an
//! origin outside `server.allowed_origins` (403, [`crate::cross_site`]); for the body form,
//! `Content-Type: application/json` (415) and a body of at most [`MAX_BODY_BYTES`] (413) that
//! is `{"code": "…"}` (400/422); then the failure limit (429).
//!
//! Locks, in the store's global order: the user row, then the code row (the guarded claim of a
//! one-time code), then the contract row (the seat counter).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest as _, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::auth::gate::Caller;
use crate::auth::validate::Principal;
use crate::error::{ApiError, problem};
use crate::keycloak::jobs::{ADD_MEMBER, AddMemberPayload};
use crate::state::AppState;
use crate::store::model::{
    AttachOutcome, AttachmentSource, Contract, EnrollmentCode, MembershipSource, NewAuditEvent, Profile,
    Redemption,
};
use crate::store::{
    Store, StoreError, attachments, audit, codes, contracts, jobs, memberships, organizations,
};

/// Audit actor of every change a redemption makes.
const ACTOR: &str = "code";

const INVALID: &str = "Invalid or expired enrollment code.";
const NO_CONTRACT: &str = "No contracts found for this code.";
const FULL: &str = "Contract is full.";

/// The public routes, under `server.reserved_prefix`.
pub fn router(prefix: &str) -> Router<AppState> {
    Router::new()
        .route(
            &format!("{prefix}/enrollment-codes/redeem"),
            post(redeem_from_body).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route(&format!("{prefix}/enrollment-codes/{{code}}/redeem"), post(redeem_from_path))
}

/// Why a code gets the caller nothing (steps 1, 2 and 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Step 1: no such code, or not usable by this user now.
    Invalid,
    /// Step 2: the code's contract is not valid today.
    NoContract,
    /// Steps 1 and 4: every seat of the (valid) contract is taken.
    Full,
}

/// What a redemption did.
#[derive(Debug)]
pub enum Outcome {
    /// Step 5: the user now holds the contract (as it is after the seat was taken).
    Created {
        contract: Contract,
        /// The `keycloak.add_member` job queued with it, if any.
        job: Option<i64>,
    },
    /// Step 3: the user held the contract already; nothing changed.
    Already(Contract),
    Refused(Refusal),
}

/// Steps 1 and 2, from what the store holds before anything is written.
pub fn judge(
    code: &EnrollmentCode,
    contract: &Contract,
    sub: &str,
    now: OffsetDateTime,
) -> Result<(), Refusal> {
    let valid = crate::b2b::valid_on(contract.active, contract.starts_on, contract.ends_on, now.date());
    let taken_by_other =
        code.redemption == Redemption::OneTime && code.redeemed_by.as_deref().is_some_and(|by| by != sub);
    if !code.is_usable_at(now) || taken_by_other {
        return Err(unusable(valid, contract));
    }
    if !valid {
        return Err(Refusal::NoContract);
    }
    Ok(())
}

/// Step 1's answer: "full" tells the user why better than "invalid" when it is the reason
/// nobody can get in.
fn unusable(valid: bool, contract: &Contract) -> Refusal {
    if valid && crate::b2b::is_full(contract.max_learners, contract.seats_used) {
        Refusal::Full
    } else {
        Refusal::Invalid
    }
}

/// Redeems `code` (canonical form) for `sub` in one transaction; see the module docs.
pub async fn redeem(
    store: &Store,
    sub: &str,
    profile: &Profile,
    code: &str,
    now: OffsetDateTime,
) -> Result<Outcome, StoreError> {
    // Records the profile with the login time, so a learner who redeemed can be found by email.
    let (mut tx, _user) = store.begin_user(sub, Some(profile)).await?;
    let Some(code) = codes::find(&mut tx, code).await? else {
        return Ok(Outcome::Refused(Refusal::Invalid));
    };
    let contract = contracts::get_by_id(&mut tx, code.contract_id).await?;
    if let Err(refusal) = judge(&code, &contract, sub, now) {
        return Ok(Outcome::Refused(refusal));
    }
    // Another user's transaction may have claimed the code since `find`: the guarded UPDATE
    // waits for it and then matches nothing, which is step 1 again.
    if code.redemption == Redemption::OneTime && !codes::claim_one_time(&mut tx, code.id, sub).await? {
        return Ok(Outcome::Refused(unusable(true, &contract)));
    }
    match attachments::attach(&mut tx, sub, contract.id, AttachmentSource::Code).await? {
        AttachOutcome::Attached => {}
        AttachOutcome::AlreadyAttached => {
            // Rolling back also gives an unspent one-time code back.
            tx.rollback().await?;
            return Ok(Outcome::Already(contract));
        }
        AttachOutcome::Full => return Ok(Outcome::Refused(Refusal::Full)),
    }
    let organization = organizations::get(&mut tx, &contract.organization).await?;
    let fingerprint = super::fingerprint(&code.code);
    let event = |action: &str, contract_key: Option<&str>, detail| NewAuditEvent {
        actor: ACTOR.into(),
        action: action.into(),
        sub: Some(sub.to_owned()),
        organization: Some(organization.key.clone()),
        contract: contract_key.map(str::to_owned),
        reason: Some("enrollment code".into()),
        detail: Some(detail),
    };
    let new_membership =
        memberships::add(&mut tx, sub, organization.id, MembershipSource::Code, true, false).await?;
    let mut job = None;
    if new_membership {
        if let Some(keycloak_id) = organization.keycloak_id {
            let payload = AddMemberPayload { organization_keycloak_id: keycloak_id, sub: sub.to_owned() };
            job = Some(jobs::enqueue(&mut tx, ADD_MEMBER, &payload.to_value(), now).await?.id);
        }
        let detail = json!({
            "keep_until_seen": true, "manager": false, "source": "code",
            "code": fingerprint, "keycloak_job": job,
        });
        audit::insert(&mut tx, &event("membership.add", None, detail)).await?;
    }
    codes::record_redemption(&mut tx, code.id, sub, now).await?;
    let detail = json!({"source": "code", "code": fingerprint, "redemption": code.redemption});
    audit::insert(&mut tx, &event("attachment.add", Some(&contract.key), detail)).await?;
    let contract = contracts::get_by_id(&mut tx, contract.id).await?;
    tx.commit().await?;
    Ok(Outcome::Created { contract, job })
}

/// The body of `POST …/enrollment-codes/redeem`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemBody {
    code: String,
}

/// The largest body the body form reads: `{"code": "…"}` with a 29-character code fits many
/// times over, and nothing larger is ever buffered.
pub const MAX_BODY_BYTES: usize = 4 * 1024;

// Both handlers take the whole `Request` and read its body themselves, only after the caller
// is authenticated: a body extractor would run first and let anonymous clients make the
// sidecar hold bodies (150 of them with 2 MB each once took 300 MiB). The order (docs/contract.md §7 v2):
// 1. authenticate from the headers (401);
// 2. refuse a cross-site request from an origin not allowed (403, `crate::cross_site`);
// 3. body form only: `Content-Type: application/json` (415), then the body, at most
//    `MAX_BODY_BYTES` (413), as `{"code": "…"}` (400/422);
// 4. the failure limit (429) and the redemption itself.
// The path form never reads its body. Authentication comes first so that a stranger learns
// nothing about the other checks, and a real user's refusal says what to fix.

async fn redeem_from_path(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    code: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    answer(&state, from_path(&state, peer, code, request).await)
}

async fn redeem_from_body(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    answer(&state, from_body(&state, peer, request).await)
}

async fn from_path(
    state: &AppState,
    peer: SocketAddr,
    code: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, Response> {
    let principal = admit(state, peer, request.headers(), request.uri()).await?;
    let Ok(Path(code)) = code else {
        let detail = "The code in the path is not readable.".into();
        return Err(ApiError::BadRequest { detail, errors: vec![] }.into_response());
    };
    handle(state, &principal, code).await.map_err(IntoResponse::into_response)
}

async fn from_body(state: &AppState, peer: SocketAddr, request: Request) -> Result<Response, Response> {
    let principal = admit(state, peer, request.headers(), request.uri()).await?;
    if !says_json(request.headers()) {
        let detail = "The body must be JSON sent with Content-Type: application/json.";
        return Err(problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, Some(detail), &[]));
    }
    let body = read_body(request, state).await?;
    // A body that is not `{"code": "…"}` is a client bug, not a guess: 400/422, not counted.
    let code = crate::admin::extract::parse::<RedeemBody>(&body).map_err(IntoResponse::into_response)?;
    handle(state, &principal, code.code).await.map_err(IntoResponse::into_response)
}

fn answer(state: &AppState, result: Result<Response, Response>) -> Response {
    let response = result.unwrap_or_else(|refusal| refusal);
    state.count("redeem", response.status().as_u16());
    response
}

/// Steps 1 and 2 of the order above: who is calling, and from which site.
async fn admit(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Arc<Principal>, Response> {
    let principal = match state.auth.authenticate(headers).await {
        Ok(Caller::Authenticated(p)) => p,
        Ok(Caller::Anonymous) => return Err(ApiError::Unauthenticated.into_response()),
        Err(failure) => return Err(ApiError::from(failure).into_response()),
    };
    crate::cross_site::check(state, peer.ip(), headers, uri).map_err(IntoResponse::into_response)?;
    Ok(principal)
}

/// Whether the request says its body is JSON: one `Content-Type`, `application/json`,
/// parameters (`; charset=utf-8`) allowed. A form post (`application/x-www-form-urlencoded`,
/// `text/plain`) is what a cross-site page can send without a CORS preflight, so it is
/// refused (415), not guessed at.
fn says_json(headers: &HeaderMap) -> bool {
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
async fn read_body(request: Request, state: &AppState) -> Result<Bytes, Response> {
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        let detail = format!("The body must not exceed {MAX_BODY_BYTES} bytes.");
        return Err(problem(StatusCode::PAYLOAD_TOO_LARGE, Some(&detail), &[]));
    }
    // axum's own limit (set on the route by `router`) and its statuses (413 over the limit,
    // 400 for a broken body), in the problem format.
    Bytes::from_request(request, state).await.map_err(|e| problem(e.status(), Some(&e.body_text()), &[]))
}

/// Step 4: applies the failure limit, redeems `typed` for the caller, answers.
async fn handle(state: &AppState, principal: &Principal, typed: String) -> Result<Response, ApiError> {
    let attempt = match state.code_failures.begin(&principal.sub) {
        Ok(attempt) => attempt,
        Err(retry_after_secs) => {
            state.count_redemption("rate_limited");
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
    let outcome = match super::normalize(&typed) {
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
                state.kick_jobs();
            }
            state.count_redemption("created");
            Ok((StatusCode::CREATED, axum::Json(contract)).into_response())
        }
        Outcome::Already(contract) => {
            attempt.forgive();
            state.count_redemption("already");
            Ok((StatusCode::OK, axum::Json(contract)).into_response())
        }
        Outcome::Refused(refusal) => {
            drop(attempt); // counted as a failure
            let (result, error) = match refusal {
                Refusal::Invalid => ("invalid", ApiError::NotFound(INVALID.into())),
                Refusal::NoContract => ("no_contract", ApiError::NotFound(NO_CONTRACT.into())),
                Refusal::Full => ("full", ApiError::Conflict(FULL.into())),
            };
            state.count_redemption(result);
            Err(error)
        }
    }
}

impl AppState {
    /// Counts a redemption by `result` (created, already, invalid, no_contract, full,
    /// rate_limited).
    fn count_redemption(&self, result: &'static str) {
        self.metrics.code_redemptions.get_or_create(&vec![("result", result)]).inc();
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;
    use time::macros::datetime;

    use super::*;
    use crate::store::model::MembershipType;

    const NOW: OffsetDateTime = datetime!(2026-06-15 12:00 UTC);

    fn contract(max_learners: Option<i64>, seats_used: i64) -> Contract {
        Contract {
            id: 1,
            organization_id: 1,
            key: "c".into(),
            organization: "acme".into(),
            name: "C".into(),
            membership_type: MembershipType::Code,
            active: true,
            starts_on: None,
            ends_on: None,
            max_learners,
            price: None,
            seats_used,
            created_at: NOW,
            updated_at: NOW,
        }
    }

    fn code(redemption: Redemption) -> EnrollmentCode {
        EnrollmentCode {
            id: 1,
            code: "X".into(),
            contract_id: 1,
            contract: "c".into(),
            redemption,
            activates_at: None,
            expires_at: None,
            revoked_at: None,
            redeemed_by: None,
            redeemed_at: None,
            redemptions: 0,
            created_at: NOW,
        }
    }

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

    #[test]
    fn a_usable_code_of_a_valid_contract_passes() {
        assert_eq!(judge(&code(Redemption::OneTime), &contract(Some(2), 1), "ann", NOW), Ok(()));
        let mine = EnrollmentCode { redeemed_by: Some("ann".into()), ..code(Redemption::OneTime) };
        assert_eq!(judge(&mine, &contract(None, 0), "ann", NOW), Ok(()), "their own code again");
        // Full but usable: step 4 decides, atomically, in the transaction.
        assert_eq!(judge(&code(Redemption::Unlimited), &contract(Some(1), 1), "ann", NOW), Ok(()));
    }

    #[test]
    fn unusable_codes_are_invalid_unless_their_valid_contract_is_full() {
        let spent = EnrollmentCode { redeemed_by: Some("bob".into()), ..code(Redemption::OneTime) };
        let expired = EnrollmentCode { expires_at: Some(NOW), ..code(Redemption::Unlimited) };
        let early =
            EnrollmentCode { activates_at: Some(NOW + Duration::seconds(1)), ..code(Redemption::OneTime) };
        let revoked = EnrollmentCode { revoked_at: Some(NOW), ..code(Redemption::OneTime) };
        for c in [&spent, &expired, &early, &revoked] {
            assert_eq!(judge(c, &contract(Some(5), 1), "ann", NOW), Err(Refusal::Invalid), "{c:?}");
            assert_eq!(judge(c, &contract(Some(5), 5), "ann", NOW), Err(Refusal::Full), "{c:?}");
            let ended =
                Contract { ends_on: Some(NOW.date().previous_day().unwrap()), ..contract(Some(5), 5) };
            assert_eq!(judge(c, &ended, "ann", NOW), Err(Refusal::Invalid), "{c:?}");
        }
        let other = EnrollmentCode { redeemed_by: Some("bob".into()), ..code(Redemption::Unlimited) };
        assert_eq!(judge(&other, &contract(None, 0), "ann", NOW), Ok(()), "unlimited codes are shared");
    }

    #[test]
    fn a_usable_code_of_a_contract_not_valid_today_finds_no_contract() {
        let c = code(Redemption::OneTime);
        let today = NOW.date();
        for contract in [
            Contract { active: false, ..contract(None, 0) },
            Contract { starts_on: today.next_day(), ..contract(None, 0) },
            Contract { ends_on: today.previous_day(), ..contract(Some(1), 1) },
        ] {
            assert_eq!(judge(&c, &contract, "ann", NOW), Err(Refusal::NoContract));
        }
        let last_day = Contract { starts_on: Some(today), ends_on: Some(today), ..contract(None, 0) };
        assert_eq!(judge(&c, &last_day, "ann", NOW), Ok(()), "validity dates are inclusive");
    }
}
