//! Workspace → a home volume, a VNC password Secret, a desktop Pod, a Service and an Ingress (or
//! a Gateway API HTTPRoute), within the limits of the workspace's team.

pub mod idle;
pub mod reconcile;
pub mod render;
#[cfg(test)]
mod render_tests;
