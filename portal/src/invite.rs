//! Invites: a team lead (or an admin) invites someone by e-mail to a team as a contractor or
//! engineer, optionally with a template to start; the invitee opens the one-time link, sets a
//! password (or, with an existing account, enters theirs) and is signed in.
//!
//! The link's token is `dpi_` and 43 characters of URL-safe base64; only its SHA-256 is stored.
//! Accepting creates or updates the account and marks the invite used in one transaction, so a
//! link works once even when opened twice at the same moment. Adding the invitee to the Team
//! object and starting the template is the backend's part: it implements [`InviteHook`], which is
//! also where the invitee lands afterwards (default `/`).

use std::fmt;
use std::net::IpAddr;

use futures::future::BoxFuture;
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

use crate::account::{normalize_email, validate_display_name};
use crate::audit::{self, AuditAction};
use crate::auth::{CurrentUser, password};
use crate::authz::can_invite;
use crate::error::{Error, Result};
use crate::random;
use crate::state::AppState;
use crate::store::{GlobalRole, Invite, InviteAccount, InviteRole, InviteState, NewInvite, NewUser, Outcome, User};
use crate::token::{Scope, hash_secret};

/// What every invite token starts with.
pub const TOKEN_PREFIX: &str = "dpi_";
/// How long a link works when the request does not say, in hours.
pub const DEFAULT_LINK_HOURS: u32 = 72;
/// The longest a link may work, in hours (30 days).
pub const MAX_LINK_HOURS: u32 = 720;
/// The furthest ahead a contractor's access may end, in days.
pub const MAX_ACCESS_DAYS: i64 = 366;
/// The longest Team name (the controller's rule: derived names must stay DNS labels).
pub const MAX_TEAM_NAME_LEN: usize = 40;
/// The longest template name.
pub const MAX_TEMPLATE_NAME_LEN: usize = 63;

/// What happens once an invite is accepted; the backend adds the invitee to the Team and starts
/// the invited template here.
pub trait InviteHook: Send + Sync + 'static {
    /// Called after the account exists and the invite is marked used. Returns the local path the
    /// invitee is sent to (e.g. their starting desktop). An error is logged and the invitee is
    /// sent to `/`; they are signed in either way.
    fn invite_accepted<'a>(&'a self, invite: &'a Invite, user: &'a User) -> BoxFuture<'a, Result<String>>;
}

/// The default hook: nothing to do, land on `/`.
pub struct RedirectHome;

impl InviteHook for RedirectHome {
    fn invite_accepted<'a>(&'a self, _: &'a Invite, _: &'a User) -> BoxFuture<'a, Result<String>> {
        Box::pin(std::future::ready(Ok("/".to_owned())))
    }
}

/// A request to invite someone (the JSON API's body).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// Who to invite.
    pub email: String,
    /// Which team.
    pub team: String,
    /// `contractor` or `engineer`.
    pub role: String,
    /// The workspace template to start for them.
    #[serde(default)]
    pub template: Option<String>,
    /// When their access ends, RFC 3339; required for contractors.
    #[serde(default)]
    pub access_expires_at: Option<String>,
    /// How long the link works, in hours; default 72, at most 720.
    #[serde(default)]
    pub link_valid_hours: Option<u32>,
}

/// An invite just created, with its link (which holds the one-time token: show it once).
pub struct CreatedInvite {
    pub invite: Invite,
    pub url: String,
}

impl fmt::Debug for CreatedInvite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedInvite").field("invite", &self.invite).field("url", &"<redacted>").finish()
    }
}

/// A Kubernetes object name as Deskpod uses them: lowercase letters, digits and `-` (and `.`
/// where `dots` is true), starting with a letter or digit as `first` allows, not ending in `-`.
fn validate_object_name(field: &'static str, raw: &str, max: usize, letter_first: bool, dots: bool) -> Result<String> {
    let name = raw.trim();
    let rule = format!(
        "must be at most {max} characters: lowercase letters, digits and '-'{}, starting with a {} and not ending with '-'",
        if dots { " or '.'" } else { "" },
        if letter_first { "letter" } else { "letter or digit" },
    );
    let first_ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || (!letter_first && c.is_ascii_digit()));
    let chars_ok = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.'));
    let last_ok = name.chars().last().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.len() > max || !first_ok || !chars_ok || !last_ok {
        return Err(Error::invalid(field, format!("{name:?} is not a valid name: it {rule}")));
    }
    Ok(name.to_owned())
}

