//! Kubernetes mode with a desktop that really runs: the real controllers put the workspace's pod
//! on the test cluster's real node (kubelet + containerd, `testcluster up --real-node`), and
//! Debian's Chromium, driven by playwright-core (`tests/browser/workspace.mjs`), signs in to a
//! portal on the Kubernetes backend, creates a workspace from a Python template through the form,
//! watches it reach Running and opens the desktop view. noVNC connects through the portal's proxy
//! to the pod's IP and must draw the XFCE desktop with its panel, which runs in the pod.
//!
//! Then the home: a file written in the pod's home directory is still there after the workspace
//! is stopped and started (a new pod on the same claim). The template's memory limit holds (a
//! process allocating past it is killed), the team's namespace refuses a privileged pod (Pod
//! Security `restricted`), and deleting the workspace removes its pod, claim and volume.
//!
//! The template places its pods with the fields a platform team would use for a node pool:
//! `nodeSelector` (`deskpod.io/node: real`), a toleration of the node's taint and
//! `homeStorageClassName: real-node` (the harness's class on that node).
//!
//! Runs when `DESKPOD_REAL_NODE=1` (`tests/run` sets it and imports deskpod/desktop-python into
//! the node); otherwise it returns at once. Needs `portal/tests/setup-desktop-tools`.

mod cluster_browser;
mod common;
mod desktop_common;
mod kube_common;

use std::time::{Duration, Instant};

use cluster_browser::ServedPortal;
use deskpod_controller::api::WorkspacePhase;
use deskpod_controller::workspace::render::{DESKTOP_CONTAINER, home_pvc_name, pod_name};
use deskpod_portal::store::GlobalRole;
use deskpod_testsupport::wait_deleted;
use desktop_common::BrowserScript;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, AttachParams};
use kube_common::{Fixture, ONE_CONTROLLER, WAIT};
use serde_json::json;
use tokio::io::AsyncReadExt;

