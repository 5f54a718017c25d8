//! The keying daemon's test bench: the responder `Endpoint` the `isakmp` target talks to,
//! the initiator run that captures its seeds, and the directory `secrets` includes from.
//!
//! The responder is made afresh for every input with a fixed rng seed, so its cookies,
//! nonces and Diffie-Hellman values are the same each time: an initiator's messages
//! captured against it once (`capture`) take a fresh responder through Main Mode and Quick
//! Mode again, and the fuzzer mutates a whole exchange, not only its first message.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use ipsec_plugin::config::{Bundle, DhGroup, IkeCipher, IkeHash, IkeProposal};
use ipsec_plugin::crypto::EspTransform;
use ipsec_plugin::ipc::{Message, Sender};
use pluto::{Connection, Endpoint, EndpointConfig, Event, Transmit};

use crate::lab::LOCAL;

/// The peer every datagram comes from (the responder's connection names it).
pub const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const IKE_PORT: u16 = 500;
/// Where IKE floats to with NAT traversal (RFC 3947): also a port the responder may send from.
pub const NAT_T_PORT: u16 = 4500;
/// Distinctive, so that a leak into a datagram or a log line is found by a plain search.
pub const PSK: &[u8] = b"fuzz-psk-7c1e0b9a";
pub const RESPONDER_SEED: u64 = 0x1ce_5eed;
pub const INITIATOR_SEED: u64 = 0x1417;
/// An input is cut into at most this many datagrams.
pub const MAX_DATAGRAMS: usize = 8;
/// Timeouts handled after the datagrams: retransmissions until the exchange gives up,
/// the ISAKMP SA's expiry, a child SA's rekey and its first retries.
pub const MAX_TIMEOUTS: usize = 16;
const ISAKMP_HEADER_LEN: usize = 28;

/// Every phase 1 suite the daemon implements, so that any the fuzzer offers is accepted.
fn every_suite() -> Vec<IkeProposal> {
    let mut v = Vec::new();
    for cipher in IkeCipher::ALL {
        for hash in IkeHash::ALL {
            for group in DhGroup::ALL {
                v.push(IkeProposal {
                    cipher,
                    hash,
                    group,
                });
            }
        }
    }
    v
}

/// The ipsec.cfg bundle of the responder's one connection: transport mode with the peer,
/// ESP aes128-sha1, IPComp accepted, PFS (SPEC §2 defaults otherwise).
pub const RESPONDER_CFG: &str = "[fuzz-responder]\n\
    local = 192.0.2.1\n\
    remote = 198.51.100.2\n\
    esp = aes128-sha1\n\
    ipcomp = deflate\n\
    keying = ike\n\
    pfs = yes\n";

pub fn responder_bundle() -> &'static Bundle {
    static BUNDLE: OnceLock<Bundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let mut cfg = ipsec_plugin::config::parse(RESPONDER_CFG, "fuzz-responder.cfg");
        assert!(cfg.errors.is_empty(), "{:?}", cfg.errors);
        cfg.bundles.remove(0)
    })
}

/// The daemon's connection for [`responder_bundle`], accepting every phase 1 suite, so
/// that any the fuzzer offers is taken.
pub fn responder_connection() -> Connection {
    let mut c = Connection::from_bundle(responder_bundle(), PSK.to_vec()).expect("an IKE bundle");
    c.ike.proposals = every_suite();
    c
}

/// The mirror image, for the initiator that makes the seeds.
pub fn initiator_connection() -> Connection {
    let mut c = Connection::new("fuzz-initiator", PEER, LOCAL, PSK);
    c.esp = EspTransform::from_name("aes128-sha1");
    c.ike.pfs = true;
    c
}

pub fn responder() -> Endpoint {
    let mut e = Endpoint::new(EndpointConfig {
        rng_seed: Some(RESPONDER_SEED),
        ..EndpointConfig::default()
    });
    e.add_connection(responder_connection());
    e
}

fn from_peer() -> SocketAddrV4 {
    SocketAddrV4::new(PEER, IKE_PORT)
}

fn to_us() -> SocketAddrV4 {
    SocketAddrV4::new(LOCAL, IKE_PORT)
}

/// The non-ESP marker that IKE carries on the NAT-T port (RFC 3948 section 2.2).
const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// Cuts an input into datagrams at the lengths their ISAKMP headers give: a capture of an
/// exchange, written back to back, comes apart into its messages. A datagram that starts
/// with the non-ESP marker is one for the NAT-T port, its header after the marker. A
/// length that is not 28 bytes or more and within the rest, or the last of
/// [`MAX_DATAGRAMS`], takes the rest.
pub fn split_datagrams(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let skip = if rest.starts_with(&NON_ESP_MARKER) { NON_ESP_MARKER.len() } else { 0 };
        if out.len() == MAX_DATAGRAMS - 1 || rest.len() < skip + ISAKMP_HEADER_LEN {
            out.push(rest);
            break;
        }
        let h = &rest[skip..];
        let len = skip + u32::from_be_bytes([h[24], h[25], h[26], h[27]]) as usize;
        let len = if (skip + ISAKMP_HEADER_LEN..=rest.len()).contains(&len) {
            len
        } else {
            rest.len()
        };
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    out
}

