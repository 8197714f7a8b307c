//! The workspace API under `/api/v1/`: what the workspace pages do, as JSON.
//!
//! - `GET /workspaces[?team=]`: the caller's own workspaces in all their teams, or those of one
//!   team they may see (`workspaces:read`).
//! - `POST /workspaces` `{"team", "name", "template"}`: creates and starts one (201,
//!   `workspaces:write`). Bad input is a 400 naming the `field`, a taken name a 409, and nothing
//!   is created.
//! - `GET /workspaces/{team}/{name}`, `DELETE` the same (204), `POST .../start` and `.../stop`
//!   (204, `workspaces:write`).
//! - `GET /templates`: the catalog (`workspaces:read`).
//! - `GET /teams/{team}`: members, quota and running workspaces, for the team's members
//!   (`workspaces:read`).
//!
//! Each workspace carries `stage` (`volume`, `scheduling`, `image`, `desktop`, `ready`, or null when
//! it is not on its way to running), `blockedReason` (why it cannot start, e.g. the team's quota)
//! and `desktopPath`. Who may do what is decided in [`crate::http::workspaces`], shared with the
//! pages.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::ApiJson;
use crate::auth::{CurrentUser, RemoteAddr};
use crate::backend::{TeamView, TemplateView, WorkspaceView};
use crate::error::Result;
use crate::http::workspaces::{self as ops, CreateRequest, Stage};
use crate::state::AppState;
use crate::token::Scope;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/workspaces", get(list).post(create))
        .route("/workspaces/{team}/{name}", get(show).delete(delete))
        .route("/workspaces/{team}/{name}/start", post(set_running::<true>))
        .route("/workspaces/{team}/{name}/stop", post(set_running::<false>))
        .route("/templates", get(templates))
        .route("/teams/{team}", get(team))
}

/// A workspace as the API shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceJson {
    #[serde(flatten)]
    workspace: WorkspaceView,
    stage: Option<Stage>,
    blocked_reason: Option<String>,
    desktop_path: String,
}

impl From<WorkspaceView> for WorkspaceJson {
    fn from(workspace: WorkspaceView) -> Self {
        Self {
            stage: ops::stage_of(&workspace),
            blocked_reason: ops::blocked_reason(&workspace),
            desktop_path: ops::desktop_path(&workspace.team, &workspace.name),
            workspace,
        }
    }
}

#[derive(Serialize)]
struct WorkspaceList {
    workspaces: Vec<WorkspaceJson>,
}

#[derive(Deserialize)]
struct ListQuery {
    team: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(query): Query<ListQuery>,
) -> Result<Json<WorkspaceList>> {
    user.require_scope(Scope::WorkspacesRead)?;
    let found = ops::visible_workspaces(&state, &user, query.team.as_deref()).await?;
    Ok(Json(WorkspaceList { workspaces: found.into_iter().map(WorkspaceJson::from).collect() }))
}

#[tracing::instrument(skip_all)]
async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    RemoteAddr(remote): RemoteAddr,
    ApiJson(request): ApiJson<CreateRequest>,
) -> Result<(StatusCode, Json<WorkspaceJson>)> {
    user.require_scope(Scope::WorkspacesWrite)?;
    let created = ops::create(&state, &user, request, remote).await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

async fn show(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((team, name)): Path<(String, String)>,
) -> Result<Json<WorkspaceJson>> {
    user.require_scope(Scope::WorkspacesRead)?;
    Ok(Json(ops::authorized_workspace(&state, &user, &team, &name).await?.into()))
}

#[tracing::instrument(skip_all, fields(%team, %name))]
async fn delete(
    State(state): State<AppState>,
    user: CurrentUser,
    RemoteAddr(remote): RemoteAddr,
    Path((team, name)): Path<(String, String)>,
) -> Result<StatusCode> {
    user.require_scope(Scope::WorkspacesWrite)?;
    ops::delete(&state, &user, &team, &name, remote).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST .../start` (`RUNNING`) and `.../stop` (not).
#[tracing::instrument(skip_all, fields(%team, %name, running = RUNNING))]
async fn set_running<const RUNNING: bool>(
    State(state): State<AppState>,
    user: CurrentUser,
    RemoteAddr(remote): RemoteAddr,
    Path((team, name)): Path<(String, String)>,
) -> Result<StatusCode> {
    user.require_scope(Scope::WorkspacesWrite)?;
    ops::set_running(&state, &user, &team, &name, RUNNING, remote).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct TemplateList {
    templates: Vec<TemplateView>,
}

async fn templates(State(state): State<AppState>, user: CurrentUser) -> Result<Json<TemplateList>> {
    user.require_scope(Scope::WorkspacesRead)?;
    let templates = state.backend.templates().await.map_err(|e| ops::backend_error(e, None))?;
    Ok(Json(TemplateList { templates }))
}

#[derive(Serialize)]
struct TeamJson {
    #[serde(flatten)]
    team: TeamView,
    /// The team's workspaces that run or are starting.
    running: Vec<WorkspaceJson>,
}

async fn team(State(state): State<AppState>, user: CurrentUser, Path(team): Path<String>) -> Result<Json<TeamJson>> {
    user.require_scope(Scope::WorkspacesRead)?;
    let (team, running) = ops::team_overview(&state, &user, &team).await?;
    Ok(Json(TeamJson { team, running: running.into_iter().map(WorkspaceJson::from).collect() }))
}
