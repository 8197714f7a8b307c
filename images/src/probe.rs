//! Running the images for real: a container that is removed whatever happens, a desktop started
//! with the contract's settings, and the wait for the RFB banner through the websocket on port
//! 6901 — the readiness check of a desktop, and the baseline (bare `docker run` → banner) that
//! the portal's proxy is measured against.

use crate::catalogue::desktop;
use crate::{Error, Result};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StatsOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Label on every container this crate starts, so a leftover is easy to find.
pub const PROBE_LABEL: &str = "io.deskpod.probe";

/// A container this process created; removed (forcibly, with its anonymous volumes) by
/// [`Container::remove`] or, failing that, when dropped — also when a test panics.
pub struct Container {
    docker: Docker,
    pub id: String,
    removed: bool,
}

impl Container {
    /// Creates and starts a container from `body` (the [`PROBE_LABEL`] is added).
    pub async fn run(docker: &Docker, mut body: ContainerCreateBody) -> Result<Container> {
        let image = body.image.clone().unwrap_or_default();
        let run_err =
            |step, e: bollard::errors::Error| Error::Run { image: image.clone(), step, message: e.to_string() };
        body.labels.get_or_insert_with(HashMap::new).insert(PROBE_LABEL.into(), "true".into());
        let created = docker.create_container(None, body).await.map_err(|e| run_err("create", e))?;
        // From here the guard owns the container, so a failed start still removes it.
        let container = Container { docker: docker.clone(), id: created.id, removed: false };
        docker.start_container(&container.id, None).await.map_err(|e| run_err("start", e))?;
        Ok(container)
    }

    /// The container's address on Docker's default bridge.
    pub async fn bridge_ip(&self) -> Result<String> {
        let inspect = self.docker.inspect_container(&self.id, None).await.map_err(|e| self.err("inspect", e))?;
        inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| n.into_values().find_map(|e| e.ip_address.filter(|ip| !ip.is_empty())))
            .ok_or_else(|| Error::Run {
                image: self.id.clone(),
                step: "inspect",
                message: "the container has no IP address (did it exit?)".into(),
            })
    }

    /// Waits for the container to exit and returns its exit code.
    pub async fn wait_exit(&self, timeout: Duration) -> Result<i64> {
        let options = WaitContainerOptionsBuilder::default().condition("not-running").build();
        let mut wait = self.docker.wait_container(&self.id, Some(options));
        match tokio::time::timeout(timeout, wait.next()).await {
            Err(_) => Err(Error::Run {
                image: self.id.clone(),
                step: "wait",
                message: format!("still running after {timeout:?}"),
            }),
            Ok(Some(Ok(response))) => Ok(response.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => Ok(code),
            Ok(Some(Err(e))) => Err(self.err("wait", e)),
            Ok(None) => Err(Error::Run { image: self.id.clone(), step: "wait", message: "no answer".into() }),
        }
    }

    /// Everything the container wrote to stdout and stderr so far.
    pub async fn logs(&self) -> String {
        let options = LogsOptionsBuilder::default().stdout(true).stderr(true).build();
        let mut logs = self.docker.logs(&self.id, Some(options));
        let mut out = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            out.push_str(&chunk.to_string());
        }
        out
    }

    /// Runs `cmd` in the container (as the image's user) and returns its exit code and output.
    pub async fn exec(&self, cmd: &[&str]) -> Result<(i64, String)> {
        use bollard::exec::StartExecResults;
        use bollard::models::ExecConfig;
        let config = ExecConfig {
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..ExecConfig::default()
        };
        let exec = self.docker.create_exec(&self.id, config).await.map_err(|e| self.err("exec", e))?;
        let mut out = String::new();
        if let StartExecResults::Attached { mut output, .. } =
            self.docker.start_exec(&exec.id, None).await.map_err(|e| self.err("exec", e))?
        {
            while let Some(chunk) = output.next().await {
                out.push_str(&chunk.map_err(|e| self.err("exec", e))?.to_string());
            }
        }
        let inspect = self.docker.inspect_exec(&exec.id).await.map_err(|e| self.err("exec", e))?;
        Ok((inspect.exit_code.unwrap_or(-1), out))
    }

    /// Memory in use now as `docker stats` counts it (usage less inactive page cache).
    pub async fn memory_usage(&self) -> Result<u64> {
        let options = StatsOptionsBuilder::default().stream(false).one_shot(true).build();
        let stats = self.docker.stats(&self.id, Some(options)).next().await;
        let memory = match stats {
            Some(Ok(stats)) => stats.memory_stats.unwrap_or_default(),
            Some(Err(e)) => return Err(self.err("stats", e)),
            None => return Err(Error::Run { image: self.id.clone(), step: "stats", message: "no answer".into() }),
        };
        let inactive = memory
            .stats
            .as_ref()
            .and_then(|s| s.get("total_inactive_file").or_else(|| s.get("inactive_file")).copied())
            .unwrap_or(0);
        Ok(memory.usage.unwrap_or(0).saturating_sub(inactive))
    }

    /// Removes the container now (force, with anonymous volumes).
    pub async fn remove(mut self) -> Result<()> {
        self.removed = true;
        remove(&self.docker, &self.id).await.map_err(|e| self.err("remove", e))
    }

    fn err(&self, step: &'static str, e: bollard::errors::Error) -> Error {
        Error::Run { image: self.id.clone(), step, message: e.to_string() }
    }
}

