//! Dead Peer Detection (RFC 3706): a peer that has sent nothing authenticated for
//! `dpd_delay` is asked R-U-THERE; one that leaves every question unanswered for
//! `dpd_timeout` is declared dead, and the endpoint removes its SAs so that new traffic
//! starts a fresh negotiation.
//!
//! ```text
//! HDR*, HASH(1), N(R-U-THERE, SPI = CKY-I | CKY-R, data = sequence number)      -->
//!                             <--  HDR*, HASH(1), N(R-U-THERE-ACK, same sequence number)
//! ```
//!
//! Both are Informational exchanges of their own (informational.rs protects them). Any
//! authenticated message from the peer proves it alive, so a busy SA is never probed.
//! The question is repeated every `dpd_delay` with the next sequence number, and the
//! timeout runs from the first unanswered one (as in Pluto), so a silent peer is dead
//! `dpd_delay + dpd_timeout` after it was last heard from.

use std::time::{Duration, Instant};

use crate::ctx::{Ctx, Outcome, Settings};
use crate::event::LogLevel;
use crate::informational;
use crate::main_mode::Phase1;
use crate::wire::{NotifyRepr, NotifyType, ProtocolId};

/// The RFC 3706 vendor ID; its last two bytes are the version, 1.0.
pub(crate) const VENDOR_ID: [u8; 16] = [
    0xaf, 0xca, 0xd7, 0x13, 0x68, 0xa1, 0xf1, 0xc9, 0x6b, 0x86, 0x96, 0xfc, 0x77, 0x57, 0x01, 0x00,
];

/// Any 1.x version speaks the same protocol.
pub(crate) fn is_vendor_id(vid: &[u8]) -> bool {
    vid.len() == VENDOR_ID.len() && vid[..14] == VENDOR_ID[..14] && vid[14] == 1
}

/// What the DPD timer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    Nothing,
    /// Send R-U-THERE with this sequence number.
    Probe(u32),
    /// No answer for `dpd_timeout`.
    PeerDead {
        silent_for: Duration,
    },
}

/// The DPD state of one ISAKMP SA.
#[derive(Debug, Default)]
pub(crate) struct Dpd {
    /// The peer sent the DPD vendor ID in Main Mode.
    pub peer_supports: bool,
    /// When the next R-U-THERE goes out unless the peer is heard from; None while
    /// probing is off (not negotiated, `dpd_delay` None, or the peer declared dead).
    next_probe: Option<Instant>,
    last_heard: Option<Instant>,
    next_seq: u32,
    /// The first unanswered R-U-THERE: its sequence number and when it went out.
    unanswered: Option<(u32, Instant)>,
}

impl Dpd {
    /// The ISAKMP SA is up: probing starts when both ends want it. `first_seq` should be
    /// random (RFC 3706 §5.5), with room to grow.
    pub fn start(&mut self, now: Instant, settings: &Settings, first_seq: u32) {
        self.last_heard = Some(now);
        self.next_seq = first_seq;
        if let (true, Some(delay)) = (self.peer_supports, settings.dpd_delay) {
            self.next_probe = Some(now + delay);
        }
    }

    /// A newer ISAKMP SA with the peer took over probing.
    pub fn stop(&mut self) {
        self.next_probe = None;
        self.unanswered = None;
    }

    pub fn is_probing(&self) -> bool {
        self.next_probe.is_some()
    }

    /// An authenticated message from the peer.
    pub fn heard(&mut self, now: Instant, settings: &Settings) {
        self.last_heard = Some(now);
        self.unanswered = None;
        if let (true, Some(delay)) = (self.next_probe.is_some(), settings.dpd_delay) {
            self.next_probe = Some(now + delay);
        }
    }

    pub fn deadline(&self, settings: &Settings) -> Option<Instant> {
        let dead_at = self
            .unanswered
            .filter(|_| self.next_probe.is_some())
            .map(|(_, since)| since + settings.dpd_timeout);
        [self.next_probe, dead_at].into_iter().flatten().min()
    }

