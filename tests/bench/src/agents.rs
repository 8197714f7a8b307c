//! `deskpod-bench agents`: CI agents against a real control plane, measured from the outside. Run
//! through `tests/bench/agents`, which starts a dedicated cluster and the controller as its own
//! process under the chart's ClusterRole.
//!
//! Measured:
//! - latency from a CiAgent's creation (its create call returned) to its Pod being seen by a
//!   watch, for many agents submitted at once into teams with room (p50, p99, max);
//! - latency from capacity freeing to the next queued agent's Pod: a team that runs one agent at
//!   a time gets a chain of short jobs; each pod's appearance is timed from the moment the watch
//!   saw the previous one finish.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use deskpod_controller::agent::render::AGENT_LABEL;
use deskpod_controller::api::{CiAgent, Team};
use deskpod_testsupport::{client_from_kubeconfig, wait_for};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::{Seen, first_seen, percentile, secs, wait_until};

#[derive(clap::Args)]
pub struct AgentsArgs {
    /// Admin kubeconfig of the cluster.
    #[arg(long)]
    kubeconfig: std::path::PathBuf,
    /// Agents submitted at once.
    #[arg(long, default_value_t = 200)]
    agents: usize,
    /// Teams they are spread over.
    #[arg(long, default_value_t = 4)]
    teams: usize,
    /// Create calls in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Jobs in the one-at-a-time chain (each after the previous one finished).
    #[arg(long, default_value_t = 20)]
    chain: usize,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_seconds: u64,
}

/// The targets.
const TARGET_POD_P99_SECONDS: f64 = 1.0;
const TARGET_QUEUED_POD_SECONDS: f64 = 1.0;

/// The chain's team admits one agent at a time.
const CHAIN_TEAM: &str = "bench-chain";

/// What the pod watch saw, per agent (`namespace/name`).
#[derive(Default)]
struct PodTimes {
    created: Seen,
    finished: Seen,
}

