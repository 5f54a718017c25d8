//! What the daemon is told: the endpoint's settings and the connections it may negotiate.
//!
//! A [`Connection`] is the IKE view of one `keying = ike` bundle of ipsec.cfg (SPEC §2),
//! plus the pre-shared key the secrets file holds for its endpoints (SPEC §3).

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipsec_plugin::config::{Bundle, Cidr, IkeParams, Keying, Mode};
use ipsec_plugin::crypto::{EspTransform, IntegAlg};

use crate::wire::ProtocolId;

/// Hands out the SPIs (and IPComp CPIs) of our inbound SAs. The plugin link will supply
/// GETSPI answers here. SPIs are at least 0x1000 (SPEC §7: 0x100-0xFFF stay free for
/// manual keying); a CPI must fit 16 bits and be at least 256 (RFC 3173 §3.3).
pub type SpiAllocator = Box<dyn FnMut(ProtocolId) -> u32 + Send>;

/// SPIs and CPIs counting up, separately, from `spi_start` and `cpi_start` (each raised
/// to 0x1000). Pluto counts up from a random start: two daemons that both began at
/// 0x1000 would pick the same SPI for both directions, and in IKEv1 the same SPI gives
/// the same KEYMAT, so each direction would accept the other's packets reflected.
pub fn sequential_spis(spi_start: u32, cpi_start: u16) -> SpiAllocator {
    let (mut spi, mut cpi) = (spi_start.max(0x1000), u32::from(cpi_start.max(0x1000)));
    Box::new(move |protocol| {
        let counter = if protocol == ProtocolId::Ipcomp {
            &mut cpi
        } else {
            &mut spi
        };
        let value = *counter;
        // CPIs wrap within 0x1000..=0xFFFF; SPIs within 0x1000..=u32::MAX.
        *counter = match (protocol, value) {
            (ProtocolId::Ipcomp, 0xFFFF) | (_, u32::MAX) => 0x1000,
            _ => value + 1,
        };
        value
    })
}

pub struct EndpointConfig {
    /// The UDP port IKE is spoken on (Pluto's `--ikeport`), 500 by default.
    pub ike_port: u16,
    /// This host's address for connections whose `local` is 0.0.0.0 (the dynamic address
    /// the host reports at connect); changed later with `Endpoint::set_local_address`.
    pub local_address: Option<Ipv4Addr>,
    /// A seed makes cookies, nonces, SPIs order and DH exponents reproducible (tests);
    /// None draws from the operating system.
    pub rng_seed: Option<u64>,
    /// None: counting up from a random start (see [`sequential_spis`]).
    pub spi_allocator: Option<SpiAllocator>,
    /// The first retransmission timeout; each next one doubles (Pluto: 10 s, 20 s, 40 s).
    pub retransmit_base: Duration,
    /// Retransmissions of one message before the exchange fails (Pluto: 3).
    pub max_retransmits: u32,
    /// Responder Main Modes that have not finished, beyond which new ones are dropped: a
    /// flood of message 1s cannot exhaust memory.
    pub max_half_open: usize,
    /// Offer and accept NAT traversal (RFC 3947 vendor IDs, NAT-D, floating to
    /// `nat_t_port`, UDP-encapsulated ESP).
    pub nat_traversal: bool,
    /// The port IKE floats to and UDP-encapsulated ESP uses (RFC 3948), 4500 by default.
    pub nat_t_port: u16,
    /// How often a NAT-keepalive goes out while this end is behind a NAT and has a child
    /// SA with the peer (RFC 3948 §4; Pluto and charon: 20 s). At least 1 s.
    pub keepalive_interval: Duration,
    /// Dead Peer Detection (RFC 3706): ask R-U-THERE after this much silence from the
    /// peer, when it advertised DPD. None sends no probes; R-U-THERE from the peer is
    /// answered either way. At least 1 s.
    pub dpd_delay: Option<Duration>,
    /// How long R-U-THERE may go unanswered before the peer is declared dead and its SAs
    /// removed. At least 1 s.
    pub dpd_timeout: Duration,
}

