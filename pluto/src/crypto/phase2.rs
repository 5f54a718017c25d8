//! Quick Mode and Informational authentication and keying material (RFC 2409 §5.5, §5.7).
//!
//! ```text
//! HASH(1) = prf(SKEYID_a, M-ID | SA | Ni [ | KE ] [ | IDci | IDcr ])
//! HASH(2) = prf(SKEYID_a, M-ID | Ni_b | SA | Nr [ | KE ] [ | IDci | IDcr ])
//! HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b)
//! Informational HASH(1) = prf(SKEYID_a, M-ID | N/D)
//! KEYMAT  = K1 | K2 | ...,  K1 = prf(SKEYID_d, [ g(qm)^xy | ] protocol | SPI | Ni_b | Nr_b)
//!                           Kn = prf(SKEYID_d, Kn-1 | [ g(qm)^xy | ] protocol | SPI | Ni_b | Nr_b)
//! ```
//!
//! "SA | Ni ..." is the message after the HASH payload, payload headers included and
//! encryption padding excluded: the caller passes those bytes as `rest`.

use super::phase1::Phase1Keys;
use super::prf::prf;

pub fn hash1(keys: &Phase1Keys, message_id: u32, rest: &[u8]) -> Vec<u8> {
    prf(
        keys.hash,
        &keys.skeyid_a,
        &[&message_id.to_be_bytes(), rest],
    )
}

pub fn hash2(keys: &Phase1Keys, message_id: u32, ni_b: &[u8], rest: &[u8]) -> Vec<u8> {
    prf(
        keys.hash,
        &keys.skeyid_a,
        &[&message_id.to_be_bytes(), ni_b, rest],
    )
}

pub fn hash3(keys: &Phase1Keys, message_id: u32, ni_b: &[u8], nr_b: &[u8]) -> Vec<u8> {
    prf(
        keys.hash,
        &keys.skeyid_a,
        &[&[0], &message_id.to_be_bytes(), ni_b, nr_b],
    )
}

/// The same formula as HASH(1); named for what it protects.
pub fn informational_hash(keys: &Phase1Keys, message_id: u32, rest: &[u8]) -> Vec<u8> {
    hash1(keys, message_id, rest)
}

/// What KEYMAT is computed for: one protocol's SA in one direction.
#[derive(Debug, Clone, Copy)]
pub struct KeymatInput<'a> {
    /// g(qm)^xy when Quick Mode did PFS.
    pub pfs_secret: Option<&'a [u8]>,
    /// PROTO_IPSEC_AH or PROTO_IPSEC_ESP.
    pub protocol: u8,
    /// The SPI the receiving end of this SA chose.
    pub spi: u32,
    pub ni_b: &'a [u8],
    pub nr_b: &'a [u8],
}

pub fn keymat(keys: &Phase1Keys, input: &KeymatInput<'_>, len: usize) -> Vec<u8> {
    let spi = input.spi.to_be_bytes();
    let seed: [&[u8]; 5] = [
        input.pfs_secret.unwrap_or(&[]),
        &[input.protocol],
        &spi,
        input.ni_b,
        input.nr_b,
    ];
    let mut out = Vec::with_capacity(len + 32);
    let mut k = prf(keys.hash, &keys.skeyid_d, &seed);
    while out.len() < len {
        out.extend_from_slice(&k);
        let mut parts: Vec<&[u8]> = vec![&k];
        parts.extend_from_slice(&seed);
        k = prf(keys.hash, &keys.skeyid_d, &parts);
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::super::phase1::Phase1Input;
    use super::*;
    use ipsec_plugin::config::{IkeCipher, IkeHash};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Values computed independently with Python's hmac/hashlib from the SHA-1 phase 1 keys
    /// of `phase1::tests::python_vectors_...` (same inputs):
    ///   mid=bytes.fromhex("0badcafe"); rest=b"\x0a\x00\x00\x08REST"
    ///   ni=bytes(range(100,120)); nr=bytes(range(200,232))
    ///   hash1=prf(a, mid+rest); hash2=prf(a, mid+ni+rest); hash3=prf(a, b"\0"+mid+ni+nr)
    ///   seed=g+bytes([proto])+spi+ni+nr; K1=prf(d, seed); Kn=prf(d, Kn-1+seed)
    #[test]
    fn python_vectors() {
        let ni: Vec<u8> = (0..16).collect();
        let nr: Vec<u8> = (16..48).collect();
        let input = Phase1Input {
            psk: b"secret",
            ni_b: &ni,
            nr_b: &nr,
            gxy: &[0xab; 128],
            cky_i: &[1, 2, 3, 4, 5, 6, 7, 8],
            cky_r: &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18],
        };
        let keys = Phase1Keys::derive(IkeHash::Sha1, IkeCipher::Aes128, &input);
        let mid = 0x0bad_cafe;
        let rest = b"\x0a\x00\x00\x08REST";
        let qni: Vec<u8> = (100..120).collect();
        let qnr: Vec<u8> = (200..232).collect();
        assert_eq!(
            hash1(&keys, mid, rest),
            hex("f8b8874687ebb1835c83bb39f8956b99b7131baa")
        );
        assert_eq!(
            hash2(&keys, mid, &qni, rest),
            hex("71f76105476a0022631ff5b24324e0e6544adfd7")
        );
        assert_eq!(
            hash3(&keys, mid, &qni, &qnr),
            hex("5c115b0e8225b9f99086337bbde15cdb9d9ec1ac")
        );

        let esp = KeymatInput {
            pfs_secret: None,
            protocol: 3,
            spi: 0x1000,
            ni_b: &qni,
            nr_b: &qnr,
        };
        assert_eq!(
            keymat(&keys, &esp, 36),
            hex("d3825910603970de4350f92c1080330e464a83d9be3f76cb3a3cdcae96bd6a5017069668")
        );
        let pfs = [0x5a; 192];
        let ah = KeymatInput {
            pfs_secret: Some(&pfs),
            protocol: 2,
            spi: 0x1001,
            ni_b: &qni,
            nr_b: &qnr,
        };
        assert_eq!(
            keymat(&keys, &ah, 32),
            hex("c1718f028ed808865fbf9d7c97d0ad989c535f8d8c08fb8c2ae043cb135a97f9")
        );
        // A shorter request is a prefix of a longer one.
        assert_eq!(keymat(&keys, &esp, 16), keymat(&keys, &esp, 36)[..16]);
    }
}
