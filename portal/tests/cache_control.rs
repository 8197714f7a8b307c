//! Nothing the portal answers is kept by a browser or proxy cache (issue #24): every response of
//! every route carries `Cache-Control: no-store` (pages and API answers hold CSRF tokens, invite
//! links, tokens, names), signed in or not, whatever the status; only the static assets say
//! otherwise. The route table below is checked against the routes in `portal/src/http`, so a new
//! route without an entry here fails this test.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use axum::body::Body;
use axum::http::{Method, Request, header};
use common::{Browser, Portal, Reply};
use deskpod_portal::store::GlobalRole;

/// Every route: method, the path as the router declares it, a path to request.
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/", "/"),
    ("GET", "/signin", "/signin"),
    ("POST", "/signin", "/signin"),
    ("POST", "/signout", "/signout"),
    ("GET", "/auth/oidc/start", "/auth/oidc/start"),
    ("GET", "/auth/oidc/callback", "/auth/oidc/callback?code=c&state=s"),
    ("GET", "/account/tokens", "/account/tokens"),
    ("POST", "/account/tokens", "/account/tokens"),
    ("POST", "/account/tokens/{id}/revoke", "/account/tokens/1/revoke"),
    ("GET", "/invite/{token}", "/invite/not-a-real-invite-token"),
    ("POST", "/invite/{token}", "/invite/not-a-real-invite-token"),
    ("GET", "/templates", "/templates"),
    ("GET", "/workspaces/new", "/workspaces/new"),
    ("POST", "/workspaces", "/workspaces"),
    ("POST", "/workspaces/{team}/{name}/start", "/workspaces/platform/dev/start"),
    ("POST", "/workspaces/{team}/{name}/stop", "/workspaces/platform/dev/stop"),
    ("POST", "/workspaces/{team}/{name}/delete", "/workspaces/platform/dev/delete"),
    ("GET", "/workspaces/events", "/workspaces/events"),
    ("GET", "/teams/{team}", "/teams/platform"),
    ("GET", "/workspaces/{team}/{name}/desktop", "/workspaces/platform/dev/desktop"),
    ("GET", "/workspaces/{team}/{name}/websockify", "/workspaces/platform/dev/websockify"),
    ("GET", "/workspaces/{team}/{name}/kasm/", "/workspaces/platform/dev/kasm/"),
    ("GET", "/workspaces/{team}/{name}/kasm/{*path}", "/workspaces/platform/dev/kasm/vnc.html"),
    ("GET", "/auth/verify", "/auth/verify"),
    ("GET", "/admin/audit", "/admin/audit"),
    ("GET", "/admin/teams", "/admin/teams"),
    ("POST", "/admin/teams", "/admin/teams"),
    ("GET", "/admin/teams/{team}", "/admin/teams/platform"),
    ("POST", "/admin/teams/{team}", "/admin/teams/platform"),
    ("GET", "/admin/templates", "/admin/templates"),
    ("POST", "/admin/templates", "/admin/templates"),
    ("GET", "/admin/templates/{template}", "/admin/templates/x"),
    ("POST", "/admin/templates/{template}", "/admin/templates/x"),
    ("POST", "/admin/templates/{template}/delete", "/admin/templates/x/delete"),
    ("GET", "/healthz", "/healthz"),
    ("GET", "/api/openapi.json", "/api/openapi.json"),
    ("GET", "/api/v1/me", "/api/v1/me"),
    ("GET", "/api/v1/tokens", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/{id}", "/api/v1/tokens/1"),
    ("POST", "/api/v1/invites", "/api/v1/invites"),
    ("GET", "/api/v1/audit", "/api/v1/audit"),
    ("GET", "/api/v1/workspaces", "/api/v1/workspaces"),
    ("POST", "/api/v1/workspaces", "/api/v1/workspaces"),
    ("GET", "/api/v1/workspaces/{team}/{name}", "/api/v1/workspaces/platform/dev"),
    ("DELETE", "/api/v1/workspaces/{team}/{name}", "/api/v1/workspaces/platform/dev"),
    ("POST", "/api/v1/workspaces/{team}/{name}/start", "/api/v1/workspaces/platform/dev/start"),
    ("POST", "/api/v1/workspaces/{team}/{name}/stop", "/api/v1/workspaces/platform/dev/stop"),
    ("GET", "/api/v1/templates", "/api/v1/templates"),
    ("GET", "/api/v1/teams/{team}", "/api/v1/teams/platform"),
    ("GET", "/api/v1/agents", "/api/v1/agents"),
    ("POST", "/api/v1/agents", "/api/v1/agents"),
    ("GET", "/api/v1/agents/{team}/{name}", "/api/v1/agents/platform/job-1"),
    ("DELETE", "/api/v1/agents/{team}/{name}", "/api/v1/agents/platform/job-1"),
    ("GET", "/api/v1/agents/{team}/{name}/logs", "/api/v1/agents/platform/job-1/logs"),
    ("GET", "/api/v1/admin/teams", "/api/v1/admin/teams"),
    ("GET", "/api/v1/admin/teams/{team}", "/api/v1/admin/teams/platform"),
    ("PUT", "/api/v1/admin/teams/{team}", "/api/v1/admin/teams/platform"),
    ("GET", "/api/v1/admin/templates", "/api/v1/admin/templates"),
    ("GET", "/api/v1/admin/templates/{template}", "/api/v1/admin/templates/x"),
    ("PUT", "/api/v1/admin/templates/{template}", "/api/v1/admin/templates/x"),
    ("DELETE", "/api/v1/admin/templates/{template}", "/api/v1/admin/templates/x"),
    // An unknown path is answered too.
    ("GET", "/no/such/page", "/no/such/page"),
    ("GET", "/api/v1/no/such/endpoint", "/api/v1/no/such/endpoint"),
];

