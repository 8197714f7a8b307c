//! The `kasm` profile against an HTTPS, basic-auth upstream standing in for KasmVNC: Debian's
//! websockify with a self-signed certificate and its BasicHTTPAuth plugin, serving noVNC in front
//! of a real Xvnc. The browser side must never see the password or an Authorization header.

mod common;
mod desktop_common;

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use base64::Engine;
use deskpod_portal::TeamRole;
use deskpod_portal::backend::Phase;
use deskpod_portal::store::GlobalRole;
use desktop_common::{SelfSigned, ServedPortal, TestBackend, Websockify, Xvnc, kasm_endpoint};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use common::Browser;

const KASM_PASSWORD: &str = "kasm-pass-7c1e";

/// A raw HTTP/1.1 exchange with the portal, so the test sees every byte the browser would.
async fn fetch(served: &ServedPortal, path: &str, cookie: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nAccept: text/html\r\nConnection: close\r\n\r\n",
        served.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await.unwrap().unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

fn assert_no_secret(text: &str, what: &str) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("kasm_user:{KASM_PASSWORD}"));
    assert!(!text.contains(KASM_PASSWORD), "{what} contains the password");
    assert!(!text.contains(&basic), "{what} contains the basic-auth credentials");
    assert!(!text.to_ascii_lowercase().contains("\nauthorization:"), "{what} has an Authorization header");
    assert!(!text.to_ascii_lowercase().contains("www-authenticate"), "{what} asks for credentials");
}

#[tokio::test]
async fn the_kasm_client_and_websocket_are_proxied_without_showing_the_password() {
    let xvnc = Xvnc::start(None);
    let tls = SelfSigned::new();
    let upstream = Websockify::kasm(xvnc.rfb_port, KASM_PASSWORD, &tls);
    let backend = TestBackend::new();
    backend.add_team("platform", false);
    backend.add_workspace(
        "platform",
        "k",
        "alice@example.com",
        Phase::Running,
        Some(kasm_endpoint(&upstream, KASM_PASSWORD)),
    );
    let served = ServedPortal::start(backend.clone()).await;
    for user in ["alice", "bob"] {
        served.portal.add_user(&format!("{user}@example.com"), GlobalRole::User).await;
        backend.set_member(&format!("{user}@example.com"), "platform", TeamRole::Engineer, None);
    }
    let alice = Browser::signed_in(&served.portal, "alice@example.com").await;
    let cookie = alice.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");

    // The stand-in really demands the credentials: without the portal, no page.
    let direct = get_without_credentials(upstream.addr()).await;
    assert!(direct.starts_with("HTTP/1.1 401") || direct.starts_with("HTTP/1.0 401"), "{direct}");

    // The desktop view sends the browser to the proxied client.
    let view = fetch(&served, "/workspaces/platform/k/desktop", &cookie).await;
    assert!(view.starts_with("HTTP/1.1 303"), "{view}");
    assert!(view.contains("location: /workspaces/platform/k/kasm/vnc.html?"), "{view}");
    assert_no_secret(&view, "the desktop view");

    // The client page and its scripts come through the portal.
    let page = fetch(&served, "/workspaces/platform/k/kasm/vnc.html", &cookie).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{}", &page[..page.len().min(400)]);
    assert!(page.contains("app/ui.js"), "the noVNC page itself");
    assert_no_secret(&page, "the client page");
    let script = fetch(&served, "/workspaces/platform/k/kasm/core/rfb.js", &cookie).await;
    assert!(script.starts_with("HTTP/1.1 200") && script.contains("export default class RFB"));
    assert_no_secret(&script, "a script");

    // Someone else's session gets nothing from the upstream.
    let bob = Browser::signed_in(&served.portal, "bob@example.com").await;
    let bob_cookie = bob.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
    assert!(fetch(&served, "/workspaces/platform/k/kasm/vnc.html", &bob_cookie).await.starts_with("HTTP/1.1 403"));

    // The websocket, under the proxied path and under /websockify, reaches the real Xvnc.
    for path in ["/workspaces/platform/k/kasm/websockify", "/workspaces/platform/k/websockify"] {
        let mut request = served.ws_url(path).into_client_request().unwrap();
        request.headers_mut().insert("cookie", HeaderValue::from_str(&cookie).unwrap());
        request.headers_mut().insert("origin", HeaderValue::from_str(&served.origin()).unwrap());
        let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let headers = format!("{:?}", response.headers());
        assert_no_secret(&headers, "the upgrade response");
        let banner = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap().unwrap().unwrap();
        // Passed through: Xvnc's own banner (the browser does the kasm handshake itself).
        assert_eq!(banner.into_data(), Bytes::from_static(b"RFB 003.008\n"), "{path}");
        socket.send(Message::Close(None)).await.unwrap();
    }

    // A foreign page cannot open it.
    let mut request = served.ws_url("/workspaces/platform/k/kasm/websockify").into_client_request().unwrap();
    request.headers_mut().insert("cookie", HeaderValue::from_str(&cookie).unwrap());
    request.headers_mut().insert("origin", HeaderValue::from_static("https://evil.example.com"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN)
        }
        other => panic!("a foreign origin was not refused: {:?}", other.map(|(_, r)| r.status())),
    }
}

/// A GET straight to the stand-in over TLS, without credentials.
async fn get_without_credentials(addr: std::net::SocketAddr) -> String {
    let mut child = tokio::process::Command::new("/usr/bin/openssl")
        .args(["s_client", "-quiet", "-connect", &addr.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"GET /vnc.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    // Keep stdin open until the answer is in; s_client ends when the server closes.
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await.unwrap().unwrap();
    drop(stdin);
    String::from_utf8_lossy(&output.stdout).into_owned()
}
