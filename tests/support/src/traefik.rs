//! Traefik, a real ingress controller, built from its Go module by
//! tests/cluster/components/traefik/build (cached in ~/.cache/deskpod) and run as a process on
//! 127.0.0.1: it reads the Ingresses of the given namespaces from the test cluster (its
//! `kubernetesIngress` provider, through the cluster's admin kubeconfig) and defines, from a file,
//! the `deskpod-auth@file` forward-auth middleware that asks the portal's `/auth/verify`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use crate::repo_root;

/// The middleware's name as Ingress annotations refer to it (the controller's
/// `--traefik-middleware`).
pub const AUTH_MIDDLEWARE: &str = "deskpod-auth@file";

/// The traefik binary, built once per version.
pub fn binary() -> &'static PathBuf {
    static TRAEFIK: OnceLock<PathBuf> = OnceLock::new();
    TRAEFIK.get_or_init(|| {
        let script = repo_root().join("tests/cluster/components/traefik/build");
        let output = Command::new(&script).output().expect("run tests/cluster/components/traefik/build");
        assert!(output.status.success(), "building Traefik failed:\n{}", String::from_utf8_lossy(&output.stderr));
        PathBuf::from(String::from_utf8(output.stdout).expect("a UTF-8 path").trim())
    })
}

/// A running Traefik, stopped (SIGKILL) when dropped. Its log is `<dir>/traefik.log`.
pub struct Traefik {
    /// Where its `web` entry point listens (plain HTTP).
    pub address: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Traefik {
    /// Starts Traefik in `dir` (its configuration and log go there), routing the Ingresses of
    /// `namespaces` in the cluster `kubeconfig` names, with forward auth to `verify_url`.
    pub fn start(dir: &Path, kubeconfig: &Path, namespaces: &[&str], verify_url: &str) -> Self {
        std::fs::create_dir_all(dir).expect("Traefik's directory");
        // The middleware: the portal answers 2xx (and names the user) or 401/403, which Traefik
        // sends to the browser as it is. Traefik sets X-Forwarded-Host/-Uri itself
        // (trustForwardHeader false: the client's own are replaced).
        let dynamic = dir.join("dynamic.yaml");
        let middleware = format!(
            "http:\n  middlewares:\n    deskpod-auth:\n      forwardAuth:\n        address: \"{verify_url}\"\n        \
             trustForwardHeader: false\n        authResponseHeaders: [\"X-Deskpod-User\"]\n"
        );
        std::fs::write(&dynamic, middleware).expect("write Traefik's dynamic configuration");
        let address = free_address();
        let log = dir.join("traefik.log");
        let child = Command::new(binary())
            .args([
                format!("--entryPoints.web.address={address}"),
                "--providers.kubernetesIngress=true".into(),
                format!("--providers.kubernetesIngress.namespaces={}", namespaces.join(",")),
                format!("--providers.file.filename={}", dynamic.display()),
                "--log.level=INFO".into(),
                format!("--log.filePath={}", log.display()),
                "--global.checkNewVersion=false".into(),
                "--global.sendAnonymousUsage=false".into(),
            ])
            .env_clear()
            .env("KUBECONFIG", kubeconfig)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start traefik");
        Self { address, child, log }
    }

    /// Traefik's log so far, for a failing assertion's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Traefik {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1 (bound, then released for Traefik to take).
fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address")
}
