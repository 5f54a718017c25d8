//! The fuzzers' test bench: one configuration that covers every kind of bundle, its mirror
//! image for the peer, and two plugin instances opened on them once per process.
//!
//! `local` (192.0.2.1) is the instance under test; `peer` is every bundle's other end in one
//! instance, used to make valid protected packets (seeds, round trips). Keys and SPIs are
//! derived from the bundle names, so the harness can also seal packets itself (`seal`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use ipsec_plugin::crypto::{EspTransform, IntegAlg};
use ipsec_plugin::wire::{icmp, ipv4, IpProtocol};
use ipsec_plugin::{Direction, Host, Options, Plugin};

/// The address of the instance under test.
pub const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// A fixed clock: lifetimes never run out and log floods fold, so runs stay comparable.
pub const NOW_MS: u64 = 1_700_000_000_000;

/// One `[name]` section, described once and rendered for either end.
pub struct Spec {
    pub name: &'static str,
    /// `local = 0.0.0.0` on our side: the dynamic address, never connected here.
    pub dynamic: bool,
    pub remote: Ipv4Addr,
    /// (our subnet, the peer's subnet) for tunnel mode.
    pub tunnel: Option<(&'static str, &'static str)>,
    pub protocol: Option<&'static str>,
    /// The peer's port (our `remote_port`).
    pub remote_port: Option<u16>,
    pub esp: Option<&'static str>,
    pub ah: Option<&'static str>,
    pub ipcomp: bool,
    /// `keying = ike`; `install` says whether keys are installed after opening.
    pub ike: bool,
    pub install: bool,
    pub replay: Option<u32>,
    pub udp_encap: bool,
    /// SPIs: ESP out/in = base, base+1; AH out/in = base+2, base+3; CPI out/in = base+4, +5.
    pub spi_base: u32,
}

const fn spec(name: &'static str, remote: [u8; 4], spi_base: u32) -> Spec {
    Spec {
        name,
        dynamic: false,
        remote: Ipv4Addr::new(remote[0], remote[1], remote[2], remote[3]),
        tunnel: None,
        protocol: None,
        remote_port: None,
        esp: None,
        ah: None,
        ipcomp: false,
        ike: false,
        install: false,
        replay: None,
        udp_encap: false,
        spi_base,
    }
}

/// File order matters: `nested-inner` comes before `nested-outer` so that outbound the inner
/// ESP is applied first and the result is then tunnelled (docs/ipsec-cfg.md, nested bundles).
pub static SPECS: [Spec; 14] = [
    Spec {
        esp: Some("aes128-sha1"),
        replay: Some(64),
        ..spec("esp-transport", [192, 0, 2, 2], 0x100)
    },
    Spec {
        esp: Some("aes256-sha256"),
        ah: Some("sha1"),
        replay: Some(32),
        ..spec("esp-ah-transport", [192, 0, 2, 3], 0x110)
    },
    Spec {
        ah: Some("md5"),
        protocol: Some("tcp"),
        remote_port: Some(80),
        ..spec("ah-tcp80", [192, 0, 2, 4], 0x120)
    },
    Spec {
        tunnel: Some(("10.1.0.0/24", "10.2.0.0/24")),
        esp: Some("3des-sha256"),
        ipcomp: true,
        replay: Some(128),
        ..spec("gw-tunnel-ipcomp", [192, 0, 2, 5], 0x130)
    },
    Spec {
        tunnel: Some(("10.1.1.0/24", "10.3.0.0/16")),
        esp: Some("aes192-md5"),
        udp_encap: true,
        replay: Some(4096),
        ..spec("natt-tunnel", [192, 0, 2, 6], 0x140)
    },
    Spec {
        esp: Some("aes128gcm16"),
        ike: true,
        install: true,
        ..spec("gcm-ike", [192, 0, 2, 7], 0x150)
    },
    Spec {
        tunnel: Some(("10.1.2.0/24", "10.7.0.0/24")),
        esp: Some("aes256gcm16"),
        ipcomp: true,
        udp_encap: true,
        ike: true,
        install: true,
        ..spec("gcm-ike-tunnel-natt", [192, 0, 2, 8], 0x160)
    },
    Spec {
        esp: Some("aes128-sha1"),
        ike: true,
        ..spec("ike-pending", [192, 0, 2, 9], 0x170)
    },
    Spec {
        esp: Some("des-sha1"),
        protocol: Some("udp"),
        replay: Some(16),
        ..spec("nested-inner", [10, 4, 0, 5], 0x180)
    },
    Spec {
        tunnel: Some(("", "10.4.0.0/24")),
        esp: Some("aes128-sha1"),
        ..spec("nested-outer", [192, 0, 2, 10], 0x190)
    },
    Spec {
        esp: Some("null-sha256"),
        ah: Some("sha256"),
        ..spec("null-esp-ah", [192, 0, 2, 11], 0x1a0)
    },
    // No integrity: the fuzzer's own ciphertext reaches decryption, the trailer check and
    // the inner packet without a valid ICV.
    Spec {
        tunnel: Some(("10.1.3.0/24", "10.8.0.0/24")),
        esp: Some("aes128-none"),
        ..spec("noauth-tunnel", [192, 0, 2, 12], 0x1b0)
    },
    Spec {
        dynamic: true,
        esp: Some("aes128-sha1"),
        ..spec("dynamic", [192, 0, 2, 13], 0x1c0)
    },
    Spec {
        tunnel: Some(("10.1.4.0/24", "10.9.0.0/24")),
        esp: Some("3des-md5"),
        ah: Some("sha256"),
        ipcomp: true,
        replay: Some(1),
        ..spec("esp-ah-ipcomp-tunnel", [192, 0, 2, 14], 0x1d0)
    },
];

