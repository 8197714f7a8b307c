//! Test support: a real Kubernetes control plane for Deskpod's integration tests.
//!
//! [`TestCluster::shared`] gives every test in a test binary the same cluster:
//! - with `DESKPOD_TEST_CLUSTER=<dir>` set (as `tests/run` does), the cluster already running
//!   in `<dir>` (started by `testcluster up`) is used;
//! - otherwise one is started for this test binary with the Go harness in `tests/cluster`
//!   (built once and cached), and it is torn down when the test binary exits: the harness
//!   watches the stdin pipe we hold and stops every process it started when the pipe closes,
//!   which also covers a crashed or killed test binary.
//!
//! Each test then gets its own namespace ([`TestCluster::namespace`]) and its own
//! `kube::Client` (clients are bound to the tokio runtime that made them, and every
//! `#[tokio::test]` has its own runtime).
#![forbid(unsafe_code)]

pub mod helm;
pub mod traefik;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{Condition, await_condition};
use kube::{Client, Config, Resource};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Environment variable naming the directory of an already running test cluster.
pub const CLUSTER_ENV: &str = "DESKPOD_TEST_CLUSTER";
/// Environment variable naming a prebuilt `testcluster` binary.
pub const HARNESS_BIN_ENV: &str = "DESKPOD_TESTCLUSTER_BIN";
/// Label put on every namespace a test creates, so a long-lived dev cluster can be swept.
pub const TEST_NAMESPACE_LABEL: &str = "deskpod.io/test";
/// Field manager the test support uses for server-side apply.
const FIELD_MANAGER: &str = "deskpod-tests";

/// What can go wrong while starting or using the test cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the testcluster harness failed: {0}")]
    BuildHarness(String),
    #[error("starting the test cluster failed: {0}")]
    StartCluster(String),
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig { path: PathBuf, source: kube::config::KubeconfigError },
    #[error("kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("parsing CRD file {path}: {source}")]
    CrdYaml { path: PathBuf, source: serde_yaml_ng::Error },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("minting a kubeconfig for user {0} failed: {1}")]
    MintUser(String, String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The line `testcluster up` prints on stdout once the cluster is ready.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadyLine {
    kubeconfig: PathBuf,
    server: String,
    dir: PathBuf,
    version: String,
}

/// A running test cluster.
#[derive(Debug)]
pub struct TestCluster {
    /// Admin kubeconfig (client certificate in `system:masters`).
    pub kubeconfig: PathBuf,
    /// The API server's URL, always on 127.0.0.1.
    pub server: String,
    /// The cluster's state directory (pki, logs, pids.json).
    pub dir: PathBuf,
    /// Kubernetes version the control plane reports.
    pub version: String,
    /// The harness process when this test binary started the cluster itself. The shared cluster
    /// holds it until the test binary exits (the stdin pipe closes and the harness tears down);
    /// a private cluster is stopped when it is dropped (see the `Drop` impl).
    supervisor: Option<Mutex<(Child, BufReader<ChildStdout>)>>,
}

impl Drop for TestCluster {
    /// A cluster this value started (a private one; the shared one is never dropped) is stopped
    /// here, and waited for: its harness sees stdin close and deletes the real node's pods, stops
    /// every process and removes what it set up on the host. So nothing of it outlives the test
    /// (about 1 s without a real node; up to 40 s with one, while its pods are drained).
    fn drop(&mut self) {
        let Some(supervisor) = self.supervisor.take() else { return };
        let (mut child, _) = supervisor.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        drop(child.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                _ => {
                    eprintln!("the test cluster in {} did not stop within 120 s", self.dir.display());
                    return;
                }
            }
        }
    }
}

static SHARED: OnceLock<TestCluster> = OnceLock::new();
static CRDS_INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

