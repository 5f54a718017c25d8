//! The plugin–daemon link (SPEC §7): a versioned binary protocol modelled on PF_KEY v2
//! (RFC 2367), one codec for both sides (the daemon links this crate for it). The protocol,
//! message by message, is documented in docs/daemon-link.md.
//!
//! A message is a 16-byte base header followed by extensions, each a multiple of 64 bits
//! long with its length in 64-bit words, as in PF_KEY. Differences from RFC 2367, all
//! because this is a socket between two programs rather than a kernel API: numbers are
//! big-endian; version 1 is ours (not PF_KEY_V2); the SA extension is wider (a 32-bit
//! replay window, the cipher key size and the IPComp algorithm); addresses are IPv4 only;
//! two extensions of ours carry a bundle's name (X_BUNDLE) and a whole IKE bundle
//! (X_POLICY); no message ever carries keys towards the daemon.
//!
//! [`Message::decode`] checks structure (version first, sizes, alignment, reserved zeros,
//! duplicates); [`Message::validate`] checks that a message of its type from that side
//! has what it needs, including keys that fit the SA's algorithms. Neither panics on any
//! input.

#![deny(unsafe_code)]

mod alg;
mod ext;
mod policy;

#[cfg(test)]
mod tests;

use std::fmt;

pub use alg::{esp_from_link, esp_to_link, AuthAlg, CompAlg, EncryptAlg};
pub use ext::{
    Address, Comb, ExtType, Identity, IdentityType, KeyMaterial, Lifetime, Proposal, SaExt, SaState, SpiRange,
    SupportedAlg, MAX_NAME_LEN, SA_FLAG_PFS, SA_FLAG_UDP_ENCAP,
};

use crate::config::Bundle;
use ext::Reader;

/// The link's protocol version, first byte of every message. Both sides refuse any other.
pub const LINK_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;
/// Larger messages are refused on both sides (the largest real one, an X_POLICY with a
/// few proposals, is well under 1 KiB).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// The lowest SPI (and CPI) the daemon may ask GETSPI for; 0x100-0xFFF stay free for
/// manual keying (SPEC §7).
pub const DAEMON_SPI_MIN: u32 = 0x1000;

/// `sadb_msg_type`: RFC 2367's numbers, and KAME's for the policy (SPD) messages, which
/// here carry ipsec.cfg bundles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsgType {
    GetSpi,
    Update,
    Add,
    Delete,
    Get,
    Acquire,
    Register,
    Expire,
    Flush,
    Dump,
    SpdAdd,
    SpdDelete,
    SpdDump,
    SpdFlush,
    Unknown(u8),
}

impl MsgType {
    pub const ALL: [MsgType; 14] = [
        MsgType::GetSpi,
        MsgType::Update,
        MsgType::Add,
        MsgType::Delete,
        MsgType::Get,
        MsgType::Acquire,
        MsgType::Register,
        MsgType::Expire,
        MsgType::Flush,
        MsgType::Dump,
        MsgType::SpdAdd,
        MsgType::SpdDelete,
        MsgType::SpdDump,
        MsgType::SpdFlush,
    ];

    pub fn number(self) -> u8 {
        match self {
            MsgType::GetSpi => 1,
            MsgType::Update => 2,
            MsgType::Add => 3,
            MsgType::Delete => 4,
            MsgType::Get => 5,
            MsgType::Acquire => 6,
            MsgType::Register => 7,
            MsgType::Expire => 8,
            MsgType::Flush => 9,
            MsgType::Dump => 10,
            MsgType::SpdAdd => 14,
            MsgType::SpdDelete => 15,
            MsgType::SpdDump => 18,
            MsgType::SpdFlush => 19,
            MsgType::Unknown(n) => n,
        }
    }

    pub fn from_number(n: u8) -> MsgType {
        MsgType::ALL
            .into_iter()
            .find(|t| t.number() == n)
            .unwrap_or(MsgType::Unknown(n))
    }

