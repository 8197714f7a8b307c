//! The controller binary's /metrics, scraped as Prometheus would: the real `deskpod-controller run`
//! process, as the chart's ClusterRole allows, with its admin port on 127.0.0.1. A workspace is
//! taken to Running (kwok runs its pod) and a team allowed one CI agent gets three; the scrape
//! must then say so.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{WAIT, controller_kubeconfig, team_with_template, wait_until_allowed};
use deskpod_controller::api::{CiAgent, CiAgentPhase, Workspace, WorkspacePhase};
use deskpod_testsupport::{TestCluster, client_from_kubeconfig, wait_for};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The controller process, killed when the test ends however it ends.
struct Controller {
    child: Child,
    admin: std::net::SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Controller {
    fn start(kubeconfig: &std::path::Path, name: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let admin: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::env::temp_dir().join(format!("deskpod-controller-{name}.log"));
        let out = std::fs::File::create(&log).expect("controller log file");
        let child = Command::new(env!("CARGO_BIN_EXE_deskpod-controller"))
            .args(["run", "--admin-listen", &admin.to_string(), "--base-domain", "desk.test"])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start deskpod-controller");
        Self { child, admin, log }
    }

    /// GET `path` on the admin port: (status line, body); `None` while nothing answers.
    async fn get(&self, path: &str) -> Option<(String, String)> {
        let mut stream = tokio::net::TcpStream::connect(self.admin).await.ok()?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.ok()?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.ok()?;
        let (head, body) = raw.split_once("\r\n\r\n")?;
        Some((head.lines().next()?.to_owned(), body.to_owned()))
    }

    /// Scrapes /metrics until `ready` holds for the text, or fails after `within`.
    async fn scrape_until(&mut self, within: Duration, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = String::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the controller exited ({status}); its log is {}", self.log.display());
            }
            if let Some((status, body)) = self.get("/metrics").await {
                assert!(status.contains(" 200 "), "/metrics answered {status}");
                if ready(&body) {
                    return body;
                }
                last = body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not seen within {within:?}; last scrape:\n{last}\ncontroller log: {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The value of the sample `series` (name and labels exactly as served).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

/// The series names the text declares (`# TYPE`), as PromQL names them: counters with `_total`.
fn declared(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.strip_prefix("# TYPE ")?.split(' ');
            let (name, kind) = (parts.next()?, parts.next()?);
            Some(if kind == "counter" { format!("{name}_total") } else { name.to_owned() })
        })
        .collect()
}

fn agent(name: &str) -> CiAgent {
    serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "CiAgent",
        "metadata": { "name": name, "annotations": {
            "kwok.deskpod.io/exit-code": "0", "kwok.deskpod.io/run-for": "10m"
        } },
        "spec": { "image": "deskpod/ci-agent:latest", "command": ["make", "test"] }
    }))
    .unwrap()
}

