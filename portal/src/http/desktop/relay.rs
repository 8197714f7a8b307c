//! The websocket relay between a browser and a desktop, and what rides on it: the RFB security
//! handshake the portal does on the browser's behalf (novnc profile) and the input clock that
//! feeds idle culling.
//!
//! Messages pass through as they are: a binary frame read from one side is the same [`Message`]
//! (its payload a shared `Bytes`) written to the other, flushed when the reading side has nothing
//! more ready. Pings are answered by each hop itself; a close on either side closes both.
//!
//! While it relays, the connection's [`Access`] is re-checked ([`Access::ended`]); when it ends
//! (signed out, account disabled, membership ended or expired, session expired) the browser gets a
//! Close frame with the reason (code 1008) and both sides are closed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt, TryStreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tracing::Instrument;

use super::DesktopError;
use super::rfb::{self, InputParser};
use crate::auth::access::{Access, AccessEnded};
use crate::backend::Backend;
use crate::metrics::Metrics;

/// How often a workspace's last input is written to the backend, at most.
pub const RECORD_INPUT_EVERY: Duration = Duration::from_secs(60);

/// How long the RFB handshake with the desktop or the browser may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Limits for what browsers send: input events, clipboard text, resize requests.
pub fn browser_config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(16 << 20)).max_frame_size(Some(16 << 20))
}

/// Limits for what desktops send: framebuffer updates (websockify forwards what it reads from
/// the VNC server, so frames stay well below this).
pub fn desktop_config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(64 << 20)).max_frame_size(Some(16 << 20))
}

/// When each workspace's input was last recorded, shared by every connection of a portal, so
/// two tabs on one desktop still write at most once per [`RECORD_INPUT_EVERY`].
#[derive(Default)]
pub struct InputClock {
    last: Mutex<HashMap<(String, String), Instant>>,
}

impl InputClock {
    /// Whether input at `now` should be recorded (the first input of a workspace always is),
    /// and when the next one may be.
    pub fn check(&self, team: &str, name: &str, now: Instant) -> (bool, Instant) {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (team.to_owned(), name.to_owned());
        match last.get(&key) {
            Some(&at) if now < at + RECORD_INPUT_EVERY => (false, at + RECORD_INPUT_EVERY),
            _ => {
                last.insert(key, now);
                (true, now + RECORD_INPUT_EVERY)
            }
        }
    }
}

/// One connection's view of a workspace's activity: records input through the backend,
/// throttled by the shared [`InputClock`].
pub struct Activity {
    pub backend: Arc<dyn Backend>,
    pub clock: Arc<InputClock>,
    pub team: String,
    pub name: String,
    /// Before this, input on this connection is not even checked against the clock.
    quiet_until: Option<Instant>,
    /// Where the relay counts its bytes and sessions.
    metrics: Metrics,
}

impl Activity {
    pub fn new(backend: Arc<dyn Backend>, clock: Arc<InputClock>, team: String, name: String) -> Self {
        Self { backend, clock, team, name, quiet_until: None, metrics: Metrics::default() }
    }

    /// Counts this connection's traffic and session into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The user typed or moved the mouse.
    pub fn input(&mut self) {
        let now = Instant::now();
        if self.quiet_until.is_some_and(|until| now < until) {
            return;
        }
        let (due, next) = self.clock.check(&self.team, &self.name, now);
        self.quiet_until = Some(next);
        if !due {
            return;
        }
        let (backend, team, name) = (self.backend.clone(), self.team.clone(), self.name.clone());
        let span = tracing::info_span!("record_input", %team, %name);
        tokio::spawn(
            async move {
                if let Err(error) = backend.record_input(&team, &name, Timestamp::now()).await {
                    tracing::warn!(%error, "recording the last input failed; idle culling may stop this desktop early");
                }
            }
            .instrument(span),
        );
    }
}

/// The `Sec-WebSocket-Key` of a websocket upgrade request, or why it is not one.
pub fn upgrade_key(method: &Method, headers: &HeaderMap) -> Result<HeaderValue, DesktopError> {
    let has_token = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    };
    let version_13 = headers.get("sec-websocket-version").is_some_and(|v| v == "13");
    match headers.get(SEC_WEBSOCKET_KEY) {
        Some(key)
            if method == Method::GET
                && has_token(CONNECTION, "upgrade")
                && has_token(UPGRADE, "websocket")
                && version_13 =>
        {
            Ok(key.clone())
        }
        _ => Err(DesktopError::NotWebsocket),
    }
}

