//! Transform algorithms: the ESP ciphers and AEADs, the integrity (HMAC) algorithms shared by
//! ESP and AH, IPComp's deflate, and the CSPRNG that makes IVs.
//!
//! Everything expensive (AES/DES key schedules, HMAC inner/outer states, the deflate
//! streams) is built once per SA by the `new` functions here; the per-packet calls only
//! borrow those contexts.

mod alg;
mod cipher;
mod deflate;
mod esp;
mod integrity;
mod rng;

pub use deflate::{Deflate, DecompressError, IPCOMP_MAX_DECOMPRESSED};
pub use esp::EspCrypto;
pub use integrity::Integrity;
pub use rng::fill_random;
pub use alg::*;
pub use cipher::LANES;
