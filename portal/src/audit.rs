//! The audit log: who did what to which object, how it ended and from where.
//!
//! Entries are appended by the operations themselves (sign-in, tokens, invites); the store offers
//! no way to change or remove one. Entries never hold secrets: objects are ids, not tokens.
//! Admins read the log through `GET /api/v1/audit`.

use std::net::IpAddr;

use jiff::Timestamp;

use crate::store::{AuditEntry, Outcome, Store};

/// The actor of entries the portal writes on its own behalf (e.g. creating the first admin).
pub const SYSTEM_ACTOR: &str = "deskpod-portal";

/// What was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditAction {
    /// Signing in with e-mail and password.
    SignIn,
    /// Signing in through the OpenID Connect provider.
    SignInOidc,
    /// Signing out.
    SignOut,
    /// Creating an account (first admin, or by accepting an invite).
    UserCreate,
    /// Creating an API token.
    TokenCreate,
    /// Revoking an API token.
    TokenRevoke,
    /// Creating an invite.
    InviteCreate,
    /// Accepting an invite.
    InviteAccept,
    /// Creating or changing a team (platform admins).
    TeamPut,
    /// Creating or changing a workspace template (platform admins).
    TemplatePut,
    /// Deleting a workspace template (platform admins).
    TemplateDelete,
}

impl AuditAction {
    /// The name stored in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SignIn => "signin",
            Self::SignInOidc => "signin.oidc",
            Self::SignOut => "signout",
            Self::UserCreate => "user.create",
            Self::TokenCreate => "token.create",
            Self::TokenRevoke => "token.revoke",
            Self::InviteCreate => "invite.create",
            Self::InviteAccept => "invite.accept",
            Self::TeamPut => "team.put",
            Self::TemplatePut => "template.put",
            Self::TemplateDelete => "template.delete",
        }
    }
}

/// Appends an entry. A failure to write is logged, not returned: the action it records has
/// already happened and its caller should still get its answer.
pub async fn record(
    store: &dyn Store,
    actor: &str,
    action: AuditAction,
    object: &str,
    outcome: Outcome,
    remote: Option<IpAddr>,
) {
    let entry = AuditEntry {
        at: Timestamp::now(),
        actor: actor.to_owned(),
        action: action.as_str().to_owned(),
        object: object.to_owned(),
        outcome,
        remote_addr: remote.map(|addr| addr.to_string()),
    };
    tracing::info!(actor, action = action.as_str(), object, outcome = outcome.as_str(), "audit");
    if let Err(error) = store.append_audit(entry).await {
        tracing::error!(%error, action = action.as_str(), "could not write the audit log");
    }
}
