//! `deskpod-bench workspaces`: many Workspaces at once against a real control plane, measured from
//! the outside. Run through `tests/bench/workspaces`, which starts a dedicated cluster with an
//! audit log and the controller as its own process under the chart's ClusterRole.
//!
//! Measured:
//! - latency from a Workspace's creation (its create call returned) to its Pod being seen by a
//!   watch, and to its status saying Running (p50, p99, max);
//! - the controller's API requests, counted by the API server's audit log (user = the
//!   controller's), per workspace, by verb and resource;
//! - the controller's peak resident memory (VmHWM) and its CPU time while nothing changes.
//!
//! `deskpod-bench agents` (see [`agents`]) measures the CI agent queue the same way.
#![forbid(unsafe_code)]

mod agents;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use deskpod_controller::api::{Team, Workspace, WorkspacePhase, WorkspaceTemplate};
use deskpod_controller::workspace::render::WORKSPACE_LABEL;
use deskpod_testsupport::{client_from_kubeconfig, wait_for};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::json;

#[derive(Parser)]
#[command(name = "deskpod-bench", about = "Deskpod's benchmarks (see tests/bench/)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates many Workspaces across several Teams and measures how the controller copes.
    Workspaces(WorkspacesArgs),
    /// Submits many CiAgents at once, then a chain through a full team, and times their pods.
    Agents(agents::AgentsArgs),
}

#[derive(clap::Args)]
struct WorkspacesArgs {
    /// Admin kubeconfig of the cluster.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// kube-apiserver's audit log (JSON lines), to count the controller's requests.
    #[arg(long)]
    audit_log: PathBuf,
    /// The controller's user name, as the audit log records it.
    #[arg(long)]
    controller_user: String,
    /// The controller's process id, for its memory and CPU.
    #[arg(long)]
    controller_pid: u32,
    #[arg(long, default_value_t = 10)]
    teams: usize,
    #[arg(long, default_value_t = 500)]
    workspaces: usize,
    /// Create calls in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long to watch the converged controller's CPU.
    #[arg(long, default_value_t = 20)]
    idle_seconds: u64,
    /// Give up waiting for everything to run after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_seconds: u64,
}

/// The targets.
const TARGET_LAST_POD_SECONDS: f64 = 10.0;
const TARGET_WRITES_PER_WORKSPACE: f64 = 8.0;
const TARGET_PEAK_RSS_MIB: f64 = 150.0;
const TARGET_IDLE_CPU_CORES: f64 = 0.01;

const TEMPLATE: &str = "bench-desktop";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Workspaces(args) => workspaces(args).await,
        Command::Agents(args) => agents::agents(args).await,
    }
}

/// When each workspace (`namespace/name`) reached a milestone.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;

fn first_seen(seen: &Seen, key: String) {
    seen.lock().expect("seen").entry(key).or_insert_with(Instant::now);
}

