"""A non-blocking protocol client and a checker of the stream contract
(DESIGN §1): per topic, seqs dense and in order, no gap, no duplicate,
markers in their place. Used by the stream tests to drive many connections
from one thread."""

import selectors
import socket
import time

import rbproto as rp


class Client:
    """One connection driven by a Driver: frames decoded as they arrive,
    server PINGs answered, events handed to on_frame."""

    def __init__(self, driver, port, name="c", transport=None):
        """transport: None for tcp, else a factory port -> stream with
        sock, send, recv and flush (rbtransport.nb_factory: tls, ws, wss)."""
        self.driver = driver
        self.name = name
        if transport is None:
            self.sock = socket.create_connection(("127.0.0.1", port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setblocking(False)
            self.io = self.sock
        else:
            self.io = transport(port)
            self.sock = self.io.sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closed = False
        self.frames_in = 0
        self.errors = []
        self.close_frame = None
        driver.add(self)
        self.send(rp.encode_hello(1, name=name))

    def send(self, data):
        self.outbuf += data
        self.flush()

    def flush(self):
        while self.outbuf and not self.closed:
            try:
                n = self.io.send(self.outbuf)
            except BlockingIOError:
                break
            except (BrokenPipeError, ConnectionResetError):
                self.closed = True
                break
            del self.outbuf[:n]
        if self.io is not self.sock and not self.closed:
            self.io.flush()

    def on_readable(self):
        try:
            data = self.io.recv(1 << 20)
        except BlockingIOError:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            self.driver.remove(self)
            return
        self.inbuf += data
        while True:
            f, n = rp.decode(self.inbuf)
            if f is None:
                break
            del self.inbuf[:n]
            self.frames_in += 1
            if f.kind == rp.PING:
                self.send(rp.encode_pong(0, f["nonce"]))
                continue
            if f.kind == rp.ERROR:
                self.errors.append(f)
            if f.kind == rp.CLOSE:
                self.close_frame = f
            self.on_frame(f)

    def on_frame(self, f):
        pass

    def close(self):
        if not self.closed:
            self.closed = True
            self.driver.remove(self)
        self.sock.close()


class Driver:
    """Runs many Clients from one thread until a condition holds."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()

    def add(self, c):
        self.sel.register(c.sock, selectors.EVENT_READ, c)

    def remove(self, c):
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass

    def step(self, timeout=0.05):
        for key, _ in self.sel.select(timeout=timeout):
            key.data.on_readable()
        for key in list(self.sel.get_map().values()):
            key.data.flush()

    def run_until(self, cond, timeout, what="condition"):
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            self.step()


class Publisher(Client):
    """Pipelines publishes; records every ack per topic."""

    def __init__(self, driver, port, name="pub", transport=None):
        super().__init__(driver, port, name, transport)
        self.corr = 1
        self.inflight = {}  # corr -> topic
        self.acks = {}  # topic -> [seq...] in ack order
        self.started = False

    def publish(self, topic, payload):
        self.corr += 1
        self.inflight[self.corr] = topic
        self.send(rp.encode_publish(self.corr, topic, payload))

    def on_frame(self, f):
        if f.kind == rp.STARTED:
            self.started = True
        elif f.kind == rp.PUBLISH_ACK:
            topic = self.inflight.pop(f.corr)
            assert topic == f["topic"], (topic, f)
            self.acks.setdefault(topic, []).append(f["seq"])
        elif f.kind == rp.ERROR:
            raise AssertionError(f"{self.name}: publish error {f.fields}")


class Subscriber(Client):
    """Tracks, per topic, the episode opened by an add and checks every
    message against it: the first seq is cursor+1 (or above the head known
    when a `now` add was sent), then each next seq is the previous + 1.
    A TOPIC_ERROR must be one the add made possible (a cursor from another
    epoch, or beyond the head known when the add was sent) and ends the
    episode; an ERROR must be one the test provoked on purpose."""

    def __init__(self, driver, port, name="sub", strict_errors=True, transport=None):
        super().__init__(driver, port, name, transport)
        self.expect = {}  # topic -> next seq expected, or ("now", bound)
        self.removing = {}  # mutate_id -> [topics]
        self.wave_topics = {}  # mutate_id -> set of topics awaiting TOPICS_LIVE
        self.live = set()
        self.completed = []
        self.messages = []  # (topic, seq, payload, mutate_id)
        self.last = {}  # topic -> last seq seen
        self.next_mutate = 1
        self.strict_errors = strict_errors
        self.problems = []
        self.epoch = None  # from STARTED
        self.adds_sent = {}  # mutate_id -> {topic: (cursor, known head, epoch ok)}
        self.expected_errors = {}  # corr -> wire code name of an ERROR provoked on purpose
        self.topic_errors = []  # (topic, code name)
        self.must_refuse = {}  # mutate_id -> topics that must get TOPIC_ERROR epoch_mismatch

    def mutate(self, adds=(), removes=(), history_only=False, now_bounds=None, epoch="right",
               hold=False):
        """epoch: "right" (STARTED's), "zero" (none known) or "wrong". hold
        keeps the frame for the next send, so that both go in one write."""
        mid = self.next_mutate
        self.next_mutate += 1
        bounds = now_bounds or {}
        self.adds_sent[mid] = {t: (c, bounds.get(t, 0), epoch != "wrong") for t, c in adds}
        # A SEQ cursor other than 0 under a wrong epoch must be refused.
        self.must_refuse[mid] = {t for t, c in adds if epoch == "wrong" and c not in ("now", 0)}
        for topic, cursor in adds:
            if cursor == "now":
                self.expect[topic] = ("now", bounds.get(topic, 0))
            else:
                self.expect[topic] = cursor + 1
            self.live.discard(topic)
        self.removing[mid] = [t for t in removes if t not in {a for a, _ in adds}]
        self.wave_topics[mid] = {t for t, _ in adds} if not history_only else set()
        wire_epoch = {"right": self.epoch or 0, "zero": 0, "wrong": (self.epoch or 0) ^ 0xE90C}[epoch]
        frame = rp.encode_mutate(mid, mid, adds=adds, removes=removes,
                                 history_only=history_only, epoch=wire_epoch)
        if hold:
            self.outbuf += frame
        else:
            self.send(frame)
        return mid

    def reuse_in_flight(self, mid, removes):
        """A removes-only MUTATE reusing the id of wave mid, sent while that
        wave is in flight: invalid_argument, and none of its removes apply."""
        corr = 10_000_000 + mid
        self.expected_errors[corr] = "invalid_argument"
        self.send(rp.encode_mutate(corr, mid, removes=removes))

    def on_topic_error(self, f):
        mid, topic, code = f["mutate_id"], f["topic"], f["code_name"]
        self.topic_errors.append((topic, code))
        sent = self.adds_sent.get(mid, {}).get(topic)
        if sent is None or mid not in self.wave_topics:
            self.problems.append(f"{self.name}: TOPIC_ERROR {f.fields} for no add of wave {mid}")
            return
        cursor, known_head, epoch_ok = sent
        seq_cursor = cursor if cursor != "now" else None
        if code == "epoch_mismatch":
            ok = not epoch_ok and seq_cursor not in (None, 0)
        elif code == "cursor_ahead":
            ok = epoch_ok and seq_cursor is not None and seq_cursor > known_head
        else:
            ok = False
        if not ok:
            self.problems.append(f"{self.name}: unjustified TOPIC_ERROR {f.fields} for "
                                 f"cursor {cursor} (head {known_head}, epoch ok {epoch_ok})")
        self.expect.pop(topic, None)
        self.live.discard(topic)
        self.wave_topics[mid].discard(topic)
        self.must_refuse.get(mid, set()).discard(topic)

    def on_frame(self, f):
        if f.kind == rp.STARTED:
            self.epoch = f["epoch"]
        elif f.kind == rp.TOPIC_ERROR:
            self.on_topic_error(f)
        elif f.kind == rp.MESSAGES:
            for topic, seq, payload in f["items"]:
                self.check_message(topic, seq)
                self.messages.append((topic, seq, payload, f["mutate_id"]))
        elif f.kind == rp.TOPICS_LIVE:
            for t in f["topics"]:
                self.live.add(t)
                for mid, pending in self.wave_topics.items():
                    pending.discard(t)
        elif f.kind == rp.CATCHUP_COMPLETE:
            mid = f["mutate_id"]
            if mid in self.completed:
                self.problems.append(f"{self.name}: second CATCHUP_COMPLETE for {mid}")
            if self.wave_topics.get(mid):
                self.problems.append(
                    f"{self.name}: CATCHUP_COMPLETE {mid} before TOPICS_LIVE of "
                    f"{sorted(self.wave_topics[mid])}")
            if self.must_refuse.get(mid):
                self.problems.append(
                    f"{self.name}: wave {mid} accepted cursors of a wrong epoch for "
                    f"{sorted(self.must_refuse[mid])}")
            self.completed.append(mid)
            for t in self.removing.pop(mid, []):
                self.expect.pop(t, None)
                self.live.discard(t)
        elif f.kind == rp.ERROR and f.corr in self.expected_errors:
            want = self.expected_errors.pop(f.corr)
            if f["code_name"] != want:
                self.problems.append(f"{self.name}: error {f.fields}, expected {want}")
        elif f.kind == rp.ERROR and self.strict_errors:
            self.problems.append(f"{self.name}: error {f.fields}")

    def check_message(self, topic, seq):
        exp = self.expect.get(topic)
        if exp is None:
            self.problems.append(f"{self.name}: message {topic}#{seq} on a topic not subscribed")
            return
        if isinstance(exp, tuple):
            if seq <= exp[1]:
                self.problems.append(
                    f"{self.name}: {topic}#{seq} delivered for a 'now' add whose head was "
                    f">= {exp[1]}")
        elif seq != exp:
            kind = "gap" if seq > exp else "duplicate or reorder"
            self.problems.append(f"{self.name}: {kind} on {topic}: got {seq}, expected {exp}")
        self.expect[topic] = seq + 1
        self.last[topic] = seq


def run_random_streams(drv, pubs, subs, topics, rng, steps, publishes_max, payload):
    """The randomized contract check: for `steps` rounds, each publisher
    sends up to `publishes_max` messages (payload(rng, publisher, step)) to
    random topics while each subscriber whose waves are complete may add
    topics with random cursors (0, now, or up to head + 3) under the right
    epoch, no epoch or (sometimes) a wrong one, or remove some; right after
    an add wave it sometimes sends a removes-only MUTATE reusing the wave's
    id, which must be refused whole. Then every wave must complete, acks
    must be dense per topic, and after markers published to every topic
    each subscriber must have reached the head of every topic it holds with
    no problem, no unprovoked error, every held topic live, every
    TOPIC_ERROR justified (wrong epoch, or a cursor above the known head)
    and every nonzero SEQ cursor under a wrong epoch refused."""

    def head(t):
        return max((s for p in pubs for s in p.acks.get(t, [])), default=0)

    def mutate_one(s):
        on = list(s.expect)
        if on and rng.random() < 0.35:
            s.mutate(removes=rng.sample(on, rng.randint(1, len(on))))
            return
        off = [t for t in topics if t not in s.expect]
        if not off:
            return
        adds = []
        for t in rng.sample(off, rng.randint(1, len(off))):
            r = rng.random()
            adds.append((t, 0 if r < 0.3 else "now" if r < 0.55 else rng.randint(0, head(t) + 3)))
        r = rng.random()
        epoch = "wrong" if r < 0.1 else "zero" if r < 0.3 else "right"
        # Reuse the id while the wave is surely in flight: a cursor-0 add of
        # a topic with history needs a storage read, and both MUTATEs go out
        # in one write.
        reuse = on and rng.random() < 0.3 and any(c == 0 and head(t) > 0 for t, c in adds)
        mid = s.mutate(adds=adds, now_bounds={t: head(t) for t, _ in adds}, epoch=epoch,
                       hold=reuse)
        if reuse:
            s.reuse_in_flight(mid, rng.sample(on, rng.randint(1, len(on))))

    def waves_done(s):
        return all(m in s.completed for m in range(1, s.next_mutate))

    for step in range(steps):
        for p in pubs:
            for _ in range(rng.randint(0, publishes_max)):
                p.publish(rng.choice(topics), payload(rng, p, step))
        for s in subs:
            if waves_done(s) and rng.random() < 0.5:
                mutate_one(s)
        for _ in range(rng.randint(1, 4)):
            drv.step(0.01)
    drv.run_until(lambda: all(not p.inflight for p in pubs), 30, "acks")
    for s in subs:
        drv.run_until(lambda: waves_done(s), 30, f"{s.name} waves")
    # Markers published after every wave completed reach every subscriber of
    # the topic, whatever cursor its add had (at most head + 3 at the time).
    for t in topics:
        for _ in range(4):
            pubs[0].publish(t, "marker")
    drv.run_until(lambda: not pubs[0].inflight, 30, "marker acks")
    heads = {t: head(t) for t in topics}
    for t in topics:
        acked = sorted(x for p in pubs for x in p.acks.get(t, []))
        assert acked == list(range(1, heads[t] + 1)), f"acks of {t} are not dense"
    for s in subs:
        try:
            drv.run_until(lambda: all(e == heads[t] + 1 for t, e in s.expect.items()), 30,
                          f"{s.name} to reach the heads")
        except AssertionError as e:
            raise AssertionError(f"{e}: heads {heads}, expect {s.expect}, "
                                 f"problems {s.problems}, errors {s.errors}") from None
        assert s.problems == [], s.problems
        assert s.expected_errors == {}, f"provoked errors never came: {s.expected_errors}"
        provoked = sum(1 for e in s.errors if e["code_name"] == "invalid_argument")
        assert len(s.errors) == provoked, s.errors
        assert s.live == set(s.expect), (s.live, set(s.expect))
