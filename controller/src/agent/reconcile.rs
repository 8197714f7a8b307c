//! The CiAgent reconciler: admit agents from their team's queue as capacity allows, report how
//! each job goes, stop overdue jobs and remove finished agents after their TTL.
//!
//! Admission is per team and serialized (one lock per team namespace): it walks the team's queue
//! first come first served and gives the next agents pods while the team has room. Room means
//! fewer running agent pods than the team's `quota.ciAgents` (counted by the controller; the
//! ResourceQuota has no such resource) and a ResourceQuota (pods, CPU, memory) that admits the
//! pod. When the first agent in line does not fit, nobody behind it is tried: the queue is strict
//! FIFO, and a refusal by the quota only ever leaves agents Queued, never Failed. Pods just
//! created but not yet in the watched copy are remembered, so two reconciles never overshoot.
//!
//! The agents first in line that surely fit (below `ciAgents`, and within what the quota's last
//! seen status leaves after the pods not seen yet) are admitted under the lock and their pods
//! created at once outside it. Near the quota's limit only the API server can tell: then one pod
//! at a time is tried, in order, under the lock, and only while no other pod of the team is being
//! created. (Should the quota refuse a pod it seemed to have room for, the agent goes back to the
//! head of the queue; a later agent created in the same moment keeps its pod. That takes a quota
//! status behind by more than the pods not yet seen, and is logged as a warning.)
//!
//! Capacity frees when an agent pod finishes or goes away, or the ResourceQuota or Team changes:
//! each of those wakes the first agent in the team's queue (watched, no polling), whose reconcile
//! admits as many as now fit. Agents whose place in the queue moved are woken to say so.
//!
//! Every pod has a fixed name and a controller owner reference: a restarted controller finds the
//! pods it made, never makes a second one for an agent, and a deleted agent's pod is collected.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedSender, unbounded};
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::queue;
use super::render::{self, AGENT_LABEL, DesiredAgent, Observed};
use crate::api::{CiAgent, CiAgentPhase, CiAgentStatus, Team, WorkspaceTemplate};
use crate::cache::{self, delete_if_present, watch_all, watch_labelled};
use crate::metrics::{Backoff, Metrics};
use crate::team::render::{TEAM_LABEL, TEAM_OBJECT_NAME, namespace_name};
use crate::workspace::render::Invalid;
use crate::{Error, FIELD_MANAGER, Result, conditions};

/// How long the CiAgent controller waits for a burst of changes to an agent to end (a starting
/// pod changes several times within a moment).
const AGENT_DEBOUNCE: Duration = Duration::from_millis(50);
/// A pod created but never seen in the watched copy stops counting against the team after this
/// long (it was created and removed between two looks; its agent's status tells the rest).
const IN_FLIGHT_MAX: Duration = Duration::from_secs(30);
/// Label value of this controller's metrics.
const CONTROLLER: &str = "ciagent";

/// Settings of the controller installation for CI agents.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// How long a finished agent is kept when it names no `ttlAfterFinished`.
    pub default_ttl: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings { default_ttl: Duration::from_secs(3600) }
    }
}

/// What the CiAgent reconciler needs.
struct Context {
    client: Client,
    settings: AgentSettings,
    metrics: Metrics,
    /// Consecutive failures per agent (namespace/name), for the backoff.
    failures: Backoff,
    /// Publishes Events on CiAgents (shown by `kubectl describe ciagent`).
    recorder: Recorder,
    watched: Watched,
    queues: Queues,
    /// Wakes agents whose place in the queue moved, so their status says so.
    wake: UnboundedSender<ObjectRef<CiAgent>>,
}

/// Watched copies the reconciler reads.
struct Watched {
    /// The controller's own copy of the CiAgents: the queues are computed from it.
    agents: Store<CiAgent>,
    /// Agent pods (label [`AGENT_LABEL`]).
    pods: Store<Pod>,
    /// The teams' ResourceQuotas, whose changes may mean room for a refused pod.
    quotas: Store<ResourceQuota>,
    teams: Store<Team>,
    templates: Store<WorkspaceTemplate>,
}

