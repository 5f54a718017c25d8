//! The daemon's sans-IO core: owns the connections, the ISAKMP SAs with their exchanges,
//! the child SAs' lifetimes, and the keying requests; datagrams and time go in,
//! datagrams, a next timeout and events come out (quinn-proto's shape).
//!
//! It also owns what spans exchanges: the NAT-T framing of the port 4500 datagrams, an
//! ISAKMP SA following its peer to a new address (RFC 3947 §4), NAT-keepalives for the
//! child SAs (RFC 3948 §4), and the removal of a dead peer's SAs (RFC 3706).
//!
//! The ISAKMP SA is rekeyed as Pluto does it: the side that initiated it starts a new Main
//! Mode rekeymargin (plus fuzz) before it expires, the responder at half the margin, and
//! only while IPsec SAs with the peer are in use or keying requests wait; a road-warrior
//! responder never starts one. The newest established ISAKMP SA with a peer (ours or one
//! the peer started) carries new Quick Modes, Informationals and DPD; the ones it replaces
//! still answer the peer until they expire. Child SAs do not depend on the ISAKMP SA that
//! made them and are left alone.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use ipsec_plugin::config::Cidr;

use crate::config::{sequential_spis, Connection, EndpointConfig, SpiAllocator};
use crate::ctx::{Ctx, EndpointRng, Outcome, Settings, Transmit};
use crate::dpd;
use crate::event::{ChildSa, DeleteReason, Event, ExchangeId, FailureKind, LogLevel, SpiSet};
use crate::informational;
use crate::main_mode::{IkeSa, MmState};
use crate::natt::{self, Arrival};
use crate::quick::{QmState, QuickMode, Responded};
use crate::wire::{ExchangeType, Header, HeaderRepr, ProtocolId};

/// Quick Mode message IDs remembered per ISAKMP SA (replays of older ones are dropped).
const REMEMBERED_QUICK_IDS: usize = 256;
/// Bounds the NAT-T and DPD timers, so that timer arithmetic cannot overflow and a zero
/// interval cannot spin.
const TIMER_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(86_400));

fn timer(d: Duration) -> Duration {
    d.clamp(TIMER_RANGE.0, TIMER_RANGE.1)
}

/// The parts of the endpoint that exchange handlers write to.
struct Io {
    settings: Settings,
    rng: EndpointRng,
    spis: SpiAllocator,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl Io {
    fn ctx<'a>(&'a mut self, now: Instant, outcomes: &'a mut Vec<Outcome>) -> Ctx<'a> {
        Ctx {
            now,
            settings: &self.settings,
            rng: &mut self.rng,
            spis: &mut self.spis,
            transmits: &mut self.transmits,
            events: &mut self.events,
            outcomes,
        }
    }

    fn event(&mut self, e: Event) {
        self.events.push_back(e);
    }

    fn log(&mut self, level: LogLevel, conn: Option<&str>, message: String) {
        self.events.push_back(Event::Log {
            level,
            conn: conn.map(str::to_owned),
            message,
        });
    }
}

/// A caller's (or a rekey's) wish to have a connection keyed, kept across retries.
struct Request {
    id: ExchangeId,
    conn: String,
    attempts: u32,
    retry_at: Option<Instant>,
}

/// An established child SA bundle, for its lifetime.
struct ChildRecord {
    conn: String,
    peer: Ipv4Addr,
    selectors: (Cidr, Cidr, u8, u16, u16),
    inbound: SpiSet,
    outbound: SpiSet,
    rekey_at: Option<Instant>,
    expires_at: Instant,
    /// A newer bundle for the same traffic exists: nothing is sent on this one any more,
    /// but it is accepted on until it expires.
    superseded: bool,
    /// This end is behind a NAT: the (local, remote) path NAT-keepalives hold open.
    keepalive: Option<(SocketAddrV4, SocketAddrV4)>,
}

pub struct Endpoint {
    io: Io,
    local_address: Option<Ipv4Addr>,
    connections: Vec<Connection>,
    ike_sas: Vec<IkeSa>,
    children: Vec<ChildRecord>,
    requests: Vec<Request>,
    next_id: u64,
    next_keepalive: Option<Instant>,
}

fn selectors_of(c: &ChildSa) -> (Cidr, Cidr, u8, u16, u16) {
    (
        c.local_selector,
        c.remote_selector,
        c.protocol,
        c.local_port,
        c.remote_port,
    )
}

impl Endpoint {
    pub fn new(config: EndpointConfig) -> Endpoint {
        let mut rng = EndpointRng::new(config.rng_seed);
        let spis = config.spi_allocator.unwrap_or_else(|| {
            let r = rng.rng();
            sequential_spis(r.next_u32() & 0x7fff_ffff, r.next_u32() as u16)
        });
        Endpoint {
            io: Io {
                settings: Settings {
                    ike_port: config.ike_port,
                    // Bounded so that timer arithmetic cannot overflow.
                    retransmit_base: config
                        .retransmit_base
                        .clamp(Duration::from_millis(1), Duration::from_secs(3600)),
                    max_retransmits: config.max_retransmits.min(10),
                    max_half_open: config.max_half_open,
                    nat_traversal: config.nat_traversal,
                    nat_t_port: config.nat_t_port,
                    keepalive_interval: timer(config.keepalive_interval),
                    dpd_delay: config.dpd_delay.map(timer),
                    dpd_timeout: timer(config.dpd_timeout),
                },
                rng,
                spis,
                transmits: VecDeque::new(),
                events: VecDeque::new(),
            },
            local_address: config.local_address,
            connections: Vec::new(),
            ike_sas: Vec::new(),
            children: Vec::new(),
            requests: Vec::new(),
            next_id: 1,
            next_keepalive: None,
        }
    }

