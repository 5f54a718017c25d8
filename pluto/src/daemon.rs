//! The daemon process around the sans-IO core: UDP sockets for IKE (port 500 and the NAT-T
//! port 4500), the plugin link's listening socket, pluto.log, and the bookkeeping that
//! turns the plugin's requests into exchanges and negotiated SAs into link messages.
//!
//! One thread owns the [`Endpoint`] and all state; small reader threads (one per UDP
//! socket, one for accepting plugins, one per plugin connection) only turn bytes into
//! [`Input`]s on a channel. So the core needs no locks and its order of events is the
//! order of the channel.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ipsec_plugin::config::{Bundle, Keying};
use ipsec_plugin::ipc::{self, DecodeError, Errno, Message, MsgType, SaType};
use nix::sys::socket::{self as nix_socket, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn};

use crate::config::{Connection, EndpointConfig};
use crate::event::{Event, ExchangeId, SpiSet};
use crate::link;
use crate::log::{PlutoLog, Prefix};
use crate::secrets::{check_permissions, Secrets};
use crate::Endpoint;

/// What `pluto` was started with (see `pluto --help`).
#[derive(Debug, Clone)]
pub struct Options {
    pub ike_port: u16,
    pub nat_t_port: u16,
    pub nat_traversal: bool,
    pub secrets_file: PathBuf,
    /// The link socket is `<ctlbase>.ctl`, the pid file `<ctlbase>.pid`.
    pub ctl_base: PathBuf,
    /// Where to append each ISAKMP SA's initiator cookie and encryption key, in the format
    /// of Wireshark's `ikev1_decryption_table`, for reading captures. Off by default: the
    /// file holds keys.
    pub ike_key_log: Option<PathBuf>,
}

impl Options {
    pub fn ctl_socket(&self) -> PathBuf {
        with_suffix(&self.ctl_base, ".ctl")
    }

