//! Forward auth through a real ingress controller (issue #24): Traefik, built from its Go module,
//! routes the Ingress the real controllers render for a desktop on the test cluster's real node,
//! asking the portal's `/auth/verify` first (the `deskpod-auth@file` middleware the controller's
//! `--traefik-middleware` names). The owner's websocket reaches the desktop's VNC server; a member
//! of another team, a signed-up user in no team and an anonymous browser are refused by the
//! portal's answer, and so is every header and path trick of the issue (a client's
//! `X-Original-URL` or `X-Forwarded-Host` naming their own desktop, dot-segments).
//!
//! Runs when `DESKPOD_REAL_NODE=1` (`tests/run` sets it); otherwise it returns at once.

mod common;
mod kube_common;

use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use common::Browser;
use deskpod_controller::api::{Team, WorkspacePhase};
use deskpod_controller::run::Settings;
use deskpod_controller::workspace::render::ForwardAuth;
use deskpod_portal::backend::NewWorkspace;
use deskpod_portal::http::desktop::verify::{ForwardAuthSettings, ForwardedHeaders, RouteMode};
use deskpod_portal::serve::{Limits, serve};
use deskpod_portal::store::GlobalRole;
use deskpod_testsupport::TestCluster;
use deskpod_testsupport::traefik::{AUTH_MIDDLEWARE, Traefik};
use kube::api::{Api, PostParams};
use kube_common::{Fixture, ONE_CONTROLLER, WAIT, wait_team_ready};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const BASE_DOMAIN: &str = "desk.test";
const WORKSPACE: &str = "dev";

/// A way to name another desktop than the host's: its name, the headers it adds, the path.
type Trick<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);

/// One HTTP/1.1 request to Traefik for `host`: the status and the body's first bytes.
async fn get(traefik: &Traefik, host: &str, path: &str, extra_headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(traefik.address).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in extra_headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("Traefik answers within 10 s")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, response)
}

