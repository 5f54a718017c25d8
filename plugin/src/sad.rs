//! The SA database: one `Sa` per (direction, protocol) of a bundle, with its crypto context,
//! sequence number or anti-replay window, and counters; inbound SAs are found by SPI in a
//! hash map, so the lookup cost does not grow with the number of SAs.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::crypto::{Deflate, EspCrypto, Integrity, KeyError, IPCOMP_MAX_DECOMPRESSED};
use crate::stats::Counters;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaProto {
    Esp,
    Ah,
    IpComp,
}

impl SaProto {
    pub fn name(self) -> &'static str {
        match self {
            SaProto::Esp => "esp",
            SaProto::Ah => "ah",
            SaProto::IpComp => "ipcomp",
        }
    }
}

impl fmt::Display for SaProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// IPComp's per-SA state: the deflate streams and a scratch buffer, so no packet allocates.
pub struct IpCompContext {
    pub deflate: Deflate,
    pub scratch: Box<[u8]>,
}

// Built once per SA and borrowed by every packet: boxing the large ESP context would
// only add a pointer chase per packet.
#[allow(clippy::large_enum_variant)]
pub enum SaTransform {
    Esp(EspCrypto),
    Ah(Integrity),
    /// Deflate streams are stateful, so compressing packets of one SA is serialised.
    IpComp(Mutex<IpCompContext>),
}

impl SaTransform {
    pub fn ipcomp() -> SaTransform {
        SaTransform::IpComp(Mutex::new(IpCompContext {
            deflate: Deflate::new(),
            scratch: vec![0u8; IPCOMP_MAX_DECOMPRESSED].into_boxed_slice(),
        }))
    }

    pub fn description(&self) -> String {
        match self {
            SaTransform::Esp(c) => c.transform().to_string(),
            SaTransform::Ah(i) => format!("hmac-{}", i.alg().name()),
            SaTransform::IpComp(_) => "deflate".to_string(),
        }
    }
}

/// RFC 4303 section 3.4.3 anti-replay window, as a bitmap of up to 4096 packets.
/// Bit `s % SIZE` says whether sequence number `s` (within the window) was seen.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    size: u32,
    top: u32,
    bits: [u64; ReplayWindow::WORDS],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    Duplicate,
    TooOld,
}

impl ReplayWindow {
    pub const MAX: u32 = 4096;
    const WORDS: usize = (ReplayWindow::MAX / 64) as usize;

