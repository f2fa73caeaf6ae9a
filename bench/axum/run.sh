#!/usr/bin/env bash
# Cache-hit throughput of examples/axum.rs (MemcacheLayer over TcpBackend) against
# examples/axum_raw_get.rs (axum doing one raw TcpBackend `get` per request and answering its
# bytes: no cache logic at all), over the same memcached, measured with wrk; and the same
# examples/axum.rs with a near tier (NEAR_CACHE_MB=64, 1 s behind memcached at most).
#
#     bash bench/axum/run.sh
#
# What it does, all on 127.0.0.1:
#   1. builds both examples in release and starts memcached on a free port;
#   2. starts the three servers on it (MEMCACHE_SERVERS), the same axum/tokio setup
#      (#[tokio::main], one worker thread per CPU, axum::serve);
#   3. warms the layer (GET / twice) and checks that its answer is a hit
#      (`Cache-Status: tower-memcache; hit`), stores the same body under the raw key, and checks
#      that both answer 200 with the same body;
#   4. runs wrk against each in turn for $ROUNDS rounds (the order rotates every round), and per
#      round prints requests/s, p50 / p99 latency, the CPU time per request of the server and
#      of memcached (/proc/PID/stat utime + stime deltas), memcached's get_hits delta per
#      request (the layer reads its entry and the namespace generation in one multi-get: 2;
#      the raw get 1), and how much of the machine was idle or used by processes outside the
#      benchmark (a disturbed round shows there);
#   5. prints the medians and the ratio layer / raw per round and overall (target >= 0.95).
#
# Knobs (environment): ROUNDS=5 DURATION=10s WARMUP=3s CONNECTIONS=32 WRK_THREADS=1
# MEMCACHED_THREADS=2 KEEP=1 (keep the temp dir with logs and wrk outputs)
# FEATURES= (extra cargo features for both examples, e.g. FEATURES=metrics).
#
# Needs: memcached, wrk, curl, python3 (Debian: apt-get install -y memcached wrk curl python3)
# and cargo.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNECTIONS=${CONNECTIONS:-32}
WRK_THREADS=${WRK_THREADS:-1}
MEMCACHED_THREADS=${MEMCACHED_THREADS:-2}
FEATURES=${FEATURES:-}
RAW_KEY=bench:raw

missing=()
for tool in memcached wrk curl python3 cargo; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "missing: ${missing[*]}" >&2
    echo "install: apt-get install -y memcached wrk curl python3" >&2
    exit 1
fi

WORK=$(mktemp -d /tmp/tower-memcache-axum-bench.XXXXXX)
source "$ROOT/bench/lib.sh"
PIDS=()
trap cleanup EXIT

read -r MC_PORT LAYER_PORT RAW_PORT NEAR_PORT < <(free_ports 4)



# mc_set KEY FILE: stores FILE's bytes under KEY (flags 0, no expiry).
mc_set() {
    python3 - "$MC_PORT" "$1" "$2" <<'PY'
import socket, sys
port, key, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
data = open(path, "rb").read()
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"set %s 0 0 %d\r\n" % (key.encode(), len(data)) + data + b"\r\n")
reply = s.recv(100)
if reply != b"STORED\r\n":
    sys.exit(f"set {key}: {reply!r}")
PY
}



echo "== versions"
memcached -V
wrk -v 2>&1 | head -1 || true
rustc -V
echo "cpus: $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
echo "kernel: $(uname -r)"

echo "== building examples/axum.rs and examples/axum_raw_get.rs (release)"
(cd "$ROOT" && cargo build --release --quiet --example axum --example axum_raw_get \
    ${FEATURES:+--features "$FEATURES"})
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
# Copies, so that a build in the same tree during the run cannot swap a binary.
cp "$TARGET_DIR/release/examples/axum" "$WORK/axum"
cp "$TARGET_DIR/release/examples/axum_raw_get" "$WORK/axum_raw_get"

echo "== starting memcached and both servers"
MC_USER=()
[[ $(id -u) == 0 ]] && MC_USER=(-u root)
memcached -l 127.0.0.1 -p "$MC_PORT" -U 0 -t "$MEMCACHED_THREADS" -m 64 -c 4096 "${MC_USER[@]}" \
    >"$WORK/memcached.log" 2>&1 &
PIDS+=($!)
MC_PID=$!
wait_port "$MC_PORT"

env RUST_LOG=warn MEMCACHE_SERVERS="127.0.0.1:$MC_PORT" LISTEN="127.0.0.1:$LAYER_PORT" \
    "$WORK/axum" >"$WORK/axum.log" 2>&1 &
PIDS+=($!)
LAYER_PID=$!
env RUST_LOG=warn MEMCACHE_SERVERS="127.0.0.1:$MC_PORT" LISTEN="127.0.0.1:$NEAR_PORT" \
    NEAR_CACHE_MB=64 NEAR_STALENESS_MS=1000 "$WORK/axum" >"$WORK/axum-near.log" 2>&1 &
