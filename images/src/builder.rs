//! Builds the catalogue's images on the local Docker engine: in dependency order, each from a
//! deterministic context whose hash (with the parent's image id) is stored in the image's
//! [`CONTEXT_HASH_LABEL`]; an image whose label already matches is reused, not rebuilt. Images
//! that carry Deskpod binaries get them from one cargo build ([`crate::binaries`]) before the
//! first image is looked at, and only when such an image is part of the request.

use crate::apt::AptSources;
use crate::binaries::{self, Binaries};
use crate::catalogue::{self, CATALOGUE, ImageSpec, Source};
use crate::context::{ExtraFile, build_context, context_hash};
use crate::plan::build_order;
use crate::progress::{Mode, Progress};
use crate::{CONTEXT_HASH_LABEL, Error, Result, rootfs};
use bollard::Docker;
use bollard::models::ImageInspect;
use bollard::query_parameters::{BuildImageOptionsBuilder, RemoveImageOptionsBuilder};
use futures::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the builder waits for the engine to answer one build or import request.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where the host's apt sources file goes in every build context.
pub const APT_SOURCES_IN_CONTEXT: &str = "apt/debian.sources";

/// The directory of the build context the Deskpod binaries go in (`bin/deskpod-portal`, ...).
pub const BINARIES_IN_CONTEXT: &str = "bin";

/// Connects to the Docker engine on its default socket (or `DOCKER_HOST`), checks that it
/// answers and agrees an API version with it (Debian's docker.io speaks an older one than
/// bollard's default). The error says how to get a daemon.
pub async fn connect_docker() -> Result<Docker> {
    const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
    let socket = std::env::var("DOCKER_HOST").ok().filter(|h| h.starts_with("unix://"));
    let socket = socket.as_deref().unwrap_or(DEFAULT_SOCKET);
    let unreachable = |message: String| Error::DockerUnreachable { socket: socket.to_string(), message };
    let path = socket.trim_start_matches("unix://");
    if !Path::new(path).exists() {
        return Err(unreachable("the socket does not exist (no dockerd is running)".into()));
    }
    let docker =
        Docker::connect_with_unix(socket, 120, bollard::API_DEFAULT_VERSION).map_err(|e| unreachable(e.to_string()))?;
    let docker = docker.negotiate_version().await.map_err(|e| unreachable(e.to_string()))?;
    docker.ping().await.map_err(|e| unreachable(e.to_string()))?;
    Ok(docker)
}

/// What `build` should do.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Image names to build (with the ancestors they need); empty means all.
    pub only: Vec<String>,
    /// Rebuild the requested images even when they are up to date (ancestors are still reused).
    pub force: bool,
    pub progress: Mode,
}

/// How an image of a build came to be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// Built now, taking this long.
    Built(Duration),
    /// Already up to date.
    Cached,
}

/// One image of a finished build.
#[derive(Clone, Debug)]
pub struct BuildReport {
    pub name: &'static str,
    pub tag: &'static str,
    pub id: String,
    /// Size in bytes, parents' layers included (as `docker images` shows it).
    pub size: u64,
    pub outcome: Outcome,
}

/// Whether an image on the engine matches what the builder would build now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    Missing,
    UpToDate,
    /// Present, but its context or parent changed since it was built.
    Outdated,
}

/// One catalogue image as the engine has it.
#[derive(Clone, Debug)]
pub struct ImageStatus {
    pub spec: &'static ImageSpec,
    pub id: Option<String>,
    pub size: Option<u64>,
    pub freshness: Freshness,
}

/// Builds the catalogue against one Docker engine.
pub struct Builder {
    docker: Docker,
    images_dir: PathBuf,
    workspace_dir: PathBuf,
    apt: AptSources,
}

impl Builder {
    /// `images_dir` holds the images' directories (this crate's directory, see
    /// [`crate::default_images_dir`]); `apt` is the host's sources file. The binaries are built
    /// in [`crate::default_workspace_dir`] unless [`Builder::with_workspace_dir`] says otherwise.
    pub fn new(docker: Docker, images_dir: PathBuf, apt: AptSources) -> Self {
        // bollard's timeout runs until the engine answers a request, and the engine may answer
        // a build or an import only once it has read (and unpacked) all that was sent.
        let workspace_dir = crate::default_workspace_dir();
        Builder { docker: docker.with_timeout(BUILD_TIMEOUT), images_dir, workspace_dir, apt }
    }

