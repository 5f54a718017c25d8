//! Security Association, Proposal and Transform payloads and their data attributes
//! (RFC 2408 §3.3-3.6, RFC 2407 §4.6.1).
//!
//! ```text
//! SA body:        DOI (4) | Situation (4) | Proposal payloads...
//! Proposal body:  Proposal # (1) | Protocol-Id (1) | SPI Size (1) | # of Transforms (1)
//!                 | SPI (SPI Size) | Transform payloads...
//! Transform body: Transform # (1) | Transform-Id (1) | RESERVED2 (2) | SA Attributes...
//! Attribute:      A|Attribute Type (2) | Attribute Value (2)            (A = 1, basic)
//!                 0|Attribute Type (2) | Length (2) | Value (Length)    (A = 0, variable)
//! ```
//!
//! Transform-Ids and attribute types depend on the proposal's protocol and on the phase,
//! so they stay numbers here; `crate::proposal` gives them meaning.

use super::payload::{emit_chain, parse_chain};
use super::{be16, be32, need, PayloadType, ProtocolId, WireError, SIT_IDENTITY_ONLY};

const ATTR_BASIC: u16 = 0x8000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    Basic(u16),
    Variable(Vec<u8>),
}

/// A data attribute; `kind` without the format bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub kind: u16,
    pub value: AttrValue,
}

impl Attribute {
    pub fn basic(kind: impl Into<u16>, value: impl Into<u16>) -> Attribute {
        Attribute {
            kind: kind.into() & !ATTR_BASIC,
            value: AttrValue::Basic(value.into()),
        }
    }

    /// Life durations may exceed 16 bits; RFC 2407 §4.5 lets either form carry them, and
    /// the basic form is what Pluto sends when the value fits.
    pub fn number(kind: impl Into<u16>, value: u32) -> Attribute {
        match u16::try_from(value) {
            Ok(v) => Attribute::basic(kind, v),
            Err(_) => Attribute {
                kind: kind.into() & !ATTR_BASIC,
                value: AttrValue::Variable(value.to_be_bytes().to_vec()),
            },
        }
    }

    /// The value as a number: basic values, and variable ones of up to 8 bytes.
    pub fn as_number(&self) -> Option<u64> {
        match &self.value {
            AttrValue::Basic(v) => Some(u64::from(*v)),
            AttrValue::Variable(bytes) if bytes.len() <= 8 => {
                Some(bytes.iter().fold(0u64, |n, &b| n << 8 | u64::from(b)))
            }
            AttrValue::Variable(_) => None,
        }
    }

