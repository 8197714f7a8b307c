//! The whole way to a desktop in a real browser, against the real test cluster and the real
//! controllers: Debian's Chromium, driven by playwright-core (`tests/browser/workspace.mjs`),
//! signs in to a portal on the Kubernetes backend, creates a workspace through the form, watches
//! "My workspaces" until it shows Running, opens the desktop view, and noVNC connects through the
//! portal's proxy to a REAL Xvnc behind Debian's websockify; the canvas shows the X display's
//! pattern. The screenshot is kept at `target/browser-cluster/desktop.png`.
//!
//! kwok's pods run nothing, so this test stands in for the desktop container, in a documented,
//! test-only way: as soon as the controller has made the workspace's VNC Secret, the test starts
//! Xvnc with the password from that Secret, puts websockify in front of it, and sets the
//! Workspace annotation `deskpod.io/desktop-endpoint: 127.0.0.1:<websockify port>`, which the
//! portal's proxy honours because its backend was built with
//! `KubernetesOptions { allow_endpoint_override: true }` (`--allow-desktop-endpoint-override`).
//! The browser opens the desktop only after it has seen Running AND the test has told it (a line
//! `endpoint-registered` on its stdin) that the annotation is in place, so the order cannot race.
//! Needs `portal/tests/setup-desktop-tools` (Chromium, Node, playwright-core, Xvnc, websockify).

