//! Single-host start-up benchmark: from the user's request to the VNC banner through the portal,
//! against the same image started with a bare `docker run`.
//!
//! `cargo bench -p deskpod-portal --bench single_host [-- --runs N]`
//!
//! - **Portal**: `POST /api/v1/workspaces` (an API token) on a portal served on 127.0.0.1 with the
//!   Docker backend, then the browser's path: a websocket to `/workspaces/<team>/<name>/websockify`
//!   with the session cookie and the portal's Origin, retried until the first 12 bytes (the RFB
//!   banner the portal greets with, after it has authenticated to the desktop) arrive. The
//!   workspace is deleted after each run, outside the timing.
//! - **Baseline**: what `docker run` does — create and start a container of the same image with
//!   the same contract — until the banner arrives on its websocket
//!   (`deskpod_images::probe::time_to_banner`).
//!
//! Runs alternate (baseline, portal, baseline, ...), so both see the same machine. The image must
//! be built (`cargo run -p deskpod-images -- build --only python`). Targets (issue #5): portal p50
//! ≤ 1.3 × baseline p50, portal p99 ≤ 2 s. Exits 1 when one is missed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deskpod_controller::api::{TeamMember, TeamQuota, TeamRole, TeamSpec, WorkspaceTemplateSpec};
use deskpod_portal::backend::Backend;
use deskpod_portal::backend::docker::{DockerBackend, desktop_template};
use deskpod_portal::client::{ApiClient, Credentials};
use deskpod_portal::store::{GlobalRole, NewApiToken, NewUser, SqliteStore, Store};
use deskpod_portal::token::{Scope, hash_secret};
use deskpod_portal::{AppState, Config, Keys, PublicUrl, StaticMemberships};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const IMAGE: &str = "deskpod/desktop-python:latest";
const USER: &str = "bench@example.com";
const PER_RUN_LIMIT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs = runs_from_args()?;
    let docker = deskpod_images::connect_docker().await?;
    docker.inspect_image(IMAGE).await.map_err(|_| {
        anyhow::anyhow!("{IMAGE} is not built; run `cargo run -p deskpod-images -- build --only python`")
    })?;
    let portal = Portal::start().await?;

    let mut baseline = Vec::new();
    let mut through_portal = Vec::new();
    for run in 0..runs {
        let timing = deskpod_images::probe::time_to_banner(&docker, IMAGE, None).await?;
        baseline.push(timing.to_banner);
        let name = format!("run{run}");
        let took = portal.request_to_banner(&name).await;
        portal.backend.delete_workspace(&portal.team, &name).await?;
        through_portal.push(took?);
        eprintln!(
            "run {:>2}: docker run → banner {:>6.0} ms; request → banner through the portal {:>6.0} ms",
            run + 1,
            ms(baseline[run]),
            ms(through_portal[run])
        );
    }
    portal.cleanup().await;

    let (base_p50, base_p99) = (percentile(&baseline, 50), percentile(&baseline, 99));
    let (portal_p50, portal_p99) = (percentile(&through_portal, 50), percentile(&through_portal, 99));
    let ratio = portal_p50.as_secs_f64() / base_p50.as_secs_f64();
    println!("single-host start-up, {runs} runs each, image {IMAGE} cached:");
    println!("  bare docker run → VNC banner:              p50 {:>6.0} ms  p99 {:>6.0} ms", ms(base_p50), ms(base_p99));
    println!(
        "  request → VNC banner through the portal:   p50 {:>6.0} ms  p99 {:>6.0} ms  ({ratio:.2}× the baseline p50)",
        ms(portal_p50),
        ms(portal_p99)
    );
    let mut missed = Vec::new();
    if ratio > 1.3 {
        missed.push(format!("p50 is {ratio:.2}× the bare docker run (target ≤ 1.3×)"));
    }
    if portal_p99 > Duration::from_secs(2) {
        missed.push(format!("p99 is {:.0} ms (target ≤ 2000 ms)", ms(portal_p99)));
    }
    if missed.is_empty() {
        println!("  targets met: p50 ≤ 1.3× baseline, p99 ≤ 2 s");
        Ok(())
    } else {
        eprintln!("targets missed: {}", missed.join("; "));
        std::process::exit(1);
    }
}

fn runs_from_args() -> anyhow::Result<usize> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut runs = 20;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| anyhow::anyhow!("--runs needs a positive number"))?
            }
            other => anyhow::bail!("unknown argument {other:?}; usage: single_host [--runs N]"),
        }
    }
    Ok(runs)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The nearest-rank percentile.
fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// A portal on the Docker backend on a real socket, with a team, a template, a user, an API token
/// and a session cookie.
struct Portal {
    backend: Arc<DockerBackend>,
    team: String,
    addr: SocketAddr,
    api: ApiClient,
    cookie: String,
    server: tokio::task::JoinHandle<()>,
}

impl Portal {
    async fn start() -> anyhow::Result<Self> {
        let store = SqliteStore::open_in_memory()?;
        let backend = Arc::new(DockerBackend::connect(store.clone()).await?);
        let team = format!("bench{}", std::process::id());
        backend.put_template("python", template()).await?;
        let spec = TeamSpec {
            quota: TeamQuota { memory: Some(Quantity("8Gi".into())), ..TeamQuota::default() },
            members: vec![TeamMember { user: USER.into(), role: TeamRole::Engineer, expires_at: None }],
            ..TeamSpec::default()
        };
        backend.put_team(&team, spec).await?;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let keys = Keys::load(&store, None).await?;
        let config = Config::new(PublicUrl::parse(&format!("http://{addr}"))?);
        let user = NewUser {
            id: USER.into(),
            display_name: "bench".into(),
            role: GlobalRole::User,
            password_hash: None,
            expires_at: None,
        };
        store.create_user(user).await?;
        let secret = format!("dpt_bench{}", deskpod_portal::random::url_safe::<24>()?);
        let token = NewApiToken {
            id: deskpod_portal::random::hex::<8>()?,
            user_id: USER.into(),
            name: "bench".into(),
            scopes: vec![Scope::WorkspacesRead, Scope::WorkspacesWrite],
            secret_hash: hash_secret(&secret),
            expires_at: Timestamp::now() + SignedDuration::from_hours(1),
        };
        store.create_token(token).await?;
        let (session, _) =
            deskpod_portal::auth::session::issue(&keys, Duration::from_secs(3600), USER, Timestamp::now())?;
        let state = AppState::new(config, Arc::new(store), keys, Arc::new(StaticMemberships::new()))
            .with_backend(backend.clone());
        let app = deskpod_portal::app(state);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await;
        });
        let api = ApiClient::new(Credentials { url: format!("http://{addr}"), token: secret })?;
        Ok(Self { backend, team, addr, api, cookie: format!("deskpod_session={session}"), server })
    }

    /// From the create request to the banner on the desktop websocket through the portal.
    async fn request_to_banner(&self, name: &str) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let body = serde_json::json!({ "team": self.team, "name": name, "template": "python" });
        self.api.call(axum::http::Method::POST, "/api/v1/workspaces", Some(&body)).await?;
        let created = started.elapsed();
        let url = format!("ws://{}/workspaces/{}/{name}/websockify", self.addr, self.team);
        let mut last_error = String::new();
        while started.elapsed() < PER_RUN_LIMIT {
            match self.banner(&url).await {
                Ok(banner) if banner == "RFB 003.008\n" => {
                    eprintln!("  (the create request answered after {:.0} ms)", ms(created));
                    return Ok(started.elapsed());
                }
                Ok(other) => anyhow::bail!("the portal greeted with {other:?}"),
                Err(error) => last_error = error,
            }
            // Not running yet (the portal answers 409): ask again, as often as the baseline does.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("no banner through the portal within {PER_RUN_LIMIT:?}: {last_error}")
    }

    async fn banner(&self, url: &str) -> Result<String, String> {
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        let headers = request.headers_mut();
        headers.insert("cookie", self.cookie.parse().map_err(|_| "cookie")?);
        headers.insert("origin", format!("http://{}", self.addr).parse().map_err(|_| "origin")?);
        headers.insert("sec-websocket-protocol", "binary".parse().map_err(|_| "protocol")?);
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.map_err(|e| e.to_string())?;
        let mut banner = Vec::new();
        while banner.len() < 12 {
            match ws.next().await {
                Some(Ok(Message::Binary(bytes))) => banner.extend_from_slice(&bytes),
                Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("closed before the banner".into()),
            }
        }
        let _ = ws.close(None).await;
        Ok(String::from_utf8_lossy(&banner).into_owned())
    }

    async fn cleanup(self) {
        self.server.abort();
        let Portal { backend, team, .. } = self;
        if let Ok(workspaces) = backend.workspaces(&team, None).await {
            for ws in workspaces {
                let _ = backend.delete_workspace(&team, &ws.name).await;
            }
        }
        let _ = std::process::Command::new("docker").args(["network", "rm", &backend.names().network(&team)]).output();
    }
}

/// The template the benchmark starts: the same limits as the baseline's container (1 CPU, 1 GiB,
/// 256 MiB of /dev/shm).
fn template() -> WorkspaceTemplateSpec {
    desktop_template("Python", IMAGE, "1", "1Gi", "256Mi")
}
