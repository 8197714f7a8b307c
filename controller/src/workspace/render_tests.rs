//! Table tests of Workspace validation and rendering, from Workspaces, templates, teams and pods
//! written as users (and the kubelet) write them (YAML).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rstest::rstest;

use super::render::*;
use crate::api::{Team, Workspace, WorkspacePhase, WorkspaceTemplate};

fn workspace(yaml: &str) -> Workspace {
    let mut ws: Workspace = serde_yaml_ng::from_str(yaml).expect("valid Workspace YAML");
    ws.metadata.uid = Some("7d0c3a52-0000-4000-8000-000000000002".into());
    ws
}

fn template(yaml: &str) -> WorkspaceTemplate {
    serde_yaml_ng::from_str(yaml).expect("valid WorkspaceTemplate YAML")
}

fn team(yaml: &str) -> Team {
    serde_yaml_ng::from_str(yaml).expect("valid Team YAML")
}

fn pod(yaml: &str) -> Pod {
    serde_yaml_ng::from_str(yaml).expect("valid Pod YAML")
}

const PLATFORM: &str = r#"
apiVersion: deskpod.io/v1alpha1
kind: Team
metadata: { name: platform }
spec:
  limits: { maxCpu: "4", maxMemory: 8Gi, maxHomeSize: 50Gi }
"#;

const PYTHON: &str = r#"
apiVersion: deskpod.io/v1alpha1
kind: WorkspaceTemplate
metadata: { name: python }
spec:
  displayName: Python 3 with VS Code
  image: ghcr.io/deskpod/python:3.13
  resources: { cpuRequest: 500m, cpuLimit: "2", memoryRequest: 1Gi, memoryLimit: 4Gi }
  homeSize: 20Gi
  env:
    - { name: EDITOR, value: code }
    - { name: VNC_PW, value: from-the-template }
"#;

const KASM: &str = r#"
apiVersion: deskpod.io/v1alpha1
kind: WorkspaceTemplate
metadata: { name: kasm-chrome }
spec:
  displayName: Chrome
  image: kasmweb/chrome:1.16.0
  imagePullPolicy: Always
  protocol: kasm
  port: 6902
  shmSize: 2Gi
  gpus: 1
"#;

const ALICE: &str = r#"
apiVersion: deskpod.io/v1alpha1
kind: Workspace
metadata: { name: alice-py, namespace: team-platform }
spec:
  owner: alice@example.com
  template: python
"#;

/// ALICE with `spec` lines appended (indented by two spaces).
fn alice_with(spec: &str) -> Workspace {
    workspace(&format!("{ALICE}{spec}"))
}

fn desired(ws: &Workspace, tpl: &str) -> DesiredWorkspace {
    validate(ws, Some(&template(tpl)), &team(PLATFORM)).expect("valid workspace")
}

fn alice() -> DesiredWorkspace {
    desired(&workspace(ALICE), PYTHON)
}

fn host_route() -> RouteSettings {
    RouteSettings {
        base_domain: "desk.example.com".into(),
        mode: RouteMode::Host,
        ingress_class: Some("traefik".into()),
        tls_secret: None,
        auth: ForwardAuth::None,
        gateway: None,
    }
}

// ---------------------------------------------------------------------------------------------
// validate
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_template_names_the_template() {
    let ws = workspace(&ALICE.replace("template: python", "template: java"));
    let err = validate(&ws, None, &team(PLATFORM)).unwrap_err();
    assert_eq!(err.reason, "TemplateNotFound");
    assert!(err.message.starts_with(r#"template "java" does not exist"#), "{}", err.message);
}

#[rstest]
#[case::memory_limit(
    "  resources: { memoryLimit: 16Gi }",
    "memory limit 16Gi exceeds the team's maximum of 8Gi per workspace"
)]
#[case::cpu_limit("  resources: { cpuLimit: \"8\" }", "CPU limit 8 exceeds the team's maximum of 4 per workspace")]
#[case::home_size("  home: { size: 100Gi }", "home size 100Gi exceeds the team's maximum of 50Gi")]
#[case::just_over_in_other_units(
    "  resources: { memoryLimit: 8193Mi }",
    "memory limit 8193Mi exceeds the team's maximum of 8Gi per workspace"
)]
fn over_the_team_maximum_names_both_values(#[case] spec: &str, #[case] message: &str) {
    let err = validate(&alice_with(spec), Some(&template(PYTHON)), &team(PLATFORM)).unwrap_err();
    assert_eq!((err.reason, err.message.as_str()), ("OverTeamLimit", message));
}

#[rstest]
#[case::exactly_the_maximum("  resources: { memoryLimit: 8Gi }")]
#[case::same_in_mebibytes("  resources: { memoryLimit: 8192Mi }")]
#[case::millicores("  resources: { cpuLimit: 4000m }")]
#[case::home_at_maximum("  home: { size: 50Gi }")]
fn at_the_team_maximum_is_allowed(#[case] spec: &str) {
    validate(&alice_with(spec), Some(&template(PYTHON)), &team(PLATFORM)).expect("allowed");
}

