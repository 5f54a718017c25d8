//! IPComp's DEFLATE (RFC 3173, RFC 2394): raw deflate streams, no zlib header, and every
//! packet compressed on its own — packets may be lost or reordered, so no history may carry
//! over from one to the next. The streams are allocated once per SA and reset per packet.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The most a single packet may decompress to. An IPv4 datagram cannot be larger, so
/// anything that would produce more is a decompression bomb.
/// Output room beyond the input length that deflate's worst case needs.
const COMPRESS_SLACK: usize = 64;

pub const IPCOMP_MAX_DECOMPRESSED: usize = 65536;

/// Why an IPComp payload could not be decompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecompressError {
    /// Not a complete, valid raw-deflate stream (or bytes follow its end).
    Malformed,
    /// The stream expands past the output buffer or `IPCOMP_MAX_DECOMPRESSED`.
    TooLarge,
}

/// A per-SA deflate context.
#[derive(Debug)]
pub struct Deflate {
    compress: Compress,
    decompress: Decompress,
}

impl Deflate {
    pub fn new() -> Deflate {
        Deflate {
            // `false`: raw deflate, as RFC 2394 section 2 requires.
            compress: Compress::new(Compression::default(), false),
            decompress: Decompress::new(false),
        }
    }

    /// Compresses `input` into `out`. `Some(n)` with the stream in `out[..n]` only when it is
    /// shorter than `input`; `None` when the data would not shrink or `out` is too small, and
    /// the caller then sends the payload uncompressed (RFC 3173 section 2.2).
    pub fn compress(&mut self, input: &[u8], out: &mut [u8]) -> Option<usize> {
        // zlib-rs 0.6 can panic when told to finish a stream into a buffer smaller than the
        // input ("buf.len() must fit in remaining()"), which incompressible packets hit. So
        // it always gets room for deflate's worst case (stored blocks: input plus a few
        // bytes per 64 KiB), and the result is kept only if it is shorter than the input.
        let room = input.len().checked_add(COMPRESS_SLACK)?;
        if out.len() < room {
            return None;
        }
        self.compress.reset();
        let status = self
            .compress
            .compress(input, &mut out[..room], FlushCompress::Finish)
            .ok()?;
        if status != Status::StreamEnd {
            return None;
        }
        let n = usize::try_from(self.compress.total_out()).ok()?;
        (n < input.len()).then_some(n)
    }

    /// Decompresses one complete raw-deflate stream into `out` and returns its length. Never
    /// writes past `min(out.len(), IPCOMP_MAX_DECOMPRESSED)`: a stream that would produce
    /// more is `TooLarge`; a corrupt, truncated or trailing-garbage stream is `Malformed`.
    pub fn decompress(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, DecompressError> {
        let limit = out.len().min(IPCOMP_MAX_DECOMPRESSED);
        let out = &mut out[..limit];
        self.decompress.reset(false);
        let status = self.inflate(input, out)?;
        let produced = self.produced();
        if status == Status::StreamEnd {
            return self.whole_input(input, produced);
        }
        if produced < limit {
            // Room was left, so inflate stopped for lack of input: a truncated stream.
            return Err(DecompressError::Malformed);
        }
        // The output is full. Either only the end-of-stream marker is left, or more data:
        // let inflate try to produce one more byte to tell the two apart.
        let mut probe = [0u8; 1];
        let status = self.inflate(&input[self.consumed()..], &mut probe)?;
        if self.produced() > produced {
            Err(DecompressError::TooLarge)
        } else if status == Status::StreamEnd {
            self.whole_input(input, produced)
        } else {
            Err(DecompressError::Malformed)
        }
    }

    fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> Result<Status, DecompressError> {
        self.decompress
            .decompress(input, out, FlushDecompress::Finish)
            .map_err(|_| DecompressError::Malformed)
    }

    /// The stream ended; RFC 3173 payloads carry nothing after it.
    fn whole_input(&self, input: &[u8], produced: usize) -> Result<usize, DecompressError> {
        if self.consumed() == input.len() {
            Ok(produced)
        } else {
            Err(DecompressError::Malformed)
        }
    }

    fn produced(&self) -> usize {
        // Bounded by the output slice, so it fits a usize.
        usize::try_from(self.decompress.total_out()).unwrap_or(usize::MAX)
    }

    fn consumed(&self) -> usize {
        usize::try_from(self.decompress.total_in()).unwrap_or(usize::MAX)
    }
}

impl Default for Deflate {
    fn default() -> Deflate {
        Deflate::new()
    }
}

#[cfg(test)]
mod tests {
    use super::super::cipher::hex;
    use super::*;

