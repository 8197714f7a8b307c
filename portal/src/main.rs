//! `deskpod-portal`: serves the Deskpod web portal.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use deskpod_portal::account::{self, AdminBootstrap};
use deskpod_portal::audit::{self, AuditRetention};
use deskpod_portal::auth::oidc::{self, OidcArgs, OidcClient};
use deskpod_portal::backend::docker::DockerBackend;
use deskpod_portal::backend::invite::BackendInviteHook;
use deskpod_portal::backend::kubernetes::{KubernetesBackend, KubernetesOptions};
use deskpod_portal::config::{IpNet, TrustedProxies};
use deskpod_portal::http::desktop::NovncDir;
use deskpod_portal::http::desktop::verify::{ForwardAuthSettings, ForwardedHeaders, RouteMode};
use deskpod_portal::serve::Limits;
use deskpod_portal::{AppState, Config, Keys, PublicUrl, SqliteStore, StaticMemberships};

const ENVIRONMENT_HELP: &str = "\
Secrets are read from the environment only, never from flags:
  DESKPOD_JWT_KEY         session signing key, at least 32 bytes. Unset: one is generated on first
                          start and kept in the database.
  DESKPOD_ADMIN_PASSWORD  password of the first admin, used only when no admin exists. Unset: a
                          password is generated and printed once to standard output.
  DESKPOD_OIDC_CLIENT_SECRET
                          the portal's client secret at the OpenID Connect provider, with
                          --oidc-issuer. Unset: a public client (PKCE only).";

#[derive(Parser)]
#[command(name = "deskpod-portal", version, about = "Deskpod's web portal", after_help = ENVIRONMENT_HELP)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "DESKPOD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Address of the Prometheus metrics listener (`/metrics`), apart from the portal's routes and
    /// without authentication: bind it where only the scraper reaches it, such as 127.0.0.1:9090
    /// or the pod's address behind a NetworkPolicy. Unset: no metrics listener.
    #[arg(long, env = "DESKPOD_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,

    /// SQLite database holding users, password hashes, API tokens, invites, the audit log and the
    /// generated session signing key. A relative path is relative to the working directory; the
    /// file is created (mode 0600) on first start. `:memory:` keeps everything in memory only.
    #[arg(long, env = "DESKPOD_DATABASE", default_value = "./deskpod.db")]
    database: PathBuf,

    /// Where users reach the portal; used in invite links. Cookies are `Secure` unless this is
    /// plain http on localhost, 127.0.0.1 or [::1].
    #[arg(long, env = "DESKPOD_PUBLIC_URL", default_value = "http://127.0.0.1:8080")]
    public_url: String,

    /// How long a sign-in lasts, e.g. 12h, 90m or 1h30m.
    #[arg(long, env = "DESKPOD_SESSION_LIFETIME", default_value = "12h", value_parser = parse_lifetime)]
    session_lifetime: Duration,

    /// E-mail address of the admin created on first start, when there is no admin.
    #[arg(long, env = "DESKPOD_ADMIN_EMAIL", default_value = account::DEFAULT_ADMIN_EMAIL)]
    admin_email: String,

    /// Where workspaces run. `docker` (single-host mode): containers on this host's Docker Engine
    /// ($DOCKER_HOST or /var/run/docker.sock), with teams, templates and workspaces in the
    /// database; an empty database gets a template per desktop image built here and a team
    /// `default` led by the first admin. `kubernetes`: Team, WorkspaceTemplate and Workspace
    /// objects that deskpod-controller reconciles, through the in-cluster config or $KUBECONFIG.
    /// `none`: identity only (sign-in, tokens, invites), nobody is in a team.
    #[arg(long, env = "DESKPOD_BACKEND", value_enum, default_value_t = BackendKind::Docker)]
    backend: BackendKind,

    /// TEST-ONLY, never in production: with `--backend kubernetes`, honour the Workspace
    /// annotation `deskpod.io/desktop-endpoint: 127.0.0.1:<port>` as the desktop's address
    /// instead of its pod's. For test clusters whose (kwok) pods run no desktop. Anyone who may
    /// annotate a Workspace could point the portal's desktop proxy anywhere.
    #[arg(long)]
    allow_desktop_endpoint_override: bool,

    /// With `--backend kubernetes`: the namespace of the member clusters' kubeconfig Secrets (the
    /// controller's `--cluster-secret-namespace`), for teams placed on a member cluster.
    #[arg(long, value_name = "NAMESPACE", default_value = deskpod_portal::backend::kubernetes::DEFAULT_CLUSTER_SECRET_NAMESPACE)]
    cluster_secret_namespace: String,

    /// Debian's `novnc` package files, served under /novnc/ for the desktop view (no CDN).
    #[arg(long, env = "DESKPOD_NOVNC_DIR", default_value = "/usr/share/novnc")]
    novnc_dir: PathBuf,

    /// Reverse proxies (ingress controllers, load balancers) whose `X-Forwarded-For` header names
    /// the client: networks such as 10.0.0.0/8 or single addresses; repeat the flag or separate
    /// them with commas. The sign-in limits and the audit log then see the client's address (the
    /// rightmost forwarded address that is not a trusted proxy). Unset: no header is believed and
    /// the client is the TCP peer.
    #[arg(long = "trusted-proxy", env = "DESKPOD_TRUSTED_PROXIES", value_name = "CIDR", value_delimiter = ',')]
    trusted_proxies: Vec<IpNet>,

    /// How many days the audit log keeps an entry; 0 keeps entries whatever their age. Applied at
    /// start and every five minutes.
    #[arg(long, env = "DESKPOD_AUDIT_RETENTION_DAYS", value_name = "DAYS", default_value_t = AuditRetention::DEFAULT_DAYS)]
    audit_retention_days: u64,

    /// How many entries the audit log keeps at most, the newest; 0 keeps any number.
    #[arg(long, env = "DESKPOD_AUDIT_RETENTION_ENTRIES", value_name = "COUNT", default_value_t = AuditRetention::DEFAULT_ENTRIES)]
    audit_retention_entries: u64,

    #[command(flatten)]
    forward_auth: ForwardAuthArgs,

    #[command(flatten)]
    oidc: OidcArgs,
}

