//! The SSRF guard: a webhook target must be a public address. A URL is checked when an endpoint
//! is added (every address its host resolves to) and again at every connection: the HTTP
//! client's resolver ([`GuardedResolver`]) resolves the host, refuses the request if any address
//! is forbidden, and hands the client only the addresses it checked, so a DNS answer that
//! changes between the check and the connection (DNS rebinding) cannot reach an internal
//! address. Redirects are not followed. `--webhook-allow-private` turns the guard off (tests,
//! and receivers on a private network).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Why a target URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the URL does not parse: {0}")]
    Malformed(String),
    #[error("the URL's scheme must be http or https")]
    Scheme,
    #[error("the URL has no host")]
    NoHost,
    #[error("the URL must not carry credentials")]
    Credentials,
    #[error("the host {host} does not resolve: {reason}")]
    Unresolved { host: String, reason: String },
    #[error(
        "the host {host} resolves to {ip}, a loopback, private, link-local or metadata address \
         (allowed only with --webhook-allow-private)"
    )]
    Forbidden { host: String, ip: IpAddr },
}

/// Whether `ip` is an address a webhook must not reach: loopback, unspecified, private
/// (RFC 1918), shared (carrier-grade NAT, RFC 6598), link-local (including the cloud metadata
/// address 169.254.169.254), benchmarking, documentation, multicast, broadcast or reserved;
/// for IPv6 also unique-local (fc00::/7, which holds AWS's fd00:ec2::254), link-local, and the
/// IPv4 addresses embedded in mapped, compatible, NAT64 and 6to4 forms.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    // ::a.b.c.d (deprecated IPv4-compatible), 64:ff9b::/96 (NAT64), 2002::/16 (6to4).
    if seg[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified() {
        return forbidden_v4(embedded_v4(seg[6], seg[7]));
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(embedded_v4(seg[6], seg[7]));
    }
    if seg[0] == 0x2002 {
        return forbidden_v4(embedded_v4(seg[1], seg[2]));
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00
        || (seg[0] & 0xffc0) == 0xfe80
        || (seg[0] & 0xffc0) == 0xfec0
        || (seg[0] == 0x2001 && seg[1] == 0x0db8)
        || (seg[0] == 0x0100 && seg[1..4] == [0, 0, 0])
}

fn embedded_v4(hi: u16, lo: u16) -> Ipv4Addr {
    let [a, b] = hi.to_be_bytes();
    let [c, d] = lo.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// A target URL's parts that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

/// Parses and checks the form of a target URL (http or https, a host, no credentials).
pub fn parse_target(url: &str) -> Result<Target, TargetError> {
    let uri: Uri = url
        .parse()
        .map_err(|e: ureq::http::uri::InvalidUri| TargetError::Malformed(e.to_string()))?;
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return Err(TargetError::Scheme),
    };
    let authority = uri.authority().ok_or(TargetError::NoHost)?;
    if authority.as_str().contains('@') {
        return Err(TargetError::Credentials);
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(TargetError::NoHost);
    }
    Ok(Target {
        host: host.to_owned(),
        port: authority.port_u16().unwrap_or(default_port),
    })
}

/// Checks a target URL when an endpoint is added: its form, and unless `allow_private`, every
/// address its host resolves to now.
pub async fn check_target(url: &str, allow_private: bool) -> Result<(), TargetError> {
    let target = parse_target(url)?;
    if allow_private {
        return Ok(());
    }
    let addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| TargetError::Unresolved {
            host: target.host.clone(),
            reason: e.to_string(),
        })?;
    check_addrs(&target.host, addrs)
}

fn check_addrs(host: &str, addrs: impl IntoIterator<Item = SocketAddr>) -> Result<(), TargetError> {
    let mut any = false;
    for addr in addrs {
        any = true;
        if is_forbidden(addr.ip()) {
            return Err(TargetError::Forbidden {
                host: host.to_owned(),
                ip: addr.ip(),
            });
        }
    }
    if any {
        Ok(())
    } else {
        Err(TargetError::Unresolved {
            host: host.to_owned(),
            reason: "no address".into(),
        })
    }
}

/// The HTTP client's resolver: the default resolution, then every address checked (see the
/// module docs). With `allow_private`, the default resolution alone.
#[derive(Debug, Default)]
pub struct GuardedResolver {
    pub allow_private: bool,
    inner: DefaultResolver,
}

impl GuardedResolver {
    pub fn new(allow_private: bool) -> Self {
        Self {
            allow_private,
            inner: DefaultResolver::default(),
        }
    }
}

impl Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let addrs = self.inner.resolve(uri, config, timeout)?;
        if !self.allow_private {
            let host = uri.host().unwrap_or_default();
            check_addrs(host, addrs.iter().copied()).map_err(|e| {
                ureq::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    e.to_string(),
                ))
            })?;
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(s: &str) -> bool {
        is_forbidden(s.parse().expect("an address"))
    }

    #[test]
    fn refuses_internal_addresses_and_allows_public_ones() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:a00:1::",
        ] {
            assert!(forbidden(ip), "{ip} must be refused");
        }
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(!forbidden(ip), "{ip} must be allowed");
        }
    }

    #[test]
    fn parses_targets() {
        assert_eq!(
            parse_target("https://hooks.example.com/x"),
            Ok(Target {
                host: "hooks.example.com".into(),
                port: 443
            })
        );
        assert_eq!(
            parse_target("http://[::1]:8080/"),
            Ok(Target {
                host: "::1".into(),
                port: 8080
            })
        );
        assert_eq!(parse_target("ftp://x/"), Err(TargetError::Scheme));
        assert_eq!(parse_target("http://u:p@x/"), Err(TargetError::Credentials));
        assert!(parse_target("not a url").is_err());
    }

    #[tokio::test]
    async fn a_loopback_target_is_refused_unless_allowed() {
        assert!(matches!(
            check_target("http://127.0.0.1:9/hook", false).await,
            Err(TargetError::Forbidden { .. })
        ));
        assert!(matches!(
            check_target("http://localhost:9/hook", false).await,
            Err(TargetError::Forbidden { .. })
        ));
        assert_eq!(check_target("http://127.0.0.1:9/hook", true).await, Ok(()));
    }
}
