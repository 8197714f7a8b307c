//! Signing in and out through the router: cookies, messages, the rate limit, CSRF, redirects.

mod common;

use axum::http::{Method, StatusCode};
use common::{Browser, PASSWORD, Portal};
use cookie::{Cookie, SameSite};
use deskpod_portal::store::GlobalRole;
use rstest::rstest;

fn session_cookie(set_cookies: &[String]) -> Cookie<'static> {
    let raw = set_cookies.iter().find(|c| c.starts_with("deskpod_session=")).expect("a session cookie is set");
    Cookie::parse(raw.clone()).unwrap()
}

#[rstest]
#[case::plain_http_on_loopback("http://127.0.0.1:8080", false)]
#[case::https("https://deskpod.example.com", true)]
#[case::plain_http_elsewhere("http://deskpod.internal", true)]
#[tokio::test]
async fn signing_in_sets_the_session_cookie_with_the_right_attributes(#[case] public_url: &str, #[case] secure: bool) {
    let portal = Portal::with_url(public_url).await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut browser = Browser::new();
    let page = browser.get(&portal, "/signin?next=/account/tokens").await;
    let csrf = page.csrf_field();
    let fields =
        [("csrf", csrf.as_str()), ("email", " Alice@Example.com"), ("password", PASSWORD), ("next", "/account/tokens")];
    let reply = browser.post(&portal, "/signin", &fields).await;

    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.location(), "/account/tokens");
    let cookie = session_cookie(&reply.set_cookies());
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.same_site(), Some(SameSite::Lax));
    assert_eq!(cookie.path(), Some("/"));
    assert_eq!(cookie.secure().unwrap_or(false), secure);
    assert_eq!(cookie.max_age(), Some(cookie::time::Duration::hours(12)));
    assert_eq!(cookie.value().split('.').count(), 3, "a JWT");

    let home = browser.get(&portal, "/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.body.contains("alice@example.com"), "{}", home.body);
}

#[rstest]
#[case::wrong_password("alice@example.com", "wrong password!!")]
#[case::unknown_account("nobody@example.com", PASSWORD)]
#[case::empty_password("alice@example.com", "")]
#[tokio::test]
async fn a_failed_sign_in_says_only_that_email_or_password_is_wrong(#[case] email: &str, #[case] password: &str) {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut browser = Browser::new();
    let reply = browser.sign_in(&portal, email, password).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.body.contains("E-mail or password is wrong."), "{}", reply.body);
    assert!(reply.set_cookies().iter().all(|c| !c.starts_with("deskpod_session=")));
    assert!(!browser.cookies.contains_key("deskpod_session"));
    assert!(reply.body.contains(&format!(r#"value="{email}""#)), "the e-mail is kept in the form");
}

#[tokio::test]
async fn a_disabled_account_cannot_sign_in() {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    portal.store().set_disabled("alice@example.com", true).await.unwrap();
    let reply = Browser::new().sign_in(&portal, "alice@example.com", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.body.contains("E-mail or password is wrong."));
}

#[tokio::test]
async fn five_failures_a_minute_lock_that_account_from_that_address() {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut attacker = Browser::from_addr("127.0.0.66:40000");
    for attempt in 1..=5 {
        let reply = attacker.sign_in(&portal, "alice@example.com", "guess guess guess").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let reply = attacker.sign_in(&portal, "alice@example.com", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "even the right password is refused now");
    assert!(reply.body.contains("Too many failed sign-ins"), "{}", reply.body);
    assert!(!attacker.cookies.contains_key("deskpod_session"));

    let reply = Browser::from_addr("127.0.0.1:40001").sign_in(&portal, "alice@example.com", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "alice from her own address is not locked out");
}

#[tokio::test]
async fn a_sign_in_post_without_the_pre_session_token_is_refused() {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut browser = Browser::new();
    browser.get(&portal, "/signin").await;
    let reply = browser.post(&portal, "/signin", &[("email", "alice@example.com"), ("password", PASSWORD)]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.body.contains("nothing was changed"), "{}", reply.body);

    // A token from another browser's sign-in page does not fit this browser's cookie.
    let mut other = Browser::new();
    let foreign = other.get(&portal, "/signin").await.csrf_field();
    let fields = [("csrf", foreign.as_str()), ("email", "alice@example.com"), ("password", PASSWORD)];
    let reply = browser.post(&portal, "/signin", &fields).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(!browser.cookies.contains_key("deskpod_session"));
}

#[rstest]
#[case::protocol_relative("//evil.example.com/")]
#[case::absolute("https://evil.example.com/")]
#[case::backslash("/\\evil.example.com")]
#[tokio::test]
async fn sign_in_never_redirects_off_site(#[case] next: &str) {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut browser = Browser::new();
    let csrf = browser.get(&portal, "/signin").await.csrf_field();
    let fields = [("csrf", csrf.as_str()), ("email", "alice@example.com"), ("password", PASSWORD), ("next", next)];
    let reply = browser.post(&portal, "/signin", &fields).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.location(), "/");
}

#[tokio::test]
async fn pages_send_strangers_to_sign_in_and_the_api_answers_401_json() {
    let portal = Portal::new().await;
    let reply = Browser::new().get(&portal, "/account/tokens?x=1").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.location(), "/signin?next=%2Faccount%2Ftokens%3Fx%3D1");

    let reply = portal.api(Method::GET, "/api/v1/me", None, None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["error"], "Sign in first.");
}

#[tokio::test]
async fn signing_out_revokes_the_session_even_if_its_cookie_is_replayed() {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut browser = Browser::signed_in(&portal, "alice@example.com").await;
    let stolen = browser.cookies.clone();
    let csrf = browser.session_csrf(&portal).await;

    let reply = browser.post(&portal, "/signout", &[("csrf", &csrf)]).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.location(), "/signin");
    assert!(!browser.cookies.contains_key("deskpod_session"), "the cookie is removed");

    let mut replay = Browser { cookies: stolen, addr: browser.addr };
    let reply = replay.get(&portal, "/").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "a signed-out session no longer works");
    assert!(reply.location().starts_with("/signin"));
    assert!(!replay.cookies.contains_key("deskpod_session"), "the dead cookie is cleared");
}

