//! CBC over the ESP block ciphers (RFC 2405 DES, RFC 2451 3DES, RFC 3602 AES) and the NULL
//! cipher (RFC 2410), with the key schedule expanded once per SA.
//!
//! The chaining is the `cbc` crate's, run over a *borrowed* key schedule (`cipher` implements
//! the block traits for `&C`), so a packet costs neither a key expansion nor a copy of the
//! schedule. Encryption is the inherently serial chain; decryption goes through the cipher
//! backend's parallel-blocks path (AES-NI decrypts 8 blocks at once) and keeps the previous
//! ciphertext blocks aside so it can work in place.

use aes::{Aes128, Aes192, Aes256};
use cbc::cipher::inout::InOutBuf;
use cbc::cipher::{
    BlockCipher, BlockDecrypt, BlockDecryptMut, BlockEncrypt, BlockEncryptMut, InnerIvInit, KeyInit,
};
use des::{Des, TdesEde3};

use super::alg::{CipherAlg, CryptoError, KeyError};

/// A per-SA CBC context: the expanded key of one ESP cipher.
pub(super) enum CbcCipher {
    Null,
    Des(Des),
    TripleDes(TdesEde3),
    Aes128(Aes128),
    Aes192(Aes192),
    Aes256(Aes256),
}

impl CbcCipher {
    /// Expands the key. The length must be exactly `alg.key_len()`; DES weak and semi-weak
    /// keys and 3DES keys that collapse to single DES are refused.
    pub(super) fn new(alg: CipherAlg, key: &[u8]) -> Result<CbcCipher, KeyError> {
        let bad_length = KeyError::BadLength {
            alg: alg.name(),
            expected: alg.key_len(),
            got: key.len(),
        };
        if key.len() != alg.key_len() {
            return Err(bad_length);
        }
        // The length was checked above, so `new_from_slice` cannot fail here; map it anyway
        // rather than unwrap.
        let cipher = match alg {
            CipherAlg::Null => CbcCipher::Null,
            CipherAlg::DesCbc => {
                if is_weak_des_key(key) {
                    return Err(KeyError::WeakKey { alg: alg.name() });
                }
                CbcCipher::Des(Des::new_from_slice(key).map_err(|_| bad_length)?)
            }
            CipherAlg::TripleDesCbc => {
                // K1 = K2 or K2 = K3 collapses EDE to single DES. The ESP 3DES drafts behind
                // RFC 2451 make implementations reject K1 = K2; K2 = K3 is the same flaw seen
                // from the other end. Weak subkeys are harmless here: the other keys cover them.
                let (k1, k2, k3) = (&key[..8], &key[8..16], &key[16..]);
                if same_des_key(k1, k2) || same_des_key(k2, k3) {
                    return Err(KeyError::WeakKey { alg: alg.name() });
                }
                CbcCipher::TripleDes(TdesEde3::new_from_slice(key).map_err(|_| bad_length)?)
            }
            CipherAlg::AesCbc128 => {
                CbcCipher::Aes128(Aes128::new_from_slice(key).map_err(|_| bad_length)?)
            }
            CipherAlg::AesCbc192 => {
                CbcCipher::Aes192(Aes192::new_from_slice(key).map_err(|_| bad_length)?)
            }
            CipherAlg::AesCbc256 => {
                CbcCipher::Aes256(Aes256::new_from_slice(key).map_err(|_| bad_length)?)
            }
        };
        Ok(cipher)
    }

    /// CBC-encrypts `data` in place. `iv` must be one block and `data` whole blocks.
    pub(super) fn encrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError> {
        match self {
            CbcCipher::Null => null_check(iv, data),
            CbcCipher::Des(c) => cbc_encrypt(c, iv, data),
            CbcCipher::TripleDes(c) => cbc_encrypt(c, iv, data),
            CbcCipher::Aes128(c) => cbc_encrypt(c, iv, data),
            CbcCipher::Aes192(c) => cbc_encrypt(c, iv, data),
            CbcCipher::Aes256(c) => cbc_encrypt(c, iv, data),
        }
    }

