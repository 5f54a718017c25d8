//! NAT traversal for IKEv1: detection and port floating (RFC 3947) and the UDP framing of
//! port 4500 (RFC 3948).
//!
//! ```text
//! Initiator                                    Responder
//! HDR, SA, VID(NAT-T)...            -->
//!                                   <--        HDR, SA, VID(NAT-T)
//! HDR, KE, Ni, NAT-D, NAT-D         -->
//!                                   <--        HDR, KE, Nr, NAT-D, NAT-D
//! (a NAT was seen: both float to port 4500, IKE behind a 4-byte non-ESP marker)
//! HDR*#, IDii, HASH_I               -->
//!                                   <--        HDR*#, IDir, HASH_R
//! ```
//!
//! NAT-D = HASH(CKY-I | CKY-R | IP | Port) with the phase 1 hash (not its PRF); the first
//! names the receiver's address as the sender sees it, the rest the sender's own. A
//! mismatch on the first means this end is behind a NAT, on the rest that the peer is
//! (or pretends to be: charon with kernel-libipsec sends random ones to force UDP
//! encapsulation, which is why floating follows either finding).
//!
//! The pre-RFC drafts (-02, -03) differ only in numbers: NAT-D 130 instead of 20, NAT-OA
//! 131 instead of 21, encapsulation modes 61443/61444 instead of 3/4.

use std::net::{Ipv4Addr, SocketAddrV4};

use ipsec_plugin::config::{Cidr, IkeHash, Mode};

use crate::crypto::prf;
use crate::wire::{Chain, EncapsulationMode, IdRepr, IdValue, PayloadType};

/// Prefixes IKE on the NAT-T port, so that it is not taken for ESP (RFC 3948 §2.2: a zero
/// SPI).
pub(crate) const NON_ESP_MARKER: [u8; 4] = [0; 4];
/// The whole payload of a NAT-keepalive (RFC 3948 §2.3).
pub(crate) const KEEPALIVE: [u8; 1] = [0xFF];

/// What a datagram that arrived on the NAT-T port is (RFC 3948 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival<'a> {
    /// An IKE message, marker stripped.
    Ike(&'a [u8]),
    Keepalive,
    /// ESP in UDP (or too short to be anything): the plugin's business, not ours.
    Esp,
}

pub(crate) fn classify(data: &[u8]) -> Arrival<'_> {
    match data {
        [0xFF] => Arrival::Keepalive,
        [0, 0, 0, 0, ike @ ..] => Arrival::Ike(ike),
        _ => Arrival::Esp,
    }
}

/// The numbers a NAT-T version uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Rfc3947,
    /// draft-ietf-ipsec-nat-t-ike-02 and -03.
    Draft,
}

impl Dialect {
    pub fn nat_d(self) -> PayloadType {
        match self {
            Dialect::Rfc3947 => PayloadType::NatD,
            Dialect::Draft => PayloadType::NatDDraft,
        }
    }

    pub fn nat_oa(self) -> PayloadType {
        match self {
            Dialect::Rfc3947 => PayloadType::NatOa,
            Dialect::Draft => PayloadType::NatOaDraft,
        }
    }

    /// The Encapsulation Mode attribute for UDP-encapsulated ESP (RFC 3947 §5.1).
    pub fn encapsulation(self, mode: Mode) -> EncapsulationMode {
        match (self, mode) {
            (Dialect::Rfc3947, Mode::Tunnel) => EncapsulationMode::UdpTunnel,
            (Dialect::Rfc3947, Mode::Transport) => EncapsulationMode::UdpTransport,
            (Dialect::Draft, Mode::Tunnel) => EncapsulationMode::UdpTunnelDraft,
            (Dialect::Draft, Mode::Transport) => EncapsulationMode::UdpTransportDraft,
        }
    }
}

/// The mode and, if UDP-encapsulated, the dialect an Encapsulation Mode attribute names.
/// Both dialects are accepted whatever the vendor IDs said, as charon and Pluto do.
pub(crate) fn decode_encapsulation(e: EncapsulationMode) -> Option<(Mode, Option<Dialect>)> {
    Some(match e {
        EncapsulationMode::Tunnel => (Mode::Tunnel, None),
        EncapsulationMode::Transport => (Mode::Transport, None),
        EncapsulationMode::UdpTunnel => (Mode::Tunnel, Some(Dialect::Rfc3947)),
        EncapsulationMode::UdpTransport => (Mode::Transport, Some(Dialect::Rfc3947)),
        EncapsulationMode::UdpTunnelDraft => (Mode::Tunnel, Some(Dialect::Draft)),
        EncapsulationMode::UdpTransportDraft => (Mode::Transport, Some(Dialect::Draft)),
        EncapsulationMode::Unknown(_) => return None,
    })
}

