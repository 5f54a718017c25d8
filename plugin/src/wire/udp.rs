//! UDP header (RFC 768) and the UDP encapsulation of ESP for NAT traversal (RFC 3948).

use super::{read_u16, write_u16, Error, Result};

pub const HEADER_LEN: usize = 8;

/// The IKE NAT-T port that carries UDP-encapsulated ESP, IKE and keepalives (RFC 3948).
pub const NAT_T_PORT: u16 = 4500;

/// A view of a UDP datagram (the IP payload when the protocol is 17).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

//  RFC 768:
//
//   0      7 8     15 16    23 24    31
//  +--------+--------+--------+--------+
//  |     Source      |   Destination   |
//  |      Port       |      Port       |
//  +--------+--------+--------+--------+
//  |                 |                 |
//  |     Length      |    Checksum     |
//  +--------+--------+--------+--------+
//  |
//  |          data octets ...
//  +---------------- ...
mod field {
    use crate::wire::field::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic if it is not a valid header.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps untrusted bytes, checking that the Length field covers the header and fits in
    /// the buffer (bytes past it are ignored).
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<()> {
        let buffer_len = self.buffer.as_ref().len();
        if buffer_len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = usize::from(self.len());
        if len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len > buffer_len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::SRC_PORT])
    }

    pub fn dst_port(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::DST_PORT])
    }

    /// The Length field: header plus data, in bytes.
    // A field accessor, not a collection size: an `is_empty` would mean nothing here.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::LENGTH])
    }

    /// Zero means "no checksum" over IPv4 (RFC 768).
    pub fn checksum(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(&mut self.buffer.as_mut()[field::SRC_PORT], port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(&mut self.buffer.as_mut()[field::DST_PORT], port);
    }

    pub fn set_len(&mut self, len: u16) {
        write_u16(&mut self.buffer.as_mut()[field::LENGTH], len);
    }

    pub fn set_checksum(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::CHECKSUM], value);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A UDP header as the plugin uses it: the wrapper of NAT-T encapsulated ESP.
///
/// The checksum is not part of it: RFC 3948 section 2.1 has UDP-encapsulated ESP sent with
/// a zero checksum and receivers not depend on it: the ESP ICV protects the contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: usize,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: packet.payload().len(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header with a zero checksum. `payload_len` must be at most 65535 − 8.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        debug_assert!(self.buffer_len() <= usize::from(u16::MAX));
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(self.buffer_len() as u16);
        packet.set_checksum(0);
    }
}

/// What a datagram on the NAT-T port carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatTPayload {
    /// A single 0xFF byte that keeps the NAT mapping open (RFC 3948 section 2.3).
    Keepalive,
    /// An IKE message behind the four-zero-byte non-ESP marker (RFC 3948 section 2.2).
    Ike,
    /// An ESP packet: the SPI, never zero, is where the marker would be.
    Esp,
}

