//! Benchmark of the desktop websocket relay: `cargo bench -p deskpod-portal --bench relay`.
//!
//! One run, same payload for every path, all on 127.0.0.1:
//!
//! - **direct TCP**: client ↔ TCP echo server;
//! - **direct websocket**: client ↔ websocket echo server;
//! - **portal relay**: client ↔ the portal's relay ([`relay::relay`], the code every desktop
//!   connection runs after its handshake) ↔ websocket echo server;
//! - **websockify**: client ↔ Debian's websockify (Python) ↔ TCP echo server.
//!
//! Throughput: 64 KiB messages, 256 MiB each way, echoed. Latency: round trips of 64 bytes,
//! p50 and p99. Then a bounded concurrency run: 1,000 sessions each receiving 1 MB/s from the
//! desktop side through the relay for 10 s; the relay runs on its own runtime (threads named
//! `relay`), so its CPU time is read per thread from /proc. It stops by itself.
//!
//! Authentication and the RFB handshake happen once per connection and are not measured here;
//! the tests cover them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deskpod_portal::backend::{
    Backend, BackendResult, DesktopEndpoint, NewWorkspace, TeamView, TemplateView, WorkspaceView,
};
use deskpod_portal::http::desktop::relay::{self, Activity, InputClock};
use deskpod_portal::http::desktop::rfb::InputParser;
use deskpod_portal::{Membership, MembershipSource};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Bytes, Message};

const CHUNK: usize = 64 * 1024;
const TOTAL: usize = 256 << 20;
const ROUND_TRIPS: usize = 5_000;
const SESSIONS: usize = 1_000;
const SESSION_RATE: usize = 1 << 20;
const SESSION_SECONDS: u64 = 10;

/// The relay needs a backend only to record input; the benchmark's payload is not RFB input.
struct NoBackend;

impl MembershipSource for NoBackend {
    fn memberships<'a>(&'a self, _: &'a str) -> BoxFuture<'a, deskpod_portal::Result<Vec<Membership>>> {
        Box::pin(std::future::ready(Ok(vec![])))
    }
}

fn nothing<'a, T: Send + 'a>() -> BoxFuture<'a, BackendResult<T>> {
    Box::pin(std::future::ready(Err(deskpod_portal::backend::BackendError::Unavailable("bench".into()))))
}

impl Backend for NoBackend {
    fn templates(&self) -> BoxFuture<'_, BackendResult<Vec<TemplateView>>> {
        nothing()
    }
    fn team<'a>(&'a self, _: &'a str) -> BoxFuture<'a, BackendResult<Option<TeamView>>> {
        nothing()
    }
    fn workspaces<'a>(&'a self, _: &'a str, _: Option<&'a str>) -> BoxFuture<'a, BackendResult<Vec<WorkspaceView>>> {
        nothing()
    }
    fn workspace<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, BackendResult<Option<WorkspaceView>>> {
        nothing()
    }
    fn create_workspace(&self, _: NewWorkspace) -> BoxFuture<'_, BackendResult<WorkspaceView>> {
        nothing()
    }
    fn set_running<'a>(&'a self, _: &'a str, _: &'a str, _: bool) -> BoxFuture<'a, BackendResult<()>> {
        nothing()
    }
    fn delete_workspace<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        nothing()
    }
    fn desktop<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, BackendResult<Option<DesktopEndpoint>>> {
        nothing()
    }
    fn record_input<'a>(&'a self, _: &'a str, _: &'a str, _: jiff::Timestamp) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn add_member<'a>(
        &'a self,
        _: &'a str,
        _: deskpod_controller::api::TeamMember,
    ) -> BoxFuture<'a, BackendResult<()>> {
        unreachable!("the relay benchmark invites nobody")
    }
}

/// A TCP echo server.
async fn tcp_echo() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    port
}

/// A websocket echo server.
async fn ws_echo() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(relay::desktop_config())).await
                else {
                    return;
                };
                let (mut write, read) = ws.split();
                let _ =
                    read.filter(|m| std::future::ready(matches!(m, Ok(Message::Binary(_))))).forward(&mut write).await;
            });
        }
    });
    port
}