#[test]
fn over_limit_from_the_template_says_so() {
    let big = PYTHON.replace("memoryLimit: 4Gi", "memoryLimit: 16Gi");
    let err = validate(&workspace(ALICE), Some(&template(&big)), &team(PLATFORM)).unwrap_err();
    assert_eq!(err.reason, "OverTeamLimit");
    assert_eq!(
        err.message,
        r#"memory limit 16Gi (from template "python") exceeds the team's maximum of 8Gi per workspace"#
    );
}

#[test]
fn over_limit_by_default_says_so() {
    let small = team(&PLATFORM.replace("maxHomeSize: 50Gi", "maxHomeSize: 5Gi"));
    let no_size = template(&PYTHON.replace("homeSize: 20Gi", ""));
    let err = validate(&workspace(ALICE), Some(&no_size), &small).unwrap_err();
    assert_eq!(err.message, "home size 10Gi (the default) exceeds the team's maximum of 5Gi");
}

#[test]
fn a_request_without_any_limit_is_held_to_the_maximum() {
    let bare = r#"
metadata: { name: bare }
spec: { displayName: Bare, image: bare:1 }
"#;
    let ws = alice_with("  resources: { memoryRequest: 12Gi }");
    let err = validate(&ws, Some(&template(bare)), &team(PLATFORM)).unwrap_err();
    assert_eq!(
        (err.reason, err.message.as_str()),
        ("OverTeamLimit", "memory request 12Gi exceeds the team's maximum of 8Gi per workspace")
    );
}

