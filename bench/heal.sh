#!/usr/bin/env bash
# Benchmark: how long production is down when the host running it dies, against how long
# the app itself takes to start, measured in one run.
#
# The multi-host topology of cli/tests/multihost.rs: three runner hosts as network
# namespaces on a bridge, API, worker and edge as separate `rhone serve` processes on
# PostgreSQL and an S3 API server, defaults for the fleet (heartbeat 1000 ms, lost after
# 3000 ms). examples/counter is promoted to production with one instance. Then, BENCH_ROUNDS
# times (default 5): SIGKILL of the runner of the host that runs it, and of its sandboxes
# and app; the driver asks production through the edge every 5 ms until the replacement
# answers. Per round it prints:
#   heal          kill → first answer of the replacement through the edge;
#   app start     the replacement's own start-to-ready (created → ready, as the control DB
#                 recorded them): the peer, what no platform can save;
#   overhead      heal − app start: detection, the Repair, placement, routing;
#   and where the overhead goes: kill → runner declared lost, lost → Repair started,
#   Repair → replacement created, ready → routed.
# Then p50 and max of each, heal/app-start at p50 and whether the overhead meets the
# target (< 5 s at the default lost-after). Kubernetes' and Nomad's default timings are
# printed for reference, not measured.
#
# Usage: bench/heal.sh   (as root: it makes network namespaces; BENCH_ROUNDS=N)
# The debug build the tests use is measured: the time is timers and the app, not CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_ROUNDS="${BENCH_ROUNDS:-5}"
echo "bench/heal.sh: $BENCH_ROUNDS rounds; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
bash scripts/test.sh -p rhone-cli --run-ignored ignored-only -E 'binary(multihost) and test(heal_bench)' \
    --no-capture 2>&1 | grep -v '^\s*\(Compiling\|Finished\|PASS\|START\|Starting\|Nextest\)' 
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
