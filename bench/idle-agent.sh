#!/usr/bin/env bash
# Idle footprint of one agent connected to a gateway with nothing to run: stripped binary
# size, RSS and CPU over 60 s (release build). Prints a Markdown table row per measure.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --bin edgefleet --bin edgefleet-agent
dir=$(mktemp -d); trap 'kill $ag $gw 2>/dev/null; rm -rf "$dir"' EXIT
target/release/edgefleet gateway --data-dir "$dir/gw" --mqtt-listen 127.0.0.1:28830 --http-listen 127.0.0.1:28080 >"$dir/gw.log" 2>&1 & gw=$!
sleep 1
target/release/edgefleet-agent --id idle-1 --broker mqtt://127.0.0.1:28830 --data-dir "$dir/agent" --controller-key "$dir/gw/signing/desired-signing.pub" >"$dir/agent.log" 2>&1 & ag=$!
sleep 10
hz=$(getconf CLK_TCK)
t0=$(awk '{print $14+$15}' /proc/$ag/stat); sleep 60; t1=$(awk '{print $14+$15}' /proc/$ag/stat)
echo "| measure | value | target (SPEC.md §9) |"
echo "|---|---|---|"
echo "| agent binary (stripped) | $(( $(stat -c %s target/release/edgefleet-agent) / 1024 )) KiB | ≤ 10 MB |"
echo "| agent idle RSS | $(awk '/VmRSS/ {print $2}' /proc/$ag/status) KiB | ≤ 10 MB (stretch 5) |"
echo "| agent idle CPU over 60 s | $(( (t1 - t0) * 1000 / hz )) ms ($(awk -v t=$((t1 - t0)) -v hz="$hz" 'BEGIN {printf "%.3f", t / hz / 60 * 100}') % of a core) | ≤ 0.1 % |"
echo "| gateway RSS, 1 agent | $(awk '/VmRSS/ {print $2}' /proc/$gw/status) KiB | — |"
