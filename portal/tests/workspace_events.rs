//! The live status stream of "My workspaces" (`GET /api/v1/workspaces/events`) on the Kubernetes
//! backend, against the real test cluster and the real controllers: the owner's stream delivers
//! their new workspace's phases as they change — waiting for team capacity, then Running once a
//! teammate stops theirs — and nothing of that teammate's workspace, which changes meanwhile too;
//! a signed-out session's stream ends.

mod common;
mod kube_common;

use axum::body::{Body, BodyDataStream};
use axum::http::{Method, Request, StatusCode, header};
use common::{Browser, Portal};
use deskpod_controller::api::{Team, WorkspacePhase};
use deskpod_portal::http::events::{POLL_EVERY, RECHECK_EVERY};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube_common::{Fixture, ONE_CONTROLLER, WAIT};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower::ServiceExt;

/// One server-sent event: its type and JSON data.
#[derive(Debug)]
struct Sse {
    event: String,
    data: Value,
}

/// A client reading an event stream, in-process: a task reads the body from the moment the
/// stream opens (as a browser would) and hands over the events.
struct EventStream {
    events: mpsc::UnboundedReceiver<Sse>,
    reader: tokio::task::JoinHandle<()>,
}

impl EventStream {
    /// Opens the stream as `browser` (with its session cookie).
    async fn open(portal: &Portal, browser: &Browser) -> Self {
        let cookies = browser.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let request = Request::builder()
            .method(Method::GET)
            .uri("/api/v1/workspaces/events")
            .header(header::ACCEPT, "text/event-stream")
            .header(header::COOKIE, cookies)
            .body(Body::empty())
            .unwrap();
        let response = portal.app().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream");
        let (send, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_events(response.into_body().into_data_stream(), send));
        Self { events, reader }
    }

    /// The next event; `None` when the stream ended. Panics at `deadline`.
    async fn next(&mut self, deadline: Instant) -> Option<Sse> {
        tokio::time::timeout_at(deadline, self.events.recv()).await.expect("no event before the deadline")
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Splits the body into events (skipping comments) until it ends.
async fn read_events(mut body: BodyDataStream, events: mpsc::UnboundedSender<Sse>) {
    let mut buffer = String::new();
    while let Some(chunk) = body.next().await {
        buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
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
            if event.is_empty() {
                continue; // a heartbeat comment
            }
            let data = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{event}: not JSON ({e}): {data}"));
            if events.send(Sse { event, data }).is_err() {
                return;
            }
        }
    }
}

async fn create(f: &Fixture, browser: &Browser, csrf: &str, name: &str) {
    let body = json!({ "team": f.team, "name": name, "template": f.template }).to_string();
    let created = browser.api(&f.portal, Method::POST, "/api/v1/workspaces", Some(csrf), Some(&body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
}

/// Sets the team's pod quota (its running desktops) and waits until the backend sees it.
async fn limit_running_desktops(f: &Fixture, pods: i32) {
    let patch = json!({ "spec": { "quota": { "pods": pods } } });
    Api::<Team>::all(f.client()).patch(&f.team, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let team = f.portal.state.backend.team(&f.team).await.unwrap().unwrap();
        if team.quota.get("pods").is_some_and(|q| q.hard == pods.to_string()) {
            return;
        }
        assert!(Instant::now() < deadline, "the team's pod quota never became {pods}: {:?}", team.quota);
        tokio::time::sleep(POLL_EVERY / 5).await;
    }
}

#[tokio::test]
async fn the_owner_sees_their_workspace_wait_then_run_and_nothing_of_a_teammates() {
    let _one = ONE_CONTROLLER.lock().await;
    let f = Fixture::new("portal-events", 3, false).await;
    let mut alice = Browser::signed_in(&f.portal, &f.alice).await;
    let alice_csrf = alice.session_csrf(&f.portal).await;
    let mut erin = Browser::signed_in(&f.portal, &f.erin).await;
    let erin_csrf = erin.session_csrf(&f.portal).await;

    // The team may run one desktop, and erin's runs; so alice's new workspace has to wait.
    limit_running_desktops(&f, 1).await;
    create(&f, &erin, &erin_csrf, "erins").await;
    f.wait_phase("erins", WorkspacePhase::Running).await;

    // Alice watches, then creates hers: it waits for team capacity, and the stream says why.
    let mut stream = EventStream::open(&f.portal, &alice).await;
    create(&f, &alice, &alice_csrf, "dev").await;
    let mut events = vec![];
    let deadline = Instant::now() + WAIT;
    let waiting = loop {
        let event = stream.next(deadline).await.expect("the stream goes on");
        let blocked = event.data["blockedReason"].as_str().is_some_and(|r| r.contains("exceeded quota"));
        events.push(event);
        if blocked {
            break events.last().unwrap().data.clone();
        }
    };
    assert_eq!(
        (waiting["phase"].as_str(), waiting["stage"].as_str()),
        (Some("Pending"), Some("scheduling")),
        "{waiting}"
    );
    assert!(waiting["message"].as_str().unwrap().contains("waiting for team capacity"), "{waiting}");

    // Erin stops hers (changing its phase twice); alice's starts and runs.
    let stop = format!("/api/v1/workspaces/{}/erins/stop", f.team);
    let stopped = erin.api(&f.portal, Method::POST, &stop, Some(&erin_csrf), None).await;
    assert_eq!(stopped.status, StatusCode::NO_CONTENT, "{}", stopped.body);
    while events.last().unwrap().data["phase"] != "Running" {
        events.push(stream.next(deadline).await.expect("the stream goes on"));
    }
    let mut phases: Vec<&str> = vec![];
    for event in &events {
        // Only alice's workspace, each event saying something new about it.
        assert_eq!(event.event, "workspace", "{event:?}");
        let (team, owner, name) =
            (event.data["team"].as_str(), event.data["owner"].as_str(), event.data["name"].as_str());
        assert_eq!((team, owner, name), (Some(f.team.as_str()), Some(f.alice.as_str()), Some("dev")), "{event:?}");
        let phase = event.data["phase"].as_str().unwrap();
        if phases.last() != Some(&phase) {
            phases.push(phase);
        }
    }
    assert!(events.windows(2).all(|pair| pair[0].data != pair[1].data), "an unchanged workspace was sent again");
    println!("alice's stream: {} events, phases {}", events.len(), phases.join(" → "));
    assert_eq!((phases.first(), phases.last()), (Some(&"Pending"), Some(&"Running")), "{phases:?}");
    let running = &events.last().unwrap().data;
    assert_eq!((running["stage"].as_str(), running["blockedReason"].as_str()), (Some("ready"), None), "{running}");
    assert_eq!(running["desktopPath"], format!("/workspaces/{}/dev/desktop", f.team));
    f.wait_phase("erins", WorkspacePhase::Stopped).await;

    // Signed out, the stream ends (it re-checks the session every RECHECK_EVERY).
    let signed_out = alice.post(&f.portal, "/signout", &[("csrf", alice_csrf.as_str())]).await;
    assert_eq!(signed_out.status, StatusCode::SEE_OTHER);
    let deadline = Instant::now() + RECHECK_EVERY + POLL_EVERY * 4;
    while let Some(event) = stream.next(deadline).await {
        assert_eq!(event.data["name"], "dev", "{event:?}");
    }
    f.delete().await;
}
