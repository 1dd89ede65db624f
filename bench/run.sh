#!/usr/bin/env bash
# ringbus side by side with NATS (core and JetStream file storage) and Redis
# (PUBLISH/SUBSCRIBE), in one run on this machine's loopback:
#
#   bench/run.sh                 # full run: every figure REPS times
#   REPS=1 QUICK=1 bench/run.sh  # a fast look (small counts)
#
# It builds what it needs, starts ringbusd, nats-server (twice: core, and
# -js with a temp store dir), redis-server and, when the daemon has the
# postgres backend, a throwaway Postgres cluster with a second ringbusd on
# it; runs the same workloads against each with `ringbus bench` and
# bench/peerload (same engine, same sizes, counts and publish window);
# prints medians and ratios ringbus/peer; writes bench/results/latest.json
# (+ latest.md); regenerates docs/bench/*.svg with gnuplot. Every server it
# starts is stopped by PID on exit; every wait is bounded.
#
# Environment: RINGBUSD, RINGBUS, PEERLOAD (binaries; default build/release;
# BUILD=0 skips building them), REPS (5),
# SIZES ("16 256 1024 4096"), QUICK (1 = small counts), PG (auto|off),
# FIGURES (a subset of "conns pubsub fanout latency persist catchup"),
# RESULTS and PLOTS (output directories).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REPS=${REPS:-5}
SIZES=${SIZES:-"16 256 1024 4096"}
QUICK=${QUICK:-0}
PG=${PG:-auto}
WINDOW=4096
DURATION=60
LAT_RATE=10000
RINGBUSD=${RINGBUSD:-$ROOT/build/release/ringbusd}
RINGBUS=${RINGBUS:-$ROOT/build/release/ringbus}
PEERLOAD=${PEERLOAD:-$ROOT/build/release/peerload}
RESULTS=${RESULTS:-$ROOT/bench/results}
PLOTS=${PLOTS:-$ROOT/docs/bench}
FIGURES=${FIGURES:-"conns pubsub fanout latency persist catchup"}

if [ "$QUICK" = 1 ]; then
  FANOUT_COUNT=50000; LAT_COUNT=20000; PERSIST_COUNT=50000; CATCHUP_COUNT=50000; CONNS=1000
else
  FANOUT_COUNT=300000; LAT_COUNT=100000; PERSIST_COUNT=300000; CATCHUP_COUNT=100000; CONNS=5000
fi

# Messages per 1:1 throughput figure: ~1 s of work each on a small machine.
count_for_size() {
  local n
  case "$1" in
    16|256) n=1000000 ;;
    1024) n=500000 ;;
    *) n=200000 ;;
  esac
  [ "$QUICK" = 1 ] && n=$((n / 10))
  echo "$n"
}

say() { printf 'run.sh: %s\n' "$*" >&2; }

for tool in nats-server redis-server gnuplot python3 timeout; do
  command -v "$tool" >/dev/null || { say "missing $tool (scripts/setup.sh installs it)"; exit 1; }
done

# ---- build ----
# BUILD=0 uses the binaries as they are (e.g. a snapshot built elsewhere).
if [ "${BUILD:-1}" = 1 ]; then
  make --no-print-directory build/release/ringbusd build/release/ringbus \
    build/release/libringbus.a >/dev/null
  make --no-print-directory -f bench/Makefile >/dev/null
fi
for bin in "$RINGBUSD" "$RINGBUS" "$PEERLOAD"; do
  [ -x "$bin" ] || { say "missing $bin (make; make -f bench/Makefile)"; exit 1; }
done

# ---- servers ----
TMP=$(mktemp -d /tmp/ringbus-bench.XXXXXX)
chmod 755 "$TMP"
PIDS=()