#[test]
fn a_request_above_the_limit_is_refused_before_the_api_server_does() {
    // The workspace raises the request; the template's 4Gi limit still applies field by field.
    let ws = alice_with("  resources: { memoryRequest: 6Gi }");
    let err = validate(&ws, Some(&template(PYTHON)), &team(PLATFORM)).unwrap_err();
    assert_eq!(err.reason, "RequestAboveLimit");
    assert!(
        err.message.starts_with(r#"memory request 6Gi is above the memory limit 4Gi (from template "python")"#),
        "{}",
        err.message
    );
}

#[rstest]
#[case::workspace_value("  resources: { memoryLimit: 10Gb }", "memory limit: \"10Gb\"")]
#[case::home_size("  home: { size: lots }", "home size: \"lots\"")]
fn unparsable_quantities_are_named(#[case] spec: &str, #[case] start: &str) {
    let err = validate(&alice_with(spec), Some(&template(PYTHON)), &team(PLATFORM)).unwrap_err();
    assert_eq!(err.reason, "InvalidQuantity");
    assert!(err.message.starts_with(start), "{}", err.message);
}

#[test]
fn an_unparsable_team_maximum_is_blamed_on_the_team() {
    let broken = team(&PLATFORM.replace("maxMemory: 8Gi", "maxMemory: 8GB"));
    let err = validate(&workspace(ALICE), Some(&template(PYTHON)), &broken).unwrap_err();
    assert_eq!(err.reason, "InvalidQuantity");
    assert!(err.message.starts_with("the team's maxMemory: \"8GB\""), "{}", err.message);
}

#[test]
fn a_team_without_limits_allows_anything() {
    let ws = alice_with("  resources: { cpuLimit: \"64\", memoryLimit: 1Ti }\n  home: { size: 10Ti }");
    let open = team("metadata: { name: platform }\nspec: {}");
    validate(&ws, Some(&template(PYTHON)), &open).expect("no maximums");
}

#[test]
fn workspace_values_win_over_the_template_field_by_field() {
    let ws = alice_with(
        "  resources: { cpuRequest: \"1\", memoryLimit: 6Gi }\n  home: { size: 30Gi, storageClassName: fast, reclaimPolicy: Retain }",
    );
    let d = desired(&ws, PYTHON);
    let r = &d.resources;
    let q = |q: &Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>| q.as_ref().map(|q| q.0.clone());
    assert_eq!(
        [q(&r.cpu_request), q(&r.cpu_limit), q(&r.memory_request), q(&r.memory_limit)],
        [Some("1".into()), Some("2".into()), Some("1Gi".into()), Some("6Gi".into())],
        "cpu request and memory limit from the workspace, the rest from the template"
    );
    assert_eq!(d.home_size.0, "30Gi", "over the template's 20Gi");
    assert_eq!(d.storage_class_name.as_deref(), Some("fast"));
}

#[test]
fn a_missing_limit_takes_the_request() {
    let requests_only = r#"
metadata: { name: light }
spec: { displayName: Light, image: light:1, resources: { cpuRequest: 250m, memoryRequest: 512Mi } }
"#;
    let d = desired(&workspace(ALICE), requests_only);
    assert_eq!(d.resources.cpu_limit.unwrap().0, "250m");
    assert_eq!(d.resources.memory_limit.unwrap().0, "512Mi");
}

#[rstest]
#[case::novnc(PYTHON, "/home/user")]
#[case::kasm(KASM, "/home/kasm-user")]
#[case::template_path(&PYTHON.replace("homeSize: 20Gi", "homePath: /work"), "/work")]
fn home_path_defaults_per_protocol(#[case] tpl: &str, #[case] path: &str) {
    assert_eq!(desired(&workspace(ALICE), tpl).home_path, path);
}

#[test]
fn defaults_fill_what_neither_workspace_nor_template_set() {
    let d = desired(&workspace(ALICE), &PYTHON.replace("homeSize: 20Gi", ""));
    assert_eq!(
        (d.home_size.0.as_str(), d.shm_size.0.as_str(), d.image_pull_policy.as_str(), d.port),
        ("10Gi", "1Gi", "IfNotPresent", 6901)
    );
    let k = desired(&workspace(ALICE), KASM);
    assert_eq!((k.shm_size.0.as_str(), k.image_pull_policy.as_str(), k.port), ("2Gi", "Always", 6902));
    assert_eq!(alice().home_size.0, "20Gi", "the template's size");
}

#[test]
fn desired_workspace_knows_where_it_lives_and_who_owns_it() {
    let d = alice();
    assert_eq!((d.name.as_str(), d.namespace.as_str(), d.team.as_str()), ("alice-py", "team-platform", "platform"));
    assert_eq!(d.owner, "alice@example.com");
    assert_eq!(d.image, "ghcr.io/deskpod/python:3.13");
    let owner = d.owner_reference.expect("controller reference");
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Workspace", "alice-py", Some(true)));
}

// ---------------------------------------------------------------------------------------------
// names and labels
// ---------------------------------------------------------------------------------------------

#[test]
fn object_names_follow_the_workspace_name() {
    assert_eq!(pod_name("alice-py"), "alice-py-desktop");
    assert_eq!(home_pvc_name("alice-py"), "alice-py-home");
    assert_eq!(vnc_secret_name("alice-py"), "alice-py-vnc");
    assert_eq!(service_name("alice-py"), "alice-py");
    assert_eq!(ingress_name("alice-py"), "alice-py");
}

#[rstest]
#[case("", "cbf29ce484222325")] // FNV-1a 64 test vectors
#[case("a", "af63dc4c8601ec8c")]
#[case("foobar", "85944171f73967e8")]
fn owner_hash_is_fnv1a_64_in_hex(#[case] owner: &str, #[case] hash: &str) {
    assert_eq!(owner_hash(owner), hash);
}

#[test]
fn owner_hash_is_a_valid_label_value_that_tells_owners_apart() {
    let alice = owner_hash("alice@example.com");
    assert_eq!(alice.len(), 16);
    assert!(alice.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_ne!(alice, owner_hash("bob@example.com"));
}

#[test]
fn every_object_is_labelled_and_lives_in_the_team_namespace() {
    let d = alice();
    let metas: [(&str, ObjectMeta); 5] = [
        ("pvc", render_home_pvc(&d).metadata),
        ("secret", render_vnc_secret(&d, "pw").metadata),
        ("pod", render_pod(&d).metadata),
        ("service", render_service(&d).metadata),
        ("ingress", render_ingress(&d, &host_route()).metadata),
    ];
    for (kind, meta) in metas {
        let labels = meta.labels.unwrap();
        assert_eq!(labels["deskpod.io/team"], "platform", "{kind}");
        assert_eq!(labels["deskpod.io/workspace"], "alice-py", "{kind}");
        assert_eq!(labels["deskpod.io/owner-hash"], owner_hash("alice@example.com"), "{kind}");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "deskpod-controller", "{kind}");
        assert_eq!(meta.namespace.as_deref(), Some("team-platform"), "{kind}");
    }
}

// ---------------------------------------------------------------------------------------------
// home volume and secret
// ---------------------------------------------------------------------------------------------

#[rstest]
#[case::delete_goes_with_the_workspace("Delete", true)]
#[case::retain_outlives_it("Retain", false)]
fn home_volume_is_owned_only_when_deleted_with_the_workspace(#[case] policy: &str, #[case] owned: bool) {
    let d = desired(&alice_with(&format!("  home: {{ reclaimPolicy: {policy} }}")), PYTHON);
    let pvc = render_home_pvc(&d);
    assert_eq!(pvc.metadata.name.as_deref(), Some("alice-py-home"));
    let owners = pvc.metadata.owner_references.unwrap_or_default();
    assert_eq!(owners.len(), usize::from(owned), "{owners:?}");
    if owned {
        assert_eq!((owners[0].kind.as_str(), owners[0].controller), ("Workspace", Some(true)));
    }
}

#[test]
fn home_volume_is_read_write_once_of_the_resolved_size_and_class() {
    let with_class = alice_with("  home: { storageClassName: fast }");
    let spec = render_home_pvc(&desired(&with_class, PYTHON)).spec.unwrap();
    assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
    assert_eq!(spec.resources.unwrap().requests.unwrap()["storage"].0, "20Gi");
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    let default_class = render_home_pvc(&alice()).spec.unwrap();
    assert_eq!(default_class.storage_class_name, None, "cluster default");
}

const ON_REAL_NODES: &str = r#"
  homeStorageClassName: local
  nodeSelector: { deskpod.io/node: real }
  tolerations:
    - { key: deskpod.io/real-node, value: "true", effect: NoSchedule }
    - { key: gpu, operator: Exists }
"#;

#[test]
fn the_templates_storage_class_is_the_default_and_the_workspaces_wins() {
    let python_local = format!("{PYTHON}{ON_REAL_NODES}");
    let class = |ws: &Workspace| render_home_pvc(&desired(ws, &python_local)).spec.unwrap().storage_class_name;
    assert_eq!(class(&workspace(ALICE)), Some("local".into()));
    assert_eq!(class(&alice_with("  home: { storageClassName: fast }")), Some("fast".into()));
}

#[test]
fn an_existing_home_keeps_its_class_when_the_template_changes() {
    let mut pvc = render_home_pvc(&desired(&workspace(ALICE), &format!("{PYTHON}{ON_REAL_NODES}")));
    let made_with_default = render_home_pvc(&alice());
    keep_storage_class(&mut pvc, Some(&made_with_default));
    assert_eq!(pvc.spec.as_ref().unwrap().storage_class_name, None, "made without a class: the apply leaves it alone");
    let mut existing = made_with_default.clone();
    existing.spec.as_mut().unwrap().storage_class_name = Some("standard".into());
    keep_storage_class(&mut pvc, Some(&existing));
    assert_eq!(pvc.spec.unwrap().storage_class_name.as_deref(), Some("standard"), "the class it was bound with");
}

#[test]
fn pods_go_where_the_template_says() {
    let spec = render_pod(&desired(&workspace(ALICE), &format!("{PYTHON}{ON_REAL_NODES}"))).spec.unwrap();
    assert_eq!(spec.node_selector, Some([("deskpod.io/node".to_string(), "real".to_string())].into()));
    let tolerations: Vec<_> = spec
        .tolerations
        .unwrap()
        .into_iter()
        .map(|t| (t.key.unwrap(), t.operator.unwrap(), t.value, t.effect))
        .collect();
    assert_eq!(
        tolerations,
        [
            ("deskpod.io/real-node".into(), "Equal".into(), Some("true".into()), Some("NoSchedule".into())),
            ("gpu".into(), "Exists".into(), None, None),
        ]
    );
    let anywhere = render_pod(&alice()).spec.unwrap();
    assert_eq!((anywhere.node_selector, anywhere.tolerations), (None, None), "no constraints by default");
}

#[test]
fn vnc_secret_holds_the_password_and_only_there() {
    let secret = render_vnc_secret(&alice(), "s3cret-Pa55");
    assert_eq!(secret.metadata.name.as_deref(), Some("alice-py-vnc"));
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(secret.data.as_ref().unwrap()["password"].0, b"s3cret-Pa55");
    assert_eq!(secret.string_data, None, "one place for the password");
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.controller, Some(true));
    let meta = serde_json::to_string(&secret.metadata).unwrap();
    assert!(!meta.contains("s3cret-Pa55"), "not in labels or annotations");
}

