#!/usr/bin/env python3
"""agproxy's benchmarks: every scenario runs against the fake upstream directly (the baseline) and
through agproxy, in the same run; figures are ratios to that baseline. Prints a table and writes
bench/RESULTS.md, and the charts bench/bodies.png and bench/growth.png (drawn by charts.py with the
dev venv's matplotlib). Usage: python bench/run.py [--quick] [--only core,bodies,stall,growth,ttfb]
(--only runs those scenarios alone and writes their charts, not RESULTS.md; --quick writes nothing)."""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import claude_code  # noqa: E402
import load  # noqa: E402

if {"-h", "--help"} & set(sys.argv[1:]):
    raise SystemExit(__doc__)
QUICK = "--quick" in sys.argv
#: The scenarios, each selectable alone with --only: issue 7's table (and issue 21's rows), then issue 22's.
SCENARIOS = ("core", "bodies", "stall", "growth", "ttfb")
ONLY = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv[:-1] else list(SCENARIOS)
VENV_PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def loop_cpu_seconds(pid: int) -> float:
    """CPU time of the process's main thread (its event loop), in nanoseconds from schedstat: precise
    where cpu_seconds counts 10 ms ticks, for steps that spend little CPU."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """The process's resident set (``VmHWM``: its peak since start or since ``reset_peak_rss``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux: 5 to clear_refs), so a run's peak is its own."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def start_upstream() -> Tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "upstream.py")], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def start_floor(upstream_port: int, assemble: bool = False) -> Tuple[subprocess.Popen, int]:
    """``floor_forwarder.py`` on the fake (with ``assemble``: its minimal whole-answer gateway), and its port."""
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "floor_forwarder.py"), str(upstream_port)]
                            + (["--assemble"] if assemble else []), stdout=subprocess.PIPE, text=True)
    try:
        return proc, int(proc.stdout.readline().rsplit(":", 1)[1])  # type: ignore[union-attr]
    except (ValueError, IndexError):
        proc.terminate()
        raise


def start_agproxy(upstream_port: int, workdir: str, wrapper: Sequence[str] = (),
                  bulk_port: int = 0, settings: Optional[Dict[str, Any]] = None) -> Tuple[subprocess.Popen, int, float]:
    """agproxy (the .pyz when built, else the module) on a config of four upstreams on the fake
    (models ``bulk-*`` go to ``bulk_port``, a second fake, when given: the stall scenario's big bodies
    must not slow the fake that serves the streams); ``wrapper``: a script and its arguments to run it
    under (then always the module); ``settings``: top-level settings that change the bench config's."""
    config = {"upstreams": [
        {"name": "bulk", "kind": "anthropic", "base_url": f"http://127.0.0.1:{bulk_port or upstream_port}",
         "accounts": [{"name": "bench", "api_key": "k"}]},
        {"name": "up", "kind": "anthropic", "base_url": f"http://127.0.0.1:{upstream_port}",
         "accounts": [{"name": "bench", "api_key": "k"}]},
        {"name": "oa", "kind": "openai", "base_url": f"http://127.0.0.1:{upstream_port}/v1",
         "accounts": [{"name": "bench", "api_key": "k"}]},
        {"name": "gm", "kind": "gemini", "base_url": f"http://127.0.0.1:{upstream_port}",
         "accounts": [{"name": "bench", "api_key": "k"}]}],
        "model_map": [{"match": "oa-*", "upstream": "oa"}, {"match": "gm-*", "upstream": "gm"},
                      {"match": "bulk-*", "upstream": "bulk"}, {"match": "*", "upstream": "up"}],
        "max_connections": 4096, "log_level": "warning", "state_file": ""}
    config.update(settings or {})
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


async def latency(port: int, body: Union[Dict[str, Any], bytes], count: int, path: str = "/v1/messages") -> List[float]:
    out = await load.run("127.0.0.1", port, path, body, 1, count)
    assert all(r["ok"] for r in out["results"]), out["results"][:2]
    return [r["total"] * 1000 for r in out["results"]]


#: Rounds that :func:`alternated` takes its measurements in.
ALTERNATIONS = 6


