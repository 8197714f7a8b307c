//! The single-host backend's records in the portal's SQLite database (tables `docker_*`, created
//! by the store's migrations): teams and templates as the controller's objects in JSON, and one
//! row per workspace with what its owner wants (`running`) and its VNC password.

use deskpod_controller::api::{Team, TeamSpec, WorkspaceTemplate, WorkspaceTemplateSpec};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::store::SqliteStore;

/// A workspace as the backend records it.
#[derive(Clone, PartialEq)]
pub struct WorkspaceRow {
    pub team: String,
    pub name: String,
    pub owner: String,
    pub template: String,
    /// What the owner wants.
    pub running: bool,
    /// Never logged: `Debug` leaves it out.
    pub vnc_password: String,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub last_input: Option<Timestamp>,
    /// Deletion was asked for; the container or the volume may still be there.
    pub deleting: bool,
    /// Why the last start failed.
    pub failure: Option<String>,
}

impl std::fmt::Debug for WorkspaceRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkspaceRow")
            .field("team", &self.team)
            .field("name", &self.name)
            .field("owner", &self.owner)
            .field("template", &self.template)
            .field("running", &self.running)
            .field("deleting", &self.deleting)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

const WORKSPACE_COLUMNS: &str =
    "team, name, owner, template, running, vnc_password, created_at, started_at, last_input, deleting, failure";

fn workspace_from_row(row: &Row<'_>) -> rusqlite::Result<WorkspaceRow> {
    let time = |i: usize| -> rusqlite::Result<Option<Timestamp>> {
        Ok(row.get::<_, Option<i64>>(i)?.and_then(|s| Timestamp::from_second(s).ok()))
    };
    Ok(WorkspaceRow {
        team: row.get(0)?,
        name: row.get(1)?,
        owner: row.get(2)?,
        template: row.get(3)?,
        running: row.get(4)?,
        vnc_password: row.get(5)?,
        created_at: time(6)?.unwrap_or(Timestamp::UNIX_EPOCH),
        started_at: time(7)?,
        last_input: time(8)?,
        deleting: row.get(9)?,
        failure: row.get(10)?,
    })
}

/// Which workspaces to list.
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter<'a> {
    pub team: Option<&'a str>,
    pub owner: Option<&'a str>,
}

/// The single-host records, on the portal's database.
#[derive(Clone)]
pub struct Db {
    store: SqliteStore,
}

fn from_json<T: DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

fn to_json<T: Serialize>(value: &T) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

impl Db {
    pub fn new(store: SqliteStore) -> Self {
        Self { store }
    }

    pub async fn teams(&self) -> Result<Vec<Team>> {
        self.store
            .run("reading teams", |conn| {
                let mut stmt = conn.prepare("SELECT object FROM docker_teams ORDER BY name")?;
                let rows = stmt.query_map([], |row| from_json(&row.get::<_, String>(0)?))?;
                rows.collect()
            })
            .await
    }

    pub async fn team(&self, name: &str) -> Result<Option<Team>> {
        let name = name.to_owned();
        self.store
            .run("reading a team", move |conn| {
                conn.query_row("SELECT object FROM docker_teams WHERE name = ?1", [name], |row| {
                    from_json(&row.get::<_, String>(0)?)
                })
                .optional()
            })
            .await
    }

    /// Creates or replaces a team.
    pub async fn put_team(&self, team: &Team) -> Result<()> {
        let name = team.metadata.name.clone().unwrap_or_default();
        let object = to_json_now(team)?;
        self.store
            .run("saving a team", move |conn| {
                conn.execute(
                    "INSERT INTO docker_teams (name, object) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET object = excluded.object",
                    params![name, object],
                )
                .map(drop)
            })
            .await
    }

    pub async fn templates(&self) -> Result<Vec<WorkspaceTemplate>> {
        self.store
            .run("reading templates", |conn| {
                let mut stmt = conn.prepare("SELECT object FROM docker_templates ORDER BY name")?;
                let rows = stmt.query_map([], |row| from_json(&row.get::<_, String>(0)?))?;
                rows.collect()
            })
            .await
    }

