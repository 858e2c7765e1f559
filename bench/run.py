#!/usr/bin/env python3
"""agproxy's benchmarks: every scenario runs against the fake upstream directly (the baseline) and
through agproxy, in the same run; figures are ratios to that baseline. Prints a table and writes
bench/RESULTS.md. Usage: python bench/run.py [--quick]"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import load  # noqa: E402

QUICK = "--quick" in sys.argv
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_upstream() -> Tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "upstream.py")], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def start_agproxy(upstream_port: int, workdir: str) -> Tuple[subprocess.Popen, int, float]:
    config = {"upstreams": [
        {"name": "up", "kind": "anthropic", "base_url": f"http://127.0.0.1:{upstream_port}",
         "accounts": [{"name": "bench", "api_key": "k"}]},
        {"name": "oa", "kind": "openai", "base_url": f"http://127.0.0.1:{upstream_port}/v1",
         "accounts": [{"name": "bench", "api_key": "k"}]},
        {"name": "gm", "kind": "gemini", "base_url": f"http://127.0.0.1:{upstream_port}",
         "accounts": [{"name": "bench", "api_key": "k"}]}],
        "model_map": [{"match": "oa-*", "upstream": "oa"}, {"match": "gm-*", "upstream": "gm"},
                      {"match": "*", "upstream": "up"}],
        "max_connections": 4096, "log_level": "warning", "state_file": ""}
    path = os.path.join(workdir, "bench.json")
    with open(path, "w") as f:
        json.dump(config, f)
    started = time.perf_counter()
    program = os.path.join(ROOT, "agproxy.pyz")  # what users run (make bench builds it first)
    if not os.path.exists(program):
        program = os.path.join(ROOT, "agproxy.py")
    proc = subprocess.Popen([sys.executable, program, "--config", path, "--port", "0"],
                            stderr=subprocess.PIPE, text=True, cwd=workdir)
    while True:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError("agproxy did not start")
        if line.startswith("agproxy listening on"):
            return proc, int(line.rsplit(":", 1)[1]), time.perf_counter() - started


def message(model: str, stream: bool, extra: Dict[str, Any] = None) -> Dict[str, Any]:
    body = {"model": model, "max_tokens": 100, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    body.update(extra or {})
    return body


def pct(values: List[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def latency(port: int, body: Dict[str, Any], count: int) -> List[float]:
    out = await load.run("127.0.0.1", port, "/v1/messages", body, 1, count)
    assert all(r["ok"] for r in out["results"]), out["results"][:2]
    return [r["total"] * 1000 for r in out["results"]]


async def throughput(port: int, path: str, body: Dict[str, Any], streams: int) -> Dict[str, Any]:
    out = await load.run("127.0.0.1", port, path, body, streams, streams, timeout=300)
    ok = [r for r in out["results"] if r["ok"]]
    events = sum(r["events"] for r in ok)
    return {"events_per_s": events / out["wall"], "events": events, "ok": len(ok), "total": streams,
            "wall": out["wall"], "ttfb_p50_ms": pct([r["ttfb"] for r in ok] or [0], 0.5) * 1000}


def claude_code_body() -> Dict[str, Any]:
    from tests.corpus import corpus
    body = dict(corpus()[1][2], model="bench-e5-s20-d0", stream=False)
    while len(json.dumps(body)) < 50_000:
        body["messages"] = body["messages"] + body["messages"][-2:]
    return body


async def translation(up: int, ag: int, pid: int, rows: List[List[str]], kind: str, pieces: str, streams: int,
                      events: int, body: Dict[str, Any], direct_path: str, direct_body: Dict[str, Any]) -> None:
    """Two rows for a translated kind: events/s through agproxy against the same stream direct,
    and agproxy's CPU per 1,000 translated pieces."""
    base = await throughput(up, direct_path, direct_body, streams)
    cpu0 = cpu_seconds(pid)
    via_t = await throughput(ag, "/v1/messages", body, streams)
    cpu = cpu_seconds(pid) - cpu0
    rows.append([f"{kind} translation, {streams} concurrent x {events}: events/s", f"{base['events_per_s']:,.0f}",
                 f"{via_t['events_per_s']:,.0f} ({via_t['ok']}/{streams} ok)",
                 f"{via_t['events_per_s'] / base['events_per_s']:.2f}", ">= 0.6 of direct"])
    rows.append([f"agproxy CPU per 1,000 translated {pieces}", "-", f"{cpu / max(1, via_t['events']) * 1e6:.1f} ms",
                 "-", "reported"])


