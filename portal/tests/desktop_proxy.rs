//! The desktop connection against REAL desktops: Xvnc (TigerVNC) behind Debian's websockify,
//! reached through the portal's proxy on a real socket. Only the backend boundary is a test
//! double. Needs `portal/tests/setup-desktop-tools`.

mod common;
mod desktop_common;

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use deskpod_portal::TeamRole;
use deskpod_portal::backend::Phase;
use deskpod_portal::store::{GlobalRole, NewUser};
use desktop_common::{ServedPortal, TestBackend, Websockify, Xvnc, novnc_endpoint};
use futures::{SinkExt, StreamExt};
use jiff::{SignedDuration, Timestamp};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use common::{Browser, PASSWORD};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const VNC_PASSWORD: &str = "s3cret-vnc";

/// Opens a websocket through the portal; the HTTP status when refused.
async fn open(url: &str, cookie: Option<&str>, origin: Option<&str>) -> Result<Socket, StatusCode> {
    let mut request = url.into_client_request().unwrap();
    if let Some(cookie) = cookie {
        request.headers_mut().insert("cookie", HeaderValue::from_str(cookie).unwrap());
    }
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", HeaderValue::from_str(origin).unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status()),
        Err(other) => panic!("websocket failed without an HTTP answer: {other}"),
    }
}

fn cookie_of(browser: &Browser) -> String {
    browser.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
}

/// Reads exactly `n` bytes of RFB from the socket.
async fn read_rfb(socket: &mut Socket, pending: &mut Vec<u8>, n: usize) -> Vec<u8> {
    while pending.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("no RFB data within 10 s")
            .expect("the socket closed")
            .expect("the socket failed");
        if let Message::Binary(data) = message {
            pending.extend_from_slice(&data);
        }
    }
    pending.drain(..n).collect()
}

async fn send(socket: &mut Socket, data: &[u8]) {
    socket.send(Message::Binary(Bytes::copy_from_slice(data))).await.unwrap();
}

/// Does the browser's side of the handshake the portal offers (RFB 3.8, security None) and
/// ClientInit; returns the desktop's framebuffer size from ServerInit.
async fn handshake(socket: &mut Socket) -> (u16, u16) {
    let mut pending = Vec::new();
    assert_eq!(read_rfb(socket, &mut pending, 12).await, b"RFB 003.008\n");
    send(socket, b"RFB 003.008\n").await;
    assert_eq!(read_rfb(socket, &mut pending, 2).await, [1, 1], "the portal offers security None only");
    send(socket, &[1]).await;
    assert_eq!(read_rfb(socket, &mut pending, 4).await, [0, 0, 0, 0]);
    send(socket, &[1]).await; // ClientInit: shared
    let init = read_rfb(socket, &mut pending, 24).await;
    let name_length = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
    read_rfb(socket, &mut pending, name_length).await;
    (u16::from_be_bytes([init[0], init[1]]), u16::from_be_bytes([init[2], init[3]]))
}

const UPDATE_REQUEST: [u8; 10] = [3, 1, 0, 0, 0, 0, 2, 128, 1, 224];
const KEY_DOWN: [u8; 8] = [4, 1, 0, 0, 0, 0, 0x00, 0x61];
const KEY_UP: [u8; 8] = [4, 0, 0, 0, 0, 0, 0x00, 0x61];

/// A case: what it is, who (none: no cookie), the Origin sent, the workspace, the answer.
type Case<'a> = (&'a str, Option<&'a str>, Option<&'a String>, &'a str, StatusCode);

/// One real desktop, a team and its people.
struct Fixture {
    served: ServedPortal,
    _xvnc: Xvnc,
    _websockify: Websockify,
}

