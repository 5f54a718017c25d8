//! Whole-file tests of the ipsec.cfg parser: samples to exact bundles, one test per error
//! rule (file, line, key), defaults, warnings, and inputs that must not panic.

use std::net::Ipv4Addr;

use super::*;
use crate::crypto::{AeadAlg, CipherAlg};

const K16_A: &str = "00112233445566778899aabbccddeeff";
const K16_B: &str = "ffeeddccbbaa99887766554433221100";
const K20_A: &str = "0102030405060708090a0b0c0d0e0f1011121314";
const K20_B: &str = "1112131415161718191a1b1c1d1e1f2021222324";
const K32_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const K32_B: &str = "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";

/// Decodes test hex independently of the parser's own decoder.
fn bytes(hex: &str) -> Vec<u8> {
    let digits: Vec<u8> = hex.bytes().filter(|&b| b != b'_').collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

fn aes128_sha1() -> EspTransform {
    EspTransform::Cipher {
        cipher: CipherAlg::AesCbc128,
        integ: Some(IntegAlg::HmacSha1_96),
    }
}

/// (line, key, message) of every error, for exact comparisons.
fn errors(config: &Config) -> Vec<(u32, Option<&str>, &str)> {
    config
        .errors
        .iter()
        .map(|d| (d.line, d.key.as_deref(), d.message.as_str()))
        .collect()
}

/// The one error of a config that must have exactly one; the bundle it names is not activated.
fn one_error(text: &str) -> (u32, Option<String>, String) {
    let config = parse(text, "ipsec.cfg");
    assert_eq!(config.errors.len(), 1, "{text}\n{:#?}", config.errors);
    let d = &config.errors[0];
    assert!(
        config
            .bundles
            .iter()
            .all(|b| Some(&b.name) != d.bundle.as_ref()),
        "{text}"
    );
    assert_eq!(d.file, "ipsec.cfg");
    (d.line, d.key.clone(), d.message.clone())
}

fn assert_error(text: &str, line: u32, key: Option<&str>, needle: &str) {
    let (l, k, m) = one_error(text);
    assert_eq!((l, k.as_deref()), (line, key), "{text}\n{m}");
    assert!(m.contains(needle), "{text}\nexpected {needle:?} in {m:?}");
}

/// A valid manual bundle on lines 1-10; `changes` replace (Some) or comment out (None) a
/// base line without moving the others, `extra` lines start at line 11.
fn manual(changes: &[(&str, Option<&str>)], extra: &[&str]) -> String {
    let base = [
        ("[t]", ""),
        ("local", "192.0.2.1"),
        ("remote", "192.0.2.2"),
        ("esp", "aes128-sha1"),
        ("esp_spi_out", "0x1001"),
        ("esp_spi_in", "0x1002"),
        ("esp_enc_key_out", &format!("0x{K16_A}")),
        ("esp_enc_key_in", &format!("0x{K16_B}")),
        ("esp_auth_key_out", &format!("0x{K20_A}")),
        ("esp_auth_key_in", &format!("0x{K20_B}")),
    ]
    .map(|(k, v)| (k, v.to_owned()));
    build(&base, changes, extra)
}

/// A valid IKE bundle on lines 1-5; `extra` lines start at line 6.
fn ike(changes: &[(&str, Option<&str>)], extra: &[&str]) -> String {
    let base = [
        ("[t]", ""),
        ("local", "192.0.2.1"),
        ("remote", "192.0.2.2"),
        ("esp", "aes128-sha1"),
        ("keying", "ike"),
    ]
    .map(|(k, v)| (k, v.to_owned()));
    build(&base, changes, extra)
}

fn build(base: &[(&str, String)], changes: &[(&str, Option<&str>)], extra: &[&str]) -> String {
    let mut text = String::new();
    for (key, value) in base {
        let line = match changes.iter().find(|(k, _)| k == key) {
            Some((_, Some(v))) => format!("{key} = {v}"),
            Some((_, None)) => format!("; no {key}"),
            None if value.is_empty() => key.to_string(),
            None => format!("{key} = {value}"),
        };
        text.push_str(&line);
        text.push('\n');
    }
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    text
}

const TRANSPORT_SAMPLE: &str = "\
; host A <-> host B, everything spelled out
[a-to-b]
local = 192.0.2.1
remote = 192.0.2.2            ; host B
mode = transport
protocol = tcp
local_port = any
remote_port = 22
esp = aes128-sha256
ah = sha1
ipcomp = deflate
keying = manual
replay_window = 32
esp_spi_out = 0x1001
esp_spi_in = 4098
esp_enc_key_out = 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff
esp_enc_key_in = 0xffeeddccbbaa99887766554433221100
esp_auth_key_out = 0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
esp_auth_key_in = 0x202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f
ah_spi_out = 0x2001
ah_spi_in = 0x2002
ah_key_out = 0x0102030405060708090a0b0c0d0e0f1011121314
ah_key_in = 0x1112131415161718191a1b1c1d1e1f2021222324
ipcomp_cpi_out = 2
ipcomp_cpi_in = 0x9000
";

#[test]
fn transport_sample_parses_to_the_exact_bundle() {
    let config = parse(TRANSPORT_SAMPLE, "ipsec.cfg");
    assert!(config.errors.is_empty(), "{:#?}", config.errors);
    assert!(config.warnings.is_empty(), "{:#?}", config.warnings);
    let expected = Bundle {
        name: "a-to-b".into(),
        line: 2,
        local: ip(192, 0, 2, 1),
        remote: ip(192, 0, 2, 2),
        mode: Mode::Transport,
        local_subnet: None,
        remote_subnet: None,
        protocol: Some(6),
        local_port: None,
        remote_port: Some(22),
        esp: Some(EspTransform::Cipher {
            cipher: CipherAlg::AesCbc128,
            integ: Some(IntegAlg::HmacSha256_128),
        }),
        ah: Some(IntegAlg::HmacSha1_96),
        ipcomp: true,
        keying: Keying::Manual(SaKeys {
            outbound: DirectionKeys {
                esp: Some(EspKeys {
                    spi: 0x1001,
                    enc_key: bytes(K16_A),
                    auth_key: bytes(K32_A),
                }),
                ah: Some(AhKeys {
                    spi: 0x2001,
                    key: bytes(K20_A),
                }),
                ipcomp_cpi: Some(2),
            },
            inbound: DirectionKeys {
                esp: Some(EspKeys {
                    spi: 4098,
                    enc_key: bytes(K16_B),
                    auth_key: bytes(K32_B),
                }),
                ah: Some(AhKeys {
                    spi: 0x2002,
                    key: bytes(K20_B),
                }),
                ipcomp_cpi: Some(0x9000),
            },
        }),
        replay_window: 32,
        udp_encap: false,
    };
    assert_eq!(config.bundles, [expected]);
}

const TUNNEL_SAMPLE: &str = "\
[Site-A to Site-B]
local = 0.0.0.0                   ; the address the host reports at connect
remote = 198.51.100.7
mode = tunnel
local_subnet = 10.1.0.0/16
remote_subnet = 10.2.0.0/24
protocol = udp
local_port = 5060
esp = aes256gcm16
keying = ike
ike = aes256-sha256-modp2048, aes128-sha1-modp1536
pfs = no
lifetime = 2h
ike_lifetime = 30m
rekeymargin = 300s
rekeyfuzz = 50%
keyingtries = 0
replay_window = 128
";

#[test]
fn tunnel_sample_parses_to_the_exact_bundle() {
    let config = parse(TUNNEL_SAMPLE, "ipsec.cfg");
    assert!(config.errors.is_empty(), "{:#?}", config.errors);
    assert!(config.warnings.is_empty(), "{:#?}", config.warnings);
    let expected = Bundle {
        name: "Site-A to Site-B".into(),
        line: 1,
        local: Ipv4Addr::UNSPECIFIED,
        remote: ip(198, 51, 100, 7),
        mode: Mode::Tunnel,
        local_subnet: Some(Cidr {
            addr: ip(10, 1, 0, 0),
            prefix: 16,
        }),
        remote_subnet: Some(Cidr {
            addr: ip(10, 2, 0, 0),
            prefix: 24,
        }),
        protocol: Some(17),
        local_port: Some(5060),
        remote_port: None,
        esp: Some(EspTransform::Aead(AeadAlg::AesGcm16_256)),
        ah: None,
        ipcomp: false,
        keying: Keying::Ike(IkeParams {
            proposals: vec![
                IkeProposal {
                    cipher: IkeCipher::Aes256,
                    hash: IkeHash::Sha256,
                    group: DhGroup::Modp2048,
                },
                IkeProposal {
                    cipher: IkeCipher::Aes128,
                    hash: IkeHash::Sha1,
                    group: DhGroup::Modp1536,
                },
            ],
            pfs: false,
            lifetime_secs: 7200,
            ike_lifetime_secs: 1800,
            rekeymargin_secs: 300,
            rekeyfuzz_percent: 50,
            keyingtries: 0,
        }),
        replay_window: 128,
        udp_encap: false,
    };
    assert_eq!(config.bundles, [expected]);
}

#[test]
fn defaults_of_a_minimal_manual_bundle() {
    let config = parse(&manual(&[], &[]), "ipsec.cfg");
    assert!(config.errors.is_empty(), "{:#?}", config.errors);
    let b = &config.bundles[0];
    assert_eq!(
        (b.mode, b.local_subnet, b.remote_subnet),
        (Mode::Transport, None, None)
    );
    assert_eq!(
        (b.protocol, b.local_port, b.remote_port),
        (None, None, None)
    );
    assert_eq!(
        (b.esp, b.ah, b.ipcomp, b.replay_window),
        (Some(aes128_sha1()), None, false, 0)
    );
    let Keying::Manual(keys) = &b.keying else {
        panic!("keying = manual is the default")
    };
    assert_eq!(
        keys.outbound.esp,
        Some(EspKeys {
            spi: 0x1001,
            enc_key: bytes(K16_A),
            auth_key: bytes(K20_A)
        })
    );
    assert_eq!(
        keys.inbound.esp,
        Some(EspKeys {
            spi: 0x1002,
            enc_key: bytes(K16_B),
            auth_key: bytes(K20_B)
        })
    );
    assert_eq!((&keys.outbound.ah, keys.outbound.ipcomp_cpi), (&None, None));
}

#[test]
fn defaults_of_a_minimal_ike_bundle() {
    let config = parse(&ike(&[], &[]), "ipsec.cfg");
    assert!(
        config.errors.is_empty() && config.warnings.is_empty(),
        "{config:#?}"
    );
    let b = &config.bundles[0];
    assert_eq!(b.keying, Keying::Ike(IkeParams::default()));
    assert_eq!(b.replay_window, 64);
}

#[test]
fn ipcomp_cpis_default_to_the_well_known_deflate_cpi() {
    let text = "[c]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nipcomp = deflate\n";
    let config = parse(text, "ipsec.cfg");
    assert!(config.errors.is_empty(), "{:#?}", config.errors);
    let Keying::Manual(keys) = &config.bundles[0].keying else {
        panic!()
    };
    assert_eq!(
        (keys.outbound.ipcomp_cpi, keys.inbound.ipcomp_cpi),
        (Some(2), Some(2))
    );
    assert_eq!((&keys.outbound.esp, &keys.inbound.ah), (&None, &None));
}

#[test]
fn null_cipher_and_no_integrity_keys_are_empty() {
    let text = format!(
        "[n]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nesp = null-sha1\nesp_spi_out = 0x1001\nesp_spi_in = 0x1002\n\
         esp_auth_key_out = 0x{K20_A}\nesp_auth_key_in = 0x{K20_B}\n\
         [e]\nlocal = 192.0.2.1\nremote = 192.0.2.3\nesp = aes128-none\nah = sha1\nesp_spi_out = 0x1001\nesp_spi_in = 0x1003\n\
         esp_enc_key_out = 0x{K16_A}\nesp_enc_key_in = 0x{K16_B}\n\
         ah_spi_out = 0x1001\nah_spi_in = 0x1002\nah_key_out = 0x{K20_A}\nah_key_in = 0x{K20_B}\n"
    );
    let config = parse(&text, "ipsec.cfg");
    assert!(config.errors.is_empty(), "{:#?}", config.errors);
    let Keying::Manual(n) = &config.bundles[0].keying else {
        panic!()
    };
    assert_eq!(n.outbound.esp.as_ref().map(|k| k.enc_key.len()), Some(0));
    let Keying::Manual(e) = &config.bundles[1].keying else {
        panic!()
    };
    assert_eq!(e.inbound.esp.as_ref().map(|k| k.auth_key.len()), Some(0));
}

#[test]
fn keys_and_keywords_are_case_insensitive() {
    let text = format!(
        "[Mixed Case]\nLOCAL = 192.0.2.1\nRemote = 192.0.2.2\nMODE = TUNNEL\nProtocol = TCP\nLocal_Port = ANY\n\
         ESP = AES128-SHA1\nAH = SHA256\nIPCOMP = DEFLATE\nKEYING = MANUAL\n\
         ESP_SPI_OUT = 0X1001\nesp_spi_IN = 0x1002\nesp_enc_key_out = 0X{}\nesp_enc_key_in = 0x{K16_B}\n\
         esp_auth_key_out = 0x{K20_A}\nesp_auth_key_in = 0x{K20_B}\n\
         AH_SPI_OUT = 4097\nah_spi_in = 4098\nah_key_out = 0x{K32_A}\nah_key_in = 0x{K32_B}\n\
         [ike]\nlocal = 192.0.2.1\nremote = 0.0.0.0\nesp = aes128-sha1\nkeying = IKE\nIKE = AES128-SHA1-MODP2048\nPFS = YES\nlifetime = 1H\n",
        K16_A.to_ascii_uppercase()
    );
    let config = parse(&text, "ipsec.cfg");
    assert!(config.errors.is_empty(), "{:#?}", config.errors);
    let b = &config.bundles[0];
    assert_eq!(b.name, "Mixed Case");
    assert_eq!(
        (b.mode, b.protocol, b.local_port),
        (Mode::Tunnel, Some(6), None)
    );
    assert_eq!(
        (b.esp, b.ah, b.ipcomp),
        (Some(aes128_sha1()), Some(IntegAlg::HmacSha256_128), true)
    );
    let Keying::Manual(keys) = &b.keying else {
        panic!()
    };
    assert_eq!(
        keys.outbound.esp.as_ref().map(|k| k.enc_key.clone()),
        Some(bytes(K16_A))
    );
    let Keying::Ike(p) = &config.bundles[1].keying else {
        panic!()
    };
    assert_eq!((p.proposals.len(), p.pfs, p.lifetime_secs), (1, true, 3600));
}

#[test]
fn hex_keys_take_underscores_anywhere() {
    let spaced = "0x_0011_2233_4455_6677_8899_aabb_ccdd_eeff_";
    let config = parse(
        &manual(&[("esp_enc_key_out", Some(spaced))], &[]),
        "ipsec.cfg",
    );
    assert!(config.errors.is_empty(), "{:#?}", config.errors);
    let Keying::Manual(keys) = &config.bundles[0].keying else {
        panic!()
    };
    assert_eq!(
        keys.outbound.esp.as_ref().map(|k| k.enc_key.clone()),
        Some(bytes(K16_A))
    );
}

#[test]
fn bad_bundle_is_left_out_and_the_others_keep_file_order() {
    let good_a = manual(&[], &[]).replace("[t]", "[first]");
    let bad = manual(&[("esp_enc_key_out", Some("0x0011"))], &[])
        .replace("[t]", "[broken]")
        .replace("192.0.2.2", "192.0.2.3");
    let good_b = ike(&[], &[])
        .replace("[t]", "[last]")
        .replace("192.0.2.2", "192.0.2.4");
    let config = parse(&format!("{good_a}{bad}{good_b}"), "ipsec.cfg");
    let names: Vec<&str> = config.bundles.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["first", "last"]);
    assert_eq!(
        errors(&config),
        [(
            17,
            Some("esp_enc_key_out"),
            "AES-128 needs a 16-byte key, got 2 bytes"
        )]
    );
    assert_eq!(config.errors[0].bundle.as_deref(), Some("broken"));
    assert_eq!(config.bundles[1].line, 21);
}

