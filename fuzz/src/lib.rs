//! Fuzz targets for every parser of outside bytes that the plugin's Rust API and the keying
//! daemon's core reach (docs/fuzzing.md). Each target is a plain function here so that the libFuzzer binaries
//! (`fuzz_targets/`), the corpus replay test (`tests/corpus.rs`) and the stable-toolchain
//! replayer (`examples/replay.rs`) run exactly the same code.
//!
//! A target panics only when the plugin breaks a promise: a panic inside it, a verdict that
//! leaves the buffer inconsistent, a "pass" that changed the packet, a batch that decides
//! differently from single packets. What the verdict is otherwise is free.

#![deny(unsafe_code)]

pub mod daemon;
pub mod lab;
pub mod seal;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::Duration;

use ipsec_plugin::config;
use ipsec_plugin::crypto::{EspTransform, IntegAlg};
use ipsec_plugin::ipc::{self, DecodeError, Message, Sender};
use ipsec_plugin::wire::{self, ah, esp, icmp, ipcomp, ipv4, udp};
use ipsec_plugin::{PacketBuf, Plugin, Verdict};
use pluto::secrets::{Entry, Index, Secrets};

pub const TARGETS: [&str; 8] = [
    "inbound", "outbound", "wire", "config", "control", "ipc", "secrets", "isakmp",
];

/// Runs one input through the named target (for the replayers).
pub fn run(target: &str, data: &[u8]) {
    match target {
        "inbound" => inbound(data),
        "outbound" => outbound(data),
        "wire" => wire(data),
        "config" => config(data),
        "control" => control(data),
        "ipc" => ipc(data),
        "secrets" => secrets(data),
        "isakmp" => isakmp(data),
        other => panic!("no fuzz target named {other}; targets: {TARGETS:?}"),
    }
}

/// Headroom and tailroom sizes: none, less than any header, exactly the sizes transforms
/// need, and room enough for a decompressed 64 KiB payload.
const ROOMS: [usize; 8] = [0, 1, 8, 20, 28, 60, 256, 70_000];

/// The first input byte: bit 0-2 headroom, bit 3-5 tailroom, bit 6-7 a flag for the target.
struct Room {
    head: usize,
    tail: usize,
    flag: u8,
}

impl Room {
    fn from_byte(b: u8) -> Room {
        Room {
            head: ROOMS[usize::from(b & 7)],
            tail: ROOMS[usize::from((b >> 3) & 7)],
            flag: b >> 6,
        }
    }

    /// A host buffer holding `packet` with this room around it.
    fn buffer(&self, packet: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; self.head + packet.len() + self.tail];
        buf[self.head..self.head + packet.len()].copy_from_slice(packet);
        buf
    }
}

/// What every verdict must leave behind: a packet inside the buffer; for `Transformed` a
/// valid IPv4 packet whose header says its real length; for `Pass` the packet as it came.
fn check_result(
    verdict: Verdict,
    buf: &[u8],
    offset: usize,
    len: usize,
    orig: &[u8],
    orig_offset: usize,
    what: &str,
) {
    assert!(
        offset.checked_add(len).is_some_and(|end| end <= buf.len()),
        "{what}: {verdict:?} left offset {offset} + len {len} outside a {}-byte buffer",
        buf.len()
    );
    let pkt = &buf[offset..offset + len];
    match verdict {
        Verdict::Transformed => {
            let ip = ipv4::Packet::new_checked(pkt)
                .unwrap_or_else(|e| panic!("{what}: Transformed but not IPv4 ({e})"));
            assert_eq!(
                usize::from(ip.total_len()),
                len,
                "{what}: Transformed with total length != len"
            );
            // Outbound the plugin writes every header it hands back. Inbound, a tunnel's inner
            // header is forwarded as the peer sent it, checksum included (decapsulation does
            // not verify it; the host's stack does).
            if what.starts_with("outbound") {
                assert!(
                    ip.verify_checksum(),
                    "{what}: Transformed with a bad header checksum"
                );
            }
        }
        Verdict::Pass => {
            assert_eq!(offset, orig_offset, "{what}: Pass moved the packet");
            let ip = ipv4::Packet::new_checked(pkt)
                .unwrap_or_else(|e| panic!("{what}: Pass of a packet that is not IPv4 ({e})"));
            assert_eq!(
                usize::from(ip.total_len()),
                len,
                "{what}: Pass with total length != len"
            );
            assert_eq!(pkt, &orig[..len], "{what}: Pass changed the packet");
        }
        Verdict::Drop | Verdict::Held => {}
    }
}

