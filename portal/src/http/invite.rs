//! `GET/POST /invite/{token}`: the page an invite link opens.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, SET_COOKIE};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::routing::get;
use jiff::Timestamp;

use super::{Nav, Page, PageError, display_time, redirect_setting};
use crate::auth::{PreSession, PublicForm, RemoteAddr, safe_return_path, session};
use crate::error::Error;
use crate::invite::{self, Acceptance};
use crate::state::AppState;
use crate::store::Invite;

pub fn router() -> Router<AppState> {
    Router::new().route("/invite/{token}", get(show).post(accept))
}

#[derive(Template)]
#[template(path = "invite.html")]
struct InvitePage {
    nav: Option<Nav>,
    token: String,
    csrf: String,
    team: String,
    role: &'static str,
    email: String,
    template: Option<String>,
    access_until: Option<String>,
    link_until: String,
    existing_account: bool,
    display_name: String,
    error: Option<String>,
}

async fn render(
    state: &AppState,
    token: String,
    invite: Invite,
    pre_session: &PreSession,
    status: StatusCode,
    error: Option<String>,
    display_name: String,
) -> Result<Response, PageError> {
    let existing_account = state.store.user(&invite.email).await?.is_some();
    let page = InvitePage {
        nav: None,
        token,
        csrf: pre_session.csrf_token(&state.keys),
        team: invite.team,
        role: invite.role.as_str(),
        email: invite.email,
        template: invite.template,
        access_until: invite.access_expires_at.map(display_time),
        link_until: display_time(invite.link_expires_at),
        existing_account,
        display_name,
        error,
    };
    let cookie = pre_session.set_cookie(&state.config).map(|cookie| (SET_COOKIE, cookie));
    Ok((status, AppendHeaders(cookie), [(CACHE_CONTROL, "no-store")], Page(page)).into_response())
}

async fn show(
    State(state): State<AppState>,
    Path(token): Path<String>,
    pre_session: PreSession,
) -> Result<Response, PageError> {
    let invite = invite::open(&state, &token, Timestamp::now()).await?;
    render(&state, token, invite, &pre_session, StatusCode::OK, None, String::new()).await
}

#[tracing::instrument(skip_all)]
async fn accept(
    State(state): State<AppState>,
    Path(token): Path<String>,
    RemoteAddr(remote): RemoteAddr,
    PublicForm { form, pre_session }: PublicForm<Acceptance>,
) -> Result<Response, PageError> {
    let display_name = form.display_name.clone().unwrap_or_default();
    match invite::accept(&state, &token, form, remote).await {
        Ok((user, invite)) => {
            let cookie = session::start(&state, &user)?;
            let target = match state.invite_hook.invite_accepted(&invite, &user).await {
                Ok(target) => target,
                Err(error) => {
                    tracing::error!(%error, invite = %invite.id, "the invite hook failed; sending the invitee home");
                    "/".to_owned()
                }
            };
            Ok(redirect_setting(safe_return_path(&target), [cookie]))
        }
        Err(error @ (Error::InvalidInput { .. } | Error::TooManyRequests(_))) => {
            let invite = invite::open(&state, &token, Timestamp::now()).await?;
            let status = error.status();
            render(&state, token, invite, &pre_session, status, Some(error.to_string()), display_name).await
        }
        Err(error) => Err(error.into()),
    }
}