#[test]
fn every_error_of_a_file_is_reported_in_line_order() {
    let text = "\
[one]
local = 192.0.2.1
remote = 192.0.2.2
mode = sideways
esp = aes128-sha1
bogus = 1
[two]
local = 300.1.1.1
remote = 192.0.2.9
esp = aes128-md4
";
    let config = parse(text, "ipsec.cfg");
    let got: Vec<(u32, Option<&str>)> = config
        .errors
        .iter()
        .map(|d| (d.line, d.key.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (1, Some("esp_spi_out")),
            (1, Some("esp_enc_key_out")),
            (1, Some("esp_auth_key_out")),
            (1, Some("esp_spi_in")),
            (1, Some("esp_enc_key_in")),
            (1, Some("esp_auth_key_in")),
            (4, Some("mode")),
            (6, Some("bogus")),
            (8, Some("local")),
            (10, Some("esp")),
        ]
    );
    assert!(config.bundles.is_empty());
}

#[test]
fn diagnostics_display_file_line_key_message() {
    let config = parse(
        &manual(
            &[("esp_enc_key_out", Some("0x00112233445566778899aabbccddee"))],
            &[],
        ),
        "ipsec.cfg",
    );
    assert_eq!(
        config.errors[0].to_string(),
        "ipsec.cfg:7: esp_enc_key_out: AES-128 needs a 16-byte key, got 15 bytes"
    );
    let config = parse(
        &format!("{}{}", manual(&[], &[]), manual(&[], &[])),
        "etc/ipsec.cfg",
    );
    assert_eq!(config.errors[0].to_string(), "etc/ipsec.cfg:11: duplicate section name (first at line 1; names are compared ignoring case)");
    let whole = Diagnostic {
        file: "f".into(),
        line: 0,
        key: None,
        bundle: None,
        message: "too big".into(),
    };
    assert_eq!(whole.to_string(), "f: too big");
}

