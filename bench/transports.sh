#!/usr/bin/env bash
# Pub/sub throughput of SIZE-byte messages (default 256) over tcp://, tls://,
# ws://, wss:// and quic://, each as a ratio of tcp:// in the same round
# (docs/BENCHMARKS.md, "Transports").
#
# One ringbusd (memory store) listens on every transport on 127.0.0.1, tls
# and wss twice: on OpenSSL (the default) and on wolfSSL. Each measurement is
# `ringbus bench pubsub` (the bench engine on libringbus: one publisher, one
# subscriber, N messages) over one transport; tls and wss use the client's
# TLS library of the same name as the listener's. Transports take turns
# within each round, so drift in the machine's load touches all of them
# alike; a transport's figure is the median of its per-round ratios to tcp
# (with their spread), never a ratio of medians.
#
#   bench/transports.sh [N] [ROUNDS] [SIZE]   (defaults 300000, 5 and 256)
#   RINGBUS_BUILD=build/release           (where ringbusd and ringbus are)
set -euo pipefail

N=${1:-300000}
ROUNDS=${2:-5}
SIZE=${3:-256}
BUILD=${RINGBUS_BUILD:-build/release}
RINGBUSD=$BUILD/ringbusd
RINGBUS=$BUILD/ringbus
# name: transport, server TLS library, client TLS library
KINDS=(tcp tls tls-wolfssl ws wss wss-wolfssl quic)

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
  # The one limit that differs from the defaults: an unpaced publisher
  # outruns the QUIC subscriber (its sends wait for the peer's acks) by more
  # than the default 8 MiB send queue, and the slow-consumer rule would
  # close it (G4). Every transport gets the same room.
  echo '[limits]'
  echo 'send_queue_bytes = 268435456'
  echo '[storage.memory]'
  echo "retention_messages = $((N + 1))"
  echo "retention_bytes = $((N * (SIZE + 256) + (1 << 20)))"
  for k in "${KINDS[@]}"; do
    PORT[$k]=$(free_port)
    printf '[[listener]]\ntransport = "%s"\naddress = "127.0.0.1"\nport = %s\n' "${k%%-*}" \
      "${PORT[$k]}"
    case $k in
      tls*|wss*|quic) printf 'cert = "%s"\nkey = "%s"\n' "$tmp/server.pem" "$tmp/server.key" ;;
    esac
    case $k in
      *-wolfssl) echo 'tls_library = "wolfssl"' ;;
    esac
  done
} > "$tmp/ringbusd.toml"
"$RINGBUSD" --config "$tmp/ringbusd.toml" > "$tmp/ringbusd.log" 2>&1 &
daemon=$!
for _ in $(seq 200); do
  grep -q "ready:" "$tmp/ringbusd.log" && break
  sleep 0.05
done
grep -q "ready:" "$tmp/ringbusd.log" || { cat "$tmp/ringbusd.log"; exit 1; }

# One measurement: prints messages per second (publish to delivery).
run_one() {
  local k=$1 lib=openssl
  case $k in *-wolfssl) lib=wolfssl ;; esac
  "$RINGBUS" --url "${k%%-*}://localhost:${PORT[$k]}" --ca "$tmp/ca.pem" --tls-library "$lib" \
    --timeout 120 bench pubsub --count "$N" --size "$SIZE" --topic-prefix "bench.$k.$2" --json |
    /usr/bin/python3 -c 'import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
assert r["complete"] and r["lost"] == 0 and r["order_errors"] == 0, r
print(int(r["msgs_per_s"]))'
}

declare -A RATES RATIOS
for round in $(seq "$ROUNDS"); do
  declare -A this
  for k in "${KINDS[@]}"; do
    this[$k]=$(run_one "$k" "$round")
    RATES[$k]+="${this[$k]} "
  done
  for k in "${KINDS[@]}"; do
    RATIOS[$k]+="$(echo "${this[$k]} ${this[tcp]}" | awk '{ printf "%.3f", $1 / $2 }') "
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
spread() { tr ' ' '\n' | grep -v '^$' | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }'; }

echo "ringbus bench pubsub over each transport: $N messages of $SIZE bytes per run, $ROUNDS rounds"
echo "machine: $(nproc) CPUs, $(uname -sr), ringbusd $("$RINGBUSD" --version | cut -d' ' -f2)"
printf '%-14s %12s %10s %14s\n' transport "msg/s (med)" "vs tcp" "ratio spread"
for k in "${KINDS[@]}"; do
  printf '%-14s %12s %9sx %14s\n' "$k" "$(echo "${RATES[$k]}" | median)" \
    "$(echo "${RATIOS[$k]}" | median)" "$(echo "${RATIOS[$k]}" | spread)"
done
