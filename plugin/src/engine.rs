//! Outbound and inbound packet processing: which bundles apply, and the in-place IPComp,
//! ESP, AH and tunnel transforms.
//!
//! Every transform works inside the host's buffer. Headers are inserted after the IPv4
//! header by moving that header (at most 60 bytes) into the headroom, never the payload;
//! trailers grow into the tailroom. Nothing here allocates on the way through.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::acquire::{Acquire, HeldQueue};
use crate::daemon::LinkSender;
use crate::config::Keying;
use crate::log::{EventLog, Level};
use crate::sad::{ReplayError, Sa, SaProto, SaTransform, UdpPorts};
use crate::spd::{BundleList, BundlePolicy, FlowKey, SaSet, Spd};
use crate::stats::{Counters, DropReason};
use crate::wire::{self, ah, esp, icmp, ipcomp, ipv4, udp, IpProtocol};
use crate::{Direction, Host, PacketBuf, Verdict};

/// Packets shorter than this go out without IPComp: deflate cannot win on them
/// (the threshold Linux and FreeS/WAN use for deflate).
pub const IPCOMP_THRESHOLD: usize = 90;

/// More layers than this on one packet is not something any bundle set produces.
const MAX_LAYERS: usize = 16;

const IKE_PORT: u16 = 500;
const NAT_T_PORT: u16 = wire::udp::NAT_T_PORT;

/// The state the per-packet path shares across bundles.
pub struct Context {
    pub log: EventLog,
    pub global: Counters,
    ident: AtomicU32,
    host: Arc<dyn Host>,
    /// MTU of the link protected packets leave on.
    link_mtu: AtomicU32,
    /// ICMP errors sent in the current second (RFC 1812 section 4.3.2.8: rate-limited).
    icmp_budget: Mutex<(u64, u32)>,
    /// Packets of IKE bundles waiting for their SAs.
    pub held: Mutex<HeldQueue>,
    /// The keying daemon link's writing half (ACQUIRE goes out from here).
    pub link: LinkSender,
}

/// Default link MTU: Ethernet.
pub const DEFAULT_LINK_MTU: u32 = 1500;
/// ICMP errors the plugin generates per second, at most.
const ICMP_PER_SECOND: u32 = 100;

impl Context {
    pub fn new(log: EventLog, host: Arc<dyn Host>) -> Context {
        Context {
            log,
            global: Counters::default(),
            ident: AtomicU32::new(crate::crypto_random_u32()),
            host,
            link_mtu: AtomicU32::new(DEFAULT_LINK_MTU),
            icmp_budget: Mutex::new((0, 0)),
            held: Mutex::new(HeldQueue::default()),
            link: LinkSender::default(),
        }
    }

    fn next_ident(&self) -> u16 {
        self.ident.fetch_add(1, Ordering::Relaxed) as u16
    }

    pub fn held(&self) -> std::sync::MutexGuard<'_, HeldQueue> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the packet until the bundle's SAs arrive, and asks for them.
    fn hold(&self, b: &BundlePolicy, resume_at: usize, pkt: &PacketBuf<'_>) -> Verdict {
        let now = self.now_ms();
        let result = self.held().hold(b.name(), pkt.data(), resume_at, now);
        match result {
            Ok(Acquire::Send) => {
                let f = pkt.flow();
                let asked = if self.link.acquire(b.name(), &f) { "asked the keying daemon" } else { "no keying daemon to ask" };
                self.log.event(
                    Level::Ike,
                    b.name(),
                    "acquire",
                    format_args!("ACQUIRE: no SAs for {} -> {} (protocol {}), packet held for keys; {asked}", f.src, f.dst, f.protocol),
                );
                Verdict::Held
            }
            Ok(Acquire::Pending) => Verdict::Held,
            Err(why) => self.drop_packet(DropReason::NoSa, Some(b), None, format_args!("no SAs yet and the hold queue is full ({why:?})")),
        }
    }

    /// Drops packets held longer than `acquire::HOLD_MS`, logged per bundle.
    pub fn expire_held(&self, spd: &Spd, now_ms: u64) {
        let expired = self.held().expire(now_ms);
        for (bundle, n) in expired {
            self.report_lost_held(spd, &bundle, n, "no keys arrived in time");
        }
    }

    /// Counts and logs held packets that will never be sent.
    pub fn report_lost_held(&self, spd: &Spd, bundle: &str, n: usize, why: &str) {
        let b = spd.find(bundle);
        for _ in 0..n {
            self.global.count_drop(DropReason::AcquireFailed);
            if let Some(b) = b {
                b.counters.count_drop(DropReason::AcquireFailed);
            }
        }
        self.log.event(Level::Ike, bundle, "acquire", format_args!("{n} held packets dropped: {why}"));
    }

    pub fn now_ms(&self) -> u64 {
        self.host.now_ms()
    }

    pub fn set_link_mtu(&self, mtu: u32) {
        self.link_mtu.store(mtu, Ordering::Relaxed);
    }

    pub fn link_mtu(&self) -> usize {
        self.link_mtu.load(Ordering::Relaxed) as usize
    }

