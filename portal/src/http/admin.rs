//! Pages for platform admins: `GET /admin/audit`, the audit log newest first (who did what to
//! which object, how it ended, when and from where). Everyone else gets a 403 page; the header
//! links the page for admins only ([`super::Nav`]). The same log is `GET /api/v1/audit` as JSON.
//!
//! Teams and templates have their own modules ([`super::admin_teams`], [`super::admin_templates`]);
//! they share the admin check and the audit record written here.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CACHE_CONTROL;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jiff::Timestamp;

use super::{Nav, Page, PageError};
use crate::auth::CurrentUser;
use crate::authz::can_read_audit;
use crate::error::Error;
use crate::state::AppState;
use crate::store::{AuditRecord, Outcome};

/// How many entries the page shows.
pub const AUDIT_PAGE_ENTRIES: u32 = 200;

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/audit", get(audit_log))
}

/// Refuses everyone but active platform admins, saying what is for admins.
pub(crate) fn require_admin(user: &CurrentUser, what: &str) -> Result<(), Error> {
    if crate::authz::account_is_active(&user.user, Timestamp::now()) && user.user.is_admin() {
        Ok(())
    } else {
        Err(Error::Forbidden(format!("{what} are for platform admins.")))
    }
}

/// Records an admin change and how it ended: refusals of permission as `denied`, other errors as
/// `failure`.
pub(crate) async fn audit_change<T>(
    state: &AppState,
    user: &CurrentUser,
    action: crate::audit::AuditAction,
    object: &str,
    remote: Option<std::net::IpAddr>,
    result: &Result<T, Error>,
) {
    let outcome = match result {
        Ok(_) => Outcome::Success,
        Err(Error::Forbidden(_)) => Outcome::Denied,
        Err(_) => Outcome::Failure,
    };
    crate::audit::record(state.store.as_ref(), user.id(), action, object, outcome, remote).await;
}

/// One audit entry as the page shows it.
struct AuditLine {
    at: String,
    actor: String,
    action: String,
    object: String,
    outcome: &'static str,
    address: String,
}

impl AuditLine {
    fn new(record: AuditRecord) -> Self {
        let entry = record.entry;
        Self {
            at: entry.at.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
            actor: entry.actor,
            action: entry.action,
            object: entry.object,
            outcome: entry.outcome.as_str(),
            address: entry.remote_addr.unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "admin_audit.html")]
struct AuditPage {
    nav: Option<Nav>,
    entries: Vec<AuditLine>,
    limit: u32,
}

async fn audit_log(State(state): State<AppState>, user: CurrentUser) -> Result<Response, PageError> {
    if !can_read_audit(&user.user, Timestamp::now()) {
        return Err(Error::Forbidden("The audit log is for platform admins.".into()).into());
    }
    let entries = state.store.audit_log(AUDIT_PAGE_ENTRIES).await?;
    let page = AuditPage {
        nav: Nav::of(&user),
        entries: entries.into_iter().map(AuditLine::new).collect(),
        limit: AUDIT_PAGE_ENTRIES,
    };
    let mut response = Page(page).into_response();
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
