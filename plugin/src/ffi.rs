//! The C ABI: the only symbols the cdylib exports, and the one place where [`Error`]s become
//! `ipsec_status` codes. `include/ipsec_plugin.h` is generated from this file by cbindgen
//! (`plugin/cbindgen.toml`); `plugin/tests/header.rs` fails when the two drift apart.
//!
//! Rules every function here keeps (modelled on rustls-ffi):
//! - every pointer is null-checked before use;
//! - the body runs inside `catch_unwind`, so a panic becomes `IPSEC_ERR_PANIC` (or
//!   `IPSEC_VERDICT_DROP` for the packet hooks) and never unwinds into C; no panic hook is
//!   installed, since the process belongs to the host;
//! - values C hands us that Rust would have to trust (enum discriminants, `bool`) cross the
//!   boundary as plain integers and are checked, so a bad value is `IPSEC_ERR_INVALID`,
//!   not undefined behaviour;
//! - the packet hooks allocate nothing.
//!
//! Type and constant names are spelled exactly as C sees them (`ipsec_status`,
//! `IPSEC_ERR_NULL`), so grepping the header and this file finds the same thing.
#![allow(unsafe_code)]
#![allow(non_camel_case_types)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::{c_char, c_void, CStr, CString, OsStr};
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Direction, DumpFormat, Error, Host, Options, PacketBuf, Plugin, Verdict};

/// The version of this ABI. A host sets it in `ipsec_open_options.abi_version` and
/// `ipsec_host_callbacks.abi_version`; it changes only when an existing signature or struct
/// layout changes (new functions and use of reserved fields do not change it).
pub const IPSEC_ABI_VERSION: u32 = 1;

/// `ipsec_open_options.flags`: write packet-level `DBG` lines to ipsec.log.
pub const IPSEC_OPEN_DEBUG: u32 = 1;

const KNOWN_OPEN_FLAGS: u32 = IPSEC_OPEN_DEBUG;

/// Result of a call. Numbers are part of the ABI and are never reused.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ipsec_status {
    IPSEC_OK = 0,
    /// A required pointer argument was NULL.
    IPSEC_ERR_NULL = 1,
    /// An argument was out of range: unknown enum value or flag, a non-NULL reserved
    /// field, text that is not UTF-8.
    IPSEC_ERR_INVALID = 2,
    /// A struct's `abi_version` is not `IPSEC_ABI_VERSION`.
    IPSEC_ERR_ABI_VERSION = 3,
    /// ipsec.cfg could not be read.
    IPSEC_ERR_CONFIG_IO = 4,
    /// ipsec.log could not be opened or written.
    IPSEC_ERR_LOG_IO = 5,
    /// No bundle of that name is configured.
    IPSEC_ERR_NO_SUCH_BUNDLE = 6,
    /// The bundle is manually keyed (`keying = manual`); only `keying = ike` bundles take
    /// keys at run time.
    IPSEC_ERR_NOT_IKE_BUNDLE = 7,
    /// The key text was malformed or did not fit the bundle's algorithms.
    IPSEC_ERR_KEYS = 8,
    /// The caller's buffer is too small; the call said how much is needed.
    IPSEC_ERR_BUFFER_TOO_SMALL = 9,
    /// The plugin hit an internal bug and stopped that call. The handle may still be
    /// freed; the details are in ipsec.log if it could be written.
    IPSEC_ERR_PANIC = 10,
    /// Success, but some bundles had configuration errors and are not active (the others
    /// are). The errors are in ipsec.log and were shown in the output window.
    IPSEC_CONFIG_PARTIAL = 11,
    /// The control socket could not be served at that path (in use, not a socket, no
    /// permission); the plugin itself works on.
    IPSEC_ERR_CONTROL_IO = 12,
}

/// What the host must do with a packet after a hook returned.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ipsec_verdict {
    /// No bundle applies: send or deliver the packet unchanged.
    IPSEC_VERDICT_PASS = 0,
    /// The packet was rewritten in place: send or deliver
    /// `buffer[offset .. offset + length]` as the hook left them.
    IPSEC_VERDICT_TRANSFORMED = 1,
    /// Discard the packet (policy, authentication failure, bad arguments...).
    IPSEC_VERDICT_DROP = 2,
    /// The plugin kept a copy while it waits for keys; discard the host's buffer. The
    /// packet comes back later through `emit_packet` if keys arrive in time.
    IPSEC_VERDICT_HELD = 3,
}

/// Which way a packet travels.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ipsec_direction {
    /// From this host to the network: send it.
    IPSEC_DIRECTION_OUTBOUND = 0,
    /// From the network to this host: deliver it.
    IPSEC_DIRECTION_INBOUND = 1,
}

/// Formats of `ipsec_plugin_dump`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ipsec_dump_format {
    /// Text like `setkey -D`.
    IPSEC_DUMP_TEXT = 0,
    /// JSON, for tools.
    IPSEC_DUMP_JSON = 1,
}

/// An IPv4 packet in a host buffer: the packet is `buffer[offset .. offset + length]`; the
/// bytes before it are headroom and the bytes after it up to `capacity` are tailroom, which
/// the hooks may use to add headers and trailers. A hook that transforms the packet
/// updates `offset` and `length`. The struct itself must not live inside `buffer`.
#[repr(C)]
pub struct ipsec_packet {
    pub buffer: *mut u8,
    pub capacity: usize,
    pub offset: usize,
    pub length: usize,
}

