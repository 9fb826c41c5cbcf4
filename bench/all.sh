#!/usr/bin/env bash
# The whole benchmark suite in one go (issue 8), Tern and Postfix side by
# side where it applies:
#   (a) SMTP reception into the null queue   } bench/reception.sh
#   (b) durable reception (RocksDB, LocalDisk) }
#   (c) relay SMTP -> Tern -> sink            } bench/relay.sh
#   (d) HTTP injection -> Tern -> sink        }  (also draws docs/relay.png)
# Each prints messages/s, CPU seconds per 1,000 messages, peak RSS and the
# Tern / Postfix ratio. Needs root for the private Postfix instances.
#
# Usage: bash bench/all.sh [reception_messages] [relay_messages] [runs]
#        defaults: 20000 100000 3
set -euo pipefail
cd "$(dirname "$0")/.."
RECEPTION="${1:-20000}"
RELAY="${2:-100000}"
RUNS="${3:-3}"
echo "== Reception (null, RocksDB, LocalDisk; Postfix relay and hold) =="
bash bench/reception.sh "$RECEPTION" 50 "$RUNS"
echo
echo "== Relay (SMTP in and HTTP in; Postfix relay) =="
bash bench/relay.sh "$RELAY" 50 "$RUNS"
