//! The security policy database: the bundles of ipsec.cfg in file order, each with its
//! selectors (resolved against the host's current address) and its SAs; and the inbound
//! SA map. A `Spd` is immutable once built: configuration changes, address changes and
//! newly installed keys build a new one that reuses the SAs that did not change, so their
//! sequence numbers, replay windows and counters carry over.
//!
//! A bundle's two ends are resolved in one place, `resolve`: this end is the configured
//! `local` or the host's dynamic address (`local = 0.0.0.0`); the peer is the configured
//! `remote` or, for a road warrior (`remote = 0.0.0.0`, IKE responder), the peer named by
//! the SAs the keying daemon installed (`BundlePolicy::peer`). A road-warrior bundle is
//! bound to **one peer at a time**, for as long as it has SAs with it: SAs with another
//! peer replace the bound peer's, and when its last SA goes (DELETE, hard expiry, FLUSH)
//! the bundle awaits a peer again and matches no traffic, except that what it protected
//! for its former peer stays blocked (dropped as `no_sa`, never sent in clear) until that
//! peer is bound again or the section changes. Several road warriors at once need one
//! bundle each.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::config::{Bundle, Cidr, DirectionKeys, Keying, Mode, SaKeys};
use crate::crypto::KeyError;
use crate::sad::{Sa, SaProto, SaTransform, Sad, UdpPorts};
use crate::stats::Counters;
use crate::wire::ipcomp::CPI_DEFLATE;
use crate::wire::IpProtocol;

/// Traffic selectors of a bundle, from this end's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selector {
    pub local: Cidr,
    pub remote: Cidr,
    pub protocol: Option<u8>,
    pub local_port: Option<u16>,
    pub remote_port: Option<u16>,
}

/// The header fields a selector looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    /// (src, dst) ports of TCP/UDP, None for other protocols and non-first fragments.
    pub ports: Option<(u16, u16)>,
}

impl Selector {
    fn matches(&self, local: Ipv4Addr, remote: Ipv4Addr, protocol: u8, ports: Option<(u16, u16)>) -> bool {
        if !self.local.contains(local) || !self.remote.contains(remote) {
            return false;
        }
        if self.protocol.is_some_and(|p| p != protocol) {
            return false;
        }
        if self.local_port.is_none() && self.remote_port.is_none() {
            return true;
        }
        // A port selector needs ports to compare with.
        let Some((lp, rp)) = ports else { return false };
        self.local_port.is_none_or(|p| p == lp) && self.remote_port.is_none_or(|p| p == rp)
    }

    /// A packet this end sends.
    pub fn matches_outbound(&self, f: &FlowKey) -> bool {
        self.matches(f.src, f.dst, f.protocol, f.ports)
    }

    /// A packet this end receives.
    pub fn matches_inbound(&self, f: &FlowKey) -> bool {
        self.matches(f.dst, f.src, f.protocol, f.ports.map(|(s, d)| (d, s)))
    }
}

/// The SAs of one direction of a bundle, in the order they are applied outbound.
#[derive(Clone, Default)]
pub struct SaSet {
    pub ipcomp: Option<Arc<Sa>>,
    pub esp: Option<Arc<Sa>>,
    pub ah: Option<Arc<Sa>>,
}

impl SaSet {
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Sa>> {
        self.ipcomp.iter().chain(self.esp.iter()).chain(self.ah.iter())
    }
}

/// Whether a bundle can carry traffic, and if not, why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleState {
    Active,
    /// `local = 0.0.0.0` and the host has not reported its address (or the link is down).
    AwaitingAddress,
    /// `remote = 0.0.0.0` (road warrior) and no peer has SAs with it.
    AwaitingPeer,
    /// `keying = ike` and no SAs installed yet.
    AwaitingKeys,
    /// The section has errors: never carries traffic, blocks what its selectors cover.
    Failed,
}

impl BundleState {
    pub fn name(self) -> &'static str {
        match self {
            BundleState::Active => "active",
            BundleState::AwaitingAddress => "awaiting-address",
            BundleState::AwaitingPeer => "awaiting-peer",
            BundleState::AwaitingKeys => "awaiting-keys",
            BundleState::Failed => "failed (blocks its traffic)",
        }
    }
}

