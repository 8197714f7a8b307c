//! The portal's metrics listener, scraped as Prometheus would: sign-ins, a refused workspace
//! creation and a desktop session through the proxy to a REAL desktop (Xvnc behind websockify)
//! must show up as counted, with route patterns and never raw paths. Needs
//! `portal/tests/setup-desktop-tools`. Also checks that every series the chart's Grafana
//! dashboard queries is one the controller or the portal serves.

mod common;
mod desktop_common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, Method, StatusCode};
use deskpod_portal::TeamRole;
use deskpod_portal::backend::Phase;
use deskpod_portal::store::GlobalRole;
use desktop_common::{TestBackend, Websockify, Xvnc, novnc_endpoint};
use futures::{SinkExt, StreamExt};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use common::{Browser, PASSWORD, Portal};

const VNC_PASSWORD: &str = "metrics-vnc";

/// GET `path` from `addr`: (status line, body).
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("the metrics listener answers");
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the sample `series` (name and labels exactly as served); 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Scrapes until `ready` holds, or fails after 10 s with the last scrape.
async fn scrape_until(addr: SocketAddr, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = get(addr, "/metrics").await;
        assert!(status.contains(" 200 "), "/metrics answered {status}");
        if ready(&text) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: not seen within 10 s; last scrape:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A websocket to the portal that counts the payload bytes it sends and receives.
struct Counted {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    sent: usize,
    received: usize,
    pending: Vec<u8>,
}

impl Counted {
    async fn send(&mut self, data: &[u8]) {
        self.sent += data.len();
        self.socket.send(Message::Binary(Bytes::copy_from_slice(data))).await.unwrap();
    }

    async fn read(&mut self, n: usize) -> Vec<u8> {
        while self.pending.len() < n {
            let message = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("no RFB data within 10 s")
                .expect("the socket closed")
                .expect("the socket failed");
            if let Message::Binary(data) = message {
                self.received += data.len();
                self.pending.extend_from_slice(&data);
            }
        }
        self.pending.drain(..n).collect()
    }
}

#[tokio::test]
async fn the_metrics_listener_counts_sign_ins_requests_and_desktop_traffic() {
    let xvnc = Xvnc::start(Some(VNC_PASSWORD));
    let websockify = Websockify::plain(xvnc.rfb_port);
    let backend = TestBackend::new();
    backend.add_team("platform", false);
    let endpoint = novnc_endpoint(&websockify, Some(VNC_PASSWORD));
    backend.add_workspace("platform", "one", "alice@example.com", Phase::Running, Some(endpoint));

    // The portal and its metrics listener, wired as `main` wires them for --metrics-listen.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut portal = Portal::with_url(&format!("http://{addr}")).await;
    let mut registry = Registry::default();
    let metrics = deskpod_portal::metrics::Metrics::register(&mut registry);
    portal.state = portal.state.clone().with_backend(backend.clone()).with_metrics(metrics);
    let app = deskpod_portal::app(portal.state.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics_listener.local_addr().unwrap();
    let metrics_server = tokio::spawn(async move {
        axum::serve(metrics_listener, deskpod_portal::metrics::router(Arc::new(registry))).await.unwrap();
    });
    portal.add_user("alice@example.com", GlobalRole::User).await;
    backend.set_member("alice@example.com", "platform", TeamRole::Engineer, None);

    // One failed sign-in, one good one, and a workspace the portal refuses to create.
    let refused = Browser::new().sign_in(&portal, "alice@example.com", "not the password").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let mut alice = Browser::new();
    assert_eq!(alice.sign_in(&portal, "alice@example.com", PASSWORD).await.status, StatusCode::SEE_OTHER);
    let csrf = alice.session_csrf(&portal).await;
    let body = r#"{"team":"platform","name":"Not A Name","template":"python"}"#;
    let bad = alice.api(&portal, Method::POST, "/api/v1/workspaces", Some(&csrf), Some(body)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);

    let text = get(metrics_addr, "/metrics").await.1;
    let sign_ins = |outcome: &str| format!(r#"deskpod_portal_sign_ins_total{{method="password",outcome="{outcome}"}}"#);
    assert_eq!(sample(&text, &sign_ins("failure")), 1.0, "{text}");
    assert_eq!(sample(&text, &sign_ins("success")), 1.0, "{text}");
    assert_eq!(sample(&text, r#"deskpod_portal_workspace_creates_total{outcome="rejected"}"#), 1.0, "{text}");
    assert_eq!(sample(&text, r#"deskpod_portal_workspace_creates_total{outcome="created"}"#), 0.0, "{text}");
    let signin_posts = |status: &str| {
        format!(r#"deskpod_portal_http_requests_total{{route="/signin",method="POST",status="{status}"}}"#)
    };
    assert_eq!(sample(&text, &signin_posts("4xx")), 1.0, "the wrong password: {text}");
    assert_eq!(sample(&text, &signin_posts("3xx")), 1.0, "the redirect after signing in: {text}");
    assert!(sample(&text, r#"deskpod_portal_http_request_duration_seconds_count{route="/signin"}"#) >= 4.0, "{text}");
    assert_eq!(sample(&text, "deskpod_portal_desktop_sessions"), 0.0, "{text}");

    // A desktop session through the proxy: the portal greets the browser itself (RFB 3.8,
    // security None), then relays ClientInit and everything after it.
    let mut request = format!("ws://{addr}/workspaces/platform/one/websockify").into_client_request().unwrap();
    let cookie = alice.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
    request.headers_mut().insert("cookie", HeaderValue::from_str(&cookie).unwrap());
    request.headers_mut().insert("origin", HeaderValue::from_str(&format!("http://{addr}")).unwrap());
    let (socket, _) = tokio_tungstenite::connect_async(request).await.expect("the desktop websocket opens");
    let mut desktop = Counted { socket, sent: 0, received: 0, pending: Vec::new() };
    assert_eq!(desktop.read(12).await, b"RFB 003.008\n");
    desktop.send(b"RFB 003.008\n").await;
    assert_eq!(desktop.read(2).await, [1, 1]);
    desktop.send(&[1]).await;
    assert_eq!(desktop.read(4).await, [0, 0, 0, 0]);
    // What the portal said and heard itself: 12 + 2 + 4 bytes sent to the browser, 12 + 1 read.
    let (greeting_sent, greeting_heard) = (18, 13);
    assert_eq!((desktop.received, desktop.sent), (greeting_sent, greeting_heard));
    desktop.send(&[1]).await; // ClientInit, relayed
    let init = desktop.read(24).await;
    let name_length = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
    desktop.read(name_length).await;
    desktop.send(&[3, 0, 0, 0, 0, 0, 2, 128, 1, 224]).await; // a full FramebufferUpdateRequest
    assert_eq!(desktop.read(4).await[0], 0, "a FramebufferUpdate comes back");

    let relayed_up = (desktop.sent - greeting_heard) as f64;
    let relayed_down = (desktop.received - greeting_sent) as f64;
    let up = r#"deskpod_portal_desktop_proxy_bytes_total{direction="browser_to_desktop"}"#;
    let down = r#"deskpod_portal_desktop_proxy_bytes_total{direction="desktop_to_browser"}"#;
    let text = scrape_until(metrics_addr, "the relayed bytes", |text| {
        sample(text, up) == relayed_up && sample(text, down) >= relayed_down
    })
    .await;
    assert!(relayed_down > 24.0, "ServerInit and a framebuffer update came through: {relayed_down}");
    assert_eq!(sample(&text, "deskpod_portal_desktop_sessions"), 1.0, "one session open: {text}");
    assert_eq!(sample(&text, "deskpod_portal_desktop_sessions_opened_total"), 1.0, "{text}");
    let websockify =
        r#"deskpod_portal_http_requests_total{route="/workspaces/{team}/{name}/websockify",method="GET",status="1xx"}"#;
    assert_eq!(sample(&text, websockify), 1.0, "the upgrade, by its route pattern: {text}");
    assert!(!text.contains("platform"), "no team or workspace names in labels:\n{text}");
    assert!(!text.contains("alice"), "no user names in labels:\n{text}");

    // The browser goes: the session ends.
    desktop.socket.close(None).await.unwrap();
    scrape_until(metrics_addr, "the session closed", |text| sample(text, "deskpod_portal_desktop_sessions") == 0.0)
        .await;

    // Every series the module lists is served.
    let text = get(metrics_addr, "/metrics").await.1;
    let declared: BTreeSet<String> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.strip_prefix("# TYPE ")?.split(' ');
            let (name, kind) = (parts.next()?, parts.next()?);
            Some(if kind == "counter" { format!("{name}_total") } else { name.to_owned() })
        })
        .collect();
    for name in deskpod_portal::metrics::SERIES {
        assert!(declared.contains(*name), "{name} is not served: {declared:?}");
    }
    // The metrics listener is not the portal, and the portal does not serve metrics.
    assert_eq!(get(addr, "/metrics").await.0.split(' ').nth(1), Some("404"));
    metrics_server.abort();
    server.abort();
}

/// The metric names a PromQL expression uses: `deskpod_...` identifiers, with a histogram's
/// `_bucket`, `_sum` and `_count` suffixes taken back to the histogram's name when it is one.
fn promql_names(expr: &str, known: &BTreeSet<&str>) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("deskpod_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|base| known.contains(base)))
            .unwrap_or(name);
        names.push(base.to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every `expr` of every panel target, nested rows included.
fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| exprs(item, out)),
        _ => {}
    }
}

#[test]
fn every_series_the_dashboard_queries_is_served() {
    let path = deskpod_testsupport::repo_root().join("charts/deskpod/dashboards/deskpod.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the dashboard")).expect("the dashboard is JSON");
    let served: BTreeSet<&str> =
        deskpod_controller::metrics::SERIES.iter().chain(deskpod_portal::metrics::SERIES).copied().collect();
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 10, "the dashboard has its queries: {all:?}");
    let mut used = BTreeSet::new();
    for expr in &all {
        let names = promql_names(expr, &served);
        assert!(!names.is_empty(), "{expr:?} queries no Deskpod series");
        for name in names {
            assert!(served.contains(name.as_str()), "the dashboard queries {name}, which nothing serves ({expr})");
            used.insert(name);
        }
    }
    // And the other way round: every series served has a panel.
    let unused: Vec<_> = served.iter().filter(|name| !used.contains(**name)).collect();
    assert!(unused.is_empty(), "series without a panel: {unused:?}");
}
