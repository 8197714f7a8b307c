//! What the Workspace controller costs the API server, idle culling, and Gateway API routing,
//! against the real test cluster with the chart's ClusterRole. Every request the controllers send
//! goes through a recording client, so the tests count the writes the way the API server sees them.

mod common;

use std::time::Duration;

use common::{WAIT, reconciles, recording_controller_client, spawn_controllers, spawn_controllers_routed};
use deskpod_controller::api::{Team, Workspace, WorkspacePhase};
use deskpod_controller::gateway::{HTTPRoute, ParentReference};
use deskpod_controller::workspace::idle::LAST_ACTIVITY_ANNOTATION;
use deskpod_controller::workspace::render::{self, RouteSettings};
use deskpod_testsupport::{TestCluster, install_gateway_api_crds, wait_deleted, wait_for};
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// The budget for one workspace from creation to Running.
const WRITES_PER_WORKSPACE: usize = 8;

fn workspace(name: &str, template: &str) -> Workspace {
    serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Workspace", "metadata": { "name": name },
        "spec": { "owner": "alice@example.com", "template": template }
    }))
    .unwrap()
}

fn phase_is(phase: WorkspacePhase) -> impl Fn(Option<&Workspace>) -> bool {
    move |ws| ws.and_then(|w| w.status.as_ref()).is_some_and(|s| s.phase == phase)
}

