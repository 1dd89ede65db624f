"""Medians of bench/ab.sh's JSON lines: before, after, after/before."""
import json
import statistics
import sys

KEYS = {"latency": ["p50_us", "p99_us", "p999_us"]}

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
for fig in dict.fromkeys(r["fig"] for r in rows):
    mode = fig.split()[0]
    keys = KEYS.get(mode, ["msgs_per_s"])
    good = {"before": [], "after": []}
    for r in rows:
        if r["fig"] != fig:
            continue
        res = r["res"]
        if not res or not res.get("complete") or res.get("lost", 0):
            print(f"left out: {r['bin']} {fig}: incomplete or lost messages")
            continue
        good[r["bin"]].append(res)
    for key in keys:
        b = [x[key] for x in good["before"]]
        a = [x[key] for x in good["after"]]
        if not a or not b:
            continue
        mb, ma = statistics.median(b), statistics.median(a)
        print(f"{fig:40} {key:10} before {mb:12.0f} (n={len(b)})"
              f"  after {ma:12.0f} (n={len(a)})  after/before {ma / mb:.3f}")