/// A configured bundle as the engine uses it.
pub struct BundlePolicy {
    pub config: Bundle,
    /// This end's address: the configured one, or the host's current dynamic address.
    pub local: Option<Ipv4Addr>,
    /// The peer's address: the configured `remote`, or for a road-warrior bundle
    /// (`remote = 0.0.0.0`) the peer the keying daemon installed the SAs with, for as long
    /// as the bundle has SAs; None while it awaits one. Everything that names the far end
    /// (remote selector, tunnel destination, policy simulation, dumps, logs) reads this.
    pub peer: Option<Ipv4Addr>,
    /// Road warrior only: the previous peer, whose SAs are gone or were replaced by another
    /// peer's. What the bundle protected for it stays `blocked` rather than leaving in clear.
    pub former_peer: Option<Ipv4Addr>,
    /// None while the local address or the peer is unknown.
    pub selector: Option<Selector>,
    /// Traffic the bundle would protect but cannot carry: for want of this end's address
    /// (the remote selector), of a peer (a road warrior's `remote_subnet`), or because its
    /// peer left (the former peer's traffic). Dropped outbound (`no_sa`), never sent in clear.
    pub blocked: Option<Selector>,
    pub outbound: Option<SaSet>,
    pub inbound: Option<SaSet>,
    /// The inbound SAs of the previous keys after a rekey: packets the peer sent before it
    /// switched are still in flight, so they are accepted until the next rekey retires
    /// these (or the keys are deleted). Nothing is ever sent on them.
    pub retired: Option<SaSet>,
    pub counters: Arc<Counters>,
    /// The most bytes this bundle adds to a packet (see `worst_case_overhead`).
    pub overhead: usize,
    /// A section with errors (`config::Config::failed`): its traffic is dropped, fail closed.
    pub failed: bool,
}

/// The most bytes a bundle can add to one packet: tunnel header, ESP header, IV, the
/// longest padding, trailer and ICV, UDP encapsulation, AH. IPComp adds nothing: a packet
/// goes compressed only when that makes it shorter, header included.
pub fn worst_case_overhead(b: &Bundle) -> usize {
    let mut n = 0;
    if b.mode == Mode::Tunnel {
        n += crate::wire::ipv4::HEADER_LEN;
    }
    if let Some(t) = b.esp {
        n += crate::wire::esp::HEADER_LEN + t.iv_len() + (t.pad_align() - 1) + 2 + t.icv_len();
        if b.udp_encap || may_negotiate_udp_encap(b) {
            n += crate::wire::udp::HEADER_LEN;
        }
    }
    if let Some(a) = b.ah {
        n += ah_header_len(a.icv_len());
    }
    n
}

/// Whether the keying daemon may put this bundle's ESP in UDP (NAT-T, RFC 3948): any
/// `keying = ike` ESP bundle without AH (AH cannot cross a NAT, and the plugin refuses
/// UDP encapsulation for a bundle with AH as `udp_encap = yes` is refused there).
pub fn may_negotiate_udp_encap(b: &Bundle) -> bool {
    matches!(b.keying, Keying::Ike(_)) && b.esp.is_some() && b.ah.is_none()
}

/// AH's length on IPv4: 12 bytes and the ICV, padded to 32 bits.
pub fn ah_header_len(icv_len: usize) -> usize {
    (12 + icv_len + 3) & !3
}

impl BundlePolicy {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn is_tunnel(&self) -> bool {
        self.config.mode == Mode::Tunnel
    }

    /// `remote = 0.0.0.0`: any peer that authenticates, one at a time.
    pub fn is_road_warrior(&self) -> bool {
        self.config.remote.is_unspecified()
    }

    pub fn state(&self) -> BundleState {
        if self.failed {
            BundleState::Failed
        } else if self.local.is_none() {
            BundleState::AwaitingAddress
        } else if self.peer.is_none() {
            BundleState::AwaitingPeer
        } else if self.outbound.is_none() {
            BundleState::AwaitingKeys
        } else {
            BundleState::Active
        }
    }

    /// The protocol the peer's outermost header carries after this bundle
    /// (IPComp may be left out for a packet that would not shrink; policy matching does not
    /// depend on that).
    pub fn outer_protocol(&self) -> IpProtocol {
        if self.config.ah.is_some() {
            IpProtocol::Ah
        } else if self.udp_encapsulated() {
            IpProtocol::Udp
        } else if self.config.esp.is_some() {
            IpProtocol::Esp
        } else {
            IpProtocol::IpComp
        }
    }

