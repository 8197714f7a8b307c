//! Table tests of the Team renderers, from Teams written as users write them (YAML).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rstest::rstest;

use super::render::*;
use crate::api::{Team, TeamRole};

fn team(yaml: &str) -> Team {
    let mut team: Team = serde_yaml_ng::from_str(yaml).expect("valid Team YAML");
    team.metadata.uid = Some("5b4e6f1c-0000-4000-8000-000000000001".into());
    team
}

fn time(rfc3339: &str) -> Time {
    Time(rfc3339.parse().expect("timestamp"))
}

const PLATFORM: &str = r#"
apiVersion: deskpod.io/v1alpha1
kind: Team
metadata: { name: platform }
spec:
  quota: { cpu: "8", memory: 32Gi, storage: 200Gi, gpus: 1, pods: 20, workspaces: 10, ciAgents: 5, ciAgentQueue: 100 }
  limits: { maxCpu: "4", maxMemory: 8Gi, maxHomeSize: 50Gi, defaultCpuRequest: 250m }
  members:
    - { user: alice@example.com, role: lead }
    - { user: carol@example.com, role: engineer }
    - { user: bob@example.com, role: contractor, expiresAt: "2026-12-01T00:00:00Z" }
    - { user: dan@example.com, role: contractor, expiresAt: "2026-11-01T00:00:00Z" }
  network:
    allowIngressFromNamespaces: [monitoring, deskpod-system]
"#;

#[test]
fn namespace_is_named_after_the_team_enforces_restricted_and_is_owned_by_it() {
    let ns = render_namespace(&team(PLATFORM));
    assert_eq!(ns.metadata.name.as_deref(), Some("team-platform"));
    let labels = ns.metadata.labels.unwrap();
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
    assert_eq!(labels[TEAM_LABEL], "platform");
    let owner = &ns.metadata.owner_references.unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Team", "platform", Some(true)));
}

#[rstest]
#[case("requests.cpu", Some("8"))]
#[case("limits.cpu", Some("8"))]
#[case("requests.memory", Some("32Gi"))]
#[case("limits.memory", Some("32Gi"))]
#[case("requests.storage", Some("200Gi"))]
#[case("requests.nvidia.com/gpu", Some("1"))]
#[case("pods", Some("20"))]
#[case("persistentvolumeclaims", Some("10"))]
#[case("count/workspaces.deskpod.io", Some("10"))]
#[case("count/ciagents.deskpod.io", Some("100"))]
fn quota_maps_every_budget_field(#[case] key: &str, #[case] expected: Option<&str>) {
    let quota = render_resource_quota(&team(PLATFORM));
    assert_eq!(quota.metadata.namespace.as_deref(), Some("team-platform"));
    let hard = quota.spec.unwrap().hard.unwrap();
    assert_eq!(hard.get(key).map(|q| q.0.as_str()), expected, "{key}");
}

#[test]
fn quota_without_budget_limits_nothing() {
    let quota = render_resource_quota(&team("metadata: { name: open }\nspec: {}"));
    assert_eq!(quota.spec.unwrap().hard, Some(Default::default()));
}

#[test]
fn quota_is_counted_only_when_status_covers_every_hard_limit() {
    let mut quota =
        render_resource_quota(&team("metadata: { name: t }\nspec: { quota: { cpu: \"2\", workspaces: 3 } }"));
    let all = ["count/workspaces.deskpod.io", "limits.cpu", "persistentvolumeclaims", "requests.cpu"];
    assert_eq!(uncounted_quota_resources(&quota), all, "no status yet");
    let hard = quota.spec.as_ref().unwrap().hard.clone();
    let mut used = hard.clone().unwrap();
    used.remove("count/workspaces.deskpod.io");
    quota.status = Some(k8s_openapi::api::core::v1::ResourceQuotaStatus { hard, used: Some(used) });
    assert_eq!(uncounted_quota_resources(&quota), ["count/workspaces.deskpod.io"]);
    let used = quota.status.as_ref().unwrap().hard.clone();
    quota.status.as_mut().unwrap().used = used;
    assert!(uncounted_quota_resources(&quota).is_empty());
}

