#!/usr/bin/env bash
# Cache-hit throughput of the tower-memcache-proxy binary over a real memcached, side by side with
# nginx + srcache + memc caching the same origin in the same memcached, and with nginx serving
# the same file from disk with no cache at all (the ceiling for an HTTP server here), measured
# with wrk. The proxy runs twice: without and with its near tier (--near-cache).
#
#     bash bench/nginx/run.sh
#
# What it does, all on 127.0.0.1:
#   1. starts memcached on a free port;
#   2. starts nginx with bench/nginx/nginx.conf.template: the origin (a static 1 KiB file)
#      and, on another port, the srcache + memc cache in front of it;
#   3. builds and starts the proxy twice: tower-memcache-proxy --upstream <origin> --memcache
#      <memcached> --threads $PROXY_THREADS --mode routes --ttl 300 (nginx gets
#      worker_processes $WORKERS; PROXY_THREADS defaults to $WORKERS), and the same with
#      --near-cache $NEAR_CACHE;
#   4. warms both caches (curl twice each) and checks the second answer is a hit on both and
#      that both serve the same body;
#   5. runs wrk against each in turn for $ROUNDS rounds (the order rotates every round), and
#      per round prints requests/s, latency, the CPU time per request of the server, of
#      memcached and of wrk (from /proc and getrusage), memcached's get_hits / get_misses
#      deltas (a request is one memcached hit, or none from the near tier), and how much of the machine was
#      idle or used by processes outside the benchmark (a disturbed round shows there);
#   6. prints the medians, the ratios to nginx + srcache and to nginx's static file, and
#      each proxy's resident memory. Everything it started is stopped on exit.
#
# PATHS=N (default 1) spreads the requests over N copies of the file (/1k-0.html ...), in
# turn, through a wrk script: with one URL every lookup of a batch reads the same two keys,
# which the proxy's merged gets list once; with many, only the namespace generation is
# shared, as on a real site. The warm-up stores them all.
#
# Knobs (environment): ROUNDS=5 DURATION=10s WARMUP=3s CONNECTIONS=32 WRK_THREADS=1 PATHS=1
# WORKERS=2 PROXY_THREADS=$WORKERS (each side at its own best setting for the machine: see
# BENCHMARKS.md) MEMCACHED_THREADS=2 NEAR_CACHE=64M,1s MODULES_DIR=/usr/lib/nginx/modules KEEP=1 (keep the temp
# dir with configs and logs) PROXY_ENV='VAR=value ...' (extra environment for the proxy,
# e.g. PROXY_ENV=LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2) PROXY_FLAGS='...'
# (extra flags for both proxies, e.g. PROXY_FLAGS='--runtime per-thread').
#
# Needs: nginx, libnginx-mod-http-srcache-filter, libnginx-mod-http-memc, memcached, wrk,
# curl, python3 (Debian: apt-get install -y nginx libnginx-mod-http-srcache-filter
# libnginx-mod-http-memc memcached wrk curl python3) and cargo.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNECTIONS=${CONNECTIONS:-32}
WRK_THREADS=${WRK_THREADS:-1}
WORKERS=${WORKERS:-2}
PROXY_THREADS=${PROXY_THREADS:-$WORKERS}
MEMCACHED_THREADS=${MEMCACHED_THREADS:-2}
MODULES_DIR=${MODULES_DIR:-/usr/lib/nginx/modules}
NEAR_CACHE=${NEAR_CACHE:-64M,1s}
PATHS=${PATHS:-1}
TARGET_PATH=/1k.html

missing=()
for tool in nginx memcached wrk curl python3 cargo; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
for module in ngx_http_srcache_filter_module ngx_http_memc_module; do
    [[ -f $MODULES_DIR/$module.so ]] || missing+=("$MODULES_DIR/$module.so")
