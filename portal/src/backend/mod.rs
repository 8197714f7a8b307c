//! Where workspaces run: the one interface the pages, the JSON API and the desktop proxy use, with
//! a Kubernetes implementation (Workspace objects reconciled by deskpod-controller) and a
//! single-host Docker implementation behind it. Both are first-class: anything the portal offers
//! goes through this trait, never around it.
//!
//! Authorization is not the backend's business: handlers decide with [`crate::authz`] first, then
//! call the backend. The backend validates what only it can know (the template exists, the team's
//! quota admits the workspace) and answers with [`BackendError`]s whose messages users read.

pub mod agent;
pub mod docker;
pub mod invite;
pub mod kubernetes;
pub mod kubernetes_agents;
pub mod views;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use deskpod_controller::api::TeamMember;
use futures::future::BoxFuture;
use jiff::Timestamp;
use serde::Serialize;

use crate::membership::MembershipSource;

/// How the browser talks to a desktop (the template's protocol profile).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Protocol {
    /// Plain RFB over websocket (websockify); the portal serves the noVNC client.
    Novnc,
    /// KasmVNC: its own web client and websocket over HTTPS behind basic auth `kasm_user`.
    Kasm,
}

/// Where a workspace stands: the controller's phases, the same words for every backend.
pub use deskpod_controller::api::WorkspacePhase as Phase;

/// A workspace as users see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceView {
    pub team: String,
    pub name: String,
    /// The owner's user id (e-mail address).
    pub owner: String,
    pub template: String,
    /// Whether the owner wants it running (`spec.running`).
    pub running: bool,
    pub phase: Phase,
    /// What it is doing or waiting for, or why it cannot start ("waiting for team capacity: ...").
    pub message: Option<String>,
    /// Problems by reason (`QuotaExceeded`, `Unschedulable`, `ImagePullFailed`, ...).
    pub problems: BTreeMap<String, String>,
    pub created_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
}

/// A template in the catalog.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateView {
    pub name: String,
    pub display_name: String,
    pub description: Option<String>,
    pub protocol: Protocol,
    /// Requests and limits as Kubernetes quantities: `cpuRequest`, `memoryLimit`, ...
    pub resources: BTreeMap<String, String>,
    pub home_size: Option<String>,
}

/// A team as its members see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TeamView {
    pub name: String,
    /// Quota by resource (`cpu`, `memory`, `pods`, `count/workspaces.deskpod.io`, ...): hard, used.
    pub quota: BTreeMap<String, QuotaUse>,
    /// Whether leads may open their members' desktops.
    pub leads_may_connect: bool,
    /// Who is in the team, expired members included (pages mark them).
    pub members: Vec<MemberView>,
    /// The member cluster the team's namespace and desktops are on (`placement.cluster`);
    /// `None`: where the portal's own backend runs them.
    pub cluster: Option<String>,
}

/// A member of a team.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    /// The user's id (e-mail address).
    pub user: String,
    pub role: crate::authz::TeamRole,
    /// When the membership ends (contractors).
    pub expires_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuotaUse {
    pub hard: String,
    pub used: String,
}

/// What a new workspace should be.
#[derive(Clone, Debug, PartialEq)]
pub struct NewWorkspace {
    pub team: String,
    pub name: String,
    pub owner: String,
    pub template: String,
}

/// Where the portal's proxy connects for a workspace's desktop.
#[derive(Clone, Debug, PartialEq)]
pub struct DesktopEndpoint {
    pub protocol: Protocol,
    pub address: SocketAddr,
    /// The desktop's VNC password (`kasm`: the basic-auth password of `kasm_user`). Never sent to
    /// the browser, never logged.
    pub password: Option<String>,
}

/// What a backend refuses, with a message for the user.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Unknown team, workspace or template.
    #[error("{0}")]
    NotFound(String),
    /// The name is taken.
    #[error("{0}")]
    Conflict(String),
    /// Refused as asked: quota, limits, an invalid value.
    #[error("{0}")]
    Invalid(String),
    /// The backend itself failed (API server or Docker Engine unreachable, ...).
    #[error("{0}")]
    Unavailable(String),
}

