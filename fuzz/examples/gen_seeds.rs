//! Writes the committed seed corpus, `fuzz/corpus/<target>/<name>`:
//! `cargo run --example gen_seeds [-- TARGET...]` (from `fuzz/`; with targets, only their
//! directories are rewritten). Packets come from the lab instances themselves (what the
//! peer sends, what we send), configurations from `cfg-samples/`, daemon-link messages
//! from the codec, ISAKMP datagrams from an initiator run against the `isakmp` responder.
//! CBC IVs are random, so ESP seeds differ from run to run; their structure does not. The
//! daemon's seeds (`ipc`, `secrets`, `isakmp`) come out the same every time.

use std::path::{Path, PathBuf};

use ipsec_plugin::wire::IpProtocol;
use ipsec_plugin::{PacketBuf, Plugin, Verdict};
use ipsec_plugin_fuzz::lab::{self, Flow, Spec, LOCAL, SPECS};
use ipsec_plugin_fuzz::seal::{self, RAW, TUNNEL};
use ipsec_plugin_fuzz::{daemon, TARGETS};

/// Headroom 256, tailroom 256 (see `ROOMS` in src/lib.rs).
const ROOM: u8 = 6 | 6 << 3;
/// No headroom, no tailroom.
const NO_ROOM: u8 = 0;
/// Headroom 256, tailroom 256, link MTU 576.
const ROOM_MTU_576: u8 = ROOM | 1 << 6;

struct Out {
    root: PathBuf,
    /// The targets whose seeds are written (all when none were named).
    only: Vec<String>,
}

impl Out {
    fn wants(&self, target: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|t| t == target)
    }

    fn write(&self, target: &str, name: &str, bytes: &[u8]) {
        if !self.wants(target) {
            return;
        }
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn with_room(room: u8, packet: &[u8]) -> Vec<u8> {
    let mut v = vec![room];
    v.extend_from_slice(packet);
    v
}

fn protect(plugin: &Plugin, packet: &[u8]) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256 + packet.len() + 256];
    buf[256..256 + packet.len()].copy_from_slice(packet);
    let mut pkt = PacketBuf {
        buf: &mut buf,
        offset: 256,
        len: packet.len(),
    };
    (plugin.outbound(&mut pkt) == Verdict::Transformed)
        .then(|| pkt.buf[pkt.offset..pkt.offset + pkt.len].to_vec())
}

