//! The desktop module's plain HTTP routes, driven in-process: forward auth for ingress
//! controllers and the noVNC files the desktop view loads.

mod common;
mod desktop_common;

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use deskpod_portal::TeamRole;
use deskpod_portal::backend::Phase;
use deskpod_portal::http::desktop::verify::{ForwardAuthSettings, ForwardedHeaders, RouteMode};
use deskpod_portal::store::GlobalRole;
use desktop_common::TestBackend;
use tower::ServiceExt;

use common::{Browser, Portal};

async fn portal() -> (Portal, Arc<TestBackend>) {
    let backend = TestBackend::new();
    backend.add_team("platform", false);
    backend.add_workspace("platform", "one", "alice@example.com", Phase::Running, None);
    backend.add_workspace("platform", "stopped", "alice@example.com", Phase::Stopped, None);
    backend.add_team("beta", false);
    backend.add_workspace("beta", "engb", "carol@example.com", Phase::Running, None);
    let mut portal = Portal::new().await;
    portal.state = portal.state.clone().with_backend(backend.clone());
    for (user, team) in [("alice", "platform"), ("bob", "platform"), ("carol", "beta")] {
        portal.add_user(&format!("{user}@example.com"), GlobalRole::User).await;
        backend.set_member(&format!("{user}@example.com"), team, TeamRole::Engineer, None);
    }
    (portal, backend)
}

/// A case: what it is, the session cookie, the forwarded headers, the answer.
type Case<'a> = (&'a str, Option<&'a str>, &'a [(&'a str, &'a str)], StatusCode);

async fn verify(
    portal: &Portal,
    settings: &ForwardAuthSettings,
    cookie: Option<&str>,
    headers: &[(&str, &str)],
) -> StatusCode {
    let mut request = Request::get("/auth/verify");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let app = portal.app().layer(Extension(settings.clone()));
    app.oneshot(request.body(Body::empty()).unwrap()).await.unwrap().status()
}

fn cookie(browser: &Browser) -> String {
    browser.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
}

