//! The Deskpod binaries the platform images carry (see `Source::Dockerfile`'s `binaries`):
//! compiled from this workspace by `cargo build --release --locked`, once per build that needs
//! them, and found through cargo's JSON messages — the `executable` of each `compiler-artifact`
//! — wherever the target directory is (`CARGO_TARGET_DIR`, `build.target-dir`, a `--target`).
//!
//! Running cargo from a program that `cargo run` or `cargo test` started is fine: cargo releases
//! the target directory's lock before it runs what it built, so the inner build does not wait
//! for the outer one. What needs care is the environment: cargo gives the programs it runs the
//! variables of their package (`CARGO_PKG_NAME=deskpod-images`, `CARGO_MANIFEST_DIR`, ...), and
//! an inner cargo that inherits them sees changed inputs wherever a build script declared them
//! with `rerun-if-env-changed` (ring does, for every variable it reads) — and rebuilds ring,
//! rustls, kube and both servers (about three minutes on two cores) whenever the builder was
//! last started directly and now through cargo (`cargo run`, `cargo test`), or the other way
//! round. The inner cargo therefore runs without them ([`set_by_cargo_for_a_package`]), seeing
//! the same environment however the builder was started.

use crate::progress::Progress;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Binaries by name (cargo's `--bin` name), with their bytes.
pub type Binaries = BTreeMap<String, Vec<u8>>;

/// The cargo to run: `$CARGO` (cargo sets it for the programs it runs, so it is the toolchain
/// that built this one), else `cargo` from PATH.
pub fn cargo_program() -> OsString {
    std::env::var_os("CARGO").filter(|c| !c.is_empty()).unwrap_or_else(|| "cargo".into())
}

/// Whether `name` is one of the variables cargo sets for a package's programs, build scripts
/// or compilation (and which the inner cargo must not inherit): `CARGO_PKG_*`,
/// `CARGO_MANIFEST_*`, `CARGO_CFG_*`, `CARGO_FEATURE_*`, `CARGO_CRATE_NAME`, `CARGO_BIN_NAME`,
/// `CARGO_PRIMARY_PACKAGE`, `CARGO_TARGET_TMPDIR`, `OUT_DIR`. The user's configuration
/// (`CARGO_TARGET_DIR`, `CARGO_HOME`, `CARGO_BUILD_*`, `CARGO_PROFILE_*`, ...) passes through.
pub fn set_by_cargo_for_a_package(name: &str) -> bool {
    const PREFIXES: [&str; 4] = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CFG_", "CARGO_FEATURE_"];
    const NAMES: [&str; 5] =
        ["CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

/// The arguments of the build of `names`: release mode, exactly the locked dependencies, JSON
/// messages on stdout (the artifacts) and cargo's usual text on stderr (progress, diagnostics).
pub fn cargo_args(names: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["build", "--release", "--locked", "--message-format=json-render-diagnostics"].map(String::from).into();
    for name in names {
        args.push("--bin".into());
        args.push(name.to_string());
    }
    args
}

/// One line of cargo's JSON output, as far as the builder cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A binary target's executable: compiled now, or `fresh` (already up to date).
    Executable { name: String, path: PathBuf, fresh: bool },
    /// The last message: whether the build succeeded.
    Finished { success: bool },
    /// Libraries, build scripts, diagnostics (rendered on stderr instead) and anything else.
    Other,
}

/// Classifies one line of `--message-format=json*` output.
pub fn parse_message(line: &str) -> Message {
    let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { return Message::Other };
    match message["reason"].as_str() {
        Some("compiler-artifact") => {
            let is_bin =
                message["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k.as_str() == Some("bin")));
            match (is_bin, message["target"]["name"].as_str(), message["executable"].as_str()) {
                (true, Some(name), Some(path)) => Message::Executable {
                    name: name.to_string(),
                    path: PathBuf::from(path),
                    fresh: message["fresh"].as_bool().unwrap_or(false),
                },
                _ => Message::Other,
            }
        }
        Some("build-finished") => Message::Finished { success: message["success"].as_bool().unwrap_or(false) },
        _ => Message::Other,
    }
}

/// What [`build`] produced.
#[derive(Clone, Debug, Default)]
pub struct Built {
    pub binaries: Binaries,
    /// Every binary was already up to date: cargo compiled nothing of them.
    pub fresh: bool,
}

/// Builds `names` with cargo in `workspace` and reads the executables. Cargo's stderr goes to
/// `progress` (its last lines are in the error when the build fails).
pub async fn build(workspace: &Path, names: &[&str], progress: &mut Progress) -> Result<Built> {
    let program = cargo_program();
    let args = cargo_args(names);
    let command = format!("{} {}", program.to_string_lossy(), args.join(" "));
    let fail = |progress: &Progress, message: String| Error::Cargo {
        command: command.clone(),
        dir: workspace.to_path_buf(),
        message,
        output: progress.recent_output(),
    };

    let mut command_line = tokio::process::Command::new(&program);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_for_a_package) {
            command_line.env_remove(&name);
        }
    }
    let mut child = command_line
        .args(&args)
        .current_dir(workspace)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // An abandoned build (the builder's future dropped) does not keep compiling.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(progress, format!("cannot start cargo: {e} (set $CARGO or put cargo on PATH)")))?;
    let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut stderr = BufReader::new(child.stderr.take().expect("piped")).lines();

    let mut executables: BTreeMap<String, (PathBuf, bool)> = BTreeMap::new();
    let (mut stdout_open, mut stderr_open) = (true, true);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while stdout_open || stderr_open {
        tokio::select! {
            line = stdout.next_line(), if stdout_open => match line {
                Ok(Some(line)) => {
                    if let Message::Executable { name, path, fresh } = parse_message(&line) {
                        executables.insert(name, (path, fresh));
                    }
                }
                Ok(None) => stdout_open = false,
                Err(e) => return Err(fail(progress, format!("reading cargo's output: {e}"))),
            },
            line = stderr.next_line(), if stderr_open => match line {
                Ok(Some(line)) => progress.output(&line),
                Ok(None) => stderr_open = false,
                Err(e) => return Err(fail(progress, format!("reading cargo's output: {e}"))),
            },
            _ = tick.tick() => progress.redraw(),
        }
    }
    let status = child.wait().await.map_err(|e| fail(progress, format!("waiting for cargo: {e}")))?;
    if !status.success() {
        return Err(fail(progress, format!("cargo {status}")));
    }

    let mut built = Built { binaries: Binaries::new(), fresh: true };
    for name in names {
        let Some((path, fresh)) = executables.get(*name) else {
            return Err(fail(progress, format!("cargo succeeded but reported no executable {name}")));
        };
        let bytes = std::fs::read(path).map_err(|e| fail(progress, format!("{}: {e}", path.display())))?;
        built.binaries.insert(name.to_string(), bytes);
        built.fresh &= *fresh;
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn the_build_is_release_locked_and_names_each_binary() {
        assert_eq!(
            cargo_args(&["deskpod-portal", "deskpod"]).join(" "),
            "build --release --locked --message-format=json-render-diagnostics --bin deskpod-portal --bin deskpod"
        );
    }

    #[rstest]
    #[case::package_name("CARGO_PKG_NAME", true)]
    #[case::package_version("CARGO_PKG_VERSION_MAJOR", true)]
    #[case::manifest_dir("CARGO_MANIFEST_DIR", true)]
    #[case::manifest_path("CARGO_MANIFEST_PATH", true)]
    #[case::crate_name("CARGO_CRATE_NAME", true)]
    #[case::test_tmpdir("CARGO_TARGET_TMPDIR", true)]
    #[case::out_dir("OUT_DIR", true)]
    #[case::build_script_cfg("CARGO_CFG_TARGET_OS", true)]
    #[case::the_users_target_dir("CARGO_TARGET_DIR", false)]
    #[case::the_users_cargo_home("CARGO_HOME", false)]
    #[case::the_users_profile("CARGO_PROFILE_RELEASE_STRIP", false)]
    #[case::cargo_itself("CARGO", false)]
    #[case::path("PATH", false)]
    fn package_variables_are_not_passed_on(#[case] name: &str, #[case] removed: bool) {
        assert_eq!(set_by_cargo_for_a_package(name), removed);
    }

    // Lines as cargo 1.95 writes them (shortened where the builder does not look).
    #[rstest]
    #[case::binary_compiled(
        r#"{"reason":"compiler-artifact","package_id":"path+file:///w/portal#deskpod-portal@0.1.0","manifest_path":"/w/portal/Cargo.toml","target":{"kind":["bin"],"crate_types":["bin"],"name":"deskpod","src_path":"/w/portal/src/bin/deskpod.rs","edition":"2024","doc":true,"doctest":false,"test":true},"profile":{"opt_level":"3","debuginfo":0,"debug_assertions":false,"overflow_checks":false,"test":false},"features":[],"filenames":["/t/release/deskpod"],"executable":"/t/release/deskpod","fresh":false}"#,
        Message::Executable { name: "deskpod".into(), path: "/t/release/deskpod".into(), fresh: false }
    )]
    #[case::binary_fresh(
        r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"deskpod-controller"},"executable":"/t/x86_64-unknown-linux-gnu/release/deskpod-controller","fresh":true}"#,
        Message::Executable { name: "deskpod-controller".into(), path: "/t/x86_64-unknown-linux-gnu/release/deskpod-controller".into(), fresh: true }
    )]
    #[case::library(
        r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"deskpod_portal"},"filenames":["/t/release/libdeskpod_portal.rlib"],"executable":null,"fresh":false}"#,
        Message::Other
    )]
    #[case::build_script(
        r#"{"reason":"build-script-executed","package_id":"x","linked_libs":[],"linked_paths":[],"cfgs":[],"env":[],"out_dir":"/t/out"}"#,
        Message::Other
    )]
    #[case::finished_ok(r#"{"reason":"build-finished","success":true}"#, Message::Finished { success: true })]
    #[case::finished_failed(r#"{"reason":"build-finished","success":false}"#, Message::Finished { success: false })]
    #[case::not_json("   Compiling libc v0.2.191", Message::Other)]
    fn messages(#[case] line: &str, #[case] expected: Message) {
        assert_eq!(parse_message(line), expected);
    }
}
