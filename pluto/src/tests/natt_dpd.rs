//! NAT traversal (RFC 3947, RFC 3948) and Dead Peer Detection (RFC 3706) between two
//! endpoints on virtual time; the path between them can be a NAT.

use super::*;
use crate::crypto::{phase1, phase2};
use crate::message;
use crate::wire::{
    parse_chain, EncapsulationMode, ExchangeType, Flags, Header, HeaderRepr, IpsecAttr, NotifyRepr,
    NotifyType, PayloadType, ProtocolId, SaRepr, DOI_IPSEC,
};
use crate::{LogLevel, UdpEncap};

/// The initiator's own address, behind the NAT.
const INSIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The NAT's public address.
const PUBLIC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const MARKER: [u8; 4] = [0; 4];
const RFC3947_VID: [u8; 16] = [
    0x4a, 0x13, 0x1c, 0x81, 0x07, 0x03, 0x58, 0x45, 0x5c, 0x57, 0x28, 0xf2, 0x0e, 0x95, 0x45, 0x2f,
];
const DRAFT03_VID: [u8; 16] = [
    0x7d, 0x94, 0x19, 0xa6, 0x53, 0x10, 0xca, 0x6f, 0x2c, 0x17, 0x9d, 0x92, 0x15, 0x52, 0x9d, 0x56,
];
const DRAFT02N_VID: [u8; 16] = [
    0x90, 0xcb, 0x80, 0x91, 0x3e, 0xbb, 0x69, 0x6e, 0x08, 0x63, 0x81, 0xb5, 0xec, 0x42, 0x7b, 0x1f,
];
const DPD_VID: [u8; 16] = [
    0xaf, 0xca, 0xd7, 0x13, 0x68, 0xa1, 0xf1, 0xc9, 0x6b, 0x86, 0x96, 0xfc, 0x77, 0x57, 0x01, 0x00,
];

type Secrets = Vec<crate::endpoint::Phase1Secrets>;
/// A message's header and its payloads after HASH.
type Opened = (HeaderRepr, Vec<(PayloadType, Vec<u8>)>);
/// Turns one NAT-D body into what is sent instead.
type Mangle = fn(&[u8]) -> Vec<Vec<u8>>;

/// A NAT in front of the initiator: 10.0.0.1:500 is 192.0.2.100:31000 outside, and
/// 10.0.0.1:4500 is 192.0.2.100:31001. Anything else for the public address is lost.
fn nat(from_a: bool, mut t: Transmit) -> Option<Transmit> {
    const MAP: [(u16, u16); 2] = [(500, 31000), (4500, 31001)];
    if from_a {
        if *t.from.ip() == INSIDE {
            let &(_, outside) = MAP.iter().find(|m| m.0 == t.from.port())?;
            t.from = SocketAddrV4::new(PUBLIC, outside);
        }
    } else if *t.to.ip() == PUBLIC {
        let &(inside, _) = MAP.iter().find(|m| m.1 == t.to.port())?;
        t.to = SocketAddrV4::new(INSIDE, inside);
    }
    Some(t)
}

/// Connections for an initiator behind the NAT and a gateway that knows it by the NAT's
/// address.
fn nat_conns(f: impl Fn(&mut Connection)) -> (Connection, Connection) {
    let (mut a, mut b) = conns(f);
    a.local = INSIDE;
    b.remote = PUBLIC;
    (a, b)
}

/// Runs A → B until both have their child SA.
fn establish(p: &mut Pair, a: Connection, b: Connection) -> (ChildSa, ChildSa) {
    p.b.add_connection(b);
    p.a.initiate(p.now, &a);
    assert!(
        p.established(),
        "not established: A {:?}\nB {:?}",
        failures(&p.a_events),
        failures(&p.b_events)
    );
    (
        children(&p.a_events)[0].clone(),
        children(&p.b_events)[0].clone(),
    )
}

/// The IKE message in a datagram: on the NAT-T port it must follow the marker.
fn ike(t: &Transmit) -> &[u8] {
    if t.from.port() == 4500 {
        assert_eq!(t.payload[..4], MARKER, "no non-ESP marker from {}", t.from);
        &t.payload[4..]
    } else {
        &t.payload
    }
}

fn exchange(m: &[u8]) -> ExchangeType {
    Header::new_checked(m).unwrap().exchange()
}

