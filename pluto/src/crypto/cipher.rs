//! Encryption of ISAKMP messages after the key exchange (RFC 2409 Appendix B): the
//! negotiated cipher in CBC mode, no padding scheme (the sender pads to the block with
//! zeros and the receiver ignores what follows the last payload).

use aes::{Aes128, Aes256};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use des::TdesEde3;
use ipsec_plugin::config::IkeCipher;

pub fn key_len(cipher: IkeCipher) -> usize {
    match cipher {
        IkeCipher::TripleDes => 24,
        IkeCipher::Aes128 => 16,
        IkeCipher::Aes256 => 32,
    }
}

pub fn block_len(cipher: IkeCipher) -> usize {
    match cipher {
        IkeCipher::TripleDes => 8,
        IkeCipher::Aes128 | IkeCipher::Aes256 => 16,
    }
}

/// The key, IV or data has the wrong length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadLength;

/// Encrypts `data` (a whole number of blocks) in place.
pub fn encrypt(cipher: IkeCipher, key: &[u8], iv: &[u8], data: &mut [u8]) -> Result<(), BadLength> {
    if !data.len().is_multiple_of(block_len(cipher)) {
        return Err(BadLength);
    }
    let len = data.len();
    let done = match cipher {
        IkeCipher::TripleDes => cbc::Encryptor::<TdesEde3>::new_from_slices(key, iv)
            .map_err(|_| BadLength)?
            .encrypt_padded_mut::<NoPadding>(data, len)
            .is_ok(),
        IkeCipher::Aes128 => cbc::Encryptor::<Aes128>::new_from_slices(key, iv)
            .map_err(|_| BadLength)?
            .encrypt_padded_mut::<NoPadding>(data, len)
            .is_ok(),
        IkeCipher::Aes256 => cbc::Encryptor::<Aes256>::new_from_slices(key, iv)
            .map_err(|_| BadLength)?
            .encrypt_padded_mut::<NoPadding>(data, len)
            .is_ok(),
    };
    done.then_some(()).ok_or(BadLength)
}

/// Decrypts `data` (a whole number of blocks) in place.
pub fn decrypt(cipher: IkeCipher, key: &[u8], iv: &[u8], data: &mut [u8]) -> Result<(), BadLength> {
    if !data.len().is_multiple_of(block_len(cipher)) {
        return Err(BadLength);
    }
    let done = match cipher {
        IkeCipher::TripleDes => cbc::Decryptor::<TdesEde3>::new_from_slices(key, iv)
            .map_err(|_| BadLength)?
            .decrypt_padded_mut::<NoPadding>(data)
            .is_ok(),
        IkeCipher::Aes128 => cbc::Decryptor::<Aes128>::new_from_slices(key, iv)
            .map_err(|_| BadLength)?
            .decrypt_padded_mut::<NoPadding>(data)
            .is_ok(),
        IkeCipher::Aes256 => cbc::Decryptor::<Aes256>::new_from_slices(key, iv)
            .map_err(|_| BadLength)?
            .decrypt_padded_mut::<NoPadding>(data)
            .is_ok(),
    };
    done.then_some(()).ok_or(BadLength)
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

    const PLAIN: &str = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51";
    const IV16: &str = "000102030405060708090a0b0c0d0e0f";

    fn check(cipher: IkeCipher, key: &str, iv: &str, plain: &str, expected: &str) {
        let mut data = hex(plain);
        encrypt(cipher, &hex(key), &hex(iv), &mut data).unwrap();
        assert_eq!(data, hex(expected), "{cipher:?}");
        decrypt(cipher, &hex(key), &hex(iv), &mut data).unwrap();
        assert_eq!(data, hex(plain));
    }

    /// NIST SP 800-38A F.2.1 and F.2.5 (CBC-AES128, CBC-AES256), first two blocks.
    #[test]
    fn aes_cbc_nist_vectors() {
        check(
            IkeCipher::Aes128,
            "2b7e151628aed2a6abf7158809cf4f3c",
            IV16,
            PLAIN,
            "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2",
        );
        check(
            IkeCipher::Aes256,
            "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
            IV16,
            PLAIN,
            "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d",
        );
    }

    /// 3DES-CBC computed independently with Python's `cryptography` (TripleDES, CBC):
    ///   Cipher(TripleDES(bytes(range(1, 25))), CBC(bytes(8))).encryptor()
    ///   .update(bytes.fromhex(PLAIN))
    #[test]
    fn triple_des_cbc_known_answer() {
        let key: String = (1..=24u8).map(|b| format!("{b:02x}")).collect();
        check(
            IkeCipher::TripleDes,
            &key,
            "0000000000000000",
            PLAIN,
            TDES_EXPECTED,
        );
    }

    const TDES_EXPECTED: &str = "05048e28b41621ee8bfa64ed7fcce464364b8af061cdb00e0dcf1d7ed100bf49";

    #[test]
    fn partial_blocks_and_bad_keys_are_refused() {
        let mut data = [0u8; 15];
        assert_eq!(
            encrypt(IkeCipher::Aes128, &[0; 16], &[0; 16], &mut data),
            Err(BadLength)
        );
        assert_eq!(
            decrypt(IkeCipher::TripleDes, &[0; 24], &[0; 8], &mut data[..12]),
            Err(BadLength)
        );
        let mut block = [0u8; 16];
        assert_eq!(
            encrypt(IkeCipher::Aes256, &[0; 16], &[0; 16], &mut block),
            Err(BadLength)
        );
        assert_eq!(
            decrypt(IkeCipher::Aes128, &[0; 16], &[0; 8], &mut block),
            Err(BadLength)
        );
    }
}