pub type BackendResult<T> = std::result::Result<T, BackendError>;

/// Workspaces, templates and teams, wherever they run.
pub trait Backend: MembershipSource {
    /// The catalog.
    fn templates(&self) -> BoxFuture<'_, BackendResult<Vec<TemplateView>>>;
    fn team<'a>(&'a self, team: &'a str) -> BoxFuture<'a, BackendResult<Option<TeamView>>>;
    /// Workspaces of a team, all of them or one owner's.
    fn workspaces<'a>(
        &'a self,
        team: &'a str,
        owner: Option<&'a str>,
    ) -> BoxFuture<'a, BackendResult<Vec<WorkspaceView>>>;
    fn workspace<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<Option<WorkspaceView>>>;
    fn create_workspace(&self, new: NewWorkspace) -> BoxFuture<'_, BackendResult<WorkspaceView>>;
    /// Starts (`true`) or stops (`false`) a workspace; the home stays either way.
    fn set_running<'a>(&'a self, team: &'a str, name: &'a str, running: bool) -> BoxFuture<'a, BackendResult<()>>;
    fn delete_workspace<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<()>>;
    /// Where the desktop of a running workspace answers; `None` while it does not run.
    fn desktop<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<Option<DesktopEndpoint>>>;
    /// Records the user's last keyboard or pointer input, for idle culling. Callers throttle.
    fn record_input<'a>(&'a self, team: &'a str, name: &'a str, at: Timestamp) -> BoxFuture<'a, BackendResult<()>>;
    /// Submits a CI agent: it starts when the team has room, and waits in the team's queue
    /// (first come, first served) until then.
    fn create_agent(&self, new: agent::NewAgent) -> BoxFuture<'_, BackendResult<agent::AgentView>> {
        let _ = new;
        unsupported("CI agents")
    }
    /// The agents of a team, oldest first.
    fn agents<'a>(&'a self, team: &'a str) -> BoxFuture<'a, BackendResult<Vec<agent::AgentView>>> {
        let _ = team;
        unsupported("CI agents")
    }
    fn agent<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<Option<agent::AgentView>>> {
        let _ = (team, name);
        unsupported("CI agents")
    }
    /// What the agent's job wrote; with `follow`, also what it writes until it ends (waiting
    /// while it is queued).
    fn agent_logs<'a>(
        &'a self,
        team: &'a str,
        name: &'a str,
        follow: bool,
    ) -> BoxFuture<'a, BackendResult<agent::LogStream>> {
        let _ = (team, name, follow);
        unsupported("CI agents")
    }
    /// Stops the agent if it runs and removes it, queued, running or finished.
    fn delete_agent<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        let _ = (team, name);
        unsupported("CI agents")
    }
    /// Makes `member` a member of `team` as [`invite::members_with`] says (appended, or given
    /// the role and expiry; a lead stays a lead), without losing a concurrent change to the
    /// team. Answers once [`MembershipSource::memberships`] shows the change.
    fn add_member<'a>(&'a self, team: &'a str, member: TeamMember) -> BoxFuture<'a, BackendResult<()>>;

    // Administration (platform admins only; the HTTP layer checks that). Backends that cannot
    // administer teams and templates keep the defaults, which answer `Unavailable`.

    /// Every team, with its quota in use.
    fn teams(&self) -> BoxFuture<'_, BackendResult<Vec<TeamView>>> {
        not_supported("listing teams")
    }
    /// The spec of `team` as stored, for the edit form; `None` when there is no such team.
    fn team_spec<'a>(
        &'a self,
        _team: &'a str,
    ) -> BoxFuture<'a, BackendResult<Option<deskpod_controller::api::TeamSpec>>> {
        not_supported("reading a team's spec")
    }
    /// The spec of `template` as stored, for the edit form; `None` when there is no such template.
    fn template_spec<'a>(
        &'a self,
        _template: &'a str,
    ) -> BoxFuture<'a, BackendResult<Option<deskpod_controller::api::WorkspaceTemplateSpec>>> {
        not_supported("reading a template's spec")
    }
    /// Creates or replaces a team. A spec the backend refuses (Kubernetes: the CRD's schema and
    /// CEL rules) is [`BackendError::Invalid`] with what is wrong, and nothing is saved.
    fn put_team<'a>(
        &'a self,
        _team: &'a str,
        _spec: deskpod_controller::api::TeamSpec,
    ) -> BoxFuture<'a, BackendResult<()>> {
        not_supported("saving a team")
    }
    /// Creates or replaces a template; refusals as [`Backend::put_team`].
    fn put_template<'a>(
        &'a self,
        _template: &'a str,
        _spec: deskpod_controller::api::WorkspaceTemplateSpec,
    ) -> BoxFuture<'a, BackendResult<()>> {
        not_supported("saving a template")
    }
    /// Deletes a template; [`BackendError::Conflict`] naming them while workspaces use it.
    fn delete_template<'a>(&'a self, _template: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        not_supported("deleting a template")
    }
}

