"""The postgres store against a throwaway Postgres 15 cluster (pg.py):
durable acks (G2) across kill -9, one order across two daemons (G1),
start-up and restarts of Postgres, errors that stay with their request, the
schema migrations, TLS and passwords, a slow Postgres that must not stall
the shard's loop, and retention. The stream suite (test_stream.py) runs on
this store too."""

import itertools
import os
import pathlib
import re
import subprocess
import threading
import time

import rbproto as rp
from conftest import RINGBUSD, Daemon
from pg import PG_BIN

SETUP_NAMES = itertools.count(1)

PAYLOAD = "p" * 200


def conn(d, timeout=10):
    c = rp.Conn("127.0.0.1", d.port, timeout=timeout)
    assert c.hello().kind == rp.STARTED
    return c


def stored(db, topic):
    """(seq, payload) rows of topic, oldest first, and the topic's head."""
    rows = db.psql(f"SELECT m.seq, convert_from(m.payload, 'UTF8') FROM messages m "
                   f"JOIN topics t ON t.id = m.topic_id WHERE t.name = '{topic}' ORDER BY m.seq")
    head = db.psql(f"SELECT head FROM topics WHERE name = '{topic}'")
    return [(int(s), p) for s, p in rows], int(head[0][0]) if head else 0


def history(d, topic, cursor=0, timeout=20):
    """Every (seq, payload) a history_only add of topic@cursor delivers,
    and the ERROR and TOPIC_ERROR frames of its wave."""
    c = conn(d)
    c.mutate(1, 1, adds=[(topic, cursor)], history_only=True)
    frames = c.recv_all_until(lambda f: f.kind == rp.CATCHUP_COMPLETE, timeout)
    errors = [f for f in frames if f.kind in (rp.ERROR, rp.TOPIC_ERROR)]
    msgs = [(s, bytes(p).decode()) for f in frames if f.kind == rp.MESSAGES
            for (_, s, p) in f["items"]]
    c.sock.close()
    return msgs, errors


def publish_all(c, items, start_corr=1):
    """Pipelines (topic, payload) publishes; returns {corr: frame}."""
    for i, (topic, payload) in enumerate(items):
        c.send(rp.encode_publish(start_corr + i, topic, payload))
    got = {}
    while len(got) < len(items):
        f = c.recv_until(lambda f: f.kind in (rp.PUBLISH_ACK, rp.ERROR))
        got[f.corr] = f
    return got


def assert_dense(db, topic):
    rows, head = stored(db, topic)
    assert [s for s, _ in rows] == list(range(1, head + 1)), f"{topic}: seqs not dense"
    return rows


# ---- durability ----

def test_acked_publishes_survive_kill9_dense_and_streamed_from_zero(make_daemon, pg_db):
    d = make_daemon(storage="postgres", conninfo=pg_db.conninfo)
    c = conn(d, timeout=20)
    topics = [f"dur{i}" for i in range(4)]
    sent = [0]

    def sender():
        # Publishes keep coming until the daemon is gone.
        try:
            while True:
                batch = b"".join(rp.encode_publish(sent[0] + k + 1, topics[(sent[0] + k) % 4],
                                                   f"{PAYLOAD}{sent[0] + k}") for k in range(200))
                c.send(batch)
                sent[0] += 200
        except OSError:
            pass

    st = threading.Thread(target=sender, daemon=True)
    st.start()
    acks = {}
    while len(acks) < 3000:
        f = c.recv_until(lambda f: f.kind in (rp.PUBLISH_ACK, rp.ERROR))
        assert f.kind == rp.PUBLISH_ACK, f.fields
        acks[f.corr] = f
    d.kill9()  # under load: publishes are still arriving and in flight
    # Acks the daemon sent before it died are acks too.
    try:
        while True:
            f = c.recv_until(lambda f: f.kind in (rp.PUBLISH_ACK, rp.ERROR), timeout=2)
            if f.kind == rp.PUBLISH_ACK:
                acks[f.corr] = f
    except (ConnectionError, OSError, EOFError, AssertionError, TimeoutError):
        pass
    st.join(10)
    assert len(acks) < sent[0], "the kill came too late to test anything"
    rows = {t: dict(assert_dense(pg_db, t)) for t in topics}
    for corr, f in acks.items():
        i = corr - 1
        assert rows[topics[i % 4]].get(f["seq"]) == f"{PAYLOAD}{i}", f"acked {corr} lost"
    d2 = make_daemon(storage="postgres", conninfo=pg_db.conninfo)
    for t in topics:
        msgs, errors = history(d2, t)
        assert errors == []
        assert msgs == sorted(rows[t].items())