/// How the plugin reaches the host. Copied by `ipsec_plugin_new`; the host keeps `context`
/// valid until `ipsec_plugin_free` returns.
///
/// The callbacks may be called from any thread that is inside a call into the plugin
/// (several at once when the host calls hooks concurrently), so they and whatever
/// `context` points to must be thread-safe. They must not call back into the same plugin
/// instance and must not unwind (C++ exceptions, longjmp) through the plugin.
#[repr(C)]
pub struct ipsec_host_callbacks {
    /// `IPSEC_ABI_VERSION`.
    pub abi_version: u32,
    /// Passed unchanged to every callback; the plugin never reads it.
    pub context: *mut c_void,
    /// One line (UTF-8, NUL-terminated, no newline) for the operator's output window;
    /// valid only during the call. May be NULL: the lines go only to ipsec.log.
    pub output_window: Option<unsafe extern "C" fn(context: *mut c_void, line: *const c_char)>,
    /// The current time in milliseconds since the Unix epoch. May be NULL: the system
    /// clock is used.
    pub clock_ms: Option<unsafe extern "C" fn(context: *mut c_void) -> u64>,
    /// A packet the plugin generated or released (a held packet whose keys arrived):
    /// outbound packets are for the network, inbound ones for local delivery.
    /// The bytes are valid only during the call.
    /// May be NULL: such packets are discarded.
    pub emit_packet: Option<
        unsafe extern "C" fn(
            context: *mut c_void,
            direction: ipsec_direction,
            packet: *const u8,
            length: usize,
        ),
    >,
    /// Must be NULL; room for callbacks of later versions.
    pub reserved: [*mut c_void; 4],
}

/// How to open a plugin instance.
#[repr(C)]
pub struct ipsec_open_options {
    /// `IPSEC_ABI_VERSION`.
    pub abi_version: u32,
    /// Path of ipsec.cfg, or of the directory that holds it. Required.
    pub config_path: *const c_char,
    /// Path of the log file; NULL means ipsec.log beside ipsec.cfg.
    pub log_path: *const c_char,
    /// Size at which the log is rotated; 0 means the default.
    pub log_max_bytes: u64,
    /// Bitwise OR of `IPSEC_OPEN_*` flags; unknown bits are `IPSEC_ERR_INVALID`.
    pub flags: u32,
    /// Must be NULL; room for options of later versions.
    pub reserved: [*mut c_void; 4],
}

/// A plugin instance: one SA database, one configuration, one log. Independent instances
/// may live in one process. All functions taking a `const ipsec_plugin *` may be called
/// concurrently from several threads on the same instance.
pub struct ipsec_plugin {
    plugin: Plugin,
}

/// The callback table as the plugin's [`Host`].
struct CallbackHost {
    context: *mut c_void,
    output_window: Option<unsafe extern "C" fn(*mut c_void, *const c_char)>,
    clock_ms: Option<unsafe extern "C" fn(*mut c_void) -> u64>,
    emit_packet: Option<unsafe extern "C" fn(*mut c_void, ipsec_direction, *const u8, usize)>,
}

// SAFETY: `context` is only ever handed back to the host's own callbacks; the header
// requires the host to make those callbacks and their context usable from any thread that
// calls into the plugin, concurrently. The plugin never dereferences `context`.
unsafe impl Send for CallbackHost {}
// SAFETY: as for Send: shared use is the host's documented promise.
unsafe impl Sync for CallbackHost {}

impl Host for CallbackHost {
    fn output_window(&self, line: &str) {
        let Some(output_window) = self.output_window else {
            return;
        };
        // An interior NUL would cut the line short in C; drop it rather than lose the rest.
        let bytes: Vec<u8> = line.bytes().filter(|&b| b != 0).collect();
        if let Ok(line) = CString::new(bytes) {
            // SAFETY: the host supplied this function for this context; `line` is a valid
            // NUL-terminated string that outlives the call.
            unsafe { output_window(self.context, line.as_ptr()) }
        }
    }

