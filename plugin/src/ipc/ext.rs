//! The extensions that follow the base header, as in RFC 2367 section 2.3: each starts with
//! its length in 64-bit words (itself included) and its type, and is padded to 64 bits.
//! Layouts are in docs/daemon-link.md; all numbers are big-endian.

use std::fmt;
use std::net::Ipv4Addr;

use super::alg::{AuthAlg, CompAlg, EncryptAlg};
use super::{DecodeError, EncodeError};
use crate::crypto::{EspTransform, IntegAlg};

/// Longest bundle name carried (ipsec.cfg lines are at most 4096 bytes; names are short).
pub const MAX_NAME_LEN: usize = 1024;

/// `sadb_sa_flags`: the peers agreed on PFS (RFC 2367's `SADB_SAFLAGS_PFS`).
pub const SA_FLAG_PFS: u32 = 0x1;
/// ESP in UDP (RFC 3948); the ADDRESS extensions' ports are the UDP ports.
pub const SA_FLAG_UDP_ENCAP: u32 = 0x100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtType {
    Sa,
    LifetimeCurrent,
    LifetimeHard,
    LifetimeSoft,
    AddressSrc,
    AddressDst,
    AddressProxy,
    KeyAuth,
    KeyEncrypt,
    IdentitySrc,
    IdentityDst,
    Proposal,
    SupportedAuth,
    SupportedEncrypt,
    SpiRange,
    /// Ours: the name of the ipsec.cfg bundle an SA or request belongs to.
    Bundle,
    /// Ours: one IKE-keyed bundle (selectors, protocols, IKE parameters).
    Policy,
    /// Ignored when received (RFC 2367 section 2.3), so that a newer peer may add some.
    Unknown(u16),
}

impl ExtType {
    pub fn number(self) -> u16 {
        match self {
            ExtType::Sa => 1,
            ExtType::LifetimeCurrent => 2,
            ExtType::LifetimeHard => 3,
            ExtType::LifetimeSoft => 4,
            ExtType::AddressSrc => 5,
            ExtType::AddressDst => 6,
            ExtType::AddressProxy => 7,
            ExtType::KeyAuth => 8,
            ExtType::KeyEncrypt => 9,
            ExtType::IdentitySrc => 10,
            ExtType::IdentityDst => 11,
            ExtType::Proposal => 13,
            ExtType::SupportedAuth => 14,
            ExtType::SupportedEncrypt => 15,
            ExtType::SpiRange => 16,
            ExtType::Bundle => 32,
            ExtType::Policy => 33,
            ExtType::Unknown(n) => n,
        }
    }

    pub fn from_number(n: u16) -> ExtType {
        const KNOWN: [ExtType; 17] = [
            ExtType::Sa,
            ExtType::LifetimeCurrent,
            ExtType::LifetimeHard,
            ExtType::LifetimeSoft,
            ExtType::AddressSrc,
            ExtType::AddressDst,
            ExtType::AddressProxy,
            ExtType::KeyAuth,
            ExtType::KeyEncrypt,
            ExtType::IdentitySrc,
            ExtType::IdentityDst,
            ExtType::Proposal,
            ExtType::SupportedAuth,
            ExtType::SupportedEncrypt,
            ExtType::SpiRange,
            ExtType::Bundle,
            ExtType::Policy,
        ];
        KNOWN
            .into_iter()
            .find(|t| t.number() == n)
            .unwrap_or(ExtType::Unknown(n))
    }

    pub fn name(self) -> &'static str {
        match self {
            ExtType::Sa => "SA",
            ExtType::LifetimeCurrent => "LIFETIME_CURRENT",
            ExtType::LifetimeHard => "LIFETIME_HARD",
            ExtType::LifetimeSoft => "LIFETIME_SOFT",
            ExtType::AddressSrc => "ADDRESS_SRC",
            ExtType::AddressDst => "ADDRESS_DST",
            ExtType::AddressProxy => "ADDRESS_PROXY",
            ExtType::KeyAuth => "KEY_AUTH",
            ExtType::KeyEncrypt => "KEY_ENCRYPT",
            ExtType::IdentitySrc => "IDENTITY_SRC",
            ExtType::IdentityDst => "IDENTITY_DST",
            ExtType::Proposal => "PROPOSAL",
            ExtType::SupportedAuth => "SUPPORTED_AUTH",
            ExtType::SupportedEncrypt => "SUPPORTED_ENCRYPT",
            ExtType::SpiRange => "SPIRANGE",
            ExtType::Bundle => "X_BUNDLE",
            ExtType::Policy => "X_POLICY",
            ExtType::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for ExtType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtType::Unknown(n) => write!(f, "extension type {n}"),
            t => write!(f, "{} extension", t.name()),
        }
    }
}

