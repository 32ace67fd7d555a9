#!/usr/bin/env bash
# The fleet benchmark: a real gateway and N simulated devices (real agent code, each its own
# enrolled certificate and MQTT session through the TLS front): rollout fan-out, reconnect
# storm after a gateway SIGKILL, gateway memory per 1,000 devices, an integrator's retained
# replay, audit chain. Prints a Markdown table and, as its last line, one JSON object.
#   bench/fleet.sh [--quick] [--devices N[,N…]] [--repeats R] [--storms S]
# Honours CARGO_TARGET_DIR. FLEET_BUILD_LOCK=FILE holds flock(1) on FILE for the build step
# only (a build machine shared with others); the measurement runs without it.
# Release build, except --quick (20 devices, one of each, debug build: it checks the
# pipeline in CI, not the numbers).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=(--release); dir=release
for a in "$@"; do [ "$a" = "--quick" ] && { profile=(); dir=debug; }; done
lock=(); [ -n "${FLEET_BUILD_LOCK:-}" ] && lock=(flock "$FLEET_BUILD_LOCK")
# The benchmark, then the binaries it starts exactly as its harness builds them
# (tests/src/bins.rs), so the harness's own build finds nothing to do.
"${lock[@]}" sh -c 'cargo build "$@" -q -p edgefleet-bench --bin fleet &&
  cargo build "$@" -q --bins -p edgefleet-cli -p edgefleet-agent -p edgefleet-sim' build "${profile[@]}"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "${CARGO_TARGET_DIR:-target}/$dir/fleet" "$@"