impl TestCluster {
    /// The cluster shared by all tests of this test binary, started on first use.
    ///
    /// Panics with the harness's own message when no cluster can be had: a test that needs
    /// Kubernetes cannot do anything useful without one.
    pub fn shared() -> &'static TestCluster {
        SHARED.get_or_init(|| match std::env::var_os(CLUSTER_ENV) {
            Some(dir) => Self::join(Path::new(&dir)).unwrap_or_else(|e| panic!("{e}")),
            None => Self::start(&[]).unwrap_or_else(|e| panic!("{e}")),
        })
    }

    /// Uses a cluster started elsewhere (`testcluster up --dir <dir>`).
    fn join(dir: &Path) -> Result<TestCluster> {
        let kubeconfig = dir.join("kubeconfig");
        let config = Kubeconfig::read_from(&kubeconfig)
            .map_err(|source| Error::Kubeconfig { path: kubeconfig.clone(), source })?;
        let server =
            config.clusters.first().and_then(|c| c.cluster.as_ref()).and_then(|c| c.server.clone()).unwrap_or_default();
        Ok(TestCluster { kubeconfig, server, dir: dir.to_path_buf(), version: String::new(), supervisor: None })
    }

    /// Starts a cluster of its own for one test, beside the shared one (a second cluster, such as
    /// a member cluster). It is torn down when the returned value is dropped, which waits until
    /// the harness is done, or when the test binary exits. Deskpod's CRDs are not installed on it.
    pub fn start_private() -> Result<TestCluster> {
        Self::start(&[])
    }

    /// Like [`Self::start_private`], with a real node (`up --real-node`; needs root, see
    /// tests/cluster/README.md) into which the local Docker `images` are imported.
    pub fn start_private_with_real_node(images: &[&str]) -> Result<TestCluster> {
        let mut args = vec!["--real-node"];
        for image in images {
            args.extend(["--import-image", image]);
        }
        Self::start(&args)
    }

    /// An admin client for this cluster, without installing anything (unlike [`Self::client`]).
    pub async fn admin_client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Stops this cluster's API server (killed, as in a crash) and returns once it has exited;
    /// everything else keeps running. See `testcluster apiserver`.
    pub fn stop_api_server(&self) -> Result<()> {
        self.api_server("stop")
    }

    /// Starts this cluster's API server again (same port, certificates and etcd) and returns
    /// once it is ready.
    pub fn start_api_server(&self) -> Result<()> {
        self.api_server("start")
    }

    fn api_server(&self, action: &str) -> Result<()> {
        let output = Command::new(harness_binary()?)
            .args(["apiserver", "--dir"])
            .arg(&self.dir)
            .arg(action)
            .output()
            .map_err(|e| Error::StartCluster(format!("running testcluster apiserver {action}: {e}")))?;
        if !output.status.success() {
            return Err(Error::StartCluster(format!(
                "testcluster apiserver {action}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Starts a cluster for this test binary.
    fn start(args: &[&str]) -> Result<TestCluster> {
        let harness = harness_binary()?;
        let log_path = target_dir().join("testcluster").join(format!("up-{}.log", std::process::id()));
        let log = std::fs::File::create(&log_path).map_err(|source| Error::Io { path: log_path.clone(), source })?;
        let mut child = Command::new(&harness)
            .arg("up")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::StartCluster(format!("running {}: {e}", harness.display())))?;
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let ready: ReadyLine = match read {
            Ok(n) if n > 0 => serde_json::from_str(&line)
                .map_err(|e| Error::StartCluster(format!("unexpected output {line:?}: {e}")))?,
            _ => {
                let _ = child.wait();
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(30).collect();
                return Err(Error::StartCluster(format!(
                    "the harness exited before the cluster was ready; last lines of {}:\n{}",
                    log_path.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
        };
        Ok(TestCluster {
            kubeconfig: ready.kubeconfig,
            server: ready.server,
            dir: ready.dir,
            version: ready.version,
            supervisor: Some(Mutex::new((child, stdout))),
        })
    }

    /// A client acting as cluster admin, with Deskpod's CRDs installed and established.
    pub async fn client(&self) -> Result<Client> {
        let client = client_from_kubeconfig(&self.kubeconfig).await?;
        CRDS_INSTALLED.get_or_try_init(|| install_crds(client.clone())).await?;
        Ok(client)
    }

    /// A fresh namespace for one test, named `<prefix>-<random>`.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        let client = self.client().await?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                labels: Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = namespaces.create(&PostParams::default(), &ns).await?;
        Ok(TestNamespace { name: created.metadata.name.expect("the API server names generated objects"), client })
    }

    /// A kubeconfig for a non-admin user authenticated by a client certificate, for RBAC tests.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let users = self.dir.join("users");
        std::fs::create_dir_all(&users).map_err(|source| Error::Io { path: users.clone(), source })?;
        let out = users.join(format!("{user}.kubeconfig"));
        let mut cmd = Command::new(harness_binary()?);
        cmd.args(["kubeconfig", "--dir"]).arg(&self.dir).args(["--user", user]).arg("--out").arg(&out);
        for g in groups {
            cmd.args(["--group", g]);
        }
        let output = cmd.output().map_err(|e| Error::MintUser(user.into(), e.to_string()))?;
        if !output.status.success() {
            return Err(Error::MintUser(user.into(), String::from_utf8_lossy(&output.stderr).into_owned()));
        }
        Ok(out)
    }
}

/// A namespace that belongs to one test, and an admin client.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
}

impl TestNamespace {
    /// A namespaced API in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

/// A client for the given kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let kubeconfig =
        Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig { path: path.to_path_buf(), source })?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| Error::Kubeconfig { path: path.to_path_buf(), source })?;
    Ok(Client::try_from(config)?)
}

/// Waits until `cond` holds for the named object, or fails after `timeout` saying what it
/// waited for. Watch-based: no polling, returns as soon as the API server reports the change.
/// For conditions an existing object meets; use [`wait_deleted`] to wait for deletion.
pub async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, timeout: Duration, cond: impl Condition<K>) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(obj))) => Ok(obj),
        Ok(Ok(None)) => Err(Error::Timeout(timeout, format!("{what}: {name} was deleted"))),
        Ok(Err(e)) => Err(Error::Timeout(timeout, format!("{what}: watch failed: {e}"))),
        Err(_) => Err(Error::Timeout(timeout, format!("{what} ({name})"))),
    }
}

