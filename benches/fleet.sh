#!/usr/bin/env bash
# Many sessions against several miopd processes on this machine, driven by one
# miop-bench command. One process may hold only ~20k fds here, so the sessions
# are spread over GATEWAYS miopd processes (ports 7710, 7711, ...) and
# miop-bench spreads its own sockets over worker processes (automatic --procs).
#
#   benches/fleet.sh [CONNECTIONS] [GATEWAYS] [DURATION]     (default 50000 3 60s)
#
# PUSH_RATE=1/s adds push load: miop-bench broadcasts through gateway 0's push
# API (PUSH_TO, default all); with several gateways they share a private Redis
# (port 7399) so the broadcast reaches every node. Push-to-ack latency
# percentiles are then read from the gateways' histograms.
#
# SOURCES=N: loopback source addresses for the load generator (127.0.0.2 ...);
# default one per 3,000 connections (at least 8, at most 250): the kernel's
# ephemeral-port search in connect() slows down badly when one source address
# carries tens of thousands of connections (a 300k run with 8 addresses
# collapsed at ~220k). MIOPD=path runs another miopd binary (e.g. an older
# build, for before/after figures); CORES (default 2) is --cores per gateway;
# MIOP_IO (uring, epoll) is passed to the gateways through the environment.
#
# PROBE=N (seconds): once every session is bound, measure the gateways for N
# seconds of the hold: reads handled (heartbeats), their CPU time (utime +
# stime of every gateway process) and their system calls (perf stat on the
# raw_syscalls:sys_enter tracepoint), printed per read to target/fleet/probe.txt.
#
# Writes target/fleet/{summary.txt,run.json,run.html,gateways.txt}.
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-50000}
gateways=${2:-3}
duration=${3:-60s}
push_rate=${PUSH_RATE:-}
sources=${SOURCES:-$(( conns / 3000 ))}
[ "$sources" -lt 8 ] && sources=8
[ "$sources" -gt 250 ] && sources=250
miopd=${MIOPD:-./target/release/miopd}
cores=${CORES:-2}
out=target/fleet
mkdir -p "$out"

cargo build --release --bins >/dev/null
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

