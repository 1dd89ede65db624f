#!/usr/bin/env bash
# Postgres benchmarks of ringbus (docs/BENCHMARKS.md, "Postgres"), against
# plain libpq programs on the same throwaway Postgres 15 cluster, the same
# table and the same rows:
#   1. persisted publish throughput, 256-byte payloads, every publish acked
#      after its commit (ringbus bench pubsub, no subscribers) vs the raw
#      batched-insert rate (bench/pg_raw.c insert: 1024 rows per
#      transaction, unnest of a binary bytea array);
#   2. catch-up replay of COUNT stored messages to one subscriber: stored by
#      ringbus bench catchup, then replayed from cursor 0 by
#      bench/pg_replay.c (libringbus) vs a plain keyset-paging read of the
#      same rows (pg_raw read), with the daemon's [catchup] rows_per_topic at
#      1024 and at the default 64, the raw page size the same.
# Each pair runs RUNS times, interleaved; the medians are compared.
# Not part of `make test`. Needs root (initdb runs as the postgres user).
# Usage: [RUNS=3] [RINGBUS_BUILD=dir] bench/pg_bench.sh [PUBLISH_COUNT [CATCHUP_COUNT]]
set -euo pipefail

PUB_COUNT=${1:-300000}
CATCHUP_COUNT=${2:-1000000}
RUNS=${RUNS:-3}
SIZE=256
PG_BIN=/usr/lib/postgresql/15/bin
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${RINGBUS_BUILD:-$ROOT/build/release}
cd "$ROOT"

if [ -z "${RINGBUS_BUILD:-}" ]; then make -s build; fi
cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -I. -isystem /usr/include/postgresql \
    bench/pg_raw.c storage/pgwire.c common/err.c common/log.c -lpq -o "$BUILD/pg_raw"
cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -I. bench/pg_replay.c "$BUILD/libringbus.a" \
    -lwolfssl -lpthread -lm -o "$BUILD/pg_replay"

DIR=$(mktemp -d /tmp/rbpgbench-XXXXXX)
chmod 755 "$DIR"
chown postgres:postgres "$DIR"
PORT=$((20000 + RANDOM % 20000))
PG_PID=
RB_PID=
cleanup() {
    if [ -n "$RB_PID" ]; then kill "$RB_PID" 2>/dev/null || true; wait "$RB_PID" 2>/dev/null || true; fi
    if [ -n "$PG_PID" ]; then
        kill -INT "$PG_PID" 2>/dev/null || true
        while kill -0 "$PG_PID" 2>/dev/null; do sleep 0.1; done
    fi
    rm -rf "$DIR"
}
trap cleanup EXIT

# Default durability (fsync on, synchronous_commit on): the numbers are
# about committed data.
runuser -u postgres -- "$PG_BIN/initdb" -D "$DIR/data" -A trust -U postgres -E UTF8 \
    --no-instructions >/dev/null
