#!/usr/bin/env bash
# Benchmark: what the allocation sandbox (crun, cgroup limits, a network namespace on the
# runner's bridge) costs the example app, against the same app started bare, in one run.
#
# 1. Start-to-ready (runner/examples/sandbox_bench.rs drives it). The example app's build
#    output (`python3 build.py` in a copy of examples/counter: `dist/`; run command
#    `python3 server.py`, port 8080, readiness on /healthz, as its rhone.toml says) is packed
#    into a local artifact store and served to a real runner (`rhone_runner::serve`, in the
#    driver's process, its own bridge 10.213.N.0/24). BENCH_WARMUP unmeasured rounds (at
#    least one: the first start unpacks the artifact, so pulling is never measured), then
#    BENCH_ROUNDS measured ones, each starting the app once per side, alternating which goes
#    first:
#    - SANDBOXED: `PUT /v1/allocations/{id}` with the spec the control plane would send (the
#      [run] defaults: 512 MiB, BENCH_CPU_MILLIS of CPU, 256 pids), timed from the PUT to
#      the runner's status saying `ready` (GET every 1 ms) — the runner's view — and to the
#      first 200 on http://ADDRESS:8080/healthz polled every 1 ms by the driver as soon as
#      the runner's log says where the process runs — the app's view. Then DELETE, and wait
#      for `stopped` and for its network namespace to be gone (not measured into the start);
#    - BARE (the peer): the same dist/ started with `python3 server.py` and PORT=<free port>,
#      with the sandbox's PATH (so the same /usr/bin/python3, not a pyenv shim) and an
#      environment like the sandbox's, timed from spawn to the first 200 on /healthz polled
#      every 1 ms, then killed.
#    Prints each round (with when the runner logged `starting`, the process started and
#    `ready`), then p50/p90/max of both, the time the sandbox adds (sandboxed − bare) at p50
#    with the target (< 50 ms) next to it, the ratio, and where the time goes.
# 2. Hot path. The driver then keeps one sandboxed allocation and one bare app running, and
#    the same wrk command (BENCH_THREADS threads, BENCH_CONNECTIONS keep-alive connections,
#    BENCH_DURATION, `GET BENCH_PATH`; a BENCH_HOT_WARMUP run first) is pointed at each, in
#    BENCH_HOT_ROUNDS interleaved rounds (the order alternates):
#    - sandbox: http://10.213.N.K:8080 — host → bridge → veth → the allocation's namespace;
#    - bare:    http://127.0.0.1:PORT — loopback.
#    With BENCH_EDGE=1, also through the real edge (`rhone serve edge`, release build, over an
#    SQLite control DB this script seeds with two routes, one to each app, as bench/proxy.sh
#    does for one): edge→sandbox and edge→bare.
#    Prints req/s, p50 and p99 per round and the median per target, the CPU the app used
#    (and, for the sandbox, how often its CPU quota throttled it), the spread between rounds
#    of one target (max − min over the median: the noise), then sandbox/bare for throughput
#    and p99 with the noise next to them, and whether the sandbox loses more than the noise.
#    The app is one Python process (ThreadingHTTPServer: a thread per connection, the GIL,
#    one stdout line per request): when it uses about one core in both targets, wrk measures
#    the app's capacity rather than the path to it, and the output says so. As shipped it
#    also writes each answer's headers and body in two writes with Nagle's algorithm on, so
#    on a keep-alive connection every answer waits for the client's delayed ACK (~40 ms):
#    wrk then measures that stall (connections / 40 ms), not the path, and the output says
#    so too. BENCH_NODELAY=1 runs the held apps (both sides) as `python3 -c 'import server;
#    server.Handler.disable_nagle_algorithm = True; server.main()'`: the same app with
#    TCP_NODELAY, which makes it CPU-bound instead. Its per-request line then costs the
#    runner (which reads, scrubs and stores the sandboxed app's output) far more than the
#    driver's drain of the bare app's pipe costs: BENCH_QUIET=1 turns that line off on both
#    sides (`server.Handler.log_request_line = lambda self, status: None`), leaving the
#    network path as the one difference.
#
# The figures are whole-machine figures: wrk, the app, the runner (its log capture reads the
# sandboxed app's per-request lines; the bare app's output goes to a pipe the driver drains
# and drops) and, with BENCH_EDGE=1, the edge share the same cores. Anything else busy
# (builds, tests) inflates them: the CPU the rest of the machine used during each measured
# part is printed (with a warning above 10% of a core), and the load average before and after.
# Our own processes' CPU is read from a cpuacct cgroup the driver runs in, with everything it
# starts (on a host with a cgroup v1 `cpuacct` hierarchy of its own), else from its process
# tree. On exit the driver drains its allocations and removes its bridge; the script then
# removes the cgroups the runner leaves behind (its empty `rhone-<scope>` parents) and its
# temporary directory, also after a failure or Ctrl-C.
#
# Usage: bench/sandbox.sh        (as root: crun, network namespaces, cgroups)
# Settings (environment):
#   BENCH_ROUNDS=20          measured start-to-ready rounds
#   BENCH_WARMUP=2           unmeasured start-to-ready rounds first (at least 1 is run)
#   BENCH_SETTLE_MS=100      pause after each start (and its stop) before the next one
#   BENCH_CPU_MILLIS=1000    the sandbox's CPU quota ([run] cpu_millis; 1000 = one core)
#   BENCH_HOT_ROUNDS=3       interleaved wrk rounds over the targets (0: no hot path)
#   BENCH_DURATION=10s       measured wrk run per target and round
#   BENCH_HOT_WARMUP=2s      unmeasured wrk run before each measured one (0 to skip)
#   BENCH_CONNECTIONS=32     wrk connections
#   BENCH_THREADS=2          wrk threads
#   BENCH_PATH=/             the path wrk GETs (/ renders the counter page; /healthz is lighter)
#   BENCH_NODELAY=0          1: the held apps run with TCP_NODELAY (see 2. above)
#   BENCH_QUIET=0            1: the held apps log no line per request (see 2. above)
#   BENCH_EDGE=0             1: also measure both apps through `rhone serve edge`
#   RHONE_BIN                a prebuilt rhone binary for BENCH_EDGE=1 instead of building this tree
#   SANDBOX_BENCH_BIN        a prebuilt sandbox_bench example binary instead of building it
#   BENCH_KEEP=1             keep the temporary directory (runner work dir, wrk output, logs)
# Installs wrk (and, with BENCH_EDGE=1, sqlite3) from Debian packages when missing.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$RHONE_ROOT"