    /// Adds a connection, or replaces the one of the same name. Responders need their
    /// connections added before a peer's Main Mode arrives.
    pub fn add_connection(&mut self, conn: Connection) {
        match self.connections.iter_mut().find(|c| c.name == conn.name) {
            Some(c) => *c = conn,
            None => self.connections.push(conn),
        }
    }

    pub fn connections(&self) -> &[Connection] {
        &self.connections
    }

    /// The host's current address, used for connections whose `local` is 0.0.0.0.
    pub fn set_local_address(&mut self, address: Option<Ipv4Addr>) {
        self.local_address = address;
    }

    /// Keys `conn` (adding or updating it first): Quick Mode on an ISAKMP SA with the
    /// peer, after Main Mode if there is none yet.
    pub fn initiate(&mut self, now: Instant, conn: &Connection) -> ExchangeId {
        self.add_connection(conn.clone());
        let id = self.new_request(&conn.name);
        let mut outcomes = Vec::new();
        self.start_request(now, id, &mut outcomes);
        self.process(now, outcomes);
        id
    }

    /// Deletes every child SA and ISAKMP SA of a connection, telling the peer.
    pub fn delete(&mut self, now: Instant, conn: &str) {
        let mut outcomes = Vec::new();
        let mut ctx = self.io.ctx(now, &mut outcomes);
        let (gone, kept): (Vec<ChildRecord>, Vec<ChildRecord>) = std::mem::take(&mut self.children)
            .into_iter()
            .partition(|c| c.conn == conn);
        self.children = kept;
        for child in gone {
            if let Some(sa) = sa_for_peer(&self.ike_sas, child.peer) {
                send_child_delete(&mut ctx, sa, &child.inbound);
            }
            ctx.events.push_back(Event::ChildSaDeleted {
                conn: child.conn,
                peer: child.peer,
                inbound: child.inbound,
                outbound: child.outbound,
                reason: DeleteReason::Local,
            });
        }
        for sa in self
            .ike_sas
            .iter_mut()
            .filter(|s| s.p1.conn.name == conn && s.p1.state != MmState::Dead)
        {
            if sa.p1.is_established() {
                let cookies = [sa.p1.cky_i, sa.p1.cky_r].concat();
                informational::send_delete(&mut ctx, &sa.p1, ProtocolId::Isakmp, vec![cookies]);
                ctx.events.push_back(Event::Phase1Deleted {
                    conn: conn.to_owned(),
                    peer: *sa.p1.remote.ip(),
                    reason: DeleteReason::Local,
                });
            }
            sa.p1.state = MmState::Dead;
            sa.p1.pending.clear();
            for qm in &mut sa.quick {
                qm.request = None;
            }
        }
        self.requests.retain(|r| r.conn != conn);
        self.process(now, outcomes);
    }

    /// A UDP payload that arrived from `from` at `to`. On the NAT-T port it is IKE only
    /// behind the non-ESP marker; NAT-keepalives and ESP there are not ours.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        to: SocketAddrV4,
        data: &[u8],
    ) {
        let data = if self.io.settings.marks(to.port()) {
            match natt::classify(data) {
                Arrival::Ike(ike) => ike,
                Arrival::Keepalive => return,
                Arrival::Esp => {
                    return self.io.log(
                        LogLevel::Debug,
                        None,
                        format!("ignoring {} bytes of ESP from {from} to {to}", data.len()),
                    )
                }
            }
        } else {
            data
        };
        let parsed = Header::new_checked(data).and_then(|h| Ok((HeaderRepr::parse(&h)?, h)));
        let (repr, header) = match parsed {
            Ok(v) => v,
            Err(e) => {
                self.io.log(
                    LogLevel::Debug,
                    None,
                    format!("dropping datagram from {from}: {e}"),
                );
                return;
            }
        };
        let datagram = &data[..repr.length as usize];
        let body = header.body();
        let mut outcomes = Vec::new();
        match repr.exchange {
            ExchangeType::IdentityProtection => {
                self.on_main_mode(now, from, to, &repr, datagram, body, &mut outcomes)
            }
            ExchangeType::QuickMode => {
                self.on_quick_mode(now, from, to, &repr, datagram, body, &mut outcomes)
            }
            ExchangeType::Informational => {
                if let Some(i) = self.find_sa(&repr, from, to) {
                    let prior = self.arrive(i, from, to);
                    let mut ctx = self.io.ctx(now, &mut outcomes);
                    let authentic =
                        informational::handle(&mut ctx, &mut self.ike_sas[i], &repr, body);
                    self.settle(now, i, prior, authentic);
                }
            }
            other => self.io.log(
                LogLevel::Warning,
                None,
                format!("{from} started a {other:?} exchange, which is not supported"),
            ),
        }
        self.process(now, outcomes);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut outcomes = Vec::new();
        let linger = self.io.settings.retransmit_window() + self.io.settings.retransmit_base;
        {
            let mut ctx = self.io.ctx(now, &mut outcomes);
            for sa in &mut self.ike_sas {
                if !sa.p1.is_established() {
                    sa.p1.on_timeout(&mut ctx);
                } else if sa.p1.expires_at.is_some_and(|t| t <= now) {
                    sa.p1.state = MmState::Dead;
                    ctx.log(
                        LogLevel::Info,
                        Some(sa.p1.name()),
                        format!("ISAKMP SA with {} expired", sa.p1.remote),
                    );
                    ctx.events.push_back(Event::Phase1Deleted {
                        conn: sa.p1.conn.name.clone(),
                        peer: *sa.p1.remote.ip(),
                        reason: DeleteReason::Expired,
                    });
                } else {
                    dpd::on_timeout(&mut ctx, &mut sa.p1);
                }
                for qm in &mut sa.quick {
                    qm.on_timeout(&mut ctx, &sa.p1);
                }
                sa.quick.retain(|q| {
                    !(q.state == QmState::Done && q.done_at.is_some_and(|t| t + linger <= now))
                });
            }
        }
        self.expire_children(now);
        self.send_keepalives(now);
        let replace: Vec<u64> = self
            .ike_sas
            .iter_mut()
            .filter(|s| s.p1.is_established() && s.p1.rekey_at.is_some_and(|t| t <= now))
            .map(|s| {
                s.p1.rekey_at = None;
                s.p1.id
            })
            .collect();
        for sa in replace {
            self.rekey_phase1(now, sa, &mut outcomes);
        }
        let rekeys: Vec<String> = self
            .children
            .iter_mut()
            .filter(|c| c.rekey_at.is_some_and(|t| t <= now))
            .map(|c| {
                c.rekey_at = None;
                c.conn.clone()
            })
            .collect();
        for conn in rekeys {
            self.io.log(
                LogLevel::Info,
                Some(&conn),
                "rekeying: the IPsec SA nears its lifetime".into(),
            );
            let id = self.new_request(&conn);
            self.start_request(now, id, &mut outcomes);
        }
        let due: Vec<ExchangeId> = self
            .requests
            .iter()
            .filter(|r| r.retry_at.is_some_and(|t| t <= now))
            .map(|r| r.id)
            .collect();
        for id in due {
            self.start_request(now, id, &mut outcomes);
        }
        self.process(now, outcomes);
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.io.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.io.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let linger = self.io.settings.retransmit_window() + self.io.settings.retransmit_base;
        let settings = &self.io.settings;
        let sas = self.ike_sas.iter().flat_map(move |sa| {
            let dpd = sa
                .p1
                .dpd
                .deadline(settings)
                .filter(|_| sa.p1.is_established());
            let rekey = sa.p1.rekey_at.filter(|_| sa.p1.is_established());
            let own = [sa.p1.flight.deadline(), sa.p1.expires_at, dpd, rekey];
            let quick = sa
                .quick
                .iter()
                .flat_map(move |q| [q.flight.deadline(), q.done_at.map(|t| t + linger)]);
            own.into_iter().chain(quick)
        });
        let children = self
            .children
            .iter()
            .flat_map(|c| [c.rekey_at, Some(c.expires_at)]);
        let requests = self.requests.iter().map(|r| r.retry_at);
        let keepalive = self
            .next_keepalive
            .filter(|_| self.children.iter().any(|c| c.keepalive.is_some()));
        sas.chain(children)
            .chain(requests)
            .chain([keepalive])
            .flatten()
            .min()
    }

