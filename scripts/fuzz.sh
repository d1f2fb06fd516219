#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for SECONDS_PER_TARGET seconds (default 20), one after the
# other, on the stable toolchain: `scripts/fuzz.sh [SECONDS_PER_TARGET]`. CI runs it briefly
# from scripts/test.sh; `scripts/fuzz.sh 600` is the longer run to make before a release or
# after changing a parser.
#
# Installs cargo-fuzz when it is missing. Builds without a sanitizer (`-s none`: the workspace
# forbids unsafe code, so a bug shows as a panic) and with RUSTC_BOOTSTRAP=1, since cargo fuzz
# passes a few -Z flags. The build has its own target directory, fuzz/target (or
# $RHONE_FUZZ_TARGET_DIR), as its RUSTFLAGS differ from every other build's.
#
# Each target starts from its checked-in corpus, fuzz/corpus/<target>/, which is only read,
# with the words of its input format, fuzz/dict/<target>.dict, where there is one:
# what a run finds goes to a scratch corpus, deleted at the end. A crash (a panic, a timeout
# of 10 s on one input, more than 2 GiB) is written to fuzz/artifacts/<target>/ and its path
# printed; the other targets still run. Fix it, then copy the input into the target's corpus
# and add a regression test in the crate that failed (SECURITY.md lists them).
#
# Exit code: 0 when every target ran its time without a crash, 1 otherwise.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$RHONE_ROOT"

seconds=${1:-20}
case "$seconds" in
    '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2 && exit 2 ;;
esac

run_start=$(rhone_now_ms)
if ! cargo fuzz --version >/dev/null 2>&1; then
    phase=$(rhone_now_ms)
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
    echo "fuzz.sh: cargo-fuzz installed in $(rhone_since "$phase")"
fi

export RUSTC_BOOTSTRAP=1
target_dir=${RHONE_FUZZ_TARGET_DIR:-$RHONE_ROOT/fuzz/target}
fuzz=(cargo fuzz)
opts=(--sanitizer none --target-dir "$target_dir")
targets=$("${fuzz[@]}" list)

phase=$(rhone_now_ms)
echo "fuzz.sh: building the fuzz targets (target dir $target_dir)"
"${fuzz[@]}" build "${opts[@]}"
echo "fuzz.sh: build took $(rhone_since "$phase")"

work=$(mktemp -d "${TMPDIR:-/tmp}/rhone-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

failed=()
for target in $targets; do
    phase=$(rhone_now_ms)
    mkdir -p "$work/$target" "fuzz/artifacts/$target"
    log="$work/$target.log"
    dict=()
    [ ! -f "fuzz/dict/$target.dict" ] || dict=(-dict="fuzz/dict/$target.dict")
    code=0
    # The scratch corpus first: libFuzzer writes what it finds into the first directory.
    "${fuzz[@]}" run "${opts[@]}" "$target" "$work/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="fuzz/artifacts/$target/" -print_final_stats=1 "${dict[@]}" >"$log" 2>&1 || code=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [ "$code" -eq 0 ]; then
        echo "fuzz.sh: $target: no crash in ${runs:-?} runs ($(rhone_since "$phase"))"
    else
        failed+=("$target")
        echo "fuzz.sh: $target FAILED (exit code $code) after $(rhone_since "$phase"); the end of its log:" >&2
        tail -n 40 "$log" >&2
        crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        echo "fuzz.sh: $target: the crashing input is ${crash:-(none written)}" >&2
        [ -z "$crash" ] || echo "fuzz.sh: replay it with: RUSTC_BOOTSTRAP=1 cargo fuzz run -s none $target $crash" >&2
    fi
done

echo "fuzz.sh: ${seconds}s per target; total $(rhone_since "$run_start")"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]}" >&2
    exit 1
fi