printf "%s\n" "listen_addresses = ''" "port = $PORT" "unix_socket_directories = '$DIR'" \
    "shared_buffers = 512MB" "max_wal_size = 4GB" >>"$DIR/data/postgresql.conf"
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/pg.log" -w start >/dev/null
PG_PID=$(head -1 "$DIR/data/postmaster.pid")
PSQL=("$PG_BIN/psql" -X -q -A -t -h "$DIR" -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE bench"
CONNINFO="host=$DIR port=$PORT dbname=bench user=postgres"
OUT=$DIR/out

start_daemon() { # $1: [catchup] rows_per_topic; sets URL
    RB_PORT=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    URL=tcp://127.0.0.1:$RB_PORT
    printf "%s\n" "shards = 2" 'log_level = "info"' "[catchup]" "rows_per_topic = $1" \
        "[storage]" 'backend = "postgres"' "[storage.postgres]" "conninfo = \"$CONNINFO\"" \
        "pool_size = 2" "[[listener]]" 'transport = "tcp"' 'address = "127.0.0.1"' \
        "port = $RB_PORT" >"$DIR/ringbusd.toml"
    "$BUILD/ringbusd" --config "$DIR/ringbusd.toml" >"$DIR/ringbusd.log" 2>&1 &
    RB_PID=$!
    for _ in $(seq 300); do
        if grep -q "ready:" "$DIR/ringbusd.log"; then return 0; fi
        if ! kill -0 "$RB_PID" 2>/dev/null; then cat "$DIR/ringbusd.log"; exit 1; fi
        sleep 0.1
    done
    exit 1
}

stop_daemon() {
    kill "$RB_PID"
    wait "$RB_PID" || true
    RB_PID=
}

# The median of the numbers after "$1=" or "$1 " in the lines of file $2.
median() {
    python3 - "$1" "$2" <<'PY'
import re, statistics, sys
key, path = sys.argv[1], sys.argv[2]
vals = [float(m.group(1)) for line in open(path)
        for m in [re.search(re.escape(key) + r"[= ]\s*([0-9.]+)", line)] if m]
print(f"{statistics.median(vals):.0f}" if vals else "0")
PY
}

ratio() { python3 -c "print(round($1 / max($2, 1), 2))"; }

echo "== machine: $(nproc) cores, kernel $(uname -r),$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "== 1. persisted publish throughput: $PUB_COUNT x $SIZE B, acked after commit, $RUNS runs"
start_daemon 1024
for i in $(seq "$RUNS"); do
    "$BUILD/ringbus" --url "$URL" bench pubsub --subscribers 0 --publishers 4 --topics 4 \
        --count "$PUB_COUNT" --size "$SIZE" --window 4096 --duration 600 --topic-prefix "pub$i" |
        grep pub_msgs_per_s | tee -a "$OUT.pub"
    "$BUILD/pg_raw" "$CONNINFO" insert "$PUB_COUNT" 1024 "$SIZE" 1 | tee -a "$OUT.raw1"
    "$BUILD/pg_raw" "$CONNINFO" insert "$PUB_COUNT" 1024 "$SIZE" 4 | tee -a "$OUT.raw4"
    # Four connections, as many as the daemon has (2 shards x pool_size 2).
    PIDS=()
    for k in 1 2 3 4; do
        "$BUILD/pg_raw" "$CONNINFO" insert $((PUB_COUNT / 4)) 1024 "$SIZE" 1 $((-100 - k)) \
            >"$OUT.par$k" &
        PIDS+=($!)
    done
    wait "${PIDS[@]}"
    SLOWEST=$(cat "$OUT".par? | python3 -c \
        "import re,sys; print(max(float(re.search(r'seconds=([0-9.]+)', l).group(1)) for l in sys.stdin))")
    echo "insert 4 connections rows=$PUB_COUNT seconds=$SLOWEST rows_per_s=$(python3 -c \
        "print(round($PUB_COUNT / $SLOWEST))")" | tee -a "$OUT.rawc4"
done
PUB=$(median pub_msgs_per_s "$OUT.pub")
RAW1=$(median rows_per_s "$OUT.raw1")
RAW4=$(median rows_per_s "$OUT.raw4")
RAWC4=$(median rows_per_s "$OUT.rawc4")
BEST=$((RAW1 > RAW4 ? RAW1 : RAW4))
BEST=$((BEST > RAWC4 ? BEST : RAWC4))
echo "publish medians: ringbus $PUB msg/s; raw $RAW1 rows/s (1 connection, 1 in flight)," \
    "$RAW4 rows/s (1 connection, 4 pipelined), $RAWC4 rows/s (4 connections);" \
    "ratio to the best raw $(ratio "$PUB" "$BEST")"

echo "== 2. catch-up replay of $CATCHUP_COUNT stored messages to one subscriber, $RUNS runs"
"$BUILD/ringbus" --url "$URL" bench catchup --count "$CATCHUP_COUNT" --size "$SIZE" \
    --duration 1200 --topic-prefix replay | grep -E "msgs_per_s"
TOPIC=$("${PSQL[@]}" -d bench -c "SELECT name FROM topics WHERE name LIKE 'replay.catchup.%'")
# Both readers then see the same settled pages (hint bits, visibility map).
"${PSQL[@]}" -d bench -c "VACUUM ANALYZE messages"
for rows in 1024 64; do
    stop_daemon
    start_daemon "$rows"
    for i in $(seq "$RUNS"); do
        "$BUILD/pg_replay" "$URL" "$TOPIC" | tee -a "$OUT.replay$rows"
        "$BUILD/pg_raw" "$CONNINFO" read "$TOPIC" "$rows" | tee -a "$OUT.read$rows"
    done
    R=$(median rows_per_s "$OUT.replay$rows")
    W=$(median rows_per_s "$OUT.read$rows")
    echo "catch-up medians, $rows rows per query: ringbus $R msg/s; raw paging $W rows/s;" \
        "ratio $(ratio "$R" "$W")"
done
