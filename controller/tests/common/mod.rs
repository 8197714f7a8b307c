//! Shared by the controller's integration tests: run the real controllers as a least-privilege
//! user against the test cluster.
#![allow(dead_code)] // each test binary uses a part

use std::time::Duration;

use deskpod_controller::api::{Team, WorkspaceTemplate};
use deskpod_controller::metrics::Metrics;
use deskpod_controller::team::reconcile;
use deskpod_controller::team::render::TeamSettings;
use deskpod_controller::workspace::{self, render::RouteSettings};
use deskpod_testsupport::{
    RequestLog, TestCluster, TestNamespace, client_from_kubeconfig, recording_client, repo_root, wait_for,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

pub const WAIT: Duration = Duration::from_secs(60);

/// Held by every test that runs controllers. The controllers watch all namespaces, so two tests
/// running at once would mean two controller instances acting on the same objects — what leader
/// election prevents in production.
pub static ONE_CONTROLLER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where test workspaces are routed: host mode under a test domain.
pub fn route_settings() -> RouteSettings {
    RouteSettings::host("desk.test")
}

/// Binds the chart's ClusterRole to a fresh client-certificate user and starts the Team and
/// Workspace controllers as that user. Abort the returned handle to stop them.
pub async fn start_controllers(ns: &TestNamespace) -> (tokio::task::JoinHandle<()>, Registry) {
    spawn_controllers(controller_client(ns).await)
}

/// A client for a fresh user bound only to the chart's ClusterRole.
pub async fn controller_client(ns: &TestNamespace) -> Client {
    let kubeconfig = controller_kubeconfig(ns).await;
    let client = client_from_kubeconfig(&kubeconfig).await.expect("controller client");
    wait_until_allowed(&client).await;
    client
}

/// [`controller_client`] that records every request the controllers send.
pub async fn recording_controller_client(ns: &TestNamespace) -> (Client, RequestLog) {
    let kubeconfig = controller_kubeconfig(ns).await;
    let (client, log) = recording_client(&kubeconfig).await.expect("controller client");
    wait_until_allowed(&client).await;
    (client, log)
}

/// Reconciles per workspace (`namespace/name`), counted from the Workspace controller's
/// `reconcile` spans by [`install_tracing`]'s layer.
static RECONCILES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, u64>>> =
    std::sync::LazyLock::new(Default::default);

/// How many times the Workspace controller has reconciled `namespace/name` in this process.
pub fn reconciles_of(workspace: &str) -> u64 {
    RECONCILES.lock().unwrap().get(workspace).copied().unwrap_or(0)
}

/// The controller's logs go with a failing test's output (DESKPOD_TEST_LOG, an env-filter such as
/// `kube_runtime=debug`, shows more), and its reconciles are counted per workspace.
fn install_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};

    struct CountReconciles;
    impl<S: tracing::Subscriber> Layer<S> for CountReconciles {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Workspace(Option<String>);
            impl tracing::field::Visit for Workspace {
                fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                    if field.name() == "workspace" {
                        self.0 = Some(format!("{value:?}"));
                    }
                }
            }
            if attrs.metadata().name() != "reconcile" {
                return;
            }
            let mut workspace = Workspace(None);
            attrs.record(&mut workspace);
            if let Some(key) = workspace.0 {
                *RECONCILES.lock().unwrap().entry(key).or_default() += 1;
            }
        }
    }

    let filter =
        EnvFilter::try_from_env("DESKPOD_TEST_LOG").unwrap_or_else(|_| EnvFilter::new("deskpod_controller=debug"));
    let logs = tracing_subscriber::fmt::layer().with_test_writer().with_filter(filter);
    let _ = tracing_subscriber::registry().with(logs).with(CountReconciles).try_init();
}

/// The kubeconfig of a fresh user bound only to the chart's ClusterRole (once per namespace).
pub async fn controller_kubeconfig(ns: &TestNamespace) -> std::path::PathBuf {
    // The controller's logs appear with a failing test's output; DESKPOD_TEST_LOG (an env-filter
    // such as `kube_runtime=debug`) shows more.
    install_tracing();
    let admin = &ns.client;
    let text = std::fs::read_to_string(repo_root().join("charts/deskpod/templates/controller-clusterrole.yaml"))
        .expect("chart ClusterRole");
    let role: ClusterRole = serde_yaml_ng::from_str(&text).expect("ClusterRole YAML");
    Api::<ClusterRole>::all(admin.clone())
        .patch("deskpod-controller", &PatchParams::apply("deskpod-tests").force(), &Patch::Apply(&role))
        .await
        .expect("install chart ClusterRole");
    let user = format!("{}-controller", ns.name);
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": user },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "deskpod-controller" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }]
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone()).create(&PostParams::default(), &binding).await.expect("bind");
    TestCluster::shared().user_kubeconfig(&user, &[]).expect("controller user")
}