/// Whether the request asks for a websocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.get(UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The 101 answer to an upgrade, naming the subprotocol the desktop chose, if any.
pub fn switching_protocols(key: &HeaderValue, protocol: Option<HeaderValue>) -> Response {
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    let accept = derive_accept_key(key.as_bytes());
    headers.insert(SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("base64 is a valid header value"));
    if let Some(protocol) = protocol {
        headers.insert(SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

/// How the relay treats the browser's side once the upgrade completes.
pub enum BrowserSide {
    /// The portal already authenticated to the desktop; greet the browser with RFB security
    /// None, then relay (novnc profile).
    GreetWithoutSecurity,
    /// Relay from the first byte; the browser and the desktop do their own handshake (kasm).
    PassThrough,
}

/// Completes the browser's upgrade and relays between it and `desktop` until either side closes
/// or `access` ends.
pub fn spawn_relay<U>(
    on_upgrade: OnUpgrade,
    desktop: WebSocketStream<U>,
    side: BrowserSide,
    activity: Activity,
    access: Access,
) where
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let span =
        tracing::info_span!("desktop_relay", user = %access.user_id(), team = %activity.team, name = %activity.name);
    tokio::spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    tracing::warn!(%error, "the browser's websocket upgrade failed");
                    return;
                }
            };
            let mut browser =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(browser_config())).await;
            let parser = match side {
                BrowserSide::PassThrough => InputParser::new(),
                BrowserSide::GreetWithoutSecurity => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, greet_browser(&mut browser)).await {
                        Ok(Ok(())) => InputParser::after_security(),
                        Ok(Err(error)) => {
                            tracing::info!(%error, "the browser's RFB handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!("the browser did not finish the RFB handshake in time");
                            return;
                        }
                    }
                }
            };
            tracing::info!("desktop connected");
            let outcome = relay_until(browser, desktop, parser, activity, access.ended()).await;
            match outcome {
                Ended::Access(ended) => tracing::info!(reason = ended.reason(), "access ended; desktop closed"),
                outcome => tracing::info!(?outcome, "desktop disconnected"),
            }
        }
        .instrument(span),
    );
}

/// Which side ended the relay.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Browser,
    Desktop,
    Error(String),
    /// The user's access ended; the browser was sent a Close frame saying why.
    Access(AccessEnded),
}

/// Relays messages both ways until one side closes, then closes the other. Binary messages
/// from the browser are read by `parser` for user input.
pub async fn relay<B, U>(
    browser: WebSocketStream<B>,
    desktop: WebSocketStream<U>,
    parser: InputParser,
    activity: Activity,
) -> Ended
where
    B: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    relay_until(browser, desktop, parser, activity, std::future::pending()).await
}

/// [`relay`], until `access_ended` resolves too: then the browser is sent a Close frame with its
/// reason, and both sides are closed.
pub async fn relay_until<B, U>(
    browser: WebSocketStream<B>,
    desktop: WebSocketStream<U>,
    mut parser: InputParser,
    mut activity: Activity,
    access_ended: impl Future<Output = AccessEnded>,
) -> Ended
where
    B: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    // Payload bytes (what the RFB stream carries; websocket framing is not counted), and the
    // session, counted while the relay runs whichever way it ends.
    let metrics = activity.metrics.clone();
    let _session = metrics.desktop_session();
    let payload = |message: &Message| match message {
        Message::Binary(data) => data.len(),
        Message::Text(text) => text.len(),
        _ => 0,
    };
    let (mut to_browser, from_browser) = browser.split();
    let (mut to_desktop, from_desktop) = desktop.split();
    let passes = |message: &Message| {
        std::future::ready(!matches!(message, Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))
    };
    let upstream = from_browser
        .try_filter(passes)
        .inspect_ok(|message| {
            metrics.browser_to_desktop(payload(message));
            if let Message::Binary(data) = message
                && parser.feed(data)
            {
                activity.input();
            }
        })
        .forward(&mut to_desktop);
    let downstream = from_desktop
        .try_filter(passes)
        .inspect_ok(|message| metrics.desktop_to_browser(payload(message)))
        .forward(&mut to_browser);
    let ended = tokio::select! {
        result = upstream => result.map_or_else(|e| Ended::Error(e.to_string()), |()| Ended::Browser),
        result = downstream => result.map_or_else(|e| Ended::Error(e.to_string()), |()| Ended::Desktop),
        ended = access_ended => Ended::Access(ended),
    };
    // Whichever side is still open is told, briefly; then both connections are dropped.
    let close = async {
        if let Ended::Access(ended) = &ended {
            let frame = CloseFrame { code: CloseCode::from(ended.close_code()), reason: ended.reason().into() };
            let _ = to_browser.send(Message::Close(Some(frame))).await;
        }
        let _ = to_browser.close().await;
        let _ = to_desktop.close().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
    ended
}

/// Reads exactly `n` bytes of RFB from a websocket, keeping what comes after in `pending`.
async fn read_rfb<S>(ws: &mut WebSocketStream<S>, pending: &mut Vec<u8>, n: usize) -> Result<Vec<u8>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while pending.len() < n {
        match ws.next().await {
            Some(Ok(Message::Binary(data))) => pending.extend_from_slice(&data),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Text(_))) => return Err("text frames are not RFB".into()),
            Some(Ok(Message::Close(_) | Message::Frame(_))) | None => return Err("the connection closed".into()),
            Some(Err(error)) => return Err(error.to_string()),
        }
    }
    Ok(pending.drain(..n).collect())
}

