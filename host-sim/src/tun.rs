//! `host-sim tun`: a real host. The plaintext side is a TUN interface into which the
//! remote selectors of the bundles are routed, so that the machine's own traffic and the
//! traffic it forwards for them reach the plugin's outbound hook; the network side is raw
//! IPv4 on the outer interface (ESP, AH, IPComp, and UDP 4500 for `udp_encap` bundles),
//! whose packets go through the inbound hook and, when it transforms them, into the TUN.
//!
//! The host decides nothing the plugin should decide: every packet routed into the TUN is
//! offered to the plugin, and what it passes or transforms is sent as it is (header
//! included, so the plugin's addresses and protocol stand); every packet of the IPsec
//! protocols that arrives is offered to it. What the host does decide: the routes (from
//! the bundles' remote selectors), the TUN's MTU (the link MTU less the plugin's worst-case
//! overhead), and the interface the network side uses.
//!
//! Threads: one worker per direction, each waiting with poll(2) on its own descriptors
//! (outbound: the TUN; inbound: the raw sockets), so that encryption one way and
//! decryption the other way run on two cores, and neither direction waits for the other;
//! the main thread runs the commands from stdin (and signals) against the same plugin
//! handle, which the ABI allows. docs/host-sim.md has the whole story.

use std::io::{self, BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::args::TunArgs;
use crate::config::{self, BundleCfg, Cidr};
use crate::packet::{PROTO_AH, PROTO_ESP, PROTO_IPCOMP, PROTO_UDP};
use crate::plugin::{
    self, Direction, HostHooks, OpenOutcome, PacketBuffer, PluginInstance, PluginLibrary, Verdict,
    MAX_BATCH,
};
use crate::replay::parse_keys_file;
use crate::sys::{self, Tun};

/// RFC 3948: ESP in UDP uses port 4500 at both ends.
const NAT_T_PORT: u16 = 4500;
/// The largest IPv4 packet; every buffer takes one.
const MAX_PACKET: usize = 65535;
/// How often a waiting worker looks whether it should stop.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Packets taken from one socket before looking at the others again.
const RECV_BURST: usize = 64;
/// Raw sockets queue this much before the kernel drops (it caps at net.core.rmem_max).
const RECV_BUFFER: usize = 4 << 20;

/// What `host-sim tun` counts; `stats` prints them.
#[derive(Default)]
struct Counters {
    tun_read: AtomicU64,
    tun_not_ipv4: AtomicU64,
    out_pass: AtomicU64,
    out_transformed: AtomicU64,
    out_drop: AtomicU64,
    out_held: AtomicU64,
    net_sent: AtomicU64,
    net_received: AtomicU64,
    in_transformed: AtomicU64,
    in_pass: AtomicU64,
    in_drop: AtomicU64,
    tun_written: AtomicU64,
    emitted_inbound: AtomicU64,
    emitted_outbound: AtomicU64,
}

impl Counters {
    fn lines(&self) -> [(&'static str, u64); 14] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("tun-read", get(&self.tun_read)),
            ("tun-not-ipv4", get(&self.tun_not_ipv4)),
            ("out-pass", get(&self.out_pass)),
            ("out-transformed", get(&self.out_transformed)),
            ("out-drop", get(&self.out_drop)),
            ("out-held", get(&self.out_held)),
            ("net-sent", get(&self.net_sent)),
            ("net-received", get(&self.net_received)),
            ("in-transformed", get(&self.in_transformed)),
            ("in-pass", get(&self.in_pass)),
            ("in-drop", get(&self.in_drop)),
            ("tun-written", get(&self.tun_written)),
            ("emitted-inbound", get(&self.emitted_inbound)),
            ("emitted-outbound", get(&self.emitted_outbound)),
        ]
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Kinds of I/O failure. The first of each kind is shown on stderr, the rest only counted
/// (`stats`), so that a flood never floods the terminal.
#[derive(Debug, Clone, Copy)]
enum Fault {
    TunRead,
    TunWrite,
    NetSend,
    NetRecv,
}

impl Fault {
    const ALL: [Fault; 4] = [
        Fault::TunRead,
        Fault::TunWrite,
        Fault::NetSend,
        Fault::NetRecv,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::TunRead => "tun-read-errors",
            Fault::TunWrite => "tun-write-errors",
            Fault::NetSend => "net-send-errors",
            Fault::NetRecv => "net-recv-errors",
        }
    }
}

/// What both workers and the plugin's callbacks share: the two ends packets leave by.
struct Host {
    tun: Tun,
    /// Sends whole IPv4 packets (IPPROTO_RAW: header included), bound to the outer
    /// interface so that the routes into the TUN do not catch them.
    send: Socket,
    stop: AtomicBool,
    counters: Counters,
    faults: [AtomicU64; 4],
}

impl Host {
    fn fault(&self, kind: Fault, detail: impl FnOnce() -> String) {
        if self.faults[kind as usize].fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("host-sim: {} (further ones are counted: `stats`)", detail());
        }
    }

    /// Puts a packet on the network as it is: its destination picks the next hop.
    fn send(&self, packet: &[u8]) {
        let Some(dst) = destination(packet) else {
            self.fault(Fault::NetSend, || {
                format!("not sending {} bytes that are not IPv4", packet.len())
            });
            return;
        };
        match self
            .send
            .send_to(packet, &SockAddr::from(SocketAddrV4::new(dst, 0)))
        {
            Ok(_) => bump(&self.counters.net_sent),
            Err(e) => self.fault(Fault::NetSend, || {
                format!("sending {} bytes to {dst}: {e}", packet.len())
            }),
        }
    }

    /// Hands a packet to the kernel as if it had arrived on the TUN.
    fn deliver(&self, packet: &[u8]) {
        match self.tun.write(packet) {
            Ok(_) => bump(&self.counters.tun_written),
            Err(e) => self.fault(Fault::TunWrite, || {
                format!(
                    "writing {} bytes into {}: {e}",
                    packet.len(),
                    self.tun.name()
                )
            }),
        }
    }

    /// The plugin's `emit_packet`: generated (ICMP fragmentation needed) or released
    /// (held until keys came) packets.
    fn emit(&self, direction: Direction, packet: &[u8]) {
        match direction {
            Direction::Inbound => {
                bump(&self.counters.emitted_inbound);
                self.deliver(packet);
            }
            Direction::Outbound => {
                bump(&self.counters.emitted_outbound);
                self.send(packet);
            }
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

fn destination(packet: &[u8]) -> Option<Ipv4Addr> {
    let h = packet.get(..20)?;
    (h[0] >> 4 == 4).then(|| Ipv4Addr::new(h[16], h[17], h[18], h[19]))
}

/// Whether a packet from the raw UDP socket is ESP in UDP 4500 (RFC 3948); the kernel has
/// reassembled fragments before raw sockets see them. IKE on port 4500 (the non-ESP marker,
/// four zero bytes) and NAT keepalives (one 0xFF byte) belong to the keying daemon's
/// socket, which gets its own copy, so they are left alone here.
fn is_udp_encap(packet: &[u8]) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    let header_len = usize::from(first & 0x0f) * 4;
    let to_4500 = packet
        .get(header_len + 2..header_len + 4)
        .is_some_and(|port| u16::from_be_bytes([port[0], port[1]]) == NAT_T_PORT);
    // An ESP header (SPI and sequence number) at least, with a non-zero SPI.
    let esp = packet
        .get(header_len + 8..header_len + 16)
        .is_some_and(|h| h[..4] != [0, 0, 0, 0]);
    first >> 4 == 4 && packet.get(9) == Some(&PROTO_UDP) && to_4500 && esp
}

/// Where received packets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A raw socket of one IPsec protocol: every packet of it addressed to this machine,
    /// IPv4 header included.
    Ipsec,
    /// A raw UDP socket: every UDP packet for this machine; only port 4500 is ours.
    RawUdp,
    /// The UDP socket bound to port 4500: it exists so that the kernel does not answer
    /// ESP-in-UDP with port unreachable; what it queues (copies of what the raw socket
    /// saw) is read and thrown away.
    BoundUdp,
}

fn raw_socket(protocol: u8) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(protocol))),
    )?;
    socket.set_nonblocking(true)?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    Ok(socket)
}