/// `sadb_sa_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaState {
    /// Allocated by GETSPI, not yet keyed.
    Larval,
    Mature,
    /// Past its soft lifetime.
    Dying,
    Dead,
    Unknown(u8),
}

impl SaState {
    pub fn number(self) -> u8 {
        match self {
            SaState::Larval => 0,
            SaState::Mature => 1,
            SaState::Dying => 2,
            SaState::Dead => 3,
            SaState::Unknown(n) => n,
        }
    }

    pub fn from_number(n: u8) -> SaState {
        match n {
            0 => SaState::Larval,
            1 => SaState::Mature,
            2 => SaState::Dying,
            3 => SaState::Dead,
            n => SaState::Unknown(n),
        }
    }
}

/// The SA (association) extension. Wider than `sadb_sa` (24 bytes, not 16): the replay
/// window goes up to 4096 packets, not 255, and the cipher key size and the IPComp
/// algorithm have fields of their own, so the SA is described without its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaExt {
    /// ESP/AH SPI, or the CPI of an IPComp SA.
    pub spi: u32,
    /// Packets; 0 = anti-replay off.
    pub replay_window: u32,
    pub state: SaState,
    pub auth: AuthAlg,
    pub encrypt: EncryptAlg,
    /// Bits of encryption key material (AES-GCM: with the salt); 0 without a cipher.
    pub encrypt_bits: u16,
    pub compress: CompAlg,
    /// [`SA_FLAG_PFS`], [`SA_FLAG_UDP_ENCAP`].
    pub flags: u32,
}

impl SaExt {
    /// An SA with no algorithms (GETSPI replies, DELETE, GET).
    pub fn bare(spi: u32, state: SaState) -> SaExt {
        SaExt {
            spi,
            replay_window: 0,
            state,
            auth: AuthAlg::None,
            encrypt: EncryptAlg::None,
            encrypt_bits: 0,
            compress: CompAlg::None,
            flags: 0,
        }
    }

    pub fn esp(spi: u32, transform: EspTransform, replay_window: u32, flags: u32) -> SaExt {
        let (encrypt, encrypt_bits, auth) = super::alg::esp_to_link(transform);
        SaExt {
            replay_window,
            auth,
            encrypt,
            encrypt_bits,
            flags,
            ..SaExt::bare(spi, SaState::Mature)
        }
    }

    pub fn ah(spi: u32, integ: IntegAlg, replay_window: u32, flags: u32) -> SaExt {
        SaExt {
            replay_window,
            auth: integ.into(),
            flags,
            ..SaExt::bare(spi, SaState::Mature)
        }
    }

    pub fn ipcomp(cpi: u16, flags: u32) -> SaExt {
        SaExt {
            compress: CompAlg::Deflate,
            flags,
            ..SaExt::bare(u32::from(cpi), SaState::Mature)
        }
    }

    /// The ESP transform, if the algorithms name one the plugin implements.
    pub fn esp_transform(&self) -> Option<EspTransform> {
        super::alg::esp_from_link(self.encrypt, self.encrypt_bits, self.auth)
    }
}

/// `sadb_lifetime`. In LIFETIME_CURRENT, `addtime`/`usetime` are Unix seconds when the SA
/// was added / first used; in HARD and SOFT they are seconds after those moments, and 0
/// anywhere means "no limit" for that field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lifetime {
    /// Packets (PF_KEY counts "allocations"; the plugin counts packets).
    pub allocations: u32,
    pub bytes: u64,
    pub addtime: u64,
    pub usetime: u64,
}

/// `sadb_address` with an IPv4 `sockaddr` folded in (family, port, address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// Upper-layer protocol for selectors (ACQUIRE); 0 = any.
    pub proto: u8,
    /// 32 for a host.
    pub prefix_len: u8,
    pub addr: Ipv4Addr,
    /// Selector port (ACQUIRE), or UDP-encapsulation port (SA messages); 0 = any/none.
    pub port: u16,
}