/// What `GET /auth/verify` (forward auth for the desktops' Ingresses) believes about the original
/// request. Set them as the controller's routing is set: nothing the browser sends changes them.
#[derive(clap::Args)]
struct ForwardAuthArgs {
    /// The controller's `--route-mode`: `host` (the desktop is the host,
    /// <workspace>.<team>.<domain>) or `path` (the host is the domain and the desktop is the path
    /// /workspaces/<team>/<workspace>/; dot-segments and encoded separators are refused).
    #[arg(long, env = "DESKPOD_DESKTOP_ROUTE_MODE", value_enum, default_value_t = RouteMode::Host)]
    desktop_route_mode: RouteMode,

    /// The controller's `--base-domain`: the domain desktops are served under.
    #[arg(long, env = "DESKPOD_DESKTOP_BASE_DOMAIN", value_name = "DOMAIN", default_value = "deskpod.localhost")]
    desktop_base_domain: String,

    /// Which headers tell the original request, as the ingress controller sets them:
    /// `x-forwarded` (X-Forwarded-Host and X-Forwarded-Uri: Traefik's forwardAuth) or
    /// `x-original-url` (ingress-nginx's auth-url). The other kind is ignored, since the ingress
    /// passes it on from the client unchanged.
    #[arg(long, env = "DESKPOD_FORWARD_AUTH_HEADERS", value_enum, default_value_t = ForwardedHeaders::XForwarded)]
    forward_auth_headers: ForwardedHeaders,
}

/// The `--backend` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BackendKind {
    /// Workspaces as containers on this host (single-host mode).
    Docker,
    /// Workspaces on Kubernetes.
    Kubernetes,
    /// No workspaces (identity only).
    None,
}