    /// CBC-encrypts several independent packets at once: `ivs[i]` with `datas[i]`. AES runs
    /// the chains interleaved — block j of every packet goes through the cipher together —
    /// so the AES-NI pipeline works on up to `LANES` blocks instead of waiting on one
    /// chain's latency (the multi-buffer technique of Intel's IPsec library). Other ciphers
    /// run the chains one after another.
    pub(super) fn encrypt_many(&self, ivs: &[&[u8]], datas: &mut [&mut [u8]]) -> Result<(), CryptoError> {
        if ivs.len() != datas.len() {
            return Err(CryptoError::BadLength);
        }
        match self {
            CbcCipher::Aes128(c) => encrypt_lanes(c, ivs, datas),
            CbcCipher::Aes192(c) => encrypt_lanes(c, ivs, datas),
            CbcCipher::Aes256(c) => encrypt_lanes(c, ivs, datas),
            _ => ivs.iter().zip(datas.iter_mut()).try_for_each(|(iv, data)| self.encrypt(iv, data)),
        }
    }

    /// CBC-decrypts `data` in place. `iv` must be one block and `data` whole blocks.
    pub(super) fn decrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError> {
        match self {
            CbcCipher::Null => null_check(iv, data),
            CbcCipher::Des(c) => cbc_decrypt(c, iv, data),
            CbcCipher::TripleDes(c) => cbc_decrypt(c, iv, data),
            CbcCipher::Aes128(c) => cbc_decrypt(c, iv, data),
            CbcCipher::Aes192(c) => cbc_decrypt(c, iv, data),
            CbcCipher::Aes256(c) => cbc_decrypt(c, iv, data),
        }
    }
}

/// RFC 2410: no IV, and any length is a whole number of its 1-byte blocks.
fn null_check(iv: &[u8], _data: &mut [u8]) -> Result<(), CryptoError> {
    if iv.is_empty() {
        Ok(())
    } else {
        Err(CryptoError::BadLength)
    }
}

fn cbc_encrypt<C: BlockEncrypt + BlockCipher>(
    cipher: &C,
    iv: &[u8],
    data: &mut [u8],
) -> Result<(), CryptoError> {
    let (blocks, tail) = InOutBuf::from(data).into_chunks();
    if !tail.is_empty() {
        return Err(CryptoError::BadLength);
    }
    let mut chain = cbc::Encryptor::<&C>::inner_iv_slice_init(cipher, iv)
        .map_err(|_| CryptoError::BadLength)?;
    chain.encrypt_blocks_inout_mut(blocks);
    Ok(())
}

/// How many CBC chains run interleaved: AES-NI keeps 8 blocks in flight.
pub const LANES: usize = 8;

/// Interleaved CBC over AES (16-byte blocks); chains may differ in length.
fn encrypt_lanes<C>(cipher: &C, ivs: &[&[u8]], datas: &mut [&mut [u8]]) -> Result<(), CryptoError>
where
    C: BlockEncrypt + BlockCipher<BlockSize = cbc::cipher::consts::U16>,
{
    for (iv, data) in ivs.iter().zip(datas.iter()) {
        if iv.len() != 16 || data.len() % 16 != 0 {
            return Err(CryptoError::BadLength);
        }
    }
    for (ivs, datas) in ivs.chunks(LANES).zip(datas.chunks_mut(LANES)) {
        let mut prev = [0u128; LANES];
        for (p, iv) in prev.iter_mut().zip(ivs) {
            *p = u128::from_ne_bytes(block16(iv));
        }
        let rounds = datas.iter().map(|d| d.len() / 16).max().unwrap_or(0);
        for j in 0..rounds {
            let at = j * 16;
            let mut blocks = [cbc::cipher::Block::<C>::default(); LANES];
            let mut lane_of = [0usize; LANES];
            let mut n = 0;
            for (l, data) in datas.iter().enumerate() {
                if at < data.len() {
                    let x = u128::from_ne_bytes(block16(&data[at..at + 16])) ^ prev[l];
                    blocks[n] = x.to_ne_bytes().into();
                    lane_of[n] = l;
                    n += 1;
                }
            }
            cipher.encrypt_blocks(&mut blocks[..n]);
            for (block, &l) in blocks[..n].iter().zip(&lane_of[..n]) {
                datas[l][at..at + 16].copy_from_slice(block);
                prev[l] = u128::from_ne_bytes(block16(block));
            }
        }
    }
    Ok(())
}

fn block16(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    a
}