mod common;
mod desktop_common;
mod kube_common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use deskpod_controller::api::Workspace;
use deskpod_controller::workspace::render::{VNC_PASSWORD_KEY, vnc_secret_name};
use deskpod_portal::backend::kubernetes::DESKTOP_ENDPOINT_ANNOTATION;
use deskpod_portal::store::GlobalRole;
use deskpod_testsupport::wait_for;
use desktop_common::{Websockify, Xvnc, require_tools};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube_common::{Fixture, ONE_CONTROLLER, WAIT};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// The browser's whole run: sign-in, creating, reaching Running, connecting.
const BROWSER_WITHIN: Duration = Duration::from_secs(180);
const WORKSPACE: &str = "dev";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_creates_a_workspace_watches_it_run_and_sees_its_desktop_in_the_browser() {
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let playwright = browser_dir.join("node_modules/playwright-core");
    require_tools(&["/usr/bin/chromium", "/usr/bin/node", playwright.to_str().unwrap(), "/usr/bin/xsetroot"]);
    require_tools(&["/usr/bin/Xtigervnc", "/usr/bin/vncpasswd", "/usr/bin/websockify"]);

    let _one = ONE_CONTROLLER.lock().await;
    let setup = Instant::now();
    let f = Fixture::new("portal-browser", 2, true).await;
    let served = ServedPortal::start(&f).await;
    served.portal.add_user(&f.alice, GlobalRole::User).await;

    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/browser-cluster");
    std::fs::create_dir_all(&out_dir).unwrap();
    let screenshot = out_dir.join("desktop.png");
    let _ = std::fs::remove_file(&screenshot);
    let setup = setup.elapsed();
    let started = Instant::now();
    let mut node = tokio::process::Command::new("/usr/bin/node")
        .arg(browser_dir.join("workspace.mjs"))
        .current_dir(&browser_dir)
        .env("PORTAL_URL", served.origin())
        .env("EMAIL", &f.alice)
        .env("PASSWORD", common::PASSWORD)
        .env("TEAM", &f.team)
        .env("TEMPLATE", &f.template)
        .env("NAME", WORKSPACE)
        .env("SCREENSHOT", &screenshot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting node");
    let mut to_browser = node.stdin.take().unwrap();
    let browser = tokio::time::timeout(BROWSER_WITHIN, node.wait_with_output());
    tokio::pin!(browser);

    // The desktop stands in for the workspace's container while the browser works.
    let desktop = tokio::select! {
        desktop = Desktop::register(&f, WORKSPACE) => desktop,
        output = &mut browser => panic!("the browser finished before the desktop was registered: {output:?}"),
    };
    let registered_after = started.elapsed();
    to_browser.write_all(b"endpoint-registered\n").await.unwrap();
    drop(to_browser);

    let output = browser.await.expect("the browser test took too long").unwrap();
    let result = desktop_common::browser_result(&output);
    assert_eq!(result["phases"].as_array().and_then(|p| p.last()), Some(&json!("Running")), "{result}");
    assert!(result["distinctColours"].as_u64().unwrap() >= 2, "the canvas is blank: {result}");
    assert!(result["problems"].as_array().unwrap().is_empty(), "browser errors: {result}");
    assert!(screenshot.exists(), "no screenshot at {}", screenshot.display());
    // The portal's proxy really connected to this desktop: the Workspace has its address.
    let workspace = f.workspaces().get(WORKSPACE).await.unwrap();
    assert_eq!(workspace.metadata.annotations.unwrap()[DESKTOP_ENDPOINT_ANNOTATION], desktop.address().to_string());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let steps: Vec<&str> = stdout.lines().filter(|l| l.starts_with("step ")).collect();
    println!(
        "browser on the cluster: team, template and portal ready in {:.1}s; endpoint registered after {:.1}s, desktop shown after {:.1}s; {}\n{}",
        setup.as_secs_f64(),
        registered_after.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        screenshot.display(),
        steps.join("\n")
    );
    drop(desktop);
    f.delete().await;
}

/// A real desktop registered as a workspace's endpoint: Xvnc showing a two-colour plaid, with
/// websockify in front, both killed (by pid) when dropped.
struct Desktop {
    _xvnc: Xvnc,
    websockify: Websockify,
}

impl Desktop {
    /// Waits until the workspace and its VNC Secret exist, starts Xvnc with the Secret's password
    /// and websockify, and annotates the Workspace with websockify's address.
    async fn register(f: &Fixture, name: &str) -> Self {
        wait_for(&f.workspaces(), name, "created by the browser", WAIT, |w: Option<&Workspace>| w.is_some())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let secrets = Api::<Secret>::namespaced(f.client(), &format!("team-{}", f.team));
        let secret = wait_for(&secrets, &vnc_secret_name(name), "VNC password", WAIT, |s: Option<&Secret>| s.is_some())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let password = secret.data.and_then(|mut d| d.remove(VNC_PASSWORD_KEY)).expect("the Secret has a password");
        let password = String::from_utf8(password.0).expect("a text password");
        let desktop = tokio::task::spawn_blocking(move || {
            let xvnc = Xvnc::start(Some(&password));
            // A plaid of two colours, so a blank or single-colour canvas fails.
            let status = std::process::Command::new("/usr/bin/xsetroot")
                .args(["-mod", "8", "8", "-fg", "#ff8800", "-bg", "#0044aa"])
                .env("DISPLAY", format!(":{}", xvnc.display))
                .status()
                .unwrap();
            assert!(status.success(), "xsetroot failed");
            let websockify = Websockify::plain(xvnc.rfb_port);
            Self { _xvnc: xvnc, websockify }
        })
        .await
        .unwrap();
        let annotate = json!({ "metadata": { "annotations": {
            DESKTOP_ENDPOINT_ANNOTATION: desktop.address().to_string()
        } } });
        f.workspaces().patch(name, &PatchParams::default(), &Patch::Merge(&annotate)).await.expect("annotate");
        desktop
    }

    fn address(&self) -> SocketAddr {
        self.websockify.addr()
    }
}

/// The fixture's backend behind a portal served on a real socket (websocket upgrades need one),
/// whose public URL is its own address so the browser's `Origin` matches.
struct ServedPortal {
    portal: common::Portal,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl ServedPortal {
    async fn start(f: &Fixture) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut portal = common::Portal::with_url(&format!("http://{addr}")).await;
        portal.state = portal.state.clone().with_backend(f.portal.state.backend.clone());
        let app = deskpod_portal::app(portal.state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
        });
        Self { portal, addr, server }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ServedPortal {
    fn drop(&mut self) {
        self.server.abort();
    }
}
