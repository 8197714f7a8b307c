//! The controller's Prometheus metrics, registered into a registry the caller owns (the binary
//! serves one on the admin port; tests make their own).
//!
//! Two kinds of series:
//! - **Events**, counted as they happen: reconciles, their errors and durations per controller,
//!   and the time a workspace took from its pod's creation to Running.
//! - **States**, computed at scrape time from the controllers' own watched copies
//!   ([`Metrics::watch_workspaces`], [`Metrics::watch_agents`]): workspaces per phase and CI
//!   agents queued and running per team. Counting from the copies, rather than keeping gauges up
//!   to date in the reconcilers, cannot drift: a workspace deleted while the controller was down,
//!   or a reconcile that failed half-way, still counts exactly as the API server last said. Only
//!   the replica that leads runs the controllers, so only it serves these series, and a `sum()`
//!   over replicas does not count anything twice.
//!
//! Labels stay bounded: controller names, error categories, phases, and for CI agents the team.
//! Teams are made by administrators (tens, not thousands) and a team's queue is what its limit
//! applies to, so it is the one name worth a label; workspace, agent and user names never are.
//!
//! [`SERIES`] lists every series name served here, so tests can check the chart's dashboard
//! against it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::agent::{queue, render as agent_render};
use crate::api::{CiAgent, Workspace, WorkspacePhase};

/// Every series the controller serves (histograms by their base name), with the prefix.
pub const SERIES: &[&str] = &[
    "deskpod_controller_reconcile_total",
    "deskpod_controller_reconcile_errors_total",
    "deskpod_controller_reconcile_duration_seconds",
    "deskpod_controller_workspace_time_to_ready_seconds",
    "deskpod_controller_workspaces",
    "deskpod_controller_ciagents_queued",
    "deskpod_controller_ciagents_running",
];

/// The controllers, by the label their series carry.
pub const CONTROLLERS: [&str; 4] = ["team", "workspace", "ciagent", "cluster"];

/// Which controller a series belongs to (one of [`CONTROLLERS`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

/// A failed reconcile: which controller, and a fixed error category (never an object name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub controller: &'static str,
    pub category: &'static str,
}

