//! Packet, byte and drop counters, kept per SA, per bundle and per plugin instance
//! (the last like Linux's `/proc/net/xfrm_stat`). Relaxed atomics: counters are statistics,
//! not synchronisation.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet was dropped. Each reason has its own counter; the names are what
/// `ipsecdump` and the JSON dump print, so they never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a well-formed IPv4 packet (header, lengths).
    Malformed,
    /// An ESP/AH/IPComp header or ICV cut short, or ciphertext that is not whole blocks.
    Truncated,
    /// No inbound SA for this SPI (or IPComp CPI).
    UnknownSpi,
    /// ICV mismatch: tampering, corruption or the wrong key.
    AuthFailed,
    /// Sequence number already received inside the anti-replay window.
    Replay,
    /// Sequence number left of the anti-replay window.
    ReplayTooOld,
    /// ESP padding bytes not 1, 2, 3, ... (RFC 4303 section 2.4).
    BadPadding,
    /// Cleartext (or wrongly protected) traffic for a selector a bundle protects.
    PolicyViolation,
    /// IPsec layers present, but not in the order the bundles apply them.
    WrongLayerOrder,
    /// Deflate stream corrupt or incomplete.
    DecompressFailed,
    /// Deflate stream that expands past 64 KiB (decompression bomb).
    DecompressTooLarge,
    /// The tunnel's inner packet is not a well-formed IPv4 packet.
    BadInnerPacket,
    /// Outbound: the 32-bit sequence number space of the SA is used up.
    SeqExhausted,
    /// The host buffer lacks the headroom or tailroom the transform needs.
    NoRoom,
    /// Traffic for a bundle that has no SAs (not keyed yet, or its address is not known).
    NoSa,
    /// A fragment of an IPsec packet: the host reassembles before the inbound hook.
    Fragment,
    /// ESP next header 59: a dummy packet (RFC 4303 section 2.6), discarded by design.
    Dummy,
    /// Outbound with DF set, longer than the link MTU once protected: the sender gets an
    /// ICMP "fragmentation needed" with the MTU that fits.
    TooBig,
    /// ESP in UDP for a bundle without `udp_encap`, or plain ESP for one with it.
    WrongEncapsulation,
    /// Held for keys that did not arrive in time (or keying failed).
    AcquireFailed,
    /// Traffic of a bundle whose section has errors: blocked, never sent in clear.
    BundleFailed,
}

impl DropReason {
    pub const COUNT: usize = 21;
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Malformed,
        DropReason::Truncated,
        DropReason::UnknownSpi,
        DropReason::AuthFailed,
        DropReason::Replay,
        DropReason::ReplayTooOld,
        DropReason::BadPadding,
        DropReason::PolicyViolation,
        DropReason::WrongLayerOrder,
        DropReason::DecompressFailed,
        DropReason::DecompressTooLarge,
        DropReason::BadInnerPacket,
        DropReason::SeqExhausted,
        DropReason::NoRoom,
        DropReason::NoSa,
        DropReason::Fragment,
        DropReason::Dummy,
        DropReason::TooBig,
        DropReason::WrongEncapsulation,
        DropReason::AcquireFailed,
        DropReason::BundleFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Truncated => "truncated",
            DropReason::UnknownSpi => "unknown_spi",
            DropReason::AuthFailed => "auth_failed",
            DropReason::Replay => "replay",
            DropReason::ReplayTooOld => "replay_too_old",
            DropReason::BadPadding => "bad_padding",
            DropReason::PolicyViolation => "policy_violation",
            DropReason::WrongLayerOrder => "wrong_layer_order",
            DropReason::DecompressFailed => "decompress_failed",
            DropReason::DecompressTooLarge => "decompress_too_large",
            DropReason::BadInnerPacket => "bad_inner_packet",
            DropReason::SeqExhausted => "seq_exhausted",
            DropReason::NoRoom => "no_room",
            DropReason::NoSa => "no_sa",
            DropReason::Fragment => "fragment",
            DropReason::Dummy => "dummy",
            DropReason::TooBig => "too_big",
            DropReason::WrongEncapsulation => "wrong_encapsulation",
            DropReason::AcquireFailed => "acquire_failed",
            DropReason::BundleFailed => "bundle_failed",
        }
    }

    /// Security events go to ipsec.log as SEC (and to the host's output window).
    pub fn is_security_event(self) -> bool {
        !matches!(
            self,
            DropReason::NoRoom
                | DropReason::NoSa
                | DropReason::Dummy
                | DropReason::SeqExhausted
                | DropReason::TooBig
                | DropReason::AcquireFailed
                | DropReason::BundleFailed
        )
    }

    fn index(self) -> usize {
        DropReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

#[derive(Debug, Default)]
pub struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
}

impl Counters {
    pub fn count_packet(&self, bytes: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }

    /// The non-zero drop counters, in the fixed order of `DropReason::ALL`.
    pub fn nonzero_drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.into_iter().map(|r| (r, self.drops(r))).filter(|(_, n)| *n != 0)
    }

    pub fn total_drops(&self) -> u64 {
        DropReason::ALL.into_iter().map(|r| self.drops(r)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_indexed() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn counts_per_reason() {
        let c = Counters::default();
        c.count_drop(DropReason::Replay);
        c.count_drop(DropReason::Replay);
        c.count_drop(DropReason::AuthFailed);
        c.count_packet(100);
        assert_eq!(c.drops(DropReason::Replay), 2);
        assert_eq!(c.drops(DropReason::AuthFailed), 1);
        assert_eq!(c.drops(DropReason::UnknownSpi), 0);
        assert_eq!(c.total_drops(), 3);
        assert_eq!((c.packets(), c.bytes()), (1, 100));
        let nz: Vec<_> = c.nonzero_drops().collect();
        assert_eq!(nz, vec![(DropReason::AuthFailed, 1), (DropReason::Replay, 2)]);
    }
}
