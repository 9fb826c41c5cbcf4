#!/usr/bin/env bash
# Build Tern and run it on the bundled example policy: SMTP on
# 127.0.0.1:2525, HTTP on 127.0.0.1:8000, spool and logs under ./local/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p local
cargo build --release -p tern
exec "${CARGO_TARGET_DIR:-target}/release/tern" serve --policy examples/policy/init.lua --user "$(id -un)" "$@"
