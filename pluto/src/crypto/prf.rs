//! The negotiated hash and its HMAC, which IKEv1 uses as its PRF when no PRF attribute is
//! negotiated (RFC 2409 §4: "the HMAC version of the negotiated hash").

use hmac::{Hmac, Mac};
use ipsec_plugin::config::IkeHash;
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// `prf(key, parts[0] | parts[1] | ...)`.
pub fn prf(hash: IkeHash, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    match hash {
        IkeHash::Md5 => mac::<Hmac<Md5>>(key, parts),
        IkeHash::Sha1 => mac::<Hmac<Sha1>>(key, parts),
        IkeHash::Sha256 => mac::<Hmac<Sha256>>(key, parts),
    }
}

/// `hash(parts[0] | parts[1] | ...)`, for the IVs (RFC 2409 Appendix B).
pub fn hash(hash: IkeHash, parts: &[&[u8]]) -> Vec<u8> {
    match hash {
        IkeHash::Md5 => digest::<Md5>(parts),
        IkeHash::Sha1 => digest::<Sha1>(parts),
        IkeHash::Sha256 => digest::<Sha256>(parts),
    }
}

pub fn output_len(hash: IkeHash) -> usize {
    match hash {
        IkeHash::Md5 => 16,
        IkeHash::Sha1 => 20,
        IkeHash::Sha256 => 32,
    }
}

fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this never takes the error arm.
    let Ok(mut m) = <M as Mac>::new_from_slice(key) else {
        return Vec::new();
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

fn digest<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
    let mut d = D::new();
    for p in parts {
        d.update(p);
    }
    d.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 2202 test case 2 (MD5, SHA-1) and RFC 4231 test case 2 (SHA-256): key "Jefe",
    /// data "what do ya want for nothing?", here split in two parts to test concatenation.
    #[test]
    fn hmac_rfc_vectors() {
        let parts: [&[u8]; 2] = [b"what do ya want ", b"for nothing?"];
        assert_eq!(
            prf(IkeHash::Md5, b"Jefe", &parts),
            hex("750c783e6ab0b503eaa86e310a5db738")
        );
        assert_eq!(
            prf(IkeHash::Sha1, b"Jefe", &parts),
            hex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")
        );
        assert_eq!(
            prf(IkeHash::Sha256, b"Jefe", &parts),
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    /// FIPS 180 / RFC 1321 "abc" digests.
    #[test]
    fn hash_vectors() {
        assert_eq!(
            hash(IkeHash::Md5, &[b"a", b"bc"]),
            hex("900150983cd24fb0d6963f7d28e17f72")
        );
        assert_eq!(
            hash(IkeHash::Sha1, &[b"abc"]),
            hex("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
        assert_eq!(
            hash(IkeHash::Sha256, &[b"ab", b"c"]),
            hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        for h in IkeHash::ALL {
            assert_eq!(hash(h, &[]).len(), output_len(h));
        }
    }
}
