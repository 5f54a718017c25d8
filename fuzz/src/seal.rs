//! Packets the peer could have sent, built by the harness from a short program in the fuzz
//! input, with valid ICVs: without this the fuzzer could never get past an ICV check, and
//! decryption, the ESP trailer, decompression, tunnel decapsulation and the inbound policy
//! check would see only the few packets in the seed corpus.
//!
//! Program layout (after the selector byte that chose this mode):
//!
//! ```text
//! header  : bit 0-1 layers - 1, bit 2-3 IP options (none, Router Alert, Record Route,
//!           NOPs), bit 4 DF, bit 5 ECN CE in TOS
//! layer*  : bit 0-4 sealer (index into `sealers()`), bit 5 raw (ESP: the payload is the
//!           whole plaintext, trailer included; IPComp: not deflated; AH: no ICV),
//!           bit 6 wrap in an IPv4 header first (tunnel mode), applied innermost first
//! proto   : the Next Header of the innermost payload
//! seq     : 2 bytes, big-endian: the sequence number of every ESP/AH layer, as an offset
//!           from `base` (see `build`)
//! payload : the rest
//! ```

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use ipsec_plugin::crypto::{Deflate, EspCrypto, Integrity, IPCOMP_MAX_DECOMPRESSED};
use ipsec_plugin::wire::{self, ah, ipv4, udp, IpProtocol};

use crate::lab::{Flow, SPECS};

// A few dozen, built once: boxing the ESP context would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Kind {
    Esp { crypto: EspCrypto, udp_encap: bool },
    Ah(Integrity),
    IpComp,
}

/// One inbound SA of the instance under test, keyed as the peer's outbound SA.
pub struct Sealer {
    pub bundle: &'static str,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub spi: u32,
    pub kind: Kind,
}

pub fn sealers() -> &'static [Sealer] {
    static SEALERS: OnceLock<Vec<Sealer>> = OnceLock::new();
    SEALERS.get_or_init(|| {
        let mut v = Vec::new();
        for spec in &SPECS {
            let keys = spec.keys(Flow::PeerToLocal);
            let (src, dst) = spec.addrs(Flow::PeerToLocal);
            let mut add = |spi, kind| {
                v.push(Sealer {
                    bundle: spec.name,
                    src,
                    dst,
                    spi,
                    kind,
                })
            };
            if let Some(t) = spec.esp_transform() {
                let crypto =
                    EspCrypto::new(t, &keys.esp_enc, &keys.esp_auth).expect("lab ESP keys");
                add(
                    keys.esp_spi,
                    Kind::Esp {
                        crypto,
                        udp_encap: spec.udp_encap,
                    },
                );
            }
            if let Some(a) = spec.ah_alg() {
                add(
                    keys.ah_spi,
                    Kind::Ah(Integrity::new(a, &keys.ah_key).expect("lab AH key")),
                );
            }
            if spec.ipcomp {
                add(u32::from(keys.cpi), Kind::IpComp);
            }
        }
        v
    })
}

/// The index of a bundle's sealer for one protocol, for building seeds.
pub fn sealer_index(bundle: &str, esp: bool, ah: bool) -> u8 {
    sealers()
        .iter()
        .position(|s| {
            s.bundle == bundle
                && match s.kind {
                    Kind::Esp { .. } => esp,
                    Kind::Ah(_) => ah,
                    Kind::IpComp => !esp && !ah,
                }
        })
        .expect("no such sealer") as u8
}

pub const RAW: u8 = 0x20;
pub const TUNNEL: u8 = 0x40;

/// IPv4 options for the outer headers: none, Router Alert (immutable for AH), Record Route
/// (mutable, zeroed for the AH ICV), and padding NOPs.
const OPTIONS: [&[u8]; 4] = [
    &[],
    &[0x94, 0x04, 0x00, 0x00],
    &[0x07, 0x07, 0x04, 0, 0, 0, 0, 0x00],
    &[0x01, 0x01, 0x01, 0x00],
];

struct Outer {
    options: &'static [u8],
    dont_frag: bool,
    tos: u8,
}