    fn now_ms(&self) -> u64 {
        match self.clock_ms {
            // SAFETY: the host supplied this function for this context.
            Some(clock_ms) => unsafe { clock_ms(self.context) },
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    fn emit_packet(&self, direction: Direction, packet: &[u8]) {
        let Some(emit_packet) = self.emit_packet else {
            return;
        };
        let direction = match direction {
            Direction::Outbound => ipsec_direction::IPSEC_DIRECTION_OUTBOUND,
            Direction::Inbound => ipsec_direction::IPSEC_DIRECTION_INBOUND,
        };
        // SAFETY: the host supplied this function for this context; the pointer and length
        // describe `packet`, which outlives the call.
        unsafe { emit_packet(self.context, direction, packet.as_ptr(), packet.len()) }
    }
}

/// The one mapping from the plugin's errors to ABI codes.
fn status_of(error: &Error) -> ipsec_status {
    match error {
        Error::ConfigIo { .. } => ipsec_status::IPSEC_ERR_CONFIG_IO,
        Error::LogIo { .. } => ipsec_status::IPSEC_ERR_LOG_IO,
        Error::NoSuchBundle(_) => ipsec_status::IPSEC_ERR_NO_SUCH_BUNDLE,
        Error::NotIkeBundle(_) => ipsec_status::IPSEC_ERR_NOT_IKE_BUNDLE,
        Error::Keys(_) => ipsec_status::IPSEC_ERR_KEYS,
        Error::InvalidArgument(_) => ipsec_status::IPSEC_ERR_INVALID,
        Error::ControlIo { .. } => ipsec_status::IPSEC_ERR_CONTROL_IO,
    }
}

/// The plugin shows a missing or unreadable ipsec.cfg in the output window itself, through
/// its log's window sink; a log it could not open has no sink, so the C boundary says it.
fn report_open_failure(host: &CallbackHost, error: &Error) {
    if let Error::LogIo { .. } = error {
        host.output_window(&format!("ipsec: {error}"));
    }
}

fn config_status(config_errors: usize) -> ipsec_status {
    if config_errors == 0 {
        ipsec_status::IPSEC_OK
    } else {
        ipsec_status::IPSEC_CONFIG_PARTIAL
    }
}

/// Runs `body`, turning a panic into `on_panic` so it never unwinds into C.
fn guard<T>(on_panic: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(on_panic)
}

/// Runs a status-returning body, turning a panic into `IPSEC_ERR_PANIC`.
fn guard_status(body: impl FnOnce() -> ipsec_status) -> ipsec_status {
    guard(ipsec_status::IPSEC_ERR_PANIC, body)
}

/// Borrows a C string as a path (Unix paths are bytes; no UTF-8 required).
///
/// # Safety
/// `s` is NULL or a valid NUL-terminated string that outlives the returned path's use.
unsafe fn path_arg(s: *const c_char) -> Option<PathBuf> {
    if s.is_null() {
        return None;
    }
    // SAFETY: non-NULL and NUL-terminated per this function's contract.
    let bytes = unsafe { CStr::from_ptr(s) }.to_bytes();
    Some(PathBuf::from(OsStr::from_bytes(bytes)))
}

/// Borrows a C string as UTF-8 text.
///
/// # Safety
/// `s` is non-NULL, NUL-terminated and valid for `'a`.
unsafe fn str_arg<'a>(s: *const c_char) -> Result<&'a str, ipsec_status> {
    // SAFETY: per this function's contract.
    unsafe { CStr::from_ptr(s) }
        .to_str()
        .map_err(|_| ipsec_status::IPSEC_ERR_INVALID)
}

/// The plugin's version, e.g. "0.1.0". Static storage; never NULL.
#[no_mangle]
pub extern "C" fn ipsec_version() -> *const c_char {
    static VERSION_NUL: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION_NUL.as_ptr().cast()
}

/// The `IPSEC_ABI_VERSION` this library was built with. A host that loads the library at
/// run time compares it with the header it was compiled against.
#[no_mangle]
pub extern "C" fn ipsec_abi_version() -> u32 {
    IPSEC_ABI_VERSION
}

/// A static, human-readable name for a status, e.g. "IPSEC_ERR_CONFIG_IO: ipsec.cfg could
/// not be read". Never NULL; unknown numbers give "unknown status".
#[no_mangle]
pub extern "C" fn ipsec_status_describe(status: u32) -> *const c_char {
    let text: &CStr = match status {
        0 => c"IPSEC_OK: success",
        1 => c"IPSEC_ERR_NULL: a required pointer was NULL",
        2 => c"IPSEC_ERR_INVALID: an argument was out of range",
        3 => c"IPSEC_ERR_ABI_VERSION: the caller was built for another ABI version",
        4 => c"IPSEC_ERR_CONFIG_IO: ipsec.cfg could not be read",
        5 => c"IPSEC_ERR_LOG_IO: ipsec.log could not be opened or written",
        6 => c"IPSEC_ERR_NO_SUCH_BUNDLE: no bundle of that name is configured",
        7 => c"IPSEC_ERR_NOT_IKE_BUNDLE: the bundle is not keyed by IKE",
        8 => c"IPSEC_ERR_KEYS: the keys are malformed or do not fit the bundle",
        9 => c"IPSEC_ERR_BUFFER_TOO_SMALL: the buffer is too small",
        10 => c"IPSEC_ERR_PANIC: internal error in the plugin",
        11 => c"IPSEC_CONFIG_PARTIAL: some bundles have config errors and are not active",
        12 => c"IPSEC_ERR_CONTROL_IO: the control socket could not be served",
        _ => c"unknown status",
    };
    text.as_ptr()
}

/// Opens a plugin instance: reads the configuration, opens the log, activates the bundles.
///
/// On `IPSEC_OK` and `IPSEC_CONFIG_PARTIAL`, `*out` receives a handle to release with
/// `ipsec_plugin_free`; on every other status `*out` is set to NULL (when `out` is not
/// NULL), and the reason was also sent to the output window.
///
/// # Safety
/// `options` and `callbacks` are NULL or point to valid structs; their strings are NULL or
/// NUL-terminated; `out` is NULL or writable. See `ipsec_host_callbacks` for what the
/// callbacks must allow.
#[no_mangle]
pub unsafe extern "C" fn ipsec_plugin_new(
    options: *const ipsec_open_options,
    callbacks: *const ipsec_host_callbacks,
    out: *mut *mut ipsec_plugin,
) -> ipsec_status {
    guard_status(|| {
        if out.is_null() {
            return ipsec_status::IPSEC_ERR_NULL;
        }
        // SAFETY: `out` is non-NULL and writable per the contract; clearing it first means
        // every failure leaves a defined value.
        unsafe { out.write(std::ptr::null_mut()) };
        if options.is_null() || callbacks.is_null() {
            return ipsec_status::IPSEC_ERR_NULL;
        }
        // SAFETY: both are non-NULL and point to valid structs per the contract.
        let (options, callbacks) = unsafe { (&*options, &*callbacks) };
        if options.abi_version != IPSEC_ABI_VERSION || callbacks.abi_version != IPSEC_ABI_VERSION {
            return ipsec_status::IPSEC_ERR_ABI_VERSION;
        }
        if options
            .reserved
            .iter()
            .chain(&callbacks.reserved)
            .any(|p| !p.is_null())
            || options.flags & !KNOWN_OPEN_FLAGS != 0
        {
            return ipsec_status::IPSEC_ERR_INVALID;
        }
        // SAFETY: the strings are NULL or NUL-terminated per the contract, and are copied
        // into owned paths before this call returns.
        let (config_path, log_path) =
            unsafe { (path_arg(options.config_path), path_arg(options.log_path)) };
        let Some(config_path) = config_path else {
            return ipsec_status::IPSEC_ERR_NULL;
        };
        let host = Arc::new(CallbackHost {
            context: callbacks.context,
            output_window: callbacks.output_window,
            clock_ms: callbacks.clock_ms,
            emit_packet: callbacks.emit_packet,
        });
        let options = Options {
            config_path,
            log_path,
            log_max_bytes: options.log_max_bytes,
            debug: options.flags & IPSEC_OPEN_DEBUG != 0,
        };
        match Plugin::open(options, host.clone()) {
            Ok((plugin, config_errors)) => {
                let handle = Box::into_raw(Box::new(ipsec_plugin { plugin }));
                // SAFETY: `out` was checked non-NULL and writable above.
                unsafe { out.write(handle) };
                config_status(config_errors)
            }
            Err(error) => {
                report_open_failure(&host, &error);
                status_of(&error)
            }
        }
    })
}

/// Closes a plugin instance and releases everything it holds. NULL is a no-op. No other
/// call on the same handle may be running or start afterwards.
///
/// # Safety
/// `plugin` is NULL or a handle from `ipsec_plugin_new` that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn ipsec_plugin_free(plugin: *mut ipsec_plugin) {
    if plugin.is_null() {
        return;
    }
    guard((), || {
        // SAFETY: a live handle from Box::into_raw in ipsec_plugin_new, and the caller
        // guarantees no other call uses it, so we own it.
        drop(unsafe { Box::from_raw(plugin) });
    });
}

/// Runs a packet hook over the host's buffer.
///
/// # Safety
/// As for `ipsec_plugin_outbound`.
unsafe fn run_hook(
    plugin: *const ipsec_plugin,
    packet: *mut ipsec_packet,
    hook: fn(&Plugin, &mut PacketBuf<'_>) -> Verdict,
) -> ipsec_verdict {
    guard(ipsec_verdict::IPSEC_VERDICT_DROP, || {
        if plugin.is_null() || packet.is_null() {
            return ipsec_verdict::IPSEC_VERDICT_DROP;
        }
        // SAFETY: non-NULL; the caller passes a live handle and a valid, exclusively
        // borrowed packet struct that does not overlap the buffer.
        let (plugin, packet) = unsafe { (&(*plugin).plugin, &mut *packet) };
        let fits = packet
            .offset
            .checked_add(packet.length)
            .is_some_and(|end| end <= packet.capacity);
        if packet.buffer.is_null() || !fits {
            return ipsec_verdict::IPSEC_VERDICT_DROP;
        }
        // SAFETY: non-NULL, and the caller guarantees `capacity` writable bytes that no one
        // else touches during the call.
        let buf = unsafe { std::slice::from_raw_parts_mut(packet.buffer, packet.capacity) };
        let mut pkt = PacketBuf {
            buf,
            offset: packet.offset,
            len: packet.length,
        };
        let verdict = hook(plugin, &mut pkt);
        if verdict == Verdict::Transformed {
            packet.offset = pkt.offset;
            packet.length = pkt.len;
        }
        c_verdict(verdict)
    })
}

fn c_verdict(v: Verdict) -> ipsec_verdict {
    match v {
        Verdict::Pass => ipsec_verdict::IPSEC_VERDICT_PASS,
        Verdict::Transformed => ipsec_verdict::IPSEC_VERDICT_TRANSFORMED,
        Verdict::Drop => ipsec_verdict::IPSEC_VERDICT_DROP,
        Verdict::Held => ipsec_verdict::IPSEC_VERDICT_HELD,
    }
}

/// The outbound hook: offers a packet the host is about to send to the bundles, in file
/// order. Bad pointers, a NULL buffer or `offset + length > capacity` give
/// `IPSEC_VERDICT_DROP`. Allocates nothing.
///
/// # Safety
/// `plugin` is NULL or a live handle. `packet` is NULL or points to a struct the caller
/// does not touch during the call, whose `buffer` has `capacity` writable bytes that no
/// other thread uses during the call and that do not contain the struct itself.
#[no_mangle]
pub unsafe extern "C" fn ipsec_plugin_outbound(
    plugin: *const ipsec_plugin,
    packet: *mut ipsec_packet,
) -> ipsec_verdict {
    // SAFETY: same contract as this function.
    unsafe { run_hook(plugin, packet, Plugin::outbound) }
}

/// The outbound hook for `count` packets at once, e.g. what a host read from its
/// interface in one go. Each packet gets the verdict `ipsec_plugin_outbound` would give it,
/// in `verdicts[i]`, and is rewritten in place the same way; ESP packets of one SA are
/// encrypted together, which makes AES-CBC several times faster. A packet with a NULL
/// buffer or `offset + length > capacity` gets `IPSEC_VERDICT_DROP`. Returns
/// `IPSEC_ERR_NULL` when `plugin`, or with `count > 0` `packets` or `verdicts`, is NULL.
/// Allocates nothing.
///
/// # Safety
/// As for `ipsec_plugin_outbound`, for each of the `count` structs at `packets`; `verdicts`
/// has room for `count` values; no two packets' buffers overlap.
#[no_mangle]
pub unsafe extern "C" fn ipsec_plugin_outbound_batch(
    plugin: *const ipsec_plugin,
    packets: *mut ipsec_packet,
    count: usize,
    verdicts: *mut ipsec_verdict,
) -> ipsec_status {
    guard_status(|| {
        if plugin.is_null() || (count > 0 && (packets.is_null() || verdicts.is_null())) {
            return ipsec_status::IPSEC_ERR_NULL;
        }
        if count == 0 {
            return ipsec_status::IPSEC_OK;
        }
        // SAFETY: non-NULL; the caller passes a live handle, `count` packet structs it does
        // not touch during the call, and room for `count` verdicts.
        let (plugin, packets, verdicts) = unsafe {
            (
                &(*plugin).plugin,
                std::slice::from_raw_parts_mut(packets, count),
                std::slice::from_raw_parts_mut(verdicts, count),
            )
        };
        const CHUNK: usize = crate::engine::MAX_BATCH;
        for (packets, verdicts) in packets.chunks_mut(CHUNK).zip(verdicts.chunks_mut(CHUNK)) {
            // A packet that cannot be used stays an empty buffer, which the engine drops.
            let mut bufs: [PacketBuf<'_>; CHUNK] = std::array::from_fn(|_| PacketBuf { buf: &mut [], offset: 0, len: 0 });
            for (packet, pkt) in packets.iter().zip(bufs.iter_mut()) {
                let fits = packet.offset.checked_add(packet.length).is_some_and(|end| end <= packet.capacity);
                if packet.buffer.is_null() || !fits {
                    continue;
                }
                // SAFETY: non-NULL, `capacity` writable bytes no one else touches during the
                // call, and (the caller guarantees) not overlapping another packet's buffer.
                let buf = unsafe { std::slice::from_raw_parts_mut(packet.buffer, packet.capacity) };
                *pkt = PacketBuf { buf, offset: packet.offset, len: packet.length };
            }
            let n = packets.len();
            let mut rust_verdicts = [Verdict::Drop; CHUNK];
            plugin.outbound_batch(&mut bufs[..n], &mut rust_verdicts[..n]);
            for ((packet, pkt), (verdict, v)) in
                packets.iter_mut().zip(&bufs).zip(verdicts.iter_mut().zip(rust_verdicts))
            {
                if v == Verdict::Transformed {
                    packet.offset = pkt.offset;
                    packet.length = pkt.len;
                }
                *verdict = c_verdict(v);
            }
        }
        ipsec_status::IPSEC_OK
    })
}

/// The inbound hook: removes the layers of a received packet and checks the result against
/// policy. Same rules as `ipsec_plugin_outbound`.
///
/// # Safety
/// As for `ipsec_plugin_outbound`.
#[no_mangle]
pub unsafe extern "C" fn ipsec_plugin_inbound(
    plugin: *const ipsec_plugin,
    packet: *mut ipsec_packet,
) -> ipsec_verdict {
    // SAFETY: same contract as this function.
    unsafe { run_hook(plugin, packet, Plugin::inbound) }
}

/// The host is connected with local address `local_addr`, in host byte order
/// (10.0.0.1 is 0x0A000001). Bundles with `local = 0.0.0.0` use it.
///
/// # Safety
/// `plugin` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ipsec_plugin_connect(
    plugin: *const ipsec_plugin,
    local_addr: u32,
) -> ipsec_status {
    guard_status(|| {
        // SAFETY: NULL or a live handle per the contract.
        let Some(handle) = (unsafe { plugin.as_ref() }) else {
            return ipsec_status::IPSEC_ERR_NULL;
        };
        handle.plugin.connect(Ipv4Addr::from(local_addr));
        ipsec_status::IPSEC_OK
    })
}

/// The host's link went down: the dynamic address is gone.
///
/// # Safety
/// `plugin` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ipsec_plugin_link_down(plugin: *const ipsec_plugin) -> ipsec_status {
    guard_status(|| {
        // SAFETY: NULL or a live handle per the contract.
        let Some(handle) = (unsafe { plugin.as_ref() }) else {
            return ipsec_status::IPSEC_ERR_NULL;
        };
        handle.plugin.link_down();
        ipsec_status::IPSEC_OK
    })
}

/// The MTU of the link protected packets leave on (68-65535; 1500 until set). An outbound
/// packet with DF set that would exceed it once protected is dropped, and its sender gets
/// an ICMP "fragmentation needed" with the MTU that fits, through
/// `emit_packet(IPSEC_DIRECTION_INBOUND, ...)`: deliver it on the plaintext side.
///
/// # Safety
/// `plugin` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ipsec_plugin_set_link_mtu(plugin: *const ipsec_plugin, mtu: u32) -> ipsec_status {
    guard_status(|| {
        // SAFETY: NULL or a live handle per the contract.
        let Some(handle) = (unsafe { plugin.as_ref() }) else {
            return ipsec_status::IPSEC_ERR_NULL;
        };
        match handle.plugin.set_link_mtu(mtu) {
            Ok(()) => ipsec_status::IPSEC_OK,
            Err(e) => status_of(&e),
        }
    })
}