async fn fixture(leads_may_connect: bool) -> Fixture {
    let xvnc = Xvnc::start(Some(VNC_PASSWORD));
    let websockify = Websockify::plain(xvnc.rfb_port);
    let backend = TestBackend::new();
    backend.add_team("platform", leads_may_connect);
    let endpoint = novnc_endpoint(&websockify, Some(VNC_PASSWORD));
    backend.add_workspace("platform", "one", "alice@example.com", Phase::Running, Some(endpoint.clone()));
    backend.add_workspace("platform", "stopped", "alice@example.com", Phase::Stopped, None);
    backend.add_workspace("platform", "starting", "alice@example.com", Phase::Starting, None);
    backend.add_workspace("platform", "contractors", "carol@example.com", Phase::Running, Some(endpoint));
    let served = ServedPortal::start(backend.clone()).await;
    for (user, role) in [("alice", GlobalRole::User), ("bob", GlobalRole::User), ("lead", GlobalRole::User)] {
        served.portal.add_user(&format!("{user}@example.com"), role).await;
    }
    served.portal.add_user("root@example.com", GlobalRole::Admin).await;
    served.portal.add_user("carol@example.com", GlobalRole::User).await;
    backend.set_member("alice@example.com", "platform", TeamRole::Engineer, None);
    backend.set_member("bob@example.com", "platform", TeamRole::Engineer, None);
    backend.set_member("lead@example.com", "platform", TeamRole::Lead, None);
    let expired = Timestamp::now() - SignedDuration::from_hours(1);
    backend.set_member("carol@example.com", "platform", TeamRole::Contractor, Some(expired));
    Fixture { served, _xvnc: xvnc, _websockify: websockify }
}

#[tokio::test]
async fn who_may_open_a_desktop_websocket() {
    let f = fixture(false).await;
    let served = &f.served;
    let origin = served.origin();
    let mut cookies = std::collections::HashMap::new();
    for user in ["alice", "bob", "lead", "root", "carol"] {
        cookies.insert(user, cookie_of(&Browser::signed_in(&served.portal, &format!("{user}@example.com")).await));
    }
    // A contractor whose account ends two seconds from now signs in, then the account expires.
    let ends = Timestamp::now() + SignedDuration::from_secs(2);
    let hash = deskpod_portal::auth::password::hash(PASSWORD.into()).await.unwrap();
    let user = NewUser {
        id: "dave@example.com".into(),
        display_name: "dave".into(),
        role: GlobalRole::User,
        password_hash: Some(hash),
        expires_at: Some(ends),
    };
    served.portal.store().create_user(user).await.unwrap();
    served.backend.set_member("dave@example.com", "platform", TeamRole::Contractor, None);
    served.backend.add_workspace(
        "platform",
        "daves",
        "dave@example.com",
        Phase::Running,
        served.backend.desktop_of("platform", "one"),
    );
    cookies.insert("dave", cookie_of(&Browser::signed_in(&served.portal, "dave@example.com").await));
    let dave_can_before =
        open(&served.ws_url("/workspaces/platform/daves/websockify"), Some(&cookies["dave"]), Some(&origin)).await;
    assert!(dave_can_before.is_ok(), "the contractor connects before expiry: {:?}", dave_can_before.err());
    tokio::time::sleep_until((std::time::Instant::now() + Duration::from_millis(2100)).into()).await;

    let foreign = "http://evil.example.com".to_owned();
    let ok = StatusCode::SWITCHING_PROTOCOLS;
    #[rustfmt::skip]
    let table: &[Case] = &[
        ("owner", Some("alice"), Some(&origin), "one", ok),
        ("other engineer", Some("bob"), Some(&origin), "one", StatusCode::FORBIDDEN),
        ("lead, team does not allow", Some("lead"), Some(&origin), "one", StatusCode::FORBIDDEN),
        ("admin, team does not allow", Some("root"), Some(&origin), "one", StatusCode::FORBIDDEN),
        ("foreign origin", Some("alice"), Some(&foreign), "one", StatusCode::FORBIDDEN),
        ("no origin", Some("alice"), None, "one", StatusCode::FORBIDDEN),
        ("no cookie", None, Some(&origin), "one", StatusCode::UNAUTHORIZED),
        ("stopped", Some("alice"), Some(&origin), "stopped", StatusCode::CONFLICT),
        ("starting", Some("alice"), Some(&origin), "starting", StatusCode::CONFLICT),
        ("unknown workspace", Some("alice"), Some(&origin), "nope", StatusCode::NOT_FOUND),
        ("contractor membership expired", Some("carol"), Some(&origin), "contractors", StatusCode::FORBIDDEN),
        ("contractor account expired", Some("dave"), Some(&origin), "daves", StatusCode::UNAUTHORIZED),
    ];
    for (case, user, origin, workspace, expected) in table {
        let cookie = user.map(|u| cookies[u].as_str());
        let url = served.ws_url(&format!("/workspaces/platform/{workspace}/websockify"));
        let status = open(&url, cookie, origin.map(String::as_str)).await.map_or_else(|s| s, |_| ok);
        assert_eq!(status, *expected, "{case}");
    }
    // Someone who is not in the team learns nothing about which workspaces exist.
    served.portal.add_user("eve@example.com", GlobalRole::User).await;
    let eve = cookie_of(&Browser::signed_in(&served.portal, "eve@example.com").await);
    for workspace in ["one", "nope"] {
        let url = served.ws_url(&format!("/workspaces/platform/{workspace}/websockify"));
        assert_eq!(open(&url, Some(&eve), Some(&origin)).await.err(), Some(StatusCode::FORBIDDEN), "{workspace}");
    }
}

