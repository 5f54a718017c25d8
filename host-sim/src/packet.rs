//! Test traffic (IPv4 with ICMP echo, UDP, TCP) and a one-line, tcpdump-like description of
//! what can be seen of a packet on the wire, through nested ESP/AH/IPComp/IP-in-IP.

use std::net::Ipv4Addr;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ESP: u8 = 50;
pub const PROTO_AH: u8 = 51;
pub const PROTO_IPCOMP: u8 = 108;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// RFC 3948 UDP encapsulation of ESP.
const NAT_T_PORT: u16 = 4500;

/// The Internet checksum (RFC 1071) over `parts` taken as one byte string of even-length
/// pieces (all but the last).
fn inet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet (no options, DF clear, TTL 64) around `payload`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[8] = 64;
    p[9] = protocol;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let checksum = inet_checksum(&[&p]);
    p[10..12].copy_from_slice(&checksum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn pattern(len: usize, seed: u16) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u16).wrapping_add(seed) as u8)
        .collect()
}

/// An ICMP echo request (`reply == false`) or reply with a 56-byte payload, like ping.
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, reply: bool, ident: u16, seq: u16) -> Vec<u8> {
    let mut icmp = vec![
        if reply {
            ICMP_ECHO_REPLY
        } else {
            ICMP_ECHO_REQUEST
        },
        0,
        0,
        0,
    ];
    icmp.extend_from_slice(&ident.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend(pattern(56, seq));
    let checksum = inet_checksum(&[&icmp]);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    ipv4(src, dst, PROTO_ICMP, seq, &icmp)
}

/// The checksum of a TCP or UDP segment with its IPv4 pseudo-header (RFC 793, RFC 768).
fn transport_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let len = (segment.len() as u16).to_be_bytes();
    let pseudo = [
        &src.octets()[..],
        &dst.octets()[..],
        &[0, protocol],
        &len[..],
    ]
    .concat();
    inet_checksum(&[&pseudo, segment])
}

/// A UDP datagram carrying `payload_len` bytes.
pub fn udp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload_len: usize,
    id: u16,
) -> Vec<u8> {
    let mut seg = Vec::with_capacity(8 + payload_len);
    seg.extend_from_slice(&sport.to_be_bytes());
    seg.extend_from_slice(&dport.to_be_bytes());
    seg.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    seg.extend_from_slice(&[0, 0]);
    seg.extend(pattern(payload_len, id));
    let checksum = match transport_checksum(src, dst, PROTO_UDP, &seg) {
        0 => 0xffff, // RFC 768: a computed zero is sent as all ones
        c => c,
    };
    seg[6..8].copy_from_slice(&checksum.to_be_bytes());
    ipv4(src, dst, PROTO_UDP, id, &seg)
}

/// A TCP segment (20-byte header, ACK|PSH) carrying `payload_len` bytes; there is no
/// connection behind it, it only has the shape.
pub fn tcp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload_len: usize,
    id: u16,
) -> Vec<u8> {
    let mut seg = vec![0u8; 20];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&dport.to_be_bytes());
    seg[4..8].copy_from_slice(&(u32::from(id) * 1000).to_be_bytes());
    seg[8..12].copy_from_slice(&1u32.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = 0x18; // ACK | PSH
    seg[14..16].copy_from_slice(&65535u16.to_be_bytes());
    seg.extend(pattern(payload_len, id));
    let checksum = transport_checksum(src, dst, PROTO_TCP, &seg);
    seg[16..18].copy_from_slice(&checksum.to_be_bytes());
    ipv4(src, dst, PROTO_TCP, id, &seg)
}

/// A packet of some other protocol, for bundles that select it by number.
pub fn other(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload_len: usize, id: u16) -> Vec<u8> {
    ipv4(src, dst, protocol, id, &pattern(payload_len, id))
}

/// Source and destination of an IPv4 packet.
pub fn addresses(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let h = packet.get(..20)?;
    (h[0] >> 4 == 4).then(|| {
        (
            Ipv4Addr::new(h[12], h[13], h[14], h[15]),
            Ipv4Addr::new(h[16], h[17], h[18], h[19]),
        )
    })
}

