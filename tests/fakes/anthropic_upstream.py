"""A scriptable fake Anthropic Messages upstream on a real socket.

It runs an asyncio server on 127.0.0.1:0 in a background thread. Tests queue replies with
``script()``; with nothing queued it answers a canned Message (or event stream when the request
asks for one). Every request is recorded with its headers and body, every accepted TCP
connection is counted, so are the most replies being sent at once (``most_in_flight``), and a
stream the client abandons records when that happened.

Replies:
- ``Json(status, body, headers)``: a JSON answer.
- ``Sse(events, delay_s, drop_after, split)``: an event stream; ``delay_s`` pauses before each
  event, ``drop_after`` closes the connection after that many events, ``split`` sends each event
  in two writes cut mid-line, ``end_after_s`` pauses before the body's terminating chunk (sent in
  a write of its own, as a real upstream's may come in a packet of its own).
- ``Drop()``: close the connection without answering.
- ``Hang(seconds)``: say nothing for that long, then close.
- ``Raw(data)``: write these bytes verbatim.

``missing_paths`` answers 404 on those paths whatever is queued (a service without count_tokens).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tests.fakes.server_thread import SeenRequest, ServerThread, read_request
from tests.fakes.strict_rules import violation


@dataclasses.dataclass
class Json:
    status: int = 200
    body: Any = None
    headers: Sequence[Tuple[str, str]] = ()


@dataclasses.dataclass
class Sse:
    events: Sequence[Tuple[str, Dict[str, Any]]] = ()
    delay_s: float = 0.0
    drop_after: Optional[int] = None
    split: bool = False
    headers: Sequence[Tuple[str, str]] = ()
    end_after_s: float = 0.0


@dataclasses.dataclass
class Drop:
    pass


@dataclasses.dataclass
class Hang:
    seconds: float = 30.0


@dataclasses.dataclass
class Raw:
    data: bytes = b""


@dataclasses.dataclass
class Recorded(SeenRequest):
    method: str
    target: str
    headers: List[Tuple[str, str]]
    body: bytes
    connection: int
    at: float = 0.0  # time.monotonic() when it arrived


def message(text: str = "Hello from the fake upstream.", model: str = "claude-fake", **extra: Any) -> Dict[str, Any]:
    body = {
        "id": "msg_fake_1", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 7},
    }
    body.update(extra)
    return body


def text_stream(text: str = "Hello from the fake upstream.", model: str = "claude-fake") -> List[Tuple[str, Dict]]:
    """The Anthropic event grammar for a one-text-block answer, one word per delta."""
    words = text.split(" ")
    events = [("message_start", {"type": "message_start", "message": dict(message("", model), content=[],
                                                                          stop_reason=None)}),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
              ("ping", {"type": "ping"})]
    for i, word in enumerate(words):
        piece = word if i == 0 else " " + word
        events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": piece}}))
    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                  "usage": {"output_tokens": len(words)}}),
               ("message_stop", {"type": "message_stop"})]
    return events


def tool_and_thinking_stream(model: str = "claude-fake",
                             signature: str = "c2lnbmF0dXJlLWZha2U=") -> List[Tuple[str, Dict]]:
    """A thinking block, a text block and a tool_use block whose input arrives in JSON pieces."""
    start = dict(message("", model), content=[], stop_reason=None)
    return [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "The user wants the files. "}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "I will run ls."}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "signature_delta", "signature": signature}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "text_delta", "text": "Listing files."}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("content_block_start", {"type": "content_block_start", "index": 2,
                                 "content_block": {"type": "tool_use", "id": "toolu_fake_1", "name": "Bash",
                                                   "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": "{\"comm"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": "and\": \"ls -la\"}"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 2}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                           "usage": {"output_tokens": 31}}),
        ("message_stop", {"type": "message_stop"}),
    ]


def tool_call_stream(tool_id: str, name: str, arguments: Dict[str, Any]) -> List[Tuple[str, Dict]]:
    """The model asks for one tool, its input arriving in JSON pieces of 9 characters."""
    text = json.dumps(arguments)
    events = [text_stream()[0], ("content_block_start", {"type": "content_block_start", "index": 0,
                                                         "content_block": {"type": "tool_use", "id": tool_id,
                                                                           "name": name, "input": {}}})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
        "type": "input_json_delta", "partial_json": text[i:i + 9]}}) for i in range(0, len(text), 9)]
    return events + [("content_block_stop", {"type": "content_block_stop", "index": 0}),
                     ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                                        "usage": {"output_tokens": 20}}),
                     ("message_stop", {"type": "message_stop"})]


def encode_event(event: str, data: Dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class FakeAnthropic:
    """The fake upstream; use as a context manager or call start()/stop()."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None, *, strict: bool = False,
                 reject_fields: Sequence[str] = (), reject_betas: Sequence[str] = (),
                 signature_prefix: Optional[str] = None, basic_thinking_only: bool = False,
                 missing_paths: Sequence[str] = ()) -> None:
        self.tls = tls
        #: paths this server does not have (404), as compatible services that lack count_tokens
        self.missing_paths = set(missing_paths)
        #: refuse adaptive thinking as a service that knows only enabled/disabled does (seen in the wild)
        self.basic_thinking_only = basic_thinking_only
        #: strict: refuse what a strict compatible server refuses (tests/fakes/strict_rules.py)
        self.strict = strict
        #: top-level fields and beta values refused with Anthropic's wording, even when not strict
        self.reject_fields = set(reject_fields)
        self.reject_betas = set(reject_betas)
        #: thinking signatures this upstream makes start with this; others are refused when strict
        self.signature_prefix = signature_prefix
        self.rejections: List[str] = []
        self.requests: List[Recorded] = []
        self.connections = 0
        #: replies being sent now, and the most that were at once (what agproxy ran concurrently)
        self.in_flight = 0
        self.most_in_flight = 0
        self.abandoned_at: List[float] = []
        self._queue: List[Any] = []
        self._by_key: Dict[str, List[Any]] = {}
        self._lock = threading.Lock()
        self._server = ServerThread()
        self.port = 0

    # -- control from the test thread ---------------------------------------------------

    def start(self) -> FakeAnthropic:
        self.port = self._server.start(self._handle, self.tls)
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}" if self.tls else f"http://127.0.0.1:{self.port}"

    def script(self, *replies: Any) -> None:
        with self._lock:
            self._queue.extend(replies)

    def script_for(self, api_key: str, *replies: Any) -> None:
        """Replies for requests carrying this x-api-key, before the shared queue."""
        with self._lock:
            self._by_key.setdefault(api_key, []).extend(replies)

    def keys(self) -> List[str]:
        """The x-api-key of every request so far, in order: the attempt sequence."""
        return [r.header("x-api-key") or "" for r in self.requests if r.target.startswith("/v1/messages")]

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._by_key.clear()
            self.requests.clear()
            self.abandoned_at.clear()
            self.connections = 0
            self.most_in_flight = 0

    # -- the server ---------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                recorded = Recorded(*request, number, time.monotonic())
                self.requests.append(recorded)
                if recorded.target.split("?")[0] in self.missing_paths:
                    if not await self._send(Json(404, {"detail": "Not Found"}), reader, writer):
                        return
                    continue
                refusal = self._refusal(recorded)
                key = recorded.header("x-api-key") or ""
                with self._lock:
                    queue = self._by_key.get(key) or self._queue
                    reply = None if refusal else (queue.pop(0) if queue else None)
                if refusal:
                    self.rejections.append(refusal)
                    reply = Json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                                  "message": refusal}})
                if reply is None:
                    reply = self._default_reply(recorded)
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                try:
                    sent = await self._send(reply, reader, writer)
                finally:
                    self.in_flight -= 1
                if not sent:
                    return
        finally:
            writer.close()

    def _refusal(self, request: Recorded) -> Optional[str]:
        if request.method != "POST":
            return None
        body = request.json
        if not isinstance(body, dict):
            return "request body is not a JSON object"
        thinking = body.get("thinking")
        if self.basic_thinking_only and isinstance(thinking, dict) and thinking.get("type") not in ("enabled",
                                                                                                   "disabled"):
            return (f"thinking.type: Input tag '{thinking.get('type')}' found using 'type' does not match any of the "
                    "expected tags: 'disabled', 'enabled'")
        for field in sorted(self.reject_fields):
            if field in body:
                return f"{field}: Extra inputs are not permitted"
        betas = [b.strip() for b in (request.header("anthropic-beta") or "").split(",") if b.strip()]
        refused = [b for b in betas if b in self.reject_betas]
        if refused:
            return (f"Unexpected value(s) {', '.join(f'`{b}`' for b in refused)} for the `anthropic-beta` header. "
                    "Please consult our documentation at docs.anthropic.com or try again without the header.")
        if self.strict:
            return violation(request.headers, body, signature_prefix=self.signature_prefix)
        if self.signature_prefix is not None:
            for message in body.get("messages", []):
                for block in message.get("content") if isinstance(message.get("content"), list) else []:
                    if block.get("type") == "thinking" and \
                            not str(block.get("signature", "")).startswith(self.signature_prefix):
                        return "messages.1.content.0: Invalid `signature` in `thinking` block"
        return None

    def _default_reply(self, request: Recorded) -> Any:
        if request.target.startswith("/v1/messages/count_tokens"):
            return Json(200, {"input_tokens": 4242})
        if request.target.startswith("/v1/models"):
            return Json(200, {"data": [{"type": "model", "id": "claude-fake", "display_name": "Fake",
                                        "created_at": "2025-01-01T00:00:00Z"}], "has_more": False,
                              "first_id": "claude-fake", "last_id": "claude-fake"})
        try:
            wants_stream = bool(request.json.get("stream"))
            model = request.json.get("model", "claude-fake")
        except ValueError:
            return Json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "bad json"}})
        return Sse(text_stream(model=model)) if wants_stream else Json(200, message(model=model))

    async def _send(self, reply: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Write one reply; False when the connection must end."""
        if isinstance(reply, Drop):
            return False
        if isinstance(reply, Hang):
            await asyncio.sleep(reply.seconds)
            return False
        if isinstance(reply, Raw):
            writer.write(reply.data)
            await writer.drain()
            return False
        if isinstance(reply, Json):
            body = json.dumps(reply.body if reply.body is not None else message()).encode()
            head = [f"HTTP/1.1 {reply.status} X", "Content-Type: application/json",
                    f"Content-Length: {len(body)}", "request-id: req_upstream_fake"]
            head += [f"{k}: {v}" for k, v in reply.headers]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            await writer.drain()
            return True
        head = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream", "Transfer-Encoding: chunked",
                "Cache-Control: no-cache", "request-id: req_upstream_fake"]
        head += [f"{k}: {v}" for k, v in reply.headers]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            for i, (event, data) in enumerate(reply.events):
                if reply.drop_after is not None and i >= reply.drop_after:
                    return False
                if not await self._pause(reader, reply.delay_s):
                    return False
                encoded = encode_event(event, data)
                pieces = [encoded[:7], encoded[7:]] if reply.split else [encoded]
                for piece in pieces:
                    writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                    await writer.drain()
                    if reply.split:
                        await asyncio.sleep(0.01)
                if writer.transport.is_closing():
                    raise ConnectionResetError
            if reply.end_after_s:
                await asyncio.sleep(reply.end_after_s)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    async def _pause(self, reader: asyncio.StreamReader, seconds: float) -> bool:
        """Wait, watching for agproxy closing its side (recorded in ``abandoned_at``); False if it did: a
        FIN, or a reset (the connection lost with an error), as its abort with bytes unread in it sends."""
        deadline = time.monotonic() + seconds
        while True:
            if reader.at_eof() or reader.exception() is not None:
                self.abandoned_at.append(time.monotonic())
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, 0.02))