/// The payloads of a plaintext message; none for anything else.
fn plain_payloads(m: &[u8]) -> Vec<(PayloadType, Vec<u8>)> {
    let Ok(h) = Header::new_checked(m) else {
        return Vec::new();
    };
    if h.flags().encrypted() {
        return Vec::new();
    }
    parse_chain(h.next_payload(), h.body())
        .map(|c| {
            c.payloads
                .iter()
                .map(|p| (p.kind, p.body.to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

fn vendor_ids(m: &[u8]) -> Vec<Vec<u8>> {
    plain_payloads(m)
        .into_iter()
        .filter(|p| p.0 == PayloadType::VendorId)
        .map(|p| p.1)
        .collect()
}

fn count(m: &[u8], kind: PayloadType) -> usize {
    plain_payloads(m).iter().filter(|p| p.0 == kind).count()
}

/// A plaintext message with each payload replaced by what `f` makes of it.
fn rebuild(m: &[u8], f: impl Fn(PayloadType, &[u8]) -> Vec<(PayloadType, Vec<u8>)>) -> Vec<u8> {
    let h = Header::new_checked(m).unwrap();
    let header = HeaderRepr::parse(&h).unwrap();
    let bodies: Vec<(PayloadType, Vec<u8>)> = plain_payloads(m)
        .into_iter()
        .flat_map(|(kind, body)| f(kind, &body))
        .collect();
    let payloads: Vec<(PayloadType, &[u8])> = bodies.iter().map(|(k, b)| (*k, &b[..])).collect();
    message::plain(&header, &payloads)
}

/// Opens a message whose IV derives from phase 1 alone (Quick Mode message 1, an
/// Informational) with the keys of the SA it names; returns its payloads after HASH.
fn open(secrets: &Secrets, m: &[u8]) -> Option<Opened> {
    let h = Header::new_checked(m).ok()?;
    let repr = HeaderRepr::parse(&h).ok()?;
    let (_, _, keys, iv) = secrets
        .iter()
        .find(|s| s.0 == repr.initiator_cookie && s.1 == repr.responder_cookie)?;
    let iv = phase1::exchange_iv(keys.hash, keys.cipher, iv, repr.message_id);
    let (plain, _) = message::decrypt(keys, &iv, h.body()).ok()?;
    let opened = message::open_hashed(repr.next_payload, &plain).ok()?;
    let payloads = opened.chain.payloads[1..]
        .iter()
        .map(|p| (p.kind, p.body.to_vec()))
        .collect();
    Some((repr, payloads))
}

/// An authentic Informational under the first SA in `secrets`.
fn forge_informational(secrets: &Secrets, mid: u32, payloads: &[(PayloadType, &[u8])]) -> Vec<u8> {
    let (cky_i, cky_r, keys, iv) = &secrets[0];
    let iv = phase1::exchange_iv(keys.hash, keys.cipher, iv, mid);
    let chain = message::hashed_chain(payloads, |rest| phase2::informational_hash(keys, mid, rest));
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

/// The Encapsulation Mode attribute of the first transform of an SA payload.
fn encapsulation_of(sa: &[u8]) -> EncapsulationMode {
    let sa = SaRepr::parse(sa).unwrap();
    let value = sa.proposals[0].transforms[0]
        .attributes
        .iter()
        .find(|a| a.kind == u16::from(IpsecAttr::EncapsulationMode))
        .and_then(|a| a.as_number())
        .unwrap();
    EncapsulationMode::from(value as u16)
}

/// Quick Mode message 1 as A sent it, opened.
fn first_quick_mode(p: &Pair) -> Vec<(PayloadType, Vec<u8>)> {
    let secrets = p.a.phase1_secrets();
    let qm1 = p
        .sent
        .iter()
        .find(|(_, from_a, t)| *from_a && exchange(ike(t)) == ExchangeType::QuickMode)
        .unwrap();
    open(&secrets, ike(&qm1.2)).unwrap().1
}

fn logged(events: &[Event], level: LogLevel, text: &str) -> bool {
    events.iter().any(|e| {
        matches!(e, Event::Log { level: l, message, .. } if *l == level && message.contains(text))
    })
}

fn keepalives(p: &Pair, from_a: bool) -> Vec<(u64, Transmit)> {
    p.sent
        .iter()
        .filter(|(_, a, t)| *a == from_a && t.payload == [0xFF])
        .map(|(at, _, t)| (at.as_secs(), t.clone()))
        .collect()
}

fn deleted(events: &[Event], why: DeleteReason) -> Vec<SpiSet> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaDeleted {
                inbound, reason, ..
            } if *reason == why => Some(*inbound),
            _ => None,
        })
        .collect()
}

fn phase1_deleted(events: &[Event], why: DeleteReason) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Phase1Deleted { reason, .. } if *reason == why))
}

