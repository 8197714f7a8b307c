//! API tokens for the command-line client and CI: scoped, expiring, revocable.
//!
//! A token's secret is `dpt_` followed by 43 characters of URL-safe base64 (256 random bits).
//! It is shown once, when created; the store keeps only its SHA-256, which is what a presented
//! token is looked up by. The operations here are shared by the tokens page and the JSON API.

use std::fmt;
use std::net::IpAddr;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::audit::{self, AuditAction};
use crate::auth::{Auth, CurrentUser};
use crate::authz::account_is_active;
use crate::error::{Error, Result};
use crate::random;
use crate::state::AppState;
use crate::store::{ApiToken, NewApiToken, Outcome, SecretHash, User};

/// What every token secret starts with, so secret scanners and people recognise it.
pub const SECRET_PREFIX: &str = "dpt_";
/// The longest token name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// How long a token lasts when the request does not say.
pub const DEFAULT_LIFETIME_DAYS: u32 = 90;
/// The longest a token may last.
pub const MAX_LIFETIME_DAYS: u32 = 365;

/// What an API token may do. Sessions may do everything their user's role allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// List workspaces and their status.
    WorkspacesRead,
    /// Create, start, stop and delete workspaces.
    WorkspacesWrite,
    /// Invite people to teams the user leads.
    InvitesWrite,
    /// Create and revoke the user's API tokens.
    TokensWrite,
    /// Read the audit log (admins only).
    AuditRead,
    /// Read and change teams and templates (admins only).
    AdminWrite,
    /// Submit, follow and cancel CI agents (`deskpod agent run`).
    AgentsRun,
}

impl Scope {
    /// Every scope, in the order pages list them.
    pub const ALL: [Scope; 7] = [
        Scope::WorkspacesRead,
        Scope::WorkspacesWrite,
        Scope::InvitesWrite,
        Scope::TokensWrite,
        Scope::AuditRead,
        Scope::AdminWrite,
        Scope::AgentsRun,
    ];

