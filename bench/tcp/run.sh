#!/usr/bin/env bash
# TcpBackend against async-memcached and memcache (benches/tcp.rs) in interleaved rounds, with
# the per-round ratios and the machine's noise; optionally against another build of the bench
# (an A/B of two versions of the client, in the same rounds).
#
#     bash bench/tcp/run.sh
#     ROUNDS=7 FILTER="get 1" bash bench/tcp/run.sh
#     COMPARE=/tmp/tcp-before bash bench/tcp/run.sh     # A/B against a copied older bench binary
#
# What it does:
#   1. builds benches/tcp.rs in release (cargo bench --no-run) and copies the binary;
#   2. runs it $ROUNDS times with BENCH_ROUNDS=1 (each run starts its own memcached -t 2 and
#      runs every configuration once, the clients' order rotating inside the run); with
#      COMPARE set, the copied binary and $COMPARE take turns, the order swapping every round;
#   3. per round prints each configuration's ops/s and client CPU µs/op (getrusage of the bench
#      process, memcached not counted), and how much of the machine was idle or used by
#      processes outside the benchmark during the run;
#   4. prints the medians, and the per-round ratios TcpBackend / async-memcached (throughput
#      and CPU per op) at 1 and 64 tasks, and with COMPARE the ratios this build / $COMPARE.
#
# Knobs (environment): ROUNDS=5 SECONDS_PER_RUN=2 (BENCH_SECONDS) FILTER= (BENCH_FILTER, e.g.
# "get 1", "TcpBackend") COMPARE= (path of another bench binary) KEEP=1 (keep the temp dir).
#
# Needs: memcached (apt-get install -y memcached), python3 and cargo.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ROUNDS=${ROUNDS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-2}
FILTER=${FILTER:-}
COMPARE=${COMPARE:-}

for tool in memcached python3 cargo; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
if [[ -n $COMPARE && ! -x $COMPARE ]]; then
    echo "COMPARE=$COMPARE is not an executable bench binary" >&2
    exit 1
fi

WORK=$(mktemp -d /tmp/tower-memcache-tcp-bench.XXXXXX)
source "$ROOT/bench/lib.sh"
PIDS=()
trap cleanup EXIT

echo "== versions"
memcached -V
rustc -V
echo "cpus: $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
echo "kernel: $(uname -r)"

echo "== building benches/tcp.rs (release)"
BIN=$(cd "$ROOT" && cargo bench --bench tcp --no-run --message-format json 2>/dev/null \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "tcp" and m.get("executable"):
        print(m["executable"])')
[[ -x $BIN ]] || { echo "no bench binary built" >&2; exit 1; }
cp "$BIN" "$WORK/tcp-this"
echo "this build: $BIN (copied)"
[[ -n $COMPARE ]] && cp "$COMPARE" "$WORK/tcp-compare" && echo "compared with: $COMPARE (copied)"

RESULTS=$WORK/results.tsv
: >"$RESULTS"
# run_one ROUND LABEL BINARY: one run of the bench, its per-configuration lines in results.tsv.
run_one() {
    local round=$1 label=$2 bin=$3 j0 j1
    j0=$(machine_jiffies)
    BENCH_ROUNDS=1 BENCH_SECONDS=$SECONDS_PER_RUN BENCH_FILTER=$FILTER "$bin" \
        >"$WORK/out-$label-$round.txt" 2>"$WORK/err-$label-$round.txt"
    j1=$(machine_jiffies)
    python3 - "$WORK/err-$label-$round.txt" "$round" "$label" $j0 $j1 >>"$RESULTS" <<'PY'
import os, re, sys
path, rnd, label = sys.argv[1:4]
idle0, steal0, total0, idle1, steal1, total1 = map(int, sys.argv[4:10])
hz = os.sysconf("SC_CLK_TCK")
capacity = max(1, total1 - total0) / hz
idle = 100 * (idle1 - idle0) / hz / capacity
line_re = re.compile(r"round \d+: (.+?)\s+(get|set)\s+(\d+) tasks:\s+([\d.]+) ops/s\s+([\d.]+) µs CPU/op \((\d+) conns, (\d+) failed\)")
for line in open(path):
    m = line_re.search(line)
    if m:
        client, op, tasks, ops, cpu, conns, failed = m.groups()
        print("\t".join([rnd, label, client, op, tasks, ops, cpu, conns, failed, f"{idle:.0f}"]))
PY
    awk -F'\t' -v r="$round" -v l="$label" '$1 == r && $2 == l {
        printf "round %s %-8s %-20s %s %2s tasks: %8.0f ops/s %6.2f us CPU/op (%s conns, %s failed; machine idle %s%%)\n",
            $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }' "$RESULTS"
}

