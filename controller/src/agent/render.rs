//! The pod a CiAgent stands for, computed from the agent, its template and its team (no I/O), and
//! what that pod says about how far the job has come.
//!
//! [`validate`] resolves what the agent runs (its image or its template's, command, environment,
//! resources) and checks it against the team's per-agent limits, so an agent that can never run
//! is failed at once instead of waiting in the queue. [`render_pod`] then returns the complete pod;
//! [`observe`] reads a pod back into the agent's phase, exit code and times.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::{Resource, ResourceExt};

use crate::api::{CiAgent, CiAgentPhase, ImagePullPolicy, Team, TemplateResources, WorkspaceTemplate};
use crate::quantity;
use crate::team::render::{MANAGED_BY, TEAM_LABEL, WORKSPACE_SERVICE_ACCOUNT};
use crate::workspace::render::{Invalid, Scheduling};

/// Label on every agent pod: the CiAgent's name.
pub const AGENT_LABEL: &str = "deskpod.io/ciagent";
/// Name of the job's container in the agent pod.
pub const AGENT_CONTAINER: &str = "agent";
/// Image a Jenkins inbound agent runs when the CiAgent names neither image nor template.
pub const JENKINS_IMAGE: &str = "deskpod/ci-agent:latest";
/// User and group the job runs as (the ci-agent image's `agent` user); the restricted Pod
/// Security Standard forbids root.
pub const AGENT_UID: i64 = 1000;
/// Annotations of the CiAgent under these prefixes stay off the pod (kubectl's bookkeeping).
const PRIVATE_ANNOTATION_PREFIXES: [&str; 1] = ["kubectl.kubernetes.io/"];

/// The agent's pod: `<agent>-agent`. One fixed name, so however often the controller runs (or is
/// restarted), an agent never gets a second pod.
pub fn pod_name(agent: &str) -> String {
    format!("{agent}-agent")
}

/// The team a namespace belongs to: `team-<name>` → `<name>`.
pub fn team_of_namespace(namespace: &str) -> Option<&str> {
    namespace.strip_prefix("team-").filter(|t| !t.is_empty())
}

/// Everything [`render_pod`] needs, resolved from a CiAgent, its template and its team.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredAgent {
    pub name: String,
    pub namespace: String,
    pub team: String,
    /// Controller reference to the CiAgent, so the pod goes when the agent is deleted.
    pub owner_reference: Option<OwnerReference>,
    /// Copied from the CiAgent (see [`PRIVATE_ANNOTATION_PREFIXES`]).
    pub annotations: BTreeMap<String, String>,
    pub image: String,
    pub image_pull_policy: String,
    pub command: Option<Vec<String>>,
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
    /// A limit left unset takes the request's value.
    pub resources: TemplateResources,
    /// Stop the job this long after its pod was created.
    pub deadline: Option<Duration>,
    /// The template's node selector and tolerations (none without a template).
    pub scheduling: Scheduling,
}

