//! Invites through the router: who may create them, accepting once, expiry, and the audit log.

mod common;

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use common::{Browser, PASSWORD, Portal};
use deskpod_portal::store::{GlobalRole, Invite, InviteRole, NewInvite, User};
use deskpod_portal::token::hash_secret;
use deskpod_portal::{InviteHook, TeamRole};
use futures::future::BoxFuture;
use jiff::{SignedDuration, Timestamp};
use rstest::rstest;
use serde_json::json;

const NEW_PASSWORD: &str = "a brand new passphrase";

fn in_days(days: i64) -> String {
    (Timestamp::now() + SignedDuration::from_hours(24 * days)).to_string()
}

/// Creates an invite as `lead` (a lead of `platform`) through the API; returns its JSON.
async fn invite_as(portal: &Portal, lead: &str, request: serde_json::Value) -> serde_json::Value {
    let mut browser = Browser::signed_in(portal, lead).await;
    let csrf = browser.session_csrf(portal).await;
    let reply = browser.api(portal, Method::POST, "/api/v1/invites", Some(&csrf), Some(&request.to_string())).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.json()
}

async fn portal_with_lead() -> Portal {
    let portal = Portal::new().await;
    portal.add_user("lead@example.com", GlobalRole::User).await;
    portal.set_role("lead@example.com", "platform", TeamRole::Lead);
    portal
}

fn contractor_request() -> serde_json::Value {
    json!({
        "email": "Carol@Example.com",
        "team": "platform",
        "role": "contractor",
        "template": "python",
        "access_expires_at": in_days(30),
    })
}

/// The path of an invite URL (`http://127.0.0.1:8080/invite/dpi_...` → `/invite/dpi_...`).
fn path_of(url: &serde_json::Value) -> String {
    let url = url.as_str().unwrap();
    assert!(url.starts_with("http://127.0.0.1:8080/invite/dpi_"), "{url}");
    url.trim_start_matches("http://127.0.0.1:8080").to_owned()
}

