//! ISAKMP wire formats (RFC 2408 §3, RFC 2407 §4.6, RFC 3947 §3): the header as a checked
//! view over untrusted bytes, and payloads as `Repr`s with `parse`, `buffer_len` and `emit`.
//!
//! Unlike the plugin's per-packet headers, IKE messages are few and small, so payload
//! `Repr`s own their bytes (`Vec<u8>`) and emit by appending to a `Vec<u8>`: that keeps the
//! message builders short, and no per-packet path allocates here.

mod header;
mod id;
mod notify;
mod numbers;
mod payload;
mod sa;

use std::fmt;

pub use header::{Flags, Header, HeaderRepr, HEADER_LEN};
pub use id::{IdRepr, IdValue};
pub use notify::{DeleteRepr, NotifyRepr};
pub use numbers::*;
pub use payload::{emit_chain, parse_chain, Chain, ChainError, RawPayload, PAYLOAD_HEADER_LEN};
pub use sa::{AttrValue, Attribute, ProposalRepr, SaRepr, TransformRepr};

/// Why bytes from the network are not the structure they claim to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The bytes end before the structure does.
    Truncated {
        what: &'static str,
        needed: usize,
        got: usize,
    },
    /// A length field disagrees with the bytes around it.
    BadLength { what: &'static str, length: usize },
    /// A field holds a value that cannot be right.
    BadValue { what: &'static str, value: u32 },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WireError::Truncated { what, needed, got } => {
                write!(f, "{what} truncated: needs {needed} bytes, has {got}")
            }
            WireError::BadLength { what, length } => write!(f, "{what} has a bad length {length}"),
            WireError::BadValue { what, value } => write!(f, "{what} has a bad value {value}"),
        }
    }
}

impl std::error::Error for WireError {}

/// Checks that `data` holds at least `needed` bytes of `what`.
fn need(what: &'static str, data: &[u8], needed: usize) -> Result<(), WireError> {
    if data.len() < needed {
        return Err(WireError::Truncated {
            what,
            needed,
            got: data.len(),
        });
    }
    Ok(())
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod capture_tests;