#[tokio::test]
async fn leads_and_admins_connect_only_when_the_team_allows() {
    let f = fixture(true).await;
    let served = &f.served;
    let url = served.ws_url("/workspaces/platform/one/websockify");
    for (user, allowed) in [("lead", true), ("root", true), ("bob", false)] {
        let cookie = cookie_of(&Browser::signed_in(&served.portal, &format!("{user}@example.com")).await);
        let result = open(&url, Some(&cookie), Some(&served.origin())).await;
        assert_eq!(result.is_ok(), allowed, "{user}: {:?}", result.err());
    }
}

#[tokio::test]
async fn the_desktop_view_is_the_owners() {
    let f = fixture(false).await;
    let portal = &f.served.portal;
    let mut alice = Browser::signed_in(portal, "alice@example.com").await;
    let page = alice.get(portal, "/workspaces/platform/one/desktop").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains(r#"data-websocket-path="/workspaces/platform/one/websockify""#), "{}", page.body);
    assert!(page.body.contains(r#"src="/static/desktop.js""#));
    assert!(!page.body.contains(VNC_PASSWORD));

    let stopped = alice.get(portal, "/workspaces/platform/stopped/desktop").await;
    assert_eq!(stopped.status, StatusCode::CONFLICT);
    assert!(stopped.body.contains("Stopped, not Running"), "{}", stopped.body);
    // One on its way gets a page that waits for it (and reloads itself), not an error.
    let starting = alice.get(portal, "/workspaces/platform/starting/desktop").await;
    assert_eq!(starting.status, StatusCode::OK, "{}", starting.body);
    assert!(starting.body.contains("Your desktop is starting"), "{}", starting.body);
    assert!(starting.body.contains(r#"http-equiv="refresh""#), "{}", starting.body);

    let mut bob = Browser::signed_in(portal, "bob@example.com").await;
    assert_eq!(bob.get(portal, "/workspaces/platform/one/desktop").await.status, StatusCode::FORBIDDEN);
    let mut carol = Browser::signed_in(portal, "carol@example.com").await;
    assert_eq!(carol.get(portal, "/workspaces/platform/contractors/desktop").await.status, StatusCode::FORBIDDEN);

    let signed_out = Browser::new().get(portal, "/workspaces/platform/one/desktop").await;
    assert_eq!(signed_out.status, StatusCode::SEE_OTHER);
    assert!(signed_out.location().starts_with("/signin?next="), "{}", signed_out.location());
}

#[tokio::test]
async fn the_portal_authenticates_to_a_real_xvnc_and_relays_its_framebuffer() {
    let f = fixture(false).await;
    let served = &f.served;
    let cookie = cookie_of(&Browser::signed_in(&served.portal, "alice@example.com").await);
    let mut socket = open(&served.ws_url("/workspaces/platform/one/websockify"), Some(&cookie), Some(&served.origin()))
        .await
        .unwrap();
    // Xvnc requires VNC authentication; the browser is offered None and still gets ServerInit.
    assert_eq!(handshake(&mut socket).await, (640, 480));

    // A full framebuffer update arrives from the real X server.
    send(&mut socket, &[3, 0, 0, 0, 0, 0, 2, 128, 1, 224]).await;
    let mut pending = Vec::new();
    let header = read_rfb(&mut socket, &mut pending, 4).await;
    assert_eq!(header[0], 0, "FramebufferUpdate");

    // Pings are answered.
    socket.send(Message::Ping(Bytes::from_static(b"hello"))).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Pong(data))) => return data,
                Some(Ok(_)) => continue,
                other => panic!("no pong: {other:?}"),
            }
        }
    })
    .await
    .expect("no pong within 5 s");
    assert_eq!(&pong[..], b"hello");
}