#[test]
fn without_a_nat_nothing_floats() {
    let (a, b) = conns(|_| {});
    let (p, i, r) = negotiate(a, b);
    assert_eq!((i.udp_encap, r.udp_encap), (None, None));
    assert!(p
        .sent
        .iter()
        .all(|(_, _, t)| (t.from.port(), t.to.port()) == (500, 500)));
    // Both speak NAT-T: the initiator offers every version, the responder names the one
    // it picked; both advertise DPD, and both send NAT-D.
    assert_eq!(
        vendor_ids(&p.wire[0].1),
        [
            RFC3947_VID.to_vec(),
            DRAFT03_VID.to_vec(),
            DRAFT02N_VID.to_vec(),
            DPD_VID.to_vec()
        ]
    );
    assert_eq!(
        vendor_ids(&p.wire[1].1),
        [RFC3947_VID.to_vec(), DPD_VID.to_vec()]
    );
    for mm in [&p.wire[2].1, &p.wire[3].1] {
        assert_eq!(count(mm, PayloadType::NatD), 2);
    }
    let qm1 = first_quick_mode(&p);
    let sa = &qm1.iter().find(|q| q.0 == PayloadType::Sa).unwrap().1;
    assert_eq!(encapsulation_of(sa), EncapsulationMode::Transport);
    assert!(!qm1.iter().any(|q| q.0 == PayloadType::NatOa));
}

#[test]
fn nat_in_front_of_the_initiator_floats_both_ends_and_encapsulates() {
    let (a, b) = nat_conns(|_| {});
    let mut p = Pair::new();
    p.path = Box::new(nat);
    let (i, r) = establish(&mut p, a, b);
    assert_eq!(
        i.udp_encap,
        Some(UdpEncap {
            local_port: 4500,
            remote_port: 4500
        })
    );
    // The gateway sends to the port the NAT mapped the initiator's 4500 to.
    assert_eq!(
        r.udp_encap,
        Some(UdpEncap {
            local_port: 4500,
            remote_port: 31001
        })
    );
    assert_eq!(
        (i.local, i.remote, r.local, r.remote),
        (INSIDE, B, B, PUBLIC)
    );
    assert_eq!(i.keys.outbound, r.keys.inbound);
    assert_eq!(i.keys.inbound, r.keys.outbound);
    // Transport mode names the endpoints each end sees.
    assert_eq!(
        (i.local_selector, i.remote_selector),
        (Cidr::host(INSIDE), Cidr::host(B))
    );
    assert_eq!(
        (r.local_selector, r.remote_selector),
        (Cidr::host(B), Cidr::host(PUBLIC))
    );
    // Main Mode 1-4 on port 500; from message 5 on, port 4500 behind the marker.
    for (k, (_, from_a, t)) in p.sent.iter().take(EXCHANGE_LEN).enumerate() {
        let (ours, theirs) = if *from_a {
            (t.from, t.to)
        } else {
            (t.to, t.from)
        };
        let expected = if k < 4 {
            (500, if *from_a { 500 } else { 31000 })
        } else {
            (4500, if *from_a { 4500 } else { 31001 })
        };
        let got = if *from_a {
            (ours.port(), theirs.port())
        } else {
            (theirs.port(), ours.port())
        };
        assert_eq!(got, expected, "datagram {k}");
        assert!(Header::new_checked(ike(t)).is_ok());
    }
    // Quick Mode asks for UDP-encapsulated transport (4) and names the original addresses.
    let qm1 = first_quick_mode(&p);
    let sa = &qm1.iter().find(|q| q.0 == PayloadType::Sa).unwrap().1;
    assert_eq!(encapsulation_of(sa), EncapsulationMode::UdpTransport);
    let oa: Vec<&Vec<u8>> = qm1
        .iter()
        .filter(|q| q.0 == PayloadType::NatOa)
        .map(|q| &q.1)
        .collect();
    assert_eq!(
        oa,
        [
            &vec![1, 0, 0, 0, 10, 0, 0, 1],
            &vec![1, 0, 0, 0, 198, 51, 100, 2]
        ]
    );
    assert!(logged(
        &p.b_events,
        LogLevel::Debug,
        "original address 10.0.0.1"
    ));
    assert!(logged(
        &p.b_events,
        LogLevel::Info,
        "now at 192.0.2.100:31001"
    ));
    // The initiator keeps its NAT mapping open; the gateway has no NAT to keep open.
    let t0 = (p.now - p.start).as_secs();
    p.run_until(Duration::from_secs(t0 + 65), |_| false);
    let sent = keepalives(&p, true);
    let times: Vec<u64> = sent.iter().map(|k| k.0 - t0).collect();
    assert_eq!(times, [20, 40, 60]);
    for (_, t) in &sent {
        assert_eq!(
            (t.from, t.to),
            (SocketAddrV4::new(INSIDE, 4500), SocketAddrV4::new(B, 4500))
        );
    }
    assert!(keepalives(&p, false).is_empty());
    // DPD went over the floated ports too, and found the peer alive.
    let dpd: Vec<&Transmit> = p
        .sent
        .iter()
        .filter(|(_, _, t)| t.payload != [0xFF] && exchange(ike(t)) == ExchangeType::Informational)
        .map(|s| &s.2)
        .collect();
    assert!(!dpd.is_empty());
    assert!(dpd.iter().all(|t| t.from.port() == 4500));
    assert!(failures(&p.a_events).is_empty() && failures(&p.b_events).is_empty());
    assert!(deleted(&p.a_events, DeleteReason::PeerDead).is_empty());
}

