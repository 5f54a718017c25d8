use std::net::Ipv4Addr;

use super::*;
use crate::config::{self, Keying};
use crate::crypto::{AeadAlg, CipherAlg, EspTransform, IntegAlg};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn encode(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(&mut out).unwrap();
    out
}

fn bundles(text: &str) -> Vec<Bundle> {
    let c = config::parse(text, "test.cfg");
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    c.bundles
}

/// Two IKE bundles that between them set every field of X_POLICY both ways.
fn ike_bundles() -> Vec<Bundle> {
    bundles(concat!(
        "[road]\n",
        "local = 0.0.0.0\nremote = 192.0.2.1\nmode = tunnel\n",
        "remote_subnet = 10.1.0.0/16\nprotocol = tcp\nremote_port = 443\n",
        "esp = aes128gcm16\nkeying = ike\nudp_encap = yes\n",
        "ike = aes256-sha256-modp2048,3des-md5-modp1024,aes128-sha1-modp1536\n",
        "pfs = no\nlifetime = 2h\nike_lifetime = 30m\nrekeymargin = 3m\nrekeyfuzz = 50%\nkeyingtries = 0\n",
        "\n[gw-gw]\n",
        "local = 198.51.100.7\nremote = 0.0.0.0\nmode = tunnel\n",
        "local_subnet = 10.2.0.0/24\nremote_subnet = 10.3.0.0/24\nprotocol = udp\nlocal_port = 53\n",
        "esp = 3des-md5\nah = sha256\nipcomp = deflate\nkeying = ike\nreplay_window = 4096\n",
        "\n[plain]\n",
        "local = 198.51.100.7\nremote = 203.0.113.9\nesp = null-sha1\nkeying = ike\nreplay_window = 0\n",
    ))
}

fn key(n: usize, seed: u8) -> KeyMaterial {
    KeyMaterial::new((0..n).map(|i| seed.wrapping_add(i as u8)).collect())
}

/// Every extension, each with non-default values.
fn full_ext() -> Extensions {
    let lt = |k: u64| Lifetime {
        allocations: k as u32 + 1,
        bytes: k << 40 | 5,
        addtime: k * 1000,
        usetime: k * 7,
    };
    Extensions {
        sa: Some(SaExt {
            spi: 0xdead_beef,
            replay_window: 4096,
            state: SaState::Dying,
            auth: AuthAlg::HmacSha256,
            encrypt: EncryptAlg::AesCbc,
            encrypt_bits: 256,
            compress: CompAlg::Deflate,
            flags: SA_FLAG_PFS | SA_FLAG_UDP_ENCAP,
        }),
        lifetime_current: Some(lt(1)),
        lifetime_hard: Some(lt(2)),
        lifetime_soft: Some(lt(3)),
        address_src: Some(Address {
            proto: 6,
            prefix_len: 24,
            addr: ip("10.1.2.0"),
            port: 4500,
        }),
        address_dst: Some(Address {
            proto: 17,
            prefix_len: 32,
            addr: ip("192.0.2.1"),
            port: 53,
        }),
        address_proxy: Some(Address::host(ip("203.0.113.5"))),
        key_auth: Some(key(20, 0x10)),
        key_encrypt: Some(key(36, 0x80)),
        identity_src: Some(Identity {
            kind: IdentityType::Prefix,
            id: 7,
            text: "10.1.2.0/24".into(),
        }),
        identity_dst: Some(Identity {
            kind: IdentityType::Fqdn,
            id: u64::MAX,
            text: "gw.example.net".into(),
        }),
        proposal: Some(Proposal {
            replay_window: 64,
            combs: vec![
                Comb {
                    auth: 3,
                    encrypt: 12,
                    flags: 1,
                    auth_min_bits: 160,
                    auth_max_bits: 160,
                    encrypt_min_bits: 128,
                    encrypt_max_bits: 256,
                    soft_allocations: 1,
                    hard_allocations: 2,
                    soft_bytes: 3,
                    hard_bytes: 4,
                    soft_addtime: 5,
                    hard_addtime: 6,
                    soft_usetime: 7,
                    hard_usetime: 8,
                },
                Comb {
                    auth: 2,
                    encrypt: 3,
                    ..Comb::default()
                },
            ],
        }),
        supported_auth: Some(vec![
            SupportedAlg {
                alg: AuthAlg::HmacMd5,
                iv_len: 0,
                min_bits: 128,
                max_bits: 128,
            },
            SupportedAlg {
                alg: AuthAlg::HmacSha256,
                iv_len: 0,
                min_bits: 256,
                max_bits: 256,
            },
        ]),
        supported_encrypt: Some(vec![SupportedAlg {
            alg: EncryptAlg::AesCbc,
            iv_len: 16,
            min_bits: 128,
            max_bits: 256,
        }]),
        spirange: Some(SpiRange {
            min: 0x1000,
            max: 0xffff_ffff,
        }),
        bundle: Some("gw-gw".into()),
        policy: Some(ike_bundles().remove(0)),
    }
}

