//! CI agents in single-host mode, on the real Docker Engine with the real CI-agent image
//! (`deskpod/ci-agent:latest`): `deskpod agent run` prints the job's output and exits with its
//! code, leaving no container; a full team queues jobs (never more running than its quota, first
//! come first served, queue positions shown) instead of failing them; a deadline stops a job;
//! cancelling removes it and lets the next one start; bad requests are refused.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::Browser;
use deskpod_controller::api::{CiAgentSpec, TeamMember, TeamQuota, TeamRole, TeamSpec};
use deskpod_portal::backend::Backend;
use deskpod_portal::backend::agent::{AgentPhase, NewAgent};
use deskpod_portal::backend::docker::DockerBackend;
use deskpod_portal::store::{GlobalRole, SqliteStore};
use serde_json::json;

const IMAGE: &str = "deskpod/ci-agent:latest";
const ALICE: &str = "alice@example.com";
const WITHIN: Duration = Duration::from_secs(60);

/// A portal on the Docker backend with a team of Alice's whose quota runs `at_once` agents.
struct Host {
    portal: common::Portal,
    backend: Arc<DockerBackend>,
    team: String,
}

impl Host {
    async fn new(what: &str, at_once: i32) -> Self {
        let backend = Arc::new(DockerBackend::connect(SqliteStore::open_in_memory().unwrap()).await.unwrap());
        let team = format!("ag{}-{what}", std::process::id());
        let spec = TeamSpec {
            quota: TeamQuota { ci_agents: Some(at_once), ci_agent_queue: Some(40), ..TeamQuota::default() },
            members: vec![TeamMember { user: ALICE.into(), role: TeamRole::Engineer, expires_at: None }],
            ..TeamSpec::default()
        };
        backend.put_team(&team, spec).await.unwrap();
        let mut portal = common::Portal::new().await;
        portal.state = portal.state.clone().with_backend(backend.clone());
        portal.add_user(ALICE, GlobalRole::User).await;
        Self { portal, backend, team }
    }

    async fn submit(&self, name: &str, script: &str, deadline: Option<&str>) {
        let spec = CiAgentSpec {
            image: Some(IMAGE.into()),
            template: None,
            command: Some(vec!["sh".into(), "-c".into(), script.into()]),
            args: vec![],
            env: vec![],
            jenkins: None,
            resources: None,
            deadline: deadline.map(str::to_owned),
            ttl_after_finished: None,
        };
        let new = NewAgent { team: self.team.clone(), name: name.into(), owner: ALICE.into(), spec };
        self.backend.create_agent(new).await.unwrap();
    }

    /// Waits until `name` is in `phase`.
    async fn wait_phase(&self, name: &str, phase: AgentPhase) {
        let started = Instant::now();
        loop {
            let agent = self.backend.agent(&self.team, name).await.unwrap();
            if agent.as_ref().is_some_and(|a| a.phase == phase) {
                return;
            }
            assert!(started.elapsed() < WITHIN, "{name} not {phase:?} within {WITHIN:?}: {agent:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let label = format!("label=deskpod.io/team={}", self.team);
        let ids = docker(&["ps", "-aq", "--filter", &label]);
        for id in ids.split_whitespace() {
            docker(&["rm", "-f", id]);
        }
        docker(&["network", "rm", &self.backend.names().network(&self.team)]);
    }
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("the docker CLI");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn deskpod(url: &str, token: &str, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_deskpod"));
    command.args(args).env("DESKPOD_URL", url).env("DESKPOD_TOKEN", token).env_remove("XDG_CONFIG_HOME");
    command.output().await.expect("deskpod runs")
}

#[tokio::test]
async fn agent_run_prints_the_output_exits_with_the_jobs_code_and_leaves_nothing() {
    let host = Host::new("cli", 2).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = host.portal.app().into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut alice = Browser::signed_in(&host.portal, ALICE).await;
    let csrf = alice.session_csrf(&host.portal).await;
    let body = json!({ "name": "ci", "scopes": ["agents:run"] }).to_string();
    let created = alice.api(&host.portal, Method::POST, "/api/v1/tokens", Some(&csrf), Some(&body)).await;
    let token = created.json()["secret"].as_str().expect("the secret, shown once").to_string();

    let team = host.team.as_str();
    let args = ["agent", "run", "--team", team, "--image", IMAGE, "--name", "job", "--", "sh", "-c", "echo hi; exit 3"];
    let out = deskpod(&url, &token, &args).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n", "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        docker(&[
            "ps",
            "-aq",
            "--filter",
            "label=deskpod.io/agent=job",
            "--filter",
            &format!("label=deskpod.io/team={team}")
        ])
        .trim(),
        "",
        "the container is gone"
    );
    assert!(host.backend.agents(team).await.unwrap().is_empty(), "the agent is gone");

    // A job that succeeds exits 0; one given an environment sees it.
    let args = [
        "agent",
        "run",
        "--team",
        team,
        "--image",
        IMAGE,
        "--env",
        "GREETING=hello",
        "--",
        "sh",
        "-c",
        "echo $GREETING",
    ];
    let out = deskpod(&url, &token, &args).await;
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).as_ref()), (Some(0), "hello\n"));

    // A token without the scope, and a team Alice is not in, are refused.
    let args = ["agent", "run", "--team", "not-her-team", "--image", IMAGE, "--", "true"];
    let out = deskpod(&url, &token, &args).await;
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not run CI agents for team not-her-team"));
    server.abort();
}