/// The network side's sockets.
/// Whether to read ESP in UDP 4500 (udp_encap or IKE bundles), and whether to bind the
/// port as well (only for manual udp_encap bundles: with IKE the keying daemon binds it for
/// IKE's own messages, and its socket also keeps the kernel from answering ESP-in-UDP with
/// port unreachable).
#[derive(Debug, Clone, Copy)]
struct UdpListening {
    read: bool,
    bind: bool,
}

fn open_network(
    outer_if: &str,
    udp: UdpListening,
) -> Result<(Socket, Vec<(Source, Socket)>), String> {
    let fail = |what: &str, e: io::Error| format!("{what}: {e} (host-sim tun needs root)");
    // IPPROTO_RAW implies IP_HDRINCL: the plugin's header goes out as it is.
    let send = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .map_err(|e| fail("raw socket for sending", e))?;
    send.set_header_included_v4(true)
        .map_err(|e| fail("IP_HDRINCL", e))?;
    send.bind_device(Some(outer_if.as_bytes()))
        .map_err(|e| fail(&format!("binding the sending socket to {outer_if}"), e))?;
    let mut receive = Vec::new();
    for protocol in [PROTO_ESP, PROTO_AH, PROTO_IPCOMP] {
        let socket = raw_socket(protocol)
            .map_err(|e| fail(&format!("raw socket for protocol {protocol}"), e))?;
        receive.push((Source::Ipsec, socket));
    }
    if udp.read {
        let raw = raw_socket(PROTO_UDP).map_err(|e| fail("raw UDP socket", e))?;
        receive.push((Source::RawUdp, raw));
    }
    if udp.bind {
        let bound = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
            .map_err(|e| fail("UDP socket", e))?;
        bound
            .set_nonblocking(true)
            .map_err(|e| fail("UDP socket", e))?;
        bound
            .bind(&SockAddr::from(SocketAddrV4::new(
                Ipv4Addr::UNSPECIFIED,
                NAT_T_PORT,
            )))
            .map_err(|e| format!("binding UDP port {NAT_T_PORT} (for udp_encap bundles): {e}"))?;
        receive.push((Source::BoundUdp, bound));
    }
    Ok((send, receive))
}

