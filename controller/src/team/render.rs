//! The objects a Team stands for, computed from its spec alone (no I/O).
//!
//! Each `render_*` returns the complete desired object, ready for server-side apply: fields the
//! spec no longer asks for disappear from the cluster because they are absent here.

use std::collections::BTreeMap;

use k8s_openapi::Resource as _;
use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::api::{Team, TeamRole};

/// Label on every object the controller makes for a team: the team's name.
pub const TEAM_LABEL: &str = "deskpod.io/team";
/// `app.kubernetes.io/managed-by` value on everything the controller makes.
pub const MANAGED_BY: &str = "deskpod-controller";
/// Name of the ResourceQuota, LimitRange and base NetworkPolicy in a team namespace.
pub const TEAM_OBJECT_NAME: &str = "deskpod-team";
/// ServiceAccount that workspace and agent pods run as (no API token is mounted).
pub const WORKSPACE_SERVICE_ACCOUNT: &str = "deskpod-workspace";
/// CPU request a container gets from the LimitRange when it sets none and the team names none.
pub const DEFAULT_CPU_REQUEST: &str = "100m";
/// Memory request a container gets from the LimitRange when it sets none and the team names none.
pub const DEFAULT_MEMORY_REQUEST: &str = "256Mi";

/// Settings of the controller installation that shape every team.
#[derive(Clone, Debug, Default)]
pub struct TeamSettings {
    /// Namespaces always allowed to reach team pods: the portal's (websocket proxy) and the
    /// ingress controller's.
    pub trusted_namespaces: Vec<String>,
}

/// The namespace of a team: `team-<name>`.
pub fn namespace_name(team: &str) -> String {
    format!("team-{team}")
}

fn labels(team: &Team) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TEAM_LABEL.to_string(), team.name_any()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
    ])
}

/// Metadata for an object in the team namespace, owned by the Team so that deleting the Team
/// removes it (cluster-scoped owners may own namespaced dependents).
fn meta(team: &Team, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace_name(&team.name_any())),
        labels: Some(labels(team)),
        owner_references: team.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The team namespace, enforcing the restricted Pod Security Standard.
