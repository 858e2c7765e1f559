"""A scriptable misbehaving upstream on a real socket, for the fault matrix and the fuzzers.

An asyncio server on 127.0.0.1:0 in its own thread (``server_thread.ServerThread``). Every request
names its case in the path: an upstream's ``base_url`` is ``url_for(case, kind, mode)``, i.e.
``http://127.0.0.1:PORT/c/<case>/<kind>/<mode>`` (plus ``/v1`` for ``kind`` ``openai``), so one
fake serves any number of cases at once, each isolated in its own agproxy upstream and accounts.

A case is a *recipe*: a function of the request (:class:`Ctx`: kind, mode, what was asked, the
api key, the attempt number) returning *actions* of raw behaviour, performed in order:

- ``Send(bytes)``: write these bytes verbatim (status line, headers, framing, body: anything);
- ``Sleep(s)``: pause (cut short when agproxy hangs up; that moment is recorded);
- ``Trickle(bytes, every_s, for_s)``: write the bytes again and again, ``every_s`` apart;
- ``Reset()``: abort the connection with a TCP RST (SO_LINGER 0);
- ``KeepAlive()``: after this reply read the next request on the same connection (otherwise the
  connection is closed once the actions are done).

``RECIPES`` is the catalogue of misbehaviours: status lines, framings, headers, bodies, Anthropic
and OpenAI event streams with malformed events, resets, closes and hangs. ``good_*`` helpers build
proper answers for either kind, so a recipe can break exactly one thing.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import socket
import struct
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from tests.fakes.server_thread import SeenRequest, ServerThread

ALICE_KEY = "sk-upstream-SECRET-alice-0123456789"
BOB_KEY = "sk-upstream-SECRET-bob-9876543210"
KEYS = (ALICE_KEY, BOB_KEY)


# -- actions --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Send:
    data: bytes


@dataclasses.dataclass
class Sleep:
    seconds: float


@dataclasses.dataclass
class Trickle:
    data: bytes
    every_s: float = 0.2
    for_s: float = 25.0


@dataclasses.dataclass
class Reset:
    pass


@dataclasses.dataclass
class KeepAlive:
    pass


Action = Union[Send, Sleep, Trickle, Reset, KeepAlive]


@dataclasses.dataclass
class Ctx(SeenRequest):
    """What the fake knows about one request."""

    case: str
    kind: str  # "anthropic", "openai" or "gemini"
    mode: str  # whatever the test put in the URL (stream, forced, json, count, ...)
    method: str
    path: str  # the API path after the case prefix: /v1/messages, /chat/completions, /tokenize ...
    headers: List[Tuple[str, str]]
    body: bytes
    attempt: int  # 1 for the first request of this (case, kind, mode), 2 for the next ...

    @property
    def stream(self) -> bool:
        value = self.json
        return isinstance(value, dict) and value.get("stream") is True or ":streamGenerateContent" in self.path

    @property
    def count(self) -> bool:
        return self.path.endswith(("/count_tokens", "/tokenize", ":countTokens"))

    @property
    def model(self) -> str:
        in_path = re.search(r"/models/([^/:]+):", self.path)  # Gemini names the model in the path
        if in_path:
            return urllib.parse.unquote(in_path.group(1))
        value = self.json
        return str(value.get("model")) if isinstance(value, dict) and value.get("model") else "fake-model"

    @property
    def key(self) -> str:
        """The upstream api key agproxy sent (x-api-key, x-goog-api-key or Authorization: Bearer)."""
        bearer = (self.header("authorization") or "").partition(" ")[2]
        return self.header("x-api-key") or self.header("x-goog-api-key") or bearer.strip()


Recipe = Callable[[Ctx], List[Action]]


@dataclasses.dataclass
class Seen:
    case: str
    kind: str
    mode: str
    path: str
    key: str
    at: float


# -- building answers -----------------------------------------------------------------------------

HeaderList = Sequence[Tuple[Union[str, bytes], Union[str, bytes]]]


def _b(value: Union[str, bytes]) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def head(status_line: Union[str, bytes], headers: HeaderList = (), eol: bytes = b"\r\n") -> bytes:
    """A status line and header block, verbatim (``status_line`` without ``HTTP/1.1`` gets it added)."""
    line = _b(status_line)
    if not line.startswith(b"HTTP/"):
        line = b"HTTP/1.1 " + line
    out = line + eol
    for name, value in headers:
        out += _b(name) + b": " + _b(value) + eol
    return out + eol


def chunked(body: bytes, size: int = 4096) -> bytes:
    """``body`` in chunked framing, including the last chunk."""
    out = b"".join(b"%x\r\n%b\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


def response(status_line: Union[str, bytes], content_type: Optional[str], body: bytes, headers: HeaderList = (),
             framing: str = "length") -> bytes:
    """A whole response: ``framing`` is ``length`` (Content-Length), ``chunked`` or ``close`` (neither)."""
    fields: List[Tuple[Union[str, bytes], Union[str, bytes]]] = []
    if content_type:
        fields.append(("Content-Type", content_type))
    if framing == "length":
        fields.append(("Content-Length", str(len(body))))
    elif framing == "chunked":
        fields.append(("Transfer-Encoding", "chunked"))
        body = chunked(body)
    fields += list(headers)
    return head(status_line, fields) + body


def sse(event: Optional[str], data: Union[str, Dict[str, Any], List[Any]]) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {text}\n\n".encode()


def message(model: str, text: str = "Hello from the misbehaving fake.") -> Dict[str, Any]:
    return {"id": "msg_misbehaving_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 6}}


def anthropic_events(model: str, text: str = "Hello from the misbehaving fake.") -> List[bytes]:
    """The Anthropic event grammar of a one-text-block answer, one event per item."""
    start = dict(message(model, ""), content=[], stop_reason=None)
    out = [sse("message_start", {"type": "message_start", "message": start}),
           sse("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
           sse("ping", {"type": "ping"})]
    for i, word in enumerate(text.split(" ")):
        out.append(sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": word if i == 0 else
                                                         " " + word}}))
    out += [sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                     "stop_sequence": None},
                                  "usage": {"output_tokens": 6}}),
            sse("message_stop", {"type": "message_stop"})]
    return out


def completion(model: str, text: str = "Hello from the misbehaving fake.", **message_fields: Any) -> Dict[str, Any]:
    return {"id": "chatcmpl-misbehaving", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": dict({"role": "assistant", "content": text}, **message_fields),
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}}


def oa_chunk(delta: Any, finish: Any = None, **extra: Any) -> Dict[str, Any]:
    return dict({"id": "chatcmpl-misbehaving", "object": "chat.completion.chunk", "model": "m",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}, **extra)


def openai_events(text: str = "Hello from the misbehaving fake.", done: bool = True) -> List[bytes]:
    out = [sse(None, oa_chunk({"role": "assistant", "content": ""}))]
    out += [sse(None, oa_chunk({"content": w if i == 0 else " " + w})) for i, w in enumerate(text.split(" "))]
    out.append(sse(None, oa_chunk({}, "stop")))
    out.append(sse(None, {"id": "chatcmpl-misbehaving", "object": "chat.completion.chunk", "choices": [],
                          "usage": {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}}))
    if done:
        out.append(b"data: [DONE]\n\n")
    return out


def gemini_answer(text: str = "Hello from the misbehaving fake.") -> Dict[str, Any]:
    """A whole generateContent answer."""
    return {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP",
                            "index": 0}],
            "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 6, "totalTokenCount": 17},
            "modelVersion": "fake", "responseId": "misbehaving1"}


def gemini_events(text: str = "Hello from the misbehaving fake.") -> List[bytes]:
    """Gemini's stream of the same answer: a chunk a word, growing usage, CRLF CRLF between events."""
    words = text.split(" ")
    out = []
    for i, word in enumerate(words):
        chunk = gemini_answer(word if i == 0 else " " + word)
        chunk["usageMetadata"]["candidatesTokenCount"] = i + 1
        if i < len(words) - 1:
            del chunk["candidates"][0]["finishReason"]
        out.append(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
    return out


def whole(ctx: Ctx, text: str = "Hello from the misbehaving fake.") -> Dict[str, Any]:
    """The proper whole answer of this kind."""
    return {"anthropic": lambda: message(ctx.model, text), "openai": lambda: completion(ctx.model, text),
            "gemini": lambda: gemini_answer(text)}[ctx.kind]()


def events_of(ctx: Ctx, text: str = "Hello from the misbehaving fake.") -> List[bytes]:
    """The proper event stream of this kind."""
    return {"anthropic": lambda: anthropic_events(ctx.model, text), "openai": lambda: openai_events(text),
            "gemini": lambda: gemini_events(text)}[ctx.kind]()


def good_events(ctx: Ctx) -> List[bytes]:
    return events_of(ctx)


def good_json(ctx: Ctx) -> bytes:
    """The proper JSON answer for this request (count_tokens and /tokenize included)."""
    if ctx.path.endswith("/count_tokens"):
        return json.dumps({"input_tokens": 42}).encode()
    if ctx.path.endswith("/tokenize"):
        return json.dumps({"count": 7, "tokens": [1, 2, 3, 4, 5, 6, 7]}).encode()
    if ctx.path.endswith(":countTokens"):
        return json.dumps({"totalTokens": 42}).encode()
    return json.dumps(whole(ctx)).encode()


def good_body(ctx: Ctx) -> Tuple[str, bytes]:
    """(content type, body) of the proper answer to what this request asked."""
    if ctx.stream and not ctx.count:
        return "text/event-stream", b"".join(good_events(ctx))
    return "application/json", good_json(ctx)


def error_json(ctx: Ctx, status: int, message_text: str = "something went wrong upstream") -> bytes:
    """A proper error body in the upstream's own vocabulary."""
    if ctx.kind == "openai":
        return json.dumps({"error": {"message": message_text, "type": "server_error" if status >= 500 else
                                     "invalid_request_error", "param": None, "code": None}}).encode()
    if ctx.kind == "gemini":
        state = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}.get(
            status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        return json.dumps({"error": {"code": status, "message": message_text, "status": state}}).encode()
    kind = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error", 529: "overloaded_error",
            503: "overloaded_error"}.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"type": "error", "error": {"type": kind, "message": message_text}}).encode()