/// Inbound: the first byte picks the room (flag 3: an offset/len past the buffer, which
/// must be dropped); then either a raw IPv4 packet (second byte < 0x80, which every IPv4
/// packet's first byte is) or a `seal` program for a packet with valid ICVs, numbered
/// from a base that moves 64 forward per sealed input.
pub fn inbound(data: &[u8]) {
    let Some((&room, rest)) = data.split_first() else {
        return;
    };
    let lab = lab::lab();
    let packet = match rest.first() {
        Some(&b) if b >= 0x80 => match seal::build(rest, lab.next_seq_base()) {
            Some(p) => p,
            None => return,
        },
        _ => rest.to_vec(),
    };
    inbound_into(&lab.local, Room::from_byte(room), &packet);
}

fn inbound_into(plugin: &Plugin, room: Room, packet: &[u8]) -> Verdict {
    let mut buf = room.buffer(packet);
    let bad_bounds = room.flag == 3;
    let len = packet.len() + usize::from(bad_bounds) * (room.tail + 1);
    let mut pkt = PacketBuf {
        buf: &mut buf,
        offset: room.head,
        len,
    };
    let verdict = plugin.inbound(&mut pkt);
    let (offset, len) = (pkt.offset, pkt.len);
    if bad_bounds {
        assert_eq!(
            verdict,
            Verdict::Drop,
            "inbound accepted offset + len past the buffer"
        );
        return verdict;
    }
    check_result(verdict, &buf, offset, len, packet, room.head, "inbound");
    verdict
}

/// The link MTUs the outbound flag picks (flag 3: bad bounds, with the default MTU).
const MTUS: [u32; 4] = [1500, 576, 68, 1500];

/// Outbound: the first byte picks the room and the link MTU; then either one raw packet
/// (second byte < 0x80) or a batch: `0x80 | (count - 1)` then per packet a big-endian u16
/// (bit 15: give this one bad bounds; the rest: its length) and its bytes. The batch must
/// reach the same verdicts as the same packets sent one by one.
pub fn outbound(data: &[u8]) {
    let Some((&room_byte, rest)) = data.split_first() else {
        return;
    };
    let lab = lab::lab();
    let room = Room::from_byte(room_byte);
    lab.local
        .set_link_mtu(MTUS[usize::from(room.flag)])
        .expect("a valid MTU");
    match rest.first() {
        Some(&b) if b >= 0x80 => outbound_batch(lab, &room, b, &rest[1..]),
        _ => {
            let mut buf = room.buffer(rest);
            let bad_bounds = room.flag == 3;
            let len = rest.len() + usize::from(bad_bounds) * (room.tail + 1);
            let mut pkt = PacketBuf {
                buf: &mut buf,
                offset: room.head,
                len,
            };
            let verdict = lab.local.outbound(&mut pkt);
            let (offset, len) = (pkt.offset, pkt.len);
            if bad_bounds {
                assert_eq!(
                    verdict,
                    Verdict::Drop,
                    "outbound accepted offset + len past the buffer"
                );
                return;
            }
            check_result(verdict, &buf, offset, len, rest, room.head, "outbound");
            if verdict == Verdict::Transformed {
                round_trip(&lab.peer, rest, &buf[offset..offset + len]);
            }
        }
    }
}

