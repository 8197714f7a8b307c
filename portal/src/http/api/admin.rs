//! Team and template administration as JSON, for platform admins (the session, or an API token
//! with `admin:write`); what `/admin/teams` and `/admin/templates` do, on either backend.
//!
//! - `GET /admin/teams`: every team with its members and quota in use.
//! - `GET /admin/teams/{team}`, `PUT` the same: a Team's spec as the CRD writes it (`quota`,
//!   `members`, `allowLeadAccess`, ...), created or replaced. A spec the backend refuses (on
//!   Kubernetes, the API server's schema and CEL rules) is a 400 with its message; nothing changes.
//! - `GET /admin/templates`, `GET /admin/templates/{template}`, `PUT` the same: WorkspaceTemplate
//!   specs, likewise, and first checked by [`crate::template_rules`] (image reference, bounded
//!   quantities, requests at most limits): a 400 whose `field` names what is wrong
//!   (`resources.memoryLimit`). `DELETE /admin/templates/{template}` (204) is a 409 while
//!   workspaces use it.
//!
//! Changes are audited (`team.put`, `template.put`, `template.delete`) by the operations shared
//! with the pages.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use deskpod_controller::api::{TeamSpec, WorkspaceTemplateSpec};
use serde::Serialize;

use super::ApiJson;
use crate::auth::{CurrentUser, RemoteAddr};
use crate::backend::TeamView;
use crate::error::Result;
use crate::http::admin::require_admin;
use crate::http::admin_teams::{self, put_team, team_spec};
use crate::http::admin_templates::{self, delete_template, put_template, template_spec};
use crate::http::workspaces::backend_error;
use crate::state::AppState;
use crate::token::Scope;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/teams", get(teams))
        .route("/admin/teams/{team}", get(team).put(save_team))
        .route("/admin/templates", get(templates))
        .route("/admin/templates/{template}", get(template).put(save_template).delete(remove_template))
}

/// A named object's spec, as the API shows it.
#[derive(Serialize)]
struct Named<S> {
    name: String,
    spec: S,
}

#[derive(Serialize)]
struct Teams {
    teams: Vec<TeamView>,
}

#[derive(Serialize)]
struct Templates {
    templates: Vec<Named<WorkspaceTemplateSpec>>,
}

/// Admins with a session, or with a token that has `admin:write`.
fn require(user: &CurrentUser, what: &str) -> Result<()> {
    user.require_scope(Scope::AdminWrite)?;
    require_admin(user, what)
}

async fn teams(State(state): State<AppState>, user: CurrentUser) -> Result<Json<Teams>> {
    require(&user, admin_teams::WHAT)?;
    let mut teams = state.backend.teams().await.map_err(|e| backend_error(e, None))?;
    teams.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(Teams { teams }))
}

async fn team(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<Named<TeamSpec>>> {
    require(&user, admin_teams::WHAT)?;
    let spec = team_spec(&state, &name).await?;
    Ok(Json(Named { name, spec }))
}

async fn save_team(
    State(state): State<AppState>,
    user: CurrentUser,
    RemoteAddr(remote): RemoteAddr,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<TeamSpec>,
) -> Result<Json<Named<TeamSpec>>> {
    user.require_scope(Scope::AdminWrite)?;
    put_team(&state, &user, &name, spec.clone(), remote).await?;
    Ok(Json(Named { name, spec }))
}

async fn templates(State(state): State<AppState>, user: CurrentUser) -> Result<Json<Templates>> {
    require(&user, admin_templates::WHAT)?;
    let views = state.backend.templates().await.map_err(|e| backend_error(e, None))?;
    let mut templates = Vec::with_capacity(views.len());
    for view in views {
        // A template deleted since the list was read is left out.
        if let Some(spec) = state.backend.template_spec(&view.name).await.map_err(|e| backend_error(e, None))? {
            templates.push(Named { name: view.name, spec });
        }
    }
    templates.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(Templates { templates }))
}

async fn template(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<Named<WorkspaceTemplateSpec>>> {
    require(&user, admin_templates::WHAT)?;
    let spec = template_spec(&state, &name).await?;
    Ok(Json(Named { name, spec }))
}

async fn save_template(
    State(state): State<AppState>,
    user: CurrentUser,
    RemoteAddr(remote): RemoteAddr,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<WorkspaceTemplateSpec>,
) -> Result<Json<Named<WorkspaceTemplateSpec>>> {
    user.require_scope(Scope::AdminWrite)?;
    put_template(&state, &user, &name, spec.clone(), remote).await?;
    Ok(Json(Named { name, spec }))
}

async fn remove_template(
    State(state): State<AppState>,
    user: CurrentUser,
    RemoteAddr(remote): RemoteAddr,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    user.require_scope(Scope::AdminWrite)?;
    delete_template(&state, &user, &name, remote).await?;
    Ok(StatusCode::NO_CONTENT)
}