/// Resolves what a CiAgent runs and checks it against its team's limits.
///
/// The image is the agent's, else its template's, else (Jenkins mode) [`JENKINS_IMAGE`]. The
/// environment is the template's, then the agent's (which wins on a name clash), then in Jenkins
/// mode `JENKINS_URL`, `JENKINS_AGENT_NAME` and `JENKINS_SECRET` (read from the named Secret by
/// the kubelet; the controller never reads it). Resources are the agent's, else the template's.
pub fn validate(agent: &CiAgent, template: Option<&WorkspaceTemplate>, team: &Team) -> Result<DesiredAgent, Invalid> {
    let spec = &agent.spec;
    let template = match (&spec.template, template) {
        (Some(name), None) => {
            return Err(Invalid::new(
                "TemplateNotFound",
                format!("template {name:?} does not exist; `kubectl get workspacetemplates` lists those that do"),
            ));
        }
        (Some(_), Some(t)) => Some(&t.spec),
        (None, _) => None,
    };
    let image = spec
        .image
        .clone()
        .or_else(|| template.map(|t| t.image.clone()))
        .or_else(|| spec.jenkins.as_ref().map(|_| JENKINS_IMAGE.to_string()))
        .ok_or_else(|| Invalid::new("NoImage", "set image or template".into()))?;
    let pull_policy = match template.and_then(|t| t.image_pull_policy).unwrap_or(ImagePullPolicy::IfNotPresent) {
        ImagePullPolicy::Always => "Always",
        ImagePullPolicy::IfNotPresent => "IfNotPresent",
        ImagePullPolicy::Never => "Never",
    };

    let mut env: Vec<EnvVar> = Vec::new();
    let mut set = |name: &str, value: Option<String>, value_from: Option<EnvVarSource>| {
        env.retain(|e| e.name != name);
        env.push(EnvVar { name: name.into(), value, value_from });
    };
    for e in template.map(|t| t.env.as_slice()).unwrap_or_default().iter().chain(&spec.env) {
        set(&e.name, Some(e.value.clone()), None);
    }
    if let Some(jenkins) = &spec.jenkins {
        set("JENKINS_URL", Some(jenkins.url.clone()), None);
        set("JENKINS_AGENT_NAME", Some(jenkins.agent_name.clone()), None);
        let secret = SecretKeySelector {
            name: jenkins.secret_ref.name.clone(),
            key: jenkins.secret_ref.key.clone(),
            optional: Some(false),
        };
        set("JENKINS_SECRET", None, Some(EnvVarSource { secret_key_ref: Some(secret), ..Default::default() }));
    }

    let own = spec.resources.clone().or_else(|| template.map(|t| t.resources.clone())).unwrap_or_default();
    let resources = TemplateResources {
        cpu_limit: own.cpu_limit.clone().or_else(|| own.cpu_request.clone()),
        memory_limit: own.memory_limit.clone().or_else(|| own.memory_request.clone()),
        ..own
    };
    let limits = &team.spec.limits;
    check_resource("CPU", &resources.cpu_request, &resources.cpu_limit, &limits.max_cpu)?;
    check_resource("memory", &resources.memory_request, &resources.memory_limit, &limits.max_memory)?;

    let deadline = spec
        .deadline
        .as_deref()
        .map(|d| crate::duration::parse(d).map_err(|e| Invalid::new("InvalidDuration", format!("deadline: {e}"))))
        .transpose()?;
    let annotations = agent
        .annotations()
        .iter()
        .filter(|(k, _)| !PRIVATE_ANNOTATION_PREFIXES.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(DesiredAgent {
        name: agent.name_any(),
        namespace: agent.namespace().unwrap_or_default(),
        team: team.name_any(),
        owner_reference: agent.controller_owner_ref(&()),
        annotations,
        image,
        image_pull_policy: pull_policy.into(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env,
        resources,
        deadline,
        scheduling: Scheduling::of(template),
    })
}

/// A request must not be above its limit, and the limit not above the team's per-agent maximum.
fn check_resource(
    name: &str,
    request: &Option<Quantity>,
    limit: &Option<Quantity>,
    max: &Option<Quantity>,
) -> Result<(), Invalid> {
    let parse = |what: &str, q: &Quantity| {
        quantity::parse_quantity(q).map_err(|e| Invalid::new("InvalidQuantity", format!("{name} {what}: {e}")))
    };
    let request_m = request.as_ref().map(|q| parse("request", q)).transpose()?;
    let limit_m = limit.as_ref().map(|q| parse("limit", q)).transpose()?;
    if let (Some(r), Some(l), Some(rq), Some(lq)) = (request_m, limit_m, request, limit)
        && r > l
    {
        return Err(Invalid::new("RequestAboveLimit", format!("{name} request {} is above the limit {}", rq.0, lq.0)));
    }
    if let (Some(l), Some(lq), Some(max_q)) = (limit_m, limit, max) {
        let max_m = parse("maximum of the team", max_q)?;
        if l > max_m {
            return Err(Invalid::new(
                "OverTeamLimit",
                format!("{name} limit {} exceeds the team's maximum of {} per agent", lq.0, max_q.0),
            ));
        }
    }
    Ok(())
}

fn resource_requirements(r: &TemplateResources) -> ResourceRequirements {
    let map = |entries: [(&str, &Option<Quantity>); 2]| {
        entries.into_iter().filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v))).collect::<BTreeMap<_, _>>()
    };
    let requests = map([("cpu", &r.cpu_request), ("memory", &r.memory_request)]);
    let limits = map([("cpu", &r.cpu_limit), ("memory", &r.memory_limit)]);
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        claims: None,
    }
}

/// Labels of an agent's pod.
pub fn labels(d: &DesiredAgent) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TEAM_LABEL.to_string(), d.team.clone()),
        (AGENT_LABEL.to_string(), d.name.clone()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
    ])
}