/// Joins datagrams the way `split_datagrams` takes them apart (for seeds).
pub fn join_datagrams(datagrams: &[Vec<u8>]) -> Vec<u8> {
    datagrams.concat()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What the responder must hold to whatever it is sent.
struct Checker {
    conn: Connection,
    phase1: bool,
    events: Vec<Event>,
}

impl Checker {
    fn transmit(&self, t: &Transmit) {
        assert_eq!(
            *t.from.ip(),
            LOCAL,
            "isakmp: sent from an address that is not ours"
        );
        assert!(
            [IKE_PORT, NAT_T_PORT].contains(&t.from.port()),
            "isakmp: sent from port {}",
            t.from.port()
        );
        assert_eq!(
            *t.to.ip(),
            PEER,
            "isakmp: sent to an address nobody talked to us from"
        );
        // A NAT-T datagram on 4500 starts with the non-ESP marker (RFC 3948 2.2).
        let msg = match t.from.port() {
            NAT_T_PORT if t.payload.starts_with(&[0; 4]) => &t.payload[4..],
            _ => &t.payload[..],
        };
        let header = pluto::wire::Header::new_checked(msg)
            .unwrap_or_else(|e| panic!("isakmp: sent a datagram that is not ISAKMP: {e}"));
        let repr = pluto::wire::HeaderRepr::parse(&header)
            .unwrap_or_else(|e| panic!("isakmp: sent an ISAKMP header it refuses itself: {e}"));
        assert_eq!(
            repr.length as usize,
            msg.len(),
            "isakmp: sent a datagram whose header length is not its size"
        );
        assert!(
            !contains(&t.payload, PSK),
            "isakmp: the pre-shared key went out in a datagram"
        );
    }

    fn event(&mut self, e: Event) {
        let shown = format!("{e:?}");
        assert!(
            !contains(shown.as_bytes(), PSK),
            "isakmp: the pre-shared key is in an event: {shown}"
        );
        match &e {
            Event::Phase1Established { conn, peer, .. } => {
                assert_eq!(
                    (conn.as_str(), *peer.ip()),
                    (self.conn.name.as_str(), PEER),
                    "isakmp: phase 1 for a connection or peer that was not configured"
                );
                self.phase1 = true;
            }
            Event::ChildSaEstablished(c) => {
                assert!(
                    self.phase1,
                    "isakmp: a child SA without an authenticated phase 1"
                );
                assert_eq!(
                    (c.conn.as_str(), c.local, c.remote),
                    (self.conn.name.as_str(), LOCAL, PEER),
                    "isakmp: child SA for another connection"
                );
                // The responder agrees to what its connection allows, nothing else.
                assert_eq!(
                    (c.esp, c.ah),
                    (self.conn.esp, self.conn.ah),
                    "isakmp: child SA with transforms the connection does not allow"
                );
                assert!(
                    !c.ipcomp || self.conn.ipcomp,
                    "isakmp: IPComp the connection does not allow"
                );
                for dir in [&c.keys.inbound, &c.keys.outbound] {
                    assert_eq!(
                        dir.esp.is_some(),
                        c.esp.is_some(),
                        "isakmp: ESP keys iff ESP"
                    );
                    assert_eq!(dir.ah.is_some(), c.ah.is_some(), "isakmp: AH keys iff AH");
                    assert_eq!(
                        dir.ipcomp_cpi.is_some(),
                        c.ipcomp,
                        "isakmp: a CPI iff IPComp"
                    );
                    if let (Some(k), Some(t)) = (&dir.esp, c.esp) {
                        assert_eq!(
                            (k.enc_key.len(), k.auth_key.len()),
                            (t.enc_key_len(), t.auth_key_len()),
                            "isakmp: ESP key lengths"
                        );
                    }
                    if let (Some(k), Some(i)) = (&dir.ah, c.ah) {
                        assert_eq!(k.key.len(), i.key_len(), "isakmp: AH key length");
                    }
                }
                let ours = c.inbound_spis();
                assert!(
                    ours.esp.is_none_or(|s| s >= 0x1000) && ours.ah.is_none_or(|s| s >= 0x1000),
                    "isakmp: an inbound SPI below 0x1000 ({ours})"
                );
                // What the peer agreed to reaches the plugin: the daemon's link messages
                // for it encode and pass the plugin's validation.
                for m in pluto::link::install_messages(c, responder_bundle(), pluto::link::Directions::Both, 7, 1) {
                    check_link_message(&m, "install");
                }
            }
            Event::ChildSaInboundReady(c) => {
                // A responder's inbound SAs, handed over with Quick Mode message 2.
                assert!(self.phase1, "isakmp: inbound SAs without an authenticated phase 1");
                for m in pluto::link::install_messages(c, responder_bundle(), pluto::link::Directions::Inbound, 7, 1) {
                    check_link_message(&m, "install inbound");
                }
            }
            Event::ChildSaDeleted {
                conn,
                peer,
                inbound,
                outbound,
                ..
            } => {
                for m in pluto::link::delete_messages(conn, LOCAL, *peer, inbound, outbound, 8, 1) {
                    check_link_message(&m, "delete");
                }
            }
            _ => {}
        }
        self.events.push(e);
    }

    fn drain(&mut self, ep: &mut Endpoint) {
        while let Some(t) = ep.poll_transmit() {
            self.transmit(&t);
        }
        while let Some(e) = ep.poll_event() {
            self.event(e);
        }
    }
}

fn check_link_message(m: &Message, what: &str) {
    let mut bytes = Vec::new();
    m.encode(&mut bytes).unwrap_or_else(|e| {
        panic!("isakmp: the {what} message for a negotiated SA does not encode: {e} ({m:?})")
    });
    Message::decode_from(&bytes, Sender::Daemon).unwrap_or_else(|e| {
        panic!(
            "isakmp: the plugin would refuse the {what} message for a negotiated SA: {e} ({m:?})"
        )
    });
}

/// A fresh responder given `datagrams` from the peer, then its timeouts one by one; every
/// datagram it sends and every event it reports is checked. Returns the events.
pub fn drive(datagrams: &[&[u8]]) -> Vec<Event> {
    let mut ep = responder();
    let mut check = Checker {
        conn: responder_connection(),
        phase1: false,
        events: Vec::new(),
    };
    let mut now = Instant::now();
    for d in datagrams {
        // IKE behind the marker, and NAT keepalives, arrive on the NAT-T port (the core
        // strips the marker there); everything else on the IKE port.
        let nat_t = d.starts_with(&NON_ESP_MARKER) || *d == [0xff];
        let (from, to) = if nat_t {
            (SocketAddrV4::new(PEER, NAT_T_PORT), SocketAddrV4::new(LOCAL, NAT_T_PORT))
        } else {
            (from_peer(), to_us())
        };
        ep.handle_datagram(now, from, to, d);
        check.drain(&mut ep);
    }
    for _ in 0..MAX_TIMEOUTS {
        let Some(t) = ep.poll_timeout() else { break };
        now = now.max(t);
        ep.handle_timeout(now);
        check.drain(&mut ep);
        if let Some(next) = ep.poll_timeout() {
            assert!(
                next > now,
                "isakmp: poll_timeout is {:?} before the time just handled (a busy loop)",
                now - next
            );
        }
    }
    check.events
}

/// An initiator (`conn`, against the responder's peer address) run against a fresh
/// responder until neither has anything to send; with `delete`, then the initiator
/// deletes the connection. Returns the initiator's datagrams in order and the
/// responder's events. All at one instant, as `drive` replays them.
pub fn capture(conn: &Connection, delete: bool) -> (Vec<Vec<u8>>, Vec<Event>) {
    let mut a = Endpoint::new(EndpointConfig {
        rng_seed: Some(INITIATOR_SEED),
        ..EndpointConfig::default()
    });
    let mut b = responder();
    let now = Instant::now();
    let mut sent = Vec::new();
    let mut events = Vec::new();
    a.initiate(now, conn);
    let mut deleted = !delete;
    loop {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            moved = true;
            sent.push(t.payload.clone());
            b.handle_datagram(now, t.from, t.to, &t.payload);
        }
        while let Some(t) = b.poll_transmit() {
            moved = true;
            a.handle_datagram(now, t.from, t.to, &t.payload);
        }
        while let Some(e) = b.poll_event() {
            events.push(e);
        }
        while a.poll_event().is_some() {}
        if !moved {
            if deleted {
                break;
            }
            a.delete(now, &conn.name);
            deleted = true;
        }
    }
    (sent, events)
}