def test_two_daemons_on_one_database_keep_one_dense_order(make_daemon, pg_db):
    a = make_daemon(storage="postgres", conninfo=pg_db.conninfo)
    b = make_daemon(storage="postgres", conninfo=pg_db.conninfo)
    ca, cb = conn(a, 20), conn(b, 20)
    items = [(f"both{i % 2}", f"x{i}") for i in range(1500)]
    results = {}
    ta = threading.Thread(target=lambda: results.update(a=publish_all(ca, items)))
    tb = threading.Thread(target=lambda: results.update(b=publish_all(cb, items)))
    ta.start(), tb.start()
    ta.join(60), tb.join(60)
    for t in ("both0", "both1"):
        rows = assert_dense(pg_db, t)
        assert len(rows) == 1500
        seqs = sorted(f["seq"] for r in results.values() for f in r.values()
                      if f.kind == rp.PUBLISH_ACK and f["topic"] == t)
        assert seqs == list(range(1, 1501)), "each seq acked once, across both daemons"
        # Each daemon's catch-up is the whole stored order: the ceiling is
        # the committed head read from storage, whichever daemon committed.
        # (Live fan-out between daemons is the cluster's replica plane.)
        for d in (a, b):
            msgs, errors = history(d, t)
            assert errors == [] and msgs == rows


# ---- Postgres failures ----

def test_postgres_down_at_startup_then_ready_when_it_comes_up(pg_cluster, tmp_path):
    db = pg_cluster.createdb()
    pg_cluster.stop()
    d = Daemon(tmp_path, storage="postgres", conninfo=pg_cluster.conninfo(db))
    try:
        starter = threading.Timer(2.0, pg_cluster.start)
        starter.start()
        d.start()  # waits for "ready:"
        starter.join()
        log = d.log()
        assert "storage not ready, retrying in" in log
        assert log.index("storage not ready") < log.index("ready:")
        c = conn(d)
        assert c.publish("late", "x", corr=1).kind == rp.PUBLISH_ACK
    finally:
        if pg_cluster.pid is None:
            pg_cluster.start()
        assert d.stop() == 0
        assert d.bad_log_lines() == []


def test_connects_are_refused_not_left_unanswered_while_storage_is_not_ready(pg_cluster,
                                                                             tmp_path):
    """README: ready only when storage is reachable. Until then the port is
    bound (so a port in use still fails start-up) but does not listen: a
    client's connect is refused at once instead of waiting for a HELLO
    answer that cannot come."""
    db = pg_cluster.createdb()
    pg_cluster.stop()
    d = Daemon(tmp_path, storage="postgres", conninfo=pg_cluster.conninfo(db))
    d._log = open(d.log_path, "wb")
    d.proc = subprocess.Popen([str(RINGBUSD), "--config", str(d.config_path)], stdout=d._log,
                              stderr=subprocess.STDOUT, env=d.env)
    try:
        deadline = time.monotonic() + 15
        while "storage not ready" not in d.log():
            assert time.monotonic() < deadline and d.proc.poll() is None, d.log()
            time.sleep(0.02)
        for _ in range(3):
            t0 = time.monotonic()
            try:
                c = rp.Conn("127.0.0.1", d.port, timeout=3)
            except ConnectionRefusedError:
                pass
            else:
                try:
                    answer = c.hello(timeout=3)
                except OSError as e:
                    answer = e
                raise AssertionError(f"connected while storage is down; HELLO got {answer}")
            assert time.monotonic() - t0 < 1
        assert "listening on" not in d.log()
        pg_cluster.start()
        deadline = time.monotonic() + 15
        while "ready:" not in d.log():
            assert time.monotonic() < deadline and d.proc.poll() is None, d.log()
            time.sleep(0.02)
        log = d.log()
        assert log.index("storage not ready") < log.index("listening on") < log.index("ready:")
        assert conn(d).publish("after", "x", corr=1).kind == rp.PUBLISH_ACK
    finally:
        if pg_cluster.pid is None:
            pg_cluster.start()
        assert d.stop() == 0
        assert d.bad_log_lines() == []