/// Reconcile counters and durations, time to ready, and the watched copies the state gauges are
/// computed from.
#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<ControllerLabel, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<ControllerLabel, Histogram>,
    time_to_ready: Histogram,
    watched: Arc<Watched>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `deskpod_controller_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 12))),
            // 1 s to about 34 minutes: a cached image starts in seconds, a cold pull takes minutes.
            time_to_ready: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            watched: Arc::default(),
        };
        let sub = registry.sub_registry_with_prefix("deskpod_controller");
        sub.register("reconcile", "Reconciles run", metrics.reconciles.clone());
        sub.register("reconcile_errors", "Reconciles that failed, by error category", metrics.failures.clone());
        sub.register("reconcile_duration_seconds", "How long a reconcile took", metrics.duration.clone());
        sub.register(
            "workspace_time_to_ready_seconds",
            "From a workspace's desktop pod being created to the workspace being Running, once per start",
            metrics.time_to_ready.clone(),
        );
        sub.register_collector(Box::new(metrics.watched.clone()));
        // Every controller and error category from 0, so a first error is an increase, not a new
        // series `rate()` cannot see, and every series is there before anything happened.
        for controller in CONTROLLERS {
            let _ = metrics.reconciles.get_or_create(&ControllerLabel { controller });
            let _ = metrics.duration.get_or_create(&ControllerLabel { controller });
            for category in crate::Error::CATEGORIES {
                let _ = metrics.failures.get_or_create(&FailureLabels { controller, category });
            }
        }
        metrics
    }

    /// Records one reconcile of `controller` that took `elapsed`.
    ///
    /// A reconcile also tells that the controller's watched copy has listed: kube's `Controller`
    /// runs none before its own copy is ready, and the CiAgent reconciler waits for its pods'
    /// copy too. (Waiting on `Store::wait_until_ready` here instead would compete with the
    /// reconcilers for its single wake-up.)
    pub fn reconciled(&self, controller: &'static str, elapsed: Duration) {
        match controller {
            "workspace" => self.watched.workspaces_listed.store(true, Ordering::Relaxed),
            "ciagent" => self.watched.agents_listed.store(true, Ordering::Relaxed),
            _ => {}
        }
        let label = ControllerLabel { controller };
        self.reconciles.get_or_create(&label).inc();
        self.duration.get_or_create(&label).observe(elapsed.as_secs_f64());
    }

    /// Records a failed reconcile.
    pub fn failed(&self, controller: &'static str, category: &'static str) {
        self.failures.get_or_create(&FailureLabels { controller, category }).inc();
    }

    /// Records that a workspace became Running at `ready_at` (the `startedAt` just written) with
    /// a desktop pod created at `pod_created`. The Workspace reconciler calls this only after it
    /// wrote a Running status over one that was not: a restarted controller finds Running already
    /// written and records nothing twice, and both times come from the API server's objects, so a
    /// restart while the desktop starts still records the true time.
    pub fn became_ready(&self, pod_created: Timestamp, ready_at: Timestamp) {
        let seconds = ready_at.duration_since(pod_created).as_secs_f64().max(0.0);
        self.time_to_ready.observe(seconds);
    }

    /// Serves `deskpod_controller_workspaces` from the Workspace controller's own copy, once it
    /// has listed every workspace (the first reconcile; before that, counts would be too low, so
    /// nothing is served).
    pub fn watch_workspaces(&self, workspaces: Store<Workspace>) {
        let _ = self.watched.workspaces.set(workspaces);
    }

    /// Serves the CI agent queue gauges from the CiAgent controller's copies of the agents and
    /// their pods, once they have listed (the first reconcile).
    pub fn watch_agents(&self, agents: Store<CiAgent>, pods: Store<Pod>) {
        let _ = self.watched.agents.set((agents, pods));
    }
}

/// The watched copies the state gauges are computed from, served once they have listed.
#[derive(Default)]
struct Watched {
    workspaces: OnceLock<Store<Workspace>>,
    workspaces_listed: AtomicBool,
    agents: OnceLock<(Store<CiAgent>, Store<Pod>)>,
    agents_listed: AtomicBool,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("workspaces", &self.workspaces_listed)
            .field("agents", &self.agents_listed)
            .finish_non_exhaustive()
    }
}

/// Every phase, so a phase with no workspaces reads 0 rather than missing.
const PHASES: [WorkspacePhase; 7] = [
    WorkspacePhase::Pending,
    WorkspacePhase::Creating,
    WorkspacePhase::Starting,
    WorkspacePhase::Running,
    WorkspacePhase::Stopping,
    WorkspacePhase::Stopped,
    WorkspacePhase::Failed,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamLabel {
    team: String,
}

/// Workspaces per phase; one not yet looked at by the controller (no status) counts as Pending,
/// which is what its status will first say.
pub fn workspaces_by_phase<'a>(workspaces: impl IntoIterator<Item = &'a Arc<Workspace>>) -> Vec<(WorkspacePhase, i64)> {
    let mut counts: Vec<(WorkspacePhase, i64)> = PHASES.iter().map(|p| (*p, 0)).collect();
    for ws in workspaces {
        let phase = ws.status.as_ref().map(|s| s.phase).unwrap_or_default();
        if let Some(entry) = counts.iter_mut().find(|(p, _)| *p == phase) {
            entry.1 += 1;
        }
    }
    counts
}

/// CI agents per team: (queued, running). Queued as the queue counts them (waiting, no pod yet);
/// running: agent pods that still run, as they count against the team's `ciAgents`.
pub fn agents_by_team<'a>(
    agents: impl IntoIterator<Item = &'a Arc<CiAgent>>,
    pods: impl IntoIterator<Item = &'a Arc<Pod>>,
) -> BTreeMap<String, (i64, i64)> {
    let pods: Vec<&Arc<Pod>> = pods.into_iter().collect();
    let pod_names: HashSet<(Option<String>, String)> = pods.iter().map(|p| (p.namespace(), p.name_any())).collect();
    let team_of = |ns: Option<String>| ns.and_then(|ns| ns.strip_prefix("team-").map(str::to_owned));
    let mut teams: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for agent in agents {
        let has_pod = pod_names.contains(&(agent.namespace(), agent_render::pod_name(&agent.name_any())));
        if queue::is_waiting(agent)
            && !has_pod
            && let Some(team) = team_of(agent.namespace())
        {
            teams.entry(team).or_default().0 += 1;
        }
    }
    for pod in pods {
        if !agent_render::pod_finished(pod)
            && let Some(team) = team_of(pod.namespace())
        {
            teams.entry(team).or_default().1 += 1;
        }
    }
    teams
}

impl Collector for Watched {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(store) = self.workspaces.get().filter(|_| self.workspaces_listed.load(Ordering::Relaxed)) {
            let family = Family::<PhaseLabel, Gauge>::default();
            for (phase, count) in workspaces_by_phase(&store.state()) {
                family.get_or_create(&PhaseLabel { phase: format!("{phase:?}") }).set(count);
            }
            let metric = encoder.encode_descriptor("workspaces", "Workspaces per phase", None, family.metric_type())?;
            family.encode(metric)?;
        }
        if let Some((agents, pods)) = self.agents.get().filter(|_| self.agents_listed.load(Ordering::Relaxed)) {
            let (queued, running) = (Family::<TeamLabel, Gauge>::default(), Family::<TeamLabel, Gauge>::default());
            for (team, (q, r)) in agents_by_team(&agents.state(), &pods.state()) {
                queued.get_or_create(&TeamLabel { team: team.clone() }).set(q);
                running.get_or_create(&TeamLabel { team }).set(r);
            }
            let help = "CI agents waiting in their team's queue for a pod";
            queued.encode(encoder.encode_descriptor("ciagents_queued", help, None, queued.metric_type())?)?;
            let help = "CI agents whose pod runs (counted against the team's ciAgents)";
            running.encode(encoder.encode_descriptor("ciagents_running", help, None, running.metric_type())?)?;
        }
        Ok(())
    }
}

/// Consecutive failures per object (keyed by `namespace/name` or name), for [`backoff_delay`].
#[derive(Debug, Default)]
pub struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    /// Counts a failure of `key`; returns how many in a row and how long to wait.
    pub fn failed(&self, key: String) -> (u32, Duration) {
        let mut counts = self.0.lock().expect("backoff counts lock");
        let n = counts.entry(key).or_default();
        *n = n.saturating_add(1);
        (*n, backoff_delay(*n))
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.0.lock().expect("backoff counts lock").remove(key);
    }
}

/// How long to wait before retrying an object that failed `failures` times in a row: 5 s,
/// doubling, at most 5 minutes. Transient errors retry quickly; a stuck object does not spin.
pub fn backoff_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    Duration::from_secs(5).saturating_mul(1 << doublings).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_and_stops_at_five_minutes() {
        let delays: Vec<u64> = [1, 2, 3, 4, 5, 6, 7, 100, u32::MAX].map(|n| backoff_delay(n).as_secs()).to_vec();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn backoff_grows_per_object_and_resets_on_success() {
        let backoff = Backoff::default();
        assert_eq!(backoff.failed("a".into()), (1, Duration::from_secs(5)));
        assert_eq!(backoff.failed("a".into()), (2, Duration::from_secs(10)));
        assert_eq!(backoff.failed("b".into()), (1, Duration::from_secs(5)), "counted per object");
        backoff.succeeded("a");
        assert_eq!(backoff.failed("a".into()), (1, Duration::from_secs(5)));
    }

    #[test]
    fn series_are_exposed_with_their_labels() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.reconciled("team", Duration::from_millis(30));
        metrics.failed("team", "apply");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"deskpod_controller_reconcile_total{controller="team"} 1"#), "{text}");
        assert!(
            text.contains(r#"deskpod_controller_reconcile_errors_total{controller="team",category="apply"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"deskpod_controller_reconcile_duration_seconds_count{controller="team"} 1"#), "{text}");
        assert!(
            text.contains(r#"deskpod_controller_reconcile_errors_total{controller="ciagent",category="list"} 0"#),
            "every controller and category starts at 0: {text}"
        );
    }

    fn object<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> Arc<K> {
        Arc::new(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn workspaces_are_counted_per_phase_with_every_phase_present() {
        let ws = |name: &str, phase: Option<&str>| {
            let mut value = serde_json::json!({
                "apiVersion": "deskpod.io/v1alpha1", "kind": "Workspace",
                "metadata": { "name": name, "namespace": "team-a" },
                "spec": { "owner": "alice@example.com", "template": "py" }
            });
            if let Some(phase) = phase {
                value["status"] = serde_json::json!({ "phase": phase });
            }
            object::<Workspace>(value)
        };
        let all = [ws("a", Some("Running")), ws("b", Some("Running")), ws("c", Some("Stopped")), ws("d", None)];
        let counts: BTreeMap<String, i64> =
            workspaces_by_phase(&all).into_iter().map(|(p, n)| (format!("{p:?}"), n)).collect();
        assert_eq!(counts.len(), 7, "every phase: {counts:?}");
        assert_eq!((counts["Running"], counts["Stopped"], counts["Pending"], counts["Failed"]), (2, 1, 1, 0));
    }

    #[test]
    fn agents_queue_until_they_have_a_pod_and_run_until_it_finishes() {
        let agent = |name: &str, ns: &str, phase: Option<&str>| {
            let mut value = serde_json::json!({
                "apiVersion": "deskpod.io/v1alpha1", "kind": "CiAgent",
                "metadata": { "name": name, "namespace": ns }, "spec": { "image": "x" }
            });
            if let Some(phase) = phase {
                value["status"] = serde_json::json!({ "phase": phase });
            }
            object::<CiAgent>(value)
        };
        let pod = |agent: &str, ns: &str, phase: &str| {
            object::<Pod>(serde_json::json!({
                "metadata": { "name": agent_render::pod_name(agent), "namespace": ns },
                "status": { "phase": phase }
            }))
        };
        let agents = [
            agent("running", "team-a", Some("Running")),
            agent("admitted-not-yet-written", "team-a", Some("Queued")),
            agent("waiting", "team-a", Some("Queued")),
            agent("new", "team-a", None),
            agent("done", "team-a", Some("Succeeded")),
            agent("other", "team-b", Some("Queued")),
            agent("not-a-team", "default", Some("Queued")),
        ];
        let pods = [
            pod("running", "team-a", "Running"),
            pod("admitted-not-yet-written", "team-a", "Pending"),
            pod("done", "team-a", "Succeeded"),
        ];
        let teams = agents_by_team(&agents, &pods);
        assert_eq!(teams.into_iter().collect::<Vec<_>>(), [("a".into(), (2, 2)), ("b".into(), (1, 0))]);
    }
}

#[cfg(test)]
mod collector_tests {
    use kube::runtime::reflector;
    use kube::runtime::watcher;

    use super::*;

    #[test]
    fn gauges_appear_once_the_controller_reconciled() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let (store, mut writer) = reflector::store::<Workspace>();
        metrics.watch_workspaces(store);
        let encode = |registry: &Registry| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
            text
        };
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        assert!(!encode(&registry).contains("deskpod_controller_workspaces"), "nothing before a reconcile");
        metrics.reconciled("team", Duration::from_millis(1));
        assert!(!encode(&registry).contains("deskpod_controller_workspaces"), "another controller's says nothing");
        metrics.reconciled("workspace", Duration::from_millis(1));
        let text = encode(&registry);
        assert!(text.contains(r#"deskpod_controller_workspaces{phase="Running"} 0"#), "{text}");
        assert!(!text.contains("deskpod_controller_ciagents_queued"), "the agents' copies are not watched: {text}");
    }
}