fn cbc_decrypt<C: BlockDecrypt + BlockCipher>(
    cipher: &C,
    iv: &[u8],
    data: &mut [u8],
) -> Result<(), CryptoError> {
    let (blocks, tail) = InOutBuf::from(data).into_chunks();
    if !tail.is_empty() {
        return Err(CryptoError::BadLength);
    }
    let mut chain = cbc::Decryptor::<&C>::inner_iv_slice_init(cipher, iv)
        .map_err(|_| CryptoError::BadLength)?;
    chain.decrypt_blocks_inout_mut(blocks);
    Ok(())
}

/// The 4 weak and 12 semi-weak DES keys (FIPS 74), written with odd parity. They make
/// encryption an involution or pair up into mutual inverses.
const DES_WEAK_KEYS: [[u8; 8]; 16] = [
    [0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01],
    [0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE],
    [0xE0, 0xE0, 0xE0, 0xE0, 0xF1, 0xF1, 0xF1, 0xF1],
    [0x1F, 0x1F, 0x1F, 0x1F, 0x0E, 0x0E, 0x0E, 0x0E],
    [0x01, 0xFE, 0x01, 0xFE, 0x01, 0xFE, 0x01, 0xFE],
    [0xFE, 0x01, 0xFE, 0x01, 0xFE, 0x01, 0xFE, 0x01],
    [0x1F, 0xE0, 0x1F, 0xE0, 0x0E, 0xF1, 0x0E, 0xF1],
    [0xE0, 0x1F, 0xE0, 0x1F, 0xF1, 0x0E, 0xF1, 0x0E],
    [0x01, 0xE0, 0x01, 0xE0, 0x01, 0xF1, 0x01, 0xF1],
    [0xE0, 0x01, 0xE0, 0x01, 0xF1, 0x01, 0xF1, 0x01],
    [0x1F, 0xFE, 0x1F, 0xFE, 0x0E, 0xFE, 0x0E, 0xFE],
    [0xFE, 0x1F, 0xFE, 0x1F, 0xFE, 0x0E, 0xFE, 0x0E],
    [0x01, 0x1F, 0x01, 0x1F, 0x01, 0x0E, 0x01, 0x0E],
    [0x1F, 0x01, 0x1F, 0x01, 0x0E, 0x01, 0x0E, 0x01],
    [0xE0, 0xFE, 0xE0, 0xFE, 0xF1, 0xFE, 0xF1, 0xFE],
    [0xFE, 0xE0, 0xFE, 0xE0, 0xFE, 0xF1, 0xFE, 0xF1],
];

fn is_weak_des_key(key: &[u8]) -> bool {
    DES_WEAK_KEYS.iter().any(|weak| same_des_key(key, weak))
}

/// DES ignores the low (parity) bit of every key byte, so keys equal up to parity are the
/// same key.
fn same_des_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x & 0xFE == y & 0xFE)
}

