//! What a workspace is on a Docker host, as pure values: the names of its container, home volume
//! and team network, their labels, and the container's configuration rendered from the
//! controller's [`DesiredWorkspace`] (the same resolution of template, team limits and defaults
//! the Kubernetes pod gets).
//!
//! Names join the portal's instance id, team and workspace with `.`, which none may contain (all
//! are DNS labels), so two workspaces can never share a container or a volume.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, NetworkCreateRequest, RestartPolicy, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use deskpod_controller::quantity::{self, Milli};
use deskpod_controller::workspace::render::DesiredWorkspace;
use deskpod_images::catalogue::desktop;
use deskpod_images::probe::{Limits, desktop_container};

/// On every container, volume and network the portal creates: `deskpod-portal`.
pub const MANAGED_BY_LABEL: &str = "deskpod.io/managed-by";
pub const MANAGED_BY: &str = "deskpod-portal";
/// The portal instance (see [`Names`]) that created a container, volume or network.
pub const INSTANCE_LABEL: &str = "deskpod.io/instance";
/// The team a container, volume or network belongs to.
pub const TEAM_LABEL: &str = "deskpod.io/team";
/// The CI agent a container runs.
pub const AGENT_LABEL: &str = "deskpod.io/agent";
/// The workspace a container or volume belongs to.
pub const WORKSPACE_LABEL: &str = "deskpod.io/workspace";
/// The bridge driver's option that lets containers on one bridge talk to each other; a team
/// network sets it to `false` (see [`network`]).
pub const ICC_OPTION: &str = "com.docker.network.bridge.enable_icc";

/// CPU and memory a workspace gets when neither it, its template nor its team says: what a
/// desktop needs to be usable, and what the team's budget is charged.
pub const DEFAULT_CPU_LIMIT: &str = "2";
pub const DEFAULT_MEMORY_LIMIT: &str = "2Gi";
/// At most this many processes in a desktop (a fork bomb stays in its container).
pub const PIDS_LIMIT: i64 = 4096;

/// The names of one portal's containers, volumes and networks. Several portals (each with its
/// own database) can share a Docker Engine: each names and labels what it creates with its
/// instance id, and manages nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    instance: String,
}

impl Names {
    /// Names for the portal whose database holds `instance` (lowercase letters and digits).
    pub fn new(instance: &str) -> Self {
        Self { instance: instance.to_owned() }
    }

    /// The instance id, also the value of [`INSTANCE_LABEL`].
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The desktop container of a workspace.
    pub fn container(&self, team: &str, workspace: &str) -> String {
        format!("deskpod-{}.{team}.{workspace}", self.instance)
    }

    /// The home volume of a workspace.
    pub fn volume(&self, team: &str, workspace: &str) -> String {
        format!("deskpod-{}-home.{team}.{workspace}", self.instance)
    }

    /// The bridge network of a team's desktops and CI agents (see [`network`]).
    pub fn network(&self, team: &str) -> String {
        format!("deskpod-{}.{team}", self.instance)
    }

    /// The container of a CI agent.
    pub fn agent(&self, team: &str, agent: &str) -> String {
        format!("deskpod-{}-agent.{team}.{agent}", self.instance)
    }

    /// The labels of a CI agent's container.
    pub fn agent_labels(&self, team: &str, agent: &str) -> HashMap<String, String> {
        let mut labels = self.labels(team, None);
        labels.insert(AGENT_LABEL.to_owned(), agent.to_owned());
        labels
    }

    fn labels(&self, team: &str, workspace: Option<&str>) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            (INSTANCE_LABEL.to_owned(), self.instance.clone()),
            (TEAM_LABEL.to_owned(), team.to_owned()),
        ]);
        if let Some(workspace) = workspace {
            labels.insert(WORKSPACE_LABEL.to_owned(), workspace.to_owned());
        }
        labels
    }
}

