//! SA payloads in IKE terms: phase 1 transforms (RFC 2409 Appendix A) and phase 2
//! proposals for AH, ESP and IPComp (RFC 2407 §4.4-4.5, RFC 4106 §8.4), built from a
//! connection, matched against a peer's offer, and checked in a peer's reply.
//!
//! Matching follows Pluto: the responder walks the initiator's proposals in the
//! initiator's order and takes the first it accepts; it returns that transform verbatim.
//!
//! `phase1` holds the ISAKMP transforms, `phase2` the AH/ESP/IPComp proposals.

mod phase1;
mod phase2;

use ipsec_plugin::config::DhGroup;

use crate::wire::{Attribute, LifeType};

pub(crate) use phase1::{check_phase1_reply, choose_phase1, phase1_offer};
pub(crate) use phase2::{check_child_reply, child_offer, choose_child, ChildPolicy, ChildSuite};

pub(super) fn group_from_number(n: u64) -> Option<DhGroup> {
    DhGroup::ALL
        .into_iter()
        .find(|g| u64::from(g.number()) == n)
}

/// Reads Life Type / Life Duration pairs: a duration applies to the type before it.
/// Only seconds matter here; kilobyte limits are accepted and not enforced.
pub(super) fn lifetime_secs(
    attrs: &[Attribute],
    life_type: u16,
    life_duration: u16,
) -> Result<Option<u64>, String> {
    let mut current = None;
    let mut secs = None;
    for a in attrs {
        if a.kind == life_type {
            current = a.as_number().map(|n| LifeType::from(n as u16));
        } else if a.kind == life_duration {
            let value = a.as_number().ok_or("life duration longer than 8 bytes")?;
            match current {
                Some(LifeType::Seconds) => secs = Some(value),
                Some(LifeType::Kilobytes) => {}
                _ => return Err("life duration without a known life type".into()),
            }
        }
    }
    Ok(secs)
}

/// The negotiated lifetime: the peer's offer, never longer than ours.
/// Never 0, and never so long that adding it to a clock reading could overflow.
pub(crate) fn clamp_lifetime(offered: Option<u64>, ours: u64) -> u64 {
    offered
        .map_or(ours, |o| o.min(ours))
        .clamp(1, u64::from(u32::MAX))
}