echo "== $ROUNDS rounds of ${SECONDS_PER_RUN} s per configuration${FILTER:+, filter \"$FILTER\"}${COMPARE:+, A/B with $COMPARE}"
for round in $(seq 1 "$ROUNDS"); do
    if [[ -z $COMPARE ]]; then
        run_one "$round" this "$WORK/tcp-this"
    elif ((round % 2)); then
        run_one "$round" this "$WORK/tcp-this"
        run_one "$round" compare "$WORK/tcp-compare"
    else
        run_one "$round" compare "$WORK/tcp-compare"
        run_one "$round" this "$WORK/tcp-this"
    fi
done

echo "== summary (medians over $ROUNDS rounds)"
python3 - "$RESULTS" <<'PY'
import statistics, sys
from collections import defaultdict
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
runs = defaultdict(dict)  # (round, label) -> {(client, op, tasks): (ops, cpu)}
for rnd, label, client, op, tasks, ops, cpu, *_ in rows:
    runs[(rnd, label)][(client, op, int(tasks))] = (float(ops), float(cpu))
labels = sorted({label for _, label in runs}, key=lambda l: l != "this")
configs = sorted({k for run in runs.values() for k in run}, key=lambda k: (k[1], k[2], k[0]))
print("| build | client | op | tasks | ops/s (median) | ops/s (min–max) | µs CPU/op (median) |")
print("|---|---|---|---:|---:|---:|---:|")
for label in labels:
    for key in configs:
        ops = [run[key][0] for (r, l), run in runs.items() if l == label and key in run]
        cpu = [run[key][1] for (r, l), run in runs.items() if l == label and key in run]
        if ops:
            print(f"| {label} | {key[0]} | {key[1]} | {key[2]} | {statistics.median(ops):.0f} |"
                  f" {min(ops):.0f}–{max(ops):.0f} | {statistics.median(cpu):.2f} |")
print()
def ratios(label, a, b, op, tasks):
    thr, cpu = [], []
    for (r, l), run in sorted(runs.items()):
        if l == label and (a, op, tasks) in run and (b, op, tasks) in run:
            thr.append(run[(a, op, tasks)][0] / run[(b, op, tasks)][0])
            cpu.append(run[(a, op, tasks)][1] / run[(b, op, tasks)][1])
    return thr, cpu
for label in labels:
    for op in ("get", "set"):
        for tasks in (1, 64):
            thr, cpu = ratios(label, "TcpBackend", "async-memcached", op, tasks)
            if thr:
                print(f"{label}: TcpBackend / async-memcached, {op} {tasks:2} tasks: throughput"
                      f" {statistics.median(thr):.2f}× (rounds: {', '.join(f'{x:.2f}' for x in thr)}),"
                      f" CPU/op {statistics.median(cpu):.2f} (rounds: {', '.join(f'{x:.2f}' for x in cpu)})")
if "compare" in labels:
    print()
    for key in configs:
        if key[0] != "TcpBackend":
            continue
        thr, cpu = [], []
        for rnd in sorted({r for r, _ in runs}, key=int):
            this, other = runs.get((rnd, "this"), {}), runs.get((rnd, "compare"), {})
            if key in this and key in other:
                thr.append(this[key][0] / other[key][0])
                cpu.append(this[key][1] / other[key][1])
        if thr:
            print(f"TcpBackend {key[1]} {key[2]:2} tasks, this / compare: throughput"
                  f" {statistics.median(thr):.2f}× ({', '.join(f'{x:.2f}' for x in thr)}),"
                  f" CPU/op {statistics.median(cpu):.2f} ({', '.join(f'{x:.2f}' for x in cpu)})")
idle = [float(r[9]) for r in rows]
print(f"\nmachine idle during the runs: median {statistics.median(idle):.0f}%, min {min(idle):.0f}%"
      " (2 CPUs: a run of one task leaves most of the machine idle; a low figure at 1 task means"
      " neighbours were busy)")
PY