pub fn render_namespace(team: &Team) -> Namespace {
    let mut labels = labels(team);
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(format!("pod-security.kubernetes.io/{mode}"), "restricted".into());
        labels.insert(format!("pod-security.kubernetes.io/{mode}-version"), "latest".into());
    }
    Namespace {
        metadata: ObjectMeta {
            name: Some(namespace_name(&team.name_any())),
            labels: Some(labels),
            owner_references: team.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The team's budget as a ResourceQuota. Unset fields are not limited.
pub fn render_resource_quota(team: &Team) -> ResourceQuota {
    let q = &team.spec.quota;
    let mut hard = BTreeMap::new();
    let mut put = |key: &str, value: Option<Quantity>| {
        if let Some(v) = value {
            hard.insert(key.to_string(), v);
        }
    };
    let count = |n: Option<i32>| n.map(|n| Quantity(n.to_string()));
    put("requests.cpu", q.cpu.clone());
    put("limits.cpu", q.cpu.clone());
    put("requests.memory", q.memory.clone());
    put("limits.memory", q.memory.clone());
    put("requests.storage", q.storage.clone());
    put("requests.nvidia.com/gpu", count(q.gpus));
    put("pods", count(q.pods));
    // One home volume per workspace: the PVC count follows the workspace count.
    put("persistentvolumeclaims", count(q.workspaces));
    put("count/workspaces.deskpod.io", count(q.workspaces));
    put("count/ciagents.deskpod.io", count(q.ci_agent_queue));
    ResourceQuota {
        metadata: meta(team, TEAM_OBJECT_NAME),
        spec: Some(ResourceQuotaSpec { hard: Some(hard), ..Default::default() }),
        ..Default::default()
    }
}

/// Resources the quota limits but whose usage the quota controller has not counted yet (for
/// example a custom resource it has not discovered). The API server refuses to create those
/// until they are counted.
pub fn uncounted_quota_resources(quota: &ResourceQuota) -> Vec<String> {
    let hard = quota.spec.as_ref().and_then(|s| s.hard.as_ref());
    let status = quota.status.as_ref();
    let counted = |key: &String| {
        status.is_some_and(|s| {
            s.hard.as_ref().is_some_and(|h| h.get(key) == hard.and_then(|h| h.get(key)))
                && s.used.as_ref().is_some_and(|u| u.contains_key(key))
        })
    };
    hard.into_iter().flat_map(|h| h.keys()).filter(|k| !counted(k)).cloned().collect()
}

/// Defaults for containers that set no resources (so they are still admitted under the quota),
/// and the per-workspace maximums.
pub fn render_limit_range(team: &Team) -> LimitRange {
    let l = &team.spec.limits;
    let default_request = BTreeMap::from([
        ("cpu".to_string(), l.default_cpu_request.clone().unwrap_or_else(|| Quantity(DEFAULT_CPU_REQUEST.into()))),
        (
            "memory".to_string(),
            l.default_memory_request.clone().unwrap_or_else(|| Quantity(DEFAULT_MEMORY_REQUEST.into())),
        ),
    ]);
    // A container without limits gets limits equal to its default request, so it is admitted
    // under a quota that also bounds limits.cpu and limits.memory.
    let default_limit = default_request.clone();
    let mut max = BTreeMap::new();
    if let Some(cpu) = &l.max_cpu {
        max.insert("cpu".to_string(), cpu.clone());
    }
    if let Some(memory) = &l.max_memory {
        max.insert("memory".to_string(), memory.clone());
    }
    let mut limits = vec![LimitRangeItem {
        type_: "Container".into(),
        default: Some(default_limit),
        default_request: Some(default_request),
        max: (!max.is_empty()).then_some(max),
        ..Default::default()
    }];
    if let Some(size) = &l.max_home_size {
        limits.push(LimitRangeItem {
            type_: "PersistentVolumeClaim".into(),
            max: Some(BTreeMap::from([("storage".to_string(), size.clone())])),
            ..Default::default()
        });
    }
    LimitRange { metadata: meta(team, TEAM_OBJECT_NAME), spec: Some(LimitRangeSpec { limits }) }
}

fn namespace_peer(name: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".to_string(), name.to_string())])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Ingress isolation (only the team itself, the portal, the ingress controller and namespaces the
/// team names may connect), plus an egress allow-list when the team has one.
pub fn render_network_policies(team: &Team, settings: &TeamSettings) -> Vec<NetworkPolicy> {
    let same_namespace = NetworkPolicyPeer { pod_selector: Some(LabelSelector::default()), ..Default::default() };
    let mut from = vec![same_namespace.clone()];
    let mut allowed: Vec<&String> =
        settings.trusted_namespaces.iter().chain(&team.spec.network.allow_ingress_from_namespaces).collect();
    allowed.sort();
    allowed.dedup();
    from.extend(allowed.into_iter().map(|ns| namespace_peer(ns)));
    let mut policies = vec![NetworkPolicy {
        metadata: meta(team, TEAM_OBJECT_NAME),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule { from: Some(from), ports: None }]),
            egress: None,
        }),
    }];
    if let Some(rules) = &team.spec.network.egress_allow {
        let dns_ports = ["UDP", "TCP"]
            .map(|p| NetworkPolicyPort { protocol: Some(p.into()), port: Some(IntOrString::Int(53)), end_port: None })
            .to_vec();
        let mut egress = vec![
            NetworkPolicyEgressRule { to: Some(vec![namespace_peer("kube-system")]), ports: Some(dns_ports) },
            NetworkPolicyEgressRule { to: Some(vec![same_namespace]), ports: None },
        ];
        egress.extend(rules.iter().map(|r| NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock { cidr: r.cidr.clone(), except: None }),
                ..Default::default()
            }]),
            ports: (!r.ports.is_empty()).then(|| {
                r.ports
                    .iter()
                    .map(|p| NetworkPolicyPort {
                        protocol: Some("TCP".into()),
                        port: Some(IntOrString::Int(p.0)),
                        end_port: None,
                    })
                    .collect()
            }),
        }));
        policies.push(NetworkPolicy {
            metadata: meta(team, "deskpod-egress"),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector::default()),
                policy_types: Some(vec!["Egress".into()]),
                ingress: None,
                egress: Some(egress),
            }),
        });
    }
    policies
}