impl Address {
    pub fn host(addr: Ipv4Addr) -> Address {
        Address {
            proto: 0,
            prefix_len: 32,
            addr,
            port: 0,
        }
    }
}

const AF_INET: u16 = 2;

/// Key bytes of a KEY extension. Debug shows only the size; the bytes are overwritten when
/// dropped.
#[derive(PartialEq, Eq)]
pub struct KeyMaterial(Vec<u8>);

impl KeyMaterial {
    pub fn new(bytes: Vec<u8>) -> KeyMaterial {
        KeyMaterial(bytes)
    }

    /// Copies into an allocation of exactly the key's size (nothing left behind on growth).
    pub fn from_slice(bytes: &[u8]) -> KeyMaterial {
        let mut v = Vec::with_capacity(bytes.len());
        v.extend_from_slice(bytes);
        KeyMaterial(v)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn bits(&self) -> usize {
        self.0.len() * 8
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyMaterial({} bits, redacted)", self.bits())
    }
}

impl Drop for KeyMaterial {
    fn drop(&mut self) {
        super::wipe(&mut self.0);
    }
}

/// `sadb_ident_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityType {
    /// An address prefix, `a.b.c.d/n`.
    Prefix,
    Fqdn,
    UserFqdn,
    Unknown(u16),
}

impl IdentityType {
    pub fn number(self) -> u16 {
        match self {
            IdentityType::Prefix => 1,
            IdentityType::Fqdn => 2,
            IdentityType::UserFqdn => 3,
            IdentityType::Unknown(n) => n,
        }
    }

    pub fn from_number(n: u16) -> IdentityType {
        match n {
            1 => IdentityType::Prefix,
            2 => IdentityType::Fqdn,
            3 => IdentityType::UserFqdn,
            n => IdentityType::Unknown(n),
        }
    }
}

/// `sadb_ident`: an IKE identity (the peer's ID payload, for logs and dumps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub kind: IdentityType,
    pub id: u64,
    /// No NUL; carried NUL-terminated.
    pub text: String,
}

/// `sadb_comb`: one acceptable algorithm combination with its lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Comb {
    pub auth: u8,
    pub encrypt: u8,
    pub flags: u16,
    pub auth_min_bits: u16,
    pub auth_max_bits: u16,
    pub encrypt_min_bits: u16,
    pub encrypt_max_bits: u16,
    pub soft_allocations: u32,
    pub hard_allocations: u32,
    pub soft_bytes: u64,
    pub hard_bytes: u64,
    pub soft_addtime: u64,
    pub hard_addtime: u64,
    pub soft_usetime: u64,
    pub hard_usetime: u64,
}

const COMB_LEN: usize = 72;

/// `sadb_prop`, with a 32-bit replay window (PF_KEY's is 8 bits).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Proposal {
    pub replay_window: u32,
    pub combs: Vec<Comb>,
}

/// `sadb_alg`: one algorithm the plugin implements (REGISTER).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupportedAlg<A> {
    pub alg: A,
    pub iv_len: u8,
    pub min_bits: u16,
    pub max_bits: u16,
}

/// `sadb_spirange`: where GETSPI may pick the SPI (CPI for IPComp), inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiRange {
    pub min: u32,
    pub max: u32,
}

pub(crate) fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

/// Reads fields of the base header or one extension; running off the end is an error
/// naming the field, never a panic.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    pub(crate) ext: Option<ExtType>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], ext: Option<ExtType>) -> Reader<'a> {
        Reader { bytes, pos: 0, ext }
    }

    pub(crate) fn bad(&self, field: &'static str, reason: &'static str) -> DecodeError {
        DecodeError::Bad {
            ext: self.ext,
            field,
            reason,
        }
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| self.bad(field, "extension too short for it"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from(self.u32(field)?) << 32 | u64::from(self.u32(field)?))
    }

    /// Reserved fields must be zero: a non-zero one means a peer that speaks another
    /// dialect, better refused than misread.
    pub(crate) fn zero(&mut self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.take(n, field)?.iter().any(|&b| b != 0) {
            return Err(self.bad(field, "reserved, must be zero"));
        }
        Ok(())
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.bytes[self.pos.min(self.bytes.len())..];
        self.pos = self.bytes.len();
        s
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }
}

pub(crate) fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// The extension header; `len` in bytes, a multiple of 8 (checked by the caller).
pub(crate) fn put_header(out: &mut Vec<u8>, len: usize, ty: ExtType) {
    put16(out, (len / 8) as u16);
    put16(out, ty.number());
}

