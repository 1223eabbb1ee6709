"""Prints bench/compare.sh's results (JSON lines) as one Markdown table per component: seconds,
and each engine's time over taiyi's best, so >1 means taiyi is faster.
Usage: compare_table.py results.jsonl"""
import json
import sys
from collections import defaultdict

rows = defaultdict(list)
machine = {}
with open(sys.argv[1]) as f:
    for line in f:
        d = json.loads(line)
        comp = d["label"].split()[0]
        rows[comp].append(d)
        machine.setdefault("cpu", d.get("cpu"))
        if "onednn_isa" in d:
            machine["isa"] = d["onednn_isa"]
print(f"CPU: {machine.get('cpu')}, oneDNN ISA: {machine.get('isa')}")
for comp, items in rows.items():
    ours = [d for d in items if " taiyi " in d["label"]]
    best = min((d["median_s"] for d in ours), default=None)
    print(f"\n### {comp}\n")
    print("| engine | median s | peak RSS MB | peer / taiyi best |")
    print("|---|---|---|---|")
    for d in sorted(items, key=lambda d: d["median_s"]):
        ratio = f"{d['median_s'] / best:.2f}" if best else "-"
        extra = f" (ran {d['dtype']})" if d.get("dtype") and d.get("dtype_requested") not in (None, d["dtype"]) else ""
        print(f"| {d['label'].split(' ', 1)[1]}{extra} | {d['median_s']:.3f} | {d.get('peak_rss_mb', 0):.0f} | {ratio} |")
