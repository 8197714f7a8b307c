//! The portal's one error type.
//!
//! 4xx variants carry a message written for the person who sent the request (and, for bad
//! input, the field it is about). Everything else is a 5xx whose detail goes to the log while the
//! response says only that something failed. As a response, an [`Error`] is JSON
//! (`{"error": "...", "field": "..."}`); pages wrap it in [`crate::http::PageError`] to get HTML.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Any error a boxed source can be.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `Result` with the portal's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value in the request is wrong (400); `field` names it when there is one.
    #[error("{message}")]
    InvalidInput { field: Option<&'static str>, message: String },
    /// The request carries no valid session or API token (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// Signed in, but not allowed to do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such object, or not one the caller may see (404).
    #[error("{0}")]
    NotFound(String),
    /// The object already exists (409).
    #[error("{message}")]
    Conflict { field: Option<&'static str>, message: String },
    /// The object existed but can no longer be used, e.g. a used invite (410).
    #[error("{0}")]
    Gone(String),
    /// The body is not of a type this endpoint reads (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request body is larger than the route reads (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request body did not arrive in time (408).
    #[error("{0}")]
    RequestTimeout(String),
    /// Too many failed attempts (429).
    #[error("{0}")]
    TooManyRequests(String),
    /// The store failed at `step`.
    #[error("database, {step}: {source}")]
    Store {
        step: &'static str,
        #[source]
        source: BoxError,
    },
    /// Hashing or parsing a password hash failed.
    #[error("password hashing: {0}")]
    PasswordHash(String),
    /// Signing a session token failed.
    #[error("signing a session token: {0}")]
    SessionSigning(#[source] jsonwebtoken::errors::Error),
    /// Rendering a page failed.
    #[error("rendering the page {template}: {source}")]
    Render {
        template: &'static str,
        #[source]
        source: askama::Error,
    },
    /// The operating system's random number source failed.
    #[error("reading random bytes: {0}")]
    Random(getrandom::Error),
    /// A blocking task (database, password hashing) panicked or was cancelled.
    #[error("a background task failed: {0}")]
    Background(#[from] tokio::task::JoinError),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The workspace backend (Kubernetes API server, Docker Engine) cannot be reached (503).
    #[error("the workspace backend: {0}")]
    BackendUnavailable(String),
    /// The OpenID Connect provider cannot be reached or answered something unusable (502).
    #[error("the OpenID Connect provider: {0}")]
    IdentityProvider(String),
}

impl Error {
    /// A 400 about one field.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidInput { field: Some(field), message: message.into() }
    }

    /// A 400 about the request as a whole.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::InvalidInput { field: None, message: message.into() }
    }

    /// Why a request body of at most `limit` bytes could not be read: 413 when it is larger, 408
    /// when it came too slowly ([`crate::serve::BodyTimeout`]), otherwise a 400 that it was cut off.
    pub fn unreadable_body(error: &(dyn std::error::Error + 'static), limit: usize) -> Self {
        let mut cause = Some(error);
        while let Some(current) = cause {
            if current.is::<http_body_util::LengthLimitError>() {
                return Self::PayloadTooLarge(format!("The body is larger than the {limit} bytes this accepts."));
            }
            if let Some(timeout) = current.downcast_ref::<crate::serve::BodyTimeout>() {
                return Self::RequestTimeout(format!("{timeout}; send it again."));
            }
            cause = current.source();
        }
        Self::bad_request("The body was cut off before its end.")
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidInput { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Gone(_) => StatusCode::GONE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::BackendUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::IdentityProvider(_) => StatusCode::BAD_GATEWAY,
            Self::Store { .. }
            | Self::PasswordHash(_)
            | Self::SessionSigning(_)
            | Self::Render { .. }
            | Self::Random(_)
            | Self::Background(_)
            | Self::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The field a 4xx is about.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::InvalidInput { field, .. } | Self::Conflict { field, .. } => *field,
            _ => None,
        }
    }

    /// What the response says: the message of a 4xx, a generic sentence for a 5xx (whose detail
    /// is logged by [`Error::log_server_error`] instead).
    pub fn public_message(&self) -> String {
        if self.status().is_server_error() {
            "Something went wrong in the portal; the details are in its log.".to_owned()
        } else {
            self.to_string()
        }
    }

    /// Logs a 5xx with its detail; 4xx are the caller's business and are not logged.
    pub fn log_server_error(&self) {
        if self.status().is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
    }
}

/// The JSON body of an error response.
#[derive(Serialize)]
pub struct ErrorBody {
    /// What went wrong, for a person to read.
    pub error: String,
    /// The request field it is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.log_server_error();
        let body = ErrorBody { error: self.public_message(), field: self.field() };
        (self.status(), Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn server_errors_hide_their_detail_and_client_errors_name_the_field() {
        let error = Error::Store { step: "reading a user", source: "disk I/O error at /secret/path".into() };
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(!body.contains("/secret/path"), "{body}");
        assert!(body.contains("details are in its log"), "{body}");

        let response = Error::invalid("email", "e-mail address must contain @").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json, serde_json::json!({"error": "e-mail address must contain @", "field": "email"}));
    }
}
