#!/usr/bin/env bash
# Instructions per request of examples/axum.rs's hit (route /) and of
# examples/axum_raw_get.rs's raw get, under callgrind: a figure that does not move with
# the machine's other load, for comparing two builds where wall-clock runs cannot.
#
#     bash bench/axum/callgrind.sh
#
# Each example runs under valgrind over its own `memcached -t 1` with one tokio worker
# thread; a Python http.client driver sends GET / on one keep-alive connection: 500 to
# warm up (the layer's first one stores the page), then the counters are zeroed and
# REQUESTS more are counted. Every answer must be a 200, and the layer's a hit
# (Cache-Status), or the script fails. The raw get reads a 1 KiB value set beforehand.
# Prints instructions per request of each (the whole process: tokio, hyper, axum, the
# layer or the raw get).
#
# Knobs: REQUESTS=3000 KEEP=1 (keep the temp dir with callgrind's files).
# Needs: valgrind, memcached, curl, python3, cargo (apt-get install -y valgrind memcached
# curl python3).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
REQUESTS=${REQUESTS:-3000}
for tool in valgrind callgrind_control memcached curl python3 cargo; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/tower-memcache-callgrind.XXXXXX)
source "$ROOT/bench/lib.sh"
PIDS=()
trap cleanup EXIT

echo "== building examples/axum.rs and examples/axum_raw_get.rs (release)"
(cd "$ROOT" && cargo build --release --quiet --example axum --example axum_raw_get)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
cp "$TARGET_DIR/release/examples/axum" "$WORK/axum"
cp "$TARGET_DIR/release/examples/axum_raw_get" "$WORK/axum_raw_get"

# measure NAME: instructions per request of $WORK/NAME.
measure() {
    local name=$1 mc_port port
    read -r mc_port port < <(free_ports 2)
    memcached -u "$(id -un)" -t 1 -p "$mc_port" -l 127.0.0.1 -U 0 &
    PIDS+=($!)
    wait_port "$mc_port"
    # The raw get's value (the layer stores its own page on its first request).
    python3 - "$mc_port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
body = b"x" * 1024
s.sendall(b"set raw 0 0 %d\r\n" % len(body) + body + b"\r\n")
assert s.recv(100) == b"STORED\r\n"
PY
    MEMCACHE_SERVERS=127.0.0.1:$mc_port LISTEN=127.0.0.1:$port TOKIO_WORKER_THREADS=1 \
        RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.out" \
        --dump-instr=no "$WORK/$name" >"$WORK/$name.log" 2>&1 &
    local vg=$!
    PIDS+=($vg)
    # Slower to start under valgrind than wait_port allows.
    local i
    for i in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    python3 - "$port" "$name" "$REQUESTS" <<'PY'
import http.client, subprocess, sys
port, name, requests = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
def run(n, hits):
    for _ in range(n):
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
        status = response.getheader("cache-status") or ""
        if hits and name == "axum":
            assert status.endswith("hit"), status
run(500, False)
subprocess.run(["callgrind_control", "-z"], check=True, capture_output=True)
run(requests, True)
subprocess.run(["callgrind_control", "-d", "measured"], check=True, capture_output=True)
PY
    kill "$vg"
    wait "$vg" 2>/dev/null || true
    local total
    total=$(awk '/^(summary|totals):/ {print $2; exit}' "$WORK/$name.out".*)
    python3 -c "print(f'$name: {$total / $REQUESTS:.0f} instructions per request')"
}

measure axum
measure axum_raw_get
