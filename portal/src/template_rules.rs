//! What a WorkspaceTemplate must be to be saved, on either backend: the one place the admin form,
//! the JSON API and both backends' template writes check a spec before anything is written.
//!
//! The rules are the CRD's (lengths, ranges, CEL rules of `controller/src/api/template.rs`) and
//! what the CRD cannot say but a workspace made from the template needs:
//!
//! - `image` is an OCI image reference in the grammar of distribution/reference (what Docker and
//!   the kubelet parse): `[registry[:port]/]path[:tag][@algorithm:hex]`, path components in
//!   lowercase, a tag of at most 128 characters, a digest of a known algorithm.
//! - CPU, memory, home and `/dev/shm` sizes are Kubernetes quantities (parsed exactly by
//!   [`deskpod_controller::quantity`]) between sane bounds, so a typo such as `999999999Ti` is
//!   refused instead of reaching a node:
//!
//!   | field                            | at least | at most |
//!   |----------------------------------|----------|---------|
//!   | `resources.cpuRequest`           | 0        | 256     |
//!   | `resources.cpuLimit`             | 10m      | 256     |
//!   | `resources.memoryRequest`        | 0        | 1Ti     |
//!   | `resources.memoryLimit`          | 64Mi     | 1Ti     |
//!   | `shmSize`                        | 1Mi      | 1Ti     |
//!   | `homeSize`                       | 1Mi      | 16Ti    |
//!   | `gpus`                           | 0        | 16      |
//! - A request is at most its limit, and `/dev/shm` (memory) at most the memory limit.
//!
//! Every refusal is a [`Refusal`] naming the spec's field in the API's spelling
//! (`resources.cpuLimit`), with a message for the admin who wrote it. Pure: no I/O.

use deskpod_controller::api::{TolerationOperator, WorkspaceTemplateSpec};
use deskpod_controller::quantity::{self, Milli};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a template spec cannot be saved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The field, as the JSON API spells it (`image`, `resources.memoryLimit`, `shmSize`).
    pub field: &'static str,
    /// What is wrong, quoting the value, for the admin to read.
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn refuse(field: &'static str, message: impl Into<String>) -> Result<(), Refusal> {
    Err(Refusal { field, message: message.into() })
}

/// Longest image reference (the CRD's `maxLength`).
pub const MAX_IMAGE_LEN: usize = 512;
/// Longest repository name, registry included (distribution/reference's `NameTotalLengthMax`).
pub const MAX_IMAGE_NAME_LEN: usize = 255;
/// Longest tag (distribution/reference).
pub const MAX_TAG_LEN: usize = 128;

/// Most CPU a workspace may request or be limited to: the cores of the largest machines clouds
/// rent (a workspace never spans nodes).
pub const MAX_CPU: &str = "256";
/// Smallest CPU limit: Docker refuses less than a hundredth of a CPU.
pub const MIN_CPU_LIMIT: &str = "10m";
/// Most memory a workspace may request or be limited to, and the largest `/dev/shm`: more than
/// any single desktop needs, small enough that a typo (`1Ei`) is caught.
pub const MAX_MEMORY: &str = "1Ti";
/// Smallest memory limit: no desktop starts in less.
pub const MIN_MEMORY_LIMIT: &str = "64Mi";
/// Largest home volume (the largest disks clouds offer).
pub const MAX_HOME_SIZE: &str = "16Ti";
/// Smallest home volume and `/dev/shm`.
pub const MIN_SIZE: &str = "1Mi";
/// Most GPUs a workspace gets (the CRD's range).
pub const MAX_GPUS: i32 = 16;

