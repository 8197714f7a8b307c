//! The Kubernetes backend: Teams, WorkspaceTemplates and Workspaces are objects of Deskpod's API
//! (`deskpod.io/v1alpha1`), and deskpod-controller turns them into namespaces, pods and services.
//!
//! - **Memberships** come from the Teams' `spec.members`, read from a cache kept by a watch
//!   (a kube-runtime reflector), so authorizing a request costs no API call. A member removed or
//!   added is seen as soon as the watch reports it (milliseconds).
//! - **Creating** a workspace checks, before anything is written, what the portal can know
//!   cheaply: the name, that the template exists, the controller's own validation against the
//!   team's per-workspace limits, and the team's remaining workspace count and storage (from the
//!   cached Team's quota status). The API server's admission (CRD validation, the team's
//!   ResourceQuota) decides last; its refusal is passed on in its own words. One object is
//!   created, or none.
//! - **The desktop** of a running workspace answers at its pod's IP on the template's port once
//!   its container runs (see [`pod_address`]), with the password from the `<ws>-vnc` Secret. For tests on kwok nodes, whose pods run nothing, a backend built with
//!   [`KubernetesOptions::allow_endpoint_override`] honours the Workspace annotation
//!   [`DESKTOP_ENDPOINT_ANNOTATION`] (`127.0.0.1:5901`) instead. That option is off by default
//!   and must stay off in production: whoever may annotate a Workspace could send the portal's
//!   proxy anywhere.
//! - **Input** for idle culling is recorded in the Workspace annotation
//!   [`LAST_ACTIVITY_ANNOTATION`] (RFC 3339) with a merge patch.
//!
//! - **Administration** (teams and templates, for platform admins) replaces the object's whole spec
//!   (guarded by its resourceVersion), so a member removed on the page is gone whoever added it;
//!   the API server's schema and CEL rules decide, and their refusal is passed on in their own
//!   words. A template is deleted only when no Workspace uses it.
//!
//! The portal needs, cluster-wide: get/list/watch Teams and WorkspaceTemplates (and create, update
//! and patch them, delete WorkspaceTemplates, for the admin pages); get/list/create/patch/delete
//! Workspaces; get Pods and Secrets in team namespaces.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use deskpod_controller::api::{
    Cluster, DesktopProtocol, HomeVolume, Team, TeamMember, TeamSpec, Workspace, WorkspacePhase, WorkspaceSpec,
    WorkspaceTemplate, WorkspaceTemplateSpec,
};
use deskpod_controller::quantity::{self, Milli};
use deskpod_controller::workspace::idle::LAST_ACTIVITY_ANNOTATION;
use deskpod_controller::workspace::render::{
    self, DESKTOP_CONTAINER, OWNER_HASH_LABEL, VNC_PASSWORD_KEY, owner_hash, pod_name, vnc_secret_name,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::Instrument;

use super::agent::{AgentView, LogStream, NewAgent};
use super::invite::members_with;
pub use super::views::{MAX_WORKSPACE_NAME_LEN, memberships_in, validate_workspace_name};
use super::views::{team_view, template_view};
use super::{
    Backend, BackendError, BackendResult, DesktopEndpoint, NewWorkspace, Protocol, TeamView, TemplateView,
    WorkspaceView,
};
use crate::authz::Membership;
use crate::membership::MembershipSource;

/// Workspace annotation naming where the desktop answers (`127.0.0.1:5901`), honoured only by a
/// backend built with [`KubernetesOptions::allow_endpoint_override`] (tests, whose kwok pods run
/// no desktop).
pub const DESKTOP_ENDPOINT_ANNOTATION: &str = "deskpod.io/desktop-endpoint";
/// The field manager of the portal's writes.
pub const FIELD_MANAGER: &str = "deskpod-portal";
/// The ResourceQuota key counting a team's workspaces.
pub const WORKSPACE_COUNT_QUOTA: &str = "count/workspaces.deskpod.io";
/// The ResourceQuota key of a team's home volume storage.
pub const STORAGE_QUOTA: &str = "requests.storage";
/// How long [`KubernetesBackend::start`] waits for the first list of Teams.
const CACHE_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long adding a member waits for the Team cache to show it.
const CACHE_WAIT: Duration = Duration::from_secs(10);
/// How often the Team patch is tried when someone else changes the Team at the same moment.
const TEAM_PATCH_ATTEMPTS: u32 = 5;

/// How the backend behaves beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct KubernetesOptions {
    /// Honour [`DESKTOP_ENDPOINT_ANNOTATION`] on Workspaces. Test-only: never in production.
    pub allow_endpoint_override: bool,
    /// The namespace of the member clusters' kubeconfig Secrets (the controller's
    /// `--cluster-secret-namespace`); `deskpod-system` when unset.
    pub cluster_secret_namespace: Option<String>,
}

/// Workspaces on Kubernetes, reconciled by deskpod-controller.
pub struct KubernetesBackend {
    client: Client,
    /// Clients for the member clusters that placed teams live on.
    members: MemberClients,
    teams: Store<Team>,
    options: KubernetesOptions,
    /// The watch that keeps `teams` current; aborted when the backend is dropped.
    team_watch: tokio::task::JoinHandle<()>,
}

impl Drop for KubernetesBackend {
    fn drop(&mut self) {
        self.team_watch.abort();
    }
}

