//! Serving the portal's routes over HTTP/1.1 so that a slow or hostile client cannot hold a
//! connection: the request head must arrive within [`Limits::header_read`] and the body within
//! [`Limits::body_read`] of the head, or the connection is closed (a body that is too slow is a
//! 408 to the handler reading it). Declared bodies over the size limit are refused by the router
//! before anything is read ([`crate::http::MAX_BODY`]).
//!
//! `axum::serve` offers no read timeouts, so this is its accept loop on hyper's own connection
//! builder, with the peer's address as `ConnectInfo<SocketAddr>` for the sign-in limiter and the
//! audit log, and websocket upgrades for the desktop relay.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Sleep;
use tower::ServiceExt;

/// How long a client may take to send what it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// From the connection's first byte (or the end of the previous request) to the end of the
    /// request head. An idle keep-alive connection is closed after this long too.
    pub header_read: Duration,
    /// From the end of the request head to the end of its body.
    pub body_read: Duration,
}

impl Default for Limits {
    /// 10 s for the head (a browser sends it in one packet), 30 s for a body of at most
    /// [`crate::http::MAX_BODY`] (1 MiB: 280 kbit/s is enough).
    fn default() -> Self {
        Self { header_read: Duration::from_secs(10), body_read: Duration::from_secs(30) }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the requests in flight
/// finish (open websockets are not waited for: they belong to their relay tasks).
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let (stop, stopping) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tokio::spawn(connection(stream, peer, app.clone(), limits, stopping.clone()));
    }
    drop(stopping);
    // Every connection task holds a receiver: closed means they have all finished.
    stop.send_replace(());
    stop.closed().await;
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    mut stopping: watch::Receiver<()>,
) {
    let service = app.map_request(move |request: axum::http::Request<Incoming>| {
        let mut request = request.map(|body| Body::new(DeadlineBody::new(body, limits.body_read)));
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = stopping.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        // Timeouts and clients that go away; nothing the portal can act on.
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// A request body that fails with [`BodyTimeout`] once its deadline has passed.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    allowed: Duration,
}

impl DeadlineBody {
    fn new(inner: Incoming, allowed: Duration) -> Self {
        Self { inner, deadline: Box::pin(tokio::time::sleep(allowed)), allowed }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.allowed))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body did not arrive within the time allowed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs())]
pub struct BodyTimeout(Duration);