/// A Team name, by the controller's rule.
pub fn validate_team_name(raw: &str) -> Result<String> {
    validate_object_name("team", raw, MAX_TEAM_NAME_LEN, true, false)
}

/// A WorkspaceTemplate name.
pub fn validate_template_name(raw: &str) -> Result<String> {
    validate_object_name("template", raw, MAX_TEMPLATE_NAME_LEN, false, true)
}

/// A time such as `2026-06-30T17:00:00Z` that lies after `now` and at most `max` ahead.
fn future_time(field: &'static str, raw: &str, now: Timestamp, max: SignedDuration) -> Result<Timestamp> {
    let at: Timestamp = raw.trim().parse().map_err(|_| {
        Error::invalid(field, format!("{raw:?} is not a time; write it like 2026-06-30T17:00:00Z (RFC 3339)"))
    })?;
    if at <= now {
        return Err(Error::invalid(field, "the time must be in the future"));
    }
    if at > now + max {
        return Err(Error::invalid(field, format!("the time must be within {} days", max.as_hours() / 24)));
    }
    Ok(at)
}

/// An [`InviteRequest`] checked: every field valid, times in range.
#[derive(Debug, PartialEq, Eq)]
struct ValidInvite {
    email: String,
    team: String,
    role: InviteRole,
    template: Option<String>,
    access_expires_at: Option<Timestamp>,
    link_expires_at: Timestamp,
}

fn validate_request(request: &InviteRequest, now: Timestamp) -> Result<ValidInvite> {
    let email = normalize_email(&request.email)?;
    let team = validate_team_name(&request.team)?;
    let role = InviteRole::parse(request.role.trim()).ok_or_else(|| {
        Error::invalid("role", format!("{:?} is not a role: use contractor or engineer", request.role))
    })?;
    let template =
        request.template.as_deref().filter(|t| !t.trim().is_empty()).map(validate_template_name).transpose()?;
    let max_access = SignedDuration::from_hours(24 * MAX_ACCESS_DAYS);
    let access_expires_at = request
        .access_expires_at
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .map(|raw| future_time("access_expires_at", raw, now, max_access))
        .transpose()?;
    if role == InviteRole::Contractor && access_expires_at.is_none() {
        return Err(Error::invalid("access_expires_at", "a contractor's access must end: set access_expires_at"));
    }
    let hours = request.link_valid_hours.unwrap_or(DEFAULT_LINK_HOURS);
    if !(1..=MAX_LINK_HOURS).contains(&hours) {
        return Err(Error::invalid("link_valid_hours", format!("the link must work for 1 to {MAX_LINK_HOURS} hours")));
    }
    let link_expires_at = now + SignedDuration::from_hours(i64::from(hours));
    Ok(ValidInvite { email, team, role, template, access_expires_at, link_expires_at })
}

/// Creates an invite if the caller leads the team (or is an admin).
pub async fn create(
    state: &AppState,
    actor: &CurrentUser,
    request: InviteRequest,
    remote: Option<IpAddr>,
) -> Result<CreatedInvite> {
    actor.require_scope(Scope::InvitesWrite)?;
    let now = Timestamp::now();
    let valid = validate_request(&request, now)?;
    let object = format!("{}/{}", valid.team, valid.email);
    let memberships = state.memberships_of(actor.id()).await?;
    if !can_invite(&actor.user, &memberships, &valid.team, now) {
        audit::record(state.store.as_ref(), actor.id(), AuditAction::InviteCreate, &object, Outcome::Denied, remote)
            .await;
        return Err(Error::Forbidden(format!(
            "only leads of team {} (and admins) can invite people to it",
            valid.team
        )));
    }
    let token = format!("{TOKEN_PREFIX}{}", random::url_safe::<32>()?);
    let new = NewInvite {
        id: random::hex::<8>()?,
        token_hash: hash_secret(&token),
        email: valid.email,
        team: valid.team,
        role: valid.role,
        template: valid.template,
        access_expires_at: valid.access_expires_at,
        link_expires_at: valid.link_expires_at,
        created_by: actor.id().to_owned(),
    };
    let invite = state.store.create_invite(new).await?;
    audit::record(state.store.as_ref(), actor.id(), AuditAction::InviteCreate, &object, Outcome::Success, remote).await;
    Ok(CreatedInvite { url: state.config.public_url.join(&format!("/invite/{token}")), invite })
}