/// What we protect, the peer opens back into what we were given: the header checksum
/// aside (transport mode rewrites the header, so a bad one comes back corrected).
///
/// Not checked where the peer legitimately reads more into the packet than we put there:
/// fragments (transport mode keeps the fragment fields, and fragments are refused
/// inbound), and payloads that are themselves IPsec (ESP, AH, IPComp, UDP on the NAT-T or
/// IKE ports): once our layers are off, the peer takes those for further layers; and
/// protocol 59, which in an ESP trailer marks a dummy packet to discard (RFC 4303 2.6).
fn round_trip(peer: &Plugin, original: &[u8], protected: &[u8]) {
    let ip = ipv4::Packet::new_checked(original).expect("outbound transformed a non-IPv4 packet");
    let original = &original[..usize::from(ip.total_len())];
    let nested = match ip.next_header() {
        wire::IpProtocol::Esp
        | wire::IpProtocol::Ah
        | wire::IpProtocol::IpComp
        | wire::IpProtocol::NoNextHeader => true,
        wire::IpProtocol::Udp => {
            matches!(wire::transport_ports(wire::IpProtocol::Udp, ip.payload()), Some((s, d)) if [s, d].iter().any(|p| *p == 500 || *p == udp::NAT_T_PORT))
        }
        _ => false,
    };
    if nested || ip.is_fragment() {
        return;
    }
    // Room for a decompressed payload: without it IPComp is rightly dropped (NoRoom).
    let room = Room {
        head: 0,
        tail: ROOMS[7],
        flag: 0,
    };
    let mut buf = room.buffer(protected);
    let mut pkt = PacketBuf {
        buf: &mut buf,
        offset: 0,
        len: protected.len(),
    };
    let verdict = peer.inbound(&mut pkt);
    let (offset, len) = (pkt.offset, pkt.len);
    assert_eq!(
        verdict,
        Verdict::Transformed,
        "the peer refused what outbound made of this packet"
    );
    let opened = &buf[offset..offset + len];
    assert_eq!(
        opened.len(),
        original.len(),
        "round trip changed the length"
    );
    assert_eq!(
        (&opened[..10], &opened[12..]),
        (&original[..10], &original[12..]),
        "round trip changed the packet"
    );
}

/// Up to 40 packets: more than one batch chunk (`engine::MAX_BATCH` is 32).
const MAX_BATCH_FUZZ: usize = 40;

fn outbound_batch(lab: &lab::Lab, room: &Room, head: u8, mut rest: &[u8]) {
    let plugin = &lab.local;
    let count = 1 + usize::from(head & 0x7f) % MAX_BATCH_FUZZ;
    let mut packets: Vec<(&[u8], bool)> = Vec::new();
    while packets.len() < count && rest.len() >= 2 {
        let word = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(word & 0x7fff).min(rest.len() - 2);
        packets.push((&rest[2..2 + len], word & 0x8000 != 0));
        rest = &rest[2 + len..];
    }
    // One by one first, on copies. Sequence numbers and IVs differ between the two runs,
    // so verdicts and lengths are compared, not bytes.
    let single: Vec<(Verdict, usize)> = packets
        .iter()
        .map(|&(p, bad)| {
            let mut buf = room.buffer(p);
            let len = p.len() + usize::from(bad) * (room.tail + 1);
            let mut pkt = PacketBuf {
                buf: &mut buf,
                offset: room.head,
                len,
            };
            let v = plugin.outbound(&mut pkt);
            (v, pkt.len)
        })
        .collect();
    let mut bufs: Vec<Vec<u8>> = packets.iter().map(|&(p, _)| room.buffer(p)).collect();
    let mut pkts: Vec<PacketBuf<'_>> = bufs
        .iter_mut()
        .zip(&packets)
        .map(|(buf, &(p, bad))| PacketBuf {
            buf,
            offset: room.head,
            len: p.len() + usize::from(bad) * (room.tail + 1),
        })
        .collect();
    let mut verdicts = vec![Verdict::Pass; pkts.len()];
    plugin.outbound_batch(&mut pkts, &mut verdicts);
    let results: Vec<(usize, usize)> = pkts.iter().map(|p| (p.offset, p.len)).collect();
    drop(pkts);
    for (i, (((&(p, bad), &(v1, len1)), &v), &(offset, len))) in packets
        .iter()
        .zip(&single)
        .zip(&verdicts)
        .zip(&results)
        .enumerate()
    {
        let what = format!("outbound_batch packet {i} of {}", packets.len());
        if bad {
            assert_eq!(
                v,
                Verdict::Drop,
                "{what}: accepted offset + len past the buffer"
            );
            continue;
        }
        check_result(v, &bufs[i], offset, len, p, room.head, &what);
        // The frag-needed ICMP budget and replay-free sequence numbers are the same for
        // both runs; nothing else may make the batch decide differently.
        assert_eq!(
            v, v1,
            "{what}: batch verdict differs from outbound() on the same packet"
        );
        if v != Verdict::Drop {
            assert_eq!(
                len, len1,
                "{what}: batch length differs from outbound() on the same packet"
            );
        }
        // The batch encrypts packets of one SA together (interleaved CBC): the peer must
        // still open each of them.
        if v == Verdict::Transformed {
            round_trip(&lab.peer, p, &bufs[i][offset..offset + len]);
        }
    }
}