fn msg(t: MsgType, sa_type: SaType, seq: u32, ext: Extensions) -> Message {
    Message {
        header: Header {
            msg_type: t,
            errno: None,
            sa_type,
            seq,
            pid: 4242,
        },
        ext,
    }
}

fn lifetime(add: u64) -> Lifetime {
    Lifetime {
        allocations: 0,
        bytes: 1 << 30,
        addtime: add,
        usetime: 0,
    }
}

/// The exchanges of docs/daemon-link.md, one message each, with who sends it.
fn protocol_messages() -> Vec<(Sender, Message)> {
    let (local, peer) = (ip("198.51.100.7"), ip("192.0.2.1"));
    let inbound = |e: Extensions| Extensions {
        address_src: Some(Address::host(peer)),
        address_dst: Some(Address::host(local)),
        bundle: Some("road".into()),
        ..e
    };
    let outbound = |e: Extensions| Extensions {
        address_src: Some(Address::host(local)),
        address_dst: Some(Address::host(peer)),
        bundle: Some("road".into()),
        ..e
    };
    let gcm = EspTransform::Aead(AeadAlg::AesGcm16_128);
    let cbc = EspTransform::Cipher {
        cipher: CipherAlg::AesCbc128,
        integ: Some(IntegAlg::HmacSha1_96),
    };
    let mut v = vec![];
    let p = Sender::Plugin;
    let d = Sender::Daemon;
    v.push((
        p,
        msg(
            MsgType::Register,
            SaType::Unspec,
            1,
            Extensions {
                supported_auth: Some(
                    IntegAlg::ALL
                        .map(|i| SupportedAlg {
                            alg: i.into(),
                            iv_len: 0,
                            min_bits: 0,
                            max_bits: 0,
                        })
                        .to_vec(),
                ),
                supported_encrypt: Some(vec![SupportedAlg {
                    alg: EncryptAlg::AesGcm16,
                    iv_len: 8,
                    min_bits: 160,
                    max_bits: 288,
                }]),
                ..Extensions::default()
            },
        ),
    ));
    v.push((d, msg(MsgType::Register, SaType::Unspec, 1, Extensions::default())));
    v.push((p, msg(MsgType::SpdFlush, SaType::Unspec, 2, Extensions::default())));
    for (i, b) in ike_bundles().into_iter().enumerate() {
        let src = (b.local == Ipv4Addr::UNSPECIFIED).then(|| Address::host(ip("203.0.113.50")));
        let ext = Extensions {
            policy: Some(b),
            address_src: src,
            ..Extensions::default()
        };
        v.push((p, msg(MsgType::SpdAdd, SaType::Unspec, 3 + i as u32, ext)));
    }
    v.push((d, msg(MsgType::SpdAdd, SaType::Unspec, 3, Extensions::default())));
    v.push((
        p,
        msg(
            MsgType::SpdDelete,
            SaType::Unspec,
            9,
            Extensions {
                bundle: Some("plain".into()),
                ..Extensions::default()
            },
        ),
    ));
    v.push((p, msg(MsgType::SpdDump, SaType::Unspec, 10, Extensions::default())));
    v.push((
        d,
        msg(
            MsgType::SpdDump,
            SaType::Unspec,
            10,
            Extensions {
                policy: Some(ike_bundles().remove(1)),
                ..Extensions::default()
            },
        ),
    ));
    v.push((d, msg(MsgType::SpdDump, SaType::Unspec, 10, Extensions::default())));
    // ACQUIRE with the held packet's selector: TCP 10.9.0.5:40000 -> 10.1.0.1:443.
    v.push((
        p,
        msg(
            MsgType::Acquire,
            SaType::Unspec,
            11,
            Extensions {
                address_src: Some(Address {
                    proto: 6,
                    prefix_len: 32,
                    addr: ip("10.9.0.5"),
                    port: 40000,
                }),
                address_dst: Some(Address {
                    proto: 6,
                    prefix_len: 32,
                    addr: ip("10.1.0.1"),
                    port: 443,
                }),
                bundle: Some("road".into()),
                ..Extensions::default()
            },
        ),
    ));
    let mut failed = msg(MsgType::Acquire, SaType::Unspec, 11, Extensions::default());
    failed.header.errno = Some(Errno::Access);
    v.push((d, failed));
    v.push((
        d,
        msg(
            MsgType::GetSpi,
            SaType::Esp,
            12,
            inbound(Extensions {
                spirange: Some(SpiRange {
                    min: DAEMON_SPI_MIN,
                    max: u32::MAX,
                }),
                ..Extensions::default()
            }),
        ),
    ));
    v.push((
        p,
        msg(
            MsgType::GetSpi,
            SaType::Esp,
            12,
            inbound(Extensions {
                sa: Some(SaExt::bare(0x1234, SaState::Larval)),
                bundle: None,
                ..Extensions::default()
            }),
        ),
    ));
    v.push((
        d,
        msg(
            MsgType::GetSpi,
            SaType::IpComp,
            13,
            inbound(Extensions {
                spirange: Some(SpiRange {
                    min: 0x1000,
                    max: 0xffff,
                }),
                ..Extensions::default()
            }),
        ),
    ));
    v.push((
        d,
        msg(
            MsgType::Update,
            SaType::Esp,
            11,
            inbound(Extensions {
                sa: Some(SaExt::esp(0x1234, gcm, 64, SA_FLAG_PFS | SA_FLAG_UDP_ENCAP)),
                lifetime_hard: Some(lifetime(7200)),
                lifetime_soft: Some(lifetime(6800)),
                key_encrypt: Some(key(20, 1)),
                identity_dst: Some(Identity {
                    kind: IdentityType::Prefix,
                    id: 0,
                    text: "192.0.2.1/32".into(),
                }),
                ..Extensions::default()
            }),
        ),
    ));
    v.push((
        d,
        msg(
            MsgType::Add,
            SaType::Esp,
            11,
            outbound(Extensions {
                sa: Some(SaExt::esp(0x5678, cbc, 64, 0)),
                lifetime_hard: Some(lifetime(7200)),
                key_auth: Some(key(20, 2)),
                key_encrypt: Some(key(16, 3)),
                ..Extensions::default()
            }),
        ),
    ));
    v.push((
        d,
        msg(
            MsgType::Add,
            SaType::Ah,
            14,
            outbound(Extensions {
                sa: Some(SaExt::ah(0x9999, IntegAlg::HmacSha256_128, 32, 0)),
                key_auth: Some(key(32, 4)),
                ..Extensions::default()
            }),
        ),
    ));
    v.push((
        d,
        msg(
            MsgType::Update,
            SaType::IpComp,
            15,
            inbound(Extensions {
                sa: Some(SaExt::ipcomp(0x1001, 0)),
                ..Extensions::default()
            }),
        ),
    ));
    v.push((
        p,
        msg(
            MsgType::Update,
            SaType::Esp,
            11,
            inbound(Extensions {
                sa: Some(SaExt::esp(0x1234, gcm, 64, 0)),
                ..Extensions::default()
            }),
        ),
    ));
    v.push((
        p,
        msg(
            MsgType::Add,
            SaType::Esp,
            11,
            outbound(Extensions {
                sa: Some(SaExt::esp(0x5678, cbc, 64, 0)),
                ..Extensions::default()
            }),
        ),
    ));
    for (kind, soft) in [("soft", true), ("hard", false)] {
        let l = Some(lifetime(if soft { 6800 } else { 7200 }));
        let ext = outbound(Extensions {
            sa: Some(SaExt::esp(0x5678, cbc, 64, 0)),
            lifetime_current: Some(lifetime(1_700_000_000)),
            lifetime_soft: if soft { l } else { None },
            lifetime_hard: if soft { None } else { l },
            ..Extensions::default()
        });
        v.push((p, msg(MsgType::Expire, SaType::Esp, 20 + kind.len() as u32, ext)));
    }
    v.push((
        d,
        msg(
            MsgType::Delete,
            SaType::Esp,
            30,
            outbound(Extensions {
                sa: Some(SaExt::bare(0x5678, SaState::Dead)),
                bundle: None,
                ..Extensions::default()
            }),
        ),
    ));
    v.push((
        p,
        msg(
            MsgType::Delete,
            SaType::Esp,
            30,
            outbound(Extensions {
                sa: Some(SaExt::bare(0x5678, SaState::Dead)),
                ..Extensions::default()
            }),
        ),
    ));
    v.push((
        d,
        msg(
            MsgType::Get,
            SaType::Esp,
            31,
            inbound(Extensions {
                sa: Some(SaExt::bare(0x1234, SaState::Mature)),
                ..Extensions::default()
            }),
        ),
    ));
    v.push((
        p,
        msg(
            MsgType::Get,
            SaType::Esp,
            31,
            inbound(Extensions {
                sa: Some(SaExt::esp(0x1234, gcm, 64, 0)),
                lifetime_current: Some(lifetime(1_700_000_000)),
                lifetime_hard: Some(lifetime(7200)),
                ..Extensions::default()
            }),
        ),
    ));
    v.push((d, msg(MsgType::Flush, SaType::Unspec, 32, Extensions::default())));
    v.push((p, msg(MsgType::Flush, SaType::Unspec, 32, Extensions::default())));
    v.push((d, msg(MsgType::Dump, SaType::Unspec, 33, Extensions::default())));
    v.push((
        p,
        msg(
            MsgType::Dump,
            SaType::Esp,
            33,
            inbound(Extensions {
                sa: Some(SaExt::esp(0x1234, gcm, 64, 0)),
                lifetime_current: Some(lifetime(1)),
                ..Extensions::default()
            }),
        ),
    ));
    v.push((p, msg(MsgType::Dump, SaType::Unspec, 33, Extensions::default())));
    v
}