    pub fn poll(&mut self, now: Instant, settings: &Settings) -> Due {
        let (Some(next), Some(delay)) = (self.next_probe, settings.dpd_delay) else {
            return Due::Nothing;
        };
        if let Some((_, since)) = self.unanswered {
            if now >= since + settings.dpd_timeout {
                self.next_probe = None;
                let heard = self.last_heard.unwrap_or(since);
                return Due::PeerDead {
                    silent_for: now.saturating_duration_since(heard),
                };
            }
        }
        if now < next {
            return Due::Nothing;
        }
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        self.unanswered.get_or_insert((seq, now));
        self.next_probe = Some(now + delay);
        Due::Probe(seq)
    }

    /// Whether `seq` answers one of the questions still open.
    pub fn answers(&self, seq: u32) -> bool {
        self.unanswered
            .is_some_and(|(first, _)| seq.wrapping_sub(first) < self.next_seq.wrapping_sub(first))
    }
}

/// Runs the DPD timer of an established ISAKMP SA.
pub(crate) fn on_timeout(ctx: &mut Ctx<'_>, p1: &mut Phase1) {
    match p1.dpd.poll(ctx.now, ctx.settings) {
        Due::Nothing => {}
        Due::Probe(seq) => {
            ctx.log(
                LogLevel::Debug,
                Some(p1.name()),
                format!("DPD: sending R-U-THERE {seq} to {}", p1.remote),
            );
            send(ctx, p1, NotifyType::RUThere, seq);
        }
        Due::PeerDead { silent_for } => {
            ctx.log(
                LogLevel::Warning,
                Some(p1.name()),
                format!(
                    "DPD: {} is dead: nothing heard for {} s, R-U-THERE unanswered; removing its SAs",
                    p1.remote,
                    silent_for.as_secs()
                ),
            );
            ctx.outcomes.push(Outcome::PeerDead { sa: p1.id });
        }
    }
}

fn send(ctx: &mut Ctx<'_>, p1: &Phase1, kind: NotifyType, seq: u32) {
    let spi = [p1.cky_i, p1.cky_r].concat();
    informational::send_notify(
        ctx,
        p1,
        kind,
        ProtocolId::Isakmp,
        spi,
        seq.to_be_bytes().to_vec(),
    );
}

/// The sequence number of an R-U-THERE or its ACK. Cookies that are not ours are only
/// noted: RFC 3706 §5.4 says SHOULD check, and Pluto tolerates them too.
fn sequence(ctx: &mut Ctx<'_>, p1: &Phase1, n: &NotifyRepr) -> Result<u32, String> {
    if n.spi.len() != 16 {
        return Err(format!(
            "SPI of {} bytes instead of the cookies",
            n.spi.len()
        ));
    }
    if n.spi[..8] != p1.cky_i || n.spi[8..] != p1.cky_r {
        ctx.log(
            LogLevel::Debug,
            Some(p1.name()),
            format!("DPD: {:?} from {} names other cookies", n.kind, p1.remote),
        );
    }
    match <[u8; 4]>::try_from(n.data.as_slice()) {
        Ok(b) => Ok(u32::from_be_bytes(b)),
        Err(_) => Err(format!(
            "sequence number of {} bytes instead of 4",
            n.data.len()
        )),
    }
}

