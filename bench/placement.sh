#!/usr/bin/env bash
# Benchmark: placing 1,000 allocations on 100 simulated runners (schema/examples/placement.rs).
#
#   cargo run --release -p rhone-schema --example placement -- [RUNNERS] [ALLOCATIONS]
#
# Seeds a control DB with RUNNERS runner rows (default 100; ready, 8 GiB, 8 cores, 64 slots
# each, in 10 cells of one region) and 100 environments, then places ALLOCATIONS
# allocations (default 1,000: 10 instances per environment, 512 MiB / 250 millicores each)
# one by one through `fleet::place_allocation`, the path promotions, Repairs and Wakes take.
# Prints p50/p99/mean per placement against the peers measured in the same run: the same
# rows written by a bare insert per write transaction (the DB's floor) and `choose` alone
# in memory; then checks the result (each environment over 10 distinct cells, no runner
# over capacity). SQLite always; PostgreSQL too when RHONE_TEST_POSTGRES_URL names a server.
#
# Usage: bench/placement.sh [RUNNERS] [ALLOCATIONS]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$RHONE_ROOT"

cargo build --release -q -p rhone-schema --example placement
"$CARGO_TARGET_DIR/release/examples/placement" "$@"
