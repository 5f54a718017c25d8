//! Building and opening whole ISAKMP messages: plaintext ones, and ones encrypted with
//! the phase 1 key in CBC mode with an IV chained from message to message (RFC 2409
//! Appendix B), including the HASH payload that leads Quick Mode and Informational
//! messages (RFC 2409 §5.5, §5.7).

use crate::crypto::{cipher, Phase1Keys};
use crate::wire::{
    emit_chain, parse_chain, Chain, Flags, HeaderRepr, PayloadType, HEADER_LEN, PAYLOAD_HEADER_LEN,
};

/// Header plus plaintext payloads.
pub(crate) fn plain(header: &HeaderRepr, payloads: &[(PayloadType, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    let first = emit_chain(payloads, &mut body);
    assemble(
        HeaderRepr {
            next_payload: first,
            flags: Flags(header.flags.0 & !Flags::ENCRYPTION),
            ..*header
        },
        &body,
    )
}

fn assemble(header: HeaderRepr, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    HeaderRepr {
        length: (HEADER_LEN + body.len()) as u32,
        ..header
    }
    .emit(&mut out);
    out.extend_from_slice(body);
    out
}

/// A payload chain ready to encrypt.
pub(crate) struct PlainChain {
    pub first: PayloadType,
    pub bytes: Vec<u8>,
}

pub(crate) fn chain(payloads: &[(PayloadType, &[u8])]) -> PlainChain {
    let mut bytes = Vec::new();
    let first = emit_chain(payloads, &mut bytes);
    PlainChain { first, bytes }
}

/// HASH | rest: the hash is computed over the emitted rest (payload headers included).
pub(crate) fn hashed_chain(
    rest: &[(PayloadType, &[u8])],
    hash: impl FnOnce(&[u8]) -> Vec<u8>,
) -> PlainChain {
    let tail = chain(rest);
    let h = hash(&tail.bytes);
    let mut bytes = Vec::with_capacity(PAYLOAD_HEADER_LEN + h.len() + tail.bytes.len());
    bytes.push(tail.first.into());
    bytes.push(0);
    bytes.extend_from_slice(&((PAYLOAD_HEADER_LEN + h.len()) as u16).to_be_bytes());
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&tail.bytes);
    PlainChain {
        first: PayloadType::Hash,
        bytes,
    }
}

/// Encrypts a chain under `iv`; returns the datagram and the IV for the next message in
/// the chain (the last ciphertext block). Padding is zeros up to the block.
pub(crate) fn encrypted(
    keys: &Phase1Keys,
    iv: &[u8],
    header: &HeaderRepr,
    chain: PlainChain,
) -> (Vec<u8>, Vec<u8>) {
    let block = keys.block_len();
    let mut body = chain.bytes;
    body.resize(body.len().div_ceil(block).max(1) * block, 0);
    // Lengths are right by construction; a failure here would leave the body in clear,
    // so it is replaced by zeros rather than sent.
    if cipher::encrypt(keys.cipher, &keys.enc_key, iv, &mut body).is_err() {
        body.fill(0);
    }
    let next_iv = body[body.len() - block..].to_vec();
    let header = HeaderRepr {
        next_payload: chain.first,
        flags: Flags(header.flags.0 | Flags::ENCRYPTION),
        ..*header
    };
    (assemble(header, &body), next_iv)
}

/// Decrypts a message body under `iv`; returns the plaintext and the next IV.
pub(crate) fn decrypt(
    keys: &Phase1Keys,
    iv: &[u8],
    body: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let block = keys.block_len();
    if body.is_empty() || !body.len().is_multiple_of(block) {
        return Err(format!(
            "encrypted body of {} bytes is not a whole number of {block}-byte blocks",
            body.len()
        ));
    }
    let mut plain = body.to_vec();
    cipher::decrypt(keys.cipher, &keys.enc_key, iv, &mut plain)
        .map_err(|_| "decryption failed".to_owned())?;
    Ok((plain, body[body.len() - block..].to_vec()))
}

/// A decrypted message that starts with a HASH payload.
pub(crate) struct Hashed<'a> {
    pub chain: Chain<'a>,
    pub hash: &'a [u8],
    /// The payloads after the HASH, headers included, padding excluded: what it covers.
    pub rest: &'a [u8],
}

pub(crate) fn open_hashed(first: PayloadType, plain: &[u8]) -> Result<Hashed<'_>, String> {
    let chain = parse_chain(first, plain).map_err(|e| e.to_string())?;
    let Some(hash) = chain
        .payloads
        .first()
        .filter(|p| p.kind == PayloadType::Hash)
        .copied()
    else {
        return Err("the first payload is not HASH".into());
    };
    let rest = &plain[hash.end()..chain.end];
    Ok(Hashed {
        hash: hash.body,
        rest,
        chain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Phase1Input;
    use crate::wire::{ExchangeType, Header};
    use ipsec_plugin::config::{IkeCipher, IkeHash};

    fn keys(cipher: IkeCipher) -> Phase1Keys {
        let input = Phase1Input {
            psk: b"k",
            ni_b: &[1; 16],
            nr_b: &[2; 16],
            gxy: &[3; 128],
            cky_i: &[4; 8],
            cky_r: &[5; 8],
        };
        Phase1Keys::derive(IkeHash::Sha1, cipher, &input)
    }

    fn header() -> HeaderRepr {
        HeaderRepr {
            initiator_cookie: [4; 8],
            responder_cookie: [5; 8],
            next_payload: PayloadType::None,
            exchange: ExchangeType::QuickMode,
            flags: Flags::default(),
            message_id: 77,
            length: 0,
        }
    }

    #[test]
    fn encrypt_then_open_in_every_cipher() {
        for cipher in [IkeCipher::TripleDes, IkeCipher::Aes128, IkeCipher::Aes256] {
            let k = keys(cipher);
            let iv = vec![9; k.block_len()];
            let c = hashed_chain(&[(PayloadType::Nonce, &[7; 13])], |rest| {
                crate::crypto::phase2::hash1(&k, 77, rest)
            });
            let (datagram, next_iv) = encrypted(&k, &iv, &header(), c);
            let h = Header::new_checked(&datagram[..]).unwrap();
            assert!(h.flags().encrypted());
            assert_eq!(h.body().len() % k.block_len(), 0);
            assert_eq!(next_iv, h.body()[h.body().len() - k.block_len()..]);
            let (plain, iv2) = decrypt(&k, &iv, h.body()).unwrap();
            assert_eq!(iv2, next_iv);
            let opened = open_hashed(h.next_payload(), &plain).unwrap();
            assert_eq!(
                opened.hash,
                crate::crypto::phase2::hash1(&k, 77, opened.rest)
            );
            assert_eq!(opened.chain.payloads[1].body, &[7; 13]);
            // Under the wrong IV only the first block changes: the hash no longer opens.
            let (plain, _) = decrypt(&k, &vec![0; k.block_len()], h.body()).unwrap();
            let bad = open_hashed(h.next_payload(), &plain);
            assert!(bad.is_err() || bad.unwrap().hash != opened.hash);
        }
    }

    #[test]
    fn ragged_bodies_are_refused() {
        let k = keys(IkeCipher::Aes128);
        assert!(decrypt(&k, &[0; 16], &[0; 15]).is_err());
        assert!(decrypt(&k, &[0; 16], &[]).is_err());
    }
}