    pub async fn template(&self, name: &str) -> Result<Option<WorkspaceTemplate>> {
        let name = name.to_owned();
        self.store
            .run("reading a template", move |conn| {
                conn.query_row("SELECT object FROM docker_templates WHERE name = ?1", [name], |row| {
                    from_json(&row.get::<_, String>(0)?)
                })
                .optional()
            })
            .await
    }

    /// Creates or replaces a template.
    pub async fn put_template(&self, template: &WorkspaceTemplate) -> Result<()> {
        let name = template.metadata.name.clone().unwrap_or_default();
        let object = to_json_now(template)?;
        self.store
            .run("saving a template", move |conn| {
                conn.execute(
                    "INSERT INTO docker_templates (name, object) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET object = excluded.object",
                    params![name, object],
                )
                .map(drop)
            })
            .await
    }

    pub async fn workspaces(&self, filter: Filter<'_>) -> Result<Vec<WorkspaceRow>> {
        let team = filter.team.map(str::to_owned);
        let owner = filter.owner.map(str::to_owned);
        self.store
            .run("reading workspaces", move |conn| {
                let mut stmt = conn.prepare(&format!(
                    "SELECT {WORKSPACE_COLUMNS} FROM docker_workspaces
                     WHERE (?1 IS NULL OR team = ?1) AND (?2 IS NULL OR owner = ?2) ORDER BY team, name"
                ))?;
                let rows = stmt.query_map(params![team, owner], workspace_from_row)?;
                rows.collect()
            })
            .await
    }

    pub async fn workspace(&self, team: &str, name: &str) -> Result<Option<WorkspaceRow>> {
        let (team, name) = (team.to_owned(), name.to_owned());
        self.store
            .run("reading a workspace", move |conn| {
                conn.query_row(
                    &format!("SELECT {WORKSPACE_COLUMNS} FROM docker_workspaces WHERE team = ?1 AND name = ?2"),
                    params![team, name],
                    workspace_from_row,
                )
                .optional()
            })
            .await
    }

    /// Records a new workspace; a taken name is [`crate::Error::Conflict`].
    pub async fn insert_workspace(&self, row: WorkspaceRow) -> Result<()> {
        self.store
            .run("recording a workspace", move |conn| {
                conn.execute(
                    &format!(
                        "INSERT INTO docker_workspaces ({WORKSPACE_COLUMNS})
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                    ),
                    params![
                        row.team,
                        row.name,
                        row.owner,
                        row.template,
                        row.running,
                        row.vnc_password,
                        row.created_at.as_second(),
                        row.started_at.map(|t| t.as_second()),
                        row.last_input.map(|t| t.as_second()),
                        row.deleting,
                        row.failure,
                    ],
                )
                .map(drop)
            })
            .await
    }

    /// Sets what the owner wants; starting clears the last failure. Whether the row was there.
    pub async fn set_running(&self, team: &str, name: &str, running: bool, at: Timestamp) -> Result<bool> {
        let (team, name) = (team.to_owned(), name.to_owned());
        self.store
            .run("starting or stopping a workspace", move |conn| {
                let changed = if running {
                    conn.execute(
                        "UPDATE docker_workspaces SET running = 1, started_at = ?3, last_input = NULL, failure = NULL
                         WHERE team = ?1 AND name = ?2 AND NOT deleting",
                        params![team, name, at.as_second()],
                    )?
                } else {
                    conn.execute(
                        "UPDATE docker_workspaces SET running = 0 WHERE team = ?1 AND name = ?2",
                        params![team, name],
                    )?
                };
                Ok(changed > 0)
            })
            .await
    }

    pub async fn set_failure(&self, team: &str, name: &str, failure: Option<String>) -> Result<()> {
        let (team, name) = (team.to_owned(), name.to_owned());
        self.store
            .run("recording a failure", move |conn| {
                conn.execute(
                    "UPDATE docker_workspaces SET failure = ?3 WHERE team = ?1 AND name = ?2",
                    params![team, name, failure],
                )
                .map(drop)
            })
            .await
    }

