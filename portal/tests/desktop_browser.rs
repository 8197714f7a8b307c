//! The desktop view in a real browser: Debian's Chromium, driven by playwright-core
//! (`tests/browser/desktop.mjs`), signs in to the portal, opens the desktop view of a workspace
//! whose endpoint is a REAL Xvnc behind Debian's websockify, and the noVNC canvas shows the X
//! display's pattern. The screenshot is kept at `target/desktop-browser/desktop.png`.
//! Needs `portal/tests/setup-desktop-tools` (Chromium, Node, playwright-core, Xvnc, websockify).

mod common;
mod desktop_common;

use std::path::PathBuf;
use std::time::Duration;

use deskpod_portal::TeamRole;
use deskpod_portal::backend::Phase;
use deskpod_portal::store::GlobalRole;
use desktop_common::{ServedPortal, TestBackend, Websockify, Xvnc, novnc_endpoint, require_tools};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktop_view_connects_and_shows_the_desktop() {
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let playwright = browser_dir.join("node_modules/playwright-core");
    require_tools(&["/usr/bin/chromium", "/usr/bin/node", playwright.to_str().unwrap()]);

    let xvnc = Xvnc::start(Some("browser-vnc"));
    // A plaid of two colours, so a blank or single-colour canvas fails.
    let status = std::process::Command::new("/usr/bin/xsetroot")
        .args(["-mod", "8", "8", "-fg", "#ff8800", "-bg", "#0044aa"])
        .env("DISPLAY", format!(":{}", xvnc.display))
        .status()
        .unwrap();
    assert!(status.success(), "xsetroot failed");
    let websockify = Websockify::plain(xvnc.rfb_port);
    let backend = TestBackend::new();
    backend.add_team("platform", false);
    let endpoint = novnc_endpoint(&websockify, Some("browser-vnc"));
    backend.add_workspace("platform", "one", "alice@example.com", Phase::Running, Some(endpoint));
    let served = ServedPortal::start(backend.clone()).await;
    served.portal.add_user("alice@example.com", GlobalRole::User).await;
    backend.set_member("alice@example.com", "platform", TeamRole::Engineer, None);

    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/desktop-browser");
    std::fs::create_dir_all(&out_dir).unwrap();
    let screenshot = out_dir.join("desktop.png");
    let _ = std::fs::remove_file(&screenshot);
    let run = tokio::process::Command::new("/usr/bin/node")
        .arg(browser_dir.join("desktop.mjs"))
        .current_dir(&browser_dir)
        .env("PORTAL_URL", served.origin())
        .env("EMAIL", "alice@example.com")
        .env("PASSWORD", common::PASSWORD)
        .env("DESKTOP_PATH", "/workspaces/platform/one/desktop")
        .env("SCREENSHOT", &screenshot)
        .kill_on_drop(true)
        .output();
    let output =
        tokio::time::timeout(Duration::from_secs(90), run).await.expect("the browser test took over 90 s").unwrap();
    let result = desktop_common::browser_result(&output);
    // The view asks the desktop to fit the window (Xvnc starts at 640x480, the window is 1024 wide).
    assert_eq!(result["width"].as_u64(), Some(1024), "the desktop was not resized to the window: {result}");
    assert!(result["distinctColours"].as_u64().unwrap() >= 2, "the canvas is blank: {result}");
    assert!(result["problems"].as_array().unwrap().is_empty(), "browser errors: {result}");
    assert!(screenshot.exists(), "no screenshot at {}", screenshot.display());
    // The portal recorded no input: the page only watched.
    assert_eq!(backend.input_count("platform", "one"), 0);
}
