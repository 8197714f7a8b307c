//! What the desktop tests share: an in-memory [`Backend`] standing in for the backend boundary
//! (workspaces, teams, memberships, endpoints, and a log of `record_input` calls), a portal served
//! on a real socket, and REAL desktops: TigerVNC's Xvnc on a free display bound to localhost, with
//! Debian's websockify in front of it, plain or over TLS with basic auth (the KasmVNC stand-in).
#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deskpod_portal::backend::{
    Backend, BackendError, BackendResult, DesktopEndpoint, NewWorkspace, Phase, Protocol, TeamView, TemplateView,
    WorkspaceView,
};
use deskpod_portal::{Membership, MembershipSource, StaticMemberships, TeamRole};
use futures::future::BoxFuture;
use jiff::Timestamp;

use crate::common::Portal;

/// Workspaces by team and name, with where their desktop answers.
type Workspaces = HashMap<(String, String), (WorkspaceView, Option<DesktopEndpoint>)>;

/// The backend boundary in memory. The desktops it points at are real processes.
#[derive(Default)]
pub struct TestBackend {
    workspaces: Mutex<Workspaces>,
    teams: Mutex<HashMap<String, TeamView>>,
    pub memberships: StaticMemberships,
    /// Every `record_input` call: team, name, time.
    pub inputs: Mutex<Vec<(String, String, Timestamp)>>,
}

impl TestBackend {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn add_team(&self, team: &str, leads_may_connect: bool) {
        let view = TeamView {
            name: team.into(),
            quota: Default::default(),
            leads_may_connect,
            members: Vec::new(),
            cluster: None,
        };
        self.teams.lock().unwrap().insert(team.into(), view);
    }

    pub fn set_member(&self, user: &str, team: &str, role: TeamRole, expires_at: Option<Timestamp>) {
        self.memberships.set(user, vec![Membership { team: team.into(), role, expires_at }]);
    }

    /// Adds (or replaces) a workspace in `phase`, with the desktop at `endpoint`.
    pub fn add_workspace(&self, team: &str, name: &str, owner: &str, phase: Phase, endpoint: Option<DesktopEndpoint>) {
        let view = WorkspaceView {
            team: team.into(),
            name: name.into(),
            owner: owner.into(),
            template: "test".into(),
            // Whoever's desktop is not stopped wants it running.
            running: !matches!(phase, Phase::Stopped | Phase::Stopping),
            phase,
            message: None,
            problems: Default::default(),
            created_at: None,
            started_at: None,
        };
        self.workspaces.lock().unwrap().insert((team.into(), name.into()), (view, endpoint));
    }

    /// The endpoint registered for a workspace.
    pub fn desktop_of(&self, team: &str, name: &str) -> Option<DesktopEndpoint> {
        self.workspaces.lock().unwrap().get(&(team.into(), name.into())).and_then(|(_, endpoint)| endpoint.clone())
    }

    pub fn input_count(&self, team: &str, name: &str) -> usize {
        self.inputs.lock().unwrap().iter().filter(|(t, n, _)| t == team && n == name).count()
    }

    /// Waits until `record_input` was called `count` times for the workspace.
    pub async fn wait_for_inputs(&self, team: &str, name: &str, count: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.input_count(team, name) >= count {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.input_count(team, name) >= count
    }
}

fn unused<'a, T: Send + 'a>() -> BoxFuture<'a, BackendResult<T>> {
    Box::pin(std::future::ready(Err(BackendError::Unavailable("not used by the desktop tests".into()))))
}

impl MembershipSource for TestBackend {
    fn memberships<'a>(&'a self, user: &'a str) -> BoxFuture<'a, deskpod_portal::Result<Vec<Membership>>> {
        self.memberships.memberships(user)
    }
}

