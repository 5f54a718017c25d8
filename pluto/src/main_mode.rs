//! The ISAKMP SA and Main Mode with pre-shared keys (RFC 2409 §5, §5.4):
//!
//! ```text
//! Initiator                          Responder
//! HDR, SA                     -->                        (I1 / R1)
//!                             <--    HDR, SA
//! HDR, KE, Ni                 -->                        (I2 / R2)
//!                             <--    HDR, KE, Nr
//! HDR*, IDii, HASH_I          -->                        (I3)
//!                             <--    HDR*, IDir, HASH_R  (Established)
//! ```
//!
//! The pre-shared key is chosen by the peer's address before message 5 (which it
//! encrypts), so the identities must be the addresses (ID_IPV4_ADDR). A wrong key shows
//! as a message 5 that does not decrypt to valid payloads, or a HASH mismatch.
//!
//! Messages 1 and 2 also carry vendor IDs (NAT-T versions, DPD), messages 3 and 4 the
//! NAT-D payloads when both ends speak NAT-T; natt.rs says what follows from them.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use ipsec_plugin::config::{Cidr, IkeProposal};
use subtle::ConstantTimeEq;

use crate::config::Connection;
use crate::crypto::{dh, phase1, DhPrivate, Phase1Input, Phase1Keys};
use crate::ctx::{Ctx, Outcome};
use crate::dpd::{self, Dpd};
use crate::event::{Event, ExchangeId, FailureKind, LogLevel};
use crate::flight::Flight;
use crate::message;
use crate::natt::{self, NatT, NattVid};
use crate::proposal::{check_phase1_reply, choose_phase1, phase1_offer};
use crate::quick::QuickMode;
use crate::wire::{
    parse_chain, Chain, ExchangeType, Flags, HeaderRepr, IdRepr, IdValue, NotifyRepr, NotifyType,
    PayloadType, ProtocolId, SaRepr, DOI_IPSEC,
};

/// Nonce lengths RFC 2409 §5 allows.
const NONCE_LEN: std::ops::RangeInclusive<usize> = 8..=256;
/// Our nonces: Pluto's 16 bytes would do; 32 match the longest PRF output.
pub(crate) const OUR_NONCE_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MmState {
    /// Initiator sent message 1, 3 or 5.
    I1,
    I2,
    I3,
    /// Responder sent message 2 or 4.
    R1,
    R2,
    Established,
    /// Failed or deleted: the endpoint removes it.
    Dead,
}

/// Phase 1 state that Quick Mode and Informational exchanges read.
pub(crate) struct Phase1 {
    pub id: u64,
    /// The connection (for a road warrior, its instance for this peer).
    pub conn: Connection,
    pub initiator: bool,
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub cky_i: [u8; 8],
    pub cky_r: [u8; 8],
    pub state: MmState,
    pub suite: Option<IkeProposal>,
    pub lifetime: u64,
    pub keys: Option<Phase1Keys>,
    /// During Main Mode the CBC chain; once established, the last phase 1 CBC block from
    /// which Quick Mode and Informational IVs derive.
    pub iv: Vec<u8>,
    sai_b: Vec<u8>,
    dh: Option<DhPrivate>,
    gxi: Vec<u8>,
    gxr: Vec<u8>,
    ni: Vec<u8>,
    nr: Vec<u8>,
    pub flight: Flight,
    pub expires_at: Option<Instant>,
    /// Requests waiting for this SA before they can start Quick Mode.
    pub pending: Vec<ExchangeId>,
    /// Why the peer seems unable to authenticate us (its notifications, a bad message 6):
    /// reported when the retransmissions run out. Such evidence is unauthenticated, so it
    /// never ends the exchange early (as in Pluto, a forged one cannot break Main Mode).
    complaint: Option<(FailureKind, String)>,
    /// A bad message 5 was reported once; repeats only get the notification again.
    auth_failure_reported: bool,
    /// Message IDs of authenticated Informational exchanges, to drop replays.
    pub seen_info_ids: Vec<u32>,
    /// Message IDs of Quick Modes, old ones included, so a replayed message 1 does not
    /// start a new exchange.
    pub quick_ids: Vec<u32>,
    pub nat: NatT,
    pub dpd: Dpd,
    /// When to start a new Main Mode that replaces this SA (Pluto's rekeymargin plus
    /// fuzz before expiry, half the margin for a responder); None: never, or done.
    pub rekey_at: Option<Instant>,
    /// Failed attempts at replacing this SA, counted against keyingtries.
    pub rekey_attempts: u32,
    /// This Main Mode was started to replace ISAKMP SA #n.
    pub replaces: Option<u64>,
    /// A newer ISAKMP SA with the peer is established: new exchanges go there; this one
    /// still answers the peer until it expires.
    pub superseded: bool,
}

