//! Manual keying: the SPIs, keys and CPIs of each direction (SPEC §2), checked against the
//! bundle's algorithms, and SPI clashes between manually keyed bundles.

use super::bundle::{Bad, Check};
use super::lexer::{Dir, Key, KeyClass};
use super::value::{hex_key, number_in, Parsed};
use super::{AhKeys, Bundle, DirectionKeys, EspKeys, Keying, SaKeys};
use crate::crypto::{AeadAlg, CipherAlg, EspTransform, IntegAlg, KeyError};

/// The well-known CPI of DEFLATE (RFC 2394), the IANA IPCOMP transform number: it needs no
/// negotiation, which is what a manual SA has.
const CPI_DEFLATE: u16 = 2;

/// Reads the manual keys for a bundle with these protocols. Keys the protocols do not use
/// are errors, so that a key meant for another algorithm is never silently ignored.
pub(super) fn sa_keys(
    c: &mut Check,
    esp: Option<EspTransform>,
    ah: Option<IntegAlg>,
    ipcomp: bool,
) -> Result<SaKeys, Bad> {
    for e in c.entries() {
        if e.key.class() == KeyClass::Manual {
            if let Some(why) = unused(e.key, esp, ah, ipcomp) {
                c.fail(e.key, why);
            }
        }
    }
    let outbound = direction(c, Dir::Out, esp, ah, ipcomp);
    let inbound = direction(c, Dir::In, esp, ah, ipcomp);
    Ok(SaKeys {
        outbound: outbound?,
        inbound: inbound?,
    })
}

fn unused(
    key: Key,
    esp: Option<EspTransform>,
    ah: Option<IntegAlg>,
    ipcomp: bool,
) -> Option<String> {
    match (key, esp) {
        (Key::EspSpi(_) | Key::EspEncKey(_) | Key::EspAuthKey(_), None) => {
            Some("the bundle has no esp".into())
        }
        (
            Key::EspEncKey(_),
            Some(EspTransform::Cipher {
                cipher: CipherAlg::Null,
                ..
            }),
        ) => Some("the null cipher takes no key".into()),
        (Key::EspAuthKey(_), Some(t @ EspTransform::Cipher { integ: None, .. })) => {
            Some(format!("esp = {t} has no integrity algorithm"))
        }
        (Key::EspAuthKey(_), Some(EspTransform::Aead(_))) => Some(
            "AES-GCM has no separate integrity key (its key and salt go in esp_enc_key_*)".into(),
        ),
        (Key::AhSpi(_) | Key::AhKey(_), _) if ah.is_none() => Some("the bundle has no ah".into()),
        (Key::IpcompCpi(_), _) if !ipcomp => Some("the bundle has no ipcomp".into()),
        _ => None,
    }
}

fn direction(
    c: &mut Check,
    dir: Dir,
    esp: Option<EspTransform>,
    ah: Option<IntegAlg>,
    ipcomp: bool,
) -> Result<DirectionKeys, Bad> {
    let esp = esp.map(|t| esp_keys(c, dir, t)).transpose();
    let ah = ah.map(|alg| ah_keys(c, dir, alg)).transpose();
    let ipcomp_cpi = match ipcomp {
        true => c
            .optional(Key::IpcompCpi(dir), cpi)
            .map(|v| Some(v.unwrap_or(CPI_DEFLATE))),
        false => Ok(None),
    };
    Ok(DirectionKeys {
        esp: esp?,
        ah: ah?,
        ipcomp_cpi: ipcomp_cpi?,
    })
}

fn esp_keys(c: &mut Check, dir: Dir, t: EspTransform) -> Result<EspKeys, Bad> {
    let needed_for = format!("by esp = {t}");
    let spi = c.required(Key::EspSpi(dir), &needed_for, spi);
    let enc_key = match cipher_name(t) {
        Some(alg) => key_material(c, Key::EspEncKey(dir), &needed_for, alg, t.enc_key_len()),
        None => Ok(Vec::new()),
    };
    let enc_key = enc_key.and_then(|k| refuse_weak_des(c, Key::EspEncKey(dir), t, k));
    let auth_key = match t {
        EspTransform::Cipher { integ: Some(i), .. } => key_material(
            c,
            Key::EspAuthKey(dir),
            &needed_for,
            integ_name(i),
            i.key_len(),
        ),
        _ => Ok(Vec::new()),
    };
    Ok(EspKeys {
        spi: spi?,
        enc_key: enc_key?,
        auth_key: auth_key?,
    })
}

