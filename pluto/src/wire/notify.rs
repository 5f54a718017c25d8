//! Notification and Delete payloads (RFC 2408 §3.14, §3.15).
//!
//! ```text
//! Notification body: DOI (4) | Protocol-ID (1) | SPI Size (1) | Notify Message Type (2)
//!                    | SPI (SPI Size) | Notification Data...
//! Delete body:       DOI (4) | Protocol-Id (1) | SPI Size (1) | # of SPIs (2)
//!                    | SPIs (SPI Size each)
//! ```

use super::{be16, be32, need, NotifyType, ProtocolId, WireError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyRepr {
    pub doi: u32,
    pub protocol: ProtocolId,
    pub kind: NotifyType,
    /// For ISAKMP, the two cookies (16 bytes) or empty.
    pub spi: Vec<u8>,
    pub data: Vec<u8>,
}

impl NotifyRepr {
    pub fn parse(body: &[u8]) -> Result<NotifyRepr, WireError> {
        need("notification payload", body, 8)?;
        let spi_len = usize::from(body[5]);
        need("notification SPI", body, 8 + spi_len)?;
        Ok(NotifyRepr {
            doi: be32(&body[0..4]),
            protocol: body[4].into(),
            kind: be16(&body[6..8]).into(),
            spi: body[8..8 + spi_len].to_vec(),
            data: body[8 + spi_len..].to_vec(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        8 + self.spi.len() + self.data.len()
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.doi.to_be_bytes());
        out.push(self.protocol.into());
        out.push(self.spi.len() as u8);
        out.extend_from_slice(&u16::from(self.kind).to_be_bytes());
        out.extend_from_slice(&self.spi);
        out.extend_from_slice(&self.data);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buffer_len());
        self.emit(&mut out);
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRepr {
    pub doi: u32,
    pub protocol: ProtocolId,
    /// 16 for ISAKMP (the cookies), 4 for AH and ESP, 2 for IPComp.
    pub spi_size: u8,
    pub spis: Vec<Vec<u8>>,
}

impl DeleteRepr {
    pub fn parse(body: &[u8]) -> Result<DeleteRepr, WireError> {
        need("delete payload", body, 8)?;
        let spi_size = body[5];
        let count = usize::from(be16(&body[6..8]));
        let size = usize::from(spi_size);
        if size == 0 {
            return Err(WireError::BadValue {
                what: "delete SPI size",
                value: 0,
            });
        }
        let spis = &body[8..];
        if spis.len() != size * count {
            return Err(WireError::BadLength {
                what: "SPIs of a delete payload",
                length: spis.len(),
            });
        }
        Ok(DeleteRepr {
            doi: be32(&body[0..4]),
            protocol: body[4].into(),
            spi_size,
            spis: spis.chunks(size).map(<[u8]>::to_vec).collect(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        8 + self.spis.len() * usize::from(self.spi_size)
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.doi.to_be_bytes());
        out.push(self.protocol.into());
        out.push(self.spi_size);
        out.extend_from_slice(&(self.spis.len() as u16).to_be_bytes());
        for spi in &self.spis {
            out.extend_from_slice(spi);
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buffer_len());
        self.emit(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::DOI_IPSEC;

    #[test]
    fn notification_round_trips_and_truncations_fail() {
        let n = NotifyRepr {
            doi: DOI_IPSEC,
            protocol: ProtocolId::Isakmp,
            kind: NotifyType::InvalidHashInformation,
            spi: vec![7; 16],
            data: b"x".to_vec(),
        };
        let bytes = n.to_bytes();
        assert_eq!(&bytes[..8], &[0, 0, 0, 1, 1, 16, 0, 23]);
        assert_eq!(NotifyRepr::parse(&bytes).unwrap(), n);
        // Everything shorter than DOI..SPI fails; shorter data is just less data.
        for len in 0..8 + 16 {
            assert!(NotifyRepr::parse(&bytes[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn delete_round_trips_and_truncations_fail() {
        let d = DeleteRepr {
            doi: DOI_IPSEC,
            protocol: ProtocolId::Esp,
            spi_size: 4,
            spis: vec![vec![0, 0, 0x10, 0], vec![0, 0, 0x10, 1]],
        };
        let bytes = d.to_bytes();
        assert_eq!(bytes.len(), d.buffer_len());
        assert_eq!(DeleteRepr::parse(&bytes).unwrap(), d);
        for len in 0..bytes.len() {
            assert!(DeleteRepr::parse(&bytes[..len]).is_err(), "length {len}");
        }
        let mut zero = bytes.clone();
        zero[5] = 0;
        assert!(DeleteRepr::parse(&zero).is_err());
    }
}
