"""Strict checks of what agproxy sends to its clients, shared by the fault matrix, the fuzz tests and
``tools/fuzz.py``: a raw-socket HTTP/1.1 response reader that refuses anything malformed (header
lines with CR, LF or NUL, bad framing, a body cut short), and validators for Anthropic error bodies,
Messages and event streams. Standard library only, so ``tools/fuzz.py`` can use it outside pytest.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

#: Every error type of the Anthropic API (what ``error.type`` may be).
ERROR_TYPES = frozenset({"invalid_request_error", "authentication_error", "permission_error", "not_found_error",
                         "request_too_large", "rate_limit_error", "api_error", "overloaded_error", "billing_error",
                         "timeout_error"})

def program_under_test() -> Optional[List[str]]:
    """The command that runs agproxy for the fault matrix and the live fuzz tests: ``agproxy.py`` by
    default, or ``$AGPROXY_PROGRAM`` (``agproxy.pyz``, or an older agproxy.py to compare with)."""
    program = os.environ.get("AGPROXY_PROGRAM")
    return [sys.executable, program] if program else None


#: The event types of the Messages stream (clients must tolerate others: the API may add some).
ANTHROPIC_EVENTS = frozenset({"message_start", "content_block_start", "content_block_delta", "content_block_stop",
                              "message_delta", "message_stop", "ping", "error"})

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ([\t\x20-\x7e\x80-\xff]*)")
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*)")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t\x20-\x7e]*)?")
_MAX_HEAD = 1024 * 1024


class Answer:
    """One response as read off the socket, with everything wrong about it in ``problems``."""

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: List[Tuple[str, str]] = []
        self.body = b""
        self.raw = bytearray()
        self.problems: List[str] = []
        self.method = "POST"
        self.dropped = False  # closed (or reset) before a single byte of a response
        self.timed_out = False
        self.elapsed = 0.0

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def content_type(self) -> str:
        return (self.header("content-type") or "").split(";", 1)[0].strip().lower()

    def describe(self, limit: int = 600) -> str:
        """What agproxy did, in one readable paragraph (for assertion messages)."""
        if self.dropped:
            return "connection closed without any response"
        head = f"HTTP {self.status} {self.reason.decode('latin-1')!r}, content-type {self.content_type or '-'}"
        if self.timed_out:
            head += f", still incomplete after {self.elapsed:.1f} s"
        body = self.body.decode("utf-8", "replace")
        if len(body) > limit:
            body = body[: limit // 2] + f" ...[{len(body) - limit} chars]... " + body[-limit // 2:]
        return f"{head}; body: {body!r}" + (f"; wire problems: {self.problems}" if self.problems else "")


class ResponseReader:
    """Reads responses off one socket, one ``read()`` each, keeping what arrived early (pipelining)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = 0.0
        self.answer = Answer()
        self.buffer = bytearray()
        self.eof = False
        self.reset = False

    def read(self, timeout: float, method: str = "POST", expect_continue: bool = False,
             max_body: int = 256 * 1024 * 1024) -> Answer:
        """The next response, read strictly."""
        answer = Answer()
        answer.method = method
        started = time.monotonic()
        self.deadline, self.answer = started + timeout, answer
        try:
            _read_into(self, answer, method, expect_continue, max_body)
        finally:
            answer.elapsed = time.monotonic() - started
        return answer

    def fill(self) -> bool:
        """Read more; False at end of input (close, reset or the deadline)."""
        if self.eof:
            return False
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.answer.timed_out = True
            self.eof = True
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(262144)
        except socket.timeout:
            self.answer.timed_out = True
            self.eof = True
            return False
        except OSError:
            self.reset = True
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        self.answer.raw += data
        return True

    def until(self, separator: bytes, limit: int) -> Optional[bytes]:
        start = 0
        while True:
            at = self.buffer.find(separator, start)
            if at >= 0:
                out = bytes(self.buffer[:at])
                del self.buffer[: at + len(separator)]
                return out
            if len(self.buffer) > limit:
                return None
            start = max(0, len(self.buffer) - len(separator) + 1)
            if not self.fill():
                return None

    def exactly(self, n: int) -> Optional[bytes]:
        while len(self.buffer) < n:
            if not self.fill():
                return None
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def rest(self, limit: int) -> bytes:
        while len(self.buffer) <= limit and self.fill():
            pass
        out = bytes(self.buffer)
        self.buffer.clear()
        return out