/// The most bytes the active bundles add to one packet, nested bundles added up, in
/// `*bytes`: advertise the link MTU minus this as the MTU of the plaintext interface.
/// It changes with reload and connect.
///
/// # Safety
/// `plugin` is NULL or a live handle; `bytes` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ipsec_plugin_overhead(plugin: *const ipsec_plugin, bytes: *mut u32) -> ipsec_status {
    guard_status(|| {
        // SAFETY: NULL or a live handle per the contract.
        let Some(handle) = (unsafe { plugin.as_ref() }) else {
            return ipsec_status::IPSEC_ERR_NULL;
        };
        if bytes.is_null() {
            return ipsec_status::IPSEC_ERR_NULL;
        }
        let overhead = u32::try_from(handle.plugin.overhead()).unwrap_or(u32::MAX);
        // SAFETY: non-NULL and writable per the contract.
        unsafe { bytes.write(overhead) };
        ipsec_status::IPSEC_OK
    })
}

/// Serves the SA table on a Unix stream socket at `path` for `ipsecdump`, usable only by
/// this process's user (peer credentials checked; docs/control.md). A NULL `path` stops
/// serving; a new path replaces the old one. `IPSEC_ERR_CONTROL_IO` when the path cannot be
/// served (another plugin answers there, it is not a socket, no permission).
///
/// # Safety
/// `plugin` is NULL or a live handle; `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn ipsec_plugin_control_listen(plugin: *const ipsec_plugin, path: *const c_char) -> ipsec_status {
    guard_status(|| {
        // SAFETY: NULL or a live handle per the contract.
        let Some(handle) = (unsafe { plugin.as_ref() }) else {
            return ipsec_status::IPSEC_ERR_NULL;
        };
        let path = if path.is_null() {
            None
        } else {
            // SAFETY: non-NULL and NUL-terminated per the contract.
            match unsafe { CStr::from_ptr(path) }.to_str() {
                Ok(p) if !p.is_empty() => Some(std::path::PathBuf::from(p)),
                _ => return ipsec_status::IPSEC_ERR_INVALID,
            }
        };
        match handle.plugin.control_listen(path.as_deref()) {
            Ok(()) => ipsec_status::IPSEC_OK,
            Err(e) => status_of(&e),
        }
    })
}

