//! The Workspace reconciler: validate against template and team, apply the home volume, secret,
//! service and route, run or stop the desktop pod, and say on the Workspace where it stands.
//!
//! The pod has a fixed name and is created with a plain create, never applied: while an old pod
//! still exists (even terminating) the create fails, so a ReadWriteOnce home volume is never
//! mounted by two pods. A create refused by the team's quota is reported as QuotaExceeded with the
//! API server's message, and retried when the team's ResourceQuota changes (watched).
//!
//! Owned objects are read from watched copies ([`crate::cache`]) and written only when they differ
//! from what is wanted; the status only when it changed. A converged workspace costs no writes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::idle::{self, LAST_ACTIVITY_ANNOTATION};
use super::render::{self, DesiredWorkspace, Invalid, RouteSettings};
use crate::api::{Team, Workspace, WorkspacePhase, WorkspaceStatus, WorkspaceTemplate};
use crate::cache::{self, apply_if_changed, cached, delete_if_present, watch_all, watch_labelled};
use crate::gateway::HTTPRoute;
use crate::metrics::{Backoff, Metrics};
use crate::team::render::TEAM_LABEL;
use crate::{Error, FIELD_MANAGER, Result, conditions};

/// Field manager of the idle culler's `spec.running: false`, so `kubectl get -o yaml
/// --show-managed-fields` tells who stopped a workspace.
const IDLE_CULLER: &str = "deskpod-idle-culler";

/// How long the Workspace controller waits for a burst of changes to a workspace to end. Every
/// new workspace waits this long before its first reconcile: 50 ms coalesces the changes that
/// come together (a claim bound as its pod is scheduled) as well as 200 ms did (7.97 writes per
/// workspace against 7.95 in `tests/bench/workspaces`) and starts desktops 150 ms sooner.
const WORKSPACE_DEBOUNCE: Duration = Duration::from_millis(50);

/// Label value of this controller's metrics.
const CONTROLLER: &str = "workspace";
/// Characters of a generated VNC password.
const PASSWORD_LEN: usize = 24;

/// What the Workspace reconciler needs.
struct Context {
    client: Client,
    route: RouteSettings,
    metrics: Metrics,
    /// Consecutive failures per Workspace (namespace/name), for the backoff.
    failures: Backoff,
    /// Publishes Events on Workspaces (shown by `kubectl describe workspace`).
    recorder: Recorder,
    stages: Stages,
    owned: Owned,
}

/// The watched copies of what Workspaces own (label [`render::WORKSPACE_LABEL`]).
struct Owned {
    pods: Store<Pod>,
    volumes: Store<PersistentVolumeClaim>,
    services: Store<Service>,
    ingresses: Store<Ingress>,
    /// Watched only when workspaces are routed through a Gateway.
    http_routes: Option<Store<HTTPRoute>>,
    /// Teams and templates, read on every reconcile.
    teams: Store<Team>,
    templates: Store<WorkspaceTemplate>,
}

impl Owned {
    /// Reconciles read from the copies, so they wait until every watch has listed once.
    async fn ready(&self) -> Result<()> {
        let routes = async {
            match &self.http_routes {
                Some(store) => cache::ready(store).await,
                None => Ok(()),
            }
        };
        tokio::try_join!(
            cache::ready(&self.pods),
            cache::ready(&self.volumes),
            cache::ready(&self.services),
            cache::ready(&self.ingresses),
            cache::ready(&self.teams),
            cache::ready(&self.templates),
            routes,
        )
        .map(drop)
        .map_err(|_| Error::Shutdown)
    }
}

fn key(ws: &Workspace) -> String {
    format!("{}/{}", ws.namespace().unwrap_or_default(), ws.name_any())
}

/// A random password of letters and digits, from the operating system's generator.
fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut out = String::with_capacity(PASSWORD_LEN);
    while out.len() < PASSWORD_LEN {
        let mut buf = [0u8; 32];
        getrandom::fill(&mut buf).expect("the operating system's random generator works");
        // Rejection sampling keeps every character equally likely.
        let limit = 256 - 256 % ALPHABET.len();
        out.extend(
            buf.iter().filter(|&&b| (b as usize) < limit).map(|&b| ALPHABET[b as usize % ALPHABET.len()] as char),
        );
    }
    out.truncate(PASSWORD_LEN);
    out
}

