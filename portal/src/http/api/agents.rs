//! The CI agent API under `/api/v1/` (token scope `agents:run`), what `deskpod agent run` uses:
//!
//! - `POST /agents` `{"team", "name"?, "image" | "template", "command"?, "args"?, "env"?,
//!   "deadline"?, "ttlAfterFinished"?}`: submits a job (201). It starts when the team has room and
//!   waits in the team's queue until then; it is never refused for lack of room, only when the
//!   queue itself is full. Without a name one is made (`job-<hex>`).
//! - `GET /agents?team=`: the team's agents the caller may see, in queue order.
//! - `GET /agents/{team}/{name}`: one agent (phase, queue position, exit code, times).
//! - `GET /agents/{team}/{name}/logs[?follow=true]`: its output as `text/plain`; with `follow`
//!   the response streams until the job ends (waiting while it is queued).
//! - `DELETE /agents/{team}/{name}`: cancels (stops) and removes it (204).
//!
//! Any active member of a team may submit; an agent is seen, followed and cancelled by whoever
//! submitted it, the team's leads and admins.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use deskpod_controller::api::{CiAgentSpec, EnvVar};
use futures::StreamExt;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::ApiJson;
use crate::auth::CurrentUser;
use crate::authz::{self, TeamRole};
use crate::backend::agent::{AgentView, NewAgent};
use crate::error::{Error, Result};
use crate::http::workspaces::backend_error;
use crate::state::AppState;
use crate::token::Scope;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/agents", get(list).post(create))
        .route("/agents/{team}/{name}", get(show).delete(delete))
        .route("/agents/{team}/{name}/logs", get(logs))
}

/// What `POST /agents` takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentRequest {
    #[serde(default)]
    pub team: String,
    pub name: Option<String>,
    pub image: Option<String>,
    pub template: Option<String>,
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub deadline: Option<String>,
    pub ttl_after_finished: Option<String>,
}

#[derive(Serialize)]
struct AgentList {
    agents: Vec<AgentView>,
}

#[derive(Deserialize)]
struct ListQuery {
    team: Option<String>,
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
}

/// An environment variable name a shell would accept.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiJson(request): ApiJson<AgentRequest>,
) -> Result<(StatusCode, axum::Json<AgentView>)> {
    user.require_scope(Scope::AgentsRun)?;
    if request.team.is_empty() {
        return Err(Error::invalid("team", "name the team the job runs for"));
    }
    let memberships = state.memberships_of(user.id()).await?;
    if !authz::can_create_workspace(&user.user, &memberships, &request.team, Timestamp::now()) {
        return Err(Error::Forbidden(format!("you may not run CI agents for team {}", request.team)));
    }
    if request.image.is_some() == request.template.is_some() {
        return Err(Error::invalid("image", "set exactly one of image or template"));
    }
    if let Some(bad) = request.env.keys().find(|name| !is_env_name(name)) {
        return Err(Error::invalid("env", format!("{bad:?} is not an environment variable name")));
    }
    if request.command.as_ref().is_some_and(|c| c.is_empty()) {
        return Err(Error::invalid("command", "an empty command runs nothing; leave it out to run the image's own"));
    }
    for (field, value) in [("deadline", &request.deadline), ("ttlAfterFinished", &request.ttl_after_finished)] {
        if let Some(raw) = value
            && let Err(why) = deskpod_controller::duration::parse(raw)
        {
            return Err(Error::invalid(
                field,
                format!("{raw:?} is not a duration ({why}); write it like 30m or 1h30m"),
            ));
        }
    }
    let name = match request.name {
        Some(name) => name,
        None => format!("job-{}", crate::random::hex::<4>()?),
    };
    let spec = CiAgentSpec {
        image: request.image,
        template: request.template,
        command: request.command,
        args: request.args,
        env: request.env.into_iter().map(|(name, value)| EnvVar { name, value }).collect(),
        jenkins: None,
        resources: None,
        deadline: request.deadline,
        ttl_after_finished: request.ttl_after_finished,
    };
    let new = NewAgent { team: request.team, name, owner: user.id().to_owned(), spec };
    let created = state.backend.create_agent(new).await.map_err(|e| backend_error(e, Some("name")))?;
    tracing::info!(user = %user.id(), team = %created.team, agent = %created.name, "CI agent submitted");
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// Whether `user` may see, follow and cancel `agent`.
async fn may_see(state: &AppState, user: &CurrentUser, agent: &AgentView) -> Result<bool> {
    if user.user.is_admin() {
        return Ok(true);
    }
    let memberships = state.memberships_of(user.id()).await?;
    Ok(match authz::active_role(&memberships, &agent.team, Timestamp::now()) {
        Some(TeamRole::Lead) => true,
        Some(_) => agent.owner == user.id(),
        None => false,
    })
}

/// The agent, if it exists and `user` may see it; 404 otherwise (a 403 would tell that it exists).
async fn visible(state: &AppState, user: &CurrentUser, team: &str, name: &str) -> Result<AgentView> {
    let not_found = || Error::NotFound(format!("there is no CI agent {name} in team {team} that you may see"));
    let agent = state.backend.agent(team, name).await.map_err(|e| backend_error(e, None))?.ok_or_else(not_found)?;
    if may_see(state, user, &agent).await? { Ok(agent) } else { Err(not_found()) }
}

async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<AgentList>> {
    user.require_scope(Scope::AgentsRun)?;
    let team = query.team.ok_or_else(|| Error::invalid("team", "name the team: ?team=<team>"))?;
    let all = state.backend.agents(&team).await.map_err(|e| backend_error(e, None))?;
    let mut agents = Vec::new();
    for agent in all {
        if may_see(&state, &user, &agent).await? {
            agents.push(agent);
        }
    }
    Ok(axum::Json(AgentList { agents }))
}

async fn show(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((team, name)): Path<(String, String)>,
) -> Result<axum::Json<AgentView>> {
    user.require_scope(Scope::AgentsRun)?;
    Ok(axum::Json(visible(&state, &user, &team, &name).await?))
}

async fn logs(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((team, name)): Path<(String, String)>,
    Query(query): Query<LogQuery>,
) -> Result<Response> {
    user.require_scope(Scope::AgentsRun)?;
    visible(&state, &user, &team, &name).await?;
    let stream = state.backend.agent_logs(&team, &name, query.follow).await.map_err(|e| backend_error(e, None))?;
    // A failure in the middle of the stream ends it; the client asks for the status next.
    let body = Body::from_stream(stream.map(|chunk| chunk.map_err(|e| std::io::Error::other(e.to_string()))));
    let mut response = body.into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    Ok(response)
}

async fn delete(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((team, name)): Path<(String, String)>,
) -> Result<StatusCode> {
    user.require_scope(Scope::AgentsRun)?;
    visible(&state, &user, &team, &name).await?;
    state.backend.delete_agent(&team, &name).await.map_err(|e| backend_error(e, None))?;
    tracing::info!(user = %user.id(), %team, agent = %name, "CI agent removed");
    Ok(StatusCode::NO_CONTENT)
}
