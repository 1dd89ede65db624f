#!/usr/bin/env bash
# Cross-node figures of the replica plane (docs/BENCHMARKS.md, "Cluster"):
# two ringbusd nodes in one cluster on one throwaway Postgres 15, and two
# nats-server nodes in one NATS cluster (routes), all on loopback. Each
# figure runs same-node (publisher and subscriber on node 1) and
# cross-node (publisher on node 1, subscriber on node 2, `--sub-url`), for
# both systems, interleaved round by round, with the same bench engine:
#   pubsub 1 -> 1, 256 B, unpaced (deliveries/s)
#   fanout 1 -> 4, 256 B, unpaced (deliveries/s; the 4 subscribers on one node)
#   latency at 10 000 msg/s, 256 B (p50/p99 from the intended send time)
# ringbus acks after the Postgres commit (default durability); core NATS has
# no store. Not part of `make test`. Needs root (initdb runs as postgres).
# PG_SYNC=off sets synchronous_commit = off (acks no longer wait for the
# disk; the replica plane's own cost shows).
# Usage: [ROUNDS=3] [COUNT=300000] [PG_SYNC=off] [OUT=file] [RINGBUS_BUILD=dir] bench/cluster.sh
set -euo pipefail

ROUNDS=${ROUNDS:-3}
COUNT=${COUNT:-300000}
PG_BIN=/usr/lib/postgresql/15/bin
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${RINGBUS_BUILD:-$ROOT/build/release}
cd "$ROOT"

if [ -z "${RINGBUS_BUILD:-}" ]; then make -s build; fi
make -s -f bench/Makefile BUILDDIR="$BUILD" "$BUILD/peerload"

DIR=$(mktemp -d /tmp/rbclbench-XXXXXX)
chmod 755 "$DIR"
chown postgres:postgres "$DIR"
port() { python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
PIDS=()
PG_PID=
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    if [ -n "$PG_PID" ]; then
        kill -INT "$PG_PID" 2>/dev/null || true
        while kill -0 "$PG_PID" 2>/dev/null; do sleep 0.1; done
    fi
    rm -rf "$DIR"
}
trap cleanup EXIT

PG_PORT=$(port)
runuser -u postgres -- "$PG_BIN/initdb" -D "$DIR/data" -A trust -U postgres -E UTF8 \
    --no-instructions >/dev/null
printf "%s\n" "listen_addresses = ''" "port = $PG_PORT" "unix_socket_directories = '$DIR'" \
    "shared_buffers = 512MB" "max_wal_size = 4GB" >>"$DIR/data/postgresql.conf"
if [ "${PG_SYNC:-on}" = off ]; then
    # The replica plane's own cost, without waiting for the disk per commit.
    echo "synchronous_commit = off" >>"$DIR/data/postgresql.conf"
fi
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/pg.log" -w start >/dev/null
PG_PID=$(head -1 "$DIR/data/postmaster.pid")
"$PG_BIN/psql" -X -q -h "$DIR" -p "$PG_PORT" -U postgres -d postgres -c "CREATE DATABASE bench"
CONNINFO="host=$DIR port=$PG_PORT dbname=bench user=postgres"

# Two ringbusd nodes: 1 shard each (four server processes share two cores).
printf "%s\n" "bench-cluster-secret-0123456789abcdef0123" >"$DIR/secret"
chmod 600 "$DIR/secret"
RB_PORT=("$(port)" "$(port)")
REPLICA=("$(port)" "$(port)")
for i in 0 1; do
    j=$((1 - i))
    printf "%s\n" "shards = 1" 'log_level = "info"' \
        "[limits]" "send_queue_bytes = 67108864" \
        "[storage]" 'backend = "postgres"' "[storage.postgres]" "conninfo = \"$CONNINFO\"" \
        "[cluster]" "node_id = $((i + 1))" 'cluster_id = "bench"' "secret_file = \"$DIR/secret\"" \
        'address = "127.0.0.1"' "port = ${REPLICA[$i]}" \
        "[[cluster.peer]]" "id = $((j + 1))" 'address = "127.0.0.1"' "port = ${REPLICA[$j]}" \
        "[[listener]]" 'transport = "tcp"' 'address = "127.0.0.1"' "port = ${RB_PORT[$i]}" \
        >"$DIR/rb$i.toml"
    "$BUILD/ringbusd" --config "$DIR/rb$i.toml" >"$DIR/rb$i.log" 2>&1 &
    PIDS+=($!)