    pub fn pid_file(&self) -> PathBuf {
        with_suffix(&self.ctl_base, ".pid")
    }
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

type ClientId = u64;

/// The plugin's replies still awaited for one batch of inbound SAs.
struct Barrier {
    client: ClientId,
    seq: u32,
    updates: usize,
    deadline: Instant,
    /// Outbound SAs (ADD) of the same negotiation: they go after the held datagrams, so
    /// that our first packet on them follows the Quick Mode message that completes them.
    then: Vec<Message>,
}

/// How long datagrams wait for a plugin to confirm inbound SAs before they go anyway.
const BARRIER_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a write to a plugin may block before its link is dropped.
const PLUGIN_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// An ACQUIRE this soon after SAs went to the plugin was sent before they arrived.
const ACQUIRE_CROSSING: Duration = Duration::from_secs(2);

enum Input {
    Datagram { from: SocketAddrV4, to: SocketAddrV4, data: Vec<u8> },
    PluginConnected { client: ClientId, stream: UnixStream },
    PluginMessage { client: ClientId, bytes: Vec<u8> },
    PluginGone { client: ClientId, why: String },
}

/// A `keying = ike` bundle a plugin gave us, and which plugin it belongs to.
struct Registered {
    bundle: Bundle,
    client: ClientId,
}

struct Plugin {
    stream: UnixStream,
    /// A version mismatch or a broken stream: stop writing.
    closed: bool,
}

/// The SAs of a connection now in use: a soft EXPIRE of anything older is ignored.
#[derive(Default, Clone, Copy)]
struct Current {
    inbound: SpiSet,
    outbound: SpiSet,
}

impl Current {
    fn holds(&self, spi: u32) -> bool {
        [self.inbound, self.outbound]
            .iter()
            .any(|s| s.esp == Some(spi) || s.ah == Some(spi) || s.ipcomp.map(u32::from) == Some(spi))
    }
}

pub struct Daemon {
    options: Options,
    endpoint: Endpoint,
    secrets: Secrets,
    log: PlutoLog,
    /// Keyed by local port: the IKE port and the NAT-T port.
    udp: HashMap<u16, Arc<UdpSocket>>,
    plugins: HashMap<ClientId, Plugin>,
    bundles: HashMap<String, Registered>,
    /// The plugin's ACQUIRE seq each exchange answers.
    acquires: HashMap<ExchangeId, u32>,
    /// Connections with an exchange of ours in flight: one at a time per connection.
    in_flight: HashMap<String, ExchangeId>,
    current: HashMap<String, Current>,
    /// Inbound SAs a responder handed over ahead of Quick Mode message 3, with their seq.
    early: HashMap<(String, SpiSet), u32>,
    dynamic_local: Option<Ipv4Addr>,
    /// When SAs of each connection last went to the plugin.
    sas_sent: HashMap<String, Instant>,
    /// Inbound SAs sent to a plugin and not yet confirmed: until they are, datagrams wait
    /// in `held`, so that the Quick Mode message that lets the peer use the SAs (message
    /// 2 from a responder, 3 from an initiator) never overtakes their installation.
    barriers: Vec<Barrier>,
    held: Vec<crate::Transmit>,
    /// Messages of finished barriers, sent after the held datagrams.
    deferred: Vec<(ClientId, Message)>,
    /// Initiator cookies already in the IKE key log.
    key_logged: std::collections::HashSet<[u8; 8]>,
    next_seq: u32,
    pid: u32,
}

/// Opens the sockets and runs until the process is killed. Errors are set-up failures.
pub fn run(options: Options, mut log: PlutoLog) -> Result<(), String> {
    let (secrets, udp, rx) = match open(&options, &mut log) {
        Ok(opened) => opened,
        Err(e) => {
            log.line(Prefix::Err, None, &format!("cannot start: {e}"));
            return Err(e);
        }
    };
    serve(options, log, secrets, udp, rx);
    Ok(())
}

type Opened = (Secrets, HashMap<u16, Arc<UdpSocket>>, Receiver<Input>);

/// Everything that can fail at start: the secrets, the sockets, the threads.
fn open(options: &Options, log: &mut PlutoLog) -> Result<Opened, String> {
    let secrets = load_secrets(&options.secrets_file, log)?;
    let (tx, rx) = mpsc::channel();
    let mut udp = HashMap::new();
    let mut ports = vec![options.ike_port];
    if options.nat_traversal && options.nat_t_port != options.ike_port {
        ports.push(options.nat_t_port);
    }
    for port in ports {
        let socket = Arc::new(open_udp(port)?);
        spawn_udp_reader(Arc::clone(&socket), port, tx.clone())?;
        udp.insert(port, socket);
    }
    let listener = open_link_socket(&options.ctl_socket())?;
    let _ = std::fs::write(options.pid_file(), format!("{}\n", std::process::id()));
    spawn_acceptor(listener, tx)?;
    Ok((secrets, udp, rx))
}

fn serve(options: Options, mut log: PlutoLog, secrets: Secrets, udp: HashMap<u16, Arc<UdpSocket>>, rx: Receiver<Input>) {
    let endpoint = Endpoint::new(EndpointConfig {
        ike_port: options.ike_port,
        nat_traversal: options.nat_traversal,
        nat_t_port: options.nat_t_port,
        ..EndpointConfig::default()
    });
    log.line(
        Prefix::Inf,
        None,
        &format!(
            "pluto {} started: IKE on UDP {}{}, plugin link at {}, secrets from {}",
            env!("CARGO_PKG_VERSION"),
            options.ike_port,
            if options.nat_traversal { format!(" and {} (NAT-T)", options.nat_t_port) } else { String::new() },
            options.ctl_socket().display(),
            options.secrets_file.display()
        ),
    );
    let mut daemon = Daemon {
        options,
        endpoint,
        secrets,
        log,
        udp,
        plugins: HashMap::new(),
        bundles: HashMap::new(),
        acquires: HashMap::new(),
        in_flight: HashMap::new(),
        current: HashMap::new(),
        early: HashMap::new(),
        dynamic_local: None,
        key_logged: Default::default(),
        sas_sent: HashMap::new(),
        barriers: Vec::new(),
        held: Vec::new(),
        deferred: Vec::new(),
        next_seq: 1,
        pid: std::process::id(),
    };
    daemon.event_loop(&rx);
}

fn load_secrets(path: &Path, log: &mut PlutoLog) -> Result<Secrets, String> {
    if let Some(warning) = check_permissions(path) {
        log.line(Prefix::Wrn, None, &warning);
    }
    Secrets::load(path).map_err(|e| e.to_string())
}

fn open_udp(port: u16) -> Result<UdpSocket, String> {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        .map_err(|e| format!("cannot bind UDP port {port}: {e}"))?;
    // The address each datagram was sent to: NAT-D hashes and the answer's source need it,
    // and a host has several.
    nix_socket::setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)
        .map_err(|e| format!("IP_PKTINFO on UDP port {port}: {e}"))?;
    Ok(socket)
}

