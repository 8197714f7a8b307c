//! Signing in and out through the router: cookies, messages, the rate limits (per account and
//! address, per address, password checks at once), input sizes, trusted proxies, CSRF, redirects,
//! HSTS.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use common::{Browser, PASSWORD, Portal, Reply};
use cookie::{Cookie, SameSite};
use deskpod_portal::auth::VerifyGate;
use deskpod_portal::config::{IpNet, TrustedProxies};
use deskpod_portal::store::{GlobalRole, Outcome};
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

/// A sign-in from `peer` with these `X-Forwarded-For` headers, as a browser behind (or pretending
/// to be) a proxy would send it: the sign-in page first, then the form with its cookie.
async fn sign_in_from(portal: &Portal, peer: &str, forwarded_for: &[&str], email: &str, password: &str) -> Reply {
    let peer: SocketAddr = peer.parse().unwrap();
    let request = |method: Method, cookie: Option<&str>, body: Option<String>| {
        let mut builder = Request::builder().method(method).uri("/signin").header(header::ACCEPT, "text/html");
        for value in forwarded_for {
            builder = builder.header("x-forwarded-for", *value);
        }
        if let Some(cookie) = cookie {
            builder = builder.header(header::COOKIE, cookie);
        }
        let mut request = match body {
            Some(body) => builder
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .unwrap(),
            None => builder.body(Body::empty()).unwrap(),
        };
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    };
    let page = portal.send(request(Method::GET, None, None)).await;
    let cookie = page.set_cookies().into_iter().find(|c| c.starts_with("deskpod_csrf=")).expect("a pre-session cookie");
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let form =
        serde_urlencoded::to_string([("csrf", page.csrf_field().as_str()), ("email", email), ("password", password)])
            .unwrap();
    portal.send(request(Method::POST, Some(&cookie), Some(form))).await
}

fn retry_after(reply: &Reply) -> u64 {
    let value = reply.headers.get(header::RETRY_AFTER).unwrap_or_else(|| panic!("no Retry-After: {reply:?}"));
    value.to_str().unwrap().parse().unwrap()
}

fn with_trusted_proxies(portal: &mut Portal, networks: &[&str]) {
    let mut config = (*portal.state.config).clone();
    config.trusted_proxies = TrustedProxies::new(networks.iter().map(|net| IpNet::parse(net).unwrap()).collect());
    portal.state.config = Arc::new(config);
}

async fn audited_addresses(portal: &Portal) -> Vec<Option<String>> {
    portal.store().audit_log(100).await.unwrap().into_iter().map(|record| record.entry.remote_addr).collect()
}

#[tokio::test]
async fn one_address_cannot_spray_passwords_over_many_accounts() {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut sprayer = Browser::from_addr("192.0.2.10:40000");
    for i in 1..=20 {
        let reply = sprayer.sign_in(&portal, &format!("user{i}@example.com"), "Winter2026!").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "attempt {i}: {}", reply.body);
    }
    // Every account is refused from that address now, even with the right password, and is told when.
    let reply = sprayer.sign_in(&portal, "alice@example.com", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.body);
    assert!(reply.body.contains("Too many failed sign-ins from your address."), "{}", reply.body);
    let wait = retry_after(&reply);
    assert!((590..=600).contains(&wait), "the first failure leaves the ten-minute window: {wait}");
    assert!(reply.body.contains("Try again in 10 minutes."), "{}", reply.body);
    assert!(!sprayer.cookies.contains_key("deskpod_session"));
    // The refusal is audited as denied.
    let newest = &portal.store().audit_log(1).await.unwrap()[0].entry;
    assert_eq!((newest.actor.as_str(), newest.outcome), ("alice@example.com", Outcome::Denied));

    let reply = Browser::from_addr("198.51.100.20:40000").sign_in(&portal, "alice@example.com", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "other addresses are not affected");
}

#[tokio::test]
async fn the_per_account_limit_says_when_to_try_again() {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut attacker = Browser::from_addr("192.0.2.11:40000");
    for _ in 0..5 {
        attacker.sign_in(&portal, "alice@example.com", "guess guess guess").await;
    }
    let reply = attacker.sign_in(&portal, "alice@example.com", "guess guess guess").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert!((55..=60).contains(&retry_after(&reply)), "{:?}", reply.headers);
    assert!(reply.body.contains("Too many failed sign-ins to this account from your address."), "{}", reply.body);
}