def read_answer(sock: socket.socket, timeout: float, method: str = "POST", expect_continue: bool = False,
                max_body: int = 256 * 1024 * 1024) -> Answer:
    """Read one response strictly (use a :class:`ResponseReader` for several on one connection)."""
    return ResponseReader(sock).read(timeout, method, expect_continue, max_body)


def _read_into(reader: ResponseReader, answer: Answer, method: str, expect_continue: bool, max_body: int) -> None:
    while True:
        head = reader.until(b"\r\n\r\n", _MAX_HEAD)
        if head is None:
            if not reader.buffer and not answer.raw:
                answer.dropped = not answer.timed_out
                answer.problems.append("no response within the deadline" if answer.timed_out
                                       else "connection closed without a response" + (" (reset)" if reader.reset
                                                                                       else ""))
            else:
                answer.problems.append("response head incomplete or longer than 1 MB: "
                                       f"{bytes(reader.buffer[:200])!r}")
            return
        lines = head.split(b"\r\n")
        match = _STATUS_LINE.fullmatch(lines[0])
        if not match:
            answer.problems.append(f"malformed status line {lines[0][:120]!r}")
            return
        status = int(match.group(1))
        if 100 <= status < 200:
            if status == 100 and expect_continue:
                continue
            answer.problems.append(f"unexpected interim status {status}")
            if status == 101:
                return
            continue
        break
    answer.status, answer.reason = status, match.group(2)
    if not 200 <= status <= 599:
        answer.problems.append(f"status {status} outside 200-599")
    for line in lines[1:]:
        if re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", line):
            answer.problems.append(f"header line carries a control character (CR, LF or NUL): {line[:160]!r}")
        field = _HEADER_LINE.fullmatch(line)
        if not field:
            answer.problems.append(f"malformed header line {line[:160]!r}")
            continue
        answer.headers.append((field.group(1).decode("ascii"), field.group(2).rstrip(b" \t").decode("latin-1")))
    codings = [v.strip().lower() for k, v in answer.headers if k.lower() == "transfer-encoding"]
    lengths = [v.strip() for k, v in answer.headers if k.lower() == "content-length"]
    if codings and lengths:
        answer.problems.append("response has both Transfer-Encoding and Content-Length")
    if len(lengths) > 1:
        answer.problems.append(f"response has {len(lengths)} Content-Length headers")
    if method == "HEAD" or status in (204, 304):
        return
    if codings:
        if codings != ["chunked"]:
            answer.problems.append(f"unexpected Transfer-Encoding {codings}")
            return
        body = bytearray()
        while True:
            line = reader.until(b"\r\n", 1024)
            if line is None:
                answer.problems.append("chunked body cut short" + (" (deadline)" if answer.timed_out else
                                                                   " (connection closed mid-stream)"))
                break
            size = _CHUNK_SIZE.fullmatch(line)
            if not size:
                answer.problems.append(f"malformed chunk size line {line[:80]!r}")
                break
            n = int(size.group(1), 16)
            if n == 0:
                while True:
                    trailer = reader.until(b"\r\n", 65536)
                    if trailer is None:
                        answer.problems.append("chunked body ended without its final CRLF")
                        break
                    if not trailer:
                        break
                break
            data = reader.exactly(n + 2)
            if data is None or data[-2:] != b"\r\n":
                answer.problems.append("chunk data cut short or not followed by CRLF" +
                                       (" (deadline)" if answer.timed_out else ""))
                if data is None:
                    body += reader.buffer
                break
            body += data[:-2]
            if len(body) > max_body:
                answer.problems.append(f"body larger than {max_body} bytes")
                break
        answer.body = bytes(body)
        return
    if lengths:
        if not lengths[0].isdigit() or not lengths[0].isascii():
            answer.problems.append(f"invalid Content-Length {lengths[0]!r}")
            return
        n = int(lengths[0])
        if n > max_body:
            answer.problems.append(f"Content-Length {n} larger than {max_body}")
            return
        data = reader.exactly(n)
        if data is None:
            answer.problems.append(f"body shorter than its Content-Length {n}" +
                                   (" (deadline)" if answer.timed_out else " (connection closed)"))
            answer.body = bytes(reader.buffer)
            return
        answer.body = data
        return
    closes = any(k.lower() == "connection" and "close" in v.lower() for k, v in answer.headers)
    if not closes:
        answer.problems.append("response body delimited by the connection close (no Content-Length, not chunked, "
                               "no Connection: close)")
    answer.body = reader.rest(max_body)
    if answer.timed_out:
        answer.problems.append("close-delimited body still open at the deadline")


