//! The plugin as a C host sees it: a shared library loaded with libloading, driven through
//! the functions of include/ipsec_plugin.h (mirrored in `abi`), wrapped in safe types.
//! This is the only module of host-sim with `unsafe`.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void, CStr, CString};
use std::fmt;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::abi;

/// The file name `cargo build` gives the plugin's cdylib.
pub const LIBRARY_NAME: &str = "libipsec_plugin.so";

/// Where the plugin is looked for when `--plugin` is not given: beside the host-sim
/// executable (`cargo build` puts both in target/<profile>/), then in deps/ below it (where
/// `cargo test` leaves the cdylib it builds for the tests).
pub fn default_library_path() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate host-sim itself: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [dir.join(LIBRARY_NAME), dir.join("deps").join(LIBRARY_NAME)];
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        format!(
            "no {LIBRARY_NAME} beside {} (build it with `cargo build -p ipsec-plugin`, or pass --plugin PATH)",
            exe.display()
        )
    })
}

/// An `ipsec_status` the plugin returned, with the plugin's own description of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: u32,
    pub text: String,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (status {})", self.text, self.code)
    }
}

/// What a hook told the host to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Transformed,
    Drop,
    Held,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

/// The loaded library and its entry points. The function pointers stay valid while `_lib`
/// is alive, which every instance guarantees by holding an `Arc` to this.
///
/// Functions added to the ABI after its first release are `Option`s: a host must still run
/// against a library that predates them (the ABI version does not change when functions
/// are added), and only the commands that need one refuse such a library.
pub struct PluginLibrary {
    version: String,
    status_describe: abi::StatusDescribeFn,
    plugin_new: abi::PluginNewFn,
    plugin_free: abi::PluginFreeFn,
    outbound: abi::HookFn,
    outbound_batch: abi::OutboundBatchFn,
    inbound: abi::HookFn,
    connect: abi::ConnectFn,
    link_down: abi::PluginFn,
    reload: abi::PluginFn,
    install_keys: abi::InstallKeysFn,
    dump: abi::DumpFn,
    set_link_mtu: Option<abi::SetLinkMtuFn>,
    overhead: Option<abi::OverheadFn>,
    control_listen: Option<abi::ControlListenFn>,
    daemon_connect: Option<abi::DaemonConnectFn>,
    _lib: libloading::Library,
}

impl PluginLibrary {
    /// Loads the cdylib and checks that it speaks our ABI version.
    pub fn load(path: &Path) -> Result<Arc<PluginLibrary>, String> {
        let fail = |e: libloading::Error| format!("cannot load plugin {}: {e}", path.display());
        // SAFETY: loading runs the library's initialisers; we trust the file named by the
        // operator (or built beside us) to be the plugin.
        let lib = unsafe { libloading::Library::new(path) }.map_err(fail)?;

        /// Copies a function pointer out of the library.
        ///
        /// # Safety
        /// `T` must be the symbol's real type, as declared in the header.
        unsafe fn symbol<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
            // SAFETY: per this function's contract.
            unsafe { lib.get::<T>(name.as_bytes()) }
                .map(|s| *s)
                .map_err(|e| format!("plugin lacks {name}: {e}"))
        }
        /// Like `symbol`, for a function a library may predate.
        ///
        /// # Safety
        /// As for `symbol`.
        unsafe fn optional<T: Copy>(lib: &libloading::Library, name: &str) -> Option<T> {
            // SAFETY: per this function's contract.
            unsafe { lib.get::<T>(name.as_bytes()) }.ok().map(|s| *s)
        }
        // SAFETY: each type below is the header's prototype of that symbol (abi.rs).
        unsafe {
            let abi_version: abi::AbiVersionFn = symbol(&lib, "ipsec_abi_version")?;
            let found = abi_version();
            if found != abi::IPSEC_ABI_VERSION {
                return Err(format!(
                    "plugin {} has ABI version {found}, host-sim speaks {}",
                    path.display(),
                    abi::IPSEC_ABI_VERSION
                ));
            }
            let version: abi::VersionFn = symbol(&lib, "ipsec_version")?;
            let version = c_text(version());
            Ok(Arc::new(PluginLibrary {
                version,
                status_describe: symbol(&lib, "ipsec_status_describe")?,
                plugin_new: symbol(&lib, "ipsec_plugin_new")?,
                plugin_free: symbol(&lib, "ipsec_plugin_free")?,
                outbound: symbol(&lib, "ipsec_plugin_outbound")?,
                outbound_batch: symbol(&lib, "ipsec_plugin_outbound_batch")?,
                inbound: symbol(&lib, "ipsec_plugin_inbound")?,
                connect: symbol(&lib, "ipsec_plugin_connect")?,
                link_down: symbol(&lib, "ipsec_plugin_link_down")?,
                reload: symbol(&lib, "ipsec_plugin_reload")?,
                install_keys: symbol(&lib, "ipsec_plugin_install_keys")?,
                dump: symbol(&lib, "ipsec_plugin_dump")?,
                set_link_mtu: optional(&lib, "ipsec_plugin_set_link_mtu"),
                overhead: optional(&lib, "ipsec_plugin_overhead"),
                control_listen: optional(&lib, "ipsec_plugin_control_listen"),
                daemon_connect: optional(&lib, "ipsec_plugin_daemon_connect"),
                _lib: lib,
            }))
        }
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// The names of the functions `host-sim tun` needs that this library lacks.
    pub fn missing_for_tun(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.set_link_mtu.is_none() {
            missing.push("ipsec_plugin_set_link_mtu");
        }
        if self.overhead.is_none() {
            missing.push("ipsec_plugin_overhead");
        }
        missing
    }