done
if ((${#missing[@]})); then
    echo "missing: ${missing[*]}" >&2
    echo "install: apt-get install -y nginx libnginx-mod-http-srcache-filter libnginx-mod-http-memc memcached wrk curl python3" >&2
    exit 1
fi

WORK=$(mktemp -d /tmp/tower-memcache-nginx-bench.XXXXXX)
source "$ROOT/bench/lib.sh"
chmod 755 "$WORK" # nginx workers may run as another user and must read html/
PIDS=()
trap cleanup EXIT

read -r MC_PORT ORIGIN_PORT CACHE_PORT PROXY_PORT NEAR_PORT < <(free_ports 5)





echo "== versions"
nginx -v 2>&1
memcached -V
wrk -v 2>&1 | head -1 || true
rustc -V
echo "cpus: $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
echo "kernel: $(uname -r)"

echo "== building the proxy"
(cd "$ROOT" && cargo build --release --features proxy --bin tower-memcache-proxy --quiet)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
PROXY_BIN=$TARGET_DIR/release/tower-memcache-proxy

echo "== starting memcached, nginx (origin + srcache) and the proxy"
MC_USER=()
[[ $(id -u) == 0 ]] && MC_USER=(-u root)
memcached -l 127.0.0.1 -p "$MC_PORT" -U 0 -t "$MEMCACHED_THREADS" -m 64 -c 4096 "${MC_USER[@]}" \
    >"$WORK/memcached.log" 2>&1 &
PIDS+=($!)
MC_PID=$!

mkdir -p "$WORK/html"
python3 -c 'import sys; line = b"tower-memcache benchmark body: the same 1 KiB from both caches.\n"; sys.stdout.buffer.write((line * 17)[:1024])' \
    >"$WORK/html/1k.html"
WRK_SCRIPT=()
if ((PATHS > 1)); then
    for ((i = 0; i < PATHS; i++)); do cp "$WORK/html/1k.html" "$WORK/html/1k-$i.html"; done
    cat >"$WORK/paths.lua" <<LUA
-- Each request the next of $PATHS copies of the file, in turn.
local i = 0
request = function()
    i = i + 1
    return wrk.format("GET", "/1k-" .. (i % $PATHS) .. ".html")
end
LUA
    WRK_SCRIPT=(-s "$WORK/paths.lua")
fi
chmod -R a+rX "$WORK/html"
sed -e "s|@WORKERS@|$WORKERS|" -e "s|@MODULES_DIR@|$MODULES_DIR|" \
    -e "s|@CACHE_PORT@|$CACHE_PORT|" -e "s|@ORIGIN_PORT@|$ORIGIN_PORT|" \
    -e "s|@MEMCACHED_PORT@|$MC_PORT|" \
    "$ROOT/bench/nginx/nginx.conf.template" >"$WORK/nginx.conf"
nginx -t -q -c "$WORK/nginx.conf" -p "$WORK/" -g 'daemon off;'
nginx -c "$WORK/nginx.conf" -p "$WORK/" -g 'daemon off;' >"$WORK/nginx.log" 2>&1 &
PIDS+=($!)
NGINX_PID=$!

PROXY_ARGS=(--listen "127.0.0.1:$PROXY_PORT" --upstream "http://127.0.0.1:$ORIGIN_PORT"
    --memcache "127.0.0.1:$MC_PORT" --threads "$PROXY_THREADS" --mode routes --ttl 300 --access-log off)
read -r -a EXTRA_FLAGS <<<"${PROXY_FLAGS:-}"
PROXY_ARGS+=("${EXTRA_FLAGS[@]}")
read -r -a EXTRA_ENV <<<"${PROXY_ENV:-}"
env RUST_LOG=warn "${EXTRA_ENV[@]}" "$PROXY_BIN" "${PROXY_ARGS[@]}" >"$WORK/proxy.log" 2>&1 &
PIDS+=($!)
PROXY_PID=$!
NEAR_ARGS=(--listen "127.0.0.1:$NEAR_PORT" --upstream "http://127.0.0.1:$ORIGIN_PORT"
    --memcache "127.0.0.1:$MC_PORT" --threads "$PROXY_THREADS" --mode routes --ttl 300 --access-log off
    --near-cache "$NEAR_CACHE" "${EXTRA_FLAGS[@]}")
env RUST_LOG=warn "${EXTRA_ENV[@]}" "$PROXY_BIN" "${NEAR_ARGS[@]}" >"$WORK/near.log" 2>&1 &
PIDS+=($!)
NEAR_PID=$!

wait_port "$MC_PORT"
wait_port "$ORIGIN_PORT"
wait_port "$CACHE_PORT"
wait_port "$PROXY_PORT"
wait_port "$NEAR_PORT"
echo "memcached -l 127.0.0.1 -p $MC_PORT -U 0 -t $MEMCACHED_THREADS -m 64 -c 4096 ${MC_USER[*]}"
echo "nginx -c $WORK/nginx.conf -p $WORK/ -g 'daemon off;'   (worker_processes $WORKERS)"
echo "${PROXY_ENV:+$PROXY_ENV }cargo run --release --features proxy --bin tower-memcache-proxy -- ${PROXY_ARGS[*]}"
echo "${PROXY_ENV:+$PROXY_ENV }cargo run --release --features proxy --bin tower-memcache-proxy -- ${NEAR_ARGS[*]}"

NGINX_URL=http://127.0.0.1:$CACHE_PORT$TARGET_PATH
PROXY_URL=http://127.0.0.1:$PROXY_PORT$TARGET_PATH
NEAR_URL=http://127.0.0.1:$NEAR_PORT$TARGET_PATH
STATIC_URL=http://127.0.0.1:$ORIGIN_PORT$TARGET_PATH

echo "== warming both caches"
for _ in 1 2 3; do
    curl -s -o /dev/null "$NGINX_URL"
    curl -s -o /dev/null "$PROXY_URL"
    curl -s -o /dev/null "$NEAR_URL"
    sleep 0.3 # both store after the response has gone out
done
near_headers=$(curl -s -D - -o "$WORK/near.body" "$NEAR_URL")
static_status=$(curl -s -o "$WORK/static.body" -w '%{http_code}' "$STATIC_URL")
nginx_headers=$(curl -s -D - -o "$WORK/nginx.body" "$NGINX_URL")
proxy_headers=$(curl -s -D - -o "$WORK/proxy.body" "$PROXY_URL")
echo "-- nginx + srcache: $NGINX_URL"
echo "$nginx_headers"
echo "-- reverse_proxy: $PROXY_URL"
echo "$proxy_headers"
grep -qi '^x-cache: HIT' <<<"$nginx_headers" || { echo "nginx is not answering from memcached" >&2; KEEP=1; exit 1; }
grep -qi '^cache-status: tower-memcache; hit' <<<"$proxy_headers" || { echo "the proxy is not answering from memcached" >&2; KEEP=1; exit 1; }
echo "-- proxy with --near-cache $NEAR_CACHE: $NEAR_URL"
echo "$near_headers"
grep -qi '^cache-status: tower-memcache; hit; detail=near' <<<"$near_headers" || { echo "the near-tier proxy is not answering from its near tier" >&2; KEEP=1; exit 1; }
[[ $static_status == 200 ]] || { echo "nginx's static file answers $static_status" >&2; KEEP=1; exit 1; }
cmp -s "$WORK/near.body" "$WORK/html/1k.html" || { echo "the near tier's body is not the origin's" >&2; KEEP=1; exit 1; }
cmp -s "$WORK/static.body" "$WORK/html/1k.html" || { echo "nginx's static body differs" >&2; KEEP=1; exit 1; }
cmp -s "$WORK/nginx.body" "$WORK/proxy.body" || { echo "the two bodies differ" >&2; KEEP=1; exit 1; }
cmp -s "$WORK/nginx.body" "$WORK/html/1k.html" || { echo "the cached body is not the origin's" >&2; KEEP=1; exit 1; }
echo "both hit; same $(wc -c <"$WORK/proxy.body")-byte body;" \
    "response header bytes: nginx $(curl -s -o /dev/null -w '%{size_header}' "$NGINX_URL")," \
    "proxy $(curl -s -o /dev/null -w '%{size_header}' "$PROXY_URL")"

echo "== warm-up ($WARMUP each, not counted)"
wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$WARMUP" "${WRK_SCRIPT[@]}" "$NGINX_URL" >/dev/null
wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$WARMUP" "${WRK_SCRIPT[@]}" "$PROXY_URL" >/dev/null
wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$WARMUP" "${WRK_SCRIPT[@]}" "$NEAR_URL" >/dev/null
wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$WARMUP" "${WRK_SCRIPT[@]}" "$STATIC_URL" >/dev/null

RESULTS=$WORK/results.tsv
: >"$RESULTS"
# run_side ROUND NAME URL PID...: one wrk run, its line in results.tsv and on screen.
run_side() {
    local round=$1 name=$2 url=$3
    shift 3
    local cpu0 cpu1 mc0 mc1 hits0 hits1 miss0 miss1 out j0 j1 wrk_cpu
    cpu0=$(cpu_seconds "$@")
    mc0=$(cpu_seconds "$MC_PID")
    hits0=$(mc_stat get_hits)
    miss0=$(mc_stat get_misses)
    out=$WORK/wrk-$name-$round.txt
    j0=$(machine_jiffies)
    # wrk through a wrapper that reports wrk's own CPU time.
    wrk_cpu=$(python3 -c 'import resource, subprocess, sys
with open(sys.argv[1], "w") as out:
    subprocess.run(sys.argv[2:], stdout=out, check=True)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(usage.ru_utime + usage.ru_stime)' "$out" \
        wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "${WRK_SCRIPT[@]}" "$url")
    j1=$(machine_jiffies)
    cpu1=$(cpu_seconds "$@")
    mc1=$(cpu_seconds "$MC_PID")
    hits1=$(mc_stat get_hits)
    miss1=$(mc_stat get_misses)
    python3 - "$out" "$round" "$name" "$cpu0" "$cpu1" "$mc0" "$mc1" "$wrk_cpu" "$hits0" \
        "$hits1" "$miss0" "$miss1" $j0 $j1 >>"$RESULTS" <<'PY'
import os, re, sys
out, rnd, name = sys.argv[1:4]
cpu0, cpu1, mc0, mc1, wrk_cpu = map(float, sys.argv[4:9])
hits0, hits1, miss0, miss1 = map(int, sys.argv[9:13])
idle0, steal0, total0, idle1, steal1, total1 = map(int, sys.argv[13:19])
hz = os.sysconf("SC_CLK_TCK")
capacity = max(1, total1 - total0) / hz  # CPU-seconds the machine had during the run
idle = (idle1 - idle0) / hz
stolen = (steal1 - steal0) / hz
cpu, mc = cpu1 - cpu0, mc1 - mc0
# Busy time that was neither the server, memcached nor wrk: other processes on the machine
# (and the hypervisor's steal). High values mark a disturbed round.
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
print("\t".join([rnd, name, f"{rps:.0f}", str(total), p50, p99, f"{cpu:.2f}", per(cpu),
                 per(mc), per(wrk_cpu), str(hits1 - hits0), str(miss1 - miss0),
                 f"{100 * idle / capacity:.0f}", f"{100 * others / capacity:.0f}",
                 f"{100 * stolen / capacity:.0f}", " ".join(note) or "-"]))
PY
    tail -n1 "$RESULTS"
}

echo "== wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, order rotated each round, $PATHS path(s)"
# server-us/req, memcached-us/req, wrk-us/req: CPU time per request of each. idle%: machine
# CPU left unused; others%: machine CPU used by processes outside the benchmark; steal%:
# taken by the hypervisor. A round with a high others% or steal% was disturbed.
printf '%s\n' $'round\tside\treq/s\trequests\tp50\tp99\tserver-cpu-s\tserver-us/req\tmemcached-us/req\twrk-us/req\tget_hits\tget_misses\tidle%\tothers%\tsteal%\tnotes'
NGINX_PIDS=("$NGINX_PID" $(pgrep -P "$NGINX_PID" || true))
SIDES=(nginx proxy near static)
run_named() {
    case $2 in
    nginx) run_side "$1" nginx "$NGINX_URL" "${NGINX_PIDS[@]}" ;;
    proxy) run_side "$1" proxy "$PROXY_URL" "$PROXY_PID" ;;
    near) run_side "$1" near "$NEAR_URL" "$NEAR_PID" ;;
    static) run_side "$1" static "$STATIC_URL" "${NGINX_PIDS[@]}" ;;
    esac
}
for round in $(seq 1 "$ROUNDS"); do
    for i in 0 1 2 3; do
        run_named "$round" "${SIDES[$(((i + round - 1) % 4))]}"
    done
