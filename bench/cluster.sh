#!/usr/bin/env bash
# Cross-node figures of the replica plane (docs/BENCHMARKS.md, "Cluster"):
# three ringbusd nodes in one cluster plus one standalone ringbusd (no
# [cluster]), all on one throwaway Postgres 15, and three nats-server nodes
# in one NATS cluster (routes) plus one standalone nats-server, all on
# loopback. Each figure runs in three places, for both systems, interleaved
# round by round (the order rotates), with the same bench engine:
#   single  publisher and subscribers on the standalone server
#   same    publisher and subscribers on cluster node 1 (its peers idle)
#   cross   publisher on node 1, subscribers round-robin on nodes 2 and 3
#           (two `--sub-url`)
# The figures:
#   fanout 1 -> 4, 256 B, unpaced (deliveries/s; cross: 2 on node 2, 2 on node 3)
#   latency at 10 000 msg/s, 256 B, 2 subscribers (cross: one on node 2, one
#           on node 3; p50/p99 over both from the intended send time)
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

# Three ringbusd nodes in a full mesh and one standalone: 1 shard each
# (the server processes share two cores).
printf "%s\n" "bench-cluster-secret-0123456789abcdef0123" >"$DIR/secret"
chmod 600 "$DIR/secret"
RB_PORT=("$(port)" "$(port)" "$(port)" "$(port)")
REPLICA=("$(port)" "$(port)" "$(port)")
for i in 0 1 2 3; do
    {
        printf "%s\n" "shards = 1" 'log_level = "info"' \
            "[limits]" "send_queue_bytes = 67108864" \
            "[storage]" 'backend = "postgres"' "[storage.postgres]" "conninfo = \"$CONNINFO\""
        if [ "$i" -lt 3 ]; then
            printf "%s\n" "[cluster]" "node_id = $((i + 1))" 'cluster_id = "bench"' \
                "secret_file = \"$DIR/secret\"" 'address = "127.0.0.1"' "port = ${REPLICA[$i]}"
            for j in 0 1 2; do
                if [ "$j" -ne "$i" ]; then
                    printf "%s\n" "[[cluster.peer]]" "id = $((j + 1))" 'address = "127.0.0.1"' \
                        "port = ${REPLICA[$j]}"
                fi
            done
        fi
        printf "%s\n" "[[listener]]" 'transport = "tcp"' 'address = "127.0.0.1"' \
            "port = ${RB_PORT[$i]}"
    } >"$DIR/rb$i.toml"
    "$BUILD/ringbusd" --config "$DIR/rb$i.toml" >"$DIR/rb$i.log" 2>&1 &
    PIDS+=($!)
done
for i in 0 1 2 3; do
    for _ in $(seq 300); do
        if grep -q "ready:" "$DIR/rb$i.log"; then break; fi
        sleep 0.1
    done
done
# Each node's links to its two peers.
for i in 0 1 2; do
    for _ in $(seq 300); do
        if [ "$(grep -c "link to node .* up" "$DIR/rb$i.log")" -ge 2 ]; then break; fi
        sleep 0.1
    done
    if [ "$(grep -c "link to node .* up" "$DIR/rb$i.log")" -lt 2 ]; then
        echo "cluster.sh: node $((i + 1)) has not both links up:" >&2
        cat "$DIR/rb$i.log" >&2
        exit 1
    fi
done

# Three nats-server nodes joined by routes, and one alone.
NATS_PORT=("$(port)" "$(port)" "$(port)" "$(port)")
ROUTE=("$(port)" "$(port)" "$(port)")
for i in 0 1 2; do
    routes=
    for j in 0 1 2; do
        if [ "$j" -ne "$i" ]; then routes="$routes${routes:+,}nats://127.0.0.1:${ROUTE[$j]}"; fi
    done
    nats-server -a 127.0.0.1 -p "${NATS_PORT[$i]}" -cluster "nats://127.0.0.1:${ROUTE[$i]}" \
        -routes "$routes" >"$DIR/nats$i.log" 2>&1 &
    PIDS+=($!)
