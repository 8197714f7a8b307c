//! Who may do what: pure decisions over a [`User`], their team [`Membership`]s and the time.
//!
//! Team roles are not stored by the portal. They live in Kubernetes Team objects
//! (`spec.members[]`: `user`, `role`, `expiresAt`) or the single-host backend, and reach these
//! functions as [`Membership`]s from a [`crate::MembershipSource`]. Nothing here does I/O, so every
//! rule is table-tested below; handlers fetch the inputs and call these next to where they act.
//!
//! Two expiries apply: a user's own `expires_at` (a contractor's account) ends everything, and a
//! membership's `expires_at` ends that membership only.

use jiff::Timestamp;
use serde::Serialize;

use crate::store::User;

/// A member's role in a team, as the Team object says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TeamRole {
    /// Manages members and invites; may open members' desktops if the team allows it.
    Lead,
    /// Creates and uses their own workspaces.
    Engineer,
    /// Like an engineer, until their membership expires.
    Contractor,
}

/// A user's membership of one team.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Membership {
    /// The Team's name.
    pub team: String,
    pub role: TeamRole,
    /// When the membership ends (contractors).
    pub expires_at: Option<Timestamp>,
}

impl Membership {
    /// Whether the membership still counts at `now`.
    pub fn is_active_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|end| now < end)
    }
}

/// Whether the account may be used at all: not disabled and, for contractors, not past its
/// expiry. An inactive user is signed out and refused everywhere.
pub fn account_is_active(user: &User, now: Timestamp) -> bool {
    !user.disabled && user.expires_at.is_none_or(|end| now < end)
}

/// The user's role in `team` at `now`, if they are an active member.
pub fn active_role(memberships: &[Membership], team: &str, now: Timestamp) -> Option<TeamRole> {
    memberships.iter().find(|m| m.team == team && m.is_active_at(now)).map(|m| m.role)
}

/// Whether `user` may see and connect to the workspace `workspace_owner` owns in `team`: the
/// owner while a member of the team (admins always), and, only if the team allows it, the
/// team's leads and platform admins.
pub fn can_view_workspace(
    user: &User,
    memberships: &[Membership],
    workspace_owner: &str,
    team: &str,
    team_allows_leads: bool,
    now: Timestamp,
) -> bool {
    if !account_is_active(user, now) {
        return false;
    }
    let role = active_role(memberships, team, now);
    if user.id == workspace_owner && (role.is_some() || user.is_admin()) {
        return true;
    }
    team_allows_leads && (user.is_admin() || role == Some(TeamRole::Lead))
}

/// Whether `user` may create a workspace of their own in `team`: any active member, or an admin.
pub fn can_create_workspace(user: &User, memberships: &[Membership], team: &str, now: Timestamp) -> bool {
    account_is_active(user, now) && (user.is_admin() || active_role(memberships, team, now).is_some())
}

/// Whether `user` may invite people to `team`: its active leads, and platform admins.
pub fn can_invite(user: &User, memberships: &[Membership], team: &str, now: Timestamp) -> bool {
    account_is_active(user, now) && (user.is_admin() || active_role(memberships, team, now) == Some(TeamRole::Lead))
}

