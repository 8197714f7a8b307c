//! `/account/tokens`: the user's API tokens — list, create (the secret is shown once), revoke.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::CACHE_CONTROL;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use serde::Deserialize;

use super::{Nav, Page, PageError, display_time};
use crate::auth::{CurrentUser, RemoteAddr, SessionForm};
use crate::error::Error;
use crate::state::AppState;
use crate::token::{self, DEFAULT_LIFETIME_DAYS, Scope, TokenRequest};

pub fn router() -> Router<AppState> {
    Router::new().route("/account/tokens", get(show).post(create)).route("/account/tokens/{id}/revoke", post(revoke))
}

struct TokenLine {
    id: String,
    name: String,
    scopes: String,
    created: String,
    expires: String,
    state: &'static str,
}

struct ScopeOption {
    name: &'static str,
    description: &'static str,
    checked: bool,
}

struct CreatedLine {
    name: String,
    secret: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    nav: Option<Nav>,
    csrf: String,
    tokens: Vec<TokenLine>,
    scopes: Vec<ScopeOption>,
    created: Option<CreatedLine>,
    error: Option<String>,
    form_name: String,
    form_days: String,
}

/// What the create form held, to show it again after an error.
#[derive(Default)]
struct Draft {
    name: String,
    scopes: Vec<String>,
    days: String,
}

async fn render(
    state: &AppState,
    user: &CurrentUser,
    status: StatusCode,
    created: Option<CreatedLine>,
    error: Option<String>,
    draft: Draft,
) -> Result<Response, PageError> {
    let now = Timestamp::now();
    let tokens = token::list(state, user)
        .await?
        .into_iter()
        .map(|t| TokenLine {
            state: token::state_at(&t, now),
            scopes: t.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "),
            created: display_time(t.created_at),
            expires: display_time(t.expires_at),
            id: t.id,
            name: t.name,
        })
        .collect();
    let scopes = Scope::ALL
        .into_iter()
        .filter(|scope| !scope.admins_only() || user.user.is_admin())
        .map(|scope| ScopeOption {
            name: scope.as_str(),
            description: scope.description(),
            checked: draft.scopes.iter().any(|s| s == scope.as_str()),
        })
        .collect();
    let page = TokensPage {
        nav: Nav::of(user),
        csrf: user.csrf_token().unwrap_or_default().to_owned(),
        tokens,
        scopes,
        created,
        error,
        form_name: draft.name,
        form_days: if draft.days.is_empty() { DEFAULT_LIFETIME_DAYS.to_string() } else { draft.days },
    };
    // The page may hold a secret: never keep it in a cache.
    Ok((status, [(CACHE_CONTROL, "no-store")], Page(page)).into_response())
}

async fn show(State(state): State<AppState>, user: CurrentUser) -> Result<Response, PageError> {
    render(&state, &user, StatusCode::OK, None, None, Draft::default()).await
}

#[tracing::instrument(skip_all)]
async fn create(
    State(state): State<AppState>,
    RemoteAddr(remote): RemoteAddr,
    SessionForm { user, form }: SessionForm<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let mut draft = Draft::default();
    for (key, value) in form {
        match key.as_str() {
            "name" => draft.name = value,
            "scope" => draft.scopes.push(value),
            "expires_in_days" => draft.days = value,
            _ => {}
        }
    }
    let days = match draft.days.trim() {
        "" => None,
        raw => match raw.parse::<u32>() {
            Ok(days) => Some(days),
            Err(_) => {
                let message = format!("{raw:?} is not a number of days");
                return render(&state, &user, StatusCode::BAD_REQUEST, None, Some(message), draft).await;
            }
        },
    };
    let request = TokenRequest { name: draft.name.clone(), scopes: draft.scopes.clone(), expires_in_days: days };
    match token::create(&state, &user, request, remote).await {
        Ok(created) => {
            let line = CreatedLine { name: created.token.name, secret: created.secret.expose().to_owned() };
            render(&state, &user, StatusCode::CREATED, Some(line), None, Draft::default()).await
        }
        Err(error @ (Error::InvalidInput { .. } | Error::Forbidden(_))) => {
            render(&state, &user, error.status(), None, Some(error.to_string()), draft).await
        }
        Err(error) => Err(error.into()),
    }
}

/// A form with no fields but its CSRF token.
#[derive(Deserialize)]
struct NoFields {}

#[tracing::instrument(skip_all, fields(token = %id))]
async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RemoteAddr(remote): RemoteAddr,
    SessionForm { user, .. }: SessionForm<NoFields>,
) -> Result<Redirect, PageError> {
    token::revoke(&state, &user, &id, remote).await?;
    Ok(Redirect::to("/account/tokens"))
}
