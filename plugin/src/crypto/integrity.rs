//! The integrity algorithms shared by ESP and AH: HMAC-MD5-96 (RFC 2403), HMAC-SHA1-96
//! (RFC 2404) and HMAC-SHA-256-128 (RFC 4868), each truncated to its leftmost bits.
//!
//! The keyed HMAC (inner and outer hash states after absorbing the padded key) is built once
//! per SA; every packet clones it, which copies two small hash states instead of hashing the
//! key twice again.

use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::alg::{IntegAlg, KeyError};

/// The longest untruncated HMAC output among the algorithms (SHA-256).
const MAX_MAC_LEN: usize = 32;

/// A per-SA integrity context.
#[derive(Clone)]
pub struct Integrity {
    alg: IntegAlg,
    keyed: KeyedMac,
}

#[derive(Clone)]
enum KeyedMac {
    Md5(Hmac<Md5>),
    Sha1(Hmac<Sha1>),
    Sha256(Hmac<Sha256>),
}

impl Integrity {
    /// Keys the HMAC. The key must be exactly `alg.key_len()` bytes, the length RFC 2403,
    /// RFC 2404 and RFC 4868 fix for IPsec.
    pub fn new(alg: IntegAlg, key: &[u8]) -> Result<Integrity, KeyError> {
        let bad_length = KeyError::BadLength {
            alg: alg.name(),
            expected: alg.key_len(),
            got: key.len(),
        };
        if key.len() != alg.key_len() {
            return Err(bad_length);
        }
        // HMAC takes keys of any length, so these cannot fail; map rather than unwrap.
        let keyed = match alg {
            IntegAlg::HmacMd5_96 => {
                KeyedMac::Md5(Hmac::new_from_slice(key).map_err(|_| bad_length)?)
            }
            IntegAlg::HmacSha1_96 => {
                KeyedMac::Sha1(Hmac::new_from_slice(key).map_err(|_| bad_length)?)
            }
            IntegAlg::HmacSha256_128 => {
                KeyedMac::Sha256(Hmac::new_from_slice(key).map_err(|_| bad_length)?)
            }
        };
        Ok(Integrity { alg, keyed })
    }

    pub fn alg(&self) -> IntegAlg {
        self.alg
    }

    pub fn icv_len(&self) -> usize {
        self.alg.icv_len()
    }

    /// Truncated HMAC of the concatenation of `parts`, written to `out[..icv_len]`.
    ///
    /// # Panics
    /// If `out` is shorter than `icv_len()`: the caller sizes the ICV field from the same
    /// algorithm, so that is a bug in the caller, not bad packet bytes.
    pub fn compute(&self, parts: &[&[u8]], out: &mut [u8]) {
        let mut full = [0u8; MAX_MAC_LEN];
        let icv_len = self.icv_len();
        self.full_mac(parts, &mut full);
        out[..icv_len].copy_from_slice(&full[..icv_len]);
    }

    /// Compares, in constant time, the truncated HMAC of `parts` with `icv`. A wrong-length
    /// `icv` is simply not authentic.
    pub fn verify(&self, parts: &[&[u8]], icv: &[u8]) -> bool {
        let icv_len = self.icv_len();
        if icv.len() != icv_len {
            return false;
        }
        let mut full = [0u8; MAX_MAC_LEN];
        self.full_mac(parts, &mut full);
        full[..icv_len].ct_eq(icv).into()
    }

    /// The untruncated HMAC, left-aligned in `out`.
    fn full_mac(&self, parts: &[&[u8]], out: &mut [u8; MAX_MAC_LEN]) {
        fn run<M: Mac + Clone>(keyed: &M, parts: &[&[u8]], out: &mut [u8]) {
            let mut mac = keyed.clone();
            for part in parts {
                mac.update(part);
            }
            let tag = mac.finalize().into_bytes();
            out[..tag.len()].copy_from_slice(&tag);
        }
        match &self.keyed {
            KeyedMac::Md5(m) => run(m, parts, out),
            KeyedMac::Sha1(m) => run(m, parts, out),
            KeyedMac::Sha256(m) => run(m, parts, out),
        }
    }
}

impl std::fmt::Debug for Integrity {
    /// Names the algorithm only: the keyed state is secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integrity")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::super::cipher::hex;
    use super::*;

    fn check(alg: IntegAlg, key: &[u8], data: &[u8], icv: &str) {
        let icv = hex(icv);
        let integ = Integrity::new(alg, key).expect("key accepted");
        let mut out = [0u8; 16];
        integ.compute(&[data], &mut out);
        assert_eq!(out[..integ.icv_len()], icv[..], "{alg:?}");
        assert!(integ.verify(&[data], &icv), "{alg:?}");
        // The same bytes split differently are the same message.
        let (a, b) = data.split_at(data.len() / 2);
        assert!(integ.verify(&[a, &[], b], &icv), "{alg:?} split");
    }