PIDS+=($!)
NEAR_PID=$!
env RUST_LOG=warn MEMCACHE_SERVERS="127.0.0.1:$MC_PORT" LISTEN="127.0.0.1:$RAW_PORT" \
    RAW_KEY="$RAW_KEY" "$WORK/axum_raw_get" >"$WORK/axum_raw_get.log" 2>&1 &
PIDS+=($!)
RAW_PID=$!
wait_port "$LAYER_PORT"
wait_port "$RAW_PORT"
wait_port "$NEAR_PORT"
echo "memcached -l 127.0.0.1 -p $MC_PORT -U 0 -t $MEMCACHED_THREADS -m 64 -c 4096 ${MC_USER[*]}"
echo "MEMCACHE_SERVERS=127.0.0.1:$MC_PORT LISTEN=127.0.0.1:$LAYER_PORT target/release/examples/axum"
echo "MEMCACHE_SERVERS=127.0.0.1:$MC_PORT LISTEN=127.0.0.1:$RAW_PORT RAW_KEY=$RAW_KEY target/release/examples/axum_raw_get"

LAYER_URL=http://127.0.0.1:$LAYER_PORT/
NEAR_URL=http://127.0.0.1:$NEAR_PORT/
RAW_URL=http://127.0.0.1:$RAW_PORT/

echo "== filling memcached and checking both answers"
for _ in 1 2 3; do
    curl -s -o /dev/null "$LAYER_URL"
    curl -s -o /dev/null "$NEAR_URL"
    sleep 0.3 # the layer stores after the response has gone out
done
near_headers=$(curl -s -D - -o "$WORK/near.body" "$NEAR_URL")
grep -qi '^cache-status: tower-memcache; hit; detail=near' <<<"$near_headers" || { echo "the near tier is not answering: $near_headers" >&2; KEEP=1; exit 1; }

layer_headers=$(curl -s -D - -o "$WORK/layer.body" "$LAYER_URL")
mc_set "$RAW_KEY" "$WORK/layer.body"
raw_headers=$(curl -s -D - -o "$WORK/raw.body" "$RAW_URL")
echo "-- layer (examples/axum.rs): $LAYER_URL"
echo "$layer_headers"
echo "-- raw get (examples/axum_raw_get.rs): $RAW_URL"
echo "$raw_headers"
grep -q '^HTTP/1.1 200' <<<"$layer_headers" || { echo "the layer does not answer 200" >&2; KEEP=1; exit 1; }
grep -q '^HTTP/1.1 200' <<<"$raw_headers" || { echo "the raw get does not answer 200" >&2; KEEP=1; exit 1; }
grep -qi '^cache-status: tower-memcache; hit' <<<"$layer_headers" || { echo "the layer is not answering from memcached" >&2; KEEP=1; exit 1; }
cmp -s "$WORK/layer.body" "$WORK/raw.body" || { echo "the two bodies differ" >&2; KEEP=1; exit 1; }
echo "both answer 200 with the same $(wc -c <"$WORK/raw.body")-byte body; the layer's is a hit;" \
    "response header bytes: layer $(curl -s -o /dev/null -w '%{size_header}' "$LAYER_URL")," \
    "raw $(curl -s -o /dev/null -w '%{size_header}' "$RAW_URL")"

echo "== warm-up ($WARMUP each, not counted)"
wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$LAYER_URL" >/dev/null
wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$RAW_URL" >/dev/null
wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$NEAR_URL" >/dev/null