async fn workspaces(args: WorkspacesArgs) -> anyhow::Result<()> {
    let client = client_from_kubeconfig(&args.kubeconfig).await?;
    let per_team = args.workspaces.div_ceil(args.teams);
    println!(
        "Deskpod workspace benchmark: {} workspaces in {} teams on kwok nodes; controller pid {}",
        args.workspaces, args.teams, args.controller_pid
    );
    let team_names = set_up_teams(&client, args.teams, per_team).await?;

    // Watches started before the first create see every pod and every Running status.
    let pods_seen: Seen = Arc::default();
    let running_seen: Seen = Arc::default();
    let watches = spawn_watches(&client, pods_seen.clone(), running_seen.clone());

    let audit_start = std::fs::metadata(&args.audit_log).context("audit log")?.len();
    let created: Seen = Arc::default();
    let started = Instant::now();
    futures::stream::iter(0..args.workspaces)
        .map(|i| {
            let (client, created) = (client.clone(), created.clone());
            let team = team_names[i % args.teams].clone();
            async move {
                let ns = format!("team-{team}");
                let name = format!("ws-{i:04}");
                let ws: Workspace = serde_json::from_value(json!({
                    "apiVersion": "deskpod.io/v1alpha1", "kind": "Workspace",
                    "metadata": { "name": name, "namespace": ns },
                    "spec": { "owner": format!("user-{i}@bench.test"), "template": TEMPLATE }
                }))?;
                // Quota admission counts Workspaces with optimistic concurrency: creates at the
                // same moment in one team can be refused with a conflict. Clients retry those.
                let api = Api::<Workspace>::namespaced(client, &ns);
                let mut attempts = 0;
                loop {
                    match api.create(&PostParams::default(), &ws).await {
                        Err(kube::Error::Api(status)) if status.is_conflict() && attempts < 10 => attempts += 1,
                        result => {
                            result?;
                            break;
                        }
                    };
                }
                first_seen(&created, format!("{ns}/{name}"));
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<()>()
        .await?;
    let creating = started.elapsed();
    let last_created = *created.lock().expect("created").values().max().expect("workspaces were created");
    println!(
        "created {} workspaces in {:.1} s ({} create calls at a time)",
        args.workspaces,
        secs(creating),
        args.concurrency
    );

    let deadline = started + Duration::from_secs(args.timeout_seconds);
    let converged = async {
        wait_until(deadline, "every workspace Running", || running_seen.lock().unwrap().len() >= args.workspaces)
            .await?;
        println!("all Running {:.1} s after the first create", secs(started.elapsed()));
        wait_quota_counted(&client, &team_names, args.workspaces, deadline).await
    };
    // On a timeout the figures so far are still reported, as a miss.
    let converged = converged.await.map_err(|e| e.to_string());
    let audit_converged = std::fs::metadata(&args.audit_log)?.len();

    // Converged: nothing changes now. CPU and API requests over the idle window.
    let cpu_before = cpu_seconds(args.controller_pid)?;
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let idle_cpu = (cpu_seconds(args.controller_pid)? - cpu_before) / args.idle_seconds as f64;
    let audit_idle_end = std::fs::metadata(&args.audit_log)?.len();
    watches.abort();

    let created = created.lock().unwrap().clone();
    let pods = pods_seen.lock().unwrap().clone();
    let running = running_seen.lock().unwrap().clone();
    let to_pod = latencies(&created, &pods);
    let to_running = latencies(&created, &running);
    let last_pod = pods.values().max().map(|t| t.saturating_duration_since(last_created)).unwrap_or_default();

    let happy = count_requests(&args.audit_log, audit_start, audit_converged, &args.controller_user)?;
    let idle = count_requests(&args.audit_log, audit_converged, audit_idle_end, &args.controller_user)?;
    let rss = peak_rss_mib(args.controller_pid)?;

    let n = args.workspaces as f64;
    let writes = happy.writes() as f64;
    println!();
    println!("{:<34} {:>8} {:>8} {:>8}", "", "p50", "p99", "max");
    for (what, mut values) in
        [("Workspace created -> Pod created", to_pod), ("Workspace created -> Running", to_running)]
    {
        values.sort_by(f64::total_cmp);
        println!(
            "{what:<34} {:>7.2}s {:>7.2}s {:>7.2}s",
            percentile(&values, 0.50),
            percentile(&values, 0.99),
            values.last().copied().unwrap_or_default()
        );
    }
    println!();
    let mut missed = Vec::new();
    if let Err(e) = &converged {
        println!("MISS {e}: {} of {} workspaces Running", running.len(), args.workspaces);
        missed.push(e.clone());
    }
    let mut target = |ok: bool, line: String| {
        println!("{} {line}", if ok { "PASS" } else { "MISS" });
        if !ok {
            missed.push(line);
        }
    };
    target(
        secs(last_pod) <= TARGET_LAST_POD_SECONDS,
        format!(
            "last Pod created {:.2} s after the last Workspace (target <= {TARGET_LAST_POD_SECONDS} s)",
            secs(last_pod)
        ),
    );
    target(
        writes / n <= TARGET_WRITES_PER_WORKSPACE,
        format!(
            "controller API writes: {} = {:.2} per workspace (target <= {TARGET_WRITES_PER_WORKSPACE})",
            happy.writes(),
            writes / n
        ),
    );
    target(
        rss <= TARGET_PEAK_RSS_MIB,
        format!("controller peak RSS: {rss:.1} MiB (target <= {TARGET_PEAK_RSS_MIB} MiB)"),
    );
    target(
        idle_cpu <= TARGET_IDLE_CPU_CORES && idle.writes() == 0,
        format!(
            "converged: {:.4} CPU cores over {} s, {} API requests ({} writes)",
            idle_cpu,
            args.idle_seconds,
            idle.total(),
            idle.writes()
        ),
    );
    println!();
    println!(
        "controller API requests while the workspaces started ({:.2} per workspace, watches excluded):",
        happy.total() as f64 / n
    );
    for ((verb, resource), count) in &happy.by_kind {
        println!("  {verb:<7} {resource:<32} {count:>6}  ({:.2} per workspace)", *count as f64 / n);
    }

    clean_up(&client, &team_names).await?;
    if !missed.is_empty() {
        bail!("{} target(s) missed", missed.len());
    }
    Ok(())
}

/// A template and `teams` Teams with room for `per_team` workspaces each, Ready.
async fn set_up_teams(client: &Client, teams: usize, per_team: usize) -> anyhow::Result<Vec<String>> {
    let template: WorkspaceTemplate = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "WorkspaceTemplate", "metadata": { "name": TEMPLATE },
        "spec": {
            "displayName": "Benchmark desktop", "image": "deskpod/desktop-python:latest", "homeSize": "1Gi",
            "resources": { "cpuRequest": "100m", "memoryRequest": "256Mi" }
        }
    }))?;
    Api::<WorkspaceTemplate>::all(client.clone()).create(&PostParams::default(), &template).await?;
    let api: Api<Team> = Api::all(client.clone());
    let room = per_team as i32 + 5;
    let mut names = Vec::new();
    for t in 0..teams {
        let name = format!("bench-{t:02}");
        let team: Team = serde_json::from_value(json!({
            "apiVersion": "deskpod.io/v1alpha1", "kind": "Team", "metadata": { "name": name },
            "spec": { "quota": {
                "cpu": "1000", "memory": "4000Gi", "storage": "10000Gi", "pods": room, "workspaces": room
            } }
        }))?;
        api.create(&PostParams::default(), &team).await?;
        names.push(name);
    }
    for name in &names {
        let ready = |t: Option<&Team>| {
            t.and_then(|t| t.status.as_ref())
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        wait_for(&api, name, "Team Ready", Duration::from_secs(180), ready).await?;
    }
    println!("{teams} teams Ready");
    Ok(names)
}

/// Watches pods of workspaces and Workspaces, noting when each pod first appears and when each
/// Workspace first says Running.
fn spawn_watches(client: &Client, pods_seen: Seen, running_seen: Seen) -> tokio::task::JoinHandle<()> {
    let pods = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default().labels(WORKSPACE_LABEL))
        .applied_objects()
        .for_each(move |pod| {
            if let Ok(pod) = pod
                && let Some(ws) = pod.labels().get(WORKSPACE_LABEL)
            {
                first_seen(&pods_seen, format!("{}/{ws}", pod.namespace().unwrap_or_default()));
            }
            async {}
        });
    let workspaces = watcher(Api::<Workspace>::all(client.clone()), watcher::Config::default())
        .applied_objects()
        .for_each(move |ws| {
            if let Ok(ws) = ws
                && ws.status.as_ref().is_some_and(|s| s.phase == WorkspacePhase::Running)
            {
                first_seen(&running_seen, format!("{}/{}", ws.namespace().unwrap_or_default(), ws.name_any()));
            }
            async {}
        });
    tokio::spawn(async move {
        tokio::join!(pods, workspaces);
    })
}

