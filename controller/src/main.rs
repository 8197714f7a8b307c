//! `deskpod-controller`: the Deskpod Kubernetes controller.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use deskpod_controller::crd;
use deskpod_controller::team::{reconcile, render::TeamSettings};

#[derive(Parser)]
#[command(
    name = "deskpod-controller",
    version,
    about = "Deskpod's Kubernetes controller"
)]
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
    /// Reconcile Teams into namespaces (uses the in-cluster config or $KUBECONFIG).
    Run {
        /// Namespaces always allowed to reach team pods (the portal's, the ingress controller's).
        #[arg(
            long = "trusted-namespace",
            value_name = "NAMESPACE",
            default_value = "deskpod-system"
        )]
        trusted_namespaces: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd { out_dir } => print_crds(out_dir),
        Command::Run { trusted_namespaces } => run(trusted_namespaces).await,
    }
}

async fn run(trusted_namespaces: Vec<String>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    tracing::info!("deskpod-controller reconciling Teams");
    let ctx = reconcile::Context {
        client,
        settings: TeamSettings { trusted_namespaces },
    };
    reconcile::run(std::sync::Arc::new(ctx)).await;
    Ok(())
}

fn print_crds(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    for crd in crd::all() {
        let yaml = crd::to_yaml(&crd)?;
        match &out_dir {
            Some(dir) => {
                let path = dir.join(crd::file_name(&crd));
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}