async def scenarios(up: int, ag: int, pid: int, rows: List[List[str]], startup_s: float) -> None:
    idle_rss = rss_mb(pid)
    rows.append(["start-up to readiness line", "-", f"{startup_s * 1000:.0f} ms", "-", "<= 150 ms"])
    rows.append(["idle RSS", "-", f"{idle_rss:.1f} MB", "-", "<= 30 MB"])

    n = 100 if QUICK else 300
    small = message("bench-e1-s20-d0", False)
    await latency(ag, small, 20)
    direct, via = await latency(up, small, n), await latency(ag, small, n)
    rows.append(["non-stream small, 1 client: added p50 / p99",
                 f"{pct(direct, .5):.2f} / {pct(direct, .99):.2f} ms", f"{pct(via, .5):.2f} / {pct(via, .99):.2f} ms",
                 f"+{pct(via, .5) - pct(direct, .5):.2f} / +{pct(via, .99) - pct(direct, .99):.2f} ms",
                 "<= 1 ms / <= 5 ms added"])

    big = claude_code_body()
    direct, via = await latency(up, big, n // 2), await latency(ag, big, n // 2)
    rows.append(["50 KB Claude Code body, sanitize + forward: added p50", f"{pct(direct, .5):.2f} ms",
                 f"{pct(via, .5):.2f} ms", f"+{pct(via, .5) - pct(direct, .5):.2f} ms", "<= 3 ms added"])

    streams, events = (50, 500) if QUICK else (100, 1000)
    body = message(f"bench-e{events}-s20-d0", True)
    base = await throughput(up, "/v1/messages", body, streams)
    cpu0 = cpu_seconds(pid)
    via_t = await throughput(ag, "/v1/messages", body, streams)
    cpu = cpu_seconds(pid) - cpu0
    rows.append([f"{streams} concurrent streams x {events} events: events/s",
                 f"{base['events_per_s']:,.0f}", f"{via_t['events_per_s']:,.0f} ({via_t['ok']}/{streams} ok)",
                 f"{via_t['events_per_s'] / base['events_per_s']:.2f}", ">= 0.8 of direct"])
    rows.append(["agproxy CPU per 1,000 relayed events", "-", f"{cpu / max(1, via_t['events']) * 1e6:.1f} ms",
                 "-", "reported"])
    rows.append([f"RSS after the {streams}-stream run", "-", f"{rss_mb(pid):.1f} MB", "-", "<= 60 MB"])

    oa_body = message(f"oa-bench-e{events}-s20-d0", True)
    await translation(up, ag, pid, rows, "OpenAI", "deltas", streams, events, oa_body, "/v1/chat/completions",
                      dict(oa_body, messages=[{"role": "user", "content": "hi"}]))
    await translation(up, ag, pid, rows, "Gemini", "Gemini chunks", streams, events,
                      message(f"gm-bench-e{events}-s20-d0", True),
                      f"/v1beta/models/gm-bench-e{events}-s20-d0:streamGenerateContent?alt=sse",
                      {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})

    held, seconds = (100, 10) if QUICK else (500, 60)
    slow = message(f"bench-e{seconds}-s20-d1000", True)
    result = await throughput(ag, "/v1/messages", slow, held)
    rows.append([f"{held} concurrent streams held {seconds} s (slow upstream)", "-",
                 f"{result['ok']}/{held} complete, RSS {rss_mb(pid):.1f} MB", "-", "100 % complete, RSS <= 150 MB"])


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    upstream, up_port = start_upstream()
    with tempfile.TemporaryDirectory() as workdir:
        agproxy, ag_port, startup = start_agproxy(up_port, workdir)
        rows: List[List[str]] = []
        try:
            asyncio.run(scenarios(up_port, ag_port, agproxy.pid, rows, startup))
        finally:
            agproxy.terminate()
            upstream.terminate()
            agproxy.wait(30)
            upstream.wait(10)
    header = ["scenario", "direct (baseline)", "through agproxy", "ratio / added", "goal"]
    table = [header, ["---"] * len(header)] + rows
    text = "\n".join("| " + " | ".join(row) + " |" for row in table)
    print(text)
    if not QUICK:
        with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
            f.write(f"# Benchmark results\n\nMachine: {machine()}. Run: {time.strftime('%Y-%m-%d')} "
                    "with `make bench` (client, fake upstream and agproxy share the machine; agproxy runs "
                    "as `python agproxy.pyz`).\n\n" + text + "\n")
            for extra in ("PEERS.md", "FINDINGS.md"):  # make bench-peers writes PEERS.md
                if os.path.exists(os.path.join(HERE, extra)):
                    with open(os.path.join(HERE, extra)) as n:
                        f.write("\n" + n.read())


if __name__ == "__main__":
    main()
