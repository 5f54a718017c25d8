//! The plugin's end of the keying daemon link (docs/daemon-link.md). The plugin connects to
//! the daemon's socket, announces itself (REGISTER) and its `keying = ike` bundles (SPDADD),
//! asks for keys when a packet needs them (ACQUIRE), hands out SPIs (GETSPI) and installs the
//! SAs the daemon negotiated (UPDATE for inbound, ADD for outbound).
//!
//! One background thread per instance reads the daemon's messages and answers them. When
//! the daemon goes away the thread keeps trying to reconnect, so a restarted daemon is
//! initialized without anyone running `pinit`. The packet path only ever writes an ACQUIRE,
//! through `LinkSender`, and never waits for the daemon.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::Keying;
use crate::crypto::{AeadAlg, CipherAlg, IntegAlg};
use crate::ipc::{
    self, Address, AuthAlg, CompAlg, EncryptAlg, Errno, Message, MsgType, SaExt, SaState, SaType, Sender, SupportedAlg,
};
use crate::log::Level;
use crate::sad::{Expiry, Sa, SaLifetime, SaProto, SaTransform, UdpPorts};
use crate::spd::{FlowKey, SaSet};
use crate::Core;

/// Where the daemon listens unless the host says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ipsec-plugin/pluto.ctl";
/// How often a lost daemon is looked for again.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The writing half of the link, shared with the packet path (which sends ACQUIRE).
#[derive(Default)]
pub struct LinkSender {
    stream: Mutex<Option<UnixStream>>,
    seq: AtomicU32,
}

impl LinkSender {
    pub fn is_up(&self) -> bool {
        lock(&self.stream).is_some()
    }

    pub fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    /// Sends one message; the buffer that held it is wiped (UPDATE/ADD replies carry no
    /// keys, but the habit costs nothing).
    pub fn send(&self, msg: &Message) -> io::Result<()> {
        let mut buf = Vec::new();
        msg.encode(&mut buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let result = match lock(&self.stream).as_mut() {
            Some(stream) => stream.write_all(&buf),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "no keying daemon")),
        };
        ipc::wipe(&mut buf);
        result
    }

    /// Asks for the SAs of `bundle`, with the held packet's selector. False when there is
    /// no daemon to ask.
    pub fn acquire(&self, bundle: &str, flow: &FlowKey) -> bool {
        let mut msg = Message::new(MsgType::Acquire, SaType::Unspec, self.next_seq(), std::process::id());
        let (sport, dport) = flow.ports.unwrap_or((0, 0));
        msg.ext.address_src = Some(Address { proto: flow.protocol, prefix_len: 32, addr: flow.src, port: sport });
        msg.ext.address_dst = Some(Address { proto: flow.protocol, prefix_len: 32, addr: flow.dst, port: dport });
        msg.ext.bundle = Some(bundle.to_string());
        self.send(&msg).is_ok()
    }

    fn set(&self, stream: Option<UnixStream>) {
        let mut current = lock(&self.stream);
        if let Some(old) = current.take() {
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
        *current = stream;
    }
}

/// SAs the daemon is installing for one negotiation (one seq) of one bundle, direction by
/// direction, until each direction has every protocol the bundle uses.
#[derive(Default)]
struct Pending {
    inbound: SaSet,
    outbound: SaSet,
}

/// The link's bookkeeping in the core: SPIs handed out and half-installed negotiations.
#[derive(Default)]
pub struct LinkState {
    /// Where the daemon is looked for; None when the link is off.
    pub path: Option<PathBuf>,
    /// SPIs (CPIs) reserved by GETSPI and not yet completed by UPDATE.
    larval: HashSet<(SaProto, u32)>,
    pending: HashMap<(String, u32), Pending>,
}

/// The reading thread of one instance; dropping it stops the thread.
pub struct DaemonLink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    core: Weak<Core>,
}