fn spawn_udp_reader(socket: Arc<UdpSocket>, port: u16, tx: mpsc::Sender<Input>) -> Result<(), String> {
    let spawn = thread::Builder::new().name(format!("udp-{port}")).spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((from, to, len)) = receive(&socket, port, &mut buf) else {
                // Not expected on a bound UDP socket; never spin on a persistent error.
                thread::sleep(Duration::from_millis(10));
                continue;
            };
            let data = buf[..len].to_vec();
            if tx.send(Input::Datagram { from, to, data }).is_err() {
                return;
            }
        }
    });
    spawn.map(drop).map_err(|e| format!("cannot start a thread: {e}"))
}

fn receive(socket: &UdpSocket, port: u16, buf: &mut [u8]) -> io::Result<(SocketAddrV4, SocketAddrV4, usize)> {
    let mut cmsg = nix::cmsg_space!(nix::libc::in_pktinfo);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = nix_socket::recvmsg::<SockaddrIn>(socket.as_fd().as_raw_fd_compat(), &mut iov, Some(&mut cmsg), MsgFlags::empty())?;
    let from = msg.address.map(|a| SocketAddrV4::new(a.ip(), a.port())).ok_or(io::ErrorKind::InvalidData)?;
    let mut local = Ipv4Addr::UNSPECIFIED;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::Ipv4PacketInfo(info) = c {
            local = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
        }
    }
    Ok((from, SocketAddrV4::new(local, port), msg.bytes))
}

/// `as_raw_fd` through `AsFd`, so that no `RawFd` outlives its socket here.
trait RawFdCompat {
    fn as_raw_fd_compat(&self) -> std::os::fd::RawFd;
}

impl RawFdCompat for std::os::fd::BorrowedFd<'_> {
    fn as_raw_fd_compat(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.as_raw_fd()
    }
}

fn send_from(socket: &UdpSocket, from: Ipv4Addr, to: SocketAddrV4, payload: &[u8]) -> io::Result<()> {
    let info = nix::libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: nix::libc::in_addr { s_addr: u32::from(from).to_be() },
        ipi_addr: nix::libc::in_addr { s_addr: 0 },
    };
    let cmsgs = [ControlMessage::Ipv4PacketInfo(&info)];
    let cmsgs: &[ControlMessage] = if from.is_unspecified() { &[] } else { &cmsgs };
    let to = SockaddrIn::from(to);
    nix_socket::sendmsg(socket.as_fd().as_raw_fd_compat(), &[IoSlice::new(payload)], cmsgs, MsgFlags::empty(), Some(&to))?;
    Ok(())
}

/// The link socket: refuses to start beside a running daemon, replaces a stale socket file,
/// and lets only its owner connect (SPEC §7).
fn open_link_socket(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!("another keying daemon is running: it answers at {}", path.display()));
        }
        std::fs::remove_file(path).map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("cannot listen at {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    Ok(listener)
}

fn spawn_acceptor(listener: UnixListener, tx: mpsc::Sender<Input>) -> Result<(), String> {
    let spawn = thread::Builder::new().name("link-accept".into()).spawn(move || {
        let mut next: ClientId = 1;
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let client = next;
            next += 1;
            let Ok(reader) = stream.try_clone() else { continue };
            if tx.send(Input::PluginConnected { client, stream }).is_err() {
                return;
            }
            let tx = tx.clone();
            let _ = thread::Builder::new().name(format!("link-{client}")).spawn(move || read_plugin(client, reader, &tx));
        }
    });
    spawn.map(drop).map_err(|e| format!("cannot start a thread: {e}"))
}

