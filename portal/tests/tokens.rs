//! API tokens through the router: the page, the JSON API, CSRF, scopes, revocation, expiry.

mod common;

use axum::http::{Method, StatusCode};
use common::{Browser, Portal};
use deskpod_portal::store::{GlobalRole, NewApiToken};
use deskpod_portal::token::hash_secret;
use deskpod_portal::{Scope, TeamRole};
use rstest::rstest;
use serde_json::json;

/// Creates a token through the API with a signed-in browser; returns (id, secret).
async fn create_token(portal: &Portal, browser: &mut Browser, scopes: &[&str]) -> (String, String) {
    let csrf = browser.session_csrf(portal).await;
    let body = json!({"name": "ci", "scopes": scopes}).to_string();
    let reply = browser.api(portal, Method::POST, "/api/v1/tokens", Some(&csrf), Some(&body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let json = reply.json();
    (json["id"].as_str().unwrap().to_owned(), json["secret"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn the_page_creates_a_token_shows_its_secret_once_and_revokes_it() {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut browser = Browser::signed_in(&portal, "alice@example.com").await;
    let page = browser.get(&portal, "/account/tokens").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("You have no API tokens."));
    assert!(!page.body.contains("audit:read"), "a non-admin is not offered the audit scope");
    let csrf = page.csrf_field();

    let fields = [
        ("csrf", csrf.as_str()),
        ("name", "laptop"),
        ("scope", "workspaces:read"),
        ("scope", "tokens:write"),
        ("expires_in_days", "30"),
    ];
    let created = browser.post(&portal, "/account/tokens", &fields).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.headers["cache-control"], "no-store");
    let marker = r#"<code class="secret">"#;
    let start = created.body.find(marker).expect("the secret is shown") + marker.len();
    let secret: String = created.body[start..].chars().take_while(|&c| c != '<').collect();
    assert!(secret.starts_with("dpt_"), "{secret}");
    assert_eq!(secret.len(), 4 + 43);

    let listed = browser.get(&portal, "/account/tokens").await;
    assert!(!listed.body.contains(&secret), "the secret is never shown again");
    assert!(listed.body.contains("laptop") && listed.body.contains("workspaces:read tokens:write"));

    let me = portal.api(Method::GET, "/api/v1/me", Some(&secret), None).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.json()["id"], "alice@example.com");
    assert_eq!(me.json()["auth"], "token");
    assert_eq!(me.json()["scopes"], json!(["workspaces:read", "tokens:write"]));
    assert!(me.json().get("csrf_token").is_none(), "token callers need no CSRF token");

    let id = portal.store().tokens_of("alice@example.com").await.unwrap()[0].id.clone();
    let revoked = browser.post(&portal, &format!("/account/tokens/{id}/revoke"), &[("csrf", &csrf)]).await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER);
    assert!(browser.get(&portal, "/account/tokens").await.body.contains("revoked"));
    let me = portal.api(Method::GET, "/api/v1/me", Some(&secret), None).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    assert_eq!(me.json()["error"], "the API token is unknown, expired or revoked");
}

#[rstest]
#[case::no_csrf(None)]
#[case::wrong_csrf(Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))]
#[case::another_sessions_csrf(Some("other"))]
#[tokio::test]
async fn a_form_post_without_the_right_csrf_token_is_refused_and_changes_nothing(#[case] csrf: Option<&str>) {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut browser = Browser::signed_in(&portal, "alice@example.com").await;
    let other_csrf = Browser::signed_in(&portal, "alice@example.com").await.session_csrf(&portal).await;
    let mut fields = vec![("name", "laptop"), ("scope", "workspaces:read"), ("expires_in_days", "30")];
    match csrf {
        Some("other") => fields.push(("csrf", other_csrf.as_str())),
        Some(csrf) => fields.push(("csrf", csrf)),
        None => {}
    }
    let reply = browser.post(&portal, "/account/tokens", &fields).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.body.contains("security token is missing or does not match your session"), "{}", reply.body);
    assert!(portal.store().tokens_of("alice@example.com").await.unwrap().is_empty(), "nothing was created");
}