// ---------------------------------------------------------------------------------------------
// pod
// ---------------------------------------------------------------------------------------------

#[test]
fn pod_has_a_fixed_name_and_is_owned_by_the_workspace() {
    let pod = render_pod(&alice());
    assert_eq!(pod.metadata.name.as_deref(), Some("alice-py-desktop"));
    let owner = &pod.metadata.owner_references.unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Workspace", "alice-py", Some(true)));
}

#[test]
fn pod_meets_the_restricted_pod_security_standard() {
    let spec = render_pod(&alice()).spec.unwrap();
    let psc = spec.security_context.unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(1000));
    assert_eq!(psc.run_as_group, Some(1000));
    assert_eq!(psc.fs_group, Some(1000));
    assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    assert_eq!(spec.containers.len(), 1);
    let sc = spec.containers[0].security_context.clone().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    assert_eq!(sc.read_only_root_filesystem, Some(false));
    assert_eq!(sc.privileged, None);
    assert_eq!(sc.run_as_user, None, "the pod's user applies");
}

#[test]
fn pod_runs_without_api_token_or_service_links_and_restarts() {
    let spec = render_pod(&alice()).spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("deskpod-workspace"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.enable_service_links, Some(false));
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(spec.termination_grace_period_seconds, Some(10));
    assert_eq!(spec.hostname.as_deref(), Some("alice-py"));
}

