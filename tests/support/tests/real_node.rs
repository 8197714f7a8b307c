//! Pods on the test cluster's real node (`testcluster up --real-node`): a kubelet with
//! containerd and CNI that runs containers, unlike the kwok nodes. These tests run when
//! `DESKPOD_REAL_NODE=1` (`DESKPOD_REAL_NODE=1 tests/run` starts the cluster with the real node
//! and imports deskpod/desktop-python and deskpod/ci-agent into it); otherwise they return at once.
//! Pods reach the node by selecting `deskpod.io/node=real` and tolerating the
//! `deskpod.io/real-node` taint; each test's namespace enforces Pod Security `restricted`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use deskpod_testsupport::{TestCluster, TestNamespace, wait_for};
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, LogParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const NODE: &str = "deskpod-real-node";
/// Starting a container from an imported image takes seconds; the desktop takes longer.
const START: Duration = Duration::from_secs(180);

fn enabled() -> bool {
    if std::env::var("DESKPOD_REAL_NODE").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipped: set DESKPOD_REAL_NODE=1 (with a cluster started by `testcluster up --real-node`)");
    false
}

/// A namespace that enforces Pod Security `restricted`, as Team namespaces do, on a cluster
/// whose real node is Ready.
async fn restricted_namespace(prefix: &str) -> TestNamespace {
    let cluster = TestCluster::shared();
    let ns = cluster.namespace(prefix).await.expect("test namespace");
    let nodes: Api<Node> = Api::all(ns.client.clone());
    let node = nodes.get_opt(NODE).await.expect("get node");
    assert!(node.is_some(), "DESKPOD_REAL_NODE=1 but the test cluster has no node {NODE}: start it with --real-node");
    let namespaces: Api<Namespace> = Api::all(ns.client.clone());
    let labels = json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    namespaces.patch(&ns.name, &PatchParams::default(), &Patch::Merge(&labels)).await.expect("label namespace");
    ns
}

/// A pod for the real node that the `restricted` profile admits.
fn real_node_pod(name: &str, image: &str, command: Option<&[&str]>, extra: Value) -> Pod {
    let mut container = json!({
        "name": "main",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
    });
    if let Some(cmd) = command {
        container["command"] = json!(cmd);
    }
    merge(&mut container, extra.get("container").cloned().unwrap_or(Value::Null));
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"deskpod.io/node": "real"},
            "tolerations": [{"key": "deskpod.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
            "securityContext": {
                "runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
        },
    });
    merge(&mut pod["spec"], extra.get("spec").cloned().unwrap_or(Value::Null));
    serde_json::from_value(pod).expect("pod manifest")
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

fn running(pod: Option<&Pod>) -> bool {
    pod.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn finished(pod: Option<&Pod>) -> bool {
    matches!(pod.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// Sends one HTTP/1.1 request to the pod and returns the status line (blocking I/O, so run it
/// off the async runtime). Retries until the server accepts the connection or `deadline`.
fn http_status_line(addr: SocketAddr, request: &str, deadline: Instant) -> String {
    loop {
        let attempt = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(request.as_bytes())?;
            let mut buf = [0u8; 512];
            let n = stream.read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string())
        });
        match attempt {
            Ok(line) if !line.is_empty() => return line,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
            other => panic!("no HTTP answer from {addr}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn desktop_image_runs_on_the_real_node_and_serves_novnc_on_the_pod_ip() {
    if !enabled() {
        return;
    }
    let ns = restricted_namespace("real-desktop").await;
    let pods: Api<Pod> = ns.api();
    let pod = real_node_pod(
        "desktop",
        "deskpod/desktop-python:latest",
        None,
        json!({"container": {
            "env": [{"name": "VNC_PW", "value": "real-node-test-pw"}],
            "ports": [{"containerPort": 6901, "name": "novnc"}],
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
        }}),
    );
    pods.create(&PostParams::default(), &pod).await.expect("create desktop pod");
    let pod = wait_for(&pods, "desktop", "desktop pod Running", START, running).await.expect("desktop pod Running");
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some(NODE));
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("pod IP");
    let addr: SocketAddr = format!("{ip}:6901").parse().expect("pod IP:port");

    let deadline = Instant::now() + Duration::from_secs(90);
    let (page, upgrade) = tokio::task::spawn_blocking(move || {
        let page = http_status_line(addr, "GET / HTTP/1.1\r\nHost: desktop\r\nConnection: close\r\n\r\n", deadline);
        let upgrade = http_status_line(
            addr,
            "GET /websockify HTTP/1.1\r\nHost: desktop\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            deadline,
        );
        (page, upgrade)
    })
    .await
    .expect("HTTP client thread");
    assert!(page.starts_with("HTTP/1.1 200"), "GET / on {addr}: {page}");
    assert!(upgrade.starts_with("HTTP/1.1 101"), "websocket upgrade on {addr}: {upgrade}");
    pods.delete("desktop", &DeleteParams::default()).await.expect("delete desktop pod");
}

#[tokio::test]
async fn restricted_namespace_rejects_a_privileged_pod_for_the_real_node() {
    if !enabled() {
        return;
    }
    let ns = restricted_namespace("real-psa").await;
    let pods: Api<Pod> = ns.api();
    let pod = real_node_pod(
        "privileged",
        "deskpod/ci-agent:latest",
        Some(&["sleep", "60"]),
        json!({"container": {"securityContext": {"privileged": true}}}),
    );
    let err = pods.create(&PostParams::default(), &pod).await.expect_err("a privileged pod must be rejected");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(status.message.contains("violates PodSecurity \"restricted"), "{}", status.message);
            assert!(status.message.contains("privileged"), "{}", status.message);
        }
        other => panic!("expected a Forbidden answer, got {other:?}"),
    }
    // The same pod without `privileged` is admitted and runs: the rejection was the profile's.
    let admitted = real_node_pod(
        "unprivileged",
        "deskpod/ci-agent:latest",
        Some(&["true"]),
        json!({"spec": {"restartPolicy": "Never"}}),
    );
    pods.create(&PostParams::default(), &admitted).await.expect("restricted pod admitted");
    let done = wait_for(&pods, "unprivileged", "pod finished", START, finished).await.expect("pod finished");
    assert_eq!(done.status.and_then(|s| s.phase).as_deref(), Some("Succeeded"));
}