rounds=${BENCH_ROUNDS:-20}
warmup=${BENCH_WARMUP:-2}
settle=${BENCH_SETTLE_MS:-100}
cpu_millis=${BENCH_CPU_MILLIS:-1000}
hot_rounds=${BENCH_HOT_ROUNDS:-3}
duration=${BENCH_DURATION:-10s}
hot_warmup=${BENCH_HOT_WARMUP:-2s}
conns=${BENCH_CONNECTIONS:-32}
threads=${BENCH_THREADS:-2}
path=${BENCH_PATH:-/}
nodelay=${BENCH_NODELAY:-0}
quiet=${BENCH_QUIET:-0}
edge=${BENCH_EDGE:-0}
cores=$(nproc)

repro="BENCH_ROUNDS=$rounds BENCH_WARMUP=$warmup BENCH_SETTLE_MS=$settle BENCH_CPU_MILLIS=$cpu_millis BENCH_HOT_ROUNDS=$hot_rounds BENCH_DURATION=$duration BENCH_HOT_WARMUP=$hot_warmup BENCH_CONNECTIONS=$conns BENCH_THREADS=$threads BENCH_PATH=$path BENCH_NODELAY=$nodelay BENCH_QUIET=$quiet BENCH_EDGE=$edge"
[ -z "${RHONE_BIN:-}" ] || repro+=" RHONE_BIN=$RHONE_BIN"
[ -z "${SANDBOX_BENCH_BIN:-}" ] || repro+=" SANDBOX_BENCH_BIN=$SANDBOX_BENCH_BIN"
echo "reproduce: $repro bench/sandbox.sh"
echo "machine: $cores cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(uname -sr); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- tools -------------------------------------------------------------------------------
if [ "$(id -u)" -ne 0 ]; then
    echo "bench/sandbox: run as root (the runner makes network namespaces, a bridge, cgroups and runs crun)" >&2
    exit 1
fi
for tool in python3 crun ip iptables; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "bench/sandbox: $tool is not on PATH (scripts/install-deps.sh installs crun)" >&2
        exit 1
    }
done
apt_missing=()
[ "$hot_rounds" = 0 ] || command -v wrk >/dev/null 2>&1 || apt_missing+=(wrk)
if [ "$edge" = 1 ]; then
    command -v sqlite3 >/dev/null 2>&1 || apt_missing+=(sqlite3)
    command -v curl >/dev/null 2>&1 || apt_missing+=(curl)
