//! Single-host mode: workspaces as containers on one Docker Engine, through bollard.
//!
//! - **State** lives in the portal's SQLite database ([`db`]): teams and templates as the
//!   controller's own types, so the same validation ([`render::validate`]) resolves what a
//!   workspace runs on either backend, and a row per workspace saying what its owner wants.
//! - **A workspace** is a container `deskpod.<team>.<name>` (the template's image, its CPU and
//!   memory limits, `/dev/shm`, uid 1000, no capabilities, no privilege escalation) with a named
//!   volume `deskpod-home.<team>.<name>` at its home, on the team's bridge network
//!   `deskpod-team.<team>` on which no container reaches another ([`container::network`]): a
//!   desktop or CI agent reaches the outside, never another workspace, of its team or another.
//!   Stopping removes the container and keeps the volume; deleting removes both.
//! - **The quota** is the backend's ([`quota`]): a team's workspace count, and the sum of the
//!   limits of its running workspaces against its CPU and memory quota. The decision and the
//!   record of it are one step (a lock), so two requests can never both take the last share.
//! - **Running** means the desktop's websocket answered with the RFB banner; the portal's proxy
//!   reaches it at the container's address on the team network, from the host's network stack
//!   (a host process, or a container with `--network host`).
//! - **Convergence**: requests act at once, and a reconciler compares the rows with the
//!   containers every few seconds (and when woken) to finish what a crash interrupted: it starts
//!   wanted desktops that have no container, removes containers nobody wants (stopped, deleted, or
//!   unknown to the database), finishes deletions, and stops desktops idle past their template's
//!   `idleTimeout`. Home volumes are only ever removed by deleting their workspace.

mod agents;
pub mod container;
mod db;
pub mod quota;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerSummary, ContainerSummaryStateEnum, NetworkConnectRequest, NetworkDisconnectRequest};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, RemoveVolumeOptions, StopContainerOptions,
};
use deskpod_controller::api::{
    DesktopProtocol, HomeVolume, Team, TeamMember, TeamRole as TeamObjectRole, TeamSpec, Workspace, WorkspaceSpec,
    WorkspaceTemplate, WorkspaceTemplateSpec,
};
use deskpod_controller::workspace::render::{self, DesiredWorkspace};
use futures::future::BoxFuture;
use jiff::Timestamp;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use self::container::Footprint;
use self::db::{Db, Filter, WorkspaceRow};
use self::quota::{Ask, Usage};
use super::agent::{AgentView, LogStream, NewAgent};
use super::invite::members_with;
use super::views::{memberships_in, team_view, template_view, validate_workspace_name};
use super::{
    Backend, BackendError, BackendResult, DesktopEndpoint, NewWorkspace, Phase, Protocol, TeamView, TemplateView,
    WorkspaceView,
};
use crate::authz::Membership;
use crate::membership::MembershipSource;
use crate::store::{SqliteStore, Store};

/// How often the reconciler compares rows and containers when nothing wakes it.
const RESYNC: Duration = Duration::from_secs(5);
/// How long a desktop may take from start to its first RFB banner before the watch gives up
/// (a later look at the workspace starts a new watch).
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a removal someone else started may take before this one gives up.
const REMOVAL_WAIT: Duration = Duration::from_secs(30);
/// How long a stopping desktop gets to exit before it is killed.
const STOP_GRACE_SECONDS: i32 = 3;

/// Workspaces on a Docker Engine; see the module docs.
pub struct DockerBackend {
    inner: Arc<Inner>,
    reconciler: JoinHandle<()>,
}

struct Inner {
    docker: Docker,
    db: Db,
    /// This portal's names and labels on the engine.
    names: container::Names,
    /// Held from a quota decision until its row is written.
    admission: tokio::sync::Mutex<()>,
    /// Teams whose network exists (it is never removed while the portal runs); held while one is
    /// looked up and created.
    networks: tokio::sync::Mutex<HashSet<String>>,
    /// Desktops (by container id) whose banner arrived, or that are being watched for it.
    ready: Mutex<HashMap<String, Readiness>>,
    /// Wakes the reconciler.
    wake: Notify,
    /// Told whenever a CI agent starts or ends (log followers of queued agents wait for it).
    agent_changed: Notify,
    /// The CI agents (team, name) whose job some task of this process waits for.
    job_waiters: Mutex<HashSet<(String, String)>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Readiness {
    Watching,
    Ready,
}

impl Drop for DockerBackend {
    fn drop(&mut self) {
        self.reconciler.abort();
    }
}

/// A container of a workspace, as listed.
#[derive(Clone, Debug)]
struct Observed {
    id: String,
    state: ContainerSummaryStateEnum,
    /// Docker's words: `Up 3 seconds`, `Exited (1) 2 seconds ago`.
    status: String,
    /// Its address on the team network.
    ip: Option<IpAddr>,
}

/// A container of this portal, desktop or CI agent, as listed.
struct TeamContainer {
    team: String,
    id: String,
    /// The id of the team network it is attached to (stopped containers keep theirs), if any.
    network_id: Option<String>,
}

impl DockerBackend {
    /// A backend on `docker`, keeping its records in `store`'s database; starts the reconciler.
    /// The database's instance id (made on first use) names and labels what this portal
    /// creates on the engine, so portals with different databases leave each other alone.
    pub async fn new(docker: Docker, store: SqliteStore) -> BackendResult<Self> {
        let candidate = crate::random::hex::<4>()
            .map_err(|_| BackendError::Unavailable("the system's random generator failed".into()))?;
        let instance = store.secret_or_insert(INSTANCE_SECRET, candidate.into_bytes()).await.map_err(store_failed)?;
        let instance = String::from_utf8(instance)
            .ok()
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
            .ok_or_else(|| BackendError::Unavailable("the database's single-host instance id is damaged".into()))?;
        let inner = Arc::new(Inner {
            docker,
            db: Db::new(store),
            names: container::Names::new(&instance),
            admission: tokio::sync::Mutex::new(()),
            networks: tokio::sync::Mutex::new(HashSet::new()),
            ready: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            agent_changed: Notify::new(),
            job_waiters: Mutex::new(HashSet::new()),
        });
        let reconciler = tokio::spawn(Inner::reconcile_forever(Arc::clone(&inner)));
        Ok(Self { inner, reconciler })
    }

