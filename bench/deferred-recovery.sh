#!/usr/bin/env bash
# Memory per waiting message and spool recovery speed (issue #5).
#
# Fills a spool with COUNT synthetic 3 KB messages that are 30 minutes old
# (so, with the default 20-minute retry interval, each one is waiting for
# its next retry), starts `tern serve` on it, and reports:
#   * recovery time and rate (from the "spool recovery:" startup line),
#   * RSS of the server holding them minus the RSS of the same server on an
#     empty spool, divided by COUNT: bytes of memory per waiting message,
#   * peak RSS.
# Medians of RUNS recoveries of the same spool (the fill is done once).
#
#   bench/deferred-recovery.sh [COUNT] [KIND] [RUNS]     # defaults: 1000000 RocksDB 3
set -euo pipefail
COUNT=${1:-1000000}
KIND=${2:-RocksDB}
RUNS=${3:-3}
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p tern
cargo build --release -q -p tern-server --example fill_spool
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d /var/tmp/tern-deferred.XXXXXX)
trap 'pkill -f "tern serve --policy $WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT

policy() { # $1 = spool dir
  cat <<LUA
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '$1/data', kind = '$KIND' }
  kumo.define_spool { name = 'meta', path = '$1/meta', kind = '$KIND' }
end)
kumo.on('get_queue_config', function()
  -- Never reached during the measurement: every message is due later.
  return kumo.make_queue_config { protocol = { smtp = { mx_list = { '[127.0.0.1]:9' } } } }
end)
LUA
}

# Start the server, wait for recovery, print "seconds rss_kb hwm_kb".
measure() { # $1 = spool dir
  policy "$1" > "$WORK/init.lua"
  "$BIN/tern" serve --policy "$WORK/init.lua" --user root > "$WORK/serve.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 600); do
    grep -q "initialization complete" "$WORK/serve.log" && break
    sleep 0.5
  done
  sleep 2 # let allocations settle
  local secs rss hwm
  secs=$(grep "spool recovery:" "$WORK/serve.log" | grep -o "in [0-9.]*s$" | grep -o "[0-9.]*" | head -1)
  rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
  grep "spool recovery:" "$WORK/serve.log" | sed 's/.*spool recovery:/  recovery:/' >&2
  kill $pid; wait $pid 2>/dev/null || true
  echo "$secs $rss $hwm"
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "filling $KIND spool with $COUNT messages..."
"$BIN/examples/fill_spool" --dir "$WORK/full" --kind "$KIND" --count "$COUNT" --age 30m --size 3000
mkdir -p "$WORK/empty"

: > "$WORK/results"
for run in $(seq 1 "$RUNS"); do
  read -r _ base_rss _ < <(measure "$WORK/empty")
  read -r secs rss hwm < <(measure "$WORK/full")
  echo "run $run: recovery ${secs}s, rss ${rss} kB (empty ${base_rss} kB), peak ${hwm} kB"
  echo "$secs $rss $base_rss $hwm" >> "$WORK/results"
done
secs=$(awk '{print $1}' "$WORK/results" | median)
per_msg=$(awk -v n="$COUNT" '{print ($2-$3)*1024/n}' "$WORK/results" | median)
peak=$(awk '{print $4}' "$WORK/results" | median)
rate=$(awk -v n="$COUNT" -v s="$secs" 'BEGIN {printf "%.0f", n/s}')
echo
echo "messages:                 $COUNT ($KIND spool)"
echo "recovery (median):        ${secs}s = ${rate} messages/s"
echo "memory per waiting msg:   ${per_msg} bytes (median, RSS delta / count)"
echo "peak RSS (median):        ${peak} kB"