#[test]
fn protocol_messages_validate_and_round_trip() {
    let msgs = protocol_messages();
    // Every message type appears, from the side the documentation says.
    for t in MsgType::ALL {
        assert!(
            msgs.iter().any(|(_, m)| m.header.msg_type == t),
            "{t} missing from the samples"
        );
    }
    for (from, m) in &msgs {
        m.validate(*from)
            .unwrap_or_else(|e| panic!("{} from {from}: {e}", m.header.msg_type));
        let bytes = encode(m);
        assert_eq!(bytes.len() % 8, 0);
        assert_eq!(message_len(&bytes), Ok(Some(bytes.len())));
        assert_eq!(&Message::decode_from(&bytes, *from).unwrap(), m);
    }
}

#[test]
fn every_message_type_round_trips_with_every_extension() {
    for t in MsgType::ALL.into_iter().chain([MsgType::Unknown(200)]) {
        for sa_type in [
            SaType::Unspec,
            SaType::Ah,
            SaType::Esp,
            SaType::IpComp,
            SaType::Unknown(77),
        ] {
            for errno in [None, Some(Errno::Invalid), Some(Errno::Unknown(250))] {
                let mut m = msg(t, sa_type, u32::MAX, full_ext());
                m.header.errno = errno;
                m.header.pid = 0x8000_0001;
                let bytes = encode(&m);
                assert_eq!(Message::decode(&bytes).unwrap(), m);
            }
        }
    }
    // Each extension alone, too (no neighbour hides a length error).
    let full = full_ext();
    for t in (1..=40).map(ExtType::from_number).filter(|t| full.has(*t)) {
        let mut m = msg(MsgType::Dump, SaType::Esp, 1, full_ext());
        let keep = |on: bool, e: &mut Extensions| {
            if !on {
                *e = Extensions::default();
            }
        };
        let mut only = Extensions::default();
        match t {
            ExtType::Sa => only.sa = m.ext.sa.take(),
            ExtType::LifetimeCurrent => only.lifetime_current = m.ext.lifetime_current.take(),
            ExtType::LifetimeHard => only.lifetime_hard = m.ext.lifetime_hard.take(),
            ExtType::LifetimeSoft => only.lifetime_soft = m.ext.lifetime_soft.take(),
            ExtType::AddressSrc => only.address_src = m.ext.address_src.take(),
            ExtType::AddressDst => only.address_dst = m.ext.address_dst.take(),
            ExtType::AddressProxy => only.address_proxy = m.ext.address_proxy.take(),
            ExtType::KeyAuth => only.key_auth = m.ext.key_auth.take(),
            ExtType::KeyEncrypt => only.key_encrypt = m.ext.key_encrypt.take(),
            ExtType::IdentitySrc => only.identity_src = m.ext.identity_src.take(),
            ExtType::IdentityDst => only.identity_dst = m.ext.identity_dst.take(),
            ExtType::Proposal => only.proposal = m.ext.proposal.take(),
            ExtType::SupportedAuth => only.supported_auth = m.ext.supported_auth.take(),
            ExtType::SupportedEncrypt => only.supported_encrypt = m.ext.supported_encrypt.take(),
            ExtType::SpiRange => only.spirange = m.ext.spirange.take(),
            ExtType::Bundle => only.bundle = m.ext.bundle.take(),
            ExtType::Policy => only.policy = m.ext.policy.take(),
            ExtType::Unknown(_) => keep(false, &mut only),
        }
        assert!(only.has(t));
        m.ext = only;
        assert_eq!(Message::decode(&encode(&m)).unwrap(), m, "{t}");
    }
}