/// Checks a template's spec; the first rule it breaks is the refusal.
pub fn check(spec: &WorkspaceTemplateSpec) -> Result<(), Refusal> {
    text("displayName", "the display name", &spec.display_name, 1, 100)?;
    if let Some(description) = &spec.description {
        text("description", "the description", description, 0, 1000)?;
    }
    if spec.image.trim().is_empty() {
        return refuse("image", "the image must not be empty; write one such as deskpod/desktop-python:latest");
    }
    check_image(&spec.image).or_else(|reason| {
        refuse(
            "image",
            format!(
                "the image {:?} is not a valid image reference: {reason}; write one such as \
                 deskpod/desktop-python:latest or registry.example.com:5000/team/desktop:1.2",
                spec.image
            ),
        )
    })?;
    if !(1..=65535).contains(&spec.port) {
        return refuse("port", format!("the port is {}; it must be from 1 to 65535", spec.port));
    }
    if let Some(path) = &spec.home_path
        && (!path.starts_with('/') || path.contains("..") || path.chars().count() > 1024)
    {
        return refuse("homePath", format!("the home path {path:?} must be an absolute path without '..'"));
    }
    check_resources(spec)?;
    if !(0..=MAX_GPUS).contains(&spec.gpus) {
        return refuse("gpus", format!("a workspace gets 0 to {MAX_GPUS} GPUs, not {}", spec.gpus));
    }
    if let Some(class) = &spec.home_storage_class_name {
        text("homeStorageClassName", "the home storage class", class, 1, 253)?;
    }
    check_scheduling(spec)?;
    check_env(spec)?;
    if let Some(timeout) = &spec.idle_timeout {
        if timeout.len() > 32 {
            return refuse(
                "idleTimeout",
                format!("the idle timeout {timeout:?} is too long; write one such as 30m or 8h"),
            );
        }
        deskpod_controller::duration::parse(timeout)
            .map(drop)
            .or_else(|e| refuse("idleTimeout", format!("the idle timeout: {e}")))?;
    }
    Ok(())
}

/// A quantity field: its API name, its name in messages, its value, and its bounds.
struct Bounded<'a> {
    field: &'static str,
    what: &'static str,
    value: Option<&'a Quantity>,
    min: Option<&'static str>,
    max: &'static str,
}

impl Bounded<'_> {
    /// The value parsed and checked against the bounds; `None` when unset.
    fn check(&self) -> Result<Option<Milli>, Refusal> {
        let Some(value) = self.value else { return Ok(None) };
        let parsed = quantity::parse_quantity(value)
            .map_err(|e| Refusal { field: self.field, message: format!("{}: {e}", self.what) })?;
        let bound = |b: &str| quantity::parse(b).expect("the bounds are quantities");
        if parsed > bound(self.max) {
            refuse(self.field, format!("{} {} is more than a workspace may have ({})", self.what, value.0, self.max))?;
        }
        if let Some(min) = self.min
            && parsed < bound(min)
        {
            refuse(self.field, format!("{} {} is less than a workspace needs (at least {min})", self.what, value.0))?;
        }
        Ok(Some(parsed))
    }
}

fn field<'a>(
    field: &'static str,
    what: &'static str,
    value: &'a Option<Quantity>,
    min: Option<&'static str>,
    max: &'static str,
) -> Bounded<'a> {
    Bounded { field, what, value: value.as_ref(), min, max }
}

fn check_resources(spec: &WorkspaceTemplateSpec) -> Result<(), Refusal> {
    let r = &spec.resources;
    let cpu_request = field("resources.cpuRequest", "the CPU request", &r.cpu_request, None, MAX_CPU).check()?;
    let cpu_limit = field("resources.cpuLimit", "the CPU limit", &r.cpu_limit, Some(MIN_CPU_LIMIT), MAX_CPU).check()?;
    let memory_request =
        field("resources.memoryRequest", "the memory request", &r.memory_request, None, MAX_MEMORY).check()?;
    let memory_limit =
        field("resources.memoryLimit", "the memory limit", &r.memory_limit, Some(MIN_MEMORY_LIMIT), MAX_MEMORY)
            .check()?;
    field("homeSize", "the home size", &spec.home_size, Some(MIN_SIZE), MAX_HOME_SIZE).check()?;
    let shm = field("shmSize", "the shared memory size", &spec.shm_size, Some(MIN_SIZE), MAX_MEMORY).check()?;

    let show = |q: &Option<Quantity>| q.as_ref().map(|q| q.0.clone()).unwrap_or_default();
    if let (Some(request), Some(limit)) = (cpu_request, cpu_limit)
        && request > limit
    {
        refuse(
            "resources.cpuRequest",
            format!(
                "the CPU request {} is more than the CPU limit {}; a workspace cannot be promised more than it may use",
                show(&r.cpu_request),
                show(&r.cpu_limit)
            ),
        )?;
    }
    if let (Some(request), Some(limit)) = (memory_request, memory_limit)
        && request > limit
    {
        refuse(
            "resources.memoryRequest",
            format!(
                "the memory request {} is more than the memory limit {}; a workspace cannot be promised more than it may use",
                show(&r.memory_request),
                show(&r.memory_limit)
            ),
        )?;
    }
    if let (Some(shm), Some(limit)) = (shm, memory_limit)
        && shm > limit
    {
        refuse(
            "shmSize",
            format!(
                "the shared memory size {} is more than the memory limit {}; /dev/shm is memory and counts against the limit",
                show(&spec.shm_size),
                show(&r.memory_limit)
            ),
        )?;
    }
    Ok(())
}