    /// Sends the source of a packet too big for the path an ICMP "fragmentation needed"
    /// (RFC 792, RFC 1191) through the host's plaintext side. `quote` is the packet's
    /// original IP header and first 8 payload bytes. The error comes from the packet's
    /// destination address: it arrives from the direction of that destination, which keeps
    /// reverse-path filters quiet, and the sender's stack only looks at the quoted header.
    fn send_frag_needed(&self, quote: &[u8], next_hop_mtu: usize) {
        {
            let second = self.host.now_ms() / 1000;
            let mut budget = self.icmp_budget.lock().unwrap_or_else(|e| e.into_inner());
            if budget.0 != second {
                *budget = (second, 0);
            }
            if budget.1 >= ICMP_PER_SECOND {
                return;
            }
            budget.1 += 1;
        }
        let orig = ipv4::Packet::new_unchecked(quote);
        let icmp_len = icmp::HEADER_LEN + quote.len();
        let mut buf = [0u8; ipv4::HEADER_LEN + icmp::HEADER_LEN + 68];
        let repr = ipv4::Repr {
            src_addr: orig.dst_addr(),
            dst_addr: orig.src_addr(),
            next_header: IpProtocol::Icmp,
            payload_len: icmp_len,
            ttl: 64,
            tos: 0,
            ident: self.next_ident(),
            dont_frag: false,
        };
        repr.emit(&mut ipv4::Packet::new_unchecked(&mut buf[..ipv4::HEADER_LEN + icmp_len]));
        let mtu = u16::try_from(next_hop_mtu).unwrap_or(u16::MAX);
        let mut message = icmp::Packet::new_unchecked(&mut buf[ipv4::HEADER_LEN..ipv4::HEADER_LEN + icmp_len]);
        icmp::Repr::FragNeeded { next_hop_mtu: mtu }.emit(&mut message);
        message.data_mut()[..quote.len()].copy_from_slice(quote);
        message.fill_checksum();
        self.host.emit_packet(Direction::Inbound, &buf[..ipv4::HEADER_LEN + icmp_len]);
    }

    /// Counts a drop everywhere it belongs and reports security events.
    fn drop_packet(
        &self,
        reason: DropReason,
        bundle: Option<&BundlePolicy>,
        sa: Option<&Sa>,
        detail: std::fmt::Arguments<'_>,
    ) -> Verdict {
        self.global.count_drop(reason);
        if let Some(b) = bundle {
            b.counters.count_drop(reason);
        }
        if let Some(sa) = sa {
            sa.counters.count_drop(reason);
        }
        let name = bundle.map_or("-", |b| b.name());
        let level = if reason.is_security_event() { Level::Sec } else { Level::Dbg };
        if self.log.enabled(level) {
            self.log.event(level, name, reason.name(), format_args!("dropped ({}): {}", reason.name(), detail));
        }
        Verdict::Drop
    }
}

impl PacketBuf<'_> {
    fn data(&self) -> &[u8] {
        &self.buf[self.offset..self.offset + self.len]
    }

    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.offset..self.offset + self.len]
    }

    fn header_len(&self) -> usize {
        usize::from(self.buf[self.offset] & 0x0f) * 4
    }

    /// Opens `n` bytes right after the IPv4 header by moving the header into the headroom.
    fn open_gap(&mut self, n: usize) -> Result<(), DropReason> {
        if self.offset < n {
            return Err(DropReason::NoRoom);
        }
        let hl = self.header_len();
        self.buf.copy_within(self.offset..self.offset + hl, self.offset - n);
        self.offset -= n;
        self.len += n;
        Ok(())
    }

    /// Removes the `n` bytes right after the IPv4 header by moving the header forward.
    fn close_gap(&mut self, n: usize) {
        let hl = self.header_len();
        self.buf.copy_within(self.offset..self.offset + hl, self.offset + n);
        self.offset += n;
        self.len -= n;
    }

    fn has_tailroom(&self, n: usize) -> bool {
        self.offset + self.len + n <= self.buf.len()
    }

    /// Writes the header fields a transform changed: total length, protocol, checksum.
    fn finish_header(&mut self, protocol: IpProtocol) {
        let len = self.len as u16;
        let mut ip = ipv4::Packet::new_unchecked(self.data_mut());
        ip.set_total_len(len);
        ip.set_next_header(protocol);
        ip.fill_checksum();
    }

    /// Validates the IPv4 header and trims the packet to its total length.
    fn check_ipv4(&mut self) -> Result<(), DropReason> {
        let total = match ipv4::Packet::new_checked(self.data()) {
            Ok(ip) => usize::from(ip.total_len()),
            Err(_) => return Err(DropReason::Malformed),
        };
        self.len = total;
        Ok(())
    }

    fn ip(&self) -> ipv4::Packet<&[u8]> {
        ipv4::Packet::new_unchecked(self.data())
    }

    fn flow(&self) -> FlowKey {
        let ip = self.ip();
        let protocol = ip.next_header();
        let ports = if ip.frag_offset() == 0 { wire::transport_ports(protocol, ip.payload()) } else { None };
        FlowKey { src: ip.src_addr(), dst: ip.dst_addr(), protocol: protocol.into(), ports }
    }
}

/// IKE (UDP 500, and 4500 with the non-ESP marker) and NAT-T keepalives (RFC 3948
/// section 2.3) pass unprotected so that keying can happen at all, as every IPsec stack
/// arranges for its keying daemon.
fn is_ike(pkt: &PacketBuf<'_>) -> bool {
    let ip = pkt.ip();
    if ip.next_header() != IpProtocol::Udp || ip.frag_offset() != 0 {
        return false;
    }
    let Ok(udp) = wire::udp::Packet::new_checked(ip.payload()) else { return false };
    let (s, d) = (udp.src_port(), udp.dst_port());
    if s == IKE_PORT || d == IKE_PORT {
        return true;
    }
    (s == NAT_T_PORT || d == NAT_T_PORT)
        && matches!(wire::udp::classify_nat_t(udp.payload()), Ok(wire::udp::NatTPayload::Ike | wire::udp::NatTPayload::Keepalive))
}