    /// Connects to the local Docker Engine (`DOCKER_HOST` or /var/run/docker.sock).
    pub async fn connect(store: SqliteStore) -> BackendResult<Self> {
        let docker = deskpod_images::connect_docker().await.map_err(|e| BackendError::Unavailable(e.to_string()))?;
        Self::new(docker, store).await
    }

    /// How this portal names its containers, volumes and networks.
    pub fn names(&self) -> &container::Names {
        &self.inner.names
    }

    /// Creates or replaces a team (its members, quota and limits).
    pub async fn put_team(&self, name: &str, spec: TeamSpec) -> BackendResult<()> {
        validate_object_name("team", name)?;
        self.inner.db.put_team(&Team::new(name, spec)).await.map_err(store_failed)?;
        Ok(())
    }

    /// Creates or replaces a template.
    pub async fn put_template(&self, name: &str, spec: WorkspaceTemplateSpec) -> BackendResult<()> {
        validate_object_name("template", name)?;
        self.inner.db.put_template(&WorkspaceTemplate::new(name, spec)).await.map_err(store_failed)?;
        Ok(())
    }

    /// Fills an empty database: a template per desktop image that is built here (the base image
    /// only when no variant is), and a team `default` with `admin` as its lead. Returns what it
    /// created, for the start-up message.
    pub async fn seed_defaults(&self, admin: &str) -> BackendResult<Vec<String>> {
        let mut created = Vec::new();
        if self.inner.db.templates().await.map_err(store_failed)?.is_empty() {
            for image in deskpod_images::catalogue::desktops() {
                if self.inner.docker.inspect_image(image.tag).await.is_err() {
                    continue;
                }
                let name = if image.name == deskpod_images::catalogue::DESKTOP_BASE { "xfce" } else { image.name };
                self.put_template(name, default_template(image)).await?;
                created.push(format!("template {name} ({})", image.tag));
            }
        }
        if self.inner.db.teams().await.map_err(store_failed)?.is_empty() {
            self.put_team(DEFAULT_TEAM, default_team(admin)).await?;
            created.push(format!("team {DEFAULT_TEAM} (lead: {admin})"));
        }
        Ok(created)
    }

