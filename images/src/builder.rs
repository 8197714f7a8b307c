//! Builds the catalogue's images on the local Docker engine: in dependency order, each from a
//! deterministic context whose hash (with the parent's image id) is stored in the image's
//! [`CONTEXT_HASH_LABEL`]; an image whose label already matches is reused, not rebuilt.

use crate::apt::AptSources;
use crate::catalogue::{CATALOGUE, ImageSpec, Source};
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
    apt: AptSources,
}

impl Builder {
    /// `images_dir` holds the images' directories (this crate's directory, see
    /// [`crate::default_images_dir`]); `apt` is the host's sources file.
    pub fn new(docker: Docker, images_dir: PathBuf, apt: AptSources) -> Self {
        // bollard's timeout runs until the engine answers a request, and the engine may answer
        // a build or an import only once it has read (and unpacked) all that was sent.
        Builder { docker: docker.with_timeout(BUILD_TIMEOUT), images_dir, apt }
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
        let mut ids: HashMap<&str, String> = HashMap::new();
        let mut reports = Vec::new();
        for planned in plan {
            let spec = planned.spec;
            let parent_id = spec.parent.map(|p| ids[p].as_str());
            let input = self.input(spec, parent_id)?;
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

    /// Every catalogue image: present or not, and whether it matches its current context.
    pub async fn status(&self) -> Result<Vec<ImageStatus>> {
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
                    let input = self.input(spec, parent.and_then(|(id, _)| id).as_deref())?;
                    if label(image) == Some(input.hash.as_str()) { Freshness::UpToDate } else { Freshness::Outdated }
                }
            };
            parents.insert(spec.name, (id.clone(), freshness));
            let size = image.as_ref().and_then(|i| i.size).map(|s| s.max(0) as u64);
            out.push(ImageStatus { spec, id, size, freshness });
        }
        Ok(out)
    }

    /// The hash an image built now would carry, and how to make it.
    fn input(&self, spec: &ImageSpec, parent_id: Option<&str>) -> Result<BuildInput> {
        match spec.source {
            Source::Debootstrap { suite, overlay } => {
                let tar = build_context(&self.images_dir.join(overlay), &[])?;
                Ok(BuildInput {
                    hash: context_hash(&tar, &rootfs::recipe(suite)),
                    recipe: Recipe::Rootfs { suite, overlay },
                })
            }
            Source::Dockerfile { dir } => {
                let sources = ExtraFile {
                    path: APT_SOURCES_IN_CONTEXT.into(),
                    contents: self.apt.text.clone().into_bytes(),
                    executable: false,
                };
                let tar = build_context(&self.images_dir.join(dir), &[sources])?;
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

fn label(image: &ImageInspect) -> Option<&str> {
    image.config.as_ref()?.labels.as_ref()?.get(CONTEXT_HASH_LABEL).map(String::as_str)
}
