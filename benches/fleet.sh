#!/usr/bin/env bash
# Many sessions against several miopd processes on this machine, driven by one
# miop-bench command. One process may hold only ~20k fds here, so the sessions
# are spread over GATEWAYS miopd processes (ports 7710, 7711, ...) and
# miop-bench spreads its own sockets over worker processes (automatic --procs).
#
#   benches/fleet.sh [CONNECTIONS] [GATEWAYS] [DURATION]     (default 50000 3 60s)
#
# Writes target/fleet/{summary.txt,run.json,run.html,gateways.txt}.
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-50000}
gateways=${2:-3}
duration=${3:-60s}
out=target/fleet
mkdir -p "$out"

cargo build --release --bins >/dev/null
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

for i in $(seq 0 $((gateways - 1))); do
  ./target/release/miopd --listen 127.0.0.1:$((7710 + i)) --admin 127.0.0.1:$((7810 + i)) \
    --app-key pk --cores 2 --heartbeat 30s >"$out/miopd-$i.out" 2>"$out/miopd-$i.log" &
  pids+=($!)
done
for i in $(seq 0 $((gateways - 1))); do
  until grep -q "miopd ready" "$out/miopd-$i.out" 2>/dev/null; do sleep 0.1; done
done

# Sample what the gateways report while the load runs.
(
  while sleep 5; do
    total=0
    line=""
    for i in $(seq 0 $((gateways - 1))); do
      n=$(curl -s 127.0.0.1:$((7810 + i))/metrics | awk '/^miop_sessions /{print $2}')
      total=$((total + ${n:-0}))
      line="$line gw$i=${n:-?}"
    done
    echo "$(date +%T) sessions=$total$line"
  done
) >"$out/gateways.txt" &
pids+=($!)

last=$((7710 + gateways - 1))
extra=()
[ "$gateways" -gt 1 ] && extra=(--target "127.0.0.1:7711-$last")
./target/release/miop-bench "miop://$(hostname):pk@127.0.0.1:7710/" -t 6 -c "$conns" -d "$duration" \
  --latency --bind 127.0.0.2-127.0.0.9 "${extra[@]}" \
  --json "$out/run.json" --report "$out/run.html" | tee "$out/summary.txt"
echo "gateway samples:"; tail -n 3 "$out/gateways.txt"
