//! Where a registry may send the client: redirects and token realms.
//!
//! The registry a reference names is reached at whatever address it has (the user named
//! it: a loopback test registry or an in-cluster one is fine), over HTTPS, or plain HTTP
//! when it is marked insecure. Anywhere *else* a registry points the client to (a
//! `Location`, a token `realm`) is an SSRF vector, so it is followed only
//! - over HTTPS (plain HTTP only to the registry's own `host[:port]`, marked insecure);
//! - to public addresses: loopback, private, link-local, CGNAT, multicast and other
//!   special ranges are refused unless listed in the allowed ranges. Names are checked
//!   on the addresses the resolver returns, the ones connected to (a name re-pointed
//!   between a check and the connection cannot slip through).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use http::Uri;

/// An address range, `10.0.0.0/8` or `fd00::/8` (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (full, rest) = ((prefix / 8) as usize, prefix % 8);
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || (a[full] ^ b[full]) & (0xffu8 << (8 - rest)) == 0
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not an address range such as 10.0.0.0/8 or fd00::/8");
        let (addr, prefix) = s.trim().split_once('/').map_or((s.trim(), None), |(a, p)| (a, Some(p)));
        let net = canonical(addr.parse::<IpAddr>().map_err(|_| bad())?);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Not a public unicast address: loopback, unspecified, private (RFC 1918, ULA),
/// link-local (cloud metadata services live there), CGNAT, benchmarking, documentation,
/// multicast, reserved, and IPv6 forms that embed an IPv4 address.
pub fn is_special(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => special_v4(a),
        IpAddr::V6(a) => special_v6(a),
    }
}

fn special_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, o2, _] = a.octets();
    a.is_unspecified()
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_multicast()
        || a.is_broadcast()
        || o0 == 0
        || (o0 == 100 && (o1 & 0xc0) == 64) // 100.64.0.0/10, CGNAT
        || (o0 == 192 && o1 == 0 && o2 == 0) // 192.0.0.0/24, IETF protocol assignments
        || (o0 == 192 && o1 == 0 && o2 == 2) // documentation
        || (o0 == 198 && (o1 & 0xfe) == 18) // 198.18.0.0/15, benchmarking
        || (o0 == 198 && o1 == 51 && o2 == 100)
        || (o0 == 203 && o1 == 0 && o2 == 113)
        || o0 >= 240
}

fn special_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7, unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10, link-local
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10, site-local (deprecated)
        || (s[0] == 0x64 && s[1] == 0xff9b) // 64:ff9b::/96 NAT64 (and /48 local use)
        || s[0] == 0x2002 // 6to4 embeds an IPv4 address
        || (s[0] == 0x2001 && s[1] == 0) // Teredo
        || (s[0] == 0x2001 && s[1] == 0xdb8) // documentation
        || a.segments()[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible (deprecated)
}

/// Whether the client may connect to `ip` for a target that is not the registry itself.
pub fn address_allowed(ip: IpAddr, allowed: &[Cidr]) -> bool {
    !is_special(ip) || allowed.iter().any(|c| c.contains(ip))
}

/// Whether `target` is the registry's own `host[:port]` (as in the image reference).
pub fn is_own(target: &Uri, registry: &str) -> bool {
    target.authority().is_some_and(|a| a.as_str().eq_ignore_ascii_case(registry))
}