/// The agent's pod, owned by the CiAgent, meeting the restricted Pod Security Standard.
///
/// It runs once (`restartPolicy: Never`) as [`WORKSPACE_SERVICE_ACCOUNT`] without an API token,
/// as [`AGENT_UID`], with every capability dropped. `activeDeadlineSeconds` is the deadline too, so
/// the kubelet stops an overdue job even while the controller is down.
pub fn render_pod(d: &DesiredAgent) -> Pod {
    let container = Container {
        name: AGENT_CONTAINER.into(),
        image: Some(d.image.clone()),
        image_pull_policy: Some(d.image_pull_policy.clone()),
        command: d.command.clone(),
        args: (!d.args.is_empty()).then(|| d.args.clone()),
        env: (!d.env.is_empty()).then(|| d.env.clone()),
        resources: Some(resource_requirements(&d.resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { add: None, drop: Some(vec!["ALL".into()]) }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&d.name)),
            namespace: Some(d.namespace.clone()),
            labels: Some(labels(d)),
            annotations: (!d.annotations.is_empty()).then(|| d.annotations.clone()),
            owner_references: d.owner_reference.clone().map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some(WORKSPACE_SERVICE_ACCOUNT.into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            restart_policy: Some("Never".into()),
            termination_grace_period_seconds: Some(10),
            active_deadline_seconds: d.deadline.map(|t| t.as_secs().max(1) as i64),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(AGENT_UID),
                run_as_group: Some(AGENT_UID),
                fs_group: Some(AGENT_UID),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
                ..Default::default()
            }),
            node_selector: d.scheduling.node_selector.clone(),
            tolerations: d.scheduling.tolerations.clone(),
            containers: vec![container],
            ..Default::default()
        }),
        status: None,
    }
}

/// Whether a pod no longer runs (and no longer counts against the team's capacity).
pub fn pod_finished(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// What an agent's pod says about the job.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub phase: CiAgentPhase,
    pub exit_code: Option<i32>,
    pub started_at: Option<Time>,
    pub finished_at: Option<Time>,
    pub message: Option<String>,
}

/// Container waiting reasons that keep a job from ever starting by themselves.
const STUCK: [&str; 5] =
    ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"];

/// Reads an agent's pod: `Pending` is Starting (with what it waits for), `Running` Running,
/// `Succeeded` Succeeded, `Failed` Failed with the container's exit code, or TimedOut when the
/// kubelet stopped it at its `activeDeadlineSeconds`.
pub fn observe(pod: &Pod) -> Observed {
    let status = pod.status.clone().unwrap_or_default();
    let container = status.container_statuses.iter().flatten().find(|c| c.name == AGENT_CONTAINER);
    let state = container.and_then(|c| c.state.as_ref());
    let terminated = state.and_then(|s| s.terminated.as_ref());
    let started_at = state
        .and_then(|s| s.running.as_ref().and_then(|r| r.started_at.clone()))
        .or_else(|| terminated.and_then(|t| t.started_at.clone()))
        .or_else(|| status.start_time.clone());
    let finished_at = terminated.and_then(|t| t.finished_at.clone());
    let exit_code = terminated.map(|t| t.exit_code);
    let observed = |phase, message: Option<String>| Observed {
        phase,
        exit_code,
        started_at: started_at.clone(),
        finished_at: finished_at.clone(),
        message,
    };
    match status.phase.as_deref().unwrap_or("Pending") {
        "Succeeded" => observed(CiAgentPhase::Succeeded, Some("the job succeeded".into())),
        "Failed" if status.reason.as_deref() == Some("DeadlineExceeded") => Observed {
            exit_code: None,
            ..observed(CiAgentPhase::TimedOut, Some("the job ran past its deadline and was stopped".into()))
        },
        "Failed" => {
            let message = match (exit_code, &status.reason, &status.message) {
                (Some(code), _, _) => format!("the job exited with code {code}"),
                (None, reason, message) => {
                    let why = [reason.as_deref(), message.as_deref()].into_iter().flatten().collect::<Vec<_>>();
                    format!(
                        "the pod failed: {}",
                        if why.is_empty() { "no reason given".into() } else { why.join(": ") }
                    )
                }
            };
            observed(CiAgentPhase::Failed, Some(message))
        }
        "Running" => observed(CiAgentPhase::Running, None),
        _ => {
            let waiting = state.and_then(|s| s.waiting.as_ref());
            let message = match waiting {
                Some(w) if STUCK.contains(&w.reason.as_deref().unwrap_or_default()) => format!(
                    "{}: {}",
                    w.reason.as_deref().unwrap_or_default(),
                    w.message.as_deref().unwrap_or("the container cannot start")
                ),
                _ if status.conditions.iter().flatten().any(|c| c.type_ == "PodScheduled" && c.status == "True") => {
                    "starting the container".into()
                }
                _ => "waiting for a node".into(),
            };
            Observed { exit_code: None, finished_at: None, ..observed(CiAgentPhase::Starting, Some(message)) }
        }
    }
}

/// When an agent's deadline passes: its pod's creation plus the deadline.
pub fn deadline_at(pod: &Pod, deadline: Duration) -> Option<k8s_openapi::jiff::Timestamp> {
    let created = pod.metadata.creation_timestamp.as_ref()?.0;
    created.checked_add(k8s_openapi::jiff::SignedDuration::try_from(deadline).ok()?).ok()
}
