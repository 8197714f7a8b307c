//! What the portal keeps itself: users and their password hashes, API tokens, invites, revoked
//! sessions, its own secrets and the audit log.
//!
//! [`Store`] is object-safe (`Arc<dyn Store>`) so a PostgreSQL implementation can stand in for
//! [`SqliteStore`] later; its methods return boxed futures and implementations keep blocking work
//! off the async runtime. Team membership is not here: it lives in Kubernetes Team objects and
//! reaches the portal through [`crate::MembershipSource`].
//!
//! Secrets are stored only as SHA-256 hashes (API tokens, invite tokens) or argon2id hashes
//! (passwords); the session signing key is the one secret stored as it is, in `secrets`.

mod sqlite;

use std::fmt;

use futures::future::BoxFuture;
use jiff::Timestamp;
use serde::Serialize;

use crate::error::Result;
use crate::token::Scope;

pub use sqlite::SqliteStore;

/// SHA-256 of a secret (API token, invite token).
pub type SecretHash = [u8; 32];

/// A person who can sign in. Their id is their e-mail address, lower-cased.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// The e-mail address, lower-cased.
    pub id: String,
    /// How the portal addresses them.
    pub display_name: String,
    /// Platform-wide role; team roles come from [`crate::MembershipSource`].
    pub role: GlobalRole,
    /// argon2id PHC string; `None` for accounts that cannot sign in with a password.
    pub password_hash: Option<String>,
    /// When the account was created.
    pub created_at: Timestamp,
    /// Disabled accounts cannot sign in and their sessions and tokens stop working.
    pub disabled: bool,
    /// When a contractor's account stops working.
    pub expires_at: Option<Timestamp>,
}

impl User {
    /// Whether the user is a platform admin.
    pub fn is_admin(&self) -> bool {
        self.role == GlobalRole::Admin
    }
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("display_name", &self.display_name)
            .field("role", &self.role)
            .field("password_hash", &self.password_hash.as_ref().map(|_| "<redacted>"))
            .field("created_at", &self.created_at)
            .field("disabled", &self.disabled)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A user to create.
#[derive(Clone)]
pub struct NewUser {
    /// The e-mail address, already lower-cased and validated.
    pub id: String,
    pub display_name: String,
    pub role: GlobalRole,
    pub password_hash: Option<String>,
    pub expires_at: Option<Timestamp>,
}

/// A user's platform-wide role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GlobalRole {
    /// Manages the platform: every team, templates, the audit log.
    Admin,
    /// Everyone else; what they may do comes from their team memberships.
    User,
}

impl GlobalRole {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "admin" => Some(Self::Admin),
            "user" => Some(Self::User),
            _ => None,
        }
    }
}

/// An API token. Its secret is not here: only its SHA-256 is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiToken {
    /// Public id, used to list and revoke it.
    pub id: String,
    /// Whose token it is; it acts as this user.
    pub user_id: String,
    /// What the user called it.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl ApiToken {
    /// Whether the token still works at `now`.
    pub fn is_usable_at(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// An API token to store.
#[derive(Clone, Debug)]
pub struct NewApiToken {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub secret_hash: SecretHash,
    pub expires_at: Timestamp,
}

/// The team role an invite grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InviteRole {
    /// Access that ends at the invite's `access_expires_at`.
    Contractor,
    /// A regular team member.
    Engineer,
}

impl InviteRole {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Contractor => "contractor",
            Self::Engineer => "engineer",
        }
    }

    /// Parses the stored and serialized name.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "contractor" => Some(Self::Contractor),
            "engineer" => Some(Self::Engineer),
            _ => None,
        }
    }
}

/// A one-time invite link. Its token is not here: only its SHA-256 is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    pub id: String,
    /// Who is invited (lower-cased); the account created has this id.
    pub email: String,
    pub team: String,
    pub role: InviteRole,
    /// The workspace template to start once the invite is accepted.
    pub template: Option<String>,
    /// When the invitee's access ends (contractors).
    pub access_expires_at: Option<Timestamp>,
    /// When the link stops working.
    pub link_expires_at: Timestamp,
    /// Who created the invite.
    pub created_by: String,
    pub created_at: Timestamp,
    /// When it was accepted; an invite works once.
    pub used_at: Option<Timestamp>,
}

impl Invite {
    /// Whether the link can still be accepted at `now`.
    pub fn state_at(&self, now: Timestamp) -> InviteState {
        if self.used_at.is_some() {
            InviteState::Used
        } else if now >= self.link_expires_at {
            InviteState::Expired
        } else {
            InviteState::Open
        }
    }
}

/// Where an invite stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InviteState {
    Open,
    Used,
    Expired,
}

/// An invite to store.
#[derive(Clone, Debug)]
pub struct NewInvite {
    pub id: String,
    pub token_hash: SecretHash,
    pub email: String,
    pub team: String,
    pub role: InviteRole,
    pub template: Option<String>,
    pub access_expires_at: Option<Timestamp>,
    pub link_expires_at: Timestamp,
    pub created_by: String,
}

/// The account an accepted invite signs in as.
#[derive(Clone)]
pub enum InviteAccount {
    /// No account had the invite's e-mail: create this one.
    Create(NewUser),
    /// The account exists: set its expiry to this.
    Existing { user_id: String, expires_at: Option<Timestamp> },
}