async fn wait_until(deadline: Instant, what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits until every Team's status counts its workspaces' pods: the last writes the happy path
/// causes (quota usage mirrored onto the Team).
async fn wait_quota_counted(client: &Client, teams: &[String], total: usize, deadline: Instant) -> anyhow::Result<()> {
    let api: Api<Team> = Api::all(client.clone());
    for (i, name) in teams.iter().enumerate() {
        // Workspace w went to team w % teams.
        let expected = (0..total).filter(|w| w % teams.len() == i).count().to_string();
        let counted = |t: Option<&Team>| {
            t.and_then(|t| t.status.as_ref()).is_some_and(|s| s.quota_used.get("pods").is_some_and(|q| q.0 == expected))
        };
        let what = format!("team {name}'s status counting {expected} pods");
        wait_for(&api, name, &what, deadline.saturating_duration_since(Instant::now()), counted).await?;
    }
    Ok(())
}

fn latencies(from: &HashMap<String, Instant>, to: &HashMap<String, Instant>) -> Vec<f64> {
    from.iter().filter_map(|(k, start)| to.get(k).map(|end| secs(end.saturating_duration_since(*start)))).collect()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The controller's requests in a stretch of the audit log, by verb and resource.
#[derive(Default)]
struct Requests {
    by_kind: BTreeMap<(String, String), u64>,
}

impl Requests {
    fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    fn writes(&self) -> u64 {
        self.by_kind.iter().filter(|((verb, _), _)| is_write(verb)).map(|(_, n)| n).sum()
    }
}

fn is_write(verb: &str) -> bool {
    matches!(verb, "create" | "update" | "patch" | "delete" | "deletecollection")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditEvent {
    verb: String,
    user: AuditUser,
    #[serde(default)]
    object_ref: Option<AuditObject>,
}

#[derive(Deserialize)]
struct AuditUser {
    username: String,
}

#[derive(Deserialize)]
struct AuditObject {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: Option<String>,
}

/// Counts `user`'s requests between two byte offsets of the audit log. Watches are long-running
/// requests logged when they end; they are left out.
fn count_requests(path: &Path, from: u64, to: u64, user: &str) -> anyhow::Result<Requests> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut requests = Requests::default();
    let mut read = from;
    for line in BufReader::new(file).lines() {
        let line = line?;
        read += line.len() as u64 + 1;
        if read > to {
            break;
        }
        let event: AuditEvent = serde_json::from_str(&line).with_context(|| format!("audit line: {line}"))?;
        if event.user.username != user || event.verb == "watch" {
            continue;
        }
        let resource = match event.object_ref {
            Some(AuditObject { resource, subresource: Some(sub) }) => format!("{resource}/{sub}"),
            Some(AuditObject { resource, .. }) => resource,
            None => "(non-resource)".into(),
        };
        *requests.by_kind.entry((event.verb, resource)).or_default() += 1;
    }
    Ok(requests)
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("the controller process is gone")?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let after = &stat[stat.rfind(')').context("/proc stat format")? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// Peak resident set size (VmHWM) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM in /proc status")?;
    Ok(kib / 1024.0)
}

async fn clean_up(client: &Client, teams: &[String]) -> anyhow::Result<()> {
    let api: Api<Team> = Api::all(client.clone());
    for name in teams {
        api.delete(name, &DeleteParams::background()).await?;
    }
    Api::<WorkspaceTemplate>::all(client.clone()).delete(TEMPLATE, &DeleteParams::default()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.50), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
    }
}
