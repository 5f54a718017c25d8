//! The plugin's end of the keying daemon link against a fake daemon that speaks the codec
//! from the daemon's side: initialization, ACQUIRE, GETSPI, UPDATE/ADD installing SAs that a
//! peer can use, keying failure, DELETE, and reconnecting to a restarted daemon.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipsec_plugin::crypto::EspTransform;
use ipsec_plugin::ipc::{
    self, Address, Errno, KeyMaterial, Message, MsgType, SaExt, SaState, SaType, Sender, SpiRange,
};
use ipsec_plugin::wire::{ipv4, IpProtocol};
use ipsec_plugin::{Direction, Host, Options, PacketBuf, Plugin, Verdict};

struct TestHost {
    emitted: Mutex<Vec<(Direction, Vec<u8>)>>,
    clock: AtomicU64,
}

impl Default for TestHost {
    fn default() -> Self {
        TestHost { emitted: Mutex::default(), clock: AtomicU64::new(1_763_900_000_000) }
    }
}

impl Host for TestHost {
    fn output_window(&self, _: &str) {}
    fn now_ms(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }
    fn emit_packet(&self, direction: Direction, packet: &[u8]) {
        self.emitted.lock().unwrap().push((direction, packet.to_vec()));
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ipsec-link-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn open(dir: &Path, cfg: &str) -> (Plugin, Arc<TestHost>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ipsec.cfg"), cfg).unwrap();
    let host = Arc::new(TestHost::default());
    let options = Options { config_path: dir.to_path_buf(), log_path: None, log_max_bytes: 0, debug: false };
    let (p, errors) = Plugin::open(options, host.clone() as Arc<dyn Host>).unwrap();
    assert_eq!(errors, 0);
    (p, host)
}

const CFG: &str = "
[vpn]
local = 192.0.2.1
remote = 192.0.2.2
esp = aes128-sha1
keying = ike
";

fn read_msg(s: &mut UnixStream) -> Message {
    let mut head = vec![0u8; ipc::HEADER_LEN];
    s.read_exact(&mut head).expect("a message from the plugin");
    let len = ipc::message_len(&head).unwrap().unwrap();
    head.resize(len, 0);
    s.read_exact(&mut head[ipc::HEADER_LEN..]).unwrap();
    Message::decode_from(&head, Sender::Plugin).expect("the plugin sends valid messages")
}

fn send(s: &mut UnixStream, m: &Message) {
    let mut buf = Vec::new();
    m.encode(&mut buf).unwrap();
    s.write_all(&buf).unwrap();
}

fn accept(l: &UnixListener) -> UnixStream {
    l.set_nonblocking(false).unwrap();
    let (s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Reads the initialization: REGISTER, SPDFLUSH, and the bundle.
fn expect_init(s: &mut UnixStream) {
    let register = read_msg(s);
    assert_eq!(register.header.msg_type, MsgType::Register);
    assert!(register.ext.supported_encrypt.as_ref().is_some_and(|v| v.len() >= 5));
    assert_eq!(read_msg(s).header.msg_type, MsgType::SpdFlush);
    let add = read_msg(s);
    assert_eq!(add.header.msg_type, MsgType::SpdAdd);
    assert_eq!(add.ext.policy.as_ref().map(|b| b.name.as_str()), Some("vpn"));
}

fn udp(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; 28 + len];
    ipv4::Repr {
        src_addr: Ipv4Addr::new(192, 0, 2, 1),
        dst_addr: Ipv4Addr::new(192, 0, 2, 2),
        next_header: IpProtocol::Udp,
        payload_len: 8 + len,
        ttl: 64,
        tos: 0,
        ident: 1,
        dont_frag: false,
    }
    .emit(&mut ipv4::Packet::new_unchecked(&mut p[..]));
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5001u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + len) as u16).to_be_bytes());
    p
}