    /// Runs one pass of the reconciler now (tests, and after start-up).
    pub async fn reconcile_now(&self) {
        self.inner.reconcile().await;
    }
}

/// Where the database keeps this portal's instance id (see [`container::Names`]).
const INSTANCE_SECRET: &str = "docker-instance";

/// The team an empty single-host database gets.
pub const DEFAULT_TEAM: &str = "default";

fn default_team(admin: &str) -> TeamSpec {
    use deskpod_controller::api::TeamQuota;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    TeamSpec {
        display_name: Some("Everyone on this host".into()),
        quota: TeamQuota {
            cpu: Some(Quantity("8".into())),
            memory: Some(Quantity("16Gi".into())),
            workspaces: Some(20),
            ..TeamQuota::default()
        },
        members: vec![TeamMember { user: admin.to_owned(), role: TeamObjectRole::Lead, expires_at: None }],
        ..TeamSpec::default()
    }
}

/// A noVNC desktop template for `image` with CPU and memory limits and a `/dev/shm` size, and
/// nothing else set (no requests, no idle timeout): what the defaults, tests and benchmarks build
/// on.
pub fn desktop_template(
    display_name: &str,
    image: &str,
    cpu_limit: &str,
    memory_limit: &str,
    shm: &str,
) -> WorkspaceTemplateSpec {
    use deskpod_controller::api::TemplateResources;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    WorkspaceTemplateSpec {
        port: i32::from(deskpod_images::catalogue::desktop::VNC_PORT),
        resources: TemplateResources {
            cpu_request: None,
            cpu_limit: Some(Quantity(cpu_limit.into())),
            memory_request: None,
            memory_limit: Some(Quantity(memory_limit.into())),
        },
        shm_size: Some(Quantity(shm.into())),
        ..WorkspaceTemplateSpec::new(display_name, image)
    }
}

fn default_template(image: &deskpod_images::catalogue::ImageSpec) -> WorkspaceTemplateSpec {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let display_name = match image.name {
        "python" => "Python",
        "java" => "Java",
        "node" => "Node.js",
        _ => "XFCE desktop",
    };
    let mut template = desktop_template(display_name, image.tag, "2", "2Gi", "512Mi");
    template.description = Some(format!("{} ({})", image.summary, image.tag));
    template.resources.cpu_request = Some(Quantity("500m".into()));
    template.resources.memory_request = Some(Quantity("1Gi".into()));
    template.idle_timeout = Some("2h".into());
    template
}

fn validate_object_name(what: &str, name: &str) -> BackendResult<()> {
    validate_workspace_name(name)
        .map_err(|e| BackendError::Invalid(e.replace("workspace", what).replace("a workspace", &format!("a {what}"))))
}

fn store_failed(error: crate::Error) -> BackendError {
    tracing::error!(%error, "single-host backend: the database failed");
    BackendError::Unavailable("the portal's database failed; see the portal's log".into())
}

fn docker_failed(what: &str, error: DockerError) -> BackendError {
    tracing::error!(%error, "Docker Engine: {what} failed");
    BackendError::Unavailable(format!("the Docker Engine failed while {what}"))
}

fn not_found(team: &str, name: &str) -> BackendError {
    BackendError::NotFound(format!("there is no workspace {name} in team {team}"))
}

fn is_status(error: &DockerError, code: u16) -> bool {
    matches!(error, DockerError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// The workspace object the controller's validation takes.
fn workspace_object(row: &WorkspaceRow) -> Workspace {
    let mut ws = Workspace::new(
        &row.name,
        WorkspaceSpec {
            owner: row.owner.clone(),
            template: row.template.clone(),
            running: row.running,
            resources: None,
            home: HomeVolume::default(),
        },
    );
    ws.metadata.namespace = Some(format!("team-{}", row.team));
    ws
}

/// Where a workspace stands, from its row, its container and whether its desktop answered.
fn phase_of(row: &WorkspaceRow, container: Option<&Observed>, ready: bool) -> (Phase, Option<String>) {
    use ContainerSummaryStateEnum as State;
    if row.deleting {
        return (Phase::Stopping, Some("deleting the desktop and its home".into()));
    }
    if !row.running {
        return match container {
            Some(_) => (Phase::Stopping, Some("stopping the desktop; the home is kept".into())),
            None => (Phase::Stopped, None),
        };
    }
    if let Some(failure) = &row.failure {
        return (Phase::Failed, Some(failure.clone()));
    }
    match container.map(|c| (c.state, c)) {
        None => (Phase::Pending, Some("waiting to start".into())),
        Some((State::RUNNING, _)) if ready => (Phase::Running, None),
        Some((State::RUNNING, _)) => (Phase::Starting, Some("starting the desktop".into())),
        Some((State::CREATED, _)) => (Phase::Starting, Some("starting the container".into())),
        Some((State::RESTARTING, c)) | Some((State::EXITED, c)) | Some((State::DEAD, c)) => {
            (Phase::Starting, Some(format!("the desktop exited and is being restarted ({})", c.status)))
        }
        Some((_, c)) => (Phase::Starting, Some(c.status.clone())),
    }
}

fn view(row: &WorkspaceRow, container: Option<&Observed>, ready: bool) -> WorkspaceView {
    let (phase, message) = phase_of(row, container, ready);
    let problems = match phase {
        Phase::Failed => BTreeMap::from([("StartFailed".to_owned(), message.clone().unwrap_or_default())]),
        _ => BTreeMap::new(),
    };
    WorkspaceView {
        team: row.team.clone(),
        name: row.name.clone(),
        owner: row.owner.clone(),
        template: row.template.clone(),
        running: row.running,
        phase,
        message,
        problems,
        created_at: Some(row.created_at),
        started_at: if phase == Phase::Running { row.started_at } else { None },
    }
}

impl Inner {
    fn readiness(&self, id: &str) -> Option<Readiness> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner).get(id).copied()
    }

    /// The workspaces' containers, by (team, workspace).
    async fn containers(&self, team: Option<&str>) -> BackendResult<HashMap<(String, String), Observed>> {
        let listed = self.labelled_containers(team, "listing desktops").await?;
        Ok(listed.into_iter().filter_map(|summary| observed(&self.names, summary)).collect())
    }

    /// Every container this portal instance labelled (desktops and CI agents, running or not), of
    /// one team or all; `step` names the listing in an error.
    async fn labelled_containers(
        &self,
        team: Option<&str>,
        step: &'static str,
    ) -> BackendResult<Vec<ContainerSummary>> {
        let mut labels = vec![format!("{}={}", container::INSTANCE_LABEL, self.names.instance())];
        if let Some(team) = team {
            labels.push(format!("{}={team}", container::TEAM_LABEL));
        }
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_owned(), labels)])),
            ..ListContainersOptions::default()
        };
        self.docker.list_containers(Some(options)).await.map_err(|e| docker_failed(step, e))
    }

    /// Views of `rows`, watching the readiness of desktops nobody watches yet.
    async fn views(self: &Arc<Self>, rows: &[WorkspaceRow], team: Option<&str>) -> BackendResult<Vec<WorkspaceView>> {
        let containers = self.containers(team).await?;
        Ok(rows
            .iter()
            .map(|row| {
                let container = containers.get(&(row.team.clone(), row.name.clone()));
                let ready = container.is_some_and(|c| self.check_ready(row, c));
                view(row, container, ready)
            })
            .collect())
    }

    /// Whether the desktop in `container` answered; starts watching it if nobody does.
    fn check_ready(self: &Arc<Self>, row: &WorkspaceRow, container: &Observed) -> bool {
        match self.readiness(&container.id) {
            Some(Readiness::Ready) => true,
            Some(Readiness::Watching) => false,
            None => {
                if row.running
                    && container.state == ContainerSummaryStateEnum::RUNNING
                    && let Some(ip) = container.ip
                {
                    self.watch_readiness(container.id.clone(), ip);
                }
                false
            }
        }
    }

    /// Waits (in the background) for the desktop's RFB banner on its websocket.
    fn watch_readiness(self: &Arc<Self>, id: String, ip: IpAddr) {
        {
            let mut ready = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
            if ready.contains_key(&id) {
                return;
            }
            ready.insert(id.clone(), Readiness::Watching);
        }
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            let port = deskpod_images::catalogue::desktop::VNC_PORT;
            let answered = answers_within(SocketAddr::new(ip, port), READY_TIMEOUT).await;
            let mut ready = inner.ready.lock().unwrap_or_else(PoisonError::into_inner);
            match answered {
                Ok(()) => {
                    ready.insert(id, Readiness::Ready);
                }
                Err(error) => {
                    tracing::warn!(container = %id, %error, "a desktop did not answer");
                    ready.remove(&id);
                }
            }
        });
    }

    /// The team, its template and what the workspace in `row` resolves to.
    async fn resolve(&self, row: &WorkspaceRow) -> BackendResult<(Team, DesiredWorkspace)> {
        let team = self
            .db
            .team(&row.team)
            .await
            .map_err(store_failed)?
            .ok_or_else(|| BackendError::NotFound(format!("team {} does not exist", row.team)))?;
        let template = self.db.template(&row.template).await.map_err(store_failed)?;
        let desired = render::validate(&workspace_object(row), template.as_ref(), &team).map_err(|e| {
            BackendError::Invalid(e.message.replace("`kubectl get workspacetemplates` lists", "the catalog lists"))
        })?;
        Ok((team, desired))
    }

    /// What the team's running workspaces take, and how many workspaces it has.
    async fn usage(&self, team: &str) -> BackendResult<Usage> {
        let rows = self.db.workspaces(Filter { team: Some(team), owner: None }).await.map_err(store_failed)?;
        let mut usage = Usage { workspaces: i64::try_from(rows.len()).unwrap_or(i64::MAX), ..Usage::default() };
        for row in rows.iter().filter(|r| r.running && !r.deleting) {
            // A workspace whose template went away takes nothing (it cannot run).
            if let Ok((_, desired)) = self.resolve(row).await
                && let Ok(footprint) = Footprint::of(&desired)
            {
                usage.running = usage.running.plus(footprint);
            }
        }
        Ok(usage)
    }

    async fn create(self: &Arc<Self>, new: NewWorkspace) -> BackendResult<WorkspaceView> {
        validate_workspace_name(&new.name).map_err(BackendError::Invalid)?;
        let password = crate::random::url_safe::<6>()
            .map_err(|_| BackendError::Unavailable("the system's random generator failed".into()))?;
        let now = Timestamp::now();
        let row = WorkspaceRow {
            team: new.team.clone(),
            name: new.name.clone(),
            owner: new.owner.clone(),
            template: new.template.clone(),
            running: true,
            vnc_password: password,
            created_at: now,
            started_at: Some(now),
            last_input: None,
            deleting: false,
            failure: None,
        };
        let (team, desired) = self.resolve(&row).await?;
        let footprint = Footprint::of(&desired).map_err(BackendError::Invalid)?;
        {
            let _decision = self.admission.lock().await;
            if self.db.workspace(&new.team, &new.name).await.map_err(store_failed)?.is_some() {
                return Err(BackendError::Conflict(format!(
                    "team {} already has a workspace named {}; pick another name",
                    new.team, new.name
                )));
            }
            quota::admit(&team, self.usage(&new.team).await?, Ask::Create(footprint)).map_err(BackendError::Invalid)?;
            self.db.insert_workspace(row.clone()).await.map_err(store_failed)?;
        }
        if let Err(error) = self.start_container(&row, &desired, footprint).await {
            // Nothing is left of a workspace that could not start the first time.
            self.remove_container(&row.team, &row.name).await.ok();
            self.remove_volume(&row.team, &row.name).await.ok();
            self.db.remove_workspace(&row.team, &row.name).await.map_err(store_failed)?;
            return Err(error);
        }
        // Just started: its desktop is on its way (the readiness watch reports when it answers).
        Ok(view(&row, None, false)).map(|mut view| {
            (view.phase, view.message) = (Phase::Starting, Some("starting the desktop".into()));
            view
        })
    }

    async fn start(self: &Arc<Self>, team: &str, name: &str) -> BackendResult<()> {
        let row = self.db.workspace(team, name).await.map_err(store_failed)?.ok_or_else(|| not_found(team, name))?;
        if row.deleting {
            return Err(not_found(team, name));
        }
        let (team_object, desired) = self.resolve(&row).await?;
        let footprint = Footprint::of(&desired).map_err(BackendError::Invalid)?;
        {
            let _decision = self.admission.lock().await;
            let current = self.db.workspace(team, name).await.map_err(store_failed)?;
            if current.as_ref().is_some_and(|r| r.running) {
                return Ok(());
            }
            quota::admit(&team_object, self.usage(team).await?, Ask::Start(footprint))
                .map_err(BackendError::Invalid)?;
            if !self.db.set_running(team, name, true, Timestamp::now()).await.map_err(store_failed)? {
                return Err(not_found(team, name));
            }
        }
        if let Err(error) = self.start_container(&row, &desired, footprint).await {
            self.db.set_failure(team, name, Some(error.to_string())).await.map_err(store_failed)?;
            return Err(error);
        }
        Ok(())
    }

    async fn stop(&self, team: &str, name: &str) -> BackendResult<()> {
        if !self.db.set_running(team, name, false, Timestamp::now()).await.map_err(store_failed)? {
            return Err(not_found(team, name));
        }
        self.remove_container(team, name).await
    }

    async fn delete(&self, team: &str, name: &str) -> BackendResult<()> {
        if !self.db.set_deleting(team, name).await.map_err(store_failed)? {
            return Err(not_found(team, name));
        }
        self.finish_deletion(team, name).await
    }

    async fn finish_deletion(&self, team: &str, name: &str) -> BackendResult<()> {
        self.remove_container(team, name).await?;
        self.remove_volume(team, name).await?;
        self.db.remove_workspace(team, name).await.map_err(store_failed)
    }

    /// Creates (if missing) and starts the desktop container, its volume and its team network,
    /// then watches for its desktop to answer. Idempotent: the names are fixed.
    async fn start_container(
        self: &Arc<Self>,
        row: &WorkspaceRow,
        desired: &DesiredWorkspace,
        footprint: Footprint,
    ) -> BackendResult<()> {
        let name = self.names.container(&row.team, &row.name);
        self.ensure_network(&row.team).await?;
        self.docker
            .create_volume(container::volume(&self.names, &row.team, &row.name))
            .await
            .map_err(|e| docker_failed("creating the home volume", e))?;
        let body =
            container::desktop(&self.names, desired, &row.vnc_password, footprint).map_err(BackendError::Invalid)?;
        let options = CreateContainerOptions { name: Some(name.clone()), ..CreateContainerOptions::default() };
        match self.docker.create_container(Some(options), body).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 409) => {}
            Err(e) => {
                // The template's image is missing or unusable: the admin's to fix, not the engine's.
                if let DockerError::DockerResponseServerError { status_code, message } = &e
                    && let Some(refusal) =
                        container::template_refusal(&row.template, &desired.image, *status_code, message)
                {
                    tracing::warn!(template = %row.template, image = %desired.image, %message, "Docker refused a desktop");
                    return Err(BackendError::Invalid(refusal));
                }
                if is_status(&e, 404) {
                    // The team network went away behind the portal's back: make it again next time.
                    self.networks.lock().await.remove(&row.team);
                }
                return Err(docker_failed("creating the desktop container", e));
            }
        }
        match self.docker.start_container(&name, None).await {
            Ok(()) => {}
            Err(e) if is_status(&e, 304) => {}
            Err(e) => return Err(docker_failed("starting the desktop container", e)),
        }
        let inspected =
            self.docker.inspect_container(&name, None).await.map_err(|e| docker_failed("inspecting a desktop", e))?;
        let ip = inspected
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&self.names.network(&row.team)))
            .and_then(|e| e.ip_address)
            .and_then(|ip| ip.parse().ok());
        if let (Some(id), Some(ip)) = (inspected.id, ip) {
            self.watch_readiness(id, ip);
        }
        Ok(())
    }

    /// Makes the team's network the isolating bridge [`container::network`] describes, with every
    /// container of the team on it. Docker accepts two networks of the same name (and then cannot
    /// tell them apart), so this looks first, one caller at a time, and remembers what it found.
    ///
    /// Docker cannot change a network's options, so a network made the old way (its containers
    /// reach each other) is replaced: its containers are disconnected, it is removed and made
    /// anew, and they are connected again, still running, their homes untouched; only their
    /// addresses change. Containers of the team not attached to it (left by a replacement an
    /// earlier portal could not finish, or stopped ones still naming the old network) are
    /// connected too, so a restart converges.
    async fn ensure_network(&self, team: &str) -> BackendResult<()> {
        let mut known = self.networks.lock().await;
        if known.contains(team) {
            return Ok(());
        }
        let network = self.names.network(team);
        let current = match self.docker.inspect_network(&network, None).await {
            Ok(found) if container::isolates(found.options.as_ref()) => found.id.unwrap_or_default(),
            Ok(found) => {
                tracing::info!(%team, %network, "replacing a team network whose containers reach each other");
                for id in found.containers.unwrap_or_default().into_keys() {
                    let request = NetworkDisconnectRequest { container: id, force: Some(true) };
                    match self.docker.disconnect_network(&network, request).await {
                        Ok(()) => {}
                        Err(e) if is_status(&e, 404) => {}
                        Err(e) => return Err(docker_failed("disconnecting a container from the team network", e)),
                    }
                }
                match self.docker.remove_network(&network).await {
                    Ok(()) => {}
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => return Err(docker_failed("removing the old team network", e)),
                }
                self.create_network(team).await?
            }
            Err(e) if is_status(&e, 404) => self.create_network(team).await?,
            Err(e) => return Err(docker_failed("looking up the team network", e)),
        };
        let mut all_connected = true;
        for member in self.team_containers(Some(team)).await? {
            if member.network_id.as_deref() == Some(current.as_str()) {
                continue;
            }
            let id = member.id;
            if let Err(error) = self.connect(&network, &id).await {
                // Looked at again on the next call (the reconciler's next pass at the latest).
                tracing::warn!(%team, container = %id, %error, "could not connect a container to its team network");
                all_connected = false;
            }
        }
        if all_connected {
            known.insert(team.to_owned());
        }
        Ok(())
    }

    /// Connects a container to `network`. A stopped container still names the network it was on
    /// (the old one, if it was replaced): that stale attachment is dropped first.
    async fn connect(&self, network: &str, id: &str) -> Result<(), DockerError> {
        let connect = || NetworkConnectRequest { container: id.to_owned(), endpoint_config: None };
        if self.docker.connect_network(network, connect()).await.is_ok() {
            return Ok(());
        }
        let disconnect = NetworkDisconnectRequest { container: id.to_owned(), force: Some(true) };
        match self.docker.disconnect_network(network, disconnect).await {
            Ok(()) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e),
        }
        self.docker.connect_network(network, connect()).await
    }

    /// Creates the team's network; its id.
    async fn create_network(&self, team: &str) -> BackendResult<String> {
        self.docker
            .create_network(container::network(&self.names, team))
            .await
            .map(|created| created.id)
            .map_err(|e| docker_failed("creating the team network", e))
    }

    /// Every container of this portal (desktops and CI agents), of one team or all.
    async fn team_containers(&self, team: Option<&str>) -> BackendResult<Vec<TeamContainer>> {
        let listed = self.labelled_containers(team, "listing containers").await?;
        Ok(listed
            .into_iter()
            .filter_map(|summary| {
                let team = summary.labels?.remove(container::TEAM_LABEL)?;
                let network_id = summary
                    .network_settings
                    .and_then(|n| n.networks)
                    .and_then(|mut n| n.remove(&self.names.network(&team)))
                    .and_then(|e| e.network_id);
                Some(TeamContainer { team, id: summary.id?, network_id })
            })
            .collect())
    }

    async fn remove_container(&self, team: &str, name: &str) -> BackendResult<()> {
        let name = self.names.container(team, name);
        let stop = StopContainerOptions { t: Some(STOP_GRACE_SECONDS), ..StopContainerOptions::default() };
        match self.docker.stop_container(&name, Some(stop)).await {
            Ok(()) => {}
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => {}
            Err(e) => return Err(docker_failed("stopping a desktop", e)),
        }
        let options = RemoveContainerOptions { force: true, ..RemoveContainerOptions::default() };
        match self.docker.remove_container(&name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            // Another request (or the reconciler) is removing it: wait until it is gone, so that
            // what comes next (removing the volume, starting anew) does not find it in the way.
            Err(e) if is_status(&e, 409) => {
                let deadline = tokio::time::Instant::now() + REMOVAL_WAIT;
                loop {
                    match self.docker.inspect_container(&name, None).await {
                        Err(e) if is_status(&e, 404) => return Ok(()),
                        _ if tokio::time::Instant::now() >= deadline => {
                            return Err(BackendError::Unavailable(format!(
                                "the desktop {name} is still being removed after {REMOVAL_WAIT:?}"
                            )));
                        }
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
            Err(e) => Err(docker_failed("removing a desktop", e)),
        }
    }

    async fn remove_volume(&self, team: &str, name: &str) -> BackendResult<()> {
        let volume = self.names.volume(team, name);
        let deadline = tokio::time::Instant::now() + REMOVAL_WAIT;
        loop {
            match self.docker.remove_volume(&volume, None::<RemoveVolumeOptions>).await {
                Ok(()) => return Ok(()),
                Err(e) if is_status(&e, 404) => return Ok(()),
                // Still in use by a container that another request is removing.
                Err(e) if is_status(&e, 409) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(docker_failed("removing a home volume", e)),
            }
        }
    }

    async fn endpoint(self: &Arc<Self>, team: &str, name: &str) -> BackendResult<Option<DesktopEndpoint>> {
        let Some(row) = self.db.workspace(team, name).await.map_err(store_failed)? else {
            return Err(not_found(team, name));
        };
        if !row.running || row.deleting {
            return Ok(None);
        }
        let containers = self.containers(Some(team)).await?;
        let Some(container) = containers.get(&(team.to_owned(), name.to_owned())) else { return Ok(None) };
        if !self.check_ready(&row, container) {
            return Ok(None);
        }
        let (_, desired) = self.resolve(&row).await?;
        let (Some(ip), Ok(port)) = (container.ip, u16::try_from(desired.port)) else { return Ok(None) };
        let protocol = match desired.protocol {
            DesktopProtocol::Novnc => Protocol::Novnc,
            DesktopProtocol::Kasm => Protocol::Kasm,
        };
        Ok(Some(DesktopEndpoint {
            protocol,
            address: SocketAddr::new(ip, port),
            password: Some(row.vnc_password.clone()),
        }))
    }

    async fn reconcile_forever(self: Arc<Self>) {
        loop {
            self.reconcile().await;
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(RESYNC) => {}
            }
        }
    }

    /// One comparison of rows and containers; see the module docs. Failures are logged and
    /// retried on the next pass.
    async fn reconcile(self: &Arc<Self>) {
        let rows = match self.db.workspaces(Filter::default()).await {
            Ok(rows) => rows,
            Err(error) => return tracing::warn!(%error, "reconciler: reading workspaces failed"),
        };
        // First, so that the addresses listed next are those on the team networks as they stay.
        self.ensure_networks().await;
        let containers = match self.containers(None).await {
            Ok(containers) => containers,
            Err(error) => return tracing::warn!(%error, "reconciler: listing containers failed"),
        };
        let known: HashSet<(String, String)> = rows.iter().map(|r| (r.team.clone(), r.name.clone())).collect();
        for row in &rows {
            let key = (row.team.clone(), row.name.clone());
            let container = containers.get(&key);
            let outcome = if row.deleting {
                self.finish_deletion(&row.team, &row.name).await
            } else if !row.running {
                match container {
                    Some(_) => self.remove_container(&row.team, &row.name).await,
                    None => Ok(()),
                }
            } else if row.failure.is_some() {
                Ok(())
            } else if let Some(idle) = self.idle_for(row).await {
                tracing::info!(team = %row.team, workspace = %row.name, "stopping a desktop idle for {idle}");
                self.stop(&row.team, &row.name).await
            } else if container.is_none() {
                match self.resolve(row).await {
                    Ok((_, desired)) => match Footprint::of(&desired) {
                        Ok(footprint) => self.start_container(row, &desired, footprint).await,
                        Err(e) => Err(BackendError::Invalid(e)),
                    },
                    Err(e) => Err(e),
                }
            } else {
                Ok(())
            };
            if let Err(error) = outcome {
                tracing::warn!(team = %row.team, workspace = %row.name, %error, "reconciler: could not converge");
            }
        }
        for (team, name) in containers.keys().filter(|key| !known.contains(*key)) {
            tracing::info!(%team, workspace = %name, "removing a desktop container no workspace wants");
            if let Err(error) = self.remove_container(team, name).await {
                tracing::warn!(%team, workspace = %name, %error, "reconciler: could not remove a container");
            }
        }
        self.reconcile_agents().await;
        // Forget readiness of containers that are gone.
        let live: HashSet<&str> = containers.values().map(|c| c.id.as_str()).collect();
        self.ready.lock().unwrap_or_else(PoisonError::into_inner).retain(|id, _| live.contains(id.as_str()));
    }

    /// Ensures the network of every team that has containers (see [`Self::ensure_network`]): a team
    /// network made by an older portal is replaced at start-up, not only when the team next starts
    /// a desktop or agent.
    async fn ensure_networks(&self) {
        let teams: BTreeSet<String> = match self.team_containers(None).await {
            Ok(containers) => containers.into_iter().map(|c| c.team).collect(),
            Err(error) => return tracing::warn!(%error, "reconciler: listing containers failed"),
        };
        for team in teams {
            if let Err(error) = self.ensure_network(&team).await {
                tracing::warn!(%team, %error, "reconciler: could not ensure the team network");
            }
        }
    }

    /// How long a running desktop has been idle, when that is past its template's idle timeout.
    async fn idle_for(&self, row: &WorkspaceRow) -> Option<String> {
        let (_, desired) = self.resolve(row).await.ok()?;
        let timeout = desired.idle_timeout?;
        let since = row.last_input.or(row.started_at).unwrap_or(row.created_at);
        let idle = Timestamp::now().duration_since(since);
        let idle = Duration::try_from(idle).ok()?;
        (idle > timeout).then(|| deskpod_controller::workspace::idle::describe(timeout))
    }
}

/// Waits until the desktop at `address` sends its RFB banner on its websocket. While nothing
/// listens, a connection is refused by the kernel at once and costs nothing, so those attempts
/// follow each other closely; once something listens, each attempt is a websocket handshake that
/// websockify (Python) spends CPU on while the desktop starts, so those are spaced more.
async fn answers_within(address: SocketAddr, timeout: Duration) -> Result<(), String> {
    const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
    const WHILE_REFUSED: Duration = Duration::from_millis(5);
    const WHILE_STARTING: Duration = Duration::from_millis(15);
    let url = deskpod_images::probe::websocket_url(&address.ip().to_string());
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = String::from("no attempt");
    while tokio::time::Instant::now() < deadline {
        if let Err(error) = tokio::net::TcpStream::connect(address).await {
            last_error = error.to_string();
            tokio::time::sleep(WHILE_REFUSED).await;
            continue;
        }
        match tokio::time::timeout(ATTEMPT_TIMEOUT, deskpod_images::probe::read_rfb_banner(&url)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(error)) => last_error = error,
            Err(_) => last_error = format!("no banner within {ATTEMPT_TIMEOUT:?}"),
        }
        tokio::time::sleep(WHILE_STARTING).await;
    }
    Err(format!("no RFB banner within {timeout:?}: {last_error}"))
}