/// Whether an IKE packet from `src` to `dst` is the keying of bundle `b` itself (between
/// its own endpoints), which must pass that bundle unprotected. IKE to anyone else is
/// ordinary traffic for it: nested bundles key the inner one through the outer tunnel.
/// A road warrior's keying is with any peer: the next one must get through too.
fn keys_bundle(b: &BundlePolicy, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
    let peer = |a: Ipv4Addr| b.is_road_warrior() || Some(a) == b.peer;
    (b.local == Some(src) && peer(dst)) || (b.local == Some(dst) && peer(src))
}

/// Offers the packet to every bundle in file order; each one whose selectors match the
/// packet as it is at that point transforms it.
pub fn outbound(spd: &Spd, ctx: &Context, pkt: &mut PacketBuf<'_>) -> Verdict {
    outbound_one(spd, ctx, pkt, 0, None)
}

/// `outbound` for a held packet, from the bundle that held it on (the ones before it were
/// applied before it was held).
pub fn outbound_resume(spd: &Spd, ctx: &Context, pkt: &mut PacketBuf<'_>, resume_at: usize) -> Verdict {
    outbound_one(spd, ctx, pkt, resume_at, None)
}

/// The largest batch `outbound_batch` works on at once; longer slices go in chunks.
pub const MAX_BATCH: usize = 32;

/// `outbound` for several packets: the same decisions packet by packet, but the final ESP
/// encryption of each packet is put off to the end, where packets of one SA are encrypted
/// together (interleaved CBC chains, see `EspCrypto::seal_many`).
pub fn outbound_batch(spd: &Spd, ctx: &Context, pkts: &mut [PacketBuf<'_>], verdicts: &mut [Verdict]) {
    for (pkts, verdicts) in pkts.chunks_mut(MAX_BATCH).zip(verdicts.chunks_mut(MAX_BATCH)) {
        let mut deferred = Deferred { items: [None; MAX_BATCH] };
        for (i, (pkt, verdict)) in pkts.iter_mut().zip(verdicts.iter_mut()).enumerate() {
            *verdict = outbound_one(spd, ctx, pkt, 0, Some((&mut deferred, i)));
        }
        deferred.seal_all(ctx, pkts, verdicts);
    }
}

/// An ESP packet whose encryption was put off: where it lies in its host buffer.
#[derive(Clone, Copy)]
struct DeferredSeal<'s> {
    sa: &'s Sa,
    start: usize,
    len: usize,
    seq: u32,
}

/// At most one deferred seal per packet of a batch: any later transform of the same packet
/// needs its ciphertext, so it seals first (`seal_now`).
struct Deferred<'s> {
    items: [Option<DeferredSeal<'s>>; MAX_BATCH],
}

fn seal_error(_: crate::crypto::CryptoError) -> DropReason {
    // Our own layout always fits; this is a defect, reported as a drop rather than a panic.
    DropReason::NoRoom
}

impl<'s> Deferred<'s> {
    fn seal_now(&mut self, index: usize, pkt: &mut PacketBuf<'_>) -> Result<(), DropReason> {
        match self.items[index].take() {
            Some(d) => seal_region(&d, pkt.buf),
            None => Ok(()),
        }
    }