/// Tells keepalives, IKE and ESP apart on the NAT-T port (RFC 3948 sections 2.2, 2.3).
/// ESP must hold at least its SPI and sequence number.
pub fn classify_nat_t(udp_payload: &[u8]) -> Result<NatTPayload> {
    match udp_payload {
        [] => Err(Error::Truncated),
        [0xff] => Ok(NatTPayload::Keepalive),
        [0, 0, 0, 0, ..] => Ok(NatTPayload::Ike),
        _ if udp_payload.len() < super::esp::HEADER_LEN => Err(Error::Truncated),
        _ => Ok(NatTPayload::Esp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::esp;

    // Built by hand from the RFC 768 and RFC 3948 layouts: the ESP packet of RFC 3602
    // Case #5 (SPI 0x4321, seq 1, IV and ciphertext) encapsulated in UDP 4500 -> 4500,
    // Length 8 + 104 = 112, checksum 0 as RFC 3948 section 2.1 asks.
    #[rustfmt::skip]
    static NAT_T_ESP: [u8; 112] = [
        0x11, 0x94, 0x11, 0x94, 0x00, 0x70, 0x00, 0x00, // UDP
        0x00, 0x00, 0x43, 0x21, 0x00, 0x00, 0x00, 0x01, // SPI, sequence number
        0xe9, 0x6e, 0x8c, 0x08, 0xab, 0x46, 0x57, 0x63, 0xfd, 0x09, 0x8d, 0x45, 0xdd, 0x3f,
        0xf8, 0x93, // IV
        0xf6, 0x63, 0xc2, 0x5d, 0x32, 0x5c, 0x18, 0xc6, 0xa9, 0x45, 0x3e, 0x19, 0x4e, 0x12,
        0x08, 0x49, 0xa4, 0x87, 0x0b, 0x66, 0xcc, 0x6b, 0x99, 0x65, 0x33, 0x00, 0x13, 0xb4,
        0x89, 0x8d, 0xc8, 0x56, 0xa4, 0x69, 0x9e, 0x52, 0x3a, 0x55, 0xdb, 0x08, 0x0b, 0x59,
        0xec, 0x3a, 0x8e, 0x4b, 0x7e, 0x52, 0x77, 0x5b, 0x07, 0xd1, 0xdb, 0x34, 0xed, 0x9c,
        0x53, 0x8a, 0xb5, 0x0c, 0x55, 0x1b, 0x87, 0x4a, 0xa2, 0x69, 0xad, 0xd0, 0x47, 0xad,
        0x2d, 0x59, 0x13, 0xac, 0x19, 0xb7, 0xcf, 0xba, 0xd4, 0xa6, // ciphertext
    ];

    fn nat_t_repr() -> Repr {
        Repr {
            src_port: NAT_T_PORT,
            dst_port: NAT_T_PORT,
            payload_len: 104,
        }
    }

    #[test]
    fn parse_real_packet() {
        let packet = Packet::new_checked(&NAT_T_ESP[..]).unwrap();
        assert_eq!(packet.src_port(), 4500);
        assert_eq!(packet.dst_port(), 4500);
        assert_eq!(packet.len(), 112);
        assert_eq!(packet.checksum(), 0);
        assert_eq!(Repr::parse(&packet), Ok(nat_t_repr()));
        assert_eq!(classify_nat_t(packet.payload()), Ok(NatTPayload::Esp));
        let esp = esp::Packet::new_checked(packet.payload()).unwrap();
        assert_eq!(esp.spi(), 0x4321);
        assert_eq!(esp.sequence_number(), 1);
    }

    #[test]
    fn emit_matches_real_packet() {
        let repr = nat_t_repr();
        assert_eq!(repr.buffer_len(), NAT_T_ESP.len());
        let mut bytes = [0xffu8; 112];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        packet.payload_mut().copy_from_slice(&NAT_T_ESP[8..]);
        assert_eq!(bytes, NAT_T_ESP);
    }

    #[test]
    fn reject_every_truncation() {
        for len in 0..NAT_T_ESP.len() {
            assert_eq!(
                Packet::new_checked(&NAT_T_ESP[..len]),
                Err(Error::Truncated),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn length_field_bounds() {
        let mut bytes = [0u8; 120];
        bytes[..112].copy_from_slice(&NAT_T_ESP);
        // Bytes past Length (e.g. Ethernet padding) are not payload.
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.payload(), &NAT_T_ESP[8..]);

        bytes[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(Packet::new_checked(&bytes[..]), Err(Error::Malformed));
        bytes[4..6].copy_from_slice(&8u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&bytes[..]).map(|p| p.payload().len()),
            Ok(0)
        );
    }

    #[test]
    fn classify_nat_t_payloads() {
        assert_eq!(classify_nat_t(&[0xff]), Ok(NatTPayload::Keepalive));
        assert_eq!(classify_nat_t(&[]), Err(Error::Truncated));
        // Non-ESP marker then the start of an IKE header (initiator SPI).
        assert_eq!(
            classify_nat_t(&[0, 0, 0, 0, 0x5f, 0x8c, 0x1a, 0x2b]),
            Ok(NatTPayload::Ike)
        );
        assert_eq!(classify_nat_t(&[0, 0, 0, 0]), Ok(NatTPayload::Ike));
        assert_eq!(classify_nat_t(&NAT_T_ESP[8..]), Ok(NatTPayload::Esp));
        assert_eq!(classify_nat_t(&NAT_T_ESP[8..16]), Ok(NatTPayload::Esp));
        for len in 1..8 {
            assert_eq!(
                classify_nat_t(&NAT_T_ESP[8..8 + len]),
                Err(Error::Truncated),
                "{len}"
            );
        }
        // A lone byte other than 0xff is neither a keepalive nor room for ESP.
        assert_eq!(classify_nat_t(&[0x00]), Err(Error::Truncated));
        assert_eq!(classify_nat_t(&[0xff, 0xff]), Err(Error::Truncated));
        assert_eq!(classify_nat_t(&[0, 0, 0]), Err(Error::Truncated));
    }
}