/// The open invite behind a link: 404 for an unknown token, 410 for a used or expired one.
pub async fn open(state: &AppState, token: &str, now: Timestamp) -> Result<Invite> {
    let unknown = || {
        Error::NotFound(
            "This invite link is not valid. Check that it was copied whole, or ask your team lead for a new one."
                .into(),
        )
    };
    if !token.starts_with(TOKEN_PREFIX) {
        return Err(unknown());
    }
    let invite = state.store.invite_by_token_hash(&hash_secret(token)).await?.ok_or_else(unknown)?;
    match invite.state_at(now) {
        InviteState::Open => Ok(invite),
        InviteState::Used => Err(Error::Gone(
            "This invite link has already been used. If that was you, sign in; otherwise ask your team lead for a new one."
                .into(),
        )),
        InviteState::Expired => Err(Error::Gone("This invite link has expired. Ask your team lead for a new one.".into())),
    }
}

/// What the invitee sends: for a new account a name and a new password (twice); for an
/// existing account its password.
#[derive(Clone, Deserialize)]
pub struct Acceptance {
    #[serde(default)]
    pub display_name: Option<String>,
    pub password: String,
    #[serde(default)]
    pub password_confirm: Option<String>,
}

/// The expiry of an existing account after it accepts `invite`: a permanent account stays
/// permanent (the Team membership carries the contractor's end), a contractor account is extended
/// to the later end, and becomes permanent when invited as an engineer.
pub fn account_expiry_after(current: Option<Timestamp>, invite: &Invite) -> Option<Timestamp> {
    match (current, invite.role, invite.access_expires_at) {
        (None, _, _) => None,
        (Some(_), InviteRole::Engineer, _) => None,
        (Some(current), InviteRole::Contractor, Some(granted)) => Some(current.max(granted)),
        (Some(current), InviteRole::Contractor, None) => Some(current),
    }
}