#[test]
fn tunnel_through_a_nat_asks_for_udp_encapsulated_tunnel() {
    let net = |s: &str| s.parse::<Cidr>().unwrap();
    let (mut a, mut b) = nat_conns(|c| c.mode = Mode::Tunnel);
    (a.local_subnet, a.remote_subnet) = (Some(net("10.1.0.0/16")), Some(net("10.2.0.0/24")));
    (b.local_subnet, b.remote_subnet) = (Some(net("10.2.0.0/24")), Some(net("10.1.0.0/16")));
    let mut p = Pair::new();
    p.path = Box::new(nat);
    let (i, r) = establish(&mut p, a, b);
    assert_keys_match(&i, &r);
    assert_eq!(i.mode, Mode::Tunnel);
    assert!(i.udp_encap.is_some() && r.udp_encap.is_some());
    let qm1 = first_quick_mode(&p);
    let sa = &qm1.iter().find(|q| q.0 == PayloadType::Sa).unwrap().1;
    assert_eq!(encapsulation_of(sa), EncapsulationMode::UdpTunnel);
    assert!(!qm1.iter().any(|q| q.0 == PayloadType::NatOa));
}

/// Puts random bytes in the second NAT-D of a message, as charon does with
/// kernel-libipsec to force UDP encapsulation.
fn fake_nat_d(m: &[u8]) -> Vec<u8> {
    let seen = std::cell::Cell::new(0);
    rebuild(m, |kind, body| {
        if kind == PayloadType::NatD {
            seen.set(seen.get() + 1);
            if seen.get() == 2 {
                return vec![(kind, body.iter().map(|b| b ^ 0x5a).collect())];
            }
        }
        vec![(kind, body.to_vec())]
    })
}

#[test]
fn a_peer_that_fakes_nat_d_gets_udp_encapsulation() {
    let (a, b) = conns(|_| {});
    let mut p = Pair::new();
    p.path = Box::new(|from_a, mut t| {
        if !from_a && t.from.port() == 500 && count(&t.payload, PayloadType::NatD) == 2 {
            t.payload = fake_nat_d(&t.payload);
        }
        Some(t)
    });
    let (i, r) = establish(&mut p, a, b);
    let floated = Some(UdpEncap {
        local_port: 4500,
        remote_port: 4500,
    });
    assert_eq!((i.udp_encap, r.udp_encap), (floated, floated));
    assert!(logged(
        &p.a_events,
        LogLevel::Info,
        "the peer is (or says it is)"
    ));
    assert!(p.sent[4].2.from.port() == 4500 && p.sent[4].2.to.port() == 4500);
    let qm1 = first_quick_mode(&p);
    let sa = &qm1.iter().find(|q| q.0 == PayloadType::Sa).unwrap().1;
    assert_eq!(encapsulation_of(sa), EncapsulationMode::UdpTransport);
    // Nothing translates us: no keepalives.
    let t0 = (p.now - p.start).as_secs();
    p.run_until(Duration::from_secs(t0 + 65), |_| false);
    assert!(keepalives(&p, true).is_empty() && keepalives(&p, false).is_empty());
}

#[test]
fn the_nat_t_port_carries_ike_behind_the_marker_only() {
    let (a, b) = conns(|_| {});
    let (mut p, _, _) = negotiate(a, b);
    let (a4500, b4500) = (SocketAddrV4::new(A, 4500), SocketAddrV4::new(B, 4500));
    let quiet = |p: &mut Pair| {
        assert_eq!(p.b.poll_transmit(), None);
        let mut events = Vec::new();
        while let Some(e) = p.b.poll_event() {
            events.push(e);
        }
        events
    };
    // A NAT-keepalive: not even a log line.
    p.b.handle_datagram(p.now, a4500, b4500, &[0xFF]);
    assert!(quiet(&mut p).is_empty());
    // ESP, and IKE without the marker (which reads as ESP): a debug line, nothing else.
    let mm1 = p.wire[0].1.clone();
    for esp in [
        &[0, 0, 0x10, 0, 0, 0, 0, 1, 0xde, 0xad][..],
        &mm1,
        &[0, 0, 0],
    ] {
        p.b.handle_datagram(p.now, a4500, b4500, esp);
        let events = quiet(&mut p);
        assert!(logged(&events, LogLevel::Debug, "ESP"), "{events:?}");
    }
    // A Main Mode that starts on port 4500 is answered from there, behind the marker.
    let mut framed = MARKER.to_vec();
    framed.extend_from_slice(&mm1);
    p.b.handle_datagram(p.now, a4500, b4500, &framed);
    let reply = p.b.poll_transmit().unwrap();
    assert_eq!((reply.from, reply.to), (b4500, a4500));
    assert_eq!(exchange(ike(&reply)), ExchangeType::IdentityProtection);
    // The marker is no IKE on port 500.
    p.b.handle_datagram(
        p.now,
        SocketAddrV4::new(A, 500),
        SocketAddrV4::new(B, 500),
        &framed,
    );
    assert_eq!(p.b.poll_transmit(), None);
}