/// The directory `secrets` parses in: includes name files here (and only here: the target
/// skips inputs that could name a path elsewhere). Made once per process, next to the
/// lab's, and removed the same way once the process is gone.
pub fn secrets_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("ipsec-plugin-fuzz-{}-secrets", std::process::id()));
        crate::lab::remove_stale_dirs();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the secrets directory");
        for (name, text) in SECRETS_FILES {
            std::fs::write(dir.join(name), text).expect("writing a secrets file");
        }
        // A chain deeper than includes may nest.
        for i in 0..=pluto::secrets::MAX_INCLUDE_DEPTH {
            std::fs::write(
                dir.join(format!("chain{i}")),
                format!("include chain{}\n", i + 1),
            )
            .expect("writing a secrets file");
        }
        std::fs::write(
            dir.join(format!("chain{}", pluto::secrets::MAX_INCLUDE_DEPTH + 1)),
            "192.0.2.1 192.0.2.99 : PSK \"deep\"\n",
        )
        .expect("writing a secrets file");
        dir
    })
}

/// The files an input may include (`include peers`, ...), besides `chain0`..`chain11`.
pub const SECRETS_FILES: [(&str, &str); 5] = [
    (
        "peers",
        "192.0.2.1 198.51.100.2 : PSK \"from an include\"\n\
         192.0.2.1 %any : PSK 0x0123_4567_89ab_cdef\n\
         include nested\n",
    ),
    ("nested", "@gw.example.net 192.0.2.1 \"nested\"\n"),
    ("loop", "10.0.0.1 10.0.0.2 : PSK \"x\"\ninclude loop\n"),
    ("broken", "10.0.0.1 : RSA {\n"),
    ("empty", ""),
];