pub(crate) struct IkeSa {
    pub p1: Phase1,
    pub quick: Vec<QuickMode>,
}

impl Phase1 {
    pub fn header(&self, exchange: ExchangeType, message_id: u32) -> HeaderRepr {
        HeaderRepr {
            initiator_cookie: self.cky_i,
            responder_cookie: self.cky_r,
            next_payload: PayloadType::None,
            exchange,
            flags: Flags::default(),
            message_id,
            length: 0,
        }
    }

    pub fn is_established(&self) -> bool {
        self.state == MmState::Established
    }

    pub fn name(&self) -> &str {
        &self.conn.name
    }

    fn fail(&mut self, ctx: &mut Ctx<'_>, kind: FailureKind, reason: String, retryable: bool) {
        self.state = MmState::Dead;
        self.flight.stop();
        ctx.outcomes.push(Outcome::Phase1Failed {
            sa: self.id,
            kind,
            reason,
            retryable,
        });
    }

    /// Tells the peer why its Main Mode failed, in the clear: no shared key exists yet.
    fn notify_plain(&self, ctx: &mut Ctx<'_>, kind: NotifyType) {
        let n = NotifyRepr {
            doi: DOI_IPSEC,
            protocol: ProtocolId::Isakmp,
            kind,
            spi: [self.cky_i, self.cky_r].concat(),
            data: Vec::new(),
        };
        let message_id = ctx.message_id();
        let bytes = message::plain(
            &self.header(ExchangeType::Informational, message_id),
            &[(PayloadType::Notification, &n.to_bytes())],
        );
        ctx.send(self.local, self.remote, bytes);
    }

    fn id_payload(&self) -> IdRepr {
        IdRepr::from_cidr(Cidr::host(*self.local.ip()), 0, 0)
    }

    /// SKEYID and friends, and the message 5 IV, once both KE and nonces are known.
    fn derive(&mut self, peer_ke: &[u8]) -> Result<(), String> {
        let (Some(dh), Some(suite)) = (&self.dh, self.suite) else {
            return Err("key exchange before the proposal".into());
        };
        let gxy = dh.shared_secret(peer_ke).map_err(|e| e.to_string())?;
        let input = Phase1Input {
            psk: &self.conn.psk,
            ni_b: &self.ni,
            nr_b: &self.nr,
            gxy: &gxy,
            cky_i: &self.cky_i,
            cky_r: &self.cky_r,
        };
        let keys = Phase1Keys::derive(suite.hash, suite.cipher, &input);
        self.iv = phase1::initial_iv(suite.hash, suite.cipher, &self.gxi, &self.gxr);
        self.keys = Some(keys);
        Ok(())
    }

    fn establish(&mut self, ctx: &mut Ctx<'_>) {
        self.state = MmState::Established;
        self.flight.stop();
        self.expires_at = Some(ctx.now + Duration::from_secs(self.lifetime));
        // The DH private value has done its job.
        self.dh = None;
        // A random start with room to grow, as Pluto picks it.
        let first_seq = ctx.random_below(0x7fff) as u32 + 1;
        self.dpd.start(ctx.now, ctx.settings, first_seq);
        if self.dpd.is_probing() {
            ctx.log(
                LogLevel::Debug,
                Some(&self.conn.name),
                format!("DPD: probing {} when it falls silent", self.remote),
            );
        }
        if let Some(suite) = self.suite {
            ctx.events.push_back(Event::Phase1Established {
                conn: self.conn.name.clone(),
                peer: self.remote,
                suite,
                lifetime: Duration::from_secs(self.lifetime),
                initiator: self.initiator,
            });
            ctx.log(
                LogLevel::Info,
                Some(&self.conn.name),
                format!(
                    "ISAKMP SA established with {} ({suite}, {} s)",
                    self.remote, self.lifetime
                ),
            );
        }
        ctx.outcomes.push(Outcome::Phase1Up { sa: self.id });
    }
}

