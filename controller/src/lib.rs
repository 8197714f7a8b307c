//! Deskpod's controller library: the API types (CRDs) shared with the portal, and the code that
//! reconciles them.
#![forbid(unsafe_code)]

pub mod api;
pub mod crd;
pub mod team;
