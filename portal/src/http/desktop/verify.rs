//! Which workspace an ingress controller's forward-auth request is about.
//!
//! The answer must name the desktop the ingress controller will serve, never one the client
//! chose, so two settings decide it, both fixed by the operator and never by the request
//! ([`ForwardAuthSettings`], from `deskpod-portal --desktop-route-mode`,
//! `--desktop-base-domain` and `--forward-auth-headers`):
//!
//! - **The route mode** matches the controller's `--route-mode`. Host mode: the workspace is the
//!   host, `<workspace>.<team>.<base domain>`, and the path is not looked at (it cannot lead to
//!   another host). Path mode: the host must be the base domain and the workspace is the path,
//!   `/workspaces/<team>/<workspace>/...`; a path with a dot-segment (`.`, `..`), an encoded
//!   separator or dot (`%2f`, `%5c`, `%2e`), an encoded percent (`%25`, double encoding), a
//!   backslash or a control character is refused, because a proxy or the desktop may resolve it
//!   to another workspace's prefix.
//! - **Which headers carry the original request** depends on the ingress controller, as only the
//!   ones it sets itself can be trusted: Traefik's forwardAuth (and the NGINX `auth_request`
//!   convention) overwrite `X-Forwarded-Host` and `X-Forwarded-Uri` but pass every other client
//!   header on, so `X-Original-URL` from a client would be believed; ingress-nginx sets
//!   `X-Original-URL` itself. The other kind's headers are ignored, and a header sent twice or
//!   holding a list is refused.

use axum::http::{HeaderMap, Uri};

/// A workspace named by team and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub team: String,
    pub name: String,
}

/// How the controller exposes desktops (its `--route-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RouteMode {
    /// `<workspace>.<team>.<base domain>/`.
    #[default]
    Host,
    /// `<base domain>/workspaces/<team>/<workspace>/`.
    Path,
}

/// Which request headers tell the original request, by ingress controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardedHeaders {
    /// `X-Forwarded-Host` and `X-Forwarded-Uri`: Traefik's forwardAuth, NGINX `auth_request`
    /// set-ups that set them.
    #[default]
    XForwarded,
    /// `X-Original-URL` (an absolute URL): ingress-nginx's `auth-url`.
    XOriginalUrl,
}

/// What forward auth believes about the original request; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardAuthSettings {
    pub route_mode: RouteMode,
    /// The controller's `--base-domain`, lower case, without a trailing dot.
    pub base_domain: String,
    pub headers: ForwardedHeaders,
}

impl Default for ForwardAuthSettings {
    /// The controller's defaults: host mode under `deskpod.localhost`, Traefik's headers.
    fn default() -> Self {
        Self {
            route_mode: RouteMode::Host,
            base_domain: "deskpod.localhost".into(),
            headers: ForwardedHeaders::XForwarded,
        }
    }
}

impl ForwardAuthSettings {
    /// Settings for `base_domain`, which must be a DNS name of at least one label.
    pub fn new(route_mode: RouteMode, base_domain: &str, headers: ForwardedHeaders) -> Result<Self, String> {
        let domain = base_domain.trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() || !domain.split('.').all(is_label) {
            return Err(format!("{base_domain:?} is not a domain name such as desk.example.com"));
        }
        Ok(Self { route_mode, base_domain: domain, headers })
    }

