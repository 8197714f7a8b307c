//! `GET /api/v1/workspaces/events`: the live status of "My workspaces" as server-sent events.
//!
//! One [`WorkspaceFeed`] per application polls the backend every [`POLL_EVERY`] for the teams
//! somebody is watching — one `Backend::workspaces(team, None)` per team and tick, however many
//! browsers watch — and publishes each round on a `watch` channel. It starts with the first
//! watcher and stops when the last one goes.
//!
//! Each connection narrows a round down to what the list page shows its user (their own
//! workspaces in the teams they are an active member of, [`own_workspace_teams`], re-read every
//! round so a membership that ends takes its workspaces out of the stream) and sends only what
//! changed since it last sent:
//!
//! - `event: workspace`, data: the workspace as `GET /api/v1/workspaces` shows it (with `stage`,
//!   `blockedReason`, `desktopPath`); first once for every visible workspace, then whenever
//!   anything about it changes (phase, message, problems, whether it should run);
//! - `event: removed`, data: `{"team", "name"}` of a workspace no longer visible (deleted, or the
//!   membership ended);
//! - a comment (`:heartbeat`) every [`HEARTBEAT_EVERY`], so proxies keep the connection open and
//!   a client that vanished without closing is noticed.
//!
//! The stream checks every [`RECHECK_EVERY`] (and when the session expires) that the session (or
//! API token) still works and its account is active ([`crate::auth::access`]), whether rounds
//! arrive or not, and ends when it does not (signed out, disabled, expired). A membership that
//! ends or expires does not end the stream (it covers every team of the user); the next round
//! sends `removed` for that team's workspaces instead. The stream also ends when the client goes:
//! the response body is dropped, and with it the connection's interest in the feed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::HeaderName;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use futures::future::BoxFuture;
use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tracing::Instrument;

use super::api::workspaces::WorkspaceJson;
use super::workspaces::own_workspace_teams;
use crate::auth::CurrentUser;
pub use crate::auth::access::RECHECK_EVERY;
use crate::auth::access::{Access, AccessEnded};
use crate::backend::{Backend, WorkspaceView};
use crate::error::Result;
use crate::state::AppState;
use crate::token::Scope;

/// How often the feed asks the backend.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// How often an idle stream sends a heartbeat comment.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);

/// The route, under `/api/v1`, with the feed its connections share.
pub fn router() -> Router<AppState> {
    Router::new().route("/workspaces/events", get(events)).layer(Extension(Arc::new(WorkspaceFeed::default())))
}

async fn events(
    State(state): State<AppState>,
    Extension(feed): Extension<Arc<WorkspaceFeed>>,
    user: CurrentUser,
) -> Result<Response> {
    user.require_scope(Scope::WorkspacesRead)?;
    let rounds = feed.subscribe(state.backend.clone());
    let stream = Connection::new(state, user, rounds).into_stream();
    let sse = Sse::new(stream).keep_alive(KeepAlive::new().interval(HEARTBEAT_EVERY).text("heartbeat"));
    // Proxies such as nginx would otherwise hold events back until a buffer fills.
    Ok(([(HeaderName::from_static("x-accel-buffering"), "no")], sse).into_response())
}

// ---------------------------------------------------------------------------------------------
// The shared feed
// ---------------------------------------------------------------------------------------------

/// What one round of polling found, by team: the team's workspaces, or why listing them failed.
#[derive(Debug, Default)]
pub struct Round {
    pub teams: BTreeMap<String, Result<Vec<WorkspaceView>, String>>,
}

/// Polls the backend for the teams connections watch and publishes each round.
pub struct WorkspaceFeed {
    shared: Arc<Shared>,
}

struct Shared {
    watched: Mutex<Watched>,
    rounds: watch::Sender<Arc<Round>>,
}

#[derive(Default)]
struct Watched {
    /// Teams, with how many connections watch each.
    teams: BTreeMap<String, usize>,
    /// Connections subscribed, whatever they watch.
    connections: usize,
    /// Whether the polling task runs.
    polling: bool,
}

impl Default for WorkspaceFeed {
    fn default() -> Self {
        let (rounds, _) = watch::channel(Arc::new(Round::default()));
        Self { shared: Arc::new(Shared { watched: Mutex::new(Watched::default()), rounds }) }
    }
}

impl WorkspaceFeed {
    /// A new watcher, watching no team yet; the feed polls `backend` while anyone watches.
    pub fn subscribe(&self, backend: Arc<dyn Backend>) -> Subscription {
        let rounds = self.shared.rounds.subscribe();
        let mut watched = self.shared.lock();
        watched.connections += 1;
        if !watched.polling {
            watched.polling = true;
            let shared = self.shared.clone();
            tokio::spawn(poll(shared, backend).instrument(tracing::info_span!("workspace_feed")));
        }
        Subscription { shared: self.shared.clone(), teams: BTreeSet::new(), rounds }
    }

