//! Accounts: e-mail addresses and names, the first admin, and signing in with a password.

use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;

use crate::audit::{self, AuditAction, SYSTEM_ACTOR};
use crate::auth::{Exhausted, VerifyGate, password};
use crate::authz::account_is_active;
use crate::error::{Error, Result};
use crate::metrics::SignIn;
use crate::state::AppState;
use crate::store::{GlobalRole, NewUser, Outcome, Store, User};

/// The first admin's e-mail address unless `DESKPOD_ADMIN_EMAIL` says otherwise.
pub const DEFAULT_ADMIN_EMAIL: &str = "admin@deskpod.local";
/// The longest e-mail address accepted (RFC 5321's path limit less the brackets).
pub const MAX_EMAIL_LEN: usize = 254;
/// The longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;
/// What a failed sign-in says, whatever failed: it does not tell which accounts exist.
pub const WRONG_CREDENTIALS: &str = "E-mail or password is wrong.";
/// What a rate-limited sign-in says.
pub const TOO_MANY_FAILURES: &str =
    "Too many failed sign-ins to this account from your address. Wait a minute and try again.";
/// What a sign-in refused by the per-(account, address) budget says, before the wait.
pub const TOO_MANY_FAILURES_TO_ACCOUNT: &str = "Too many failed sign-ins to this account from your address.";
/// What a sign-in refused by the per-address budget says, before the wait.
pub const TOO_MANY_FAILURES_FROM_ADDRESS: &str = "Too many failed sign-ins from your address.";

/// An e-mail address as a user id: trimmed, lower-cased, one `@` with something on both sides,
/// a domain of dot-separated labels, no spaces or control characters.
pub fn normalize_email(raw: &str) -> Result<String> {
    let email = raw.trim().to_lowercase();
    let invalid = |why: &str| Error::invalid("email", format!("{email:?} is not an e-mail address: {why}"));
    if email.is_empty() {
        return Err(Error::invalid("email", "enter an e-mail address"));
    }
    if email.len() > MAX_EMAIL_LEN {
        return Err(Error::invalid("email", format!("an e-mail address has at most {MAX_EMAIL_LEN} characters")));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("it contains spaces or control characters"));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(invalid("it needs an @"));
    };
    if local.is_empty() || domain.contains('@') {
        return Err(invalid("it needs exactly one @ with a name before it"));
    }
    let labels_ok = domain.split('.').all(|label| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_alphanumeric() || c == '-')
    });
    if !labels_ok {
        return Err(invalid("the part after @ must be a domain such as example.com"));
    }
    Ok(email)
}

