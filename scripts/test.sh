#!/usr/bin/env bash
# Run Tern's whole test suite: installs the prerequisites, then runs every
# unit and integration test of the workspace (the integration tests start
# the real `tern serve` binary and talk to it over loopback sockets).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --no-fail-fast "$@"
