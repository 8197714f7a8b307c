//! Shared by the image tests: a Docker engine (or a failure that says how to get one) and the
//! images a test file needs, built once per test binary (reused when up to date).

use deskpod_images::progress::Mode;
use deskpod_images::{BuildOptions, Builder};
use std::sync::OnceLock;

/// Builds `names` (and what they are built on) once for this test binary; later calls, from
/// any test, wait for that one build and share its result.
pub fn ensure_built(names: &[&str]) {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let result = BUILT.get_or_init(|| {
        // Its own thread and runtime: the build outlives no test's runtime, and a test runtime
        // blocked here is not asked to drive it.
        std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let builder = Builder::connect_default().await.map_err(|e| e.to_string())?;
                let options = BuildOptions { only: names, force: false, progress: Mode::Plain };
                builder.build(&options).await.map(|_| ()).map_err(|e| e.to_string())
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the build thread panicked".into()))
    });
    if let Err(e) = result {
        panic!("building the images for this test failed: {e}");
    }
}

/// The engine, or a panic that says to run images/setup-docker.
pub async fn docker() -> bollard::Docker {
    deskpod_images::connect_docker().await.unwrap_or_else(|e| panic!("{e}"))
}
