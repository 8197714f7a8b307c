//! [`AppState`]: what every handler shares.

use std::sync::Arc;

use crate::auth::{Keys, SignInLimiter, VerifyGate};
use crate::authz::Membership;
use crate::backend::{Backend, Unconfigured};
use crate::config::Config;
use crate::error::Result;
use crate::invite::{InviteHook, RedirectHome};
use crate::membership::MembershipSource;
use crate::metrics::Metrics;
use crate::store::Store;

/// The portal's shared state; cheap to clone (everything is behind an `Arc`).
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// Users, tokens, invites, the audit log.
    pub store: Arc<dyn Store>,
    /// Session signing and CSRF keys. Never logged (its `Debug` is redacted).
    pub keys: Arc<Keys>,
    /// Team memberships, from the backend.
    pub memberships: Arc<dyn MembershipSource>,
    /// What happens after an invite is accepted, and where the invitee lands.
    pub invite_hook: Arc<dyn InviteHook>,
    /// Failed sign-ins per account and address, and per address.
    pub sign_in_limiter: Arc<SignInLimiter>,
    /// The cap on password checks running at once (sign-in).
    pub password_gate: Arc<VerifyGate>,
    /// Sign-in through an OpenID Connect provider, when configured.
    pub oidc: Option<Arc<crate::auth::OidcClient>>,
    /// Where workspaces run (Kubernetes or single-host Docker).
    pub backend: Arc<dyn Backend>,
    /// What the metrics listener serves; counted but served nowhere unless [`Self::with_metrics`].
    pub metrics: Metrics,
}

impl AppState {
    /// State with the default invite hook (land on `/`), sign-in limits (5 failures a minute per
    /// account and address, 20 in ten minutes per address) and password checks (one per core).
    pub fn new(config: Config, store: Arc<dyn Store>, keys: Keys, memberships: Arc<dyn MembershipSource>) -> Self {
        Self {
            config: Arc::new(config),
            store,
            keys: Arc::new(keys),
            memberships,
            invite_hook: Arc::new(RedirectHome),
            sign_in_limiter: Arc::new(SignInLimiter::default()),
            password_gate: Arc::new(VerifyGate::sized_to_this_machine()),
            oidc: None,
            backend: Arc::new(Unconfigured),
            metrics: Metrics::default(),
        }
    }

    /// Runs workspaces on `backend`, which also supplies the team memberships.
    pub fn with_backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.memberships = backend.clone();
        self.backend = backend;
        self
    }

    /// Offers sign-in through the OpenID Connect provider `client` talks to.
    pub fn with_oidc(mut self, client: Arc<crate::auth::OidcClient>) -> Self {
        self.oidc = Some(client);
        self
    }

    /// Counts into `metrics` (registered into the registry the metrics listener serves).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Replaces what happens after an invite is accepted.
    pub fn with_invite_hook(mut self, hook: Arc<dyn InviteHook>) -> Self {
        self.invite_hook = hook;
        self
    }

    /// The memberships of `user` from the backend.
    pub async fn memberships_of(&self, user: &str) -> Result<Vec<Membership>> {
        self.memberships.memberships(user).await
    }
}
