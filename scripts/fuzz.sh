#!/usr/bin/env bash
# Run every fuzz target (fuzz/fuzz_targets/*.rs) with cargo-fuzz (libFuzzer,
# nightly), starting from fuzz/corpus/<target>:
#
#   scripts/fuzz.sh [SECONDS]     SECONDS per target (default 30), by hand
#   scripts/fuzz.sh --runs N      exactly N inputs per target from seed 1:
#                                 repeatable, for CI (.ci/run)
#
# Installs cargo-fuzz if it is missing. Prints per target the executions and
# whether it crashed; exits non-zero if any target crashed (the input is in
# fuzz/artifacts/<target>/, replay it with
# `cargo +nightly fuzz run -a <target> <file>`).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--runs" ]; then
    runs="${2:-}"
    bound=(-runs="$runs" -seed=1)
    what="$runs runs"
    check="$runs"
else
    secs="${1:-30}"
    bound=(-max_total_time="$secs")
    what="${secs}s"
    check="$secs"
fi
case "$check" in
'' | *[!0-9]*)
    echo "usage: $0 [seconds per target] | --runs N" >&2
    exit 2
    ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked || exit 1
fi

# -a: debug assertions and overflow checks on, in the crate and its
# dependencies (the default sanitizer, AddressSanitizer, stays on). Every
# run below must use the same flags, or it rebuilds.
flags=(+nightly fuzz)
build_flags=(-a)

echo "building the fuzz targets"
cargo "${flags[@]}" build "${build_flags[@]}" || exit 1

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
failed=0
summary=()
for path in fuzz/fuzz_targets/*.rs; do
    target="$(basename "$path" .rs)"
    mkdir -p "fuzz/corpus/$target"
    echo "== $target: $what"
    cargo "${flags[@]}" run "${build_flags[@]}" "$target" -- \
        "${bound[@]}" -print_final_stats=1 -timeout=10 \
        >"$logs/$target.log" 2>&1
    rc=$?
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$target.log" | tail -1)"
    if [ -z "$execs" ]; then
        # No final stats (e.g. a crash): the last progress line "#N ...".
        execs="$(grep -o '^#[0-9]*' "$logs/$target.log" | tail -1 | tr -d '#')"
    fi
    if [ "$rc" -eq 0 ]; then
        result="nothing found"
    else
        failed=1
        artifact="$(grep -o 'fuzz/artifacts/[^ ]*' "$logs/$target.log" | tail -1)"
        result="FAILED (exit $rc)${artifact:+, input: $artifact}"
        grep -E 'panicked|ERROR|SUMMARY' "$logs/$target.log" | head -5
        echo "-- last lines of the log:"
        tail -30 "$logs/$target.log"
    fi
    summary+=("$(printf '%-16s %12s executions  %s' "$target" "${execs:-?}" "$result")")
done

echo
echo "fuzzing summary ($what per target):"
printf '  %s\n' "${summary[@]}"
exit "$failed"