fi
if [ "${#apt_missing[@]}" -gt 0 ]; then
    for pkg in "${apt_missing[@]}"; do echo "bench/sandbox: installing $pkg (apt)"; done
    log=$(mktemp)
    # `apt-get update` only when the package lists cannot give what is missing.
    if ! {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${apt_missing[@]}" ||
            { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${apt_missing[@]}"; }
    } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "bench/sandbox: apt-get failed (log above)" >&2
        exit 1
    fi
    rm -f "$log"
    hash -r
fi

# --- binaries: release builds ----------------------------------------------------------------
if [ -n "${SANDBOX_BENCH_BIN:-}" ]; then
    driver=$SANDBOX_BENCH_BIN
else
    echo "bench/sandbox: cargo build --release -p rhone-runner --example sandbox_bench"
    start=$(rhone_now_ms)
    if ! cargo build --release -q -p rhone-runner --example sandbox_bench; then
        echo "bench/sandbox: the release build failed; SANDBOX_BENCH_BIN=PATH runs a prebuilt driver" >&2
        exit 1
    fi
    echo "bench/sandbox: built in $(rhone_since "$start")"
    driver="$CARGO_TARGET_DIR/release/examples/sandbox_bench"
fi
if [ "$edge" = 1 ]; then
    if [ -n "${RHONE_BIN:-}" ]; then
        rhone=$RHONE_BIN
        [ -x "$rhone" ] || { echo "bench: RHONE_BIN=$rhone is not an executable file" >&2; exit 1; }
    else
        echo "bench/sandbox: cargo build --release -p rhone-cli --bin rhone (BENCH_EDGE=1)"
        start=$(rhone_now_ms)
        if ! cargo build --release -q -p rhone-cli --bin rhone; then
            echo "bench/sandbox: the release build of rhone failed; RHONE_BIN=PATH measures a prebuilt rhone" >&2
            exit 1
        fi
        echo "bench/sandbox: built in $(rhone_since "$start")"
        rhone="$CARGO_TARGET_DIR/release/rhone"
    fi
fi

# --- processes, cleanup ----------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/rhone-sandbox-bench.XXXXXX")
chmod 755 "$work"
driver_pid=
edge_pid=
acct=
hold_fd_open=0
# Waits up to $2 tenths of a second for process $1 to exit.
wait_gone() {
    local i
    for i in $(seq "$2"); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}
cleanup() {
    # EOF on the driver's stdin ends its hold; TERM ends it wherever it is. Either way it
    # drains its allocation, stops its runner and removes its bridge.
    if [ "$hold_fd_open" = 1 ]; then
        exec 7>&-
        hold_fd_open=0
    fi
    if [ -n "$driver_pid" ] && kill -0 "$driver_pid" 2>/dev/null; then
        wait_gone "$driver_pid" 20 || kill -TERM "$driver_pid" 2>/dev/null || true
        if ! wait_gone "$driver_pid" 600; then
            echo "bench/sandbox: the driver did not stop within 60 s; killing it and its sandboxes" >&2
            kill -KILL "$driver_pid" 2>/dev/null || true
            local root="$work/runner/work/sandbox/runtime" id
            for id in $(crun --root "$root" list -q 2>/dev/null); do
                crun --root "$root" delete --force "$id" >/dev/null 2>&1 || true
            done
            # The bridge's namespaces and rules; the next runner on this subnet removes
            # whatever is left (its firewall rules).
            local bridge
            bridge=$(sed -n 's/^bridge=//p' "$work/hold.env" 2>/dev/null || true)
            if [ -n "$bridge" ]; then
                for ns in /run/netns/"$bridge"-*; do
                    [ -e "$ns" ] && ip netns del "$(basename "$ns")" 2>/dev/null
                done
                ip link del "$bridge" 2>/dev/null || true
            fi
        fi
        wait "$driver_pid" 2>/dev/null || true
    fi
    # The runner may leave its sandboxes' parent cgroup (`rhone-<scope>`, empty) in every
    # hierarchy, under the accounting cgroup's path when there is one: ours go, and the
    # accounting cgroup with them (rmdir takes only empty ones).
    local scope hierarchy
    scope=$(python3 -c 'import sys
h = 0xcbf29ce484222325
for b in sys.argv[1].encode():
    h = ((h ^ b) * 0x100000001b3) % (1 << 64)
print(f"{h & 0xffffffffff:010x}")' "$work/runner/work/sandbox" 2>/dev/null || true)
    for hierarchy in /sys/fs/cgroup/*/; do
        for dir in "${hierarchy%/}${RHONE_RUNNER_CGROUP_PARENT:-}" "${hierarchy%/}/rhone-$scope"; do
            [ -n "$scope" ] && [ -d "$dir" ] && [ "$dir" != "${hierarchy%/}" ] || continue
            find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true
        done
    done
    [ -z "$acct" ] || [ ! -d "$acct" ] || find "$acct" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    if [ -n "$edge_pid" ]; then
        kill -TERM "$edge_pid" 2>/dev/null || true
        wait_gone "$edge_pid" 50 || kill -KILL "$edge_pid" 2>/dev/null || true
        wait "$edge_pid" 2>/dev/null || true
    fi
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "bench/sandbox: kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the app's build output --------------------------------------------------------------------
cp -r examples/counter "$work/app"
rm -rf "$work/app/dist"
(cd "$work/app" && python3 build.py >/dev/null)
mkdir -p "$work/runner"

# --- CPU accounting (as bench/wake.sh and bench/proxy.sh) ---------------------------------------
clk_tck=$(getconf CLK_TCK)
# A process and its descendants.
tree() {
    local p
    for p in "$@"; do
        echo "$p"
        # shellcheck disable=SC2046
        tree $(pgrep -P "$p" || true)
    done
}
# Busy CPU ticks of the whole machine (all cores): processes (user, nice, system) and steal;
# and interrupt work (irq, softirq: much of the network path's), which no process is charged.
machine_busy() { awk '/^cpu /{print $2 + $3 + $4 + $9; exit}' /proc/stat; }
machine_irq() { awk '/^cpu /{print $7 + $8; exit}' /proc/stat; }
# CPU ticks (user + system, every thread, and reaped children's) of the given pids, each once.
# Bash builtins only: sampling many pids must not cost CPU of its own.
ticks_of() {
    local total=0 p line f
    for p in $(printf '%s\n' "$@" | sort -un); do
        read -r line 2>/dev/null <"/proc/$p/stat" || continue
        # shellcheck disable=SC2206
        f=(${line##*) })
        total=$((total + f[11] + f[12] + f[13] + f[14]))
    done
    echo "$total"
}
# CPU ticks of the kernel's threads (kworkers tearing down namespaces and cgroups, ksoftirqd…):
# the bench's own kernel work lands there, along with anyone else's.
kthread_ticks() {
    # shellcheck disable=SC2046
    ticks_of 2 $(pgrep -P 2 || true)
}
# Our processes' CPU. Where the host has a cgroup v1 hierarchy of `cpuacct` alone (accounting
# only: moving a process there changes no scheduling), the driver runs in a cpuacct cgroup of
# its own, and with it everything it starts, the sandboxes too (the runner is told to nest
# their cgroups under it, RHONE_RUNNER_CGROUP_PARENT): exact. Elsewhere the driver's process tree is read (user + system time and
# reaped children's), which misses CPU of processes no ancestor of ours reaped with its
# accounting (here, a good quarter of what sandboxed starts cost).
acct=
acct_line=$(grep -E '^[0-9]+:cpuacct:' /proc/self/cgroup || true)
if [ -n "$acct_line" ] && [ -d /sys/fs/cgroup/cpuacct ]; then
    acct="/sys/fs/cgroup/cpuacct${acct_line#*:cpuacct:}"
    acct="${acct%/}/rhone-sandbox-bench-$$"
    if mkdir "$acct" 2>/dev/null; then
        export RHONE_RUNNER_CGROUP_PARENT="${acct#/sys/fs/cgroup/cpuacct}"
    else
        acct=
    fi
fi
# CPU ticks of the driver and everything it started, and of the edge.
ours_ticks() {
    if [ -n "$acct" ]; then
        # shellcheck disable=SC2046
        echo $(($(cat "$acct/cpuacct.usage") * clk_tck / 1000000000 + $(ticks_of ${edge_pid:+$(tree "$edge_pid")})))
    else
        # shellcheck disable=SC2046
        ticks_of $(tree "$driver_pid") ${sandbox_id:+$(sandbox_pids "$sandbox_id")} ${edge_pid:+$(tree "$edge_pid")}
    fi
}
# The host pids of sandbox $1's processes (its container cgroup, `…/<id>/c`).
sandbox_pids() {
    grep -l ":/.*/$1/c\$" /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3 || true
}

# --- start-to-ready: the driver --------------------------------------------------------------
# The driver holds its allocation until its stdin (this fifo) has no writer left: the
# script keeps one open on fd 7 (read-write, so opening never blocks) and closes it when the
# hot path is done; nothing else may inherit it (`7>&-`).
mkfifo "$work/hold.fifo"
exec 7<>"$work/hold.fifo"
hold_fd_open=1
hold_args=()
[ "$hot_rounds" = 0 ] || hold_args=(--hold "$work/hold.env")
# The held apps' command: the app as shipped, or patched for BENCH_NODELAY / BENCH_QUIET.
patch=
[ "$nodelay" != 1 ] || patch+="server.Handler.disable_nagle_algorithm = True; "
[ "$quiet" != 1 ] || patch+="server.Handler.log_request_line = lambda self, status: None; "
hold_command="python3 server.py"
[ -z "$patch" ] || hold_command="python3 -c 'import server; ${patch}server.main()'"
[ "$hot_rounds" = 0 ] || hold_args+=(--hold-command "$hold_command")
echo
echo "setup: runner (rhone_runner::serve in the driver, release, sha256 $(sha256sum "$driver" | cut -c1-12)), crun $(crun --version | head -n1 | awk '{print $3}'); app examples/counter: python3 server.py ($(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin command -v python3), $(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin python3 --version 2>&1)), port 8080, /healthz"
m0=$(machine_busy)
i0=$(machine_irq)
k0=$(kthread_ticks)
w0=$(rhone_now_ms)
sandbox_id=
# shellcheck disable=SC2016
bash -c '[ -z "$1" ] || echo $$ >"$1/cgroup.procs"; shift; exec "$@"' sandbox-bench "$acct" \
    "$driver" --app-dir "$work/app/dist" --work-dir "$work/runner" --rounds "$rounds" \
    --warmup "$warmup" --settle-ms "$settle" --cpu-millis "$cpu_millis" "${hold_args[@]}" \
    <"$work/hold.fifo" 7>&- &
driver_pid=$!
if [ "$hot_rounds" = 0 ]; then
    # Nothing to hold: the driver's stdin is not read; wait for it to finish.
    d1=
    while kill -0 "$driver_pid" 2>/dev/null; do
        d1=$(ours_ticks)
        sleep 0.2
    done
    [ -z "$acct" ] || d1=$(ours_ticks)
    wait "$driver_pid" || { echo "bench/sandbox: the driver failed" >&2; exit 1; }
    driver_pid=
else
    until [ -e "$work/hold.env" ]; do
        if ! kill -0 "$driver_pid" 2>/dev/null; then
            wait "$driver_pid" || true
            driver_pid=
            echo "bench/sandbox: the driver failed before the hot path (its output above)" >&2
            exit 1
        fi
        sleep 0.05
    done
    d1=$(ours_ticks)
fi
wall_ms=$(($(rhone_now_ms) - w0))
m1=$(machine_busy)
i1=$(machine_irq)
k1=$(kthread_ticks)
python3 - "$clk_tck" "$wall_ms" "${d1:-0}" "$((m1 - m0))" "$((i1 - i0))" "$((k1 - k0))" <<'PY'
import os, sys
tck, wall_ms, driver, machine, irq, kthreads = (int(a) for a in sys.argv[1:7])
wall = wall_ms / 1000
other = max(machine - driver - kthreads, 0) / tck / wall
print()
print(f"CPU during start-to-ready ({wall:.1f} s, {os.cpu_count()} cores): the driver, its runner and the apps {driver / tck / wall * 100:.0f}%, "
      f"kernel threads {kthreads / tck / wall * 100:.0f}% (namespace and cgroup teardown among them), interrupts {irq / tck / wall * 100:.0f}%, "
      f"other processes {other * 100:.0f}% of a core")
if other > 0.10:
    print(f"WARNING: other processes used {other * 100:.0f}% of a core during the start-to-ready rounds: the figures are noisy, rerun on a quiet machine")
PY

if [ "$hot_rounds" = 0 ]; then
    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    exit 0
fi

# --- hot path ------------------------------------------------------------------------------------
# shellcheck disable=SC1091
. "$work/hold.env"
# shellcheck disable=SC2154
cgroup=$(grep -E '^[0-9]+:([^:]*,)?cpu(,[^:]*)?:' "/proc/$sandbox_pid/cgroup" | cut -d: -f3)
cpu_stat="/sys/fs/cgroup/cpu${cgroup%/c}/cpu.stat"
[ -r "$cpu_stat" ] || cpu_stat=
throttled() { [ -z "$cpu_stat" ] && echo 0 || awk '/^nr_throttled /{print $2}' "$cpu_stat"; }

declare -A url=([sandbox]="$sandbox_url$path" [bare]="$bare_url$path")
declare -A host=([sandbox]="" [bare]="")
targets_a="sandbox bare"
targets_b="bare sandbox"

if [ "$edge" = 1 ]; then
    edge_port=$(rhone_free_port)
    edge_dir="$work/edge"
    mkdir -p "$edge_dir"
    db="$edge_dir/control.db"
    edge_env=(RHONE_DATABASE_URL="sqlite://$db?mode=rwc" RHONE_LISTEN="127.0.0.1:$edge_port" RHONE_EDGE_ADMIN_LISTEN=127.0.0.1:0)
    start_edge() {
        env "${edge_env[@]}" "$rhone" serve edge >>"$edge_dir/edge.log" 2>&1 7>&- &
        edge_pid=$!
    }
    # `serve` migrates the DB on start: start once for the schema, stop, seed, start again.
    start_edge
    for _ in $(seq 300); do
        curl -sf --max-time 1 "http://127.0.0.1:$edge_port/_rhone/healthz" >/dev/null 2>&1 && break
        kill -0 "$edge_pid" 2>/dev/null || { cat "$edge_dir/edge.log" >&2; exit 1; }
        sleep 0.1
    done
    kill -TERM "$edge_pid" 2>/dev/null || true
    wait_gone "$edge_pid" 50 || kill -KILL "$edge_pid" 2>/dev/null || true
    wait "$edge_pid" 2>/dev/null || true
    edge_pid=
    # Two environments of one app, each with a deployment, a ready allocation and a route:
    # sandbox.bench.rhone.localhost → the sandboxed app, bare.bench.rhone.localhost → the bare one.
    # sea-orm on SQLite stores a Uuid as a 16-byte BLOB and a timestamp as RFC 3339 text.
    now=$(date -u +%Y-%m-%dT%H:%M:%S+00:00)
    uuid() { echo "X'0000000000004000800000000000$1'"; }
    digest="sha256:$(printf 'rhone sandbox bench' | sha256sum | cut -d' ' -f1)"
    route_sql() { # NAME N ADDRESS
        local n=$2
        cat <<SQL
INSERT INTO environments (id, workspace_id, app_id, name, kind, requires_approval, scale_to_zero, wake_budget_ms, created_at)
    VALUES ($(uuid "c${n}01"), $(uuid c001), $(uuid c003), '$1', 'production', 0, 0, 10000, '$now');
INSERT INTO deployments (id, workspace_id, app_id, environment_id, artifact_digest, source, stage, operation_id, created_at, updated_at)
    VALUES ($(uuid "c${n}02"), $(uuid c001), $(uuid c003), $(uuid "c${n}01"), '$digest', '{}', 'preview_ready', NULL, '$now', '$now');
INSERT INTO allocations (id, deployment_id, artifact_digest, runner_id, region_id, cell_id, generation, desired, stage, address, exit_status, last_report_at, created_at, updated_at)
    VALUES ($(uuid "c${n}03"), $(uuid "c${n}02"), '$digest', $(uuid c008), $(uuid c006), $(uuid c007), 1, 'run', 'ready', '$3', NULL, '$now', '$now', '$now');
INSERT INTO route_owners (route_key, environment_id, deployment_id, artifact_digest, region_id, cell_id, epoch, operation_id, updated_at)
    VALUES ('$1.bench.rhone.localhost', $(uuid "c${n}01"), $(uuid "c${n}02"), '$digest', $(uuid c006), $(uuid c007), 1, NULL, '$now');
INSERT INTO route_changes (route_key, epoch, deployment_id, artifact_digest, operation_id, created_at)
    VALUES ('$1.bench.rhone.localhost', 1, $(uuid "c${n}02"), '$digest', NULL, '$now');
SQL
    }
    sqlite3 -bail "$db" >"$edge_dir/seed.log" 2>&1 <<SQL || { cat "$edge_dir/seed.log" >&2; exit 1; }
PRAGMA foreign_keys = ON;
PRAGMA busy_timeout = 5000;
BEGIN IMMEDIATE;
INSERT INTO workspaces (id, name, display_name, created_at) VALUES ($(uuid c001), 'bench', 'bench', '$now');
INSERT INTO projects (id, workspace_id, name, created_at) VALUES ($(uuid c002), $(uuid c001), 'bench', '$now');
INSERT INTO apps (id, workspace_id, project_id, name, created_at) VALUES ($(uuid c003), $(uuid c001), $(uuid c002), 'bench', '$now');
INSERT INTO artifacts (digest, size_bytes, manifest, store_uri, created_at) VALUES ('$digest', 0, '{}', 'bench://none', '$now');
INSERT INTO regions (id, name, created_at) VALUES ($(uuid c006), 'local', '$now');
INSERT INTO cells (id, region_id, name, created_at) VALUES ($(uuid c007), $(uuid c006), 'local-a', '$now');
INSERT INTO runners (id, cell_id, name, address, status, last_seen_at, created_at)
    VALUES ($(uuid c008), $(uuid c007), 'bench-runner', 'http://127.0.0.1:1', 'ready', '$now', '$now');
$(route_sql sandbox 1 "$sandbox_url")
$(route_sql bare 2 "$bare_url")
COMMIT;
SQL
    start_edge
    for t in sandbox bare; do
        for i in $(seq 150); do
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 -H "Host: $t.bench.rhone.localhost" "http://127.0.0.1:$edge_port$path" 2>/dev/null || true)
            [ "$code" = 200 ] && break
            kill -0 "$edge_pid" 2>/dev/null || { cat "$edge_dir/edge.log" >&2; exit 1; }
            [ "$i" -lt 150 ] || { echo "bench/sandbox: the edge did not route $t (last answer: $code); its log:" >&2; tail -n 40 "$edge_dir/edge.log" >&2; exit 1; }
            sleep 0.1
        done
        url[edge-$t]="http://127.0.0.1:$edge_port$path"
        host[edge-$t]="$t.bench.rhone.localhost"
    done
    targets_a="sandbox bare edge-sandbox edge-bare"
    targets_b="bare sandbox edge-bare edge-sandbox"
fi

echo
echo "hot path: wrk $(wrk -v 2>&1 | head -n1 | awk '{print $2}') -t$threads -c$conns -d$duration --latency -s bench/proxy.lua URL (after a ${hot_warmup} warmup run), $hot_rounds interleaved rounds; wrk shares the $cores cores with the apps$([ "$edge" != 1 ] || echo ' and the edge')"
echo "  both apps: $hold_command"
echo "  sandbox: $sandbox_url$path (allocation $sandbox_id, cpu_millis $cpu_millis, pids $(sandbox_pids "$sandbox_id" | tr '\n' ' '))"
echo "  bare:    $bare_url$path (pid $bare_pid)"
[ "$edge" != 1 ] || echo "  edge-*:  $rhone serve edge (sha256 $(sha256sum "$rhone" | cut -c1-12)) on 127.0.0.1:$edge_port, Host: sandbox|bare.bench.rhone.localhost, RHONE_EDGE_WORKERS=${RHONE_EDGE_WORKERS:-default}"

results="$work/results.txt"
: >"$results"
for round in $(seq "$hot_rounds"); do
    order=$targets_a
    [ $((round % 2)) = 1 ] || order=$targets_b
    for t in $order; do
        hdr=()
        [ -z "${host[$t]}" ] || hdr=(-H "Host: ${host[$t]}")
        if [ "$hot_warmup" != 0 ] && [ "$hot_warmup" != 0s ]; then
            wrk -t"$threads" -c"$conns" -d"$hot_warmup" "${hdr[@]}" "${url[$t]}" >/dev/null 2>&1
        fi
        case $t in
            *sandbox) app_pids=$(sandbox_pids "$sandbox_id") ;;
            *) app_pids=$(tree "$bare_pid") ;;
        esac
        out="$work/wrk-$t-$round.txt"
        # shellcheck disable=SC2086
        a0=$(ticks_of $app_pids)
        o0=$(ours_ticks)
        e0=$([ -n "$edge_pid" ] && ticks_of $(tree "$edge_pid") || echo 0)
        k0=$(kthread_ticks)
        th0=$(throttled)
        m0=$(machine_busy)
        i0=$(machine_irq)
        TIMEFORMAT='%3U %3S %3R'
        { time wrk -t"$threads" -c"$conns" -d"$duration" --latency "${hdr[@]}" \
            -s bench/proxy.lua "${url[$t]}" >"$out" 2>&1; } 2>"$out.time"
        m1=$(machine_busy)
        i1=$(machine_irq)
        th1=$(throttled)
        k1=$(kthread_ticks)
        # shellcheck disable=SC2086
        a1=$(ticks_of $app_pids)
        o1=$(ours_ticks)
        e1=$([ -n "$edge_pid" ] && ticks_of $(tree "$edge_pid") || echo 0)
        line=$(grep '^BENCH ' "$out" || true)
        [ -n "$line" ] || { echo "bench/sandbox: wrk against $t printed no result:" >&2; cat "$out" >&2; exit 1; }
        read -r wrk_user wrk_sys wrk_wall <"$out.time"
        throttles=$((th1 - th0))
        case $t in *sandbox) ;; *) throttles=- ;; esac
        echo "$t round=$round ${line#BENCH } app_ticks=$((a1 - a0)) ours_ticks=$((o1 - o0)) edge_ticks=$((e1 - e0)) clk_tck=$clk_tck wrk_user=$wrk_user wrk_sys=$wrk_sys wall=$wrk_wall machine_ticks=$((m1 - m0)) irq_ticks=$((i1 - i0)) kthread_ticks=$((k1 - k0)) throttled=$throttles" >>"$results"
        app_cpu=$(awk -v t=$((a1 - a0)) -v h="$clk_tck" -v w="$wrk_wall" 'BEGIN { printf "%.0f", t / h / w * 100 }')
        field() { echo "$line" | grep -oE "(^| )$1=[0-9.]+" | cut -d= -f2; }
        echo "round $round $(printf '%-13s' "$t"): $(printf '%8.0f' "$(field rps)") req/s  p50 $(awk -v u="$(field p50)" 'BEGIN { printf "%7.2f", u / 1000 }') ms  p99 $(awk -v u="$(field p99)" 'BEGIN { printf "%7.2f", u / 1000 }') ms  app CPU $app_cpu%$([ "$throttles" = - ] || echo ", $throttles throttled periods")"
        if grep -qE 'Non-2xx|Socket errors' "$out"; then
            echo "bench/sandbox: $t had errors:" >&2
            grep -E 'Non-2xx|Socket errors' "$out" >&2
        fi
    done