/// TUN → outbound hook → network, in batches of what the TUN has queued.
fn outbound_worker(host: &Host, plugin: &PluginInstance) {
    let mut batch: Vec<PacketBuffer> = (0..MAX_BATCH)
        .map(|_| PacketBuffer::with_room(MAX_PACKET))
        .collect();
    let mut verdicts = [Verdict::Drop; MAX_BATCH];
    let mut ready = [false; sys::MAX_WAIT];
    while !host.stopping() {
        if let Err(e) = sys::wait_readable(&[host.tun.as_fd()], &mut ready, POLL_INTERVAL) {
            host.fault(Fault::TunRead, || {
                format!("waiting for {}: {e}", host.tun.name())
            });
            std::thread::sleep(POLL_INTERVAL);
            continue;
        }
        if !ready[0] {
            continue;
        }
        let mut n = 0;
        while n < MAX_BATCH {
            match batch[n].fill(|room| host.tun.read(room)) {
                Ok(0) => break,
                Ok(_) if batch[n].bytes()[0] >> 4 != 4 => {
                    // The ABI is IPv4 only; IPv6 the kernel routes here is not ours.
                    bump(&host.counters.tun_not_ipv4);
                }
                Ok(_) => {
                    bump(&host.counters.tun_read);
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    host.fault(Fault::TunRead, || {
                        format!("reading {}: {e}", host.tun.name())
                    });
                    break;
                }
            }
        }
        if n == 0 {
            continue;
        }
        plugin.outbound_batch(&mut batch[..n], &mut verdicts[..n]);
        for (packet, verdict) in batch[..n].iter().zip(&verdicts[..n]) {
            let c = &host.counters;
            match verdict {
                Verdict::Pass => {
                    bump(&c.out_pass);
                    host.send(packet.bytes());
                }
                Verdict::Transformed => {
                    bump(&c.out_transformed);
                    host.send(packet.bytes());
                }
                Verdict::Drop => bump(&c.out_drop),
                Verdict::Held => bump(&c.out_held),
            }
        }
    }
}

/// Network → inbound hook → TUN.
fn inbound_worker(host: &Host, plugin: &PluginInstance, sockets: &[(Source, Socket)]) {
    let mut packet = PacketBuffer::with_room(MAX_PACKET);
    let mut discard = [0u8; 1];
    let mut ready = [false; sys::MAX_WAIT];
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, s)| s.as_fd()).collect();
    while !host.stopping() {
        if let Err(e) = sys::wait_readable(&fds, &mut ready, POLL_INTERVAL) {
            host.fault(Fault::NetRecv, || format!("waiting for the network: {e}"));
            std::thread::sleep(POLL_INTERVAL);
            continue;
        }
        for ((source, socket), _) in sockets.iter().zip(ready).filter(|(_, r)| *r) {
            let (source, mut socket) = (*source, socket);
            for _ in 0..RECV_BURST {
                let read = match source {
                    Source::BoundUdp => socket.read(&mut discard),
                    Source::Ipsec | Source::RawUdp => packet.fill(|room| socket.read(room)),
                };
                match read {
                    Ok(_) if source == Source::BoundUdp => {}
                    Ok(_) if source == Source::RawUdp && !is_udp_encap(packet.bytes()) => {}
                    Ok(_) => receive(host, plugin, &mut packet),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // An ICMP error about a packet we sent is reported on the raw
                        // socket of its protocol: count it, the socket stays usable.
                        host.fault(Fault::NetRecv, || format!("receiving: {e}"));
                        break;
                    }
                }
            }
        }
    }
}

fn receive(host: &Host, plugin: &PluginInstance, packet: &mut PacketBuffer) {
    let c = &host.counters;
    bump(&c.net_received);
    match plugin.inbound(packet) {
        Verdict::Transformed => {
            bump(&c.in_transformed);
            host.deliver(packet.bytes());
        }
        // A raw socket gets a copy of what the kernel delivers: a packet the plugin leaves
        // alone has reached the kernel's own stack already. Writing it into the TUN would
        // deliver it twice (and bring it back to this socket, round and round).
        Verdict::Pass => bump(&c.in_pass),
        Verdict::Drop | Verdict::Held => bump(&c.in_drop),
    }
}

