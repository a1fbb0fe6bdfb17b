//! Whom to believe: the trusted proxies (IPs and CIDR blocks), the original request a trusted
//! proxy describes in its headers, and the client address it forwards.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::extract::ConnectInfo;
use http::{HeaderMap, HeaderName, Method, Request};

/// One IP network: an address and a prefix length (a bare address is a `/32` or `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The proxies whose forwarded headers (`X-Forwarded-*`, `X-Original-*`, `X-Real-IP`) are
/// believed: a list of IP addresses and CIDR blocks. A request from any other peer is judged on
/// its own method, path and address; the headers are ignored, since anyone can send them.
///
/// IPv4-mapped IPv6 peers (`::ffff:127.0.0.1`) are matched as their IPv4 address.
///
/// ```
/// use keygate::forward_auth::TrustedProxies;
///
/// let trusted: TrustedProxies = "10.0.0.0/8, 192.168.1.7, ::1".parse()?;
/// assert!(trusted.contains("10.1.2.3".parse()?));
/// assert!(!trusted.contains("11.0.0.1".parse()?));
/// assert!(TrustedProxies::default().contains("127.0.0.1".parse()?));
/// assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<Net>,
}

/// A [`TrustedProxies`] list that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not an IP address or CIDR block (like 10.0.0.0/8 or ::1)")]
pub struct BadTrustedProxy {
    entry: String,
}

impl TrustedProxies {
    /// The default: loopback only, `127.0.0.0/8` and `::1` (a proxy on the same host).
    pub fn loopback() -> Self {
        Self {
            nets: vec![
                Net {
                    addr: IpAddr::from([127, 0, 0, 0]),
                    prefix: 8,
                },
                Net {
                    addr: IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                    prefix: 128,
                },
            ],
        }
    }

    /// Trusts no peer: forwarded headers are always ignored.
    pub fn none() -> Self {
        Self { nets: Vec::new() }
    }

    /// Parses a comma-separated list of addresses and CIDR blocks (blank entries are skipped).
    ///
    /// # Errors
    ///
    /// [`BadTrustedProxy`] naming the first entry that is neither.
    pub fn parse(list: &str) -> Result<Self, BadTrustedProxy> {
        let mut nets = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = || BadTrustedProxy {
                entry: entry.to_owned(),
            };
            let (addr, prefix) = match entry.split_once('/') {
                Some((addr, prefix)) => (addr, Some(prefix)),
                None => (entry, None),
            };
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
                None => max,
            };
            nets.push(Net { addr, prefix });
        }
        Ok(Self { nets })
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(ip))
    }

    /// Whether the request's peer (axum's `ConnectInfo<SocketAddr>`, or a bare `SocketAddr`
    /// extension) is trusted. A request with no known peer is not.
    pub fn trusts<B>(&self, request: &Request<B>) -> bool {
        peer(request).is_some_and(|ip| self.contains(ip))
    }

    /// The client's address: from a trusted peer, the rightmost `X-Forwarded-For` entry that is
    /// not itself a trusted proxy (or the leftmost, if all are), else `X-Real-IP`; otherwise,
    /// and from any untrusted peer, the peer address.
    pub fn client_ip<B>(&self, request: &Request<B>) -> Option<IpAddr> {
        let peer = peer(request);
        if !peer.is_some_and(|ip| self.contains(ip)) {
            return peer;
        }
        let headers = request.headers();
        let forwarded: Vec<IpAddr> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(parse_ip)
            .collect();
        if let Some(client) = forwarded.iter().rev().find(|ip| !self.contains(**ip)) {
            return Some(*client);
        }
        if let Some(first) = forwarded.first() {
            return Some(*first);
        }
        headers
            .get(X_REAL_IP)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_ip)
            .or(peer)
    }
}

impl Default for TrustedProxies {
    fn default() -> Self {
        Self::loopback()
    }
}

impl FromStr for TrustedProxies {
    type Err = BadTrustedProxy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

/// An address as proxies write it: bare, `ip:port`, or `[v6]:port`.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
}

/// The peer address of a request.
fn peer<B>(request: &Request<B>) -> Option<IpAddr> {
    let extensions = request.extensions();
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
        .or_else(|| extensions.get::<SocketAddr>().map(SocketAddr::ip))
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");

/// The request the proxy is asking about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Original {
    pub(crate) method: Method,
    /// The path, without the query (which may carry a credential, so it is never kept).
    pub(crate) path: String,
    /// A trusted peer sent both `X-Forwarded-Method` and `X-Original-Method`, and they differ:
    /// one of them is a client's forgery passed through (nginx forwards every client header;
    /// Traefik and Caddy do too, except the ones they set), so neither is believed for policy.
    pub(crate) conflicting: bool,
}

