//! Algorithm identifiers and their sizes: what ipsec.cfg names and what the wire needs.
//! No key material here, so config and dumps can use it without the crypto back ends.

use std::fmt;

/// An ESP encryption algorithm used with a separate integrity algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherAlg {
    Null,
    DesCbc,
    TripleDesCbc,
    AesCbc128,
    AesCbc192,
    AesCbc256,
}

impl CipherAlg {
    pub const ALL: [CipherAlg; 6] = [
        CipherAlg::Null,
        CipherAlg::DesCbc,
        CipherAlg::TripleDesCbc,
        CipherAlg::AesCbc128,
        CipherAlg::AesCbc192,
        CipherAlg::AesCbc256,
    ];

    /// The name used in `ipsec.cfg` (`esp = <cipher>-<integrity>`).
    pub fn name(self) -> &'static str {
        match self {
            CipherAlg::Null => "null",
            CipherAlg::DesCbc => "des",
            CipherAlg::TripleDesCbc => "3des",
            CipherAlg::AesCbc128 => "aes128",
            CipherAlg::AesCbc192 => "aes192",
            CipherAlg::AesCbc256 => "aes256",
        }
    }

    pub fn from_name(name: &str) -> Option<CipherAlg> {
        CipherAlg::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(name))
    }

    pub fn key_len(self) -> usize {
        match self {
            CipherAlg::Null => 0,
            CipherAlg::DesCbc => 8,
            CipherAlg::TripleDesCbc => 24,
            CipherAlg::AesCbc128 => 16,
            CipherAlg::AesCbc192 => 24,
            CipherAlg::AesCbc256 => 32,
        }
    }

    /// Cipher block size; 1 for the NULL cipher.
    pub fn block_len(self) -> usize {
        match self {
            CipherAlg::Null => 1,
            CipherAlg::DesCbc | CipherAlg::TripleDesCbc => 8,
            _ => 16,
        }
    }

    /// Length of the explicit IV carried in each ESP packet.
    pub fn iv_len(self) -> usize {
        match self {
            CipherAlg::Null => 0,
            _ => self.block_len(),
        }
    }

    /// Single DES is broken; it is accepted for interoperability and logged as a warning.
    pub fn is_weak(self) -> bool {
        matches!(self, CipherAlg::DesCbc | CipherAlg::Null)
    }
}

/// An integrity algorithm (HMAC truncated as the RFCs for ESP and AH say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntegAlg {
    HmacMd5_96,
    HmacSha1_96,
    HmacSha256_128,
}

impl IntegAlg {
    pub const ALL: [IntegAlg; 3] = [IntegAlg::HmacMd5_96, IntegAlg::HmacSha1_96, IntegAlg::HmacSha256_128];

    /// The name used in `ipsec.cfg` (`ah = ...`, `esp = <cipher>-<integrity>`).
    pub fn name(self) -> &'static str {
        match self {
            IntegAlg::HmacMd5_96 => "md5",
            IntegAlg::HmacSha1_96 => "sha1",
            IntegAlg::HmacSha256_128 => "sha256",
        }
    }

    pub fn from_name(name: &str) -> Option<IntegAlg> {
        IntegAlg::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// HMAC key length (RFC 2403, RFC 2404, RFC 4868).
    pub fn key_len(self) -> usize {
        match self {
            IntegAlg::HmacMd5_96 => 16,
            IntegAlg::HmacSha1_96 => 20,
            IntegAlg::HmacSha256_128 => 32,
        }
    }

    /// Truncated ICV length carried on the wire.
    pub fn icv_len(self) -> usize {
        match self {
            IntegAlg::HmacMd5_96 | IntegAlg::HmacSha1_96 => 12,
            IntegAlg::HmacSha256_128 => 16,
        }
    }

    pub fn is_weak(self) -> bool {
        matches!(self, IntegAlg::HmacMd5_96)
    }
}

/// An AEAD for ESP (RFC 4106). Needs automated keying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AeadAlg {
    AesGcm16_128,
    AesGcm16_256,
}

impl AeadAlg {
    pub const ALL: [AeadAlg; 2] = [AeadAlg::AesGcm16_128, AeadAlg::AesGcm16_256];

