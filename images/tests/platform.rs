//! The platform images on a real Docker engine, run the way the Helm chart's restricted
//! securityContext runs them (read-only root filesystem, all capabilities dropped, no new
//! privileges, the image's numeric user): the controller answers `--help` as uid 65532; the
//! portal, with a fresh volume on its data directory and a tmpfs on /tmp, answers /healthz,
//! serves the sign-in page and noVNC's files, keeps its database in the volume, stops on SIGTERM
//! as PID 1 and finds its database again on the next start. A second build reuses both images
//! (same binaries, same hash).
//!
//! The admin password the portal prints on its first start is never shown: logs pass through
//! [`redacted`] before they go into a failure message.

mod common;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, VolumeCreateRequest};
use bollard::query_parameters::{RemoveVolumeOptions, StopContainerOptionsBuilder};
use deskpod_images::catalogue::{self, CONTROLLER, PORTAL, platform};
use deskpod_images::probe::{Container, PROBE_LABEL};
use deskpod_images::progress::Mode;
use deskpod_images::{BuildOptions, Builder, Outcome};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IMAGES: [&str; 2] = [CONTROLLER, PORTAL];
const EXIT_DEADLINE: Duration = Duration::from_secs(60);
/// Generous for a loaded 2-core machine; the portal usually answers within a second.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long `docker stop` waits after SIGTERM before it kills (its default).
const STOP_GRACE_SECONDS: i32 = 10;

/// A container of `image` under the chart's restrictions; `tmpfs` paths get a tmpfs (as the
/// chart's emptyDir on /tmp), `volume` is a named volume on the portal's data directory.
fn restricted(image: &str, cmd: &[&str], tmpfs: &[&str], volume: Option<&str>) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        host_config: Some(HostConfig {
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            tmpfs: Some(tmpfs.iter().map(|path| (path.to_string(), String::new())).collect()),
            binds: volume.map(|name| vec![format!("{name}:{}", platform::PORTAL_DATA_DIR)]),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    }
}

async fn run_to_exit(docker: &Docker, body: ContainerCreateBody) -> (i64, String) {
    let container = Container::run(docker, body).await.unwrap();
    let code = container.wait_exit(EXIT_DEADLINE).await.unwrap();
    let log = container.logs().await;
    container.remove().await.unwrap();
    (code, log)
}

#[tokio::test]
async fn the_controller_answers_help_as_65532_on_a_read_only_root_without_capabilities() {
    common::ensure_built(&IMAGES);
    let docker = common::docker().await;
    let tag = catalogue::tag(CONTROLLER).unwrap();

    // Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd.
    let config = docker.inspect_image(tag).await.unwrap().config.unwrap();
    assert_eq!(config.user.as_deref(), Some("65532:65532"));
    assert_eq!(config.entrypoint, Some(vec![platform::CONTROLLER_BIN.to_string()]));
    let ports: Vec<String> = config.exposed_ports.unwrap_or_default().into_iter().collect();
    assert_eq!(ports, [format!("{}/tcp", platform::CONTROLLER_ADMIN_PORT)]);

    // `--help` through the image's entrypoint; the uid and gid it runs with, through a shell
    // that becomes the same binary.
    let (code, help) = run_to_exit(&docker, restricted(tag, &["--help"], &[], None)).await;
    assert_eq!(code, 0, "{help}");
    assert!(help.lines().any(|l| l.trim_start().starts_with("run ")), "no `run` subcommand in:\n{help}");
    let mut body = restricted(tag, &["-c", "id -u; id -g; exec \"$0\" --help", platform::CONTROLLER_BIN], &[], None);
    body.entrypoint = Some(vec!["/bin/sh".into()]);
    let (code, out) = run_to_exit(&docker, body).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("65532\n65532\n") && out.contains("\n  run "), "{out}");

    // The binary is the platform's version, the one in the tag.
    let (code, version) = run_to_exit(&docker, restricted(tag, &["--version"], &[], None)).await;
    assert_eq!((code, version.trim()), (0, format!("deskpod-controller {}", platform::VERSION).as_str()));
}