    /// Marks a workspace for deletion; whether it was there.
    pub async fn set_deleting(&self, team: &str, name: &str) -> Result<bool> {
        let (team, name) = (team.to_owned(), name.to_owned());
        self.store
            .run("deleting a workspace", move |conn| {
                let changed = conn.execute(
                    "UPDATE docker_workspaces SET deleting = 1, running = 0 WHERE team = ?1 AND name = ?2",
                    params![team, name],
                )?;
                Ok(changed > 0)
            })
            .await
    }

    /// Forgets a workspace whose container and volume are gone.
    pub async fn remove_workspace(&self, team: &str, name: &str) -> Result<()> {
        let (team, name) = (team.to_owned(), name.to_owned());
        self.store
            .run("forgetting a workspace", move |conn| {
                conn.execute("DELETE FROM docker_workspaces WHERE team = ?1 AND name = ?2", params![team, name])
                    .map(drop)
            })
            .await
    }

    pub async fn record_input(&self, team: &str, name: &str, at: Timestamp) -> Result<bool> {
        let (team, name) = (team.to_owned(), name.to_owned());
        self.store
            .run("recording desktop input", move |conn| {
                let changed = conn.execute(
                    "UPDATE docker_workspaces SET last_input = ?3 WHERE team = ?1 AND name = ?2",
                    params![team, name, at.as_second()],
                )?;
                Ok(changed > 0)
            })
            .await
    }
}

/// JSON of an object, failing like a store error.
fn to_json_now<T: Serialize>(value: &T) -> Result<String> {
    to_json(value).map_err(|source| crate::Error::Store { step: "encoding an object", source: source.into() })
}

/// How [`Db::delete_template`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateDeletion {
    Deleted,
    NotFound,
    /// Workspaces (`team/name`) still use it; nothing was deleted.
    InUse(Vec<String>),
}

