"""The clients of a chaos run: publishers and durable subscribers driven by
tests/integration/streamcheck.py's non-blocking Driver, every operation
logged to a History (history.py). A client whose connection ends (daemon
killed, drained, lag close, churn) is replaced by a new connection under
the same name: a publisher starts a new session, a durable subscriber adds
each of its topics again with the last seq it has as cursor, sent with
the epoch those cursors belong to (and starts a topic over from 0 when the
server answers epoch_mismatch: the store restarted empty). The World
also performs the client-side faults: connection churn, stalled readers,
and clients that vanish in the middle of a frame.

With `dedup` on, publishers behave as the resilient session does
(PROTOCOL §13): every publish carries its payload's key as idempotency key,
and a publish left unanswered when its connection ended, or answered
`unavailable`, is sent again with the same key and payload on the next
connection, until RESEND_MAX_S after its first send. The server must store
each key once and answer a re-send of a committed one with its seq."""

import socket
import time

import rbproto as rp
import streamcheck

# Publishes in flight per publisher; beyond this it waits for acks.
WINDOW = 64
# A client that could not connect waits this long before trying again.
RETRY_S = 0.1
# A publisher told `unavailable` (or any error) waits this long before its
# next publish, as a real client backs off.
BACKOFF_S = 0.02
# With dedup: a publish is re-sent only this long after its first send,
# well inside the daemon's dedup window (the chaos run sets 30 s).
RESEND_MAX_S = 10.0


class ChaosPub(streamcheck.Client):
    def __init__(self, world, name):
        super().__init__(world.drv, world.port, name)
        self.world = world
        self.sid = world.hist.new_session(name, "pub")
        self.corr = 1
        self.inflight = {}
        self.started = False
        self.backoff_until = 0.0

    def publish(self, topic, again=None):
        """Sends a new publish to topic, or again one of an earlier
        connection: again is its (topic, key, first send time, pad)."""
        self.corr += 1
        if again is None:
            again = (topic, f"{self.name}/{self.sid}/{self.corr}", time.monotonic(),
                     self.world.pad)
        topic, key, _, pad = again
        self.inflight[self.corr] = again
        self.world.hist.add("pub", self.sid, self.corr, topic, key)
        payload = key + ("|" + "x" * pad if pad else "")
        idem = key if self.world.dedup else b""
        self.send(rp.encode_publish(self.corr, topic, payload, key=idem))

    def on_frame(self, f):
        if f.kind == rp.STARTED:
            self.started = True
            self.world.hist.add("started", self.sid, f["epoch"])
        elif f.kind == rp.PUBLISH_ACK and f.corr in self.inflight:
            del self.inflight[f.corr]
            self.world.hist.add("ack", self.sid, f.corr, f["topic"], f["seq"], f["duplicate"])
            self.world.acks += 1
            self.world.duplicates += f["duplicate"]
        elif f.kind == rp.ERROR and f.corr in self.inflight:
            pub = self.inflight.pop(f.corr)
            self.world.hist.add("err", self.sid, f.corr, f["code"])
            self.backoff_until = time.monotonic() + BACKOFF_S
            self.world.errors[f["code"]] = self.world.errors.get(f["code"], 0) + 1
            if f["code"] == rp.UNAVAILABLE:
                self.world.keep_for_resend(self.name, [pub])
        elif f.kind == rp.CLOSE:
            self.world.hist.add("end", self.sid, "close", f["status"])