/// Reconciles one Workspace, recording how long it took.
#[tracing::instrument(skip_all, fields(workspace = %key(&ws)))]
async fn reconcile(ws: Arc<Workspace>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let result = reconcile_workspace(&ws, &ctx).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    if result.is_ok() {
        ctx.failures.succeeded(&key(&ws));
    }
    result
}

/// What this reconcile found, written to the Workspace's status at the end.
struct Outcome {
    phase: WorkspacePhase,
    message: Option<String>,
    problems: Vec<(&'static str, String)>,
    url: Option<String>,
}

async fn reconcile_workspace(ws: &Workspace, ctx: &Context) -> Result<Action> {
    if ws.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    ctx.owned.ready().await?;
    let client = &ctx.client;
    let owned = &ctx.owned;
    let ns = ws.namespace().unwrap_or_default();
    let desired = match load_and_validate(ws, owned, &ns) {
        Ok(d) => d,
        Err(invalid) => {
            let outcome = Outcome {
                phase: WorkspacePhase::Failed,
                message: Some(invalid.message.clone()),
                problems: vec![(invalid.reason, invalid.message)],
                url: None,
            };
            // A Failed phase is never deferred (see write_status).
            write_status(ctx, ws, outcome).await?;
            // Nothing to retry until the workspace, its template or its team changes (watched).
            return Ok(Action::await_change());
        }
    };

    // The home volume first and the pod next: the pod waits on the volume, the route on nothing.
    let mut home = render::render_home_pvc(&desired);
    let existing = cached(&owned.volumes, &home);
    render::keep_storage_class(&mut home, existing.as_deref());
    let home = apply_if_changed(client, &owned.volumes, &home).await?;
    let home = home.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod_name = render::pod_name(&desired.name);
    let pod = owned.pods.get(&ObjectRef::new(&pod_name).within(&ns));
    let url = Some(render::url(&desired, &ctx.route));
    let mut next = Action::await_change();
    let outcome = match (ws.spec.running, pod) {
        (true, Some(pod)) if pod_finished(&pod) => {
            // A pod that ended (evicted, crashed out) never restarts: replace it.
            delete_if_present(&pods, &pod_name).await?;
            Outcome {
                phase: WorkspacePhase::Starting,
                message: Some("replacing a stopped pod".into()),
                problems: vec![],
                url,
            }
        }
        (true, Some(pod)) => {
            let outcome = starting_outcome(&pod, home, url);
            match idle_check(ws, &desired, &outcome) {
                IdleCheck::Active(Some(wake)) => next = Action::requeue(wake),
                IdleCheck::Active(None) => {}
                IdleCheck::Idle(timeout) => return stop_idle(ctx, ws, &pods, &pod_name, timeout).await,
            }
            outcome
        }
        (true, None) => match create_pod(client, &pods, &desired).await? {
            Ok(pod) => starting_outcome(&pod, home, url),
            Err(kube::Error::Api(status)) if status.is_forbidden() && status.message.contains("exceeded quota") => {
                Outcome {
                    phase: WorkspacePhase::Pending,
                    message: Some(format!("waiting for team capacity: {}", status.message)),
                    problems: vec![("QuotaExceeded", status.message.clone())],
                    url,
                }
            }
            // The old pod is still going away (or our copy is behind); the pod's next change
            // triggers another reconcile.
            Err(kube::Error::Api(status)) if status.is_already_exists() => Outcome {
                phase: WorkspacePhase::Starting,
                message: Some("waiting for the previous pod to stop".into()),
                problems: vec![],
                url,
            },
            Err(source) => return Err(Error::Apply { kind: "Pod".into(), name: pod_name, source }),
        },
        (false, Some(pod)) => {
            if pod.meta().deletion_timestamp.is_none() {
                delete_if_present(&pods, &pod_name).await?;
            }
            Outcome {
                phase: WorkspacePhase::Stopping,
                message: Some("stopping the desktop; the home volume stays".into()),
                problems: vec![],
                url: None,
            }
        }
        (false, None) => Outcome { phase: WorkspacePhase::Stopped, message: None, problems: vec![], url: None },
    };
    apply_if_changed(client, &owned.services, &render::render_service(&desired)).await?;
    apply_route(ctx, &desired).await?;
    if let Some(later) = write_status(ctx, ws, outcome).await? {
        next = Action::requeue(later);
    }
    Ok(next)
}

/// Where a workspace with a pod stands. Until its home volume is bound the pod can only wait for
/// it, so that is what the workspace says, rather than "waiting for a node" or the scheduler's
/// complaints about a claim it has not seen bound yet; scheduling problems count once it is.
fn starting_outcome(pod: &Pod, home_bound: bool, url: Option<String>) -> Outcome {
    let (phase, mut message, mut problems) = render::pod_phase_summary(Some(pod));
    if phase == WorkspacePhase::Starting && !home_bound {
        problems.retain(|(reason, _)| *reason != "Unschedulable");
        if problems.is_empty() {
            message = Some(render::PREPARING_HOME.into());
        }
    }
    Outcome { phase, message, problems, url }
}

/// Applies the Ingress, or the HTTPRoute when workspaces are routed through a Gateway (then an
/// Ingress left from before is removed).
async fn apply_route(ctx: &Context, desired: &DesiredWorkspace) -> Result<()> {
    let client = &ctx.client;
    let ingress = render::render_ingress(desired, &ctx.route);
    match (&ctx.route.gateway, &ctx.owned.http_routes) {
        (Some(gateway), Some(routes)) => {
            apply_if_changed(client, routes, &render::render_http_route(desired, &ctx.route, gateway)).await?;
            if cached(&ctx.owned.ingresses, &ingress).is_some() {
                let api: Api<Ingress> = Api::namespaced(client.clone(), &desired.namespace);
                delete_if_present(&api, &render::ingress_name(&desired.name)).await?;
            }
        }
        _ => {
            apply_if_changed(client, &ctx.owned.ingresses, &ingress).await?;
        }
    }
    Ok(())
}

enum IdleCheck {
    /// In use (or never culled); look again after this long, if ever.
    Active(Option<Duration>),
    /// No input for the template's idle timeout.
    Idle(Duration),
}

/// Whether a running desktop has gone without input for its template's idle timeout.
fn idle_check(ws: &Workspace, desired: &DesiredWorkspace, outcome: &Outcome) -> IdleCheck {
    let Some(timeout) = desired.idle_timeout else {
        return IdleCheck::Active(None);
    };
    if outcome.phase != WorkspacePhase::Running {
        return IdleCheck::Active(None);
    }
    // Running since the last status write; a desktop that just became Running starts its clock now.
    let previous = ws.status.as_ref().filter(|s| s.phase == WorkspacePhase::Running);
    let started = previous.and_then(|s| s.started_at.as_ref()).map(|t| t.0).unwrap_or_else(Timestamp::now);
    let activity = ws.annotations().get(LAST_ACTIVITY_ANNOTATION).map(String::as_str);
    let Some(deadline) = idle::idle_deadline(Some(timeout), Some(started), activity) else {
        return IdleCheck::Active(None);
    };
    match deadline.duration_since(Timestamp::now()).as_secs() {
        remaining if remaining > 0 => IdleCheck::Active(Some(Duration::from_secs(remaining as u64 + 1))),
        _ => IdleCheck::Idle(timeout),
    }
}

/// Stops an idle desktop: `spec.running: false` (under the idle culler's field manager, so the
/// portal shows it stopped and a start is an ordinary start), the pod deleted, an Event saying why.
async fn stop_idle(
    ctx: &Context,
    ws: &Workspace,
    pods: &Api<Pod>,
    pod_name: &str,
    timeout: Duration,
) -> Result<Action> {
    let api: Api<Workspace> = Api::namespaced(ctx.client.clone(), &ws.namespace().unwrap_or_default());
    let patch = Patch::Merge(json!({ "spec": { "running": false } }));
    api.patch(&ws.name_any(), &PatchParams::apply(IDLE_CULLER), &patch).await.map_err(|source| Error::Apply {
        kind: "Workspace".into(),
        name: ws.name_any(),
        source,
    })?;
    delete_if_present(pods, pod_name).await?;
    let message =
        format!("stopped after {} without keyboard or pointer input; the home volume stays", idle::describe(timeout));
    tracing::info!(workspace = %key(ws), %message, "idle desktop stopped");
    publish(ctx, ws, EventType::Normal, "IdleStopped", message).await;
    Ok(Action::await_change())
}

/// The team (from the namespace) and template of a workspace, from the watched copies, validated.
fn load_and_validate(ws: &Workspace, owned: &Owned, ns: &str) -> std::result::Result<DesiredWorkspace, Invalid> {
    let Some(team_name) = ns.strip_prefix("team-") else {
        return Err(Invalid::new(
            "NotInTeamNamespace",
            format!("namespace {ns:?} is not a team namespace (team-<name>)"),
        ));
    };
    let Some(team) = owned.teams.get(&ObjectRef::new(team_name)) else {
        return Err(Invalid::new("TeamNotFound", format!("team {team_name:?} does not exist")));
    };
    let template = owned.templates.get(&ObjectRef::new(&ws.spec.template));
    render::validate(ws, template.as_deref(), &team)
}

/// Creates the VNC password Secret once; an existing password is never changed.
async fn ensure_secret(client: &Client, d: &DesiredWorkspace) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &d.namespace);
    let name = render::vnc_secret_name(&d.name);
    if secrets.get_opt(&name).await.map_err(Error::List)?.is_some() {
        return Ok(());
    }
    match secrets.create(&PostParams::default(), &render::render_vnc_secret(d, &generate_password())).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
        Err(source) => Err(Error::Apply { kind: "Secret".into(), name, source }),
    }
}