impl Db {
    /// Deletes a template unless a workspace (not being deleted) uses it: one transaction, so a
    /// workspace recorded meanwhile is either seen or not recorded yet.
    pub async fn delete_template(&self, name: &str) -> Result<TemplateDeletion> {
        let name = name.to_owned();
        self.store
            .run("deleting a template", move |conn| {
                let tx = conn.transaction()?;
                let users: Vec<String> = {
                    let mut stmt = tx.prepare(
                        "SELECT team || '/' || name FROM docker_workspaces
                         WHERE template = ?1 AND NOT deleting ORDER BY team, name",
                    )?;
                    let rows = stmt.query_map([&name], |row| row.get(0))?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                if !users.is_empty() {
                    return Ok(TemplateDeletion::InUse(users));
                }
                let deleted = tx.execute("DELETE FROM docker_templates WHERE name = ?1", [&name])?;
                tx.commit()?;
                Ok(if deleted > 0 { TemplateDeletion::Deleted } else { TemplateDeletion::NotFound })
            })
            .await
    }
}

/// Why a template cannot be deleted: the workspaces (`team/name`) that use it, the first few named.
pub fn in_use_message(template: &str, users: &[String]) -> String {
    const NAMED: usize = 5;
    let mut named = users.iter().take(NAMED).cloned().collect::<Vec<_>>().join(", ");
    if users.len() > NAMED {
        named.push_str(&format!(" and {} more", users.len() - NAMED));
    }
    format!("template {template} is still used by {} workspace(s) ({named}); delete them first", users.len())
}

/// What the API server refuses in a Team on Kubernetes (the CRD's schema and CEL rules), checked
/// before the single-host backend saves one: the message says what is wrong.
pub fn validate_team(name: &str, spec: &TeamSpec) -> std::result::Result<(), String> {
    validate_name("team", name)?;
    if let Some(display_name) = &spec.display_name {
        text("the display name", display_name, 1, 100)?;
    }
    let q = &spec.quota;
    let l = &spec.limits;
    for (what, value) in [
        ("the CPU quota", &q.cpu),
        ("the memory quota", &q.memory),
        ("the storage quota", &q.storage),
        ("the largest CPU limit", &l.max_cpu),
        ("the largest memory limit", &l.max_memory),
        ("the largest home size", &l.max_home_size),
        ("the default CPU request", &l.default_cpu_request),
        ("the default memory request", &l.default_memory_request),
    ] {
        quantity(what, value.as_ref())?;
    }
    for (what, value) in [
        ("the GPU quota", q.gpus),
        ("the pod quota", q.pods),
        ("the workspace quota", q.workspaces),
        ("the CI agent quota", q.ci_agents),
        ("the CI agent queue", q.ci_agent_queue),
    ] {
        if let Some(n) = value.filter(|n| *n < 0) {
            return Err(format!("{what} is {n}; it must be zero or more"));
        }
    }
    if spec.members.len() > 500 {
        return Err(format!("a team has at most 500 members, not {}", spec.members.len()));
    }
    let mut seen = std::collections::HashSet::new();
    for member in &spec.members {
        if !looks_like_email(&member.user) {
            return Err(format!("member {:?} is not an e-mail address such as ada@example.com", member.user));
        }
        if !seen.insert(member.user.to_ascii_lowercase()) {
            return Err(format!("{} is listed twice among the members", member.user));
        }
    }
    Ok(())
}

/// What the API server refuses in a WorkspaceTemplate on Kubernetes, and what a workspace made
/// from it needs ([`crate::template_rules`]), checked before the single-host backend saves one;
/// see [`validate_team`].
pub fn validate_template(name: &str, spec: &WorkspaceTemplateSpec) -> std::result::Result<(), String> {
    validate_name("template", name)?;
    crate::template_rules::check(spec).map_err(|refusal| refusal.message)
}

/// The controller's rule for Deskpod object names, worded for `what`.
fn validate_name(what: &str, name: &str) -> std::result::Result<(), String> {
    super::super::views::validate_workspace_name(name).map_err(|e| e.replace("workspace", what))
}

fn text(what: &str, value: &str, min: usize, max: usize) -> std::result::Result<(), String> {
    let chars = value.chars().count();
    if min > 0 && value.trim().is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if chars > max {
        return Err(format!("{what} is {chars} characters long; it may have at most {max}"));
    }
    Ok(())
}

fn quantity(what: &str, value: Option<&Quantity>) -> std::result::Result<(), String> {
    match value {
        Some(q) => deskpod_controller::quantity::parse_quantity(q).map(drop).map_err(|e| format!("{what}: {e}")),
        None => Ok(()),
    }
}

/// Whether `user` looks like an e-mail address: `local@domain`, both parts present, no spaces,
/// at most 253 characters (the CRD's limit).
pub fn looks_like_email(user: &str) -> bool {
    let Some((local, domain)) = user.split_once('@') else { return false };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && user.len() <= 253
        && !user.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod validation_tests {
    use deskpod_controller::api::{TeamMember, TeamQuota, TeamRole};
    use rstest::rstest;

    use super::*;

    fn template() -> WorkspaceTemplateSpec {
        serde_json::from_value(serde_json::json!({ "displayName": "Python", "image": "deskpod/python:latest" }))
            .unwrap()
    }

    #[rstest]
    #[case::fine("dev", |_: &mut WorkspaceTemplateSpec| {}, None)]
    #[case::bad_name("Dev", |_: &mut WorkspaceTemplateSpec| {}, Some("not a valid template name"))]
    #[case::blank_display_name("dev", |t: &mut WorkspaceTemplateSpec| t.display_name = " ".into(), Some("the display name must not be empty"))]
    #[case::no_image("dev", |t: &mut WorkspaceTemplateSpec| t.image = String::new(), Some("the image must not be empty"))]
    #[case::port_zero("dev", |t: &mut WorkspaceTemplateSpec| t.port = 0, Some("from 1 to 65535"))]
    #[case::port_too_high("dev", |t: &mut WorkspaceTemplateSpec| t.port = 65536, Some("from 1 to 65535"))]
    #[case::bad_cpu("dev", |t: &mut WorkspaceTemplateSpec| t.resources.cpu_limit = Some(Quantity("lots".into())), Some("the CPU limit: \"lots\" does not start with a number"))]
    #[case::negative_memory("dev", |t: &mut WorkspaceTemplateSpec| t.shm_size = Some(Quantity("-1Gi".into())), Some("the shared memory size: \"-1Gi\" is negative"))]
    #[case::bad_timeout("dev", |t: &mut WorkspaceTemplateSpec| t.idle_timeout = Some("2 hours".into()), Some("the idle timeout: \"2 hours\" is not a duration"))]
    #[case::good_timeout("dev", |t: &mut WorkspaceTemplateSpec| t.idle_timeout = Some("1h30m".into()), None)]
    fn templates(#[case] name: &str, #[case] change: fn(&mut WorkspaceTemplateSpec), #[case] refusal: Option<&str>) {
        let mut spec = template();
        change(&mut spec);
        match (validate_template(name, &spec), refusal) {
            (Ok(()), None) => {}
            (Err(found), Some(expected)) => assert!(found.contains(expected), "{found}"),
            (found, expected) => panic!("expected {expected:?}, got {found:?}"),
        }
    }

    fn member(user: &str) -> TeamMember {
        TeamMember { user: user.into(), role: TeamRole::Engineer, expires_at: None }
    }

    #[rstest]
    #[case::fine("platform", TeamSpec { members: vec![member("ada@example.com")], ..TeamSpec::default() }, None)]
    #[case::long_name(&"a".repeat(41), TeamSpec::default(), Some("a team name has at most 40"))]
    #[case::empty_display_name("platform", TeamSpec { display_name: Some(String::new()), ..TeamSpec::default() }, Some("the display name must not be empty"))]
    #[case::bad_memory("platform", TeamSpec { quota: TeamQuota { memory: Some(Quantity("16 GB".into())), ..TeamQuota::default() }, ..TeamSpec::default() }, Some("the memory quota: \"16 GB\" has an unknown suffix"))]
    #[case::negative_workspaces("platform", TeamSpec { quota: TeamQuota { workspaces: Some(-1), ..TeamQuota::default() }, ..TeamSpec::default() }, Some("the workspace quota is -1"))]
    #[case::not_an_email("platform", TeamSpec { members: vec![member("ada")], ..TeamSpec::default() }, Some("\"ada\" is not an e-mail address"))]
    #[case::twice("platform", TeamSpec { members: vec![member("ada@example.com"), member("Ada@example.com")], ..TeamSpec::default() }, Some("listed twice"))]
    fn teams(#[case] name: &str, #[case] spec: TeamSpec, #[case] refusal: Option<&str>) {
        match (validate_team(name, &spec), refusal) {
            (Ok(()), None) => {}
            (Err(found), Some(expected)) => assert!(found.contains(expected), "{found}"),
            (found, expected) => panic!("expected {expected:?}, got {found:?}"),
        }
    }
}

/// A CI agent as the backend records it.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRow {
    /// The team queue's order.
    pub seq: i64,
    pub team: String,
    pub name: String,
    pub owner: String,
    pub spec: deskpod_controller::api::CiAgentSpec,
    /// The image resolved at submission.
    pub image: String,
    pub phase: deskpod_controller::api::CiAgentPhase,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

/// What changes when an agent moves on; `None` keeps the recorded value.
#[derive(Clone, Debug, Default)]
pub struct AgentUpdate {
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

const AGENT_COLUMNS: &str =
    "seq, team, name, owner, spec, image, phase, exit_code, message, created_at, started_at, finished_at";

fn phase_text(phase: deskpod_controller::api::CiAgentPhase) -> String {
    serde_json::to_value(phase).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn agent_from_row(row: &Row<'_>) -> rusqlite::Result<AgentRow> {
    let time = |i: usize| -> rusqlite::Result<Option<Timestamp>> {
        Ok(row.get::<_, Option<i64>>(i)?.and_then(|s| Timestamp::from_second(s).ok()))
    };
    Ok(AgentRow {
        seq: row.get(0)?,
        team: row.get(1)?,
        name: row.get(2)?,
        owner: row.get(3)?,
        spec: from_json(&row.get::<_, String>(4)?)?,
        image: row.get(5)?,
        phase: from_json(&format!("{:?}", row.get::<_, String>(6)?))?,
        exit_code: row.get(7)?,
        message: row.get(8)?,
        created_at: time(9)?.unwrap_or(Timestamp::UNIX_EPOCH),
        started_at: time(10)?,
        finished_at: time(11)?,
    })
}

impl Db {
    /// Records a new agent, Queued, at the end of its team's queue; a taken name is
    /// [`crate::Error::Conflict`].
    pub async fn insert_agent(&self, agent: &AgentRow) -> Result<()> {
        let spec = to_json_now(&agent.spec)?;
        let (team, name, owner, image) =
            (agent.team.clone(), agent.name.clone(), agent.owner.clone(), agent.image.clone());
        let (phase, created_at) = (phase_text(agent.phase), agent.created_at.as_second());
        self.store
            .run("recording a CI agent", move |conn| {
                conn.execute(
                    "INSERT INTO docker_agents (team, name, owner, spec, image, phase, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![team, name, owner, spec, image, phase, created_at],
                )
                .map(drop)
            })
            .await
    }

    /// Agents, of one team or all, in queue order.
    pub async fn agents(&self, team: Option<&str>) -> Result<Vec<AgentRow>> {
        let team = team.map(str::to_owned);
        self.store
            .run("reading CI agents", move |conn| {
                let mut stmt = conn.prepare(&format!(
                    "SELECT {AGENT_COLUMNS} FROM docker_agents WHERE (?1 IS NULL OR team = ?1) ORDER BY seq"
                ))?;
                let rows = stmt.query_map(params![team], agent_from_row)?;
                rows.collect()
            })
            .await
    }

    pub async fn agent(&self, team: &str, name: &str) -> Result<Option<AgentRow>> {
        let (team, name) = (team.to_owned(), name.to_owned());
        self.store
            .run("reading a CI agent", move |conn| {
                conn.query_row(
                    &format!("SELECT {AGENT_COLUMNS} FROM docker_agents WHERE team = ?1 AND name = ?2"),
                    params![team, name],
                    agent_from_row,
                )
                .optional()
            })
            .await
    }

    /// Moves an agent to `phase` if it is in one of `from`; whether it was.
    pub async fn move_agent(
        &self,
        team: &str,
        name: &str,
        from: &[deskpod_controller::api::CiAgentPhase],
        phase: deskpod_controller::api::CiAgentPhase,
        update: AgentUpdate,
    ) -> Result<bool> {
        let (team, name) = (team.to_owned(), name.to_owned());
        let from: Vec<String> = from.iter().map(|p| phase_text(*p)).collect();
        let phase = phase_text(phase);
        self.store
            .run("updating a CI agent", move |conn| {
                let current: Option<String> = conn
                    .query_row(
                        "SELECT phase FROM docker_agents WHERE team = ?1 AND name = ?2",
                        params![team, name],
                        |r| r.get(0),
                    )
                    .optional()?;
                if !current.is_some_and(|c| from.contains(&c)) {
                    return Ok(false);
                }
                conn.execute(
                    "UPDATE docker_agents SET phase = ?3,
                         exit_code = COALESCE(?4, exit_code), message = COALESCE(?5, message),
                         started_at = COALESCE(?6, started_at), finished_at = COALESCE(?7, finished_at)
                     WHERE team = ?1 AND name = ?2",
                    params![
                        team,
                        name,
                        phase,
                        update.exit_code,
                        update.message,
                        update.started_at.map(|t| t.as_second()),
                        update.finished_at.map(|t| t.as_second()),
                    ],
                )?;
                Ok(true)
            })
            .await
    }

    pub async fn remove_agent(&self, team: &str, name: &str) -> Result<bool> {
        let (team, name) = (team.to_owned(), name.to_owned());
        self.store
            .run("removing a CI agent", move |conn| {
                conn.execute("DELETE FROM docker_agents WHERE team = ?1 AND name = ?2", params![team, name])
                    .map(|n| n > 0)
            })
            .await
    }
}
