//! Single-host network isolation, against the real Docker Engine and the real desktop image
//! (`deskpod/desktop-python:latest`): a desktop (or CI agent) cannot open a connection to any
//! other workspace's ports, of its own team or another, while it still reaches its own ports and
//! the host, and the portal (this process, on the host's network stack, at the addresses the
//! backend gives it; or a container on the host's network) reaches every desktop. A team network
//! made the old way (containers reach each other) is replaced when a portal starts, its desktops
//! kept running with their homes.
//!
//! Each test makes teams of its own (`iso<pid>-<n>-<what>`) and removes their containers,
//! volumes and network when it ends, also when it fails.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use deskpod_controller::api::{CiAgentSpec, TeamMember, TeamQuota, TeamRole, TeamSpec};
use deskpod_images::catalogue::desktop::VNC_PORT;
use deskpod_portal::backend::agent::{AgentPhase, NewAgent};
use deskpod_portal::backend::docker::container::{
    ICC_OPTION, INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, Names, TEAM_LABEL,
};
use deskpod_portal::backend::docker::{DockerBackend, desktop_template};
use deskpod_portal::backend::{Backend, NewWorkspace, Phase};
use deskpod_portal::store::SqliteStore;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

const IMAGE: &str = "deskpod/desktop-python:latest";
const OWNER: &str = "ada@example.com";
/// From create or start to a desktop that answers, with the image present (about a second here).
const WITHIN: Duration = Duration::from_secs(60);
/// The VNC server's own port inside a desktop (it listens on the loopback only).
const RFB_PORT: u16 = 5901;

/// Teams of one test on the real engine, cleaned up when dropped.
struct Host {
    backend: Arc<DockerBackend>,
    store: SqliteStore,
    names: Names,
    teams: Vec<String>,
}

impl Host {
    async fn new() -> Self {
        let store = SqliteStore::open_in_memory().unwrap();
        let backend = DockerBackend::connect(store.clone()).await.expect("a Docker Engine (images/setup-docker)");
        backend.put_template("python", desktop_template("Python", IMAGE, "1", "1Gi", "256Mi")).await.unwrap();
        let names = backend.names().clone();
        Self { backend: Arc::new(backend), store, names, teams: vec![] }
    }

    /// A team of its own, `OWNER` its engineer, room for a few desktops and one CI agent.
    async fn team(&mut self, what: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("iso{}-{}-{what}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let spec = TeamSpec {
            quota: TeamQuota {
                memory: Some(Quantity("4Gi".into())),
                workspaces: Some(5),
                ci_agents: Some(1),
                ..TeamQuota::default()
            },
            members: vec![TeamMember { user: OWNER.into(), role: TeamRole::Engineer, expires_at: None }],
            ..TeamSpec::default()
        };
        self.backend.put_team(&name, spec).await.unwrap();
        self.teams.push(name.clone());
        name
    }

    /// Creates the workspaces and waits until each desktop answers.
    async fn running(&self, workspaces: &[(&str, &str)]) {
        for (team, name) in workspaces {
            let new = NewWorkspace {
                team: (*team).into(),
                name: (*name).into(),
                owner: OWNER.into(),
                template: "python".into(),
            };
            self.backend.create_workspace(new).await.unwrap();
        }
        for (team, name) in workspaces {
            self.wait_running(team, name).await;
        }
    }

    async fn wait_running(&self, team: &str, name: &str) {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < WITHIN {
            let view = self.backend.workspace(team, name).await.unwrap();
            if view.as_ref().is_some_and(|v| v.phase == Phase::Running) {
                return;
            }
            last = view.map(|v| (v.phase, v.message));
            // A condition poll: the loop ends as soon as the phase shows.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{team}/{name} did not reach Running within {WITHIN:?}; last: {last:?}");
    }

    /// The desktop's websocket address, as the backend gives it to the portal's proxy.
    async fn address(&self, team: &str, name: &str) -> SocketAddr {
        self.backend.desktop(team, name).await.unwrap().expect("a running desktop").address
    }

    /// Whether a TCP connection from inside the desktop `team/name` (as its user) to `to` opens.
    fn connects_from(&self, team: &str, name: &str, to: SocketAddr) -> Result<(), String> {
        let container = self.names.container(team, name);
        let mut command = Command::new("docker");
        command.args(["exec", "-u", "1000", &container, "python3", "-c", PROBE, &to.ip().to_string()]);
        run_probe(command.arg(to.port().to_string()))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for team in &self.teams {
            let label = format!("label=deskpod.io/team={team}");
            for id in docker(&["ps", "-aq", "--filter", &label]).split_whitespace() {
                docker(&["rm", "-f", id]);
            }
            for volume in docker(&["volume", "ls", "-q", "--filter", &label]).split_whitespace() {
                docker(&["volume", "rm", "-f", volume]);
            }
            docker(&["network", "rm", &self.names.network(team)]);
        }
    }
}

/// A TCP connect with a timeout: exits 0 when the connection opens, 1 with the error otherwise.
const PROBE: &str = "import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
except OSError as e:
    sys.exit(repr(e))";

fn run_probe(command: &mut Command) -> Result<(), String> {
    let output = command.output().expect("the docker CLI");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
    }
}