/// Creates the desktop pod. Quota admission updates the team's ResourceQuota with optimistic
/// concurrency, so pods created at the same moment in one team can be refused with a conflict
/// that says nothing about capacity; those are retried at once, a few times, with a little jitter.
///
/// The VNC password Secret the pod reads is made sure of first (created once; it only matters
/// when a pod is about to start, so running desktops cost no Secret reads).
async fn create_pod(client: &Client, pods: &Api<Pod>, desired: &DesiredWorkspace) -> Result<kube::Result<Pod>> {
    ensure_secret(client, desired).await?;
    let pod = render::render_pod(desired);
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match pods.create(&PostParams::default(), &pod).await {
            Err(kube::Error::Api(status)) if status.is_conflict() && attempt < ATTEMPTS => {
                let mut jitter = [0u8; 1];
                getrandom::fill(&mut jitter).expect("the operating system's random generator works");
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt) + u64::from(jitter[0] % 50))).await;
                attempt += 1;
            }
            result => return Ok(result),
        }
    }
}

fn pod_finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed")) && pod.meta().deletion_timestamp.is_none()
}

/// Problems read off the pod, which its own Events already tell.
const POD_PROBLEMS: [&str; 4] = ["Unschedulable", "ImagePullFailed", "CrashLoopBackOff", "PodFailed"];