fn ah_keys(c: &mut Check, dir: Dir, alg: IntegAlg) -> Result<AhKeys, Bad> {
    let needed_for = format!("by ah = {}", alg.name());
    let spi = c.required(Key::AhSpi(dir), &needed_for, spi);
    let key = key_material(
        c,
        Key::AhKey(dir),
        &needed_for,
        integ_name(alg),
        alg.key_len(),
    );
    Ok(AhKeys {
        spi: spi?,
        key: key?,
    })
}

fn key_material(
    c: &mut Check,
    key: Key,
    needed_for: &str,
    alg: &'static str,
    len: usize,
) -> Result<Vec<u8>, Bad> {
    let bytes = c.required(key, needed_for, hex_key)?;
    if bytes.len() != len {
        let mut message = KeyError::BadLength {
            alg,
            expected: len,
            got: bytes.len(),
        }
        .to_string();
        if alg.ends_with("GCM") {
            message.push_str(" (the AES key followed by the 4-byte salt, RFC 4106 section 8.1)");
        }
        c.fail(key, message);
        return Err(Bad);
    }
    Ok(bytes)
}

/// The SPI of an SA: 0 and 1-255 are reserved (RFC 4303 section 2.1).
fn spi(s: &str) -> Parsed<u32> {
    match number_in(s, 0, u64::from(u32::MAX))? {
        0 => Err("SPI 0 is reserved (RFC 4303 section 2.1: it stands for no SA)".into()),
        n @ 1..=255 => Err(format!(
            "SPI {n} is reserved: SPIs 1-255 are kept by IANA (RFC 4303 section 2.1)"
        )),
        n => Ok(n as u32), // at most u32::MAX
    }
}

/// Any CPI but 0; the range is not split further (see docs/ipsec-cfg.md).
fn cpi(s: &str) -> Parsed<u16> {
    number_in(s, 1, 65535).map(|n| n as u16) // at most 65535
}

fn cipher_name(t: EspTransform) -> Option<&'static str> {
    match t {
        EspTransform::Cipher { cipher, .. } => match cipher {
            CipherAlg::Null => None,
            CipherAlg::DesCbc => Some("DES"),
            CipherAlg::TripleDesCbc => Some("3DES"),
            CipherAlg::AesCbc128 => Some("AES-128"),
            CipherAlg::AesCbc192 => Some("AES-192"),
            CipherAlg::AesCbc256 => Some("AES-256"),
        },
        EspTransform::Aead(AeadAlg::AesGcm16_128) => Some("AES-128-GCM"),
        EspTransform::Aead(AeadAlg::AesGcm16_256) => Some("AES-256-GCM"),
    }
}

fn integ_name(i: IntegAlg) -> &'static str {
    match i {
        IntegAlg::HmacMd5_96 => "HMAC-MD5",
        IntegAlg::HmacSha1_96 => "HMAC-SHA1",
        IntegAlg::HmacSha256_128 => "HMAC-SHA256",
    }
}

/// The 4 weak and 12 semi-weak DES keys (FIPS 74; NIST SP 800-67 Rev. 2 section 3.3.2),
/// with their parity bits, which DES ignores.
const DES_WEAK_KEYS: [u64; 16] = [
    0x0101_0101_0101_0101,
    0xFEFE_FEFE_FEFE_FEFE,
    0xE0E0_E0E0_F1F1_F1F1,
    0x1F1F_1F1F_0E0E_0E0E,
    0x01FE_01FE_01FE_01FE,
    0xFE01_FE01_FE01_FE01,
    0x1FE0_1FE0_0EF1_0EF1,
    0xE01F_E01F_F10E_F10E,
    0x01E0_01E0_01F1_01F1,
    0xE001_E001_F101_F101,
    0x1FFE_1FFE_0EFE_0EFE,
    0xFE1F_FE1F_FE0E_FE0E,
    0x011F_011F_010E_010E,
    0x1F01_1F01_0E01_0E01,
    0xE0FE_E0FE_F1FE_F1FE,
    0xFEE0_FEE0_FEF1_FEF1,
];

/// One 8-byte DES key with its parity bits cleared.
fn des_key_bits(key: &[u8]) -> u64 {
    key.iter().fold(0, |acc, &b| acc << 8 | u64::from(b & 0xFE))
}

