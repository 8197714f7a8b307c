//! A client cannot make the portal wait (issue #24): a body declared over the 1 MiB limit is
//! refused with 413 before it is read, a streamed body over the limit is a 413 too (JSON on the
//! API, a page on forms), and a request head or body that comes too slowly loses its connection.
//! Over real TCP, through `deskpod_portal::serve` as `main` runs it, with short read limits.

mod common;

use std::time::Duration;

use common::{Browser, Portal};
use deskpod_portal::serve::{Limits, serve};
use deskpod_portal::store::GlobalRole;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const LIMITS: Limits = Limits { header_read: Duration::from_secs(1), body_read: Duration::from_secs(1) };
/// Longer than any limit above: what the portal does, it does well before this.
const PATIENCE: Duration = Duration::from_secs(5);
/// A pre-session cookie of the right shape, so sign-in forms get as far as reading the body.
const PRE_SESSION: &str = "deskpod_csrf=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

struct Served {
    portal: Portal,
    address: std::net::SocketAddr,
    _server: tokio::task::JoinHandle<()>,
}

async fn served() -> Served {
    let portal = Portal::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, portal.app(), LIMITS, std::future::pending()));
    Served { portal, address, _server: server }
}

/// Everything the portal sends until it closes the connection, and how long that took.
async fn until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let since = Instant::now();
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received))
        .await
        .unwrap_or_else(|_| panic!("the connection is still open after {PATIENCE:?}"))
        .unwrap();
    (String::from_utf8_lossy(&received).into_owned(), since.elapsed())
}

fn status_of(response: &str) -> &str {
    response.split(' ').nth(1).unwrap_or_else(|| panic!("no status line in {response:?}"))
}

#[rstest::rstest]
#[case::sign_in_form("POST", "/signin")]
#[case::api_create("POST", "/api/v1/workspaces")]
#[case::api_admin_put("PUT", "/api/v1/admin/templates/x")]
#[case::desktop_proxy("POST", "/workspaces/default/dev/kasm/upload")]
#[tokio::test]
async fn a_body_declared_over_the_limit_is_refused_at_once(#[case] method: &str, #[case] path: &str) {
    let served = served().await;
    let mut stream = TcpStream::connect(served.address).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {PRE_SESSION}\r\nContent-Type: application/json\r\n\
         Content-Length: 10000000000\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();

    let (response, took) = until_closed(&mut stream).await;
    assert_eq!(status_of(&response), "413", "{response}");
    assert!(response.contains("larger than the 1048576 bytes"), "{response}");
    assert!(took < Duration::from_millis(500), "413 after {took:?}: it waited for the body");
}

/// A chunked body gives no length up front; reading stops at the limit with a 413 all the same.
#[tokio::test]
async fn a_streamed_body_over_the_limit_is_413() {
    let served = served().await;
    served.portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut alice = Browser::signed_in(&served.portal, "alice@example.com").await;
    let csrf = alice.session_csrf(&served.portal).await;
    let cookie = alice.cookie_header();
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));

    let cases = [
        (
            "/api/v1/workspaces",
            format!("Cookie: {cookie}\r\nX-CSRF-Token: {csrf}\r\nContent-Type: application/json"),
            17,
        ),
        ("/signin", format!("Cookie: {PRE_SESSION}\r\nContent-Type: application/x-www-form-urlencoded"), 2),
    ];
    for (path, headers, chunks) in cases {
        let mut stream = TcpStream::connect(served.address).await.unwrap();
        let head =
            format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\nTransfer-Encoding: chunked\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        for _ in 0..chunks {
            // The portal may answer and close before the last chunk: that is the point.
            if stream.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
        let (response, _) = until_closed(&mut stream).await;
        assert_eq!(status_of(&response), "413", "{path}: {response}");
        assert!(response.contains("The body is larger than the"), "{path}: {response}");
    }
}

#[tokio::test]
async fn a_request_head_that_never_ends_loses_its_connection() {
    let served = served().await;
    let mut stream = TcpStream::connect(served.address).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.unwrap();

    let (response, took) = until_closed(&mut stream).await;
    assert!(!response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "closed after {took:?}");
}

#[tokio::test]
async fn a_body_that_comes_too_slowly_is_408_and_the_connection_closes() {
    let served = served().await;
    let mut stream = TcpStream::connect(served.address).await.unwrap();
    let head = format!(
        "POST /signin HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {PRE_SESSION}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nemail=a"
    );
    stream.write_all(head.as_bytes()).await.unwrap();

    let (response, took) = until_closed(&mut stream).await;
    assert_eq!(status_of(&response), "408", "{response}");
    assert!(response.contains("did not arrive within 1 s"), "{response}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "answered after {took:?}");
}

/// The control: a client that sends at a normal pace is served, twice on one connection.
#[tokio::test]
async fn a_prompt_client_is_served() {
    let served = served().await;
    let mut stream = TcpStream::connect(served.address).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut first = vec![0; 4096];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut first)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first[..read]).starts_with("HTTP/1.1 200"));
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let (second, _) = until_closed(&mut stream).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(second.contains(r#""status":"ok""#), "{second}");
}

/// A kept-alive connection that sends no next request is closed like a slow head.
#[tokio::test]
async fn an_idle_connection_is_closed() {
    let served = served().await;
    let mut stream = TcpStream::connect(served.address).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let (response, took) = until_closed(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "closed after {took:?}");
}
