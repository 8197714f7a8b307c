//! The Workspace reconciler: validate against template and team, apply the home volume, secret,
//! service and route, run or stop the desktop pod, and say on the Workspace where it stands.
//!
//! The pod has a fixed name and is created with a plain create, never applied: while an old pod
//! still exists (even terminating) the create fails, so a ReadWriteOnce home volume is never
//! mounted by two pods. A create refused by the team's quota is reported as QuotaExceeded with the
//! API server's message, and retried when the team's ResourceQuota changes (watched).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::render::{self, DesiredWorkspace, Invalid, RouteSettings};
use crate::api::{Team, Workspace, WorkspacePhase, WorkspaceStatus, WorkspaceTemplate};
use crate::apply::apply;
use crate::metrics::{Backoff, Metrics};
use crate::team::render::TEAM_LABEL;
use crate::{Error, FIELD_MANAGER, Result, conditions};

/// Label value of this controller's metrics.
const CONTROLLER: &str = "workspace";
/// Characters of a generated VNC password.
const PASSWORD_LEN: usize = 24;

/// What the Workspace reconciler needs.
pub struct Context {
    pub client: Client,
    pub route: RouteSettings,
    pub metrics: Metrics,
    /// Consecutive failures per Workspace (namespace/name), for the backoff.
    pub failures: Backoff,
}

