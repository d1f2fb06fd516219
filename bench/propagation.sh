#!/usr/bin/env bash
# Benchmark: route-change propagation, from a CAS commit to every edge serving the new epoch
# (edge/examples/propagation.rs).
#
#   cargo run --release -p rhone-edge --example propagation -- [EDGES] [CHANGES]
#
# Seeds a SQLite control DB in a temporary directory with one route key and two deployments
# (one ready allocation each), starts EDGES edges in one process (`rhone_edge::serve`,
# default settings: poll interval 20 ms; edge i starts i/EDGES of an interval after the
# first, so their poll ticks are spread evenly as independent edges' would be), then moves
# the key CHANGES times between the two deployments with `routes::write_owner` (CAS on the
# epoch), 50 ms apart plus a jitter of up to one poll interval. For each change it samples
# every 1 ms, from the moment write_owner returns: (a) until every edge's
# `GET /_rhone/status` shows `applied_seq` >= the change's seq (the edge serves the new
# epoch), and (b) until every edge's `edge_acks.acked_seq` has it (what a promotion waits
# for). Prints p50/p90/p99/max of both, and peers from the same run: write_owner itself, one
# poll's SELECT of route_changes after a seq, the sampling period achieved, the poll
# interval, and (a)'s p50 over the poll interval. Runs again on PostgreSQL when
# RHONE_TEST_POSTGRES_URL is set (database `rhone_bench_propagation` is created there).
#
# Usage: bench/propagation.sh [EDGES] [CHANGES]   (defaults 3 and 100)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$RHONE_ROOT"
edges=${1:-3}
changes=${2:-100}

cargo build --release -q -p rhone-edge --example propagation
"$CARGO_TARGET_DIR/release/examples/propagation" "$edges" "$changes"