done

python3 - "$results" "$duration" "$cpu_millis" "$quiet" <<'PY'
import os, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, *kv = line.split()
    rows.setdefault(name, []).append(dict(x.split("=", 1) for x in kv))
cpu_millis = int(sys.argv[3])
quiet = sys.argv[4] == "1"

def vals(name, key):
    return [float(r[key]) for r in rows[name]]

def med(name, key):
    return statistics.median(vals(name, key))

def spread(name, key):
    v = vals(name, key)
    return (max(v) - min(v)) / statistics.median(v) if len(v) > 1 else float("nan")

def cores(name, key):
    return statistics.median(int(r[key]) / int(r["clk_tck"]) / (int(r["duration_us"]) / 1e6) for r in rows[name])

def other(name):
    out = []
    for r in rows[name]:
        tck = int(r["clk_tck"])
        ours = (int(r["ours_ticks"]) + int(r["kthread_ticks"])) / tck + float(r["wrk_user"]) + float(r["wrk_sys"])
        out.append(max(int(r["machine_ticks"]) / tck - ours, 0) / float(r["wall"]))
    return statistics.median(out)

def app_us_per_req(name):
    # The app's CPU per answer: where the sandbox makes each request dearer (its syscalls pass
    # a seccomp filter; its packets cross a veth pair and a bridge, partly in its own context).
    return statistics.median(int(r["app_ticks"]) / int(r["clk_tck"]) * 1e6 / max(int(r["requests"]), 1) for r in rows[name])