#[tokio::test]
async fn a_full_team_queues_jobs_first_come_first_served_and_never_runs_more_than_its_quota() {
    let host = Host::new("queue", 2).await;
    let names: Vec<String> = (1..=6).map(|i| format!("job{i}")).collect();
    for name in &names {
        host.submit(name, "sleep 1", None).await;
    }
    // Two run, four wait in order.
    let agents = host.backend.agents(&host.team).await.unwrap();
    let queued: Vec<(String, Option<u32>)> =
        agents.iter().filter(|a| a.phase == AgentPhase::Queued).map(|a| (a.name.clone(), a.queue_position)).collect();
    assert_eq!(
        queued,
        vec![("job3".into(), Some(1)), ("job4".into(), Some(2)), ("job5".into(), Some(3)), ("job6".into(), Some(4))]
    );
    assert!(agents[5].message.as_deref().unwrap().contains("4 in the team's queue"), "{:?}", agents[5]);

    let started = Instant::now();
    let mut most_running = 0;
    loop {
        let agents = host.backend.agents(&host.team).await.unwrap();
        let running = agents.iter().filter(|a| matches!(a.phase, AgentPhase::Starting | AgentPhase::Running)).count();
        most_running = most_running.max(running);
        let docker_running = docker(&["ps", "-q", "--filter", &format!("label=deskpod.io/team={}", host.team)])
            .split_whitespace()
            .count();
        assert!(docker_running <= 2, "{docker_running} agent containers run at once");
        if agents.iter().all(|a| a.phase == AgentPhase::Succeeded) {
            // First come, first served: the queued jobs started in their order, none before the
            // two that found room at once (those two start side by side, in either order).
            let starts: Vec<_> = agents.iter().map(|a| a.started_at.unwrap()).collect();
            let (admitted, queued) = starts.split_at(2);
            assert!(queued.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
            assert!(admitted.iter().all(|a| *a <= queued[0]), "{starts:?}");
            break;
        }
        assert!(!agents.iter().any(|a| a.phase == AgentPhase::Failed), "none fails for lack of room: {agents:?}");
        assert!(started.elapsed() < WITHIN, "not all Succeeded: {agents:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(most_running, 2, "the quota's two at once were used");
}

#[tokio::test]
async fn a_deadline_stops_a_job_and_cancelling_removes_it_and_starts_the_next() {
    let host = Host::new("stop", 1).await;
    host.submit("slow", "sleep 60", Some("1s")).await;
    host.wait_phase("slow", AgentPhase::TimedOut).await;
    let agent = host.backend.agent(&host.team, "slow").await.unwrap().unwrap();
    assert!(agent.message.unwrap().contains("deadline of 1s"));
    let running = docker(&["ps", "-q", "--filter", &format!("label=deskpod.io/team={}", host.team)]);
    assert_eq!(running.trim(), "", "the timed-out job no longer runs");

    host.submit("long", "sleep 60", None).await;
    host.submit("next", "echo done", None).await;
    host.wait_phase("long", AgentPhase::Running).await;
    assert_eq!(host.backend.agent(&host.team, "next").await.unwrap().unwrap().queue_position, Some(1));
    host.backend.delete_agent(&host.team, "long").await.unwrap();
    assert!(host.backend.agent(&host.team, "long").await.unwrap().is_none());
    let container = host.backend.names().agent(&host.team, "long");
    assert!(
        !Command::new("docker").args(["inspect", &container]).output().unwrap().status.success(),
        "cancelled: gone"
    );
    host.wait_phase("next", AgentPhase::Succeeded).await;
    let mut logs = host.backend.agent_logs(&host.team, "next", false).await.unwrap();
    let mut text = Vec::new();
    while let Some(chunk) = futures::StreamExt::next(&mut logs).await {
        text.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8_lossy(&text), "done\n");
}

#[tokio::test]
async fn bad_agent_requests_are_refused_with_a_message_and_create_nothing() {
    let host = Host::new("bad", 1).await;
    let alice = Browser::signed_in(&host.portal, ALICE).await;
    let mut alice = alice;
    let csrf = alice.session_csrf(&host.portal).await;
    for (body, field, words) in [
        (
            json!({ "team": host.team, "image": IMAGE, "template": "python" }),
            "image",
            "exactly one of image or template",
        ),
        (
            json!({ "team": host.team, "image": IMAGE, "env": { "BAD NAME": "x" } }),
            "env",
            "not an environment variable name",
        ),
        (json!({ "team": host.team, "image": IMAGE, "name": "Bad_Name" }), "name", "not a valid CI agent name"),
        (json!({ "team": host.team, "image": IMAGE, "deadline": "soon" }), "deadline", "not a duration"),
        (json!({ "team": host.team, "image": IMAGE, "command": [] }), "command", "runs nothing"),
    ] {
        let reply = alice.api(&host.portal, Method::POST, "/api/v1/agents", Some(&csrf), Some(&body.to_string())).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}: {}", reply.body);
        let error = reply.json();
        assert!(error["error"].as_str().unwrap().contains(words), "{body}: {error}");
        assert_eq!(error["field"], field, "{body}: {error}");
    }
    let reply = alice.api(&host.portal, Method::POST, "/api/v1/agents", Some(&csrf), Some("{not json")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(host.backend.agents(&host.team).await.unwrap().is_empty(), "nothing was created");
}
