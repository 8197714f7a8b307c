//! The Kubernetes backend against the real test cluster and the real controllers: memberships
//! from Teams, a workspace's life (create, Running, desktop endpoint, input, stop, start, delete)
//! and the refusals that must leave nothing behind.

mod common;
mod kube_common;

use std::time::Duration;

use deskpod_controller::api::{Team, WorkspacePhase};
use deskpod_controller::workspace::idle::LAST_ACTIVITY_ANNOTATION;
use deskpod_controller::workspace::render::{VNC_PASSWORD_KEY, pod_name, vnc_secret_name};
use deskpod_portal::backend::kubernetes::DESKTOP_ENDPOINT_ANNOTATION;
use deskpod_portal::backend::{BackendError, NewWorkspace, Phase, Protocol};
use deskpod_portal::{Membership, TeamRole};
use deskpod_testsupport::wait_deleted;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube_common::{Fixture, ONE_CONTROLLER, WAIT};
use serde_json::json;

fn new_workspace(f: &Fixture, name: &str, template: &str) -> NewWorkspace {
    NewWorkspace { team: f.team.clone(), name: name.into(), owner: f.alice.clone(), template: template.into() }
}

#[tokio::test]
async fn memberships_follow_the_team_objects() {
    let _one = ONE_CONTROLLER.lock().await;
    let f = Fixture::new("portal-members", 2, false).await;
    let backend = &f.portal.state.backend;

    let alice = f.portal.state.memberships_of(&f.alice).await.unwrap();
    assert_eq!(alice, vec![Membership { team: f.team.clone(), role: TeamRole::Engineer, expires_at: None }]);
    let carol = f.portal.state.memberships_of(&f.carol).await.unwrap();
    assert_eq!(carol.len(), 1);
    assert_eq!(carol[0].role, TeamRole::Contractor);
    assert!(!carol[0].is_active_at(Timestamp::now()), "carol's membership has expired: {carol:?}");
    assert_eq!(f.portal.state.memberships_of(&f.mallory).await.unwrap(), vec![]);
    let team = backend.team(&f.team).await.unwrap().expect("the team is cached");
    assert_eq!(team.members.len(), 4);
    assert!(!team.leads_may_connect);
    assert_eq!(team.quota["count/workspaces.deskpod.io"].hard, "2");

    // Adding mallory to the Team reaches the cache through the watch, without a restart.
    let patch = json!({ "spec": { "members": [
        { "user": f.alice, "role": "engineer" }, { "user": f.mallory.to_uppercase(), "role": "lead" }
    ] } });
    Api::<Team>::all(f.client()).patch(&f.team, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mallory = f.portal.state.memberships_of(&f.mallory).await.unwrap();
        let bob = f.portal.state.memberships_of(&f.bob).await.unwrap();
        if mallory.iter().any(|m| m.role == TeamRole::Lead) && bob.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the membership change never reached the cache");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(backend.team("no-such-team").await.unwrap().is_none());
    f.delete().await;
}

#[tokio::test]
async fn a_workspace_runs_serves_its_desktop_records_input_stops_starts_and_goes() {
    let _one = ONE_CONTROLLER.lock().await;
    let f = Fixture::new("portal-life", 2, true).await;
    let backend = &f.portal.state.backend;

    let created = backend.create_workspace(new_workspace(&f, "dev", &f.template)).await.expect("created");
    assert_eq!((created.owner.as_str(), created.running), (f.alice.as_str(), true));
    f.wait_phase("dev", WorkspacePhase::Running).await;
    let view = backend.workspace(&f.team, "dev").await.unwrap().expect("listed");
    assert_eq!(view.phase, Phase::Running);
    assert!(view.started_at.is_some());
    let mine = backend.workspaces(&f.team, Some(&f.alice)).await.unwrap();
    assert_eq!(mine.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), ["dev"]);
    assert!(backend.workspaces(&f.team, Some(&f.erin)).await.unwrap().is_empty(), "erin owns none");

    // The desktop: the ready pod's IP and the template's port, and the Secret's password.
    let namespace = format!("team-{}", f.team);
    let pod = Api::<Pod>::namespaced(f.client(), &namespace).get(&pod_name("dev")).await.unwrap();
    let pod_ip = pod.status.unwrap().pod_ip.expect("kwok gives running pods an IP");
    let secret = Api::<Secret>::namespaced(f.client(), &namespace).get(&vnc_secret_name("dev")).await.unwrap();
    let password = String::from_utf8(secret.data.unwrap()[VNC_PASSWORD_KEY].0.clone()).unwrap();
    let endpoint = backend.desktop(&f.team, "dev").await.unwrap().expect("running, so reachable");
    assert_eq!(endpoint.address.to_string(), format!("{pod_ip}:6901"));
    assert_eq!(endpoint.protocol, Protocol::Novnc);
    assert_eq!(endpoint.password.as_deref(), Some(password.as_str()));

    // The test-only override, which this backend was built to honour.
    let annotate = json!({ "metadata": { "annotations": { DESKTOP_ENDPOINT_ANNOTATION: "127.0.0.1:15901" } } });
    f.workspaces().patch("dev", &PatchParams::default(), &Patch::Merge(&annotate)).await.unwrap();
    let endpoint = backend.desktop(&f.team, "dev").await.unwrap().unwrap();
    assert_eq!(endpoint.address.to_string(), "127.0.0.1:15901");

    // Input for idle culling lands in the annotation, RFC 3339.
    let at: Timestamp = "2030-05-06T07:08:09Z".parse().unwrap();
    backend.record_input(&f.team, "dev", at).await.unwrap();
    let ws = f.workspaces().get("dev").await.unwrap();
    assert_eq!(ws.metadata.annotations.unwrap()[LAST_ACTIVITY_ANNOTATION], "2030-05-06T07:08:09Z");

    backend.set_running(&f.team, "dev", false).await.unwrap();
    f.wait_phase("dev", WorkspacePhase::Stopped).await;
    assert!(backend.desktop(&f.team, "dev").await.unwrap().is_none(), "no desktop while stopped");
    backend.set_running(&f.team, "dev", true).await.unwrap();
    f.wait_phase("dev", WorkspacePhase::Running).await;

    backend.delete_workspace(&f.team, "dev").await.unwrap();
    wait_deleted(&f.workspaces(), "dev", "dev deleted", WAIT).await.unwrap();
    assert!(backend.workspace(&f.team, "dev").await.unwrap().is_none());
    assert!(matches!(backend.delete_workspace(&f.team, "dev").await, Err(BackendError::NotFound(_))));
    assert!(matches!(backend.set_running(&f.team, "dev", true).await, Err(BackendError::NotFound(_))));
    assert!(matches!(backend.desktop(&f.team, "dev").await, Err(BackendError::NotFound(_))));
    f.delete().await;
}

