//! Deskpod's API, group `deskpod.io`, version `v1alpha1`.
//!
//! These types are the source of truth for the CRDs: `deskpod-controller crd` prints them and the
//! chart's `crds/` directory is generated from them (a test fails when the two differ).

// kube's `printcolumn(name = .., type_ = ..)` arguments repeat by design; clippy reads each
// `#[kube(...)]` list as attributes and calls the repeats duplicates.
#![allow(clippy::duplicated_attributes)]

mod ciagent;
mod cluster;
pub mod schema;
mod team;
mod template;
mod workspace;

pub use ciagent::*;
pub use cluster::*;
pub use team::*;
pub use template::*;
pub use workspace::*;