/// Waits until the named object no longer exists.
pub async fn wait_deleted<K>(api: &Api<K>, name: &str, what: &str, timeout: Duration) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, |o: Option<&K>| o.is_none())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Error::Timeout(timeout, format!("{what}: watch failed: {e}"))),
        Err(_) => Err(Error::Timeout(timeout, format!("{what} ({name})"))),
    }
}

/// The repository root (this crate lives in `tests/support`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root exists")
}

fn target_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let _ = std::fs::create_dir_all(dir.join("testcluster"));
    dir
}

/// The `testcluster` binary: `DESKPOD_TESTCLUSTER_BIN`, or built from `tests/cluster` (Go caches
/// the build, so this is quick after the first time).
fn harness_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os(HARNESS_BIN_ENV) {
        return Ok(PathBuf::from(bin));
    }
    let out = target_dir().join("testcluster").join("testcluster");
    let output = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg("./cmd/testcluster")
        .current_dir(repo_root().join("tests/cluster"))
        .output()
        .map_err(|e| Error::BuildHarness(format!("running go: {e}")))?;
    if !output.status.success() {
        return Err(Error::BuildHarness(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    Ok(out)
}

/// Applies the CRDs committed under `charts/deskpod/crds` (what the chart installs) and waits
/// until the API server serves them.
async fn install_crds(client: Client) -> Result<()> {
    let dir = repo_root().join("charts/deskpod/crds");
    let entries = std::fs::read_dir(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(|source| Error::Io { path: dir.clone(), source })?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            paths.push(path);
        }
    }
    install_crd_files(client, &paths).await
}

/// Applies CRD files and waits until the API server serves them.
async fn install_crd_files(client: Client, paths: &[PathBuf]) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let mut names = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.clone(), source })?;
        let crd: CustomResourceDefinition =
            serde_yaml_ng::from_str(&text).map_err(|source| Error::CrdYaml { path: path.clone(), source })?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd)).await?;
        names.push(name);
    }
    for name in names {
        wait_for(&api, &name, "CRD established", Duration::from_secs(30), crd_established).await?;
    }
    Ok(())
}