def runner_cpu(name):
    # The driver's process tree (the runner and its log capture) without the app and the edge.
    return max(cores(name, "ours_ticks") - cores(name, "app_ticks") - cores(name, "edge_ticks"), 0)

def errors(name):
    return max(sum(int(r[k]) for k in ("connect_err", "read_err", "write_err", "status_err", "timeout_err")) for r in rows[name])

def pct(x):
    return "-" if x != x else f"{x * 100:.1f}%"

def ms(us):
    return f"{us / 1000:.2f} ms"

order = [n for n in ("sandbox", "bare", "edge-sandbox", "edge-bare") if n in rows]
label = {"sandbox": "sandbox (10.213.N.K)", "bare": "bare (127.0.0.1)",
         "edge-sandbox": "edge → sandbox", "edge-bare": "edge → bare"}
n = len(rows[order[0]])
print()
print(f"hot-path results (median of {n} round{'s' if n > 1 else ''}, {sys.argv[2]} each; latencies from wrk's histogram; spread = (max − min) / median over the rounds)")
print(f"{'target':<22}{'req/s':>10}{'spread':>8}{'p50':>11}{'p99':>11}{'p99 spread':>11}{'app CPU':>9}{'µs/req':>8}{'throttled':>10}{'runner CPU':>11}{'edge CPU':>9}{'wrk CPU':>9}{'irq CPU':>9}{'kthreads':>9}{'other CPU':>10}{'errors':>7}")
for name in order:
    wrk_cpu = statistics.median((float(r["wrk_user"]) + float(r["wrk_sys"])) / float(r["wall"]) for r in rows[name])
    thr = [r["throttled"] for r in rows[name]]
    thr = "-" if thr[0] == "-" else f"{statistics.median(int(t) for t in thr):.0f}"
    edge_cpu = cores(name, "edge_ticks")
    runner = runner_cpu(name)
    kthr = statistics.median(int(r["kthread_ticks"]) / int(r["clk_tck"]) / float(r["wall"]) for r in rows[name])
    irq_cpu = statistics.median(int(r["irq_ticks"]) / int(r["clk_tck"]) / float(r["wall"]) for r in rows[name])
    edge_col = f"{edge_cpu * 100:.0f}%" if name.startswith("edge") else "-"
    print(f"{label[name]:<22}{med(name, 'rps'):>10,.0f}{pct(spread(name, 'rps')):>8}{ms(med(name, 'p50')):>11}{ms(med(name, 'p99')):>11}"
          f"{pct(spread(name, 'p99')):>11}{cores(name, 'app_ticks') * 100:>8.0f}%{app_us_per_req(name):>8.1f}{thr:>10}{runner * 100:>10.0f}%{edge_col:>9}{wrk_cpu * 100:>8.0f}%{irq_cpu * 100:>8.0f}%{kthr * 100:>8.0f}%{other(name) * 100:>9.0f}%{errors(name):>7}")