/// A websocket server that streams `rate` bytes a second to each client, in 64 KiB messages.
async fn ws_streamer(rate: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                let payload = Bytes::from(vec![0u8; CHUNK]);
                let mut tick = tokio::time::interval(Duration::from_secs_f64(CHUNK as f64 / rate as f64));
                loop {
                    tick.tick().await;
                    if ws.send(Message::Binary(payload.clone())).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// The portal's relay in front of the websocket server at `upstream`, on `runtime`.
async fn relay_to(upstream: u16, runtime: tokio::runtime::Handle) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let clock = Arc::new(InputClock::default());
    let backend: Arc<dyn Backend> = Arc::new(NoBackend);
    runtime.clone().spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (clock, backend) = (clock.clone(), backend.clone());
            runtime.spawn(async move {
                stream.set_nodelay(true).unwrap();
                let Ok(browser) =
                    tokio_tungstenite::accept_async_with_config(stream, Some(relay::browser_config())).await
                else {
                    return;
                };
                let tcp = TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
                tcp.set_nodelay(true).unwrap();
                let url = format!("ws://127.0.0.1:{upstream}/websockify");
                let (desktop, _) =
                    tokio_tungstenite::client_async_with_config(url, tcp, Some(relay::desktop_config())).await.unwrap();
                let activity = Activity::new(backend, clock, "bench".into(), "relay".into());
                relay::relay(browser, desktop, InputParser::after_security(), activity).await;
            });
        }
    });
    port
}

async fn ws_client(port: u16) -> WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let url = format!("ws://127.0.0.1:{port}/websockify");
    tokio_tungstenite::client_async_with_config(url, tcp, Some(relay::desktop_config())).await.unwrap().0
}

struct Figures {
    mb_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Figures {
    /// Throughput of [`TOTAL`] bytes in `elapsed`, and the round-trip percentiles.
    fn of(elapsed: Duration, mut latencies: Vec<Duration>) -> Self {
        latencies.sort();
        Figures {
            mb_per_s: TOTAL as f64 / 1e6 / elapsed.as_secs_f64(),
            p50_us: percentile(&latencies, 0.5),
            p99_us: percentile(&latencies, 0.99),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

async fn measure_tcp(port: u16) -> Figures {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut read, mut write) = stream.into_split();
    let mut latencies = Vec::with_capacity(ROUND_TRIPS);
    let mut small = [0u8; 64];
    for _ in 0..ROUND_TRIPS {
        let start = Instant::now();
        write.write_all(&small).await.unwrap();
        read.read_exact(&mut small).await.unwrap();
        latencies.push(start.elapsed());
    }
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; CHUNK];
        for _ in 0..TOTAL / CHUNK {
            write.write_all(&chunk).await.unwrap();
        }
        write
    });
    let mut buffer = vec![0u8; CHUNK];
    let mut got = 0;
    while got < TOTAL {
        got += read.read(&mut buffer).await.unwrap();
    }
    let elapsed = start.elapsed();
    drop(writer.await.unwrap());
    Figures::of(elapsed, latencies)
}

async fn measure_ws(port: u16) -> Figures {
    let ws = ws_client(port).await;
    let (mut write, mut read) = ws.split();
    let mut latencies = Vec::with_capacity(ROUND_TRIPS);
    let small = Bytes::from(vec![0u8; 64]);
    for _ in 0..ROUND_TRIPS {
        let start = Instant::now();
        write.send(Message::Binary(small.clone())).await.unwrap();
        loop {
            if let Some(Ok(Message::Binary(_))) = read.next().await {
                break;
            }
        }
        latencies.push(start.elapsed());
    }
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = Bytes::from(vec![1u8; CHUNK]);
        for _ in 0..TOTAL / CHUNK {
            write.feed(Message::Binary(chunk.clone())).await.unwrap();
        }
        write.flush().await.unwrap();
        write
    });
    let mut got = 0;
    while got < TOTAL {
        match read.next().await {
            Some(Ok(Message::Binary(data))) => got += data.len(),
            Some(Ok(_)) => {}
            other => panic!("the echo ended early: {other:?}"),
        }
    }
    let elapsed = start.elapsed();
    drop(writer.await.unwrap());
    Figures::of(elapsed, latencies)
}

/// CPU seconds of this process's threads whose name starts with `prefix`.
fn thread_cpu_seconds(prefix: &str) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        total += (utime + stime) / ticks;
    }
    total
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

