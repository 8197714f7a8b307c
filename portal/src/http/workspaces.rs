//! The workspace pages, and the workspace operations they share with the JSON API
//! (`http::api::workspaces`).
//!
//! Pages: `/` (my workspaces, with live status: `/static/workspaces.js` follows the server-sent
//! events of `GET /api/v1/workspaces/events`, see [`super::events`]), `/templates` (the catalog), `/workspaces/new` (the create
//! form, with the remaining quota of the user's teams), `POST /workspaces` and
//! `POST /workspaces/{team}/{name}/{start,stop,delete}` (CSRF-checked forms), and `/teams/{team}`
//! (members, quota, running workspaces). The desktop itself is `/workspaces/{team}/{name}/desktop`,
//! served by the desktop module.
//!
//! Who may do what: a workspace is seen, started, stopped and deleted by whoever
//! [`authz::can_view_workspace`] allows (its owner while a member; the team's leads and admins when
//! the team allows it); a workspace is created by [`authz::can_create_workspace`]. A user who is
//! not an active member of the team (nor an admin) is refused before the backend is asked anything.
//! Creating, starting, stopping and deleting are written to the audit log.

use std::collections::BTreeSet;
use std::net::IpAddr;

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use deskpod_controller::quantity;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Nav, Page, PageError, display_time};
use crate::auth::{CurrentUser, RemoteAddr, SessionForm};
use crate::authz::{self, Membership, TeamRole, account_is_active, active_role};
use crate::backend::kubernetes::validate_workspace_name;
use crate::backend::{BackendError, NewWorkspace, Phase, TeamView, TemplateView, WorkspaceView};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::store::{AuditEntry, Outcome};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/static/workspaces.js", get(script))
        .route("/static/workspaces.css", get(stylesheet))
        .route("/templates", get(catalog))
        .route("/workspaces/new", get(new_form))
        .route("/workspaces", post(create_from_form))
        .route("/workspaces/{team}/{name}/start", post(set_running_from_form::<true>))
        .route("/workspaces/{team}/{name}/stop", post(set_running_from_form::<false>))
        .route("/workspaces/{team}/{name}/delete", post(delete_from_form))
        .route("/teams/{team}", get(team_page))
}

// ---------------------------------------------------------------------------------------------
// Operations shared with the JSON API
// ---------------------------------------------------------------------------------------------

/// A [`BackendError`] as the portal answers it; `field` names the request field a refusal is
/// about, when the caller knows it.
pub(crate) fn backend_error(error: BackendError, field: Option<&'static str>) -> Error {
    match error {
        BackendError::NotFound(message) => Error::NotFound(message),
        BackendError::Conflict(message) => Error::Conflict { field, message },
        BackendError::Invalid(message) => Error::InvalidInput { field, message },
        // The backend logged the detail; the message says only which step failed.
        BackendError::Unavailable(message) => Error::BackendUnavailable(message),
    }
}

/// What a request to create a workspace holds (the JSON body and the form).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRequest {
    #[serde(default)]
    pub team: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub template: String,
}

/// What a workspace action is called in the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Create,
    Start,
    Stop,
    Delete,
}

impl Action {
    fn audit_name(self) -> &'static str {
        match self {
            Self::Create => "workspace.create",
            Self::Start => "workspace.start",
            Self::Stop => "workspace.stop",
            Self::Delete => "workspace.delete",
        }
    }
}

/// Records a workspace action and how it ended: refusals of permission as `denied`, other errors
/// as `failure`. A failure to write is logged, not returned (as [`crate::audit::record`]).
async fn audit<T>(
    state: &AppState,
    user: &CurrentUser,
    action: Action,
    object: String,
    remote: Option<IpAddr>,
    result: &Result<T>,
) {
    let outcome = match result {
        Ok(_) => Outcome::Success,
        Err(Error::Forbidden(_)) => Outcome::Denied,
        Err(_) => Outcome::Failure,
    };
    let entry = AuditEntry {
        at: Timestamp::now(),
        actor: user.id().to_owned(),
        action: action.audit_name().to_owned(),
        object,
        outcome,
        remote_addr: remote.map(|addr| addr.to_string()),
    };
    tracing::info!(actor = user.id(), action = action.audit_name(), object = %entry.object, outcome = outcome.as_str(), "audit");
    if let Err(error) = state.store.append_audit(entry).await {
        tracing::error!(%error, action = action.audit_name(), "could not write the audit log");
    }
}