/// An authenticated R-U-THERE (answered) or R-U-THERE-ACK. The message that brought it
/// already counted as a sign of life.
pub(crate) fn on_notify(ctx: &mut Ctx<'_>, p1: &Phase1, n: &NotifyRepr) {
    let seq = match sequence(ctx, p1, n) {
        Ok(s) => s,
        Err(e) => {
            return ctx.log(
                LogLevel::Warning,
                Some(p1.name()),
                format!(
                    "DPD: dropping malformed {:?} from {}: {e}",
                    n.kind, p1.remote
                ),
            )
        }
    };
    match n.kind {
        NotifyType::RUThere => {
            ctx.log(
                LogLevel::Debug,
                Some(p1.name()),
                format!("DPD: answering R-U-THERE {seq} from {}", p1.remote),
            );
            send(ctx, p1, NotifyType::RUThereAck, seq);
        }
        _ if p1.dpd.answers(seq) => ctx.log(
            LogLevel::Debug,
            Some(p1.name()),
            format!("DPD: R-U-THERE-ACK {seq} from {}", p1.remote),
        ),
        _ => ctx.log(
            LogLevel::Debug,
            Some(p1.name()),
            format!(
                "DPD: R-U-THERE-ACK {seq} from {} answers nothing we asked",
                p1.remote
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(delay: Option<u64>, timeout: u64) -> Settings {
        Settings {
            dpd_delay: delay.map(Duration::from_secs),
            dpd_timeout: Duration::from_secs(timeout),
            ..Settings::for_tests()
        }
    }

    #[test]
    fn vendor_id_is_rfc_3706_version_1() {
        assert!(is_vendor_id(&VENDOR_ID));
        let mut minor = VENDOR_ID;
        minor[15] = 7;
        assert!(is_vendor_id(&minor));
        let mut major = VENDOR_ID;
        major[14] = 2;
        assert!(!is_vendor_id(&major));
        assert!(!is_vendor_id(&VENDOR_ID[..15]));
        assert!(!is_vendor_id(&[]));
    }

    #[test]
    fn silence_is_probed_every_delay_then_declared_dead() {
        let s = settings(Some(30), 120);
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut d = Dpd {
            peer_supports: true,
            ..Dpd::default()
        };
        d.start(t0, &s, 7);
        assert_eq!(d.deadline(&s), Some(at(30)));
        assert_eq!(d.poll(at(29), &s), Due::Nothing);
        let mut probes = Vec::new();
        let now = loop {
            let now = d.deadline(&s).unwrap();
            match d.poll(now, &s) {
                Due::Probe(seq) => probes.push(((now - t0).as_secs(), seq)),
                Due::PeerDead { silent_for } => {
                    assert_eq!(silent_for, Duration::from_secs(150));
                    break now;
                }
                Due::Nothing => panic!("woken for nothing"),
            }
        };
        assert_eq!(probes, [(30, 7), (60, 8), (90, 9), (120, 10)]);
        assert_eq!(now, at(150));
        assert!(d.answers(8) && !d.answers(11) && !d.answers(6));
        assert_eq!((d.deadline(&s), d.poll(at(1000), &s)), (None, Due::Nothing));
    }

    #[test]
    fn being_heard_postpones_the_probe_and_clears_the_question() {
        let s = settings(Some(30), 120);
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut d = Dpd {
            peer_supports: true,
            ..Dpd::default()
        };
        d.start(t0, &s, u32::MAX);
        d.heard(at(20), &s);
        assert_eq!(d.poll(at(30), &s), Due::Nothing);
        assert_eq!(d.poll(at(50), &s), Due::Probe(u32::MAX));
        assert!(d.answers(u32::MAX));
        assert_eq!(d.poll(at(80), &s), Due::Probe(0));
        assert!(d.answers(0), "sequence numbers wrap");
        d.heard(at(81), &s);
        assert!(!d.answers(0));
        assert_eq!(d.deadline(&s), Some(at(111)));
    }

    #[test]
    fn off_unless_both_want_it() {
        let t0 = Instant::now();
        for (peer, delay) in [(false, Some(30)), (true, None)] {
            let s = settings(delay, 120);
            let mut d = Dpd {
                peer_supports: peer,
                ..Dpd::default()
            };
            d.start(t0, &s, 1);
            assert!(!d.is_probing());
            assert_eq!(d.deadline(&s), None);
            assert_eq!(d.poll(t0 + Duration::from_secs(10_000), &s), Due::Nothing);
        }
    }
}