fn check_scheduling(spec: &WorkspaceTemplateSpec) -> Result<(), Refusal> {
    if spec.node_selector.len() > 20 {
        return refuse("nodeSelector", format!("at most 20 node labels, not {}", spec.node_selector.len()));
    }
    if spec.tolerations.len() > 20 {
        return refuse("tolerations", format!("at most 20 tolerations, not {}", spec.tolerations.len()));
    }
    for toleration in &spec.tolerations {
        if let Some(key) = &toleration.key {
            text("tolerations", "a toleration's key", key, 1, 316)?;
        }
        if let Some(value) = &toleration.value {
            text("tolerations", "a toleration's value", value, 0, 63)?;
            if toleration.operator == TolerationOperator::Exists {
                return refuse("tolerations", "a toleration with operator Exists takes no value");
            }
        }
    }
    Ok(())
}

fn check_env(spec: &WorkspaceTemplateSpec) -> Result<(), Refusal> {
    if spec.env.len() > 100 {
        return refuse("env", format!("at most 100 environment variables, not {}", spec.env.len()));
    }
    let mut seen = std::collections::HashSet::new();
    for var in &spec.env {
        let mut chars = var.name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && var.name.len() <= 128;
        if !valid {
            return refuse("env", format!("{:?} is not a valid environment variable name", var.name));
        }
        if !seen.insert(var.name.as_str()) {
            return refuse("env", format!("the environment variable {} is set twice", var.name));
        }
        if var.value.chars().count() > 32768 {
            return refuse("env", format!("the value of {} is longer than 32768 characters", var.name));
        }
    }
    Ok(())
}

fn text(field: &'static str, what: &str, value: &str, min: usize, max: usize) -> Result<(), Refusal> {
    let chars = value.chars().count();
    if min > 0 && value.trim().is_empty() {
        return refuse(field, format!("{what} must not be empty"));
    }
    if chars > max {
        return refuse(field, format!("{what} is {chars} characters long; it may have at most {max}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Image references
// ---------------------------------------------------------------------------------------------

/// Checks `reference` against the grammar of distribution/reference, as Docker and the kubelet
/// parse it:
///
/// ```text
/// reference  := name [ ":" tag ] [ "@" digest ]
/// name       := [ domain "/" ] path-component ( "/" path-component )*
/// domain     := host [ ":" port ]      host: DNS labels joined by ".", or "[" IPv6 "]"
/// path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
/// tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
/// digest     := algorithm ":" hex      sha256 (64 hex), sha384 (96) or sha512 (128), lowercase
/// ```
///
/// The first component of the name is the registry when it has a `.` or `:`, is `localhost`, or
/// has uppercase letters (as Docker decides). The error says what is wrong, for a message.
pub fn check_image(reference: &str) -> Result<(), String> {
    if reference.is_empty() {
        return Err("it is empty".into());
    }
    if reference.len() > MAX_IMAGE_LEN {
        return Err(format!("it is {} characters long, and at most {MAX_IMAGE_LEN} are allowed", reference.len()));
    }
    if let Some(c) = reference.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-/:@[]+".contains(*c))) {
        return Err(format!("it contains {c:?}, which no image reference may contain"));
    }
    let (name_and_tag, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
        Some(i) => (&name_and_tag[..last_slash + i], Some(&name_and_tag[last_slash + i + 1..])),
        None => (name_and_tag, None),
    };
    check_name(name)?;
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it has no repository name".into());
    }
    if name.len() > MAX_IMAGE_NAME_LEN {
        return Err(format!(
            "its repository name is {} characters long, and at most {MAX_IMAGE_NAME_LEN} are allowed",
            name.len()
        ));
    }
    let path = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            check_domain(first)?;
            rest
        }
        _ => name,
    };
    if path.len() == 64 && path.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err("a 64-character hexadecimal string is an image ID, not a repository name".into());
    }
    for component in path.split('/') {
        check_path_component(component)?;
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (ipv6, after) =
            rest.split_once(']').ok_or_else(|| format!("the registry {domain:?} opens '[' without closing it"))?;
        if ipv6.is_empty() || !ipv6.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!("the registry {domain:?} is not an IPv6 address in brackets"));
        }
        match after {
            "" => (None, None),
            _ => (None, Some(after.strip_prefix(':').ok_or_else(|| format!("the registry {domain:?} is malformed"))?)),
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return Err(format!(
                "the registry {host:?} is not a host name (letters, digits and '-', in labels joined by '.')"
            ));
        }
    }
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("the registry's port {port:?} is not a number"));
    }
    Ok(())
}

