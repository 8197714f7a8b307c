//! Start-up in Kubernetes mode on a real node against single-host mode, in one run: from the
//! create request to the VNC banner through the portal, for the same desktop image with the same
//! limits (1 CPU, 1 GiB, 256 MiB of /dev/shm).
//!
//! `tests/bench/real-node [--runs N]` (default 10) starts a dedicated test cluster with a real
//! node (`testcluster up --real-node --import-image deskpod/desktop-python:latest`) and runs this
//! with `DESKPOD_TEST_CLUSTER` pointing at it.
//!
//! - **Kubernetes**: a portal on the Kubernetes backend, with the real Team and Workspace
//!   controllers in this process; the template places the pod on the real node (node selector,
//!   toleration) with its home on the node's `real-node` StorageClass. A run is: the Workspace
//!   and its home claim created, volume provisioned and bound, pod scheduled, sandbox and
//!   container started by containerd, readiness probe passed, Workspace Running, the portal's
//!   proxy connected to the pod's IP. After each run the workspace is deleted and its pod, claim
//!   and volume are waited out, outside the timing.
//! - **Single-host**: the same path on the Docker backend (see `single_host.rs`).
//!
//! Runs alternate (single-host, Kubernetes, ...) after one warm-up run of each, not counted. The
//! image must be built (`cargo run -p deskpod-images -- build --only python`). Target (issue #8):
//! Kubernetes p50 ≤ 2 × single-host p50. Exits 1 when missed.

mod startup;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deskpod_controller::api::{Team, Workspace, WorkspacePhase, WorkspaceTemplate};
use deskpod_controller::metrics::Metrics;
use deskpod_controller::workspace::render::{home_pvc_name, pod_name};
use deskpod_portal::backend::Backend;
use deskpod_portal::backend::kubernetes::{KubernetesBackend, KubernetesOptions, team_namespace};
use deskpod_testsupport::{TestCluster, wait_deleted, wait_for};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use startup::{IMAGE, Served, SingleHost, USER, ms, p50_p99};

const REAL_NODE: &str = "deskpod-real-node";
const GONE_WITHIN: Duration = Duration::from_secs(90);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs = startup::runs_from_args("real_node", 10)?;
    if std::env::var_os(deskpod_testsupport::CLUSTER_ENV).is_none() {
        anyhow::bail!("run this through tests/bench/real-node, which starts a cluster with a real node");
    }
    let docker = deskpod_images::connect_docker().await?;
    docker.inspect_image(IMAGE).await.map_err(|_| {
        anyhow::anyhow!("{IMAGE} is not built; run `cargo run -p deskpod-images -- build --only python`")
    })?;
    let client = TestCluster::shared().client().await?;
    Api::<Node>::all(client.clone())
        .get_opt(REAL_NODE)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the cluster has no node {REAL_NODE}; start it with --real-node"))?;

    let kubernetes = Kubernetes::start(client).await?;
    let single_host = SingleHost::start().await?;

    let mut on_kubernetes = Vec::new();
    let mut on_single_host = Vec::new();
    for run in 0..=runs {
        let name = format!("run{run}");
        let single = single_host.served.request_to_banner(&single_host.team, "python", &name).await;
        single_host.backend.delete_workspace(&single_host.team, &name).await?;
        let single = single?;
        let stages = kubernetes.follow(&name);
        let kube = kubernetes.served.request_to_banner(&kubernetes.team, &kubernetes.template, &name).await;
        eprintln!("  Kubernetes stages: {}", stages.report());
        kubernetes.delete(&name).await?;
        let kube = kube?;
        let label = if run == 0 { "warm-up".to_string() } else { format!("run {run:>2}") };
        eprintln!("{label}: single-host {:>6.0} ms; Kubernetes (real node) {:>6.0} ms", ms(single), ms(kube));
        if run > 0 {
            on_single_host.push(single);
            on_kubernetes.push(kube);
        }
    }
    single_host.stop().await;
    kubernetes.stop().await;

    let (single_p50, single_p99) = p50_p99(&on_single_host);
    let (kube_p50, kube_p99) = p50_p99(&on_kubernetes);
    let ratio = kube_p50.as_secs_f64() / single_p50.as_secs_f64();
    println!("workspace created → VNC banner through the portal, {runs} runs each, image {IMAGE} present:");
    println!("  single-host (Docker):       p50 {:>6.0} ms  p99 {:>6.0} ms", ms(single_p50), ms(single_p99));
    println!(
        "  Kubernetes on a real node:  p50 {:>6.0} ms  p99 {:>6.0} ms  ({ratio:.2}× single-host p50)",
        ms(kube_p50),
        ms(kube_p99)
    );
    if ratio <= 2.0 {
        println!("  target met: Kubernetes p50 ≤ 2× single-host p50");
        Ok(())
    } else {
        eprintln!("target missed: Kubernetes p50 is {ratio:.2}× single-host p50 (target ≤ 2×)");
        std::process::exit(1);
    }
}

/// The real controllers and a portal on the Kubernetes backend, with a Team of [`USER`] and a
/// template that places desktops on the real node.
struct Kubernetes {
    served: Served,
    client: Client,
    team: String,
    template: String,
    controllers: tokio::task::JoinHandle<()>,
}

