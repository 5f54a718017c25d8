#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipsec_plugin_fuzz::ipc(data));