class ChaosSub(streamcheck.Client):
    def __init__(self, world, name, cursors):
        super().__init__(world.drv, world.port, name)
        self.world = world
        self.sid = world.hist.new_session(name, "sub")
        self.paused_until = 0.0
        self.epoch = None
        self.next_mid = 1
        # The cursors are the epoch's the subscriber saved with them (0:
        # none yet); the MUTATE goes before STARTED, so the server checks it.
        self.add(sorted(cursors.items()), world.epochs[name])

    def add(self, adds, epoch):
        mid = self.next_mid
        self.next_mid += 1
        self.world.hist.add("mutate", self.sid, mid, [(t, c, 0) for t, c in adds], [], False,
                            epoch)
        self.send(rp.encode_mutate(mid, mid, adds=adds, epoch=epoch))

    def on_frame(self, f):
        h = self.world.hist
        if f.kind == rp.STARTED:
            self.epoch = f["epoch"]
            h.add("started", self.sid, self.epoch)
            if self.world.epochs[self.name] != self.epoch:
                # A new epoch (or the first): every saved cursor counted
                # another store. The adds already sent must come back as
                # epoch_mismatch (then each is added again from 0).
                self.world.cursors[self.name] = {}
                self.world.epochs[self.name] = self.epoch
        elif f.kind == rp.TOPIC_ERROR:
            h.add("topic_error", self.sid, f["mutate_id"], f["topic"], f["code"])
            if f["code"] == rp.EPOCH_MISMATCH:
                # The store lost what the cursors counted (a memory store
                # restarted): start the topic over in the new epoch.
                self.world.epoch_resets += 1
                self.add([(f["topic"], 0)], self.epoch)
        elif f.kind == rp.MESSAGES:
            last = self.world.cursors[self.name]
            for topic, seq, payload in f["items"]:
                key = payload.split(b"|", 1)[0].decode(errors="replace")
                h.add("msg", self.sid, topic, seq, key, f["mutate_id"])
                last[topic] = max(last.get(topic, 0), seq)
                self.world.deliveries += 1
        elif f.kind == rp.TOPICS_LIVE:
            for t in f["topics"]:
                h.add("live", self.sid, t)
        elif f.kind == rp.CATCHUP_COMPLETE:
            h.add("complete", self.sid, f["mutate_id"])
        elif f.kind == rp.CLOSE:
            h.add("end", self.sid, "close", f["status"])
            self.world.sub_closes[f["status"]] = self.world.sub_closes.get(f["status"], 0) + 1

    def pause(self, seconds):
        """Stops reading (the daemon's send queue for it fills up)."""
        self.paused_until = time.monotonic() + seconds
        self.driver.remove(self)

    def resume_if_due(self):
        if self.paused_until and time.monotonic() >= self.paused_until and not self.closed:
            self.paused_until = 0.0
            self.driver.add(self)