done
echo "resident memory: proxy $(rss_kib "$PROXY_PID") KiB, proxy with --near-cache $NEAR_CACHE $(rss_kib "$NEAR_PID") KiB"

echo "== summary (medians over $ROUNDS rounds)"
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
def med(side, col):
    return statistics.median(float(r[col]) for r in rows if r[1] == side)
labels = {"nginx": "nginx + srcache + memc", "proxy": "proxy", "near": "proxy + near tier",
          "static": "nginx static file"}
for side, label in labels.items():
    requests = sum(int(r[3]) for r in rows if r[1] == side)
    gets = sum(int(r[10]) + int(r[11]) for r in rows if r[1] == side)
    print(f"{label:23s} {med(side, 2):6.0f} req/s, p99 {[r[5] for r in rows if r[1] == side]};"
          f" CPU per request: server {med(side, 7):.1f} us, memcached {med(side, 8):.1f} us"
          f" (total {med(side, 7) + med(side, 8):.1f}), wrk {med(side, 9):.1f} us;"
          f" memcached keys read per request {gets / max(1, requests):.3f};"
          f" others {med(side, 13):.0f}% of the machine")
rounds = sorted({r[0] for r in rows}, key=int)
def ratios(a, b, col=2):
    out = []
    for rnd in rounds:
        side = {r[1]: float(r[col]) for r in rows if r[0] == rnd}
        out.append(side[a] / side[b])
    return out
for a, b, target in (("proxy", "nginx", 1.3), ("near", "nginx", 1.6), ("near", "static", 1.0),
                     ("proxy", "static", None)):
    per_round = ratios(a, b)
    median = statistics.median(per_round)
    verdict = "" if target is None else f" ({'meets' if median >= target else 'misses'} >= {target})"
    print(f"throughput {labels[a]} / {labels[b]}: median {median:.2f}{verdict};"
          " per round " + ", ".join(f"{x:.2f}" for x in per_round))
total = {side: med(side, 7) + med(side, 8) for side in ("nginx", "proxy", "near")}
print(f"CPU per hit (server + memcached) proxy / nginx: {total['proxy'] / total['nginx']:.2f};"
      f" proxy + near tier / nginx: {total['near'] / total['nginx']:.2f}")
PY
