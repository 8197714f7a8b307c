//! The catalogue: every image Deskpod builds, in one table, and the contracts the desktop,
//! CI-agent and platform images keep. Other crates (the portal's Docker backend, the controller's
//! templates) take tags and ports from here rather than spelling them again.

/// What an image is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// The Debian base everything is built on; not run by itself.
    Rootfs,
    /// A desktop: keeps the [`desktop`] contract.
    Desktop,
    /// A CI agent: keeps the [`ci_agent`] contract.
    CiAgent,
    /// A part of the platform itself (the controller, the portal): Deskpod's own binaries,
    /// built from this workspace, as the Helm chart runs them. Keeps the [`platform`] contract.
    Platform,
}

/// How an image is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `debootstrap --variant=minbase <suite>` from the host's mirror, `overlay` (a directory
    /// under the images directory) copied on top, imported into Docker.
    Debootstrap { suite: &'static str, overlay: &'static str },
    /// A Dockerfile build of `dir` (under the images directory) on top of the parent.
    ///
    /// `binaries` names Deskpod binaries (cargo `--bin` targets of this workspace) the image
    /// carries: the builder compiles them in release mode and puts each into the build context
    /// as `bin/<name>` (mode 0755), where the Dockerfile copies it from. They are part of the
    /// context hash, so a changed binary rebuilds the image.
    Dockerfile { dir: &'static str, binaries: &'static [&'static str] },
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
/// The controller's image.
pub const CONTROLLER: &str = "controller";
/// The portal's image.
pub const PORTAL: &str = "portal";

/// The platform's version, spelled once: the platform images' tags and [`platform::VERSION`].
/// It is the Helm chart's `appVersion` (the chart runs `deskpod/<name>:<appVersion>`) and the
/// version of the crates the binaries come from; tests fail when they drift apart.
macro_rules! platform_version {
    () => {
        "0.1.0"
    };
}

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
        source: Source::Dockerfile { dir: "desktop/base", binaries: &[] },
        summary: "XFCE on TigerVNC, noVNC over websocket on 6901",
    },
    ImageSpec {
        name: "java",
        tag: "deskpod/desktop-java:latest",
        kind: ImageKind::Desktop,
        parent: Some(DESKTOP_BASE),
        source: Source::Dockerfile { dir: "desktop/java", binaries: &[] },
        summary: "desktop with OpenJDK 17, Maven and Geany",
    },
    ImageSpec {
        name: "python",
        tag: "deskpod/desktop-python:latest",
        kind: ImageKind::Desktop,
        parent: Some(DESKTOP_BASE),
        source: Source::Dockerfile { dir: "desktop/python", binaries: &[] },
        summary: "desktop with python3, venv, pip and Geany",
    },
    ImageSpec {
        name: "node",
        tag: "deskpod/desktop-node:latest",
        kind: ImageKind::Desktop,
        parent: Some(DESKTOP_BASE),
        source: Source::Dockerfile { dir: "desktop/node", binaries: &[] },
        summary: "desktop with Node.js, npm and Geany",
    },
    ImageSpec {
        name: "ci-agent",
        tag: "deskpod/ci-agent:latest",
        kind: ImageKind::CiAgent,
        parent: Some(ROOTFS),
        source: Source::Dockerfile { dir: "ci-agent", binaries: &[] },
        summary: "JDK 17, curl and git; Jenkins inbound agent or a given command",
    },
    ImageSpec {
        name: CONTROLLER,
        tag: concat!("deskpod/controller:", platform_version!()),
        kind: ImageKind::Platform,
        parent: Some(ROOTFS),
        source: Source::Dockerfile { dir: "controller", binaries: &["deskpod-controller"] },
        summary: "deskpod-controller as uid 65532; admin port 9090",
    },
    ImageSpec {
        name: PORTAL,
        tag: concat!("deskpod/portal:", platform_version!()),
        kind: ImageKind::Platform,
        parent: Some(ROOTFS),
        source: Source::Dockerfile { dir: "portal", binaries: &["deskpod-portal", "deskpod"] },
        summary: "deskpod-portal and the deskpod CLI as uid 65532, noVNC's web files; 8080",
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

/// The Deskpod binaries `spec` carries (none for most images).
pub fn binaries(spec: &ImageSpec) -> &'static [&'static str] {
    match spec.source {
        Source::Dockerfile { binaries, .. } => binaries,
        Source::Debootstrap { .. } => &[],
    }
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

/// What the platform images (controller, portal) promise to whoever runs them — the Helm
/// chart's Deployments rely on it: the restricted Pod Security Standard (a numeric non-root
/// user, read-only root filesystem, no capabilities) works without anything else mounted but
/// the portal's data directory and /tmp.
pub mod platform {
    /// The version in the platform images' tags: the chart's `appVersion` and the version the
    /// binaries report (`--version`, the portal's `/healthz`).
    pub const VERSION: &str = platform_version!();
    /// The uid and gid the binaries run as (`USER 65532:65532`, numeric so the kubelet can check
    /// `runAsNonRoot`); the chart's `runAsUser`/`runAsGroup`/`fsGroup`.
    pub const UID: u32 = 65532;
    pub const GID: u32 = 65532;
    /// Where the binaries are in both images.
    pub const CONTROLLER_BIN: &str = "/usr/local/bin/deskpod-controller";
    pub const PORTAL_BIN: &str = "/usr/local/bin/deskpod-portal";
    pub const CLI_BIN: &str = "/usr/local/bin/deskpod";
    /// The controller's admin port (/healthz, /metrics), its `--admin-listen` default.
    pub const CONTROLLER_ADMIN_PORT: u16 = 9090;
    /// The portal's port as the chart runs it (`--listen 0.0.0.0:8080`).
    pub const PORTAL_PORT: u16 = 8080;
    /// The portal's metrics port as the chart runs it (`--metrics-listen 0.0.0.0:9090`).
    pub const PORTAL_METRICS_PORT: u16 = 9090;
    /// The portal's data directory (the SQLite database): owned by [`UID`], the working
    /// directory, and where the chart mounts its volume.
    pub const PORTAL_DATA_DIR: &str = "/var/lib/deskpod";
    /// Debian's noVNC web files, the portal's `--novnc-dir` default.
    pub const NOVNC_DIR: &str = "/usr/share/novnc";
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
            let Source::Dockerfile { dir, .. } = spec.source else { continue };
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
        assert_eq!(tag(CONTROLLER), Some("deskpod/controller:0.1.0"));
        assert_eq!(tag(PORTAL), Some("deskpod/portal:0.1.0"));
        let carrying: Vec<_> = CATALOGUE.iter().filter(|s| !binaries(s).is_empty()).map(|s| s.name).collect();
        assert_eq!(carrying, [CONTROLLER, PORTAL]);
    }

    /// The chart runs `<repository>:<appVersion>`; the repositories are the tags' names.
    #[test]
    fn the_platform_tags_carry_the_charts_app_version() {
        let chart_path = crate::default_images_dir().join("../charts/deskpod/Chart.yaml");
        let chart = std::fs::read_to_string(&chart_path).unwrap_or_else(|e| panic!("{}: {e}", chart_path.display()));
        let app_version =
            chart_app_version(&chart).unwrap_or_else(|| panic!("no appVersion in {}", chart_path.display()));
        assert_eq!(platform::VERSION, app_version, "the platform images' version and the chart's appVersion differ");
        for spec in CATALOGUE.iter().filter(|s| s.kind == ImageKind::Platform) {
            assert_eq!(spec.tag, format!("deskpod/{}:{app_version}", spec.name));
        }
        let values =
            std::fs::read_to_string(crate::default_images_dir().join("../charts/deskpod/values.yaml")).unwrap();
        for name in [CONTROLLER, PORTAL] {
            assert!(
                values.contains(&format!("repository: deskpod/{name}\n")),
                "values.yaml: no repository deskpod/{name}"
            );
        }
    }

    /// The top-level `appVersion:` of a Chart.yaml, unquoted.
    fn chart_app_version(chart: &str) -> Option<&str> {
        chart.lines().find_map(|line| line.strip_prefix("appVersion:")).map(|v| v.trim().trim_matches(['"', '\'']))
    }

    #[test]
    fn chart_app_version_reads_quoted_and_bare_values() {
        assert_eq!(chart_app_version("name: x\nappVersion: \"1.2.3\"\n"), Some("1.2.3"));
        assert_eq!(chart_app_version("appVersion: 1.2.3"), Some("1.2.3"));
        assert_eq!(chart_app_version("  appVersion: nested\nversion: 1"), None);
    }

    /// Every binary an image declares is a `bin` target of a workspace crate whose version is
    /// the platform's (what `--version` and the portal's /healthz report), as cargo sees it.
    #[test]
    fn the_declared_binaries_come_from_crates_of_the_platforms_version() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = std::process::Command::new(cargo)
            .args(["metadata", "--no-deps", "--format-version", "1", "--locked", "--offline"])
            .current_dir(crate::default_workspace_dir())
            .output()
            .expect("running cargo metadata");
        assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
        let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let packages = metadata["packages"].as_array().unwrap();
        for name in CATALOGUE.iter().flat_map(binaries) {
            let package = packages
                .iter()
                .find(|p| {
                    p["targets"].as_array().unwrap().iter().any(|t| {
                        t["name"] == *name && t["kind"].as_array().unwrap().iter().any(|k| k.as_str() == Some("bin"))
                    })
                })
                .unwrap_or_else(|| panic!("no workspace crate has a binary {name}"));
            assert_eq!(package["version"], platform::VERSION, "the crate of {name}");
        }
        // This crate too, so one version bump covers everything.
        assert_eq!(env!("CARGO_PKG_VERSION"), platform::VERSION);
    }

    /// The platform Dockerfiles copy every declared binary from the context and run as the
    /// contract's numeric user.
    #[test]
    fn platform_dockerfiles_copy_their_binaries_and_run_as_65532() {
        for spec in CATALOGUE.iter().filter(|s| s.kind == ImageKind::Platform) {
            let Source::Dockerfile { dir, binaries } = spec.source else { panic!("{} has no Dockerfile", spec.name) };
            let path = crate::default_images_dir().join(dir).join("Dockerfile");
            let text = std::fs::read_to_string(&path).unwrap();
            let instructions: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
            for name in binaries {
                let copied = instructions
                    .iter()
                    .any(|l| l.starts_with("COPY ") && l.split_whitespace().any(|w| w == format!("bin/{name}")));
                assert!(copied, "{}: no COPY of bin/{name}", path.display());
            }
            let users: Vec<_> = instructions.iter().filter_map(|l| l.strip_prefix("USER ")).collect();
            assert_eq!(
                users.last(),
                Some(&format!("{}:{}", platform::UID, platform::GID).as_str()),
                "{}",
                path.display()
            );
        }
    }
}
