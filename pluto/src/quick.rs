//! Quick Mode (RFC 2409 §5.5): child SAs under an established ISAKMP SA.
//!
//! ```text
//! Initiator                               Responder
//! HDR*, HASH(1), SA, Ni [, KE ] [, IDci, IDcr ] -->
//!                      <-- HDR*, HASH(2), SA, Nr [, KE ] [, IDci, IDcr ]
//! HDR*, HASH(3)                           -->
//! ```
//!
//! KEYMAT is computed per protocol and per direction: the SA a side receives on is keyed
//! with the SPI that side chose (RFC 2409 §5.5), so our inbound keys use our SPIs.
//!
//! Across a NAT the proposals ask for UDP-encapsulated ESP, and transport mode adds the
//! original addresses (NAT-OAi, NAT-OAr after the IDs, RFC 3947 §5.2). Those are only
//! logged on receipt: the plugin does not fix up transport checksums from them.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use ipsec_plugin::config::{AhKeys, Cidr, DirectionKeys, EspKeys, Mode, SaKeys};
use subtle::ConstantTimeEq;

use crate::config::Connection;
use crate::crypto::{dh, phase1, phase2, DhPrivate, KeymatInput, Phase1Keys};
use crate::ctx::{Ctx, Outcome};
use crate::event::{ChildSa, DeleteReason, Event, ExchangeId, FailureKind, LogLevel, SpiSet, UdpEncap};
use crate::flight::{Flight, Timeout};
use crate::informational;
use crate::main_mode::{Phase1, OUR_NONCE_LEN};
use crate::message;
use crate::natt;
use crate::proposal::{check_child_reply, child_offer, choose_child, ChildPolicy, ChildSuite};
use crate::wire::{
    Chain, ExchangeType, HeaderRepr, IdRepr, NotifyType, PayloadType, ProtocolId, SaRepr,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QmState {
    /// Initiator sent message 1.
    I1,
    /// Responder sent message 2.
    R1,
    /// Keys are out; kept a while to answer a repeated message 2.
    Done,
    Dead,
}

/// The traffic a child SA protects, from this end's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Selectors {
    pub local: Cidr,
    pub remote: Cidr,
    pub protocol: u8,
    pub local_port: u16,
    pub remote_port: u16,
}

pub(crate) struct QuickMode {
    pub message_id: u32,
    pub request: Option<ExchangeId>,
    pub initiator: bool,
    pub conn: Connection,
    pub state: QmState,
    iv: Vec<u8>,
    /// The initiator's and the responder's nonces, whichever side this is.
    ni: Vec<u8>,
    nr: Vec<u8>,
    dh: Option<DhPrivate>,
    pfs_secret: Option<Vec<u8>>,
    our_spis: SpiSet,
    peer_spis: SpiSet,
    offered: Vec<ChildSuite>,
    suite: Option<ChildSuite>,
    /// IDci and IDcr bodies as sent by the initiator, if any.
    ids: Option<(Vec<u8>, Vec<u8>)>,
    selectors: Selectors,
    pub flight: Flight,
    pub done_at: Option<Instant>,
}

/// What became of a message 1 that started no known exchange.
pub(crate) enum Responded {
    Started(Box<QuickMode>),
    /// Authentic, but refused; the peer was told why.
    Refused,
    /// Not authentic (or not decryptable): dropped.
    Ignored,
}

fn within(inner: Cidr, outer: Cidr) -> bool {
    outer.prefix <= inner.prefix && outer.contains(inner.addr)
}

/// Our SPIs, never equal to the peer's for the same protocol when those are known: equal
/// SPIs would give both directions the same KEYMAT (Pluto avoids it the same way).
fn allocate(ctx: &mut Ctx<'_>, esp: bool, ah: bool, ipcomp: bool, avoid: &SpiSet) -> SpiSet {
    let mut next = |protocol: ProtocolId, avoid: Option<u32>| {
        let first = (ctx.spis)(protocol);
        if Some(first) == avoid {
            (ctx.spis)(protocol)
        } else {
            first
        }
    };
    SpiSet {
        esp: esp.then(|| next(ProtocolId::Esp, avoid.esp)),
        ah: ah.then(|| next(ProtocolId::Ah, avoid.ah)),
        // CPIs are 16 bits; the allocator promises that range.
        ipcomp: ipcomp.then(|| next(ProtocolId::Ipcomp, avoid.ipcomp.map(u32::from)) as u16),
    }
}

