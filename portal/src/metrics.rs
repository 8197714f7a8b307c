//! The portal's Prometheus metrics: HTTP requests, the desktop proxy's traffic and sessions,
//! sign-ins and workspace creations. `main` registers them into a registry served on a separate
//! listener (`--metrics-listen`), never on the public router; tests register their own.
//!
//! Everything is counted in the HTTP layer, above the backends, so Kubernetes and single-host
//! Docker report alike. Labels stay bounded: the route *pattern* axum matched (never the raw path,
//! which carries team and workspace names), the status class, fixed outcome and method names.
//! [`SERIES`] lists every series served here, so tests can check the chart's dashboard against it.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Every series the portal serves (histograms by their base name), with the prefix.
pub const SERIES: &[&str] = &[
    "deskpod_portal_http_requests_total",
    "deskpod_portal_http_request_duration_seconds",
    "deskpod_portal_desktop_proxy_bytes_total",
    "deskpod_portal_desktop_sessions",
    "deskpod_portal_desktop_sessions_opened_total",
    "deskpod_portal_sign_ins_total",
    "deskpod_portal_workspace_creates_total",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignInLabels {
    method: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// How a sign-in went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignIn {
    Success,
    /// Wrong credentials, an unknown, disabled or expired account, or refused by the provider.
    Failure,
    /// Refused by the rate limit before the password was looked at.
    RateLimited,
}

/// The portal's metrics; cheap to clone (the series are shared). [`Default`] makes metrics that
/// count but are served nowhere, for portals and tests that do not scrape.
#[derive(Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabel, Histogram>,
    proxy_bytes: Family<DirectionLabel, Counter>,
    /// The two series of `proxy_bytes`, resolved once: the relay counts every message.
    to_desktop: Counter,
    to_browser: Counter,
    sessions: Gauge,
    sessions_opened: Counter,
    sign_ins: Family<SignInLabels, Counter>,
    workspace_creates: Family<OutcomeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let proxy_bytes = Family::<DirectionLabel, Counter>::default();
        let to_desktop = proxy_bytes.get_or_create(&DirectionLabel { direction: "browser_to_desktop" }).clone();
        let to_browser = proxy_bytes.get_or_create(&DirectionLabel { direction: "desktop_to_browser" }).clone();
        Self {
            requests: Family::default(),
            // 1 ms to about 16 s.
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 15))),
            proxy_bytes,
            to_desktop,
            to_browser,
            sessions: Gauge::default(),
            sessions_opened: Counter::default(),
            sign_ins: Family::default(),
            workspace_creates: Family::default(),
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them under the `deskpod_portal_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let sub = registry.sub_registry_with_prefix("deskpod_portal");
        sub.register(
            "http_requests",
            "HTTP requests answered, by route pattern, method and status class",
            metrics.requests.clone(),
        );
        sub.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (for a desktop websocket: until the upgrade)",
            metrics.duration.clone(),
        );
        sub.register(
            "desktop_proxy_bytes",
            "Bytes of websocket payload the desktop proxy relayed, by direction",
            metrics.proxy_bytes.clone(),
        );
        sub.register("desktop_sessions", "Desktop connections being relayed now", metrics.sessions.clone());
        sub.register("desktop_sessions_opened", "Desktop connections relayed", metrics.sessions_opened.clone());
        sub.register("sign_ins", "Sign-in attempts, by method and outcome", metrics.sign_ins.clone());
        sub.register(
            "workspace_creates",
            "Workspace creations asked for, by outcome (created, rejected: the request was refused, failed: the backend failed)",
            metrics.workspace_creates.clone(),
        );
        metrics
    }

    /// Counts a sign-in with `method` (`password` or `oidc`).
    pub fn sign_in(&self, method: &'static str, outcome: SignIn) {
        let outcome = match outcome {
            SignIn::Success => "success",
            SignIn::Failure => "failure",
            SignIn::RateLimited => "rate_limited",
        };
        self.sign_ins.get_or_create(&SignInLabels { method, outcome }).inc();
    }

    /// Counts a workspace creation that ended with HTTP status `status`.
    pub fn workspace_create(&self, status: axum::http::StatusCode) {
        let outcome = match status {
            s if s.is_success() => "created",
            s if s.is_client_error() => "rejected",
            _ => "failed",
        };
        self.workspace_creates.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// A desktop connection starts being relayed; it counts as active until the guard drops.
    pub fn desktop_session(&self) -> SessionGuard {
        self.sessions.inc();
        self.sessions_opened.inc();
        SessionGuard(self.sessions.clone())
    }

    /// Counts payload bytes relayed from the browser to the desktop.
    pub fn browser_to_desktop(&self, bytes: usize) {
        self.to_desktop.inc_by(bytes as u64);
    }

    /// Counts payload bytes relayed from the desktop to the browser.
    pub fn desktop_to_browser(&self, bytes: usize) {
        self.to_browser.inc_by(bytes as u64);
    }
}

/// An active desktop session: the gauge goes down when it drops, however the relay ended.
pub struct SessionGuard(Gauge);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Middleware counting and timing every request by the route pattern it matched; requests no
/// route matched count as `unmatched`, so probing random paths cannot grow the label set.
pub async fn track_requests(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics.duration.get_or_create(&RouteLabel { route: route.clone() }).observe(started.elapsed().as_secs_f64());
    metrics.requests.get_or_create(&RequestLabels { route, method, status }).inc();
    response
}

/// The standard methods by name; anything else is `other` (a client may send any token).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The metrics listener's router: `/metrics` (and `/healthz`), the same admin router the
/// controller serves.
pub fn router(registry: std::sync::Arc<Registry>) -> axum::Router {
    deskpod_controller::admin::router(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusual_methods_and_statuses_stay_in_a_few_labels() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"PROPFIND").unwrap()), "other");
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.workspace_create(axum::http::StatusCode::CREATED);
        metrics.workspace_create(axum::http::StatusCode::CONFLICT);
        metrics.workspace_create(axum::http::StatusCode::BAD_GATEWAY);
        {
            let _session = metrics.desktop_session();
            assert_eq!(metrics.sessions.get(), 1);
        }
        assert_eq!(metrics.sessions.get(), 0, "the guard ends the session");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for outcome in ["created", "rejected", "failed"] {
            let line = format!(r#"deskpod_portal_workspace_creates_total{{outcome="{outcome}"}} 1"#);
            assert!(text.contains(&line), "{line}:\n{text}");
        }
        assert!(text.contains("deskpod_portal_desktop_sessions_opened_total 1"), "{text}");
    }
}
