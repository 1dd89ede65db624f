#!/usr/bin/env bash
# RPC round trips: ringbus request/reply (docs/PROTOCOL.md section 12)
# against NATS request/reply, in one run on this machine's loopback, with
# bench/rpcload (one responder and one caller connection per run):
#
#   bench/rpc.sh               # REPS (5) runs of every figure, medians
#   REPS=1 bench/rpc.sh        # a quick look
#
# Figures: throughput with 64 calls in flight, and latency with one call in
# flight, at payloads of 16 B, 1 KiB and 64 KiB. Starts ringbusd (2 shards,
# memory store) and nats-server on free ports, stops both by PID on exit;
# every wait is bounded. Prints one JSON line per run and a table of medians.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REPS=${REPS:-5}
RINGBUSD=${RINGBUSD:-$ROOT/build/release/ringbusd}
RPCLOAD=${RPCLOAD:-$ROOT/build/release/rpcload}
say() { printf 'rpc.sh: %s\n' "$*" >&2; }
for tool in nats-server python3; do
  command -v "$tool" >/dev/null || { say "missing $tool (scripts/setup.sh installs it)"; exit 1; }
done
if [ "${BUILD:-1}" = 1 ]; then
  make --no-print-directory build/release/ringbusd build/release/libringbus.a >/dev/null
  make --no-print-directory -f bench/Makefile build/release/rpcload >/dev/null
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do timeout 10 tail --pid="$pid" -f /dev/null 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
  local port=$1 pid=$2 i
  for i in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || return 1
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

RB_PORT=$(free_port); NATS_PORT=$(free_port)
printf 'shards = 2\n[[listener]]\ntransport = "tcp"\naddress = "127.0.0.1"\nport = %s\n' \
  "$RB_PORT" >"$TMP/ringbusd.toml"
"$RINGBUSD" --config "$TMP/ringbusd.toml" >"$TMP/ringbusd.log" 2>&1 &
PIDS+=($!); wait_port "$RB_PORT" "$!" || { say "ringbusd did not start"; exit 1; }
nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$TMP/nats.log" 2>&1 &
PIDS+=($!); wait_port "$NATS_PORT" "$!" || { say "nats-server did not start"; exit 1; }

# figure name, concurrency, calls
FIGS=("throughput 64 200000" "latency 1 20000")
for size in 16 1024 65536; do
  for fig in "${FIGS[@]}"; do
    read -r name conc calls <<<"$fig"
    [ "$size" = 65536 ] && calls=$((calls / 10))
    for rep in $(seq 1 "$REPS"); do
      # Interleaved, so that machine load falls on both alike.
      for url in "tcp://127.0.0.1:$RB_PORT" "nats://127.0.0.1:$NATS_PORT"; do
        line=$(timeout 300 "$RPCLOAD" --url "$url" --calls "$calls" --concurrency "$conc" \
          --size "$size")
        echo "{\"figure\":\"$name\",${line#\{}" | tee -a "$TMP/runs.json"
      done
    done
  done
done

python3 - "$TMP/runs.json" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
keys = sorted({(r["figure"], r["size"]) for r in runs}, key=lambda k: (k[0], k[1]))
print("| figure | size | ringbus calls/s | NATS calls/s | ratio | ringbus p50 / p99 µs | NATS p50 / p99 µs |")
print("|---|---|---|---|---|---|---|")
for fig, size in keys:
    med = {}
    for sysname, prefix in (("rb", "tcp://"), ("nats", "nats://")):
        sel = [r for r in runs if r["figure"] == fig and r["size"] == size and r["url"].startswith(prefix)]
        med[sysname] = {k: statistics.median(r[k] for r in sel) for k in ("calls_per_s", "p50_us", "p99_us")}
    rb, na = med["rb"], med["nats"]
    print(f"| {fig} | {size} | {rb['calls_per_s']:,.0f} | {na['calls_per_s']:,.0f} | "
          f"{rb['calls_per_s'] / na['calls_per_s']:.2f}x | {rb['p50_us']:.0f} / {rb['p99_us']:.0f} | "
          f"{na['p50_us']:.0f} / {na['p99_us']:.0f} |")
PY
