//! The objects a Workspace stands for, computed from the Workspace, its template and its team
//! (no I/O), and what its pod says about how far the desktop has come.
//!
//! [`validate`] resolves every value (workspace overrides, then template, then defaults) and checks
//! it against the team's limits, so a user learns why a workspace cannot run before anything is
//! created. Each `render_*` then returns the complete desired object from the resulting
//! [`DesiredWorkspace`], ready for server-side apply: fields no longer asked for disappear from the
//! cluster because they are absent here.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext, Service, ServicePort,
    ServiceSpec, TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::api::{
    DesktopProtocol, ImagePullPolicy, ReclaimPolicy, Team, TemplateResources, Workspace, WorkspacePhase,
    WorkspaceTemplate,
};
use crate::gateway::{
    BackendRef, HTTPPathMatch, HTTPPathModifier, HTTPRoute, HTTPRouteFilter, HTTPRouteMatch, HTTPRouteRule,
    HTTPRouteSpec, HTTPRouteTimeouts, HTTPURLRewriteFilter, ParentReference,
};
use crate::quantity::{self, Milli};
use crate::team::render::{MANAGED_BY, TEAM_LABEL, WORKSPACE_SERVICE_ACCOUNT, namespace_name};

/// Label on every object made for a workspace: the workspace's name.
pub const WORKSPACE_LABEL: &str = "deskpod.io/workspace";
/// Label on every object made for a workspace: [`owner_hash`] of its owner.
pub const OWNER_HASH_LABEL: &str = "deskpod.io/owner-hash";
/// Name of the desktop's port on the container and the Service, and the Ingress's backend port.
pub const VNC_PORT_NAME: &str = "vnc";
/// Key of the VNC password in the workspace's Secret.
pub const VNC_PASSWORD_KEY: &str = "password";
/// Environment variable the desktop images read their VNC password from.
pub const VNC_PASSWORD_ENV: &str = "VNC_PW";
/// Home volume size when neither the workspace nor its template names one.
pub const DEFAULT_HOME_SIZE: &str = "10Gi";
/// Size of `/dev/shm` when the template names none.
pub const DEFAULT_SHM_SIZE: &str = "1Gi";
/// Seconds an idle websocket may stay open through the ingress controller.
pub const WEBSOCKET_TIMEOUT_SECONDS: u32 = 3600;
/// Extended resource GPUs are requested as.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Name of the desktop container in the workspace pod.
pub const DESKTOP_CONTAINER: &str = "desktop";
/// User, group and fsGroup the desktop runs as (the desktop images' `user`/`kasm-user`).
pub const DESKTOP_UID: i64 = 1000;

const HOME_VOLUME: &str = "home";
const SHM_VOLUME: &str = "dshm";

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

/// The workspace's pod: `<workspace>-desktop`.
///
/// The name is fixed on purpose. Two pods of one name cannot exist at once, so a new pod (after
/// a restart, a template change or a stop and start) can only be created once the old one is
/// completely gone. That is what guarantees the ReadWriteOnce home volume is never mounted by two
/// pods at the same time — a Deployment's rolling update, with a fresh name per pod, would not.
pub fn pod_name(workspace: &str) -> String {
    format!("{workspace}-desktop")
}

/// The workspace's home PersistentVolumeClaim: `<workspace>-home`.
pub fn home_pvc_name(workspace: &str) -> String {
    format!("{workspace}-home")
}

/// The Secret holding the workspace's VNC password: `<workspace>-vnc`.
pub fn vnc_secret_name(workspace: &str) -> String {
    format!("{workspace}-vnc")
}

/// The workspace's Service: the workspace's own name.
pub fn service_name(workspace: &str) -> String {
    workspace.to_string()
}

/// The workspace's HTTPRoute (Gateway API): the workspace's own name.
pub fn route_name(workspace: &str) -> String {
    workspace.to_string()
}

/// The workspace's Ingress: the workspace's own name.
pub fn ingress_name(workspace: &str) -> String {
    workspace.to_string()
}

/// A label-safe stand-in for an owner id: 16 lowercase hex digits of the id's 64-bit FNV-1a hash.
///
/// Owner ids are e-mail addresses and the like, which are not valid label values (`@`, length).
/// FNV-1a is tiny, has no dependencies and never changes, so the value is the same in every
/// release and in every component that computes it (the portal selects a user's workspaces with
/// it). It is not a secret and not collision-proof: it narrows a selection, and anything that
/// decides access must compare `spec.owner` itself.
pub fn owner_hash(owner: &str) -> String {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = owner.bytes().fold(OFFSET_BASIS, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME));
    format!("{hash:016x}")
}

