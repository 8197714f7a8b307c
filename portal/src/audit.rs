//! The audit log: who did what to which object, how it ended and from where.
//!
//! Entries are appended by the operations themselves (sign-in, tokens, invites); the store offers
//! no way to change one, and removes them only by age or count ([`AuditRetention`], applied by
//! [`keep_pruning`]). Entries never hold secrets: objects are ids, not tokens. Actor and object
//! are cut to [`MAX_FIELD_BYTES`], so no request can write a large entry.
//! Admins read the log through `GET /api/v1/audit`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

pub use crate::store::AuditRetention;
use crate::store::{AuditEntry, Outcome, Store};

/// The longest actor or object recorded, in bytes; longer ones are cut and end in `…`.
pub const MAX_FIELD_BYTES: usize = 320;

/// How often [`keep_pruning`] applies the retention.
pub const PRUNE_EVERY: Duration = Duration::from_secs(300);

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
        actor: bounded(actor),
        action: action.as_str().to_owned(),
        object: bounded(object),
        outcome,
        remote_addr: remote.map(|addr| addr.to_string()),
    };
    tracing::info!(
        actor = entry.actor,
        action = action.as_str(),
        object = entry.object,
        outcome = outcome.as_str(),
        "audit"
    );
    if let Err(error) = store.append_audit(entry).await {
        tracing::error!(%error, action = action.as_str(), "could not write the audit log");
    }
}

/// `field` cut to at most [`MAX_FIELD_BYTES`] (at a character boundary, ending in `…`).
fn bounded(field: &str) -> String {
    if field.len() <= MAX_FIELD_BYTES {
        return field.to_owned();
    }
    const ELLIPSIS: char = '…';
    let mut end = MAX_FIELD_BYTES - ELLIPSIS.len_utf8();
    while !field.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &field[..end])
}

/// Removes what `retention` no longer keeps, now; logs what it did. A failure is logged too:
/// the next pass tries again.
pub async fn prune(store: &dyn Store, retention: AuditRetention) {
    match store.prune_audit(retention, Timestamp::now()).await {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "removed audit entries past their retention"),
        Err(error) => tracing::error!(%error, "could not apply the audit retention"),
    }
}

/// Applies `retention` now and every `every` after, for as long as the process runs.
pub async fn keep_pruning(store: Arc<dyn Store>, retention: AuditRetention, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        prune(store.as_ref(), retention).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn a_huge_actor_or_object_is_recorded_cut_short() {
        let store = SqliteStore::open_in_memory().unwrap();
        let huge = format!("{}@example.com", "é".repeat(30_000));
        record(&store, &huge, AuditAction::SignIn, &huge, Outcome::Failure, None).await;
        let entry = &store.audit_log(1).await.unwrap()[0].entry;
        for field in [&entry.actor, &entry.object] {
            assert!(field.len() <= MAX_FIELD_BYTES, "{} bytes", field.len());
            assert!(field.starts_with("éé") && field.ends_with('…'), "{field}");
        }
        assert_eq!(bounded("alice@example.com"), "alice@example.com");
    }
}