fn selectors_of(conn: &Connection, p1: &Phase1) -> Selectors {
    Selectors {
        local: conn.local_selector(*p1.local.ip()),
        remote: conn.remote_selector(*p1.remote.ip()),
        protocol: conn.protocol.unwrap_or(0),
        local_port: conn.local_port.unwrap_or(0),
        remote_port: conn.remote_port.unwrap_or(0),
    }
}

fn policy_of(conn: &Connection, p1: &Phase1) -> ChildPolicy {
    ChildPolicy {
        esp: conn.esp,
        ah: conn.ah,
        ipcomp: conn.ipcomp,
        mode: conn.mode,
        udp_allowed: p1.nat.vid.is_some(),
        require_pfs: conn.ike.pfs,
        lifetime: conn.ike.lifetime_secs,
    }
}

/// In transport mode the selectors are the endpoints themselves; across a NAT the peer
/// names them by addresses this end does not see (its private one, our public one), so
/// host IDs are read as the endpoints seen here (charon does the same).
fn endpoints_behind_nat(s: Selectors, p1: &Phase1) -> Selectors {
    let host = |c: Cidr, seen| if c.prefix == 32 { Cidr::host(seen) } else { c };
    Selectors {
        local: host(s.local, *p1.local.ip()),
        remote: host(s.remote, *p1.remote.ip()),
        ..s
    }
}

/// NAT-OAi and NAT-OAr for a transport-mode SA that is UDP-encapsulated: the initiator's
/// and the responder's address, each as this end knows it.
fn nat_oa(p1: &Phase1, suite: &ChildSuite, initiator: bool) -> Option<(PayloadType, [Vec<u8>; 2])> {
    let d = suite.udp.filter(|_| suite.mode == Mode::Transport)?;
    let (ours, theirs) = (*p1.local.ip(), *p1.remote.ip());
    let (i, r) = if initiator {
        (ours, theirs)
    } else {
        (theirs, ours)
    };
    Some((d.nat_oa(), [natt::nat_oa_body(i), natt::nat_oa_body(r)]))
}

/// Logs the peer's NAT-OA payloads: nothing here needs them, but they show what the NAT
/// hides.
fn note_nat_oa(ctx: &mut Ctx<'_>, p1: &Phase1, chain: &Chain<'_>) {
    for p in chain
        .payloads
        .iter()
        .filter(|p| matches!(p.kind, PayloadType::NatOa | PayloadType::NatOaDraft))
    {
        let what = match natt::parse_nat_oa(p.body) {
            Ok(a) => format!("original address {a}"),
            Err(e) => format!("an unusable NAT-OA ({e}), ignored"),
        };
        ctx.log(
            LogLevel::Debug,
            Some(p1.name()),
            format!("NAT-T: {} sent {what}", p1.remote),
        );
    }
}

/// The connections a Quick Mode on this ISAKMP SA may be for: its own first, then the
/// others between the same endpoints and with the same key (Pluto's rule).
fn candidates(p1: &Phase1, conns: &[Connection]) -> Vec<Connection> {
    let (local, remote) = (*p1.local.ip(), *p1.remote.ip());
    let mut out = vec![p1.conn.clone()];
    for c in conns {
        let local_ok = c.local == local || c.local.is_unspecified();
        let remote_ok = c.remote == remote || c.remote.is_unspecified();
        if c.name != p1.conn.name && c.psk == p1.conn.psk && local_ok && remote_ok {
            out.push(Connection {
                remote,
                ..c.clone()
            });
        }
    }
    out
}

impl QuickMode {
    fn new(
        message_id: u32,
        conn: Connection,
        initiator: bool,
        iv: Vec<u8>,
        selectors: Selectors,
    ) -> QuickMode {
        QuickMode {
            message_id,
            request: None,
            initiator,
            conn,
            state: QmState::Dead,
            iv,
            ni: Vec::new(),
            nr: Vec::new(),
            dh: None,
            pfs_secret: None,
            our_spis: SpiSet::default(),
            peer_spis: SpiSet::default(),
            offered: Vec::new(),
            suite: None,
            ids: None,
            selectors,
            flight: Flight::default(),
            done_at: None,
        }
    }