    // RFC 2202 section 2: the HMAC-MD5 cases whose key is the 16 bytes RFC 2403 requires;
    // truncated to the leftmost 96 bits. Case 5 gives its digest-96 in the RFC.
    #[test]
    fn hmac_md5_96_rfc2202() {
        let alg = IntegAlg::HmacMd5_96;
        check(alg, &[0x0b; 16], b"Hi There", "9294727a3638bb1c13f48ef8");
        check(alg, &[0xaa; 16], &[0xdd; 50], "56be34521d144c88dbb8c733");
        check(
            alg,
            &[0x0c; 16],
            b"Test With Truncation",
            "56461ef2342edc00f9bab995",
        );
    }

    // RFC 2202 section 3: the HMAC-SHA-1 cases with 20-byte keys (RFC 2404), truncated to 96
    // bits. Case 5 gives its digest-96 in the RFC.
    #[test]
    fn hmac_sha1_96_rfc2202() {
        let alg = IntegAlg::HmacSha1_96;
        check(alg, &[0x0b; 20], b"Hi There", "b617318655057264e28bc0b6");
        check(alg, &[0xaa; 20], &[0xdd; 50], "125d7342b9ac11cd91a39af4");
        check(
            alg,
            &[0x0c; 20],
            b"Test With Truncation",
            "4c1a03424b55e07fe7f27be1",
        );
    }

    // RFC 4868 section 2.7.2.1, AUTH256-1 to AUTH256-4 (the RFC 4231 messages with the
    // 32-byte keys IPsec uses), HMAC-SHA-256-128 values. RFC 4231's own cases use 20- and
    // 131-byte keys, which an IPsec SA refuses (see `key_length_must_be_exact`).
    #[test]
    fn hmac_sha256_128_rfc4868() {
        let alg = IntegAlg::HmacSha256_128;
        check(
            alg,
            &[0x0b; 32],
            b"Hi There",
            "198a607eb44bfbc69903a0f1cf2bbdc5",
        );
        check(
            alg,
            b"JefeJefeJefeJefeJefeJefeJefeJefe",
            b"what do ya want for nothing?",
            "167f928588c5cc2eef8e3093caa0e87c",
        );
        check(
            alg,
            &[0xaa; 32],
            &[0xdd; 50],
            "cdcb1220d1ecccea91e53aba3092f962",
        );
        let key: Vec<u8> = (1..=32).collect();
        check(alg, &key, &[0xcd; 50], "372efcf9b40b35c2115b1346903d2ef4");
    }

    #[test]
    fn verify_rejects_any_wrong_icv() {
        for alg in IntegAlg::ALL {
            let integ = Integrity::new(alg, &vec![0x42; alg.key_len()]).expect("key accepted");
            let mut icv = [0u8; 16];
            integ.compute(&[b"payload"], &mut icv);
            let icv = &icv[..integ.icv_len()];
            assert!(integ.verify(&[b"payload"], icv));
            for bit in 0..icv.len() * 8 {
                let mut bad = icv.to_vec();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(!integ.verify(&[b"payload"], &bad), "{alg:?} bit {bit}");
            }
            assert!(!integ.verify(&[b"payloaD"], icv), "{alg:?} other data");
            assert!(
                !integ.verify(&[b"payload"], &icv[..icv.len() - 1]),
                "{alg:?} short ICV"
            );
            let mut long = icv.to_vec();
            long.push(0);
            assert!(!integ.verify(&[b"payload"], &long), "{alg:?} long ICV");
            let other = Integrity::new(alg, &vec![0x43; alg.key_len()]).expect("key accepted");
            assert!(!other.verify(&[b"payload"], icv), "{alg:?} other key");
        }
    }

    #[test]
    fn compute_writes_only_the_icv() {
        let integ = Integrity::new(IntegAlg::HmacSha1_96, &[1; 20]).expect("key accepted");
        let mut out = [0xee; 20];
        integ.compute(&[b"x"], &mut out);
        assert_eq!(out[12..], [0xee; 8]);
        assert_eq!(integ.alg(), IntegAlg::HmacSha1_96);
    }

    #[test]
    fn key_length_must_be_exact() {
        for alg in IntegAlg::ALL {
            for len in [0, alg.key_len() - 1, alg.key_len() + 1] {
                assert_eq!(
                    Integrity::new(alg, &vec![0; len]).err(),
                    Some(KeyError::BadLength {
                        alg: alg.name(),
                        expected: alg.key_len(),
                        got: len
                    })
                );
            }
        }
    }
}
