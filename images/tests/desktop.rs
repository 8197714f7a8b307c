//! The desktop images on a real Docker engine: a Python desktop started the way the platform
//! starts one (limits, no capabilities, VNC_PW) answers with the RFB banner through its
//! websocket on 6901, runs as uid 1000 with a writable home, seeds an empty home, and refuses
//! to start without a password.

mod common;

use deskpod_images::catalogue::{self, desktop};
use deskpod_images::probe::{Container, Limits, desktop_container, wait_for_rfb_banner, websocket_url};
use std::collections::HashMap;
use std::time::Duration;

const IMAGE: &str = "python";
/// Generous for a loaded 2-core machine; a desktop usually answers in about a second.
const BANNER_DEADLINE: Duration = Duration::from_secs(60);

fn python_tag() -> &'static str {
    catalogue::tag(IMAGE).expect("python is in the catalogue")
}

#[tokio::test]
async fn python_desktop_answers_rfb_on_6901_as_uid_1000_with_a_writable_home() {
    common::ensure_built(&[IMAGE]);
    let docker = common::docker().await;
    let limits = Limits { memory_bytes: 1 << 30, nano_cpus: 1_000_000_000, ..Limits::default() };
    let container = Container::run(&docker, desktop_container(python_tag(), Some("s3cret-pw"), limits)).await.unwrap();

    let ip = container.bridge_ip().await.unwrap();
    let (banner, took) = match wait_for_rfb_banner(&websocket_url(&ip), BANNER_DEADLINE).await {
        Ok(ok) => ok,
        Err(e) => panic!("{e}\n--- container log ---\n{}", container.logs().await),
    };
    assert_eq!(banner, desktop::RFB_BANNER);
    eprintln!("RFB banner {took:?} after the container started");

    // Every process of the desktop (Xvnc, the session, websockify) runs as uid 1000.
    let (code, owners) = container
        .exec(&["sh", "-c", "for p in /proc/[0-9]*; do stat -c %u \"$p\" 2>/dev/null; done | sort -u"])
        .await
        .unwrap();
    assert_eq!((code, owners.split_whitespace().collect::<Vec<_>>()), (0, vec!["1000"]), "process owners");
    let (code, out) = container
        .exec(&["sh", "-c", "id -u && id -g && echo hello > /home/user/written && cat /home/user/written"])
        .await
        .unwrap();
    assert_eq!((code, out.as_str()), (0, "1000\n1000\nhello\n"));

    // The limits reached the engine.
    let inspect = docker.inspect_container(&container.id, None).await.unwrap();
    let host = inspect.host_config.unwrap();
    assert_eq!((host.memory, host.nano_cpus), (Some(1 << 30), Some(1_000_000_000)));

    // The password goes to the password file, not to the desktop's processes or the log.
    let (_, leaks) = container
        .exec(&[
            "sh",
            "-c",
            "for p in /proc/[0-9]*; do case \"$(cat $p/comm 2>/dev/null)\" in \
               Xvnc|xfce4-session|xfwm4|xfce4-panel|websockify) \
                 echo \"$(cat $p/comm) $(tr '\\0' '\\n' < $p/environ | grep -c '^VNC_PW=')\";; esac; done",
        ])
        .await
        .unwrap();
    let seen: Vec<&str> = leaks.lines().collect();
    // The banner can come before the panel is up; these three are there by then.
    for process in ["Xvnc", "websockify", "xfce4-session"] {
        assert!(seen.iter().any(|l| l.starts_with(process)), "{process} not running: {seen:?}");
    }
    assert!(seen.iter().all(|l| l.ends_with(" 0")), "VNC_PW in a desktop process's environment: {seen:?}");
    assert!(!container.logs().await.contains("s3cret-pw"), "the password is in the container log");

    container.remove().await.unwrap();
}

#[tokio::test]
async fn an_empty_home_volume_is_seeded_and_the_desktop_starts() {
    common::ensure_built(&[IMAGE]);
    let docker = common::docker().await;
    let mut body = desktop_container(python_tag(), Some("pw"), Limits::default());
    // An empty filesystem owned by uid 1000 on the home, as a fresh volume is.
    body.host_config.as_mut().unwrap().tmpfs =
        Some(HashMap::from([(desktop::HOME.to_string(), "uid=1000,gid=1000,mode=0755".to_string())]));
    let container = Container::run(&docker, body).await.unwrap();

    let ip = container.bridge_ip().await.unwrap();
    if let Err(e) = wait_for_rfb_banner(&websocket_url(&ip), BANNER_DEADLINE).await {
        panic!("{e}\n--- container log ---\n{}", container.logs().await);
    }
    let (code, out) = container.exec(&["sh", "-c", "ls -A /home/user"]).await.unwrap();
    assert_eq!(code, 0);
    for seeded in [".bashrc", ".profile", ".vnc"] {
        assert!(out.split_whitespace().any(|f| f == seeded), "{seeded} missing from the home: {out}");
    }
    container.remove().await.unwrap();
}

#[tokio::test]
async fn without_vnc_pw_the_desktop_refuses_to_start() {
    common::ensure_built(&[IMAGE]);
    let docker = common::docker().await;
    let container = Container::run(&docker, desktop_container(python_tag(), None, Limits::default())).await.unwrap();

    let code = container.wait_exit(Duration::from_secs(30)).await.unwrap();
    let log = container.logs().await;
    assert_ne!(code, 0, "exited 0 without a password; log:\n{log}");
    assert!(log.contains("VNC_PW is not set"), "no clear message; log:\n{log}");
    container.remove().await.unwrap();
}