/// Housekeeping for a host timer, about once a second: drops packets held for keys whose
/// time is up (they would otherwise wait until the next packet or key for their bundle).
///
/// # Safety
/// `plugin` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ipsec_plugin_tick(plugin: *const ipsec_plugin) -> ipsec_status {
    guard_status(|| {
        // SAFETY: NULL or a live handle per the contract.
        let Some(handle) = (unsafe { plugin.as_ref() }) else {
            return ipsec_status::IPSEC_ERR_NULL;
        };
        handle.plugin.tick();
        ipsec_status::IPSEC_OK
    })
}

/// Links the instance to the keying daemon listening at `path` (NULL: the default,
/// `/run/ipsec-plugin/pluto.ctl`, which an instance with `keying = ike` bundles already
/// uses from `ipsec_plugin_new` on). The daemon is initialized (REGISTER, the IKE bundles)
/// at once if it runs, and again whenever one appears there after the previous went away.
///
/// # Safety
/// `plugin` is NULL or a live handle; `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn ipsec_plugin_daemon_connect(plugin: *const ipsec_plugin, path: *const c_char) -> ipsec_status {
    guard_status(|| {
        // SAFETY: NULL or a live handle per the contract.
        let Some(handle) = (unsafe { plugin.as_ref() }) else {
            return ipsec_status::IPSEC_ERR_NULL;
        };
        let path = if path.is_null() {
            std::path::PathBuf::from(crate::daemon::DEFAULT_SOCKET)
        } else {
            // SAFETY: non-NULL and NUL-terminated per the contract.
            match unsafe { CStr::from_ptr(path) }.to_str() {
                Ok(p) if !p.is_empty() => std::path::PathBuf::from(p),
                _ => return ipsec_status::IPSEC_ERR_INVALID,
            }
        };
        match handle.plugin.daemon_connect(Some(&path)) {
            Ok(()) => ipsec_status::IPSEC_OK,
            Err(e) => status_of(&e),
        }
    })
}