/// Every wire view on the same bytes: `new_checked`, every accessor, `Repr::parse`, and a
/// parse → emit → parse round trip; plus the ESP trailer, NAT-T classification and the AH
/// mutable-field zeroing (which must leave the immutable fields alone and be idempotent).
pub fn wire(data: &[u8]) {
    if let Ok(p) = ipv4::Packet::new_checked(data) {
        let _ = (
            p.version(),
            p.tos(),
            p.ident(),
            p.dont_frag(),
            p.more_frags(),
            p.frag_offset(),
            p.ttl(),
            p.checksum(),
        );
        let _ = (
            p.src_addr(),
            p.dst_addr(),
            p.next_header(),
            p.options().len(),
            p.payload().len(),
            p.is_fragment(),
        );
        assert_eq!(
            p.header_len() + p.payload().len(),
            usize::from(p.total_len())
        );
        if let Ok(r) = ipv4::Repr::parse(&p) {
            let mut buf = vec![0u8; r.buffer_len()];
            r.emit(&mut ipv4::Packet::new_unchecked(&mut buf[..]));
            let again =
                ipv4::Packet::new_checked(&buf[..]).expect("emitted IPv4 header does not check");
            assert_eq!(ipv4::Repr::parse(&again), Ok(r), "IPv4 Repr round trip");
        }
    }
    if let Ok(p) = esp::Packet::new_checked(data) {
        let r = esp::Repr::parse(&p).expect("ESP Repr of a checked packet");
        assert_eq!(
            (
                r.spi,
                r.sequence_number,
                p.payload().len() + esp::HEADER_LEN
            ),
            (p.spi(), p.sequence_number(), data.len())
        );
        let mut buf = [0u8; esp::HEADER_LEN];
        r.emit(&mut esp::Packet::new_unchecked(&mut buf[..]));
        assert_eq!(&buf[..], &data[..esp::HEADER_LEN], "ESP header round trip");
    }
    if let Ok(t) = esp::Trailer::parse(data) {
        assert!(
            t.buffer_len() <= data.len(),
            "ESP trailer longer than the plaintext"
        );
        let mut tail = vec![0u8; t.buffer_len()];
        t.emit(&mut tail);
        assert_eq!(
            &tail[..],
            &data[data.len() - t.buffer_len()..],
            "ESP trailer round trip"
        );
    }
    if let Ok(p) = ah::Packet::new_checked(data) {
        let _ = (
            p.next_header(),
            p.spi(),
            p.sequence_number(),
            p.payload().len(),
        );
        assert_eq!(ah::HEADER_LEN + p.icv().len(), p.header_len());
        let r = ah::Repr::parse(&p).expect("AH Repr of a checked packet");
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut ah::Packet::new_unchecked(&mut buf[..]));
        let again = ah::Packet::new_checked(&buf[..]).expect("emitted AH header does not check");
        assert_eq!(ah::Repr::parse(&again), Ok(r), "AH Repr round trip");
    }
    if let Ok(p) = ipcomp::Packet::new_checked(data) {
        let _ = (p.flags(), p.payload().len());
        let r = ipcomp::Repr::parse(&p).expect("IPComp Repr of a checked packet");
        assert_eq!((r.next_header, r.cpi), (p.next_header(), p.cpi()));
    }
    if let Ok(p) = udp::Packet::new_checked(data) {
        let _ = (p.src_port(), p.dst_port(), p.checksum());
        let r = udp::Repr::parse(&p).expect("UDP Repr of a checked packet");
        assert_eq!(r.buffer_len(), usize::from(p.len()));
        let _ = udp::classify_nat_t(p.payload());
    }
    match udp::classify_nat_t(data) {
        Ok(udp::NatTPayload::Esp) => assert!(data.len() >= esp::HEADER_LEN && data[..4] != [0; 4]),
        Ok(udp::NatTPayload::Ike) => assert!(data.starts_with(&[0; 4])),
        Ok(udp::NatTPayload::Keepalive) => assert_eq!(data, [0xff]),
        Err(_) => {}
    }
    if let Ok(p) = icmp::Packet::new_checked(data) {
        let _ = (
            p.msg_type(),
            p.code(),
            p.checksum(),
            p.echo_ident(),
            p.echo_seq_no(),
            p.next_hop_mtu(),
            p.data().len(),
        );
        if let Ok(r) = icmp::Repr::parse(&p) {
            let mut buf = vec![0u8; r.buffer_len()];
            r.emit(&mut icmp::Packet::new_unchecked(&mut buf[..]));
            let again =
                icmp::Packet::new_checked(&buf[..]).expect("emitted ICMP message does not check");
            assert_eq!(icmp::Repr::parse(&again), Ok(r), "ICMP Repr round trip");
        }
    }
    let _ = wire::transport_ports(wire::IpProtocol::Tcp, data);
    let mut header = data[..data.len().min(60)].to_vec();
    ah::zero_mutable_ipv4_fields(&mut header);
    if header.len() >= ipv4::HEADER_LEN {
        // Version/IHL, total length, identification, protocol and the addresses are
        // immutable (RFC 4302 section 3.3.3.1.1.1) and must reach the ICV as they are.
        for i in [0, 2, 3, 4, 5, 9, 12, 13, 14, 15, 16, 17, 18, 19] {
            assert_eq!(
                header[i], data[i],
                "zero_mutable_ipv4_fields changed immutable byte {i}"
            );
        }
    }
    let once = header.clone();
    ah::zero_mutable_ipv4_fields(&mut header);
    assert_eq!(header, once, "zero_mutable_ipv4_fields is not idempotent");
}