/// Whether `team` could name a team (a DNS label of at most 40 characters).
fn is_team_name(team: &str) -> bool {
    validate_workspace_name(team).is_ok()
}

/// Refuses users who are neither active members of `team` nor active admins.
fn require_member(user: &CurrentUser, memberships: &[Membership], team: &str, now: Timestamp) -> Result<()> {
    let active = account_is_active(&user.user, now);
    if active && (user.user.is_admin() || active_role(memberships, team, now).is_some()) {
        return Ok(());
    }
    let expired = memberships.iter().any(|m| m.team == team && !m.is_active_at(now));
    Err(Error::Forbidden(if expired {
        format!("your membership of team {team} has ended")
    } else {
        format!("you are not a member of team {team}")
    }))
}

/// The workspace `team/name`, if `user` may see (and so start, stop and delete) it.
pub(crate) async fn authorized_workspace(
    state: &AppState,
    user: &CurrentUser,
    team: &str,
    name: &str,
) -> Result<WorkspaceView> {
    let now = Timestamp::now();
    let not_found = || Error::NotFound(format!("there is no workspace {name} in team {team}"));
    if !is_team_name(team) {
        return Err(not_found());
    }
    let memberships = state.memberships_of(user.id()).await?;
    require_member(user, &memberships, team, now)?;
    let workspace =
        state.backend.workspace(team, name).await.map_err(|e| backend_error(e, None))?.ok_or_else(not_found)?;
    let team_view = state.backend.team(team).await.map_err(|e| backend_error(e, None))?.ok_or_else(not_found)?;
    if !authz::can_view_workspace(&user.user, &memberships, &workspace.owner, team, team_view.leads_may_connect, now) {
        return Err(Error::Forbidden(format!("workspace {team}/{name} belongs to someone else")));
    }
    Ok(workspace)
}

/// Creates a workspace owned by `user`; bad input is refused before anything is created.
pub(crate) async fn create(
    state: &AppState,
    user: &CurrentUser,
    request: CreateRequest,
    remote: Option<IpAddr>,
) -> Result<WorkspaceView> {
    let object = format!("{}/{}", request.team, request.name);
    let result = create_checked(state, user, request).await;
    state.metrics.workspace_create(result.as_ref().map_or_else(Error::status, |_| StatusCode::CREATED));
    audit(state, user, Action::Create, object, remote, &result).await;
    result
}

async fn create_checked(state: &AppState, user: &CurrentUser, request: CreateRequest) -> Result<WorkspaceView> {
    let CreateRequest { team, name, template } = request;
    if team.is_empty() {
        return Err(Error::invalid("team", "choose the team the workspace belongs to"));
    }
    if !is_team_name(&team) {
        return Err(Error::invalid("team", format!("{team:?} is not a team name")));
    }
    let now = Timestamp::now();
    let memberships = state.memberships_of(user.id()).await?;
    if !authz::can_create_workspace(&user.user, &memberships, &team, now) {
        require_member(user, &memberships, &team, now)?;
        return Err(Error::Forbidden(format!("you may not create workspaces in team {team}")));
    }
    validate_workspace_name(&name).map_err(|message| Error::invalid("name", message))?;
    if template.is_empty() {
        return Err(Error::invalid("template", "choose a template from the catalog"));
    }
    let templates = state.backend.templates().await.map_err(|e| backend_error(e, None))?;
    if !templates.iter().any(|t| t.name == template) {
        return Err(Error::invalid(
            "template",
            format!("there is no template {template:?}; the catalog at /templates lists those that exist"),
        ));
    }
    let new = NewWorkspace { team: team.clone(), name, owner: user.id().to_owned(), template };
    state.backend.create_workspace(new).await.map_err(|e| match e {
        BackendError::NotFound(message) => Error::invalid("team", message),
        BackendError::Conflict(message) => Error::Conflict { field: Some("name"), message },
        other => backend_error(other, None),
    })
}