impl Context {
    pub fn new(client: Client, route: RouteSettings, metrics: Metrics) -> Self {
        Context { client, route, metrics, failures: Backoff::default() }
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
pub async fn reconcile(ws: Arc<Workspace>, ctx: Arc<Context>) -> Result<Action> {
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
    let client = &ctx.client;
    let ns = ws.namespace().unwrap_or_default();
    let desired = match load_and_validate(ws, client, &ns).await? {
        Ok(d) => d,
        Err(invalid) => {
            let outcome = Outcome {
                phase: WorkspacePhase::Failed,
                message: Some(invalid.message.clone()),
                problems: vec![(invalid.reason, invalid.message)],
                url: None,
            };
            write_status(ws, client, outcome).await?;
            // Nothing to retry until the spec changes; a missing template may still appear.
            return Ok(if invalid.reason == "TemplateNotFound" {
                Action::requeue(Duration::from_secs(60))
            } else {
                Action::await_change()
            });
        }
    };

    ensure_secret(client, &desired).await?;
    apply(client, &render::render_home_pvc(&desired)).await?;
    apply(client, &render::render_service(&desired)).await?;
    apply(client, &render::render_ingress(&desired, &ctx.route)).await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod_name = render::pod_name(&desired.name);
    let pod = pods.get_opt(&pod_name).await.map_err(Error::List)?;
    let url = Some(render::url(&desired, &ctx.route));
    let outcome = match (ws.spec.running, pod) {
        (true, Some(pod)) if pod_finished(&pod) => {
            // A pod that ended (evicted, crashed out) never restarts: replace it.
            delete_pod(&pods, &pod_name).await?;
            Outcome {
                phase: WorkspacePhase::Starting,
                message: Some("replacing a stopped pod".into()),
                problems: vec![],
                url,
            }
        }
        (true, Some(pod)) => {
            let (phase, message, problems) = render::pod_phase_summary(Some(&pod));
            Outcome { phase, message, problems, url }
        }
        (true, None) => match pods.create(&PostParams::default(), &render::render_pod(&desired)).await {
            Ok(pod) => {
                let (phase, message, problems) = render::pod_phase_summary(Some(&pod));
                Outcome { phase, message, problems, url }
            }
            Err(kube::Error::Api(status)) if status.is_forbidden() && status.message.contains("exceeded quota") => {
                Outcome {
                    phase: WorkspacePhase::Pending,
                    message: Some(format!("waiting for team capacity: {}", status.message)),
                    problems: vec![("QuotaExceeded", status.message.clone())],
                    url,
                }
            }
            // The old pod is still going away; its deletion triggers another reconcile.
            Err(kube::Error::Api(status)) if status.is_already_exists() => Outcome {
                phase: WorkspacePhase::Starting,
                message: Some("waiting for the previous pod to stop".into()),
                problems: vec![],
                url,
            },
            Err(source) => return Err(Error::Apply { kind: "Pod".into(), name: pod_name, source }),
        },
        (false, Some(_)) => {
            delete_pod(&pods, &pod_name).await?;
            Outcome {
                phase: WorkspacePhase::Stopping,
                message: Some("stopping the desktop; the home volume stays".into()),
                problems: vec![],
                url: None,
            }
        }
        (false, None) => Outcome { phase: WorkspacePhase::Stopped, message: None, problems: vec![], url: None },
    };
    write_status(ws, client, outcome).await?;
    Ok(Action::await_change())
}

/// The team (from the namespace) and template of a workspace, validated. The outer error is an
/// API failure (retried); the inner one is the user's to fix (reported on the Workspace).
async fn load_and_validate(
    ws: &Workspace,
    client: &Client,
    ns: &str,
) -> Result<std::result::Result<DesiredWorkspace, Invalid>> {
    let Some(team_name) = ns.strip_prefix("team-") else {
        return Ok(Err(Invalid::new(
            "NotInTeamNamespace",
            format!("namespace {ns:?} is not a team namespace (team-<name>)"),
        )));
    };
    let Some(team) = Api::<Team>::all(client.clone()).get_opt(team_name).await.map_err(Error::List)? else {
        return Ok(Err(Invalid::new("TeamNotFound", format!("team {team_name:?} does not exist"))));
    };
    let template =
        Api::<WorkspaceTemplate>::all(client.clone()).get_opt(&ws.spec.template).await.map_err(Error::List)?;
    Ok(render::validate(ws, template.as_ref(), &team))
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

fn pod_finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed")) && pod.meta().deletion_timestamp.is_none()
}

async fn delete_pod(pods: &Api<Pod>, name: &str) -> Result<()> {
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(source) => Err(Error::Delete { kind: "Pod".into(), name: name.into(), source }),
    }
}

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

async fn write_status(ws: &Workspace, client: &Client, outcome: Outcome) -> Result<()> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let previous = ws.status.clone().unwrap_or_default();
    let started_at = match outcome.phase {
        WorkspacePhase::Running => {
            previous.started_at.filter(|_| previous.phase == WorkspacePhase::Running).or(Some(now.clone()))
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
    let api: Api<Workspace> = Api::namespaced(client.clone(), &ws.namespace().unwrap_or_default());
    api.patch_status(
        &ws.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(json!({ "apiVersion": "deskpod.io/v1alpha1", "kind": "Workspace", "status": status })),
    )
    .await
    .map_err(|source| Error::Apply { kind: "Workspace status".into(), name: ws.name_any(), source })?;
    Ok(())
}

/// Bounded backoff for transient failures.
pub fn error_policy(ws: Arc<Workspace>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(CONTROLLER, error.category());
    let (failures, delay) = ctx.failures.failed(key(&ws));
    tracing::warn!(workspace = %key(&ws), %error, failures, retry_in = ?delay, "workspace reconcile failed");
    Action::requeue(delay)
}

/// Runs the Workspace controller until the process is told to stop.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let owned = watcher::Config::default().labels(render::WORKSPACE_LABEL);
    let controller = Controller::new(Api::<Workspace>::all(client.clone()), watcher::Config::default());
    let store = controller.store();
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
    controller
        .owns(Api::<Pod>::all(client.clone()), owned.clone())
        .owns(Api::<PersistentVolumeClaim>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<Ingress>::all(client.clone()), owned)
        .watches(
            Api::<ResourceQuota>::all(client.clone()),
            watcher::Config::default().labels(TEAM_LABEL),
            waiting_in_namespace,
        )
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