async fn remove(docker: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
    match docker.remove_container(id, Some(options)).await {
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        other => other,
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // Drop cannot await, and the caller's runtime may be shutting down: remove from a
        // thread of our own with its own runtime and client, and wait for it.
        let id = self.id.clone();
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let docker = crate::connect_docker().await.ok()?;
                remove(&docker, &id).await.ok()
            })
        })
        .join();
        if !matches!(done, Ok(Some(()))) {
            tracing::warn!(container = %self.id, "could not remove the container; remove it with `docker rm -f`");
        }
    }
}

/// Limits for a desktop run (what a template gives a workspace).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub shm_bytes: i64,
}

impl Default for Limits {
    /// 1 GiB, one CPU, 256 MiB of /dev/shm.
    fn default() -> Self {
        Limits { memory_bytes: 1 << 30, nano_cpus: 1_000_000_000, shm_bytes: 256 << 20 }
    }
}

/// A desktop container as the platform runs it: the contract's environment, the limits, no
/// capabilities and no privilege escalation. `password: None` leaves VNC_PW unset.
pub fn desktop_container(image: &str, password: Option<&str>, limits: Limits) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_string()),
        env: password.map(|pw| vec![format!("{}={pw}", desktop::PASSWORD_ENV)]),
        host_config: Some(HostConfig {
            memory: Some(limits.memory_bytes),
            nano_cpus: Some(limits.nano_cpus),
            shm_size: Some(limits.shm_bytes),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    }
}

/// The websocket URL of a desktop at `host`.
pub fn websocket_url(host: &str) -> String {
    format!("ws://{host}:{}/websockify", desktop::VNC_PORT)
}

/// Connects once to `url` and returns the first 12 bytes the server sends (the RFB banner).
pub async fn read_rfb_banner(url: &str) -> std::result::Result<String, String> {
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.map_err(|e| e.to_string())?;
    let mut banner = Vec::new();
    while banner.len() < desktop::RFB_BANNER.len() {
        match ws.next().await {
            Some(Ok(Message::Binary(bytes))) => banner.extend_from_slice(&bytes),
            Some(Ok(Message::Text(text))) => banner.extend_from_slice(text.as_bytes()),
            Some(Ok(Message::Close(frame))) => return Err(format!("closed before the banner: {frame:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed before the banner".into()),
        }
    }
    let _ = ws.close(None).await;
    Ok(String::from_utf8_lossy(&banner).into_owned())
}

/// Polls `url` until a banner arrives or `timeout` passes; returns it and how long it took.
pub async fn wait_for_rfb_banner(url: &str, timeout: Duration) -> Result<(String, Duration)> {
    let started = Instant::now();
    let mut last_error = String::from("no attempt");
    while started.elapsed() < timeout {
        let attempt = tokio::time::timeout(Duration::from_secs(3), read_rfb_banner(url)).await;
        match attempt {
            Ok(Ok(banner)) => return Ok((banner, started.elapsed())),
            Ok(Err(e)) => last_error = e,
            Err(_) => last_error = "no answer within 3 s".into(),
        }
        // Poll interval, not a wait for readiness: the loop ends on the first banner.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(Error::NoBanner { url: url.to_string(), waited: timeout, last_error })
}

/// Runs `image` as a desktop and measures the time from creating the container (what
/// `docker run` does) to the RFB banner on its websocket. The container is removed afterwards;
/// with `idle` set, its memory use is read that long after the banner.
pub async fn time_to_banner(docker: &Docker, image: &str, idle: Option<Duration>) -> Result<BannerTiming> {
    let started = Instant::now();
    let container = Container::run(docker, desktop_container(image, Some("probe-pw"), Limits::default())).await?;
    let ip = container.bridge_ip().await?;
    let (banner, _) = wait_for_rfb_banner(&websocket_url(&ip), Duration::from_secs(60)).await?;
    let to_banner = started.elapsed();
    let idle_memory = match idle {
        Some(wait) => {
            tokio::time::sleep(wait).await;
            Some(container.memory_usage().await?)
        }
        None => None,
    };
    container.remove().await?;
    Ok(BannerTiming { banner, to_banner, idle_memory })
}

/// What [`time_to_banner`] measured.
#[derive(Clone, Debug)]
pub struct BannerTiming {
    pub banner: String,
    pub to_banner: Duration,
    pub idle_memory: Option<u64>,
}