/// Which way key material flows: from us to the peer, or back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    LocalToPeer,
    PeerToLocal,
}

/// The keys and SPIs of one direction of a bundle.
pub struct DirKeys {
    pub esp_spi: u32,
    pub esp_enc: Vec<u8>,
    pub esp_auth: Vec<u8>,
    pub ah_spi: u32,
    pub ah_key: Vec<u8>,
    pub cpi: u16,
}

impl Spec {
    pub fn esp_transform(&self) -> Option<EspTransform> {
        self.esp.and_then(EspTransform::from_name)
    }

    pub fn ah_alg(&self) -> Option<IntegAlg> {
        self.ah.and_then(IntegAlg::from_name)
    }

    pub fn keys(&self, flow: Flow) -> DirKeys {
        let off = if flow == Flow::LocalToPeer { 0 } else { 1 };
        let t = self.esp_transform();
        let tag = if flow == Flow::LocalToPeer {
            "out"
        } else {
            "in"
        };
        DirKeys {
            esp_spi: self.spi_base + off,
            esp_enc: key_bytes(
                self.name,
                &format!("enc-{tag}"),
                t.map_or(0, |t| t.enc_key_len()),
            ),
            esp_auth: key_bytes(
                self.name,
                &format!("auth-{tag}"),
                t.map_or(0, |t| t.auth_key_len()),
            ),
            ah_spi: self.spi_base + 2 + off,
            ah_key: key_bytes(
                self.name,
                &format!("ah-{tag}"),
                self.ah_alg().map_or(0, |a| a.key_len()),
            ),
            cpi: (self.spi_base + 4 + off) as u16,
        }
    }

    /// This end's address as the peer sees it (`LOCAL` also for the dynamic bundle, whose
    /// peer is configured with the address the dialer would get).
    pub fn addrs(&self, flow: Flow) -> (Ipv4Addr, Ipv4Addr) {
        match flow {
            Flow::LocalToPeer => (LOCAL, self.remote),
            Flow::PeerToLocal => (self.remote, LOCAL),
        }
    }

    /// The `key = value` key lines of one end: `out` keys are what it sends with.
    pub fn key_lines(&self, mirrored: bool) -> String {
        let (out, inb) = if mirrored {
            (self.keys(Flow::PeerToLocal), self.keys(Flow::LocalToPeer))
        } else {
            (self.keys(Flow::LocalToPeer), self.keys(Flow::PeerToLocal))
        };
        let mut s = String::new();
        if let Some(t) = self.esp_transform() {
            for (dir, k) in [("out", &out), ("in", &inb)] {
                s += &format!("esp_spi_{dir} = 0x{:x}\n", k.esp_spi);
                if t.enc_key_len() > 0 {
                    s += &format!("esp_enc_key_{dir} = 0x{}\n", hex(&k.esp_enc));
                }
                if t.auth_key_len() > 0 {
                    s += &format!("esp_auth_key_{dir} = 0x{}\n", hex(&k.esp_auth));
                }
            }
        }
        if self.ah_alg().is_some() {
            for (dir, k) in [("out", &out), ("in", &inb)] {
                s += &format!(
                    "ah_spi_{dir} = 0x{:x}\nah_key_{dir} = 0x{}\n",
                    k.ah_spi,
                    hex(&k.ah_key)
                );
            }
        }
        if self.ipcomp {
            s += &format!(
                "ipcomp_cpi_out = {}\nipcomp_cpi_in = {}\n",
                out.cpi, inb.cpi
            );
        }
        s
    }

