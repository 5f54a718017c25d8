//! ESP header and trailer (RFC 4303).
//!
//! Only the SPI and sequence number are in clear; the rest of the packet is ciphertext and
//! ICV whose layout depends on the SA's transform. The `Trailer` is read from and written to
//! the plaintext, after decryption / before encryption.

use super::{read_u32, write_u32, Error, IpProtocol, Result};

/// SPI and sequence number.
pub const HEADER_LEN: usize = 8;

/// A view of an ESP packet (the IP payload when the protocol is 50).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

//  RFC 4303 section 2:
//
//   0                   1                   2                   3
//   0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ ----
//  |               Security Parameters Index (SPI)                 | ^Int.
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ |Cov-
//  |                      Sequence Number                          | |ered
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ | ----
//  |                    Payload Data* (variable)                   | |   ^
//  ~                                                               ~ |   |
//  |                                                               | |Conf.
//  +               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ |Cov-
//  |               |     Padding (0-255 bytes)                     | |ered*
//  +-+-+-+-+-+-+-+-+               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ |   |
//  |                               |  Pad Length   | Next Header   | v   v
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ ------
//  |         Integrity Check Value-ICV   (variable)                |
//  ~                                                               ~
//  |                                                               |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
mod field {
    use crate::wire::field::{Field, Rest};

    pub const SPI: Field = 0..4;
    pub const SEQUENCE_NUMBER: Field = 4..8;
    pub const PAYLOAD: Rest = 8..;
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic if it is shorter than 8 bytes.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps untrusted bytes. Only the 8-byte header is checked here: how much IV, ciphertext
    /// and ICV must follow is known only to the SA's transform.
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