/// Names of the per-role Role and RoleBinding: `deskpod-lead`, `deskpod-engineer`, ...
pub fn role_object_name(role: TeamRole) -> &'static str {
    match role {
        TeamRole::Lead => "deskpod-lead",
        TeamRole::Engineer => "deskpod-engineer",
        TeamRole::Contractor => "deskpod-contractor",
    }
}

/// Every role, in the order their objects are rendered.
pub const ROLES: [TeamRole; 3] = [TeamRole::Lead, TeamRole::Engineer, TeamRole::Contractor];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..Default::default()
    }
}

/// What a role may do in its team namespace with kubectl or the API. Ownership of a single
/// workspace is enforced by the portal; RBAC cannot express "only your own".
pub fn render_role(team: &Team, role: TeamRole) -> Role {
    let read = ["get", "list", "watch"];
    let write = ["get", "list", "watch", "create", "update", "patch", "delete"];
    let rules = match role {
        TeamRole::Lead => vec![
            rule(&["deskpod.io"], &["workspaces", "ciagents"], &write),
            rule(&[""], &["pods", "events", "persistentvolumeclaims", "resourcequotas", "limitranges"], &read),
            rule(&[""], &["pods/log"], &["get"]),
        ],
        TeamRole::Engineer => vec![
            rule(&["deskpod.io"], &["workspaces", "ciagents"], &write),
            rule(&[""], &["pods", "events", "resourcequotas"], &read),
            rule(&[""], &["pods/log"], &["get"]),
        ],
        TeamRole::Contractor => {
            vec![rule(&["deskpod.io"], &["workspaces"], &write), rule(&[""], &["resourcequotas"], &read)]
        }
    };
    Role { metadata: meta(team, role_object_name(role)), rules: Some(rules) }
}

/// The members that hold `role` at `now`: expired members are left out, which removes their
/// access.
pub fn render_role_binding(team: &Team, role: TeamRole, now: &Time) -> RoleBinding {
    let mut users: Vec<&str> = team
        .spec
        .members
        .iter()
        .filter(|m| m.role == role && m.expires_at.as_ref().is_none_or(|t| t.0 > now.0))
        .map(|m| m.user.as_str())
        .collect();
    users.sort_unstable();
    RoleBinding {
        metadata: meta(team, role_object_name(role)),
        role_ref: RoleRef {
            api_group: Some(Role::GROUP.into()),
            kind: Role::KIND.into(),
            name: role_object_name(role).into(),
        },
        subjects: Some(
            users
                .into_iter()
                .map(|u| Subject {
                    kind: "User".into(),
                    name: u.into(),
                    api_group: Some(Role::GROUP.into()),
                    namespace: None,
                })
                .collect(),
        ),
    }
}

/// The earliest member expiry after `now`: the controller looks at the team again then.
pub fn next_expiry(team: &Team, now: &Time) -> Option<Time> {
    team.spec.members.iter().filter_map(|m| m.expires_at.clone()).filter(|t| t.0 > now.0).min_by_key(|t| t.0)
}

/// The ServiceAccount workspace pods run as. No token is mounted: desktops have no business
/// talking to the Kubernetes API.
pub fn render_workspace_service_account(team: &Team) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(team, WORKSPACE_SERVICE_ACCOUNT),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}