/// DES weak and semi-weak keys are refused (see RFC 2405 on weak keys); so is a 3DES key
/// whose K1 = K2 or K2 = K3, which makes 3DES single DES (RFC 2451: implementations MUST
/// reject it).
fn refuse_weak_des(
    c: &mut Check,
    key: Key,
    t: EspTransform,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, Bad> {
    let EspTransform::Cipher { cipher, .. } = t else {
        return Ok(bytes);
    };
    let weak = match cipher {
        CipherAlg::DesCbc => DES_WEAK_KEYS
            .iter()
            .any(|&w| w & 0xFEFE_FEFE_FEFE_FEFE == des_key_bits(&bytes)),
        CipherAlg::TripleDesCbc => {
            let k: Vec<u64> = bytes.chunks(8).map(des_key_bits).collect();
            k.len() == 3 && (k[0] == k[1] || k[1] == k[2])
        }
        _ => false,
    };
    if weak {
        let alg = if cipher == CipherAlg::DesCbc {
            "DES"
        } else {
            "3DES"
        };
        let why = match cipher {
            CipherAlg::DesCbc => "a weak or semi-weak DES key",
            _ => "K1 = K2 or K2 = K3 would make it single DES",
        };
        c.fail(key, format!("{} ({why})", KeyError::WeakKey { alg }));
        return Err(Bad);
    }
    Ok(bytes)
}

/// Inbound SAs are found by (destination, protocol, SPI), so two manual bundles may not
/// share an inbound SPI of one protocol at the same local address (0.0.0.0, the dynamic
/// address, may be any); likewise outbound towards one peer, or the peer could not tell
/// them apart.
pub(super) fn spi_clashes(c: &mut Check, bundle: &Bundle, accepted: &[Bundle]) {
    let Keying::Manual(mine) = &bundle.keying else {
        return;
    };
    for other in accepted {
        let Keying::Manual(theirs) = &other.keying else {
            continue;
        };
        let same_local = bundle.local == other.local
            || bundle.local.is_unspecified()
            || other.local.is_unspecified();
        let same_remote = bundle.remote == other.remote;
        let esp_spi = |d: &DirectionKeys| d.esp.as_ref().map(|k| k.spi);
        let ah_spi = |d: &DirectionKeys| d.ah.as_ref().map(|k| k.spi);
        let pairs = [
            (
                Key::EspSpi(Dir::In),
                same_local,
                esp_spi(&mine.inbound),
                esp_spi(&theirs.inbound),
            ),
            (
                Key::AhSpi(Dir::In),
                same_local,
                ah_spi(&mine.inbound),
                ah_spi(&theirs.inbound),
            ),
            (
                Key::EspSpi(Dir::Out),
                same_remote,
                esp_spi(&mine.outbound),
                esp_spi(&theirs.outbound),
            ),
            (
                Key::AhSpi(Dir::Out),
                same_remote,
                ah_spi(&mine.outbound),
                ah_spi(&theirs.outbound),
            ),
        ];
        for (key, same_destination, spi, other_spi) in pairs {
            if let (true, Some(spi)) = (same_destination, spi) {
                if other_spi == Some(spi) {
                    c.fail(
                        key,
                        format!(
                            "SPI {spi:#x} is already used by bundle [{}] (line {}) towards the same address",
                            other.name, other.line
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spi_ranges() {
        assert!(spi("0").unwrap_err().contains("SPI 0 is reserved"));
        assert!(spi("255").unwrap_err().contains("1-255"));
        assert_eq!(spi("256"), Ok(256));
        assert_eq!(spi("0xFFFFFFFF"), Ok(u32::MAX));
        assert!(spi("0x100000000").unwrap_err().contains("out of range"));
    }

    #[test]
    fn cpi_range() {
        assert!(cpi("0").is_err());
        assert_eq!(cpi("1"), Ok(1));
        assert_eq!(cpi("0xFFFF"), Ok(65535));
        assert!(cpi("65536").is_err());
    }

    #[test]
    fn des_weak_keys_ignore_parity() {
        // 0x0000000000000000 is the weak key 0x0101010101010101 without parity bits.
        assert_eq!(des_key_bits(&[0; 8]), des_key_bits(&[1; 8]));
        assert!(DES_WEAK_KEYS
            .iter()
            .any(|&w| w & 0xFEFE_FEFE_FEFE_FEFE == des_key_bits(&[0; 8])));
        assert!(!DES_WEAK_KEYS.iter().any(|&w| w & 0xFEFE_FEFE_FEFE_FEFE
            == des_key_bits(&[0x13, 0x34, 0x57, 0x79, 0x9B, 0xBC, 0xDF, 0xF1])));
    }
}