/// What a [`Backend`] method that a backend does not offer answers.
fn not_supported<'a, T: Send + 'a>(what: &str) -> BoxFuture<'a, BackendResult<T>> {
    Box::pin(std::future::ready(Err(BackendError::Unavailable(format!("{what} is not supported by this backend")))))
}

/// The backend of a portal that has none configured (identity-only tests): every workspace
/// operation answers [`BackendError::Unavailable`], and nobody is in a team.
pub struct Unconfigured;

const UNCONFIGURED: &str = "no workspace backend is configured";

/// What a backend answers for something it does not offer.
fn unsupported<'a, T: Send + 'a>(what: &str) -> BoxFuture<'a, BackendResult<T>> {
    Box::pin(std::future::ready(Err(BackendError::Unavailable(format!("{what}: not offered by this backend")))))
}

fn unavailable<'a, T: Send + 'a>() -> BoxFuture<'a, BackendResult<T>> {
    Box::pin(std::future::ready(Err(BackendError::Unavailable(UNCONFIGURED.into()))))
}

impl MembershipSource for Unconfigured {
    fn memberships<'a>(&'a self, _: &'a str) -> BoxFuture<'a, crate::Result<Vec<crate::Membership>>> {
        Box::pin(std::future::ready(Ok(vec![])))
    }
}

impl Backend for Unconfigured {
    fn templates(&self) -> BoxFuture<'_, BackendResult<Vec<TemplateView>>> {
        unavailable()
    }
    fn team<'a>(&'a self, _: &'a str) -> BoxFuture<'a, BackendResult<Option<TeamView>>> {
        unavailable()
    }
    fn workspaces<'a>(&'a self, _: &'a str, _: Option<&'a str>) -> BoxFuture<'a, BackendResult<Vec<WorkspaceView>>> {
        unavailable()
    }
    fn workspace<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, BackendResult<Option<WorkspaceView>>> {
        unavailable()
    }
    fn create_workspace(&self, _: NewWorkspace) -> BoxFuture<'_, BackendResult<WorkspaceView>> {
        unavailable()
    }
    fn set_running<'a>(&'a self, _: &'a str, _: &'a str, _: bool) -> BoxFuture<'a, BackendResult<()>> {
        unavailable()
    }
    fn delete_workspace<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        unavailable()
    }
    fn desktop<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, BackendResult<Option<DesktopEndpoint>>> {
        unavailable()
    }
    fn record_input<'a>(&'a self, _: &'a str, _: &'a str, _: Timestamp) -> BoxFuture<'a, BackendResult<()>> {
        unavailable()
    }
    fn add_member<'a>(&'a self, _: &'a str, _: TeamMember) -> BoxFuture<'a, BackendResult<()>> {
        unavailable()
    }
}
