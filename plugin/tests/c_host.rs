//! Compiles tests/c-host/host.c against include/ipsec_plugin.h with the system C compiler
//! (`$CC`, default `cc`) and runs it against the freshly built cdylib: the path a C host
//! takes, dlopen() and the header only.
//!
//! `cargo test -p ipsec-plugin` and `cargo test --workspace` build the cdylib (the lib
//! target is built with all its crate types; host-sim's tests depend on it too) into
//! target/<profile>/deps/, where this test binary lives; `cargo build` also copies it up to
//! target/<profile>/. The deps/ copy is preferred since `cargo test` keeps it current. A
//! missing library fails this test with a message; it is never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// target/<profile>/deps/, where this test binary (c_host-HASH) lives.
fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()))
}

fn find_cdylib() -> PathBuf {
    let deps = deps_dir();
    let candidates = [
        deps.join("libipsec_plugin.so"),
        deps.join("../libipsec_plugin.so"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the plugin cdylib was not found at {} or {}: build it with \
             `cargo build -p ipsec-plugin` or run `cargo test --workspace`",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

fn scratch_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("ipsec-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

#[test]
fn c_host_round_trips_through_the_c_abi() {
    let cdylib = find_cdylib();
    let root = repo_root();
    let work = scratch_dir("c-host");
    let host_exe = work.join("host");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());

    let compile = Command::new(&cc)
        .args([
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-O1",
            "-I",
        ])
        .arg(root.join("include"))
        .arg(root.join("tests/c-host/host.c"))
        .arg("-o")
        .arg(&host_exe)
        .args(["-ldl", "-pthread"])
        .output()
        .unwrap_or_else(|e| panic!("running the C compiler `{cc}`: {e}"));
    assert!(
        compile.status.success(),
        "host.c does not compile against include/ipsec_plugin.h:\n{}",
        String::from_utf8_lossy(&compile.stderr)
    );

    let configs = work.join("configs");
    std::fs::create_dir_all(&configs).expect("creating the config directory");
    let run = Command::new(&host_exe)
        .arg(&cdylib)
        .arg(&configs)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", host_exe.display()));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success() && stdout.contains("checks passed"),
        "the C host failed against {} ({}):\n{stdout}\n{stderr}",
        cdylib.display(),
        run.status
    );
    let _ = std::fs::remove_dir_all(&work);
}
