#!/usr/bin/env bash
# Where ringbusd's time goes per message: starts a daemon (the benchmark's
# config), warms it up, then runs `ringbus bench pubsub` (1 -> 1, 256 B,
# 1M messages by default) under `perf stat` (task-clock, context switches,
# syscalls) and `perf record -e cpu-clock -g` (software sampling: this VM
# has no hardware counters, and valgrind cannot run an io_uring daemon), and
# prints the daemon's CPU time per message split into categories.
#
#   bench/profile.sh                     # pubsub 1 -> 1, 256 B
#   MODE=fanout SIZE=256 bench/profile.sh
#
# Environment: RINGBUSD, RINGBUS (default build/release), COUNT, SIZE, MODE.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RINGBUSD=${RINGBUSD:-$ROOT/build/release/ringbusd}
RINGBUS=${RINGBUS:-$ROOT/build/release/ringbus}
COUNT=${COUNT:-1000000}
SIZE=${SIZE:-256}
MODE=${MODE:-pubsub}
TMP=$(mktemp -d /tmp/ringbus-profile.XXXXXX)
PID=""

cleanup() {
  local i
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID"
    for i in $(seq 1 100); do
      kill -0 "$PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$PID" 2>/dev/null && kill -KILL "$PID"
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'shards = %s\nlog_level = "warn"\n[limits]\nsend_queue_bytes = 67_108_864\n[[listener]]\ntransport = "tcp"\naddress = "127.0.0.1"\nport = %s\n' \
  "$(nproc)" "$PORT" >"$TMP/rb.toml"
"$RINGBUSD" --config "$TMP/rb.toml" >"$TMP/rb.log" 2>&1 &
PID=$!
for i in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
URL="tcp://127.0.0.1:$PORT"
bench() { "$RINGBUS" --url "$URL" bench "$MODE" --size "$SIZE" --count "$1" --json --duration 60; }
bench 200000 >/dev/null # warm-up: pools, topic state, page faults

perf stat -e task-clock,context-switches,raw_syscalls:sys_enter -x, -o "$TMP/stat" -p "$PID" &
STAT=$!
perf record -q -F 4999 -e cpu-clock -g -o "$TMP/perf.data" -p "$PID" >/dev/null 2>&1 &
REC=$!
sleep 0.5
bench "$COUNT" >"$TMP/fig"
sleep 0.2
kill -INT "$STAT" "$REC"
wait "$STAT" "$REC" 2>/dev/null || true
perf report -i "$TMP/perf.data" --no-children --sort dso,sym -g none --stdio 2>/dev/null \
  | grep '%' >"$TMP/flat"

python3 - "$TMP/stat" "$TMP/flat" "$TMP/fig" <<'EOF'
import json, re, sys

stat, flat, fig = sys.argv[1:4]
fig = json.loads(open(fig).read())
# pubsub: per published message (its ack and delivery included); other
# modes: per publish plus per delivery.
published = fig.get("acked", fig.get("published", 0))
messages = published if fig["mode"] == "pubsub" else published + fig["delivered"]
counters = {}
for line in open(stat):
    parts = line.strip().split(",")
    if len(parts) > 3 and parts[0] not in ("", "<not counted>"):
        counters[parts[2]] = float(parts[0])
cpu_ms = counters.get("task-clock", 0.0)

CATS = [
    ("kernel: socket copies (send/recv payload copies)",
     r"^\[k\] (_copy_(to|from)_iter|__check_object_size|__virt_addr_valid|__skb_datagram_iter|skb_copy.*|copy_user.*|rep_movs.*)$"),
    ("kernel: io_uring and syscall entry", r"^\[k\] (io_.*|__io_.*|__do_sys_io_uring_enter|do_syscall_64|entry_.*|fget|fput|syscall_.*|__x64_sys.*)$"),
    ("kernel: wakeups, scheduling, locks", r"^\[k\] (finish_task_switch.*|_raw_spin.*|try_to_wake_up|__schedule|schedule.*|read_tsc|.*wake.*|update_.*|enqueue_.*|dequeue_.*|pick_next.*)$"),
    ("kernel: page faults (zeroing first-touched memory)", r"^\[k\] (clear_page.*|.*page_fault.*|.*handle_mm_fault|do_anonymous_page|.*alloc_pages.*|get_page_from_freelist|rmqueue.*|folio_.*|.*lru.*|release_pages|free_unref.*|__mem_cgroup.*|mem_cgroup_.*|zap_.*|unmap_.*|.*munmap.*|.*madvise.*|.*mmap.*)$"),
    ("kernel: TCP/IP loopback stack", r"^\[k\] .*"),
    ("user: memcpy of payloads", r"^\[\.\] (__memmove.*|__memcpy.*|memcpy@plt|memmove@plt)$"),
    ("user: codec (frame decode/encode, UTF-8 and topic checks)", r"^\[\.\] (rb_frame_.*|rd_.*|wr_.*|put_header|utf8_.*|rb_utf8.*|rb_topic_validate|assert_topic|check_header|rb_wire_.*)$"),
    ("user: routing (owner, cross-shard records, acks, hashing)", r"^\[\.\] (rb_owner_.*|on_publish_record|on_ack_record|topic_get|send_ack|rb_outbox_.*|append_done|start_append|fan_out|build_block|rb_topic_owner_shard|name_hash|rb_hash.*|__memcmp.*|rb_conn_lookup|release_src|rb_xmsg_.*|rb_shard_.*|drain_inboxes|dispatch_xmsg|send_wakes|on_remote|outbox_.*|push_now|rb_spsc_.*|fill_batch|topic_mark_dirty|rb_owner_flush|shard_flush|rb_block_.*)$"),
    ("user: memory store", r"^\[\.\] (memory_.*|evict_.*|mem_.*)$"),
    ("user: stream delivery", r"^\[\.\] (send_block|on_block|rb_stream_.*|pending_.*|catchup_.*|cq_.*|sub_find)$"),
    ("user: connections, send queue, event loop", r"^\[\.\] .*"),
]
totals = {name: 0.0 for name, _ in CATS}
for line in open(flat):
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(\[[k.]\]\s+.*)$", line)
    if not m:
        continue
    pct, sym = float(m.group(1)), m.group(3).strip()
    for name, rx in CATS:
        if re.match(rx, sym):
            totals[name] += pct
            break
ns_per_msg = cpu_ms * 1e6 / messages if messages else 0
rate = fig.get("msgs_per_s", fig.get("achieved_rate", 0))
print(f"figure: {fig['mode']} size {fig['size']} B, {rate:.0f} msg/s, "
      f"{messages} messages")
print(f"ringbusd CPU: {cpu_ms:.0f} ms = {ns_per_msg:.0f} ns per message; "
      f"syscalls {counters.get('raw_syscalls:sys_enter', 0) / messages:.4f}/msg; "
      f"context switches {counters.get('context-switches', 0) / messages:.4f}/msg")
print("| where | share of daemon CPU | ns per message |")
print("|---|---|---|")
for name, _ in CATS:
    print(f"| {name} | {totals[name]:.1f}% | {totals[name] * ns_per_msg / 100:.0f} |")
print()
print("top symbols (self time):")
for line in open(flat).readlines()[:25]:
    print("   " + line.strip())
EOF