/// A route into the TUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Cidr,
    /// The source address the machine's own packets on this route take: the bundle's
    /// local address, when its local selector holds it.
    pub src: Option<Ipv4Addr>,
}

/// The routes for the bundles' remote selectors, in file order, one per prefix (the first
/// bundle's source address wins). A bundle without a remote address (`remote = 0.0.0.0`
/// and no `remote_subnet`) has nothing to route; `0.0.0.0/0` is routed as its two halves,
/// so that the machine's default route, if any, stays. `dynamic` is the address the host
/// connected with, for `local = 0.0.0.0`.
pub fn selector_routes(bundles: &[BundleCfg], dynamic: Option<Ipv4Addr>) -> Vec<Route> {
    let mut routes: Vec<Route> = Vec::new();
    for b in bundles {
        let remote = match b.remote_subnet {
            Some(subnet) => subnet,
            None if b.remote.is_unspecified() => continue,
            None => Cidr::new(b.remote, 32),
        };
        let local = if b.local.is_unspecified() {
            dynamic
        } else {
            Some(b.local)
        };
        let src = local.filter(|&l| b.local_subnet.is_none_or(|s| s.contains(l)));
        let prefixes = if remote.prefix == 0 {
            vec![
                Cidr::new(Ipv4Addr::new(0, 0, 0, 0), 1),
                Cidr::new(Ipv4Addr::new(128, 0, 0, 0), 1),
            ]
        } else {
            vec![remote]
        };
        for dst in prefixes {
            if !routes.iter().any(|r| r.dst == dst) {
                routes.push(Route { dst, src });
            }
        }
    }
    routes
}

/// The routing table that sends a road-warrior gateway's protected traffic into the TUN.
const ROAD_WARRIOR_TABLE: &str = "4500";

/// The sources whose traffic a road-warrior bundle (`remote = 0.0.0.0`, no
/// `remote_subnet`) protects: its peers are not known in advance, so no destination route
/// can catch their traffic. Instead everything from these sources is steered into the TUN
/// by a policy rule (except what stays within the source's own prefix), and the plugin
/// protects what goes to a bound peer and passes the rest.
pub fn road_warrior_sources(bundles: &[BundleCfg], dynamic: Option<Ipv4Addr>) -> Vec<Cidr> {
    let mut sources: Vec<Cidr> = Vec::new();
    for b in bundles.iter().filter(|b| b.remote.is_unspecified() && b.remote_subnet.is_none()) {
        let local = if b.local.is_unspecified() { dynamic } else { Some(b.local) };
        let source = b.local_subnet.or(local.map(|l| Cidr::new(l, 32)));
        if let Some(source) = source.filter(|s| !sources.contains(s)) {
            sources.push(source);
        }
    }
    sources
}

/// Policy rules for `road_warrior_sources`, removed again when dropped.
#[derive(Default)]
struct RoadWarriorRules {
    sources: Vec<Cidr>,
}

impl RoadWarriorRules {
    fn rule(verb: &str, source: Cidr) -> Result<(), String> {
        let src = source.to_string();
        // Within its own prefix the source talks directly (a gateway to its LAN).
        ip(&["rule", verb, "from", &src, "to", &src, "lookup", "main", "priority", "4499"])?;
        ip(&["rule", verb, "from", &src, "lookup", ROAD_WARRIOR_TABLE, "priority", "4500"])
    }

    fn sync(&mut self, wanted: Vec<Cidr>, tun: &str) -> Result<(), String> {
        for old in self.sources.iter().filter(|o| !wanted.contains(o)) {
            Self::rule("del", *old)?;
        }
        for new in wanted.iter().filter(|w| !self.sources.contains(w)) {
            Self::rule("add", *new)?;
        }
        if !wanted.is_empty() {
            ip(&["route", "replace", "default", "dev", tun, "table", ROAD_WARRIOR_TABLE])?;
        }
        self.sources = wanted;
        Ok(())
    }
}

impl Drop for RoadWarriorRules {
    fn drop(&mut self) {
        for source in std::mem::take(&mut self.sources) {
            let _ = Self::rule("del", source);
        }
    }
}

/// Runs `ip ARGS`; the error carries what ip said.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Process::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn interface_mtu(name: &str) -> Result<u32, String> {
    let path = Path::new("/sys/class/net").join(name).join("mtu");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("no interface {name} here ({}: {e})", path.display()))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{}: unexpected `{}`", path.display(), text.trim()))
}