print("(CPU: busy share of one core during the measured run; µs/req: the app's CPU per answer; throttled: CFS periods (100 ms)")
print(f" in which the sandbox's quota of {cpu_millis} millicores ran out; runner: the driver (the runner, its log capture of the sandboxed")
print(" app's output) without the apps; irq: interrupt and softirq work, much of it the network path's, charged to no process;")
print(f" kthreads: the kernel's threads; other: every other process; {os.cpu_count()} cores shared by all)")
busy = [f"{n} ({other(n) * 100:.0f}%)" for n in order if other(n) > 0.10]
if busy:
    print(f"WARNING: other processes used more than 10% of a core during: {', '.join(busy)}; those figures are noisy, rerun on a quiet machine")
if any(errors(n) for n in order):
    print("WARNING: wrk saw errors (column errors): those runs are not comparable")

def compare(a, b):
    if a not in rows or b not in rows:
        return
    tput = med(a, "rps") / med(b, "rps")
    p99 = med(a, "p99") / med(b, "p99")
    noise = max(spread(a, "rps"), spread(b, "rps"))
    noise99 = max(spread(a, "p99"), spread(b, "p99"))
    per_round = [float(x["rps"]) / float(y["rps"]) for x, y in zip(rows[a], rows[b])]
    loss = 1 - tput
    if n < 2:
        verdict = f"{'loss' if loss > 0 else 'gain'} {abs(loss) * 100:.1f}%; the noise is unknown with one round (BENCH_HOT_ROUNDS)"
    elif loss <= noise:
        verdict = "no loss beyond the noise"
        if noise > 0.10:
            verdict += " (but the noise is large: more BENCH_HOT_ROUNDS, a quieter machine)"
    else:
        verdict = f"LOSS beyond the noise ({loss * 100:.1f}% > {noise * 100:.1f}%)"
    lower = sum(1 for x in per_round if x < 1)
    print(f"{a}/{b}: throughput {tput:5.3f}x (per round: {', '.join(f'{x:.3f}' for x in per_round)}, lower in {lower} of {len(per_round)}; "
          f"noise {pct(noise)}), p99 {p99:5.2f}x (noise {pct(noise99)}): {verdict}")