    /// The workspace the forward-auth request `headers` describe, or why none is named.
    pub fn target(&self, headers: &HeaderMap) -> Result<Target, &'static str> {
        let (host, path) = self.original_request(headers)?;
        let host = host.ok_or("the request names no host")?;
        let host = without_port(&host).ok_or("the host is not a name")?;
        match self.route_mode {
            RouteMode::Host => self.target_of_host(&host),
            RouteMode::Path => {
                if host != self.base_domain {
                    return Err("the host is not the desktops' domain");
                }
                target_of_path(&path.ok_or("the request names no path")?)
            }
        }
    }

    /// The original host and path (without query), from the headers this ingress kind sets.
    fn original_request(&self, headers: &HeaderMap) -> Result<(Option<String>, Option<String>), &'static str> {
        match self.headers {
            ForwardedHeaders::XForwarded => {
                let host = single(headers, "x-forwarded-host")?;
                let path = single(headers, "x-forwarded-uri")?.map(|uri| without_query(&uri).to_owned());
                Ok((host, path))
            }
            ForwardedHeaders::XOriginalUrl => {
                let Some(raw) = single(headers, "x-original-url")? else { return Ok((None, None)) };
                let url: Uri = raw.parse().map_err(|_| "X-Original-URL is not a URL")?;
                let host = url.authority().ok_or("X-Original-URL is not absolute")?;
                // The path as sent: `Uri` keeps percent-encoding and dot-segments untouched.
                Ok((Some(host.as_str().to_owned()), Some(url.path().to_owned())))
            }
        }
    }

    fn target_of_host(&self, host: &str) -> Result<Target, &'static str> {
        let refused = "the host is not a desktop's host";
        let prefix = host.strip_suffix(&self.base_domain).and_then(|p| p.strip_suffix('.')).ok_or(refused)?;
        let (name, team) = prefix.split_once('.').ok_or(refused)?;
        if !is_name(name) || !is_name(team) {
            return Err(refused);
        }
        Ok(Target { team: team.into(), name: name.into() })
    }
}

/// The value of a header sent at most once and holding one value (no comma-separated list, which
/// a proxy that appends would make of a client's own header).
fn single(headers: &HeaderMap, name: &str) -> Result<Option<String>, &'static str> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err("a forwarded header was sent more than once");
    }
    let value = value.to_str().map_err(|_| "a forwarded header is not text")?.trim();
    if value.contains(',') {
        return Err("a forwarded header holds a list");
    }
    Ok(Some(value.to_owned()).filter(|v| !v.is_empty()))
}

fn without_query(uri: &str) -> &str {
    uri.split(['?', '#']).next().unwrap_or_default()
}

/// The host in lower case without its port; `None` for a bracketed IPv6 address or a host with
/// anything but letters, digits, `-` and `.`.
fn without_port(host: &str) -> Option<String> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return None,
        None => host,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.split('.').all(is_label).then_some(name)
}

/// A DNS label: letters, digits and inner `-`, at most 63 long.
fn is_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// A team or workspace name (a lower-case DNS label, as the API allows).
fn is_name(part: &str) -> bool {
    is_label(part) && !part.bytes().any(|b| b.is_ascii_uppercase())
}

/// Refuses what a proxy or the desktop might resolve differently from how it reads here.
fn is_plain_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let encoded = ["%2e", "%2f", "%5c", "%25", "%00"];
    path.starts_with('/')
        && !path.bytes().any(|b| b == b'\\' || b.is_ascii_control())
        && !encoded.iter().any(|e| lower.contains(e))
        && !path.split('/').any(|segment| segment == "." || segment == "..")
}

