//! The whole way to a real desktop container in a real browser, in single-host mode: Debian's
//! Chromium, driven by playwright-core (`tests/browser/workspace.mjs`), signs in to a portal on
//! the Docker backend, creates a Python workspace through the form, watches "My workspaces" until
//! it shows Running, opens the desktop view, and noVNC connects through the portal's proxy to the
//! desktop in the container (`deskpod/desktop-python:latest`). The canvas must show the XFCE
//! desktop: its panel runs in the container and the top rows of the canvas are the panel's band,
//! unlike the desktop below. The screenshot is kept at `target/browser-single-host/desktop.png`.
//!
//! Needs the desktop image (`deskpod-images build`) and `portal/tests/setup-desktop-tools`.

mod common;
mod desktop_common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deskpod_controller::api::{TeamMember, TeamQuota, TeamRole, TeamSpec};
use deskpod_portal::backend::Backend;
use deskpod_portal::backend::docker::{DockerBackend, desktop_template};
use deskpod_portal::store::{GlobalRole, SqliteStore};
use desktop_common::BrowserScript;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

const BROWSER_WITHIN: Duration = Duration::from_secs(180);
const EMAIL: &str = "ada@example.com";
const WORKSPACE: &str = "dev";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_creates_a_python_desktop_and_sees_the_xfce_panel_in_the_browser() {
    let team = format!("browser{}", std::process::id());
    let served = Served::start(&team).await;
    let _cleanup = Cleanup { team: team.clone(), network: served.backend.names().network(&team) };
    served.portal.add_user(EMAIL, GlobalRole::User).await;

    let url = format!("http://{}", served.addr);
    let mut browser =
        BrowserScript::workspace(&url, EMAIL, common::PASSWORD, (&team, "python", WORKSPACE), "browser-single-host");
    let screenshot = browser.screenshot.clone();
    let started = Instant::now();
    let (output, _) = browser.show_xfce_desktop(BROWSER_WITHIN).await;
    let panel = Command::new("docker")
        .args(["exec", &served.backend.names().container(&team, WORKSPACE), "pgrep", "-u", "1000", "-x", "xfce4-panel"])
        .output()
        .unwrap();
    assert!(panel.status.success(), "no xfce4-panel runs in the desktop container");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let steps: Vec<&str> = stdout.lines().filter(|l| l.starts_with("step ")).collect();
    println!(
        "single-host browser run: desktop shown {:.1}s after the browser started; {}\n{}",
        started.elapsed().as_secs_f64(),
        screenshot.display(),
        steps.join("\n")
    );
    // What the user saw is what the backend reports.
    let view = served.backend.workspace(&team, WORKSPACE).await.unwrap().unwrap();
    assert_eq!(view.owner, EMAIL);
}

/// A portal on the Docker backend, served on a real socket, with a team whose member is `EMAIL`
/// and a `python` template.
struct Served {
    portal: common::Portal,
    backend: Arc<DockerBackend>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Served {
    async fn start(team: &str) -> Self {
        let backend = Arc::new(DockerBackend::connect(SqliteStore::open_in_memory().unwrap()).await.unwrap());
        let template = desktop_template("Python", "deskpod/desktop-python:latest", "1", "1Gi", "256Mi");
        backend.put_template("python", template).await.unwrap();
        let spec = TeamSpec {
            quota: TeamQuota { memory: Some(Quantity("2Gi".into())), ..TeamQuota::default() },
            members: vec![TeamMember { user: EMAIL.into(), role: TeamRole::Engineer, expires_at: None }],
            ..TeamSpec::default()
        };
        backend.put_team(team, spec).await.unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut portal = common::Portal::with_url(&format!("http://{addr}")).await;
        portal.state = portal.state.clone().with_backend(backend.clone());
        let app = deskpod_portal::app(portal.state.clone())
            .layer(axum::Extension(deskpod_portal::http::desktop::NovncDir("/usr/share/novnc".into())));
        let server = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
        });
        Self { portal, backend, addr, server }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
    }
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
