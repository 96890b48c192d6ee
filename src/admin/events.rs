//! `GET /admin/v1/events?after=&limit=&types=`: the change-event feed (docs/events.md), in
//! sequence order, so a consumer resumes where it stopped by passing back the `sequence` of
//! the last event it handled.
//!
//! Each read first numbers the events committed since the last numbering, waiting for a step
//! another replica is running ([`store::events::sequence_committed`]), so a feed reader needs
//! no background task to see fresh events and a read shows every change committed before it.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use time::Duration;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Params, bad_param};
use super::guard::Admin;
use crate::error::{ApiError, FieldError};
use crate::events::{self, CloudEvent, format_sequence, parse_sequence};
use crate::state::AppState;
use crate::store::{self, now};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(feed)).routes(routes!(targets))
}

/// The media type of a JSON array of CloudEvents (CloudEvents JSON format, batched mode).
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

#[utoipa::path(
    get,
    path = "/events",
    operation_id = "list_events",
    tag = "events",
    params(
        ("after" = Option<String>, Query, description = "Only events after this sequence (the `sequence` of the last event handled). Omitted: from the oldest event still kept."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many events (default 100)."),
        ("types" = Option<String>, Query, description = "Comma-separated event type prefixes, e.g. `identity-sidecar.membership.`; omitted: every type."),
    ),
    responses(
        (status = 200, description = "Events in sequence order, as a JSON array of CloudEvents (`application/cloudevents-batch+json`); empty when there is nothing new.", body = Vec<CloudEvent>),
        (status = 400, description = "`after` is not a sequence, is beyond the newest event, or `types` names no type."),
        (status = 410, description = "Events after `after` are past `events.retention_days`: the consumer has missed some."),
        (status = 422, description = "`limit` is out of range."),
    )
)]
pub(super) async fn feed(
    State(state): State<AppState>,
    _admin: Admin,
    mut params: Params,
) -> Result<Response, ApiError> {
    let after = match params.string("after")? {
        None => None,
        Some(text) => Some(parse_sequence(&text).ok_or_else(|| {
            bad_param("after", "must be a sequence: up to 20 decimal digits, e.g. 00000000000000000042")
        })?),
    };
    let limit = params.limit()?;
    let prefixes: Vec<String> = match params.string("types")? {
        None => Vec::new(),
        Some(text) => text.split(',').map(str::to_owned).collect(),
    };
    params.finish()?;
    let actions = events::actions_matching(&prefixes).map_err(|detail| bad_param("types", &detail))?;

    store::events::sequence_committed(&state.store).await?;
    let mut conn = state.store.conn().await?;
    let cutoff = now() - Duration::days(i64::from(state.config.events.retention_days));
    let after = match after {
        None => store::events::start_of_retention(&mut conn, cutoff).await?,
        Some(after) => {
            let head = store::events::head(&mut conn).await?;
            if after > head {
                return Err(bad_param(
                    "after",
                    &format!(
                        "is beyond the newest event ({}); was it read from another database?",
                        format_sequence(head)
                    ),
                ));
            }
            if store::events::next_at(&mut conn, after).await?.is_some_and(|at| at < cutoff) {
                let start = store::events::start_of_retention(&mut conn, cutoff).await?;
                return Err(ApiError::Gone {
                    detail: format!(
                        "Events after {} are older than events.retention_days and no longer kept; \
                         resume from after={} (events between the two are lost to this consumer).",
                        format_sequence(after),
                        format_sequence(start)
                    ),
                    errors: vec![FieldError::new("after", "is older than the retention")],
                });
            }
            after
        }
    };
    let rows = store::events::after(&mut conn, after, i64::MAX, &actions, limit).await?;
    let source = &state.config.events.source;
    let batch: Vec<CloudEvent> = rows.iter().filter_map(|row| CloudEvent::from_stored(source, row)).collect();
    let body = serde_json::to_vec(&batch).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(([(header::CONTENT_TYPE, BATCH_CONTENT_TYPE)], body).into_response())
}

/// Where one delivery target stands.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TargetStatus {
    /// The webhook's name, or `redis:stream`.
    name: String,
    /// `webhook` or `redis_stream`.
    kind: &'static str,
    /// `active`, `dead` (fell behind `events.retention_days`; renaming the webhook starts it
    /// afresh at the newest event), or `pending` (no replica has started it yet).
    state: String,
    /// The last sequence it acknowledged (or had nothing of its types up to).
    delivered: Option<String>,
    /// Sequence numbers between the newest event and `delivered`.
    lag: i64,
    /// Failed attempts since the last acknowledged event.
    failures: i64,
    /// Failed attempts ever.
    attempts_failed: i64,
    last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    last_attempt_at: Option<time::OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    delivered_at: Option<time::OffsetDateTime>,
    /// Whether a replica holds its lease now.
    delivering: bool,
}

/// The configured targets.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TargetList {
    items: Vec<TargetStatus>,
    /// The newest sequence.
    head: String,
}

#[utoipa::path(
    get,
    path = "/events/webhooks",
    operation_id = "list_event_targets",
    tag = "events",
    responses((status = 200, description = "Each configured webhook, then the Redis stream if configured.", body = TargetList))
)]
pub(super) async fn targets(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<TargetList>, ApiError> {
    let events = &state.config.events;
    let mut names: Vec<(String, &'static str)> =
        events.webhooks.iter().map(|w| (w.name.clone(), "webhook")).collect();
    if events.redis_stream.is_some() {
        names.push((events::STREAM_TARGET.to_owned(), "redis_stream"));
    }
    store::events::sequence_pending(&state.store).await?;
    let mut conn = state.store.conn().await?;
    let head = store::events::head(&mut conn).await?;
    let rows = store::events::deliveries(&mut conn).await?;
    let at = now();
    let items = names
        .into_iter()
        .map(|(name, kind)| match rows.iter().find(|r| r.target == name) {
            None => TargetStatus {
                name,
                kind,
                state: "pending".into(),
                delivered: None,
                lag: 0,
                failures: 0,
                attempts_failed: 0,
                last_error: None,
                last_attempt_at: None,
                delivered_at: None,
                delivering: false,
            },
            Some(row) => TargetStatus {
                name,
                kind,
                state: row.state.clone(),
                delivered: Some(format_sequence(row.delivered)),
                lag: (head - row.delivered).max(0),
                failures: row.failures,
                attempts_failed: row.attempts_failed,
                last_error: row.last_error.clone(),
                last_attempt_at: row.last_attempt_at,
                delivered_at: row.delivered_at,
                delivering: row.lease_owner.is_some() && row.lease_until.is_some_and(|u| u > at),
            },
        })
        .collect();
    Ok(Json(TargetList { items, head: format_sequence(head) }))
}
