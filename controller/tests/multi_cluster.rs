//! Teams on their own clusters, managed from one place: the shared test cluster is the management
//! cluster (Teams, templates, Clusters, the controller's user) and the test starts a second,
//! real cluster as a member. A team placed on the member gets its namespace, quota and running
//! workspaces there and nothing on the management cluster; when the member's API server goes
//! away the Cluster turns unhealthy and the team says so, while a team on the management cluster
//! keeps getting workspaces; when it returns, what changed meanwhile converges on the member.

mod common;

use std::time::{Duration, Instant};

use common::{WAIT, controller_client};
use deskpod_controller::api::{Cluster, Team, Workspace, WorkspacePhase, WorkspaceTemplate};
use deskpod_controller::cluster::reconcile::ClusterSettings;
use deskpod_controller::metrics::Metrics;
use deskpod_controller::run;
use deskpod_controller::team::reconcile;
use deskpod_testsupport::{TestCluster, wait_deleted, wait_for};
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use prometheus_client::registry::Registry;
use serde_json::json;

/// How often the test's controller probes the member (the default is 5 s).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long the member's API server stays away at least.
const MIN_OUTAGE: Duration = Duration::from_secs(20);

/// Polls `check` every 100 ms until it yields a value; fails after `timeout` saying what it
/// waited for. Used on the member right after its API server restarted: each look is a fresh
/// GET, so what is measured is when the object is there, not when a watch opened across the
/// restart gets round to reporting it.
async fn poll<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ready(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
}

fn cluster_ready(status: &'static str) -> impl Fn(Option<&Cluster>) -> bool {
    move |c| c.and_then(|c| c.status.as_ref()).and_then(|s| ready(&s.conditions)).is_some_and(|r| r.status == status)
}

fn team_ready_with(status: &'static str, reason: &'static str) -> impl Fn(Option<&Team>) -> bool {
    move |t| {
        t.and_then(|t| t.status.as_ref())
            .and_then(|s| ready(&s.conditions))
            .is_some_and(|r| r.status == status && (reason.is_empty() || r.reason == reason))
    }
}

fn running(ws: Option<&Workspace>) -> bool {
    ws.and_then(|w| w.status.as_ref()).is_some_and(|s| s.phase == WorkspacePhase::Running)
}

fn team(name: &str, spec: serde_json::Value) -> Team {
    serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Team", "metadata": { "name": name }, "spec": spec
    }))
    .unwrap()
}

fn workspace(name: &str, template: &str) -> Workspace {
    serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Workspace", "metadata": { "name": name },
        "spec": { "owner": "alice@example.com", "template": template }
    }))
    .unwrap()
}

