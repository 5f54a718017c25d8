//! A hand mirror of include/ipsec_plugin.h: what a C host compiles against, spelled in Rust.
//! host-sim deliberately does not link the plugin crate, so that it exercises exactly the
//! ABI a C host sees. The test at the bottom checks every number against the header.
//!
//! Values the library returns (status, verdict) and the direction it passes to callbacks
//! are taken as plain `u32`, never as Rust enums: a library that returned a number we do
//! not know must not be undefined behaviour here.
#![allow(non_camel_case_types)]
// The mirror is complete even where host-sim does not use an item, like the header.
#![allow(dead_code)]

use std::ffi::{c_char, c_void};

pub const IPSEC_ABI_VERSION: u32 = 1;
pub const IPSEC_OPEN_DEBUG: u32 = 1;

pub const IPSEC_OK: u32 = 0;
pub const IPSEC_ERR_NULL: u32 = 1;
pub const IPSEC_ERR_INVALID: u32 = 2;
pub const IPSEC_ERR_ABI_VERSION: u32 = 3;
pub const IPSEC_ERR_CONFIG_IO: u32 = 4;
pub const IPSEC_ERR_LOG_IO: u32 = 5;
pub const IPSEC_ERR_NO_SUCH_BUNDLE: u32 = 6;
pub const IPSEC_ERR_NOT_IKE_BUNDLE: u32 = 7;
pub const IPSEC_ERR_KEYS: u32 = 8;
pub const IPSEC_ERR_BUFFER_TOO_SMALL: u32 = 9;
pub const IPSEC_ERR_PANIC: u32 = 10;
pub const IPSEC_CONFIG_PARTIAL: u32 = 11;
pub const IPSEC_ERR_CONTROL_IO: u32 = 12;

pub const IPSEC_VERDICT_PASS: u32 = 0;
pub const IPSEC_VERDICT_TRANSFORMED: u32 = 1;
pub const IPSEC_VERDICT_DROP: u32 = 2;
pub const IPSEC_VERDICT_HELD: u32 = 3;

pub const IPSEC_DIRECTION_OUTBOUND: u32 = 0;
pub const IPSEC_DIRECTION_INBOUND: u32 = 1;

pub const IPSEC_DUMP_TEXT: u32 = 0;
pub const IPSEC_DUMP_JSON: u32 = 1;

/// Opaque plugin handle.
#[repr(C)]
pub struct ipsec_plugin {
    _private: [u8; 0],
}

#[repr(C)]
pub struct ipsec_packet {
    pub buffer: *mut u8,
    pub capacity: usize,
    pub offset: usize,
    pub length: usize,
}

pub type OutputWindowFn = unsafe extern "C" fn(context: *mut c_void, line: *const c_char);
pub type ClockMsFn = unsafe extern "C" fn(context: *mut c_void) -> u64;
pub type EmitPacketFn =
    unsafe extern "C" fn(context: *mut c_void, direction: u32, packet: *const u8, length: usize);

#[repr(C)]
pub struct ipsec_host_callbacks {
    pub abi_version: u32,
    pub context: *mut c_void,
    pub output_window: Option<OutputWindowFn>,
    pub clock_ms: Option<ClockMsFn>,
    pub emit_packet: Option<EmitPacketFn>,
    pub reserved: [*mut c_void; 4],
}

#[repr(C)]
pub struct ipsec_open_options {
    pub abi_version: u32,
    pub config_path: *const c_char,
    pub log_path: *const c_char,
    pub log_max_bytes: u64,
    pub flags: u32,
    pub reserved: [*mut c_void; 4],
}

pub type VersionFn = unsafe extern "C" fn() -> *const c_char;
pub type AbiVersionFn = unsafe extern "C" fn() -> u32;
pub type StatusDescribeFn = unsafe extern "C" fn(status: u32) -> *const c_char;
pub type PluginNewFn = unsafe extern "C" fn(
    options: *const ipsec_open_options,
    callbacks: *const ipsec_host_callbacks,
    out: *mut *mut ipsec_plugin,
) -> u32;
pub type PluginFreeFn = unsafe extern "C" fn(plugin: *mut ipsec_plugin);
pub type HookFn =
    unsafe extern "C" fn(plugin: *const ipsec_plugin, packet: *mut ipsec_packet) -> u32;
