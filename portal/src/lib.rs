//! Deskpod's web portal.
//!
//! This crate holds the HTTP application: [`app`] builds the router that `main` serves and that
//! tests drive in-process. Sign-in, the workspace pages, the JSON API and the desktop websocket
//! proxy are added as modules with their own `router()`, merged here.
#![forbid(unsafe_code)]

use axum::{Json, Router, routing::get};
use serde::Serialize;

/// What `GET /healthz` answers.
#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
}

async fn healthz() -> Json<Health> {
    Json(Health { status: "ok", version: env!("CARGO_PKG_VERSION") })
}

/// The portal's HTTP application.
pub fn app() -> Router {
    Router::new().route("/healthz", get(healthz))
}