/// Opens the invite page and accepts it as a new account.
async fn accept_new(
    portal: &Portal,
    browser: &mut Browser,
    path: &str,
    password: &str,
    confirm: &str,
) -> common::Reply {
    let page = browser.get(portal, path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let csrf = page.csrf_field();
    let fields =
        [("csrf", csrf.as_str()), ("display_name", "Carol"), ("password", password), ("password_confirm", confirm)];
    browser.post(portal, path, &fields).await
}

#[tokio::test]
async fn a_lead_invites_a_contractor_who_accepts_once() {
    let portal = portal_with_lead().await;
    let invite = invite_as(&portal, "lead@example.com", contractor_request()).await;
    assert_eq!(invite["email"], "carol@example.com");
    assert_eq!(invite["role"], "contractor");
    assert_eq!(invite["template"], "python");
    let path = path_of(&invite["url"]);

    let mut carol = Browser::new();
    let page = carol.get(&portal, &path).await;
    assert!(page.body.contains("Join team platform"), "{}", page.body);
    assert!(page.body.contains("Your access ends"), "the page shows the access expiry");
    assert!(page.body.contains("<strong>python</strong> desktop"));
    assert_eq!(page.headers["cache-control"], "no-store");

    let accepted = accept_new(&portal, &mut carol, &path, NEW_PASSWORD, NEW_PASSWORD).await;
    assert_eq!(accepted.status, StatusCode::SEE_OTHER, "{}", accepted.body);
    assert_eq!(accepted.location(), "/", "the default hook lands on the home page");
    assert!(carol.cookies.contains_key("deskpod_session"), "the invitee is signed in");
    let home = carol.get(&portal, "/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.body.contains("carol@example.com"));

    let account = portal.store().user("carol@example.com").await.unwrap().unwrap();
    assert_eq!(account.role, GlobalRole::User);
    assert_eq!(
        account.expires_at.unwrap().as_second(),
        invite["access_expires_at"].as_str().unwrap().parse::<Timestamp>().unwrap().as_second()
    );
    let reply = Browser::new().sign_in(&portal, "carol@example.com", NEW_PASSWORD).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "the chosen password works");

    let again = Browser::new().get(&portal, &path).await;
    assert_eq!(again.status, StatusCode::GONE);
    assert!(again.body.contains("already been used"), "{}", again.body);
    let mut replay = Browser::new();
    let csrf = replay.get(&portal, "/signin").await.csrf_field();
    let fields = [
        ("csrf", csrf.as_str()),
        ("display_name", "Mallory"),
        ("password", NEW_PASSWORD),
        ("password_confirm", NEW_PASSWORD),
    ];
    let reply = replay.post(&portal, &path, &fields).await;
    assert_eq!(reply.status, StatusCode::GONE, "posting to a used link is refused too");
    assert!(!replay.cookies.contains_key("deskpod_session"));
    assert_eq!(portal.store().user("carol@example.com").await.unwrap().unwrap().display_name, "Carol");
}

#[tokio::test]
async fn an_expired_or_unknown_link_is_refused_with_a_clear_page() {
    let portal = portal_with_lead().await;
    let token = "dpi_expired-token-for-the-test-000000000000000000";
    let expired = NewInvite {
        id: "expired1".into(),
        token_hash: hash_secret(token),
        email: "carol@example.com".into(),
        team: "platform".into(),
        role: InviteRole::Engineer,
        template: None,
        access_expires_at: None,
        link_expires_at: Timestamp::now() - SignedDuration::from_secs(1),
        created_by: "lead@example.com".into(),
    };
    portal.store().create_invite(expired).await.unwrap();
    let mut browser = Browser::new();
    let reply = browser.get(&portal, &format!("/invite/{token}")).await;
    assert_eq!(reply.status, StatusCode::GONE);
    assert!(reply.body.contains("This invite link has expired. Ask your team lead for a new one."));

    let csrf = browser.get(&portal, "/signin").await.csrf_field();
    let fields = [
        ("csrf", csrf.as_str()),
        ("display_name", "Carol"),
        ("password", NEW_PASSWORD),
        ("password_confirm", NEW_PASSWORD),
    ];
    let reply = browser.post(&portal, &format!("/invite/{token}"), &fields).await;
    assert_eq!(reply.status, StatusCode::GONE);
    assert!(portal.store().user("carol@example.com").await.unwrap().is_none(), "no account was created");

    for unknown in ["dpi_nothing", "not-even-a-token"] {
        let reply = Browser::new().get(&portal, &format!("/invite/{unknown}")).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert!(reply.body.contains("This invite link is not valid"), "{}", reply.body);
    }
}

#[rstest]
#[case::short_password("short", "short", "at least 12 characters")]
#[case::passwords_differ(NEW_PASSWORD, "another passphrase!", "the two passwords differ")]
#[tokio::test]
async fn a_bad_password_keeps_the_invite_open(#[case] password: &str, #[case] confirm: &str, #[case] message: &str) {
    let portal = portal_with_lead().await;
    let invite = invite_as(&portal, "lead@example.com", contractor_request()).await;
    let path = path_of(&invite["url"]);
    let mut carol = Browser::new();
    let reply = accept_new(&portal, &mut carol, &path, password, confirm).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.contains(message), "{}", reply.body);
    assert!(reply.body.contains(r#"value="Carol""#), "the name is kept");
    assert!(!carol.cookies.contains_key("deskpod_session"));
    assert!(portal.store().user("carol@example.com").await.unwrap().is_none());

    let reply = accept_new(&portal, &mut carol, &path, NEW_PASSWORD, NEW_PASSWORD).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "the invite still works");
}

#[tokio::test]
async fn accepting_without_the_csrf_token_is_refused_and_the_invite_stays_open() {
    let portal = portal_with_lead().await;
    let path = path_of(&invite_as(&portal, "lead@example.com", contractor_request()).await["url"]);
    let mut carol = Browser::new();
    carol.get(&portal, &path).await;
    let fields = [("display_name", "Carol"), ("password", NEW_PASSWORD), ("password_confirm", NEW_PASSWORD)];
    let reply = carol.post(&portal, &path, &fields).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.body.contains("nothing was changed"), "{}", reply.body);
    assert!(!carol.cookies.contains_key("deskpod_session"));
    assert!(portal.store().user("carol@example.com").await.unwrap().is_none());
    assert_eq!(carol.get(&portal, &path).await.status, StatusCode::OK, "the invite is still open");
}