/// The protocol sets `parse_sa_keys` is asked about, picked by the first byte.
fn key_protocols(b: u8) -> (Option<EspTransform>, Option<IntegAlg>, bool) {
    const ESP: [Option<&str>; 8] = [
        None,
        Some("aes128-sha1"),
        Some("aes128gcm16"),
        Some("aes256gcm16"),
        Some("null-md5"),
        Some("3des-none"),
        Some("des-sha256"),
        Some("aes192-sha1"),
    ];
    const AH: [Option<&str>; 4] = [None, Some("md5"), Some("sha1"), Some("sha256")];
    let esp = ESP[usize::from(b & 7)].and_then(EspTransform::from_name);
    let ah = AH[usize::from((b >> 3) & 3)].and_then(IntegAlg::from_name);
    (esp, ah, b & 0x20 != 0)
}

/// `config::parse` on the input as (lossy) UTF-8, then activation of whatever bundles came
/// out of it and a dump of the result; and `parse_sa_keys` after the first byte.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let cfg = config::parse(&text, "fuzz.cfg");
    for d in cfg.errors.iter().chain(&cfg.warnings) {
        let _ = d.to_string();
    }
    let (spd, _errors) = ipsec_plugin::spd::Spd::build(
        &cfg.bundles,
        &cfg.failed,
        Some(lab::LOCAL),
        lab::NOW_MS,
        |_| None,
    );
    let counters = ipsec_plugin::stats::Counters::default();
    let _ = ipsec_plugin::dump::text(&spd, &counters, lab::NOW_MS);
    let _ = ipsec_plugin::dump::json(&spd, &counters, lab::NOW_MS);
    let _ = spd.max_overhead();
    if let Some((&b, rest)) = data.split_first() {
        let (esp, ah, ipcomp) = key_protocols(b);
        let text = String::from_utf8_lossy(rest);
        match config::parse_sa_keys(&text, "keys", esp, ah, ipcomp) {
            Ok(keys) => {
                assert_eq!(
                    keys.outbound.esp.is_some(),
                    esp.is_some(),
                    "keys for ESP exactly when asked"
                );
                assert_eq!(
                    keys.outbound.ah.is_some(),
                    ah.is_some(),
                    "keys for AH exactly when asked"
                );
                assert_eq!(
                    keys.inbound.ipcomp_cpi.is_some(),
                    ipcomp,
                    "a CPI exactly when IPComp is asked for"
                );
            }
            Err(diags) => assert!(!diags.is_empty(), "parse_sa_keys failed without saying why"),
        }
    }
}

/// The control socket of the lab instance, started once; every input is one client's
/// request, sent whole and followed by a half-close, and the answer is read to the end.
pub fn control(data: &[u8]) {
    static SOCKET: OnceLock<std::path::PathBuf> = OnceLock::new();
    let path = SOCKET.get_or_init(|| {
        let lab = lab::lab();
        let path = lab.dir.join("control.sock");
        lab.local
            .control_listen(Some(&path))
            .expect("starting the control socket");
        path
    });
    let mut stream = UnixStream::connect(path).expect("connecting to the control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    // The server may answer and close before it has read an over-long request.
    let _ = rustix::net::send(&stream, data, rustix::net::SendFlags::NOSIGNAL);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        // Unread request bytes make the close a reset, which may cut the answer short.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
        Err(e) => panic!("reading the control answer: {e}"),
    }
    let answer = String::from_utf8(answer).expect("control answer is not UTF-8");
    let (first, rest) = answer
        .split_once('\n')
        .expect("control answer without a first line");
    if let Some(n) = first.strip_prefix("OK ") {
        let n: usize = n.parse().expect("OK without a length");
        assert_eq!(n, rest.len(), "OK length differs from the table sent");
        assert!(
            data.starts_with(b"DUMP "),
            "OK for a request that is not DUMP"
        );
    } else {
        assert!(
            first.starts_with("ERR ") && rest.is_empty(),
            "control answer is neither OK nor ERR: {first:?}"
        );
    }
    let _ = stream.flush();
}