#[test]
fn every_ike_bundle_field_round_trips() {
    for b in ike_bundles() {
        let m = msg(
            MsgType::SpdAdd,
            SaType::Unspec,
            1,
            Extensions {
                policy: Some(b.clone()),
                ..Extensions::default()
            },
        );
        assert_eq!(Message::decode(&encode(&m)).unwrap().ext.policy, Some(b));
    }
    // Every ESP transform, and AH without ESP.
    let mut b = ike_bundles().remove(2);
    for cipher in CipherAlg::ALL {
        for integ in [None, Some(IntegAlg::HmacMd5_96), Some(IntegAlg::HmacSha256_128)] {
            if cipher == CipherAlg::Null && integ.is_none() {
                continue;
            }
            b.esp = Some(EspTransform::Cipher { cipher, integ });
            let m = msg(
                MsgType::SpdAdd,
                SaType::Unspec,
                1,
                Extensions {
                    policy: Some(b.clone()),
                    ..Extensions::default()
                },
            );
            assert_eq!(Message::decode(&encode(&m)).unwrap().ext.policy.as_ref(), Some(&b));
        }
    }
    b.esp = None;
    b.ah = Some(IntegAlg::HmacSha1_96);
    let m = msg(
        MsgType::SpdAdd,
        SaType::Unspec,
        1,
        Extensions {
            policy: Some(b.clone()),
            ..Extensions::default()
        },
    );
    assert_eq!(Message::decode(&encode(&m)).unwrap().ext.policy, Some(b));
}