def test_postgres_restart_under_load_never_acks_falsely(make_daemon, pg_cluster, pg_db):
    d = make_daemon(storage="postgres", conninfo=pg_db.conninfo)
    c = conn(d, timeout=30)
    sent = {}
    frames = {}
    stop = threading.Event()

    def reader():
        deadline = time.monotonic() + 40
        while (len(frames) < len(sent) or not stop.is_set()) and time.monotonic() < deadline:
            try:
                f = c.recv_until(lambda f: f.kind in (rp.PUBLISH_ACK, rp.ERROR), timeout=0.5)
            except TimeoutError:
                continue
            except Exception:
                return
            frames[f.corr] = f

    corr = 0
    rt = threading.Thread(target=reader)
    rt.start()
    t0 = time.monotonic()
    restarted = False
    while time.monotonic() - t0 < 4:
        for _ in range(50):
            corr += 1
            sent[corr] = (f"rs{corr % 3}", f"v{corr}")
            c.send(rp.encode_publish(corr, *sent[corr]))
        if not restarted and time.monotonic() - t0 > 1:
            pg_cluster.stop()  # fast shutdown: every session is terminated
            pg_cluster.start()
            restarted = True
        time.sleep(0.01)
    stop.set()
    rt.join(30)
    assert len(frames) == len(sent), "every publish got exactly one answer"
    failed = [f for f in frames.values() if f.kind == rp.ERROR]
    assert failed, "the restart should have failed some publishes"
    assert {f["code_name"] for f in failed} == {"unavailable"}
    rows = {t: dict(assert_dense(pg_db, t)) for t in ("rs0", "rs1", "rs2")}
    for n, f in frames.items():
        if f.kind == rp.PUBLISH_ACK:
            assert rows[sent[n][0]].get(f["seq"]) == sent[n][1], f"false ack of {n}"
    # The pool reconnected: publishing works again.
    for attempt in range(50):
        f = c.publish("rs0", "after", corr=10**6 + attempt)
        if f.kind == rp.PUBLISH_ACK:
            break
        time.sleep(0.1)
    assert f.kind == rp.PUBLISH_ACK
    assert "postgres conn" in d.log() and "reconnecting in" in d.log()


def test_a_failing_append_aborts_only_its_own_request(make_daemon, pg_db):
    d = make_daemon(shards=1, storage="postgres", conninfo=pg_db.conninfo, pg_extra="pool_size = 1")
    c = conn(d)
    assert c.publish("poisoned", "fine", corr=1)["seq"] == 1
    pg_db.psql("ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (payload <> '\\x706f69736f6e')")
    # On one connection the failing transaction sits in the pipeline between
    # healthy ones; only its own publish fails.
    items = [("healthy", f"h{i}") for i in range(300)]
    items[150] = ("poisoned", "poison")
    got = publish_all(c, items)
    bad = got[151]
    assert bad.kind == rp.ERROR and bad["code_name"] == "unavailable"
    healthy = sorted(f["seq"] for n, f in got.items() if n != 151)
    assert healthy == list(range(1, 300))
    # The failed transaction was rolled back, head included.
    assert c.publish("poisoned", "fine again", corr=999)["seq"] == 2
    assert [p for _, p in assert_dense(pg_db, "poisoned")] == ["fine", "fine again"]
    assert "check constraint" in d.log()


