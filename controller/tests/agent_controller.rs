//! The CiAgent controller against the real test cluster, running with only the chart's
//! ClusterRole: agents queue first come first served while their team is full and never fail for
//! it, jobs report their outcome, time out, are cancelled and expire, and a controller killed
//! mid-queue converges without running any job twice.
//!
//! kwok runs the pods: `kwok.deskpod.io/exit-code` and `kwok.deskpod.io/run-for` on a CiAgent are
//! copied to its pod, where kwok's stages read them.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{WAIT, spawn_agent_controllers, start_agent_controllers, team_with_template};
use deskpod_controller::agent::render::{AGENT_LABEL, pod_name};
use deskpod_controller::api::{CiAgent, CiAgentPhase};
use deskpod_testsupport::{TestCluster, wait_deleted, wait_for};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// A CiAgent running a placeholder image that kwok finishes with `exit_code` after `run_for`.
fn agent(name: &str, exit_code: i32, run_for: &str, extra: Value) -> CiAgent {
    let mut spec = json!({ "image": "deskpod/ci-agent:latest", "command": ["make", "test"] });
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "CiAgent",
        "metadata": { "name": name, "annotations": {
            "kwok.deskpod.io/exit-code": exit_code.to_string(), "kwok.deskpod.io/run-for": run_for
        } },
        "spec": spec
    }))
    .unwrap()
}

fn phase_is(phase: CiAgentPhase) -> impl Fn(Option<&CiAgent>) -> bool {
    move |a| a.and_then(|a| a.status.as_ref()).is_some_and(|s| s.phase == phase)
}

/// What a watch on a namespace's agent pods saw.
#[derive(Default)]
struct PodLog {
    /// Agent pods not yet Succeeded or Failed, by uid.
    running: HashSet<String>,
    /// The most such pods at any moment.
    most_running: usize,
    /// When each agent's pod first appeared.
    appeared: HashMap<String, std::time::Instant>,
    /// Every pod uid each agent had.
    uids: BTreeMap<String, HashSet<String>>,
}

/// Watches the agent pods of `ns` until aborted.
fn watch_pods(admin: &Client, ns: &str) -> (Arc<Mutex<PodLog>>, tokio::task::JoinHandle<()>) {
    let log = Arc::new(Mutex::new(PodLog::default()));
    let api: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let task = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default().labels(AGENT_LABEL)).boxed();
            while let Some(Ok(event)) = events.next().await {
                let mut log = log.lock().unwrap();
                match event {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                        let uid = p.uid().unwrap_or_default();
                        let agent = p.labels()[AGENT_LABEL].clone();
                        log.uids.entry(agent.clone()).or_default().insert(uid.clone());
                        log.appeared.entry(agent).or_insert_with(std::time::Instant::now);
                        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                        if matches!(phase, Some("Succeeded" | "Failed")) {
                            log.running.remove(&uid);
                        } else {
                            log.running.insert(uid);
                        }
                    }
                    watcher::Event::Delete(p) => {
                        log.running.remove(&p.uid().unwrap_or_default());
                    }
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
                log.most_running = log.most_running.max(log.running.len());
            }
        })
    };
    (log, task)
}

/// Every queue position each agent's status showed, in order, and every phase it showed.
#[derive(Default)]
struct AgentLog {
    positions: HashMap<String, Vec<i32>>,
    phases: HashMap<String, HashSet<String>>,
}

fn watch_agents(api: Api<CiAgent>) -> (Arc<Mutex<AgentLog>>, tokio::task::JoinHandle<()>) {
    let log = Arc::new(Mutex::new(AgentLog::default()));
    let task = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(Ok(event)) = events.next().await {
                let (watcher::Event::Apply(a) | watcher::Event::InitApply(a)) = event else { continue };
                let Some(status) = &a.status else { continue };
                let mut log = log.lock().unwrap();
                log.phases.entry(a.name_any()).or_default().insert(format!("{:?}", status.phase));
                if let Some(position) = status.queue_position {
                    let seen = log.positions.entry(a.name_any()).or_default();
                    if seen.last() != Some(&position) {
                        seen.push(position);
                    }
                }
            }
        })
    };
    (log, task)
}

