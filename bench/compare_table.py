"""Prints bench/compare.sh's results (JSON lines) as one Markdown table per component, then the
issue #6 targets: taiyi graph bf16 (or what it ran) against the fastest peer of any precision
(>= 1.5x), taiyi graph fp32 against the fastest fp32 peer (>= 1.3x, UNet).
A point measured in several rounds (compare.sh ROUNDS > 1) counts with the median of its rounds'
medians, and each target also shows the range of its per-round speed-ups (each round's taiyi
against that round's fastest peer).
Usage: compare_table.py results.jsonl [more.jsonl ...]"""
import json
import statistics
import sys
from collections import defaultdict

FP32_PEERS = ("torch eager_fp32", "torch compile_fp32", "openvino f32")

rows = defaultdict(list)
failed = defaultdict(list)
machine = {}
for path in sys.argv[1:]:
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            comp = d["label"].split()[0]
            if d.get("failed"):
                failed[comp].append(d)
                continue
            rows[comp].append(d)
            machine.setdefault("cpu", d.get("cpu"))
            if "onednn_isa" in d:
                machine["isa"] = d["onednn_isa"]
            if d.get("machine_peak_gflop_per_s"):  # per precision: "conv2d bf16 ..." or "conv2d f32 ..."
                kernel = d.get("machine_peak_kernel", "")
                dtype = "bf16" if " bf16 " in f" {kernel} " else "f32"
                machine.setdefault("peak", {}).setdefault(dtype, (d["machine_peak_gflop_per_s"], kernel))


def merge_rounds(items):
    """One entry per label: the median over rounds of median_s, with each round's median kept."""
    by_label = defaultdict(list)
    for d in items:
        by_label[d["label"]].append(d)
    merged = []
    for same in by_label.values():
        d = dict(same[-1])
        d["rounds"] = {x.get("round", 1): x["median_s"] for x in same}
        d["median_s"] = statistics.median(x["median_s"] for x in same)
        merged.append(d)
    return merged


rows = {comp: merge_rounds(items) for comp, items in rows.items()}
print(f"CPU: {machine.get('cpu')}, oneDNN ISA: {machine.get('isa')}")
for dtype, (gflops, kernel) in sorted(machine.get("peak", {}).items()):
    print(f"Measured {dtype} conv peak: {gflops:.0f} GFLOP/s ({kernel})")


def name(d):
    return d["label"].split(" ", 1)[1]


targets = []
for comp, items in rows.items():
    ours = {name(d): d for d in items if " taiyi " in d["label"]}
    peers = [d for d in items if " taiyi " not in d["label"]]
    best = min((d["median_s"] for d in ours.values()), default=None)
    print(f"\n### {comp}\n")
    print("| engine | median s | GFLOP/s | % of peak | setup / compile s | peak RSS MB | time / taiyi best |")
    print("|---|---|---|---|---|---|---|")
    for d in sorted(items, key=lambda d: d["median_s"]):
        ratio = f"{d['median_s'] / best:.2f}" if best else "-"
        extra = f" (ran {d['dtype']})" if d.get("dtype") and d.get("dtype_requested") not in (None, d["dtype"]) else ""
        gf = f"{d['gflop_per_s']:.0f}" if d.get("gflop_per_s") else ""
        frac = f"{100 * d['fraction_of_peak']:.0f}%" if d.get("fraction_of_peak") else ""
        setup = d.get("setup_s", d.get("compile_s", d.get("first_run_compile_s")))
        setup = f"{setup:.1f}" if isinstance(setup, (int, float)) else ""
        print(f"| {name(d)}{extra} | {d['median_s']:.3f} | {gf} | {frac} | {setup} | "
              f"{d.get('peak_rss_mb', 0):.0f} | {ratio} |")
    for d in failed[comp]:
        print(f"| {name(d)} | failed or > {d.get('timeout_s', '?')} s |  |  |  |  |  |")
    if not peers:
        continue
    fastest = min(peers, key=lambda d: d["median_s"])
    if ours:
        # Targets name graph bf16; on a CPU without bf16 that run is fp32 (the table says "ran fp32").
        best_ours = min(ours.values(), key=lambda d: d["median_s"])
        targets.append((comp, f"{name(best_ours)} vs fastest peer", best_ours, fastest, 1.5, peers))
    fp32_peers = [d for d in peers if name(d) in FP32_PEERS]
    fp32 = ours.get("taiyi graph fp32")
    if comp == "unet" and fp32 and fp32_peers:  # the fp32 target is the UNet's
        targets.append((comp, "graph fp32 vs fastest fp32 peer", fp32, min(fp32_peers, key=lambda d: d["median_s"]),
                        1.3, fp32_peers))
    if comp == "txt2img":
        # Every taiyi variant's wall time against its parts; peak RSS against PyTorch's lowest.
        torch_rss = [d["peak_rss_mb"] for d in peers if d["label"].split()[1] == "torch" and d.get("peak_rss_mb")]
        print()
        for label, d in sorted(ours.items()):
            if "parts_s" not in d:
                continue
            line = (f"{label} txt2img wall {d['median_s']:.1f} s vs parts {d['parts_s']:.1f} s "
                    f"({100 * (d['median_s'] / d['parts_s'] - 1):+.1f}%; target within 10%)")
            if torch_rss:
                rss = d.get("peak_rss_mb", 1e9)
                line += (f"; peak RSS {rss:.0f} MB vs PyTorch's {min(torch_rss):.0f} MB (below: "
                         f"{'yes' if rss < min(torch_rss) else 'no'})")
            print(line)

if targets:
    print("\n### Targets (issue #6)\n")
    print("| component | comparison | taiyi s | peer | peer s | speed-up | per round | target | met |")
    print("|---|---|---|---|---|---|---|---|---|")
    for comp, what, ours_d, peer, want, candidates in targets:
        x = peer["median_s"] / ours_d["median_s"]
        # Per round: that round's taiyi against that round's fastest peer (of the same candidates).
        per_round = []
        for r, ours_s in sorted(ours_d["rounds"].items()):
            that_round = [c["rounds"][r] for c in candidates if r in c["rounds"]]
            if that_round:
                per_round.append(min(that_round) / ours_s)
        spread = f"{min(per_round):.2f}-{max(per_round):.2f}x ({len(per_round)})" if len(per_round) > 1 else ""
        print(f"| {comp} | {what} | {ours_d['median_s']:.3f} | {name(peer)} | {peer['median_s']:.3f} | {x:.2f}x | "
              f"{spread} | >= {want}x | {'yes' if x >= want else 'no'} |")