#[test]
fn manual_bundles_and_oversized_values_are_not_encoded() {
    let manual = bundles(concat!(
        "[m]\nlocal = 10.0.0.1\nremote = 10.0.0.2\nah = sha1\n",
        "ah_spi_out = 0x1000\nah_spi_in = 0x1001\n",
        "ah_key_out = 0x0102030405060708090a0b0c0d0e0f1011121314\n",
        "ah_key_in = 0x0102030405060708090a0b0c0d0e0f1011121315\n",
    ))
    .remove(0);
    assert!(matches!(manual.keying, Keying::Manual(_)));
    let m = msg(
        MsgType::SpdAdd,
        SaType::Unspec,
        1,
        Extensions {
            policy: Some(manual),
            ..Extensions::default()
        },
    );
    let mut out = vec![1, 2, 3];
    assert_eq!(
        m.encode(&mut out),
        Err(EncodeError::Bad {
            ext: Some(ExtType::Policy),
            field: "keying",
            reason: "only keying = ike bundles go to the daemon"
        })
    );
    let cases: Vec<(Extensions, ExtType)> = vec![
        (
            Extensions {
                bundle: Some(String::new()),
                ..Extensions::default()
            },
            ExtType::Bundle,
        ),
        (
            Extensions {
                bundle: Some("x".repeat(MAX_NAME_LEN + 1)),
                ..Extensions::default()
            },
            ExtType::Bundle,
        ),
        (
            Extensions {
                key_auth: Some(KeyMaterial::new(vec![])),
                ..Extensions::default()
            },
            ExtType::KeyAuth,
        ),
        (
            Extensions {
                key_encrypt: Some(key(8192, 0)),
                ..Extensions::default()
            },
            ExtType::KeyEncrypt,
        ),
        (
            Extensions {
                identity_src: Some(Identity {
                    kind: IdentityType::Fqdn,
                    id: 0,
                    text: "a\0b".into(),
                }),
                ..Extensions::default()
            },
            ExtType::IdentitySrc,
        ),
        (
            Extensions {
                spirange: Some(SpiRange { min: 2, max: 1 }),
                ..Extensions::default()
            },
            ExtType::SpiRange,
        ),
        (
            Extensions {
                address_dst: Some(Address {
                    prefix_len: 33,
                    ..Address::host(ip("1.2.3.4"))
                }),
                ..Extensions::default()
            },
            ExtType::AddressDst,
        ),
    ];
    for (ext, t) in cases {
        let m = msg(MsgType::Dump, SaType::Esp, 1, ext);
        match m.encode(&mut out) {
            Err(EncodeError::Bad { ext: Some(e), .. }) => assert_eq!(e, t),
            other => panic!("{t}: {other:?}"),
        }
    }
    assert_eq!(out, vec![1, 2, 3], "a refused message writes nothing");
    // Over 64 KiB: refused whole.
    let big = Proposal {
        replay_window: 0,
        combs: vec![Comb::default(); MAX_MESSAGE_LEN / 72],
    };
    let m = msg(
        MsgType::Acquire,
        SaType::Esp,
        1,
        Extensions {
            proposal: Some(big),
            ..Extensions::default()
        },
    );
    assert!(matches!(m.encode(&mut out), Err(EncodeError::TooLarge { .. })));
    let fits = Proposal {
        replay_window: 0,
        combs: vec![Comb::default(); (MAX_MESSAGE_LEN - 24) / 72],
    };
    let m = msg(
        MsgType::Acquire,
        SaType::Esp,
        1,
        Extensions {
            proposal: Some(fits),
            ..Extensions::default()
        },
    );
    out.clear();
    m.encode(&mut out).unwrap();
    assert!(out.len() <= MAX_MESSAGE_LEN);
    assert_eq!(Message::decode(&out).unwrap(), m);
}