const BROWSER_WITHIN: Duration = Duration::from_secs(240);
const WORKSPACE: &str = "dev";
const NODE: &str = "deskpod-real-node";
const NOTE: &str = "/home/user/notes.txt";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_on_the_real_node_opens_in_the_browser_keeps_its_home_and_is_held_to_its_limits() {
    if std::env::var("DESKPOD_REAL_NODE").as_deref() != Ok("1") {
        eprintln!("skipped: set DESKPOD_REAL_NODE=1 (with a cluster started by `testcluster up --real-node`)");
        return;
    }
    let _one = ONE_CONTROLLER.lock().await;
    let template = json!({
        "displayName": "Python", "image": "deskpod/desktop-python:latest", "imagePullPolicy": "IfNotPresent",
        "homeSize": "1Gi", "shmSize": "256Mi", "homeStorageClassName": "real-node",
        "resources": { "cpuRequest": "250m", "cpuLimit": "1", "memoryRequest": "512Mi", "memoryLimit": "1Gi" },
        "nodeSelector": { "deskpod.io/node": "real" },
        "tolerations": [{ "key": "deskpod.io/real-node", "operator": "Exists", "effect": "NoSchedule" }]
    });
    let f = Fixture::with_template("real-desktop", 2, false, template).await;
    let served = ServedPortal::start(&f).await;
    served.portal.add_user(&f.alice, GlobalRole::User).await;
    let namespace = format!("team-{}", f.team);
    let pods: Api<Pod> = Api::namespaced(f.client(), &namespace);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(f.client(), &namespace);

    let mut browser = BrowserScript::workspace(
        &served.origin(),
        &f.alice,
        common::PASSWORD,
        (&f.team, &f.template, WORKSPACE),
        "browser-real-node",
    );
    let screenshot = browser.screenshot.clone();
    let started = Instant::now();
    let (output, _) = browser.show_xfce_desktop(BROWSER_WITHIN).await;
    let shown_after = started.elapsed();

    // What was drawn came from the controller's pod on the real node, where XFCE's panel runs.
    let pod = pods.get(&pod_name(WORKSPACE)).await.unwrap();
    assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some(NODE));
    assert_eq!(exec(&pods, &["pgrep", "-u", "1000", "-x", "xfce4-panel"]).await.0, 0, "no xfce4-panel in the pod");
    let first_pod = pod.metadata.uid.clone().unwrap();
    let claim = claims.get(&home_pvc_name(WORKSPACE)).await.unwrap();
    assert_eq!(claim.spec.as_ref().unwrap().storage_class_name.as_deref(), Some("real-node"));
    let volume = claim.spec.as_ref().unwrap().volume_name.clone().expect("the home claim is bound");

    // A file in the home survives a stop and a start: a new pod on the same claim.
    let written = format!("written by {first_pod}");
    let (code, _) = exec(&pods, &["sh", "-c", &format!("echo '{written}' > {NOTE}")]).await;
    assert_eq!(code, 0, "writing {NOTE}");
    let backend = served.portal.state.backend.clone();
    backend.set_running(&f.team, WORKSPACE, false).await.unwrap();
    f.wait_phase(WORKSPACE, WorkspacePhase::Stopped).await;
    wait_deleted(&pods, &pod_name(WORKSPACE), "the stopped desktop's pod", WAIT).await.unwrap();
    backend.set_running(&f.team, WORKSPACE, true).await.unwrap();
    f.wait_phase(WORKSPACE, WorkspacePhase::Running).await;
    let second = pods.get(&pod_name(WORKSPACE)).await.unwrap();
    assert_ne!(second.metadata.uid.as_deref(), Some(first_pod.as_str()), "a new pod");
    assert_eq!(claims.get(&home_pvc_name(WORKSPACE)).await.unwrap().metadata.uid, claim.metadata.uid, "the same claim");
    let (code, read) = exec(&pods, &["cat", NOTE]).await;
    assert_eq!((code, read.trim()), (0, written.as_str()), "the home kept the file");
    // The portal reaches the new pod: its address is the new pod's IP.
    let endpoint = backend.desktop(&f.team, WORKSPACE).await.unwrap().expect("a running desktop has an endpoint");
    let ip = second.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
    assert_eq!(endpoint.address.ip().to_string(), ip);

    // The template's memory limit (1 GiB) holds inside the desktop: a process that allocates and
    // touches 1.5 GiB is killed by the kernel (SIGKILL, 137), and the desktop goes on.
    let (code, _) = exec(&pods, &["python3", "-c", "b = bytearray(1536 * 1024 * 1024); print(len(b))"]).await;
    assert_eq!(code, 137, "the allocation past the limit was not killed");
    assert_eq!(exec(&pods, &["pgrep", "-u", "1000", "-x", "xfce4-panel"]).await.0, 0, "the desktop survived");

    // The team's namespace enforces the restricted Pod Security Standard: a privileged pod is
    // refused by admission, whatever the controller does.
    let privileged: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "privileged" },
        "spec": { "containers": [{ "name": "main", "image": "deskpod/desktop-python:latest",
                                   "securityContext": { "privileged": true } }] }
    }))
    .unwrap();
    let refusal = pods.create(&Default::default(), &privileged).await.expect_err("a privileged pod is refused");
    match refusal {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(status.message.contains("violates PodSecurity \"restricted:latest\""), "{}", status.message);
            assert!(status.message.contains("privileged"), "{}", status.message);
        }
        other => panic!("expected a PodSecurity refusal, got {other}"),
    }

    // Deleting the workspace removes its pod, its home claim and the volume behind it.
    backend.delete_workspace(&f.team, WORKSPACE).await.unwrap();
    wait_deleted(&f.workspaces(), WORKSPACE, "the workspace", WAIT).await.unwrap();
    wait_deleted(&pods, &pod_name(WORKSPACE), "the desktop pod", WAIT).await.unwrap();
    wait_deleted(&claims, &home_pvc_name(WORKSPACE), "the home claim", WAIT).await.unwrap();
    wait_deleted(&Api::<PersistentVolume>::all(f.client()), &volume, "the home volume", WAIT).await.unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    let steps: Vec<&str> = stdout.lines().filter(|l| l.starts_with("step ")).collect();
    println!(
        "real-node browser run: desktop shown {:.1}s after the browser started; whole test {:.1}s; {}\n{}",
        shown_after.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        screenshot.display(),
        steps.join("\n")
    );
    f.delete().await;
}

/// Runs `command` in the desktop container (through the API server and the kubelet); its exit
/// code and standard output.
async fn exec(pods: &Api<Pod>, command: &[&str]) -> (i32, String) {
    let mut attached = pods
        .exec(
            &pod_name(WORKSPACE),
            command.to_vec(),
            &AttachParams::default().container(DESKTOP_CONTAINER).stderr(false),
        )
        .await
        .unwrap_or_else(|e| panic!("exec {command:?}: {e}"));
    let mut stdout = String::new();
    attached.stdout().unwrap().read_to_string(&mut stdout).await.unwrap();
    let status = attached.take_status().unwrap().await.expect("exec status");
    let code = match status.status.as_deref() {
        Some("Success") => 0,
        _ => status
            .details
            .and_then(|d| d.causes)
            .and_then(|c| c.into_iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
            .and_then(|c| c.message)
            .and_then(|m| m.parse().ok())
            .unwrap_or(-1),
    };
    (code, stdout)
}