#[test]
fn vnc_password_comes_from_the_secret_never_a_literal() {
    let d = alice();
    let password = "s3cret-Pa55";
    let secret = render_vnc_secret(&d, password);
    let pod = render_pod(&d);
    let env = pod.spec.as_ref().unwrap().containers[0].env.clone().unwrap();
    let vnc: Vec<_> = env.iter().filter(|e| e.name == "VNC_PW").collect();
    assert_eq!(vnc.len(), 1, "the template's literal VNC_PW is dropped");
    assert_eq!(vnc[0].value, None);
    let key_ref = vnc[0].value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
    assert_eq!((key_ref.name.as_str(), key_ref.key.as_str()), (secret.metadata.name.as_deref().unwrap(), "password"));
    assert!(secret.data.unwrap().contains_key(&key_ref.key));
    let whole_pod = serde_json::to_string(&pod).unwrap();
    assert!(!whole_pod.contains(password));
    assert!(!whole_pod.contains("from-the-template"));
    let editor = env.iter().find(|e| e.name == "EDITOR").unwrap();
    assert_eq!(editor.value.as_deref(), Some("code"), "template env kept");
}

#[test]
fn pod_mounts_the_home_volume_and_a_memory_backed_shm() {
    let spec = render_pod(&desired(&workspace(ALICE), KASM)).spec.unwrap();
    let volumes = spec.volumes.unwrap();
    let mounts = spec.containers[0].volume_mounts.clone().unwrap();
    let mount_of = |volume: &str| mounts.iter().find(|m| m.name == volume).map(|m| m.mount_path.as_str());
    let home = volumes.iter().find(|v| v.persistent_volume_claim.is_some()).unwrap();
    assert_eq!(home.persistent_volume_claim.as_ref().unwrap().claim_name, "alice-py-home");
    assert_eq!(mount_of(&home.name), Some("/home/kasm-user"));
    let shm = volumes.iter().find(|v| v.empty_dir.is_some()).unwrap();
    let empty_dir = shm.empty_dir.as_ref().unwrap();
    assert_eq!(empty_dir.medium.as_deref(), Some("Memory"));
    assert_eq!(empty_dir.size_limit.as_ref().unwrap().0, "2Gi");
    assert_eq!(mount_of(&shm.name), Some("/dev/shm"));
    assert_eq!(volumes.len(), 2);
}

#[test]
fn pod_exposes_the_vnc_port_and_is_ready_when_it_accepts_connections() {
    let spec = render_pod(&desired(&workspace(ALICE), KASM)).spec.unwrap();
    let c = &spec.containers[0];
    assert_eq!(c.image.as_deref(), Some("kasmweb/chrome:1.16.0"));
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    let port = &c.ports.as_ref().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.container_port), (Some("vnc"), 6902));
    let probe = c.readiness_probe.as_ref().unwrap();
    assert_eq!(
        probe.tcp_socket.as_ref().unwrap().port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(6902)
    );
    assert_eq!(probe.period_seconds, Some(1));
}

#[rstest]
#[case::template_resources(PYTHON, &[("cpu", "500m"), ("memory", "1Gi")], &[("cpu", "2"), ("memory", "4Gi")])]
#[case::gpu_as_a_limit(KASM, &[], &[("nvidia.com/gpu", "1")])]
fn pod_resources_are_the_resolved_ones(
    #[case] tpl: &str,
    #[case] requests: &[(&str, &str)],
    #[case] limits: &[(&str, &str)],
) {
    let spec = render_pod(&desired(&workspace(ALICE), tpl)).spec.unwrap();
    let resources = spec.containers[0].resources.clone().unwrap();
    let flat = |m: Option<std::collections::BTreeMap<String, _>>| -> Vec<(String, String)> {
        m.unwrap_or_default()
            .into_iter()
            .map(|(k, v): (String, k8s_openapi::apimachinery::pkg::api::resource::Quantity)| (k, v.0))
            .collect()
    };
    let owned = |xs: &[(&str, &str)]| -> Vec<(String, String)> {
        xs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    assert_eq!(flat(resources.requests), owned(requests));
    assert_eq!(flat(resources.limits), owned(limits));
}

// ---------------------------------------------------------------------------------------------
// service and ingress
// ---------------------------------------------------------------------------------------------

#[test]
fn service_sends_its_vnc_port_to_the_workspace_pod() {
    let d = alice();
    let service = render_service(&d);
    assert_eq!(service.metadata.name.as_deref(), Some("alice-py"));
    assert!(service.metadata.owner_references.is_some());
    let spec = service.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    let port = &spec.ports.unwrap()[0];
    assert_eq!(port.name.as_deref(), Some("vnc"));
    assert_eq!(port.port, 6901);
    assert_eq!(port.target_port, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("vnc".into())));
    let selector = spec.selector.unwrap();
    assert_eq!(selector.keys().collect::<Vec<_>>(), ["deskpod.io/team", "deskpod.io/workspace"]);
    let pod_labels = render_pod(&d).metadata.labels.unwrap();
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "selects the pod");
    let bob = desired(&workspace(&ALICE.replace("alice-py", "bob-py")), PYTHON);
    assert_ne!(render_service(&bob).spec.unwrap().selector.unwrap(), selector, "and no other workspace's");
}