/// Starts or stops a workspace `user` may see.
pub(crate) async fn set_running(
    state: &AppState,
    user: &CurrentUser,
    team: &str,
    name: &str,
    running: bool,
    remote: Option<IpAddr>,
) -> Result<()> {
    let result = async {
        authorized_workspace(state, user, team, name).await?;
        state.backend.set_running(team, name, running).await.map_err(|e| backend_error(e, None))
    }
    .await;
    let action = if running { Action::Start } else { Action::Stop };
    audit(state, user, action, format!("{team}/{name}"), remote, &result).await;
    result
}

/// Deletes a workspace `user` may see (its home volume goes too, unless it is retained).
pub(crate) async fn delete(
    state: &AppState,
    user: &CurrentUser,
    team: &str,
    name: &str,
    remote: Option<IpAddr>,
) -> Result<()> {
    let result = async {
        authorized_workspace(state, user, team, name).await?;
        state.backend.delete_workspace(team, name).await.map_err(|e| backend_error(e, None))
    }
    .await;
    audit(state, user, Action::Delete, format!("{team}/{name}"), remote, &result).await;
    result
}

/// The teams whose workspaces owned by the user "My workspaces" lists (the page, the API list
/// without `team`, and the live events): those the user is an active member of at `now`.
pub(crate) fn own_workspace_teams(memberships: &[Membership], now: Timestamp) -> BTreeSet<String> {
    memberships.iter().filter(|m| m.is_active_at(now)).map(|m| m.team.clone()).collect()
}

/// The workspaces `user` sees: their own in every team they are an active member of, or with
/// `team`, those of that team they may see (leads and admins see others' when the team allows).
pub(crate) async fn visible_workspaces(
    state: &AppState,
    user: &CurrentUser,
    team: Option<&str>,
) -> Result<Vec<WorkspaceView>> {
    let now = Timestamp::now();
    let memberships = state.memberships_of(user.id()).await?;
    let Some(team) = team else {
        let mut all = Vec::new();
        for team in own_workspace_teams(&memberships, now) {
            let own = state.backend.workspaces(&team, Some(user.id())).await;
            all.extend(own.map_err(|e| backend_error(e, None))?);
        }
        return Ok(all);
    };
    if !is_team_name(team) {
        return Err(Error::invalid("team", format!("{team:?} is not a team name")));
    }
    require_member(user, &memberships, team, now)?;
    let Some(team_view) = state.backend.team(team).await.map_err(|e| backend_error(e, None))? else {
        return Err(Error::NotFound(format!("there is no team {team}")));
    };
    let owner = (!team_view.leads_may_connect).then_some(user.id());
    let workspaces = state.backend.workspaces(team, owner).await.map_err(|e| backend_error(e, None))?;
    Ok(workspaces
        .into_iter()
        .filter(|ws| {
            authz::can_view_workspace(&user.user, &memberships, &ws.owner, team, team_view.leads_may_connect, now)
        })
        .collect())
}

/// The team `team` and its running workspaces, for its active members and admins.
pub(crate) async fn team_overview(
    state: &AppState,
    user: &CurrentUser,
    team: &str,
) -> Result<(TeamView, Vec<WorkspaceView>)> {
    let not_found = || Error::NotFound(format!("there is no team {team}"));
    if !is_team_name(team) {
        return Err(not_found());
    }
    let memberships = state.memberships_of(user.id()).await?;
    require_member(user, &memberships, team, Timestamp::now())?;
    let view = state.backend.team(team).await.map_err(|e| backend_error(e, None))?.ok_or_else(not_found)?;
    let running = state
        .backend
        .workspaces(team, None)
        .await
        .map_err(|e| backend_error(e, None))?
        .into_iter()
        .filter(|ws| ws.running && ws.phase != Phase::Stopped)
        .collect();
    Ok((view, running))
}

/// The stages a starting workspace goes through, as the pages show them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    /// The home volume (and the password Secret) are being created.
    Volume,
    /// Waiting for a node (and for team capacity).
    Scheduling,
    /// The node pulls the image and starts the container.
    Image,
    /// The container runs; waiting for the desktop to answer.
    Desktop,
    /// The desktop answers.
    Ready,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Volume, Stage::Scheduling, Stage::Image, Stage::Desktop, Stage::Ready];

    pub fn label(self) -> &'static str {
        match self {
            Self::Volume => "volume",
            Self::Scheduling => "scheduling",
            Self::Image => "image",
            Self::Desktop => "desktop starting",
            Self::Ready => "ready",
        }
    }
}

