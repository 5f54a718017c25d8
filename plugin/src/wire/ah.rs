//! Authentication Header (RFC 4302) and the IPv4 mutable-field rules its ICV needs.

use super::ipv4::{self, field as ipv4_field};
use super::{read_u32, write_u32, Error, IpProtocol, Result};

/// The fixed part: Next Header, Payload Len, Reserved, SPI, Sequence Number.
pub const HEADER_LEN: usize = 12;

/// A view of an AH header and what follows it (the IP payload when the protocol is 51).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

//  RFC 4302 section 2:
//
//   0                   1                   2                   3
//   0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  | Next Header   |  Payload Len  |          RESERVED             |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |                 Security Parameters Index (SPI)               |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |                    Sequence Number Field                      |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |                                                               |
//  +                Integrity Check Value-ICV (variable)           |
//  |                                                               |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Payload Len is the AH length in 32-bit words minus 2.
mod field {
    use crate::wire::field::Field;

    pub const NEXT_HEADER: usize = 0;
    pub const PAYLOAD_LEN: usize = 1;
    pub const RESERVED: Field = 2..4;
    pub const SPI: Field = 4..8;
    pub const SEQUENCE_NUMBER: Field = 8..12;
    pub const ICV_START: usize = 12;
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic if it is not a valid header.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps untrusted bytes, checking that the header length announced by Payload Len is
    /// at least the fixed part and fits in the buffer.
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
        if self.header_len() < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if self.header_len() > buffer_len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::NEXT_HEADER])
    }

    /// The raw Payload Len field (32-bit words minus 2).
    pub fn payload_len(&self) -> u8 {
        self.buffer.as_ref()[field::PAYLOAD_LEN]
    }

    /// The AH length in bytes, ICV included.
    pub fn header_len(&self) -> usize {
        (usize::from(self.payload_len()) + 2) * 4
    }

    pub fn spi(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::SPI])
    }

    pub fn sequence_number(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::SEQUENCE_NUMBER])
    }

    /// The ICV field, including any padding to the 32-bit boundary.
    pub fn icv(&self) -> &[u8] {
        &self.buffer.as_ref()[field::ICV_START..self.header_len()]
    }

    /// The protected payload after the AH header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_next_header(&mut self, proto: IpProtocol) {
        self.buffer.as_mut()[field::NEXT_HEADER] = proto.into();
    }

    pub fn set_payload_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::PAYLOAD_LEN] = value;
    }

    /// Sets Payload Len from a header length in bytes (a multiple of 4, 12 to 1028).
    pub fn set_header_len(&mut self, len: usize) {
        self.set_payload_len((len / 4).saturating_sub(2) as u8);
    }

    pub fn set_spi(&mut self, spi: u32) {
        write_u32(&mut self.buffer.as_mut()[field::SPI], spi);
    }

    pub fn set_sequence_number(&mut self, seq: u32) {
        write_u32(&mut self.buffer.as_mut()[field::SEQUENCE_NUMBER], seq);
    }

    pub fn icv_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[field::ICV_START..end]
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// An AH header. `icv_len` is the ICV length of the SA's integrity algorithm (12 for the
/// HMAC-*-96 algorithms, 16 for HMAC-SHA-256-128); the field is padded to 4 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub next_header: IpProtocol,
    pub spi: u32,
    pub sequence_number: u32,
    pub icv_len: usize,
}

impl Repr {
    /// `icv_len` comes back as the whole ICV field, padding included.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        Ok(Repr {
            next_header: packet.next_header(),
            spi: packet.spi(),
            sequence_number: packet.sequence_number(),
            icv_len: packet.icv().len(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.icv_len.div_ceil(4) * 4
    }

    /// Writes the header with a zero Reserved field and a zero ICV field, which is what the
    /// ICV is computed over (RFC 4302 section 3.3.3.1); the caller then fills `icv_mut()`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_next_header(self.next_header);
        packet.set_header_len(self.buffer_len());
        packet.buffer.as_mut()[field::RESERVED].fill(0);
        packet.set_spi(self.spi);
        packet.set_sequence_number(self.sequence_number);
        packet.icv_mut().fill(0);
    }
}

