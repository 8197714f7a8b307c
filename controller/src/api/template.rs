//! `WorkspaceTemplate`: one entry of the catalog, an environment image and how to run it.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::schema;

/// A desktop environment engineers can pick: its image, how the desktop is reached and the
/// resources a workspace made from it gets by default.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "deskpod.io",
    version = "v1alpha1",
    kind = "WorkspaceTemplate",
    doc = "A catalog entry: a desktop image and how to run it.",
    shortname = "wstpl",
    category = "deskpod",
    printcolumn(name = "Display Name", type_ = "string", json_path = ".spec.displayName"),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(name = "Protocol", type_ = "string", json_path = ".spec.protocol"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceTemplateSpec {
    /// Name shown in the catalog, such as "Python 3 with VS Code".
    #[schemars(length(min = 1, max = 100))]
    pub display_name: String,
    /// A sentence or two about what is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    pub description: Option<String>,
    /// Container image of the desktop.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// When the node pulls the image; `IfNotPresent` unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// How the browser reaches the desktop.
    #[serde(default)]
    pub protocol: DesktopProtocol,
    /// Port the desktop serves its websocket (and, for `kasm`, its web client) on.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Where the persistent home volume is mounted. Defaults to `/home/user`, or
    /// `/home/kasm-user` for the `kasm` protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('..')").message("must be an absolute path without '..'"))]
    #[schemars(length(max = 1024))]
    pub home_path: Option<String>,
    /// Resources a workspace gets unless it asks for others.
    #[serde(default)]
    pub resources: TemplateResources,
    /// Size of a new workspace's home volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    pub home_size: Option<Quantity>,
    /// StorageClass of a new workspace's home volume, unless the workspace names one; the
    /// cluster's default class when unset. An existing volume keeps the class it was made with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub home_storage_class_name: Option<String>,
    /// Node labels a node must carry to run this template's pods (a pod `nodeSelector`), such as
    /// a GPU pool or the nodes that have the image.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 20))]
    pub node_selector: BTreeMap<String, String>,
    /// Node taints this template's pods tolerate, so they may run on nodes kept for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub tolerations: Vec<Toleration>,
    /// Size of the memory-backed `/dev/shm` (browsers and IDEs need more than the default 64Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    pub shm_size: Option<Quantity>,
    /// GPUs each workspace gets.
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub gpus: i32,
    /// Environment variables for the desktop container.
    #[serde(default)]
    #[schemars(length(max = 100), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub env: Vec<EnvVar>,
    /// A workspace without keyboard or pointer input for this long is stopped (its home volume
    /// stays). Unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub idle_timeout: Option<String>,
}

fn default_port() -> i32 {
    6901
}

impl WorkspaceTemplateSpec {
    /// A template of `image` with every other field at its default, as the API server defaults
    /// a manifest that sets only `displayName` and `image`.
    pub fn new(display_name: &str, image: &str) -> Self {
        WorkspaceTemplateSpec {
            display_name: display_name.to_owned(),
            description: None,
            image: image.to_owned(),
            image_pull_policy: None,
            protocol: DesktopProtocol::default(),
            port: default_port(),
            home_path: None,
            resources: TemplateResources::default(),
            home_size: None,
            shm_size: None,
            home_storage_class_name: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            gpus: 0,
            env: Vec::new(),
            idle_timeout: None,
        }
    }
}

/// How the browser talks to the desktop.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum DesktopProtocol {
    /// Plain RFB over websocket (websockify); the portal serves the noVNC client. Deskpod's images.
    #[default]
    Novnc,
    /// Kasm workspace images as published: KasmVNC serves its own web client and websocket over
    /// HTTPS behind basic auth (`kasm_user` and the `VNC_PW` password).
    Kasm,
}

/// When the image is pulled, as in a Pod.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// CPU and memory of one workspace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateResources {
    /// CPU the scheduler reserves for the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    pub cpu_request: Option<Quantity>,
    /// Most CPU the workspace may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    pub cpu_limit: Option<Quantity>,
    /// Memory the scheduler reserves for the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    pub memory_request: Option<Quantity>,
    /// Most memory the workspace may use; past it the kernel kills its processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    pub memory_limit: Option<Quantity>,
}

/// An environment variable with a literal value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EnvVar {
    /// Variable name.
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_]*$')").message("must be a valid environment variable name"))]
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// Its value.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub value: String,
}

/// A taint a template's pods tolerate, as in a Pod's `tolerations`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.operator != 'Exists' || !has(self.value)").message("a toleration with operator Exists takes no value"))]
pub struct Toleration {
    /// The taint's key; with operator `Exists` and no key, every taint is tolerated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 316))]
    pub key: Option<String>,
    /// `Equal` (the default: key and value must match) or `Exists` (any value).
    #[serde(default)]
    pub operator: TolerationOperator,
    /// The taint's value, for `Equal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub value: Option<String>,
    /// The taint effect tolerated; every effect when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
}

/// How a toleration matches a taint's value.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TolerationOperator {
    #[default]
    Equal,
    Exists,
}

impl TolerationOperator {
    /// The value a Pod's toleration takes.
    pub fn as_str(self) -> &'static str {
        match self {
            TolerationOperator::Equal => "Equal",
            TolerationOperator::Exists => "Exists",
        }
    }
}

/// What a taint keeps away.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    /// The value a Pod's toleration takes.
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_spec_is_what_a_minimal_manifest_reads_as() {
        let read: WorkspaceTemplateSpec =
            serde_json::from_value(serde_json::json!({ "displayName": "Python", "image": "deskpod/python:latest" }))
                .unwrap();
        assert_eq!(WorkspaceTemplateSpec::new("Python", "deskpod/python:latest"), read);
    }
}
