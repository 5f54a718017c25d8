//! Rekeying of the ISAKMP SA on virtual time: who starts the new Main Mode and when, that
//! the new SA carries Quick Mode, Informational and DPD afterwards while the old one still
//! answers, and that child SAs never notice.
//!
//! The SAs here live 120 s with a 30 s margin and no fuzz, so the initiator starts the new
//! Main Mode at 90 s and the responder would at 105 s; retransmissions start at 1 s, so
//! that an ISAKMP SA is usable for Quick Mode until 15 s before it expires.

use std::cell::Cell;
use std::rc::Rc;

use super::*;
use crate::crypto::{phase1, phase2};
use crate::message;
use crate::wire::{
    DeleteRepr, ExchangeType, Flags, Header, HeaderRepr, PayloadType, ProtocolId, DOI_IPSEC,
};
use crate::LogLevel;

/// The initiator's address behind the NAT, and the NAT's public one.
const INSIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

fn fast() -> EndpointConfig {
    EndpointConfig {
        retransmit_base: Duration::from_secs(1),
        ..EndpointConfig::default()
    }
}

/// ISAKMP SAs of 120 s, rekeymargin 30 s, no fuzz; then `f`.
fn short(f: impl Fn(&mut Connection)) -> (Connection, Connection) {
    conns(|c| {
        c.ike.ike_lifetime_secs = 120;
        c.ike.rekeymargin_secs = 30;
        c.ike.rekeyfuzz_percent = 0;
        f(c);
    })
}

/// A second connection between the same hosts (a tunnel between subnets), for a Quick
/// Mode that is a new request rather than a rekey.
fn second(a: &Connection, b: &Connection) -> (Connection, Connection) {
    let net = |s: &str| s.parse::<Cidr>().unwrap();
    let (mut a2, mut b2) = (a.clone(), b.clone());
    (a2.name, b2.name) = ("second".into(), "second-b".into());
    (a2.mode, b2.mode) = (Mode::Tunnel, Mode::Tunnel);
    (a2.local_subnet, a2.remote_subnet) = (Some(net("10.1.0.0/24")), Some(net("10.2.0.0/24")));
    (b2.local_subnet, b2.remote_subnet) = (Some(net("10.2.0.0/24")), Some(net("10.1.0.0/24")));
    (a2, b2)
}

/// A and B with `a` and `b`, the first child SA established at time 0.
fn start(p: &mut Pair, a: &Connection, b: &Connection) {
    p.b.add_connection(b.clone());
    p.a.initiate(p.now, a);
    assert!(
        p.established(),
        "A {:?} B {:?}",
        failures(&p.a_events),
        failures(&p.b_events)
    );
    assert_eq!(p.now, p.start);
}

fn secs(p: &Pair) -> u64 {
    (p.now - p.start).as_secs()
}

/// Runs until `at` seconds after the start (the clock ends there).
fn run_to(p: &mut Pair, at: u64) {
    p.run_until(Duration::from_secs(at), |_| false);
    p.now = p.now.max(p.start + Duration::from_secs(at));
}

/// The ISAKMP header of an IKE datagram (after the non-ESP marker on port 4500); None for
/// keepalives.
fn header(t: &Transmit) -> Option<HeaderRepr> {
    let m = match t.from.port() {
        4500 => t.payload.strip_prefix(&[0u8; 4][..])?,
        _ => &t.payload[..],
    };
    HeaderRepr::parse(&Header::new_checked(m).ok()?).ok()
}

/// Every IKE datagram one side sent: when, and its header.
fn sent_by(p: &Pair, from_a: bool) -> Vec<(u64, HeaderRepr, Transmit)> {
    p.sent
        .iter()
        .filter(|(_, a, _)| *a == from_a)
        .filter_map(|(at, _, t)| Some((at.as_secs(), header(t)?, t.clone())))
        .collect()
}

