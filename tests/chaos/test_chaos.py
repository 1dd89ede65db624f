"""Chaos scenarios: the real ringbusd on a real Postgres under load from
publishers and durable subscribers (world.py), one fault injected per
trial, and the whole history checked against G1–G4 (history.py) together
with what Postgres holds at the end. The mem_* scenarios run the client
faults on the memory store and read what it holds back through the daemon.

Each scenario is seeded; the seed is printed and named in every failure
(CHAOS_SEED=N reruns it). CHAOS_PROFILE=short (the default, part of `make
test`) runs few trials; CHAOS_PROFILE=long (`make chaos`) runs the long
form; CHAOS_TRIALS=N overrides the trials of every scenario and
CHAOS_LOAD_S the seconds of load between faults."""

import json
import os
import pathlib
import random
import sys
import time

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "integration"))
sys.path.insert(0, str(HERE))

from conftest import BAD_LOG_MARKERS, Daemon  # noqa: E402
from pg import pg_cluster, pg_db  # noqa: E402,F401
import rbproto as rp  # noqa: E402

import history  # noqa: E402
import world as chaos_world  # noqa: E402

PROFILE = os.environ.get("CHAOS_PROFILE", "short")
# (short trials, long trials) per scenario.
TRIALS = {
    "kill9": (3, 20),
    "sigterm": (2, 5),
    "pg_restart": (1, 5),
    "pg_stop": (1, 3),
    "pg_terminate": (2, 10),
    "slow_subscribers": (2, 10),
    "churn": (2, 10),
    "vanish": (2, 10),
    # The memory store (no restarts: it is lost on restart by design); what
    # it holds is read back through the daemon.
    "mem_slow_subscribers": (1, 5),
    "mem_churn": (1, 5),
    "mem_vanish": (1, 5),
    # The memory store restarted (kill -9 or SIGTERM): a new epoch, every
    # saved cursor must come back as TOPIC_ERROR epoch_mismatch.
    "mem_restart": (2, 10),
    # Publishers with idempotency keys that re-send what a dead connection
    # left unanswered (world.py): each key must be stored once.
    "dedup": (3, 20),
    "mem_dedup": (1, 5),
}
LOAD_S = float(os.environ.get("CHAOS_LOAD_S", "1.5" if PROFILE == "short" else "6"))
PG_STOP_S = float(os.environ.get("CHAOS_PG_STOP_S", "10"))
TOPICS = ["t0", "t1", "t2", "t3"]
SETTLE_S = 60
RECOVER_S = 30
# Small bounds, so that a stalled subscriber meets them within a trial.
LIMITS = "[limits]\nmax_frame_bytes = 65536\nsend_queue_bytes = 262144\n"
# The memory store keeps a whole run (retention would make the read-back
# start above seq 1).
MEMORY = "[storage.memory]\nretention_messages = 10_000_000\nretention_bytes = 1_073_741_824\n"
READBACK_S = 120
# The dedup scenarios' window: longer than any re-send (world.RESEND_MAX_S),
# short enough that the keys of a long run fit the default table.
DEDUP = "[dedup]\nwindow_ms = 30_000\n"


def trials(name):
    if "CHAOS_TRIALS" in os.environ:
        return int(os.environ["CHAOS_TRIALS"])
    return TRIALS[name][0 if PROFILE == "short" else 1]