/// Where a workspace is on its way to running, from its phase, problems and the controller's
/// message; `None` when it is not on its way (stopped, stopping, failed).
pub fn stage_of(ws: &WorkspaceView) -> Option<Stage> {
    if !ws.running {
        return None;
    }
    let has = |reason: &str| ws.problems.contains_key(reason);
    let message = ws.message.as_deref().unwrap_or_default();
    match ws.phase {
        Phase::Running => Some(Stage::Ready),
        Phase::Stopping | Phase::Stopped | Phase::Failed => None,
        Phase::Pending if has("QuotaExceeded") => Some(Stage::Scheduling),
        Phase::Pending | Phase::Creating => Some(Stage::Volume),
        Phase::Starting if has("ImagePullFailed") => Some(Stage::Image),
        Phase::Starting if has("CrashLoopBackOff") => Some(Stage::Desktop),
        Phase::Starting if has("Unschedulable") => Some(Stage::Scheduling),
        Phase::Starting => Some(match message {
            "preparing the home volume" => Stage::Volume,
            "starting the desktop container" => Stage::Image,
            "waiting for the desktop to answer" => Stage::Desktop,
            _ => Stage::Scheduling,
        }),
    }
}

/// Why a workspace cannot start, if something stops it (quota, scheduling, the image, ...).
pub fn blocked_reason(ws: &WorkspaceView) -> Option<String> {
    ws.problems.values().next().cloned()
}

/// Where the desktop view of a workspace is.
pub fn desktop_path(team: &str, name: &str) -> String {
    format!("/workspaces/{team}/{name}/desktop")
}

// ---------------------------------------------------------------------------------------------
// Pages
// ---------------------------------------------------------------------------------------------

async fn script() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/javascript; charset=utf-8"), (CACHE_CONTROL, "public, max-age=300")],
        include_str!("../../static/workspaces.js"),
    )
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/css; charset=utf-8"), (CACHE_CONTROL, "public, max-age=300")],
        include_str!("../../static/workspaces.css"),
    )
}

/// One step of a workspace's progress.
pub(super) struct Step {
    pub(super) stage: &'static str,
    pub(super) label: &'static str,
    /// `done`, `current` or `todo`.
    pub(super) state: &'static str,
}

fn steps(current: Option<Stage>) -> Vec<Step> {
    let at = current.and_then(|c| Stage::ALL.iter().position(|s| *s == c));
    Stage::ALL
        .iter()
        .enumerate()
        .map(|(i, stage)| Step {
            stage: stage_key(*stage),
            label: stage.label(),
            state: match at {
                Some(at) if i < at || *stage == Stage::Ready && i == at => "done",
                Some(at) if i == at => "current",
                _ => "todo",
            },
        })
        .collect()
}

fn stage_key(stage: Stage) -> &'static str {
    match stage {
        Stage::Volume => "volume",
        Stage::Scheduling => "scheduling",
        Stage::Image => "image",
        Stage::Desktop => "desktop",
        Stage::Ready => "ready",
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "Pending",
        Phase::Creating => "Creating",
        Phase::Starting => "Starting",
        Phase::Running => "Running",
        Phase::Stopping => "Stopping",
        Phase::Stopped => "Stopped",
        Phase::Failed => "Failed",
    }
}

/// A workspace as a row of the home page.
pub(super) struct WorkspaceRow {
    pub(super) team: String,
    pub(super) name: String,
    pub(super) owner: String,
    pub(super) template: String,
    pub(super) phase: &'static str,
    pub(super) message: String,
    pub(super) problem: String,
    /// `spec.running`: whether Stop (else Start) is offered.
    pub(super) wants_running: bool,
    /// Whether the desktop can be opened now.
    pub(super) ready: bool,
    pub(super) desktop: String,
    pub(super) steps: Vec<Step>,
    pub(super) since: String,
}