/// Why the team's quota cannot take one more workspace whose home volume is `home_size`, judged
/// from the quota status the controller mirrors on the Team; `None` when it can (or the team sets
/// no such quota). Running pods are not checked: a workspace over the pod, CPU or memory quota is
/// accepted and waits for capacity, as the controller reports.
pub fn quota_refusal(team: &Team, home_size: &Quantity) -> Option<String> {
    let status = team.status.as_ref()?;
    let amount =
        |map: &BTreeMap<String, Quantity>, key: &str| map.get(key).and_then(|q| quantity::parse_quantity(q).ok());
    let name = team.name_any();
    if let Some(hard) = amount(&status.quota_hard, WORKSPACE_COUNT_QUOTA) {
        let used = amount(&status.quota_used, WORKSPACE_COUNT_QUOTA).unwrap_or(Milli(0));
        if used >= hard {
            return Some(format!(
                "team {name} has all {} of its workspaces in use; delete one, or ask an admin for a larger quota",
                hard.0 / 1000
            ));
        }
    }
    if let (Some(hard), Ok(wanted)) = (amount(&status.quota_hard, STORAGE_QUOTA), quantity::parse_quantity(home_size)) {
        let used = amount(&status.quota_used, STORAGE_QUOTA).unwrap_or(Milli(0));
        if used.0 + wanted.0 > hard.0 {
            let quota = &status.quota_hard[STORAGE_QUOTA].0;
            let in_use = status.quota_used.get(STORAGE_QUOTA).map_or("0", |q| q.0.as_str());
            return Some(format!(
                "the home volume ({}) does not fit in team {name}'s storage quota: {in_use} of {quota} is in use",
                home_size.0
            ));
        }
    }
    None
}

impl KubernetesBackend {
    /// Starts watching Teams and returns once the first list is in the cache.
    pub async fn start(client: Client, options: KubernetesOptions) -> BackendResult<Self> {
        let (teams, writer) = reflector::store();
        let events =
            watcher(Api::<Team>::all(client.clone()), watcher::Config::default()).default_backoff().reflect(writer);
        let team_watch = tokio::spawn(
            events
                .for_each(|event| {
                    if let Err(error) = event {
                        tracing::warn!(%error, "watching Teams failed; retrying");
                    }
                    std::future::ready(())
                })
                .instrument(tracing::info_span!("team_watch")),
        );
        let members = MemberClients::new(
            options.cluster_secret_namespace.clone().unwrap_or_else(|| DEFAULT_CLUSTER_SECRET_NAMESPACE.to_owned()),
        );
        let backend = Self { client, members, teams, options, team_watch };
        match tokio::time::timeout(CACHE_SYNC_TIMEOUT, backend.teams.wait_until_ready()).await {
            Ok(Ok(())) => Ok(backend),
            _ => Err(BackendError::Unavailable(format!(
                "could not list Teams within {}s; is the API server reachable and are Deskpod's CRDs installed?",
                CACHE_SYNC_TIMEOUT.as_secs()
            ))),
        }
    }

    fn cached_team(&self, team: &str) -> Option<std::sync::Arc<Team>> {
        self.teams.get(&ObjectRef::new(team))
    }

    /// The client of the cluster `team` lives on: this backend's own, or the member cluster the
    /// team is placed on (`spec.placement.cluster`), where its namespace, workspaces and agents are.
    pub(super) async fn team_client(&self, team: &str) -> BackendResult<Client> {
        match self.cached_team(team).and_then(|t| t.spec.placement.as_ref().map(|p| p.cluster.clone())) {
            None => Ok(self.client.clone()),
            Some(cluster) => self.members.client(&self.client, team, &cluster).await,
        }
    }

    async fn workspaces_api(&self, team: &str) -> BackendResult<Api<Workspace>> {
        Ok(Api::namespaced(self.team_client(team).await?, &team_namespace(team)))
    }

    async fn get_workspace(&self, team: &str, name: &str) -> BackendResult<Option<Workspace>> {
        if validate_workspace_name(name).is_err() {
            return Ok(None);
        }
        self.workspaces_api(team).await?.get_opt(name).await.map_err(|e| unavailable("reading a workspace", e))
    }