#[tokio::test]
async fn a_cookie_json_request_needs_the_csrf_header_and_a_token_request_does_not() {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut browser = Browser::signed_in(&portal, "alice@example.com").await;
    let body = json!({"name": "ci", "scopes": ["workspaces:read", "tokens:write"]}).to_string();

    let reply = browser.api(&portal, Method::POST, "/api/v1/tokens", None, Some(&body)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.json()["error"].as_str().unwrap().contains("X-CSRF-Token"));
    let reply = browser.api(&portal, Method::POST, "/api/v1/tokens", Some("nonsense"), Some(&body)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(portal.store().tokens_of("alice@example.com").await.unwrap().is_empty(), "nothing was created");

    let me = browser.api(&portal, Method::GET, "/api/v1/me", None, None).await;
    assert_eq!(me.status, StatusCode::OK, "reading needs no CSRF token");
    let csrf = me.json()["csrf_token"].as_str().unwrap().to_owned();
    assert_eq!(csrf, browser.session_csrf(&portal).await, "the API and the pages agree on the token");

    let (_, secret) = create_token(&portal, &mut browser, &["workspaces:read", "tokens:write"]).await;
    let reply = portal.api(Method::POST, "/api/v1/tokens", Some(&secret), Some(&body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "bearer requests need no CSRF token: {}", reply.body);
    assert_eq!(portal.store().tokens_of("alice@example.com").await.unwrap().len(), 2);
}

#[tokio::test]
async fn tokens_are_listed_without_secrets_and_revoked_by_id() {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut browser = Browser::signed_in(&portal, "alice@example.com").await;
    let (id, secret) = create_token(&portal, &mut browser, &["tokens:write"]).await;

    let list = portal.api(Method::GET, "/api/v1/tokens", Some(&secret), None).await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(!list.body.contains(&secret));
    let tokens = &list.json()["tokens"];
    assert_eq!(tokens.as_array().unwrap().len(), 1);
    assert_eq!(tokens[0]["id"], id.as_str());
    assert_eq!(tokens[0]["state"], "active");
    assert_eq!(tokens[0]["scopes"], json!(["tokens:write"]));

    let reply = portal.api(Method::DELETE, &format!("/api/v1/tokens/{id}"), Some(&secret), None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = portal.api(Method::GET, "/api/v1/tokens", Some(&secret), None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "a revoked token is refused");
    let list = browser.api(&portal, Method::GET, "/api/v1/tokens", None, None).await;
    assert_eq!(list.json()["tokens"][0]["state"], "revoked");
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let secret = "dpt_expired-secret-for-the-test-0000000000000000";
    let expired = NewApiToken {
        id: "expired1".into(),
        user_id: "alice@example.com".into(),
        name: "old".into(),
        scopes: Scope::ALL.to_vec(),
        secret_hash: hash_secret(secret),
        expires_at: jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1),
    };
    portal.store().create_token(expired).await.unwrap();
    let reply = portal.api(Method::GET, "/api/v1/me", Some(secret), None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["error"], "the API token is unknown, expired or revoked");
}

#[rstest]
#[case::not_bearer("Basic YWxpY2U6cGFzc3dvcmQ=")]
#[case::unknown_token("Bearer dpt_unknown")]
#[case::not_a_token("Bearer eyJhbGciOiJIUzI1NiJ9.e30.x")]
#[tokio::test]
async fn other_authorization_headers_are_refused(#[case] header: &str) {
    let portal = Portal::new().await;
    let request =
        axum::http::Request::get("/api/v1/me").header("authorization", header).body(axum::body::Body::empty());
    let reply = portal.send(request.unwrap()).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.json()["error"].is_string());
}

#[tokio::test]
async fn user_b_cannot_revoke_user_as_token_and_learns_nothing() {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    portal.add_user("bob@example.com", GlobalRole::User).await;
    let mut alice = Browser::signed_in(&portal, "alice@example.com").await;
    let (alice_id, alice_secret) = create_token(&portal, &mut alice, &["workspaces:read"]).await;
    let mut bob = Browser::signed_in(&portal, "bob@example.com").await;
    let (_, bob_secret) = create_token(&portal, &mut bob, &["tokens:write"]).await;

    let foreign = portal.api(Method::DELETE, &format!("/api/v1/tokens/{alice_id}"), Some(&bob_secret), None).await;
    let missing = portal.api(Method::DELETE, "/api/v1/tokens/0000000000000000", Some(&bob_secret), None).await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        foreign.json()["error"].as_str().unwrap().replace(&alice_id, "ID"),
        missing.json()["error"].as_str().unwrap().replace("0000000000000000", "ID"),
        "someone else's token looks exactly like a missing one"
    );

    let csrf = bob.session_csrf(&portal).await;
    let page = bob.post(&portal, &format!("/account/tokens/{alice_id}/revoke"), &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);

    let list = portal.api(Method::GET, "/api/v1/tokens", Some(&bob_secret), None).await;
    assert!(!list.body.contains(&alice_id), "bob's list holds only his tokens");
    let me = portal.api(Method::GET, "/api/v1/me", Some(&alice_secret), None).await;
    assert_eq!(me.status, StatusCode::OK, "alice's token still works");
}