/// First come, first served: no agent's pod appeared while an earlier agent was left waiting.
/// Pods admitted in one round may be created at once (when everyone waiting fits), so they can
/// appear a few milliseconds apart in any order; an agent passed over would instead wait for a
/// running job to end, seconds later.
fn assert_fifo(pods: &PodLog, names: &[String]) {
    let slack = Duration::from_millis(500);
    for (i, earlier) in names.iter().enumerate() {
        for later in &names[i + 1..] {
            let (e, l) = (pods.appeared[earlier], pods.appeared[later]);
            assert!(e <= l + slack, "{later}'s pod appeared {:?} before {earlier}'s", e.duration_since(l));
        }
    }
}

async fn wait_all(agents: &Api<CiAgent>, names: &[String], phase: CiAgentPhase, timeout: Duration) {
    for name in names {
        wait_for(agents, name, &format!("{phase:?}"), timeout, phase_is(phase))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[tokio::test]
async fn thirty_agents_run_five_at_a_time_first_come_first_served() {
    let _one_controller = common::ONE_CONTROLLER.lock().await;
    let ns = TestCluster::shared().namespace("agentq").await.expect("test namespace");
    let (controllers, _) = start_agent_controllers(&ns).await;
    let admin = ns.client.clone();
    let fixture = team_with_template(&ns, json!({ "quota": { "ciAgents": 5 } }), json!({})).await;
    let team_ns = fixture.namespace.clone();
    let agents: Api<CiAgent> = Api::namespaced(admin.clone(), &team_ns);
    let (pods, pod_watch) = watch_pods(&admin, &team_ns);
    let (seen, agent_watch) = watch_agents(agents.clone());

    // Submitted one after another, much faster than they run: most of them wait.
    let names: Vec<String> = (0..30).map(|i| format!("job-{i:02}")).collect();
    for name in &names {
        agents.create(&PostParams::default(), &agent(name, 0, "2s", json!({}))).await.expect("create agent");
    }
    wait_all(&agents, &names, CiAgentPhase::Succeeded, Duration::from_secs(120)).await;
    pod_watch.abort();
    agent_watch.abort();

    let pods = std::mem::take(&mut *pods.lock().unwrap());
    assert_eq!(pods.most_running, 5, "at most the team's 5 agents ran at once, and the queue did fill them");
    assert_fifo(&pods, &names);
    assert!(pods.uids.values().all(|uids| uids.len() == 1), "one pod per agent: {:?}", pods.uids);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut queued = 0;
    for (i, name) in names.iter().enumerate() {
        let phases = &seen.phases[name];
        assert!(!phases.contains("Failed"), "{name} never failed: {phases:?}");
        if !phases.contains("Queued") {
            continue;
        }
        // While it waited its place was shown, and it only ever moved forward.
        queued += 1;
        let positions = seen.positions.get(name).unwrap_or_else(|| panic!("{name} showed no queue position"));
        assert!(positions.windows(2).all(|w| w[1] < w[0]), "{name} moved forward only: {positions:?}");
        assert!(positions[0] >= 1 && positions[0] <= i as i32 - 4, "{name}: at most {} ahead: {positions:?}", i - 5);
    }
    assert!(queued >= 20, "most agents waited in the queue ({queued})");
    assert!(seen.positions["job-29"][0] > 10, "the last agent waited far back: {:?}", seen.positions["job-29"]);
    let last = agents.get("job-29").await.unwrap().status.unwrap();
    assert_eq!((last.exit_code, last.queue_position), (Some(0), None));
    assert!(last.started_at.is_some() && last.finished_at.is_some(), "{last:?}");

    fixture.delete(&admin).await;
    controllers.abort();
}

#[tokio::test]
async fn a_full_resource_quota_queues_agents_and_never_fails_them() {
    let _one_controller = common::ONE_CONTROLLER.lock().await;
    let ns = TestCluster::shared().namespace("agentrq").await.expect("test namespace");
    let (controllers, _) = start_agent_controllers(&ns).await;
    let admin = ns.client.clone();
    // No agent limit: the ResourceQuota's two pods are what admits them.
    let fixture = team_with_template(&ns, json!({ "quota": { "pods": 2 } }), json!({})).await;
    let team_ns = fixture.namespace.clone();
    let agents: Api<CiAgent> = Api::namespaced(admin.clone(), &team_ns);
    let (pods, pod_watch) = watch_pods(&admin, &team_ns);
    let (seen, agent_watch) = watch_agents(agents.clone());

    let names: Vec<String> = (0..6).map(|i| format!("rq-{i}")).collect();
    for name in &names {
        agents.create(&PostParams::default(), &agent(name, 0, "1s", json!({}))).await.expect("create agent");
    }
    let waiting = wait_for(&agents, "rq-5", "rq-5 queued by the quota", WAIT, |a: Option<&CiAgent>| {
        a.and_then(|a| a.status.as_ref()).is_some_and(|s| {
            s.phase == CiAgentPhase::Queued && s.conditions.iter().any(|c| c.reason == "QuotaExceeded")
        })
    })
    .await
    .expect("the quota's refusal is shown");
    let message = waiting.status.unwrap().message.unwrap_or_default();
    assert!(message.contains("exceeded quota"), "the API server's reason is shown: {message}");
    wait_all(&agents, &names, CiAgentPhase::Succeeded, Duration::from_secs(120)).await;
    pod_watch.abort();
    agent_watch.abort();

    let pods = std::mem::take(&mut *pods.lock().unwrap());
    assert_eq!(pods.most_running, 2);
    assert_fifo(&pods, &names);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(names.iter().all(|n| !seen.phases[n].contains("Failed")), "{:?}", seen.phases);

    fixture.delete(&admin).await;
    controllers.abort();
}

#[tokio::test]
async fn jobs_fail_with_their_exit_code_time_out_are_cancelled_and_expire() {
    let _one_controller = common::ONE_CONTROLLER.lock().await;
    let ns = TestCluster::shared().namespace("agentlife").await.expect("test namespace");
    let (controllers, _) = start_agent_controllers(&ns).await;
    let admin = ns.client.clone();
    let fixture = team_with_template(&ns, json!({}), json!({})).await;
    let team_ns = fixture.namespace.clone();
    let agents: Api<CiAgent> = Api::namespaced(admin.clone(), &team_ns);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &team_ns);
    let pp = PostParams::default();

    agents.create(&pp, &agent("exit3", 3, "0s", json!({}))).await.expect("create");
    agents.create(&pp, &agent("slow", 0, "10m", json!({ "deadline": "3s" }))).await.expect("create");
    agents.create(&pp, &agent("cancel", 0, "10m", json!({}))).await.expect("create");

    // A non-zero exit is Failed with its code; the pod stays for its logs.
    let failed = wait_for(&agents, "exit3", "Failed", WAIT, phase_is(CiAgentPhase::Failed)).await.expect("fails");
    let status = failed.status.unwrap();
    assert_eq!(status.exit_code, Some(3));
    assert!(status.finished_at.is_some());
    assert!(pods.get_opt(&pod_name("exit3")).await.unwrap().is_some(), "kept until the TTL");

    // Past its deadline: TimedOut, the pod removed, and a Warning says why.
    let running = wait_for(&agents, "slow", "Running", WAIT, phase_is(CiAgentPhase::Running)).await.expect("runs");
    let started = running.status.unwrap().started_at.expect("start time");
    let timed_out =
        wait_for(&agents, "slow", "TimedOut", WAIT, phase_is(CiAgentPhase::TimedOut)).await.expect("times out");
    let status = timed_out.status.unwrap();
    assert_eq!(status.exit_code, None);
    assert!(status.message.unwrap_or_default().contains("deadline of 3s"));
    let ran = status.finished_at.unwrap().0.duration_since(started.0);
    assert!(ran.as_secs() >= 2 && ran.as_secs() <= 6, "stopped at its deadline, after {ran:?}");
    wait_deleted(&pods, &pod_name("slow"), "the overdue pod removed", WAIT).await.expect("pod removed");
    let events = Api::<Event>::namespaced(admin.clone(), &team_ns)
        .list(&ListParams::default().fields("involvedObject.name=slow"))
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("DeadlineExceeded")),
        "{:?}",
        events.items.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );

    // Cancelling is deleting the agent: its pod goes with it.
    wait_for(&agents, "cancel", "Running", WAIT, phase_is(CiAgentPhase::Running)).await.expect("runs");
    agents.delete("cancel", &DeleteParams::background()).await.expect("cancel");
    wait_deleted(&pods, &pod_name("cancel"), "the cancelled agent's pod removed", WAIT).await.expect("pod removed");

    // The TTL removes a finished agent and its pod.
    agents.create(&pp, &agent("brief", 0, "1s", json!({ "ttlAfterFinished": "3s" }))).await.expect("create");
    wait_for(&agents, "brief", "Succeeded", WAIT, phase_is(CiAgentPhase::Succeeded)).await.expect("succeeds");
    wait_deleted(&agents, "brief", "the agent removed after its TTL", WAIT).await.expect("agent removed");
    wait_deleted(&pods, &pod_name("brief"), "its pod removed", WAIT).await.expect("pod removed");
    assert!(agents.get_opt("exit3").await.unwrap().is_some(), "the default TTL (an hour) keeps the others");

    fixture.delete(&admin).await;
    controllers.abort();
}