/// A display name: trimmed, 1 to 100 characters, no control characters.
pub fn validate_display_name(raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(Error::invalid("display_name", "enter your name"));
    }
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(Error::invalid(
            "display_name",
            format!("the name must be at most {MAX_DISPLAY_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid("display_name", "the name must not contain control characters"));
    }
    Ok(name.to_owned())
}

/// What [`ensure_admin`] did.
#[derive(PartialEq, Eq)]
pub enum AdminBootstrap {
    /// An admin existed already; nothing changed.
    AlreadyPresent,
    /// The admin `email` was created; with a generated password (to print once) unless one was
    /// configured.
    Created { email: String, generated_password: Option<String> },
}

impl std::fmt::Debug for AdminBootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AlreadyPresent => f.write_str("AlreadyPresent"),
            Self::Created { email, generated_password } => f
                .debug_struct("Created")
                .field("email", email)
                .field("generated_password", &generated_password.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

/// On first start, when there is no admin: creates `email` as admin with `password`, or with a
/// generated one that the caller prints once.
pub async fn ensure_admin(store: &dyn Store, email: &str, password: Option<String>) -> Result<AdminBootstrap> {
    if store.has_admin().await? {
        return Ok(AdminBootstrap::AlreadyPresent);
    }
    let email = normalize_email(email).map_err(|e| Error::Config(format!("DESKPOD_ADMIN_EMAIL: {e}")))?;
    let (password, generated) = match password {
        Some(password) => {
            password::check_new(&password).map_err(|e| Error::Config(format!("DESKPOD_ADMIN_PASSWORD: {e}")))?;
            (password, false)
        }
        None => (password::generate()?, true),
    };
    let admin = NewUser {
        id: email.clone(),
        display_name: "Administrator".into(),
        role: GlobalRole::Admin,
        password_hash: Some(password::hash(password.clone()).await?),
        expires_at: None,
    };
    store.create_user(admin).await.map_err(|e| match e {
        Error::Conflict { .. } => Error::Config(format!(
            "there is no admin, and {email} exists as a regular user; set DESKPOD_ADMIN_EMAIL to another address"
        )),
        other => other,
    })?;
    audit::record(store, SYSTEM_ACTOR, AuditAction::UserCreate, &email, Outcome::Success, None).await;
    Ok(AdminBootstrap::Created { email, generated_password: generated.then_some(password) })
}

/// What a sign-in refused because the portal is checking too many passwords at once says.
pub const TOO_BUSY: &str = "The portal is checking too many sign-ins at once. Try again in a moment.";

/// Why [`sign_in`] did not sign anyone in: the error, and for a refusal (429) how long to wait
/// before trying again (the `Retry-After` header).
#[derive(Debug)]
pub struct SignInError {
    pub error: Error,
    pub retry_after: Option<Duration>,
}

impl SignInError {
    fn refused(message: String, retry_after: Duration) -> Self {
        Self { error: Error::TooManyRequests(message), retry_after: Some(retry_after) }
    }
}

impl From<Error> for SignInError {
    fn from(error: Error) -> Self {
        Self { error, retry_after: None }
    }
}

/// Refuses, before anything is looked up, hashed or audited, an e-mail address longer than
/// [`MAX_EMAIL_LEN`] bytes or a password longer than [`password::MAX_BYTES`].
pub fn check_sign_in_sizes(email: &str, password: &str) -> Result<()> {
    if email.trim().len() > MAX_EMAIL_LEN {
        return Err(Error::invalid("email", format!("an e-mail address has at most {MAX_EMAIL_LEN} characters")));
    }
    if password.len() > password::MAX_BYTES {
        return Err(Error::invalid("password", format!("a password has at most {} bytes", password::MAX_BYTES)));
    }
    Ok(())
}

/// "Try again in 40 seconds." / "in 9 minutes."
fn try_again_in(wait: Duration) -> String {
    let seconds = wait.as_secs().max(1);
    match seconds {
        1 => "Try again in a second.".to_owned(),
        2..=90 => format!("Try again in {seconds} seconds."),
        _ => format!("Try again in {} minutes.", seconds.div_ceil(60)),
    }
}

/// Checks an e-mail address and password, within the rate limits, and audits the attempt.
/// Every failure says [`WRONG_CREDENTIALS`] (or [`TOO_MANY_FAILURES`]), whether the account is
/// unknown, disabled, expired or the password wrong.
///
/// In order: sizes ([`check_sign_in_sizes`], a 400 with nothing recorded); the limiter's budgets
/// per (account, address) and per address ([`crate::auth::SignInLimiter`], a 429 with the wait);
/// the cap on password checks at once ([`crate::auth::VerifyGate`], a 429 when full, not
/// audited since no password was looked at); then the password.
pub async fn sign_in(
    state: &AppState,
    email: &str,
    password: String,
    remote: Option<IpAddr>,
) -> Result<User, SignInError> {
    check_sign_in_sizes(email, &password)?;
    let account = email.trim().to_lowercase();
    let limiter = &state.sign_in_limiter;
    let store = state.store.as_ref();
    if let Err(refused) = limiter.begin(&account, remote) {
        audit::record(store, &account, AuditAction::SignIn, &account, Outcome::Denied, remote).await;
        state.metrics.sign_in("password", SignIn::RateLimited);
        let message = match refused.budget {
            Exhausted::Account => format!("{TOO_MANY_FAILURES_TO_ACCOUNT} {}", try_again_in(refused.retry_after)),
            Exhausted::Address => format!("{TOO_MANY_FAILURES_FROM_ADDRESS} {}", try_again_in(refused.retry_after)),
        };
        return Err(SignInError::refused(message, refused.retry_after));
    }
    let checked = match state.store.user(&account).await {
        Ok(user) => {
            let hash = user.as_ref().and_then(|user| user.password_hash.clone());
            state.password_gate.verify(password, hash).await.map(|matches| matches.map(|ok| (user, ok)))
        }
        Err(error) => Err(error),
    };
    let (user, password_ok) = match checked {
        Ok(Some(checked)) => checked,
        Ok(None) => {
            limiter.abandoned(&account, remote);
            state.metrics.sign_in("password", SignIn::RateLimited);
            return Err(SignInError::refused(TOO_BUSY.into(), VerifyGate::RETRY_AFTER));
        }
        Err(error) => {
            limiter.abandoned(&account, remote);
            return Err(error.into());
        }
    };
    match user {
        Some(user) if password_ok && account_is_active(&user, Timestamp::now()) => {
            limiter.succeeded(&account, remote);
            audit::record(store, &account, AuditAction::SignIn, &account, Outcome::Success, remote).await;
            state.metrics.sign_in("password", SignIn::Success);
            Ok(user)
        }
        _ => {
            // Counted as a failure since `begin`.
            audit::record(store, &account, AuditAction::SignIn, &account, Outcome::Failure, remote).await;
            state.metrics.sign_in("password", SignIn::Failure);
            Err(Error::Unauthenticated(WRONG_CREDENTIALS.into()).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;
    use crate::store::SqliteStore;

    #[rstest]
    #[case::plain("alice@example.com", Ok("alice@example.com"))]
    #[case::upper_and_spaces("  Alice@Example.COM ", Ok("alice@example.com"))]
    #[case::local_domain("admin@deskpod.local", Ok("admin@deskpod.local"))]
    #[case::plus("alice+ci@example.com", Ok("alice+ci@example.com"))]
    #[case::single_label("root@localhost", Ok("root@localhost"))]
    #[case::empty("", Err("enter an e-mail address"))]
    #[case::no_at("alice.example.com", Err("it needs an @"))]
    #[case::two_ats("a@b@example.com", Err("exactly one @"))]
    #[case::no_local("@example.com", Err("exactly one @"))]
    #[case::no_domain("alice@", Err("a domain such as example.com"))]
    #[case::empty_label("alice@example..com", Err("a domain such as example.com"))]
    #[case::bad_char("alice@exa_mple.com", Err("a domain such as example.com"))]
    #[case::space("ali ce@example.com", Err("spaces or control characters"))]
    #[case::markup("<script>@example.com", Ok("<script>@example.com"))]
    #[case::too_long(&format!("{}@example.com", "a".repeat(250)), Err("at most 254 characters"))]
    fn e_mail_addresses(#[case] raw: &str, #[case] expected: std::result::Result<&str, &str>) {
        match (normalize_email(raw), expected) {
            (Ok(email), Ok(want)) => assert_eq!(email, want),
            (Err(error), Err(want)) => {
                assert!(error.to_string().contains(want), "{raw:?}: {error}");
                assert_eq!(error.field(), Some("email"));
            }
            (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
        }
    }

    #[rstest]
    #[case::plain("Alice", true)]
    #[case::trimmed("  Alice Liddell ", true)]
    #[case::empty("  ", false)]
    #[case::long(&"a".repeat(101), false)]
    #[case::control("Ali\nce", false)]
    fn display_names(#[case] raw: &str, #[case] accepted: bool) {
        let checked = validate_display_name(raw);
        assert_eq!(checked.is_ok(), accepted, "{checked:?}");
        if let Ok(name) = checked {
            assert_eq!(name, raw.trim());
        }
    }

    #[tokio::test]
    async fn the_first_admin_is_created_once_with_a_generated_password() {
        let store = SqliteStore::open_in_memory().unwrap();
        let created = ensure_admin(&store, DEFAULT_ADMIN_EMAIL, None).await.unwrap();
        let AdminBootstrap::Created { email, generated_password: Some(password) } = created else {
            panic!("expected a generated password, got {created:?}");
        };
        assert!(!format!("{:?}", ensure_admin(&store, "x@example.com", None).await.unwrap()).contains(&password));
        assert_eq!(email, DEFAULT_ADMIN_EMAIL);
        let admin = store.user(DEFAULT_ADMIN_EMAIL).await.unwrap().unwrap();
        assert!(admin.is_admin());
        assert!(password::verify(password, admin.password_hash).await.unwrap());
        let log = store.audit_log(10).await.unwrap();
        assert_eq!(log[0].entry.action, "user.create");
        assert_eq!(log[0].entry.object, DEFAULT_ADMIN_EMAIL);
        assert_eq!(ensure_admin(&store, DEFAULT_ADMIN_EMAIL, None).await.unwrap(), AdminBootstrap::AlreadyPresent);
    }

    #[tokio::test]
    async fn a_configured_admin_password_is_used_and_not_returned() {
        let store = SqliteStore::open_in_memory().unwrap();
        let created = ensure_admin(&store, "Root@Example.com", Some("configured password".into())).await.unwrap();
        assert_eq!(created, AdminBootstrap::Created { email: "root@example.com".into(), generated_password: None });
        let admin = store.user("root@example.com").await.unwrap().unwrap();
        assert!(password::verify("configured password".into(), admin.password_hash).await.unwrap());
    }

    #[tokio::test]
    async fn a_short_configured_admin_password_is_refused() {
        let store = SqliteStore::open_in_memory().unwrap();
        let error = ensure_admin(&store, DEFAULT_ADMIN_EMAIL, Some("short".into())).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "configuration: DESKPOD_ADMIN_PASSWORD: the password must be at least 12 characters long"
        );
        assert!(!store.has_admin().await.unwrap());
    }
}
