//! CI drift check: include/ipsec_plugin.h must be exactly what cbindgen makes from
//! src/ffi.rs with cbindgen.toml. To update the committed header after changing the ABI:
//!
//!     UPDATE_HEADER=1 cargo test -p ipsec-plugin --test header

use std::path::Path;

fn generate(plugin_dir: &Path) -> String {
    let config = cbindgen::Config::from_file(plugin_dir.join("cbindgen.toml"))
        .unwrap_or_else(|e| panic!("reading cbindgen.toml: {e}"));
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(plugin_dir.join("src/ffi.rs"))
        .generate()
        .unwrap_or_else(|e| panic!("cbindgen failed on src/ffi.rs: {e}"));
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("cbindgen writes UTF-8")
}

#[test]
fn committed_header_matches_ffi_rs() {
    let plugin_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header_path = plugin_dir.join("../include/ipsec_plugin.h");
    let generated = generate(plugin_dir);
    if std::env::var_os("UPDATE_HEADER").is_some() {
        std::fs::write(&header_path, &generated)
            .unwrap_or_else(|e| panic!("writing {}: {e}", header_path.display()));
        return;
    }
    let committed = std::fs::read_to_string(&header_path).unwrap_or_default();
    if committed != generated {
        let first_difference = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        let line = |text: &str| {
            text.lines()
                .nth(first_difference)
                .unwrap_or("<end of file>")
                .to_string()
        };
        panic!(
            "include/ipsec_plugin.h is out of date with src/ffi.rs (first difference at line {}):\n  \
             committed: {}\n  generated: {}\n\
             Regenerate it with: UPDATE_HEADER=1 cargo test -p ipsec-plugin --test header",
            first_difference + 1,
            line(&committed),
            line(&generated),
        );
    }
}
