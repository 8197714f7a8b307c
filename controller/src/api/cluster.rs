//! `Cluster`: a member cluster that teams can be placed on (`Team.spec.placement.cluster`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Kubernetes cluster Deskpod manages teams on, besides the one the controller runs in.
///
/// The controller connects with the kubeconfig in the named Secret (in the namespace it is told,
/// `--cluster-secret-namespace`), installs the Workspace and CiAgent CRDs there, runs the
/// Workspace and CiAgent controllers against it and probes its API server every few seconds.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "deskpod.io",
    version = "v1alpha1",
    kind = "Cluster",
    doc = "A member cluster that teams can be placed on.",
    status = "ClusterStatus",
    shortname = "dpc",
    category = "deskpod",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.kubernetesVersion"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// The Secret holding a kubeconfig for the cluster. It lives in the namespace the controller
    /// reads cluster credentials from (`--cluster-secret-namespace`, by default deskpod-system),
    /// so the controller needs no access to Secrets anywhere else for this.
    pub kubeconfig_secret: KubeconfigSecretRef,
}

/// Where a member cluster's kubeconfig is.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the kubeconfig in the Secret's data.
    #[serde(default = "default_kubeconfig_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".into()
}

/// What the controller last saw of a member cluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// Ready: the API server answered the last probe. Reasons when not: SecretNotFound,
    /// InvalidKubeconfig, Unreachable.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The Kubernetes version the API server reports (`/version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// When the status last changed after a probe (probes that change nothing are not written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