pub(crate) fn put_padding(out: &mut Vec<u8>, written: usize) {
    out.resize(out.len() + (pad8(written) - written), 0);
}

/// Reads the zero padding that ends a variable extension (and nothing else).
fn padding(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    if r.remaining() >= 8 {
        return Err(r.bad("length", "longer than its content"));
    }
    let n = r.remaining();
    r.zero(n, "padding")
}

fn bad_enc(ext: ExtType, field: &'static str, reason: &'static str) -> EncodeError {
    EncodeError::Bad {
        ext: Some(ext),
        field,
        reason,
    }
}

pub(crate) const SA_LEN: usize = 24;

pub(crate) fn emit_sa(out: &mut Vec<u8>, sa: &SaExt) {
    put_header(out, SA_LEN, ExtType::Sa);
    put32(out, sa.spi);
    put32(out, sa.replay_window);
    out.extend_from_slice(&[
        sa.state.number(),
        sa.auth.number(),
        sa.encrypt.number(),
        sa.compress.number(),
    ]);
    put32(out, sa.flags);
    put16(out, sa.encrypt_bits);
    put16(out, 0);
}

pub(crate) fn decode_sa(r: &mut Reader<'_>) -> Result<SaExt, DecodeError> {
    let sa = SaExt {
        spi: r.u32("spi")?,
        replay_window: r.u32("replay_window")?,
        state: SaState::from_number(r.u8("state")?),
        auth: AuthAlg::from_number(r.u8("auth")?),
        encrypt: EncryptAlg::from_number(r.u8("encrypt")?),
        compress: CompAlg::from_number(r.u8("compress")?),
        flags: r.u32("flags")?,
        encrypt_bits: r.u16("encrypt_bits")?,
    };
    r.zero(2, "reserved")?;
    Ok(sa)
}

pub(crate) const LIFETIME_LEN: usize = 32;

pub(crate) fn emit_lifetime(out: &mut Vec<u8>, ty: ExtType, l: &Lifetime) {
    put_header(out, LIFETIME_LEN, ty);
    put32(out, l.allocations);
    put64(out, l.bytes);
    put64(out, l.addtime);
    put64(out, l.usetime);
}

pub(crate) fn decode_lifetime(r: &mut Reader<'_>) -> Result<Lifetime, DecodeError> {
    Ok(Lifetime {
        allocations: r.u32("allocations")?,
        bytes: r.u64("bytes")?,
        addtime: r.u64("addtime")?,
        usetime: r.u64("usetime")?,
    })
}

pub(crate) const ADDRESS_LEN: usize = 16;

pub(crate) fn emit_address(out: &mut Vec<u8>, ty: ExtType, a: &Address) {
    put_header(out, ADDRESS_LEN, ty);
    out.extend_from_slice(&[a.proto, a.prefix_len]);
    put16(out, 0);
    put16(out, AF_INET);
    put16(out, a.port);
    out.extend_from_slice(&a.addr.octets());
}

pub(crate) fn check_address(ty: ExtType, a: &Address) -> Result<(), EncodeError> {
    if a.prefix_len > 32 {
        return Err(bad_enc(ty, "prefix_len", "more than 32"));
    }
    Ok(())
}

pub(crate) fn decode_address(r: &mut Reader<'_>) -> Result<Address, DecodeError> {
    let proto = r.u8("proto")?;
    let prefix_len = r.u8("prefix_len")?;
    if prefix_len > 32 {
        return Err(r.bad("prefix_len", "more than 32"));
    }
    r.zero(2, "reserved")?;
    if r.u16("family")? != AF_INET {
        return Err(r.bad("family", "only AF_INET (2) is carried"));
    }
    let port = r.u16("port")?;
    let addr = Ipv4Addr::from(r.u32("addr")?);
    Ok(Address {
        proto,
        prefix_len,
        addr,
        port,
    })
}

/// Key bits are a 16-bit field counting whole bytes.
const MAX_KEY_BYTES: usize = (u16::MAX / 8) as usize;

pub(crate) fn key_len(ty: ExtType, k: &KeyMaterial) -> Result<usize, EncodeError> {
    if k.0.is_empty() || k.0.len() > MAX_KEY_BYTES {
        return Err(bad_enc(ty, "bits", "a key is 1 to 8191 bytes"));
    }
    Ok(pad8(8 + k.0.len()))
}