/// Check a request's target before anything is sent: `Err` says why it is refused (in
/// words that name the host only, never the rest of a URL the registry chose).
/// Addresses of names are checked by the resolver ([`crate::dns::Resolver::restricted`]).
pub fn check_target(target: &Uri, registry: &str, insecure_http: bool, allowed: &[Cidr]) -> Result<(), String> {
    let host = target.host().unwrap_or("");
    let scheme = target.scheme_str().unwrap_or("");
    if is_own(target, registry) {
        return match scheme {
            "https" => Ok(()),
            "http" if insecure_http => Ok(()),
            "http" => {
                Err(format!("refused plain HTTP to {registry}: the registry is not marked insecure (HTTPS only)"))
            }
            _ => Err(format!("refused the scheme {scheme:?}")),
        };
    }
    if scheme != "https" {
        return Err(format!(
            "refused to follow the registry to {host} over {scheme:?}: anywhere but the registry itself is \
             reached over HTTPS only"
        ));
    }
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>()
        && !address_allowed(ip, allowed)
    {
        return Err(format!(
            "refused to follow the registry to {ip}: a private, loopback or link-local address that is not \
             the registry itself (allow the range with --registry-allow-private-ranges if it is meant)"
        ));
    }
    Ok(())
}

/// The host of a URL a registry chose, for messages (never its path or query).
pub fn host_of(url: &str) -> String {
    url.parse::<Uri>().ok().and_then(|u| u.host().map(str::to_string)).unwrap_or_else(|| "an unusable URL".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_ranges() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "::127.0.0.1",
        ] {
            assert!(is_special(ip(s)), "{s}");
        }
        for s in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(!is_special(ip(s)), "{s}");
        }
    }

    #[test]
    fn ranges_parse_and_contain() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.0.1")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")), "a mapped address is its IPv4 address");
        let c: Cidr = "172.16.0.0/12".parse().unwrap();
        assert!(c.contains(ip("172.31.0.1")) && !c.contains(ip("172.32.0.1")));
        let c: Cidr = "fd00::/8".parse().unwrap();
        assert!(c.contains(ip("fd12::1")) && !c.contains(ip("fe80::1")));
        let one: Cidr = "192.168.1.5".parse().unwrap();
        assert_eq!(one.to_string(), "192.168.1.5/32");
        assert!(one.contains(ip("192.168.1.5")) && !one.contains(ip("192.168.1.6")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("127.0.0.1")));
        for bad in ["10.0.0.0/33", "x", "10.0.0/8", "fd00::/129", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_registry_itself_is_reached_wherever_it_is() {
        let u = |s: &str| s.parse::<Uri>().unwrap();
        assert!(check_target(&u("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000", true, &[]).is_ok());
        assert!(check_target(&u("https://10.0.0.5/v2/"), "10.0.0.5", false, &[]).is_ok());
        let e = check_target(&u("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000", false, &[]).unwrap_err();
        assert!(e.contains("not marked insecure"), "{e}");
    }

    #[test]
    fn elsewhere_is_https_and_public_unless_allowed() {
        let u = |s: &str| s.parse::<Uri>().unwrap();
        let reg = "registry.example";
        assert!(check_target(&u("https://cdn.example/blob?sig=1"), reg, false, &[]).is_ok());
        assert!(check_target(&u("https://1.1.1.1/t"), reg, false, &[]).is_ok());
        let e = check_target(&u("http://cdn.example/blob"), reg, true, &[]).unwrap_err();
        assert!(e.contains("HTTPS only"), "insecure is for the registry itself only: {e}");
        let e = check_target(&u("http://127.0.0.1:5001/t"), "127.0.0.1:5000", true, &[]).unwrap_err();
        assert!(e.contains("HTTPS only"), "another port is another host: {e}");
        for target in [
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.1/",
            "https://[::1]:8443/",
            "https://[::ffff:127.0.0.1]/",
        ] {
            let e = check_target(&u(target), reg, false, &[]).unwrap_err();
            assert!(e.contains("private, loopback or link-local"), "{target}: {e}");
            assert!(!e.contains("meta-data"), "the path is not echoed: {e}");
        }
        let allowed = ["10.0.0.0/8".parse().unwrap()];
        assert!(check_target(&u("https://10.0.0.1/"), reg, false, &allowed).is_ok());
        assert!(check_target(&u("https://169.254.169.254/"), reg, false, &allowed).is_err());
        assert_eq!(host_of("https://evil.example/x?leak=1"), "evil.example");
    }
}
