//! The ISAKMP header (RFC 2408 §3.1).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! !                          Initiator Cookie                     !
//! !                                                               !
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! !                          Responder Cookie                     !
//! !                                                               !
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! !  Next Payload ! MjVer ! MnVer ! Exchange Type !     Flags     !
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! !                          Message ID                           !
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! !                            Length                             !
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use super::{be32, need, ExchangeType, PayloadType, WireError};

mod field {
    use std::ops::Range;

    pub const ICOOKIE: Range<usize> = 0..8;
    pub const RCOOKIE: Range<usize> = 8..16;
    pub const NEXT_PAYLOAD: usize = 16;
    pub const VERSION: usize = 17;
    pub const EXCHANGE: usize = 18;
    pub const FLAGS: usize = 19;
    pub const MESSAGE_ID: Range<usize> = 20..24;
    pub const LENGTH: Range<usize> = 24..28;
}

pub const HEADER_LEN: usize = 28;

/// ISAKMP version 1.0, the only one IKEv1 speaks.
const VERSION_1_0: u8 = 0x10;

/// The header flags (RFC 2408 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    pub const ENCRYPTION: u8 = 0x01;
    pub const COMMIT: u8 = 0x02;
    pub const AUTH_ONLY: u8 = 0x04;

    pub fn encrypted(self) -> bool {
        self.0 & Flags::ENCRYPTION != 0
    }

    pub fn commit(self) -> bool {
        self.0 & Flags::COMMIT != 0
    }
}

/// A read-only view of an ISAKMP header over untrusted bytes.
#[derive(Debug, Clone, Copy)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// The only door for untrusted bytes: the buffer holds the whole header, and the Length
    /// field covers the header and no more than the buffer (a longer datagram is cut to it).
    pub fn new_checked(buffer: T) -> Result<Header<T>, WireError> {
        let data = buffer.as_ref();
        need("ISAKMP header", data, HEADER_LEN)?;
        let header = Header { buffer };
        let length = header.length() as usize;
        let got = header.buffer.as_ref().len();
        if length < HEADER_LEN {
            return Err(WireError::BadLength {
                what: "ISAKMP message",
                length,
            });
        }
        if length > got {
            return Err(WireError::Truncated {
                what: "ISAKMP message",
                needed: length,
                got,
            });
        }
        Ok(header)
    }

    fn data(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn initiator_cookie(&self) -> [u8; 8] {
        let mut c = [0; 8];
        c.copy_from_slice(&self.data()[field::ICOOKIE]);
        c
    }

    pub fn responder_cookie(&self) -> [u8; 8] {
        let mut c = [0; 8];
        c.copy_from_slice(&self.data()[field::RCOOKIE]);
        c
    }

    pub fn next_payload(&self) -> PayloadType {
        PayloadType::from(self.data()[field::NEXT_PAYLOAD])
    }

    pub fn version(&self) -> u8 {
        self.data()[field::VERSION]
    }

    pub fn exchange(&self) -> ExchangeType {
        ExchangeType::from(self.data()[field::EXCHANGE])
    }

    pub fn flags(&self) -> Flags {
        Flags(self.data()[field::FLAGS])
    }

    pub fn message_id(&self) -> u32 {
        be32(&self.data()[field::MESSAGE_ID])
    }

    pub fn length(&self) -> u32 {
        be32(&self.data()[field::LENGTH])
    }

    /// The payload bytes, plaintext or ciphertext, up to the Length field.
    pub fn body(&self) -> &[u8] {
        &self.data()[HEADER_LEN..self.length() as usize]
    }
}

/// The header's fields, for building messages and for matching them to exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRepr {
    pub initiator_cookie: [u8; 8],
    pub responder_cookie: [u8; 8],
    pub next_payload: PayloadType,
    pub exchange: ExchangeType,
    pub flags: Flags,
    pub message_id: u32,
    /// The whole message, header included.
    pub length: u32,
}

impl HeaderRepr {
    /// Refuses any major version but 1 (RFC 2408 §5.2: INVALID-MAJOR-VERSION); the minor
    /// version is ignored, as Pluto does.
    pub fn parse<T: AsRef<[u8]>>(header: &Header<T>) -> Result<HeaderRepr, WireError> {
        if header.version() >> 4 != VERSION_1_0 >> 4 {
            return Err(WireError::BadValue {
                what: "ISAKMP major version",
                value: u32::from(header.version() >> 4),
            });
        }
        Ok(HeaderRepr {
            initiator_cookie: header.initiator_cookie(),
            responder_cookie: header.responder_cookie(),
            next_payload: header.next_payload(),
            exchange: header.exchange(),
            flags: header.flags(),
            message_id: header.message_id(),
            length: header.length(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.initiator_cookie);
        out.extend_from_slice(&self.responder_cookie);
        out.push(self.next_payload.into());
        out.push(VERSION_1_0);
        out.push(self.exchange.into());
        out.push(self.flags.0);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HeaderRepr {
        HeaderRepr {
            initiator_cookie: [1, 2, 3, 4, 5, 6, 7, 8],
            responder_cookie: [9; 8],
            next_payload: PayloadType::Hash,
            exchange: ExchangeType::QuickMode,
            flags: Flags(Flags::ENCRYPTION),
            message_id: 0xdead_beef,
            length: 28,
        }
    }

    #[test]
    fn emit_then_parse() {
        let mut buf = Vec::new();
        sample().emit(&mut buf);
        assert_eq!(buf.len(), HEADER_LEN);
        assert_eq!(&buf[16..20], &[8, 0x10, 32, 1]);
        let h = Header::new_checked(&buf[..]).unwrap();
        assert_eq!(HeaderRepr::parse(&h).unwrap(), sample());
        assert!(h.body().is_empty());
    }

    #[test]
    fn every_truncation_is_refused() {
        let mut buf = Vec::new();
        HeaderRepr {
            length: 32,
            ..sample()
        }
        .emit(&mut buf);
        buf.extend_from_slice(&[0; 4]);
        for len in 0..buf.len() {
            assert!(Header::new_checked(&buf[..len]).is_err(), "length {len}");
        }
        assert_eq!(Header::new_checked(&buf[..]).unwrap().body().len(), 4);
    }

    #[test]
    fn length_field_is_checked() {
        let mut buf = Vec::new();
        HeaderRepr {
            length: 27,
            ..sample()
        }
        .emit(&mut buf);
        assert_eq!(
            Header::new_checked(&buf[..]).unwrap_err(),
            WireError::BadLength {
                what: "ISAKMP message",
                length: 27
            }
        );
        // A datagram longer than the Length field is cut to it.
        buf[27] = 28;
        buf.extend_from_slice(&[0xAA; 3]);
        assert!(Header::new_checked(&buf[..]).unwrap().body().is_empty());
    }

    #[test]
    fn ikev2_is_refused() {
        let mut buf = Vec::new();
        sample().emit(&mut buf);
        buf[17] = 0x20;
        let h = Header::new_checked(&buf[..]).unwrap();
        assert!(matches!(
            HeaderRepr::parse(&h),
            Err(WireError::BadValue { .. })
        ));
    }
}