    /// zlib-rs panicked on incompressible data with a short output buffer (229 of 20 000
    /// random packets); compress must never panic and never claim a gain it did not make.
    #[test]
    fn random_packets_never_panic_and_never_grow() {
        let mut d = Deflate::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut out = vec![0u8; 65536];
        for i in 0..20_000usize {
            let len = 1 + (i * 7919) % 1500;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if i % 2 == 0 { x as u8 } else { (x % 7) as u8 }
                })
                .collect();
            if let Some(n) = d.compress(&input, &mut out) {
                assert!(n < input.len());
                let mut back = vec![0u8; 2000];
                assert_eq!(d.decompress(&out[..n], &mut back), Ok(len));
                assert_eq!(back[..len], input[..]);
            }
        }
        // A buffer without the slack is refused, not overrun.
        assert_eq!(d.compress(&[0u8; 100], &mut [0u8; 100]), None);
    }

    /// Text with the repetition IP payloads typically have.
    fn compressible(len: usize) -> Vec<u8> {
        b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()
    }

    #[test]
    fn round_trip() {
        let mut deflate = Deflate::new();
        for len in [200, 500, 1400, 9000, IPCOMP_MAX_DECOMPRESSED] {
            let data = compressible(len);
            let mut packed = vec![0u8; len + 64];
            let n = deflate.compress(&data, &mut packed).expect("shrinks");
            assert!(n < len);
            let mut unpacked = vec![0u8; IPCOMP_MAX_DECOMPRESSED];
            assert_eq!(deflate.decompress(&packed[..n], &mut unpacked), Ok(len));
            assert_eq!(unpacked[..len], data[..]);
            // Exactly the right room is enough: only the end marker follows a full buffer.
            let mut exact = vec![0u8; len];
            assert_eq!(deflate.decompress(&packed[..n], &mut exact), Ok(len));
            assert_eq!(exact, data);
        }
    }

    #[test]
    fn packets_are_independent() {
        let mut sender = Deflate::new();
        let data = compressible(1000);
        let mut first = vec![0u8; 70_000];
        let mut second = vec![0u8; 70_000];
        let n1 = sender.compress(&data, &mut first).expect("shrinks");
        let n2 = sender.compress(&data, &mut second).expect("shrinks");
        // No history from the first packet leaks into the second.
        assert_eq!(first[..n1], second[..n2]);
        // A receiver that lost the first packet still reads the second.
        let mut out = vec![0u8; 2000];
        assert_eq!(
            Deflate::default().decompress(&second[..n2], &mut out),
            Ok(1000)
        );
        assert_eq!(out[..1000], data[..]);
    }

    // A raw deflate stream made by C zlib (level 6, window bits -15), another implementation.
    #[test]
    fn reads_zlib_raw_deflate() {
        let message = b"IP Payload Compression Protocol (IPComp), RFC 3173. \
            IP Payload Compression Protocol (IPComp), RFC 3173. DEFLATE, RFC 2394.";
        let stream = hex(
            "f30c500848acccc94f4c5170cecf2d284a2d2ececccf530828ca2fc94fcecf51d0f00c00896bea2804b9
             392b181b9a1beb297892a1c7c5d5cdc731c4152264646c69a20700",
        );
        let mut out = [0u8; 200];
        assert_eq!(
            Deflate::new().decompress(&stream, &mut out),
            Ok(message.len())
        );
        assert_eq!(out[..message.len()], message[..]);
    }

    // RFC 1951 section 3.2.4: a final stored block, BFINAL=1 BTYPE=00, LEN and its complement.
    #[test]
    fn reads_a_stored_block() {
        let stream = [0x01, 0x05, 0x00, 0xfa, 0xff, b'h', b'e', b'l', b'l', b'o'];
        let mut out = [0u8; 16];
        assert_eq!(Deflate::new().decompress(&stream, &mut out), Ok(5));
        assert_eq!(&out[..5], b"hello");
    }

    #[test]
    fn incompressible_data_is_not_compressed() {
        let mut deflate = Deflate::new();
        let mut noise = vec![0u8; 1400];
        super::super::rng::fill_random(&mut noise);
        let mut out = vec![0u8; 4096];
        assert_eq!(deflate.compress(&noise, &mut out), None);
        assert_eq!(deflate.compress(&[], &mut out), None);
        assert_eq!(deflate.compress(b"a", &mut out), None);
        // Compressible, but the output buffer cannot hold the result.
        assert_eq!(deflate.compress(&compressible(1400), &mut out[..8]), None);
    }

    #[test]
    fn decompression_bomb_is_too_large() {
        let mut deflate = Deflate::new();
        let zeros = vec![0u8; 1 << 20];
        let mut bomb = vec![0u8; (1 << 20) + 64];
        let n = deflate.compress(&zeros, &mut bomb).expect("zeros shrink");
        assert!(n < 2048, "1 MiB of zeros took {n} bytes");
        // A larger buffer than the limit: the limit still holds and nothing past it is written.
        let mut out = vec![0xa5u8; 100_000];
        assert_eq!(
            deflate.decompress(&bomb[..n], &mut out),
            Err(DecompressError::TooLarge)
        );
        assert!(
            out[IPCOMP_MAX_DECOMPRESSED..].iter().all(|&b| b == 0xa5),
            "wrote past the limit"
        );
        // One byte over the limit is already too much.
        let n = deflate
            .compress(&zeros[..IPCOMP_MAX_DECOMPRESSED + 1], &mut bomb)
            .expect("zeros shrink");
        assert_eq!(
            deflate.decompress(&bomb[..n], &mut out),
            Err(DecompressError::TooLarge)
        );
    }

    #[test]
    fn output_buffer_bounds_the_result() {
        let mut deflate = Deflate::new();
        let data = compressible(2000);
        let mut packed = vec![0u8; 70_000];
        let n = deflate.compress(&data, &mut packed).expect("shrinks");
        for room in [0, 1000, 1999] {
            let mut out = vec![0x77u8; 2000];
            assert_eq!(
                deflate.decompress(&packed[..n], &mut out[..room]),
                Err(DecompressError::TooLarge)
            );
            assert!(out[room..].iter().all(|&b| b == 0x77), "wrote past {room}");
            assert_eq!(
                out[..room],
                data[..room],
                "what fits is the start of the data"
            );
        }
    }

    #[test]
    fn garbage_truncation_and_trailers_are_malformed() {
        let mut deflate = Deflate::new();
        let mut out = vec![0u8; IPCOMP_MAX_DECOMPRESSED];
        // BTYPE 11 is reserved (RFC 1951 section 3.2.3).
        assert_eq!(
            deflate.decompress(&[0xff; 32], &mut out),
            Err(DecompressError::Malformed)
        );
        // Stored block whose LEN and NLEN disagree.
        assert_eq!(
            deflate.decompress(&[0x01, 0x05, 0x00, 0x00, 0x00, 1, 2, 3, 4, 5], &mut out),
            Err(DecompressError::Malformed)
        );
        assert_eq!(
            deflate.decompress(&[], &mut out),
            Err(DecompressError::Malformed)
        );
        let data = compressible(3000);
        let mut packed = vec![0u8; 70_000];
        let n = deflate.compress(&data, &mut packed).expect("shrinks");
        for cut in [1, n / 2, n - 1] {
            assert_eq!(
                deflate.decompress(&packed[..cut], &mut out),
                Err(DecompressError::Malformed),
                "cut at {cut}"
            );
        }
        packed[n] = 0;
        assert_eq!(
            deflate.decompress(&packed[..n + 1], &mut out),
            Err(DecompressError::Malformed),
            "trailing byte"
        );
        // The context is still good after all that.
        assert_eq!(deflate.decompress(&packed[..n], &mut out), Ok(3000));
        // A zlib header (78 9c) is not raw deflate: read as such, 0x78 opens a stored block
        // whose LEN and NLEN (9c03, 0000) disagree.
        let zlib_wrapped = [0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01];
        assert_eq!(
            deflate.decompress(&zlib_wrapped, &mut out),
            Err(DecompressError::Malformed)
        );
    }
}