/// The peer's ID and HASH from message 5 or 6, and the IV after it.
struct AuthPayloads {
    id: Vec<u8>,
    hash: Vec<u8>,
    next_iv: Vec<u8>,
}

/// The KE and Nonce of messages 3 and 4, checked.
fn ke_and_nonce<'a>(chain: &Chain<'a>, modulus_len: usize) -> Result<(&'a [u8], &'a [u8]), String> {
    let ke = chain
        .find(PayloadType::KeyExchange)
        .ok_or("no KE payload")?
        .body;
    let nonce = chain
        .find(PayloadType::Nonce)
        .ok_or("no Nonce payload")?
        .body;
    if ke.len() != modulus_len {
        return Err(format!(
            "KE of {} bytes, the group needs {modulus_len}",
            ke.len()
        ));
    }
    if !NONCE_LEN.contains(&nonce.len()) {
        return Err(format!("nonce of {} bytes", nonce.len()));
    }
    Ok((ke, nonce))
}

impl IkeSa {
    /// Starts Main Mode as initiator: message 1.
    pub fn initiate(
        ctx: &mut Ctx<'_>,
        id: u64,
        conn: Connection,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        pending: Vec<ExchangeId>,
    ) -> IkeSa {
        let offer = phase1_offer(&conn.ike.proposals, conn.ike.ike_lifetime_secs);
        let mut p1 = Phase1::new(id, conn, true, local, remote, ctx.cookie(), [0; 8]);
        p1.sai_b = offer.to_bytes();
        p1.pending = pending;
        let mut payloads = vec![(PayloadType::Sa, &p1.sai_b[..])];
        payloads.extend(p1.vendor_ids(ctx));
        let bytes = message::plain(&p1.header(ExchangeType::IdentityProtection, 0), &payloads);
        p1.flight.send(ctx, local, remote, bytes, true);
        p1.state = MmState::I1;
        ctx.log(
            LogLevel::Info,
            Some(&p1.conn.name),
            format!("initiating Main Mode to {remote}"),
        );
        IkeSa {
            p1,
            quick: Vec::new(),
        }
    }

    /// Answers message 1 for `conn` (already matched to the addresses). None when no
    /// proposal is acceptable: the peer is told so and no state is kept.
    #[allow(clippy::too_many_arguments)]
    pub fn respond(
        ctx: &mut Ctx<'_>,
        id: u64,
        conn: Connection,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        header: &HeaderRepr,
        datagram: &[u8],
        body: &[u8],
    ) -> Option<IkeSa> {
        let mut p1 = Phase1::new(
            id,
            conn,
            false,
            local,
            remote,
            header.initiator_cookie,
            [0; 8],
        );
        let chain = parse_chain(header.next_payload, body).map_err(|e| e.to_string());
        let offer = chain
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|c| {
                c.find(PayloadType::Sa)
                    .map(|p| p.body)
                    .ok_or_else(|| "no SA payload".to_owned())
            })
            .and_then(|sa| {
                SaRepr::parse(sa)
                    .map(|r| (r, sa.to_vec()))
                    .map_err(|e| e.to_string())
            });
        let (offer, sai_b) = match offer {
            Ok(o) => o,
            Err(e) => {
                ctx.log(
                    LogLevel::Warning,
                    Some(p1.name()),
                    format!("malformed Main Mode message 1 from {remote}: {e}"),
                );
                return None;
            }
        };
        let choice = match choose_phase1(
            &offer,
            &p1.conn.ike.proposals,
            p1.conn.ike.ike_lifetime_secs,
        ) {
            Ok(c) => c,
            Err(reason) => {
                p1.notify_plain(ctx, NotifyType::NoProposalChosen);
                ctx.events.push_back(Event::Failed {
                    conn: p1.conn.name.clone(),
                    peer: *remote.ip(),
                    exchange: None,
                    kind: FailureKind::Refused,
                    reason: format!("Main Mode from {remote}: {reason}"),
                    retrying: false,
                });
                return None;
            }
        };
        p1.cky_r = ctx.cookie();
        p1.sai_b = sai_b;
        p1.suite = Some(choice.suite);
        p1.lifetime = choice.lifetime;
        if let Ok(chain) = &chain {
            p1.note_vendor_ids(ctx, chain);
        }
        let sa = choice.reply.to_bytes();
        let mut payloads = vec![(PayloadType::Sa, &sa[..])];
        payloads.extend(p1.vendor_ids(ctx));
        let bytes = message::plain(&p1.header(ExchangeType::IdentityProtection, 0), &payloads);
        p1.flight.send(ctx, local, remote, bytes, true);
        p1.flight.received(datagram, 0);
        p1.state = MmState::R1;
        ctx.log(
            LogLevel::Info,
            Some(p1.name()),
            format!(
                "responding to Main Mode from {remote} with {}",
                choice.suite
            ),
        );
        Some(IkeSa {
            p1,
            quick: Vec::new(),
        })
    }

    /// A Main Mode message for this SA, which came from `from` to `to`. `body` is the
    /// part after the header. True when it authenticated the peer (message 5 or 6).
    pub fn handle_main_mode(
        &mut self,
        ctx: &mut Ctx<'_>,
        header: &HeaderRepr,
        datagram: &[u8],
        body: &[u8],
        (to, from): (SocketAddrV4, SocketAddrV4),
    ) -> bool {
        let p1 = &mut self.p1;
        if p1.flight.on_repeat(ctx, datagram) {
            return false;
        }
        let generation = p1.flight.generation();
        let result = match p1.state {
            MmState::I1 => p1.on_message_2(ctx, header, body),
            MmState::R1 => p1.on_message_3(ctx, header, body, (to, from)),
            MmState::I2 => p1.on_message_4(ctx, header, body, (to, from)),
            MmState::R2 => p1.on_message_5(ctx, header, body),
            MmState::I3 => p1.on_message_6(ctx, header, body),
            MmState::Established | MmState::Dead => {
                Err(Ignore("Main Mode message after the exchange".into()))
            }
        };
        match result {
            Ok(()) => {
                p1.flight.received(datagram, generation);
                p1.is_established()
            }
            Err(Ignore(why)) => {
                ctx.log(
                    LogLevel::Debug,
                    Some(p1.name()),
                    format!("ignoring Main Mode message from {}: {why}", p1.remote),
                );
                false
            }
        }
    }
}