/// The NAT-T vendor IDs this daemon knows, most preferred first (the order charon and
/// Pluto pick in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum NattVid {
    /// MD5("RFC 3947").
    Rfc3947,
    /// MD5("draft-ietf-ipsec-nat-t-ike-03").
    Draft03,
    /// MD5("draft-ietf-ipsec-nat-t-ike-02\n"): the newline is part of what was hashed.
    Draft02N,
    /// MD5("draft-ietf-ipsec-nat-t-ike-02"), recognised only.
    Draft02,
}

impl NattVid {
    /// What an initiator offers.
    pub const OFFERED: [NattVid; 3] = [NattVid::Rfc3947, NattVid::Draft03, NattVid::Draft02N];
    const ALL: [NattVid; 4] = [
        NattVid::Rfc3947,
        NattVid::Draft03,
        NattVid::Draft02N,
        NattVid::Draft02,
    ];

    pub fn bytes(self) -> &'static [u8; 16] {
        match self {
            NattVid::Rfc3947 => b"\x4a\x13\x1c\x81\x07\x03\x58\x45\x5c\x57\x28\xf2\x0e\x95\x45\x2f",
            NattVid::Draft03 => b"\x7d\x94\x19\xa6\x53\x10\xca\x6f\x2c\x17\x9d\x92\x15\x52\x9d\x56",
            NattVid::Draft02N => {
                b"\x90\xcb\x80\x91\x3e\xbb\x69\x6e\x08\x63\x81\xb5\xec\x42\x7b\x1f"
            }
            NattVid::Draft02 => b"\xcd\x60\x46\x43\x35\xdf\x21\xf8\x7c\xfd\xb2\xfc\x68\xb6\xa4\x48",
        }
    }

    pub fn from_bytes(vid: &[u8]) -> Option<NattVid> {
        NattVid::ALL.into_iter().find(|v| v.bytes() == vid)
    }

    pub fn dialect(self) -> Dialect {
        match self {
            NattVid::Rfc3947 => Dialect::Rfc3947,
            _ => Dialect::Draft,
        }
    }
}

/// The NAT-T state of one ISAKMP SA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct NatT {
    /// The version both ends speak: the peer's most preferred vendor ID, when this end
    /// has NAT traversal enabled.
    pub vid: Option<NattVid>,
    /// Our address was translated: the peer's first NAT-D did not match it.
    pub here: bool,
    /// The peer's address was translated (or the peer says so with a faked NAT-D).
    pub there: bool,
}

impl NatT {
    pub fn dialect(&self) -> Option<Dialect> {
        self.vid.map(NattVid::dialect)
    }

    pub fn detected(&self) -> bool {
        self.here || self.there
    }

    /// The dialect to encapsulate ESP in, when a NAT was found.
    pub fn udp(&self) -> Option<Dialect> {
        self.dialect().filter(|_| self.detected())
    }

    /// Takes the best NAT-T vendor ID among the peer's.
    pub fn note_vendor_id(&mut self, vid: NattVid) {
        self.vid = Some(self.vid.map_or(vid, |v| v.min(vid)));
    }
}

/// HASH(CKY-I | CKY-R | IP | Port) (RFC 3947 §3.2).
pub(crate) fn nat_d_hash(
    hash: IkeHash,
    cky_i: &[u8; 8],
    cky_r: &[u8; 8],
    addr: SocketAddrV4,
) -> Vec<u8> {
    prf::hash(
        hash,
        &[
            cky_i,
            cky_r,
            &addr.ip().octets(),
            &addr.port().to_be_bytes(),
        ],
    )
}

/// The NAT-D payload bodies for a message from `local` to `remote`: the receiver's address
/// first, then ours.
pub(crate) fn nat_d_bodies(
    hash: IkeHash,
    cky_i: &[u8; 8],
    cky_r: &[u8; 8],
    local: SocketAddrV4,
    remote: SocketAddrV4,
) -> [Vec<u8>; 2] {
    [
        nat_d_hash(hash, cky_i, cky_r, remote),
        nat_d_hash(hash, cky_i, cky_r, local),
    ]
}