#[tokio::test]
async fn killed_and_restarted_mid_queue_it_runs_every_job_once() {
    let _one_controller = common::ONE_CONTROLLER.lock().await;
    let ns = TestCluster::shared().namespace("agentcrash").await.expect("test namespace");
    let (mut controllers, client) = start_agent_controllers(&ns).await;
    let admin = ns.client.clone();
    let fixture = team_with_template(&ns, json!({ "quota": { "ciAgents": 3 } }), json!({})).await;
    let team_ns = fixture.namespace.clone();
    let agents: Api<CiAgent> = Api::namespaced(admin.clone(), &team_ns);
    let (pods, pod_watch) = watch_pods(&admin, &team_ns);

    let names: Vec<String> = (0..20).map(|i| format!("job-{i:02}")).collect();
    for name in &names {
        agents.create(&PostParams::default(), &agent(name, 0, "1s", json!({}))).await.expect("create agent");
    }
    // Killed (its task dropped mid-request, as a killed process would be) and restarted at random
    // moments while the queue drains.
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).expect("random delays");
    for byte in random {
        tokio::time::sleep(Duration::from_millis(100 + 2 * u64::from(byte))).await;
        controllers.abort();
        let _ = controllers.await;
        controllers = spawn_agent_controllers(client.clone());
    }
    wait_all(&agents, &names, CiAgentPhase::Succeeded, Duration::from_secs(120)).await;
    pod_watch.abort();

    let pods_log = std::mem::take(&mut *pods.lock().unwrap());
    let per_agent: BTreeMap<String, usize> = pods_log.uids.iter().map(|(a, uids)| (a.clone(), uids.len())).collect();
    let expected: BTreeMap<String, usize> = names.iter().map(|n| (n.clone(), 1)).collect();
    assert_eq!(per_agent, expected, "every agent had exactly one pod");
    assert!(pods_log.most_running <= 3, "never more than the team's 3 at once: {}", pods_log.most_running);
    assert_fifo(&pods_log, &names);
    // No pod belongs to no agent.
    let left = Api::<Pod>::namespaced(admin.clone(), &team_ns).list(&ListParams::default().labels(AGENT_LABEL)).await;
    let left: Vec<String> = left.unwrap().items.iter().map(|p| p.labels()[AGENT_LABEL].clone()).collect();
    assert_eq!(left, names, "one pod per agent, each with its agent");

    fixture.delete(&admin).await;
    controllers.abort();
}