/// Strict reverse-path filtering (rp_filter = 1) on the outer interface drops a peer's
/// ESP when the peer's address is routed into the TUN (transport mode, or a tunnel whose
/// remote selector holds the gateway): the reverse path then points at the TUN. Loose
/// filtering (2) still drops packets from unroutable sources. The kernel applies the larger
/// of `all` and the interface's value, so setting the interface's to 2 is enough; the old
/// value comes back when host-sim stops.
struct LooseReversePath {
    path: PathBuf,
    old: Option<String>,
}

impl LooseReversePath {
    fn apply(outer_if: &str) -> LooseReversePath {
        let conf = Path::new("/proc/sys/net/ipv4/conf");
        let path = conf.join(outer_if).join("rp_filter");
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map(|v| v.trim().to_string())
                .ok()
        };
        let strict = [conf.join("all").join("rp_filter"), path.clone()]
            .iter()
            .any(|p| read(p).as_deref() == Some("1"));
        let old = read(&path).filter(|_| strict);
        if old.is_some() {
            match std::fs::write(&path, "2") {
                Ok(()) => eprintln!(
                    "host-sim: {outer_if}: reverse-path filtering loosened (rp_filter 2) while running"
                ),
                Err(e) => eprintln!(
                    "host-sim: warning: cannot loosen rp_filter on {outer_if} ({e}): peers routed into the TUN may be dropped"
                ),
            }
        }
        LooseReversePath { path, old }
    }
}

impl Drop for LooseReversePath {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            let _ = std::fs::write(&self.path, old);
        }
    }
}

fn config_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("ipsec.cfg")
    } else {
        path.to_path_buf()
    }
}

fn read_bundles(file: &Path) -> Result<Vec<BundleCfg>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    config::parse(&text, file)
}

/// The main thread's side: what the commands change.
struct Control<'a> {
    args: &'a TunArgs,
    plugin: &'a PluginInstance,
    host: &'a Host,
    cfg_file: PathBuf,
    bundles: Vec<BundleCfg>,
    /// The address of the last connect, until link-down.
    dynamic: Option<Ipv4Addr>,
    routes: Vec<Route>,
    road_warriors: RoadWarriorRules,
    link_mtu: u32,
    overhead: u32,
    tun_mtu: u32,
}

/// What the main loop waits for.
enum Event {
    Line(String),
    InputClosed,
    Signal(i32),
}

