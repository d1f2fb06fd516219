# Sourced by the other scripts: repository root, build cache, PATH for installed tools, timing.
# shellcheck shell=bash

RHONE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# A fresh clone (as in CI) reuses the machine's build cache instead of starting cold.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rhone/target}"

# Tools installed by cargo and pip may sit in directories a CI shell has not put on PATH.
rhone_path_append() {
    case ":$PATH:" in
        *":$1:"*) ;;
        *) [ -d "$1" ] && PATH="$PATH:$1" ;;
    esac
    return 0
}
rhone_path_append "$HOME/.cargo/bin"
if command -v python3 >/dev/null 2>&1; then
    for scheme in "" posix_user; do
        dir=$(python3 -c "import sys, sysconfig; print(sysconfig.get_path('scripts', *sys.argv[1:]))" $scheme 2>/dev/null) &&
            rhone_path_append "$dir"
    done
    unset scheme dir
fi
export PATH

# Milliseconds since the epoch, and a duration in seconds with one decimal.
rhone_now_ms() { echo $(($(date +%s%N) / 1000000)); }
rhone_since() {
    local ms=$(($(rhone_now_ms) - $1))
    echo "$((ms / 1000)).$(((ms % 1000) / 100))s"
}

# A TCP port on 127.0.0.1 that was free a moment ago.
rhone_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
