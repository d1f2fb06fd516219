#!/usr/bin/env bash
# Runs the whole test suite against real servers; this is what CI runs (.ci/run).
#
# Installs what is missing, builds the tests, starts ONE Temporal dev server (in memory),
# ONE PostgreSQL, ONE S3 API server (s3s-fs) and ONE OCI registry (docker-registry), each
# on a free port with its data in a temporary directory, for the whole run, exports their
# addresses for rhone-testkit, runs `cargo nextest run --workspace --no-fail-fast`, and
# stops all servers on exit, whatever happens. Extra arguments go to nextest
# (`scripts/test.sh -p rhone-core`, `scripts/test.sh -E 'test(deploy)'`). Without
# arguments, every fuzz target then runs for 15 s (`scripts/fuzz.sh`, RHONE_FUZZ_SECONDS).
# Exit code: the test run's, or the fuzz run's when every test passed.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$RHONE_ROOT"

run_start=$(rhone_now_ms)
work=$(mktemp -d "${TMPDIR:-/tmp}/rhone-test.XXXXXX")
temporal_pid=
pg_data=
s3_pid=
registry_pid=
# Test-only credentials of the s3s-fs started here.
s3_access_key=rhone-test
s3_secret_key=rhone-test-secret
pg_user=()
if [ "$(id -u)" -eq 0 ]; then pg_user=(runuser -u postgres --); fi

cleanup() {
    local code=$?
    trap - EXIT INT TERM
    if [ -n "$temporal_pid" ]; then
        kill -INT "$temporal_pid" 2>/dev/null || true
        wait "$temporal_pid" 2>/dev/null || true
    fi
    # SIGTERM, not SIGINT: background jobs of a script start with SIGINT ignored, and
    # docker-registry installs no handler of its own for it.
    for pid in "$s3_pid" "$registry_pid"; do
        if [ -n "$pid" ]; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [ -n "$pg_data" ] && [ -f "$pg_data/postmaster.pid" ]; then
        "${pg_user[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    echo "test.sh: servers stopped; total $(rhone_since "$run_start")"
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints the end of a server log and fails.
fail_with_log() {
    echo "test.sh: $1; the end of $2:" >&2
    tail -n 40 "$2" >&2 || true
    exit 1
}

# The status code of `GET $2` on 127.0.0.1:$1, or nothing when nothing answers; bash's
# /dev/tcp, so the probe needs no HTTP client.
http_status() {
    local line=
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 0
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$2" "$1" >&3
    IFS= read -r -t 5 line <&3 || true
    exec 3<&- 3>&-
    line=${line#HTTP/1.? }
    echo "${line%% *}"
}

# Starts "$@" (after the first four arguments) in the background as server $1, logging to
# $work/$1.log, and waits until `http_status $2 $3` prints a status matching the pattern
# $4. Sets server_pid; fails (status 1) when the server exits first, e.g. because another
# process took its port.
start_http_server() {
    local name=$1 port=$2 path=$3 ready=$4 log="$work/$1.log" deadline status
    shift 4
    "$@" </dev/null >"$log" 2>&1 &
    server_pid=$!
    deadline=$(($(rhone_now_ms) + 60000))
    while :; do
        status=$(http_status "$port" "$path")
        # shellcheck disable=SC2254 # $ready is a pattern
        case "$status" in $ready) return 0 ;; esac
        if ! kill -0 "$server_pid" 2>/dev/null; then
            wait "$server_pid" 2>/dev/null || true
            server_pid=
            return 1
        fi
        [ "$(rhone_now_ms)" -lt "$deadline" ] || fail_with_log "$name did not answer in 60s" "$log"
        sleep 0.1
    done
}

# The whole workspace, unless the arguments pick packages themselves.
scope=(--workspace)
for arg in "$@"; do
    case "$arg" in -p | -p* | --package | --package=*) scope=() ;; esac
done

phase=$(rhone_now_ms)
bash scripts/install-deps.sh
echo "test.sh: install-deps took $(rhone_since "$phase")"

# Build first: a build error needs no servers, and servers need not idle through a build.
phase=$(rhone_now_ms)
echo "test.sh: building tests (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
build_code=0
cargo nextest run "${scope[@]}" --no-run "$@" || build_code=$?
echo "test.sh: build took $(rhone_since "$phase")"
[ "$build_code" -eq 0 ] || exit "$build_code"

phase=$(rhone_now_ms)

