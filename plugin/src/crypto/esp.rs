//! ESP payload protection (RFC 4303): a CBC cipher with an optional HMAC, or AES-GCM
//! (RFC 4106), applied in place to one whole ESP packet.
//!
//! ```text
//!  0               4               8
//! +---------------+---------------+--------------------+---------------------+-----+
//! |      SPI      |  Sequence No. |  IV (iv_len)       | payload + trailer   | ICV |
//! +---------------+---------------+--------------------+---------------------+-----+
//! |<----------- authenticated (CBC + HMAC: all of it; GCM: SPI|Seq as AAD) -->|
//!                                                      |<--- encrypted ----->|
//! ```
//!
//! Inbound, the ICV is checked in constant time before a single byte is decrypted, so a
//! forged packet costs one MAC and leaves the buffer as it came.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit, Nonce, Tag};

use super::alg::{AeadAlg, CryptoError, EspTransform, KeyError};
use super::cipher::CbcCipher;
use super::integrity::Integrity;
use super::rng::fill_random;

/// SPI and sequence number.
const ESP_HEADER_LEN: usize = 8;
/// RFC 4106 section 4: the salt is the last 4 bytes of the key material.
const GCM_SALT_LEN: usize = 4;

/// A per-SA ESP context: everything the packet path needs, keyed once.
pub struct EspCrypto {
    transform: EspTransform,
    engine: Engine,
}

enum Engine {
    Cbc {
        cipher: CbcCipher,
        integrity: Option<Integrity>,
    },
    Gcm {
        aead: Gcm,
        salt: [u8; GCM_SALT_LEN],
    },
}

// Built once per SA and only borrowed afterwards, so the size gap costs nothing; a Box
// would cost a pointer chase on every packet.
#[allow(clippy::large_enum_variant)]
enum Gcm {
    Aes128(Aes128Gcm),
    Aes256(Aes256Gcm),
}

/// Where the parts of an ESP packet of a given length lie.
struct Layout {
    iv_end: usize,
    payload_end: usize,
}

impl EspCrypto {
    /// Expands the keys for `t`. `enc_key` is the cipher key (for GCM: AES key then salt);
    /// `auth_key` the HMAC key, empty when `t` has no separate integrity algorithm.
    pub fn new(t: EspTransform, enc_key: &[u8], auth_key: &[u8]) -> Result<EspCrypto, KeyError> {
        let engine = match t {
            EspTransform::Cipher { cipher, integ } => {
                let integrity = match integ {
                    Some(alg) => Some(Integrity::new(alg, auth_key)?),
                    None if auth_key.is_empty() => None,
                    None => {
                        return Err(KeyError::BadLength {
                            alg: "none",
                            expected: 0,
                            got: auth_key.len(),
                        })
                    }
                };
                Engine::Cbc {
                    cipher: CbcCipher::new(cipher, enc_key)?,
                    integrity,
                }
            }
            EspTransform::Aead(alg) => {
                let bad_length = KeyError::BadLength {
                    alg: alg.name(),
                    expected: alg.key_len(),
                    got: enc_key.len(),
                };
                if enc_key.len() != alg.key_len() {
                    return Err(bad_length);
                }
                if !auth_key.is_empty() {
                    return Err(KeyError::BadLength {
                        alg: alg.name(),
                        expected: 0,
                        got: auth_key.len(),
                    });
                }
                let (aes_key, salt) = enc_key.split_at(enc_key.len() - GCM_SALT_LEN);
                // The length was checked above; map rather than unwrap all the same.
                let aead = match alg {
                    AeadAlg::AesGcm16_128 => Gcm::Aes128(
                        Aes128Gcm::new_from_slice(aes_key).map_err(|_| bad_length.clone())?,
                    ),
                    AeadAlg::AesGcm16_256 => Gcm::Aes256(
                        Aes256Gcm::new_from_slice(aes_key).map_err(|_| bad_length.clone())?,
                    ),
                };
                let mut salt_bytes = [0u8; GCM_SALT_LEN];
                salt_bytes.copy_from_slice(salt);
                Engine::Gcm {
                    aead,
                    salt: salt_bytes,
                }
            }
        };
        Ok(EspCrypto {
            transform: t,
            engine,
        })
    }