/// A session lifetime between one minute and 30 days.
fn parse_lifetime(raw: &str) -> Result<Duration, String> {
    let parsed: jiff::SignedDuration =
        raw.parse().map_err(|_| format!("{raw:?} is not a duration; write it like 12h, 90m or 1h30m"))?;
    let lifetime = Duration::try_from(parsed).map_err(|_| "the lifetime must be positive".to_owned())?;
    if !(Duration::from_secs(60)..=Duration::from_secs(30 * 24 * 3600)).contains(&lifetime) {
        return Err("the lifetime must be between 1m and 720h".into());
    }
    Ok(lifetime)
}

/// The audit retention from `--audit-retention-days` and `--audit-retention-entries` (0: no limit).
fn audit_retention(days: u64, entries: u64) -> AuditRetention {
    AuditRetention {
        max_age: (days > 0).then(|| Duration::from_secs(days.saturating_mul(24 * 3600))),
        max_entries: (entries > 0).then_some(entries),
    }
}

/// Reads a secret from the environment; unset or empty is `None`.
fn secret_from_env(name: &str) -> anyhow::Result<Option<String>> {
    match std::env::var(name) {
        Ok(value) if value.is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!("{name} is not valid UTF-8"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        // Colour codes only on a terminal, not in `kubectl logs`, `docker logs` or a log collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let cli = Cli::parse();
    let public_url = PublicUrl::parse(&cli.public_url)?;
    if !public_url.secure_cookies() {
        tracing::warn!(public_url = %public_url.as_str(), "cookies are not Secure: fine for local development only");
    }
    let config = Config {
        public_url,
        session_lifetime: cli.session_lifetime,
        trusted_proxies: TrustedProxies::new(cli.trusted_proxies.clone()),
    };
    let forward_auth = ForwardAuthSettings::new(
        cli.forward_auth.desktop_route_mode,
        &cli.forward_auth.desktop_base_domain,
        cli.forward_auth.forward_auth_headers,
    )
    .map_err(|why| anyhow::anyhow!("--desktop-base-domain: {why}"))?;

    let store = SqliteStore::open(&cli.database)
        .await
        .with_context(|| format!("opening the database {}", cli.database.display()))?;
    let keys = Keys::load(&store, secret_from_env("DESKPOD_JWT_KEY")?.as_deref()).await?;
    let bootstrap = account::ensure_admin(&store, &cli.admin_email, secret_from_env("DESKPOD_ADMIN_PASSWORD")?).await?;
    if let AdminBootstrap::Created { email, generated_password } = bootstrap {
        tracing::info!(admin = %email, "created the first admin account");
        if let Some(password) = generated_password {
            // Printed once, to standard output only; never logged.
            let mut out = std::io::stdout().lock();
            writeln!(out, "Created the first admin account {email} with the password:\n\n    {password}\n")?;
            writeln!(out, "Sign in at {} and keep it safe: it is not shown again.", config.public_url.join("/signin"))?;
            out.flush()?;
        }
    }

    // Without a backend nobody is in a team (admins can still do everything an admin may).
    let memberships = Arc::new(StaticMemberships::new());
    let mut state = AppState::new(config, Arc::new(store.clone()), keys, memberships);
    anyhow::ensure!(
        !cli.allow_desktop_endpoint_override || cli.backend == BackendKind::Kubernetes,
        "--allow-desktop-endpoint-override needs --backend kubernetes"
    );
    match cli.backend {
        BackendKind::Docker => {
            let backend = DockerBackend::connect(store).await.context(
                "connecting to the Docker Engine for single-host mode (start one with images/setup-docker, or \
                 choose another --backend)",
            )?;
            for created in backend.seed_defaults(&cli.admin_email).await.context("creating the default team")? {
                tracing::info!("single-host mode: created {created}");
            }
            state = state.with_backend(Arc::new(backend));
        }
        BackendKind::Kubernetes => {
            let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
            let allow_endpoint_override = cli.allow_desktop_endpoint_override;
            if allow_endpoint_override {
                tracing::warn!("--allow-desktop-endpoint-override is set: for tests only, never in production");
            }
            let options = KubernetesOptions {
                allow_endpoint_override,
                cluster_secret_namespace: Some(cli.cluster_secret_namespace.clone()),
            };
            let backend = KubernetesBackend::start(client, options).await.context("starting the Kubernetes backend")?;
            state = state.with_backend(Arc::new(backend));
        }
        BackendKind::None => {}
    }
    if cli.backend != BackendKind::None {
        // An accepted invite adds the invitee to the team and starts their first desktop.
        let hook = BackendInviteHook::new(state.backend.clone(), state.store.clone());
        state = state.with_invite_hook(Arc::new(hook));
    }

    let oidc_secret = secret_from_env(oidc::CLIENT_SECRET_ENV)?;
    if let Some(client) = OidcClient::from_args(&cli.oidc, &state.config.public_url, oidc_secret).await? {
        state = state.with_oidc(Arc::new(client));
    }

    if let Some(address) = cli.metrics_listen {
        let mut registry = prometheus_client::registry::Registry::default();
        state = state.with_metrics(deskpod_portal::metrics::Metrics::register(&mut registry));
        let listener =
            tokio::net::TcpListener::bind(address).await.with_context(|| format!("binding {address} for metrics"))?;
        tracing::info!(%address, "metrics listening: /metrics");
        let router = deskpod_portal::metrics::router(Arc::new(registry));
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "the metrics listener stopped");
            }
        });
    }

    let retention = audit_retention(cli.audit_retention_days, cli.audit_retention_entries);
    tracing::info!(?retention, "audit retention");
    tokio::spawn(audit::keep_pruning(state.store.clone(), retention, audit::PRUNE_EVERY));

    let listener =
        tokio::net::TcpListener::bind(cli.listen).await.with_context(|| format!("binding {}", cli.listen))?;
    tracing::info!(address = %cli.listen, "portal listening");
    let app =
        deskpod_portal::app(state).layer(axum::Extension(NovncDir(cli.novnc_dir))).layer(axum::Extension(forward_auth));
    let serve = deskpod_portal::serve::serve(listener, app, Limits::default(), deskpod_controller::run::terminated());
    // Open desktops and event streams never end by themselves: after the signal, requests in
    // flight get a few seconds, then the portal exits anyway (browsers reconnect to the next one).
    tokio::select! {
        () = serve => {}
        () = async {
            deskpod_controller::run::terminated().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::info!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; exiting"),
    }
    Ok(())
}