#[tokio::test]
async fn a_container_past_its_memory_limit_is_oom_killed() {
    if !enabled() {
        return;
    }
    let ns = restricted_namespace("real-oom").await;
    let pods: Api<Pod> = ns.api();
    // `tail` keeps the current line in memory; /dev/zero has no newline, so it grows until the
    // 64Mi limit. `exec` makes it the container's main process.
    let pod = real_node_pod(
        "hog",
        "deskpod/ci-agent:latest",
        Some(&["sh", "-c", "echo allocating; exec tail /dev/zero"]),
        json!({
            "spec": {"restartPolicy": "Never"},
            "container": {"resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}},
        }),
    );
    pods.create(&PostParams::default(), &pod).await.expect("create hog pod");
    let pod = wait_for(&pods, "hog", "hog pod finished", START, finished).await.expect("hog pod finished");
    let status = pod.status.expect("status");
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let terminated = status
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .expect("terminated state");
    assert_eq!(terminated.reason.as_deref(), Some("OOMKilled"), "{terminated:?}");
    assert_eq!(terminated.exit_code, 137, "{terminated:?}");
}

#[tokio::test]
async fn pod_logs_come_from_the_real_container_running_as_the_pods_user() {
    if !enabled() {
        return;
    }
    let ns = restricted_namespace("real-logs").await;
    let pods: Api<Pod> = ns.api();
    let pod = real_node_pod(
        "talker",
        "deskpod/ci-agent:latest",
        Some(&["sh", "-c", "echo \"uid=$(id -u) gid=$(id -g)\"; echo line-two >&2"]),
        json!({"spec": {"restartPolicy": "Never"}}),
    );
    pods.create(&PostParams::default(), &pod).await.expect("create pod");
    let pod = wait_for(&pods, "talker", "pod finished", START, finished).await.expect("pod finished");
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Succeeded"));
    // Through the API server to the kubelet's /containerLogs, like `kubectl logs`.
    let logs = pods.logs("talker", &LogParams::default()).await.expect("pod logs");
    // Standard output and error are separate pipes: their lines may interleave either way.
    let mut lines: Vec<&str> = logs.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["line-two", "uid=1000 gid=1000"], "{logs:?}");
}

