//! The IPsec plugin: SA bundles from `ipsec.cfg` applied to a host's IPv4 packets in place.
//!
//! Data flows one way: bytes in → checked view (`wire`) → decision (`spd`, `engine`) →
//! in-place transform (`crypto`) → verdict out. `ffi` is the only exported C surface;
//! this Rust API is what it wraps (and what Rust hosts and tests use directly).

#![deny(unsafe_code)]

pub mod acquire;
pub mod config;
pub mod control;
pub mod control_client;
pub mod crypto;
pub mod daemon;
pub mod dump;
pub mod engine;
mod ffi;
pub mod ipc;
pub mod log;
pub mod sad;
pub mod spd;
pub mod stats;
pub mod wire;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::{Bundle, Keying};
use crate::engine::Context;
use crate::log::{EventLog, Level, LogOptions};
use crate::sad::Sa;
use crate::spd::{Carried, SaSet, Spd};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the plugin needs from its host.
pub trait Host: Send + Sync + 'static {
    /// A line for the host's output window (ERR and SEC events).
    fn output_window(&self, line: &str);
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// A packet the plugin generates or releases, for the host to send on.
    fn emit_packet(&self, direction: Direction, packet: &[u8]);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

/// What the host does with the packet after a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not for IPsec: forward it as it was.
    Pass,
    /// Rewritten in place: forward `buf[offset..offset + len]`.
    Transformed,
    /// Discard it (counted and, for security events, logged).
    Drop,
    /// Kept by the plugin until keys arrive; the host must not send it.
    Held,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// `ipsec.cfg`, or the directory holding it.
    pub config_path: PathBuf,
    /// Default: `ipsec.log` beside `ipsec.cfg`.
    pub log_path: Option<PathBuf>,
    /// 0 = the default cap.
    pub log_max_bytes: u64,
    /// Writes DBG lines.
    pub debug: bool,
}

/// A packet in a host buffer: the IPv4 packet is `buf[offset..offset + len]`; the bytes
/// before it are headroom and those after it tailroom, which transforms grow into.
pub struct PacketBuf<'a> {
    pub buf: &'a mut [u8],
    pub offset: usize,
    pub len: usize,
}

/// Headroom and tailroom that always suffice for the worst case of one bundle:
/// tunnel header, IPComp, ESP header and IV, AH; ESP padding and ICV.
pub const MIN_HEADROOM_PER_BUNDLE: usize = 20 + 4 + 8 + 16 + 28;
pub const MIN_TAILROOM_PER_BUNDLE: usize = 15 + 2 + 16;

