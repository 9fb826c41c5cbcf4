# Shared helpers of the benchmark scripts: free ports, medians, and a
# throwaway Postfix instance for side-by-side runs. Source it after setting
# WORK (a scratch folder) and POSTFIX_CONF="".

# A TCP port nobody listens on right now (bound then released).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The median of the numbers on stdin.
median() {
  sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# A throwaway Postfix: its own config and queue directories under $WORK,
# smtpd on an unprivileged loopback port, everything relayed to smtp-sink
# (mode `relay`), or every message put on hold right after it is queued
# (mode `hold`: reception alone, as the Tern cases here never deliver).
# With RELAY_TO_PORT set, relays to that port instead of starting smtp-sink.
# Needs root (Postfix drops to the `postfix` user itself).
setup_postfix() {
  local mode="$1"
  local pf="$WORK/postfix-$mode"
  mkdir -p "$pf/conf" "$pf/queue" "$pf/data"
  chown postfix "$pf/data"
  POSTFIX_PORT=$(free_port)
  if [ -z "${RELAY_TO_PORT:-}" ]; then
    SINK_PORT=$(free_port)
    # -u: smtp-sink refuses to keep root privileges; -c: count sessions.
    smtp-sink -u postfix -c "127.0.0.1:$SINK_PORT" 1024 > "$pf/sink.log" 2>&1 &
    PF_SINK_PID=$!
  else
    # The caller runs the sink (e.g. `tern bench sink`) on this port.
    SINK_PORT=$RELAY_TO_PORT
    PF_SINK_PID=""
  fi
  sed "s/^smtp      inet.*/127.0.0.1:$POSTFIX_PORT inet n - n - - smtpd/" \
    /etc/postfix/master.cf > "$pf/conf/master.cf"
  cat > "$pf/conf/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
maillog_file = $pf/maillog
maillog_file_prefixes = $pf
myhostname = bench.postfix.test
mydestination =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:$SINK_PORT
smtp_tls_security_level = none
smtpd_tls_security_level = none
# Enough smtpd processes for every generator connection, no per-client
# caps, no reverse lookups of the loopback client.
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_peername_lookup = no
# Measure reception capacity: do not slow smtpd down when arrivals
# outpace deliveries (Postfix's default is a 1 s pause per message).
in_flow_delay = 0s
biff = no
CF
  if [ "$mode" = hold ]; then
    echo "smtpd_data_restrictions = check_client_access static:HOLD" >> "$pf/conf/main.cf"
  fi
  POSTFIX_CONF="$pf/conf"
  postfix -c "$POSTFIX_CONF" start >/dev/null 2>&1 || {
    echo "Postfix did not start; its log says:" >&2
    cat "$pf/maillog" >&2 || true
    return 1
  }
  for _ in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $POSTFIX_PORT), 1)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "Postfix did not open 127.0.0.1:$POSTFIX_PORT" >&2
  return 1
}

# Wait until Postfix has relayed everything, so runs start alike.
wait_postfix_queue_empty() {
  for _ in $(seq 1 600); do
    # Held messages never leave; wait for the rest only.
    postqueue -c "$POSTFIX_CONF" -j 2>/dev/null | python3 -c '
import json, sys
sys.exit(any(json.loads(l)["queue_name"] != "hold" for l in sys.stdin if l.strip()))' && return 0
    sleep 0.5
  done
  echo "warning: the Postfix queue did not drain within 5 minutes" >&2
}


# CPU seconds per 1,000 messages and the largest peak RSS over every
# process of the running Postfix instance: the master's own time, its
# reaped children's, and the children still running.
# Usage: postfix_resources MASTER_PID_FILE MESSAGES
postfix_resources() {
  python3 - "$1" "$2" <<'PY'
import os, sys
master = open(sys.argv[1]).read().strip()
messages = int(sys.argv[2])
tck = os.sysconf("SC_CLK_TCK")
def times(pid, reaped):
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if reaped else 0)
cpu = times(master, True)
peak = 0
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        stat = open(f"/proc/{pid}/stat").read().split(")")[1].split()
        if stat[1] != master and pid != master:
            continue
        if pid != master:
            cpu += times(pid, False)
        peak = max(peak, next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM")))
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        pass
print(f"{cpu / tck * 1000 / messages:.3f} CPU s/1000 msg (all Postfix processes), largest process peak RSS {peak / 1024:.1f} MiB")
PY
}
