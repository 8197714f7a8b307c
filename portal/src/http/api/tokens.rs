//! `/api/v1/tokens`: the caller's API tokens.
//!
//! `POST` creates one (`{"name", "scopes", "expires_in_days"}`; the answer holds the secret,
//! once), `GET` lists them, `DELETE /{id}` revokes one. Another user's token is a 404, like one
//! that does not exist.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::CACHE_CONTROL;
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use axum::{Json, Router};
use jiff::Timestamp;
use serde::Serialize;

use super::ApiJson;
use crate::auth::{CurrentUser, RemoteAddr};
use crate::error::Result;
use crate::state::AppState;
use crate::store::ApiToken;
use crate::token::{self, Scope, TokenRequest};

pub fn router() -> Router<AppState> {
    Router::new().route("/tokens", get(list).post(create)).route("/tokens/{id}", delete(revoke))
}

/// A token as the API shows it (never its secret, except once in [`Created`]).
#[derive(Serialize)]
pub struct TokenView {
    id: String,
    name: String,
    scopes: Vec<Scope>,
    created_at: Timestamp,
    expires_at: Timestamp,
    revoked_at: Option<Timestamp>,
    /// `active`, `expired` or `revoked`.
    state: &'static str,
}

impl TokenView {
    fn new(token: ApiToken, now: Timestamp) -> Self {
        Self {
            state: token::state_at(&token, now),
            id: token.id,
            name: token.name,
            scopes: token.scopes,
            created_at: token.created_at,
            expires_at: token.expires_at,
            revoked_at: token.revoked_at,
        }
    }
}

#[derive(Serialize)]
struct Created {
    #[serde(flatten)]
    token: TokenView,
    /// The secret to send as `Authorization: Bearer ...`; not shown again.
    secret: String,
}

#[derive(Serialize)]
struct TokenList {
    tokens: Vec<TokenView>,
}

#[tracing::instrument(skip_all)]
async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    RemoteAddr(remote): RemoteAddr,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<impl IntoResponse> {
    let created = token::create(&state, &user, request, remote).await?;
    let body =
        Created { token: TokenView::new(created.token, Timestamp::now()), secret: created.secret.expose().into() };
    Ok((StatusCode::CREATED, [(CACHE_CONTROL, "no-store")], Json(body)))
}

async fn list(State(state): State<AppState>, user: CurrentUser) -> Result<Json<TokenList>> {
    let now = Timestamp::now();
    let tokens = token::list(&state, &user).await?.into_iter().map(|t| TokenView::new(t, now)).collect();
    Ok(Json(TokenList { tokens }))
}

#[tracing::instrument(skip_all, fields(token = %id))]
async fn revoke(
    State(state): State<AppState>,
    user: CurrentUser,
    RemoteAddr(remote): RemoteAddr,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    token::revoke(&state, &user, &id, remote).await?;
    Ok(StatusCode::NO_CONTENT)
}
