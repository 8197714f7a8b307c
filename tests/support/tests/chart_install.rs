//! The chart installed as an operator installs it: every manifest `helm template --include-crds`
//! renders, applied to a cluster of its own whose real node runs the controller and portal images
//! (`deskpod-images build` makes them; tests/run imports them) as pods, under Pod Security
//! `restricted`, with the chart's RBAC only. The controller pods elect a leader that reconciles a
//! Team and Workspaces; the portal pod signs its admin in and creates Workspaces through its own
//! ServiceAccount, one of them a real desktop on the real node whose VNC stream comes through the
//! portal pod; when the leading pod is deleted, another takes over at once (the leader releases
//! its Lease on SIGTERM) and reconciles the next Workspace.
//!
//! Runs when `DESKPOD_REAL_NODE=1` (as tests/run sets by default; needs root); otherwise it
//! returns at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deskpod_controller::api::{Team, Workspace, WorkspacePhase, WorkspaceTemplate};
use deskpod_testsupport::{TestCluster, helm, wait_for};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::wait::conditions;
use serde_json::{Value, json};

/// Images are imported already; pods start in seconds, but the machine is shared.
const START: Duration = Duration::from_secs(180);
const RELEASE: &str = "deskpod-system";
const ADMIN: &str = "admin@deskpod.local";
const PUBLIC_URL: &str = "http://portal.chart.test";
const CONTROLLER_IMAGE: &str = "deskpod/controller:0.1.0";
const PORTAL_IMAGE: &str = "deskpod/portal:0.1.0";
const DESKTOP_IMAGE: &str = "deskpod/desktop-python:latest";

fn enabled() -> bool {
    if std::env::var("DESKPOD_REAL_NODE").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipped: set DESKPOD_REAL_NODE=1 (root; a cluster with a real node is started for this test)");
    false
}

/// The values an operator would pass to put Deskpod's pods on the real node.
fn values(admin_password: &str) -> Value {
    let on_real_node = json!({
        "nodeSelector": { "deskpod.io/node": "real" },
        "tolerations": [{ "key": "deskpod.io/real-node", "operator": "Exists", "effect": "NoSchedule" }],
    });
    let mut controller = on_real_node.clone();
    controller["routing"] = json!({ "baseDomain": "chart.test" });
    let mut portal = on_real_node;
    portal["adminPassword"] = json!(admin_password);
    portal["publicUrl"] = json!(PUBLIC_URL);
    portal["persistence"] = json!({ "storageClass": "real-node" });
    json!({ "controller": controller, "portal": portal })
}

/// Available replicas of a Deployment, as its status says.
fn available(replicas: i32) -> impl Fn(Option<&Deployment>) -> bool {
    move |d: Option<&Deployment>| d.and_then(|d| d.status.as_ref()).and_then(|s| s.available_replicas) == Some(replicas)
}

fn running(ws: Option<&Workspace>) -> bool {
    ws.and_then(|w| w.status.as_ref()).is_some_and(|s| s.phase == WorkspacePhase::Running)
}

fn workspace(name: &str, template: &str) -> Workspace {
    serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Workspace", "metadata": { "name": name },
        "spec": { "owner": ADMIN, "template": template }
    }))
    .unwrap()
}

/// The Lease holder (identity `<pod>-<pid>`) as a pod name, if a pod of `pods` holds it.
fn holder_pod(lease: &Lease, pods: &[String]) -> Option<String> {
    let holder = lease.spec.as_ref()?.holder_identity.as_deref()?;
    pods.iter().find(|p| holder.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('-'))).cloned()
}

