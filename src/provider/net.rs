//! Where provider calls may go: every outbound address (HTTP and SMTP) is
//! checked *after* DNS resolution, at call time. Loopback, private,
//! link-local (cloud metadata at 169.254.169.254 among them), shared
//! (100.64/10), unspecified, multicast, broadcast and documentation
//! addresses are refused, in IPv4 and IPv6 (IPv4-mapped, -compatible,
//! NAT64 and 6to4 forms are judged by the IPv4 address they carry), unless
//! the operator lists the network in `providers.allowed_private_networks`.
//!
//! - HTTP: [`GuardedResolver`] is the reqwest client's resolver and drops
//!   refused addresses from every lookup; a URL whose host is a literal IP
//!   (which reqwest never resolves) is checked by [`NetworkPolicy::check_url`]
//!   before the request is sent (`http::execute`). Redirects are never
//!   followed (`redirect::Policy::none()`).
//! - SMTP: [`NetworkPolicy::check_host`] resolves the relay and refuses it
//!   before lettre connects. lettre resolves the name again itself, so a DNS
//!   answer that changes between the two lookups (rebinding) is not caught
//!   for SMTP; tenants cannot choose SMTP hosts outside the operator's
//!   allow-list, which is what closes that path.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The outbound address rule shared by every provider of a process.
#[derive(Debug, Clone, Default)]
pub struct NetworkPolicy {
    /// Networks allowed although they are not public.
    allowed: Vec<IpNet>,
}

/// An address the policy refuses (names the host, never credentials).
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{host} resolves only to addresses that are not allowed (loopback, private, link-local, metadata…): an operator may allow the network in providers.allowed_private_networks"
)]
pub struct Refused {
    pub host: String,
}

impl NetworkPolicy {
    /// Public addresses only.
    pub fn public_only() -> Self {
        Self::default()
    }

    /// Public addresses and the given networks (`10.0.0.0/8`, `127.0.0.1`,
    /// `::1/128`); a bare address is a one-address network.
    pub fn allowing<S: AsRef<str>>(networks: &[S]) -> Result<Self, String> {
        let allowed = networks
            .iter()
            .map(|n| parse_network(n.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { allowed })
    }

    /// Whether a call may connect to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.allowed.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        // An IPv4 address carried in IPv6 is judged (and allow-listed) as itself.
        if let Some(v4) = embedded_v4(ip)
            && self.allowed.iter().any(|n| n.contains(&IpAddr::V4(v4)))
        {
            return true;
        }
        is_public(ip)
    }

    /// Refuse a URL whose host is a literal address the policy refuses
    /// (names go through [`GuardedResolver`]).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(a)) => IpAddr::V4(a),
            Some(url::Host::Ipv6(a)) => IpAddr::V6(a),
            _ => return Ok(()),
        };
        if self.allows(ip) {
            Ok(())
        } else {
            Err(Refused {
                host: url.host_str().unwrap_or_default().to_owned(),
            })
        }
    }

    /// Resolve `host` and keep the allowed addresses; refused when none is.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let addrs = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| ResolveError::Lookup(host.to_owned(), e.to_string()))?;
        let allowed: Vec<SocketAddr> = addrs.filter(|a| self.allows(a.ip())).collect();
        if allowed.is_empty() {
            return Err(ResolveError::Refused(Refused {
                host: host.to_owned(),
            }));
        }
        Ok(allowed)
    }

    /// [`Self::resolve`] when only the verdict matters (SMTP, before lettre connects).
    pub async fn check_host(&self, host: &str, port: u16) -> Result<(), ResolveError> {
        self.resolve(host, port).await.map(|_| ())
    }
}

/// Why a host could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {0}: {1}")]
    Lookup(String, String),
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// `10.0.0.0/8` or a bare address.
pub fn parse_network(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| "expected a network such as 10.0.0.0/8 or an address".to_owned())
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`), 6to4 (`2002::/16`).
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0; 6] && v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST {
        return Some(tail);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// A globally routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(ip) {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                // fe80::/10 link-local, fec0::/10 site-local (deprecated).
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                // fc00::/7 unique local (AWS metadata: fd00:ec2::254).
                || (s[0] & 0xfe00) == 0xfc00
                // 2001:db8::/32 documentation; 100::/64 discard.
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]))
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    !(v4.is_unspecified()
        || v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_multicast()
        || v4.is_broadcast()
        || v4.is_documentation()
        // 0.0.0.0/8 "this network".
        || o[0] == 0
        // 100.64.0.0/10 shared address space (also Alibaba's metadata 100.100.100.200).
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        // 192.0.0.0/24 IETF protocol assignments, 198.18.0.0/15 benchmarking.
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        // 240.0.0.0/4 reserved.
        || o[0] >= 240)
}

/// reqwest's resolver: the system's lookup, with every address the policy
/// refuses removed (an error when none is left, so nothing is connected).
#[derive(Clone)]
pub struct GuardedResolver {
    pub policy: Arc<NetworkPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let addrs = policy
                .resolve(name.as_str(), 0)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn non_public_addresses_are_refused_by_default() {
        let p = NetworkPolicy::public_only();
        for a in [
            "127.0.0.1",
            "127.8.9.10",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
        ] {
            assert!(!p.allows(ip(a)), "{a} allowed");
        }
        for a in ["93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(p.allows(ip(a)), "{a} refused");
        }
    }

    #[test]
    fn an_allow_listed_network_is_allowed_also_in_its_mapped_form() {
        let p = NetworkPolicy::allowing(&["127.0.0.1/32", "10.1.0.0/16"]).unwrap();
        assert!(p.allows(ip("127.0.0.1")));
        assert!(p.allows(ip("::ffff:127.0.0.1")));
        assert!(p.allows(ip("10.1.2.3")));
        assert!(!p.allows(ip("10.2.0.1")));
        assert!(!p.allows(ip("127.0.0.2")));
        assert!(!p.allows(ip("169.254.169.254")));
    }

    #[test]
    fn literal_ip_urls_are_checked() {
        let p = NetworkPolicy::public_only();
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert!(p.check_url(&u("http://127.0.0.1:9464/metrics#")).is_err());
        assert!(p.check_url(&u("http://[::ffff:a9fe:a9fe]/")).is_err());
        assert!(p.check_url(&u("http://2130706433/")).is_err());
        assert!(p.check_url(&u("https://api.twilio.com/")).is_ok());
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused() {
        let p = NetworkPolicy::public_only();
        assert!(matches!(
            p.check_host("localhost", 25).await,
            Err(ResolveError::Refused(_))
        ));
        let p = NetworkPolicy::allowing(&["127.0.0.0/8", "::1"]).unwrap();
        assert!(p.check_host("localhost", 25).await.is_ok());
    }
}
