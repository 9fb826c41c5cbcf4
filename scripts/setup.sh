#!/usr/bin/env bash
# Install what Tern's build and test suite need on a fresh Debian machine:
# the system RocksDB library (the spool links to it), the independent SMTP
# and DNS peers the integration tests talk to, and the Python verifiers.
# Safe to run again: it installs only what is missing.
set -euo pipefail

need_apt=()
for pkg in librocksdb-dev libclang-dev clang swaks postfix dnsmasq-base zstd curl openssl \
           libnet-ssleay-perl libio-socket-ssl-perl redis-server; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# authres: dkimpy's ARC signing needs it (crates/tern-dkim/tests/arc.rs).
# prometheus_client: an independent parser of GET /metrics (tests/metrics.rs).
if ! python3 -c 'import dkim, nacl, dns, aiosmtpd, authres, prometheus_client' >/dev/null 2>&1; then
  python3 -m pip install --quiet dkimpy pynacl dnspython aiosmtpd authres prometheus_client
fi