    /// Seals what is left, SA by SA, up to `crypto::LANES` packets at a time.
    fn seal_all(&mut self, ctx: &Context, pkts: &mut [PacketBuf<'_>], verdicts: &mut [Verdict]) {
        for first in 0..self.items.len() {
            let Some(lead) = self.items[first] else { continue };
            let SaTransform::Esp(crypto) = &lead.sa.transform else { continue };
            let mut regions: [&mut [u8]; crate::crypto::LANES] = Default::default();
            let mut counters = [0u64; crate::crypto::LANES];
            let mut members = [0usize; crate::crypto::LANES];
            let mut results = [Ok(()); crate::crypto::LANES];
            let mut n = 0;
            let same_sa = |d: &Option<DeferredSeal<'_>>| d.is_some_and(|d| std::ptr::eq(d.sa, lead.sa));
            for (i, pkt) in pkts.iter_mut().enumerate().skip(first) {
                if !same_sa(&self.items[i]) {
                    continue;
                }
                let Some(d) = self.items[i].take() else { continue };
                if verdicts[i] == Verdict::Drop {
                    continue;
                }
                regions[n] = &mut pkt.buf[d.start..d.start + d.len];
                counters[n] = u64::from(d.seq);
                members[n] = i;
                n += 1;
                if n == crate::crypto::LANES {
                    crypto.seal_many(&mut regions[..n], &counters[..n], &mut results[..n]);
                    report_seal_errors(ctx, lead.sa, &results[..n], &members[..n], verdicts);
                    regions = Default::default();
                    n = 0;
                }
            }
            if n > 0 {
                crypto.seal_many(&mut regions[..n], &counters[..n], &mut results[..n]);
                report_seal_errors(ctx, lead.sa, &results[..n], &members[..n], verdicts);
            }
        }
    }
}

fn report_seal_errors(ctx: &Context, sa: &Sa, results: &[Result<(), crate::crypto::CryptoError>], members: &[usize], verdicts: &mut [Verdict]) {
    for (result, &i) in results.iter().zip(members) {
        if let Err(e) = result {
            verdicts[i] = ctx.drop_packet(seal_error(*e), None, Some(sa), format_args!("ESP seal failed"));
        }
    }
}

fn seal_region(d: &DeferredSeal<'_>, buf: &mut [u8]) -> Result<(), DropReason> {
    let SaTransform::Esp(crypto) = &d.sa.transform else { return Ok(()) };
    crypto.seal(&mut buf[d.start..d.start + d.len], u64::from(d.seq)).map_err(seal_error)
}

type DeferSlot<'a, 's> = Option<(&'a mut Deferred<'s>, usize)>;

fn outbound_one<'s>(
    spd: &'s Spd,
    ctx: &Context,
    pkt: &mut PacketBuf<'_>,
    start: usize,
    mut defer: DeferSlot<'_, 's>,
) -> Verdict {
    if let Err(reason) = pkt.check_ipv4() {
        return ctx.drop_packet(reason, None, None, format_args!("outbound packet is not IPv4"));
    }
    let ike = is_ike(pkt);
    // What an ICMP "fragmentation needed" would quote, before the transforms change it.
    let mut quote = [0u8; 68];
    let quote_len = (pkt.header_len() + 8).min(pkt.len);
    quote[..quote_len].copy_from_slice(&pkt.data()[..quote_len]);
    let dont_frag = pkt.ip().dont_frag();
    let orig_len = pkt.len;
    let mut overhead = 0;
    let mut first_bundle = None;
    for (index, b) in spd.bundles.iter().enumerate().skip(start) {
        let flow = pkt.flow();
        let own_keying = ike && keys_bundle(b, flow.src, flow.dst);
        if !b.selector.as_ref().is_some_and(|sel| sel.matches_outbound(&flow)) || own_keying {
            // What the bundle would protect but cannot carry (its address or its peer is
            // not known, or a road warrior's former peer) must not leave in clear.
            if !own_keying && b.blocked.as_ref().is_some_and(|sel| sel.matches_outbound(&flow)) {
                let why = match b.state() {
                    crate::spd::BundleState::AwaitingAddress => "bundle waits for the host's address",
                    _ if b.peer.is_none() => "road-warrior bundle waits for a peer",
                    _ => "the road warrior this traffic belongs to has left",
                };
                return ctx.drop_packet(DropReason::NoSa, Some(b), None, format_args!("{} -> {}: {why}", flow.src, flow.dst));
            }
            continue;
        }
        if b.failed {
            return ctx.drop_packet(
                DropReason::BundleFailed,
                Some(b),
                None,
                format_args!("{} -> {}: the bundle's section has errors; its traffic is blocked", flow.src, flow.dst),
            );
        }
        let Some(sas) = &b.outbound else {
            if let Keying::Ike(_) = b.config.keying {
                // What is held must be the packet as far as it got, encrypted included.
                if let Err(reason) = seal_pending(&mut defer, pkt) {
                    return ctx.drop_packet(reason, Some(b), None, format_args!("sealing before hold"));
                }
                return ctx.hold(b, index, pkt);
            }
            return ctx.drop_packet(
                DropReason::NoSa,
                Some(b),
                None,
                format_args!("{} -> {}: bundle has no SAs yet", flow.src, flow.dst),
            );
        };
        if let Err((reason, sa)) = apply_bundle(b, sas, ctx, pkt, &mut defer) {
            return ctx.drop_packet(reason, Some(b), sa, format_args!("outbound {} -> {}", flow.src, flow.dst));
        }
        overhead += b.overhead;
        first_bundle.get_or_insert(b);
    }
    let Some(first) = first_bundle else { return Verdict::Pass };
    if pkt.len > ctx.link_mtu() && dont_frag {
        // The sender asked not to fragment: tell it what fits (RFC 1191), through every
        // nested bundle's worst case, so the next try goes through.
        let fits = ctx.link_mtu().saturating_sub(overhead).max(68);
        ctx.send_frag_needed(&quote[..quote_len], fits);
        return ctx.drop_packet(
            DropReason::TooBig,
            Some(first),
            None,
            format_args!("{orig_len} bytes with DF set, {} once protected, link MTU {}: told the sender {fits}", pkt.len, ctx.link_mtu()),
        );
    }
    Verdict::Transformed
}

fn seal_pending(defer: &mut DeferSlot<'_, '_>, pkt: &mut PacketBuf<'_>) -> Result<(), DropReason> {
    match defer {
        Some((d, i)) => d.seal_now(*i, pkt),
        None => Ok(()),
    }
}

type SaResult<'a> = Result<(), (DropReason, Option<&'a Sa>)>;

fn apply_bundle<'s>(
    b: &BundlePolicy,
    sas: &'s SaSet,
    ctx: &Context,
    pkt: &mut PacketBuf<'_>,
    defer: &mut DeferSlot<'_, 's>,
) -> SaResult<'s> {
    if b.is_tunnel() {
        let local = b.local.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let peer = b.peer.unwrap_or(Ipv4Addr::UNSPECIFIED);
        encapsulate(pkt, local, peer, ctx.next_ident()).map_err(|r| (r, None))?;
    }
    // Every transform below reads the packet's bytes, so an ESP encryption of this packet
    // put off by an earlier bundle happens first.
    if let Some(sa) = &sas.ipcomp {
        seal_pending(defer, pkt).map_err(|r| (r, None))?;
        compress(sa, pkt).map_err(|r| (r, Some(&**sa)))?;
    }
    if let Some(sa) = &sas.esp {
        seal_pending(defer, pkt).map_err(|r| (r, None))?;
        let sealed = esp_prepare(sa, pkt).map_err(|r| (r, Some(&**sa)))?;
        match defer {
            Some((d, i)) => d.items[*i] = Some(sealed),
            None => seal_region(&sealed, pkt.buf).map_err(|r| (r, Some(&**sa)))?,
        }
        if let Some(ports) = sa.udp_ports_now() {
            udp_encapsulate(pkt, ports).map_err(|r| (r, Some(&**sa)))?;
        }
    }
    if let Some(sa) = &sas.ah {
        seal_pending(defer, pkt).map_err(|r| (r, None))?;
        ah_seal(sa, pkt).map_err(|r| (r, Some(&**sa)))?;
    }
    Ok(())
}

