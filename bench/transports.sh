#!/usr/bin/env bash
# Pub/sub throughput of SIZE-byte messages (default 256) over tcp://, tls://,
# ws://, wss:// and quic://, each as a ratio of tcp:// in the same run
# (docs/BENCHMARKS.md, "Transports").
#
# One ringbusd (memory store) listens on all five transports on 127.0.0.1.
# For each transport, in rounds: a `ringbus sub --count N` subscriber (from
# now) and then a `ringbus pub` publishing N lines of SIZE bytes, both over
# that transport. The rate is N divided by the time from the publisher's
# start to the subscriber's N-th message; a transport's figure is the median
# of its rounds. Transports take turns within each round, so drift in the
# machine's load touches all of them alike.
#
#   bench/transports.sh [N] [ROUNDS] [SIZE]   (defaults 100000, 3 and 256)
#   RINGBUS_BUILD=build/release           (where ringbusd and ringbus are)
set -euo pipefail

N=${1:-100000}
ROUNDS=${2:-3}
SIZE=${3:-256}
BUILD=${RINGBUS_BUILD:-build/release}
RINGBUSD=$BUILD/ringbusd
RINGBUS=$BUILD/ringbus
KINDS=(tcp tls ws wss quic)

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
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# A CA and a server certificate for localhost.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -keyout "$tmp/ca.key" -out "$tmp/ca.pem" -subj "/CN=bench CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$tmp/server.key" -out "$tmp/server.csr" -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' > "$tmp/ext"
openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
  -CAcreateserial -days 1 -extfile "$tmp/ext" -out "$tmp/server.pem" 2>/dev/null

declare -A PORT
{
  echo 'log_level = "info"'
  # A subscriber that writes every message to a file falls behind a burst
  # of publishes: room for the whole run, so the stream is not cut (G4).
  echo '[limits]'
  echo 'send_queue_bytes = 1073741824'
  echo 'pending_buffer_bytes = 1073741824'
  echo '[storage.memory]'
  echo "retention_messages = $((N + 1))"
  echo "retention_bytes = $((N * (SIZE + 256) + (1 << 20)))"
  for k in "${KINDS[@]}"; do
    PORT[$k]=$(free_port)
    printf '[[listener]]\ntransport = "%s"\naddress = "127.0.0.1"\nport = %s\n' "$k" "${PORT[$k]}"
    if [ "$k" = tls ] || [ "$k" = wss ] || [ "$k" = quic ]; then
      printf 'cert = "%s"\nkey = "%s"\n' "$tmp/server.pem" "$tmp/server.key"
    fi
  done
} > "$tmp/ringbusd.toml"
"$RINGBUSD" --config "$tmp/ringbusd.toml" > "$tmp/ringbusd.log" 2>&1 &
daemon=$!
for _ in $(seq 200); do
  grep -q "ready:" "$tmp/ringbusd.log" && break
  sleep 0.05
done
grep -q "ready:" "$tmp/ringbusd.log" || { cat "$tmp/ringbusd.log"; exit 1; }

# N lines of SIZE bytes each (the newline is not part of the payload).
head -c $((N * SIZE)) /dev/zero | tr '\0' 'x' | fold -w "$SIZE" > "$tmp/payloads"

now() { date +%s.%N; }

# One measurement: prints messages per second.
run_one() {
  local kind=$1 topic=$2 url
  url="$kind://localhost:${PORT[$kind]}"
  "$RINGBUS" --url "$url" --ca "$tmp/ca.pem" --timeout 120 sub --count "$N" "$topic" \
    > "$tmp/sub.out" &
  local sub=$!
  # Publish only once the subscriber is live.
  for _ in $(seq 400); do
    grep -q topics_live "$tmp/sub.out" 2>/dev/null && break
    sleep 0.01
  done
  local start end
  start=$(now)
  "$RINGBUS" --url "$url" --ca "$tmp/ca.pem" --timeout 120 pub "$topic" \
    < "$tmp/payloads" > /dev/null
  wait "$sub"
  end=$(now)
  local got
  got=$(grep -c '"event":"message"' "$tmp/sub.out")
  [ "$got" -eq "$N" ] || { echo "$kind: subscriber got $got of $N" >&2; exit 1; }
  rm -f "$tmp/sub.out"
  echo "$N $start $end" | awk '{ printf "%.0f\n", $1 / ($3 - $2) }'
}

declare -A RATES
for round in $(seq "$ROUNDS"); do
  for k in "${KINDS[@]}"; do
    RATES[$k]+="$(run_one "$k" "bench.$k.$round") "
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

tcp=$(echo "${RATES[tcp]}" | median)
echo "ringbus pub/sub over each transport: $N messages of $SIZE bytes per run, median of $ROUNDS rounds"
echo "machine: $(nproc) CPUs, $(uname -sr), ringbusd $("$RINGBUSD" --version | cut -d' ' -f2)"
printf '%-10s %12s %10s   %s\n' transport "msg/s" "vs tcp" "rounds (msg/s)"
for k in "${KINDS[@]}"; do
  m=$(echo "${RATES[$k]}" | median)
  printf '%-10s %12s %9.2fx   %s\n' "$k://" "$m" "$(echo "$m $tcp" | awk '{ print $1 / $2 }')" \
    "${RATES[$k]}"
done