impl Control<'_> {
    /// Brings the TUN's MTU and routes in line with the plugin's bundles. Returns the
    /// warnings (a route whose source address is not on this machine goes in without it).
    fn sync(&mut self) -> Result<Vec<String>, String> {
        let mut warnings = Vec::new();
        self.overhead = match self.plugin.overhead() {
            Some(Ok(bytes)) => bytes,
            Some(Err(status)) => return Err(format!("ipsec_plugin_overhead: {status}")),
            None => return Err("the plugin lacks ipsec_plugin_overhead".into()),
        };
        let mtu = self
            .args
            .tun_mtu
            .unwrap_or_else(|| self.link_mtu.saturating_sub(self.overhead).max(68));
        let tun = self.host.tun.name().to_string();
        if mtu != self.tun_mtu {
            ip(&["link", "set", "dev", &tun, "mtu", &mtu.to_string(), "up"])?;
            self.tun_mtu = mtu;
        }
        let wanted = selector_routes(&self.bundles, self.dynamic);
        for old in &self.routes {
            if !wanted.iter().any(|w| w.dst == old.dst) {
                ip(&["route", "del", &old.dst.to_string(), "dev", &tun])?;
            }
        }
        let mut installed = Vec::new();
        for route in wanted {
            if self.routes.contains(&route) {
                installed.push(route);
                continue;
            }
            let dst = route.dst.to_string();
            let mut cmd = vec!["route", "replace", &dst, "dev", &tun];
            let src = route.src.map(|s| s.to_string());
            if let Some(src) = &src {
                cmd.extend(["src", src]);
            }
            match ip(&cmd) {
                Ok(()) => installed.push(route),
                Err(e) if src.is_some() => {
                    warnings.push(format!("{e}; routing {dst} without a source address"));
                    ip(&["route", "replace", &dst, "dev", &tun])?;
                    installed.push(Route { src: None, ..route });
                }
                Err(e) => return Err(e),
            }
        }
        self.routes = installed;
        self.road_warriors
            .sync(road_warrior_sources(&self.bundles, self.dynamic), &tun)?;
        Ok(warnings)
    }

    fn state(&self) -> String {
        format!(
            "mtu={} link-mtu={} overhead={}",
            self.tun_mtu, self.link_mtu, self.overhead
        )
    }

    /// One command line; false when host-sim should stop.
    fn command(&mut self, line: &str, out: &mut dyn Write) -> bool {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(&verb) = words.first() else {
            return true;
        };
        let result = match (verb, &words[1..]) {
            ("quit", []) => {
                let _ = writeln!(out, "ok quit");
                return false;
            }
            ("connect", [addr]) => match addr.parse::<Ipv4Addr>() {
                Ok(addr) => self.connect(addr),
                Err(_) => Err(format!("{addr} is not an IPv4 address")),
            },
            ("link-down", []) => self.link_down(),
            ("reload", []) => self.reload(),
            ("dump", []) | ("dump", ["text"]) | ("dump", ["json"]) => {
                let json = words.get(1) == Some(&"json");
                self.plugin
                    .dump(json)
                    .map(|text| {
                        let _ = writeln!(out, "{}", text.trim_end());
                        String::new()
                    })
                    .map_err(|s| format!("ipsec_plugin_dump: {s}"))
            }
            ("stats", []) => {
                for (name, value) in self.host.counters.lines() {
                    let _ = writeln!(out, "{name} {value}");
                }
                for kind in Fault::ALL {
                    let n = self.host.faults[kind as usize].load(Ordering::Relaxed);
                    let _ = writeln!(out, "{} {n}", kind.name());
                }
                Ok(String::new())
            }
            ("help", []) => {
                let _ = writeln!(out, "commands: connect A.B.C.D, link-down, reload, dump [json], stats, quit");
                Ok(String::new())
            }
            _ => Err(format!(
                "unknown command `{line}` (commands: connect A.B.C.D, link-down, reload, dump [json], stats, quit)"
            )),
        };
        let _ = match result {
            Ok(detail) if detail.is_empty() => writeln!(out, "ok {verb}"),
            Ok(detail) => writeln!(out, "ok {verb} {detail}"),
            Err(e) => writeln!(out, "error {verb}: {e}"),
        };
        true
    }

    fn after_change(&mut self) -> Result<String, String> {
        for warning in self.sync()? {
            eprintln!("host-sim: warning: {warning}");
        }
        Ok(self.state())
    }

    fn connect(&mut self, addr: Ipv4Addr) -> Result<String, String> {
        self.plugin
            .connect(addr)
            .map_err(|s| format!("ipsec_plugin_connect: {s}"))?;
        self.dynamic = Some(addr);
        self.after_change()
    }

    fn link_down(&mut self) -> Result<String, String> {
        self.plugin
            .link_down()
            .map_err(|s| format!("ipsec_plugin_link_down: {s}"))?;
        self.dynamic = None;
        self.after_change()
    }

    fn reload(&mut self) -> Result<String, String> {
        let outcome = self
            .plugin
            .reload()
            .map_err(|s| format!("ipsec_plugin_reload: {s}"))?;
        // The plugin has the new bundles; routes follow what host-sim can read of them.
        match read_bundles(&self.cfg_file) {
            Ok(bundles) => {
                if bundles.iter().any(|b| b.udp_encap) && !self.bundles.iter().any(|b| b.udp_encap)
                {
                    eprintln!("host-sim: warning: udp_encap bundles appeared; restart host-sim tun to listen on UDP port {NAT_T_PORT}");
                }
                self.bundles = bundles;
            }
            Err(e) => eprintln!("host-sim: warning: routes unchanged: {e}"),
        }
        let state = self.after_change()?;
        Ok(match outcome {
            OpenOutcome::Ok => state,
            OpenOutcome::Partial => {
                format!("{state} partial (some bundles have errors: see the log)")
            }
        })
    }
}

/// Feeds stdin lines and SIGTERM/SIGINT into one channel. The threads are not joined: the
/// process ends with the main thread.
fn spawn_event_sources() -> Result<mpsc::Receiver<Event>, String> {
    let (tx, rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("cannot catch signals: {e}"))?;
    let signal_tx = tx.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal_tx.send(Event::Signal(signal)).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).trim().to_string();
                    if tx.send(Event::Line(text)).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::InputClosed);
    });
    Ok(rx)
}

