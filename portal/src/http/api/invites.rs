//! `POST /api/v1/invites`: invite someone to a team the caller leads.

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CACHE_CONTROL;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use jiff::Timestamp;
use serde::Serialize;

use super::ApiJson;
use crate::auth::{CurrentUser, RemoteAddr};
use crate::error::Result;
use crate::invite::{self, InviteRequest};
use crate::state::AppState;
use crate::store::InviteRole;

pub fn router() -> Router<AppState> {
    Router::new().route("/invites", post(create))
}

#[derive(Serialize)]
struct Created {
    id: String,
    /// The one-time link to send the invitee; not shown again.
    url: String,
    email: String,
    team: String,
    role: InviteRole,
    template: Option<String>,
    access_expires_at: Option<Timestamp>,
    link_expires_at: Timestamp,
}

#[tracing::instrument(skip_all)]
async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    RemoteAddr(remote): RemoteAddr,
    ApiJson(request): ApiJson<InviteRequest>,
) -> Result<impl IntoResponse> {
    let created = invite::create(&state, &user, request, remote).await?;
    let invite = created.invite;
    let body = Created {
        id: invite.id,
        url: created.url,
        email: invite.email,
        team: invite.team,
        role: invite.role,
        template: invite.template,
        access_expires_at: invite.access_expires_at,
        link_expires_at: invite.link_expires_at,
    };
    Ok((StatusCode::CREATED, [(CACHE_CONTROL, "no-store")], Json(body)))
}
