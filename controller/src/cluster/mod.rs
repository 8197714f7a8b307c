//! Member clusters: teams placed on another cluster (`Team.spec.placement.cluster`) get their
//! namespace, quota, workspaces and CI agents there, while Teams, WorkspaceTemplates and
//! Clusters stay on the cluster the controller runs in (the management cluster).
//!
//! [`reconcile::run`] watches `Cluster` objects and keeps one connection per member in
//! [`Members`]: a client built from the kubeconfig Secret, the Workspace and CiAgent CRDs
//! installed, the member's Workspace and CiAgent controllers running against it (reading Teams
//! and templates from the management cluster), and a health probe of `/version` every few
//! seconds. The Team controller asks [`Members`] for a placed team's cluster and is told when a
//! member's health changes, so a team on a member that is down says so (ClusterUnavailable) and
//! converges once the member is back, while teams elsewhere carry on.

pub mod connect;
pub mod reconcile;
mod registry;

pub use registry::{Member, Members};