    /// The Cargo workspace the Deskpod binaries are built in.
    pub fn with_workspace_dir(mut self, dir: PathBuf) -> Self {
        self.workspace_dir = dir;
        self
    }

    /// Connects to the default engine with this crate's images and the host's default sources.
    pub async fn connect_default() -> Result<Self> {
        let apt = AptSources::read(Path::new(crate::apt::DEFAULT_SOURCES))?;
        Ok(Builder::new(connect_docker().await?, crate::default_images_dir(), apt))
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Builds what `options` asks for, reusing up-to-date images, and reports every image of
    /// the plan (ancestors included) in build order.
    pub async fn build(&self, options: &BuildOptions) -> Result<Vec<BuildReport>> {
        let plan = build_order(CATALOGUE, &options.only)?;
        let binaries = self.build_binaries(plan.iter().map(|p| p.spec), options.progress).await?;
        let mut ids: HashMap<&str, String> = HashMap::new();
        let mut reports = Vec::new();
        for planned in plan {
            let spec = planned.spec;
            let parent_id = spec.parent.map(|p| ids[p].as_str());
            let input = self.input(spec, parent_id, &binaries)?;
            let existing = self.inspect(spec.tag).await?;
            let reuse = existing.as_ref().is_some_and(|image| label(image) == Some(input.hash.as_str()))
                && !(options.force && planned.requested);

            let mut progress = Progress::new(spec.name, if reuse { Mode::Quiet } else { options.progress });
            let outcome = if reuse {
                Outcome::Cached
            } else {
                match input.recipe {
                    Recipe::Rootfs { suite, overlay } => {
                        let mirror = self.apt.mirror(suite)?;
                        progress.phase(&format!("debootstrap {suite} from {mirror}"));
                        let overlay = self.images_dir.join(overlay);
                        rootfs::make_rootfs(
                            &self.docker,
                            spec.tag,
                            suite,
                            &mirror,
                            &overlay,
                            &input.hash,
                            &mut progress,
                        )
                        .await?;
                    }
                    Recipe::Dockerfile { context } => {
                        let force = options.force && planned.requested;
                        self.build_one(spec, context, &input.hash, force, &mut progress).await?
                    }
                }
                Outcome::Built(progress.elapsed())
            };
            let image = self.inspect(spec.tag).await?.ok_or_else(|| Error::Build {
                tag: spec.tag.into(),
                step: None,
                message: "the engine reported success but has no image under the tag".into(),
                output: progress.recent_output(),
            })?;
            let id = image.id.clone().unwrap_or_default();
            if let Outcome::Built(took) = outcome {
                progress.finish(&format!("built {} in {:.0}s", spec.tag, took.as_secs_f64()));
                if let Some(old) = existing.and_then(|e| e.id)
                    && old != id
                {
                    self.remove_replaced(&old).await;
                }
            }
            ids.insert(spec.name, id.clone());
            reports.push(BuildReport {
                name: spec.name,
                tag: spec.tag,
                id,
                size: image.size.unwrap_or_default().max(0) as u64,
                outcome,
            });
        }
        Ok(reports)
    }

    /// Every catalogue image: present or not, and whether it matches its current context. An
    /// image that carries Deskpod binaries can be up to date only with the binaries as they are
    /// now, so when one is present (on an up-to-date parent) the binaries are built first
    /// (a no-op for cargo when nothing changed); `progress` shows that build.
    pub async fn status(&self, progress: Mode) -> Result<Vec<ImageStatus>> {
        let mut binaries: Option<Binaries> = None;
        let none = Binaries::new();
        let mut parents: HashMap<&str, (Option<String>, Freshness)> = HashMap::new();
        let mut out = Vec::new();
        for spec in CATALOGUE {
            let image = self.inspect(spec.tag).await?;
            let id = image.as_ref().and_then(|i| i.id.clone());
            let parent = spec.parent.map(|p| parents.get(p).cloned().unwrap_or((None, Freshness::Missing)));
            let freshness = match (&image, parent) {
                (None, _) => Freshness::Missing,
                // A rebuild of the parent will rebuild this one too.
                (Some(_), Some((_, Freshness::Missing | Freshness::Outdated))) => Freshness::Outdated,
                (Some(image), parent) => {
                    if binaries.is_none() && !catalogue::binaries(spec).is_empty() {
                        binaries = Some(self.build_binaries(CATALOGUE.iter(), progress).await?);
                    }
                    let input =
                        self.input(spec, parent.and_then(|(id, _)| id).as_deref(), binaries.as_ref().unwrap_or(&none))?;
                    if label(image) == Some(input.hash.as_str()) { Freshness::UpToDate } else { Freshness::Outdated }
                }
            };
            parents.insert(spec.name, (id.clone(), freshness));
            let size = image.as_ref().and_then(|i| i.size).map(|s| s.max(0) as u64);
            out.push(ImageStatus { spec, id, size, freshness });
        }
        Ok(out)
    }

    /// Builds the binaries `specs` carry (each once), or nothing when they carry none.
    async fn build_binaries(&self, specs: impl Iterator<Item = &ImageSpec>, mode: Mode) -> Result<Binaries> {
        let mut names: Vec<&str> = Vec::new();
        for name in specs.flat_map(catalogue::binaries) {
            if !names.contains(name) {
                names.push(name);
            }
        }
        if names.is_empty() {
            return Ok(Binaries::new());
        }
        let mut progress = Progress::new("binaries", mode);
        progress.phase(&format!(
            "cargo {} in {}",
            binaries::cargo_args(&names).join(" "),
            self.workspace_dir.display()
        ));
        let built = binaries::build(&self.workspace_dir, &names, &mut progress).await?;
        let how = if built.fresh { "up to date" } else { "built" };
        let size: usize = built.binaries.values().map(Vec::len).sum();
        progress.finish(&format!("{how}: {} ({:.1} MB, release)", names.join(", "), size as f64 / 1e6));
        Ok(built.binaries)
    }

    /// The hash an image built now would carry, and how to make it.
    fn input(&self, spec: &ImageSpec, parent_id: Option<&str>, binaries: &Binaries) -> Result<BuildInput> {
        match spec.source {
            Source::Debootstrap { suite, overlay } => {
                let tar = build_context(&self.images_dir.join(overlay), &[])?;
                Ok(BuildInput {
                    hash: context_hash(&tar, &rootfs::recipe(suite)),
                    recipe: Recipe::Rootfs { suite, overlay },
                })
            }
            Source::Dockerfile { dir, .. } => {
                let extra = context_extras(spec, &self.apt.text, binaries)?;
                let tar = build_context(&self.images_dir.join(dir), &extra)?;
                let parent = parent_id.ok_or_else(|| Error::Catalogue(format!("{} has no parent image", spec.name)))?;
                Ok(BuildInput { hash: context_hash(&tar, parent), recipe: Recipe::Dockerfile { context: tar } })
            }
        }
    }

    async fn build_one(
        &self,
        spec: &ImageSpec,
        context: Vec<u8>,
        hash: &str,
        force: bool,
        progress: &mut Progress,
    ) -> Result<()> {
        let fail = |progress: &Progress, message: String| Error::Build {
            tag: spec.tag.into(),
            step: progress.current_step().map(str::to_string),
            message,
            output: progress.recent_output(),
        };
        let options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(spec.tag)
            .rm(true)
            .forcerm(true)
            // A forced build must not come back from Docker's layer cache.
            .nocache(force)
            .labels(&HashMap::from([(CONTEXT_HASH_LABEL, hash)]))
            // The host's network, /etc/hosts and resolver: apt in a build reaches the mirror
            // exactly as the host's apt does.
            .networkmode("host")
            .build();
        progress.sent(context.len() as u64);
        let mut stream = self.docker.build_image(options, None, Some(bollard::body_full(context.into())));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(info)) => {
                        if let Some(text) = info.stream.as_deref() {
                            progress.output(text);
                        }
                        if let Some(status) = info.status.as_deref() {
                            progress.output(status);
                        }
                        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                            return Err(fail(progress, detail));
                        }
                    }
                    Some(Err(e)) => return Err(fail(progress, e.to_string())),
                    None => return Ok(()),
                },
                _ = tick.tick() => progress.redraw(),
            }
        }
    }

    async fn inspect(&self, tag: &str) -> Result<Option<ImageInspect>> {
        match self.docker.inspect_image(tag).await {
            Ok(image) => Ok(Some(image)),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(source) => Err(Error::Inspect { what: tag.to_string(), source }),
        }
    }

    /// Best effort: the image a rebuild replaced, now untagged. It stays when a container or
    /// another image still uses it.
    async fn remove_replaced(&self, id: &str) {
        let options = RemoveImageOptionsBuilder::default().build();
        if let Err(e) = self.docker.remove_image(id, Some(options), None).await {
            tracing::debug!(image = id, error = %e, "kept the replaced image");
        }
    }
}

