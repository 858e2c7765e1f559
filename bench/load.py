"""A small asyncio HTTP/1.1 load client: N concurrent requests, each its own connection, with
time to first body byte, total time, the number of SSE events (or bytes) received and the largest
gap between two reads that brought events (what a user sees as a stall)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Dict, List, Optional, Union


async def one(host: str, port: int, path: str, body: bytes, headers: Dict[str, str],
              timeout: float) -> Dict[str, Any]:
    started = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{extra}"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = int(head.split(b" ", 2)[1])
        lower = head.lower()
        chunked = b"transfer-encoding: chunked" in lower
        length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0]) if b"content-length:" in lower else None
        first: Optional[float] = None
        events = 0
        received = 0
        payload = 0  # bytes of the fake upstream's "~" text that arrived, however a gateway regroups it
        tail = b""
        last_event: Optional[float] = None
        max_gap = 0.0
        deadline = started + timeout
        while True:
            data = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.perf_counter()))
            if not data:
                break
            if first is None:
                first = time.perf_counter()
            received += len(data)
            payload += data.count(b"~")
            window = tail + data
            arrived = window.count(b"\n\n") - tail.count(b"\n\n")
            if arrived:
                now = time.perf_counter()
                if last_event is not None:
                    max_gap = max(max_gap, now - last_event)
                last_event = now
            events += arrived
            tail = window[-5:]
            if (chunked and tail == b"0\r\n\r\n") or (length is not None and received >= length):
                break  # the body is complete (some servers keep the connection open regardless)
        return {"ok": status == 200, "status": status, "ttfb": (first or time.perf_counter()) - started,
                "total": time.perf_counter() - started, "events": events, "bytes": received,
                "payload": payload, "max_gap": max_gap}
    except (asyncio.TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
        return {"ok": False, "status": 0, "error": type(exc).__name__, "ttfb": 0.0,
                "total": time.perf_counter() - started, "events": 0, "bytes": 0, "payload": 0,
                "max_gap": 0.0}
    finally:
        writer.close()


async def run(host: str, port: int, path: str, body: Union[Dict[str, Any], bytes], concurrency: int, total: int,
              timeout: float = 120.0, headers: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """``total`` requests, ``concurrency`` at a time, of ``body`` (bytes as they are, else as
    ``json.dumps`` writes it); returns the results and the wall time."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    results: List[Dict[str, Any]] = []
    queue = list(range(total))

    async def worker() -> None:
        while queue:
            queue.pop()
            results.append(await one(host, port, path, payload, headers or {}, timeout))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"results": results, "wall": time.perf_counter() - started}