def good(ctx: Ctx, headers: HeaderList = (), framing: Optional[str] = None) -> bytes:
    content_type, body = good_body(ctx)
    return response("200 OK", content_type, body, headers,
                    framing or ("chunked" if content_type == "text/event-stream" else "length"))


def sse_response(events: Sequence[bytes], headers: HeaderList = ()) -> bytes:
    return response("200 OK", "text/event-stream", b"".join(events), headers, "chunked")


# -- the catalogue ----------------------------------------------------------------------------------

RECIPES: Dict[str, Recipe] = {}
#: which answers a recipe shapes: "http" (any request, any kind), "sse" (Anthropic event streams),
#: "oa_sse" (OpenAI chunk streams), "oa_json" (OpenAI JSON completions)
GROUPS: Dict[str, str] = {}


def recipe(name: str, group: str = "http") -> Callable[[Recipe], Recipe]:
    def register(fn: Recipe) -> Recipe:
        RECIPES[name] = fn
        GROUPS[name] = group
        return fn
    return register


def _simple(name: str, group: str, make: Callable[[Ctx], List[Action]]) -> None:
    recipe(name, group)(make)


# status lines ------------------------------------------------------------------------------------

def _with_status(status_line: str) -> Recipe:
    def make(ctx: Ctx) -> List[Action]:
        content_type, body = good_body(ctx)
        return [Send(response(status_line, content_type, body))]
    return make


for _code, _line in [("000", "000 Zero"), ("099", "099 Below"), ("600", "600 Above"), ("999", "999 Way Above"),
                     ("204", "204 No Content"), ("2xx_nonnumeric", "2OO OK"), ("http2", "HTTP/2 200"),
                     ("http09", "HTTP/0.9 200 OK"), ("no_reason", "200")]:
    if _code == "http2":
        _simple("status_http2", "http", lambda ctx: [Send(response("HTTP/2 200", "application/json",
                                                                   good_json(ctx)))])
    elif _code == "http09":
        _simple("status_http09", "http", lambda ctx: [Send(response("HTTP/0.9 200 OK", "application/json",
                                                                    good_json(ctx)))])
    else:
        _simple(f"status_{_code}", "http", _with_status(_line))


@recipe("status_101")
def _status_101(ctx: Ctx) -> List[Action]:
    return [Send(head("101 Switching Protocols", [("Upgrade", "websocket"), ("Connection", "Upgrade")])),
            Send(good_json(ctx))]


@recipe("status_199_alone")
def _status_199(ctx: Ctx) -> List[Action]:
    return [Send(head("199 Odd Interim", [("Content-Type", "application/json")]) + good_json(ctx))]


@recipe("status_100_then_ok")
def _status_100_then_ok(ctx: Ctx) -> List[Action]:
    return [Send(b"HTTP/1.1 100 Continue\r\n\r\n"), Sleep(0.05), Send(good(ctx))]


@recipe("status_301_no_location")
def _status_301(ctx: Ctx) -> List[Action]:
    return [Send(response("301 Moved Permanently", None, b""))]


@recipe("status_302")
def _status_302(ctx: Ctx) -> List[Action]:
    return [Send(response("302 Found", "text/html", b"<a href='http://127.0.0.1:9/x'>moved</a>",
                          [("Location", "http://127.0.0.1:9/elsewhere")]))]


def _error_status(status: int, reason: str, content_type: str = "application/json",
                  body: Optional[Callable[[Ctx], bytes]] = None, headers: HeaderList = ()) -> Recipe:
    def make(ctx: Ctx) -> List[Action]:
        data = body(ctx) if body else error_json(ctx, status, f"upstream says {status}")
        return [Send(response(f"{status} {reason}", content_type, data, headers))]
    return make


for _status, _reason in [(400, "Bad Request"), (404, "Not Found"), (418, "I'm a teapot"),
                         (500, "Internal Server Error"), (503, "Service Unavailable"), (529, "Overloaded"),
                         (599, "Network Connect Timeout")]:
    _simple(f"status_{_status}", "http", _error_status(_status, _reason))

_simple("status_503_html", "http", _error_status(503, "Service Unavailable", "text/html",
                                                 lambda ctx: b"<html><body><h1>503 Service Unavailable</h1></body>"
                                                             b"</html>"))
_simple("status_400_not_json", "http", _error_status(400, "Bad Request", "text/plain",
                                                     lambda ctx: b"bad request, and not JSON \xff\xfe"))
_simple("status_401_echo_key", "http", lambda ctx: _error_status(
    401, "Unauthorized", body=lambda c: error_json(c, 401, f"invalid x-api-key: {c.key}"))(ctx))
_simple("status_403_echo_key_html", "http", lambda ctx: _error_status(
    403, "Forbidden", "text/html", body=lambda c: f"<html>key {c.key} is forbidden</html>".encode())(ctx))

_RETRY_AFTER = {"1e12": "1e12", "inf": "inf", "nan": "nan", "neg_inf": "-inf", "1e400": "1e400",
                "999999999": "999999999", "date_9999": "Fri, 31 Dec 9999 23:59:59 GMT", "negative": "-5",
                "garbage": "soon\u00e9"}
for _name, _value in _RETRY_AFTER.items():
    _simple(f"status_429_retry_after_{_name}", "http", _error_status(429, "Too Many Requests",
                                                                     headers=[("retry-after", _value)]))
_simple("status_429_reset_400_digits", "http", _error_status(429, "Too Many Requests", headers=[
    ("x-ratelimit-reset-requests", "9" * 400), ("x-ratelimit-remaining-requests", "0")]))
_simple("status_429_anthropic_reset_9999", "http", _error_status(429, "Too Many Requests", headers=[
    ("anthropic-ratelimit-requests-reset", "9999-12-31T23:59:59Z"),
    ("anthropic-ratelimit-requests-remaining", "0")]))
_simple("status_429_anthropic_reset_year_0", "http", _error_status(429, "Too Many Requests", headers=[
    ("anthropic-ratelimit-tokens-reset", "0000-01-01T00:00:00Z"), ("anthropic-ratelimit-tokens-remaining", "0")]))
_simple("status_429_retry_delay_body", "http", lambda ctx: [Send(response(
    "429 Too Many Requests", "application/json",
    b'{"error": {"code": 429, "message": "quota", "details": [{"retryDelay": "99999999999999999999s"}]}}'))])