stop_pid() {
  local pid=$1 sig=${2:-TERM} i
  kill -0 "$pid" 2>/dev/null || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  say "pid $pid did not stop in 10 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    stop_pid "$pid"
  done
  if [ -n "${PG_PID:-}" ]; then
    stop_pid "$PG_PID" INT
  fi
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

# start_ringbusd NAME PORT EXTRA-TOML: sets STARTED_PID.
start_ringbusd() {
  local name=$1 port=$2
  printf 'shards = %s\nlog_level = "warn"\n%s\n[[listener]]\ntransport = "tcp"\naddress = "127.0.0.1"\nport = %s\n' \
    "$(nproc)" "$3" "$port" >"$TMP/$name.toml"
  "$RINGBUSD" --config "$TMP/$name.toml" >"$TMP/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  if ! wait_port "$port" "$pid"; then
    say "$name did not start: $(tail -3 "$TMP/$name.log")"
    return 1
  fi
  STARTED_PID=$pid
}

RB_PORT=$(free_port); NATS_PORT=$(free_port); JS_PORT=$(free_port); REDIS_PORT=$(free_port)
# The send queue matches NATS's default max_pending (64 MiB): ringbus gives
# publishers no backpressure from slow subscribers (DESIGN G4), and its
# default 8 MiB queue closes a 1:1 firehose of >= 1 KiB messages whenever the
# subscriber is descheduled for ~10 ms on a loaded 2-core machine.
LIMITS=$'[limits]\nsend_queue_bytes = 67_108_864'
start_ringbusd ringbusd "$RB_PORT" "$LIMITS" || exit 1
RB_PID=$STARTED_PID
nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$TMP/nats.log" 2>&1 &
NATS_PID=$!; PIDS+=("$NATS_PID")
mkdir -p "$TMP/js"
nats-server -a 127.0.0.1 -p "$JS_PORT" -js -sd "$TMP/js" >"$TMP/natsjs.log" 2>&1 &
JS_PID=$!; PIDS+=("$JS_PID")
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
  --daemonize no --logfile "$TMP/redis.log" >/dev/null 2>&1 &
REDIS_PID=$!; PIDS+=("$REDIS_PID")
wait_port "$NATS_PORT" "$NATS_PID" || { say "nats-server did not start"; exit 1; }
wait_port "$JS_PORT" "$JS_PID" || { say "nats-server -js did not start"; exit 1; }
wait_port "$REDIS_PORT" "$REDIS_PID" || { say "redis-server did not start"; exit 1; }

# Postgres: only when the daemon has the backend (it says so on --check-config).
RBPG_URL=""
start_postgres() {
  local bin pgport
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$bin" ] || return 1
  pgport=$(free_port)
  mkdir -p "$TMP/pg/sock"
  chown -R postgres:postgres "$TMP/pg" 2>/dev/null || true
  local as=()
  [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
  "${as[@]}" "$bin/initdb" -D "$TMP/pg/data" -A trust -U postgres -E UTF8 --no-instructions \
    >/dev/null || return 1
  # Durable defaults (fsync, synchronous_commit on): an ack means committed.
  printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\n" \
    "$pgport" "$TMP/pg/sock" >>"$TMP/pg/data/postgresql.conf"
  "${as[@]}" "$bin/pg_ctl" -D "$TMP/pg/data" -l "$TMP/pg/log" -w -t 30 start >/dev/null || return 1
  PG_PID=$(head -1 "$TMP/pg/data/postmaster.pid")
  "${as[@]}" "$bin/createdb" -h "$TMP/pg/sock" -p "$pgport" -U postgres ringbus || return 1
  local extra="$LIMITS\n[storage]\nbackend = \"postgres\"\n[storage.postgres]\nconninfo = \"host=$TMP/pg/sock port=$pgport dbname=ringbus user=postgres\""
  local port; port=$(free_port)
  printf 'shards = 1\n%b\n' "$extra" >"$TMP/pgcheck.toml"
  "$RINGBUSD" --check-config "$TMP/pgcheck.toml" >/dev/null 2>&1 || return 1
  start_ringbusd ringbusd-pg "$port" "$(printf '%b' "$extra")" || return 1
  RBPG_PID=$STARTED_PID
  RBPG_URL="tcp://127.0.0.1:$port"
}
if [ "$PG" != off ]; then
  start_postgres || say "ringbus on Postgres: not available (no postgres backend in $RINGBUSD yet, or Postgres failed to start)"
fi

RB="tcp://127.0.0.1:$RB_PORT"; NATS="nats://127.0.0.1:$NATS_PORT"
JS="js://127.0.0.1:$JS_PORT"; REDIS="redis://127.0.0.1:$REDIS_PORT"
RAW="$TMP/raw.jsonl"
: >"$RAW"

# run FIGURE REP SYSTEM URL MODE ARGS...: one figure, one JSON line in RAW.
run() {
  local fig=$1 rep=$2 sys=$3 url=$4 out rc=0
  shift 4
  local cmd=("$PEERLOAD" --url "$url")
  case "$sys" in
    ringbus*) cmd=("$RINGBUS" --url "$url" bench) ;;
  esac
  out=$(timeout -k 5 $((DURATION + 30)) "${cmd[@]}" "$@" --json --duration "$DURATION" \
    2>"$TMP/err") || rc=$?
  [ -n "$out" ] || out=null
  printf '{"figure":"%s","rep":%s,"system":"%s","rc":%s,"args":"%s","result":%s}\n' \
    "$fig" "$rep" "$sys" "$rc" "$*" "$out" >>"$RAW"
  [ "$rc" = 0 ] || say "$fig/$sys rep $rep: exit $rc: $(tail -2 "$TMP/err" | tr '\n' ' ')"
}

say "servers: ringbusd $RB_PID, nats $NATS_PID, nats-js $JS_PID, redis $REDIS_PID${RBPG_URL:+, ringbusd-pg $RBPG_PID}"
want() { [[ " $FIGURES " == *" $1 "* ]]; }

# Idle connections first, on fresh servers (RSS only grows afterwards).
if want conns; then
  run conns 1 ringbus "$RB" conns --count "$CONNS" --pid "$RB_PID"
  run conns 1 nats "$NATS" conns --count "$CONNS" --pid "$NATS_PID"
  run conns 1 redis "$REDIS" conns --count "$CONNS" --pid "$REDIS_PID"
fi

for rep in $(seq 1 "$REPS"); do
  say "repetition $rep of $REPS"
  for size in $SIZES; do
    want pubsub || break
    n=$(count_for_size "$size")
    for sys in ringbus:$RB nats:$NATS redis:$REDIS; do
      run "pubsub_$size" "$rep" "${sys%%:*}" "${sys#*:}" pubsub --size "$size" --count "$n" \
        --window "$WINDOW"
    done
  done
  for sys in ringbus:$RB nats:$NATS redis:$REDIS; do
    want fanout && run fanout8_256 "$rep" "${sys%%:*}" "${sys#*:}" fanout --subscribers 8 \
      --size 256 --count "$FANOUT_COUNT" --window "$WINDOW"
    want latency && run latency_256 "$rep" "${sys%%:*}" "${sys#*:}" latency --size 256 \
      --rate "$LAT_RATE" --count "$LAT_COUNT" --window "$WINDOW"
  done
  # Acked publishing without subscribers: ringbus-mem is the memory store
  # (a reference, not persisted), ringbus-pg is Postgres (committed).
  for sys in ringbus-mem:$RB nats-js:$JS ${RBPG_URL:+ringbus-pg:$RBPG_URL}; do
    want persist || break
    run persist_256 "$rep" "${sys%%:*}" "${sys#*:}" pubsub --subscribers 0 --size 256 \
      --count "$PERSIST_COUNT" --window "$WINDOW" --topic-prefix "bench.p$rep"
  done
  for sys in ringbus:$RB nats-js:$JS ${RBPG_URL:+ringbus-pg:$RBPG_URL}; do
    want catchup || break
    run catchup_256 "$rep" "${sys%%:*}" "${sys#*:}" catchup --size 256 \
      --count "$CATCHUP_COUNT" --window "$WINDOW" --topic-prefix "bench.c$rep"
  done
done

mkdir -p "$RESULTS" "$PLOTS"
DAEMON_REV=$("$RINGBUSD" --version 2>&1 | head -1 || true)
# The record names binaries relative to the repository, never by machine path.
rel() { case "$1" in "$ROOT"/*) echo "${1#"$ROOT"/}" ;; *) basename "$1" ;; esac; }
python3 bench/summarize.py "$RAW" "$RESULTS" "$PLOTS" "$TMP" \
  "RINGBUSD=$(rel "$RINGBUSD") ($DAEMON_REV) RINGBUS=$(rel "$RINGBUS") PEERLOAD=$(rel "$PEERLOAD") REPS=$REPS SIZES='$SIZES' QUICK=$QUICK FIGURES='$FIGURES' bench/run.sh"
if want pubsub && want latency; then
  gnuplot -e "datadir='$TMP'; outdir='$PLOTS'" bench/plots.gp
  say "wrote $RESULTS/latest.json, $RESULTS/latest.md, $PLOTS/throughput.svg, $PLOTS/latency.svg"
else
  say "wrote $RESULTS/latest.json, $RESULTS/latest.md (plots need the pubsub and latency figures)"
fi
