//! What the core tells its owner: SAs to install or remove, failures, and log lines.
//!
//! The plugin link (SPEC §7) turns these into PF_KEY-like messages:
//! - [`Event::ChildSaEstablished`]: ADD/UPDATE the inbound SAs (our SPIs) and the
//!   outbound ones (the peer's SPIs). When `replaces` is set, the plugin switches its
//!   outbound traffic to the new SAs at once (nothing more is sent on the superseded
//!   ones) but keeps accepting on the old inbound SAs.
//! - [`Event::ChildSaDeleted`]: DELETE both directions of the named SAs: the old inbound
//!   SAs of a rekeyed bundle reach this at their hard expiry, others when the peer or we
//!   delete them.
//!   With `udp_encap` set, ESP travels in UDP between those ports (RFC 3948).
//! - [`Event::Failed`]: keying failed (the plugin drops the packets it held for the bundle
//!   unless `retrying`).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ipsec_plugin::config::{Cidr, IkeProposal, Mode, SaKeys};
use ipsec_plugin::crypto::{EspTransform, IntegAlg};

/// A request to key a connection (from `Endpoint::initiate`, or a rekey): stays the same
/// across retries, so the caller can match the outcome to its ACQUIRE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExchangeId(pub u64);

/// The SPIs of one direction of a child SA bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SpiSet {
    pub esp: Option<u32>,
    pub ah: Option<u32>,
    pub ipcomp: Option<u16>,
}

impl fmt::Display for SpiSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(s) = self.ah {
            write!(f, "ah.{s:#x}")?;
            sep = " ";
        }
        if let Some(s) = self.esp {
            write!(f, "{sep}esp.{s:#x}")?;
            sep = " ";
        }
        if let Some(c) = self.ipcomp {
            write!(f, "{sep}comp.{c:#x}")?;
        }
        Ok(())
    }
}

/// UDP encapsulation of ESP (RFC 3948), negotiated because a NAT lies between the peers
/// (or the peer pretends one does). The ports are those IKE floated to: normally 4500 at
/// both ends, or the port a NAT mapped the peer's 4500 to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpEncap {
    pub local_port: u16,
    pub remote_port: u16,
}

/// A negotiated IPsec SA bundle with its keys in both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSa {
    pub conn: String,
    /// Set when this end initiated the Quick Mode.
    pub exchange: Option<ExchangeId>,
    pub local: Ipv4Addr,
    /// The peer's address as seen here, after any NAT.
    pub remote: Ipv4Addr,
    pub mode: Mode,
    /// Some when ESP must be UDP-encapsulated: a NAT was detected at either end.
    pub udp_encap: Option<UdpEncap>,
    /// The traffic selectors as negotiated (IDci/IDcr, or the endpoints when absent).
    pub local_selector: Cidr,
    pub remote_selector: Cidr,
    /// 0 = any.
    pub protocol: u8,
    pub local_port: u16,
    pub remote_port: u16,
    pub esp: Option<EspTransform>,
    pub ah: Option<IntegAlg>,
    pub ipcomp: bool,
    /// `inbound` carries our SPIs (chosen by this end), `outbound` the peer's.
    pub keys: SaKeys,
    pub lifetime: Duration,
    pub pfs: bool,
    /// The inbound SPIs of the bundle this one supersedes (a rekey).
    pub replaces: Option<SpiSet>,
}

impl ChildSa {
    pub fn inbound_spis(&self) -> SpiSet {
        spis(&self.keys.inbound)
    }

    pub fn outbound_spis(&self) -> SpiSet {
        spis(&self.keys.outbound)
    }
}

fn spis(k: &ipsec_plugin::config::DirectionKeys) -> SpiSet {
    SpiSet {
        esp: k.esp.as_ref().map(|e| e.spi),
        ah: k.ah.as_ref().map(|a| a.spi),
        ipcomp: k.ipcomp_cpi,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
}

/// Why keying failed, in the terms the plugin link reports it (docs/daemon-link.md: EACCES,
/// ECONNREFUSED, ETIMEDOUT): decided where the failure is found, not read back from text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The pre-shared keys differ (HASH_I/HASH_R mismatch, or the peer says it could not
    /// authenticate us).
    Authentication,
    /// The peer refused our proposals or traffic selectors, or we refused its.
    Refused,
    /// No answer before the retransmissions ran out.
    TimedOut,
    /// Anything else: a malformed reply, a failed key exchange, no address yet.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// The peer sent an authenticated Delete.
    PeerDeleted,
    /// The hard lifetime ran out.
    Expired,
    /// `Endpoint::delete` asked for it.
    Local,
    /// Dead Peer Detection (RFC 3706): the peer stopped answering R-U-THERE.
    PeerDead,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Main Mode finished: the ISAKMP SA with the peer is authenticated.
    Phase1Established {
        conn: String,
        peer: SocketAddrV4,
        suite: IkeProposal,
        lifetime: Duration,
        initiator: bool,
    },
    /// Responder only: message 2 of a Quick Mode is about to leave, so the inbound SAs can
    /// be installed now (Pluto does the same): the initiator may send on the new SAs as soon
    /// as it has message 2, before message 3 reaches us. [`Event::ChildSaEstablished`]
    /// with the same SAs follows when message 3 confirms them; if it never comes,
    /// [`Event::ChildSaDeleted`] names these inbound SAs (and no outbound ones).
    ChildSaInboundReady(Box<ChildSa>),
    ChildSaEstablished(Box<ChildSa>),
    /// Both directions of a child SA bundle are gone; the plugin removes them.
    ChildSaDeleted {
        conn: String,
        peer: Ipv4Addr,
        inbound: SpiSet,
        outbound: SpiSet,
        reason: DeleteReason,
    },
    /// The ISAKMP SA is gone. Its child SAs stay until their own lifetimes end, except
    /// when the peer is dead: then each gets its own `ChildSaDeleted` as well.
    Phase1Deleted {
        conn: String,
        peer: Ipv4Addr,
        reason: DeleteReason,
    },
    /// Keying failed. `retrying` when keyingtries allows another attempt.
    Failed {
        conn: String,
        peer: Ipv4Addr,
        exchange: Option<ExchangeId>,
        kind: FailureKind,
        reason: String,
        retrying: bool,
    },
    Log {
        level: LogLevel,
        conn: Option<String>,
        message: String,
    },
}
