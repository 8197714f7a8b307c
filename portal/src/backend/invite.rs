//! What accepting an invite does when a backend is configured ([`BackendInviteHook`]):
//!
//! 1. **The team**: the invitee becomes a member with the invite's role and `expiresAt` = the
//!    invite's access expiry, or, when already a member, gets that role and expiry (a lead stays
//!    as they are: an invite never demotes; see [`members_with`]). The backend changes the team
//!    whole or not at all, without losing a concurrent edit, and answers once its memberships
//!    show the change, so the invitee's first page is not refused.
//! 2. **The first workspace**, when the invite names a template: named after it (`<template>`,
//!    or `<template>-2`, ... when taken), owned by the invitee, created through [`Backend`] with
//!    all its checks. The invitee lands on its desktop page, which shows it starting.
//!
//! Each step is audited (actor: the invitee), successes and failures. A failure ends the hook
//! with an error; the invite is used and the account exists either way, and the invitee lands
//! on `/`.

use std::sync::Arc;

use deskpod_controller::api::{TeamMember, TeamRole as TeamObjectRole};
use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::views::{MAX_WORKSPACE_NAME_LEN, validate_workspace_name};
use super::{Backend, BackendError, NewWorkspace};
use crate::error::{Error, Result};
use crate::http::workspaces::desktop_path;
use crate::invite::InviteHook;
use crate::store::{AuditEntry, Invite, InviteRole, Outcome, Store, User};

/// How many names `<template>`, `<template>-2`, ... are tried for the first workspace.
const WORKSPACE_NAME_ATTEMPTS: u32 = 9;

/// The audit action of adding (or updating) an invitee in a Team.
pub const AUDIT_TEAM_MEMBER_ADD: &str = "team.member.add";
/// The audit action of creating a workspace (as the workspace pages record it).
pub const AUDIT_WORKSPACE_CREATE: &str = "workspace.create";

/// Adds the invitee to the team and starts their first workspace; see the module docs.
pub struct BackendInviteHook {
    backend: Arc<dyn Backend>,
    store: Arc<dyn Store>,
}

impl BackendInviteHook {
    /// A hook changing teams and workspaces through `backend`, auditing into `store`.
    pub fn new(backend: Arc<dyn Backend>, store: Arc<dyn Store>) -> Self {
        Self { backend, store }
    }

    async fn accepted(&self, invite: &Invite, user: &User) -> Result<String> {
        let member = invited_member(invite, user);
        let object = format!("{}/{}", invite.team, user.id);
        let added = self.backend.add_member(&invite.team, member).await.map_err(backend_failure);
        self.audit(user, AUDIT_TEAM_MEMBER_ADD, object, &added).await;
        added?;

        let Some(template) = invite.template.as_deref() else {
            return Ok("/".to_owned());
        };
        let created = self.create_first_workspace(&invite.team, template, &user.id).await;
        let object = match &created {
            Ok(name) => format!("{}/{name}", invite.team),
            Err(_) => format!("{}/{template}", invite.team),
        };
        self.audit(user, AUDIT_WORKSPACE_CREATE, object, &created).await;
        Ok(desktop_path(&invite.team, &created?))
    }

    /// Creates the invitee's workspace from `template` under the first free name; returns it.
    async fn create_first_workspace(&self, team: &str, template: &str, owner: &str) -> Result<String> {
        for attempt in 1..=WORKSPACE_NAME_ATTEMPTS {
            let name = workspace_name(template, attempt);
            let new = NewWorkspace {
                team: team.to_owned(),
                name: name.clone(),
                owner: owner.to_owned(),
                template: template.to_owned(),
            };
            match self.backend.create_workspace(new).await {
                Ok(_) => return Ok(name),
                Err(BackendError::Conflict(_)) => continue,
                Err(error) => return Err(backend_failure(error)),
            }
        }
        Err(Error::Conflict {
            field: Some("template"),
            message: format!(
                "team {team} already has workspaces named {} to {}",
                workspace_name(template, 1),
                workspace_name(template, WORKSPACE_NAME_ATTEMPTS)
            ),
        })
    }

    /// Records a step and how it ended; a failure to write is logged (as [`crate::audit::record`]).
    async fn audit<T>(&self, user: &User, action: &str, object: String, result: &Result<T>) {
        let outcome = if result.is_ok() { Outcome::Success } else { Outcome::Failure };
        if let Err(error) = result {
            tracing::error!(%error, action, object, "setting up an invitee failed");
        }
        tracing::info!(actor = %user.id, action, %object, outcome = outcome.as_str(), "audit");
        let entry = AuditEntry {
            at: Timestamp::now(),
            actor: user.id.clone(),
            action: action.to_owned(),
            object,
            outcome,
            remote_addr: None,
        };
        if let Err(error) = self.store.append_audit(entry).await {
            tracing::error!(%error, action, "could not write the audit log");
        }
    }
}

impl InviteHook for BackendInviteHook {
    fn invite_accepted<'a>(&'a self, invite: &'a Invite, user: &'a User) -> BoxFuture<'a, Result<String>> {
        Box::pin(self.accepted(invite, user))
    }
}

/// The Team member an accepted invite makes: the invite's role, its access expiry (whole
/// seconds, as the Team stores it).
pub fn invited_member(invite: &Invite, user: &User) -> TeamMember {
    TeamMember {
        user: user.id.clone(),
        role: match invite.role {
            InviteRole::Contractor => TeamObjectRole::Contractor,
            InviteRole::Engineer => TeamObjectRole::Engineer,
        },
        expires_at: invite.access_expires_at.and_then(|at| Timestamp::from_second(at.as_second()).ok()).map(Time),
    }
}

