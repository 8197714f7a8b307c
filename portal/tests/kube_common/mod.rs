//! Shared by the portal's tests against the real test cluster: the real controllers, a Team with
//! members and a template named after the test's namespace, and a portal on the Kubernetes
//! backend. Use with `mod common; mod kube_common;`.
#![allow(dead_code)] // each test binary uses a part

use std::sync::Arc;
use std::time::Duration;

use deskpod_controller::api::{Team, Workspace, WorkspacePhase, WorkspaceTemplate};
use deskpod_controller::metrics::Metrics;
use deskpod_controller::run::Settings;
use deskpod_portal::backend::kubernetes::{KubernetesBackend, KubernetesOptions};
use deskpod_portal::store::GlobalRole;
use deskpod_testsupport::{TestCluster, TestNamespace, wait_for};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

use crate::common::Portal;

pub const WAIT: Duration = Duration::from_secs(90);

/// Held by every test that runs controllers: they watch all namespaces, so two at once in one
/// test binary would be two controllers acting on the same objects.
pub static ONE_CONTROLLER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Team and Workspace controllers, stopped when dropped.
pub struct Controllers(tokio::task::JoinHandle<()>);

impl Drop for Controllers {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the real controllers (as cluster admin), as `deskpod-controller run` runs them.
pub fn start_controllers(client: Client) -> Controllers {
    start_controllers_with(client, Settings::new("desk.test"))
}

/// [`start_controllers`] with other settings (routing, forward auth ...).
pub fn start_controllers_with(client: Client, settings: Settings) -> Controllers {
    let metrics = Metrics::register(&mut prometheus_client::registry::Registry::default());
    Controllers(tokio::spawn(deskpod_controller::run::controllers(client, settings, metrics)))
}

/// Everything one test works with: its namespace (whose name prefixes every object), the Team
/// and template, the people, and a portal on the Kubernetes backend.
pub struct Fixture {
    pub ns: TestNamespace,
    pub team: String,
    pub template: String,
    pub portal: Portal,
    /// Engineer, owner of the workspaces under test.
    pub alice: String,
    /// Lead; the team does not allow leads into members' desktops.
    pub bob: String,
    /// Contractor whose membership has expired.
    pub carol: String,
    /// Another engineer of the team.
    pub erin: String,
    /// Signed up, in no team.
    pub mallory: String,
    /// A platform admin in no team.
    pub admin: String,
    _controllers: Controllers,
}

impl Fixture {
    /// Starts the controllers, creates the Team (quota: `workspaces` workspaces) and a template, waits
    /// until the Team is Ready, and builds a portal on a fresh Kubernetes backend.
    pub async fn new(prefix: &str, workspaces: i32, allow_endpoint_override: bool) -> Self {
        let template = json!({ "displayName": "Python", "description": "Python 3 and VS Code", "image": "deskpod/python:latest",
                               "homeSize": "1Gi", "resources": { "cpuRequest": "500m", "memoryRequest": "512Mi" } });
        Self::with_template(prefix, workspaces, allow_endpoint_override, template).await
    }

    /// [`Fixture::new`] with the template's `spec` given.
    pub async fn with_template(
        prefix: &str,
        workspaces: i32,
        allow_endpoint_override: bool,
        template_spec: Value,
    ) -> Self {
        Self::with_settings(prefix, workspaces, allow_endpoint_override, template_spec, Settings::new("desk.test"))
            .await
    }