/// The plugin–daemon link codec (docs/daemon-link.md) on the whole input: `message_len`,
/// `Message::decode`, `decode_from` as either side; whatever decodes is encoded again and
/// must decode to itself. Then the input as a byte stream of messages, taken apart with
/// `message_len` the way a stream reader does.
pub fn ipc(data: &[u8]) {
    check_message_len(data);
    ipc_message(data);
    let mut rest = data;
    for _ in 0..16 {
        match ipc::message_len(rest) {
            Ok(Some(n)) if n < data.len() && n <= rest.len() => {
                ipc_message(&rest[..n]);
                rest = &rest[n..];
            }
            _ => break,
        }
    }
}

/// `message_len` reports a wrong version from the first byte, needs the 16-byte header for
/// anything else, and then answers from the header alone.
fn check_message_len(data: &[u8]) {
    let got = ipc::message_len(data);
    match data.first() {
        None => assert_eq!(got, Ok(None), "ipc: message_len of nothing"),
        Some(&v) if v != ipc::LINK_VERSION => assert_eq!(
            got,
            Err(DecodeError::Version {
                ours: ipc::LINK_VERSION,
                theirs: v
            }),
            "ipc: message_len of a wrong version"
        ),
        Some(_) if data.len() < ipc::HEADER_LEN => {
            assert_eq!(got, Ok(None), "ipc: message_len before the header is in")
        }
        Some(_) => {
            let declared = usize::from(u16::from_be_bytes([data[4], data[5]])) * 8;
            let fits = (ipc::HEADER_LEN..=ipc::MAX_MESSAGE_LEN).contains(&declared);
            match got {
                Ok(Some(n)) => assert!(
                    fits && n == declared,
                    "ipc: message_len {n}, header says {declared}"
                ),
                Err(_) => assert!(!fits, "ipc: message_len refused a length of {declared}"),
                Ok(None) => panic!("ipc: message_len wants more than a whole header"),
            }
            assert_eq!(
                ipc::message_len(&data[..ipc::HEADER_LEN]),
                got,
                "ipc: message_len depends on more than the header"
            );
        }
    }
}

/// One message: decode, validation as both senders, the table's rules, and the round trip.
fn ipc_message(bytes: &[u8]) {
    let decoded = Message::decode(bytes);
    if let Err(e) = &decoded {
        let _ = e.to_string();
    }
    for from in [Sender::Plugin, Sender::Daemon] {
        let validated = Message::decode_from(bytes, from);
        match (&decoded, &validated) {
            (Err(e), v) => assert_eq!(
                v.as_ref().err(),
                Some(e),
                "ipc: decode_from differs from decode"
            ),
            (Ok(m), Ok(v)) => {
                assert_eq!(m, v, "ipc: decode_from differs from decode");
                check_link_table(m, from);
            }
            (Ok(m), Err(e)) => {
                let _ = e.to_string();
                assert_eq!(
                    m.validate(from).as_ref(),
                    Err(e),
                    "ipc: decode_from differs from validate"
                );
            }
        }
    }
    let Ok(m) = decoded else { return };
    assert_eq!(
        ipc::message_len(bytes),
        Ok(Some(bytes.len())),
        "ipc: decoded a message of another length than its header's"
    );
    let mut out = Vec::new();
    m.encode(&mut out)
        .unwrap_or_else(|e| panic!("ipc: decode accepted a message that encode refuses: {e}"));
    let again = Message::decode(&out).unwrap_or_else(|e| {
        panic!("ipc: decode refuses what encode made of a decoded message: {e}")
    });
    assert_eq!(again, m, "ipc: decode(encode(m)) != m");
    let mut twice = Vec::new();
    again
        .encode(&mut twice)
        .expect("encoding the same message again");
    assert_eq!(twice, out, "ipc: one message, two encodings");
    // Reserved fields and padding are zero and every field has one meaning, so a message
    // whose extensions are known and in ascending order (as encode writes them) is the
    // very bytes encode makes of it.
    let types = ipc_ext_types(bytes);
    if types.windows(2).all(|w| w[0] < w[1])
        && types
            .iter()
            .all(|&t| !matches!(ipc::ExtType::from_number(t), ipc::ExtType::Unknown(_)))
    {
        assert_eq!(
            out, bytes,
            "ipc: a message in encode's order did not re-encode to its own bytes"
        );
    }
    let shown = format!("{m:?}");
    for k in [&m.ext.key_auth, &m.ext.key_encrypt].into_iter().flatten() {
        if let Some(first) = k.as_bytes().get(..4) {
            let bytes = format!("{first:?}");
            assert!(
                !shown.contains(bytes.trim_end_matches(']')),
                "ipc: Debug of a message shows key bytes"
            );
        }
    }
}

