//! Data-plane throughput: one packet goes outbound through plugin A and inbound through
//! plugin B (the full per-packet work of both ends), per suite, at 64 and 1400 bytes of
//! IP packet. Prints packets/s and Gbit/s of plaintext, beside `openssl speed` for the same
//! cipher on this machine.
//!
//! Run: `cargo bench -p ipsec-plugin --bench throughput` (add `-- SECONDS` to change the
//! measuring time per case, default 1).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipsec_plugin::{Direction, Host, Options, PacketBuf, Plugin, Verdict};

struct QuietHost;

impl Host for QuietHost {
    fn output_window(&self, _: &str) {}
    fn now_ms(&self) -> u64 {
        0
    }
    fn emit_packet(&self, _: Direction, _: &[u8]) {}
}

struct Suite {
    name: &'static str,
    cfg: &'static str,
    /// `openssl speed -evp` names to print beside it.
    openssl: &'static [&'static str],
    /// Also measure `outbound_batch` (where multi-buffer CBC applies).
    batch: bool,
}

const SUITES: &[Suite] = &[
    Suite { name: "esp aes128-sha1", cfg: "esp = aes128-sha1", openssl: &["aes-128-cbc", "aes-128-cbc-hmac-sha1"], batch: true },
    Suite { name: "esp aes256-sha256", cfg: "esp = aes256-sha256", openssl: &["aes-256-cbc", "aes-256-cbc-hmac-sha256"], batch: true },
    Suite { name: "esp aes128gcm16", cfg: "esp = aes128gcm16", openssl: &["aes-128-gcm"], batch: false },
    Suite { name: "esp aes256gcm16", cfg: "esp = aes256gcm16", openssl: &["aes-256-gcm"], batch: false },
    Suite { name: "esp 3des-sha1", cfg: "esp = 3des-sha1", openssl: &["des-ede3-cbc"], batch: false },
    Suite { name: "esp null-sha1", cfg: "esp = null-sha1", openssl: &[], batch: false },
    Suite { name: "ah sha1", cfg: "ah = sha1", openssl: &[], batch: false },
    Suite { name: "esp aes128-sha1 + ah sha256", cfg: "esp = aes128-sha1\nah = sha256", openssl: &[], batch: true },
    Suite { name: "ipcomp + esp aes128-sha1", cfg: "ipcomp = deflate\nesp = aes128-sha1", openssl: &[], batch: true },
];

fn hex(n: usize, seed: u8) -> String {
    let mut s = String::from("0x");
    for i in 0..n {
        s.push_str(&format!("{:02x}", (i as u8).wrapping_mul(31).wrapping_add(seed) | 1));
    }
    s
}

/// Key lines for one side; `mirror` swaps in and out.
fn keys(suite: &str, mirror: bool) -> String {
    let (o, i) = if mirror { ("in", "out") } else { ("out", "in") };
    let mut k = String::new();
    for line in suite.lines() {
        let (key, value) = line.split_once('=').map(|(a, b)| (a.trim(), b.trim())).unwrap_or(("", ""));
        match key {
            "esp" => {
                let t = ipsec_plugin::crypto::EspTransform::from_name(value).expect("suite");
                k += &format!("esp_spi_{o} = 0x1001\nesp_spi_{i} = 0x1002\n");
                if t.enc_key_len() > 0 {
                    k += &format!("esp_enc_key_{o} = {}\nesp_enc_key_{i} = {}\n", hex(t.enc_key_len(), 1), hex(t.enc_key_len(), 2));
                }
                if t.auth_key_len() > 0 {
                    k += &format!("esp_auth_key_{o} = {}\nesp_auth_key_{i} = {}\n", hex(t.auth_key_len(), 3), hex(t.auth_key_len(), 4));
                }
            }
            "ah" => {
                let a = ipsec_plugin::crypto::IntegAlg::from_name(value).expect("suite");
                k += &format!("ah_spi_{o} = 0x2001\nah_spi_{i} = 0x2002\n");
                k += &format!("ah_key_{o} = {}\nah_key_{i} = {}\n", hex(a.key_len(), 5), hex(a.key_len(), 6));
            }
            _ => {}
        }
    }
    k
}

fn open(dir: &Path, suite: &Suite, local: &str, remote: &str, mirror: bool) -> Plugin {
    std::fs::create_dir_all(dir).expect("temp dir");
    let aead = suite.cfg.contains("gcm");
    let keying = if aead { "keying = ike\n".to_string() } else { keys(suite.cfg, mirror) };
    let cfg = format!("[bench]\nlocal = {local}\nremote = {remote}\nmode = tunnel\n{}\n{keying}", suite.cfg);
    std::fs::write(dir.join("ipsec.cfg"), cfg).expect("write cfg");
    let options = Options { config_path: dir.to_path_buf(), log_path: None, log_max_bytes: 0, debug: false };
    let (plugin, errors) = Plugin::open(options, Arc::new(QuietHost)).expect("open plugin");
    assert_eq!(errors, 0, "bench config has errors");
    if aead {
        plugin.install_keys("bench", &keys(suite.cfg, mirror)).expect("install keys");
    }
    plugin
}