async def alternated(direct_port: int, via_port: int, body: Union[Dict[str, Any], bytes], count: int,
                     via_body: Optional[Union[Dict[str, Any], bytes]] = None) -> Tuple[List[float], List[float]]:
    """``count`` requests straight to the fake and as many through agproxy (``via_body`` in place of
    ``body``, where given), in rounds that take turns: the machine's drift (another tenant, the CPU's
    clock) weighs on both alike. A figure of a few tenths of a millisecond is the difference of two
    such medians; measured one after the other, it moved by 0.1 ms from run to run."""
    direct: List[float] = []
    via: List[float] = []
    for _ in range(ALTERNATIONS):
        direct += await latency(direct_port, body, count // ALTERNATIONS)
        via += await latency(via_port, body if via_body is None else via_body, count // ALTERNATIONS)
    return direct, via


async def alternated_then_stopped(direct_port: int, proc: subprocess.Popen, port: int, body: Dict[str, Any],
                                  count: int) -> Tuple[List[float], List[float]]:
    """:func:`alternated` through another server than the bench's agproxy (``proc``, on ``port``),
    warmed first and stopped after."""
    try:
        await latency(port, body, 20)
        return await alternated(direct_port, port, body, count)
    finally:
        proc.terminate()
        proc.wait(10)


def added_row(label: str, direct: List[float], via: List[float], goal: str, p99: bool = True) -> List[str]:
    """A table row of the time ``via`` adds to ``direct``: their p50 (and p99) and the difference."""
    if not p99:
        return [label, f"{pct(direct, .5):.2f} ms", f"{pct(via, .5):.2f} ms",
                f"{pct(via, .5) - pct(direct, .5):+.2f} ms", goal]
    return [label, f"{pct(direct, .5):.2f} / {pct(direct, .99):.2f} ms", f"{pct(via, .5):.2f} / {pct(via, .99):.2f} ms",
            f"{pct(via, .5) - pct(direct, .5):+.2f} / {pct(via, .99) - pct(direct, .99):+.2f} ms", goal]


#: The characters of each delta the fake upstream writes (the bench's models say ``s20``): a
#: translated stream is counted by its text (``payload``), not its events, since agproxy joins the
#: deltas that one read brought into one event.
DELTA_CHARS = 20


async def throughput(port: int, path: str, body: Dict[str, Any], streams: int) -> Dict[str, Any]:
    out = await load.run("127.0.0.1", port, path, body, streams, streams, timeout=300)
    ok = [r for r in out["results"] if r["ok"]]
    events = sum(r["events"] for r in ok)
    deltas = sum(r["payload"] for r in ok) // DELTA_CHARS
    return {"events_per_s": events / out["wall"], "events": events, "deltas": deltas,
            "deltas_per_s": deltas / out["wall"], "ok": len(ok), "total": streams,
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
    """Two rows for a translated kind: deltas/s through agproxy (on ``path``) against the same stream
    direct, and agproxy's CPU per 1,000 translated pieces (the stream's deltas, counted by their text:
    agproxy writes a read's run of deltas as one event)."""
    base = await throughput(up, direct_path, direct_body, streams)
    cpu0 = cpu_seconds(pid)
    via_t = await throughput(ag, path, body, streams)
    cpu = cpu_seconds(pid) - cpu0
    rows.append([f"{kind}, {streams} concurrent x {events}: deltas/s", f"{base['deltas_per_s']:,.0f}",
                 f"{via_t['deltas_per_s']:,.0f} ({via_t['ok']}/{streams} ok)",
                 f"{via_t['deltas_per_s'] / base['deltas_per_s']:.2f}", goal])
    rows.append([f"agproxy CPU per 1,000 translated {pieces}", "-", f"{cpu / max(1, via_t['deltas']) * 1e6:.1f} ms",
                 "-", "reported"])


STARTS = 9  # starts measured of agproxy and of the bare interpreter each (one start is too noisy)
FLOOR_PROGRAM = "import asyncio, sys, time\nsys.stderr.write('ready\\n')\nsys.stderr.flush()\ntime.sleep(30)\n"


def started_and_idle(command: Sequence[str], ready: str, workdir: str) -> Tuple[float, float]:
    """Seconds from launching ``command`` to its stderr line starting with ``ready``, and its RSS (MB)
    then; the process is stopped after."""
    started = time.perf_counter()
    proc = subprocess.Popen(list(command), stderr=subprocess.PIPE, text=True, cwd=workdir)
    try:
        while True:
            line = proc.stderr.readline()
            if not line:
                raise RuntimeError(f"{command[-1]} did not start")
            if line.startswith(ready):
                return time.perf_counter() - started, rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def start_up_rows(up: int, workdir: str) -> List[List[str]]:
    """Start-up to the readiness line and idle RSS: medians of :data:`STARTS` starts of agproxy (as
    ``make bench`` runs it, on its bench config) and of the same interpreter importing asyncio alone,
    the floor any asyncio program pays on this machine (and its site-packages hooks, if it has any),
    alternated; then both again under ``python -S`` (no site-packages at all), as on a machine whose
    Python has no such hooks (this sandbox's ``.pth`` imports certifi and its modules at every start)."""
    program = os.path.join(ROOT, "agproxy.pyz")
    if not os.path.exists(program):
        program = os.path.join(ROOT, "agproxy.py")
    proc, _, _ = start_agproxy(up, workdir)  # writes the config the measured starts read
    proc.terminate()
    proc.wait(10)
    rows = []
    for flags, how in (([], ""), (["-S"], ", python -S")):
        ours, floor = [], []
        for _ in range(STARTS):
            ours.append(started_and_idle([sys.executable, *flags, program, "--config",
                                          os.path.join(workdir, "bench.json"), "--port", "0"],
                                         "agproxy listening on", workdir))
            floor.append(started_and_idle([sys.executable, *flags, "-c", FLOOR_PROGRAM], "ready", workdir))
        ms = statistics.median(t for t, _ in ours) * 1000
        floor_ms = statistics.median(t for t, _ in floor) * 1000
        rss = statistics.median(r for _, r in ours)
        floor_rss = statistics.median(r for _, r in floor)
        rows += [[f"start-up to readiness line (floor: the interpreter importing asyncio{how})", f"{floor_ms:.0f} ms",
                  f"{ms:.0f} ms", f"{ms - floor_ms:+.0f} ms", "<= 100 ms"],
                 [f"idle RSS (floor: the interpreter with asyncio imported{how})", f"{floor_rss:.1f} MB",
                  f"{rss:.1f} MB", f"{rss - floor_rss:+.1f} MB", "<= 25 MB"]]
    return rows


async def scenarios(up: int, ag: int, pid: int, rows: List[List[str]], startup_s: float) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        rows.extend(start_up_rows(up, workdir))

    n = 100 if QUICK else 300
    small = message("bench-e1-s20-d0", False)
    await latency(ag, small, 20)
    direct, via = await alternated(up, ag, small, 3 * n)
    rows.append(added_row("non-stream small, 1 client: added p50 / p99", direct, via, "<= 1 ms / <= 5 ms added"))
    # by default agproxy asks the upstream for a stream and assembles the Message (force_stream_internally:
    # a broken stream can be retried, no upstream limit on long non-streaming calls); the same request
    # where the upstream's JSON is relayed shows what that costs, the upstream's own work on a stream included
    with tempfile.TemporaryDirectory() as workdir:
        json_proc, json_port, _ = start_agproxy(up, workdir, settings={"force_stream_internally": False})
        direct, via = await alternated_then_stopped(up, json_proc, json_port, small, 3 * n)
    rows.append(added_row("non-stream small, 1 client, force_stream_internally off (the upstream's JSON relayed): "
                          "added p50 / p99", direct, via, "reported"))
    # the floor of one more hop on this machine: a forwarder that does nothing but frame and relay
    forwarder, forwarder_port = start_floor(up)
    direct, via = await alternated_then_stopped(up, forwarder, forwarder_port, small, 3 * n)
    rows.append(added_row("the floor of one more hop: a minimal asyncio forwarder (frames and relays, nothing else), "
                          "non-stream small: added p50", direct, via, "reported", p99=False))
    # ... and of the first row's default: the answer asked as a stream and put together, nothing checked
    assembler, assembler_port = start_floor(up, assemble=True)
    direct, via = await alternated_then_stopped(up, assembler, assembler_port, small, 3 * n)
    rows.append(added_row("the floor of a whole answer asked as a stream: a minimal asyncio gateway (the body decoded, "
                          "sent with stream true, each event decoded, one Message encoded; nothing checked), "
                          "non-stream small: added p50", direct, via, "reported", p99=False))
    # what the upstream itself takes longer for the stream agproxy asks it for by default: the same small
    # answer from the fake alone, as JSON and as its stream of six events (each its own write, as a model's)
    as_json, as_stream = await alternated(up, up, small, 3 * n, via_body=message("bench-e1-s20-d0", True))
    rows.append(added_row("the fake upstream alone, the small answer as its stream vs as JSON (part of the first "
                          "row's added time): p50", as_json, as_stream, "reported", p99=False))

    big = claude_code_body()
    direct, via = await latency(up, big, n // 2), await latency(ag, big, n // 2)
    rows.append(added_row("50 KB Claude Code body, sanitize + forward: added p50", direct, via, "<= 3 ms added",
                          p99=False))

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
    # OpenAI's own chunks carry more than the row above's (created, system_fingerprint, null logprobs and
    # finish_reason): about Gemini's size, so the two paths compare on like chunks (upstream.py, "-real")
    real_body = message(f"oa-bench-e{events}-s20-d0-real", True)
    await translation(up, ag, pid, rows, "OpenAI translation, chunks as OpenAI writes them (277 bytes against "
                      "158, Gemini's 254)", "deltas of OpenAI-shaped chunks", streams, events, real_body,
                      "/v1/chat/completions", dict(real_body, messages=[{"role": "user", "content": "hi"}]),
                      goal="reported")
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
        rows.append(added_row(f"streamed small (10 events), 1 client, {label}: added p50 / p99", direct, via,
                              "reported"))
    codex = codex_body("bench-e10-s20-d0")
    via = await latency(ag, codex, n // 2, "/v1/responses")
    rows.append(added_row(f"{len(json.dumps(codex)) // 1000} KB Codex CLI request (Responses in, 10 events): "
                          "added p50", direct, via, "reported", p99=False))

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


#: Issue 22's body sizes: a short Claude Code turn to the 2 MB of a long session.
BODY_SIZES = (1_000, 10_000, 88_000, 200_000, 500_000, 1_000_000, 2_000_000)
#: About this many bytes of a body each way in each of the bodies' rounds: 100 requests a round for
#: the small bodies, 9 at 2 MB, never fewer than 4.
ALTERNATED_BODY_BYTES = 20_000_000
#: Issue 22's concurrency steps for the cost growth (CPU per delta and RSS).
GROWTH_STREAMS = (1, 10, 100, 1000)


def markdown(header: Sequence[str], rows: List[List[str]]) -> str:
    return "\n".join("| " + " | ".join(row) + " |" for row in [list(header), ["---"] * len(header)] + rows)


def floor_ms(raw: bytes, repeat: int) -> float:
    """The floor of a body's cost: ``json.loads`` of its bytes and ``json.dumps`` of the result back to
    bytes, in this Python (the one agproxy runs on); the median of ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        json.dumps(json.loads(raw)).encode()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def bodies(up: int, ag: int, pid: int, data: Dict[str, Any]) -> str:
    """Item 1 of issue 22: a real Claude Code request at each size, non-streaming to the anthropic fake;
    added latency at p50 against the floor, and agproxy's CPU per request."""
    real = claude_code.capture()
    if real is None:
        return "Claude Code bodies: skipped, no Claude Code CLI to capture a request from (make claude-cli)."
    captured = claude_code.size_of(real)
    assembler, assembler_port = start_floor(up, assemble=True)
    try:
        rows, points = await _body_rows(up, ag, pid, real, assembler_port)
    finally:
        assembler.terminate()
        assembler.wait(10)
    data["bodies"] = points
    return (f"### Claude Code bodies, non-streaming, anthropic upstream (issue 22)\n\nA real Claude Code "
            f"{claude_code.CLI_VERSION} request (captured at bench time from the CLI through the test fake: a Read "
            f"tool loop, {captured / 1000:.1f} KB as sent), grown by repeating its last tool call and result, or "
            "trimmed below its size (tools dropped, long strings cut), and sent as the CLI writes it (no spaces, "
            "UTF-8 unescaped); each size measured after as many unmeasured requests as it measures (a "
            "long-running gateway's steady state), then measured in six rounds that take turns with the fake "
            "alone, as the small request. Floor: `json.loads` + `json.dumps` of the "
            "same body in the same Python. CPU: agproxy's, per request (/proc, 10 ms ticks over the run). "
            "Minimal gateway: `floor_forwarder.py --assemble`, the least a Python gateway does for such a request "
            "by agproxy's default (the body decoded, its bytes sent with stream made true, each event of the "
            "answer decoded, one Message encoded; nothing checked, no accounts or records), measured the same way: "
            "what the goal leaves above it is what agproxy's checks and bookkeeping may cost.\n\n"
            + markdown(["body", "direct p50", "through agproxy p50", "added p50", "minimal gateway: added p50",
                        "floor", "added / floor", "agproxy CPU per request", "CPU / floor",
                        "goal: 1.5x floor + 0.5 ms"], rows))


async def _body_rows(up: int, ag: int, pid: int, real: Dict[str, Any],
                     assembler_port: int) -> Tuple[List[List[str]], List[Dict[str, Any]]]:
    """The bodies table's rows and the chart's points: each size through agproxy and through the minimal
    gateway, each in rounds that take turns with the fake alone."""
    rows, points = [], []
    for target in BODY_SIZES[:4] if QUICK else BODY_SIZES:
        body = dict(claude_code.sized(real, target), model="bench-e5-s20-d0", stream=False)
        raw = claude_code.wire(body)
        count = max(24, min(200, int((1e6 if QUICK else 5e6) / len(raw))))
        # a long-running gateway's steady state: a fresh process's first big bodies cost up to twice as
        # much while its heap and socket buffers grow (2 MB: 60, 30, 33 ms, then ~22 from the 30th on)
        await latency(ag, raw, count)
        await latency(assembler_port, raw, count)
        await latency(up, raw, 3)
        # in rounds that take turns with the fake alone, as the small request's: one run after the other,
        # 1 KB moved by 0.1 ms and 500 KB by 0.9
        count = ALTERNATIONS * max(4, min(100, int(ALTERNATED_BODY_BYTES / len(raw))))
        cpu0 = cpu_seconds(pid)
        direct, via = await alternated(up, ag, raw, count)
        cpu = (cpu_seconds(pid) - cpu0) / count * 1000  # (agproxy is idle while the fake alone answers)
        direct_too, minimal = await alternated(up, assembler_port, raw, count)
        floor = floor_ms(raw, max(9, count // 4))
        added = pct(via, .5) - pct(direct, .5)
        goal = 1.5 * floor + 0.5
        point = {"kb": len(raw) / 1000, "messages": len(body["messages"]), "direct_ms": pct(direct, .5),
                 "via_ms": pct(via, .5), "added_ms": added, "floor_ms": floor, "cpu_ms": cpu,
                 "minimal_added_ms": pct(minimal, .5) - pct(direct_too, .5)}
        points.append(point)
        rows.append([f"{len(raw) / 1000:,.1f} KB ({len(body['messages'])} messages)", f"{point['direct_ms']:.2f} ms",
                     f"{point['via_ms']:.2f} ms", f"{added:+.2f} ms", f"{point['minimal_added_ms']:+.2f} ms",
                     f"{floor:.2f} ms", f"{added / floor:.1f}x", f"{cpu:.2f} ms", f"{cpu / floor:.1f}x",
                     f"<= {goal:.2f} ms ({'met' if added <= goal else 'not met'})"])
    return rows, points


class BulkClient(threading.Thread):
    """One client that sends the same big non-streaming body in a loop on a keep-alive connection
    (a long Claude Code session's turns), in its own thread so the streams' event loop is not its."""

    def __init__(self, port: int, body: Dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.port, self.raw = port, claude_code.wire(body)
        self.stop = threading.Event()
        self.latencies: List[float] = []
        self.failures = 0

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self.stop.is_set():
            started = time.perf_counter()
            conn.request("POST", "/v1/messages", self.raw, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                self.latencies.append((time.perf_counter() - started) * 1000)
            else:
                self.failures += 1
        conn.close()


async def stall(up: int, ag: int, pid: int, data: Dict[str, Any]) -> str:
    """Item 2 of issue 22: 20 passthrough streams (an event every 10 ms) through agproxy, the largest gap
    between events they see, alone and while one other client sends 2 MB bodies in a loop."""
    real = claude_code.capture()
    if real is None:
        return "Stall: skipped, no Claude Code CLI to capture a request from (make claude-cli)."
    big = dict(claude_code.sized(real, 2_000_000), model="bulk-e5-s20-d0", stream=False)
    events = 200 if QUICK else 400
    stream = message(f"bench-e{events}-s20-d10", True)
    rows, largest = [], {False: [], True: []}
    for round_ in range(2 if QUICK else 3):
        for bulk in (False, True):
            client = BulkClient(ag, big) if bulk else None
            if client:
                client.start()
                await asyncio.sleep(0.5)  # its first bodies are on their way before the streams start
            out = await load.run("127.0.0.1", ag, "/v1/messages", stream, 20, 20, timeout=120)
            if client:
                client.stop.set()
                await asyncio.get_running_loop().run_in_executor(None, client.join)
            ok = [r for r in out["results"] if r["ok"]]
            gaps = sorted(r["max_gap"] * 1000 for r in ok)
            largest[bulk].append(gaps[-1])
            bulk_note = (f"{len(client.latencies)} bodies answered (p50 {pct(client.latencies, .5):.0f} ms), "
                         f"{client.failures} refused") if client else "-"
            rows.append([f"{round_ + 1}: {'with the 2 MB client' if bulk else 'alone'}", f"{len(ok)}/20",
                         f"{gaps[-1]:.1f} ms", f"{statistics.median(gaps):.1f} ms", bulk_note])
    alone, loaded = statistics.median(largest[False]), statistics.median(largest[True])
    data["stall"] = {"alone_ms": alone, "loaded_ms": loaded}
    big_kb = claude_code.size_of(big) // 1000
    return (f"### Stall of other streams (issue 22)\n\n20 streams of {events} events 10 ms apart "
            f"(/v1/messages passthrough) through agproxy; the bulk client sends the {big_kb:,} "
            "KB Claude Code request (non-streaming, to a second fake upstream so the fake's own parse does not "
            "slow the streams) in a loop on one connection.\n\n"
            + markdown(["run", "streams ok", "largest gap, any stream", "median of each stream's largest",
                        "bulk client"], rows)
            + f"\n\nAdded largest gap: **{loaded - alone:+.1f} ms** ({alone:.1f} ms alone, {loaded:.1f} ms with the "
            f"2 MB client; the median of the runs of each, alternated; goal: at most +20 ms, "
            f"{'met' if loaded - alone <= 20 else 'not met'}).")


def delivered(results: List[Dict[str, Any]], model: str) -> int:
    """The deltas the clients received: events on the passthrough; on a translated path (``oa-`` models)
    the deltas' text over DELTA_CHARS, since agproxy joins the deltas that one upstream read brought, and
    a paced stream's reads bring several once the machine falls behind the pace."""
    ok = [r for r in results if r["ok"]]
    if model.startswith("oa-"):
        return sum(r["payload"] for r in ok) // DELTA_CHARS
    return sum(r["events"] for r in ok)


async def growth_point(port: int, pid: int, model: str, streams: int, events: int) -> Dict[str, Any]:
    """CPU per delta and peak RSS of ``streams`` concurrent streams, twice: paced as a model writes (150
    events 20 ms apart, so each upstream read brings one event) and from the fast fake (``events`` each
    in bursts; more requests, as many at once, until about 100,000 deltas have gone through, so the
    10 ms CPU ticks stay small). Paced first, since memory the fast step held stays with the process."""
    reset_peak_rss(pid)
    cpu0, started = loop_cpu_seconds(pid), time.perf_counter()
    paced = await load.run("127.0.0.1", port, "/v1/messages", message(f"{model}-e150-s20-d20", True), streams,
                           streams, timeout=120)
    paced_events = delivered(paced["results"], model)
    point = {"paced_ok": sum(r["ok"] for r in paced["results"]), "paced_peak_rss_mb": rss_mb(pid, "VmHWM"),
             "paced_cpu_us": (loop_cpu_seconds(pid) - cpu0) / max(1, paced_events) * 1e6,
             "paced_events_per_s": paced_events / (time.perf_counter() - started)}
    total = max(streams, math.ceil((20_000 if QUICK else 100_000) / events))
    reset_peak_rss(pid)
    cpu0 = cpu_seconds(pid)
    out = await load.run("127.0.0.1", port, "/v1/messages", message(f"{model}-e{events}-s20-d0", True), streams,
                         total, timeout=300)
    cpu = cpu_seconds(pid) - cpu0
    deltas = delivered(out["results"], model)
    point.update(streams=streams, ok=sum(r["ok"] for r in out["results"]), total=total, events=deltas,
                 cpu_us=cpu / max(1, deltas) * 1e6, peak_rss_mb=rss_mb(pid, "VmHWM"),
                 events_per_s=deltas / out["wall"])
    return point


async def growth(up: int, ag: int, pid: int, data: Dict[str, Any]) -> str:
    """Item 3 of issue 22: CPU per delta and RSS at 1, 10, 100 and 1,000 concurrent streams, on the
    passthrough and the OpenAI translation path, each on a fresh agproxy (memory an earlier step held
    stays with the process)."""
    events = 200 if QUICK else 500
    rows, curves = [], {}
    for label, model in (("passthrough", "bench"), ("OpenAI translation", "oa-bench")):
        with tempfile.TemporaryDirectory() as workdir:
            proc, port, _ = start_agproxy(up, workdir)
            try:
                idle = rss_mb(proc.pid)
                await load.run("127.0.0.1", port, "/v1/messages", message(f"{model}-e10-s20-d0", True), 2, 4)
                points = []
                for streams in GROWTH_STREAMS[:3] if QUICK else GROWTH_STREAMS:
                    point = await growth_point(port, proc.pid, model, streams, events)
                    points.append(point)
                    rows.append([label, f"{streams:,}", f"{point['ok']}/{point['total']}",
                                 f"{point['events_per_s']:,.0f}", f"{point['cpu_us']:.1f} µs",
                                 f"{point['peak_rss_mb']:.1f} MB", f"{point['paced_ok']}/{streams}",
                                 f"{point['paced_events_per_s']:,.0f}", f"{point['paced_cpu_us']:.1f} µs",
                                 f"{point['paced_peak_rss_mb']:.1f} MB", f"{idle:.1f} MB"])
            finally:
                proc.terminate()
                proc.wait(30)
        curves[label] = points
    data["growth"] = curves
    return ("### Cost growth with concurrent streams (issue 22)\n\nAnthropic client on /v1/messages, a fresh "
            f"agproxy per path. Fast: streams of {events} events of 20 characters from the fast fake, which writes "
            "them in bursts (many events per read); each step sends requests, as many at once as its number of "
            "streams, until about 100,000 deltas (at least one round); the clients read slower than the fake "
            "writes, so its peak RSS includes what agproxy buffers for them. Paced: as many streams of 150 events "
            "20 ms apart (50 a second, a model's pace: one event per read and per write), at once. CPU per delta: "
            "agproxy's CPU over the events the clients received (paced: its event loop thread's, from schedstat); "
            "peak RSS: VmHWM over the step (reset before it).\n\n"
            + markdown(["path", "concurrent streams", "fast: requests ok", "fast: events/s", "fast: CPU per delta",
                        "fast: peak RSS", "paced: ok", "paced: events/s", "paced: CPU per delta",
                        "paced: peak RSS", "idle RSS"], rows))


async def staggered(port: int, body: Dict[str, Any], streams: int, each: int, spread_s: float) -> List[float]:
    """Times to first byte (ms) of ``streams`` clients that each send ``each`` streamed requests one after
    another, their starts spread over ``spread_s`` (about one stream's length), so that ``streams`` run at
    any moment and new ones begin all the time rather than in one burst."""
    payload = json.dumps(body).encode()
    results: List[Dict[str, Any]] = []

    async def client(i: int) -> None:
        await asyncio.sleep(spread_s * i / streams)
        for _ in range(each):
            results.append(await load.one("127.0.0.1", port, "/v1/messages", payload, {}, 120))

    await asyncio.gather(*(client(i) for i in range(streams)))
    return [r["ttfb"] * 1000 for r in results if r["ok"]]


async def ttfb(up: int, ag: int, pid: int, data: Dict[str, Any]) -> str:
    """Item 4 of issue 22: time to first byte at p50 and p99 with 200 concurrent streams (each of 300
    events 10 ms apart, so about 3 s long, some 67 new ones a second), direct and through agproxy."""
    body = message("bench-e300-s20-d10", True)
    each = 2 if QUICK else 3
    rows = []
    for _ in range(2):
        d = await staggered(up, body, 200, each, 3.0)
        cpu0, started = cpu_seconds(pid), time.perf_counter()
        v = await staggered(ag, body, 200, each, 3.0)
        busy = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - started)
        rows.append([f"{len(d)}/{200 * each} / {len(v)}/{200 * each}", f"{pct(d, .5):.2f} / {pct(d, .99):.2f} ms",
                     f"{pct(v, .5):.2f} / {pct(v, .99):.2f} ms",
                     f"{pct(v, .5) - pct(d, .5):+.2f} / {pct(v, .99) - pct(d, .99):+.2f} ms",
                     f"{busy:.2f}", f"p99 added <= 5 ms ({'met' if pct(v, .99) - pct(d, .99) <= 5 else 'not met'})"])
    data["ttfb"] = rows
    return ("### Time to first byte, 200 concurrent streams (issue 22)\n\n/v1/messages passthrough, streams of "
            f"300 events 10 ms apart (about 3 s each, 20,000 events/s in all); 200 clients each send {each} in a "
            "row, their starts spread over the first 3 s, so 200 streams run at once and about 67 begin each "
            "second; direct, then through agproxy, twice. The fake sends message_start and the first "
            "content_block_start together, as a real upstream does (agproxy holds the head until the first event "
            "past message_start, so a retry is still possible).\n\n"
            + markdown(["ok (direct / agproxy)", "direct p50 / p99", "through agproxy p50 / p99",
                        "added p50 / p99", "agproxy CPU (cores busy)", "goal"], rows))


def draw_charts(data: Dict[str, Any]) -> str:
    """The charts of items 1 and 3, drawn by charts.py with the dev venv's matplotlib."""
    if not (data.get("bodies") or data.get("growth")):
        return ""
    python = VENV_PYTHON if os.path.exists(VENV_PYTHON) else sys.executable
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(data, f)
    try:
        result = subprocess.run([python, os.path.join(HERE, "charts.py"), f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if result.returncode:
        return f"(charts not drawn: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else '?'})"
    return result.stdout.strip()


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


async def run_selected(up: int, ag: int, pid: int, rows: List[List[str]], startup_s: float,
                       data: Dict[str, Any]) -> List[str]:
    """The scenarios --only names (all by default), in SCENARIOS' order; the issue 22 sections' texts,
    each with the load average it began under."""
    sections = []
    issue22: Dict[str, Callable[..., Any]] = {"bodies": bodies, "stall": stall, "growth": growth, "ttfb": ttfb}
    for name in SCENARIOS:
        if name not in ONLY:
            continue
        started, load_then = time.perf_counter(), load_average()
        if name == "core":
            await scenarios(up, ag, pid, rows, startup_s)
        else:
            text = await issue22[name](up, ag, pid, data)
            sections.append(f"{text}\n\n(1-minute load average {load_then} at its start; "
                            f"{time.perf_counter() - started:.0f} s)")
            print(sections[-1] + "\n", flush=True)
    return sections


def main() -> None:
    unknown = set(ONLY) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"--only takes {','.join(SCENARIOS)}, not {','.join(sorted(unknown))}")
    load_before = load_average()
    upstream, up_port = start_upstream()
    bulk, bulk_port = start_upstream()
    data: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as workdir:
        agproxy, ag_port, startup = start_agproxy(up_port, workdir, bulk_port=bulk_port)
        rows: List[List[str]] = []
        try:
            sections = asyncio.run(run_selected(up_port, ag_port, agproxy.pid, rows, startup, data))
        finally:
            agproxy.terminate()
            upstream.terminate()
            bulk.terminate()
            agproxy.wait(30)
            upstream.wait(10)
            bulk.wait(10)
    load_after = load_average()
    text = markdown(["scenario", "direct (baseline)", "through agproxy", "ratio / added", "goal"], rows) if rows else ""
    print(text)
    charts = "" if QUICK else draw_charts(data)
    if charts:
        print(charts)
        sections.append(charts)
    if not QUICK and set(ONLY) == set(SCENARIOS):
        with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
            f.write(f"# Benchmark results\n\nMachine: {machine()}. Run: {time.strftime('%Y-%m-%d')} "
                    "with `make bench` (client, fake upstream and agproxy share the machine; agproxy runs "
                    f"as `python agproxy.pyz`; the machine is shared: 1-minute load average {load_before} "
                    f"before the run, {load_after} after it, this run included).\n\n" + text + "\n")
            for section in sections:
                f.write("\n" + section + "\n")
            for extra in ("PEERS.md", "FINDINGS.md"):  # make bench-peers writes PEERS.md
                if os.path.exists(os.path.join(HERE, extra)):
                    with open(os.path.join(HERE, extra)) as n:
                        f.write("\n" + n.read())


if __name__ == "__main__":
    main()
