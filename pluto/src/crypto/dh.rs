//! MODP Diffie-Hellman: group 2 (RFC 2409 §6.2), groups 5 and 14 (RFC 3526 §2, §3).
//!
//! Exponentiation is crypto-bigint's constant-time Montgomery ladder; the exponent is
//! bounded to `EXPONENT_BITS`, the only thing its timing reveals.

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};
use ipsec_plugin::config::DhGroup;
use rand::RngCore;

/// Private exponent length. RFC 3526 §8 puts the strength of the 2048-bit group at
/// 110-160 bits and asks for an exponent of twice that; these groups are safe primes, so
/// a short exponent loses nothing against the subgroup attacks full-length ones avoid.
const EXPONENT_BITS: u32 = 320;

/// The primes, written as in the RFCs. Groups 5 and 14 were checked against the RFC 3526
/// formulas (2^n - 2^(n-64) - 1 + 2^64 * ([2^(n-130) pi] + k)) and found to be safe primes.
const MODP1024: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74\
    020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245\
    E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE6\
    49286651ECE65381FFFFFFFFFFFFFFFF";
const MODP1536: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74\
    020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245\
    E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE6\
    49286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD96\
    1C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA237327FFFFFFFFFFFFFFFF";
const MODP2048: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74\
    020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245\
    E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE6\
    49286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD96\
    1C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B\
    E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE5\
    15D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF";

/// The generator of all three groups.
const GENERATOR: u8 = 2;

fn prime_hex(group: DhGroup) -> &'static str {
    match group {
        DhGroup::Modp1024 => MODP1024,
        DhGroup::Modp1536 => MODP1536,
        DhGroup::Modp2048 => MODP2048,
    }
}

/// Length of public values and shared secrets: RFC 2409 §5 has KE data padded to the
/// modulus length, and g^xy enters the key derivation at that length too.
pub fn modulus_len(group: DhGroup) -> usize {
    match group {
        DhGroup::Modp1024 => 128,
        DhGroup::Modp1536 => 192,
        DhGroup::Modp2048 => 256,
    }
}

fn bits(group: DhGroup) -> u32 {
    modulus_len(group) as u32 * 8
}

pub(crate) fn prime_bytes(group: DhGroup) -> Vec<u8> {
    let hex: Vec<u8> = prime_hex(group)
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .collect();
    let nibble = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
    hex.chunks(2)
        .map(|pair| nibble(pair[0]) << 4 | nibble(pair[1]))
        .collect()
}

fn params(group: DhGroup) -> Option<BoxedMontyParams> {
    let p = BoxedUint::from_be_slice(&prime_bytes(group), bits(group)).ok()?;
    let odd: Option<Odd<BoxedUint>> = Odd::new(p).into_option();
    // The modulus is public, so variable-time setup leaks nothing.
    Some(BoxedMontyParams::new_vartime(odd?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhError {
    /// The peer's value is longer than the modulus.
    BadLength { expected: usize, got: usize },
    /// The peer's value is 0, 1, p-1 or not below p: it would force a known shared secret
    /// (RFC 2785 and NIST SP 800-56A §5.6.2.3 checks).
    OutOfRange,
}

impl std::fmt::Display for DhError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DhError::BadLength { expected, got } => {
                write!(
                    f,
                    "Diffie-Hellman public value of {got} bytes, expected {expected}"
                )
            }
            DhError::OutOfRange => {
                f.write_str("Diffie-Hellman public value out of range (1 < y < p-1)")
            }
        }
    }
}

/// One side's ephemeral Diffie-Hellman key. Used once: for one Main Mode, or one Quick
/// Mode with PFS.
pub struct DhPrivate {
    group: DhGroup,
    exponent: BoxedUint,
    public: Vec<u8>,
}

impl std::fmt::Debug for DhPrivate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhPrivate")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl DhPrivate {
    pub fn generate(group: DhGroup, rng: &mut dyn RngCore) -> DhPrivate {
        let mut x = [0u8; (EXPONENT_BITS / 8) as usize];
        rng.fill_bytes(&mut x);
        // The top bit set keeps the exponent from being accidentally short.
        x[0] |= 0x80;
        DhPrivate::from_exponent(group, &x)
    }

    /// For known-answer tests and for `generate`.
    pub(crate) fn from_exponent(group: DhGroup, x: &[u8]) -> DhPrivate {
        let exponent = BoxedUint::from_be_slice_truncated(x, EXPONENT_BITS.max(x.len() as u32 * 8));
        let generator = BoxedUint::from_be_slice_truncated(&[GENERATOR], bits(group));
        let public = modpow(group, generator, &exponent);
        DhPrivate {
            group,
            exponent,
            public,
        }
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// g^x, big-endian, padded to the modulus length (the KE payload data).
    pub fn public_value(&self) -> &[u8] {
        &self.public
    }

    /// g^xy, padded to the modulus length. Shorter peer values are accepted left-padded
    /// (some peers strip leading zeros); the range check is on the number.
    pub fn shared_secret(&self, peer: &[u8]) -> Result<Vec<u8>, DhError> {
        let len = modulus_len(self.group);
        if peer.len() > len {
            return Err(DhError::BadLength {
                expected: len,
                got: peer.len(),
            });
        }
        let mut padded = vec![0u8; len];
        padded[len - peer.len()..].copy_from_slice(peer);
        if !in_range(self.group, &padded) {
            return Err(DhError::OutOfRange);
        }
        let y = BoxedUint::from_be_slice_truncated(&padded, bits(self.group));
        Ok(modpow(self.group, y, &self.exponent))
    }
}

