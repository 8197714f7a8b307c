//! Whether a long-lived connection may go on: a desktop websocket ([`crate::http::desktop`]) or
//! the workspace event stream ([`crate::http::events`]) was allowed when it opened, and that is
//! re-checked while it lasts, so signing out, a disabled account, an ended or expired membership
//! and the session's own expiry close it too.
//!
//! [`Access::ended`] resolves when access ends: it re-reads the store and the backend every
//! [`RECHECK_EVERY`] (not an in-process signal, so a change made through another portal replica
//! counts as well) and wakes exactly when the session expires. What holds is decided by
//! [`credential_holds`] and [`authz::can_view_workspace`], both pure:
//!
//! - the session was not signed out and has not expired, or the API token is not revoked and not
//!   expired;
//! - the account still exists and is active ([`authz::account_is_active`]: not disabled, a
//!   contractor's account not past its end);
//! - for a desktop, the user may still open that workspace: the owner while an active member of
//!   the team (a membership's `expiresAt` counts), the team's leads and platform admins only when
//!   the team allows it — the rule the desktop routes apply when the connection opens.
//!
//! **Cost.** One check reads the user and the revoked-session list (or the user's tokens) from the
//! store and the user's memberships from the backend, which the Kubernetes backend keeps in a
//! watch cache; the team (for `allowLeadAccess`) is read only when the user is not the owner.
//!
//! **When the store or backend fails.** A failed check keeps the connection (a blip must not drop
//! every desktop), logged once; after [`FAILED_CHECKS_TOLERATED`] failures in a row (about ten
//! seconds) access counts as unconfirmed and the connection is closed, because a revocation made
//! meanwhile could not be seen.

use std::time::Duration;

use jiff::Timestamp;

use super::{Auth, CurrentUser};
use crate::authz::{self, account_is_active};
use crate::state::AppState;
use crate::store::User;

/// How often a connection's access is re-checked.
pub const RECHECK_EVERY: Duration = Duration::from_millis(500);

/// How many checks in a row may fail (store or backend unreachable) before the connection is
/// closed as [`AccessEnded::Unconfirmed`].
pub const FAILED_CHECKS_TOLERATED: u32 = 20;

/// Why a connection's access ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessEnded {
    /// The session was signed out, or the API token revoked.
    SignedOut,
    /// The session or API token expired.
    Expired,
    /// The account was disabled or deleted, or a contractor's account ended.
    AccountInactive,
    /// The user may no longer open this workspace (membership removed or expired, role changed).
    NotAllowed,
    /// The store or backend failed for [`FAILED_CHECKS_TOLERATED`] checks in a row.
    Unconfirmed,
}

impl AccessEnded {
    /// What the user is told (the websocket close reason); no secrets, no user names.
    pub fn reason(self) -> &'static str {
        match self {
            Self::SignedOut => "access ended: signed out",
            Self::Expired => "access ended: the session expired",
            Self::AccountInactive => "access ended: the account is disabled",
            Self::NotAllowed => "access ended: no longer allowed to open this workspace",
            Self::Unconfirmed => "access could not be confirmed",
        }
    }

    /// The websocket close code: 1008 (policy violation) when access ended, 1011 (internal
    /// error) when it could not be confirmed.
    pub fn close_code(self) -> u16 {
        match self {
            Self::Unconfirmed => 1011,
            _ => 1008,
        }
    }
}

/// What the store says about the connection's credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A session cookie: whether it was signed out, and when it expires.
    Session { revoked: bool, expires_at: Timestamp },
    /// An API token: whether it is still listed and usable (not revoked, not expired).
    Token { usable: bool },
}

/// Whether the credential still holds for `account` (as the store has it now) at `now`.
pub fn credential_holds(account: Option<&User>, credential: Credential, now: Timestamp) -> Result<(), AccessEnded> {
    match credential {
        Credential::Session { expires_at, .. } if now >= expires_at => return Err(AccessEnded::Expired),
        Credential::Session { revoked: true, .. } | Credential::Token { usable: false } => {
            return Err(AccessEnded::SignedOut);
        }
        _ => {}
    }
    match account {
        Some(account) if account_is_active(account, now) => Ok(()),
        _ => Err(AccessEnded::AccountInactive),
    }
}

/// The workspace a desktop connection is to.
#[derive(Clone, Debug)]
struct Workspace {
    team: String,
    owner: String,
}

/// What a connection was opened with, to re-check while it lasts.
#[derive(Clone)]
pub struct Access {
    state: AppState,
    user: CurrentUser,
    workspace: Option<Workspace>,
}

impl Access {
    /// The access of a connection that needs only its session or token (the event stream).
    pub fn signed_in(state: AppState, user: CurrentUser) -> Self {
        Self { state, user, workspace: None }
    }

    /// The access of a desktop connection to the workspace in `team` that `owner` owns.
    pub fn to_workspace(state: AppState, user: CurrentUser, team: &str, owner: &str) -> Self {
        Self { state, user, workspace: Some(Workspace { team: team.to_owned(), owner: owner.to_owned() }) }
    }

    /// The signed-in user's id.
    pub fn user_id(&self) -> &str {
        self.user.id()
    }

    /// When the session expires (API tokens: their check says so).
    fn session_expires_at(&self) -> Option<Timestamp> {
        match &self.user.auth {
            Auth::Session { claims, .. } => Some(claims.expires_at()),
            Auth::Token(_) => None,
        }
    }