class World:
    def __init__(self, hist, port, rng, topics, pubs=2, subs=3):
        self.hist = hist
        self.port = port
        self.rng = rng
        self.topics = topics
        self.drv = streamcheck.Driver()
        self.pub_names = [f"p{i}" for i in range(pubs)]
        self.sub_names = [f"s{i}" for i in range(subs)]
        self.cursors = {n: {} for n in self.sub_names}
        self.epochs = {n: 0 for n in self.sub_names}  # of the saved cursors
        self.epoch_resets = 0
        self.clients = {}
        self.next_try = {}
        self.acks = 0
        self.deliveries = 0
        self.errors = {}
        self.sub_closes = {}
        self.reconnects = 0
        # Bytes appended to each payload after a '|' (only the part before
        # it is logged and compared).
        self.pad = 0
        # Idempotency keys and re-sends (see the module's doc).
        self.dedup = False
        self.resend = {n: [] for n in self.pub_names}
        self.resent = 0
        self.resend_expired = 0
        self.duplicates = 0

    # -- connections

    def _connect(self, name):
        if time.monotonic() < self.next_try.get(name, 0):
            return None
        try:
            if name in self.cursors:
                cur = {t: self.cursors[name].get(t, 0) for t in self.topics}
                return ChaosSub(self, name, cur)
            return ChaosPub(self, name)
        except OSError:
            self.next_try[name] = time.monotonic() + RETRY_S
            return None

    def _ended(self, c):
        """Logs the end of c's connection; its in-flight publishes are
        forgotten, or kept for a re-send with dedup."""
        self.hist.add("end", c.sid, "eof", None)
        self._close(c)

    def keep_for_resend(self, name, pubs):
        if self.dedup:
            self.resend[name].extend(pubs)

    def _close(self, c):
        if isinstance(c, ChaosPub):
            self.keep_for_resend(c.name, c.inflight.values())
            c.inflight = {}
        # A send that failed marks the client closed without unregistering
        # it; its fd number may come back with the next connection.
        self.drv.remove(c)
        c.close()

    def ensure_connected(self):
        for name in self.pub_names + self.sub_names:
            c = self.clients.get(name)
            if c is not None and c.closed:
                self._ended(c)
                del self.clients[name]
                self.reconnects += 1
            if name not in self.clients:
                c = self._connect(name)
                if c is not None:
                    self.clients[name] = c

    def drop(self, name):
        """Closes a client's socket from our side (connection churn)."""
        c = self.clients.pop(name, None)
        if c is not None:
            self.hist.add("end", c.sid, "local", None)
            self._close(c)

    def drop_all(self):
        for name in list(self.clients):
            self.drop(name)

    # -- load

    def step(self, publishes=4):
        self.ensure_connected()
        for name in self.pub_names:
            c = self.clients.get(name)
            if c is None or c.closed or not c.started or time.monotonic() < c.backoff_until:
                continue
            self._resend(c)
            for _ in range(publishes):
                if len(c.inflight) >= WINDOW:
                    break
                c.publish(self.rng.choice(self.topics))
        for name in self.sub_names:
            c = self.clients.get(name)
            if isinstance(c, ChaosSub):
                c.resume_if_due()
        try:
            self.drv.step(0.005)
        except OSError:
            pass

    def _resend(self, c):
        """Sends again what an earlier connection of c's name left
        unanswered, oldest first, within the window of in-flight publishes."""
        queue = self.resend[c.name]
        now = time.monotonic()
        while queue and len(c.inflight) < WINDOW:
            pub = queue.pop(0)
            if now - pub[2] > RESEND_MAX_S:
                self.resend_expired += 1
                continue
            c.publish(pub[0], again=pub)
            self.resent += 1

    def run(self, seconds, publishes=4):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.step(publishes)

    def idle_pubs(self):
        return all(not c.inflight for n, c in self.clients.items()
                   if isinstance(c, ChaosPub)) and not any(self.resend.values())

    # -- client faults

    def torn_publish(self, topic):
        """Connects, says HELLO, sends part of a PUBLISH and vanishes."""
        payload = f"torn/{self.rng.getrandbits(48):x}"
        frame = rp.encode_publish(2, topic, payload)
        cut = self.rng.randint(1, len(frame) - 1)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(rp.encode_hello(1, name="torn") + frame[:cut])
        except OSError:
            return
        self.hist.add("torn", topic, payload)

    def torn_other(self):
        """Connects and vanishes in the middle of a HELLO or a MUTATE."""
        frames = [rp.encode_hello(1, name="gone"),
                  rp.encode_hello(1, name="gone") + rp.encode_mutate(2, 9, adds=[("t0", 0)])]
        data = self.rng.choice(frames)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(data[:self.rng.randint(1, len(data) - 1)])
        except OSError:
            pass

    # -- the end

    def settle(self, timeout_s, heads_fn):
        """Stops publishing, waits for every answer, then for every durable
        subscriber to reach the heads that storage reports. Returns what
        is still missing (empty when settled)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.idle_pubs():
            self.step(publishes=0)
        if not self.idle_pubs():
            # Publishes still unanswered at the deadline: not settled, and
            # storage heads read now could still move.
            return {"(publishers)": "publishes still unanswered after %.0f s" % timeout_s}
        heads = heads_fn()
        while True:
            behind = {n: {t: self.cursors[n].get(t, 0) for t in self.topics
                          if self.cursors[n].get(t, 0) < heads.get(t, 0)}
                      for n in self.sub_names}
            behind = {n: b for n, b in behind.items() if b}
            if not behind or time.monotonic() >= deadline:
                return behind
            self.step(publishes=0)
