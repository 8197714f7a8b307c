//! The desktop connection: the desktop view, the websocket proxy to the workspace's VNC
//! endpoint, the `kasm` profile's reverse proxy and the ingress forward-auth endpoint.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /workspaces/{team}/{name}/desktop` | the desktop view: the noVNC client (`novnc`), or a redirect to the proxied KasmVNC client (`kasm`) |
//! | `GET /workspaces/{team}/{name}/websockify` | websocket upgrade, relayed to the desktop |
//! | `/workspaces/{team}/{name}/kasm/{*path}` | KasmVNC's own web client and websocket, reverse-proxied over HTTPS with basic auth added |
//! | `GET /auth/verify` | forward auth for ingress controllers: 200, 401 (not signed in) or 403 |
//! | `GET /novnc/{*path}` | Debian's `novnc` files (`--novnc-dir`, default `/usr/share/novnc`) |
//! | `GET /static/desktop.js`, `/static/desktop.css` | the desktop view's own script and style |
//!
//! Every route that reaches a desktop checks, in this order: a session (401), the `Origin` of
//! websocket upgrades and of non-GET requests against `--public-url` (403, before upgrading), that
//! the user may open this workspace (owner while a member; admins and leads only when the team
//! allows, see [`crate::authz::can_view_workspace`]; 403), and that it is Running (409).
//!
//! **novnc profile.** The portal connects to `ws://<endpoint>/websockify` (websockify in the
//! desktop pod) and does the RFB security handshake itself, answering VNC authentication with the
//! workspace's password; the browser is then offered security None. So the VNC password never
//! reaches the browser. After that, messages are relayed untouched ([`relay`]).
//!
//! **kasm profile.** See [`kasm`]: HTTPS to the pod with `Authorization: Basic kasm_user:...`
//! added by the portal; the browser's cookies and Authorization header are not forwarded, and the
//! desktop's `WWW-Authenticate`, `Set-Cookie` and hop-by-hop headers are not returned.
//!
//! **Idle culling.** The relay reads what the browser sends with [`rfb::InputParser`]; key and
//! pointer events (not framebuffer update requests) call [`Backend::record_input`], the first at
//! once and then at most once a minute per workspace ([`relay::InputClock`]).
//!
//! **Access ends, the desktop closes.** A desktop websocket (either profile) is re-checked while
//! it is open ([`crate::auth::access`]): signing out, a disabled account, a membership removed or
//! past its `expiresAt`, or the session's own expiry closes it within a second, with a Close frame
//! saying why.

mod kasm;
pub mod relay;
pub mod rfb;
pub mod verify;