#[rstest]
#[case::host(
    RouteMode::Host,
    None,
    "alice-py.platform.desk.example.com",
    "/",
    "http://alice-py.platform.desk.example.com/"
)]
#[case::host_tls(
    RouteMode::Host,
    Some("wildcard-tls"),
    "alice-py.platform.desk.example.com",
    "/",
    "https://alice-py.platform.desk.example.com/"
)]
#[case::path(
    RouteMode::Path,
    None,
    "desk.example.com",
    "/workspaces/platform/alice-py/",
    "http://desk.example.com/workspaces/platform/alice-py/"
)]
#[case::path_tls(
    RouteMode::Path,
    Some("desk-tls"),
    "desk.example.com",
    "/workspaces/platform/alice-py/",
    "https://desk.example.com/workspaces/platform/alice-py/"
)]
fn ingress_routes_the_host_or_path_to_the_service(
    #[case] mode: RouteMode,
    #[case] tls_secret: Option<&str>,
    #[case] host: &str,
    #[case] path: &str,
    #[case] expected_url: &str,
) {
    let d = alice();
    let settings = RouteSettings { mode, tls_secret: tls_secret.map(String::from), ..host_route() };
    let ingress = render_ingress(&d, &settings);
    assert_eq!(ingress.metadata.name.as_deref(), Some("alice-py"));
    assert!(ingress.metadata.owner_references.is_some());
    let spec = ingress.spec.unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("traefik"));
    let rules = spec.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].host.as_deref(), Some(host));
    let paths = &rules[0].http.as_ref().unwrap().paths;
    assert_eq!((paths[0].path.as_deref(), paths[0].path_type.as_str()), (Some(path), "Prefix"));
    let backend = paths[0].backend.service.as_ref().unwrap();
    assert_eq!(backend.name, "alice-py");
    assert_eq!(backend.port.as_ref().unwrap().name.as_deref(), Some("vnc"));
    match tls_secret {
        Some(secret) => {
            let tls = spec.tls.expect("a TLS section");
            assert_eq!(tls[0].secret_name.as_deref(), Some(secret));
            assert_eq!(tls[0].hosts, Some(vec![host.to_string()]));
        }
        None => assert_eq!(spec.tls, None),
    }
    assert_eq!(url(&d, &settings), expected_url);
}

#[rstest]
#[case::host(RouteMode::Host, "alice-py.platform.desk.example.com", "/", None)]
#[case::path_strips_its_prefix(RouteMode::Path, "desk.example.com", "/workspaces/platform/alice-py/", Some("/"))]
fn http_route_attaches_to_the_gateway_and_routes_to_the_service(
    #[case] mode: RouteMode,
    #[case] host: &str,
    #[case] prefix: &str,
    #[case] rewritten_to: Option<&str>,
) {
    let gateway = crate::gateway::ParentReference {
        namespace: Some("infra".into()),
        name: "web".into(),
        section_name: Some("https".into()),
    };
    let settings = RouteSettings { mode, gateway: Some(gateway.clone()), ..host_route() };
    let route = render_http_route(&alice(), &settings, &gateway);
    assert_eq!(route.metadata.name.as_deref(), Some("alice-py"));
    assert_eq!(route.metadata.owner_references.as_ref().map(Vec::len), Some(1), "goes with the workspace");
    assert_eq!(route.spec.parent_refs, vec![gateway]);
    assert_eq!(route.spec.hostnames, vec![host.to_string()]);
    let rule = &route.spec.rules[0];
    let matched = rule.matches[0].path.as_ref().unwrap();
    assert_eq!((matched.type_.as_str(), matched.value.as_str()), ("PathPrefix", prefix));
    let rewrite = rule.filters.iter().find_map(|f| f.url_rewrite.as_ref()?.path.as_ref());
    assert_eq!(rewrite.and_then(|p| p.replace_prefix_match.as_deref()), rewritten_to);
    assert_eq!((rule.backend_refs[0].name.as_str(), rule.backend_refs[0].port), ("alice-py", 6901));
    assert_eq!(rule.timeouts.as_ref().unwrap().request.as_deref(), Some("0s"));
}