/// The extension types of a message that decoded, in the order they came.
fn ipc_ext_types(bytes: &[u8]) -> Vec<u16> {
    let mut types = Vec::new();
    let mut rest = &bytes[ipc::HEADER_LEN..];
    while rest.len() >= 4 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])) * 8;
        types.push(u16::from_be_bytes([rest[2], rest[3]]));
        rest = &rest[len.clamp(8, rest.len())..];
    }
    types
}

/// docs/daemon-link.md, "What each message must carry": keys only daemon → plugin in UPDATE
/// and ADD; X_POLICY only in SPDADD from the plugin and SPDDUMP from the daemon; an ACQUIRE
/// from the daemon reports a failure; EXPIRE and unknown types are not accepted.
fn check_link_table(m: &Message, from: Sender) {
    use ipc::MsgType as M;
    let t = m.header.msg_type;
    let keyed =
        from == Sender::Daemon && matches!(t, M::Update | M::Add) && m.header.errno.is_none();
    assert!(
        keyed || (m.ext.key_auth.is_none() && m.ext.key_encrypt.is_none()),
        "ipc: {t} from the {from} accepted with keys"
    );
    assert!(
        m.ext.policy.is_none()
            || matches!(
                (from, t),
                (Sender::Plugin, M::SpdAdd) | (Sender::Daemon, M::SpdDump)
            ),
        "ipc: {t} from the {from} accepted with an X_POLICY"
    );
    assert!(
        !(from == Sender::Daemon && t == M::Acquire && m.header.errno.is_none()),
        "ipc: ACQUIRE from the daemon accepted without an errno"
    );
    assert!(
        !matches!((from, t), (_, M::Unknown(_)) | (Sender::Daemon, M::Expire)),
        "ipc: {t} accepted from the {from}"
    );
}

/// `isecrets.cfg` (`pluto::secrets::Secrets::parse`, includes read from the bench
/// directory), then `find_psk` and `find_with` for pairs of the addresses it lists, checked
/// against the matching rules of the module's documentation.
pub fn secrets(data: &[u8]) {
    // Includes stay inside the bench directory: a file that includes names no other path.
    if data.windows(7).any(|w| w == b"include") && data.contains(&b'/') {
        return;
    }
    let path = daemon::secrets_path();
    let lines = u32::try_from(data.split(|&b| b == b'\n').count()).unwrap_or(u32::MAX);
    let s = match Secrets::parse(data, &path) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.message.is_empty(), "secrets: an error without a message");
            if e.file == path {
                assert!(
                    e.line <= lines,
                    "secrets: error at line {} of {lines}",
                    e.line
                );
            }
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(
        s.files().first(),
        Some(&path),
        "secrets: the top file is not the first read"
    );
    assert_eq!(
        (s.len(), s.is_empty()),
        (s.entries().len(), s.entries().is_empty())
    );
    for e in s.entries() {
        let len = e.secret.as_bytes().len();
        assert!(
            (1..=pluto::secrets::MAX_SECRET_BYTES).contains(&len),
            "secrets: a secret of {len} bytes"
        );
        assert!(
            s.files().contains(&e.file),
            "secrets: an entry from a file not listed"
        );
        assert!(
            e.line >= 1 && (e.file != path || e.line <= lines),
            "secrets: entry at line {}",
            e.line
        );
    }
    secrets_lookups(&s);
}

