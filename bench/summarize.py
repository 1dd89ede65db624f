#!/usr/bin/env python3
"""Summarizes one bench/run.sh run: medians per (figure, system), ratios
ringbus/peer, the issue's goals checked against them, a JSON results file,
a Markdown table, and the data files bench/plots.gp draws.

usage: summarize.py RAW.jsonl RESULTS_DIR PLOTS_DIR DATA_DIR COMMAND
       summarize.py RESULTS_DIR/latest.json RESULTS_DIR PLOTS_DIR DATA_DIR
         (re-summarizes a stored run, e.g. to redraw the plots)"""

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

# figure -> (metric, higher_is_better, peers the ratio is taken against)
THROUGHPUT = ("msgs_per_s", True)
LATENCY_KEYS = ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")


def metric_of(figure):
    if figure.startswith("latency"):
        return "p99_us", False
    if figure == "conns":
        return "bytes_per_conn", False
    return THROUGHPUT


def load(path):
    if path.endswith(".json"):
        with open(path) as f:
            return json.load(f)["runs"]
    runs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                runs.append(json.loads(line))
    return runs


def ok(run):
    r = run.get("result")
    return run.get("rc") == 0 and isinstance(r, dict) and r.get("complete") is True


def medians(runs):
    """{figure: {system: {key: median, 'n': reps, 'failed': count}}}"""
    out = {}
    for run in runs:
        fig, sysname = run["figure"], run["system"]
        slot = out.setdefault(fig, {}).setdefault(sysname, {"_vals": {}, "n": 0, "failed": 0})
        if not ok(run):
            slot["failed"] += 1
            continue
        slot["n"] += 1
        keys = LATENCY_KEYS if fig.startswith("latency") else (metric_of(fig)[0], "mb_per_s")
        for k in keys:
            if k in run["result"]:
                slot["_vals"].setdefault(k, []).append(run["result"][k])
    for fig in out.values():
        for slot in fig.values():
            for k, vals in slot.pop("_vals").items():
                slot[k] = statistics.median(vals)
    return out


def ratios(med):
    """{figure: {peer: ringbus_metric / peer_metric}} (and ringbus-pg)."""
    out = {}
    for fig, systems in med.items():
        key, _ = metric_of(fig)
        for mine in ("ringbus", "ringbus-pg"):
            if key not in systems.get(mine, {}):
                continue
            for peer, slot in systems.items():
                if peer.startswith("ringbus") or key not in slot or not slot[key]:
                    continue
                name = peer if mine == "ringbus" else f"{mine}/{peer}"
                out.setdefault(fig, {})[name] = systems[mine][key] / slot[key]
    return out


def goal(name, value, target, better_high, unit=""):
    if value is None:
        return {"goal": name, "value": None, "target": target, "met": None,
                "note": "not measured in this run"}
    met = value >= target if better_high else value <= target
    return {"goal": name, "value": round(value, 4), "target": target, "met": met, "unit": unit}


def goals(med, rat):
    def r(fig, peer):
        return rat.get(fig, {}).get(peer)

    conns = med.get("conns", {}).get("ringbus", {}).get("bytes_per_conn")
    lat_rb = med.get("latency_256", {}).get("ringbus", {}).get("p99_us")
    lat_nats = med.get("latency_256", {}).get("nats", {}).get("p99_us")
    return [
        goal("pubsub 1->1 16 B: ringbus/nats msgs/s", r("pubsub_16", "nats"), 1.0, True, "ratio"),
        goal("pubsub 1->1 256 B: ringbus/nats msgs/s", r("pubsub_256", "nats"), 1.0, True,
             "ratio"),
        goal("fanout 1->8 256 B: ringbus/nats msgs/s", r("fanout8_256", "nats"), 1.0, True,
             "ratio"),
        goal("latency p99 at 10k msg/s: ringbus - nats (us)",
             None if lat_rb is None or lat_nats is None else lat_rb - lat_nats, 0.0, False, "us"),
        goal("persisted publish: ringbus-pg/nats-js msgs/s", r("persist_256", "ringbus-pg/nats-js"),
             1.0, True, "ratio"),
        goal("idle connection memory (bytes/conn)", conns, 16384, False, "B"),
    ]