done
for i in 0 1; do
    for _ in $(seq 300); do
        if grep -q "ready:" "$DIR/rb$i.log"; then break; fi
        sleep 0.1
    done
done
for _ in $(seq 300); do
    if grep -q "link to node 2 (.*) up" "$DIR/rb0.log"; then break; fi
    sleep 0.1
done

# Two nats-server nodes joined by routes.
NATS_PORT=("$(port)" "$(port)")
ROUTE=("$(port)" "$(port)")
for i in 0 1; do
    j=$((1 - i))
    nats-server -a 127.0.0.1 -p "${NATS_PORT[$i]}" -cluster "nats://127.0.0.1:${ROUTE[$i]}" \
        -routes "nats://127.0.0.1:${ROUTE[$j]}" >"$DIR/nats$i.log" 2>&1 &
    PIDS+=($!)
done
for _ in $(seq 300); do
    if grep -q "Route connection created" "$DIR/nats0.log" &&
        grep -q "Route connection created" "$DIR/nats1.log"; then break; fi
    sleep 0.1
done
sleep 1

RB=(tcp://127.0.0.1:${RB_PORT[0]} tcp://127.0.0.1:${RB_PORT[1]})
NA=(nats://127.0.0.1:${NATS_PORT[0]} nats://127.0.0.1:${NATS_PORT[1]})
run() { # system where figure args...
    local sys=$1 where=$2
    shift 2
    local url sub
    if [ "$sys" = ringbus ]; then url=${RB[0]}; else url=${NA[0]}; fi
    if [ "$where" = same ]; then sub=$url; elif [ "$sys" = ringbus ]; then sub=${RB[1]}; else sub=${NA[1]}; fi
    local prefix="r$RANDOM$RANDOM"
    if [ "$sys" = ringbus ]; then
        "$BUILD/ringbus" --url "$url" bench "$@" --sub-url "$sub" --topic-prefix "$prefix" --json
    else
        "$BUILD/peerload" --url "$url" "$@" --sub-url "$sub" --topic-prefix "$prefix" --json
    fi | sed "s/^{/{\"where\":\"$where\",\"round\":$round,/"
}

OUT=${OUT:-$ROOT/bench/results/cluster.jsonl}
: >"$OUT"
# Odd rounds run same-node first, even rounds cross-node first.
for round in $(seq "$ROUNDS"); do
    order="same cross"
    if [ $((round % 2)) -eq 0 ]; then order="cross same"; fi
    for sys in ringbus nats; do
        for where in $order; do
            run "$sys" "$where" pubsub --size 256 --count "$COUNT" --window 4096 >>"$OUT" || true
            run "$sys" "$where" fanout --subscribers 4 --size 256 --count "$((COUNT / 3))" \
                --window 4096 >>"$OUT" || true
            run "$sys" "$where" latency --size 256 --rate 10000 --count 50000 >>"$OUT" || true
        done
    done
done
python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(sys_, where, mode, key):
    v = [r[key] for r in rows if r.get("system") == sys_ and r["where"] == where
         and r["mode"] == mode and r.get("complete", True) and key in r]
    return (statistics.median(v), len(v)) if v else (float("nan"), 0)
for s in ("ringbus", "nats"):
    for mode, key in (("pubsub", "msgs_per_s"), ("fanout", "msgs_per_s"), ("latency", "p50_us"),
                      ("latency", "p99_us")):
        a, na = med(s, "same", mode, key)
        b, nb = med(s, "cross", mode, key)
        print(f"{s:8} {mode:8} {key:17} same {a:12.0f} ({na})  cross {b:12.0f} ({nb})  "
              f"cross/same {b / a if a else float('nan'):.2f}")
EOF