use std::collections::HashMap;
use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::body::Body;
use axum::extract::{Extension, Path, Request, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, LOCATION, ORIGIN, SEC_WEBSOCKET_PROTOCOL,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use self::relay::{Activity, BrowserSide, InputClock};
use super::{ErrorPage, Nav, Page};
use crate::auth::access::Access;
use crate::auth::{AuthRejection, CurrentUser};
use crate::authz;
use crate::backend::{Backend, BackendError, DesktopEndpoint, Phase, Protocol, WorkspaceView};
use crate::config::Config;
use crate::error::{Error, ErrorBody};
use crate::state::AppState;

/// Where the portal finds Debian's `novnc` files; `main` sets it from `--novnc-dir` as an
/// [`Extension`] layered over [`crate::app`]. Without it, `/usr/share/novnc`.
#[derive(Clone, Debug)]
pub struct NovncDir(pub PathBuf);

impl Default for NovncDir {
    fn default() -> Self {
        Self(PathBuf::from("/usr/share/novnc"))
    }
}

/// How long connecting to a desktop may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the desktop routes answer with when they refuse or fail.
#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    /// Signed out, not allowed, not found, not running: the portal's own errors.
    #[error(transparent)]
    Portal(#[from] Error),
    /// The backend refused or failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A websocket route was asked for something else.
    #[error("This URL takes a websocket connection (the desktop view opens it).")]
    NotWebsocket,
    /// The desktop did not answer or the handshake with it failed; `detail` goes to the log only.
    #[error("the desktop of {team}/{name} did not answer: {detail}")]
    Unreachable { team: String, name: String, detail: String },
}

impl DesktopError {
    fn unreachable(team: &str, name: &str, detail: impl std::fmt::Display) -> Self {
        Self::Unreachable { team: team.into(), name: name.into(), detail: detail.to_string() }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Portal(error) => error.status(),
            Self::Backend(BackendError::NotFound(_)) => StatusCode::NOT_FOUND,
            Self::Backend(BackendError::Conflict(_)) => StatusCode::CONFLICT,
            Self::Backend(BackendError::Invalid(_)) | Self::NotWebsocket => StatusCode::BAD_REQUEST,
            Self::Backend(BackendError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unreachable { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// What the response says; failures keep their detail for the log.
    fn public_message(&self) -> String {
        match self {
            Self::Portal(error) => error.public_message(),
            Self::Backend(BackendError::Unavailable(_)) => {
                "The workspace backend is not answering; the details are in the portal's log.".into()
            }
            Self::Unreachable { team, name, .. } => {
                format!("The desktop of {team}/{name} is not answering yet. Try again in a moment.")
            }
            other => other.to_string(),
        }
    }

    fn log(&self) {
        match self {
            Self::Portal(error) => error.log_server_error(),
            Self::Backend(BackendError::Unavailable(detail)) => tracing::error!(%detail, "the backend failed"),
            Self::Unreachable { .. } => tracing::warn!(error = %self, "desktop unreachable"),
            _ => {}
        }
    }

    /// As an HTML page, for the desktop view.
    fn into_page(self) -> Response {
        if let Self::Portal(error) = self {
            return super::PageError(error).into_response();
        }
        self.log();
        let status = self.status();
        let title = if status.is_server_error() { "The desktop is not available" } else { "That did not work" };
        let page = ErrorPage { nav: None, title, message: self.public_message() };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, self.public_message()).into_response(),
        }
    }
}

impl IntoResponse for DesktopError {
    fn into_response(self) -> Response {
        if let Self::Portal(error) = self {
            return error.into_response();
        }
        self.log();
        (self.status(), Json(ErrorBody { error: self.public_message(), field: None })).into_response()
    }
}

/// The desktop routes.
pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/workspaces/{team}/{name}/desktop", get(desktop_view))
        .route("/workspaces/{team}/{name}/websockify", get(websockify))
        .route("/workspaces/{team}/{name}/kasm/", any(kasm_proxy))
        .route("/workspaces/{team}/{name}/kasm/{*path}", any(kasm_proxy))
        .route("/auth/verify", get(verify))
        .route("/novnc/{*path}", get(novnc_file))
        .route("/static/desktop.js", get(script))
        .route("/static/desktop.css", get(stylesheet))
        .layer(Extension(Arc::new(InputClock::default())))
}

/// The portal's own origin (`scheme://host[:port]`), from its public URL.
fn public_origin(config: &Config) -> String {
    let base = config.public_url.as_str();
    let uri: Uri = base.parse().expect("the public URL was validated");
    let scheme = uri.scheme_str().unwrap_or("https");
    let host = uri.host().unwrap_or_default();
    match uri.port_u16() {
        Some(port) if !matches!((scheme, port), ("http", 80) | ("https", 443)) => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    }
}

/// Refuses a request whose `Origin` is not the portal's: another site's page cannot open a
/// desktop with the user's cookie.
fn check_origin(config: &Config, headers: &HeaderMap) -> Result<(), Error> {
    let expected = public_origin(config);
    match headers.get(ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin) if origin.eq_ignore_ascii_case(&expected) => Ok(()),
        Some(_) => Err(Error::Forbidden(format!("Desktop connections are accepted only from pages of {expected}."))),
        None => Err(Error::Forbidden("Desktop connections must carry an Origin header.".into())),
    }
}

/// The workspace if `user` may open it; a 403 for people outside the team (so they do not learn
/// which workspaces exist), 404 for an unknown workspace, 403 for someone else's.
async fn allowed_workspace(
    state: &AppState,
    user: &CurrentUser,
    team: &str,
    name: &str,
) -> Result<WorkspaceView, DesktopError> {
    let now = Timestamp::now();
    let memberships = state.memberships_of(user.id()).await?;
    let forbidden = || Error::Forbidden(format!("You may not open the desktop of {team}/{name}."));
    if !user.user.is_admin() && authz::active_role(&memberships, team, now).is_none() {
        return Err(forbidden().into());
    }
    let workspace = state
        .backend
        .workspace(team, name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("There is no workspace {name} in team {team}.")))?;
    let leads_may_connect = state.backend.team(team).await?.is_some_and(|team| team.leads_may_connect);
    if !authz::can_view_workspace(&user.user, &memberships, &workspace.owner, team, leads_may_connect, now) {
        return Err(forbidden().into());
    }
    Ok(workspace)
}