/// The Main Modes one side started: when, and its cookie (retransmissions left out).
fn main_modes(p: &Pair, from_a: bool) -> Vec<(u64, [u8; 8])> {
    let mut out: Vec<(u64, [u8; 8])> = Vec::new();
    for (at, h, _) in sent_by(p, from_a) {
        let first = h.exchange == ExchangeType::IdentityProtection && h.responder_cookie == [0; 8];
        if first && !out.iter().any(|m| m.1 == h.initiator_cookie) {
            out.push((at, h.initiator_cookie));
        }
    }
    out
}

fn times(m: &[(u64, [u8; 8])]) -> Vec<u64> {
    m.iter().map(|m| m.0).collect()
}

/// The Quick Modes one side started: when, and the initiator cookie of the ISAKMP SA
/// they ran on.
fn quick_modes(p: &Pair, from_a: bool) -> Vec<(u64, [u8; 8])> {
    let mut firsts: Vec<(bool, u64, HeaderRepr)> = Vec::new();
    for (at, a, t) in &p.sent {
        let Some(h) = header(t) else { continue };
        if h.exchange == ExchangeType::QuickMode
            && !firsts.iter().any(|f| f.2.message_id == h.message_id)
        {
            firsts.push((*a, at.as_secs(), h));
        }
    }
    firsts
        .into_iter()
        .filter(|f| f.0 == from_a)
        .map(|f| (f.1, f.2.initiator_cookie))
        .collect()
}

/// (initiator, peer) of each Phase1Established.
fn phase1s(events: &[Event]) -> Vec<(bool, SocketAddrV4)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Phase1Established {
                initiator, peer, ..
            } => Some((*initiator, *peer)),
            _ => None,
        })
        .collect()
}

fn phase1_deleted(events: &[Event], why: DeleteReason) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Phase1Deleted { reason, .. } if *reason == why))
        .count()
}

fn child_deletions(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::ChildSaDeleted { .. }))
        .count()
}

fn logged(events: &[Event], level: LogLevel, text: &str) -> bool {
    events.iter().any(|e| {
        matches!(e, Event::Log { level: l, message, .. } if *l == level && message.contains(text))
    })
}

fn position(events: &[Event], pred: impl Fn(&Event) -> bool) -> Vec<usize> {
    (0..events.len()).filter(|&i| pred(&events[i])).collect()
}

/// Neither side deleted or re-made a child SA, and nothing failed.
fn children_untouched(p: &Pair, count: usize) {
    for events in [&p.a_events, &p.b_events] {
        assert_eq!(children(events).len(), count, "{events:?}");
        assert_eq!(child_deletions(events), 0, "{events:?}");
        assert!(failures(events).is_empty(), "{:?}", failures(events));
    }
}

#[test]
fn the_initiator_replaces_the_isakmp_sa_before_it_expires() {
    let (a, b) = short(|_| {});
    let mut p = Pair::with(fast(), fast());
    start(&mut p, &a, &b);
    assert!(p.run_until(Duration::from_secs(300), |p| {
        phase1s(&p.a_events).len() == 2 && phase1s(&p.b_events).len() == 2
    }));
    assert_eq!(secs(&p), 90, "rekeymargin before the 120 s lifetime");
    let (a500, b500) = (SocketAddrV4::new(A, 500), SocketAddrV4::new(B, 500));
    assert_eq!(phase1s(&p.a_events), [(true, b500), (true, b500)]);
    assert_eq!(phase1s(&p.b_events), [(false, a500), (false, a500)]);
    assert!(logged(
        &p.a_events,
        LogLevel::Info,
        "rekeying the ISAKMP SA with 198.51.100.2:500: it nears its lifetime"
    ));
    for events in [&p.a_events, &p.b_events] {
        assert!(logged(events, LogLevel::Info, "replaces #"), "{events:?}");
        assert_eq!(phase1_deleted(events, DeleteReason::Expired), 0);
    }
    // The old SA lives on until 120 s; the new one is replaced in its turn at 90 + 90 s.
    run_to(&mut p, 200);
    for events in [&p.a_events, &p.b_events] {
        assert_eq!(phase1_deleted(events, DeleteReason::Expired), 1);
    }
    assert_eq!(times(&main_modes(&p, true)), [0, 90, 180]);
    assert!(
        main_modes(&p, false).is_empty(),
        "the responder left it to the initiator"
    );
    assert_eq!(phase1s(&p.a_events).len(), 3);
    // Nothing of this concerns the child SA: no Quick Mode, no delete.
    assert_eq!(quick_modes(&p, true).len(), 1);
    assert!(quick_modes(&p, false).is_empty());
    children_untouched(&p, 1);
}