def build_request(method: str, path: str, body: Optional[bytes] = None, headers: Sequence[Tuple[str, str]] = (),
                  host: str = "127.0.0.1") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def post_json(port: int, path: str, payload: Any, timeout: float, extra_headers: Sequence[Tuple[str, str]] = ()
              ) -> Answer:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return exchange(port, build_request("POST", path, body, [("Content-Type", "application/json"),
                                                             *extra_headers]), timeout)


def get(port: int, path: str, timeout: float = 10.0) -> Answer:
    return exchange(port, build_request("GET", path), timeout, method="GET")


def connect(port: int, timeout: float) -> Union[socket.socket, Answer]:
    """A connection to 127.0.0.1:port, or the dropped :class:`Answer` that says why there is none."""
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as exc:
        answer = Answer()
        answer.dropped = True
        answer.problems.append(f"cannot connect: {exc}")
        return answer


def exchange(port: int, data: bytes, timeout: float, method: str = "POST") -> Answer:
    """Connect to 127.0.0.1:port, send ``data``, read one response strictly."""
    started = time.monotonic()
    sock = connect(port, timeout)
    if isinstance(sock, Answer):
        return sock
    with sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may answer (and close) before reading everything; read what it said
        answer = read_answer(sock, max(0.1, timeout - (time.monotonic() - started)), method)
    return answer


# -- JSON, errors, Messages, event streams ---------------------------------------------------------

def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_json(data: Any) -> Any:
    """json.loads that refuses NaN, Infinity and -Infinity (not JSON, and most clients choke on them)."""
    return json.loads(data, parse_constant=_no_constants)


def error_shape_problems(body: bytes, expected_type: Optional[str] = None) -> List[str]:
    """What is wrong with an Anthropic error body ``{"type":"error","error":{"type":...,"message":...}}``."""
    try:
        value = strict_json(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"error body is not strict JSON ({exc}): {body[:200]!r}"]
    return error_value_problems(value, expected_type)


def error_value_problems(value: Any, expected_type: Optional[str] = None) -> List[str]:
    if not isinstance(value, dict) or value.get("type") != "error" or not isinstance(value.get("error"), dict):
        return [f"not the Anthropic error shape: {json.dumps(value)[:200]}"]
    error = value["error"]
    problems = []
    if error.get("type") not in ERROR_TYPES:
        problems.append(f"error.type {error.get('type')!r} is not an Anthropic error type")
    elif expected_type is not None and error.get("type") != expected_type:
        problems.append(f"error.type is {error.get('type')!r}, expected {expected_type!r}")
    if not isinstance(error.get("message"), str):
        problems.append("error.message is not a string")
    return problems