    /// The section for our end (`mirrored == false`) or for the peer's.
    fn section(&self, mirrored: bool) -> String {
        let ours = if self.dynamic {
            Ipv4Addr::UNSPECIFIED
        } else {
            LOCAL
        };
        let (local, remote) = if mirrored {
            (self.remote, LOCAL)
        } else {
            (ours, self.remote)
        };
        let mut s = format!("[{}]\nlocal = {local}\nremote = {remote}\n", self.name);
        match self.tunnel {
            Some((our_net, their_net)) => {
                let (l, r) = if mirrored {
                    (their_net, our_net)
                } else {
                    (our_net, their_net)
                };
                s += "mode = tunnel\n";
                if !l.is_empty() {
                    s += &format!("local_subnet = {l}\n");
                }
                if !r.is_empty() {
                    s += &format!("remote_subnet = {r}\n");
                }
            }
            None => s += "mode = transport\n",
        }
        if let Some(p) = self.protocol {
            s += &format!("protocol = {p}\n");
        }
        if let Some(port) = self.remote_port {
            s += &format!(
                "{} = {port}\n",
                if mirrored {
                    "local_port"
                } else {
                    "remote_port"
                }
            );
        }
        if let Some(e) = self.esp {
            s += &format!("esp = {e}\n");
        }
        if let Some(a) = self.ah {
            s += &format!("ah = {a}\n");
        }
        if self.ipcomp {
            s += "ipcomp = deflate\n";
        }
        if let Some(w) = self.replay {
            s += &format!("replay_window = {w}\n");
        }
        if self.udp_encap {
            s += "udp_encap = yes\n";
        }
        if self.ike {
            s += "keying = ike\n";
        } else {
            s += "keying = manual\n";
            s += &self.key_lines(mirrored);
        }
        s
    }
}

/// The whole `ipsec.cfg` of our end or of the peer.
pub fn config_text(mirrored: bool) -> String {
    let mut s = String::from("; generated by fuzz/src/lab.rs\n");
    for spec in &SPECS {
        s += "\n";
        s += &spec.section(mirrored);
    }
    s
}

/// Deterministic key bytes for a bundle and purpose (FNV-1a seeded xorshift): the same on
/// every run, different for every key.
fn key_bytes(bundle: &str, purpose: &str, len: usize) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bundle.bytes().chain([b'/']).chain(purpose.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..len)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            (h >> 24) as u8
        })
        .collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The host the instances run in. Packets the plugin generates (ICMP "fragmentation
/// needed") are checked here: they must be well-formed.
pub struct FuzzHost;

impl Host for FuzzHost {
    fn output_window(&self, _line: &str) {}

    fn now_ms(&self) -> u64 {
        NOW_MS
    }

    fn emit_packet(&self, _direction: Direction, packet: &[u8]) {
        let ip = ipv4::Packet::new_checked(packet).expect("plugin emitted a malformed IPv4 packet");
        assert!(
            ip.verify_checksum(),
            "plugin emitted an IPv4 header with a bad checksum"
        );
        assert_eq!(
            usize::from(ip.total_len()),
            packet.len(),
            "emitted packet length"
        );
        assert_eq!(
            ip.next_header(),
            IpProtocol::Icmp,
            "the plugin only generates ICMP"
        );
        let msg = icmp::Packet::new_checked(ip.payload())
            .expect("plugin emitted a truncated ICMP message");
        assert!(
            msg.verify_checksum(),
            "plugin emitted an ICMP message with a bad checksum"
        );
    }
}

/// The two instances, opened once per process.
pub struct Lab {
    pub dir: PathBuf,
    pub local: Plugin,
    pub peer: Plugin,
    sealed: AtomicU32,
}

impl Lab {
    /// The sequence number base for the next sealed input: 1, 65, 129, ... (see
    /// `seal::build`). It wraps after 2^26 sealed inputs, about an hour of fuzzing; windows
    /// then drop packets as too old until their top is passed again.
    pub fn next_seq_base(&self) -> u32 {
        1u32.wrapping_add(self.sealed.fetch_add(1, Ordering::Relaxed).wrapping_mul(64))
    }
}

static LAB: OnceLock<Lab> = OnceLock::new();

/// The instances the fuzz targets share.
pub fn lab() -> &'static Lab {
    LAB.get_or_init(Lab::open)
}

impl Lab {
    /// A fresh pair of instances (tests use their own, so that replay windows advanced by
    /// one test do not drop another's packets).
    pub fn open() -> Lab {
        static OPENED: AtomicU32 = AtomicU32::new(0);
        let n = OPENED.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ipsec-plugin-fuzz-{}-{n}", std::process::id()));
        remove_stale_dirs();
        let _ = std::fs::remove_dir_all(&dir);
        let local = open_instance(&dir.join("local"), false);
        let peer = open_instance(&dir.join("peer"), true);
        for spec in SPECS.iter().filter(|s| s.ike && s.install) {
            local
                .install_keys(spec.name, &spec.key_lines(false))
                .unwrap_or_else(|e| panic!("lab keys for [{}]: {e}", spec.name));
            peer.install_keys(spec.name, &spec.key_lines(true))
                .unwrap_or_else(|e| panic!("peer keys for [{}]: {e}", spec.name));
        }
        Lab {
            dir,
            local,
            peer,
            sealed: AtomicU32::new(0),
        }
    }
}

