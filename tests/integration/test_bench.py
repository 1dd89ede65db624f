"""`ringbus bench` smoke tests: every mode runs against a real daemon with
tiny counts and reports sane figures (nothing lost, nothing out of order,
percentiles ordered). The real benchmark is bench/run.sh; it never runs
here."""

import json
import subprocess

import rbtransport as rt
from conftest import RINGBUS, free_port

TIMEOUT_S = 30


def bench(url, *args, expect_rc=0):
    p = subprocess.run(
        [str(RINGBUS), "--url", url, "bench", *args, "--duration", "15"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert p.returncode == expect_rc, f"rc {p.returncode}\nstdout:{p.stdout}\nstderr:{p.stderr}"
    return p


def figure(url, *args):
    p = bench(url, *args, "--json")
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    assert len(lines) == 1, p.stdout
    fig = json.loads(lines[0])
    assert fig["system"] == "ringbus"
    assert fig["mode"] == args[0]
    assert fig["complete"] is True, fig
    return fig


def test_pubsub_delivers_every_message_to_every_subscriber_in_order(make_daemon):
    d = make_daemon()
    f = figure(d.url, "pubsub", "--count", "3000", "--publishers", "2",
               "--subscribers", "3", "--topics", "4", "--size", "64", "--window", "64")
    assert (f["publishers"], f["subscribers"], f["topics"], f["size"]) == (2, 3, 4, 64)
    assert f["published"] == f["acked"] == 3000
    assert f["ack_errors"] == 0
    assert f["expected"] == f["delivered"] == 9000
    assert f["lost"] == 0 and f["order_errors"] == 0
    assert f["msgs_per_s"] > 0 and f["pub_msgs_per_s"] > 0
    assert f["elapsed_s"] > 0
    assert abs(f["mb_per_s"] - f["msgs_per_s"] * 64 / 1e6) < 1e-3 * f["mb_per_s"] + 1e-9


def test_pubsub_without_subscribers_measures_acked_publishes(make_daemon):
    d = make_daemon()
    f = figure(d.url, "pubsub", "--count", "2000", "--subscribers", "0")
    assert f["acked"] == 2000 and f["delivered"] == 0 and f["expected"] == 0
    assert f["msgs_per_s"] > 0


def test_fanout_copies_each_message_to_each_subscriber(make_daemon):
    d = make_daemon()
    f = figure(d.url, "fanout", "--count", "1500", "--subscribers", "5", "--size", "256")
    assert f["publishers"] == 1 and f["topics"] == 1 and f["subscribers"] == 5
    assert f["delivered"] == f["expected"] == 7500
    assert f["lost"] == 0 and f["order_errors"] == 0


def test_latency_reports_ordered_percentiles_at_the_asked_rate(make_daemon):
    d = make_daemon()
    f = figure(d.url, "latency", "--rate", "2000", "--count", "1000", "--size", "16")
    assert f["published"] == f["delivered"] == 1000
    assert f["lost"] == 0 and f["order_errors"] == 0
    ps = [f["p50_us"], f["p90_us"], f["p99_us"], f["p999_us"], f["max_us"]]
    assert 0 < ps[0], f
    assert ps == sorted(ps), f
    assert f["mean_us"] <= f["max_us"]
    # 1000 messages at 2000/s take about half a second: paced, not blasted.
    assert 1000 < f["achieved_rate"] < 3000, f


def test_latency_measures_every_subscriber_spread_over_the_sub_urls(make_daemon):
    d = make_daemon()
    f = figure(d.url, "latency", "--rate", "2000", "--count", "500", "--size", "16",
               "--subscribers", "3", "--sub-url", d.url, "--sub-url", d.url)
    assert f["subscribers"] == 3 and f["sub_url"] == f"{d.url},{d.url}", f
    assert f["published"] == 500 and f["delivered"] == 1500 and f["lost"] == 0, f
    assert 0 < f["p50_us"] <= f["p99_us"], f


def test_catchup_replays_every_stored_message_from_cursor_zero(make_daemon):
    d = make_daemon()
    f = figure(d.url, "catchup", "--count", "5000", "--size", "100")
    assert f["stored"] == f["delivered"] == 5000
    assert f["lost"] == 0 and f["order_errors"] == 0
    assert f["msgs_per_s"] > 0 and f["store_msgs_per_s"] > 0
    assert f["topic"].startswith("bench.catchup.")


def test_conns_reports_the_daemons_memory_per_connection(make_daemon):
    d = make_daemon()
    f = figure(d.url, "conns", "--count", "200", "--pid", str(d.proc.pid))
    assert f["pid"] == d.proc.pid
    assert f["requested"] == f["opened"] == 200
    assert f["rss_after_kib"] >= f["rss_before_kib"] > 0
    assert 0 <= f["bytes_per_conn"] < 64 * 1024, f


def test_table_is_the_default_output(make_daemon):
    d = make_daemon()
    p = bench(d.url, "pubsub", "--count", "500")
    assert p.stdout.startswith(f"ringbus bench pubsub  {d.url}\n"), p.stdout
    rows = dict(l.split(None, 1) for l in p.stdout.splitlines()[1:] if l.strip())
    assert rows["delivered"].split()[0] == "500"
    assert rows["lost"].split()[0] == "0"
    assert rows["complete"].strip() == "true"


def test_usage_errors_exit_2():
    url = f"tcp://127.0.0.1:{free_port()}"
    for args in (["bogus"], ["conns"], ["pubsub", "--size", "8"], ["fanout", "--topics", "2"],
                 ["latency", "--rate", "0"], ["latency", "--subscribers", "0"],
                 ["pubsub", "--count"]):
        p = bench(url, *args, expect_rc=2)
        assert "ringbus bench:" in p.stderr, p.stderr


def test_unreachable_server_is_a_runtime_failure():
    url = f"tcp://127.0.0.1:{free_port()}"
    p = bench(url, "pubsub", "--count", "10", expect_rc=1)
    assert "connect" in p.stderr, p.stderr


def test_bench_sends_the_origin_option_to_a_ws_listener_with_origins(make_daemon, tmp_path):
    port = free_port()
    d = make_daemon(listeners=rt.listener("ws", port, None, origins=["https://app.example"]))
    u = f"ws://localhost:{port}/ringbus"
    p = subprocess.run([str(RINGBUS), "--url", u, "bench", "pubsub", "--count", "200",
                        "--subscribers", "1", "--duration", "15", "--json"],
                       capture_output=True, text=True, timeout=TIMEOUT_S)
    assert p.returncode != 0 and "403" in p.stderr, p.stderr
    p = subprocess.run([str(RINGBUS), "--url", u, "--origin", "https://app.example", "bench",
                        "pubsub", "--count", "200", "--subscribers", "1", "--duration", "15",
                        "--json"], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert p.returncode == 0, p.stderr
    fig = json.loads(p.stdout.strip().splitlines()[-1])
    assert fig["acked"] == 200 and fig["delivered"] == 200 and fig["lost"] == 0
