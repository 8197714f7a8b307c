//! The Debian base of every image, made here because no registry is reachable:
//! `debootstrap --variant=minbase <suite>` from the host's mirror into a scratch directory,
//! trimmed (package cache, apt lists, device nodes — Docker supplies /dev), with the overlay
//! copied on top, then streamed as a tar (GNU tar, which keeps hard links, modes and owners
//! exactly) into the Engine API's image import (`POST /images/create?fromSrc=-`).

use crate::progress::Progress;
use crate::{CONTEXT_HASH_LABEL, Error, Result};
use bollard::Docker;
use bollard::query_parameters::CreateImageOptionsBuilder;
use bytes::Bytes;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

/// Bump when [`trim`] changes what it removes: the rootfs is then made again.
const TRIM_VERSION: u32 = 2;

/// What the rootfs's hash stands for besides the overlay: how it is made. Changing this string
/// (or the overlay) re-makes the rootfs, and through its new id everything built on it.
pub fn recipe(suite: &str) -> String {
    format!("debootstrap --variant=minbase {suite}; trim {TRIM_VERSION}")
}

/// A scratch directory removed when dropped (also when the build fails half-way).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        // /var/tmp: on disk, not a tmpfs; the tree is a few hundred MB.
        let dir = PathBuf::from("/var/tmp").join(format!("deskpod-rootfs-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::Debootstrap { message: format!("{}: {e}", dir.display()) })?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "could not remove the rootfs scratch directory");
        }
    }
}

/// Makes the rootfs and imports it as `tag`, labelled with `hash`.
pub async fn make_rootfs(
    docker: &Docker,
    tag: &str,
    suite: &str,
    mirror: &str,
    overlay: &Path,
    hash: &str,
    progress: &mut Progress,
) -> Result<()> {
    let scratch = Scratch::new()?;
    let root = scratch.0.join("root");
    debootstrap(suite, &root, mirror, progress).await?;

    progress.phase("trimming and adding the overlay");
    trim(&root).map_err(|e| Error::Debootstrap { message: format!("trimming {}: {e}", root.display()) })?;
    copy_tree(overlay, &root)
        .map_err(|e| Error::Debootstrap { message: format!("copying {} into the rootfs: {e}", overlay.display()) })?;

    progress.phase("importing into Docker");
    import(docker, tag, &root, hash, progress).await
}

async fn debootstrap(suite: &str, root: &Path, mirror: &str, progress: &mut Progress) -> Result<()> {
    let mut child = Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(suite)
        .arg(root)
        .arg(mirror)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Debootstrap {
            message: if e.kind() == std::io::ErrorKind::NotFound {
                format!("debootstrap is not installed; {}", crate::error::SETUP_HINT)
            } else {
                format!("starting debootstrap: {e}")
            },
        })?;
    let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        tokio::select! {
            line = stdout.next_line(), if out_open => match line {
                Ok(Some(line)) => progress.output(&line),
                _ => out_open = false,
            },
            line = stderr.next_line(), if err_open => match line {
                Ok(Some(line)) => progress.output(&line),
                _ => err_open = false,
            },
            _ = tick.tick() => progress.redraw(),
        }
    }
    let status = child.wait().await.map_err(|e| Error::Debootstrap { message: e.to_string() })?;
    if !status.success() {
        let log = std::fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(Error::Debootstrap {
            message: format!(
                "{status} (suite {suite}, mirror {mirror})\n--- last output ---\n{}\n--- debootstrap.log ---\n{}",
                progress.recent_output(),
                tail.join("\n")
            ),
        });
    }
    Ok(())
}

/// Removes what an image should not carry: the downloaded packages, the package lists (every
/// build runs `apt-get update` with the host's sources), the device nodes, and the
/// documentation, manual pages and translations that the overlay's dpkg excludes keep out of
/// every later install (copyright files and `locale.alias` stay).
fn trim(root: &Path) -> std::io::Result<()> {
    let keep_nothing: &[&str] = &[];
    for (dir, keep) in [
        ("var/cache/apt/archives", &["partial", "lock"][..]),
        ("var/lib/apt/lists", &["partial", "lock"]),
        ("dev", keep_nothing),
        ("usr/share/man", keep_nothing),
        ("usr/share/info", keep_nothing),
        ("usr/share/locale", &["locale.alias"]),
    ] {
        empty_dir(&root.join(dir), keep)?;
    }
    let docs = root.join("usr/share/doc");
    if docs.exists() {
        for package in std::fs::read_dir(&docs)? {
            let package = package?;
            if package.file_type()?.is_dir() {
                empty_dir(&package.path(), &["copyright"])?;
            }
        }
    }
    Ok(())
}

/// Removes everything in `dir` but the entries named in `keep`; a missing `dir` is fine.
fn empty_dir(dir: &Path, keep: &[&str]) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if keep.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Copies `from` into `to` recursively, keeping file modes.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

async fn import(docker: &Docker, tag: &str, root: &Path, hash: &str, progress: &mut Progress) -> Result<()> {
    let import_err = |message: String| Error::Import { tag: tag.to_string(), message };
    let (repo, version) = tag.rsplit_once(':').unwrap_or((tag, "latest"));

    let mut tar = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-C"])
        .arg(root)
        .args(["-cf", "-", "."])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| import_err(format!("starting tar: {e}")))?;
    let stdout = tar.stdout.take().expect("piped");
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let body = futures::stream::unfold(stdout, move |mut stdout| {
        let counter = counter.clone();
        async move {
            let mut buf = vec![0u8; 256 * 1024];
            match stdout.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    Some((Ok(Bytes::from(buf)), stdout))
                }
                Err(e) => Some((Err(e), stdout)),
            }
        }
    });

    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(repo)
        .tag(version)
        .changes(vec![
            format!("LABEL {CONTEXT_HASH_LABEL}={hash}"),
            "ENV LANG=C.UTF-8".to_string(),
            r#"CMD ["/bin/bash"]"#.to_string(),
        ])
        .build();
    let mut stream = docker.create_image(Some(options), Some(bollard::body_try_stream(body)), None);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(info)) => {
                    if let Some(status) = info.status {
                        progress.output(&status);
                    }
                }
                Some(Err(e)) => return Err(import_err(e.to_string())),
                None => break,
            },
            _ = tick.tick() => progress.sent(sent.load(Ordering::Relaxed)),
        }
    }
    progress.sent(sent.load(Ordering::Relaxed));

    let output = tar.wait_with_output().await.map_err(|e| import_err(format!("tar: {e}")))?;
    if !output.status.success() {
        return Err(import_err(format!("tar {}: {}", output.status, String::from_utf8_lossy(&output.stderr))));
    }
    Ok(())
}