fn check_path_component(component: &str) -> Result<(), String> {
    if component.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("the repository name must be lowercase, and {component:?} is not"));
    }
    let bad = || {
        format!(
            "{component:?} is not a repository path component: lowercase letters and digits, separated by \
             one '.', one or two '_', or '-'"
        )
    };
    if component.is_empty() || component.contains(['[', ']', '+', ':']) {
        return Err(bad());
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let (mut i, mut after_separator) = (0, true);
    while i < bytes.len() {
        if alnum(bytes[i]) {
            after_separator = false;
            i += 1;
            continue;
        }
        if after_separator {
            return Err(bad());
        }
        let start = i;
        let separator = bytes[i];
        while i < bytes.len() && bytes[i] == separator {
            i += 1;
        }
        let ok = match separator {
            b'.' => i - start == 1,
            b'_' => i - start <= 2,
            b'-' => true,
            _ => false,
        };
        if !ok {
            return Err(bad());
        }
        after_separator = true;
    }
    if after_separator {
        return Err(bad());
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if tag.is_empty() {
        return Err("its tag after ':' is empty".into());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!("its tag is {} characters long, and at most {MAX_TAG_LEN} are allowed", tag.len()));
    }
    if !tag.starts_with(word) || !tag.chars().all(|c| word(c) || c == '.' || c == '-') {
        return Err(format!("the tag {tag:?} must be letters, digits, '_', '.' and '-', not starting with '.' or '-'"));
    }
    Ok(())
}

