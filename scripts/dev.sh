#!/usr/bin/env bash
# Starts the whole platform locally with `rhone dev`, installing what is missing first.
# Arguments go to `rhone dev` (`scripts/dev.sh --help`).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$RHONE_ROOT"

bash scripts/install-deps.sh
exec cargo run -p rhone-cli --bin rhone -- dev "$@"