/// 1 < y < p-1, compared as equal-length big-endian byte strings.
fn in_range(group: DhGroup, y: &[u8]) -> bool {
    let mut p_minus_1 = prime_bytes(group);
    if let Some(last) = p_minus_1.last_mut() {
        *last -= 1; // p is odd, so no borrow
    }
    let mut one = vec![0u8; y.len()];
    if let Some(last) = one.last_mut() {
        *last = 1;
    }
    y > &one[..] && y < &p_minus_1[..]
}

fn modpow(group: DhGroup, base: BoxedUint, exponent: &BoxedUint) -> Vec<u8> {
    let len = modulus_len(group);
    let Some(params) = params(group) else {
        // The primes are constants that parse; an empty result would fail every exchange
        // loudly rather than panic.
        return vec![0; len];
    };
    let result = BoxedMontyForm::new(base, &params)
        .pow_bounded_exp(exponent, exponent.bits_precision())
        .retrieve();
    let bytes = result.to_be_bytes();
    bytes[bytes.len().saturating_sub(len)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn both_sides_agree_in_every_group() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for group in DhGroup::ALL {
            let a = DhPrivate::generate(group, &mut rng);
            let b = DhPrivate::generate(group, &mut rng);
            assert_eq!(a.public_value().len(), modulus_len(group));
            let ab = a.shared_secret(b.public_value()).unwrap();
            assert_eq!(ab, b.shared_secret(a.public_value()).unwrap());
            assert_eq!(ab.len(), modulus_len(group));
            assert_ne!(a.public_value(), b.public_value());
        }
    }

    /// Known answers computed independently with Python's pow(2, x, p) and
    /// pow(y, x, p) for the primes above, x = 0x0123...ef repeated:
    ///   p = int(MODP1024, 16); x = int("0123456789abcdef" * 4, 16)
    ///   y = pow(2, 0xfedcba9876543210, p); print(hex(pow(2, x, p)), hex(pow(y, x, p)))
    #[test]
    fn modp1024_known_answer() {
        let x = hex(&"0123456789abcdef".repeat(4));
        let a = DhPrivate::from_exponent(DhGroup::Modp1024, &x);
        assert_eq!(a.public_value(), &hex(MODP1024_G_X)[..]);
        let peer = DhPrivate::from_exponent(DhGroup::Modp1024, &hex("fedcba9876543210"));
        assert_eq!(
            a.shared_secret(peer.public_value()).unwrap(),
            hex(MODP1024_Y_X)
        );
    }

    const MODP1024_G_X: &str = "8087115ed28670eee8569b39819c1e0003bb1e0f70cadbd632353cb3c71b2c4d\
        afe38b35465b8c1fc4c8d838665b3612f2aad22ff8b5fe51da0146e651371d4c\
        c2a761e4bfa8bf5a0adff684de103f2e3b8635dad11f1ef6314701c5ba1fc47f\
        5e97c9c6d1b93db12ad2e353516a92f841105e21b0112be2d2b7d12d91261fad";
    const MODP1024_Y_X: &str = "75c578a93257e1e4a99b737fdc4a89b999d4a0663515abe3bafbe28d4c634f78\
        1ff867bcbf4e22d7eea51c9b8d63a0c8ca7295c155d880951e4250a73bab998e\
        4770d17e4cb6717319a1de15ac5d4d52c9f77f88655544181cdbc5867f7372a0\
        e092033c0b9f9cc75f62860bf90dea4754024aa7ce16c26bfedc5bfbc7a82a14";

    #[test]
    fn degenerate_peer_values_are_refused() {
        for group in DhGroup::ALL {
            let a = DhPrivate::generate(group, &mut rand::rngs::StdRng::seed_from_u64(1));
            let p = prime_bytes(group);
            let mut p_minus_1 = p.clone();
            *p_minus_1.last_mut().unwrap() -= 1;
            for bad in [
                vec![0u8],
                vec![1u8],
                vec![0u8; 5],
                p_minus_1,
                p.clone(),
                vec![0xff; p.len()],
            ] {
                assert_eq!(a.shared_secret(&bad), Err(DhError::OutOfRange));
            }
            let mut long = vec![0u8; p.len() + 1];
            *long.last_mut().unwrap() = 5;
            assert!(matches!(
                a.shared_secret(&long),
                Err(DhError::BadLength { .. })
            ));
            // 2 and p-2 are legal (if useless) values.
            assert!(a.shared_secret(&[2]).is_ok());
        }
    }

    #[test]
    fn primes_have_their_sizes() {
        for group in DhGroup::ALL {
            let p = prime_bytes(group);
            assert_eq!(p.len(), modulus_len(group));
            assert_eq!((p[0], p[p.len() - 1]), (0xff, 0xff));
        }
    }
}