#[test]
fn quick_modes_after_the_old_sa_expired_run_on_the_new_one() {
    // The child SA (200 s) is rekeyed by A at 170 s.
    let (a, b) = short(|c| c.ike.lifetime_secs = 200);
    let (a2, b2) = second(&a, &b);
    let mut p = Pair::with(fast(), fast());
    p.b.add_connection(b2);
    start(&mut p, &a, &b);
    run_to(&mut p, 130);
    assert_eq!(phase1_deleted(&p.a_events, DeleteReason::Expired), 1);
    let mm = main_modes(&p, true);
    assert_eq!(times(&mm), [0, 90]);
    // A new request: Quick Mode on the ISAKMP SA of 90 s, no Main Mode.
    p.a.initiate(p.now, &a2);
    assert!(p.run_until(Duration::from_secs(140), |p| {
        children(&p.a_events).len() == 2 && children(&p.b_events).len() == 2
    }));
    assert_eq!(children(&p.a_events)[1].conn, "second");
    assert_eq!(quick_modes(&p, true)[1], (130, mm[1].1));
    // The child SA's rekey at 170 s, the same way.
    assert!(p.run_until(Duration::from_secs(175), |p| {
        children(&p.a_events).len() == 3 && children(&p.b_events).len() == 3
    }));
    assert_eq!(secs(&p), 170);
    assert_eq!(quick_modes(&p, true)[2], (170, mm[1].1));
    assert_eq!(times(&main_modes(&p, true)), [0, 90]);
    let (first, rekeyed) = (children(&p.a_events)[0], children(&p.a_events)[2]);
    assert_eq!(rekeyed.replaces, Some(first.inbound_spis()));
    assert_keys_match(rekeyed, children(&p.b_events)[2]);
    for events in [&p.a_events, &p.b_events] {
        assert!(failures(events).is_empty(), "{:?}", failures(events));
        assert_eq!(child_deletions(events), 0);
    }
}

fn with_dpd(delay: u64, timeout: u64) -> EndpointConfig {
    EndpointConfig {
        dpd_delay: Some(Duration::from_secs(delay)),
        dpd_timeout: Duration::from_secs(timeout),
        ..fast()
    }
}

#[test]
fn dpd_goes_on_over_the_new_isakmp_sa_and_finds_a_live_peer_alive() {
    let (a, b) = short(|_| {});
    let mut p = Pair::with(with_dpd(10, 30), with_dpd(10, 30));
    start(&mut p, &a, &b);
    let first = main_modes(&p, true)[0].1;
    run_to(&mut p, 600);
    for events in [&p.a_events, &p.b_events] {
        assert_eq!(phase1_deleted(events, DeleteReason::PeerDead), 0);
        // SAs made at 0, 90, ..., 450 s expired; the one of 540 s is current.
        assert_eq!(phase1_deleted(events, DeleteReason::Expired), 6);
    }
    // Once the first SA was replaced (at 90 s), probes and answers went on the newer ones.
    for from_a in [true, false] {
        let late: Vec<[u8; 8]> = sent_by(&p, from_a)
            .into_iter()
            .filter(|(at, h, _)| *at > 90 && h.exchange == ExchangeType::Informational)
            .map(|(_, h, _)| h.initiator_cookie)
            .collect();
        assert!(late.len() > 10, "{} DPD messages", late.len());
        assert!(!late.contains(&first));
    }
    assert!(logged(&p.a_events, LogLevel::Debug, "R-U-THERE-ACK"));
    assert_eq!(phase1s(&p.a_events).len(), 7);
    children_untouched(&p, 1);
}