    /// One check against the store and the backend; `Err` with what failed when it could not
    /// be made.
    pub async fn check(&self, now: Timestamp) -> Result<Result<(), AccessEnded>, String> {
        let store = self.state.store.as_ref();
        let id = self.user.id();
        let account = store.user(id).await.map_err(|e| e.to_string())?;
        let credential = match &self.user.auth {
            Auth::Session { claims, .. } => Credential::Session {
                revoked: store.is_session_revoked(&claims.jti).await.map_err(|e| e.to_string())?,
                expires_at: claims.expires_at(),
            },
            Auth::Token(token) => {
                let tokens = store.tokens_of(id).await.map_err(|e| e.to_string())?;
                Credential::Token { usable: tokens.iter().any(|t| t.id == token.id && t.is_usable_at(now)) }
            }
        };
        if let Err(ended) = credential_holds(account.as_ref(), credential, now) {
            return Ok(Err(ended));
        }
        let (Some(workspace), Some(account)) = (&self.workspace, account) else { return Ok(Ok(())) };
        let memberships = self.state.memberships_of(id).await.map_err(|e| e.to_string())?;
        let (team, owner) = (workspace.team.as_str(), workspace.owner.as_str());
        // The owner's access does not depend on the team's allowLeadAccess; read it only if needed.
        if authz::can_view_workspace(&account, &memberships, owner, team, false, now) {
            return Ok(Ok(()));
        }
        let leads_may_connect =
            self.state.backend.team(team).await.map_err(|e| e.to_string())?.is_some_and(|t| t.leads_may_connect);
        if authz::can_view_workspace(&account, &memberships, owner, team, leads_may_connect, now) {
            Ok(Ok(()))
        } else {
            Ok(Err(AccessEnded::NotAllowed))
        }
    }

    /// Resolves when access ends: checks every [`RECHECK_EVERY`], and at once when the session
    /// expires. Cancel-safe (drop it to stop checking).
    pub async fn ended(self) -> AccessEnded {
        let mut failures = 0;
        loop {
            let mut wait = RECHECK_EVERY;
            if let Some(expires_at) = self.session_expires_at() {
                let left = Timestamp::now().duration_until(expires_at);
                // A little past the second, so the check sees it passed.
                let left = Duration::try_from(left).unwrap_or_default() + Duration::from_millis(5);
                wait = wait.min(left);
            }
            tokio::time::sleep(wait).await;
            match self.check(Timestamp::now()).await {
                Ok(Ok(())) => {
                    if failures > 0 {
                        tracing::info!(user = %self.user_id(), "re-checking access works again");
                    }
                    failures = 0;
                }
                Ok(Err(ended)) => return ended,
                Err(error) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(user = %self.user_id(), %error, "could not re-check access; keeping the connection for now");
                    }
                    if failures >= FAILED_CHECKS_TOLERATED {
                        tracing::warn!(user = %self.user_id(), %error, failures, "access could not be confirmed; closing the connection");
                        return AccessEnded::Unconfirmed;
                    }
                }
            }
        }
    }
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

    fn account(disabled: bool, expires_in: Option<i64>) -> User {
        User {
            id: "alice@example.com".into(),
            display_name: "Alice".into(),
            role: GlobalRole::User,
            password_hash: None,
            created_at: now(),
            disabled,
            expires_at: expires_in.map(|s| now() + SignedDuration::from_secs(s)),
        }
    }

    fn session(revoked: bool, expires_in: i64) -> Credential {
        Credential::Session { revoked, expires_at: now() + SignedDuration::from_secs(expires_in) }
    }

    #[rstest]
    #[case::holds(Some(account(false, None)), session(false, 60), Ok(()))]
    #[case::contractor_before_the_end(Some(account(false, Some(1))), session(false, 60), Ok(()))]
    #[case::signed_out(Some(account(false, None)), session(true, 60), Err(AccessEnded::SignedOut))]
    #[case::session_expired_this_second(Some(account(false, None)), session(false, 0), Err(AccessEnded::Expired))]
    #[case::expired_wins_over_signed_out(Some(account(false, None)), session(true, -1), Err(AccessEnded::Expired))]
    #[case::disabled(Some(account(true, None)), session(false, 60), Err(AccessEnded::AccountInactive))]
    #[case::contractor_account_ended(
        Some(account(false, Some(0))),
        session(false, 60),
        Err(AccessEnded::AccountInactive)
    )]
    #[case::deleted(None, session(false, 60), Err(AccessEnded::AccountInactive))]
    #[case::token_usable(Some(account(false, None)), Credential::Token { usable: true }, Ok(()))]
    #[case::token_revoked(Some(account(false, None)), Credential::Token { usable: false }, Err(AccessEnded::SignedOut))]
    #[case::token_of_disabled(Some(account(true, None)), Credential::Token { usable: true }, Err(AccessEnded::AccountInactive))]
    fn a_credential_holds_while_it_and_its_account_are_live(
        #[case] account: Option<User>,
        #[case] credential: Credential,
        #[case] expected: Result<(), AccessEnded>,
    ) {
        assert_eq!(credential_holds(account.as_ref(), credential, now()), expected);
    }

    #[test]
    fn reasons_carry_no_secret_and_fit_a_close_frame() {
        for ended in [
            AccessEnded::SignedOut,
            AccessEnded::Expired,
            AccessEnded::AccountInactive,
            AccessEnded::NotAllowed,
            AccessEnded::Unconfirmed,
        ] {
            // A close frame's reason may be at most 123 bytes.
            assert!(ended.reason().len() <= 123, "{ended:?}");
            assert!((1000..5000).contains(&ended.close_code()));
        }
    }
}