fn check_digest(digest: &str) -> Result<(), String> {
    let (algorithm, hex) = digest
        .split_once(':')
        .ok_or_else(|| format!("the digest {digest:?} is not algorithm:hex, such as sha256:…"))?;
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(format!("the digest algorithm {algorithm:?} is not sha256, sha384 or sha512")),
    };
    if hex.len() != length || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("a {algorithm} digest is {length} lowercase hexadecimal digits"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use deskpod_controller::api::{EnvVar, Toleration};
    use rstest::rstest;

    use super::*;

    const SHA256: &str = "4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1";

    #[rstest]
    #[case("alpine")]
    #[case("alpine:3.20")]
    #[case("deskpod/desktop-python:latest")]
    #[case("library/ubuntu:24.04")]
    #[case("docker.io/library/ubuntu")]
    #[case("ghcr.io/acme/desktops/python:v1.2.3-rc_1")]
    #[case("registry.example.com:5000/team/desktop:1.2")]
    #[case("localhost/desktop")]
    #[case("localhost:5000/desktop:dev")]
    #[case("[::1]:5000/desktop")]
    #[case("[fe80::1]/desktop:x")]
    #[case("Registry.Example.COM/desktop")] // the registry may have uppercase, the path not
    #[case("a/b__c/d-e/f---g.h_i")]
    #[case("desktop:_private")]
    #[case("desktop:A.b-C_9")]
    #[case("localhost:5000")] // repository "localhost", tag "5000"
    fn valid_image_references(#[case] reference: &str) {
        assert_eq!(check_image(reference), Ok(()), "{reference}");
        let with_digest = format!("{reference}@sha256:{SHA256}");
        assert_eq!(check_image(&with_digest), Ok(()), "{with_digest}");
    }

    #[test]
    fn tags_and_digests_at_their_bounds() {
        assert_eq!(check_image(&format!("desktop:{}", "t".repeat(128))), Ok(()));
        assert!(check_image(&format!("desktop:{}", "t".repeat(129))).unwrap_err().contains("at most 128"));
        assert_eq!(check_image(&format!("desktop@sha512:{}", "a".repeat(128))), Ok(()));
        assert_eq!(check_image(&format!("desktop@sha384:{}", "0".repeat(96))), Ok(()));
        assert_eq!(check_image(&format!("{}/desktop", "a".repeat(200))), Ok(()));
        assert!(check_image(&format!("{}/desktop", "a".repeat(250))).unwrap_err().contains("at most 255"));
        assert!(check_image(&format!("d:{}", "a".repeat(600))).unwrap_err().contains("at most 512"));
    }

    #[rstest]
    #[case::shell("alpine;rm -rf /", "contains ';'")]
    #[case::space("alpine latest", "contains ' '")]
    #[case::newline("alpine\n", "contains '\\n'")]
    #[case::unicode("alpïne", "contains 'ï'")]
    #[case::uppercase_path("deskpod/Python", "must be lowercase")]
    #[case::uppercase_single_name("Deskpod", "must be lowercase")]
    #[case::empty_tag("alpine:", "tag after ':' is empty")]
    #[case::tag_starts_with_dot("alpine:.x", "not starting with '.' or '-'")]
    #[case::tag_starts_with_dash("alpine:-x", "not starting with '.' or '-'")]
    #[case::tag_with_slash_ish("alpine:a:b", "is not a repository path component")]
    #[case::leading_slash("/alpine", "is not a repository path component")]
    #[case::trailing_slash("alpine/", "is not a repository path component")]
    #[case::double_slash("a//b", "is not a repository path component")]
    #[case::leading_separator("a/-b", "is not a repository path component")]
    #[case::trailing_separator("a/b.", "is not a repository path component")]
    #[case::double_dot("a..b", "is not a repository path component")]
    #[case::triple_underscore("a___b", "is not a repository path component")]
    #[case::only_registry("registry.example.com/", "is not a repository path component")]
    #[case::bad_port("registry.example.com:port/desktop", "port \"port\" is not a number")]
    #[case::empty_port("registry.example.com:/desktop", "port \"\" is not a number")]
    #[case::bad_host("-registry.example.com/desktop", "is not a host name")]
    #[case::unclosed_ipv6("[::1/desktop", "without closing it")]
    #[case::image_id(SHA256, "image ID")]
    #[case::no_name(":latest", "no repository name")]
    #[case::digest_without_hex("alpine@sha256", "is not algorithm:hex")]
    #[case::digest_too_short("alpine@sha256:abc", "64 lowercase hexadecimal")]
    #[case::digest_uppercase_hex(
        "alpine@sha256:4BCFF63911FCB4448BD4FDACEC207030997CAF25E9BEA4045FA6C8C44DE311D1",
        "64 lowercase hexadecimal"
    )]
    #[case::digest_unknown_algorithm("alpine@md5:d41d8cd98f00b204e9800998ecf8427e", "is not sha256, sha384 or sha512")]
    #[case::two_digests("alpine@sha256:x@sha256:y", "64 lowercase hexadecimal")]
    fn invalid_image_references(#[case] reference: &str, #[case] reason: &str) {
        let error = check_image(reference).expect_err(reference);
        assert!(error.contains(reason), "{reference}: {error}");
    }

    fn spec() -> WorkspaceTemplateSpec {
        WorkspaceTemplateSpec::new("Python", "deskpod/desktop-python:latest")
    }

    fn q(value: &str) -> Option<Quantity> {
        Some(Quantity(value.into()))
    }

    type Spec = WorkspaceTemplateSpec;
    type Change = fn(&mut Spec);

    #[rstest]
    #[case::minimal(|_: &mut Spec| {})]
    #[case::defaults_of_single_host(|t: &mut Spec| {
        t.resources.cpu_request = q("500m");
        t.resources.cpu_limit = q("2");
        t.resources.memory_request = q("1Gi");
        t.resources.memory_limit = q("2Gi");
        t.shm_size = q("512Mi");
        t.home_size = q("10Gi");
        t.idle_timeout = Some("2h".into());
    })]
    #[case::request_equals_limit(|t: &mut Spec| { t.resources.cpu_request = q("1"); t.resources.cpu_limit = q("1000m") })]
    #[case::at_the_upper_bounds(|t: &mut Spec| {
        t.resources.cpu_request = q("256");
        t.resources.cpu_limit = q("256");
        t.resources.memory_limit = q("1Ti");
        t.shm_size = q("1Ti");
        t.home_size = q("16Ti");
        t.gpus = 16;
    })]
    #[case::at_the_lower_bounds(|t: &mut Spec| {
        t.resources.cpu_request = q("0");
        t.resources.cpu_limit = q("10m");
        t.resources.memory_limit = q("64Mi");
        t.shm_size = q("1Mi");
        t.home_size = q("1Mi");
    })]
    #[case::a_request_without_limit(|t: &mut Spec| t.resources.memory_request = q("4Gi"))]
    #[case::digest_pinned(|t: &mut Spec| t.image = format!("ghcr.io/acme/desktop@sha256:{SHA256}"))]
    #[case::env(|t: &mut Spec| t.env = vec![EnvVar { name: "LANG".into(), value: "C.UTF-8".into() }])]
    fn good_templates(#[case] change: Change) {
        let mut spec = spec();
        change(&mut spec);
        assert_eq!(check(&spec), Ok(()));
    }

    #[rstest]
    // The three of issue #24.
    #[case::shell_in_image(|t: &mut Spec| t.image = "alpine;rm -rf /".into(), "image", "is not a valid image reference: it contains ';'")]
    #[case::absurd_memory(|t: &mut Spec| t.resources.memory_limit = q("999999999Ti"), "resources.memoryLimit", "the memory limit 999999999Ti is more than a workspace may have (1Ti)")]
    #[case::request_over_limit(|t: &mut Spec| { t.resources.cpu_request = q("8"); t.resources.cpu_limit = q("1") }, "resources.cpuRequest", "the CPU request 8 is more than the CPU limit 1")]
    // Images.
    #[case::no_image(|t: &mut Spec| t.image = String::new(), "image", "the image must not be empty")]
    #[case::blank_image(|t: &mut Spec| t.image = "  ".into(), "image", "the image must not be empty")]
    #[case::uppercase_image(|t: &mut Spec| t.image = "deskpod/Python".into(), "image", "must be lowercase")]
    #[case::long_tag(|t: &mut Spec| t.image = format!("alpine:{}", "t".repeat(129)), "image", "at most 128")]
    // Quantities: not one, out of bounds, request over limit.
    #[case::cpu_not_a_quantity(|t: &mut Spec| t.resources.cpu_limit = q("lots"), "resources.cpuLimit", "the CPU limit: \"lots\" does not start with a number")]
    #[case::cpu_too_many(|t: &mut Spec| t.resources.cpu_limit = q("256001m"), "resources.cpuLimit", "the CPU limit 256001m is more than a workspace may have (256)")]
    #[case::cpu_request_too_many(|t: &mut Spec| t.resources.cpu_request = q("1k"), "resources.cpuRequest", "the CPU request 1k is more")]
    #[case::cpu_limit_zero(|t: &mut Spec| t.resources.cpu_limit = q("0"), "resources.cpuLimit", "at least 10m")]
    #[case::memory_limit_tiny(|t: &mut Spec| t.resources.memory_limit = q("6Mi"), "resources.memoryLimit", "at least 64Mi")]
    #[case::memory_request_too_much(|t: &mut Spec| t.resources.memory_request = q("2Ti"), "resources.memoryRequest", "more than a workspace may have (1Ti)")]
    #[case::memory_request_over_limit(|t: &mut Spec| { t.resources.memory_request = q("4Gi"); t.resources.memory_limit = q("2Gi") }, "resources.memoryRequest", "the memory request 4Gi is more than the memory limit 2Gi")]
    #[case::memory_in_decimal_and_binary(|t: &mut Spec| { t.resources.memory_request = q("1Gi"); t.resources.memory_limit = q("1G") }, "resources.memoryRequest", "more than the memory limit 1G")]
    #[case::memory_overflowing(|t: &mut Spec| t.resources.memory_limit = q("1e400"), "resources.memoryLimit", "is too large")]
    #[case::negative_shm(|t: &mut Spec| t.shm_size = q("-1Gi"), "shmSize", "the shared memory size: \"-1Gi\" is negative")]
    #[case::shm_over_memory_limit(|t: &mut Spec| { t.shm_size = q("4Gi"); t.resources.memory_limit = q("2Gi") }, "shmSize", "more than the memory limit 2Gi")]
    #[case::shm_zero(|t: &mut Spec| t.shm_size = q("0"), "shmSize", "at least 1Mi")]
    #[case::home_too_big(|t: &mut Spec| t.home_size = q("1Pi"), "homeSize", "the home size 1Pi is more than a workspace may have (16Ti)")]
    #[case::home_zero(|t: &mut Spec| t.home_size = q("0"), "homeSize", "at least 1Mi")]
    #[case::gpus_too_many(|t: &mut Spec| t.gpus = 17, "gpus", "0 to 16 GPUs, not 17")]
    #[case::gpus_negative(|t: &mut Spec| t.gpus = -1, "gpus", "0 to 16 GPUs, not -1")]
    // The rest of the CRD's rules.
    #[case::blank_display_name(|t: &mut Spec| t.display_name = " ".into(), "displayName", "the display name must not be empty")]
    #[case::long_description(|t: &mut Spec| t.description = Some("d".repeat(1001)), "description", "at most 1000")]
    #[case::port_zero(|t: &mut Spec| t.port = 0, "port", "from 1 to 65535")]
    #[case::port_too_high(|t: &mut Spec| t.port = 65536, "port", "from 1 to 65535")]
    #[case::relative_home(|t: &mut Spec| t.home_path = Some("home/user".into()), "homePath", "absolute path without '..'")]
    #[case::dotdot_home(|t: &mut Spec| t.home_path = Some("/home/../etc".into()), "homePath", "absolute path without '..'")]
    #[case::empty_storage_class(|t: &mut Spec| t.home_storage_class_name = Some(String::new()), "homeStorageClassName", "must not be empty")]
    #[case::bad_env(|t: &mut Spec| t.env = vec![EnvVar { name: "1X".into(), value: String::new() }], "env", "not a valid environment variable name")]
    #[case::env_twice(|t: &mut Spec| t.env = vec![EnvVar { name: "X".into(), value: String::new() }; 2], "env", "set twice")]
    #[case::exists_with_value(|t: &mut Spec| t.tolerations = vec![Toleration { key: Some("gpu".into()), operator: TolerationOperator::Exists, value: Some("yes".into()), effect: None }], "tolerations", "Exists takes no value")]
    #[case::bad_timeout(|t: &mut Spec| t.idle_timeout = Some("2 hours".into()), "idleTimeout", "the idle timeout: \"2 hours\" is not a duration")]
    fn bad_templates(#[case] change: Change, #[case] field: &str, #[case] message: &str) {
        let mut spec = spec();
        change(&mut spec);
        let refusal = check(&spec).expect_err("refused");
        assert_eq!(refusal.field, field, "{refusal:?}");
        assert!(refusal.message.contains(message), "expected {message:?} in {:?}", refusal.message);
    }
}
