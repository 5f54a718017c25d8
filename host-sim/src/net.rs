//! The demo's network model, derived from the machines' ipsec.cfg files alone
//! (docs/host-sim.md states the rules):
//! - a machine's addresses are its bundles' `local` values, plus the /32 tunnel
//!   `local_subnet`s (virtual addresses);
//! - a machine with a `local = 0.0.0.0` bundle is a dial-up host: its address is the
//!   `remote` of the peer machine's bundle that points back at it (the first bundle whose
//!   `local` is this bundle's `remote` and whose `remote` is not another machine's fixed
//!   address), or, when that peer accepts any peer (`remote = 0.0.0.0`) or there is none,
//!   an address from TEST-NET-3 (203.0.113.0/24);
//! - a machine is the gateway of its tunnel `local_subnet`s wider than /32; the other
//!   addresses in them are simulated end hosts; a machine whose address lies in such a
//!   subnet sits on that gateway's LAN and reaches everything outside it through the
//!   gateway (and is reached through it);
//! - every bundle yields flows from inside its local selector to inside its remote one.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::config::{BundleCfg, Cidr};
use crate::packet::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub name: String,
    pub dir: PathBuf,
    pub bundles: Vec<BundleCfg>,
    /// The addresses the machine itself answers for.
    pub addrs: Vec<Ipv4Addr>,
    /// The address reported with connect, for dial-up machines.
    pub dialup: Option<Ipv4Addr>,
    /// Subnets behind the machine, whose other addresses are simulated end hosts.
    pub lan: Vec<Cidr>,
}

/// Where an address lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// On machine `n` itself.
    Machine(usize),
    /// A simulated end host behind gateway `n`.
    BehindGateway(usize),
}