#[tokio::test]
async fn an_existing_account_accepts_with_its_own_password_and_keeps_it() {
    let portal = portal_with_lead().await;
    portal.add_user("carol@example.com", GlobalRole::User).await;
    let request = json!({"email": "carol@example.com", "team": "platform", "role": "engineer"});
    let path = path_of(&invite_as(&portal, "lead@example.com", request).await["url"]);

    let mut browser = Browser::new();
    let page = browser.get(&portal, &path).await;
    assert!(page.body.contains("You already have an account"), "{}", page.body);
    let csrf = page.csrf_field();
    let reply = browser.post(&portal, &path, &[("csrf", &csrf), ("password", NEW_PASSWORD)]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "the invite cannot reset someone's password");
    assert!(reply.body.contains("The password is wrong"));
    let reply = browser.post(&portal, &path, &[("csrf", &csrf), ("password", PASSWORD)]).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(Browser::new().sign_in(&portal, "carol@example.com", PASSWORD).await.status, StatusCode::SEE_OTHER);
}

/// A hook like the workspace backend's: remembers the invite and sends the invitee to their desktop.
struct StartDesktop(std::sync::Mutex<Vec<(String, String)>>);

impl InviteHook for StartDesktop {
    fn invite_accepted<'a>(
        &'a self,
        invite: &'a Invite,
        user: &'a User,
    ) -> BoxFuture<'a, deskpod_portal::Result<String>> {
        self.0.lock().unwrap().push((invite.team.clone(), user.id.clone()));
        let target = format!("/workspaces/{}/{}", invite.team, invite.template.as_deref().unwrap_or("none"));
        Box::pin(async move { Ok(target) })
    }
}

#[tokio::test]
async fn the_invite_hook_decides_where_the_invitee_lands() {
    let mut portal = portal_with_lead().await;
    let hook = Arc::new(StartDesktop(Default::default()));
    portal.state = portal.state.clone().with_invite_hook(hook.clone());
    let path = path_of(&invite_as(&portal, "lead@example.com", contractor_request()).await["url"]);
    let reply = accept_new(&portal, &mut Browser::new(), &path, NEW_PASSWORD, NEW_PASSWORD).await;
    assert_eq!(reply.location(), "/workspaces/platform/python");
    assert_eq!(*hook.0.lock().unwrap(), [("platform".to_owned(), "carol@example.com".to_owned())]);
}

#[rstest]
#[case::engineer_of_the_team("engineer", TeamRole::Engineer, "platform", StatusCode::FORBIDDEN)]
#[case::contractor_of_the_team("contractor", TeamRole::Contractor, "platform", StatusCode::FORBIDDEN)]
#[case::lead_of_another_team("other-lead", TeamRole::Lead, "data", StatusCode::FORBIDDEN)]
#[case::lead_of_the_team("lead", TeamRole::Lead, "platform", StatusCode::CREATED)]
#[tokio::test]
async fn only_leads_of_the_team_and_admins_invite(
    #[case] who: &str,
    #[case] role: TeamRole,
    #[case] team: &str,
    #[case] status: StatusCode,
) {
    let portal = Portal::new().await;
    let email = format!("{who}@example.com");
    portal.add_user(&email, GlobalRole::User).await;
    portal.set_role(&email, team, role);
    let mut browser = Browser::signed_in(&portal, &email).await;
    let csrf = browser.session_csrf(&portal).await;
    let body = contractor_request().to_string();
    let reply = browser.api(&portal, Method::POST, "/api/v1/invites", Some(&csrf), Some(&body)).await;
    assert_eq!(reply.status, status, "{}", reply.body);
    if status == StatusCode::FORBIDDEN {
        assert_eq!(reply.json()["error"], "only leads of team platform (and admins) can invite people to it");
        assert!(!reply.body.contains("dpi_"));
    }
}

#[tokio::test]
async fn an_admin_invites_to_any_team() {
    let portal = Portal::new().await;
    portal.add_user("admin@example.com", GlobalRole::Admin).await;
    let invite = invite_as(&portal, "admin@example.com", contractor_request()).await;
    assert_eq!(invite["team"], "platform");
}

