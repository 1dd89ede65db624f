"""The history of a chaos run and the one checker of DESIGN.md §1 (G1–G4)
over it.

Every operation a chaos client performs is appended to a History as a
tuple whose first element names it:

  ("session", sid, name, role)            a connection opened (role "pub"/"sub")
  ("started", sid, epoch)                 its STARTED, with the store's epoch
  ("pub", sid, corr, topic, payload)      a PUBLISH was sent
  ("ack", sid, corr, topic, seq, dup)     its PUBLISH_ACK arrived; dup: its
                                          duplicate flag (a re-send's key
                                          was stored before)
  ("err", sid, corr, code)                its ERROR arrived
  ("mutate", sid, mid, adds, removes, history_only, epoch)
                                          a MUTATE was sent; adds are
                                          (topic, cursor, now_bound) with
                                          cursor an int or "now"; epoch is
                                          the one its cursors belong to
  ("msg", sid, topic, seq, payload, mid)  a delivered message
  ("live", sid, topic)                    TOPICS_LIVE named topic
  ("complete", sid, mid)                  CATCHUP_COMPLETE
  ("topic_error", sid, mid, topic, code)  TOPIC_ERROR: the topic left the stream
  ("end", sid, how, code)                 the connection ended: how is
                                          "close" (a CLOSE frame, code its
                                          status), "eof" or "local"
  ("torn", topic, payload)                a client sent part of a PUBLISH
                                          and vanished: it may never commit

After the run the checker gets the history and what storage holds (topic ->
{seq: payload}) and returns the violations (strings) and counts. What it
verifies:

G1  storage holds seq 1..head per topic, dense; no (topic, seq) is acked
    twice; every delivery carries the stored payload of its (topic, seq),
    so all subscribers see one sequence.
G2  every acked (topic, seq) is in storage with the payload that was
    published; a torn publish is not.
Dedup: every payload is unique to one publish (its re-sends, with the same
    idempotency key, carry it again), so storage holds each payload at most
    once and every ack of it names the same (topic, seq); a (topic, seq)
    is acked twice only as a duplicate answer of the same payload.
G3  per subscriber connection and topic, from the add: seq cursor+1, +2, …
    with no gap and no duplicate (a "now" add starts above the head known
    when it was sent); history messages carry their wave's mutate_id and
    come before TOPICS_LIVE, live ones carry 0 and come after it; one
    TOPICS_LIVE per add, one CATCHUP_COMPLETE per Mutate, after every
    TOPICS_LIVE of its wave.
G3/G4 across connections: a durable subscriber resumes from the last seq
    it has after every close (explicit lag, shutdown, kill), so over its
    whole life it must have every stored message of its topics exactly
    once, up to the final head.
Epochs: an add whose cursor (> 0) comes from another epoch than the
    connection's STARTED must end in TOPIC_ERROR epoch_mismatch, with
    nothing delivered for it; no other add may get one. When the store
    changed epoch during the run (the memory store restarted), only
    connections of the final epoch are compared with storage.

Publishes answered with an error, or whose connection died first, are
indeterminate (a commit whose ack was lost is allowed); they are counted,
not judged."""

import time


class History:
    def __init__(self):
        self.t0 = time.monotonic()
        self.events = []
        self._sid = 0

    def new_session(self, name, role):
        self._sid += 1
        self.add("session", self._sid, name, role)
        return self._sid

    def add(self, *event):
        self.events.append(event)


class _Episode:
    """One topic on one subscriber connection, from its add."""

    __slots__ = ("next", "now_bound", "mid", "live", "history_only", "removing", "epoch")

    def __init__(self, cursor, now_bound, mid, history_only, epoch):
        self.next = None if cursor == "now" else cursor + 1
        self.now_bound = now_bound
        self.mid = mid
        self.live = False
        self.history_only = history_only
        self.removing = False
        # The epoch of a cursor above 0 (cursor 0 and now hold in any epoch).
        self.epoch = epoch if cursor != "now" and cursor > 0 else 0


class _Session:
    def __init__(self, name, role):
        self.name = name
        self.role = role
        self.epoch = None  # from STARTED
        self.episodes = {}  # topic -> _Episode
        self.waves = {}  # mid -> set of topics awaiting TOPICS_LIVE
        self.removes = {}  # mid -> topics removed by it
        self.completed = set()
        self.ended = None


