#!/usr/bin/env python3
"""The floor of one more asyncio hop, for the core table: a forwarder that reads a request (its head and
a Content-Length body), writes it as it is to the upstream over a kept connection, reads the answer (a
head and a Content-Length body) and writes it back, with asyncio protocols as agproxy does, and nothing
else: no parsing beyond the framing, no JSON, no checks. What it adds to a request is what any Python
gateway on this machine pays for the second pair of sockets and wake-ups before doing any work.

Usage: python bench/floor_forwarder.py UPSTREAM_PORT (prints its port on the first line). Dev only."""

import asyncio
import sys
from typing import List, Optional

UPSTREAM_PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 0


def _whole(buffer: bytes) -> int:
    """The length of the whole message at the start of ``buffer`` (head and Content-Length body), or 0."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return 0
    head = buffer[:end].lower()
    length = int(head.split(b"content-length:")[1].split(b"\r\n")[0]) if b"content-length:" in head else 0
    return end + 4 + length if len(buffer) >= end + 4 + length else 0


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.waiter: Optional[asyncio.Future] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def exchange(self, request: bytes) -> bytes:
        self.transport.write(request)  # type: ignore[attr-defined]
        while not _whole(self.buffer):
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        size = _whole(self.buffer)
        answer, self.buffer = self.buffer[:size], self.buffer[size:]
        return answer


IDLE: List[Upstream] = []


class Client(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        size = _whole(self.buffer)
        if size:
            request, self.buffer = self.buffer[:size], self.buffer[size:]
            asyncio.get_running_loop().create_task(self.answer(request))

    async def answer(self, request: bytes) -> None:
        if IDLE:
            upstream = IDLE.pop()
        else:
            _, upstream = await asyncio.get_running_loop().create_connection(Upstream, "127.0.0.1", UPSTREAM_PORT)
        answer = await upstream.exchange(request.replace(b"Connection: close", b"Connection: keep-alive"))
        IDLE.append(upstream)
        self.transport.write(answer)  # type: ignore[attr-defined]
        self.transport.close()


async def main() -> None:
    server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", 0)
    print(f"floor forwarder listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