/// Cuts the plugin's byte stream into messages; a bad length closes the link.
fn read_plugin(client: ClientId, mut stream: UnixStream, tx: &mpsc::Sender<Input>) {
    let why = loop {
        let mut bytes = vec![0u8; ipc::HEADER_LEN];
        if let Err(e) = stream.read_exact(&mut bytes) {
            break if e.kind() == io::ErrorKind::UnexpectedEof { "closed".to_owned() } else { e.to_string() };
        }
        let len = match ipc::message_len(&bytes) {
            Ok(Some(len)) => len,
            Ok(None) => break "short header".to_owned(),
            Err(e) => {
                // Let the main thread see the header, so that it answers a version mismatch.
                let _ = tx.send(Input::PluginMessage { client, bytes });
                break e.to_string();
            }
        };
        bytes.resize(len, 0);
        if let Err(e) = stream.read_exact(&mut bytes[ipc::HEADER_LEN..]) {
            break e.to_string();
        }
        if tx.send(Input::PluginMessage { client, bytes }).is_err() {
            return;
        }
    };
    let _ = tx.send(Input::PluginGone { client, why });
}

impl Daemon {
    fn event_loop(&mut self, rx: &Receiver<Input>) {
        loop {
            let now = Instant::now();
            let wait = self
                .endpoint
                .poll_timeout()
                .into_iter()
                .chain(self.barriers.iter().map(|b| b.deadline))
                .min()
                .map_or(Duration::from_secs(60), |t| t.saturating_duration_since(now))
                .min(Duration::from_secs(60));
            match rx.recv_timeout(wait) {
                Ok(input) => self.handle_input(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                self.endpoint.handle_timeout(now);
            }
            if self.barriers.iter().any(|b| b.deadline <= now) {
                self.log.line(Prefix::Wrn, None, "the plugin did not confirm inbound SAs within 500 ms; sending on");
                self.finish_barriers(|b| b.deadline <= now);
            }
            self.flush_core();
        }
    }

    fn handle_input(&mut self, input: Input) {
        match input {
            Input::Datagram { from, to, data } => self.endpoint.handle_datagram(Instant::now(), from, to, &data),
            Input::PluginConnected { client, stream } => {
                self.log.line(Prefix::Ike, None, &format!("plugin {client} connected"));
                // A plugin that stops reading must not stall every exchange: its link is
                // given up instead (it reconnects and is initialized afresh).
                let _ = stream.set_write_timeout(Some(PLUGIN_WRITE_TIMEOUT));
                self.plugins.insert(client, Plugin { stream, closed: false });
            }
            Input::PluginMessage { client, mut bytes } => {
                match Message::decode_from(&bytes, ipc::Sender::Plugin) {
                    Ok(msg) => self.handle_plugin(client, msg),
                    Err(e) => self.bad_plugin_message(client, &bytes, &e),
                }
                ipc::wipe(&mut bytes);
            }
            Input::PluginGone { client, why } => {
                self.log.line(Prefix::Ike, None, &format!("plugin {client} went away ({why})"));
                self.plugins.remove(&client);
                self.barriers.retain(|b| b.client != client);
                self.deferred.retain(|(c, _)| *c != client);
            }
        }
    }

    fn bad_plugin_message(&mut self, client: ClientId, bytes: &[u8], e: &DecodeError) {
        self.log.line(Prefix::Err, None, &format!("bad message from plugin {client}: {e}"));
        if matches!(e, DecodeError::Version { .. }) {
            // Answer in our version so that the plugin reports the mismatch too.
            let mut reply = Message::new(MsgType::Register, SaType::Unspec, 0, self.pid);
            reply.header.errno = Some(Errno::Invalid);
            if bytes.len() >= 16 {
                reply.header.seq = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            }
            self.send(client, &reply);
            if let Some(p) = self.plugins.get_mut(&client) {
                let _ = p.stream.shutdown(std::net::Shutdown::Both);
                p.closed = true;
            }
        }
    }

    fn fresh_seq(&mut self) -> u32 {
        // The daemon's own seqs count down from the top, so they never meet the plugin's.
        self.next_seq = self.next_seq.wrapping_add(1);
        u32::MAX - self.next_seq
    }

    fn send(&mut self, client: ClientId, msg: &Message) {
        let Some(plugin) = self.plugins.get_mut(&client).filter(|p| !p.closed) else { return };
        let mut buf = Vec::new();
        let result = msg
            .encode(&mut buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
            .and_then(|()| plugin.stream.write_all(&buf));
        ipc::wipe(&mut buf);
        if let Err(e) = result {
            // Closing it tells the plugin, which reconnects and initializes us afresh.
            let _ = plugin.stream.shutdown(std::net::Shutdown::Both);
            plugin.closed = true;
            self.log.line(Prefix::Err, None, &format!("cannot write to plugin {client}: {e}"));
        }
    }

    fn owner(&self, bundle: &str) -> Option<ClientId> {
        self.bundles.get(bundle).map(|r| r.client)
    }

    // ------------------------------------------------------------ plugin → daemon

    fn handle_plugin(&mut self, client: ClientId, msg: Message) {
        let now = Instant::now();
        let name = msg.ext.bundle.clone();
        match msg.header.msg_type {
            MsgType::Register if msg.header.errno.is_none() => {
                self.log.line(Prefix::Ike, None, &format!("plugin {client} registered"));
                self.send(client, &msg.reply());
                if self.current.is_empty() {
                    // A daemon that starts over holds no keys: SAs a predecessor keyed
                    // would never be rekeyed, so the plugin drops them, holds the traffic
                    // and asks anew.
                    let flush = Message::new(MsgType::Flush, SaType::Unspec, self.fresh_seq(), self.pid);
                    self.send(client, &flush);
                }
            }
            MsgType::SpdFlush => {
                self.bundles.retain(|_, r| r.client != client);
                // pinit or a plugin restart: the moment to re-read the secrets too.
                match load_secrets(&self.options.secrets_file, &mut self.log) {
                    Ok(s) => self.secrets = s,
                    Err(e) => self.log.line(Prefix::Err, None, &format!("keeping the old secrets: {e}")),
                }
                self.send(client, &msg.reply());
            }
            MsgType::SpdAdd => {
                let reply = self.spd_add(client, &msg);
                self.send(client, &reply);
            }
            MsgType::SpdDelete => {
                if let Some(name) = name.filter(|n| self.owner(n) == Some(client)) {
                    self.endpoint.delete(now, &name);
                    self.bundles.remove(&name);
                    self.in_flight.remove(&name);
                    self.log.line(Prefix::Ike, Some(&name), "bundle removed by the plugin");
                }
                self.send(client, &msg.reply());
            }
            MsgType::SpdDump => {
                let mut names: Vec<&String> = self.bundles.iter().filter(|(_, r)| r.client == client).map(|(n, _)| n).collect();
                names.sort();
                let mut replies = Vec::new();
                for n in names {
                    let mut m = msg.reply();
                    m.ext.policy = Some(self.bundles[n].bundle.clone());
                    replies.push(m);
                }
                replies.push(msg.reply());
                for m in replies {
                    self.send(client, &m);
                }
            }
            MsgType::Acquire => self.acquire(client, &msg, now),
            MsgType::Expire => self.expire(&msg, now),
            _ => {
                // Replies to what we sent.
                if msg.header.msg_type == MsgType::Update {
                    self.confirmed(client, msg.header.seq);
                }
                let what = format!("{} {}", msg.header.msg_type, sa_name(msg.header.sa_type)).trim_end().to_owned();
                match msg.header.errno {
                    Some(e) => self.log.line(
                        Prefix::Err,
                        name.as_deref(),
                        &format!("the plugin refused {what} (errno {}){}", e.number(), spi_text(&msg)),
                    ),
                    None => self.log.line(Prefix::Dbg, name.as_deref(), &format!("plugin accepted {what}{}", spi_text(&msg))),
                }
            }
        }
    }

    fn spd_add(&mut self, client: ClientId, msg: &Message) -> Message {
        let Some(bundle) = msg.ext.policy.clone() else { return msg.error_reply(Errno::Invalid) };
        let Keying::Ike(_) = &bundle.keying else { return msg.error_reply(Errno::Invalid) };
        if let Some(a) = msg.ext.address_src.filter(|_| bundle.local.is_unspecified()) {
            if self.dynamic_local != Some(a.addr) {
                self.log.line(Prefix::Inf, Some(&bundle.name), &format!("dynamic address is now {}", a.addr));
            }
            self.dynamic_local = Some(a.addr);
            self.endpoint.set_local_address(Some(a.addr));
        }
        let local = if bundle.local.is_unspecified() { self.dynamic_local.unwrap_or(bundle.local) } else { bundle.local };
        if local.is_unspecified() {
            // Its secret may be filed under 127.0.0.1, which means the address to come: the
            // plugin sends the bundle again with it at connect.
            self.log.line(Prefix::Ike, Some(&bundle.name), &format!("bundle from plugin {client} waits for the host's address"));
            self.bundles.insert(bundle.name.clone(), Registered { bundle, client });
            return msg.reply();
        }
        let Some(psk) = self.secrets.find_psk(local, bundle.remote, self.dynamic_local) else {
            self.log.line(
                Prefix::Err,
                Some(&bundle.name),
                &format!(
                    "no secret for {local} <-> {} in {}: the bundle cannot be keyed",
                    bundle.remote,
                    self.options.secrets_file.display()
                ),
            );
            return msg.error_reply(Errno::Invalid);
        };
        let Some(conn) = Connection::from_bundle(&bundle, psk.as_bytes().to_vec()) else {
            return msg.error_reply(Errno::Invalid);
        };
        self.endpoint.add_connection(conn);
        self.log.line(
            Prefix::Ike,
            Some(&bundle.name),
            &format!("bundle from plugin {client}: {} <-> {}{}", bundle.local, bundle.remote, if bundle.remote.is_unspecified() { " (any peer)" } else { "" }),
        );
        self.bundles.insert(bundle.name.clone(), Registered { bundle, client });
        msg.reply()
    }

    fn acquire(&mut self, client: ClientId, msg: &Message, now: Instant) {
        let name = msg.ext.bundle.clone().unwrap_or_default();
        let conn = self.endpoint.connections().iter().find(|c| c.name == name).cloned();
        let (Some(conn), Some(_)) = (conn, self.bundles.get(&name).filter(|r| r.client == client)) else {
            self.log.line(Prefix::Err, Some(&name), "ACQUIRE for a bundle the plugin has not sent (or without a secret)");
            self.send(client, &link::failure_message(&name, msg.header.seq, self.pid, Errno::NoEntry));
            return;
        };
        let just_sent = self.sas_sent.get(&name).is_some_and(|t| now.duration_since(*t) < ACQUIRE_CROSSING);
        if self.early.keys().any(|(c, _)| *c == name) || just_sent {
            // A responder's inbound SAs are in and the outbound ones follow with Quick Mode
            // message 3, or the SAs went out as this ACQUIRE came in: the plugin releases
            // what it holds when they arrive.
            self.log.line(Prefix::Dbg, Some(&name), "ACQUIRE crossed SAs on their way to the plugin");
            return;
        }
        if conn.is_road_warrior() {
            self.log.line(Prefix::Err, Some(&name), "ACQUIRE for a road-warrior bundle: it only answers peers");
            self.send(client, &link::failure_message(&name, msg.header.seq, self.pid, Errno::Invalid));
            return;
        }
        let flow = match (msg.ext.address_src, msg.ext.address_dst) {
            (Some(s), Some(d)) => format!(" for {} -> {}", s.addr, d.addr),
            _ => String::new(),
        };
        if let Some(&id) = self.in_flight.get(&name) {
            self.log.line(Prefix::Ike, Some(&name), &format!("ACQUIRE{flow}: keying already under way"));
            self.acquires.insert(id, msg.header.seq);
            return;
        }
        self.log.line(Prefix::Ike, Some(&name), &format!("ACQUIRE{flow}: keying with {}", conn.remote));
        let id = self.endpoint.initiate(now, &conn);
        self.acquires.insert(id, msg.header.seq);
        self.in_flight.insert(name, id);
    }

    fn expire(&mut self, msg: &Message, now: Instant) {
        let name = msg.ext.bundle.clone().unwrap_or_default();
        let Some(spi) = msg.ext.sa.map(|s| s.spi) else { return };
        let hard = msg.ext.lifetime_hard.is_some();
        let what = format!("{} SPI {spi:#x}", sa_name(msg.header.sa_type));
        if hard {
            self.log.line(Prefix::Inf, Some(&name), &format!("{what} reached its hard lifetime in the plugin"));
            return;
        }
        let current = self.current.get(&name).is_some_and(|c| c.holds(spi));
        if !current || self.in_flight.contains_key(&name) {
            self.log.line(Prefix::Dbg, Some(&name), &format!("soft EXPIRE of {what}: already rekeyed or rekeying"));
            return;
        }
        let Some(conn) = self.endpoint.connections().iter().find(|c| c.name == name).cloned() else { return };
        if conn.is_road_warrior() {
            return;
        }
        self.log.line(Prefix::Inf, Some(&name), &format!("soft EXPIRE of {what}: rekeying"));
        let id = self.endpoint.initiate(now, &conn);
        self.in_flight.insert(name, id);
    }

    // ------------------------------------------------------------ core → world

    /// Events before datagrams: SAs reach the plugin before the Quick Mode message that
    /// lets the peer use them leaves.
    fn flush_core(&mut self) {
        while let Some(event) = self.endpoint.poll_event() {
            self.handle_event(event);
        }
        while let Some(t) = self.endpoint.poll_transmit() {
            self.held.push(t);
        }
        if !self.barriers.is_empty() {
            return;
        }
        for t in std::mem::take(&mut self.held) {
            let Some(socket) = self.udp.get(&t.from.port()).cloned() else {
                self.log.line(Prefix::Err, None, &format!("no socket for UDP port {}", t.from.port()));
                continue;
            };
            if let Err(e) = send_from(&socket, *t.from.ip(), t.to, &t.payload) {
                self.log.line(Prefix::Wrn, None, &format!("sending to {} failed: {e}", t.to));
            }
        }
        for (client, msg) in std::mem::take(&mut self.deferred) {
            self.send(client, &msg);
        }
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Log { level, conn, message } => self.log.line(level.into(), conn.as_deref(), &message),
            // The core has logged it already; this says which end started.
            Event::Phase1Established { conn, peer, suite, lifetime, initiator } => {
                self.log.line(
                    Prefix::Dbg,
                    Some(&conn),
                    &format!(
                        "ISAKMP SA established with {peer} as {} ({suite:?}, {} s)",
                        if initiator { "initiator" } else { "responder" },
                        lifetime.as_secs()
                    ),
                );
                self.write_key_log();
            }
            Event::Phase1Deleted { conn, peer, reason } => {
                self.log.line(Prefix::Inf, Some(&conn), &format!("ISAKMP SA with {peer} deleted ({reason:?})"))
            }
            Event::ChildSaInboundReady(child) => {
                let (Some(client), Some(bundle)) =
                    (self.owner(&child.conn), self.bundles.get(&child.conn).map(|r| r.bundle.clone()))
                else {
                    return;
                };
                let seq = self.fresh_seq();
                self.log.line(
                    Prefix::Ike,
                    Some(&child.conn),
                    &format!("inbound SA to plugin {client} ahead of Quick Mode message 2: {}", child.inbound_spis()),
                );
                self.send_install(client, link::install_messages(&child, &bundle, link::Directions::Inbound, seq, self.pid));
                self.early.insert((child.conn.clone(), child.inbound_spis()), seq);
            }
            Event::ChildSaEstablished(child) => {
                let early = self.early.remove(&(child.conn.clone(), child.inbound_spis()));
                let seq = child.exchange.and_then(|id| self.acquires.remove(&id)).or(early);
                if let Some(id) = child.exchange {
                    if self.in_flight.get(&child.conn) == Some(&id) {
                        self.in_flight.remove(&child.conn);
                    }
                }
                let (Some(client), Some(bundle)) =
                    (self.owner(&child.conn), self.bundles.get(&child.conn).map(|r| r.bundle.clone()))
                else {
                    self.log.line(Prefix::Wrn, Some(&child.conn), "IPsec SA negotiated, but no plugin holds the bundle: not installed");
                    return;
                };
                let seq = seq.unwrap_or_else(|| self.fresh_seq());
                self.log.line(
                    Prefix::Ike,
                    Some(&child.conn),
                    &format!(
                        "SA to plugin {client}: inbound {} outbound {}{}{}",
                        child.inbound_spis(),
                        child.outbound_spis(),
                        child.udp_encap.map_or(String::new(), |e| format!(", ESP in UDP {}->{}", e.local_port, e.remote_port)),
                        child.replaces.map_or(String::new(), |r| format!(", replaces {r}")),
                    ),
                );
                self.current.insert(child.conn.clone(), Current { inbound: child.inbound_spis(), outbound: child.outbound_spis() });
                self.sas_sent.insert(child.conn.clone(), Instant::now());
                let which = if early.is_some() { link::Directions::Outbound } else { link::Directions::Both };
                self.send_install(client, link::install_messages(&child, &bundle, which, seq, self.pid));
            }
            Event::ChildSaDeleted { conn, peer, inbound, outbound, reason } => {
                self.early.remove(&(conn.clone(), inbound));
                if self.current.get(&conn).is_some_and(|c| c.inbound == inbound) {
                    self.current.remove(&conn);
                }
                let Some(client) = self.owner(&conn) else { return };
                let local = self.bundles[&conn].bundle.local;
                let local = if local.is_unspecified() { self.dynamic_local.unwrap_or(local) } else { local };
                self.log.line(Prefix::Ike, Some(&conn), &format!("delete in plugin {client}: inbound {inbound} outbound {outbound} ({reason:?})"));
                let seq = self.fresh_seq();
                for msg in link::delete_messages(&conn, local, peer, &inbound, &outbound, seq, self.pid) {
                    self.send(client, &msg);
                }
            }
            Event::Failed { conn, peer, exchange, kind, reason, retrying } => {
                let prefix = if retrying { Prefix::Wrn } else { Prefix::Err };
                let tail = if retrying { "; retrying" } else { "" };
                self.log.line(prefix, Some(&conn), &format!("keying with {peer} failed: {reason}{tail}"));
                if retrying {
                    return;
                }
                if let Some(id) = exchange {
                    if self.in_flight.get(&conn) == Some(&id) {
                        self.in_flight.remove(&conn);
                    }
                    if let (Some(seq), Some(client)) = (self.acquires.remove(&id), self.owner(&conn)) {
                        let msg = link::failure_message(&conn, seq, self.pid, link::failure_errno(kind));
                        self.send(client, &msg);
                    }
                }
            }
        }
    }
}

impl Daemon {
    /// Sends SAs to a plugin; inbound ones (UPDATE) raise a barrier until confirmed.
    /// Sends SAs to a plugin. Inbound ones (GETSPI, UPDATE) go now and raise a barrier
    /// until the plugin confirms them; outbound ones (ADD) then follow the datagrams the
    /// barrier held.
    fn send_install(&mut self, client: ClientId, msgs: Vec<Message>) {
        let (then, now): (Vec<Message>, Vec<Message>) = msgs.into_iter().partition(|m| m.header.msg_type == MsgType::Add);
        let updates = now.iter().filter(|m| m.header.msg_type == MsgType::Update).count();
        for msg in &now {
            self.send(client, msg);
        }
        let connected = self.plugins.get(&client).is_some_and(|p| !p.closed);
        match now.first() {
            Some(first) if updates > 0 && connected => {
                let seq = first.header.seq;
                let deadline = Instant::now() + BARRIER_TIMEOUT;
                self.barriers.push(Barrier { client, seq, updates, deadline, then });
            }
            _ => self.deferred.extend(then.into_iter().map(|m| (client, m))),
        }
    }