/// `192.0.2.1 > 192.0.2.2: ESP(spi=0x00001001,seq=1) len 1092`
pub fn describe(packet: &[u8]) -> String {
    match describe_ipv4(packet) {
        Some((text, total)) => format!("{text} len {total}"),
        None => format!("not IPv4 ({} bytes)", packet.len()),
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn describe_ipv4(packet: &[u8]) -> Option<(String, u16)> {
    let (src, dst) = addresses(packet)?;
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let total = be16(packet, 2)?;
    let end = usize::from(total).clamp(header_len.min(packet.len()), packet.len());
    let payload = packet.get(header_len..end)?;
    let fragment = be16(packet, 6)? & 0x1fff != 0;
    let body = if fragment {
        format!("fragment (proto {})", packet[9])
    } else {
        describe_payload(packet[9], payload)
    };
    Some((format!("{src} > {dst}: {body}"), total))
}

/// What can be seen of an upper-layer payload; nested headers separated by spaces.
fn describe_payload(protocol: u8, data: &[u8]) -> String {
    let short = |name: &str| format!("{name} (truncated, {} bytes)", data.len());
    match protocol {
        PROTO_ESP => match (be32(data, 0), be32(data, 4)) {
            (Some(spi), Some(seq)) => format!("ESP(spi=0x{spi:08x},seq={seq})"),
            _ => short("ESP"),
        },
        PROTO_AH => {
            // RFC 4302 2.2: the payload length counts 32-bit words minus 2.
            let (Some(&next), Some(&len), Some(spi), Some(seq)) =
                (data.first(), data.get(1), be32(data, 4), be32(data, 8))
            else {
                return short("AH");
            };
            let ah_len = (usize::from(len) + 2) * 4;
            let inner = data
                .get(ah_len..)
                .map_or_else(|| short("AH body"), |rest| describe_payload(next, rest));
            format!("AH(spi=0x{spi:08x},seq={seq}) {inner}")
        }
        PROTO_IPCOMP => match (data.first(), be16(data, 2)) {
            // The rest is compressed: nothing more to see.
            (Some(&next), Some(cpi)) => format!("IPComp(cpi=0x{cpi:04x},next={next})"),
            _ => short("IPComp"),
        },
        PROTO_IPIP => match describe_ipv4(data) {
            Some((inner, _)) => format!("IP {inner}"),
            None => short("IP-in-IP"),
        },
        PROTO_ICMP => match (data.first(), data.get(1), be16(data, 4), be16(data, 6)) {
            (Some(&ICMP_ECHO_REQUEST), _, Some(id), Some(seq)) => {
                format!("ICMP echo request, id {id}, seq {seq}")
            }
            (Some(&ICMP_ECHO_REPLY), _, Some(id), Some(seq)) => {
                format!("ICMP echo reply, id {id}, seq {seq}")
            }
            (Some(&kind), Some(&code), _, _) => format!("ICMP type {kind} code {code}"),
            _ => short("ICMP"),
        },
        PROTO_UDP => match (be16(data, 0), be16(data, 2)) {
            (Some(NAT_T_PORT), Some(NAT_T_PORT)) if be32(data, 8).is_some_and(|m| m != 0) => {
                format!(
                    "UDP {NAT_T_PORT} > {NAT_T_PORT} {}",
                    describe_payload(PROTO_ESP, &data[8..])
                )
            }
            (Some(sport), Some(dport)) => format!("UDP {sport} > {dport}"),
            _ => short("UDP"),
        },
        PROTO_TCP => match (be16(data, 0), be16(data, 2)) {
            (Some(sport), Some(dport)) => format!("TCP {sport} > {dport}"),
            _ => short("TCP"),
        },
        other => format!("proto {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    #[test]
    fn built_packets_have_valid_checksums_and_lengths() {
        let echo = icmp_echo(A, B, false, 7, 1);
        assert_eq!(echo.len(), 20 + 8 + 56);
        assert_eq!(inet_checksum(&[&echo[..20]]), 0, "IPv4 header checksum");
        assert_eq!(inet_checksum(&[&echo[20..]]), 0, "ICMP checksum");

        let u = udp(A, B, 1024, 5001, 1000, 2);
        assert_eq!(u.len(), 20 + 8 + 1000);
        assert_eq!(transport_checksum(A, B, PROTO_UDP, &u[20..]), 0);

        let t = tcp(A, B, 1024, 80, 300, 3);
        assert_eq!(t.len(), 20 + 20 + 300);
        assert_eq!(transport_checksum(A, B, PROTO_TCP, &t[20..]), 0);
    }

    #[test]
    fn the_rfc_1071_example_sums_right() {
        // RFC 1071 section 3: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
        assert_eq!(
            inet_checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]),
            !0xddf2
        );
    }

    #[test]
    fn describes_cleartext() {
        assert_eq!(
            describe(&icmp_echo(A, B, false, 7, 1)),
            "192.0.2.1 > 192.0.2.2: ICMP echo request, id 7, seq 1 len 84"
        );
        assert_eq!(
            describe(&icmp_echo(B, A, true, 7, 1)),
            "192.0.2.2 > 192.0.2.1: ICMP echo reply, id 7, seq 1 len 84"
        );
        assert_eq!(
            describe(&udp(A, B, 1024, 5001, 1000, 1)),
            "192.0.2.1 > 192.0.2.2: UDP 1024 > 5001 len 1028"
        );
        assert_eq!(
            describe(&tcp(A, B, 1024, 80, 300, 1)),
            "192.0.2.1 > 192.0.2.2: TCP 1024 > 80 len 340"
        );
        assert_eq!(
            describe(&other(A, B, 47, 10, 1)),
            "192.0.2.1 > 192.0.2.2: proto 47 len 30"
        );
        assert_eq!(describe(&[0x60, 0, 0]), "not IPv4 (3 bytes)");
    }

    #[test]
    fn describes_nested_ipsec_headers() {
        let inner = icmp_echo(
            Ipv4Addr::new(10, 1, 0, 1),
            Ipv4Addr::new(10, 2, 0, 1),
            false,
            1,
            9,
        );
        let mut esp = vec![0, 0, 0x10, 0x01, 0, 0, 0, 1];
        esp.extend_from_slice(&[0xaa; 40]);
        let mut ah = vec![PROTO_ESP, 4, 0, 0, 0, 0, 0x02, 0x00, 0, 0, 0, 3];
        ah.extend_from_slice(&[0; 12]); // 96-bit ICV: (3 + 3) words - 2 = 4
        ah.extend_from_slice(&esp);
        let wire = ipv4(A, B, PROTO_AH, 1, &ah);
        assert_eq!(
            describe(&wire),
            format!(
                "192.0.2.1 > 192.0.2.2: AH(spi=0x00000200,seq=3) ESP(spi=0x00001001,seq=1) len {}",
                wire.len()
            )
        );

        let mut ah_tunnel = vec![PROTO_IPIP, 4, 0, 0, 0, 0, 0x02, 0x01, 0, 0, 0, 1];
        ah_tunnel.extend_from_slice(&[0; 12]);
        ah_tunnel.extend_from_slice(&inner);
        let wire = ipv4(A, B, PROTO_AH, 2, &ah_tunnel);
        assert_eq!(
            describe(&wire),
            format!(
                "192.0.2.1 > 192.0.2.2: AH(spi=0x00000201,seq=1) IP 10.1.0.1 > 10.2.0.1: ICMP echo request, id 1, seq 9 len {}",
                wire.len()
            )
        );

        let ipcomp = ipv4(
            A,
            B,
            PROTO_IPCOMP,
            3,
            &[PROTO_ICMP, 0, 0x01, 0x10, 0x55, 0x66],
        );
        assert_eq!(
            describe(&ipcomp),
            "192.0.2.1 > 192.0.2.2: IPComp(cpi=0x0110,next=1) len 26"
        );

        let mut natt = vec![0x11, 0x94, 0x11, 0x94, 0, 20, 0, 0];
        natt.extend_from_slice(&esp[..12]);
        assert_eq!(
            describe(&ipv4(A, B, PROTO_UDP, 4, &natt)),
            "192.0.2.1 > 192.0.2.2: UDP 4500 > 4500 ESP(spi=0x00001001,seq=1) len 40"
        );
    }

    #[test]
    fn truncated_headers_are_described_not_trusted() {
        let wire = ipv4(A, B, PROTO_ESP, 1, &[0, 0, 0x10]);
        assert_eq!(
            describe(&wire),
            "192.0.2.1 > 192.0.2.2: ESP (truncated, 3 bytes) len 23"
        );
        let wire = ipv4(
            A,
            B,
            PROTO_AH,
            1,
            &[PROTO_ESP, 200, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1],
        );
        assert!(
            describe(&wire).contains("AH(spi=0x00000200,seq=1) AH body (truncated"),
            "{}",
            describe(&wire)
        );
        for cut in 0..40 {
            let wire = tcp(A, B, 1, 2, 20, 1);
            describe(&wire[..cut]); // must not panic
        }
    }
}