/// The Gateway API release whose CRDs [`install_gateway_api_crds`] installs.
pub const GATEWAY_API_VERSION: &str = "v1.4.0";

/// Installs the Gateway API's HTTPRoute CRD (standard channel), as a cluster with a Gateway
/// implementation has it. The CRD comes from the `sigs.k8s.io/gateway-api` Go module, fetched
/// through the Go module proxy like the rest of the test cluster.
pub async fn install_gateway_api_crds(client: Client) -> Result<()> {
    let module = format!("sigs.k8s.io/gateway-api@{GATEWAY_API_VERSION}");
    let output = Command::new("go")
        .args(["mod", "download", "-json", &module])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| Error::Io { path: "go".into(), source })?;
    #[derive(Deserialize)]
    struct Download {
        #[serde(rename = "Dir")]
        dir: PathBuf,
    }
    let download: Download = serde_json::from_slice(&output.stdout)
        .map_err(|e| Error::StartCluster(format!("`go mod download {module}` printed no module directory: {e}")))?;
    let crd = download.dir.join("config/crd/standard/gateway.networking.k8s.io_httproutes.yaml");
    install_crd_files(client, &[crd]).await
}

/// Every request a [`recording_client`] sent, as (method, path and query).
#[derive(Clone, Default)]
pub struct RequestLog(std::sync::Arc<Mutex<Vec<(http::Method, String)>>>);

impl RequestLog {
    fn record<B>(&self, request: &http::Request<B>) {
        let path = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
        self.0.lock().expect("request log").push((request.method().clone(), path));
    }

    /// How many requests were sent so far; a mark for [`RequestLog::writes_since`].
    pub fn len(&self) -> usize {
        self.0.lock().expect("request log").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The writes (anything but GET) sent after `mark` whose path contains `fragment`, as
    /// `METHOD path` lines.
    pub fn writes_since(&self, mark: usize, fragment: &str) -> Vec<String> {
        self.since(mark, |method, path| method != http::Method::GET && path.contains(fragment))
    }

    /// Every request sent after `mark` whose path contains `fragment`, as `METHOD path` lines.
    pub fn requests_since(&self, mark: usize, fragment: &str) -> Vec<String> {
        self.since(mark, |_, path| path.contains(fragment))
    }

    fn since(&self, mark: usize, keep: impl Fn(&http::Method, &str) -> bool) -> Vec<String> {
        let log = self.0.lock().expect("request log");
        log[mark..].iter().filter(|(m, p)| keep(m, p)).map(|(m, p)| format!("{m} {p}")).collect()
    }
}

/// A client for the user of `kubeconfig` that records every request it sends.
pub async fn recording_client(kubeconfig: &Path) -> Result<(Client, RequestLog)> {
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig).map_err(|source| Error::Kubeconfig { path: kubeconfig.into(), source })?,
        &KubeConfigOptions::default(),
    )
    .await
    .map_err(|source| Error::Kubeconfig { path: kubeconfig.into(), source })?;
    let log = RequestLog::default();
    let recorder = log.clone();
    let record = tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
        recorder.record(&request);
        request
    });
    let client = kube::client::ClientBuilder::try_from(config)?.with_layer(&record).build();
    Ok((client, log))
}

fn crd_established(crd: Option<&CustomResourceDefinition>) -> bool {
    crd.and_then(|c| c.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
}