fn hook(plugin: &Plugin, packet: &[u8], outbound: bool) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; 256 + packet.len() + 256];
    buf[256..256 + packet.len()].copy_from_slice(packet);
    let mut pkt = PacketBuf { buf: &mut buf, offset: 256, len: packet.len() };
    let v = if outbound { plugin.outbound(&mut pkt) } else { plugin.inbound(&mut pkt) };
    (v, pkt.buf[pkt.offset..pkt.offset + pkt.len].to_vec())
}

fn sa_message(t: MsgType, seq: u32, spi: u32, src: [u8; 4], dst: [u8; 4], enc: &[u8], auth: &[u8]) -> Message {
    let mut m = Message::new(t, SaType::Esp, seq, 4242);
    m.ext.sa = Some(SaExt::esp(spi, EspTransform::from_name("aes128-sha1").unwrap(), 64, 0));
    m.ext.address_src = Some(Address::host(Ipv4Addr::from(src)));
    m.ext.address_dst = Some(Address::host(Ipv4Addr::from(dst)));
    m.ext.bundle = Some("vpn".into());
    m.ext.key_encrypt = Some(KeyMaterial::from_slice(enc));
    m.ext.key_auth = Some(KeyMaterial::from_slice(auth));
    m
}

const ENC_IN: [u8; 16] = [1; 16];
const AUTH_IN: [u8; 20] = [2; 20];
const ENC_OUT: [u8; 16] = [3; 16];
const AUTH_OUT: [u8; 20] = [4; 20];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn acquire_getspi_update_add_release_the_held_packet() {
    let dir = temp_dir("keying");
    let sock = dir.join("pluto.ctl");
    let listener = UnixListener::bind(&sock).unwrap();
    let (a, host) = open(&dir.join("a"), CFG);
    a.daemon_connect(Some(&sock)).unwrap();
    let mut d = accept(&listener);
    expect_init(&mut d);

    // A packet for the bundle without SAs is held, and the daemon is asked.
    let p = udp(100);
    assert_eq!(hook(&a, &p, true).0, Verdict::Held);
    let acquire = read_msg(&mut d);
    assert_eq!(acquire.header.msg_type, MsgType::Acquire);
    assert_eq!(acquire.ext.bundle.as_deref(), Some("vpn"));
    let src = acquire.ext.address_src.unwrap();
    assert_eq!((src.addr, src.proto, src.port), (Ipv4Addr::new(192, 0, 2, 1), 17, 4000));
    let seq = acquire.header.seq;

    // GETSPI: a free SPI of the daemon's range.
    let mut getspi = Message::new(MsgType::GetSpi, SaType::Esp, seq, 4242);
    getspi.ext.bundle = Some("vpn".into());
    getspi.ext.address_src = Some(Address::host(Ipv4Addr::new(192, 0, 2, 2)));
    getspi.ext.address_dst = Some(Address::host(Ipv4Addr::new(192, 0, 2, 1)));
    getspi.ext.spirange = Some(SpiRange { min: 0x1000, max: 0xFFFF_FFFF });
    send(&mut d, &getspi);
    let reply = read_msg(&mut d);
    assert_eq!(reply.header.errno, None);
    let sa = reply.ext.sa.unwrap();
    assert!(sa.spi >= 0x1000);
    assert_eq!(sa.state, SaState::Larval);
    let spi_in = sa.spi;

    // An UPDATE for an SPI the plugin never handed out is refused.
    send(&mut d, &sa_message(MsgType::Update, seq, 0x7777, [192, 0, 2, 2], [192, 0, 2, 1], &ENC_IN, &AUTH_IN));
    assert_eq!(read_msg(&mut d).header.errno, Some(Errno::NoEntry));

    // Inbound first (UPDATE), then outbound (ADD).
    send(&mut d, &sa_message(MsgType::Update, seq, spi_in, [192, 0, 2, 2], [192, 0, 2, 1], &ENC_IN, &AUTH_IN));
    let r = read_msg(&mut d);
    assert_eq!((r.header.msg_type, r.header.errno), (MsgType::Update, None));
    assert!(r.ext.key_encrypt.is_none(), "keys never flow back");
    assert!(host.emitted.lock().unwrap().is_empty(), "nothing is sent before the outbound SA");
    send(&mut d, &sa_message(MsgType::Add, seq, 0x2000, [192, 0, 2, 1], [192, 0, 2, 2], &ENC_OUT, &AUTH_OUT));
    assert_eq!(read_msg(&mut d).header.errno, None);

    // The held packet went out; a peer with the mirrored keys opens it.
    let emitted = host.emitted.lock().unwrap().clone();
    assert_eq!(emitted.len(), 1);
    assert_eq!(emitted[0].0, Direction::Outbound);
    let peer_cfg = CFG.replace("local = 192.0.2.1", "local = X").replace("remote = 192.0.2.2", "remote = 192.0.2.1").replace("local = X", "local = 192.0.2.2");
    let (b, _) = open(&dir.join("b"), &peer_cfg);
    let keys = format!(
        "esp_spi_in = 0x2000\nesp_enc_key_in = 0x{}\nesp_auth_key_in = 0x{}\nesp_spi_out = 0x{spi_in:x}\nesp_enc_key_out = 0x{}\nesp_auth_key_out = 0x{}\n",
        hex(&ENC_OUT),
        hex(&AUTH_OUT),
        hex(&ENC_IN),
        hex(&AUTH_IN)
    );
    b.install_keys("vpn", &keys).unwrap();
    assert_eq!(hook(&b, &emitted[0].1, false), (Verdict::Transformed, p.clone()));
    // And the way back.
    let back = {
        let mut q = udp(50);
        q[12..16].copy_from_slice(&[192, 0, 2, 2]);
        q[16..20].copy_from_slice(&[192, 0, 2, 1]);
        let mut ip = ipv4::Packet::new_unchecked(&mut q[..]);
        ip.fill_checksum();
        q
    };
    let (v, w) = hook(&b, &back, true);
    assert_eq!(v, Verdict::Transformed);
    assert_eq!(hook(&a, &w, false), (Verdict::Transformed, back));

    // DELETE of the outbound SA: the bundle holds its packets again and asks anew.
    let mut del = Message::new(MsgType::Delete, SaType::Esp, 99, 4242);
    del.ext.sa = Some(SaExt::bare(0x2000, SaState::Mature));
    del.ext.address_src = Some(Address::host(Ipv4Addr::new(192, 0, 2, 1)));
    del.ext.address_dst = Some(Address::host(Ipv4Addr::new(192, 0, 2, 2)));
    send(&mut d, &del);
    assert_eq!(read_msg(&mut d).header.errno, None);
    assert_eq!(hook(&a, &p, true).0, Verdict::Held);
    assert_eq!(read_msg(&mut d).header.msg_type, MsgType::Acquire);

    // Keying fails: the held packet is dropped and the reason logged.
    let mut fail = Message::new(MsgType::Acquire, SaType::Unspec, 100, 4242);
    fail.header.errno = Some(Errno::Access);
    fail.ext.bundle = Some("vpn".into());
    send(&mut d, &fail);
    let log = dir.join("a/ipsec.log");
    wait_for(|| std::fs::read_to_string(&log).unwrap_or_default().contains("held packets dropped: the peer failed authentication"));
}

