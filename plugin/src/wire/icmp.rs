//! ICMP for IPv4 (RFC 792): echo, which the demos send through the tunnels, and
//! "fragmentation needed" (RFC 1191), which the plugin sends when ESP/AH overhead pushes a
//! DF packet past the path MTU.

use core::fmt;

use super::{checksum, checksum_ok, read_u16, write_u16, Error, Result};

/// Type, code, checksum and the 4-byte rest-of-header every message has.
pub const HEADER_LEN: usize = 8;

/// The code of Destination Unreachable that means "fragmentation needed and DF set".
pub const CODE_FRAG_NEEDED: u8 = 4;

/// ICMP message types (IANA "ICMP Type Numbers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Message {
    EchoReply,
    DstUnreachable,
    Redirect,
    EchoRequest,
    TimeExceeded,
    ParamProblem,
    Unknown(u8),
}

impl From<u8> for Message {
    fn from(value: u8) -> Self {
        match value {
            0 => Message::EchoReply,
            3 => Message::DstUnreachable,
            5 => Message::Redirect,
            8 => Message::EchoRequest,
            11 => Message::TimeExceeded,
            12 => Message::ParamProblem,
            other => Message::Unknown(other),
        }
    }
}

impl From<Message> for u8 {
    fn from(value: Message) -> u8 {
        match value {
            Message::EchoReply => 0,
            Message::DstUnreachable => 3,
            Message::Redirect => 5,
            Message::EchoRequest => 8,
            Message::TimeExceeded => 11,
            Message::ParamProblem => 12,
            Message::Unknown(other) => other,
        }
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::EchoReply => f.write_str("echo reply"),
            Message::DstUnreachable => f.write_str("destination unreachable"),
            Message::Redirect => f.write_str("redirect"),
            Message::EchoRequest => f.write_str("echo request"),
            Message::TimeExceeded => f.write_str("time exceeded"),
            Message::ParamProblem => f.write_str("parameter problem"),
            Message::Unknown(n) => write!(f, "type {n}"),
        }
    }
}

/// A view of an ICMP message (the IP payload when the protocol is 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

//  RFC 792 (echo) and RFC 1191 section 4 (fragmentation needed):
//
//   0                   1                   2                   3
//   0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |     Type      |     Code      |          Checksum             |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |           Identifier          |        Sequence Number        |  echo
//  |           unused = 0          |         Next-Hop MTU          |  type 3 code 4
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |     Data ...  (echo: anything; errors: IP header + 64 bits of the datagram)
//  +-+-+-+-+-
mod field {
    use crate::wire::field::{Field, Rest};

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQ_NO: Field = 6..8;
    pub const UNUSED: Field = 4..6;
    pub const NEXT_HOP_MTU: Field = 6..8;
    pub const DATA: Rest = 8..;
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic if it is shorter than 8 bytes.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps untrusted bytes: the whole buffer is the message, at least the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn msg_type(&self) -> Message {
        Message::from(self.buffer.as_ref()[field::TYPE])
    }

    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    pub fn echo_ident(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::ECHO_IDENT])
    }

    pub fn echo_seq_no(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::ECHO_SEQ_NO])
    }

    /// Meaningful for type 3 code 4 only.
    pub fn next_hop_mtu(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::NEXT_HOP_MTU])
    }

    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA]
    }

    /// The checksum covers the whole message, data included.
    pub fn verify_checksum(&self) -> bool {
        checksum_ok(self.buffer.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_msg_type(&mut self, msg_type: Message) {
        self.buffer.as_mut()[field::TYPE] = msg_type.into();
    }

    pub fn set_code(&mut self, code: u8) {
        self.buffer.as_mut()[field::CODE] = code;
    }

    pub fn set_checksum(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::CHECKSUM], value);
    }

    pub fn set_echo_ident(&mut self, ident: u16) {
        write_u16(&mut self.buffer.as_mut()[field::ECHO_IDENT], ident);
    }

    pub fn set_echo_seq_no(&mut self, seq_no: u16) {
        write_u16(&mut self.buffer.as_mut()[field::ECHO_SEQ_NO], seq_no);
    }

    pub fn set_next_hop_mtu(&mut self, mtu: u16) {
        write_u16(&mut self.buffer.as_mut()[field::NEXT_HOP_MTU], mtu);
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }

    /// Recomputes the checksum over the whole buffer, data included.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let value = checksum(self.buffer.as_ref());
        self.set_checksum(value);
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The ICMP messages the plugin reads and writes; anything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr {
    EchoRequest {
        ident: u16,
        seq_no: u16,
        data_len: usize,
    },
    EchoReply {
        ident: u16,
        seq_no: u16,
        data_len: usize,
    },
    /// Destination Unreachable, code 4. Its data is the offending datagram's IP header and
    /// first 8 payload bytes, which the caller copies in.
    FragNeeded { next_hop_mtu: u16 },
    /// Any other message; `emit` zeroes the rest-of-header, which the caller fills if the
    /// type gives it a meaning.
    Other { msg_type: Message, code: u8 },
}

