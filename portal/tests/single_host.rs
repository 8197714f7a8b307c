//! Single-host mode against the real Docker Engine and the real desktop image
//! (`deskpod/desktop-python:latest`, built by `deskpod-images build`): a workspace is a container
//! whose desktop answers, whose home survives stop and start, and which leaves nothing behind when
//! deleted; the team's memory budget refuses what would exceed it and starts nothing; the
//! reconciler brings back what a crash lost and removes what nobody wants. That no desktop reaches
//! another is `isolation_single_host.rs`.
//!
//! Each test makes teams of its own (`sh<pid>-<n>-<what>`) and removes their containers, volumes
//! and network when it ends, also when it fails.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use deskpod_controller::api::{TeamMember, TeamQuota, TeamRole, TeamSpec, WorkspaceTemplateSpec};
use deskpod_portal::backend::docker::container::Names;
use deskpod_portal::backend::docker::{DockerBackend, desktop_template};
use deskpod_portal::backend::{Backend, BackendError, NewWorkspace, Phase};
use deskpod_portal::store::SqliteStore;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

const IMAGE: &str = "deskpod/desktop-python:latest";
const OWNER: &str = "ada@example.com";
/// From create or start to a desktop that answers, with the image present (about a second here).
const RUNNING_WITHIN: Duration = Duration::from_secs(60);

/// Teams of one test on the real engine, cleaned up when dropped.
struct Host {
    backend: Arc<DockerBackend>,
    store: SqliteStore,
    /// The backend's names of containers, volumes and networks.
    names: Names,
    teams: Vec<String>,
}

impl Host {
    /// A backend on a fresh database with a `python` template (1 CPU, 1Gi).
    async fn new() -> Self {
        let store = SqliteStore::open_in_memory().unwrap();
        let backend = DockerBackend::connect(store.clone()).await.expect("a Docker Engine (images/setup-docker)");
        backend.put_template("python", python_template()).await.unwrap();
        let names = backend.names().clone();
        Self { backend: Arc::new(backend), store, names, teams: vec![] }
    }

    /// A team of its own with `memory` as its budget, `OWNER` its engineer.
    async fn team(&mut self, what: &str, memory: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("sh{}-{}-{what}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let spec = TeamSpec {
            quota: TeamQuota { memory: Some(Quantity(memory.into())), workspaces: Some(5), ..TeamQuota::default() },
            members: vec![TeamMember { user: OWNER.into(), role: TeamRole::Engineer, expires_at: None }],
            ..TeamSpec::default()
        };
        self.backend.put_team(&name, spec).await.unwrap();
        self.teams.push(name.clone());
        name
    }

    async fn create(&self, team: &str, name: &str, template: &str) -> Result<(), BackendError> {
        let new = NewWorkspace { team: team.into(), name: name.into(), owner: OWNER.into(), template: template.into() };
        self.backend.create_workspace(new).await.map(drop)
    }