echo "fleet: $conns sessions, $gateways gateways x $cores cores ($miopd, MIOP_IO=${MIOP_IO:-auto}), $sources source addresses, $duration"
gw_args=()
bench_args=()
gw_pids=()
if [ -n "$push_rate" ]; then
  gw_args+=(--push-token bench-token)
  bench_args+=(--push-rate "$push_rate" --push-api http://127.0.0.1:7810 --push-token bench-token --push-to "${PUSH_TO:-all}")
  if [ "$gateways" -gt 1 ]; then
    redis-server --port 7399 --bind 127.0.0.1 --save "" --appendonly no >"$out/redis.log" 2>&1 &
    pids+=($!)
    until redis-cli -p 7399 ping >/dev/null 2>&1; do sleep 0.1; done
    gw_args+=(--redis redis://127.0.0.1:7399)
  fi
fi

for i in $(seq 0 $((gateways - 1))); do
  "$miopd" --listen 127.0.0.1:$((7710 + i)) --admin 127.0.0.1:$((7810 + i)) \
    --app-key pk --cores "$cores" --heartbeat 30s --node-id "gw$i" "${gw_args[@]}" \
    >"$out/miopd-$i.out" 2>"$out/miopd-$i.log" &
  pids+=($!)
  gw_pids+=($!)
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

if [ -n "${PROBE:-}" ]; then
  (
    sum_metric() {
      local total=0 n
      for i in $(seq 0 $((gateways - 1))); do
        n=$(curl -s 127.0.0.1:$((7810 + i))/metrics | awk -v m="$1" '$1 == m {print $2}')
        total=$(python3 -c "print(int($total + float('${n:-0}')))")
      done
      echo "$total"
    }
    cpu_ticks() {
      local t=0
      for p in "${gw_pids[@]}"; do
        t=$((t + $(awk '{print $14 + $15}' /proc/"$p"/stat)))
      done
      echo "$t"
    }
    until [ "$(sum_metric miop_sessions)" -ge "$conns" ]; do sleep 1; done
    sleep 5
    r0=$(sum_metric miop_read_handling_seconds_count); c0=$(cpu_ticks)
    pidlist=$(IFS=,; echo "${gw_pids[*]}")
    perf stat -x, -e raw_syscalls:sys_enter -p "$pidlist" -- sleep "$PROBE" 2>"$out/perf.txt" >/dev/null
    r1=$(sum_metric miop_read_handling_seconds_count); c1=$(cpu_ticks)
    sys=$(awk -F, '/raw_syscalls/ {print $1}' "$out/perf.txt")
    hz=$(getconf CLK_TCK)
    python3 - "$r0" "$r1" "$c0" "$c1" "$sys" "$hz" "$PROBE" <<'PY' | tee "$out/probe.txt"
import sys
r0, r1, c0, c1, sc, hz, secs = (float(x) for x in sys.argv[1:])
reads = r1 - r0
print("probe over %.0fs of the hold: reads handled %d (%.0f/s), gateway CPU %.2fs (%.1f%% of one core), "
      "CPU per read %.1f us, syscalls %d (%.2f per read)"
      % (secs, reads, reads / secs, (c1 - c0) / hz, 100 * (c1 - c0) / hz / secs,
         1e6 * (c1 - c0) / hz / max(reads, 1), sc, sc / max(reads, 1)))
PY
  ) &
  pids+=($!)
fi

last=$((7710 + gateways - 1))
extra=()
[ "$gateways" -gt 1 ] && extra=(--target "127.0.0.1:7711-$last")
./target/release/miop-bench "miop://$(hostname):pk@127.0.0.1:7710/" -t 6 -c "$conns" -d "$duration" \
  --latency --bind "127.0.0.2-127.0.0.$((1 + sources))" "${extra[@]}" "${bench_args[@]}" \
  --json "$out/run.json" --report "$out/run.html" | tee "$out/summary.txt"
echo "gateway samples:"; tail -n 3 "$out/gateways.txt"
if [ -n "${PROBE:-}" ]; then
  for _ in $(seq 1 100); do [ -s "$out/probe.txt" ] && break; sleep 0.2; done
  cat "$out/probe.txt" 2>/dev/null || echo "probe: no result (the run ended before every session was bound + 5 s + PROBE)"
fi

if [ -n "$push_rate" ]; then
  for i in $(seq 0 $((gateways - 1))); do curl -s 127.0.0.1:$((7810 + i))/metrics; done >"$out/metrics.txt"
  python3 - "$out/metrics.txt" <<'PY'
import re, sys
buckets, count, total = {}, 0.0, 0.0
for line in open(sys.argv[1]):
    m = re.match(r'miop_push_ack_latency_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
    if m:
        le = float('inf') if m.group(1) == '+Inf' else float(m.group(1))
        buckets[le] = buckets.get(le, 0.0) + float(m.group(2))
    elif line.startswith('miop_push_ack_latency_seconds_count '):
        count += float(line.split()[1])
    elif line.startswith('miop_push_ack_latency_seconds_sum '):
        total += float(line.split()[1])
def q(p):
    # Linear interpolation inside the bucket, as Prometheus' histogram_quantile.
    target, prev_le, prev_c = p * count, 0.0, 0.0
    for le in sorted(buckets):
        c = buckets[le]
        if c >= target:
            if le == float('inf'):
                return prev_le
            return prev_le + (le - prev_le) * (target - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return prev_le
if count:
    print("push-to-ack (all gateways, from histogram buckets): acks=%d mean=%.1fms p50~%.1fms p90~%.1fms p99~%.1fms"
          % (count, 1000 * total / count, 1000 * q(.5), 1000 * q(.9), 1000 * q(.99)))
PY
fi