impl Default for EndpointConfig {
    fn default() -> EndpointConfig {
        EndpointConfig {
            ike_port: 500,
            local_address: None,
            rng_seed: None,
            spi_allocator: None,
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

impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("ike_port", &self.ike_port)
            .field("local_address", &self.local_address)
            .field("rng_seed", &self.rng_seed)
            .field("retransmit_base", &self.retransmit_base)
            .field("max_retransmits", &self.max_retransmits)
            .field("max_half_open", &self.max_half_open)
            .field("nat_traversal", &self.nat_traversal)
            .field("nat_t_port", &self.nat_t_port)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("dpd_delay", &self.dpd_delay)
            .field("dpd_timeout", &self.dpd_timeout)
            .finish_non_exhaustive()
    }
}

/// One connection: endpoints, traffic selectors, what to protect it with, and how.
#[derive(Clone, PartialEq, Eq)]
pub struct Connection {
    /// The bundle name; events and logs carry it.
    pub name: String,
    /// 0.0.0.0 = this host's dynamic address.
    pub local: Ipv4Addr,
    /// 0.0.0.0 = any peer ("road warrior"): responder only, one instance per peer.
    pub remote: Ipv4Addr,
    pub mode: Mode,
    /// None = local/32.
    pub local_subnet: Option<Cidr>,
    /// None = remote/32.
    pub remote_subnet: Option<Cidr>,
    /// None = any.
    pub protocol: Option<u8>,
    pub local_port: Option<u16>,
    pub remote_port: Option<u16>,
    pub esp: Option<EspTransform>,
    pub ah: Option<IntegAlg>,
    /// Offered first with, then without IPComp; accepted when the peer offers it.
    pub ipcomp: bool,
    /// Phase 1 proposals, pfs, lifetimes, rekeying and keyingtries (SPEC §2 defaults).
    pub ike: IkeParams,
    pub psk: Vec<u8>,
}

// The pre-shared key stays out of logs.
impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.name)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("mode", &self.mode)
            .field("local_subnet", &self.local_subnet)
            .field("remote_subnet", &self.remote_subnet)
            .field("esp", &self.esp)
            .field("ah", &self.ah)
            .field("ipcomp", &self.ipcomp)
            .field("ike", &self.ike)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A host-to-host transport connection with SPEC §2's defaults, for building on.
    pub fn new(name: &str, local: Ipv4Addr, remote: Ipv4Addr, psk: &[u8]) -> Connection {
        Connection {
            name: name.to_owned(),
            local,
            remote,
            mode: Mode::Transport,
            local_subnet: None,
            remote_subnet: None,
            protocol: None,
            local_port: None,
            remote_port: None,
            esp: EspTransform::from_name("aes128-sha1"),
            ah: None,
            ipcomp: false,
            ike: IkeParams::default(),
            psk: psk.to_vec(),
        }
    }

    /// The connection for a `keying = ike` bundle; None for manually keyed ones.
    pub fn from_bundle(bundle: &Bundle, psk: Vec<u8>) -> Option<Connection> {
        let Keying::Ike(ike) = &bundle.keying else {
            return None;
        };
        Some(Connection {
            name: bundle.name.clone(),
            local: bundle.local,
            remote: bundle.remote,
            mode: bundle.mode,
            local_subnet: bundle.local_subnet,
            remote_subnet: bundle.remote_subnet,
            protocol: bundle.protocol,
            local_port: bundle.local_port,
            remote_port: bundle.remote_port,
            esp: bundle.esp,
            ah: bundle.ah,
            ipcomp: bundle.ipcomp,
            ike: ike.clone(),
            psk,
        })
    }

    pub fn is_road_warrior(&self) -> bool {
        self.remote.is_unspecified()
    }

    /// The selectors this end proposes: transport mode protects the endpoints themselves.
    pub(crate) fn local_selector(&self, local: Ipv4Addr) -> Cidr {
        match (self.mode, self.local_subnet) {
            (Mode::Tunnel, Some(c)) => c,
            _ => Cidr::host(local),
        }
    }

    pub(crate) fn remote_selector(&self, remote: Ipv4Addr) -> Cidr {
        match (self.mode, self.remote_subnet) {
            (Mode::Tunnel, Some(c)) => c,
            _ => Cidr::host(remote),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_spis_start_at_0x1000_and_keep_cpis_16_bit() {
        let mut next = sequential_spis(5, 0);
        assert_eq!(next(ProtocolId::Esp), 0x1000);
        assert_eq!(next(ProtocolId::Ah), 0x1001);
        assert_eq!(next(ProtocolId::Ipcomp), 0x1000);
        for _ in 0..0xF000 {
            assert!((0x1000..=0xFFFF).contains(&next(ProtocolId::Ipcomp)));
        }
    }

    #[test]
    fn psk_is_not_in_debug_output() {
        let c = Connection::new("c", Ipv4Addr::LOCALHOST, Ipv4Addr::BROADCAST, b"hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