# Temporal: retried on a new port when another process took the one we picked.
start_temporal() {
    local port ui_port log="$work/temporal.log" deadline
    port=$(rhone_free_port)
    ui_port=$(rhone_free_port)
    temporal server start-dev --ip 127.0.0.1 --port "$port" --ui-port "$ui_port" --headless \
        </dev/null >"$log" 2>&1 &
    temporal_pid=$!
    deadline=$(($(rhone_now_ms) + 60000))
    until temporal operator namespace describe --namespace default --address "127.0.0.1:$port" \
        >/dev/null 2>&1; do
        if ! kill -0 "$temporal_pid" 2>/dev/null; then
            wait "$temporal_pid" 2>/dev/null || true
            temporal_pid=
            return 1
        fi
        [ "$(rhone_now_ms)" -lt "$deadline" ] || fail_with_log "Temporal did not answer in 60s" "$log"
        sleep 0.1
    done
    export RHONE_TEST_TEMPORAL_ADDRESS="127.0.0.1:$port"
}
for attempt in 1 2 3; do
    start_temporal && break
    [ "$attempt" -lt 3 ] || fail_with_log "Temporal exited at start" "$work/temporal.log"
done

# PostgreSQL refuses to run as root: as root it runs as the postgres user, in a directory
# that user owns. pg_ctl -w waits until the server accepts connections.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
mkdir "$work/pg"
chmod 711 "$work" # mktemp's 0700 would keep the postgres user out
[ "${#pg_user[@]}" -eq 0 ] || chown postgres: "$work/pg"
"${pg_user[@]}" "$pg_bin/initdb" -D "$work/pg/data" -A trust -U rhone -E UTF8 --locale=C \
    --no-sync >"$work/initdb.log" 2>&1 || fail_with_log "initdb failed" "$work/initdb.log"
pg_data="$work/pg/data"
for attempt in 1 2 3; do
    pg_port=$(rhone_free_port)
    if (cd "$work/pg" && "${pg_user[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -l "$work/pg/server.log" \
        -w -t 60 -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null); then
        break
    fi
    [ "$attempt" -lt 3 ] || fail_with_log "PostgreSQL did not start" "$work/pg/server.log"
done
export RHONE_TEST_POSTGRES_URL="postgres://rhone@127.0.0.1:$pg_port/postgres"

# S3 API server: any HTTP answer means it is up (unsigned requests get 403).
mkdir "$work/s3"
for attempt in 1 2 3; do
    s3_port=$(rhone_free_port)
    if start_http_server s3s-fs "$s3_port" / '[1-5][0-9][0-9]' \
        s3s-fs --host 127.0.0.1 --port "$s3_port" --access-key "$s3_access_key" \
        --secret-key "$s3_secret_key" "$work/s3"; then
        s3_pid=$server_pid
        break
    fi
    [ "$attempt" -lt 3 ] || fail_with_log "s3s-fs exited at start" "$work/s3s-fs.log"
done
export RHONE_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
export RHONE_TEST_S3_ACCESS_KEY="$s3_access_key" RHONE_TEST_S3_SECRET_KEY="$s3_secret_key"

# OCI registry: loopback only, no auth, storage in $work (the packaged config listens on
# every interface and asks for htpasswd).
mkdir "$work/registry"
for attempt in 1 2 3; do
    registry_port=$(rhone_free_port)
    printf '%s\n' "version: 0.1" "log:" "  level: warn" "storage:" "  filesystem:" \
        "    rootdirectory: $work/registry/data" "  delete:" "    enabled: true" "http:" \
        "  addr: 127.0.0.1:$registry_port" >"$work/registry/config.yml"
    if start_http_server docker-registry "$registry_port" /v2/ 200 \
        docker-registry serve "$work/registry/config.yml"; then
        registry_pid=$server_pid
        break
    fi
    [ "$attempt" -lt 3 ] || fail_with_log "docker-registry exited at start" "$work/docker-registry.log"
done
export RHONE_TEST_REGISTRY="127.0.0.1:$registry_port"

echo "test.sh: servers ready in $(rhone_since "$phase"):" \
    "RHONE_TEST_TEMPORAL_ADDRESS=$RHONE_TEST_TEMPORAL_ADDRESS" \
    "RHONE_TEST_POSTGRES_URL=$RHONE_TEST_POSTGRES_URL" \
    "RHONE_TEST_S3_ENDPOINT=$RHONE_TEST_S3_ENDPOINT" \
    "RHONE_TEST_REGISTRY=$RHONE_TEST_REGISTRY"

phase=$(rhone_now_ms)
test_code=0
cargo nextest run "${scope[@]}" --no-fail-fast "$@" || test_code=$?
echo "test.sh: tests took $(rhone_since "$phase") (exit code $test_code)"

# A bounded fuzz run of every target (scripts/fuzz.sh), for the whole suite only: a crash
# fails the run like a failed test. RHONE_FUZZ_SECONDS per target, 0 to leave it out.
fuzz_seconds=${RHONE_FUZZ_SECONDS:-15}
if [ "$#" -eq 0 ] && [ "$fuzz_seconds" != 0 ]; then
    phase=$(rhone_now_ms)
    fuzz_code=0
    bash scripts/fuzz.sh "$fuzz_seconds" || fuzz_code=$?
    echo "test.sh: fuzzing took $(rhone_since "$phase") (exit code $fuzz_code)"
    [ "$test_code" -ne 0 ] || test_code=$fuzz_code
fi
exit "$test_code"