#[tokio::test]
async fn the_portal_serves_health_signin_and_novnc_and_keeps_its_database_in_the_volume() {
    common::ensure_built(&IMAGES);
    let docker = common::docker().await;
    let tag = catalogue::tag(PORTAL).unwrap();

    let config = docker.inspect_image(tag).await.unwrap().config.unwrap();
    assert_eq!(config.user.as_deref(), Some("65532:65532"));
    assert_eq!(config.entrypoint, Some(vec![platform::PORTAL_BIN.to_string()]));
    let mut ports: Vec<String> = config.exposed_ports.unwrap_or_default().into_iter().collect();
    ports.sort();
    assert_eq!(ports, ["8080/tcp", "9090/tcp"]);

    // Declared before the containers, so it is dropped (removed) after them.
    let volume = Volume::create(&docker).await;
    let database = format!("{}/deskpod.db", platform::PORTAL_DATA_DIR);
    let listen = format!("0.0.0.0:{}", platform::PORTAL_PORT);
    let args =
        ["--backend", "none", "--listen", &listen, "--public-url", "http://deskpod.test", "--database", &database];
    let portal = Container::run(&docker, restricted(tag, &args, &["/tmp"], Some(&volume.name))).await.unwrap();
    let ip = portal.bridge_ip().await.unwrap();

    let health = match wait_until_healthy(&ip).await {
        Ok(body) => body,
        Err(e) => panic!("{e}\n--- portal log ---\n{}", redacted(&portal.logs().await)),
    };
    assert!(health.contains(r#""status":"ok""#), "{health}");
    assert!(health.contains(&format!(r#""version":"{}""#, platform::VERSION)), "{health}");

    let (status, page) = get(&ip, "/signin").await.unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(r#"<form method="post" action="/signin">"#), "not the sign-in page:\n{page}");
    let (status, page) = get(&ip, "/novnc/vnc.html").await.unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<title>noVNC</title>"), "not noVNC's page:\n{page}");
    // What the portal's desktop page imports.
    let (status, script) = get(&ip, "/novnc/core/rfb.js").await.unwrap();
    assert_eq!(status, 200);
    assert!(script.contains("export default class RFB"), "not noVNC's RFB module");

    // The portal runs as 65532, and its database is in the volume, readable by it alone.
    let (code, out) =
        portal.exec(&["sh", "-c", &format!("stat -c '%u:%g' /proc/1 && stat -c '%u:%g %a' {database}")]).await.unwrap();
    assert_eq!((code, out.as_str()), (0, "65532:65532\n65532:65532 600\n"));

    let log = portal.logs().await;
    assert!(log.contains("Created the first admin account"), "no first admin:\n{}", redacted(&log));

    // As PID 1 it stops on SIGTERM (what `docker stop` and the kubelet send), by itself: exit
    // status 0, not the 137 of the SIGKILL that follows the grace period.
    let stop = StopContainerOptionsBuilder::default().t(STOP_GRACE_SECONDS).build();
    docker.stop_container(&portal.id, Some(stop)).await.unwrap();
    let state = docker.inspect_container(&portal.id, None).await.unwrap().state.unwrap();
    assert_eq!(state.exit_code, Some(0), "stopped how?\n{}", redacted(&portal.logs().await));
    portal.remove().await.unwrap();

    // Started again on the same volume, it finds the admin: no new password.
    let again = Container::run(&docker, restricted(tag, &args, &["/tmp"], Some(&volume.name))).await.unwrap();
    let ip = again.bridge_ip().await.unwrap();
    if let Err(e) = wait_until_healthy(&ip).await {
        panic!("{e}\n--- portal log ---\n{}", redacted(&again.logs().await));
    }
    let log = again.logs().await;
    assert!(!log.contains("Created the first admin account"), "a second admin:\n{}", redacted(&log));
    again.remove().await.unwrap();
    volume.remove().await;
}

#[tokio::test]
async fn a_second_build_reuses_both_images() {
    common::ensure_built(&IMAGES);
    let builder = Builder::connect_default().await.unwrap();
    let options = BuildOptions { only: IMAGES.map(String::from).into(), force: false, progress: Mode::Plain };
    let reports = builder.build(&options).await.unwrap();
    let outcomes: Vec<_> = reports.iter().map(|r| (r.name, r.outcome)).collect();
    assert_eq!(outcomes, [("rootfs", Outcome::Cached), (CONTROLLER, Outcome::Cached), (PORTAL, Outcome::Cached)]);
}

/// Polls /healthz until it answers 200 or [`READY_DEADLINE`] passes; the body.
async fn wait_until_healthy(ip: &str) -> Result<String, String> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let last = match get(ip, "/healthz").await {
            Ok((200, body)) => return Ok(body),
            Ok((status, body)) => format!("status {status}: {body}"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("no healthy answer from {ip} within {READY_DEADLINE:?}; last: {last}"));
        }
        // Poll interval, not a wait for readiness: the loop ends on the first healthy answer.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path` from the portal at `ip`; the status and the body. HTTP/1.0, so the body ends
/// with the connection (no chunked encoding to undo).
async fn get(ip: &str, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((ip, platform::PORTAL_PORT)).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: deskpod.test\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(response)) => String::from_utf8_lossy(&response).into_owned(),
        Ok(Err(e)) => return Err(format!("GET {path}: {e}")),
        Err(_) => return Err(format!("GET {path}: no answer within 5 s")),
    };
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| format!("GET {path}: no end of headers"))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    Ok((status.ok_or_else(|| format!("GET {path}: no status in {head:?}"))?, body.to_string()))
}

/// The portal's log without the generated admin password: it prints `... with the password:`,
/// a blank line, then the password on a line of its own.
fn redacted(log: &str) -> String {
    let mut out = Vec::new();
    let mut password_next = false;
    for line in log.lines() {
        if password_next && !line.trim().is_empty() {
            out.push("    <the generated password, not shown>");
            password_next = false;
            continue;
        }
        password_next |= line.trim_end().ends_with("with the password:");
        out.push(line);
    }
    out.join("\n")
}

#[test]
fn the_password_line_is_redacted() {
    let log =
        "x\nCreated the first admin account admin@deskpod.local with the password:\n\n    hunter2-Xy\n\nSign in at ...";
    let shown = redacted(log);
    assert!(!shown.contains("hunter2") && shown.contains("not shown") && shown.ends_with("Sign in at ..."), "{shown}");
}

/// A named volume this test created; removed by [`Volume::remove`] or, failing that, when
/// dropped (also when the test panics). Drop it after the containers that use it.
struct Volume {
    docker: Docker,
    name: String,
    removed: bool,
}

impl Volume {
    async fn create(docker: &Docker) -> Volume {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let request = VolumeCreateRequest {
            name: Some(format!("deskpod-images-test-portal-{}-{nanos}", std::process::id())),
            labels: Some(HashMap::from([(PROBE_LABEL.to_string(), "true".to_string())])),
            ..VolumeCreateRequest::default()
        };
        let volume = docker.create_volume(request).await.unwrap();
        Volume { docker: docker.clone(), name: volume.name, removed: false }
    }

    async fn remove(mut self) {
        self.removed = true;
        self.docker.remove_volume(&self.name, None::<RemoveVolumeOptions>).await.unwrap();
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // As probe::Container does: a thread with its own runtime, since Drop cannot await.
        let name = self.name.clone();
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let docker = deskpod_images::connect_docker().await.ok()?;
                docker.remove_volume(&name, None::<RemoveVolumeOptions>).await.ok()
            })
        })
        .join();
        if !matches!(done, Ok(Some(()))) {
            eprintln!("could not remove the volume {}; remove it with `docker volume rm`", self.name);
        }
    }
}