def test_slow_postgres_does_not_stall_pings_on_the_same_shard(make_daemon, pg_db):
    d = make_daemon(shards=1, storage="postgres", conninfo=pg_db.conninfo)
    pub = conn(d)
    assert pub.publish("locked", "one", corr=1)["seq"] == 1
    holder = pg_db.cluster.session(pg_db.name)
    holder.stdin.write("BEGIN;\nSELECT 'locked' FROM topics WHERE name = 'locked' FOR UPDATE;\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "locked"
    try:
        pub.send(rp.encode_publish(2, "locked", "two"))  # blocks in UPDATE topics
        time.sleep(0.2)
        pinger = conn(d)
        worst = 0.0
        for nonce in range(20):
            t0 = time.monotonic()
            pinger.ping(nonce)
            f = pinger.recv_until(lambda f: f.kind == rp.PONG)
            assert f["nonce"] == nonce
            worst = max(worst, time.monotonic() - t0)
        assert worst < 0.1, f"a ping took {worst * 1000:.0f} ms while an append waited on a lock"
        # Catch-up reads on the same shard go on too (another connection).
        assert history(d, "locked")[0] == [(1, "one")]
    finally:
        holder.stdin.write("COMMIT;\n\\q\n")
        holder.stdin.flush()
        holder.wait(10)
    f = pub.recv_until(lambda f: f.kind in (rp.PUBLISH_ACK, rp.ERROR))
    assert f.kind == rp.PUBLISH_ACK and f["seq"] == 2


# ---- schema ----

def write_config(tmp_path, conninfo, name="m.toml"):
    path = tmp_path / name
    path.write_text(f'[storage]\nbackend = "postgres"\n[storage.postgres]\nconninfo = "{conninfo}"\n')
    return path


def test_migrate_only_applies_the_schema_once_and_exits(pg_db, tmp_path):
    cfg = write_config(tmp_path, pg_db.conninfo)
    for _ in range(2):
        out = subprocess.run([str(RINGBUSD), "--config", str(cfg), "--migrate-only"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "schema is up to date" in out.stdout
    assert pg_db.psql("SELECT version FROM ringbus_schema ORDER BY version") == [["1"], ["2"], ["3"]]
    assert {r[0] for r in pg_db.psql("SELECT tablename FROM pg_tables WHERE schemaname='public'")} \
        == {"ringbus_schema", "topics", "messages", "ringbus_epoch", "idempotency_keys"}
    # The epoch is created once: the second run kept it.
    (epoch,), = pg_db.psql("SELECT epoch FROM ringbus_epoch")
    assert int(epoch) != 0 and f"epoch {int(epoch) & (2**64 - 1):016x}" in out.stderr + out.stdout
    dead = write_config(tmp_path, "host=127.0.0.1 port=1 dbname=x connect_timeout=2", "dead.toml")
    out = subprocess.run([str(RINGBUSD), "--config", str(dead), "--migrate-only"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "ringbusd: postgres connect:" in out.stderr


def test_daemons_migrating_at_once_do_not_race(pg_db, tmp_path, make_daemon):
    cfg = write_config(tmp_path, pg_db.conninfo)
    procs = [subprocess.Popen([str(RINGBUSD), "--config", str(cfg), "--migrate-only"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=30)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
    assert sum("applied schema migration 1" in o for o in outs) == 1, outs
    assert sum("applied schema migration 2" in o for o in outs) == 1, outs
    assert sum("applied schema migration 3" in o for o in outs) == 1, outs
    assert pg_db.psql("SELECT count(*) FROM ringbus_schema") == [["3"]]
    assert pg_db.psql("SELECT count(*) FROM ringbus_epoch") == [["1"]]
    # Daemons starting together on a fresh database, too; they share the
    # database's one epoch, which differs from the first database's.
    other = pg_db.cluster.createdb()
    info = pg_db.cluster.conninfo(other)
    ds = [make_daemon(storage="postgres", conninfo=info) for _ in range(2)]
    assert sum("applied schema migration 1" in d.log() for d in ds) == 1
    assert conn(ds[1]).publish("m", "x", corr=1)["seq"] == 1
    epochs = set()
    for d in ds:
        with rp.Conn("127.0.0.1", d.port) as c:
            epochs.add(c.hello()["epoch"])
    (first,), = pg_db.psql("SELECT epoch FROM ringbus_epoch")
    assert len(epochs) == 1 and epochs != {int(first) & (2**64 - 1)}, epochs


# ---- TLS and passwords ----

def test_tls_and_password_file_and_pgpassfile(make_daemon, pg_db, tmp_path):
    pg_db.psql("CREATE ROLE rbpw LOGIN PASSWORD 's3cret pw'; GRANT ALL ON DATABASE "
               f"{pg_db.name} TO rbpw; GRANT ALL ON SCHEMA public TO rbpw")
    pwfile = tmp_path / "pw"
    pwfile.write_text("s3cret pw\n")
    info = pg_db.cluster.conninfo(pg_db.name, tcp=True, user="rbpw", sslmode="require")
    d = make_daemon(storage="postgres", conninfo=info,
                    pg_extra=f'password_file = "{pwfile}"')
    c = conn(d)
    assert c.publish("tls", "over tls", corr=1)["seq"] == 1
    assert history(d, "tls")[0] == [(1, "over tls")]
    ssl = pg_db.psql("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                     "WHERE a.application_name = 'ringbusd'")
    assert ssl and all(r == ["t"] for r in ssl), ssl
    # The standard PGPASSFILE works as well (no password_file).
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg_db.cluster.port}:*:rbpw:s3cret pw\n")
    os.chmod(passfile, 0o600)
    d2 = make_daemon(storage="postgres", conninfo=info, env={"PGPASSFILE": str(passfile)})
    assert conn(d2).publish("tls", "again", corr=1)["seq"] == 2
    assert "s3cret" not in d.log() + d2.log()


# ---- reads and retention ----

def test_cursor_beyond_bigint_is_clamped_not_wrapped(make_daemon, pg_db):
    d = make_daemon(storage="postgres", conninfo=pg_db.conninfo)
    c = conn(d)
    publish_all(c, [("big", "a"), ("big", "b")])
    # Beyond the head either way: an explicit cursor_ahead, never a wrap
    # to a negative bigint that would replay everything.
    for cursor in (2**63 + 5, 2**63 - 1):
        msgs, errors = history(d, "big", cursor=cursor)
        assert msgs == [] and [(e.kind, e["code_name"]) for e in errors] \
            == [(rp.TOPIC_ERROR, "cursor_ahead")]
    msgs, errors = history(d, "big", cursor=1)
    assert msgs == [(2, "b")] and errors == []


def test_retention_deletes_old_rows_in_bounded_batches(make_daemon, pg_db):
    d = make_daemon(storage="postgres", conninfo=pg_db.conninfo,
                    pg_extra="retention_messages = 100")
    c = conn(d, timeout=30)
    for k in range(5):
        publish_all(c, [("ret", f"m{k * 1000 + i}") for i in range(1000)], start_corr=k * 1000 + 1)
    publish_all(c, [("small", f"s{i}") for i in range(50)], start_corr=90000)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if pg_db.psql("SELECT count(*) FROM messages m JOIN topics t ON t.id = m.topic_id "
                      "WHERE t.name = 'ret'") == [["100"]]:
            break
        time.sleep(0.2)
    rows, head = stored(pg_db, "ret")
    assert head == 5000 and [s for s, _ in rows] == list(range(4901, 5001))
    assert len(stored(pg_db, "small")[0]) == 50
    batches = [int(l.split("batch of ")[1].split()[0]) for l in d.log().splitlines()
               if "postgres retention: batch of" in l]
    assert sum(batches) == 4900 and max(batches) <= 2000 and len([b for b in batches if b]) >= 3
    # A cursor older than what is kept is an explicit error, never a gap.
    msgs, errors = history(d, "ret", cursor=5)
    assert msgs == [] and [(e.kind, e["code_name"], e["topic"]) for e in errors] \
        == [(rp.TOPIC_ERROR, "out_of_range", "ret")]
    msgs, errors = history(d, "ret", cursor=0)
    assert [s for s, _ in msgs] == list(range(4901, 5001)) and errors == []


def test_age_retention_keeps_each_topics_newest_message(make_daemon, pg_db):
    d = make_daemon(storage="postgres", conninfo=pg_db.conninfo, pg_extra="retention_age_s = 1")
    c = conn(d)
    publish_all(c, [("aged", f"a{i}") for i in range(20)])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(stored(pg_db, "aged")[0]) > 1:
        time.sleep(0.2)
    assert stored(pg_db, "aged") == ([(20, "a19")], 20)
    assert history(d, "aged")[0] == [(20, "a19")]
    assert c.publish("aged", "next", corr=100)["seq"] == 21


def documented_setup_sql():
    """The SQL block of docs/OPERATIONS.md "Postgres set-up", as written."""
    text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md").read_text()
    section = text.split("## Postgres set-up\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```sql\n", 1)[1].split("```", 1)[0]


def test_documented_setup_lets_the_daemon_run_as_a_role_that_only_reads_and_writes(
        pg_cluster, tmp_path, make_daemon):
    """The set-up of OPERATIONS.md run as written (names made unique): the
    owner applies the schema with --migrate-only, then the daemon runs as a
    role without the right to create tables, publishes and reads."""
    n = next(SETUP_NAMES)
    owner, app = f"rbsetup{os.getpid()}_{n}_owner", f"rbsetup{os.getpid()}_{n}"
    sql = documented_setup_sql().replace("ringbus_owner", "OWNER_ROLE")
    sql = re.sub(r"\bringbus\b", app, sql).replace("OWNER_ROLE", owner)
    subprocess.run([f"{PG_BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg_cluster.sock,
                    "-p", str(pg_cluster.port), "-U", "postgres", "-d", "postgres", "-f", "-"],
                   input=sql, check=True, capture_output=True, text=True, timeout=60)
    as_app = write_config(tmp_path, pg_cluster.conninfo(app, user=app), "app.toml")
    # The daemon's role may not apply the schema, and says who should.
    out = subprocess.run([str(RINGBUSD), "--config", str(as_app), "--migrate-only"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "permission denied for schema public" in out.stderr
    assert "(apply the schema as its owner: ringbusd --migrate-only)" in out.stderr
    as_owner = write_config(tmp_path, pg_cluster.conninfo(app, user=owner), "owner.toml")
    out = subprocess.run([str(RINGBUSD), "--config", str(as_owner), "--migrate-only"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    owners = pg_cluster.psql(app, "SELECT tablename, tableowner FROM pg_tables "
                                  "WHERE schemaname = 'public' ORDER BY 1")
    assert owners == [["idempotency_keys", owner], ["messages", owner], ["ringbus_epoch", owner],
                      ["ringbus_schema", owner], ["topics", owner]]
    d = make_daemon(storage="postgres", conninfo=pg_cluster.conninfo(app, user=app))
    c = conn(d)
    assert c.publish("setup", "one", corr=1)["seq"] == 1
    assert c.publish("setup", "two", corr=2)["seq"] == 2
    c.mutate(3, 1, adds=[("setup", 0)])
    f = c.recv_until(lambda f: f.kind == rp.MESSAGES)
    assert [(t, s, p) for t, s, p in f["items"]][:2] == [("setup", 1, b"one"), ("setup", 2, b"two")]
    assert "permission denied" not in d.log()


def test_storage_down_during_catchup_is_a_topic_error_and_the_wave_completes(make_daemon, pg_db,
                                                                             pg_cluster):
    d = make_daemon(storage="postgres", conninfo=pg_db.conninfo)
    c = conn(d)
    publish_all(c, [("down", f"d{i}") for i in range(5)])
    sub = conn(d, timeout=60)
    pg_cluster.stop()
    try:
        sub.mutate(1, 1, adds=[("down", 0)])
        frames = sub.recv_all_until(lambda f: f.kind == rp.CATCHUP_COMPLETE, 60)
    finally:
        pg_cluster.start()
    errs = [(f["topic"], f["code_name"], f["mutate_id"]) for f in frames if f.kind == rp.TOPIC_ERROR]
    assert errs == [("down", "unavailable", 1)], frames
    assert [f for f in frames if f.kind in (rp.ERROR, rp.MESSAGES, rp.TOPICS_LIVE)] == []
    # Storage is back: the same add, retried, delivers the history.
    for attempt in range(100):
        sub.mutate(2 + attempt, 2 + attempt, adds=[("down", 0)])
        frames = sub.recv_all_until(lambda f: f.kind == rp.CATCHUP_COMPLETE, 30)
        msgs = [s for f in frames if f.kind == rp.MESSAGES for _, s, _ in f["items"]]
        if msgs:
            break
        time.sleep(0.2)
    assert msgs == [1, 2, 3, 4, 5]
