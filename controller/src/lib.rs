//! Deskpod's controller library: the API types (CRDs) shared with the portal, and the code that
//! reconciles them.
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod api;
pub mod cache;
pub mod cluster;
pub mod conditions;
pub mod crd;
pub mod duration;
mod error;
pub mod gateway;
pub mod leader;
pub mod metrics;
pub mod quantity;
pub mod run;
pub mod team;
pub mod workspace;

pub use error::{Error, Result};

/// The field manager of every server-side apply the controller makes.
pub const FIELD_MANAGER: &str = "deskpod-controller";