    /// Starts Quick Mode for `conn` on an established ISAKMP SA: message 1.
    pub fn initiate(
        ctx: &mut Ctx<'_>,
        p1: &Phase1,
        conn: Connection,
        request: ExchangeId,
        message_id: u32,
    ) -> Option<QuickMode> {
        let (keys, suite) = (p1.keys.as_ref()?, p1.suite?);
        let iv = phase1::exchange_iv(keys.hash, keys.cipher, &p1.iv, message_id);
        let selectors = selectors_of(&conn, p1);
        let mut qm = QuickMode::new(message_id, conn, true, iv, selectors);
        qm.request = Some(request);
        let c = &qm.conn;
        qm.our_spis = allocate(
            ctx,
            c.esp.is_some(),
            c.ah.is_some(),
            c.ipcomp,
            &SpiSet::default(),
        );
        // Pluto's default: PFS in the phase 1 group.
        let pfs = c.ike.pfs.then_some(suite.group);
        let base = ChildSuite {
            esp: c.esp,
            ah: c.ah,
            ipcomp: c.ipcomp,
            mode: c.mode,
            udp: p1.nat.udp(),
            pfs,
            lifetime: c.ike.lifetime_secs,
        };
        if base.udp.is_some() && c.ah.is_some() {
            ctx.log(
                LogLevel::Warning,
                Some(&c.name),
                format!("AH cannot cross the NAT between here and {}", p1.remote),
            );
        }
        qm.offered = if c.ipcomp {
            vec![
                base,
                ChildSuite {
                    ipcomp: false,
                    ..base
                },
            ]
        } else {
            vec![base]
        };
        let sa = child_offer(&qm.offered, &qm.our_spis).to_bytes();
        qm.ni = ctx.random(OUR_NONCE_LEN);
        let ke = pfs.map(|g| {
            let d = DhPrivate::generate(g, ctx.rng.rng());
            let public = d.public_value().to_vec();
            qm.dh = Some(d);
            public
        });
        let idci =
            IdRepr::from_cidr(selectors.local, selectors.protocol, selectors.local_port).to_bytes();
        let idcr = IdRepr::from_cidr(selectors.remote, selectors.protocol, selectors.remote_port)
            .to_bytes();
        let mut payloads: Vec<(PayloadType, &[u8])> =
            vec![(PayloadType::Sa, &sa), (PayloadType::Nonce, &qm.ni)];
        if let Some(ke) = &ke {
            payloads.push((PayloadType::KeyExchange, ke));
        }
        payloads.push((PayloadType::Identification, &idci));
        payloads.push((PayloadType::Identification, &idcr));
        let oa = nat_oa(p1, &base, true);
        if let Some((kind, bodies)) = &oa {
            payloads.extend(bodies.iter().map(|b| (*kind, &b[..])));
        }
        let chain = message::hashed_chain(&payloads, |rest| phase2::hash1(keys, message_id, rest));
        let (bytes, next_iv) = message::encrypted(
            keys,
            &qm.iv,
            &p1.header(ExchangeType::QuickMode, message_id),
            chain,
        );
        qm.iv = next_iv;
        qm.ids = Some((idci, idcr));
        qm.flight.send(ctx, p1.local, p1.remote, bytes, true);
        qm.state = QmState::I1;
        ctx.log(
            LogLevel::Info,
            Some(&qm.conn.name),
            format!(
                "initiating Quick Mode {:#010x} to {} ({} === {})",
                message_id, p1.remote, selectors.local, selectors.remote
            ),
        );
        Some(qm)
    }

