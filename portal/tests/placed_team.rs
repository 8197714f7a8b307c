//! A team placed on a member cluster, through the portal's Kubernetes backend: the shared test
//! cluster is the management cluster (Teams, templates, Clusters, the kubeconfig Secret) and the
//! test starts a second real cluster as the member. The real controllers run as the controller
//! binary runs them (Team, Workspace and Cluster controllers, the member's Workspace controller).
//! What a member of the team does through the portal lands on the member cluster: the workspace
//! is created, listed, reached (its pod's address), stopped and deleted there, and nothing of the
//! team is on the management cluster. The team's page says where it lives.

mod common;
mod kube_common;

use std::sync::Arc;
use std::time::Duration;

use deskpod_controller::api::{Cluster, Team, Workspace, WorkspacePhase, WorkspaceTemplate};
use deskpod_controller::cluster::reconcile::ClusterSettings;
use deskpod_controller::metrics::Metrics;
use deskpod_controller::run;
use deskpod_controller::workspace::render::pod_name;
use deskpod_portal::backend::kubernetes::{KubernetesBackend, KubernetesOptions};
use deskpod_portal::backend::{Backend, NewWorkspace, Phase};
use deskpod_portal::store::GlobalRole;
use deskpod_testsupport::{TestCluster, wait_deleted, wait_for};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use kube_common::{ONE_CONTROLLER, WAIT};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_placed_teams_workspace_is_created_reached_and_deleted_on_its_member_cluster() {
    let _one = ONE_CONTROLLER.lock().await;
    let ns = TestCluster::shared().namespace("placed").await.expect("test namespace");
    let admin = ns.client.clone();
    let member = tokio::task::spawn_blocking(TestCluster::start_private).await.unwrap().expect("the member cluster");
    let member_admin = member.admin_client().await.expect("member admin client");

    // The member, registered as the controller and the portal find it: its kubeconfig in a Secret
    // of the namespace given to both, and a Cluster naming that Secret.
    let kubeconfig = std::fs::read_to_string(&member.kubeconfig).expect("member kubeconfig");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "east-kubeconfig" }, "stringData": { "kubeconfig": kubeconfig }
    }))
    .unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &secret).await.expect("kubeconfig Secret");
    let cluster_name = format!("{}-east", ns.name);
    let cluster: Cluster = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Cluster", "metadata": { "name": cluster_name },
        "spec": { "kubeconfigSecret": { "name": "east-kubeconfig" } }
    }))
    .unwrap();
    Api::<Cluster>::all(admin.clone()).create(&PostParams::default(), &cluster).await.expect("Cluster");
    let controllers = spawn_controllers(admin.clone(), ns.name.clone());

    let (team, template, alice) = (format!("{}-e", ns.name), format!("{}-py", ns.name), "alice@east.test".to_string());
    let template_object: WorkspaceTemplate = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "WorkspaceTemplate", "metadata": { "name": template },
        "spec": { "displayName": "Python", "image": "deskpod/python:latest", "homeSize": "1Gi",
                  "resources": { "cpuRequest": "100m", "memoryRequest": "256Mi" } }
    }))
    .unwrap();
    Api::<WorkspaceTemplate>::all(admin.clone()).create(&PostParams::default(), &template_object).await.unwrap();
    let team_object: Team = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Team", "metadata": { "name": team },
        "spec": { "quota": { "workspaces": 3, "pods": 3 }, "placement": { "cluster": cluster_name },
                  "members": [{ "user": alice, "role": "engineer" }] }
    }))
    .unwrap();
    let teams: Api<Team> = Api::all(admin.clone());
    teams.create(&PostParams::default(), &team_object).await.expect("placed team");
    // Up to 30 s for the member's quota controller to discover the CRDs, plus its 15 s resync.
    wait_for(&teams, &team, "placed Team Ready", Duration::from_secs(120), |t: Option<&Team>| {
        t.and_then(|t| t.status.as_ref())
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await
    .expect("the placed team becomes Ready");

    let options = KubernetesOptions { cluster_secret_namespace: Some(ns.name.clone()), ..KubernetesOptions::default() };
    let backend = Arc::new(KubernetesBackend::start(admin.clone(), options).await.expect("backend"));
    let mut portal = common::Portal::new().await;
    portal.state = portal.state.clone().with_backend(backend.clone());
    portal.add_user(&alice, GlobalRole::User).await;

    // Created through the portal: the Workspace is on the member, in the team's namespace there.
    let new = NewWorkspace { team: team.clone(), name: "dev".into(), owner: alice.clone(), template: template.clone() };
    backend.create_workspace(new).await.expect("created on the member");
    let namespace = format!("team-{team}");
    let on_member: Api<Workspace> = Api::namespaced(member_admin.clone(), &namespace);
    let running =
        |w: Option<&Workspace>| w.and_then(|w| w.status.as_ref()).is_some_and(|s| s.phase == WorkspacePhase::Running);
    wait_for(&on_member, "dev", "Running on the member", WAIT, running).await.expect("runs on the member");
    let management_namespaces: Api<Namespace> = Api::all(admin.clone());
    assert!(management_namespaces.get_opt(&namespace).await.unwrap().is_none(), "nothing of the team at home");

    // Listed, reached and shown where it lives.
    let listed = backend.workspaces(&team, Some(&alice)).await.expect("listed from the member");
    assert_eq!(listed.iter().map(|w| (w.name.as_str(), w.phase)).collect::<Vec<_>>(), [("dev", Phase::Running)]);
    let pod = Api::<Pod>::namespaced(member_admin.clone(), &namespace).get(&pod_name("dev")).await.unwrap();
    let pod_ip = pod.status.and_then(|s| s.pod_ip).expect("kwok gives the member's pod an IP");
    let endpoint = backend.desktop(&team, "dev").await.unwrap().expect("a running desktop has an address");
    assert_eq!(endpoint.address.ip().to_string(), pod_ip, "the member's pod");
    assert!(endpoint.password.is_some(), "read from the member's Secret");
    let view = backend.team(&team).await.unwrap().expect("the team");
    assert_eq!(view.cluster.as_deref(), Some(cluster_name.as_str()));
    let mut browser = common::Browser::signed_in(&portal, &alice).await;
    let page = browser.get(&portal, &format!("/teams/{team}")).await;
    assert!(page.body.contains(&format!("member cluster <strong>{cluster_name}</strong>")), "{}", page.body);

    // Stopped and deleted there.
    backend.set_running(&team, "dev", false).await.unwrap();
    let stopped =
        |w: Option<&Workspace>| w.and_then(|w| w.status.as_ref()).is_some_and(|s| s.phase == WorkspacePhase::Stopped);
    wait_for(&on_member, "dev", "Stopped on the member", WAIT, stopped).await.expect("stops on the member");
    backend.delete_workspace(&team, "dev").await.unwrap();
    wait_deleted(&on_member, "dev", "the workspace on the member", WAIT).await.unwrap();
    assert!(backend.workspaces(&team, None).await.unwrap().is_empty());

    let _ = teams.delete(&team, &DeleteParams::background()).await;
    wait_deleted(&teams, &team, "the placed team (its member namespace first)", WAIT).await.unwrap();
    let _ = Api::<WorkspaceTemplate>::all(admin.clone()).delete(&template, &DeleteParams::default()).await;
    let _ = Api::<Cluster>::all(admin).delete(&cluster_name, &DeleteParams::default()).await;
    controllers.abort();
}

/// The controllers as `deskpod-controller run` runs them, probing the member every second.
fn spawn_controllers(client: Client, secret_namespace: String) -> tokio::task::JoinHandle<()> {
    let mut settings = run::Settings::new("desk.test");
    settings.clusters = ClusterSettings {
        secret_namespace,
        probe_interval: Duration::from_secs(1),
        probe_timeout: Duration::from_secs(2),
    };
    let metrics = Metrics::register(&mut prometheus_client::registry::Registry::default());
    tokio::spawn(run::controllers(client, settings, metrics))
}