print()
compare("sandbox", "bare")
compare("edge-sandbox", "edge-bare")
if not quiet and "sandbox" in rows and "bare" in rows and runner_cpu("sandbox") - runner_cpu("bare") > 0.10:
    print(f"note: the runner used {runner_cpu('sandbox') * 100:.0f}% of a core during the sandbox's runs (capturing its per-request output lines), the driver")
    print(f"      {runner_cpu('bare') * 100:.0f}% during the bare app's (draining its pipe): that CPU is taken from the same cores, so part of the")
    print("      difference is the log capture, not the sandbox's network path; BENCH_QUIET=1 turns the request lines off on both sides.")
for name in [n for n in order if n.endswith("sandbox")]:
    thr = [int(r["throttled"]) for r in rows[name] if r["throttled"] != "-"]
    periods = statistics.median(int(r["duration_us"]) for r in rows[name]) / 100_000
    if thr and statistics.median(thr) > 0.05 * periods:
        peer = name.replace("sandbox", "bare")
        used = f", while the bare app used {cores(peer, 'app_ticks') * 100:.0f}%" if peer in rows else ""
        print(f"note: the sandbox's CPU quota ({cpu_millis} millicores) ran out in {statistics.median(thr):.0f} of {periods:.0f} periods during {name} (app CPU "
              f"{cores(name, 'app_ticks') * 100:.0f}%{used}):")
        print("      that part of the difference is the quota, not the path; BENCH_CPU_MILLIS=2000 lifts it.")
stalled = [n for n in order if n in ("sandbox", "bare") and med(n, "p50") > 30_000 and cores(n, "app_ticks") < 0.5]
if stalled:
    print(f"note: every answer took about 40 ms or more at p50 in {' and '.join(stalled)} while the app used well under a core: the app writes")
    print("      headers and body in two writes with Nagle's algorithm on, so on a keep-alive connection each answer waits for wrk's")
    print("      delayed ACK (~40 ms). wrk measures that stall (throughput ≈ connections / 40 ms), not the path: the verdict above says")
    print("      little about the path. BENCH_NODELAY=1 BENCH_QUIET=1 runs the same app with TCP_NODELAY and no request log: CPU-bound instead.")
bound = [n for n in order if n in ("sandbox", "bare") and cores(n, "app_ticks") > 0.85]
if bound:
    print(f"note: the app used about one core or more in {' and '.join(bound)}: it is one Python process (a thread per connection, the GIL),")
    print("      so wrk measures the app's capacity more than the path to it; a difference in the path shows where it costs CPU the")
    print("      app, wrk or the kernel need on these shared cores, adds latency (p50/p99), or where the sandbox's CPU quota throttles it.")
PY
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