/// The name the fuzzed text is parsed under (in [`secrets_dir`]; never written).
pub fn secrets_path() -> PathBuf {
    secrets_dir().join("isecrets.cfg")
}

// ---------------------------------------------------------------- seeds

/// `keying = ike` bundles of the samples' ipsec.cfg files (`cfg-samples/ike/<scenario>/<machine>/`),
/// named after their file.
fn sample_bundles(samples: &Path) -> Vec<(String, ipsec_plugin::config::Bundle)> {
    let mut out = Vec::new();
    for (name, path) in sample_files(samples, "ipsec.cfg") {
        let text = std::fs::read_to_string(&path).expect("reading a sample ipsec.cfg");
        let cfg = ipsec_plugin::config::parse(&text, &path.to_string_lossy());
        for b in cfg.bundles {
            if matches!(b.keying, ipsec_plugin::config::Keying::Ike(_)) {
                out.push((format!("{name}-{}", b.name), b));
            }
        }
    }
    out
}

/// `<scenario>-<machine>` and the path of each sample's `file`, sorted.
fn sample_files(samples: &Path, file: &str) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(scenarios) = std::fs::read_dir(samples) else {
        return out;
    };
    for scenario in scenarios.flatten().filter(|e| e.path().is_dir()) {
        for machine in std::fs::read_dir(scenario.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = machine.path().join(file);
            if path.is_file() {
                let name = format!(
                    "{}-{}",
                    scenario.file_name().to_string_lossy(),
                    machine.file_name().to_string_lossy()
                );
                out.push((name, path));
            }
        }
    }
    out.sort();
    out
}