/// What a running workspace takes from its team's budget: its CPU and memory limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Millicores.
    pub cpu: Milli,
    /// Thousandths of a byte, as [`quantity::parse`] counts.
    pub memory: Milli,
}

impl Default for Footprint {
    /// Nothing.
    fn default() -> Self {
        Footprint { cpu: Milli(0), memory: Milli(0) }
    }
}

impl Footprint {
    /// The limits `desired` resolves to, or the defaults where it sets none.
    pub fn of(desired: &DesiredWorkspace) -> Result<Self, String> {
        let resources = &desired.resources;
        let pick = |limit: &Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>, default: &str| {
            let raw = limit.as_ref().map_or(default, |q| q.0.as_str());
            quantity::parse(raw).map_err(|e| e.to_string())
        };
        Ok(Footprint {
            cpu: pick(&resources.cpu_limit, DEFAULT_CPU_LIMIT)?,
            memory: pick(&resources.memory_limit, DEFAULT_MEMORY_LIMIT)?,
        })
    }

    pub fn plus(self, other: Footprint) -> Footprint {
        Footprint { cpu: Milli(self.cpu.0 + other.cpu.0), memory: Milli(self.memory.0 + other.memory.0) }
    }
}

/// The team's network: a bridge on which no container reaches another, only the host (where the
/// portal runs and dials each desktop at its bridge address) and, through it, the outside.
///
/// Why this shape: a desktop's websockify port hands out its VNC session to whoever knows the
/// 8-character VNC password, so only the portal may open it. Docker already keeps bridges apart
/// (its `DOCKER-ISOLATION` chains drop what crosses from one bridge to another), and
/// `enable_icc=false` drops what goes from one container to another on the same bridge, while
/// traffic from the host itself is not forwarded and still passes. One network per workspace would
/// isolate as well, but each takes a subnet from the engine's address pools, and a default engine
/// has about 30 of them: a host would run out of networks long before it runs out of desktops.
/// CI agents share the team's network and are held apart the same way: a job talks to the
/// outside (its Jenkins controller, its Git server), never to a desktop or to another job.
pub fn network(names: &Names, team: &str) -> NetworkCreateRequest {
    NetworkCreateRequest {
        name: names.network(team),
        driver: Some("bridge".into()),
        labels: Some(names.labels(team, None)),
        options: Some(HashMap::from([(ICC_OPTION.to_owned(), "false".to_owned())])),
        ..NetworkCreateRequest::default()
    }
}

/// Whether a network with these driver options keeps its containers apart, as [`network`] makes
/// them. Networks made before that (by an older portal, or by hand) let them talk, and are
/// replaced.
pub fn isolates(options: Option<&HashMap<String, String>>) -> bool {
    options.and_then(|options| options.get(ICC_OPTION)).is_some_and(|icc| icc == "false")
}

/// The workspace's home volume.
pub fn volume(names: &Names, team: &str, workspace: &str) -> VolumeCreateRequest {
    VolumeCreateRequest {
        name: Some(names.volume(team, workspace)),
        labels: Some(names.labels(team, Some(workspace))),
        ..VolumeCreateRequest::default()
    }
}