class Run:
    """One scenario: its daemon (restartable), database, world, seed."""

    def __init__(self, name, tmp_path, cluster, db, seed):
        self.name = name
        self.seed = seed
        self.rng = random.Random(seed)
        self.cluster = cluster
        self.db = db
        self.tmp = tmp_path
        self.memory = name.startswith("mem_")
        self.dedup = name.endswith("dedup")
        limits = LIMITS + (DEDUP if self.dedup else "")
        if self.memory:
            self.daemon = Daemon(tmp_path, shards=2, storage="memory", extra=limits + MEMORY)
        else:
            # pg.py runs Postgres with synchronous_commit off (the
            # integration tests kill the daemon, not Postgres); a Postgres
            # crash loses such commits, so this database waits for the WAL.
            db.psql(f"ALTER DATABASE {db.name} SET synchronous_commit = on")
            self.daemon = Daemon(tmp_path, shards=2, storage="postgres", conninfo=db.conninfo,
                                 extra=limits)
        self.daemon.start()
        self.logs = []
        self.hist = history.History()
        self.world = chaos_world.World(self.hist, self.daemon.port, self.rng, TOPICS)
        self.world.dedup = self.dedup
        self.faults = 0
        self.readback_lag_closes = 0
        self.epoch = None  # the memory store's at the end (read back)

    # -- the daemon

    def _archive_log(self):
        self.logs.append(self.daemon.log())

    def kill9(self):
        self.daemon.kill9()
        self._archive_log()

    def sigterm(self):
        rc = self.daemon.stop()
        self._archive_log()
        assert rc == 0, f"{self.tag()}: SIGTERM exit {rc}\n{self.logs[-1][-3000:]}"

    def start(self):
        self.daemon.start()

    def wait_acks(self, what):
        """The daemon recovers by itself: acks flow again within RECOVER_S."""
        before = self.world.acks
        deadline = time.monotonic() + RECOVER_S
        while self.world.acks == before:
            assert time.monotonic() < deadline, f"{self.tag()}: no ack {RECOVER_S}s after {what}"
            self.world.step()

    # -- storage: straight from Postgres, or read back through the daemon

    def storage(self):
        if self.memory:
            return self.read_back()
        rows = self.db.psql("SELECT t.name, m.seq, split_part(convert_from(m.payload, 'UTF8'), "
                            "'|', 1) FROM messages m JOIN topics t ON t.id = m.topic_id", 120)
        out = {}
        for name, seq, key in rows:
            out.setdefault(name, {})[int(seq)] = key
        return out

    def heads(self):
        if self.memory:
            return {t: len(rows) for t, rows in self.read_back().items()}
        return {n: int(h) for n, h in self.db.psql("SELECT name, head FROM topics")}

    def read_back(self):
        """Every stored message, by history_only adds of each topic on a
        fresh connection (the daemon must be running). A read-back closed
        with resource_exhausted resumes from what it has, as any client."""
        out = {t: {} for t in TOPICS}
        deadline = time.monotonic() + READBACK_S
        while time.monotonic() < deadline:
            if self._read_back_once(out):
                return out
        raise AssertionError(f"{self.tag()}: read-back incomplete after {READBACK_S}s")

    def _read_back_once(self, out):
        cursors = [(t, max(out[t], default=0)) for t in TOPICS]
        with rp.Conn(port=self.daemon.port, timeout=READBACK_S) as c:
            started = c.hello(name="readback")
            assert started.kind == rp.STARTED
            self.epoch = started["epoch"]
            c.mutate(2, 1, adds=cursors, history_only=True)
            while True:
                try:
                    f = c.recv()
                except EOFError:
                    return False
                if f.kind == rp.PING:
                    c.pong(f["nonce"])
                elif f.kind == rp.MESSAGES:
                    for topic, seq, payload in f["items"]:
                        out[topic][seq] = payload.split(b"|", 1)[0].decode(errors="replace")
                elif f.kind == rp.CATCHUP_COMPLETE:
                    return True
                elif f.kind in (rp.CLOSE, rp.ERROR) and f["code" if f.kind == rp.ERROR
                                                            else "status"] == rp.RESOURCE_EXHAUSTED:
                    self.readback_lag_closes += 1
                    return False
                else:
                    raise AssertionError(f"{self.tag()}: read-back got {f.kind} {f.fields}")

    # -- the end

    def tag(self):
        return f"chaos {self.name} seed {self.seed}"

    def finish(self):
        try:
            behind = self.world.settle(SETTLE_S, self.heads)
            self.world.drop_all()
            storage = self.storage() if self.memory else None
        finally:
            self.daemon.stop()
            self._archive_log()
        if storage is None:
            storage = self.storage()
        violations, stats = history.check(self.hist.events, storage,
                                          durable_subs=self.world.sub_names, topics=TOPICS,
                                          epoch=self.epoch)
        if behind:
            violations.append(f"subscribers never reached the heads: {behind}")
        bad = [line for log in self.logs for line in log.splitlines()
               if any(m in line for m in BAD_LOG_MARKERS)]
        if bad:
            violations.append(f"daemon log: {bad[:5]}")
        if self.name == "mem_restart" and stats["epoch_mismatches"] == 0:
            violations.append("the memory store restarted but no cursor got epoch_mismatch")
        if self.dedup and stats["duplicate_acks"] == 0:
            violations.append(f"{self.world.resent} re-sends but no duplicate ack: no committed "
                              f"publish was re-sent, the scenario proved nothing")
        stats.update(faults=self.faults, reconnects=self.world.reconnects,
                     resent=self.world.resent, resend_expired=self.world.resend_expired,
                     readback_lag_closes=self.readback_lag_closes,
                     publish_errors=self.world.errors, sub_closes=self.world.sub_closes,
                     stored=sum(len(r) for r in storage.values()))
        summary = f"{self.tag()}: {json.dumps(stats, sort_keys=True)}"
        with open(self.tmp / "history.json", "w") as f:
            json.dump(self.hist.events, f)
        results = os.environ.get("CHAOS_RESULTS")
        if results:
            with open(results, "a") as f:
                f.write(f"{summary} violations={len(violations)}\n")
        return violations, stats, summary


# ---- faults: each runs one trial ----