/// Where a running workspace's desktop answers; 409 while it does not run.
async fn running_desktop(backend: &dyn Backend, workspace: &WorkspaceView) -> Result<DesktopEndpoint, DesktopError> {
    let (team, name) = (&workspace.team, &workspace.name);
    let not_running = |phase: Phase| Error::Conflict {
        field: None,
        message: format!("The workspace {team}/{name} is {phase:?}, not Running: start it, then open its desktop."),
    };
    // A desktop still starting may already answer (Kubernetes marks its pod ready a second after
    // the desktop listens at best): the backend knows whether there is anything to dial yet, and
    // the connection itself tells whether the desktop answers.
    let starting = workspace.running && matches!(workspace.phase, Phase::Creating | Phase::Starting);
    if workspace.phase != Phase::Running && !starting {
        return Err(not_running(workspace.phase).into());
    }
    backend.desktop(team, name).await?.ok_or_else(|| not_running(Phase::Starting).into())
}

#[derive(Template)]
#[template(path = "desktop.html")]
struct DesktopView {
    team: String,
    name: String,
    websocket_path: String,
}

/// The page shown while a desktop starts; it reloads itself every 2 s.
#[derive(Template)]
#[template(path = "desktop_starting.html")]
struct DesktopStarting {
    nav: Option<Nav>,
    team: String,
    name: String,
    phase: String,
    message: Option<String>,
}

/// The desktop view: noVNC in the whole window, or KasmVNC's own client through the proxy.
async fn desktop_view(
    State(state): State<AppState>,
    Path((team, name)): Path<(String, String)>,
    user: CurrentUser,
) -> Response {
    let result = async {
        let workspace = allowed_workspace(&state, &user, &team, &name).await?;
        // A desktop on its way (just created, or started from an invite) gets a page that
        // waits for it, rather than an error telling the user to start it.
        if workspace.running && matches!(workspace.phase, Phase::Pending | Phase::Creating | Phase::Starting) {
            return Ok(Err(workspace));
        }
        let endpoint = running_desktop(state.backend.as_ref(), &workspace).await?;
        Ok::<_, DesktopError>(Ok(endpoint.protocol))
    };
    let result = match result.await {
        Ok(Err(starting)) => {
            let page = DesktopStarting {
                nav: Nav::of(&user),
                phase: format!("{:?}", starting.phase),
                message: starting.message,
                team,
                name,
            };
            let mut response = Page(page).into_response();
            response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return response;
        }
        Ok(Ok(protocol)) => Ok(protocol),
        Err(error) => Err(error),
    };
    match result {
        Ok(Protocol::Novnc) => {
            let websocket_path = format!("/workspaces/{team}/{name}/websockify");
            let mut response = Page(DesktopView { team, name, websocket_path }).into_response();
            response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response.headers_mut().insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(NOVNC_CSP));
            response
        }
        Ok(Protocol::Kasm) => {
            let base = format!("workspaces/{team}/{name}/kasm");
            let query = serde_urlencoded::to_string([
                ("autoconnect", "true"),
                ("resize", "remote"),
                ("path", &format!("{base}/websockify")),
            ])
            .unwrap_or_default();
            Redirect::to(&format!("/{base}/vnc.html?{query}")).into_response()
        }
        Err(error) => error.into_page(),
    }
}