/// One message of every exchange of docs/daemon-link.md from the side that sends it (each
/// checked to pass `decode_from` as that side), SPDADDs of the samples' IKE bundles, the
/// plugin's opening sequence as one stream, a foreign version and an unknown extension.
pub fn ipc_seeds(samples: &Path) -> Vec<(String, Vec<u8>)> {
    use ipsec_plugin::crypto::{AeadAlg, CipherAlg, IntegAlg};
    use ipsec_plugin::ipc::{
        Address, AuthAlg, Comb, EncryptAlg, Errno, Extensions, Identity, IdentityType, KeyMaterial,
        Lifetime, Message, MsgType, Proposal, SaExt, SaState, SaType, Sender, SpiRange,
        SupportedAlg, DAEMON_SPI_MIN, SA_FLAG_PFS, SA_FLAG_UDP_ENCAP,
    };
    let (local, peer) = (LOCAL, PEER);
    let msg = |t: MsgType, sa_type: SaType, seq: u32, ext: Extensions| Message {
        ext,
        ..Message::new(t, sa_type, seq, 4242)
    };
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
    let key =
        |n: usize, seed: u8| KeyMaterial::new((0..n).map(|i| seed.wrapping_add(i as u8)).collect());
    let lifetime = |add: u64| Lifetime {
        allocations: 0,
        bytes: 1 << 30,
        addtime: add,
        usetime: 0,
    };
    let gcm = EspTransform::Aead(AeadAlg::AesGcm16_128);
    let cbc = EspTransform::Cipher {
        cipher: CipherAlg::AesCbc128,
        integ: Some(IntegAlg::HmacSha1_96),
    };
    let (p, d) = (Sender::Plugin, Sender::Daemon);
    let none = Extensions::default;
    let mut v: Vec<(Sender, String, Message)> = Vec::new();
    let mut add = |from: Sender, name: &str, m: Message| v.push((from, name.to_owned(), m));

    add(
        p,
        "register",
        msg(
            MsgType::Register,
            SaType::Unspec,
            1,
            Extensions {
                supported_auth: Some(
                    IntegAlg::ALL
                        .map(|i| SupportedAlg {
                            alg: AuthAlg::from(i),
                            iv_len: 0,
                            min_bits: 8 * i.key_len() as u16,
                            max_bits: 8 * i.key_len() as u16,
                        })
                        .to_vec(),
                ),
                supported_encrypt: Some(vec![
                    SupportedAlg {
                        alg: EncryptAlg::AesCbc,
                        iv_len: 16,
                        min_bits: 128,
                        max_bits: 256,
                    },
                    SupportedAlg {
                        alg: EncryptAlg::AesGcm16,
                        iv_len: 8,
                        min_bits: 160,
                        max_bits: 288,
                    },
                ]),
                ..none()
            },
        ),
    );
    add(
        d,
        "register",
        msg(MsgType::Register, SaType::Unspec, 1, none()),
    );
    add(
        p,
        "spdflush",
        msg(MsgType::SpdFlush, SaType::Unspec, 2, none()),
    );
    add(
        d,
        "spdflush",
        msg(MsgType::SpdFlush, SaType::Unspec, 2, none()),
    );
    let bundles = sample_bundles(samples);
    for (i, (name, b)) in bundles.iter().enumerate() {
        let src = b
            .local
            .is_unspecified()
            .then(|| Address::host(Ipv4Addr::new(203, 0, 113, 50)));
        let ext = Extensions {
            policy: Some(b.clone()),
            address_src: src,
            ..none()
        };
        add(
            p,
            &format!("spdadd-{name}"),
            msg(MsgType::SpdAdd, SaType::Unspec, 3 + i as u32, ext),
        );
    }
    add(d, "spdadd", msg(MsgType::SpdAdd, SaType::Unspec, 3, none()));
    let mut refused = msg(MsgType::SpdAdd, SaType::Unspec, 3, none());
    refused.header.errno = Some(Errno::Invalid);
    add(d, "spdadd-einval", refused);
    let bundle_ext = |name: &str| Extensions {
        bundle: Some(name.into()),
        ..none()
    };
    add(
        p,
        "spddelete",
        msg(MsgType::SpdDelete, SaType::Unspec, 9, bundle_ext("road")),
    );
    add(
        p,
        "spddump",
        msg(MsgType::SpdDump, SaType::Unspec, 10, none()),
    );
    if let Some((_, b)) = bundles.first() {
        let ext = Extensions {
            policy: Some(b.clone()),
            ..none()
        };
        add(d, "spddump", msg(MsgType::SpdDump, SaType::Unspec, 10, ext));
    }
    add(
        d,
        "spddump-end",
        msg(MsgType::SpdDump, SaType::Unspec, 10, none()),
    );
    let selector = |addr, port| Address {
        proto: 6,
        prefix_len: 32,
        addr,
        port,
    };
    add(
        p,
        "acquire",
        msg(
            MsgType::Acquire,
            SaType::Unspec,
            11,
            Extensions {
                address_src: Some(selector(Ipv4Addr::new(10, 9, 0, 5), 40000)),
                address_dst: Some(selector(Ipv4Addr::new(10, 1, 0, 1), 443)),
                bundle: Some("road".into()),
                proposal: Some(Proposal {
                    replay_window: 64,
                    combs: vec![Comb {
                        auth: 3,
                        encrypt: 12,
                        auth_min_bits: 160,
                        auth_max_bits: 160,
                        encrypt_min_bits: 128,
                        encrypt_max_bits: 256,
                        hard_addtime: 28800,
                        soft_addtime: 27000,
                        ..Comb::default()
                    }],
                }),
                address_proxy: Some(Address::host(Ipv4Addr::new(203, 0, 113, 5))),
                ..none()
            },
        ),
    );
    let mut failed = msg(MsgType::Acquire, SaType::Unspec, 11, none());
    failed.header.errno = Some(Errno::Access);
    add(d, "acquire-eacces", failed);
    let range = |min, max| Extensions {
        spirange: Some(SpiRange { min, max }),
        ..none()
    };
    add(
        d,
        "getspi-esp",
        msg(
            MsgType::GetSpi,
            SaType::Esp,
            12,
            inbound(range(DAEMON_SPI_MIN, u32::MAX)),
        ),
    );
    add(
        d,
        "getspi-ipcomp",
        msg(
            MsgType::GetSpi,
            SaType::IpComp,
            13,
            inbound(range(0x1000, 0xffff)),
        ),
    );
    add(
        p,
        "getspi",
        msg(
            MsgType::GetSpi,
            SaType::Esp,
            12,
            inbound(Extensions {
                sa: Some(SaExt::bare(0x1234, SaState::Larval)),
                bundle: None,
                ..none()
            }),
        ),
    );
    let mut full = msg(MsgType::GetSpi, SaType::Esp, 12, none());
    full.header.errno = Some(Errno::NoSpace);
    add(p, "getspi-enospc", full);
    add(
        d,
        "update-esp-gcm",
        msg(
            MsgType::Update,
            SaType::Esp,
            11,
            inbound(Extensions {
                sa: Some(SaExt::esp(0x1234, gcm, 64, SA_FLAG_PFS | SA_FLAG_UDP_ENCAP)),
                lifetime_hard: Some(lifetime(7200)),
                lifetime_soft: Some(lifetime(6800)),
                key_encrypt: Some(key(20, 1)),
                identity_src: Some(Identity {
                    kind: IdentityType::Fqdn,
                    id: 0,
                    text: "gw.example.net".into(),
                }),
                identity_dst: Some(Identity {
                    kind: IdentityType::Prefix,
                    id: 0,
                    text: "192.0.2.1/32".into(),
                }),
                ..none()
            }),
        ),
    );
    add(
        d,
        "add-esp-cbc",
        msg(
            MsgType::Add,
            SaType::Esp,
            11,
            outbound(Extensions {
                sa: Some(SaExt::esp(0x5678, cbc, 64, 0)),
                lifetime_hard: Some(lifetime(7200)),
                key_auth: Some(key(20, 2)),
                key_encrypt: Some(key(16, 3)),
                ..none()
            }),
        ),
    );
    add(
        d,
        "add-ah",
        msg(
            MsgType::Add,
            SaType::Ah,
            14,
            outbound(Extensions {
                sa: Some(SaExt::ah(0x9999, IntegAlg::HmacSha256_128, 32, 0)),
                key_auth: Some(key(32, 4)),
                ..none()
            }),
        ),
    );
    add(
        d,
        "update-ipcomp",
        msg(
            MsgType::Update,
            SaType::IpComp,
            15,
            inbound(Extensions {
                sa: Some(SaExt::ipcomp(0x1001, 0)),
                ..none()
            }),
        ),
    );
    let sa_reply = |t, sa, e: fn(Extensions) -> Extensions| {
        msg(
            t,
            SaType::Esp,
            11,
            e(Extensions {
                sa: Some(sa),
                ..Extensions::default()
            }),
        )
    };
    fn inbound_road(e: Extensions) -> Extensions {
        Extensions {
            address_src: Some(Address::host(PEER)),
            address_dst: Some(Address::host(LOCAL)),
            bundle: Some("road".into()),
            ..e
        }
    }
    fn outbound_road(e: Extensions) -> Extensions {
        Extensions {
            address_src: Some(Address::host(LOCAL)),
            address_dst: Some(Address::host(PEER)),
            bundle: Some("road".into()),
            ..e
        }
    }
    add(
        p,
        "update",
        sa_reply(
            MsgType::Update,
            SaExt::esp(0x1234, gcm, 64, 0),
            inbound_road,
        ),
    );
    add(
        p,
        "add",
        sa_reply(MsgType::Add, SaExt::esp(0x5678, cbc, 64, 0), outbound_road),
    );
    let mut exists = msg(MsgType::Update, SaType::Esp, 11, none());
    exists.header.errno = Some(Errno::Exists);
    add(p, "update-eexist", exists);
    for soft in [true, false] {
        let l = Some(lifetime(if soft { 6800 } else { 7200 }));
        let ext = outbound(Extensions {
            sa: Some(SaExt {
                state: if soft { SaState::Dying } else { SaState::Dead },
                ..SaExt::esp(0x5678, cbc, 64, 0)
            }),
            lifetime_current: Some(Lifetime {
                allocations: 1000,
                bytes: 1 << 20,
                addtime: 1_700_000_000,
                usetime: 1_700_000_005,
            }),
            lifetime_soft: if soft { l } else { None },
            lifetime_hard: if soft { None } else { l },
            ..none()
        });
        let name = if soft { "expire-soft" } else { "expire-hard" };
        add(p, name, msg(MsgType::Expire, SaType::Esp, 20, ext));
    }
    let bare = |spi, state| Extensions {
        sa: Some(SaExt::bare(spi, state)),
        ..none()
    };
    add(
        d,
        "delete",
        msg(
            MsgType::Delete,
            SaType::Esp,
            30,
            Extensions {
                bundle: None,
                ..outbound(bare(0x5678, SaState::Dead))
            },
        ),
    );
    add(
        p,
        "delete",
        msg(
            MsgType::Delete,
            SaType::Esp,
            30,
            outbound(bare(0x5678, SaState::Dead)),
        ),
    );
    add(
        d,
        "get",
        msg(
            MsgType::Get,
            SaType::Esp,
            31,
            Extensions {
                bundle: None,
                ..inbound(bare(0x1234, SaState::Mature))
            },
        ),
    );
    add(
        p,
        "get",
        msg(
            MsgType::Get,
            SaType::Esp,
            31,
            inbound(Extensions {
                sa: Some(SaExt::esp(0x1234, gcm, 64, 0)),
                lifetime_current: Some(lifetime(1_700_000_000)),
                lifetime_hard: Some(lifetime(7200)),
                lifetime_soft: Some(lifetime(6800)),
                ..none()
            }),
        ),
    );
    add(d, "flush", msg(MsgType::Flush, SaType::Unspec, 32, none()));
    add(p, "flush", msg(MsgType::Flush, SaType::Unspec, 32, none()));
    add(d, "dump", msg(MsgType::Dump, SaType::Unspec, 33, none()));
    add(
        p,
        "dump",
        msg(
            MsgType::Dump,
            SaType::Esp,
            33,
            inbound(Extensions {
                sa: Some(SaExt::esp(0x1234, gcm, 64, 0)),
                lifetime_current: Some(lifetime(1)),
                ..none()
            }),
        ),
    );
    add(
        p,
        "dump-end",
        msg(MsgType::Dump, SaType::Unspec, 33, none()),
    );

    let mut seeds = Vec::new();
    let mut stream = Vec::new();
    for (from, name, m) in &v {
        let mut bytes = Vec::new();
        m.encode(&mut bytes)
            .unwrap_or_else(|e| panic!("encoding the {name} seed: {e}"));
        Message::decode_from(&bytes, *from)
            .unwrap_or_else(|e| panic!("the {from} {name} seed does not validate: {e}"));
        let sender = match from {
            Sender::Plugin => "plugin",
            Sender::Daemon => "daemon",
        };
        // The plugin's opening sequence, as it goes down a stream.
        if *from == Sender::Plugin
            && (name == "register" || name == "spdflush" || name.starts_with("spdadd-"))
        {
            stream.extend_from_slice(&bytes);
        }
        seeds.push((format!("{sender}-{name}"), bytes));
    }
    seeds.push(("stream-plugin-opening".into(), stream));
    // A plugin of another release: version 2 in the first byte.
    let mut foreign = seeds[0].1.clone();
    foreign[0] = 2;
    seeds.push(("foreign-version".into(), foreign));
    // An extension type this side does not know (12, RFC 2367's SENSITIVITY), which is
    // skipped: a DELETE with one before its SA.
    let (_, delete) = seeds
        .iter()
        .find(|(n, _)| n == "daemon-delete")
        .expect("the delete seed")
        .clone();
    let mut unknown = delete[..16].to_vec();
    unknown.extend_from_slice(&[0, 1, 0, 12, 0, 0, 0, 0]);
    unknown.extend_from_slice(&delete[16..]);
    let words = (unknown.len() / 8) as u16;
    unknown[4..6].copy_from_slice(&words.to_be_bytes());
    Message::decode_from(&unknown, Sender::Daemon).expect("an unknown extension is skipped");
    seeds.push(("daemon-delete-unknown-ext".into(), unknown));
    seeds
}