def message_problems(value: Any) -> List[str]:
    """What is wrong with an Anthropic Message object."""
    if not isinstance(value, dict):
        return [f"a Message must be an object, got {type(value).__name__}"]
    problems = []
    if value.get("type") != "message":
        problems.append(f"Message.type is {value.get('type')!r}")
    if value.get("role") != "assistant":
        problems.append(f"Message.role is {value.get('role')!r}")
    if not isinstance(value.get("id"), str):
        problems.append("Message.id is not a string")
    content = value.get("content")
    if not isinstance(content, list):
        problems.append(f"Message.content is not a list: {json.dumps(content)[:100]}")
    else:
        for i, block in enumerate(content):
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                problems.append(f"content[{i}] is not a content block: {json.dumps(block)[:100]}")
            elif block["type"] == "text" and not isinstance(block.get("text"), str):
                problems.append(f"content[{i}].text is not a string")
            elif block["type"] == "tool_use" and not isinstance(block.get("input"), dict):
                problems.append(f"content[{i}].input is not an object")
    usage = value.get("usage")
    if not isinstance(usage, dict):
        problems.append("Message.usage is not an object")
    else:
        for key in ("input_tokens", "output_tokens"):
            if key in usage and (not isinstance(usage[key], int) or isinstance(usage[key], bool) or usage[key] < 0):
                problems.append(f"usage.{key} is not a non-negative integer: {usage[key]!r}")
    if value.get("stop_reason") is not None and not isinstance(value.get("stop_reason"), str):
        problems.append(f"stop_reason is {value.get('stop_reason')!r}")
    return problems


def parse_sse(body: bytes) -> Tuple[List[Tuple[str, str]], List[str]]:
    """(event name, data) pairs of a text/event-stream body, and framing problems."""
    problems = []
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"event stream is not UTF-8 ({exc})")
        text = body.decode("utf-8", "replace")
    events: List[Tuple[str, str]] = []
    name, data = "", []
    lines = re.split(r"\r\n|\r|\n", text)
    if lines and lines[-1] == "":
        lines.pop()
    else:
        problems.append("event stream does not end with a line break")
    for line in lines:
        if not line:
            if data:
                events.append((name or "message", "\n".join(data)))
            name, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    if data or name:
        problems.append("event stream ends in the middle of an event")
    return events, problems


def stream_problems(body: bytes, strict_events: bool) -> Tuple[Optional[str], List[str]]:
    """Check an Anthropic event stream: returns (how it ended: "message_stop", "error" or None, problems).

    Always: well framed, ends with ``message_stop`` or an ``error`` event whose data has the error
    shape, nothing after that. ``strict_events``: also every event's data is a JSON object whose
    ``type`` is the event name, and the first is ``message_start`` (or an error).
    """
    events, problems = parse_sse(body)
    if not events:
        return None, problems + ["the event stream holds no event"]
    ends = [i for i, (name, _) in enumerate(events) if name in ("message_stop", "error")]
    if not ends:
        last = events[-1]
        return None, problems + [f"the stream stops without message_stop or an error event (last: {last[0]} "
                                 f"{last[1][:120]!r})"]
    end = ends[0]
    if end != len(events) - 1:
        problems.append(f"events after the final {events[end][0]}: {[n for n, _ in events[end + 1:]][:5]}")
    name, data = events[end]
    if name == "error":
        try:
            problems += error_value_problems(strict_json(data))
        except ValueError as exc:
            problems.append(f"error event data is not strict JSON ({exc}): {data[:200]!r}")
    else:
        try:
            value = strict_json(data)
        except ValueError as exc:
            value = None
            problems.append(f"message_stop data is not strict JSON ({exc}): {data[:200]!r}")
        if value is not None and (not isinstance(value, dict) or value.get("type") != "message_stop"):
            problems.append(f"message_stop data is not a message_stop object: {data[:200]!r}")
    problems += grammar_problems(events[:end + 1])
    if strict_events:
        for i, (event, payload) in enumerate(events):
            try:
                value = strict_json(payload)
            except ValueError as exc:
                problems.append(f"event {i} ({event}) data is not strict JSON ({exc}): {payload[:120]!r}")
                continue
            if not isinstance(value, dict):
                problems.append(f"event {i} ({event}) data is not an object: {payload[:120]!r}")
            elif event in ANTHROPIC_EVENTS and value.get("type") != event:
                problems.append(f"event {i} ({event}) data is not an object of that type: {payload[:120]!r}")
        if events[0][0] not in ("message_start", "error"):
            problems.append(f"the stream begins with {events[0][0]}, not message_start")
    return name, problems