#[test]
fn without_nat_t_on_either_side_there_is_no_nat_d_and_no_float() {
    for a_speaks in [false, true] {
        let off = EndpointConfig {
            nat_traversal: false,
            ..EndpointConfig::default()
        };
        let on = EndpointConfig::default();
        let mut p = if a_speaks {
            Pair::with(on, off)
        } else {
            Pair::with(off, on)
        };
        let (a, b) = conns(|_| {});
        let (i, r) = establish(&mut p, a, b);
        let offered = if a_speaks { 4 } else { 1 };
        assert_eq!(vendor_ids(&p.wire[0].1).len(), offered);
        assert_eq!(vendor_ids(&p.wire[1].1), [DPD_VID.to_vec()]);
        for mm in [&p.wire[2].1, &p.wire[3].1] {
            assert_eq!(
                count(mm, PayloadType::NatD) + count(mm, PayloadType::NatDDraft),
                0
            );
        }
        assert!(p.sent.iter().all(|(_, _, t)| t.from.port() == 500));
        assert_eq!((i.udp_encap, r.udp_encap), (None, None));
    }
}

/// A peer that knows only the drafts (its RFC 3947 vendor ID is hidden here) gets the
/// draft numbers: NAT-D 130, NAT-OA 131, encapsulation 61444.
#[test]
fn a_draft_peer_gets_the_draft_numbers() {
    let (a, b) = nat_conns(|_| {});
    let mut p = Pair::new();
    p.path = Box::new(|from_a, mut t| {
        if from_a && t.from.port() == 500 && !vendor_ids(&t.payload).is_empty() {
            t.payload = rebuild(&t.payload, |kind, body| {
                let hide = kind == PayloadType::VendorId && body == RFC3947_VID;
                if hide {
                    vec![]
                } else {
                    vec![(kind, body.to_vec())]
                }
            });
        }
        nat(from_a, t)
    });
    let (i, r) = establish(&mut p, a, b);
    assert_eq!(
        vendor_ids(&p.wire[1].1),
        [DRAFT03_VID.to_vec(), DPD_VID.to_vec()]
    );
    for mm in [&p.wire[2].1, &p.wire[3].1] {
        assert_eq!(count(mm, PayloadType::NatDDraft), 2);
    }
    let qm1 = first_quick_mode(&p);
    let sa = &qm1.iter().find(|q| q.0 == PayloadType::Sa).unwrap().1;
    assert_eq!(encapsulation_of(sa), EncapsulationMode::UdpTransportDraft);
    assert_eq!(
        qm1.iter()
            .filter(|q| q.0 == PayloadType::NatOaDraft)
            .count(),
        2
    );
    assert!(i.udp_encap.is_some() && r.udp_encap.is_some());
}

#[test]
fn r_u_there_is_answered_with_the_same_sequence_number() {
    let quiet = EndpointConfig {
        dpd_delay: None,
        ..EndpointConfig::default()
    };
    let mut p = Pair::with(quiet, EndpointConfig::default());
    let (a, b) = conns(|_| {});
    establish(&mut p, a, b);
    let t0 = p.now - p.start;
    p.run_until(t0 + Duration::from_secs(45), |_| false);
    let secrets = p.b.phase1_secrets();
    let cookies = [secrets[0].0, secrets[0].1].concat();
    let notes: Vec<(bool, Duration, NotifyRepr)> = p
        .sent
        .iter()
        .filter(|(_, _, t)| exchange(ike(t)) == ExchangeType::Informational)
        .map(|(at, from_a, t)| {
            let (_, payloads) = open(&secrets, ike(t)).unwrap();
            assert_eq!(payloads.len(), 1);
            assert_eq!(payloads[0].0, PayloadType::Notification);
            (
                *from_a,
                *at - t0,
                NotifyRepr::parse(&payloads[0].1).unwrap(),
            )
        })
        .collect();
    // B asks after 30 s of silence; A, which sends no probes itself, answers at once.
    let [(false, asked_at, ask), (true, answered_at, ack)] = &notes[..] else {
        panic!("{notes:?}");
    };
    assert_eq!((asked_at.as_secs(), answered_at.as_secs()), (30, 30));
    assert_eq!(
        (ask.kind, ack.kind),
        (NotifyType::RUThere, NotifyType::RUThereAck)
    );
    for n in [ask, ack] {
        assert_eq!((n.doi, n.protocol), (DOI_IPSEC, ProtocolId::Isakmp));
        assert_eq!(n.spi, cookies);
        assert_eq!(n.data.len(), 4);
    }
    assert_eq!(ack.data, ask.data);
    let seq = u32::from_be_bytes(ask.data[..].try_into().unwrap());
    assert!(logged(
        &p.b_events,
        LogLevel::Debug,
        &format!("R-U-THERE-ACK {seq} from")
    ));
    assert!(!logged(&p.b_events, LogLevel::Debug, "answers nothing"));
}

