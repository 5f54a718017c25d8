//! X_POLICY: one `keying = ike` bundle of ipsec.cfg, as `crate::config::Bundle` (one
//! definition on both sides). Only IKE bundles travel: manual keys never leave the plugin.
//!
//! ```text
//!  0 len u16 | type u16 (33) | flags u16 | mode u8 | protocol u8
//!  8 local u32 | remote u32
//! 16 local_subnet u32 | remote_subnet u32
//! 24 local_prefix u8 | remote_prefix u8 | local_port u16 | remote_port u16
//!    | esp_encrypt u8 | esp_auth u8
//! 32 esp_encrypt_bits u16 | ah_auth u8 | compress u8 | replay_window u32
//! 40 line u32 | keyingtries u32
//! 48 lifetime u64   56 ike_lifetime u64   64 rekeymargin u64
//! 72 rekeyfuzz u32 | proposal_count u8 | reserved u8 | name_len u16
//! 80 proposals, 8 bytes each: cipher u8 | hash u8 | group u16 | key_bits u16 | reserved u16
//!    then the name, zero-padded to 64 bits
//! ```
//! A field whose flag is clear is zero, so every bundle has exactly one encoding.

use std::net::Ipv4Addr;

use super::alg::{esp_from_link, esp_to_link, proposal_from_link, proposal_to_link, AuthAlg, CompAlg, EncryptAlg};
use super::ext::{
    decode_name, decode_padding, pad8, put16, put32, put64, put_header, put_padding, ExtType, Reader, MAX_NAME_LEN,
};
use super::{DecodeError, EncodeError};
use crate::config::{Bundle, Cidr, IkeParams, Keying, Mode};

const PFS: u16 = 0x1;
const UDP_ENCAP: u16 = 0x2;
const PROTOCOL: u16 = 0x4;
const LOCAL_PORT: u16 = 0x8;
const REMOTE_PORT: u16 = 0x10;
const LOCAL_SUBNET: u16 = 0x20;
const REMOTE_SUBNET: u16 = 0x40;
const ESP: u16 = 0x80;
const ALL_FLAGS: u16 = 0xff;

/// `IPSEC_MODE_TRANSPORT` and `IPSEC_MODE_TUNNEL` of the KAME/Linux PF_KEY headers.
const MODE_TRANSPORT: u8 = 1;
const MODE_TUNNEL: u8 = 2;

const FIXED_LEN: usize = 80;
const PROPOSAL_LEN: usize = 8;

fn bad(field: &'static str, reason: &'static str) -> EncodeError {
    EncodeError::Bad {
        ext: Some(ExtType::Policy),
        field,
        reason,
    }
}

fn ike(b: &Bundle) -> Result<&IkeParams, EncodeError> {
    match &b.keying {
        Keying::Ike(p) => Ok(p),
        Keying::Manual(_) => Err(bad("keying", "only keying = ike bundles go to the daemon")),
    }
}

pub(crate) fn policy_len(b: &Bundle) -> Result<usize, EncodeError> {
    let p = ike(b)?;
    if b.name.is_empty() || b.name.len() > MAX_NAME_LEN {
        return Err(bad("name", "a bundle name is 1 to 1024 bytes"));
    }
    if p.proposals.len() > usize::from(u8::MAX) {
        return Err(bad("proposals", "more than 255"));
    }
    Ok(pad8(FIXED_LEN + p.proposals.len() * PROPOSAL_LEN + b.name.len()))
}