/// Condition types the reconciler owns besides Ready; absent ones are reported False.
const PROBLEM_TYPES: [&str; 4] = ["QuotaExceeded", "Unschedulable", "ImagePullFailed", "CrashLoopBackOff"];

fn status_conditions(ws: &Workspace, outcome: &Outcome, now: &Time) -> Vec<Condition> {
    let previous = ws.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = ws.meta().generation;
    let running = outcome.phase == WorkspacePhase::Running;
    let (ready_reason, ready_message) = match outcome.problems.first() {
        Some((reason, message)) => (*reason, message.clone()),
        None if running => ("DesktopReady", "the desktop answers".to_string()),
        None => ("NotRunning", outcome.message.clone().unwrap_or_else(|| format!("{:?}", outcome.phase))),
    };
    let mut out = vec![conditions::condition(previous, "Ready", running, ready_reason, ready_message, generation, now)];
    for type_ in PROBLEM_TYPES {
        let found = outcome.problems.iter().find(|(r, _)| *r == type_);
        let (status, message) = match found {
            Some((_, m)) => (true, m.clone()),
            None => (false, String::new()),
        };
        out.push(conditions::condition(
            previous,
            type_,
            status,
            if status { type_ } else { "None" },
            message,
            generation,
            now,
        ));
    }
    // Validation problems (TemplateNotFound, OverTeamLimit, ...) are carried by Ready.
    out
}