    // ------------------------------------------------------------ dispatch

    /// The ISAKMP SA a message belongs to: by both cookies, or, for the responder's first
    /// answer (which brings its cookie), by ours alone. On the NAT-T port the peer's
    /// address may have changed under a NAT; the cookies decide, and the message must
    /// then authenticate before the SA follows it (`settle`).
    fn find_sa(&self, h: &HeaderRepr, from: SocketAddrV4, to: SocketAddrV4) -> Option<usize> {
        let may_move = self.io.settings.marks(to.port());
        let live = |sa: &IkeSa| {
            sa.p1.state != MmState::Dead
                && (sa.p1.remote.ip() == from.ip() || (may_move && sa.p1.nat.vid.is_some()))
        };
        self.ike_sas
            .iter()
            .position(|sa| {
                live(sa) && sa.p1.cky_i == h.initiator_cookie && sa.p1.cky_r == h.responder_cookie
            })
            .or_else(|| {
                self.ike_sas.iter().position(|sa| {
                    live(sa)
                        && sa.p1.initiator
                        && sa.p1.cky_i == h.initiator_cookie
                        && sa.p1.cky_r == [0; 8]
                })
            })
    }

    #[allow(clippy::too_many_arguments)]
    fn on_main_mode(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        to: SocketAddrV4,
        h: &HeaderRepr,
        datagram: &[u8],
        body: &[u8],
        outcomes: &mut Vec<Outcome>,
    ) {
        let existing = if h.responder_cookie == [0; 8] {
            // Message 1, or a repeat of it.
            self.ike_sas.iter().position(|sa| {
                !sa.p1.initiator
                    && sa.p1.state != MmState::Dead
                    && sa.p1.cky_i == h.initiator_cookie
                    && sa.p1.remote == from
            })
        } else {
            self.find_sa(h, from, to)
        };
        if let Some(i) = existing {
            let prior = self.arrive(i, from, to);
            let mut ctx = self.io.ctx(now, outcomes);
            let authentic =
                self.ike_sas[i].handle_main_mode(&mut ctx, h, datagram, body, (to, from));
            self.settle(now, i, prior, authentic);
            return;
        }
        if h.responder_cookie != [0; 8] {
            self.io.log(
                LogLevel::Debug,
                None,
                format!("Main Mode message from {from} for an unknown ISAKMP SA"),
            );
            return;
        }
        let half_open = self
            .ike_sas
            .iter()
            .filter(|sa| !sa.p1.initiator && !sa.p1.is_established())
            .count();
        if half_open >= self.io.settings.max_half_open {
            self.io.log(
                LogLevel::Warning,
                None,
                format!("dropping Main Mode from {from}: {half_open} half-open already"),
            );
            return;
        }
        let Some(conn) = self.match_connection(*to.ip(), *from.ip()) else {
            self.io.log(
                LogLevel::Warning,
                None,
                format!("Main Mode from {from} to {to}: no connection is configured for it"),
            );
            return;
        };
        let id = self.next_id();
        let mut ctx = self.io.ctx(now, outcomes);
        if let Some(sa) = IkeSa::respond(&mut ctx, id, conn, to, from, h, datagram, body) {
            self.ike_sas.push(sa);
        }
    }