    pub fn name(self) -> &'static str {
        match self {
            MsgType::GetSpi => "GETSPI",
            MsgType::Update => "UPDATE",
            MsgType::Add => "ADD",
            MsgType::Delete => "DELETE",
            MsgType::Get => "GET",
            MsgType::Acquire => "ACQUIRE",
            MsgType::Register => "REGISTER",
            MsgType::Expire => "EXPIRE",
            MsgType::Flush => "FLUSH",
            MsgType::Dump => "DUMP",
            MsgType::SpdAdd => "SPDADD",
            MsgType::SpdDelete => "SPDDELETE",
            MsgType::SpdDump => "SPDDUMP",
            MsgType::SpdFlush => "SPDFLUSH",
            MsgType::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsgType::Unknown(n) => write!(f, "message type {n}"),
            t => f.write_str(t.name()),
        }
    }
}

/// `sadb_msg_satype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaType {
    /// All types (FLUSH, DUMP, REGISTER) or not about one SA (policy messages, ACQUIRE).
    Unspec,
    Ah,
    Esp,
    IpComp,
    Unknown(u8),
}

impl SaType {
    pub fn number(self) -> u8 {
        match self {
            SaType::Unspec => 0,
            SaType::Ah => 2,
            SaType::Esp => 3,
            SaType::IpComp => 9,
            SaType::Unknown(n) => n,
        }
    }

    pub fn from_number(n: u8) -> SaType {
        match n {
            0 => SaType::Unspec,
            2 => SaType::Ah,
            3 => SaType::Esp,
            9 => SaType::IpComp,
            n => SaType::Unknown(n),
        }
    }
}

/// `sadb_msg_errno`: why a request failed (Linux errno numbers, as PF_KEY uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    /// ENOENT: no such SA, bundle or policy.
    NoEntry,
    /// EACCES: the peer failed authentication (wrong PSK).
    Access,
    /// EEXIST: an SA with that SPI exists.
    Exists,
    /// EINVAL: a malformed or unacceptable message.
    Invalid,
    /// ENOSPC: no free SPI in the range.
    NoSpace,
    /// EOPNOTSUPP: a message type or algorithm this side does not implement.
    NotSupported,
    /// ETIMEDOUT: keying gave up (keyingtries exhausted).
    TimedOut,
    /// ECONNREFUSED: the peer refused (no proposal chosen, invalid ID...).
    Refused,
    Unknown(u8),
}

impl Errno {
    pub fn number(self) -> u8 {
        match self {
            Errno::NoEntry => 2,
            Errno::Access => 13,
            Errno::Exists => 17,
            Errno::Invalid => 22,
            Errno::NoSpace => 28,
            Errno::NotSupported => 95,
            Errno::TimedOut => 110,
            Errno::Refused => 111,
            Errno::Unknown(n) => n,
        }
    }

    /// None for 0 (success).
    pub fn from_number(n: u8) -> Option<Errno> {
        Some(match n {
            0 => return None,
            2 => Errno::NoEntry,
            13 => Errno::Access,
            17 => Errno::Exists,
            22 => Errno::Invalid,
            28 => Errno::NoSpace,
            95 => Errno::NotSupported,
            110 => Errno::TimedOut,
            111 => Errno::Refused,
            n => Errno::Unknown(n),
        })
    }
}

/// Who sent a message: they play PF_KEY's kernel (the plugin, which holds the SAs) and
/// key manager (the daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Plugin,
    Daemon,
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sender::Plugin => "plugin",
            Sender::Daemon => "daemon",
        })
    }
}

/// `sadb_msg` without the version and length, which the codec fills in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub msg_type: MsgType,
    /// None = success (0 on the wire).
    pub errno: Option<Errno>,
    pub sa_type: SaType,
    /// Chosen by the side that starts an exchange; replies echo it. An UPDATE or ADD that
    /// answers an ACQUIRE carries the ACQUIRE's.
    pub seq: u32,
    /// The process id of the side that started the exchange.
    pub pid: u32,
}

