//! The test cluster behaves like Kubernetes where Deskpod depends on it: quota admission, the
//! scheduler, simulated nodes that run pods, and RBAC for client-certificate users.

use std::collections::BTreeMap;
use std::time::Duration;

use deskpod_testsupport::{TestCluster, client_from_kubeconfig, wait_for};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceQuota, ResourceQuotaSpec, ResourceRequirements};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

const WAIT: Duration = Duration::from_secs(60);

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect()
}

fn pod(name: &str, resources: Option<ResourceRequirements>) -> Pod {
    Pod {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("deskpod/test:never-pulled".into()),
                resources,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn requests(cpu: &str, memory: &str) -> Option<ResourceRequirements> {
    let r = quantities(&[("cpu", cpu), ("memory", memory)]);
    Some(ResourceRequirements { requests: Some(r.clone()), limits: Some(r), ..Default::default() })
}

#[tokio::test]
async fn resource_quota_rejects_pods_without_requests_and_admits_pods_with_requests() {
    let ns = TestCluster::shared().namespace("quota").await.expect("test namespace");
    let quotas: Api<ResourceQuota> = ns.api();
    let pods: Api<Pod> = ns.api();

    let hard = quantities(&[
        ("requests.cpu", "1"),
        ("requests.memory", "1Gi"),
        ("limits.cpu", "1"),
        ("limits.memory", "1Gi"),
        ("pods", "5"),
    ]);
    quotas
        .create(
            &PostParams::default(),
            &ResourceQuota {
                metadata: ObjectMeta { name: Some("team".into()), ..Default::default() },
                spec: Some(ResourceQuotaSpec { hard: Some(hard.clone()), ..Default::default() }),
                ..Default::default()
            },
        )
        .await
        .expect("create quota");
    // Admission refuses every pod until the quota controller has computed the quota's status.
    wait_for(&quotas, "team", "quota status computed", WAIT, |q: Option<&ResourceQuota>| {
        q.and_then(|q| q.status.as_ref()).and_then(|s| s.hard.as_ref()).is_some_and(|h| h.len() == hard.len())
    })
    .await
    .expect("quota controller runs");

    let err = pods.create(&PostParams::default(), &pod("no-requests", None)).await.expect_err("rejected by quota");
    let kube::Error::Api(status) = err else { panic!("expected an API error, got {err}") };
    assert_eq!(status.code, 403, "{status:?}");
    assert!(
        status.message.contains("failed quota: team: must specify") && status.message.contains("requests.cpu"),
        "unexpected message: {}",
        status.message
    );

    let err =
        pods.create(&PostParams::default(), &pod("too-big", requests("2", "256Mi"))).await.expect_err("over the quota");
    let kube::Error::Api(status) = err else { panic!("expected an API error, got {err}") };
    assert!(status.message.contains("exceeded quota: team"), "unexpected message: {}", status.message);

    pods.create(&PostParams::default(), &pod("with-requests", requests("500m", "256Mi")))
        .await
        .expect("a pod with requests inside the quota is admitted");
    let running = wait_for(&pods, "with-requests", "pod Running", WAIT, |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await
    .expect("the pod is scheduled and runs");
    let node = running.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    assert!(node.starts_with("kwok-node-"), "scheduled to a simulated node, got {node:?}");
    let ip = running.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "the pod has an IP, got {ip:?}");

    wait_for(&quotas, "team", "quota usage counted", WAIT, |q: Option<&ResourceQuota>| {
        q.and_then(|q| q.status.as_ref())
            .and_then(|s| s.used.as_ref())
            .and_then(|u| u.get("requests.cpu"))
            .is_some_and(|cpu| cpu.0 == "500m")
    })
    .await
    .expect("the quota controller counts the running pod");
}

#[tokio::test]
async fn client_certificate_users_are_subject_to_rbac() {
    let cluster = TestCluster::shared();
    let ns = cluster.namespace("rbac").await.expect("test namespace");
    let kubeconfig = cluster.user_kubeconfig("carol", &["deskpod:engineers"]).expect("mint user");
    let carol = client_from_kubeconfig(&kubeconfig).await.expect("carol's client");
    let carols_pods: Api<Pod> = Api::namespaced(carol, &ns.name);

    let err = carols_pods.list(&ListParams::default()).await.expect_err("no permission yet");
    let kube::Error::Api(status) = err else { panic!("expected an API error, got {err}") };
    assert_eq!(status.code, 403);
    assert!(status.message.contains(r#"User "carol" cannot list resource "pods""#), "{}", status.message);

    let roles: Api<Role> = ns.api();
    roles
        .create(
            &PostParams::default(),
            &Role {
                metadata: ObjectMeta { name: Some("pod-reader".into()), ..Default::default() },
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec!["".into()]),
                    resources: Some(vec!["pods".into()]),
                    verbs: vec!["list".into()],
                    ..Default::default()
                }]),
            },
        )
        .await
        .expect("create role");
    let bindings: Api<RoleBinding> = ns.api();
    bindings
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: ObjectMeta { name: Some("engineers-read-pods".into()), ..Default::default() },
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: "pod-reader".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "Group".into(),
                    name: "deskpod:engineers".into(),
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .expect("create binding");

    // RBAC takes effect through the authorizer's informer: wait until the binding is honoured.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match carols_pods.list(&ListParams::default()).await {
            Ok(_) => break,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("the group binding never took effect: {e}"),
        }
    }
}

#[tokio::test]
async fn claims_bind_on_the_default_storage_class_and_pods_using_them_run() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let ns = TestCluster::shared().namespace("pvc").await.expect("test namespace");
    let claims: Api<PersistentVolumeClaim> = ns.api();
    let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "home" },
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } }
    }))
    .unwrap();
    claims.create(&PostParams::default(), &claim).await.expect("create claim");
    let bound = wait_for(&claims, "home", "claim Bound", WAIT, |c: Option<&PersistentVolumeClaim>| {
        c.and_then(|c| c.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some("Bound")
    })
    .await
    .expect("the default StorageClass provisions a volume");
    let volume = bound.spec.as_ref().and_then(|s| s.volume_name.clone()).expect("bound to a volume");

    let pods: Api<Pod> = ns.api();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "uses-home" },
        "spec": {
            "containers": [{ "name": "c", "image": "deskpod/test:never-pulled",
                             "volumeMounts": [{ "name": "home", "mountPath": "/home/user" }] }],
            "volumes": [{ "name": "home", "persistentVolumeClaim": { "claimName": "home" } }]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.expect("create pod");
    wait_for(&pods, "uses-home", "pod with a claim Running", WAIT, |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await
    .expect("a pod whose claim is bound is scheduled and runs");

    pods.delete("uses-home", &Default::default()).await.expect("delete pod");
    deskpod_testsupport::wait_deleted(&pods, "uses-home", "pod gone", WAIT).await.expect("pod deleted");
    claims.delete("home", &Default::default()).await.expect("delete claim");
    let volumes: Api<PersistentVolume> = Api::all(ns.client.clone());
    deskpod_testsupport::wait_deleted(&volumes, &volume, "volume reclaimed", WAIT)
        .await
        .expect("the Delete reclaim policy removes the volume with its claim");
}
