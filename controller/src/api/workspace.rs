//! `Workspace`: one engineer's desktop, with a home volume that outlives its pod.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

/// A desktop workspace in a team namespace.
///
/// The controller gives it a home PersistentVolumeClaim, a Secret with its VNC password, a Pod
/// running the template's image, a Service and a route (Ingress or HTTPRoute). `running: false`
/// removes the pod and keeps the home volume.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "deskpod.io",
    version = "v1alpha1",
    kind = "Workspace",
    doc = "A desktop workspace with a persistent home volume.",
    namespaced,
    status = "WorkspaceStatus",
    shortname = "ws",
    category = "deskpod",
    validation = Rule::new(schema::NAME_RULE).message(schema::NAME_MESSAGE),
    printcolumn(name = "Owner", type_ = "string", json_path = ".spec.owner"),
    printcolumn(name = "Template", type_ = "string", json_path = ".spec.template"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.message"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSpec {
    /// The portal user this workspace belongs to.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("owner cannot be changed"))]
    pub owner: String,
    /// Name of the WorkspaceTemplate to run.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("template cannot be changed; create a new workspace"))]
    pub template: String,
    /// Whether the desktop should be running. `false` stops it and keeps the home volume.
    #[serde(default = "default_running")]
    pub running: bool,
    /// Resources for this workspace, overriding the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<super::TemplateResources>,
    /// The persistent home volume.
    #[serde(default)]
    pub home: HomeVolume,
}

fn default_running() -> bool {
    true
}

/// The workspace's home directory volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HomeVolume {
    /// Size of the volume; the template's `homeSize` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    pub size: Option<Quantity>,
    /// StorageClass of the volume; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// What happens to the volume when the Workspace is deleted.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
}

/// What happens to the home volume when its Workspace is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReclaimPolicy {
    /// The volume is deleted with the Workspace.
    #[default]
    Delete,
    /// The volume is kept (and can be given to a new Workspace by an admin).
    Retain,
}

/// Where a workspace stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WorkspacePhase {
    /// Accepted, nothing created yet.
    #[default]
    Pending,
    /// Creating the home volume, secret and pod.
    Creating,
    /// The pod exists; waiting for scheduling, the image and the desktop.
    Starting,
    /// The desktop answers.
    Running,
    /// `running: false`; the pod is going away.
    Stopping,
    /// No pod; the home volume is kept.
    Stopped,
    /// Cannot run until something changes; the message says what.
    Failed,
}

/// What the controller last saw of a workspace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    /// Where the workspace stands.
    #[serde(default)]
    pub phase: WorkspacePhase,
    /// One line for people: why it is not running yet, or what it is waiting for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Where the desktop is reached in the browser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// When the current pod's desktop became ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, QuotaExceeded, Unschedulable, ImagePullFailed and friends.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