    async fn create(&self, new: NewWorkspace) -> BackendResult<WorkspaceView> {
        validate_workspace_name(&new.name).map_err(BackendError::Invalid)?;
        let team = self
            .cached_team(&new.team)
            .ok_or_else(|| BackendError::NotFound(format!("team {} does not exist", new.team)))?;
        let template = Api::<WorkspaceTemplate>::all(self.client.clone())
            .get_opt(&new.template)
            .await
            .map_err(|e| unavailable("reading a template", e))?
            .ok_or_else(|| {
                BackendError::Invalid(format!(
                    "template {:?} does not exist; the catalog lists those that do",
                    new.template
                ))
            })?;
        // A template written around the portal (kubectl) may name an image no node can parse;
        // its pod would fail later, so the workspace is refused now, naming the template.
        crate::template_rules::check_image(&template.spec.image).map_err(|reason| {
            BackendError::Invalid(format!(
                "the template {} cannot start: its image {:?} is not a valid image reference ({reason}); \
                 a platform admin must correct the template",
                new.template, template.spec.image
            ))
        })?;
        let namespace = team_namespace(&new.team);
        let mut workspace = Workspace::new(
            &new.name,
            WorkspaceSpec {
                owner: new.owner.clone(),
                template: new.template.clone(),
                running: true,
                resources: None,
                home: HomeVolume::default(),
            },
        );
        workspace.metadata = ObjectMeta {
            name: Some(new.name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(BTreeMap::from([(OWNER_HASH_LABEL.to_owned(), owner_hash(&new.owner))])),
            ..Default::default()
        };
        // The controller's own validation, so a workspace it would mark Failed is never created.
        let desired =
            render::validate(&workspace, Some(&template), &team).map_err(|e| BackendError::Invalid(e.message))?;
        // A taken name says so, rather than that the quota (which counts it) is full.
        if self.get_workspace(&new.team, &new.name).await?.is_some() {
            return Err(conflict(&new.team, &new.name));
        }
        if let Some(refusal) = quota_refusal(&team, &desired.home_size) {
            return Err(BackendError::Invalid(refusal));
        }
        // Quota admission updates the team's ResourceQuota with optimistic concurrency; a create
        // at the same moment as another one in the team can get a conflict about the quota that
        // says nothing about this workspace. Those are retried.
        let api = self.workspaces_api(&new.team).await?;
        let mut attempts = 1;
        let created = loop {
            match api.create(&PostParams::default(), &workspace).await {
                Err(kube::Error::Api(status)) if status.is_conflict() && attempts < 5 => attempts += 1,
                result => break result,
            }
        };
        let created = created.map_err(|e| create_error(&new.team, &new.name, &namespace, e))?;
        Ok(view(&new.team, &created))
    }

    async fn endpoint(&self, team: &str, name: &str) -> BackendResult<Option<DesktopEndpoint>> {
        let Some(workspace) = self.get_workspace(team, name).await? else {
            return Err(not_found(team, name));
        };
        if !workspace.spec.running {
            return Ok(None);
        }
        let namespace = team_namespace(team);
        let on = self.team_client(team).await?;
        let template = Api::<WorkspaceTemplate>::all(self.client.clone())
            .get_opt(&workspace.spec.template)
            .await
            .map_err(|e| unavailable("reading a template", e))?
            .ok_or_else(|| BackendError::NotFound(format!("template {} no longer exists", workspace.spec.template)))?;
        let protocol = match template.spec.protocol {
            DesktopProtocol::Novnc => Protocol::Novnc,
            DesktopProtocol::Kasm => Protocol::Kasm,
        };
        let overridden = self
            .options
            .allow_endpoint_override
            .then(|| workspace.annotations().get(DESKTOP_ENDPOINT_ANNOTATION))
            .flatten();
        let address = match overridden {
            // The annotation stands in for a desktop kwok's pods never run: it is there once the
            // Workspace is Running.
            Some(_) if workspace.status.as_ref().is_none_or(|s| s.phase != WorkspacePhase::Running) => return Ok(None),
            Some(raw) => raw.parse::<SocketAddr>().map_err(|_| {
                BackendError::Unavailable(format!(
                    "workspace {team}/{name}: annotation {DESKTOP_ENDPOINT_ANNOTATION} is not an address like 127.0.0.1:5901"
                ))
            })?,
            None => {
                let pod = Api::<Pod>::namespaced(on.clone(), &namespace)
                    .get_opt(&pod_name(name))
                    .await
                    .map_err(|e| unavailable("reading a desktop pod", e))?;
                match pod.as_ref().and_then(|pod| pod_address(pod, template.spec.port)) {
                    Some(address) => address,
                    None => return Ok(None),
                }
            }
        };
        let secret = Api::<Secret>::namespaced(on, &namespace)
            .get_opt(&vnc_secret_name(name))
            .await
            .map_err(|e| unavailable("reading a desktop password", e))?;
        let password = secret
            .and_then(|s| s.data)
            .and_then(|mut data| data.remove(VNC_PASSWORD_KEY))
            .and_then(|bytes| String::from_utf8(bytes.0).ok());
        Ok(Some(DesktopEndpoint { protocol, address, password }))
    }

    async fn patch_workspace(&self, team: &str, name: &str, patch: serde_json::Value, what: &str) -> BackendResult<()> {
        if validate_workspace_name(name).is_err() {
            return Err(not_found(team, name));
        }
        match self.workspaces_api(team).await?.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Err(not_found(team, name)),
            Err(e) => Err(unavailable(what, e)),
        }
    }
    /// [`Backend::add_member`]: one JSON patch of the Team's `spec.members` guarded by its
    /// `resourceVersion` (retried on conflict), then a wait for the Team cache to show it.
    async fn add_member(&self, team: &str, member: &TeamMember) -> BackendResult<()> {
        let api = Api::<Team>::all(self.client.clone());
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
        for _ in 0..TEAM_PATCH_ATTEMPTS {
            let current =
                api.get_opt(team).await.map_err(|e| unavailable("reading the team", e))?.ok_or_else(|| {
                    BackendError::NotFound(format!("team {team} does not exist; ask an admin to create it"))
                })?;
            let Some(members) = members_with(&current.spec.members, member) else {
                return Ok(());
            };
            let patch = members_patch(&current.resource_version().unwrap_or_default(), &members);
            match api.patch(team, &params, &patch).await {
                Ok(patched) => {
                    self.wait_until_cached(&patched, &member.user).await;
                    return Ok(());
                }
                Err(kube::Error::Api(status)) if status.is_conflict() => {
                    tracing::debug!(team, "the team changed while adding a member; retrying");
                }
                Err(e) => return Err(unavailable("adding a member to the team", e)),
            }
        }
        Err(BackendError::Unavailable(format!(
            "team {team} kept changing; adding the member failed {TEAM_PATCH_ATTEMPTS} times"
        )))
    }

