//! Initiator and responder endpoints driven against each other on virtual time: no
//! sockets, no sleeps. A tiny network in between can drop, repeat or corrupt datagrams.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use ipsec_plugin::config::{Cidr, DhGroup, IkeCipher, IkeHash, IkeProposal, Mode};
use ipsec_plugin::crypto::{AeadAlg, CipherAlg, EspTransform, IntegAlg};

use crate::{ChildSa, Connection, DeleteReason, Endpoint, EndpointConfig, Event, FailureKind, SpiSet, Transmit};

const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Deliver,
    Drop,
    Duplicate,
}

/// Decides the fate of the n-th datagram (0-based, counting every transmission).
type FateFn = Box<dyn FnMut(usize, &Transmit) -> Fate>;
/// Called before a datagram is delivered, with the receiving endpoint (to inject).
type InjectFn = Box<dyn FnMut(usize, &Transmit, &mut Endpoint, Instant)>;
/// What the path between the endpoints does to a datagram (say, a NAT rewriting its
/// addresses) before anything else sees it; None loses it. `true` = sent by `a`.
type PathFn = Box<dyn FnMut(bool, Transmit) -> Option<Transmit>>;

/// Two endpoints and the wire between them.
struct Pair {
    a: Endpoint,
    b: Endpoint,
    now: Instant,
    start: Instant,
    /// Every datagram put on the wire so far, in order, with the side that sent it.
    wire: Vec<(bool, Vec<u8>)>,
    /// Every datagram as its endpoint sent it (before the path), with the virtual time.
    sent: Vec<(Duration, bool, Transmit)>,
    a_events: Vec<Event>,
    b_events: Vec<Event>,
    fate: FateFn,
    inject: InjectFn,
    path: PathFn,
}

impl Pair {
    fn new() -> Pair {
        Pair::with(EndpointConfig::default(), EndpointConfig::default())
    }

    /// Endpoints with these settings (their seeds are set here).
    fn with(a: EndpointConfig, b: EndpointConfig) -> Pair {
        let now = Instant::now();
        Pair {
            a: Endpoint::new(EndpointConfig {
                rng_seed: Some(1),
                ..a
            }),
            b: Endpoint::new(EndpointConfig {
                rng_seed: Some(2),
                ..b
            }),
            now,
            start: now,
            wire: Vec::new(),
            sent: Vec::new(),
            a_events: Vec::new(),
            b_events: Vec::new(),
            fate: Box::new(|_, _| Fate::Deliver),
            inject: Box::new(|_, _, _, _| {}),
            path: Box::new(|_, t| Some(t)),
        }
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.a.poll_event() {
            self.a_events.push(e);
        }
        while let Some(e) = self.b.poll_event() {
            self.b_events.push(e);
        }
    }

    /// Moves datagrams and advances time until `done` holds or `limit` of virtual time
    /// has passed. Returns whether `done` held.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Pair) -> bool) -> bool {
        loop {
            self.drain_events();
            if done(self) {
                return true;
            }
            let mut moved = false;
            for from_a in [true, false] {
                let t = if from_a {
                    self.a.poll_transmit()
                } else {
                    self.b.poll_transmit()
                };
                let Some(t) = t else { continue };
                moved = true;
                self.sent.push((self.now - self.start, from_a, t.clone()));
                let Some(t) = (self.path)(from_a, t) else {
                    continue;
                };
                let n = self.wire.len();
                self.wire.push((from_a, t.payload.clone()));
                let fate = (self.fate)(n, &t);
                let copies = match fate {
                    Fate::Deliver => 1,
                    Fate::Drop => 0,
                    Fate::Duplicate => 2,
                };
                let to = if from_a { &mut self.b } else { &mut self.a };
                (self.inject)(n, &t, to, self.now);
                for _ in 0..copies {
                    to.handle_datagram(self.now, t.from, t.to, &t.payload);
                }
            }
            if moved {
                continue;
            }
            let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= self.start + limit => {
                    self.now = self.now.max(t);
                    self.a.handle_timeout(self.now);
                    self.b.handle_timeout(self.now);
                }
                _ => {
                    self.drain_events();
                    return done(self);
                }
            }
        }
    }

    fn established(&mut self) -> bool {
        self.run_until(Duration::from_secs(600), |p| {
            children(&p.a_events).len() == 1 && children(&p.b_events).len() == 1
        })
    }
}

