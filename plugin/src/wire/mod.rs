//! Zero-copy views of the headers the data plane reads and writes: IPv4, ESP, AH, IPComp,
//! UDP (for NAT-T encapsulation of ESP) and ICMP.
//!
//! Every format follows the same shape (after smoltcp's `wire` module): a `Packet<T>` view
//! over a byte buffer whose `new_checked` is the only way in for untrusted bytes — it checks
//! every length that the accessors rely on, so no accessor panics afterwards — and a `Repr`
//! that is the parsed, owned summary of a header with `parse`, `emit` and `buffer_len`.
//! Nothing here allocates.

#![deny(unsafe_code)]

use core::fmt;

pub mod ah;
pub mod esp;
pub mod icmp;
pub mod ipcomp;
pub mod ipv4;
pub mod udp;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub type Rest = core::ops::RangeFrom<usize>;
}

/// Why a buffer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The buffer ends before a length the header itself announces.
    Truncated,
    /// The bytes are there but cannot be a valid header (bad version, length field smaller
    /// than the header, bad checksum, bad ESP padding, ...).
    Malformed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("truncated packet"),
            Error::Malformed => f.write_str("malformed packet"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = core::result::Result<T, Error>;

/// The IPv4 Protocol / IPsec Next Header number (IANA "Assigned Internet Protocol Numbers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    Icmp,
    Igmp,
    /// IPv4-in-IPv4: what ESP/AH/IPComp carry in tunnel mode.
    IpIp,
    Tcp,
    Udp,
    Esp,
    Ah,
    /// An ESP dummy packet (RFC 4303 section 2.6), to be dropped silently.
    NoNextHeader,
    IpComp,
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(value: u8) -> Self {
        match value {
            1 => IpProtocol::Icmp,
            2 => IpProtocol::Igmp,
            4 => IpProtocol::IpIp,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            50 => IpProtocol::Esp,
            51 => IpProtocol::Ah,
            59 => IpProtocol::NoNextHeader,
            108 => IpProtocol::IpComp,
            other => IpProtocol::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(value: IpProtocol) -> u8 {
        match value {
            IpProtocol::Icmp => 1,
            IpProtocol::Igmp => 2,
            IpProtocol::IpIp => 4,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Esp => 50,
            IpProtocol::Ah => 51,
            IpProtocol::NoNextHeader => 59,
            IpProtocol::IpComp => 108,
            IpProtocol::Unknown(other) => other,
        }
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpProtocol::Icmp => f.write_str("ICMP"),
            IpProtocol::Igmp => f.write_str("IGMP"),
            IpProtocol::IpIp => f.write_str("IPIP"),
            IpProtocol::Tcp => f.write_str("TCP"),
            IpProtocol::Udp => f.write_str("UDP"),
            IpProtocol::Esp => f.write_str("ESP"),
            IpProtocol::Ah => f.write_str("AH"),
            IpProtocol::NoNextHeader => f.write_str("NONE"),
            IpProtocol::IpComp => f.write_str("IPCOMP"),
            IpProtocol::Unknown(n) => write!(f, "proto {n}"),
        }
    }
}

/// The ones-complement sum of `data` as 16-bit big-endian words, folded to 16 bits
/// (RFC 1071 section 4.1; an odd trailing byte is padded with a zero byte).
fn ones_complement_sum(data: &[u8]) -> u16 {
    // A u64 accumulator cannot overflow for any slice that fits in memory, so the carries
    // can be folded once at the end.
    let mut sum: u64 = 0;
    let mut words = data.chunks_exact(2);
    for word in &mut words {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data` (RFC 1071): the value to store in the checksum field,
/// computed with that field set to zero.
pub fn checksum(data: &[u8]) -> u16 {
    !ones_complement_sum(data)
}

/// Whether `data`, checksum field included, sums to all ones as RFC 1071 requires.
pub fn checksum_ok(data: &[u8]) -> bool {
    ones_complement_sum(data) == 0xffff
}

/// (source, destination) ports of a TCP or UDP header at the start of `l4` — both keep them
/// in the first four bytes — for the SPD's port selectors. `None` for other protocols and for
/// fewer than four bytes.
pub fn transport_ports(proto: IpProtocol, l4: &[u8]) -> Option<(u16, u16)> {
    match (proto, l4) {
        (IpProtocol::Tcp | IpProtocol::Udp, [s0, s1, d0, d1, ..]) => Some((
            u16::from_be_bytes([*s0, *s1]),
            u16::from_be_bytes([*d0, *d1]),
        )),
        _ => None,
    }
}

// Big-endian field access for the views. Callers pass ranges that their `new_checked` has
// already proven to be inside the buffer.
fn read_u16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

fn read_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn write_u16(bytes: &mut [u8], value: u16) {
    bytes[..2].copy_from_slice(&value.to_be_bytes());
}

fn write_u32(bytes: &mut [u8], value: u32) {
    bytes[..4].copy_from_slice(&value.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_protocol_numbers_round_trip() {
        for n in 0..=255u8 {
            assert_eq!(u8::from(IpProtocol::from(n)), n);
        }
        assert_eq!(IpProtocol::from(50), IpProtocol::Esp);
        assert_eq!(IpProtocol::from(51), IpProtocol::Ah);
        assert_eq!(IpProtocol::from(108), IpProtocol::IpComp);
        assert_eq!(IpProtocol::from(4), IpProtocol::IpIp);
        assert_eq!(IpProtocol::from(59), IpProtocol::NoNextHeader);
        assert_eq!(IpProtocol::from(200), IpProtocol::Unknown(200));
        assert_eq!(IpProtocol::Esp.to_string(), "ESP");
        assert_eq!(IpProtocol::Unknown(200).to_string(), "proto 200");
    }

    #[test]
    fn checksum_rfc1071_example() {
        // RFC 1071 section 3: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2, so the
        // checksum to store is its complement, 0x220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), 0x220d);
    }

    #[test]
    fn checksum_well_known_ipv4_header() {
        // The worked example of Wikipedia's "Internet checksum" / "IPv4 header checksum"
        // articles (192.168.0.1 -> 192.168.0.199, UDP, total length 0x73): checksum 0xb861.
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header), 0xb861);
        assert!(!checksum_ok(&header));
        header[10..12].copy_from_slice(&[0xb8, 0x61]);
        assert!(checksum_ok(&header));
        header[19] ^= 1;
        assert!(!checksum_ok(&header));
    }

    #[test]
    fn checksum_odd_length_pads_with_zero() {
        assert_eq!(
            checksum(&[0x12, 0x34, 0x56]),
            checksum(&[0x12, 0x34, 0x56, 0x00])
        );
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn transport_ports_of_tcp_and_udp_only() {
        let l4 = [0x11, 0x94, 0x00, 0x50, 0xde, 0xad];
        assert_eq!(transport_ports(IpProtocol::Udp, &l4), Some((4500, 80)));
        assert_eq!(transport_ports(IpProtocol::Tcp, &l4), Some((4500, 80)));
        assert_eq!(transport_ports(IpProtocol::Icmp, &l4), None);
        assert_eq!(transport_ports(IpProtocol::Esp, &l4), None);
        assert_eq!(transport_ports(IpProtocol::Tcp, &l4[..4]), Some((4500, 80)));
        assert_eq!(transport_ports(IpProtocol::Tcp, &l4[..3]), None);
    }
}
