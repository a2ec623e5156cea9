#!/usr/bin/env bash
# One command to N sessions on this machine (default 1,000,000): builds the
# release binaries, then benches/c1m.py applies the sysctls it needs, starts
# enough `--cores 1` miopd processes for the fd limit (and a private Redis),
# runs miop-bench over enough loopback source addresses, samples CPU, RSS,
# slab and sessions every second, and tears it all down by PID (Ctrl-C too).
#
#   benches/c1m.sh [SESSIONS] [--duration 12m] [--io uring|epoll] [--no-redis]
#                  [--push-rate 1/s --push-count 5] [--redis-outage 30 [--slow-redis 2.3/0.4]]
#                  [--connect-rate 40k/s] [--steps 100k,200k,600k,1M --step-duration 60s]
#                  [--server miopd|mosquitto] [--netns]
#                  [--profile ramp,bound,bound+120,back [--profile-secs 30]]
#
# Writes target/c1m/{c1m.json,gateways.html,ramp.svg,run.json,run.html,summary.txt}
# (and perf-<moment>.{data,txt} with --profile: benches/c1m_profile.py).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins >/dev/null
exec python3 benches/c1m.py "$@"