impl Watched {
    /// The queue is only right once every agent and pod is known: wait until each watch listed.
    async fn ready(&self) -> Result<()> {
        tokio::try_join!(
            cache::ready(&self.agents),
            cache::ready(&self.pods),
            cache::ready(&self.quotas),
            cache::ready(&self.teams),
            cache::ready(&self.templates),
        )
        .map(drop)
        .map_err(|_| Error::Shutdown)
    }
}

/// Admission state per team namespace, each behind its own lock.
#[derive(Default)]
struct Queues(Mutex<HashMap<String, Arc<tokio::sync::Mutex<TeamQueue>>>>);

impl Queues {
    fn of(&self, namespace: &str) -> Arc<tokio::sync::Mutex<TeamQueue>> {
        self.0.lock().expect("queues").entry(namespace.to_string()).or_default().clone()
    }
}

#[derive(Default)]
struct TeamQueue {
    /// Agents whose pod this controller created and the watched copy does not show yet.
    in_flight: HashMap<String, Instant>,
    /// Pods being created outside the lock right now: while any is, nobody is tried one at a
    /// time (that pod could take the quota's last room from an agent ahead).
    creating: usize,
    /// The ResourceQuota's resourceVersion when it last refused a pod, and its message: no pod is
    /// tried again until the quota changes.
    refused_at: Option<(String, String)>,
    /// The place in the queue each waiting agent was last woken for.
    announced: HashMap<String, i32>,
}

/// The outcome of one admission round for a team.
struct Admission {
    /// Agents that have a pod now, or one on the way.
    admitted: HashSet<String>,
    /// Place in the queue (1 = next) of each agent still waiting.
    positions: HashMap<String, i32>,
    /// Why the queue does not move: (`AgentLimit` or `QuotaExceeded`, message).
    blocked: Option<(&'static str, String)>,
}

fn key(agent: &CiAgent) -> String {
    format!("{}/{}", agent.namespace().unwrap_or_default(), agent.name_any())
}

/// Now, to the second, as the API server stores times (so a status written and read back
/// compares equal).
fn now() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// Reconciles one CiAgent, recording how long it took.
#[tracing::instrument(skip_all, fields(agent = %key(&agent)))]
async fn reconcile(agent: Arc<CiAgent>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let result = reconcile_agent(&agent, &ctx).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    if result.is_ok() {
        ctx.failures.succeeded(&key(&agent));
    }
    result
}

/// What this reconcile found, written to the agent's status at the end.
struct Outcome {
    phase: CiAgentPhase,
    queue_position: Option<i32>,
    pod_name: Option<String>,
    exit_code: Option<i32>,
    started_at: Option<Time>,
    finished_at: Option<Time>,
    message: Option<String>,
    /// The `Admitted` condition: (status, reason, message).
    admitted: (bool, &'static str, String),
}

impl Outcome {
    fn with_pod(agent: &CiAgent, observed: Observed) -> Outcome {
        let previous = agent.status.clone().unwrap_or_default();
        let finished = observed.phase.is_finished();
        Outcome {
            phase: observed.phase,
            queue_position: None,
            pod_name: Some(render::pod_name(&agent.name_any())),
            exit_code: observed.exit_code,
            // The first time seen running stays the start, whatever the pod says later.
            started_at: previous.started_at.or(observed.started_at),
            finished_at: finished.then(|| observed.finished_at.unwrap_or_else(now)),
            message: observed.message,
            admitted: (true, "PodCreated", "the agent has its pod".into()),
        }
    }