/// Stops talking to the keying daemon (SAs already installed stay until they expire).
///
/// # Safety
/// `plugin` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ipsec_plugin_daemon_disconnect(plugin: *const ipsec_plugin) -> ipsec_status {
    guard_status(|| {
        // SAFETY: NULL or a live handle per the contract.
        let Some(handle) = (unsafe { plugin.as_ref() }) else {
            return ipsec_status::IPSEC_ERR_NULL;
        };
        match handle.plugin.daemon_connect(None) {
            Ok(()) => ipsec_status::IPSEC_OK,
            Err(e) => status_of(&e),
        }
    })
}

/// Re-reads ipsec.cfg. `IPSEC_CONFIG_PARTIAL` as for `ipsec_plugin_new`.
///
/// # Safety
/// `plugin` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ipsec_plugin_reload(plugin: *const ipsec_plugin) -> ipsec_status {
    guard_status(|| {
        // SAFETY: NULL or a live handle per the contract.
        let Some(handle) = (unsafe { plugin.as_ref() }) else {
            return ipsec_status::IPSEC_ERR_NULL;
        };
        match handle.plugin.reload() {
            Ok(config_errors) => config_status(config_errors),
            Err(error) => status_of(&error),
        }
    })
}

/// Installs keys for a `keying = ike` bundle, as `key = value` lines (UTF-8) using the
/// manual-keying names of ipsec.cfg (`esp_spi_out = 0x1001` ...).
///
/// # Safety
/// `plugin` is NULL or a live handle; `bundle` and `keys` are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ipsec_plugin_install_keys(
    plugin: *const ipsec_plugin,
    bundle: *const c_char,
    keys: *const c_char,
) -> ipsec_status {
    guard_status(|| {
        // SAFETY: NULL or a live handle per the contract.
        let Some(handle) = (unsafe { plugin.as_ref() }) else {
            return ipsec_status::IPSEC_ERR_NULL;
        };
        if bundle.is_null() || keys.is_null() {
            return ipsec_status::IPSEC_ERR_NULL;
        }
        // SAFETY: both non-NULL and NUL-terminated per the contract, borrowed only for
        // this call.
        let (bundle, keys) = match unsafe { (str_arg(bundle), str_arg(keys)) } {
            (Ok(bundle), Ok(keys)) => (bundle, keys),
            _ => return ipsec_status::IPSEC_ERR_INVALID,
        };
        match handle.plugin.install_keys(bundle, keys) {
            Ok(()) => ipsec_status::IPSEC_OK,
            Err(error) => status_of(&error),
        }
    })
}