/// The extensions of a message; at most one of each type (RFC 2367 section 2.3).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub sa: Option<SaExt>,
    pub lifetime_current: Option<Lifetime>,
    pub lifetime_hard: Option<Lifetime>,
    pub lifetime_soft: Option<Lifetime>,
    pub address_src: Option<Address>,
    pub address_dst: Option<Address>,
    pub address_proxy: Option<Address>,
    pub key_auth: Option<KeyMaterial>,
    pub key_encrypt: Option<KeyMaterial>,
    pub identity_src: Option<Identity>,
    pub identity_dst: Option<Identity>,
    pub proposal: Option<Proposal>,
    pub supported_auth: Option<Vec<SupportedAlg<AuthAlg>>>,
    pub supported_encrypt: Option<Vec<SupportedAlg<EncryptAlg>>>,
    pub spirange: Option<SpiRange>,
    /// X_BUNDLE: the ipsec.cfg bundle the SA or request belongs to.
    pub bundle: Option<String>,
    /// X_POLICY: a `keying = ike` bundle (SPDADD, SPDDUMP replies).
    pub policy: Option<Bundle>,
}

impl Extensions {
    pub fn has(&self, t: ExtType) -> bool {
        match t {
            ExtType::Sa => self.sa.is_some(),
            ExtType::LifetimeCurrent => self.lifetime_current.is_some(),
            ExtType::LifetimeHard => self.lifetime_hard.is_some(),
            ExtType::LifetimeSoft => self.lifetime_soft.is_some(),
            ExtType::AddressSrc => self.address_src.is_some(),
            ExtType::AddressDst => self.address_dst.is_some(),
            ExtType::AddressProxy => self.address_proxy.is_some(),
            ExtType::KeyAuth => self.key_auth.is_some(),
            ExtType::KeyEncrypt => self.key_encrypt.is_some(),
            ExtType::IdentitySrc => self.identity_src.is_some(),
            ExtType::IdentityDst => self.identity_dst.is_some(),
            ExtType::Proposal => self.proposal.is_some(),
            ExtType::SupportedAuth => self.supported_auth.is_some(),
            ExtType::SupportedEncrypt => self.supported_encrypt.is_some(),
            ExtType::SpiRange => self.spirange.is_some(),
            ExtType::Bundle => self.bundle.is_some(),
            ExtType::Policy => self.policy.is_some(),
            ExtType::Unknown(_) => false,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub ext: Extensions,
}

/// Why bytes from the other side were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the base header.
    Short {
        len: usize,
    },
    /// The peer speaks another version of the link.
    Version {
        ours: u8,
        theirs: u8,
    },
    TooLarge {
        len: usize,
    },
    /// The header's length is not the number of bytes received.
    Length {
        declared: usize,
        actual: usize,
    },
    /// A field of the base header (`ext` None) or of an extension.
    Bad {
        ext: Option<ExtType>,
        field: &'static str,
        reason: &'static str,
    },
    Duplicate(ExtType),
    Missing {
        msg: MsgType,
        from: Sender,
        ext: ExtType,
    },
    /// An extension that message must not carry (keys anywhere but UPDATE/ADD from the
    /// daemon, for instance).
    Unexpected {
        msg: MsgType,
        from: Sender,
        ext: ExtType,
    },
    Unsupported {
        msg: MsgType,
        from: Sender,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("daemon link: ")?;
        match self {
            DecodeError::Short { len } => {
                write!(f, "message of {len} bytes is shorter than the {HEADER_LEN}-byte header")
            }
            DecodeError::Version { ours, theirs } => write!(
                f,
                "protocol version mismatch: this side speaks version {ours}, the other side version {theirs}; \
                 install the plugin and the keying daemon from the same release"
            ),
            DecodeError::TooLarge { len } => write!(f, "message of {len} bytes is larger than {MAX_MESSAGE_LEN}"),
            DecodeError::Length { declared, actual } => {
                write!(f, "header says {declared} bytes, message has {actual}")
            }
            DecodeError::Bad {
                ext: None,
                field,
                reason,
            } => write!(f, "base header: {field}: {reason}"),
            DecodeError::Bad {
                ext: Some(e),
                field,
                reason,
            } => write!(f, "{e}: {field}: {reason}"),
            DecodeError::Duplicate(e) => write!(f, "{e} appears twice"),
            DecodeError::Missing { msg, from, ext } => write!(f, "{msg} from the {from} lacks its {ext}"),
            DecodeError::Unexpected { msg, from, ext } => write!(f, "{msg} from the {from} must not carry a {ext}"),
            DecodeError::Unsupported { msg, from } => write!(f, "{msg} is not a message the {from} sends"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a message could not be encoded (a bug or an oversized value on this side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    TooLarge {
        len: usize,
    },
    Bad {
        ext: Option<ExtType>,
        field: &'static str,
        reason: &'static str,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("daemon link: cannot encode: ")?;
        match self {
            EncodeError::TooLarge { len } => write!(f, "message of {len} bytes is larger than {MAX_MESSAGE_LEN}"),
            EncodeError::Bad {
                ext: None,
                field,
                reason,
            } => write!(f, "base header: {field}: {reason}"),
            EncodeError::Bad {
                ext: Some(e),
                field,
                reason,
            } => write!(f, "{e}: {field}: {reason}"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Overwrites a buffer that held key material (an encoded UPDATE or ADD, once sent).
pub fn wipe(bytes: &mut Vec<u8>) {
    bytes.iter_mut().for_each(|b| *b = 0);
    // Without `unsafe` there is no volatile write; `black_box` keeps the stores alive.
    std::hint::black_box(&mut *bytes);
}

/// For reading a byte stream: the length of the message that starts `prefix`, once its
/// header is there (None: read more). A wrong version is reported from the first byte.
pub fn message_len(prefix: &[u8]) -> Result<Option<usize>, DecodeError> {
    if let Some(&theirs) = prefix.first() {
        if theirs != LINK_VERSION {
            return Err(DecodeError::Version {
                ours: LINK_VERSION,
                theirs,
            });
        }
    }
    if prefix.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([prefix[4], prefix[5]])) * 8;
    if len < HEADER_LEN {
        return Err(DecodeError::Bad {
            ext: None,
            field: "len",
            reason: "shorter than the base header",
        });
    }
    if len > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLarge { len });
    }
    Ok(Some(len))
}

/// One extension to encode, with the length it takes.
enum Part<'a> {
    Sa(&'a SaExt),
    Lifetime(ExtType, &'a Lifetime),
    Address(ExtType, &'a Address),
    Key(ExtType, &'a KeyMaterial),
    Identity(ExtType, &'a Identity),
    Proposal(&'a Proposal),
    SupportedAuth(&'a [SupportedAlg<AuthAlg>]),
    SupportedEncrypt(&'a [SupportedAlg<EncryptAlg>]),
    SpiRange(&'a SpiRange),
    Bundle(&'a str),
    Policy(&'a Bundle),
}

impl Message {
    pub fn new(msg_type: MsgType, sa_type: SaType, seq: u32, pid: u32) -> Message {
        Message {
            header: Header {
                msg_type,
                errno: None,
                sa_type,
                seq,
                pid,
            },
            ext: Extensions::default(),
        }
    }

    /// The start of a reply: same type, SA type, sequence and pid, no extensions.
    pub fn reply(&self) -> Message {
        Message {
            header: Header {
                errno: None,
                ..self.header
            },
            ext: Extensions::default(),
        }
    }

    /// A reply reporting that the request failed.
    pub fn error_reply(&self, errno: Errno) -> Message {
        Message {
            header: Header {
                errno: Some(errno),
                ..self.header
            },
            ext: Extensions::default(),
        }
    }

    /// The extensions in type order (RFC 2367 lets a receiver insist on it).
    fn parts(&self) -> Result<Vec<(Part<'_>, usize)>, EncodeError> {
        let e = &self.ext;
        let mut parts = Vec::new();
        if let Some(sa) = &e.sa {
            parts.push((Part::Sa(sa), ext::SA_LEN));
        }
        for (t, l) in [
            (ExtType::LifetimeCurrent, &e.lifetime_current),
            (ExtType::LifetimeHard, &e.lifetime_hard),
            (ExtType::LifetimeSoft, &e.lifetime_soft),
        ] {
            if let Some(l) = l {
                parts.push((Part::Lifetime(t, l), ext::LIFETIME_LEN));
            }
        }
        for (t, a) in [
            (ExtType::AddressSrc, &e.address_src),
            (ExtType::AddressDst, &e.address_dst),
            (ExtType::AddressProxy, &e.address_proxy),
        ] {
            if let Some(a) = a {
                ext::check_address(t, a)?;
                parts.push((Part::Address(t, a), ext::ADDRESS_LEN));
            }
        }
        for (t, k) in [(ExtType::KeyAuth, &e.key_auth), (ExtType::KeyEncrypt, &e.key_encrypt)] {
            if let Some(k) = k {
                parts.push((Part::Key(t, k), ext::key_len(t, k)?));
            }
        }
        for (t, i) in [
            (ExtType::IdentitySrc, &e.identity_src),
            (ExtType::IdentityDst, &e.identity_dst),
        ] {
            if let Some(i) = i {
                parts.push((Part::Identity(t, i), ext::identity_len(t, i)?));
            }
        }
        if let Some(p) = &e.proposal {
            parts.push((Part::Proposal(p), ext::proposal_len(p)));
        }
        if let Some(a) = &e.supported_auth {
            parts.push((Part::SupportedAuth(a), ext::supported_len(a)));
        }
        if let Some(a) = &e.supported_encrypt {
            parts.push((Part::SupportedEncrypt(a), ext::supported_len(a)));
        }
        if let Some(s) = &e.spirange {
            ext::check_spirange(s)?;
            parts.push((Part::SpiRange(s), ext::SPIRANGE_LEN));
        }
        if let Some(n) = &e.bundle {
            parts.push((Part::Bundle(n), ext::name_len(ExtType::Bundle, n)?));
        }
        if let Some(b) = &e.policy {
            parts.push((Part::Policy(b), policy::policy_len(b)?));
        }
        Ok(parts)
    }

    /// Appends the message to `out`. Space is reserved first, so key material is written
    /// once, not left behind in a reallocated buffer; [`wipe`] the buffer after sending.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let parts = self.parts()?;
        let len = HEADER_LEN + parts.iter().map(|(_, l)| l).sum::<usize>();
        if len > MAX_MESSAGE_LEN {
            return Err(EncodeError::TooLarge { len });
        }
        out.reserve(len);
        let h = &self.header;
        out.extend_from_slice(&[
            LINK_VERSION,
            h.msg_type.number(),
            h.errno.map_or(0, Errno::number),
            h.sa_type.number(),
        ]);
        ext::put16(out, (len / 8) as u16);
        ext::put16(out, 0);
        ext::put32(out, h.seq);
        ext::put32(out, h.pid);
        for (part, l) in parts {
            match part {
                Part::Sa(sa) => ext::emit_sa(out, sa),
                Part::Lifetime(t, l) => ext::emit_lifetime(out, t, l),
                Part::Address(t, a) => ext::emit_address(out, t, a),
                Part::Key(t, k) => ext::emit_key(out, t, k, l),
                Part::Identity(t, i) => ext::emit_identity(out, t, i, l),
                Part::Proposal(p) => ext::emit_proposal(out, p),
                Part::SupportedAuth(a) => ext::emit_supported(out, ExtType::SupportedAuth, a, AuthAlg::number),
                Part::SupportedEncrypt(a) => ext::emit_supported(out, ExtType::SupportedEncrypt, a, EncryptAlg::number),
                Part::SpiRange(s) => ext::emit_spirange(out, s),
                Part::Bundle(n) => ext::emit_bundle_name(out, n, l),
                Part::Policy(b) => policy::emit_policy(out, b, l)?,
            }
        }
        Ok(())
    }

    /// Parses one whole message. Unknown extension types are skipped (RFC 2367 section
    /// 2.3); everything else must be well formed.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::Short { len: 0 });
        }
        let declared = message_len(bytes)?.ok_or(DecodeError::Short { len: bytes.len() })?;
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLarge { len: bytes.len() });
        }
        if declared != bytes.len() {
            return Err(DecodeError::Length {
                declared,
                actual: bytes.len(),
            });
        }
        let mut r = Reader::new(&bytes[..HEADER_LEN], None);
        r.u8("version")?;
        let msg_type = MsgType::from_number(r.u8("type")?);
        let errno = Errno::from_number(r.u8("errno")?);
        let sa_type = SaType::from_number(r.u8("satype")?);
        r.u16("len")?;
        r.zero(2, "reserved")?;
        let header = Header {
            msg_type,
            errno,
            sa_type,
            seq: r.u32("seq")?,
            pid: r.u32("pid")?,
        };

        let mut ext = Extensions::default();
        let mut rest = &bytes[HEADER_LEN..];
        while !rest.is_empty() {
            // `rest` is a multiple of 8 long (the message is), so the header is there.
            let mut h = Reader::new(rest, None);
            let len = usize::from(h.u16("extension len")?) * 8;
            let ty = ExtType::from_number(h.u16("extension type")?);
            if len == 0 {
                return Err(DecodeError::Bad {
                    ext: Some(ty),
                    field: "len",
                    reason: "zero",
                });
            }
            if len > rest.len() {
                return Err(DecodeError::Bad {
                    ext: Some(ty),
                    field: "len",
                    reason: "runs past the end of the message",
                });
            }
            if ext.has(ty) {
                return Err(DecodeError::Duplicate(ty));
            }
            decode_ext(&mut ext, ty, &rest[4..len])?;
            rest = &rest[len..];
        }
        Ok(Message { header, ext })
    }

    /// [`Message::decode`] then [`Message::validate`]: what a receiver calls.
    pub fn decode_from(bytes: &[u8], from: Sender) -> Result<Message, DecodeError> {
        let m = Message::decode(bytes)?;
        m.validate(from)?;
        Ok(m)
    }

    /// Checks that the message is one `from` sends and has the extensions it needs (the
    /// table in docs/daemon-link.md). Error replies (errno set) need only their header.
    pub fn validate(&self, from: Sender) -> Result<(), DecodeError> {
        use ExtType as E;
        use MsgType as M;
        let msg = self.header.msg_type;
        let missing = |ext| DecodeError::Missing { msg, from, ext };
        let unexpected = |ext| DecodeError::Unexpected { msg, from, ext };
        let keyed = from == Sender::Daemon && matches!(msg, M::Update | M::Add) && self.header.errno.is_none();
        for k in [E::KeyAuth, E::KeyEncrypt] {
            if self.ext.has(k) && !keyed {
                return Err(unexpected(k));
            }
        }
        let policy_ok = matches!((from, msg), (Sender::Plugin, M::SpdAdd) | (Sender::Daemon, M::SpdDump));
        if self.ext.has(E::Policy) && !policy_ok {
            return Err(unexpected(E::Policy));
        }
        let required: &[ExtType] = match (from, msg) {
            (_, M::Unknown(_)) | (Sender::Daemon, M::Expire) => return Err(DecodeError::Unsupported { msg, from }),
            (Sender::Daemon, M::Acquire) if self.header.errno.is_none() => {
                return Err(DecodeError::Bad {
                    ext: None,
                    field: "errno",
                    reason: "an ACQUIRE from the daemon reports a failure",
                });
            }
            _ if self.header.errno.is_some() => &[],
            (Sender::Plugin, M::Register) => &[E::SupportedAuth, E::SupportedEncrypt],
            (Sender::Plugin, M::SpdAdd) => &[E::Policy],
            (Sender::Plugin, M::SpdDelete) => &[E::Bundle],
            (Sender::Plugin, M::Acquire) => &[E::AddressSrc, E::AddressDst, E::Bundle],
            (Sender::Plugin, M::Expire) => {
                if self.ext.has(E::LifetimeSoft) == self.ext.has(E::LifetimeHard) {
                    return Err(DecodeError::Bad {
                        ext: None,
                        field: "lifetimes",
                        reason: "an EXPIRE carries exactly one of LIFETIME_SOFT and LIFETIME_HARD",
                    });
                }
                &[E::Sa, E::LifetimeCurrent, E::AddressSrc, E::AddressDst, E::Bundle]
            }
            (Sender::Plugin, M::GetSpi | M::Update | M::Add | M::Delete) => &[E::Sa, E::AddressSrc, E::AddressDst],
            (Sender::Plugin, M::Get) => &[E::Sa, E::LifetimeCurrent, E::AddressSrc, E::AddressDst],
            (Sender::Plugin, M::Dump) if self.ext.has(E::Sa) => {
                &[E::LifetimeCurrent, E::AddressSrc, E::AddressDst, E::Bundle]
            }
            (Sender::Daemon, M::GetSpi) => &[E::AddressSrc, E::AddressDst, E::SpiRange, E::Bundle],
            (Sender::Daemon, M::Update | M::Add) => &[E::Sa, E::AddressSrc, E::AddressDst, E::Bundle],
            (Sender::Daemon, M::Delete | M::Get) => &[E::Sa, E::AddressSrc, E::AddressDst],
            _ => &[],
        };
        if let Some(&e) = required.iter().find(|&&e| !self.ext.has(e)) {
            return Err(missing(e));
        }
        match (from, msg) {
            (Sender::Daemon, M::GetSpi) if self.header.errno.is_none() => self.check_spirange(),
            _ if !keyed => Ok(()),
            _ => self.check_keys(),
        }
    }

    fn check_spirange(&self) -> Result<(), DecodeError> {
        let bad = |reason| {
            Err(DecodeError::Bad {
                ext: Some(ExtType::SpiRange),
                field: "min",
                reason,
            })
        };
        let Some(range) = self.ext.spirange else { return Ok(()) };
        if range.min < DAEMON_SPI_MIN {
            return bad("below 0x1000 (0x100-0xFFF are for manual keying)");
        }
        if self.header.sa_type == SaType::IpComp && range.max > 0xffff {
            return Err(DecodeError::Bad {
                ext: Some(ExtType::SpiRange),
                field: "max",
                reason: "a CPI is 16 bits",
            });
        }
        Ok(())
    }

    /// UPDATE and ADD from the daemon: keys exactly as the SA's algorithms need them.
    fn check_keys(&self) -> Result<(), DecodeError> {
        let Some(sa) = self.ext.sa else { return Ok(()) };
        let bad = |ext, field, reason| {
            Err(DecodeError::Bad {
                ext: Some(ext),
                field,
                reason,
            })
        };
        if sa.state != SaState::Mature {
            return bad(ExtType::Sa, "state", "an UPDATE or ADD installs a MATURE SA");
        }
        let (enc_bytes, auth_bytes) = match self.header.sa_type {
            SaType::Esp => match sa.esp_transform() {
                Some(t) if sa.compress == CompAlg::None => (t.enc_key_len(), t.auth_key_len()),
                _ => return bad(ExtType::Sa, "encrypt", "not an ESP transform the plugin implements"),
            },
            SaType::Ah => match sa.auth.integ() {
                Some(i) if sa.encrypt == EncryptAlg::None && sa.encrypt_bits == 0 && sa.compress == CompAlg::None => {
                    (0, i.key_len())
                }
                _ => return bad(ExtType::Sa, "auth", "not an AH algorithm the plugin implements"),
            },
            SaType::IpComp => {
                if sa.compress != CompAlg::Deflate || sa.auth != AuthAlg::None || sa.encrypt != EncryptAlg::None {
                    return bad(
                        ExtType::Sa,
                        "compress",
                        "an IPComp SA is deflate, without cipher or integrity",
                    );
                }
                if sa.spi > 0xffff {
                    return bad(ExtType::Sa, "spi", "a CPI is 16 bits");
                }
                (0, 0)
            }
            _ => {
                return Err(DecodeError::Bad {
                    ext: None,
                    field: "satype",
                    reason: "an UPDATE or ADD is for ESP, AH or IPCOMP",
                })
            }
        };
        for (ext, key, want) in [
            (ExtType::KeyEncrypt, &self.ext.key_encrypt, enc_bytes),
            (ExtType::KeyAuth, &self.ext.key_auth, auth_bytes),
        ] {
            match (key, want) {
                (None, 0) => {}
                (None, _) => {
                    return Err(DecodeError::Missing {
                        msg: self.header.msg_type,
                        from: Sender::Daemon,
                        ext,
                    })
                }
                (Some(_), 0) => {
                    return Err(DecodeError::Unexpected {
                        msg: self.header.msg_type,
                        from: Sender::Daemon,
                        ext,
                    })
                }
                (Some(k), n) if k.as_bytes().len() != n => {
                    return bad(ext, "bits", "wrong key size for the SA's algorithm")
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn decode_ext(e: &mut Extensions, ty: ExtType, body: &[u8]) -> Result<(), DecodeError> {
    let mut r = Reader::new(body, Some(ty));
    let fixed = |len: usize| {
        if body.len() + 4 != len {
            return Err(DecodeError::Bad {
                ext: Some(ty),
                field: "len",
                reason: "wrong size for this extension",
            });
        }
        Ok(())
    };
    match ty {
        ExtType::Sa => {
            fixed(ext::SA_LEN)?;
            e.sa = Some(ext::decode_sa(&mut r)?);
        }
        ExtType::LifetimeCurrent | ExtType::LifetimeHard | ExtType::LifetimeSoft => {
            fixed(ext::LIFETIME_LEN)?;
            let l = Some(ext::decode_lifetime(&mut r)?);
            match ty {
                ExtType::LifetimeCurrent => e.lifetime_current = l,
                ExtType::LifetimeHard => e.lifetime_hard = l,
                _ => e.lifetime_soft = l,
            }
        }
        ExtType::AddressSrc | ExtType::AddressDst | ExtType::AddressProxy => {
            fixed(ext::ADDRESS_LEN)?;
            let a = Some(ext::decode_address(&mut r)?);
            match ty {
                ExtType::AddressSrc => e.address_src = a,
                ExtType::AddressDst => e.address_dst = a,
                _ => e.address_proxy = a,
            }
        }
        ExtType::KeyAuth => e.key_auth = Some(ext::decode_key(&mut r)?),
        ExtType::KeyEncrypt => e.key_encrypt = Some(ext::decode_key(&mut r)?),
        ExtType::IdentitySrc => e.identity_src = Some(ext::decode_identity(&mut r)?),
        ExtType::IdentityDst => e.identity_dst = Some(ext::decode_identity(&mut r)?),
        ExtType::Proposal => e.proposal = Some(ext::decode_proposal(&mut r)?),
        ExtType::SupportedAuth => e.supported_auth = Some(ext::decode_supported(&mut r, AuthAlg::from_number)?),
        ExtType::SupportedEncrypt => {
            e.supported_encrypt = Some(ext::decode_supported(&mut r, EncryptAlg::from_number)?)
        }
        ExtType::SpiRange => {
            fixed(ext::SPIRANGE_LEN)?;
            e.spirange = Some(ext::decode_spirange(&mut r)?);
        }
        ExtType::Bundle => e.bundle = Some(ext::decode_bundle_name(&mut r)?),
        ExtType::Policy => e.policy = Some(policy::decode_policy(&mut r)?),
        ExtType::Unknown(_) => {}
    }
    Ok(())
}