/// Where the home volume is mounted when the template does not say: where each protocol's images
/// keep their user's home.
pub fn default_home_path(protocol: DesktopProtocol) -> &'static str {
    match protocol {
        DesktopProtocol::Novnc => "/home/user",
        DesktopProtocol::Kasm => "/home/kasm-user",
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Why a workspace cannot run as asked. The controller reports it in the workspace's status and
/// waits for the spec (or its template or team) to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    /// CamelCase reason for conditions and events: `TemplateNotFound`, `OverTeamLimit`,
    /// `InvalidQuantity` or `RequestAboveLimit`.
    pub reason: &'static str,
    /// What is wrong, in words the workspace's owner can act on.
    pub message: String,
}

impl Invalid {
    /// An invalid-spec finding: a CamelCase reason and a message for the user.
    pub fn new(reason: &'static str, message: String) -> Self {
        Invalid { reason, message }
    }
}

/// Everything the renderers need, resolved from a Workspace, its template and its team.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredWorkspace {
    /// The Workspace's name; also the pod's hostname.
    pub name: String,
    /// The team namespace everything lives in.
    pub namespace: String,
    /// The team's name.
    pub team: String,
    /// The owner's user id (`spec.owner`).
    pub owner: String,
    /// [`owner_hash`] of `owner`.
    pub owner_hash: String,
    /// Controller reference to the Workspace; `None` only for a Workspace that has no uid yet
    /// (never one read from the API server).
    pub owner_reference: Option<OwnerReference>,
    /// The template's name.
    pub template: String,
    /// Container image of the desktop.
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
    /// How the browser reaches the desktop.
    pub protocol: DesktopProtocol,
    /// Port the desktop listens on.
    pub port: i32,
    /// Where the home volume is mounted.
    pub home_path: String,
    /// Size of the home volume.
    pub home_size: Quantity,
    /// StorageClass of the home volume; the cluster default when `None`.
    pub storage_class_name: Option<String>,
    /// Whether the home volume goes with the Workspace.
    pub reclaim_policy: ReclaimPolicy,
    /// Size of the memory-backed `/dev/shm`.
    pub shm_size: Quantity,
    /// CPU and memory, the workspace's own over the template's. A limit left unset takes the
    /// request's value (see [`validate`]).
    pub resources: TemplateResources,
    /// GPUs for the desktop.
    pub gpus: i32,
    /// The template's environment variables (without `VNC_PW`, which comes from the Secret).
    pub env: Vec<crate::api::EnvVar>,
    /// Stop the desktop after this long without keyboard or pointer input; never when `None`.
    pub idle_timeout: Option<std::time::Duration>,
    /// Where the pod may run: the template's node selector and tolerations.
    pub scheduling: Scheduling,
}

/// The node selector and tolerations of a template's pods, as the Pod API takes them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scheduling {
    pub node_selector: Option<BTreeMap<String, String>>,
    pub tolerations: Option<Vec<k8s_openapi::api::core::v1::Toleration>>,
}

impl Scheduling {
    /// The template's scheduling constraints (none without a template).
    pub fn of(template: Option<&crate::api::WorkspaceTemplateSpec>) -> Self {
        let Some(t) = template else { return Self::default() };
        let tolerations = t
            .tolerations
            .iter()
            .map(|t| k8s_openapi::api::core::v1::Toleration {
                key: t.key.clone(),
                operator: Some(t.operator.as_str().into()),
                value: t.value.clone(),
                effect: t.effect.map(|e| e.as_str().into()),
                toleration_seconds: None,
            })
            .collect::<Vec<_>>();
        Scheduling {
            node_selector: (!t.node_selector.is_empty()).then(|| t.node_selector.clone()),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
        }
    }
}

/// Where a resolved value came from, to tell the user which object to change.
#[derive(Clone, Copy)]
enum Source {
    Workspace,
    Template,
    Default,
}

struct Resolved<'a> {
    value: Quantity,
    source: Source,
    template: &'a str,
}

impl Resolved<'_> {
    fn parse(&self, what: &str) -> Result<Milli, Invalid> {
        quantity::parse_quantity(&self.value)
            .map_err(|e| Invalid::new("InvalidQuantity", format!("{what}{}: {e}", self.origin())))
    }

    /// ` (from template "x")` or ` (the default)` when the workspace did not choose the value, so
    /// the user knows they can set it on the workspace.
    fn origin(&self) -> String {
        match self.source {
            Source::Workspace => String::new(),
            Source::Template => format!(" (from template {:?})", self.template),
            Source::Default => " (the default)".into(),
        }
    }
}