    /// The connection for a Main Mode between these addresses: one naming the peer, or
    /// else a road-warrior one (remote 0.0.0.0), instantiated for this peer.
    fn match_connection(&self, local: Ipv4Addr, peer: Ipv4Addr) -> Option<Connection> {
        let local_ok = |c: &Connection| {
            c.local == local
                || (c.local.is_unspecified() && self.local_address.is_none_or(|a| a == local))
        };
        if let Some(c) = self
            .connections
            .iter()
            .find(|c| c.remote == peer && local_ok(c))
        {
            return Some(c.clone());
        }
        let template = self
            .connections
            .iter()
            .find(|c| c.is_road_warrior() && local_ok(c))?;
        Some(Connection {
            remote: peer,
            ..template.clone()
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn on_quick_mode(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        to: SocketAddrV4,
        h: &HeaderRepr,
        datagram: &[u8],
        body: &[u8],
        outcomes: &mut Vec<Outcome>,
    ) {
        let Some(i) = self
            .find_sa(h, from, to)
            .filter(|&i| self.ike_sas[i].p1.is_established())
        else {
            self.io.log(
                LogLevel::Debug,
                None,
                format!("Quick Mode from {from} without an ISAKMP SA"),
            );
            return;
        };
        let prior = self.arrive(i, from, to);
        let mut ctx = self.io.ctx(now, outcomes);
        let sa = &mut self.ike_sas[i];
        let authentic = if let Some(qm) = sa.quick.iter_mut().find(|q| q.message_id == h.message_id)
        {
            qm.handle(&mut ctx, &sa.p1, h, datagram, body)
        } else if sa.p1.quick_ids.contains(&h.message_id) {
            ctx.log(
                LogLevel::Debug,
                Some(sa.p1.name()),
                format!("old Quick Mode {:#010x} from {from}", h.message_id),
            );
            false
        } else {
            // Only an authentic message 1 takes its message ID: a forged one must not
            // keep the genuine one out.
            match QuickMode::respond(&mut ctx, &sa.p1, &self.connections, h, datagram, body) {
                Responded::Started(qm) => {
                    remember(&mut sa.p1.quick_ids, h.message_id);
                    sa.quick.push(*qm);
                    true
                }
                Responded::Refused => {
                    remember(&mut sa.p1.quick_ids, h.message_id);
                    true
                }
                Responded::Ignored => false,
            }
        };
        self.settle(now, i, prior, authentic);
    }

    // ------------------------------------------------------------ NAT-T paths

    /// Before a message for ISAKMP SA `i` is handled: when the SA may float (both ends
    /// speak NAT-T, the message came on the NAT-T port), answers go back the way it
    /// came. Returns the path to restore should the message not authenticate.
    fn arrive(
        &mut self,
        i: usize,
        from: SocketAddrV4,
        to: SocketAddrV4,
    ) -> Option<(SocketAddrV4, SocketAddrV4)> {
        let p1 = &mut self.ike_sas[i].p1;
        let path = (p1.local, p1.remote);
        let floats =
            p1.nat.vid.is_some() && self.io.settings.marks(to.port()) && path != (to, from);
        floats.then(|| {
            (p1.local, p1.remote) = (to, from);
            path
        })
    }

    /// After the message: an authentic one keeps the SA on its path (the peer floated,
    /// or its NAT mapping changed) and proves the peer alive; anything else leaves the SA
    /// where it was.
    fn settle(
        &mut self,
        now: Instant,
        i: usize,
        prior: Option<(SocketAddrV4, SocketAddrV4)>,
        authentic: bool,
    ) {
        let Some(sa) = self.ike_sas.get_mut(i) else {
            return;
        };
        let Some((old_local, old_remote)) = prior else {
            if authentic {
                let peer = *sa.p1.remote.ip();
                self.heard_from(now, peer, peer);
            }
            return;
        };
        if !authentic {
            (sa.p1.local, sa.p1.remote) = (old_local, old_remote);
            return;
        }
        let (local, remote) = (sa.p1.local, sa.p1.remote);
        sa.p1.flight.reroute(local, remote);
        for qm in &mut sa.quick {
            qm.flight.reroute(local, remote);
        }
        let conn = sa.p1.conn.name.clone();
        self.heard_from(now, *old_remote.ip(), *remote.ip());
        for c in self
            .children
            .iter_mut()
            .filter(|c| c.peer == *old_remote.ip())
        {
            c.peer = *remote.ip();
            if let Some((_, to)) = &mut c.keepalive {
                *to = remote;
            }
        }
        self.io.log(
            LogLevel::Info,
            Some(&conn),
            format!("NAT-T: {old_remote} now at {remote}, talking from {local}"),
        );
    }

    /// An authentic message from the peer (at `was`, now at `is`) proves it alive to every
    /// ISAKMP SA with it: the one DPD runs on may not be the one the message came on.
    fn heard_from(&mut self, now: Instant, was: Ipv4Addr, is: Ipv4Addr) {
        for sa in self
            .ike_sas
            .iter_mut()
            .filter(|s| [was, is].contains(s.p1.remote.ip()))
        {
            sa.p1.dpd.heard(now, &self.io.settings);
        }
    }

    /// NAT-keepalives (a single 0xFF, RFC 3948 §2.3) on every path a child SA needs open.
    fn send_keepalives(&mut self, now: Instant) {
        if self.next_keepalive.is_none_or(|t| t > now) {
            return;
        }
        let mut paths: Vec<(SocketAddrV4, SocketAddrV4)> = Vec::new();
        for path in self.children.iter().filter_map(|c| c.keepalive) {
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
        for &(from, to) in &paths {
            self.io.transmits.push_back(Transmit {
                from,
                to,
                payload: natt::KEEPALIVE.to_vec(),
            });
        }
        self.next_keepalive =
            (!paths.is_empty()).then(|| now + self.io.settings.keepalive_interval);
    }

    // ------------------------------------------------------------ requests

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn new_request(&mut self, conn: &str) -> ExchangeId {
        let id = ExchangeId(self.next_id());
        self.requests.push(Request {
            id,
            conn: conn.to_owned(),
            attempts: 0,
            retry_at: None,
        });
        id
    }

    /// Starts (or restarts) a request: Quick Mode on a usable ISAKMP SA, or a Main Mode
    /// (joined, when one with the peer is already under way).
    fn start_request(&mut self, now: Instant, id: ExchangeId, outcomes: &mut Vec<Outcome>) {
        let Some(r) = self.requests.iter_mut().find(|r| r.id == id) else {
            return;
        };
        r.retry_at = None;
        let name = r.conn.clone();
        let Some(conn) = self.connections.iter().find(|c| c.name == name).cloned() else {
            return self.request_failed(
                now,
                id,
                FailureKind::Other,
                format!("connection {name} is not configured"),
                false,
            );
        };
        if conn.esp.is_none() && conn.ah.is_none() {
            return self.request_failed(
                now,
                id,
                FailureKind::Other,
                "IKE negotiates IPComp only together with ESP or AH".into(),
                false,
            );
        }
        if conn.is_road_warrior() {
            return self.request_failed(
                now,
                id,
                FailureKind::Other,
                "a connection to 0.0.0.0 can only respond".into(),
                false,
            );
        }
        let local_ip = if conn.local.is_unspecified() {
            self.local_address
        } else {
            Some(conn.local)
        };
        let Some(local_ip) = local_ip else {
            return self.request_failed(now, id, FailureKind::Other, "this host has no address yet".into(), false);
        };
        let port = self.io.settings.ike_port;
        let (local, remote) = (
            SocketAddrV4::new(local_ip, port),
            SocketAddrV4::new(conn.remote, port),
        );
        // An ISAKMP SA between the same endpoints with the same key serves any connection
        // (Pluto's rule), unless it is about to expire; the newest one, when a rekey or the
        // peer made another.
        let margin = self.io.settings.retransmit_window();
        let usable = |sa: &IkeSa| {
            sa.p1.local.ip() == local.ip()
                && sa.p1.remote.ip() == remote.ip()
                && sa.p1.conn.psk == conn.psk
        };
        if let Some(i) = self.ike_sas.iter().rposition(|sa| {
            usable(sa)
                && sa.p1.is_established()
                && !sa.p1.superseded
                && sa.p1.expires_at.is_some_and(|t| t > now + margin)
        }) {
            return self.start_quick(now, i, id, outcomes);
        }
        if let Some(sa) = self.ike_sas.iter_mut().find(|sa| {
            usable(sa)
                && sa.p1.initiator
                && matches!(sa.p1.state, MmState::I1 | MmState::I2 | MmState::I3)
        }) {
            sa.p1.pending.push(id);
            return;
        }
        let sa_id = self.next_id();
        let mut ctx = self.io.ctx(now, outcomes);
        let sa = IkeSa::initiate(&mut ctx, sa_id, conn, local, remote, vec![id]);
        self.ike_sas.push(sa);
    }

    fn start_quick(
        &mut self,
        now: Instant,
        sa: usize,
        id: ExchangeId,
        outcomes: &mut Vec<Outcome>,
    ) {
        let conn = self
            .requests
            .iter()
            .find(|r| r.id == id)
            .and_then(|r| self.connections.iter().find(|c| c.name == r.conn))
            .cloned();
        let Some(conn) = conn else { return };
        let mut ctx = self.io.ctx(now, outcomes);
        let ike = &mut self.ike_sas[sa];
        let message_id = loop {
            let m = ctx.message_id();
            if !ike.p1.quick_ids.contains(&m) {
                break m;
            }
        };
        remember(&mut ike.p1.quick_ids, message_id);
        match QuickMode::initiate(&mut ctx, &ike.p1, conn, id, message_id) {
            Some(qm) => ike.quick.push(qm),
            None => self.request_failed(now, id, FailureKind::Other, "the ISAKMP SA has no keys".into(), true),
        }
    }

    /// Counts a failed attempt and retries while keyingtries allows (0 = forever), after
    /// one retransmission interval so that a refusing peer is not hammered.
    fn request_failed(&mut self, now: Instant, id: ExchangeId, kind: FailureKind, reason: String, retryable: bool) {
        let Some(i) = self.requests.iter().position(|r| r.id == id) else {
            return;
        };
        let r = &mut self.requests[i];
        r.attempts += 1;
        let conn = self.connections.iter().find(|c| c.name == r.conn);
        let tries = conn.map_or(1, |c| c.ike.keyingtries);
        let peer = conn.map_or(Ipv4Addr::UNSPECIFIED, |c| c.remote);
        let retrying = retryable && (tries == 0 || r.attempts < tries);
        let name = r.conn.clone();
        if retrying {
            r.retry_at = Some(now + self.io.settings.retransmit_base);
        } else {
            self.requests.remove(i);
        }
        self.io.event(Event::Failed {
            conn: name,
            peer,
            exchange: Some(id),
            kind,
            reason,
            retrying,
        });
    }

    /// When an SA of `conn` that lives `lifetime` from `now` is to be replaced; None for a
    /// road-warrior connection (the peer may be gone or behind a new address: it rekeys).
    /// Pluto's rule: rekeymargin plus up to rekeyfuzz of it before expiry; the responder
    /// waits for half the margin, so the initiator normally goes first.
    fn rekey_time(
        &mut self,
        now: Instant,
        conn: &str,
        initiator: bool,
        lifetime: Duration,
    ) -> Option<Instant> {
        let c = self.connections.iter().find(|c| c.name == conn)?;
        if c.is_road_warrior() {
            return None;
        }
        let margin = if initiator {
            c.ike.rekeymargin_secs
        } else {
            c.ike.rekeymargin_secs / 2
        };
        let fuzz_bound = margin.saturating_mul(u64::from(c.ike.rekeyfuzz_percent)) / 100;
        let mut outcomes = Vec::new();
        let fuzz = self.io.ctx(now, &mut outcomes).random_below(fuzz_bound + 1);
        let before = Duration::from_secs(margin.saturating_add(fuzz));
        let at = lifetime
            .checked_sub(before)
            .filter(|d| !d.is_zero())
            .unwrap_or(lifetime / 2);
        Some(now + at)
    }

    // ------------------------------------------------------------ phase 1 rekey

    /// ISAKMP SA `i` is established: it gets its rekey time, and replaces the older ones
    /// with the same peer (however it came about: our rekey, or the peer's new Main Mode,
    /// as charon and libreswan re-authenticate). Those stop DPD and rekeying and only
    /// answer the peer until they expire.
    fn phase1_up(&mut self, now: Instant, i: usize) {
        let p1 = &self.ike_sas[i].p1;
        let (name, initiator, lifetime) = (
            p1.conn.name.clone(),
            p1.initiator,
            Duration::from_secs(p1.lifetime),
        );
        let rekey_at = self.rekey_time(now, &name, initiator, lifetime);
        let p1 = &mut self.ike_sas[i].p1;
        p1.rekey_at = rekey_at;
        let (id, local, remote, psk) = (p1.id, *p1.local.ip(), p1.remote, p1.conn.psk.clone());
        for old in self.ike_sas.iter_mut().filter(|s| {
            s.p1.id != id
                && s.p1.is_established()
                && !s.p1.superseded
                && *s.p1.local.ip() == local
                && s.p1.remote.ip() == remote.ip()
                && s.p1.conn.psk == psk
        }) {
            old.p1.superseded = true;
            old.p1.rekey_at = None;
            old.p1.dpd.stop();
            self.io.events.push_back(Event::Log {
                level: LogLevel::Info,
                conn: Some(name.clone()),
                message: format!(
                    "ISAKMP SA #{id} replaces #{} with {remote} (#{} answers until it expires)",
                    old.p1.id, old.p1.id
                ),
            });
        }
    }

    /// The rekey time of ISAKMP SA `old` came: a new Main Mode with the same peer, if IPsec
    /// SAs with the peer are in use or requests wait for it. Behind a NAT, it starts from
    /// the IKE port as the first one did (the NAT is found and floated over again);
    /// otherwise it goes where the old SA talks to the peer now, which for a peer behind a
    /// NAT is the NAT-T port its NAT maps (the only way in), and else the IKE ports.
    fn rekey_phase1(&mut self, now: Instant, old: u64, outcomes: &mut Vec<Outcome>) {
        let Some(p1) = self
            .ike_sas
            .iter()
            .map(|s| &s.p1)
            .find(|p| p.id == old && p.is_established() && !p.superseded)
        else {
            return;
        };
        let peer = *p1.remote.ip();
        let conn = self
            .connections
            .iter()
            .find(|c| c.name == p1.conn.name)
            .unwrap_or(&p1.conn);
        if conn.is_road_warrior() {
            return;
        }
        let in_use = self
            .children
            .iter()
            .any(|c| !c.superseded && c.peer == peer)
            || self.requests.iter().any(|r| {
                self.connections
                    .iter()
                    .any(|c| c.name == r.conn && c.remote == peer)
            });
        if !in_use {
            let message = format!(
                "not rekeying the ISAKMP SA with {}: no IPsec SA uses it",
                p1.remote
            );
            return self.io.log(LogLevel::Info, Some(&p1.conn.name), message);
        }
        let underway = self.ike_sas.iter().any(|s| {
            s.p1.initiator
                && matches!(s.p1.state, MmState::I1 | MmState::I2 | MmState::I3)
                && s.p1.local.ip() == p1.local.ip()
                && *s.p1.remote.ip() == peer
        });
        if underway {
            let message = format!(
                "not rekeying the ISAKMP SA with {}: a Main Mode with it is under way",
                p1.remote
            );
            return self.io.log(LogLevel::Debug, Some(&p1.conn.name), message);
        }
        let port = self.io.settings.ike_port;
        let (local, remote) = if p1.nat.here {
            (
                SocketAddrV4::new(*p1.local.ip(), port),
                SocketAddrV4::new(peer, port),
            )
        } else {
            (p1.local, p1.remote)
        };
        let conn = Connection {
            remote: peer,
            ..conn.clone()
        };
        let message = format!(
            "rekeying the ISAKMP SA with {}: it nears its lifetime",
            p1.remote
        );
        self.io.log(LogLevel::Info, Some(&conn.name), message);
        let id = self.next_id();
        let mut ctx = self.io.ctx(now, outcomes);
        let mut sa = IkeSa::initiate(&mut ctx, id, conn, local, remote, Vec::new());
        sa.p1.replaces = Some(old);
        self.ike_sas.push(sa);
    }

    /// The Main Mode that was to replace ISAKMP SA `old` failed. While `old` is still the
    /// one in use, it is tried again after a retransmission interval as keyingtries allows
    /// and `old` lives; either way `old` serves until it expires.
    fn phase1_rekey_failed(
        &mut self,
        now: Instant,
        old: u64,
        conn: String,
        peer: Ipv4Addr,
        (kind, reason): (FailureKind, &str),
        retryable: bool,
    ) {
        let tries = self
            .connections
            .iter()
            .find(|c| c.name == conn)
            .map_or(1, |c| c.ike.keyingtries);
        let retry_at = now + self.io.settings.retransmit_base;
        let Some(p1) = self
            .ike_sas
            .iter_mut()
            .map(|s| &mut s.p1)
            .find(|p| p.id == old && p.is_established() && !p.superseded)
        else {
            return self.io.log(
                LogLevel::Warning,
                Some(&conn),
                format!("rekeying the ISAKMP SA with {peer} failed: {reason}"),
            );
        };
        p1.rekey_attempts += 1;
        let retrying = retryable
            && (tries == 0 || p1.rekey_attempts < tries)
            && p1.expires_at.is_some_and(|t| t > retry_at);
        if retrying {
            p1.rekey_at = Some(retry_at);
        }
        self.io.event(Event::Failed {
            conn,
            peer,
            exchange: None,
            kind,
            reason: format!(
                "rekeying the ISAKMP SA #{old}: {reason}; #{old} serves until it expires"
            ),
            retrying,
        });
    }

    // ------------------------------------------------------------ outcomes

    fn process(&mut self, now: Instant, outcomes: Vec<Outcome>) {
        let mut queue: VecDeque<Outcome> = outcomes.into();
        while let Some(o) = queue.pop_front() {
            let mut more = Vec::new();
            match o {
                Outcome::Phase1Up { sa } => {
                    if let Some(i) = self.ike_sas.iter().position(|s| s.p1.id == sa) {
                        self.phase1_up(now, i);
                        for id in std::mem::take(&mut self.ike_sas[i].p1.pending) {
                            self.start_quick(now, i, id, &mut more);
                        }
                    }
                }
                Outcome::Phase1Failed {
                    sa,
                    kind,
                    reason,
                    retryable,
                } => {
                    let Some(s) = self.ike_sas.iter_mut().find(|s| s.p1.id == sa) else {
                        continue;
                    };
                    s.p1.state = MmState::Dead;
                    let pending = std::mem::take(&mut s.p1.pending);
                    let (conn, peer, initiator, replaces) = (
                        s.p1.conn.name.clone(),
                        *s.p1.remote.ip(),
                        s.p1.initiator,
                        s.p1.replaces,
                    );
                    if let Some(old) = replaces {
                        self.phase1_rekey_failed(now, old, conn, peer, (kind, &reason), retryable);
                    } else if pending.is_empty() || !initiator {
                        self.io.event(Event::Failed {
                            conn,
                            peer,
                            exchange: None,
                            kind,
                            reason: reason.clone(),
                            retrying: false,
                        });
                    }
                    for id in pending {
                        self.request_failed(now, id, kind, reason.clone(), retryable);
                    }
                }
                Outcome::ChildUp {
                    child,
                    initiator,
                    keepalive,
                } => self.child_established(now, *child, initiator, keepalive),
                Outcome::ChildFailed {
                    request,
                    kind,
                    reason,
                    retryable,
                } => self.request_failed(now, request, kind, reason, retryable),
                Outcome::PeerDeleted {
                    peer,
                    protocol,
                    spis,
                } => {
                    let hit = |c: &ChildRecord| {
                        c.peer == peer
                            && spis.iter().any(|&s| match protocol {
                                ProtocolId::Esp => c.outbound.esp == Some(s),
                                ProtocolId::Ah => c.outbound.ah == Some(s),
                                _ => c.outbound.ipcomp.map(u32::from) == Some(s),
                            })
                    };
                    let (gone, kept): (Vec<ChildRecord>, Vec<ChildRecord>) =
                        std::mem::take(&mut self.children)
                            .into_iter()
                            .partition(hit);
                    self.children = kept;
                    for c in gone {
                        self.io.log(
                            LogLevel::Info,
                            Some(&c.conn),
                            format!("{peer} deleted IPsec SA {}", c.outbound),
                        );
                        self.io.event(Event::ChildSaDeleted {
                            conn: c.conn,
                            peer,
                            inbound: c.inbound,
                            outbound: c.outbound,
                            reason: DeleteReason::PeerDeleted,
                        });
                    }
                }
                Outcome::PeerDeletedPhase1 { sa } => {
                    if let Some(s) = self.ike_sas.iter_mut().find(|s| s.p1.id == sa) {
                        s.p1.state = MmState::Dead;
                        let (conn, peer) = (s.p1.conn.name.clone(), *s.p1.remote.ip());
                        self.io.event(Event::Phase1Deleted {
                            conn,
                            peer,
                            reason: DeleteReason::PeerDeleted,
                        });
                    }
                }
                Outcome::PeerDead { sa } => self.peer_dead(sa),
            }
            queue.extend(more);
        }
        self.reap(now);
    }

    /// Drops dead exchanges; Quick Modes still waiting on a dead ISAKMP SA fail with it.
    fn reap(&mut self, now: Instant) {
        let mut orphans = Vec::new();
        for sa in &mut self.ike_sas {
            let dead = sa.p1.state == MmState::Dead;
            sa.quick.retain(|q| {
                if dead && q.state == QmState::I1 {
                    orphans.extend(q.request);
                }
                q.state != QmState::Dead && !(dead && q.state != QmState::Done)
            });
        }
        self.ike_sas.retain(|sa| sa.p1.state != MmState::Dead);
        for id in orphans {
            self.request_failed(now, id, FailureKind::Other, "the ISAKMP SA went away".into(), true);
        }
    }

    /// DPD gave up: the ISAKMP SAs (the one DPD ran on and any it replaced) and every
    /// child SA with the peer go, here and in the plugin, so that new traffic asks for
    /// fresh keys. Nothing restarts on its own.
    fn peer_dead(&mut self, sa: u64) {
        let Some(peer) = self
            .ike_sas
            .iter()
            .find(|s| s.p1.id == sa)
            .map(|s| *s.p1.remote.ip())
        else {
            return;
        };
        for s in self
            .ike_sas
            .iter_mut()
            .filter(|s| s.p1.id == sa || (s.p1.is_established() && *s.p1.remote.ip() == peer))
        {
            s.p1.state = MmState::Dead;
            self.io.events.push_back(Event::Phase1Deleted {
                conn: s.p1.conn.name.clone(),
                peer,
                reason: DeleteReason::PeerDead,
            });
        }
        let (gone, kept): (Vec<ChildRecord>, Vec<ChildRecord>) = std::mem::take(&mut self.children)
            .into_iter()
            .partition(|c| c.peer == peer);
        self.children = kept;
        for c in gone {
            self.io.log(
                LogLevel::Info,
                Some(&c.conn),
                format!("deleting IPsec SA {}: {peer} is dead", c.inbound),
            );
            self.io.event(Event::ChildSaDeleted {
                conn: c.conn,
                peer,
                inbound: c.inbound,
                outbound: c.outbound,
                reason: DeleteReason::PeerDead,
            });
        }
    }

    fn child_established(
        &mut self,
        now: Instant,
        mut child: ChildSa,
        initiator: bool,
        keepalive: Option<(SocketAddrV4, SocketAddrV4)>,
    ) {
        let selectors = selectors_of(&child);
        if let Some(old) = self.children.iter_mut().find(|c| {
            c.conn == child.conn
                && c.peer == child.remote
                && c.selectors == selectors
                && !c.superseded
        }) {
            old.superseded = true;
            old.rekey_at = None;
            child.replaces = Some(old.inbound);
        }
        let lifetime = child.lifetime;
        let rekey_at = self.rekey_time(now, &child.conn, initiator, lifetime);
        if let Some(id) = child.exchange {
            self.requests.retain(|r| r.id != id);
        }
        self.children.push(ChildRecord {
            conn: child.conn.clone(),
            peer: child.remote,
            selectors,
            inbound: child.inbound_spis(),
            outbound: child.outbound_spis(),
            rekey_at,
            expires_at: now + lifetime,
            superseded: false,
            keepalive,
        });
        if keepalive.is_some() && self.next_keepalive.is_none_or(|t| t <= now) {
            self.next_keepalive = Some(now + self.io.settings.keepalive_interval);
        }
        self.io.event(Event::ChildSaEstablished(Box::new(child)));
    }

    /// Hard expiry: the bundle is deleted here and at the peer.
    fn expire_children(&mut self, now: Instant) {
        let (gone, kept): (Vec<ChildRecord>, Vec<ChildRecord>) = std::mem::take(&mut self.children)
            .into_iter()
            .partition(|c| c.expires_at <= now);
        self.children = kept;
        let mut outcomes = Vec::new();
        let mut ctx = self.io.ctx(now, &mut outcomes);
        for c in gone {
            if let Some(sa) = sa_for_peer(&self.ike_sas, c.peer) {
                send_child_delete(&mut ctx, sa, &c.inbound);
            }
            ctx.log(
                LogLevel::Info,
                Some(&c.conn),
                format!("IPsec SA {} expired", c.inbound),
            );
            ctx.events.push_back(Event::ChildSaDeleted {
                conn: c.conn,
                peer: c.peer,
                inbound: c.inbound,
                outbound: c.outbound,
                reason: DeleteReason::Expired,
            });
        }
    }
}

/// The ISAKMP SA to tell the peer something on: the newest established one with it (an
/// older one it replaced still works, should the newest have been deleted).
fn sa_for_peer(sas: &[IkeSa], peer: Ipv4Addr) -> Option<&IkeSa> {
    let with_peer = || {
        sas.iter()
            .filter(move |s| s.p1.is_established() && *s.p1.remote.ip() == peer)
    };
    with_peer()
        .rfind(|s| !s.p1.superseded)
        .or_else(|| with_peer().next_back())
}

fn remember(ids: &mut Vec<u32>, id: u32) {
    if ids.len() >= REMEMBERED_QUICK_IDS {
        ids.remove(0);
    }
    ids.push(id);
}

/// Tells the peer to delete the SAs it sends to us on (our inbound SPIs).
fn send_child_delete(ctx: &mut Ctx<'_>, sa: &IkeSa, inbound: &SpiSet) {
    if let Some(spi) = inbound.esp {
        informational::send_delete(
            ctx,
            &sa.p1,
            ProtocolId::Esp,
            vec![spi.to_be_bytes().to_vec()],
        );
    }
    if let Some(spi) = inbound.ah {
        informational::send_delete(
            ctx,
            &sa.p1,
            ProtocolId::Ah,
            vec![spi.to_be_bytes().to_vec()],
        );
    }
}

/// CKY-I, CKY-R, the keys, and the last phase 1 CBC block (from which the IVs of
/// Quick Mode and Informational exchanges derive).
#[cfg(test)]
pub(crate) type Phase1Secrets = ([u8; 8], [u8; 8], crate::crypto::Phase1Keys, Vec<u8>);

impl Endpoint {
    /// Wireshark's IKEv1 decryption table for the established ISAKMP SAs: the initiator's
    /// cookie and the message encryption key of each, for an administrator who asked for
    /// a key log (`pluto --ikekeylog`) to read the exchanges in a capture.
    pub fn ike_key_log(&self) -> Vec<([u8; 8], Vec<u8>)> {
        self.ike_sas
            .iter()
            .filter(|sa| sa.p1.is_established())
            .filter_map(|sa| Some((sa.p1.cky_i, sa.p1.keys.as_ref()?.enc_key.clone())))
            .collect()
    }
}

#[cfg(test)]
impl Endpoint {
    /// For tests that open or forge encrypted messages: per established ISAKMP SA.
    pub(crate) fn phase1_secrets(&self) -> Vec<Phase1Secrets> {
        self.ike_sas
            .iter()
            .filter(|sa| sa.p1.is_established())
            .filter_map(|sa| {
                let keys = sa.p1.keys.clone()?;
                Some((sa.p1.cky_i, sa.p1.cky_r, keys, sa.p1.iv.clone()))
            })
            .collect()
    }
}