    pub fn name(self) -> &'static str {
        match self {
            AeadAlg::AesGcm16_128 => "aes128gcm16",
            AeadAlg::AesGcm16_256 => "aes256gcm16",
        }
    }

    pub fn from_name(name: &str) -> Option<AeadAlg> {
        AeadAlg::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// Key material length: the AES key plus the 4-byte salt (RFC 4106 section 8.1).
    pub fn key_len(self) -> usize {
        match self {
            AeadAlg::AesGcm16_128 => 16 + 4,
            AeadAlg::AesGcm16_256 => 32 + 4,
        }
    }

    pub const fn iv_len(self) -> usize {
        8
    }

    pub const fn icv_len(self) -> usize {
        16
    }
}

/// What an ESP SA does: a cipher with optional integrity, or an AEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EspTransform {
    Cipher { cipher: CipherAlg, integ: Option<IntegAlg> },
    Aead(AeadAlg),
}

impl EspTransform {
    /// Parses the `esp =` value of ipsec.cfg: `<cipher>-<integrity>` or an AEAD name.
    /// `null-none` is refused: it would neither encrypt nor authenticate.
    pub fn from_name(value: &str) -> Option<EspTransform> {
        if let Some(aead) = AeadAlg::from_name(value) {
            return Some(EspTransform::Aead(aead));
        }
        let (c, i) = value.split_once('-')?;
        let cipher = CipherAlg::from_name(c)?;
        let integ = if i.eq_ignore_ascii_case("none") { None } else { Some(IntegAlg::from_name(i)?) };
        if cipher == CipherAlg::Null && integ.is_none() {
            return None;
        }
        Some(EspTransform::Cipher { cipher, integ })
    }

    pub fn enc_key_len(self) -> usize {
        match self {
            EspTransform::Cipher { cipher, .. } => cipher.key_len(),
            EspTransform::Aead(a) => a.key_len(),
        }
    }

    /// 0 when there is no separate integrity key.
    pub fn auth_key_len(self) -> usize {
        match self {
            EspTransform::Cipher { integ: Some(i), .. } => i.key_len(),
            _ => 0,
        }
    }

    pub fn iv_len(self) -> usize {
        match self {
            EspTransform::Cipher { cipher, .. } => cipher.iv_len(),
            EspTransform::Aead(a) => a.iv_len(),
        }
    }

    pub fn icv_len(self) -> usize {
        match self {
            EspTransform::Cipher { integ, .. } => integ.map_or(0, |i| i.icv_len()),
            EspTransform::Aead(a) => a.icv_len(),
        }
    }

    /// The alignment of the encrypted part (payload, padding, pad length, next header):
    /// the cipher block, and at least 4 bytes (RFC 4303 section 2.4).
    pub fn pad_align(self) -> usize {
        match self {
            EspTransform::Cipher { cipher, .. } => cipher.block_len().max(4),
            EspTransform::Aead(_) => 4,
        }
    }
}

impl fmt::Display for EspTransform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EspTransform::Cipher { cipher, integ } => {
                write!(f, "{}-{}", cipher.name(), integ.map_or("none", |i| i.name()))
            }
            EspTransform::Aead(a) => f.write_str(a.name()),
        }
    }
}

/// Errors from building a per-SA context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The key has the wrong length for the algorithm.
    BadLength { alg: &'static str, expected: usize, got: usize },
    /// DES/3DES weak or semi-weak key, or 3DES with K1 = K2 or K2 = K3.
    WeakKey { alg: &'static str },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::BadLength { alg, expected, got } => {
                write!(f, "{alg} needs a {expected}-byte key, got {got} bytes")
            }
            KeyError::WeakKey { alg } => write!(f, "weak {alg} key refused"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Per-packet crypto failure. Deliberately uninformative: the caller only needs to know
/// the packet is not authentic (or not well formed for the cipher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptoError {
    /// ICV mismatch (compared in constant time, before any decryption).
    AuthFailed,
    /// The ciphertext is not a whole number of cipher blocks, or shorter than IV + ICV.
    BadLength,
}
