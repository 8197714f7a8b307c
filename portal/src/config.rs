//! The portal's configuration: what `main` reads from flags and the environment, in one value the
//! handlers share through [`crate::AppState`].

use std::time::Duration;

use axum::http::Uri;

use crate::error::{Error, Result};

/// How long a session lasts unless configured otherwise.
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// Settings shared by every handler.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where users reach the portal; invite links are built from it and it decides whether
    /// cookies are `Secure`.
    pub public_url: PublicUrl,
    /// How long a sign-in lasts.
    pub session_lifetime: Duration,
}

impl Config {
    /// A configuration with the default session lifetime.
    pub fn new(public_url: PublicUrl) -> Self {
        Self { public_url, session_lifetime: DEFAULT_SESSION_LIFETIME }
    }
}

/// The portal's public base URL, e.g. `https://deskpod.example.com`, without a trailing slash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUrl {
    base: String,
    secure_cookies: bool,
}

impl PublicUrl {
    /// Parses an `http` or `https` URL with a host and no query or fragment.
    pub fn parse(raw: &str) -> Result<Self> {
        let invalid = |why: &str| Error::Config(format!("public URL {raw:?} {why}"));
        let uri: Uri = raw.parse().map_err(|_| invalid("is not a URL"))?;
        let scheme = uri.scheme_str().ok_or_else(|| invalid("needs http:// or https://"))?;
        if scheme != "http" && scheme != "https" {
            return Err(invalid("needs http:// or https://"));
        }
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| invalid("has no host"))?;
        if uri.query().is_some() || raw.contains('#') {
            return Err(invalid("must not have a query or fragment"));
        }
        let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
        Ok(Self { base: raw.trim_end_matches('/').to_owned(), secure_cookies: scheme == "https" || !loopback })
    }

    /// The URL without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.base
    }

    /// Whether cookies carry `Secure`: always, except for plain http on localhost or 127.0.0.1,
    /// where browsers would otherwise drop them during local development.
    pub fn secure_cookies(&self) -> bool {
        self.secure_cookies
    }

    /// An absolute URL for a path that starts with `/`.
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("http://127.0.0.1:8080", false, "http://127.0.0.1:8080")]
    #[case("http://localhost:8080/", false, "http://localhost:8080")]
    #[case("http://[::1]:8080", false, "http://[::1]:8080")]
    #[case("https://localhost", true, "https://localhost")]
    #[case("https://deskpod.example.com/portal/", true, "https://deskpod.example.com/portal")]
    #[case("http://deskpod.example.com", true, "http://deskpod.example.com")]
    #[case("http://127.0.0.1.example.com", true, "http://127.0.0.1.example.com")]
    fn cookies_are_secure_except_plain_http_on_loopback(#[case] raw: &str, #[case] secure: bool, #[case] base: &str) {
        let url = PublicUrl::parse(raw).unwrap();
        assert_eq!(url.secure_cookies(), secure);
        assert_eq!(url.as_str(), base);
        assert_eq!(url.join("/invite/x"), format!("{base}/invite/x"));
    }

    #[rstest]
    #[case("deskpod.example.com")]
    #[case("ftp://deskpod.example.com")]
    #[case("https://deskpod.example.com/?a=b")]
    #[case("https://deskpod.example.com/#top")]
    #[case("not a url")]
    fn public_url_must_be_an_http_url(#[case] raw: &str) {
        let error = PublicUrl::parse(raw).unwrap_err();
        assert!(error.to_string().contains(raw), "{error}");
    }
}
