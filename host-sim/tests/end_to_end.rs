//! host-sim as an operator runs it: the built binary, against the plugin cdylib that
//! `cargo test` builds (host-sim's dev-dependency on ipsec-plugin makes sure of that), on
//! configurations generated here. The plugin is passed with --plugin: the copy in deps/
//! beside this test binary is the one cargo just rebuilt, while target/<profile>/ may hold
//! an older `cargo build` output.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const HOST_SIM: &str = env!("CARGO_BIN_EXE_host-sim");

fn plugin_library() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary directory");
    let candidates = [
        deps.join("libipsec_plugin.so"),
        deps.join("../libipsec_plugin.so"),
    ];
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "the plugin cdylib is not at {}: run `cargo test --workspace` (or `cargo build -p ipsec-plugin`)",
            candidates[0].display()
        )
    })
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("host-sim-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(HOST_SIM)
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("running host-sim")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// Transport-mode ESP aes128-sha1 between 192.0.2.1 and 192.0.2.2, manually keyed; with
/// `b_has_right_keys == false`, b checks a's packets with the wrong integrity key.
fn manual_pair(b_has_right_keys: bool) -> [String; 2] {
    let enc_ab = "0x0123456789abcdef0123456789abcdef";
    let enc_ba = "0xfedcba9876543210fedcba9876543210";
    let auth_ab = "0x00112233445566778899aabbccddeeff00112233";
    let auth_ba = "0xffeeddccbbaa99887766554433221100ffeeddcc";
    let b_auth_in = if b_has_right_keys {
        auth_ab
    } else {
        "0x0000000000000000000000000000000000000001"
    };
    let cfg = |name, local, remote, spi_out, spi_in, enc_out, enc_in, auth_out, auth_in| {
        format!(
            "[{name}]\nlocal = {local}\nremote = {remote}\nmode = transport\nesp = aes128-sha1\n\
             esp_spi_out = {spi_out}\nesp_spi_in = {spi_in}\nesp_enc_key_out = {enc_out}\n\
             esp_enc_key_in = {enc_in}\nesp_auth_key_out = {auth_out}\nesp_auth_key_in = {auth_in}\n"
        )
    };
    [
        cfg(
            "a-to-b", A, B, "0x1001", "0x1002", enc_ab, enc_ba, auth_ab, auth_ba,
        ),
        cfg(
            "b-to-a", B, A, "0x1002", "0x1001", enc_ba, enc_ab, auth_ba, b_auth_in,
        ),
    ]
}

// ---- packets and pcap files, built by hand so the test does not trust host-sim's own ----

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, (seq >> 8) as u8, seq as u8];
    icmp.extend((0..56).map(|i| i as u8));
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, seq as u8, 0, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend(icmp);
    ip
}

/// A big-endian, nanosecond pcap (the reverse of what host-sim writes).
fn pcap_be_ns(link_type: u32, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(0xa1b2_3c4du32.to_be_bytes());
    out.extend(2u16.to_be_bytes());
    out.extend(4u16.to_be_bytes());
    out.extend([0; 8]);
    out.extend(65535u32.to_be_bytes());
    out.extend(link_type.to_be_bytes());
    for (i, frame) in frames.iter().enumerate() {
        out.extend(1_700_000_000u32.to_be_bytes());
        out.extend((i as u32 * 1_000_000).to_be_bytes());
        out.extend((frame.len() as u32).to_be_bytes());
        out.extend((frame.len() as u32).to_be_bytes());
        out.extend(frame);
    }
    out
}

fn ethernet(ip: &[u8]) -> Vec<u8> {
    let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    frame.extend_from_slice(ip);
    frame
}

/// Link type and packets of a little-endian microsecond pcap (what host-sim writes).
fn read_pcap_le(path: &Path) -> (u32, Vec<Vec<u8>>) {
    let bytes = std::fs::read(path).unwrap();
    let le32 = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(le32(0), 0xa1b2_c3d4, "magic");
    let mut records = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let len = le32(at + 8) as usize;
        records.push(bytes[at + 16..at + 16 + len].to_vec());
        at += 16 + len;
    }
    (le32(20), records)
}

// ---- the command line, no plugin needed -------------------------------------------------

