//! Where team memberships come from.
//!
//! The Kubernetes backend reads them from Team objects (`spec.members[]`), the single-host
//! backend from its own configuration; both implement [`MembershipSource`]. Until a backend is
//! wired in, [`StaticMemberships`] holds them in memory (tests set them directly).

use std::collections::HashMap;
use std::sync::RwLock;

use futures::future::BoxFuture;

use crate::authz::Membership;
use crate::error::Result;

/// Answers "which teams is this user in, with which role?".
pub trait MembershipSource: Send + Sync + 'static {
    /// The memberships of `user` (a lower-cased e-mail address), expired ones included: callers
    /// decide with [`crate::authz`], which knows the time.
    fn memberships<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<Membership>>>;
}

/// Memberships held in memory.
#[derive(Default)]
pub struct StaticMemberships {
    by_user: RwLock<HashMap<String, Vec<Membership>>>,
}

impl StaticMemberships {
    /// No memberships at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the memberships of `user`.
    pub fn set(&self, user: &str, memberships: Vec<Membership>) {
        let mut by_user = self.by_user.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        by_user.insert(user.to_owned(), memberships);
    }
}

impl MembershipSource for StaticMemberships {
    fn memberships<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<Membership>>> {
        let by_user = self.by_user.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = by_user.get(user).cloned().unwrap_or_default();
        Box::pin(std::future::ready(Ok(found)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::TeamRole;

    #[tokio::test]
    async fn memberships_are_per_user_and_replaced_whole() {
        let source = StaticMemberships::new();
        let lead = Membership { team: "platform".into(), role: TeamRole::Lead, expires_at: None };
        source.set("alice@example.com", vec![lead.clone()]);
        assert_eq!(source.memberships("alice@example.com").await.unwrap(), vec![lead]);
        assert_eq!(source.memberships("bob@example.com").await.unwrap(), vec![]);
        source.set("alice@example.com", vec![]);
        assert_eq!(source.memberships("alice@example.com").await.unwrap(), vec![]);
    }
}
