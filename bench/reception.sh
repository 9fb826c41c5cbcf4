#!/usr/bin/env bash
# Reception throughput: messages accepted per second over N connections
# with 3 KB messages, into the `null` queue and into each durable spool
# kind (held: due an hour later, so the case is reception alone), and into
# RocksDB with each message tried at once, with Tern's CPU seconds per
# 1,000 messages and peak RSS; then the same generator against a throwaway
# Postfix instance (relaying to smtp-sink on loopback, and holding every
# message) for comparison. Each case is run RUNS times and the median rate
# is reported.
#
# Usage: bash bench/reception.sh [messages] [connections] [runs]
# Environment: CARGO_TARGET_DIR (where the release build goes),
#              SKIP_POSTFIX=1 to measure Tern only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
MESSAGES="${1:-20000}"
CONNECTIONS="${2:-50}"
RUNS="${3:-3}"
cargo build --release -p tern >/dev/null 2>&1 || cargo build --release -p tern
TERN="${CARGO_TARGET_DIR:-./target}/release/tern"
WORK=$(mktemp -d)
# Postfix runs as its own user and must be able to reach its queue.
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

# Run the generator once against 127.0.0.1:$1; print messages/s.
send_once() {
  local port="$1" out="$2"
  "$TERN" bench send --quiet --json -c "$CONNECTIONS" -n "$MESSAGES" -s 3k "127.0.0.1:$port" > "$out"
  python3 - "$out" "$MESSAGES" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
if summary["accepted"] == 0:
    sys.exit("no message was accepted: " + json.dumps(summary))
if summary["accepted"] != summary["attempted"]:
    print(f'warning: {summary["attempted"] - summary["accepted"]} of {summary["attempted"]} '
          f'not accepted: {summary["codes"]} {summary["errors"]}', file=sys.stderr)
print(f'{summary["messages_per_sec"]:.0f}')
PY
}

declare -A RATE RUNS_OF RESOURCES