// --- one test per error rule: file, line and key ---

#[test]
fn lexical_errors() {
    assert_error(
        &format!("local = 192.0.2.1\n{}", manual(&[], &[])),
        1,
        Some("local"),
        "outside any section",
    );
    assert_error(
        &manual(&[], &["colour = blue"]),
        11,
        Some("colour"),
        "unknown key",
    );
    assert_error(
        &manual(&[], &["esp_spi_in = 0x1003"]),
        11,
        Some("esp_spi_in"),
        "duplicate key (first at line 6)",
    );
    assert_error(&manual(&[], &["mode"]), 11, Some("mode"), "missing '='");
    assert_error(&manual(&[], &["mode ="]), 11, Some("mode"), "empty value");
    assert_error(
        &manual(&[], &["mode = ; tunnel"]),
        11,
        Some("mode"),
        "empty value",
    );
    assert_error(&manual(&[], &["= tunnel"]), 11, None, "missing key name");
}

#[test]
fn section_header_errors() {
    let twice = format!(
        "{}{}",
        manual(&[], &[]),
        manual(&[], &[]).replace("[t]", "[T]")
    );
    assert_error(&twice, 11, None, "duplicate section name (first at line 1");
    assert_error(
        &manual(&[], &[]).replacen("[t]", "[]", 1),
        1,
        None,
        "empty section name",
    );
    assert_error(
        &manual(&[], &[]).replacen("[t]", "[t", 1),
        1,
        None,
        "no closing ']'",
    );
    assert_error(
        &manual(&[], &[]).replacen("[t]", "[t]x]", 1),
        1,
        None,
        "unexpected",
    );
    assert_error(
        &manual(&[], &[]).replacen("[t]", "[t\u{1}]", 1),
        1,
        None,
        "control character",
    );
    // Keys under a bad header are still checked, but never activated.
    for header in ["[]", "[t", "[t]x]"] {
        let config = parse(
            &manual(&[], &["mode = bridge"]).replacen("[t]", header, 1),
            "ipsec.cfg",
        );
        assert!(config.bundles.is_empty());
        assert_eq!(config.errors.len(), 2, "{header}: {:#?}", config.errors);
        assert_eq!(
            (config.errors[1].line, config.errors[1].key.as_deref()),
            (11, Some("mode"))
        );
    }
}