    pub fn buffer_len(&self) -> usize {
        match &self.value {
            AttrValue::Basic(_) => 4,
            AttrValue::Variable(v) => 4 + v.len(),
        }
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        match &self.value {
            AttrValue::Basic(v) => {
                out.extend_from_slice(&(self.kind | ATTR_BASIC).to_be_bytes());
                out.extend_from_slice(&v.to_be_bytes());
            }
            AttrValue::Variable(v) => {
                out.extend_from_slice(&self.kind.to_be_bytes());
                out.extend_from_slice(&(v.len() as u16).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }

    /// Parses the attributes filling `data`.
    pub fn parse_all(mut data: &[u8]) -> Result<Vec<Attribute>, WireError> {
        let mut attrs = Vec::new();
        while !data.is_empty() {
            need("data attribute", data, 4)?;
            let kind = be16(&data[0..2]);
            let word = be16(&data[2..4]);
            if kind & ATTR_BASIC != 0 {
                attrs.push(Attribute {
                    kind: kind & !ATTR_BASIC,
                    value: AttrValue::Basic(word),
                });
                data = &data[4..];
            } else {
                let len = usize::from(word);
                need("variable data attribute", data, 4 + len)?;
                attrs.push(Attribute {
                    kind,
                    value: AttrValue::Variable(data[4..4 + len].to_vec()),
                });
                data = &data[4 + len..];
            }
        }
        Ok(attrs)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformRepr {
    pub number: u8,
    /// A Transform-Id of the enclosing proposal's protocol.
    pub id: u8,
    pub attributes: Vec<Attribute>,
}

impl TransformRepr {
    pub fn parse(body: &[u8]) -> Result<TransformRepr, WireError> {
        need("transform payload", body, 4)?;
        Ok(TransformRepr {
            number: body[0],
            id: body[1],
            attributes: Attribute::parse_all(&body[4..])?,
        })
    }

    /// The first attribute of a type.
    pub fn attribute(&self, kind: impl Into<u16>) -> Option<&Attribute> {
        let kind = kind.into();
        self.attributes.iter().find(|a| a.kind == kind)
    }

    pub fn buffer_len(&self) -> usize {
        4 + self
            .attributes
            .iter()
            .map(Attribute::buffer_len)
            .sum::<usize>()
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.number, self.id, 0, 0]);
        for a in &self.attributes {
            a.emit(out);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposalRepr {
    /// Proposal payloads with the same number form one proposal (AH and ESP together).
    pub number: u8,
    pub protocol: ProtocolId,
    /// Empty for ISAKMP in phase 1; the CPI (2 bytes) for IPComp.
    pub spi: Vec<u8>,
    pub transforms: Vec<TransformRepr>,
}

impl ProposalRepr {
    pub fn parse(body: &[u8]) -> Result<ProposalRepr, WireError> {
        need("proposal payload", body, 4)?;
        let spi_len = usize::from(body[2]);
        let count = body[3];
        need("proposal SPI", body, 4 + spi_len)?;
        let chain =
            parse_chain(PayloadType::Transform, &body[4 + spi_len..]).map_err(|e| e.error)?;
        if chain.end != body.len() - 4 - spi_len {
            return Err(WireError::BadLength {
                what: "transforms of a proposal",
                length: chain.end,
            });
        }
        let mut transforms = Vec::with_capacity(chain.payloads.len());
        for p in &chain.payloads {
            if p.kind != PayloadType::Transform {
                return Err(WireError::BadValue {
                    what: "payload type inside a proposal",
                    value: u8::from(p.kind).into(),
                });
            }
            transforms.push(TransformRepr::parse(p.body)?);
        }
        if transforms.len() != usize::from(count) {
            return Err(WireError::BadValue {
                what: "number of transforms",
                value: count.into(),
            });
        }
        Ok(ProposalRepr {
            number: body[0],
            protocol: body[1].into(),
            spi: body[4..4 + spi_len].to_vec(),
            transforms,
        })
    }

    /// The SPI as a number: 4-byte SPIs, and 2-byte CPIs (or 4-byte ones with the CPI in
    /// the low 16 bits, RFC 2407 §4.4.5).
    pub fn spi_number(&self) -> Option<u32> {
        match self.spi.len() {
            2 => Some(u32::from(be16(&self.spi))),
            4 => Some(be32(&self.spi)),
            _ => None,
        }
    }

    pub fn buffer_len(&self) -> usize {
        4 + self.spi.len()
            + self
                .transforms
                .iter()
                .map(|t| 4 + t.buffer_len())
                .sum::<usize>()
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[
            self.number,
            self.protocol.into(),
            self.spi.len() as u8,
            self.transforms.len() as u8,
        ]);
        out.extend_from_slice(&self.spi);
        let bodies: Vec<Vec<u8>> = self
            .transforms
            .iter()
            .map(|t| body_of(|o| t.emit(o)))
            .collect();
        let chain: Vec<(PayloadType, &[u8])> = bodies
            .iter()
            .map(|b| (PayloadType::Transform, &b[..]))
            .collect();
        emit_chain(&chain, out);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaRepr {
    pub doi: u32,
    pub situation: u32,
    pub proposals: Vec<ProposalRepr>,
}

impl SaRepr {
    /// Only SIT_IDENTITY_ONLY is understood: other situations add labelled-domain fields
    /// before the proposals (RFC 2407 §4.6.1) that this daemon does not implement.
    pub fn parse(body: &[u8]) -> Result<SaRepr, WireError> {
        need("SA payload", body, 8)?;
        let situation = be32(&body[4..8]);
        if situation != SIT_IDENTITY_ONLY {
            return Err(WireError::BadValue {
                what: "SA situation",
                value: situation,
            });
        }
        let chain = parse_chain(PayloadType::Proposal, &body[8..]).map_err(|e| e.error)?;
        if chain.end != body.len() - 8 {
            return Err(WireError::BadLength {
                what: "proposals of an SA",
                length: chain.end,
            });
        }
        let mut proposals = Vec::with_capacity(chain.payloads.len());
        for p in &chain.payloads {
            if p.kind != PayloadType::Proposal {
                return Err(WireError::BadValue {
                    what: "payload type inside an SA",
                    value: u8::from(p.kind).into(),
                });
            }
            proposals.push(ProposalRepr::parse(p.body)?);
        }
        if proposals.is_empty() {
            return Err(WireError::BadValue {
                what: "number of proposals",
                value: 0,
            });
        }
        Ok(SaRepr {
            doi: be32(&body[0..4]),
            situation,
            proposals,
        })
    }

    pub fn buffer_len(&self) -> usize {
        8 + self
            .proposals
            .iter()
            .map(|p| 4 + p.buffer_len())
            .sum::<usize>()
    }

    /// Emits the SA body (without its generic header), as hashed into HASH_I/HASH_R.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.doi.to_be_bytes());
        out.extend_from_slice(&self.situation.to_be_bytes());
        let bodies: Vec<Vec<u8>> = self
            .proposals
            .iter()
            .map(|p| body_of(|o| p.emit(o)))
            .collect();
        let chain: Vec<(PayloadType, &[u8])> = bodies
            .iter()
            .map(|b| (PayloadType::Proposal, &b[..]))
            .collect();
        emit_chain(&chain, out);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        body_of(|o| self.emit(o))
    }
}

fn body_of(emit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    emit(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::DOI_IPSEC;

    fn esp_sa() -> SaRepr {
        SaRepr {
            doi: DOI_IPSEC,
            situation: SIT_IDENTITY_ONLY,
            proposals: vec![
                ProposalRepr {
                    number: 1,
                    protocol: ProtocolId::Ah,
                    spi: vec![0, 0, 0x10, 0],
                    transforms: vec![TransformRepr {
                        number: 1,
                        id: 3,
                        attributes: vec![Attribute::basic(5u16, 2u16)],
                    }],
                },
                ProposalRepr {
                    number: 1,
                    protocol: ProtocolId::Esp,
                    spi: vec![0, 0, 0x10, 1],
                    transforms: vec![
                        TransformRepr {
                            number: 1,
                            id: 12,
                            attributes: vec![
                                Attribute::basic(6u16, 256u16),
                                Attribute::number(2u16, 28_800),
                            ],
                        },
                        TransformRepr {
                            number: 2,
                            id: 3,
                            attributes: vec![Attribute::number(2u16, 86_400)],
                        },
                    ],
                },
            ],
        }
    }

    #[test]
    fn sa_round_trips() {
        let sa = esp_sa();
        let bytes = sa.to_bytes();
        assert_eq!(bytes.len(), sa.buffer_len());
        assert_eq!(SaRepr::parse(&bytes).unwrap(), sa);
        let life = sa.proposals[1].transforms[1].attribute(2u16).unwrap();
        assert_eq!(life.value, AttrValue::Variable(vec![0, 1, 0x51, 0x80]));
        assert_eq!(life.as_number(), Some(86_400));
        assert_eq!(sa.proposals[1].spi_number(), Some(0x1001));
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = esp_sa().to_bytes();
        for len in 0..bytes.len() {
            assert!(SaRepr::parse(&bytes[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn transform_count_must_match() {
        let mut bytes = esp_sa().to_bytes();
        // SA body (8) + first proposal header (4) + its fixed part: # of transforms at +3.
        bytes[8 + 4 + 3] = 2;
        assert_eq!(
            SaRepr::parse(&bytes).unwrap_err(),
            WireError::BadValue {
                what: "number of transforms",
                value: 2
            }
        );
    }

    #[test]
    fn oversized_variable_attribute_is_refused() {
        let attrs = [0x00, 0x02, 0x00, 0x09, 1, 2, 3];
        assert!(matches!(
            Attribute::parse_all(&attrs),
            Err(WireError::Truncated { .. })
        ));
        let wide = Attribute {
            kind: 2,
            value: AttrValue::Variable(vec![1; 9]),
        };
        assert_eq!(wide.as_number(), None);
    }
}