/// The desktop container: the image's contract (VNC password, uid 1000), the template's
/// environment, its limits and `/dev/shm`, no capabilities and no privilege escalation, the home
/// volume at the home path, on the team's network only, restarted unless stopped.
pub fn desktop(
    names: &Names,
    desired: &DesiredWorkspace,
    password: &str,
    footprint: Footprint,
) -> Result<ContainerCreateBody, String> {
    let shm = quantity::parse_quantity(&desired.shm_size).map_err(|e| format!("/dev/shm size: {e}"))?;
    let limits = Limits {
        memory_bytes: i64::try_from(footprint.memory.0 / 1000).map_err(|_| "the memory limit is too large")?,
        nano_cpus: i64::try_from(footprint.cpu.0 * 1_000_000).map_err(|_| "the CPU limit is too large")?,
        shm_bytes: i64::try_from(shm.0 / 1000).map_err(|_| "the /dev/shm size is too large")?,
    };
    let mut body = desktop_container(&desired.image, Some(password), limits);
    let env = body.env.get_or_insert_with(Vec::new);
    // The contract's variables win over a template's of the same name.
    env.splice(0..0, desired.env.iter().map(|var| format!("{}={}", var.name, var.value)));
    body.user = Some(format!("{}:{}", desktop::UID, desktop::GID));
    body.hostname = Some(desired.name.clone());
    body.labels = Some(names.labels(&desired.team, Some(&desired.name)));
    let host = body.host_config.get_or_insert_with(HostConfig::default);
    host.memory_swap = host.memory; // no swap beyond the limit
    host.pids_limit = Some(PIDS_LIMIT);
    host.network_mode = Some(names.network(&desired.team));
    host.restart_policy =
        Some(RestartPolicy { name: Some(RestartPolicyNameEnum::UNLESS_STOPPED), maximum_retry_count: None });
    host.mounts = Some(vec![Mount {
        target: Some(desired.home_path.clone()),
        source: Some(names.volume(&desired.team, &desired.name)),
        typ: Some(MountType::VOLUME),
        ..Mount::default()
    }]);
    Ok(body)
}

