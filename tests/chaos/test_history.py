"""The checker on hand-made histories: a clean one passes, and each kind of
contract break is reported under its guarantee. (test_chaos.py runs it on
real ones; docs/RELIABILITY.md shows it failing on broken daemons.)"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import history  # noqa: E402


def clean():
    """p publishes a#1, a#2; s subscribes from 0, gets a#1 as history, goes
    live, gets a#2 live."""
    return [
        ("session", 1, "p", "pub"),
        ("session", 2, "s", "sub"),
        ("mutate", 2, 1, [("a", 0, 0)], [], False, 0),
        ("pub", 1, 2, "a", "k1"),
        ("ack", 1, 2, "a", 1),
        ("msg", 2, "a", 1, "k1", 1),
        ("live", 2, "a"),
        ("complete", 2, 1),
        ("pub", 1, 3, "a", "k2"),
        ("ack", 1, 3, "a", 2),
        ("msg", 2, "a", 2, "k2", 0),
    ]


STORAGE = {"a": {1: "k1", 2: "k2"}}


def run(events, storage=None):
    v, stats = history.check(events, STORAGE if storage is None else storage,
                             durable_subs=["s"], topics=["a"])
    return v, stats


def test_clean_history_has_no_violation():
    v, stats = run(clean())
    assert v == []
    assert stats["acks"] == 2 and stats["deliveries"] == 2


def test_acked_message_missing_from_storage_is_g2():
    v, _ = run(clean(), {"a": {1: "k1"}})
    assert any(x.startswith("G2: acked a#2") for x in v), v


def test_storage_hole_is_g1():
    v, _ = run(clean(), {"a": {1: "k1", 3: "k2"}})
    assert any("not dense" in x for x in v), v


def test_seq_acked_twice_is_g1():
    ev = clean()
    ev[9] = ("ack", 1, 3, "a", 1)
    v, _ = run(ev)
    assert any("acked twice" in x for x in v), v


def test_live_message_before_topics_live_is_g3():
    ev = clean()
    ev[5] = ("msg", 2, "a", 1, "k1", 0)  # mutate_id 0: a live frame
    v, _ = run(ev)
    assert any("live before the gate" in x for x in v), v


def test_gap_and_duplicate_are_g3():
    ev = clean()
    del ev[5]  # a#1 never delivered
    v, _ = run(ev)
    assert any("gap on a" in x for x in v), v
    assert any("missing [1]" in x for x in v), v
    ev = clean() + [("msg", 2, "a", 2, "k2", 0)]
    v, _ = run(ev)
    assert any("duplicate" in x for x in v), v


def test_catchup_complete_before_topics_live_is_g3():
    ev = clean()
    ev[6], ev[7] = ev[7], ev[6]
    v, _ = run(ev)
    assert any("before TOPICS_LIVE of ['a']" in x for x in v), v


def test_delivery_differing_from_storage_is_g1():
    ev = clean()
    ev[10] = ("msg", 2, "a", 2, "other", 0)
    v, _ = run(ev)
    assert any(x.startswith("G1: s got a#2") for x in v), v


def test_torn_publish_committed_is_g2():
    v, _ = run(clean() + [("torn", "a", "k2")])
    assert any("torn publish" in x for x in v), v


def test_resume_across_sessions_from_cursor_is_clean():
    """s loses its connection after a#1 and resumes from cursor 1."""
    ev = clean()[:8] + [
        ("end", 2, "eof", None),
        ("session", 3, "s", "sub"),
        ("mutate", 3, 1, [("a", 1, 0)], [], False, 0),
        ("pub", 1, 3, "a", "k2"),
        ("ack", 1, 3, "a", 2),
        ("msg", 3, "a", 2, "k2", 1),
        ("live", 3, "a"),
        ("complete", 3, 1),
    ]
    v, _ = run(ev)
    assert v == []


def test_lost_publish_committed_is_indeterminate_not_a_violation():
    ev = clean()[:8] + [("pub", 1, 3, "a", "k2"), ("msg", 2, "a", 2, "k2", 0)]
    v, stats = run(ev)
    assert v == []
    assert stats["lost"] == 1 and stats["indeterminate_committed"] == 1


def restarted():
    """s's second connection meets a new epoch (7 -> 8) with its cursor 2."""
    return clean()[:2] + [("started", 2, 7)] + clean()[2:] + [
        ("end", 2, "eof", None),
        ("session", 3, "s", "sub"),
        ("mutate", 3, 1, [("a", 2, 0)], [], False, 7),
        ("started", 3, 8),
    ]


def test_stale_cursor_answered_epoch_mismatch_is_clean():
    ev = restarted() + [("topic_error", 3, 1, "a", 14), ("complete", 3, 1)]
    v, stats = history.check(ev, STORAGE)
    assert v == [] and stats["epoch_mismatches"] == 1


def test_stale_cursor_served_is_a_silent_jump():
    ev = restarted() + [("msg", 3, "a", 3, "k3", 1), ("live", 3, "a"), ("complete", 3, 1)]
    v, _ = history.check(ev, {"a": {1: "k1", 2: "k2", 3: "k3"}})
    assert any("silent jump" in x for x in v), v


def test_epoch_mismatch_for_a_current_cursor_is_reported():
    ev = restarted()[:-1] + [("started", 3, 7), ("topic_error", 3, 1, "a", 14),
                             ("complete", 3, 1)]
    v, _ = history.check(ev, STORAGE)
    assert any("epoch_mismatch for a" in x for x in v), v


def test_only_the_final_epoch_is_compared_with_storage():
    """Storage of epoch 8 is empty: the deliveries of epoch 7 are not judged."""
    ev = restarted() + [("topic_error", 3, 1, "a", 14), ("complete", 3, 1)]
    v, stats = history.check(ev, {}, epoch=8)
    assert v == [] and stats["other_epoch_deliveries"] == 2



def resent(second_ack=("ack", 3, 2, "a", 2, True), second_pub=("pub", 3, 2, "a", "k2")):
    """The clean history, where p's connection dies before a#2's ack and a
    new connection sends it again with the same key: a duplicate answer."""
    ev = clean()
    ev[9:10] = [("end", 1, "eof", None), ("session", 3, "p", "pub"), second_pub, second_ack]
    return ev


def test_resend_answered_as_duplicate_is_clean():
    ev = resent()
    assert ev[-1][0] == "msg"
    v, stats = run(ev)
    assert v == [] and stats["duplicate_acks"] == 1, v


def test_both_acks_of_a_resend_are_clean():
    ev = resent()
    ev.insert(9, ("ack", 1, 3, "a", 2))
    v, _ = run(ev)
    assert v == [], v


def test_resend_stored_twice_is_dedup():
    ev = resent(second_ack=("ack", 3, 2, "a", 3, False))
    ev.insert(9, ("ack", 1, 3, "a", 2))
    v, _ = run(ev, {"a": {1: "k1", 2: "k2", 3: "k2"}})
    assert any(x.startswith("dedup: 'k2' stored twice, as a#2 and a#3") for x in v), v
    assert any(x.startswith("dedup: 'k2' acked as a#2 and as a#3") for x in v), v


def test_duplicate_flag_on_another_payload_is_g1():
    ev = resent(second_pub=("pub", 3, 2, "a", "k3"), second_ack=("ack", 3, 2, "a", 1, True))
    v, _ = run(ev)
    assert any("a#1 acked twice" in x for x in v), v
