# Helpers shared by the bench/ scripts; sourced (`source "$ROOT/bench/lib.sh"`), not run.
# They expect WORK (the script's temp dir) and PIDS (processes to stop on exit) to be set
# before `trap cleanup EXIT`, MC_PORT for mc_stat; KEEP=1 keeps WORK for a look afterwards.

# Stops what the script started, then removes WORK unless KEEP=1.
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}

# free_ports N: N loopback ports that were free a moment ago, all different.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
}

# wait_port PORT: waits up to 10 s for something to listen on 127.0.0.1:PORT.
wait_port() {
    local i
    for i in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listens on 127.0.0.1:$1; logs in $WORK" >&2
    KEEP=1
    exit 1
}

# mc_stat NAME: memcached's (on MC_PORT) counter NAME.
mc_stat() {
    python3 - "$MC_PORT" "$1" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"stats\r\n")
data = b""
while not data.endswith(b"END\r\n"):
    data += s.recv(65536)
for line in data.decode().splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1] == sys.argv[2]:
        print(parts[2])
PY
}

# cpu_seconds PID...: CPU seconds (user + system) used so far by these processes.
cpu_seconds() {
    python3 - "$@" <<'PY'
import os, sys
ticks = os.sysconf("SC_CLK_TCK")
total = 0
for pid in sys.argv[1:]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    except OSError:
        pass
print(f"{total / ticks:.2f}")
PY
}

# Idle, stolen (by the hypervisor) and total jiffies of the whole machine so far
# (/proc/stat): whether a run left CPU unused, or did not get all of it.
machine_jiffies() {
    awk '/^cpu /{t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, $9, t}' /proc/stat
}

# rss_kib PID: resident memory of PID in KiB.
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