/// Assets without secrets, cached on purpose: path → the `Cache-Control` they answer with.
const STATIC_ASSETS: &[(&str, &str)] = &[
    ("/static/portal.css", "public, max-age=3600"),
    ("/static/workspaces.css", "public, max-age=300"),
    ("/static/workspaces.js", "public, max-age=300"),
    ("/static/desktop.css", "no-cache"),
    ("/static/desktop.js", "no-cache"),
    ("/novnc/{*path}", "public, max-age=3600"),
];

/// The paths the routers in `portal/src/http` declare: `.route("…"` in each module (those under
/// `api/` nested in `/api/v1`, except the OpenAPI document), and the OIDC constants.
fn declared_routes() -> BTreeSet<String> {
    let http = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut declared = BTreeSet::from(["/auth/oidc/start".to_owned(), "/auth/oidc/callback".to_owned()]);
    let mut folders = vec![http.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            let prefix =
                if path.parent() == Some(&http.join("api")) && !path.ends_with("openapi.rs") { "/api/v1" } else { "" };
            for piece in source.split(".route(\"").skip(1) {
                declared.insert(format!("{prefix}{}", piece.split('"').next().unwrap()));
            }
        }
    }
    declared
}

#[test]
fn the_table_names_every_route() {
    let tested: BTreeSet<String> = ROUTES
        .iter()
        .map(|(_, route, _)| route.to_string())
        .chain(STATIC_ASSETS.iter().map(|(route, _)| route.to_string()))
        .collect();
    let missing: Vec<_> = declared_routes().difference(&tested).cloned().collect();
    assert!(missing.is_empty(), "routes without a Cache-Control case here: {missing:?}");
}

async fn request(portal: &Portal, method: &str, path: &str, session: Option<(&str, &str)>) -> Reply {
    let method: Method = method.parse().unwrap();
    let mut request = Request::builder().method(method.clone()).uri(path);
    let mut body = String::new();
    if let Some((cookie, csrf)) = session {
        request = request.header(header::COOKIE, cookie).header("x-csrf-token", csrf);
        body = format!("csrf={csrf}");
    }
    let request = if method == Method::GET {
        request.body(Body::empty())
    } else if path.starts_with("/api/") {
        request.header(header::CONTENT_TYPE, "application/json").body(Body::from("{}"))
    } else {
        request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(Body::from(body))
    };
    portal.send(request.unwrap()).await
}

#[tokio::test]
async fn every_route_answers_no_store_signed_in_or_not() {
    let portal = Portal::new().await;
    portal.add_user("admin@example.com", GlobalRole::Admin).await;
    portal.set_role("admin@example.com", "platform", deskpod_portal::TeamRole::Lead);
    let mut admin = Browser::signed_in(&portal, "admin@example.com").await;
    let csrf = admin.session_csrf(&portal).await;
    let cookie = admin.cookie_header();

    let mut wrong = Vec::new();
    // Signing out comes last, so the session stays valid for every other case.
    let sign_out_last =
        ROUTES.iter().filter(|route| route.1 != "/signout").chain(ROUTES.iter().filter(|route| route.1 == "/signout"));
    for &(method, _, path) in sign_out_last {
        for (who, session) in [("signed in", Some((cookie.as_str(), csrf.as_str()))), ("anonymous", None)] {
            let reply = request(&portal, method, path, session).await;
            let cache_control = reply.headers.get_all(header::CACHE_CONTROL).iter().collect::<Vec<_>>();
            if cache_control != ["no-store"] {
                wrong.push(format!("{method} {path} ({who}, {}): {cache_control:?}", reply.status));
            }
        }
    }
    assert!(wrong.is_empty(), "responses that may be cached:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn static_assets_are_cached_and_carry_no_secret() {
    let portal = Portal::new().await;
    for &(route, expected) in STATIC_ASSETS {
        let path = route.replace("{*path}", "core/rfb.js");
        let reply = request(&portal, "GET", &path, None).await;
        let cache_control = reply.headers.get(header::CACHE_CONTROL).map(|value| value.to_str().unwrap());
        // noVNC is served from a directory the test harness may not have: the 404 is no-store.
        if reply.status.is_success() {
            assert_eq!(cache_control, Some(expected), "{path}");
            assert!(reply.headers.get(header::SET_COOKIE).is_none(), "{path} sets a cookie");
        } else {
            assert_eq!(cache_control, Some("no-store"), "{path} answered {}", reply.status);
        }
    }
}