pub(crate) fn emit_policy(out: &mut Vec<u8>, b: &Bundle, len: usize) -> Result<(), EncodeError> {
    let p = ike(b)?;
    let mut flags = 0;
    let mut set = |on: bool, f: u16| {
        if on {
            flags |= f
        }
    };
    set(p.pfs, PFS);
    set(b.udp_encap, UDP_ENCAP);
    set(b.protocol.is_some(), PROTOCOL);
    set(b.local_port.is_some(), LOCAL_PORT);
    set(b.remote_port.is_some(), REMOTE_PORT);
    set(b.local_subnet.is_some(), LOCAL_SUBNET);
    set(b.remote_subnet.is_some(), REMOTE_SUBNET);
    set(b.esp.is_some(), ESP);
    let subnet = |c: Option<Cidr>| c.map_or((Ipv4Addr::UNSPECIFIED, 0), |c| (c.addr, c.prefix));
    let (local_net, local_prefix) = subnet(b.local_subnet);
    let (remote_net, remote_prefix) = subnet(b.remote_subnet);
    let (esp_encrypt, esp_bits, esp_auth) = b.esp.map_or((EncryptAlg::None, 0, AuthAlg::None), esp_to_link);

    put_header(out, len, ExtType::Policy);
    put16(out, flags);
    out.push(match b.mode {
        Mode::Transport => MODE_TRANSPORT,
        Mode::Tunnel => MODE_TUNNEL,
    });
    out.push(b.protocol.unwrap_or(0));
    for a in [b.local, b.remote, local_net, remote_net] {
        out.extend_from_slice(&a.octets());
    }
    out.extend_from_slice(&[local_prefix, remote_prefix]);
    put16(out, b.local_port.unwrap_or(0));
    put16(out, b.remote_port.unwrap_or(0));
    out.extend_from_slice(&[esp_encrypt.number(), esp_auth.number()]);
    put16(out, esp_bits);
    out.push(b.ah.map_or(AuthAlg::None, AuthAlg::from).number());
    out.push(if b.ipcomp { CompAlg::Deflate } else { CompAlg::None }.number());
    put32(out, b.replay_window);
    put32(out, b.line);
    put32(out, p.keyingtries);
    put64(out, p.lifetime_secs);
    put64(out, p.ike_lifetime_secs);
    put64(out, p.rekeymargin_secs);
    put32(out, p.rekeyfuzz_percent);
    out.push(p.proposals.len() as u8);
    out.push(0);
    put16(out, b.name.len() as u16);
    for &prop in &p.proposals {
        let (cipher, key_bits, hash, group) = proposal_to_link(prop);
        out.extend_from_slice(&[cipher, hash]);
        put16(out, group);
        put16(out, key_bits);
        put16(out, 0);
    }
    out.extend_from_slice(b.name.as_bytes());
    put_padding(out, FIXED_LEN + p.proposals.len() * PROPOSAL_LEN + b.name.len());
    Ok(())
}