#[test]
fn a_silent_peer_is_declared_dead_after_the_timeout() {
    let (a, b) = conns(|_| {});
    let (mut p, i, r) = negotiate(a, b);
    let t0 = p.now;
    // From now on the network loses everything.
    let cut = p.wire.len();
    p.fate = Box::new(move |n, _| if n >= cut { Fate::Drop } else { Fate::Deliver });
    assert!(p.run_until(Duration::from_secs(3000), |p| {
        phase1_deleted(&p.a_events, DeleteReason::PeerDead)
    }));
    // Silence for dpd_delay, then R-U-THERE unanswered for dpd_timeout.
    assert_eq!((p.now - t0).as_secs(), 30 + 120);
    assert_eq!(
        deleted(&p.a_events, DeleteReason::PeerDead),
        [i.inbound_spis()]
    );
    assert!(logged(&p.a_events, LogLevel::Warning, "is dead"));
    // The responder concludes the same about the initiator.
    p.run_until(Duration::from_secs(3000), |p| {
        phase1_deleted(&p.b_events, DeleteReason::PeerDead)
    });
    assert_eq!(
        deleted(&p.b_events, DeleteReason::PeerDead),
        [r.inbound_spis()]
    );
    // Nothing restarts by itself: no Main Mode, no timers.
    let dead_at = p.now - p.start;
    p.run_until(Duration::from_secs(10_000), |_| false);
    assert!(p.sent.iter().all(|(at, _, _)| *at <= dead_at));
    assert_eq!((p.a.poll_timeout(), p.b.poll_timeout()), (None, None));
}