/// A message that does not fit the state: dropped (it may be stray or forged), logged.
struct Ignore(String);

impl From<String> for Ignore {
    fn from(s: String) -> Ignore {
        Ignore(s)
    }
}

impl Phase1 {
    fn new(
        id: u64,
        conn: Connection,
        initiator: bool,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        cky_i: [u8; 8],
        cky_r: [u8; 8],
    ) -> Phase1 {
        Phase1 {
            id,
            conn,
            initiator,
            local,
            remote,
            cky_i,
            cky_r,
            state: MmState::Dead,
            suite: None,
            lifetime: 0,
            keys: None,
            iv: Vec::new(),
            sai_b: Vec::new(),
            dh: None,
            gxi: Vec::new(),
            gxr: Vec::new(),
            ni: Vec::new(),
            nr: Vec::new(),
            flight: Flight::default(),
            expires_at: None,
            pending: Vec::new(),
            complaint: None,
            auth_failure_reported: false,
            seen_info_ids: Vec::new(),
            quick_ids: Vec::new(),
            nat: NatT::default(),
            dpd: Dpd::default(),
            rekey_at: None,
            rekey_attempts: 0,
            replaces: None,
            superseded: false,
        }
    }

    fn plain_chain<'a>(header: &HeaderRepr, body: &'a [u8]) -> Result<Chain<'a>, Ignore> {
        if header.flags.encrypted() {
            return Err(Ignore(
                "encrypted where a plaintext message was expected".into(),
            ));
        }
        Ok(parse_chain(header.next_payload, body).map_err(|e| e.to_string())?)
    }

    /// Sends message 3 or 4: our KE and `nonce`, and the NAT-D payloads when both ends
    /// speak NAT-T.
    fn send_ke_nonce(&mut self, ctx: &mut Ctx<'_>, nonce: &[u8]) {
        let public = self
            .dh
            .as_ref()
            .map(|d| d.public_value().to_vec())
            .unwrap_or_default();
        let nat_d = match (self.nat.dialect(), self.suite) {
            (Some(d), Some(suite)) => {
                let bodies = natt::nat_d_bodies(
                    suite.hash,
                    &self.cky_i,
                    &self.cky_r,
                    self.local,
                    self.remote,
                );
                Some((d.nat_d(), bodies))
            }
            _ => None,
        };
        let mut payloads = vec![
            (PayloadType::KeyExchange, &public[..]),
            (PayloadType::Nonce, nonce),
        ];
        if let Some((kind, bodies)) = &nat_d {
            payloads.extend(bodies.iter().map(|b| (*kind, &b[..])));
        }
        let bytes = message::plain(&self.header(ExchangeType::IdentityProtection, 0), &payloads);
        self.flight.send(ctx, self.local, self.remote, bytes, true);
    }

    /// Our vendor IDs for message 1 or 2: DPD always, NAT-T when enabled; a responder
    /// names only the NAT-T version it picked from the initiator's (as charon and Pluto
    /// do), so both ends agree on the numbers.
    fn vendor_ids(&self, ctx: &Ctx<'_>) -> Vec<(PayloadType, &'static [u8])> {
        let natt: Vec<NattVid> = match (self.initiator, ctx.settings.nat_traversal) {
            (_, false) => Vec::new(),
            (true, true) => NattVid::OFFERED.to_vec(),
            (false, true) => self.nat.vid.into_iter().collect(),
        };
        natt.into_iter()
            .map(|v| &v.bytes()[..])
            .chain([&dpd::VENDOR_ID[..]])
            .map(|v| (PayloadType::VendorId, v))
            .collect()
    }

    /// The peer's vendor IDs in message 1 or 2; unknown ones are only logged.
    fn note_vendor_ids(&mut self, ctx: &mut Ctx<'_>, chain: &Chain<'_>) {
        for p in chain
            .payloads
            .iter()
            .filter(|p| p.kind == PayloadType::VendorId)
        {
            if let Some(v) = NattVid::from_bytes(p.body) {
                if ctx.settings.nat_traversal {
                    self.nat.note_vendor_id(v);
                }
            } else if dpd::is_vendor_id(p.body) {
                self.dpd.peer_supports = true;
            } else {
                let hex: String = p.body.iter().map(|b| format!("{b:02x}")).collect();
                ctx.log(
                    LogLevel::Debug,
                    Some(self.name()),
                    format!("{} sent unknown vendor ID {hex}", self.remote),
                );
            }
        }
    }

    /// Reads the peer's NAT-D payloads in message 3 or 4, which came from `from` to `to`.
    /// Malformed ones are ignored (logged): Main Mode goes on as if no NAT were there.
    fn detect_nat(
        &mut self,
        ctx: &mut Ctx<'_>,
        chain: &Chain<'_>,
        to: SocketAddrV4,
        from: SocketAddrV4,
    ) {
        let (Some(_), Some(suite)) = (self.nat.vid, self.suite) else {
            return;
        };
        match natt::detect(chain, suite.hash, &self.cky_i, &self.cky_r, to, from) {
            Ok(Some((here, there))) => {
                (self.nat.here, self.nat.there) = (here, there);
                if here || there {
                    let whom = match (here, there) {
                        (true, true) => "both ends are",
                        (true, false) => "this end is",
                        _ => "the peer is (or says it is)",
                    };
                    ctx.log(
                        LogLevel::Info,
                        Some(self.name()),
                        format!(
                            "NAT-T: {whom} behind a NAT (seen from {from}); IKE moves to port {} from message 5",
                            ctx.settings.nat_t_port
                        ),
                    );
                }
            }
            Ok(None) => ctx.log(
                LogLevel::Debug,
                Some(self.name()),
                format!("NAT-T: {from} sent no NAT-D payloads"),
            ),
            Err(e) => ctx.log(
                LogLevel::Warning,
                Some(self.name()),
                format!("NAT-T: ignoring malformed NAT-D payloads from {from}: {e}"),
            ),
        }
    }

    /// Initiator: the responder's choice.
    fn on_message_2(
        &mut self,
        ctx: &mut Ctx<'_>,
        header: &HeaderRepr,
        body: &[u8],
    ) -> Result<(), Ignore> {
        let chain = Phase1::plain_chain(header, body)?;
        let sa = chain
            .find(PayloadType::Sa)
            .ok_or_else(|| "no SA payload".to_owned())?;
        let reply = SaRepr::parse(sa.body).map_err(|e| e.to_string())?;
        if header.responder_cookie == [0; 8] {
            return Err(Ignore("message 2 without a responder cookie".into()));
        }
        let (suite, lifetime) = match check_phase1_reply(
            &reply,
            &self.conn.ike.proposals,
            self.conn.ike.ike_lifetime_secs,
        ) {
            Ok(s) => s,
            Err(e) => {
                self.fail(
                    ctx,
                    FailureKind::Refused,
                    format!("bad Main Mode reply from {}: {e}", self.remote),
                    true,
                );
                return Ok(());
            }
        };
        self.cky_r = header.responder_cookie;
        self.suite = Some(suite);
        self.lifetime = lifetime;
        self.note_vendor_ids(ctx, &chain);
        let dh = DhPrivate::generate(suite.group, ctx.rng.rng());
        self.gxi = dh.public_value().to_vec();
        self.dh = Some(dh);
        self.ni = ctx.random(OUR_NONCE_LEN);
        self.send_ke_nonce(ctx, &self.ni.clone());
        self.state = MmState::I2;
        Ok(())
    }

    /// Derives the keys from the peer's KE; a degenerate one ends the exchange.
    fn derive_or_fail(&mut self, ctx: &mut Ctx<'_>, ke: &[u8]) -> bool {
        let Err(e) = self.derive(ke) else { return true };
        let reason = format!("key exchange with {} failed: {e}", self.remote);
        self.fail(ctx, FailureKind::Other, reason, true);
        false
    }

    /// Responder: the initiator's KE and nonce; answer with ours and derive the keys.
    fn on_message_3(
        &mut self,
        ctx: &mut Ctx<'_>,
        header: &HeaderRepr,
        body: &[u8],
        (to, from): (SocketAddrV4, SocketAddrV4),
    ) -> Result<(), Ignore> {
        let chain = Phase1::plain_chain(header, body)?;
        let suite = self.suite.ok_or_else(|| "no proposal yet".to_owned())?;
        let (ke, nonce) = ke_and_nonce(&chain, dh::modulus_len(suite.group))?;
        self.detect_nat(ctx, &chain, to, from);
        let dh = DhPrivate::generate(suite.group, ctx.rng.rng());
        self.gxi = ke.to_vec();
        self.gxr = dh.public_value().to_vec();
        self.ni = nonce.to_vec();
        self.dh = Some(dh);
        self.nr = ctx.random(OUR_NONCE_LEN);
        // Derive before answering: a degenerate KE gets no answer.
        if !self.derive_or_fail(ctx, ke) {
            return Ok(());
        }
        self.send_ke_nonce(ctx, &self.nr.clone());
        self.state = MmState::R2;
        Ok(())
    }

    /// Initiator: the responder's KE and nonce; derive the keys and authenticate.
    fn on_message_4(
        &mut self,
        ctx: &mut Ctx<'_>,
        header: &HeaderRepr,
        body: &[u8],
        (to, from): (SocketAddrV4, SocketAddrV4),
    ) -> Result<(), Ignore> {
        let chain = Phase1::plain_chain(header, body)?;
        let suite = self.suite.ok_or_else(|| "no proposal yet".to_owned())?;
        let (ke, nonce) = ke_and_nonce(&chain, dh::modulus_len(suite.group))?;
        self.detect_nat(ctx, &chain, to, from);
        if self.nat.detected() && self.local.port() != ctx.settings.nat_t_port {
            // RFC 3947 §4: the initiator moves from message 5 on; the responder follows.
            // A Main Mode that began on the NAT-T port (a rekey towards a peer behind a
            // NAT, sent where its NAT maps the old SA's port) is there already.
            let port = ctx.settings.nat_t_port;
            self.local.set_port(port);
            self.remote.set_port(port);
        }
        self.gxr = ke.to_vec();
        self.nr = nonce.to_vec();
        if !self.derive_or_fail(ctx, ke) {
            return Ok(());
        }
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        let id = self.id_payload().to_bytes();
        let hash_i = keys.hash_i(
            &self.gxi,
            &self.gxr,
            &self.cky_i,
            &self.cky_r,
            &self.sai_b,
            &id,
        );
        let chain = message::chain(&[
            (PayloadType::Identification, &id),
            (PayloadType::Hash, &hash_i),
        ]);
        let (bytes, next_iv) = message::encrypted(
            keys,
            &self.iv,
            &self.header(ExchangeType::IdentityProtection, 0),
            chain,
        );
        self.iv = next_iv;
        self.flight.send(ctx, self.local, self.remote, bytes, true);
        self.state = MmState::I3;
        Ok(())
    }

    /// Decrypts message 5 or 6 and returns the peer's ID body and HASH, or why they are
    /// not there: under a wrong key the plaintext is noise.
    fn open_auth(&self, header: &HeaderRepr, body: &[u8]) -> Result<AuthPayloads, String> {
        if !header.flags.encrypted() {
            return Err("not encrypted".into());
        }
        let keys = self.keys.as_ref().ok_or("no keys")?;
        let (plain, next_iv) = message::decrypt(keys, &self.iv, body)?;
        let chain = parse_chain(header.next_payload, &plain).map_err(|e| e.to_string())?;
        let id = chain
            .find(PayloadType::Identification)
            .ok_or("no ID payload")?
            .body
            .to_vec();
        let hash = chain
            .find(PayloadType::Hash)
            .ok_or("no HASH payload")?
            .body
            .to_vec();
        Ok(AuthPayloads { id, hash, next_iv })
    }

    /// The peer's phase 1 ID must be its address: that is what chose the key. Behind a NAT
    /// the peer can only name its private address, which nobody here knows; the key was
    /// still chosen by the address it is seen at.
    fn check_peer_id(&self, id: &[u8]) -> Result<(), String> {
        let value = IdRepr::parse(id)
            .and_then(|r| r.value())
            .map_err(|e| format!("peer ID unusable: {e}"))?;
        match value {
            IdValue::Ipv4(a) if a == *self.remote.ip() => Ok(()),
            IdValue::Ipv4(_) if self.nat.there => Ok(()),
            other => Err(format!(
                "peer identified as {other:?}, expected {}",
                self.remote.ip()
            )),
        }
    }

    /// Responder: a message 5 that fails to authenticate is reported (once) and answered
    /// with a notification, but the exchange stays open: the message may be forged or
    /// corrupted, and the genuine one may still come.
    fn reject_message_5(&mut self, ctx: &mut Ctx<'_>, kind: NotifyType, reason: String) -> Ignore {
        self.notify_plain(ctx, kind);
        if !self.auth_failure_reported {
            self.auth_failure_reported = true;
            ctx.events.push_back(Event::Failed {
                conn: self.conn.name.clone(),
                peer: *self.remote.ip(),
                exchange: None,
                kind: FailureKind::Authentication,
                reason: reason.clone(),
                retrying: false,
            });
        }
        Ignore(reason)
    }

    /// Responder: authenticate the initiator and answer.
    fn on_message_5(
        &mut self,
        ctx: &mut Ctx<'_>,
        header: &HeaderRepr,
        body: &[u8],
    ) -> Result<(), Ignore> {
        let block = self.keys.as_ref().map_or(1, Phase1Keys::block_len);
        if !header.flags.encrypted() || body.is_empty() || !body.len().is_multiple_of(block) {
            // Not what any key would produce: malformed, not a sign of a wrong key.
            return Err(Ignore("message 5 not encrypted in whole blocks".into()));
        }
        let AuthPayloads { id, hash, next_iv } = match self.open_auth(header, body) {
            Ok(v) => v,
            Err(e) => {
                let reason = format!(
                    "wrong pre-shared key? Main Mode message 5 from {} does not decrypt to valid payloads ({e})",
                    self.remote
                );
                return Err(self.reject_message_5(ctx, NotifyType::PayloadMalformed, reason));
            }
        };
        if let Err(e) = self.check_peer_id(&id) {
            return Err(self.reject_message_5(ctx, NotifyType::InvalidIdInformation, e));
        }
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        let expected = keys.hash_i(
            &self.gxi,
            &self.gxr,
            &self.cky_i,
            &self.cky_r,
            &self.sai_b,
            &id,
        );
        if !bool::from(expected.ct_eq(&hash)) {
            let reason = format!("wrong pre-shared key: HASH_I mismatch from {}", self.remote);
            return Err(self.reject_message_5(ctx, NotifyType::InvalidHashInformation, reason));
        }
        let our_id = self.id_payload().to_bytes();
        let hash_r = keys.hash_r(
            &self.gxr,
            &self.gxi,
            &self.cky_r,
            &self.cky_i,
            &self.sai_b,
            &our_id,
        );
        let chain = message::chain(&[
            (PayloadType::Identification, &our_id),
            (PayloadType::Hash, &hash_r),
        ]);
        let (bytes, phase1_iv) = message::encrypted(
            keys,
            &next_iv,
            &self.header(ExchangeType::IdentityProtection, 0),
            chain,
        );
        self.iv = phase1_iv;
        self.flight.send(ctx, self.local, self.remote, bytes, false);
        self.establish(ctx);
        Ok(())
    }

    /// Initiator: authenticate the responder. A message 6 that fails is only noted: the
    /// retransmitted message 5 brings the genuine one, or the retransmissions run out and
    /// the failure says what went wrong.
    fn on_message_6(
        &mut self,
        ctx: &mut Ctx<'_>,
        header: &HeaderRepr,
        body: &[u8],
    ) -> Result<(), Ignore> {
        if !header.flags.encrypted() {
            return Err(Ignore("message 6 not encrypted".into()));
        }
        let checked =
            self.open_auth(header, body)
                .and_then(|AuthPayloads { id, hash, next_iv }| {
                    self.check_peer_id(&id)?;
                    let keys = self.keys.as_ref().ok_or("no keys")?;
                    let expected = keys.hash_r(
                        &self.gxr,
                        &self.gxi,
                        &self.cky_r,
                        &self.cky_i,
                        &self.sai_b,
                        &id,
                    );
                    if bool::from(expected.ct_eq(&hash)) {
                        Ok(next_iv)
                    } else {
                        Err("HASH_R mismatch".to_owned())
                    }
                });
        match checked {
            Ok(next_iv) => {
                self.iv = next_iv;
                self.establish(ctx);
                Ok(())
            }
            Err(e) => {
                let reason = format!(
                    "wrong pre-shared key? Main Mode message 6 from {} does not authenticate ({e})",
                    self.remote
                );
                self.complaint = Some((FailureKind::Authentication, reason.clone()));
                ctx.log(LogLevel::Warning, Some(self.name()), reason.clone());
                Err(Ignore(reason))
            }
        }
    }

    /// An unencrypted notification for this SA while Main Mode runs: logged, and kept as
    /// the likely reason should the exchange time out.
    pub fn on_plain_notify(&mut self, ctx: &mut Ctx<'_>, n: &NotifyRepr) {
        let waiting = matches!(self.state, MmState::I1 | MmState::I2 | MmState::I3);
        if n.kind.is_error() && waiting {
            let (kind, reason) = match (self.state, n.kind) {
                (MmState::I1, NotifyType::NoProposalChosen) => (
                    FailureKind::Refused,
                    format!(
                        "{} accepted none of our phase 1 proposals (NO-PROPOSAL-CHOSEN)",
                        self.remote
                    ),
                ),
                (
                    MmState::I3,
                    NotifyType::PayloadMalformed
                    | NotifyType::InvalidHashInformation
                    | NotifyType::AuthenticationFailed,
                ) => (
                    FailureKind::Authentication,
                    format!(
                        "wrong pre-shared key? {} could not authenticate us ({:?})",
                        self.remote, n.kind
                    ),
                ),
                (_, kind) => (
                    FailureKind::Refused,
                    format!("{} refused Main Mode: {kind:?}", self.remote),
                ),
            };
            ctx.log(LogLevel::Warning, Some(self.name()), reason.clone());
            self.complaint = Some((kind, reason));
        } else {
            ctx.log(
                LogLevel::Info,
                Some(self.name()),
                format!("{} sent notification {:?}", self.remote, n.kind),
            );
        }
    }
}

impl Phase1 {
    /// Retransmits, or gives up: an initiator fails (and may retry per keyingtries); a
    /// responder just forgets the half-open exchange, as there is nobody to tell.
    pub fn on_timeout(&mut self, ctx: &mut Ctx<'_>) {
        if self.flight.on_timeout(ctx) != crate::flight::Timeout::Exhausted {
            return;
        }
        let which = match self.state {
            MmState::I1 => "message 1",
            MmState::I2 => "message 3",
            MmState::I3 => "message 5",
            MmState::R1 => "message 2",
            MmState::R2 => "message 4",
            _ => "a message",
        };
        let mut reason = format!(
            "no reply to Main Mode {which} from {} after {} retransmissions",
            self.remote,
            self.flight.retransmits()
        );
        // The peer's last word, if it said anything, is the likelier cause than silence.
        let mut kind = FailureKind::TimedOut;
        if let Some((k, c)) = self.complaint.take() {
            kind = k;
            reason = format!("{c}; {reason}");
        }
        if self.initiator {
            self.fail(ctx, kind, reason, true);
        } else {
            self.state = MmState::Dead;
            ctx.log(LogLevel::Warning, Some(self.name()), reason);
        }
    }
}
