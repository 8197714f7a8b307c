//! Deskpod's images and the builder that makes them on a local Docker engine.
//!
//! The images themselves are data beside this crate: one directory per image with its
//! Dockerfile (`desktop/base`, `desktop/java`, ..., `ci-agent`, `controller`, `portal`) and
//! `rootfs/` for the Debian base that everything is built on. No registry is reachable, so the
//! base is made here with debootstrap and imported; the rest is built on it through the Docker
//! Engine API (bollard). The platform images (controller, portal) carry Deskpod's own binaries,
//! compiled from this workspace by the builder.
//!
//! - [`catalogue`]: every image, its tag and parent, and the desktop and platform contracts
//!   (ports, password variable, uids, homes) — what other crates use to run the images;
//! - [`plan`]: which images a request needs, in build order (pure);
//! - [`context`]: deterministic build contexts and the content hash that decides reuse (pure);
//! - [`apt`]: reading the host's apt sources (pure);
//! - [`progress`]: parsing the build stream and showing progress (pure parsing, thin display);
//! - [`binaries`]: compiling the Deskpod binaries the platform images carry (cargo);
//! - [`builder`]: connecting to dockerd, building, reusing up-to-date images, listing;
//! - [`rootfs`]: debootstrap and import of the base;
//! - [`probe`]: running a desktop and waiting for its RFB banner over the websocket.
#![forbid(unsafe_code)]

pub mod apt;
pub mod binaries;
pub mod builder;
pub mod catalogue;
pub mod context;
mod error;
pub mod plan;
pub mod probe;
pub mod progress;
pub mod rootfs;

pub use builder::{BuildOptions, BuildReport, Builder, ImageStatus, Outcome, connect_docker};
pub use catalogue::{CATALOGUE, ImageKind, ImageSpec};
pub use error::{Error, Result};

/// The label that carries an image's content hash; an image whose label matches the hash of
/// its current build context (and parent) is reused instead of rebuilt.
pub const CONTEXT_HASH_LABEL: &str = "io.deskpod.context-hash";

/// This crate's directory, where the images' directories live (the default for the builder).
pub fn default_images_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Cargo workspace this crate is part of, where the platform images' binaries are built
/// (the default for the builder).
pub fn default_workspace_dir() -> std::path::PathBuf {
    default_images_dir().parent().expect("the images crate is inside the workspace").to_path_buf()
}
