//! The Team controller against the real test cluster, running as a user that holds only the
//! chart's ClusterRole (not cluster-admin).

mod common;

use std::time::Duration;

use common::{WAIT, start_controllers, wait_team_ready};
use deskpod_controller::api::{Team, Workspace};
use deskpod_testsupport::{TestCluster, wait_deleted, wait_for};
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Pod, ResourceQuota, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Waits (bounded) for an Event with `reason` about the named object.
async fn wait_for_event(
    events: &Api<k8s_openapi::api::events::v1::Event>,
    name: &str,
    reason: &str,
) -> k8s_openapi::api::events::v1::Event {
    let params = kube::api::ListParams::default().fields(&format!("regarding.name={name}"));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = events.list(&params).await.expect("list events");
        if let Some(e) = found.items.into_iter().find(|e| e.reason.as_deref() == Some(reason)) {
            return e;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {reason} event for {name}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn subjects(binding: &RoleBinding) -> Vec<String> {
    binding.subjects.iter().flatten().map(|s| s.name.clone()).collect()
}

fn in_seconds(secs: i64) -> String {
    (k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(secs)).to_string()
}

#[tokio::test]
async fn team_becomes_an_isolated_namespace_and_goes_away_with_it() {
    let _one_controller = common::ONE_CONTROLLER.lock().await;
    let ns = TestCluster::shared().namespace("teamctl").await.expect("test namespace");
    let (controller, registry) = start_controllers(&ns).await;
    let admin = ns.client.clone();
    let team_name = format!("{}-t", ns.name);
    let team_ns = format!("team-{team_name}");

    let teams: Api<Team> = Api::all(admin.clone());
    let team: Team = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Team",
        "metadata": { "name": team_name },
        "spec": {
            "quota": { "cpu": "4", "memory": "8Gi", "pods": 10, "workspaces": 5, "ciAgentQueue": 50 },
            "limits": { "maxCpu": "2", "defaultCpuRequest": "200m" },
            "members": [
                { "user": "alice", "role": "lead" },
                { "user": "carol", "role": "engineer" },
                { "user": "bob", "role": "contractor", "expiresAt": in_seconds(3600) }
            ]
        }
    }))
    .unwrap();
    teams.create(&PostParams::default(), &team).await.expect("create team");

    let ready = wait_team_ready(&admin, &team_name).await;
    assert_eq!(ready.status.as_ref().unwrap().namespace.as_deref(), Some(team_ns.as_str()));
    // `kubectl describe team` tells why it became Ready (events of cluster-scoped objects
    // live in the default namespace).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), "default");
    let reconciled = wait_for_event(&events, &team_name, "Reconciled").await;
    assert_eq!(reconciled.type_.as_deref(), Some("Normal"));
    let mut scraped = String::new();
    prometheus_client::encoding::text::encode(&mut scraped, &registry).unwrap();
    assert!(
        scraped.contains(r#"deskpod_controller_reconcile_duration_seconds_count{controller="team"}"#),
        "reconciles are measured:\n{scraped}"
    );

    // Everything the team stands for exists, with the expected content.
    let namespace = Api::<Namespace>::all(admin.clone()).get(&team_ns).await.expect("namespace");
    assert_eq!(namespace.labels()["pod-security.kubernetes.io/enforce"], "restricted");
    let quota = Api::<ResourceQuota>::namespaced(admin.clone(), &team_ns).get("deskpod-team").await.expect("quota");
    let hard = quota.spec.unwrap().hard.unwrap();
    assert_eq!(hard["requests.cpu"].0, "4");
    assert_eq!(hard["count/ciagents.deskpod.io"].0, "50");
    let limits = Api::<LimitRange>::namespaced(admin.clone(), &team_ns).get("deskpod-team").await.expect("limit range");
    assert_eq!(limits.spec.unwrap().limits[0].default_request.as_ref().unwrap()["cpu"].0, "200m");
    Api::<NetworkPolicy>::namespaced(admin.clone(), &team_ns).get("deskpod-team").await.expect("network policy");
    let sa = Api::<ServiceAccount>::namespaced(admin.clone(), &team_ns).get("deskpod-workspace").await.expect("sa");
    assert_eq!(sa.automount_service_account_token, Some(false));
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), &team_ns);
    assert_eq!(subjects(&bindings.get("deskpod-lead").await.unwrap()), ["alice"]);
    assert_eq!(subjects(&bindings.get("deskpod-engineer").await.unwrap()), ["carol"]);
    assert_eq!(subjects(&bindings.get("deskpod-contractor").await.unwrap()), ["bob"]);

    // The quota's usage is mirrored into the Team's status. A pod without resources is admitted
    // thanks to the LimitRange defaults (and must meet the restricted Pod Security Standard).
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "probe" },
        "spec": {
            "securityContext": { "runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": { "type": "RuntimeDefault" } },
            "containers": [{ "name": "c", "image": "deskpod/test:never-pulled",
                "securityContext": { "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } } }]
        }
    }))
    .unwrap();
    Api::<Pod>::namespaced(admin.clone(), &team_ns).create(&PostParams::default(), &pod).await.expect("pod admitted");
    wait_for(&teams, &team_name, "quota usage in Team status", WAIT, |t: Option<&Team>| {
        t.and_then(|t| t.status.as_ref()).and_then(|s| s.quota_used.get("requests.cpu")).is_some_and(|q| q.0 == "200m")
    })
    .await
    .expect("the team status mirrors the quota");

    // bob's workspace runs until his access expires; then his binding and his desktop go.
    let workspaces: Api<Workspace> = Api::namespaced(admin.clone(), &team_ns);
    let ws: Workspace = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Workspace",
        "metadata": { "name": "bobs" }, "spec": { "owner": "bob", "template": "python" }
    }))
    .unwrap();
    workspaces.create(&PostParams::default(), &ws).await.expect("create bob's workspace");
    // Bob's contract ends in two seconds.
    teams
        .patch(
            &team_name,
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(
                    json!([{ "op": "replace", "path": "/spec/members/2/expiresAt", "value": in_seconds(2) }]),
                )
                .unwrap(),
            ),
        )
        .await
        .expect("shorten bob's access");
    wait_for(&workspaces, "bobs", "expired member's workspace stopped", WAIT, |w: Option<&Workspace>| {
        w.is_some_and(|w| !w.spec.running)
    })
    .await
    .expect("bob's workspace is stopped after his access expired");
    wait_for(&bindings, "deskpod-contractor", "expired contractor unbound", WAIT, |b: Option<&RoleBinding>| {
        b.is_some_and(|b| subjects(b).is_empty())
    })
    .await
    .expect("bob's binding is removed");

    // Removing a member removes their binding.
    teams
        .patch(
            &team_name,
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(json!([{ "op": "remove", "path": "/spec/members/1" }])).unwrap()),
        )
        .await
        .expect("remove carol");
    wait_for(&bindings, "deskpod-engineer", "removed member unbound", WAIT, |b: Option<&RoleBinding>| {
        b.is_some_and(|b| subjects(b).is_empty())
    })
    .await
    .expect("carol's binding is removed");

    // Deleting the team takes the namespace and everything in it.
    teams.delete(&team_name, &DeleteParams::background()).await.expect("delete team");
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    wait_deleted(&namespaces, &team_ns, "team namespace deleted", Duration::from_secs(120))
        .await
        .expect("the namespace goes with the team");
    controller.abort();
}
