//! Every controller of `deskpod-controller run`, together: what the binary runs and what tests
//! and benchmarks run in-process, so they all run the same thing.

use std::sync::Arc;

use kube::Client;

use crate::agent::{self, reconcile::AgentSettings};
use crate::cluster::reconcile::{ClusterSettings, MemberControllers};
use crate::cluster::{self, Members};
use crate::metrics::Metrics;
use crate::team::{self, render::TeamSettings};
use crate::workspace::{self, render::RouteSettings};

/// How the controllers are configured (the binary's flags).
#[derive(Clone, Debug)]
pub struct Settings {
    pub teams: TeamSettings,
    pub route: RouteSettings,
    pub agents: AgentSettings,
    pub clusters: ClusterSettings,
}

impl Settings {
    /// Defaults, with desktops routed by host under `base_domain` and `deskpod-system` trusted.
    pub fn new(base_domain: &str) -> Self {
        Settings {
            teams: TeamSettings { trusted_namespaces: vec!["deskpod-system".into()] },
            route: RouteSettings::host(base_domain),
            agents: AgentSettings::default(),
            clusters: ClusterSettings::default(),
        }
    }
}

/// Runs the Team, Workspace, CiAgent and Cluster controllers against the cluster `client` talks
/// to (the management cluster), and each member cluster's Workspace and CiAgent controllers once
/// it connects (Teams and templates are read from the management cluster). Runs until aborted.
pub async fn controllers(client: Client, settings: Settings, metrics: Metrics) {
    let Settings { teams, route, agents, clusters } = settings;
    let members = Members::default();
    let start_member: MemberControllers = {
        let (management, route, agents, metrics) = (client.clone(), route.clone(), agents.clone(), metrics.clone());
        Arc::new(move |name: String, member: Client| {
            let (management, route, agents, metrics) =
                (management.clone(), route.clone(), agents.clone(), metrics.clone());
            Box::pin(async move {
                tracing::info!(cluster = %name, "reconciling Workspaces and CiAgents on a member cluster");
                tokio::join!(
                    workspace::reconcile::run_with_teams_from(
                        member.clone(),
                        management.clone(),
                        route,
                        metrics.clone()
                    ),
                    agent::reconcile::run_with_teams_from(member, management, agents, metrics)
                );
            })
        })
    };
    tokio::join!(
        team::reconcile::run_with_members(client.clone(), teams, members.clone(), metrics.clone()),
        workspace::reconcile::run(client.clone(), route, metrics.clone()),
        agent::reconcile::run(client.clone(), agents, metrics.clone()),
        cluster::reconcile::run(client, clusters, members, start_member, metrics)
    );
}

/// Returns on SIGTERM (a pod or container being stopped) or SIGINT (Ctrl-C). Deskpod's binaries
/// handle it themselves: as PID 1 in a container, a signal without a handler is ignored and the
/// process would be killed only after the grace period.
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch for SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