pub type ConnectFn = unsafe extern "C" fn(plugin: *const ipsec_plugin, local_addr: u32) -> u32;
pub type PluginFn = unsafe extern "C" fn(plugin: *const ipsec_plugin) -> u32;
pub type InstallKeysFn = unsafe extern "C" fn(
    plugin: *const ipsec_plugin,
    bundle: *const c_char,
    keys: *const c_char,
) -> u32;
pub type OutboundBatchFn = unsafe extern "C" fn(
    plugin: *const ipsec_plugin,
    packets: *mut ipsec_packet,
    count: usize,
    verdicts: *mut u32,
) -> u32;
pub type SetLinkMtuFn = unsafe extern "C" fn(plugin: *const ipsec_plugin, mtu: u32) -> u32;
pub type OverheadFn = unsafe extern "C" fn(plugin: *const ipsec_plugin, bytes: *mut u32) -> u32;
pub type ControlListenFn =
    unsafe extern "C" fn(plugin: *const ipsec_plugin, path: *const c_char) -> u32;
pub type DaemonConnectFn =
    unsafe extern "C" fn(plugin: *const ipsec_plugin, path: *const c_char) -> u32;
pub type DumpFn = unsafe extern "C" fn(
    plugin: *const ipsec_plugin,
    format: u32,
    buf: *mut c_char,
    capacity: usize,
    needed: *mut usize,
) -> u32;

#[cfg(test)]
mod tests {
    use super::*;

    const NUMBERS: &[(&str, u32)] = &[
        ("IPSEC_ABI_VERSION", IPSEC_ABI_VERSION),
        ("IPSEC_OPEN_DEBUG", IPSEC_OPEN_DEBUG),
        ("IPSEC_OK", IPSEC_OK),
        ("IPSEC_ERR_NULL", IPSEC_ERR_NULL),
        ("IPSEC_ERR_INVALID", IPSEC_ERR_INVALID),
        ("IPSEC_ERR_ABI_VERSION", IPSEC_ERR_ABI_VERSION),
        ("IPSEC_ERR_CONFIG_IO", IPSEC_ERR_CONFIG_IO),
        ("IPSEC_ERR_LOG_IO", IPSEC_ERR_LOG_IO),
        ("IPSEC_ERR_NO_SUCH_BUNDLE", IPSEC_ERR_NO_SUCH_BUNDLE),
        ("IPSEC_ERR_NOT_IKE_BUNDLE", IPSEC_ERR_NOT_IKE_BUNDLE),
        ("IPSEC_ERR_KEYS", IPSEC_ERR_KEYS),
        ("IPSEC_ERR_BUFFER_TOO_SMALL", IPSEC_ERR_BUFFER_TOO_SMALL),
        ("IPSEC_ERR_PANIC", IPSEC_ERR_PANIC),
        ("IPSEC_CONFIG_PARTIAL", IPSEC_CONFIG_PARTIAL),
        ("IPSEC_ERR_CONTROL_IO", IPSEC_ERR_CONTROL_IO),
        ("IPSEC_VERDICT_PASS", IPSEC_VERDICT_PASS),
        ("IPSEC_VERDICT_TRANSFORMED", IPSEC_VERDICT_TRANSFORMED),
        ("IPSEC_VERDICT_DROP", IPSEC_VERDICT_DROP),
        ("IPSEC_VERDICT_HELD", IPSEC_VERDICT_HELD),
        ("IPSEC_DIRECTION_OUTBOUND", IPSEC_DIRECTION_OUTBOUND),
        ("IPSEC_DIRECTION_INBOUND", IPSEC_DIRECTION_INBOUND),
        ("IPSEC_DUMP_TEXT", IPSEC_DUMP_TEXT),
        ("IPSEC_DUMP_JSON", IPSEC_DUMP_JSON),
    ];

    /// Every `#define IPSEC_X n` and enumerator `IPSEC_X = n,` of the header.
    fn header_numbers(header: &str) -> Vec<(String, u32)> {
        header
            .lines()
            .filter_map(|line| {
                let line = line.trim().trim_end_matches(',');
                let (name, value) = match line.strip_prefix("#define ") {
                    Some(rest) => rest.split_once(' ')?,
                    None => line.split_once(" = ")?,
                };
                let value = value.trim().parse().ok()?;
                name.starts_with("IPSEC_")
                    .then(|| (name.trim().to_string(), value))
            })
            .collect()
    }

    #[test]
    fn numbers_match_the_committed_header() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../include/ipsec_plugin.h");
        let header = std::fs::read_to_string(path).expect("include/ipsec_plugin.h");
        let in_header = header_numbers(&header);
        for (name, value) in &in_header {
            let mirrored = NUMBERS.iter().find(|(n, _)| n == name);
            assert_eq!(
                mirrored.map(|m| m.1),
                Some(*value),
                "{name} in the header vs abi.rs"
            );
        }
        assert_eq!(
            in_header.len(),
            NUMBERS.len(),
            "abi.rs has numbers the header lacks"
        );
    }
}