/// Accepts the invite behind `token`: creates the account (or checks the existing account's
/// password), marks the invite used and audits it. Returns the account and the invite.
pub async fn accept(
    state: &AppState,
    token: &str,
    acceptance: Acceptance,
    remote: Option<IpAddr>,
) -> Result<(User, Invite)> {
    let now = Timestamp::now();
    let invite = open(state, token, now).await?;
    let store = state.store.as_ref();
    let (account, created) = match store.user(&invite.email).await? {
        Some(existing) => {
            let limiter = &state.sign_in_limiter;
            if limiter.is_limited(&existing.id, remote) {
                return Err(Error::TooManyRequests(crate::account::TOO_MANY_FAILURES.into()));
            }
            if !password::verify(acceptance.password, existing.password_hash.clone()).await? {
                limiter.record_failure(&existing.id, remote);
                audit::record(store, &existing.id, AuditAction::InviteAccept, &invite.id, Outcome::Failure, remote)
                    .await;
                return Err(Error::invalid(
                    "password",
                    "The password is wrong. You already have an account: enter its password to accept the invite.",
                ));
            }
            if existing.disabled {
                return Err(Error::Forbidden("Your account is disabled; ask an admin to enable it.".into()));
            }
            let expires_at = account_expiry_after(existing.expires_at, &invite);
            (InviteAccount::Existing { user_id: existing.id, expires_at }, false)
        }
        None => {
            let display_name = validate_display_name(acceptance.display_name.as_deref().unwrap_or(""))?;
            password::check_new(&acceptance.password)?;
            if acceptance.password_confirm.as_deref() != Some(acceptance.password.as_str()) {
                return Err(Error::invalid("password_confirm", "the two passwords differ"));
            }
            let expires_at = match invite.role {
                InviteRole::Contractor => invite.access_expires_at,
                InviteRole::Engineer => None,
            };
            let user = NewUser {
                id: invite.email.clone(),
                display_name,
                role: GlobalRole::User,
                password_hash: Some(password::hash(acceptance.password).await?),
                expires_at,
            };
            (InviteAccount::Create(user), true)
        }
    };
    let user = store.redeem_invite(invite.id.clone(), now, account).await?;
    if created {
        audit::record(store, &user.id, AuditAction::UserCreate, &user.id, Outcome::Success, remote).await;
    }
    audit::record(store, &user.id, AuditAction::InviteAccept, &invite.id, Outcome::Success, remote).await;
    Ok((user, invite))
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn request(role: &str, access: Option<&str>) -> InviteRequest {
        InviteRequest {
            email: " Carol@Example.com ".into(),
            team: "platform".into(),
            role: role.into(),
            template: Some("python".into()),
            access_expires_at: access.map(Into::into),
            link_valid_hours: None,
        }
    }

    #[test]
    fn a_valid_contractor_invite_is_normalised() {
        let valid = validate_request(&request("contractor", Some("2026-03-01T12:00:00Z")), now()).unwrap();
        assert_eq!(
            valid,
            ValidInvite {
                email: "carol@example.com".into(),
                team: "platform".into(),
                role: InviteRole::Contractor,
                template: Some("python".into()),
                access_expires_at: Some("2026-03-01T12:00:00Z".parse().unwrap()),
                link_expires_at: "2026-01-04T00:00:00Z".parse().unwrap(),
            }
        );
    }

    #[rstest]
    #[case::contractor_without_end(request("contractor", None), "access_expires_at", "a contractor's access must end")]
    #[case::end_in_past(request("contractor", Some("2025-12-31T00:00:00Z")), "access_expires_at", "in the future")]
    #[case::end_too_far(request("contractor", Some("2027-06-01T00:00:00Z")), "access_expires_at", "within 366 days")]
    #[case::end_not_a_time(request("contractor", Some("next friday")), "access_expires_at", "RFC 3339")]
    #[case::unknown_role(request("lead", None), "role", "use contractor or engineer")]
    #[case::bad_email(InviteRequest { email: "carol".into(), ..request("engineer", None) }, "email", "needs an @")]
    #[case::team_upper(InviteRequest { team: "Platform".into(), ..request("engineer", None) }, "team", "lowercase")]
    #[case::team_digit_first(InviteRequest { team: "1team".into(), ..request("engineer", None) }, "team", "starting with a letter")]
    #[case::team_too_long(InviteRequest { team: "t".repeat(41), ..request("engineer", None) }, "team", "at most 40")]
    #[case::team_empty(InviteRequest { team: "".into(), ..request("engineer", None) }, "team", "not a valid name")]
    #[case::template_trailing_dash(InviteRequest { template: Some("python-".into()), ..request("engineer", None) }, "template", "not ending with '-'")]
    #[case::template_markup(InviteRequest { template: Some("<b>".into()), ..request("engineer", None) }, "template", "not a valid name")]
    #[case::link_zero_hours(InviteRequest { link_valid_hours: Some(0), ..request("engineer", None) }, "link_valid_hours", "1 to 720")]
    #[case::link_too_long(InviteRequest { link_valid_hours: Some(721), ..request("engineer", None) }, "link_valid_hours", "1 to 720")]
    fn invalid_invites_name_the_field(#[case] request: InviteRequest, #[case] field: &str, #[case] message: &str) {
        let error = validate_request(&request, now()).unwrap_err();
        assert_eq!(error.field(), Some(field), "{error}");
        assert!(error.to_string().contains(message), "{error}");
    }

    #[rstest]
    #[case::engineer_without_end(request("engineer", None), None)]
    #[case::template_with_dot(InviteRequest { template: Some("java.17".into()), ..request("engineer", None) }, None)]
    #[case::no_template(InviteRequest { template: None, ..request("engineer", None) }, None)]
    #[case::blank_template(InviteRequest { template: Some(" ".into()), ..request("engineer", None) }, None)]
    #[case::engineer_with_end(request("engineer", Some("2026-02-01T00:00:00Z")), Some("2026-02-01T00:00:00Z"))]
    fn valid_invites(#[case] request: InviteRequest, #[case] access: Option<&str>) {
        let valid = validate_request(&request, now()).unwrap();
        assert_eq!(valid.access_expires_at, access.map(|a| a.parse().unwrap()));
    }

    #[rstest]
    #[case::permanent_stays_permanent(None, "contractor", Some(20), None)]
    #[case::contractor_extended(Some(10), "contractor", Some(20), Some(20))]
    #[case::contractor_not_shortened(Some(30), "contractor", Some(20), Some(30))]
    #[case::contractor_made_engineer(Some(10), "engineer", None, None)]
    fn an_existing_accounts_expiry(
        #[case] current: Option<i64>,
        #[case] role: &str,
        #[case] granted: Option<i64>,
        #[case] expected: Option<i64>,
    ) {
        let day = |d: i64| now() + SignedDuration::from_hours(24 * d);
        let invite = Invite {
            id: "i".into(),
            email: "carol@example.com".into(),
            team: "platform".into(),
            role: InviteRole::parse(role).unwrap(),
            template: None,
            access_expires_at: granted.map(day),
            link_expires_at: day(1),
            created_by: "lead@example.com".into(),
            created_at: now(),
            used_at: None,
        };
        assert_eq!(account_expiry_after(current.map(day), &invite), expected.map(day));
    }
}