/// The Team's members once `invitee` is in: appended, or the entry with the same user id
/// (compared without regard to case) given the invitee's role and expiry. A lead stays as they
/// are. `None` when nothing changes.
pub fn members_with(members: &[TeamMember], invitee: &TeamMember) -> Option<Vec<TeamMember>> {
    let mut members = members.to_vec();
    match members.iter_mut().find(|m| m.user.eq_ignore_ascii_case(&invitee.user)) {
        Some(existing) if existing.role == TeamObjectRole::Lead => return None,
        Some(existing) if existing.role == invitee.role && existing.expires_at == invitee.expires_at => return None,
        Some(existing) => {
            existing.role = invitee.role;
            existing.expires_at = invitee.expires_at.clone();
        }
        None => members.push(invitee.clone()),
    }
    Some(members)
}

/// The `attempt`th name tried for a workspace from `template`: the template's name made a valid
/// workspace name (`.` → `-`, `ws-` before a leading digit, at most 40 characters), with `-2`,
/// `-3`, ... from the second attempt on.
pub fn workspace_name(template: &str, attempt: u32) -> String {
    let mut base: String =
        template.chars().map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' }).collect();
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base = format!("ws-{base}");
    }
    let suffix = if attempt <= 1 { String::new() } else { format!("-{attempt}") };
    base.truncate(MAX_WORKSPACE_NAME_LEN - suffix.len());
    let name = format!("{}{suffix}", base.trim_end_matches('-'));
    debug_assert!(validate_workspace_name(&name).is_ok(), "{name}");
    name
}

/// A backend's refusal as the portal's error.
fn backend_failure(error: BackendError) -> Error {
    match error {
        BackendError::NotFound(message) => Error::NotFound(message),
        BackendError::Conflict(message) => Error::Conflict { field: Some("name"), message },
        BackendError::Invalid(message) => Error::InvalidInput { field: Some("template"), message },
        BackendError::Unavailable(message) => Error::BackendUnavailable(message),
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn member(user: &str, role: TeamObjectRole, expires: Option<&str>) -> TeamMember {
        TeamMember { user: user.into(), role, expires_at: expires.map(|t| Time(t.parse().unwrap())) }
    }

    const END: &str = "2026-03-01T12:00:00Z";
    const LATER: &str = "2026-06-01T12:00:00Z";

    #[rstest]
    #[case::new_member_appended(
        vec![member("bob@x.test", TeamObjectRole::Lead, None)],
        Some(vec![member("bob@x.test", TeamObjectRole::Lead, None), member("carol@x.test", TeamObjectRole::Contractor, Some(END))]),
    )]
    #[case::already_there_unchanged(vec![member("carol@x.test", TeamObjectRole::Contractor, Some(END))], None)]
    #[case::expiry_updated(
        vec![member("Carol@X.test", TeamObjectRole::Contractor, Some(LATER))],
        Some(vec![member("Carol@X.test", TeamObjectRole::Contractor, Some(END))]),
    )]
    #[case::engineer_becomes_contractor(
        vec![member("carol@x.test", TeamObjectRole::Engineer, None)],
        Some(vec![member("carol@x.test", TeamObjectRole::Contractor, Some(END))]),
    )]
    #[case::lead_stays_lead(vec![member("carol@x.test", TeamObjectRole::Lead, None)], None)]
    fn the_invitee_joins_the_members(#[case] members: Vec<TeamMember>, #[case] expected: Option<Vec<TeamMember>>) {
        let invitee = member("carol@x.test", TeamObjectRole::Contractor, Some(END));
        assert_eq!(members_with(&members, &invitee), expected);
    }

    #[rstest]
    #[case::plain("python", 1, "python")]
    #[case::second("python", 2, "python-2")]
    #[case::dots("java.17", 1, "java-17")]
    #[case::leading_digit("3d-tools", 1, "ws-3d-tools")]
    #[case::long(&"a".repeat(63), 1, &"a".repeat(40))]
    #[case::long_with_suffix(&"a".repeat(63), 3, &format!("{}-3", "a".repeat(38)))]
    #[case::no_dash_before_suffix(&format!("{}-b", "a".repeat(37)), 2, &format!("{}-2", "a".repeat(37)))]
    fn workspace_names_follow_the_template(#[case] template: &str, #[case] attempt: u32, #[case] expected: &str) {
        assert_eq!(workspace_name(template, attempt), expected);
        assert!(validate_workspace_name(expected).is_ok());
    }

    #[test]
    fn expiry_is_kept_in_whole_seconds() {
        let invite = Invite {
            id: "i".into(),
            email: "carol@x.test".into(),
            team: "platform".into(),
            role: InviteRole::Contractor,
            template: None,
            access_expires_at: Some("2026-03-01T12:00:00.75Z".parse().unwrap()),
            link_expires_at: END.parse().unwrap(),
            created_by: "bob@x.test".into(),
            created_at: END.parse().unwrap(),
            used_at: None,
        };
        let user = User {
            id: "carol@x.test".into(),
            display_name: "Carol".into(),
            role: crate::store::GlobalRole::User,
            password_hash: None,
            created_at: END.parse().unwrap(),
            disabled: false,
            expires_at: None,
        };
        assert_eq!(invited_member(&invite, &user), member("carol@x.test", TeamObjectRole::Contractor, Some(END)));
    }
}
