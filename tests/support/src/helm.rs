//! The chart (charts/deskpod) through real helm, built from its Go module by
//! tests/cluster/components/helm/build (cached in ~/.cache/deskpod), for the chart's tests.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde_json::Value;

use crate::repo_root;

/// The helm binary, built once per version.
pub fn binary() -> &'static PathBuf {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let script = repo_root().join("tests/cluster/components/helm/build");
        let output = Command::new(&script).output().expect("run tests/cluster/components/helm/build");
        assert!(output.status.success(), "building helm failed:\n{}", String::from_utf8_lossy(&output.stderr));
        PathBuf::from(String::from_utf8(output.stdout).expect("a UTF-8 path").trim())
    })
}

/// Runs helm with `args` in the repository's root.
pub fn run(args: &[&str]) -> Output {
    Command::new(binary()).args(args).current_dir(repo_root()).output().expect("run helm")
}

/// `helm template deskpod charts/deskpod --namespace <namespace> <args>`: the rendered documents.
pub fn template(namespace: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["template", "deskpod", "charts/deskpod", "--namespace", namespace];
    all.extend(args);
    let output = run(&all);
    assert!(output.status.success(), "helm template failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("UTF-8 output");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("rendered YAML parses"))
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

/// Applies one rendered document (server-side, forced, as `client`), finding its resource through
/// discovery. Panics naming the object when the API server refuses it.
pub async fn apply(client: &Client, doc: &Value) {
    let object: DynamicObject = serde_json::from_value(doc.clone()).expect("a Kubernetes object");
    let types = object.types.clone().expect("apiVersion and kind");
    let gvk = GroupVersionKind::try_from(&types).expect("a group, version and kind");
    let (resource, capabilities) =
        discovery::pinned_kind(client, &gvk).await.unwrap_or_else(|e| panic!("discovering {}: {e}", types.kind));
    let name = object.metadata.name.clone().expect("a name");
    let api: Api<DynamicObject> = match (&capabilities.scope, &object.metadata.namespace) {
        (Scope::Namespaced, Some(namespace)) => Api::namespaced_with(client.clone(), namespace, &resource),
        (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &resource),
        (Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
    };
    api.patch(&name, &PatchParams::apply("deskpod-chart-test").force(), &Patch::Apply(&object))
        .await
        .unwrap_or_else(|e| panic!("apply {} {name}: {e}", types.kind));
}