async fn concurrency(relay_runtime: tokio::runtime::Handle) {
    let streamer = ws_streamer(SESSION_RATE).await;
    let relay_port = relay_to(streamer, relay_runtime).await;
    let rss_before = rss_bytes();
    let received = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..SESSIONS {
        let ws = ws_client(relay_port).await;
        let received = received.clone();
        clients.push(tokio::spawn(async move {
            let (_write, mut read) = ws.split();
            while let Some(Ok(message)) = read.next().await {
                received.fetch_add(message.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    // Let every session start streaming, then measure a window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu0, bytes0, start) = (thread_cpu_seconds("relay"), received.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(SESSION_SECONDS)).await;
    let (cpu1, bytes1, elapsed) = (thread_cpu_seconds("relay"), received.load(Ordering::Relaxed), start.elapsed());
    let rss_after = rss_bytes();
    for client in clients {
        client.abort();
    }
    let rate = (bytes1 - bytes0) as f64 / elapsed.as_secs_f64();
    let cpu = (cpu1 - cpu0) / elapsed.as_secs_f64();
    println!();
    println!(
        "concurrency: {SESSIONS} sessions x {:.1} MB/s wanted, {SESSION_SECONDS} s measured",
        SESSION_RATE as f64 / 1e6
    );
    println!(
        "  delivered          {:>10.1} MB/s in total, {:.3} MB/s per session",
        rate / 1e6,
        rate / 1e6 / SESSIONS as f64
    );
    println!("  relay CPU          {:>10.2} cores ({:.2} ms CPU per session-second)", cpu, cpu * 1e3 / SESSIONS as f64);
    println!(
        "  memory             {:>10.1} MiB more RSS, {:.1} KiB per session (relay + both test ends in one process)",
        (rss_after.saturating_sub(rss_before)) as f64 / (1 << 20) as f64,
        (rss_after.saturating_sub(rss_before)) as f64 / 1024.0 / SESSIONS as f64
    );
}

fn main() {
    let relay_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("relay")
        .enable_all()
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench")
        .enable_all()
        .build()
        .unwrap();
    let relay_handle = relay_runtime.handle().clone();
    runtime.block_on(async move {
        let tcp = tcp_echo().await;
        let ws = ws_echo().await;
        let through_relay = relay_to(ws, relay_handle.clone()).await;
        let direct_tcp = measure_tcp(tcp).await;
        let direct_ws = measure_ws(ws).await;
        let relayed = measure_ws(through_relay).await;
        let websockify = match start_websockify(tcp) {
            Some((child, port)) => {
                let figures = measure_ws(port).await;
                drop(child);
                Some(figures)
            }
            None => None,
        };

        println!("relay benchmark: {} MiB each way in {} KiB messages, {ROUND_TRIPS} round trips of 64 B", TOTAL >> 20, CHUNK >> 10);
        println!("{:<18} {:>10} {:>10} {:>10} {:>12}", "path", "MB/s", "p50 µs", "p99 µs", "x direct TCP");
        let row = |name: &str, f: &Figures| {
            println!(
                "{name:<18} {:>10.0} {:>10.1} {:>10.1} {:>12.2}",
                f.mb_per_s,
                f.p50_us,
                f.p99_us,
                f.mb_per_s / direct_tcp.mb_per_s
            )
        };
        row("direct TCP", &direct_tcp);
        row("direct websocket", &direct_ws);
        row("portal relay", &relayed);
        match &websockify {
            Some(figures) => row("websockify", figures),
            None => println!("{:<18} not installed (run portal/tests/setup-desktop-tools)", "websockify"),
        }
        println!(
            "targets: relay >= 0.9x direct TCP throughput: {:.2}x; added p99 <= 100 µs: {:+.1} µs over direct websocket, {:+.1} µs over direct TCP",
            relayed.mb_per_s / direct_tcp.mb_per_s,
            relayed.p99_us - direct_ws.p99_us,
            relayed.p99_us - direct_tcp.p99_us
        );
        concurrency(relay_handle).await;
    });
}

/// Debian's websockify in front of the TCP echo server; killed when the guard drops.
fn start_websockify(target: u16) -> Option<(ChildGuard, u16)> {
    if !std::path::Path::new("/usr/bin/websockify").exists() {
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let child = std::process::Command::new("/usr/bin/websockify")
        .arg(format!("127.0.0.1:{port}"))
        .arg(format!("127.0.0.1:{target}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let guard = ChildGuard(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((guard, port));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