impl WorkspaceRow {
    pub(super) fn new(ws: WorkspaceView) -> Self {
        let stage = stage_of(&ws);
        Self {
            desktop: desktop_path(&ws.team, &ws.name),
            phase: phase_name(ws.phase),
            message: ws.message.clone().unwrap_or_default(),
            problem: blocked_reason(&ws).unwrap_or_default(),
            wants_running: ws.running,
            ready: ws.phase == Phase::Running && ws.running,
            steps: steps(stage),
            since: ws.started_at.or(ws.created_at).map(display_time).unwrap_or_default(),
            team: ws.team,
            name: ws.name,
            owner: ws.owner,
            template: ws.template,
        }
    }
}

pub(super) fn role_name(role: TeamRole) -> &'static str {
    match role {
        TeamRole::Lead => "lead",
        TeamRole::Engineer => "engineer",
        TeamRole::Contractor => "contractor",
    }
}

/// The session's CSRF token, for the page's forms.
pub(super) fn csrf_of(user: &CurrentUser) -> String {
    user.csrf_token().unwrap_or_default().to_owned()
}

#[derive(Template)]
#[template(path = "catalog.html")]
struct CatalogPage {
    nav: Option<Nav>,
    templates: Vec<TemplateLine>,
}

struct TemplateLine {
    name: String,
    display_name: String,
    description: String,
    protocol: &'static str,
    resources: String,
    home_size: String,
}

impl TemplateLine {
    fn new(t: TemplateView) -> Self {
        let resources = [("cpuRequest", "CPU"), ("memoryRequest", "memory")]
            .iter()
            .filter_map(|(key, label)| t.resources.get(*key).map(|v| format!("{v} {label}")))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            protocol: match t.protocol {
                crate::backend::Protocol::Novnc => "noVNC",
                crate::backend::Protocol::Kasm => "KasmVNC",
            },
            description: t.description.unwrap_or_default(),
            home_size: t.home_size.unwrap_or_default(),
            resources,
            name: t.name,
            display_name: t.display_name,
        }
    }
}

async fn catalog(State(state): State<AppState>, user: CurrentUser) -> Result<Page<CatalogPage>, PageError> {
    let templates = state.backend.templates().await.map_err(|e| backend_error(e, None))?;
    Ok(Page(CatalogPage { nav: Nav::of(&user), templates: templates.into_iter().map(TemplateLine::new).collect() }))
}

/// One resource of a team's quota, for a usage bar.
struct QuotaLine {
    label: &'static str,
    used: String,
    hard: String,
    /// Used, in percent of hard (0–100).
    percent: u32,
    /// What is left, as a sentence.
    left: String,
}

/// The quota resources pages show, in order, with their labels.
const QUOTA_LABELS: [(&str, &str); 9] = [
    ("count/workspaces.deskpod.io", "Workspaces"),
    ("pods", "Running desktops and agents"),
    ("requests.cpu", "CPU requested"),
    ("limits.cpu", "CPU limits"),
    ("requests.memory", "Memory requested"),
    ("limits.memory", "Memory limits"),
    ("requests.storage", "Home storage"),
    ("requests.nvidia.com/gpu", "GPUs"),
    ("count/ciagents.deskpod.io", "CI agents (queued or running)"),
];

fn quota_lines(team: &TeamView) -> Vec<QuotaLine> {
    QUOTA_LABELS
        .iter()
        .filter_map(|(key, label)| {
            let usage = team.quota.get(*key)?;
            let hard = quantity::parse(&usage.hard).ok()?;
            let used = quantity::parse(&usage.used).unwrap_or(quantity::Milli(0));
            let percent = if hard.0 == 0 { 100 } else { (used.0.saturating_mul(100) / hard.0).clamp(0, 100) as u32 };
            let left = if used >= hard { "none left".to_owned() } else { format!("{percent}% used") };
            Some(QuotaLine { label, used: usage.used.clone(), hard: usage.hard.clone(), percent, left })
        })
        .collect()
}

struct TeamQuota {
    team: String,
    lines: Vec<QuotaLine>,
}

#[derive(Template)]
#[template(path = "workspaces_new.html")]
struct NewPage {
    nav: Option<Nav>,
    csrf: String,
    teams: Vec<String>,
    templates: Vec<TemplateLine>,
    quotas: Vec<TeamQuota>,
    error: Option<String>,
    form: CreateRequest,
}