    pub fn transform(&self) -> EspTransform {
        self.transform
    }

    /// Outbound. `esp` is one whole ESP packet: SPI(4) | Seq(4) | IV(iv_len) | payload |
    /// ICV(icv_len), with SPI, Seq and the padded plaintext payload already written (its
    /// length a non-zero multiple of `pad_align()`). Writes the IV — random for CBC; for GCM
    /// `iv_counter` big-endian, which RFC 4106 section 3.1 allows and which never repeats
    /// within an SA — encrypts the payload in place and writes the ICV.
    pub fn seal(&self, esp: &mut [u8], iv_counter: u64) -> Result<(), CryptoError> {
        let layout = self.layout(esp.len())?;
        let iv = &mut esp[ESP_HEADER_LEN..layout.iv_end];
        match self.engine {
            Engine::Cbc { .. } => fill_random(iv),
            Engine::Gcm { .. } => iv.copy_from_slice(&iv_counter.to_be_bytes()),
        }
        self.seal_with_iv(esp, &layout)
    }

    /// `seal` for several packets of this SA at once (`iv_counters[i]` for `esps[i]`):
    /// CBC chains are encrypted interleaved (see `CbcCipher::encrypt_many`), then each ICV
    /// is computed. Results are per packet; a packet whose layout does not fit is left as
    /// it was and reported, the others are sealed.
    pub fn seal_many(&self, esps: &mut [&mut [u8]], iv_counters: &[u64], results: &mut [Result<(), CryptoError>]) {
        let Engine::Cbc { cipher, integrity } = &self.engine else {
            for ((esp, &counter), result) in esps.iter_mut().zip(iv_counters).zip(results.iter_mut()) {
                *result = self.seal(esp, counter);
            }
            return;
        };
        for (esps, results) in esps.chunks_mut(super::cipher::LANES).zip(results.chunks_mut(super::cipher::LANES)) {
            // Split each packet into IV and payload; packets that do not fit sit out.
            let mut ivs: [&[u8]; super::cipher::LANES] = [&[]; super::cipher::LANES];
            let mut payloads: [&mut [u8]; super::cipher::LANES] = Default::default();
            let mut members = [0usize; super::cipher::LANES];
            let mut n = 0;
            for (i, (esp, result)) in esps.iter_mut().zip(results.iter_mut()).enumerate() {
                *result = self.layout(esp.len()).map(|layout| {
                    let (header_and_iv, rest) = esp.split_at_mut(layout.iv_end);
                    fill_random(&mut header_and_iv[ESP_HEADER_LEN..]);
                    ivs[n] = &header_and_iv[ESP_HEADER_LEN..];
                    payloads[n] = &mut rest[..layout.payload_end - layout.iv_end];
                    members[n] = i;
                    n += 1;
                });
            }
            if let Err(e) = cipher.encrypt_many(&ivs[..n], &mut payloads[..n]) {
                members[..n].iter().for_each(|&i| results[i] = Err(e));
                continue;
            }
            if let Some(integrity) = integrity {
                for &i in &members[..n] {
                    let esp = &mut *esps[i];
                    let icv_at = esp.len() - integrity.icv_len();
                    let (authed, icv) = esp.split_at_mut(icv_at);
                    integrity.compute(&[authed], icv);
                }
            }
        }
    }

