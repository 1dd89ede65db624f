#!/usr/bin/env bash
# Before/after: two builds of ringbusd + ringbus, interleaved run by run on
# this machine, each figure against a fresh daemon (2 shards, memory store):
#
#   BEFORE=dir AFTER=dir bench/ab.sh          # ROUNDS (6) rounds, medians
#   FIG="latency --size 256 --rate 10000" BEFORE=dir AFTER=dir bench/ab.sh
#
# dir holds ringbusd and ringbus (a build/release of each tree). Odd rounds
# run before first, even rounds after first. A run whose subscribers were
# closed or that lost messages is reported and left out of the medians.
# Prints one JSON line per run (also to $OUT) and the medians with the
# after/before ratio. Every wait is bounded; daemons are stopped by PID.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BEFORE=${BEFORE:?BEFORE=dir of the old ringbusd and ringbus}
AFTER=${AFTER:?AFTER=dir of the new ringbusd and ringbus}
ROUNDS=${ROUNDS:-6}
TMP=$(mktemp -d)
OUT=${OUT:-$TMP/ab.jsonl}
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -f "$TMP/ab.toml"; }
trap cleanup EXIT
if [ -n "${FIG:-}" ]; then
  FIGS=("$FIG")
else
  FIGS=("pubsub --size 256 --count 3000000" "fanout --size 256 --count 1000000"
    "latency --size 256 --rate 10000")
fi
: >"$OUT"
port=$((20000 + RANDOM % 20000))

run_one() { # label dir
  local label=$1 dir=$2 url res fig
  port=$((port + 1))
  url=tcp://127.0.0.1:$port
  printf 'shards = 2\nlog_level = "warn"\n[[listener]]\ntransport = "tcp"\naddress = "127.0.0.1"\nport = %s\n' \
    "$port" >"$TMP/ab.toml"
  "$dir/ringbusd" --config "$TMP/ab.toml" >"$TMP/$label.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do
    "$dir/ringbus" --url "$url" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  for fig in "${FIGS[@]}"; do
    # shellcheck disable=SC2086 # fig is a word list on purpose
    res=$(timeout 120 "$dir/ringbus" --url "$url" bench $fig --topic-prefix "ab$RANDOM" --json 2>/dev/null |
      tail -n 1) || true
    printf '{"bin":"%s","fig":"%s","res":%s}\n' "$label" "$fig" "${res:-null}" | tee -a "$OUT"
  done
  kill "$PID"
  wait "$PID" 2>/dev/null || true
  PID=
}

for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    run_one before "$BEFORE"
    run_one after "$AFTER"
  else
    run_one after "$AFTER"
    run_one before "$BEFORE"
  fi
done
python3 "$ROOT/bench/ab_stat.py" "$OUT"
printf 'ab.sh: every run is in %s\n' "$OUT" >&2