/// What `/workspaces/new?team=&template=` preselects.
#[derive(Default, Deserialize)]
struct Preselect {
    #[serde(default)]
    team: String,
    #[serde(default)]
    template: String,
}

async fn render_new(
    state: &AppState,
    user: &CurrentUser,
    status: StatusCode,
    error: Option<String>,
    form: CreateRequest,
) -> Result<Response, PageError> {
    let now = Timestamp::now();
    let teams: Vec<String> = state
        .memberships_of(user.id())
        .await?
        .into_iter()
        .filter(|m| {
            m.is_active_at(now) && authz::can_create_workspace(&user.user, std::slice::from_ref(m), &m.team, now)
        })
        .map(|m| m.team)
        .collect();
    let templates = state.backend.templates().await.map_err(|e| backend_error(e, None))?;
    let mut quotas = Vec::new();
    for team in &teams {
        if let Some(view) = state.backend.team(team).await.map_err(|e| backend_error(e, None))? {
            quotas.push(TeamQuota { team: team.clone(), lines: quota_lines(&view) });
        }
    }
    let page = NewPage {
        nav: Nav::of(user),
        csrf: csrf_of(user),
        teams,
        templates: templates.into_iter().map(TemplateLine::new).collect(),
        quotas,
        error,
        form,
    };
    Ok((status, Page(page)).into_response())
}

async fn new_form(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(pre): Query<Preselect>,
) -> Result<Response, PageError> {
    let form = CreateRequest { team: pre.team, name: String::new(), template: pre.template };
    render_new(&state, &user, StatusCode::OK, None, form).await
}

/// The create form's fields (its `csrf` is checked by [`SessionForm`]).
#[derive(Deserialize)]
struct CreateForm {
    #[serde(default)]
    team: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    template: String,
}

async fn create_from_form(
    State(state): State<AppState>,
    RemoteAddr(remote): RemoteAddr,
    SessionForm { user, form }: SessionForm<CreateForm>,
) -> Result<Response, PageError> {
    let request =
        CreateRequest { team: form.team.trim().to_owned(), name: form.name.trim().to_owned(), template: form.template };
    match create(&state, &user, request.clone(), remote).await {
        Ok(_) => Ok(Redirect::to("/").into_response()),
        Err(error) if error.status().is_client_error() && error.status() != StatusCode::FORBIDDEN => {
            render_new(&state, &user, error.status(), Some(error.public_message()), request).await
        }
        Err(error) => Err(error.into()),
    }
}

/// A form that carries nothing but its CSRF token.
#[derive(Deserialize)]
struct Empty {}

/// `POST /workspaces/{team}/{name}/start` (`RUNNING`) and `.../stop` (not).
async fn set_running_from_form<const RUNNING: bool>(
    State(state): State<AppState>,
    RemoteAddr(remote): RemoteAddr,
    Path((team, name)): Path<(String, String)>,
    SessionForm { user, .. }: SessionForm<Empty>,
) -> Result<Redirect, PageError> {
    set_running(&state, &user, &team, &name, RUNNING, remote).await?;
    Ok(Redirect::to("/"))
}

async fn delete_from_form(
    State(state): State<AppState>,
    RemoteAddr(remote): RemoteAddr,
    Path((team, name)): Path<(String, String)>,
    SessionForm { user, .. }: SessionForm<Empty>,
) -> Result<Redirect, PageError> {
    delete(&state, &user, &team, &name, remote).await?;
    Ok(Redirect::to("/"))
}

struct MemberLine {
    user: String,
    role: &'static str,
    until: String,
    expired: bool,
}

#[derive(Template)]
#[template(path = "team.html")]
struct TeamPage {
    nav: Option<Nav>,
    team: String,
    /// The member cluster the team lives on, if not the portal's own.
    cluster: Option<String>,
    members: Vec<MemberLine>,
    quota: TeamQuota,
    running: Vec<WorkspaceRow>,
}

