//! The portal's configuration: what `main` reads from flags and the environment, in one value the
//! handlers share through [`crate::AppState`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    /// The reverse proxies whose `X-Forwarded-For` names the client; none by default.
    pub trusted_proxies: TrustedProxies,
}

impl Config {
    /// A configuration with the default session lifetime.
    pub fn new(public_url: PublicUrl) -> Self {
        Self { public_url, session_lifetime: DEFAULT_SESSION_LIFETIME, trusted_proxies: TrustedProxies::default() }
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

    /// Whether the URL is https (then responses carry `Strict-Transport-Security`).
    pub fn is_https(&self) -> bool {
        self.base.get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
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

/// A network in CIDR notation, such as `10.0.0.0/8`, `fd00::/8` or a single address `10.1.2.3`
/// (a /32, or /128 for IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    network: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `ADDRESS` or `ADDRESS/PREFIX`; host bits after the prefix are ignored.
    pub fn parse(raw: &str) -> Result<Self> {
        let raw = raw.trim();
        let invalid = |why: &str| Error::Config(format!("trusted proxy {raw:?} {why}"));
        let (addr, prefix) = match raw.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (raw, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| invalid("is not an IP address or network such as 10.0.0.0/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| invalid(&format!("has a prefix length that is not 0 to {max}")))?,
        };
        Ok(Self { network: mask(addr, prefix), prefix })
    }

    /// Whether `addr` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        addr.is_ipv4() == self.network.is_ipv4() && mask(addr, self.prefix) == self.network
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl std::str::FromStr for IpNet {
    type Err = Error;

    fn from_str(raw: &str) -> Result<Self> {
        Self::parse(raw)
    }
}

/// `addr` with every bit after the first `prefix` cleared.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

/// The reverse proxies (ingress controllers, load balancers) whose `X-Forwarded-For` header is
/// believed. Empty, the default: the client is the TCP peer, whatever the request's headers say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Trusts the proxies in `networks`.
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    /// Whether `addr` is one of the trusted proxies.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(addr))
    }

    /// The client's address. `peer` (the TCP peer) unless it is a trusted proxy; then the
    /// `X-Forwarded-For` entries (`forwarded_for`, the header values in order) are walked from the
    /// right, skipping trusted proxies, and the first address that is not one is the client. An
    /// entry that is not an address, or a chain of trusted proxies only, means the chain cannot be
    /// believed: then it is `peer`.
    pub fn client_addr<'a>(&self, peer: IpAddr, forwarded_for: impl IntoIterator<Item = &'a str>) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let entries: Vec<&str> = forwarded_for.into_iter().flat_map(|value| value.split(',')).collect();
        for entry in entries.iter().rev() {
            match parse_forwarded_addr(entry) {
                Some(addr) if self.contains(addr) => continue,
                Some(addr) => return addr,
                None => return peer,
            }
        }
        peer
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`10.1.2.3:5000`,
/// `[2001:db8::1]:5000`) or in brackets.
fn parse_forwarded_addr(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|socket| socket.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
        .map(|addr: IpAddr| addr.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("10.0.0.0/8", "10.0.0.0/8")]
    #[case("10.1.2.3/8", "10.0.0.0/8")]
    #[case("10.1.2.3", "10.1.2.3/32")]
    #[case(" 192.168.0.0/16 ", "192.168.0.0/16")]
    #[case("0.0.0.0/0", "0.0.0.0/0")]
    #[case("fd00::1/8", "fd00::/8")]
    #[case("::1", "::1/128")]
    fn networks_parse(#[case] raw: &str, #[case] shown: &str) {
        assert_eq!(IpNet::parse(raw).unwrap().to_string(), shown);
    }

    #[rstest]
    #[case("10.0.0.0/33")]
    #[case("::/129")]
    #[case("10.0.0.0/")]
    #[case("10.0.0.0/x")]
    #[case("ingress")]
    #[case("")]
    #[case("10.0.0.256")]
    fn bad_networks_are_refused_naming_the_entry(#[case] raw: &str) {
        let error = IpNet::parse(raw).unwrap_err();
        assert!(error.to_string().contains(&format!("{:?}", raw.trim())), "{error}");
    }

    #[rstest]
    #[case("10.0.0.0/8", "10.255.1.2", true)]
    #[case("10.0.0.0/8", "11.0.0.1", false)]
    #[case("10.0.0.0/8", "::ffff:10.1.2.3", true)]
    #[case("10.1.2.3", "10.1.2.4", false)]
    #[case("0.0.0.0/0", "203.0.113.9", true)]
    #[case("0.0.0.0/0", "2001:db8::1", false)]
    #[case("fd00::/8", "fd12::1", true)]
    #[case("fd00::/8", "fe80::1", false)]
    fn membership(#[case] net: &str, #[case] addr: &str, #[case] inside: bool) {
        assert_eq!(IpNet::parse(net).unwrap().contains(addr.parse().unwrap()), inside);
    }

    /// Proxies at 10.0.0.0/8 and fd00::/8; the peer and the X-Forwarded-For headers as sent.
    #[rstest]
    #[case::untrusted_peer_ignores_the_header("203.0.113.9", &["198.51.100.1"], "203.0.113.9")]
    #[case::one_proxy("10.0.0.5", &["198.51.100.1"], "198.51.100.1")]
    #[case::client_prefix_is_ignored("10.0.0.5", &["1.1.1.1, 198.51.100.1"], "198.51.100.1")]
    #[case::two_proxies("10.0.0.5", &["198.51.100.1, 10.0.0.7"], "198.51.100.1")]
    #[case::two_headers("10.0.0.5", &["1.1.1.1", "198.51.100.1, 10.0.0.7"], "198.51.100.1")]
    #[case::spoofed_proxy_on_the_left("10.0.0.5", &["10.0.0.9, 198.51.100.1"], "198.51.100.1")]
    #[case::no_header("10.0.0.5", &[], "10.0.0.5")]
    #[case::empty_header("10.0.0.5", &[""], "10.0.0.5")]
    #[case::only_proxies("10.0.0.5", &["10.0.0.6, 10.0.0.7"], "10.0.0.5")]
    #[case::garbage_on_the_right("10.0.0.5", &["198.51.100.1, unknown"], "10.0.0.5")]
    #[case::garbage_on_the_left("10.0.0.5", &["<script>, 198.51.100.1"], "198.51.100.1")]
    #[case::with_port("10.0.0.5", &["198.51.100.1:4711"], "198.51.100.1")]
    #[case::ipv6("fd00::5", &["2001:db8::1"], "2001:db8::1")]
    #[case::ipv6_brackets_and_port("10.0.0.5", &["[2001:db8::1]:4711"], "2001:db8::1")]
    #[case::ipv6_brackets("10.0.0.5", &["[2001:db8::1]"], "2001:db8::1")]
    #[case::mapped_ipv4("10.0.0.5", &["::ffff:198.51.100.1"], "198.51.100.1")]
    #[case::mapped_peer("::ffff:10.0.0.5", &["198.51.100.1"], "198.51.100.1")]
    #[case::spaces("10.0.0.5", &["  198.51.100.1 ,10.0.0.7  "], "198.51.100.1")]
    fn the_client_is_the_rightmost_untrusted_forwarded_address(
        #[case] peer: &str,
        #[case] headers: &[&str],
        #[case] client: &str,
    ) {
        let proxies = TrustedProxies::new(vec![IpNet::parse("10.0.0.0/8").unwrap(), IpNet::parse("fd00::/8").unwrap()]);
        assert_eq!(
            proxies.client_addr(peer.parse().unwrap(), headers.iter().copied()),
            client.parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(TrustedProxies::default().client_addr(peer, ["198.51.100.1"]), peer);
    }

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
