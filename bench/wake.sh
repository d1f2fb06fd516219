#!/usr/bin/env bash
# Benchmark: scale to zero. A cold request's time to first byte through the edge against the
# app's own start-to-ready, and a stampede of cold requests on one sleeping route
# (cli/examples/wake_bench.rs drives both).
#
# Starts its own `rhone dev` (release build) on free ports in a temporary directory, creates
# workspace `bench`, project `app`, app `counter`, a `preview` environment (no scale to zero,
# so its own idle watch never drains the deployment during the run) and a `production` one
# with scale to zero (`rhone envs scale-to-zero production --on --sleep-after-ms
# $BENCH_SLEEP_AFTER_MS --wake-budget-ms $BENCH_WAKE_BUDGET_MS`), deploys examples/counter
# (a fresh git repository) and promotes it. Then:
#
# 1. Cold rounds (BENCH_WARMUP unmeasured, then BENCH_ROUNDS measured). Each round waits
#    until the route sleeps (control DB: `environments.wake_state = 'sleeping'`, every
#    allocation of the owner's deployment `stopped`/`failed`, the newest Wake operation of the
#    key at `sleeping`; then 250 ms for its run to close), then
#    - PEER, measured in the same round on the same machine: the app's own start-to-ready.
#      The same build output (`python3 build.py` in a copy of examples/counter: `dist/`) is
#      started by hand, `python3 server.py` with PORT set, timed from spawn to the first 200
#      on /healthz (polled every 1 ms), then killed;
#    - one cold `GET /` through the edge (Host: the production route key) on a fresh TCP
#      connection: time to first byte from `connect()`, client side.
#    Prints each round (with the Wake operation's stage records, in ms after the send, from
#    the control DB: where the time goes), then p50/p90/max of both, Rhone's overhead (cold
#    TTFB − app start-to-ready) with the target (p50 < 100 ms) next to it, and the ratio.
# 2. Stampede (BENCH_STAMPEDE concurrent cold GETs, default 1,000; 0 skips it). With the app
#    asleep, one client process opens one connection per request (all connected first, then
#    the requests are sent together), each with a deadline of the wake budget + 1 s. Prints
#    the statuses (200 / 503 (with Retry-After) / other / timed out = hanging), p50/p99/max
#    latency from send to the answer's headers, the Wake operations and allocations created
#    for that wake (control DB: `operations` kind = 'wake', target_id = the route key, and
#    `allocations`, new rows), then "one Wake operation", "one allocation" and "none
#    hanging": yes/no.
#
# The figures are whole-machine figures: the client, the app, Temporal's dev server and every
# Rhone role share the same cores. Anything else busy (builds, tests) inflates them: the CPU
# the rest of the machine used during the measured part is printed (with a warning above 10%
# of a core), and the load average before and after.
#
# Usage: bench/wake.sh
# Settings (environment):
#   BENCH_ROUNDS=10             measured cold rounds (0: stampede only)
#   BENCH_WARMUP=1              unmeasured cold rounds first (the first wake warms caches)
#   BENCH_STAMPEDE=1000         concurrent cold GETs of the stampede (0: no stampede)
#   BENCH_SLEEP_AFTER_MS=1000   the environment's sleep_after_ms
#   BENCH_WAKE_BUDGET_MS=10000  the environment's wake budget (how long the edge holds a GET)
#   BENCH_MIN_GAP_MS=0          least time between two cold sends. An edge shares a wake
#                               call's answer with later reads of the key for a while
#                               (edge/src/wake.rs SHARE_FOR); in a build where that answer
#                               outlived the route's next sleep, a cold GET soon after the
#                               previous wake was held on it until the budget ended (503). A
#                               gap longer than SHARE_FOR steps around such a bug; 0 shows it
#   RHONE_BIN                   a prebuilt rhone binary instead of building this tree
#   WAKE_BENCH_BIN              a prebuilt wake_bench example binary
#   BENCH_KEEP=1                keep the temporary directory (rhone dev's data and log)
# Needs the `temporal` CLI on PATH (scripts/install-deps.sh), python3 and git.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$RHONE_ROOT"