    fn failed(agent: &CiAgent, reason: &'static str, message: String) -> Outcome {
        let previous = agent.status.clone().unwrap_or_default();
        let had_pod = previous.pod_name.is_some();
        Outcome {
            phase: CiAgentPhase::Failed,
            queue_position: None,
            pod_name: previous.pod_name,
            exit_code: None,
            started_at: previous.started_at,
            finished_at: Some(now()),
            message: Some(message.clone()),
            admitted: if had_pod {
                (true, "PodCreated", "the agent had its pod".into())
            } else {
                (false, reason, message)
            },
        }
    }
}

async fn reconcile_agent(agent: &CiAgent, ctx: &Context) -> Result<Action> {
    let ns = agent.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod_name = render::pod_name(&agent.name_any());
    if agent.meta().deletion_timestamp.is_some() {
        // Cancelled while something holds the agent (foreground deletion, another finalizer):
        // the job stops now rather than when the garbage collector gets to it.
        delete_if_present(&pods, &pod_name).await?;
        return Ok(Action::await_change());
    }
    ctx.watched.ready().await?;
    let previous = agent.status.clone().unwrap_or_default();
    let pod = ctx.watched.pods.get(&ObjectRef::new(&pod_name).within(&ns));

    // A pod of this name left by an earlier agent of the same name is not ours: it goes first.
    if let Some(p) = &pod
        && !owned_by(p, agent)
    {
        if p.meta().deletion_timestamp.is_none() {
            delete_if_present(&pods, &pod_name).await?;
        }
        return Ok(Action::await_change());
    }
    if previous.phase.is_finished() {
        return finished(ctx, agent, &pods, pod.as_deref()).await;
    }
    match pod {
        Some(pod) => with_pod(ctx, agent, &pods, &pod).await,
        None => without_pod(ctx, agent, &pods).await,
    }
}

fn owned_by(pod: &Pod, agent: &CiAgent) -> bool {
    let uid = agent.uid();
    pod.owner_references().iter().any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

/// The job has a pod: report it, and stop it at its deadline.
async fn with_pod(ctx: &Context, agent: &CiAgent, pods: &Api<Pod>, pod: &Pod) -> Result<Action> {
    let mut outcome = Outcome::with_pod(agent, render::observe(pod));
    let deadline = agent.spec.deadline.as_deref().and_then(|d| crate::duration::parse(d).ok());
    let mut next = Action::await_change();
    if !outcome.phase.is_finished()
        && let Some(at) = deadline.and_then(|d| render::deadline_at(pod, d))
    {
        match at.duration_since(Timestamp::now()) {
            left if left.is_positive() => next = Action::requeue(left.unsigned_abs() + Duration::from_millis(100)),
            _ => {
                let spec = agent.spec.deadline.clone().unwrap_or_default();
                outcome.phase = CiAgentPhase::TimedOut;
                outcome.exit_code = None;
                outcome.finished_at = Some(now());
                outcome.message = Some(format!("stopped: the job ran past its deadline of {spec}"));
                // Status first: a controller killed in between still knows it timed the job out
                // (and removes the pod on its next look).
                write_status(ctx, agent, outcome).await?;
                publish(
                    ctx,
                    agent,
                    "DeadlineExceeded",
                    format!("the job ran past its deadline of {spec}; pod removed"),
                )
                .await;
                delete_if_present(pods, &pod.name_any()).await?;
                return Ok(ttl_action(ctx, agent, Some(&now())));
            }
        }
    }
    if outcome.phase.is_finished() {
        // Capacity freed: the next in line gets it before this agent's status is written.
        admit_for(ctx, agent).await?;
        next = ttl_action(ctx, agent, outcome.finished_at.as_ref());
    }
    write_status(ctx, agent, outcome).await?;
    Ok(next)
}

/// No pod: the agent waits in its team's queue, or gets its pod now.
async fn without_pod(ctx: &Context, agent: &CiAgent, pods: &Api<Pod>) -> Result<Action> {
    let ns = agent.namespace().unwrap_or_default();
    let name = agent.name_any();
    let previous = agent.status.clone().unwrap_or_default();
    let pod_name = render::pod_name(&name);
    if ctx.queues.of(&ns).lock().await.in_flight.contains_key(&name) {
        // Its pod was just made (by another agent's admission); the pod's appearance in the
        // watched copy brings this agent back to report it.
        return Ok(Action::await_change());
    }
    if matches!(previous.phase, CiAgentPhase::Starting | CiAgentPhase::Running) {
        // It had a pod. Only the API server can tell whether it is gone or merely not seen yet.
        if pods.get_opt(&pod_name).await.map_err(Error::List)?.is_some() {
            return Ok(Action::await_change());
        }
        let message = "the pod was removed before the job finished".to_string();
        write_status(ctx, agent, Outcome::failed(agent, "PodLost", message.clone())).await?;
        publish(ctx, agent, "PodLost", message).await;
        admit_for(ctx, agent).await?;
        return Ok(ttl_action(ctx, agent, Some(&now())));
    }

    let team = match load_and_validate(ctx, agent, &ns) {
        Ok(team) => team,
        Err(invalid) => {
            write_status(ctx, agent, Outcome::failed(agent, invalid.reason, invalid.message.clone())).await?;
            publish(ctx, agent, invalid.reason, invalid.message).await;
            return Ok(ttl_action(ctx, agent, Some(&now())));
        }
    };
    let admission = admit(ctx, &ns, &team, Some(&name)).await?;
    if admission.admitted.contains(&name) {
        // Reported once the pod is seen (moments from now): one status write instead of two.
        return Ok(Action::await_change());
    }
    let position = admission.positions.get(&name).copied();
    let (reason, why) =
        admission.blocked.unwrap_or(("Waiting", "the agents ahead in the queue start first".to_string()));
    let ahead = position.map(|p| format!(" ({} ahead in the queue)", p - 1)).unwrap_or_default();
    let outcome = Outcome {
        phase: CiAgentPhase::Queued,
        queue_position: position,
        pod_name: None,
        exit_code: None,
        started_at: None,
        finished_at: None,
        message: Some(format!("waiting for team capacity{ahead}: {why}")),
        admitted: (false, reason, why),
    };
    write_status(ctx, agent, outcome).await?;
    Ok(Action::await_change())
}

/// The agent is done: a timed-out job's pod goes, and after the TTL the agent and its pod.
async fn finished(ctx: &Context, agent: &CiAgent, pods: &Api<Pod>, pod: Option<&Pod>) -> Result<Action> {
    let status = agent.status.clone().unwrap_or_default();
    if let Some(pod) = pod
        && status.phase == CiAgentPhase::TimedOut
        && !render::pod_finished(pod)
        && pod.meta().deletion_timestamp.is_none()
    {
        delete_if_present(pods, &pod.name_any()).await?;
    }
    let expires = expiry(ctx, agent, status.finished_at.as_ref());
    if expires > Timestamp::now() {
        return Ok(ttl_action(ctx, agent, status.finished_at.as_ref()));
    }
    // Pod first: with the agent gone, nothing would look after a pod left behind.
    if pod.is_some() {
        delete_if_present(pods, &pod.map(|p| p.name_any()).unwrap_or_default()).await?;
    }
    let agents: Api<CiAgent> = Api::namespaced(ctx.client.clone(), &agent.namespace().unwrap_or_default());
    delete_if_present(&agents, &agent.name_any()).await?;
    tracing::info!(agent = %key(agent), "finished agent removed after its TTL");
    Ok(Action::await_change())
}

fn ttl(ctx: &Context, agent: &CiAgent) -> Duration {
    agent
        .spec
        .ttl_after_finished
        .as_deref()
        .and_then(|t| crate::duration::parse(t).ok())
        .unwrap_or(ctx.settings.default_ttl)
}

/// When a finished agent is removed.
fn expiry(ctx: &Context, agent: &CiAgent, finished_at: Option<&Time>) -> Timestamp {
    let finished = finished_at.map(|t| t.0).unwrap_or_else(Timestamp::now);
    let ttl = SignedDuration::try_from(ttl(ctx, agent)).unwrap_or(SignedDuration::MAX);
    finished.checked_add(ttl).unwrap_or(Timestamp::MAX)
}

/// Look again when a finished agent's TTL ends.
fn ttl_action(ctx: &Context, agent: &CiAgent, finished_at: Option<&Time>) -> Action {
    let left = expiry(ctx, agent, finished_at).duration_since(Timestamp::now());
    Action::requeue(left.unsigned_abs().min(Duration::from_secs(24 * 3600)) + Duration::from_millis(100))
}

/// The agent's team (from the namespace), once the agent is found able to run in it (with its
/// template, within the team's limits).
fn load_and_validate(ctx: &Context, agent: &CiAgent, ns: &str) -> std::result::Result<Arc<Team>, Invalid> {
    let Some(team_name) = render::team_of_namespace(ns) else {
        return Err(Invalid::new(
            "NotInTeamNamespace",
            format!("namespace {ns:?} is not a team namespace (team-<name>)"),
        ));
    };
    let Some(team) = ctx.watched.teams.get(&ObjectRef::new(team_name)) else {
        return Err(Invalid::new("TeamNotFound", format!("team {team_name:?} does not exist")));
    };
    let template = agent.spec.template.as_ref().and_then(|t| ctx.watched.templates.get(&ObjectRef::new(t)));
    render::validate(agent, template.as_deref(), &team)?;
    Ok(team)
}

/// Runs an admission round for the agent's team, if it has one.
async fn admit_for(ctx: &Context, agent: &CiAgent) -> Result<()> {
    let ns = agent.namespace().unwrap_or_default();
    let team = render::team_of_namespace(&ns).and_then(|t| ctx.watched.teams.get(&ObjectRef::new(t)));
    if let Some(team) = team {
        admit(ctx, &ns, &team, Some(&agent.name_any())).await?;
    }
    Ok(())
}

/// One admission round for a team: creates pods for the agents first in line while the team has
/// room, and works out everyone else's place. `current` is the agent being reconciled (it writes
/// its own status; the others whose place moved are woken).
async fn admit(ctx: &Context, ns: &str, team: &Team, current: Option<&str>) -> Result<Admission> {
    let lock = ctx.queues.of(ns);
    let mut state = lock.lock().await;
    let pods = ctx.watched.pods.state_filter(|p| p.namespace().as_deref() == Some(ns));
    let agents = ctx.watched.agents.state_filter(|a| a.namespace().as_deref() == Some(ns));
    let pod_names: HashSet<String> = pods.iter().map(|p| p.name_any()).collect();
    let unfinished: HashSet<String> = agents
        .iter()
        .filter(|a| !a.status.as_ref().is_some_and(|s| s.phase.is_finished()))
        .map(|a| a.name_any())
        .collect();
    state.in_flight.retain(|name, since| {
        !pod_names.contains(&render::pod_name(name)) && unfinished.contains(name) && since.elapsed() < IN_FLIGHT_MAX
    });

    let mut running = queue::running_pods(&pods) + state.in_flight.len();
    let limit = team.spec.quota.ci_agents.map(|n| n.max(0) as usize);
    let quota_version =
        ctx.watched.quotas.get(&ObjectRef::new(TEAM_OBJECT_NAME).within(ns)).and_then(|q| q.resource_version());
    let mut blocked: Option<(&'static str, String)> = match &state.refused_at {
        Some((version, message)) if Some(version) == quota_version.as_ref() => Some(("QuotaExceeded", message.clone())),
        _ => None,
    };
    let waiting = queue::waiting_in_order(agents, ns, |name| {
        pod_names.contains(&render::pod_name(name)) || state.in_flight.contains_key(name)
    });

    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let mut admitted: HashSet<String> = state.in_flight.keys().cloned().collect();
    // An agent that cannot run is failed by its own reconcile; it holds nobody up.
    let mut candidates: Vec<(String, DesiredAgent)> = waiting
        .iter()
        .filter_map(|agent| {
            let template = agent.spec.template.as_ref().and_then(|t| ctx.watched.templates.get(&ObjectRef::new(t)));
            render::validate(agent, template.as_deref(), team).ok().map(|d| (agent.name_any(), d))
        })
        .collect();
    let quota = ctx.watched.quotas.get(&ObjectRef::new(TEAM_OBJECT_NAME).within(ns));
    // Quota admission counts a pod before storing it: once the watched copy shows a pod, the
    // watched quota (a watch just as quick) counts it too. Pods not seen yet may not be counted.
    let unseen = state.in_flight.len();

    // The first in line that surely fit: below the team's agent limit, and within what the quota
    // has left as last seen (see `fits_with_margin`). They are admitted now and their pods created
    // all at once, outside the lock, so admissions in one team do not wait on each other's calls.
    let free = limit.map_or(usize::MAX, |l| l.saturating_sub(running));
    let mut sure = 0;
    while blocked.is_none()
        && sure < candidates.len().min(free)
        && queue::fits_with_margin(quota.as_deref(), team, candidates[..=sure].iter().map(|(_, d)| d), unseen)
    {
        sure += 1;
    }
    let rest = candidates.split_off(sure);
    let batch = candidates;
    for (name, _) in &batch {
        state.in_flight.insert(name.clone(), Instant::now());
        admitted.insert(name.clone());
    }
    running += batch.len();
    state.creating += batch.len();

    let mut left: Vec<String> = Vec::new();
    for (name, desired) in rest {
        if blocked.is_none()
            && let Some(limit) = limit
            && running >= limit
        {
            let message = format!("{running} of {limit} CI agents of the team are running (quota.ciAgents)");
            blocked = Some(("AgentLimit", message));
        }
        if blocked.is_none() && state.creating > 0 {
            // The quota may run out with the pods being created: ask again once they exist.
            blocked = Some(("Waiting", "the agents ahead are being started".into()));
        }
        if blocked.is_none() {
            // Near the quota's limit only the API server knows: one at a time, in order, and
            // nobody behind an agent it refuses.
            match create_pod(&pods_api, &desired).await {
                Ok(()) => {
                    tracing::info!(agent = %format!("{ns}/{name}"), "admitted from the queue");
                    state.in_flight.insert(name.clone(), Instant::now());
                    admitted.insert(name);
                    running += 1;
                    continue;
                }
                Err(kube::Error::Api(status)) if is_quota_refusal(&status) => {
                    state.refused_at = quota_version.clone().map(|v| (v, status.message.clone()));
                    blocked = Some(("QuotaExceeded", status.message));
                }
                Err(source) => {
                    return Err(Error::Apply { kind: "Pod".into(), name: render::pod_name(&name), source });
                }
            }
        }
        left.push(name);
    }
    let positions: HashMap<String, i32> = left.into_iter().enumerate().map(|(i, name)| (name, i as i32 + 1)).collect();

    // Wake the agents whose place moved, once per move; the current one writes its own.
    state.announced.retain(|name, _| positions.contains_key(name));
    for (name, position) in &positions {
        if state.announced.insert(name.clone(), *position) != Some(*position) && Some(name.as_str()) != current {
            let _ = ctx.wake.unbounded_send(ObjectRef::new(name).within(ns));
        }
    }
    drop(state);

    if !batch.is_empty() {
        tracing::info!(namespace = ns, agents = batch.len(), "admitted from the queue");
    }
    let results = futures::future::join_all(batch.iter().map(|(_, d)| create_pod(&pods_api, d))).await;
    let mut failure = None;
    let mut state = lock.lock().await;
    state.creating -= batch.len();
    for ((name, _), result) in batch.into_iter().zip(results) {
        let Err(error) = result else { continue };
        // Not created after all: the agent is back in line (its next reconcile says where).
        state.in_flight.remove(&name);
        admitted.remove(&name);
        match error {
            kube::Error::Api(status) if is_quota_refusal(&status) => {
                tracing::warn!(agent = %format!("{ns}/{name}"), message = %status.message, "the quota refused a pod it seemed to have room for");
                state.refused_at = quota_version.clone().map(|v| (v, status.message.clone()));
                blocked = Some(("QuotaExceeded", status.message));
            }
            source => failure = Some(Error::Apply { kind: "Pod".into(), name: render::pod_name(&name), source }),
        }
        let _ = ctx.wake.unbounded_send(ObjectRef::new(&name).within(ns));
    }
    drop(state);
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(Admission { admitted, positions, blocked })
}

fn is_quota_refusal(status: &kube::core::Status) -> bool {
    status.is_forbidden() && status.message.contains("exceeded quota")
}

/// Creates an agent's pod. Quota admission updates the team's ResourceQuota with optimistic
/// concurrency, so pods created at the same moment in one team can be refused with a conflict that
/// says nothing about capacity; those are retried at once, a few times, with a little jitter. A
/// pod that already exists (fixed name) was made earlier: that is success.
async fn create_pod(pods: &Api<Pod>, desired: &DesiredAgent) -> kube::Result<()> {
    let pod = render::render_pod(desired);
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_already_exists() => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_conflict() && attempt < ATTEMPTS => {
                let mut jitter = [0u8; 1];
                getrandom::fill(&mut jitter).expect("the operating system's random generator works");
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt) + u64::from(jitter[0] % 50))).await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Writes the status when it changed.
async fn write_status(ctx: &Context, agent: &CiAgent, outcome: Outcome) -> Result<()> {
    let previous = agent.status.clone().unwrap_or_default();
    let (admitted, reason, message) = outcome.admitted;
    let generation = agent.meta().generation;
    let status = CiAgentStatus {
        phase: outcome.phase,
        queue_position: outcome.queue_position,
        pod_name: outcome.pod_name,
        exit_code: outcome.exit_code,
        started_at: outcome.started_at,
        finished_at: outcome.finished_at,
        message: outcome.message,
        observed_generation: generation,
        conditions: vec![conditions::condition(
            &previous.conditions,
            "Admitted",
            admitted,
            reason,
            message,
            generation,
            &now(),
        )],
    };
    if agent.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<CiAgent> = Api::namespaced(ctx.client.clone(), &agent.namespace().unwrap_or_default());
    api.patch_status(
        &agent.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(json!({ "apiVersion": "deskpod.io/v1alpha1", "kind": "CiAgent", "status": status })),
    )
    .await
    .map_err(|source| Error::Apply { kind: "CiAgent status".into(), name: agent.name_any(), source })?;
    Ok(())
}

/// Publishes a Warning Event on the agent: only for the controller's own decisions (a job stopped
/// at its deadline, an agent that cannot run, a pod that vanished), once, when it is made. What
/// the pod goes through has its own Events from the scheduler and the kubelet.
async fn publish(ctx: &Context, agent: &CiAgent, reason: &str, note: String) {
    let event = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &agent.object_ref(&())).await {
        tracing::warn!(agent = %key(agent), %error, "publishing an event failed");
    }
}

/// Bounded backoff for transient failures.
fn error_policy(agent: Arc<CiAgent>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(CONTROLLER, error.category());
    let (failures, delay) = ctx.failures.failed(key(&agent));
    tracing::warn!(agent = %key(&agent), %error, failures, retry_in = ?delay, "ci agent reconcile failed");
    Action::requeue(delay)
}

/// Runs the CiAgent controller until the process is told to stop.
pub async fn run(client: Client, settings: AgentSettings, metrics: Metrics) {
    run_with_teams_from(client.clone(), client, settings, metrics).await
}

/// Runs the CiAgent controller against `client`'s cluster (a member cluster), reading Teams and
/// WorkspaceTemplates from `teams_client`'s (the management cluster, where they live).
pub async fn run_with_teams_from(client: Client, teams_client: Client, settings: AgentSettings, metrics: Metrics) {
    let (pods, pod_changes) = watch_labelled::<Pod>(&client, AGENT_LABEL);
    let (quotas, quota_changes) = watch_labelled::<ResourceQuota>(&client, TEAM_LABEL);
    // Only spec changes of teams concern agents (a team's status moves with every pod).
    let (teams, team_changes) = watch_all::<Team>(&teams_client);
    let team_changes = team_changes.predicate_filter(predicates::generation, Default::default());
    let (templates, template_changes) = watch_all::<WorkspaceTemplate>(&teams_client);
    let (wake, woken) = unbounded();
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };

    let config = kube::runtime::controller::Config::default().debounce(AGENT_DEBOUNCE);
    let controller =
        Controller::new(Api::<CiAgent>::all(client.clone()), watcher::Config::default()).with_config(config);
    let agents = controller.store();
    metrics.watch_agents(agents.clone(), pods.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        metrics,
        failures: Backoff::default(),
        recorder: Recorder::new(client.clone(), reporter),
        watched: Watched { agents: agents.clone(), pods, quotas, teams, templates },
        queues: Queues::default(),
        wake,
    });

    // Whatever may free capacity in a namespace wakes the first agent of its queue.
    let head_of = {
        let agents = agents.clone();
        move |ns: Option<String>| {
            let ns = ns?;
            queue::head(&agents.state(), &ns).map(|a| ObjectRef::from_obj(&**a))
        }
    };
    // A pod change concerns its agent, and (when it finishes or goes) the queue.
    let pod_mapper = {
        let head_of = head_of.clone();
        move |pod: Pod| {
            let ns = pod.namespace();
            let owner = pod
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true) && o.kind == "CiAgent")
                .map(|o| ObjectRef::new(&o.name).within(ns.as_deref().unwrap_or_default()));
            owner.into_iter().chain(head_of(ns))
        }
    };
    let quota_mapper = {
        let head_of = head_of.clone();
        move |quota: ResourceQuota| head_of(quota.namespace())
    };
    let team_mapper = move |team: Team| head_of(Some(namespace_name(&team.name_any())));
    controller
        .watches_stream(pod_changes, pod_mapper)
        .watches_stream(quota_changes, quota_mapper)
        .watches_stream(team_changes, team_mapper)
        // Templates are read, not reacted to: an agent is validated when it leaves the queue.
        .watches_stream(template_changes, |_: WorkspaceTemplate| None)
        .reconcile_on(woken)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "ci agent controller event");
            }
        })
        .await;
}
