//! CI agents on the Kubernetes backend, against the real test cluster and the real controllers:
//! `deskpod agent run` submits a CiAgent through the portal, the controller gives it a pod, the
//! job ends with exit code 3 (kwok ends the pod when it carries `kwok.deskpod.io/exit-code`,
//! which the test sets on the pod as a kubelet would report the exit), and the command exits 3 and
//! leaves no CiAgent behind. With the real node, the job really runs and its output is streamed.

mod common;
mod kube_common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use axum::http::Method;
use common::Browser;
use deskpod_controller::api::{CiAgent, CiAgentPhase};
use deskpod_testsupport::wait_for;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube_common::{Fixture, ONE_CONTROLLER, WAIT};
use serde_json::json;

#[tokio::test]
async fn agent_run_on_the_cluster_exits_with_the_jobs_code_and_removes_the_agent() {
    let _one = ONE_CONTROLLER.lock().await;
    let f = Fixture::new("portal-agents", 2, false).await;
    let (url, token, server) = serve_with_agent_token(&f).await;

    let cli = agent_run(&url, &token, &["--team", &f.team, "--image", "deskpod/ci-agent:latest"], "exit 3");

    // The controller gives the agent its pod; the job exits 3 there.
    let agents: Api<CiAgent> = Api::namespaced(f.client(), &format!("team-{}", f.team));
    let agent = wait_for(&agents, "build", "a pod", WAIT, |a: Option<&CiAgent>| {
        a.and_then(|a| a.status.as_ref()).and_then(|s| s.pod_name.clone()).is_some()
    })
    .await
    .expect("the agent gets a pod");
    assert_eq!(agent.annotations().get("deskpod.io/owner"), Some(&f.alice), "the submitter is recorded");
    let pod = agent.status.unwrap().pod_name.unwrap();
    let pods: Api<Pod> = Api::namespaced(f.client(), &format!("team-{}", f.team));
    let exit = json!({ "metadata": { "annotations": { "kwok.deskpod.io/exit-code": "3" } } });
    pods.patch(&pod, &PatchParams::default(), &Patch::Merge(&exit)).await.unwrap();

    let output = tokio::time::timeout(Duration::from_secs(60), cli.wait_with_output())
        .await
        .expect("deskpod agent run ends")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("Failed"), "{stderr}");
    // The command deleted the agent before it exited.
    assert!(agents.get_opt("build").await.unwrap().is_none(), "the agent is removed");
    server.abort();
    f.delete().await;
}

/// On the real node (`DESKPOD_REAL_NODE=1`): the job really runs, and `deskpod agent run` prints
/// what it wrote, as it wrote it, and exits with its code. The agent takes its image and placement
/// (node selector, toleration) from a template.
#[tokio::test]
async fn agent_run_on_the_real_node_streams_the_jobs_real_output_and_exit_code() {
    if std::env::var("DESKPOD_REAL_NODE").as_deref() != Ok("1") {
        eprintln!("skipped: set DESKPOD_REAL_NODE=1 (with a cluster started by `testcluster up --real-node`)");
        return;
    }
    let _one = ONE_CONTROLLER.lock().await;
    let template = json!({
        "displayName": "CI agent", "image": "deskpod/ci-agent:latest", "imagePullPolicy": "IfNotPresent",
        "resources": { "cpuRequest": "100m", "memoryRequest": "128Mi", "memoryLimit": "256Mi" },
        "nodeSelector": { "deskpod.io/node": "real" },
        "tolerations": [{ "key": "deskpod.io/real-node", "operator": "Exists", "effect": "NoSchedule" }]
    });
    let f = Fixture::with_template("real-agents", 2, false, template).await;
    let (url, token, server) = serve_with_agent_token(&f).await;

    // Three lines two seconds apart: the first is printed while the job still runs.
    let script = "for i in 1 2 3; do echo \"step $i as $(id -u) on $(hostname)\"; sleep 2; done; exit 3";
    let mut cli = agent_run(&url, &token, &["--team", &f.team, "--template", &f.template], script);
    let mut stdout = tokio::io::BufReader::new(cli.stdout.take().unwrap());
    let mut first = String::new();
    tokio::time::timeout(Duration::from_secs(120), tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut first))
        .await
        .expect("the job's first line within 2 minutes")
        .unwrap();
    assert_eq!(first.trim(), "step 1 as 1000 on build-agent", "printed by the job in its pod");
    // The job has not finished: its pod still runs on the real node.
    let agents: Api<CiAgent> = Api::namespaced(f.client(), &format!("team-{}", f.team));
    let status = agents.get("build").await.unwrap().status.expect("the agent has a status");
    assert_eq!(status.phase, CiAgentPhase::Running, "the first line came while the job ran");
    let pod = status.pod_name.expect("the agent has a pod");
    let pods: Api<Pod> = Api::namespaced(f.client(), &format!("team-{}", f.team));
    assert_eq!(pods.get(&pod).await.unwrap().spec.unwrap().node_name.as_deref(), Some("deskpod-real-node"));

    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut rest).await.unwrap();
    let status =
        tokio::time::timeout(Duration::from_secs(60), cli.wait()).await.expect("deskpod agent run ends").unwrap();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(cli.stderr.as_mut().unwrap(), &mut stderr).await.unwrap();
    assert_eq!(rest.lines().collect::<Vec<_>>(), ["step 2 as 1000 on build-agent", "step 3 as 1000 on build-agent"]);
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(agents.get_opt("build").await.unwrap().is_none(), "the agent is removed");
    server.abort();
    f.delete().await;
}

/// Serves the fixture's portal on a real socket; its URL, an `agents:run` token of alice's and the
/// server task.
async fn serve_with_agent_token(f: &Fixture) -> (String, String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = f.portal.app().into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut alice = Browser::signed_in(&f.portal, &f.alice).await;
    let csrf = alice.session_csrf(&f.portal).await;
    let body = json!({ "name": "ci", "scopes": ["agents:run"] }).to_string();
    let created = alice.api(&f.portal, Method::POST, "/api/v1/tokens", Some(&csrf), Some(&body)).await;
    let token = created.json()["secret"].as_str().expect("the secret, shown once").to_string();
    (url, token, server)
}

/// `deskpod agent run <what> --name build -- sh -c <script>` against the portal at `url`, its
/// output piped.
fn agent_run(url: &str, token: &str, what: &[&str], script: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_deskpod"))
        .args(["agent", "run"])
        .args(what)
        .args(["--name", "build", "--", "sh", "-c", script])
        .env("DESKPOD_URL", url)
        .env("DESKPOD_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}
