"""Peak memory of agproxy holding many large request bodies at once (issue 18): N clients each
send a B MB request at the same moment to an upstream that holds every request for a few seconds
before it answers; agproxy's RSS and peak RSS (VmHWM) are read from /proc. Prints one line per run.

    .venv/bin/python bench/body_memory.py [--clients 8] [--mb 30] [--hold 3] [--budget BYTES]

``--budget`` sets ``max_inflight_body_bytes`` (0: the default); answers over it are counted as
refused (529). Dev only; Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY = re.compile(r"^agproxy listening on http://(\S+):(\d+)$")


def proc_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class HoldingUpstream:
    """An Anthropic upstream that reads each request whole, waits ``hold_s``, then answers."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),), daemon=True).start()
        self._ready.wait(10)

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 20)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await asyncio.Event().wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await reader.readexactly(length)
                await asyncio.sleep(self.hold_s)
                body = json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                                   "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                                   "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                             % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, AttributeError):
            writer.close()


async def client(port: int, body: bytes, results: List[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
    writer.write(body)
    sending = asyncio.ensure_future(writer.drain())  # an answer may come before the body is taken (a 529)
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        results.append(int(head.split(b" ", 2)[1]))
    except (ConnectionError, asyncio.IncompleteReadError):
        results.append(0)
    finally:
        sending.cancel()
        writer.transport.abort()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--mb", type=float, default=30)
    parser.add_argument("--hold", type=float, default=3.0)
    parser.add_argument("--budget", type=int, default=0)
    args = parser.parse_args(argv)
    upstream = HoldingUpstream(args.hold)
    config: Dict[str, object] = {
        "auth_mode": "off", "state_file": "", "force_stream_internally": False,
        "upstreams": [{"name": "u", "kind": "anthropic", "base_url": f"http://127.0.0.1:{upstream.port}",
                       "accounts": [{"name": "a", "api_key": "k"}]}]}
    if args.budget:
        config["max_inflight_body_bytes"] = args.budget
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config, handle)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "agproxy.py"), "--config", handle.name,
                             "--port", "0", "--log-level", "warning"], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        port = 0
        for line in proc.stderr:
            match = READY.match(line.strip())
            if match:
                port = int(match.group(2))
                break
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        time.sleep(0.5)
        idle = proc_kb(proc.pid, "VmRSS")
        text = "x" * int(args.mb * 1024 * 1024)
        body = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": text}]}).encode()
        results: List[int] = []
        peak = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], proc_kb(proc.pid, "VmRSS"))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        async def everyone() -> None:
            await asyncio.gather(*(client(port, body, results) for _ in range(args.clients)))

        started = time.monotonic()
        asyncio.run(everyone())
        took = time.monotonic() - started
        stop.set()
        sampler.join()
        hwm = proc_kb(proc.pid, "VmHWM")
        statuses = {s: results.count(s) for s in sorted(set(results))}
        print(f"{args.clients} x {args.mb:g} MB: idle RSS {idle / 1024:.0f} MB, peak RSS "
              f"{max(peak[0], hwm) / 1024:.0f} MB, statuses {statuses}, {took:.1f} s")
    finally:
        proc.terminate()
        started = time.monotonic()
        proc.wait(60)
        print(f"agproxy stopped {time.monotonic() - started:.1f} s after SIGTERM")
        os.unlink(handle.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