    /// A message 1 for a new message ID: the peer starts Quick Mode.
    pub fn respond(
        ctx: &mut Ctx<'_>,
        p1: &Phase1,
        conns: &[Connection],
        header: &HeaderRepr,
        datagram: &[u8],
        body: &[u8],
    ) -> Responded {
        let Some(keys) = p1.keys.as_ref() else {
            return Responded::Ignored;
        };
        let mid = header.message_id;
        let peer = p1.remote;
        let ignore = |ctx: &mut Ctx<'_>, why: String| {
            ctx.log(
                LogLevel::Warning,
                Some(p1.name()),
                format!("ignoring Quick Mode message 1 {mid:#010x} from {peer}: {why}"),
            );
        };
        if !header.flags.encrypted() {
            ignore(ctx, "not encrypted".into());
            return Responded::Ignored;
        }
        let iv = phase1::exchange_iv(keys.hash, keys.cipher, &p1.iv, mid);
        let (plain, next_iv) = match message::decrypt(keys, &iv, body) {
            Ok(v) => v,
            Err(e) => {
                ignore(ctx, e);
                return Responded::Ignored;
            }
        };
        let opened = match message::open_hashed(header.next_payload, &plain) {
            Ok(o) => o,
            Err(e) => {
                ignore(ctx, e);
                return Responded::Ignored;
            }
        };
        if !bool::from(phase2::hash1(keys, mid, opened.rest).ct_eq(opened.hash)) {
            ignore(ctx, "HASH(1) mismatch".into());
            return Responded::Ignored;
        }
        if header.flags.commit() {
            ctx.log(
                LogLevel::Warning,
                Some(p1.name()),
                format!("{peer} set the commit flag; ignored, as Pluto does"),
            );
        }
        let mut qm = QuickMode::new(
            mid,
            p1.conn.clone(),
            false,
            next_iv,
            selectors_of(&p1.conn, p1),
        );
        match qm.answer(ctx, p1, keys, conns, &opened.chain) {
            Ok(()) => {
                qm.flight.received(datagram, 0);
                if let Some(child) = qm.child_sa(ctx, p1, keys) {
                    ctx.events.push_back(Event::ChildSaInboundReady(Box::new(child)));
                }
                Responded::Started(Box::new(qm))
            }
            Err((kind, reason)) => {
                informational::send_notify(
                    ctx,
                    p1,
                    kind,
                    ProtocolId::Isakmp,
                    Vec::new(),
                    Vec::new(),
                );
                ctx.events.push_back(Event::Failed {
                    conn: qm.conn.name.clone(),
                    peer: *peer.ip(),
                    exchange: None,
                    kind: FailureKind::Refused,
                    reason: format!("Quick Mode from {peer}: {reason}"),
                    retrying: false,
                });
                Responded::Refused
            }
        }
    }

    /// Responder: picks the connection and proposal, and sends message 2.
    fn answer(
        &mut self,
        ctx: &mut Ctx<'_>,
        p1: &Phase1,
        keys: &Phase1Keys,
        conns: &[Connection],
        chain: &crate::wire::Chain<'_>,
    ) -> Result<(), (NotifyType, String)> {
        let malformed = |e: String| (NotifyType::PayloadMalformed, e);
        if chain.count(PayloadType::Sa) != 1
            || chain.count(PayloadType::Nonce) != 1
            || chain.count(PayloadType::KeyExchange) > 1
        {
            return Err(malformed(
                "needs one SA, one Nonce and at most one KE".into(),
            ));
        }
        let sa_body = chain
            .find(PayloadType::Sa)
            .map(|p| p.body)
            .unwrap_or_default();
        let offer = SaRepr::parse(sa_body).map_err(|e| malformed(format!("SA: {e}")))?;
        let ni = chain
            .find(PayloadType::Nonce)
            .map(|p| p.body)
            .unwrap_or_default();
        if !(8..=256).contains(&ni.len()) {
            return Err(malformed(format!("nonce of {} bytes", ni.len())));
        }
        let ids: Vec<&[u8]> = chain
            .payloads
            .iter()
            .filter(|p| p.kind == PayloadType::Identification)
            .map(|p| p.body)
            .collect();
        let proposed = match ids[..] {
            [] => None,
            [idci, idcr] => {
                Some(parse_ids(idci, idcr).map_err(|e| (NotifyType::InvalidIdInformation, e))?)
            }
            _ => {
                return Err((
                    NotifyType::InvalidIdInformation,
                    format!("{} ID payloads", ids.len()),
                ))
            }
        };
        note_nat_oa(ctx, p1, chain);
        let mut why = Vec::new();
        let mut chosen = None;
        for conn in candidates(p1, conns) {
            let ours = selectors_of(&conn, p1);
            let selectors = match proposed {
                Some(s) if conn.mode == Mode::Transport && p1.nat.detected() => {
                    endpoints_behind_nat(s, p1)
                }
                // Without IDs the SA is between the phase 1 endpoints themselves.
                None => Selectors {
                    local: Cidr::host(*p1.local.ip()),
                    remote: Cidr::host(*p1.remote.ip()),
                    protocol: 0,
                    local_port: 0,
                    remote_port: 0,
                },
                Some(s) => s,
            };
            let fits = within(selectors.local, ours.local)
                && within(selectors.remote, ours.remote)
                && (
                    selectors.protocol,
                    selectors.local_port,
                    selectors.remote_port,
                ) == (ours.protocol, ours.local_port, ours.remote_port);
            if !fits {
                why.push(format!(
                    "{}: traffic {} === {} is not ours ({} === {})",
                    conn.name, selectors.local, selectors.remote, ours.local, ours.remote
                ));
                continue;
            }
            match choose_child(&offer, &policy_of(&conn, p1)) {
                Ok(choice) => {
                    chosen = Some((conn, selectors, choice));
                    break;
                }
                Err(e) => why.push(format!("{}: {e}", conn.name)),
            }
        }
        let Some((conn, selectors, choice)) = chosen else {
            let kind = if why.iter().all(|w| w.contains("traffic")) {
                NotifyType::InvalidIdInformation
            } else {
                NotifyType::NoProposalChosen
            };
            return Err((kind, why.join("; ")));
        };
        if choice.suite.udp.is_none() && p1.nat.detected() {
            ctx.log(
                LogLevel::Warning,
                Some(&conn.name),
                format!(
                    "{} asks for plain ESP although a NAT was detected",
                    p1.remote
                ),
            );
        }
        self.conn = conn;
        self.selectors = selectors;
        let ke = chain.find(PayloadType::KeyExchange).map(|p| p.body);
        let our_ke = match (choice.suite.pfs, ke) {
            (Some(group), Some(ke)) => {
                if ke.len() != dh::modulus_len(group) {
                    return Err(malformed(format!("PFS KE of {} bytes", ke.len())));
                }
                let d = DhPrivate::generate(group, ctx.rng.rng());
                self.pfs_secret = Some(
                    d.shared_secret(ke)
                        .map_err(|e| (NotifyType::InvalidKeyInformation, e.to_string()))?,
                );
                Some(d.public_value().to_vec())
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err((
                    NotifyType::InvalidKeyInformation,
                    "PFS proposed without a KE payload".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    NotifyType::InvalidKeyInformation,
                    "KE payload without a PFS group".into(),
                ))
            }
        };
        self.ni = ni.to_vec();
        self.nr = ctx.random(OUR_NONCE_LEN);
        self.suite = Some(choice.suite);
        self.peer_spis = choice.peer_spis;
        self.our_spis = allocate(
            ctx,
            choice.suite.esp.is_some(),
            choice.suite.ah.is_some(),
            choice.suite.ipcomp,
            &choice.peer_spis,
        );
        let sa = choice.reply(&self.our_spis).to_bytes();
        let mut payloads: Vec<(PayloadType, &[u8])> =
            vec![(PayloadType::Sa, &sa), (PayloadType::Nonce, &self.nr)];
        if let Some(ke) = &our_ke {
            payloads.push((PayloadType::KeyExchange, ke));
        }
        if let [idci, idcr] = ids[..] {
            payloads.push((PayloadType::Identification, idci));
            payloads.push((PayloadType::Identification, idcr));
            self.ids = Some((idci.to_vec(), idcr.to_vec()));
        }
        let oa = nat_oa(p1, &choice.suite, false);
        if let Some((kind, bodies)) = &oa {
            payloads.extend(bodies.iter().map(|b| (*kind, &b[..])));
        }
        let mid = self.message_id;
        let chain =
            message::hashed_chain(&payloads, |rest| phase2::hash2(keys, mid, &self.ni, rest));
        let (bytes, next_iv) = message::encrypted(
            keys,
            &self.iv,
            &p1.header(ExchangeType::QuickMode, mid),
            chain,
        );
        self.iv = next_iv;
        self.flight.send(ctx, p1.local, p1.remote, bytes, true);
        self.state = QmState::R1;
        Ok(())
    }

    /// A message for this exchange (its message ID). True when it was authentic.
    pub fn handle(
        &mut self,
        ctx: &mut Ctx<'_>,
        p1: &Phase1,
        header: &HeaderRepr,
        datagram: &[u8],
        body: &[u8],
    ) -> bool {
        if self.flight.on_repeat(ctx, datagram) {
            return false;
        }
        let generation = self.flight.generation();
        let result = match self.state {
            QmState::I1 => self.on_message_2(ctx, p1, header, body),
            QmState::R1 => self.on_message_3(ctx, p1, header, body),
            QmState::Done | QmState::Dead => Err("message after the exchange ended".into()),
        };
        match result {
            Ok(()) => {
                self.flight.received(datagram, generation);
                true
            }
            Err(why) => {
                ctx.log(
                    LogLevel::Warning,
                    Some(&self.conn.name),
                    format!(
                        "ignoring Quick Mode message {:#010x} from {}: {why}",
                        self.message_id, p1.remote
                    ),
                );
                false
            }
        }
    }

    /// Decrypts and authenticates a message of this exchange; returns the plaintext and
    /// the next IV. Nothing changes when it fails: a forged or corrupted message must not
    /// disturb the CBC chain.
    fn open(
        &self,
        keys: &Phase1Keys,
        header: &HeaderRepr,
        body: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        if !header.flags.encrypted() {
            return Err("not encrypted".into());
        }
        message::decrypt(keys, &self.iv, body)
    }

    /// Initiator: the responder's choice; confirm with HASH(3).
    fn on_message_2(
        &mut self,
        ctx: &mut Ctx<'_>,
        p1: &Phase1,
        header: &HeaderRepr,
        body: &[u8],
    ) -> Result<(), String> {
        let keys = p1.keys.as_ref().ok_or("no phase 1 keys")?;
        let (plain, next_iv) = self.open(keys, header, body)?;
        let opened = message::open_hashed(header.next_payload, &plain)?;
        if !bool::from(
            phase2::hash2(keys, self.message_id, &self.ni, opened.rest).ct_eq(opened.hash),
        ) {
            return Err("HASH(2) mismatch".into());
        }
        let chain = &opened.chain;
        let checked = (|| {
            let sa = chain.find(PayloadType::Sa).ok_or("no SA payload")?;
            let reply = SaRepr::parse(sa.body).map_err(|e| e.to_string())?;
            let (suite, peer_spis) = check_child_reply(&reply, &self.offered, self.conn.mode)?;
            let nr = chain
                .find(PayloadType::Nonce)
                .ok_or("no Nonce payload")?
                .body;
            if !(8..=256).contains(&nr.len()) {
                return Err(format!("nonce of {} bytes", nr.len()));
            }
            let pfs_secret = match (&self.dh, chain.find(PayloadType::KeyExchange)) {
                (Some(d), Some(ke)) => Some(d.shared_secret(ke.body).map_err(|e| e.to_string())?),
                (None, None) => None,
                _ => return Err("PFS KE payload missing or unexpected".to_owned()),
            };
            let ids: Vec<&[u8]> = chain
                .payloads
                .iter()
                .filter(|p| p.kind == PayloadType::Identification)
                .map(|p| p.body)
                .collect();
            // Across a NAT, a transport-mode responder may name the endpoints as it
            // sees them (charon does); ours stay the endpoints as seen here.
            let renamed = suite.mode == Mode::Transport && suite.udp.is_some();
            if let (Some((ci, cr)), [rci, rcr]) = (&self.ids, &ids[..]) {
                if (&ci[..], &cr[..]) != (*rci, *rcr) && !renamed {
                    return Err("responder changed IDci/IDcr".to_owned());
                }
            } else if !ids.is_empty() {
                return Err(format!("{} ID payloads", ids.len()));
            }
            note_nat_oa(ctx, p1, chain);
            Ok((suite, peer_spis, nr.to_vec(), pfs_secret))
        })();
        let (suite, peer_spis, nr, pfs_secret) = match checked {
            Ok(v) => v,
            Err(e) => {
                self.fail(
                    ctx,
                    *p1.remote.ip(),
                    FailureKind::Refused,
                    format!("bad Quick Mode reply from {}: {e}", p1.remote),
                );
                return Ok(());
            }
        };
        self.suite = Some(suite);
        self.peer_spis = peer_spis;
        self.nr = nr;
        self.pfs_secret = pfs_secret;
        self.dh = None;
        let h3 = phase2::hash3(keys, self.message_id, &self.ni, &self.nr);
        let chain = message::chain(&[(PayloadType::Hash, &h3)]);
        let (bytes, next) = message::encrypted(
            keys,
            &next_iv,
            &p1.header(ExchangeType::QuickMode, self.message_id),
            chain,
        );
        self.iv = next;
        self.flight.send(ctx, p1.local, p1.remote, bytes, false);
        self.finish(ctx, p1, keys);
        Ok(())
    }

    /// Responder: the initiator's HASH(3) confirms it has the keys.
    fn on_message_3(
        &mut self,
        ctx: &mut Ctx<'_>,
        p1: &Phase1,
        header: &HeaderRepr,
        body: &[u8],
    ) -> Result<(), String> {
        let keys = p1.keys.as_ref().ok_or("no phase 1 keys")?;
        let (plain, next_iv) = self.open(keys, header, body)?;
        let opened = message::open_hashed(header.next_payload, &plain)?;
        if !bool::from(phase2::hash3(keys, self.message_id, &self.ni, &self.nr).ct_eq(opened.hash))
        {
            return Err("HASH(3) mismatch".into());
        }
        self.iv = next_iv;
        self.flight.stop();
        self.finish(ctx, p1, keys);
        Ok(())
    }

    fn finish(&mut self, ctx: &mut Ctx<'_>, p1: &Phase1, keys: &Phase1Keys) {
        self.state = QmState::Done;
        self.done_at = Some(ctx.now);
        if let Some(child) = self.child_sa(ctx, p1, keys) {
            ctx.log(
                LogLevel::Info,
                Some(&self.conn.name),
                format!(
                    "IPsec SA established with {} ({} === {}): inbound {} outbound {}",
                    p1.remote,
                    child.local_selector,
                    child.remote_selector,
                    child.inbound_spis(),
                    child.outbound_spis()
                ),
            );
            // The NAT in front of us drops its mapping when idle (RFC 3948 §4).
            let keepalive = (p1.nat.here && child.udp_encap.is_some()).then_some((
                SocketAddrV4::new(*p1.local.ip(), ctx.settings.nat_t_port),
                p1.remote,
            ));
            ctx.outcomes.push(Outcome::ChildUp {
                child: Box::new(child),
                initiator: self.initiator,
                keepalive,
            });
        }
        // Key material is in the event now; the exchange keeps no secrets.
        self.pfs_secret = None;
    }

    fn keymat(&self, keys: &Phase1Keys, protocol: ProtocolId, spi: u32, len: usize) -> Vec<u8> {
        let input = KeymatInput {
            pfs_secret: self.pfs_secret.as_deref(),
            protocol: protocol.into(),
            spi,
            ni_b: &self.ni,
            nr_b: &self.nr,
        };
        phase2::keymat(keys, &input, len)
    }

    fn direction(&self, keys: &Phase1Keys, suite: &ChildSuite, spis: &SpiSet) -> DirectionKeys {
        let esp = suite.esp.zip(spis.esp).map(|(t, spi)| {
            let km = self.keymat(
                keys,
                ProtocolId::Esp,
                spi,
                t.enc_key_len() + t.auth_key_len(),
            );
            let (enc, auth) = km.split_at(t.enc_key_len());
            EspKeys {
                spi,
                enc_key: enc.to_vec(),
                auth_key: auth.to_vec(),
            }
        });
        let ah = suite.ah.zip(spis.ah).map(|(i, spi)| AhKeys {
            spi,
            key: self.keymat(keys, ProtocolId::Ah, spi, i.key_len()),
        });
        DirectionKeys {
            esp,
            ah,
            ipcomp_cpi: spis.ipcomp.filter(|_| suite.ipcomp),
        }
    }

    fn child_sa(&self, ctx: &Ctx<'_>, p1: &Phase1, keys: &Phase1Keys) -> Option<ChildSa> {
        let suite = self.suite?;
        let s = self.selectors;
        // ESP uses the ports IKE floated to; a peer that asked for UDP encapsulation
        // without floating (it cannot have crossed a NAT then) gets the NAT-T port.
        let floated = |a: SocketAddrV4| {
            if a.port() == ctx.settings.ike_port {
                ctx.settings.nat_t_port
            } else {
                a.port()
            }
        };
        let udp_encap = suite.udp.map(|_| UdpEncap {
            local_port: floated(p1.local),
            remote_port: floated(p1.remote),
        });
        Some(ChildSa {
            conn: self.conn.name.clone(),
            exchange: self.request,
            local: *p1.local.ip(),
            remote: *p1.remote.ip(),
            mode: suite.mode,
            udp_encap,
            local_selector: s.local,
            remote_selector: s.remote,
            protocol: s.protocol,
            local_port: s.local_port,
            remote_port: s.remote_port,
            esp: suite.esp,
            ah: suite.ah,
            ipcomp: suite.ipcomp,
            keys: SaKeys {
                inbound: self.direction(keys, &suite, &self.our_spis),
                outbound: self.direction(keys, &suite, &self.peer_spis),
            },
            lifetime: Duration::from_secs(suite.lifetime),
            pfs: suite.pfs.is_some(),
            replaces: None,
        })
    }

    fn fail(&mut self, ctx: &mut Ctx<'_>, peer: Ipv4Addr, kind: FailureKind, reason: String) {
        self.state = QmState::Dead;
        self.flight.stop();
        match self.request {
            Some(request) => ctx.outcomes.push(Outcome::ChildFailed {
                request,
                kind,
                reason,
                retryable: true,
            }),
            None => ctx.events.push_back(Event::Failed {
                conn: self.conn.name.clone(),
                peer,
                exchange: None,
                kind,
                reason,
                retrying: false,
            }),
        }
    }

    /// An authenticated error notification from the peer while this exchange waits.
    pub fn on_peer_error(&mut self, ctx: &mut Ctx<'_>, peer: Ipv4Addr, kind: NotifyType) {
        if self.state == QmState::I1 {
            self.fail(ctx, peer, FailureKind::Refused, format!("{peer} refused Quick Mode: {kind:?}"));
        }
    }

    pub fn on_timeout(&mut self, ctx: &mut Ctx<'_>, p1: &Phase1) {
        if self.flight.on_timeout(ctx) == Timeout::Exhausted {
            let which = if self.initiator {
                "no reply to Quick Mode message 1"
            } else {
                "no Quick Mode message 3"
            };
            let tries = self.flight.retransmits();
            self.fail(
                ctx,
                *p1.remote.ip(),
                FailureKind::TimedOut,
                format!("{which} from {} after {tries} retransmissions", p1.remote),
            );
            if !self.initiator && self.suite.is_some() {
                // The inbound SAs went to the plugin with message 2 (ChildSaInboundReady).
                ctx.events.push_back(Event::ChildSaDeleted {
                    conn: self.conn.name.clone(),
                    peer: *p1.remote.ip(),
                    inbound: self.our_spis,
                    outbound: SpiSet::default(),
                    reason: DeleteReason::Expired,
                });
            }
        }
    }
}

fn parse_ids(idci: &[u8], idcr: &[u8]) -> Result<Selectors, String> {
    let ci = IdRepr::parse(idci).map_err(|e| format!("IDci: {e}"))?;
    let cr = IdRepr::parse(idcr).map_err(|e| format!("IDcr: {e}"))?;
    let cidr = |r: &IdRepr, which: &str| {
        r.value()
            .map_err(|e| format!("{which}: {e}"))?
            .as_cidr()
            .ok_or_else(|| format!("{which}: a range that is not a prefix"))
    };
    if ci.protocol != cr.protocol {
        return Err(format!(
            "IDci protocol {} differs from IDcr protocol {}",
            ci.protocol, cr.protocol
        ));
    }
    // From the responder's side: IDcr is local, IDci remote.
    Ok(Selectors {
        local: cidr(&cr, "IDcr")?,
        remote: cidr(&ci, "IDci")?,
        protocol: ci.protocol,
        local_port: cr.port,
        remote_port: ci.port,
    })
}