def fault_kill9(run):
    run.world.run(LOAD_S * run.rng.uniform(0.5, 1.5))
    run.kill9()
    run.world.run(run.rng.uniform(0.05, 0.5))
    run.start()
    run.wait_acks("kill -9 and restart")


def fault_sigterm(run):
    run.world.run(LOAD_S)
    run.sigterm()
    run.world.run(0.2)
    run.start()
    run.wait_acks("SIGTERM and restart")


def fault_pg_restart(run):
    run.world.run(LOAD_S)
    run.cluster.stop("immediate")
    run.world.run(run.rng.uniform(0.1, 1.0))
    run.cluster.start()
    run.wait_acks("Postgres restart -m immediate")


def fault_pg_stop(run):
    run.world.run(LOAD_S)
    run.cluster.stop("fast")
    run.world.run(PG_STOP_S)
    run.cluster.start()
    run.wait_acks(f"Postgres stopped for {PG_STOP_S}s")


def fault_pg_terminate(run):
    run.world.run(LOAD_S)
    run.db.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                f"'{run.db.name}' AND pid <> pg_backend_pid()")
    run.wait_acks("pg_terminate_backend")


def fault_slow_subscribers(run):
    run.world.pad = 2000
    subs = [run.world.clients.get(n) for n in run.world.sub_names]
    stalled = run.rng.choice([s for s in subs if s is not None] or [None])
    if stalled is not None:
        stalled.pause(run.rng.uniform(1.0, 3.0))
    end = time.monotonic() + LOAD_S * 2
    while time.monotonic() < end:
        # The others read in short bursts with pauses between.
        for s in subs:
            if s is not None and s is not stalled and not s.closed and run.rng.random() < 0.05:
                s.pause(0.1)
        run.world.step(publishes=8)
    run.world.pad = 0


def fault_churn(run):
    end = time.monotonic() + LOAD_S * 2
    names = run.world.pub_names + run.world.sub_names
    while time.monotonic() < end:
        if run.rng.random() < 0.02:
            run.world.drop(run.rng.choice(names))
        run.world.step()


def fault_vanish(run):
    end = time.monotonic() + LOAD_S * 2
    while time.monotonic() < end:
        if run.rng.random() < 0.05:
            run.world.torn_publish(run.rng.choice(TOPICS))
        if run.rng.random() < 0.03:
            run.world.torn_other()
        run.world.step()


def fault_restart(run):
    """The memory store's daemon dies or stops, and starts empty."""
    run.world.run(LOAD_S)
    if run.rng.random() < 0.5:
        run.kill9()
    else:
        run.sigterm()
    run.world.run(0.2)
    run.start()
    run.wait_acks("memory store restart")


def fault_dedup(run):
    """Publishers' connections end with publishes in flight, which they
    send again with the same keys: by kill -9 of the daemon, by Postgres
    backends terminated (`unavailable` answers), or dropped by the client.
    The three take turns, so the short form has each once; the memory
    store is lost on restart, so it only sees the drops."""
    what = "drop" if run.memory else ["kill9", "drop", "pg_terminate"][run.faults % 3]
    if what == "kill9":
        fault_kill9(run)
    elif what == "pg_terminate":
        fault_pg_terminate(run)
    else:
        end = time.monotonic() + LOAD_S
        while time.monotonic() < end:
            if run.rng.random() < 0.03:
                run.world.drop(run.rng.choice(run.world.pub_names))
            run.world.step(publishes=8)


FAULTS = {n: globals()[f"fault_{n.removeprefix('mem_')}"] for n in TRIALS}


@pytest.mark.parametrize("scenario", list(TRIALS))
def test_chaos(scenario, tmp_path, pg_cluster, pg_db, capsys):  # noqa: F811
    seed = int(os.environ.get("CHAOS_SEED", random.SystemRandom().randrange(1 << 32)))
    with capsys.disabled():
        print(f"\nchaos {scenario}: seed {seed}, {trials(scenario)} trials ({PROFILE})",
              flush=True)
    run = Run(scenario, tmp_path, pg_cluster, pg_db, seed)
    try:
        run.world.run(0.5)
        for _ in range(trials(scenario)):
            FAULTS[scenario](run)
            run.faults += 1
        run.world.run(LOAD_S / 2)
    except BaseException:
        if run.daemon.proc is not None:
            run.daemon.kill9()
        raise
    finally:
        if pg_cluster.pid is None:
            pg_cluster.start()
    violations, stats, summary = run.finish()
    with capsys.disabled():
        print(summary, flush=True)
    assert stats["acks"] > 0 and stats["deliveries"] > 0, f"{run.tag()}: no load ran: {stats}"
    assert violations == [], f"{run.tag()}: {len(violations)} violations:\n" + \
        "\n".join(violations[:30])