    pub fn has_control_listen(&self) -> bool {
        self.control_listen.is_some()
    }

    fn status(&self, code: u32) -> Status {
        // SAFETY: the header promises a static NUL-terminated string for any number.
        let text = unsafe { c_text((self.status_describe)(code)) };
        Status { code, text }
    }

    fn check(&self, code: u32) -> Result<(), Status> {
        if code == abi::IPSEC_OK {
            Ok(())
        } else {
            Err(self.status(code))
        }
    }
}

/// Copies a C string the library owns.
///
/// # Safety
/// `p` is NULL or NUL-terminated and valid for the call.
unsafe fn c_text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: per this function's contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Receives output-window lines as they come.
pub type LineSink = Box<dyn Fn(&str) + Send + Sync>;
/// Receives the packets the plugin emits, during the call that emits them.
pub type PacketSink = Box<dyn Fn(Direction, &[u8]) + Send + Sync>;

/// Where an instance's callbacks go. The default (demo, replay) queues lines and packets
/// for `take_lines` / `take_emitted` and runs the plugin on the clock `set_clock_ms` sets;
/// a real host (`tun`) hands both on at once and lets the plugin read the system clock.
#[derive(Default)]
pub struct HostHooks {
    pub on_line: Option<LineSink>,
    pub on_packet: Option<PacketSink>,
    pub system_clock: bool,
}

/// What the plugin hands back to host-sim through the callbacks. The plugin may call from
/// any thread that is inside a call into it, several at once, hence locks and `Sync` sinks.
#[derive(Default)]
pub struct HostState {
    now_ms: AtomicU64,
    lines: Mutex<Vec<String>>,
    emitted: Mutex<Vec<(Direction, Vec<u8>)>>,
    on_line: Option<LineSink>,
    on_packet: Option<PacketSink>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

unsafe extern "C" fn output_window(context: *mut c_void, line: *const c_char) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `context` is the HostState this instance registered, alive until after
        // ipsec_plugin_free; `line` is valid during the call.
        let (host, line) = unsafe { (&*context.cast::<HostState>(), c_text(line)) };
        match &host.on_line {
            Some(sink) => sink(&line),
            None => lock(&host.lines).push(line),
        }
    });
}

unsafe extern "C" fn clock_ms(context: *mut c_void) -> u64 {
    // SAFETY: as in output_window.
    let host = unsafe { &*context.cast::<HostState>() };
    host.now_ms.load(Ordering::Relaxed)
}

