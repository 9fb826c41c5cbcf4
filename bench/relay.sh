#!/usr/bin/env bash
# Relay throughput (issues 9 and 6): SMTP in over N connections, through the
# MTA, SMTP out to a sink on loopback, with a durable spool. The clock runs
# from the first injected message until the sink has accepted the last one.
#
# Cases, each run RUNS times (median reported):
#   Tern, RocksDB spool synced before every 250, logging on
#   Tern, same, logging off               (the cost of logging, issue 6)
#   Tern, HTTP injection in (100 recipients per request) instead of SMTP
#   Postfix relaying to the same sink     (the reference, issue 9)
# For each it prints CPU seconds per 1,000 messages and peak RSS (for
# Postfix: every process, through the master's own and reaped children's
# times, and the largest RSS seen). It draws docs/relay.png (or $PLOT): messages per second
# at the sink over time, one line per case (first run of each).
#
# Usage: bash bench/relay.sh [messages] [connections] [runs]
#        defaults: 100000 50 3.  SKIP_POSTFIX=1 measures Tern only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
MESSAGES="${1:-100000}"
CONNECTIONS="${2:-50}"
RUNS="${3:-3}"
cargo build --release -p tern >/dev/null 2>&1 || cargo build --release -p tern
TERN="${CARGO_TARGET_DIR:-./target}/release/tern"
WORK=$(mktemp -d)
chmod 755 "$WORK"
POSTFIX_CONF=""
cleanup() {
  if [ -n "$POSTFIX_CONF" ]; then postfix -c "$POSTFIX_CONF" stop >/dev/null 2>&1 || true; fi
  kill $(jobs -p) 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# shellcheck source=bench/lib.sh
source bench/lib.sh

# Start `tern bench sink` that exits after $MESSAGES messages; sets
# SINK_PID and SINK_AT (its port).
start_sink() {
  local dir="$1" port
  port=$(free_port)
  "$TERN" bench sink --listen "127.0.0.1:$port" --no-starttls --exit-after "$MESSAGES" \
    --stats-json "$dir/sink.json" > "$dir/sink.log" 2>&1 &
  SINK_PID=$!
  for _ in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
    sleep 0.05
  done
  SINK_AT=$port
}

# Inject into 127.0.0.1:$1 and wait for the sink to finish; prints msg/s.
relay_once() {
  local port="$1" dir="$2" started finished
  started=$(date +%s.%N)
  if [ "${RELAY_HTTP:-0}" = 1 ]; then
    "$TERN" bench send --http --batch-size 100 --quiet --json -c 8 -n "$MESSAGES" -s 3k \
      "127.0.0.1:$port" > "$dir/send.json"
  else
    "$TERN" bench send --quiet --json -c "$CONNECTIONS" -n "$MESSAGES" -s 3k "127.0.0.1:$port" \
      > "$dir/send.json"
  fi
  # Up to 10 minutes for the queue to drain.
  for _ in $(seq 1 12000); do
    kill -0 "$SINK_PID" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$SINK_PID" 2>/dev/null; then
    echo "warning: the sink did not get all $MESSAGES messages in time" >&2
    kill "$SINK_PID"
  fi
  finished=$(date +%s.%N)
  awk -v n="$MESSAGES" -v a="$started" -v b="$finished" 'BEGIN { printf "%.0f", n / (b - a) }'
}

declare -A RATE

run_tern_case() {
  local label="$1" logging="$2" ingress="${3:-smtp}" rates=() run resources=""
  for run in $(seq 1 "$RUNS"); do
    local dir="$WORK/tern-$logging-$ingress-$run"
    mkdir -p "$dir"
    start_sink "$dir"
    local sink_port=$SINK_AT
    local logs=""
    [ "$logging" = on ] && logs="kumo.configure_local_logs { log_dir = '$dir/logs' }"
    cat > "$dir/init.lua" <<LUA
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '$dir/spool/data', kind = 'RocksDB', min_free_space = '1%' }
  kumo.define_spool { name = 'meta', path = '$dir/spool/meta', kind = 'RocksDB', min_free_space = '1%' }
  $logs
  kumo.start_esmtp_listener { listen = '127.0.0.1:0', relay_hosts = { '127.0.0.1' },
    max_messages_per_connection = 1000000 }
  kumo.start_http_listener { listen = '127.0.0.1:0', request_body_limit = 64 * 1024 * 1024 }
end)
kumo.on('get_queue_config', function()
  return kumo.make_queue_config { protocol = { smtp = { mx_list = { '[127.0.0.1]:$sink_port' } } } }
end)
kumo.on('get_egress_path_config', function()
  -- Loopback is prohibited by default; the ready queue holds the whole run.
  return kumo.make_egress_path { prohibited_hosts = {}, enable_tls = 'Disabled', max_ready = 1000000 }
end)
LUA
    : > "$dir/out.log"
    KUMO_NODE_ID_PATH="$dir/.nodeid" NO_COLOR=1 "$TERN" serve --policy "$dir/init.lua" --user "$(id -un)" \
      > "$dir/out.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 200); do grep -q "initialization complete" "$dir/out.log" && break; sleep 0.05; done
    local port
    if [ "$ingress" = http ]; then
      port=$(grep -o "http listener on [0-9.:]*" "$dir/out.log" | sed 's/.*://')
      rates+=("$(RELAY_HTTP=1 relay_once "$port" "$dir")")
    else
      port=$(grep -o "smtp listener on [0-9.:]*" "$dir/out.log" | sed 's/.*://')
      rates+=("$(relay_once "$port" "$dir")")
    fi
    [ "$run" = 1 ] && cp "$dir/sink.json" "$WORK/plot-$(echo "$label" | tr -c 'A-Za-z0-9' _).json"
    resources=$(python3 - "$pid" "$MESSAGES" <<'PY'
import os, sys
pid, messages = sys.argv[1], int(sys.argv[2])
stat = open(f"/proc/{pid}/stat").read().split(")")[1].split()
cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM"))
print(f"{cpu * 1000 / messages:.3f} CPU s/1000 msg, peak RSS {rss / 1024:.1f} MiB")
PY
)
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir/spool"
  done
  RATE[$label]=$(printf '%s\n' "${rates[@]}" | median)
  printf '%-26s %8.0f msg/s  (runs: %s)  last run: %s\n' "$label" "${RATE[$label]}" "${rates[*]}" "$resources"
}

