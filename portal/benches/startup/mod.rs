//! What the start-up benchmarks share: a portal served on 127.0.0.1 on any backend, with a user,
//! an API token and a session cookie, that times a workspace from the create request to the VNC
//! banner through its proxy; and the statistics.
#![allow(dead_code)] // each benchmark uses a part

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

/// The desktop image both modes start.
pub const IMAGE: &str = "deskpod/desktop-python:latest";
/// The benchmarks' user; the backend's team must have them as a member.
pub const USER: &str = "bench@example.com";
/// One workspace must answer within this.
pub const PER_RUN_LIMIT: Duration = Duration::from_secs(90);

/// A portal on `backend`, on a real socket.
pub struct Served {
    pub backend: Arc<dyn Backend>,
    addr: SocketAddr,
    api: ApiClient,
    cookie: String,
    server: tokio::task::JoinHandle<()>,
}

impl Served {
    pub async fn start(backend: Arc<dyn Backend>) -> anyhow::Result<Self> {
        let store = SqliteStore::open_in_memory()?;
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
        Ok(Self { backend, addr, api, cookie: format!("deskpod_session={session}"), server })
    }

    /// From the create request (`POST /api/v1/workspaces` with the API token) to the banner on
    /// the desktop websocket through the portal, the browser's path: the session cookie, the
    /// portal's Origin, retried until the first 12 bytes (the RFB banner the portal greets with
    /// once it has authenticated to the desktop) arrive.
    pub async fn request_to_banner(&self, team: &str, template: &str, name: &str) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let body = serde_json::json!({ "team": team, "name": name, "template": template });
        self.api.call(axum::http::Method::POST, "/api/v1/workspaces", Some(&body)).await?;
        let created = started.elapsed();
        let url = format!("ws://{}/workspaces/{team}/{name}/websockify", self.addr);
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

    /// Stops serving and deletes the team's workspaces.
    pub async fn stop(self, team: &str) {
        self.server.abort();
        if let Ok(workspaces) = self.backend.workspaces(team, None).await {
            for ws in workspaces {
                let _ = self.backend.delete_workspace(team, &ws.name).await;
            }
        }
    }
}

/// A portal on the Docker backend with a team of [`USER`] and a `python` template.
pub struct SingleHost {
    pub served: Served,
    pub backend: Arc<DockerBackend>,
    pub team: String,
}

impl SingleHost {
    pub async fn start() -> anyhow::Result<Self> {
        let backend = Arc::new(DockerBackend::connect(SqliteStore::open_in_memory()?).await?);
        let team = format!("bench{}", std::process::id());
        backend.put_template("python", template()).await?;
        let spec = TeamSpec {
            quota: TeamQuota { memory: Some(Quantity("8Gi".into())), ..TeamQuota::default() },
            members: vec![TeamMember { user: USER.into(), role: TeamRole::Engineer, expires_at: None }],
            ..TeamSpec::default()
        };
        backend.put_team(&team, spec).await?;
        let served = Served::start(backend.clone()).await?;
        Ok(Self { served, backend, team })
    }

    pub async fn stop(self) {
        self.served.stop(&self.team).await;
        let network = self.backend.names().network(&self.team);
        let _ = std::process::Command::new("docker").args(["network", "rm", &network]).output();
    }
}

/// The template the benchmark starts: the same limits as the baseline's container (1 CPU, 1 GiB,
/// 256 MiB of /dev/shm).
fn template() -> WorkspaceTemplateSpec {
    desktop_template("Python", IMAGE, "1", "1Gi", "256Mi")
}

/// `--runs N` (default `default`); cargo's own `--bench` is ignored.
pub fn runs_from_args(bench: &str, default: usize) -> anyhow::Result<usize> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut runs = default;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| anyhow::anyhow!("--runs needs a positive number"))?
            }
            other => anyhow::bail!("unknown argument {other:?}; usage: {bench} [--runs N]"),
        }
    }
    Ok(runs)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The nearest-rank percentile.
pub fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// p50 and p99 of `samples`.
pub fn p50_p99(samples: &[Duration]) -> (Duration, Duration) {
    (percentile(samples, 50), percentile(samples, 99))
}