    pub fn new(size: u32) -> ReplayWindow {
        ReplayWindow { size: size.min(Self::MAX), top: 0, bits: [0; Self::WORDS] }
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    /// Highest sequence number accepted so far.
    pub fn top(&self) -> u32 {
        self.top
    }

    fn bit(seq: u32) -> (usize, u64) {
        let i = seq % Self::MAX;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Whether `seq` could be accepted; does not change the window (the ICV is not checked yet).
    pub fn check(&self, seq: u32) -> Result<(), ReplayError> {
        if self.size == 0 {
            return Ok(());
        }
        if seq == 0 {
            // The first packet of an SA carries 1 (RFC 4303 section 3.3.3).
            return Err(ReplayError::TooOld);
        }
        if seq > self.top {
            return Ok(());
        }
        if self.top - seq >= self.size {
            return Err(ReplayError::TooOld);
        }
        let (w, m) = Self::bit(seq);
        if self.bits[w] & m != 0 {
            Err(ReplayError::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Records `seq` after its ICV verified. Checks again, because another thread may
    /// have accepted the same sequence number in the meantime.
    pub fn accept(&mut self, seq: u32) -> Result<(), ReplayError> {
        self.check(seq)?;
        if self.size == 0 {
            self.top = self.top.max(seq);
            return Ok(());
        }
        if seq > self.top {
            let advance = seq - self.top;
            if advance >= Self::MAX {
                self.bits = [0; Self::WORDS];
            } else {
                // Clear the bits of the sequence numbers the window slides over.
                // Only an authenticated packet moves the window, so this loop is bounded
                // by the window size and usually runs once.
                for s in self.top + 1..=seq {
                    let (w, m) = Self::bit(s);
                    self.bits[w] &= !m;
                }
            }
            self.top = seq;
        }
        let (w, m) = Self::bit(seq);
        self.bits[w] |= m;
        Ok(())
    }
}

/// One direction of one protocol of one bundle.
pub struct Sa {
    pub proto: SaProto,
    /// SPI for ESP and AH; CPI (16 bits) for IPComp.
    pub spi: u32,
    pub inbound: bool,
    pub transform: SaTransform,
    /// Outbound: the last sequence number sent. 64 bits so the 32-bit space cannot wrap.
    seq: AtomicU64,
    /// Inbound only (size 0 = off).
    replay: Mutex<ReplayWindow>,
    pub counters: Counters,
    pub created_ms: u64,
    /// Soft and hard limits (keyed SAs from the daemon); none for manual keys.
    pub lifetime: SaLifetime,
    /// Which limits were reached already: `SOFT_REACHED`, `HARD_REACHED`.
    expired: AtomicU8,
    /// ESP only: the SA's packets travel in UDP (RFC 3948) between these ports. From
    /// `udp_encap = yes` (4500/4500) or, for SAs from the keying daemon, from the NAT-T
    /// that IKE negotiated for this SA (flag UDP_ENCAP and the ports of its addresses).
    pub udp_encap: Option<UdpPorts>,
    /// The peer's port outbound ESP-in-UDP goes to now: `udp_encap.remote` until the peer's
    /// NAT maps it elsewhere (see `follow_peer_port`).
    peer_port: AtomicU16,
}

/// The UDP ports of an ESP-in-UDP SA (RFC 3948), from this end's point of view: outbound
/// packets go from `local` to `remote`; inbound ones must arrive at `local` (from any
/// port: a NAT on the way may change the peer's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPorts {
    pub local: u16,
    pub remote: u16,
}

impl UdpPorts {
    /// 4500 both ways: what `udp_encap = yes` means, and what a port of 0 from the daemon
    /// stands for.
    pub const NAT_T: UdpPorts = UdpPorts { local: crate::wire::udp::NAT_T_PORT, remote: crate::wire::udp::NAT_T_PORT };

    /// Ports as the daemon sends them, 0 meaning 4500.
    pub fn or_nat_t(local: u16, remote: u16) -> UdpPorts {
        let port = |p: u16| if p == 0 { crate::wire::udp::NAT_T_PORT } else { p };
        UdpPorts { local: port(local), remote: port(remote) }
    }
}

/// Soft and hard lifetime of an SA, in seconds since it was added and in bytes; 0 = none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaLifetime {
    pub soft_secs: u64,
    pub hard_secs: u64,
    pub soft_bytes: u64,
    pub hard_bytes: u64,
}

/// A lifetime limit an SA just reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Soft,
    Hard,
}

const SOFT_REACHED: u8 = 1;
const HARD_REACHED: u8 = 2;

impl SaLifetime {
    fn reached(limit: u64, value: u64) -> bool {
        limit != 0 && value >= limit
    }
}

impl Sa {
    /// The limit this SA reached since the last call, if any (each is reported once).
    pub fn check_lifetime(&self, now_ms: u64) -> Option<Expiry> {
        let age = now_ms.saturating_sub(self.created_ms) / 1000;
        let bytes = self.counters.bytes();
        let l = &self.lifetime;
        let hard = SaLifetime::reached(l.hard_secs, age) || SaLifetime::reached(l.hard_bytes, bytes);
        let soft = hard || SaLifetime::reached(l.soft_secs, age) || SaLifetime::reached(l.soft_bytes, bytes);
        let (flag, expiry) = if hard {
            (HARD_REACHED | SOFT_REACHED, Expiry::Hard)
        } else if soft {
            (SOFT_REACHED, Expiry::Soft)
        } else {
            return None;
        };
        let before = self.expired.fetch_or(flag, Ordering::Relaxed);
        let new = flag & !before;
        if new & HARD_REACHED != 0 {
            Some(Expiry::Hard)
        } else if new & SOFT_REACHED != 0 {
            Some(expiry)
        } else {
            None
        }
    }

    pub fn with_lifetime(mut self, lifetime: SaLifetime) -> Sa {
        self.lifetime = lifetime;
        self
    }

    /// Puts the SA's packets in UDP (ESP only: AH and IPComp SAs ignore it).
    pub fn with_udp_encap(mut self, ports: Option<UdpPorts>) -> Sa {
        self.udp_encap = ports.filter(|_| self.proto == SaProto::Esp);
        self.peer_port = AtomicU16::new(self.udp_encap.map_or(0, |p| p.remote));
        self
    }

    /// The UDP ports outbound packets of this SA use now.
    pub fn udp_ports_now(&self) -> Option<UdpPorts> {
        self.udp_encap.map(|p| UdpPorts { local: p.local, remote: self.peer_port.load(Ordering::Relaxed) })
    }

    /// The peer's NAT mapped it to another port (an authenticated packet of the peer came
    /// from there): outbound packets follow, as RFC 3948 section 2.2 and the kernels that
    /// implement it do. True when the port changed.
    pub fn follow_peer_port(&self, port: u16) -> bool {
        // Read first: the common case (no move) then writes nothing shared.
        self.udp_encap.is_some()
            && port != 0
            && self.peer_port.load(Ordering::Relaxed) != port
            && self.peer_port.swap(port, Ordering::Relaxed) != port
    }

    pub fn new(proto: SaProto, spi: u32, inbound: bool, transform: SaTransform, replay_window: u32, now_ms: u64) -> Sa {
        Sa {
            proto,
            spi,
            inbound,
            transform,
            seq: AtomicU64::new(0),
            replay: Mutex::new(ReplayWindow::new(replay_window)),
            counters: Counters::default(),
            created_ms: now_ms,
            lifetime: SaLifetime::default(),
            expired: AtomicU8::new(0),
            udp_encap: None,
            peer_port: AtomicU16::new(0),
        }
    }

    pub fn esp(spi: u32, inbound: bool, t: crate::crypto::EspTransform, enc: &[u8], auth: &[u8], window: u32, now_ms: u64) -> Result<Sa, KeyError> {
        Ok(Sa::new(SaProto::Esp, spi, inbound, SaTransform::Esp(EspCrypto::new(t, enc, auth)?), window, now_ms))
    }

    pub fn ah(spi: u32, inbound: bool, alg: crate::crypto::IntegAlg, key: &[u8], window: u32, now_ms: u64) -> Result<Sa, KeyError> {
        Ok(Sa::new(SaProto::Ah, spi, inbound, SaTransform::Ah(Integrity::new(alg, key)?), window, now_ms))
    }

    /// Next outbound sequence number, or None once 2^32 - 1 has been used: a sequence
    /// number never wraps silently (RFC 4303 section 3.3.3).
    pub fn next_seq(&self) -> Option<u32> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        u32::try_from(n).ok()
    }

    /// Last outbound sequence number sent, or for inbound SAs the top of the window.
    pub fn last_seq(&self) -> u64 {
        if self.inbound {
            u64::from(self.replay().top())
        } else {
            self.seq.load(Ordering::Relaxed).min(u64::from(u32::MAX))
        }
    }

    pub fn replay(&self) -> MutexGuard<'_, ReplayWindow> {
        // A poisoned lock only means another thread panicked mid-update of a plain bitmap;
        // the bitmap is still usable.
        self.replay.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Inbound SAs by (protocol, SPI), each with the index of the bundle that owns it.
#[derive(Default)]
pub struct Sad {
    inbound: HashMap<(SaProto, u32), (Arc<Sa>, usize)>,
}

impl Sad {
    /// Adds an inbound SA; false if that SPI is already taken.
    pub fn insert(&mut self, sa: Arc<Sa>, bundle: usize) -> bool {
        let key = (sa.proto, sa.spi);
        if self.inbound.contains_key(&key) {
            return false;
        }
        self.inbound.insert(key, (sa, bundle));
        true
    }

    pub fn lookup(&self, proto: SaProto, spi: u32) -> Option<(&Arc<Sa>, usize)> {
        self.inbound.get(&(proto, spi)).map(|(sa, b)| (sa, *b))
    }

    pub fn contains(&self, proto: SaProto, spi: u32) -> bool {
        self.inbound.contains_key(&(proto, spi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window_accepts_new_and_rejects_duplicates() {
        let mut w = ReplayWindow::new(64);
        assert_eq!(w.check(0), Err(ReplayError::TooOld));
        for s in 1..=100 {
            assert_eq!(w.accept(s), Ok(()));
            assert_eq!(w.accept(s), Err(ReplayError::Duplicate));
        }
        assert_eq!(w.top(), 100);
        // 37 is the left edge (100 - 63): still inside, already seen.
        assert_eq!(w.check(37), Err(ReplayError::Duplicate));
        assert_eq!(w.check(36), Err(ReplayError::TooOld));
    }

    #[test]
    fn replay_window_out_of_order_inside_window() {
        let mut w = ReplayWindow::new(64);
        w.accept(10).unwrap();
        w.accept(5).unwrap();
        assert_eq!(w.accept(5), Err(ReplayError::Duplicate));
        w.accept(7).unwrap();
        w.accept(200).unwrap();
        // The jump cleared the old bits: 150 is new, 10 is too old.
        assert_eq!(w.check(150), Ok(()));
        assert_eq!(w.check(10), Err(ReplayError::TooOld));
        assert_eq!(w.check(200), Err(ReplayError::Duplicate));
    }

    #[test]
    fn replay_window_large_and_word_boundaries() {
        let mut w = ReplayWindow::new(4096);
        for s in (1..10_000).step_by(3) {
            w.accept(s).unwrap();
        }
        let top = w.top();
        for s in top.saturating_sub(4095)..=top {
            let expect = if (s - 1) % 3 == 0 { Err(ReplayError::Duplicate) } else { Ok(()) };
            assert_eq!(w.check(s), expect, "seq {s}");
        }
        assert_eq!(w.check(top - 4096), Err(ReplayError::TooOld));
        // A jump by exactly one window clears everything.
        w.accept(top + 4096).unwrap();
        assert_eq!(w.check(top + 1), Ok(()));
    }

    #[test]
    fn replay_window_off_accepts_everything() {
        let mut w = ReplayWindow::new(0);
        w.accept(5).unwrap();
        w.accept(5).unwrap();
        w.accept(1).unwrap();
        assert_eq!(w.check(0), Ok(()));
    }

    #[test]
    fn lifetimes_fire_once_soft_then_hard() {
        let l = SaLifetime { soft_secs: 10, hard_secs: 20, soft_bytes: 0, hard_bytes: 1000 };
        let sa = Sa::new(SaProto::IpComp, 0x1000, false, SaTransform::ipcomp(), 0, 0).with_lifetime(l);
        assert_eq!(sa.check_lifetime(9_999), None);
        assert_eq!(sa.check_lifetime(10_000), Some(Expiry::Soft));
        assert_eq!(sa.check_lifetime(11_000), None, "reported once");
        sa.counters.count_packet(1000);
        assert_eq!(sa.check_lifetime(12_000), Some(Expiry::Hard), "bytes count too");
        assert_eq!(sa.check_lifetime(30_000), None);
        let never = Sa::new(SaProto::IpComp, 0x1001, false, SaTransform::ipcomp(), 0, 0);
        assert_eq!(never.check_lifetime(u64::MAX), None, "manual SAs do not expire");
    }

    #[test]
    fn outbound_sequence_never_wraps() {
        let sa = Sa::new(SaProto::Ah, 0x1000, false, SaTransform::ipcomp(), 0, 0);
        sa.seq.store(u64::from(u32::MAX) - 1, Ordering::Relaxed);
        assert_eq!(sa.next_seq(), Some(u32::MAX));
        assert_eq!(sa.next_seq(), None);
        assert_eq!(sa.next_seq(), None);
        assert_eq!(sa.last_seq(), u64::from(u32::MAX));
    }
}