#[tokio::test]
async fn refusals_create_nothing() {
    let _one = ONE_CONTROLLER.lock().await;
    let f = Fixture::new("portal-refuse", 1, false).await;
    let backend = &f.portal.state.backend;

    let refused = |result: Result<_, BackendError>| match result {
        Err(BackendError::Invalid(message)) => message,
        other => panic!("expected Invalid, got {other:?}"),
    };
    let message = refused(backend.create_workspace(new_workspace(&f, &"a".repeat(41), &f.template)).await);
    assert!(message.contains("at most 40"), "{message}");
    let message = refused(backend.create_workspace(new_workspace(&f, "Bad_Name", &f.template)).await);
    assert!(message.contains("not a valid workspace name"), "{message}");
    let message = refused(backend.create_workspace(new_workspace(&f, "dev", "no-such-template")).await);
    assert!(message.contains("\"no-such-template\" does not exist"), "{message}");
    let unknown_team = NewWorkspace { team: "no-such-team".into(), ..new_workspace(&f, "dev", &f.template) };
    assert!(matches!(backend.create_workspace(unknown_team).await, Err(BackendError::NotFound(_))));
    assert_eq!(f.workspace_names().await, Vec::<String>::new(), "nothing was created");

    // The team's quota admits one workspace: the first is created, a second is refused, and a
    // taken name is a conflict.
    backend.create_workspace(new_workspace(&f, "one", &f.template)).await.expect("the first fits");
    let conflict = backend.create_workspace(new_workspace(&f, "one", &f.template)).await;
    assert!(matches!(&conflict, Err(BackendError::Conflict(m)) if m.contains("already has a workspace named one")));
    f.wait_workspaces_used("1").await;
    let message = refused(backend.create_workspace(new_workspace(&f, "two", &f.template)).await);
    assert!(message.contains("all 1 of its workspaces in use"), "{message}");
    assert_eq!(f.workspace_names().await, ["one"], "only the first exists");
    f.delete().await;
}