/// Tunnel mode: a new outer header local -> remote (RFC 4301 section 5.1.2.1: DF and DSCP
/// copied, ECN copied as RFC 6040's normal mode says).
fn encapsulate(pkt: &mut PacketBuf<'_>, local: Ipv4Addr, remote: Ipv4Addr, ident: u16) -> Result<(), DropReason> {
    if pkt.offset < ipv4::HEADER_LEN {
        return Err(DropReason::NoRoom);
    }
    let (tos, dont_frag) = {
        let inner = pkt.ip();
        (inner.tos(), inner.dont_frag())
    };
    let inner_len = pkt.len;
    pkt.offset -= ipv4::HEADER_LEN;
    pkt.len += ipv4::HEADER_LEN;
    let repr = ipv4::Repr {
        src_addr: local,
        dst_addr: remote,
        next_header: IpProtocol::IpIp,
        payload_len: inner_len,
        ttl: 64,
        tos,
        ident,
        dont_frag,
    };
    repr.emit(&mut ipv4::Packet::new_unchecked(pkt.data_mut()));
    Ok(())
}

fn compress(sa: &Sa, pkt: &mut PacketBuf<'_>) -> Result<(), DropReason> {
    let SaTransform::IpComp(ctx) = &sa.transform else { return Ok(()) };
    let hl = pkt.header_len();
    let payload_len = pkt.len - hl;
    sa.counters.count_packet(pkt.len);
    if payload_len < IPCOMP_THRESHOLD {
        return Ok(());
    }
    let mut guard = ctx.lock().unwrap_or_else(|e| e.into_inner());
    let ctx = &mut *guard;
    let Some(n) = ctx.deflate.compress(&pkt.data()[hl..], &mut ctx.scratch) else { return Ok(()) };
    if n + ipcomp::HEADER_LEN >= payload_len {
        return Ok(());
    }
    let next_header = pkt.ip().next_header();
    let data = pkt.data_mut();
    let repr = ipcomp::Repr { next_header, cpi: sa.spi as u16 };
    repr.emit(&mut ipcomp::Packet::new_unchecked(&mut data[hl..hl + ipcomp::HEADER_LEN]));
    data[hl + ipcomp::HEADER_LEN..hl + ipcomp::HEADER_LEN + n].copy_from_slice(&ctx.scratch[..n]);
    pkt.len = hl + ipcomp::HEADER_LEN + n;
    pkt.finish_header(IpProtocol::IpComp);
    Ok(())
}

/// RFC 3948: a UDP header with the SA's ports (4500 both ways unless NAT-T found a NAT
/// that maps the peer's) in front of the ESP packet, checksum zero (section 2.1). Only the
/// IPv4 header moves, so a deferred ESP seal stays valid.
fn udp_encapsulate(pkt: &mut PacketBuf<'_>, ports: UdpPorts) -> Result<(), DropReason> {
    pkt.open_gap(udp::HEADER_LEN)?;
    let hl = pkt.header_len();
    let payload_len = pkt.len - hl - udp::HEADER_LEN;
    let repr = udp::Repr { src_port: ports.local, dst_port: ports.remote, payload_len };
    repr.emit(&mut udp::Packet::new_unchecked(&mut pkt.data_mut()[hl..hl + udp::HEADER_LEN]));
    pkt.finish_header(IpProtocol::Udp);
    Ok(())
}

/// Builds the ESP packet around the payload (header, padding, trailer, room for the IV and
/// ICV) and returns where it lies; the encryption itself is `seal_region`, now or at the
/// end of a batch.
fn esp_prepare<'s>(sa: &'s Sa, pkt: &mut PacketBuf<'_>) -> Result<DeferredSeal<'s>, DropReason> {
    let SaTransform::Esp(crypto) = &sa.transform else { return Err(DropReason::NoSa) };
    let t = crypto.transform();
    let (iv_len, icv_len) = (t.iv_len(), t.icv_len());
    let hl = pkt.header_len();
    let payload_len = pkt.len - hl;
    let pad_len = esp::pad_len_for(payload_len, t.pad_align());
    let tail = usize::from(pad_len) + 2 + icv_len;
    if pkt.offset < esp::HEADER_LEN + iv_len || !pkt.has_tailroom(tail) {
        return Err(DropReason::NoRoom);
    }
    let seq = sa.next_seq().ok_or(DropReason::SeqExhausted)?;
    let next_header = pkt.ip().next_header();
    sa.counters.count_packet(pkt.len);
    pkt.open_gap(esp::HEADER_LEN + iv_len)?;
    pkt.len += tail;
    let data = pkt.data_mut();
    let packet = &mut data[hl..];
    let repr = esp::Repr { spi: sa.spi, sequence_number: seq };
    repr.emit(&mut esp::Packet::new_unchecked(&mut packet[..esp::HEADER_LEN]));
    let trailer_end = packet.len() - icv_len;
    esp::Trailer { pad_len, next_header }.emit(&mut packet[..trailer_end]);
    pkt.finish_header(IpProtocol::Esp);
    Ok(DeferredSeal { sa, start: pkt.offset + hl, len: pkt.len - hl, seq })
}

/// AH's ICV input for IPv4 starts with the header with its mutable fields zeroed
/// (RFC 4302 section 3.3.3.1); AH (ICV field zeroed) and the payload follow it in `data`.
fn ah_icv_header(data: &[u8], hl: usize) -> [u8; 60] {
    let mut header = [0u8; 60];
    header[..hl].copy_from_slice(&data[..hl]);
    ah::zero_mutable_ipv4_fields(&mut header[..hl]);
    header
}