/// Hex for known-answer tests; whitespace is ignored so RFC layouts can be pasted.
#[cfg(test)]
pub(super) fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd hex length");
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).expect("ascii");
            u8::from_str_radix(text, 16).expect("hex digit")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encrypt(alg: CipherAlg, key: &[u8], iv: &[u8], plain: &[u8]) -> Vec<u8> {
        let cipher = CbcCipher::new(alg, key).expect("key accepted");
        let mut buf = plain.to_vec();
        cipher.encrypt(iv, &mut buf).expect("whole blocks");
        buf
    }

    fn decrypt(alg: CipherAlg, key: &[u8], iv: &[u8], ciphertext: &[u8]) -> Vec<u8> {
        let cipher = CbcCipher::new(alg, key).expect("key accepted");
        let mut buf = ciphertext.to_vec();
        cipher.decrypt(iv, &mut buf).expect("whole blocks");
        buf
    }

    fn known_answer(alg: CipherAlg, key: &str, iv: &str, plain: &[u8], ciphertext: &str) {
        let (key, iv, ciphertext) = (hex(key), hex(iv), hex(ciphertext));
        assert_eq!(
            encrypt(alg, &key, &iv, plain),
            ciphertext,
            "{alg:?} encrypt"
        );
        assert_eq!(
            decrypt(alg, &key, &iv, &ciphertext),
            plain,
            "{alg:?} decrypt"
        );
    }

    // RFC 3602 section 4, cases 1 to 4 (AES-128-CBC).
    #[test]
    fn aes128_cbc_rfc3602_cases_1_to_4() {
        known_answer(
            CipherAlg::AesCbc128,
            "06a9214036b8a15b512e03d534120006",
            "3dafba429d9eb430b422da802c9fac41",
            b"Single block msg",
            "e353779c1079aeb82708942dbe77181a",
        );
        known_answer(
            CipherAlg::AesCbc128,
            "c286696d887c9aa0611bbb3e2025a45a",
            "562e17996d093d28ddb3ba695a2e6f58",
            &hex("000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f"),
            "d296cd94c2cccf8a3a863028b5e1dc0a 7586602d253cfff91b8266bea6d61ab1",
        );
        known_answer(
            CipherAlg::AesCbc128,
            "6c3ea0477630ce21a2ce334aa746c2cd",
            "c782dc4c098c66cbd9cd27d825682c81",
            b"This is a 48-byte message (exactly 3 AES blocks)",
            "d0a02b3836451753d493665d33f0e886 2dea54cdb293abc7506939276772f8d5
             021c19216bad525c8579695d83ba2684",
        );
        known_answer(
            CipherAlg::AesCbc128,
            "56e47a38c5598974bc46903dba290349",
            "8ce82eefbea0da3c44699ed7db51b7d9",
            &hex(
                "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf b0b1b2b3b4b5b6b7b8b9babbbcbdbebf
                 c0c1c2c3c4c5c6c7c8c9cacbcccdcecf d0d1d2d3d4d5d6d7d8d9dadbdcdddedf",
            ),
            "c30e32ffedc0774e6aff6af0869f71aa 0f3af07a9a31a9c684db207eb0ef8e4e
             35907aa632c3ffdf868bb7b29d3d46ad 83ce9f9a102ee99d49a53e87f4c3da55",
        );
    }

    // NIST SP 800-38A appendix F.2.1 to F.2.6 (CBC-AES128/192/256, encrypt and decrypt).
    #[test]
    fn aes_cbc_sp800_38a() {
        let iv = "000102030405060708090a0b0c0d0e0f";
        let plain = hex(
            "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
             30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710",
        );
        known_answer(
            CipherAlg::AesCbc128,
            "2b7e151628aed2a6abf7158809cf4f3c",
            iv,
            &plain,
            "7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2
             73bed6b8e3c1743b7116e69e22229516 3ff1caa1681fac09120eca307586e1a7",
        );
        known_answer(
            CipherAlg::AesCbc192,
            "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b",
            iv,
            &plain,
            "4f021db243bc633d7178183a9fa071e8 b4d9ada9ad7dedf4e5e738763f69145a
             571b242012fb7ae07fa9baac3df102e0 08b0e27988598881d920a9e64f5615cd",
        );
        known_answer(
            CipherAlg::AesCbc256,
            "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
            iv,
            &plain,
            "f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d
             39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b",
        );
    }

    // FIPS 81 appendix B, CBC example: "Now is the time for all ".
    #[test]
    fn des_cbc_fips81() {
        known_answer(
            CipherAlg::DesCbc,
            "0123456789abcdef",
            "1234567890abcdef",
            b"Now is the time for all ",
            "e5c7cdde872bf27c 43e934008c389c0f 683788499a7c05f6",
        );
    }

    // NIST SP 800-67 appendix B example (three-key TDEA, ECB): E(P1)|E(P2)|E(P3) =
    // a826fd8ce53b855f cce21c8112256fe6 68d5c05dd9b6b900 for P = "The qufck brown fox jump".
    // CBC with a zero IV over P1 | P2^C1 | P3^C2 must give exactly those C1|C2|C3, which
    // checks the cipher and the chaining against the published values alone.
    #[test]
    fn tdes_cbc_sp800_67() {
        let key = "0123456789abcdef 23456789abcdef01 456789abcdef0123";
        let ecb_plain = b"The qufck brown fox jump";
        let ecb_cipher = hex("a826fd8ce53b855f cce21c8112256fe6 68d5c05dd9b6b900");
        let mut chained = ecb_plain.to_vec();
        for i in 8..24 {
            chained[i] ^= ecb_cipher[i - 8];
        }
        known_answer(
            CipherAlg::TripleDesCbc,
            key,
            "0000000000000000",
            &chained,
            "a826fd8ce53b855f cce21c8112256fe6 68d5c05dd9b6b900",
        );
    }

    // Many blocks in place, so the parallel decrypt path (8 AES blocks per batch) runs over
    // several batches plus a remainder.
    #[test]
    fn long_round_trip_every_cipher() {
        for alg in CipherAlg::ALL {
            let key: Vec<u8> = (0..alg.key_len() as u8)
                .map(|i| i.wrapping_mul(29).wrapping_add(7))
                .collect();
            let cipher = CbcCipher::new(alg, &key).expect("key accepted");
            let iv = vec![0x5a; alg.iv_len()];
            let plain: Vec<u8> = (0..16 * 37).map(|i| (i * 7 % 251) as u8).collect();
            let mut buf = plain.clone();
            cipher.encrypt(&iv, &mut buf).expect("whole blocks");
            if alg != CipherAlg::Null {
                assert_ne!(buf, plain, "{alg:?} left the data in clear");
            }
            cipher.decrypt(&iv, &mut buf).expect("whole blocks");
            assert_eq!(buf, plain, "{alg:?}");
        }
    }

    #[test]
    fn partial_blocks_and_wrong_iv_are_bad_length() {
        let aes = CbcCipher::new(CipherAlg::AesCbc128, &[7; 16]).expect("key accepted");
        let mut buf = [0u8; 17];
        assert_eq!(aes.encrypt(&[0; 16], &mut buf), Err(CryptoError::BadLength));
        assert_eq!(aes.decrypt(&[0; 16], &mut buf), Err(CryptoError::BadLength));
        assert_eq!(
            aes.encrypt(&[0; 8], &mut buf[..16]),
            Err(CryptoError::BadLength)
        );
        assert_eq!(buf, [0u8; 17], "nothing was touched");
        let des =
            CbcCipher::new(CipherAlg::DesCbc, &hex("0123456789abcdef")).expect("key accepted");
        assert_eq!(
            des.decrypt(&[0; 8], &mut buf[..12]),
            Err(CryptoError::BadLength)
        );
        let null = CbcCipher::new(CipherAlg::Null, &[]).expect("no key");
        assert_eq!(null.encrypt(&[0; 1], &mut buf), Err(CryptoError::BadLength));
        assert_eq!(null.encrypt(&[], &mut buf), Ok(()));
    }

    #[test]
    fn key_length_must_be_exact() {
        for alg in CipherAlg::ALL {
            let long = vec![0x3c; alg.key_len() + 1];
            assert_eq!(
                CbcCipher::new(alg, &long).err(),
                Some(KeyError::BadLength {
                    alg: alg.name(),
                    expected: alg.key_len(),
                    got: alg.key_len() + 1
                })
            );
        }
    }

    #[test]
    fn des_weak_and_semi_weak_keys_refused() {
        for weak in DES_WEAK_KEYS {
            assert_eq!(
                CbcCipher::new(CipherAlg::DesCbc, &weak).err(),
                Some(KeyError::WeakKey { alg: "des" })
            );
            // The parity bits do not make a different key.
            let flipped: Vec<u8> = weak.iter().map(|b| b ^ 1).collect();
            assert!(CbcCipher::new(CipherAlg::DesCbc, &flipped).is_err());
        }
        assert!(CbcCipher::new(CipherAlg::DesCbc, &hex("0123456789abcdef")).is_ok());
    }

    #[test]
    fn tdes_keys_collapsing_to_des_refused() {
        let (k1, k2, k3) = ("0123456789abcdef", "23456789abcdef01", "456789abcdef0123");
        // k1 and k2 with every parity bit flipped: the same DES keys.
        let (k1_parity, k2_parity) = ("0022446688aaccee", "22446788aacdee00");
        let tdes = |k: String| CbcCipher::new(CipherAlg::TripleDesCbc, &hex(&k)).err();
        let refused = Some(KeyError::WeakKey { alg: "3des" });
        assert_eq!(tdes(format!("{k1}{k1}{k3}")), refused);
        assert_eq!(tdes(format!("{k1}{k2}{k2}")), refused);
        assert_eq!(tdes(format!("{k1}{k1_parity}{k3}")), refused);
        assert_eq!(tdes(format!("{k1}{k2}{k2_parity}")), refused);
        assert_eq!(tdes(format!("{k1}{k2}{k3}")), None);
        // K1 = K3 is keying option 2 of SP 800-67: still two independent keys.
        assert_eq!(tdes(format!("{k1}{k2}{k1}")), None);
    }
}