    /// Waits until the workspace shows `phase`; panics with what it showed otherwise.
    async fn wait_phase(&self, team: &str, name: &str, phase: Phase) -> Duration {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < RUNNING_WITHIN {
            let view = self.backend.workspace(team, name).await.unwrap();
            if view.as_ref().is_some_and(|v| v.phase == phase) {
                return started.elapsed();
            }
            last = view.map(|v| (v.phase, v.message));
            // A condition poll: the loop ends as soon as the phase shows.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{team}/{name} did not reach {phase:?} within {RUNNING_WITHIN:?}; last: {last:?}");
    }

    /// The desktop's address, from the backend.
    async fn address(&self, team: &str, name: &str) -> std::net::SocketAddr {
        self.backend.desktop(team, name).await.unwrap().expect("a running desktop").address
    }
}

/// The `python` template: the Python desktop with 1 CPU and 1Gi.
fn python_template() -> WorkspaceTemplateSpec {
    desktop_template("Python", IMAGE, "1", "1Gi", "256Mi")
}

impl Drop for Host {
    fn drop(&mut self) {
        for team in &self.teams {
            let label = format!("label=deskpod.io/team={team}");
            let containers = docker(&["ps", "-aq", "--filter", &label]);
            for id in containers.split_whitespace() {
                docker(&["rm", "-f", id]);
            }
            let volumes = docker(&["volume", "ls", "-q", "--filter", &label]);
            for volume in volumes.split_whitespace() {
                docker(&["volume", "rm", "-f", volume]);
            }
            docker(&["network", "rm", &self.names.network(team)]);
        }
    }
}

/// Runs the docker CLI; its standard output.
fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("the docker CLI");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn exists(kind: &str, name: &str) -> bool {
    Command::new("docker").args([kind, "inspect", name]).output().unwrap().status.success()
}

/// Runs `script` in a workspace's desktop as its user; exit code and output.
fn exec(host: &Host, team: &str, name: &str, script: &str) -> (i32, String) {
    let output = Command::new("docker")
        .args(["exec", "-u", "1000", &host.names.container(team, name), "sh", "-c", script])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn a_desktop_answers_keeps_its_home_across_stop_and_start_and_delete_leaves_nothing() {
    let mut host = Host::new().await;
    let team = host.team("life", "4Gi").await;
    host.create(&team, "dev", "python").await.unwrap();
    let took = host.wait_phase(&team, "dev", Phase::Running).await;
    println!("create → Running: {:.2}s", took.as_secs_f64());
    let address = host.address(&team, "dev").await;
    let url = format!("ws://{address}/websockify");
    assert_eq!(deskpod_images::probe::read_rfb_banner(&url).await.unwrap(), "RFB 003.008\n");

    // Limits and privileges as promised.
    let inspect = docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.CapDrop}} {{.Config.User}} {{.HostConfig.Privileged}}",
        &host.names.container(&team, "dev"),
    ]);
    assert_eq!(inspect.trim(), format!("{} 1000000000 [ALL] 1000:1000 false", 1u64 << 30));

    let (code, output) = exec(&host, &team, "dev", "echo kept > /home/user/proof.txt && id -u");
    assert_eq!((code, output.trim()), (0, "1000"), "writing in the home failed: {output}");

    host.backend.set_running(&team, "dev", false).await.unwrap();
    assert!(!exists("container", &host.names.container(&team, "dev")), "stop leaves no container");
    assert!(exists("volume", &host.names.volume(&team, "dev")), "stop keeps the home volume");
    assert_eq!(host.backend.workspace(&team, "dev").await.unwrap().unwrap().phase, Phase::Stopped);
    assert!(host.backend.desktop(&team, "dev").await.unwrap().is_none());

    host.backend.set_running(&team, "dev", true).await.unwrap();
    host.wait_phase(&team, "dev", Phase::Running).await;
    let (code, output) = exec(&host, &team, "dev", "cat /home/user/proof.txt");
    assert_eq!((code, output.trim()), (0, "kept"), "the home did not survive stop and start");

    host.backend.delete_workspace(&team, "dev").await.unwrap();
    assert!(!exists("container", &host.names.container(&team, "dev")));
    assert!(!exists("volume", &host.names.volume(&team, "dev")), "delete removes the home volume");
    assert!(host.backend.workspace(&team, "dev").await.unwrap().is_none());
}

#[tokio::test]
async fn a_workspace_beyond_the_memory_budget_is_refused_and_nothing_is_started() {
    let mut host = Host::new().await;
    // Room for one desktop of 1Gi, not two.
    let team = host.team("quota", "1536Mi").await;
    host.create(&team, "first", "python").await.unwrap();
    let refused = host.create(&team, "second", "python").await.unwrap_err();
    let BackendError::Invalid(message) = refused else { panic!("not a refusal: {refused:?}") };
    assert_eq!(
        message,
        format!(
            "this workspace needs 1Gi of memory, but team {team}'s memory budget is 1536Mi and running \
             workspaces use 1Gi; stop one, or ask an admin for a larger quota"
        )
    );
    assert!(!exists("container", &host.names.container(&team, "second")));
    assert!(!exists("volume", &host.names.volume(&team, "second")));
    assert!(host.backend.workspace(&team, "second").await.unwrap().is_none());
    let view = host.backend.team(&team).await.unwrap().unwrap();
    assert_eq!(
        (view.quota["limits.memory"].used.as_str(), view.quota["limits.memory"].hard.as_str()),
        ("1Gi", "1536Mi")
    );

    // Stopping the first frees its share.
    host.backend.set_running(&team, "first", false).await.unwrap();
    host.create(&team, "second", "python").await.unwrap();
    // ... and the first cannot start again while the second runs.
    let refused = host.backend.set_running(&team, "first", true).await.unwrap_err();
    assert!(refused.to_string().contains("memory budget is 1536Mi"), "{refused}");
    assert!(!exists("container", &host.names.container(&team, "first")));
}

