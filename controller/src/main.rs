//! `deskpod-controller`: the Deskpod Kubernetes controller.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use deskpod_controller::agent::reconcile::AgentSettings;
use deskpod_controller::cluster::reconcile::ClusterSettings;
use deskpod_controller::gateway::ParentReference;
use deskpod_controller::metrics::Metrics;
use deskpod_controller::team::render::TeamSettings;
use deskpod_controller::workspace::render::{ForwardAuth, RouteMode, RouteSettings};
use deskpod_controller::{admin, crd, leader, run};

#[derive(Parser)]
#[command(name = "deskpod-controller", version, about = "Deskpod's Kubernetes controller")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print Deskpod's CustomResourceDefinitions as YAML, or write one file per CRD.
    Crd {
        /// Write `<plural>.deskpod.io.yaml` files into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Reconcile Teams, Workspaces and CiAgents (uses the in-cluster config or $KUBECONFIG).
    Run {
        /// Namespaces always allowed to reach team pods (the portal's, the ingress controller's).
        #[arg(long = "trusted-namespace", value_name = "NAMESPACE", default_value = "deskpod-system")]
        trusted_namespaces: Vec<String>,
        /// Address of the admin port: /healthz and /metrics (Prometheus).
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9090")]
        admin_listen: std::net::SocketAddr,
        /// Reconcile only while holding this Lease, so several replicas can run (one leads).
        /// The replica's identity is $POD_NAME, else $HOSTNAME, plus the process id.
        #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_lease)]
        leader_elect: Option<(String, String)>,
        /// How long a finished CI agent (and its pod's logs) is kept when it sets no
        /// ttlAfterFinished, such as 30m or 1h.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = deskpod_controller::duration::parse)]
        ci_agent_ttl: std::time::Duration,
        /// The namespace holding the kubeconfig Secrets of member clusters (`Cluster` objects);
        /// the controller reads Secrets there for them and nowhere else.
        #[arg(long, value_name = "NAMESPACE", default_value = "deskpod-system")]
        cluster_secret_namespace: String,
        #[command(flatten)]
        route: Box<RouteArgs>,
    },
}

/// How desktops are reached from browsers.
#[derive(clap::Args)]
struct RouteArgs {
    /// Domain desktops are served under: `<workspace>.<team>.<domain>` (host mode) or
    /// `<domain>/workspaces/<team>/<workspace>/` (path mode).
    #[arg(long, value_name = "DOMAIN", default_value = "deskpod.localhost")]
    base_domain: String,
    /// One host per workspace, or one path per workspace on the base domain.
    #[arg(long, value_enum, default_value = "host")]
    route_mode: RouteModeArg,
    /// IngressClass of the workspace Ingresses; the cluster's default class when unset.
    #[arg(long, value_name = "CLASS")]
    ingress_class: Option<String>,
    /// Secret (in each team namespace) with the TLS certificate for the workspace hosts.
    #[arg(long, value_name = "SECRET")]
    tls_secret: Option<String>,
    /// Forward authentication, NGINX style (`auth-url` annotation, read by ingress-nginx and
    /// compatible controllers): the portal's verify endpoint, such as
    /// http://deskpod-portal.deskpod-system.svc/auth/verify.
    #[arg(long, value_name = "URL", requires = "auth_signin", conflicts_with = "traefik_middleware")]
    auth_url: Option<String>,
    /// Where the ingress controller sends a browser that is not signed in (`auth-signin`), such as
    /// https://deskpod.example.com/signin.
    #[arg(long, value_name = "URL", requires = "auth_url")]
    auth_signin: Option<String>,
    /// Forward authentication with Traefik: the ForwardAuth Middleware as Traefik references it,
    /// `<namespace>-<name>@kubernetescrd`.
    #[arg(long, value_name = "MIDDLEWARE")]
    traefik_middleware: Option<String>,
    /// Route workspaces with Gateway API HTTPRoutes attached to this Gateway (and listener)
    /// instead of Ingresses. The cluster must have the Gateway API CRDs.
    #[arg(long, value_name = "NAMESPACE/NAME[/LISTENER]", value_parser = parse_gateway)]
    gateway: Option<ParentReference>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RouteModeArg {
    Host,
    Path,
}

impl RouteArgs {
    fn settings(self) -> RouteSettings {
        RouteSettings {
            base_domain: self.base_domain,
            mode: match self.route_mode {
                RouteModeArg::Host => RouteMode::Host,
                RouteModeArg::Path => RouteMode::Path,
            },
            ingress_class: self.ingress_class,
            tls_secret: self.tls_secret,
            auth: match (self.auth_url, self.auth_signin, self.traefik_middleware) {
                (Some(verify_url), Some(signin_url), _) => ForwardAuth::NginxStyle { verify_url, signin_url },
                (_, _, Some(middleware)) => ForwardAuth::Traefik { middleware },
                _ => ForwardAuth::None,
            },
            gateway: self.gateway,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd { out_dir } => print_crds(out_dir),
        Command::Run {
            trusted_namespaces,
            admin_listen,
            leader_elect,
            ci_agent_ttl,
            cluster_secret_namespace,
            route,
        } => {
            let agents = AgentSettings { default_ttl: ci_agent_ttl };
            let clusters = ClusterSettings { secret_namespace: cluster_secret_namespace, ..Default::default() };
            run(trusted_namespaces, admin_listen, leader_elect, route.settings(), agents, clusters).await
        }
    }
}

async fn run(
    trusted_namespaces: Vec<String>,
    admin_listen: std::net::SocketAddr,
    leader_elect: Option<(String, String)>,
    route: RouteSettings,
    agents: AgentSettings,
    clusters: ClusterSettings,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        // Colour codes only on a terminal, not in `kubectl logs` or a log collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let admin = tokio::net::TcpListener::bind(admin_listen).await.with_context(|| format!("binding {admin_listen}"))?;
    tracing::info!(address = %admin_listen, "admin port: /healthz, /metrics");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(admin, admin::router(std::sync::Arc::new(registry))).await {
            tracing::error!(%error, "admin port stopped");
        }
    });