    /// The plugin answered an UPDATE (installed or refused: either way it is done).
    fn confirmed(&mut self, client: ClientId, seq: u32) {
        if let Some(b) = self.barriers.iter_mut().find(|b| b.client == client && b.seq == seq) {
            b.updates = b.updates.saturating_sub(1);
        }
        self.finish_barriers(|b| b.updates == 0);
    }

    fn finish_barriers(&mut self, done: impl Fn(&Barrier) -> bool) {
        let (finished, waiting): (Vec<Barrier>, Vec<Barrier>) = std::mem::take(&mut self.barriers).into_iter().partition(|b| done(b));
        self.barriers = waiting;
        for b in finished {
            self.deferred.extend(b.then.into_iter().map(|m| (b.client, m)));
        }
    }

    fn write_key_log(&mut self) {
        let Some(path) = self.options.ike_key_log.clone() else { return };
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut lines = String::new();
        for (cookie, key) in self.endpoint.ike_key_log() {
            if self.key_logged.insert(cookie) {
                lines.push_str(&format!("{},{}\n", hex(&cookie), hex(&key)));
            }
        }
        use std::os::unix::fs::OpenOptionsExt;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(lines.as_bytes()));
        if let Err(e) = written {
            self.log.line(Prefix::Err, None, &format!("cannot write the IKE key log {}: {e}", path.display()));
        }
    }
}

fn sa_name(t: SaType) -> &'static str {
    match t {
        SaType::Esp => "ESP",
        SaType::Ah => "AH",
        SaType::IpComp => "IPComp",
        _ => "",
    }
}

fn spi_text(msg: &Message) -> String {
    msg.ext.sa.map_or(String::new(), |s| format!(" SPI {:#x}", s.spi))
}
