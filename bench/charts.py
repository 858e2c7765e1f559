"""The charts of issue 22, drawn from the figures `bench/run.py` measured (a JSON file it writes):
bench/bodies.png (cost against a Claude Code body's size) and bench/growth.png (cost against the
number of concurrent streams). A linear cost is a straight line on the left panels and a flat one on
the right. Dev only: needs matplotlib (requirements-dev.txt); run.py calls it with the venv's Python.

Usage: python bench/charts.py FIGURES.json"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def bodies_chart(points: List[Dict[str, Any]], path: str) -> None:
    sizes = [p["kb"] for p in points]
    fig, (total, per_kb) = plt.subplots(1, 2, figsize=(11, 4.2))
    first = points[0]
    for key, label, style in (("added_ms", "added latency, p50", "o-"), ("cpu_ms", "agproxy CPU per request", "s-"),
                              ("floor_ms", "floor: json.loads + json.dumps", "^--")):
        total.plot(sizes, [p[key] for p in points], style, label=label)
        # the cost each KB adds over the smallest request's (its fixed cost per request taken out)
        per_kb.plot(sizes[1:], [(p[key] - first[key]) / (p["kb"] - first["kb"]) * 100 for p in points[1:]], style,
                    label=label)
    total.set(xlabel="body (KB)", ylabel="ms", title="Claude Code body: cost against size")
    per_kb.set(xlabel="body (KB, log)", ylabel=f"ms per 100 KB above the {first['kb']:.0f} KB request",
               xscale="log", title="cost per 100 KB (flat = linear)")
    for axes in (total, per_kb):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    per_kb.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def growth_chart(curves: Dict[str, List[Dict[str, Any]]], path: str) -> None:
    fig, (cpu, rss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, points in curves.items():
        streams = [p["streams"] for p in points]
        cpu.plot(streams, [p["cpu_us"] for p in points], "o-", label=f"{label}, fast fake")
        cpu.plot(streams, [p["paced_cpu_us"] for p in points], "s--", label=f"{label}, paced (50 events/s)")
        rss.plot(streams, [p["peak_rss_mb"] for p in points], "o-", label=f"{label}, fast fake")
        rss.plot(streams, [p["paced_peak_rss_mb"] for p in points], "s--", label=f"{label}, paced")
    cpu.set(xlabel="concurrent streams (log)", ylabel="µs of agproxy CPU per delta", xscale="log",
            title="CPU per delta (flat = linear total)")
    cpu.set_ylim(bottom=0)
    rss.set(xlabel="concurrent streams", ylabel="MB", title="peak RSS (a straight line = linear)")
    for axes in (cpu, rss):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    with open(sys.argv[1]) as f:
        data = json.load(f)
    if data.get("bodies"):
        bodies_chart(data["bodies"], os.path.join(HERE, "bodies.png"))
        print("Chart: [bodies.png](bodies.png), cost against body size.")
    if data.get("growth"):
        growth_chart(data["growth"], os.path.join(HERE, "growth.png"))
        print("Chart: [growth.png](growth.png), cost against concurrent streams.")


if __name__ == "__main__":
    main()