#[test]
fn a_live_peer_is_never_declared_dead() {
    let (a, b) = conns(|_| {});
    let (mut p, _, _) = negotiate(a, b);
    // The first R-U-THEREs get lost; the later ones are answered.
    let mut lost = 0;
    p.fate = Box::new(move |_, t| {
        let informational = Header::new_checked(&t.payload[..])
            .is_ok_and(|h| h.exchange() == ExchangeType::Informational);
        if informational && lost < 2 {
            lost += 1;
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.run_until(Duration::from_secs(3000), |_| false);
    for events in [&p.a_events, &p.b_events] {
        assert!(!phase1_deleted(events, DeleteReason::PeerDead));
        assert!(deleted(events, DeleteReason::PeerDead).is_empty());
        assert!(failures(events).is_empty());
    }
    let probes = p
        .wire
        .iter()
        .filter(|(_, m)| exchange(m) == ExchangeType::Informational)
        .count();
    assert!(probes > 50, "{probes} DPD messages");
}

#[test]
fn garbage_nat_d_and_vendor_ids_never_panic() {
    // Each NAT-D cut short, emptied, too long, or followed by a one-byte one.
    let nat_d_cases: Vec<Mangle> = vec![
        |b| vec![b[..3].to_vec()],
        |_| vec![Vec::new()],
        |b| vec![b.repeat(50)],
        |b| vec![b.to_vec(), b[..1].to_vec()],
    ];
    for (k, case) in nat_d_cases.into_iter().enumerate() {
        let (a, b) = conns(|_| {});
        let mut p = Pair::new();
        p.path = Box::new(move |from_a, mut t| {
            if from_a && t.from.port() == 500 && count(&t.payload, PayloadType::NatD) > 0 {
                t.payload = rebuild(&t.payload, |kind, body| {
                    if kind == PayloadType::NatD {
                        case(body).into_iter().map(|b| (kind, b)).collect()
                    } else {
                        vec![(kind, body.to_vec())]
                    }
                });
            }
            Some(t)
        });
        let (i, r) = establish(&mut p, a, b);
        assert_eq!((i.udp_encap, r.udp_encap), (None, None), "case {k}");
        assert!(
            logged(&p.b_events, LogLevel::Warning, "malformed NAT-D"),
            "case {k}"
        );
    }
    // Vendor IDs of every odd length, near misses of ours included, in messages 1 and 2.
    let mut near_dpd = DPD_VID;
    near_dpd[14] = 2;
    let junk: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0xFF],
        RFC3947_VID[..15].to_vec(),
        [&RFC3947_VID[..], &[0]].concat(),
        near_dpd.to_vec(),
        vec![0xAB; 3000],
    ];
    let (a, b) = conns(|_| {});
    let mut p = Pair::new();
    p.path = Box::new(move |_, mut t| {
        if t.from.port() == 500 && !vendor_ids(&t.payload).is_empty() {
            t.payload = rebuild(&t.payload, |kind, body| {
                let mut out = vec![(kind, body.to_vec())];
                if kind == PayloadType::Sa {
                    out.extend(junk.iter().map(|j| (PayloadType::VendorId, j.clone())));
                }
                out
            });
        }
        Some(t)
    });
    let (c, d) = establish(&mut p, a, b);
    assert_keys_match(&c, &d);
    assert_eq!(vendor_ids(&p.wire[0].1).len(), 4 + 6);
    assert!(logged(&p.b_events, LogLevel::Debug, "unknown vendor ID"));
    assert!(logged(&p.a_events, LogLevel::Debug, "unknown vendor ID"));
}

#[test]
fn garbage_dpd_notifications_never_panic() {
    let (a, b) = conns(|_| {});
    let (mut p, _, _) = negotiate(a, b);
    let secrets = p.a.phase1_secrets();
    let cookies = [secrets[0].0, secrets[0].1].concat();
    let notify = |kind, spi: Vec<u8>, data: Vec<u8>| {
        NotifyRepr {
            doi: DOI_IPSEC,
            protocol: ProtocolId::Isakmp,
            kind,
            spi,
            data,
        }
        .to_bytes()
    };
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for kind in [NotifyType::RUThere, NotifyType::RUThereAck] {
        bodies.push(notify(kind, Vec::new(), vec![0, 0, 0, 1]));
        bodies.push(notify(kind, vec![1; 8], vec![0, 0, 0, 1]));
        for len in [0, 1, 3, 5, 64] {
            bodies.push(notify(kind, cookies.clone(), vec![7; len]));
        }
        let whole = notify(kind, cookies.clone(), vec![0, 0, 0, 9]);
        for len in 0..whole.len() {
            bodies.push(whole[..len].to_vec());
        }
    }
    // Well formed but under other cookies: tolerated, and answered (as Pluto does).
    bodies.push(notify(NotifyType::RUThere, vec![9; 16], vec![0, 0, 0, 5]));
    // An ACK for a question never asked.
    bodies.push(notify(
        NotifyType::RUThereAck,
        cookies.clone(),
        vec![0, 0, 0, 5],
    ));
    let (from, to) = (SocketAddrV4::new(A, 500), SocketAddrV4::new(B, 500));
    for (k, body) in bodies.iter().enumerate() {
        let m = forge_informational(
            &secrets,
            0x7000 + k as u32,
            &[(PayloadType::Notification, body)],
        );
        p.b.handle_datagram(p.now, from, to, &m);
    }
    let mut answers = Vec::new();
    while let Some(t) = p.b.poll_transmit() {
        answers.push(t);
    }
    assert_eq!(
        answers.len(),
        1,
        "only the well-formed R-U-THERE is answered"
    );
    let (_, payloads) = open(&secrets, &answers[0].payload).unwrap();
    let ack = NotifyRepr::parse(&payloads[0].1).unwrap();
    assert_eq!(
        (ack.kind, ack.data),
        (NotifyType::RUThereAck, vec![0, 0, 0, 5])
    );
    p.drain_events();
    assert!(logged(&p.b_events, LogLevel::Warning, "malformed"));
    assert!(logged(
        &p.b_events,
        LogLevel::Debug,
        "answers nothing we asked"
    ));
    // The SA is unharmed.
    p.run_until(Duration::from_secs(600), |_| false);
    assert!(failures(&p.a_events).is_empty() && failures(&p.b_events).is_empty());
    assert!(!phase1_deleted(&p.b_events, DeleteReason::PeerDead));
}

/// The NAT in front of the initiator, with a mapping that can change under way.
#[derive(Clone, Copy)]
struct Mapping {
    public: Ipv4Addr,
    ike: u16,
    nat_t: u16,
}

fn changing_nat(m: std::rc::Rc<std::cell::Cell<Mapping>>) -> PathFn {
    Box::new(move |from_a, mut t| {
        let m = m.get();
        let map = [(500, m.ike), (4500, m.nat_t)];
        if from_a {
            let &(_, outside) = map.iter().find(|p| p.0 == t.from.port())?;
            t.from = SocketAddrV4::new(m.public, outside);
        } else if *t.to.ip() == m.public {
            let &(inside, _) = map.iter().find(|p| p.1 == t.to.port())?;
            t.to = SocketAddrV4::new(INSIDE, inside);
        } else {
            return None;
        }
        Some(t)
    })
}

/// When the NAT's mapping changes, the gateway follows the first authentic message from
/// the new address; a forged one from elsewhere moves nothing.
#[test]
fn the_gateway_follows_a_changed_nat_mapping_only_when_authenticated() {
    use std::{cell::Cell, rc::Rc};
    let mapping = Rc::new(Cell::new(Mapping {
        public: PUBLIC,
        ike: 31000,
        nat_t: 31001,
    }));
    let (a, mut b) = nat_conns(|_| {});
    b.remote = Ipv4Addr::UNSPECIFIED; // a road warrior: its address may change
    let mut p = Pair::new();
    p.path = changing_nat(mapping.clone());
    let (i, _) = establish(&mut p, a, b);
    let moved = Ipv4Addr::new(192, 0, 2, 101);
    mapping.set(Mapping {
        public: moved,
        ike: 31500,
        nat_t: 31502,
    });
    // A forged message from a third address, with the SA's cookies, moves nothing.
    let forged_from = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 102), 4500);
    let secrets = p.a.phase1_secrets();
    let mut forged = MARKER.to_vec();
    forged.extend(forge_informational(
        &secrets,
        0x4242,
        &[(PayloadType::Notification, &[0; 8])],
    ));
    let last = forged.len() - 1;
    forged[last] ^= 1;
    p.b.handle_datagram(p.now, forged_from, SocketAddrV4::new(B, 4500), &forged);
    assert_eq!(p.b.poll_transmit(), None);
    // A's next R-U-THERE comes through the new mapping; B answers there and stays.
    let t0 = p.now - p.start;
    let mark = p.sent.len();
    p.run_until(t0 + Duration::from_secs(300), |_| false);
    assert!(logged(
        &p.b_events,
        LogLevel::Info,
        "now at 192.0.2.101:31502"
    ));
    // B's own first probe went out before A's reached it: still to the old mapping, not
    // to the forger.
    let first = p.sent[mark..]
        .iter()
        .find(|(_, from_a, _)| !from_a)
        .unwrap();
    assert_eq!(first.2.to, SocketAddrV4::new(PUBLIC, 31001));
    let later: Vec<&Transmit> = p
        .sent
        .iter()
        .filter(|(at, from_a, _)| !from_a && *at > t0 + Duration::from_secs(30))
        .map(|s| &s.2)
        .collect();
    assert!(!later.is_empty());
    assert!(later
        .iter()
        .all(|t| t.to == SocketAddrV4::new(moved, 31502)));
    for events in [&p.a_events, &p.b_events] {
        assert!(!phase1_deleted(events, DeleteReason::PeerDead));
    }
    // The child SA is still the gateway's to delete: it went with the peer.
    p.b.delete(p.now, "b-from-a");
    p.run_until(p.now - p.start + Duration::from_secs(5), |_| false);
    assert_eq!(
        deleted(&p.a_events, DeleteReason::PeerDeleted),
        [i.inbound_spis()]
    );
}