    /// Waits until the Team cache shows `user` in `team` as the patched Team does, for at most
    /// [`CACHE_WAIT`]; logs and goes on otherwise.
    async fn wait_until_cached(&self, team: &Team, user: &str) {
        let expected = memberships_in([team], user);
        let deadline = tokio::time::Instant::now() + CACHE_WAIT;
        loop {
            let found = memberships_in(self.teams.state().iter().map(|t| t.as_ref()), user);
            if expected.iter().all(|m| found.contains(m)) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(team = %team.name_any(), user, "the Team cache has not seen the new member yet");
                return;
            }
            // The reflector applies the watch event within milliseconds.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A JSON patch setting `spec.members`, applied only if the Team still has `resource_version`
/// (the API server answers 409 Conflict otherwise).
pub fn members_patch(resource_version: &str, members: &[TeamMember]) -> Patch<()> {
    let ops = json!([
        { "op": "replace", "path": "/metadata/resourceVersion", "value": resource_version },
        { "op": "add", "path": "/spec/members", "value": members },
    ]);
    Patch::Json(serde_json::from_value(ops).expect("two well-formed JSON patch operations"))
}

/// The cluster-scoped objects the admin pages write whole ([`KubernetesBackend::put_spec`]).
trait AdminObject:
    kube::Resource<Scope = kube::core::ClusterResourceScope, DynamicType = ()>
    + Clone
    + serde::Serialize
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    type Spec: Clone;
    fn with_spec(name: &str, spec: Self::Spec) -> Self;
    fn set_spec(&mut self, spec: Self::Spec);
}

impl AdminObject for Team {
    type Spec = TeamSpec;
    fn with_spec(name: &str, spec: TeamSpec) -> Self {
        Team::new(name, spec)
    }
    fn set_spec(&mut self, spec: TeamSpec) {
        self.spec = spec;
    }
}

impl AdminObject for WorkspaceTemplate {
    type Spec = WorkspaceTemplateSpec;
    fn with_spec(name: &str, spec: WorkspaceTemplateSpec) -> Self {
        WorkspaceTemplate::new(name, spec)
    }
    fn set_spec(&mut self, spec: WorkspaceTemplateSpec) {
        self.spec = spec;
    }
}

/// Where the members' kubeconfig Secrets are unless the portal is told otherwise (the chart's
/// release namespace, as the controller's `--cluster-secret-namespace`).
pub const DEFAULT_CLUSTER_SECRET_NAMESPACE: &str = "deskpod-system";

/// Clients for member clusters, built from the kubeconfig Secrets the controller uses (the Secret
/// a `Cluster` names, in one namespace), with the same timeouts
/// ([`deskpod_controller::cluster::connect`]). A client is rebuilt when its Secret changes.
struct MemberClients {
    secret_namespace: String,
    /// By cluster name: the Secret's resourceVersion the client was built from, and the client.
    clients: std::sync::Mutex<std::collections::HashMap<String, (String, Client)>>,
}

impl MemberClients {
    fn new(secret_namespace: String) -> Self {
        Self { secret_namespace, clients: Default::default() }
    }

    async fn client(&self, management: &Client, team: &str, cluster: &str) -> BackendResult<Client> {
        let unusable = |why: String| {
            BackendError::Unavailable(format!(
                "team {team} lives on the cluster {cluster}, which the portal cannot use: {why}"
            ))
        };
        let registered = Api::<Cluster>::all(management.clone())
            .get_opt(cluster)
            .await
            .map_err(|e| unavailable("reading a Cluster", e))?
            .ok_or_else(|| unusable("no such Cluster is registered".into()))?;
        let reference = &registered.spec.kubeconfig_secret;
        let secret = Api::<Secret>::namespaced(management.clone(), &self.secret_namespace)
            .get_opt(&reference.name)
            .await
            .map_err(|e| unavailable("reading a cluster's kubeconfig Secret", e))?
            .ok_or_else(|| unusable(format!("no Secret {}/{}", self.secret_namespace, reference.name)))?;
        let version = secret.resource_version().unwrap_or_default();
        if let Some((built_from, client)) = self.clients.lock().expect("member clients").get(cluster)
            && *built_from == version
        {
            return Ok(client.clone());
        }
        let kubeconfig = secret
            .data
            .and_then(|mut data| data.remove(&reference.key))
            .and_then(|bytes| String::from_utf8(bytes.0).ok())
            .ok_or_else(|| unusable(format!("the Secret has no key {:?}", reference.key)))?;
        // The parser's words may quote the kubeconfig (credentials): neither shown nor logged.
        let client = deskpod_controller::cluster::connect::client_from_kubeconfig(&kubeconfig)
            .await
            .map_err(|_| unusable("its kubeconfig does not work; the Cluster's status says why".into()))?;
        self.clients.lock().expect("member clients").insert(cluster.to_owned(), (version, client.clone()));
        Ok(client)
    }
}

/// The namespace of a team's workspaces.
pub fn team_namespace(team: &str) -> String {
    format!("team-{team}")
}

/// The address of a desktop pod whose desktop container runs: its IP and the template's port.
///
/// The portal dials the pod directly, as JupyterHub does, rather than its Service: pod IPs route
/// on every pod network, while a Service's cluster IP needs kube-proxy (or an equivalent) where
/// the portal runs. It does not wait for the pod's Ready condition either: the kubelet probes the
/// VNC port once a second at best, and the proxy's own connection is the better probe (it fails
/// until the desktop answers, and the browser's page waits for the Workspace to be Running
/// anyway). In single-host mode, too, the portal's connection is what decides.
fn pod_address(pod: &Pod, port: i32) -> Option<SocketAddr> {
    let status = pod.status.as_ref()?;
    let running = status
        .container_statuses
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|c| c.name == DESKTOP_CONTAINER && c.state.as_ref().is_some_and(|s| s.running.is_some()));
    let ip = status.pod_ip.as_deref().filter(|_| running)?.parse().ok()?;
    Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
}