/// Writes the status when it changed, and an Event when the workspace runs into a new problem.
///
/// A change of the message alone while the desktop is starting (its stages: volume, node,
/// container, ...) is written once the new stage has lasted [`STAGE_SETTLE`]: stages that pass
/// in a blink (scheduled, then running a moment later) neither flicker on the page nor cost a
/// write each. Phases and conditions are written at once. Returns when to look again if a write
/// was put off.
async fn write_status(ctx: &Context, ws: &Workspace, outcome: Outcome) -> Result<Option<Duration>> {
    let now = Time(Timestamp::now());
    let previous = ws.status.clone().unwrap_or_default();
    let started_at = match outcome.phase {
        WorkspacePhase::Running => {
            previous.started_at.clone().filter(|_| previous.phase == WorkspacePhase::Running).or(Some(now.clone()))
        }
        _ => None,
    };
    let status = WorkspaceStatus {
        phase: outcome.phase,
        message: outcome.message.clone(),
        url: outcome.url.clone(),
        started_at,
        observed_generation: ws.meta().generation,
        conditions: status_conditions(ws, &outcome, &now),
    };
    if ws.status.as_ref() == Some(&status) {
        return Ok(None);
    }
    // Conditions compared by type, status and reason: Ready's message repeats the stage.
    let gist = |c: &Condition| (c.type_.clone(), c.status.clone(), c.reason.clone());
    let stage_only = ws.status.as_ref().is_some_and(|old| {
        old.phase == status.phase
            && matches!(status.phase, WorkspacePhase::Creating | WorkspacePhase::Starting)
            && old.conditions.iter().map(gist).eq(status.conditions.iter().map(gist))
    });
    if stage_only && let Some(wait) = ctx.stages.unsettled(&key(ws), status.message.as_deref().unwrap_or_default()) {
        return Ok(Some(wait));
    }
    let api: Api<Workspace> = Api::namespaced(ctx.client.clone(), &ws.namespace().unwrap_or_default());
    api.patch_status(
        &ws.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(json!({ "apiVersion": "deskpod.io/v1alpha1", "kind": "Workspace", "status": status })),
    )
    .await
    .map_err(|source| Error::Apply { kind: "Workspace status".into(), name: ws.name_any(), source })?;
    ctx.stages.forget(&key(ws));
    if status.phase == WorkspacePhase::Running && previous.phase != WorkspacePhase::Running {
        let pod = ctx
            .owned
            .pods
            .get(&ObjectRef::new(&render::pod_name(&ws.name_any())).within(&ws.namespace().unwrap_or_default()));
        if let (Some(created), Some(ready)) =
            (pod.and_then(|p| p.metadata.creation_timestamp.clone()), &status.started_at)
        {
            ctx.metrics.became_ready(created.0, ready.0);
        }
    }

    // The controller's own decisions get an Event; what the pod goes through (scheduling, image
    // pulls, crashes) already has Events on the pod from the scheduler and the kubelet.
    let ready_reason = |conditions: &[Condition]| {
        conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.reason.clone()).unwrap_or_default()
    };
    if let Some((reason, message)) = outcome.problems.first()
        && !POD_PROBLEMS.contains(reason)
        && ready_reason(&previous.conditions) != *reason
    {
        publish(ctx, ws, EventType::Warning, reason, message.clone()).await;
    }
    Ok(None)
}

/// How long a starting desktop's new stage must last before it is written.
const STAGE_SETTLE: Duration = Duration::from_millis(500);

/// Stage messages waiting to settle: workspace key → (message, since when).
#[derive(Default)]
struct Stages(std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>);

impl Stages {
    /// How much longer `message` must last for `key` before it is written; `None`: write it now.
    fn unsettled(&self, key: &str, message: &str) -> Option<Duration> {
        let mut stages = self.0.lock().expect("stages");
        if let Some((pending, since)) = stages.get(key)
            && pending == message
        {
            return STAGE_SETTLE.checked_sub(since.elapsed()).filter(|d| !d.is_zero());
        }
        // Entries of workspaces that went away are dropped with the next new stage of another.
        stages.retain(|_, (_, since)| since.elapsed() < Duration::from_secs(60));
        stages.insert(key.to_string(), (message.to_string(), std::time::Instant::now()));
        Some(STAGE_SETTLE)
    }

    /// The status was written: nothing waits any more.
    fn forget(&self, key: &str) {
        self.0.lock().expect("stages").remove(key);
    }
}

/// Publishes an Event on the Workspace; failing to is logged, never fatal.
async fn publish(ctx: &Context, ws: &Workspace, type_: EventType, reason: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(error) = ctx.recorder.publish(&event, &ws.object_ref(&())).await {
        tracing::warn!(workspace = %key(ws), %error, "publishing an event failed");
    }
}

/// Bounded backoff for transient failures.
fn error_policy(ws: Arc<Workspace>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(CONTROLLER, error.category());
    let (failures, delay) = ctx.failures.failed(key(&ws));
    tracing::warn!(workspace = %key(&ws), %error, failures, retry_in = ?delay, "workspace reconcile failed");
    Action::requeue(delay)
}

