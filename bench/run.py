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
from typing import Any, Dict, List, Sequence, Tuple

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


def start_agproxy(upstream_port: int, workdir: str, wrapper: Sequence[str] = ()) -> Tuple[subprocess.Popen, int, float]:
    """agproxy (the .pyz when built, else the module) on a config of three upstreams on the fake;
    ``wrapper``: a script and its arguments to run it under (then always the module)."""
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
    if wrapper or not os.path.exists(program):
        program = os.path.join(ROOT, "agproxy.py")
    proc = subprocess.Popen([sys.executable, *wrapper, program, "--config", path, "--port", "0"],
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


async def latency(port: int, body: Dict[str, Any], count: int, path: str = "/v1/messages") -> List[float]:
    out = await load.run("127.0.0.1", port, path, body, 1, count)
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


#: Codex CLI's shell tool and a few more, in the shapes it sends (written for the bench, not copied).
CODEX_TOOLS: List[Dict[str, Any]] = [
    {"type": "function", "name": "exec_command", "strict": False,
     "description": "Runs a command in a shell in the workspace and returns its output and exit code.",
     "parameters": {"type": "object", "additionalProperties": False, "required": ["cmd"], "properties": {
         "cmd": {"type": "string", "description": "The command line to run."},
         "workdir": {"type": "string", "description": "The directory to run it in."},
         "yield_time_ms": {"type": "number", "description": "How long to wait for output."},
         "max_output_tokens": {"type": "number", "description": "The most output to return."}}}},
    {"type": "function", "name": "write_stdin", "strict": False,
     "description": "Writes characters to the standard input of a running command session.",
     "parameters": {"type": "object", "additionalProperties": False, "required": ["session_id"], "properties": {
         "session_id": {"type": "number"}, "chars": {"type": "string"}}}},
    {"type": "function", "name": "update_plan", "strict": False,
     "description": "Records the plan of the task: its steps and the status of each.",
     "parameters": {"type": "object", "additionalProperties": False, "required": ["plan"], "properties": {
         "explanation": {"type": "string"},
         "plan": {"type": "array", "items": {"type": "object", "required": ["step", "status"], "properties": {
             "step": {"type": "string"}, "status": {"type": "string", "enum": [
                 "pending", "in_progress", "completed"]}}}}}}},
    {"type": "function", "name": "view_image", "strict": False,
     "description": "Attaches a local image file to the conversation.",
     "parameters": {"type": "object", "additionalProperties": False, "required": ["path"],
                    "properties": {"path": {"type": "string"}}}},
    {"type": "namespace", "name": "mcp", "description": "Tools of a configured MCP server.", "tools": [
        {"type": "function", "name": "lookup", "description": "Looks a symbol up in the project index.",
         "parameters": {"type": "object", "properties": {"symbol": {"type": "string"}}, "required": ["symbol"]}}]},
    {"type": "web_search"},
]


def codex_body(model: str) -> Dict[str, Any]:
    """A Responses request shaped as Codex CLI sends one mid-task (streamed, store false, the whole
    history again): developer instructions of ~17 KB, the environment and the task as user
    messages, then turns of exec_command calls with their outputs. The text is the bench's own."""
    rule = ("When a task needs a change to the code, read the files involved first, make the smallest "
            "change that does the job, run the tests that cover it and report what changed and why. ")
    developer = "You are a coding agent working in a local repository.\n" + rule * 95  # ~17 KB like Codex's
    text = lambda role, kind, t: {"type": "message", "role": role, "content": [{"type": kind, "text": t}]}  # noqa: E731
    items: List[Dict[str, Any]] = [
        text("developer", "input_text", developer),
        text("user", "input_text", "<environment_context>\n  <cwd>/home/dev/project</cwd>\n  <shell>bash</shell>"
             "\n</environment_context>"),
        text("user", "input_text", "The test for the date parser fails on leap years; find out why and fix it.")]
    commands = ["ls", "cat src/dates.py", "grep -n leap tests/test_dates.py", "python -m pytest tests -q -x",
                "git diff", "python -m pytest tests/test_dates.py -q"]
    for i, command in enumerate(commands):
        call = f"call_bench_{i}"
        items.append({"type": "function_call", "name": "exec_command", "call_id": call,
                      "arguments": json.dumps({"cmd": command, "workdir": "/home/dev/project"})})
        output = "\n".join(f"line {n} of the output of {command}" for n in range(40))
        items.append({"type": "function_call_output", "call_id": call,
                      "output": f"Exit code: 0\nWall time: 0.1 seconds\nOutput:\n{output}"})
        if i % 2:
            items.append(text("assistant", "output_text", f"Step {i} done; next I look at the result."))
    return {"model": model, "instructions": "Follow the developer message.", "input": items,
            "tools": CODEX_TOOLS, "tool_choice": "auto", "parallel_tool_calls": False,
            "reasoning": {"effort": "medium", "summary": "auto"}, "store": False, "stream": True,
            "include": ["reasoning.encrypted_content"], "prompt_cache_key": "bench-session",
            "client_metadata": {"bench": "1"}}


def responses_small(model: str) -> Dict[str, Any]:
    """The smallest streamed Responses request Codex could send: instructions and one user message."""
    return {"model": model, "instructions": "Be brief.", "stream": True, "store": False,
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}


async def translation(up: int, ag: int, pid: int, rows: List[List[str]], kind: str, pieces: str, streams: int,
                      events: int, body: Dict[str, Any], direct_path: str, direct_body: Dict[str, Any],
                      path: str = "/v1/messages", goal: str = ">= 0.6 of direct") -> None:
    """Two rows for a translated kind: events/s through agproxy (on ``path``) against the same stream
    direct, and agproxy's CPU per 1,000 translated pieces (the stream's events)."""
    base = await throughput(up, direct_path, direct_body, streams)
    cpu0 = cpu_seconds(pid)
    via_t = await throughput(ag, path, body, streams)
    cpu = cpu_seconds(pid) - cpu0
    rows.append([f"{kind}, {streams} concurrent x {events}: events/s", f"{base['events_per_s']:,.0f}",
                 f"{via_t['events_per_s']:,.0f} ({via_t['ok']}/{streams} ok)",
                 f"{via_t['events_per_s'] / base['events_per_s']:.2f}", goal])
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
    await translation(up, ag, pid, rows, "OpenAI translation", "deltas", streams, events, oa_body,
                      "/v1/chat/completions", dict(oa_body, messages=[{"role": "user", "content": "hi"}]))
    await translation(up, ag, pid, rows, "Gemini translation", "Gemini chunks", streams, events,
                      message(f"gm-bench-e{events}-s20-d0", True),
                      f"/v1beta/models/gm-bench-e{events}-s20-d0:streamGenerateContent?alt=sse",
                      {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})

    await dialects(up, ag, pid, rows, n, streams, events)

    held, seconds = (100, 10) if QUICK else (500, 60)
    slow = message(f"bench-e{seconds}-s20-d1000", True)
    result = await throughput(ag, "/v1/messages", slow, held)
    rows.append([f"{held} concurrent streams held {seconds} s (slow upstream)", "-",
                 f"{result['ok']}/{held} complete, RSS {rss_mb(pid):.1f} MB", "-", "100 % complete, RSS <= 150 MB"])


async def dialects(up: int, ag: int, pid: int, rows: List[List[str]], n: int, streams: int, events: int) -> None:
    """The other agents' protocols in, Anthropic out (issue 21): added latency of a small streamed
    request and of a Codex-sized one, then each dialect's stream against the same stream direct."""
    small_stream = message("bench-e10-s20-d0", True)
    await latency(ag, responses_small("bench-e10-s20-d0"), 20, "/v1/responses")
    direct = await latency(up, small_stream, n)
    for label, path, body in (("/v1/messages passthrough", "/v1/messages", small_stream),
                              ("Responses in", "/v1/responses", responses_small("bench-e10-s20-d0"))):
        via = await latency(ag, body, n, path)
        rows.append([f"streamed small (10 events), 1 client, {label}: added p50 / p99",
                     f"{pct(direct, .5):.2f} / {pct(direct, .99):.2f} ms",
                     f"{pct(via, .5):.2f} / {pct(via, .99):.2f} ms",
                     f"+{pct(via, .5) - pct(direct, .5):.2f} / +{pct(via, .99) - pct(direct, .99):.2f} ms", "reported"])
    codex = codex_body("bench-e10-s20-d0")
    via = await latency(ag, codex, n // 2, "/v1/responses")
    rows.append([f"{len(json.dumps(codex)) // 1000} KB Codex CLI request (Responses in, 10 events): added p50",
                 f"{pct(direct, .5):.2f} ms", f"{pct(via, .5):.2f} ms", f"+{pct(via, .5) - pct(direct, .5):.2f} ms",
                 "reported"])

    model = f"bench-e{events}-s20-d0"
    direct_body = message(model, True)
    await translation(up, ag, pid, rows, "Responses in (Codex CLI request), Anthropic out",
                      "Responses events (Responses in)",
                      streams, events, codex_body(model), "/v1/messages", direct_body, "/v1/responses", "reported")
    rows.append([f"RSS after the {streams}-stream Responses run", "-", f"{rss_mb(pid):.1f} MB", "-", "reported"])
    await translation(up, ag, pid, rows, "Chat Completions in, Anthropic out", "Chat chunks (Chat in)", streams, events,
                      direct_body, "/v1/messages", direct_body, "/v1/chat/completions",
                      "reported")
    await translation(up, ag, pid, rows, "Gemini SSE in, Anthropic out", "Gemini chunks (Gemini in)", streams, events,
                      {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, "/v1/messages", direct_body,
                      f"/v1beta/models/{model}:streamGenerateContent?alt=sse", "reported")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()}"


def load_average() -> str:
    """The 1-minute load average: the machine may be shared, and the figures move with it."""
    return f"{os.getloadavg()[0]:.2f}"


def main() -> None:
    load_before = load_average()
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
    load_after = load_average()
    header = ["scenario", "direct (baseline)", "through agproxy", "ratio / added", "goal"]
    table = [header, ["---"] * len(header)] + rows
    text = "\n".join("| " + " | ".join(row) + " |" for row in table)
    print(text)
    if not QUICK:
        with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
            f.write(f"# Benchmark results\n\nMachine: {machine()}. Run: {time.strftime('%Y-%m-%d')} "
                    "with `make bench` (client, fake upstream and agproxy share the machine; agproxy runs "
                    f"as `python agproxy.pyz`; the machine is shared: 1-minute load average {load_before} "
                    f"before the run, {load_after} after it, this run included).\n\n" + text + "\n")
            for extra in ("PEERS.md", "FINDINGS.md"):  # make bench-peers writes PEERS.md
                if os.path.exists(os.path.join(HERE, extra)):
                    with open(os.path.join(HERE, extra)) as n:
                        f.write("\n" + n.read())


if __name__ == "__main__":
    main()