#[test]
fn ingress_class_is_left_to_the_cluster_default_when_unset() {
    let settings = RouteSettings { ingress_class: None, ..host_route() };
    let spec = render_ingress(&alice(), &settings).spec.unwrap();
    assert_eq!(spec.ingress_class_name, None);
}

#[rstest]
#[case::no_auth(
    ForwardAuth::None,
    &[],
    &["traefik.ingress.kubernetes.io/router.middlewares", "nginx.ingress.kubernetes.io/auth-url"],
)]
#[case::traefik(
    ForwardAuth::Traefik { middleware: "deskpod-system-auth@kubernetescrd".into() },
    &[("traefik.ingress.kubernetes.io/router.middlewares", "deskpod-system-auth@kubernetescrd")],
    &["nginx.ingress.kubernetes.io/auth-url", "nginx.ingress.kubernetes.io/auth-signin"],
)]
#[case::nginx_style(
    ForwardAuth::NginxStyle {
        verify_url: "http://portal.deskpod-system.svc/auth/verify".into(),
        signin_url: "https://desk.example.com/login".into(),
    },
    &[
        ("nginx.ingress.kubernetes.io/auth-url", "http://portal.deskpod-system.svc/auth/verify"),
        ("nginx.ingress.kubernetes.io/auth-signin", "https://desk.example.com/login"),
    ],
    &["traefik.ingress.kubernetes.io/router.middlewares"],
)]
fn auth_presets_add_their_annotations_and_websockets_stay_open(
    #[case] auth: ForwardAuth,
    #[case] present: &[(&str, &str)],
    #[case] absent: &[&str],
) {
    let settings = RouteSettings { auth, ..host_route() };
    let annotations = render_ingress(&alice(), &settings).metadata.annotations.unwrap();
    for (key, value) in present {
        assert_eq!(annotations.get(*key).map(String::as_str), Some(*value), "{key}");
    }
    for key in absent {
        assert!(!annotations.contains_key(*key), "{key}");
    }
    for (key, value) in [
        ("nginx.ingress.kubernetes.io/proxy-read-timeout", "3600"),
        ("nginx.ingress.kubernetes.io/proxy-send-timeout", "3600"),
        ("nginx.org/proxy-read-timeout", "3600s"),
        ("nginx.org/proxy-send-timeout", "3600s"),
        ("nginx.org/websocket-services", "alice-py"),
        ("haproxy.org/timeout-tunnel", "3600s"),
    ] {
        assert_eq!(annotations.get(key).map(String::as_str), Some(value), "{key}");
    }
}

#[test]
fn kasm_desktops_are_proxied_over_https() {
    let kasm = ingress_annotations(&desired(&workspace(ALICE), KASM), &host_route());
    assert_eq!(kasm["nginx.ingress.kubernetes.io/backend-protocol"], "HTTPS");
    assert_eq!(kasm["nginx.org/ssl-services"], "alice-py");
    let novnc = ingress_annotations(&alice(), &host_route());
    assert!(!novnc.contains_key("nginx.ingress.kubernetes.io/backend-protocol"));
    assert!(!novnc.contains_key("nginx.org/ssl-services"));
}

// ---------------------------------------------------------------------------------------------
// phase
// ---------------------------------------------------------------------------------------------

const UNSCHEDULABLE: &str = r#"
metadata: { name: alice-py-desktop }
status:
  phase: Pending
  conditions:
    - type: PodScheduled
      status: "False"
      reason: Unschedulable
      message: "0/3 nodes are available: 3 Insufficient memory."
"#;

const VOLUME_BINDING: &str = r#"
metadata: { name: alice-py-desktop }
status:
  phase: Pending
  conditions:
    - type: PodScheduled
      status: "False"
      reason: Unschedulable
      message: "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims. not found"
"#;

const IMAGE_PULL_BACKOFF: &str = r#"
metadata: { name: alice-py-desktop }
status:
  phase: Pending
  conditions:
    - { type: PodScheduled, status: "True" }
    - { type: Ready, status: "False", reason: ContainersNotReady }
  containerStatuses:
    - name: desktop
      image: ghcr.io/deskpod/python:3.99
      imageID: ""
      ready: false
      restartCount: 0
      state:
        waiting:
          reason: ImagePullBackOff
          message: 'Back-off pulling image "ghcr.io/deskpod/python:3.99"'
"#;

const INVALID_IMAGE: &str = r#"
metadata: { name: alice-py-desktop }
status:
  phase: Pending
  conditions: [{ type: PodScheduled, status: "True" }]
  containerStatuses:
    - { name: desktop, image: "UPPER:case", imageID: "", ready: false, restartCount: 0,
        state: { waiting: { reason: InvalidImageName } } }
"#;

const CONTAINER_CREATING: &str = r#"
metadata: { name: alice-py-desktop }
status:
  phase: Pending
  conditions: [{ type: PodScheduled, status: "True" }]
  containerStatuses:
    - { name: desktop, image: "x:1", imageID: "", ready: false, restartCount: 0,
        state: { waiting: { reason: ContainerCreating } } }