#[test]
fn help_is_answered_everywhere() {
    for args in [
        &["--help"][..],
        &["demo", "--help"],
        &["replay", "-h"],
        &["tun", "--help"],
    ] {
        let out = Command::new(HOST_SIM).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            stdout(&out).contains("usage:"),
            "{args:?}: {}",
            stdout(&out)
        );
    }
    let out = Command::new(HOST_SIM)
        .args(["replay", "--help"])
        .output()
        .unwrap();
    assert!(stdout(&out).contains("held packets (waiting for keys) count as dropped"));
    let out = Command::new(HOST_SIM).args(["tun", "-h"]).output().unwrap();
    for command in [
        "connect A.B.C.D",
        "link-down",
        "reload",
        "dump",
        "stats",
        "quit",
    ] {
        assert!(stdout(&out).contains(command), "tun help lacks {command}");
    }
}

#[test]
fn bad_command_lines_exit_2_with_usage() {
    for args in [
        &[][..],
        &["fly"],
        &["demo"],
        &["replay", "--direction", "sideways"],
        &["demo", "x", "--plugin"],
        &["tun", "--config", "c", "--tun", "t"],
        &[
            "tun",
            "--config",
            "c",
            "--tun",
            "t",
            "--outer-if",
            "o",
            "--mtu",
            "9",
        ],
    ] {
        let out = Command::new(HOST_SIM).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains("usage:"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn corrupt_and_missing_inputs_exit_1_with_a_message() {
    let dir = TempDir::new("corrupt");
    let good = pcap_be_ns(101, &[echo_request(A, B, 1)]);
    let truncated = dir.write("truncated.pcap", &good[..good.len() - 5]);
    let output = dir.path("out.pcap");
    let common = |input: &Path| {
        run(&[
            &"replay",
            &"--config",
            &dir.0,
            &"--direction",
            &"out",
            &"--input",
            &input.to_path_buf(),
            &"--output",
            &output,
            &"--plugin",
            &dir.path("no-such-plugin.so"),
        ])
    };
    let out = common(&truncated);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("record 0: truncated"),
        "{}",
        stderr(&out)
    );

    let out = common(&dir.path("missing.pcap"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));

    let intact = dir.write("good.pcap", &good);
    let out = common(&intact);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot load plugin"),
        "{}",
        stderr(&out)
    );

    // tun checks what it was given before it touches the system.
    let cfg = dir.write(
        "cfg/ipsec.cfg",
        "[a]\nlocal = 192.0.2.1\nremote = 192.0.2.2\n",
    );
    let tun = |config: &Path, outer: &str| {
        run(&[
            &"tun",
            &"--config",
            &config.to_path_buf(),
            &"--tun",
            &"hstest0",
            &"--outer-if",
            &outer,
            &"--plugin",
            &dir.path("no-such-plugin.so"),
        ])
    };
    let out = tun(&dir.path("no-cfg"), "lo");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
    let out = tun(&cfg, "no-such-if0");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no interface no-such-if0"),
        "{}",
        stderr(&out)
    );
    let out = tun(&cfg, "lo");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot load plugin"),
        "{}",
        stderr(&out)
    );

    let out = run(&[&"demo", &dir.path("no-scenario")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read scenario"),
        "{}",
        stderr(&out)
    );
}

// ---- against the real plugin ------------------------------------------------------------