    /// Encrypts and signs a packet whose IV is already in place.
    fn seal_with_iv(&self, esp: &mut [u8], layout: &Layout) -> Result<(), CryptoError> {
        let (authed, icv) = esp.split_at_mut(layout.payload_end);
        let (header_and_iv, payload) = authed.split_at_mut(layout.iv_end);
        match &self.engine {
            Engine::Cbc { cipher, integrity } => {
                cipher.encrypt(&header_and_iv[ESP_HEADER_LEN..], payload)?;
                if let Some(integrity) = integrity {
                    integrity.compute(&[header_and_iv, payload], icv);
                }
            }
            Engine::Gcm { aead, salt } => {
                let (header, iv) = header_and_iv.split_at(ESP_HEADER_LEN);
                let nonce = gcm_nonce(salt, iv);
                let tag = match aead {
                    Gcm::Aes128(a) => {
                        a.encrypt_in_place_detached(Nonce::from_slice(&nonce), header, payload)
                    }
                    Gcm::Aes256(a) => {
                        a.encrypt_in_place_detached(Nonce::from_slice(&nonce), header, payload)
                    }
                }
                // Only fails past GCM's 64 GiB message limit, which no IPv4 packet reaches.
                .map_err(|_| CryptoError::BadLength)?;
                icv.copy_from_slice(&tag);
            }
        }
        Ok(())
    }

    /// Inbound. Checks the layout (`BadLength`), verifies the ICV in constant time before
    /// decrypting (`AuthFailed`, buffer untouched), then decrypts the payload in place.
    pub fn open(&self, esp: &mut [u8]) -> Result<(), CryptoError> {
        let layout = self.layout(esp.len())?;
        let (authed, icv) = esp.split_at_mut(layout.payload_end);
        let (header_and_iv, payload) = authed.split_at_mut(layout.iv_end);
        match &self.engine {
            Engine::Cbc { cipher, integrity } => {
                if let Some(integrity) = integrity {
                    if !integrity.verify(&[header_and_iv, payload], icv) {
                        return Err(CryptoError::AuthFailed);
                    }
                }
                cipher.decrypt(&header_and_iv[ESP_HEADER_LEN..], payload)
            }
            Engine::Gcm { aead, salt } => {
                let (header, iv) = header_and_iv.split_at(ESP_HEADER_LEN);
                let nonce = gcm_nonce(salt, iv);
                let tag = Tag::from_slice(icv);
                // aes-gcm checks the tag (constant time) before it applies the keystream.
                match aead {
                    Gcm::Aes128(a) => {
                        a.decrypt_in_place_detached(Nonce::from_slice(&nonce), header, payload, tag)
                    }
                    Gcm::Aes256(a) => {
                        a.decrypt_in_place_detached(Nonce::from_slice(&nonce), header, payload, tag)
                    }
                }
                .map_err(|_| CryptoError::AuthFailed)
            }
        }
    }

    /// Splits a packet of `len` bytes, or says it cannot be one of this SA's.
    fn layout(&self, len: usize) -> Result<Layout, CryptoError> {
        let t = self.transform;
        let iv_end = ESP_HEADER_LEN + t.iv_len();
        let payload_end = len.checked_sub(t.icv_len()).ok_or(CryptoError::BadLength)?;
        let payload_len = payload_end
            .checked_sub(iv_end)
            .ok_or(CryptoError::BadLength)?;
        // Even an empty datagram leaves the 2-byte trailer, and pad_align is a multiple of
        // the cipher block, so this also guarantees whole blocks.
        if payload_len == 0 || payload_len % t.pad_align() != 0 {
            return Err(CryptoError::BadLength);
        }
        Ok(Layout {
            iv_end,
            payload_end,
        })
    }
}

impl std::fmt::Debug for EspCrypto {
    /// Names the transform only: the keys are secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EspCrypto")
            .field("transform", &self.transform)
            .finish_non_exhaustive()
    }
}

/// RFC 4106 section 4: nonce = salt | explicit IV.
fn gcm_nonce(salt: &[u8; GCM_SALT_LEN], iv: &[u8]) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..GCM_SALT_LEN].copy_from_slice(salt);
    nonce[GCM_SALT_LEN..].copy_from_slice(iv);
    nonce
}

#[cfg(test)]
mod tests {
    use super::super::alg::{CipherAlg, IntegAlg};
    use super::super::cipher::hex;
    use super::*;

