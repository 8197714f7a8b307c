//! A desktop connection does not outlive the right to it (issue #24), on the Kubernetes backend,
//! against the real test cluster and the real controllers: an open desktop websocket and an open
//! workspace event stream close within two seconds of sign-out, a disabled account, a membership
//! removed from the Team, a contractor's membership expiring, the session's own expiry and a
//! contractor's account ending, and stay open while nothing changes (the scenario of
//! `access_common`, which `access_ends.rs` runs on the other backends). For a membership that
//! ends, the stream, which covers all the user's teams, stays and drops the workspace instead.
//!
//! Memberships are changed as a platform admin does, through `PUT /api/v1/admin/teams/{team}`:
//! the portal writes the Team object and sees the change through its watch cache of Teams, so the
//! two seconds include the API server and the watch.
//!
//! The desktop: kwok's pods run nothing, so a REAL Xvnc with the workspace's VNC password (from
//! the Secret the controller made) behind websockify stands in for the desktop container, through
//! the test-only `deskpod.io/desktop-endpoint` annotation (see `cluster_browser`). The relay, the
//! re-checks and the memberships are the Kubernetes backend's own; only the address the relay
//! dials is the stand-in's rather than a pod IP.
//!
//! Workspace sharing does not exist yet, so revoking a share is not tested here.
//!
//! Needs `portal/tests/setup-desktop-tools` (Xvnc, websockify) and the test cluster
//! (`tests/run -p deskpod-portal --test access_ends_kubernetes`).

mod access_common;
mod cluster_browser;
mod common;
mod desktop_common;
mod kube_common;

use access_common::{Members, Setup, every_way_access_ends};
use cluster_browser::{Desktop, ServedPortal};
use deskpod_controller::api::WorkspacePhase;
use deskpod_portal::backend::NewWorkspace;
use deskpod_portal::store::GlobalRole;
use desktop_common::require_tools;
use kube_common::{Fixture, ONE_CONTROLLER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_kubernetes_backend_every_way_access_ends_closes_the_desktop_and_the_stream() {
    require_tools(&["/usr/bin/xsetroot", "/usr/bin/Xtigervnc", "/usr/bin/vncpasswd", "/usr/bin/websockify"]);
    let _one = ONE_CONTROLLER.lock().await;
    let f = Fixture::new("portal-access", 2, true).await;
    let served = ServedPortal::start(&f).await;
    served.portal.add_user(&f.alice, GlobalRole::User).await;
    served.portal.add_user(&f.admin, GlobalRole::Admin).await;

    let backend = &served.portal.state.backend;
    let new =
        NewWorkspace { team: f.team.clone(), name: "dev".into(), owner: f.alice.clone(), template: f.template.clone() };
    backend.create_workspace(new).await.expect("the workspace is created");
    let _desktop = Desktop::register(&f, "dev").await;
    f.wait_phase("dev", WorkspacePhase::Running).await;

    let members = Members::admin(&served.portal, &f.admin).await;
    let latencies = every_way_access_ends(Setup {
        portal: &served.portal,
        desktop_url: format!("{}/workspaces/{}/dev/websockify", served.origin().replace("http://", "ws://"), f.team),
        origin: served.origin(),
        user: f.alice.clone(),
        team: f.team.clone(),
        workspace: "dev".into(),
        members,
    })
    .await;
    assert_eq!(latencies.len(), 6);
    f.delete().await;
}
