//! The HTTP application: pages (askama templates under `portal/templates/`, one stylesheet served
//! by the portal itself) and the JSON API under `/api/v1/`.
//!
//! Each module exposes `router() -> Router<AppState>`; [`app`] merges them. To add routes, write
//! a module here with its own `router()` and merge it below. Page handlers answer with [`Page`]
//! and fail with [`PageError`] (an HTML error page); API handlers answer with JSON and fail with
//! [`crate::Error`] (a JSON error).

mod account;
pub(crate) mod admin;
pub(crate) mod admin_teams;
pub(crate) mod admin_templates;
pub mod api;
pub mod desktop;
pub mod events;
mod home;
mod invite;
mod signin;
pub(crate) mod workspaces;

use askama::Template;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, SET_COOKIE,
    STRICT_TRANSPORT_SECURITY,
};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{AppendHeaders, Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router, middleware};
use serde::Serialize;

use crate::auth::{Auth, CurrentUser};
use crate::authz;
use crate::error::Error;
use crate::state::AppState;

/// The portal's HTTP application.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/static/portal.css", get(stylesheet))
        .merge(signin::router())
        .merge(home::router())
        .merge(account::router())
        .merge(invite::router())
        .merge(workspaces::router())
        .merge(desktop::router())
        .merge(api::router())
        .merge(admin::router())
        .merge(admin_teams::router())
        .merge(admin_templates::router())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(refuse_oversized_bodies))
        .layer(middleware::map_response(security_headers))
        .layer(middleware::map_response_with_state(state.config.public_url.is_https(), strict_transport_security))
        .layer(middleware::from_fn_with_state(state.metrics.clone(), crate::metrics::track_requests))
        .with_state(state)
}

/// The largest request body any route reads (forms read at most 64 KiB of it). Bodies stream
/// through [`crate::serve`], which also bounds how long they may take.
pub const MAX_BODY: usize = 1024 * 1024;

/// A request that declares a body over [`MAX_BODY`] is answered 413 at once, before a byte of
/// it is read (the client may be about to send gigabytes, or nothing at all).
async fn refuse_oversized_bodies(request: Request, next: Next) -> Response {
    let declared = request.headers().get(CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    match declared {
        Some(length) if length > MAX_BODY as u64 => {
            let error =
                Error::PayloadTooLarge(format!("The body is larger than the {MAX_BODY} bytes the portal accepts."));
            let mut response = error.into_response();
            // The unread body stays on the connection: close it rather than read it.
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            response
        }
        _ => next.run(request).await,
    }
}

/// What `GET /healthz` answers.
#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
}

async fn healthz() -> Json<Health> {
    Json(Health { status: "ok", version: env!("CARGO_PKG_VERSION") })
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/css; charset=utf-8"), (CACHE_CONTROL, "public, max-age=3600")],
        include_str!("../../static/portal.css"),
    )
}

/// Headers every response gets unless its handler set them: no caching (pages and API answers
/// carry CSRF tokens, invite links, names; only static assets say otherwise), no framing, no
/// MIME sniffing, no referrer (invite links carry their token in the path), and only the
/// portal's own resources.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let defaults: [(HeaderName, &str); 5] = [
        (CACHE_CONTROL, "no-store"),
        (HeaderName::from_static("x-content-type-options"), "nosniff"),
        (HeaderName::from_static("x-frame-options"), "DENY"),
        (REFERRER_POLICY, "no-referrer"),
        (CONTENT_SECURITY_POLICY, "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    ];
    for (name, value) in defaults {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    response
}

/// `Strict-Transport-Security` (a year) when the public URL is https: browsers then never
/// reach the portal over plain http again. Absent with an http public URL.
async fn strict_transport_security(State(https): State<bool>, mut response: Response) -> Response {
    if https {
        response.headers_mut().insert(STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    response
}

/// The signed-in part of the page header: name, admin links and sign-out form.
pub struct Nav {
    pub display_name: String,
    pub csrf: String,
    /// Whether to link the admin pages (the audit log, teams, templates).
    pub is_admin: bool,
}

impl Nav {
    /// The header for a user signed in with a session.
    pub fn of(user: &CurrentUser) -> Option<Self> {
        match &user.auth {
            Auth::Session { csrf_token, .. } => Some(Self {
                display_name: user.user.display_name.clone(),
                csrf: csrf_token.clone(),
                is_admin: authz::can_read_audit(&user.user, jiff::Timestamp::now()),
            }),
            Auth::Token(_) => None,
        }
    }
}

/// A rendered askama template as an HTML response.
pub struct Page<T>(pub T);

impl<T: Template> IntoResponse for Page<T> {
    fn into_response(self) -> Response {
        match self.0.render() {
            Ok(html) => Html(html).into_response(),
            Err(source) => PageError(Error::Render { template: std::any::type_name::<T>(), source }).into_response(),
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    nav: Option<Nav>,
    title: &'static str,
    message: String,
}

/// An [`Error`] answered with an HTML page; a 401 sends the browser to sign in instead.
#[derive(Debug)]
pub struct PageError(pub Error);

impl From<Error> for PageError {
    fn from(error: Error) -> Self {
        Self(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let error = self.0;
        error.log_server_error();
        let status = error.status();
        if status == StatusCode::UNAUTHORIZED {
            return Redirect::to("/signin").into_response();
        }
        let title = match status {
            StatusCode::BAD_REQUEST => "That did not work",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::GONE => "This link no longer works",
            StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
            _ if status.is_server_error() => "Something went wrong",
            _ => "That did not work",
        };
        match (ErrorPage { nav: None, title, message: error.public_message() }).render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "rendering the error page failed");
                (status, error.public_message()).into_response()
            }
        }
    }
}

/// A redirect (303) that also sets cookies.
fn redirect_setting(location: &str, cookies: impl IntoIterator<Item = HeaderValue>) -> Response {
    let headers: Vec<_> = cookies.into_iter().map(|cookie| (SET_COOKIE, cookie)).collect();
    (AppendHeaders(headers), Redirect::to(location)).into_response()
}

/// Formats a time for pages: `2026-06-30 17:00 UTC`.
fn display_time(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%d %H:%M UTC").to_string()
}