/// What a refused Workspace create means to the person asking.
fn create_error(team: &str, name: &str, namespace: &str, error: kube::Error) -> BackendError {
    match error {
        kube::Error::Api(status) if status.is_already_exists() => conflict(team, name),
        kube::Error::Api(status) if status.is_not_found() => BackendError::Invalid(format!(
            "team {team}'s namespace {namespace} is not ready yet; try again in a minute"
        )),
        // Quota admission cannot count workspaces until the quota controller has (a minute or so
        // after the team, or the CRDs, were created): nothing is wrong with the request.
        kube::Error::Api(status) if status.is_forbidden() && status.message.contains("status unknown for quota") => {
            BackendError::Unavailable(format!(
                "team {team}'s quota is still being counted (this takes up to a minute for a new team); try again shortly"
            ))
        }
        kube::Error::Api(status) if status.is_invalid() || is_admission_refusal(&status) => {
            BackendError::Invalid(status.message)
        }
        other => unavailable("creating a workspace", other),
    }
}

/// Whether a 403 is admission refusing the object (the team's ResourceQuota, a policy) rather than
/// the portal lacking permission, which is the portal's misconfiguration.
fn is_admission_refusal(status: &kube::core::Status) -> bool {
    status.is_forbidden() && !status.message.contains(" cannot ")
}

fn conflict(team: &str, name: &str) -> BackendError {
    BackendError::Conflict(format!("team {team} already has a workspace named {name}; pick another name"))
}

fn not_found(team: &str, name: &str) -> BackendError {
    BackendError::NotFound(format!("there is no workspace {name} in team {team}"))
}

/// An API failure the user cannot fix: logged in full, answered in general.
fn unavailable(what: &str, error: kube::Error) -> BackendError {
    tracing::error!(%error, "Kubernetes API: {what} failed");
    BackendError::Unavailable(format!("the Kubernetes API failed while {what}"))
}

/// Ready reasons that are not a problem.
const FINE_READY_REASONS: [&str; 2] = ["DesktopReady", "NotRunning"];

/// Problems by reason: problem conditions that are True, and Ready's reason when it is False for
/// a reason of its own (`TemplateNotFound`, `OverTeamLimit`, ...).
fn problems(conditions: &[Condition]) -> BTreeMap<String, String> {
    conditions
        .iter()
        .filter_map(|c| match c.type_.as_str() {
            "Ready" if c.status == "False" && !FINE_READY_REASONS.contains(&c.reason.as_str()) => {
                Some((c.reason.clone(), c.message.clone()))
            }
            "Ready" => None,
            _ if c.status == "True" => Some((c.type_.clone(), c.message.clone())),
            _ => None,
        })
        .collect()
}

/// A Workspace as the pages show it.
pub fn view(team: &str, ws: &Workspace) -> WorkspaceView {
    let status = ws.status.clone().unwrap_or_default();
    WorkspaceView {
        team: team.to_owned(),
        name: ws.name_any(),
        owner: ws.spec.owner.clone(),
        template: ws.spec.template.clone(),
        running: ws.spec.running,
        phase: status.phase,
        message: status.message.clone(),
        problems: problems(&status.conditions),
        created_at: ws.metadata.creation_timestamp.as_ref().map(|t| t.0),
        started_at: status.started_at.as_ref().map(|t| t.0),
    }
}

/// Administration: Teams and WorkspaceTemplates, written whole.
impl KubernetesBackend {
    /// Makes `spec` the whole spec of the object `name`: creates it, or replaces the spec of the
    /// one there, guarded by its resourceVersion (retried when it changed meanwhile). The API
    /// server validates (schema and CEL rules); its refusal is [`BackendError::Invalid`] in its
    /// own words.
    ///
    /// A replace, not a server-side apply: what the admin saves is the spec, whoever wrote its
    /// fields before. Members added by an invite (a patch) or with kubectl belong to other field
    /// managers, and an apply would leave them in place when the admin removes them.
    async fn put_spec<K: AdminObject>(&self, name: &str, spec: K::Spec, what: &str) -> BackendResult<K> {
        validate_workspace_name(name)
            .map_err(|e| BackendError::Invalid(e.replace("workspace", &K::kind(&()).to_lowercase())))?;
        let api = Api::<K>::all(self.client.clone());
        let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
        for _ in 0..TEAM_PATCH_ATTEMPTS {
            let written = match api.get_opt(name).await.map_err(|e| unavailable(what, e))? {
                None => api.create(&params, &K::with_spec(name, spec.clone())).await,
                Some(mut current) => {
                    current.set_spec(spec.clone());
                    current.meta_mut().managed_fields = None;
                    api.replace(name, &params, &current).await
                }
            };
            match written {
                Ok(object) => return Ok(object),
                Err(kube::Error::Api(status)) if status.is_conflict() || status.code == 409 => {
                    tracing::debug!(name, "changed while saving; retrying");
                }
                Err(kube::Error::Api(status))
                    if status.is_invalid() || status.code == 400 || is_admission_refusal(&status) =>
                {
                    return Err(BackendError::Invalid(status.message));
                }
                Err(e) => return Err(unavailable(what, e)),
            }
        }
        Err(BackendError::Unavailable(format!("{name} kept changing; saving it failed {TEAM_PATCH_ATTEMPTS} times")))
    }