    fn every_transform() -> Vec<EspTransform> {
        let mut all = Vec::new();
        for cipher in CipherAlg::ALL {
            for integ in [
                None,
                Some(IntegAlg::HmacMd5_96),
                Some(IntegAlg::HmacSha1_96),
                Some(IntegAlg::HmacSha256_128),
            ] {
                all.push(EspTransform::Cipher { cipher, integ });
            }
        }
        all.extend(AeadAlg::ALL.map(EspTransform::Aead));
        all
    }

    fn test_keys(t: EspTransform, seed: u8) -> (Vec<u8>, Vec<u8>) {
        let enc = (0..t.enc_key_len())
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let auth = (0..t.auth_key_len())
            .map(|i| (i as u8).wrapping_mul(17).wrapping_add(seed))
            .collect();
        (enc, auth)
    }

    fn sa(t: EspTransform, seed: u8) -> EspCrypto {
        let (enc, auth) = test_keys(t, seed);
        EspCrypto::new(t, &enc, &auth).expect("keys accepted")
    }

    /// An ESP packet around `payload_len` bytes of recognisable plaintext.
    fn packet(t: EspTransform, payload_len: usize) -> (Vec<u8>, Vec<u8>) {
        let plain: Vec<u8> = (0..payload_len).map(|i| (i * 13 % 256) as u8).collect();
        let mut esp = vec![0u8; ESP_HEADER_LEN + t.iv_len() + payload_len + t.icv_len()];
        esp[..8].copy_from_slice(&[0x00, 0x00, 0x12, 0x34, 0x00, 0x00, 0x00, 0x07]);
        esp[8 + t.iv_len()..][..payload_len].copy_from_slice(&plain);
        (esp, plain)
    }

    fn payload(t: EspTransform, esp: &[u8]) -> &[u8] {
        &esp[8 + t.iv_len()..esp.len() - t.icv_len()]
    }

    #[test]
    fn seal_many_matches_open_for_every_transform_and_lane_count() {
        for t in every_transform() {
            let crypto = sa(t, 3);
            // 11 packets of mixed lengths: more than one group of lanes, ragged chains.
            let sizes: Vec<usize> = (0..11).map(|i| t.pad_align() * (1 + (i * 7) % 90)).collect();
            let mut packets: Vec<(Vec<u8>, Vec<u8>)> = sizes.iter().map(|&n| packet(t, n)).collect();
            // One packet whose layout cannot fit is reported and the rest still sealed.
            packets[4].0.truncate(5);
            let counters: Vec<u64> = (0..packets.len() as u64).collect();
            let mut results = vec![Ok(()); packets.len()];
            let mut esps: Vec<&mut [u8]> = packets.iter_mut().map(|(e, _)| &mut e[..]).collect();
            crypto.seal_many(&mut esps, &counters, &mut results);
            for (i, ((esp, plain), result)) in packets.iter_mut().zip(&results).enumerate() {
                if i == 4 {
                    assert_eq!(*result, Err(CryptoError::BadLength), "{t}");
                    continue;
                }
                assert_eq!(*result, Ok(()), "{t} packet {i}");
                crypto.open(esp).unwrap_or_else(|e| panic!("{t} packet {i}: {e:?}"));
                assert_eq!(payload(t, esp), &plain[..], "{t} packet {i}");
            }
        }
    }