#[tokio::test]
async fn update_requests_alone_are_not_activity_but_a_key_is() {
    let f = fixture(false).await;
    let served = &f.served;
    let backend = &served.backend;
    let cookie = cookie_of(&Browser::signed_in(&served.portal, "alice@example.com").await);
    let url = served.ws_url("/workspaces/platform/one/websockify");
    let mut socket = open(&url, Some(&cookie), Some(&served.origin())).await.unwrap();
    handshake(&mut socket).await;

    // An open tab that only asks for updates, split across frames in odd places.
    let mut requests = UPDATE_REQUEST.repeat(20);
    requests.extend_from_slice(&[0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    for chunk in requests.chunks(7) {
        send(&mut socket, chunk).await;
    }
    assert!(!backend.wait_for_inputs("platform", "one", 1, Duration::from_millis(700)).await, "no input yet");

    // A key press, its first byte at the end of one frame and the rest in the next.
    let mut press = UPDATE_REQUEST.to_vec();
    press.extend_from_slice(&KEY_DOWN[..1]);
    send(&mut socket, &press).await;
    send(&mut socket, &KEY_DOWN[1..]).await;
    assert!(backend.wait_for_inputs("platform", "one", 1, Duration::from_secs(5)).await, "the key press was recorded");

    // More input within the minute, on this and on a second connection, is not written again.
    send(&mut socket, &KEY_UP).await;
    let mut second = open(&url, Some(&cookie), Some(&served.origin())).await.unwrap();
    handshake(&mut second).await;
    send(&mut second, &[5, 0, 0, 10, 0, 10]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(backend.input_count("platform", "one"), 1);
}

#[tokio::test]
async fn a_wrong_vnc_password_is_a_502_without_the_password() {
    let f = fixture(false).await;
    let served = &f.served;
    let mut endpoint = served.backend.desktop_of("platform", "one").unwrap();
    endpoint.password = Some("wrong-password".into());
    served.backend.add_workspace("platform", "one", "alice@example.com", Phase::Running, Some(endpoint));
    let cookie = cookie_of(&Browser::signed_in(&served.portal, "alice@example.com").await);
    let url = served.ws_url("/workspaces/platform/one/websockify");
    assert_eq!(open(&url, Some(&cookie), Some(&served.origin())).await.err(), Some(StatusCode::BAD_GATEWAY));
}

#[tokio::test]
async fn a_close_from_the_browser_is_answered() {
    let f = fixture(false).await;
    let served = &f.served;
    let cookie = cookie_of(&Browser::signed_in(&served.portal, "alice@example.com").await);
    let url = served.ws_url("/workspaces/platform/one/websockify");
    let mut socket = open(&url, Some(&cookie), Some(&served.origin())).await.unwrap();
    handshake(&mut socket).await;
    socket.close(None).await.unwrap();
    // The close completes (the portal answers it) rather than hanging.
    let end = tokio::time::timeout(Duration::from_secs(5), async { while socket.next().await.is_some() {} }).await;
    assert!(end.is_ok(), "the close handshake did not complete");
}