rounds=${BENCH_ROUNDS:-10}
warmup=${BENCH_WARMUP:-1}
stampede=${BENCH_STAMPEDE:-1000}
sleep_after=${BENCH_SLEEP_AFTER_MS:-1000}
budget=${BENCH_WAKE_BUDGET_MS:-10000}
min_gap=${BENCH_MIN_GAP_MS:-0}

echo "reproduce: BENCH_ROUNDS=$rounds BENCH_WARMUP=$warmup BENCH_STAMPEDE=$stampede BENCH_SLEEP_AFTER_MS=$sleep_after BENCH_WAKE_BUDGET_MS=$budget BENCH_MIN_GAP_MS=$min_gap bench/wake.sh"
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(uname -sr); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

for tool in temporal python3 git; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "bench/wake: $tool is not on PATH (scripts/install-deps.sh installs the temporal CLI)" >&2
        exit 1
    }
done

# One connection per stampede request on the client and on the edge (and the edge's to the
# app): raise the open-files limit for this shell, which `rhone dev` and the driver inherit.
hard=$(ulimit -Hn)
want=$((stampede * 4 + 1024))
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
    echo "bench/wake: the open-files hard limit is $hard, $want are needed for BENCH_STAMPEDE=$stampede; raise it (ulimit -Hn, as root) or lower BENCH_STAMPEDE" >&2
    exit 1
fi
ulimit -n "$([ "$hard" = unlimited ] && echo 1048576 || echo "$hard")"

# --- binaries: one release build --------------------------------------------------------
if [ -z "${RHONE_BIN:-}" ] || [ -z "${WAKE_BENCH_BIN:-}" ]; then
    echo "bench/wake: cargo build --release -p rhone-cli --bin rhone --example wake_bench"
    start=$(rhone_now_ms)
    cargo build --release -q -p rhone-cli --bin rhone --example wake_bench
    echo "bench/wake: built in $(rhone_since "$start")"
fi
rhone=${RHONE_BIN:-$CARGO_TARGET_DIR/release/rhone}
driver=${WAKE_BENCH_BIN:-$CARGO_TARGET_DIR/release/examples/wake_bench}

