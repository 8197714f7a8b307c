//! The crate's one error type: a variant per step that can fail, carrying what a person needs to
//! fix it.

use std::path::PathBuf;

/// What to do when no Docker engine answers.
pub const SETUP_HINT: &str = "run images/setup-docker (as root) to install Docker and start dockerd";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the Docker engine at {socket}: {message}; {SETUP_HINT}")]
    DockerUnreachable { socket: String, message: String },

    #[error("unknown image {name:?}; the images are: {known}")]
    UnknownImage { name: String, known: String },

    #[error("the image catalogue is inconsistent: {0}")]
    Catalogue(String),

    #[error("apt sources {path}: {message}")]
    AptSources { path: PathBuf, message: String },

    #[error("build context {path}: {message}")]
    Context { path: PathBuf, message: String },

    #[error("debootstrap failed: {message}")]
    Debootstrap { message: String },

    #[error("importing the rootfs as {tag} failed: {message}")]
    Import { tag: String, message: String },

    #[error("building {tag} failed{}: {message}\n--- last lines of the build ---\n{output}", step.as_deref().map(|s| format!(" at {s}")).unwrap_or_default())]
    Build { tag: String, step: Option<String>, message: String, output: String },

    #[error("building the Deskpod binaries failed: {message}\n  command: {command}\n  in: {}{}", dir.display(), last_lines("cargo's output", output))]
    Cargo { command: String, dir: PathBuf, message: String, output: String },

    #[error("inspecting {what} failed: {source}")]
    Inspect {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },

    #[error("running a container of {image} failed at {step}: {message}")]
    Run { image: String, step: &'static str, message: String },

    #[error("no RFB banner from {url} within {waited:?}: {last_error}")]
    NoBanner { url: String, waited: std::time::Duration, last_error: String },
}

/// `output` under a heading, or nothing when there is no output.
fn last_lines(what: &str, output: &str) -> String {
    if output.is_empty() { String::new() } else { format!("\n--- last lines of {what} ---\n{output}") }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