/// A listed container of a workspace: its (team, workspace) and what it is doing.
fn observed(names: &container::Names, summary: ContainerSummary) -> Option<((String, String), Observed)> {
    let labels = summary.labels.unwrap_or_default();
    let team = labels.get(container::TEAM_LABEL)?.clone();
    let workspace = labels.get(container::WORKSPACE_LABEL)?.clone();
    let ip = summary
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|mut n| n.remove(&names.network(&team)))
        .and_then(|e| e.ip_address)
        .and_then(|ip| ip.parse().ok());
    let observed = Observed {
        id: summary.id?,
        state: summary.state.unwrap_or(ContainerSummaryStateEnum::EMPTY),
        status: summary.status.unwrap_or_default(),
        ip,
    };
    Some(((team, workspace), observed))
}

impl MembershipSource for DockerBackend {
    fn memberships<'a>(&'a self, user: &'a str) -> BoxFuture<'a, crate::Result<Vec<Membership>>> {
        Box::pin(async move {
            let teams = self.inner.db.teams().await?;
            Ok(memberships_in(teams.iter(), user))
        })
    }
}

impl Backend for DockerBackend {
    // Administration: what the API server would refuse on Kubernetes is refused here first
    // (`db::validate_*`), and nothing is saved then. Team writes take the admission lock, as
    // `add_member`'s read-modify-write does.
    fn teams(&self) -> BoxFuture<'_, BackendResult<Vec<TeamView>>> {
        Box::pin(async move {
            let teams = self.inner.db.teams().await.map_err(store_failed)?;
            let mut views = Vec::with_capacity(teams.len());
            for mut object in teams {
                let usage = self.inner.usage(object.metadata.name.as_deref().unwrap_or_default()).await?;
                object.status = Some(quota::status(&object, usage));
                views.push(team_view(&object));
            }
            Ok(views)
        })
    }

    fn team_spec<'a>(&'a self, team: &'a str) -> BoxFuture<'a, BackendResult<Option<TeamSpec>>> {
        Box::pin(async move { Ok(self.inner.db.team(team).await.map_err(store_failed)?.map(|t| t.spec)) })
    }

    fn template_spec<'a>(&'a self, template: &'a str) -> BoxFuture<'a, BackendResult<Option<WorkspaceTemplateSpec>>> {
        Box::pin(async move { Ok(self.inner.db.template(template).await.map_err(store_failed)?.map(|t| t.spec)) })
    }

    fn put_team<'a>(&'a self, team: &'a str, spec: TeamSpec) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            db::validate_team(team, &spec).map_err(BackendError::Invalid)?;
            let _change = self.inner.admission.lock().await;
            DockerBackend::put_team(self, team, spec).await
        })
    }

    fn put_template<'a>(&'a self, template: &'a str, spec: WorkspaceTemplateSpec) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            db::validate_template(template, &spec).map_err(BackendError::Invalid)?;
            DockerBackend::put_template(self, template, spec).await
        })
    }

    fn delete_template<'a>(&'a self, template: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            let missing = || BackendError::NotFound(format!("there is no template {template}"));
            if validate_workspace_name(template).is_err() {
                return Err(missing());
            }
            // Workspaces are recorded under the admission lock: none appears while this decides.
            let _decision = self.inner.admission.lock().await;
            match self.inner.db.delete_template(template).await.map_err(store_failed)? {
                db::TemplateDeletion::Deleted => Ok(()),
                db::TemplateDeletion::NotFound => Err(missing()),
                db::TemplateDeletion::InUse(users) => Err(BackendError::Conflict(db::in_use_message(template, &users))),
            }
        })
    }

    fn templates(&self) -> BoxFuture<'_, BackendResult<Vec<TemplateView>>> {
        Box::pin(async move {
            let templates = self.inner.db.templates().await.map_err(store_failed)?;
            let mut views: Vec<TemplateView> = templates.iter().map(template_view).collect();
            views.sort_by(|a, b| a.display_name.cmp(&b.display_name).then_with(|| a.name.cmp(&b.name)));
            Ok(views)
        })
    }

    fn team<'a>(&'a self, team: &'a str) -> BoxFuture<'a, BackendResult<Option<TeamView>>> {
        Box::pin(async move {
            let Some(mut object) = self.inner.db.team(team).await.map_err(store_failed)? else { return Ok(None) };
            let usage = self.inner.usage(team).await?;
            object.status = Some(quota::status(&object, usage));
            Ok(Some(team_view(&object)))
        })
    }

    fn workspaces<'a>(
        &'a self,
        team: &'a str,
        owner: Option<&'a str>,
    ) -> BoxFuture<'a, BackendResult<Vec<WorkspaceView>>> {
        Box::pin(async move {
            let rows = self.inner.db.workspaces(Filter { team: Some(team), owner }).await.map_err(store_failed)?;
            self.inner.views(&rows, Some(team)).await
        })
    }

    fn workspace<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<Option<WorkspaceView>>> {
        Box::pin(async move {
            let Some(row) = self.inner.db.workspace(team, name).await.map_err(store_failed)? else { return Ok(None) };
            Ok(self.inner.views(std::slice::from_ref(&row), Some(team)).await?.pop())
        })
    }

    fn create_workspace(&self, new: NewWorkspace) -> BoxFuture<'_, BackendResult<WorkspaceView>> {
        Box::pin(self.inner.create(new))
    }

    fn set_running<'a>(&'a self, team: &'a str, name: &'a str, running: bool) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(
            async move { if running { self.inner.start(team, name).await } else { self.inner.stop(team, name).await } },
        )
    }

    fn delete_workspace<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            let deleted = self.inner.delete(team, name).await;
            if deleted.is_err() {
                // The reconciler finishes what could not be done now.
                self.inner.wake.notify_one();
            }
            deleted
        })
    }

    fn desktop<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<Option<DesktopEndpoint>>> {
        Box::pin(self.inner.endpoint(team, name))
    }

    fn record_input<'a>(&'a self, team: &'a str, name: &'a str, at: Timestamp) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            match self.inner.db.record_input(team, name, at).await.map_err(store_failed)? {
                true => Ok(()),
                false => Err(not_found(team, name)),
            }
        })
    }

    fn add_member<'a>(&'a self, team: &'a str, member: TeamMember) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            // Team changes are read-modify-write on one row: one at a time.
            let _change = self.inner.admission.lock().await;
            let mut object = self.inner.db.team(team).await.map_err(store_failed)?.ok_or_else(|| {
                BackendError::NotFound(format!("team {team} does not exist; ask an admin to create it"))
            })?;
            if let Some(members) = members_with(&object.spec.members, &member) {
                object.spec.members = members;
                self.inner.db.put_team(&object).await.map_err(store_failed)?;
            }
            Ok(())
        })
    }

    fn create_agent(&self, new: NewAgent) -> BoxFuture<'_, BackendResult<AgentView>> {
        Box::pin(self.inner.create_agent(new))
    }

    fn agents<'a>(&'a self, team: &'a str) -> BoxFuture<'a, BackendResult<Vec<AgentView>>> {
        Box::pin(self.inner.agents(team))
    }

    fn agent<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<Option<AgentView>>> {
        Box::pin(self.inner.agent(team, name))
    }

    fn agent_logs<'a>(&'a self, team: &'a str, name: &'a str, follow: bool) -> BoxFuture<'a, BackendResult<LogStream>> {
        Box::pin(self.inner.agent_logs(team, name, follow))
    }

    fn delete_agent<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.inner.delete_agent(team, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(running: bool) -> WorkspaceRow {
        WorkspaceRow {
            team: "a".into(),
            name: "dev".into(),
            owner: "ada@example.com".into(),
            template: "python".into(),
            running,
            vnc_password: "s3cr3t-pw".into(),
            created_at: Timestamp::UNIX_EPOCH,
            started_at: Some(Timestamp::UNIX_EPOCH),
            last_input: None,
            deleting: false,
            failure: None,
        }
    }

    fn container(state: ContainerSummaryStateEnum) -> Observed {
        Observed { id: "c1".into(), state, status: "Exited (1) 2 seconds ago".into(), ip: None }
    }

    #[test]
    fn phases_follow_the_wish_the_container_and_the_banner() {
        use ContainerSummaryStateEnum as State;
        let running = container(State::RUNNING);
        assert_eq!(phase_of(&row(true), None, false).0, Phase::Pending);
        assert_eq!(phase_of(&row(true), Some(&running), false).0, Phase::Starting);
        assert_eq!(phase_of(&row(true), Some(&running), true), (Phase::Running, None));
        assert_eq!(phase_of(&row(false), Some(&running), true).0, Phase::Stopping);
        assert_eq!(phase_of(&row(false), None, false), (Phase::Stopped, None));
        let (phase, message) = phase_of(&row(true), Some(&container(State::EXITED)), false);
        assert_eq!(phase, Phase::Starting);
        assert!(message.unwrap().contains("Exited (1)"));
        let mut failed = row(true);
        failed.failure = Some("no image".into());
        assert_eq!(phase_of(&failed, Some(&running), true), (Phase::Failed, Some("no image".into())));
        let mut deleting = row(false);
        deleting.deleting = true;
        assert_eq!(phase_of(&deleting, None, false).0, Phase::Stopping);
    }

    #[test]
    fn a_row_never_shows_its_password() {
        assert!(!format!("{:?}", row(true)).contains("s3cr3t"));
    }
}
