//! One mapping from failures to HTTP: RFC 9457 problem JSON for every error, the right
//! `WWW-Authenticate` on 401s, `Retry-After` on 429/503. Internal detail is logged once here
//! and never returned. [`json_body`] classifies a bad JSON request body the same way for
//! every route that reads one.

pub mod json_body;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::authenticator::Failure;
use crate::auth::validate::Reject;

/// One field-level problem in a request body or query string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field's name; a dotted path below the top level (`organizations.0`), or `body`
    /// for the body as a whole.
    pub field: String,
    pub detail: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, detail: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), detail: detail.into() }
    }
}

/// Everything a handler can answer besides success.
#[derive(Debug)]
pub enum ApiError {
    /// A token was sent and refused: 401 `invalid_token`.
    InvalidToken(Reject),
    /// No token where one is required: 401 with a bare `Bearer` challenge.
    Unauthenticated,
    /// Authenticated, but not allowed: 403.
    Forbidden(String),
    /// A path rule with `active_organization = true` and no active organization for the
    /// request: 403 with the problem type [`ACTIVE_ORGANIZATION_REQUIRED`] (docs/contract.md §10),
    /// so an app can tell "choose an organization first" from "no access".
    ActiveOrganizationRequired,
    /// Malformed request (bad JSON, wrong types): 400.
    BadRequest {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// Well-formed but breaks a rule: 422.
    Unprocessable(Vec<FieldError>),
    NotFound(String),
    Conflict(String),
    /// What was asked for existed once and is gone for good (an event past the retention): 410.
    Gone {
        detail: String,
        errors: Vec<FieldError>,
    },
    TooManyRequests {
        retry_after_secs: u64,
        detail: String,
    },
    /// A dependency is down (store, keys): 503.
    Unavailable {
        retry_after_secs: u64,
        detail: String,
    },
    /// The upstream could not be reached or broke the connection: 502.
    BadGateway(String),
    /// The upstream sent no response headers in time: 504.
    GatewayTimeout,
    /// A bug or an unexpected failure: 500, detail logged only.
    Internal(anyhow::Error),
}

/// A token that could not be accepted: 401 `invalid_token`, or 503 while no key set was ever
/// loaded (nothing can be verified yet).
impl From<Failure> for ApiError {
    fn from(failure: Failure) -> ApiError {
        match failure {
            Failure::Rejected(reject) => ApiError::InvalidToken(reject),
            Failure::KeysUnavailable => ApiError::Unavailable {
                retry_after_secs: 5,
                detail: "The identity provider's keys are not available yet.".into(),
            },
        }
    }
}

/// The store failed and `reconcile.on_store_error = "reject"`: 503, try again shortly.
impl From<crate::entitlements::Unavailable> for ApiError {
    fn from(_: crate::entitlements::Unavailable) -> ApiError {
        ApiError::Unavailable {
            retry_after_secs: 5,
            detail: "Entitlements are unavailable right now.".into(),
        }
    }
}

/// The problem `type` of a request refused for want of an active organization.
pub const ACTIVE_ORGANIZATION_REQUIRED: &str = "urn:identity-sidecar:active-organization-required";

/// An RFC 9457 problem (`application/problem+json`): the body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct Problem<'a> {
    /// `about:blank` (then `title` is the HTTP status's reason phrase), or on the public port
    /// `urn:identity-sidecar:active-organization-required` (docs/contract.md §10).
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What went wrong, for a person; never internal detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    /// The fields at fault (400 and 422 answers about a body or query string).
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
}

/// Builds a problem+json response.
pub fn problem(status: StatusCode, detail: Option<&str>, errors: &[FieldError]) -> Response {
    typed_problem(status, "about:blank", detail, errors)
}