/// The Events published about one object, as `reason: note` lines.
async fn events_about(client: &Client, ns: &str, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = events.list(&ListParams::default().fields(&format!("involvedObject.name={name}"))).await.unwrap();
    list.items
        .into_iter()
        .map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn running_costs_few_writes_converged_costs_none_and_invalid_is_not_retried() {
    let _one_controller = common::ONE_CONTROLLER.lock().await;
    let ns = TestCluster::shared().namespace("wscost").await.expect("test namespace");
    let (client, log) = recording_controller_client(&ns).await;
    let (controllers, registry) = spawn_controllers(client);
    let admin = ns.client.clone();
    let fixture = common::team_with_template(
        &ns,
        json!({ "quota": { "workspaces": 10, "pods": 10 }, "limits": { "maxMemory": "4Gi" } }),
        json!({ "memoryRequest": "512Mi" }),
    )
    .await;
    let team_ns = fixture.namespace.clone();
    let workspaces: Api<Workspace> = Api::namespaced(admin.clone(), &team_ns);
    // Everything the controllers write for this team: objects in its namespace, and the Team.
    let team_writes = |mark: usize| {
        let mut writes = log.writes_since(mark, &format!("/namespaces/{team_ns}/"));
        writes.extend(log.writes_since(mark, &format!("/teams/{}", fixture.team)));
        writes
    };

    // Three workspaces from creation to Running, including what the Team controller writes
    // because the team's quota usage moved.
    let mark = log.len();
    let names = ["one", "two", "three"];
    for name in names {
        workspaces.create(&PostParams::default(), &workspace(name, &fixture.template)).await.expect("create");
    }
    for name in names {
        wait_for(&workspaces, name, "Running", WAIT, phase_is(WorkspacePhase::Running)).await.expect("runs");
    }
    let counted = |t: Option<&Team>| {
        let used = t.and_then(|t| t.status.as_ref()).map(|s| s.quota_used.clone()).unwrap_or_default();
        used.get("pods").is_some_and(|q| q.0 == "3") && used.get("persistentvolumeclaims").is_some_and(|q| q.0 == "3")
    };
    let teams: Api<Team> = Api::all(admin.clone());
    wait_for(&teams, &fixture.team, "the team's status counts 3 pods", WAIT, counted).await.expect("quota counted");
    let writes = team_writes(mark);
    assert!(
        writes.len() <= WRITES_PER_WORKSPACE * names.len(),
        "{} writes for {} workspaces (budget {WRITES_PER_WORKSPACE} each):\n{}",
        writes.len(),
        names.len(),
        writes.join("\n")
    );
    println!("{} API writes for {} workspaces:\n{}", writes.len(), names.len(), writes.join("\n"));

    // Converged: a reconcile (here caused by an unrelated label) writes nothing.
    let mark = log.len();
    let before = reconciles(&registry, "workspace");
    workspaces
        .patch("one", &PatchParams::default(), &Patch::Merge(json!({ "metadata": { "labels": { "touched": "yes" } } })))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        while reconciles(&registry, "workspace") == before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the label change is reconciled");
    assert_eq!(team_writes(mark), Vec::<String>::new(), "a converged workspace costs no writes");

    // Invalid: Failed with the reason, one Event, and then left alone until its spec changes.
    let mut big = workspace("big", &fixture.template);
    big.spec.resources = Some(serde_json::from_value(json!({ "memoryLimit": "16Gi" })).unwrap());
    workspaces.create(&PostParams::default(), &big).await.expect("create big");
    wait_for(&workspaces, "big", "big Failed", WAIT, phase_is(WorkspacePhase::Failed)).await.expect("fails");
    let mark = log.len();
    let key = format!("{team_ns}/big");
    let before = common::reconciles_of(&key);
    // An observation window: a retry loop would reconcile (and write) many times in it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let again = common::reconciles_of(&key) - before;
    assert!(again <= 1, "an invalid workspace was reconciled {again} times in 5 s");
    assert_eq!(log.writes_since(mark, "/workspaces/big"), Vec::<String>::new(), "no writes while nothing changes");
    let events = events_about(&admin, &team_ns, "big").await;
    assert_eq!(events.len(), 1, "one Event for the failure: {events:?}");
    assert!(events[0].starts_with("OverTeamLimit: memory limit 16Gi"), "{events:?}");
    assert!(Api::<Pod>::namespaced(admin.clone(), &team_ns).get_opt(&render::pod_name("big")).await.unwrap().is_none());

    fixture.delete(&admin).await;
    controllers.abort();
}

#[tokio::test]
async fn idle_desktops_stop_and_desktops_in_use_keep_running() {
    let _one_controller = common::ONE_CONTROLLER.lock().await;
    let ns = TestCluster::shared().namespace("wsidle").await.expect("test namespace");
    let (controllers, _registry) = common::start_controllers(&ns).await;
    let admin = ns.client.clone();
    let fixture = common::team_with_template(&ns, json!({}), json!({})).await;
    let team_ns = fixture.namespace.clone();
    // The fixture's template, with a short idle timeout.
    let templates: Api<deskpod_controller::api::WorkspaceTemplate> = Api::all(admin.clone());
    let patch = Patch::Merge(json!({ "spec": { "idleTimeout": "6s" } }));
    templates.patch(&fixture.template, &PatchParams::default(), &patch).await.expect("set idleTimeout");

    let workspaces: Api<Workspace> = Api::namespaced(admin.clone(), &team_ns);
    for name in ["idle", "busy"] {
        workspaces.create(&PostParams::default(), &workspace(name, &fixture.template)).await.expect("create");
    }
    for name in ["idle", "busy"] {
        wait_for(&workspaces, name, "Running", WAIT, phase_is(WorkspacePhase::Running)).await.expect("runs");
    }
    // "busy" gets input every second, the way the portal records it; "idle" none.
    let typing = {
        let workspaces = workspaces.clone();
        tokio::spawn(async move {
            loop {
                let now = Timestamp::now().to_string();
                let patch = Patch::Merge(json!({ "metadata": { "annotations": { LAST_ACTIVITY_ANNOTATION: now } } }));
                workspaces.patch("busy", &PatchParams::default(), &patch).await.expect("record activity");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let stopped = wait_for(&workspaces, "idle", "idle Stopped", WAIT, phase_is(WorkspacePhase::Stopped))
        .await
        .expect("the idle desktop is stopped");
    assert!(!stopped.spec.running, "stopped by setting spec.running to false, so a start is an ordinary start");
    let events = events_about(&admin, &team_ns, "idle").await;
    assert!(
        events.iter().any(|e| e.starts_with("IdleStopped: stopped after 6s without keyboard or pointer input")),
        "{events:?}"
    );
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), &team_ns);
    claims.get(&render::home_pvc_name("idle")).await.expect("the home volume stays");
    let busy = workspaces.get("busy").await.unwrap();
    assert_eq!(busy.status.unwrap().phase, WorkspacePhase::Running, "input keeps a desktop running");

    // Once the input stops, the other desktop goes the same way.
    typing.abort();
    wait_for(&workspaces, "busy", "busy Stopped", WAIT, phase_is(WorkspacePhase::Stopped))
        .await
        .expect("stopped once idle");

    fixture.delete(&admin).await;
    controllers.abort();
}

#[tokio::test]
async fn with_a_gateway_workspaces_get_an_http_route_instead_of_an_ingress() {
    let _one_controller = common::ONE_CONTROLLER.lock().await;
    let ns = TestCluster::shared().namespace("wsgw").await.expect("test namespace");
    let admin = ns.client.clone();
    install_gateway_api_crds(admin.clone()).await.expect("Gateway API CRDs");
    let client = common::controller_client(&ns).await;
    // First routed by Ingress, as by default.
    let (controllers, _registry) = spawn_controllers(client.clone());
    let fixture = common::team_with_template(&ns, json!({}), json!({})).await;
    let team_ns = fixture.namespace.clone();
    let workspaces: Api<Workspace> = Api::namespaced(admin.clone(), &team_ns);
    let ingresses: Api<Ingress> = Api::namespaced(admin.clone(), &team_ns);
    let routes: Api<HTTPRoute> = Api::namespaced(admin.clone(), &team_ns);

    workspaces.create(&PostParams::default(), &workspace("gw", &fixture.template)).await.expect("create");
    wait_for(&workspaces, "gw", "Running", WAIT, phase_is(WorkspacePhase::Running)).await.expect("runs");
    ingresses.get(&render::ingress_name("gw")).await.expect("an Ingress by default");
    controllers.abort();

    // Restarted with --gateway: the route moves to an HTTPRoute the API server accepts.
    let gateway = ParentReference { namespace: Some("infra".into()), name: "web".into(), section_name: None };
    let settings = RouteSettings { gateway: Some(gateway.clone()), ..common::route_settings() };
    let (controllers, _registry) = spawn_controllers_routed(client, settings);
    wait_deleted(&ingresses, &render::ingress_name("gw"), "the Ingress is replaced", WAIT).await.expect("removed");
    let route = wait_for(&routes, &render::route_name("gw"), "HTTPRoute", WAIT, |r: Option<&HTTPRoute>| r.is_some())
        .await
        .expect("an HTTPRoute");
    assert_eq!(route.spec.parent_refs, vec![gateway]);
    assert_eq!(route.spec.hostnames, vec![format!("gw.{}.desk.test", fixture.team)]);
    let rule = &route.spec.rules[0];
    assert_eq!(rule.backend_refs[0].name, render::service_name("gw"));
    assert_eq!(rule.backend_refs[0].port, 6901);
    assert_eq!(rule.matches[0].path.as_ref().map(|p| p.value.as_str()), Some("/"));
    assert_eq!(rule.timeouts.as_ref().and_then(|t| t.request.as_deref()), Some("0s"), "websockets are not cut");
    let owner = route.owner_references().first().expect("owned by the Workspace");
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Workspace", "gw"));

    workspaces.delete("gw", &DeleteParams::background()).await.expect("delete");
    wait_deleted(&routes, &render::route_name("gw"), "the route goes with the workspace", WAIT).await.expect("gone");
    fixture.delete(&admin).await;
    controllers.abort();
}