/// The websocket to a desktop.
async fn websockify(
    State(state): State<AppState>,
    Extension(clock): Extension<Arc<InputClock>>,
    Path((team, name)): Path<(String, String)>,
    user: CurrentUser,
    mut request: Request,
) -> Result<Response, DesktopError> {
    check_origin(&state.config, request.headers())?;
    let key = relay::upgrade_key(request.method(), request.headers())?;
    let workspace = allowed_workspace(&state, &user, &team, &name).await?;
    let endpoint = running_desktop(state.backend.as_ref(), &workspace).await?;
    let offered = request.headers().get(SEC_WEBSOCKET_PROTOCOL).cloned();
    let on_upgrade = hyper::upgrade::on(&mut request);
    let activity =
        Activity::new(state.backend.clone(), clock, team.clone(), name.clone()).with_metrics(state.metrics.clone());
    tracing::info!(user = %user.id(), %team, %name, "opening a desktop");
    let access = Access::to_workspace(state.clone(), user, &team, &workspace.owner);
    match endpoint.protocol {
        Protocol::Novnc => {
            let (mut desktop, protocol) = connect_websockify(&endpoint, &team, &name, offered).await?;
            relay::authenticate_to_desktop(&mut desktop, endpoint.password.as_deref())
                .await
                .map_err(|detail| DesktopError::unreachable(&team, &name, detail))?;
            relay::spawn_relay(on_upgrade, desktop, BrowserSide::GreetWithoutSecurity, activity, access);
            Ok(relay::switching_protocols(&key, protocol))
        }
        Protocol::Kasm => {
            let (desktop, protocol) = connect_kasm_websocket(&endpoint, "/websockify", &team, &name, offered).await?;
            relay::spawn_relay(on_upgrade, desktop, BrowserSide::PassThrough, activity, access);
            Ok(relay::switching_protocols(&key, protocol))
        }
    }
}

type DesktopSocket<S> = tokio_tungstenite::WebSocketStream<S>;

/// Opens the plain websocket to websockify in the desktop pod.
async fn connect_websockify(
    endpoint: &DesktopEndpoint,
    team: &str,
    name: &str,
    offered: Option<HeaderValue>,
) -> Result<(DesktopSocket<TcpStream>, Option<HeaderValue>), DesktopError> {
    let fail = |detail: String| DesktopError::unreachable(team, name, detail);
    let mut request =
        format!("ws://{}/websockify", endpoint.address).into_client_request().map_err(|e| fail(e.to_string()))?;
    if let Some(offered) = offered {
        request.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, offered);
    }
    let connect = async {
        let tcp = TcpStream::connect(endpoint.address).await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        tokio_tungstenite::client_async_with_config(request, tcp, Some(relay::desktop_config()))
            .await
            .map_err(|e| e.to_string())
    };
    let (socket, response) =
        tokio::time::timeout(CONNECT_TIMEOUT, connect).await.map_err(|_| fail("timed out".into()))?.map_err(fail)?;
    Ok((socket, response.headers().get(SEC_WEBSOCKET_PROTOCOL).cloned()))
}

/// Opens a websocket to KasmVNC over TLS, with the basic-auth header added.
async fn connect_kasm_websocket(
    endpoint: &DesktopEndpoint,
    path_and_query: &str,
    team: &str,
    name: &str,
    offered: Option<HeaderValue>,
) -> Result<(DesktopSocket<tokio_rustls::client::TlsStream<TcpStream>>, Option<HeaderValue>), DesktopError> {
    let fail = |detail: String| DesktopError::unreachable(team, name, detail);
    let mut request =
        format!("wss://{}{path_and_query}", endpoint.address).into_client_request().map_err(|e| fail(e.to_string()))?;
    let authorization = kasm::basic_auth(endpoint.password.as_deref().unwrap_or_default());
    request
        .headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_str(&authorization).map_err(|_| fail("bad password bytes".into()))?);
    if let Some(offered) = offered {
        request.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, offered);
    }
    let connect = async {
        let tls = kasm::connect(endpoint.address).await.map_err(|e| e.to_string())?;
        tokio_tungstenite::client_async_with_config(request, tls, Some(relay::desktop_config()))
            .await
            .map_err(|e| e.to_string())
    };
    let (socket, response) =
        tokio::time::timeout(CONNECT_TIMEOUT, connect).await.map_err(|_| fail("timed out".into()))?.map_err(fail)?;
    Ok((socket, response.headers().get(SEC_WEBSOCKET_PROTOCOL).cloned()))
}

/// Request headers passed on to KasmVNC; everything else (cookies, the browser's own
/// Authorization, CSRF tokens, forwarding headers) stays with the portal.
const FORWARDED_REQUEST_HEADERS: [HeaderName; 12] = [
    axum::http::header::ACCEPT,
    axum::http::header::ACCEPT_ENCODING,
    axum::http::header::ACCEPT_LANGUAGE,
    axum::http::header::CACHE_CONTROL,
    axum::http::header::CONTENT_LENGTH,
    axum::http::header::CONTENT_TYPE,
    axum::http::header::IF_MATCH,
    axum::http::header::IF_MODIFIED_SINCE,
    axum::http::header::IF_NONE_MATCH,
    axum::http::header::IF_UNMODIFIED_SINCE,
    axum::http::header::RANGE,
    axum::http::header::USER_AGENT,
];

