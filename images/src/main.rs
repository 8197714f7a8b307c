//! `deskpod-images`: builds Deskpod's images on the local Docker engine, lists them, and
//! measures how fast a desktop answers.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use deskpod_images::apt::{AptSources, DEFAULT_SOURCES};
use deskpod_images::builder::Freshness;
use deskpod_images::progress::Mode;
use deskpod_images::{BuildOptions, Builder, Outcome, catalogue, connect_docker, probe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(version, about = "Build and check Deskpod's desktop, CI-agent and platform images")]
struct Cli {
    /// Directory holding the images' directories (default: this crate's directory).
    #[arg(long, global = true)]
    images_dir: Option<PathBuf>,
    /// The host's deb822 apt sources file, copied into every build.
    #[arg(long, global = true, default_value = DEFAULT_SOURCES)]
    apt_sources: PathBuf,
    /// The Cargo workspace the platform images' binaries are built in, with `$CARGO` or the
    /// `cargo` on PATH (default: the workspace this program was built from).
    #[arg(long, global = true)]
    workspace_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build images in dependency order, reusing those that are up to date.
    Build {
        /// Build only this image (and what it is built on); repeatable.
        #[arg(long = "only", value_name = "NAME")]
        only: Vec<String>,
        /// Rebuild the requested images even when they are up to date.
        #[arg(long)]
        force: bool,
        /// How to show progress on stderr.
        #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
        progress: ProgressArg,
    },
    /// List the catalogue's images: tag, size, and whether they are up to date (builds the
    /// platform images' binaries first when those images are present).
    List,
    /// Start a desktop image several times and report the time to its RFB banner.
    Probe {
        #[arg(long, default_value = "python")]
        image: String,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Also read the memory in use this many seconds after the banner (each run).
        #[arg(long, value_name = "SECONDS")]
        idle: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ProgressArg {
    Auto,
    Tty,
    Plain,
    Quiet,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The error alone, without a backtrace: they say what to do (run images/setup-docker, ...).
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deskpod-images: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let images_dir = cli.images_dir.unwrap_or_else(deskpod_images::default_images_dir);
    let workspace_dir = cli.workspace_dir.unwrap_or_else(deskpod_images::default_workspace_dir);

    match cli.command {
        Command::Build { only, force, progress } => {
            let apt = AptSources::read(&cli.apt_sources)?;
            let builder = Builder::new(connect_docker().await?, images_dir, apt).with_workspace_dir(workspace_dir);
            let progress = match progress {
                ProgressArg::Auto => Mode::Auto,
                ProgressArg::Tty => Mode::Tty,
                ProgressArg::Plain => Mode::Plain,
                ProgressArg::Quiet => Mode::Quiet,
            };
            let started = Instant::now();
            let reports = builder.build(&BuildOptions { only, force, progress }).await?;
            println!("{:<30} {:>9} {:>10}", "IMAGE", "SIZE (MB)", "BUILD (s)");
            for report in &reports {
                let took = match report.outcome {
                    Outcome::Built(took) => format!("{:.0}", took.as_secs_f64()),
                    Outcome::Cached => "cached".into(),
                };
                println!("{:<30} {:>9.0} {:>10}", report.tag, report.size as f64 / 1e6, took);
            }
            println!("total {:.1} s", started.elapsed().as_secs_f64());
        }
        Command::List => {
            let apt = AptSources::read(&cli.apt_sources)?;
            let builder = Builder::new(connect_docker().await?, images_dir, apt).with_workspace_dir(workspace_dir);
            let statuses = builder.status(Mode::Auto).await?;
            println!("{:<10} {:<30} {:>9} {:<10} WHAT", "NAME", "TAG", "SIZE (MB)", "STATE");
            for status in statuses {
                let size = status.size.map(|s| format!("{:.0}", s as f64 / 1e6)).unwrap_or_else(|| "-".into());
                let state = match status.freshness {
                    Freshness::Missing => "missing",
                    Freshness::UpToDate => "up to date",
                    Freshness::Outdated => "outdated",
                };
                println!(
                    "{:<10} {:<30} {:>9} {:<10} {}",
                    status.spec.name, status.spec.tag, size, state, status.spec.summary
                );
            }
        }
        Command::Probe { image, runs, idle } => {
            let spec = catalogue::find(&image)
                .filter(|s| s.kind == catalogue::ImageKind::Desktop)
                .with_context(|| format!("{image} is not a desktop image"))?;
            let docker = connect_docker().await?;
            let mut times = Vec::new();
            for run in 1..=runs {
                let timing = probe::time_to_banner(&docker, spec.tag, idle.map(Duration::from_secs)).await?;
                let memory =
                    timing.idle_memory.map(|m| format!(", idle memory {:.0} MB", m as f64 / 1e6)).unwrap_or_default();
                println!(
                    "run {run}: {:?} after {:.3} s{memory}",
                    timing.banner.trim_end(),
                    timing.to_banner.as_secs_f64()
                );
                times.push(timing.to_banner);
            }
            times.sort();
            let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
            println!(
                "{}: container create → RFB banner over {} runs: p50 {:.3} s, p99 {:.3} s, max {:.3} s",
                spec.tag,
                times.len(),
                at(0.5).as_secs_f64(),
                at(0.99).as_secs_f64(),
                times.last().map(Duration::as_secs_f64).unwrap_or_default()
            );
        }
    }
    Ok(())
}