#[test]
fn demo_delivers_every_packet_intact_and_shows_the_wire() {
    let dir = TempDir::new("demo");
    let [a, b] = manual_pair(true);
    dir.write("scenario/a/ipsec.cfg", a);
    dir.write("scenario/b/ipsec.cfg", b);
    dir.write("scenario/notes/README", "not a machine: no ipsec.cfg");
    let out = run(&[
        &"demo",
        &dir.path("scenario"),
        &"--plugin",
        &plugin_library(),
        &"--log-dir",
        &dir.path("logs"),
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("delivered 12 of 12 packets intact"), "{text}");
    assert!(
        text.contains("a -> b  192.0.2.1 > 192.0.2.2: ESP(spi=0x00001001,seq=1)"),
        "{text}"
    );
    assert!(
        text.contains("b -> a  192.0.2.2 > 192.0.2.1: ESP(spi=0x00001002,seq=1)"),
        "{text}"
    );
    assert!(
        text.contains("--- a: SA table ---") && text.contains("--- b: SA table ---"),
        "{text}"
    );
    assert!(dir.path("logs/a.log").is_file() && dir.path("logs/b.log").is_file());
    assert!(
        !dir.path("scenario/a/ipsec.log").exists(),
        "--log-dir moves the logs"
    );
}

#[test]
fn demo_routes_between_subnets_through_tunnel_gateways() {
    let dir = TempDir::new("demo-tunnel");
    let gw = |local: &str,
              remote: &str,
              ls: &str,
              rs: &str,
              spi_out: &str,
              spi_in: &str,
              k_out: &str,
              k_in: &str| {
        format!(
            "[net]\nlocal = {local}\nremote = {remote}\nmode = tunnel\nlocal_subnet = {ls}\n\
             remote_subnet = {rs}\nesp = aes256-sha256\nesp_spi_out = {spi_out}\nesp_spi_in = {spi_in}\n\
             esp_enc_key_out = 0x{k_out}\nesp_enc_key_in = 0x{k_in}\n\
             esp_auth_key_out = 0x{k_in}\nesp_auth_key_in = 0x{k_out}\n"
        )
    };
    let (k1, k2) = ("11".repeat(32), "22".repeat(32));
    dir.write(
        "s/west/ipsec.cfg",
        gw(
            "192.0.2.1",
            "192.0.2.2",
            "10.1.0.0/16",
            "10.2.0.0/16",
            "0x2001",
            "0x2002",
            &k1,
            &k2,
        ),
    );
    dir.write(
        "s/east/ipsec.cfg",
        gw(
            "192.0.2.2",
            "192.0.2.1",
            "10.2.0.0/16",
            "10.1.0.0/16",
            "0x2002",
            "0x2001",
            &k2,
            &k1,
        ),
    );
    let out = run(&[
        &"demo",
        &dir.path("s"),
        &"--plugin",
        &plugin_library(),
        &"--log-dir",
        &dir.path("logs"),
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("east         192.0.2.2 gateway for 10.2.0.0/16"),
        "{text}"
    );
    assert!(
        text.contains("west[net]: 10.1.0.1 > 10.2.0.1: ICMP echo request"),
        "{text}"
    );
    assert!(
        text.contains("west -> east  192.0.2.1 > 192.0.2.2: ESP(spi=0x00002001,seq=1)"),
        "{text}"
    );
    assert!(
        text.contains("delivered to 10.2.0.1 behind east intact"),
        "{text}"
    );
    assert!(text.contains("delivered 12 of 12 packets intact"), "{text}");
}

#[test]
fn demo_fails_when_a_packet_is_not_delivered() {
    let dir = TempDir::new("demo-bad-key");
    let [a, b] = manual_pair(false);
    dir.write("scenario/a/ipsec.cfg", a);
    dir.write("scenario/b/ipsec.cfg", b);
    let out = run(&[
        &"demo",
        &dir.path("scenario"),
        &"--plugin",
        &plugin_library(),
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("NOT DELIVERED: drop by b inbound"), "{text}");
    // Everything a sends is lost: its 3 requests (so no replies) and its 3 replies to b.
    assert!(text.contains("delivered 3 of 12 packets intact"), "{text}");
    assert!(
        dir.path("scenario/b/ipsec.log").is_file(),
        "the log goes beside ipsec.cfg by default"
    );
}

#[test]
fn replay_out_then_in_restores_the_packets() {
    let dir = TempDir::new("replay");
    let [a, b] = manual_pair(true);
    dir.write("a/ipsec.cfg", a);
    dir.write("b/ipsec.cfg", b);
    let elsewhere = Ipv4Addr::new(198, 51, 100, 9);
    let plain: Vec<Vec<u8>> = vec![
        echo_request(A, B, 1),
        echo_request(A, elsewhere, 2),
        echo_request(A, B, 3),
        echo_request(A, B, 4),
    ];
    let mut frames: Vec<Vec<u8>> = plain.iter().map(|p| ethernet(p)).collect();
    frames.insert(
        1,
        vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1],
    ); // ARP: skipped
    let input = dir.write("plain.pcap", pcap_be_ns(1, &frames));
    let plugin = plugin_library();

    let wire = dir.path("wire.pcap");
    let out = run(&[
        &"replay",
        &"--config",
        &dir.path("a"),
        &"--direction",
        &"out",
        &"--input",
        &input,
        &"--output",
        &wire,
        &"--plugin",
        &plugin,
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out), "passed 1, transformed 3, dropped 0\n");
    assert!(
        stderr(&out).contains("skipped 1 frames that are not IPv4"),
        "{}",
        stderr(&out)
    );
    let (link_type, protected) = read_pcap_le(&wire);
    assert_eq!(link_type, 101);
    assert_eq!(protected.len(), 4);
    let protocols: Vec<u8> = protected.iter().map(|p| p[9]).collect();
    assert_eq!(protocols, [50, 1, 50, 50], "ESP for b, cleartext elsewhere");
    assert!(
        dir.path("a/ipsec.log").is_file(),
        "the log goes to the config directory"
    );

    let received = dir.path("received.pcap");
    let log = dir.path("b.log");
    let out = run(&[
        &"replay",
        &"--config",
        &dir.path("b/ipsec.cfg"),
        &"--direction",
        &"in",
        &"--input",
        &wire,
        &"--output",
        &received,
        &"--plugin",
        &plugin,
        &"--log",
        &log,
        &"--local",
        &"192.0.2.2",
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out), "passed 1, transformed 3, dropped 0\n");
    assert_eq!(
        read_pcap_le(&received).1,
        plain,
        "byte-identical after out and in"
    );
    assert!(log.is_file(), "--log names the log file");

    // The same wire bytes with one bit flipped in each ESP payload fail authentication.
    let mut tampered = protected.clone();
    for p in tampered.iter_mut().filter(|p| p[9] == 50) {
        let last = p.len() - 1;
        p[last] ^= 1;
    }
    let tampered_in = dir.write("tampered.pcap", pcap_be_ns(101, &tampered));
    let out = run(&[
        &"replay",
        &"--config",
        &dir.path("b"),
        &"--direction",
        &"in",
        &"--input",
        &tampered_in,
        &"--output",
        &received,
        &"--plugin",
        &plugin,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "passed 1, transformed 0, dropped 3\n");
}

#[test]
fn replay_keys_file_keys_an_ike_bundle() {
    let dir = TempDir::new("replay-keys");
    let cfg = |name: &str, local, remote| {
        format!("[{name}]\nlocal = {local}\nremote = {remote}\nesp = aes128gcm16\nkeying = ike\n")
    };
    dir.write("a/ipsec.cfg", cfg("gcm", A, B));
    dir.write("b/ipsec.cfg", cfg("gcm", B, A));
    // AES-128-GCM: 16-byte key + 4-byte salt (RFC 4106).
    let k1 = "0x000102030405060708090a0b0c0d0e0f_10111213";
    let k2 = "0x202122232425262728292a2b2c2d2e2f_30313233";
    let keys_a = dir.write(
        "a.keys",
        format!("[gcm]\nesp_spi_out = 0x1001\nesp_spi_in = 0x1002\nesp_enc_key_out = {k1}\nesp_enc_key_in = {k2}\n"),
    );
    let keys_b = dir.write(
        "b.keys",
        format!("; b's view\n[gcm]\nesp_spi_out = 0x1002\nesp_spi_in = 0x1001\nesp_enc_key_out = {k2}\nesp_enc_key_in = {k1}\n"),
    );
    let packet = echo_request(A, B, 7);
    let input = dir.write("plain.pcap", pcap_be_ns(101, std::slice::from_ref(&packet)));
    let plugin = plugin_library();
    let replay =
        |config: &str, direction: &str, input: &Path, output: &Path, keys: Option<&Path>| {
            let config = dir.path(config);
            let mut cmd = Command::new(HOST_SIM);
            cmd.args(["replay", "--direction", direction, "--config"])
                .arg(config);
            cmd.arg("--input")
                .arg(input)
                .arg("--output")
                .arg(output)
                .arg("--plugin")
                .arg(&plugin);
            if let Some(keys) = keys {
                cmd.arg("--keys").arg(keys);
            }
            cmd.output().unwrap()
        };

    let wire = dir.path("wire.pcap");
    let out = replay("a", "out", &input, &wire, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "passed 0, transformed 0, dropped 1\n",
        "unkeyed: held, counted as dropped"
    );

    let out = replay("a", "out", &input, &wire, Some(&keys_a));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "passed 0, transformed 1, dropped 0\n");
    let received = dir.path("received.pcap");
    let out = replay("b", "in", &wire, &received, Some(&keys_b));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "passed 0, transformed 1, dropped 0\n");
    assert_eq!(read_pcap_le(&received).1, [packet]);

    let bad_keys = dir.write("bad.keys", "[no-such-bundle]\nesp_spi_out = 0x1001\n");
    let out = replay("a", "out", &input, &wire, Some(&bad_keys));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("IPSEC_ERR_NO_SUCH_BUNDLE"),
        "{}",
        stderr(&out)
    );
}