#[rstest]
#[case::contractor_without_end(json!({"email": "c@example.com", "team": "platform", "role": "contractor"}), "access_expires_at")]
#[case::bad_email(json!({"email": "carol", "team": "platform", "role": "engineer"}), "email")]
#[case::bad_team(json!({"email": "c@example.com", "team": "Platform!", "role": "engineer"}), "team")]
#[case::bad_role(json!({"email": "c@example.com", "team": "platform", "role": "admin"}), "role")]
#[case::bad_template(json!({"email": "c@example.com", "team": "platform", "role": "engineer", "template": "../x"}), "template")]
#[tokio::test]
async fn bad_invites_name_the_field(#[case] request: serde_json::Value, #[case] field: &str) {
    let portal = portal_with_lead().await;
    let mut browser = Browser::signed_in(&portal, "lead@example.com").await;
    let csrf = browser.session_csrf(&portal).await;
    let reply = browser.api(&portal, Method::POST, "/api/v1/invites", Some(&csrf), Some(&request.to_string())).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert_eq!(reply.json()["field"], field);
}

#[tokio::test]
async fn the_audit_log_records_sign_in_tokens_and_invites_for_admins_only() {
    let portal = portal_with_lead().await;
    portal.add_user("admin@example.com", GlobalRole::Admin).await;
    let mut lead = Browser::from_addr("127.0.0.7:1234");
    lead.sign_in(&portal, "lead@example.com", "wrong password...").await;
    assert_eq!(lead.sign_in(&portal, "lead@example.com", PASSWORD).await.status, StatusCode::SEE_OTHER);
    let csrf = lead.session_csrf(&portal).await;
    let body = json!({"name": "ci", "scopes": ["invites:write"]}).to_string();
    let token = lead.api(&portal, Method::POST, "/api/v1/tokens", Some(&csrf), Some(&body)).await.json();
    let invite = portal
        .api(Method::POST, "/api/v1/invites", token["secret"].as_str(), Some(&contractor_request().to_string()))
        .await;
    assert_eq!(invite.status, StatusCode::CREATED, "{}", invite.body);
    let invite = invite.json();
    accept_new(&portal, &mut Browser::new(), &path_of(&invite["url"]), NEW_PASSWORD, NEW_PASSWORD).await;

    let lead_reads = lead.api(&portal, Method::GET, "/api/v1/audit", None, None).await;
    assert_eq!(lead_reads.status, StatusCode::FORBIDDEN);
    assert_eq!(lead_reads.json()["error"], "the audit log is for platform admins");

    let admin = Browser::signed_in(&portal, "admin@example.com").await;
    let log = admin.api(&portal, Method::GET, "/api/v1/audit?limit=50", None, None).await;
    assert_eq!(log.status, StatusCode::OK, "{}", log.body);
    let entries: Vec<(String, String, String, String)> = log.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let field = |name: &str| e[name].as_str().unwrap_or_default().to_owned();
            (field("actor"), field("action"), field("object"), field("outcome"))
        })
        .collect();
    let oldest_first: Vec<_> = entries.iter().rev().cloned().collect();
    let s = |a: &str, b: &str, c: &str, d: &str| (a.to_owned(), b.to_owned(), c.to_owned(), d.to_owned());
    assert_eq!(
        oldest_first,
        [
            s("lead@example.com", "signin", "lead@example.com", "failure"),
            s("lead@example.com", "signin", "lead@example.com", "success"),
            s("lead@example.com", "token.create", token["id"].as_str().unwrap(), "success"),
            s("lead@example.com", "invite.create", "platform/carol@example.com", "success"),
            s("carol@example.com", "user.create", "carol@example.com", "success"),
            s("carol@example.com", "invite.accept", invite["id"].as_str().unwrap(), "success"),
            s("admin@example.com", "signin", "admin@example.com", "success"),
        ]
    );
    let first = &log.json()["entries"][6];
    assert_eq!(first["remote_addr"], "127.0.0.7");
    assert!(first["at"].as_str().unwrap().parse::<Timestamp>().is_ok());

    let limited = admin.api(&portal, Method::GET, "/api/v1/audit?limit=2", None, None).await;
    assert_eq!(limited.json()["entries"].as_array().unwrap().len(), 2);
    let bad = admin.api(&portal, Method::GET, "/api/v1/audit?limit=lots", None, None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["field"], "limit");
}
