//! Random bytes for ESP IVs.
//!
//! CBC needs IVs that an attacker cannot predict (RFC 2405 section 2.2, RFC 3602 section 2.1).
//! `rand`'s `thread_rng` is a ChaCha CSPRNG seeded from the operating system and reseeded
//! periodically, one per thread, so the packet path neither locks nor makes a syscall.

use rand::RngCore;

/// Fills `buf` with cryptographically secure random bytes.
pub fn fill_random(buf: &mut [u8]) {
    rand::thread_rng().fill_bytes(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_differ_and_cover_the_buffer() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        fill_random(&mut a);
        fill_random(&mut b);
        // Equal 512-bit draws, or a draw that leaves the tail zero, mean the generator
        // is not being called or not advancing.
        assert_ne!(a, b);
        assert_ne!(a[48..], [0u8; 16]);
    }

    #[test]
    fn bytes_look_uniform() {
        // Each bit of 64 KiB should be set about half the time: 262144 +- a few hundred.
        // A stuck or biased byte position moves the count by thousands.
        let mut buf = vec![0u8; 65536];
        fill_random(&mut buf);
        let ones: u32 = buf.iter().map(|b| b.count_ones()).sum();
        assert!(
            (259_000..265_300).contains(&ones),
            "{ones} one bits out of 524288"
        );
    }
}
