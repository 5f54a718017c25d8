//! IKEv1 cryptography: MODP Diffie-Hellman, the PRF, the phase 1 and phase 2 derivations,
//! and CBC encryption of ISAKMP messages. Stateless functions over byte strings; the
//! exchanges decide what goes in.

pub mod cipher;
pub mod dh;
pub mod phase1;
pub mod phase2;
pub mod prf;

pub use dh::{DhError, DhPrivate};
pub use phase1::{Phase1Input, Phase1Keys};
pub use phase2::KeymatInput;