/// The samples' isecrets.cfg files, and every form and error the format has.
pub fn secrets_seeds(samples: &Path) -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = sample_files(samples, "isecrets.cfg")
        .into_iter()
        .map(|(name, path)| {
            (
                format!("sample-{name}"),
                std::fs::read(path).expect("reading a sample isecrets.cfg"),
            )
        })
        .collect();
    let texts: [(&str, &str); 20] = [
        (
            "forms",
            "# this gateway and its peer\n\
             192.0.2.1 198.51.100.2 : PSK \"shared by two hosts\"\n\
             # an entry may go on over indented lines\n\
             192.0.2.1 gw.example.net\n    203.0.113.7 : PSK 0x6a8f_21c4_55e0_9b3d\n\
             192.0.2.1 0.0.0.0 \"road warriors (old form: no colon, no PSK)\"\n",
        ),
        (
            "include",
            "192.0.2.1 198.51.100.9 : PSK \"top\"\ninclude peers\n10.0.0.1 10.0.0.2 : PSK \"after\"\n",
        ),
        ("include-quoted", "include \"nested\"\n"),
        ("include-loop", "include loop\n"),
        ("include-deep", "include chain0\n"),
        ("include-broken", "include broken\n"),
        ("include-missing", "include missing\n"),
        ("include-empty", "include empty\n: PSK \"default\"\n"),
        (
            "names-ids-any",
            "gw.example.net 192.0.2.1 : PSK \"by name\"\n\
             @east.example.net 192.0.2.1 : PSK \"by id\"\n\
             %any 192.0.2.1: PSK \"any\"\n\
             192.0.2.1 198.51.100.2 gw.example.net : psk \"three indices\"\n",
        ),
        (
            "ranks",
            ": PSK \"default for everyone\"\n\
             127.0.0.1 198.51.100.2 \"dynamic local\"\n\
             198.51.100.2 : PSK \"lone peer\"\n\
             192.0.2.1 : PSK \"lone local\"\n\
             0.0.0.0 : PSK \"any alone\"\n\
             192.0.2.1 %any : PSK \"road warrior\"\n\
             192.0.2.1 198.51.100.2 : PSK \"exact\"\n\
             198.51.100.2 192.0.2.1 : PSK \"exact, later\"\n",
        ),
        (
            "continuation-comments",
            "192.0.2.1\n\n  # a comment inside an entry\n    198.51.100.2\n\t: PSK 0xDEAD_beef\n#end\n",
        ),
        (
            "escapes",
            "192.0.2.1 198.51.100.2 : PSK \"a \\\"quoted\\\" \\\\ secret # not a comment \\n\"\n",
        ),
        ("crlf", "192.0.2.1 198.51.100.2 : PSK \"windows\"\r\n10.0.0.1 10.0.0.2 \"x\"\r\n"),
        ("rsa", "192.0.2.1 : RSA {\n    Modulus: 0x00\n    }\n"),
        ("unterminated", "192.0.2.1 198.51.100.2 : PSK \"open\n"),
        ("indented-first", "  192.0.2.1 198.51.100.2 : PSK \"x\"\n"),
        ("bad-quad", "192.0.2.256 : PSK \"x\"\n010.0.0.1 : PSK \"y\"\n"),
        ("bad-hex", "192.0.2.1 : PSK 0xabc\n192.0.2.2 : PSK 0xzz\n"),
        ("no-secret", "192.0.2.1 198.51.100.2 :\n"),
        ("trailing", "192.0.2.1 : PSK \"x\" extra\n"),
    ];
    for (name, text) in texts {
        seeds.push((name.to_owned(), text.as_bytes().to_vec()));
    }
    seeds
}

