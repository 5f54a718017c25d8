//! Informational exchanges (RFC 2409 §5.7): Delete and Notification payloads protected
//! by HASH(1) = prf(SKEYID_a, M-ID | N/D) once the ISAKMP SA exists, in the clear before.
//!
//! Each message gets its own IV from the last phase 1 CBC block and its message ID, so
//! informational traffic never disturbs Quick Mode's IV chains. Dead Peer Detection's
//! R-U-THERE and its ACK travel here too (dpd.rs).

use subtle::ConstantTimeEq;

use crate::crypto::{phase1, phase2};
use crate::ctx::{Ctx, Outcome};
use crate::dpd;
use crate::event::LogLevel;
use crate::main_mode::IkeSa;
use crate::message;
use crate::quick::QmState;
use crate::wire::{
    parse_chain, DeleteRepr, ExchangeType, HeaderRepr, NotifyRepr, NotifyType, PayloadType,
    ProtocolId, DOI_IPSEC,
};

use crate::main_mode::Phase1;

/// Message IDs of received Informational exchanges remembered per ISAKMP SA, so that a
/// replayed Delete is recognised (it is authentic, but old).
const REMEMBERED_IDS: usize = 64;

/// Sends an authenticated, encrypted Informational message. Nothing when the ISAKMP SA
/// has no keys yet.
fn send(ctx: &mut Ctx<'_>, p1: &Phase1, payloads: &[(PayloadType, &[u8])]) {
    let Some(keys) = &p1.keys else { return };
    if !p1.is_established() {
        return;
    }
    let mid = ctx.message_id();
    let iv = phase1::exchange_iv(keys.hash, keys.cipher, &p1.iv, mid);
    let chain = message::hashed_chain(payloads, |rest| phase2::informational_hash(keys, mid, rest));
    let (bytes, _) = message::encrypted(
        keys,
        &iv,
        &p1.header(ExchangeType::Informational, mid),
        chain,
    );
    ctx.send(p1.local, p1.remote, bytes);
}

pub(crate) fn send_notify(
    ctx: &mut Ctx<'_>,
    p1: &Phase1,
    kind: NotifyType,
    protocol: ProtocolId,
    spi: Vec<u8>,
    data: Vec<u8>,
) {
    let n = NotifyRepr {
        doi: DOI_IPSEC,
        protocol,
        kind,
        spi,
        data,
    };
    send(ctx, p1, &[(PayloadType::Notification, &n.to_bytes())]);
}

/// Deletes SAs this end receives on (AH/ESP SPIs are 4 bytes, the ISAKMP SA is named by
/// its cookies).
pub(crate) fn send_delete(
    ctx: &mut Ctx<'_>,
    p1: &Phase1,
    protocol: ProtocolId,
    spis: Vec<Vec<u8>>,
) {
    let Some(size) = spis.first().map(Vec::len) else {
        return;
    };
    let d = DeleteRepr {
        doi: DOI_IPSEC,
        protocol,
        spi_size: size as u8,
        spis,
    };
    send(ctx, p1, &[(PayloadType::Delete, &d.to_bytes())]);
}

