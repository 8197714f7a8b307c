//! `GET/POST /signin` and `POST /signout`.

use askama::Template;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header::SET_COOKIE;
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::{Nav, Page, PageError, redirect_setting};
use crate::account;
use crate::audit::{self, AuditAction};
use crate::auth::{Auth, AuthRejection, PreSession, PublicForm, RemoteAddr, SessionForm, safe_return_path, session};
use crate::error::Error;
use crate::state::AppState;
use crate::store::Outcome;

pub fn router() -> Router<AppState> {
    Router::new().route("/signin", get(show).post(submit)).route("/signout", post(sign_out))
}

#[derive(Template)]
#[template(path = "signin.html")]
struct SignInPage {
    nav: Option<Nav>,
    csrf: String,
    email: String,
    next: String,
    error: Option<String>,
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn show(
    State(state): State<AppState>,
    pre_session: PreSession,
    query: Result<Query<NextQuery>, QueryRejection>,
) -> Response {
    let next = query.ok().and_then(|Query(q)| q.next).unwrap_or_default();
    let page = SignInPage {
        nav: None,
        csrf: pre_session.csrf_token(&state.keys),
        email: String::new(),
        next: safe_return_path(&next).to_owned(),
        error: None,
    };
    (AppendHeaders(pre_session.set_cookie(&state.config).map(|cookie| (SET_COOKIE, cookie))), Page(page))
        .into_response()
}

#[derive(Deserialize)]
struct SignInForm {
    email: String,
    password: String,
    #[serde(default)]
    next: String,
}

#[tracing::instrument(skip_all)]
async fn submit(
    State(state): State<AppState>,
    RemoteAddr(remote): RemoteAddr,
    PublicForm { form, pre_session }: PublicForm<SignInForm>,
) -> Result<Response, PageError> {
    match account::sign_in(&state, &form.email, form.password, remote).await {
        Ok(user) => {
            let cookie = session::start(&state, &user)?;
            Ok(redirect_setting(safe_return_path(&form.next), [cookie]))
        }
        Err(error @ (Error::Unauthenticated(_) | Error::TooManyRequests(_))) => {
            let page = SignInPage {
                nav: None,
                csrf: pre_session.csrf_token(&state.keys),
                email: form.email.trim().to_owned(),
                next: safe_return_path(&form.next).to_owned(),
                error: Some(error.to_string()),
            };
            Ok((error.status(), Page(page)).into_response())
        }
        Err(error) => Err(error.into()),
    }
}

/// A form with no fields but its CSRF token.
#[derive(Deserialize)]
struct NoFields {}

#[tracing::instrument(skip_all)]
async fn sign_out(
    State(state): State<AppState>,
    RemoteAddr(remote): RemoteAddr,
    form: Result<SessionForm<NoFields>, AuthRejection>,
) -> Result<Response, AuthRejection> {
    let removal = session::removal_cookie(&state.config);
    let form = match form {
        Ok(form) => form,
        // Already signed out (or the session ended): nothing to revoke.
        Err(rejection) if rejection.is_unauthenticated() => return Ok(redirect_setting("/signin", [removal])),
        Err(rejection) => return Err(rejection),
    };
    if let Auth::Session { claims, .. } = &form.user.auth {
        session::end(&state, claims).await?;
    }
    audit::record(state.store.as_ref(), form.user.id(), AuditAction::SignOut, form.user.id(), Outcome::Success, remote)
        .await;
    Ok(redirect_setting("/signin", [removal]))
}