pub(crate) fn decode_policy(r: &mut Reader<'_>) -> Result<Bundle, DecodeError> {
    let flags = r.u16("flags")?;
    if flags & !ALL_FLAGS != 0 {
        return Err(r.bad("flags", "unknown flag bits"));
    }
    let has = |f: u16| flags & f != 0;
    let mode = match r.u8("mode")? {
        MODE_TRANSPORT => Mode::Transport,
        MODE_TUNNEL => Mode::Tunnel,
        _ => return Err(r.bad("mode", "neither transport (1) nor tunnel (2)")),
    };
    let protocol = r.u8("protocol")?;
    let local = Ipv4Addr::from(r.u32("local")?);
    let remote = Ipv4Addr::from(r.u32("remote")?);
    let local_net = Ipv4Addr::from(r.u32("local_subnet")?);
    let remote_net = Ipv4Addr::from(r.u32("remote_subnet")?);
    let local_prefix = r.u8("local_prefix")?;
    let remote_prefix = r.u8("remote_prefix")?;
    let local_port = r.u16("local_port")?;
    let remote_port = r.u16("remote_port")?;
    let esp_encrypt = EncryptAlg::from_number(r.u8("esp_encrypt")?);
    let esp_auth = AuthAlg::from_number(r.u8("esp_auth")?);
    let esp_bits = r.u16("esp_encrypt_bits")?;
    let ah_auth = AuthAlg::from_number(r.u8("ah_auth")?);
    let compress = CompAlg::from_number(r.u8("compress")?);
    let replay_window = r.u32("replay_window")?;
    let line = r.u32("line")?;
    let keyingtries = r.u32("keyingtries")?;
    let lifetime_secs = r.u64("lifetime")?;
    let ike_lifetime_secs = r.u64("ike_lifetime")?;
    let rekeymargin_secs = r.u64("rekeymargin")?;
    let rekeyfuzz_percent = r.u32("rekeyfuzz")?;
    let proposal_count = usize::from(r.u8("proposal_count")?);
    r.zero(1, "reserved")?;
    let name_len = usize::from(r.u16("name_len")?);

    // Optional fields: present with their flag, zero without it.
    let optional = |r: &Reader<'_>, on: bool, zero: bool, field| -> Result<bool, DecodeError> {
        if !on && !zero {
            return Err(r.bad(field, "set without its flag"));
        }
        Ok(on)
    };
    let subnet = |r: &Reader<'_>, on, net: Ipv4Addr, prefix: u8, field| -> Result<Option<Cidr>, DecodeError> {
        if !optional(r, on, net.is_unspecified() && prefix == 0, field)? {
            return Ok(None);
        }
        match Cidr::new(net, prefix) {
            Some(c) if c.addr == net => Ok(Some(c)),
            Some(_) => Err(r.bad(field, "host bits set")),
            None => Err(r.bad(field, "prefix longer than 32")),
        }
    };
    let local_subnet = subnet(r, has(LOCAL_SUBNET), local_net, local_prefix, "local_subnet")?;
    let remote_subnet = subnet(r, has(REMOTE_SUBNET), remote_net, remote_prefix, "remote_subnet")?;
    let protocol = optional(r, has(PROTOCOL), protocol == 0, "protocol")?.then_some(protocol);
    let local_port = optional(r, has(LOCAL_PORT), local_port == 0, "local_port")?.then_some(local_port);
    let remote_port = optional(r, has(REMOTE_PORT), remote_port == 0, "remote_port")?.then_some(remote_port);
    let no_esp = esp_encrypt == EncryptAlg::None && esp_auth == AuthAlg::None && esp_bits == 0;
    let esp = if optional(r, has(ESP), no_esp, "esp_encrypt")? {
        Some(
            esp_from_link(esp_encrypt, esp_bits, esp_auth)
                .ok_or_else(|| r.bad("esp_encrypt", "not an ESP transform the plugin implements"))?,
        )
    } else {
        None
    };
    let ah = match ah_auth {
        AuthAlg::None => None,
        a => Some(
            a.integ()
                .ok_or_else(|| r.bad("ah_auth", "not an AH algorithm the plugin implements"))?,
        ),
    };
    let ipcomp = match compress {
        CompAlg::None => false,
        CompAlg::Deflate => true,
        CompAlg::Unknown(_) => return Err(r.bad("compress", "not deflate (2) or none (0)")),
    };

    let mut proposals = Vec::with_capacity(proposal_count);
    for _ in 0..proposal_count {
        let cipher = r.u8("proposal cipher")?;
        let hash = r.u8("proposal hash")?;
        let group = r.u16("proposal group")?;
        let key_bits = r.u16("proposal key_bits")?;
        r.zero(2, "proposal reserved")?;
        proposals.push(
            proposal_from_link(cipher, key_bits, hash, group)
                .ok_or_else(|| r.bad("proposals", "not an IKE proposal the daemon implements"))?,
        );
    }
    let name = decode_name(r, name_len)?;
    decode_padding(r)?;
    Ok(Bundle {
        name,
        line,
        local,
        remote,
        mode,
        local_subnet,
        remote_subnet,
        protocol,
        local_port,
        remote_port,
        esp,
        ah,
        ipcomp,
        keying: Keying::Ike(IkeParams {
            proposals,
            pfs: has(PFS),
            lifetime_secs,
            ike_lifetime_secs,
            rekeymargin_secs,
            rekeyfuzz_percent,
            keyingtries,
        }),
        replay_window,
        udp_encap: has(UDP_ENCAP),
    })
}
