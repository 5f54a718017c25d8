//! Packets waiting for keys. An outbound packet for a `keying = ike` bundle that has no SAs
//! yet is not dropped and not sent in clear: the plugin keeps a copy (the hook answers
//! `Held`), asks for keys (ACQUIRE, as PF_KEY does), and sends the copy on through the
//! host's `emit_packet` once the SAs arrive — or drops it, logged, when they do not arrive
//! in time or keying fails. Like Linux's xfrm policy queue, the queue is small and bounded:
//! it bridges the first round trip of a key exchange, it is not a buffer for a transfer.
//!
//! Only the slow path comes here (a bundle without SAs), so a held packet may allocate.

use std::collections::VecDeque;

/// Packets held per bundle, at most.
pub const MAX_HELD_PER_BUNDLE: usize = 32;
/// Bytes held for all bundles together, at most.
pub const MAX_HELD_BYTES: usize = 256 * 1024;
/// How long a packet waits for keys (Linux's `xfrm_acq_expires` default).
pub const HOLD_MS: u64 = 30_000;
/// How often the same bundle's ACQUIRE is repeated while its packets wait.
pub const ACQUIRE_INTERVAL_MS: u64 = 10_000;

/// A packet as it was when it reached the bundle that had no SAs: bundles before it in the
/// file have already been applied, so it resumes at `resume_at`.
pub struct HeldPacket {
    pub bytes: Vec<u8>,
    pub resume_at: usize,
    pub until_ms: u64,
}

struct BundleQueue {
    bundle: String,
    packets: VecDeque<HeldPacket>,
    /// When an ACQUIRE was last asked for; None = never.
    acquired_ms: Option<u64>,
}

/// Why a packet could not be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldRefused {
    BundleFull,
    TotalFull,
}

#[derive(Default)]
pub struct HeldQueue {
    queues: Vec<BundleQueue>,
    bytes: usize,
}

/// What `hold` tells the caller to do besides answering `Held`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// Ask the keying daemon for this bundle's SAs now.
    Send,
    /// An ACQUIRE for it is already under way.
    Pending,
}

impl HeldQueue {
    fn queue(&mut self, bundle: &str) -> &mut BundleQueue {
        match self.queues.iter().position(|q| q.bundle == bundle) {
            Some(i) => &mut self.queues[i],
            None => {
                self.queues.push(BundleQueue { bundle: bundle.to_string(), packets: VecDeque::new(), acquired_ms: None });
                let last = self.queues.len() - 1;
                &mut self.queues[last]
            }
        }
    }

    /// Keeps a copy of `packet` for `bundle`; says whether to send an ACQUIRE.
    pub fn hold(&mut self, bundle: &str, packet: &[u8], resume_at: usize, now_ms: u64) -> Result<Acquire, HoldRefused> {
        self.expire(now_ms);
        if self.bytes + packet.len() > MAX_HELD_BYTES {
            return Err(HoldRefused::TotalFull);
        }
        let q = self.queue(bundle);
        if q.packets.len() >= MAX_HELD_PER_BUNDLE {
            return Err(HoldRefused::BundleFull);
        }
        q.packets.push_back(HeldPacket { bytes: packet.to_vec(), resume_at, until_ms: now_ms + HOLD_MS });
        let acquire = match q.acquired_ms {
            Some(t) if now_ms.saturating_sub(t) < ACQUIRE_INTERVAL_MS => Acquire::Pending,
            _ => {
                q.acquired_ms = Some(now_ms);
                Acquire::Send
            }
        };
        self.bytes += packet.len();
        Ok(acquire)
    }

    /// Takes every packet held for `bundle` (its keys arrived, or keying failed).
    pub fn take(&mut self, bundle: &str) -> Vec<HeldPacket> {
        let Some(i) = self.queues.iter().position(|q| q.bundle == bundle) else { return Vec::new() };
        let q = self.queues.swap_remove(i);
        self.bytes -= q.packets.iter().map(|p| p.bytes.len()).sum::<usize>();
        q.packets.into()
    }

    /// Drops packets whose time is up; returns (bundle, count) for each bundle that lost some.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(String, usize)> {
        let mut expired = Vec::new();
        let mut freed = 0;
        for q in &mut self.queues {
            let before = q.packets.len();
            q.packets.retain(|p| {
                let keep = p.until_ms > now_ms;
                if !keep {
                    freed += p.bytes.len();
                }
                keep
            });
            if q.packets.len() != before {
                expired.push((q.bundle.clone(), before - q.packets.len()));
            }
        }
        self.queues.retain(|q| !q.packets.is_empty());
        self.bytes -= freed;
        expired
    }

    pub fn held(&self, bundle: &str) -> usize {
        self.queues.iter().find(|q| q.bundle == bundle).map_or(0, |q| q.packets.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_asks_once_and_releases() {
        let mut q = HeldQueue::default();
        assert_eq!(q.hold("b", &[1, 2, 3], 0, 1000), Ok(Acquire::Send));
        assert_eq!(q.hold("b", &[4], 1, 2000), Ok(Acquire::Pending));
        assert_eq!(q.hold("c", &[5], 0, 2000), Ok(Acquire::Send), "another bundle asks for itself");
        // Still waiting after the interval: ask again.
        assert_eq!(q.hold("b", &[6], 0, 1000 + ACQUIRE_INTERVAL_MS), Ok(Acquire::Send));
        let taken = q.take("b");
        assert_eq!(taken.iter().map(|p| p.bytes.clone()).collect::<Vec<_>>(), vec![vec![1, 2, 3], vec![4], vec![6]]);
        assert_eq!(taken[1].resume_at, 1);
        assert_eq!(q.held("b"), 0);
        assert_eq!(q.held("c"), 1);
        assert!(q.take("none").is_empty());
    }

    #[test]
    fn bounded_per_bundle_and_in_total() {
        let mut q = HeldQueue::default();
        for _ in 0..MAX_HELD_PER_BUNDLE {
            q.hold("b", &[0; 10], 0, 0).unwrap();
        }
        assert_eq!(q.hold("b", &[0; 10], 0, 0), Err(HoldRefused::BundleFull));
        let big = vec![0u8; MAX_HELD_BYTES / 4];
        for i in 0..3 {
            q.hold(&format!("x{i}"), &big, 0, 0).unwrap();
        }
        assert_eq!(q.hold("y", &big, 0, 0), Err(HoldRefused::TotalFull));
        q.take("x0");
        assert!(q.hold("y", &big, 0, 0).is_ok(), "taking frees the bytes");
    }

    #[test]
    fn packets_expire() {
        let mut q = HeldQueue::default();
        q.hold("b", &[1; 100], 0, 0).unwrap();
        q.hold("b", &[2; 100], 0, 10_000).unwrap();
        assert_eq!(q.expire(HOLD_MS), vec![("b".to_string(), 1)]);
        assert_eq!(q.held("b"), 1);
        assert_eq!(q.expire(HOLD_MS + 10_000), vec![("b".to_string(), 1)]);
        assert_eq!(q.held("b"), 0);
        assert_eq!(q.bytes, 0);
    }
}
