#!/bin/sh
# The near tier in the hit-rate lab (issue 14's measurement): memcached operations per
# request, near-tier hits and the busiest memcached server's share, at Zipf exponents 0.8,
# 1.0 and 1.2, near tier off / 8M / 32M with a 1 s staleness bound, 2 memcached servers.
#
#   bench/hit_rate/near-tier.sh            the exponents (about 4 min on two cores)
#   bench/hit_rate/near-tier.sh rates      Zipf 1.0 at 10k, 50k and 100k requests/s over
#                                          1 000 and 10 000 keys (about 3 min)
#
# Traffic: 300 000 requests of 1 KiB over --keys paths at --rate requests per second of
# trace time; --timing replays them on that clock slowed by --speedup (to 12 500 req/s of
# wall time, which two shared cores keep up with), and the near tier's 1 s staleness bound
# is one second of trace time (4 s of wall time at --speedup 0.25). memcached operations
# are counted after the first 100 000 requests (--warmup). CSVs go to target/hit_rate/.
# Needs memcached on PATH (or MEMCACHED_BIN).
set -eu
cd "$(dirname "$0")/../.."
out=target/hit_rate
mkdir -p "$out"
cargo build --release --example hit_rate
lab=target/release/examples/hit_rate
common="--requests 300000 --warmup 100000 --timing --servers 2 --memory 64 --lifetime 3600 --no-svg"

if [ "${1:-}" = rates ]; then
    for keys in 1000 10000; do
        for rate in 10000 50000 100000; do
            speedup=$(awk "BEGIN { print 12500 / $rate }")
            echo "== Zipf 1.0, $keys keys, $rate requests/s (--speedup $speedup)"
            $lab $common --keys $keys --exponent 1.0 --rate $rate --speedup "$speedup" \
                --near-cache off,32M --csv "$out/near-rate-$keys-$rate.csv"
        done
    done
    exit 0
fi

for s in 0.8 1.0 1.2; do
    echo "== Zipf $s"
    $lab $common --keys 10000 --exponent $s --rate 50000 --speedup 0.25 \
        --near-cache off,8M,32M --csv "$out/near-zipf-$s.csv"
done