#[test]
fn limit_range_gives_defaults_and_per_workspace_maximums() {
    let lr = render_limit_range(&team(PLATFORM)).spec.unwrap();
    let container = &lr.limits[0];
    assert_eq!(container.type_, "Container");
    let req = container.default_request.as_ref().unwrap();
    assert_eq!((req["cpu"].0.as_str(), req["memory"].0.as_str()), ("250m", DEFAULT_MEMORY_REQUEST));
    assert_eq!(container.default, container.default_request, "defaulted limits equal defaulted requests");
    let max = container.max.as_ref().unwrap();
    assert_eq!((max["cpu"].0.as_str(), max["memory"].0.as_str()), ("4", "8Gi"));
    assert_eq!(lr.limits[1].type_, "PersistentVolumeClaim");
    assert_eq!(lr.limits[1].max.as_ref().unwrap()["storage"].0, "50Gi");

    let bare = render_limit_range(&team("metadata: { name: open }\nspec: {}")).spec.unwrap();
    assert_eq!(bare.limits.len(), 1, "no PVC item without maxHomeSize");
    assert_eq!(bare.limits[0].max, None);
}

#[test]
fn ingress_is_open_only_to_the_team_and_trusted_namespaces() {
    let settings = TeamSettings { trusted_namespaces: vec!["deskpod-system".into(), "traefik".into()] };
    let policies = render_network_policies(&team(PLATFORM), &settings);
    assert_eq!(policies.len(), 1, "no egress policy without an allow-list");
    let spec = policies[0].spec.as_ref().unwrap();
    assert_eq!(spec.policy_types.as_deref(), Some(&["Ingress".to_string()][..]));
    let from = spec.ingress.as_ref().unwrap()[0].from.as_ref().unwrap();
    assert!(from[0].pod_selector.is_some() && from[0].namespace_selector.is_none(), "first peer: same namespace");
    let namespaces: Vec<&str> = from[1..]
        .iter()
        .map(|p| {
            p.namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["kubernetes.io/metadata.name"]
                .as_str()
        })
        .collect();
    assert_eq!(namespaces, ["deskpod-system", "monitoring", "traefik"], "sorted, without duplicates");
}

#[test]
fn egress_allow_list_keeps_dns_and_the_team_itself() {
    let t = team(
        "metadata: { name: locked }\nspec:\n  network:\n    egressAllow: [{ cidr: 10.20.0.0/16, ports: [443, 5432] }, { cidr: 192.168.1.10/32 }]",
    );
    let policies = render_network_policies(&t, &TeamSettings::default());
    let egress = policies[1].spec.as_ref().unwrap().egress.as_ref().unwrap();
    assert_eq!(egress.len(), 4, "DNS, same namespace, two destinations");
    assert_eq!(egress[0].ports.as_ref().unwrap().len(), 2, "DNS over UDP and TCP");
    assert_eq!(egress[2].to.as_ref().unwrap()[0].ip_block.as_ref().unwrap().cidr, "10.20.0.0/16");
    assert_eq!(egress[2].ports.as_ref().unwrap().len(), 2);
    assert_eq!(egress[3].ports, None, "no ports: every port of that destination");
}

#[rstest]
#[case(TeamRole::Lead, &["alice@example.com"])]
#[case(TeamRole::Engineer, &["carol@example.com"])]
#[case(TeamRole::Contractor, &["bob@example.com"])] // dan's access expired on Nov 1
fn role_bindings_hold_current_members_only(#[case] role: TeamRole, #[case] users: &[&str]) {
    let binding = render_role_binding(&team(PLATFORM), role, &time("2026-11-23T12:00:00Z"));
    let subjects: Vec<&str> = binding.subjects.as_ref().unwrap().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(subjects, users);
    assert_eq!(binding.role_ref.name, role_object_name(role));
    assert!(binding.subjects.unwrap().iter().all(|s| s.kind == "User"));
}

#[test]
fn expiry_removes_the_binding_and_is_the_next_wake_up() {
    let t = team(PLATFORM);
    assert_eq!(next_expiry(&t, &time("2026-11-23T12:00:00Z")), Some(time("2026-12-01T00:00:00Z")));
    let after = time("2026-12-01T00:00:01Z");
    assert!(render_role_binding(&t, TeamRole::Contractor, &after).subjects.unwrap().is_empty());
    assert_eq!(next_expiry(&t, &after), None);
}

#[test]
fn contractors_cannot_touch_ci_agents_or_read_pods() {
    let role = render_role(&team(PLATFORM), TeamRole::Contractor);
    let rules = role.rules.unwrap();
    assert!(rules.iter().all(|r| { !r.resources.as_ref().unwrap().iter().any(|x| x == "ciagents" || x == "pods") }));
}

#[test]
fn workspace_service_account_mounts_no_token() {
    let sa = render_workspace_service_account(&team(PLATFORM));
    assert_eq!(sa.automount_service_account_token, Some(false));
    assert_eq!(sa.metadata.namespace.as_deref(), Some("team-platform"));
}