# One run of one Tern case; appends the rate to RUNS_OF[label] and, on the
# last round, records CPU and peak RSS in RESOURCES[label].
# `hold` (the fourth field of a case) makes every message due an hour
# later (msg:set_due): it is accepted, spooled and waits in its scheduled
# queue, as Postfix's `hold` case keeps its messages, so the case measures
# reception alone. Without it the queue layer tries each message at once
# (an MX lookup that fails, then a retry scheduled), which competes with
# reception for the same two cores. The null-queue case runs the same
# `set_due` (a no-op for a discarded message), so that every case runs the
# same policy code and the ratios measure the spool alone.
run_tern_once() {
  local label="$1" kind="$2" queue="$3" hold="$4" run="$5"
  local dir="$WORK/tern-$kind-$queue-$run"
  mkdir -p "$dir"
  cat > "$dir/init.lua" <<LUA
local kumo = require 'kumo'
kumo.on('init', function()
  -- A shared build machine often has less than the default 10% free;
  -- a run writes well under 100 MB, so 1% is safe and measures reception.
  kumo.define_spool { name = 'data', path = '$dir/spool/data', kind = '$kind', min_free_space = '1%' }
  kumo.define_spool { name = 'meta', path = '$dir/spool/meta', kind = '$kind', min_free_space = '1%' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:0', max_messages_per_connection = 1000000 }
end)
kumo.on('smtp_server_message_received', function(msg)
  if '$queue' ~= '' then msg:set_meta('queue', '$queue') end
  if '$hold' == 'hold' then msg:set_due(os.date('!%Y-%m-%dT%H:%M:%SZ', os.time() + 3600)) end
end)
LUA
  : > "$dir/out.log"
  KUMO_NODE_ID_PATH="$dir/.nodeid" NO_COLOR=1 "$TERN" serve --policy "$dir/init.lua" --user "$(id -un)" \
    > "$dir/out.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 200); do grep -q "initialization complete" "$dir/out.log" && break; sleep 0.05; done
  local port
  port=$(grep -o "smtp listener on [0-9.:]*" "$dir/out.log" | sed 's/.*://')
  RUNS_OF[$label]+="$(send_once "$port" "$dir/send.json") "
  # CPU and peak RSS of the last run are printed (they vary little).
  if [ "$run" = "$RUNS" ]; then
    python3 - "$pid" "$MESSAGES" > "$dir/resources" <<'PY'
import os, sys
pid, messages = sys.argv[1], int(sys.argv[2])
stat = open(f"/proc/{pid}/stat").read().split(")")[1].split()
cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM"))
print(f"{cpu * 1000 / messages:>6.3f} CPU s/1000 msg  peak RSS {rss / 1024:>6.1f} MiB")
PY
    RESOURCES[$label]=$(cat "$dir/resources")
  fi
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  # The spool stays until the script ends: deleting it here would put the
  # next case on a filesystem busy reclaiming its inodes (see
  # docs/benchmarks.md about ext4 without a journal).
}

run_postfix_case() {
  local mode="$1" label="$2" rates=() run
  if ! command -v postfix >/dev/null || ! command -v smtp-sink >/dev/null; then
    echo "Postfix: not installed (apt-get install postfix), skipped"
    return
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "Postfix: needs root to start a private instance, skipped"
    return
  fi
  setup_postfix "$mode" || { echo "Postfix: could not start, skipped"; return; }
  for run in $(seq 1 "$RUNS"); do
    wait_postfix_queue_empty
    rates+=("$(send_once "$POSTFIX_PORT" "$WORK/postfix-$mode/send-$run.json")")
  done
  RATE[$label]=$(printf '%s\n' "${rates[@]}" | median)
  if [ "$mode" = hold ]; then
    local held
    held=$(postqueue -c "$POSTFIX_CONF" -j | grep -c '"queue_name": *"hold"' || true)
    [ "$held" = $((MESSAGES * RUNS)) ] ||
      echo "warning: $held messages on hold, expected $((MESSAGES * RUNS))" >&2
  fi
  local version resources
  version=$(postconf -c "$POSTFIX_CONF" -h mail_version)
  resources=$(postfix_resources "$WORK/postfix-$mode/queue/pid/master.pid" $((MESSAGES * RUNS)))
  postfix -c "$POSTFIX_CONF" stop >/dev/null 2>&1 || true
  POSTFIX_CONF=""
  [ -n "$PF_SINK_PID" ] && kill "$PF_SINK_PID" 2>/dev/null || true
  printf '%-24s %10.0f msg/s  (runs: %s)  Postfix %s, %s; %s\n' \
    "$label" "${RATE[$label]}" "${rates[*]}" "$version" \
    "$([ "$mode" = hold ] && echo "queued then held" || echo "relaying to smtp-sink")" "$resources"
}

echo "Reception: $MESSAGES messages of 3 KB over $CONNECTIONS connections, median of $RUNS runs"
# The cases take turns, round after round, so that a noisy moment on a
# shared machine hits every case alike and the ratios stay fair.
TERN_CASES=("Tern null queue|LocalDisk|null|hold" "Tern LocalDisk|LocalDisk||hold" "Tern RocksDB|RocksDB||hold"
  "Tern RocksDB, tried now|RocksDB||")
for run in $(seq 1 "$RUNS"); do
  for case in "${TERN_CASES[@]}"; do
    IFS='|' read -r label kind queue hold <<< "$case"
    run_tern_once "$label" "$kind" "$queue" "$hold" "$run"
  done
done
for case in "${TERN_CASES[@]}"; do
  IFS='|' read -r label _ _ _ <<< "$case"
  # shellcheck disable=SC2086 # the runs are space-separated numbers
  RATE[$label]=$(printf '%s\n' ${RUNS_OF[$label]} | median)
  printf '%-24s %10.0f msg/s  (runs: %s)  %s\n' "$label" "${RATE[$label]}" "${RUNS_OF[$label]% }" "${RESOURCES[$label]}"
done
# The issue's target: durable reception within 20 % of the null-queue rate.
for label in "Tern LocalDisk" "Tern RocksDB" "Tern RocksDB, tried now"; do
  awk -v t="${RATE[$label]}" -v n="${RATE[Tern null queue]}" -v l="$label" \
    'BEGIN { printf "%-24s %6.1f%% of the null-queue rate\n", l, 100 * t / n }'
done
if [ "${SKIP_POSTFIX:-0}" != 1 ]; then
  run_postfix_case relay "Postfix relay"
  run_postfix_case hold "Postfix hold"
  for pf_label in "Postfix relay" "Postfix hold"; do
    pf="${RATE[$pf_label]:-}"
    [ -n "$pf" ] && [ "$pf" != 0 ] || continue
    for label in "Tern LocalDisk" "Tern RocksDB" "Tern RocksDB, tried now"; do
      awk -v t="${RATE[$label]}" -v p="$pf" -v l="$label" -v q="$pf_label" \
        'BEGIN { printf "%-24s %6.2fx %s\n", l, t / p, q }'
    done
  done
fi