def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "nats_server": version(["nats-server", "--version"]),
            "redis_server": version(["redis-server", "--version"]).split(" sha=")[0]}


def fmt(v, key):
    if v is None:
        return "–"
    if key.endswith("_us"):
        return f"{v:.0f}"
    if key == "bytes_per_conn":
        return f"{v:.0f}"
    return f"{v:,.0f}"


SYSTEMS = ("ringbus", "ringbus-pg", "ringbus-mem", "nats", "nats-js", "redis")
FIGURE_ORDER = ("pubsub", "fanout8", "latency", "persist", "catchup", "conns")


def table(med, rat):
    rows = ["| figure | metric | " + " | ".join(SYSTEMS) + " | ringbus / peer |",
            "|---|---|" + "---|" * len(SYSTEMS) + "---|"]
    def rank(f):
        head = f.split("_")[0]
        size = int(f.split("_")[1]) if "_" in f else 0
        return (FIGURE_ORDER.index(head) if head in FIGURE_ORDER else 99, size)

    order = sorted(med, key=rank)
    for fig in order:
        keys = LATENCY_KEYS if fig.startswith("latency") else (metric_of(fig)[0],)
        for key in keys:
            cells = [fmt(med[fig].get(s, {}).get(key), key) for s in SYSTEMS]
            ratio = ""
            if key == metric_of(fig)[0]:
                ratio = ", ".join(f"{p} {v:.2f}" for p, v in sorted(rat.get(fig, {}).items()))
            rows.append(f"| {fig} | {key} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(rows)


def write_plot_data(med, datadir):
    sizes = sorted(int(f.split("_")[1]) for f in med if f.startswith("pubsub_"))
    with open(os.path.join(datadir, "throughput.dat"), "w") as f:
        f.write("# size ringbus nats redis (delivered msgs/s, medians)\n")
        for size in sizes:
            slot = med[f"pubsub_{size}"]
            vals = [slot.get(s, {}).get("msgs_per_s", float("nan")) for s in
                    ("ringbus", "nats", "redis")]
            f.write(f"{size} " + " ".join(f"{v:.1f}" for v in vals) + "\n")
    with open(os.path.join(datadir, "latency.dat"), "w") as f:
        f.write("# percentile ringbus nats redis (us, medians)\n")
        lat = med.get("latency_256", {})
        for key, label in zip(LATENCY_KEYS, ("p50", "p90", "p99", "p99.9", "max")):
            vals = [lat.get(s, {}).get(key, float("nan")) for s in ("ringbus", "nats", "redis")]
            f.write(f"{label} " + " ".join(f"{v:.1f}" for v in vals) + "\n")


def main():
    raw, results, plots, datadir = sys.argv[1:5]
    runs = load(raw)
    command = sys.argv[5] if len(sys.argv) > 5 else ""
    generated = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if raw.endswith(".json"):
        with open(raw) as f:
            old = json.load(f)
        command, generated = old["command"], old["generated_utc"]
    med = medians(runs)
    rat = ratios(med)
    gl = goals(med, rat)
    md = table(med, rat)
    doc = {
        "generated_utc": generated,
        "command": command,
        "machine": old["machine"] if raw.endswith(".json") else machine(),
        "medians": med,
        "ratios": rat,
        "goals": gl,
        "runs": runs,
    }
    with open(os.path.join(results, "latest.json"), "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    goal_lines = []
    for g in gl:
        state = "not measured" if g["met"] is None else ("MET" if g["met"] else "NOT MET")
        goal_lines.append(f"- {g['goal']}: {g['value']} (target {g['target']}): {state}")
    with open(os.path.join(results, "latest.md"), "w") as f:
        f.write(f"<!-- {command}, {doc['generated_utc']} -->\n{md}\n\n" + "\n".join(goal_lines) + "\n")
    write_plot_data(med, datadir)
    failed = [(r["figure"], r["system"], r["rep"]) for r in runs if not ok(r)]
    print(md)
    print()
    print("\n".join(goal_lines))
    if failed:
        print(f"\nincomplete runs (excluded from medians): {failed}")


if __name__ == "__main__":
    main()