/// What a refusal of the Docker Engine to create a desktop's container means when the template
/// is the cause, as a message naming the template: its image is not on this host (404 "No such
/// image"), or the engine cannot use the container the template describes (400, such as "invalid
/// reference format"). `None` for every other failure, which is the engine's.
pub fn template_refusal(template: &str, image: &str, status: u16, message: &str) -> Option<String> {
    match status {
        404 if message.contains("image") => Some(format!(
            "the template {template} cannot start: the image {image} is not on this host; build it with \
             `cargo run -p deskpod-images -- build` or `docker pull` it, or ask a platform admin to correct the template"
        )),
        400 if message.contains("reference format") => Some(format!(
            "the template {template} cannot start: Docker cannot use its image {image:?} ({message}); \
             a platform admin must correct the template"
        )),
        400 => Some(format!(
            "Docker refused the desktop container of template {template} ({message}); a platform admin must \
             correct the template"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use deskpod_controller::api::ReclaimPolicy;
    use deskpod_controller::api::{DesktopProtocol, EnvVar, TemplateResources};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;

    fn desired(resources: TemplateResources) -> DesiredWorkspace {
        DesiredWorkspace {
            name: "dev".into(),
            namespace: "team-a".into(),
            team: "a".into(),
            owner: "ada@example.com".into(),
            owner_hash: "h".into(),
            owner_reference: None,
            template: "python".into(),
            image: "deskpod/desktop-python:latest".into(),
            image_pull_policy: "IfNotPresent".into(),
            protocol: DesktopProtocol::Novnc,
            port: 6901,
            home_path: "/home/user".into(),
            home_size: Quantity("10Gi".into()),
            storage_class_name: None,
            reclaim_policy: ReclaimPolicy::Delete,
            shm_size: Quantity("512Mi".into()),
            resources,
            gpus: 0,
            env: vec![EnvVar { name: "VNC_PW".into(), value: "from-template".into() }],
            idle_timeout: None,
            scheduling: Default::default(),
        }
    }

    #[test]
    fn refusals_caused_by_the_template_name_it_and_the_engines_own_failures_do_not() {
        let missing = template_refusal("python", "deskpod/nope:1", 404, "No such image: deskpod/nope:1").unwrap();
        assert!(missing.contains("template python cannot start: the image deskpod/nope:1 is not on this host"));
        let invalid = template_refusal("python", "Bad;", 400, "invalid reference format").unwrap();
        assert!(
            invalid.contains("template python cannot start: Docker cannot use its image \"Bad;\" (invalid reference")
        );
        let other = template_refusal("python", "x", 400, "Minimum memory limit allowed is 6MB").unwrap();
        assert!(other.contains("template python (Minimum memory limit"), "{other}");
        // A missing network (404 without "image") and engine failures are not the template's.
        assert_eq!(template_refusal("python", "x", 404, "network deskpod-1.a not found"), None);
        assert_eq!(template_refusal("python", "x", 500, "no space left on device"), None);
    }

    #[test]
    fn names_cannot_collide_across_teams_or_portals() {
        let names = Names::new("1f2e3d4c");
        assert_ne!(names.container("a-b", "c"), names.container("a", "b-c"));
        assert_ne!(names.volume("a-b", "c"), names.volume("a", "b-c"));
        assert_ne!(names.container("a", "b"), Names::new("99999999").container("a", "b"));
        assert_eq!(names.network("a"), "deskpod-1f2e3d4c.a");
    }

    #[test]
    fn a_team_network_keeps_its_containers_apart_and_older_ones_are_recognised() {
        let made = network(&Names::new("1f2e3d4c"), "a");
        assert!(isolates(made.options.as_ref()), "{:?}", made.options);
        assert_eq!(made.driver.as_deref(), Some("bridge"));
        let options = |icc: Option<&str>| icc.map(|icc| HashMap::from([(ICC_OPTION.to_owned(), icc.to_owned())]));
        // What an older portal made (no options), or a hand-made network that allows it.
        assert!(!isolates(None));
        assert!(!isolates(Some(&HashMap::new())));
        assert!(!isolates(options(Some("true")).as_ref()));
        assert!(isolates(options(Some("false")).as_ref()));
    }

    #[test]
    fn limits_come_from_the_resolved_resources_or_the_defaults() {
        let set = TemplateResources {
            cpu_limit: Some(Quantity("1500m".into())),
            memory_limit: Some(Quantity("3Gi".into())),
            ..TemplateResources::default()
        };
        assert_eq!(
            Footprint::of(&desired(set)).unwrap(),
            Footprint { cpu: Milli(1500), memory: Milli(3 * (1 << 30) * 1000) }
        );
        assert_eq!(
            Footprint::of(&desired(TemplateResources::default())).unwrap(),
            Footprint { cpu: Milli(2000), memory: Milli(2 * (1 << 30) * 1000) }
        );
    }

    #[test]
    fn the_desktop_runs_unprivileged_with_its_limits_on_its_team_network() {
        let d = desired(TemplateResources::default());
        let names = Names::new("1f2e3d4c");
        let body = desktop(&names, &d, "secret-pw", Footprint::of(&d).unwrap()).unwrap();
        let host = body.host_config.as_ref().unwrap();
        assert_eq!(host.memory, Some(2 << 30));
        assert_eq!(host.memory_swap, Some(2 << 30));
        assert_eq!(host.nano_cpus, Some(2_000_000_000));
        assert_eq!(host.shm_size, Some(512 << 20));
        assert_eq!(host.cap_drop.as_deref(), Some(&["ALL".to_owned()][..]));
        assert_eq!(host.security_opt.as_deref(), Some(&["no-new-privileges".to_owned()][..]));
        assert_eq!(host.network_mode.as_deref(), Some("deskpod-1f2e3d4c.a"));
        assert!(host.privileged.is_none_or(|p| !p));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        let mount = &host.mounts.as_ref().unwrap()[0];
        assert_eq!(mount.source.as_deref(), Some("deskpod-1f2e3d4c-home.a.dev"));
        assert_eq!(mount.target.as_deref(), Some("/home/user"));
        // The password the portal holds is the one that counts: it comes last.
        let env = body.env.unwrap();
        assert_eq!(env.iter().rfind(|v| v.starts_with("VNC_PW=")).map(String::as_str), Some("VNC_PW=secret-pw"));
        let labels = body.labels.unwrap();
        assert_eq!((labels[WORKSPACE_LABEL].as_str(), labels[INSTANCE_LABEL].as_str()), ("dev", "1f2e3d4c"));
    }
}
