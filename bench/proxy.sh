#!/usr/bin/env bash
# Benchmark: the edge's hot path against nginx and HAProxy, on this machine, in one run.
#
# One fast backend (nginx answering `200 ok` from memory, keep-alive) is measured directly
# first: that is the ceiling. Then the Rhone edge (`rhone serve edge`, `dist` profile:
# release with thin LTO, over an SQLite control DB this script seeds with one route), nginx
# and HAProxy, each a keep-alive
# reverse proxy to that same backend with the same number of worker threads and no
# per-request logging, are driven by the same wrk command (warmup first, then the measured
# run). Prints requests/s, p50, p99, p99.9 and the CPU each proxy used, then the ratios the
# issue asks about (Rhone/nginx, Rhone/HAProxy for throughput and p99).
#
# Usage: bench/proxy.sh
# Settings (environment):
#   BENCH_DURATION=10s     measured wrk run per target
#   BENCH_WARMUP=3s        unmeasured wrk run before each measured one (0 to skip)
#   BENCH_CONNECTIONS=64   wrk connections
#   BENCH_THREADS=2        wrk threads
#   BENCH_ROUNDS=1         rounds over all targets (interleaved); the table shows medians
#   BENCH_WORKERS=$(nproc) worker processes/threads of nginx and HAProxy (Rhone: its
#                          default, one worker thread per core; RHONE_EDGE_WORKERS=N sets it)
#   BENCH_TARGETS="ceiling rhone nginx haproxy"   which to measure, in this order
#                          (with BENCH_SCALE_TO_ZERO=1: "ceiling rhone rhone-stz nginx haproxy")
#   BENCH_SCALE_TO_ZERO=1  also measure `rhone-stz`: a second edge (same binary, same settings,
#                          its own control DB) whose seeded route's environment has scale to
#                          zero on (`environments.scale_to_zero = 1`, `wake_state = 'hot'`,
#                          `sleep_after_ms` one hour: no worker runs, so it never sleeps), so
#                          the hot path with scale to zero on and off compare in one run; adds
#                          the rhone-stz/nginx, rhone-stz/haproxy and rhone-stz/rhone ratios
#   BENCH_RHONE_LOG        RHONE_LOG for the edge (default: rhone's own default filter)
#   RHONE_BIN              a prebuilt rhone binary to measure instead of building this tree
#   BENCH_KEEP=1           keep the temporary directory (configs, logs, raw wrk output)
# Other RHONE_* variables in the environment reach the edge as they are (RHONE_EDGE_POLL_MS…).
# The "other CPU" column is what the rest of the machine used during a measured run (other
# builds, tests): anything but a few percent there makes that run's figures noise.
# Installs nginx, haproxy, wrk and sqlite3 from Debian packages when missing (as root).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$RHONE_ROOT"

duration=${BENCH_DURATION:-10s}
warmup=${BENCH_WARMUP:-3s}
conns=${BENCH_CONNECTIONS:-64}
threads=${BENCH_THREADS:-2}
rounds=${BENCH_ROUNDS:-1}
cores=$(nproc)
workers=${BENCH_WORKERS:-$cores}
stz=${BENCH_SCALE_TO_ZERO:-0}
if [ "$stz" = 1 ]; then
    targets=${BENCH_TARGETS:-ceiling rhone rhone-stz nginx haproxy}
else
    targets=${BENCH_TARGETS:-ceiling rhone nginx haproxy}
fi
route_host=bench.rhone.localhost

repro="BENCH_DURATION=$duration BENCH_WARMUP=$warmup BENCH_CONNECTIONS=$conns BENCH_THREADS=$threads BENCH_ROUNDS=$rounds BENCH_WORKERS=$workers"
[ -z "${BENCH_RHONE_LOG:-}" ] || repro+=" BENCH_RHONE_LOG=$BENCH_RHONE_LOG"
[ -z "${RHONE_BIN:-}" ] || repro+=" RHONE_BIN=$RHONE_BIN"
[ "$stz" != 1 ] || repro+=" BENCH_SCALE_TO_ZERO=1"
echo "reproduce: $repro bench/proxy.sh"
echo "machine: $cores cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(uname -sr)"