unsafe extern "C" fn emit_packet(
    context: *mut c_void,
    direction: u32,
    packet: *const u8,
    length: usize,
) {
    let _ = std::panic::catch_unwind(|| {
        if packet.is_null() {
            return;
        }
        // SAFETY: as in output_window; `packet` has `length` readable bytes for the call.
        let (host, bytes) = unsafe {
            (
                &*context.cast::<HostState>(),
                std::slice::from_raw_parts(packet, length),
            )
        };
        let direction = match direction {
            abi::IPSEC_DIRECTION_INBOUND => Direction::Inbound,
            _ => Direction::Outbound,
        };
        match &host.on_packet {
            Some(sink) => sink(direction, bytes),
            None => lock(&host.emitted).push((direction, bytes.to_vec())),
        }
    });
}

/// A packet in a buffer with room on both sides, as a host would hand it to the hooks.
pub struct PacketBuffer {
    buf: Vec<u8>,
    offset: usize,
    len: usize,
}

impl PacketBuffer {
    /// Enough for tunnel + IPComp + ESP (IV, padding, ICV) + AH in front and behind.
    pub const HEADROOM: usize = 256;
    pub const TAILROOM: usize = 512;
    /// An IPComp packet may inflate to a full IPv4 datagram in place, so the buffer always
    /// has room for the largest one.
    pub const CAPACITY: usize = 65535 + Self::HEADROOM + Self::TAILROOM;

    pub fn new(packet: &[u8]) -> PacketBuffer {
        let mut buf = vec![0; (Self::HEADROOM + packet.len() + Self::TAILROOM).max(Self::CAPACITY)];
        buf[Self::HEADROOM..Self::HEADROOM + packet.len()].copy_from_slice(packet);
        PacketBuffer {
            buf,
            offset: Self::HEADROOM,
            len: packet.len(),
        }
    }

    /// An empty buffer for packets of up to `max_packet` bytes, to `fill` again and again.
    pub fn with_room(max_packet: usize) -> PacketBuffer {
        PacketBuffer {
            buf: vec![0; Self::HEADROOM + max_packet + Self::TAILROOM],
            offset: Self::HEADROOM,
            len: 0,
        }
    }

    /// Replaces the packet with what `read` puts at the start of the room it is given
    /// (everything between the headroom and the tailroom), e.g. one read from a socket.
    pub fn fill(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        let end = self.buf.len() - Self::TAILROOM;
        self.offset = Self::HEADROOM;
        self.len = 0;
        let n = read(&mut self.buf[Self::HEADROOM..end])?.min(end - Self::HEADROOM);
        self.len = n;
        Ok(n)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.offset..self.offset + self.len]
    }

    /// The struct a hook takes; it points into `buf`, which the caller keeps borrowed.
    fn raw(&mut self) -> abi::ipsec_packet {
        abi::ipsec_packet {
            buffer: self.buf.as_mut_ptr(),
            capacity: self.buf.len(),
            offset: self.offset,
            length: self.len,
        }
    }

    /// Takes a hook's verdict and, for a transformed packet, its new bounds: trusted only if
    /// they are inside our buffer.
    fn apply(&mut self, verdict: u32, raw: &abi::ipsec_packet) -> Verdict {
        match verdict {
            abi::IPSEC_VERDICT_PASS => Verdict::Pass,
            abi::IPSEC_VERDICT_TRANSFORMED => match raw.offset.checked_add(raw.length) {
                Some(end) if end <= self.buf.len() => {
                    self.offset = raw.offset;
                    self.len = raw.length;
                    Verdict::Transformed
                }
                _ => Verdict::Drop,
            },
            abi::IPSEC_VERDICT_HELD => Verdict::Held,
            _ => Verdict::Drop,
        }
    }
}

/// The most packets one `outbound_batch` call takes.
pub const MAX_BATCH: usize = 32;

