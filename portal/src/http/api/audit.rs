//! `GET /api/v1/audit?limit=N`: the newest audit entries, for admins.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::auth::CurrentUser;
use crate::authz::can_read_audit;
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::store::AuditRecord;
use crate::token::Scope;

/// How many entries a request gets unless it asks for fewer or more.
const DEFAULT_LIMIT: u32 = 100;
/// The most entries one request gets.
const MAX_LIMIT: u32 = 1000;

pub fn router() -> Router<AppState> {
    Router::new().route("/audit", get(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<u32>,
}

#[derive(Serialize)]
struct AuditLog {
    /// Newest first.
    entries: Vec<AuditRecord>,
}

async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditLog>> {
    user.require_scope(Scope::AuditRead)?;
    if !can_read_audit(&user.user, Timestamp::now()) {
        return Err(Error::Forbidden("the audit log is for platform admins".into()));
    }
    let Query(query) = query.map_err(|_| {
        Error::invalid("limit", format!("limit must be a whole number from 1 to {MAX_LIMIT}, e.g. ?limit=50"))
    })?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::invalid("limit", format!("limit must be a whole number from 1 to {MAX_LIMIT}")));
    }
    Ok(Json(AuditLog { entries: state.store.audit_log(limit).await? }))
}
