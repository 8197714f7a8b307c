//! Single-host start-up benchmark: from the user's request to the VNC banner through the portal,
//! against the same image started with a bare `docker run`.
//!
//! `cargo bench -p deskpod-portal --bench single_host [-- --runs N]`
//!
//! - **Portal**: `POST /api/v1/workspaces` (an API token) on a portal served on 127.0.0.1 with the
//!   Docker backend, then the browser's path: a websocket to `/workspaces/<team>/<name>/websockify`
//!   with the session cookie and the portal's Origin, retried until the first 12 bytes (the RFB
//!   banner the portal greets with, after it has authenticated to the desktop) arrive. The
//!   workspace is deleted after each run, outside the timing.
//! - **Baseline**: what `docker run` does — create and start a container of the same image with
//!   the same contract — until the banner arrives on its websocket
//!   (`deskpod_images::probe::time_to_banner`).
//!
//! Runs alternate (baseline, portal, baseline, ...), so both see the same machine. The image must
//! be built (`cargo run -p deskpod-images -- build --only python`). Targets (issue #5): portal p50
//! ≤ 1.3 × baseline p50, portal p99 ≤ 2 s. Exits 1 when one is missed.

mod startup;

use std::time::Duration;

use deskpod_portal::backend::Backend;
use startup::{IMAGE, SingleHost, ms, p50_p99};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs = startup::runs_from_args("single_host", 20)?;
    let docker = deskpod_images::connect_docker().await?;
    docker.inspect_image(IMAGE).await.map_err(|_| {
        anyhow::anyhow!("{IMAGE} is not built; run `cargo run -p deskpod-images -- build --only python`")
    })?;
    let host = SingleHost::start().await?;

    let mut baseline = Vec::new();
    let mut through_portal = Vec::new();
    for run in 0..runs {
        let timing = deskpod_images::probe::time_to_banner(&docker, IMAGE, None).await?;
        baseline.push(timing.to_banner);
        let name = format!("run{run}");
        let took = host.served.request_to_banner(&host.team, "python", &name).await;
        host.backend.delete_workspace(&host.team, &name).await?;
        through_portal.push(took?);
        eprintln!(
            "run {:>2}: docker run → banner {:>6.0} ms; request → banner through the portal {:>6.0} ms",
            run + 1,
            ms(baseline[run]),
            ms(through_portal[run])
        );
    }
    host.stop().await;

    let (base_p50, base_p99) = p50_p99(&baseline);
    let (portal_p50, portal_p99) = p50_p99(&through_portal);
    let ratio = portal_p50.as_secs_f64() / base_p50.as_secs_f64();
    println!("single-host start-up, {runs} runs each, image {IMAGE} cached:");
    println!("  bare docker run → VNC banner:              p50 {:>6.0} ms  p99 {:>6.0} ms", ms(base_p50), ms(base_p99));
    println!(
        "  request → VNC banner through the portal:   p50 {:>6.0} ms  p99 {:>6.0} ms  ({ratio:.2}× the baseline p50)",
        ms(portal_p50),
        ms(portal_p99)
    );
    let mut missed = Vec::new();
    if ratio > 1.3 {
        missed.push(format!("p50 is {ratio:.2}× the bare docker run (target ≤ 1.3×)"));
    }
    if portal_p99 > Duration::from_secs(2) {
        missed.push(format!("p99 is {:.0} ms (target ≤ 2000 ms)", ms(portal_p99)));
    }
    if missed.is_empty() {
        println!("  targets met: p50 ≤ 1.3× baseline, p99 ≤ 2 s");
        Ok(())
    } else {
        eprintln!("targets missed: {}", missed.join("; "));
        std::process::exit(1);
    }
}
