//! The Helm chart (charts/deskpod) checked with real helm, built from its Go module by
//! tests/cluster/components/helm/build: it lints and renders with its default values, every pod
//! it renders runs restricted, its schema refuses bad values by name, and the RBAC it renders,
//! applied to the test cluster, is enough for the real controllers (running as the chart's
//! ServiceAccount) to reconcile a Team and a Workspace, and lets the portal's ServiceAccount do
//! its work and no more.
//!
//! Here the controllers run in-process as the chart's ServiceAccount on the shared cluster;
//! tests/chart_install.rs installs the whole chart on a cluster of its own, where the
//! Deployments run the controller and portal images on the real node.

use std::time::Duration;

use deskpod_controller::api::{Team, Workspace, WorkspacePhase, WorkspaceTemplate};
use deskpod_controller::metrics::Metrics;
use deskpod_controller::team::render::TeamSettings;
use deskpod_controller::workspace::render::{ForwardAuth, RouteMode, RouteSettings};
use deskpod_testsupport::{TestCluster, helm, repo_root, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::discovery::ApiResource;
use kube::{Client, Config};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

/// `helm template` of the chart into `namespace` with `--set` values; the rendered documents.
fn render(namespace: &str, set: &[&str]) -> Vec<Value> {
    let args: Vec<&str> = set.iter().flat_map(|value| ["--set", value]).collect();
    helm::template(namespace, &args)
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"))
}

#[test]
fn chart_lints_and_renders_restricted_pods_with_default_values() {
    let lint = helm::run(&["lint", "--strict", "charts/deskpod"]);
    assert!(lint.status.success(), "helm lint failed:\n{}", String::from_utf8_lossy(&lint.stdout));

    let docs = render("deskpod-system", &[]);
    let kinds = |kind| of_kind(&docs, kind).len();
    assert_eq!(kinds("Deployment"), 2, "the controller and the portal");
    assert_eq!(kinds("ServiceAccount"), 2);
    assert_eq!(kinds("ClusterRole"), 2);
    assert_eq!(kinds("ClusterRoleBinding"), 2);
    assert_eq!(kinds("PodDisruptionBudget"), 2);
    assert_eq!(kinds("NetworkPolicy"), 2);
    assert_eq!(kinds("ServiceMonitor"), 0, "only when serviceMonitor.enabled");
    assert_eq!(kinds("Ingress"), 0, "only when portal.ingress.enabled");
    assert_eq!(kinds("Secret"), 0, "no secrets were given");

    for deployment in of_kind(&docs, "Deployment") {
        let name = deployment["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let typed: Deployment = serde_json::from_value(deployment.clone()).expect("a valid Deployment");
        let pod = typed.spec.template.spec.expect("a pod template");
        assert_restricted(&name, &pod);
    }

    let controller = named(&docs, "Deployment", "deskpod-controller");
    assert_eq!(controller["spec"]["replicas"], 2);
    let args = controller["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    let args: Vec<String> = serde_json::from_value(args).expect("string args");
    let flag = |name: &str| args.iter().position(|a| a == name).map(|i| args[i + 1].as_str());
    assert_eq!(flag("--leader-elect"), Some("deskpod-system/deskpod-controller"));
    assert_eq!(flag("--cluster-secret-namespace"), Some("deskpod-system"), "member kubeconfigs: the release's");
    assert_eq!(flag("--admin-listen"), Some("0.0.0.0:9090"));
    let probe = &controller["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/healthz");

    let portal = &named(&docs, "Deployment", "deskpod-portal")["spec"]["template"]["spec"];
    let args: Vec<String> = serde_json::from_value(portal["containers"][0]["args"].clone()).expect("string args");
    assert!(args.windows(2).any(|w| w == ["--backend", "kubernetes"]), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["--listen", "0.0.0.0:8080"]), "{args:?}");
    assert_eq!(portal["volumes"][0]["persistentVolumeClaim"]["claimName"], "deskpod-portal-data");

    // The chart's controller ClusterRole is the file the controller tests run under, unchanged.
    let file = std::fs::read_to_string(repo_root().join("charts/deskpod/templates/controller-clusterrole.yaml"))
        .expect("controller ClusterRole");
    let file: Value = serde_yaml_ng::from_str(&file).expect("ClusterRole YAML");
    assert_eq!(named(&docs, "ClusterRole", "deskpod-controller")["rules"], file["rules"]);

    // Optional parts appear when asked for.
    let docs = render(
        "deskpod-system",
        &[
            "serviceMonitor.enabled=true",
            "portal.ingress.enabled=true",
            "portal.adminPassword=s3cret-enough",
            "portal.persistence.enabled=false",
        ],
    );
    assert_eq!(named(&docs, "ServiceMonitor", "deskpod-controller")["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(named(&docs, "Ingress", "deskpod-portal")["spec"]["rules"][0]["host"], "deskpod.localhost");
    assert_eq!(named(&docs, "Secret", "deskpod-portal")["stringData"]["DESKPOD_ADMIN_PASSWORD"], "s3cret-enough");
    let portal = &named(&docs, "Deployment", "deskpod-portal")["spec"]["template"]["spec"];
    assert_eq!(portal["volumes"][0]["emptyDir"], json!({}));
    let env = portal["containers"][0]["env"].as_array().expect("env");
    assert!(
        env.iter().any(
            |e| e["name"] == "DESKPOD_ADMIN_PASSWORD" && e["valueFrom"]["secretKeyRef"]["name"] == "deskpod-portal"
        ),
        "{env:?}"
    );
    assert_eq!(of_kind(&docs, "PersistentVolumeClaim").len(), 0);
}

/// Every container of `pod` runs as non-root, read-only, without privilege escalation, with no
/// capabilities and the runtime's seccomp profile (the restricted Pod Security Standard).
fn assert_restricted(name: &str, pod: &PodSpec) {
    let pod_context = pod.security_context.clone().unwrap_or_default();
    for container in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
        let context = container.security_context.clone().unwrap_or_default();
        let what = format!("{name}/{}", container.name);
        assert_eq!(context.run_as_non_root.or(pod_context.run_as_non_root), Some(true), "{what}: runAsNonRoot");
        assert_ne!(context.run_as_user.or(pod_context.run_as_user), Some(0), "{what}: runs as root");
        assert_eq!(context.read_only_root_filesystem, Some(true), "{what}: readOnlyRootFilesystem");
        assert_eq!(context.allow_privilege_escalation, Some(false), "{what}: allowPrivilegeEscalation");
        assert_ne!(context.privileged, Some(true), "{what}: privileged");
        let drop = context.capabilities.and_then(|c| c.drop).unwrap_or_default();
        assert_eq!(drop, ["ALL"], "{what}: capabilities.drop");
        let seccomp = context.seccomp_profile.or(pod_context.seccomp_profile.clone()).map(|s| s.type_);
        assert_eq!(seccomp.as_deref(), Some("RuntimeDefault"), "{what}: seccompProfile");
    }
}

/// The container port `name` of a Deployment's first container.
fn container_port(deployment: &Value, name: &str) -> Option<Value> {
    let ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"].as_array()?;
    ports.iter().find(|p| p["name"] == name).map(|p| p["containerPort"].clone())
}

fn args_of(deployment: &Value) -> Vec<String> {
    serde_json::from_value(deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone()).expect("args")
}

/// Whether a ServiceMonitor's `matchLabels` select a Service.
fn selects(monitor: &Value, service: &Value) -> bool {
    let wanted = monitor["spec"]["selector"]["matchLabels"].as_object().expect("matchLabels");
    wanted.iter().all(|(k, v)| &service["metadata"]["labels"][k] == v)
}

#[test]
fn metrics_listen_apart_and_the_grafana_dashboard_ships_when_asked() {
    // By default the portal serves /metrics on a port and ClusterIP Service of its own, which the
    // NetworkPolicy opens like the controller's; no dashboard ConfigMap.
    let docs = render("deskpod-system", &[]);
    let portal = named(&docs, "Deployment", "deskpod-portal");
    assert!(args_of(portal).windows(2).any(|w| w == ["--metrics-listen", "0.0.0.0:9090"]), "{:?}", args_of(portal));
    assert_eq!(container_port(portal, "metrics"), Some(json!(9090)));
    let metrics = named(&docs, "Service", "deskpod-portal-metrics");
    assert_eq!(
        metrics["spec"]["ports"],
        json!([{ "name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP" }])
    );
    let public = named(&docs, "Service", "deskpod-portal");
    assert_eq!(public["spec"]["ports"].as_array().map(Vec::len), Some(1), "the public Service has no metrics port");
    let policy = named(&docs, "NetworkPolicy", "deskpod-portal");
    let rules = policy["spec"]["ingress"].as_array().expect("ingress rules");
    assert!(rules.iter().any(|r| r["ports"][0]["port"] == "metrics"), "{rules:?}");
    assert!(of_kind(&docs, "ConfigMap").is_empty());

    // Asked for: ServiceMonitors for both, each selecting its metrics Service only, and the
    // dashboard ConfigMap for Grafana's sidecar, holding the dashboard file as it is.
    let docs = render(
        "deskpod-system",
        &[
            "serviceMonitor.enabled=true",
            "grafanaDashboard.enabled=true",
            "grafanaDashboard.annotations.grafana_folder=Deskpod",
            "portal.service.type=LoadBalancer",
        ],
    );
    assert_eq!(named(&docs, "Service", "deskpod-portal-metrics")["spec"]["type"], "ClusterIP");
    let monitor = named(&docs, "ServiceMonitor", "deskpod-portal");
    assert!(selects(monitor, named(&docs, "Service", "deskpod-portal-metrics")));
    assert!(!selects(monitor, named(&docs, "Service", "deskpod-portal")), "not the public Service");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    let controller = named(&docs, "ServiceMonitor", "deskpod-controller");
    assert!(selects(controller, named(&docs, "Service", "deskpod-controller-metrics")));
    let dashboard = named(&docs, "ConfigMap", "deskpod-grafana-dashboard");
    assert_eq!(dashboard["metadata"]["namespace"], "deskpod-system");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(dashboard["metadata"]["annotations"]["grafana_folder"], "Deskpod");
    let shipped: Value = serde_json::from_str(dashboard["data"]["deskpod.json"].as_str().expect("deskpod.json"))
        .expect("the shipped dashboard is valid JSON");
    let file = std::fs::read_to_string(repo_root().join("charts/deskpod/dashboards/deskpod.json")).expect("dashboard");
    assert_eq!(shipped, serde_json::from_str::<Value>(&file).expect("the file is JSON"), "shipped unchanged");
    assert_eq!(shipped["title"], "Deskpod");

    // Turned off, the portal has no metrics listener, Service or ServiceMonitor.
    let docs = render("deskpod-system", &["serviceMonitor.enabled=true", "portal.metrics.enabled=false"]);
    let portal = named(&docs, "Deployment", "deskpod-portal");
    assert!(!args_of(portal).contains(&"--metrics-listen".to_owned()));
    assert_eq!(container_port(portal, "metrics"), None);
    assert!(!docs.iter().any(|d| d["metadata"]["name"] == "deskpod-portal-metrics"));
    assert_eq!(of_kind(&docs, "ServiceMonitor").len(), 1, "the controller's only");
}

#[test]
fn schema_refuses_bad_values_by_name() {
    for (set, names) in [
        ("controller.replicas=two", "/controller/replicas"),
        ("controller.image.tag=1", "/controller/image/tag"),
        ("portal.backend=docker", "/portal/backend"),
        ("portal.port=-1", "/portal/port"),
        ("portal.replicas=2", "/portal/replicas"),
        ("controller.routing.routeMode=subdomain", "/controller/routing/routeMode"),
        ("controller.replica=3", "'replica' not allowed"),
        ("portal.metrics.port=0", "/portal/metrics/port"),
        ("grafanaDashboard.enabled=maybe", "/grafanaDashboard/enabled"),
        // The portal would refuse to start with these (CrashLoopBackOff); helm refuses first.
        ("portal.adminPassword=short", "/portal/adminPassword': minLength: got 5, want 12"),
        ("portal.jwtKey=tooshort", "/portal/jwtKey': minLength: got 8, want 32"),
    ] {
        let output = helm::run(&["template", "deskpod", "charts/deskpod", "--set", set]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "helm accepted --set {set}");
        assert!(stderr.contains(names), "refusing --set {set}, helm said:\n{stderr}");
    }
}

/// A client for `namespace/name`, a ServiceAccount, authenticated by a bearer token from the
/// TokenRequest API against the test cluster's API server (verified with the cluster's CA).
async fn service_account_client(admin: &Client, namespace: &str, name: &str) -> Client {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .and_then(|s| s.token)
        .expect("a token");
    let cluster = TestCluster::shared();
    let kubeconfig = Kubeconfig::read_from(&cluster.kubeconfig).expect("test kubeconfig");
    let mut config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("test cluster config");
    // The server and its CA from the test kubeconfig; the admin's client certificate is dropped.
    config.auth_info = AuthInfo { token: Some(token.into()), ..Default::default() };
    Client::try_from(config).expect("service account client")
}

/// Applies the rendered objects of `kinds` (server-side, as the admin).
async fn apply_rendered(admin: &Client, docs: &[Value], kinds: &[&str]) {
    for doc in docs.iter().filter(|d| kinds.iter().any(|k| d["kind"] == *k)) {
        helm::apply(admin, doc).await;
    }
}

/// RBAC bindings reach the authorizer through an informer; waits until `client` may list Teams.
async fn wait_until_allowed(client: &Client) {
    let teams: Api<Team> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Err(e) = teams.list(&ListParams::default().limit(1)).await {
        assert!(tokio::time::Instant::now() < deadline, "the chart's bindings never took effect: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn forbidden<T: std::fmt::Debug>(result: kube::Result<T>) -> bool {
    matches!(result, Err(kube::Error::Api(ref status)) if status.code == 403)
}

#[tokio::test]
async fn chart_rbac_lets_the_controller_and_portal_service_accounts_do_their_work() {
    let cluster = TestCluster::shared();
    let release = cluster.namespace("chart").await.expect("release namespace");
    let admin = release.client.clone();
    let docs = render(&release.name, &[]);
    apply_rendered(&admin, &docs, &["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"])
        .await;

    // The controllers, in-process, as the chart's controller ServiceAccount.
    let controller = service_account_client(&admin, &release.name, "deskpod-controller").await;
    wait_until_allowed(&controller).await;
    let settings = TeamSettings { trusted_namespaces: vec![release.name.clone()] };
    let route = RouteSettings {
        base_domain: "desk.test".into(),
        mode: RouteMode::Host,
        ingress_class: None,
        tls_secret: None,
        auth: ForwardAuth::None,
        gateway: None,
    };
    let metrics = Metrics::register(&mut prometheus_client::registry::Registry::default());
    let controllers = tokio::spawn({
        let client = controller.clone();
        async move {
            tokio::join!(
                deskpod_controller::team::reconcile::run(client.clone(), settings, metrics.clone()),
                deskpod_controller::workspace::reconcile::run(client, route, metrics)
            );
        }
    });

    // Its leader-election Lease, in the release namespace, through the chart's Role.
    let leases: Api<DynamicObject> = Api::namespaced_with(
        controller.clone(),
        &release.name,
        &ApiResource::erase::<k8s_openapi::api::coordination::v1::Lease>(&()),
    );
    let lease: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": { "name": "deskpod-controller" },
        "spec": { "holderIdentity": "chart-test" }
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.expect("the controller may take its Lease");

    let team = format!("{}-t", release.name);
    let team_ns = format!("team-{team}");
    let template = format!("{}-py", release.name);
    let team_object: Team = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Team", "metadata": { "name": team },
        "spec": { "quota": { "pods": 4, "cpu": "8", "memory": "16Gi", "workspaces": 4 } }
    }))
    .unwrap();
    Api::<Team>::all(admin.clone()).create(&PostParams::default(), &team_object).await.expect("create team");
    let template_object: WorkspaceTemplate = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "WorkspaceTemplate", "metadata": { "name": template },
        "spec": { "displayName": "Python", "image": "deskpod/python:latest", "homeSize": "1Gi",
                  "resources": { "cpuRequest": "500m", "cpuLimit": "1", "memoryRequest": "512Mi", "memoryLimit": "1Gi" } }
    }))
    .unwrap();
    Api::<WorkspaceTemplate>::all(admin.clone())
        .create(&PostParams::default(), &template_object)
        .await
        .expect("create template");

    wait_for(&Api::<Namespace>::all(admin.clone()), &team_ns, "the team's namespace", WAIT, |n: Option<&Namespace>| {
        n.is_some()
    })
    .await
    .expect("the controller, as the chart's ServiceAccount, makes the team's namespace");
    wait_for(&Api::<Team>::all(admin.clone()), &team, "Team Ready", WAIT, |t: Option<&Team>| {
        t.and_then(|t| t.status.as_ref())
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await
    .expect("the team is reconciled");

    let workspace = |name: &str| -> Workspace {
        serde_json::from_value(json!({
            "apiVersion": "deskpod.io/v1alpha1", "kind": "Workspace", "metadata": { "name": name },
            "spec": { "owner": "alice@example.com", "template": template }
        }))
        .unwrap()
    };
    let running =
        |ws: Option<&Workspace>| ws.and_then(|w| w.status.as_ref()).is_some_and(|s| s.phase == WorkspacePhase::Running);
    let workspaces: Api<Workspace> = Api::namespaced(admin.clone(), &team_ns);
    workspaces.create(&PostParams::default(), &workspace("one")).await.expect("create workspace");
    wait_for(&workspaces, "one", "Workspace Running", WAIT, running)
        .await
        .expect("the controller, as the chart's ServiceAccount, runs the workspace");

    // The portal's ServiceAccount: what the portal does, and not more.
    let portal = service_account_client(&admin, &release.name, "deskpod-portal").await;
    wait_until_allowed(&portal).await;
    let teams = Api::<Team>::all(portal.clone()).list(&ListParams::default()).await.expect("the portal lists Teams");
    assert!(teams.items.iter().any(|t| t.metadata.name.as_deref() == Some(team.as_str())));
    let portal_workspaces: Api<Workspace> = Api::namespaced(portal.clone(), &team_ns);
    portal_workspaces.create(&PostParams::default(), &workspace("two")).await.expect("the portal creates a Workspace");
    wait_for(&workspaces, "two", "the portal's Workspace Running", WAIT, running).await.expect("runs");
    Api::<Secret>::namespaced(portal.clone(), &team_ns).get("two-vnc").await.expect("the portal reads the VNC Secret");
    portal_workspaces.delete("two", &DeleteParams::background()).await.expect("the portal deletes a Workspace");

    assert!(
        forbidden(Api::<Namespace>::all(portal.clone()).delete(&team_ns, &DeleteParams::default()).await),
        "the portal may not delete namespaces"
    );
    assert!(
        forbidden(Api::<Secret>::namespaced(portal.clone(), &team_ns).list(&ListParams::default()).await),
        "the portal may not list Secrets"
    );
    assert!(
        forbidden(Api::<Pod>::namespaced(portal.clone(), &team_ns).delete("x", &DeleteParams::default()).await),
        "the portal may not delete pods"
    );
    let portal_teams: Api<Team> = Api::all(portal.clone());
    assert!(forbidden(portal_teams.delete(&team, &DeleteParams::default()).await), "the portal may not delete Teams");

    controllers.abort();
    // The cluster-scoped objects bound to this test's (namespaced) ServiceAccounts. The
    // controller's ClusterRole stays: the controller tests apply and use the same one.
    for name in ["deskpod-controller", "deskpod-portal"] {
        Api::<ClusterRoleBinding>::all(admin.clone()).delete(name, &DeleteParams::default()).await.expect("unbind");
    }
    Api::<ClusterRole>::all(admin.clone()).delete("deskpod-portal", &DeleteParams::default()).await.expect("delete");
    Api::<Team>::all(admin.clone()).delete(&team, &DeleteParams::background()).await.expect("delete team");
    Api::<WorkspaceTemplate>::all(admin.clone())
        .delete(&template, &DeleteParams::default())
        .await
        .expect("delete template");
}