impl Location {
    /// The machine whose plugin handles this address's traffic.
    pub fn machine(self) -> usize {
        match self {
            Location::Machine(n) | Location::BehindGateway(n) => n,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowKind {
    IcmpEcho,
    Udp,
    Tcp,
    /// A bundle selecting some other protocol by number.
    Other(u8),
}

/// One request the demo sends (and whose reply it sends back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub machine: usize,
    pub bundle: String,
    pub kind: FlowKind,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

#[derive(Debug)]
pub struct Network {
    pub machines: Vec<Machine>,
}

/// Dial-up machines whose peer accepts any address get 203.0.113.<base + index>.
const ROAD_WARRIOR_BASE: u8 = 100;

impl Network {
    /// Lays out the network from `(name, directory, bundles)` per machine.
    pub fn derive(input: Vec<(String, PathBuf, Vec<BundleCfg>)>) -> Result<Network, String> {
        let mut machines: Vec<Machine> = input
            .into_iter()
            .map(|(name, dir, bundles)| Machine {
                name,
                dir,
                bundles,
                addrs: vec![],
                dialup: None,
                lan: vec![],
            })
            .collect();

        // Addresses fixed in some config: a dial-up address must not be one of them.
        let static_addrs: Vec<Ipv4Addr> = machines
            .iter()
            .flat_map(|m| &m.bundles)
            .map(|b| b.local)
            .filter(|a| !a.is_unspecified())
            .collect();
        for i in 0..machines.len() {
            let dialup_bundle = machines[i]
                .bundles
                .iter()
                .find(|b| b.local.is_unspecified());
            let Some(b) = dialup_bundle else { continue };
            let peer_points_back = machines
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, m)| &m.bundles)
                .find(|pb| pb.local == b.remote && !static_addrs.contains(&pb.remote));
            let address = match peer_points_back {
                Some(pb) if !pb.remote.is_unspecified() => pb.remote,
                _ => Ipv4Addr::new(203, 0, 113, ROAD_WARRIOR_BASE.saturating_add(i as u8)),
            };
            machines[i].dialup = Some(address);
        }

        for m in &mut machines {
            let mut addrs: Vec<Ipv4Addr> = m
                .bundles
                .iter()
                .map(|b| b.local)
                .filter(|a| !a.is_unspecified())
                .collect();
            addrs.extend(m.dialup);
            for b in m.bundles.iter().filter(|b| b.tunnel) {
                match b.local_subnet {
                    Some(c) if c.prefix == 32 && !c.network.is_unspecified() => {
                        addrs.push(c.network)
                    }
                    Some(c) if c.prefix < 32 && !m.lan.contains(&c) => m.lan.push(c),
                    _ => {}
                }
            }
            let mut unique = Vec::new();
            for a in addrs {
                if !unique.contains(&a) {
                    unique.push(a);
                }
            }
            m.addrs = unique;
        }

        for (i, m) in machines.iter().enumerate() {
            for a in &m.addrs {
                if let Some(other) = machines[i + 1..].iter().find(|o| o.addrs.contains(a)) {
                    return Err(format!(
                        "machines {} and {} both have address {a}",
                        m.name, other.name
                    ));
                }
            }
        }
        Ok(Network { machines })
    }

    /// Who owns `addr`: a machine's own address first, else the most specific LAN.
    pub fn locate(&self, addr: Ipv4Addr) -> Option<Location> {
        if let Some(n) = self.machines.iter().position(|m| m.addrs.contains(&addr)) {
            return Some(Location::Machine(n));
        }
        self.locate_lan(addr).map(Location::BehindGateway)
    }

    /// The gateway whose subnet holds one of machine `n`'s own addresses: a machine on a
    /// gateway's LAN reaches everything outside that LAN through it.
    pub fn upstream(&self, n: usize) -> Option<usize> {
        self.machines[n]
            .addrs
            .iter()
            .find_map(|&a| match self.locate_lan(a) {
                Some(g) if g != n => Some(g),
                _ => None,
            })
    }

    /// The gateway with the most specific subnet holding `addr`.
    fn locate_lan(&self, addr: Ipv4Addr) -> Option<usize> {
        self.machines
            .iter()
            .enumerate()
            .flat_map(|(n, m)| m.lan.iter().map(move |c| (n, c)))
            .filter(|(_, c)| c.contains(addr))
            .max_by_key(|(_, c)| c.prefix)
            .map(|(n, _)| n)
    }

    /// The machine that receives a packet machine `from` puts on the wire for `dst`:
    /// the owner of `dst`, except that traffic leaving a gateway's LAN goes through that
    /// gateway, and so does traffic entering it from outside.
    pub fn next_hop(&self, from: usize, dst: Ipv4Addr) -> Option<usize> {
        let target = self.locate(dst)?.machine();
        let from_lan = self.upstream(from);
        if let Some(g) = from_lan {
            if g != target && self.locate_lan(dst) != Some(g) {
                return Some(g);
            }
        }
        match self.upstream(target) {
            Some(g) if g != from && from_lan != Some(g) => Some(g),
            _ => Some(target),
        }
    }

    /// The address this end of a bundle has: its `local`, or the dial-up address.
    fn local_addr(&self, machine: usize, b: &BundleCfg) -> Option<Ipv4Addr> {
        if b.local.is_unspecified() {
            self.machines[machine].dialup
        } else {
            Some(b.local)
        }
    }

    /// The dial-up machine behind a `remote = 0.0.0.0` bundle: one whose bundle has
    /// `local = 0.0.0.0` and points at this end.
    fn dialup_peer(&self, machine: usize, b: &BundleCfg) -> Option<Ipv4Addr> {
        let here = self.local_addr(machine, b)?;
        self.machines
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != machine)
            .find(|(_, m)| {
                m.bundles
                    .iter()
                    .any(|pb| pb.local.is_unspecified() && pb.remote == here)
            })
            .and_then(|(_, m)| m.dialup)
    }

    /// An address inside a selector; `None` selectors and `0.0.0.0/32` mean the endpoint.
    fn pick(selector: Option<Cidr>, endpoint: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        match selector {
            Some(c) if !(c.prefix == 32 && c.network.is_unspecified()) => Some(c.first_host()),
            _ => endpoint,
        }
    }