async fn team_page(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(team): Path<String>,
) -> Result<Page<TeamPage>, PageError> {
    let now = Timestamp::now();
    let (view, running) = team_overview(&state, &user, &team).await?;
    let members = view
        .members
        .iter()
        .map(|m| MemberLine {
            user: m.user.clone(),
            role: role_name(m.role),
            until: m.expires_at.map_or_else(|| "—".to_owned(), display_time),
            expired: m.expires_at.is_some_and(|end| end <= now),
        })
        .collect();
    Ok(Page(TeamPage {
        nav: Nav::of(&user),
        quota: TeamQuota { team: view.name.clone(), lines: quota_lines(&view) },
        cluster: view.cluster.clone(),
        team: view.name,
        members,
        running: running.into_iter().map(WorkspaceRow::new).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rstest::rstest;

    use super::*;

    fn ws(phase: Phase, running: bool, message: Option<&str>, problem: Option<&str>) -> WorkspaceView {
        WorkspaceView {
            team: "platform".into(),
            name: "dev".into(),
            owner: "alice@example.com".into(),
            template: "python".into(),
            running,
            phase,
            message: message.map(Into::into),
            problems: problem.map(|p| (p.to_owned(), format!("{p} happened"))).into_iter().collect(),
            created_at: None,
            started_at: None,
        }
    }

    #[rstest]
    #[case::accepted(Phase::Pending, true, None, None, Some(Stage::Volume))]
    #[case::creating(Phase::Creating, true, Some("creating the desktop pod"), None, Some(Stage::Volume))]
    #[case::volume(Phase::Starting, true, Some("preparing the home volume"), None, Some(Stage::Volume))]
    #[case::no_node(Phase::Starting, true, Some("waiting for a node"), None, Some(Stage::Scheduling))]
    #[case::over_quota(
        Phase::Pending,
        true,
        Some("waiting for team capacity: ..."),
        Some("QuotaExceeded"),
        Some(Stage::Scheduling)
    )]
    #[case::unschedulable(Phase::Starting, true, Some("0/3 nodes"), Some("Unschedulable"), Some(Stage::Scheduling))]
    #[case::image(Phase::Starting, true, Some("starting the desktop container"), None, Some(Stage::Image))]
    #[case::image_pull_failed(Phase::Starting, true, Some("cannot pull"), Some("ImagePullFailed"), Some(Stage::Image))]
    #[case::desktop(Phase::Starting, true, Some("waiting for the desktop to answer"), None, Some(Stage::Desktop))]
    #[case::crashing(Phase::Starting, true, Some("keeps exiting"), Some("CrashLoopBackOff"), Some(Stage::Desktop))]
    #[case::ready(Phase::Running, true, None, None, Some(Stage::Ready))]
    #[case::stopping(Phase::Running, false, None, None, None)]
    #[case::stopped(Phase::Stopped, false, None, None, None)]
    #[case::failed(Phase::Failed, true, Some("template missing"), Some("TemplateNotFound"), None)]
    fn stages(
        #[case] phase: Phase,
        #[case] running: bool,
        #[case] message: Option<&str>,
        #[case] problem: Option<&str>,
        #[case] expected: Option<Stage>,
    ) {
        assert_eq!(stage_of(&ws(phase, running, message, problem)), expected);
    }

    #[test]
    fn steps_before_the_current_one_are_done_and_ready_is_done_when_reached() {
        let states = |stage| steps(stage).iter().map(|s| s.state).collect::<Vec<_>>();
        assert_eq!(states(Some(Stage::Image)), ["done", "done", "current", "todo", "todo"]);
        assert_eq!(states(Some(Stage::Ready)), ["done"; 5]);
        assert_eq!(states(None), ["todo"; 5]);
    }

    #[test]
    fn quota_lines_show_known_resources_with_their_use() {
        let team = TeamView {
            name: "platform".into(),
            quota: BTreeMap::from([
                ("count/workspaces.deskpod.io".into(), crate::backend::QuotaUse { hard: "4".into(), used: "1".into() }),
                ("requests.storage".into(), crate::backend::QuotaUse { hard: "10Gi".into(), used: "10Gi".into() }),
                ("persistentvolumeclaims".into(), crate::backend::QuotaUse { hard: "4".into(), used: "1".into() }),
            ]),
            leads_may_connect: false,
            members: vec![],
            cluster: None,
        };
        let lines = quota_lines(&team);
        assert_eq!(
            lines.iter().map(|l| (l.label, l.percent)).collect::<Vec<_>>(),
            [("Workspaces", 25), ("Home storage", 100)]
        );
        assert_eq!(lines[1].left, "none left");
    }
}