/// An Informational message for this ISAKMP SA. True when it was authentic (HASH(1)
/// verified, message ID new), whatever it said.
pub(crate) fn handle(ctx: &mut Ctx<'_>, sa: &mut IkeSa, header: &HeaderRepr, body: &[u8]) -> bool {
    let p1 = &mut sa.p1;
    let (Some(keys), true) = (&p1.keys, p1.is_established() && header.flags.encrypted()) else {
        // Before the ISAKMP SA exists, only plain notifications make sense.
        match parse_chain(header.next_payload, body) {
            Ok(chain) => {
                for p in chain
                    .payloads
                    .iter()
                    .filter(|p| p.kind == PayloadType::Notification)
                {
                    if let Ok(n) = NotifyRepr::parse(p.body) {
                        p1.on_plain_notify(ctx, &n);
                    }
                }
            }
            Err(e) => ctx.log(
                LogLevel::Debug,
                Some(p1.name()),
                format!("malformed Informational from {}: {e}", p1.remote),
            ),
        }
        return false;
    };
    let mid = header.message_id;
    let peer = p1.remote;
    let warn = |ctx: &mut Ctx<'_>, p1: &Phase1, why: String| {
        ctx.log(
            LogLevel::Warning,
            Some(p1.name()),
            format!("ignoring Informational {mid:#010x} from {peer}: {why}"),
        );
    };
    if p1.seen_info_ids.contains(&mid) {
        warn(ctx, p1, "replayed message ID".into());
        return false;
    }
    let iv = phase1::exchange_iv(keys.hash, keys.cipher, &p1.iv, mid);
    let plain = match message::decrypt(keys, &iv, body) {
        Ok((plain, _)) => plain,
        Err(e) => {
            warn(ctx, p1, e);
            return false;
        }
    };
    let opened = match message::open_hashed(header.next_payload, &plain) {
        Ok(o) => o,
        Err(e) => {
            warn(ctx, p1, e);
            return false;
        }
    };
    if !bool::from(phase2::informational_hash(keys, mid, opened.rest).ct_eq(opened.hash)) {
        warn(ctx, p1, "HASH(1) mismatch".into());
        return false;
    }
    if p1.seen_info_ids.len() >= REMEMBERED_IDS {
        p1.seen_info_ids.remove(0);
    }
    p1.seen_info_ids.push(mid);
    for p in opened.chain.payloads.iter().skip(1) {
        match p.kind {
            PayloadType::Delete => match DeleteRepr::parse(p.body) {
                Ok(d) => on_delete(ctx, p1, &d),
                Err(e) => warn(ctx, p1, format!("bad Delete: {e}")),
            },
            PayloadType::Notification => match NotifyRepr::parse(p.body) {
                Ok(n) if n.kind.is_error() => {
                    ctx.log(
                        LogLevel::Warning,
                        Some(p1.name()),
                        format!("{peer} sent error notification {:?}", n.kind),
                    );
                    // The notification does not say which Quick Mode it is about; those
                    // still waiting for the peer's reply are the candidates.
                    for qm in sa.quick.iter_mut().filter(|q| q.state == QmState::I1) {
                        qm.on_peer_error(ctx, *peer.ip(), n.kind);
                    }
                    return true;
                }
                Ok(n) if matches!(n.kind, NotifyType::RUThere | NotifyType::RUThereAck) => {
                    dpd::on_notify(ctx, p1, &n)
                }
                Ok(n) => ctx.log(
                    LogLevel::Info,
                    Some(p1.name()),
                    format!("{peer} sent notification {:?}", n.kind),
                ),
                Err(e) => warn(ctx, p1, format!("bad Notification: {e}")),
            },
            other => warn(ctx, p1, format!("unexpected {other:?} payload")),
        }
    }
    true
}

fn on_delete(ctx: &mut Ctx<'_>, p1: &Phase1, d: &DeleteRepr) {
    let peer = *p1.remote.ip();
    match d.protocol {
        ProtocolId::Isakmp => {
            let ours = [p1.cky_i, p1.cky_r].concat();
            if d.spis.contains(&ours) {
                ctx.outcomes.push(Outcome::PeerDeletedPhase1 { sa: p1.id });
            }
        }
        ProtocolId::Esp | ProtocolId::Ah | ProtocolId::Ipcomp => {
            let spis = d
                .spis
                .iter()
                .filter_map(|s| match s.len() {
                    2 => Some(u32::from(u16::from_be_bytes([s[0], s[1]]))),
                    4 => Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]])),
                    _ => None,
                })
                .collect();
            ctx.outcomes.push(Outcome::PeerDeleted {
                peer,
                protocol: d.protocol,
                spis,
            });
        }
        ProtocolId::Unknown(n) => ctx.log(
            LogLevel::Warning,
            Some(p1.name()),
            format!("{peer} deleted SAs of unknown protocol {n}"),
        ),
    }
}