#[tokio::test]
async fn bad_names_and_unknown_templates_are_refused_and_create_nothing() {
    let mut host = Host::new().await;
    let team = host.team("input", "4Gi").await;
    for (name, template, expected) in [
        ("Dev", "python", "is not a valid workspace name"),
        (&"a".repeat(41) as &str, "python", "at most 40"),
        ("dev", "cobol", "template \"cobol\" does not exist; the catalog lists those that do"),
    ] {
        let refused = host.create(&team, name, template).await.unwrap_err();
        assert!(matches!(&refused, BackendError::Invalid(m) if m.contains(expected)), "{name}/{template}: {refused:?}");
    }
    let refused = host.create("no-such-team", "dev", "python").await.unwrap_err();
    assert!(matches!(refused, BackendError::NotFound(_)), "{refused:?}");
    // A template whose image was never built here: said so, and nothing is left behind.
    let mut unbuilt = python_template();
    unbuilt.image = "deskpod/never-built:latest".into();
    host.backend.put_template("unbuilt", unbuilt).await.unwrap();
    let refused = host.create(&team, "dev", "unbuilt").await.unwrap_err();
    assert!(refused.to_string().contains("deskpod/never-built:latest is not on this host"), "{refused:?}");
    assert!(!exists("volume", &host.names.volume(&team, "dev")));
    assert!(host.backend.workspaces(&team, None).await.unwrap().is_empty());
    assert_eq!(docker(&["ps", "-aq", "--filter", &format!("label=deskpod.io/team={team}")]).trim(), "");
}

#[tokio::test]
async fn after_a_crash_the_reconciler_restores_the_desktop_and_removes_strangers() {
    let mut host = Host::new().await;
    let team = host.team("crash", "4Gi").await;
    host.create(&team, "dev", "python").await.unwrap();
    host.wait_phase(&team, "dev", Phase::Running).await;
    exec(&host, &team, "dev", "echo kept > /home/user/proof.txt");

    // The portal goes away and its container with it; a container nobody asked for appears.
    drop(std::mem::replace(&mut host.backend, Arc::new(DockerBackend::connect(host.store.clone()).await.unwrap())));
    docker(&["rm", "-f", &host.names.container(&team, "dev")]);
    let stranger = host.names.container(&team, "ghost");
    let instance = format!("deskpod.io/instance={}", host.names.instance());
    let labels = [instance.as_str(), &format!("deskpod.io/team={team}"), "deskpod.io/workspace=ghost"];
    let mut args = vec!["create", "--name", stranger.as_str()];
    for label in &labels {
        args.extend(["--label", label]);
    }
    args.push(IMAGE);
    docker(&args);
    assert!(exists("container", &stranger));

    host.backend.reconcile_now().await;
    assert!(!exists("container", &stranger), "the reconciler removes a container no workspace wants");
    host.wait_phase(&team, "dev", Phase::Running).await;
    let (code, output) = exec(&host, &team, "dev", "cat /home/user/proof.txt");
    assert_eq!((code, output.trim()), (0, "kept"), "the restored desktop has its home");
    let containers = docker(&["ps", "-aq", "--filter", &format!("label=deskpod.io/team={team}")]);
    assert_eq!(containers.split_whitespace().count(), 1, "exactly one desktop");
}

#[tokio::test]
async fn a_portal_leaves_the_containers_of_another_portal_on_the_same_engine_alone() {
    let mut host = Host::new().await;
    let team = host.team("shared", "4Gi").await;
    host.create(&team, "dev", "python").await.unwrap();
    // A second portal, with a database of its own, on the same engine.
    let other = Host::new().await;
    assert_ne!(other.names.instance(), host.names.instance());
    other.backend.reconcile_now().await;
    assert!(exists("container", &host.names.container(&team, "dev")), "the other portal removed a desktop");
    host.wait_phase(&team, "dev", Phase::Running).await;
}