#[test]
fn dpd_declares_a_silent_peer_dead_after_the_old_isakmp_sa_expired() {
    let (a, b) = short(|_| {});
    let mut p = Pair::with(with_dpd(10, 30), with_dpd(10, 30));
    start(&mut p, &a, &b);
    let first_child = children(&p.a_events)[0].inbound_spis();
    run_to(&mut p, 125);
    assert_eq!(phase1_deleted(&p.a_events, DeleteReason::Expired), 1);
    let cut = p.wire.len();
    p.fate = Box::new(move |n, _| if n >= cut { Fate::Drop } else { Fate::Deliver });
    assert!(p.run_until(Duration::from_secs(1000), |p| {
        phase1_deleted(&p.a_events, DeleteReason::PeerDead) > 0
    }));
    // Silent from at most 125 s: a probe within dpd_delay, dead dpd_timeout later, before
    // the new SA's own rekey time (180 s).
    assert!((155..=165).contains(&secs(&p)), "dead at {}", secs(&p));
    assert_eq!(phase1_deleted(&p.a_events, DeleteReason::PeerDead), 1);
    let dead: Vec<SpiSet> = p
        .a_events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaDeleted {
                inbound,
                reason: DeleteReason::PeerDead,
                ..
            } => Some(*inbound),
            _ => None,
        })
        .collect();
    assert_eq!(dead, [first_child]);
    // Nothing restarts: no Main Mode from A after it gave up, no timers left.
    let dead_at = secs(&p);
    run_to(&mut p, 2000);
    assert!(main_modes(&p, true).iter().all(|m| m.0 <= dead_at));
    assert_eq!(p.a.poll_timeout(), None);
}

#[test]
fn the_responder_replaces_it_at_half_the_margin_when_the_initiator_does_not() {
    // A would go at 110 s (margin 10 s), B goes at 90 s (half of 60 s).
    let (mut a, mut b) = short(|_| {});
    a.ike.rekeymargin_secs = 10;
    b.ike.rekeymargin_secs = 60;
    let (a2, b2) = second(&a, &b);
    let mut p = Pair::with(fast(), fast());
    p.b.add_connection(b2);
    start(&mut p, &a, &b);
    run_to(&mut p, 115);
    let b_mm = main_modes(&p, false);
    assert_eq!(times(&b_mm), [90]);
    assert_eq!(
        times(&main_modes(&p, true)),
        [0],
        "A's SA was replaced first"
    );
    assert_eq!(phase1s(&p.b_events)[1], (true, SocketAddrV4::new(A, 500)));
    assert_eq!(phase1s(&p.a_events)[1], (false, SocketAddrV4::new(B, 500)));
    assert!(logged(
        &p.b_events,
        LogLevel::Info,
        "rekeying the ISAKMP SA"
    ));
    // A's new Quick Mode goes on the SA B started.
    p.a.initiate(p.now, &a2);
    assert!(p.run_until(Duration::from_secs(120), |p| {
        children(&p.a_events).len() == 2
    }));
    assert_eq!(quick_modes(&p, true)[1].1, b_mm[0].1);
    for events in [&p.a_events, &p.b_events] {
        assert!(failures(events).is_empty());
        assert_eq!(child_deletions(events), 0);
    }
}