def check(events, storage, durable_subs=(), topics=(), epoch=None):
    """Returns (violations, stats). storage: topic -> {seq: payload};
    durable_subs: names of subscribers that must end with every stored
    message of `topics` exactly once; epoch: the store's epoch at the end
    (None: it never changed), when only that epoch's connections count."""
    v = []
    stats = {"publishes": 0, "acks": 0, "errors": 0, "lost": 0, "deliveries": 0,
             "sessions": 0, "lag_closes": 0, "indeterminate_committed": 0, "torn": 0,
             "epoch_mismatches": 0, "other_epoch_deliveries": 0, "duplicate_acks": 0}
    _check_storage(storage, v)
    sessions = {}
    sent = {}  # (sid, corr) -> (topic, payload)
    answered = set()
    acked = {}  # (topic, seq) -> payload
    acked_at = {}  # payload -> (topic, seq) of its first ack
    errored_payloads = set()
    life = {}  # durable name -> topic -> list of seqs in delivery order
    for ev in events:
        kind = ev[0]
        if kind == "session":
            sessions[ev[1]] = _Session(ev[2], ev[3])
            stats["sessions"] += 1
        elif kind == "started":
            sessions[ev[1]].epoch = ev[2]
        elif kind == "pub":
            if _counts(sessions[ev[1]], epoch):
                sent[(ev[1], ev[2])] = (ev[3], ev[4])
            stats["publishes"] += 1
        elif kind == "ack":
            if _counts(sessions[ev[1]], epoch):
                _on_ack(ev, sent, answered, acked, acked_at, storage, v)
            stats["acks"] += 1
            stats["duplicate_acks"] += bool(ev[5:] and ev[5])
        elif kind == "err":
            answered.add((ev[1], ev[2]))
            if (ev[1], ev[2]) in sent:
                errored_payloads.add(sent[(ev[1], ev[2])])
            stats["errors"] += 1
        elif kind == "torn":
            stats["torn"] += 1
            if ev[2] in storage.get(ev[1], {}).values():
                v.append(f"G2: torn publish {ev[2]!r} on {ev[1]} was committed")
        elif kind in ("mutate", "msg", "live", "complete", "end", "topic_error"):
            s = sessions[ev[1]]
            if kind == "topic_error" and ev[4] == EPOCH_MISMATCH:
                stats["epoch_mismatches"] += 1
            if kind == "msg":
                stats["deliveries"] += 1
            if kind == "msg" and not _counts(s, epoch):
                stats["other_epoch_deliveries"] += 1
            elif kind == "msg":
                life.setdefault(s.name, {}).setdefault(ev[2], []).append(ev[3])
                if ev[3] not in storage.get(ev[2], {}) or storage[ev[2]][ev[3]] != ev[4]:
                    v.append(f"G1: {s.name} got {ev[2]}#{ev[3]} = {ev[4]!r}, storage has "
                             f"{storage.get(ev[2], {}).get(ev[3])!r}")
            if kind == "end" and ev[2] == "close" and ev[3] == 6:
                stats["lag_closes"] += 1
            _on_stream(s, ev, v)
    for key, (topic, payload) in sent.items():
        if key not in answered:
            stats["lost"] += 1
        if (key not in answered or (topic, payload) in errored_payloads) and \
                payload in storage.get(topic, {}).values():
            stats["indeterminate_committed"] += 1
    for name in durable_subs:
        _check_life(name, life.get(name, {}), storage, topics, v)
    return v, stats


EPOCH_MISMATCH = 14


def _counts(s, epoch):
    """Whether session s belongs to the epoch storage was read in."""
    return epoch is None or s.epoch == epoch


def _check_storage(storage, v):
    where = {}  # payload -> (topic, seq)
    for topic, rows in storage.items():
        if sorted(rows) != list(range(1, len(rows) + 1)):
            missing = sorted(set(range(1, max(rows, default=0) + 1)) - set(rows))
            v.append(f"G1: storage of {topic} is not dense: missing {missing[:10]}")
        for seq in sorted(rows):
            first = where.setdefault(rows[seq], (topic, seq))
            if first != (topic, seq):
                v.append(f"dedup: {rows[seq]!r} stored twice, as {first[0]}#{first[1]} and "
                         f"{topic}#{seq}")


def _on_ack(ev, sent, answered, acked, acked_at, storage, v):
    _, sid, corr, topic, seq = ev[:5]
    dup = bool(ev[5:] and ev[5])
    key = (sid, corr)
    if key not in sent:
        v.append(f"ack for a publish never sent: session {sid} corr {corr}")
        return
    if key in answered:
        v.append(f"second answer for session {sid} corr {corr}")
    answered.add(key)
    want_topic, payload = sent[key]
    if topic != want_topic:
        v.append(f"ack of corr {corr} names {topic}, the publish went to {want_topic}")
    if (topic, seq) in acked and not (dup and acked[(topic, seq)] == payload):
        v.append(f"G1: {topic}#{seq} acked twice ({acked[(topic, seq)]!r} and {payload!r})")
    acked[(topic, seq)] = payload
    first = acked_at.setdefault(payload, (topic, seq))
    if first != (topic, seq):
        v.append(f"dedup: {payload!r} acked as {first[0]}#{first[1]} and as {topic}#{seq}")
    stored = storage.get(topic, {}).get(seq)
    if stored != payload:
        v.append(f"G2: acked {topic}#{seq} = {payload!r} but storage has {stored!r}")