pub async fn agents(args: AgentsArgs) -> anyhow::Result<()> {
    let client = client_from_kubeconfig(&args.kubeconfig).await?;
    let per_team = args.agents.div_ceil(args.teams);
    println!(
        "Deskpod CI agent benchmark: {} agents in {} teams, then a chain of {}",
        args.agents, args.teams, args.chain
    );
    let mut teams: Vec<String> = (0..args.teams).map(|t| format!("bench-agents-{t:02}")).collect();
    // Room for every agent at once, and then some: the burst measures submission with room in
    // the team, not the queue. (Near a quota's limit the controller admits one pod at a time, as
    // only the API server can tell whether the next one fits; the chain below measures the queue.)
    let room = 2 * per_team as i32;
    for name in &teams {
        create_team(&client, name, json!({ "pods": room, "ciAgents": room, "cpu": "1000", "memory": "4000Gi" }))
            .await?;
    }
    create_team(&client, CHAIN_TEAM, json!({ "ciAgents": 1 })).await?;
    teams.push(CHAIN_TEAM.into());
    for name in &teams {
        wait_team_ready(&client, name).await?;
    }
    println!("{} teams Ready", teams.len());
    let times = Arc::new(PodTimes::default());
    let watch = spawn_pod_watch(&client, times.clone());
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);

    // 1. A burst of agents into teams with room.
    let submitted: Seen = Arc::default();
    let started = Instant::now();
    futures::stream::iter(0..args.agents)
        .map(|i| {
            let (client, submitted) = (client.clone(), submitted.clone());
            let ns = format!("team-{}", teams[i % args.teams]);
            async move {
                let name = format!("burst-{i:04}");
                create_agent(&client, &ns, &name, "1s").await?;
                first_seen(&submitted, format!("{ns}/{name}"));
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<()>()
        .await?;
    println!(
        "submitted {} agents in {:.1} s ({} create calls at a time)",
        args.agents,
        secs(started.elapsed()),
        args.concurrency
    );
    let burst = wait_until(deadline, "every burst agent's pod", || {
        let created = times.created.lock().unwrap();
        submitted.lock().unwrap().keys().all(|k| created.contains_key(k))
    })
    .await;

    // 2. A chain through a team that runs one agent at a time: each agent's pod can only be
    // created once the one before it finished.
    let chain_ns = format!("team-{CHAIN_TEAM}");
    let chain: Vec<String> = (0..=args.chain).map(|i| format!("{chain_ns}/chain-{i:03}")).collect();
    for key in &chain {
        let name = key.rsplit('/').next().unwrap_or_default();
        create_agent(&client, &chain_ns, name, "1s").await?;
    }
    let chained = wait_until(deadline, "every chained agent's pod", || {
        let created = times.created.lock().unwrap();
        chain.iter().all(|k| created.contains_key(k))
    })
    .await;
    watch.abort();

    let created = times.created.lock().unwrap().clone();
    let finished = times.finished.lock().unwrap().clone();
    let mut to_pod: Vec<f64> = submitted
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(k, at)| created.get(k).map(|c| secs(c.saturating_duration_since(*at))))
        .collect();
    to_pod.sort_by(f64::total_cmp);
    let mut after_free: Vec<f64> = chain
        .windows(2)
        .filter_map(|w| Some(secs(created.get(&w[1])?.saturating_duration_since(*finished.get(&w[0])?))))
        .collect();
    after_free.sort_by(f64::total_cmp);

    println!();
    println!("{:<46} {:>8} {:>8} {:>8} {:>6}", "", "p50", "p99", "max", "n");
    for (what, values) in [
        ("CiAgent created -> Pod created (burst)", &to_pod),
        ("capacity freed -> queued agent's Pod created", &after_free),
    ] {
        println!(
            "{what:<46} {:>7.3}s {:>7.3}s {:>7.3}s {:>6}",
            percentile(values, 0.50),
            percentile(values, 0.99),
            values.last().copied().unwrap_or(f64::NAN),
            values.len()
        );
    }
    println!();
    let mut missed = Vec::new();
    for result in [burst, chained] {
        if let Err(e) = result {
            println!("MISS {e}");
            missed.push(e.to_string());
        }
    }
    let mut target = |ok: bool, line: String| {
        println!("{} {line}", if ok { "PASS" } else { "MISS" });
        if !ok {
            missed.push(line);
        }
    };
    let p99 = percentile(&to_pod, 0.99);
    target(
        p99 <= TARGET_POD_P99_SECONDS,
        format!(
            "p99 CiAgent created -> Pod created: {p99:.3} s at {} agents (target <= {TARGET_POD_P99_SECONDS} s)",
            to_pod.len()
        ),
    );
    let worst = after_free.last().copied().unwrap_or(f64::NAN);
    target(
        worst <= TARGET_QUEUED_POD_SECONDS,
        format!(
            "slowest queued agent's Pod after capacity freed: {worst:.3} s over {} hand-overs (target <= {TARGET_QUEUED_POD_SECONDS} s)",
            after_free.len()
        ),
    );

    let api: Api<Team> = Api::all(client.clone());
    for name in &teams {
        api.delete(name, &DeleteParams::background()).await?;
    }
    if !missed.is_empty() {
        bail!("{} target(s) missed", missed.len());
    }
    Ok(())
}

async fn create_team(client: &Client, name: &str, quota: serde_json::Value) -> anyhow::Result<()> {
    let team: Team = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Team", "metadata": { "name": name }, "spec": { "quota": quota }
    }))?;
    Api::<Team>::all(client.clone()).create(&PostParams::default(), &team).await?;
    Ok(())
}

async fn wait_team_ready(client: &Client, name: &str) -> anyhow::Result<()> {
    let ready = |t: Option<&Team>| {
        t.and_then(|t| t.status.as_ref())
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    wait_for(&Api::<Team>::all(client.clone()), name, "Team Ready", Duration::from_secs(180), ready).await?;
    Ok(())
}

/// An agent whose pod kwok finishes successfully after `run_for`.
async fn create_agent(client: &Client, ns: &str, name: &str, run_for: &str) -> anyhow::Result<()> {
    let agent: CiAgent = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "CiAgent",
        "metadata": { "name": name, "namespace": ns,
                      "annotations": { "kwok.deskpod.io/exit-code": "0", "kwok.deskpod.io/run-for": run_for } },
        "spec": { "image": "deskpod/ci-agent:latest", "command": ["make", "test"], "ttlAfterFinished": "10m" }
    }))?;
    Api::<CiAgent>::namespaced(client.clone(), ns).create(&PostParams::default(), &agent).await?;
    Ok(())
}

/// Notes when each agent's pod first appears and when it is first seen finished.
fn spawn_pod_watch(client: &Client, times: Arc<PodTimes>) -> tokio::task::JoinHandle<()> {
    let pods = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default().labels(AGENT_LABEL))
        .applied_objects()
        .for_each(move |pod| {
            if let Ok(pod) = pod
                && let Some(agent) = pod.labels().get(AGENT_LABEL)
            {
                let key = format!("{}/{agent}", pod.namespace().unwrap_or_default());
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                if matches!(phase, Some("Succeeded" | "Failed")) {
                    first_seen(&times.finished, key.clone());
                }
                first_seen(&times.created, key);
            }
            async {}
        });
    tokio::spawn(pods)
}
