//! `GET /admin/v1/audit?sub=&organization=&contract=&limit=&before=`: the audit trail, newest
//! first.
//!
//! It pages by cursor rather than offset because it grows while it is read: the answer's
//! `next_before` (the id of its oldest event, or null on the last page) is passed back as
//! `?before=` for the next, older page.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;

use super::extract::Params;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::audit;
use crate::store::model::{AuditEvent, AuditQuery};

pub fn router() -> Router<AppState> {
    Router::new().route("/audit", get(list))
}

#[derive(Debug, Serialize)]
struct AuditPage {
    items: Vec<AuditEvent>,
    limit: u32,
    next_before: Option<i64>,
}

async fn list(State(state): State<AppState>, mut params: Params) -> Result<Json<AuditPage>, ApiError> {
    let query = AuditQuery {
        sub: params.string("sub")?,
        organization: params.string("organization")?,
        contract: params.string("contract")?,
        before_id: params.number::<i64>("before")?,
        limit: params.limit()?,
    };
    params.finish()?;
    let mut conn = state.store.conn().await?;
    let items = audit::query(&mut conn, &query).await?;
    let next_before = (items.len() == query.limit as usize).then(|| items.last().map(|e| e.id)).flatten();
    Ok(Json(AuditPage { items, limit: query.limit, next_before }))
}