/// One plugin instance; freed on drop.
pub struct PluginInstance {
    lib: Arc<PluginLibrary>,
    handle: NonNull<abi::ipsec_plugin>,
    /// Boxed so its address, the callbacks' context, never moves.
    host: Box<HostState>,
}

// SAFETY: the ABI lets every function that takes `const ipsec_plugin *` run on any thread,
// concurrently with the others on the same handle (docs/c-abi.md section 5); those are the
// only ones `&self` methods call. `ipsec_plugin_free` runs in `Drop`, which has the instance
// to itself. The callbacks' context, `HostState`, is itself `Send + Sync` (atomics, mutexes,
// `Send + Sync` sinks), and the library's function pointers are plain code addresses.
unsafe impl Send for PluginInstance {}
// SAFETY: as for Send.
unsafe impl Sync for PluginInstance {}

/// How `open` went when it produced an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenOutcome {
    Ok,
    /// Some bundles had config errors and are not active.
    Partial,
}

fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("path {} contains NUL", path.display()))
}

impl PluginInstance {
    /// Opens an instance whose callbacks queue (see `HostHooks`), on a clock starting at
    /// `now_ms`.
    pub fn open(
        lib: &Arc<PluginLibrary>,
        config: &Path,
        log: Option<&Path>,
        debug: bool,
        now_ms: u64,
    ) -> Result<(PluginInstance, OpenOutcome), String> {
        let host = HostState {
            now_ms: AtomicU64::new(now_ms),
            ..HostState::default()
        };
        Self::open_with(lib, config, log, debug, host, false)
    }

    /// Opens an instance whose callbacks go where `hooks` say.
    pub fn open_hooked(
        lib: &Arc<PluginLibrary>,
        config: &Path,
        log: Option<&Path>,
        debug: bool,
        hooks: HostHooks,
    ) -> Result<(PluginInstance, OpenOutcome), String> {
        let host = HostState {
            on_line: hooks.on_line,
            on_packet: hooks.on_packet,
            ..HostState::default()
        };
        Self::open_with(lib, config, log, debug, host, hooks.system_clock)
    }

    fn open_with(
        lib: &Arc<PluginLibrary>,
        config: &Path,
        log: Option<&Path>,
        debug: bool,
        host: HostState,
        system_clock: bool,
    ) -> Result<(PluginInstance, OpenOutcome), String> {
        let config_c = c_path(config)?;
        let log_c = log.map(c_path).transpose()?;
        let host = Box::new(host);
        let options = abi::ipsec_open_options {
            abi_version: abi::IPSEC_ABI_VERSION,
            config_path: config_c.as_ptr(),
            log_path: log_c.as_ref().map_or(ptr::null(), |c| c.as_ptr()),
            log_max_bytes: 0,
            flags: if debug { abi::IPSEC_OPEN_DEBUG } else { 0 },
            reserved: [ptr::null_mut(); 4],
        };
        let callbacks = abi::ipsec_host_callbacks {
            abi_version: abi::IPSEC_ABI_VERSION,
            context: (&*host as *const HostState).cast_mut().cast(),
            output_window: Some(output_window),
            clock_ms: if system_clock { None } else { Some(clock_ms) },
            emit_packet: Some(emit_packet),
            reserved: [ptr::null_mut(); 4],
        };
        let mut out = ptr::null_mut();
        // SAFETY: valid structs and strings for the call; the context (the boxed HostState)
        // outlives the handle because PluginInstance frees the handle before dropping it.
        let code = unsafe { (lib.plugin_new)(&options, &callbacks, &mut out) };
        let outcome = match code {
            abi::IPSEC_OK => OpenOutcome::Ok,
            abi::IPSEC_CONFIG_PARTIAL => OpenOutcome::Partial,
            _ => {
                // With a line sink the lines were shown already.
                let lines = lock(&host.lines).join("\n");
                return Err(format!(
                    "cannot open the plugin on {}: {}\n{lines}",
                    config.display(),
                    lib.status(code)
                ));
            }
        };
        let handle = NonNull::new(out).ok_or("the plugin returned success but no handle")?;
        Ok((
            PluginInstance {
                lib: lib.clone(),
                handle,
                host,
            },
            outcome,
        ))
    }

