//! The host's apt sources (deb822 format): copied into every image build so apt works inside it
//! exactly as on the host, and read for the mirror debootstrap makes the rootfs from.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Where the host keeps its Debian sources on this machine kind.
pub const DEFAULT_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";

/// The host's sources file, read.
#[derive(Clone, Debug)]
pub struct AptSources {
    pub path: PathBuf,
    pub text: String,
}

impl AptSources {
    /// Reads `path`; it must be a deb822 sources file with at least one `Types: deb` stanza.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::AptSources { path: path.to_path_buf(), message: e.to_string() })?;
        if !stanzas(&text).iter().any(|s| s.types.contains(&"deb")) {
            return Err(Error::AptSources {
                path: path.to_path_buf(),
                message: "no deb822 stanza with `Types: deb` (is it a one-line sources.list?)".into(),
            });
        }
        Ok(AptSources { path: path.to_path_buf(), text })
    }

    /// The mirror for `suite`, for debootstrap.
    pub fn mirror(&self, suite: &str) -> Result<String> {
        mirror_for_suite(&self.text, suite).ok_or_else(|| Error::AptSources {
            path: self.path.clone(),
            message: format!("no `Types: deb` stanza lists the suite {suite}"),
        })
    }
}

/// One deb822 stanza, as far as the builder cares.
#[derive(Debug, Default, PartialEq)]
struct Stanza<'a> {
    types: Vec<&'a str>,
    uris: Vec<&'a str>,
    suites: Vec<&'a str>,
    enabled: bool,
}

fn stanzas(text: &str) -> Vec<Stanza<'_>> {
    let mut out = Vec::new();
    let mut current: Option<Stanza> = None;
    let mut field: Option<&str> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            out.extend(current.take());
            field = None;
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let stanza = current.get_or_insert_with(|| Stanza { enabled: true, ..Stanza::default() });
        let (key, value) = if line.starts_with([' ', '\t']) {
            // A continuation line adds to the field above it.
            match field {
                Some(key) => (key, line.trim()),
                None => continue,
            }
        } else if let Some((key, value)) = line.split_once(':') {
            field = Some(key.trim());
            (key.trim(), value.trim())
        } else {
            continue;
        };
        let words = value.split_whitespace();
        match key.to_ascii_lowercase().as_str() {
            "types" => stanza.types.extend(words),
            "uris" => stanza.uris.extend(words),
            "suites" => stanza.suites.extend(words),
            "enabled" => stanza.enabled = !value.eq_ignore_ascii_case("no"),
            _ => {}
        }
    }
    out.extend(current);
    out
}

/// The first URI of the first enabled `Types: deb` stanza that lists `suite`.
pub fn mirror_for_suite(text: &str, suite: &str) -> Option<String> {
    stanzas(text)
        .into_iter()
        .filter(|s| s.enabled && s.types.contains(&"deb") && s.suites.contains(&suite))
        .find_map(|s| s.uris.first().map(|u| u.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const HOST: &str = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
";

    #[rstest]
    #[case::this_machines_file(HOST, "bookworm", Some("http://deb.debian.org/debian"))]
    #[case::security_suite(HOST, "bookworm-security", Some("http://deb.debian.org/debian-security"))]
    #[case::suite_not_listed(HOST, "trixie", None)]
    #[case::first_of_several_uris(
        "Types: deb\nURIs: http://a/debian http://b/debian\nSuites: bookworm\n",
        "bookworm",
        Some("http://a/debian")
    )]
    #[case::source_stanzas_do_not_count(
        "Types: deb-src\nURIs: http://src/debian\nSuites: bookworm\n",
        "bookworm",
        None
    )]
    #[case::disabled_stanza(
        "Types: deb\nEnabled: no\nURIs: http://off/debian\nSuites: bookworm\n\nTypes: deb\nURIs: http://on/debian\nSuites: bookworm\n",
        "bookworm",
        Some("http://on/debian")
    )]
    #[case::continuation_line(
        "Types: deb\nURIs: http://a/debian\nSuites:\n bookworm-updates\n bookworm\n",
        "bookworm",
        Some("http://a/debian")
    )]
    #[case::case_insensitive_keys(
        "types: deb\nuris: http://a/debian\nsuites: bookworm\n",
        "bookworm",
        Some("http://a/debian")
    )]
    fn mirror(#[case] text: &str, #[case] suite: &str, #[case] expected: Option<&str>) {
        assert_eq!(mirror_for_suite(text, suite).as_deref(), expected);
    }

    #[test]
    fn a_one_line_sources_list_is_refused_with_a_reason() {
        let path = std::env::temp_dir().join(format!("deskpod-apt-{}.list", std::process::id()));
        std::fs::write(&path, "deb http://deb.debian.org/debian bookworm main\n").unwrap();
        let err = AptSources::read(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("deb822"), "{err}");
    }
}
