#!/usr/bin/env bash
# Benchmark: time from `rhone deploy` to `preview_ready` for the example app, split into the
# build (the `building` stage: clone done → build, pack, store, read back) and everything
# else (API, workflow, clone, validation, runner start, readiness, route write), against a
# peer measured in the same run: the app's own build command run by hand (`python3 build.py`).
#
# Usage: bench/deploy.sh [RUNS]   (default 5). Starts its own `rhone dev` on free ports in a
# temporary directory and stops it afterwards. Prints one line per run and a summary.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$RHONE_ROOT"
runs=${1:-5}

cargo build -q -p rhone-cli
rhone="$CARGO_TARGET_DIR/debug/rhone"
work=$(mktemp -d "${TMPDIR:-/tmp}/rhone-bench.XXXXXX")
export RHONE_CONFIG="$work/credentials.json"
dev_pid=
cleanup() {
    [ -z "$dev_pid" ] || { kill -INT "$dev_pid" 2>/dev/null; wait "$dev_pid" 2>/dev/null || true; }
    rm -rf "$work"
}
trap cleanup EXIT

ports=()
for _ in 1 2 3 4 5; do ports+=("$(rhone_free_port)"); done
"$rhone" dev --data-dir "$work/data" --api-port "${ports[0]}" --edge-port "${ports[1]}" \
    --runner-port "${ports[2]}" --temporal-port "${ports[3]}" --temporal-ui-port "${ports[4]}" \
    >"$work/dev.log" 2>&1 &
dev_pid=$!
until grep -q "Press Ctrl-C" "$work/dev.log"; do
    kill -0 "$dev_pid" 2>/dev/null || { cat "$work/dev.log"; exit 1; }
    sleep 0.1
done

cp -r examples/counter "$work/repo"
git -C "$work/repo" init -q
git -C "$work/repo" add -A
git -C "$work/repo" -c user.email=bench@rhone.local -c user.name=bench commit -qm bench
"$rhone" workspaces create bench >/dev/null
"$rhone" projects create -w bench app >/dev/null
"$rhone" apps create -w bench -p app counter >/dev/null
"$rhone" envs create -w bench -p app -a counter preview --kind preview >/dev/null

# The peer: the same build command, by hand, in a clean copy.
peer_ms=()
for i in $(seq "$runs"); do
    rm -rf "$work/peer"; cp -r "$work/repo" "$work/peer"
    start=$(rhone_now_ms)
    (cd "$work/peer" && python3 build.py >/dev/null)
    peer_ms+=($(( $(rhone_now_ms) - start )))
done

: >"$work/ops.json"
for i in $(seq "$runs"); do
    start=$(rhone_now_ms)
    "$rhone" deploy "$work/repo" -w bench -p app -a counter --env preview >/dev/null
    wall=$(( $(rhone_now_ms) - start ))
    id=$("$rhone" --json ops list -w bench --kind deploy --limit 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
    "$rhone" --json ops show "$id" | python3 -c "import json,sys; o=json.load(sys.stdin); o['wall_ms']=$wall; print(json.dumps(o))" >>"$work/ops.json"
done

python3 - "$work/ops.json" "${peer_ms[@]}" <<'PY'
import json, sys, statistics
from datetime import datetime
def t(s): return datetime.fromisoformat(s[:26] + s[-6:] if len(s) > 32 else s)
ops = [json.loads(l) for l in open(sys.argv[1])]
peer = [int(x) for x in sys.argv[2:]]
rows = []
for n, o in enumerate(ops, 1):
    st = {s["stage"]: t(s["enteredAt"]) for s in o["stages"]}
    ms = lambda a, b: (st[b] - st[a]).total_seconds() * 1000
    build = ms("building", "validating")
    total = ms("queued", "preview_ready")
    rows.append((o["wall_ms"], total, build, total - build))
    print(f"run {n}: rhone deploy → preview_ready {o['wall_ms']:6.0f} ms wall | server side {total:6.0f} ms = build {build:5.0f} ms + everything else {total - build:5.0f} ms")
med = lambda i: statistics.median(r[i] for r in rows)
pm = statistics.median(peer)
print(f"median of {len(rows)}: wall {med(0):.0f} ms, server side {med(1):.0f} ms, build stage {med(2):.0f} ms, everything else {med(3):.0f} ms")
print(f"peer (python3 build.py by hand): median {pm:.0f} ms; build stage / peer = {med(2) / pm:.2f}; wall / peer = {med(0) / pm:.2f}")
PY
