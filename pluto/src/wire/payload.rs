//! The generic payload header and payload chains (RFC 2408 §3.2).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ! Next Payload  !   RESERVED    !         Payload Length        !
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Each payload names the type of the one after it, so the chain can only be walked in
//! order; a parse stops at the first bad payload and says which one it was.

use std::fmt;

use super::{be16, PayloadType, WireError};

pub const PAYLOAD_HEADER_LEN: usize = 4;

/// One payload of a chain: its type (named by the previous payload) and its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPayload<'a> {
    pub kind: PayloadType,
    /// The payload without its generic header.
    pub body: &'a [u8],
    /// Where the generic header starts in the parsed bytes.
    pub offset: usize,
}

impl RawPayload<'_> {
    /// Where the payload ends in the parsed bytes.
    pub fn end(&self) -> usize {
        self.offset + PAYLOAD_HEADER_LEN + self.body.len()
    }
}

/// A parsed chain. Bytes after `end` are padding (encrypted messages are padded to the
/// cipher block; RFC 2408 §3.5 says the receiver ignores them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain<'a> {
    pub payloads: Vec<RawPayload<'a>>,
    pub end: usize,
}

impl<'a> Chain<'a> {
    /// The first payload of a type, for exchanges that carry each payload at most once.
    pub fn find(&self, kind: PayloadType) -> Option<&RawPayload<'a>> {
        self.payloads.iter().find(|p| p.kind == kind)
    }

    pub fn count(&self, kind: PayloadType) -> usize {
        self.payloads.iter().filter(|p| p.kind == kind).count()
    }
}

/// The first bad payload of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainError {
    /// 0-based position in the chain.
    pub index: usize,
    /// The type the previous payload announced for it.
    pub payload: PayloadType,
    pub offset: usize,
    pub error: WireError,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "payload #{} ({:?}) at offset {}: {}",
            self.index + 1,
            self.payload,
            self.offset,
            self.error
        )
    }
}

impl std::error::Error for ChainError {}

/// Walks a chain whose first payload is `first` (named by the header or enclosing payload).
pub fn parse_chain(first: PayloadType, data: &[u8]) -> Result<Chain<'_>, ChainError> {
    let mut payloads = Vec::new();
    let mut kind = first;
    let mut offset = 0;
    while kind != PayloadType::None {
        let fail = |error| ChainError {
            index: payloads.len(),
            payload: kind,
            offset,
            error,
        };
        let rest = &data[offset..];
        if rest.len() < PAYLOAD_HEADER_LEN {
            return Err(fail(WireError::Truncated {
                what: "generic payload header",
                needed: PAYLOAD_HEADER_LEN,
                got: rest.len(),
            }));
        }
        let length = usize::from(be16(&rest[2..4]));
        if length < PAYLOAD_HEADER_LEN {
            return Err(fail(WireError::BadLength {
                what: "payload",
                length,
            }));
        }
        if length > rest.len() {
            return Err(fail(WireError::Truncated {
                what: "payload",
                needed: length,
                got: rest.len(),
            }));
        }
        payloads.push(RawPayload {
            kind,
            body: &rest[PAYLOAD_HEADER_LEN..length],
            offset,
        });
        kind = PayloadType::from(rest[0]);
        offset += length;
    }
    Ok(Chain {
        payloads,
        end: offset,
    })
}

/// Appends `payloads` as a chain and returns the type of the first (for the header's or
/// the enclosing payload's Next Payload field). Bodies are this daemon's own and small;
/// one longer than a payload can hold would be a bug, so it is cut rather than wrapped.
pub fn emit_chain(payloads: &[(PayloadType, &[u8])], out: &mut Vec<u8>) -> PayloadType {
    for (i, (_, body)) in payloads.iter().enumerate() {
        let next = payloads.get(i + 1).map_or(PayloadType::None, |p| p.0);
        let body = &body[..body.len().min(usize::from(u16::MAX) - PAYLOAD_HEADER_LEN)];
        debug_assert!(body.len() == payloads[i].1.len(), "payload body too long");
        out.push(next.into());
        out.push(0);
        out.extend_from_slice(&((body.len() + PAYLOAD_HEADER_LEN) as u16).to_be_bytes());
        out.extend_from_slice(body);
    }
    payloads.first().map_or(PayloadType::None, |p| p.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (PayloadType, Vec<u8>) {
        let mut out = Vec::new();
        let first = emit_chain(
            &[
                (PayloadType::Hash, &[1; 20]),
                (PayloadType::Nonce, &[2; 16]),
                (PayloadType::VendorId, &[]),
            ],
            &mut out,
        );
        (first, out)
    }

    #[test]
    fn chain_round_trips_and_ignores_padding() {
        let (first, mut bytes) = sample();
        assert_eq!(first, PayloadType::Hash);
        assert_eq!(bytes.len(), 24 + 20 + 4);
        bytes.extend_from_slice(&[0; 7]);
        let chain = parse_chain(first, &bytes).unwrap();
        let kinds: Vec<_> = chain.payloads.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [PayloadType::Hash, PayloadType::Nonce, PayloadType::VendorId]
        );
        assert_eq!(chain.payloads[1].body, &[2; 16]);
        assert_eq!(chain.payloads[1].offset, 24);
        assert_eq!(chain.end, 48);
    }

    #[test]
    fn every_truncation_names_the_bad_payload() {
        let (first, bytes) = sample();
        for len in 0..bytes.len() {
            let e = parse_chain(first, &bytes[..len]).unwrap_err();
            let expected = if len < 24 {
                0
            } else if len < 44 {
                1
            } else {
                2
            };
            assert_eq!(e.index, expected, "length {len}");
        }
    }

    #[test]
    fn short_length_field_is_refused() {
        let (first, mut bytes) = sample();
        bytes[24 + 3] = 3; // the nonce claims 3 bytes, less than its own header
        let e = parse_chain(first, &bytes).unwrap_err();
        assert_eq!((e.index, e.payload, e.offset), (1, PayloadType::Nonce, 24));
        assert!(e.to_string().contains("payload #2 (Nonce)"));
    }
}
