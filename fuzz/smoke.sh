#!/usr/bin/env bash
# Runs every fuzz target for a while, starting from the committed seeds (docs/fuzzing.md).
#
#   fuzz/smoke.sh [SECONDS] [TARGET...]      default: 20 seconds, every target
#
# Installs cargo-fuzz from crates.io if it is missing. Builds on the stable toolchain with
# `--sanitizer none` (coverage-guided, no AddressSanitizer: the plugin has no unsafe code
# outside its FFI); FUZZ_SANITIZER=address uses the nightly toolchain instead, if there is
# one. New corpus entries go to fuzz/work/corpus/<target>/ so the committed seeds stay as
# they are. Exits non-zero on the first target that fails, after printing the input that
# made it fail and the panic message.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."

seconds="${1:-20}"
shift || true
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=(inbound outbound wire config control ipc secrets isakmp)
fi
case "$seconds" in
    '' | *[!0-9]*) echo "smoke.sh: SECONDS must be a whole number, got '$seconds'" >&2; exit 2 ;;
esac

sanitizer="${FUZZ_SANITIZER:-none}"
toolchain=()
if [ "$sanitizer" != none ]; then
    toolchain=(+nightly)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --version '^0.13' --locked || exit 1
fi

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
echo "== building the fuzz targets (sanitizer: $sanitizer)"
cargo "${toolchain[@]}" fuzz build --sanitizer "$sanitizer" || exit 1

# The longest input libFuzzer makes per target: packets and batches, a config file, a
# daemon-link message or stream, a secrets file, an IKE exchange's datagrams.
max_len() {
    case "$1" in
        config | secrets) echo 16384 ;;
        wire | control) echo 2048 ;;
        *) echo 4096 ;;
    esac
}

work="$here/work"
status=0
for target in "${targets[@]}"; do
    corpus="$work/corpus/$target"
    artifacts="$work/artifacts/$target"
    log="$work/logs/$target.log"
    mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
    echo "== $target: ${seconds}s"
    cargo "${toolchain[@]}" fuzz run --sanitizer "$sanitizer" "$target" "$corpus" "$here/corpus/$target" -- \
        -max_total_time="$seconds" -max_len="$(max_len "$target")" -timeout=10 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    grep -E '^(#[0-9]+[[:space:]]+DONE|Done [0-9]+ runs)|stat::number_of_executed_units|stat::peak_rss_mb' "$log" | sed "s/^/   $target: /"
    if [ "$rc" -ne 0 ]; then
        status=1
        echo "!! $target FAILED (exit $rc); log: $log"
        grep -E "panicked at|^thread '|assertion|ERROR: libFuzzer|SUMMARY" -A3 "$log" | head -40 | sed 's/^/   /'
        for input in $(ls -t "$artifacts" 2>/dev/null | head -5); do
            echo "   failing input: $artifacts/$input"
            echo "   replay on stable: (cd fuzz && cargo run --release --example replay -- $target $artifacts/$input)"
        done
        break
    fi
done
exit "$status"
