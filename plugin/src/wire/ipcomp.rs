//! IP Payload Compression header (RFC 3173).

use super::{read_u16, write_u16, Error, IpProtocol, Result};

pub const HEADER_LEN: usize = 4;

/// The well-known CPI of the DEFLATE algorithm (RFC 2407 section 4.4.5, IPCOMP_DEFLATE),
/// used when the CPI is not negotiated.
pub const CPI_DEFLATE: u16 = 2;

/// A view of an IPComp header and the compressed payload after it (the IP payload when the
/// protocol is 108).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

//  RFC 3173 section 2.2:
//
//   0                   1                   2                   3
//   0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |  Next Header  |     Flags     |  Compression Parameter Index  |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
mod field {
    use crate::wire::field::{Field, Rest};

    pub const NEXT_HEADER: usize = 0;
    pub const FLAGS: usize = 1;
    pub const CPI: Field = 2..4;
    pub const PAYLOAD: Rest = 4..;
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic if it is shorter than 4 bytes.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

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

    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::NEXT_HEADER])
    }

    /// Reserved: sent as zero, ignored on receipt (RFC 3173 section 2.2).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn cpi(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::CPI])
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_next_header(&mut self, proto: IpProtocol) {
        self.buffer.as_mut()[field::NEXT_HEADER] = proto.into();
    }

    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    pub fn set_cpi(&mut self, cpi: u16) {
        write_u16(&mut self.buffer.as_mut()[field::CPI], cpi);
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub next_header: IpProtocol,
    pub cpi: u16,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        Ok(Repr {
            next_header: packet.next_header(),
            cpi: packet.cpi(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_next_header(self.next_header);
        packet.set_flags(0);
        packet.set_cpi(self.cpi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4;

    // Built by hand from the RFC 791 and RFC 3173 layouts: tunnel-mode IPComp from
    // 192.168.123.3 to 192.168.123.100 (ident 0x08f2, TTL 64, protocol 108), Next Header 4
    // (IPv4), CPI 2 (DEFLATE), carrying the 68-byte inner datagram of RFC 3602 Case #8
    // compressed to 40 bytes of raw DEFLATE (RFC 2394; zlib level 9, window bits -15).
    // The IPv4 checksum 0xf9a7 was computed with an independent tool.
    #[rustfmt::skip]
    static IPCOMP_PACKET: [u8; 64] = [
        0x45, 0x00, 0x00, 0x40, 0x08, 0xf2, 0x00, 0x00, 0x40, 0x6c, 0xf9, 0xa7, 0xc0, 0xa8,
        0x7b, 0x03, 0xc0, 0xa8, 0x7b, 0x64, // IPv4
        0x04, 0x00, 0x00, 0x02, // Next Header IPv4, Flags, CPI 2
        0x73, 0x65, 0x60, 0x70, 0xe1, 0xe4, 0x61, 0x60, 0x70, 0x60, 0xfc, 0x39, 0xe1, 0xc0,
        0x8a, 0x6a, 0x66, 0x20, 0x3e, 0xc1, 0xc1, 0x70, 0xcd, 0x66, 0x15, 0x17, 0x13, 0xc3,
        0xb1, 0x39, 0x1c, 0xb6, 0x8b, 0xef, 0x31, 0x33, 0xfc, 0x27, 0x00, 0x00, // DEFLATE
    ];

    fn ipcomp_bytes() -> &'static [u8] {
        &IPCOMP_PACKET[ipv4::HEADER_LEN..]
    }

    #[test]
    fn parse_real_packet() {
        let ip = ipv4::Packet::new_checked(&IPCOMP_PACKET[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.next_header(), IpProtocol::IpComp);
        let packet = Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(packet.next_header(), IpProtocol::IpIp);
        assert_eq!(packet.flags(), 0);
        assert_eq!(packet.cpi(), CPI_DEFLATE);
        assert_eq!(packet.payload().len(), 40);
        assert_eq!(
            Repr::parse(&packet),
            Ok(Repr {
                next_header: IpProtocol::IpIp,
                cpi: CPI_DEFLATE
            })
        );
    }

    #[test]
    fn emit_matches_real_packet() {
        let repr = Repr {
            next_header: IpProtocol::IpIp,
            cpi: CPI_DEFLATE,
        };
        assert_eq!(repr.buffer_len(), HEADER_LEN);
        let mut bytes = [0xffu8; 44];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        packet.payload_mut().copy_from_slice(&ipcomp_bytes()[4..]);
        assert_eq!(&bytes[..], ipcomp_bytes());
    }

    #[test]
    fn reject_every_truncation() {
        let ipcomp = ipcomp_bytes();
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&ipcomp[..len]),
                Err(Error::Truncated),
                "{len} bytes"
            );
        }
        // The compressed payload has no length of its own; the decompressor judges it.
        for len in HEADER_LEN..=ipcomp.len() {
            assert!(Packet::new_checked(&ipcomp[..len]).is_ok(), "{len} bytes");
        }
    }

    #[test]
    fn reserved_flags_are_ignored_on_receipt() {
        let mut bytes = [0u8; 44];
        bytes.copy_from_slice(ipcomp_bytes());
        bytes[1] = 0xff;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.flags(), 0xff);
        assert_eq!(Repr::parse(&packet).map(|r| r.cpi), Ok(CPI_DEFLATE));
    }
}