pub(crate) fn emit_key(out: &mut Vec<u8>, ty: ExtType, k: &KeyMaterial, len: usize) {
    put_header(out, len, ty);
    put16(out, k.bits() as u16);
    put16(out, 0);
    out.extend_from_slice(&k.0);
    put_padding(out, 8 + k.0.len());
}

pub(crate) fn decode_key(r: &mut Reader<'_>) -> Result<KeyMaterial, DecodeError> {
    let bits = usize::from(r.u16("bits")?);
    if bits == 0 || !bits.is_multiple_of(8) {
        return Err(r.bad("bits", "keys are whole bytes, at least one"));
    }
    r.zero(2, "reserved")?;
    let key = KeyMaterial::from_slice(r.take(bits / 8, "key")?);
    padding(r)?;
    Ok(key)
}

pub(crate) fn identity_len(ty: ExtType, id: &Identity) -> Result<usize, EncodeError> {
    if id.text.as_bytes().contains(&0) {
        return Err(bad_enc(ty, "text", "contains NUL"));
    }
    Ok(pad8(16 + id.text.len() + 1))
}

pub(crate) fn emit_identity(out: &mut Vec<u8>, ty: ExtType, id: &Identity, len: usize) {
    put_header(out, len, ty);
    put16(out, id.kind.number());
    put16(out, 0);
    put64(out, id.id);
    out.extend_from_slice(id.text.as_bytes());
    out.push(0);
    put_padding(out, 16 + id.text.len() + 1);
}

pub(crate) fn decode_identity(r: &mut Reader<'_>) -> Result<Identity, DecodeError> {
    let kind = IdentityType::from_number(r.u16("ident_type")?);
    r.zero(2, "reserved")?;
    let id = r.u64("ident_id")?;
    let rest = r.rest();
    let nul = rest.iter().position(|&b| b == 0).ok_or(DecodeError::Bad {
        ext: r.ext,
        field: "text",
        reason: "not NUL-terminated",
    })?;
    let bad = |reason| DecodeError::Bad {
        ext: r.ext,
        field: "text",
        reason,
    };
    if rest.len() - nul > 8 {
        return Err(bad("more padding than alignment needs"));
    }
    if rest[nul..].iter().any(|&b| b != 0) {
        return Err(bad("bytes after the terminating NUL"));
    }
    let text = std::str::from_utf8(&rest[..nul]).map_err(|_| bad("not UTF-8"))?;
    Ok(Identity {
        kind,
        id,
        text: text.to_owned(),
    })
}

pub(crate) fn proposal_len(p: &Proposal) -> usize {
    8 + p.combs.len() * COMB_LEN
}

pub(crate) fn emit_proposal(out: &mut Vec<u8>, p: &Proposal) {
    put_header(out, proposal_len(p), ExtType::Proposal);
    put32(out, p.replay_window);
    for c in &p.combs {
        out.extend_from_slice(&[c.auth, c.encrypt]);
        for v in [
            c.flags,
            c.auth_min_bits,
            c.auth_max_bits,
            c.encrypt_min_bits,
            c.encrypt_max_bits,
        ] {
            put16(out, v);
        }
        for v in [0, c.soft_allocations, c.hard_allocations] {
            put32(out, v);
        }
        for v in [
            c.soft_bytes,
            c.hard_bytes,
            c.soft_addtime,
            c.hard_addtime,
            c.soft_usetime,
            c.hard_usetime,
        ] {
            put64(out, v);
        }
    }
}

pub(crate) fn decode_proposal(r: &mut Reader<'_>) -> Result<Proposal, DecodeError> {
    let replay_window = r.u32("replay_window")?;
    if !r.remaining().is_multiple_of(COMB_LEN) {
        return Err(r.bad("combs", "not a whole number of 72-byte combinations"));
    }
    let mut combs = Vec::with_capacity(r.remaining() / COMB_LEN);
    while r.remaining() > 0 {
        let mut c = Comb {
            auth: r.u8("comb auth")?,
            encrypt: r.u8("comb encrypt")?,
            ..Comb::default()
        };
        c.flags = r.u16("comb flags")?;
        c.auth_min_bits = r.u16("comb auth_minbits")?;
        c.auth_max_bits = r.u16("comb auth_maxbits")?;
        c.encrypt_min_bits = r.u16("comb encrypt_minbits")?;
        c.encrypt_max_bits = r.u16("comb encrypt_maxbits")?;
        r.zero(4, "comb reserved")?;
        c.soft_allocations = r.u32("comb soft_allocations")?;
        c.hard_allocations = r.u32("comb hard_allocations")?;
        c.soft_bytes = r.u64("comb soft_bytes")?;
        c.hard_bytes = r.u64("comb hard_bytes")?;
        c.soft_addtime = r.u64("comb soft_addtime")?;
        c.hard_addtime = r.u64("comb hard_addtime")?;
        c.soft_usetime = r.u64("comb soft_usetime")?;
        c.hard_usetime = r.u64("comb hard_usetime")?;
        combs.push(c);
    }
    Ok(Proposal { replay_window, combs })
}