# --- tools -------------------------------------------------------------------------------
apt_missing=()
command -v nginx >/dev/null 2>&1 || apt_missing+=(nginx)
command -v haproxy >/dev/null 2>&1 || apt_missing+=(haproxy)
command -v wrk >/dev/null 2>&1 || apt_missing+=(wrk)
command -v sqlite3 >/dev/null 2>&1 || apt_missing+=(sqlite3)
command -v curl >/dev/null 2>&1 || apt_missing+=(curl)
if [ "${#apt_missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench/proxy: missing Debian packages; as root run:" >&2
        echo "  apt-get update && apt-get install -y ${apt_missing[*]}" >&2
        exit 1
    fi
    for pkg in "${apt_missing[@]}"; do echo "bench/proxy: installing $pkg (apt)"; done
    # The packages' own services (nginx on :80, haproxy) must not start: a policy-rc.d that
    # refuses, unless the machine already has one.
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    log=$(mktemp)
    ok=1
    {
        # `apt-get update` only when the package lists cannot give what is missing.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${apt_missing[@]}" ||
            { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${apt_missing[@]}"; }
    } >"$log" 2>&1 || ok=0
    [ "$own_policy" -eq 0 ] || rm -f /usr/sbin/policy-rc.d
    if [ "$ok" -ne 1 ]; then
        tail -n 30 "$log" >&2
        echo "bench/proxy: apt-get failed (log above)" >&2
        exit 1
    fi
    rm -f "$log"
    hash -r
fi

# --- the Rhone binary --------------------------------------------------------------------
if [ -n "${RHONE_BIN:-}" ]; then
    rhone=$RHONE_BIN
    [ -x "$rhone" ] || { echo "bench: RHONE_BIN=$rhone is not an executable file" >&2; exit 1; }
else
    echo "bench/proxy: cargo build --profile dist -p rhone-cli (thin LTO, one codegen unit: many minutes the first time)"
    start=$(rhone_now_ms)
    if ! cargo build --profile dist -q -p rhone-cli; then
        echo "bench/proxy: the release build failed; RHONE_BIN=PATH measures a prebuilt rhone" >&2
        exit 1
    fi
    echo "bench/proxy: built in $(rhone_since "$start")"
    rhone="$CARGO_TARGET_DIR/dist/rhone"
fi

# --- processes, ports, cleanup -----------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/rhone-proxy-bench.XXXXXX")
pids=()
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${pids[@]:-}"; do [ -z "$pid" ] || stop_pid "$pid"; done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "bench/proxy: kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

backend_port=$(rhone_free_port)
rhone_port=$(rhone_free_port)
[ "$stz" != 1 ] || rhone_stz_port=$(rhone_free_port)
nginx_port=$(rhone_free_port)
haproxy_port=$(rhone_free_port)

# Waits until `curl URL` with the route's Host answers `ok`; fails with the log otherwise.
wait_ok() {
    local name=$1 url=$2 pid=$3 log=$4 i body
    for i in $(seq 150); do
        body=$(curl -s --max-time 1 -H "Host: $route_host" "$url" 2>/dev/null || true)
        [ "$body" = "ok" ] && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "bench/proxy: $name exited; its log:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "bench/proxy: $name did not answer 'ok' at $url within 15s (last answer: ${body:-none}); its log:" >&2
    tail -n 40 "$log" >&2
    exit 1
}

# nginx's config prelude: no daemon, pid, error log and temp paths in its own directory.
nginx_prelude() {
    local dir=$1
    mkdir -p "$dir/tmp"
    cat <<EOF
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_http_common() {
    local dir=$1
    cat <<EOF
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
EOF
}
start_nginx() {
    local name=$1 dir=$2
    nginx -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 || {
        cat "$dir/stdout.log" "$dir/error.log" >&2 2>/dev/null
        exit 1
    }
    nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' >>"$dir/stdout.log" 2>&1 &
    pids+=($!)
    eval "${name}_pid=$!"
}

# --- the backend: nginx answering from memory ----------------------------------------------
dir="$work/backend"
mkdir -p "$dir"
{
    nginx_prelude "$dir"
    echo "http {"
    nginx_http_common "$dir"
    cat <<EOF
    server {
        listen 127.0.0.1:$backend_port default_server;
        location / { default_type text/plain; return 200 "ok"; }
    }
}
EOF
} >"$dir/nginx.conf"
start_nginx backend "$dir"
wait_ok backend "http://127.0.0.1:$backend_port/" "$backend_pid" "$dir/error.log"

# --- the Rhone edge, over a control DB with one route to the backend ----------------------
# setup_rhone NAME PORT SCALE_TO_ZERO: an edge in $work/NAME over its own control DB whose
# one route's environment has scale_to_zero 0 or 1; sets NAME's pid (rhone_pid, rhone_stz_pid).
setup_rhone() {
    local name=$1 port=$2 scale_to_zero=$3 i pid
    local dir="$work/$name"
    mkdir -p "$dir"
    local db="$dir/control.db"
    local rhone_env=(RHONE_DATABASE_URL="sqlite://$db?mode=rwc" RHONE_LISTEN="127.0.0.1:$port" RHONE_EDGE_ADMIN_LISTEN=127.0.0.1:0)
    [ -z "${BENCH_RHONE_LOG:-}" ] || rhone_env+=(RHONE_LOG="$BENCH_RHONE_LOG")
    start_rhone() {
        env "${rhone_env[@]}" "$rhone" serve edge >>"$dir/edge.log" 2>&1 &
        pids+=($!)
        pid=$!
    }
    # `serve` migrates the DB on start: start once for the schema, stop, seed, start again (so
    # an edge that loads its route table at start sees the route too).
    start_rhone
    for i in $(seq 300); do
        curl -sf --max-time 1 "http://127.0.0.1:$port/_rhone/healthz" >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || { cat "$dir/edge.log" >&2; exit 1; }
        sleep 0.1
    done
    stop_pid "$pid"

    # sea-orm on SQLite stores a Uuid as a 16-byte BLOB and a timestamp as RFC 3339 text.
    local now ws project app env_id deployment region cell runner allocation digest stz_sql=
    now=$(date -u +%Y-%m-%dT%H:%M:%S+00:00)
    ws="X'0000000000004000800000000000b001'"
    project="X'0000000000004000800000000000b002'"
    app="X'0000000000004000800000000000b003'"
    env_id="X'0000000000004000800000000000b004'"
    deployment="X'0000000000004000800000000000b005'"
    region="X'0000000000004000800000000000b006'"
    cell="X'0000000000004000800000000000b007'"
    runner="X'0000000000004000800000000000b008'"
    allocation="X'0000000000004000800000000000b009'"
    digest="sha256:$(printf 'rhone proxy bench' | sha256sum | cut -d' ' -f1)"
    # Scale to zero on, awake, and no sleep within the run (no worker runs to put it to sleep
    # anyway); the columns exist from migration 8 (m20261124_000008_wake) on.
    [ "$scale_to_zero" != 1 ] ||
        stz_sql="UPDATE environments SET scale_to_zero = 1, sleep_after_ms = 3600000, wake_state = 'hot' WHERE id = $env_id;"
    sqlite3 -bail "$db" >"$dir/seed.log" 2>&1 <<SQL || { cat "$dir/seed.log" >&2; exit 1; }
PRAGMA foreign_keys = ON;
PRAGMA busy_timeout = 5000;
BEGIN IMMEDIATE;
INSERT INTO workspaces (id, name, display_name, created_at) VALUES ($ws, 'bench', 'bench', '$now');
INSERT INTO projects (id, workspace_id, name, created_at) VALUES ($project, $ws, 'bench', '$now');
INSERT INTO apps (id, workspace_id, project_id, name, created_at) VALUES ($app, $ws, $project, 'bench', '$now');
INSERT INTO environments (id, workspace_id, app_id, name, kind, requires_approval, scale_to_zero, wake_budget_ms, created_at)
    VALUES ($env_id, $ws, $app, 'production', 'production', 0, 0, 10000, '$now');
$stz_sql
INSERT INTO artifacts (digest, size_bytes, manifest, store_uri, created_at)
    VALUES ('$digest', 0, '{}', 'bench://none', '$now');
INSERT INTO deployments (id, workspace_id, app_id, environment_id, artifact_digest, source, stage, operation_id, created_at, updated_at)
    VALUES ($deployment, $ws, $app, $env_id, '$digest', '{}', 'preview_ready', NULL, '$now', '$now');
INSERT INTO regions (id, name, created_at) VALUES ($region, 'local', '$now');
INSERT INTO cells (id, region_id, name, created_at) VALUES ($cell, $region, 'local-a', '$now');
INSERT INTO runners (id, cell_id, name, address, status, last_seen_at, created_at)
    VALUES ($runner, $cell, 'bench-runner', 'http://127.0.0.1:1', 'ready', '$now', '$now');
INSERT INTO allocations (id, deployment_id, artifact_digest, runner_id, region_id, cell_id, generation, desired, stage, address, exit_status, last_report_at, created_at, updated_at)
    VALUES ($allocation, $deployment, '$digest', $runner, $region, $cell, 1, 'run', 'ready', 'http://127.0.0.1:$backend_port', NULL, '$now', '$now', '$now');
INSERT INTO route_owners (route_key, environment_id, deployment_id, artifact_digest, region_id, cell_id, epoch, operation_id, updated_at)
    VALUES ('$route_host', $env_id, $deployment, '$digest', $region, $cell, 1, NULL, '$now');
INSERT INTO route_changes (route_key, epoch, deployment_id, artifact_digest, operation_id, created_at)
    VALUES ('$route_host', 1, $deployment, '$digest', NULL, '$now');
COMMIT;
SQL
    start_rhone
    if [ "$scale_to_zero" = 1 ]; then
        rhone_stz_pid=$pid
        wait_ok "rhone edge (scale to zero on)" "http://127.0.0.1:$port/" "$pid" "$dir/edge.log"
    else
        rhone_pid=$pid
        wait_ok "rhone edge" "http://127.0.0.1:$port/" "$pid" "$dir/edge.log"
    fi
}
setup_rhone rhone "$rhone_port" 0
[ "$stz" != 1 ] || setup_rhone rhone-stz "$rhone_stz_port" 1

# --- nginx as a keep-alive reverse proxy ---------------------------------------------------
dir="$work/nginx"
mkdir -p "$dir"
{
    nginx_prelude "$dir"
    echo "http {"
    nginx_http_common "$dir"
    cat <<EOF
    upstream backend {
        server 127.0.0.1:$backend_port;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$nginx_port default_server;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
} >"$dir/nginx.conf"
start_nginx nginx "$dir"
wait_ok nginx "http://127.0.0.1:$nginx_port/" "$nginx_pid" "$dir/error.log"

# --- HAProxy as a keep-alive reverse proxy -------------------------------------------------
dir="$work/haproxy"
mkdir -p "$dir"
cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $workers
    maxconn 8192
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s
frontend bench
    bind 127.0.0.1:$haproxy_port
    default_backend backend
backend backend
    server b1 127.0.0.1:$backend_port
EOF
haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 || { cat "$dir/haproxy.log" >&2; exit 1; }
haproxy -db -f "$dir/haproxy.cfg" >>"$dir/haproxy.log" 2>&1 &
pids+=($!)
haproxy_pid=$!
wait_ok haproxy "http://127.0.0.1:$haproxy_port/" "$haproxy_pid" "$dir/haproxy.log"

# --- measuring ----------------------------------------------------------------------------
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
# Busy CPU ticks of the whole machine (all cores).
machine_busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
# CPU ticks (user + system, every thread) of a process tree.
cpu_ticks() {
    local total=0 p t
    for p in $(tree "$1"); do
        t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || continue
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

echo
echo "setup (the same for every target):"
echo "  wrk $(wrk -v 2>&1 | head -n1 | awk '{print $2}'): wrk -t$threads -c$conns -d$duration --latency -H 'Host: $route_host' -s bench/proxy.lua URL, after a warmup of ${warmup} (same command, unmeasured); wrk runs on the same $cores cores as everything else"
echo "  backend (ceiling): nginx $(nginx -v 2>&1 | sed 's|.*/||') return 200 \"ok\", worker_processes $workers, keepalive_requests 1000000, access_log off"
echo "  rhone:   $rhone serve edge (${RHONE_BIN:+given binary, }sha256 $(sha256sum "$rhone" | cut -c1-12)), ${RHONE_EDGE_WORKERS:-$cores} worker threads (one current-thread runtime and accept loop each), route from SQLite, RHONE_LOG=${BENCH_RHONE_LOG:-default (info: no per-request lines)}"
[ "$stz" != 1 ] || echo "  rhone-stz: the same edge and settings over its own control DB; the route's environment has scale_to_zero = 1 (wake_state hot, sleep_after_ms 3600000)"
echo "  nginx:   worker_processes $workers; upstream keepalive 64 (keepalive_requests 1000000); proxy_http_version 1.1; Connection \"\"; X-Forwarded-For/Proto; access_log off"
echo "  haproxy: $(haproxy -v 2>&1 | head -n1 | awk '{print $3}') mode http, nbthread $workers, http-reuse always, option forwardfor, no log"
echo

declare -A url=(
    [ceiling]="http://127.0.0.1:$backend_port/"
    [rhone]="http://127.0.0.1:$rhone_port/"
    [nginx]="http://127.0.0.1:$nginx_port/"
    [haproxy]="http://127.0.0.1:$haproxy_port/"
)
declare -A proc=([ceiling]=$backend_pid [rhone]=$rhone_pid [nginx]=$nginx_pid [haproxy]=$haproxy_pid)
if [ "$stz" = 1 ]; then
    url[rhone-stz]="http://127.0.0.1:$rhone_stz_port/"
    proc[rhone-stz]=$rhone_stz_pid
fi
results="$work/results.txt"
: >"$results"
for round in $(seq "$rounds"); do
    for t in $targets; do
        [ -n "${url[$t]:-}" ] || { echo "bench/proxy: unknown target $t" >&2; exit 1; }
        if [ "$warmup" != 0 ] && [ "$warmup" != 0s ]; then
            wrk -t"$threads" -c"$conns" -d"$warmup" -H "Host: $route_host" "${url[$t]}" >/dev/null 2>&1
        fi
        out="$work/wrk-$t-$round.txt"
        p0=$(cpu_ticks "${proc[$t]}")
        b0=$(cpu_ticks "$backend_pid")
        m0=$(machine_busy)
        TIMEFORMAT='%3U %3S %3R'
        { time wrk -t"$threads" -c"$conns" -d"$duration" --latency -H "Host: $route_host" \
            -s bench/proxy.lua "${url[$t]}" >"$out" 2>&1; } 2>"$out.time"
        p1=$(cpu_ticks "${proc[$t]}")
        b1=$(cpu_ticks "$backend_pid")
        m1=$(machine_busy)
        line=$(grep '^BENCH ' "$out" || true)
        [ -n "$line" ] || { echo "bench/proxy: wrk against $t printed no result:" >&2; cat "$out" >&2; exit 1; }
        read -r wrk_user wrk_sys wrk_wall <"$out.time"
        echo "$t round=$round ${line#BENCH } proxy_ticks=$((p1 - p0)) backend_ticks=$((b1 - b0)) clk_tck=$clk_tck wrk_user=$wrk_user wrk_sys=$wrk_sys wall=$wrk_wall machine_ticks=$((m1 - m0))" >>"$results"
        echo "round $round $t: $(echo "$line" | grep -oE 'rps=[0-9.]+ p50=[0-9]+ p90=[0-9]+ p99=[0-9]+ p999=[0-9]+') (µs)"
        # Non-2xx answers or socket errors make a run meaningless: say so loudly.
        if grep -qE 'Non-2xx|Socket errors' "$out"; then
            echo "bench/proxy: $t had errors:" >&2
            grep -E 'Non-2xx|Socket errors' "$out" >&2
        fi
    done
done

python3 - "$results" "$duration" <<'PY'
import os, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, *kv = line.split()
    d = dict(x.split("=", 1) for x in kv)
    rows.setdefault(name, []).append(d)

def med(name, key, conv=float):
    return statistics.median(conv(r[key]) for r in rows[name])

def ms(us):
    return f"{us / 1000:.2f} ms"

def cpu(name, key):
    # CPU of a process tree during the measured run, in cores (100% = one core busy).
    return statistics.median(int(r[key]) / int(r["clk_tck"]) / (int(r["duration_us"]) / 1e6) for r in rows[name])

def us_per_req(name):
    return statistics.median(
        int(r["proxy_ticks"]) / int(r["clk_tck"]) * 1e6 / max(int(r["requests"]), 1) for r in rows[name])

def other(name):
    # Machine-wide busy time not spent by the proxy, the backend or wrk, in cores.
    out = []
    for r in rows[name]:
        tck = int(r["clk_tck"])
        ours = int(r["backend_ticks"]) / tck + float(r["wrk_user"]) + float(r["wrk_sys"])
        if name != "ceiling":
            ours += int(r["proxy_ticks"]) / tck
        out.append(max(int(r["machine_ticks"]) / tck - ours, 0) / float(r["wall"]))
    return statistics.median(out)

def errors(name):
    return max(sum(int(r[k]) for k in ("connect_err", "read_err", "write_err", "status_err", "timeout_err")) for r in rows[name])

order = [n for n in ("ceiling", "rhone", "rhone-stz", "nginx", "haproxy") if n in rows]
label = {"ceiling": "backend direct (ceiling)", "rhone": "rhone edge", "rhone-stz": "rhone edge, scale to zero",
         "nginx": "nginx", "haproxy": "haproxy"}
n = len(next(iter(rows.values())))
print()
print(f"results ({'median of ' + str(n) + ' rounds' if n > 1 else 'one round'}, {sys.argv[2]} each; latencies from wrk's histogram)")
print(f"{'target':<26}{'req/s':>11}{'p50':>11}{'p99':>11}{'p99.9':>11}{'max':>11}{'proxy CPU':>11}{'µs CPU/req':>12}{'backend CPU':>13}{'wrk CPU':>9}{'other CPU':>11}{'errors':>8}")
for name in order:
    proxy_cpu = f"{cpu(name, 'proxy_ticks') * 100:.0f}%" if name != "ceiling" else "-"
    per_req = f"{us_per_req(name):.1f}" if name != "ceiling" else "-"
    wrk_cpu = statistics.median((float(r["wrk_user"]) + float(r["wrk_sys"])) / float(r["wall"]) for r in rows[name])
    print(f"{label[name]:<26}{med(name, 'rps'):>11,.0f}{ms(med(name, 'p50')):>11}{ms(med(name, 'p99')):>11}"
          f"{ms(med(name, 'p999')):>11}{ms(med(name, 'max')):>11}{proxy_cpu:>11}{per_req:>12}"
          f"{cpu(name, 'backend_ticks') * 100:>12.0f}%{wrk_cpu * 100:>8.0f}%{other(name) * 100:>10.0f}%{errors(name):>8}")
print(f"(CPU: busy share of one core during the measured run, all threads/processes; {os.cpu_count()} cores are shared by wrk, the proxy and the backend)")
busy = [f"{n} ({other(n) * 100:.0f}%)" for n in order if other(n) > 0.10]
if busy:
    print(f"WARNING: other processes used more than 10% of a core during: {', '.join(busy)}; those figures are noisy, rerun on a quiet machine")
if "rhone" in rows:
    print()
    goal = []
    for peer in ("nginx", "haproxy"):
        if peer not in rows:
            continue
        tput = med("rhone", "rps") / med(peer, "rps")
        p99 = med("rhone", "p99") / med(peer, "p99")
        p999 = med("rhone", "p999") / med(peer, "p999")
        ok = tput >= 1 and p99 <= 1
        goal.append(ok)
        print(f"rhone/{peer:<8} throughput {tput:5.2f}x   p99 {p99:5.2f}x   p99.9 {p999:5.2f}x   "
              f"goal (throughput >= 1, p99 <= 1): {'met' if ok else 'NOT met'}")
    if "ceiling" in rows:
        print(f"rhone/ceiling  throughput {med('rhone', 'rps') / med('ceiling', 'rps'):5.2f}x")
if "rhone-stz" in rows:
    print()
    for peer in ("nginx", "haproxy"):
        if peer not in rows:
            continue
        tput = med("rhone-stz", "rps") / med(peer, "rps")
        p99 = med("rhone-stz", "p99") / med(peer, "p99")
        p999 = med("rhone-stz", "p999") / med(peer, "p999")
        ok = tput >= 1 and p99 <= 1
        print(f"rhone-stz/{peer:<8} throughput {tput:5.2f}x   p99 {p99:5.2f}x   p99.9 {p999:5.2f}x   "
              f"goal (throughput >= 1, p99 <= 1): {'met' if ok else 'NOT met'}")
    if "rhone" in rows:
        tput = med("rhone-stz", "rps") / med("rhone", "rps")
        p50 = med("rhone-stz", "p50") / med("rhone", "p50")
        p99 = med("rhone-stz", "p99") / med("rhone", "p99")
        cpu_ratio = us_per_req("rhone-stz") / us_per_req("rhone")
        print(f"rhone-stz/rhone    throughput {tput:5.2f}x   p50 {p50:5.2f}x   p99 {p99:5.2f}x   CPU/req {cpu_ratio:5.2f}x   "
              f"(scale to zero on / off; 1.00x is unchanged, run-to-run noise is a few %)")
PY
echo
echo "note: wrk shares the $cores cores with the proxy and the backend, so every figure is a"
echo "      whole-machine figure; the comparison is fair because every target gets the same wrk."