fn wait_for(cond: impl Fn() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting");
}

#[test]
fn a_restarted_daemon_is_initialized_without_pinit() {
    let dir = temp_dir("restart");
    let sock = dir.join("pluto.ctl");
    let listener = UnixListener::bind(&sock).unwrap();
    let (a, _) = open(&dir.join("a"), CFG);
    a.daemon_connect(Some(&sock)).unwrap();
    let mut d = accept(&listener);
    expect_init(&mut d);
    assert!(a.daemon_connected());
    // The daemon dies, and a new one listens at the same place.
    drop(d);
    drop(listener);
    std::fs::remove_file(&sock).unwrap();
    wait_for(|| !a.daemon_connected());
    let listener = UnixListener::bind(&sock).unwrap();
    let mut d = accept(&listener);
    expect_init(&mut d);
    let log = std::fs::read_to_string(dir.join("a/ipsec.log")).unwrap();
    assert!(log.contains("keying daemon link closed"), "{log}");
    assert_eq!(log.matches("connected to the keying daemon").count(), 2, "{log}");
    // Garbage from the daemon closes the link (logged), and it is rebuilt.
    d.write_all(&[9u8; 64]).unwrap();
    let mut d = accept(&listener);
    expect_init(&mut d);
    // Stopping the link closes it.
    a.daemon_connect(None).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(d.read(&mut buf).unwrap_or(0), 0);
}

