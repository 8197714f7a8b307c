//! The Workspace controller against the real test cluster, running with only the chart's
//! ClusterRole: desktops start, stop and start again on the same home volume, a quota denial is
//! shown on the Workspace and clears by itself when capacity frees, and invalid specs create
//! nothing.

mod common;

use std::time::Duration;

use common::{WAIT, start_controllers, team_with_template};
use deskpod_controller::api::{Workspace, WorkspacePhase};
use deskpod_controller::workspace::render;
use deskpod_testsupport::{TestCluster, wait_deleted, wait_for};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn condition<'a>(
    ws: &'a Workspace,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    ws.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

fn phase_is(phase: WorkspacePhase) -> impl Fn(Option<&Workspace>) -> bool {
    move |ws| ws.and_then(|w| w.status.as_ref()).is_some_and(|s| s.phase == phase)
}

fn quota_exceeded(ws: Option<&Workspace>) -> bool {
    ws.and_then(|w| condition(w, "QuotaExceeded")).is_some_and(|c| c.status == "True")
}

async fn set_running(api: &Api<Workspace>, name: &str, running: bool) {
    api.patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": { "running": running } })))
        .await
        .expect("patch running");
}

fn workspace(name: &str, template: &str, extra: serde_json::Value) -> Workspace {
    let mut spec = json!({ "owner": "alice@example.com", "template": template });
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Workspace", "metadata": { "name": name }, "spec": spec
    }))
    .unwrap()
}

#[tokio::test]
async fn workspaces_run_stop_start_on_the_same_home_and_wait_for_quota() {
    let _one_controller = common::ONE_CONTROLLER.lock().await;
    let ns = TestCluster::shared().namespace("wsctl").await.expect("test namespace");
    let (controllers, _registry) = start_controllers(&ns).await;
    let admin = ns.client.clone();
    let fixture = team_with_template(&ns, json!({ "quota": { "pods": 1, "cpu": "4", "memory": "8Gi", "workspaces": 5 }, "limits": { "maxMemory": "4Gi" } }), json!({ "cpuRequest": "500m", "cpuLimit": "1", "memoryRequest": "512Mi", "memoryLimit": "1Gi" })).await;
    let (team_ns, template_name) = (fixture.namespace.clone(), fixture.template.clone());

    let workspaces: Api<Workspace> = Api::namespaced(admin.clone(), &team_ns);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &team_ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), &team_ns);
    let pp = PostParams::default();

    // One: created, running, reachable.
    workspaces.create(&pp, &workspace("one", &template_name, json!({}))).await.expect("create one");
    let one =
        wait_for(&workspaces, "one", "one Running", WAIT, phase_is(WorkspacePhase::Running)).await.expect("one runs");
    assert_eq!(
        one.status.as_ref().unwrap().url.as_deref(),
        Some(format!("http://one.{}.desk.test/", fixture.team).as_str())
    );
    assert_eq!(condition(&one, "Ready").unwrap().status, "True");
    Api::<Secret>::namespaced(admin.clone(), &team_ns).get(&render::vnc_secret_name("one")).await.expect("secret");
    Api::<Service>::namespaced(admin.clone(), &team_ns).get(&render::service_name("one")).await.expect("service");
    Api::<Ingress>::namespaced(admin.clone(), &team_ns).get(&render::ingress_name("one")).await.expect("ingress");
    let home_uid = claims.get(&render::home_pvc_name("one")).await.expect("home").metadata.uid;

    // Two: the team's quota admits one pod; two waits, and says why.
    workspaces.create(&pp, &workspace("two", &template_name, json!({}))).await.expect("create two");
    let two = wait_for(&workspaces, "two", "two QuotaExceeded", WAIT, quota_exceeded).await.expect("quota shown");
    let message = &condition(&two, "QuotaExceeded").unwrap().message;
    assert!(message.contains("exceeded quota: deskpod-team"), "the API server's reason is shown: {message}");
    assert!(two.status.as_ref().unwrap().message.as_deref().unwrap_or_default().contains("waiting for team capacity"));
    assert!(pods.get_opt(&render::pod_name("two")).await.unwrap().is_none(), "no pod for two");

    // Stopping one frees the capacity: two starts without anyone touching it.
    set_running(&workspaces, "one", false).await;
    wait_for(&workspaces, "one", "one Stopped", WAIT, phase_is(WorkspacePhase::Stopped)).await.expect("one stops");
    assert!(pods.get_opt(&render::pod_name("one")).await.unwrap().is_none(), "one's pod is gone");
    assert_eq!(claims.get(&render::home_pvc_name("one")).await.expect("home kept").metadata.uid, home_uid);
    wait_for(&workspaces, "two", "two Running", WAIT, phase_is(WorkspacePhase::Running)).await.expect("two starts");
    let two = workspaces.get("two").await.unwrap();
    assert_eq!(condition(&two, "QuotaExceeded").unwrap().status, "False", "the denial clears");

    // Starting one again waits for two; deleting two lets one run again on the same home.
    set_running(&workspaces, "one", true).await;
    wait_for(&workspaces, "one", "one QuotaExceeded", WAIT, quota_exceeded).await.expect("one waits");
    workspaces.delete("two", &DeleteParams::background()).await.expect("delete two");
    wait_for(&workspaces, "one", "one Running again", WAIT, phase_is(WorkspacePhase::Running))
        .await
        .expect("one restarts");
    let pod = pods.get(&render::pod_name("one")).await.expect("one's new pod");
    let mounted = pod.spec.unwrap().volumes.unwrap_or_default().into_iter().find_map(|v| v.persistent_volume_claim);
    assert_eq!(mounted.map(|c| c.claim_name), Some(render::home_pvc_name("one")));
    assert_eq!(claims.get(&render::home_pvc_name("one")).await.unwrap().metadata.uid, home_uid, "same home volume");
    wait_deleted(&claims, &render::home_pvc_name("two"), "two's home reclaimed", WAIT).await.expect("Delete policy");

    // Invalid specs: a clear reason on the Workspace, and nothing created.
    let cases = [
        ("nope", workspace("nope", "no-such-template", json!({})), "TemplateNotFound"),
        ("big", workspace("big", &template_name, json!({ "resources": { "memoryLimit": "16Gi" } })), "OverTeamLimit"),
    ];
    for (name, ws, reason) in cases {
        workspaces.create(&pp, &ws).await.expect("create invalid workspace");
        let failed = wait_for(&workspaces, name, "Failed", WAIT, phase_is(WorkspacePhase::Failed)).await.expect(reason);
        let ready = condition(&failed, "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reason), "{}", ready.message);
        assert!(pods.get_opt(&render::pod_name(name)).await.unwrap().is_none(), "{name}: no pod");
        assert!(claims.get_opt(&render::home_pvc_name(name)).await.unwrap().is_none(), "{name}: no volume");
    }
    let big = workspaces.get("big").await.unwrap();
    assert!(big.status.unwrap().message.unwrap_or_default().contains("16Gi"), "the message names the value");

    fixture.delete(&admin).await;
    controllers.abort();
}