#[test]
fn endpoint_errors() {
    assert_error(
        &manual(&[("local", None)], &[]),
        1,
        Some("local"),
        "missing",
    );
    assert_error(
        &manual(&[("remote", None)], &[]),
        1,
        Some("remote"),
        "missing",
    );
    assert_error(
        &manual(&[("local", Some("192.0.2"))], &[]),
        2,
        Some("local"),
        "not an IPv4 address",
    );
    assert_error(
        &manual(&[("remote", Some("host.example"))], &[]),
        3,
        Some("remote"),
        "not an IPv4 address",
    );
    assert_error(
        &manual(&[("remote", Some("0.0.0.0"))], &[]),
        3,
        Some("remote"),
        "needs keying = ike",
    );
    assert_error(
        &manual(&[("remote", Some("192.0.2.1"))], &[]),
        3,
        Some("remote"),
        "same address as local",
    );
}

#[test]
fn road_warrior_and_dynamic_local_are_accepted_with_ike() {
    let config = parse(
        &ike(
            &[("local", Some("0.0.0.0")), ("remote", Some("0.0.0.0"))],
            &[],
        ),
        "ipsec.cfg",
    );
    assert!(config.errors.is_empty(), "{:#?}", config.errors);
    assert_eq!(
        (config.bundles[0].local, config.bundles[0].remote),
        (Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED)
    );
}

#[test]
fn mode_and_subnet_errors() {
    assert_error(
        &manual(&[], &["mode = bridge"]),
        11,
        Some("mode"),
        "not transport or tunnel",
    );
    assert_error(
        &manual(&[], &["local_subnet = 10.0.0.0/8"]),
        11,
        Some("local_subnet"),
        "only with mode = tunnel",
    );
    assert_error(
        &manual(&[], &["mode = transport", "remote_subnet = 10.0.0.0/8"]),
        12,
        Some("remote_subnet"),
        "only with mode = tunnel",
    );
    assert_error(
        &manual(&[], &["mode = tunnel", "local_subnet = 10.1.0.5/24"]),
        12,
        Some("local_subnet"),
        "host bits set: the network is 10.1.0.0/24",
    );
    assert_error(
        &manual(&[], &["mode = tunnel", "remote_subnet = 10.0.0.0/33"]),
        12,
        Some("remote_subnet"),
        "prefix length",
    );
    // A gateway protects subnets it is not part of: no containment rule.
    let config = parse(
        &manual(
            &[],
            &[
                "mode = tunnel",
                "local_subnet = 10.9.0.0/16",
                "remote_subnet = 0.0.0.0/0",
            ],
        ),
        "ipsec.cfg",
    );
    assert!(config.errors.is_empty(), "{:#?}", config.errors);
}

#[test]
fn selector_errors() {
    assert_error(
        &manual(&[], &["protocol = gre"]),
        11,
        Some("protocol"),
        "not any, icmp, tcp, udp",
    );
    assert_error(
        &manual(&[], &["protocol = 256"]),
        11,
        Some("protocol"),
        "0-255",
    );
    assert_error(
        &manual(&[], &["protocol = icmp", "local_port = 7"]),
        12,
        Some("local_port"),
        "needs protocol = tcp or udp",
    );
    assert_error(
        &manual(&[], &["remote_port = 7"]),
        11,
        Some("remote_port"),
        "needs protocol = tcp or udp",
    );
    assert_error(
        &manual(&[], &["protocol = tcp", "remote_port = 65536"]),
        12,
        Some("remote_port"),
        "0-65535",
    );
    // `any` is a port value that selects nothing, so it is fine with any protocol; 6 is tcp.
    let config = parse(
        &manual(&[], &["protocol = icmp", "local_port = any"]),
        "ipsec.cfg",
    );
    assert!(config.errors.is_empty(), "{:#?}", config.errors);
    let config = parse(
        &manual(&[], &["protocol = 6", "local_port = 80"]),
        "ipsec.cfg",
    );
    assert_eq!(config.bundles[0].local_port, Some(80));
}

#[test]
fn protocol_errors() {
    assert_error(
        &manual(&[("esp", Some("aes128-md4"))], &[]),
        4,
        Some("esp"),
        "not an ESP transform",
    );
    assert_error(
        &ike(&[("esp", Some("null-none"))], &[]),
        4,
        Some("esp"),
        "null-none would neither encrypt nor authenticate",
    );
    assert_error(
        &ike(&[], &["ah = sha512"]),
        6,
        Some("ah"),
        "not md5, sha1 or sha256",
    );
    assert_error(
        &ike(&[], &["ipcomp = lzs"]),
        6,
        Some("ipcomp"),
        "not deflate",
    );
    assert_error(&ike(&[("esp", None)], &[]), 1, None, "no protocol");
    assert_error(
        &manual(&[("esp", Some("aes128gcm16"))], &[]),
        4,
        Some("esp"),
        "AES-GCM needs keying = ike",
    );
    assert_error(
        &manual(&[], &["keying = pki"]),
        11,
        Some("keying"),
        "not manual or ike",
    );
    assert_error(
        &manual(&[], &["replay_window = 4097"]),
        11,
        Some("replay_window"),
        "0-4096",
    );
    let config = parse(&manual(&[], &["replay_window = 4096"]), "ipsec.cfg");
    assert_eq!(config.bundles[0].replay_window, 4096);
}

