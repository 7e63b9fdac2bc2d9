#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for a bounded time and prints, per target, the
# executions, executions per second and findings (inputs that broke an invariant; they are
# saved under fuzz/artifacts/<target>/ and belong in fuzz/regressions/<target>/ once fixed).
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Not run in CI:
# tests/fuzz_regressions.rs replays the seeds and every finding on stable instead.
#
#   FUZZ_SECONDS=60        time per target (default 60)
#   FUZZ_TARGETS="a b"     which targets (default: all five)
#   FUZZ_TARGET_DIR=dir    cargo target dir for the fuzz builds (default fuzz/target)
#   FUZZ_JOBS=1            libFuzzer fork jobs per target (default 1)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
secs="${FUZZ_SECONDS:-60}"
targets="${FUZZ_TARGETS:-path_normalise rule_match write_rewrite answer_rewrite jwt_parse}"
tdir="${FUZZ_TARGET_DIR:-$here/fuzz/target}"
jobs="${FUZZ_JOBS:-1}"
flags=(-O -a -s none --target-dir "$tdir")

declare -A max_len=([path_normalise]=512 [rule_match]=512 [write_rewrite]=8192
                    [answer_rewrite]=8192 [jwt_parse]=4096)

echo "building the fuzz targets (nightly, release with debug assertions) ..." >&2
cargo +nightly fuzz build "${flags[@]}" >&2

rows=()
for t in $targets; do
    work="fuzz/corpus-run/$t"
    arts="fuzz/artifacts/$t"
    mkdir -p "$work" "$arts"
    log="$(mktemp)"
    echo "running $t for ${secs}s ..." >&2
    # Fork mode keeps fuzzing past a finding; each one is saved to $arts.
    cargo +nightly fuzz run "${flags[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
        -fork="$jobs" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
        -max_total_time="$secs" -max_len="${max_len[$t]:-4096}" -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$arts/" >"$log" 2>&1 || true
    # The fork parent's status lines: "#<execs>: cov: .. exec/s: <n> oom/timeout/crash: a/b/c time: <s>s ..."
    last="$(grep -E '^#[0-9]+: cov:' "$log" | tail -n 1 || true)"
    execs="$(sed -nE 's/^#([0-9]+):.*/\1/p' <<<"$last")"
    elapsed="$(sed -nE 's/.* time: ([0-9]+)s.*/\1/p' <<<"$last")"
    found="$(find "$arts" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)"
    rate="-"
    if [[ -n "$execs" && -n "$elapsed" && "$elapsed" -gt 0 ]]; then
        rate=$((execs / elapsed))
    fi
    rows+=("$t ${execs:-?} $rate $found")
    cp "$log" "fuzz/artifacts/$t.log"
    rm -f "$log"
done

printf '\n%-16s %14s %10s %9s\n' target executions exec/s findings
for r in "${rows[@]}"; do
    # shellcheck disable=SC2086
    printf '%-16s %14s %10s %9s\n' $r
done
echo "(logs: fuzz/artifacts/<target>.log; findings: fuzz/artifacts/<target>/)"
