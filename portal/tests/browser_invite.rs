//! The invite flow in a real browser, against the real test cluster and the real controllers:
//! Debian's Chromium, driven by playwright-core (`tests/browser/invite.mjs`). A team lead signs in
//! and invites a contractor (e-mail, access expiry, template) through the JSON API with their
//! session; the contractor opens the one-time link in a browser that has never seen the portal,
//! chooses a password, and lands on the desktop page of the workspace the invite started, which
//! shows the desktop drawn (a REAL Xvnc, through the portal's proxy) within 60 s of opening the
//! link. The link then no longer works, for anyone.
//!
//! kwok's pods run nothing: the desktop is Xvnc behind websockify, registered through the
//! `deskpod.io/desktop-endpoint` annotation (see `cluster_browser`) as soon as the invite has
//! created the workspace, and the portal's answer to the password form (the redirect to the
//! desktop page) reaches the page only once it is, so the page never shows a desktop that a real
//! container would not have started yet; the clock runs on meanwhile. The screenshot is kept at `target/browser-cluster/invite-desktop.png`.
//! Needs `portal/tests/setup-desktop-tools` (Chromium, Node, playwright-core, Xvnc, websockify).

mod cluster_browser;
mod common;
mod desktop_common;
mod kube_common;

use std::sync::Arc;
use std::time::Duration;

use cluster_browser::{Desktop, ServedPortal};
use deskpod_controller::api::{Team, TeamRole};
use deskpod_portal::backend::invite::{BackendInviteHook, workspace_name};
use deskpod_portal::backend::kubernetes::DESKTOP_ENDPOINT_ANNOTATION;
use deskpod_portal::store::GlobalRole;
use desktop_common::{BrowserScript, require_tools};
use jiff::{SignedDuration, Timestamp};
use kube::api::Api;
use kube_common::{Fixture, ONE_CONTROLLER};
use tokio::io::AsyncWriteExt;

/// The promise to the contractor: the desktop drawn this soon after opening the link.
const DESKTOP_WITHIN: Duration = Duration::from_secs(60);
/// The browser's whole run: the lead's invite, the contractor's way to the desktop, the reuse.
const BROWSER_WITHIN: Duration = Duration::from_secs(150);
const CONTRACTOR_PASSWORD: &str = "a passphrase of my own";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contractor_opens_the_invite_link_sets_a_password_and_sees_their_desktop_within_60s() {
    require_tools(&["/usr/bin/xsetroot", "/usr/bin/Xtigervnc", "/usr/bin/vncpasswd", "/usr/bin/websockify"]);

    let _one = ONE_CONTROLLER.lock().await;
    let f = Fixture::new("portal-browser-invite", 2, true).await;
    let served = ServedPortal::start_with(&f, |state| {
        let hook = BackendInviteHook::new(state.backend.clone(), state.store.clone());
        state.with_invite_hook(Arc::new(hook))
    })
    .await;
    served.portal.add_user(&f.bob, GlobalRole::User).await;
    let dave = format!("dave@{}.test", f.team);
    let access_ends = Timestamp::now() + SignedDuration::from_hours(24 * 30);
    let workspace = workspace_name(&f.template, 1);

    let mut browser = BrowserScript::new("invite.mjs", "browser-cluster", "invite-desktop.png");
    let screenshot = browser.screenshot.clone();
    let mut node = browser
        .env("PORTAL_URL", served.origin())
        .env("LEAD_EMAIL", &f.bob)
        .env("LEAD_PASSWORD", common::PASSWORD)
        .env("TEAM", &f.team)
        .env("TEMPLATE", &f.template)
        .env("INVITEE_EMAIL", &dave)
        .env("INVITEE_PASSWORD", CONTRACTOR_PASSWORD)
        .env("ACCESS_EXPIRES_AT", access_ends.to_string())
        .spawn();
    let mut to_browser = node.stdin.take().unwrap();
    let browser = tokio::time::timeout(BROWSER_WITHIN, node.wait_with_output());
    tokio::pin!(browser);

    // The desktop stands in for the invitee's container as soon as the invite has created it.
    let desktop = tokio::select! {
        desktop = Desktop::register(&f, &workspace) => desktop,
        output = &mut browser => panic!("the browser finished before the desktop was registered: {output:?}"),
    };
    to_browser.write_all(b"endpoint-registered\n").await.unwrap();
    drop(to_browser);

    let output = browser.await.expect("the browser test took too long").unwrap();
    let result = desktop_common::browser_result(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let steps: Vec<&str> = stdout.lines().filter(|l| l.starts_with("step ")).collect();
    println!("{}", steps.join("\n"));

    // The lead's invite, as the contractor's link page describes it.
    assert_eq!(result["invite"]["status"], 201, "{result}");
    assert_eq!(result["invite"]["heading"], format!("Join team {}", f.team), "{result}");
    let facts = result["invite"]["facts"].as_str().unwrap();
    assert!(facts.contains("Your access ends") && facts.contains("works once"), "{result}");
    // Signed in and sent to the desktop of the invited template's workspace, which shows the
    // desktop drawn within the promise.
    assert_eq!(result["landedOn"], format!("/workspaces/{}/{workspace}/desktop", f.team), "{result}");
    assert!(result["distinctColours"].as_u64().unwrap() >= 2, "the canvas is blank: {result}");
    let took = Duration::from_millis(result["linkToDesktopMs"].as_u64().unwrap());
    assert!(took < DESKTOP_WITHIN, "the desktop was drawn {:.1}s after opening the link", took.as_secs_f64());
    assert!(result["problems"].as_array().unwrap().is_empty(), "browser errors: {result}");
    assert!(screenshot.exists(), "no screenshot at {}", screenshot.display());
    // The proxy connected to this desktop, and the workspace and team membership are the invite's.
    let ws = f.workspaces().get(&workspace).await.unwrap();
    assert_eq!(ws.metadata.annotations.unwrap()[DESKTOP_ENDPOINT_ANNOTATION], desktop.address().to_string());
    assert_eq!((ws.spec.owner.as_str(), ws.spec.template.as_str()), (dave.as_str(), f.template.as_str()));
    let team = Api::<Team>::all(f.client()).get(&f.team).await.unwrap();
    let member = team.spec.members.iter().find(|m| m.user == dave).unwrap_or_else(|| panic!("{:?}", team.spec));
    assert_eq!(member.role, TeamRole::Contractor);
    assert_eq!(member.expires_at.as_ref().map(|t| t.0.as_second()), Some(access_ends.as_second()));

    // The link works once: another browser is told so and offered no form.
    assert_eq!(result["reuse"]["status"], 410, "{result}");
    assert!(result["reuse"]["message"].as_str().unwrap().contains("already been used"), "{result}");
    assert_eq!(result["reuse"]["passwordFields"], 0, "{result}");

    println!(
        "invite in the browser: link opened → desktop drawn in {:.1}s (of which {} ms waiting for the stand-in \
         desktop; pages: {}); {}",
        took.as_secs_f64(),
        result["heldMs"],
        result["pages"],
        screenshot.display()
    );
    drop(desktop);
    f.delete().await;
}