    /// [`Fixture::with_template`] with the controllers started with `settings`.
    pub async fn with_settings(
        prefix: &str,
        workspaces: i32,
        allow_endpoint_override: bool,
        template_spec: Value,
        settings: Settings,
    ) -> Self {
        let ns = TestCluster::shared().namespace(prefix).await.expect("test namespace");
        let client = ns.client.clone();
        let controllers = start_controllers_with(client.clone(), settings);
        let team = ns.name.clone();
        let template = format!("{}-py", ns.name);
        let person = |who: &str| format!("{who}@{}.test", ns.name);
        let (alice, bob, carol, erin, mallory, admin) =
            (person("alice"), person("bob"), person("carol"), person("erin"), person("mallory"), person("admin"));
        let team_object: Team = serde_json::from_value(json!({
            "apiVersion": "deskpod.io/v1alpha1", "kind": "Team", "metadata": { "name": team },
            "spec": {
                "quota": { "workspaces": workspaces, "pods": 10, "storage": "20Gi", "cpu": "8", "memory": "16Gi" },
                "members": [
                    { "user": alice, "role": "engineer" },
                    { "user": bob, "role": "lead" },
                    { "user": carol, "role": "contractor", "expiresAt": "2024-01-01T00:00:00Z" },
                    { "user": erin, "role": "engineer" },
                ]
            }
        }))
        .unwrap();
        Api::<Team>::all(client.clone()).create(&PostParams::default(), &team_object).await.expect("create team");
        let template_object: WorkspaceTemplate = serde_json::from_value(json!({
            "apiVersion": "deskpod.io/v1alpha1", "kind": "WorkspaceTemplate", "metadata": { "name": template },
            "spec": template_spec
        }))
        .unwrap();
        Api::<WorkspaceTemplate>::all(client.clone())
            .create(&PostParams::default(), &template_object)
            .await
            .expect("create template");
        wait_team_ready(&client, &team).await;

        let options = KubernetesOptions { allow_endpoint_override, ..KubernetesOptions::default() };
        let backend = KubernetesBackend::start(client.clone(), options).await.expect("backend starts");
        let mut portal = Portal::new().await;
        portal.state = portal.state.clone().with_backend(Arc::new(backend));
        for user in [&alice, &bob, &carol, &erin, &mallory] {
            portal.add_user(user, GlobalRole::User).await;
        }
        portal.add_user(&admin, GlobalRole::Admin).await;
        let fixture =
            Self { ns, team, template, portal, alice, bob, carol, erin, mallory, admin, _controllers: controllers };
        fixture.wait_quota_known().await;
        fixture
    }

    pub fn client(&self) -> Client {
        self.ns.client.clone()
    }

    pub fn workspaces(&self) -> Api<Workspace> {
        Api::namespaced(self.client(), &format!("team-{}", self.team))
    }

    /// The names of the team's Workspaces, as the API server has them.
    pub async fn workspace_names(&self) -> Vec<String> {
        let list = self.workspaces().list(&ListParams::default()).await.expect("list workspaces");
        let mut names: Vec<String> = list.items.into_iter().filter_map(|w| w.metadata.name).collect();
        names.sort();
        names
    }

    /// Waits until the workspace has `phase`.
    pub async fn wait_phase(&self, name: &str, phase: WorkspacePhase) -> Workspace {
        wait_for(&self.workspaces(), name, &format!("{phase:?}"), WAIT, move |w: Option<&Workspace>| {
            w.and_then(|w| w.status.as_ref()).is_some_and(|s| s.phase == phase)
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Waits until the portal's backend sees the team's workspace quota.
    async fn wait_quota_known(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let team = self.portal.state.backend.team(&self.team).await.expect("team");
            if team.is_some_and(|t| t.quota.contains_key("count/workspaces.deskpod.io")) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the backend never saw the team's quota");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the backend's cached quota says `used` workspaces are in use.
    pub async fn wait_workspaces_used(&self, used: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let team = self.portal.state.backend.team(&self.team).await.expect("team").expect("team exists");
            if team.quota.get("count/workspaces.deskpod.io").is_some_and(|q| q.used == used) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the team's quota never showed {used} workspaces used");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes the Team (and with it its namespace) and the template.
    pub async fn delete(&self) {
        let client = self.client();
        let _ = Api::<Team>::all(client.clone()).delete(&self.team, &DeleteParams::background()).await;
        let _ = Api::<WorkspaceTemplate>::all(client).delete(&self.template, &DeleteParams::default()).await;
    }
}

/// Waits until the Team is Ready (its quota counted by the quota controller).
pub async fn wait_team_ready(client: &Client, name: &str) -> Team {
    wait_for(&Api::<Team>::all(client.clone()), name, "Team Ready", WAIT, |t: Option<&Team>| {
        t.and_then(|t| t.status.as_ref())
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await
    .expect("the team is reconciled")
}

/// A JSON value's field as a string.
pub fn text(value: &Value, field: &str) -> String {
    value[field].as_str().unwrap_or_default().to_owned()
}
