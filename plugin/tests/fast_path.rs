//! The per-packet path allocates nothing: outbound and inbound through every kind of SA
//! under a counting global allocator. (Key schedules, HMAC states and deflate streams are
//! built when an SA is created; a per-packet rebuild would allocate or show in the bench.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use ipsec_plugin::{Direction, Host, Options, PacketBuf, Plugin, Verdict};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct QuietHost;

impl Host for QuietHost {
    fn output_window(&self, _: &str) {}
    fn now_ms(&self) -> u64 {
        1_700_000_000_000
    }
    fn emit_packet(&self, _: Direction, _: &[u8]) {}
}

fn open(dir: &std::path::Path, cfg: &str) -> Plugin {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ipsec.cfg"), cfg).unwrap();
    let options = Options { config_path: dir.to_path_buf(), log_path: None, log_max_bytes: 0, debug: false };
    let (p, errors) = Plugin::open(options, Arc::new(QuietHost)).unwrap();
    assert_eq!(errors, 0);
    p
}

const A: &str = "
[t]
local = 192.0.2.1
remote = 192.0.2.2
mode = tunnel
ipcomp = deflate
esp = aes128-sha1
ah = sha256
replay_window = 64
esp_spi_out = 0x1001
esp_spi_in = 0x1002
esp_enc_key_out = 0x00112233445566778899aabbccddeeff
esp_enc_key_in = 0xffeeddccbbaa99887766554433221100
esp_auth_key_out = 0x0102030405060708090a0b0c0d0e0f1011121314
esp_auth_key_in = 0x1413121110f0e0d0c0b0a0908070605040302010
ah_spi_out = 0x2001
ah_spi_in = 0x2002
ah_key_out = 0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
ah_key_in = 0x1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100
";

/// ESP in UDP (RFC 3948).
const UDP_ENCAP: &str = "
[u]
local = 192.0.2.1
remote = 192.0.2.2
esp = aes128-sha1
udp_encap = yes
replay_window = 64
esp_spi_out = 0x1001
esp_spi_in = 0x1002
esp_enc_key_out = 0x00112233445566778899aabbccddeeff
esp_enc_key_in = 0xffeeddccbbaa99887766554433221100
esp_auth_key_out = 0x0102030405060708090a0b0c0d0e0f1011121314
esp_auth_key_in = 0x1413121110f0e0d0c0b0a0908070605040302010
";

// One test: the allocation counter is global, and tests run on parallel threads.
#[test]
fn outbound_and_inbound_do_not_allocate() {
    for (name, cfg) in [("nested", A), ("udp-encap", UDP_ENCAP)] {
        no_allocations(name, cfg);
    }
}

fn no_allocations(name: &str, a_cfg: &str) {
    let b_cfg = a_cfg
        .replace("local = 192.0.2.1", "local = X")
        .replace("remote = 192.0.2.2", "remote = 192.0.2.1")
        .replace("local = X", "local = 192.0.2.2")
        .replace("_out", "_tmp")
        .replace("_in", "_out")
        .replace("_tmp", "_in");
    let dir = std::env::temp_dir().join(format!("ipsec-fastpath-{}-{name}", std::process::id()));
    let a = open(&dir.join("a"), a_cfg);
    let b = open(&dir.join("b"), &b_cfg);

    let mut plain = vec![0u8; 1000];
    plain[0] = 0x45;
    plain[2..4].copy_from_slice(&1000u16.to_be_bytes());
    plain[8] = 64;
    plain[9] = 17;
    plain[12..16].copy_from_slice(&[192, 0, 2, 1]);
    plain[16..20].copy_from_slice(&[192, 0, 2, 2]);
    let sum = ipsec_plugin::wire::checksum(&plain[..20]);
    plain[10..12].copy_from_slice(&sum.to_be_bytes());
    for (i, x) in plain[28..].iter_mut().enumerate() {
        *x = b"compressible text "[i % 18];
    }
    let mut buf = vec![0u8; 2048];
    // Warm up: thread-local RNG and lazily built state.
    for round in 0..2 {
        if round == 1 {
            COUNTING.store(true, Ordering::SeqCst);
        }
        for _ in 0..100 {
            buf[256..1256].copy_from_slice(&plain);
            let mut pkt = PacketBuf { buf: &mut buf, offset: 256, len: 1000 };
            assert_eq!(a.outbound(&mut pkt), Verdict::Transformed);
            assert_eq!(b.inbound(&mut pkt), Verdict::Transformed);
            assert_eq!(&pkt.buf[pkt.offset..pkt.offset + pkt.len], &plain[..]);
        }
    }
    COUNTING.store(false, Ordering::SeqCst);
    assert_eq!(ALLOCATIONS.load(Ordering::SeqCst), 0, "the per-packet path allocated ({name})");
    let _ = std::fs::remove_dir_all(&dir);
}