/// Opens the desktop's websocket through Traefik with `cookie`; the first message, or the refusal.
async fn websocket(traefik: &Traefik, host: &str, cookie: &str) -> Result<Vec<u8>, String> {
    let mut request = format!("ws://{}/websockify", traefik.address).into_client_request().unwrap();
    request.headers_mut().insert("host", HeaderValue::from_str(host).unwrap());
    request.headers_mut().insert("cookie", HeaderValue::from_str(cookie).unwrap());
    request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("binary"));
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.map_err(|e| e.to_string())?;
    use futures::StreamExt;
    let first = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .map_err(|_| "no message within 10 s".to_owned())?
        .ok_or("closed")?
        .map_err(|e| e.to_string())?;
    Ok(first.into_data().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_traefik_only_the_workspace_s_own_people_reach_its_desktop() {
    if std::env::var("DESKPOD_REAL_NODE").as_deref() != Ok("1") {
        eprintln!("skipped: set DESKPOD_REAL_NODE=1 (with a cluster started by `testcluster up --real-node`)");
        return;
    }
    let _one = ONE_CONTROLLER.lock().await;
    let mut settings = Settings::new(BASE_DOMAIN);
    settings.route.auth = ForwardAuth::Traefik { middleware: AUTH_MIDDLEWARE.into() };
    let template = json!({
        "displayName": "Python", "image": "deskpod/desktop-python:latest", "imagePullPolicy": "IfNotPresent",
        "homeSize": "1Gi", "shmSize": "256Mi", "homeStorageClassName": "real-node",
        "resources": { "cpuRequest": "250m", "cpuLimit": "1", "memoryRequest": "512Mi", "memoryLimit": "1Gi" },
        "nodeSelector": { "deskpod.io/node": "real" },
        "tolerations": [{ "key": "deskpod.io/real-node", "operator": "Exists", "effect": "NoSchedule" }]
    });
    let f = Fixture::with_settings("ingress-auth", 2, false, template, settings).await;

    // Another team, with a member of its own.
    let other_team = format!("{}-other", f.team);
    let zed = format!("zed@{}.test", f.ns.name);
    let team: Team = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Team", "metadata": { "name": other_team },
        "spec": { "quota": { "workspaces": 1, "pods": 2, "storage": "2Gi", "cpu": "2", "memory": "2Gi" },
                  "members": [{ "user": zed, "role": "engineer" }] }
    }))
    .unwrap();
    Api::<Team>::all(f.client()).create(&PostParams::default(), &team).await.expect("create the other team");
    wait_team_ready(&f.client(), &other_team).await;
    f.portal.add_user(&zed, GlobalRole::User).await;

    // Alice's desktop, through the controller, on the real node.
    let backend = f.portal.state.backend.clone();
    let new = NewWorkspace {
        team: f.team.clone(),
        name: WORKSPACE.into(),
        owner: f.alice.clone(),
        template: f.template.clone(),
    };
    backend.create_workspace(new).await.expect("create the workspace");
    // Zed's own desktop, in his team: the one the tricks below name.
    let zeds = NewWorkspace {
        team: other_team.clone(),
        name: WORKSPACE.into(),
        owner: zed.clone(),
        template: f.template.clone(),
    };
    backend.create_workspace(zeds).await.expect("create zed's workspace");
    f.wait_phase(WORKSPACE, WorkspacePhase::Running).await;

    // The portal on a real port, answering forward auth for host-routed desktops under the
    // controller's base domain, trusting Traefik's X-Forwarded-* headers only.
    let forward_auth = ForwardAuthSettings::new(RouteMode::Host, BASE_DOMAIN, ForwardedHeaders::XForwarded).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let portal_address = listener.local_addr().unwrap();
    let app = f.portal.app().layer(axum::Extension(forward_auth));
    let portal = tokio::spawn(serve(listener, app, Limits::default(), std::future::pending()));

    let cluster = TestCluster::shared();
    let namespace = format!("team-{}", f.team);
    let traefik = Traefik::start(
        &cluster.dir.join(format!("traefik-{}", f.ns.name)),
        &cluster.kubeconfig,
        &[&namespace],
        &format!("http://{portal_address}/auth/verify"),
    );
    let host = format!("{WORKSPACE}.{}.{BASE_DOMAIN}", f.team);

    // Traefik routes the host once it has read the Ingress: until then it answers 404.
    let since = Instant::now();
    loop {
        // (Refused connections too, until it listens.)
        let status = match TcpStream::connect(traefik.address).await {
            Ok(_) => get(&traefik, &host, "/", &[]).await.0,
            Err(_) => 0,
        };
        if status != 404 && status != 0 {
            assert_eq!(status, 401, "anonymous: the portal's answer, not the desktop's");
            break;
        }
        assert!(since.elapsed() < WAIT, "Traefik did not route {host} within {WAIT:?}:\n{}", traefik.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let cookie = |browser: &Browser| browser.cookie_header();
    let alice = Browser::signed_in(&f.portal, &f.alice).await;
    let zed = Browser::signed_in(&f.portal, &zed).await;
    let mallory = Browser::signed_in(&f.portal, &f.mallory).await;

    // The owner reaches the desktop: the VNC server's greeting arrives through Traefik.
    let greeting = websocket(&traefik, &host, &cookie(&alice)).await.expect("the owner's websocket opens");
    assert!(greeting.starts_with(b"RFB 003."), "not a VNC greeting: {greeting:?}");

    // A member of another team and a user in no team are refused; so is every trick that names a
    // desktop they may open (zed's own team) while the ingress serves alice's.
    let own = format!("{WORKSPACE}.{other_team}.{BASE_DOMAIN}");
    let tricks: Vec<Trick> = vec![
        ("plain", vec![], "/"),
        ("X-Original-URL", vec![("X-Original-URL", format!("http://{own}/"))], "/"),
        ("X-Forwarded-Host", vec![("X-Forwarded-Host", own.clone())], "/"),
        ("X-Forwarded-Uri", vec![("X-Forwarded-Uri", format!("/workspaces/{other_team}/{WORKSPACE}/"))], "/"),
        ("dot-segments", vec![], "/workspaces/x/y/../../../"),
        ("encoded dot-segments", vec![], "/%2e%2e/%2e%2e/"),
    ];
    for (who, browser) in [("zed (another team)", &zed), ("mallory (no team)", &mallory)] {
        for (trick, headers, path) in &tricks {
            let mut all: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
            let cookie = cookie(browser);
            all.push(("Cookie", &cookie));
            let (status, response) = get(&traefik, &host, path, &all).await;
            assert_eq!(status, 403, "{who}, {trick}: {response}");
            assert!(response.contains("not allowed to open this workspace"), "{who}, {trick}: {response}");
        }
        let refused = websocket(&traefik, &host, &cookie(browser)).await.expect_err("another's websocket opens");
        assert!(refused.contains("403"), "{who}: {refused}");
    }
    // And alice with her cookie, asking in a header for zed's team's desktop, is judged by the
    // host the ingress serves (hers): allowed, reaching her own desktop only.
    let (status, response) =
        get(&traefik, &host, "/", &[("Cookie", &cookie(&alice)), ("X-Original-URL", &format!("http://{own}/"))]).await;
    assert!(status != 401 && status != 403, "alice on her own desktop: {response}");

    drop(traefik);
    portal.abort();
}