/// Hand-checked against docs/daemon-link.md ("A worked example"): a DELETE of ESP SA
/// 0x1001 from 192.0.2.1 to 198.51.100.2, bundle "gw".
#[test]
fn golden_delete() {
    #[rustfmt::skip]
    let golden: &[u8] = &[
        // base header: version 1, DELETE (4), errno 0, ESP (3), 11 words, reserved,
        // seq 7, pid 0x1234
        0x01, 0x04, 0x00, 0x03, 0x00, 0x0b, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x12, 0x34,
        // SA: 3 words, type 1; SPI 0x1001; replay 0; MATURE, no algorithms; flags 0;
        // cipher bits 0, reserved
        0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x10, 0x01,
        0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        // ADDRESS_SRC: 2 words, type 5; proto 0, /32, reserved; AF_INET, port 0, 192.0.2.1
        0x00, 0x02, 0x00, 0x05, 0x00, 0x20, 0x00, 0x00,
        0x00, 0x02, 0x00, 0x00, 0xc0, 0x00, 0x02, 0x01,
        // ADDRESS_DST: type 6, 198.51.100.2
        0x00, 0x02, 0x00, 0x06, 0x00, 0x20, 0x00, 0x00,
        0x00, 0x02, 0x00, 0x00, 0xc6, 0x33, 0x64, 0x02,
        // X_BUNDLE: 2 words, type 32; name length 2, reserved; "gw", 6 bytes of padding
        0x00, 0x02, 0x00, 0x20, 0x00, 0x02, 0x00, 0x00,
        b'g', b'w', 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    let m = Message {
        header: Header {
            msg_type: MsgType::Delete,
            errno: None,
            sa_type: SaType::Esp,
            seq: 7,
            pid: 0x1234,
        },
        ext: Extensions {
            sa: Some(SaExt::bare(0x1001, SaState::Mature)),
            address_src: Some(Address::host(ip("192.0.2.1"))),
            address_dst: Some(Address::host(ip("198.51.100.2"))),
            bundle: Some("gw".into()),
            ..Extensions::default()
        },
    };
    assert_eq!(encode(&m), golden);
    assert_eq!(Message::decode_from(golden, Sender::Daemon).unwrap(), m);
}

/// A 20-byte HMAC-SHA1 key: 8 + 20 = 28 bytes, padded to 32 (4 words); bits 160, then
/// the key and 4 zero bytes.
#[test]
fn golden_key_padding() {
    let m = msg(
        MsgType::Dump,
        SaType::Esp,
        0,
        Extensions {
            key_auth: Some(key(20, 0xa0)),
            ..Extensions::default()
        },
    );
    let bytes = encode(&m);
    let mut want = vec![0x00, 0x04, 0x00, 0x08, 0x00, 0xa0, 0x00, 0x00];
    want.extend(0xa0..0xb4u8);
    want.extend([0, 0, 0, 0]);
    assert_eq!(&bytes[HEADER_LEN..], &want[..]);
    assert_eq!(bytes[5], 6, "16 + 32 bytes = 6 words");
}

#[test]
fn version_mismatch_is_refused_clearly() {
    let mut bytes = encode(&protocol_messages()[0].1);
    bytes[0] = 2;
    let e = Message::decode(&bytes).unwrap_err();
    assert_eq!(
        e,
        DecodeError::Version {
            ours: LINK_VERSION,
            theirs: 2
        }
    );
    let shown = e.to_string();
    assert!(
        shown.contains("version 1") && shown.contains("version 2") && shown.contains("same release"),
        "{shown}"
    );
    // Even from the first byte of a stream, and from a short message.
    assert_eq!(message_len(&[2]), Err(DecodeError::Version { ours: 1, theirs: 2 }));
    assert_eq!(Message::decode(&[0]), Err(DecodeError::Version { ours: 1, theirs: 0 }));
    assert_eq!(
        message_len(&bytes[..1]).unwrap_err(),
        DecodeError::Version { ours: 1, theirs: 2 }
    );
    bytes[0] = LINK_VERSION;
    assert_eq!(message_len(&bytes[..HEADER_LEN - 1]), Ok(None));
}

fn all_encodings() -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = protocol_messages().iter().map(|(_, m)| encode(m)).collect();
    all.push(encode(&msg(MsgType::Dump, SaType::Esp, 1, full_ext())));
    all
}

#[test]
fn every_truncation_is_an_error() {
    for bytes in all_encodings() {
        for cut in 0..bytes.len() {
            assert!(
                Message::decode(&bytes[..cut]).is_err(),
                "cut at {cut} of {}",
                bytes.len()
            );
        }
        // With the header's length patched to match: an error, or a message with fewer
        // extensions when the cut falls between two; never a panic.
        let full = Message::decode(&bytes).unwrap();
        for cut in (HEADER_LEN..bytes.len()).step_by(8) {
            let mut b = bytes[..cut].to_vec();
            b[4..6].copy_from_slice(&((cut / 8) as u16).to_be_bytes());
            if let Ok(m) = Message::decode(&b) {
                assert_ne!(m, full);
                let _ = m.validate(Sender::Plugin);
                let _ = m.validate(Sender::Daemon);
            }
        }
    }
}

#[test]
fn random_bytes_and_mutations_never_panic() {
    let mut x: u64 = 0x243f_6a88_85a3_08d3;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..20_000 {
        let len = (next() % 200) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Most random bytes stop at the version; get past it, and past the length check.
        if round % 4 != 0 && len >= HEADER_LEN {
            b[0] = LINK_VERSION;
            if round % 2 == 0 {
                b.truncate(len / 8 * 8);
                let words = (b.len() / 8) as u16;
                b[4..6].copy_from_slice(&words.to_be_bytes());
                b[6] = 0;
                b[7] = 0;
            }
        }
        if let Ok(m) = Message::decode(&b) {
            let _ = m.validate(Sender::Plugin);
            let _ = m.validate(Sender::Daemon);
        }
        let _ = message_len(&b);
    }
    // Single-byte changes of real messages reach every field decoder.
    for bytes in all_encodings() {
        for _ in 0..300 {
            let mut b = bytes.clone();
            let i = (next() as usize) % b.len();
            b[i] = next() as u8;
            if let Ok(m) = Message::decode(&b) {
                let _ = m.validate(Sender::Plugin);
                let _ = m.validate(Sender::Daemon);
                let mut again = Vec::new();
                // What decodes must encode back (the policy and names are re-checked).
                if m.encode(&mut again).is_ok() && b[0] == LINK_VERSION {
                    assert_eq!(Message::decode(&again).as_ref(), Ok(&m));
                }
            }
        }
    }
}