    #[test]
    fn interleaved_cbc_equals_serial_cbc() {
        for alg in [CipherAlg::AesCbc128, CipherAlg::AesCbc192, CipherAlg::AesCbc256, CipherAlg::TripleDesCbc] {
            let key: Vec<u8> = (0..alg.key_len() as u8).map(|i| i.wrapping_mul(29) ^ 0x5a).collect();
            let cipher = super::super::cipher::CbcCipher::new(alg, &key).expect("key");
            let b = alg.block_len();
            let ivs: Vec<Vec<u8>> = (0..13u8).map(|i| vec![i; b]).collect();
            let plains: Vec<Vec<u8>> = (0..13usize).map(|i| (0..b * (1 + i * 5)).map(|x| (x * 7 + i) as u8).collect()).collect();
            let mut serial = plains.clone();
            for (iv, data) in ivs.iter().zip(serial.iter_mut()) {
                cipher.encrypt(iv, data).expect("whole blocks");
            }
            let mut many = plains.clone();
            let iv_refs: Vec<&[u8]> = ivs.iter().map(|v| &v[..]).collect();
            let mut data_refs: Vec<&mut [u8]> = many.iter_mut().map(|v| &mut v[..]).collect();
            cipher.encrypt_many(&iv_refs, &mut data_refs).expect("whole blocks");
            assert_eq!(many, serial, "{alg:?}");
        }
    }

    #[test]
    fn seal_open_round_trip_every_transform() {
        for t in every_transform() {
            let crypto = sa(t, 1);
            assert_eq!(crypto.transform(), t);
            for blocks in [1, 2, 5, 33] {
                let (mut esp, plain) = packet(t, t.pad_align() * blocks);
                crypto.seal(&mut esp, 42).expect("layout fits");
                assert_eq!(
                    esp[..8],
                    [0x00, 0x00, 0x12, 0x34, 0x00, 0x00, 0x00, 0x07],
                    "{t}: header kept"
                );
                let is_null = matches!(
                    t,
                    EspTransform::Cipher {
                        cipher: CipherAlg::Null,
                        ..
                    }
                );
                assert_eq!(
                    payload(t, &esp) == plain,
                    is_null,
                    "{t}: encrypted unless NULL"
                );
                crypto.open(&mut esp).expect("authentic");
                assert_eq!(payload(t, &esp), plain, "{t}");
            }
        }
    }

    #[test]
    fn gcm_iv_is_the_counter_and_cbc_iv_is_random() {
        let gcm = EspTransform::Aead(AeadAlg::AesGcm16_128);
        let (mut esp, _) = packet(gcm, 16);
        sa(gcm, 1)
            .seal(&mut esp, 0x0102_0304_0506_0708)
            .expect("layout fits");
        assert_eq!(esp[8..16], [1, 2, 3, 4, 5, 6, 7, 8]);

        let cbc = EspTransform::Cipher {
            cipher: CipherAlg::AesCbc128,
            integ: Some(IntegAlg::HmacSha1_96),
        };
        let crypto = sa(cbc, 1);
        let (mut first, _) = packet(cbc, 32);
        let mut second = first.clone();
        crypto.seal(&mut first, 0).expect("layout fits");
        crypto.seal(&mut second, 0).expect("layout fits");
        assert_ne!(first[8..24], second[8..24], "same IV twice");
        assert_ne!(
            first[24..56],
            second[24..56],
            "same plaintext gave the same ciphertext"
        );
    }

    #[test]
    fn any_flipped_bit_fails_authentication_and_leaves_the_packet() {
        for t in every_transform().into_iter().filter(|t| t.icv_len() > 0) {
            let crypto = sa(t, 2);
            let (mut sealed, _) = packet(t, 2 * t.pad_align());
            crypto.seal(&mut sealed, 9).expect("layout fits");
            for bit in 0..sealed.len() * 8 {
                let mut forged = sealed.clone();
                forged[bit / 8] ^= 1 << (bit % 8);
                let before = forged.clone();
                assert_eq!(
                    crypto.open(&mut forged),
                    Err(CryptoError::AuthFailed),
                    "{t}: bit {bit}"
                );
                assert_eq!(
                    forged, before,
                    "{t}: bit {bit}: payload decrypted despite a bad ICV"
                );
            }
        }
    }

