"""A scriptable, strict fake OpenAI Chat Completions server on a real socket.

It refuses what a strict server refuses (unknown fields, bad roles, tool calls left unanswered,
tool messages answering nothing, empty user content) with OpenAI's error shape, records every
request, and answers from a script: ``Chat`` (a JSON completion or error), ``Chunks`` (a stream
of chunk dicts, optionally slow, without ``[DONE]``, or dropped), or the default text answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tests.fakes.server_thread import ServerThread, json_reply, read_request

ALLOWED = {"model", "messages", "tools", "tool_choice", "parallel_tool_calls", "max_tokens", "max_completion_tokens",
           "temperature", "top_p", "stop", "stream", "stream_options", "user", "reasoning_effort", "n", "seed",
           "response_format", "presence_penalty", "frequency_penalty"}


@dataclasses.dataclass
class Chat:
    status: int = 200
    body: Any = None
    headers: Sequence[Tuple[str, str]] = ()


@dataclasses.dataclass
class Chunks:
    chunks: Sequence[Any] = ()  # dicts, or raw strings sent as data lines
    delay_s: float = 0.0
    done: bool = True
    drop_after: Optional[int] = None
    in_one_write: bool = False  # the whole stream in one socket write: agproxy reads it in one read or few


def completion(text: str = "Hello from the fake OpenAI server.", **message: Any) -> Dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "model": "local",
            "choices": [{"index": 0, "message": dict({"role": "assistant", "content": text}, **message),
                         "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
            "usage": {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30}}


def chunk(delta: Dict[str, Any], finish: Optional[str] = None, **extra: Any) -> Dict[str, Any]:
    return dict({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "local",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}, **extra)


def text_chunks(text: str = "Hello from the fake OpenAI server.") -> List[Dict[str, Any]]:
    words = text.split(" ")
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
    out.append(chunk({}, "stop"))
    out.append({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [],
                "usage": {"prompt_tokens": 21, "completion_tokens": len(words), "total_tokens": 21 + len(words)}})
    return out


def tool_chunks(calls: Sequence[Tuple[str, str, str]], reasoning: str = "", text: str = "") -> List[Dict[str, Any]]:
    """A stream with reasoning, text and several tool calls whose arguments arrive in pieces."""
    out = [chunk({"role": "assistant"})]
    if reasoning:
        out += [chunk({"reasoning_content": reasoning[:5]}), chunk({"reasoning_content": reasoning[5:]})]
    if text:
        out.append(chunk({"content": text}))
    for index, (call_id, name, arguments) in enumerate(calls):
        out.append(chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                          "function": {"name": name, "arguments": ""}}]}))
        for i in range(0, len(arguments), 4):
            out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[i:i + 4]}}]}))
    out.append(chunk({}, "tool_calls"))
    return out


def violation(body: Dict[str, Any], extra_allowed: Sequence[str] = ()) -> Optional[str]:
    for key in body:
        if key not in ALLOWED and key not in extra_allowed:
            return f"Unrecognized request argument supplied: {key}"
    expected: List[str] = []
    for i, message in enumerate(body.get("messages") or []):
        role = message.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            return f"messages[{i}].role: invalid value {role!r}"
        for key in message:
            if key not in {"role", "content", "tool_calls", "tool_call_id", "name", "reasoning_content"}:
                return f"messages[{i}]: Unrecognized field {key}"
        if role == "tool":
            if message.get("tool_call_id") not in expected:
                return (f"messages[{i}]: Messages with role 'tool' must be a response to a preceding message with "
                        "'tool_calls'.")
            expected.remove(message["tool_call_id"])
            if not isinstance(message.get("content"), str):
                return f"messages[{i}].content: tool content must be a string"
            continue
        if expected:
            return (f"messages[{i}]: An assistant message with 'tool_calls' must be followed by tool messages "
                    f"responding to each 'tool_call_id'. Missing: {', '.join(expected)}")
        content = message.get("content")
        if role == "assistant":
            calls = message.get("tool_calls") or []
            for call in calls:
                if call.get("type") != "function" or not isinstance(call.get("function", {}).get("arguments"), str):
                    return f"messages[{i}].tool_calls: malformed tool call"
            expected = [c["id"] for c in calls]
            if content is None and not calls:
                return f"messages[{i}]: assistant content is required"
        else:
            if content in ("", [], None):
                return f"messages[{i}]: content must not be empty"
            if isinstance(content, list):
                for part in content:
                    if part.get("type") not in ("text", "image_url"):
                        return f"messages[{i}].content: unsupported part type {part.get('type')!r}"
    if expected:
        return f"tool calls were not answered: {', '.join(expected)}"
    for tool in body.get("tools") or []:
        if tool.get("type") != "function" or "name" not in tool.get("function", {}):
            return "tools: each tool must be {type: function, function: {name, parameters}}"
    return None


def prompt_tokens(body: Dict[str, Any]) -> int:
    """The fake's count of a request's prompt: a token per four characters of its messages and tools."""
    return len(json.dumps([body.get("messages"), body.get("tools")])) // 4


class FakeOpenAI:
    """``max_model_len`` makes it check the window as vLLM does: a prompt and a completion budget
    (``max_tokens``) that do not fit together are refused with vLLM's words, naming both.
    ``tokenizer=False`` is a server without ``/tokenize`` (it answers 404 there)."""

    def __init__(self, extra_allowed: Sequence[str] = (), prefix: str = "/v1",
                 max_model_len: Optional[int] = None, tokenizer: bool = True) -> None:
        self.tokenizer = tokenizer
        self.extra_allowed = list(extra_allowed)
        self.prefix = prefix
        self.max_model_len = max_model_len
        self.requests: List[Dict[str, Any]] = []
        self.rejections: List[str] = []
        self.abandoned_at: List[float] = []
        self._queue: List[Any] = []
        self._lock = threading.Lock()
        self._server = ServerThread()
        self.port = 0

    def __enter__(self) -> FakeOpenAI:
        self.port = self._server.start(self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def script(self, *replies: Any) -> None:
        with self._lock:
            self._queue.extend(replies)

    @property
    def chats(self) -> List[Dict[str, Any]]:
        return [r["json"] for r in self.requests if r["target"].endswith("/chat/completions")]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                method, target, headers, body = request
                parsed = json.loads(body) if body else None
                self.requests.append({"method": method, "target": target, "headers": headers, "json": parsed,
                                      "at": time.monotonic()})
                if not await self._answer(target, parsed, reader, writer):
                    return
        finally:
            writer.close()

    async def _answer(self, target: str, body: Any, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        if target == "/tokenize" and self.tokenizer:
            count = len(json.dumps(body.get("messages") or body.get("content") or "")) // 4
            writer.write(json_reply(200, {"count": count, "tokens": list(range(count))}))
            return True
        if not target.startswith(self.prefix + "/"):  # a real server has nothing outside its API's path
            writer.write(json_reply(404, {"detail": "Not Found"}))
            return True
        if target.endswith("/models"):
            writer.write(json_reply(200, {"object": "list", "data": [{"id": "qwen-local", "object": "model"},
                                                                      {"id": "llama-local", "object": "model"}]}))
            return True
        if not target.endswith("/chat/completions"):
            writer.write(json_reply(404, {"error": {"message": f"no route {target}", "type": "invalid_request_error"}}))
            return True
        refusal = violation(body, self.extra_allowed)
        if refusal:
            self.rejections.append(refusal)
            writer.write(json_reply(400, {"error": {"message": refusal, "type": "invalid_request_error",
                                                    "param": None, "code": None}}))
            return True
        if self.max_model_len:
            prompt = prompt_tokens(body)
            budget = body.get("max_completion_tokens") or body.get("max_tokens") or 0
            if prompt + budget > self.max_model_len:
                message = (f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                           f"requested {prompt + budget} tokens ({prompt} in the messages, {budget} in the "
                           "completion). Please reduce the length of the messages or completion.")
                self.rejections.append(message)
                writer.write(json_reply(400, {"object": "error", "message": message, "type": "BadRequestError",
                                              "param": None, "code": 400}))
                return True
        with self._lock:
            reply = self._queue.pop(0) if self._queue else None
        if reply is None:
            reply = Chunks(text_chunks()) if body.get("stream") else Chat(200, completion())
        if isinstance(reply, Chat):
            writer.write(json_reply(reply.status, reply.body if reply.body is not None else completion(),
                                    reply.headers))
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        held: List[bytes] = []
        for i, item in enumerate(reply.chunks):
            if reply.drop_after is not None and i >= reply.drop_after:
                return False
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
                if reader.at_eof() or reader.exception() is not None:  # a FIN, or the reset of an abort
                    self.abandoned_at.append(time.monotonic())
                    return False
            data = item if isinstance(item, str) else json.dumps(item)
            piece = f"data: {data}\n\n".encode()
            held.append(b"%x\r\n%b\r\n" % (len(piece), piece))
            if not reply.in_one_write:
                writer.write(b"".join(held))
                held.clear()
                await writer.drain()
        if reply.done:
            piece = b"data: [DONE]\n\n"
            held.append(b"%x\r\n%b\r\n" % (len(piece), piece))
        writer.write(b"".join(held) + b"0\r\n\r\n")
        await writer.drain()
        return True