#[test]
fn no_rekey_without_child_sas() {
    // B refuses the traffic A asks for: the ISAKMP SA stands, with no child SA.
    let net = |s: &str| s.parse::<Cidr>().unwrap();
    let (mut a, mut b) = short(|c| {
        c.mode = Mode::Tunnel;
        c.ike.keyingtries = 1;
    });
    a.remote_subnet = Some(net("10.9.0.0/16"));
    b.local_subnet = Some(net("10.2.0.0/24"));
    let mut p = Pair::with(fast(), fast());
    p.b.add_connection(b);
    p.a.initiate(p.now, &a);
    run_to(&mut p, 400);
    assert_eq!(failures(&p.a_events).len(), 1);
    assert!(children(&p.a_events).is_empty());
    assert_eq!(times(&main_modes(&p, true)), [0]);
    assert!(main_modes(&p, false).is_empty());
    for events in [&p.a_events, &p.b_events] {
        assert!(logged(events, LogLevel::Info, "not rekeying the ISAKMP SA"));
        assert_eq!(phase1_deleted(events, DeleteReason::Expired), 1);
    }
    assert_eq!((p.a.poll_timeout(), p.b.poll_timeout()), (None, None));
}

#[test]
fn a_road_warrior_responder_never_starts_one() {
    // B's half margin (50 s) would come first; as a road-warrior gateway it only answers.
    let (mut a, mut b) = short(|_| {});
    a.ike.rekeymargin_secs = 10;
    b.ike.rekeymargin_secs = 100;
    b.remote = Ipv4Addr::UNSPECIFIED;
    let mut p = Pair::with(fast(), fast());
    start(&mut p, &a, &b);
    run_to(&mut p, 300);
    assert!(main_modes(&p, false).is_empty());
    assert_eq!(times(&main_modes(&p, true)), [0, 110, 220]);
    assert!(phase1s(&p.b_events).iter().all(|(initiator, _)| !initiator));
    assert_eq!(phase1s(&p.b_events).len(), 3);
    children_untouched(&p, 1);
}

/// An authentic Informational Delete of the ISAKMP SA named by `secrets`, as its peer
/// sends it.
fn delete_phase1(secrets: &crate::endpoint::Phase1Secrets, mid: u32) -> Vec<u8> {
    let (cky_i, cky_r, keys, iv) = secrets;
    let d = DeleteRepr {
        doi: DOI_IPSEC,
        protocol: ProtocolId::Isakmp,
        spi_size: 16,
        spis: vec![[*cky_i, *cky_r].concat()],
    }
    .to_bytes();
    let iv = phase1::exchange_iv(keys.hash, keys.cipher, iv, mid);
    let chain = message::hashed_chain(&[(PayloadType::Delete, &d)], |rest| {
        phase2::informational_hash(keys, mid, rest)
    });
    let header = HeaderRepr {
        initiator_cookie: *cky_i,
        responder_cookie: *cky_r,
        next_payload: PayloadType::None,
        exchange: ExchangeType::Informational,
        flags: Flags::default(),
        message_id: mid,
        length: 0,
    };
    message::encrypted(keys, &iv, &header, chain).0
}