/// The peer's NAT-D payloads in a message that came from `from` to `to`: Ok(None) when it
/// sent none; (here, there) otherwise. Either payload type is read, whatever the vendor
/// IDs said. Malformed payloads are an error, for the caller to log and ignore.
pub(crate) fn detect(
    chain: &Chain<'_>,
    hash: IkeHash,
    cky_i: &[u8; 8],
    cky_r: &[u8; 8],
    to: SocketAddrV4,
    from: SocketAddrV4,
) -> Result<Option<(bool, bool)>, String> {
    let nat_d: Vec<&[u8]> = chain
        .payloads
        .iter()
        .filter(|p| matches!(p.kind, PayloadType::NatD | PayloadType::NatDDraft))
        .map(|p| p.body)
        .collect();
    let len = prf::output_len(hash);
    match &nat_d[..] {
        [] => Ok(None),
        [_] => Err("a single NAT-D payload: the peer's own address is missing".into()),
        all => {
            if let Some(bad) = all.iter().find(|h| h.len() != len) {
                return Err(format!(
                    "NAT-D of {} bytes, the {hash:?} hash has {len}",
                    bad.len()
                ));
            }
            let ours = nat_d_hash(hash, cky_i, cky_r, to);
            let theirs = nat_d_hash(hash, cky_i, cky_r, from);
            let here = all[0] != ours.as_slice();
            let there = !all[1..].contains(&theirs.as_slice());
            Ok(Some((here, there)))
        }
    }
}

/// A NAT-OA body (RFC 3947 §5.2): ID type, three reserved bytes, the address; the same
/// layout as an ID payload with protocol and port 0.
pub(crate) fn nat_oa_body(addr: Ipv4Addr) -> Vec<u8> {
    IdRepr::from_cidr(Cidr::host(addr), 0, 0).to_bytes()
}

