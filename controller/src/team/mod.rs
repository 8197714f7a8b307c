//! Team → an isolated namespace with quota, limits, network policies, RBAC and a service account.

pub mod reconcile;
pub mod render;
#[cfg(test)]
mod render_tests;