#[tokio::test]
async fn the_admin_port_serves_workspace_phases_time_to_ready_queues_and_reconciles() {
    let _one_controller = common::ONE_CONTROLLER.lock().await;
    let ns = TestCluster::shared().namespace("metrics").await.expect("test namespace");
    let admin = ns.client.clone();
    let kubeconfig = controller_kubeconfig(&ns).await;
    wait_until_allowed(&client_from_kubeconfig(&kubeconfig).await.expect("controller client")).await;
    let mut controller = Controller::start(&kubeconfig, &ns.name);
    let started = controller.scrape_until(WAIT, "the admin port answering", |_| true).await;
    let zero = r#"deskpod_controller_reconcile_errors_total{controller="workspace",category="apply"}"#;
    assert!(sample(&started, zero).is_some(), "error counters start at 0:\n{started}");

    // The binary runs the Team controller too: the fixture waits for it to make the team Ready.
    let fixture = team_with_template(&ns, json!({ "quota": { "ciAgents": 1 } }), json!({})).await;
    let team = fixture.team.clone();
    let workspaces: Api<Workspace> = Api::namespaced(admin.clone(), &fixture.namespace);
    let workspace = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Workspace", "metadata": { "name": "watched" },
        "spec": { "owner": "alice@example.com", "template": fixture.template }
    }))
    .unwrap();
    workspaces.create(&PostParams::default(), &workspace).await.expect("create workspace");
    let agents: Api<CiAgent> = Api::namespaced(admin.clone(), &fixture.namespace);
    for name in ["first", "second", "third"] {
        agents.create(&PostParams::default(), &agent(name)).await.expect("create agent");
    }
    let phase_is =
        |phase| move |ws: Option<&Workspace>| ws.and_then(|w| w.status.as_ref()).is_some_and(|s| s.phase == phase);
    wait_for(&workspaces, "watched", "Running", WAIT, phase_is(WorkspacePhase::Running)).await.expect("runs");
    let agent_is =
        |phase| move |a: Option<&CiAgent>| a.and_then(|a| a.status.as_ref()).is_some_and(|s| s.phase == phase);
    wait_for(&agents, "first", "Running", WAIT, agent_is(CiAgentPhase::Running)).await.expect("first runs");
    for name in ["second", "third"] {
        wait_for(&agents, name, "Queued", WAIT, agent_is(CiAgentPhase::Queued)).await.expect("queued");
    }

    let queued = format!(r#"deskpod_controller_ciagents_queued{{team="{team}"}}"#);
    let running = format!(r#"deskpod_controller_ciagents_running{{team="{team}"}}"#);
    let text = controller
        .scrape_until(WAIT, "the workspace and the queue in the metrics", |text| {
            sample(text, r#"deskpod_controller_workspaces{phase="Running"}"#).is_some_and(|n| n >= 1.0)
                && sample(text, &queued) == Some(2.0)
                && sample(text, &running) == Some(1.0)
        })
        .await;

    // Every phase is served, the ones with no workspace as 0.
    for phase in ["Pending", "Creating", "Starting", "Running", "Stopping", "Stopped", "Failed"] {
        let series = format!(r#"deskpod_controller_workspaces{{phase="{phase}"}}"#);
        assert!(sample(&text, &series).is_some(), "{series} missing:\n{text}");
    }
    // The workspace's start was timed once, from its pod's creation: seconds, not hours.
    let ready_count = sample(&text, "deskpod_controller_workspace_time_to_ready_seconds_count").unwrap_or(0.0);
    let ready_sum = sample(&text, "deskpod_controller_workspace_time_to_ready_seconds_sum").unwrap_or(0.0);
    assert!(ready_count >= 1.0, "time to ready observed:\n{text}");
    assert!(ready_sum >= 0.0 && ready_sum <= ready_count * WAIT.as_secs_f64(), "plausible times to ready:\n{text}");
    for name in ["team", "workspace", "ciagent"] {
        let count = format!(r#"deskpod_controller_reconcile_duration_seconds_count{{controller="{name}"}}"#);
        assert!(sample(&text, &count).is_some_and(|n| n > 0.0), "{count}:\n{text}");
        let total = format!(r#"deskpod_controller_reconcile_total{{controller="{name}"}}"#);
        assert!(sample(&text, &total).is_some_and(|n| n > 0.0), "{total}:\n{text}");
    }
    // Every series the module lists (and the dashboard may use) is served.
    let served = declared(&text);
    for name in deskpod_controller::metrics::SERIES {
        assert!(served.contains(*name), "{name} is not served; served: {served:?}");
    }
    // No workspace, agent or user names in labels.
    for forbidden in ["watched", "first", "second", "third", "alice"] {
        assert!(!text.contains(&format!("\"{forbidden}\"")), "{forbidden} appears as a label value:\n{text}");
    }

    // A started agent leaves the queue: the gauges follow the cluster, not the reconciler's memory.
    agents.delete("first", &DeleteParams::default()).await.expect("delete first");
    controller
        .scrape_until(WAIT, "the queue after the running agent went away", |text| {
            sample(text, &queued) == Some(1.0) && sample(text, &running) == Some(1.0)
        })
        .await;

    drop(controller);
    fixture.delete(&admin).await;
}