"#;

const CRASH_LOOP: &str = r#"
metadata: { name: alice-py-desktop }
status:
  phase: Running
  conditions:
    - { type: PodScheduled, status: "True" }
    - { type: Ready, status: "False" }
  containerStatuses:
    - name: desktop
      image: "x:1"
      imageID: ""
      ready: false
      restartCount: 5
      state: { waiting: { reason: CrashLoopBackOff, message: "back-off 2m40s restarting failed container" } }
      lastState: { terminated: { exitCode: 1, reason: Error } }
"#;

const RUNNING_NOT_READY: &str = r#"
metadata: { name: alice-py-desktop }
status:
  phase: Running
  conditions:
    - { type: PodScheduled, status: "True" }
    - { type: Ready, status: "False" }
"#;

const RUNNING_READY: &str = r#"
metadata: { name: alice-py-desktop }
status:
  phase: Running
  conditions:
    - { type: PodScheduled, status: "True" }
    - { type: Ready, status: "True" }
"#;

const BEING_DELETED: &str = r#"
metadata: { name: alice-py-desktop, deletionTimestamp: "2026-11-23T12:00:00Z" }
status:
  phase: Running
  conditions: [{ type: Ready, status: "True" }]
"#;

const EVICTED: &str = r#"
metadata: { name: alice-py-desktop }
status:
  phase: Failed
  reason: Evicted
  message: "The node was low on resource: memory."
"#;

#[rstest]
#[case::no_pod(None, WorkspacePhase::Creating, Some("creating the desktop pod"), &[])]
#[case::unschedulable(
    Some(UNSCHEDULABLE),
    WorkspacePhase::Starting,
    Some("0/3 nodes are available: 3 Insufficient memory."),
    &[("Unschedulable", "0/3 nodes are available: 3 Insufficient memory.")],
)]
#[case::home_volume_being_provisioned(
    Some(VOLUME_BINDING),
    WorkspacePhase::Starting,
    Some("preparing the home volume"),
    &[]
)]
#[case::image_pull_backoff(
    Some(IMAGE_PULL_BACKOFF),
    WorkspacePhase::Starting,
    Some(r#"Back-off pulling image "ghcr.io/deskpod/python:3.99""#),
    &[("ImagePullFailed", r#"Back-off pulling image "ghcr.io/deskpod/python:3.99""#)],
)]
#[case::invalid_image_name(
    Some(INVALID_IMAGE),
    WorkspacePhase::Starting,
    Some(r#"InvalidImageName: cannot pull image "UPPER:case""#),
    &[("ImagePullFailed", r#"InvalidImageName: cannot pull image "UPPER:case""#)],
)]
#[case::container_creating(
    Some(CONTAINER_CREATING),
    WorkspacePhase::Starting,
    Some("starting the desktop container"),
    &[],
)]
#[case::crash_loop(
    Some(CRASH_LOOP),
    WorkspacePhase::Starting,
    Some("the desktop keeps exiting (last exit code 1); `kubectl logs alice-py-desktop` shows why"),
    &[("CrashLoopBackOff", "the desktop keeps exiting (last exit code 1); `kubectl logs alice-py-desktop` shows why")],
)]
#[case::running_not_ready(
    Some(RUNNING_NOT_READY),
    WorkspacePhase::Starting,
    Some("waiting for the desktop to answer"),
    &[],
)]
#[case::running_ready(Some(RUNNING_READY), WorkspacePhase::Running, None, &[])]
#[case::being_deleted(
    Some(BEING_DELETED),
    WorkspacePhase::Stopping,
    Some("the desktop is shutting down"),
    &[],
)]
#[case::evicted(
    Some(EVICTED),
    WorkspacePhase::Failed,
    Some("the desktop pod has stopped (Evicted: The node was low on resource: memory.)"),
    &[("PodFailed", "the desktop pod has stopped (Evicted: The node was low on resource: memory.)")],
)]
#[case::just_created(
    Some("metadata: { name: alice-py-desktop }"),
    WorkspacePhase::Starting,
    Some("waiting for a node"),
    &[],
)]
fn pod_phase_summary_says_where_the_desktop_stands(
    #[case] pod_yaml: Option<&str>,
    #[case] phase: WorkspacePhase,
    #[case] message: Option<&str>,
    #[case] problems: &[(&str, &str)],
) {
    let pod = pod_yaml.map(pod);
    let (got_phase, got_message, got_problems) = pod_phase_summary(pod.as_ref());
    assert_eq!(got_phase, phase);
    assert_eq!(got_message.as_deref(), message);
    let got: Vec<(&str, &str)> = got_problems.iter().map(|(r, m)| (*r, m.as_str())).collect();
    assert_eq!(got, problems);
}