/// charon and libreswan re-authenticate with a new Main Mode of their own, long before
/// expiry, then delete the old ISAKMP SA: the new one is used from then on.
#[test]
fn a_peer_that_starts_a_new_main_mode_gets_it_used() {
    // B's margin is longer than the lifetime: it starts a new Main Mode at half of it.
    let (a, mut b) = short(|_| {});
    b.ike.rekeymargin_secs = 1000;
    let (a2, b2) = second(&a, &b);
    let mut p = Pair::with(with_dpd(10, 30), with_dpd(10, 30));
    p.b.add_connection(b2);
    start(&mut p, &a, &b);
    let old = p.a.phase1_secrets()[0].clone();
    run_to(&mut p, 65);
    let b_mm = main_modes(&p, false);
    assert_eq!(times(&b_mm), [60]);
    assert!(logged(&p.a_events, LogLevel::Info, "replaces #"));
    // A's next Quick Mode goes on the SA B started, though the old one has 55 s to live.
    p.a.initiate(p.now, &a2);
    run_to(&mut p, 70);
    assert_eq!(children(&p.a_events).len(), 2);
    assert_eq!(quick_modes(&p, true)[1], (65, b_mm[0].1));
    // The old SA still answers: the peer deletes it over itself.
    assert_eq!(p.a.phase1_secrets().len(), 2);
    let (from, to) = (SocketAddrV4::new(B, 500), SocketAddrV4::new(A, 500));
    p.a.handle_datagram(p.now, from, to, &delete_phase1(&old, 0x5151));
    p.drain_events();
    assert_eq!(phase1_deleted(&p.a_events, DeleteReason::PeerDeleted), 1);
    assert_eq!(p.a.phase1_secrets().len(), 1);
    assert_ne!(p.a.phase1_secrets()[0].0, old.0);
    // DPD runs on the new SA; A's own rekey of the old one (at 90 s) does not happen.
    run_to(&mut p, 100);
    assert_eq!(times(&main_modes(&p, true)), [0]);
    let probes: Vec<[u8; 8]> = sent_by(&p, true)
        .into_iter()
        .filter(|(at, h, _)| *at > 60 && h.exchange == ExchangeType::Informational)
        .map(|(_, h, _)| h.initiator_cookie)
        .collect();
    assert!(!probes.is_empty() && probes.iter().all(|c| *c == b_mm[0].1));
    for events in [&p.a_events, &p.b_events] {
        assert!(failures(events).is_empty(), "{:?}", failures(events));
        assert_eq!(child_deletions(events), 0);
        assert_eq!(phase1_deleted(events, DeleteReason::PeerDead), 0);
    }
}

/// Each message of the new Main Mode lost once: it is retransmitted, and meanwhile a Quick
/// Mode runs on the old SA, even where the peer has already replaced it.
#[test]
fn every_lost_message_of_the_rekey_is_survived() {
    for k in 0..6 {
        let (a, b) = short(|_| {});
        let (a2, b2) = second(&a, &b);
        let mut p = Pair::with(fast(), fast());
        p.b.add_connection(b2);
        start(&mut p, &a, &b);
        let first = main_modes(&p, true)[0].1;
        assert!(p.run_until(Duration::from_secs(100), |p| logged(
            &p.a_events,
            LogLevel::Info,
            "rekeying the ISAKMP SA"
        )));
        let (seen, dropped) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(false)));
        let (s, d) = (seen.clone(), dropped.clone());
        p.fate = Box::new(move |_, t| {
            if header(t).is_some_and(|h| h.exchange == ExchangeType::IdentityProtection) {
                s.set(s.get() + 1);
                if s.get() == k + 1 {
                    d.set(true);
                    return Fate::Drop;
                }
            }
            Fate::Deliver
        });
        assert!(p.run_until(Duration::from_secs(100), |_| dropped.get()));
        p.a.initiate(p.now, &a2);
        assert!(
            p.run_until(Duration::from_secs(110), |p| {
                children(&p.a_events).len() == 2
                    && children(&p.b_events).len() == 2
                    && phase1s(&p.a_events).len() == 2
                    && phase1s(&p.b_events).len() == 2
            }),
            "message {} lost: A {:?} B {:?}",
            k + 1,
            p.a_events,
            p.b_events
        );
        // The Quick Mode ran on the old SA, before the new one was up at A.
        assert_eq!(quick_modes(&p, true)[1].1, first, "message {} lost", k + 1);
        let child_at = position(&p.a_events, |e| matches!(e, Event::ChildSaEstablished(_)));
        let phase1_at = position(&p.a_events, |e| {
            matches!(e, Event::Phase1Established { .. })
        });
        assert!(child_at[1] < phase1_at[1], "message {} lost", k + 1);
        assert_keys_match(children(&p.a_events)[1], children(&p.b_events)[1]);
        assert_eq!(times(&main_modes(&p, true)), [0, 90]);
        // The old SA expires at 120 s, and that is all.
        run_to(&mut p, 170);
        children_untouched(&p, 2);
        assert_eq!(times(&main_modes(&p, true)), [0, 90]);
        assert_eq!(phase1_deleted(&p.a_events, DeleteReason::Expired), 1);
    }
}

