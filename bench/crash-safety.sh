#!/usr/bin/env bash
# Full-size crash-safety check: 20,000 messages over 50 connections, the
# server is killed with SIGKILL at a random moment, restarted, and every
# message that got a 250 must be in the spool with its bytes intact. Runs
# for both spool kinds. Usage: bash bench/crash-safety.sh [messages] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TERN_CRASH_MESSAGES="${1:-20000}"
export TERN_CRASH_CONNECTIONS="${2:-50}"
cargo test --release -p tern --test crash_safety -- --nocapture