    /// The scope's name, e.g. `workspaces:read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WorkspacesRead => "workspaces:read",
            Self::WorkspacesWrite => "workspaces:write",
            Self::InvitesWrite => "invites:write",
            Self::TokensWrite => "tokens:write",
            Self::AuditRead => "audit:read",
            Self::AdminWrite => "admin:write",
            Self::AgentsRun => "agents:run",
        }
    }

    /// The scope named `raw`.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == raw)
    }

    /// What the scope allows, for people.
    pub fn description(self) -> &'static str {
        match self {
            Self::WorkspacesRead => "list workspaces and their status",
            Self::WorkspacesWrite => "create, start, stop and delete workspaces",
            Self::InvitesWrite => "invite people to teams you lead",
            Self::TokensWrite => "create and revoke your API tokens",
            Self::AuditRead => "read the audit log (admins)",
            Self::AdminWrite => "read and change teams and templates (admins)",
            Self::AgentsRun => "submit, follow and cancel CI agents",
        }
    }

    /// Whether only platform admins may hold the scope.
    pub fn admins_only(self) -> bool {
        matches!(self, Self::AuditRead | Self::AdminWrite)
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A token's secret, shown once. Its `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl TokenSecret {
    /// The secret itself, to show the user once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

/// The SHA-256 of a secret, as stored.
pub fn hash_secret(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// Where a token stands, for lists.
pub fn state_at(token: &ApiToken, now: Timestamp) -> &'static str {
    if token.revoked_at.is_some() {
        "revoked"
    } else if now >= token.expires_at {
        "expired"
    } else {
        "active"
    }
}

/// A request to create a token (the JSON API's body; the page builds one from its form).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// What the token is for, e.g. `ci-nightly`.
    pub name: String,
    /// Scope names, e.g. `["workspaces:read"]`.
    pub scopes: Vec<String>,
    /// Days until it expires; default 90, at most 365.
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// A token just created, with the secret that is never shown again.
#[derive(Debug)]
pub struct CreatedToken {
    pub token: ApiToken,
    pub secret: TokenSecret,
}

/// A token name: trimmed, 1 to 64 characters, no control characters.
pub fn validate_name(raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(Error::invalid("name", "give the token a name, e.g. what it is for"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::invalid("name", format!("the name must be at most {MAX_NAME_CHARS} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid("name", "the name must not contain control characters"));
    }
    Ok(name.to_owned())
}

/// Scope names to scopes: at least one, all known, no repeats.
pub fn parse_scopes(raw: &[String]) -> Result<Vec<Scope>> {
    let known = || Scope::ALL.map(Scope::as_str).join(", ");
    if raw.is_empty() {
        return Err(Error::invalid("scopes", format!("choose at least one scope: {}", known())));
    }
    let mut scopes = Vec::with_capacity(raw.len());
    for name in raw {
        let scope = Scope::parse(name)
            .ok_or_else(|| Error::invalid("scopes", format!("unknown scope {name:?}; the scopes are {}", known())))?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    Ok(scopes)
}

/// Creates a token for the caller. An API token can only create tokens with scopes it has.
pub async fn create(
    state: &AppState,
    actor: &CurrentUser,
    request: TokenRequest,
    remote: Option<IpAddr>,
) -> Result<CreatedToken> {
    actor.require_scope(Scope::TokensWrite)?;
    let name = validate_name(&request.name)?;
    let scopes = parse_scopes(&request.scopes)?;
    if let Auth::Token(held) = &actor.auth
        && let Some(missing) = scopes.iter().find(|scope| !held.scopes.contains(scope))
    {
        return Err(Error::Forbidden(format!(
            "an API token can only create tokens with scopes it has itself, and this one lacks {}",
            missing.as_str()
        )));
    }
    if let Some(scope) = scopes.iter().find(|scope| scope.admins_only())
        && !actor.user.is_admin()
    {
        return Err(Error::invalid("scopes", format!("{} is for admins only", scope.as_str())));
    }
    let days = request.expires_in_days.unwrap_or(DEFAULT_LIFETIME_DAYS);
    if !(1..=MAX_LIFETIME_DAYS).contains(&days) {
        return Err(Error::invalid(
            "expires_in_days",
            format!("a token must expire within 1 to {MAX_LIFETIME_DAYS} days"),
        ));
    }
    let secret = TokenSecret(format!("{SECRET_PREFIX}{}", random::url_safe::<32>()?));
    let new = NewApiToken {
        id: random::hex::<8>()?,
        user_id: actor.id().to_owned(),
        name,
        scopes,
        secret_hash: hash_secret(secret.expose()),
        expires_at: Timestamp::now() + SignedDuration::from_hours(24 * i64::from(days)),
    };
    let token = state.store.create_token(new).await?;
    audit::record(state.store.as_ref(), actor.id(), AuditAction::TokenCreate, &token.id, Outcome::Success, remote)
        .await;
    Ok(CreatedToken { token, secret })
}

/// The caller's tokens, newest first.
pub async fn list(state: &AppState, actor: &CurrentUser) -> Result<Vec<ApiToken>> {
    state.store.tokens_of(actor.id()).await
}

/// Revokes one of the caller's tokens. Someone else's token is answered exactly like a token
/// that does not exist (404), so ids cannot be probed.
pub async fn revoke(state: &AppState, actor: &CurrentUser, id: &str, remote: Option<IpAddr>) -> Result<()> {
    actor.require_scope(Scope::TokensWrite)?;
    if state.store.revoke_token(actor.id(), id, Timestamp::now()).await? {
        audit::record(state.store.as_ref(), actor.id(), AuditAction::TokenRevoke, id, Outcome::Success, remote).await;
        Ok(())
    } else {
        audit::record(state.store.as_ref(), actor.id(), AuditAction::TokenRevoke, id, Outcome::Failure, remote).await;
        Err(Error::NotFound(format!("you have no API token with id {id:?}")))
    }
}

/// The user and token a presented secret stands for, if the token is usable and its user active.
pub async fn authenticate(state: &AppState, presented: &str, now: Timestamp) -> Result<(User, ApiToken)> {
    let refused = || Error::Unauthenticated("the API token is unknown, expired or revoked".into());
    if !presented.starts_with(SECRET_PREFIX) {
        return Err(refused());
    }
    let token = state.store.token_by_secret_hash(&hash_secret(presented)).await?.ok_or_else(refused)?;
    if !token.is_usable_at(now) {
        return Err(refused());
    }
    match state.store.user(&token.user_id).await? {
        Some(user) if account_is_active(&user, now) => Ok((user, token)),
        _ => Err(refused()),
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::plain("ci-nightly", Ok("ci-nightly"))]
    #[case::trimmed("  laptop  ", Ok("laptop"))]
    #[case::unicode("Jürgen's laptop", Ok("Jürgen's laptop"))]
    #[case::empty("   ", Err("give the token a name, e.g. what it is for"))]
    #[case::too_long(&"x".repeat(65), Err("the name must be at most 64 characters"))]
    #[case::control("a\u{7}b", Err("the name must not contain control characters"))]
    fn token_names(#[case] raw: &str, #[case] expected: std::result::Result<&str, &str>) {
        match (validate_name(raw), expected) {
            (Ok(name), Ok(want)) => assert_eq!(name, want),
            (Err(error), Err(want)) => {
                assert_eq!(error.to_string(), want);
                assert_eq!(error.field(), Some("name"));
            }
            (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
        }
    }

    #[rstest]
    #[case::one(&["workspaces:read"], Ok(vec![Scope::WorkspacesRead]))]
    #[case::repeated(&["invites:write", "invites:write"], Ok(vec![Scope::InvitesWrite]))]
    #[case::none(&[], Err("choose at least one scope"))]
    #[case::unknown(&["workspaces:admin"], Err("unknown scope \"workspaces:admin\""))]
    fn scope_lists(#[case] raw: &[&str], #[case] expected: std::result::Result<Vec<Scope>, &str>) {
        let raw: Vec<String> = raw.iter().map(|s| s.to_string()).collect();
        match (parse_scopes(&raw), expected) {
            (Ok(scopes), Ok(want)) => assert_eq!(scopes, want),
            (Err(error), Err(want)) => {
                assert!(error.to_string().starts_with(want), "{error}");
                assert_eq!(error.field(), Some("scopes"));
            }
            (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn every_scope_round_trips_by_name() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
            assert_eq!(serde_json::to_string(&scope).unwrap(), format!("\"{}\"", scope.as_str()));
        }
    }

    #[test]
    fn secrets_are_hashed_with_sha256_and_never_debug_printed() {
        // SHA-256("abc"), from FIPS 180-2.
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let hex: String = hash_secret("abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
        assert_eq!(format!("{:?}", TokenSecret("dpt_secret".into())), "TokenSecret(<redacted>)");
    }
}
