#!/usr/bin/env bash
# Publish throughput with auth.mode = "required" and 100 permission
# patterns against auth.mode = "none", same build, interleaved run by run
# (docs/BENCHMARKS.md, "Authentication"):
#
#   bench/auth_ab.sh                 # ROUNDS (6) rounds of FIG
#   ROUNDS=10 FIG="pubsub --size 256 --count 1000000 --subscribers 1" bench/auth_ab.sh
#
# Each run gets a fresh daemon (2 shards, memory store). The "required"
# daemon verifies an HS256 token whose publish and subscribe claims hold
# 100 patterns each (99 that never match, the bench's "bench.>" last, so
# every check walks them all). Prints one JSON line per run, the ratio
# required/none of each round and the median ratio. Daemons are stopped by
# PID; every wait is bounded.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/build/release}
ROUNDS=${ROUNDS:-6}
FIG=${FIG:-pubsub --size 256 --count 1000000 --subscribers 0}
TMP=$(mktemp -d)
OUT=${OUT:-$TMP/auth_ab.jsonl}
PID=
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; fi
  rm -rf "$TMP/keys"
}
trap cleanup EXIT
mkdir -p "$TMP/keys"
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s\n' "$SECRET" >"$TMP/keys/jwt.secret"
TOKEN=$(python3 - "$SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
pats = [f"other{i}.*.x" for i in range(99)] + ["bench.>"]
claims = {"sub": "bench", "exp": int(time.time()) + 3600, "publish": pats, "subscribe": pats}
msg = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + b64(json.dumps(claims).encode())
sig = hmac.new(sys.argv[1].encode(), msg, hashlib.sha256).digest()
print((msg + b"." + b64(sig)).decode())
PY
)
printf '%s\n' "$TOKEN" >"$TMP/keys/token"
: >"$OUT"
port=$((20000 + RANDOM % 20000))

run_one() { # mode
  local mode=$1 url res auth=() extra=""
  port=$((port + 1))
  url=tcp://127.0.0.1:$port
  if [ "$mode" = required ]; then
    extra=$(printf '[auth]\nmode = "required"\n[[auth.jwt_key]]\nalgorithm = "HS256"\nsecret_file = "%s"\n' \
      "$TMP/keys/jwt.secret")
    auth=(--token-file "$TMP/keys/token")
  fi
  printf 'shards = 2\nlog_level = "warn"\n%s\n[[listener]]\ntransport = "tcp"\naddress = "127.0.0.1"\nport = %s\n' \
    "$extra" "$port" >"$TMP/auth.toml"
  "$BIN/ringbusd" --config "$TMP/auth.toml" >"$TMP/$mode.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do
    "$BIN/ringbus" --url "$url" "${auth[@]}" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  # shellcheck disable=SC2086 # FIG is a word list on purpose
  res=$(timeout 120 "$BIN/ringbus" --url "$url" "${auth[@]}" bench $FIG --json 2>/dev/null |
    tail -n 1) || true
  printf '{"mode":"%s","fig":"%s","res":%s}\n' "$mode" "$FIG" "${res:-null}" | tee -a "$OUT"
  kill "$PID"
  wait "$PID" 2>/dev/null || true
  PID=
}

for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    run_one none
    run_one required
  else
    run_one required
    run_one none
  fi
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def rate(r):
    res = r["res"] or {}
    return res.get("msgs_per_s") or res.get("publish_per_s") or res.get("rate")
pairs, ratios = [], []
for i in range(0, len(runs) - 1, 2):
    a, b = runs[i], runs[i + 1]
    by = {a["mode"]: rate(a), b["mode"]: rate(b)}
    if by.get("none") and by.get("required"):
        ratios.append(by["required"] / by["none"])
        print(f"round {i // 2 + 1}: none {by['none']:.0f}/s required {by['required']:.0f}/s "
              f"ratio {ratios[-1]:.3f}")
    else:
        print(f"round {i // 2 + 1}: a run failed: {a['res']} {b['res']}")
if ratios:
    print(f"median ratio required/none over {len(ratios)} rounds: {statistics.median(ratios):.3f}")
PY
printf 'auth_ab.sh: every run is in %s\n' "$OUT" >&2