    #[test]
    fn wrong_keys_fail_authentication() {
        for t in every_transform().into_iter().filter(|t| t.icv_len() > 0) {
            let (mut esp, _) = packet(t, 4 * t.pad_align());
            sa(t, 3).seal(&mut esp, 1).expect("layout fits");
            let sealed = esp.clone();
            assert_eq!(sa(t, 4).open(&mut esp), Err(CryptoError::AuthFailed), "{t}");
            assert_eq!(esp, sealed, "{t}");
            // Right integrity key, wrong cipher key: authentic, but not our plaintext.
            if let EspTransform::Cipher { cipher, .. } = t {
                if cipher != CipherAlg::Null {
                    let (_, auth) = test_keys(t, 3);
                    let (enc, _) = test_keys(t, 4);
                    let other = EspCrypto::new(t, &enc, &auth).expect("keys accepted");
                    let (_, plain) = packet(t, 4 * t.pad_align());
                    assert_eq!(other.open(&mut esp), Ok(()), "{t}");
                    assert_ne!(payload(t, &esp), plain, "{t}");
                }
            }
        }
    }

    #[test]
    fn bad_lengths() {
        for t in every_transform() {
            let crypto = sa(t, 5);
            let overhead = ESP_HEADER_LEN + t.iv_len() + t.icv_len();
            let mut bad = vec![overhead]; // no payload at all
            bad.extend((1..overhead).map(|short| overhead - short)); // not even the overhead
            if t.pad_align() > 1 {
                bad.push(overhead + t.pad_align() + 1); // payload off the alignment
                bad.push(overhead + t.pad_align() - 1);
            }
            for len in bad {
                let mut esp = vec![0x5c; len];
                assert_eq!(
                    crypto.seal(&mut esp, 0),
                    Err(CryptoError::BadLength),
                    "{t}: seal {len}"
                );
                assert_eq!(esp, vec![0x5c; len], "{t}: seal {len} wrote");
                assert_eq!(
                    crypto.open(&mut esp),
                    Err(CryptoError::BadLength),
                    "{t}: open {len}"
                );
            }
        }
    }

    #[test]
    fn key_errors() {
        let sha1 = EspTransform::Cipher {
            cipher: CipherAlg::AesCbc128,
            integ: Some(IntegAlg::HmacSha1_96),
        };
        assert!(matches!(
            EspCrypto::new(sha1, &[1; 16], &[2; 19]),
            Err(KeyError::BadLength {
                expected: 20,
                got: 19,
                ..
            })
        ));
        assert!(matches!(
            EspCrypto::new(sha1, &[1; 15], &[2; 20]),
            Err(KeyError::BadLength {
                expected: 16,
                got: 15,
                ..
            })
        ));
        let bare = EspTransform::Cipher {
            cipher: CipherAlg::AesCbc128,
            integ: None,
        };
        assert!(matches!(
            EspCrypto::new(bare, &[1; 16], &[2; 20]),
            Err(KeyError::BadLength {
                expected: 0,
                got: 20,
                ..
            })
        ));
        let des = EspTransform::Cipher {
            cipher: CipherAlg::DesCbc,
            integ: Some(IntegAlg::HmacMd5_96),
        };
        assert_eq!(
            EspCrypto::new(des, &[0x01; 8], &[2; 16]).err(),
            Some(KeyError::WeakKey { alg: "des" })
        );
        let gcm = EspTransform::Aead(AeadAlg::AesGcm16_256);
        assert!(matches!(
            EspCrypto::new(gcm, &[1; 32], &[]),
            Err(KeyError::BadLength {
                expected: 36,
                got: 32,
                ..
            })
        ));
        assert!(matches!(
            EspCrypto::new(gcm, &[1; 36], &[2; 4]),
            Err(KeyError::BadLength {
                expected: 0,
                got: 4,
                ..
            })
        ));
    }

    /// One ESP packet given as SPI|Seq|IV|ciphertext|ICV in hex.
    fn open_known(t: EspTransform, enc_key: &str, esp: &str) -> Vec<u8> {
        let crypto = EspCrypto::new(t, &hex(enc_key), &[]).expect("keys accepted");
        let mut esp = hex(esp);
        crypto.open(&mut esp).expect("authentic");
        payload(t, &esp).to_vec()
    }