    /// Waits until the Team cache holds `applied` (or a later version), for at most
    /// [`CACHE_WAIT`], so that the memberships it grants count at once.
    async fn wait_until_team_cached(&self, applied: &Team) {
        let deadline = tokio::time::Instant::now() + CACHE_WAIT;
        let name = applied.name_any();
        while self.cached_team(&name).is_none_or(|cached| cached.spec != applied.spec) {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(team = %name, "the Team cache has not seen the saved team yet");
                return;
            }
            // The reflector applies the watch event within milliseconds.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Backend::delete_template`]: refused while a Workspace in any team namespace uses it.
    async fn delete_unused_template(&self, template: &str) -> BackendResult<()> {
        let missing = || BackendError::NotFound(format!("there is no template {template}"));
        if validate_workspace_name(template).is_err() {
            return Err(missing());
        }
        let mut workspaces = Api::<Workspace>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| unavailable("listing workspaces", e))?
            .items;
        // Teams placed on member clusters have their workspaces there: a member that cannot be
        // asked refuses the deletion (unavailable) rather than let a template in use go.
        let placed: Vec<String> =
            self.teams.state().iter().filter(|t| t.spec.placement.is_some()).map(|t| t.name_any()).collect();
        for team in placed {
            let on_member = self.workspaces_api(&team).await?.list(&ListParams::default()).await;
            workspaces.extend(on_member.map_err(|e| unavailable("listing a member cluster's workspaces", e))?.items);
        }
        let users: Vec<String> = workspaces
            .iter()
            .filter(|ws| ws.spec.template == template && ws.metadata.deletion_timestamp.is_none())
            .filter_map(|ws| {
                let team = ws.namespace()?.strip_prefix("team-")?.to_owned();
                Some(format!("{team}/{}", ws.name_any()))
            })
            .collect();
        if !users.is_empty() {
            return Err(template_in_use(template, &users));
        }
        match Api::<WorkspaceTemplate>::all(self.client.clone()).delete(template, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Err(missing()),
            Err(e) => Err(unavailable("deleting a template", e)),
        }
    }
}

/// Why a template cannot be deleted: the workspaces (`team/name`) that use it, the first few named.
fn template_in_use(template: &str, users: &[String]) -> BackendError {
    const NAMED: usize = 5;
    let mut named = users.iter().take(NAMED).cloned().collect::<Vec<_>>().join(", ");
    if users.len() > NAMED {
        named.push_str(&format!(" and {} more", users.len() - NAMED));
    }
    BackendError::Conflict(format!(
        "template {template} is still used by {} workspace(s) ({named}); delete them first",
        users.len()
    ))
}

impl MembershipSource for KubernetesBackend {
    fn memberships<'a>(&'a self, user: &'a str) -> BoxFuture<'a, crate::Result<Vec<Membership>>> {
        let teams = self.teams.state();
        Box::pin(std::future::ready(Ok(memberships_in(teams.iter().map(|t| t.as_ref()), user))))
    }
}