/// How an audited action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It was done.
    Success,
    /// It failed, e.g. a wrong password.
    Failure,
    /// It was refused: not allowed, or rate-limited.
    Denied,
}

impl Outcome {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Denied => "denied",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "success" => Some(Self::Success),
            "failure" => Some(Self::Failure),
            "denied" => Some(Self::Denied),
            _ => None,
        }
    }
}

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at: Timestamp,
    /// Who acted: a user id, or the e-mail address someone tried to sign in as.
    pub actor: String,
    /// What they did, e.g. `signin` or `token.create` (see [`crate::audit::AuditAction`]).
    pub action: String,
    /// What they did it to, e.g. a token id or `team/email`.
    pub object: String,
    pub outcome: Outcome,
    /// Where the request came from, when known.
    pub remote_addr: Option<String>,
}

/// How long the audit log keeps its entries: at most `max_age` old and at most the newest
/// `max_entries`; `None` keeps everything in that respect. Only the oldest entries are ever
/// removed, and only by [`Store::prune_audit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditRetention {
    pub max_age: Option<std::time::Duration>,
    pub max_entries: Option<u64>,
}

impl AuditRetention {
    /// The default age: 365 days.
    pub const DEFAULT_DAYS: u64 = 365;
    /// The default count: a million entries (each at most about 1 KiB).
    pub const DEFAULT_ENTRIES: u64 = 1_000_000;
}

impl Default for AuditRetention {
    fn default() -> Self {
        Self {
            max_age: Some(std::time::Duration::from_secs(Self::DEFAULT_DAYS * 24 * 3600)),
            max_entries: Some(Self::DEFAULT_ENTRIES),
        }
    }
}

/// A stored audit entry with its position in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Increases with every entry.
    pub id: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// Storage for the portal's own records. Implementations must be safe to share between requests.
pub trait Store: Send + Sync + 'static {
    /// Creates a user; [`crate::Error::Conflict`] when the id is taken.
    fn create_user(&self, user: NewUser) -> BoxFuture<'_, Result<User>>;
    /// The user with this id (lower-cased e-mail).
    fn user<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<User>>>;
    /// Replaces a user's password hash; [`crate::Error::NotFound`] when there is no such user.
    fn set_password_hash<'a>(&'a self, id: &'a str, hash: String) -> BoxFuture<'a, Result<()>>;
    /// Disables or re-enables a user; [`crate::Error::NotFound`] when there is no such user.
    fn set_disabled<'a>(&'a self, id: &'a str, disabled: bool) -> BoxFuture<'a, Result<()>>;
    /// Whether any admin account exists.
    fn has_admin(&self) -> BoxFuture<'_, Result<bool>>;

    /// Stores a new API token.
    fn create_token(&self, token: NewApiToken) -> BoxFuture<'_, Result<ApiToken>>;
    /// The token whose secret hashes to `hash`, whatever its state.
    fn token_by_secret_hash<'a>(&'a self, hash: &'a SecretHash) -> BoxFuture<'a, Result<Option<ApiToken>>>;
    /// A user's tokens, newest first, including revoked and expired ones.
    fn tokens_of<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<ApiToken>>>;
    /// Revokes the user's token `id` (a no-op if already revoked); `false` when the user has no
    /// token with that id.
    fn revoke_token<'a>(&'a self, user_id: &'a str, id: &'a str, at: Timestamp) -> BoxFuture<'a, Result<bool>>;

    /// Stores a new invite.
    fn create_invite(&self, invite: NewInvite) -> BoxFuture<'_, Result<Invite>>;
    /// The invite whose token hashes to `hash`, whatever its state.
    fn invite_by_token_hash<'a>(&'a self, hash: &'a SecretHash) -> BoxFuture<'a, Result<Option<Invite>>>;
    /// In one transaction: marks the invite used (if it is still open at `at`) and creates or
    /// updates the account. [`crate::Error::Gone`] if it was used or expired meanwhile.
    fn redeem_invite(&self, invite_id: String, at: Timestamp, account: InviteAccount) -> BoxFuture<'_, Result<User>>;

    /// Records that session `jti` is signed out; kept until `until` (the session's expiry).
    fn revoke_session(&self, jti: String, until: Timestamp) -> BoxFuture<'_, Result<()>>;
    /// Whether session `jti` was signed out.
    fn is_session_revoked<'a>(&'a self, jti: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// The secret stored under `name`, storing `candidate` first if there is none.
    fn secret_or_insert(&self, name: &'static str, candidate: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>>>;

    /// Appends to the audit log. There is no way to change an entry; only
    /// [`Store::prune_audit`] removes the oldest.
    fn append_audit(&self, entry: AuditEntry) -> BoxFuture<'_, Result<()>>;
    /// Removes the oldest audit entries that `retention` no longer keeps at `now`; returns how
    /// many.
    fn prune_audit(&self, retention: AuditRetention, now: Timestamp) -> BoxFuture<'_, Result<u64>>;
    /// The newest `limit` audit entries, newest first.
    fn audit_log(&self, limit: u32) -> BoxFuture<'_, Result<Vec<AuditRecord>>>;
}