    /// The flows of every bundle, or, for a bundle that yields none, why not.
    pub fn flows(&self) -> (Vec<Flow>, Vec<String>) {
        let (mut flows, mut notes) = (Vec::new(), Vec::new());
        for (n, m) in self.machines.iter().enumerate() {
            for b in &m.bundles {
                let local = self.local_addr(n, b);
                let remote = if b.remote.is_unspecified() {
                    self.dialup_peer(n, b)
                } else {
                    Some(b.remote)
                };
                let (src, dst) = if b.tunnel {
                    (
                        Self::pick(b.local_subnet, local),
                        Self::pick(b.remote_subnet, remote),
                    )
                } else {
                    (local, remote)
                };
                let (Some(src), Some(dst)) = (src, dst) else {
                    notes.push(format!(
                        "{}[{}]: remote {} is no machine of this scenario: no traffic",
                        m.name, b.name, b.remote
                    ));
                    continue;
                };
                let kinds: &[FlowKind] = match b.protocol {
                    None => &[FlowKind::IcmpEcho, FlowKind::Udp, FlowKind::Tcp],
                    Some(PROTO_ICMP) => &[FlowKind::IcmpEcho],
                    Some(PROTO_UDP) => &[FlowKind::Udp],
                    Some(PROTO_TCP) => &[FlowKind::Tcp],
                    Some(other) => &[FlowKind::Other(other)],
                };
                for &kind in kinds {
                    flows.push(Flow {
                        machine: n,
                        bundle: b.name.clone(),
                        kind,
                        src,
                        dst,
                        sport: b.local_port.unwrap_or(1024),
                        dport: b.remote_port.unwrap_or(5001),
                    });
                }
            }
        }
        (flows, notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::path::Path;

    fn machine(name: &str, cfg: &str) -> (String, PathBuf, Vec<BundleCfg>) {
        let bundles = config::parse(cfg, Path::new(name)).unwrap();
        (name.to_string(), PathBuf::from(name), bundles)
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn hosts_in_transport_mode() {
        let net = Network::derive(vec![
            machine("a", "[ab]\nlocal = 192.0.2.1\nremote = 192.0.2.2\n"),
            machine("b", "[ba]\nlocal = 192.0.2.2\nremote = 192.0.2.1\n"),
        ])
        .unwrap();
        assert_eq!(net.machines[0].addrs, [ip("192.0.2.1")]);
        assert_eq!(net.machines[1].addrs, [ip("192.0.2.2")]);
        assert!(net
            .machines
            .iter()
            .all(|m| m.lan.is_empty() && m.dialup.is_none()));
        assert_eq!(net.locate(ip("192.0.2.2")), Some(Location::Machine(1)));
        assert_eq!(net.locate(ip("192.0.2.3")), None);
        let (flows, notes) = net.flows();
        assert!(notes.is_empty());
        assert_eq!(flows.len(), 6);
        assert_eq!(
            flows[0],
            Flow {
                machine: 0,
                bundle: "ab".into(),
                kind: FlowKind::IcmpEcho,
                src: ip("192.0.2.1"),
                dst: ip("192.0.2.2"),
                sport: 1024,
                dport: 5001
            }
        );
        assert_eq!(
            (flows[3].src, flows[3].dst),
            (ip("192.0.2.2"), ip("192.0.2.1"))
        );
    }

    #[test]
    fn gateways_own_their_subnets() {
        let gw = |name: &str, l: &str, r: &str, ls: &str, rs: &str| {
            machine(
                name,
                &format!("[t]\nlocal = {l}\nremote = {r}\nmode = tunnel\nlocal_subnet = {ls}\nremote_subnet = {rs}\n"),
            )
        };
        let net = Network::derive(vec![
            gw(
                "gw1",
                "192.0.2.1",
                "192.0.2.2",
                "10.1.0.0/16",
                "10.2.0.0/16",
            ),
            gw(
                "gw2",
                "192.0.2.2",
                "192.0.2.1",
                "10.2.0.0/16",
                "10.1.0.0/16",
            ),
        ])
        .unwrap();
        assert_eq!(net.machines[0].lan, [Cidr::parse("10.1.0.0/16").unwrap()]);
        assert_eq!(net.locate(ip("10.2.3.4")), Some(Location::BehindGateway(1)));
        assert_eq!(net.locate(ip("192.0.2.1")), Some(Location::Machine(0)));
        let (flows, _) = net.flows();
        assert_eq!(
            (flows[0].src, flows[0].dst),
            (ip("10.1.0.1"), ip("10.2.0.1"))
        );
    }

    #[test]
    fn machines_on_a_gateway_lan_reach_the_outside_through_it() {
        let net = Network::derive(vec![
            machine("gw", "[o]\nlocal = 192.0.2.32\nremote = 192.0.2.31\nmode = tunnel\nlocal_subnet = 10.2.0.0/24\n"),
            machine("host1", "[o]\nlocal = 192.0.2.31\nremote = 192.0.2.32\nmode = tunnel\nremote_subnet = 10.2.0.0/24\n"),
            machine("host2", "[i]\nlocal = 10.2.0.5\nremote = 192.0.2.31\n"),
        ])
        .unwrap();
        let (gw, host1, host2) = (0, 1, 2);
        assert_eq!(net.upstream(host2), Some(gw));
        assert_eq!(net.upstream(host1), None);
        assert_eq!(net.upstream(gw), None);
        assert_eq!(
            net.next_hop(host2, ip("192.0.2.31")),
            Some(gw),
            "leaving the LAN"
        );
        assert_eq!(net.next_hop(gw, ip("192.0.2.31")), Some(host1));
        assert_eq!(
            net.next_hop(host1, ip("10.2.0.5")),
            Some(gw),
            "entering the LAN"
        );
        assert_eq!(net.next_hop(gw, ip("10.2.0.5")), Some(host2));
        assert_eq!(
            net.next_hop(host2, ip("10.2.0.9")),
            Some(gw),
            "a simulated host on the LAN is served by gw"
        );
        assert_eq!(net.next_hop(host2, ip("192.0.2.32")), Some(gw));
        assert_eq!(net.next_hop(host1, ip("192.0.2.32")), Some(gw));
        assert_eq!(net.next_hop(host1, ip("203.0.113.1")), None);
    }

    #[test]
    fn dial_up_hosts_get_the_address_their_peer_expects() {
        let net = Network::derive(vec![
            machine("client", "[c]\nlocal = 0.0.0.0\nremote = 192.0.2.1\n"),
            machine("gw", "[g]\nlocal = 192.0.2.1\nremote = 198.51.100.7\n"),
        ])
        .unwrap();
        assert_eq!(net.machines[0].dialup, Some(ip("198.51.100.7")));
        assert_eq!(net.machines[0].addrs, [ip("198.51.100.7")]);
        let (flows, _) = net.flows();
        assert_eq!(
            (flows[0].src, flows[0].dst),
            (ip("198.51.100.7"), ip("192.0.2.1"))
        );
    }

    #[test]
    fn the_bundle_pointing_back_is_the_one_not_aimed_at_another_machine() {
        let net = Network::derive(vec![
            machine("gw1", "[t]\nlocal = 192.0.2.1\nremote = 192.0.2.2\n"),
            machine("gw2", "[t]\nlocal = 192.0.2.2\nremote = 192.0.2.1\n[rw]\nlocal = 192.0.2.2\nremote = 198.51.100.7\n"),
            machine("laptop", "[home]\nlocal = 0.0.0.0\nremote = 192.0.2.2\n"),
        ])
        .unwrap();
        assert_eq!(net.machines[2].dialup, Some(ip("198.51.100.7")));
    }

    #[test]
    fn road_warriors_of_an_any_peer_gateway_get_test_net_3() {
        let net = Network::derive(vec![
            machine(
                "gw",
                "[rw]\nlocal = 192.0.2.1\nremote = 0.0.0.0\nmode = tunnel\nlocal_subnet = 10.1.0.0/24\nkeying = ike\n",
            ),
            machine(
                "laptop",
                "[vpn]\nlocal = 0.0.0.0\nremote = 192.0.2.1\nmode = tunnel\nremote_subnet = 10.1.0.0/24\n",
            ),
        ])
        .unwrap();
        let laptop = ip("203.0.113.101");
        assert_eq!(net.machines[1].dialup, Some(laptop));
        let (flows, notes) = net.flows();
        assert!(notes.is_empty(), "{notes:?}");
        let from_gw = flows.iter().find(|f| f.machine == 0).unwrap();
        assert_eq!((from_gw.src, from_gw.dst), (ip("10.1.0.1"), laptop));
        let from_laptop = flows.iter().find(|f| f.machine == 1).unwrap();
        assert_eq!((from_laptop.src, from_laptop.dst), (laptop, ip("10.1.0.1")));
    }

    #[test]
    fn virtual_addresses_and_selectors() {
        let net = Network::derive(vec![machine(
            "host",
            "[web]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nmode = tunnel\nlocal_subnet = 10.9.0.5/32\n\
             protocol = tcp\nremote_port = 80\n[gre]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nprotocol = 47\n",
        )])
        .unwrap();
        assert_eq!(net.machines[0].addrs, [ip("192.0.2.1"), ip("10.9.0.5")]);
        let (flows, _) = net.flows();
        assert_eq!(flows.len(), 2);
        assert_eq!(
            (flows[0].kind, flows[0].src, flows[0].dport),
            (FlowKind::Tcp, ip("10.9.0.5"), 80)
        );
        assert_eq!(flows[1].kind, FlowKind::Other(47));
    }

    #[test]
    fn unresolvable_peers_are_noted_and_clashes_refused() {
        let net = Network::derive(vec![machine(
            "gw",
            "[rw]\nlocal = 192.0.2.1\nremote = 0.0.0.0\n",
        )])
        .unwrap();
        let (flows, notes) = net.flows();
        assert!(flows.is_empty());
        assert_eq!(
            notes,
            ["gw[rw]: remote 0.0.0.0 is no machine of this scenario: no traffic"]
        );

        let err = Network::derive(vec![
            machine("a", "[x]\nlocal = 192.0.2.1\nremote = 192.0.2.2\n"),
            machine("b", "[y]\nlocal = 192.0.2.1\nremote = 192.0.2.3\n"),
        ])
        .unwrap_err();
        assert_eq!(err, "machines a and b both have address 192.0.2.1");
    }
}
