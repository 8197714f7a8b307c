//! Team administration for platform admins, on either backend.
//!
//! Pages: `GET /admin/teams` (every team with its member count and quota in use, and the form to
//! create one), `POST /admin/teams` (create), `GET /admin/teams/{team}` (the edit form) and
//! `POST /admin/teams/{team}` (save). A form changes the display name, the quota (CPU, memory,
//! storage, workspaces, CI agents), the members and whether leads may open members' desktops; the
//! rest of the spec (limits, network, placement) is kept as it is. A refused form comes back as it
//! was sent with the backend's message, and nothing is changed. The JSON API
//! (`/api/v1/admin/teams`) shares [`put_team`].

use std::net::IpAddr;

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use deskpod_controller::api::{TeamMember, TeamRole, TeamSpec};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::admin::{audit_change, require_admin};
use super::workspaces::{backend_error, csrf_of};
use super::{Nav, Page, PageError};
use crate::audit::AuditAction;
use crate::auth::{CurrentUser, RemoteAddr, SessionForm};
use crate::backend::TeamView;
use crate::backend::kubernetes::validate_workspace_name;
use crate::error::{Error, Result};
use crate::state::AppState;

/// What the pages say a non-admin may not see.
pub(crate) const WHAT: &str = "Teams";
/// Empty member rows the forms offer for adding people.
const BLANK_MEMBER_ROWS: usize = 3;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/teams", get(list_page).post(create_from_form))
        .route("/admin/teams/{team}", get(edit_page).post(save_from_form))
}

// ---------------------------------------------------------------------------------------------
// Operations shared with the JSON API
// ---------------------------------------------------------------------------------------------

/// Creates or replaces `team` (admins only), audited as `team.put`.
pub(crate) async fn put_team(
    state: &AppState,
    user: &CurrentUser,
    team: &str,
    spec: TeamSpec,
    remote: Option<IpAddr>,
) -> Result<()> {
    let result = async {
        require_admin(user, WHAT)?;
        validate_workspace_name(team).map_err(|e| Error::invalid("name", e.replace("workspace", "team")))?;
        state.backend.put_team(team, spec).await.map_err(|e| backend_error(e, None))
    }
    .await;
    audit_change(state, user, AuditAction::TeamPut, team, remote, &result).await;
    result
}

/// The stored spec of `team`, 404 when there is none.
pub(crate) async fn team_spec(state: &AppState, team: &str) -> Result<TeamSpec> {
    state
        .backend
        .team_spec(team)
        .await
        .map_err(|e| backend_error(e, None))?
        .ok_or_else(|| Error::NotFound(format!("there is no team {team}")))
}

// ---------------------------------------------------------------------------------------------
// The form
// ---------------------------------------------------------------------------------------------

/// One member row of the form, as typed.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct MemberRow {
    pub(super) user: String,
    /// `lead`, `engineer` or `contractor`.
    pub(super) role: String,
    /// RFC 3339 time or a date (`2026-12-31`, meaning its start, UTC); empty: no end.
    pub(super) expires: String,
}

/// The team form's fields as typed, so a refused form comes back as it was sent.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct TeamForm {
    pub(super) name: String,
    pub(super) display_name: String,
    pub(super) cpu: String,
    pub(super) memory: String,
    pub(super) storage: String,
    pub(super) workspaces: String,
    pub(super) ci_agents: String,
    pub(super) allow_lead_access: bool,
    pub(super) members: Vec<MemberRow>,
}

impl TeamForm {
    /// The form from its posted fields; member rows are the `member_user`, `member_role` and
    /// `member_expires` fields in the order sent (each row has all three).
    fn from_fields(fields: &[(String, String)]) -> Self {
        let mut form = Self::default();
        let values = |key: &'static str| fields.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.trim().to_owned());
        for (key, value) in fields {
            let value = value.trim().to_owned();
            match key.as_str() {
                "name" => form.name = value,
                "display_name" => form.display_name = value,
                "cpu" => form.cpu = value,
                "memory" => form.memory = value,
                "storage" => form.storage = value,
                "workspaces" => form.workspaces = value,
                "ci_agents" => form.ci_agents = value,
                "allow_lead_access" => form.allow_lead_access = true,
                _ => {}
            }
        }
        let mut roles = values("member_role");
        let mut expiries = values("member_expires");
        for user in values("member_user") {
            let row = MemberRow {
                user,
                role: roles.next().unwrap_or_default(),
                expires: expiries.next().unwrap_or_default(),
            };
            if !row.user.is_empty() {
                form.members.push(row);
            }
        }
        form
    }

