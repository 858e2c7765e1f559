#!/usr/bin/env python3
"""The floor of one more asyncio hop, for the core table: a forwarder that reads a request (its head and
a Content-Length body), writes it as it is to the upstream over a kept connection, reads the answer (a
head and a Content-Length body) and writes it back, with asyncio protocols as agproxy does, and nothing
else: no parsing beyond the framing, no JSON, no checks. What it adds to a request is what any Python
gateway on this machine pays for the second pair of sockets and wake-ups before doing any work.

With ``--assemble``, the floor of the work agproxy does by default for a request that wants its answer
whole (``force_stream_internally``), and nothing else: the body decoded, sent with ``stream`` true, the
upstream's chunked event stream read to its end, each event's data decoded, the text, stop reason and
usage put together as one Message, encoded and written back. No validation, no grammar checks, no
sanitizing, no accounts, limits or records: what is left of a goal once this floor is paid is what
those may cost.

Usage: python bench/floor_forwarder.py UPSTREAM_PORT [--assemble] (prints its port on the first line).
Dev only."""

import asyncio
import json
import sys
from typing import Any, Dict, List, Optional

UPSTREAM_PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 0
ASSEMBLE = "--assemble" in sys.argv[2:]


def _whole(buffer: bytes) -> int:
    """The length of the whole message at the start of ``buffer`` (head and a Content-Length or chunked
    body), or 0."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return 0
    head = buffer[:end].lower()
    if b"transfer-encoding: chunked" in head:
        last = buffer.find(b"\r\n0\r\n\r\n", end)
        return last + 7 if last >= 0 else 0
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
        request = request.replace(b"Connection: close", b"Connection: keep-alive")
        answer = await upstream.exchange(streamed(request) if ASSEMBLE else request)
        IDLE.append(upstream)
        self.transport.write(assembled(answer) if ASSEMBLE else answer)  # type: ignore[attr-defined]
        self.transport.close()


def streamed(request: bytes) -> bytes:
    """The request with its body decoded (to know it is JSON, and its model) and ``stream`` made true: its
    bytes with their end rewritten where ``"stream":false`` ends them (the bench's bodies), else encoded again."""
    end = request.find(b"\r\n\r\n") + 4
    body = json.loads(request[end:])
    if request.endswith(b'"stream":false}'):
        data = request[end:-len(b'false}')] + b"true}"
    else:
        body["stream"] = True
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    head = [line for line in request[:end - 4].split(b"\r\n") if not line.lower().startswith(b"content-length:")]
    return b"\r\n".join(head) + b"\r\nContent-Length: %d\r\n\r\n" % len(data) + data


def assembled(answer: bytes) -> bytes:
    """The answer's chunked event stream as one Message (text blocks, stop reason, usage), with its head."""
    body, at = bytearray(), answer.find(b"\r\n\r\n") + 4
    while True:  # the chunks' data, one after the other
        line_end = answer.find(b"\r\n", at)
        size = int(answer[at:line_end], 16)
        if not size:
            break
        body += answer[line_end + 2:line_end + 2 + size]
        at = line_end + 4 + size
    message: Dict[str, Any] = {}
    texts: Dict[int, List[str]] = {}
    for line in bytes(body).split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        event = json.loads(line[5:])
        kind = event["type"]
        if kind == "message_start":
            message = event["message"]
        elif kind == "content_block_delta":
            texts.setdefault(event["index"], []).append(event["delta"].get("text", ""))
        elif kind == "message_delta":
            message.update(event["delta"])
            message["usage"].update(event["usage"])
    message["content"] = [{"type": "text", "text": "".join(texts[i])} for i in sorted(texts)]
    data = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(data), data)


async def main() -> None:
    server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", 0)
    name = "assembler" if ASSEMBLE else "forwarder"
    print(f"floor {name} listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