def grammar_problems(events: List[Tuple[str, str]]) -> List[str]:
    """Where a stream leaves the Messages grammar, for the types it defines (others are tolerated,
    as the API may add some): every event named after its data's type, pings then ``message_start``
    first (or an error), one ``message_start``, a block's deltas and stop only while it is open,
    each block started once; no unpaired surrogate escape (a client's JSON parser may refuse it)."""
    problems: List[str] = []
    started, open_blocks, seen = False, set(), set()
    for i, (name, data) in enumerate(events):
        try:
            value = strict_json(data)
        except ValueError:
            continue  # reported elsewhere where it matters
        if "\\u" in data:
            try:
                json.dumps(value, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                problems.append(f"event {i} ({name}) has an unpaired surrogate escape: {data[:120]!r}")
        kind = value.get("type") if isinstance(value, dict) else None
        if name in ANTHROPIC_EVENTS and kind != name:
            problems.append(f"event {i} is named {name} but its data is a {kind!r}")
        if name == "message" and kind in ANTHROPIC_EVENTS:
            problems.append(f"event {i} ({kind}) has no event name (the SDKs ignore it)")
        if name not in ANTHROPIC_EVENTS or name in ("ping", "error"):
            continue
        if name == "message_start":
            if started:
                problems.append(f"event {i} is a second message_start")
            started = True
            continue
        if not started:
            problems.append(f"event {i} ({name}) comes before message_start")
        index = value.get("index") if isinstance(value, dict) else None
        if name == "content_block_start":
            if index in seen:
                problems.append(f"event {i} starts block {index} a second time")
            seen.add(index)
            open_blocks.add(index)
        elif name in ("content_block_delta", "content_block_stop"):
            if index not in open_blocks:
                problems.append(f"event {i} ({name}) is for block {index!r}, which is not open")
            elif name == "content_block_stop":
                open_blocks.discard(index)
    return problems


def leaked(data: Any, secrets: Sequence[str]) -> List[str]:
    """The secrets (or their distinctive tails) that appear in ``data`` (bytes or str)."""
    text = data.decode("latin-1") if isinstance(data, (bytes, bytearray)) else str(data)
    found = []
    for secret in secrets:
        tail = secret.split("-", 2)[-1] if secret.count("-") >= 2 else secret
        if secret in text or tail in text:
            found.append(secret)
    return found


def error_status_problems(answer: Answer, expected_type: Optional[str] = None) -> List[str]:
    """An error answer must be application/json with the Anthropic error shape."""
    problems = []
    if answer.content_type != "application/json":
        problems.append(f"error answer has content-type {answer.content_type!r}")
    return problems + error_shape_problems(answer.body, expected_type)


def generic_problems(answer: Answer, secrets: Sequence[str] = (), allow_500: bool = False) -> List[str]:
    """The invariants every answer keeps: a well-formed response, never 500 (agproxy's own failure),
    errors in the Anthropic shape, no secret in any byte."""
    problems = list(answer.problems)
    if answer.dropped:
        return problems
    if answer.status == 500 and not allow_500:
        problems.append("agproxy answered 500: " + answer.body[:300].decode("utf-8", "replace"))
    if answer.status >= 400 and not answer.timed_out and answer.method != "HEAD":
        problems += error_status_problems(answer)
    for secret in leaked(answer.raw, secrets):
        problems.append(f"the upstream key {secret[:14]}... appears in the response")
    return problems


def summarize(counts: Dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def incomplete(data: bytes) -> bool:
    """Whether ``data`` ends inside a request, by agproxy's own sans-IO parser. Only then does a
    fuzzing client half-close (so agproxy answers the truncated request instead of waiting for the
    rest); a client that sent whole requests keeps its side open, as real clients do."""
    import agproxy  # here: the rest of this module needs nothing but the standard library

    parser = agproxy.RequestParser()
    parser.feed(data)
    try:
        for _ in range(1000):
            event = parser.next_event()
            if event in (agproxy.NEED_DATA, agproxy.CLOSED):
                return event == agproxy.NEED_DATA and not parser.idle
    except agproxy.ProtocolError:
        return False
    return False