/// Runs the Workspace controller until the process is told to stop.
pub async fn run(client: Client, route: RouteSettings, metrics: Metrics) {
    run_with_teams_from(client.clone(), client, route, metrics).await
}

/// Runs the Workspace controller against `client`'s cluster (a member cluster), reading Teams
/// and WorkspaceTemplates from `teams_client`'s (the management cluster, where they live).
pub async fn run_with_teams_from(client: Client, teams_client: Client, route: RouteSettings, metrics: Metrics) {
    let (pods, pod_changes) = watch_labelled(&client, render::WORKSPACE_LABEL);
    let (volumes, volume_changes) = watch_labelled(&client, render::WORKSPACE_LABEL);
    let (services, service_changes) = watch_labelled(&client, render::WORKSPACE_LABEL);
    let (ingresses, ingress_changes) = watch_labelled(&client, render::WORKSPACE_LABEL);
    let (http_routes, route_changes) = match route.gateway {
        Some(_) => {
            let (store, changes) = watch_labelled::<HTTPRoute>(&client, render::WORKSPACE_LABEL);
            (Some(store), Some(changes))
        }
        None => (None, None),
    };
    // Only spec changes of teams and templates concern workspaces (a team's status moves with
    // every pod that starts).
    let (teams, team_changes) = watch_all::<Team>(&teams_client);
    let team_changes = team_changes.predicate_filter(predicates::generation, Default::default());
    let (templates, template_changes) = watch_all::<WorkspaceTemplate>(&teams_client);
    let template_changes = template_changes.predicate_filter(predicates::generation, Default::default());
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context {
        client: client.clone(),
        route,
        metrics,
        failures: Backoff::default(),
        recorder: Recorder::new(client.clone(), reporter),
        stages: Stages::default(),
        owned: Owned { pods, volumes, services, ingresses, http_routes, teams, templates },
    });

    // A starting pod changes several times within a second (bound, scheduled, running, ready);
    // a short debounce merges the changes that come together; the deferred stage messages
    // (`Stages`) keep the status writes down for the rest.
    let config = kube::runtime::controller::Config::default().debounce(WORKSPACE_DEBOUNCE);
    let mut controller =
        Controller::new(Api::<Workspace>::all(client.clone()), watcher::Config::default()).with_config(config);
    let store = controller.store();
    ctx.metrics.watch_workspaces(store.clone());
    // A team's workspaces are checked again when the team changes (limits, members), and a
    // template's when it changes or appears.
    let in_team = {
        let store = store.clone();
        move |team: Team| {
            let ns = Some(crate::team::render::namespace_name(&team.name_any()));
            store
                .state()
                .into_iter()
                .filter(|ws| ws.namespace() == ns)
                .map(|ws| ObjectRef::from_obj(&*ws))
                .collect::<Vec<_>>()
        }
    };
    let using_template = {
        let store = store.clone();
        move |template: WorkspaceTemplate| {
            let name = template.name_any();
            store
                .state()
                .into_iter()
                .filter(|ws| ws.spec.template == name)
                .map(|ws| ObjectRef::from_obj(&*ws))
                .collect::<Vec<_>>()
        }
    };
    // A quota that frees capacity (a pod stopped) wakes the team's waiting workspaces.
    let waiting_in_namespace = move |quota: ResourceQuota| {
        let ns = quota.namespace();
        store
            .state()
            .into_iter()
            .filter(|ws| ws.namespace() == ns)
            .filter(|ws| ws.status.as_ref().is_some_and(|s| s.phase == WorkspacePhase::Pending))
            .map(|ws| ObjectRef::from_obj(&*ws))
            .collect::<Vec<_>>()
    };
    controller = controller
        .owns_stream(pod_changes)
        .owns_stream(volume_changes)
        .owns_stream(service_changes)
        .owns_stream(ingress_changes)
        .watches_stream(team_changes, in_team)
        .watches_stream(template_changes, using_template)
        .watches(
            Api::<ResourceQuota>::all(client.clone()),
            watcher::Config::default().labels(TEAM_LABEL),
            waiting_in_namespace,
        );
    if let Some(changes) = route_changes {
        controller = controller.owns_stream(changes);
    }
    controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "workspace controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_random_and_unambiguous() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.len(), PASSWORD_LEN);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() && !"0O1lI".contains(c)), "{a}");
    }
}