    /// Re-encrypts `plain` with the packet's own IV and expects the packet byte for byte.
    fn seal_known(t: EspTransform, enc_key: &str, esp: &str, plain: &[u8]) {
        let crypto = EspCrypto::new(t, &hex(enc_key), &[]).expect("keys accepted");
        let expected = hex(esp);
        let mut esp = expected.clone();
        let layout = crypto.layout(esp.len()).expect("layout fits");
        esp[layout.iv_end..layout.payload_end].copy_from_slice(plain);
        esp[layout.payload_end..].fill(0);
        crypto.seal_with_iv(&mut esp, &layout).expect("layout fits");
        assert_eq!(esp, expected, "{t}");
    }

    /// The RFC 4303 default trailer: padding 1, 2, 3, ..., pad length, next header.
    fn with_trailer(inner: &str, pad_len: u8, next_header: u8) -> Vec<u8> {
        let mut plain = hex(inner);
        plain.extend(1..=pad_len);
        plain.extend([pad_len, next_header]);
        plain
    }

    // RFC 3602 section 4, cases 5 to 8: whole ESP packets (AES-128-CBC, no integrity) as
    // SPI | Seq | IV | ciphertext, ICMP (next header 1) in transport mode, IPv4 (4) in tunnel.
    #[test]
    fn aes_cbc_esp_packets_rfc3602() {
        let t = EspTransform::Cipher {
            cipher: CipherAlg::AesCbc128,
            integ: None,
        };
        let cases = [
            (
                "90d382b410eeba7ad938c46cec1a82bf",
                "0000432100000001e96e8c08ab465763fd098d45dd3ff893f663c25d325c18c6a9453e194e120849
                 a4870b66cc6b9965330013b4898dc856a4699e523a55db080b59ec3a8e4b7e52775b07d1db34ed9c
                 538ab50c551b874aa269add047ad2d5913ac19b7cfbad4a6",
                with_trailer(
                    "08000ebda70a00008e9c083db95b070008090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
                     202122232425262728292a2b2c2d2e2f3031323334353637",
                    14,
                    1,
                ),
            ),
            (
                "90d382b410eeba7ad938c46cec1a82bf",
                "000043210000000869d08df7d203329db093fc4924e5bd80f51995881ec4e0c4488987ce742e8109
                 689bb379d2d750c0d915dca346a89f75",
                with_trailer("0800b5e8a80a0500a69c083d0b660e00777777777777777777777777", 2, 1),
            ),
            (
                "0123456789abcdef0123456789abcdef",
                "0000876500000002f4e765244f6407adf13dc1380f673f37773b5241a4c449225e4f3ce5ed611b0c
                 237ca96cf74a93013c1b0ea1a0cf70f8e4ecaec78ac53aad7a0f022b859243c647752e94a859352b
                 8a4d4d2decd136e5c177f132ad3fbfb2201ac9904c74ee0a109e0ca1e4dfe9d5a100b842f1c22f0d",
                with_trailer(
                    "45000054090400004001f988c0a87b03c0a87bc808009f76a90a0100b49c083d02a2040008090a0b
                     0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f30313233
                     34353637",
                    10,
                    4,
                ),
            ),
            (
                "0123456789abcdef0123456789abcdef",
                "000087650000000585d47224b5f3dd5d2101d4ea8dffab2215b92683819596a8047232cc00f7048f
                 e45318e11f8a0f62ede3c3fc61203bb50f980a08c9843fd3a1b06d5c07ff9639b7eb7dfb3512e5de
                 435e7207ed971ef3d2726d9b5ef6affc6d17a0decbb13892",
                with_trailer(
                    "45000044090c00004001f990c0a87b03c0a87bc80800d63caa0a0200c69c083da3de0300ffffffff
                     ffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                    10,
                    4,
                ),
            ),
        ];
        for (key, esp, plain) in cases {
            assert_eq!(open_known(t, key, esp), plain);
            seal_known(t, key, esp, &plain);
        }
    }