/// The controllers as the binary runs them, probing members every [`PROBE_INTERVAL`].
fn spawn_controllers(client: Client, secret_namespace: String) -> tokio::task::JoinHandle<()> {
    let mut settings = run::Settings::new("desk.test");
    settings.clusters =
        ClusterSettings { secret_namespace, probe_interval: PROBE_INTERVAL, probe_timeout: Duration::from_secs(2) };
    settings.route = common::route_settings();
    tokio::spawn(run::controllers(client, settings, Metrics::register(&mut Registry::default())))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_team_lives_on_its_member_cluster_and_rides_out_its_outage() {
    let _one_controller = common::ONE_CONTROLLER.lock().await;
    let ns = TestCluster::shared().namespace("multi").await.expect("test namespace");
    let admin = ns.client.clone();
    let member =
        tokio::task::spawn_blocking(TestCluster::start_private).await.unwrap().expect("a second cluster, the member");
    let member_admin = member.admin_client().await.expect("member admin client");

    // Register the member: its admin kubeconfig in a Secret in the namespace the controller reads
    // cluster credentials from (this test's), and a Cluster naming it.
    let kubeconfig = std::fs::read_to_string(&member.kubeconfig).expect("member kubeconfig");
    let secret_name = format!("{}-kubeconfig", ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": secret_name }, "stringData": { "kubeconfig": kubeconfig }
    }))
    .unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &secret).await.expect("kubeconfig Secret");
    let cluster_name = format!("{}-east", ns.name);
    let clusters: Api<Cluster> = Api::all(admin.clone());
    let cluster: Cluster = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Cluster", "metadata": { "name": cluster_name },
        "spec": { "kubeconfigSecret": { "name": secret_name } }
    }))
    .unwrap();
    clusters.create(&PostParams::default(), &cluster).await.expect("create Cluster");

    let controllers = spawn_controllers(controller_client(&ns).await, ns.name.clone());
    let registered = wait_for(&clusters, &cluster_name, "Cluster Ready", WAIT, cluster_ready("True")).await.unwrap();
    let status = registered.status.unwrap();
    assert_eq!(status.kubernetes_version.as_deref(), Some("v1.37.2"), "the member's /version");

    // A template, a team placed on the member and a team at home (the management cluster).
    let template = format!("{}-py", ns.name);
    let template_object: WorkspaceTemplate = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "WorkspaceTemplate", "metadata": { "name": template },
        "spec": { "displayName": "Python", "image": "deskpod/python:latest", "homeSize": "1Gi",
                  "resources": { "cpuRequest": "100m", "cpuLimit": "1", "memoryRequest": "256Mi", "memoryLimit": "1Gi" } }
    }))
    .unwrap();
    let templates: Api<WorkspaceTemplate> = Api::all(admin.clone());
    templates.create(&PostParams::default(), &template_object).await.expect("template");
    let teams: Api<Team> = Api::all(admin.clone());
    let (east, home) = (format!("{}-e", ns.name), format!("{}-h", ns.name));
    let placed = json!({ "quota": { "pods": 5, "workspaces": 5 }, "placement": { "cluster": cluster_name } });
    teams.create(&PostParams::default(), &team(&east, placed)).await.expect("placed team");
    teams.create(&PostParams::default(), &team(&home, json!({ "quota": { "pods": 5 } }))).await.expect("home team");
    // Up to 30 s for each quota controller to discover the CRDs, plus its 15 s resync.
    let slow = Duration::from_secs(90);
    let east_team = wait_for(&teams, &east, "placed Team Ready", slow, team_ready_with("True", "")).await.unwrap();
    wait_for(&teams, &home, "home Team Ready", slow, team_ready_with("True", "")).await.unwrap();
    assert_eq!(east_team.status.as_ref().unwrap().cluster.as_deref(), Some(cluster_name.as_str()));

    // The placed team's namespace and quota are on the member, and not at home.
    let (east_ns, home_ns) = (format!("team-{east}"), format!("team-{home}"));
    let member_quotas: Api<ResourceQuota> = Api::namespaced(member_admin.clone(), &east_ns);
    let quota = member_quotas.get("deskpod-team").await.expect("the quota is on the member");
    let hard = quota.spec.unwrap().hard.unwrap();
    assert_eq!(hard["pods"].0, "5");
    assert!(
        Api::<Namespace>::all(member_admin.clone()).get(&east_ns).await.unwrap().owner_references().is_empty(),
        "nothing on the member is owned by a Team it does not have (its garbage collector would remove it)"
    );
    let home_namespaces: Api<Namespace> = Api::all(admin.clone());
    assert!(home_namespaces.get_opt(&east_ns).await.unwrap().is_none(), "nothing of the placed team at home");
    assert!(Api::<Namespace>::all(member_admin.clone()).get_opt(&home_ns).await.unwrap().is_none());

    // A workspace of the placed team runs on the member.
    let member_workspaces: Api<Workspace> = Api::namespaced(member_admin.clone(), &east_ns);
    member_workspaces.create(&PostParams::default(), &workspace("one", &template)).await.expect("workspace");
    wait_for(&member_workspaces, "one", "workspace Running on the member", WAIT, running).await.unwrap();

    // The member's API server goes away.
    let outage = Instant::now();
    let stopping = &member;
    tokio::task::block_in_place(|| stopping.stop_api_server()).expect("stop the member's API server");
    wait_for(&clusters, &cluster_name, "Cluster unhealthy", WAIT, cluster_ready("False")).await.unwrap();
    let unhealthy_after = outage.elapsed();
    let down = clusters.get(&cluster_name).await.unwrap();
    let condition = ready(&down.status.as_ref().unwrap().conditions).unwrap().clone();
    assert_eq!(condition.reason, "Unreachable", "{condition:?}");
    let placed_team =
        wait_for(&teams, &east, "placed Team unavailable", WAIT, team_ready_with("False", "ClusterUnavailable"))
            .await
            .unwrap();
    let said = ready(&placed_team.status.as_ref().unwrap().conditions).unwrap().message.clone();
    assert!(said.contains(&cluster_name), "the Team says which cluster: {said}");

    // Meanwhile the home team keeps getting workspaces.
    let home_workspaces: Api<Workspace> = Api::namespaced(admin.clone(), &home_ns);
    let asked = Instant::now();
    home_workspaces.create(&PostParams::default(), &workspace("during", &template)).await.expect("home workspace");
    wait_for(&home_workspaces, "during", "home workspace Running during the outage", WAIT, running).await.unwrap();
    let home_running_after = asked.elapsed();

    // Changes made during the outage: the placed team's quota, and a new team on the member.
    let quota_patch = Patch::Merge(json!({ "spec": { "quota": { "pods": 7 } } }));
    teams.patch(&east, &PatchParams::default(), &quota_patch).await.expect("quota change");
    let late = format!("{}-l", ns.name);
    let late_spec = json!({ "quota": { "pods": 2 }, "placement": { "cluster": cluster_name } });
    teams.create(&PostParams::default(), &team(&late, late_spec)).await.expect("team created during the outage");
    wait_for(&teams, &late, "new placed Team unavailable", WAIT, team_ready_with("False", "ClusterUnavailable"))
        .await
        .unwrap();
    // An outage long enough for the watches on the member to have backed off (their delay
    // doubles up to 30 s): coming back must not wait for them. This is the scenario's length,
    // not a wait for anything.
    tokio::time::sleep_until((outage + MIN_OUTAGE).into()).await;
    let outage_lasted = outage.elapsed();

    // The member comes back.
    let back = Instant::now();
    tokio::task::block_in_place(|| stopping.start_api_server()).expect("start the member's API server");
    let restarted_after = back.elapsed();
    wait_for(&clusters, &cluster_name, "Cluster healthy again", WAIT, cluster_ready("True")).await.unwrap();
    let healthy_after = back.elapsed();
    poll("the quota change on the member", WAIT, || async {
        let quota = member_quotas.get_opt("deskpod-team").await.ok().flatten()?;
        quota.spec?.hard?.get("pods").filter(|pods| pods.0 == "7").map(drop)
    })
    .await;
    let quota_after = back.elapsed();
    let late_ns = format!("team-{late}");
    let member_namespaces: Api<Namespace> = Api::all(member_admin.clone());
    poll("the namespace of the team created meanwhile, on the member", WAIT, || async {
        member_namespaces.get_opt(&late_ns).await.ok().flatten().map(drop)
    })
    .await;
    let late_ns_after = back.elapsed();
    assert!(home_namespaces.get_opt(&late_ns).await.unwrap().is_none(), "and not at home");
    // Ready once the member's quota controller has counted the new quota: it is back from the
    // outage with its own watches' backoff, as are the member's volume binder and scheduler
    // (hence the longer waits from here on).
    wait_for(&teams, &east, "placed Team Ready again", slow, team_ready_with("True", "")).await.unwrap();
    wait_for(&teams, &late, "team created during the outage Ready", slow, team_ready_with("True", "")).await.unwrap();
    let late_ready_after = back.elapsed();

    // The member's workspace controller carries on: the old desktop still runs, a new one starts.
    wait_for(&member_workspaces, "one", "workspace still Running", WAIT, running).await.unwrap();
    member_workspaces.create(&PostParams::default(), &workspace("after", &template)).await.expect("workspace after");
    poll("a workspace Running on the member after the outage", slow, || async {
        member_workspaces.get_opt("after").await.ok().flatten().filter(|w| running(Some(w))).map(drop)
    })
    .await;
    let workspace_after = back.elapsed();

    eprintln!(
        "member marked unhealthy {unhealthy_after:.1?} after its API server stopped (probe every {PROBE_INTERVAL:?}); \
         home workspace Running {home_running_after:.1?} after it was asked for, during the outage; \
         outage {outage_lasted:.1?}; from the restart (API server ready in {restarted_after:.1?}): Cluster healthy \
         in {healthy_after:.1?}, quota change on the member in {quota_after:.1?}, the namespace of the team created meanwhile in {late_ns_after:.1?} (the team \
         Ready in {late_ready_after:.1?}), a workspace created then Running in {workspace_after:.1?}"
    );

    // A team placed on a cluster nobody registered says so, and can be deleted (nothing was made).
    let lost = format!("{}-x", ns.name);
    let nowhere = json!({ "placement": { "cluster": format!("{}-nowhere", ns.name) } });
    teams.create(&PostParams::default(), &team(&lost, nowhere)).await.expect("team on an unknown cluster");
    let unknown =
        wait_for(&teams, &lost, "UnknownCluster", WAIT, team_ready_with("False", "UnknownCluster")).await.unwrap();
    assert!(unknown.finalizers().is_empty(), "nothing on any member to clean up");
    teams.delete(&lost, &DeleteParams::background()).await.expect("delete");
    wait_deleted(&teams, &lost, "team on an unknown cluster deleted", WAIT).await.unwrap();

    // Deleting a placed team deletes its namespace on the member (nothing there is owned by the
    // Team, which the member does not have): the Team stays until that is done.
    assert!(
        teams.get(&east).await.unwrap().finalizers().iter().any(|f| f == reconcile::MEMBER_CLEANUP_FINALIZER),
        "placed teams carry the clean-up finalizer"
    );
    for name in [&east, &late] {
        teams.delete(name, &DeleteParams::background()).await.expect("delete placed team");
        wait_deleted(&teams, name, "placed Team deleted", WAIT).await.unwrap();
        let ns = member_namespaces.get_opt(&format!("team-{name}")).await.unwrap();
        assert!(
            ns.is_none_or(|ns| ns.metadata.deletion_timestamp.is_some()),
            "the namespace of {name} on the member is deleted with the Team"
        );
    }

    controllers.abort();
    teams.delete(&home, &DeleteParams::background()).await.expect("delete team");
    templates.delete(&template, &DeleteParams::default()).await.expect("delete template");
    clusters.delete(&cluster_name, &DeleteParams::default()).await.expect("delete Cluster");
}