#[test]
fn keys_of_the_other_keying_are_errors() {
    assert_error(
        &manual(&[], &["pfs = yes"]),
        11,
        Some("pfs"),
        "applies only to keying = ike",
    );
    assert_error(
        &manual(&[], &["lifetime = 1h"]),
        11,
        Some("lifetime"),
        "applies only to keying = ike",
    );
    assert_error(
        &ike(&[], &["esp_spi_in = 0x1000"]),
        6,
        Some("esp_spi_in"),
        "applies only to keying = manual",
    );
    assert_error(
        &ike(&[], &["ipcomp_cpi_out = 2"]),
        6,
        Some("ipcomp_cpi_out"),
        "applies only to keying = manual",
    );
}

#[test]
fn missing_manual_keys_name_the_key() {
    assert_error(
        &manual(&[("esp_spi_in", None)], &[]),
        1,
        Some("esp_spi_in"),
        "missing, required by esp = aes128-sha1",
    );
    assert_error(
        &manual(&[("esp_auth_key_out", None)], &[]),
        1,
        Some("esp_auth_key_out"),
        "missing",
    );
    let config = parse(&manual(&[], &["ah = md5"]), "ipsec.cfg");
    let keys: Vec<_> = config
        .errors
        .iter()
        .map(|d| (d.line, d.key.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        keys,
        [
            (1, "ah_spi_out"),
            (1, "ah_key_out"),
            (1, "ah_spi_in"),
            (1, "ah_key_in")
        ]
    );
}

#[test]
fn keys_for_unused_protocols_are_errors() {
    assert_error(
        &manual(&[], &["ah_key_in = 0x00"]),
        11,
        Some("ah_key_in"),
        "the bundle has no ah",
    );
    assert_error(
        &manual(&[], &["ipcomp_cpi_in = 2"]),
        11,
        Some("ipcomp_cpi_in"),
        "the bundle has no ipcomp",
    );
    assert_error(
        &manual(&[("esp", Some("null-sha1")), ("esp_enc_key_in", None)], &[]),
        7,
        Some("esp_enc_key_out"),
        "null cipher takes no key",
    );
    assert_error(
        &manual(
            &[("esp", Some("aes128-none")), ("esp_auth_key_in", None)],
            &[],
        ),
        9,
        Some("esp_auth_key_out"),
        "has no integrity algorithm",
    );
    let no_esp =
        "[t]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nipcomp = deflate\nesp_spi_out = 0x1001\n";
    assert_error(no_esp, 5, Some("esp_spi_out"), "the bundle has no esp");
}

#[test]
fn key_material_errors() {
    assert_error(
        &manual(&[("esp_enc_key_in", Some("0x0011"))], &[]),
        8,
        Some("esp_enc_key_in"),
        "AES-128 needs a 16-byte key, got 2 bytes",
    );
    assert_error(
        &manual(&[("esp_auth_key_in", Some(&format!("0x{K16_A}")))], &[]),
        10,
        Some("esp_auth_key_in"),
        "HMAC-SHA1 needs a 20-byte key, got 16 bytes",
    );
    assert_error(
        &manual(&[("esp_enc_key_in", Some(K16_A))], &[]),
        8,
        Some("esp_enc_key_in"),
        "starting with 0x",
    );
    assert_error(
        &manual(&[("esp_enc_key_in", Some("0x123"))], &[]),
        8,
        Some("esp_enc_key_in"),
        "odd number of hex digits",
    );
    assert_error(
        &manual(&[("esp_enc_key_in", Some("0x12 34"))], &[]),
        8,
        Some("esp_enc_key_in"),
        "not a hex digit",
    );
    let des = |key: &str| {
        manual(
            &[
                ("esp", Some("des-sha1")),
                ("esp_enc_key_out", Some(key)),
                ("esp_enc_key_in", Some("0x0123456789abcdef")),
            ],
            &[],
        )
    };
    assert_error(
        &des("0x0101010101010101"),
        7,
        Some("esp_enc_key_out"),
        "weak DES key refused",
    );
    assert_error(
        &des("0x01fe01fe01fe01fe"),
        7,
        Some("esp_enc_key_out"),
        "weak DES key refused",
    );
    assert_error(
        &des("0x0000000000000000"),
        7,
        Some("esp_enc_key_out"),
        "weak DES key refused",
    );
    let k1 = "0123456789abcdef";
    let k2 = "fedcba9876543210";
    let tdes = |key: String| {
        manual(
            &[
                ("esp", Some("3des-sha1")),
                ("esp_enc_key_out", Some(&key)),
                ("esp_enc_key_in", Some(&format!("0x{k1}{k2}{k1}"))),
            ],
            &[],
        )
    };
    assert_error(
        &tdes(format!("0x{k1}{k1}{k2}")),
        7,
        Some("esp_enc_key_out"),
        "weak 3DES key refused",
    );
    assert_error(
        &tdes(format!("0x{k1}{k2}{k2}")),
        7,
        Some("esp_enc_key_out"),
        "weak 3DES key refused",
    );
    // K1 = K3 is two-key 3DES, which RFC 2451 does not forbid.
    let config = parse(&tdes(format!("0x{k2}{k1}{k2}")), "ipsec.cfg");
    assert!(config.errors.is_empty(), "{:#?}", config.errors);
}

#[test]
fn spi_and_cpi_errors() {
    assert_error(
        &manual(&[("esp_spi_out", Some("0"))], &[]),
        5,
        Some("esp_spi_out"),
        "SPI 0 is reserved",
    );
    assert_error(
        &manual(&[("esp_spi_out", Some("255"))], &[]),
        5,
        Some("esp_spi_out"),
        "1-255",
    );
    assert_error(
        &manual(&[("esp_spi_in", Some("0x1_0000_0000"))], &[]),
        6,
        Some("esp_spi_in"),
        "not a number",
    );
    assert_error(
        &manual(&[("esp_spi_in", Some("4294967296"))], &[]),
        6,
        Some("esp_spi_in"),
        "out of range",
    );
    assert_error(
        &manual(&[], &["ipcomp = deflate", "ipcomp_cpi_out = 0"]),
        12,
        Some("ipcomp_cpi_out"),
        "out of range 1-65535",
    );
    let config = parse(&manual(&[("esp_spi_out", Some("256"))], &[]), "ipsec.cfg");
    assert!(config.errors.is_empty(), "{:#?}", config.errors);
}

#[test]
fn manual_spi_clashes_between_bundles() {
    let first = manual(&[], &[]).replace("[t]", "[first]");
    // Same local address, same inbound ESP SPI 0x1002: the second bundle is refused.
    let second = manual(&[("remote", Some("192.0.2.3"))], &[]).replace("[t]", "[second]");
    let config = parse(&format!("{first}{second}"), "ipsec.cfg");
    assert_eq!(config.bundles.len(), 1);
    assert_eq!(
        errors(&config),
        [(
            16,
            Some("esp_spi_in"),
            "SPI 0x1002 is already used by bundle [first] (line 1) towards the same address"
        )]
    );

    // Same peer, same outbound SPI.
    let second = manual(&[("esp_spi_in", Some("0x1003"))], &[]).replace("[t]", "[second]");
    let config = parse(&format!("{first}{second}"), "ipsec.cfg");
    assert_eq!(
        errors(&config),
        [(
            15,
            Some("esp_spi_out"),
            "SPI 0x1001 is already used by bundle [first] (line 1) towards the same address"
        )]
    );

    // Different addresses on both sides, or AH next to ESP with the same SPI: no clash.
    let second = manual(
        &[("local", Some("192.0.2.5")), ("remote", Some("192.0.2.6"))],
        &[],
    )
    .replace("[t]", "[second]");
    assert!(parse(&format!("{first}{second}"), "ipsec.cfg")
        .errors
        .is_empty());
    let ah_only = format!(
        "[ah]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nah = sha1\nah_spi_out = 0x1001\nah_spi_in = 0x1002\nah_key_out = 0x{K20_A}\nah_key_in = 0x{K20_B}\n"
    );
    assert!(parse(&format!("{first}{ah_only}"), "ipsec.cfg")
        .errors
        .is_empty());
}

#[test]
fn ike_errors() {
    assert_error(
        &ike(&[], &["ike = aes192-sha1-modp2048"]),
        6,
        Some("ike"),
        "unknown IKE cipher 'aes192'",
    );
    assert_error(
        &ike(&[], &["ike = aes128-sha1-modp2048,"]),
        6,
        Some("ike"),
        "empty item",
    );
    assert_error(&ike(&[], &["pfs = maybe"]), 6, Some("pfs"), "not yes or no");
    assert_error(
        &ike(&[], &["lifetime = 2d"]),
        6,
        Some("lifetime"),
        "limit of 1d",
    );
    assert_error(
        &ike(&[], &["ike_lifetime = 0"]),
        6,
        Some("ike_lifetime"),
        "at once",
    );
    assert_error(
        &ike(&[], &["lifetime = 8 hours"]),
        6,
        Some("lifetime"),
        "not a duration",
    );
    assert_error(
        &ike(&[], &["rekeymargin = 1y"]),
        6,
        Some("rekeymargin"),
        "not a duration",
    );
    assert_error(
        &ike(&[], &["rekeyfuzz = 100"]),
        6,
        Some("rekeyfuzz"),
        "not a percentage",
    );
    assert_error(
        &ike(&[], &["keyingtries = forever"]),
        6,
        Some("keyingtries"),
        "not a number",
    );
    assert_error(
        &ike(&[], &["keyingtries = 4294967296"]),
        6,
        Some("keyingtries"),
        "out of range",
    );
}

#[test]
fn lifetimes_must_outlast_the_rekey_margin() {
    // 540 s × 200% = 1080 s ≥ 1000 s.
    assert_error(
        &ike(&[], &["ike_lifetime = 1000s"]),
        6,
        Some("ike_lifetime"),
        "ike_lifetime = 1000s must be longer than rekeymargin × (100% + rekeyfuzz) = 9m × 200% = 1080s",
    );
    // The defaults' lifetimes with a margin written by the administrator: blame the margin,
    // once for each lifetime it no longer fits.
    let config = parse(&ike(&[], &["rekeymargin = 5h"]), "ipsec.cfg");
    let got: Vec<(u32, Option<&str>)> = config
        .errors
        .iter()
        .map(|d| (d.line, d.key.as_deref()))
        .collect();
    assert_eq!(got, [(6, Some("rekeymargin")), (6, Some("rekeymargin"))]);
    let config = parse(&ike(&[], &["ike_lifetime = 1081s"]), "ipsec.cfg");
    assert!(config.errors.is_empty(), "{:#?}", config.errors);
}

#[test]
fn line_and_file_size_limits() {
    let long = format!("; {}", "x".repeat(MAX_LINE_BYTES));
    assert_error(&manual(&[], &[&long]), 11, None, "the limit is 4096");
    let big = format!("{}{}", manual(&[], &[]), ";\n".repeat(MAX_FILE_BYTES / 2));
    assert_error(&big, 0, None, "larger than 1048576 bytes");
}

#[test]
fn a_flood_of_errors_is_listed_up_to_the_cap_and_good_bundles_still_load() {
    let mut text: String = (0..2000).map(|i| format!("[empty {i}]\n")).collect();
    text.push_str(&manual(&[], &[]));
    let config = parse(&text, "ipsec.cfg");
    assert_eq!(config.errors.len(), MAX_DIAGNOSTICS + 1);
    let last = config.errors.last().unwrap();
    assert_eq!(
        (last.line, last.message.as_str()),
        (0, "5000 more errors not listed")
    );
    assert_eq!(
        config.bundles.len(),
        1,
        "the cap limits the list, not the checks"
    );
}

// --- warnings ---

fn warnings(text: &str) -> Vec<(u32, Option<String>, String)> {
    let config = parse(text, "ipsec.cfg");
    assert!(config.errors.is_empty(), "{text}\n{:#?}", config.errors);
    config
        .warnings
        .into_iter()
        .map(|d| (d.line, d.key, d.message))
        .collect()
}

#[test]
fn weak_algorithms_warn_but_load() {
    let w = warnings(&ike(&[("esp", Some("des-md5"))], &[]));
    assert_eq!(w.len(), 2);
    assert!(w[0].2.contains("DES is broken") && w[1].2.contains("HMAC-MD5"));
    assert!(w
        .iter()
        .all(|(line, key, _)| *line == 4 && key.as_deref() == Some("esp")));
    let w = warnings(&ike(&[("esp", Some("null-sha1"))], &[]));
    assert!(w[0].2.contains("null cipher"));
    let w = warnings(&ike(&[("esp", Some("aes128-none"))], &[]));
    assert!(w[0].2.contains("without integrity"));
    // AH authenticates what ESP without integrity does not.
    assert!(warnings(&ike(&[("esp", Some("aes128-none"))], &["ah = sha1"])).is_empty());
    let w = warnings(&ike(&[], &["ah = md5"]));
    assert_eq!((w[0].0, w[0].1.as_deref()), (6, Some("ah")));
    let w = warnings(&ike(
        &[],
        &["ike = aes128-md5-modp1024, aes128-sha1-modp2048, 3des-sha1-modp1024"],
    ));
    assert_eq!(w.len(), 2);
    assert_eq!(
        w[0].2,
        "proposal aes128-md5-modp1024 uses MD5 and modp1024 (group 2), deprecated by RFC 8247"
    );
    assert!(w[1].2.contains("3des-sha1-modp1024 uses modp1024"));
    assert!(
        warnings(&ike(&[], &[])).is_empty(),
        "the default proposal list does not warn"
    );
}

#[test]
fn a_bundle_with_a_warning_and_an_error_reports_both() {
    let config = parse(&manual(&[("esp", Some("aes128-md5"))], &[]), "ipsec.cfg");
    assert_eq!(config.warnings.len(), 1);
    assert_eq!(errors(&config)[0].1, Some("esp_auth_key_out"));
    assert!(errors(&config)[0]
        .2
        .contains("HMAC-MD5 needs a 16-byte key, got 20 bytes"));
}

// --- parse_sa_keys ---

fn gcm128() -> Option<EspTransform> {
    Some(EspTransform::Aead(AeadAlg::AesGcm16_128))
}

#[test]
fn sa_keys_for_gcm() {
    let text = format!(
        "; from the keying daemon\nesp_spi_out = 0x1000\nesp_spi_in = 0x1001\n\
         esp_enc_key_out = 0x{K16_A}_01020304\nesp_enc_key_in = 0x{K16_B}_05060708\n"
    );
    let keys = parse_sa_keys(&text, "daemon", gcm128(), None, false).unwrap();
    let mut out = bytes(K16_A);
    out.extend([1, 2, 3, 4]);
    assert_eq!(
        keys.outbound.esp,
        Some(EspKeys {
            spi: 0x1000,
            enc_key: out,
            auth_key: Vec::new()
        })
    );
    assert_eq!(
        keys.inbound.esp.as_ref().map(|k| (k.spi, k.enc_key.len())),
        Some((0x1001, 20))
    );
    assert_eq!((&keys.outbound.ah, keys.outbound.ipcomp_cpi), (&None, None));

    let text = format!("esp_spi_out = 0x1000\nesp_spi_in = 0x1001\nesp_enc_key_out = 0x{K32_A}\nesp_enc_key_in = 0x{K32_B}_00000000\n");
    let errs = parse_sa_keys(
        &text,
        "daemon",
        Some(EspTransform::Aead(AeadAlg::AesGcm16_256)),
        None,
        false,
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(
        errs[0].to_string(),
        "daemon:3: esp_enc_key_out: AES-256-GCM needs a 36-byte key, got 32 bytes (the AES key followed by the 4-byte salt, RFC 4106 section 8.1)"
    );
}

#[test]
fn sa_keys_with_ah_and_ipcomp() {
    let text = format!("ah_spi_out = 4096\nah_spi_in = 4097\nah_key_out = 0x{K32_A}\nah_key_in = 0x{K32_B}\nipcomp_cpi_in = 0x1234\n");
    let keys = parse_sa_keys(&text, "k", None, Some(IntegAlg::HmacSha256_128), true).unwrap();
    assert_eq!(
        keys.inbound.ah,
        Some(AhKeys {
            spi: 4097,
            key: bytes(K32_B)
        })
    );
    assert_eq!(
        (keys.outbound.ipcomp_cpi, keys.inbound.ipcomp_cpi),
        (Some(2), Some(0x1234))
    );
}

#[test]
fn sa_keys_errors() {
    let e = parse_sa_keys("[x]\nesp_spi_out = 0x1000\n", "k", None, None, false).unwrap_err();
    assert_eq!(
        (e[0].line, e[0].message.as_str()),
        (1, "a key text has no [section] headers")
    );
    let e = parse_sa_keys("local = 192.0.2.1\n", "k", None, None, false).unwrap_err();
    assert_eq!((e[0].line, e[0].key.as_deref()), (1, Some("local")));
    let e = parse_sa_keys("esp_spi_out = 0x1000\n", "k", gcm128(), None, false).unwrap_err();
    let missing: Vec<_> = e
        .iter()
        .map(|d| (d.line, d.key.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        missing,
        [
            (0, "esp_enc_key_out"),
            (0, "esp_spi_in"),
            (0, "esp_enc_key_in")
        ]
    );
    assert_eq!(
        e[0].to_string(),
        "k: esp_enc_key_out: missing, required by esp = aes128gcm16"
    );
    let e = parse_sa_keys("ah_spi_in = 0x1000\n", "k", gcm128(), None, false).unwrap_err();
    assert!(e
        .iter()
        .any(|d| d.key.as_deref() == Some("ah_spi_in") && d.message.contains("no ah")));
    assert_eq!(
        parse_sa_keys("; nothing\n", "k", None, None, false),
        Ok(SaKeys::default())
    );
}

// --- load ---

fn temp_file(name: &str, content: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ipsec-cfg-test-{}-{name}", std::process::id()));
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn load_reads_a_file_and_names_it_in_diagnostics() {
    let path = temp_file("ok.cfg", TRANSPORT_SAMPLE.as_bytes());
    let config = load(&path).unwrap();
    assert_eq!(config.bundles.len(), 1);
    std::fs::remove_file(&path).unwrap();

    let mut text = manual(&[], &[]).into_bytes();
    text.extend_from_slice(b"; caf\xe9\n");
    let path = temp_file("latin1.cfg", &text);
    let config = load(&path).unwrap();
    assert_eq!(config.errors.len(), 1);
    assert_eq!(config.errors[0].file, path.display().to_string());
    assert_eq!(
        (config.errors[0].line, config.errors[0].message.as_str()),
        (11, "line is not valid UTF-8")
    );
    assert!(config.bundles.is_empty(), "the line belongs to bundle [t]");
    std::fs::remove_file(&path).unwrap();

    let path = temp_file("big.cfg", &vec![b'\n'; MAX_FILE_BYTES + 1]);
    let config = load(&path).unwrap();
    assert_eq!(config.errors[0].line, 0);
    std::fs::remove_file(&path).unwrap();

    assert!(load(&std::env::temp_dir().join("ipsec-cfg-test-does-not-exist.cfg")).is_err());
}

// --- inputs that must not panic ---

/// xorshift64: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn no_panic_on_every_truncation_of_the_samples() {
    for sample in [TRANSPORT_SAMPLE, TUNNEL_SAMPLE] {
        let bytes = sample.as_bytes();
        for len in 0..=bytes.len() {
            let _ = parse_bytes(&bytes[..len], "t");
            let _ = parse_sa_keys(
                std::str::from_utf8(&bytes[..len]).unwrap(),
                "t",
                gcm128(),
                Some(IntegAlg::HmacMd5_96),
                true,
            );
        }
    }
}

#[test]
fn no_panic_on_random_bytes_and_mutations() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Bytes drawn mostly from the config alphabet reach deeper than uniform noise.
    let alphabet = b"[]=;_-/.,%0123456789abcdefxABCDEFXlocaremtsphikyndgw \t\r\n\x00\xff\xc3";
    for _ in 0..2000 {
        let len = (rng.next() % 300) as usize;
        let noise: Vec<u8> = (0..len)
            .map(|_| match rng.next() % 4 {
                0 => rng.next() as u8,
                _ => alphabet[(rng.next() % alphabet.len() as u64) as usize],
            })
            .collect();
        let _ = parse_bytes(&noise, "t");
        let _ = parse_sa_keys(
            &String::from_utf8_lossy(&noise),
            "t",
            gcm128(),
            Some(IntegAlg::HmacSha1_96),
            true,
        );
    }
    for sample in [TRANSPORT_SAMPLE, TUNNEL_SAMPLE] {
        for _ in 0..2000 {
            let mut bytes = sample.as_bytes().to_vec();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() % bytes.len() as u64) as usize;
                match rng.next() % 3 {
                    0 => bytes[at] = rng.next() as u8,
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, alphabet[(rng.next() % alphabet.len() as u64) as usize]),
                }
            }
            let _ = parse_bytes(&bytes, "t");
        }
    }
}

