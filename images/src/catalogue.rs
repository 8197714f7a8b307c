//! The catalogue: every image Deskpod builds, in one table, and the contract the desktop and
//! CI-agent images keep. Other crates (the portal's Docker backend, the controller's templates)
//! take tags and ports from here rather than spelling them again.

/// What an image is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// The Debian base everything is built on; not run by itself.
    Rootfs,
    /// A desktop: keeps the [`desktop`] contract.
    Desktop,
    /// A CI agent: keeps the [`ci_agent`] contract.
    CiAgent,
}

/// How an image is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `debootstrap --variant=minbase <suite>` from the host's mirror, `overlay` (a directory
    /// under the images directory) copied on top, imported into Docker.
    Debootstrap { suite: &'static str, overlay: &'static str },
    /// A Dockerfile build of `dir` (under the images directory) on top of the parent.
    Dockerfile { dir: &'static str },
}

/// One image of the catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// Short name used on the command line (`--only python`).
    pub name: &'static str,
    /// The tag the image is built under.
    pub tag: &'static str,
    pub kind: ImageKind,
    /// The image this one is built `FROM` (by name), if any.
    pub parent: Option<&'static str>,
    pub source: Source,
    /// One line for `deskpod-images list`.
    pub summary: &'static str,
}

/// The Debian base image.
pub const ROOTFS: &str = "rootfs";
/// The desktop every environment is built on.
pub const DESKTOP_BASE: &str = "base";

/// Every image, parents before children.
pub const CATALOGUE: &[ImageSpec] = &[
    ImageSpec {
        name: ROOTFS,
        tag: "deskpod/rootfs:bookworm",
        kind: ImageKind::Rootfs,
        parent: None,
        source: Source::Debootstrap { suite: "bookworm", overlay: "rootfs/overlay" },
        summary: "Debian bookworm (debootstrap minbase), the base of all images",
    },
    ImageSpec {
        name: DESKTOP_BASE,
        tag: "deskpod/desktop-base:latest",
        kind: ImageKind::Desktop,
        parent: Some(ROOTFS),
        source: Source::Dockerfile { dir: "desktop/base" },
        summary: "XFCE on TigerVNC, noVNC over websocket on 6901",
    },
    ImageSpec {
        name: "java",
        tag: "deskpod/desktop-java:latest",
        kind: ImageKind::Desktop,
        parent: Some(DESKTOP_BASE),
        source: Source::Dockerfile { dir: "desktop/java" },
        summary: "desktop with OpenJDK 17, Maven and Geany",
    },
    ImageSpec {
        name: "python",
        tag: "deskpod/desktop-python:latest",
        kind: ImageKind::Desktop,
        parent: Some(DESKTOP_BASE),
        source: Source::Dockerfile { dir: "desktop/python" },
        summary: "desktop with python3, venv, pip and Geany",
    },
    ImageSpec {
        name: "node",
        tag: "deskpod/desktop-node:latest",
        kind: ImageKind::Desktop,
        parent: Some(DESKTOP_BASE),
        source: Source::Dockerfile { dir: "desktop/node" },
        summary: "desktop with Node.js, npm and Geany",
    },
    ImageSpec {
        name: "ci-agent",
        tag: "deskpod/ci-agent:latest",
        kind: ImageKind::CiAgent,
        parent: Some(ROOTFS),
        source: Source::Dockerfile { dir: "ci-agent" },
        summary: "JDK 17, curl and git; Jenkins inbound agent or a given command",
    },
];

/// The catalogue entry called `name`.
pub fn find(name: &str) -> Option<&'static ImageSpec> {
    CATALOGUE.iter().find(|spec| spec.name == name)
}

/// The tag of the image called `name` (`"python"` → `"deskpod/desktop-python:latest"`).
pub fn tag(name: &str) -> Option<&'static str> {
    find(name).map(|spec| spec.tag)
}

/// The desktop images, base first.
pub fn desktops() -> impl Iterator<Item = &'static ImageSpec> {
    CATALOGUE.iter().filter(|spec| spec.kind == ImageKind::Desktop)
}

/// What every desktop image promises to whoever runs it.
pub mod desktop {
    /// The port websockify serves noVNC and the RFB stream on (plain websocket).
    pub const VNC_PORT: u16 = 6901;
    /// The required environment variable holding the VNC password. Only its first 8
    /// characters count (VNC authentication).
    pub const PASSWORD_ENV: &str = "VNC_PW";
    /// Optional `WIDTHxHEIGHT`.
    pub const RESOLUTION_ENV: &str = "VNC_RESOLUTION";
    /// The default of [`RESOLUTION_ENV`].
    pub const DEFAULT_RESOLUTION: &str = "1280x800";
    /// The home directory: mount the persisted volume here. An empty volume is seeded at start.
    pub const HOME: &str = "/home/user";
    /// The uid and gid the desktop runs as; a home volume must be writable for them.
    pub const UID: u32 = 1000;
    pub const GID: u32 = 1000;
    /// The RFB banner the VNC server sends first, through the websocket.
    pub const RFB_BANNER: &str = "RFB 003.008\n";
}

/// What the CI-agent image promises to whoever runs it.
pub mod ci_agent {
    /// Set → Jenkins inbound mode: agent.jar is downloaded from `$JENKINS_URL/jnlpJars/agent.jar`.
    pub const JENKINS_URL_ENV: &str = "JENKINS_URL";
    /// Required in Jenkins mode; never printed.
    pub const JENKINS_SECRET_ENV: &str = "JENKINS_SECRET";
    /// Required in Jenkins mode.
    pub const JENKINS_AGENT_NAME_ENV: &str = "JENKINS_AGENT_NAME";
    /// Optional work directory in Jenkins mode (default [`HOME`]).
    pub const JENKINS_AGENT_WORKDIR_ENV: &str = "JENKINS_AGENT_WORKDIR";
    pub const HOME: &str = "/home/agent";
    pub const UID: u32 = 1000;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_and_tags_are_unique() {
        let names: HashSet<_> = CATALOGUE.iter().map(|s| s.name).collect();
        let tags: HashSet<_> = CATALOGUE.iter().map(|s| s.tag).collect();
        assert_eq!(names.len(), CATALOGUE.len());
        assert_eq!(tags.len(), CATALOGUE.len());
    }

    #[test]
    fn every_parent_is_in_the_catalogue_and_listed_before_its_child() {
        for (i, spec) in CATALOGUE.iter().enumerate() {
            if let Some(parent) = spec.parent {
                let at = CATALOGUE.iter().position(|s| s.name == parent);
                assert!(matches!(at, Some(p) if p < i), "{}'s parent {parent} must come before it", spec.name);
            }
        }
    }

    /// The Dockerfiles name their parent by tag; they must agree with the table.
    #[test]
    fn each_dockerfile_is_built_from_its_parents_tag() {
        for spec in CATALOGUE {
            let Source::Dockerfile { dir } = spec.source else { continue };
            let path = crate::default_images_dir().join(dir).join("Dockerfile");
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let from: Vec<_> = text.lines().filter_map(|l| l.trim().strip_prefix("FROM ")).map(str::trim).collect();
            let parent_tag = tag(spec.parent.expect("a Dockerfile image has a parent")).unwrap();
            assert_eq!(from, [parent_tag], "{}", path.display());
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(tag("python"), Some("deskpod/desktop-python:latest"));
        assert_eq!(tag("cobol"), None);
        let desktops: Vec<_> = desktops().map(|s| s.name).collect();
        assert_eq!(desktops, ["base", "java", "python", "node"]);
    }
}
