//! What the browser tests on the real test cluster share: the fixture's backend behind a portal
//! served on a real socket, and a REAL desktop (Xvnc behind websockify) registered as a
//! workspace's endpoint. Use with `mod common; mod desktop_common; mod kube_common;`.
//!
//! kwok's pods run nothing, so the tests stand in for the desktop container, in a documented,
//! test-only way: as soon as the controller has made the workspace's VNC Secret, [`Desktop`]
//! starts Xvnc with the password from that Secret, puts websockify in front of it, and sets the
//! Workspace annotation `deskpod.io/desktop-endpoint: 127.0.0.1:<websockify port>`, which the
//! portal's proxy honours because the fixture's backend was built with
//! `KubernetesOptions { allow_endpoint_override: true }` (`--allow-desktop-endpoint-override`).
#![allow(dead_code)] // each test binary uses a part

use std::net::SocketAddr;

use deskpod_controller::api::Workspace;
use deskpod_controller::workspace::render::{VNC_PASSWORD_KEY, vnc_secret_name};
use deskpod_portal::AppState;
use deskpod_portal::backend::kubernetes::DESKTOP_ENDPOINT_ANNOTATION;
use deskpod_testsupport::wait_for;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::common;
use crate::desktop_common::{Websockify, Xvnc};
use crate::kube_common::{Fixture, WAIT};

/// A real desktop registered as a workspace's endpoint: Xvnc showing a two-colour plaid, with
/// websockify in front, both killed (by pid) when dropped.
pub struct Desktop {
    _xvnc: Xvnc,
    websockify: Websockify,
}

impl Desktop {
    /// Waits until the workspace and its VNC Secret exist, starts Xvnc with the Secret's password
    /// and websockify, and annotates the Workspace with websockify's address.
    pub async fn register(f: &Fixture, name: &str) -> Self {
        wait_for(&f.workspaces(), name, "created", WAIT, |w: Option<&Workspace>| w.is_some())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let secrets = Api::<Secret>::namespaced(f.client(), &format!("team-{}", f.team));
        let secret = wait_for(&secrets, &vnc_secret_name(name), "VNC password", WAIT, |s: Option<&Secret>| s.is_some())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let password = secret.data.and_then(|mut d| d.remove(VNC_PASSWORD_KEY)).expect("the Secret has a password");
        let password = String::from_utf8(password.0).expect("a text password");
        let desktop = tokio::task::spawn_blocking(move || {
            let xvnc = Xvnc::start(Some(&password));
            // A plaid of two colours, so a blank or single-colour canvas fails.
            let status = std::process::Command::new("/usr/bin/xsetroot")
                .args(["-mod", "8", "8", "-fg", "#ff8800", "-bg", "#0044aa"])
                .env("DISPLAY", format!(":{}", xvnc.display))
                .status()
                .unwrap();
            assert!(status.success(), "xsetroot failed");
            let websockify = Websockify::plain(xvnc.rfb_port);
            Self { _xvnc: xvnc, websockify }
        })
        .await
        .unwrap();
        let annotate = json!({ "metadata": { "annotations": {
            DESKTOP_ENDPOINT_ANNOTATION: desktop.address().to_string()
        } } });
        f.workspaces().patch(name, &PatchParams::default(), &Patch::Merge(&annotate)).await.expect("annotate");
        desktop
    }

    pub fn address(&self) -> SocketAddr {
        self.websockify.addr()
    }
}

/// The fixture's backend behind a portal served on a real socket (websocket upgrades and
/// server-sent events need one), whose public URL is its own address so the browser's `Origin`
/// and invite links match.
pub struct ServedPortal {
    pub portal: common::Portal,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl ServedPortal {
    pub async fn start(f: &Fixture) -> Self {
        Self::start_with(f, |state| state).await
    }

    /// Serves the portal with its state changed by `configure` first (e.g. an invite hook).
    pub async fn start_with(f: &Fixture, configure: impl FnOnce(AppState) -> AppState) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut portal = common::Portal::with_url(&format!("http://{addr}")).await;
        portal.state = configure(portal.state.clone().with_backend(f.portal.state.backend.clone()));
        let app = deskpod_portal::app(portal.state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
        });
        Self { portal, addr, server }
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ServedPortal {
    fn drop(&mut self) {
        self.server.abort();
    }
}