    fn from_spec(name: &str, spec: &TeamSpec) -> Self {
        let quantity = |q: &Option<Quantity>| q.as_ref().map(|q| q.0.clone()).unwrap_or_default();
        let number = |n: Option<i32>| n.map(|n| n.to_string()).unwrap_or_default();
        Self {
            name: name.to_owned(),
            display_name: spec.display_name.clone().unwrap_or_default(),
            cpu: quantity(&spec.quota.cpu),
            memory: quantity(&spec.quota.memory),
            storage: quantity(&spec.quota.storage),
            workspaces: number(spec.quota.workspaces),
            ci_agents: number(spec.quota.ci_agents),
            allow_lead_access: spec.allow_lead_access,
            members: spec
                .members
                .iter()
                .map(|m| MemberRow {
                    user: m.user.clone(),
                    role: role_name(m.role).to_owned(),
                    expires: m.expires_at.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// `base` (the stored spec, or an empty one) with the form's fields. Only what the form
    /// itself cannot express is refused here (a count that is not a whole number, an unknown
    /// role, a date that is not one); whether the values are acceptable is the backend's call.
    fn apply_to(&self, mut base: TeamSpec) -> Result<TeamSpec> {
        let quantity = |q: &str| (!q.is_empty()).then(|| Quantity(q.to_owned()));
        let number = |field: &'static str, label: &str, raw: &str| -> Result<Option<i32>> {
            if raw.is_empty() {
                return Ok(None);
            }
            raw.parse()
                .map(Some)
                .map_err(|_| Error::invalid(field, format!("{label} must be a whole number such as 10, not {raw:?}")))
        };
        base.display_name = (!self.display_name.is_empty()).then(|| self.display_name.clone());
        base.quota.cpu = quantity(&self.cpu);
        base.quota.memory = quantity(&self.memory);
        base.quota.storage = quantity(&self.storage);
        base.quota.workspaces = number("workspaces", "the workspace quota", &self.workspaces)?;
        base.quota.ci_agents = number("ci_agents", "the CI agent quota", &self.ci_agents)?;
        base.allow_lead_access = self.allow_lead_access;
        base.members = self.members.iter().map(MemberRow::member).collect::<Result<_>>()?;
        Ok(base)
    }

    /// The form with blank member rows to add people in.
    fn with_blank_rows(mut self) -> Self {
        let blank = MemberRow { role: "engineer".into(), ..MemberRow::default() };
        self.members.extend(std::iter::repeat_n(blank, BLANK_MEMBER_ROWS));
        self
    }
}

impl MemberRow {
    fn member(&self) -> Result<TeamMember> {
        let role = match self.role.as_str() {
            "lead" => TeamRole::Lead,
            "engineer" => TeamRole::Engineer,
            "contractor" => TeamRole::Contractor,
            other => {
                return Err(Error::invalid(
                    "member_role",
                    format!("{other:?} is not a role; a member is a lead, an engineer or a contractor"),
                ));
            }
        };
        let expires_at = match self.expires.as_str() {
            "" => None,
            raw => Some(Time(parse_expiry(raw).ok_or_else(|| {
                Error::invalid(
                    "member_expires",
                    format!(
                        "{}'s access end {raw:?} is not a date such as 2026-12-31 or a time such as 2026-12-31T17:00:00Z",
                        self.user
                    ),
                )
            })?)),
        };
        Ok(TeamMember { user: self.user.to_lowercase(), role, expires_at })
    }
}

/// An access end: an RFC 3339 time, or a date meaning its start (UTC).
fn parse_expiry(raw: &str) -> Option<Timestamp> {
    raw.parse::<Timestamp>().ok().or_else(|| {
        let date: jiff::civil::Date = raw.parse().ok()?;
        date.to_zoned(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp())
    })
}

fn role_name(role: TeamRole) -> &'static str {
    match role {
        TeamRole::Lead => "lead",
        TeamRole::Engineer => "engineer",
        TeamRole::Contractor => "contractor",
    }
}

// ---------------------------------------------------------------------------------------------
// Pages
// ---------------------------------------------------------------------------------------------

/// A team as a row of the list.
struct TeamLine {
    name: String,
    members: usize,
    /// Quota in use, e.g. `Workspaces 1 of 20 · CPU limits 2 of 8`.
    quota: String,
    /// Where the team lives: its member cluster, or `local` (where the portal runs desktops).
    cluster: String,
}

/// The quota resources the list shows, in order, with their labels.
const QUOTA_LABELS: [(&str, &str); 6] = [
    ("count/workspaces.deskpod.io", "Workspaces"),
    ("limits.cpu", "CPU"),
    ("limits.memory", "Memory"),
    ("requests.storage", "Storage"),
    ("count/ciagents.deskpod.io", "CI agents"),
    ("pods", "Pods"),
];

impl TeamLine {
    fn new(team: TeamView) -> Self {
        let quota = QUOTA_LABELS
            .iter()
            .filter_map(|(key, label)| team.quota.get(*key).map(|q| format!("{label} {} of {}", q.used, q.hard)))
            .collect::<Vec<_>>()
            .join(" · ");
        let cluster = team.cluster.unwrap_or_else(|| "local".to_owned());
        Self { name: team.name, members: team.members.len(), quota, cluster }
    }
}

#[derive(Template)]
#[template(path = "admin_teams.html")]
struct TeamsPage {
    nav: Option<Nav>,
    csrf: String,
    teams: Vec<TeamLine>,
    /// The create form.
    form: TeamForm,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "admin_team.html")]
struct TeamPage {
    nav: Option<Nav>,
    csrf: String,
    form: TeamForm,
    error: Option<String>,
}

/// A page answered with `status` (a refused form: 400, 409, ...).
fn with_status<T: Template>(status: StatusCode, page: T) -> Response {
    (status, Page(page)).into_response()
}

async fn teams_page(state: &AppState, user: &CurrentUser, form: TeamForm, error: Option<Error>) -> Result<Response> {
    let mut teams = state.backend.teams().await.map_err(|e| backend_error(e, None))?;
    teams.sort_by(|a, b| a.name.cmp(&b.name));
    let status = error.as_ref().map_or(StatusCode::OK, Error::status);
    let page = TeamsPage {
        nav: Nav::of(user),
        csrf: csrf_of(user),
        teams: teams.into_iter().map(TeamLine::new).collect(),
        form: form.with_blank_rows(),
        error: error.map(|e| e.public_message()),
    };
    Ok(with_status(status, page))
}

fn team_page(user: &CurrentUser, form: TeamForm, error: Option<Error>) -> Response {
    let status = error.as_ref().map_or(StatusCode::OK, Error::status);
    let page = TeamPage {
        nav: Nav::of(user),
        csrf: csrf_of(user),
        form: form.with_blank_rows(),
        error: error.map(|e| e.public_message()),
    };
    with_status(status, page)
}

/// Whether a refusal is the admin's to fix in the form (shown with the form) rather than a
/// failure or a refusal of permission (an error page).
fn is_form_error(error: &Error) -> bool {
    error.status().is_client_error() && !matches!(error, Error::Forbidden(_) | Error::Unauthenticated(_))
}

async fn list_page(State(state): State<AppState>, user: CurrentUser) -> Result<Response, PageError> {
    require_admin(&user, WHAT)?;
    Ok(teams_page(&state, &user, TeamForm::default(), None).await?)
}

async fn create_from_form(
    State(state): State<AppState>,
    RemoteAddr(remote): RemoteAddr,
    SessionForm { user, form }: SessionForm<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    require_admin(&user, WHAT)?;
    let form = TeamForm::from_fields(&form);
    let result = async {
        validate_workspace_name(&form.name).map_err(|e| Error::invalid("name", e.replace("workspace", "team")))?;
        if state.backend.team_spec(&form.name).await.map_err(|e| backend_error(e, None))?.is_some() {
            return Err(Error::Conflict {
                field: Some("name"),
                message: format!("team {} exists already; edit it from the list", form.name),
            });
        }
        let spec = form.apply_to(TeamSpec::default())?;
        put_team(&state, &user, &form.name, spec, remote).await
    }
    .await;
    match result {
        Ok(()) => Ok(Redirect::to("/admin/teams").into_response()),
        Err(error) if is_form_error(&error) => Ok(teams_page(&state, &user, form, Some(error)).await?),
        Err(error) => Err(error.into()),
    }
}

async fn edit_page(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(team): Path<String>,
) -> Result<Response, PageError> {
    require_admin(&user, WHAT)?;
    let spec = team_spec(&state, &team).await?;
    Ok(team_page(&user, TeamForm::from_spec(&team, &spec), None))
}

async fn save_from_form(
    State(state): State<AppState>,
    RemoteAddr(remote): RemoteAddr,
    Path(team): Path<String>,
    SessionForm { user, form }: SessionForm<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    require_admin(&user, WHAT)?;
    let mut form = TeamForm::from_fields(&form);
    form.name = team.clone();
    let result = async {
        // The stored spec keeps what the form does not show (limits, network, placement).
        let spec = form.apply_to(team_spec(&state, &team).await?)?;
        put_team(&state, &user, &team, spec, remote).await
    }
    .await;
    match result {
        Ok(()) => Ok(Redirect::to("/admin/teams").into_response()),
        Err(error) if is_form_error(&error) && !matches!(error, Error::NotFound(_)) => {
            Ok(team_page(&user, form, Some(error)))
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn member_rows_pair_up_in_order_and_blank_rows_are_dropped() {
        let form = TeamForm::from_fields(&fields(&[
            ("name", "platform"),
            ("workspaces", " 5 "),
            ("member_user", "Ada@Example.com"),
            ("member_role", "lead"),
            ("member_expires", ""),
            ("member_user", ""),
            ("member_role", "engineer"),
            ("member_expires", ""),
            ("member_user", "carol@example.com"),
            ("member_role", "contractor"),
            ("member_expires", "2026-12-31"),
            ("allow_lead_access", "on"),
        ]));
        let spec = form.apply_to(TeamSpec::default()).unwrap();
        assert_eq!(spec.quota.workspaces, Some(5));
        assert!(spec.allow_lead_access);
        assert_eq!(spec.members.len(), 2);
        assert_eq!((spec.members[0].user.as_str(), spec.members[0].role), ("ada@example.com", TeamRole::Lead));
        assert_eq!(spec.members[1].expires_at, Some(Time("2026-12-31T00:00:00Z".parse().unwrap())));
        // And back: what the edit form shows.
        let shown = TeamForm::from_spec("platform", &spec);
        assert_eq!(shown.members[1].expires, "2026-12-31T00:00:00Z");
        assert_eq!(shown.workspaces, "5");
    }

    #[test]
    fn what_the_form_cannot_express_is_refused_with_the_field() {
        let refusal =
            |pairs: &[(&str, &str)]| TeamForm::from_fields(&fields(pairs)).apply_to(TeamSpec::default()).unwrap_err();
        let error = refusal(&[("workspaces", "five")]);
        assert_eq!(error.field(), Some("workspaces"));
        assert!(error.to_string().contains("whole number"), "{error}");
        let error = refusal(&[("member_user", "a@x.test"), ("member_role", "owner"), ("member_expires", "")]);
        assert_eq!(error.field(), Some("member_role"));
        let error = refusal(&[("member_user", "a@x.test"), ("member_role", "contractor"), ("member_expires", "soon")]);
        assert!(error.to_string().contains("\"soon\" is not a date"), "{error}");
    }

    #[test]
    fn saving_keeps_what_the_form_does_not_show() {
        let mut stored = TeamSpec::default();
        stored.limits.max_cpu = Some(Quantity("4".into()));
        stored.quota.pods = Some(7);
        let spec = TeamForm::from_fields(&fields(&[("cpu", "8")])).apply_to(stored).unwrap();
        assert_eq!(spec.limits.max_cpu, Some(Quantity("4".into())));
        assert_eq!(spec.quota.pods, Some(7));
        assert_eq!(spec.quota.cpu, Some(Quantity("8".into())));
    }
}