#[derive(Debug)]
pub enum Error {
    ConfigIo { path: PathBuf, source: std::io::Error },
    LogIo { path: PathBuf, source: std::io::Error },
    NoSuchBundle(String),
    NotIkeBundle(String),
    Keys(String),
    InvalidArgument(String),
    ControlIo { path: PathBuf, source: std::io::Error },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::ConfigIo { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Error::LogIo { path, source } => write!(f, "cannot open log {}: {source}", path.display()),
            Error::NoSuchBundle(b) => write!(f, "no bundle named [{b}]"),
            Error::NotIkeBundle(b) => write!(f, "bundle [{b}] is manually keyed; keys can be installed only for keying = ike"),
            Error::Keys(msg) => write!(f, "bad keys: {msg}"),
            Error::InvalidArgument(msg) => f.write_str(msg),
            Error::ControlIo { path, source } => write!(f, "control socket {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for Error {}

/// Random numbers for things that need not be secret but must not be predictable
/// across restarts (the IPv4 identification of tunnel headers).
fn crypto_random_u32() -> u32 {
    let mut b = [0u8; 4];
    crypto::fill_random(&mut b);
    u32::from_be_bytes(b)
}

/// One plugin instance. Hooks take `&self` and may run on many threads at once.
pub struct Plugin {
    core: Arc<Core>,
    control_server: Mutex<Option<control::ControlServer>>,
    daemon: Mutex<Option<daemon::DaemonLink>>,
}

/// The state of an instance that its background threads (control socket, daemon link)
/// share with the hooks. It owns no thread, so no reference cycle keeps it alive.
struct Core {
    config_file: PathBuf,
    host: Arc<dyn Host>,
    ctx: Context,
    spd: RwLock<Arc<Spd>>,
    /// The configured bundles and the host's address: what the Spd is rebuilt from.
    /// Held across a rebuild so two control events cannot interleave.
    control: Mutex<ControlState>,
    /// SPIs handed out to the keying daemon and half-installed negotiations.
    link: Mutex<daemon::LinkState>,
}

struct ControlState {
    bundles: Vec<Bundle>,
    /// Sections with errors that block their traffic (`config::Config::failed`).
    failed: Vec<Bundle>,
    dynamic_local: Option<Ipv4Addr>,
}

fn config_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("ipsec.cfg")
    } else {
        path.to_path_buf()
    }
}

impl Plugin {
    /// Opens an instance. Returns it with the number of configuration errors: bundles with
    /// errors are not active, the others are.
    pub fn open(options: Options, host: Arc<dyn Host>) -> Result<(Plugin, usize), Error> {
        let config_file = config_file(&options.config_path);
        let clock_host = Arc::clone(&host);
        let clock: log::Clock = Arc::new(move || clock_host.now_ms());
        let window_host = Arc::clone(&host);
        let window: log::OutputWindow = Arc::new(move |line: &str| window_host.output_window(line));
        // Read the configuration first: if it is missing, there is no place for ipsec.log
        // either, and the operator learns why through the output window alone.
        let config = match config::load(&config_file) {
            Ok(c) => c,
            Err(source) => {
                if let Ok(log) = EventLog::open(LogOptions { path: None, ..LogOptions::default() }, clock, Some(window)) {
                    log.event(Level::Err, "", "config", format_args!("cannot read {}: {source}", config_file.display()));
                }
                return Err(Error::ConfigIo { path: config_file, source });
            }
        };
        let log_path = options
            .log_path
            .clone()
            .unwrap_or_else(|| config_file.parent().unwrap_or(Path::new(".")).join("ipsec.log"));
        let mut log_options = LogOptions { path: Some(log_path.clone()), debug: options.debug, ..LogOptions::default() };
        if options.log_max_bytes != 0 {
            log_options.max_bytes = options.log_max_bytes;
        }
        let log = EventLog::open(log_options, clock, Some(window)).map_err(|source| Error::LogIo { path: log_path, source })?;
        log.event(Level::Inf, "", "load", format_args!("plugin {VERSION} loaded, config {}", config_file.display()));
        let core = Core {
            config_file,
            host: Arc::clone(&host),
            ctx: Context::new(log, host),
            spd: RwLock::new(Arc::new(Spd::default())),
            control: Mutex::new(ControlState { bundles: Vec::new(), failed: Vec::new(), dynamic_local: None }),
            link: Mutex::new(daemon::LinkState::default()),
        };
        let errors = core.apply_config(config);
        let plugin = Plugin { core: Arc::new(core), control_server: Mutex::new(None), daemon: Mutex::new(None) };
        // SPEC §7: the plugin initializes the keying daemon when it loads, if it runs (and,
        // with the link thread, whenever it starts later). Only IKE bundles need it.
        let wants_daemon = plugin.core.control().bundles.iter().any(|b| matches!(b.keying, Keying::Ike(_)));
        if wants_daemon {
            // Failing to start a thread leaves the plugin working with manual keys only.
            let _ = plugin.daemon_connect(Some(Path::new(daemon::DEFAULT_SOCKET)));
        }
        Ok((plugin, errors))
    }

    pub fn outbound(&self, pkt: &mut PacketBuf<'_>) -> Verdict {
        self.core.outbound(pkt)
    }