    /// Whether this bundle's ESP travels in UDP: configured, or negotiated for its current
    /// SAs (NAT-T is negotiated for both directions at once).
    pub fn udp_encapsulated(&self) -> bool {
        self.config.udp_encap
            || [&self.outbound, &self.inbound].into_iter().flatten().any(|set| set.esp.as_ref().is_some_and(|sa| sa.udp_encap.is_some()))
    }

    /// The inbound layers in the order they are removed: AH, ESP, IPComp.
    pub fn inbound_layers(&self) -> [(SaProto, bool); 3] {
        [
            (SaProto::Ah, self.config.ah.is_some()),
            (SaProto::Esp, self.config.esp.is_some()),
            (SaProto::IpComp, self.config.ipcomp),
        ]
    }
}

/// Everything the per-packet path reads; swapped whole when something changes.
#[derive(Default)]
pub struct Spd {
    pub bundles: Vec<BundlePolicy>,
    pub sad: Sad,
    /// The UDP ports this end receives ESP-in-UDP on: 4500 and the local ports of the
    /// inbound SAs' encapsulation. A datagram to another port is ordinary UDP.
    pub encap_ports: Vec<u16>,
}

/// Reasons a bundle could not be activated at build time.
#[derive(Debug)]
pub struct ActivationError {
    pub bundle: String,
    pub message: String,
}

/// What to keep from the previous Spd for a bundle with an unchanged configuration.
#[derive(Default)]
pub struct Carried {
    pub outbound: Option<SaSet>,
    pub inbound: Option<SaSet>,
    /// Inbound SAs replaced by newer keys, still accepted (see `BundlePolicy::retired`).
    pub retired: Option<SaSet>,
    pub counters: Arc<Counters>,
    /// A road warrior's peer (ignored for a bundle with a configured `remote`). `build`
    /// keeps it only while the bundle has SAs: without them it becomes the former peer.
    pub peer: Option<Ipv4Addr>,
    pub former_peer: Option<Ipv4Addr>,
}

impl Carried {
    /// Everything of a bundle that survives a rebuild unchanged.
    pub fn from(p: &BundlePolicy) -> Carried {
        Carried {
            outbound: p.outbound.clone(),
            inbound: p.inbound.clone(),
            retired: p.retired.clone(),
            counters: Arc::clone(&p.counters),
            peer: p.peer,
            former_peer: p.former_peer,
        }
    }

    fn has_sas(&self) -> bool {
        self.outbound.is_some() || self.inbound.is_some() || self.retired.is_some()
    }
}