impl DaemonLink {
    /// Starts looking for the daemon at `path`, now and whenever the link is lost.
    pub(crate) fn start(path: &Path, core: &Arc<Core>) -> io::Result<DaemonLink> {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = Arc::downgrade(core);
        let thread = {
            let (stop, weak, path) = (Arc::clone(&stop), weak.clone(), path.to_path_buf());
            std::thread::Builder::new().name("ipsec-daemon-link".into()).spawn(move || run(&path, &weak, &stop))?
        };
        Ok(DaemonLink { stop, thread: Some(thread), core: weak })
    }
}

impl Drop for DaemonLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(core) = self.core.upgrade() {
            // Unblocks the thread's read.
            core.ctx.link.set(None);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects, initializes, reads until the link breaks; again and again until stopped.
fn run(path: &Path, weak: &Weak<Core>, stop: &AtomicBool) {
    let mut logged_absent = false;
    while !stop.load(Ordering::SeqCst) {
        match UnixStream::connect(path) {
            Ok(stream) => {
                logged_absent = false;
                let Some(core) = weak.upgrade() else { return };
                let reader = match stream.try_clone() {
                    Ok(r) => r,
                    Err(_) => continue,
                };
                core.ctx.link.set(Some(stream));
                core.log().event(Level::Ike, "", "daemon", format_args!("connected to the keying daemon at {}", path.display()));
                core.link_initialize();
                drop(core);
                read_messages(reader, weak, stop);
                let Some(core) = weak.upgrade() else { return };
                core.ctx.link.set(None);
                lock(&core.link).pending.clear();
                if !stop.load(Ordering::SeqCst) {
                    core.log().event(Level::Ike, "", "daemon", format_args!("keying daemon link closed; waiting for it to come back"));
                }
            }
            Err(e) => {
                if !logged_absent {
                    if let Some(core) = weak.upgrade() {
                        core.log().event(Level::Ike, "", "daemon", format_args!("no keying daemon at {}: {e}", path.display()));
                    }
                    logged_absent = true;
                }
            }
        }
        // Sleep in short steps so that closing the plugin is never slow.
        for _ in 0..10 {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(RECONNECT_EVERY / 10);
        }
    }
}

/// Housekeeping interval of the link thread: lifetimes and held packets are checked this
/// often while the link is up, whether or not the host calls `tick`.
const TICK_EVERY: Duration = Duration::from_secs(1);

/// Fills `buf` from the stream, running `idle` whenever a second passes without data.
/// False when the stream ended, failed, or `stop` was set.
fn read_full(stream: &mut UnixStream, buf: &mut [u8], stop: &AtomicBool, idle: &mut dyn FnMut()) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return false,
            Ok(n) => filled += n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => idle(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

fn read_messages(mut stream: UnixStream, weak: &Weak<Core>, stop: &AtomicBool) {
    if stream.set_read_timeout(Some(TICK_EVERY)).is_err() {
        return;
    }
    let mut idle = || {
        if let Some(core) = weak.upgrade() {
            core.tick();
        }
    };
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.resize(ipc::HEADER_LEN, 0);
        if !read_full(&mut stream, &mut buf, stop, &mut idle) {
            return;
        }
        let len = match ipc::message_len(&buf) {
            Ok(Some(len)) => len,
            Ok(None) | Err(_) => {
                let Some(core) = weak.upgrade() else { return };
                let why = ipc::message_len(&buf).err().map_or("short header".to_string(), |e| e.to_string());
                core.log().event(Level::Err, "", "daemon", format_args!("keying daemon link: {why}; closing it"));
                return;
            }
        };
        buf.resize(len, 0);
        if !read_full(&mut stream, &mut buf[ipc::HEADER_LEN..], stop, &mut idle) {
            return;
        }
        let Some(core) = weak.upgrade() else { return };
        match Message::decode_from(&buf, Sender::Daemon) {
            Ok(msg) => {
                if let Some(reply) = core.link_handle(msg) {
                    if let Err(e) = core.ctx.link.send(&reply) {
                        core.log().event(Level::Err, "", "daemon", format_args!("cannot answer the keying daemon: {e}"));
                    }
                }
            }
            Err(e) => {
                core.log().event(Level::Err, "", "daemon", format_args!("bad message from the keying daemon: {e}"));
                if matches!(e, ipc::DecodeError::Version { .. }) {
                    ipc::wipe(&mut buf);
                    return;
                }
            }
        }
        ipc::wipe(&mut buf);
    }
}

/// The algorithms the data plane implements, for REGISTER.
fn supported() -> (Vec<SupportedAlg<AuthAlg>>, Vec<SupportedAlg<EncryptAlg>>) {
    let auth = IntegAlg::ALL
        .iter()
        .map(|&a| {
            let bits = (a.key_len() * 8) as u16;
            SupportedAlg { alg: AuthAlg::from(a), iv_len: 0, min_bits: bits, max_bits: bits }
        })
        .collect();
    let bits = |n: usize| (n * 8) as u16;
    let encrypt = vec![
        SupportedAlg { alg: EncryptAlg::DesCbc, iv_len: 8, min_bits: 64, max_bits: 64 },
        SupportedAlg { alg: EncryptAlg::TripleDesCbc, iv_len: 8, min_bits: 192, max_bits: 192 },
        SupportedAlg { alg: EncryptAlg::Null, iv_len: 0, min_bits: 0, max_bits: 0 },
        SupportedAlg {
            alg: EncryptAlg::AesCbc,
            iv_len: 16,
            min_bits: bits(CipherAlg::AesCbc128.key_len()),
            max_bits: bits(CipherAlg::AesCbc256.key_len()),
        },
        SupportedAlg {
            alg: EncryptAlg::AesGcm16,
            iv_len: 8,
            min_bits: bits(AeadAlg::AesGcm16_128.key_len()),
            max_bits: bits(AeadAlg::AesGcm16_256.key_len()),
        },
    ];
    (auth, encrypt)
}

fn proto_of(sa_type: SaType) -> Option<SaProto> {
    match sa_type {
        SaType::Esp => Some(SaProto::Esp),
        SaType::Ah => Some(SaProto::Ah),
        SaType::IpComp => Some(SaProto::IpComp),
        _ => None,
    }
}

/// How long `pinit` waits for a daemon that has just started to be found.
const PINIT_WAIT: Duration = Duration::from_secs(3);

impl Core {
    /// What `pinit` asks for through the control socket: initialize the daemon now. A
    /// daemon that was just restarted may not be found yet; wait for the link a moment.
    pub(crate) fn pinit(&self) -> Result<String, String> {
        let Some(path) = lock(&self.link).path.clone() else {
            return Err("the keying daemon link is off in this plugin".to_string());
        };
        let deadline = std::time::Instant::now() + PINIT_WAIT;
        while !self.ctx.link.is_up() {
            if std::time::Instant::now() >= deadline {
                return Err(format!("no keying daemon answers at {}", path.display()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let sent = self.link_initialize();
        self.log().event(Level::Ike, "", "daemon", format_args!("pinit: keying daemon re-initialized"));
        Ok(format!("keying daemon at {} initialized: {sent} IKE bundles sent\n", path.display()))
    }

    /// REGISTER, SPDFLUSH and one SPDADD per IKE bundle: what a (re)started daemon needs
    /// to know. Replies are read by the link thread.
    pub(crate) fn link_initialize(&self) -> usize {
        let link = &self.ctx.link;
        let pid = std::process::id();
        let mut register = Message::new(MsgType::Register, SaType::Unspec, link.next_seq(), pid);
        let (auth, encrypt) = supported();
        register.ext.supported_auth = Some(auth);
        register.ext.supported_encrypt = Some(encrypt);
        let flush = Message::new(MsgType::SpdFlush, SaType::Unspec, link.next_seq(), pid);
        let mut sent = 0;
        let ok = link.send(&register).is_ok() && link.send(&flush).is_ok();
        if ok {
            sent = self.link_send_bundles();
        }
        self.log().event(
            Level::Ike,
            "",
            "daemon",
            format_args!("keying daemon initialized: {}", if ok { format!("{sent} IKE bundles sent") } else { "link failed".to_string() }),
        );
        sent
    }

    /// SPDADD for every IKE bundle, in file order (also after reload and connect, when the
    /// bundles or the host's address changed). Returns how many were sent.
    pub(crate) fn link_send_bundles(&self) -> usize {
        let link = &self.ctx.link;
        if !link.is_up() {
            return 0;
        }
        let (bundles, dynamic) = {
            let control = self.control();
            (control.bundles.clone(), control.dynamic_local)
        };
        let mut sent = 0;
        for b in bundles.into_iter().filter(|b| matches!(b.keying, Keying::Ike(_))) {
            let mut msg = Message::new(MsgType::SpdAdd, SaType::Unspec, link.next_seq(), std::process::id());
            if b.local.is_unspecified() {
                msg.ext.address_src = dynamic.map(Address::host);
            }
            msg.ext.policy = Some(b);
            if link.send(&msg).is_ok() {
                sent += 1;
            }
        }
        sent
    }

    /// Answers one message from the daemon.
    fn link_handle(&self, msg: Message) -> Option<Message> {
        match msg.header.msg_type {
            MsgType::GetSpi => Some(self.link_getspi(&msg)),
            MsgType::Update | MsgType::Add => Some(self.link_update(&msg)),
            MsgType::Delete => Some(self.link_delete(&msg)),
            MsgType::Flush => Some(self.link_flush(&msg)),
            MsgType::Acquire => {
                // From the daemon an ACQUIRE always reports that keying failed.
                let bundle = msg.ext.bundle.clone().unwrap_or_default();
                let why = match msg.header.errno {
                    Some(Errno::Access) => "the peer failed authentication (pre-shared key)".to_string(),
                    Some(Errno::TimedOut) => "keying gave up (keyingtries)".to_string(),
                    Some(Errno::Refused) => "the peer refused the proposal".to_string(),
                    Some(e) => format!("keying failed (errno {})", e.number()),
                    None => "keying failed".to_string(),
                };
                self.keying_failed(&bundle, &why);
                None
            }
            MsgType::Get | MsgType::Dump => Some(msg.error_reply(Errno::NotSupported)),
            // Replies to what the plugin sent.
            _ => {
                if let Some(e) = msg.header.errno {
                    let bundle = msg.ext.bundle.clone().or_else(|| msg.ext.policy.as_ref().map(|p| p.name.clone())).unwrap_or_default();
                    self.log().event(
                        Level::Err,
                        &bundle,
                        "daemon",
                        format_args!("keying daemon refused {} (errno {})", msg.header.msg_type.name(), e.number()),
                    );
                }
                None
            }
        }
    }

    /// GETSPI: a free SPI in the daemon's range, reserved until UPDATE uses it.
    fn link_getspi(&self, msg: &Message) -> Message {
        let (Some(proto), Some(range)) = (proto_of(msg.header.sa_type), msg.ext.spirange) else {
            return msg.error_reply(Errno::Invalid);
        };
        let max = if proto == SaProto::IpComp { range.max.min(0xFFFF) } else { range.max };
        let min = range.min.max(ipc::DAEMON_SPI_MIN);
        if min > max {
            return msg.error_reply(Errno::Invalid);
        }
        let spd = self.current();
        let mut state = lock(&self.link);
        let span = u64::from(max - min) + 1;
        let mut chosen = None;
        // Random first, so SPIs do not reveal how many SAs came before; a full scan is the
        // fallback for a nearly full range.
        for _ in 0..64 {
            let mut r = [0u8; 8];
            crate::crypto::fill_random(&mut r);
            let spi = min + (u64::from_be_bytes(r) % span) as u32;
            if !spd.sad.contains(proto, spi) && !state.larval.contains(&(proto, spi)) {
                chosen = Some(spi);
                break;
            }
        }
        if chosen.is_none() && span <= 0x10000 {
            chosen = (min..=max).find(|&spi| !spd.sad.contains(proto, spi) && !state.larval.contains(&(proto, spi)));
        }
        let Some(spi) = chosen else { return msg.error_reply(Errno::NoSpace) };
        state.larval.insert((proto, spi));
        let mut reply = msg.reply();
        reply.ext.sa = Some(SaExt::bare(spi, SaState::Larval));
        reply.ext.address_src = msg.ext.address_src;
        reply.ext.address_dst = msg.ext.address_dst;
        reply
    }

    /// UPDATE (inbound) or ADD (outbound): builds the SA from the keys; once a direction of
    /// the negotiation has every protocol the bundle uses, installs it.
    fn link_update(&self, msg: &Message) -> Message {
        match self.link_build_sa(msg) {
            Ok(()) => {
                let mut reply = msg.reply();
                reply.ext.sa = msg.ext.sa;
                reply.ext.address_src = msg.ext.address_src;
                reply.ext.address_dst = msg.ext.address_dst;
                reply
            }
            Err(errno) => msg.error_reply(errno),
        }
    }

    fn link_build_sa(&self, msg: &Message) -> Result<(), Errno> {
        let inbound = msg.header.msg_type == MsgType::Update;
        let (Some(proto), Some(ext), Some(bundle_name), Some(src), Some(dst)) =
            (proto_of(msg.header.sa_type), msg.ext.sa, msg.ext.bundle.as_deref(), msg.ext.address_src, msg.ext.address_dst)
        else {
            return Err(Errno::Invalid);
        };
        let bundle = self.ike_bundle(bundle_name).map_err(|_| Errno::NoEntry)?;
        // Inbound SAs run from the peer to this end, outbound ones the other way.
        let (here, there) = if inbound { (dst, src) } else { (src, dst) };
        // A road warrior is bound to the peer its SAs name; other bundles have theirs.
        let peer = if bundle.remote.is_unspecified() {
            if there.addr.is_unspecified() || there.addr.is_broadcast() || there.addr.is_multicast() {
                return Err(Errno::Invalid);
            }
            Some(there.addr)
        } else {
            None
        };
        // NAT-T is negotiated per SA and concerns ESP alone (RFC 3948); `udp_encap = yes`
        // asks for it always.
        let encap = if proto != SaProto::Esp {
            None
        } else if ext.flags & ipc::SA_FLAG_UDP_ENCAP != 0 {
            if bundle.ah.is_some() {
                // AH covers the outer addresses a NAT rewrites; config refuses this pair too.
                return Err(Errno::Invalid);
            }
            Some(UdpPorts::or_nat_t(here.port, there.port))
        } else {
            bundle.udp_encap.then_some(UdpPorts::NAT_T)
        };
        if inbound && !lock(&self.link).larval.remove(&(proto, ext.spi)) {
            // An inbound SPI must be one this side handed out.
            return Err(Errno::NoEntry);
        }
        let now = self.host.now_ms();
        let enc = msg.ext.key_encrypt.as_ref().map_or(&[][..], |k| k.as_bytes());
        let auth = msg.ext.key_auth.as_ref().map_or(&[][..], |k| k.as_bytes());
        let window = if inbound { ext.replay_window } else { 0 };
        let sa = match proto {
            SaProto::Esp => {
                let t = ext.esp_transform().ok_or(Errno::NotSupported)?;
                if bundle.esp != Some(t) {
                    return Err(Errno::Invalid);
                }
                Sa::esp(ext.spi, inbound, t, enc, auth, window, now).map_err(|_| Errno::Invalid)?.with_udp_encap(encap)
            }
            SaProto::Ah => {
                let alg = ext.auth.integ().ok_or(Errno::NotSupported)?;
                if bundle.ah != Some(alg) {
                    return Err(Errno::Invalid);
                }
                Sa::ah(ext.spi, inbound, alg, auth, window, now).map_err(|_| Errno::Invalid)?
            }
            SaProto::IpComp => {
                if ext.compress != CompAlg::Deflate || !bundle.ipcomp {
                    return Err(Errno::NotSupported);
                }
                Sa::new(SaProto::IpComp, ext.spi, inbound, SaTransform::ipcomp(), 0, now)
            }
        };
        let limit = |l: Option<ipc::Lifetime>| l.unwrap_or_default();
        let (soft, hard) = (limit(msg.ext.lifetime_soft), limit(msg.ext.lifetime_hard));
        let sa = Arc::new(sa.with_lifetime(SaLifetime {
            soft_secs: soft.addtime,
            hard_secs: hard.addtime,
            soft_bytes: soft.bytes,
            hard_bytes: hard.bytes,
        }));
        let key = (bundle.name.clone(), msg.header.seq);
        let complete = {
            let mut state = lock(&self.link);
            let pending = state.pending.entry(key.clone()).or_default();
            let set = if inbound { &mut pending.inbound } else { &mut pending.outbound };
            let slot = match proto {
                SaProto::Esp => &mut set.esp,
                SaProto::Ah => &mut set.ah,
                SaProto::IpComp => &mut set.ipcomp,
            };
            *slot = Some(sa);
            // IPComp is optional: the peer may not have agreed to it, and the daemon sends
            // a direction's IPComp SA before its ESP/AH ones.
            let done = (bundle.esp.is_none() || set.esp.is_some()) && (bundle.ah.is_none() || set.ah.is_some());
            let set = done.then(|| std::mem::take(set));
            if pending.inbound.iter().next().is_none() && pending.outbound.iter().next().is_none() {
                state.pending.remove(&key);
            }
            set
        };
        if let Some(set) = complete {
            let (out, inb) = if inbound { (None, Some(set)) } else { (Some(set), None) };
            self.install_sets(&bundle.name, out, inb, peer).map_err(|_| Errno::Invalid)?;
        }
        Ok(())
    }

    /// DELETE: removes the SA with this SPI, current or superseded. A bundle that loses its
    /// outbound SAs holds its packets and asks for keys again.
    fn link_delete(&self, msg: &Message) -> Message {
        let (Some(proto), Some(ext)) = (proto_of(msg.header.sa_type), msg.ext.sa) else {
            return msg.error_reply(Errno::Invalid);
        };
        if lock(&self.link).larval.remove(&(proto, ext.spi)) {
            return msg.reply();
        }
        let spd = self.current();
        let owner = spd.bundles.iter().find(|b| {
            [&b.outbound, &b.inbound, &b.retired]
                .into_iter()
                .flatten()
                .flat_map(SaSet::iter)
                .any(|sa| sa.proto == proto && sa.spi == ext.spi && matches!(b.config.keying, Keying::Ike(_)))
        });
        let Some(owner) = owner else { return msg.error_reply(Errno::NoEntry) };
        let name = owner.name().to_string();
        self.remove_sas(&name, |sa| sa.proto == proto && sa.spi == ext.spi);
        self.log().event(Level::Inf, &name, "sa", format_args!("SA deleted by the keying daemon: {proto} SPI 0x{:08x}", ext.spi));
        let mut reply = msg.reply();
        reply.ext.sa = Some(ext);
        reply.ext.address_src = msg.ext.address_src;
        reply.ext.address_dst = msg.ext.address_dst;
        reply
    }

    /// Checks the lifetimes of the daemon's SAs: a soft limit is reported (EXPIRE with
    /// LIFETIME_SOFT: the daemon rekeys, the SA keeps working), a hard one removes the SA
    /// and is reported (EXPIRE with LIFETIME_HARD).
    pub(crate) fn expire_sas(&self, now_ms: u64) {
        let spd = self.current();
        let mut hard: Vec<(String, SaProto, u32)> = Vec::new();
        for b in spd.bundles.iter().filter(|b| matches!(b.config.keying, Keying::Ike(_))) {
            for sa in [&b.outbound, &b.inbound, &b.retired].into_iter().flatten().flat_map(SaSet::iter) {
                let Some(expiry) = sa.check_lifetime(now_ms) else { continue };
                let which = match expiry {
                    Expiry::Soft => "soft",
                    Expiry::Hard => "hard",
                };
                let dir = if sa.inbound { "in" } else { "out" };
                self.log().event(
                    Level::Inf,
                    b.name(),
                    "sa",
                    format_args!("SA {which} lifetime reached: {dir} {} SPI 0x{:08x}", sa.proto, sa.spi),
                );
                self.send_expire(b, sa, expiry);
                if expiry == Expiry::Hard {
                    hard.push((b.name().to_string(), sa.proto, sa.spi));
                }
            }
        }
        for (bundle, proto, spi) in hard {
            self.remove_sas(&bundle, |sa| sa.proto == proto && sa.spi == spi);
        }
    }

    fn send_expire(&self, b: &crate::spd::BundlePolicy, sa: &Sa, expiry: Expiry) {
        let sa_type = match sa.proto {
            SaProto::Esp => SaType::Esp,
            SaProto::Ah => SaType::Ah,
            SaProto::IpComp => SaType::IpComp,
        };
        let link = &self.ctx.link;
        let mut msg = Message::new(MsgType::Expire, sa_type, link.next_seq(), std::process::id());
        let state = if expiry == Expiry::Hard { SaState::Dead } else { SaState::Dying };
        let flags = if sa.udp_encap.is_some() { ipc::SA_FLAG_UDP_ENCAP } else { 0 };
        msg.ext.sa = Some(SaExt { flags, ..SaExt::bare(sa.spi, state) });
        msg.ext.lifetime_current = Some(ipc::Lifetime {
            allocations: u32::try_from(sa.counters.packets()).unwrap_or(u32::MAX),
            bytes: sa.counters.bytes(),
            addtime: sa.created_ms / 1000,
            usetime: 0,
        });
        let l = &sa.lifetime;
        let limit = |secs, bytes| Some(ipc::Lifetime { allocations: 0, bytes, addtime: secs, usetime: 0 });
        match expiry {
            Expiry::Soft => msg.ext.lifetime_soft = limit(l.soft_secs, l.soft_bytes),
            Expiry::Hard => msg.ext.lifetime_hard = limit(l.hard_secs, l.hard_bytes),
        }
        let (local, peer) = (b.local.unwrap_or(Ipv4Addr::UNSPECIFIED), b.peer.unwrap_or(Ipv4Addr::UNSPECIFIED));
        let ports = sa.udp_encap.map_or((0, 0), |p| (p.local, p.remote));
        let here = Address { port: ports.0, ..Address::host(local) };
        let there = Address { port: ports.1, ..Address::host(peer) };
        let (src, dst) = if sa.inbound { (there, here) } else { (here, there) };
        msg.ext.address_src = Some(src);
        msg.ext.address_dst = Some(dst);
        msg.ext.bundle = Some(b.name().to_string());
        let _ = link.send(&msg);
    }

    /// FLUSH: forgets every SA the daemon installed (manual ones stay).
    fn link_flush(&self, msg: &Message) -> Message {
        let names: Vec<String> = self
            .current()
            .bundles
            .iter()
            .filter(|b| matches!(b.config.keying, Keying::Ike(_)))
            .map(|b| b.name().to_string())
            .collect();
        for name in &names {
            self.remove_sas(name, |_| true);
        }
        let mut state = lock(&self.link);
        state.larval.clear();
        state.pending.clear();
        drop(state);
        self.log().event(Level::Ike, "", "daemon", format_args!("keying daemon flushed its SAs"));
        msg.reply()
    }
}