    pub fn spi(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::SPI])
    }

    pub fn sequence_number(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::SEQUENCE_NUMBER])
    }

    /// Everything after the header: IV, ciphertext and ICV.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_spi(&mut self, spi: u32) {
        write_u32(&mut self.buffer.as_mut()[field::SPI], spi);
    }

    pub fn set_sequence_number(&mut self, seq: u32) {
        write_u32(&mut self.buffer.as_mut()[field::SEQUENCE_NUMBER], seq);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The clear part of an ESP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub spi: u32,
    pub sequence_number: u32,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        Ok(Repr {
            spi: packet.spi(),
            sequence_number: packet.sequence_number(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_spi(self.spi);
        packet.set_sequence_number(self.sequence_number);
    }
}

/// The ESP trailer at the end of the plaintext: padding, Pad Length, Next Header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub pad_len: u8,
    pub next_header: IpProtocol,
}

impl Trailer {
    /// Reads the trailer from the end of a decrypted payload and checks the padding.
    ///
    /// RFC 4303 section 2.4: padding from the default scheme is the byte sequence 1, 2, 3, ...
    /// and the receiver checks it; any other content is `Malformed` (a wrong key or a
    /// tampered packet under an integrity-less SA usually shows up here).
    pub fn parse(plaintext: &[u8]) -> Result<Trailer> {
        let [.., pad_len, next_header] = *plaintext else {
            return Err(Error::Truncated);
        };
        let pad_end = plaintext.len() - 2;
        let pad_start = pad_end
            .checked_sub(usize::from(pad_len))
            .ok_or(Error::Truncated)?;
        let padding = &plaintext[pad_start..pad_end];
        if padding
            .iter()
            .zip(1..=u8::MAX)
            .any(|(&byte, expected)| byte != expected)
        {
            return Err(Error::Malformed);
        }
        Ok(Trailer {
            pad_len,
            next_header: IpProtocol::from(next_header),
        })
    }

    /// Padding plus the two trailer bytes: how much to strip from the end of the plaintext.
    pub const fn buffer_len(&self) -> usize {
        self.pad_len as usize + 2
    }

    /// Writes padding 1..=pad_len, Pad Length and Next Header into the last
    /// `buffer_len()` bytes of `tail`.
    ///
    /// # Panics
    /// If `tail` is shorter than `buffer_len()`; the caller sizes it from `pad_len_for`.
    pub fn emit(&self, tail: &mut [u8]) {
        let start = tail.len() - self.buffer_len();
        let (padding, fields) = tail[start..].split_at_mut(usize::from(self.pad_len));
        for (byte, value) in padding.iter_mut().zip(1..=u8::MAX) {
            *byte = value;
        }
        fields[0] = self.pad_len;
        fields[1] = self.next_header.into();
    }
}

/// The smallest padding that makes `payload_len + padding + 2` (payload plus trailer) a
/// multiple of `align`, the cipher's block size.
///
/// `align` is raised to at least 4, because RFC 4303 section 2.4 requires the trailer to end
/// on a 4-byte boundary even for stream ciphers and AEADs, and capped at 256 so that the
/// padding fits the one-byte Pad Length (ESP block sizes are at most 16).
pub fn pad_len_for(payload_len: usize, align: usize) -> u8 {
    let align = align.clamp(4, 256);
    let rem = (payload_len + 2) % align;
    ((align - rem) % align) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4;

    // RFC 3602 section 4, Case #5 (transport-mode ESP, AES-128-CBC, SPI 0x4321, seq 1):
    // the ciphertext packet, outer IPv4 header then SPI, sequence number, 16-byte IV and
    // 80 bytes of ciphertext (no ICV in this test case).
    #[rustfmt::skip]
    static CASE5_PACKET: [u8; 124] = [
        0x45, 0x00, 0x00, 0x7c, 0x08, 0xf2, 0x00, 0x00, 0x40, 0x32, 0xf9, 0xa5, 0xc0, 0xa8,
        0x7b, 0x03, 0xc0, 0xa8, 0x7b, 0x64, // IPv4, protocol 50
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

    // RFC 3602 Case #5, "Plaintext": the ICMP echo request, padding 01..0e, Pad Length 14,
    // Next Header 1 (ICMP).
    #[rustfmt::skip]
    static CASE5_PLAINTEXT: [u8; 80] = [
        0x08, 0x00, 0x0e, 0xbd, 0xa7, 0x0a, 0x00, 0x00, 0x8e, 0x9c, 0x08, 0x3d, 0xb9, 0x5b,
        0x07, 0x00, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13,
        0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21,
        0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f,
        0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, // ICMP echo request, 64 bytes
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
        0x0e, 0x01,
    ];

    // RFC 3602 Case #6, "Plaintext": a 28-byte ICMP echo request, padding 01 02, Pad Length
    // 2, Next Header 1.
    #[rustfmt::skip]
    static CASE6_PLAINTEXT: [u8; 32] = [
        0x08, 0x00, 0xb5, 0xe8, 0xa8, 0x0a, 0x05, 0x00, 0xa6, 0x9c, 0x08, 0x3d, 0x0b, 0x66,
        0x0e, 0x00, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77,
        0x01, 0x02, 0x02, 0x01,
    ];

    fn esp_bytes() -> &'static [u8] {
        &CASE5_PACKET[ipv4::HEADER_LEN..]
    }

    #[test]
    fn parse_real_packet() {
        let ip = ipv4::Packet::new_checked(&CASE5_PACKET[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.next_header(), IpProtocol::Esp);
        let packet = Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(packet.spi(), 0x4321);
        assert_eq!(packet.sequence_number(), 1);
        assert_eq!(packet.payload().len(), 16 + 80);
        assert_eq!(packet.payload(), &esp_bytes()[8..]);
        assert_eq!(
            Repr::parse(&packet),
            Ok(Repr {
                spi: 0x4321,
                sequence_number: 1
            })
        );
    }

    #[test]
    fn emit_matches_real_packet() {
        let repr = Repr {
            spi: 0x4321,
            sequence_number: 1,
        };
        assert_eq!(repr.buffer_len(), HEADER_LEN);
        let mut bytes = [0xffu8; 104];
        bytes[8..].copy_from_slice(&esp_bytes()[8..]);
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        assert_eq!(&bytes[..], esp_bytes());
    }

    #[test]
    fn reject_every_truncation() {
        let esp = esp_bytes();
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&esp[..len]),
                Err(Error::Truncated),
                "{len} bytes"
            );
        }
        // The header alone is a valid view; the transform judges the rest.
        for len in HEADER_LEN..=esp.len() {
            assert!(Packet::new_checked(&esp[..len]).is_ok(), "{len} bytes");
        }
    }

    #[test]
    fn trailer_parse_rfc3602_plaintexts() {
        let trailer = Trailer::parse(&CASE5_PLAINTEXT).unwrap();
        assert_eq!(
            trailer,
            Trailer {
                pad_len: 14,
                next_header: IpProtocol::Icmp
            }
        );
        assert_eq!(CASE5_PLAINTEXT.len() - trailer.buffer_len(), 64);

        let trailer = Trailer::parse(&CASE6_PLAINTEXT).unwrap();
        assert_eq!(
            trailer,
            Trailer {
                pad_len: 2,
                next_header: IpProtocol::Icmp
            }
        );
        assert_eq!(CASE6_PLAINTEXT.len() - trailer.buffer_len(), 28);
    }

    #[test]
    fn trailer_emit_round_trip() {
        let mut plaintext = [0u8; 80];
        plaintext[..64].copy_from_slice(&CASE5_PLAINTEXT[..64]);
        let trailer = Trailer {
            pad_len: pad_len_for(64, 16),
            next_header: IpProtocol::Icmp,
        };
        trailer.emit(&mut plaintext);
        assert_eq!(plaintext, CASE5_PLAINTEXT);
        assert_eq!(Trailer::parse(&plaintext), Ok(trailer));

        // Largest padding the field allows, into a longer buffer: only the tail is written.
        let mut tail = [0xeeu8; 300];
        let trailer = Trailer {
            pad_len: 255,
            next_header: IpProtocol::IpIp,
        };
        trailer.emit(&mut tail);
        assert!(tail[..43].iter().all(|&b| b == 0xee));
        assert_eq!(tail[43], 1);
        assert_eq!(tail[297], 255);
        assert_eq!(&tail[298..], &[255, 4]);
        assert_eq!(Trailer::parse(&tail), Ok(trailer));

        let mut bare = [0u8; 2];
        let trailer = Trailer {
            pad_len: 0,
            next_header: IpProtocol::NoNextHeader,
        };
        trailer.emit(&mut bare);
        assert_eq!(bare, [0, 59]);
        assert_eq!(Trailer::parse(&bare), Ok(trailer));
    }

    #[test]
    fn trailer_rejects_bad_padding() {
        for i in 64..78 {
            let mut plaintext = CASE5_PLAINTEXT;
            plaintext[i] ^= 0x40;
            assert_eq!(
                Trailer::parse(&plaintext),
                Err(Error::Malformed),
                "byte {i}"
            );
        }
        // Zero padding is not the default scheme, so it is refused too.
        let mut zero_padded = CASE6_PLAINTEXT;
        zero_padded[28..30].fill(0);
        assert_eq!(Trailer::parse(&zero_padded), Err(Error::Malformed));
    }

    #[test]
    fn trailer_rejects_short_plaintext() {
        assert_eq!(Trailer::parse(&[]), Err(Error::Truncated));
        assert_eq!(Trailer::parse(&[0]), Err(Error::Truncated));
        assert_eq!(Trailer::parse(&[1, 4]), Err(Error::Truncated));
        assert_eq!(Trailer::parse(&[1, 2, 3, 4]), Err(Error::Truncated));
        assert_eq!(
            Trailer::parse(&[1, 1, 4]),
            Ok(Trailer {
                pad_len: 1,
                next_header: IpProtocol::IpIp
            })
        );
        // Every suffix of a valid plaintext shorter than its trailer is refused.
        for start in 65..=80 {
            assert_eq!(
                Trailer::parse(&CASE5_PLAINTEXT[start..]),
                Err(Error::Truncated),
                "suffix from {start}"
            );
        }
    }

    #[test]
    fn padding_for_block_sizes() {
        // RFC 3602 Cases #5 and #6 with AES (16-byte blocks).
        assert_eq!(pad_len_for(64, 16), 14);
        assert_eq!(pad_len_for(28, 16), 2);
        assert_eq!(pad_len_for(14, 16), 0);
        assert_eq!(pad_len_for(15, 16), 15);
        assert_eq!(pad_len_for(0, 16), 14);
        // DES/3DES (8-byte blocks).
        assert_eq!(pad_len_for(64, 8), 6);
        assert_eq!(pad_len_for(28, 8), 2);
        assert_eq!(pad_len_for(30, 8), 0);
        assert_eq!(pad_len_for(31, 8), 7);
        // AEAD / NULL: 4-byte alignment only.
        assert_eq!(pad_len_for(64, 4), 2);
        assert_eq!(pad_len_for(62, 4), 0);
        assert_eq!(pad_len_for(63, 4), 3);
        assert_eq!(pad_len_for(63, 1), 3);
        for align in [4usize, 8, 16] {
            for len in 0..100 {
                let pad = usize::from(pad_len_for(len, align));
                assert!(pad < align);
                assert_eq!((len + pad + 2) % align, 0);
            }
        }
    }
}
