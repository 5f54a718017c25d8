//! IPv4 prefixes for the traffic selectors `local_subnet` / `remote_subnet`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::value::{shown, ValueError};

/// An IPv4 prefix; `addr` is the network address (host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

fn mask(prefix: u8) -> u32 {
    // A shift by 32 would overflow, so /0 is spelled out.
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

impl Cidr {
    /// None when `prefix` > 32; host bits of `addr` are cleared.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Cidr> {
        (prefix <= 32).then(|| Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    pub fn host(addr: Ipv4Addr) -> Cidr {
        Cidr { addr, prefix: 32 }
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & mask(self.prefix) == u32::from(self.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `a.b.c.d/n`, or a bare address meaning `/32`. Host bits set is an error rather than
/// silently cleared: `10.1.0.5/24` is more likely a typo than a way to write `10.1.0.0/24`.
impl FromStr for Cidr {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Cidr, ValueError> {
        let (addr_text, prefix_text) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: Ipv4Addr = addr_text
            .parse()
            .map_err(|_| format!("{} is not an IPv4 address (a.b.c.d)", shown(addr_text)))?;
        let prefix = match prefix_text {
            None => 32,
            Some(p) if !p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= 32)
                .ok_or_else(|| bad_prefix(p))?,
            Some(p) => return Err(bad_prefix(p).into()),
        };
        let network = Cidr::new(addr, prefix).ok_or_else(|| bad_prefix(&prefix.to_string()))?;
        if network.addr != addr {
            return Err(format!("{s} has host bits set: the network is {network}").into());
        }
        Ok(network)
    }
}

fn bad_prefix(p: &str) -> String {
    format!("{} is not a prefix length 0-32", shown(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert_eq!(
            c,
            Cidr {
                addr: Ipv4Addr::new(10, 1, 0, 0),
                prefix: 16
            }
        );
        assert_eq!(c.to_string(), "10.1.0.0/16");
        assert_eq!(
            "192.0.2.7".parse::<Cidr>(),
            Ok(Cidr::host(Ipv4Addr::new(192, 0, 2, 7)))
        );
        assert_eq!("0.0.0.0/0".parse::<Cidr>().map(|c| c.prefix), Ok(0));
        assert_eq!("10.0.0.1/32".parse::<Cidr>().map(|c| c.prefix), Ok(32));
    }

    #[test]
    fn host_bits_are_an_error_that_names_the_network() {
        let e = "10.1.0.5/24".parse::<Cidr>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "10.1.0.5/24 has host bits set: the network is 10.1.0.0/24"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "/24",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0/8",
            "10.0.0.0/8/8",
            "10.0.0.0/008",
            "010.0.0.0/8",
            "10.0.0.0 /8",
            "host/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn new_clears_host_bits_and_contains() {
        let c = Cidr::new(Ipv4Addr::new(10, 1, 2, 3), 16).unwrap();
        assert_eq!(c.addr, Ipv4Addr::new(10, 1, 0, 0));
        assert!(c.contains(Ipv4Addr::new(10, 1, 255, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 2, 0, 0)));
        assert!(Cidr::new(Ipv4Addr::UNSPECIFIED, 33).is_none());
        let all = Cidr::new(Ipv4Addr::new(1, 2, 3, 4), 0).unwrap();
        assert_eq!(all.addr, Ipv4Addr::UNSPECIFIED);
        assert!(all.contains(Ipv4Addr::BROADCAST));
        let host = Cidr::host(Ipv4Addr::new(192, 0, 2, 1));
        assert!(host.contains(Ipv4Addr::new(192, 0, 2, 1)));
        assert!(!host.contains(Ipv4Addr::new(192, 0, 2, 2)));
    }
}
