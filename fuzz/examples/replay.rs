//! Runs files through a fuzz target without libFuzzer, on the stable toolchain:
//! `cargo run --release --example replay -- <target> <file or directory>...`
//! (a crash artifact, or a whole corpus). Exits non-zero, with the panic message, on the
//! first input that fails. With `--stats` first, prints the instance's SA table and drop
//! counters afterwards: what the inputs reached.

use std::path::{Path, PathBuf};

fn inputs(path: &Path, out: &mut Vec<PathBuf>) {
    match std::fs::read_dir(path) {
        Ok(entries) => {
            let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                inputs(&f, out);
            }
        }
        Err(_) => out.push(path.to_path_buf()),
    }
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let stats = args.next_if_eq("--stats").is_some();
    let Some(target) = args.next() else {
        eprintln!(
            "usage: replay [--stats] <{}> <file or dir>...",
            ipsec_plugin_fuzz::TARGETS.join("|")
        );
        std::process::exit(2);
    };
    let mut files = Vec::new();
    for a in args {
        inputs(Path::new(&a), &mut files);
    }
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ipsec_plugin_fuzz::run(&target, &data)
        }));
        if result.is_err() {
            eprintln!("{target}: failing input {}", f.display());
            std::process::exit(1);
        }
    }
    println!("{target}: {} inputs, no failure", files.len());
    if stats {
        println!(
            "{}",
            ipsec_plugin_fuzz::lab::lab()
                .local
                .dump(ipsec_plugin::DumpFormat::Text)
        );
    }
}