done
nats-server -a 127.0.0.1 -p "${NATS_PORT[3]}" >"$DIR/nats3.log" 2>&1 &
PIDS+=($!)
for i in 0 1 2; do
    for _ in $(seq 300); do
        if [ "$(grep -c "Route connection created" "$DIR/nats$i.log")" -ge 2 ]; then break; fi
        sleep 0.1
    done
done
sleep 1

RB=("tcp://127.0.0.1:${RB_PORT[0]}" "tcp://127.0.0.1:${RB_PORT[1]}"
    "tcp://127.0.0.1:${RB_PORT[2]}" "tcp://127.0.0.1:${RB_PORT[3]}")
NA=("nats://127.0.0.1:${NATS_PORT[0]}" "nats://127.0.0.1:${NATS_PORT[1]}"
    "nats://127.0.0.1:${NATS_PORT[2]}" "nats://127.0.0.1:${NATS_PORT[3]}")
run() { # system where figure args...
    local sys=$1 where=$2
    shift 2
    local -a u
    if [ "$sys" = ringbus ]; then u=("${RB[@]}"); else u=("${NA[@]}"); fi
    local url=${u[0]}
    local -a sub=(--sub-url "${u[0]}")
    case $where in
    single) url=${u[3]} sub=(--sub-url "${u[3]}") ;;
    cross) sub=(--sub-url "${u[1]}" --sub-url "${u[2]}") ;;
    esac
    local prefix="r$RANDOM$RANDOM"
    if [ "$sys" = ringbus ]; then
        "$BUILD/ringbus" --url "$url" bench "$@" "${sub[@]}" --topic-prefix "$prefix" --json
    else
        "$BUILD/peerload" --url "$url" "$@" "${sub[@]}" --topic-prefix "$prefix" --json
    fi | sed "s/^{/{\"where\":\"$where\",\"round\":$round,/"
}

OUT=${OUT:-$ROOT/bench/results/cluster3.jsonl}
: >"$OUT"
# The order of the three places rotates from round to round.
WHERES=(single same cross)
for round in $(seq "$ROUNDS"); do
    order=()
    for k in 0 1 2; do order+=("${WHERES[$(((round + k) % 3))]}"); done
    for sys in ringbus nats; do
        for where in "${order[@]}"; do
            run "$sys" "$where" fanout --subscribers 4 --size 256 --count "$((COUNT / 3))" \
                --window 4096 >>"$OUT" || true
            run "$sys" "$where" latency --subscribers 2 --size 256 --rate 10000 --count 50000 \
                >>"$OUT" || true
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
def per_round(sys_, mode, key, base):
    # The median over rounds of each round's cross/base (one round's
    # places ran within a minute of each other).
    by = {}
    for r in rows:
        if r.get("system") == sys_ and r["mode"] == mode and r.get("complete", True) and key in r:
            by.setdefault(r["round"], {})[r["where"]] = r[key]
    v = [w["cross"] / w[base] for w in by.values() if w.get(base) and "cross" in w]
    return statistics.median(v) if v else float("nan")
for s in ("ringbus", "nats"):
    for mode, key in (("fanout", "msgs_per_s"), ("latency", "p50_us"), ("latency", "p99_us")):
        a, na = med(s, "single", mode, key)
        m, nm = med(s, "same", mode, key)
        b, nb = med(s, "cross", mode, key)
        print(f"{s:8} {mode:8} {key:11} single {a:10.0f} ({na})  same {m:10.0f} ({nm})  "
              f"cross {b:10.0f} ({nb})  cross/single {b / a if a else float('nan'):.2f} "
              f"(per round {per_round(s, mode, key, 'single'):.2f})  "
              f"cross/same {b / m if m else float('nan'):.2f} "
              f"(per round {per_round(s, mode, key, 'same'):.2f})")
EOF
