//! Phase 1 keys for pre-shared-key authentication (RFC 2409 §5, §5.4, Appendix B).
//!
//! ```text
//! SKEYID   = prf(pre-shared-key, Ni_b | Nr_b)
//! SKEYID_d = prf(SKEYID, g^xy | CKY-I | CKY-R | 0)
//! SKEYID_a = prf(SKEYID, SKEYID_d | g^xy | CKY-I | CKY-R | 1)
//! SKEYID_e = prf(SKEYID, SKEYID_a | g^xy | CKY-I | CKY-R | 2)
//! HASH_I   = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b)
//! HASH_R   = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b)
//! ```

use ipsec_plugin::config::{IkeCipher, IkeHash};

use super::cipher;
use super::prf::{hash, prf};

/// The keys of one ISAKMP SA.
#[derive(Clone)]
pub struct Phase1Keys {
    pub hash: IkeHash,
    pub cipher: IkeCipher,
    pub skeyid: Vec<u8>,
    /// Keys Quick Mode's KEYMAT.
    pub skeyid_d: Vec<u8>,
    /// Authenticates Quick Mode and Informational messages.
    pub skeyid_a: Vec<u8>,
    pub skeyid_e: Vec<u8>,
    /// The message encryption key, SKEYID_e expanded or cut to the cipher's key length.
    pub enc_key: Vec<u8>,
}

// Keys never reach logs.
impl std::fmt::Debug for Phase1Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phase1Keys")
            .field("hash", &self.hash)
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

/// The inputs of the derivation, named as in RFC 2409.
#[derive(Debug, Clone, Copy)]
pub struct Phase1Input<'a> {
    pub psk: &'a [u8],
    pub ni_b: &'a [u8],
    pub nr_b: &'a [u8],
    /// g^xy, padded to the modulus length.
    pub gxy: &'a [u8],
    pub cky_i: &'a [u8; 8],
    pub cky_r: &'a [u8; 8],
}

impl Phase1Keys {
    pub fn derive(hash: IkeHash, cipher: IkeCipher, input: &Phase1Input<'_>) -> Phase1Keys {
        let Phase1Input {
            psk,
            ni_b,
            nr_b,
            gxy,
            cky_i,
            cky_r,
        } = *input;
        let skeyid = prf(hash, psk, &[ni_b, nr_b]);
        let skeyid_d = prf(hash, &skeyid, &[gxy, cky_i, cky_r, &[0]]);
        let skeyid_a = prf(hash, &skeyid, &[&skeyid_d, gxy, cky_i, cky_r, &[1]]);
        let skeyid_e = prf(hash, &skeyid, &[&skeyid_a, gxy, cky_i, cky_r, &[2]]);
        let enc_key = expand_key(hash, &skeyid_e, cipher::key_len(cipher));
        Phase1Keys {
            hash,
            cipher,
            skeyid,
            skeyid_d,
            skeyid_a,
            skeyid_e,
            enc_key,
        }
    }

    pub fn hash_i(
        &self,
        gxi: &[u8],
        gxr: &[u8],
        cky_i: &[u8; 8],
        cky_r: &[u8; 8],
        sai_b: &[u8],
        idii_b: &[u8],
    ) -> Vec<u8> {
        prf(
            self.hash,
            &self.skeyid,
            &[gxi, gxr, cky_i, cky_r, sai_b, idii_b],
        )
    }

    pub fn hash_r(
        &self,
        gxr: &[u8],
        gxi: &[u8],
        cky_r: &[u8; 8],
        cky_i: &[u8; 8],
        sai_b: &[u8],
        idir_b: &[u8],
    ) -> Vec<u8> {
        prf(
            self.hash,
            &self.skeyid,
            &[gxr, gxi, cky_r, cky_i, sai_b, idir_b],
        )
    }

    pub fn block_len(&self) -> usize {
        cipher::block_len(self.cipher)
    }
}