/// Resolves what a Workspace should run and checks it against its team's limits.
///
/// Values are taken from the workspace, else its template, else Deskpod's defaults: each of the
/// four resources field by field; home size, else the template's `homeSize`, else
/// [`DEFAULT_HOME_SIZE`]; `/dev/shm` the template's `shmSize`, else [`DEFAULT_SHM_SIZE`]; home path
/// the template's, else [`default_home_path`]; pull policy the template's, else `IfNotPresent`.
///
/// A CPU or memory limit left unset takes the request's value. Without it the team's LimitRange
/// would give the container its (small) default limit, and the API server would refuse a pod
/// whose request is above its limit. The per-workspace maximums of the team apply to that limit.
pub fn validate(
    ws: &Workspace,
    template: Option<&WorkspaceTemplate>,
    team: &Team,
) -> Result<DesiredWorkspace, Invalid> {
    let template_name = ws.spec.template.as_str();
    let Some(template) = template else {
        return Err(Invalid::new(
            "TemplateNotFound",
            format!("template {template_name:?} does not exist; `kubectl get workspacetemplates` lists those that do"),
        ));
    };
    let tpl = &template.spec;
    let resolve = |own: &Option<Quantity>, from_template: &Option<Quantity>, default: &str| {
        let (value, source) = match (own, from_template) {
            (Some(q), _) => (q.clone(), Source::Workspace),
            (None, Some(q)) => (q.clone(), Source::Template),
            (None, None) => (Quantity(default.into()), Source::Default),
        };
        Resolved { value, source, template: template_name }
    };
    let resolve_opt = |own: &Option<Quantity>, from_template: &Option<Quantity>| {
        (own.is_some() || from_template.is_some()).then(|| resolve(own, from_template, ""))
    };

    let own = ws.spec.resources.clone().unwrap_or_default();
    let cpu = ResourcePair {
        name: "CPU",
        request: resolve_opt(&own.cpu_request, &tpl.resources.cpu_request),
        limit: resolve_opt(&own.cpu_limit, &tpl.resources.cpu_limit),
    };
    let memory = ResourcePair {
        name: "memory",
        request: resolve_opt(&own.memory_request, &tpl.resources.memory_request),
        limit: resolve_opt(&own.memory_limit, &tpl.resources.memory_limit),
    };
    let home_size = resolve(&ws.spec.home.size, &tpl.home_size, DEFAULT_HOME_SIZE);
    let shm_size = resolve(&None, &tpl.shm_size, DEFAULT_SHM_SIZE);

    let limits = &team.spec.limits;
    let team_max = |what: &str, q: &Option<Quantity>| -> Result<Option<Milli>, Invalid> {
        q.as_ref()
            .map(|q| {
                quantity::parse_quantity(q).map_err(|e| {
                    Invalid::new(
                        "InvalidQuantity",
                        format!("the team's {what}: {e}; a platform admin must correct the Team"),
                    )
                })
            })
            .transpose()
    };
    cpu.check(team_max("maxCpu", &limits.max_cpu)?, &limits.max_cpu)?;
    memory.check(team_max("maxMemory", &limits.max_memory)?, &limits.max_memory)?;
    let home = home_size.parse("home size")?;
    if let (Some(max), Some(max_q)) = (team_max("maxHomeSize", &limits.max_home_size)?, &limits.max_home_size)
        && home > max
    {
        return Err(Invalid::new(
            "OverTeamLimit",
            format!("home size {}{} exceeds the team's maximum of {}", home_size.value.0, home_size.origin(), max_q.0),
        ));
    }
    shm_size.parse("shm size")?;
    let idle_timeout = tpl
        .idle_timeout
        .as_deref()
        .map(|d| {
            crate::duration::parse(d)
                .map_err(|e| Invalid::new("InvalidDuration", format!("idleTimeout of template {template_name:?}: {e}")))
        })
        .transpose()?;

    let value = |r: &Option<Resolved>| r.as_ref().map(|r| r.value.clone());
    let resources = TemplateResources {
        cpu_request: value(&cpu.request),
        cpu_limit: value(&cpu.limit).or_else(|| value(&cpu.request)),
        memory_request: value(&memory.request),
        memory_limit: value(&memory.limit).or_else(|| value(&memory.request)),
    };
    let name = ws.name_any();
    let team_name = team.name_any();
    Ok(DesiredWorkspace {
        namespace: ws.metadata.namespace.clone().unwrap_or_else(|| namespace_name(&team_name)),
        team: team_name,
        owner: ws.spec.owner.clone(),
        owner_hash: owner_hash(&ws.spec.owner),
        owner_reference: ws.controller_owner_ref(&()),
        template: template_name.to_string(),
        image: tpl.image.clone(),
        image_pull_policy: match tpl.image_pull_policy.unwrap_or(ImagePullPolicy::IfNotPresent) {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
        .to_string(),
        protocol: tpl.protocol,
        port: tpl.port,
        home_path: tpl.home_path.clone().unwrap_or_else(|| default_home_path(tpl.protocol).to_string()),
        home_size: home_size.value,
        storage_class_name: ws.spec.home.storage_class_name.clone().or_else(|| tpl.home_storage_class_name.clone()),
        reclaim_policy: ws.spec.home.reclaim_policy,
        shm_size: shm_size.value,
        resources,
        gpus: tpl.gpus,
        env: tpl.env.iter().filter(|e| e.name != VNC_PASSWORD_ENV).cloned().collect(),
        idle_timeout,
        scheduling: Scheduling::of(Some(tpl)),
        name,
    })
}

/// The request and limit of one resource, resolved.
struct ResourcePair<'a> {
    name: &'static str,
    request: Option<Resolved<'a>>,
    limit: Option<Resolved<'a>>,
}

