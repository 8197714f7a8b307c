//! Which workspace an ingress controller's forward-auth request is about.
//!
//! Ingress controllers tell the original request in headers: Traefik and the NGINX `auth_request`
//! convention send `X-Forwarded-Host` and `X-Forwarded-Uri`; ingress-nginx sends
//! `X-Original-URL` (an absolute URL). A workspace is addressed either by host,
//! `<workspace>.<team>.<base domain>` (the controller's default route mode), or by path,
//! `/workspaces/<team>/<workspace>/...` (`--route-mode path`). The path form is checked first.

use axum::http::{HeaderMap, Uri};

/// A workspace named by team and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub team: String,
    pub name: String,
}

/// The original host and path of a forward-auth request, if the headers carry them.
pub fn original_request(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    if let Some(url) = header("x-original-url").and_then(|raw| raw.parse::<Uri>().ok()) {
        let host = url.host().map(str::to_owned).or_else(|| header("x-original-host").map(str::to_owned));
        return (host, Some(url.path().to_owned()));
    }
    let host = header("x-forwarded-host").or_else(|| header("x-original-host")).map(str::to_owned);
    let path = header("x-forwarded-uri").map(|uri| uri.split(['?', '#']).next().unwrap_or_default().to_owned());
    (host, path)
}

/// The workspace a request for `host` and `path` is about.
pub fn target(host: Option<&str>, path: Option<&str>) -> Option<Target> {
    path.and_then(target_of_path).or_else(|| host.and_then(target_of_host))
}

fn is_name(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 63
        && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !part.starts_with('-')
        && !part.ends_with('-')
}

fn target_of_path(path: &str) -> Option<Target> {
    let mut parts = path.strip_prefix("/workspaces/")?.split('/');
    let (team, name) = (parts.next()?, parts.next()?);
    (is_name(team) && is_name(name)).then(|| Target { team: team.into(), name: name.into() })
}

fn target_of_host(host: &str) -> Option<Target> {
    // Without the port; a bracketed IPv6 address is not a workspace host.
    let host =
        host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
    let host = host.to_ascii_lowercase();
    let mut labels = host.split('.');
    let (name, team) = (labels.next()?, labels.next()?);
    // At least one label of base domain after the team.
    labels.next().filter(|label| !label.is_empty())?;
    (is_name(name) && is_name(team)).then(|| Target { team: team.into(), name: name.into() })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use rstest::rstest;

    use super::*;

    fn target_of(team: &str, name: &str) -> Option<Target> {
        Some(Target { team: team.into(), name: name.into() })
    }

    #[rstest]
    #[case::host(Some("one.platform.desk.example.com"), Some("/"), target_of("platform", "one"))]
    #[case::host_with_port(Some("one.platform.example.com:8443"), None, target_of("platform", "one"))]
    #[case::host_upper_case(Some("One.Platform.example.com"), None, target_of("platform", "one"))]
    #[case::path(Some("desk.example.com"), Some("/workspaces/platform/one/vnc.html"), target_of("platform", "one"))]
    #[case::path_wins(Some("two.data.example.com"), Some("/workspaces/platform/one/"), target_of("platform", "one"))]
    #[case::path_without_trailing_slash(None, Some("/workspaces/platform/one"), target_of("platform", "one"))]
    #[case::too_few_labels(Some("platform.example"), Some("/"), None)]
    #[case::bare_host(Some("localhost"), None, None)]
    #[case::illegal_name(Some("o_ne.platform.example.com"), None, None)]
    #[case::path_too_short(None, Some("/workspaces/platform"), None)]
    #[case::path_traversal(None, Some("/workspaces/../one/x"), None)]
    #[case::other_path(Some("localhost"), Some("/api/v1/me"), None)]
    #[case::nothing(None, None, None)]
    fn targets(#[case] host: Option<&str>, #[case] path: Option<&str>, #[case] expected: Option<Target>) {
        assert_eq!(target(host, path), expected);
    }

    #[rstest]
    #[case::forwarded(&[("x-forwarded-host", "one.platform.example.com"), ("x-forwarded-uri", "/a?b=c")], (Some("one.platform.example.com"), Some("/a")))]
    #[case::original_url(&[("x-original-url", "https://one.platform.example.com/workspaces/x/y?z")], (Some("one.platform.example.com"), Some("/workspaces/x/y")))]
    #[case::original_url_wins(&[("x-original-url", "https://a.b.c/p"), ("x-forwarded-host", "d.e.f")], (Some("a.b.c"), Some("/p")))]
    #[case::none(&[], (None, None))]
    fn original_requests(#[case] headers: &[(&'static str, &str)], #[case] expected: (Option<&str>, Option<&str>)) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(axum::http::HeaderName::from_static(name), HeaderValue::from_str(value).unwrap());
        }
        let (host, path) = original_request(&map);
        assert_eq!((host.as_deref(), path.as_deref()), expected);
    }
}