/// The address a NAT-OA names.
pub(crate) fn parse_nat_oa(body: &[u8]) -> Result<Ipv4Addr, String> {
    let id = IdRepr::parse(body).map_err(|e| e.to_string())?;
    match id.value().map_err(|e| e.to_string())? {
        IdValue::Ipv4(a) if body.len() == 8 => Ok(a),
        other => Err(format!("NAT-OA names {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{emit_chain, parse_chain};

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn marker_keepalive_and_esp_are_told_apart() {
        assert_eq!(classify(&[0xFF]), Arrival::Keepalive);
        assert_eq!(classify(&[0, 0, 0, 0, 1, 2]), Arrival::Ike(&[1, 2]));
        assert_eq!(classify(&[0, 0, 0, 0]), Arrival::Ike(&[]));
        // An ESP header starts with a non-zero SPI.
        assert_eq!(classify(&[0, 0, 0x10, 0, 0, 0, 0, 1]), Arrival::Esp);
        for short in [&[][..], &[0], &[0, 0, 0], &[0xFF, 0xFF]] {
            assert_eq!(classify(short), Arrival::Esp);
        }
    }

    #[test]
    fn vendor_ids_are_the_md5_of_their_names() {
        // Values from `printf 'RFC 3947' | md5sum` and so on.
        let hex = |v: NattVid| {
            v.bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(hex(NattVid::Rfc3947), "4a131c81070358455c5728f20e95452f");
        assert_eq!(hex(NattVid::Draft03), "7d9419a65310ca6f2c179d9215529d56");
        assert_eq!(hex(NattVid::Draft02N), "90cb80913ebb696e086381b5ec427b1f");
        assert_eq!(hex(NattVid::Draft02), "cd60464335df21f87cfdb2fc68b6a448");
        for v in NattVid::ALL {
            assert_eq!(NattVid::from_bytes(v.bytes()), Some(v));
            assert_eq!(NattVid::from_bytes(&v.bytes()[..15]), None);
        }
        let mut n = NatT::default();
        n.note_vendor_id(NattVid::Draft02N);
        n.note_vendor_id(NattVid::Rfc3947);
        n.note_vendor_id(NattVid::Draft03);
        assert_eq!(n.dialect(), Some(Dialect::Rfc3947));
    }

    /// Known answer computed independently:
    /// `python3 -c "import hashlib;print(hashlib.sha1(bytes(range(1,9))+bytes(range(9,17))
    ///  +bytes([192,0,2,100])+(31000).to_bytes(2,'big')).hexdigest())"`
    #[test]
    fn nat_d_hash_known_answer() {
        let cky_i = [1, 2, 3, 4, 5, 6, 7, 8];
        let cky_r = [9, 10, 11, 12, 13, 14, 15, 16];
        let h = nat_d_hash(IkeHash::Sha1, &cky_i, &cky_r, addr("192.0.2.100:31000"));
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "b0345870a377c588be7c09e21656a2dd9dbabdf0");
    }

    fn chain_of(bodies: &[(PayloadType, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        emit_chain(bodies, &mut out);
        out
    }

    #[test]
    fn detection_finds_which_side_is_translated() {
        let (ci, cr) = ([1; 8], [2; 8]);
        let inside = addr("10.0.0.1:500");
        let outside = addr("192.0.2.100:31000");
        let gw = addr("198.51.100.2:500");
        let h = IkeHash::Sha256;
        // The initiator behind a NAT sends its own view: gw first, then itself.
        let [first, second] = nat_d_bodies(h, &ci, &cr, inside, gw);
        let bytes = chain_of(&[
            (PayloadType::NatD, &first),
            (PayloadType::NatDDraft, &second),
        ]);
        let chain = parse_chain(PayloadType::NatD, &bytes).unwrap();
        // The gateway sees it arrive from the NAT's address: the peer is translated.
        assert_eq!(
            detect(&chain, h, &ci, &cr, gw, outside),
            Ok(Some((false, true)))
        );
        // Without a NAT, nothing is found.
        assert_eq!(
            detect(&chain, h, &ci, &cr, gw, inside),
            Ok(Some((false, false)))
        );
        // Seen from the far side of a NAT in front of the gateway: we are translated.
        assert_eq!(
            detect(&chain, h, &ci, &cr, addr("10.9.9.9:500"), inside),
            Ok(Some((true, false)))
        );
    }

    #[test]
    fn malformed_nat_d_is_an_error_not_a_panic() {
        let (ci, cr) = ([1; 8], [2; 8]);
        let a = addr("10.0.0.1:500");
        let h = IkeHash::Sha1;
        for bodies in [
            vec![vec![0u8; 20]],
            vec![vec![0u8; 20], vec![0u8; 19]],
            vec![vec![], vec![]],
            vec![vec![0u8; 32], vec![0u8; 20]],
        ] {
            let payloads: Vec<(PayloadType, &[u8])> = bodies
                .iter()
                .map(|b| (PayloadType::NatD, b.as_slice()))
                .collect();
            let bytes = chain_of(&payloads);
            let chain = parse_chain(PayloadType::NatD, &bytes).unwrap();
            assert!(detect(&chain, h, &ci, &cr, a, a).is_err(), "{bodies:?}");
        }
        let none = parse_chain(PayloadType::None, &[]).unwrap();
        assert_eq!(detect(&none, h, &ci, &cr, a, a), Ok(None));
    }

    #[test]
    fn nat_oa_round_trips_and_rejects_garbage() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let body = nat_oa_body(a);
        assert_eq!(body, [1, 0, 0, 0, 10, 0, 0, 1]);
        assert_eq!(parse_nat_oa(&body), Ok(a));
        for len in 0..body.len() {
            assert!(parse_nat_oa(&body[..len]).is_err());
        }
        assert!(parse_nat_oa(&[5, 0, 0, 0, 1, 2, 3, 4]).is_err());
    }

    #[test]
    fn encapsulation_modes_map_both_ways() {
        for d in [Dialect::Rfc3947, Dialect::Draft] {
            for m in [Mode::Tunnel, Mode::Transport] {
                assert_eq!(decode_encapsulation(d.encapsulation(m)), Some((m, Some(d))));
            }
        }
        assert_eq!(
            u16::from(Dialect::Rfc3947.encapsulation(Mode::Transport)),
            4
        );
        assert_eq!(u16::from(Dialect::Draft.encapsulation(Mode::Tunnel)), 61443);
        assert_eq!(decode_encapsulation(EncapsulationMode::Unknown(9)), None);
    }
}