impl Backend for TestBackend {
    fn templates(&self) -> BoxFuture<'_, BackendResult<Vec<TemplateView>>> {
        unused()
    }
    fn team<'a>(&'a self, team: &'a str) -> BoxFuture<'a, BackendResult<Option<TeamView>>> {
        let found = self.teams.lock().unwrap().get(team).cloned();
        Box::pin(std::future::ready(Ok(found)))
    }
    fn workspaces<'a>(
        &'a self,
        team: &'a str,
        owner: Option<&'a str>,
    ) -> BoxFuture<'a, BackendResult<Vec<WorkspaceView>>> {
        let mut found: Vec<WorkspaceView> = (self.workspaces.lock().unwrap().values())
            .map(|(view, _)| view.clone())
            .filter(|view| view.team == team && owner.is_none_or(|owner| view.owner == owner))
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Box::pin(std::future::ready(Ok(found)))
    }
    fn workspace<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<Option<WorkspaceView>>> {
        let found = self.workspaces.lock().unwrap().get(&(team.into(), name.into())).map(|(view, _)| view.clone());
        Box::pin(std::future::ready(Ok(found)))
    }
    fn create_workspace(&self, _: NewWorkspace) -> BoxFuture<'_, BackendResult<WorkspaceView>> {
        unused()
    }
    fn set_running<'a>(&'a self, _: &'a str, _: &'a str, _: bool) -> BoxFuture<'a, BackendResult<()>> {
        unused()
    }
    fn delete_workspace<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        unused()
    }
    fn desktop<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, BackendResult<Option<DesktopEndpoint>>> {
        let found = self
            .workspaces
            .lock()
            .unwrap()
            .get(&(team.into(), name.into()))
            .and_then(|(view, endpoint)| (view.phase == Phase::Running).then(|| endpoint.clone()).flatten());
        Box::pin(std::future::ready(Ok(found)))
    }
    fn record_input<'a>(&'a self, team: &'a str, name: &'a str, at: Timestamp) -> BoxFuture<'a, BackendResult<()>> {
        self.inputs.lock().unwrap().push((team.into(), name.into(), at));
        Box::pin(std::future::ready(Ok(())))
    }
    fn add_member<'a>(
        &'a self,
        _: &'a str,
        _: deskpod_controller::api::TeamMember,
    ) -> BoxFuture<'a, BackendResult<()>> {
        unused()
    }
}