#[tokio::test]
async fn claims_bind_and_mount_on_the_real_node() {
    if !enabled() {
        return;
    }
    let ns = restricted_namespace("real-pvc").await;
    let claims: Api<PersistentVolumeClaim> = ns.api();
    for (name, class) in [("home", Some("real-node")), ("standard", None)] {
        let mut claim = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        });
        if let Some(class) = class {
            claim["spec"]["storageClassName"] = json!(class);
        }
        claims
            .create(&PostParams::default(), &serde_json::from_value(claim).expect("claim"))
            .await
            .expect("create claim");
    }
    let pods: Api<Pod> = ns.api();
    // The real-node class gives a directory the pod's user can write; the default class's
    // hostPath directory (root-owned, 0750) mounts but is not writable by uid 1000.
    let pod = real_node_pod(
        "writer",
        "deskpod/ci-agent:latest",
        Some(&[
            "sh",
            "-c",
            "echo kept > /home-vol/file && cat /home-vol/file && test -d /std-vol && \
                           ! touch /std-vol/file 2>/dev/null && echo std-mounted",
        ]),
        json!({
            "spec": {"restartPolicy": "Never", "volumes": [
                {"name": "home", "persistentVolumeClaim": {"claimName": "home"}},
                {"name": "std", "persistentVolumeClaim": {"claimName": "standard"}},
            ]},
            "container": {"volumeMounts": [
                {"name": "home", "mountPath": "/home-vol"}, {"name": "std", "mountPath": "/std-vol"},
            ]},
        }),
    );
    pods.create(&PostParams::default(), &pod).await.expect("create pod");
    let pod = wait_for(&pods, "writer", "pod finished", START, finished).await.expect("pod finished");
    let logs = pods.logs("writer", &LogParams::default()).await.unwrap_or_default();
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Succeeded"), "logs: {logs}");
    assert_eq!(logs, "kept\nstd-mounted\n");
}

#[tokio::test]
async fn pods_reach_the_api_server_as_their_service_account_at_the_kubernetes_service() {
    if !enabled() {
        return;
    }
    let ns = restricted_namespace("real-api").await;
    let pods: Api<Pod> = ns.api();
    // As in-cluster clients do: the address and port kubelet gives, the token and CA it mounts;
    // the answer says who the API server took the caller for.
    let script = r#"sa=/var/run/secrets/kubernetes.io/serviceaccount
curl -sS --fail-with-body --max-time 20 --cacert "$sa/ca.crt" -H "Authorization: Bearer $(cat "$sa/token")" \
  -H 'Content-Type: application/json' -X POST \
  -d '{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}' \
  "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/apis/authentication.k8s.io/v1/selfsubjectreviews""#;
    let pod = real_node_pod(
        "whoami",
        "deskpod/ci-agent:latest",
        Some(&["sh", "-c", script]),
        json!({"spec": {"restartPolicy": "Never"}}),
    );
    pods.create(&PostParams::default(), &pod).await.expect("create pod");
    let pod = wait_for(&pods, "whoami", "pod finished", START, finished).await.expect("pod finished");
    let logs = pods.logs("whoami", &LogParams::default()).await.expect("pod logs");
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Succeeded"), "curl said: {logs}");
    let review: Value = serde_json::from_str(&logs).unwrap_or_else(|e| panic!("{e}: {logs}"));
    assert_eq!(
        review["status"]["userInfo"]["username"],
        format!("system:serviceaccount:{}:default", ns.name),
        "{review}"
    );
}

#[tokio::test]
async fn pods_on_the_real_node_reach_each_other_across_its_bridge() {
    if !enabled() {
        return;
    }
    let ns = restricted_namespace("real-p2p").await;
    let pods: Api<Pod> = ns.api();
    let server = real_node_pod(
        "server",
        "deskpod/desktop-python:latest",
        Some(&["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0", "--directory", "/etc"]),
        json!({}),
    );
    pods.create(&PostParams::default(), &server).await.expect("create server");
    let server = wait_for(&pods, "server", "server running", START, running).await.expect("server runs");
    let ip = server.status.and_then(|s| s.pod_ip).expect("the server's pod IP");
    // As the portal pod reaches a desktop pod: straight to its IP, over the node's bridge.
    let fetch =
        format!("curl -sS --max-time 5 --retry 20 --retry-connrefused --retry-delay 1 http://{ip}:8080/hostname");
    let client = real_node_pod(
        "client",
        "deskpod/ci-agent:latest",
        Some(&["sh", "-c", &fetch]),
        json!({"spec": {"restartPolicy": "Never"}}),
    );
    pods.create(&PostParams::default(), &client).await.expect("create client");
    let client = wait_for(&pods, "client", "client finished", START, finished).await.expect("client finished");
    let logs = pods.logs("client", &LogParams::default()).await.expect("client logs");
    assert_eq!(client.status.and_then(|s| s.phase).as_deref(), Some("Succeeded"), "curl said: {logs}");
    assert_eq!(logs.trim(), "server", "the server pod's /etc/hostname");
}
