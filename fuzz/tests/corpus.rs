//! Regression tests on the stable toolchain: every committed seed and every saved crash
//! input (`regressions/<target>/`) goes through its target, and the lab itself is checked to
//! reach what the targets rely on (a harness that silently dropped everything would fuzz
//! nothing).

use std::path::Path;

use ipsec_plugin::ipc::{Message, Sender};
use ipsec_plugin::{PacketBuf, Verdict};
use ipsec_plugin_fuzz::lab::{self, Flow, SPECS};
use ipsec_plugin_fuzz::{daemon, run, seal, TARGETS};
use pluto::{DeleteReason, Event};

fn replay_dir(target: &str, dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for entry in entries.flatten() {
        let data = std::fs::read(entry.path()).unwrap();
        eprintln!("{target}: {}", entry.path().display());
        run(target, &data);
        n += 1;
    }
    n
}

#[test]
fn every_committed_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for target in TARGETS {
        let seeds = replay_dir(target, &root.join("corpus").join(target));
        assert!(
            seeds > 0,
            "no seeds for {target}: run `cargo run --example gen_seeds`"
        );
        replay_dir(target, &root.join("regressions").join(target));
    }
}

fn send(plugin: &ipsec_plugin::Plugin, packet: &[u8], outbound: bool) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; 256 + packet.len() + 256];
    buf[256..256 + packet.len()].copy_from_slice(packet);
    let mut pkt = PacketBuf {
        buf: &mut buf,
        offset: 256,
        len: packet.len(),
    };
    let v = if outbound {
        plugin.outbound(&mut pkt)
    } else {
        plugin.inbound(&mut pkt)
    };
    let out = pkt.buf[pkt.offset..pkt.offset + pkt.len].to_vec();
    (v, out)
}

/// The mirror configuration really is the other end: what we send, the peer opens, and the
/// other way round, for every bundle that has keys.
#[test]
fn lab_peers_understand_each_other() {
    let lab = lab::Lab::open();
    for spec in SPECS.iter().filter(|s| !s.dynamic && (!s.ike || s.install)) {
        for len in [1, 300] {
            let clear = lab::cleartext_for(spec, Flow::LocalToPeer, len);
            let (v, protected) = send(&lab.local, &clear, true);
            assert_eq!(v, Verdict::Transformed, "[{}] outbound", spec.name);
            let (v, opened) = send(&lab.peer, &protected, false);
            assert_eq!(
                (v, &opened),
                (Verdict::Transformed, &clear),
                "[{}] peer inbound",
                spec.name
            );
            let clear = lab::cleartext_for(spec, Flow::PeerToLocal, len);
            let (v, protected) = send(&lab.peer, &clear, true);
            assert_eq!(v, Verdict::Transformed, "[{}] peer outbound", spec.name);
            let (v, opened) = send(&lab.local, &protected, false);
            assert_eq!(
                (v, &opened),
                (Verdict::Transformed, &clear),
                "[{}] inbound",
                spec.name
            );
        }
    }
}

/// Packets sealed by the harness get through the instance under test, so the fuzzer's
/// sealed inputs reach decryption, decompression and the policy check.
#[test]
fn sealed_packets_are_accepted() {
    let lab = lab::Lab::open();
    let mut seq = 1000u16;
    for spec in SPECS.iter().filter(|s| !s.ike || s.install) {
        let clear = lab::cleartext_for(spec, Flow::PeerToLocal, 200);
        let mut layers = Vec::new();
        let mut proto = clear[9];
        let mut payload = &clear[20..];
        if spec.tunnel.is_some() {
            proto = 4;
            payload = &clear[..];
        }
        if spec.ipcomp {
            layers.push(seal::sealer_index(spec.name, false, false));
        }
        if spec.esp.is_some() {
            layers.push(seal::sealer_index(spec.name, true, false));
        }
        if spec.ah.is_some() {
            layers.push(seal::sealer_index(spec.name, false, true));
        }
        seq += 1;
        let mut program = vec![layers.len() as u8 - 1];
        program.extend(&layers);
        program.push(proto);
        program.extend(seq.to_be_bytes());
        program.extend_from_slice(payload);
        let packet = seal::build(&program, 1).expect("sealing");
        let (v, opened) = send(&lab.local, &packet, false);
        if spec.dynamic || spec.name == "nested-inner" {
            // The dynamic bundle has no address yet, and nested-inner's peer is behind the
            // tunnel: both are policy violations when they arrive like this.
            assert_eq!(v, Verdict::Drop, "[{}] sealed", spec.name);
        } else {
            // In transport mode the harness's outer header (identification) stays.
            assert_eq!(v, Verdict::Transformed, "[{}] sealed", spec.name);
            assert_eq!(
                (&opened[12..20], &opened[20..]),
                (&clear[12..20], &clear[20..]),
                "[{}] sealed",
                spec.name
            );
        }
    }
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every daemon-link seed named after its sender is a valid message from that side, so the
/// fuzzer starts past decoding and validation.
#[test]
fn ipc_seeds_are_valid_messages() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/ipc");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let from = match name.split('-').next() {
            Some("plugin") => Sender::Plugin,
            Some("daemon") => Sender::Daemon,
            _ => continue,
        };
        let bytes = std::fs::read(entry.path()).unwrap();
        Message::decode_from(&bytes, from).unwrap_or_else(|e| panic!("{name}: {e}"));
        n += 1;
    }
    assert!(n >= 40, "only {n} message seeds");
}

/// The include seed reaches the bench directory's files, nested, and the deep one hits
/// the nesting limit: includes are fuzzed, not just refused.
#[test]
fn secrets_includes_reach_the_bench_files() {
    let path = daemon::secrets_path();
    let s =
        pluto::secrets::Secrets::parse(&seed("secrets", "include"), &path).expect("include seed");
    assert_eq!((s.len(), s.files().len()), (5, 3), "{:?}", s.files());
    let e = pluto::secrets::Secrets::parse(&seed("secrets", "include-deep"), &path).unwrap_err();
    assert!(e.message.contains("nested deeper"), "{e}");
    let e = pluto::secrets::Secrets::parse(&seed("secrets", "include-loop"), &path).unwrap_err();
    assert!(e.message.contains("include loop"), "{e}");
}

fn isakmp_events(name: &str) -> Vec<Event> {
    daemon::drive(&daemon::split_datagrams(&seed("isakmp", name)))
}

/// A fresh responder is the same every time, so the captured exchanges take it through
/// Main Mode and Quick Mode again (and the fuzzer mutates whole exchanges).
#[test]
fn isakmp_seeds_replay_whole_exchanges() {
    let child = |events: &[Event]| {
        events
            .iter()
            .any(|e| matches!(e, Event::ChildSaEstablished(_)))
    };
    for name in [
        "quick-mode",
        "quick-mode-on-nat-t-port",
        "quick-mode-ipcomp",
        "quick-mode-tripledes-md5-modp1024",
        "quick-mode-aes256-sha256-modp1536",
    ] {
        let events = isakmp_events(name);
        assert!(child(&events), "{name}: {events:?}");
    }
    let events = isakmp_events("quick-mode-then-delete");
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::ChildSaDeleted {
                reason: DeleteReason::PeerDeleted,
                ..
            }
        )),
        "{events:?}"
    );
    let events = isakmp_events("wrong-psk");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Phase1Established { .. })),
        "{events:?}"
    );
    // Alone, message 1 is answered and goes no further.
    assert!(!child(&isakmp_events("mm1")));
}