impl ResourcePair<'_> {
    /// Checks that the values parse, the request is not above the limit, and the limit (or the
    /// request standing in for it) is within the team's maximum.
    fn check(&self, max: Option<Milli>, max_q: &Option<Quantity>) -> Result<(), Invalid> {
        let name = self.name;
        let request = self.request.as_ref().map(|r| r.parse(&format!("{name} request")).map(|m| (r, m))).transpose()?;
        let limit = self.limit.as_ref().map(|r| r.parse(&format!("{name} limit")).map(|m| (r, m))).transpose()?;
        if let (Some((req, req_m)), Some((lim, lim_m))) = (&request, &limit)
            && req_m > lim_m
        {
            return Err(Invalid::new(
                "RequestAboveLimit",
                format!(
                    "{name} request {}{} is above the {name} limit {}{}; a container cannot be \
                     guaranteed more than it may use",
                    req.value.0,
                    req.origin(),
                    lim.value.0,
                    lim.origin()
                ),
            ));
        }
        let (Some(max), Some(max_q)) = (max, max_q) else {
            return Ok(());
        };
        let (what, (resolved, value)) = match (&limit, &request) {
            (Some(l), _) => ("limit", l),
            (None, Some(r)) => ("request", r),
            (None, None) => return Ok(()),
        };
        if *value > max {
            return Err(Invalid::new(
                "OverTeamLimit",
                format!(
                    "{name} {what} {}{} exceeds the team's maximum of {} per workspace",
                    resolved.value.0,
                    resolved.origin(),
                    max_q.0
                ),
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------------

/// Labels on every object of a workspace.
pub fn labels(d: &DesiredWorkspace) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TEAM_LABEL.to_string(), d.team.clone()),
        (WORKSPACE_LABEL.to_string(), d.name.clone()),
        (OWNER_HASH_LABEL.to_string(), d.owner_hash.clone()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
    ])
}

/// The labels that select a workspace's pod.
pub fn selector(d: &DesiredWorkspace) -> BTreeMap<String, String> {
    BTreeMap::from([(TEAM_LABEL.to_string(), d.team.clone()), (WORKSPACE_LABEL.to_string(), d.name.clone())])
}

/// Metadata of an object owned (as its controller) by the Workspace, so it goes with it.
fn owned_meta(d: &DesiredWorkspace, name: String) -> ObjectMeta {
    ObjectMeta { owner_references: d.owner_reference.clone().map(|o| vec![o]), ..unowned_meta(d, name) }
}

fn unowned_meta(d: &DesiredWorkspace, name: String) -> ObjectMeta {
    ObjectMeta { name: Some(name), namespace: Some(d.namespace.clone()), labels: Some(labels(d)), ..Default::default() }
}

/// The home volume: ReadWriteOnce, of the resolved size and StorageClass.
///
/// With reclaim policy `Delete` the Workspace owns it and garbage collection deletes it with the
/// Workspace. With `Retain` it has no owner reference at all, so it outlives the Workspace. The
/// list is rendered empty rather than left out: server-side apply then removes the reference this
/// manager set before, when a workspace switches from `Delete` to `Retain`, and the comparison
/// with the cached copy ([`crate::cache::is_subset`]) sees the difference.
pub fn render_home_pvc(d: &DesiredWorkspace) -> PersistentVolumeClaim {
    let name = home_pvc_name(&d.name);
    PersistentVolumeClaim {
        metadata: match d.reclaim_policy {
            ReclaimPolicy::Delete => owned_meta(d, name),
            ReclaimPolicy::Retain => ObjectMeta { owner_references: Some(vec![]), ..unowned_meta(d, name) },
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), d.home_size.clone())])),
                limits: None,
            }),
            storage_class_name: d.storage_class_name.clone(),
            ..Default::default()
        }),
        status: None,
    }
}