/// Whether `user` may read the audit log: active platform admins.
pub fn can_read_audit(user: &User, now: Timestamp) -> bool {
    account_is_active(user, now) && user.is_admin()
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;
    use rstest::rstest;

    use super::*;
    use crate::store::GlobalRole;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    /// Who is asking, by a short name the tables use.
    fn user(who: &str) -> User {
        let (role, disabled, expires_at) = match who {
            "admin" => (GlobalRole::Admin, false, None),
            "disabled" => (GlobalRole::User, true, None),
            "disabled-admin" => (GlobalRole::Admin, true, None),
            "expired" => (GlobalRole::User, false, Some(now() - SignedDuration::from_secs(1))),
            "expired-admin" => (GlobalRole::Admin, false, Some(now() - SignedDuration::from_secs(1))),
            "contractor" => (GlobalRole::User, false, Some(now() + SignedDuration::from_hours(1))),
            _ => (GlobalRole::User, false, None),
        };
        User {
            id: format!("{who}@example.com"),
            display_name: who.into(),
            role,
            password_hash: None,
            created_at: now(),
            disabled,
            expires_at,
        }
    }

    /// A membership of team `platform`, by a short name the tables use.
    fn memberships(of: &str) -> Vec<Membership> {
        let member = |role, expires_at| vec![Membership { team: "platform".into(), role, expires_at }];
        match of {
            "lead" => member(TeamRole::Lead, None),
            "engineer" => member(TeamRole::Engineer, None),
            "contractor" => member(TeamRole::Contractor, Some(now() + SignedDuration::from_hours(1))),
            "expired-contractor" => member(TeamRole::Contractor, Some(now())),
            "expired-lead" => member(TeamRole::Lead, Some(now() - SignedDuration::from_hours(1))),
            "lead-elsewhere" => vec![Membership { team: "data".into(), role: TeamRole::Lead, expires_at: None }],
            "none" => vec![],
            other => panic!("no membership fixture {other}"),
        }
    }

    #[rstest]
    // The owner, while a member.
    #[case::owner_engineer("alice", "engineer", "alice", false, true)]
    #[case::owner_contractor("contractor", "contractor", "contractor", false, true)]
    #[case::owner_membership_expired("contractor", "expired-contractor", "contractor", false, false)]
    #[case::owner_no_longer_member("alice", "none", "alice", false, false)]
    #[case::owner_member_of_other_team("alice", "lead-elsewhere", "alice", false, false)]
    #[case::owner_account_expired("expired", "contractor", "expired", false, false)]
    #[case::owner_disabled("disabled", "engineer", "disabled", true, false)]
    #[case::admin_owner_without_membership("admin", "none", "admin", false, true)]
    // Someone else's workspace.
    #[case::other_engineer("bob", "engineer", "alice", true, false)]
    #[case::lead_team_forbids("lead", "lead", "alice", false, false)]
    #[case::lead_team_allows("lead", "lead", "alice", true, true)]
    #[case::expired_lead_team_allows("lead", "expired-lead", "alice", true, false)]
    #[case::lead_of_other_team("lead", "lead-elsewhere", "alice", true, false)]
    #[case::admin_team_forbids("admin", "none", "alice", false, false)]
    #[case::admin_team_allows("admin", "none", "alice", true, true)]
    #[case::disabled_admin_team_allows("disabled-admin", "none", "alice", true, false)]
    #[case::expired_admin_team_allows("expired-admin", "none", "alice", true, false)]
    fn viewing_a_workspace(
        #[case] who: &str,
        #[case] membership: &str,
        #[case] owner: &str,
        #[case] team_allows_leads: bool,
        #[case] allowed: bool,
    ) {
        let owner = format!("{owner}@example.com");
        let decision =
            can_view_workspace(&user(who), &memberships(membership), &owner, "platform", team_allows_leads, now());
        assert_eq!(decision, allowed);
    }

    #[rstest]
    #[case::engineer("alice", "engineer", true)]
    #[case::lead("lead", "lead", true)]
    #[case::contractor("contractor", "contractor", true)]
    #[case::contractor_membership_expired("contractor", "expired-contractor", false)]
    #[case::contractor_account_expired("expired", "contractor", false)]
    #[case::not_a_member("alice", "none", false)]
    #[case::member_of_other_team("alice", "lead-elsewhere", false)]
    #[case::admin("admin", "none", true)]
    #[case::disabled("disabled", "engineer", false)]
    fn creating_a_workspace(#[case] who: &str, #[case] membership: &str, #[case] allowed: bool) {
        assert_eq!(can_create_workspace(&user(who), &memberships(membership), "platform", now()), allowed);
    }

    #[rstest]
    #[case::lead("lead", "lead", true)]
    #[case::lead_membership_expired("lead", "expired-lead", false)]
    #[case::lead_of_other_team("lead", "lead-elsewhere", false)]
    #[case::engineer("alice", "engineer", false)]
    #[case::contractor("contractor", "contractor", false)]
    #[case::not_a_member("alice", "none", false)]
    #[case::admin("admin", "none", true)]
    #[case::disabled_lead("disabled", "lead", false)]
    #[case::expired_admin("expired-admin", "none", false)]
    fn inviting_to_a_team(#[case] who: &str, #[case] membership: &str, #[case] allowed: bool) {
        assert_eq!(can_invite(&user(who), &memberships(membership), "platform", now()), allowed);
    }

    #[rstest]
    #[case::admin("admin", true)]
    #[case::user("alice", false)]
    #[case::disabled_admin("disabled-admin", false)]
    #[case::expired_admin("expired-admin", false)]
    fn reading_the_audit_log(#[case] who: &str, #[case] allowed: bool) {
        assert_eq!(can_read_audit(&user(who), now()), allowed);
    }

    #[rstest]
    #[case::active("alice", true)]
    #[case::contractor_before_expiry("contractor", true)]
    #[case::contractor_after_expiry("expired", false)]
    #[case::disabled("disabled", false)]
    fn an_account_is_active_until_disabled_or_expired(#[case] who: &str, #[case] active: bool) {
        assert_eq!(account_is_active(&user(who), now()), active);
    }

    #[test]
    fn a_membership_ends_exactly_at_its_expiry() {
        let ends = Membership { team: "platform".into(), role: TeamRole::Contractor, expires_at: Some(now()) };
        assert!(ends.is_active_at(now() - SignedDuration::from_secs(1)));
        assert!(!ends.is_active_at(now()));
        assert_eq!(active_role(&[ends], "platform", now()), None);
    }
}
