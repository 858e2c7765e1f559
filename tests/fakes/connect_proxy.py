"""A fake forward proxy on a real socket: CONNECT tunnels (for https upstreams) and
absolute-form requests (for http upstreams). It records what it was asked for."""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import List, Optional, Tuple

from tests.fakes.server_thread import ServerThread


class FakeProxy:
    def __init__(self) -> None:
        self.seen: List[Tuple[str, str, Optional[str]]] = []  # method, target, Proxy-Authorization
        self._server = ServerThread()
        self.port = 0

    def __enter__(self) -> FakeProxy:
        self.port = self._server.start(self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        auth = next((line.split(":", 1)[1].strip() for line in lines[1:]
                     if line.lower().startswith("proxy-authorization:")), None)
        self.seen.append((method, target, auth))
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            parts = urllib.parse.urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            origin_form = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            kept = [line for line in lines[1:] if line and not line.lower().startswith("proxy-")]
            up_writer.write(("\r\n".join([f"{method} {origin_form} {version}", *kept]) + "\r\n\r\n").encode("latin-1"))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