fn active(spec: &Spec) -> bool {
    !spec.dynamic && (!spec.ike || spec.install)
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Out {
        root: root.join("corpus"),
        only: std::env::args().skip(1).collect(),
    };
    for t in &out.only {
        assert!(TARGETS.contains(&t.as_str()), "no fuzz target named {t}");
    }
    for t in TARGETS.iter().filter(|t| out.wants(t)) {
        let _ = std::fs::remove_dir_all(out.root.join(t));
    }
    let lab = lab::lab();
    let peer_addr = SPECS[0].remote;

    // outbound: what each bundle protects, small and compressible, plus what passes.
    let mut batch = vec![0x80 | 5];
    for spec in &SPECS {
        for len in [8, 300] {
            let clear = lab::cleartext_for(spec, Flow::LocalToPeer, len);
            out.write(
                "outbound",
                &format!("{}-{len}", spec.name),
                &with_room(ROOM, &clear),
            );
            if len == 300 && batch.len() < 2000 {
                batch.extend((clear.len() as u16).to_be_bytes());
                batch.extend(&clear);
            }
        }
    }
    out.write("outbound", "batch", &with_room(ROOM, &batch));
    let big = lab::ip_packet(
        LOCAL,
        peer_addr,
        IpProtocol::Icmp,
        true,
        &lab::icmp_echo(1000),
    );
    out.write(
        "outbound",
        "df-too-big-mtu576",
        &with_room(ROOM_MTU_576, &big),
    );
    let small = lab::cleartext_for(&SPECS[0], Flow::LocalToPeer, 8);
    out.write("outbound", "no-room", &with_room(NO_ROOM, &small));
    let ike = lab::ip_packet(
        LOCAL,
        peer_addr,
        IpProtocol::Udp,
        false,
        &lab::l4(IpProtocol::Udp, 500, 500, &[0; 28]),
    );
    out.write("outbound", "ike-passes", &with_room(ROOM, &ike));
    let keepalive = lab::ip_packet(
        LOCAL,
        peer_addr,
        IpProtocol::Udp,
        false,
        &lab::l4(IpProtocol::Udp, 4500, 4500, &[0xff]),
    );
    out.write("outbound", "natt-keepalive", &with_room(ROOM, &keepalive));
    let unprotected = lab::ip_packet(
        LOCAL,
        "198.51.100.7".parse().unwrap(),
        IpProtocol::Tcp,
        false,
        &lab::l4(IpProtocol::Tcp, 1, 2, b"hi"),
    );
    out.write("outbound", "unprotected", &with_room(ROOM, &unprotected));

    // inbound: what the peer sends for each bundle, and the same through a seal program.
    for spec in SPECS.iter().filter(|s| active(s)) {
        for len in [8, 300] {
            let clear = lab::cleartext_for(spec, Flow::PeerToLocal, len);
            if let Some(p) = protect(&lab.peer, &clear) {
                out.write(
                    "inbound",
                    &format!("{}-{len}", spec.name),
                    &with_room(ROOM, &p),
                );
            }
        }
        let clear = lab::cleartext_for(spec, Flow::PeerToLocal, 200);
        let (proto, payload) = if spec.tunnel.is_some() {
            (4, &clear[..])
        } else {
            (clear[9], &clear[20..])
        };
        let mut layers = Vec::new();
        if spec.ipcomp {
            layers.push(seal::sealer_index(spec.name, false, false));
        }
        if spec.esp.is_some() {
            layers.push(seal::sealer_index(spec.name, true, false));
        }
        if spec.ah.is_some() {
            layers.push(seal::sealer_index(spec.name, false, true));
        }
        // Sequence numbers above what the peer's packets use, so both get through.
        let mut program = vec![ROOM, 0x80 | (layers.len() as u8 - 1)];
        program.extend(&layers);
        program.push(proto);
        program.extend(5000u16.to_be_bytes());
        program.extend_from_slice(payload);
        out.write("inbound", &format!("sealed-{}", spec.name), &program);
        // The cleartext itself: a policy violation for a protected selector.
        out.write(
            "inbound",
            &format!("clear-{}", spec.name),
            &with_room(ROOM, &clear),
        );
    }
    // Nested: [nested-inner] ESP from 10.4.0.5 inside [nested-outer]'s tunnel from the gw.
    let inner = lab::cleartext_for(&SPECS[8], Flow::PeerToLocal, 40);
    let mut program = vec![
        ROOM,
        0x80 | 1,
        seal::sealer_index("nested-inner", true, false),
        TUNNEL | seal::sealer_index("nested-outer", true, false),
    ];
    program.push(inner[9]);
    program.extend(6000u16.to_be_bytes());
    program.extend_from_slice(&inner[20..]);
    out.write("inbound", "sealed-nested", &program);
    // A raw plaintext (fuzzer-made trailer) under the integrity-less ESP SA, with options
    // (Record Route) and ECN CE on the outer header.
    let mut program = vec![
        ROOM,
        0x80 | 0x08 | 0x20,
        RAW | seal::sealer_index("noauth-tunnel", true, false),
        4,
    ];
    program.extend(7000u16.to_be_bytes());
    program.extend_from_slice(&[0x45; 30]);
    program.extend_from_slice(&[1, 2, 4]);
    out.write("inbound", "sealed-raw-trailer", &program);
    // A raw (not deflated) IPComp payload inside a valid ESP: the decompressor sees it.
    let mut program = vec![
        ROOM,
        0x80 | 1,
        RAW | seal::sealer_index("gw-tunnel-ipcomp", false, false),
        seal::sealer_index("gw-tunnel-ipcomp", true, false),
        4,
    ];
    program.extend(8000u16.to_be_bytes());
    program.extend_from_slice(&[0x63, 0x60, 0x00, 0x00, 0x00]);
    out.write("inbound", "sealed-raw-ipcomp", &program);
    // A deflate stream of 70 000 zero bytes: more than IPComp may expand to (64 KiB).
    // `compress` wants room for deflate's worst case (the input and some slack).
    let mut bomb = vec![0u8; 80_000];
    let n = ipsec_plugin::crypto::Deflate::new()
        .compress(&[0u8; 70_000], &mut bomb)
        .unwrap();
    let mut program = vec![
        ROOM | 7 << 3,
        0x80 | 1,
        RAW | seal::sealer_index("gw-tunnel-ipcomp", false, false),
        seal::sealer_index("gw-tunnel-ipcomp", true, false),
        4,
    ];
    program.extend(8100u16.to_be_bytes());
    program.extend_from_slice(&bomb[..n]);
    out.write("inbound", "sealed-ipcomp-too-large", &program);
    let ike = lab::ip_packet(
        peer_addr,
        LOCAL,
        IpProtocol::Udp,
        false,
        &lab::l4(IpProtocol::Udp, 500, 500, &[0; 28]),
    );
    out.write("inbound", "ike-passes", &with_room(ROOM, &ike));
    let keepalive = lab::ip_packet(
        peer_addr,
        LOCAL,
        IpProtocol::Udp,
        false,
        &lab::l4(IpProtocol::Udp, 4500, 4500, &[0xff]),
    );
    out.write("inbound", "natt-keepalive", &with_room(NO_ROOM, &keepalive));

    // wire: one header of each kind, and an ESP trailer.
    let esp_packet = protect(
        &lab.local,
        &lab::cleartext_for(&SPECS[0], Flow::LocalToPeer, 8),
    )
    .unwrap();
    out.write("wire", "ipv4-esp", &esp_packet);
    out.write("wire", "esp", &esp_packet[20..]);
    let ah_packet = protect(
        &lab.local,
        &lab::cleartext_for(&SPECS[2], Flow::LocalToPeer, 8),
    )
    .unwrap();
    out.write("wire", "ah", &ah_packet[20..]);
    let natt = protect(
        &lab.local,
        &lab::cleartext_for(&SPECS[4], Flow::LocalToPeer, 8),
    )
    .unwrap();
    out.write("wire", "udp-natt", &natt[20..]);
    let comp = protect(
        &lab.peer,
        &lab::cleartext_for(&SPECS[3], Flow::PeerToLocal, 300),
    )
    .unwrap();
    out.write("wire", "ipv4-options", &{
        let mut p = vec![0x46];
        p.extend_from_slice(&comp[1..20]);
        p.extend_from_slice(&[0x94, 0x04, 0x00, 0x00]);
        p
    });
    out.write(
        "wire",
        "ipcomp",
        &[4, 0, 0x01, 0x34, 0x63, 0x60, 0x00, 0x00],
    );
    out.write("wire", "icmp-echo", &lab::icmp_echo(16));
    out.write("wire", "esp-trailer", &[0xaa, 0xbb, 1, 2, 3, 4, 4, 4]);
    out.write("wire", "natt-keepalive", &[0xff]);

    // config: every sample, the lab's own files; keys: the lab's IKE key lines.
    let samples = root.join("../cfg-samples");
    for scenario in std::fs::read_dir(&samples)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
    {
        for machine in std::fs::read_dir(scenario.path()).unwrap().flatten() {
            if let Ok(text) = std::fs::read(machine.path().join("ipsec.cfg")) {
                let name = format!(
                    "{}-{}",
                    scenario.file_name().to_string_lossy(),
                    machine.file_name().to_string_lossy()
                );
                out.write("config", &name, &text);
            }
        }
    }
    out.write("config", "lab-local", lab::config_text(false).as_bytes());
    out.write("config", "lab-peer", lab::config_text(true).as_bytes());
    // First byte for parse_sa_keys: aes128gcm16 (2), no AH, no IPComp.
    let gcm = &SPECS[5];
    let mut keys = vec![2u8];
    keys.extend(gcm.key_lines(false).as_bytes());
    out.write("config", "keys-gcm", &keys);

    // control: the two valid requests and a few near misses.
    for (name, req) in [
        ("dump-text", &b"DUMP TEXT 1\n"[..]),
        ("dump-json", b"DUMP JSON 1\n"),
        ("bad-version", b"DUMP TEXT 2\n"),
        ("no-newline", b"DUMP JSON 1"),
        ("garbage", b"\x00\xffHELLO\r\n"),
    ] {
        out.write("control", name, req);
    }

    // ipc: one message of each exchange from the side that sends it, and a stream.
    for (name, bytes) in daemon::ipc_seeds(&root.join("../cfg-samples/ike")) {
        out.write("ipc", &name, &bytes);
    }
    // secrets: the samples' isecrets.cfg, and every form and error of the format.
    for (name, bytes) in daemon::secrets_seeds(&root.join("../cfg-samples/ike")) {
        out.write("secrets", &name, &bytes);
    }
    // isakmp: an initiator's side of whole exchanges with the responder.
    if out.wants("isakmp") {
        for (name, bytes) in daemon::isakmp_seeds() {
            out.write("isakmp", &name, &bytes);
        }
    }
    println!("seeds written to {}", out.root.display());
}