RESULTS=$WORK/results.tsv
: >"$RESULTS"
# run_side ROUND NAME URL PID: one wrk run, its line in results.tsv and on screen.
run_side() {
    local round=$1 name=$2 url=$3 pid=$4
    local cpu0 cpu1 mc0 mc1 hits0 hits1 out j0 j1 wrk_cpu
    cpu0=$(cpu_seconds "$pid")
    mc0=$(cpu_seconds "$MC_PID")
    hits0=$(mc_stat get_hits)
    out=$WORK/wrk-$name-$round.txt
    j0=$(machine_jiffies)
    wrk_cpu=$(python3 -c 'import resource, subprocess, sys
with open(sys.argv[1], "w") as out:
    subprocess.run(sys.argv[2:], stdout=out, check=True)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(usage.ru_utime + usage.ru_stime)' "$out" \
        wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url")
    j1=$(machine_jiffies)
    cpu1=$(cpu_seconds "$pid")
    mc1=$(cpu_seconds "$MC_PID")
    hits1=$(mc_stat get_hits)
    python3 - "$out" "$round" "$name" "$cpu0" "$cpu1" "$mc0" "$mc1" "$wrk_cpu" "$hits0" \
        "$hits1" $j0 $j1 >>"$RESULTS" <<'PY'
import os, re, sys
out, rnd, name = sys.argv[1:4]
cpu0, cpu1, mc0, mc1, wrk_cpu = map(float, sys.argv[4:9])
hits0, hits1 = map(int, sys.argv[9:11])
idle0, steal0, total0, idle1, steal1, total1 = map(int, sys.argv[11:17])
hz = os.sysconf("SC_CLK_TCK")
capacity = max(1, total1 - total0) / hz
idle = (idle1 - idle0) / hz
stolen = (steal1 - steal0) / hz
cpu, mc = cpu1 - cpu0, mc1 - mc0
others = max(0.0, capacity - idle - cpu - mc - wrk_cpu)
text = open(out).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
total = int(re.search(r"(\d+) requests in", text).group(1))
p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1)
p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errors = re.search(r"Socket errors: (.*)", text)
note = []
if bad:
    note.append(f"non-2xx={bad.group(1)}")
if errors:
    note.append("socket errors: " + errors.group(1).strip())
per = lambda seconds: f"{seconds / total * 1e6:.1f}" if total else "-"
hits = f"{(hits1 - hits0) / total:.2f}" if total else "-"
print("\t".join([rnd, name, f"{rps:.0f}", str(total), p50, p99, per(cpu), per(mc),
                 per(cpu + mc), per(wrk_cpu), hits, f"{100 * idle / capacity:.0f}",
                 f"{100 * others / capacity:.0f}", f"{100 * stolen / capacity:.0f}",
                 " ".join(note) or "-"]))
PY
    tail -n1 "$RESULTS"
}

echo "== wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, order swapped each round"
# server-us/req, memcached-us/req, total-us/req (both), wrk-us/req: CPU time per request.
# hits/req: memcached get_hits per request. idle%: machine CPU left unused; others%: used by
# processes outside the benchmark; steal%: taken by the hypervisor. A round with a high
# others% or steal% was disturbed.
printf '%s\n' $'round\tside\treq/s\trequests\tp50\tp99\tserver-us/req\tmemcached-us/req\ttotal-us/req\twrk-us/req\thits/req\tidle%\tothers%\tsteal%\tnotes'
SIDES=(raw layer near)
for round in $(seq 1 "$ROUNDS"); do
    for i in 0 1 2; do
        case ${SIDES[$(((i + round - 1) % 3))]} in
        raw) run_side "$round" raw "$RAW_URL" "$RAW_PID" ;;
        layer) run_side "$round" layer "$LAYER_URL" "$LAYER_PID" ;;
        near) run_side "$round" near "$NEAR_URL" "$NEAR_PID" ;;
        esac
    done
done

echo "== summary (medians over $ROUNDS rounds)"
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
def med(side, col):
    return statistics.median(float(r[col]) for r in rows if r[1] == side)
def p99(side):
    # wrk prints latencies with a unit (us, ms, s).
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    values = []
    for r in rows:
        if r[1] == side:
            text = r[5]
            unit = next(u for u in ("us", "ms", "s") if text.endswith(u))
            values.append(float(text[: -len(unit)]) * scale[unit])
    return statistics.median(values)
for side, label in (("raw", "axum raw get"), ("layer", "axum + MemcacheLayer hit"),
                    ("near", "axum + layer, near tier")):
    print(f"{label:25s} {med(side, 2):7.0f} req/s, p99 {p99(side):.2f} ms; CPU per request:"
          f" server {med(side, 6):.1f} us, memcached {med(side, 7):.1f} us,"
          f" both {med(side, 8):.1f} us; memcached hits/req {med(side, 10):.2f};"
          f" others {med(side, 12):.0f}% of the machine")
per_round, cpu_round = [], []
for rnd in sorted({r[0] for r in rows}, key=int):
    side = {r[1]: r for r in rows if r[0] == rnd}
    per_round.append(float(side["layer"][2]) / float(side["raw"][2]))
    cpu_round.append(float(side["layer"][8]) / float(side["raw"][8]))
print("throughput layer / raw per round: " + ", ".join(f"{x:.2f}" for x in per_round))
print("CPU per request (server + memcached) layer / raw per round: "
      + ", ".join(f"{x:.2f}" for x in cpu_round))
near_round = []
for rnd in sorted({r[0] for r in rows}, key=int):
    side = {r[1]: r for r in rows if r[0] == rnd}
    near_round.append(float(side["near"][2]) / float(side["raw"][2]))
print("throughput near tier / raw per round: " + ", ".join(f"{x:.2f}" for x in near_round)
      + f" (median {statistics.median(near_round):.2f})")
ratio = statistics.median(per_round)
verdict = "meets" if ratio >= 0.95 else "misses"
print(f"median throughput ratio layer / raw: {ratio:.2f} ({verdict} the target of >= 0.95);"
      f" median CPU ratio {statistics.median(cpu_round):.2f}")
PY