/// How many reconciles `controller` (`team`, `workspace`) has run, read from the metrics the
/// controllers registered (as Prometheus would scrape them).
pub fn reconciles(registry: &Registry, controller: &str) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("metrics encode");
    let series = format!("deskpod_controller_reconcile_total{{controller=\"{controller}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map(|value| value.trim().parse().expect("a counter value"))
        .unwrap_or(0)
}

/// Starts the Team and Workspace controllers with `client`, as a fresh process would.
pub fn spawn_controllers(client: Client) -> (tokio::task::JoinHandle<()>, Registry) {
    spawn_controllers_routed(client, route_settings())
}

/// [`spawn_controllers`] with other route settings.
pub fn spawn_controllers_routed(client: Client, route: RouteSettings) -> (tokio::task::JoinHandle<()>, Registry) {
    let settings = TeamSettings { trusted_namespaces: vec!["deskpod-system".into()] };
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let task = tokio::spawn(async move {
        tokio::join!(
            reconcile::run(client.clone(), settings, metrics.clone()),
            workspace::reconcile::run(client, route, metrics)
        );
    });
    (task, registry)
}

/// RBAC bindings reach the authorizer through an informer; wait until ours is honoured.
pub async fn wait_until_allowed(client: &Client) {
    let teams: Api<Team> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Err(e) = teams.list(&Default::default()).await {
        assert!(tokio::time::Instant::now() < deadline, "the controller's ClusterRoleBinding never took effect: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the named Team is Ready: up to 30 s for the quota controller to discover the
/// CRDs, plus its 15 s resync.
pub async fn wait_team_ready(admin: &Client, name: &str) -> Team {
    wait_for(&Api::<Team>::all(admin.clone()), name, "Team Ready", Duration::from_secs(90), |t: Option<&Team>| {
        t.and_then(|t| t.status.as_ref())
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await
    .expect("the team is reconciled")
}

/// A Team and a template made for one test.
pub struct TeamFixture {
    pub team: String,
    /// The team's namespace, `team-<team>`.
    pub namespace: String,
    pub template: String,
}

/// Creates a Team with `team_spec` and a Python template with `resources`, both named after the
/// test namespace, and waits until the Team is Ready.
pub async fn team_with_template(ns: &TestNamespace, team_spec: Value, resources: Value) -> TeamFixture {
    let admin = &ns.client;
    let team = format!("{}-t", ns.name);
    let template = format!("{}-py", ns.name);
    let team_object: Team = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Team", "metadata": { "name": team }, "spec": team_spec
    }))
    .unwrap();
    Api::<Team>::all(admin.clone()).create(&PostParams::default(), &team_object).await.expect("create team");
    let template_object: WorkspaceTemplate = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "WorkspaceTemplate", "metadata": { "name": template },
        "spec": { "displayName": "Python", "image": "deskpod/python:latest", "homeSize": "1Gi", "resources": resources }
    }))
    .unwrap();
    Api::<WorkspaceTemplate>::all(admin.clone())
        .create(&PostParams::default(), &template_object)
        .await
        .expect("create template");
    wait_team_ready(admin, &team).await;
    TeamFixture { namespace: format!("team-{team}"), team, template }
}

impl TeamFixture {
    /// Deletes the Team (and with it its namespace) and the template.
    pub async fn delete(&self, admin: &Client) {
        Api::<Team>::all(admin.clone()).delete(&self.team, &DeleteParams::background()).await.expect("delete team");
        Api::<WorkspaceTemplate>::all(admin.clone())
            .delete(&self.template, &DeleteParams::default())
            .await
            .expect("delete template");
    }
}

/// Starts the Team and CiAgent controllers as a fresh user bound only to the chart's ClusterRole
/// (see [`start_controllers`]); returns the running task and that user's client, to restart them.
pub async fn start_agent_controllers(ns: &TestNamespace) -> (tokio::task::JoinHandle<()>, Client) {
    let client = controller_client(ns).await;
    (spawn_agent_controllers(client.clone()), client)
}

/// Starts the Team and CiAgent controllers with `client`, as a fresh process would.
pub fn spawn_agent_controllers(client: Client) -> tokio::task::JoinHandle<()> {
    use deskpod_controller::agent;

    let settings = TeamSettings { trusted_namespaces: vec!["deskpod-system".into()] };
    let metrics = Metrics::register(&mut Registry::default());
    tokio::spawn(async move {
        tokio::join!(
            reconcile::run(client.clone(), settings, metrics.clone()),
            agent::reconcile::run(client, agent::reconcile::AgentSettings::default(), metrics)
        );
    })
}