async fn send_rfb<S>(ws: &mut WebSocketStream<S>, data: &[u8]) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::Binary(Bytes::copy_from_slice(data))).await.map_err(|e| e.to_string())
}

/// Does the RFB security handshake with a desktop as its client, answering VNC authentication
/// with `password`, and stops where ClientInit is due (the browser sends it). Supports RFB 3.3,
/// 3.7 and 3.8 with security None or VNC authentication.
pub async fn authenticate_to_desktop<S>(ws: &mut WebSocketStream<S>, password: Option<&str>) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let step = async {
        let mut pending = Vec::new();
        let version = read_rfb(ws, &mut pending, 12).await?;
        let minor = std::str::from_utf8(&version)
            .ok()
            .and_then(|v| v.strip_prefix("RFB 003.")?.strip_suffix('\n')?.parse::<u32>().ok())
            .ok_or("the desktop does not speak RFB")?;
        let minor = match minor {
            8.. => 8,
            7 => 7,
            _ => 3,
        };
        send_rfb(ws, format!("RFB 003.00{minor}\n").as_bytes()).await?;
        let offered = if minor >= 7 {
            let count = read_rfb(ws, &mut pending, 1).await?[0];
            if count == 0 {
                return Err(format!("the desktop refused the connection: {}", read_reason(ws, &mut pending).await?));
            }
            read_rfb(ws, &mut pending, count.into()).await?
        } else {
            let chosen = u32::from_be_bytes(read_rfb(ws, &mut pending, 4).await?.try_into().expect("4 bytes"));
            if chosen == 0 {
                return Err(format!("the desktop refused the connection: {}", read_reason(ws, &mut pending).await?));
            }
            vec![u8::try_from(chosen).unwrap_or(u8::MAX)]
        };
        let choice = if password.is_some() && offered.contains(&rfb::SECURITY_VNC_AUTH) {
            rfb::SECURITY_VNC_AUTH
        } else if offered.contains(&rfb::SECURITY_NONE) {
            rfb::SECURITY_NONE
        } else {
            return Err(format!(
                "the desktop offers RFB security types {offered:?}; the portal speaks None (1) and VNC authentication (2){}",
                if password.is_none() { " and has no password for it" } else { "" }
            ));
        };
        if minor >= 7 {
            send_rfb(ws, &[choice]).await?;
        }
        if choice == rfb::SECURITY_VNC_AUTH {
            let challenge: [u8; 16] = read_rfb(ws, &mut pending, 16).await?.try_into().expect("16 bytes");
            let password = password.unwrap_or_default();
            send_rfb(ws, &rfb::vnc_auth_response(password.as_bytes(), &challenge)).await?;
        }
        if choice == rfb::SECURITY_VNC_AUTH || minor >= 8 {
            let result = read_rfb(ws, &mut pending, 4).await?;
            if result != [0, 0, 0, 0] {
                let reason = if minor >= 8 { read_reason(ws, &mut pending).await? } else { String::new() };
                return Err(format!("the desktop refused the portal's VNC authentication {reason}"));
            }
        }
        if !pending.is_empty() {
            return Err("the desktop sent data before ClientInit".into());
        }
        Ok(())
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, step)
        .await
        .map_err(|_| "the desktop did not finish the RFB handshake in time".to_owned())?
}

async fn read_reason<S>(ws: &mut WebSocketStream<S>, pending: &mut Vec<u8>) -> Result<String, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let length = u32::from_be_bytes(read_rfb(ws, pending, 4).await?.try_into().expect("4 bytes"));
    let reason = read_rfb(ws, pending, length.min(1024) as usize).await?;
    Ok(String::from_utf8_lossy(&reason).into_owned())
}

/// Greets the browser as an RFB 3.8 server offering security None; ClientInit comes next and is
/// relayed to the desktop, which the portal has already authenticated to.
async fn greet_browser<S>(ws: &mut WebSocketStream<S>) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut pending = Vec::new();
    send_rfb(ws, rfb::VERSION_3_8).await?;
    let version = read_rfb(ws, &mut pending, 12).await?;
    if version.starts_with(b"RFB 003.003") {
        send_rfb(ws, &[0, 0, 0, rfb::SECURITY_NONE]).await?;
    } else if version.starts_with(b"RFB 003.00") {
        send_rfb(ws, &[1, rfb::SECURITY_NONE]).await?;
        let choice = read_rfb(ws, &mut pending, 1).await?[0];
        if choice != rfb::SECURITY_NONE {
            return Err(format!("the browser chose security type {choice}, not None"));
        }
        // SecurityResult: RFB 3.7 sends none for security None, 3.8 does.
        if version != b"RFB 003.007\n" {
            send_rfb(ws, &[0, 0, 0, 0]).await?;
        }
    } else {
        return Err("the browser does not speak RFB".into());
    }
    if !pending.is_empty() {
        return Err("the browser sent data before the handshake finished".into());
    }
    Ok(())
}
