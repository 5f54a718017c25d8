//! The sans-IO core of a Pluto-compatible IKEv1 keying daemon (RFC 2407, 2408, 2409).
//!
//! [`Endpoint`] owns the ISAKMP SAs and their exchanges. Datagrams and the time go in
//! (`handle_datagram`, `handle_timeout`); datagrams to send, the next timeout and
//! [`Event`]s come out (`poll_transmit`, `poll_timeout`, `poll_event`). Nothing here reads
//! a clock or touches a socket, so two endpoints run against each other in tests on
//! virtual time.
//!
//! Layout: `wire` (ISAKMP header and payloads), `crypto` (MODP Diffie-Hellman, the PRFs,
//! the IKE key derivations, message encryption), `proposal` (SA payloads in IKE terms),
//! `main_mode`, `quick` and `informational` (the exchanges), `flight` (retransmission),
//! `endpoint` (what owns them, with the child SAs' lifetimes and the keying requests).
//!
//! Implemented: Main Mode with pre-shared keys, Quick Mode (PFS, IDci/IDcr, ESP, AH,
//! IPComp), Informational Delete and notifications, NAT traversal (RFC 3947, RFC 3948),
//! Dead Peer Detection (RFC 3706), Pluto's retransmission, duplicate, rekey (of IPsec SAs
//! and of the ISAKMP SA itself) and road-warrior rules. Not yet: Aggressive Mode,
//! certificates.

#![deny(unsafe_code)]

pub mod config;
pub mod crypto;
mod ctx;
pub mod daemon;
mod dpd;
mod endpoint;
pub mod event;
mod flight;
mod informational;
pub mod link;
pub mod log;
mod main_mode;
mod message;
mod natt;
mod proposal;
mod quick;
pub mod secrets;
pub mod wire;

pub use config::{sequential_spis, Connection, EndpointConfig, SpiAllocator};
pub use ctx::Transmit;
pub use endpoint::Endpoint;
pub use event::{ChildSa, DeleteReason, Event, ExchangeId, FailureKind, LogLevel, SpiSet, UdpEncap};

#[cfg(test)]
mod tests;