def _on_stream(s, ev, v):
    kind = ev[0]
    who = f"{s.name}[{ev[1]}]"
    if kind == "end" and s.ended is not None:
        return  # the socket's end after a CLOSE frame
    if s.ended is not None:
        v.append(f"{who}: {kind} after the connection ended")
        return
    if kind == "mutate":
        _, _, mid, adds, removes, history_only, epoch = ev
        for t in removes:
            if t in s.episodes:
                s.episodes[t].removing = True
        s.removes[mid] = list(removes)
        for topic, cursor, bound in adds:
            s.episodes[topic] = _Episode(cursor, bound, mid, history_only, epoch)
        s.waves[mid] = {t for t, _, _ in adds if not history_only or _stale(s, s.episodes[t])}
    elif kind == "topic_error":
        _, _, mid, topic, code = ev
        ep = s.episodes.get(topic)
        if ep is None or ep.mid != mid:
            v.append(f"G3: {who}: TOPIC_ERROR {code} for {topic}, not an add of wave {mid}")
            return
        if code == EPOCH_MISMATCH and not _stale(s, ep):
            v.append(f"epoch: {who}: epoch_mismatch for {topic}, cursor of epoch {ep.epoch}, "
                     f"connection epoch {s.epoch}")
        elif code != EPOCH_MISMATCH:
            v.append(f"G3: {who}: TOPIC_ERROR {code} for {topic} (next seq {ep.next})")
        del s.episodes[topic]
        s.waves.get(mid, set()).discard(topic)
    elif kind == "msg":
        _on_msg(s, who, ev, v)
    elif kind == "live":
        ep = s.episodes.get(ev[2])
        if ep is not None and _stale(s, ep):
            v.append(f"epoch: {who}: {ev[2]} went live from a cursor of epoch {ep.epoch} on "
                     f"a connection of epoch {s.epoch}: a silent jump")
        if ep is None or ep.live or ep.history_only:
            v.append(f"G3: {who}: TOPICS_LIVE {ev[2]} unexpected (not added, already live "
                     f"or history_only)")
        else:
            ep.live = True
            s.waves.get(ep.mid, set()).discard(ev[2])
    elif kind == "complete":
        mid = ev[2]
        if mid in s.completed or mid not in s.waves:
            v.append(f"G3: {who}: CATCHUP_COMPLETE {mid} twice or for no Mutate")
        elif s.waves[mid]:
            v.append(f"G3: {who}: CATCHUP_COMPLETE {mid} before TOPICS_LIVE of "
                     f"{sorted(s.waves[mid])}")
        s.completed.add(mid)
        for t in s.removes.pop(mid, []):
            ep = s.episodes.get(t)
            if ep is not None and ep.removing:
                del s.episodes[t]
    elif kind == "end":
        s.ended = ev[2:]


def _stale(s, ep):
    """An add whose cursor is from another epoch than the connection's."""
    return ep.epoch != 0 and s.epoch is not None and ep.epoch != s.epoch


def _on_msg(s, who, ev, v):
    _, _, topic, seq, _, mid = ev
    ep = s.episodes.get(topic)
    if ep is None:
        v.append(f"G3: {who}: {topic}#{seq} on a topic not on the stream")
        return
    if _stale(s, ep):
        v.append(f"epoch: {who}: {topic}#{seq} delivered for a cursor of epoch {ep.epoch} on "
                 f"a connection of epoch {s.epoch}: a silent jump")
    if ep.next is None:
        if seq <= ep.now_bound:
            v.append(f"G3: {who}: {topic}#{seq} for a 'now' add above head {ep.now_bound}")
    elif seq != ep.next:
        what = "gap" if seq > ep.next else "duplicate or reorder"
        v.append(f"G3: {who}: {what} on {topic}: got {seq}, expected {ep.next}")
    ep.next = seq + 1
    if ep.removing:
        return
    if not ep.live and mid != ep.mid:
        v.append(f"G3: {who}: {topic}#{seq} with mutate_id {mid} before TOPICS_LIVE "
                 f"(wave {ep.mid}): live before the gate")
    if ep.live and mid != 0:
        v.append(f"G3: {who}: {topic}#{seq} of wave {mid} after TOPICS_LIVE")


def _check_life(name, seen, storage, topics, v):
    for t in topics:
        got = seen.get(t, [])
        head = len(storage.get(t, {}))
        if got == list(range(1, head + 1)):
            continue
        dups = len(got) - len(set(got))
        missing = sorted(set(range(1, head + 1)) - set(got))
        v.append(f"G3/G4: {name} over its life on {t}: {len(got)} deliveries for head {head}, "
                 f"{dups} duplicates, missing {missing[:10]}{'...' if len(missing) > 10 else ''}")