fn open_instance(dir: &Path, mirrored: bool) -> Plugin {
    std::fs::create_dir_all(dir).expect("creating the lab directory");
    let cfg = dir.join("ipsec.cfg");
    std::fs::write(&cfg, config_text(mirrored)).expect("writing the lab ipsec.cfg");
    let options = Options {
        config_path: cfg,
        log_path: None,
        // Small, so a long run cannot fill the disk even if folding lets lines through.
        log_max_bytes: 256 * 1024,
        debug: false,
    };
    let (plugin, errors) =
        Plugin::open(options, Arc::new(FuzzHost)).expect("opening the lab instance");
    assert_eq!(
        errors,
        0,
        "the lab ipsec.cfg has errors; see {}",
        dir.join("ipsec.log").display()
    );
    plugin
}

/// Removes the lab directories of fuzzing processes that are gone (libFuzzer exits without
/// running destructors, so each process leaves its directory behind).
pub(crate) fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("ipsec-plugin-fuzz-"))
        else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or(rest);
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// An IPv4 packet without options, for seeds and tests.
pub fn ip_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    dont_frag: bool,
    payload: &[u8],
) -> Vec<u8> {
    let repr = ipv4::Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: payload.len(),
        ttl: 64,
        tos: 0,
        ident: 0x1234,
        dont_frag,
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ipv4::Packet::new_unchecked(&mut buf[..]));
    buf[ipv4::HEADER_LEN..].copy_from_slice(payload);
    buf
}

/// An ICMP echo request with `data_len` bytes of a repetitive (compressible) pattern.
pub fn icmp_echo(data_len: usize) -> Vec<u8> {
    let repr = icmp::Repr::EchoRequest {
        ident: 0x77,
        seq_no: 1,
        data_len,
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    for (i, b) in buf[icmp::HEADER_LEN..].iter_mut().enumerate() {
        *b = b"abcdefgh"[i % 8];
    }
    let mut msg = icmp::Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut msg);
    msg.fill_checksum();
    buf
}

/// A UDP or TCP header (ports only matter to the selectors) followed by `data`.
pub fn l4(proto: IpProtocol, src_port: u16, dst_port: u16, data: &[u8]) -> Vec<u8> {
    let header_len = if proto == IpProtocol::Tcp { 20 } else { 8 };
    let mut buf = vec![0u8; header_len];
    buf[..2].copy_from_slice(&src_port.to_be_bytes());
    buf[2..4].copy_from_slice(&dst_port.to_be_bytes());
    if proto == IpProtocol::Tcp {
        buf[12] = 5 << 4;
        buf[13] = 0x02;
    } else {
        buf[4..6].copy_from_slice(&((header_len + data.len()) as u16).to_be_bytes());
    }
    buf.extend_from_slice(data);
    buf
}

/// A cleartext packet that `spec`'s selectors match, sent by `flow`'s source: between the
/// endpoints in transport mode, between hosts of the two subnets in tunnel mode.
pub fn cleartext_for(spec: &Spec, flow: Flow, data_len: usize) -> Vec<u8> {
    let (mut src, mut dst) = spec.addrs(flow);
    if let Some((ours, theirs)) = spec.tunnel {
        let host = |net: &str, end: Ipv4Addr| match net.split_once('/') {
            Some((a, _)) => {
                let o = a.parse::<Ipv4Addr>().expect("lab subnet").octets();
                Ipv4Addr::new(o[0], o[1], o[2], 9)
            }
            None => end,
        };
        let (ours, theirs) = (host(ours, LOCAL), host(theirs, spec.remote));
        (src, dst) = if flow == Flow::LocalToPeer {
            (ours, theirs)
        } else {
            (theirs, ours)
        };
    }
    let (l4_proto, payload) = match spec.protocol {
        Some("tcp") => (
            IpProtocol::Tcp,
            l4(
                IpProtocol::Tcp,
                40000,
                spec.remote_port.unwrap_or(80),
                &vec![b'x'; data_len],
            ),
        ),
        Some("udp") => (
            IpProtocol::Udp,
            l4(IpProtocol::Udp, 40000, 53, &vec![b'u'; data_len]),
        ),
        _ => (IpProtocol::Icmp, icmp_echo(data_len)),
    };
    let (src, dst, payload) = match (flow, spec.protocol, spec.remote_port) {
        // The peer sends from its port 80.
        (Flow::PeerToLocal, Some("tcp"), Some(port)) => (
            src,
            dst,
            l4(IpProtocol::Tcp, port, 40000, &vec![b'x'; data_len]),
        ),
        _ => (src, dst, payload),
    };
    ip_packet(src, dst, l4_proto, false, &payload)
}