/// How long a stopping portal lets open connections finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_lifetimes() {
        assert_eq!(parse_lifetime("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_lifetime("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_lifetime("30s").unwrap_err().contains("between 1m and 720h"));
        assert!(parse_lifetime("-1h").is_err());
        assert!(parse_lifetime("soon").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn trusted_proxies_and_audit_retention_from_flags() {
        let cli = Cli::try_parse_from([
            "deskpod-portal",
            "--trusted-proxy",
            "10.0.0.0/8,fd00::/8",
            "--trusted-proxy=192.0.2.1",
            "--audit-retention-days=30",
            "--audit-retention-entries=0",
        ])
        .unwrap();
        let shown: Vec<String> = cli.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "fd00::/8", "192.0.2.1/32"]);
        let retention = audit_retention(cli.audit_retention_days, cli.audit_retention_entries);
        assert_eq!(retention, AuditRetention { max_age: Some(Duration::from_secs(30 * 86_400)), max_entries: None });

        let defaults = Cli::try_parse_from(["deskpod-portal"]).unwrap();
        assert!(defaults.trusted_proxies.is_empty(), "no proxy is trusted by default");
        assert_eq!(
            audit_retention(defaults.audit_retention_days, defaults.audit_retention_entries),
            AuditRetention::default()
        );

        let bad = Cli::try_parse_from(["deskpod-portal", "--trusted-proxy", "10.0.0.0/33"]).err().unwrap();
        assert!(bad.to_string().contains("10.0.0.0/33"), "{bad}");
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