impl Kubernetes {
    async fn start(client: Client) -> anyhow::Result<Self> {
        let metrics = Metrics::register(&mut prometheus_client::registry::Registry::default());
        let settings = deskpod_controller::run::Settings::new("desk.bench");
        let controllers = tokio::spawn(deskpod_controller::run::controllers(client.clone(), settings, metrics));
        let team = format!("bench{}", std::process::id());
        let template = format!("{team}-python");
        let team_object: Team = serde_json::from_value(json!({
            "apiVersion": "deskpod.io/v1alpha1", "kind": "Team", "metadata": { "name": team },
            "spec": { "members": [{ "user": USER, "role": "engineer" }], "quota": { "memory": "8Gi" } }
        }))?;
        Api::<Team>::all(client.clone()).create(&PostParams::default(), &team_object).await?;
        let template_object: WorkspaceTemplate = serde_json::from_value(json!({
            "apiVersion": "deskpod.io/v1alpha1", "kind": "WorkspaceTemplate", "metadata": { "name": template },
            "spec": {
                "displayName": "Python", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                "homeSize": "1Gi", "shmSize": "256Mi", "homeStorageClassName": "real-node",
                "resources": { "cpuLimit": "1", "memoryLimit": "1Gi" },
                "nodeSelector": { "deskpod.io/node": "real" },
                "tolerations": [{ "key": "deskpod.io/real-node", "operator": "Exists", "effect": "NoSchedule" }]
            }
        }))?;
        Api::<WorkspaceTemplate>::all(client.clone()).create(&PostParams::default(), &template_object).await?;
        wait_for(&Api::<Team>::all(client.clone()), &team, "Team Ready", GONE_WITHIN, |t: Option<&Team>| {
            t.and_then(|t| t.status.as_ref())
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .await?;
        let backend = Arc::new(KubernetesBackend::start(client.clone(), KubernetesOptions::default()).await?);
        let served = Served::start(backend).await?;
        Ok(Self { served, client, team, template, controllers })
    }

    /// Starts noting when each stage of workspace `name`'s start is first seen (watches on its
    /// claim, pod and Workspace), from now.
    fn follow(&self, name: &str) -> Stages {
        let started = Instant::now();
        let seen = Arc::new(Mutex::new(Vec::<(&'static str, Duration)>::new()));
        let namespace = team_namespace(&self.team);
        let note = {
            let seen = seen.clone();
            move |stage: &'static str| {
                let mut seen = seen.lock().unwrap();
                if !seen.iter().any(|(s, _)| *s == stage) {
                    seen.push((stage, started.elapsed()));
                }
            }
        };
        let by_name = |n: String| watcher::Config::default().fields(&format!("metadata.name={n}"));
        let claims = watcher(
            Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), &namespace),
            by_name(home_pvc_name(name)),
        )
        .applied_objects()
        .map(|c| {
            c.map(|c| c.status.and_then(|s| s.phase).as_deref() == Some("Bound"))
                .map(|bound| bound.then_some("claim bound"))
        })
        .boxed();
        let pods = watcher(Api::<Pod>::namespaced(self.client.clone(), &namespace), by_name(pod_name(name)))
            .applied_objects()
            .map(|p| {
                p.map(|p| {
                    let status = p.status.unwrap_or_default();
                    let ready =
                        status.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True");
                    let running = status
                        .container_statuses
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
                    let scheduled = p.spec.and_then(|s| s.node_name).is_some();
                    Some(if ready {
                        "pod ready"
                    } else if running {
                        "container running"
                    } else if scheduled {
                        "pod scheduled"
                    } else {
                        "pod created"
                    })
                })
            })
            .boxed();
        let workspaces =
            watcher(Api::<Workspace>::namespaced(self.client.clone(), &namespace), by_name(name.to_string()))
                .applied_objects()
                .map(|w| {
                    w.map(|w| {
                        (w.status.map(|s| s.phase) == Some(WorkspacePhase::Running)).then_some("Workspace Running")
                    })
                })
                .boxed();
        let task = tokio::spawn(futures::stream::select_all([claims, pods, workspaces]).for_each(move |stage| {
            if let Ok(Some(stage)) = stage {
                note(stage);
            }
            futures::future::ready(())
        }));
        Stages { seen, task }
    }

    /// Deletes the workspace and waits until its pod, home claim and Workspace are gone.
    async fn delete(&self, name: &str) -> anyhow::Result<()> {
        self.served.backend.delete_workspace(&self.team, name).await?;
        let namespace = team_namespace(&self.team);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &namespace);
        wait_deleted(&pods, &pod_name(name), "the desktop pod", GONE_WITHIN).await?;
        wait_deleted(&claims, &home_pvc_name(name), "the home claim", GONE_WITHIN).await?;
        Ok(())
    }

    async fn stop(self) {
        self.served.stop(&self.team).await;
        let _ = Api::<Team>::all(self.client.clone()).delete(&self.team, &DeleteParams::background()).await;
        let _ =
            Api::<WorkspaceTemplate>::all(self.client.clone()).delete(&self.template, &DeleteParams::default()).await;
        self.controllers.abort();
    }
}

/// When each stage of one start was first seen.
struct Stages {
    seen: Arc<Mutex<Vec<(&'static str, Duration)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stages {
    /// The stages in the order seen, such as `pod created 0.21 s, claim bound 0.43 s, ...`.
    fn report(self) -> String {
        self.task.abort();
        let mut seen = self.seen.lock().unwrap().clone();
        seen.sort_by_key(|(_, at)| *at);
        seen.iter().map(|(stage, at)| format!("{stage} {:.2} s", at.as_secs_f64())).collect::<Vec<_>>().join(", ")
    }
}
