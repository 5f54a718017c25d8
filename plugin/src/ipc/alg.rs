//! Algorithm numbers on the daemon link: PF_KEY v2's (RFC 2367 section 3.5, with the Linux
//! and KAME additions for SHA-256, AES and AES-GCM), and the IKE (phase 1) attribute values
//! of RFC 2409 appendix A, mapped to the one set of types in `crate::crypto` and
//! `crate::config`.

use crate::config::{DhGroup, IkeCipher, IkeHash, IkeProposal};
use crate::crypto::{AeadAlg, CipherAlg, EspTransform, IntegAlg};

/// `sadb_sa_auth`: the integrity algorithm of an ESP or AH SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthAlg {
    None,
    HmacMd5,
    HmacSha1,
    /// `SADB_X_AALG_SHA2_256HMAC`, truncated to 128 bits (RFC 4868).
    HmacSha256,
    Unknown(u8),
}

impl AuthAlg {
    pub fn number(self) -> u8 {
        match self {
            AuthAlg::None => 0,
            AuthAlg::HmacMd5 => 2,
            AuthAlg::HmacSha1 => 3,
            AuthAlg::HmacSha256 => 5,
            AuthAlg::Unknown(n) => n,
        }
    }

    pub fn from_number(n: u8) -> AuthAlg {
        match n {
            0 => AuthAlg::None,
            2 => AuthAlg::HmacMd5,
            3 => AuthAlg::HmacSha1,
            5 => AuthAlg::HmacSha256,
            n => AuthAlg::Unknown(n),
        }
    }

    pub fn integ(self) -> Option<IntegAlg> {
        match self {
            AuthAlg::HmacMd5 => Some(IntegAlg::HmacMd5_96),
            AuthAlg::HmacSha1 => Some(IntegAlg::HmacSha1_96),
            AuthAlg::HmacSha256 => Some(IntegAlg::HmacSha256_128),
            AuthAlg::None | AuthAlg::Unknown(_) => None,
        }
    }
}

impl From<IntegAlg> for AuthAlg {
    fn from(i: IntegAlg) -> AuthAlg {
        match i {
            IntegAlg::HmacMd5_96 => AuthAlg::HmacMd5,
            IntegAlg::HmacSha1_96 => AuthAlg::HmacSha1,
            IntegAlg::HmacSha256_128 => AuthAlg::HmacSha256,
        }
    }
}

/// `sadb_sa_encrypt`: the cipher of an ESP SA. AES-CBC is one number for all key sizes,
/// as in PF_KEY; the key size travels beside it (`Sa::encrypt_bits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncryptAlg {
    None,
    DesCbc,
    TripleDesCbc,
    /// The NULL cipher (RFC 2410).
    Null,
    AesCbc,
    /// `SADB_X_EALG_AES_GCM_ICV16` (RFC 4106, 16-byte ICV).
    AesGcm16,
    Unknown(u8),
}

impl EncryptAlg {
    pub fn number(self) -> u8 {
        match self {
            EncryptAlg::None => 0,
            EncryptAlg::DesCbc => 2,
            EncryptAlg::TripleDesCbc => 3,
            EncryptAlg::Null => 11,
            EncryptAlg::AesCbc => 12,
            EncryptAlg::AesGcm16 => 20,
            EncryptAlg::Unknown(n) => n,
        }
    }

    pub fn from_number(n: u8) -> EncryptAlg {
        match n {
            0 => EncryptAlg::None,
            2 => EncryptAlg::DesCbc,
            3 => EncryptAlg::TripleDesCbc,
            11 => EncryptAlg::Null,
            12 => EncryptAlg::AesCbc,
            20 => EncryptAlg::AesGcm16,
            n => EncryptAlg::Unknown(n),
        }
    }
}

/// The compression algorithm of an IPComp SA (`SADB_X_CALG_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompAlg {
    None,
    Deflate,
    Unknown(u8),
}

impl CompAlg {
    pub fn number(self) -> u8 {
        match self {
            CompAlg::None => 0,
            CompAlg::Deflate => 2,
            CompAlg::Unknown(n) => n,
        }
    }

    pub fn from_number(n: u8) -> CompAlg {
        match n {
            0 => CompAlg::None,
            2 => CompAlg::Deflate,
            n => CompAlg::Unknown(n),
        }
    }
}

/// An ESP transform as (cipher, cipher key bits, integrity). Key bits are those of the
/// whole encryption key material, so AES-GCM counts its 4-byte salt (RFC 4106 section 8.1).
pub fn esp_to_link(t: EspTransform) -> (EncryptAlg, u16, AuthAlg) {
    let bits = (t.enc_key_len() * 8) as u16;
    match t {
        EspTransform::Cipher { cipher, integ } => {
            let e = match cipher {
                CipherAlg::Null => EncryptAlg::Null,
                CipherAlg::DesCbc => EncryptAlg::DesCbc,
                CipherAlg::TripleDesCbc => EncryptAlg::TripleDesCbc,
                CipherAlg::AesCbc128 | CipherAlg::AesCbc192 | CipherAlg::AesCbc256 => EncryptAlg::AesCbc,
            };
            (e, bits, integ.map_or(AuthAlg::None, AuthAlg::from))
        }
        EspTransform::Aead(_) => (EncryptAlg::AesGcm16, bits, AuthAlg::None),
    }
}