impl Outer {
    fn header(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Option<Vec<u8>> {
        let hl = ipv4::HEADER_LEN + self.options.len();
        let total = u16::try_from(hl + payload.len()).ok()?;
        let mut out = vec![0u8; usize::from(total)];
        {
            let mut ip = ipv4::Packet::new_unchecked(&mut out[..]);
            ip.set_version(4);
            ip.set_header_len(hl);
            ip.set_tos(self.tos);
            ip.set_total_len(total);
            ip.set_ident(0x4242);
            ip.set_dont_frag(self.dont_frag);
            ip.set_ttl(64);
            ip.set_next_header(IpProtocol::from(proto));
            ip.set_src_addr(src);
            ip.set_dst_addr(dst);
            ip.options_mut().copy_from_slice(self.options);
            ip.fill_checksum();
        }
        out[hl..].copy_from_slice(payload);
        Some(out)
    }
}

/// Runs a program; None when it cannot be built (too long, a raw ESP payload that does
/// not fill whole cipher blocks).
///
/// Sequence numbers are `base` plus the program's offset. The instance under test keeps
/// its replay windows from input to input, so absolute numbers from the fuzzer would soon
/// include 0xffffffff and leave every windowed SA dropping all later packets as too old;
/// with a base that the caller moves forward, any window state stays reachable (duplicates,
/// too old, far ahead) and none is final.
pub fn build(program: &[u8], base: u32) -> Option<Vec<u8>> {
    let (&head, rest) = program.split_first()?;
    let layers = 1 + usize::from(head & 0x03);
    if rest.len() < layers + 3 {
        return None;
    }
    let (descs, rest) = rest.split_at(layers);
    let proto = rest[0];
    let seq = base.wrapping_add(u32::from(u16::from_be_bytes([rest[1], rest[2]])));
    let outer = Outer {
        options: OPTIONS[usize::from((head >> 2) & 0x03)],
        dont_frag: head & 0x10 != 0,
        tos: if head & 0x20 != 0 { 0x03 } else { 0 },
    };
    let all = sealers();
    let first = &all[usize::from(descs[0] & 0x1f) % all.len()];
    let (mut src, mut dst, mut proto, mut payload) =
        (first.src, first.dst, proto, rest[3..].to_vec());
    for &d in descs {
        let s = &all[usize::from(d & 0x1f) % all.len()];
        let raw = d & RAW != 0;
        if d & TUNNEL != 0 {
            payload = outer.header(src, dst, proto, &payload)?;
            proto = IpProtocol::IpIp.into();
            (src, dst) = (s.src, s.dst);
        }
        (proto, payload) = match &s.kind {
            Kind::Esp { crypto, udp_encap } => {
                let esp = seal_esp(crypto, s.spi, seq, proto, &payload, raw)?;
                if *udp_encap {
                    (IpProtocol::Udp.into(), udp_wrap(&esp)?)
                } else {
                    (IpProtocol::Esp.into(), esp)
                }
            }
            Kind::Ah(integ) => (
                IpProtocol::Ah.into(),
                seal_ah(integ, &outer, src, dst, s.spi, seq, proto, &payload, raw)?,
            ),
            Kind::IpComp => (
                IpProtocol::IpComp.into(),
                ipcomp(s.spi as u16, proto, &payload, raw),
            ),
        };
    }
    outer.header(src, dst, proto, &payload)
}

fn seal_esp(
    crypto: &EspCrypto,
    spi: u32,
    seq: u32,
    next: u8,
    payload: &[u8],
    raw: bool,
) -> Option<Vec<u8>> {
    let t = crypto.transform();
    let align = t.pad_align();
    let plaintext = if raw {
        let whole = payload.len() / align * align;
        payload.get(..whole).filter(|p| !p.is_empty())?.to_vec()
    } else {
        let pad_len = wire::esp::pad_len_for(payload.len(), align);
        let mut p = payload.to_vec();
        p.extend((1..=pad_len).chain([pad_len, next]));
        p
    };
    let iv_end = wire::esp::HEADER_LEN + t.iv_len();
    let mut esp = vec![0u8; iv_end + plaintext.len() + t.icv_len()];
    esp[..4].copy_from_slice(&spi.to_be_bytes());
    esp[4..8].copy_from_slice(&seq.to_be_bytes());
    esp[iv_end..iv_end + plaintext.len()].copy_from_slice(&plaintext);
    crypto.seal(&mut esp, u64::from(seq)).ok()?;
    Some(esp)
}

fn udp_wrap(esp: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(udp::HEADER_LEN + esp.len()).ok()?;
    let mut d = Vec::with_capacity(usize::from(len));
    d.extend(udp::NAT_T_PORT.to_be_bytes());
    d.extend(udp::NAT_T_PORT.to_be_bytes());
    d.extend(len.to_be_bytes());
    d.extend([0, 0]);
    d.extend_from_slice(esp);
    Some(d)
}

#[allow(clippy::too_many_arguments)]
fn seal_ah(
    integ: &Integrity,
    outer: &Outer,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    spi: u32,
    seq: u32,
    next: u8,
    payload: &[u8],
    raw: bool,
) -> Option<Vec<u8>> {
    let icv_len = integ.icv_len();
    let len = ipsec_plugin::spd::ah_header_len(icv_len);
    let mut d = vec![0u8; len];
    d[0] = next;
    d[1] = (len / 4 - 2) as u8;
    d[4..8].copy_from_slice(&spi.to_be_bytes());
    d[8..12].copy_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(payload);
    if !raw {
        // RFC 4302 section 3.3.3.1: the ICV covers the IP header with its mutable fields
        // zeroed, as it will be when this AH is the outermost layer left.
        let mut header = outer.header(src, dst, IpProtocol::Ah.into(), &d)?;
        let hl = ipv4::HEADER_LEN + outer.options.len();
        ah::zero_mutable_ipv4_fields(&mut header[..hl]);
        let mut icv = [0u8; 32];
        integ.compute(&[&header], &mut icv[..icv_len]);
        d[12..12 + icv_len].copy_from_slice(&icv[..icv_len]);
    }
    Some(d)
}

fn ipcomp(cpi: u16, next: u8, payload: &[u8], raw: bool) -> Vec<u8> {
    let mut d = vec![next, 0];
    d.extend(cpi.to_be_bytes());
    if raw {
        d.extend_from_slice(payload);
        return d;
    }
    let mut out = vec![0u8; IPCOMP_MAX_DECOMPRESSED];
    match Deflate::new().compress(payload, &mut out) {
        Some(n) => d.extend_from_slice(&out[..n]),
        // Would not shrink: a peer then sends no IPComp header at all, but an incompressible
        // payload behind one is still worth feeding to the decompressor.
        None => d.extend_from_slice(payload),
    }
    d
}