// IPv4 option types (copy bit, class and number together) that RFC 4302 Appendix A.1 lists
// as immutable and so covers by the ICV. Every other option is mutable or unknown and is
// zeroed whole.
const OPT_END_OF_LIST: u8 = 0;
const OPT_NO_OPERATION: u8 = 1;
const IMMUTABLE_OPTIONS: [u8; 5] = [
    0x82, // Security (RFC 1108)
    0x85, // Extended Security (RFC 1108)
    0x86, // Commercial Security
    0x94, // Router Alert (RFC 2113)
    0x95, // Sender Directed Multi-Destination Delivery (RFC 1770)
];

/// Prepares a copy of an IPv4 header (options included) for the AH ICV: zeroes TOS, flags
/// and fragment offset, TTL, header checksum, and every option that RFC 4302 Appendix A.1
/// does not list as immutable — type and length included. A malformed option list has its
/// remainder zeroed, since no one can tell which of its bytes a router may change.
///
/// The options area ends at IHL × 4 or at the end of `header`, whichever comes first; a
/// slice shorter than 20 bytes is left alone (it is not a header, and the ICV check fails).
pub fn zero_mutable_ipv4_fields(header: &mut [u8]) {
    if header.len() < ipv4::HEADER_LEN {
        return;
    }
    header[ipv4_field::TOS] = 0;
    header[ipv4_field::FLG_OFF].fill(0);
    header[ipv4_field::TTL] = 0;
    header[ipv4_field::CHECKSUM].fill(0);

    let options_end = ipv4::Packet::new_unchecked(&*header)
        .header_len()
        .clamp(ipv4::HEADER_LEN, header.len());
    zero_mutable_options(&mut header[ipv4::HEADER_LEN..options_end]);
}