@recipe("status_429_alice_then_ok")
def _alice_limited(ctx: Ctx) -> List[Action]:
    if ctx.key == ALICE_KEY:
        return _error_status(429, "Too Many Requests", headers=[("retry-after", "1e12")])(ctx)
    return [Send(good(ctx))]


# framing --------------------------------------------------------------------------------------------

def _framing(transform: Callable[[Ctx, str, bytes], bytes]) -> Recipe:
    def make(ctx: Ctx) -> List[Action]:
        content_type, body = good_body(ctx)
        return [Send(transform(ctx, content_type, body))]
    return make


_simple("cl_short", "http", _framing(lambda c, t, b: head("200 OK", [("Content-Type", t),
                                                                      ("Content-Length", str(len(b) - 10))]) + b))
_simple("cl_long", "http", _framing(lambda c, t, b: head("200 OK", [("Content-Type", t),
                                                                     ("Content-Length", str(len(b) + 100))]) + b))
for _name, _value in [("superscript", b"\xb2"), ("negative", b"-1"), ("abc", b"abc"), ("plus", b"+12"),
                      ("arabic_digits", "\u0661\u0662".encode()), ("huge", b"9" * 40), ("hex", b"0x10"),
                      ("spaces_inside", b"1 2"), ("empty", b"")]:
    _simple(f"cl_{_name}", "http", _framing(lambda c, t, b, v=_value: head("200 OK", [
        ("Content-Type", t), (b"Content-Length", v)]) + b))
_simple("cl_conflict", "http", _framing(lambda c, t, b: head("200 OK", [
    ("Content-Type", t), ("Content-Length", str(len(b))), ("Content-Length", str(len(b) + 7))]) + b))
_simple("cl_list", "http", _framing(lambda c, t, b: head("200 OK", [
    ("Content-Type", t), ("Content-Length", f"{len(b)}, {len(b)}")]) + b))


def _chunked_with(size_line: bytes) -> Recipe:
    return _framing(lambda c, t, b: head("200 OK", [("Content-Type", t), ("Transfer-Encoding", "chunked")])
                    + size_line + b"\r\n" + b + b"\r\n0\r\n\r\n")


for _name, _line in [("zz", b"zz"), ("negative", b"-5"), ("0x", b"0x10"), ("20_hex_digits", b"1" * 20),
                     ("empty", b""), ("space_inside", b"1 0"), ("superscript", b"\xb2")]:
    _simple(f"chunk_size_{_name}", "http", _chunked_with(_line))
_simple("chunk_size_too_big", "http", _framing(lambda c, t, b: head("200 OK", [
    ("Content-Type", t), ("Transfer-Encoding", "chunked")]) + b"%x\r\n" % (len(b) + 500) + b))
_simple("chunk_no_crlf_after_data", "http", _framing(lambda c, t, b: head("200 OK", [
    ("Content-Type", t), ("Transfer-Encoding", "chunked")]) + b"%x\r\n" % len(b) + b + b"XX0\r\n\r\n"))
