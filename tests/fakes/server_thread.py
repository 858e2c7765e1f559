"""An asyncio server on 127.0.0.1:0 running in its own thread, for the fakes to build on."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from typing import Any, Awaitable, Callable, List, Optional, Tuple

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ServerThread:
    """Start with ``start(handler)``; ``stop()`` closes the server and cancels its connections."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: Optional[asyncio.AbstractServer] = None
        self.port = 0

    def start(self, handler: Handler, tls: Optional[ssl.SSLContext] = None) -> int:
        async def quietly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            except asyncio.CancelledError:
                writer.close()  # stop() ends connections this way; nothing to report

        async def listen() -> int:
            # a deep backlog: a fault matrix opens hundreds of connections at once, and a full queue
            # would drop SYNs (retried a second or more later: a connect timeout that is the test's own)
            self._server = await asyncio.start_server(quietly, "127.0.0.1", 0, ssl=tls, backlog=1024)
            return self._server.sockets[0].getsockname()[1]

        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(5)
        return self.port

    def stop(self) -> None:
        async def close() -> None:
            if self._server:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():  # closed here, not by the garbage collector after its self-pipe
            self.loop.close()

    def run(self, coroutine: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(5)


async def read_request(reader: asyncio.StreamReader) -> Optional[tuple]:
    """One HTTP/1.1 request with a Content-Length body: (method, target, headers, body), or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
    body = await reader.readexactly(length) if length else b""
    return method, target, headers, body


def json_reply(status: int, payload: Any, headers: Any = ()) -> bytes:
    body = json.dumps(payload).encode()
    head = [f"HTTP/1.1 {status} X", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body



class SeenRequest:
    """What a fake saw of one request, for the tests to look at: the one ``header()`` and ``json``
    every fake's record shares (a subclass is a dataclass with ``headers`` and ``body``)."""

    headers: List[Tuple[str, str]]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def json(self) -> Any:
        """The body as JSON, None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None
