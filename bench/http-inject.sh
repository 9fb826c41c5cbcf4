#!/usr/bin/env bash
# HTTP injection throughput: recipients accepted per second through
# POST /api/inject/v1 into a durable spool, with 100-recipient requests,
# a per-recipient substitution in every message and ~3 KB rendered
# messages (the `tern bench send --http` generator), with Tern's CPU
# seconds per 1,000 recipients and peak RSS. Each spool kind is run RUNS
# times and the median rate is reported.
#
# Usage: bash bench/http-inject.sh [recipients] [connections] [runs] [batch]
# Environment: CARGO_TARGET_DIR (where the release build goes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
RECIPIENTS="${1:-100000}"
CONNECTIONS="${2:-8}"
RUNS="${3:-3}"
BATCH="${4:-100}"
cargo build --release -p tern >/dev/null 2>&1 || cargo build --release -p tern
TERN="${CARGO_TARGET_DIR:-./target}/release/tern"
WORK=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

median() {
  sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# One generator run against 127.0.0.1:$1; prints recipients/s.
send_once() {
  local port="$1" out="$2"
  "$TERN" bench send --http --batch-size "$BATCH" --quiet --json -c "$CONNECTIONS" \
    -n "$RECIPIENTS" -s 3k "127.0.0.1:$port" > "$out"
  python3 - "$out" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
if summary["accepted"] == 0:
    sys.exit("no recipient was accepted: " + json.dumps(summary))
if summary["accepted"] != summary["attempted"]:
    print(f'warning: {summary["attempted"] - summary["accepted"]} of {summary["attempted"]} '
          f'not accepted: {summary["codes"]} {summary["errors"]}', file=sys.stderr)
print(f'{summary["messages_per_sec"]:.0f}')
PY
}

run_case() {
  local label="$1" kind="$2" hook="$3"
  local rates=() run resources=""
  for run in $(seq 1 "$RUNS"); do
    local dir="$WORK/$kind-$run"
    mkdir -p "$dir"
    cat > "$dir/init.lua" <<LUA
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '$dir/spool/data', kind = '$kind', min_free_space = '1%' }
  kumo.define_spool { name = 'meta', path = '$dir/spool/meta', kind = '$kind', min_free_space = '1%' }
  kumo.start_http_listener { listen = '127.0.0.1:0', request_body_limit = 64 * 1024 * 1024 }
end)
$hook
LUA
    KUMO_NODE_ID_PATH="$dir/.nodeid" NO_COLOR=1 "$TERN" serve --policy "$dir/init.lua" --user "$(id -un)" \
      > "$dir/out.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 200); do grep -q "initialization complete" "$dir/out.log" 2>/dev/null && break; sleep 0.05; done
    local port
    port=$(grep -o "http listener on [0-9.:]*" "$dir/out.log" | sed 's/.*://')
    rates+=("$(send_once "$port" "$dir/send.json")")
    if [ "$run" = "$RUNS" ]; then
      resources=$(python3 - "$pid" "$RECIPIENTS" <<'PY'
import os, sys
pid, n = sys.argv[1], int(sys.argv[2])
stat = open(f"/proc/{pid}/stat").read().split(")")[1].split()
cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM"))
print(f"{cpu * 1000 / n:>6.3f} CPU s/1000 rcpt  peak RSS {rss / 1024:>6.1f} MiB")
PY
)
    fi
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir/spool"
  done
  local rate
  rate=$(printf '%s\n' "${rates[@]}" | median)
  printf '%-30s %10.0f rcpt/s  (runs: %s)  %s\n' "$label" "$rate" "${rates[*]}" "$resources"
}

HOOK="kumo.on('http_message_generated', function(msg) msg:set_meta('tenant', 'bench') end)"
echo "HTTP injection: $RECIPIENTS recipients, $BATCH per request, ~3 KB each, $CONNECTIONS connections, median of $RUNS runs"
run_case "RocksDB" RocksDB ""
run_case "LocalDisk" LocalDisk ""
run_case "RocksDB + http_message_generated" RocksDB "$HOOK"