async fn controller_pods(pods: &Api<Pod>) -> Vec<String> {
    let selector = "app.kubernetes.io/name=deskpod,app.kubernetes.io/component=controller";
    let list = pods.list(&ListParams::default().labels(selector)).await.expect("list controller pods");
    list.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).filter_map(|p| p.metadata.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_chart_runs_a_controller_and_a_portal_that_reconcile_and_fail_over() {
    if !enabled() {
        return;
    }
    let cluster = tokio::task::spawn_blocking(|| {
        TestCluster::start_private_with_real_node(&[CONTROLLER_IMAGE, PORTAL_IMAGE, DESKTOP_IMAGE])
    })
    .await
    .unwrap()
    .expect("a cluster with a real node and the chart's images");
    let admin = cluster.admin_client().await.expect("admin client");

    // The release namespace enforces the restricted Pod Security Standard: the chart's pods must
    // pass it to exist at all.
    let namespace: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": RELEASE, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        } }
    }))
    .unwrap();
    Api::<Namespace>::all(admin.clone()).create(&PostParams::default(), &namespace).await.expect("release namespace");

    let password = format!("chart-install-{}", std::process::id());
    let values_file = std::env::temp_dir().join(format!("deskpod-chart-values-{}.yaml", std::process::id()));
    std::fs::write(&values_file, serde_yaml_ng::to_string(&values(&password)).unwrap()).expect("values file");
    let docs = helm::template(RELEASE, &["--include-crds", "-f", values_file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&values_file);

    // CRDs first (as helm installs them), established before anything may use them.
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for doc in docs.iter().filter(|d| d["kind"] == "CustomResourceDefinition") {
        helm::apply(&admin, doc).await;
        let name = doc["metadata"]["name"].as_str().expect("CRD name");
        tokio::time::timeout(
            START,
            kube::runtime::wait::await_condition(crds.clone(), name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} established"))
        .expect("watch CRD");
    }
    for doc in docs.iter().filter(|d| d["kind"] != "CustomResourceDefinition") {
        helm::apply(&admin, doc).await;
    }

    // Two controller replicas and the portal run, from the images, on the real node.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), RELEASE);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), RELEASE);
    let started = Instant::now();
    for (name, replicas) in [("deskpod-controller", 2), ("deskpod-portal", 1)] {
        let waited = wait_for(&deployments, name, "replicas available", START, available(replicas)).await;
        if let Err(e) = waited {
            panic!("{e}\n{}", describe_pods(&pods).await);
        }
    }
    eprintln!("chart's pods available {:.1} s after apply", started.elapsed().as_secs_f64());
    for pod in pods.list(&ListParams::default()).await.expect("list pods").items {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("deskpod-real-node"), "{:?}", pod.metadata.name);
    }

    // One of the two leads.
    let replicas = controller_pods(&pods).await;
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    let leases: Api<Lease> = Api::namespaced(admin.clone(), RELEASE);
    let lease = wait_for(&leases, "deskpod-controller", "a controller pod leads", START, |l: Option<&Lease>| {
        l.is_some_and(|l| holder_pod(l, &replicas).is_some())
    })
    .await
    .expect("leader");
    let leader = holder_pod(&lease, &replicas).unwrap();

    // The leader reconciles a Team and a Workspace (nothing else runs a controller here).
    let team: Team = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Team", "metadata": { "name": "apps" },
        "spec": { "quota": { "pods": 6, "cpu": "8", "memory": "16Gi", "workspaces": 6 },
                  "members": [{ "user": ADMIN, "role": "lead" }] }
    }))
    .unwrap();
    Api::<Team>::all(admin.clone()).create(&PostParams::default(), &team).await.expect("create team");
    let template: WorkspaceTemplate = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "WorkspaceTemplate", "metadata": { "name": "python" },
        "spec": { "displayName": "Python", "image": "deskpod/desktop-python:latest", "homeSize": "1Gi",
                  "resources": { "cpuRequest": "500m", "cpuLimit": "1", "memoryRequest": "512Mi", "memoryLimit": "1Gi" } }
    }))
    .unwrap();
    Api::<WorkspaceTemplate>::all(admin.clone()).create(&PostParams::default(), &template).await.expect("template");
    // The same desktop, placed on the real node: it runs there, and the portal pod reaches it.
    let real: WorkspaceTemplate = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "WorkspaceTemplate", "metadata": { "name": "python-real" },
        "spec": { "displayName": "Python (real node)", "image": DESKTOP_IMAGE, "imagePullPolicy": "IfNotPresent",
                  "homeSize": "1Gi", "homeStorageClassName": "real-node",
                  "resources": { "cpuRequest": "250m", "cpuLimit": "1", "memoryRequest": "512Mi", "memoryLimit": "1Gi" },
                  "nodeSelector": { "deskpod.io/node": "real" },
                  "tolerations": [{ "key": "deskpod.io/real-node", "operator": "Exists", "effect": "NoSchedule" }] }
    }))
    .unwrap();
    Api::<WorkspaceTemplate>::all(admin.clone()).create(&PostParams::default(), &real).await.expect("template");
    let workspaces: Api<Workspace> = Api::namespaced(admin.clone(), "team-apps");
    wait_for(
        &Api::<Namespace>::all(admin.clone()),
        "team-apps",
        "the team's namespace",
        START,
        |n: Option<&Namespace>| n.is_some(),
    )
    .await
    .expect("the chart's controller makes the team's namespace");
    // Ready once the quota is counted: on a cluster whose CRDs are seconds old, Kubernetes' quota
    // controller takes up to a minute to count Workspaces, and refuses them until then.
    wait_for(&Api::<Team>::all(admin.clone()), "apps", "Team Ready", START, |t: Option<&Team>| {
        t.and_then(|t| t.status.as_ref())
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await
    .expect("the chart's controller reports the team Ready");
    workspaces.create(&PostParams::default(), &workspace("first", "python")).await.expect("create workspace");
    wait_for(&workspaces, "first", "Workspace Running", START, running).await.expect("the chart's controller runs it");

    // The portal pod, at its pod IP: the admin signs in with the password from the values and
    // creates a Workspace, which the portal writes through its own ServiceAccount.
    let portal_pod = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=portal"))
        .await
        .expect("portal pod")
        .items
        .pop()
        .expect("a portal pod");
    let ip = portal_pod.status.and_then(|s| s.pod_ip).expect("the portal pod's IP");
    let mut portal = Session::new(SocketAddr::new(ip.parse().expect("an IP"), 8080));
    portal.sign_in(&password).await;
    let (status, templates) = portal.send(Method::GET, "/api/v1/templates", None).await;
    assert_eq!(status, StatusCode::OK, "{templates}");
    assert!(templates.contains(r#""name":"python""#), "{templates}");
    let (status, created) = portal
        .send(
            Method::POST,
            "/api/v1/workspaces",
            Some(("application/json", r#"{"team":"apps","name":"second","template":"python"}"#.into())),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    wait_for(&workspaces, "second", "the portal's Workspace Running", START, running).await.expect("runs");

    // A real desktop, asked for through the portal pod, streams its VNC banner through the
    // portal pod's websocket proxy.
    let (status, created) = portal
        .send(
            Method::POST,
            "/api/v1/workspaces",
            Some(("application/json", r#"{"team":"apps","name":"desk","template":"python-real"}"#.into())),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    wait_for(&workspaces, "desk", "the real desktop Running", START, running).await.expect("runs");
    let banner = portal.desktop_banner("/workspaces/apps/desk/websockify").await;
    assert_eq!(banner, b"RFB 003.008\n");

    // The leading pod is deleted (SIGTERM): it releases the Lease, and another pod (the standby,
    // or the Deployment's replacement if it asks first) leads well before the 15 s Lease would
    // have expired, and reconciles the next Workspace.
    let deleted = Instant::now();
    pods.delete(&leader, &DeleteParams::default()).await.expect("delete the leading pod");
    let old_identity = lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
    let lease = wait_for(&leases, "deskpod-controller", "another pod leads", START, |l: Option<&Lease>| {
        let holder = l.and_then(|l| l.spec.as_ref()).and_then(|s| s.holder_identity.as_deref());
        holder.is_some_and(|h| !h.is_empty() && h != old_identity)
    })
    .await
    .unwrap_or_else(|e| panic!("takeover: {e}"));
    let takeover = deleted.elapsed();
    let new_leader = holder_pod(&lease, &controller_pods(&pods).await);
    eprintln!("{new_leader:?} leads {:.1} s after the leader's pod was deleted", takeover.as_secs_f64());
    assert!(new_leader.is_some_and(|p| p != leader), "{lease:?}: not a live controller pod");
    assert!(takeover < Duration::from_secs(12), "takeover after {takeover:?}: the Lease was not released");
    assert_eq!(lease.spec.and_then(|s| s.lease_transitions), Some(1));
    workspaces.create(&PostParams::default(), &workspace("third", "python")).await.expect("create workspace");
    wait_for(&workspaces, "third", "Workspace Running under the new leader", START, running).await.expect("runs");
    // The Deployment replaces the deleted pod.
    wait_for(&deployments, "deskpod-controller", "2 replicas again", START, available(2)).await.expect("replaced");
}

/// Every pod of the release with its phase, container states and last log lines, for a failure
/// message.
async fn describe_pods(pods: &Api<Pod>) -> String {
    let Ok(list) = pods.list(&ListParams::default()).await else { return "(pods not listed)".into() };
    let mut out = String::new();
    for pod in &list.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = pod.status.as_ref();
        let states =
            status.and_then(|s| s.container_statuses.as_ref()).map(|c| c.iter().map(|c| &c.state).collect::<Vec<_>>());
        out += &format!(
            "{name}: {:?} {:?} {states:?}\n",
            status.and_then(|s| s.phase.as_deref()),
            status.and_then(|s| s.conditions.as_ref())
        );
        let logs = pods.logs(&name, &LogParams { tail_lines: Some(20), ..Default::default() }).await;
        out += &format!("  log: {}\n", logs.unwrap_or_else(|e| e.to_string()).replace('\n', "\n  log: "));
    }
    out
}

/// A cookie-keeping HTTP client of the portal pod.
struct Session {
    base: String,
    http: HttpClient<HttpConnector, Full<Bytes>>,
    cookies: Vec<(String, String)>,
    csrf: Option<String>,
}

impl Session {
    fn new(address: SocketAddr) -> Self {
        let http = HttpClient::builder(TokioExecutor::new()).build_http();
        Session { base: format!("http://{address}"), http, cookies: Vec::new(), csrf: None }
    }

    /// Sends a request (with a body of the given content type), retrying while the pod does not
    /// accept connections yet.
    async fn send(&mut self, method: Method, path: &str, body: Option<(&str, String)>) -> (StatusCode, String) {
        let deadline = Instant::now() + START;
        let response = loop {
            let mut request = Request::builder().method(method.clone()).uri(format!("{}{path}", self.base));
            if !self.cookies.is_empty() {
                request = request.header("cookie", self.cookie_header());
            }
            if let Some(csrf) = &self.csrf {
                request = request.header("x-csrf-token", csrf);
            }
            if let Some((content_type, _)) = &body {
                request = request.header("content-type", *content_type);
            }
            let bytes = body.as_ref().map(|(_, b)| Bytes::from(b.clone())).unwrap_or_default();
            match self.http.request(request.body(Full::new(bytes)).unwrap()).await {
                Ok(response) => break response,
                Err(e) if e.is_connect() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{method} {path}: {e}"),
            }
        };
        self.keep_cookies(response.headers());
        let status = response.status();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    fn keep_cookies(&mut self, headers: &hyper::HeaderMap) {
        for set in headers.get_all("set-cookie") {
            let pair = set.to_str().unwrap_or_default().split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else { continue };
            self.cookies.retain(|(n, _)| n != name);
            if !value.is_empty() {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    /// Signs the admin in through the form, then keeps the page's CSRF token for API writes.
    async fn sign_in(&mut self, password: &str) {
        let (status, page) = self.send(Method::GET, "/signin", None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let form = serde_urlencoded::to_string([
            ("csrf", field(&page, r#"name="csrf" value=""#).as_str()),
            ("email", ADMIN),
            ("password", password),
        ])
        .unwrap();
        let (status, _) = self.send(Method::POST, "/signin", Some(("application/x-www-form-urlencoded", form))).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "signing in with the password from the values");
        let (_, home) = self.send(Method::GET, "/", None).await;
        self.csrf = Some(field(&home, r#"<meta name="csrf-token" content=""#));
    }

    /// The first message of the desktop's websocket through the portal, sent as the browser
    /// would: the session cookie and the portal's own Origin.
    async fn desktop_banner(&self, path: &str) -> Vec<u8> {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
        let url = format!("{}{path}", self.base.replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().expect("a websocket request");
        request.headers_mut().insert("cookie", self.cookie_header().parse().expect("a cookie header"));
        request.headers_mut().insert("origin", PUBLIC_URL.parse().expect("an origin"));
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("the desktop websocket");
        let first = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("a first message in time");
        match first {
            Some(Ok(Message::Binary(banner))) => banner.to_vec(),
            other => panic!("no banner through the portal: {other:?}"),
        }
    }
}

fn field(html: &str, marker: &str) -> String {
    let start = html.find(marker).unwrap_or_else(|| panic!("no {marker} in {html}")) + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}