fn children(events: &[Event]) -> Vec<&ChildSa> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaEstablished(c) => Some(&**c),
            _ => None,
        })
        .collect()
}

/// The kinds of the failures reported, in order.
fn failure_kinds(events: &[Event]) -> Vec<FailureKind> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Failed { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect()
}

fn failures(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Failed { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect()
}

/// Connections for both ends, the same apart from direction.
fn conns(f: impl Fn(&mut Connection)) -> (Connection, Connection) {
    let mut a = Connection::new("a-to-b", A, B, b"pre-shared secret");
    let mut b = Connection::new("b-from-a", B, A, b"pre-shared secret");
    f(&mut a);
    f(&mut b);
    (a, b)
}

/// Initiator's outbound keys are the responder's inbound ones and vice versa; the keys
/// have the lengths the algorithms need and SPIs come from 0x1000 up.
fn assert_keys_match(i: &ChildSa, r: &ChildSa) {
    assert_eq!(
        i.keys.outbound, r.keys.inbound,
        "initiator outbound = responder inbound"
    );
    assert_eq!(
        i.keys.inbound, r.keys.outbound,
        "initiator inbound = responder outbound"
    );
    assert_ne!(i.keys.inbound, i.keys.outbound);
    assert_eq!(
        (i.esp, i.ah, i.ipcomp, i.mode, i.pfs),
        (r.esp, r.ah, r.ipcomp, r.mode, r.pfs)
    );
    assert_eq!(
        (i.local_selector, i.remote_selector),
        (r.remote_selector, r.local_selector)
    );
    for dir in [&i.keys.inbound, &i.keys.outbound] {
        if let Some(esp) = &dir.esp {
            let t = i.esp.unwrap();
            assert_eq!(
                (esp.enc_key.len(), esp.auth_key.len()),
                (t.enc_key_len(), t.auth_key_len())
            );
            assert!(esp.spi >= 0x1000);
        }
        if let Some(ah) = &dir.ah {
            assert_eq!(ah.key.len(), i.ah.unwrap().key_len());
            assert!(ah.spi >= 0x1000);
        }
        assert_eq!(dir.ipcomp_cpi.is_some(), i.ipcomp);
    }
}

/// Runs one full negotiation A → B and returns both child SAs.
fn negotiate(a: Connection, b: Connection) -> (Pair, ChildSa, ChildSa) {
    let mut p = Pair::new();
    p.b.add_connection(b);
    p.a.initiate(p.now, &a);
    assert!(
        p.established(),
        "not established: A {:?}\nB {:?}",
        failures(&p.a_events),
        failures(&p.b_events)
    );
    let (i, r) = (
        children(&p.a_events)[0].clone(),
        children(&p.b_events)[0].clone(),
    );
    assert_keys_match(&i, &r);
    (p, i, r)
}

#[test]
fn every_phase1_suite() {
    for cipher in IkeCipher::ALL {
        for hash in IkeHash::ALL {
            for group in DhGroup::ALL {
                let suite = IkeProposal {
                    cipher,
                    hash,
                    group,
                };
                let (a, b) = conns(|c| {
                    c.ike.proposals = vec![suite];
                    c.ike.pfs = false;
                });
                let (p, i, _) = negotiate(a, b);
                for events in [&p.a_events, &p.b_events] {
                    assert!(events.iter().any(
                        |e| matches!(e, Event::Phase1Established { suite: s, .. } if *s == suite)
                    ));
                }
                assert_eq!(i.esp, EspTransform::from_name("aes128-sha1"));
            }
        }
    }
}

fn all_esp() -> Vec<EspTransform> {
    let mut v: Vec<EspTransform> = AeadAlg::ALL.map(EspTransform::Aead).to_vec();
    for cipher in CipherAlg::ALL {
        for integ in [
            None,
            Some(IntegAlg::HmacMd5_96),
            Some(IntegAlg::HmacSha1_96),
            Some(IntegAlg::HmacSha256_128),
        ] {
            if cipher != CipherAlg::Null || integ.is_some() {
                v.push(EspTransform::Cipher { cipher, integ });
            }
        }
    }
    v
}

#[test]
fn every_phase2_suite_with_and_without_pfs() {
    let mut cases: Vec<(Option<EspTransform>, Option<IntegAlg>, bool)> = Vec::new();
    for esp in all_esp() {
        cases.push((Some(esp), None, false));
    }
    for ah in IntegAlg::ALL {
        cases.push((None, Some(ah), false));
        cases.push((EspTransform::from_name("aes256-sha256"), Some(ah), false));
        cases.push((EspTransform::from_name("3des-md5"), Some(ah), true));
    }
    cases.push((Some(EspTransform::Aead(AeadAlg::AesGcm16_256)), None, true));
    cases.push((EspTransform::from_name("aes128-sha1"), None, true));
    for (esp, ah, ipcomp) in cases {
        for pfs in [false, true] {
            let (a, b) = conns(|c| {
                // The cheapest group keeps the matrix fast; groups are covered above.
                c.ike.proposals = vec![IkeProposal {
                    cipher: IkeCipher::Aes128,
                    hash: IkeHash::Sha1,
                    group: DhGroup::Modp1024,
                }];
                (c.esp, c.ah, c.ipcomp, c.ike.pfs) = (esp, ah, ipcomp, pfs);
            });
            let (_, i, r) = negotiate(a, b);
            assert_eq!(
                (i.esp, i.ah, i.ipcomp, i.pfs),
                (esp, ah, ipcomp, pfs),
                "{esp:?} {ah:?} {ipcomp} {pfs}"
            );
            if let (Some(EspTransform::Aead(aead)), Some(k)) = (esp, &i.keys.outbound.esp) {
                // AES key plus the 4-byte salt, both from KEYMAT (RFC 4106 §8.1).
                assert_eq!(k.enc_key.len(), aead.key_len());
                assert!(k.auth_key.is_empty());
            }
            assert_eq!(r.lifetime, Duration::from_secs(8 * 3600));
        }
    }
}

#[test]
fn tunnel_between_subnets_carries_the_ids() {
    let net = |s: &str| s.parse::<Cidr>().unwrap();
    let mut a = Connection::new("gw-a", A, B, b"k3y");
    let mut b = Connection::new("gw-b", B, A, b"k3y");
    a.mode = Mode::Tunnel;
    b.mode = Mode::Tunnel;
    (a.local_subnet, a.remote_subnet) = (Some(net("10.1.0.0/16")), Some(net("10.2.0.0/24")));
    (b.local_subnet, b.remote_subnet) = (Some(net("10.2.0.0/24")), Some(net("10.1.0.0/16")));
    (a.protocol, b.protocol) = (Some(6), Some(6));
    (a.remote_port, b.local_port) = (Some(80), Some(80));
    let (_, i, r) = negotiate(a, b);
    assert_eq!(
        (i.local_selector, i.remote_selector),
        (net("10.1.0.0/16"), net("10.2.0.0/24"))
    );
    assert_eq!((i.protocol, i.remote_port, r.local_port), (6, 80, 80));
    assert_eq!(i.mode, Mode::Tunnel);
}

#[test]
fn responder_refuses_traffic_it_does_not_protect() {
    let net = |s: &str| s.parse::<Cidr>().unwrap();
    let (mut a, mut b) = conns(|c| c.mode = Mode::Tunnel);
    a.remote_subnet = Some(net("10.9.0.0/16"));
    b.local_subnet = Some(net("10.2.0.0/24"));
    a.ike.keyingtries = 1;
    let mut p = Pair::new();
    p.b.add_connection(b);
    p.a.initiate(p.now, &a);
    p.run_until(Duration::from_secs(600), |p| {
        !failures(&p.a_events).is_empty()
    });
    assert!(
        failures(&p.b_events)
            .iter()
            .any(|f| f.contains("is not ours")),
        "{:?}",
        p.b_events
    );
    assert!(
        failures(&p.a_events)
            .iter()
            .any(|f| f.contains("InvalidIdInformation")),
        "{:?}",
        failures(&p.a_events)
    );
    assert!(children(&p.a_events).is_empty() && children(&p.b_events).is_empty());
}

#[test]
fn wrong_psk_fails_clearly_on_both_sides() {
    let (mut a, mut b) = conns(|c| c.ike.keyingtries = 1);
    a.psk = b"one secret".to_vec();
    b.psk = b"another secret".to_vec();
    let mut p = Pair::new();
    p.b.add_connection(b);
    let id = p.a.initiate(p.now, &a);
    p.run_until(Duration::from_secs(1000), |p| {
        !failures(&p.a_events).is_empty()
    });
    let (fa, fb) = (failures(&p.a_events), failures(&p.b_events));
    assert!(
        fb.len() == 1 && fb[0].contains("wrong pre-shared key"),
        "responder: {fb:?}"
    );
    assert!(
        fa.len() == 1 && fa[0].contains("wrong pre-shared key"),
        "initiator: {fa:?}"
    );
    assert!(p.a_events.iter().any(
        |e| matches!(e, Event::Failed { exchange: Some(x), retrying: false, .. } if *x == id)
    ));
    // What the plugin link reports as EACCES, on both sides.
    assert_eq!(failure_kinds(&p.a_events), [FailureKind::Authentication]);
    assert_eq!(failure_kinds(&p.b_events), [FailureKind::Authentication]);
    assert!(children(&p.a_events).is_empty() && children(&p.b_events).is_empty());
    assert!(!p
        .a_events
        .iter()
        .any(|e| matches!(e, Event::Phase1Established { .. })));
}

#[test]
fn keyingtries_retries_then_gives_up() {
    let (mut a, b) = conns(|c| c.ike.keyingtries = 3);
    a.psk = b"wrong".to_vec();
    let mut p = Pair::new();
    p.b.add_connection(b);
    p.a.initiate(p.now, &a);
    p.run_until(Duration::from_secs(3000), |p| {
        p.a_events.iter().any(|e| {
            matches!(
                e,
                Event::Failed {
                    retrying: false,
                    ..
                }
            )
        })
    });
    let retries: Vec<bool> = p
        .a_events
        .iter()
        .filter_map(|e| {
            if let Event::Failed { retrying, .. } = e {
                Some(*retrying)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(retries, [true, true, false]);
}

#[test]
fn mismatched_proposals_fail_on_both_sides() {
    let (mut a, b) = conns(|c| c.ike.keyingtries = 1);
    a.ike.proposals = vec![IkeProposal {
        cipher: IkeCipher::Aes256,
        hash: IkeHash::Md5,
        group: DhGroup::Modp1536,
    }];
    let mut p = Pair::new();
    p.b.add_connection(b);
    p.a.initiate(p.now, &a);
    p.run_until(Duration::from_secs(1000), |p| {
        !failures(&p.a_events).is_empty()
    });
    assert!(failures(&p.b_events)[0].contains("no acceptable phase 1 proposal"));
    assert!(
        failures(&p.a_events)[0].contains("NO-PROPOSAL-CHOSEN"),
        "{:?}",
        failures(&p.a_events)
    );
    assert_eq!(failure_kinds(&p.a_events)[0], FailureKind::Refused);
    assert_eq!(failure_kinds(&p.b_events)[0], FailureKind::Refused);
}

/// Pluto's schedule: retransmissions after 10, 20 and 40 s, failure 80 s after the last.
#[test]
fn silent_peer_gets_three_retransmissions_then_failure() {
    let (mut a, _) = conns(|c| c.ike.keyingtries = 1);
    a.remote = Ipv4Addr::new(203, 0, 113, 9);
    let mut p = Pair::new();
    p.fate = Box::new(|_, _| Fate::Drop);
    let mut sent = Vec::new();
    p.a.initiate(p.now, &a);
    loop {
        while let Some(t) = p.a.poll_transmit() {
            sent.push(((p.now - p.start).as_secs(), t.payload));
        }
        while let Some(e) = p.a.poll_event() {
            p.a_events.push(e);
        }
        let Some(t) = p.a.poll_timeout() else { break };
        p.now = t;
        p.a.handle_timeout(t);
    }
    let times: Vec<u64> = sent.iter().map(|s| s.0).collect();
    assert_eq!(times, [0, 10, 30, 70]);
    assert!(
        sent.iter().all(|s| s.1 == sent[0].1),
        "retransmissions repeat the message byte for byte"
    );
    let f = failures(&p.a_events);
    assert!(
        f.len() == 1 && f[0].contains("no reply to Main Mode message 1"),
        "{f:?}"
    );
    assert_eq!(failure_kinds(&p.a_events), [FailureKind::TimedOut]);
    assert_eq!((p.now - p.start).as_secs(), 150);
}

/// A normal exchange is 9 datagrams: Main Mode 1-6, Quick Mode 1-3.
const EXCHANGE_LEN: usize = 9;

#[test]
fn every_lost_message_is_survived() {
    for k in 0..EXCHANGE_LEN {
        let (a, b) = conns(|_| {});
        let mut p = Pair::new();
        p.fate = Box::new(move |n, _| if n == k { Fate::Drop } else { Fate::Deliver });
        p.b.add_connection(b);
        p.a.initiate(p.now, &a);
        assert!(
            p.established(),
            "dropping datagram {k}: A {:?} B {:?}",
            failures(&p.a_events),
            failures(&p.b_events)
        );
        assert_keys_match(children(&p.a_events)[0], children(&p.b_events)[0]);
        assert!(failures(&p.a_events).is_empty() && failures(&p.b_events).is_empty());
    }
}

#[test]
fn every_duplicated_message_is_survived() {
    for k in 0..EXCHANGE_LEN {
        let (a, b) = conns(|_| {});
        let mut p = Pair::new();
        p.fate = Box::new(move |n, _| {
            if n == k {
                Fate::Duplicate
            } else {
                Fate::Deliver
            }
        });
        p.b.add_connection(b);
        p.a.initiate(p.now, &a);
        assert!(p.established(), "duplicating datagram {k}");
        // Let the echoes settle: still one SA each side, nothing failed.
        p.run_until(Duration::from_secs(300), |_| false);
        assert_eq!(
            (children(&p.a_events).len(), children(&p.b_events).len()),
            (1, 1),
            "duplicating datagram {k}"
        );
        assert_keys_match(children(&p.a_events)[0], children(&p.b_events)[0]);
        assert!(
            failures(&p.a_events).is_empty() && failures(&p.b_events).is_empty(),
            "duplicating datagram {k}"
        );
    }
}

/// Truncations (raw, and with the Length field patched to match) and noise.
fn mangled(m: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for len in 0..m.len() {
        out.push(m[..len].to_vec());
        if len >= 28 {
            let mut patched = m[..len].to_vec();
            patched[24..28].copy_from_slice(&(len as u32).to_be_bytes());
            out.push(patched);
        }
    }
    let mut noise = m.to_vec();
    noise[28..]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i as u8).wrapping_mul(37));
    out.push(noise);
    out
}

fn flipped(m: &[u8]) -> Vec<Vec<u8>> {
    (0..m.len())
        .map(|i| {
            let mut f = m.to_vec();
            f[i] ^= 0x5a;
            f
        })
        .collect()
}

/// Every truncation of every message, and noise, delivered before the real message:
/// nothing panics and the exchange still completes. Then the whole conversation is
/// replayed mangled, bit flips included, against the established endpoints.
#[test]
fn garbage_and_truncations_never_panic() {
    let (a, b) = conns(|c| c.ike.pfs = true);
    let mut p = Pair::new();
    p.inject = Box::new(|_, t, to, now| {
        for m in mangled(&t.payload) {
            to.handle_datagram(now, t.from, t.to, &m);
        }
    });
    p.b.add_connection(b);
    p.a.initiate(p.now, &a);
    assert!(
        p.established(),
        "A {:?} B {:?}",
        failures(&p.a_events),
        failures(&p.b_events)
    );
    assert_keys_match(children(&p.a_events)[0], children(&p.b_events)[0]);
    let wire = p.wire.clone();
    for (from_a, m) in wire {
        let (from, to) = if from_a { (A, B) } else { (B, A) };
        let (f, t) = (SocketAddrV4::new(from, 500), SocketAddrV4::new(to, 500));
        let target = if from_a { &mut p.b } else { &mut p.a };
        for g in mangled(&m).into_iter().chain(flipped(&m)) {
            target.handle_datagram(p.now, f, t, &g);
        }
    }
    p.run_until(Duration::from_secs(400), |_| false);
    assert_eq!(
        (children(&p.a_events).len(), children(&p.b_events).len()),
        (1, 1)
    );
}

/// Main Mode's first four messages are not authenticated (RFC 2409 §5): a corrupted one
/// that still parses derails the exchange, in Pluto as here. What matters is that
/// nothing panics and the endpoints end in a clean failure or success.
#[test]
fn bit_flips_during_the_exchange_never_panic() {
    let (a, b) = conns(|c| c.ike.keyingtries = 1);
    let mut p = Pair::new();
    p.inject = Box::new(|_, t, to, now| {
        for m in flipped(&t.payload) {
            to.handle_datagram(now, t.from, t.to, &m);
        }
    });
    p.b.add_connection(b);
    p.a.initiate(p.now, &a);
    p.run_until(Duration::from_secs(3000), |_| false);
    let settled = children(&p.a_events).len() == 1 || !failures(&p.a_events).is_empty();
    assert!(settled, "{:?}", p.a_events);
}

#[test]
fn delete_removes_the_sas_on_the_peer() {
    let (a, b) = conns(|_| {});
    let (mut p, i, _) = negotiate(a, b);
    p.a.delete(p.now, "a-to-b");
    p.run_until(Duration::from_secs(10), |_| false);
    let deleted = |events: &[Event], want: DeleteReason| {
        events
            .iter()
            .any(|e| matches!(e, Event::ChildSaDeleted { reason, .. } if *reason == want))
            && events
                .iter()
                .any(|e| matches!(e, Event::Phase1Deleted { reason, .. } if *reason == want))
    };
    assert!(deleted(&p.a_events, DeleteReason::Local));
    assert!(
        deleted(&p.b_events, DeleteReason::PeerDeleted),
        "{:?}",
        p.b_events
    );
    let b_deleted = p.b_events.iter().find_map(|e| match e {
        Event::ChildSaDeleted {
            inbound, outbound, ..
        } => Some((*inbound, *outbound)),
        _ => None,
    });
    assert_eq!(b_deleted, Some((i.outbound_spis(), i.inbound_spis())));
    // Nothing is left to time out on either side.
    assert_eq!((p.a.poll_timeout(), p.b.poll_timeout()), (None, None));
}

#[test]
fn road_warrior_instantiates_per_peer() {
    let (a, mut b) = conns(|_| {});
    b.remote = Ipv4Addr::UNSPECIFIED;
    b.name = "road-warriors".into();
    let (_, i, r) = negotiate(a, b);
    assert_eq!((r.conn.as_str(), r.remote), ("road-warriors", A));
    assert_eq!(r.remote_selector, Cidr::host(A));
    assert_eq!(i.remote, B);
}

/// Who rekeys: the initiator at rekeymargin (+ fuzz) before expiry, the responder at half
/// the margin; a road-warrior gateway never (the peer may be gone or behind a new address).
fn first_rekey(b_margin: u64, road_warrior: bool) -> (ChildSa, u64) {
    let (mut a, mut b) = conns(|c| {
        c.ike.lifetime_secs = 600;
        c.ike.rekeyfuzz_percent = 0;
    });
    a.ike.rekeymargin_secs = 20;
    b.ike.rekeymargin_secs = b_margin;
    if road_warrior {
        b.remote = Ipv4Addr::UNSPECIFIED;
    }
    let (mut p, _, _) = negotiate(a, b);
    let t0 = p.now;
    assert!(
        p.run_until(Duration::from_secs(1000), |p| children(&p.a_events).len()
            == 2)
    );
    (children(&p.a_events)[1].clone(), (p.now - t0).as_secs())
}

#[test]
fn responder_rekeys_at_half_the_margin() {
    // B's half margin (150 s) comes before A's 20 s: B starts the rekey at 450 s.
    let (second, at) = first_rekey(300, false);
    assert_eq!((second.exchange, at), (None, 450));
    // With a smaller margin on B, A goes first at 580 s.
    let (second, at) = first_rekey(20, false);
    assert!(second.exchange.is_some());
    assert_eq!(at, 580);
}

#[test]
fn road_warrior_gateway_never_rekeys() {
    let (second, at) = first_rekey(300, true);
    assert!(
        second.exchange.is_some(),
        "the road warrior rekeyed, not the gateway"
    );
    assert_eq!(at, 580);
}

/// The commit flag sits in the header, outside HASH(1): whoever sets it, Pluto ignores it
/// with a warning, and so does this daemon.
#[test]
fn commit_flag_is_ignored_with_a_warning() {
    let (a, b) = conns(|_| {});
    let mut p = Pair::new();
    // Datagram 6 is Quick Mode message 1; a copy with the commit bit goes first.
    p.inject = Box::new(|n, t, to, now| {
        if n == 6 {
            let mut m = t.payload.clone();
            m[19] |= 0x02;
            to.handle_datagram(now, t.from, t.to, &m);
        }
    });
    p.b.add_connection(b);
    p.a.initiate(p.now, &a);
    assert!(p.established());
    assert_keys_match(children(&p.a_events)[0], children(&p.b_events)[0]);
    let warned = p.b_events.iter().any(|e| {
        matches!(e, Event::Log { level: crate::LogLevel::Warning, message, .. } if message.contains("commit flag"))
    });
    assert!(warned);
}

#[test]
fn a_second_connection_reuses_phase_1() {
    let net = |s: &str| s.parse::<Cidr>().unwrap();
    let (a, b) = conns(|_| {});
    let (mut a2, mut b2) = conns(|c| c.mode = Mode::Tunnel);
    a2.name = "second".into();
    b2.name = "second-b".into();
    (a2.local_subnet, a2.remote_subnet) = (Some(net("10.1.0.0/24")), Some(net("10.2.0.0/24")));
    (b2.local_subnet, b2.remote_subnet) = (Some(net("10.2.0.0/24")), Some(net("10.1.0.0/24")));
    let mut p = Pair::new();
    p.b.add_connection(b);
    p.b.add_connection(b2);
    p.a.initiate(p.now, &a);
    p.a.initiate(p.now, &a2);
    assert!(
        p.run_until(Duration::from_secs(60), |p| children(&p.a_events).len()
            == 2
            && children(&p.b_events).len() == 2)
    );
    let phase1s = p
        .a_events
        .iter()
        .filter(|e| matches!(e, Event::Phase1Established { .. }))
        .count();
    assert_eq!(phase1s, 1);
    let names: Vec<&str> = children(&p.b_events)
        .iter()
        .map(|c| c.conn.as_str())
        .collect();
    assert_eq!(names, ["b-from-a", "second-b"]);
}

#[test]
fn rekey_supersedes_then_the_old_sa_expires() {
    let (a, b) = conns(|c| {
        c.ike.lifetime_secs = 600;
        c.ike.rekeymargin_secs = 120;
        c.ike.rekeyfuzz_percent = 100;
    });
    let (mut p, first, first_r) = negotiate(a, b);
    let t0 = p.now;
    assert!(
        p.run_until(Duration::from_secs(2000), |p| children(&p.a_events).len()
            == 2
            && children(&p.b_events).len() == 2)
    );
    let (second, second_r) = (
        children(&p.a_events)[1].clone(),
        children(&p.b_events)[1].clone(),
    );
    assert_keys_match(&second, &second_r);
    // The initiator rekeys between margin and margin × (1 + fuzz) before expiry.
    let at = (p.now - t0).as_secs();
    assert!(
        (600 - 240..=600 - 120).contains(&at),
        "rekeyed after {at} s"
    );
    assert_eq!(second.replaces, Some(first.inbound_spis()));
    assert_eq!(second_r.replaces, Some(first_r.inbound_spis()));
    assert_ne!(second.inbound_spis(), first.inbound_spis());
    // The old SA lives on (inbound) until its hard expiry, then both ends delete it.
    let expired = |events: &[Event], spis: SpiSet| {
        events.iter().any(|e| matches!(e, Event::ChildSaDeleted { inbound, reason: DeleteReason::Expired, .. } if *inbound == spis))
    };
    assert!(!expired(&p.a_events, first.inbound_spis()));
    let first_in = first.inbound_spis();
    let first_r_in = first_r.inbound_spis();
    assert!(p.run_until(Duration::from_secs(2000), |p| expired(
        &p.a_events,
        first_in
    ) && expired(
        &p.b_events,
        first_r_in
    )));
    assert!((p.now - t0).as_secs() >= 600);
    // The superseded SA was not rekeyed again by the responder.
    assert_eq!(
        (children(&p.a_events).len(), children(&p.b_events).len()),
        (2, 2)
    );
}

mod natt_dpd;
mod phase1_rekey;

/// The responder hands over its inbound SAs with Quick Mode message 2, before the
/// initiator can use them; message 3 then confirms the same SAs.
#[test]
fn responder_installs_inbound_before_message_2() {
    let (a, b) = conns(|_| {});
    let mut p = Pair::new();
    p.b.add_connection(b);
    p.a.initiate(p.now, &a);
    assert!(p.established());
    let early: Vec<&ChildSa> = p
        .b_events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaInboundReady(c) => Some(&**c),
            _ => None,
        })
        .collect();
    assert_eq!(early.len(), 1, "{:?}", p.b_events);
    let done = children(&p.b_events)[0];
    assert_eq!(early[0].keys, done.keys);
    let at = |pred: &dyn Fn(&Event) -> bool| p.b_events.iter().position(pred).unwrap();
    assert!(
        at(&|e| matches!(e, Event::ChildSaInboundReady(_)))
            < at(&|e| matches!(e, Event::ChildSaEstablished(_)))
    );
    assert!(
        !p.a_events.iter().any(|e| matches!(e, Event::ChildSaInboundReady(_))),
        "the initiator installs everything at once"
    );
}

/// Without message 3 the early inbound SAs are withdrawn.
#[test]
fn responder_withdraws_early_inbound_sas_without_message_3() {
    let (a, b) = conns(|_| {});
    let mut p = Pair::new();
    // Main Mode is 6 datagrams, then QM1 (6) and QM2 (7): nothing from A gets through after.
    p.fate = Box::new(|n, t| {
        if n >= 8 && *t.from.ip() == A {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.b.add_connection(b);
    p.a.initiate(p.now, &a);
    p.run_until(Duration::from_secs(600), |p| {
        p.b_events.iter().any(|e| matches!(e, Event::ChildSaDeleted { .. }))
    });
    let early = p
        .b_events
        .iter()
        .find_map(|e| match e {
            Event::ChildSaInboundReady(c) => Some(c.inbound_spis()),
            _ => None,
        })
        .expect("inbound SAs handed over with message 2");
    let deleted = p.b_events.iter().find_map(|e| match e {
        Event::ChildSaDeleted { inbound, outbound, .. } => Some((*inbound, *outbound)),
        _ => None,
    });
    assert_eq!(deleted, Some((early, SpiSet::default())), "{:?}", p.b_events);
    assert!(children(&p.b_events).is_empty());
}