fn ah_seal(sa: &Sa, pkt: &mut PacketBuf<'_>) -> Result<(), DropReason> {
    let SaTransform::Ah(integ) = &sa.transform else { return Ok(()) };
    let icv_len = integ.icv_len();
    let len = crate::spd::ah_header_len(icv_len);
    if pkt.offset < len {
        return Err(DropReason::NoRoom);
    }
    let seq = sa.next_seq().ok_or(DropReason::SeqExhausted)?;
    let next_header = pkt.ip().next_header();
    sa.counters.count_packet(pkt.len);
    pkt.open_gap(len)?;
    let hl = pkt.header_len();
    {
        let data = pkt.data_mut();
        let repr = ah::Repr { next_header, spi: sa.spi, sequence_number: seq, icv_len };
        repr.emit(&mut ah::Packet::new_unchecked(&mut data[hl..hl + len]));
    }
    pkt.finish_header(IpProtocol::Ah);
    let mut icv = [0u8; 32];
    let header = ah_icv_header(pkt.data(), hl);
    integ.compute(&[&header[..hl], &pkt.data()[hl..]], &mut icv[..icv_len]);
    pkt.data_mut()[hl + 12..hl + 12 + icv_len].copy_from_slice(&icv[..icv_len]);
    Ok(())
}

/// Where the inbound walk is inside a bundle: which of its layers (AH, ESP, IPComp, in
/// that order) may come next.
#[derive(Clone, Copy)]
struct OpenBundle {
    index: usize,
    next_stage: usize,
}

fn stage_of(proto: SaProto) -> usize {
    match proto {
        SaProto::Ah => 0,
        SaProto::Esp => 1,
        SaProto::IpComp => 2,
    }
}

/// True when the bundle still misses a mandatory layer (AH or ESP) from `from` on.
/// IPComp is optional inbound: a packet that would not shrink is sent without it.
fn misses_mandatory(b: &BundlePolicy, from: usize, to: usize) -> bool {
    b.inbound_layers()[from.min(3)..to.min(3)].iter().any(|(p, present)| *present && *p != SaProto::IpComp)
}

/// Removes the IPsec layers addressed to this end in reverse order of application, then
/// checks that exactly the bundles outbound policy would apply protected the packet.
pub fn inbound(spd: &Spd, ctx: &Context, pkt: &mut PacketBuf<'_>) -> Verdict {
    if let Err(reason) = pkt.check_ipv4() {
        return ctx.drop_packet(reason, None, None, format_args!("inbound packet is not IPv4"));
    }
    let mut removed = BundleList::default();
    let mut open: Option<OpenBundle> = None;
    // The ESP packet just came out of a UDP datagram to this local port (RFC 3948).
    let mut udp_encapsulated: Option<u16> = None;
    // ... and from this port of the peer.
    let mut udp_source = 0;
    for _ in 0..MAX_LAYERS {
        let ip = pkt.ip();
        let next = ip.next_header();
        let proto = match next {
            IpProtocol::Udp if udp_encapsulated.is_none() && spd.is_local(ip.dst_addr()) && !ip.is_fragment() => {
                let (esp_len, port) = match udp::Packet::new_checked(ip.payload()) {
                    Ok(u) if spd.is_encap_port(u.dst_port()) && udp::classify_nat_t(u.payload()) == Ok(udp::NatTPayload::Esp) => {
                        udp_source = u.src_port();
                        (u.payload().len(), u.dst_port())
                    }
                    _ => break,
                };
                let hl = pkt.header_len();
                pkt.len = hl + udp::HEADER_LEN + esp_len;
                pkt.close_gap(udp::HEADER_LEN);
                pkt.finish_header(IpProtocol::Esp);
                udp_encapsulated = Some(port);
                continue;
            }
            IpProtocol::Esp => SaProto::Esp,
            IpProtocol::Ah => SaProto::Ah,
            IpProtocol::IpComp => SaProto::IpComp,
            IpProtocol::IpIp => {
                let Some(o) = open.filter(|o| spd.bundles[o.index].is_tunnel()) else { break };
                let b = &spd.bundles[o.index];
                if misses_mandatory(b, o.next_stage, 3) {
                    return ctx.drop_packet(DropReason::WrongLayerOrder, Some(b), None, format_args!("tunnel payload before all of the bundle's layers"));
                }
                if let Err(reason) = decapsulate(pkt) {
                    return ctx.drop_packet(reason, Some(b), None, format_args!("tunnel from {}", b.peer.unwrap_or(Ipv4Addr::UNSPECIFIED)));
                }
                removed.push(o.index);
                open = None;
                continue;
            }
            _ => break,
        };
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        if !spd.is_local(dst) {
            break;
        }
        if ip.is_fragment() {
            return ctx.drop_packet(DropReason::Fragment, guess_bundle(spd, src, dst), None, format_args!("{proto} fragment from {src}"));
        }
        let Some(spi) = read_spi(proto, ip.payload()) else {
            return ctx.drop_packet(DropReason::Truncated, guess_bundle(spd, src, dst), None, format_args!("{proto} header cut short, from {src}"));
        };
        let Some((sa, index)) = spd.sad.lookup(proto, spi) else {
            return ctx.drop_packet(
                DropReason::UnknownSpi,
                guess_bundle(spd, src, dst),
                None,
                format_args!("unknown {proto} SPI 0x{spi:08x} from {src} to {dst}"),
            );
        };
        let b = &spd.bundles[index];
        // An ESP-in-UDP SA takes its packets in UDP to its local port (from any source
        // port: a NAT may change it), any other SA plain.
        let expected = if proto == SaProto::Esp { sa.udp_encap.map(|p| p.local) } else { None };
        if expected != udp_encapsulated {
            return ctx.drop_packet(
                DropReason::WrongEncapsulation,
                Some(b),
                Some(sa),
                format_args!("{proto} SPI 0x{spi:08x} from {src}: {} for an SA that takes {}", Encap(udp_encapsulated), Encap(expected)),
            );
        }
        let encapsulated_from = udp_encapsulated.take().map(|_| udp_source);
        let stage = stage_of(proto);
        let from = match open {
            Some(o) if o.index == index => o.next_stage,
            Some(o) => {
                let prev = &spd.bundles[o.index];
                if prev.is_tunnel() || misses_mandatory(prev, o.next_stage, 3) || !removed.push(o.index) {
                    return ctx.drop_packet(DropReason::WrongLayerOrder, Some(prev), Some(sa), format_args!("{proto} SPI 0x{spi:08x} inside an incomplete bundle"));
                }
                0
            }
            None => 0,
        };
        if stage < from || misses_mandatory(b, from, stage) {
            return ctx.drop_packet(DropReason::WrongLayerOrder, Some(b), Some(sa), format_args!("{proto} SPI 0x{spi:08x} from {src}: layers out of order"));
        }
        let result = match proto {
            SaProto::Esp => esp_open(sa, pkt),
            SaProto::Ah => ah_open(sa, pkt),
            SaProto::IpComp => decompress(sa, pkt),
        };
        if let Err(reason) = result {
            return ctx.drop_packet(reason, Some(b), Some(sa), format_args!("{proto} SPI 0x{spi:08x} from {src}"));
        }
        if let Some(port) = encapsulated_from {
            follow_nat_mapping(ctx, b, src, port);
        }
        open = Some(OpenBundle { index, next_stage: stage + 1 });
    }
    if let Some(o) = open {
        let b = &spd.bundles[o.index];
        if b.is_tunnel() || misses_mandatory(b, o.next_stage, 3) || !removed.push(o.index) {
            return ctx.drop_packet(DropReason::WrongLayerOrder, Some(b), None, format_args!("incomplete bundle layers"));
        }
    }
    check_policy(spd, ctx, pkt, &removed)
}

