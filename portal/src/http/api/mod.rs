//! The JSON API under `/api/v1/`.
//!
//! Callers authenticate with `Authorization: Bearer dpt_...` (an API token, limited to its
//! scopes) or with the session cookie plus `X-CSRF-Token` on requests that change state; see
//! [`crate::CurrentUser`]. Every error is JSON, `{"error": "...", "field": "..."}`, including
//! malformed bodies (400), unknown endpoints (404) and wrong methods (405). To add endpoints,
//! write a module with `router()` and merge it in [`router`]; take bodies as [`ApiJson`].

mod admin;
mod agents;
mod audit;
mod invites;
mod me;
pub mod openapi;
mod tokens;
pub(crate) mod workspaces;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, OriginalUri, Request};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorBody};
use crate::state::AppState;

/// The API's routes, under `/api/v1`.
pub fn router() -> Router<AppState> {
    let v1 = Router::new()
        .merge(me::router())
        .merge(tokens::router())
        .merge(invites::router())
        .merge(audit::router())
        .merge(admin::router())
        .merge(workspaces::router())
        .merge(agents::router())
        .merge(super::events::router())
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found);
    Router::new().nest("/api/v1", v1).merge(openapi::router())
}

async fn not_found(method: Method, OriginalUri(uri): OriginalUri) -> Error {
    Error::NotFound(format!("there is no API endpoint {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> Response {
    let body = ErrorBody { error: format!("{} does not accept {method}", uri.path()), field: None };
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

/// A JSON body whose rejection is a JSON [`Error`] that says what is wrong with it.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(Error::UnsupportedMediaType("send the body as JSON, with Content-Type: application/json".into()))
            }
            Err(JsonRejection::JsonSyntaxError(e)) => {
                Err(Error::bad_request(format!("the body is not valid JSON: {}", source_text(&e.body_text()))))
            }
            Err(JsonRejection::JsonDataError(e)) => {
                Err(Error::bad_request(format!("the body has the wrong fields: {}", source_text(&e.body_text()))))
            }
            Err(JsonRejection::BytesRejection(unread)) if unread.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(
                Error::PayloadTooLarge(format!("The body is larger than the {} bytes this accepts.", super::MAX_BODY)),
            ),
            Err(JsonRejection::BytesRejection(unread)) => Err(Error::unreadable_body(&unread, super::MAX_BODY)),
            Err(other) => Err(Error::bad_request(other.body_text())),
        }
    }
}

/// The serde part of axum's rejection text ("Failed to ...: <detail>").
fn source_text(text: &str) -> &str {
    text.split_once(": ").map_or(text, |(_, detail)| detail)
}