/// The inverse of [`esp_to_link`]; None for combinations the plugin does not implement
/// (and for NULL without integrity, which would protect nothing).
pub fn esp_from_link(encrypt: EncryptAlg, bits: u16, auth: AuthAlg) -> Option<EspTransform> {
    let integ = match auth {
        AuthAlg::None => None,
        a => Some(a.integ()?),
    };
    if encrypt == EncryptAlg::AesGcm16 {
        let aead = AeadAlg::ALL
            .into_iter()
            .find(|a| a.key_len() * 8 == usize::from(bits))?;
        return integ.is_none().then_some(EspTransform::Aead(aead));
    }
    let cipher = CipherAlg::ALL.into_iter().find(|&c| {
        esp_to_link(EspTransform::Cipher { cipher: c, integ: None }).0 == encrypt
            && c.key_len() * 8 == usize::from(bits)
    })?;
    if cipher == CipherAlg::Null && integ.is_none() {
        return None;
    }
    Some(EspTransform::Cipher { cipher, integ })
}

/// A phase 1 proposal as IKE attribute values (cipher, key bits, hash, group): encryption
/// algorithm 3DES-CBC 5 (RFC 2409 appendix A) or AES-CBC 7 with its key length (RFC 3602
/// section 5; 0 for 3DES, whose key length is implied); hash MD5 1, SHA 2 (RFC 2409) or
/// SHA2-256 4 (IANA's IKE hash algorithm registry); MODP group 2, 5 or 14.
pub(crate) fn proposal_to_link(p: IkeProposal) -> (u8, u16, u8, u16) {
    let (cipher, key_bits) = match p.cipher {
        IkeCipher::TripleDes => (5, 0),
        IkeCipher::Aes128 => (7, 128),
        IkeCipher::Aes256 => (7, 256),
    };
    let hash = match p.hash {
        IkeHash::Md5 => 1,
        IkeHash::Sha1 => 2,
        IkeHash::Sha256 => 4,
    };
    (cipher, key_bits, hash, p.group.number())
}

pub(crate) fn proposal_from_link(cipher: u8, key_bits: u16, hash: u8, group: u16) -> Option<IkeProposal> {
    let cipher = match (cipher, key_bits) {
        (5, 0) => IkeCipher::TripleDes,
        (7, 128) => IkeCipher::Aes128,
        (7, 256) => IkeCipher::Aes256,
        _ => return None,
    };
    let hash = match hash {
        1 => IkeHash::Md5,
        2 => IkeHash::Sha1,
        4 => IkeHash::Sha256,
        _ => return None,
    };
    let group = DhGroup::ALL.into_iter().find(|g| g.number() == group)?;
    Some(IkeProposal { cipher, hash, group })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_esp_transform_round_trips() {
        let mut all = vec![];
        for cipher in CipherAlg::ALL {
            for integ in [
                None,
                Some(IntegAlg::HmacMd5_96),
                Some(IntegAlg::HmacSha1_96),
                Some(IntegAlg::HmacSha256_128),
            ] {
                if cipher != CipherAlg::Null || integ.is_some() {
                    all.push(EspTransform::Cipher { cipher, integ });
                }
            }
        }
        all.extend(AeadAlg::ALL.map(EspTransform::Aead));
        for t in all {
            let (e, bits, a) = esp_to_link(t);
            assert_eq!(esp_from_link(e, bits, a), Some(t), "{t}");
            assert_eq!(
                esp_from_link(
                    EncryptAlg::from_number(e.number()),
                    bits,
                    AuthAlg::from_number(a.number())
                ),
                Some(t)
            );
        }
        // AES-128 and AES-256 share a number and differ in key bits; GCM counts the salt.
        assert_eq!(
            esp_to_link(EspTransform::Aead(AeadAlg::AesGcm16_128)),
            (EncryptAlg::AesGcm16, 160, AuthAlg::None)
        );
        assert_eq!(esp_from_link(EncryptAlg::AesCbc, 100, AuthAlg::HmacSha1), None);
        assert_eq!(esp_from_link(EncryptAlg::Null, 0, AuthAlg::None), None);
        assert_eq!(esp_from_link(EncryptAlg::AesGcm16, 160, AuthAlg::HmacSha1), None);
        assert_eq!(esp_from_link(EncryptAlg::AesCbc, 128, AuthAlg::Unknown(9)), None);
        assert_eq!(esp_from_link(EncryptAlg::Unknown(99), 128, AuthAlg::None), None);
    }

    #[test]
    fn every_ike_proposal_round_trips() {
        for cipher in IkeCipher::ALL {
            for hash in IkeHash::ALL {
                for group in DhGroup::ALL {
                    let p = IkeProposal { cipher, hash, group };
                    let (c, k, h, g) = proposal_to_link(p);
                    assert_eq!(proposal_from_link(c, k, h, g), Some(p));
                }
            }
        }
        assert_eq!(proposal_from_link(7, 192, 2, 14), None);
        assert_eq!(proposal_from_link(5, 0, 3, 14), None);
        assert_eq!(proposal_from_link(5, 0, 2, 1), None);
    }
}
