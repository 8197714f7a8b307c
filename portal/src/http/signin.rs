//! `GET/POST /signin`, `POST /signout` and, when an OpenID Connect provider is configured,
//! `GET /auth/oidc/start` and `GET /auth/oidc/callback` (see [`crate::auth::oidc`]).

use askama::Template;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header::{RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::{Nav, Page, PageError, redirect_setting};
use crate::account::{self, SignInError};
use crate::audit::{self, AuditAction};
use crate::auth::oidc::{self, CallbackQuery};
use crate::auth::{Auth, AuthRejection, PreSession, PublicForm, RemoteAddr, SessionForm, safe_return_path, session};
use crate::error::Error;
use crate::state::AppState;
use crate::store::Outcome;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/signin", get(show).post(submit))
        .route("/signout", post(sign_out))
        .route(oidc::START_PATH, get(oidc_start))
        .route(oidc::CALLBACK_PATH, get(oidc_callback))
}

#[derive(Template)]
#[template(path = "signin.html")]
struct SignInPage {
    nav: Option<Nav>,
    csrf: String,
    email: String,
    next: String,
    error: Option<String>,
    /// The OpenID Connect button: its label's provider name and its link.
    oidc: Option<OidcButton>,
}

struct OidcButton {
    name: String,
    href: String,
}

impl SignInPage {
    fn new(state: &AppState, pre_session: &PreSession, email: String, next: &str, error: Option<String>) -> Self {
        let next = safe_return_path(next).to_owned();
        let oidc = state.oidc.as_ref().map(|client| OidcButton {
            name: client.display_name().to_owned(),
            href: format!(
                "{}?{}",
                oidc::START_PATH,
                serde_urlencoded::to_string([("next", next.as_str())]).unwrap_or_default()
            ),
        });
        Self { nav: None, csrf: pre_session.csrf_token(&state.keys), email, next, error, oidc }
    }
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
    let page = SignInPage::new(&state, &pre_session, String::new(), &next, None);
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
        Err(SignInError {
            error: error @ (Error::Unauthenticated(_) | Error::TooManyRequests(_) | Error::InvalidInput { .. }),
            retry_after,
        }) => {
            // An e-mail address too long to be one is not shown back.
            let email = form.email.trim();
            let email = if email.len() > account::MAX_EMAIL_LEN { "" } else { email };
            let page = SignInPage::new(&state, &pre_session, email.to_owned(), &form.next, Some(error.to_string()));
            let retry_after = retry_after.map(|wait| (RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1))));
            Ok((error.status(), AppendHeaders(retry_after), Page(page)).into_response())
        }
        Err(SignInError { error, .. }) => Err(error.into()),
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

/// `GET /auth/oidc/start?next=...`: sends the browser to the OpenID Connect provider.
#[tracing::instrument(skip_all)]
async fn oidc_start(
    State(state): State<AppState>,
    query: Result<Query<NextQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let client = state.oidc.clone().ok_or_else(oidc_not_configured)?;
    let next = query.ok().and_then(|Query(q)| q.next).unwrap_or_default();
    let (location, cookie) = client.begin(&state.keys, &state.config, &next).await?;
    Ok(redirect_setting(&location, [cookie]))
}

/// `GET /auth/oidc/callback?code=...&state=...`: where the provider sends the browser back.
/// Whatever the outcome, the flow cookie is removed: a sign-in answer is used once.
#[tracing::instrument(skip_all)]
async fn oidc_callback(
    State(state): State<AppState>,
    RemoteAddr(remote): RemoteAddr,
    headers: HeaderMap,
    query: Result<Query<CallbackQuery>, QueryRejection>,
) -> Response {
    let Some(client) = state.oidc.clone() else {
        return PageError(oidc_not_configured()).into_response();
    };
    let removal = oidc::removal_cookie(&state.config);
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let signed_in = oidc::finish(&state, &client, &headers, &query, remote)
        .await
        .and_then(|(user, next)| Ok((session::start(&state, &user)?, next)));
    match signed_in {
        Ok((cookie, next)) => redirect_setting(&next, [removal, cookie]),
        Err(error) => (AppendHeaders([(SET_COOKIE, removal)]), PageError(error)).into_response(),
    }
}

fn oidc_not_configured() -> Error {
    Error::NotFound("Sign-in with an OpenID Connect provider is not configured on this portal.".into())
}
