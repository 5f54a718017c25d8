//! The plugin's end of the keying daemon link against a fake daemon that speaks the codec
//! from the daemon's side: initialization, ACQUIRE, GETSPI, UPDATE/ADD installing SAs that a
//! peer can use, keying failure, DELETE, and reconnecting to a restarted daemon; NAT-T
//! (ESP in UDP with the ports of each SA) and road warriors (`remote = 0.0.0.0`).

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipsec_plugin::crypto::EspTransform;
use ipsec_plugin::ipc::{
    self, Address, Errno, KeyMaterial, Message, MsgType, SaExt, SaState, SaType, Sender, SpiRange, SA_FLAG_UDP_ENCAP,
};
use ipsec_plugin::wire::{esp, ipv4, udp as udp_wire, IpProtocol};
use ipsec_plugin::{Direction, DumpFormat, Host, Options, PacketBuf, Plugin, Verdict};

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
    udp_from([192, 0, 2, 1], [192, 0, 2, 2], len)
}

fn udp_from(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let mut p = vec![0u8; 28 + len];
    ipv4::Repr {
        src_addr: Ipv4Addr::from(src),
        dst_addr: Ipv4Addr::from(dst),
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

/// The count of a drop reason in the instance's global counters (from the JSON dump).
fn global_drops(p: &Plugin, reason: &str) -> u64 {
    let json = p.dump(DumpFormat::Json);
    let tail = &json[json.rfind("\"global_drops\"").unwrap()..];
    let key = format!("\"{reason}\":");
    tail.find(&key)
        .map(|i| tail[i + key.len()..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap())
        .unwrap_or(0)
}

/// What the daemon sends for one negotiation of bundle `vpn` between this end `local` and
/// `peer` (GETSPI, UPDATE, ADD, each answered without error), with the test keys; ESP in
/// UDP when `encap` holds the (local, peer) ports. Returns the inbound SPI.
fn negotiate(d: &mut UnixStream, seq: u32, local: [u8; 4], peer: [u8; 4], spi_out: u32, encap: Option<(u16, u16)>) -> u32 {
    let mut getspi = Message::new(MsgType::GetSpi, SaType::Esp, seq, 4242);
    getspi.ext.bundle = Some("vpn".into());
    getspi.ext.address_src = Some(Address::host(Ipv4Addr::from(peer)));
    getspi.ext.address_dst = Some(Address::host(Ipv4Addr::from(local)));
    getspi.ext.spirange = Some(SpiRange { min: 0x1000, max: 0xFFFF_FFFF });
    send(d, &getspi);
    let reply = read_msg(d);
    assert_eq!((reply.header.msg_type, reply.header.errno), (MsgType::GetSpi, None), "the GETSPI answer comes next");
    let spi_in = reply.ext.sa.unwrap().spi;
    let with_encap = |mut m: Message, src_port: u16, dst_port: u16| {
        if encap.is_some() {
            m.ext.sa.as_mut().unwrap().flags |= SA_FLAG_UDP_ENCAP;
            m.ext.address_src.as_mut().unwrap().port = src_port;
            m.ext.address_dst.as_mut().unwrap().port = dst_port;
        }
        m
    };
    let (here, there) = encap.unwrap_or((0, 0));
    send(d, &with_encap(sa_message(MsgType::Update, seq, spi_in, peer, local, &ENC_IN, &AUTH_IN), there, here));
    let r = read_msg(d);
    assert_eq!((r.header.msg_type, r.header.errno), (MsgType::Update, None));
    send(d, &with_encap(sa_message(MsgType::Add, seq, spi_out, local, peer, &ENC_OUT, &AUTH_OUT), here, there));
    let r = read_msg(d);
    assert_eq!((r.header.msg_type, r.header.errno), (MsgType::Add, None));
    spi_in
}

/// The keys of the far end of `negotiate`, for `install_keys` on a peer instance.
fn peer_keys(spi_in: u32, spi_out: u32) -> String {
    format!(
        "esp_spi_in = 0x{spi_out:x}\nesp_enc_key_in = 0x{}\nesp_auth_key_in = 0x{}\nesp_spi_out = 0x{spi_in:x}\nesp_enc_key_out = 0x{}\nesp_auth_key_out = 0x{}\n",
        hex(&ENC_OUT),
        hex(&AUTH_OUT),
        hex(&ENC_IN),
        hex(&AUTH_IN)
    )
}

/// DELETE of an ESP SA from the daemon; the plugin's errno.
fn delete(d: &mut UnixStream, spi: u32, src: [u8; 4], dst: [u8; 4]) -> Option<Errno> {
    let mut del = Message::new(MsgType::Delete, SaType::Esp, 99, 4242);
    del.ext.sa = Some(SaExt::bare(spi, SaState::Mature));
    del.ext.address_src = Some(Address::host(Ipv4Addr::from(src)));
    del.ext.address_dst = Some(Address::host(Ipv4Addr::from(dst)));
    send(d, &del);
    let r = read_msg(d);
    assert_eq!(r.header.msg_type, MsgType::Delete, "the DELETE answer comes next");
    r.header.errno
}

/// A plain ESP packet put in UDP from `sport` to `dport` (RFC 3948), as a peer behind a
/// NAT sends it (checksum zero; the NAT may have changed the source port).
fn in_udp(esp_packet: &[u8], sport: u16, dport: u16) -> Vec<u8> {
    assert_eq!(esp_packet[9], 50, "plain ESP");
    let mut p = esp_packet[..20].to_vec();
    let udp_len = (8 + esp_packet.len() - 20) as u16;
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&udp_len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&esp_packet[20..]);
    let len = p.len() as u16;
    let mut ip = ipv4::Packet::new_unchecked(&mut p[..]);
    ip.set_total_len(len);
    ip.set_next_header(IpProtocol::Udp);
    ip.fill_checksum();
    p
}

/// ESP in UDP without the UDP header: what a peer that is not behind a NAT would see.
fn without_udp(p: &[u8]) -> Vec<u8> {
    let mut q = p[..20].to_vec();
    q.extend_from_slice(&p[28..]);
    let len = q.len() as u16;
    let mut ip = ipv4::Packet::new_unchecked(&mut q[..]);
    ip.set_total_len(len);
    ip.set_next_header(IpProtocol::Esp);
    ip.fill_checksum();
    q
}

/// The outer header of a protected packet: (source, destination, protocol).
fn outer(p: &[u8]) -> (Ipv4Addr, Ipv4Addr, IpProtocol) {
    let ip = ipv4::Packet::new_checked(p).unwrap();
    (ip.src_addr(), ip.dst_addr(), ip.next_header())
}

/// `CFG` as the peer 192.0.2.2 has it.
fn peer_cfg() -> String {
    CFG.replace("local = 192.0.2.1", "local = X").replace("remote = 192.0.2.2", "remote = 192.0.2.1").replace("local = X", "local = 192.0.2.2")
}

const A: [u8; 4] = [192, 0, 2, 1];
const B: [u8; 4] = [192, 0, 2, 2];

#[test]
fn nat_t_is_negotiated_per_sa_with_its_ports() {
    let dir = temp_dir("nat-t");
    let sock = dir.join("pluto.ctl");
    let listener = UnixListener::bind(&sock).unwrap();
    let (a, _) = open(&dir.join("a"), CFG);
    a.daemon_connect(Some(&sock)).unwrap();
    let mut d = accept(&listener);
    expect_init(&mut d);
    // NAT-T found a NAT in front of the peer that maps its port 4500 to 31001.
    let spi_in = negotiate(&mut d, 7, A, B, 0x2000, Some((4500, 31001)));
    let (b, _) = open(&dir.join("b"), &peer_cfg());
    b.install_keys("vpn", &peer_keys(spi_in, 0x2000)).unwrap();

    // Outbound ESP leaves in UDP 4500 -> 31001, checksum zero.
    let p = udp(100);
    let (v, w) = hook(&a, &p, true);
    assert_eq!(v, Verdict::Transformed);
    let ip = ipv4::Packet::new_checked(&w[..]).unwrap();
    assert_eq!(ip.next_header(), IpProtocol::Udp);
    let u = udp_wire::Packet::new_checked(ip.payload()).unwrap();
    assert_eq!((u.src_port(), u.dst_port(), u.checksum()), (4500, 31001, 0));
    assert_eq!(esp::Packet::new_checked(u.payload()).unwrap().spi(), 0x2000);
    assert_eq!(hook(&b, &without_udp(&w), false), (Verdict::Transformed, p.clone()));
    let dump = a.dump(DumpFormat::Text);
    assert!(dump.contains("udp 4500 <-> 31001"), "{dump}");
    assert!(a.dump(DumpFormat::Json).contains("\"udp_encap\":{\"local_port\":4500,\"remote_port\":31001}"));

    // Inbound: ESP in UDP to 4500 from any source port (the NAT chooses it).
    let back = udp_from(B, A, 50);
    let dst_port = |w: &[u8]| udp_wire::Packet::new_checked(ipv4::Packet::new_checked(w).unwrap().payload()).unwrap().dst_port();
    for sport in [31001, 4500, 1234] {
        let (v, esp_packet) = hook(&b, &back, true);
        assert_eq!(v, Verdict::Transformed);
        assert_eq!(hook(&a, &in_udp(&esp_packet, sport, 4500), false), (Verdict::Transformed, back.clone()), "from port {sport}");
        // The NAT mapped the peer to a new port: outbound ESP follows it.
        assert_eq!(dst_port(&hook(&a, &p, true).1), sport, "outbound after a packet from {sport}");
    }
    // A packet that fails authentication, or a replay, moves nothing.
    let (_, esp_packet) = hook(&b, &back, true);
    let mut forged = esp_packet.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(hook(&a, &in_udp(&forged, 999, 4500), false).0, Verdict::Drop);
    assert_eq!(hook(&a, &in_udp(&esp_packet, 1234, 4500), false).0, Verdict::Transformed);
    assert_eq!(hook(&a, &in_udp(&esp_packet, 998, 4500), false).0, Verdict::Drop, "a replay");
    assert_eq!(dst_port(&hook(&a, &p, true).1), 1234);
    let log = std::fs::read_to_string(dir.join("a/ipsec.log")).unwrap();
    assert!(log.contains("NAT mapping moved") && log.contains("now goes to UDP port 1234"), "{log}");
    // Plain ESP for this SA is refused; so is UDP to a port that is not the SA's.
    let (_, esp_packet) = hook(&b, &back, true);
    assert_eq!(hook(&a, &esp_packet, false).0, Verdict::Drop);
    assert_eq!(global_drops(&a, "wrong_encapsulation"), 1);
    let (_, esp_packet) = hook(&b, &back, true);
    assert_eq!(hook(&a, &in_udp(&esp_packet, 31001, 4501), false).0, Verdict::Drop);

    // Rekeyed without NAT-T (the NAT went away): the new SAs are plain ESP both ways, and
    // ESP in UDP for them is refused in turn.
    let spi_in2 = negotiate(&mut d, 8, A, B, 0x3000, None);
    b.install_keys("vpn", &peer_keys(spi_in2, 0x3000)).unwrap();
    let (v, w) = hook(&a, &p, true);
    assert_eq!(v, Verdict::Transformed);
    assert_eq!(outer(&w).2, IpProtocol::Esp);
    assert_eq!(esp::Packet::new_checked(&w[20..]).unwrap().spi(), 0x3000);
    assert_eq!(hook(&b, &w, false), (Verdict::Transformed, p.clone()));
    let (_, esp_packet) = hook(&b, &back, true);
    assert_eq!(esp::Packet::new_checked(&esp_packet[20..]).unwrap().spi(), spi_in2);
    assert_eq!(hook(&a, &in_udp(&esp_packet, 4500, 4500), false).0, Verdict::Drop);
    assert_eq!(global_drops(&a, "wrong_encapsulation"), 2);
    let (_, esp_packet) = hook(&b, &back, true);
    assert_eq!(hook(&a, &esp_packet, false), (Verdict::Transformed, back.clone()));
    let log = std::fs::read_to_string(dir.join("a/ipsec.log")).unwrap();
    assert!(log.contains("in UDP 4500<->31001"), "{log}");
}

/// A gateway that takes any peer, and two road warriors.
const GATEWAY: &str = "
[vpn]
local = 192.0.2.42
remote = 0.0.0.0
mode = tunnel
local_subnet = 10.2.0.0/24
esp = aes128-sha1
keying = ike
";

const ROAD_WARRIOR: &str = "
[vpn]
local = 192.0.2.41
remote = 192.0.2.42
mode = tunnel
remote_subnet = 10.2.0.0/24
esp = aes128-sha1
keying = ike
";

const GW: [u8; 4] = [192, 0, 2, 42];
const RW1: [u8; 4] = [192, 0, 2, 41];
const RW2: [u8; 4] = [192, 0, 2, 43];
const LAN: [u8; 4] = [10, 2, 0, 5];

#[test]
fn a_road_warrior_bundle_follows_its_peer() {
    let dir = temp_dir("road-warrior");
    let sock = dir.join("pluto.ctl");
    let listener = UnixListener::bind(&sock).unwrap();
    let (gw, _) = open(&dir.join("gw"), GATEWAY);
    gw.daemon_connect(Some(&sock)).unwrap();
    let mut d = accept(&listener);
    expect_init(&mut d);
    let json = |p: &Plugin| p.dump(DumpFormat::Json);

    // Without a peer the bundle matches nothing (its peer could be anyone) and asks for
    // nothing: no ACQUIRE (`negotiate` reads the GETSPI answer next).
    let to_rw1 = udp_from(LAN, RW1, 60);
    assert_eq!(hook(&gw, &to_rw1, true), (Verdict::Pass, to_rw1.clone()));
    // SAs must name the peer.
    send(&mut d, &sa_message(MsgType::Add, 4, 0x2000, GW, [0, 0, 0, 0], &ENC_OUT, &AUTH_OUT));
    assert_eq!(read_msg(&mut d).header.errno, Some(Errno::Invalid));
    assert!(json(&gw).contains("\"remote\":null,\"road_warrior\":true"), "{}", json(&gw));
    assert!(json(&gw).contains("\"state\":\"awaiting-peer\""));

    // The daemon's SAs name the peer: the bundle is bound to 192.0.2.41.
    let spi_in = negotiate(&mut d, 5, GW, RW1, 0x2000, None);
    let (rw1, _) = open(&dir.join("rw1"), ROAD_WARRIOR);
    rw1.install_keys("vpn", &peer_keys(spi_in, 0x2000)).unwrap();
    let from_rw1 = udp_from(RW1, LAN, 70);
    let (v, w) = hook(&rw1, &from_rw1, true);
    assert_eq!(v, Verdict::Transformed);
    assert_eq!(outer(&w), (Ipv4Addr::from(RW1), Ipv4Addr::from(GW), IpProtocol::Esp));
    assert_eq!(hook(&gw, &w, false), (Verdict::Transformed, from_rw1.clone()), "the tunnel is accepted and opened");
    let (v, w) = hook(&gw, &to_rw1, true);
    assert_eq!(v, Verdict::Transformed);
    assert_eq!(outer(&w), (Ipv4Addr::from(GW), Ipv4Addr::from(RW1), IpProtocol::Esp), "tunnelled to the peer");
    assert_eq!(hook(&rw1, &w, false), (Verdict::Transformed, to_rw1.clone()));
    let text = gw.dump(DumpFormat::Text);
    assert!(text.contains("192.0.2.42 <-> 192.0.2.41 (road warrior)") && text.contains("selector 10.2.0.0/24 <-> 192.0.2.41/32"), "{text}");
    assert!(json(&gw).contains("\"remote\":\"192.0.2.41\""));

    // A reload keeps the binding (and sends the bundle to the daemon again).
    assert_eq!(gw.reload().unwrap(), 0);
    assert_eq!(read_msg(&mut d).header.msg_type, MsgType::SpdAdd);
    let (v, w) = hook(&gw, &to_rw1, true);
    assert_eq!((v, outer(&w).1), (Verdict::Transformed, Ipv4Addr::from(RW1)));
    assert_eq!(hook(&rw1, &w, false), (Verdict::Transformed, to_rw1.clone()));

    // Its SAs deleted, the bundle awaits a peer again; the traffic it protected is
    // dropped, not sent in clear, and not held (nobody to ask keys for).
    assert_eq!(delete(&mut d, spi_in, RW1, GW), None);
    assert_eq!(delete(&mut d, 0x2000, GW, RW1), None);
    let before = global_drops(&gw, "no_sa");
    assert_eq!(hook(&gw, &to_rw1, true).0, Verdict::Drop);
    assert_eq!(global_drops(&gw, "no_sa"), before + 1);
    assert!(json(&gw).contains("\"remote\":null,\"road_warrior\":true,\"former_peer\":\"192.0.2.41\""), "{}", json(&gw));
    assert!(json(&gw).contains("\"state\":\"awaiting-peer\""));
    // Traffic the bundle never protected still passes.
    let elsewhere = udp_from(LAN, [192, 0, 2, 99], 60);
    assert_eq!(hook(&gw, &elsewhere, true).0, Verdict::Pass);

    // Another road warrior binds it; the first one's traffic stays blocked.
    negotiate(&mut d, 6, GW, RW2, 0x3000, None);
    let to_rw2 = udp_from(LAN, RW2, 60);
    let (v, w) = hook(&gw, &to_rw2, true);
    assert_eq!((v, outer(&w).1), (Verdict::Transformed, Ipv4Addr::from(RW2)));
    assert_eq!(hook(&gw, &to_rw1, true).0, Verdict::Drop);

    // The first one comes back: its SAs replace the second's (one peer at a time).
    let spi_in = negotiate(&mut d, 7, GW, RW1, 0x4000, None);
    rw1.install_keys("vpn", &peer_keys(spi_in, 0x4000)).unwrap();
    let (v, w) = hook(&gw, &to_rw1, true);
    assert_eq!((v, outer(&w).1), (Verdict::Transformed, Ipv4Addr::from(RW1)));
    assert_eq!(hook(&rw1, &w, false), (Verdict::Transformed, to_rw1.clone()));
    assert_eq!(hook(&gw, &to_rw2, true).0, Verdict::Drop);
    assert_eq!(delete(&mut d, 0x3000, GW, RW2), Some(Errno::NoEntry), "replaced with its peer");

    // FLUSH ends the binding too.
    send(&mut d, &Message::new(MsgType::Flush, SaType::Unspec, 100, 4242));
    assert_eq!(read_msg(&mut d).header.msg_type, MsgType::Flush);
    assert_eq!(hook(&gw, &to_rw1, true).0, Verdict::Drop);
    assert!(json(&gw).contains("\"state\":\"awaiting-peer\""));
    let log = std::fs::read_to_string(dir.join("gw/ipsec.log")).unwrap();
    assert!(log.contains("road warrior 192.0.2.41: the bundle carries its traffic"), "{log}");
    assert!(log.contains("road warrior 192.0.2.41 has no SAs left: awaiting a peer"), "{log}");
    assert!(log.contains("road warrior 192.0.2.41 replaces 192.0.2.43"), "{log}");
}

#[test]
fn nat_t_is_refused_for_a_bundle_with_ah() {
    let dir = temp_dir("nat-t-ah");
    let sock = dir.join("pluto.ctl");
    let listener = UnixListener::bind(&sock).unwrap();
    let (a, _) = open(&dir.join("a"), &CFG.replace("esp = aes128-sha1", "esp = aes128-sha1\nah = sha1"));
    a.daemon_connect(Some(&sock)).unwrap();
    let mut d = accept(&listener);
    expect_init(&mut d);
    // AH covers the outer addresses a NAT rewrites (and `udp_encap = yes` with `ah` is a
    // config error): an ESP SA of such a bundle cannot be put in UDP.
    let mut add = sa_message(MsgType::Add, 3, 0x2000, A, B, &ENC_OUT, &AUTH_OUT);
    add.ext.sa.as_mut().unwrap().flags |= SA_FLAG_UDP_ENCAP;
    send(&mut d, &add);
    assert_eq!(read_msg(&mut d).header.errno, Some(Errno::Invalid));
}