async fn check(portal: &Portal, settings: &ForwardAuthSettings, table: &[Case<'_>]) {
    for (case, cookie, headers, expected) in table {
        assert_eq!(verify(portal, settings, *cookie, headers).await, *expected, "{case} ({:?})", settings.route_mode);
    }
}

#[tokio::test]
async fn forward_auth_in_host_mode_answers_for_the_host_the_ingress_serves() {
    let (portal, _) = portal().await;
    let settings = ForwardAuthSettings::new(RouteMode::Host, "desk.example.com", ForwardedHeaders::XForwarded).unwrap();
    let alice = cookie(&Browser::signed_in(&portal, "alice@example.com").await);
    let bob = cookie(&Browser::signed_in(&portal, "bob@example.com").await);
    let carol = cookie(&Browser::signed_in(&portal, "carol@example.com").await);
    let by_host = [("x-forwarded-host", "one.platform.desk.example.com"), ("x-forwarded-uri", "/vnc.html")];
    let beta = [("x-forwarded-host", "engb.beta.desk.example.com"), ("x-forwarded-uri", "/vnc.html")];
    // Each trick a member of `platform` tried for the desktop of team `beta`.
    let beta_with_own_path =
        [("x-forwarded-host", "engb.beta.desk.example.com"), ("x-forwarded-uri", "/workspaces/platform/one/")];
    let beta_with_client_url = [
        ("x-forwarded-host", "engb.beta.desk.example.com"),
        ("x-original-url", "https://one.platform.desk.example.com/"),
    ];
    let beta_by_appended_host = [("x-forwarded-host", "one.platform.desk.example.com, engb.beta.desk.example.com")];
    let own_path_on_the_domain =
        [("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/platform/one/")];
    let client_url_only = [("x-original-url", "https://one.platform.desk.example.com/")];
    let unknown = [("x-forwarded-host", "nope.platform.desk.example.com")];
    let other_domain = [("x-forwarded-host", "one.platform.evil.test")];
    #[rustfmt::skip]
    let table: &[Case] = &[
        ("owner", Some(&alice), &by_host, StatusCode::OK),
        ("owner of beta's desktop", Some(&carol), &beta, StatusCode::OK),
        // Forward auth decides who, not whether the desktop runs.
        ("owner, stopped", Some(&alice), &[("x-forwarded-host", "stopped.platform.desk.example.com")], StatusCode::OK),
        ("other member", Some(&bob), &by_host, StatusCode::FORBIDDEN),
        ("other team", Some(&alice), &beta, StatusCode::FORBIDDEN),
        ("other team, own workspace's path", Some(&alice), &beta_with_own_path, StatusCode::FORBIDDEN),
        ("other team, client's X-Original-URL", Some(&alice), &beta_with_client_url, StatusCode::FORBIDDEN),
        ("other team, appended host", Some(&alice), &beta_by_appended_host, StatusCode::FORBIDDEN),
        ("a path on the domain in host mode", Some(&alice), &own_path_on_the_domain, StatusCode::FORBIDDEN),
        ("X-Original-URL where X-Forwarded-* is trusted", Some(&alice), &client_url_only, StatusCode::FORBIDDEN),
        ("unknown workspace", Some(&alice), &unknown, StatusCode::FORBIDDEN),
        ("other domain", Some(&alice), &other_domain, StatusCode::FORBIDDEN),
        ("no workspace named", Some(&alice), &[], StatusCode::FORBIDDEN),
        ("not signed in", None, &by_host, StatusCode::UNAUTHORIZED),
        ("forged session", Some("deskpod_session=a.b.c"), &by_host, StatusCode::UNAUTHORIZED),
    ];
    check(&portal, &settings, table).await;
}

#[tokio::test]
async fn forward_auth_in_path_mode_refuses_paths_that_lead_elsewhere() {
    let (portal, _) = portal().await;
    let alice = cookie(&Browser::signed_in(&portal, "alice@example.com").await);
    let carol = cookie(&Browser::signed_in(&portal, "carol@example.com").await);
    let on_domain = |uri: &'static str| [("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", uri)];
    let own = on_domain("/workspaces/platform/one/websockify");
    let beta = on_domain("/workspaces/beta/engb/");
    let dot_dot = on_domain("/workspaces/platform/one/../../beta/engb/");
    let encoded = on_domain("/workspaces/platform/one/%2e%2e/%2e%2e/beta/engb/");
    let upper_encoded = on_domain("/workspaces/platform/one/%2E%2E/%2E%2E/beta/engb/");
    let encoded_slash = on_domain("/workspaces/platform/one%2f..%2f..%2fbeta/engb/");
    let double_encoded = on_domain("/workspaces/platform/one/%252e%252e/%252e%252e/beta/engb/");
    let backslash = on_domain("/workspaces/platform/one/..\\..\\beta/engb/");
    let beta_host_own_path =
        [("x-forwarded-host", "engb.beta.desk.example.com"), ("x-forwarded-uri", "/workspaces/platform/one/")];
    let client_url = [("x-original-url", "https://desk.example.com/workspaces/platform/one/")];
    let xfwd = ForwardAuthSettings::new(RouteMode::Path, "desk.example.com", ForwardedHeaders::XForwarded).unwrap();
    #[rustfmt::skip]
    let table: &[Case] = &[
        ("owner", Some(&alice), &own, StatusCode::OK),
        ("owner of beta's desktop", Some(&carol), &beta, StatusCode::OK),
        ("other team", Some(&alice), &beta, StatusCode::FORBIDDEN),
        ("dot-segments", Some(&alice), &dot_dot, StatusCode::FORBIDDEN),
        ("encoded dot-segments", Some(&alice), &encoded, StatusCode::FORBIDDEN),
        ("upper-case encoded dot-segments", Some(&alice), &upper_encoded, StatusCode::FORBIDDEN),
        ("encoded slashes", Some(&alice), &encoded_slash, StatusCode::FORBIDDEN),
        ("double encoding", Some(&alice), &double_encoded, StatusCode::FORBIDDEN),
        ("backslashes", Some(&alice), &backslash, StatusCode::FORBIDDEN),
        ("dot-segments, owner of the target too", Some(&carol), &dot_dot, StatusCode::FORBIDDEN),
        ("a desktop's host in path mode", Some(&alice), &beta_host_own_path, StatusCode::FORBIDDEN),
        ("X-Original-URL where X-Forwarded-* is trusted", Some(&alice), &client_url, StatusCode::FORBIDDEN),
        ("not signed in", None, &own, StatusCode::UNAUTHORIZED),
    ];
    check(&portal, &xfwd, table).await;

    // Behind ingress-nginx only its X-Original-URL counts, and the same tricks fail through it.
    let nginx = ForwardAuthSettings::new(RouteMode::Path, "desk.example.com", ForwardedHeaders::XOriginalUrl).unwrap();
    let url = |u: &'static str| [("x-original-url", u)];
    let own_url = url("https://desk.example.com/workspaces/platform/one/");
    let beta_url = url("https://desk.example.com/workspaces/beta/engb/");
    let dot_dot_url = url("https://desk.example.com/workspaces/platform/one/../../beta/engb/");
    let encoded_url = url("https://desk.example.com/workspaces/platform/one/%2e%2e/%2e%2e/beta/engb/");
    #[rustfmt::skip]
    let table: &[Case] = &[
        ("owner", Some(&alice), &own_url, StatusCode::OK),
        ("other team", Some(&alice), &beta_url, StatusCode::FORBIDDEN),
        ("dot-segments", Some(&alice), &dot_dot_url, StatusCode::FORBIDDEN),
        ("encoded dot-segments", Some(&alice), &encoded_url, StatusCode::FORBIDDEN),
        ("X-Forwarded-* where X-Original-URL is trusted", Some(&alice), &own, StatusCode::FORBIDDEN),
    ];
    check(&portal, &nginx, table).await;
}

#[tokio::test]
async fn the_novnc_files_are_served_from_the_package() {
    desktop_common::require_tools(&["/usr/share/novnc/core/rfb.js"]);
    let (portal, _) = portal().await;
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let rfb = portal.send(get("/novnc/core/rfb.js")).await;
    assert_eq!(rfb.status, StatusCode::OK);
    assert_eq!(rfb.headers[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    assert!(rfb.body.contains("export default class RFB"));
    for path in [
        "/novnc/../../etc/passwd",
        "/novnc/core/%2e%2e/%2e%2e/etc/passwd",
        "/novnc/core/missing.js",
        "/novnc/vnc.html.bak",
    ] {
        assert_eq!(portal.send(get(path)).await.status, StatusCode::NOT_FOUND, "{path}");
    }
    let script = portal.send(get("/static/desktop.js")).await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(script.body.contains("import RFB from '/novnc/core/rfb.js'"));
}

#[tokio::test]
async fn a_websocket_route_asked_for_a_page_says_so() {
    let (portal, _) = portal().await;
    let alice = Browser::signed_in(&portal, "alice@example.com").await;
    let origin = "http://127.0.0.1:8080";
    let mut request = Request::get("/workspaces/platform/one/websockify").header(header::ORIGIN, origin);
    request = request
        .header(header::COOKIE, alice.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "));
    let reply = portal.send(request.body(Body::empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.contains("takes a websocket connection"), "{}", reply.body);
}
