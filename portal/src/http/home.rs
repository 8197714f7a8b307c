//! `GET /`: the signed-in user's workspaces with their live status, and their teams.
//!
//! The page is rendered whole on the server; `/static/workspaces.js` then follows the server-sent
//! events of `GET /api/v1/workspaces/events` ([`super::events`]) and updates each workspace's
//! phase, stage and message in place (and reloads the page when workspaces appear or go). The workspace operations and rows
//! come from [`super::workspaces`].

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use jiff::Timestamp;

use super::workspaces::{WorkspaceRow, csrf_of, role_name, visible_workspaces};
use super::{Nav, Page, PageError, display_time};
use crate::auth::CurrentUser;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(home))
}

/// One of the user's teams, for display.
struct TeamLine {
    team: String,
    role: &'static str,
    until: String,
}

#[derive(Template)]
#[template(path = "workspaces.html")]
struct HomePage {
    nav: Option<Nav>,
    csrf: String,
    user_id: String,
    is_admin: bool,
    teams: Vec<TeamLine>,
    workspaces: Vec<WorkspaceRow>,
    /// Why the workspaces could not be listed (the backend failed), shown instead of the list.
    unavailable: Option<String>,
}

async fn home(State(state): State<AppState>, user: CurrentUser) -> Result<Page<HomePage>, PageError> {
    let now = Timestamp::now();
    let teams = state
        .memberships_of(user.id())
        .await?
        .into_iter()
        .filter(|m| m.is_active_at(now))
        .map(|m| TeamLine {
            team: m.team,
            role: role_name(m.role),
            until: m.expires_at.map_or_else(|| "—".to_owned(), display_time),
        })
        .collect();
    // A portal without a working backend still shows who is signed in (and the identity pages).
    let (workspaces, unavailable) = match visible_workspaces(&state, &user, None).await {
        Ok(list) => (list.into_iter().map(WorkspaceRow::new).collect(), None),
        Err(error) if error.status().is_server_error() => {
            error.log_server_error();
            (vec![], Some(error.public_message()))
        }
        Err(error) => return Err(error.into()),
    };
    Ok(Page(HomePage {
        nav: Nav::of(&user),
        csrf: csrf_of(&user),
        user_id: user.user.id.clone(),
        is_admin: user.user.is_admin(),
        teams,
        workspaces,
        unavailable,
    }))
}