_simple("chunked_truncated", "http", _framing(lambda c, t, b: head("200 OK", [
    ("Content-Type", t), ("Transfer-Encoding", "chunked")]) + b"%x\r\n" % (len(b) // 2) + b[:len(b) // 2] + b"\r\n"))
_simple("chunked_huge_trailers", "http", _framing(lambda c, t, b: head("200 OK", [
    ("Content-Type", t), ("Transfer-Encoding", "chunked")]) + b"%x\r\n%b\r\n0\r\n" % (len(b), b)
    + b"X-Trailer: " + b"t" * 200000 + b"\r\n\r\n"))
_simple("te_unknown_coding", "http", _framing(lambda c, t, b: head("200 OK", [
    ("Content-Type", t), ("Transfer-Encoding", "gzip, chunked")]) + chunked(b)))
_simple("te_chunked_not_last", "http", _framing(lambda c, t, b: head("200 OK", [
    ("Content-Type", t), ("Transfer-Encoding", "chunked, gzip")]) + b))
_simple("no_length_then_close", "http", _framing(lambda c, t, b: head("200 OK", [("Content-Type", t)]) + b))
_simple("cl_and_te", "http", _framing(lambda c, t, b: head("200 OK", [
    ("Content-Type", t), ("Content-Length", "3"), ("Transfer-Encoding", "chunked")]) + chunked(b)))
_simple("bare_lf_head", "http", _framing(lambda c, t, b: head("200 OK", [
    ("Content-Type", t), ("Content-Length", str(len(b)))], eol=b"\n") + b))


# headers ----------------------------------------------------------------------------------------------

def _headers(*fields: Tuple[Union[str, bytes], Union[str, bytes, Callable[[Ctx], bytes]]]) -> Recipe:
    def make(ctx: Ctx) -> List[Action]:
        values = [(k, v(ctx) if callable(v) else v) for k, v in fields]
        return [Send(good(ctx, values))]
    return make


_simple("header_bare_cr", "http", _headers(("request-id", b"req_1\rInjected: yes"),
                                           ("x-ratelimit-limit-requests", b"10\rSet-Cookie: evil=1"),
                                           ("retry-after", b"1\r")))
_simple("header_nul", "http", _headers(("request-id", b"req_\x00nul"), ("x-ratelimit-remaining-tokens", b"5\x00"),
                                       ("anthropic-ratelimit-requests-limit", b"\x00")))
_simple("header_control_chars", "http", _headers(("request-id", b"req_\x1b[31m\x07\x08\x7f"),
                                                 ("x-ratelimit-limit-tokens", b"\x0b\x0c")))
_simple("header_non_latin1", "http", _headers(("request-id", "req_\u20ac\u2713\U0001F600".encode()),
                                              ("x-ratelimit-limit-requests", b"\x80\xff\xfe"),
                                              ("anthropic-ratelimit-requests-remaining", "\u00e9".encode())))
_simple("header_100kb", "http", _headers(("x-ratelimit-junk", b"a" * 100_000)))
_simple("header_many", "http", _headers(*[(f"x-ratelimit-h{i}", b"1") for i in range(5000)]))
_simple("header_echo_key", "http", _headers(("request-id", lambda c: c.key.encode()),
                                            ("x-ratelimit-echo", lambda c: b"key=" + c.key.encode()),
                                            ("retry-after", lambda c: c.key.encode()),
                                            ("anthropic-ratelimit-requests-reset", lambda c: c.key.encode())))
_simple("header_obs_fold", "http", _headers(("x-ratelimit-limit-requests", b"10\r\n\tInjected: yes")))
_simple("header_no_colon", "http", _headers((b"this line has no colon at all", b"")))
_simple("header_bad_name", "http", _headers((b"x-ratelimit (bad name)", b"1"), (b"", b"empty name"),
                                            (b"x-ratelimit-\xff", b"1")))
_simple("header_hop_by_hop", "http", _headers(("Connection", "x-ratelimit-limit-requests, close"),
                                              ("x-ratelimit-limit-requests", "10"), ("Upgrade", "h2c"),
                                              ("Keep-Alive", "timeout=1"), ("Proxy-Authenticate", "Basic")))


# bodies --------------------------------------------------------------------------------------------------

_simple("body_html_200", "http", lambda ctx: [Send(response(
    "200 OK", "text/html; charset=utf-8",
    b"<!DOCTYPE html><html><head><title>Login</title></head><body>Please sign in</body></html>"))])
_simple("body_not_json", "http", lambda ctx: [Send(response("200 OK", "application/json",
                                                            b"this is not JSON {\xff"))])
_simple("body_json_not_message", "http", lambda ctx: [Send(response("200 OK", "application/json",
                                                                    b'{"foo": 1, "bar": [true, null]}'))])
_simple("body_json_array", "http", lambda ctx: [Send(response("200 OK", "application/json", b"[1, 2, 3]"))])
_simple("body_json_scalar", "http", lambda ctx: [Send(response("200 OK", "application/json", b'"just a string"'))])
_simple("body_json_nan", "http", lambda ctx: [Send(response(
    "200 OK", "application/json",
    json.dumps(whole(ctx)).replace("11", "NaN").encode()))])
_simple("body_message_content_string", "http", lambda ctx: [Send(response(
    "200 OK", "application/json",
    json.dumps({"anthropic": lambda: dict(message(ctx.model), content="not a list"),
                "openai": lambda: dict(completion(ctx.model), choices="not a list"),
                "gemini": lambda: dict(gemini_answer(), candidates="not a list")}[ctx.kind]()).encode()))])
_simple("body_json_when_sse_asked", "http", lambda ctx: [Send(response("200 OK", "application/json",
                                                                       good_json(ctx)))])
_simple("body_sse_when_json_asked", "http", lambda ctx: [Send(sse_response(good_events(ctx)))])
_simple("body_empty_200", "http", lambda ctx: [Send(response("200 OK", "application/json", b""))])
_simple("body_empty_sse", "http", lambda ctx: [Send(response("200 OK", "text/event-stream", b"", framing="chunked"))])
_simple("body_no_content_type", "http", lambda ctx: [Send(response("200 OK", None, good_body(ctx)[1]))])
_simple("body_utf16", "http", lambda ctx: [Send(response("200 OK", "application/json; charset=utf-16",
                                                         good_json(ctx).decode().encode("utf-16")))])
_simple("body_gzip_claimed", "http", lambda ctx: [Send(response("200 OK", "application/json", good_json(ctx),
                                                                [("Content-Encoding", "gzip")]))])


@recipe("body_huge")
def _body_huge(ctx: Ctx) -> List[Action]:
    """65 MB of JSON string: larger than any upstream answer agproxy should hold in memory."""
    size = 65 * 1024 * 1024 + 17
    return [Send(head("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(size + 2))])),
            Send(b'"' + b"a" * size + b'"')]


# well-formed but demanding -----------------------------------------------------------------------------

def _long_answer(ctx: Ctx, words: int) -> Tuple[str, bytes]:
    text = " ".join(f"w{i}" for i in range(words))
    if ctx.stream and not ctx.count:
        return "text/event-stream", b"".join(events_of(ctx, text))
    if ctx.count:
        return "application/json", good_json(ctx)
    return "application/json", json.dumps(whole(ctx, text)).encode()


@recipe("sse_one_byte_chunks")
def _one_byte_chunks(ctx: Ctx) -> List[Action]:
    """A proper answer in 1-byte chunks, written in 7-byte pieces, a millisecond's pause after
    every tenth (a pause after each took seconds per event on a loaded machine, past timeout_s)."""
    content_type, body = good_body(ctx)
    framed = head("200 OK", [("Content-Type", content_type), ("Transfer-Encoding", "chunked")]) + chunked(body, 1)
    actions: List[Action] = []
    for n, i in enumerate(range(0, len(framed), 7)):
        actions += [Send(framed[i:i + 7])] + ([Sleep(0.001)] if n % 10 == 9 else [])
    return actions


_simple("many_small_events", "http", lambda ctx: [Send(response("200 OK", *_long_answer(ctx, 20000)[:2],
                                                                framing="chunked"))])
def big_delta(ctx: Ctx, size: int) -> bytes:
    """A proper answer whose first text delta (or whole text) is ``size`` bytes long."""
    content_type, body = _long_answer(ctx, 3)
    return response("200 OK", content_type, body.replace(b"w0", b"w" * size, 1), framing="chunked")


_simple("one_4mb_delta", "http", lambda ctx: [Send(big_delta(ctx, 4 * 1024 * 1024))])
_simple("http10_close_delimited", "http", lambda ctx: [Send(head("HTTP/1.0 200 OK", [
    ("Content-Type", good_body(ctx)[0])]) + good_body(ctx)[1])])
_simple("early_hints_103", "http", lambda ctx: [Send(b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
                                                     + good(ctx))])
_simple("chunk_extensions_and_trailers", "http", lambda ctx: [Send(
    head("200 OK", [("Content-Type", good_body(ctx)[0]), ("Transfer-Encoding", "chunked"), ("Trailer", "X-Done")])
    + b"".join(b"%x;name=value;q=\"a b\"\r\n%b\r\n" % (len(p), p) for p in [good_body(ctx)[1]])
    + b"0\r\nX-Done: yes\r\nX-More: 1\r\n\r\n")])
_simple("content_type_uppercase", "http", lambda ctx: [Send(response(
    "200 OK", good_body(ctx)[0].upper() + "; Charset=UTF-8", good_body(ctx)[1]))])


# connection ---------------------------------------------------------------------------------------

_simple("reset_after_request", "http", lambda ctx: [Reset()])
_simple("close_before_any_byte", "http", lambda ctx: [])
_simple("hang", "http", lambda ctx: [Sleep(30)])
_simple("close_mid_status_line", "http", lambda ctx: [Send(b"HTTP/1.1 20")])
_simple("close_mid_headers", "http", lambda ctx: [Send(b"HTTP/1.1 200 OK\r\nContent-Type: application/js")])
_simple("headers_then_hang", "http", lambda ctx: [Send(head("200 OK", [("Content-Type", good_body(ctx)[0]),
                                                                       ("Transfer-Encoding", "chunked")])),
                                                  Sleep(30)])
_simple("reset_mid_body", "http", lambda ctx: [Send(good(ctx)[:-40]), Sleep(0.1), Reset()])
_simple("slow_head_trickle", "http", lambda ctx: [Send(b"HTTP/1.1 200 OK\r\nX-Slow: "),
                                                  Trickle(b"a", every_s=0.25, for_s=25)])
_simple("garbage_instead_of_http", "http", lambda ctx: [Send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 20)])
_simple("ok_then_trailing_garbage", "http", lambda ctx: [Send(good(ctx) + b"HTTP/1.1 200 OK\r\nX-Stale: 1\r\n\r\n")])
_simple("status_100_forever", "http", lambda ctx: [Trickle(b"HTTP/1.1 100 Continue\r\n\r\n", every_s=0.2,
                                                           for_s=25)])


# Anthropic event streams -------------------------------------------------------------------------------

def _anthropic_stream(build: Callable[[Ctx, List[bytes]], List[Action]]) -> Recipe:
    def make(ctx: Ctx) -> List[Action]:
        return build(ctx, anthropic_events(ctx.model))
    return make


def _replace(index: int, event: Optional[str], data: Any) -> Callable[[Ctx, List[bytes]], List[Action]]:
    def build(ctx: Ctx, events: List[bytes]) -> List[Action]:
        events = list(events)
        events[index] = sse(event, data) if not isinstance(data, bytes) else data
        return [Send(sse_response(events))]
    return build


def _insert(index: int, raw: bytes) -> Callable[[Ctx, List[bytes]], List[Action]]:
    def build(ctx: Ctx, events: List[bytes]) -> List[Action]:
        return [Send(sse_response(events[:index] + [raw] + events[index:]))]
    return build


_START = {"type": "message_start", "message": dict(message("m", ""), content=[], stop_reason=None)}
_simple("sse_cbs_no_index", "sse", _anthropic_stream(_replace(1, "content_block_start", {
    "type": "content_block_start", "content_block": {"type": "text", "text": ""}})))
_simple("sse_cbs_block_string", "sse", _anthropic_stream(_replace(1, "content_block_start", {
    "type": "content_block_start", "index": 0, "content_block": "text"})))
_simple("sse_tool_use_no_index", "sse", _anthropic_stream(_replace(1, "content_block_start", {
    "type": "content_block_start", "content_block": {"type": "tool_use", "id": "t", "name": "x", "input": {}}})))
_simple("sse_index_string", "sse", _anthropic_stream(_insert(5, sse("content_block_start", {
    "type": "content_block_start", "index": "1", "content_block": {"type": "text", "text": ""}}))))
_simple("sse_index_object", "sse", _anthropic_stream(_insert(4, sse("content_block_delta", {
    "type": "content_block_delta", "index": {"a": 1}, "delta": {"type": "text_delta", "text": "x"}}))))
_simple("sse_message_start_string", "sse", _anthropic_stream(_replace(0, "message_start", {
    "type": "message_start", "message": "not an object"})))
_simple("sse_message_start_list", "sse", _anthropic_stream(_replace(0, "message_start", {
    "type": "message_start", "message": [["content", 1]]})))
_simple("sse_usage_string", "sse", _anthropic_stream(_replace(-2, "message_delta", {
    "type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": "lots"})))
_simple("sse_message_delta_delta_list", "sse", _anthropic_stream(_replace(-2, "message_delta", {
    "type": "message_delta", "delta": ["end_turn"], "usage": {"output_tokens": 1}})))
_simple("sse_message_delta_first", "sse", _anthropic_stream(
    lambda ctx, events: [Send(sse_response([sse("message_delta", {"type": "message_delta", "delta": {},
                                                                  "usage": [1]})] + events))]))
_simple("sse_delta_not_object", "sse", _anthropic_stream(_replace(3, "content_block_delta", {
    "type": "content_block_delta", "index": 0, "delta": "text"})))
_simple("sse_data_signature_list", "sse", _anthropic_stream(_insert(4, sse("content_block_delta", ["signature"]))))
_simple("sse_signature_delta_object", "sse", _anthropic_stream(_insert(4, sse("content_block_delta", {
    "type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": {"x": 1}}}))))
_simple("sse_data_not_json", "sse", _anthropic_stream(_insert(3, b"event: content_block_delta\ndata: {not json\n\n")))
_simple("sse_data_json_scalar", "sse", _anthropic_stream(_insert(3, b"event: content_block_delta\ndata: 5\n\n")))
_simple("sse_error_mid_stream", "sse", _anthropic_stream(lambda ctx, events: [Send(sse_response(
    events[:4] + [sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]))]))
_simple("sse_error_first", "sse", _anthropic_stream(lambda ctx, events: [Send(sse_response(
    [sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]))]))
_simple("sse_error_garbage", "sse", _anthropic_stream(lambda ctx, events: [Send(sse_response(
    events[:3] + [b"event: error\ndata: <html>bad gateway</html>\n\n"]))]))
_simple("sse_error_echo_key", "sse", lambda ctx: [Send(sse_response(
    anthropic_events(ctx.model)[:3] + [sse("error", {"type": "error", "error": {
        "type": "api_error", "message": f"key {ctx.key} is over quota"}})]))])
_simple("sse_ends_before_final_event", "sse", _anthropic_stream(lambda ctx, events: [Send(sse_response(
    events[:-1]))]))
_simple("sse_text_mentions_message_stop", "sse", lambda ctx: [Send(sse_response(anthropic_events(
    ctx.model, "the word message_stop is only text")[:-1]))])
_simple("sse_only_message_start", "sse", _anthropic_stream(lambda ctx, events: [Send(sse_response(events[:1]))]))
_simple("sse_half_event_then_end", "sse", _anthropic_stream(lambda ctx, events: [Send(sse_response(
    events[:4] + [b"event: content_block_delta\ndata: {\"type\": \"content_"]))]))
_simple("sse_after_message_stop", "sse", _anthropic_stream(lambda ctx, events: [Send(sse_response(
    events + [sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                          "delta": {"type": "text_delta", "text": "late"}})]))]))
_simple("sse_cr_line_endings", "sse", _anthropic_stream(lambda ctx, events: [Send(sse_response(
    [e.replace(b"\n", b"\r") for e in events]))]))
_simple("sse_crlf_line_endings", "sse", _anthropic_stream(lambda ctx, events: [Send(sse_response(
    [e.replace(b"\n", b"\r\n") for e in events]))]))
_simple("sse_bom_and_comments", "sse", _anthropic_stream(lambda ctx, events: [Send(sse_response(
    [b"\xef\xbb\xbf: hello\n\n"] + [b": c\n" + e for e in events]))]))
_simple("sse_html_body", "sse", lambda ctx: [Send(response("200 OK", "text/event-stream",
                                                           b"<html><body>502 Bad Gateway</body></html>",
                                                           framing="chunked"))])
_simple("sse_invalid_utf8", "sse", _anthropic_stream(_insert(4, sse("content_block_delta", {
    "type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "X"}}).replace(
    b"X", b"\xff\xfe\xc3"))))
_simple("sse_lone_surrogate", "sse", _anthropic_stream(_insert(4, sse("content_block_delta", {
    "type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a\ud800b"}}))))
_simple("sse_line_20mb", "sse", _anthropic_stream(lambda ctx, events: [Send(sse_response(
    events[:3] + [b"data: " + b"x" * (20 * 1024 * 1024) + b"\n\n"] + events[3:]))]))

_simple("sse_retry_and_id_fields", "sse", _anthropic_stream(lambda ctx, events: [Send(sse_response(
    [b"retry: 1000\nid: 1\n" + e for e in events]))]))
_simple("sse_odd_event_names", "sse", _anthropic_stream(_insert(3, b"event: " + b"x" * 5000 + b" y\ndata: {}\n\n")))
_simple("sse_unknown_event_type", "sse", _anthropic_stream(_insert(3, sse("content_block_future", {
    "type": "content_block_future", "index": 0, "detail": {"new": True}}))))

@recipe("sse_trickle_comments", "sse")
def _sse_trickle(ctx: Ctx) -> List[Action]:
    events = anthropic_events(ctx.model)
    return [Send(head("200 OK", [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")])),
            Send(b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in events[:2])),
            Trickle(b"d\r\n: keep-alive\n\r\n", every_s=0.2, for_s=25)]


@recipe("sse_stall", "sse")
def _sse_stall(ctx: Ctx) -> List[Action]:
    events = anthropic_events(ctx.model)
    return [Send(head("200 OK", [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")])),
            Send(b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in events[:4])), Sleep(30)]


# OpenAI chunk streams and completions ---------------------------------------------------------------

def _oa_stream(*chunks: Any, done: bool = True) -> Recipe:
    def make(ctx: Ctx) -> List[Action]:
        events = [sse(None, oa_chunk({"role": "assistant", "content": "Hi"}))]
        events += [c if isinstance(c, bytes) else sse(None, c) for c in chunks]
        events.append(sse(None, oa_chunk({}, "stop")))
        if done:
            events.append(b"data: [DONE]\n\n")
        return [Send(sse_response(events))]
    return make


_simple("oa_tool_calls_int", "oa_sse", _oa_stream(oa_chunk({"tool_calls": 5})))
_simple("oa_tool_calls_list_of_str", "oa_sse", _oa_stream(oa_chunk({"tool_calls": ["x"]})))
_simple("oa_tool_call_function_string", "oa_sse", _oa_stream(oa_chunk({"tool_calls": [
    {"index": 0, "id": "c1", "function": "Bash"}]})))
_simple("oa_tool_call_index_object", "oa_sse", _oa_stream(oa_chunk({"tool_calls": [
    {"index": {"a": 1}, "id": "c1", "function": {"name": "Bash", "arguments": "{}"}}]})))
_simple("oa_tool_call_name_object", "oa_sse", _oa_stream(oa_chunk({"tool_calls": [
    {"index": 0, "id": {"x": 1}, "function": {"name": ["Bash"], "arguments": 5}}]})))
_simple("oa_arguments_int", "oa_sse", _oa_stream(oa_chunk({"tool_calls": [
    {"index": 0, "id": "c1", "function": {"name": "Bash", "arguments": 5}}]})))
_simple("oa_choices_int", "oa_sse", _oa_stream({"id": "x", "choices": 7}))
_simple("oa_choices_dict", "oa_sse", _oa_stream({"id": "x", "choices": {"0": {"delta": {"content": "x"}}}}))
_simple("oa_choice_index_string", "oa_sse", _oa_stream({"id": "x", "choices": [{"index": "0",
                                                                               "delta": {"content": "x"}}]}))
_simple("oa_delta_string", "oa_sse", _oa_stream(oa_chunk("text")))
_simple("oa_content_object", "oa_sse", _oa_stream(oa_chunk({"content": {"text": "x"}, "reasoning_content": 5})))
_simple("oa_prompt_tokens_string", "oa_sse", _oa_stream({"id": "x", "choices": [],
                                                         "usage": {"prompt_tokens": "many", "completion_tokens": 1}}))
_simple("oa_prompt_tokens_1e400", "oa_sse", _oa_stream(
    b'data: {"id": "x", "choices": [], "usage": {"prompt_tokens": 1e400, "completion_tokens": 1}}\n\n'))
_simple("oa_prompt_tokens_negative", "oa_sse", _oa_stream({"id": "x", "choices": [],
                                                           "usage": {"prompt_tokens": -5, "completion_tokens": -1}}))
_simple("oa_cached_tokens_string", "oa_sse", _oa_stream({"id": "x", "choices": [], "usage": {
    "prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": "all"}}}))
_simple("oa_usage_list", "oa_sse", _oa_stream({"id": "x", "choices": [], "usage": [1, 2]}))
_simple("oa_finish_reason_int", "oa_sse", _oa_stream(oa_chunk({}, 5)))
_simple("oa_finish_reason_object", "oa_sse", _oa_stream(oa_chunk({}, {"why": "stop"})))
_simple("oa_id_object", "oa_sse", _oa_stream(dict(oa_chunk({"content": "x"}), id={"nested": True})))
_simple("oa_data_not_json", "oa_sse", _oa_stream(b"data: {not json\n\n", b"data: [1, 2]\n\n", b"data: null\n\n"))
_simple("oa_error_chunk", "oa_sse", _oa_stream({"error": {"message": "model crashed", "code": 500}}))
_simple("oa_error_chunk_code_string", "oa_sse", _oa_stream({"error": {"message": ["x"], "code": "oops"}}))
_simple("oa_error_chunk_code_1e400", "oa_sse", _oa_stream(b'data: {"error": {"message": "x", "code": 1e400}}\n\n'))
_simple("oa_error_chunk_code_999", "oa_sse", _oa_stream({"error": {"message": "x", "code": 999}}))
_simple("oa_error_echo_key", "oa_sse", lambda ctx: _oa_stream({"error": {"message": f"bad key {ctx.key}",
                                                                         "code": 401}})(ctx))
_simple("oa_no_finish_no_done", "oa_sse", lambda ctx: [Send(sse_response([sse(None, oa_chunk({"content": "Hi"}))]))])
_simple("oa_only_done", "oa_sse", lambda ctx: [Send(sse_response([b"data: [DONE]\n\n"]))])
_simple("oa_lone_surrogate", "oa_sse", _oa_stream(dict(oa_chunk({"content": "a\udfffb"}), id="x\ud800")))
_simple("oa_line_20mb", "oa_sse", _oa_stream(b"data: " + b"x" * (20 * 1024 * 1024) + b"\n\n"))


@recipe("oa_stall", "oa_sse")
def _oa_stall(ctx: Ctx) -> List[Action]:
    events = openai_events()
    return [Send(head("200 OK", [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")])),
            Send(b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in events[:3])), Sleep(30)]


@recipe("oa_trickle_comments", "oa_sse")
def _oa_trickle(ctx: Ctx) -> List[Action]:
    events = openai_events()
    return [Send(head("200 OK", [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")])),
            Send(b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in events[:2])),
            Trickle(b"d\r\n: keep-alive\n\r\n", every_s=0.2, for_s=25)]


def _oa_json(build: Callable[[Ctx], Any]) -> Recipe:
    def make(ctx: Ctx) -> List[Action]:
        value = build(ctx)
        body = value if isinstance(value, bytes) else json.dumps(value).encode()
        return [Send(response("200 OK", "application/json", body))]
    return make


def _with_message(**fields: Any) -> Callable[[Ctx], Any]:
    return lambda ctx: completion(ctx.model, **fields)


_simple("oaj_arguments_int", "oa_json", _oa_json(_with_message(tool_calls=[
    {"id": "c1", "type": "function", "function": {"name": "Bash", "arguments": 5}}])))
_simple("oaj_arguments_list", "oa_json", _oa_json(_with_message(tool_calls=[
    {"id": "c1", "type": "function", "function": {"name": "Bash", "arguments": [1, 2]}}])))
_simple("oaj_tool_calls_int", "oa_json", _oa_json(_with_message(tool_calls=5)))
_simple("oaj_tool_call_string", "oa_json", _oa_json(_with_message(tool_calls=["Bash"])))
_simple("oaj_function_list", "oa_json", _oa_json(_with_message(tool_calls=[{"id": "c1", "function": [1]}])))
_simple("oaj_name_object", "oa_json", _oa_json(_with_message(tool_calls=[
    {"id": 5, "function": {"name": {"n": 1}, "arguments": "{}"}}])))
_simple("oaj_choices_empty", "oa_json", _oa_json(lambda ctx: dict(completion(ctx.model), choices=[])))
_simple("oaj_choices_of_int", "oa_json", _oa_json(lambda ctx: dict(completion(ctx.model), choices=[5])))
_simple("oaj_message_string", "oa_json", _oa_json(lambda ctx: dict(completion(ctx.model), choices=[
    {"index": 0, "message": "hello", "finish_reason": "stop"}])))
_simple("oaj_content_list_garbage", "oa_json", _oa_json(_with_message(content=[1, None, {"text": 5}, "x"])))
_simple("oaj_usage_1e400", "oa_json", _oa_json(lambda ctx: json.dumps(completion(ctx.model)).replace(
    '"prompt_tokens": 11', '"prompt_tokens": 1e400').encode()))
_simple("oaj_usage_string", "oa_json", _oa_json(lambda ctx: dict(completion(ctx.model), usage={
    "prompt_tokens": "many", "completion_tokens": [1]})))
_simple("oaj_finish_reason_int", "oa_json", _oa_json(lambda ctx: dict(completion(ctx.model), choices=[
    {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": 5}])))
_simple("oaj_id_object", "oa_json", _oa_json(lambda ctx: dict(completion(ctx.model), id={"a": 1})))
_simple("oaj_lone_surrogate", "oa_json", _oa_json(lambda ctx: dict(completion(ctx.model, "a\ud800b"), id="\udfff")))
_simple("oaj_error_200", "oa_json", _oa_json(lambda ctx: {"error": {"message": "quota exceeded", "code": 429}}))


# echoed header credentials ---------------------------------------------------------------------------
# An upstream that writes the request's headers back: into its answer's text (split across deltas, so
# that no delta holds a whole credential), into response headers a client is relayed, and into a 401.
# The config gives these upstreams ``ECHO_HEADERS`` (a credential agproxy has no account for) besides
# the account keys.

#: A credential in an upstream's ``headers``, with a quote and a backslash (it shows escaped in JSON).
HEADER_SECRET = 'hdr-SECRET-"gw"\\tok-4242'
ECHO_HEADERS = {"X-Gateway-Token": HEADER_SECRET}
#: the credentials of the echo cases: the account keys and the header's
ECHO_SECRETS = KEYS + (HEADER_SECRET,)


def echo_text(ctx: Ctx) -> str:
    """What an echoing upstream says: its credentials first (where agproxy's cuts of an error's
    words keep them), as they are, as JSON, base64 (a Basic ``user:key`` included) and URL-encoded,
    then every request header."""
    said = []
    for secret in (ctx.header("x-gateway-token") or "", ctx.key):
        said += [secret, json.dumps({"key": secret}), base64.b64encode(secret.encode()).decode(),
                 base64.b64encode(f"gateway:{secret}".encode()).decode(), urllib.parse.quote(secret, safe="")]
    said += [f"{name}: {value}" for name, value in ctx.headers]
    return "Your request had " + "; ".join(said) + ". Done."


def events_in_pieces(ctx: Ctx, pieces: Sequence[str]) -> List[bytes]:
    """The proper event stream of this kind for an answer whose text comes in exactly these deltas."""
    if ctx.kind == "anthropic":
        events = anthropic_events(ctx.model, "x")
        deltas = [sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": piece}}) for piece in pieces]
        return events[:3] + deltas + events[4:]
    if ctx.kind == "openai":
        events = openai_events("x")
        return events[:1] + [sse(None, oa_chunk({"content": piece})) for piece in pieces] + events[2:]
    out = []
    for i, piece in enumerate(pieces):
        chunk = gemini_answer(piece)
        if i < len(pieces) - 1:
            del chunk["candidates"][0]["finishReason"]
        out.append(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
    return out


def _echo_headers(ctx: Ctx) -> List[Tuple[str, str]]:
    secret = ctx.header("x-gateway-token") or ""
    return [("x-ratelimit-remaining-requests", secret), ("anthropic-ratelimit-tokens-remaining", ctx.key),
            ("request-id", secret), ("x-echo", secret)]


def _echo_credentials(ctx: Ctx) -> List[Action]:
    text = echo_text(ctx)
    if ctx.count:
        return [Send(response("200 OK", "application/json", json.dumps(
            {"input_tokens": 42, "totalTokens": 42, "count": 7, "tokens": [1], "note": text}).encode(),
            _echo_headers(ctx)))]
    if not ctx.stream:
        return [Send(response("200 OK", "application/json", json.dumps(whole(ctx, text)).encode(),
                              _echo_headers(ctx)))]
    size = 3 if ctx.attempt % 2 else 7  # every credential is cut, at other places on a second attempt
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    return [Send(sse_response(events_in_pieces(ctx, pieces), _echo_headers(ctx)))]


_simple("echo_header_credentials", "http", _echo_credentials)
_simple("echo_header_credentials_401", "http", lambda ctx: _error_status(
    401, "Unauthorized", body=lambda c: error_json(c, 401, echo_text(c)), headers=_echo_headers(ctx))(ctx))


# time bounds: a body never read, pings only ----------------------------------------------------------

#: Cases whose requests the fake reads only the head of: the body stays unread (in the socket
#: buffers, then in agproxy's), as a server that has stopped reading would leave it.
BODY_UNREAD = {"body_never_read"}

_simple("body_never_read", "http", lambda ctx: [Sleep(30)])


def _keepalives(ctx: Ctx) -> bytes:
    """The keep-alive traffic of this kind that carries nothing, as one chunk: an SSE comment, and
    Anthropic's ``ping`` event, or chunks with no content (OpenAI, Gemini)."""
    empty = {"anthropic": [sse("ping", {"type": "ping"}), b"event: ping\ndata: {\"type\": \"ping\"}\n\n"],
             "openai": [sse(None, {"id": "chatcmpl-misbehaving", "choices": []}), sse(None, oa_chunk({})),
                        sse(None, oa_chunk({"content": ""}))],
             "gemini": [b"data: " + json.dumps({"candidates": []}).encode() + b"\r\n\r\n",
                        b"data: " + json.dumps({"candidates": [{"content": {"parts": [{"text": ""}], "role": "model"},
                                                                "index": 0}]}).encode() + b"\r\n\r\n"]}[ctx.kind]
    data = b": keepalive\n\n" + b"".join(empty)
    return b"%x\r\n%b\r\n" % (len(data), data)


@recipe("pings_only")
def _pings_only(ctx: Ctx) -> List[Action]:
    """A stream whose first block has begun, then only keep-alives (pings, comments, empty chunks),
    for ever; a JSON answer whose body is only whitespace, for ever."""
    if not ctx.stream or ctx.count:
        return [Send(head("200 OK", [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")])),
                Trickle(b"1\r\n \r\n", every_s=0.2, for_s=25)]
    events = events_of(ctx)
    begun = events[:2] if ctx.kind != "gemini" else events[:1]  # the first block has begun
    return [Send(head("200 OK", [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")])),
            Send(b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in begun)),
            Trickle(_keepalives(ctx), every_s=0.2, for_s=25)]


# upstream faults of issue 18: deep JSON, huge numbers, out of credit, out-of-grammar passthrough -------

#: nesting far past what any parser's stack follows, and nesting Python's parser follows but that
#: would still overflow a recursive walk of the value (copy.deepcopy, a translator)
DEEP, DEEPISH = 100_000, 900
#: a number past Python's int() digit limit (4300), and one under it that still overflows a float
HUGE_DIGITS, BIG_DIGITS = 5000, 4000
_COUNT_FIELDS = rb"input_tokens|output_tokens|prompt_tokens|completion_tokens|total_tokens|promptTokenCount|" \
                rb"candidatesTokenCount|totalTokenCount|totalTokens|count"


def nested(depth: int) -> bytes:
    """A JSON list nested ``depth`` deep."""
    return b"[" * depth + b"]" * depth


def _deep_first_text(depth: int) -> Recipe:
    """The proper answer, its first text (or, for a count, its object) carrying a value nested
    ``depth`` deep beside it: inside the first content event of a stream."""
    def make(ctx: Ctx) -> List[Action]:
        content_type, body = good_body(ctx)
        if ctx.count or not re.search(rb'"(text|content)": "Hello', body):
            body = body.replace(b"{", b'{"deep": ' + nested(depth) + b", ", 1)
        else:
            body = re.sub(rb'"(text|content)": "Hello', lambda m: b'"deep": ' + nested(depth) + b", " + m.group(0),
                          body, count=1)
        return [Send(response("200 OK", content_type, body,
                              framing="chunked" if content_type == "text/event-stream" else "length"))]
    return make


_simple("deep_json_answer", "http", _deep_first_text(DEEP))
_simple("deepish_json_answer", "http", _deep_first_text(DEEPISH))
_simple("deep_json_error_400", "http", _error_status(400, "Bad Request", body=lambda ctx: error_json(
    ctx, 400, "bad").replace(b"{", b'{"deep": ' + nested(DEEP) + b", ", 1)))
_simple("deep_json_error_503", "http", _error_status(503, "Service Unavailable", body=lambda ctx: error_json(
    ctx, 503, "busy").replace(b"{", b'{"deep": ' + nested(DEEP) + b", ", 1)))
_simple("deepish_json_error_400", "http", _error_status(400, "Bad Request", body=lambda ctx: error_json(
    ctx, 400, "bad").replace(b"{", b'{"deep": ' + nested(DEEPISH) + b", ", 1)))


def _huge_counts(digits: int) -> Recipe:
    """The proper answer with every token count ``digits`` digits long (usage, count_tokens)."""
    def make(ctx: Ctx) -> List[Action]:
        content_type, body = good_body(ctx)
        body = re.sub(rb'("(?:' + _COUNT_FIELDS + rb')": )\d+', lambda m: m.group(1) + b"9" * digits, body)
        return [Send(response("200 OK", content_type, body,
                              framing="chunked" if content_type == "text/event-stream" else "length"))]
    return make


_simple("huge_counts_5000_digits", "http", _huge_counts(HUGE_DIGITS))
_simple("huge_counts_4000_digits", "http", _huge_counts(BIG_DIGITS))
for _digits in (HUGE_DIGITS, BIG_DIGITS):
    _simple(f"context_window_{_digits}_digits", "http", _error_status(400, "Bad Request", body=lambda ctx, d=_digits:
            error_json(ctx, 400, f"This model's maximum context length is {'9' * d} tokens. However, you requested "
                                 f"{'8' * d} tokens ({'7' * d} in the messages, 64 in the completion).")))
    _simple(f"n_ctx_{_digits}_digits", "http", _error_status(400, "Bad Request", body=lambda ctx, d=_digits: (
        b'{"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it",'
        b' "type": "exceed_context_size_error", "n_prompt_tokens": ' + b"8" * d + b', "n_ctx": ' + b"9" * d + b"}}")))
    _simple(f"status_429_retry_after_{_digits}_digits", "http", _error_status(429, "Too Many Requests", headers=[
        ("retry-after", "9" * _digits), ("x-ratelimit-reset-tokens", "9" * _digits + "s"),
        ("anthropic-ratelimit-requests-reset", "9" * _digits), ("anthropic-ratelimit-requests-remaining", "0")]))
    _simple(f"status_429_retry_delay_{_digits}_digits", "http", lambda ctx, d=_digits: [Send(response(
        "429 Too Many Requests", "application/json",
        b'{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED", "details": [{"@type": '
        b'"type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "' + b"9" * d + b's"}]}}'))])

#: what services say when an account has run out of money: HTTP 402 (OpenRouter, DeepSeek, z.ai
#: and others), and Anthropic's own 400 (its documented billing error)
CREDIT_402 = "Insufficient credits. Add more using https://example.com/credits"
ANTHROPIC_CREDIT_400 = ("Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing "
                        "to upgrade or purchase credits.")


def _out_of_credit(ctx: Ctx) -> bytes:
    if ctx.kind == "anthropic":
        return response("400 Bad Request", "application/json", json.dumps({"type": "error", "error": {
            "type": "invalid_request_error", "message": ANTHROPIC_CREDIT_400}}).encode())
    return response("402 Payment Required", "application/json", error_json(ctx, 402, CREDIT_402))


_simple("status_402", "http", _error_status(402, "Payment Required", body=lambda ctx: error_json(ctx, 402, CREDIT_402)))
_simple("out_of_credit", "http", lambda ctx: [Send(_out_of_credit(ctx))])
_simple("out_of_credit_alice_then_ok", "http", lambda ctx: [Send(_out_of_credit(ctx) if ctx.key == ALICE_KEY
                                                                  else good(ctx))])


def _grammar(build: Callable[[List[bytes]], List[bytes]]) -> Recipe:
    """A proper Anthropic event stream, rebuilt by ``build`` (events: message_start, block start,
    ping, deltas..., block stop, message_delta, message_stop)."""
    return lambda ctx: [Send(sse_response(build(anthropic_events(ctx.model))))]


_BLOCK_1 = sse("content_block_start", {"type": "content_block_start", "index": 1,
                                       "content_block": {"type": "text", "text": ""}})
_DELTA_1 = sse("content_block_delta", {"type": "content_block_delta", "index": 1,
                                       "delta": {"type": "text_delta", "text": " early"}})
_simple("sse_ping_then_content_no_start", "sse", _grammar(lambda ev: [sse("ping", {"type": "ping"})] + ev[1:]))
_simple("sse_no_message_start", "sse", _grammar(lambda ev: ev[1:]))
_simple("sse_event_name_not_its_type", "sse", _grammar(lambda ev: ev[:3] + [ev[3].replace(
    b"event: content_block_delta", b"event: message_delta", 1)] + ev[4:]))
_simple("sse_second_message_start", "sse", _grammar(lambda ev: ev[:4] + [ev[0]] + ev[4:]))
_simple("sse_delta_before_block_start", "sse", _grammar(lambda ev: ev[:3] + [_DELTA_1] + ev[3:]))
_simple("sse_delta_after_block_stop", "sse", _grammar(lambda ev: ev[:-2] + [ev[3]] + ev[-2:]))
_simple("sse_block_started_twice", "sse", _grammar(lambda ev: ev[:3] + [ev[1]] + ev[3:]))
_simple("sse_no_event_names", "sse", _grammar(lambda ev: [re.sub(rb"^event: [^\n]*\n", b"", e) for e in ev]))
_simple("sse_unknown_event_then_block", "sse", _grammar(lambda ev: ev[:-2] + [sse("future_thing", {
    "type": "future_thing", "index": 1})] + [_BLOCK_1, _DELTA_1, ev[-3].replace(b'"index": 0', b'"index": 1')]
    + ev[-2:]))
_simple("sse_lone_surrogate_first", "sse", _grammar(lambda ev: ev[:3] + [sse("content_block_delta", {
    "type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a\ud800b"}})] + ev[3:]))
_simple("sse_deep_json_first", "sse", _grammar(lambda ev: [ev[0].replace(b'"usage": {', b'"usage": {"deep": '
                                                                          + nested(DEEP) + b", ", 1)] + ev[1:]))


# -- the server ----------------------------------------------------------------------------------------

class MisbehavingUpstream:
    """The fake; use as a context manager. ``recipes`` default to :data:`RECIPES`."""

    def __init__(self, recipes: Optional[Dict[str, Recipe]] = None) -> None:
        self.recipes: Dict[str, Recipe] = dict(RECIPES if recipes is None else recipes)
        self.seen: List[Seen] = []
        #: (case, kind, mode, when): agproxy hung up while a recipe was pausing or trickling
        self.abandoned: List[Tuple[str, str, str, float]] = []
        self.errors: List[str] = []
        self._attempts: Dict[Tuple[str, str, str], int] = {}
        self._lock = threading.Lock()
        self._server = ServerThread()
        self.port = 0

    def __enter__(self) -> MisbehavingUpstream:
        self.port = self._server.start(self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.stop()

    def url_for(self, case: str, kind: str, mode: str) -> str:
        """The ``base_url`` of an agproxy upstream that gets this case."""
        root = f"http://127.0.0.1:{self.port}/c/{case}/{kind}/{mode}"
        return root + "/v1" if kind == "openai" else root

    def requests_for(self, case: str, kind: str, mode: str) -> List[Seen]:
        with self._lock:
            return [s for s in self.seen if (s.case, s.kind, s.mode) == (case, kind, mode)]

    async def _read_request(self, reader: asyncio.StreamReader) -> Optional[Tuple[str, str, List, bytes]]:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        lines = raw.decode("latin-1").split("\r\n")
        method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
        headers = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
        length = next((v for k, v in headers if k.lower() == "content-length"), "0")
        if target.split("/")[2:3] and target.split("/")[2] in BODY_UNREAD:
            length = "0"  # the body is left unread
        try:
            body = await reader.readexactly(int(length)) if int(length) else b""
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return None
        return method, target, headers, body

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                method, target, headers, body = request
                parts = target.split("/", 5)  # "", "c", case, kind, mode, rest
                if len(parts) < 6 or parts[1] != "c" or parts[2] not in self.recipes:
                    writer.write(response("404 Not Found", "application/json",
                                          b'{"error": {"message": "no such case"}}'))
                    await writer.drain()
                    return
                case, kind, mode, path = parts[2], parts[3], parts[4], "/" + parts[5]
                with self._lock:
                    number = self._attempts.get((case, kind, mode), 0) + 1
                    self._attempts[(case, kind, mode)] = number
                ctx = Ctx(case, kind, mode, method, path, headers, body, number)
                with self._lock:
                    self.seen.append(Seen(case, kind, mode, path, ctx.key, time.monotonic()))
                try:
                    actions = self.recipes[case](ctx)
                except Exception as exc:  # a broken recipe is a test bug: make it loud
                    self.errors.append(f"recipe {case} raised {exc!r}")
                    raise
                keep = await self._perform(actions, ctx, reader, writer)
                if not keep:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def _perform(self, actions: Sequence[Action], ctx: Ctx, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> bool:
        """Carry out the actions; True if the connection should carry another request."""
        keep = False
        for action in actions:
            if isinstance(action, Send):
                writer.write(action.data)
                await writer.drain()
            elif isinstance(action, Sleep):
                if not await self._pause(ctx, reader, action.seconds):
                    return False
            elif isinstance(action, Trickle):
                deadline = time.monotonic() + action.for_s
                while time.monotonic() < deadline:
                    writer.write(action.data)
                    try:
                        await writer.drain()
                    except ConnectionError:  # reset by agproxy: it hung up too
                        self.abandoned.append((ctx.case, ctx.kind, ctx.mode, time.monotonic()))
                        return False
                    if writer.transport.is_closing():
                        self.abandoned.append((ctx.case, ctx.kind, ctx.mode, time.monotonic()))
                        return False
                    if not await self._pause(ctx, reader, action.every_s):
                        return False
            elif isinstance(action, Reset):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return False
            elif isinstance(action, KeepAlive):
                keep = True
        return keep

    async def _pause(self, ctx: Ctx, reader: asyncio.StreamReader, seconds: float) -> bool:
        """Wait, watching for agproxy hanging up (recorded in ``abandoned``); False if it did. It hangs up
        with a FIN (an end of input), or with a reset when it closes a socket with bytes still unread
        in it (the connection lost with an error), as its abort of a stream often does."""
        deadline = time.monotonic() + seconds
        while True:
            if reader.at_eof() or reader.exception() is not None:
                self.abandoned.append((ctx.case, ctx.kind, ctx.mode, time.monotonic()))
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, 0.05))


def live_config(fake: MisbehavingUpstream, tag: str, timeout_s: float) -> Dict[str, Any]:
    """The config the fuzzers run agproxy with: the demo, an anthropic upstream in each profile and
    an OpenAI one, all on this fake's well-behaved case, picked by model prefix."""
    accounts = [{"name": "alice", "api_key": KEYS[0]}, {"name": "bob", "api_key": KEYS[1]}]
    return {
        "auth_mode": "off", "state_file": "", "max_retry_attempts": 2, "header_timeout_s": 5,
        "body_timeout_s": 5,
        "upstreams": [
            {"name": "demo", "kind": "demo"},
            {"name": "anth", "kind": "anthropic", "base_url": fake.url_for("fine", "anthropic", tag),
             "accounts": accounts, "timeout_s": timeout_s},
            {"name": "compat", "kind": "anthropic", "profile": "compatible",
             "base_url": fake.url_for("fine", "anthropic", "compat"), "accounts": accounts, "timeout_s": timeout_s},
            {"name": "oa", "kind": "openai", "base_url": fake.url_for("fine", "openai", tag),
             "accounts": accounts, "timeout_s": timeout_s},
        ],
        "model_map": [{"match": "anth-*", "upstream": "anth"}, {"match": "compat-*", "upstream": "compat"},
                      {"match": "oa-*", "upstream": "oa"}, {"match": "*", "upstream": "demo"}],
    }