/// What building an image now takes: the hash it will carry and how to make it.
struct BuildInput {
    hash: String,
    recipe: Recipe,
}

enum Recipe {
    Rootfs { suite: &'static str, overlay: &'static str },
    Dockerfile { context: Vec<u8> },
}

/// What the builder adds to an image's directory in its build context: the host's apt sources
/// and the Deskpod binaries the image carries (executable, under [`BINARIES_IN_CONTEXT`]).
pub fn context_extras<'a>(
    spec: &ImageSpec,
    apt_sources: &'a str,
    binaries: &'a Binaries,
) -> Result<Vec<ExtraFile<'a>>> {
    let mut extra =
        vec![ExtraFile { path: APT_SOURCES_IN_CONTEXT.into(), contents: apt_sources.as_bytes(), executable: false }];
    for name in catalogue::binaries(spec) {
        let contents = binaries
            .get(*name)
            .ok_or_else(|| Error::Catalogue(format!("{} carries {name}, which was not built", spec.name)))?;
        extra.push(ExtraFile { path: format!("{BINARIES_IN_CONTEXT}/{name}"), contents, executable: true });
    }
    Ok(extra)
}

fn label(image: &ImageInspect) -> Option<&str> {
    image.config.as_ref()?.labels.as_ref()?.get(CONTEXT_HASH_LABEL).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{CONTROLLER, PORTAL, find};

    fn binaries(contents: &[u8]) -> Binaries {
        ["deskpod-controller", "deskpod-portal", "deskpod"].map(|name| (name.to_string(), contents.to_vec())).into()
    }

    fn entries(tar: &[u8]) -> Vec<(String, u32)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().to_string_lossy().into_owned(), e.header().mode().unwrap())
            })
            .collect()
    }

    #[test]
    fn a_platform_context_holds_its_binaries_executable_under_bin() {
        let portal = find(PORTAL).unwrap();
        let built = binaries(b"\x7fELF portal");
        let extra = context_extras(portal, "Types: deb\n", &built).unwrap();
        let dir = crate::default_images_dir().join("portal");
        let tar = build_context(&dir, &extra).unwrap();
        assert_eq!(
            entries(&tar),
            [
                ("Dockerfile".to_string(), 0o644),
                ("apt/debian.sources".to_string(), 0o644),
                ("bin/deskpod".to_string(), 0o755),
                ("bin/deskpod-portal".to_string(), 0o755),
            ]
        );
    }

    #[test]
    fn a_changed_binary_changes_the_hash_and_the_same_binary_keeps_it() {
        let controller = find(CONTROLLER).unwrap();
        let dir = crate::default_images_dir().join("controller");
        let hash = |contents: &[u8]| {
            let built = binaries(contents);
            let tar = build_context(&dir, &context_extras(controller, "Types: deb\n", &built).unwrap()).unwrap();
            context_hash(&tar, "sha256:rootfs")
        };
        assert_eq!(hash(b"build one"), hash(b"build one"));
        assert_ne!(hash(b"build one"), hash(b"build two"));
    }

    #[test]
    fn images_without_binaries_get_only_the_apt_sources() {
        let python = find("python").unwrap();
        let none = Binaries::new();
        let extra = context_extras(python, "Types: deb\n", &none).unwrap();
        assert_eq!(extra.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), [APT_SOURCES_IN_CONTEXT]);
    }

    #[test]
    fn a_binary_that_was_not_built_is_an_error_naming_it() {
        let portal = find(PORTAL).unwrap();
        let mut built = binaries(b"x");
        built.remove("deskpod");
        let err = context_extras(portal, "", &built).unwrap_err().to_string();
        assert!(err.contains("portal carries deskpod,"), "{err}");
    }
}