/// Runs the docker CLI; its standard output.
fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("the docker CLI");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The team network's gateway: the host's own address on that bridge.
fn gateway(network: &str) -> IpAddr {
    let found = docker(&["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", network]);
    found.trim().parse().unwrap_or_else(|_| panic!("no gateway for {network}: {found:?}"))
}

/// The network's `enable_icc` option, as the engine has it (empty when unset or when there is no
/// such network).
fn icc(network: &str) -> String {
    docker(&["network", "inspect", "-f", &format!("{{{{index .Options \"{ICC_OPTION}\"}}}}"), network])
        .trim()
        .to_owned()
}

/// A listener on the host at `ip`, kept open while the test runs: something outside the desktops'
/// network a desktop must still reach (the kernel completes the handshake; nothing is accepted).
async fn host_listener(ip: IpAddr) -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

/// The portal's own path to a desktop: a TCP connection, then the RFB banner over the websocket.
async fn portal_reaches(address: SocketAddr) {
    let url = format!("ws://{address}/websockify");
    let banner = tokio::time::timeout(Duration::from_secs(10), deskpod_images::probe::read_rfb_banner(&url))
        .await
        .unwrap_or_else(|_| panic!("the portal got no banner from {address} within 10 s"));
    assert_eq!(banner.unwrap(), "RFB 003.008\n", "from {address}");
}

#[tokio::test]
async fn a_desktop_reaches_no_other_workspace_while_the_portal_reaches_all() {
    let mut host = Host::new().await;
    let team = host.team("one").await;
    let other = host.team("two").await;
    host.running(&[(&team, "a"), (&team, "b"), (&other, "c")]).await;
    let a = host.address(&team, "a").await;
    let b = host.address(&team, "b").await;
    let c = host.address(&other, "c").await;
    assert_eq!(a.port(), VNC_PORT);

    // What a desktop still reaches: its own ports, and the host beyond its network (the probe
    // does see a connection that leaves the container).
    host.connects_from(&team, "a", a).expect("a desktop reaches its own websocket at its address");
    host.connects_from(&team, "a", SocketAddr::from(([127, 0, 0, 1], RFB_PORT))).expect("its own VNC server");
    let (_listener, outside) = host_listener(gateway(&host.names.network(&team))).await;
    host.connects_from(&team, "a", outside).expect("a desktop reaches the host outside its network");

    // No other workspace's ports: the same team's or another team's, websocket or VNC.
    for (from, to, whose) in [("a", b, "the same team's"), ("a", c, "another team's"), ("b", a, "the same team's")] {
        for port in [VNC_PORT, RFB_PORT] {
            let to = SocketAddr::new(to.ip(), port);
            let reached = host.connects_from(&team, from, to);
            assert!(reached.is_err(), "desktop {from} of {team} reached {whose} desktop at {to}");
        }
    }
    let reached = host.connects_from(&other, "c", a);
    assert!(reached.is_err(), "desktop c of {other} reached desktop a of {team} at {a}");

    // The portal reaches every desktop: as a host process (this test) ...
    for address in [a, b, c] {
        portal_reaches(address).await;
    }
    // ... and as a container on the host's network.
    for address in [a, b, c] {
        let mut command = Command::new("docker");
        command.args(["run", "--rm", "--network", "host", "--entrypoint", "python3", IMAGE, "-c", PROBE]);
        run_probe(command.args([address.ip().to_string(), address.port().to_string()]))
            .unwrap_or_else(|e| panic!("a container on the host's network did not reach {address}: {e}"));
    }
}