run_postfix_case() {
  local label="$1" rates=() run resources=""
  if ! command -v postfix >/dev/null || [ "$(id -u)" -ne 0 ]; then
    echo "Postfix: needs the postfix package and root, skipped"
    return
  fi
  for run in $(seq 1 "$RUNS"); do
    local dir="$WORK/postfix-run-$run"
    mkdir -p "$dir"
    start_sink "$dir"
    RELAY_TO_PORT=$SINK_AT
    setup_postfix "relay-$run" || { echo "Postfix: could not start, skipped"; return; }
    rates+=("$(relay_once "$POSTFIX_PORT" "$dir")")
    [ "$run" = 1 ] && cp "$dir/sink.json" "$WORK/plot-$(echo "$label" | tr -c 'A-Za-z0-9' _).json"
    resources=$(postfix_resources "$WORK/postfix-relay-$run/queue/pid/master.pid" "$MESSAGES")
    postfix -c "$POSTFIX_CONF" stop >/dev/null 2>&1 || true
    POSTFIX_CONF=""
  done
  unset RELAY_TO_PORT
  RATE[$label]=$(printf '%s\n' "${rates[@]}" | median)
  printf '%-26s %8.0f msg/s  (runs: %s)  last run: %s\n' "$label" "${RATE[$label]}" "${rates[*]}" "$resources"
}

echo "Relay: $MESSAGES messages of 3 KB over $CONNECTIONS connections in, SMTP out to a sink; median of $RUNS runs"
run_tern_case "Tern (RocksDB, logs on)" on
run_tern_case "Tern (RocksDB, logs off)" off
run_tern_case "Tern (HTTP in, logs on)" on http
awk -v on="${RATE["Tern (RocksDB, logs on)"]}" -v off="${RATE["Tern (RocksDB, logs off)"]}" \
  'BEGIN { printf "logging costs %.1f%% of relay throughput\n", (1 - on / off) * 100 }'
awk -v h="${RATE["Tern (HTTP in, logs on)"]}" -v s="${RATE["Tern (RocksDB, logs on)"]}" \
  'BEGIN { printf "HTTP in / SMTP in: %.2fx\n", h / s }'
if [ "${SKIP_POSTFIX:-0}" != 1 ]; then
  run_postfix_case "Postfix (relay)"
  pf="${RATE["Postfix (relay)"]:-0}"
  if [ "$pf" != 0 ]; then
    awk -v t="${RATE["Tern (RocksDB, logs on)"]}" -v p="$pf" \
      'BEGIN { printf "Tern / Postfix: %.2fx\n", t / p }'
  fi
fi

# Throughput over time at the sink, first run of each case.
python3 -m pip install --quiet matplotlib >/dev/null 2>&1 || true
python3 - "$WORK" "${PLOT:-docs/relay.png}" <<'PY' || echo "no plot (matplotlib is not available)"
import glob, json, os, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
work, out = sys.argv[1], sys.argv[2]
fig, ax = plt.subplots(figsize=(8, 4.5))
for path in sorted(glob.glob(os.path.join(work, "plot-*.json"))):
    stats = json.load(open(path))
    series = stats["per_second"]
    # Skip the idle seconds before the first message reached the sink.
    first = next((i for i, v in enumerate(series) if v), 0)
    series = series[first:]
    label = os.path.basename(path)[5:-5].replace("_", " ").strip()
    ax.plot(range(len(series)), series, label=label, marker=".")
ax.set_xlabel("seconds since the first delivery")
ax.set_ylabel("messages per second at the sink")
ax.set_title("Relay: SMTP/HTTP in, SMTP out to a sink (3 KB, durable spool)")
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(out, dpi=100)
print(f"plot written to {out}")
PY