// --- the reference's examples stay valid ---

const REFERENCE: &str = include_str!("../../../docs/ipsec-cfg.md");

/// The fenced blocks of the reference with this info string.
fn fenced_blocks(info: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in REFERENCE.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut current, fence) {
            (None, Some(lang)) if lang == info => current = Some(String::new()),
            (Some(block), Some("")) => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn reference_examples_parse_without_errors_or_warnings() {
    let examples = fenced_blocks("ini");
    assert!(examples.len() >= 7, "found {} ini blocks", examples.len());
    for text in &examples {
        let config = parse(text, "docs/ipsec-cfg.md");
        assert!(config.errors.is_empty(), "{text}\n{:#?}", config.errors);
        assert!(config.warnings.is_empty(), "{text}\n{:#?}", config.warnings);
        let sections = text.lines().filter(|l| l.starts_with('[')).count();
        assert_eq!(config.bundles.len(), sections, "{text}");
    }
}

#[test]
fn reference_key_text_example_installs() {
    let blocks = fenced_blocks("text");
    let key_text = blocks
        .iter()
        .find(|b| b.starts_with("; keys for"))
        .expect("key text example");
    let keys = parse_sa_keys(key_text, "docs", gcm128(), None, false).unwrap();
    assert_eq!(
        keys.inbound.esp.map(|k| (k.spi, k.enc_key.len())),
        Some((0x1000, 20))
    );
}

#[test]
fn udp_encap_key() {
    let base = "[b]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nkeying = ike\n";
    let c = parse(&format!("{base}esp = aes128-sha1\nudp_encap = YES\n"), "ipsec.cfg");
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert!(c.bundles[0].udp_encap);
    let c = parse(&format!("{base}esp = aes128-sha1\n"), "ipsec.cfg");
    assert!(!c.bundles[0].udp_encap, "default no");
    let c = parse(&format!("{base}ah = sha1\nudp_encap = yes\n"), "ipsec.cfg");
    assert_eq!(c.errors.len(), 1);
    assert_eq!(c.errors[0].line, 6);
    assert_eq!(c.errors[0].key.as_deref(), Some("udp_encap"));
    let c = parse(&format!("{base}esp = aes128-sha1\nudp_encap = maybe\n"), "ipsec.cfg");
    assert_eq!(c.errors[0].key.as_deref(), Some("udp_encap"));
}

#[test]
fn failed_sections_keep_their_selectors_when_known() {
    let text = "[ok]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nkeying = ike\nesp = aes128-sha1\n\n\
                [badkey]\nlocal = 192.0.2.1\nremote = 192.0.2.3\nmode = tunnel\nremote_subnet = 10.3.0.0/16\nesp = aes128-sha1\nesp_spi_out = 0x100\n\n\
                [noremote]\nlocal = 192.0.2.1\nesp = aes128-sha1\n";
    let c = parse(text, "ipsec.cfg");
    assert_eq!(c.bundles.len(), 1);
    assert_eq!(c.failed.len(), 1, "no remote: nothing to block with");
    let f = &c.failed[0];
    assert_eq!((f.name.as_str(), f.line, f.mode), ("badkey", 7, Mode::Tunnel));
    assert_eq!(f.remote_subnet, Some("10.3.0.0/16".parse().unwrap()));
    assert_eq!((f.esp, f.ah, f.ipcomp), (None, None, false), "a failed section carries no protocols");
}