fn zero_mutable_options(options: &mut [u8]) {
    let mut at = 0;
    while at < options.len() {
        let kind = options[at];
        match kind {
            // What follows End of Option List is header padding, which nothing en route
            // rewrites, so it stays covered.
            OPT_END_OF_LIST => return,
            OPT_NO_OPERATION => {
                at += 1;
                continue;
            }
            _ => {}
        }
        let len = match options.get(at + 1) {
            Some(&len) if len >= 2 && at + usize::from(len) <= options.len() => usize::from(len),
            _ => {
                options[at..].fill(0);
                return;
            }
        };
        if !IMMUTABLE_OPTIONS.contains(&kind) {
            options[at..at + len].fill(0);
        }
        at += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Built by hand from the RFC 791 and RFC 4302 layouts: transport-mode AH from
    // 192.168.123.3 to 192.168.123.100 (ident 0x08f2, TTL 64, protocol 51) protecting the
    // ICMP echo request of RFC 3602 Case #5. SPI 0x1000, sequence number 1, a 12-byte ICV
    // (HMAC-SHA1-96 size; the bytes a0..ab are placeholders, not a computed HMAC), so Payload
    // Len = 24 / 4 - 2 = 4. The IPv4 checksum 0xf9b4 was computed with an independent tool.
    #[rustfmt::skip]
    static AH_PACKET: [u8; 108] = [
        0x45, 0x00, 0x00, 0x6c, 0x08, 0xf2, 0x00, 0x00, 0x40, 0x33, 0xf9, 0xb4, 0xc0, 0xa8,
        0x7b, 0x03, 0xc0, 0xa8, 0x7b, 0x64, // IPv4
        0x01, 0x04, 0x00, 0x00, // Next Header ICMP, Payload Len 4, Reserved
        0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x01, // SPI, sequence number
        0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, // ICV
        0x08, 0x00, 0x0e, 0xbd, 0xa7, 0x0a, 0x00, 0x00, 0x8e, 0x9c, 0x08, 0x3d, 0xb9, 0x5b,
        0x07, 0x00, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13,
        0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21,
        0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f,
        0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, // ICMP echo request
    ];

    fn ah_bytes() -> &'static [u8] {
        &AH_PACKET[ipv4::HEADER_LEN..]
    }

    fn ah_repr() -> Repr {
        Repr {
            next_header: IpProtocol::Icmp,
            spi: 0x1000,
            sequence_number: 1,
            icv_len: 12,
        }
    }

    #[test]
    fn parse_real_packet() {
        let ip = ipv4::Packet::new_checked(&AH_PACKET[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.next_header(), IpProtocol::Ah);
        let packet = Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(packet.next_header(), IpProtocol::Icmp);
        assert_eq!(packet.payload_len(), 4);
        assert_eq!(packet.header_len(), 24);
        assert_eq!(packet.spi(), 0x1000);
        assert_eq!(packet.sequence_number(), 1);
        assert_eq!(packet.icv(), &ah_bytes()[12..24]);
        assert_eq!(packet.payload(), &ah_bytes()[24..]);
        assert_eq!(Repr::parse(&packet), Ok(ah_repr()));
    }

    #[test]
    fn emit_matches_real_packet() {
        let repr = ah_repr();
        assert_eq!(repr.buffer_len(), 24);
        let mut bytes = [0xffu8; 88];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        assert!(packet.icv().iter().all(|&b| b == 0));
        packet.icv_mut().copy_from_slice(&ah_bytes()[12..24]);
        packet.payload_mut().copy_from_slice(&ah_bytes()[24..]);
        assert_eq!(&bytes[..], ah_bytes());
    }

    #[test]
    fn reject_every_truncation() {
        let ah = ah_bytes();
        for len in 0..24 {
            assert_eq!(
                Packet::new_checked(&ah[..len]),
                Err(Error::Truncated),
                "{len} bytes"
            );
        }
        // From the end of the ICV on, the header is complete; the payload is the IP layer's.
        for len in 24..=ah.len() {
            assert!(Packet::new_checked(&ah[..len]).is_ok(), "{len} bytes");
        }
    }

    #[test]
    fn reject_header_shorter_than_fixed_part() {
        let mut bytes = [0u8; 24];
        bytes.copy_from_slice(&ah_bytes()[..24]);
        bytes[1] = 0; // 8 bytes: no room for the sequence number
        assert_eq!(Packet::new_checked(&bytes[..]), Err(Error::Malformed));
        bytes[1] = 1; // 12 bytes: an empty ICV is well-formed
        assert_eq!(
            Packet::new_checked(&bytes[..]).map(|p| p.icv().len()),
            Ok(0)
        );
    }

    #[test]
    fn icv_field_is_padded_to_32_bits() {
        for (icv_len, buffer_len, payload_len) in
            [(0, 12, 1), (12, 24, 4), (16, 28, 5), (10, 24, 4)]
        {
            let repr = Repr {
                icv_len,
                ..ah_repr()
            };
            assert_eq!(repr.buffer_len(), buffer_len);
            let mut bytes = [0xffu8; 28];
            let mut packet = Packet::new_unchecked(&mut bytes[..]);
            repr.emit(&mut packet);
            assert_eq!(packet.payload_len(), payload_len);
            assert_eq!(packet.header_len(), buffer_len);
            assert_eq!(&bytes[2..4], &[0, 0]);
        }
    }

    // A 36-byte IPv4 header with options NOP, Router Alert (94 04 00 00) and a Record Route
    // with room for two addresses, one already recorded (07 0b 08 | 192.168.123.1 | 0.0.0.0).
    #[rustfmt::skip]
    fn header_with_options() -> [u8; 36] {
        [
            0x49, 0xb8, 0x00, 0x6c, 0x08, 0xf2, 0x60, 0x10, 0x3f, 0x33, 0x12, 0x34, 0xc0, 0xa8,
            0x7b, 0x03, 0xc0, 0xa8, 0x7b, 0x64, // IHL 9, DSCP EF, DF+MF, offset, TTL 63
            0x01, // NOP
            0x94, 0x04, 0x00, 0x00, // Router Alert
            0x07, 0x0b, 0x08, 0xc0, 0xa8, 0x7b, 0x01, 0x00, 0x00, 0x00, 0x00, // Record Route
        ]
    }

    #[test]
    fn zeroing_keeps_router_alert_and_clears_record_route() {
        let mut header = header_with_options();
        zero_mutable_ipv4_fields(&mut header);
        #[rustfmt::skip]
        let expected = [
            0x49, 0x00, 0x00, 0x6c, 0x08, 0xf2, 0x00, 0x00, 0x00, 0x33, 0x00, 0x00, 0xc0, 0xa8,
            0x7b, 0x03, 0xc0, 0xa8, 0x7b, 0x64, // TOS, flags+offset, TTL, checksum zeroed
            0x01, // NOP kept
            0x94, 0x04, 0x00, 0x00, // Router Alert kept
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // Record Route zeroed whole
        ];
        assert_eq!(header, expected);
    }

    #[test]
    fn zeroing_other_options() {
        // Security (RFC 1108, 82 0b ...) stays; Loose Source Route (83) and Timestamp (44)
        // are zeroed; after End of Option List the padding stays.
        #[rustfmt::skip]
        let options: [u8; 24] = [
            0x82, 0x0b, 0xab, 0xcd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // Security
            0x83, 0x07, 0x04, 0x0a, 0x00, 0x00, 0x01, // LSRR
            0x44, 0x04, 0x05, 0x00, // Timestamp, no room
            0x00, 0x00, // EOL, padding
        ];
        let mut header = [0u8; 44];
        header[..20].copy_from_slice(&header_with_options()[..20]);
        header[0] = 0x4b;
        header[20..].copy_from_slice(&options);
        zero_mutable_ipv4_fields(&mut header);
        assert_eq!(&header[20..31], &options[..11]);
        assert!(header[31..42].iter().all(|&b| b == 0));

        let mut after_eol = header_with_options();
        after_eol[20] = 0x00; // EOL: the rest is padding, whatever it holds
        zero_mutable_ipv4_fields(&mut after_eol);
        assert_eq!(&after_eol[21..], &header_with_options()[21..]);
    }

    #[test]
    fn zeroing_malformed_option_list_clears_the_rest() {
        // Record Route claiming 0x20 bytes in an 11-byte remainder.
        let mut overlong = header_with_options();
        overlong[26] = 0x20;
        zero_mutable_ipv4_fields(&mut overlong);
        assert_eq!(&overlong[20..25], &[0x01, 0x94, 0x04, 0x00, 0x00]);
        assert!(overlong[25..].iter().all(|&b| b == 0));

        // A length below 2 could never advance; an immutable type does not save it.
        let mut too_short = header_with_options();
        too_short[22] = 0x01;
        zero_mutable_ipv4_fields(&mut too_short);
        assert_eq!(too_short[20], 0x01);
        assert!(too_short[21..].iter().all(|&b| b == 0));

        // A type byte with no length byte after it.
        let mut no_length = header_with_options();
        no_length[21..35].fill(0x01);
        no_length[35] = 0x94;
        zero_mutable_ipv4_fields(&mut no_length);
        assert!(no_length[21..35].iter().all(|&b| b == 0x01));
        assert_eq!(no_length[35], 0);
    }

    #[test]
    fn zeroing_stops_at_ihl_and_ignores_non_headers() {
        // Payload after the header is not options, even when the slice includes it.
        let mut packet = AH_PACKET;
        zero_mutable_ipv4_fields(&mut packet);
        assert_eq!(&packet[20..], &AH_PACKET[20..]);
        assert_eq!(packet[8], 0);

        let mut short = [0x45u8; 19];
        zero_mutable_ipv4_fields(&mut short);
        assert_eq!(short, [0x45u8; 19]);
    }
}
