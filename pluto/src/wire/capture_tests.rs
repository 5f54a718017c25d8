//! Real ISAKMP messages, parsed and emitted back.
//!
//! - `WINDOWS_MM1`: Main Mode message 1 of Wireshark's test capture `ikev1-certs.pcap`
//!   (a Windows initiator: 3DES, MD5, RSA signatures, MODP1024, 28800 s, two vendor IDs),
//!   as transcribed in the sawp-ike test suite. Note its SA payload has RESERVED = 1 and
//!   proposal/transform number 0: real peers do that, so the parser must not object.
//! - `AES_MM1`: Main Mode message 1 "extracted from a Wireshark dump" in the RUB-NDS
//!   IPsec-StateMachineExtractor tests (AES-128, SHA1, auth method 4, MODP1536, 28800 s).

use super::*;

const WINDOWS_MM1: [u8; 116] = [
    0xfa, 0xfa, 0xeb, 0x49, 0x38, 0x2a, 0x76, 0x3c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, //
    0x01, 0x10, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x74, 0x0d, 0x01, 0x00,
    0x34, //
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x28, 0x00, 0x01, 0x00,
    0x01, //
    0x00, 0x00, 0x00, 0x20, 0x00, 0x01, 0x00, 0x00, 0x80, 0x0b, 0x00, 0x01, 0x80, 0x0c, 0x70,
    0x80, //
    0x80, 0x01, 0x00, 0x05, 0x80, 0x02, 0x00, 0x01, 0x80, 0x03, 0x00, 0x03, 0x80, 0x04, 0x00,
    0x02, //
    0x0d, 0x00, 0x00, 0x10, 0x4f, 0x45, 0x68, 0x79, 0x4c, 0x64, 0x41, 0x43, 0x65, 0x63, 0x66,
    0x61, //
    0x00, 0x00, 0x00, 0x14, 0xaf, 0xca, 0xd7, 0x13, 0x68, 0xa1, 0xf1, 0xc9, 0x6b, 0x86, 0x96,
    0xfc, //
    0x77, 0x57, 0x01, 0x00,
];

const AES_MM1: [u8; 84] = [
    0x63, 0x31, 0x32, 0x41, 0x4a, 0x48, 0x4e, 0x78, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, //
    0x01, 0x10, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x54, 0x00, 0x00, 0x00,
    0x38, //
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x2c, 0x01, 0x01, 0x00,
    0x01, //
    0x00, 0x00, 0x00, 0x24, 0x01, 0x01, 0x00, 0x00, 0x80, 0x01, 0x00, 0x07, 0x80, 0x0e, 0x00,
    0x80, //
    0x80, 0x02, 0x00, 0x02, 0x80, 0x04, 0x00, 0x05, 0x80, 0x03, 0x00, 0x04, 0x80, 0x0b, 0x00,
    0x01, //
    0x80, 0x0c, 0x70, 0x80,
];

/// Parses a whole plaintext message and emits it again from the parsed parts.
fn reemit(message: &[u8]) -> Vec<u8> {
    let header = Header::new_checked(message).unwrap();
    let repr = HeaderRepr::parse(&header).unwrap();
    let chain = parse_chain(repr.next_payload, header.body()).unwrap();
    let bodies: Vec<(PayloadType, Vec<u8>)> = chain
        .payloads
        .iter()
        .map(|p| match p.kind {
            PayloadType::Sa => (p.kind, SaRepr::parse(p.body).unwrap().to_bytes()),
            _ => (p.kind, p.body.to_vec()),
        })
        .collect();
    let borrowed: Vec<(PayloadType, &[u8])> = bodies.iter().map(|(k, b)| (*k, &b[..])).collect();
    let mut body = Vec::new();
    emit_chain(&borrowed, &mut body);
    let mut out = Vec::new();
    HeaderRepr {
        length: (HEADER_LEN + body.len()) as u32,
        ..repr
    }
    .emit(&mut out);
    out.extend_from_slice(&body);
    out
}

#[test]
fn windows_main_mode_1() {
    let header = Header::new_checked(&WINDOWS_MM1[..]).unwrap();
    let repr = HeaderRepr::parse(&header).unwrap();
    assert_eq!(repr.exchange, ExchangeType::IdentityProtection);
    assert_eq!(
        repr.initiator_cookie,
        [0xfa, 0xfa, 0xeb, 0x49, 0x38, 0x2a, 0x76, 0x3c]
    );
    assert_eq!((repr.message_id, repr.length), (0, 116));
    let chain = parse_chain(repr.next_payload, header.body()).unwrap();
    let kinds: Vec<_> = chain.payloads.iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        [
            PayloadType::Sa,
            PayloadType::VendorId,
            PayloadType::VendorId
        ]
    );
    assert_eq!(chain.payloads[1].body, b"OEhyLdACecfa");

    let sa = SaRepr::parse(chain.payloads[0].body).unwrap();
    assert_eq!((sa.doi, sa.proposals.len()), (DOI_IPSEC, 1));
    let p = &sa.proposals[0];
    assert_eq!(
        (p.number, p.protocol, p.spi.len()),
        (0, ProtocolId::Isakmp, 0)
    );
    let t = &p.transforms[0];
    assert_eq!(IkeTransformId::from(t.id), IkeTransformId::KeyIke);
    let attr = |a: OakleyAttr| t.attribute(a).and_then(Attribute::as_number).unwrap();
    assert_eq!(
        OakleyEncryption::from(attr(OakleyAttr::Encryption) as u16),
        OakleyEncryption::TripleDesCbc
    );
    assert_eq!(
        OakleyHash::from(attr(OakleyAttr::Hash) as u16),
        OakleyHash::Md5
    );
    assert_eq!(
        AuthMethod::from(attr(OakleyAttr::AuthMethod) as u16),
        AuthMethod::RsaSig
    );
    assert_eq!(attr(OakleyAttr::GroupDescription), 2);
    assert_eq!(attr(OakleyAttr::LifeDuration), 28_800);

    // Emitted back, only the SA payload's non-zero RESERVED byte (offset 29) differs.
    let mut expected = WINDOWS_MM1;
    expected[29] = 0;
    assert_eq!(reemit(&WINDOWS_MM1), expected);
}

#[test]
fn aes_main_mode_1() {
    assert_eq!(reemit(&AES_MM1), AES_MM1);
    let header = Header::new_checked(&AES_MM1[..]).unwrap();
    let sa = SaRepr::parse(
        parse_chain(PayloadType::Sa, header.body())
            .unwrap()
            .payloads[0]
            .body,
    )
    .unwrap();
    let t = &sa.proposals[0].transforms[0];
    assert_eq!(
        t.attribute(OakleyAttr::KeyLength)
            .and_then(Attribute::as_number),
        Some(128)
    );
}

#[test]
fn every_truncation_of_the_captures_fails_cleanly() {
    for message in [&WINDOWS_MM1[..], &AES_MM1[..]] {
        for len in 0..message.len() {
            // The Length field still claims the full message, so the header refuses it.
            assert!(
                Header::new_checked(&message[..len]).is_err(),
                "length {len}"
            );
            // With the Length field trusted blindly, the chain or SA parser must refuse.
            if len > HEADER_LEN {
                let body = &message[HEADER_LEN..len];
                let bad = parse_chain(PayloadType::Sa, body)
                    .map_err(|_| ())
                    .and_then(|c| SaRepr::parse(c.payloads[0].body).map_err(|_| ()));
                assert!(bad.is_err(), "length {len}");
            }
        }
    }
}
