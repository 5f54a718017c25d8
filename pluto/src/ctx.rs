//! What an exchange handler may touch: the clock reading, randomness, the SPI allocator,
//! and the endpoint's output queues. Handlers report what the endpoint must do next
//! (start Quick Modes, record child SAs, retry requests) as [`Outcome`]s, so that no
//! exchange reaches back up into the endpoint.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::rngs::{OsRng, StdRng};
use rand::{RngCore, SeedableRng};

use crate::config::SpiAllocator;
use crate::event::{ChildSa, Event, ExchangeId, FailureKind, LogLevel};
use crate::wire::ProtocolId;

/// A datagram to send. `payload` is the exact UDP payload: IKE from the NAT-T port
/// already carries the non-ESP marker, and a NAT-keepalive is the single byte 0xFF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub ike_port: u16,
    pub retransmit_base: Duration,
    pub max_retransmits: u32,
    pub max_half_open: usize,
    pub nat_traversal: bool,
    pub nat_t_port: u16,
    pub keepalive_interval: Duration,
    pub dpd_delay: Option<Duration>,
    pub dpd_timeout: Duration,
}

impl Settings {
    /// How long a message is retransmitted before its exchange gives up: the sum of the
    /// doubling timeouts, plus the final wait.
    pub fn retransmit_window(&self) -> Duration {
        self.retransmit_base * ((1u32 << (self.max_retransmits + 1)) - 1)
    }

    /// IKE on the NAT-T port travels behind the non-ESP marker (RFC 3948 §2.2).
    pub fn marks(&self, port: u16) -> bool {
        port == self.nat_t_port && port != self.ike_port
    }

    #[cfg(test)]
    pub fn for_tests() -> Settings {
        Settings {
            ike_port: 500,
            retransmit_base: Duration::from_secs(10),
            max_retransmits: 3,
            max_half_open: 1000,
            nat_traversal: true,
            nat_t_port: 4500,
            keepalive_interval: Duration::from_secs(20),
            dpd_delay: Some(Duration::from_secs(30)),
            dpd_timeout: Duration::from_secs(120),
        }
    }
}

/// Cryptographic randomness: the OS, or a seeded generator for reproducible tests.
pub(crate) enum EndpointRng {
    Os(OsRng),
    Seeded(Box<StdRng>),
}

impl EndpointRng {
    pub fn new(seed: Option<u64>) -> EndpointRng {
        match seed {
            Some(s) => EndpointRng::Seeded(Box::new(StdRng::seed_from_u64(s))),
            None => EndpointRng::Os(OsRng),
        }
    }

    pub fn rng(&mut self) -> &mut dyn RngCore {
        match self {
            EndpointRng::Os(r) => r,
            EndpointRng::Seeded(r) => r.as_mut(),
        }
    }
}

/// What an exchange asks of the endpoint once it has returned.
#[derive(Debug)]
pub(crate) enum Outcome {
    Phase1Up {
        sa: u64,
    },
    /// The ISAKMP SA failed (it is marked dead); `retryable` unless the peer made it clear
    /// that trying again is pointless right now.
    Phase1Failed {
        sa: u64,
        kind: FailureKind,
        reason: String,
        retryable: bool,
    },
    ChildUp {
        child: Box<ChildSa>,
        initiator: bool,
        /// Set when this end is behind a NAT: the path (local, remote) to keep open with
        /// NAT-keepalives while the child SA lives.
        keepalive: Option<(SocketAddrV4, SocketAddrV4)>,
    },
    ChildFailed {
        request: ExchangeId,
        kind: FailureKind,
        reason: String,
        retryable: bool,
    },
    /// An authenticated Delete for SAs the peer had inbound (our outbound SPIs).
    PeerDeleted {
        peer: Ipv4Addr,
        protocol: ProtocolId,
        spis: Vec<u32>,
    },
    PeerDeletedPhase1 {
        sa: u64,
    },
    /// Dead Peer Detection gave up on the peer of this ISAKMP SA.
    PeerDead {
        sa: u64,
    },
}

pub(crate) struct Ctx<'a> {
    pub now: Instant,
    pub settings: &'a Settings,
    pub rng: &'a mut EndpointRng,
    pub spis: &'a mut SpiAllocator,
    pub transmits: &'a mut VecDeque<Transmit>,
    pub events: &'a mut VecDeque<Event>,
    pub outcomes: &'a mut Vec<Outcome>,
}

impl Ctx<'_> {
    pub fn log(&mut self, level: LogLevel, conn: Option<&str>, message: String) {
        self.events.push_back(Event::Log {
            level,
            conn: conn.map(str::to_owned),
            message,
        });
    }

    /// Queues an IKE message; `payload` is the message itself, the marker is added here.
    pub fn send(&mut self, from: SocketAddrV4, to: SocketAddrV4, mut payload: Vec<u8>) {
        if self.settings.marks(from.port()) {
            payload.splice(0..0, crate::natt::NON_ESP_MARKER);
        }
        self.transmits.push_back(Transmit { from, to, payload });
    }

    pub fn random(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.rng.rng().fill_bytes(&mut v);
        v
    }

    /// A cookie or message ID is never zero: zero means "not yet chosen" on the wire.
    pub fn cookie(&mut self) -> [u8; 8] {
        loop {
            let mut c = [0; 8];
            self.rng.rng().fill_bytes(&mut c);
            if c != [0; 8] {
                return c;
            }
        }
    }

    pub fn message_id(&mut self) -> u32 {
        loop {
            let id = self.rng.rng().next_u32();
            if id != 0 {
                return id;
            }
        }
    }

    pub fn random_below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.rng.rng().next_u64() % bound
        }
    }
}
