//! Build contexts and the content hash that decides whether an image must be rebuilt.
//!
//! A context is an in-memory tar of an image's directory plus extra files (the host's apt
//! sources, the Deskpod binaries a platform image carries). It is deterministic — entries
//! sorted, owner root, mtime 0, mode 0755 for executables and 0644 otherwise — so the same files
//! always give the same bytes, and the hash of those bytes and the parent image's id says
//! whether an existing image is still up to date.

use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// A file put into a context that is not in the image's directory (borrowed: a binary is tens
/// of megabytes, and is copied once, into the tar).
#[derive(Clone, Debug)]
pub struct ExtraFile<'a> {
    /// Path inside the context, `/`-separated.
    pub path: String,
    pub contents: &'a [u8],
    pub executable: bool,
}

/// The tar of `dir`'s regular files (recursively) and `extra`, in path order.
pub fn build_context(dir: &Path, extra: &[ExtraFile]) -> Result<Vec<u8>> {
    let mut entries: Vec<(String, Cow<[u8]>, bool)> = Vec::new();
    collect(dir, dir, &mut entries)?;
    for file in extra {
        if entries.iter().any(|(path, ..)| *path == file.path) {
            return Err(Error::Context {
                path: dir.join(&file.path),
                message: "the builder puts its own file here; remove it from the image's directory".into(),
            });
        }
        entries.push((file.path.clone(), Cow::Borrowed(file.contents), file.executable));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));

    let mut tar = tar::Builder::new(Vec::new());
    for (path, contents, executable) in &entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(if *executable { 0o755 } else { 0o644 });
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, contents.as_ref())
            .map_err(|e| Error::Context { path: dir.join(path), message: e.to_string() })?;
    }
    tar.into_inner().map_err(|e| Error::Context { path: dir.to_path_buf(), message: e.to_string() })
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, Cow<'_, [u8]>, bool)>) -> Result<()> {
    let io_err = |path: &Path, e: std::io::Error| Error::Context { path: path.to_path_buf(), message: e.to_string() };
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| io_err(dir, e))?;
    children.sort();
    for path in children {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io_err(&path, e))?;
        if meta.is_dir() {
            collect(root, &path, out)?;
        } else if meta.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let relative = path.strip_prefix(root).expect("walked from root");
            let name = relative.to_str().ok_or_else(|| Error::Context {
                path: path.clone(),
                message: "file names in an image's directory must be UTF-8".into(),
            })?;
            let contents = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
            out.push((name.to_string(), Cow::Owned(contents), meta.permissions().mode() & 0o111 != 0));
        } else {
            return Err(Error::Context {
                path,
                message: "only regular files and directories may be in an image's directory".into(),
            });
        }
    }
    Ok(())
}

/// The content hash of a context: sha256 over a scheme version, the parent (the parent image's
/// id, or for the rootfs a description of how it is made) and the context bytes. Hex.
pub fn context_hash(context: &[u8], parent: &str) -> String {
    let mut hash = Sha256::new();
    // Length-prefixed parts, so no two different (parent, context) pairs give the same input.
    for part in [b"deskpod-context-v1".as_slice(), parent.as_bytes(), context] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::os::unix::fs::PermissionsExt;

    /// A directory with a Dockerfile and an executable script, removed on drop.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let dir = std::env::temp_dir().join(format!("deskpod-context-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(dir.join("sub")).unwrap();
            std::fs::write(dir.join("Dockerfile"), "FROM scratch\n").unwrap();
            std::fs::write(dir.join("sub/run"), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(dir.join("sub/run"), std::fs::Permissions::from_mode(0o755)).unwrap();
            Scratch(dir)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sources(text: &str) -> Vec<ExtraFile<'_>> {
        vec![ExtraFile { path: "apt/debian.sources".into(), contents: text.as_bytes(), executable: false }]
    }

    fn entries(tar: &[u8]) -> Vec<(String, u32, u64)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (e.path().unwrap().to_string_lossy().into_owned(), h.mode().unwrap(), h.mtime().unwrap())
            })
            .collect()
    }

    #[test]
    fn the_context_holds_the_directory_and_the_extra_files_sorted_and_normalised() {
        let dir = Scratch::new("layout");
        let tar = build_context(&dir.0, &sources("Types: deb\n")).unwrap();
        assert_eq!(
            entries(&tar),
            [
                ("Dockerfile".to_string(), 0o644, 0),
                ("apt/debian.sources".to_string(), 0o644, 0),
                ("sub/run".to_string(), 0o755, 0)
            ]
        );
    }

    #[test]
    fn the_same_files_give_the_same_hash_whenever_they_were_written() {
        let one = Scratch::new("one");
        let first = context_hash(&build_context(&one.0, &sources("a")).unwrap(), "sha256:parent");
        // Touching a file (a new mtime) or making the same tree elsewhere changes nothing.
        std::fs::write(one.0.join("Dockerfile"), "FROM scratch\n").unwrap();
        let two = Scratch::new("two");
        assert_eq!(context_hash(&build_context(&one.0, &sources("a")).unwrap(), "sha256:parent"), first);
        assert_eq!(context_hash(&build_context(&two.0, &sources("a")).unwrap(), "sha256:parent"), first);
        // And the hash is a fixed function of its inputs, not of the process.
        assert_eq!(first.len(), 64);
    }

    #[rstest]
    #[case::dockerfile_edited(|d: &Path| std::fs::write(d.join("Dockerfile"), "FROM scratch\nUSER 1000\n").unwrap(), "a", "p")]
    #[case::file_added(|d: &Path| std::fs::write(d.join("sub/extra"), "x").unwrap(), "a", "p")]
    #[case::mode_changed(|d: &Path| std::fs::set_permissions(d.join("sub/run"), std::fs::Permissions::from_mode(0o644)).unwrap(), "a", "p")]
    #[case::apt_sources_changed(|_: &Path| (), "b", "p")]
    #[case::parent_rebuilt(|_: &Path| (), "a", "q")]
    fn any_change_of_input_changes_the_hash(
        #[case] change: fn(&Path),
        #[case] apt_sources: &str,
        #[case] parent: &str,
    ) {
        let dir = Scratch::new("change");
        let before = context_hash(&build_context(&dir.0, &sources("a")).unwrap(), "p");
        change(&dir.0);
        let after = context_hash(&build_context(&dir.0, &sources(apt_sources)).unwrap(), parent);
        assert_ne!(before, after);
    }

    #[test]
    fn parent_and_context_cannot_trade_bytes() {
        assert_ne!(context_hash(b"bc", "a"), context_hash(b"c", "ab"));
    }

    #[test]
    fn a_file_where_the_builder_puts_its_own_is_refused() {
        let dir = Scratch::new("clash");
        std::fs::create_dir_all(dir.0.join("apt")).unwrap();
        std::fs::write(dir.0.join("apt/debian.sources"), "mine").unwrap();
        let err = build_context(&dir.0, &sources("a")).unwrap_err().to_string();
        assert!(err.contains("apt/debian.sources"), "{err}");
    }
}
