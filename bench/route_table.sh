#!/usr/bin/env bash
# Benchmark: the edge's in-memory route table at 100,000 route keys (edge/examples/route_table.rs).
#
#   cargo run --release -p rhone-edge --example route_table -- [KEYS]
#
# Seeds a SQLite control DB in a temporary directory with KEYS route keys (each with its own
# deployment, artifact, ready allocation and change-log row), then prints: the snapshot load
# time (`RouteTable::reload`, one verified read transaction) against a plain read of the
# owner rows; the table's heap estimate and the process's RSS growth; and p50/p99/mean
# lookup time over 1,000,000 random lookups against a plain HashMap<String, Arc<Route>> and
# a BTreeMap holding the same routes, measured in the same run, with the ratio.
#
# Usage: bench/route_table.sh [KEYS]   (default 100000)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$RHONE_ROOT"
keys=${1:-100000}

cargo build --release -q -p rhone-edge --example route_table
"$CARGO_TARGET_DIR/release/examples/route_table" "$keys"