impl Repr {
    /// Summarises a checked message, refusing a bad checksum as `Malformed`.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        if !packet.verify_checksum() {
            return Err(Error::Malformed);
        }
        Ok(match (packet.msg_type(), packet.code()) {
            (Message::EchoRequest, 0) => Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data_len: packet.data().len(),
            },
            (Message::EchoReply, 0) => Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data_len: packet.data().len(),
            },
            (Message::DstUnreachable, CODE_FRAG_NEEDED) => Repr::FragNeeded {
                next_hop_mtu: packet.next_hop_mtu(),
            },
            (msg_type, code) => Repr::Other { msg_type, code },
        })
    }

    /// Header plus echo data. For `FragNeeded` and `Other` this is the header alone: their
    /// data is not described by the Repr and the caller adds its length.
    pub const fn buffer_len(&self) -> usize {
        match self {
            Repr::EchoRequest { data_len, .. } | Repr::EchoReply { data_len, .. } => {
                HEADER_LEN + *data_len
            }
            Repr::FragNeeded { .. } | Repr::Other { .. } => HEADER_LEN,
        }
    }

    /// Writes the 8-byte header and fills the checksum over the whole buffer as it stands.
    /// Data placed in the buffer after `emit` needs a `fill_checksum()` afterwards.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        match *self {
            Repr::EchoRequest { ident, seq_no, .. } | Repr::EchoReply { ident, seq_no, .. } => {
                let msg_type = match self {
                    Repr::EchoRequest { .. } => Message::EchoRequest,
                    _ => Message::EchoReply,
                };
                packet.set_msg_type(msg_type);
                packet.set_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
            }
            Repr::FragNeeded { next_hop_mtu } => {
                packet.set_msg_type(Message::DstUnreachable);
                packet.set_code(CODE_FRAG_NEEDED);
                write_u16(&mut packet.buffer.as_mut()[field::UNUSED], 0);
                packet.set_next_hop_mtu(next_hop_mtu);
            }
            Repr::Other { msg_type, code } => {
                packet.set_msg_type(msg_type);
                packet.set_code(code);
                write_u16(&mut packet.buffer.as_mut()[field::UNUSED], 0);
                write_u16(&mut packet.buffer.as_mut()[field::NEXT_HOP_MTU], 0);
            }
        }
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4;

    // RFC 3602 section 4, Case #5: the ICMP echo request (ident 0xa70a, seq 0, 56 bytes of
    // data) inside the transport-mode test packet, captured from a real ping.
    #[rustfmt::skip]
    static ECHO_REQUEST: [u8; 64] = [
        0x08, 0x00, 0x0e, 0xbd, 0xa7, 0x0a, 0x00, 0x00, 0x8e, 0x9c, 0x08, 0x3d, 0xb9, 0x5b,
        0x07, 0x00, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13,
        0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21,
        0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f,
        0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37,
    ];

    // RFC 3602 Case #7's inner datagram (IPv4 header + first 8 bytes of its ICMP payload):
    // what a "fragmentation needed" about that datagram quotes.
    #[rustfmt::skip]
    static QUOTED_DATAGRAM: [u8; 28] = [
        0x45, 0x00, 0x00, 0x54, 0x09, 0x04, 0x00, 0x00, 0x40, 0x01, 0xf9, 0x88, 0xc0, 0xa8,
        0x7b, 0x03, 0xc0, 0xa8, 0x7b, 0xc8, 0x08, 0x00, 0x9f, 0x76, 0xa9, 0x0a, 0x01, 0x00,
    ];

    fn echo_request_repr() -> Repr {
        Repr::EchoRequest {
            ident: 0xa70a,
            seq_no: 0,
            data_len: 56,
        }
    }

    #[test]
    fn parse_real_packet() {
        let packet = Packet::new_checked(&ECHO_REQUEST[..]).unwrap();
        assert_eq!(packet.msg_type(), Message::EchoRequest);
        assert_eq!(packet.code(), 0);
        assert_eq!(packet.checksum(), 0x0ebd);
        assert!(packet.verify_checksum());
        assert_eq!(packet.echo_ident(), 0xa70a);
        assert_eq!(packet.echo_seq_no(), 0);
        assert_eq!(packet.data(), &ECHO_REQUEST[8..]);
        assert_eq!(Repr::parse(&packet), Ok(echo_request_repr()));
    }

    #[test]
    fn emit_matches_real_packet() {
        let repr = echo_request_repr();
        assert_eq!(repr.buffer_len(), ECHO_REQUEST.len());
        let mut bytes = [0u8; 64];
        bytes[8..].copy_from_slice(&ECHO_REQUEST[8..]);
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        assert_eq!(bytes, ECHO_REQUEST);
    }

    #[test]
    fn echo_reply_from_request_in_place() {
        let mut bytes = ECHO_REQUEST;
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        Repr::EchoReply {
            ident: 0xa70a,
            seq_no: 0,
            data_len: 56,
        }
        .emit(&mut packet);
        assert!(packet.verify_checksum());
        // Type 8 -> 0 changes the sum by 0x0800: RFC 1624 incremental update of 0x0ebd.
        assert_eq!(packet.checksum(), 0x16bd);
        assert_eq!(
            Repr::parse(&packet),
            Ok(Repr::EchoReply {
                ident: 0xa70a,
                seq_no: 0,
                data_len: 56
            })
        );
    }

    #[test]
    fn reject_every_truncation() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&ECHO_REQUEST[..len]),
                Err(Error::Truncated),
                "{len} bytes"
            );
        }
        // ICMP has no length field: a shorter message is still a message, but its checksum
        // no longer verifies.
        for len in HEADER_LEN..ECHO_REQUEST.len() {
            let packet = Packet::new_checked(&ECHO_REQUEST[..len]).unwrap();
            assert_eq!(Repr::parse(&packet), Err(Error::Malformed), "{len} bytes");
        }
    }

    #[test]
    fn frag_needed_round_trip() {
        let repr = Repr::FragNeeded { next_hop_mtu: 1400 };
        let mut bytes = [0xffu8; 36];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        packet.data_mut().copy_from_slice(&QUOTED_DATAGRAM);
        packet.fill_checksum();
        assert_eq!(&bytes[..2], &[0x03, 0x04]);
        assert_eq!(&bytes[4..8], &[0x00, 0x00, 0x05, 0x78]);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(packet.verify_checksum());
        assert_eq!(packet.next_hop_mtu(), 1400);
        assert_eq!(Repr::parse(&packet), Ok(repr));
        let quoted = ipv4::Packet::new_unchecked(packet.data());
        assert_eq!(
            quoted.dst_addr(),
            std::net::Ipv4Addr::new(192, 168, 123, 200)
        );
        assert_eq!(repr.buffer_len() + QUOTED_DATAGRAM.len(), bytes.len());
    }

    #[test]
    fn other_messages_and_bad_checksum() {
        let repr = Repr::Other {
            msg_type: Message::TimeExceeded,
            code: 0,
        };
        let mut bytes = [0xffu8; 8];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        assert_eq!(Repr::parse(&packet), Ok(repr));
        assert_eq!(u8::from(packet.msg_type()), 11);

        let mut bad = ECHO_REQUEST;
        bad[40] ^= 1;
        let packet = Packet::new_checked(&bad[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Err(Error::Malformed));
    }
}