    /// The teams watched now (for tests and metrics).
    pub fn watched_teams(&self) -> Vec<String> {
        self.shared.lock().teams.keys().cloned().collect()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Lists the watched teams' workspaces every [`POLL_EVERY`] until nobody is subscribed.
async fn poll(shared: Arc<Shared>, backend: Arc<dyn Backend>) {
    let mut ticks = tokio::time::interval(POLL_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = BTreeSet::new();
    loop {
        ticks.tick().await;
        let teams: Vec<String> = {
            let mut watched = shared.lock();
            if watched.connections == 0 {
                watched.polling = false;
                return;
            }
            watched.teams.keys().cloned().collect()
        };
        let lists = futures::future::join_all(teams.iter().map(|team| backend.workspaces(team, None))).await;
        let mut round = Round::default();
        for (team, list) in teams.into_iter().zip(lists) {
            match &list {
                Err(error) if failing.insert(team.clone()) => {
                    tracing::warn!(%team, %error, "listing a team's workspaces failed; trying again");
                }
                Ok(_) if failing.remove(&team) => tracing::info!(%team, "listing the team's workspaces works again"),
                _ => {}
            }
            round.teams.insert(team, list.map_err(|e| e.to_string()));
        }
        shared.rounds.send_replace(Arc::new(round));
    }
}

/// One connection's interest in the feed; dropping it ends the interest.
pub struct Subscription {
    shared: Arc<Shared>,
    teams: BTreeSet<String>,
    rounds: watch::Receiver<Arc<Round>>,
}

impl Subscription {
    /// Watches exactly `teams` from the next round on.
    pub fn watch_teams(&mut self, teams: BTreeSet<String>) {
        if teams == self.teams {
            return;
        }
        let mut watched = self.shared.lock();
        for gone in self.teams.difference(&teams) {
            release(&mut watched.teams, gone);
        }
        for added in teams.difference(&self.teams) {
            *watched.teams.entry(added.clone()).or_default() += 1;
        }
        drop(watched);
        self.teams = teams;
    }

    /// The next round; `None` if the feed is gone.
    pub async fn next_round(&mut self) -> Option<Arc<Round>> {
        self.rounds.changed().await.ok()?;
        Some(self.rounds.borrow_and_update().clone())
    }
}

fn release(teams: &mut BTreeMap<String, usize>, team: &str) {
    if let Some(count) = teams.get_mut(team) {
        *count -= 1;
        if *count == 0 {
            teams.remove(team);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut watched = self.shared.lock();
        watched.connections -= 1;
        for team in &self.teams {
            release(&mut watched.teams, team);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One connection
// ---------------------------------------------------------------------------------------------

/// A workspace's key: team and name.
type Key = (String, String);

/// What changed between what a connection sent and what it sees now.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// New, or different from what was sent: the workspace as it is now.
    Workspace(Value),
    /// No longer visible.
    Removed { team: String, name: String },
}

/// The changes that turn `before` into `after`, in key order: removals first, then workspaces
/// that are new or differ in anything.
pub fn changes(before: &BTreeMap<Key, Value>, after: &BTreeMap<Key, Value>) -> Vec<Change> {
    let removed = before
        .keys()
        .filter(|key| !after.contains_key(*key))
        .map(|(team, name)| Change::Removed { team: team.clone(), name: name.clone() });
    let changed = after
        .iter()
        .filter(|(key, value)| before.get(*key) != Some(*value))
        .map(|(_, value)| Change::Workspace(value.clone()));
    removed.chain(changed).collect()
}

/// What `user` sees of a round, given the teams whose own workspaces they see and what was last
/// sent: for teams the round listed, their workspaces owned by `user`; for teams it did not list
/// (not polled yet, or the backend failed), what was sent before, unchanged.
pub fn visible(
    round: &Round,
    teams: &BTreeSet<String>,
    user: &str,
    sent: &BTreeMap<Key, Value>,
) -> BTreeMap<Key, Value> {
    let mut now = BTreeMap::new();
    for team in teams {
        match round.teams.get(team) {
            Some(Ok(list)) => {
                for ws in list.iter().filter(|ws| ws.owner == user) {
                    let json = serde_json::to_value(WorkspaceJson::from(ws.clone())).unwrap_or(Value::Null);
                    now.insert((ws.team.clone(), ws.name.clone()), json);
                }
            }
            _ => now.extend(sent.iter().filter(|((t, _), _)| t == team).map(|(k, v)| (k.clone(), v.clone()))),
        }
    }
    now
}

#[derive(Serialize)]
struct RemovedJson<'a> {
    team: &'a str,
    name: &'a str,
}

impl Change {
    fn event(&self) -> Event {
        match self {
            Self::Workspace(json) => Event::default().event("workspace").data(json.to_string()),
            Self::Removed { team, name } => {
                let data = serde_json::to_string(&RemovedJson { team, name }).unwrap_or_default();
                Event::default().event("removed").data(data)
            }
        }
    }
}

/// A stream's state between events.
struct Connection {
    state: AppState,
    user: CurrentUser,
    subscription: Subscription,
    /// What the client has been sent, by workspace.
    sent: BTreeMap<Key, Value>,
    /// Events computed but not yet sent.
    pending: VecDeque<Event>,
    /// Resolves when the session or token stops working.
    access_ended: BoxFuture<'static, AccessEnded>,
    span: tracing::Span,
}

impl Connection {
    fn new(state: AppState, user: CurrentUser, subscription: Subscription) -> Self {
        let span = tracing::info_span!("workspace_events", user = %user.id());
        let access_ended = Box::pin(Access::signed_in(state.clone(), user.clone()).ended());
        Self { state, user, subscription, sent: BTreeMap::new(), pending: VecDeque::new(), access_ended, span }
    }

    fn into_stream(self) -> impl Stream<Item = std::result::Result<Event, Infallible>> + Send {
        futures::stream::unfold(self, |mut connection| async move {
            let span = connection.span.clone();
            let event = connection.next_event().instrument(span).await?;
            Some((Ok(event), connection))
        })
    }

    /// The next event to send; `None` ends the stream.
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            // Watch the user's teams before waiting, so the next round lists them.
            let now = Timestamp::now();
            let memberships = match self.state.memberships_of(self.user.id()).await {
                Ok(memberships) => Some(memberships),
                Err(error) => {
                    tracing::warn!(%error, "reading memberships failed; keeping the last view");
                    None
                }
            };
            let teams = memberships.map(|m| own_workspace_teams(&m, now));
            if let Some(teams) = &teams {
                self.subscription.watch_teams(teams.clone());
            }
            let round = tokio::select! {
                round = self.subscription.next_round() => round?,
                ended = &mut self.access_ended => {
                    tracing::info!(reason = ended.reason(), "access ended; closing the stream");
                    return None;
                }
            };
            let teams = teams.unwrap_or_else(|| self.subscription.teams.clone());
            let now_visible = visible(&round, &teams, self.user.id(), &self.sent);
            self.pending.extend(changes(&self.sent, &now_visible).iter().map(Change::event));
            self.sent = now_visible;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use deskpod_controller::api::TeamMember;
    use futures::future::BoxFuture;
    use rstest::rstest;
    use serde_json::json;

    use super::*;
    use crate::backend::{BackendError, BackendResult, DesktopEndpoint, NewWorkspace, Phase, TeamView, TemplateView};
    use crate::membership::MembershipSource;

    fn key(name: &str) -> Key {
        ("platform".into(), name.into())
    }

    fn state(entries: &[(&str, &str)]) -> BTreeMap<Key, Value> {
        entries.iter().map(|(name, phase)| (key(name), json!({ "name": name, "phase": phase }))).collect()
    }

    #[rstest]
    #[case::nothing_sent_yet(&[], &[("dev", "Starting")], &["+dev Starting"])]
    #[case::unchanged(&[("dev", "Running")], &[("dev", "Running")], &[])]
    #[case::phase_changed(&[("dev", "Starting")], &[("dev", "Running")], &["+dev Running"])]
    #[case::only_the_changed_one(
        &[("a", "Running"), ("b", "Starting")],
        &[("a", "Running"), ("b", "Running")],
        &["+b Running"]
    )]
    #[case::removed(&[("a", "Running"), ("b", "Stopped")], &[("a", "Running")], &["-b"])]
    #[case::removed_and_added(&[("a", "Running")], &[("b", "Pending")], &["-a", "+b Pending"])]
    fn only_differences_are_sent(
        #[case] before: &[(&str, &str)],
        #[case] after: &[(&str, &str)],
        #[case] expected: &[&str],
    ) {
        let shown: Vec<String> = changes(&state(before), &state(after))
            .into_iter()
            .map(|change| match change {
                Change::Workspace(ws) => format!("+{} {}", ws["name"].as_str().unwrap(), ws["phase"].as_str().unwrap()),
                Change::Removed { name, .. } => format!("-{name}"),
            })
            .collect();
        assert_eq!(shown, expected);
    }

    fn ws(team: &str, name: &str, owner: &str, phase: Phase) -> WorkspaceView {
        WorkspaceView {
            team: team.into(),
            name: name.into(),
            owner: owner.into(),
            template: "python".into(),
            running: true,
            phase,
            message: None,
            problems: BTreeMap::new(),
            created_at: None,
            started_at: None,
        }
    }

    #[test]
    fn a_user_sees_their_own_workspaces_in_their_teams_and_keeps_what_a_failed_listing_hid() {
        let alice = "alice@example.com";
        let round = Round {
            teams: BTreeMap::from([
                (
                    "platform".to_owned(),
                    Ok(vec![
                        ws("platform", "dev", alice, Phase::Running),
                        ws("platform", "theirs", "erin@example.com", Phase::Running),
                    ]),
                ),
                ("data".to_owned(), Err("the API server is down".to_owned())),
                ("other".to_owned(), Ok(vec![ws("other", "mine-elsewhere", alice, Phase::Running)])),
            ]),
        };
        let sent = BTreeMap::from([(("data".to_owned(), "etl".to_owned()), json!({ "name": "etl" }))]);
        let teams = BTreeSet::from(["platform".to_owned(), "data".to_owned(), "later".to_owned()]);
        let seen = visible(&round, &teams, alice, &sent);
        let keys: Vec<&Key> = seen.keys().collect();
        // Not erin's workspace, nothing from a team alice is not in, and the failed team's last view.
        assert_eq!(keys, [&("data".to_owned(), "etl".to_owned()), &key("dev")]);
        assert_eq!(seen[&key("dev")]["stage"], "ready");
        assert_eq!(seen[&key("dev")]["desktopPath"], "/workspaces/platform/dev/desktop");
    }

    #[tokio::test]
    async fn the_feed_polls_each_watched_team_once_a_round_and_stops_when_nobody_watches() {
        let backend = Arc::new(CountingBackend::default());
        let feed = WorkspaceFeed::default();
        let mut first = feed.subscribe(backend.clone());
        let mut second = feed.subscribe(backend.clone());
        first.watch_teams(BTreeSet::from(["platform".to_owned()]));
        second.watch_teams(BTreeSet::from(["platform".to_owned(), "data".to_owned()]));
        let round = first.next_round().await.expect("a round");
        assert_eq!(round.teams.keys().collect::<Vec<_>>(), ["data", "platform"]);
        second.next_round().await.expect("the same round");
        assert_eq!(backend.calls(), 2, "one listing per team, not per connection");

        drop(second);
        assert_eq!(feed.watched_teams(), ["platform"]);
        drop(first);
        assert!(feed.watched_teams().is_empty());
        // The polling task ends at its next tick.
        let deadline = tokio::time::Instant::now() + POLL_EVERY * 3;
        while feed.shared.lock().polling {
            assert!(tokio::time::Instant::now() < deadline, "the feed still polls with nobody watching");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Counts `workspaces` calls; nothing else is used.
    #[derive(Default)]
    struct CountingBackend {
        calls: AtomicUsize,
    }

    impl CountingBackend {
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    fn unused<'a, T: Send + 'a>() -> BoxFuture<'a, BackendResult<T>> {
        Box::pin(std::future::ready(Err(BackendError::Unavailable("not used".into()))))
    }

    impl MembershipSource for CountingBackend {
        fn memberships<'a>(&'a self, _: &'a str) -> BoxFuture<'a, crate::Result<Vec<crate::Membership>>> {
            Box::pin(std::future::ready(Ok(vec![])))
        }
    }

    impl Backend for CountingBackend {
        fn workspaces<'a>(
            &'a self,
            team: &'a str,
            _: Option<&'a str>,
        ) -> BoxFuture<'a, BackendResult<Vec<WorkspaceView>>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(std::future::ready(Ok(vec![ws(team, "dev", "alice@example.com", Phase::Running)])))
        }
        fn templates(&self) -> BoxFuture<'_, BackendResult<Vec<TemplateView>>> {
            unused()
        }
        fn team<'a>(&'a self, _: &'a str) -> BoxFuture<'a, BackendResult<Option<TeamView>>> {
            unused()
        }
        fn workspace<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, BackendResult<Option<WorkspaceView>>> {
            unused()
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
        fn desktop<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, BackendResult<Option<DesktopEndpoint>>> {
            unused()
        }
        fn record_input<'a>(&'a self, _: &'a str, _: &'a str, _: Timestamp) -> BoxFuture<'a, BackendResult<()>> {
            unused()
        }
        fn add_member<'a>(&'a self, _: &'a str, _: TeamMember) -> BoxFuture<'a, BackendResult<()>> {
            unused()
        }
    }
}