/// A rekey that gets no answer at all is retried while keyingtries allows; the old SA
/// serves meanwhile and the child SA is untouched.
#[test]
fn a_failed_rekey_is_retried_and_the_old_sa_serves_meanwhile() {
    let (a, b) = short(|c| c.ike.keyingtries = 2);
    let (a2, b2) = second(&a, &b);
    let mut p = Pair::with(fast(), fast());
    p.b.add_connection(b2);
    start(&mut p, &a, &b);
    let first = main_modes(&p, true)[0].1;
    p.fate = Box::new(|_, t| {
        if header(t).is_some_and(|h| h.exchange == ExchangeType::IdentityProtection) {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    run_to(&mut p, 100);
    p.a.initiate(p.now, &a2);
    run_to(&mut p, 119);
    assert_eq!(children(&p.a_events).len(), 2);
    assert_eq!(quick_modes(&p, true)[1], (100, first));
    // 1 + 2 + 4 + 8 s of retransmissions: the first attempt fails at 105 s, the second
    // starts a second later.
    let retries: Vec<bool> = p
        .a_events
        .iter()
        .filter_map(|e| match e {
            Event::Failed {
                exchange: None,
                retrying,
                reason,
                ..
            } if reason.contains("rekeying the ISAKMP SA") => Some(*retrying),
            _ => None,
        })
        .collect();
    assert_eq!(retries, [true]);
    assert_eq!(times(&main_modes(&p, true)), [0, 90, 106]);
    run_to(&mut p, 200);
    assert_eq!(phase1_deleted(&p.a_events, DeleteReason::Expired), 1);
    for events in [&p.a_events, &p.b_events] {
        assert_eq!(child_deletions(events), 0);
        assert_eq!(children(events).len(), 2);
    }
    // The second attempt ran into the old SA's expiry: no third.
    assert_eq!(times(&main_modes(&p, true)), [0, 90, 106]);
}

/// A NAT in front of A: 10.0.0.1:500 is 192.0.2.100:31000 outside, :4500 is :31001.
fn nat(from_a: bool, mut t: Transmit) -> Option<Transmit> {
    const MAP: [(u16, u16); 2] = [(500, 31000), (4500, 31001)];
    if from_a {
        let &(_, outside) = MAP.iter().find(|m| m.0 == t.from.port())?;
        t.from = SocketAddrV4::new(PUBLIC, outside);
    } else if *t.to.ip() == PUBLIC {
        let &(inside, _) = MAP.iter().find(|m| m.1 == t.to.port())?;
        t.to = SocketAddrV4::new(INSIDE, inside);
    }
    Some(t)
}

fn behind_nat(f: impl Fn(&mut Connection)) -> (Connection, Connection) {
    let (mut a, mut b) = short(f);
    a.local = INSIDE;
    b.remote = PUBLIC;
    (a, b)
}

/// The ports A's datagrams of the Main Mode with this cookie left from.
fn main_mode_ports(p: &Pair, from_a: bool, cookie: [u8; 8]) -> Vec<(u16, u16)> {
    sent_by(p, from_a)
        .into_iter()
        .filter(|(_, h, _)| {
            h.exchange == ExchangeType::IdentityProtection && h.initiator_cookie == cookie
        })
        .map(|(_, _, t)| (t.from.port(), t.to.port()))
        .collect()
}

#[test]
fn behind_a_nat_the_new_isakmp_sa_floats_again() {
    let (a, b) = behind_nat(|c| c.ike.lifetime_secs = 200);
    let mut p = Pair::with(fast(), fast());
    p.path = Box::new(nat);
    start(&mut p, &a, &b);
    let (i1, r1) = (
        children(&p.a_events)[0].clone(),
        children(&p.b_events)[0].clone(),
    );
    assert!(i1.udp_encap.is_some());
    run_to(&mut p, 100);
    let mm = main_modes(&p, true);
    assert_eq!(times(&mm), [0, 90]);
    // Messages 1 and 3 on port 500 with NAT-D, 5 on 4500 again; B follows.
    assert_eq!(
        main_mode_ports(&p, true, mm[1].1),
        [(500, 500), (500, 500), (4500, 4500)]
    );
    assert_eq!(
        phase1s(&p.b_events)[1],
        (false, SocketAddrV4::new(PUBLIC, 31001))
    );
    // The child SA's rekey at 170 s goes over the new SA, encapsulated as before.
    assert!(p.run_until(Duration::from_secs(175), |p| {
        children(&p.a_events).len() == 2 && children(&p.b_events).len() == 2
    }));
    assert_eq!(quick_modes(&p, true)[1], (170, mm[1].1));
    let (i2, r2) = (children(&p.a_events)[1], children(&p.b_events)[1]);
    assert_eq!((i2.udp_encap, r2.udp_encap), (i1.udp_encap, r1.udp_encap));
    assert_eq!(
        (&i2.keys.outbound, &i2.keys.inbound),
        (&r2.keys.inbound, &r2.keys.outbound)
    );
    assert_eq!(times(&main_modes(&p, true)), [0, 90]);
    for events in [&p.a_events, &p.b_events] {
        assert!(failures(events).is_empty());
        assert_eq!(child_deletions(events), 0);
    }
}

/// The gateway replaces the SA towards a peer behind a NAT where the peer's NAT maps the
/// old SA's port: all of the new Main Mode runs on the NAT-T port.
#[test]
fn the_gateway_rekeys_towards_a_peer_behind_a_nat_over_the_floated_ports() {
    let (mut a, mut b) = behind_nat(|c| c.ike.lifetime_secs = 200);
    a.ike.rekeymargin_secs = 10;
    b.ike.rekeymargin_secs = 60;
    let mut p = Pair::with(fast(), fast());
    p.path = Box::new(nat);
    start(&mut p, &a, &b);
    let (i1, r1) = (
        children(&p.a_events)[0].clone(),
        children(&p.b_events)[0].clone(),
    );
    run_to(&mut p, 100);
    let b_mm = main_modes(&p, false);
    assert_eq!(times(&b_mm), [90]);
    assert_eq!(
        main_mode_ports(&p, false, b_mm[0].1),
        [(4500, 31001), (4500, 31001), (4500, 31001)]
    );
    assert_eq!(
        phase1s(&p.b_events)[1],
        (true, SocketAddrV4::new(PUBLIC, 31001))
    );
    assert_eq!(phase1s(&p.a_events)[1], (false, SocketAddrV4::new(B, 4500)));
    // B rekeys the child SA (at half its margin: 170 s) on the newest SA it made.
    assert!(p.run_until(Duration::from_secs(175), |p| {
        children(&p.a_events).len() == 2 && children(&p.b_events).len() == 2
    }));
    let b_mm = main_modes(&p, false);
    let newest = b_mm.iter().rfind(|m| m.0 <= 170).unwrap().1;
    assert_eq!(quick_modes(&p, false)[0], (170, newest));
    let (i2, r2) = (children(&p.a_events)[1], children(&p.b_events)[1]);
    assert_eq!((i2.udp_encap, r2.udp_encap), (i1.udp_encap, r1.udp_encap));
    assert_eq!(
        (&i2.keys.outbound, &i2.keys.inbound),
        (&r2.keys.inbound, &r2.keys.outbound)
    );
    assert_eq!(times(&main_modes(&p, true)), [0]);
    for events in [&p.a_events, &p.b_events] {
        assert!(failures(events).is_empty());
        assert_eq!(child_deletions(events), 0);
    }
}