/// Appendix B: when SKEYID_e is shorter than the key, Ka = K1 | K2 | ... with
/// K1 = prf(SKEYID_e, 0) (one zero octet) and Kn = prf(SKEYID_e, Kn-1); otherwise the
/// first bytes of SKEYID_e.
pub fn expand_key(hash: IkeHash, skeyid_e: &[u8], len: usize) -> Vec<u8> {
    if skeyid_e.len() >= len {
        return skeyid_e[..len].to_vec();
    }
    let mut out = Vec::with_capacity(len + 32);
    let mut k = prf(hash, skeyid_e, &[&[0]]);
    while out.len() < len {
        out.extend_from_slice(&k);
        k = prf(hash, skeyid_e, &[&k]);
    }
    out.truncate(len);
    out
}

/// The IV of Main Mode message 5: hash(g^xi | g^xr), cut to the cipher block.
pub fn initial_iv(hash_alg: IkeHash, cipher_alg: IkeCipher, gxi: &[u8], gxr: &[u8]) -> Vec<u8> {
    let mut iv = hash(hash_alg, &[gxi, gxr]);
    iv.truncate(cipher::block_len(cipher_alg));
    iv
}

/// The first IV of a Quick Mode or Informational exchange: hash(last phase 1 CBC output
/// block | M-ID), cut to the cipher block.
pub fn exchange_iv(
    hash_alg: IkeHash,
    cipher_alg: IkeCipher,
    phase1_iv: &[u8],
    message_id: u32,
) -> Vec<u8> {
    let mut iv = hash(hash_alg, &[phase1_iv, &message_id.to_be_bytes()]);
    iv.truncate(cipher::block_len(cipher_alg));
    iv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn cookie(s: &str) -> [u8; 8] {
        hex(s).try_into().unwrap()
    }

    /// Recorded against real IKEv1 peers by the RUB-NDS IPsec-StateMachineExtractor project
    /// (IKEv1HandshakeSessionSecretsTest, PSK_AES128_SHA1_G2, PSK "AAAA"); it computes
    /// these with Java's JCE, an implementation independent of this one.
    #[test]
    fn rub_nds_recorded_handshakes() {
        struct Case {
            cky_i: &'static str,
            cky_r: &'static str,
            ni: &'static str,
            nr: &'static str,
            gxi: &'static str,
            gxr: &'static str,
            gxy: &'static str,
            skeyid: &'static str,
            d: &'static str,
            a: &'static str,
            e: &'static str,
            iv: &'static str,
            hash_r: &'static str,
        }
        let cases = [
            Case {
                cky_i: "7116900aa5c2880d",
                cky_r: "047ad6f8b3d0abb7",
                ni: "4654fdd74594982a",
                nr: "3673e64987b4956dbb8b933399251a5abf88f557a723b802b345f838667e9a4e",
                gxi: "75fb75db0749d4b15d9bb067b63399f790246dd7919d0c0a88fc34dd76eb9ad204e162b261914c0966a2d32d05178d4c
                      0f0ec3817692fca675678f2fd2a6869188b943e33ad44cc859a5af98d6d5332c538cff4174ee737c8624de910cc40bd9
                      53f7940d1b2d8a681cee03c85199fbe773bfa100ffea5fcb82eed25a399b0b3e",
                gxr: "2096a31ff922e5224d9d19f06a41e2d9aebe1180d4e5cbc3d6ea166e2b8810d5ddd048375025ae9bf895ad40c508cd8b
                      9398bded0d00ae7e77c1a1eb31930495106892630152a926a45037606cda4651340082fc10558786b4d8c4e6d72222d5
                      80d9a30d9c3b7fe9c348a6eadc5e79a24fe4b4364297b5ff71914ef8a6980e73",
                gxy: "19B67B23EB5F792EC9D7E11D16501CA20F2A2D0B230D525CD824DFB16867B515DC2CE9560B20B2149BFB360C1662C26A
                      5AD7FE1FAA86E66213238C80B2ED46CCB821BF5043093027EB6E32C71685A093306DF20C24190C7F93947FA21E56D10E
                      4C5B7063B2B4DC1747F1DF0BD46975D1825EEDE335E3ACBAD71A063CECF866C7",
                skeyid: "49856BC53F30DB8CE55F5BEFAE9E42431279550C",
                d: "E5D7368180A8766F09C90CC9AC15182D3CD492EE",
                a: "92DE109FE83047C95812B600820F1476CD24AA49",
                e: "DE5D24679AD21491E63E2D7173017769CD7B9BC5",
                iv: "139568606DF1337CBCBC8FA7D201C8A8",
                hash_r: "BA8C49CFD796BDC78E63FF6B5A858FC289DAD933",
            },
            Case {
                cky_i: "dc3f1d7452b2c376",
                cky_r: "5f17969262b7829b",
                ni: "18eeeee5b29ef938",
                nr: "cf6306dcc088a94c1983462f97a3128ecdefbe4a1925cffddedd526215648099",
                gxi: "a8b04c567a6bb3ab17da6a07f3f1667e6c70fb992ffe0a01dccc0877214c1936cc13a66aa97e4cd9ebfd61f6a7119859
                      bba763255b54364d37a59f969d230f877cce6d77ca843e5f0cb24e354d51a429aabf75238f5a17ef5801f3b02d9f35dc
                      d3562c35e6aeff67e9c71961f9313b6306c2c1adb428d6e70e713f894d9b7eda",
                gxr: "7947cdf90ed5f07ca325c9c9e6de95a82e5728b2e1daf44866100723ad2bed0f09e8383cf89c7645c805c2942d4aebfa
                      1b6c351a9666faa1f4988c3a557cb411a3b73fd3e094144e646ef5eb85118a61f06c6359e0f19b43a99720b49ae32215
                      5d462004be5e09140cfc843e0622c6735bc90ab730577fc311b23b25a8d283fa",
                gxy: "9FC4267E99D40EE7AA19492615990548621EBED0AE925A0810C2F4BF30A100F6B13201BAC4595281E5F2FB6FAF56F9CD
                      A292991B40B41A48CFBA7713140DE1784DBD525C0CB88A4D3B4B46D7CABD539CDD1E79EDE000420CFFE9ED8BCA0B2FE0
                      9208D9D3145F55F68CE0E3C6C479616B64F3EB451CD4CE268310BCDC766BA8A2",
                skeyid: "505E91CA4127FE30D9CAD15F6176E8C504D2D612",
                d: "571D06B00EDA6D375310377F3B3E0994A936E0F2",
                a: "1DE7B88B63DEEA0BB41374C6F9514F64B894E083",
                e: "84FAF4DF7DCEC32AC45F13A485E732632160F596",
                iv: "0E09ED33BAC3584D1D10762A9BD026C1",
                hash_r: "DDB2CF1067913E83EA6633B8B174BC8CE559B9D1",
            },
        ];
        // The initiator's SA offer and the responder's ID (ID_IPV4_ADDR 10.0.3.10).
        let sai_b = hex("00000001000000010000002c01010001000000240101000080010007800e0080800200028004000280030001800b0001800c7080");
        let idir_b = hex("010000000a00030a");
        for c in &cases {
            let (cky_i, cky_r) = (cookie(c.cky_i), cookie(c.cky_r));
            let (gxi, gxr, gxy) = (hex(c.gxi), hex(c.gxr), hex(c.gxy));
            let (ni, nr) = (hex(c.ni), hex(c.nr));
            let input = Phase1Input {
                psk: b"AAAA",
                ni_b: &ni,
                nr_b: &nr,
                gxy: &gxy,
                cky_i: &cky_i,
                cky_r: &cky_r,
            };
            let keys = Phase1Keys::derive(IkeHash::Sha1, IkeCipher::Aes128, &input);
            assert_eq!(keys.skeyid, hex(c.skeyid));
            assert_eq!(keys.skeyid_d, hex(c.d));
            assert_eq!(keys.skeyid_a, hex(c.a));
            assert_eq!(keys.skeyid_e, hex(c.e));
            assert_eq!(keys.enc_key, hex(c.e)[..16]);
            assert_eq!(
                initial_iv(IkeHash::Sha1, IkeCipher::Aes128, &gxi, &gxr),
                hex(c.iv)
            );
            assert_eq!(
                keys.hash_r(&gxr, &gxi, &cky_r, &cky_i, &sai_b, &idir_b),
                hex(c.hash_r)
            );
        }
        // Their Informational IV for M-ID d8029d42, derived from the second case's IV.
        assert_eq!(
            exchange_iv(
                IkeHash::Sha1,
                IkeCipher::Aes128,
                &hex(cases[1].iv),
                0xd802_9d42
            ),
            hex("0BF60ED4C34FEA8A12077A204DFD413F")
        );
    }

    /// Computed independently with a one-off Python script (hmac, hashlib), prf = HMAC:
    ///   psk=b"secret"; ni=bytes(range(16)); nr=bytes(range(16,48)); gxy=b"\xab"*128
    ///   ci=bytes(range(1,9)); cr=bytes(range(0x11,0x19))
    ///   skeyid=prf(psk,ni+nr); d=prf(skeyid,gxy+ci+cr+b"\0"); a=prf(skeyid,d+gxy+ci+cr+b"\1")
    ///   e=prf(skeyid,a+gxy+ci+cr+b"\2"); Ka = e[:n] or K1=prf(e,b"\0"), Kn=prf(e,Kn-1)
    #[test]
    fn python_vectors_cover_md5_sha256_and_key_expansion() {
        let ni: Vec<u8> = (0..16).collect();
        let nr: Vec<u8> = (16..48).collect();
        let gxy = [0xab; 128];
        let cky_i = [1, 2, 3, 4, 5, 6, 7, 8];
        let cky_r = [0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18];
        let input = Phase1Input {
            psk: b"secret",
            ni_b: &ni,
            nr_b: &nr,
            gxy: &gxy,
            cky_i: &cky_i,
            cky_r: &cky_r,
        };

        // MD5 (16 bytes) keying 3DES (24): expanded.
        let k = Phase1Keys::derive(IkeHash::Md5, IkeCipher::TripleDes, &input);
        assert_eq!(k.skeyid, hex("f0c4e747651887765ba945af463b38f5"));
        assert_eq!(k.skeyid_d, hex("cc61a98ae2961792cca863bf2849378a"));
        assert_eq!(k.skeyid_a, hex("e52c1c2d975d3999a9b70a61cb490028"));
        assert_eq!(k.skeyid_e, hex("e8bd1737484229913f731b558cab3733"));
        assert_eq!(
            k.enc_key,
            hex("fb67656259be2612e2752ea6d3a99fbefa6d53cfd7aa150e")
        );

        // SHA-256 (32) keying AES-256 (32): SKEYID_e as is.
        let k = Phase1Keys::derive(IkeHash::Sha256, IkeCipher::Aes256, &input);
        assert_eq!(
            k.skeyid,
            hex("b57a4b6718eb4a1b73e395fb2401e61b6330e56316fe8619ecb10d678dcd8986")
        );
        assert_eq!(
            k.skeyid_d,
            hex("8804cd5964a169fac9115d964c8a20da086ef0cd8843fa3edbc082c7a173a810")
        );
        assert_eq!(
            k.skeyid_a,
            hex("ce5fb998e1c302a674c131887ecd31f3aa56467d19b0ab05d40c61688498ce11")
        );
        assert_eq!(
            k.enc_key,
            hex("ce6977d4d85b87c15dd251255b430c0da4077a60d26b119e3a4a38f4f429127a")
        );

        // SHA-1 (20) keying AES-256 (32): expanded.
        let k = Phase1Keys::derive(IkeHash::Sha1, IkeCipher::Aes256, &input);
        assert_eq!(k.skeyid_e, hex("58bee0f996c554f0134af290b4a2afd26301b46a"));
        assert_eq!(
            k.enc_key,
            hex("fa57796382e4665bb4875bff44a76e52e954cc1f59c340cc0fb390fcb1e10ce5")
        );

        // hashlib.md5(b"\x01"*128 + b"\x02"*128).digest()[:8]
        assert_eq!(
            initial_iv(IkeHash::Md5, IkeCipher::TripleDes, &[1; 128], &[2; 128]),
            hex("63d8c8ffeeed55a0")
        );
    }
}