    // draft-mcgrew-gcm-test-01 (the ESP test vectors for RFC 4106 GCM): the cases with a
    // 32-bit sequence number, so AAD = SPI | Seq. The 12-byte nonce there is our salt (last
    // 4 bytes of the key material) followed by the packet's 8-byte IV.
    #[test]
    fn aes_gcm_esp_packets_mcgrew_viega() {
        let cases = [
            (
                // AES-128, K = feffe992..., nonce cafebabe facedbaddecaf888, SPI a5f8, Seq 10.
                AeadAlg::AesGcm16_128,
                "feffe9928665731c6d6a8f9467308308 cafebabe",
                "0000a5f80000000a facedbaddecaf888
                 deb22cd9b07c72c16e3a65beeb8df304a5a5897d33ae530f1ba76d5d114d2a5c
                 3de81827c10e9a4f51330d0eec416642cfbb85a5b47e48a4ec3b9ba95d918bd1
                 83b70d3aa8bc6ee4c309e9d85a41ad4a",
                "4500003e698f000080114dccc0a80102c0a801010a980035002a2343b2d00100
                 0001000000000000037369700963796265726369747902646b00000100010001",
                0xface_dbad_deca_f888,
            ),
            (
                // AES-128, all-zero key and nonce, SPI 0, Seq 1.
                AeadAlg::AesGcm16_128,
                "00000000000000000000000000000000 00000000",
                "0000000000000001 0000000000000000
                 4688daf2f973a392732909c331d56d60f694abaa414b5e7ff5fdcdfff5e9a284
                 456476492719ffb64de7d9dca1e1d894bc3bd57873ed4d181d19d4d5c8c18af3
                 f821d496eeb096e98ad2b69e4799c71d",
                "4500003c99c500008001cb7a40679318010101010800075c0200440061626364
                 65666768696a6b6c6d6e6f707172737475767761626364656667686901020201",
                0,
            ),
            (
                // AES-256, K = abbccdde... twice, nonce 11223344 0102030405060708, SPI 4a2cbfe3, Seq 2.
                AeadAlg::AesGcm16_256,
                "abbccddef00112233445566778899aababbccddef00112233445566778899aab 11223344",
                "4a2cbfe300000002 0102030405060708
                 ff425c9b724599df7a3bcd510194e00d6a78107f1b0b1cbf06efae9d65a5d763
                 748a637985771d347f0545659f14e99def842d8e
                 b335f4eecfdbf831824b4c4915956c96",
                "4500003069a6400080062690c0a801029389155e0a9e008b2dc57ee000000000
                 7002400020bf0000020405b40101040201020201",
                0x0102_0304_0506_0708,
            ),
            (
                // AES-128, K = 7d773d00..., nonce d9664267 43457e9182443bc6, SPI 335467ae,
                // Seq ffffffff: a 4-byte payload, the smallest ESP can carry.
                AeadAlg::AesGcm16_128,
                "7d773d00c144c525ac619d18c84a3f47 d9664267",
                "335467aeffffffff 43457e9182443bc6 437f866b cb3f699fe9b0822bac961c4504bef270",
                "01020201",
                0x4345_7e91_8244_3bc6,
            ),
        ];
        for (alg, key, esp, plain, iv) in cases {
            let t = EspTransform::Aead(alg);
            let plain = hex(plain);
            assert_eq!(open_known(t, key, esp), plain, "{t}");
            // seal() writes the counter as the IV, so it must reproduce the packet exactly.
            let crypto = EspCrypto::new(t, &hex(key), &[]).expect("keys accepted");
            let expected = hex(esp);
            let mut sealed = expected.clone();
            sealed[16..16 + plain.len()].copy_from_slice(&plain);
            sealed[8..16].fill(0);
            sealed[16 + plain.len()..].fill(0);
            crypto.seal(&mut sealed, iv).expect("layout fits");
            assert_eq!(sealed, expected, "{t}");
        }
    }
}