/// An authenticated, fresh ESP-in-UDP packet from the bundle's peer came from `port`: if
/// the peer's NAT has mapped it to a new port, the bundle's outbound ESP follows (only the
/// port: a new address is the keying daemon's business). Authentication and the replay
/// check come first, so a forged or replayed packet cannot redirect the traffic.
fn follow_nat_mapping(ctx: &Context, b: &BundlePolicy, src: Ipv4Addr, port: u16) {
    if b.peer != Some(src) {
        return;
    }
    let Some(out) = b.outbound.as_ref().and_then(|s| s.esp.as_ref()) else { return };
    if out.follow_peer_port(port) {
        ctx.log.event(
            crate::log::Level::Inf,
            b.name(),
            "sa",
            format_args!("the peer's NAT mapping moved: ESP to {src} now goes to UDP port {port}"),
        );
    }
}

/// How an ESP packet travels, for the log: plain, or in UDP to a port of this end.
struct Encap(Option<u16>);

impl std::fmt::Display for Encap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("plain ESP"),
            Some(port) => write!(f, "ESP in UDP to port {port}"),
        }
    }
}

/// The inbound policy check of SPEC §2: the removed bundles, in file order, must be
/// exactly the ones the peer's outbound processing would have applied.
fn check_policy(spd: &Spd, ctx: &Context, pkt: &PacketBuf<'_>, removed: &BundleList) -> Verdict {
    let flow = pkt.flow();
    let mut expected = BundleList::default();
    spd.expected_inbound(&flow, &mut expected);
    if is_ike(pkt) {
        expected.retain(|i| !keys_bundle(&spd.bundles[i], flow.src, flow.dst));
    }
    let got = removed.as_slice();
    let matches = expected.as_slice().len() == got.len() && expected.as_slice().iter().eq(got.iter().rev());
    if matches {
        return if got.is_empty() { Verdict::Pass } else { Verdict::Transformed };
    }
    let bundle = expected.first().or(got.first().copied()).map(|i| &spd.bundles[i]);
    let proto = IpProtocol::from(flow.protocol);
    if got.is_empty() {
        ctx.drop_packet(DropReason::PolicyViolation, bundle, None, format_args!("cleartext {proto} {} -> {} for a protected selector", flow.src, flow.dst))
    } else {
        ctx.drop_packet(DropReason::PolicyViolation, bundle, None, format_args!("{proto} {} -> {} protected by the wrong bundles", flow.src, flow.dst))
    }
}

/// The bundle an unattributable packet most likely concerns, for the log: the one with
/// this peer and this local address.
fn guess_bundle(spd: &Spd, src: Ipv4Addr, dst: Ipv4Addr) -> Option<&BundlePolicy> {
    spd.bundles
        .iter()
        .find(|b| b.peer == Some(src) && b.local == Some(dst))
        .or_else(|| spd.bundles.iter().find(|b| b.peer == Some(src)))
}

fn read_spi(proto: SaProto, payload: &[u8]) -> Option<u32> {
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    match proto {
        SaProto::Esp => esp::Packet::new_checked(payload).ok().map(|p| p.spi()),
        SaProto::Ah => (payload.len() >= 12).then(|| be32(&payload[4..8])),
        SaProto::IpComp => ipcomp::Packet::new_checked(payload).ok().map(|p| u32::from(p.cpi())),
    }
}

fn replay_drop(e: ReplayError) -> DropReason {
    match e {
        ReplayError::Duplicate => DropReason::Replay,
        ReplayError::TooOld => DropReason::ReplayTooOld,
    }
}

