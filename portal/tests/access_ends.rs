//! A desktop connection does not outlive the right to it (issue #24): an open desktop websocket
//! and an open workspace event stream close within two seconds of sign-out, a disabled account, a
//! membership removed, a contractor's membership expiring, the session's own expiry and a
//! contractor's account ending — and stay open while nothing changes (for a membership that ends,
//! the stream, which covers all the user's teams, stays and drops the workspace instead). Against REAL desktops: Xvnc behind websockify on the in-memory test
//! backend (noVNC and the KasmVNC stand-in), and a real desktop container on the single-host
//! Docker backend. The Kubernetes backend's run is `access_ends_kubernetes.rs`.
//!
//! Workspace sharing does not exist yet, so revoking a share is not tested here.
//!
//! Needs `portal/tests/setup-desktop-tools`; the Docker case the Docker Engine and
//! `deskpod/desktop-python:latest` (`deskpod-images build`).

mod access_common;
mod common;
mod desktop_common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use access_common::{CLOSED_WITHIN, Desktop, Members, Served, Setup, cookie_of, every_way_access_ends, stays_open};
use common::{Browser, Portal};
use deskpod_controller::api::{TeamMember, TeamQuota, TeamRole as CrdTeamRole, TeamSpec};
use deskpod_portal::TeamRole;
use deskpod_portal::backend::docker::{DockerBackend, desktop_template};
use deskpod_portal::backend::{Backend, NewWorkspace, Phase};
use deskpod_portal::store::{GlobalRole, SqliteStore};
use desktop_common::{SelfSigned, ServedPortal, TestBackend, Websockify, Xvnc, kasm_endpoint, novnc_endpoint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use tokio::time::Instant;

const VNC_PASSWORD: &str = "s3cret-vnc";
const ALICE: &str = "alice@example.com";

#[tokio::test]
async fn on_the_test_backend_every_way_access_ends_closes_the_desktop_and_the_stream() {
    let xvnc = Xvnc::start(Some(VNC_PASSWORD));
    let websockify = Websockify::plain(xvnc.rfb_port);
    let backend = TestBackend::new();
    backend.add_team("platform", false);
    let endpoint = novnc_endpoint(&websockify, Some(VNC_PASSWORD));
    backend.add_workspace("platform", "dev", ALICE, Phase::Running, Some(endpoint));
    backend.set_member(ALICE, "platform", TeamRole::Engineer, None);
    let served = ServedPortal::start(backend.clone()).await;
    served.portal.add_user(ALICE, GlobalRole::User).await;

    let latencies = every_way_access_ends(Setup {
        portal: &served.portal,
        desktop_url: served.ws_url("/workspaces/platform/dev/websockify"),
        origin: served.origin(),
        user: ALICE.into(),
        team: "platform".into(),
        workspace: "dev".into(),
        members: Members::Test(backend.clone()),
    })
    .await;
    assert_eq!(latencies.len(), 6);
}

/// The `kasm` profile's websocket goes through the same relay: sign-out closes it too.
#[tokio::test]
async fn a_kasm_desktop_closes_when_its_session_is_signed_out() {
    let xvnc = Xvnc::start(None);
    let tls = SelfSigned::new();
    let websockify = Websockify::kasm(xvnc.rfb_port, VNC_PASSWORD, &tls);
    let backend = TestBackend::new();
    backend.add_team("platform", false);
    backend.add_workspace("platform", "dev", ALICE, Phase::Running, Some(kasm_endpoint(&websockify, VNC_PASSWORD)));
    backend.set_member(ALICE, "platform", TeamRole::Engineer, None);
    let served = ServedPortal::start(backend.clone()).await;
    served.portal.add_user(ALICE, GlobalRole::User).await;
    let mut alice = Browser::signed_in(&served.portal, ALICE).await;

    let url = served.ws_url("/workspaces/platform/dev/kasm/websockify");
    let desktop = Desktop::open_kasm(&url, &cookie_of(&alice), &served.origin()).await;
    stays_open("the kasm desktop closed while nothing changed", || desktop.is_open()).await;
    let csrf = alice.session_csrf(&served.portal).await;
    let since = Instant::now();
    alice.post(&served.portal, "/signout", &[("csrf", csrf.as_str())]).await;
    let took = desktop.closed_since(since, "signed out", "kasm sign-out").await;
    println!("kasm sign-out: desktop closed after {} ms", took.as_millis());
    assert!(took <= CLOSED_WITHIN);
}

/// On the single-host Docker backend, with a real desktop container; memberships are changed
/// through the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_docker_backend_every_way_access_ends_closes_the_desktop_and_the_stream() {
    let team = format!("access{}", std::process::id());
    let backend = Arc::new(DockerBackend::connect(SqliteStore::open_in_memory().unwrap()).await.unwrap());
    let _cleanup = Cleanup { team: team.clone(), network: backend.names().network(&team) };
    let template = desktop_template("Python", "deskpod/desktop-python:latest", "1", "1Gi", "256Mi");
    backend.put_template("python", template).await.unwrap();
    let spec = TeamSpec {
        quota: TeamQuota { memory: Some(Quantity("2Gi".into())), ..TeamQuota::default() },
        members: vec![TeamMember { user: ALICE.into(), role: CrdTeamRole::Engineer, expires_at: None }],
        ..TeamSpec::default()
    };
    backend.put_team(&team, spec).await.unwrap();
    let new = NewWorkspace { team: team.clone(), name: "dev".into(), owner: ALICE.into(), template: "python".into() };
    backend.create_workspace(new).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while backend.workspace(&team, "dev").await.unwrap().is_none_or(|ws| ws.phase != Phase::Running) {
        assert!(Instant::now() < deadline, "the desktop container did not run within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut portal = Portal::with_url(&format!("http://{addr}")).await;
    portal.state = portal.state.clone().with_backend(backend.clone());
    let _served = Served::start(listener, portal.state.clone());
    portal.add_user(ALICE, GlobalRole::User).await;
    portal.add_user("root@example.com", GlobalRole::Admin).await;

    let members = Members::admin(&portal, "root@example.com").await;
    let latencies = every_way_access_ends(Setup {
        portal: &portal,
        desktop_url: format!("ws://{addr}/workspaces/{team}/dev/websockify"),
        origin: format!("http://{addr}"),
        user: ALICE.into(),
        team: team.clone(),
        workspace: "dev".into(),
        members,
    })
    .await;
    assert_eq!(latencies.len(), 6);
}

/// Removes the team's containers, volumes and network, also when the test fails.
struct Cleanup {
    team: String,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let docker = |args: &[&str]| {
            let output = Command::new("docker").args(args).output().expect("the docker CLI");
            String::from_utf8_lossy(&output.stdout).into_owned()
        };
        let label = format!("label=deskpod.io/team={}", self.team);
        for id in docker(&["ps", "-aq", "--filter", &label]).split_whitespace() {
            docker(&["rm", "-f", id]);
        }
        for volume in docker(&["volume", "ls", "-q", "--filter", &label]).split_whitespace() {
            docker(&["volume", "rm", "-f", volume]);
        }
        docker(&["network", "rm", &self.network]);
    }
}