impl Spd {
    /// Builds the policy from activated bundles and, in their places in file order (by
    /// line), the failed sections that block their traffic. `carried(b)` supplies the SAs
    /// of a bundle whose configuration did not change (None: build its SAs from its manual
    /// keys). Bundles that cannot be activated (bad key material, a clashing inbound SPI)
    /// block their traffic too, and are reported.
    pub fn build(
        bundles: &[Bundle],
        failed: &[Bundle],
        dynamic_local: Option<Ipv4Addr>,
        now_ms: u64,
        mut carried: impl FnMut(&Bundle) -> Option<Carried>,
    ) -> (Spd, Vec<ActivationError>) {
        let mut spd = Spd { bundles: Vec::with_capacity(bundles.len() + failed.len()), ..Spd::default() };
        let mut errors = Vec::new();
        let mut all: Vec<(&Bundle, bool)> = bundles.iter().map(|b| (b, false)).chain(failed.iter().map(|b| (b, true))).collect();
        all.sort_by_key(|(b, _)| b.line);
        for (b, is_failed) in all {
            let mut is_failed = is_failed;
            let mut c = match carried(b) {
                _ if is_failed => Carried::default(),
                Some(c) => c,
                None => match &b.keying {
                    Keying::Manual(keys) => match build_sa_sets(b, keys, now_ms) {
                        Ok((o, i)) => Carried { outbound: Some(o), inbound: Some(i), ..Carried::default() },
                        Err(e) => {
                            errors.push(ActivationError { bundle: b.name.clone(), message: e.to_string() });
                            is_failed = true;
                            Carried::default()
                        }
                    },
                    Keying::Ike(_) => Carried::default(),
                },
            };
            if b.remote.is_unspecified() && !c.has_sas() {
                // A road warrior is bound to its peer for as long as it has SAs with it.
                if let Some(gone) = c.peer.take() {
                    c.former_peer = Some(gone);
                }
            }
            let index = spd.bundles.len();
            if let Some(set) = &c.inbound {
                if let Some(clash) = set.iter().find(|sa| spd.sad.contains(sa.proto, sa.spi)) {
                    errors.push(ActivationError {
                        bundle: b.name.clone(),
                        message: format!("inbound {} SPI 0x{:x} is already used by another bundle", clash.proto, clash.spi),
                    });
                    let r = resolve(b, dynamic_local, None, None);
                    spd.bundles.push(BundlePolicy {
                        config: b.clone(),
                        local: r.local,
                        peer: r.peer,
                        former_peer: None,
                        selector: r.selector,
                        blocked: r.blocked,
                        outbound: None,
                        inbound: None,
                        retired: None,
                        counters: c.counters,
                        overhead: 0,
                        failed: true,
                    });
                    continue;
                }
                for sa in set.iter() {
                    spd.sad.insert(Arc::clone(sa), index);
                }
            }
            // An old SPI the new keys happen to reuse belongs to the new SA.
            for sa in c.retired.iter().flat_map(SaSet::iter) {
                spd.sad.insert(Arc::clone(sa), index);
            }
            for sa in c.inbound.iter().chain(c.retired.iter()).flat_map(SaSet::iter) {
                if let Some(ports) = sa.udp_encap {
                    if !spd.encap_ports.contains(&ports.local) {
                        spd.encap_ports.push(ports.local);
                    }
                }
            }
            let r = resolve(b, dynamic_local, c.peer, c.former_peer);
            let overhead = if is_failed { 0 } else { worst_case_overhead(b) };
            spd.bundles.push(BundlePolicy {
                config: b.clone(),
                local: r.local,
                peer: r.peer,
                former_peer: r.former_peer,
                selector: r.selector,
                blocked: r.blocked,
                outbound: c.outbound,
                inbound: c.inbound,
                retired: c.retired,
                counters: c.counters,
                overhead,
                failed: is_failed,
            });
        }
        if !spd.encap_ports.contains(&crate::wire::udp::NAT_T_PORT) {
            spd.encap_ports.push(crate::wire::udp::NAT_T_PORT);
        }
        (spd, errors)
    }

    /// Whether ESP-in-UDP is received on this port (a short list, usually just 4500).
    pub fn is_encap_port(&self, port: u16) -> bool {
        self.encap_ports.contains(&port)
    }

    /// Whether `addr` is one of this end's bundle addresses: only IPsec headers addressed
    /// to this end are removed; others are in transit (a gateway forwarding a host's own
    /// end-to-end ESP, say).
    pub fn is_local(&self, addr: Ipv4Addr) -> bool {
        self.bundles.iter().any(|b| b.local == Some(addr))
    }

    /// The most bytes the bundles can add to one packet, following every chain of nested
    /// bundles: after a bundle, a packet carries its outer header (tunnel or transport
    /// endpoints, outer protocol), and later bundles that match that add their own.
    /// A host advertises its link MTU minus this on its plaintext interface.
    pub fn max_overhead(&self) -> usize {
        let mut best = 0;
        for (i, b) in self.bundles.iter().enumerate() {
            // A road warrior counts while it awaits a peer too, so the MTU a host
            // advertises does not change as peers come and go.
            let Some(local) = b.local else { continue };
            let mut total = b.overhead;
            let peer = b.peer.unwrap_or(Ipv4Addr::UNSPECIFIED);
            let mut flow = FlowKey { src: local, dst: peer, protocol: b.outer_protocol().into(), ports: None };
            for later in &self.bundles[i + 1..] {
                let (Some(sel), Some(local), Some(peer)) = (&later.selector, later.local, later.peer) else { continue };
                if sel.matches_outbound(&flow) {
                    total += later.overhead;
                    if later.is_tunnel() {
                        flow.src = local;
                        flow.dst = peer;
                    }
                    flow.protocol = later.outer_protocol().into();
                }
            }
            best = best.max(total);
        }
        best
    }

    pub fn find(&self, name: &str) -> Option<&BundlePolicy> {
        self.bundles.iter().find(|b| b.name() == name)
    }