    /// `outbound` for many packets at once (one verdict each): ESP packets of one SA are
    /// encrypted together, which makes AES-CBC several times faster than packet by packet.
    /// Packets with a bad offset/length get `Drop`. `verdicts` must be as long as `pkts`;
    /// extra packets get `Drop`.
    pub fn outbound_batch(&self, pkts: &mut [PacketBuf<'_>], verdicts: &mut [Verdict]) {
        self.core.outbound_batch(pkts, verdicts)
    }

    pub fn inbound(&self, pkt: &mut PacketBuf<'_>) -> Verdict {
        self.core.inbound(pkt)
    }

    /// The host is connected with `local` as its address: bundles with `local = 0.0.0.0`
    /// come alive with it, or move to it.
    pub fn connect(&self, local: Ipv4Addr) {
        self.core.connect(local)
    }

    /// The host's link went down: bundles on the dynamic address stop until the next connect.
    pub fn link_down(&self) {
        self.core.link_down()
    }

    /// Re-reads ipsec.cfg. An unreadable file changes nothing (the running policy stays).
    pub fn reload(&self) -> Result<usize, Error> {
        self.core.reload()
    }

    /// Installs SAs for a `keying = ike` bundle from `key = value` lines with the
    /// manual-key names (what the keying daemon link does; also usable by hosts and tests).
    /// Installing new keys for a bundle that has some is a rekey: see `Core::install`.
    pub fn install_keys(&self, bundle: &str, keys: &str) -> Result<(), Error> {
        self.core.install_keys(bundle, keys)
    }

    /// The keying daemon could not key `bundle`: its held packets are dropped.
    pub fn keying_failed(&self, bundle: &str, why: &str) {
        self.core.keying_failed(bundle, why)
    }

    /// Links this instance to the keying daemon listening at `path` (None: stop). The link
    /// initializes the daemon (REGISTER, the IKE bundles) at once if it runs, and again
    /// whenever a daemon appears there after the previous one went away.
    pub fn daemon_connect(&self, path: Option<&Path>) -> Result<(), Error> {
        let mut link = self.daemon.lock().unwrap_or_else(|e| e.into_inner());
        *link = None;
        self.core.link.lock().unwrap_or_else(|e| e.into_inner()).path = path.map(Path::to_path_buf);
        if let Some(path) = path {
            let started = daemon::DaemonLink::start(path, &self.core)
                .map_err(|source| Error::ControlIo { path: path.to_path_buf(), source })?;
            *link = Some(started);
        }
        Ok(())
    }

    /// Whether the keying daemon link is up right now.
    pub fn daemon_connected(&self) -> bool {
        self.core.ctx.link.is_up()
    }

    /// Housekeeping the host may call now and then (once a second is plenty): drops held
    /// packets whose time for keys is up, and reports and enforces SA lifetimes (the
    /// daemon link's thread also does this every second while the link is up).
    pub fn tick(&self) {
        self.core.tick()
    }

    /// The MTU of the link protected packets leave on (default 1500). Outbound packets
    /// longer than this once protected are dropped if they have DF set, and their sender
    /// gets an ICMP "fragmentation needed" through `Host::emit_packet(Inbound, ..)`.
    /// IPv4 needs at least 68 (RFC 791).
    pub fn set_link_mtu(&self, mtu: u32) -> Result<(), Error> {
        self.core.set_link_mtu(mtu)
    }

    /// The most bytes the active bundles add to one packet, nested bundles added up: a host
    /// advertises its link MTU minus this on its plaintext interface.
    pub fn overhead(&self) -> usize {
        self.core.current().max_overhead()
    }

    pub fn dump(&self, format: DumpFormat) -> String {
        self.core.render(format)
    }

    /// Serves the SA table on a Unix socket at `path` for `ipsecdump`, to this process's
    /// user only (docs/control.md); `None` stops serving. A new path replaces the old one.
    pub fn control_listen(&self, path: Option<&Path>) -> Result<(), Error> {
        let mut server = self.control_server.lock().unwrap_or_else(|e| e.into_inner());
        // Stop the old one first, so the same path can be served again.
        *server = None;
        let Some(path) = path else {
            self.core.log().event(Level::Inf, "", "control", format_args!("control socket closed"));
            return Ok(());
        };
        let core = Arc::clone(&self.core);
        let render: control::Render = Arc::new(move |format| core.render(format));
        let core = Arc::clone(&self.core);
        let init: control::Init = Arc::new(move || core.pinit());
        let started = control::ControlServer::start_with_init(path, render, init).map_err(|source| {
            self.core.log().event(Level::Err, "", "control", format_args!("cannot serve {}: {source}", path.display()));
            Error::ControlIo { path: path.to_path_buf(), source }
        })?;
        self.core.log().event(Level::Inf, "", "control", format_args!("control socket {}", path.display()));
        *server = Some(started);
        Ok(())
    }


}

impl Core {
    fn control(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> Arc<Spd> {
        Arc::clone(&self.spd.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn log(&self) -> &EventLog {
        &self.ctx.log
    }

    /// Activates the good bundles of a configuration, keeping the SAs (and so sequence
    /// numbers, windows, counters and installed IKE keys) of bundles that did not change.
    /// Returns the number of errors (in the file, or bundles that could not be activated).
    fn apply_config(&self, config: config::Config) -> usize {
        for e in &config.errors {
            self.log().event(Level::Err, e.bundle.as_deref().unwrap_or(""), "config", format_args!("{e}"));
        }
        for w in &config.warnings {
            self.log().event(Level::Wrn, w.bundle.as_deref().unwrap_or(""), "config-warning", format_args!("{w}"));
        }
        let mut control = self.control();
        control.bundles = config.bundles;
        control.failed = config.failed;
        for b in &control.failed {
            self.log().event(Level::Err, &b.name, "config", format_args!("bundle not activated: its traffic is blocked until the errors are fixed"));
        }
        let failed = self.rebuild(&control);
        config.errors.len() + failed
    }

    /// Builds a new Spd from the control state; returns the number of bundles that could
    /// not be activated.
    fn rebuild(&self, control: &ControlState) -> usize {
        let old = self.current();
        let (spd, errors) = Spd::build(&control.bundles, &control.failed, control.dynamic_local, self.host.now_ms(), |b| {
            old.find(&b.name).filter(|p| p.config == *b).map(Carried::from)
        });
        for e in &errors {
            self.log().event(Level::Err, &e.bundle, "activate", format_args!("bundle not activated: {}", e.message));
        }
        for b in &spd.bundles {
            let was = old.find(b.name()).map(|p| p.state());
            if was != Some(b.state()) {
                let local = b.local.map_or_else(|| "dynamic".to_string(), |a| a.to_string());
                self.log().event(
                    Level::Inf,
                    b.name(),
                    "bundle",
                    format_args!("bundle {} ({} {} <-> {})", b.state().name(), mode_name(b), local, peer_name(b)),
                );
            }
        }
        *self.spd.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(spd);
        errors.len()
    }

    fn outbound(&self, pkt: &mut PacketBuf<'_>) -> Verdict {
        if pkt.offset.checked_add(pkt.len).is_none_or(|end| end > pkt.buf.len()) {
            return Verdict::Drop;
        }
        let spd = self.current();
        let verdict = engine::outbound(&spd, &self.ctx, pkt);
        if verdict == Verdict::Held {
            self.release_if_keyed_meanwhile(&spd);
        }
        verdict
    }

    /// A packet held against a policy that new SAs replaced meanwhile must not wait for
    /// keys that already came (the installer released the queue before the packet joined
    /// it): whatever the current policy can send goes now.
    fn release_if_keyed_meanwhile(&self, snapshot: &Arc<Spd>) {
        let now = self.current();
        if Arc::ptr_eq(snapshot, &now) {
            return;
        }
        for b in now.bundles.iter().filter(|b| b.outbound.is_some()) {
            if self.ctx.held().held(b.name()) > 0 {
                self.release_held(&now, b.name());
            }
        }
    }

    fn outbound_batch(&self, pkts: &mut [PacketBuf<'_>], verdicts: &mut [Verdict]) {
        let n = pkts.len().min(verdicts.len());
        let spd = self.current();
        for (pkt, verdict) in pkts[..n].iter_mut().zip(verdicts.iter_mut()) {
            if pkt.offset.checked_add(pkt.len).is_none_or(|end| end > pkt.buf.len()) {
                // An empty packet is refused by the engine as not IPv4, safely.
                pkt.len = 0;
                pkt.offset = 0;
                *verdict = Verdict::Drop;
            }
        }
        engine::outbound_batch(&spd, &self.ctx, &mut pkts[..n], &mut verdicts[..n]);
        verdicts[n..].fill(Verdict::Drop);
        if verdicts[..n].contains(&Verdict::Held) {
            self.release_if_keyed_meanwhile(&spd);
        }
    }

    fn inbound(&self, pkt: &mut PacketBuf<'_>) -> Verdict {
        if pkt.offset.checked_add(pkt.len).is_none_or(|end| end > pkt.buf.len()) {
            return Verdict::Drop;
        }
        engine::inbound(&self.current(), &self.ctx, pkt)
    }

    fn connect(&self, local: Ipv4Addr) {
        let mut control = self.control();
        if control.dynamic_local == Some(local) {
            return;
        }
        let previous = control.dynamic_local.replace(local);
        match previous {
            Some(old) => self.log().event(Level::Inf, "", "address", format_args!("local address changed from {old} to {local}")),
            None => self.log().event(Level::Inf, "", "address", format_args!("connected with local address {local}")),
        }
        self.rebuild(&control);
        drop(control);
        // Bundles on the dynamic address are keyed from the new address now.
        self.link_send_bundles();
    }

    fn link_down(&self) {
        let mut control = self.control();
        if let Some(old) = control.dynamic_local.take() {
            self.log().event(Level::Inf, "", "address", format_args!("link down, local address {old} released"));
            self.rebuild(&control);
        }
    }

    fn reload(&self) -> Result<usize, Error> {
        self.log().flush();
        self.log().event(Level::Inf, "", "reload", format_args!("reloading {}", self.config_file.display()));
        let config = config::load(&self.config_file).map_err(|source| {
            self.log().event(Level::Err, "", "config", format_args!("cannot read {}: {source}", self.config_file.display()));
            Error::ConfigIo { path: self.config_file.clone(), source }
        })?;
        let errors = self.apply_config(config);
        self.link_send_bundles();
        Ok(errors)
    }

    fn install_keys(&self, bundle: &str, keys: &str) -> Result<(), Error> {
        let b = self.ike_bundle(bundle)?;
        let sa_keys = config::parse_sa_keys(keys, "keys", b.esp, b.ah, b.ipcomp)
            .map_err(|errs| Error::Keys(errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")))?;
        let (outbound, inbound) =
            spd::build_sa_sets(&b, &sa_keys, self.host.now_ms()).map_err(|e| Error::Keys(e.to_string()))?;
        self.install_sets(bundle, Some(outbound), Some(inbound), None)
    }

    /// The configuration of a `keying = ike` bundle.
    fn ike_bundle(&self, bundle: &str) -> Result<Bundle, Error> {
        let control = self.control();
        let Some(b) = control.bundles.iter().find(|b| b.name == bundle) else {
            return Err(Error::NoSuchBundle(bundle.to_string()));
        };
        if !matches!(b.keying, Keying::Ike(_)) {
            return Err(Error::NotIkeBundle(bundle.to_string()));
        }
        Ok(b.clone())
    }

    /// Installs new SAs for one or both directions of an IKE bundle. New outbound SAs are
    /// used at once; new inbound SAs retire the previous ones, which are still accepted
    /// (packets the peer sent before it switched are in flight) until the next rekey. Held
    /// packets leave once the bundle has outbound SAs.
    ///
    /// `peer` is the peer the keying daemon negotiated with; it matters for a road-warrior
    /// bundle only, which it binds. SAs with another peer than the bound one replace that
    /// peer's (one peer at a time); None keeps the bound peer (a road warrior with none
    /// cannot take keys).
    fn install_sets(&self, bundle: &str, outbound: Option<SaSet>, inbound: Option<SaSet>, peer: Option<Ipv4Addr>) -> Result<(), Error> {
        let control = self.control();
        let Some(config) = control.bundles.iter().find(|b| b.name == bundle && matches!(b.keying, Keying::Ike(_))) else {
            return Err(Error::NoSuchBundle(bundle.to_string()));
        };
        let old = self.current();
        let previous = old.find(bundle);
        let old_peer = previous.and_then(|p| p.peer);
        let (peer, replaced) = if config.remote.is_unspecified() {
            let Some(peer) = peer.or(old_peer) else {
                return Err(Error::InvalidArgument(format!(
                    "bundle [{bundle}] accepts any peer (remote = 0.0.0.0): its keys come from the keying daemon, with the peer's address"
                )));
            };
            (Some(peer), old_peer.filter(|p| *p != peer))
        } else {
            (None, None)
        };
        let (spd, errors) = Spd::build(&control.bundles, &control.failed, control.dynamic_local, self.host.now_ms(), |c| {
            if c.name == bundle {
                // A new road warrior starts afresh: the previous peer's SAs go with it.
                let kept = previous.filter(|_| replaced.is_none());
                let (old_out, old_in, old_retired) =
                    kept.map_or((None, None, None), |p| (p.outbound.clone(), p.inbound.clone(), p.retired.clone()));
                let retired = if inbound.is_some() { old_in.clone() } else { old_retired };
                return Some(Carried {
                    outbound: outbound.clone().or(old_out),
                    inbound: inbound.clone().or(old_in),
                    retired,
                    counters: previous.map(|p| Arc::clone(&p.counters)).unwrap_or_default(),
                    peer,
                    former_peer: replaced.or(previous.and_then(|p| p.former_peer)),
                });
            }
            old.find(&c.name).filter(|p| p.config == *c).map(Carried::from)
        });
        if let Some(e) = errors.iter().find(|e| e.bundle == bundle) {
            return Err(Error::Keys(e.message.clone()));
        }
        self.log_peer_change(previous, spd.find(bundle));
        for sa in outbound.iter().chain(inbound.iter()).flat_map(SaSet::iter) {
            let encap = sa.udp_encap.map_or_else(String::new, |p| format!(" in UDP {}<->{}", p.local, p.remote));
            self.log().event(
                Level::Inf,
                bundle,
                "sa",
                format_args!(
                    "SA installed: {} {} SPI 0x{:08x} {}{encap}",
                    if sa.inbound { "in" } else { "out" },
                    sa.proto,
                    sa.spi,
                    sa.transform.description()
                ),
            );
        }
        let spd = Arc::new(spd);
        *self.spd.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&spd);
        drop(control);
        if spd.find(bundle).is_some_and(|b| b.outbound.is_some()) {
            self.release_held(&spd, bundle);
        }
        Ok(())
    }

    /// Logs a road warrior's binding to a peer, and its end.
    fn log_peer_change(&self, before: Option<&spd::BundlePolicy>, after: Option<&spd::BundlePolicy>) {
        let Some(after) = after.filter(|b| b.is_road_warrior()) else { return };
        let old = before.and_then(|b| b.peer);
        let message = match (old, after.peer) {
            (None, Some(new)) => format!("road warrior {new}: the bundle carries its traffic"),
            (Some(old), Some(new)) if old != new => {
                format!("road warrior {new} replaces {old} (one peer at a time): {old}'s SAs are dropped, its traffic blocked")
            }
            (Some(old), None) => format!("road warrior {old} has no SAs left: awaiting a peer; its traffic stays blocked"),
            _ => return,
        };
        self.log().event(Level::Inf, after.name(), "peer", format_args!("{message}"));
    }

    /// Removes SAs of an IKE bundle: an outbound or inbound set that loses one of its SAs
    /// goes as a whole (half a set protects nothing); superseded ones likewise.
    fn remove_sas(&self, bundle: &str, doomed: impl Fn(&Sa) -> bool) {
        let control = self.control();
        let old = self.current();
        let keep = |set: &Option<SaSet>| set.clone().filter(|s| !s.iter().any(|sa| doomed(sa)));
        let (spd, _) = Spd::build(&control.bundles, &control.failed, control.dynamic_local, self.host.now_ms(), |c| {
            let p = old.find(&c.name).filter(|p| p.config == *c)?;
            if c.name != bundle {
                return Some(Carried::from(p));
            }
            // A road warrior left without SAs loses its peer in `Spd::build`.
            Some(Carried {
                outbound: keep(&p.outbound),
                inbound: keep(&p.inbound),
                retired: keep(&p.retired),
                ..Carried::from(p)
            })
        });
        self.log_peer_change(old.find(bundle), spd.find(bundle));
        *self.spd.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(spd);
    }

    /// Sends on the packets held for `bundle` now that it has SAs (or drops those whose
    /// time is up), through the host's `emit_packet`.
    fn release_held(&self, spd: &Spd, bundle: &str) {
        let now = self.host.now_ms();
        self.ctx.expire_held(spd, now);
        let held = self.ctx.held().take(bundle);
        if held.is_empty() {
            return;
        }
        let (mut sent, mut lost) = (0, 0);
        for h in held {
            let mut buf = vec![0u8; MIN_HEADROOM_PER_BUNDLE * 4 + h.bytes.len() + MIN_TAILROOM_PER_BUNDLE * 4];
            let offset = MIN_HEADROOM_PER_BUNDLE * 4;
            buf[offset..offset + h.bytes.len()].copy_from_slice(&h.bytes);
            let mut pkt = PacketBuf { buf: &mut buf, offset, len: h.bytes.len() };
            match engine::outbound_resume(spd, &self.ctx, &mut pkt, h.resume_at) {
                Verdict::Transformed | Verdict::Pass => {
                    self.host.emit_packet(Direction::Outbound, &pkt.buf[pkt.offset..pkt.offset + pkt.len]);
                    sent += 1;
                }
                Verdict::Drop | Verdict::Held => lost += 1,
            }
        }
        self.log().event(Level::Ike, bundle, "acquire", format_args!("keys arrived: {sent} held packets sent, {lost} dropped"));
    }

    fn keying_failed(&self, bundle: &str, why: &str) {
        let spd = self.current();
        let n = self.ctx.held().take(bundle).len();
        self.ctx.report_lost_held(&spd, bundle, n, why);
    }

    fn tick(&self) {
        let now = self.host.now_ms();
        self.ctx.expire_held(&self.current(), now);
        self.expire_sas(now);
    }

    fn set_link_mtu(&self, mtu: u32) -> Result<(), Error> {
        if !(68..=65535).contains(&mtu) {
            return Err(Error::InvalidArgument(format!("link MTU {mtu} is outside 68-65535")));
        }
        if self.ctx.link_mtu() != mtu as usize {
            self.log().event(Level::Inf, "", "mtu", format_args!("link MTU {mtu}, worst-case overhead {} bytes", self.current().max_overhead()));
        }
        self.ctx.set_link_mtu(mtu);
        Ok(())
    }



    fn render(&self, format: DumpFormat) -> String {
        let spd = self.current();
        let now = self.host.now_ms();
        match format {
            DumpFormat::Text => dump::text(&spd, &self.ctx.global, now),
            DumpFormat::Json => dump::json(&spd, &self.ctx.global, now),
        }
    }
}

/// The far end for logs: the peer, or for a road warrior without one "any peer".
fn peer_name(b: &spd::BundlePolicy) -> String {
    b.peer.map_or_else(|| "any peer".to_string(), |a| a.to_string())
}

fn mode_name(b: &spd::BundlePolicy) -> &'static str {
    if b.is_tunnel() {
        "tunnel"
    } else {
        "transport"
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // Stop the threads that share the core before saying goodbye.
        *self.daemon.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.control_server.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.core.log().event(Level::Inf, "", "load", format_args!("plugin closed"));
        self.core.log().flush();
    }
}
