//! The signing key and passwords never appear in a response or a log line; token and invite
//! secrets appear only in the one response that creates them, never in a log line.
//!
//! Its own test binary, because it installs a global log subscriber that records everything.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::http::{Method, StatusCode};
use base64::Engine;
use common::{Browser, PASSWORD, Portal, Reply, SIGNING_KEY};
use deskpod_portal::TeamRole;
use deskpod_portal::account::{self, AdminBootstrap};
use deskpod_portal::store::GlobalRole;
use serde_json::json;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything a reply shows: status, headers and body.
fn shown(reply: &Reply) -> String {
    let headers: Vec<String> =
        reply.headers.iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or(""))).collect();
    format!("{}\n{}\n{}", reply.status, headers.join("\n"), reply.body)
}

#[tokio::test]
async fn secrets_stay_out_of_responses_and_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let portal = Portal::new().await;
    let mut replies: Vec<Reply> = Vec::new();

    let AdminBootstrap::Created { generated_password: Some(admin_password), .. } =
        account::ensure_admin(portal.store(), account::DEFAULT_ADMIN_EMAIL, None).await.unwrap()
    else {
        panic!("the first admin is created");
    };
    portal.add_user("lead@example.com", GlobalRole::User).await;
    portal.set_role("lead@example.com", "platform", TeamRole::Lead);

    let mut admin = Browser::new();
    replies.push(admin.sign_in(&portal, account::DEFAULT_ADMIN_EMAIL, "a wrong password").await);
    replies.push(admin.sign_in(&portal, account::DEFAULT_ADMIN_EMAIL, &admin_password).await);
    assert_eq!(replies.last().unwrap().status, StatusCode::SEE_OTHER);

    let mut lead = Browser::new();
    replies.push(lead.sign_in(&portal, "lead@example.com", PASSWORD).await);
    let page = lead.get(&portal, "/account/tokens").await;
    let csrf = page.csrf_field();
    replies.push(page);
    let created = lead
        .post(
            &portal,
            "/account/tokens",
            &[("csrf", &csrf), ("name", "ci"), ("scope", "invites:write"), ("expires_in_days", "7")],
        )
        .await;
    let marker = r#"<code class="secret">"#;
    let start = created.body.find(marker).unwrap() + marker.len();
    let token_secret: String = created.body[start..].chars().take_while(|&c| c != '<').collect();
    assert!(token_secret.starts_with("dpt_"));

    let request = json!({"email": "carol@example.com", "team": "platform", "role": "engineer"}).to_string();
    let invite = portal.api(Method::POST, "/api/v1/invites", Some(&token_secret), Some(&request)).await;
    assert_eq!(invite.status, StatusCode::CREATED, "{}", invite.body);
    let url = invite.json()["url"].as_str().unwrap().to_owned();
    let path = url.trim_start_matches("http://127.0.0.1:8080").to_owned();
    let invite_token = path.trim_start_matches("/invite/").to_owned();

    let new_password = "carols own passphrase";
    let mut carol = Browser::new();
    // The invite page's form posts back to its own URL, so it holds the token: it is the page the
    // link opens. It is checked for everything else.
    let mut invite_pages = Vec::new();
    let page = carol.get(&portal, &path).await;
    let csrf = page.csrf_field();
    invite_pages.push(page);
    invite_pages.push(
        carol
            .post(
                &portal,
                &path,
                &[
                    ("csrf", &csrf),
                    ("display_name", "Carol"),
                    ("password", "too short"),
                    ("password_confirm", "too short"),
                ],
            )
            .await,
    );
    replies.push(
        carol
            .post(
                &portal,
                &path,
                &[
                    ("csrf", &csrf),
                    ("display_name", "Carol"),
                    ("password", new_password),
                    ("password_confirm", new_password),
                ],
            )
            .await,
    );
    replies.push(carol.get(&portal, "/").await);
    replies.push(carol.api(&portal, Method::GET, "/api/v1/me", None, None).await);
    replies.push(admin.api(&portal, Method::GET, "/api/v1/audit", None, None).await);
    replies.push(portal.api(Method::GET, "/api/v1/tokens", Some(&token_secret), None).await);
    let csrf = lead.session_csrf(&portal).await;
    replies.push(lead.post(&portal, "/signout", &[("csrf", &csrf)]).await);

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("token.create") && logs.contains("invite.accept"), "the capture works: {logs}");

    let key_forms = [
        SIGNING_KEY.to_owned(),
        base64::engine::general_purpose::STANDARD.encode(SIGNING_KEY),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SIGNING_KEY),
    ];
    let passwords = [PASSWORD, admin_password.as_str(), "a wrong password", new_password, "too short"];
    for reply in replies.iter().chain(&invite_pages).chain([&created, &invite]) {
        let shown = shown(reply);
        for secret in key_forms.iter().map(String::as_str).chain(passwords) {
            assert!(!shown.contains(secret), "a response shows {secret:?}:\n{shown}");
        }
    }
    for reply in replies.iter().chain(&invite_pages) {
        let shown = shown(reply);
        assert!(!shown.contains(&token_secret), "only its creation shows the token secret:\n{shown}");
    }
    for reply in &replies {
        let shown = shown(reply);
        assert!(!shown.contains(&invite_token), "only its creation shows the invite link:\n{shown}");
    }
    for secret in
        key_forms.iter().map(String::as_str).chain(passwords).chain([token_secret.as_str(), invite_token.as_str()])
    {
        assert!(!logs.contains(secret), "the log shows {secret:?}");
    }
}
