//! IPv4 header (RFC 791).

use std::net::Ipv4Addr;

use super::{checksum, checksum_ok, read_u16, write_u16, Error, IpProtocol, Result};

/// Length of a header without options, the only kind `Repr::emit` writes.
pub const HEADER_LEN: usize = 20;

/// A view of an IPv4 datagram: header, options and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

//  RFC 791 section 3.1:
//
//   0                   1                   2                   3
//   0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |Version|  IHL  |Type of Service|          Total Length         |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |         Identification        |Flags|      Fragment Offset    |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |  Time to Live |    Protocol   |         Header Checksum       |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |                       Source Address                          |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |                    Destination Address                        |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |                    Options                    |    Padding    |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Visible to the parent so that AH's mutable-field zeroing uses the same offsets.
pub(super) mod field {
    use crate::wire::field::Field;

    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
}

const FLAG_DONT_FRAG: u16 = 0x4000;
const FLAG_MORE_FRAGS: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic if it is not a valid header.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps untrusted bytes, checking everything the accessors rely on.
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks version, IHL and total length against each other and the buffer. Bytes past
    /// the total length (link-layer padding) are allowed and ignored.
    pub fn check_len(&self) -> Result<()> {
        let buffer_len = self.buffer.as_ref().len();
        if buffer_len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 || self.header_len() < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if self.header_len() > buffer_len {
            return Err(Error::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < self.header_len() {
            return Err(Error::Malformed);
        }
        if total_len > buffer_len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes, options included (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    pub fn total_len(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::LENGTH])
    }

    pub fn ident(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::IDENT])
    }

    pub fn dont_frag(&self) -> bool {
        read_u16(&self.buffer.as_ref()[field::FLG_OFF]) & FLAG_DONT_FRAG != 0
    }

    pub fn more_frags(&self) -> bool {
        read_u16(&self.buffer.as_ref()[field::FLG_OFF]) & FLAG_MORE_FRAGS != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    pub fn frag_offset(&self) -> u16 {
        (read_u16(&self.buffer.as_ref()[field::FLG_OFF]) & FRAG_OFFSET_MASK) * 8
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }

    pub fn checksum(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The options area, padding included (empty for a 20-byte header).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The bytes between the header and the total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }

    pub fn verify_checksum(&self) -> bool {
        checksum_ok(&self.buffer.as_ref()[..self.header_len()])
    }

    /// Whether this datagram is only part of one (first, middle or last fragment).
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (version << 4);
    }

    /// Sets IHL from a length in bytes, which must be a multiple of 4 between 20 and 60.
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((len / 4) as u8 & 0x0f);
    }

    pub fn set_tos(&mut self, tos: u8) {
        self.buffer.as_mut()[field::TOS] = tos;
    }

    pub fn set_total_len(&mut self, len: u16) {
        write_u16(&mut self.buffer.as_mut()[field::LENGTH], len);
    }

    pub fn set_ident(&mut self, ident: u16) {
        write_u16(&mut self.buffer.as_mut()[field::IDENT], ident);
    }

    fn set_flag(&mut self, flag: u16, on: bool) {
        let raw = read_u16(&self.buffer.as_ref()[field::FLG_OFF]);
        let raw = if on { raw | flag } else { raw & !flag };
        write_u16(&mut self.buffer.as_mut()[field::FLG_OFF], raw);
    }

    pub fn set_dont_frag(&mut self, on: bool) {
        self.set_flag(FLAG_DONT_FRAG, on);
    }

    pub fn set_more_frags(&mut self, on: bool) {
        self.set_flag(FLAG_MORE_FRAGS, on);
    }

    /// Sets the fragment offset from a byte count, which must be a multiple of 8.
    pub fn set_frag_offset(&mut self, offset: u16) {
        let raw = read_u16(&self.buffer.as_ref()[field::FLG_OFF]);
        let raw = (raw & !FRAG_OFFSET_MASK) | ((offset / 8) & FRAG_OFFSET_MASK);
        write_u16(&mut self.buffer.as_mut()[field::FLG_OFF], raw);
    }

    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    pub fn set_next_header(&mut self, proto: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = proto.into();
    }

    pub fn set_checksum(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::CHECKSUM], value);
    }

    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Recomputes the header checksum over the header and its options.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let value = checksum(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(value);
    }

    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        &mut self.buffer.as_mut()[range]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// An unfragmented IPv4 header without options: what the plugin emits as a tunnel-mode outer
