//! `GET /api/v1/me`: who the caller is, how they authenticated, their teams.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use jiff::Timestamp;
use serde::Serialize;

use crate::auth::{Auth, CurrentUser};
use crate::authz::Membership;
use crate::error::Result;
use crate::state::AppState;
use crate::store::GlobalRole;
use crate::token::Scope;

pub fn router() -> Router<AppState> {
    Router::new().route("/me", get(me))
}

#[derive(Serialize)]
struct Me {
    id: String,
    display_name: String,
    role: GlobalRole,
    expires_at: Option<Timestamp>,
    /// `session` or `token`.
    auth: &'static str,
    /// What this request may do: every scope for a session, the token's for a token.
    scopes: Vec<Scope>,
    memberships: Vec<Membership>,
    /// For session callers: what to send in `X-CSRF-Token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    csrf_token: Option<String>,
}

async fn me(State(state): State<AppState>, user: CurrentUser) -> Result<Json<Me>> {
    let memberships = state.memberships_of(user.id()).await?;
    let (auth, scopes) = match &user.auth {
        Auth::Session { .. } => ("session", Scope::ALL.to_vec()),
        Auth::Token(token) => ("token", token.scopes.clone()),
    };
    Ok(Json(Me {
        csrf_token: user.csrf_token().map(str::to_owned),
        id: user.user.id,
        display_name: user.user.display_name,
        role: user.user.role,
        expires_at: user.user.expires_at,
        auth,
        scopes,
        memberships,
    }))
}