    /// The bundles inbound policy expects on a received cleartext packet, in file order:
    /// the ones whose selectors the peer's outbound processing would have matched, each
    /// looking at the packet as the bundles before it left it.
    pub fn expected_inbound(&self, flow: &FlowKey, out: &mut BundleList) {
        let mut f = *flow;
        for (i, b) in self.bundles.iter().enumerate() {
            let Some(sel) = &b.selector else { continue };
            if !sel.matches_inbound(&f) {
                continue;
            }
            out.push(i);
            if b.is_tunnel() {
                if let Some(peer) = b.peer {
                    f.src = peer;
                }
                if let Some(local) = b.local {
                    f.dst = local;
                }
            }
            f.protocol = b.outer_protocol().into();
            f.ports = None;
        }
    }
}

/// A bundle's ends and selectors as far as they are known.
struct Resolved {
    local: Option<Ipv4Addr>,
    peer: Option<Ipv4Addr>,
    former_peer: Option<Ipv4Addr>,
    selector: Option<Selector>,
    blocked: Option<Selector>,
}

/// The one place where a bundle's ends are decided: this end's address (configured, or
/// the host's dynamic one) and the peer's (configured, or a road warrior's current peer);
/// the selectors once both are known; and what must stay blocked meanwhile.
fn resolve(b: &Bundle, dynamic_local: Option<Ipv4Addr>, peer: Option<Ipv4Addr>, former_peer: Option<Ipv4Addr>) -> Resolved {
    let local = if b.local.is_unspecified() { dynamic_local } else { Some(b.local) };
    let (peer, former_peer) = if b.remote.is_unspecified() { (peer, former_peer.filter(|f| Some(*f) != peer)) } else { (Some(b.remote), None) };
    let local_sel = local.map(|l| b.local_subnet.unwrap_or(Cidr::host(l)));
    let selector = match (local_sel, peer) {
        (Some(local), Some(peer)) => Some(Selector {
            local,
            remote: b.remote_subnet.unwrap_or(Cidr::host(peer)),
            protocol: b.protocol,
            local_port: b.local_port,
            remote_port: b.remote_port,
        }),
        _ => None,
    };
    let blocked_remote = match (selector.is_some(), b.remote_subnet) {
        // Waiting for an address or a peer: the remote selector if there is one to tell...
        (false, Some(net)) => Some(net),
        (false, None) => peer.or(former_peer).map(Cidr::host),
        // ...and while carrying traffic, the former peer's that its own selector misses.
        (true, Some(_)) => None,
        (true, None) => former_peer.map(Cidr::host),
    };
    let blocked = blocked_remote.map(|remote| match local_sel {
        Some(local) => Selector { local, remote, protocol: b.protocol, local_port: b.local_port, remote_port: b.remote_port },
        // Without this end's address only the destination and protocol can be told.
        None => Selector { local: Cidr { addr: Ipv4Addr::UNSPECIFIED, prefix: 0 }, remote, protocol: b.protocol, local_port: None, remote_port: None },
    });
    Resolved { local, peer, former_peer, selector, blocked }
}

/// A short list of bundle indices, without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleList {
    len: usize,
    items: [usize; BundleList::CAP],
}

impl Default for BundleList {
    fn default() -> Self {
        BundleList { len: 0, items: [0; BundleList::CAP] }
    }
}

impl BundleList {
    /// More nested bundles than this on one packet is a policy violation.
    pub const CAP: usize = 8;

    /// False when full.
    pub fn push(&mut self, i: usize) -> bool {
        if self.len == Self::CAP {
            return false;
        }
        self.items[self.len] = i;
        self.len += 1;
        true
    }

    pub fn as_slice(&self) -> &[usize] {
        &self.items[..self.len]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn first(&self) -> Option<usize> {
        self.as_slice().first().copied()
    }

    /// Keeps the indices for which `keep` holds, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let mut kept = BundleList::default();
        for &i in self.as_slice() {
            if keep(i) {
                kept.push(i);
            }
        }
        *self = kept;
    }
}

