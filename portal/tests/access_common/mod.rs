//! What the "access ends, the connection closes" tests share, whatever the backend: a desktop
//! websocket and a workspace event stream opened through the portal, each watched by a task that
//! notes when it closed, and [`every_way_access_ends`], the scenario every backend runs: sign-out,
//! a disabled account, a membership removed, a contractor's membership expiring, the session's
//! own expiry and a contractor's account ending each close the connections within
//! [`CLOSED_WITHIN`] (measured from the change, or from the expiry), and nothing closes while
//! nothing changes. The event stream covers every team of its user, so a membership that ends
//! does not end it: the workspace leaves it (a `removed` event) within the same bound instead.
//! Use with `mod common; mod desktop_common; mod access_common;`.
#![allow(dead_code)] // each test binary uses a part

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use deskpod_portal::store::{InviteAccount, InviteRole, NewInvite};
use deskpod_portal::{AppState, TeamRole};
use futures::{SinkExt, StreamExt};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower::ServiceExt;

use crate::common::{Browser, Portal};
use crate::desktop_common::TestBackend;

/// How soon after access ends its connections must be closed.
pub const CLOSED_WITHIN: Duration = Duration::from_secs(2);

/// How long connections are watched while nothing changes (several re-checks).
const STEADY: Duration = Duration::from_millis(1500);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A portal's app served on a real socket (websocket upgrades need one); stopped when dropped.
pub struct Served {
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Served {
    pub fn start(listener: tokio::net::TcpListener, state: AppState) -> Self {
        let addr = listener.local_addr().unwrap();
        let app = deskpod_portal::app(state);
        let server = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
        });
        Self { addr, server }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The `Cookie` header of a browser.
pub fn cookie_of(browser: &Browser) -> String {
    browser.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
}

/// When a connection closed, and the close frame the portal sent, if any.
type Closed = Arc<Mutex<Option<(Instant, Option<CloseFrame>)>>>;

/// A desktop websocket through the portal, past the RFB handshake, read by a task until it closes.
pub struct Desktop {
    closed: Closed,
    reader: tokio::task::JoinHandle<()>,
}

impl Desktop {
    /// Opens the desktop at `url` as a browser with `cookie` and `origin`; the HTTP status if refused.
    pub async fn open(url: &str, cookie: &str, origin: &str) -> Result<Self, StatusCode> {
        let mut socket = connect(url, cookie, origin).await?;
        handshake(&mut socket).await;
        Ok(Self::watch(socket))
    }

    /// Opens a `kasm` desktop's websocket (relayed from the first byte) and reads the desktop's
    /// RFB banner.
    pub async fn open_kasm(url: &str, cookie: &str, origin: &str) -> Self {
        let mut socket = connect(url, cookie, origin).await.expect("the kasm websocket opens");
        let mut pending = Vec::new();
        assert_eq!(read_rfb(&mut socket, &mut pending, 12).await, b"RFB 003.008\n");
        Self::watch(socket)
    }

    /// Reads `socket` in a task until it closes.
    fn watch(mut socket: Socket) -> Self {
        let closed = Closed::default();
        let noted = closed.clone();
        let reader = tokio::spawn(async move {
            let frame = loop {
                match socket.next().await {
                    Some(Ok(Message::Close(frame))) => break frame,
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break None,
                }
            };
            *noted.lock().unwrap() = Some((Instant::now(), frame));
        });
        Self { closed, reader }
    }

