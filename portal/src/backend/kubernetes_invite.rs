//! What accepting an invite does on the Kubernetes backend ([`KubernetesInviteHook`]):
//!
//! 1. **The Team**: the invitee becomes a member with the invite's role and `expiresAt` = the
//!    invite's access expiry, or, when already a member, gets that role and expiry (a lead stays
//!    as they are: an invite never demotes). One JSON patch of `spec.members`, guarded by the
//!    Team's `resourceVersion` and retried on conflict, so a concurrent edit is never lost and the
//!    Team is changed whole or not at all. The hook then waits (briefly) until the backend's
//!    membership cache has the change, so the invitee's first page is not refused.
//! 2. **The first workspace**, when the invite names a template: named after it (`<template>`,
//!    or `<template>-2`, ... when taken), owned by the invitee, created through [`Backend`] with
//!    all its checks. The invitee lands on its desktop page, which shows it starting.
//!
//! Each step is audited (actor: the invitee), successes and failures. A failure ends the hook
//! with an error; the invite is used and the account exists either way, and the invitee lands
//! on `/`.

use std::sync::Arc;
use std::time::Duration;

use deskpod_controller::api::{Team, TeamMember, TeamRole as TeamObjectRole};
use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::kubernetes::{FIELD_MANAGER, MAX_WORKSPACE_NAME_LEN, memberships_in, validate_workspace_name};
use super::{Backend, BackendError, NewWorkspace};
use crate::error::{Error, Result};
use crate::http::workspaces::desktop_path;
use crate::invite::InviteHook;
use crate::store::{AuditEntry, Invite, InviteRole, Outcome, Store, User};

/// How often the Team patch is tried when someone else changes the Team at the same moment.
const TEAM_PATCH_ATTEMPTS: u32 = 5;
/// How many names `<template>`, `<template>-2`, ... are tried for the first workspace.
const WORKSPACE_NAME_ATTEMPTS: u32 = 9;
/// How long the hook waits for the membership cache to see the invitee.
const CACHE_WAIT: Duration = Duration::from_secs(10);

/// The audit action of adding (or updating) an invitee in a Team.
pub const AUDIT_TEAM_MEMBER_ADD: &str = "team.member.add";
/// The audit action of creating a workspace (as the workspace pages record it).
pub const AUDIT_WORKSPACE_CREATE: &str = "workspace.create";

/// Adds the invitee to the Team and starts their first workspace; see the module docs.
pub struct KubernetesInviteHook {
    client: Client,
    backend: Arc<dyn Backend>,
    store: Arc<dyn Store>,
}

impl KubernetesInviteHook {
    /// A hook writing Teams through `client` and workspaces through `backend` (whose membership
    /// cache it waits for), auditing into `store`.
    pub fn new(client: Client, backend: Arc<dyn Backend>, store: Arc<dyn Store>) -> Self {
        Self { client, backend, store }
    }

    async fn accepted(&self, invite: &Invite, user: &User) -> Result<String> {
        let member = invited_member(invite, user);
        let object = format!("{}/{}", invite.team, user.id);
        let team = self.add_member(&invite.team, &member).await;
        self.audit(user, AUDIT_TEAM_MEMBER_ADD, object, &team).await;
        let team = team?;
        self.wait_until_cached(&team, &user.id).await;

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

    /// Puts `member` into the Team's `spec.members` (one guarded JSON patch, retried on
    /// conflict); returns the Team as it now is.
    async fn add_member(&self, team: &str, member: &TeamMember) -> Result<Team> {
        let api = Api::<Team>::all(self.client.clone());
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
        for _ in 0..TEAM_PATCH_ATTEMPTS {
            let current = api
                .get_opt(team)
                .await
                .map_err(|e| kube_failure("reading the team", e))?
                .ok_or_else(|| Error::NotFound(format!("team {team} does not exist; ask an admin to create it")))?;
            let Some(members) = members_with(&current.spec.members, member) else {
                return Ok(current);
            };
            let patch = members_patch(&current.resource_version().unwrap_or_default(), &members)?;
            match api.patch(team, &params, &patch).await {
                Ok(patched) => return Ok(patched),
                Err(kube::Error::Api(status)) if status.is_conflict() => {
                    tracing::debug!(team, "the team changed while adding a member; retrying");
                }
                Err(e) => return Err(kube_failure("adding the invitee to the team", e)),
            }
        }
        Err(Error::BackendUnavailable(format!(
            "team {team} kept changing; adding the invitee failed {TEAM_PATCH_ATTEMPTS} times"
        )))
    }

    /// Waits until the backend's membership cache shows `user` in `team` as the patched Team
    /// does, for at most [`CACHE_WAIT`]; logs and goes on otherwise.
    async fn wait_until_cached(&self, team: &Team, user: &str) {
        let expected = memberships_in([team], user);
        let deadline = tokio::time::Instant::now() + CACHE_WAIT;
        loop {
            match self.backend.memberships(user).await {
                Ok(found) if expected.iter().all(|m| found.contains(m)) => return,
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "reading memberships failed"),
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(team = %team.name_any(), user, "the membership cache has not seen the invitee yet");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
                Err(error) => return Err(workspace_failure(error)),
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

impl InviteHook for KubernetesInviteHook {
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

/// A JSON patch setting `spec.members`, applied only if the Team still has `resource_version`
/// (the API server answers 409 Conflict otherwise).
pub fn members_patch(resource_version: &str, members: &[TeamMember]) -> Result<Patch<()>> {
    let ops = json!([
        { "op": "replace", "path": "/metadata/resourceVersion", "value": resource_version },
        { "op": "add", "path": "/spec/members", "value": members },
    ]);
    let patch = serde_json::from_value(ops)
        .map_err(|e| Error::BackendUnavailable(format!("building the team patch failed: {e}")))?;
    Ok(Patch::Json(patch))
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

/// An API failure: logged in full, answered in general.
fn kube_failure(what: &str, error: kube::Error) -> Error {
    tracing::error!(%error, "Kubernetes API: {what} failed");
    Error::BackendUnavailable(format!("the Kubernetes API failed while {what}"))
}

fn workspace_failure(error: BackendError) -> Error {
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

    #[test]
    fn the_patch_is_guarded_by_the_resource_version() {
        let members = [member("carol@x.test", TeamObjectRole::Contractor, Some(END))];
        let Patch::Json(patch) = members_patch("4711", &members).unwrap() else { panic!("not a JSON patch") };
        assert_eq!(
            serde_json::to_value(patch).unwrap(),
            json!([
                { "op": "replace", "path": "/metadata/resourceVersion", "value": "4711" },
                { "op": "add", "path": "/spec/members", "value": [
                    { "user": "carol@x.test", "role": "contractor", "expiresAt": END }
                ] },
            ])
        );
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
