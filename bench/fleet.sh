#!/usr/bin/env bash
# The fleet benchmark: a real gateway and N simulated devices (real agent code, each its own
# enrolled certificate and MQTT session through the TLS front): rollout fan-out, reconnect
# storm after a gateway SIGKILL, gateway memory per 1,000 devices, an integrator's retained
# replay, audit chain. Prints a Markdown table and, as its last line, one JSON object.
#   bench/fleet.sh [--quick] [--profiling] [--devices N[,N…]] [--repeats R] [--storms S] [--no-mosquitto] [--sim-on-disk] [--keep]
# Honours CARGO_TARGET_DIR. FLEET_BUILD_LOCK=FILE holds flock(1) on FILE for the build step
# only (a build machine shared with others); the measurement runs without it.
# Release build, except --quick (20 devices, one of each, debug build: it checks the
# pipeline in CI, not the numbers) and --profiling (the release code with symbols and line
# tables, Cargo.toml's `profiling` profile, so that perf can be attached to the gateway).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=(--release); dir=release; args=()
for a in "$@"; do
  case "$a" in
    --quick) profile=(); dir=debug; args+=("$a") ;;
    --profiling) profile=(--profile profiling); dir=profiling ;;
    *) args+=("$a") ;;
  esac
done
lock=(); [ -n "${FLEET_BUILD_LOCK:-}" ] && lock=(flock "$FLEET_BUILD_LOCK")
# Every binary of the workspace (the benchmark and what it starts), exactly as the test
# harness (tests/src/bins.rs), scripts/test and scripts/api-conformance build them: one
# feature set, so none of them rebuilds what another built.
"${lock[@]}" cargo build "${profile[@]}" -q --workspace --bins
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "${CARGO_TARGET_DIR:-target}/$dir/fleet" "${args[@]}"