/// A portal on the test backend, served on a real socket (websocket upgrades need one), whose
/// public URL is its own address so browsers' `Origin` matches.
pub struct ServedPortal {
    pub portal: Portal,
    pub backend: Arc<TestBackend>,
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl ServedPortal {
    pub async fn start(backend: Arc<TestBackend>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut portal = Portal::with_url(&format!("http://{addr}")).await;
        portal.state = portal.state.clone().with_backend(backend.clone());
        let app = deskpod_portal::app(portal.state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
        });
        Self { portal, backend, addr, server }
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

impl Drop for ServedPortal {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Fails with what to run when a tool the desktop tests need is missing.
pub fn require_tools(tools: &[&str]) {
    let missing: Vec<_> = tools.iter().filter(|tool| !Path::new(tool).exists()).collect();
    assert!(missing.is_empty(), "missing {missing:?}: run portal/tests/setup-desktop-tools");
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `child` accepts connections on `port`; `false` if it exited first (the port was
/// taken by a concurrent test between choosing and binding it: choose another).
pub fn wait_listening(port: u16, child: &mut Child, what: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            // Someone listens; make sure it is this child, not a neighbour that took the port.
            std::thread::sleep(Duration::from_millis(200));
            return child.try_wait().ok().flatten().is_none();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on port {port} within 20 s");
}

/// A child process killed (by its pid) when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("deskpod-{what}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real X desktop: Xvnc (TigerVNC) on a free display, RFB on localhost only.
pub struct Xvnc {
    pub display: u16,
    pub rfb_port: u16,
    process: Process,
    _scratch: Scratch,
}

impl Xvnc {
    /// Starts Xvnc; with a password it requires VNC authentication, without one security None.
    pub fn start(password: Option<&str>) -> Self {
        require_tools(&["/usr/bin/Xtigervnc", "/usr/bin/vncpasswd"]);
        let scratch = Scratch::new("xvnc");
        let mut security = vec!["-SecurityTypes".to_owned(), "None".to_owned()];
        if let Some(password) = password {
            let file = scratch.0.join("passwd");
            let output = Command::new("/usr/bin/vncpasswd")
                .arg("-f")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write;
                    child.stdin.take().unwrap().write_all(format!("{password}\n{password}\n").as_bytes())?;
                    child.wait_with_output()
                })
                .unwrap();
            assert!(output.status.success(), "vncpasswd failed");
            std::fs::write(&file, output.stdout).unwrap();
            security =
                vec!["-SecurityTypes".into(), "VncAuth".into(), "-PasswordFile".into(), file.display().to_string()];
        }
        for _ in 0..20 {
            let display = 100 + (free_port() % 400);
            if Path::new(&format!("/tmp/.X{display}-lock")).exists()
                || Path::new(&format!("/tmp/.X11-unix/X{display}")).exists()
            {
                continue;
            }
            let rfb_port = free_port();
            let mut child = Command::new("/usr/bin/Xtigervnc")
                .arg(format!(":{display}"))
                .args(["-geometry", "640x480", "-depth", "24", "-localhost", "-nolisten", "tcp", "-AlwaysShared"])
                .args(["-rfbport", &rfb_port.to_string()])
                .args(&security)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting Xtigervnc");
            if !wait_listening(rfb_port, &mut child, "Xtigervnc") {
                let _ = child.wait();
                continue; // display or port taken by a concurrent test: try another
            }
            return Self { display, rfb_port, process: Process(child), _scratch: scratch };
        }
        panic!("no free X display for Xtigervnc");
    }
}

/// Killed Xvnc leaves its lock file and socket behind, and a later Xvnc refuses that display:
/// remove them once it is gone.
impl Drop for Xvnc {
    fn drop(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        let _ = std::fs::remove_file(format!("/tmp/.X{}-lock", self.display));
        let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{}", self.display));
    }
}

impl Xvnc {
    /// Paints the root window a solid colour (so a screenshot cannot be blank by accident).
    pub fn paint(&self, colour: &str) {
        require_tools(&["/usr/bin/xsetroot"]);
        let status = Command::new("/usr/bin/xsetroot")
            .args(["-solid", colour])
            .env("DISPLAY", format!(":{}", self.display))
            .status()
            .unwrap();
        assert!(status.success(), "xsetroot failed");
    }
}

/// Debian's websockify in front of a VNC port.
pub struct Websockify {
    pub port: u16,
    _process: Process,
}

impl Websockify {
    /// Plain websockify, as the `novnc` desktop images run it.
    pub fn plain(rfb_port: u16) -> Self {
        Self::start(rfb_port, &[])
    }

    /// The KasmVNC stand-in: TLS with a self-signed certificate, basic auth for `kasm_user` on the
    /// websocket and the web files, serving Debian's noVNC client.
    pub fn kasm(rfb_port: u16, password: &str, tls: &SelfSigned) -> Self {
        let args = [
            "--ssl-only".to_owned(),
            "--cert".into(),
            tls.cert.display().to_string(),
            "--key".into(),
            tls.key.display().to_string(),
            "--web".into(),
            "/usr/share/novnc".into(),
            "--web-auth".into(),
            "--auth-plugin".into(),
            "BasicHTTPAuth".into(),
            "--auth-source".into(),
            format!("kasm_user:{password}"),
        ];
        Self::start(rfb_port, &args)
    }

    fn start(rfb_port: u16, args: &[String]) -> Self {
        require_tools(&["/usr/bin/websockify"]);
        for _ in 0..10 {
            let port = free_port();
            let mut child = Command::new("/usr/bin/websockify")
                .args(args)
                .arg(format!("127.0.0.1:{port}"))
                .arg(format!("127.0.0.1:{rfb_port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting websockify");
            if wait_listening(port, &mut child, "websockify") {
                return Self { port, _process: Process(child) };
            }
            let _ = child.wait();
        }
        panic!("websockify could not bind a port");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// A self-signed certificate and key made with the openssl command.
pub struct SelfSigned {
    pub cert: PathBuf,
    pub key: PathBuf,
    _scratch: Scratch,
}

impl SelfSigned {
    pub fn new() -> Self {
        require_tools(&["/usr/bin/openssl"]);
        let scratch = Scratch::new("tls");
        let (cert, key) = (scratch.0.join("cert.pem"), scratch.0.join("key.pem"));
        let status = Command::new("/usr/bin/openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=desktop"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl could not make a certificate");
        Self { cert, key, _scratch: scratch }
    }
}

/// The endpoint of a `novnc` desktop.
pub fn novnc_endpoint(websockify: &Websockify, password: Option<&str>) -> DesktopEndpoint {
    DesktopEndpoint { protocol: Protocol::Novnc, address: websockify.addr(), password: password.map(str::to_owned) }
}

/// The endpoint of a `kasm` desktop.
pub fn kasm_endpoint(websockify: &Websockify, password: &str) -> DesktopEndpoint {
    DesktopEndpoint { protocol: Protocol::Kasm, address: websockify.addr(), password: Some(password.to_owned()) }
}

/// The JSON line a browser script (`tests/browser/*.mjs`) prints last, checked to say it
/// connected and exited successfully; the script's output is in every failure message.
pub fn browser_result(output: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stdout.lines().last().unwrap_or_default();
    let result: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|_| panic!("no result from the browser:\n{stdout}\n{stderr}"));
    assert_eq!(result["connected"], true, "{stdout}\n{stderr}");
    assert!(output.status.success(), "{result}\n{stderr}");
    result
}

/// A browser script of `tests/browser` (`workspace.mjs`, `invite.mjs`, ...) for Debian's Chromium
/// through playwright-core, with the screenshot it saves at `target/<dir>/<file>`.
pub struct BrowserScript {
    command: tokio::process::Command,
    pub screenshot: PathBuf,
}

impl BrowserScript {
    /// Checks that the tools are there and removes an old screenshot.
    pub fn new(script: &str, dir: &str, file: &str) -> Self {
        let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        let playwright = browser_dir.join("node_modules/playwright-core");
        require_tools(&["/usr/bin/chromium", "/usr/bin/node", playwright.to_str().unwrap()]);
        let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target").join(dir);
        std::fs::create_dir_all(&out_dir).unwrap();
        let screenshot = out_dir.join(file);
        let _ = std::fs::remove_file(&screenshot);
        let mut command = tokio::process::Command::new("/usr/bin/node");
        command
            .arg(browser_dir.join(script))
            .current_dir(&browser_dir)
            .env("SCREENSHOT", &screenshot)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Self { command, screenshot }
    }

    /// `workspace.mjs`: sign in as `email`, create `team/name` from `template`, wait for Running
    /// and open the desktop (with `expect_panel`, wait for XFCE's panel).
    pub fn workspace(portal_url: &str, email: &str, password: &str, workspace: (&str, &str, &str), dir: &str) -> Self {
        let (team, template, name) = workspace;
        let mut script = Self::new("workspace.mjs", dir, "desktop.png");
        script
            .env("PORTAL_URL", portal_url)
            .env("EMAIL", email)
            .env("PASSWORD", password)
            .env("TEAM", team)
            .env("TEMPLATE", template)
            .env("NAME", name);
        script
    }

    pub fn env(&mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> &mut Self {
        self.command.env(key, value);
        self
    }

    pub fn spawn(&mut self) -> tokio::process::Child {
        self.command.spawn().expect("starting node")
    }

    /// Runs `workspace.mjs` against a portal whose desktops are real containers (no endpoint to
    /// register by hand) until the XFCE panel is drawn, and checks what the user sees: the
    /// workspace Running, no browser errors, the screenshot saved, and a desktop, not an empty X
    /// screen or an error page (XFCE draws wallpaper, icons and panel text: many colours, and the
    /// panel's band across the top). Returns the script's output and result.
    pub async fn show_xfce_desktop(&mut self, within: Duration) -> (std::process::Output, serde_json::Value) {
        use tokio::io::AsyncWriteExt;
        let mut node = self.env("EXPECT_PANEL", "1").spawn();
        let mut to_browser = node.stdin.take().unwrap();
        to_browser.write_all(b"endpoint-registered\n").await.unwrap();
        drop(to_browser);
        let output = tokio::time::timeout(within, node.wait_with_output())
            .await
            .expect("the browser test took too long")
            .unwrap();
        let result = browser_result(&output);
        assert_eq!(result["phases"].as_array().and_then(|p| p.last()), Some(&serde_json::json!("Running")), "{result}");
        assert!(result["problems"].as_array().unwrap().is_empty(), "browser errors: {result}");
        assert!(self.screenshot.exists(), "no screenshot at {}", self.screenshot.display());
        assert!(result["distinctColours"].as_u64().unwrap() >= 16, "the canvas is not a desktop: {result}");
        assert!(result["panelRows"].as_u64().unwrap() >= 16, "no panel across the top of the desktop: {result}");
        (output, result)
    }
}