#[test]
fn structural_errors_name_the_extension_and_field() {
    let golden = encode(
        &protocol_messages()
            .into_iter()
            .find(|(_, m)| m.header.msg_type == MsgType::Delete)
            .unwrap()
            .1,
    );
    let patched = |at: usize, v: u8| {
        let mut b = golden.clone();
        b[at] = v;
        Message::decode(&b)
    };
    // Base header reserved; SA reserved; address family; ext length zero / too long.
    assert_eq!(
        patched(7, 1),
        Err(DecodeError::Bad {
            ext: None,
            field: "reserved",
            reason: "reserved, must be zero"
        })
    );
    assert_eq!(
        patched(16 + 23, 1),
        Err(DecodeError::Bad {
            ext: Some(ExtType::Sa),
            field: "reserved",
            reason: "reserved, must be zero"
        })
    );
    assert_eq!(
        patched(40 + 9, 10),
        Err(DecodeError::Bad {
            ext: Some(ExtType::AddressSrc),
            field: "family",
            reason: "only AF_INET (2) is carried"
        })
    );
    assert_eq!(
        patched(40 + 5, 33),
        Err(DecodeError::Bad {
            ext: Some(ExtType::AddressSrc),
            field: "prefix_len",
            reason: "more than 32"
        })
    );
    assert_eq!(
        patched(17, 0),
        Err(DecodeError::Bad {
            ext: Some(ExtType::Sa),
            field: "len",
            reason: "zero"
        })
    );
    assert_eq!(
        patched(17, 2),
        Err(DecodeError::Bad {
            ext: Some(ExtType::Sa),
            field: "len",
            reason: "wrong size for this extension"
        })
    );
    assert_eq!(
        patched(17, 200),
        Err(DecodeError::Bad {
            ext: Some(ExtType::Sa),
            field: "len",
            reason: "runs past the end of the message"
        })
    );
    assert_eq!(
        patched(5, 12),
        Err(DecodeError::Length {
            declared: 96,
            actual: golden.len()
        })
    );
    // The destination address turned into a second source address.
    assert_eq!(patched(56 + 3, 5), Err(DecodeError::Duplicate(ExtType::AddressSrc)));
    // An unknown extension type is skipped (RFC 2367 section 2.3): the message loses it.
    let m = patched(56 + 3, 99).unwrap();
    assert!(m.ext.address_dst.is_none() && m.ext.address_src.is_some());
    let e = patched(56 + 3, 99)
        .and_then(|m| m.validate(Sender::Daemon).map(|()| m))
        .unwrap_err();
    assert_eq!(
        e,
        DecodeError::Missing {
            msg: MsgType::Delete,
            from: Sender::Daemon,
            ext: ExtType::AddressDst
        }
    );
    assert_eq!(
        e.to_string(),
        "daemon link: DELETE from the daemon lacks its ADDRESS_DST extension"
    );
    // Bundle name padding must be zero.
    assert_eq!(
        patched(golden.len() - 1, 1),
        Err(DecodeError::Bad {
            ext: Some(ExtType::Bundle),
            field: "padding",
            reason: "reserved, must be zero"
        })
    );
    assert_eq!(Message::decode(&[LINK_VERSION; 8]), Err(DecodeError::Short { len: 8 }));
    let mut huge = golden.clone();
    huge.resize(MAX_MESSAGE_LEN + 8, 0);
    assert_eq!(
        Message::decode(&huge),
        Err(DecodeError::TooLarge {
            len: MAX_MESSAGE_LEN + 8
        })
    );
}

fn find(t: MsgType, from: Sender) -> Message {
    let (_, m) = protocol_messages()
        .into_iter()
        .find(|(f, m)| m.header.msg_type == t && *f == from)
        .unwrap();
    m
}

