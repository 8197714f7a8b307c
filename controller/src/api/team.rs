//! `Team`: a group of engineers that shares a quota and gets an isolated namespace.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::schema;

/// A team: its members, its quota and where its namespace lives.
///
/// The controller turns a Team into a namespace `team-<name>` with a ResourceQuota, a
/// LimitRange, NetworkPolicies, RBAC bindings for each member and a ServiceAccount for its
/// workspaces.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "deskpod.io",
    version = "v1alpha1",
    kind = "Team",
    doc = "A team of engineers with a shared quota and an isolated namespace `team-<name>`.",
    status = "TeamStatus",
    shortname = "tm",
    category = "deskpod",
    validation = Rule::new(schema::NAME_RULE).message(schema::NAME_MESSAGE),
    printcolumn(name = "Namespace", type_ = "string", json_path = ".status.namespace"),
    printcolumn(name = "Cluster", type_ = "string", json_path = ".status.cluster"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.placement) == has(oldSelf.placement) && (!has(self.placement) || self.placement.cluster == oldSelf.placement.cluster)").message("placement cannot be changed: the team's namespace and home volumes stay on the cluster they are on; to move a team, delete it and create it again"))]
pub struct TeamSpec {
    /// Human-readable name shown in the portal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub display_name: Option<String>,

    /// What the whole team may use at once, enforced by a ResourceQuota on its namespace.
    #[serde(default)]
    pub quota: TeamQuota,

    /// Bounds and defaults for a single workspace or CI agent of this team.
    #[serde(default)]
    pub limits: TeamLimits,

    /// People in the team and their role.
    #[serde(default)]
    #[schemars(length(max = 500), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["user"]))]
    pub members: Vec<TeamMember>,

    /// Network isolation of the team namespace.
    #[serde(default)]
    pub network: TeamNetwork,

    /// Whether team leads (and platform admins) may open members' desktops for support.
    #[serde(default)]
    pub allow_lead_access: bool,

    /// Which cluster the team's namespace lives on. Unset: the cluster the controller runs in.
    /// Fixed once the team exists (its home volumes cannot follow it to another cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<TeamPlacement>,
}

/// The team-wide budget. Every field is optional; an unset field is not limited.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TeamQuota {
    /// CPU the team's pods may request and use in total (`requests.cpu` and `limits.cpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    pub cpu: Option<Quantity>,
    /// Memory the team's pods may request and use in total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    pub memory: Option<Quantity>,
    /// Total size of the team's persistent home volumes (`requests.storage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    pub storage: Option<Quantity>,
    /// GPUs the team may request (`requests.nvidia.com/gpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub gpus: Option<i32>,
    /// Pods at once (workspaces and CI agents together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub pods: Option<i32>,
    /// Workspaces that may exist at once, running or stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub workspaces: Option<i32>,
    /// CI agents that may run at once. More are not refused: they wait in the team's queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ci_agents: Option<i32>,
    /// CI agents that may exist at once, queued or running (`count/ciagents.deskpod.io`); past
    /// it, submitting another agent is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ci_agent_queue: Option<i32>,
}

/// Per-workspace bounds and the defaults a LimitRange applies to pods that omit resources.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TeamLimits {
    /// Largest CPU limit one workspace may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    pub max_cpu: Option<Quantity>,
    /// Largest memory limit one workspace may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    pub max_memory: Option<Quantity>,
    /// Largest home volume one workspace may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    pub max_home_size: Option<Quantity>,
    /// CPU request given to a container that sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    pub default_cpu_request: Option<Quantity>,
    /// Memory request given to a container that sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    pub default_memory_request: Option<Quantity>,
}

/// A member of a team.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TeamMember {
    /// The user's id in the portal (for local accounts, the e-mail address they sign in with).
    #[schemars(length(min = 1, max = 253))]
    pub user: String,
    /// What the member may do in the team.
    pub role: TeamRole,
    /// When the member's access ends (contractors). Their running workspaces stop then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

/// A member's role in a team.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum TeamRole {
    /// Manages members and invites, sees the team's quota and workspaces.
    Lead,
    /// Creates and uses their own workspaces.
    Engineer,
    /// Like an engineer, usually with an expiry date.
    Contractor,
}

/// Network isolation settings for a team namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TeamNetwork {
    /// Extra namespaces allowed to open connections to the team's pods, besides the portal's and
    /// the ingress controller's (configured on the controller).
    #[serde(default)]
    #[schemars(length(max = 50))]
    pub allow_ingress_from_namespaces: Vec<String>,
    /// When set, the team's pods may only connect to these destinations (and cluster DNS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 50))]
    pub egress_allow: Option<Vec<EgressRule>>,
}

/// One allowed egress destination.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    /// Destination network in CIDR notation, such as `10.20.0.0/16`.
    #[x_kube(validation = Rule::new("isCIDR(self)").message("must be a CIDR such as 10.20.0.0/16"))]
    #[schemars(length(min = 1, max = 64))]
    pub cidr: String,
    /// Destination TCP ports; empty allows every port.
    #[serde(default)]
    #[schemars(length(max = 20))]
    pub ports: Vec<PortNumber>,
}

/// A TCP port number.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(transparent)]
pub struct PortNumber(#[schemars(range(min = 1, max = 65535))] pub i32);

/// Where a team lives.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TeamPlacement {
    /// Name of a member cluster registered with Deskpod.
    #[schemars(length(min = 1, max = 63))]
    pub cluster: String,
}

/// What the controller last saw of a team.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TeamStatus {
    /// The namespace that holds the team's workspaces and agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The member cluster that namespace is on (`spec.placement.cluster`); unset: the cluster
    /// the controller runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Quota limits, mirrored from the namespace's ResourceQuota.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quota_hard: BTreeMap<String, Quantity>,
    /// Quota in use, mirrored from the namespace's ResourceQuota.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quota_used: BTreeMap<String, Quantity>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready and friends, following the Kubernetes condition conventions.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
