#!/usr/bin/env python3
"""Where agproxy's time goes on one streamed path: agproxy runs under cProfile (switched on only
once it is ready, so start-up is left out) while the load client sends the same streams as
`make bench`; prints the top functions by own time, per 1,000 events relayed.

Usage: python bench/profile_path.py [passthrough|responses|chat|gemini|openai|openai-real|gemini-up] [streams]
[events] [top] [cum] [--paced MS] (defaults: responses 100 1000 25; ``cum`` sorts by time including callees:
with few events per stream, say 10, it shows what each request costs; ``--paced 20`` has the fake write one
event every 20 ms, as a model does, so each upstream read brings one event: the growth scenario's paced
streams; the environment's PROFILE_CPU=1 times the loop thread's CPU, kernel time included, not the wall
clock, so waits in epoll and a loaded machine's queue for a core drop out; PROFILE_CALLERS=match prints the
callers of the functions whose names hold ``match``; PROFILE_SAVE=FILE keeps the raw stats).
``body`` profiles a real Claude Code request instead (bench/claude_code.py), non-streaming, one request after
another, figures per request:
python bench/profile_path.py body [requests] [size in KB] [top] [cum] (defaults: body 20 2000 25).
Dev only; cProfile slows agproxy about twofold, so read the shares, not the absolute times."""

from __future__ import annotations

import asyncio
import os
import pstats
import signal
import sys
import tempfile
from typing import Any, Dict, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import claude_code  # noqa: E402
import run  # noqa: E402


def paths(name: str, events: int, delay_ms: int = 0) -> Tuple[str, Dict[str, Any]]:
    """The agproxy path and body of each scenario, as `make bench` sends them (``delay_ms`` between events)."""
    model = f"bench-e{events}-s20-d{delay_ms}"
    return {
        "passthrough": ("/v1/messages", run.message(model, True)),
        "responses": ("/v1/responses", run.codex_body(model)),
        "chat": ("/v1/chat/completions", run.message(model, True)),
        "gemini": (f"/v1beta/models/{model}:streamGenerateContent?alt=sse",
                   {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
        "openai": ("/v1/messages", run.message("oa-" + model, True)),
        "openai-real": ("/v1/messages", run.message("oa-" + model + "-real", True)),  # chunks as OpenAI's own
        "gemini-up": ("/v1/messages", run.message("gm-" + model, True)),
    }[name]


def serve(out: str, argv: list) -> None:
    """Run agproxy's main in this process; SIGUSR1 starts the profiler; the stats go to ``out`` at exit."""
    sys.path.insert(0, os.path.dirname(argv[0]))
    import agproxy
    timer = [__import__("time").thread_time] if os.environ.get("PROFILE_CPU") else []
    profiler = __import__("cProfile").Profile(*timer)
    signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
    try:
        agproxy.main(argv[1:])
    finally:
        profiler.disable()
        profiler.dump_stats(out)


async def drive(port: int, pid: int, path: str, body: Dict[str, Any], streams: int) -> Dict[str, Any]:
    await run.throughput(port, path, body, 10)  # warm: connections pooled, code paths taken once
    os.kill(pid, signal.SIGUSR1)
    await asyncio.sleep(0.2)
    result = await run.throughput(port, path, body, streams)
    if body["model"].startswith(("oa-", "gm-")):  # a translated stream is counted by its deltas' text
        result.update(events=result["deltas"], events_per_s=result["deltas_per_s"])  # (run.DELTA_CHARS)
    return result


async def drive_body(port: int, pid: int, body: bytes, requests: int) -> Dict[str, Any]:
    """``requests`` of the body one after another (as one Claude Code session sends its turns); the
    result counts each request as one event, so the figures below are per 1,000 requests."""
    await run.latency(port, body, 3)
    os.kill(pid, signal.SIGUSR1)
    await asyncio.sleep(0.2)
    times = await run.latency(port, body, requests)
    return {"ok": len(times), "events": len(times), "events_per_s": 1000 / run.pct(times, .5)}


def main() -> None:
    args = sys.argv[1:]
    delay_ms = 0
    if "--paced" in args[:-1]:
        at = args.index("--paced")
        delay_ms = int(args[at + 1])
        del args[at:at + 2]
    name = args[0] if args else "responses"
    big = name == "body"
    streams, events, top = (int(args[i]) if len(args) > i else d
                            for i, d in ((1, 20 if big else 100), (2, 2000 if big else 1000), (3, 25)))
    if big:
        real = claude_code.capture()
        if real is None:
            raise SystemExit("no Claude Code request to profile: the CLI is not installed (make claude-cli)")
        path, body = "/v1/messages", dict(claude_code.sized(real, events * 1000), model="bench-e5-s20-d0",
                                          stream=False)
    else:
        path, body = paths(name, events, delay_ms)
    upstream, up_port = run.start_upstream()
    with tempfile.TemporaryDirectory() as workdir:
        out = os.path.join(workdir, "agproxy.prof")
        agproxy, port, _ = run.start_agproxy(up_port, workdir, [os.path.abspath(__file__), "--serve", out])
        try:
            result = asyncio.run(drive_body(port, agproxy.pid, claude_code.wire(body), streams) if big else
                                 drive(port, agproxy.pid, path, body, streams))
        finally:
            agproxy.terminate()
            agproxy.wait(30)
            upstream.terminate()
            upstream.wait(10)
        stats = pstats.Stats(out)
        if os.environ.get("PROFILE_SAVE"):  # the raw stats, for pstats' callers and callees
            stats.dump_stats(os.environ["PROFILE_SAVE"])
        per = 1000 / max(1, result["events"])
        unit = "req" if big else "ev"
        if big:
            print(f"body: {claude_code.size_of(body):,} bytes ({len(body['messages'])} messages), "
                  f"{result['ok']}/{streams} requests ok, p50 {1000 / result['events_per_s']:.1f} ms under the "
                  f"profiler; profiled CPU {stats.total_tt / max(1, result['ok']) * 1000:.1f} ms per request")
        else:
            paced = f" paced {delay_ms} ms" if delay_ms else ""
            print(f"{name}{paced}: {path}, {result['ok']}/{streams} streams ok, {result['events']} events, "
                  f"{result['events_per_s']:,.0f} events/s under the profiler; profiled CPU "
                  f"{stats.total_tt * per * 1000:.1f} ms per 1,000 events, "
                  f"{stats.total_tt / max(1, result['ok']) * 1000:.2f} ms per stream")
        print(f"{'own ms/1k ' + unit:>12} {'cum ms/1k ' + unit:>12} {'calls/' + unit:>8}  function")
        column = 3 if args[4:5] == ["cum"] else 2
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][column])[:top]
        for (file, line, func), (_, calls, own, cum, _) in rows:
            where = f"{os.path.basename(file)}:{line}" if line else "~"
            print(f"{own * per * 1000:12.2f} {cum * per * 1000:12.2f} {calls / max(1, result['events']):8.2f}  "
                  f"{func} ({where})")
        if os.environ.get("PROFILE_CALLERS"):  # who calls the functions whose names hold it (say "match")
            stats.print_callers(os.environ["PROFILE_CALLERS"])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], sys.argv[3:])
    else:
        main()
