#!/usr/bin/env bash
# Instructions per request of one `http --profile` side, counted by callgrind over the measured
# load only (instrumentation is switched on when the bench says "profiling <side> now"). Unlike
# req/s and CPU time on a shared machine, the count repeats to within ~0.1% run to run, so a
# change of a few hundred instructions per request is visible.
#
# usage: crates/tenantry-bench/instructions.sh <side> [seconds]
#   side: baseline | floor | database-floor | shared | schema | database | limited | healthz
# Counts the bench process: the servers and the load generator (not PostgreSQL, not the kernel).
set -euo pipefail
side=${1:?side: baseline, floor, database-floor, shared, schema, database, limited or healthz}
secs=${2:-20}
cd "$(dirname "$0")/../.."
cargo build --release -q -p tenantry-bench
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/cg.%p" \
    target/release/tenantry-bench http --profile "$side" --seconds "$secs" --clients 8 \
    >"$out/log" 2>&1 &
pid=$!
until grep -q "profiling $side now" "$out/log"; do
    kill -0 "$pid" 2>/dev/null || { cat "$out/log"; exit 1; }
    sleep 1
done
callgrind_control -i on "$pid" >/dev/null 2>&1
wait "$pid"
total=$(callgrind_annotate "$out"/cg.* 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
# Requests the servers parsed while counting (the load generator parses responses instead).
requests=$(callgrind_annotate --tree=calling "$out"/cg.* 2>/dev/null |
    grep -o 'httparse::Request::parse[^(]*([0-9,]*x)' | head -1 | grep -o '[0-9,]*x' | tr -d ,x)
echo "$side: $((total / requests)) instructions per request ($requests requests counted)"
