//! `CiAgent`: an ephemeral pod for one CI job, queued while its team is out of capacity.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{EnvVar, TemplateResources, schema};

/// One CI job's agent: a pod that runs a command (or a Jenkins inbound agent) to completion and is
/// removed after its TTL. When the team's quota is full the agent waits in a FIFO queue.
///
/// The controller gives the agent one pod, `<name>-agent`, once the team has room: at most
/// `quota.ciAgents` agent pods of a team run at once, and the team's ResourceQuota (pods, CPU,
/// memory) must admit the pod. Until then the agent is `Queued`, first come first served
/// (ordered by creation time, then name). Annotations of the CiAgent are copied to its pod.
/// Deleting the CiAgent cancels the job: its pod goes with it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "deskpod.io",
    version = "v1alpha1",
    kind = "CiAgent",
    doc = "An ephemeral agent pod for one CI job, queued while its team is full.",
    namespaced,
    status = "CiAgentStatus",
    shortname = "agent",
    category = "deskpod",
    validation = Rule::new("self.metadata.name.size() <= 63").message("name must be at most 63 characters"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Queue", type_ = "integer", json_path = ".status.queuePosition"),
    printcolumn(name = "Exit", type_ = "integer", json_path = ".status.exitCode"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.image) != has(self.template) || (has(self.jenkins) && !has(self.image) && !has(self.template))").message("set exactly one of image or template (a Jenkins agent may set neither: it runs deskpod/ci-agent:latest)"))]
#[x_kube(validation = Rule::new("!(has(self.jenkins) && has(self.command))").message("jenkins mode runs the inbound agent; command must not be set"))]
#[x_kube(validation = Rule::new("self == oldSelf").message("a CI agent's spec cannot change once submitted"))]
#[serde(rename_all = "camelCase")]
pub struct CiAgentSpec {
    /// Container image to run. A Jenkins agent without image or template runs
    /// `deskpod/ci-agent:latest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Or a WorkspaceTemplate whose image to run (with its pull policy, environment and, unless
    /// `resources` is set, its resources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub template: Option<String>,
    /// Command (entry point) to run; the image's own when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub command: Option<Vec<String>>,
    /// Arguments to the command.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    #[schemars(length(max = 100), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub env: Vec<EnvVar>,
    /// Run a Jenkins inbound agent instead of a command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jenkins: Option<JenkinsInbound>,
    /// CPU and memory for the job. A limit left unset takes the request's value; the team's
    /// per-agent maximums (`limits.maxCpu`, `limits.maxMemory`) apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<TemplateResources>,
    /// The job is stopped and marked TimedOut when this long has passed since its pod was created
    /// (time spent in the queue does not count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub deadline: Option<String>,
    /// How long the finished agent (and its pod's logs) is kept before both are removed; the
    /// controller's default (`--ci-agent-ttl`, 1h) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub ttl_after_finished: Option<String>,
}

/// Jenkins inbound (JNLP/websocket) agent settings, as Jenkins' Kubernetes plugin passes them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JenkinsInbound {
    /// The Jenkins controller's URL (`JENKINS_URL`).
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('http://') || self.startsWith('https://'))").message("must be an http(s) URL"))]
    #[schemars(length(max = 2048))]
    pub url: String,
    /// Agent name registered in Jenkins (`JENKINS_AGENT_NAME`).
    #[schemars(length(min = 1, max = 253))]
    pub agent_name: String,
    /// Secret (in the same namespace) and key holding `JENKINS_SECRET`.
    pub secret_ref: SecretKeyRef,
}

/// A key in a Secret of the agent's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Where a CI agent stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CiAgentPhase {
    /// Waiting for team capacity; `queuePosition` says how many are ahead.
    #[default]
    Queued,
    /// The pod exists and is starting.
    Starting,
    /// The job runs.
    Running,
    /// The job exited 0.
    Succeeded,
    /// The job exited non-zero or could not run.
    Failed,
    /// The job ran past its deadline and was stopped.
    TimedOut,
}

impl CiAgentPhase {
    /// Succeeded, Failed or TimedOut: the agent never runs again and is removed after its TTL.
    pub fn is_finished(self) -> bool {
        matches!(self, CiAgentPhase::Succeeded | CiAgentPhase::Failed | CiAgentPhase::TimedOut)
    }
}

/// What the controller last saw of a CI agent.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CiAgentStatus {
    /// Where the agent stands.
    #[serde(default)]
    pub phase: CiAgentPhase,
    /// 1 for the next agent to start in this team, while Queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i32>,
    /// The agent's pod, once it has one (`kubectl logs <podName>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The job's exit code once it finished (not set when it was stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// When the job started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// One line for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions following the Kubernetes conventions: `Admitted` says whether the agent has its
    /// pod, or why it waits (`AgentLimit`, `QuotaExceeded`) or cannot run.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