#[test]
fn lifetimes_expire_soft_then_hard_and_the_daemon_is_told() {
    let dir = temp_dir("lifetime");
    let sock = dir.join("pluto.ctl");
    let listener = UnixListener::bind(&sock).unwrap();
    let (a, host) = open(&dir.join("a"), CFG);
    a.daemon_connect(Some(&sock)).unwrap();
    let mut d = accept(&listener);
    expect_init(&mut d);
    let mut getspi = Message::new(MsgType::GetSpi, SaType::Esp, 7, 4242);
    getspi.ext.bundle = Some("vpn".into());
    getspi.ext.address_src = Some(Address::host(Ipv4Addr::new(192, 0, 2, 2)));
    getspi.ext.address_dst = Some(Address::host(Ipv4Addr::new(192, 0, 2, 1)));
    getspi.ext.spirange = Some(SpiRange { min: 0x1000, max: 0x1000 });
    send(&mut d, &getspi);
    assert_eq!(read_msg(&mut d).ext.sa.unwrap().spi, 0x1000, "a one-SPI range");
    let with_life = |mut m: Message| {
        m.ext.lifetime_soft = Some(ipc::Lifetime { allocations: 0, bytes: 0, addtime: 10, usetime: 0 });
        m.ext.lifetime_hard = Some(ipc::Lifetime { allocations: 0, bytes: 0, addtime: 20, usetime: 0 });
        m
    };
    send(&mut d, &with_life(sa_message(MsgType::Update, 7, 0x1000, [192, 0, 2, 2], [192, 0, 2, 1], &ENC_IN, &AUTH_IN)));
    assert_eq!(read_msg(&mut d).header.errno, None);
    send(&mut d, &with_life(sa_message(MsgType::Add, 7, 0x2000, [192, 0, 2, 1], [192, 0, 2, 2], &ENC_OUT, &AUTH_OUT)));
    assert_eq!(read_msg(&mut d).header.errno, None);
    assert_eq!(hook(&a, &udp(10), true).0, Verdict::Transformed);

    // Soft: both SAs reported, both keep working.
    host.clock.fetch_add(11_000, Ordering::SeqCst);
    a.tick();
    let mut soft = Vec::new();
    for _ in 0..2 {
        let m = read_msg(&mut d);
        assert_eq!(m.header.msg_type, MsgType::Expire);
        assert!(m.ext.lifetime_soft.is_some() && m.ext.lifetime_hard.is_none());
        soft.push(m.ext.sa.unwrap().spi);
    }
    soft.sort();
    assert_eq!(soft, vec![0x1000, 0x2000]);
    assert_eq!(hook(&a, &udp(10), true).0, Verdict::Transformed);

    // Hard: reported and removed; the next packet waits for new keys.
    host.clock.fetch_add(10_000, Ordering::SeqCst);
    a.tick();
    for _ in 0..2 {
        let m = read_msg(&mut d);
        assert_eq!(m.header.msg_type, MsgType::Expire);
        assert!(m.ext.lifetime_hard.is_some());
        assert!(m.ext.lifetime_current.is_some());
    }
    assert_eq!(hook(&a, &udp(10), true).0, Verdict::Held);
    assert_eq!(read_msg(&mut d).header.msg_type, MsgType::Acquire);
}