impl Backend for KubernetesBackend {
    fn templates(&self) -> BoxFuture<'_, BackendResult<Vec<TemplateView>>> {
        Box::pin(async move {
            let list = Api::<WorkspaceTemplate>::all(self.client.clone())
                .list(&ListParams::default())
                .await
                .map_err(|e| unavailable("listing templates", e))?;
            let mut templates: Vec<TemplateView> = list.items.iter().map(template_view).collect();
            templates.sort_by(|a, b| a.display_name.cmp(&b.display_name).then_with(|| a.name.cmp(&b.name)));
            Ok(templates)
        })
    }

    fn team<'a>(&'a self, team: &'a str) -> BoxFuture<'a, BackendResult<Option<TeamView>>> {
        let found = self.cached_team(team).map(|t| team_view(&t));
        Box::pin(std::future::ready(Ok(found)))
    }

    fn workspaces<'a>(
        &'a self,
        team: &'a str,
        owner: Option<&'a str>,
    ) -> BoxFuture<'a, BackendResult<Vec<WorkspaceView>>> {
        Box::pin(async move {
            let mut params = ListParams::default();
            if let Some(owner) = owner {
                params = params.labels(&format!("{OWNER_HASH_LABEL}={}", owner_hash(owner)));
            }
            let list = match self.workspaces_api(team).await?.list(&params).await {
                Ok(list) => list,
                Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(vec![]),
                Err(e) => return Err(unavailable("listing workspaces", e)),
            };
            // The owner label narrows the list; the owner field decides.
            let mut views: Vec<WorkspaceView> = list
                .items
                .iter()
                .filter(|ws| owner.is_none_or(|owner| ws.spec.owner == owner))
                .map(|ws| view(team, ws))
                .collect();
            views.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(views)
        })
    }

    fn workspace<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<Option<WorkspaceView>>> {
        Box::pin(async move { Ok(self.get_workspace(team, name).await?.map(|ws| view(team, &ws))) })
    }

    fn create_workspace(&self, new: NewWorkspace) -> BoxFuture<'_, BackendResult<WorkspaceView>> {
        Box::pin(self.create(new))
    }

    fn set_running<'a>(&'a self, team: &'a str, name: &'a str, running: bool) -> BoxFuture<'a, BackendResult<()>> {
        let patch = json!({ "spec": { "running": running } });
        Box::pin(self.patch_workspace(
            team,
            name,
            patch,
            if running { "starting a workspace" } else { "stopping a workspace" },
        ))
    }

    fn delete_workspace<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            if validate_workspace_name(name).is_err() {
                return Err(not_found(team, name));
            }
            match self.workspaces_api(team).await?.delete(name, &DeleteParams::background()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.is_not_found() => Err(not_found(team, name)),
                Err(e) => Err(unavailable("deleting a workspace", e)),
            }
        })
    }

    fn desktop<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<Option<DesktopEndpoint>>> {
        Box::pin(self.endpoint(team, name))
    }

    fn record_input<'a>(&'a self, team: &'a str, name: &'a str, at: Timestamp) -> BoxFuture<'a, BackendResult<()>> {
        let patch = json!({ "metadata": { "annotations": { LAST_ACTIVITY_ANNOTATION: at.to_string() } } });
        Box::pin(self.patch_workspace(team, name, patch, "recording desktop input"))
    }

    fn add_member<'a>(&'a self, team: &'a str, member: TeamMember) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { KubernetesBackend::add_member(self, team, &member).await })
    }

    fn teams(&self) -> BoxFuture<'_, BackendResult<Vec<TeamView>>> {
        let mut views: Vec<TeamView> = self.teams.state().iter().map(|t| team_view(t)).collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        Box::pin(std::future::ready(Ok(views)))
    }

    fn team_spec<'a>(&'a self, team: &'a str) -> BoxFuture<'a, BackendResult<Option<TeamSpec>>> {
        Box::pin(async move {
            if validate_workspace_name(team).is_err() {
                return Ok(None);
            }
            let found = Api::<Team>::all(self.client.clone()).get_opt(team).await;
            Ok(found.map_err(|e| unavailable("reading a team", e))?.map(|t| t.spec))
        })
    }

    fn template_spec<'a>(&'a self, template: &'a str) -> BoxFuture<'a, BackendResult<Option<WorkspaceTemplateSpec>>> {
        Box::pin(async move {
            if validate_workspace_name(template).is_err() {
                return Ok(None);
            }
            let found = Api::<WorkspaceTemplate>::all(self.client.clone()).get_opt(template).await;
            Ok(found.map_err(|e| unavailable("reading a template", e))?.map(|t| t.spec))
        })
    }

    fn put_team<'a>(&'a self, team: &'a str, spec: TeamSpec) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            let applied: Team = self.put_spec(team, spec, "saving a team").await?;
            self.wait_until_team_cached(&applied).await;
            Ok(())
        })
    }

    fn put_template<'a>(&'a self, template: &'a str, spec: WorkspaceTemplateSpec) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            // Refused here, before the API server (whose schema cannot say what an image
            // reference or a sane quantity is).
            crate::template_rules::check(&spec).map_err(|refusal| BackendError::Invalid(refusal.message))?;
            self.put_spec::<WorkspaceTemplate>(template, spec, "saving a template").await.map(drop)
        })
    }

    fn delete_template<'a>(&'a self, template: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.delete_unused_template(template))
    }

    fn create_agent(&self, new: NewAgent) -> BoxFuture<'_, BackendResult<AgentView>> {
        Box::pin(self.submit_agent(new))
    }

    fn agents<'a>(&'a self, team: &'a str) -> BoxFuture<'a, BackendResult<Vec<AgentView>>> {
        Box::pin(self.list_agents(team))
    }

    fn agent<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<Option<AgentView>>> {
        Box::pin(async move {
            Ok(self.get_agent(team, name).await?.map(|a| super::kubernetes_agents::agent_view(team, &a)))
        })
    }

    fn agent_logs<'a>(&'a self, team: &'a str, name: &'a str, follow: bool) -> BoxFuture<'a, BackendResult<LogStream>> {
        Box::pin(self.agent_log_stream(team, name, follow))
    }

    fn delete_agent<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.remove_agent(team, name))
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;
    use serde_json::json;

    use super::*;

    #[test]
    fn the_patch_is_guarded_by_the_resource_version() {
        use deskpod_controller::api::TeamRole;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        const END: &str = "2026-03-01T12:00:00Z";
        let members = [TeamMember {
            user: "carol@x.test".into(),
            role: TeamRole::Contractor,
            expires_at: Some(Time(END.parse().unwrap())),
        }];
        let Patch::Json(patch) = members_patch("4711", &members) else { panic!("not a JSON patch") };
        assert_eq!(
            serde_json::to_value(patch).unwrap(),
            json!([
                { "op": "replace", "path": "/metadata/resourceVersion", "value": "4711" },
                { "op": "add", "path": "/spec/members", "value": [
                    { "user": "carol@x.test", "role": "contractor", "expiresAt": END }
                ] },
            ])
        );
    }

    #[rstest]
    #[case::simple("dev", true)]
    #[case::digits_and_dashes("py-3-dev", true)]
    #[case::forty_chars(&"a".repeat(40), true)]
    #[case::forty_one_chars(&"a".repeat(41), false)]
    #[case::empty("", false)]
    #[case::uppercase("Dev", false)]
    #[case::starts_with_digit("3dev", false)]
    #[case::ends_with_dash("dev-", false)]
    #[case::dot("dev.1", false)]
    #[case::slash("../dev", false)]
    #[case::unicode("dév", false)]
    fn workspace_names(#[case] name: &str, #[case] valid: bool) {
        assert_eq!(validate_workspace_name(name).is_ok(), valid, "{name:?}: {:?}", validate_workspace_name(name));
    }

    #[test]
    fn a_quota_not_counted_yet_is_a_moment_to_wait_and_an_exceeded_one_a_refusal() {
        let forbidden =
            |message: &str| kube::Error::Api(kube::core::Status::failure(message, "Forbidden").with_code(403).boxed());
        let unknown = forbidden(
            r#"workspaces.deskpod.io "w" is forbidden: status unknown for quota: deskpod-team, resources: count/workspaces.deskpod.io"#,
        );
        assert!(
            matches!(create_error("apps", "w", "team-apps", unknown), BackendError::Unavailable(m) if m.contains("still being counted")),
        );
        let exceeded = forbidden(
            r#"workspaces.deskpod.io "w" is forbidden: exceeded quota: deskpod-team, requested: count/workspaces.deskpod.io=1"#,
        );
        assert!(
            matches!(create_error("apps", "w", "team-apps", exceeded), BackendError::Invalid(m) if m.contains("exceeded quota"))
        );
    }

    #[test]
    fn a_too_long_name_says_how_long_it_may_be() {
        let message = validate_workspace_name(&"a".repeat(50)).unwrap_err();
        assert!(message.contains("50 characters") && message.contains("at most 40"), "{message}");
    }

    fn team(hard: serde_json::Value, used: serde_json::Value) -> Team {
        serde_json::from_value(json!({
            "apiVersion": "deskpod.io/v1alpha1", "kind": "Team", "metadata": { "name": "platform" },
            "spec": { "members": [
                { "user": "Alice@Example.com", "role": "engineer" },
                { "user": "carol@example.com", "role": "contractor", "expiresAt": "2026-01-01T00:00:00Z" },
            ] },
            "status": { "quotaHard": hard, "quotaUsed": used }
        }))
        .unwrap()
    }

    #[rstest]
    #[case::no_quota(json!({}), json!({}), "10Gi", None)]
    #[case::workspaces_left(json!({"count/workspaces.deskpod.io": "2"}), json!({"count/workspaces.deskpod.io": "1"}), "1Gi", None)]
    #[case::workspaces_used_up(json!({"count/workspaces.deskpod.io": "2"}), json!({"count/workspaces.deskpod.io": "2"}), "1Gi", Some("all 2 of its workspaces"))]
    #[case::not_counted_yet(json!({"count/workspaces.deskpod.io": "1"}), json!({}), "1Gi", None)]
    #[case::storage_fits_exactly(json!({"requests.storage": "10Gi"}), json!({"requests.storage": "9Gi"}), "1Gi", None)]
    #[case::storage_too_small(json!({"requests.storage": "10Gi"}), json!({"requests.storage": "9500Mi"}), "1Gi", Some("1Gi) does not fit in team platform's storage quota: 9500Mi of 10Gi"))]
    fn remaining_quota(
        #[case] hard: serde_json::Value,
        #[case] used: serde_json::Value,
        #[case] home: &str,
        #[case] refusal: Option<&str>,
    ) {
        let found = quota_refusal(&team(hard, used), &Quantity(home.into()));
        match (found, refusal) {
            (None, None) => {}
            (Some(found), Some(expected)) => assert!(found.contains(expected), "{found}"),
            (found, expected) => panic!("expected {expected:?}, got {found:?}"),
        }
    }

    #[test]
    fn memberships_come_from_team_members_whatever_the_case_of_the_address() {
        let team = team(json!({}), json!({}));
        let alice = memberships_in([&team], "alice@example.com");
        assert_eq!(
            alice,
            vec![Membership { team: "platform".into(), role: crate::TeamRole::Engineer, expires_at: None }]
        );
        let carol = memberships_in([&team], "carol@example.com");
        assert_eq!(carol[0].expires_at, Some("2026-01-01T00:00:00Z".parse().unwrap()));
        assert_eq!(memberships_in([&team], "mallory@example.com"), vec![]);
    }

    #[test]
    fn problems_are_true_problem_conditions_and_ready_reasons_of_their_own() {
        let condition = |type_: &str, status: &str, reason: &str, message: &str| Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH),
            observed_generation: None,
        };
        let found = problems(&[
            condition("Ready", "False", "QuotaExceeded", "exceeded quota: pods"),
            condition("QuotaExceeded", "True", "QuotaExceeded", "exceeded quota: pods"),
            condition("Unschedulable", "False", "None", ""),
        ]);
        assert_eq!(found, BTreeMap::from([("QuotaExceeded".to_owned(), "exceeded quota: pods".to_owned())]));
        let found = problems(&[condition("Ready", "False", "TemplateNotFound", "template \"x\" does not exist")]);
        assert!(found.contains_key("TemplateNotFound"));
        assert!(problems(&[condition("Ready", "False", "NotRunning", "Stopped")]).is_empty());
        assert!(problems(&[condition("Ready", "True", "DesktopReady", "the desktop answers")]).is_empty());
    }
}
