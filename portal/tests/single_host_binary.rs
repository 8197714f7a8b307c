//! The README's first command in miniature: `deskpod-portal` started with no configuration but a
//! database path and an address (single-host mode is the default) prints the admin's password,
//! seeds a template per built desktop image and a team `default` led by the admin, and with that
//! password alone a client signs in over HTTP, creates a Python workspace, and gets the VNC
//! banner of a real desktop container through the portal's websocket proxy.
//! (`portal/single-host` adds only installing, building and the images.)

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ADMIN: &str = "admin@deskpod.local";
const RUNNING_WITHIN: Duration = Duration::from_secs(60);

/// A portal process, killed (by pid) when dropped, with its scratch directory.
struct PortalProcess {
    child: tokio::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for PortalProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        // What this portal made on the engine, whatever happened: everything labelled with the
        // instance id its database holds.
        let instance = rusqlite::Connection::open(self.dir.join("deskpod.db")).and_then(|db| {
            db.query_row("SELECT value FROM secrets WHERE name = 'docker-instance'", [], |row| row.get::<_, Vec<u8>>(0))
        });
        if let Ok(instance) = instance {
            let label = format!("label=deskpod.io/instance={}", String::from_utf8_lossy(&instance));
            let docker = |args: &[&str]| {
                let output = std::process::Command::new("docker").args(args).output();
                output.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
            };
            for id in docker(&["ps", "-aq", "--filter", &label]).split_whitespace() {
                docker(&["rm", "-f", id]);
            }
            for volume in docker(&["volume", "ls", "-q", "--filter", &label]).split_whitespace() {
                docker(&["volume", "rm", "-f", volume]);
            }
            for network in docker(&["network", "ls", "-q", "--filter", &label]).split_whitespace() {
                docker(&["network", "rm", network]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cookie-keeping HTTP client of one portal.
struct Session {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
    cookies: Vec<(String, String)>,
}

impl Session {
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: String,
    ) -> (StatusCode, String) {
        let mut request = Request::builder().method(method).uri(format!("{}{path}", self.base));
        let cookie = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        if !cookie.is_empty() {
            request = request.header("cookie", cookie);
        }
        if let Some(csrf) = self.csrf() {
            request = request.header("x-csrf-token", csrf);
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = self.http.request(request.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
        let status = response.status();
        for set in response.headers().get_all("set-cookie") {
            let cookie = cookie::Cookie::parse(set.to_str().unwrap().to_owned()).unwrap();
            self.cookies.retain(|(name, _)| name != cookie.name());
            if !cookie.value().is_empty() {
                self.cookies.push((cookie.name().to_owned(), cookie.value().to_owned()));
            }
        }
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn csrf(&self) -> Option<String> {
        self.cookies.iter().find(|(k, _)| k == "page_csrf").map(|(_, v)| v.clone())
    }
}

fn field(html: &str, marker: &str) -> String {
    let start = html.find(marker).unwrap_or_else(|| panic!("no {marker} in {html}")) + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_started_with_defaults_serves_a_desktop_to_the_printed_admin_password() {
    let dir = std::env::temp_dir().join(format!("deskpod-single-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_deskpod-portal"))
        .args(["--database", dir.join("deskpod.db").to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .args(["--public-url", &base, "--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .env_remove("DESKPOD_BACKEND")
        .env_remove("DESKPOD_ADMIN_PASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut portal = PortalProcess { child, dir };

    // The password is printed once, indented on a line of its own.
    let mut lines = BufReader::new(portal.child.stdout.take().unwrap()).lines();
    let mut password = None;
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
        if line.starts_with("Created the first admin account") {
            password = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let line = lines.next_line().await.unwrap().unwrap();
                    if !line.trim().is_empty() {
                        return line.trim().to_owned();
                    }
                }
            })
            .await
            .ok();
            break;
        }
    }
    let password = password.expect("the portal printed the admin password");

    let mut session =
        Session { base: base.clone(), http: Client::builder(TokioExecutor::new()).build_http(), cookies: vec![] };
    // The password is printed before the portal binds its port: wait until it listens.
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "the portal does not listen on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, signin) = session.send(Method::GET, "/signin", None, String::new()).await;
    assert_eq!(status, StatusCode::OK, "{signin}");
    let form = serde_urlencoded::to_string([
        ("csrf", field(&signin, r#"name="csrf" value=""#).as_str()),
        ("email", ADMIN),
        ("password", password.as_str()),
    ])
    .unwrap();
    let (status, _) = session.send(Method::POST, "/signin", Some("application/x-www-form-urlencoded"), form).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "signing in with the printed password");
    let (_, home) = session.send(Method::GET, "/", None, String::new()).await;
    let csrf = field(&home, r#"<meta name="csrf-token" content=""#);
    session.cookies.push(("page_csrf".into(), csrf)); // sent as x-csrf-token, see Session::csrf

    // The seeded catalog and team.
    let (status, templates) = session.send(Method::GET, "/api/v1/templates", None, String::new()).await;
    assert_eq!(status, StatusCode::OK, "{templates}");
    assert!(templates.contains(r#""name":"python""#), "{templates}");
    let body = r#"{"team":"default","name":"first","template":"python"}"#.to_owned();
    let (status, created) = session.send(Method::POST, "/api/v1/workspaces", Some("application/json"), body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");

    let started = Instant::now();
    loop {
        let (_, shown) = session.send(Method::GET, "/api/v1/workspaces/default/first", None, String::new()).await;
        if shown.contains(r#""phase":"Running""#) {
            break;
        }
        assert!(started.elapsed() < RUNNING_WITHIN, "not Running within {RUNNING_WITHIN:?}: {shown}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut request =
        format!("ws://127.0.0.1:{port}/workspaces/default/first/websockify").into_client_request().unwrap();
    let cookies = session.cookies.iter().filter(|(k, _)| k != "page_csrf").map(|(k, v)| format!("{k}={v}"));
    request.headers_mut().insert("cookie", cookies.collect::<Vec<_>>().join("; ").parse().unwrap());
    request.headers_mut().insert("origin", base.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("the desktop websocket");
    let Some(Ok(Message::Binary(banner))) = ws.next().await else { panic!("no banner through the proxy") };
    assert_eq!(&banner[..], b"RFB 003.008\n");

    // The single-host portal counts on its metrics listener as on Kubernetes: the sign-in, the
    // creation, the open desktop session. When the portal greets the browser itself (security
    // None offered alone), the relay starts once that greeting is done, so it is answered.
    ws.send(Message::Binary(Bytes::from_static(b"RFB 003.008\n"))).await.unwrap();
    let Some(Ok(Message::Binary(security))) = ws.next().await else { panic!("no security types") };
    if security[..] == [1, 1] {
        ws.send(Message::Binary(Bytes::from_static(&[1]))).await.unwrap();
        let Some(Ok(Message::Binary(result))) = ws.next().await else { panic!("no security result") };
        assert_eq!(&result[..], [0, 0, 0, 0]);
    }
    let scrape = || async {
        let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
        let response = session.http.get(metrics.parse().unwrap()).await.expect("the metrics listener answers");
        assert_eq!(response.status(), StatusCode::OK);
        String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    };
    let started = Instant::now();
    let mut text = scrape().await;
    while !text.contains("deskpod_portal_desktop_sessions 1") {
        assert!(started.elapsed() < Duration::from_secs(10), "no desktop session counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = scrape().await;
    }
    for series in [
        r#"deskpod_portal_sign_ins_total{method="password",outcome="success"} 1"#,
        r#"deskpod_portal_workspace_creates_total{outcome="created"} 1"#,
        r#"deskpod_portal_http_requests_total{route="/api/v1/workspaces",method="POST",status="2xx"} 1"#,
    ] {
        assert!(text.lines().any(|line| line == series), "{series} in:\n{text}");
    }

    // Stopped as a container or pod is (SIGTERM), with the desktop still open: the portal exits
    // cleanly after its grace period rather than waiting for the session to end.
    let pid = portal.child.id().expect("the portal runs").to_string();
    let kill = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(kill.success());
    let exited = tokio::time::timeout(Duration::from_secs(15), portal.child.wait())
        .await
        .expect("the portal exits within its grace period after SIGTERM")
        .expect("wait");
    assert!(exited.success(), "{exited:?}");
    drop(portal);
}