    /// Opens it, trying again while the desktop is not answering yet (502) for up to `within`.
    pub async fn open_when_ready(url: &str, cookie: &str, origin: &str, within: Duration) -> Self {
        let deadline = Instant::now() + within;
        loop {
            match Self::open(url, cookie, origin).await {
                Ok(desktop) => return desktop,
                Err(StatusCode::BAD_GATEWAY) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => panic!("opening the desktop was refused: {status}"),
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.closed.lock().unwrap().is_none()
    }

    /// Waits until the desktop closed, at most until `since + CLOSED_WITHIN`; checks the portal
    /// said why (code 1008, a reason containing `reason`) and returns how long after `since`.
    pub async fn closed_since(&self, since: Instant, reason: &str, what: &str) -> Duration {
        let deadline = since + CLOSED_WITHIN;
        let (at, frame) = loop {
            if let Some(closed) = self.closed.lock().unwrap().clone() {
                break closed;
            }
            assert!(Instant::now() < deadline, "{what}: the desktop is still open {CLOSED_WITHIN:?} later");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(at <= deadline, "{what}: the desktop closed only {:?} later", at - since);
        let frame = frame.unwrap_or_else(|| panic!("{what}: the desktop closed without a close frame"));
        assert_eq!(u16::from(frame.code), 1008, "{what}: {frame:?}");
        assert!(frame.reason.contains(reason), "{what}: the reason {:?} does not say {reason:?}", frame.reason);
        at.saturating_duration_since(since)
    }
}

impl Drop for Desktop {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Opens a websocket through the portal as a browser; the HTTP status if refused.
async fn connect(url: &str, cookie: &str, origin: &str) -> Result<Socket, StatusCode> {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("cookie", HeaderValue::from_str(cookie).unwrap());
    request.headers_mut().insert("origin", HeaderValue::from_str(origin).unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status()),
        Err(other) => panic!("websocket failed without an HTTP answer: {other}"),
    }
}

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

/// The browser's side of the handshake the portal offers (RFB 3.8, security None) up to the
/// desktop's ServerInit: proof that the relay reaches the desktop.
async fn handshake(socket: &mut Socket) {
    let mut pending = Vec::new();
    assert_eq!(read_rfb(socket, &mut pending, 12).await, b"RFB 003.008\n");
    send(socket, b"RFB 003.008\n").await;
    assert_eq!(read_rfb(socket, &mut pending, 2).await, [1, 1]);
    send(socket, &[1]).await;
    assert_eq!(read_rfb(socket, &mut pending, 4).await, [0, 0, 0, 0]);
    send(socket, &[1]).await; // ClientInit: shared
    let init = read_rfb(socket, &mut pending, 24).await;
    let name_length = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
    read_rfb(socket, &mut pending, name_length).await;
}

/// What an event stream delivered: each event with when it arrived, and when the stream ended.
#[derive(Default)]
struct Seen {
    events: Vec<(Instant, String, Value)>,
    ended: Option<Instant>,
}

/// `GET /api/v1/workspaces/events` in-process, read by a task from the moment it opens.
pub struct Events {
    seen: Arc<Mutex<Seen>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Events {
    pub async fn open(portal: &Portal, cookie: &str) -> Self {
        let request = Request::builder()
            .method(Method::GET)
            .uri("/api/v1/workspaces/events")
            .header(header::ACCEPT, "text/event-stream")
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap();
        let response = portal.app().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let noted = seen.clone();
        let mut body = response.into_body().into_data_stream();
        let reader = tokio::spawn(async move {
            let mut buffer = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buffer.push_str(std::str::from_utf8(&chunk).unwrap());
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let (mut event, mut data) = (String::new(), String::new());
                    for line in block.lines() {
                        if let Some(value) = line.strip_prefix("event:") {
                            event = value.trim().to_owned();
                        } else if let Some(value) = line.strip_prefix("data:") {
                            data.push_str(value.trim());
                        }
                    }
                    if !event.is_empty() {
                        let data = serde_json::from_str(&data).unwrap_or(Value::Null);
                        noted.lock().unwrap().events.push((Instant::now(), event, data));
                    }
                }
            }
            noted.lock().unwrap().ended = Some(Instant::now());
        });
        Self { seen, reader }
    }

    pub fn is_open(&self) -> bool {
        self.seen.lock().unwrap().ended.is_none()
    }

    /// Waits for an `event` about workspace `name` that arrived after `after`, until `deadline`;
    /// when it arrived.
    pub async fn event_about(&self, event: &str, name: &str, after: Instant, deadline: Instant, what: &str) -> Instant {
        loop {
            let found = (self.seen.lock().unwrap().events.iter())
                .find(|(at, kind, data)| *at > after && kind == event && data["name"] == name)
                .map(|(at, _, _)| *at);
            if let Some(at) = found {
                assert!(at <= deadline, "{what}: the `{event}` event came too late");
                return at;
            }
            assert!(Instant::now() < deadline, "{what}: no `{event}` event for {name}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the stream ended, at most until `since + CLOSED_WITHIN`; how long after `since`.
    pub async fn ended_since(&self, since: Instant, what: &str) -> Duration {
        let deadline = since + CLOSED_WITHIN;
        let at = loop {
            if let Some(at) = self.seen.lock().unwrap().ended {
                break at;
            }
            assert!(Instant::now() < deadline, "{what}: the event stream is still open {CLOSED_WITHIN:?} later");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(at <= deadline, "{what}: the event stream ended only {:?} later", at - since);
        at.saturating_duration_since(since)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// How a test changes a user's membership of the team.
pub enum Members {
    /// The in-memory test backend's memberships.
    Test(Arc<TestBackend>),
    /// Through the admin API (`GET`/`PUT /api/v1/admin/teams/{team}`), as a platform admin would;
    /// the same on the Docker and the Kubernetes backend.
    Admin { admin: Browser, csrf: String },
}

impl Members {
    /// An admin's session for [`Members::Admin`].
    pub async fn admin(portal: &Portal, admin: &str) -> Self {
        let mut admin = Browser::signed_in(portal, admin).await;
        let csrf = admin.session_csrf(portal).await;
        Self::Admin { admin, csrf }
    }

    /// Makes `user` an engineer of `team`, a contractor until `until`, or (`None`) no member.
    pub async fn set(&self, portal: &Portal, team: &str, user: &str, membership: Option<Option<Timestamp>>) {
        match self {
            Self::Test(backend) => match membership {
                None => backend.memberships.set(user, vec![]),
                Some(None) => backend.set_member(user, team, TeamRole::Engineer, None),
                Some(until) => backend.set_member(user, team, TeamRole::Contractor, until),
            },
            Self::Admin { admin, csrf } => {
                let path = format!("/api/v1/admin/teams/{team}");
                let current = admin.api(portal, Method::GET, &path, None, None).await;
                assert_eq!(current.status, StatusCode::OK, "{}", current.body);
                let mut spec = current.json()["spec"].clone();
                let members = spec["members"].as_array_mut().expect("the team has members");
                members.retain(|member| member["user"] != user);
                match membership {
                    None => {}
                    Some(None) => members.push(json!({ "user": user, "role": "engineer" })),
                    Some(Some(until)) => {
                        members.push(json!({ "user": user, "role": "contractor", "expiresAt": until.to_string() }));
                    }
                }
                let saved = admin.api(portal, Method::PUT, &path, Some(csrf), Some(&spec.to_string())).await;
                assert_eq!(saved.status, StatusCode::OK, "{}", saved.body);
            }
        }
    }
}

/// One backend's workspace under test, owned by `user`, whose desktop is running.
pub struct Setup<'a> {
    pub portal: &'a Portal,
    /// `ws://.../workspaces/{team}/{name}/websockify` on the served portal.
    pub desktop_url: String,
    /// The portal's origin, as its pages would send it.
    pub origin: String,
    pub user: String,
    pub team: String,
    pub workspace: String,
    pub members: Members,
}

/// How long after each change its connections closed.
#[derive(Debug)]
pub struct Latency {
    pub case: &'static str,
    pub desktop: Duration,
    /// The event stream ending, or (membership cases) the `removed` event arriving.
    pub stream: Duration,
}

impl Setup<'_> {
    async fn desktop(&self, cookie: &str) -> Desktop {
        Desktop::open_when_ready(&self.desktop_url, cookie, &self.origin, Duration::from_secs(60)).await
    }

    /// An event stream that has shown the workspace.
    async fn events(&self, cookie: &str) -> Events {
        let opened = Instant::now();
        let events = Events::open(self.portal, cookie).await;
        self.shows_workspace(&events, opened).await;
        events
    }

    async fn shows_workspace(&self, events: &Events, after: Instant) {
        let deadline = Instant::now() + Duration::from_secs(30);
        events.event_about("workspace", &self.workspace, after, deadline, "the stream shows the workspace").await;
    }
}

/// An instant `at` is from now (now if it passed).
fn instant_of(at: Timestamp) -> Instant {
    Instant::now() + Duration::try_from(Timestamp::now().duration_until(at)).unwrap_or_default()
}

/// Polls `open` for [`STEADY`] and fails as soon as it is false: `what` stayed open while
/// nothing changed (several re-checks passed).
pub async fn stays_open(what: &str, open: impl Fn() -> bool) {
    let until = Instant::now() + STEADY;
    while Instant::now() < until {
        assert!(open(), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(open(), "{what}");
}

/// How far ahead a test sets an expiry: time enough to open the connections first (on Docker
/// and Kubernetes a membership change goes through the admin API and the backend).
const EXPIRES_IN: i64 = 8;

/// An expiry [`EXPIRES_IN`] seconds from now, on a whole second (as the Team's `expiresAt` is).
fn soon() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second() + EXPIRES_IN).unwrap()
}

/// Sets the account's end to `until` as accepting a contractor invite does (the store's
/// `InviteAccount::Existing`).
async fn end_account_at(portal: &Portal, user: &str, until: Timestamp) {
    let now = Timestamp::now();
    let id = format!("access-ends-{}", until.as_second());
    let invite = NewInvite {
        id: id.clone(),
        token_hash: [7; 32],
        email: user.into(),
        team: "unused".into(),
        role: InviteRole::Contractor,
        template: None,
        access_expires_at: Some(until),
        link_expires_at: now + SignedDuration::from_secs(600),
        created_by: "test".into(),
    };
    portal.store().create_invite(invite).await.unwrap();
    let account = InviteAccount::Existing { user_id: user.into(), expires_at: Some(until) };
    let user = portal.store().redeem_invite(id, now, account).await.unwrap();
    assert_eq!(user.expires_at, Some(until));
}

/// Every way access ends, in turn, each closing the connections it should within
/// [`CLOSED_WITHIN`] and leaving the others open.
pub async fn every_way_access_ends(s: Setup<'_>) -> Vec<Latency> {
    let portal = s.portal;
    let mut latencies = vec![];

    // Two sessions of the user, each with the desktop and the event stream open.
    let mut first = Browser::signed_in(portal, &s.user).await;
    let second = Browser::signed_in(portal, &s.user).await;
    let (d1, e1) = (s.desktop(&cookie_of(&first)).await, s.events(&cookie_of(&first)).await);
    let (d2, e2) = (s.desktop(&cookie_of(&second)).await, s.events(&cookie_of(&second)).await);

    // While nothing changes, nothing closes (the re-checks pass).
    let all_open = || d1.is_open() && d2.is_open() && e1.is_open() && e2.is_open();
    stays_open("a connection closed while nothing changed", all_open).await;

    // Sign-out ends that session's connections, not the other session's.
    let csrf = first.session_csrf(portal).await;
    let since = Instant::now();
    let signed_out = first.post(portal, "/signout", &[("csrf", csrf.as_str())]).await;
    assert_eq!(signed_out.status, StatusCode::SEE_OTHER);
    let desktop = d1.closed_since(since, "signed out", "sign-out").await;
    let stream = e1.ended_since(since, "sign-out").await;
    latencies.push(Latency { case: "sign-out", desktop, stream });
    let others_open = || d2.is_open() && e2.is_open();
    stays_open("signing one session out closed another session's connections", others_open).await;

    // Disabling the account ends every session's connections.
    let since = Instant::now();
    portal.store().set_disabled(&s.user, true).await.unwrap();
    let desktop = d2.closed_since(since, "disabled", "account disabled").await;
    let stream = e2.ended_since(since, "account disabled").await;
    latencies.push(Latency { case: "account disabled", desktop, stream });
    portal.store().set_disabled(&s.user, false).await.unwrap();

    // Removed from the team: the desktop closes; the stream (which covers every team of the
    // user) stays and says the workspace is gone.
    let third = Browser::signed_in(portal, &s.user).await;
    let cookie = cookie_of(&third);
    let (d3, e3) = (s.desktop(&cookie).await, s.events(&cookie).await);
    let since = Instant::now();
    s.members.set(portal, &s.team, &s.user, None).await;
    let desktop = d3.closed_since(since, "no longer allowed", "membership removed").await;
    let removed =
        e3.event_about("removed", &s.workspace, since, since + CLOSED_WITHIN, "membership removed").await - since;
    latencies.push(Latency { case: "membership removed", desktop, stream: removed });
    assert!(e3.is_open(), "the stream goes on for the user's other teams");
    let refused = Desktop::open(&s.desktop_url, &cookie, &s.origin).await.err();
    assert_eq!(refused, Some(StatusCode::FORBIDDEN), "a removed member opened the desktop again");

    // A contractor's membership expires: the desktop closes at its expiresAt, not before.
    let until = soon();
    let rejoined = Instant::now();
    s.members.set(portal, &s.team, &s.user, Some(Some(until))).await;
    s.shows_workspace(&e3, rejoined).await;
    let d4 = s.desktop(&cookie).await;
    let expiry = instant_of(until);
    assert!(Instant::now() + Duration::from_secs(1) < expiry, "setting up took too long to test the expiry");
    tokio::time::sleep_until(expiry - Duration::from_millis(300)).await;
    assert!(d4.is_open(), "the contractor's desktop closed before the membership expired");
    let desktop = d4.closed_since(expiry, "no longer allowed", "contractor membership expired").await;
    let removed =
        e3.event_about("removed", &s.workspace, expiry, expiry + CLOSED_WITHIN, "contractor membership expired").await
            - expiry;
    latencies.push(Latency { case: "contractor membership expired", desktop, stream: removed });
    assert!(e3.is_open(), "the stream goes on for the user's other teams");
    s.members.set(portal, &s.team, &s.user, Some(None)).await;

    // The session's own expiry: a session issued for a few seconds.
    let lifetime = Duration::from_secs(EXPIRES_IN as u64);
    let (token, claims) =
        deskpod_portal::auth::session::issue(&portal.state.keys, lifetime, &s.user, Timestamp::now()).unwrap();
    let cookie = format!("deskpod_session={token}");
    let (d5, e5) = (s.desktop(&cookie).await, s.events(&cookie).await);
    let expiry = instant_of(claims.expires_at());
    tokio::time::sleep_until(expiry - Duration::from_millis(300)).await;
    assert!(d5.is_open() && e5.is_open(), "closed before the session expired");
    let desktop = d5.closed_since(expiry, "expired", "session expired").await;
    let stream = e5.ended_since(expiry, "session expired").await;
    latencies.push(Latency { case: "session expired", desktop, stream });

    // A contractor's account ends (as set when they accept a contractor invite): every session
    // of the account loses its connections at that moment, not before.
    let fourth = Browser::signed_in(portal, &s.user).await;
    let cookie = cookie_of(&fourth);
    let (d6, e6) = (s.desktop(&cookie).await, s.events(&cookie).await);
    let until = soon();
    end_account_at(portal, &s.user, until).await;
    let expiry = instant_of(until);
    tokio::time::sleep_until(expiry - Duration::from_millis(300)).await;
    assert!(d6.is_open() && e6.is_open(), "closed before the contractor's account ended");
    let desktop = d6.closed_since(expiry, "disabled", "contractor account ended").await;
    let stream = e6.ended_since(expiry, "contractor account ended").await;
    latencies.push(Latency { case: "contractor account ended", desktop, stream });

    for Latency { case, desktop, stream } in &latencies {
        println!(
            "{case}: desktop closed after {} ms, event stream after {} ms",
            desktop.as_millis(),
            stream.as_millis()
        );
    }
    latencies
}