#[tokio::test]
async fn stop_then_start_twenty_times_never_mounts_the_home_twice() {
    let _one_controller = common::ONE_CONTROLLER.lock().await;
    use futures::StreamExt;
    use kube::runtime::watcher;
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};

    let ns = TestCluster::shared().namespace("wsflip").await.expect("test namespace");
    let (controllers, _registry) = start_controllers(&ns).await;
    let admin = ns.client.clone();
    let fixture = team_with_template(&ns, json!({}), json!({})).await;
    let (team_ns, template_name) = (fixture.namespace.clone(), fixture.template.clone());

    // Watch every pod of the namespace throughout: which pods exist (terminating ones too) and
    // which claim each mounts. Record the most pods ever seen mounting the home at once.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &team_ns);
    let home = render::home_pvc_name("flip");
    let seen_uids = Arc::new(Mutex::new(HashSet::new()));
    let most_at_once = Arc::new(Mutex::new(0usize));
    let watch = {
        let (pods, home, seen_uids, most_at_once) =
            (pods.clone(), home.clone(), seen_uids.clone(), most_at_once.clone());
        tokio::spawn(async move {
            let mut live: HashMap<String, bool> = HashMap::new();
            let mut events = watcher(pods, watcher::Config::default()).boxed();
            while let Some(Ok(event)) = events.next().await {
                let mounts_home = |p: &Pod| {
                    p.spec
                        .iter()
                        .flat_map(|s| s.volumes.iter().flatten())
                        .any(|v| v.persistent_volume_claim.as_ref().is_some_and(|c| c.claim_name == home))
                };
                match event {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                        let uid = p.metadata.uid.clone().unwrap_or_default();
                        seen_uids.lock().unwrap().insert(uid.clone());
                        live.insert(uid, mounts_home(&p));
                    }
                    watcher::Event::Delete(p) => {
                        live.remove(&p.metadata.uid.clone().unwrap_or_default());
                    }
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
                let now = live.values().filter(|m| **m).count();
                let mut most = most_at_once.lock().unwrap();
                *most = (*most).max(now);
            }
        })
    };

    let workspaces: Api<Workspace> = Api::namespaced(admin.clone(), &team_ns);
    workspaces.create(&PostParams::default(), &workspace("flip", &template_name, json!({}))).await.expect("create");
    wait_for(&workspaces, "flip", "Running", WAIT, phase_is(WorkspacePhase::Running)).await.expect("runs");
    let pod_name = render::pod_name("flip");
    for round in 0..20 {
        let old_uid = pods.get(&pod_name).await.expect("the running pod").metadata.uid;
        set_running(&workspaces, "flip", false).await;
        // The controller has started stopping: the pod is terminating or gone. Start at once,
        // while the old pod may still exist.
        wait_for(&pods, &pod_name, "pod stopping", WAIT, |p: Option<&Pod>| {
            p.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        set_running(&workspaces, "flip", true).await;
        wait_for(&pods, &pod_name, "a new pod Running", WAIT, |p: Option<&Pod>| {
            p.is_some_and(|p| {
                p.metadata.uid != old_uid && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    watch.abort();
    assert_eq!(*most_at_once.lock().unwrap(), 1, "two pods mounted the home volume at the same time");
    assert_eq!(seen_uids.lock().unwrap().len(), 21, "each start made a new pod (the test did restart it 20 times)");

    fixture.delete(&admin).await;
    controllers.abort();
}

#[tokio::test]
async fn killed_ten_times_while_twenty_workspaces_are_created_it_converges_without_orphans() {
    let _one_controller = common::ONE_CONTROLLER.lock().await;
    use common::{controller_client, spawn_controllers};
    use std::collections::BTreeMap;

    let ns = TestCluster::shared().namespace("wscrash").await.expect("test namespace");
    let client = controller_client(&ns).await;
    let admin = ns.client.clone();
    let (mut controllers, _) = spawn_controllers(client.clone());
    let fixture = team_with_template(&ns, json!({}), json!({})).await;
    let (team_ns, template_name) = (fixture.namespace.clone(), fixture.template.clone());

    // Twenty workspaces arrive over about a second, while the controller is killed (its task
    // dropped mid-request, as a killed process would be) and restarted ten times at random moments.
    let workspaces: Api<Workspace> = Api::namespaced(admin.clone(), &team_ns);
    let names: Vec<String> = (0..20).map(|i| format!("ws{i:02}")).collect();
    let creator = {
        let (workspaces, names, template_name) = (workspaces.clone(), names.clone(), template_name.clone());
        tokio::spawn(async move {
            for name in names {
                workspaces
                    .create(&PostParams::default(), &workspace(&name, &template_name, json!({})))
                    .await
                    .expect("create");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut random = [0u8; 10];
    getrandom::fill(&mut random).expect("random delays");
    for byte in random {
        tokio::time::sleep(Duration::from_millis(20 + u64::from(byte))).await;
        controllers.abort();
        let _ = controllers.await;
        controllers = spawn_controllers(client.clone()).0;
    }
    creator.await.expect("all workspaces created");

    for name in &names {
        wait_for(&workspaces, name, "Running after the restarts", WAIT, phase_is(WorkspacePhase::Running))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Exactly one of each object per workspace, and none belonging to no workspace.
    let label = render::WORKSPACE_LABEL;
    let params = kube::api::ListParams::default().labels(label);
    let count = |items: Vec<Option<String>>| {
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for ws in items.into_iter().flatten() {
            *per.entry(ws).or_default() += 1;
        }
        per
    };
    let expected: BTreeMap<String, usize> = names.iter().map(|n| (n.clone(), 1)).collect();
    let label_of = |m: &kube::api::ObjectMeta| m.labels.as_ref().and_then(|l| l.get(label).cloned());
    macro_rules! per_workspace {
        ($kind:ty) => {
            count(
                Api::<$kind>::namespaced(admin.clone(), &team_ns)
                    .list(&params)
                    .await
                    .expect("list")
                    .items
                    .iter()
                    .map(|o| label_of(&o.metadata))
                    .collect(),
            )
        };
    }
    assert_eq!(per_workspace!(Pod), expected, "pods");
    assert_eq!(per_workspace!(PersistentVolumeClaim), expected, "home volumes");
    assert_eq!(per_workspace!(Secret), expected, "secrets");
    assert_eq!(per_workspace!(Service), expected, "services");
    assert_eq!(per_workspace!(Ingress), expected, "ingresses");

    fixture.delete(&admin).await;
    controllers.abort();
}
