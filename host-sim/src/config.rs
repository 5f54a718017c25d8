//! Just enough of ipsec.cfg (SPEC section 2) for host-sim to lay out a network: the
//! endpoints, mode and selectors of each bundle. Keys and transforms are the plugin's
//! business and are ignored here; a value this reader needs but cannot understand is an
//! error naming file and line.

use std::net::Ipv4Addr;
use std::path::Path;

/// An IPv4 prefix, stored with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Cidr {
        Cidr {
            network: Ipv4Addr::from(u32::from(addr) & Self::mask(prefix)),
            prefix,
        }
    }

    fn mask(prefix: u8) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(prefix.min(32)))
            .unwrap_or(0)
    }

    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, prefix.trim().parse().ok().filter(|&p| p <= 32)?),
            None => (text, 32),
        };
        Some(Cidr::new(addr.trim().parse().ok()?, prefix))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & Self::mask(self.prefix) == u32::from(self.network)
    }

    /// The first address hosts use: network + 1, except for /31 and /32 where every
    /// address is a host.
    pub fn first_host(&self) -> Ipv4Addr {
        if self.prefix >= 31 {
            self.network
        } else {
            Ipv4Addr::from(u32::from(self.network) + 1)
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A bundle as far as the network model cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleCfg {
    pub name: String,
    pub local: Ipv4Addr,
    pub remote: Ipv4Addr,
    pub tunnel: bool,
    /// None means the default, `local/32` (`remote/32`); kept unresolved because
    /// `0.0.0.0` endpoints are only known at run time.
    pub local_subnet: Option<Cidr>,
    pub remote_subnet: Option<Cidr>,
    pub protocol: Option<u8>,
    pub local_port: Option<u16>,
    pub remote_port: Option<u16>,
    /// ESP in UDP (RFC 3948): `tun` then listens on UDP port 4500.
    pub udp_encap: bool,
    /// `keying = ike`: the keying daemon may negotiate ESP in UDP (NAT-T), so `tun` reads
    /// UDP 4500, but leaves the port itself to the daemon.
    pub ike: bool,
}

fn protocol_number(value: &str) -> Option<Option<u8>> {
    match value.to_ascii_lowercase().as_str() {
        "any" => Some(None),
        "icmp" => Some(Some(1)),
        "tcp" => Some(Some(6)),
        "udp" => Some(Some(17)),
        n => n.parse().ok().map(Some),
    }
}

fn port(value: &str) -> Option<Option<u16>> {
    if value.eq_ignore_ascii_case("any") {
        Some(None)
    } else {
        value.parse().ok().map(Some)
    }
}

/// Reads the bundles of one ipsec.cfg, in file order.
pub fn parse(text: &str, file: &Path) -> Result<Vec<BundleCfg>, String> {
    struct Partial {
        name: String,
        line: usize,
        local: Option<Ipv4Addr>,
        remote: Option<Ipv4Addr>,
        bundle: BundleCfg,
    }
    let mut partials: Vec<Partial> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let at = |msg: String| format!("{}:{line_no}: {msg}", file.display());
        let line = raw.split(';').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| at(format!("bad section header `{line}`")))?;
            partials.push(Partial {
                name: name.trim().to_string(),
                line: line_no,
                local: None,
                remote: None,
                bundle: BundleCfg {
                    name: name.trim().to_string(),
                    local: Ipv4Addr::UNSPECIFIED,
                    remote: Ipv4Addr::UNSPECIFIED,
                    tunnel: false,
                    local_subnet: None,
                    remote_subnet: None,
                    protocol: None,
                    local_port: None,
                    remote_port: None,
                    udp_encap: false,
                    ike: false,
                },
            });
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| at(format!("expected `key = value`, got `{line}`")))?;
        let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
        let current = partials
            .last_mut()
            .ok_or_else(|| at(format!("`{key}` outside a [bundle] section")))?;
        let section = current.name.clone();
        let bad = || at(format!("[{section}] {key}: bad value `{value}`"));
        let b = &mut current.bundle;
        match key.as_str() {
            "local" => current.local = Some(value.parse().map_err(|_| bad())?),
            "remote" => current.remote = Some(value.parse().map_err(|_| bad())?),
            "mode" => {
                b.tunnel = match value.to_ascii_lowercase().as_str() {
                    "tunnel" => true,
                    "transport" => false,
                    _ => return Err(bad()),
                }
            }
            "local_subnet" => b.local_subnet = Some(Cidr::parse(value).ok_or_else(bad)?),
            "remote_subnet" => b.remote_subnet = Some(Cidr::parse(value).ok_or_else(bad)?),
            "protocol" => b.protocol = protocol_number(value).ok_or_else(bad)?,
            "local_port" => b.local_port = port(value).ok_or_else(bad)?,
            "remote_port" => b.remote_port = port(value).ok_or_else(bad)?,
            "keying" => b.ike = value.eq_ignore_ascii_case("ike"),
            "udp_encap" => {
                b.udp_encap = match value.to_ascii_lowercase().as_str() {
                    "yes" => true,
                    "no" => false,
                    _ => return Err(bad()),
                }
            }
            _ => {}
        }
    }
    partials
        .into_iter()
        .map(|p| {
            let missing =
                |key: &str| format!("{}:{}: [{}] has no `{key}`", file.display(), p.line, p.name);
            Ok(BundleCfg {
                local: p.local.ok_or_else(|| missing("local"))?,
                remote: p.remote.ok_or_else(|| missing("remote"))?,
                ..p.bundle
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_arithmetic() {
        let net = Cidr::parse("10.1.2.3/16").unwrap();
        assert_eq!(net.to_string(), "10.1.0.0/16");
        assert!(net.contains(Ipv4Addr::new(10, 1, 255, 1)));
        assert!(!net.contains(Ipv4Addr::new(10, 2, 0, 1)));
        assert_eq!(net.first_host(), Ipv4Addr::new(10, 1, 0, 1));
        assert_eq!(
            Cidr::parse("192.0.2.7").unwrap(),
            Cidr::new(Ipv4Addr::new(192, 0, 2, 7), 32)
        );
        assert_eq!(
            Cidr::parse("192.0.2.7/32").unwrap().first_host(),
            Ipv4Addr::new(192, 0, 2, 7)
        );
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(Ipv4Addr::new(8, 8, 8, 8)));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert_eq!(Cidr::parse("10.0.0/8"), None);
    }

    #[test]
    fn reads_endpoints_and_selectors() {
        let text = "; gateway\n[Net-Net]\nLOCAL = 192.0.2.1 ; us\nremote=192.0.2.2\nmode = Tunnel\n\
                    local_subnet = 10.1.0.0/16\nremote_subnet = 10.2.0.0/16\nesp = aes128-sha1\n\
                    [web]\nlocal = 0.0.0.0\nremote = 192.0.2.2\nprotocol = tcp\nremote_port = 80\nlocal_port = any\n";
        let bundles = parse(text, Path::new("gw/ipsec.cfg")).unwrap();
        assert_eq!(bundles.len(), 2);
        assert_eq!(bundles[0].name, "Net-Net");
        assert!(bundles[0].tunnel);
        assert_eq!(bundles[0].local, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(bundles[0].local_subnet, Cidr::parse("10.1.0.0/16"));
        assert_eq!(bundles[1].local, Ipv4Addr::UNSPECIFIED);
        assert!(!bundles[1].tunnel);
        assert!(!bundles[0].udp_encap, "udp_encap defaults to no");
        assert_eq!(
            (
                bundles[1].protocol,
                bundles[1].local_port,
                bundles[1].remote_port
            ),
            (Some(6), None, Some(80))
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let path = Path::new("m/ipsec.cfg");
        let err = parse("[a]\nlocal = 192.0.2.1\nremote = 192.0.2.300\n", path).unwrap_err();
        assert!(err.starts_with("m/ipsec.cfg:3: [a] remote"), "{err}");
        let err = parse("local = 192.0.2.1\n", path).unwrap_err();
        assert!(err.starts_with("m/ipsec.cfg:1:"), "{err}");
        let err = parse("[a]\nlocal = 192.0.2.1\n", path).unwrap_err();
        assert_eq!(err, "m/ipsec.cfg:1: [a] has no `remote`");
        let err = parse(
            "[a]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nprotocol = sctp\n",
            path,
        )
        .unwrap_err();
        assert!(err.contains(":4:"), "{err}");
        let text = "[a]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nudp_encap = YES\n";
        assert!(parse(text, path).unwrap()[0].udp_encap);
        let err = parse(&text.replace("YES", "maybe"), path).unwrap_err();
        assert!(err.starts_with("m/ipsec.cfg:4: [a] udp_encap"), "{err}");
    }
}
