//! The security policy database: the bundles of ipsec.cfg in file order, each with its
//! selectors (resolved against the host's current address) and its SAs; and the inbound
//! SA map. A `Spd` is immutable once built: configuration changes, address changes and
//! newly installed keys build a new one that reuses the SAs that did not change, so their
//! sequence numbers, replay windows and counters carry over.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::config::{Bundle, Cidr, DirectionKeys, Keying, Mode, SaKeys};
use crate::crypto::KeyError;
use crate::sad::{Sa, SaProto, SaTransform, Sad};
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
    /// None while the local address is unknown.
    pub selector: Option<Selector>,
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
        if b.udp_encap {
            n += crate::wire::udp::HEADER_LEN;
        }
    }
    if let Some(a) = b.ah {
        n += ah_header_len(a.icv_len());
    }
    n
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

    pub fn state(&self) -> BundleState {
        if self.failed {
            BundleState::Failed
        } else if self.selector.is_none() {
            BundleState::AwaitingAddress
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
        } else if self.config.udp_encap {
            IpProtocol::Udp
        } else if self.config.esp.is_some() {
            IpProtocol::Esp
        } else {
            IpProtocol::IpComp
        }
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
pub struct Spd {
    pub bundles: Vec<BundlePolicy>,
    pub sad: Sad,
}

/// Reasons a bundle could not be activated at build time.
#[derive(Debug)]
pub struct ActivationError {
    pub bundle: String,
    pub message: String,
}

/// What to keep from the previous Spd for a bundle with an unchanged configuration.
pub struct Carried {
    pub outbound: Option<SaSet>,
    pub inbound: Option<SaSet>,
    /// Inbound SAs replaced by newer keys, still accepted (see `BundlePolicy::retired`).
    pub retired: Option<SaSet>,
    pub counters: Arc<Counters>,
}

impl Carried {
    /// Everything of a bundle that survives a rebuild unchanged.
    pub fn from(p: &BundlePolicy) -> Carried {
        Carried {
            outbound: p.outbound.clone(),
            inbound: p.inbound.clone(),
            retired: p.retired.clone(),
            counters: Arc::clone(&p.counters),
        }
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
        let mut spd = Spd { bundles: Vec::with_capacity(bundles.len() + failed.len()), sad: Sad::default() };
        let mut errors = Vec::new();
        let mut all: Vec<(&Bundle, bool)> = bundles.iter().map(|b| (b, false)).chain(failed.iter().map(|b| (b, true))).collect();
        all.sort_by_key(|(b, _)| b.line);
        for (b, is_failed) in all {
            let mut is_failed = is_failed;
            let (outbound, inbound, retired, counters) = match carried(b) {
                _ if is_failed => (None, None, None, Arc::default()),
                Some(c) => (c.outbound, c.inbound, c.retired, c.counters),
                None => match &b.keying {
                    Keying::Manual(keys) => match build_sa_sets(b, keys, now_ms) {
                        Ok((o, i)) => (Some(o), Some(i), None, Arc::default()),
                        Err(e) => {
                            errors.push(ActivationError { bundle: b.name.clone(), message: e.to_string() });
                            is_failed = true;
                            (None, None, None, Arc::default())
                        }
                    },
                    Keying::Ike(_) => (None, None, None, Arc::default()),
                },
            };
            let index = spd.bundles.len();
            if let Some(set) = &inbound {
                if let Some(clash) = set.iter().find(|sa| spd.sad.contains(sa.proto, sa.spi)) {
                    errors.push(ActivationError {
                        bundle: b.name.clone(),
                        message: format!("inbound {} SPI 0x{:x} is already used by another bundle", clash.proto, clash.spi),
                    });
                    let overhead = 0;
                    let (local, selector) = resolve(b, dynamic_local);
                    spd.bundles.push(BundlePolicy {
                        config: b.clone(),
                        local,
                        selector,
                        outbound: None,
                        inbound: None,
                        retired: None,
                        counters,
                        overhead,
                        failed: true,
                    });
                    continue;
                }
                for sa in set.iter() {
                    spd.sad.insert(Arc::clone(sa), index);
                }
            }
            // An old SPI the new keys happen to reuse belongs to the new SA.
            for sa in retired.iter().flat_map(SaSet::iter) {
                spd.sad.insert(Arc::clone(sa), index);
            }
            let (local, selector) = resolve(b, dynamic_local);
            let overhead = if is_failed { 0 } else { worst_case_overhead(b) };
            spd.bundles.push(BundlePolicy {
                config: b.clone(),
                local,
                selector,
                outbound,
                inbound,
                retired,
                counters,
                overhead,
                failed: is_failed,
            });
        }
        (spd, errors)
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
            let (Some(_), Some(local)) = (&b.selector, b.local) else { continue };
            let mut total = b.overhead;
            let mut flow = FlowKey { src: local, dst: b.config.remote, protocol: b.outer_protocol().into(), ports: None };
            for later in &self.bundles[i + 1..] {
                let (Some(sel), Some(local)) = (&later.selector, later.local) else { continue };
                if sel.matches_outbound(&flow) {
                    total += later.overhead;
                    if later.is_tunnel() {
                        flow.src = local;
                        flow.dst = later.config.remote;
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
                f.src = b.config.remote;
                if let Some(local) = b.local {
                    f.dst = local;
                }
            }
            f.protocol = b.outer_protocol().into();
            f.ports = None;
        }
    }
}

/// This end's address for a bundle, and its selectors once that address is known.
fn resolve(b: &Bundle, dynamic_local: Option<Ipv4Addr>) -> (Option<Ipv4Addr>, Option<Selector>) {
    let local = if b.local.is_unspecified() { dynamic_local } else { Some(b.local) };
    let selector = local.map(|local| Selector {
        local: b.local_subnet.unwrap_or(Cidr::host(local)),
        remote: b.remote_subnet.unwrap_or(Cidr::host(b.remote)),
        protocol: b.protocol,
        local_port: b.local_port,
        remote_port: b.remote_port,
    });
    (local, selector)
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
    let esp = match (b.esp, &keys.esp) {
        (Some(t), Some(k)) => Some(Arc::new(Sa::esp(k.spi, inbound, t, &k.enc_key, &k.auth_key, window, now_ms)?)),
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