/// Response headers KasmVNC may not set for the browser: hop-by-hop headers, credentials
/// prompts and cookies (the desktop shares the portal's origin here).
const DROPPED_RESPONSE_HEADERS: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "www-authenticate",
    "authorization",
    "set-cookie",
    "strict-transport-security",
];

/// The noVNC desktop view: the portal's default policy, plus images from `data:` and `blob:`
/// URLs, which noVNC decodes JPEG rectangles of the Tight encoding through (without them the
/// desktop stays black wherever the server sends JPEG).
const NOVNC_CSP: &str =
    "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// KasmVNC's web client served under the workspace path (CSP: scripts only from the portal's
/// origin, inline styles and image data allowed because KasmVNC's client uses them).
const KASM_CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; \
                        frame-ancestors 'self'; form-action 'self'; base-uri 'self'";

/// KasmVNC's web client and websocket, proxied.
async fn kasm_proxy(
    State(state): State<AppState>,
    Extension(clock): Extension<Arc<InputClock>>,
    Path(params): Path<HashMap<String, String>>,
    user: CurrentUser,
    mut request: Request,
) -> Result<Response, DesktopError> {
    let (team, name) =
        (params.get("team").cloned().unwrap_or_default(), params.get("name").cloned().unwrap_or_default());
    let path = params.get("path").map_or("", String::as_str);
    let upgrade = relay::is_upgrade(request.headers());
    if upgrade || !matches!(*request.method(), Method::GET | Method::HEAD) {
        check_origin(&state.config, request.headers())?;
    }
    let workspace = allowed_workspace(&state, &user, &team, &name).await?;
    let endpoint = running_desktop(state.backend.as_ref(), &workspace).await?;
    if endpoint.protocol != Protocol::Kasm {
        return Err(
            Error::NotFound(format!("The desktop of {team}/{name} is not KasmVNC; open its desktop view.")).into()
        );
    }
    let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let path_and_query = format!("/{path}{query}");
    if upgrade {
        let key = relay::upgrade_key(request.method(), request.headers())?;
        let offered = request.headers().get(SEC_WEBSOCKET_PROTOCOL).cloned();
        let on_upgrade = hyper::upgrade::on(&mut request);
        let (desktop, protocol) = connect_kasm_websocket(&endpoint, &path_and_query, &team, &name, offered).await?;
        let access = Access::to_workspace(state.clone(), user, &team, &workspace.owner);
        let activity = Activity::new(state.backend.clone(), clock, team, name).with_metrics(state.metrics.clone());
        relay::spawn_relay(on_upgrade, desktop, BrowserSide::PassThrough, activity, access);
        return Ok(relay::switching_protocols(&key, protocol));
    }

    let fail = |detail: String| DesktopError::unreachable(&team, &name, detail);
    let (parts, body) = request.into_parts();
    let mut upstream = axum::http::Request::builder().method(parts.method).uri(&path_and_query);
    for header in &FORWARDED_REQUEST_HEADERS {
        for value in parts.headers.get_all(header) {
            upstream = upstream.header(header, value);
        }
    }
    let authorization = kasm::basic_auth(endpoint.password.as_deref().unwrap_or_default());
    let upstream = upstream
        .header(HOST, endpoint.address.to_string())
        .header(AUTHORIZATION, authorization)
        .body(body)
        .map_err(|e| fail(e.to_string()))?;
    let exchange = async {
        let tls = kasm::connect(endpoint.address).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "kasm proxy connection ended");
            }
        });
        sender.send_request(upstream).await.map_err(|e| e.to_string())
    };
    let response =
        tokio::time::timeout(CONNECT_TIMEOUT, exchange).await.map_err(|_| fail("timed out".into()))?.map_err(fail)?;
    if response.status() == StatusCode::UNAUTHORIZED {
        return Err(fail("the desktop refused the portal's credentials".into()));
    }
    let (mut parts, body) = response.into_parts();
    for name in DROPPED_RESPONSE_HEADERS {
        parts.headers.remove(name);
    }
    if let Some(location) = parts.headers.get(LOCATION).and_then(|v| v.to_str().ok())
        && location.starts_with('/')
        && !location.starts_with("//")
    {
        let rewritten = format!("/workspaces/{team}/{name}/kasm{location}");
        parts.headers.insert(LOCATION, HeaderValue::from_str(&rewritten).map_err(|e| fail(e.to_string()))?);
    }
    parts.headers.entry(CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(KASM_CSP));
    parts.headers.insert("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// Forward auth for ingress controllers: 200 when the signed-in user may open the workspace the
/// original request is for, 401 when not signed in, 403 otherwise (also for requests that name no
/// workspace). Which workspace that is, [`verify::ForwardAuthSettings`] decides (an
/// [`Extension`] layered by `main`; the controller's defaults without one).
async fn verify(
    State(state): State<AppState>,
    settings: Option<Extension<verify::ForwardAuthSettings>>,
    user: Result<CurrentUser, AuthRejection>,
    headers: HeaderMap,
) -> Response {
    let user = match user {
        Ok(user) => user,
        Err(rejection) if rejection.is_unauthenticated() => {
            return (StatusCode::UNAUTHORIZED, "sign in to the portal first").into_response();
        }
        Err(rejection) => return rejection.into_response(),
    };
    let settings = settings.map(|Extension(settings)| settings).unwrap_or_default();
    let target = match settings.target(&headers) {
        Ok(target) => target,
        Err(why) => {
            tracing::info!(user = %user.id(), why, "forward auth refused a request that names no workspace");
            return (StatusCode::FORBIDDEN, "the request names no workspace").into_response();
        }
    };
    match allowed_workspace(&state, &user, &target.team, &target.name).await {
        Ok(_) => {
            let mut response = StatusCode::OK.into_response();
            if let Ok(id) = HeaderValue::from_str(user.id()) {
                response.headers_mut().insert("x-deskpod-user", id);
            }
            response
        }
        Err(
            DesktopError::Portal(Error::NotFound(_) | Error::Forbidden(_))
            | DesktopError::Backend(BackendError::NotFound(_)),
        ) => (StatusCode::FORBIDDEN, "not allowed to open this workspace").into_response(),
        Err(error) => error.into_response(),
    }
}

/// A file of Debian's `novnc` package.
async fn novnc_file(dir: Option<Extension<NovncDir>>, Path(path): Path<String>) -> Response {
    let dir = dir.map(|Extension(dir)| dir).unwrap_or_default();
    let relative = FsPath::new(&path);
    if !relative.components().all(|c| matches!(c, Component::Normal(_))) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Some(content_type) = content_type(relative) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match tokio::fs::read(dir.0.join(relative)).await {
        Ok(bytes) => ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "public, max-age=3600")], bytes).into_response(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => StatusCode::NOT_FOUND.into_response(),
        Err(error) => {
            tracing::error!(%error, path = %dir.0.join(relative).display(), "reading a noVNC file failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The types of the files the noVNC client loads; others are not served.
fn content_type(path: &FsPath) -> Option<&'static str> {
    Some(match path.extension()?.to_str()? {
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "html" => "text/html; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "oga" => "audio/ogg",
        "mp3" => "audio/mpeg",
        _ => return None,
    })
}

async fn script() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/javascript; charset=utf-8"), (CACHE_CONTROL, "no-cache")],
        include_str!("../../static/desktop.js"),
    )
}

async fn stylesheet() -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/css; charset=utf-8"), (CACHE_CONTROL, "no-cache")], include_str!("../../static/desktop.css"))
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;
    use crate::config::PublicUrl;

    #[rstest]
    #[case("http://127.0.0.1:8080", Some("http://127.0.0.1:8080"), true)]
    #[case("https://desk.example.com/portal", Some("https://desk.example.com"), true)]
    #[case("https://desk.example.com:443", Some("https://desk.example.com"), true)]
    #[case("https://desk.example.com", Some("https://DESK.example.com"), true)]
    #[case("https://desk.example.com", Some("http://desk.example.com"), false)]
    #[case("https://desk.example.com", Some("https://desk.example.com.evil.test"), false)]
    #[case("https://desk.example.com", Some("null"), false)]
    #[case("https://desk.example.com", None, false)]
    fn only_the_portals_origin_may_open_desktops(
        #[case] public_url: &str,
        #[case] origin: Option<&str>,
        #[case] allowed: bool,
    ) {
        let config = Config::new(PublicUrl::parse(public_url).unwrap());
        let mut headers = HeaderMap::new();
        if let Some(origin) = origin {
            headers.insert(ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        assert_eq!(check_origin(&config, &headers).is_ok(), allowed);
    }
}
