#!/usr/bin/env bash
# Reception throughput: messages accepted per second over N connections
# with 3 KB messages, into the `null` queue and into each durable spool
# kind, with Tern's CPU seconds per 1,000 messages and peak RSS.
# Usage: bash bench/reception.sh [messages] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
MESSAGES="${1:-20000}"
CONNECTIONS="${2:-50}"
cargo build --release -p tern >/dev/null 2>&1 || cargo build --release -p tern
TERN=./target/release/tern
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

run_case() {
  local label="$1" kind="$2" queue="$3"
  local dir="$WORK/$label"
  mkdir -p "$dir"
  cat > "$dir/init.lua" <<LUA
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '$dir/spool/data', kind = '$kind' }
  kumo.define_spool { name = 'meta', path = '$dir/spool/meta', kind = '$kind' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:0', max_messages_per_connection = 1000000 }
end)
kumo.on('smtp_server_message_received', function(msg)
  if '$queue' ~= '' then msg:set_meta('queue', '$queue') end
end)
LUA
  KUMO_NODE_ID_PATH="$dir/.nodeid" NO_COLOR=1 "$TERN" serve --policy "$dir/init.lua" --user "$(id -un)" \
    > "$dir/out.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 200); do grep -q "initialization complete" "$dir/out.log" && break; sleep 0.05; done
  local port
  port=$(grep -o "smtp listener on [0-9.:]*" "$dir/out.log" | sed 's/.*://')
  "$TERN" bench send --quiet --json -c "$CONNECTIONS" -n "$MESSAGES" -s 3k "127.0.0.1:$port" > "$dir/send.json"
  python3 - "$label" "$pid" "$dir/send.json" "$MESSAGES" <<'PY'
import json, os, sys
label, pid, path, messages = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
summary = json.load(open(path))
stat = open(f"/proc/{pid}/stat").read().split(")")[1].split()
ticks = os.sysconf("SC_CLK_TCK")
cpu = (int(stat[11]) + int(stat[12])) / ticks
rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM"))
rate = summary["messages_per_sec"]
print(f"{label:<22} {rate:>10.0f} msg/s  {cpu * 1000 / messages:>6.3f} CPU s/1000 msg  peak RSS {rss / 1024:>6.1f} MiB")
PY
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

echo "Tern reception: $MESSAGES messages of 3 KB over $CONNECTIONS connections"
run_case "null queue" LocalDisk null
run_case "LocalDisk (durable)" LocalDisk ""
run_case "RocksDB (durable)" RocksDB ""