pub fn run(args: &TunArgs) -> Result<bool, String> {
    let cfg_file = config_file(&args.config);
    let bundles = read_bundles(&cfg_file)?;
    let keys = match &args.keys {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            parse_keys_file(&text, path)?
        }
        None => Vec::new(),
    };
    let link_mtu = match args.mtu {
        Some(mtu) => {
            interface_mtu(&args.outer_if)?;
            mtu
        }
        None => interface_mtu(&args.outer_if)?,
    };
    let lib_path = match &args.plugin {
        Some(p) => p.clone(),
        None => plugin::default_library_path()?,
    };
    let lib = PluginLibrary::load(&lib_path)?;
    let missing = lib.missing_for_tun();
    if !missing.is_empty() {
        return Err(format!(
            "plugin {} lacks {}, which host-sim tun needs",
            lib_path.display(),
            missing.join(", ")
        ));
    }
    if args.control.is_some() && !lib.has_control_listen() {
        return Err(format!(
            "plugin {} lacks ipsec_plugin_control_listen (--control)",
            lib_path.display()
        ));
    }
    let events = spawn_event_sources()?;
    let _rp_filter = LooseReversePath::apply(&args.outer_if);
    let udp = UdpListening {
        read: bundles.iter().any(|b| b.udp_encap || b.ike),
        bind: bundles.iter().any(|b| b.udp_encap),
    };
    let (send, receive) = open_network(&args.outer_if, udp)?;
    let tun = Tun::create(&args.tun).map_err(|e| format!("cannot create TUN {}: {e}", args.tun))?;
    // The kernel would otherwise send router solicitations and the like into it.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", tun.name()),
        "1",
    );
    let host = Arc::new(Host {
        tun,
        send,
        stop: AtomicBool::new(false),
        counters: Counters::default(),
        faults: Default::default(),
    });

    let sink_host = Arc::clone(&host);
    let hooks = HostHooks {
        on_line: Some(Box::new(|line| eprintln!("plugin: {line}"))),
        on_packet: Some(Box::new(move |direction, packet| {
            sink_host.emit(direction, packet)
        })),
        system_clock: true,
    };
    let (plugin, outcome) =
        PluginInstance::open_hooked(&lib, &args.config, args.log.as_deref(), args.debug, hooks)?;
    if outcome == OpenOutcome::Partial {
        eprintln!(
            "host-sim: warning: some bundles have config errors and are not active (see the log)"
        );
    }
    if let Some(Err(status)) = plugin.set_link_mtu(link_mtu) {
        return Err(format!("ipsec_plugin_set_link_mtu({link_mtu}): {status}"));
    }
    for (bundle, lines) in &keys {
        plugin
            .install_keys(bundle, lines)
            .map_err(|s| format!("installing keys for [{bundle}]: {s}"))?;
    }
    if let Some(local) = args.local {
        plugin
            .connect(local)
            .map_err(|s| format!("connect {local}: {s}"))?;
    }
    if let Some(path) = &args.daemon {
        match plugin.daemon_connect(path) {
            Some(Ok(())) => {}
            Some(Err(status)) => return Err(format!("ipsec_plugin_daemon_connect({}): {status}", path.display())),
            None => return Err(format!("plugin {} lacks ipsec_plugin_daemon_connect (--daemon)", lib_path.display())),
        }
    }
    if let Some(path) = &args.control {
        if let Some(Err(status)) = plugin.control_listen(Some(path)) {
            return Err(format!(
                "serving the SA table on {}: {status}",
                path.display()
            ));
        }
    }
    let mut control = Control {
        args,
        plugin: &plugin,
        host: &host,
        cfg_file,
        bundles,
        dynamic: args.local,
        routes: Vec::new(),
        road_warriors: RoadWarriorRules::default(),
        link_mtu,
        overhead: 0,
        tun_mtu: 0,
    };
    for warning in control.sync()? {
        eprintln!("host-sim: warning: {warning}");
    }

    let reason = std::thread::scope(|scope| {
        let (host, plugin) = (&*host, &plugin);
        scope.spawn(move || outbound_worker(host, plugin));
        scope.spawn(|| inbound_worker(host, plugin, &receive));
        let _ = writeln!(
            io::stdout(),
            "ready tun={} {}",
            host.tun.name(),
            control.state()
        );
        let reason = loop {
            match events.recv() {
                Ok(Event::Line(line)) => {
                    let mut out = io::stdout().lock();
                    if !control.command(&line, &mut out) {
                        break "quit".to_string();
                    }
                }
                Ok(Event::InputClosed) | Err(_) => break "end of input".to_string(),
                Ok(Event::Signal(signal)) => break format!("signal {signal}"),
            }
        };
        host.stop.store(true, Ordering::Relaxed);
        reason
    });
    if args.control.is_some() {
        let _ = plugin.control_listen(None);
    }
    drop(plugin);
    eprintln!("host-sim: {} stopped ({reason})", host.tun.name());
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(text: &str) -> Vec<BundleCfg> {
        config::parse(text, Path::new("ipsec.cfg")).unwrap()
    }

    fn route(dst: &str, src: Option<[u8; 4]>) -> Route {
        Route {
            dst: Cidr::parse(dst).unwrap(),
            src: src.map(Ipv4Addr::from),
        }
    }

    #[test]
    fn routes_follow_the_remote_selectors_in_file_order() {
        // cfg-samples/nested/host1: the inner bundle's peer, then the outer one's subnet.
        let bundles = bundle(
            "[inner]\nlocal = 192.0.2.31\nremote = 10.2.0.5\n\
             [outer]\nlocal = 192.0.2.31\nremote = 192.0.2.32\nmode = tunnel\nremote_subnet = 10.2.0.0/24\n",
        );
        assert_eq!(
            selector_routes(&bundles, None),
            [
                route("10.2.0.5/32", Some([192, 0, 2, 31])),
                route("10.2.0.0/24", Some([192, 0, 2, 31]))
            ]
        );
    }

    #[test]
    fn a_gateway_routes_its_peer_without_a_source_outside_its_selector() {
        let bundles = bundle(
            "[west-east]\nlocal = 192.0.2.11\nremote = 192.0.2.12\nmode = tunnel\n\
             local_subnet = 10.1.0.0/24\nremote_subnet = 10.2.0.0/24\n",
        );
        assert_eq!(
            selector_routes(&bundles, None),
            [route("10.2.0.0/24", None)]
        );
    }

    #[test]
    fn dynamic_bundles_take_the_connected_address() {
        let bundles = bundle(
            "[dialer-gw]\nlocal = 0.0.0.0\nremote = 192.0.2.42\nmode = tunnel\nremote_subnet = 10.2.0.0/24\n",
        );
        assert_eq!(
            selector_routes(&bundles, None),
            [route("10.2.0.0/24", None)]
        );
        assert_eq!(
            selector_routes(&bundles, Some(Ipv4Addr::new(192, 0, 2, 41))),
            [route("10.2.0.0/24", Some([192, 0, 2, 41]))]
        );
    }

    #[test]
    fn road_warrior_gateways_steer_their_sources() {
        let bundles = bundle(
            "[lan]\nlocal = 192.0.2.42\nremote = 0.0.0.0\nmode = tunnel\nlocal_subnet = 10.2.0.0/24\nkeying = ike\n\
             [host]\nlocal = 0.0.0.0\nremote = 0.0.0.0\nkeying = ike\n\
             [fixed]\nlocal = 192.0.2.1\nremote = 0.0.0.0\nremote_subnet = 10.9.0.0/16\nkeying = ike\n",
        );
        let cidr = |s: &str| Cidr::parse(s).unwrap();
        assert_eq!(road_warrior_sources(&bundles, None), [cidr("10.2.0.0/24")]);
        assert_eq!(
            road_warrior_sources(&bundles, Some(Ipv4Addr::new(192, 0, 2, 7))),
            [cidr("10.2.0.0/24"), cidr("192.0.2.7/32")]
        );
    }

    #[test]
    fn road_warriors_default_routes_and_duplicates() {
        let bundles = bundle(
            "[rw]\nlocal = 192.0.2.1\nremote = 0.0.0.0\nkeying = ike\n\
             [all]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nmode = tunnel\nremote_subnet = 0.0.0.0/0\n\
             [again]\nlocal = 192.0.2.9\nremote = 192.0.2.2\nmode = tunnel\nremote_subnet = 0.0.0.0/0\n",
        );
        assert_eq!(
            selector_routes(&bundles, None),
            [
                route("0.0.0.0/1", Some([192, 0, 2, 1])),
                route("128.0.0.0/1", Some([192, 0, 2, 1]))
            ]
        );
    }

    #[test]
    fn only_esp_in_udp_4500_is_taken_from_the_raw_udp_socket() {
        let mut packet = vec![0u8; 36];
        packet[0] = 0x45;
        packet[9] = PROTO_UDP;
        packet[22..24].copy_from_slice(&4500u16.to_be_bytes());
        packet[28..32].copy_from_slice(&0x1001u32.to_be_bytes());
        assert!(is_udp_encap(&packet));
        let mut ike = packet.clone();
        ike[28..32].fill(0);
        assert!(!is_udp_encap(&ike), "non-ESP marker: IKE for the daemon");
        let mut keepalive = packet[..29].to_vec();
        keepalive[28] = 0xff;
        assert!(!is_udp_encap(&keepalive), "NAT keepalive");
        packet[22..24].copy_from_slice(&53u16.to_be_bytes());
        assert!(!is_udp_encap(&packet));
        // Options move the UDP header.
        let mut with_options = vec![0u8; 40];
        with_options[0] = 0x46;
        with_options[9] = PROTO_UDP;
        with_options[26..28].copy_from_slice(&4500u16.to_be_bytes());
        with_options[32] = 1;
        assert!(is_udp_encap(&with_options));
        packet[22..24].copy_from_slice(&4500u16.to_be_bytes());
        packet[9] = PROTO_ESP;
        assert!(!is_udp_encap(&packet));
        for short in 0..24 {
            assert!(!is_udp_encap(&with_options[..short]), "{short} bytes");
        }
        assert!(!is_udp_encap(&[0x65; 28]), "not IPv4");
    }

    #[test]
    fn destination_needs_an_ipv4_header() {
        let mut packet = [0u8; 20];
        packet[0] = 0x45;
        packet[16..20].copy_from_slice(&[192, 0, 2, 7]);
        assert_eq!(destination(&packet), Some(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(destination(&packet[..19]), None);
        packet[0] = 0x60;
        assert_eq!(destination(&packet), None);
    }
}