#[tokio::test]
async fn a_ci_agent_reaches_the_outside_but_no_desktop_of_its_team() {
    let mut host = Host::new().await;
    let team = host.team("agent").await;
    host.running(&[(&team, "a")]).await;
    let a = host.address(&team, "a").await;
    let (_listener, outside) = host_listener(gateway(&host.names.network(&team))).await;
    // Exit code 0 only when the host answers and the desktop does not; otherwise it says which.
    let script = format!(
        "import socket, sys
def opens(ip, port):
    try:
        socket.create_connection((ip, port), timeout=3).close()
        return True
    except OSError:
        return False
outside = opens('{}', {})
desktop = opens('{}', {})
sys.exit(0 if outside and not desktop else 10 + 2 * desktop + (not outside))",
        outside.ip(),
        outside.port(),
        a.ip(),
        a.port()
    );
    let spec = CiAgentSpec {
        image: Some(IMAGE.into()),
        template: None,
        command: Some(vec!["python3".into(), "-c".into(), script]),
        args: vec![],
        env: vec![],
        jenkins: None,
        resources: None,
        deadline: None,
        ttl_after_finished: None,
    };
    let new = NewAgent { team: team.clone(), name: "probe".into(), owner: OWNER.into(), spec };
    host.backend.create_agent(new).await.unwrap();
    let started = Instant::now();
    let agent = loop {
        let agent = host.backend.agent(&team, "probe").await.unwrap().expect("the agent");
        if matches!(agent.phase, AgentPhase::Succeeded | AgentPhase::Failed | AgentPhase::TimedOut) {
            break agent;
        }
        assert!(started.elapsed() < WITHIN, "the agent did not finish within {WITHIN:?}: {agent:?}");
        // A condition poll: the loop ends as soon as the job ends.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // 11: the host did not answer; 12: it reached the desktop (13: both).
    assert_eq!(agent.exit_code, Some(0), "{agent:?}");
}

#[tokio::test]
async fn a_team_network_made_the_old_way_is_replaced_and_its_desktops_keep_running_with_their_homes() {
    let mut host = Host::new().await;
    let team = host.team("old").await;
    host.running(&[(&team, "a"), (&team, "b")]).await;
    let network = host.names.network(&team);
    assert_eq!(icc(&network), "false");
    let container = |name: &str| host.names.container(&team, name);
    // A container, and when it last started: the same after the replacement if it kept running.
    let id =
        |name: &str| docker(&["inspect", "-f", "{{.Id}} {{.State.StartedAt}}", &container(name)]).trim().to_owned();
    let ids = (id("a"), id("b"));
    let wrote =
        docker(&["exec", "-u", "1000", &container("a"), "sh", "-c", "echo kept > /home/user/proof.txt && echo ok"]);
    assert_eq!(wrote.trim(), "ok");

    // The portal goes away (one with a database of its own, which leaves these containers alone,
    // stands in), and the team's network becomes what an older portal made: the same name and
    // labels, its containers allowed to reach each other.
    let store = host.store.clone();
    host.backend = Arc::new(DockerBackend::connect(SqliteStore::open_in_memory().unwrap()).await.unwrap());
    for name in ["a", "b"] {
        docker(&["network", "disconnect", "-f", &network, &container(name)]);
    }
    docker(&["network", "rm", &network]);
    let labels = [
        format!("{MANAGED_BY_LABEL}={MANAGED_BY}"),
        format!("{INSTANCE_LABEL}={}", host.names.instance()),
        format!("{TEAM_LABEL}={team}"),
    ];
    let mut args = vec!["network", "create", "--driver", "bridge"];
    for label in &labels {
        args.extend(["--label", label.as_str()]);
    }
    args.push(&network);
    docker(&args);
    for name in ["a", "b"] {
        docker(&["network", "connect", &network, &container(name)]);
    }
    assert_ne!(icc(&network), "false", "the old network allows inter-container traffic");
    let ip = |name: &str| -> IpAddr {
        let found = docker(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
            &container(name),
        ]);
        found.trim().parse().unwrap_or_else(|_| panic!("no address of {name} on {network}: {found:?}"))
    };
    let old_b = SocketAddr::new(ip("b"), VNC_PORT);
    host.connects_from(&team, "a", old_b).expect("on the old network a desktop reaches another (the probe sees it)");

    // A portal starts on the database: its reconciler replaces the network.
    host.backend = Arc::new(DockerBackend::connect(store).await.unwrap());
    let started = Instant::now();
    while icc(&network) != "false" {
        assert!(started.elapsed() < WITHIN, "the team network was not replaced within {WITHIN:?}");
        // A condition poll on the engine's state.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.wait_running(&team, "a").await;
    host.wait_running(&team, "b").await;
    let a = host.address(&team, "a").await;
    let b = host.address(&team, "b").await;

    assert_eq!((id("a"), id("b")), ids, "the desktops kept running in their containers, never restarted");
    let home = docker(&["exec", "-u", "1000", &container("a"), "cat", "/home/user/proof.txt"]);
    assert_eq!(home.trim(), "kept", "the home is untouched");
    let reached = host.connects_from(&team, "a", b);
    assert!(reached.is_err(), "after the replacement desktop a still reaches desktop b at {b}");
    portal_reaches(a).await;
    portal_reaches(b).await;
}
