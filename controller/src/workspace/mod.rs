//! Workspace → a home volume, a VNC password Secret, a desktop Pod, a Service and an Ingress,
//! within the limits of the workspace's team.

pub mod reconcile;
pub mod render;
#[cfg(test)]
mod render_tests;
