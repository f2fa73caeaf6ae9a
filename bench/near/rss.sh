#!/usr/bin/env bash
# The near tier's memory at its bound: two tower-memcache-proxy processes over one memcached,
# without and with --near-cache $NEAR_SIZE, are sent $URLS distinct URLs of $BODY bytes three
# times each (a miss that stores, a hit in memcached that the near tier keeps, a hit), far
# more than the tier holds; then each proxy's resident memory (VmRSS) and the tier's own
# count of its bytes (tower_memcache_near_cache_bytes, from --metrics) are printed, with
# the difference in RSS against the configured size.
#
#     bash bench/near/rss.sh
#
# Knobs: URLS=40000 BODY=1024 NEAR_SIZE=16M THREADS=2. Needs memcached, python3, cargo.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
URLS=${URLS:-40000}
BODY=${BODY:-1024}
NEAR_SIZE=${NEAR_SIZE:-16M}
THREADS=${THREADS:-2}

WORK=$(mktemp -d /tmp/tower-memcache-near-rss.XXXXXX)
source "$ROOT/bench/lib.sh"
PIDS=()
trap cleanup EXIT

read -r MC_PORT ORIGIN_PORT PLAIN_PORT NEAR_PORT METRICS_PORT PLAIN_METRICS_PORT < <(free_ports 6)

(cd "$ROOT" && cargo build --release --features proxy,metrics --bin tower-memcache-proxy --quiet)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
PROXY_BIN=$TARGET_DIR/release/tower-memcache-proxy

MC_USER=()
[[ $(id -u) == 0 ]] && MC_USER=(-u root)
memcached -l 127.0.0.1 -p "$MC_PORT" -U 0 -m 1024 "${MC_USER[@]}" >/dev/null 2>&1 &
PIDS+=($!)
# The origin: any path, $BODY bytes, fresh for an hour.
python3 - "$ORIGIN_PORT" "$BODY" >/dev/null 2>&1 <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, size = int(sys.argv[1]), int(sys.argv[2])
class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body are two writes: without this, Nagle and delayed ACKs cost 40 ms each.
    disable_nagle_algorithm = True
    def do_GET(self):
        body = (self.path.encode() * (size // len(self.path) + 1))[:size]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", port), Origin).serve_forever()
PY
PIDS+=($!)
COMMON=(--upstream "http://127.0.0.1:$ORIGIN_PORT" --memcache "127.0.0.1:$MC_PORT"
    --threads "$THREADS" --access-log off)
# Both with --metrics, so that the exporter's own memory is on both sides.
"$PROXY_BIN" --listen "127.0.0.1:$PLAIN_PORT" "${COMMON[@]}" \
    --metrics "127.0.0.1:$PLAIN_METRICS_PORT" 2>/dev/null &
PIDS+=($!)
PLAIN_PID=$!
"$PROXY_BIN" --listen "127.0.0.1:$NEAR_PORT" "${COMMON[@]}" --near-cache "$NEAR_SIZE,60s" \
    --metrics "127.0.0.1:$METRICS_PORT" 2>/dev/null &
PIDS+=($!)
NEAR_PID=$!
for port in "$MC_PORT" "$ORIGIN_PORT" "$PLAIN_PORT" "$NEAR_PORT" "$METRICS_PORT" "$PLAIN_METRICS_PORT"; do
    wait_port "$port"
done
echo "tower-memcache-proxy ${COMMON[*]}  (and the same with --near-cache $NEAR_SIZE,60s)"

echo "before: proxy $(rss_kib "$PLAIN_PID") KiB, proxy with near tier $(rss_kib "$NEAR_PID") KiB"
python3 - "$PLAIN_PORT" "$NEAR_PORT" "$URLS" <<'PY'
import http.client, sys
plain, near, urls = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for port in (plain, near):
    statuses = {}
    connection = http.client.HTTPConnection("127.0.0.1", port)
    connection.connect()
    connection.sock.setsockopt(__import__("socket").IPPROTO_TCP, __import__("socket").TCP_NODELAY, 1)
    for rnd in range(3):
        for i in range(urls):
            connection.request("GET", f"/item/{i}")
            response = connection.getresponse()
            response.read()
            status = response.getheader("cache-status", "")
            key = (rnd, status.split(";")[1].strip() + (" near" if "near" in status else "") if ";" in status else status)
            statuses[key] = statuses.get(key, 0) + 1
    print(f"port {port}: " + ", ".join(f"pass {r}: {s} x{n}" for (r, s), n in sorted(statuses.items())))
PY
near_bytes=$(python3 - "$METRICS_PORT" <<'PY'
import sys, time, urllib.request
time.sleep(11)  # the gauges are read every 10 s
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
values = [line.split()[-1] for line in text.splitlines() if line.startswith("tower_memcache_near_cache_bytes")]
print(values[0] if values else "unknown")
PY
)
plain_rss=$(rss_kib "$PLAIN_PID")
near_rss=$(rss_kib "$NEAR_PID")
python3 - "$plain_rss" "$near_rss" "$near_bytes" "$NEAR_SIZE" <<'PY'
import sys
plain, near, tier, size = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
configured = int(size[:-1]) * units[size[-1].upper()] if size[-1].isalpha() else int(size)
extra = (near - plain) * 1024
print(f"after: proxy {plain} KiB, proxy with near tier {near} KiB")
print(f"near tier counts {tier} bytes of its {configured} configured")
print(f"RSS with near tier - RSS without: {extra / 2**20:.1f} MiB = {extra / configured:.2f} x the configured size"
      f" ({(extra - configured) / 2**20:+.1f} MiB beyond it)")
PY
