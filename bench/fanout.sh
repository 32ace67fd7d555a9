#!/usr/bin/env bash
# Runs the fan-out probe matrix: embedded rumqttd (sample limits, gateway limits) vs Mosquitto,
# for each client count given (default: 1000 2000 5000). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("${@:-1000 2000 5000}")
[ $# -gt 0 ] || counts=(1000 2000 5000)
cargo build --release -q -p edgefleet-bench --bin fanout
bin=target/release/fanout
ulimit -n 65536 2>/dev/null || true
echo "| broker | clients | connect+subscribe | delivered | all delivered in | reconnects |"
echo "|---|---|---|---|---|---|"
for n in "${counts[@]}"; do
  "$bin" --clients "$n" --broker sample --label "rumqttd, sample limits"
  "$bin" --clients "$n" --broker tuned --label "rumqttd, gateway limits"
  conf=$(mktemp); printf 'listener 18885 127.0.0.1\nallow_anonymous true\nmax_connections -1\n' > "$conf"
  mosquitto -c "$conf" >/dev/null 2>&1 & mpid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/18885) 2>/dev/null && break; sleep 0.05; done
  "$bin" --clients "$n" --broker external --port 18885 --label "mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}')"
  kill "$mpid"; wait "$mpid" 2>/dev/null || true; rm -f "$conf"
done