# --- rhone dev ------------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/rhone-wake-bench.XXXXXX")
export RHONE_CONFIG="$work/credentials.json"
dev_pid=
cleanup() {
    if [ -n "$dev_pid" ]; then
        # Ctrl-C first, so rhone dev stops its runner's apps and Temporal.
        kill -INT "$dev_pid" 2>/dev/null || true
        for _ in $(seq 200); do
            kill -0 "$dev_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$dev_pid" 2>/dev/null || true
        wait "$dev_pid" 2>/dev/null || true
    fi
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "bench/wake: kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ports=()
for _ in 1 2 3 4 5; do ports+=("$(rhone_free_port)"); done
edge_port=${ports[1]}
"$rhone" dev --data-dir "$work/data" --api-port "${ports[0]}" --edge-port "$edge_port" \
    --runner-port "${ports[2]}" --temporal-port "${ports[3]}" --temporal-ui-port "${ports[4]}" \
    >"$work/dev.log" 2>&1 &
dev_pid=$!
start=$(rhone_now_ms)
until grep -q "Press Ctrl-C" "$work/dev.log"; do
    kill -0 "$dev_pid" 2>/dev/null || { cat "$work/dev.log" >&2; exit 1; }
    [ $(($(rhone_now_ms) - start)) -lt 120000 ] || { echo "bench/wake: rhone dev did not start within 120 s" >&2; tail -n 40 "$work/dev.log" >&2; exit 1; }
    sleep 0.1
done

# Runs the CLI; on failure prints what it said and rhone dev's last lines.
cli() {
    local out
    if ! out=$("$rhone" "$@" 2>&1); then
        echo "bench/wake: rhone $* failed:" >&2
        echo "$out" >&2
        echo "--- rhone dev log (last 40 lines) ---" >&2
        tail -n 40 "$work/dev.log" >&2
        exit 1
    fi
    printf '%s\n' "$out"
}

# --- tenancy, scale to zero, deploy, promote ------------------------------------------------
app=(-w bench -p app -a counter)
host=counter.app.bench.rhone.localhost
cli workspaces create bench >/dev/null
cli projects create -w bench app >/dev/null
cli apps create -w bench -p app counter >/dev/null
cli envs create "${app[@]}" preview --kind preview --scale-to-zero false >/dev/null
cli envs create "${app[@]}" production --kind production --requires-approval false >/dev/null
if ! "$rhone" envs --help 2>/dev/null | grep -q 'scale-to-zero'; then
    echo "bench/wake: this rhone has no \`rhone envs scale-to-zero\` command yet" >&2
    exit 1
fi
cli envs scale-to-zero production "${app[@]}" --on --sleep-after-ms "$sleep_after" \
    --wake-budget-ms "$budget" >/dev/null

cp -r examples/counter "$work/repo"
rm -rf "$work/repo/dist"
git -C "$work/repo" init -q
git -C "$work/repo" add -A
git -C "$work/repo" -c user.email=bench@rhone.local -c user.name=bench commit -qm bench
start=$(rhone_now_ms)
out=$(cli deploy "$work/repo" "${app[@]}" --env preview)
deployment=$(printf '%s\n' "$out" | sed -n 's/.*rhone promote \([^ ]*\).*/\1/p' | head -n1)
[ -n "$deployment" ] || { echo "bench/wake: no deployment id in:" >&2; echo "$out" >&2; exit 1; }
cli promote "$deployment" "${app[@]}" --env production >/dev/null
echo "bench/wake: rhone dev up, $host deployed and promoted in $(rhone_since "$start") (deployment $deployment)"

# The peer's build output: the same sources, the same build command, by hand.
cp -r "$work/repo" "$work/peer"
(cd "$work/peer" && python3 build.py >/dev/null)

# --- measuring ----------------------------------------------------------------------------
# CPU: the whole machine, rhone dev's process tree (Temporal, the runner's apps: children's
# time once reaped) and the driver (with the peer apps it started), so what the rest of the
# machine used during the run can be printed next to the figures.
clk_tck=$(getconf CLK_TCK)
tree() {
    local p
    for p in "$@"; do
        echo "$p"
        # shellcheck disable=SC2046
        tree $(pgrep -P "$p" || true)
    done
}
machine_busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
cpu_ticks() {
    local total=0 p t
    for p in $(tree "$1"); do
        t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13 + $14 + $15}') || continue
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

echo
echo "setup: rhone dev (release, sha256 $(sha256sum "$rhone" | cut -c1-12)) with Temporal's dev server on SQLite, edge on 127.0.0.1:$edge_port; app examples/counter (python3 server.py, runner readiness probe on /healthz)"
d0=$(cpu_ticks "$dev_pid")
m0=$(machine_busy)
w0=$(rhone_now_ms)
TIMEFORMAT='%3U %3S'
{ time "$driver" --edge "127.0.0.1:$edge_port" --host "$host" --db "$work/data/rhone.db" \
    --app-dir "$work/peer/dist" --rounds "$rounds" --warmup "$warmup" --stampede "$stampede" \
    --min-gap-ms "$min_gap" 2>&3; } 3>&2 2>"$work/driver.time"
wall_ms=$(($(rhone_now_ms) - w0))
d1=$(cpu_ticks "$dev_pid")
m1=$(machine_busy)
read -r drv_user drv_sys <"$work/driver.time"
python3 - "$clk_tck" "$wall_ms" "$((d1 - d0))" "$((m1 - m0))" "$drv_user" "$drv_sys" <<'PY'
import os, sys
tck, wall_ms, dev, machine, du, ds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
wall = wall_ms / 1000
ours = dev / tck + du + ds
other = max(machine / tck - ours, 0) / wall
print()
print(f"CPU during the measured part ({wall:.1f} s, {os.cpu_count()} cores): rhone dev and its apps {dev / tck / wall * 100:.0f}%, "
      f"the driver and its peer apps {(du + ds) / wall * 100:.0f}%, other processes {other * 100:.0f}% of a core")
if other > 0.10:
    print(f"WARNING: other processes used {other * 100:.0f}% of a core during the run: the figures are noisy, rerun on a quiet machine")
PY
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
