#!/usr/bin/env bash
# The fleet benchmark: a real gateway and N simulated devices (real agent code, each its own
# enrolled certificate and MQTT session through the TLS front): rollout fan-out, reconnect
# storm after a gateway SIGKILL, gateway memory per 1,000 devices, an integrator's retained
# replay, audit chain. Prints a Markdown table and, as its last line, one JSON object.
#   bench/fleet.sh [--quick] [--devices N[,N…]] [--repeats R] [--storms S]
# Release build, except --quick (20 devices, one of each, debug build: it checks the
# pipeline in CI, not the numbers).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=(--release); dir=release
for a in "$@"; do [ "$a" = "--quick" ] && { profile=(); dir=debug; }; done
cargo build "${profile[@]}" -q -p edgefleet-bench --bin fleet -p edgefleet-cli -p edgefleet-agent -p edgefleet-sim
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "target/$dir/fleet" "$@"
