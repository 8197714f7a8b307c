//! `deskpod-controller`: the Deskpod Kubernetes controller.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use deskpod_controller::crd;

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd { out_dir } => print_crds(out_dir),
    }
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