impl Original {
    /// Reads the original request: from a trusted peer, `X-Forwarded-Method`/`-Uri` (Traefik,
    /// Caddy), else `X-Original-Method` + `X-Original-URI`/`-URL` (nginx, ingress-nginx);
    /// otherwise the request's own method and its path below `prefix` (Envoy `path_prefix`).
    pub(crate) fn read<B>(request: &Request<B>, trusted: bool, prefix: &str) -> Self {
        let own_method = request.method();
        let headers = request.headers();
        if trusted {
            let conflicting = match (
                headers.get(X_FORWARDED_METHOD),
                headers.get(X_ORIGINAL_METHOD),
            ) {
                (Some(forwarded), Some(original)) => forwarded != original,
                _ => false,
            };
            if let Some(mut found) = from_headers(
                headers,
                own_method,
                &X_FORWARDED_METHOD,
                &[&X_FORWARDED_URI],
            ) {
                found.conflicting = conflicting;
                return found;
            }
            if let Some(found) = from_headers(
                headers,
                own_method,
                &X_ORIGINAL_METHOD,
                &[&X_ORIGINAL_URI, &X_ORIGINAL_URL],
            ) {
                return found;
            }
        }
        let path = request.uri().path();
        let rest = path.strip_prefix(prefix).unwrap_or(path);
        Original {
            method: own_method.clone(),
            conflicting: false,
            path: if rest.is_empty() {
                "/".to_owned()
            } else {
                rest.to_owned()
            },
        }
    }
}

/// The original request from a method header and URI headers, if any of them is present.
fn from_headers(
    headers: &HeaderMap,
    own_method: &Method,
    method: &HeaderName,
    uris: &[&HeaderName],
) -> Option<Original> {
    let method_value = headers
        .get(method)
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok());
    let uri_value = uris
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()));
    if method_value.is_none() && uri_value.is_none() {
        return None;
    }
    Some(Original {
        conflicting: false,
        method: method_value.unwrap_or_else(|| own_method.clone()),
        path: uri_value.map_or_else(|| "/".to_owned(), path_of),
    })
}

/// The path of a request target (`/a?b`, or an absolute `https://host/a?b`), without query or
/// fragment.
fn path_of(target: &str) -> String {
    let without_origin = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => target,
    };
    let path = without_origin
        .split(['?', '#'])
        .next()
        .unwrap_or(without_origin);
    if path.is_empty() {
        "/".to_owned()
    } else {
        path.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut request = Request::builder().uri("/v1/authz/api/x?key=1");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.body(()).unwrap();
        let addr: SocketAddr = peer.parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(addr));
        request
    }

    #[test]
    fn cidr_blocks_match_their_addresses_only() {
        let t = TrustedProxies::parse("10.0.0.0/8,192.168.1.7,fd00::/8,0.0.0.0/0").unwrap();
        assert!(
            t.contains("8.8.8.8".parse().unwrap()),
            "0.0.0.0/0 is every v4"
        );
        let t = TrustedProxies::parse("10.0.0.0/8,192.168.1.7,fd00::/8").unwrap();
        assert!(t.contains("10.255.0.1".parse().unwrap()));
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        assert!(t.contains("192.168.1.7".parse().unwrap()));
        assert!(!t.contains("192.168.1.8".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(!t.contains("fe80::1".parse().unwrap()));
        assert!(TrustedProxies::loopback().contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(TrustedProxies::loopback().contains("::1".parse().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "localhost",
            "10.0.0/8",
            "1.2.3.4/-1",
        ] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            TrustedProxies::parse(" , ").unwrap(),
            TrustedProxies::none()
        );
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_peers() {
        let headers = [
            ("x-forwarded-method", "OPTIONS"),
            ("x-forwarded-uri", "/api/y?k=2"),
            ("x-forwarded-for", "203.0.113.9, 10.0.0.2"),
        ];
        let trusted = TrustedProxies::parse("127.0.0.1,10.0.0.0/8").unwrap();
        let request = from("127.0.0.1:5000", &headers);
        let original = Original::read(&request, trusted.trusts(&request), "/v1/authz");
        assert_eq!(original.method, Method::OPTIONS);
        assert_eq!(original.path, "/api/y");
        assert_eq!(
            trusted.client_ip(&request),
            Some("203.0.113.9".parse().unwrap())
        );

        let request = from("198.51.100.1:5000", &headers);
        let original = Original::read(&request, trusted.trusts(&request), "/v1/authz");
        assert_eq!(original.method, Method::GET);
        assert_eq!(original.path, "/api/x");
        assert_eq!(
            trusted.client_ip(&request),
            Some("198.51.100.1".parse().unwrap())
        );
    }

    #[test]
    fn disagreeing_method_headers_are_a_conflict() {
        let request = from(
            "127.0.0.1:1",
            &[
                ("x-original-method", "GET"),
                ("x-forwarded-method", "OPTIONS"),
            ],
        );
        let original = Original::read(&request, true, "/v1/authz");
        assert!(original.conflicting);
        let request = from(
            "127.0.0.1:1",
            &[
                ("x-original-method", "OPTIONS"),
                ("x-forwarded-method", "OPTIONS"),
            ],
        );
        assert!(!Original::read(&request, true, "/v1/authz").conflicting);
    }

    #[test]
    fn nginx_headers_and_absolute_urls() {
        let request = from(
            "127.0.0.1:1",
            &[
                ("x-original-method", "POST"),
                ("x-original-url", "https://example.com/a/b?c=d"),
                ("x-real-ip", "192.0.2.4"),
            ],
        );
        let original = Original::read(&request, true, "/v1/authz");
        assert_eq!(original.method, Method::POST);
        assert_eq!(original.path, "/a/b");
        assert!(!original.conflicting);
        let trusted = TrustedProxies::loopback();
        assert_eq!(
            trusted.client_ip(&request),
            Some("192.0.2.4".parse().unwrap())
        );
        assert_eq!(path_of("https://example.com"), "/");
    }
}