fn build_direction(b: &Bundle, keys: &DirectionKeys, inbound: bool, now_ms: u64) -> Result<SaSet, KeyError> {
    let window = if inbound { b.replay_window } else { 0 };
    let encap = b.udp_encap.then_some(UdpPorts::NAT_T);
    let esp = match (b.esp, &keys.esp) {
        (Some(t), Some(k)) => Some(Arc::new(Sa::esp(k.spi, inbound, t, &k.enc_key, &k.auth_key, window, now_ms)?.with_udp_encap(encap))),
        _ => None,
    };
    let ah = match (b.ah, &keys.ah) {
        (Some(alg), Some(k)) => Some(Arc::new(Sa::ah(k.spi, inbound, alg, &k.key, window, now_ms)?)),
        _ => None,
    };
    let ipcomp = b.ipcomp.then(|| {
        let cpi = keys.ipcomp_cpi.unwrap_or(CPI_DEFLATE);
        Arc::new(Sa::new(SaProto::IpComp, u32::from(cpi), inbound, SaTransform::ipcomp(), 0, now_ms))
    });
    Ok(SaSet { ipcomp, esp, ah })
}

/// Builds both directions' SAs of a bundle from key material (manual, or installed for an
/// IKE bundle).
pub fn build_sa_sets(b: &Bundle, keys: &SaKeys, now_ms: u64) -> Result<(SaSet, SaSet), KeyError> {
    Ok((build_direction(b, &keys.outbound, false, now_ms)?, build_direction(b, &keys.inbound, true, now_ms)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::EspTransform;

    fn bundle(text: &str) -> Bundle {
        let c = crate::config::parse(text, "ipsec.cfg");
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        c.bundles[0].clone()
    }

    const GATEWAY: &str = "[rw]\nlocal = 192.0.2.42\nremote = 0.0.0.0\nmode = tunnel\nlocal_subnet = 10.2.0.0/24\nesp = aes128-sha1\nkeying = ike\n";
    const PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 41);

    fn esp_set(spi: u32, inbound: bool, encap: Option<UdpPorts>) -> SaSet {
        let t = EspTransform::from_name("aes128-sha1").unwrap();
        let sa = Sa::esp(spi, inbound, t, &[1; 16], &[2; 20], 64, 0).unwrap().with_udp_encap(encap);
        SaSet { esp: Some(Arc::new(sa)), ..SaSet::default() }
    }

    fn build_one(b: &Bundle, carried: Option<Carried>) -> Spd {
        let mut carried = carried;
        Spd::build(std::slice::from_ref(b), &[], None, 0, |_| carried.take()).0
    }

    #[test]
    fn a_road_warrior_is_bound_to_its_peer_only_while_it_has_sas() {
        let b = bundle(GATEWAY);
        let lan = Cidr::new(Ipv4Addr::new(10, 2, 0, 0), 24).unwrap();
        // Never bound: it matches and blocks nothing, whoever the next peer may be.
        let spd = build_one(&b, None);
        let p = &spd.bundles[0];
        assert_eq!((p.state(), p.peer, p.selector, p.blocked), (BundleState::AwaitingPeer, None, None, None));

        // With SAs the peer names the far end.
        let bound = Carried { outbound: Some(esp_set(0x2000, false, None)), peer: Some(PEER), ..Carried::default() };
        let spd = build_one(&b, Some(bound));
        let p = &spd.bundles[0];
        assert_eq!((p.state(), p.peer, p.former_peer, p.blocked), (BundleState::Active, Some(PEER), None, None));
        assert_eq!(p.selector.map(|s| (s.local, s.remote)), Some((lan, Cidr::host(PEER))));

        // Its SAs gone, it awaits a peer; the former one's traffic stays blocked.
        let spd = build_one(&b, Some(Carried::from(p)).map(|c| Carried { outbound: None, ..c }));
        let p = &spd.bundles[0];
        assert_eq!((p.state(), p.peer, p.former_peer, p.selector), (BundleState::AwaitingPeer, None, Some(PEER), None));
        assert_eq!(p.blocked.map(|s| (s.local, s.remote)), Some((lan, Cidr::host(PEER))));
        let flow = FlowKey { src: Ipv4Addr::new(10, 2, 0, 5), dst: PEER, protocol: 17, ports: Some((1, 2)) };
        assert!(p.blocked.unwrap().matches_outbound(&flow));

        // The same peer back: nothing blocked any more.
        let again = Carried { outbound: Some(esp_set(0x2001, false, None)), peer: Some(PEER), former_peer: Some(PEER), ..Carried::default() };
        let spd = build_one(&b, Some(again));
        assert_eq!((spd.bundles[0].former_peer, spd.bundles[0].blocked), (None, None));

        // A configured remote is never replaced by what is carried.
        let fixed = bundle(&GATEWAY.replace("remote = 0.0.0.0", "remote = 192.0.2.7"));
        let spd = build_one(&fixed, Some(Carried { peer: Some(PEER), ..Carried::default() }));
        assert_eq!(spd.bundles[0].peer, Some(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(spd.bundles[0].state(), BundleState::AwaitingKeys);
    }

    #[test]
    fn a_bundle_on_the_dynamic_address_blocks_its_remote_selector_meanwhile() {
        let b = bundle("[d]\nlocal = 0.0.0.0\nremote = 192.0.2.42\nmode = tunnel\nremote_subnet = 10.2.0.0/24\nesp = aes128-sha1\nkeying = ike\n");
        let p = &build_one(&b, None).bundles[0];
        assert_eq!(p.state(), BundleState::AwaitingAddress);
        let blocked = p.blocked.unwrap();
        let flow = |dst| FlowKey { src: Ipv4Addr::new(10, 9, 9, 9), dst, protocol: 6, ports: None };
        assert!(blocked.matches_outbound(&flow(Ipv4Addr::new(10, 2, 0, 1))));
        assert!(!blocked.matches_outbound(&flow(Ipv4Addr::new(10, 3, 0, 1))));
    }

    #[test]
    fn ike_esp_bundles_keep_room_for_udp_encapsulation() {
        let ike = bundle("[i]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nesp = aes128-sha1\nkeying = ike\n");
        // ESP 8 + 16 + 15 + 2 + 12, and UDP 8 in case NAT-T is negotiated.
        assert_eq!(worst_case_overhead(&ike), 53 + 8);
        let with_ah = bundle("[i]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nesp = aes128-sha1\nah = sha1\nkeying = ike\n");
        assert_eq!(worst_case_overhead(&with_ah), 53 + 24, "no NAT-T with AH");
        let manual = bundle(
            "[m]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nesp = aes128-sha1\nesp_spi_out = 0x301\nesp_spi_in = 0x302\n\
             esp_enc_key_out = 0x00112233445566778899aabbccddeeff\nesp_enc_key_in = 0xffeeddccbbaa99887766554433221100\n\
             esp_auth_key_out = 0x0102030405060708090a0b0c0d0e0f1011121314\nesp_auth_key_in = 0x1413121110f0e0d0c0b0a0908070605040302010\n",
        );
        assert_eq!(worst_case_overhead(&manual), 53);
        let encap = Bundle { udp_encap: true, ..manual };
        assert_eq!(worst_case_overhead(&encap), 53 + 8);
    }

    #[test]
    fn udp_encapsulation_is_per_sa_and_its_local_ports_are_listened_on() {
        let ike = bundle("[i]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nesp = aes128-sha1\nkeying = ike\n");
        let ports = UdpPorts::or_nat_t(0, 31001);
        assert_eq!(ports, UdpPorts { local: 4500, remote: 31001 });
        let carried = Carried {
            outbound: Some(esp_set(0x2000, false, Some(ports))),
            inbound: Some(esp_set(0x1000, true, Some(UdpPorts { local: 4600, remote: 31001 }))),
            ..Carried::default()
        };
        let spd = build_one(&ike, Some(carried));
        assert!(spd.is_encap_port(4500) && spd.is_encap_port(4600) && !spd.is_encap_port(500));
        assert!(spd.bundles[0].udp_encapsulated());
        assert_eq!(spd.bundles[0].outer_protocol(), IpProtocol::Udp);
        // Without NAT-T the same bundle is plain ESP, and only 4500 is watched.
        let plain = Carried { outbound: Some(esp_set(0x2000, false, None)), ..Carried::default() };
        let spd = build_one(&ike, Some(plain));
        assert_eq!(spd.bundles[0].outer_protocol(), IpProtocol::Esp);
        assert_eq!(spd.encap_ports, vec![4500]);
        // UDP encapsulation is for ESP alone.
        let comp = Sa::new(SaProto::IpComp, 0x1000, true, SaTransform::ipcomp(), 0, 0).with_udp_encap(Some(UdpPorts::NAT_T));
        assert_eq!(comp.udp_encap, None);
    }
}