pub(crate) fn supported_len<A>(algs: &[SupportedAlg<A>]) -> usize {
    8 + algs.len() * 8
}

pub(crate) fn emit_supported<A: Copy>(out: &mut Vec<u8>, ty: ExtType, algs: &[SupportedAlg<A>], number: fn(A) -> u8) {
    put_header(out, supported_len(algs), ty);
    put32(out, 0);
    for a in algs {
        out.extend_from_slice(&[number(a.alg), a.iv_len]);
        put16(out, a.min_bits);
        put16(out, a.max_bits);
        put16(out, 0);
    }
}

pub(crate) fn decode_supported<A>(
    r: &mut Reader<'_>,
    from_number: fn(u8) -> A,
) -> Result<Vec<SupportedAlg<A>>, DecodeError> {
    r.zero(4, "reserved")?;
    let mut algs = Vec::with_capacity(r.remaining() / 8);
    while r.remaining() > 0 {
        let alg = from_number(r.u8("alg id")?);
        let iv_len = r.u8("alg ivlen")?;
        let min_bits = r.u16("alg minbits")?;
        let max_bits = r.u16("alg maxbits")?;
        r.zero(2, "alg reserved")?;
        algs.push(SupportedAlg {
            alg,
            iv_len,
            min_bits,
            max_bits,
        });
    }
    Ok(algs)
}

pub(crate) const SPIRANGE_LEN: usize = 16;

pub(crate) fn emit_spirange(out: &mut Vec<u8>, s: &SpiRange) {
    put_header(out, SPIRANGE_LEN, ExtType::SpiRange);
    put32(out, s.min);
    put32(out, s.max);
    put32(out, 0);
}

pub(crate) fn check_spirange(s: &SpiRange) -> Result<(), EncodeError> {
    if s.min > s.max {
        return Err(bad_enc(ExtType::SpiRange, "min", "above max"));
    }
    Ok(())
}

pub(crate) fn decode_spirange(r: &mut Reader<'_>) -> Result<SpiRange, DecodeError> {
    let s = SpiRange {
        min: r.u32("min")?,
        max: r.u32("max")?,
    };
    r.zero(4, "reserved")?;
    if s.min > s.max {
        return Err(r.bad("min", "above max"));
    }
    Ok(s)
}

pub(crate) fn name_len(ty: ExtType, name: &str) -> Result<usize, EncodeError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad_enc(ty, "name", "a bundle name is 1 to 1024 bytes"));
    }
    Ok(pad8(8 + name.len()))
}

pub(crate) fn emit_bundle_name(out: &mut Vec<u8>, name: &str, len: usize) {
    put_header(out, len, ExtType::Bundle);
    put16(out, name.len() as u16);
    put16(out, 0);
    out.extend_from_slice(name.as_bytes());
    put_padding(out, 8 + name.len());
}

/// A name field: its length was read before; the bytes follow.
pub(crate) fn decode_name(r: &mut Reader<'_>, len: usize) -> Result<String, DecodeError> {
    if len == 0 || len > MAX_NAME_LEN {
        return Err(r.bad("name_len", "a bundle name is 1 to 1024 bytes"));
    }
    let bytes = r.take(len, "name")?;
    let name = std::str::from_utf8(bytes).map_err(|_| r.bad("name", "not UTF-8"))?;
    Ok(name.to_owned())
}

pub(crate) fn decode_bundle_name(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let len = usize::from(r.u16("name_len")?);
    r.zero(2, "reserved")?;
    let name = decode_name(r, len)?;
    padding(r)?;
    Ok(name)
}

pub(crate) fn decode_padding(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    padding(r)
}
