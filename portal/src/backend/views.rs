//! How Deskpod's objects look to users, whichever backend keeps them. Both backends hold teams
//! and templates as the controller's types ([`Team`], [`WorkspaceTemplate`]): the Kubernetes
//! backend reads them from the API server, the single-host backend from its SQLite database.

use deskpod_controller::api::{DesktopProtocol, Team, TeamRole as TeamObjectRole, WorkspaceTemplate};
use kube::ResourceExt;

use super::{MemberView, Protocol, QuotaUse, TeamView, TemplateView};
use crate::authz::{Membership, TeamRole};

/// The longest workspace name: the controller's rule for every Deskpod object name.
pub const MAX_WORKSPACE_NAME_LEN: usize = 40;

/// Whether `name` may name a workspace; the message says what is wrong. The controller's rule for
/// every Deskpod object: a DNS label of at most 40 characters (derived names such as
/// `<ws>-desktop` must stay valid).
pub fn validate_workspace_name(name: &str) -> Result<(), String> {
    const RULE: &str = "lowercase letters, digits and '-', starting with a letter and not ending with '-'";
    if name.is_empty() {
        return Err("a workspace needs a name".into());
    }
    if name.chars().count() > MAX_WORKSPACE_NAME_LEN {
        return Err(format!(
            "the name is {} characters long; a workspace name has at most {MAX_WORKSPACE_NAME_LEN}",
            name.chars().count()
        ));
    }
    let bytes = name.as_bytes();
    let allowed = bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if !allowed || !bytes[0].is_ascii_lowercase() || bytes[bytes.len() - 1] == b'-' {
        return Err(format!("{name:?} is not a valid workspace name: use {RULE}"));
    }
    Ok(())
}

pub fn template_view(template: &WorkspaceTemplate) -> TemplateView {
    let spec = &template.spec;
    let resources = [
        ("cpuRequest", &spec.resources.cpu_request),
        ("cpuLimit", &spec.resources.cpu_limit),
        ("memoryRequest", &spec.resources.memory_request),
        ("memoryLimit", &spec.resources.memory_limit),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.as_ref().map(|q| (key.to_owned(), q.0.clone())))
    .collect();
    TemplateView {
        name: template.name_any(),
        display_name: spec.display_name.clone(),
        description: spec.description.clone(),
        protocol: match spec.protocol {
            DesktopProtocol::Novnc => Protocol::Novnc,
            DesktopProtocol::Kasm => Protocol::Kasm,
        },
        resources,
        home_size: spec.home_size.as_ref().map(|q| q.0.clone()),
    }
}

pub fn team_view(team: &Team) -> TeamView {
    let status = team.status.clone().unwrap_or_default();
    let quota = status
        .quota_hard
        .iter()
        .map(|(key, hard)| {
            let used = status.quota_used.get(key).map_or_else(|| "0".to_owned(), |q| q.0.clone());
            (key.clone(), QuotaUse { hard: hard.0.clone(), used })
        })
        .collect();
    let members = team
        .spec
        .members
        .iter()
        .map(|m| MemberView {
            user: m.user.clone(),
            role: role(m.role),
            expires_at: m.expires_at.as_ref().map(|t| t.0),
        })
        .collect();
    TeamView {
        name: team.name_any(),
        quota,
        leads_may_connect: team.spec.allow_lead_access,
        members,
        cluster: team.spec.placement.as_ref().map(|p| p.cluster.clone()),
    }
}

pub fn role(role: TeamObjectRole) -> TeamRole {
    match role {
        TeamObjectRole::Lead => TeamRole::Lead,
        TeamObjectRole::Engineer => TeamRole::Engineer,
        TeamObjectRole::Contractor => TeamRole::Contractor,
    }
}

/// The memberships of `user` in `teams` (user ids compared without regard to case).
pub fn memberships_in<'a>(teams: impl IntoIterator<Item = &'a Team>, user: &str) -> Vec<Membership> {
    let mut found: Vec<Membership> = teams
        .into_iter()
        .flat_map(|team| {
            team.spec.members.iter().filter(|m| m.user.eq_ignore_ascii_case(user)).map(|m| Membership {
                team: team.name_any(),
                role: role(m.role),
                expires_at: m.expires_at.as_ref().map(|t| t.0),
            })
        })
        .collect();
    found.sort_by(|a, b| a.team.cmp(&b.team));
    found
}
