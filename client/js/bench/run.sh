#!/usr/bin/env bash
# Pub/sub throughput of the JavaScript client in Node next to the C client
# (libringbus through `ringbus bench pubsub`) in the same run, over ws://
# and wss:// (docs/BENCHMARKS.md, "JavaScript client").
#
# One ringbusd (memory store, two shards) listens on ws and wss on
# 127.0.0.1. Per round and transport: `ringbus bench pubsub` (one
# publishing and one subscribing connection, one topic, COUNT messages of
# SIZE bytes, 4096 in flight), then client/js/bench/pubsub.mjs doing the
# same with two Clients in one Node process. Each figure is the median of
# the rounds; the clients take turns, so load drift touches both alike.
#
#   client/js/bench/run.sh [COUNT] [ROUNDS] [SIZE]   (defaults 100000, 5, 256)
#   RINGBUS_BUILD=build/release                   (where ringbusd and ringbus are)
set -euo pipefail

N=${1:-100000}
ROUNDS=${2:-5}
SIZE=${3:-256}
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${RINGBUS_BUILD:-build/release}
RINGBUSD=$BUILD/ringbusd
RINGBUS=$BUILD/ringbus

tmp=$(mktemp -d)
daemon=""
cleanup() {
  if [ -n "$daemon" ]; then
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -keyout "$tmp/ca.key" -out "$tmp/ca.pem" -subj "/CN=bench CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$tmp/server.key" -out "$tmp/server.csr" -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' > "$tmp/ext"
openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
  -CAcreateserial -days 1 -extfile "$tmp/ext" -out "$tmp/server.pem" 2>/dev/null

WS=$(free_port)
WSS=$(free_port)
cat > "$tmp/ringbusd.toml" <<TOML
shards = 2
log_level = "info"
[limits]
send_queue_bytes = 1073741824
pending_buffer_bytes = 1073741824
[[listener]]
transport = "ws"
address = "127.0.0.1"
port = $WS
[[listener]]
transport = "wss"
address = "127.0.0.1"
port = $WSS
cert = "$tmp/server.pem"
key = "$tmp/server.key"
TOML
"$RINGBUSD" --config "$tmp/ringbusd.toml" > "$tmp/ringbusd.log" 2>&1 &
daemon=$!
for _ in $(seq 200); do
  grep -q "ready:" "$tmp/ringbusd.log" && break
  sleep 0.05
done
grep -q "ready:" "$tmp/ringbusd.log" || { cat "$tmp/ringbusd.log"; exit 1; }

# msgs_per_s as an integer; the C CLI prints it with %g (1.10703e+06).
rate() { sed -n 's/.*"msgs_per_s":\([0-9.eE+-]*\).*/\1/p' | awk '{ printf "%d\n", $1 }'; }

declare -A RATES
for round in $(seq "$ROUNDS"); do
  for kind in ws wss; do
    if [ "$kind" = ws ]; then url="ws://127.0.0.1:$WS/ringbus"; else url="wss://localhost:$WSS/ringbus"; fi
    c=$("$RINGBUS" --url "$url" --ca "$tmp/ca.pem" bench pubsub --count "$N" --size "$SIZE" \
          --topic-prefix "bench.c.$kind.$round" --json | rate)
    js=$(node "$HERE/pubsub.mjs" "$url" "$N" "$SIZE" 4096 "$tmp/ca.pem" | rate)
    RATES[c.$kind]+="$c "
    RATES[js.$kind]+="$js "
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

echo "pub/sub, 1 publisher and 1 subscriber, $N messages of $SIZE bytes, median of $ROUNDS rounds"
echo "machine: $(nproc) CPUs, $(uname -sr), node $(node --version), ringbusd $("$RINGBUSD" --version | cut -d' ' -f2)"
printf '%-10s %-8s %12s %10s   %s\n' transport client "msg/s" "vs C" "rounds (msg/s)"
for kind in ws wss; do
  cm=$(echo "${RATES[c.$kind]}" | median)
  jm=$(echo "${RATES[js.$kind]}" | median)
  printf '%-10s %-8s %12s %9.2fx   %s\n' "$kind://" C "$cm" 1 "${RATES[c.$kind]}"
  printf '%-10s %-8s %12s %9.2fx   %s\n' "$kind://" node "$jm" "$(echo "$jm $cm" | awk '{ print $1 / $2 }')" "${RATES[js.$kind]}"
done