/// An initiator's datagrams to the responder, for whole exchanges (checked to take a fresh
/// responder to a child SA) and a few that fail on purpose.
pub fn isakmp_seeds() -> Vec<(String, Vec<u8>)> {
    let established = |events: &[Event]| {
        events
            .iter()
            .any(|e| matches!(e, Event::ChildSaEstablished(_)))
    };
    let mut seeds = Vec::new();
    let base = initiator_connection();
    let (sent, events) = capture(&base, false);
    assert!(
        established(&events),
        "the seed exchange did not establish: {events:?}"
    );
    seeds.push(("mm1".to_owned(), sent[0].clone()));
    seeds.push(("main-mode".to_owned(), join_datagrams(&sent[..3])));
    seeds.push(("quick-mode".to_owned(), join_datagrams(&sent)));
    // The same exchange on the NAT-T port, each message behind the non-ESP marker.
    let on_nat_t: Vec<Vec<u8>> = sent.iter().map(|d| [&NON_ESP_MARKER[..], d].concat()).collect();
    seeds.push(("quick-mode-on-nat-t-port".to_owned(), join_datagrams(&on_nat_t)));
    let (sent, events) = capture(&base, true);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::ChildSaDeleted { .. })),
        "the delete seed did not delete: {events:?}"
    );
    seeds.push(("quick-mode-then-delete".to_owned(), join_datagrams(&sent)));
    for (cipher, hash, group) in [
        (IkeCipher::TripleDes, IkeHash::Md5, DhGroup::Modp1024),
        (IkeCipher::Aes256, IkeHash::Sha256, DhGroup::Modp1536),
    ] {
        let mut c = initiator_connection();
        c.ike.proposals = vec![IkeProposal {
            cipher,
            hash,
            group,
        }];
        let (sent, events) = capture(&c, false);
        assert!(
            established(&events),
            "{cipher:?}-{hash:?}-{group:?}: {events:?}"
        );
        seeds.push((
            format!("quick-mode-{cipher:?}-{hash:?}-{group:?}").to_lowercase(),
            join_datagrams(&sent),
        ));
    }
    let mut c = initiator_connection();
    c.ipcomp = true;
    let (sent, events) = capture(&c, false);
    assert!(established(&events), "ipcomp: {events:?}");
    seeds.push(("quick-mode-ipcomp".to_owned(), join_datagrams(&sent)));
    let mut c = initiator_connection();
    c.ike.pfs = false;
    seeds.push((
        "quick-mode-no-pfs".to_owned(),
        join_datagrams(&capture(&c, false).0),
    ));
    let mut c = initiator_connection();
    c.ike.proposals = every_suite();
    seeds.push((
        "mm1-every-suite".to_owned(),
        capture(&c, false).0[0].clone(),
    ));
    let mut c = initiator_connection();
    c.psk = b"not the responder's key".to_vec();
    seeds.push((
        "wrong-psk".to_owned(),
        join_datagrams(&capture(&c, false).0),
    ));
    seeds
}