    /// Sets the clock the plugin reads through `clock_ms`.
    pub fn set_clock_ms(&self, now_ms: u64) {
        self.host.now_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Output-window lines since the last call.
    pub fn take_lines(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.host.lines))
    }

    /// Packets the plugin emitted since the last call.
    pub fn take_emitted(&self) -> Vec<(Direction, Vec<u8>)> {
        std::mem::take(&mut *lock(&self.host.emitted))
    }

    pub fn outbound(&self, packet: &mut PacketBuffer) -> Verdict {
        self.hook(self.lib.outbound, packet)
    }

    pub fn inbound(&self, packet: &mut PacketBuffer) -> Verdict {
        self.hook(self.lib.inbound, packet)
    }

    fn hook(&self, hook: abi::HookFn, packet: &mut PacketBuffer) -> Verdict {
        let mut raw = packet.raw();
        // SAFETY: a live handle; `raw` describes `packet.buf`, which we borrow mutably for
        // the call, and `raw` itself lives outside that buffer.
        let verdict = unsafe { hook(self.handle.as_ptr(), &mut raw) };
        packet.apply(verdict, &raw)
    }

    /// The outbound hook for up to `MAX_BATCH` packets at once; `verdicts[i]` is packet i's.
    /// Packets beyond `MAX_BATCH` or beyond `verdicts` are not offered (and keep their
    /// verdict slot untouched). Allocates nothing.
    pub fn outbound_batch(&self, packets: &mut [PacketBuffer], verdicts: &mut [Verdict]) {
        let n = packets.len().min(verdicts.len()).min(MAX_BATCH);
        let mut raw: [abi::ipsec_packet; MAX_BATCH] = std::array::from_fn(|_| abi::ipsec_packet {
            buffer: ptr::null_mut(),
            capacity: 0,
            offset: 0,
            length: 0,
        });
        for (r, p) in raw.iter_mut().zip(packets[..n].iter_mut()) {
            *r = p.raw();
        }
        let mut codes = [abi::IPSEC_VERDICT_DROP; MAX_BATCH];
        // SAFETY: a live handle; the first `n` entries of `raw` describe the buffers of `n`
        // distinct PacketBuffers (so they do not overlap), all borrowed mutably for the
        // call; `codes` has room for `n` verdicts; neither array lives inside a buffer.
        let status = unsafe {
            (self.lib.outbound_batch)(
                self.handle.as_ptr(),
                raw.as_mut_ptr(),
                n,
                codes.as_mut_ptr(),
            )
        };
        if status != abi::IPSEC_OK {
            codes = [abi::IPSEC_VERDICT_DROP; MAX_BATCH];
        }
        for i in 0..n {
            verdicts[i] = packets[i].apply(codes[i], &raw[i]);
        }
    }

    pub fn connect(&self, local: Ipv4Addr) -> Result<(), Status> {
        // SAFETY: a live handle.
        self.lib
            .check(unsafe { (self.lib.connect)(self.handle.as_ptr(), u32::from(local)) })
    }

    pub fn link_down(&self) -> Result<(), Status> {
        // SAFETY: a live handle.
        self.lib
            .check(unsafe { (self.lib.link_down)(self.handle.as_ptr()) })
    }

    /// Re-reads ipsec.cfg; `Ok(Partial)` when some bundles have errors.
    pub fn reload(&self) -> Result<OpenOutcome, Status> {
        // SAFETY: a live handle.
        match unsafe { (self.lib.reload)(self.handle.as_ptr()) } {
            abi::IPSEC_OK => Ok(OpenOutcome::Ok),
            abi::IPSEC_CONFIG_PARTIAL => Ok(OpenOutcome::Partial),
            code => Err(self.lib.status(code)),
        }
    }

    /// Tells the plugin the MTU of the link protected packets leave on. `None` when the
    /// library predates `ipsec_plugin_set_link_mtu`.
    pub fn set_link_mtu(&self, mtu: u32) -> Option<Result<(), Status>> {
        let f = self.lib.set_link_mtu?;
        // SAFETY: a live handle.
        Some(self.lib.check(unsafe { f(self.handle.as_ptr(), mtu) }))
    }

    /// The most bytes the active bundles add to a packet. `None` when the library predates
    /// `ipsec_plugin_overhead`.
    pub fn overhead(&self) -> Option<Result<u32, Status>> {
        let f = self.lib.overhead?;
        let mut bytes = 0u32;
        // SAFETY: a live handle and a writable u32.
        let code = unsafe { f(self.handle.as_ptr(), &mut bytes) };
        Some(self.lib.check(code).map(|()| bytes))
    }

    /// Serves the SA table on a local socket at `path` (for `ipsecdump --socket`); `None`
    /// stops serving. `None` when the library predates `ipsec_plugin_control_listen`.
    pub fn control_listen(&self, path: Option<&Path>) -> Option<Result<(), Status>> {
        let f = self.lib.control_listen?;
        let path_c = match path.map(c_path).transpose() {
            Ok(p) => p,
            Err(_) => return Some(Err(self.lib.status(abi::IPSEC_ERR_INVALID))),
        };
        let ptr = path_c.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: a live handle and NULL or a NUL-terminated path valid for the call.
        Some(self.lib.check(unsafe { f(self.handle.as_ptr(), ptr) }))
    }

    /// Links the instance to the keying daemon at `path`. `None` when the library predates
    /// `ipsec_plugin_daemon_connect`.
    pub fn daemon_connect(&self, path: &Path) -> Option<Result<(), Status>> {
        let f = self.lib.daemon_connect?;
        let Ok(path_c) = c_path(path) else {
            return Some(Err(self.lib.status(abi::IPSEC_ERR_INVALID)));
        };
        // SAFETY: a live handle and a NUL-terminated path valid for the call.
        Some(self.lib.check(unsafe { f(self.handle.as_ptr(), path_c.as_ptr()) }))
    }

    pub fn install_keys(&self, bundle: &str, keys: &str) -> Result<(), Status> {
        let invalid = || self.lib.status(abi::IPSEC_ERR_INVALID);
        let bundle = CString::new(bundle).map_err(|_| invalid())?;
        let keys = CString::new(keys).map_err(|_| invalid())?;
        // SAFETY: a live handle and two NUL-terminated strings valid for the call.
        self.lib.check(unsafe {
            (self.lib.install_keys)(self.handle.as_ptr(), bundle.as_ptr(), keys.as_ptr())
        })
    }

    /// The SA table as text (`json == false`) or JSON.
    pub fn dump(&self, json: bool) -> Result<String, Status> {
        let format = if json {
            abi::IPSEC_DUMP_JSON
        } else {
            abi::IPSEC_DUMP_TEXT
        };
        let mut needed = 0usize;
        // The table may grow between the size query and the copy: retry a few times.
        for _ in 0..4 {
            let mut buf = vec![0u8; needed];
            let buf_ptr = if buf.is_empty() {
                ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            };
            // SAFETY: a live handle; `buf` has `buf.len()` writable bytes (or is NULL with
            // capacity 0); `needed` is writable.
            let code = unsafe {
                (self.lib.dump)(
                    self.handle.as_ptr(),
                    format,
                    buf_ptr,
                    buf.len(),
                    &mut needed,
                )
            };
            match code {
                abi::IPSEC_OK => {
                    let text = buf.split(|&b| b == 0).next().unwrap_or_default();
                    return Ok(String::from_utf8_lossy(text).into_owned());
                }
                abi::IPSEC_ERR_BUFFER_TOO_SMALL => needed += 256,
                _ => return Err(self.lib.status(code)),
            }
        }
        Err(self.lib.status(abi::IPSEC_ERR_BUFFER_TOO_SMALL))
    }
}

impl Drop for PluginInstance {
    fn drop(&mut self) {
        // SAFETY: the handle is live and nothing else uses it; `host` is dropped after this.
        unsafe { (self.lib.plugin_free)(self.handle.as_ptr()) }
    }
}