/// A claim's StorageClass cannot change once it exists: an existing home keeps its own class
/// (the template's default may have changed since it was made) instead of failing every apply.
pub fn keep_storage_class(pvc: &mut PersistentVolumeClaim, existing: Option<&PersistentVolumeClaim>) {
    if let (Some(existing), Some(spec)) = (existing, pvc.spec.as_mut()) {
        spec.storage_class_name = existing.spec.as_ref().and_then(|s| s.storage_class_name.clone());
    }
}

/// The Secret with the VNC password under [`VNC_PASSWORD_KEY`], owned by the Workspace.
///
/// The password goes in `data` (not the write-only `stringData`), so what is applied is what is
/// read back, and a later apply of the same password changes nothing.
pub fn render_vnc_secret(d: &DesiredWorkspace, password: &str) -> Secret {
    Secret {
        metadata: owned_meta(d, vnc_secret_name(&d.name)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(VNC_PASSWORD_KEY.to_string(), ByteString(password.as_bytes().to_vec()))])),
        ..Default::default()
    }
}

/// The desktop pod, owned by the Workspace, meeting the restricted Pod Security Standard.
///
/// It runs as [`WORKSPACE_SERVICE_ACCOUNT`] without an API token, reads its VNC password from the
/// workspace's Secret (never a literal in the pod), mounts the home volume at the home path and
/// a memory-backed `/dev/shm`, and is ready once the desktop's port accepts connections.
pub fn render_pod(d: &DesiredWorkspace) -> Pod {
    let mut env: Vec<EnvVar> =
        d.env.iter().map(|e| EnvVar { name: e.name.clone(), value: Some(e.value.clone()), value_from: None }).collect();
    env.push(EnvVar {
        name: VNC_PASSWORD_ENV.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: vnc_secret_name(&d.name),
                key: VNC_PASSWORD_KEY.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
    });

    let container = Container {
        name: DESKTOP_CONTAINER.into(),
        image: Some(d.image.clone()),
        image_pull_policy: Some(d.image_pull_policy.clone()),
        ports: Some(vec![ContainerPort {
            name: Some(VNC_PORT_NAME.into()),
            container_port: d.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: Some(env),
        resources: Some(resource_requirements(d)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { add: None, drop: Some(vec!["ALL".into()]) }),
            // Desktops write to their image (package caches, /tmp, the X server's files).
            read_only_root_filesystem: Some(false),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount { name: HOME_VOLUME.into(), mount_path: d.home_path.clone(), ..Default::default() },
            VolumeMount { name: SHM_VOLUME.into(), mount_path: "/dev/shm".into(), ..Default::default() },
        ]),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(d.port), host: None }),
            // The shortest period: the Workspace turns Running (and the browser opens the
            // desktop) at most a second after the desktop answers.
            period_seconds: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    };

    Pod {
        metadata: owned_meta(d, pod_name(&d.name)),
        spec: Some(PodSpec {
            hostname: Some(d.name.clone()),
            service_account_name: Some(WORKSPACE_SERVICE_ACCOUNT.into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            restart_policy: Some("Always".into()),
            termination_grace_period_seconds: Some(10),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(DESKTOP_UID),
                run_as_group: Some(DESKTOP_UID),
                fs_group: Some(DESKTOP_UID),
                // Only walk the home volume to fix its group when its root is wrong: a large
                // home would otherwise delay every start.
                fs_group_change_policy: Some("OnRootMismatch".into()),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
                ..Default::default()
            }),
            node_selector: d.scheduling.node_selector.clone(),
            tolerations: d.scheduling.tolerations.clone(),
            containers: vec![container],
            volumes: Some(vec![
                Volume {
                    name: HOME_VOLUME.into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: home_pvc_name(&d.name),
                        read_only: None,
                    }),
                    ..Default::default()
                },
                Volume {
                    name: SHM_VOLUME.into(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        medium: Some("Memory".into()),
                        size_limit: Some(d.shm_size.clone()),
                        mode: None,
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Requests and limits of the desktop container; GPUs as an [`GPU_RESOURCE`] limit (the API
/// server sets the request of an extended resource to its limit).
fn resource_requirements(d: &DesiredWorkspace) -> ResourceRequirements {
    let r = &d.resources;
    let map = |entries: [(&str, &Option<Quantity>); 2]| {
        entries.into_iter().filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v))).collect::<BTreeMap<_, _>>()
    };
    let requests = map([("cpu", &r.cpu_request), ("memory", &r.memory_request)]);
    let mut limits = map([("cpu", &r.cpu_limit), ("memory", &r.memory_limit)]);
    if d.gpus > 0 {
        limits.insert(GPU_RESOURCE.into(), Quantity(d.gpus.to_string()));
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        claims: None,
    }
}

/// The ClusterIP Service in front of the desktop: port `vnc` to the container's port `vnc`.
pub fn render_service(d: &DesiredWorkspace) -> Service {
    Service {
        metadata: owned_meta(d, service_name(&d.name)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(d)),
            ports: Some(vec![ServicePort {
                name: Some(VNC_PORT_NAME.into()),
                port: d.port,
                target_port: Some(IntOrString::String(VNC_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Route
// ---------------------------------------------------------------------------------------------

/// How workspaces are exposed, from the controller's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSettings {
    /// Domain the desktops are served under, such as `desk.example.com`.
    pub base_domain: String,
    /// A host per workspace, or a path per workspace on one host.
    pub mode: RouteMode,
    /// `spec.ingressClassName`; the cluster's default class when `None`.
    pub ingress_class: Option<String>,
    /// Secret with the TLS certificate for the hosts (a wildcard one in host mode). Unset: plain
    /// HTTP, or TLS terminated before the ingress controller.
    pub tls_secret: Option<String>,
    /// Who checks that the browser may open the desktop before the ingress controller proxies.
    pub auth: ForwardAuth,
    /// Route through this Gateway with an `HTTPRoute` instead of an Ingress (Gateway API).
    pub gateway: Option<ParentReference>,
}

impl RouteSettings {
    /// A host per workspace under `base_domain`, through the cluster's default IngressClass,
    /// without TLS or forward authentication.
    pub fn host(base_domain: &str) -> Self {
        RouteSettings {
            base_domain: base_domain.into(),
            mode: RouteMode::Host,
            ingress_class: None,
            tls_secret: None,
            auth: ForwardAuth::None,
            gateway: None,
        }
    }
}

/// How a workspace's address is formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteMode {
    /// `<workspace>.<team>.<baseDomain>/`: needs a wildcard DNS record (and certificate).
    Host,
    /// `<baseDomain>/workspaces/<team>/<workspace>/`: one host for everything.
    Path,
}

/// Forward authentication in front of the desktops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardAuth {
    /// None at the ingress (the desktop's own VNC password still applies).
    None,
    /// A Traefik `Middleware` (forwardAuth), named as Traefik references it:
    /// `<namespace>-<name>@kubernetescrd`.
    Traefik { middleware: String },
    /// The `auth-url`/`auth-signin` annotations of ingress-nginx, which other controllers
    /// (and ingress-nginx's successors) also read.
    NginxStyle { verify_url: String, signin_url: String },
}

/// The host a workspace is reached on.
pub fn route_host(d: &DesiredWorkspace, settings: &RouteSettings) -> String {
    match settings.mode {
        RouteMode::Host => format!("{}.{}.{}", d.name, d.team, settings.base_domain),
        RouteMode::Path => settings.base_domain.clone(),
    }
}

/// The path prefix a workspace is reached under, with a trailing `/`.
pub fn route_path(d: &DesiredWorkspace, settings: &RouteSettings) -> String {
    match settings.mode {
        RouteMode::Host => "/".into(),
        RouteMode::Path => format!("/workspaces/{}/{}/", d.team, d.name),
    }
}

/// Where the browser opens the desktop: `https` when the Ingress has a TLS secret, else `http`.
pub fn url(d: &DesiredWorkspace, settings: &RouteSettings) -> String {
    let scheme = if settings.tls_secret.is_some() { "https" } else { "http" };
    format!("{scheme}://{}{}", route_host(d, settings), route_path(d, settings))
}

/// The Ingress annotations for a workspace: every ingress controller's setting Deskpod relies on,
/// in one place. Controllers ignore the annotations of others, so all presets can be present at
/// once; add a controller by adding its keys here.
///
/// - Websockets stay open for [`WEBSOCKET_TIMEOUT_SECONDS`] without traffic: ingress-nginx style
///   (`nginx.ingress.kubernetes.io/proxy-*-timeout`), F5 NGINX (`nginx.org/*`, which also needs
///   the service named in `websocket-services`) and HAProxy (`haproxy.org/timeout-tunnel`).
///   Traefik proxies websockets without per-route timeouts.
/// - Forward authentication per [`ForwardAuth`].
/// - Kasm desktops serve HTTPS themselves, so the NGINX presets proxy to them over HTTPS.
pub fn ingress_annotations(d: &DesiredWorkspace, settings: &RouteSettings) -> BTreeMap<String, String> {
    let timeout = WEBSOCKET_TIMEOUT_SECONDS;
    let service = service_name(&d.name);
    let mut annotations: Vec<(&str, String)> = vec![
        ("nginx.ingress.kubernetes.io/proxy-read-timeout", timeout.to_string()),
        ("nginx.ingress.kubernetes.io/proxy-send-timeout", timeout.to_string()),
        ("nginx.org/proxy-read-timeout", format!("{timeout}s")),
        ("nginx.org/proxy-send-timeout", format!("{timeout}s")),
        ("nginx.org/websocket-services", service.clone()),
        ("haproxy.org/timeout-tunnel", format!("{timeout}s")),
    ];
    match &settings.auth {
        ForwardAuth::None => {}
        ForwardAuth::Traefik { middleware } => {
            annotations.push(("traefik.ingress.kubernetes.io/router.middlewares", middleware.clone()))
        }
        ForwardAuth::NginxStyle { verify_url, signin_url } => {
            annotations.push(("nginx.ingress.kubernetes.io/auth-url", verify_url.clone()));
            annotations.push(("nginx.ingress.kubernetes.io/auth-signin", signin_url.clone()));
        }
    }
    if d.protocol == DesktopProtocol::Kasm {
        annotations.push(("nginx.ingress.kubernetes.io/backend-protocol", "HTTPS".into()));
        annotations.push(("nginx.org/ssl-services", service));
    }
    annotations.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The Ingress that routes the workspace's host or path to its Service, owned by the Workspace.
pub fn render_ingress(d: &DesiredWorkspace, settings: &RouteSettings) -> Ingress {
    let host = route_host(d, settings);
    Ingress {
        metadata: ObjectMeta {
            annotations: Some(ingress_annotations(d, settings)),
            ..owned_meta(d, ingress_name(&d.name))
        },
        spec: Some(IngressSpec {
            ingress_class_name: settings.ingress_class.clone(),
            rules: Some(vec![IngressRule {
                host: Some(host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(route_path(d, settings)),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: service_name(&d.name),
                                port: Some(ServiceBackendPort { name: Some(VNC_PORT_NAME.into()), number: None }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            tls: settings
                .tls_secret
                .as_ref()
                .map(|secret| vec![IngressTLS { hosts: Some(vec![host]), secret_name: Some(secret.clone()) }]),
            default_backend: None,
        }),
        status: None,
    }
}

/// The Gateway API route to the workspace's Service, owned by the Workspace: the same host and
/// path prefix as the Ingress would have, attached to the configured Gateway.
///
/// Websockets: the request timeout is `0s`, which the Gateway API defines as no timeout, so a
/// desktop session is not cut after the implementation's default. TLS is the Gateway listener's
/// business. Forward authentication has no standard filter in `gateway.networking.k8s.io/v1`;
/// configure it on the Gateway with the implementation's own policy, pointing at the portal's
/// verify endpoint.
pub fn render_http_route(d: &DesiredWorkspace, settings: &RouteSettings, gateway: &ParentReference) -> HTTPRoute {
    let mut route = HTTPRoute::new(
        &route_name(&d.name),
        HTTPRouteSpec {
            parent_refs: vec![gateway.clone()],
            hostnames: vec![route_host(d, settings)],
            rules: vec![HTTPRouteRule {
                matches: vec![HTTPRouteMatch {
                    path: Some(HTTPPathMatch { type_: "PathPrefix".into(), value: route_path(d, settings) }),
                }],
                // In path mode the desktop still serves from `/`: strip the workspace's prefix.
                filters: match settings.mode {
                    RouteMode::Host => vec![],
                    RouteMode::Path => vec![HTTPRouteFilter {
                        type_: "URLRewrite".into(),
                        url_rewrite: Some(HTTPURLRewriteFilter {
                            path: Some(HTTPPathModifier {
                                type_: "ReplacePrefixMatch".into(),
                                replace_prefix_match: Some("/".into()),
                            }),
                        }),
                    }],
                },
                backend_refs: vec![BackendRef { name: service_name(&d.name), port: d.port }],
                timeouts: Some(HTTPRouteTimeouts { request: Some("0s".into()) }),
            }],
        },
    );
    route.metadata = owned_meta(d, route_name(&d.name));
    route
}

// ---------------------------------------------------------------------------------------------
// Phase
// ---------------------------------------------------------------------------------------------

/// A problem seen on the pod: a CamelCase reason (for conditions and events) and a message.
pub type Problem = (&'static str, String);

/// The stage message while the home volume is provisioned.
pub const PREPARING_HOME: &str = "preparing the home volume";

/// Container waiting reasons that mean the image cannot be pulled.
const IMAGE_PULL_FAILURES: [&str; 3] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"];

/// Where the workspace stands judging by its pod, a message for people, and the problems seen as
/// (CamelCase reason, message) — `Unschedulable`, `ImagePullFailed`, `CrashLoopBackOff`,
/// `PodFailed` — for conditions and events.
///
/// No pod: `Creating`. Being deleted: `Stopping`. Running and Ready: `Running`. Failed or
/// Succeeded (evicted, say): `Failed`, as such a pod never starts again; it must be replaced.
/// Anything else: `Starting`, with the first problem as the message.
pub fn pod_phase_summary(pod: Option<&Pod>) -> (WorkspacePhase, Option<String>, Vec<Problem>) {
    let Some(pod) = pod else {
        return (WorkspacePhase::Creating, Some("creating the desktop pod".into()), vec![]);
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return (WorkspacePhase::Stopping, Some("the desktop is shutting down".into()), vec![]);
    }
    let status = pod.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let condition = |type_: &str| conditions.iter().find(|c| c.type_ == type_);
    let phase = status.phase.as_deref().unwrap_or("Pending");

    if matches!(phase, "Failed" | "Succeeded") {
        let why =
            [status.reason.as_deref(), status.message.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(": ");
        let message = if why.is_empty() {
            "the desktop pod has stopped".to_string()
        } else {
            format!("the desktop pod has stopped ({why})")
        };
        return (WorkspacePhase::Failed, Some(message.clone()), vec![("PodFailed", message)]);
    }
    let ready = condition("Ready").is_some_and(|c| c.status == "True");
    if phase == "Running" && ready {
        return (WorkspacePhase::Running, None, vec![]);
    }

    let mut problems = Vec::new();
    let scheduled = condition("PodScheduled");
    let mut waiting_for_volume = false;
    if let Some(c) = scheduled
        && c.status == "False"
        && c.reason.as_deref() == Some("Unschedulable")
    {
        let message = c.message.clone().unwrap_or_else(|| "no node can run the desktop".into());
        // The scheduler's word for a home volume still being provisioned: a stage, not a problem.
        if message.contains("unbound immediate PersistentVolumeClaims") {
            waiting_for_volume = true;
        } else {
            problems.push(("Unschedulable", message));
        }
    }
    let statuses = status.init_container_statuses.iter().chain(&status.container_statuses).flatten();
    for s in statuses {
        let Some(waiting) = s.state.as_ref().and_then(|st| st.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.as_deref().unwrap_or_default();
        if IMAGE_PULL_FAILURES.contains(&reason) {
            problems.push((
                "ImagePullFailed",
                waiting.message.clone().unwrap_or_else(|| format!("{reason}: cannot pull image {:?}", s.image)),
            ));
        } else if reason == "CrashLoopBackOff" {
            let exit = s
                .last_state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .map(|t| format!(" (last exit code {})", t.exit_code))
                .unwrap_or_default();
            problems.push((
                "CrashLoopBackOff",
                format!("the desktop keeps exiting{exit}; `kubectl logs {}` shows why", pod.name_any()),
            ));
        }
    }

    let message = match problems.first() {
        Some((_, message)) => message.clone(),
        None if waiting_for_volume => PREPARING_HOME.into(),
        None if scheduled.is_none_or(|c| c.status != "True") => "waiting for a node".into(),
        None if phase == "Running" => "waiting for the desktop to answer".into(),
        None => "starting the desktop container".into(),
    };
    (WorkspacePhase::Starting, Some(message), problems)
}