#[test]
fn validation_follows_the_table() {
    use Sender::{Daemon, Plugin};
    // Keys only in UPDATE/ADD from the daemon, sized for the SA's algorithms.
    let mut add = find(MsgType::Add, Daemon);
    assert_eq!(
        add.validate(Plugin),
        Err(DecodeError::Unexpected {
            msg: MsgType::Add,
            from: Plugin,
            ext: ExtType::KeyAuth
        })
    );
    add.ext.key_encrypt = Some(key(24, 0));
    assert_eq!(
        add.validate(Daemon),
        Err(DecodeError::Bad {
            ext: Some(ExtType::KeyEncrypt),
            field: "bits",
            reason: "wrong key size for the SA's algorithm"
        })
    );
    add.ext.key_encrypt = None;
    assert_eq!(
        add.validate(Daemon),
        Err(DecodeError::Missing {
            msg: MsgType::Add,
            from: Daemon,
            ext: ExtType::KeyEncrypt
        })
    );
    let mut update = find(MsgType::Update, Daemon);
    update.ext.key_auth = Some(key(20, 0));
    assert_eq!(
        update.validate(Daemon),
        Err(DecodeError::Unexpected {
            msg: MsgType::Update,
            from: Daemon,
            ext: ExtType::KeyAuth
        })
    );
    update.ext.key_auth = None;
    update.ext.sa.as_mut().unwrap().state = SaState::Larval;
    assert!(matches!(
        update.validate(Daemon),
        Err(DecodeError::Bad { field: "state", .. })
    ));
    update.ext.sa.as_mut().unwrap().state = SaState::Mature;
    update.header.sa_type = SaType::Ah;
    assert!(matches!(
        update.validate(Daemon),
        Err(DecodeError::Bad { field: "auth", .. })
    ));
    update.header.sa_type = SaType::Unspec;
    assert!(matches!(
        update.validate(Daemon),
        Err(DecodeError::Bad { field: "satype", .. })
    ));
    let mut dump = find(MsgType::Dump, Plugin);
    dump.ext.key_encrypt = Some(key(16, 0));
    assert!(matches!(
        dump.validate(Plugin),
        Err(DecodeError::Unexpected {
            ext: ExtType::KeyEncrypt,
            ..
        })
    ));

    // EXPIRE: exactly one of soft and hard; only from the plugin.
    let mut expire = find(MsgType::Expire, Plugin);
    expire.ext.lifetime_hard = Some(lifetime(1));
    assert!(matches!(
        expire.validate(Plugin),
        Err(DecodeError::Bad { field: "lifetimes", .. })
    ));
    assert_eq!(
        expire.validate(Daemon),
        Err(DecodeError::Unsupported {
            msg: MsgType::Expire,
            from: Daemon
        })
    );

    // GETSPI ranges stay out of the manual-keying SPIs; CPIs are 16 bits.
    let mut getspi = find(MsgType::GetSpi, Daemon);
    getspi.ext.spirange = Some(SpiRange {
        min: 0xfff,
        max: 0x2000,
    });
    assert!(matches!(
        getspi.validate(Daemon),
        Err(DecodeError::Bad {
            ext: Some(ExtType::SpiRange),
            field: "min",
            ..
        })
    ));
    getspi.ext.spirange = Some(SpiRange {
        min: 0x1000,
        max: 0x10000,
    });
    getspi.header.sa_type = SaType::IpComp;
    assert!(matches!(
        getspi.validate(Daemon),
        Err(DecodeError::Bad {
            ext: Some(ExtType::SpiRange),
            field: "max",
            ..
        })
    ));
    getspi.ext.spirange = None;
    assert!(matches!(
        getspi.validate(Daemon),
        Err(DecodeError::Missing {
            ext: ExtType::SpiRange,
            ..
        })
    ));

    // ACQUIRE from the daemon is only a failure report; an error reply needs no extension.
    let mut acquire = find(MsgType::Acquire, Daemon);
    acquire.header.errno = None;
    assert!(matches!(
        acquire.validate(Daemon),
        Err(DecodeError::Bad { field: "errno", .. })
    ));
    let err = find(MsgType::GetSpi, Daemon).error_reply(Errno::NoSpace);
    assert_eq!(err.validate(Plugin), Ok(()));
    assert_eq!(err.header.seq, 12);
    let bytes = encode(&err);
    assert_eq!(bytes[2], 28);
    assert_eq!(Message::decode(&bytes).unwrap().header.errno, Some(Errno::NoSpace));

    // Policies go plugin -> daemon in SPDADD and come back only in SPDDUMP replies.
    let spdadd = find(MsgType::SpdAdd, Plugin);
    assert!(matches!(
        spdadd.validate(Daemon),
        Err(DecodeError::Unexpected {
            ext: ExtType::Policy,
            ..
        })
    ));
    let mut missing = spdadd.reply();
    assert_eq!(
        missing.validate(Plugin),
        Err(DecodeError::Missing {
            msg: MsgType::SpdAdd,
            from: Plugin,
            ext: ExtType::Policy
        })
    );
    missing.header.msg_type = MsgType::Unknown(99);
    assert_eq!(
        missing.validate(Plugin),
        Err(DecodeError::Unsupported {
            msg: MsgType::Unknown(99),
            from: Plugin
        })
    );
}

#[test]
fn debug_never_shows_keys() {
    let m = find(MsgType::Add, Sender::Daemon);
    let shown = format!("{m:?}");
    assert!(shown.contains("KeyMaterial(128 bits, redacted)"), "{shown}");
    // key(16, 3) is 3, 4, 5, ...: no run of its bytes appears.
    assert!(!shown.contains("3, 4, 5"), "{shown}");
    assert_eq!(m.ext.key_encrypt.as_ref().unwrap().as_bytes()[..3], [3, 4, 5]);
}