/// The gateway rekeys towards the initiator behind the NAT over the floated ports.
#[test]
fn rekeying_through_the_nat_keeps_udp_encapsulation() {
    let (mut a, mut b) = nat_conns(|c| {
        c.ike.lifetime_secs = 600;
        c.ike.rekeyfuzz_percent = 0;
    });
    a.ike.rekeymargin_secs = 20;
    b.ike.rekeymargin_secs = 300;
    let mut p = Pair::new();
    p.path = Box::new(nat);
    let (i1, r1) = establish(&mut p, a, b);
    assert!(p.run_until(Duration::from_secs(1000), |p| {
        children(&p.a_events).len() == 2 && children(&p.b_events).len() == 2
    }));
    let (i2, r2) = (
        children(&p.a_events)[1].clone(),
        children(&p.b_events)[1].clone(),
    );
    assert!(r2.exchange.is_some(), "the gateway started it");
    assert_eq!((i2.udp_encap, r2.udp_encap), (i1.udp_encap, r1.udp_encap));
    assert_eq!(i2.keys.outbound, r2.keys.inbound);
    assert_eq!(
        (i2.local_selector, i2.remote_selector, r2.remote_selector),
        (Cidr::host(INSIDE), Cidr::host(B), Cidr::host(PUBLIC))
    );
    assert_eq!(i2.replaces, Some(i1.inbound_spis()));
}
