//! The objects rendered for a Workspace, applied to the real API server: every one is accepted,
//! the pod passes restricted Pod Security admission, its home volume binds and it runs on a
//! (simulated) node; deleting the Workspace garbage-collects what it owns, and the home volume
//! follows the reclaim policy.

use std::time::Duration;

use deskpod_controller::api::{Team, Workspace, WorkspaceTemplate};
use deskpod_controller::workspace::render::{self, ForwardAuth, RouteMode, RouteSettings};
use deskpod_testsupport::{TestCluster, TestNamespace, wait_deleted, wait_for};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn template() -> WorkspaceTemplate {
    serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "WorkspaceTemplate",
        "metadata": { "name": "python" },
        "spec": {
            "displayName": "Python", "image": "deskpod/python:latest",
            "resources": { "cpuRequest": "500m", "cpuLimit": "2", "memoryRequest": "1Gi", "memoryLimit": "2Gi" },
            "homeSize": "1Gi", "env": [{ "name": "TZ", "value": "UTC" }]
        }
    }))
    .unwrap()
}

fn team(namespace: &str) -> Team {
    serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Team",
        "metadata": { "name": namespace.trim_start_matches("team-") },
        "spec": { "limits": { "maxMemory": "4Gi", "maxHomeSize": "5Gi" } }
    }))
    .unwrap()
}

/// A namespace that enforces the restricted Pod Security Standard and holds the workspace
/// ServiceAccount, as team namespaces do; and its Team.
async fn team_namespace() -> (TestNamespace, Team) {
    let ns = TestCluster::shared().namespace("team-wsobj").await.expect("test namespace");
    let labels = json!({ "metadata": { "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest"
    } } });
    Api::<Namespace>::all(ns.client.clone())
        .patch(&ns.name, &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .expect("label namespace restricted");
    let team = team(&ns.name);
    let sa = deskpod_controller::team::render::render_workspace_service_account(&team);
    ns.api::<ServiceAccount>().create(&PostParams::default(), &sa).await.expect("workspace service account");
    (ns, team)
}

async fn create_workspace(ns: &TestNamespace, name: &str, reclaim: &str) -> Workspace {
    let ws: Workspace = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Workspace",
        "metadata": { "name": name },
        "spec": { "owner": "alice@example.com", "template": "python", "home": { "reclaimPolicy": reclaim } }
    }))
    .unwrap();
    ns.api::<Workspace>().create(&PostParams::default(), &ws).await.expect("create workspace")
}

#[tokio::test]
async fn rendered_objects_are_admitted_run_and_are_collected_with_the_workspace() {
    let (ns, team) = team_namespace().await;
    let ws = create_workspace(&ns, "alice-py", "Delete").await;
    let d = render::validate(&ws, Some(&template()), &team).expect("valid workspace");
    let route = RouteSettings {
        base_domain: "desk.example.com".into(),
        mode: RouteMode::Host,
        ingress_class: None,
        tls_secret: Some("desk-tls".into()),
        auth: ForwardAuth::NginxStyle {
            verify_url: "http://deskpod-portal.deskpod-system.svc/auth/verify".into(),
            signin_url: "https://desk.example.com/signin".into(),
        },
        gateway: None,
    };
    let pp = PostParams::default();
    ns.api::<Secret>().create(&pp, &render::render_vnc_secret(&d, "not-a-real-password")).await.expect("secret");
    ns.api::<PersistentVolumeClaim>().create(&pp, &render::render_home_pvc(&d)).await.expect("home claim");
    ns.api::<Pod>()
        .create(&pp, &render::render_pod(&d))
        .await
        .expect("the desktop pod passes restricted Pod Security admission");
    ns.api::<Service>().create(&pp, &render::render_service(&d)).await.expect("service");
    ns.api::<Ingress>().create(&pp, &render::render_ingress(&d, &route)).await.expect("ingress");

    let pods = ns.api::<Pod>();
    let pod_name = render::pod_name("alice-py");
    let running = wait_for(&pods, &pod_name, "desktop pod Running", WAIT, |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await
    .expect("the home volume binds and the pod runs");
    let (phase, _, problems) = render::pod_phase_summary(Some(&running));
    assert!(problems.is_empty(), "no problems reported for a running pod: {problems:?}");
    assert!(matches!(phase, deskpod_controller::api::WorkspacePhase::Running), "phase {phase:?}");

    // Deleting the Workspace takes everything it owns, the home volume included (Delete).
    ns.api::<Workspace>().delete("alice-py", &DeleteParams::background()).await.expect("delete workspace");
    wait_deleted(&pods, &pod_name, "pod collected", WAIT).await.expect("pod goes with the workspace");
    let claims = ns.api::<PersistentVolumeClaim>();
    wait_deleted(&claims, &render::home_pvc_name("alice-py"), "home collected", WAIT).await.expect("home goes too");
    wait_deleted(&ns.api::<Secret>(), &render::vnc_secret_name("alice-py"), "secret collected", WAIT)
        .await
        .expect("secret goes");
    wait_deleted(&ns.api::<Ingress>(), &render::ingress_name("alice-py"), "ingress collected", WAIT)
        .await
        .expect("ingress goes");
}

#[tokio::test]
async fn a_retained_home_volume_outlives_its_workspace() {
    let (ns, team) = team_namespace().await;
    let ws = create_workspace(&ns, "keepme", "Retain").await;
    let d = render::validate(&ws, Some(&template()), &team).expect("valid workspace");
    let claims = ns.api::<PersistentVolumeClaim>();
    let claim = claims.create(&PostParams::default(), &render::render_home_pvc(&d)).await.expect("home claim");
    ns.api::<Pod>().create(&PostParams::default(), &render::render_pod(&d)).await.expect("pod");

    ns.api::<Workspace>().delete("keepme", &DeleteParams::background()).await.expect("delete workspace");
    wait_deleted(&ns.api::<Pod>(), &render::pod_name("keepme"), "pod collected", WAIT).await.expect("pod goes");
    let kept = claims.get(&render::home_pvc_name("keepme")).await.expect("the home volume is kept");
    assert_eq!(kept.metadata.uid, claim.metadata.uid, "the very same claim");
}