#[tokio::test]
async fn a_token_can_do_only_what_its_scopes_allow() {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    portal.set_role("alice@example.com", "platform", TeamRole::Lead);
    let mut browser = Browser::signed_in(&portal, "alice@example.com").await;
    let (id, read_only) = create_token(&portal, &mut browser, &["workspaces:read"]).await;

    let body = json!({"name": "x", "scopes": ["workspaces:read"]}).to_string();
    let reply = portal.api(Method::POST, "/api/v1/tokens", Some(&read_only), Some(&body)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.json()["error"], "this API token does not have the scope tokens:write");
    let reply = portal.api(Method::DELETE, &format!("/api/v1/tokens/{id}"), Some(&read_only), None).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let invite = json!({"email": "carol@example.com", "team": "platform", "role": "engineer"}).to_string();
    let reply = portal.api(Method::POST, "/api/v1/invites", Some(&read_only), Some(&invite)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    let (_, manager) = create_token(&portal, &mut browser, &["tokens:write"]).await;
    let body = json!({"name": "x", "scopes": ["tokens:write", "invites:write"]}).to_string();
    let reply = portal.api(Method::POST, "/api/v1/tokens", Some(&manager), Some(&body)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "a token cannot mint a stronger token");
    assert!(reply.json()["error"].as_str().unwrap().contains("lacks invites:write"));
    assert_eq!(portal.store().tokens_of("alice@example.com").await.unwrap().len(), 2, "nothing was created");
}

#[rstest]
#[case::empty_name(
    r#"{"name": " ", "scopes": ["workspaces:read"]}"#,
    StatusCode::BAD_REQUEST,
    Some("name"),
    "give the token a name"
)]
#[case::long_name(&format!(r#"{{"name": "{}", "scopes": ["workspaces:read"]}}"#, "n".repeat(65)), StatusCode::BAD_REQUEST, Some("name"), "at most 64 characters")]
#[case::no_scopes(
    r#"{"name": "ci", "scopes": []}"#,
    StatusCode::BAD_REQUEST,
    Some("scopes"),
    "choose at least one scope"
)]
#[case::unknown_scope(
    r#"{"name": "ci", "scopes": ["root"]}"#,
    StatusCode::BAD_REQUEST,
    Some("scopes"),
    "unknown scope \"root\""
)]
#[case::audit_for_non_admin(
    r#"{"name": "ci", "scopes": ["audit:read"]}"#,
    StatusCode::BAD_REQUEST,
    Some("scopes"),
    "admins only"
)]
#[case::too_long_lived(
    r#"{"name": "ci", "scopes": ["workspaces:read"], "expires_in_days": 366}"#,
    StatusCode::BAD_REQUEST,
    Some("expires_in_days"),
    "1 to 365 days"
)]
#[case::malformed(r#"{"name": "ci", "scopes": ["#, StatusCode::BAD_REQUEST, None, "the body is not valid JSON")]
#[case::not_json("name=ci", StatusCode::BAD_REQUEST, None, "the body is not valid JSON")]
#[case::missing_field(r#"{"name": "ci"}"#, StatusCode::BAD_REQUEST, None, "missing field `scopes`")]
#[case::unknown_field(
    r#"{"name": "ci", "scopes": [], "admin": true}"#,
    StatusCode::BAD_REQUEST,
    None,
    "unknown field `admin`"
)]
#[case::wrong_type(r#"{"name": 5, "scopes": []}"#, StatusCode::BAD_REQUEST, None, "invalid type")]
#[tokio::test]
async fn bad_token_requests_get_a_clear_json_error_and_create_nothing(
    #[case] body: &str,
    #[case] status: StatusCode,
    #[case] field: Option<&str>,
    #[case] message: &str,
) {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut browser = Browser::signed_in(&portal, "alice@example.com").await;
    let csrf = browser.session_csrf(&portal).await;
    let reply = browser.api(&portal, Method::POST, "/api/v1/tokens", Some(&csrf), Some(body)).await;
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/json");
    let json = reply.json();
    assert!(json["error"].as_str().unwrap().contains(message), "{json}");
    assert_eq!(json.get("field").and_then(|f| f.as_str()), field);
    assert!(portal.store().tokens_of("alice@example.com").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_is_refused_as_json() {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut browser = Browser::signed_in(&portal, "alice@example.com").await;
    let csrf = browser.session_csrf(&portal).await;
    let request = axum::http::Request::post("/api/v1/tokens")
        .header("cookie", format!("deskpod_session={}", browser.cookies["deskpod_session"]))
        .header("x-csrf-token", csrf)
        .header("content-type", "text/plain")
        .body(axum::body::Body::from(r#"{"name": "ci", "scopes": ["workspaces:read"]}"#))
        .unwrap();
    let reply = portal.send(request).await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(reply.json()["error"].as_str().unwrap().contains("Content-Type: application/json"));
}

#[tokio::test]
async fn unknown_api_paths_and_methods_answer_json() {
    let portal = Portal::new().await;
    let reply = portal.api(Method::GET, "/api/v1/nothing-here", None, None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"], "there is no API endpoint GET /api/v1/nothing-here");
    let reply = portal.api(Method::PUT, "/api/v1/tokens", None, None).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.json()["error"], "/api/v1/tokens does not accept PUT");
}
