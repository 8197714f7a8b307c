//! The whole way to a desktop in a real browser, against the real test cluster and the real
//! controllers: Debian's Chromium, driven by playwright-core (`tests/browser/workspace.mjs`),
//! signs in to a portal on the Kubernetes backend, creates a workspace through the form, watches
//! "My workspaces" until it shows Running, opens the desktop view, and noVNC connects through the
//! portal's proxy to a REAL Xvnc behind Debian's websockify; the canvas shows the X display's
//! pattern. The screenshot is kept at `target/browser-cluster/desktop.png`.
//!
//! "My workspaces" follows the workspace by server-sent events: the row's phase changes in place,
//! without the page being reloaded.
//!
//! kwok's pods run nothing, so this test stands in for the desktop container with a real Xvnc
//! registered through the `deskpod.io/desktop-endpoint` annotation (see `cluster_browser`).
//! The browser opens the desktop only after it has seen Running AND the test has told it (a line
//! `endpoint-registered` on its stdin) that the annotation is in place, so the order cannot race.
//! Needs `portal/tests/setup-desktop-tools` (Chromium, Node, playwright-core, Xvnc, websockify).

mod cluster_browser;
mod common;
mod desktop_common;
mod kube_common;

use std::time::{Duration, Instant};

use cluster_browser::{Desktop, ServedPortal};
use deskpod_portal::backend::kubernetes::DESKTOP_ENDPOINT_ANNOTATION;
use deskpod_portal::store::GlobalRole;
use desktop_common::{BrowserScript, require_tools};
use kube_common::{Fixture, ONE_CONTROLLER};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// The browser's whole run: sign-in, creating, reaching Running, connecting.
const BROWSER_WITHIN: Duration = Duration::from_secs(180);
const WORKSPACE: &str = "dev";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_creates_a_workspace_watches_it_run_and_sees_its_desktop_in_the_browser() {
    require_tools(&["/usr/bin/xsetroot", "/usr/bin/Xtigervnc", "/usr/bin/vncpasswd", "/usr/bin/websockify"]);

    let _one = ONE_CONTROLLER.lock().await;
    let setup = Instant::now();
    let f = Fixture::new("portal-browser", 2, true).await;
    let served = ServedPortal::start(&f).await;
    served.portal.add_user(&f.alice, GlobalRole::User).await;

    let mut browser = BrowserScript::workspace(
        &served.origin(),
        &f.alice,
        common::PASSWORD,
        (&f.team, &f.template, WORKSPACE),
        "browser-cluster",
    );
    let screenshot = browser.screenshot.clone();
    let setup = setup.elapsed();
    let started = Instant::now();
    let mut node = browser.spawn();
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
    // The phase changed on the page (it showed another phase first) without the page reloading.
    assert!(result["phases"].as_array().unwrap().len() >= 2, "the row never showed another phase: {result}");
    assert_eq!(result["reloaded"], false, "the list was reloaded instead of updated in place: {result}");
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