/// Writes the SA table as NUL-terminated text into `buf`. `format` is an
/// `ipsec_dump_format`. `*needed` receives the size the text needs, NUL included; when
/// `capacity` is smaller the result is `IPSEC_ERR_BUFFER_TOO_SMALL` and `buf` (if
/// `capacity > 0`) holds an empty string. `buf` may be NULL when `capacity` is 0, to ask
/// for the size. The table can grow between two calls: allocate some slack and retry on
/// `IPSEC_ERR_BUFFER_TOO_SMALL`.
///
/// # Safety
/// `plugin` is NULL or a live handle; `buf` is NULL or has `capacity` writable bytes;
/// `needed` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ipsec_plugin_dump(
    plugin: *const ipsec_plugin,
    format: u32,
    buf: *mut c_char,
    capacity: usize,
    needed: *mut usize,
) -> ipsec_status {
    guard_status(|| {
        // SAFETY: NULL or a live handle per the contract.
        let Some(handle) = (unsafe { plugin.as_ref() }) else {
            return ipsec_status::IPSEC_ERR_NULL;
        };
        if needed.is_null() || (buf.is_null() && capacity > 0) {
            return ipsec_status::IPSEC_ERR_NULL;
        }
        let format = match format {
            f if f == ipsec_dump_format::IPSEC_DUMP_TEXT as u32 => DumpFormat::Text,
            f if f == ipsec_dump_format::IPSEC_DUMP_JSON as u32 => DumpFormat::Json,
            _ => return ipsec_status::IPSEC_ERR_INVALID,
        };
        let table = handle.plugin.dump(format);
        // A NUL inside would end the C string early; the table is text, so drop it.
        let text = table.as_bytes().iter().copied().filter(|&b| b != 0);
        let size = table.bytes().filter(|&b| b != 0).count() + 1;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { needed.write(size) };
        if buf.is_null() {
            return ipsec_status::IPSEC_ERR_BUFFER_TOO_SMALL;
        }
        // SAFETY: non-NULL with `capacity` writable bytes per the contract.
        let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), capacity) };
        if capacity < size {
            out[0] = 0;
            return ipsec_status::IPSEC_ERR_BUFFER_TOO_SMALL;
        }
        for (dst, src) in out.iter_mut().zip(text.chain(std::iter::once(0))) {
            *dst = src;
        }
        ipsec_status::IPSEC_OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::ptr;
    use std::sync::Mutex;

    fn callbacks(context: *mut c_void) -> ipsec_host_callbacks {
        ipsec_host_callbacks {
            abi_version: IPSEC_ABI_VERSION,
            context,
            output_window: Some(record_line),
            clock_ms: Some(fixed_clock),
            emit_packet: None,
            reserved: [ptr::null_mut(); 4],
        }
    }

    unsafe extern "C" fn record_line(context: *mut c_void, line: *const c_char) {
        // SAFETY: the tests pass a `Mutex<Vec<String>>` as context; the line is valid.
        let (lines, line) =
            unsafe { (&*context.cast::<Mutex<Vec<String>>>(), CStr::from_ptr(line)) };
        lines
            .lock()
            .unwrap()
            .push(line.to_string_lossy().into_owned());
    }

    unsafe extern "C" fn fixed_clock(_context: *mut c_void) -> u64 {
        1_700_000_000_000
    }

    fn options(config: &CStr) -> ipsec_open_options {
        ipsec_open_options {
            abi_version: IPSEC_ABI_VERSION,
            config_path: config.as_ptr(),
            log_path: ptr::null(),
            log_max_bytes: 0,
            flags: 0,
            reserved: [ptr::null_mut(); 4],
        }
    }

    #[test]
    fn version_strings_match_the_crate() {
        // SAFETY: ipsec_version returns a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(ipsec_version()) };
        assert_eq!(v.to_str().unwrap(), crate::VERSION);
        assert_eq!(ipsec_abi_version(), IPSEC_ABI_VERSION);
    }

    #[test]
    fn every_status_has_its_own_description() {
        let mut seen = Vec::new();
        for n in 0..=12u32 {
            // SAFETY: static NUL-terminated strings.
            let s = unsafe { CStr::from_ptr(ipsec_status_describe(n)) }
                .to_str()
                .unwrap();
            assert!(s.starts_with("IPSEC_"), "{n}: {s}");
            assert!(!seen.contains(&s));
            seen.push(s);
        }
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(ipsec_status_describe(13)) };
        assert_eq!(unknown.to_str().unwrap(), "unknown status");
    }

    #[test]
    fn a_panic_becomes_a_value() {
        assert_eq!(
            guard_status(|| panic!("test panic")),
            ipsec_status::IPSEC_ERR_PANIC
        );
        assert_eq!(
            guard(ipsec_verdict::IPSEC_VERDICT_DROP, || panic!("test panic")),
            ipsec_verdict::IPSEC_VERDICT_DROP
        );
    }

    #[test]
    fn errors_map_to_their_codes() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let cases = [
            (
                Error::ConfigIo {
                    path: "x".into(),
                    source: io(),
                },
                4,
            ),
            (
                Error::LogIo {
                    path: "x".into(),
                    source: io(),
                },
                5,
            ),
            (Error::NoSuchBundle("b".into()), 6),
            (Error::NotIkeBundle("b".into()), 7),
            (Error::Keys("k".into()), 8),
        ];
        for (error, code) in cases {
            assert_eq!(status_of(&error) as u32, code, "{error:?}");
        }
        assert_eq!(config_status(0), ipsec_status::IPSEC_OK);
        assert_eq!(config_status(2), ipsec_status::IPSEC_CONFIG_PARTIAL);
    }

    #[test]
    fn null_and_bad_arguments_are_refused() {
        let config = CString::new("/nonexistent/ipsec.cfg").unwrap();
        let opts = options(&config);
        let cbs = callbacks(ptr::null_mut());
        let mut out = ptr::NonNull::<ipsec_plugin>::dangling().as_ptr();
        // SAFETY (all calls below): valid or NULL pointers as each contract allows.
        unsafe {
            assert_eq!(
                ipsec_plugin_new(&opts, &cbs, ptr::null_mut()),
                ipsec_status::IPSEC_ERR_NULL
            );
            assert_eq!(
                ipsec_plugin_new(ptr::null(), &cbs, &mut out),
                ipsec_status::IPSEC_ERR_NULL
            );
            assert!(out.is_null(), "a failed open must clear *out");
            assert_eq!(
                ipsec_plugin_new(&opts, ptr::null(), &mut out),
                ipsec_status::IPSEC_ERR_NULL
            );

            let mut bad = options(&config);
            bad.abi_version = 2;
            assert_eq!(
                ipsec_plugin_new(&bad, &cbs, &mut out),
                ipsec_status::IPSEC_ERR_ABI_VERSION
            );
            let mut bad_cbs = callbacks(ptr::null_mut());
            bad_cbs.abi_version = 0;
            assert_eq!(
                ipsec_plugin_new(&opts, &bad_cbs, &mut out),
                ipsec_status::IPSEC_ERR_ABI_VERSION
            );
            let mut bad = options(&config);
            bad.flags = 2;
            assert_eq!(
                ipsec_plugin_new(&bad, &cbs, &mut out),
                ipsec_status::IPSEC_ERR_INVALID
            );
            let mut bad = options(&config);
            bad.reserved[3] = ptr::NonNull::dangling().as_ptr();
            assert_eq!(
                ipsec_plugin_new(&bad, &cbs, &mut out),
                ipsec_status::IPSEC_ERR_INVALID
            );
            let mut bad = options(&config);
            bad.config_path = ptr::null();
            assert_eq!(
                ipsec_plugin_new(&bad, &cbs, &mut out),
                ipsec_status::IPSEC_ERR_NULL
            );

            ipsec_plugin_free(ptr::null_mut());
            let mut pkt = ipsec_packet {
                buffer: ptr::null_mut(),
                capacity: 0,
                offset: 0,
                length: 0,
            };
            assert_eq!(
                ipsec_plugin_outbound(ptr::null(), &mut pkt),
                ipsec_verdict::IPSEC_VERDICT_DROP
            );
            assert_eq!(
                ipsec_plugin_inbound(ptr::null(), &mut pkt),
                ipsec_verdict::IPSEC_VERDICT_DROP
            );
            assert_eq!(
                ipsec_plugin_connect(ptr::null(), 0x0A00_0001),
                ipsec_status::IPSEC_ERR_NULL
            );
            assert_eq!(
                ipsec_plugin_link_down(ptr::null()),
                ipsec_status::IPSEC_ERR_NULL
            );
            assert_eq!(
                ipsec_plugin_reload(ptr::null()),
                ipsec_status::IPSEC_ERR_NULL
            );
            let name = c"b";
            assert_eq!(
                ipsec_plugin_install_keys(ptr::null(), name.as_ptr(), name.as_ptr()),
                ipsec_status::IPSEC_ERR_NULL
            );
            let mut needed = 0usize;
            assert_eq!(
                ipsec_plugin_dump(ptr::null(), 0, ptr::null_mut(), 0, &mut needed),
                ipsec_status::IPSEC_ERR_NULL
            );
        }
    }

    #[test]
    fn a_missing_config_is_a_config_io_error_shown_to_the_operator() {
        let lines = Mutex::new(Vec::<String>::new());
        let config = CString::new("/nonexistent-dir/ipsec.cfg").unwrap();
        let opts = options(&config);
        let cbs = callbacks((&lines as *const Mutex<Vec<String>>).cast_mut().cast());
        let mut out = ptr::null_mut();
        // SAFETY: valid pointers; `lines` outlives the call.
        let status = unsafe { ipsec_plugin_new(&opts, &cbs, &mut out) };
        assert_eq!(status, ipsec_status::IPSEC_ERR_CONFIG_IO);
        assert!(out.is_null());
        let lines = lines.into_inner().unwrap();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("/nonexistent-dir/ipsec.cfg")),
            "{lines:?}"
        );
    }

    #[test]
    fn the_host_adapter_calls_back_with_its_context() {
        let lines = Mutex::new(Vec::<String>::new());
        let host = CallbackHost {
            context: (&lines as *const Mutex<Vec<String>>).cast_mut().cast(),
            output_window: Some(record_line),
            clock_ms: Some(fixed_clock),
            emit_packet: None,
        };
        host.output_window("SEC esp\0 icv");
        assert_eq!(host.now_ms(), 1_700_000_000_000);
        host.emit_packet(Direction::Inbound, b"ignored: no callback");
        assert_eq!(lines.into_inner().unwrap(), ["SEC esp icv"]);

        let system = CallbackHost {
            context: ptr::null_mut(),
            output_window: None,
            clock_ms: None,
            emit_packet: None,
        };
        system.output_window("dropped: no callback");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(system.now_ms().abs_diff(now) < 60_000);
    }
}