#[tokio::test]
async fn signing_out_without_the_csrf_token_is_refused_and_the_session_lives_on() {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut browser = Browser::signed_in(&portal, "alice@example.com").await;
    let reply = browser.post(&portal, "/signout", &[]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.body.contains("security token is missing"), "{}", reply.body);
    assert_eq!(browser.get(&portal, "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_disabled_user_is_signed_out() {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut browser = Browser::signed_in(&portal, "alice@example.com").await;
    portal.store().set_disabled("alice@example.com", true).await.unwrap();
    let reply = browser.get(&portal, "/").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(!browser.cookies.contains_key("deskpod_session"));
}

#[tokio::test]
async fn a_contractor_is_signed_out_when_their_access_ends() {
    let portal = Portal::new().await;
    let hash = deskpod_portal::auth::password::hash(PASSWORD.into()).await.unwrap();
    let ends = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2);
    let contractor = deskpod_portal::store::NewUser {
        id: "carol@example.com".into(),
        display_name: "Carol".into(),
        role: GlobalRole::User,
        password_hash: Some(hash),
        expires_at: Some(ends),
    };
    portal.store().create_user(contractor).await.unwrap();
    let mut browser = Browser::signed_in(&portal, "carol@example.com").await;
    assert_eq!(browser.get(&portal, "/").await.status, StatusCode::OK);

    // Timestamps are stored in whole seconds: wait until the stored end has passed.
    let stored = portal.store().user("carol@example.com").await.unwrap().unwrap().expires_at.unwrap();
    let wait = stored.duration_since(jiff::Timestamp::now()).as_millis().max(0) as u64 + 50;
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;

    let reply = browser.get(&portal, "/").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(!browser.cookies.contains_key("deskpod_session"));
    let reply = Browser::new().sign_in(&portal, "carol@example.com", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "and cannot sign in again");
}

#[tokio::test]
async fn what_people_type_is_escaped() {
    let portal = Portal::new().await;
    let reply = Browser::new().sign_in(&portal, "<script>alert(1)</script>@example.com", "x").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(!reply.body.contains("<script>alert(1)"), "{}", reply.body);
    assert!(reply.body.contains("&#60;script&#62;") || reply.body.contains("&lt;script&gt;"), "{}", reply.body);
}