/// A problem+json response of the given `type` (a URI naming the problem).
pub fn typed_problem(
    status: StatusCode,
    kind: &str,
    detail: Option<&str>,
    errors: &[FieldError],
) -> Response {
    let body = Problem {
        kind,
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail,
        errors,
    };
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::InvalidToken(reject) => {
                let mut r = problem(StatusCode::UNAUTHORIZED, Some(reject.description()), &[]);
                let challenge =
                    format!("Bearer error=\"invalid_token\", error_description=\"{}\"", reject.description());
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                r
            }
            ApiError::Unauthenticated => {
                let mut r = problem(StatusCode::UNAUTHORIZED, Some("Authentication is required."), &[]);
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
            ApiError::Forbidden(detail) => problem(StatusCode::FORBIDDEN, Some(&detail), &[]),
            ApiError::ActiveOrganizationRequired => typed_problem(
                StatusCode::FORBIDDEN,
                ACTIVE_ORGANIZATION_REQUIRED,
                Some("Choose an active organization first (PUT /_sidecar/active-organization)."),
                &[],
            ),
            ApiError::BadRequest { detail, errors } => {
                problem(StatusCode::BAD_REQUEST, Some(&detail), &errors)
            }
            ApiError::Unprocessable(errors) => problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("The request breaks a validation rule."),
                &errors,
            ),
            ApiError::NotFound(detail) => problem(StatusCode::NOT_FOUND, Some(&detail), &[]),
            ApiError::Conflict(detail) => problem(StatusCode::CONFLICT, Some(&detail), &[]),
            ApiError::Gone { detail, errors } => problem(StatusCode::GONE, Some(&detail), &errors),
            ApiError::TooManyRequests { retry_after_secs, detail } => {
                with_retry_after(problem(StatusCode::TOO_MANY_REQUESTS, Some(&detail), &[]), retry_after_secs)
            }
            ApiError::Unavailable { retry_after_secs, detail } => with_retry_after(
                problem(StatusCode::SERVICE_UNAVAILABLE, Some(&detail), &[]),
                retry_after_secs,
            ),
            ApiError::BadGateway(detail) => problem(StatusCode::BAD_GATEWAY, Some(&detail), &[]),
            ApiError::GatewayTimeout => {
                problem(StatusCode::GATEWAY_TIMEOUT, Some("The upstream did not answer in time."), &[])
            }
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "internal error");
                problem(StatusCode::INTERNAL_SERVER_ERROR, Some("Internal error."), &[])
            }
        }
    }
}

fn with_retry_after(mut response: Response, secs: u64) -> Response {
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// The one mapping from store failures to HTTP (docs/contract.md §6): a missing row is 404, a taken unique
/// key is 409 naming the column, a row still referenced is 409, a database that cannot be
/// reached is 503 with `Retry-After`, anything else is a 500 whose detail is logged once (by
/// [`ApiError::into_response`]). Handlers that can say more (which organization is missing,
/// what still references it) map those cases themselves and fall back to this.
impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match error {
            StoreError::NotFound => ApiError::NotFound("Not found.".into()),
            StoreError::Conflict { ref what } => {
                let field = error.conflict_column().unwrap_or(what);
                ApiError::Conflict(format!("The {field} is already in use."))
            }
            StoreError::InUse => {
                ApiError::Conflict("Other records still refer to this one; remove them first.".into())
            }
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "the store is unavailable");
                ApiError::Unavailable {
                    retry_after_secs: 5,
                    detail: "The database is unavailable; retry later.".into(),
                }
            }
            StoreError::Other(e) => ApiError::Internal(anyhow::Error::new(e).context("store")),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        ApiError::Internal(error)
    }
}

/// A failed Keycloak admin call is a bad gateway: the detail names the call and Keycloak's
/// status (never a token or secret). Handlers that can say more (an unknown user) map those
/// cases themselves first.
impl From<crate::keycloak::KcError> for ApiError {
    fn from(error: crate::keycloak::KcError) -> Self {
        tracing::warn!(error = %error, "Keycloak admin call failed");
        ApiError::BadGateway(format!("{error}."))
    }
}

impl From<crate::keycloak::Error> for ApiError {
    fn from(error: crate::keycloak::Error) -> Self {
        match error {
            crate::keycloak::Error::Keycloak(e) => e.into(),
            crate::keycloak::Error::Store(e) => e.into(),
        }
    }
}