/// An IPv4/UDP packet of `len` bytes with a text-like payload (so IPComp has work to do).
fn packet(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&Ipv4Addr::new(192, 0, 2, 1).octets());
    p[16..20].copy_from_slice(&Ipv4Addr::new(192, 0, 2, 2).octets());
    let sum = ipsec_plugin::wire::checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20..22].copy_from_slice(&5000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5001u16.to_be_bytes());
    p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = b"the quick brown fox jumps over the lazy dog "[i % 44];
    }
    p
}

fn measure(a: &Plugin, b: &Plugin, len: usize, time: Duration) -> (f64, f64) {
    const HEAD: usize = 256;
    let plain = packet(len);
    let mut buf = vec![0u8; HEAD + len + 256];
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < time {
        for _ in 0..256 {
            buf[HEAD..HEAD + len].copy_from_slice(&plain);
            let mut pkt = PacketBuf { buf: &mut buf, offset: HEAD, len };
            assert_eq!(a.outbound(&mut pkt), Verdict::Transformed);
            assert_eq!(b.inbound(&mut pkt), Verdict::Transformed);
            n += 1;
        }
    }
    // The last round trip must give the packet back, or the figures mean nothing.
    buf[HEAD..HEAD + len].copy_from_slice(&plain);
    let mut pkt = PacketBuf { buf: &mut buf, offset: HEAD, len };
    a.outbound(&mut pkt);
    b.inbound(&mut pkt);
    assert_eq!(&pkt.buf[pkt.offset..pkt.offset + pkt.len], &plain[..], "round trip changed the packet");
    let secs = start.elapsed().as_secs_f64();
    let pps = n as f64 / secs;
    (pps, pps * len as f64 * 8.0 / 1e9)
}

/// The same through `outbound_batch` with 32 packets per call (multi-buffer CBC).
fn measure_batch(a: &Plugin, b: &Plugin, len: usize, time: Duration) -> (f64, f64) {
    const HEAD: usize = 256;
    const BATCH: usize = 32;
    let plain = packet(len);
    let mut bufs = vec![vec![0u8; HEAD + len + 256]; BATCH];
    let mut verdicts = [Verdict::Drop; BATCH];
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < time {
        for _ in 0..8 {
            for buf in bufs.iter_mut() {
                buf[HEAD..HEAD + len].copy_from_slice(&plain);
            }
            let mut pkts: Vec<PacketBuf<'_>> = bufs.iter_mut().map(|b| PacketBuf { buf: &mut b[..], offset: HEAD, len }).collect();
            a.outbound_batch(&mut pkts, &mut verdicts);
            for pkt in pkts.iter_mut() {
                assert_eq!(b.inbound(pkt), Verdict::Transformed);
            }
            assert!(verdicts.iter().all(|v| *v == Verdict::Transformed));
            assert_eq!(&pkts[BATCH - 1].buf[pkts[BATCH - 1].offset..][..len], &plain[..], "round trip changed the packet");
            n += BATCH as u64;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let pps = n as f64 / secs;
    (pps, pps * len as f64 * 8.0 / 1e9)
}

/// `openssl speed -evp CIPHER -bytes N` for one size, in Gbit/s, if openssl is there.
/// N is rounded up to whole AES blocks: openssl's stitched CBC-HMAC ciphers report
/// meaningless figures for other sizes.
fn openssl_speed(cipher: &str, bytes: usize) -> Option<f64> {
    let bytes = bytes.div_ceil(16) * 16;
    let out = Command::new("openssl")
        .args(["speed", "-evp", cipher, "-bytes", &bytes.to_string(), "-seconds", "1"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The last line is "<name> <rate>k" with the rate in 1000s of bytes per second.
    let last = text.lines().rev().find(|l| l.trim_end().ends_with('k'))?;
    let rate: f64 = last.split_whitespace().last()?.trim_end_matches('k').parse().ok()?;
    Some(rate * 1000.0 * 8.0 / 1e9)
}

fn main() {
    let secs: f64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1.0);
    let time = Duration::from_secs_f64(secs);
    let dir = std::env::temp_dir().join(format!("ipsec-bench-{}", std::process::id()));
    println!("outbound (A) + inbound (B) per packet, one thread, {secs} s per case;");
    println!("Gbit/s counts each plaintext packet once, though both ends' work is in it.");
    println!("openssl speed encrypts only (one direction), for the same cipher on this machine.");
    println!("{:<30} {:>6} {:>12} {:>9}   openssl speed (same cipher, 1 thread)", "suite", "bytes", "packets/s", "Gbit/s");
    for suite in SUITES {
        let a = open(&dir.join("a"), suite, "192.0.2.1", "192.0.2.2", false);
        let b = open(&dir.join("b"), suite, "192.0.2.2", "192.0.2.1", true);
        for len in [64usize, 1400] {
            let (pps, gbps) = measure(&a, &b, len, time);
            let reference: Vec<String> = suite
                .openssl
                .iter()
                .map(|c| match openssl_speed(c, len) {
                    Some(g) => format!("{c} {g:.2} Gbit/s ({} B)", len.div_ceil(16) * 16),
                    None => format!("{c} n/a"),
                })
                .collect();
            println!("{:<30} {:>6} {:>12.0} {:>9.3}   {}", suite.name, len, pps, gbps, reference.join(", "));
            if suite.batch {
                let (pps, gbps) = measure_batch(&a, &b, len, time);
                println!("{:<30} {:>6} {:>12.0} {:>9.3}", format!("{} batch32", suite.name), len, pps, gbps);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