#[tokio::test]
async fn password_checks_beyond_the_cap_are_answered_at_once_with_429() {
    let mut portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    // One check at a time and nobody waiting: parallel sign-ins beyond the first are turned away.
    portal.state.password_gate = Arc::new(VerifyGate::new(1, 0, Duration::from_secs(60)));
    let attempts = (0..8).map(|i| {
        let portal = &portal;
        async move {
            let started = Instant::now();
            let reply = sign_in_from(
                portal,
                &format!("192.0.2.{}:40000", 100 + i),
                &[],
                "alice@example.com",
                "wrong password!!",
            )
            .await;
            (reply, started.elapsed())
        }
    });
    let replies = futures::future::join_all(attempts).await;
    let busy: Vec<_> = replies.iter().filter(|(reply, _)| reply.status == StatusCode::TOO_MANY_REQUESTS).collect();
    assert!(!busy.is_empty(), "{:?}", replies.iter().map(|(r, _)| r.status).collect::<Vec<_>>());
    assert!(busy.len() < replies.len(), "one check ran");
    for (reply, _) in &replies {
        assert!(matches!(reply.status, StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS), "{reply:?}");
    }
    for (reply, _) in busy {
        assert_eq!(retry_after(reply), 1);
        assert!(reply.body.contains("too many sign-ins at once"), "{}", reply.body);
    }
    // A turned-away attempt does not count against the address, and the turn is given back.
    let reply = sign_in_from(&portal, "192.0.2.100:40000", &[], "alice@example.com", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
}

#[rstest]
#[case::huge_email(&"a".repeat(60_000), PASSWORD, "e-mail address has at most 254")]
#[case::long_email(&format!("{}@example.com", "a".repeat(243)), PASSWORD, "e-mail address has at most 254")]
#[case::huge_password("alice@example.com", &"p".repeat(1025), "password has at most 1024 bytes")]
#[tokio::test]
async fn oversized_input_is_refused_before_it_is_hashed_or_audited(
    #[case] email: &str,
    #[case] password: &str,
    #[case] message: &str,
) {
    let portal = Portal::new().await;
    portal.add_user("alice@example.com", GlobalRole::User).await;
    let before = portal.store().audit_log(100).await.unwrap().len();
    let started = Instant::now();
    let reply = Browser::new().sign_in(&portal, email, password).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert!(reply.body.contains(message), "{}", &reply.body[..reply.body.len().min(2000)]);
    assert!(reply.body.len() < 20_000, "the e-mail is not shown back: {} bytes", reply.body.len());
    assert_eq!(portal.store().audit_log(100).await.unwrap().len(), before, "nothing audited");
    assert!(started.elapsed() < Duration::from_secs(5));
    // An address at the limit is still checked as usual.
    let reply = Browser::new().sign_in(&portal, &format!("{}@example.com", "a".repeat(242)), PASSWORD).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let mut portal = Portal::new().await;
    with_trusted_proxies(&mut portal, &["10.0.0.0/8"]);
    portal.add_user("alice@example.com", GlobalRole::User).await;
    // Each attempt claims another client; all are the peer's, which the limiter locks out.
    for i in 0..5 {
        let spoofed = format!("198.51.100.{i}");
        let reply =
            sign_in_from(&portal, "203.0.113.9:4000", &[&spoofed], "alice@example.com", "guess guess guess").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let reply = sign_in_from(&portal, "203.0.113.9:4000", &["198.51.100.99"], "alice@example.com", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.body);
    let addresses = audited_addresses(&portal).await;
    assert!(addresses.iter().all(|a| a.as_deref() == Some("203.0.113.9")), "{addresses:?}");
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_for_the_limiter_and_the_audit_log() {
    let mut portal = Portal::new().await;
    with_trusted_proxies(&mut portal, &["10.0.0.0/8"]);
    portal.add_user("alice@example.com", GlobalRole::User).await;
    // The attacker behind the ingress locks themselves out, not everyone behind it.
    for _ in 0..5 {
        let reply = sign_in_from(
            &portal,
            "10.0.0.5:4000",
            &["6.6.6.6, 198.51.100.1"],
            "alice@example.com",
            "guess guess guess",
        )
        .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let attacker = sign_in_from(&portal, "10.0.0.5:4000", &["198.51.100.1"], "alice@example.com", PASSWORD).await;
    assert_eq!(attacker.status, StatusCode::TOO_MANY_REQUESTS);
    let alice = sign_in_from(&portal, "10.0.0.5:4000", &["198.51.100.2"], "alice@example.com", PASSWORD).await;
    assert_eq!(alice.status, StatusCode::SEE_OTHER, "{}", alice.body);

    let addresses = audited_addresses(&portal).await;
    assert_eq!(addresses[0].as_deref(), Some("198.51.100.2"), "{addresses:?}");
    assert!(addresses[1..].iter().all(|a| a.as_deref() == Some("198.51.100.1")), "{addresses:?}");
    assert!(!addresses.iter().any(|a| a.as_deref() == Some("10.0.0.5") || a.as_deref() == Some("6.6.6.6")));
}

#[rstest]
#[case::https("https://deskpod.example.com", Some("max-age=31536000"))]
#[case::http("http://127.0.0.1:8080", None)]
#[case::http_elsewhere("http://deskpod.internal", None)]
#[tokio::test]
async fn strict_transport_security_only_with_an_https_public_url(#[case] url: &str, #[case] hsts: Option<&str>) {
    let portal = Portal::with_url(url).await;
    for path in ["/signin", "/healthz", "/api/v1/me", "/no-such-page"] {
        let reply = Browser::new().get(&portal, path).await;
        let header = reply.headers.get(header::STRICT_TRANSPORT_SECURITY).map(|v| v.to_str().unwrap());
        assert_eq!(header, hsts, "{path}");
    }
}