/// header. Packets whose options or fragmentation matter are handled through `Packet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub next_header: IpProtocol,
    pub payload_len: usize,
    pub ttl: u8,
    pub tos: u8,
    pub ident: u16,
    pub dont_frag: bool,
}

impl Repr {
    /// Summarises a checked packet. Options are dropped (`payload_len` still excludes
    /// them); a fragment is refused as `Malformed` because this Repr cannot say it is one,
    /// and so is a header whose checksum does not verify.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        if !packet.verify_checksum() || packet.is_fragment() {
            return Err(Error::Malformed);
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: packet.payload().len(),
            ttl: packet.ttl(),
            tos: packet.tos(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
        })
    }

    /// Header plus payload: the total length `emit` writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes a 20-byte header with its checksum. `payload_len` must be at most
    /// 65535 − 20; the buffer must hold at least the header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        debug_assert!(self.buffer_len() <= usize::from(u16::MAX));
        packet.set_version(4);
        packet.set_header_len(HEADER_LEN);
        packet.set_tos(self.tos);
        packet.set_total_len(self.buffer_len() as u16);
        packet.set_ident(self.ident);
        write_u16(&mut packet.buffer.as_mut()[field::FLG_OFF], 0);
        packet.set_dont_frag(self.dont_frag);
        packet.set_ttl(self.ttl);
        packet.set_next_header(self.next_header);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 3602 section 4, Case #7: the inner datagram of the tunnel-mode ESP test, an ICMP
    // echo request 192.168.123.3 -> 192.168.123.200 captured on a real network.
    #[rustfmt::skip]
    static ECHO_REQUEST: [u8; 84] = [
        0x45, 0x00, 0x00, 0x54, 0x09, 0x04, 0x00, 0x00, 0x40, 0x01, 0xf9, 0x88, 0xc0, 0xa8,
        0x7b, 0x03, 0xc0, 0xa8, 0x7b, 0xc8, // IPv4 header
        0x08, 0x00, 0x9f, 0x76, 0xa9, 0x0a, 0x01, 0x00, 0xb4, 0x9c, 0x08, 0x3d, 0x02, 0xa2,
        0x04, 0x00, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13,
        0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21,
        0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f,
        0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37,
    ];

    fn echo_request_repr() -> Repr {
        Repr {
            src_addr: Ipv4Addr::new(192, 168, 123, 3),
            dst_addr: Ipv4Addr::new(192, 168, 123, 200),
            next_header: IpProtocol::Icmp,
            payload_len: 64,
            ttl: 64,
            tos: 0,
            ident: 0x0904,
            dont_frag: false,
        }
    }

    #[test]
    fn parse_real_packet() {
        let packet = Packet::new_checked(&ECHO_REQUEST[..]).unwrap();
        assert_eq!(packet.version(), 4);
        assert_eq!(packet.header_len(), 20);
        assert_eq!(packet.total_len(), 84);
        assert_eq!(packet.ident(), 0x0904);
        assert!(!packet.dont_frag());
        assert!(!packet.is_fragment());
        assert_eq!(packet.ttl(), 64);
        assert_eq!(packet.next_header(), IpProtocol::Icmp);
        assert_eq!(packet.checksum(), 0xf988);
        assert!(packet.verify_checksum());
        assert_eq!(packet.options(), &[] as &[u8]);
        assert_eq!(packet.payload(), &ECHO_REQUEST[20..]);
        assert_eq!(Repr::parse(&packet), Ok(echo_request_repr()));
    }

    #[test]
    fn emit_matches_real_packet() {
        let repr = echo_request_repr();
        assert_eq!(repr.buffer_len(), ECHO_REQUEST.len());
        let mut bytes = [0xa5u8; 84];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        packet.payload_mut().copy_from_slice(&ECHO_REQUEST[20..]);
        assert_eq!(bytes, ECHO_REQUEST);
    }

    #[test]
    fn reject_every_truncation() {
        for len in 0..ECHO_REQUEST.len() {
            assert_eq!(
                Packet::new_checked(&ECHO_REQUEST[..len]),
                Err(Error::Truncated),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn trailing_bytes_past_total_length_are_ignored() {
        let mut padded = [0u8; 90];
        padded[..84].copy_from_slice(&ECHO_REQUEST);
        let packet = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(packet.payload(), &ECHO_REQUEST[20..]);
    }

    #[test]
    fn reject_malformed_headers() {
        let mut bad_version = ECHO_REQUEST;
        bad_version[0] = 0x65;
        assert_eq!(Packet::new_checked(&bad_version[..]), Err(Error::Malformed));

        let mut short_ihl = ECHO_REQUEST;
        short_ihl[0] = 0x44;
        assert_eq!(Packet::new_checked(&short_ihl[..]), Err(Error::Malformed));

        let mut ihl_past_buffer = ECHO_REQUEST;
        ihl_past_buffer[0] = 0x4f;
        assert_eq!(
            Packet::new_checked(&ihl_past_buffer[..40]),
            Err(Error::Truncated)
        );

        let mut total_below_header = ECHO_REQUEST;
        total_below_header[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&total_below_header[..]),
            Err(Error::Malformed)
        );

        let mut bad_checksum = ECHO_REQUEST;
        bad_checksum[11] ^= 0xff;
        let packet = Packet::new_checked(&bad_checksum[..]).unwrap();
        assert!(!packet.verify_checksum());
        assert_eq!(Repr::parse(&packet), Err(Error::Malformed));
    }

    #[test]
    fn fragment_fields() {
        let mut bytes = ECHO_REQUEST;
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_more_frags(true);
        packet.set_frag_offset(1480);
        packet.set_dont_frag(false);
        packet.fill_checksum();
        assert!(packet.more_frags());
        assert_eq!(packet.frag_offset(), 1480);
        assert!(packet.is_fragment());
        assert_eq!(Repr::parse(&packet), Err(Error::Malformed));
        packet.set_more_frags(false);
        assert!(packet.is_fragment());
        packet.set_frag_offset(0);
        packet.set_dont_frag(true);
        assert!(!packet.is_fragment());
        assert!(packet.dont_frag());
        assert_eq!(&bytes[6..8], &[0x40, 0x00]);
    }

    #[test]
    fn options_are_part_of_the_header() {
        // 24-byte header: the Router Alert option (RFC 2113) 94 04 00 00.
        let mut bytes = [0u8; 28];
        bytes[..20].copy_from_slice(&ECHO_REQUEST[..20]);
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_header_len(24);
        packet.set_total_len(28);
        packet
            .options_mut()
            .copy_from_slice(&[0x94, 0x04, 0x00, 0x00]);
        packet.payload_mut().copy_from_slice(&[1, 2, 3, 4]);
        packet.fill_checksum();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.header_len(), 24);
        assert_eq!(packet.options(), &[0x94, 0x04, 0x00, 0x00]);
        assert_eq!(packet.payload(), &[1, 2, 3, 4]);
        assert!(packet.verify_checksum());
        assert_eq!(Repr::parse(&packet).map(|r| r.payload_len), Ok(4));
        assert_eq!(Packet::new_checked(&bytes[..23]), Err(Error::Truncated));
    }
}