    let settings = run::Settings { teams: TeamSettings { trusted_namespaces }, route, agents, clusters };
    let controllers = {
        let client = client.clone();
        async move {
            tracing::info!("deskpod-controller reconciling Teams, Workspaces, CiAgents and Clusters");
            run::controllers(client, settings, metrics).await;
        }
    };
    match leader_elect {
        None => {
            tokio::select! {
                () = controllers => {}
                () = run::terminated() => tracing::info!("shutting down"),
            }
        }
        Some((namespace, name)) => {
            let host = std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| "deskpod-controller".into());
            let settings = leader::LeaseSettings {
                namespace: namespace.clone(),
                name: name.clone(),
                identity: format!("{host}-{}", std::process::id()),
                lease_duration: std::time::Duration::from_secs(15),
                renew_every: std::time::Duration::from_secs(5),
            };
            tracing::info!(identity = %settings.identity, %namespace, %name, "waiting to lead");
            leader::run_as_leader(kube::Api::namespaced(client, &namespace), settings, controllers, run::terminated())
                .await?;
        }
    }
    Ok(())
}

fn print_crds(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    for crd in crd::all() {
        let yaml = crd::to_yaml(&crd)?;
        match &out_dir {
            Some(dir) => {
                let path = dir.join(crd::file_name(&crd));
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}

/// Parses `--gateway NAMESPACE/NAME[/LISTENER]`.
fn parse_gateway(value: &str) -> Result<ParentReference, String> {
    let parts: Vec<&str> = value.split('/').collect();
    match parts[..] {
        [ns, name] | [ns, name, _] if !ns.is_empty() && !name.is_empty() => Ok(ParentReference {
            namespace: Some(ns.into()),
            name: name.into(),
            section_name: parts.get(2).filter(|s| !s.is_empty()).map(|s| s.to_string()),
        }),
        _ => Err(format!("expected NAMESPACE/NAME or NAMESPACE/NAME/LISTENER, such as infra/web/https, got {value:?}")),
    }
}

/// Parses `--leader-elect NAMESPACE/NAME`.
fn parse_lease(value: &str) -> Result<(String, String), String> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok((ns.into(), name.into())),
        _ => Err(format!("expected NAMESPACE/NAME, such as deskpod-system/deskpod-controller, got {value:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_are_namespace_name_and_an_optional_listener() {
        let gateway = |ns: &str, name: &str, section: Option<&str>| ParentReference {
            namespace: Some(ns.into()),
            name: name.into(),
            section_name: section.map(String::from),
        };
        assert_eq!(parse_gateway("infra/web"), Ok(gateway("infra", "web", None)));
        assert_eq!(parse_gateway("infra/web/https"), Ok(gateway("infra", "web", Some("https"))));
        for bad in ["web", "/web", "infra/", "a/b/c/d", ""] {
            assert!(parse_gateway(bad).unwrap_err().contains("NAMESPACE/NAME"), "{bad:?}");
        }
    }

    #[test]
    fn forward_auth_comes_from_one_preset() {
        let settings = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["deskpod-controller", "run"], args].concat()).map_err(|e| e.kind())?;
            let Command::Run { route, .. } = cli.command else { unreachable!("run was given") };
            Ok::<_, clap::error::ErrorKind>(route.settings().auth)
        };
        assert_eq!(settings(&[]), Ok(ForwardAuth::None));
        assert_eq!(
            settings(&["--traefik-middleware", "deskpod-system-verify@kubernetescrd"]),
            Ok(ForwardAuth::Traefik { middleware: "deskpod-system-verify@kubernetescrd".into() })
        );
        assert_eq!(
            settings(&["--auth-url", "http://portal/auth/verify", "--auth-signin", "https://desk/signin"]),
            Ok(ForwardAuth::NginxStyle {
                verify_url: "http://portal/auth/verify".into(),
                signin_url: "https://desk/signin".into()
            })
        );
        assert!(settings(&["--auth-url", "http://portal/auth/verify"]).is_err(), "--auth-signin is required with it");
        assert!(
            settings(&["--auth-url", "u", "--auth-signin", "s", "--traefik-middleware", "m"]).is_err(),
            "one preset at a time"
        );
    }
}