fn target_of_path(path: &str) -> Result<Target, &'static str> {
    if !is_plain_path(path) {
        return Err("the path has dot-segments or encoded separators");
    }
    let refused = "the path is not a desktop's path";
    let mut parts = path.strip_prefix("/workspaces/").ok_or(refused)?.split('/');
    let (team, name) = (parts.next().ok_or(refused)?, parts.next().ok_or(refused)?);
    if !is_name(team) || !is_name(name) {
        return Err(refused);
    }
    Ok(Target { team: team.into(), name: name.into() })
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderName, HeaderValue};
    use rstest::rstest;

    use super::*;

    fn settings(mode: RouteMode, headers: ForwardedHeaders) -> ForwardAuthSettings {
        ForwardAuthSettings::new(mode, "desk.example.com", headers).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_static(name), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn target_of(team: &str, name: &str) -> Option<Target> {
        Some(Target { team: team.into(), name: name.into() })
    }

    use ForwardedHeaders::{XForwarded as Fwd, XOriginalUrl as Orig};
    use RouteMode::{Host, Path};

    #[rstest]
    // Host mode: the host alone decides.
    #[case::host(Host, Fwd, &[("x-forwarded-host", "one.platform.desk.example.com"), ("x-forwarded-uri", "/vnc.html")], target_of("platform", "one"))]
    #[case::host_with_port(Host, Fwd, &[("x-forwarded-host", "one.platform.desk.example.com:8443")], target_of("platform", "one"))]
    #[case::host_upper_case(Host, Fwd, &[("x-forwarded-host", "One.Platform.DESK.example.com")], target_of("platform", "one"))]
    #[case::host_trailing_dot(Host, Fwd, &[("x-forwarded-host", "one.platform.desk.example.com.")], target_of("platform", "one"))]
    #[case::host_ignores_a_workspace_path(Host, Fwd, &[("x-forwarded-host", "engb.beta.desk.example.com"), ("x-forwarded-uri", "/workspaces/default/enga/")], target_of("beta", "engb"))]
    #[case::host_other_domain(Host, Fwd, &[("x-forwarded-host", "one.platform.evil.test")], None)]
    #[case::host_domain_suffix_trick(Host, Fwd, &[("x-forwarded-host", "one.platform.desk.example.com.evil.test")], None)]
    #[case::host_domain_glued(Host, Fwd, &[("x-forwarded-host", "one.platformdesk.example.com")], None)]
    #[case::host_extra_label(Host, Fwd, &[("x-forwarded-host", "x.one.platform.desk.example.com")], None)]
    #[case::host_one_label(Host, Fwd, &[("x-forwarded-host", "platform.desk.example.com")], None)]
    #[case::host_is_the_domain(Host, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/platform/one/")], None)]
    #[case::host_illegal_name(Host, Fwd, &[("x-forwarded-host", "o_ne.platform.desk.example.com")], None)]
    #[case::host_ipv6(Host, Fwd, &[("x-forwarded-host", "[::1]:8080")], None)]
    #[case::host_bad_port(Host, Fwd, &[("x-forwarded-host", "one.platform.desk.example.com:x")], None)]
    #[case::host_list(Host, Fwd, &[("x-forwarded-host", "one.platform.desk.example.com, two.beta.desk.example.com")], None)]
    #[case::host_twice(Host, Fwd, &[("x-forwarded-host", "one.platform.desk.example.com"), ("x-forwarded-host", "two.beta.desk.example.com")], None)]
    #[case::host_none(Host, Fwd, &[("x-forwarded-uri", "/workspaces/platform/one/")], None)]
    // The client's X-Original-URL is not believed where the ingress sets X-Forwarded-*.
    #[case::client_original_url_ignored(Host, Fwd, &[("x-original-url", "https://engb.beta.desk.example.com/"), ("x-forwarded-host", "enga.default.desk.example.com")], target_of("default", "enga"))]
    #[case::client_original_url_alone(Host, Fwd, &[("x-original-url", "https://engb.beta.desk.example.com/")], None)]
    #[case::client_original_host_ignored(Host, Fwd, &[("x-original-host", "engb.beta.desk.example.com")], None)]
    // Path mode: the host must be the domain, the path decides.
    #[case::path(Path, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/platform/one/vnc.html?x=1")], target_of("platform", "one"))]
    #[case::path_without_slash(Path, Fwd, &[("x-forwarded-host", "desk.example.com:443"), ("x-forwarded-uri", "/workspaces/platform/one")], target_of("platform", "one"))]
    #[case::path_ignores_a_workspace_host(Path, Fwd, &[("x-forwarded-host", "engb.beta.desk.example.com"), ("x-forwarded-uri", "/workspaces/default/enga/")], None)]
    #[case::path_other_host(Path, Fwd, &[("x-forwarded-host", "evil.test"), ("x-forwarded-uri", "/workspaces/platform/one/")], None)]
    #[case::path_dot_dot(Path, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/default/enga/../../beta/engb/")], None)]
    #[case::path_dot(Path, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/default/enga/./x")], None)]
    #[case::path_encoded_dots(Path, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/default/enga/%2e%2e/%2E%2E/beta/engb/")], None)]
    #[case::path_half_encoded_dots(Path, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/default/enga/.%2e/.%2e/beta/engb/")], None)]
    #[case::path_encoded_slash(Path, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/default/enga%2f..%2f..%2fbeta/engb/")], None)]
    #[case::path_encoded_backslash(Path, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/default/enga/..%5c..%5cbeta/engb/")], None)]
    #[case::path_backslash(Path, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/default/enga/..\\..\\beta/engb/")], None)]
    #[case::path_double_encoding(Path, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/default/enga/%252e%252e/%252e%252e/beta/engb/")], None)]
    #[case::path_encoded_nul(Path, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/default/enga%00/")], None)]
    #[case::path_empty_team(Path, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces//beta/engb/")], None)]
    #[case::path_too_short(Path, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/platform")], None)]
    #[case::path_other(Path, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/api/v1/me")], None)]
    #[case::path_relative(Path, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "workspaces/platform/one/")], None)]
    #[case::path_upper_case_name(Path, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/Platform/one/")], None)]
    #[case::path_no_host(Path, Fwd, &[("x-forwarded-uri", "/workspaces/platform/one/")], None)]
    #[case::path_uri_twice(Path, Fwd, &[("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/default/enga/"), ("x-forwarded-uri", "/workspaces/beta/engb/")], None)]
    #[case::path_client_original_url_ignored(Path, Fwd, &[("x-original-url", "https://desk.example.com/workspaces/beta/engb/"), ("x-forwarded-host", "desk.example.com"), ("x-forwarded-uri", "/workspaces/default/enga/")], target_of("default", "enga"))]
    // ingress-nginx: only X-Original-URL, which it sets itself.
    #[case::original_url_host(Host, Orig, &[("x-original-url", "https://one.platform.desk.example.com/vnc.html?a=b")], target_of("platform", "one"))]
    #[case::original_url_path(Path, Orig, &[("x-original-url", "https://desk.example.com/workspaces/platform/one/")], target_of("platform", "one"))]
    #[case::original_url_ignores_forwarded(Host, Orig, &[("x-original-url", "https://enga.default.desk.example.com/"), ("x-forwarded-host", "engb.beta.desk.example.com")], target_of("default", "enga"))]
    #[case::original_url_forwarded_alone(Host, Orig, &[("x-forwarded-host", "engb.beta.desk.example.com")], None)]
    #[case::original_url_dot_dot(Path, Orig, &[("x-original-url", "https://desk.example.com/workspaces/default/enga/../../beta/engb/")], None)]
    #[case::original_url_encoded(Path, Orig, &[("x-original-url", "https://desk.example.com/workspaces/default/enga/%2E%2E/%2E%2E/beta/engb/")], None)]
    #[case::original_url_relative(Path, Orig, &[("x-original-url", "/workspaces/platform/one/")], None)]
    #[case::original_url_userinfo(Host, Orig, &[("x-original-url", "https://one.platform.desk.example.com@evil.test/")], None)]
    #[case::nothing(Host, Fwd, &[], None)]
    fn forward_auth_names_the_workspace_the_ingress_serves(
        #[case] mode: RouteMode,
        #[case] kind: ForwardedHeaders,
        #[case] pairs: &[(&'static str, &str)],
        #[case] expected: Option<Target>,
    ) {
        assert_eq!(settings(mode, kind).target(&headers(pairs)).ok(), expected);
    }

    #[rstest]
    #[case("desk.example.com", Ok("desk.example.com"))]
    #[case("Desk.Example.com.", Ok("desk.example.com"))]
    #[case("localhost", Ok("localhost"))]
    #[case("", Err(()))]
    #[case("desk..example.com", Err(()))]
    #[case("https://desk.example.com", Err(()))]
    #[case("*.example.com", Err(()))]
    fn base_domains(#[case] raw: &str, #[case] expected: Result<&str, ()>) {
        let parsed = ForwardAuthSettings::new(Host, raw, Fwd).map(|s| s.base_domain).map_err(|_| ());
        assert_eq!(parsed, expected.map(str::to_owned));
    }
}
