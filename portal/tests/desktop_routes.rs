//! The desktop module's plain HTTP routes, driven in-process: forward auth for ingress
//! controllers and the noVNC files the desktop view loads.

mod common;
mod desktop_common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use deskpod_portal::TeamRole;
use deskpod_portal::backend::Phase;
use deskpod_portal::store::GlobalRole;
use desktop_common::TestBackend;

use common::{Browser, Portal};

async fn portal() -> (Portal, Arc<TestBackend>) {
    let backend = TestBackend::new();
    backend.add_team("platform", false);
    backend.add_workspace("platform", "one", "alice@example.com", Phase::Running, None);
    backend.add_workspace("platform", "stopped", "alice@example.com", Phase::Stopped, None);
    let mut portal = Portal::new().await;
    portal.state = portal.state.clone().with_backend(backend.clone());
    for user in ["alice", "bob"] {
        portal.add_user(&format!("{user}@example.com"), GlobalRole::User).await;
        backend.set_member(&format!("{user}@example.com"), "platform", TeamRole::Engineer, None);
    }
    (portal, backend)
}

/// A case: what it is, the session cookie, the forwarded headers, the answer.
type Case<'a> = (&'a str, Option<&'a str>, &'a [(&'a str, &'a str)], StatusCode);

async fn verify(portal: &Portal, cookie: Option<&str>, headers: &[(&str, &str)]) -> StatusCode {
    let mut request = Request::get("/auth/verify");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    portal.send(request.body(Body::empty()).unwrap()).await.status
}

#[tokio::test]
async fn forward_auth_answers_200_401_403() {
    let (portal, _) = portal().await;
    let cookie =
        |browser: &Browser| browser.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
    let alice = cookie(&Browser::signed_in(&portal, "alice@example.com").await);
    let bob = cookie(&Browser::signed_in(&portal, "bob@example.com").await);
    let by_host = [("x-forwarded-host", "one.platform.desk.example.com"), ("x-forwarded-uri", "/vnc.html")];
    let by_path =
        [("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/platform/one/websockify")];
    let by_url = [("x-original-url", "https://desk.example.com/workspaces/platform/one/")];
    let unknown = [("x-forwarded-host", "nope.platform.desk.example.com")];
    let other_team = [("x-forwarded-host", "one.data.desk.example.com")];
    let no_workspace = [("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/api/v1/me")];
    #[rustfmt::skip]
    let table: &[Case] = &[
        ("owner by host", Some(&alice), &by_host, StatusCode::OK),
        ("owner by path", Some(&alice), &by_path, StatusCode::OK),
        ("owner by original URL", Some(&alice), &by_url, StatusCode::OK),
        // Forward auth decides who, not whether the desktop runs.
        ("owner, stopped", Some(&alice), &[("x-forwarded-uri", "/workspaces/platform/stopped/")], StatusCode::OK),
        ("other member", Some(&bob), &by_host, StatusCode::FORBIDDEN),
        ("unknown workspace", Some(&alice), &unknown, StatusCode::FORBIDDEN),
        ("team not theirs", Some(&alice), &other_team, StatusCode::FORBIDDEN),
        ("no workspace named", Some(&alice), &no_workspace, StatusCode::FORBIDDEN),
        ("not signed in", None, &by_host, StatusCode::UNAUTHORIZED),
        ("forged session", Some("deskpod_session=a.b.c"), &by_host, StatusCode::UNAUTHORIZED),
    ];
    for (case, cookie, headers, expected) in table {
        assert_eq!(verify(&portal, *cookie, headers).await, *expected, "{case}");
    }
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