fn esp_open(sa: &Sa, pkt: &mut PacketBuf<'_>) -> Result<(), DropReason> {
    let SaTransform::Esp(crypto) = &sa.transform else { return Err(DropReason::UnknownSpi) };
    let t = crypto.transform();
    let (iv_len, icv_len) = (t.iv_len(), t.icv_len());
    let hl = pkt.header_len();
    let esp_len = pkt.len - hl;
    if esp_len < esp::HEADER_LEN + iv_len + icv_len + 2 {
        return Err(DropReason::Truncated);
    }
    let seq = esp::Packet::new_unchecked(&pkt.data()[hl..]).sequence_number();
    sa.replay().check(seq).map_err(replay_drop)?;
    let packet_len = pkt.len;
    let packet = &mut pkt.data_mut()[hl..];
    crypto.open(packet).map_err(|e| match e {
        crate::crypto::CryptoError::AuthFailed => DropReason::AuthFailed,
        crate::crypto::CryptoError::BadLength => DropReason::Truncated,
    })?;
    sa.replay().accept(seq).map_err(replay_drop)?;
    sa.counters.count_packet(packet_len);
    let plaintext = &packet[esp::HEADER_LEN + iv_len..esp_len - icv_len];
    let trailer = esp::Trailer::parse(plaintext).map_err(|e| match e {
        wire::Error::Truncated => DropReason::Truncated,
        wire::Error::Malformed => DropReason::BadPadding,
    })?;
    if trailer.next_header == IpProtocol::NoNextHeader {
        return Err(DropReason::Dummy);
    }
    let payload_len = plaintext.len() - usize::from(trailer.pad_len) - 2;
    pkt.len = hl + esp::HEADER_LEN + iv_len + payload_len;
    pkt.close_gap(esp::HEADER_LEN + iv_len);
    pkt.finish_header(trailer.next_header);
    Ok(())
}

fn ah_open(sa: &Sa, pkt: &mut PacketBuf<'_>) -> Result<(), DropReason> {
    let SaTransform::Ah(integ) = &sa.transform else { return Err(DropReason::UnknownSpi) };
    let icv_len = integ.icv_len();
    let hl = pkt.header_len();
    let (seq, next_header, header_len) = match ah::Packet::new_checked(&pkt.data()[hl..]) {
        Ok(p) => (p.sequence_number(), p.next_header(), p.header_len()),
        Err(_) => return Err(DropReason::Truncated),
    };
    if header_len != crate::spd::ah_header_len(icv_len) {
        return Err(DropReason::Truncated);
    }
    sa.replay().check(seq).map_err(replay_drop)?;
    let mut received = [0u8; 32];
    received[..icv_len].copy_from_slice(&pkt.data()[hl + 12..hl + 12 + icv_len]);
    pkt.data_mut()[hl + 12..hl + header_len].fill(0);
    let header = ah_icv_header(pkt.data(), hl);
    if !integ.verify(&[&header[..hl], &pkt.data()[hl..]], &received[..icv_len]) {
        return Err(DropReason::AuthFailed);
    }
    sa.replay().accept(seq).map_err(replay_drop)?;
    sa.counters.count_packet(pkt.len);
    pkt.close_gap(header_len);
    pkt.finish_header(next_header);
    Ok(())
}

fn decompress(sa: &Sa, pkt: &mut PacketBuf<'_>) -> Result<(), DropReason> {
    let SaTransform::IpComp(ctx) = &sa.transform else { return Err(DropReason::UnknownSpi) };
    let hl = pkt.header_len();
    let next_header = match ipcomp::Packet::new_checked(&pkt.data()[hl..]) {
        Ok(p) => p.next_header(),
        Err(_) => return Err(DropReason::Truncated),
    };
    sa.counters.count_packet(pkt.len);
    let mut guard = ctx.lock().unwrap_or_else(|e| e.into_inner());
    let ctx = &mut *guard;
    let n = ctx
        .deflate
        .decompress(&pkt.data()[hl + ipcomp::HEADER_LEN..], &mut ctx.scratch)
        .map_err(|e| match e {
            crate::crypto::DecompressError::Malformed => DropReason::DecompressFailed,
            crate::crypto::DecompressError::TooLarge => DropReason::DecompressTooLarge,
        })?;
    if hl + n > pkt.buf.len() || hl + n > usize::from(u16::MAX) {
        return Err(DropReason::NoRoom);
    }
    // Keep the packet where it is if it fits; otherwise slide it towards the headroom.
    let new_offset = pkt.offset.min(pkt.buf.len() - (hl + n));
    pkt.buf.copy_within(pkt.offset..pkt.offset + hl, new_offset);
    pkt.buf[new_offset + hl..new_offset + hl + n].copy_from_slice(&ctx.scratch[..n]);
    pkt.offset = new_offset;
    pkt.len = hl + n;
    pkt.finish_header(next_header);
    Ok(())
}

/// Tunnel mode inbound: the inner packet replaces the outer one; a congestion mark on the
/// outer header is carried to an ECN-capable inner packet (RFC 6040).
fn decapsulate(pkt: &mut PacketBuf<'_>) -> Result<(), DropReason> {
    let hl = pkt.header_len();
    let outer_ecn = pkt.ip().tos() & 0x03;
    let inner_len = match ipv4::Packet::new_checked(&pkt.data()[hl..]) {
        Ok(inner) => usize::from(inner.total_len()),
        Err(_) => return Err(DropReason::BadInnerPacket),
    };
    pkt.offset += hl;
    pkt.len = inner_len;
    let mut inner = ipv4::Packet::new_unchecked(pkt.data_mut());
    let tos = inner.tos();
    if outer_ecn == 0x03 && (tos & 0x03) != 0 && (tos & 0x03) != 0x03 {
        inner.set_tos(tos | 0x03);
        inner.fill_checksum();
    }
    Ok(())
}