fn secrets_lookups(s: &Secrets) {
    let mut pool = vec![lab::LOCAL, daemon::PEER, Ipv4Addr::LOCALHOST];
    for e in s.entries() {
        for i in &e.indices {
            if let Index::Addr(a) = i {
                if pool.len() < 5 && !pool.contains(a) {
                    pool.push(*a);
                }
            }
        }
    }
    // Host names resolve to some of the same addresses, chosen by the name.
    let resolve = |h: &str| -> Vec<Ipv4Addr> {
        let n = h.bytes().map(usize::from).sum::<usize>();
        match n % 4 {
            0 => Vec::new(),
            1 => vec![pool[n % pool.len()]],
            2 => vec![pool[0], pool[n % pool.len()]],
            _ => vec![pool[1]],
        }
    };
    let at = |n: Option<usize>| n.map(|n| &s.entries()[n] as *const Entry);
    for &local in &pool {
        for &remote in &pool {
            for dynamic in [None, Some(local)] {
                let want = expected_entry(s, local, remote, dynamic, &|_| Vec::new());
                let got = s.find_psk(local, remote, dynamic);
                assert_eq!(
                    got.map(|x| x as *const _),
                    want.map(|n| &s.entries()[n].secret as *const _),
                    "secrets: find_psk({local}, {remote}, {dynamic:?}) picked entry {:?}, the rules say {:?}",
                    got.and_then(|g| s.entries().iter().position(|e| std::ptr::eq(&e.secret, g))),
                    want
                );
                let mut calls: HashMap<String, u32> = HashMap::new();
                let got = s.find_with(local, remote, dynamic, |h| {
                    *calls.entry(h.to_owned()).or_insert(0) += 1;
                    resolve(h)
                });
                assert!(
                    calls.values().all(|&n| n == 1),
                    "secrets: a host name resolved more than once in one lookup"
                );
                let want = expected_entry(s, local, remote, dynamic, &resolve);
                assert_eq!(
                    got.map(|e| e as *const Entry),
                    at(want),
                    "secrets: find_with({local}, {remote}, {dynamic:?}) picked entry {:?}, the rules say {want:?}",
                    got.and_then(|g| s.entries().iter().position(|e| std::ptr::eq(e, g)))
                );
            }
        }
    }
}

/// The matching rules of `pluto::secrets`' documentation, written out again: each entry
/// gets a rank from 0 to 5, and the first entry of the highest rank above 0 wins.
fn expected_entry(
    s: &Secrets,
    local: Ipv4Addr,
    remote: Ipv4Addr,
    dynamic_local: Option<Ipv4Addr>,
    resolve: &dyn Fn(&str) -> Vec<Ipv4Addr>,
) -> Option<usize> {
    let any = Ipv4Addr::UNSPECIFIED;
    let is_any = |i: &Index| *i == Index::Addr(any);
    let is_local = |i: &Index| match i {
        Index::Addr(a) => {
            *a != any
                && (*a == local || (*a == Ipv4Addr::LOCALHOST && dynamic_local == Some(local)))
        }
        Index::Host(h) => resolve(h).contains(&local),
        Index::Id(_) => false,
    };
    let is_remote = |i: &Index| match i {
        Index::Addr(a) => *a != any && *a == remote,
        Index::Host(h) => resolve(h).contains(&remote),
        Index::Id(_) => false,
    };
    let rank = |indices: &[Index]| -> u8 {
        match indices {
            [] => 1,
            [i] if is_any(i) => 1,
            [i] if is_local(i) => 3,
            [i] if is_remote(i) => 2,
            [_] => 0,
            _ => {
                let (l, r) = (indices.iter().any(is_local), indices.iter().any(is_remote));
                match (l, r, indices.iter().any(is_any)) {
                    (true, true, _) => 5,
                    (true, false, true) => 4,
                    _ => 0,
                }
            }
        }
    };
    let mut best: Option<(u8, usize)> = None;
    for (n, e) in s.entries().iter().enumerate() {
        let r = rank(&e.indices);
        if r > best.map_or(0, |(b, _)| b) {
            best = Some((r, n));
        }
    }
    best.map(|(_, n)| n)
}

/// The keying daemon's core as a responder (`daemon::drive`): the input as one datagram
/// from the peer to port 500, then cut into datagrams at their ISAKMP lengths, each time
/// on a fresh responder followed by its timeouts.
pub fn isakmp(data: &[u8]) {
    daemon::drive(&[data]);
    let parts = daemon::split_datagrams(data);
    if parts.len() > 1 {
        daemon::drive(&parts);
    }
}
