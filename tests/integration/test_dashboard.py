"""docs/grafana-dashboard.json is built on the daemon's /metrics names
(issue 14): every metric its expressions (and template queries) use is in a
live scrape, parsed with prometheus_client's parser, and every label they
match or group by (job and instance are Prometheus's own) is on that
metric, with the value they ask for."""

import json
import re

from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, free_port
from test_http_admin import http_listener, path, tcp_listener

import rbproto as rp

DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
METRIC = re.compile(r"\b(ringbus_[a-z0-9_]+)\b(\{[^}]*\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
BY = re.compile(r"\bby\s*\(([^)]*)\)")
PROMETHEUS_LABELS = {"job", "instance"}


def expressions(dash):
    for p in dash["panels"]:
        for t in p.get("targets", []):
            yield p["title"], t["expr"]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            yield f"variable {v['name']}", v["definition"]


def live_samples(make_daemon):
    tcp, http = free_port(), free_port()
    d = make_daemon(listeners=tcp_listener(tcp) + http_listener(http))
    # Some traffic, so every labelled series exists (publishes by outcome
    # are written for both outcomes at every scrape anyway).
    with rp.Conn("127.0.0.1", tcp, timeout=10) as c:
        c.hello()
        assert c.publish("dash.t", "x", corr=2).kind == rp.PUBLISH_ACK
        status, _, body = path(http, "/metrics")
    assert status == 200, body
    series = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            series.setdefault(s.name, []).append(s.labels)
    return series


def test_every_dashboard_metric_is_served(make_daemon):
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["panels"], "not a dashboard"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    series = live_samples(make_daemon)
    used = set()
    problems = []
    for where, expr in expressions(dash):
        names = METRIC.findall(expr)
        assert names, f"{where}: no ringbus metric in {expr!r}"
        grouped = {l.strip() for g in BY.findall(expr) for l in g.split(",") if l.strip()}
        for name, selector in names:
            used.add(name)
            if name not in series:
                problems.append(f"{where}: {name} is not in /metrics")
                continue
            labels = series[name]
            for label, op, val in MATCHER.findall(selector or ""):
                if label in PROMETHEUS_LABELS:
                    continue
                if not any(label in l for l in labels):
                    problems.append(f"{where}: {name} has no label {label}")
                elif op == "=" and not any(l.get(label) == val for l in labels):
                    problems.append(f"{where}: {name} has no {label}={val!r}")
            for label in grouped - PROMETHEUS_LABELS:
                if not any(label in l for l in labels):
                    problems.append(f"{where}: {name} grouped by {label}, which it lacks")
    assert not problems, "\n".join(problems)
    # The dashboard shows the connection, publish, delivery, loop and
    # process series at least.
    for must in ("ringbus_connections", "ringbus_publishes_total", "ringbus_deliveries_total",
                 "ringbus_slow_consumer_closes_total", "ringbus_loop_turns_total",
                 "ringbus_process_resident_memory_bytes"):
        assert must in used, must
