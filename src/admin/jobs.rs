//! `GET /admin/v1/jobs/{id}`: a durable job's state and progress. Jobs live in the store, so
//! any replica answers for a job any replica runs.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::OrNotFound;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::jobs;
use crate::store::model::{Job, JobStatus};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(show))
}

/// A job as the admin sees it (the payload stays internal).
#[derive(Debug, Serialize, ToSchema)]
struct JobView {
    id: i64,
    kind: String,
    status: JobStatus,
    attempts: i64,
    /// `reconcile.all`: `{done, total, errors, after}`; `null` for jobs without progress.
    progress: Option<serde_json::Value>,
    last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

impl From<Job> for JobView {
    fn from(job: Job) -> Self {
        JobView {
            id: job.id,
            kind: job.kind,
            status: job.status,
            attempts: job.attempts,
            progress: job.progress,
            last_error: job.last_error,
            created_at: job.created_at,
            updated_at: job.updated_at,
        }
    }
}

/// A job's state and progress.
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    operation_id = "get_job",
    tag = "jobs",
    params(("id" = i64, Path, description = "The job's id (`job_id` of `POST /admin/v1/reconcile`).")),
    responses(
        (status = 200, description = "The job.", body = JobView),
        (status = 404, description = "No job has this id."),
    )
)]
async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    let no_such = || format!("No job with id `{id}`.");
    let Ok(number) = id.parse::<i64>() else {
        return Err(ApiError::NotFound(no_such()));
    };
    let mut conn = state.store.conn().await?;
    let job = jobs::get(&mut conn, number).await.or_not_found(no_such)?;
    Ok(Json(job.into()))
}
