#!/usr/bin/env python3
"""A long fuzz run against a real agproxy process (``make fuzz``; minutes, not part of ``make test``).

It starts ``agproxy.py --port 0 --config <temporary config>`` whose upstreams are the built-in demo
and a well-behaved fake (tests/fakes/misbehaving.py with a recipe that always answers properly)
as an ``anthropic`` upstream, an ``anthropic`` one with the ``compatible`` profile, and an
``openai`` one. Then it sends ``--cases`` random requests over raw sockets, one connection each:
valid requests with one field replaced by random JSON, random JSON documents, hostile JSON text
(NaN, Infinity, 1e400, 5000-digit numbers, lone surrogates, deep nesting, BOM, Latin-1), odd
headers and framings, byte-level mutations of whole requests, now and then a large but legal request
(thousands of tool calls, messages or images), some pipelined and some sent in small pieces.
Every answer is read strictly (tests/wire_check.py). The upstreams behave, so any 5xx is
agproxy's own failure; HTTP's 501 (unsupported transfer coding) and 505 (HTTP version) answer the
client's framing and are listed apart.

At the end it prints: cases, answers by status class, 5xx, dropped connections (no answer),
answers with injected or invalid header lines, other malformed answers, upstream keys in answers or
the log, internal errors logged, answer times (p50, p99, max, and the slowest cases), and the RSS
of agproxy before and after (VmRSS, and VmHWM, its peak). It exits 1 if any of those failure counts
is non-zero or agproxy died (or an answer took longer than ``--max-latency``, when given), else 0.

With ``--faults`` (a share of the cases, 0.3 by default), cases also go to upstreams that misbehave:
one upstream per recipe of tests/fakes/misbehaving.py and per kind it applies to (wrong status lines,
framings, bodies, event streams, resets, hangs, trickles, deep JSON, echoed keys, ...), reached by
the model ``fault.<kind>.<recipe>``. There a 5xx is the upstream's fault and allowed, as long as the
answer is well formed and agproxy logs no internal error; a dropped connection, a hang past the
timeout, a malformed answer or a key anywhere still fail the run.

Everything goes to 127.0.0.1; the run is bounded by ``--cases`` and ``--minutes`` and stops itself.
Standard library only (it runs with the system python3).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.misbehaving import GROUPS, KEYS, RECIPES, MisbehavingUpstream, Send, good, live_config  # noqa: E402
from tests.wire_check import Answer, ResponseReader, connect, generic_problems, incomplete, leaked  # noqa: E402

READY = re.compile(r"^agproxy listening on http://(\S+):(\d+)$")
MODELS = ["demo-x", "anth-x", "compat-x", "oa-x", "claude-sonnet-4-5", "claude-3-5-haiku-latest", "", "x" * 300]
WORDS = ["message_start", "content_block_delta", "message_stop", "error", "text", "tool_use", "server_tool_use",
         "thinking", "redacted_thinking", "tool_result", "image", "document", "user", "assistant", "system", "tool",
         "base64", "url", "auto", "any", "none", "enabled", "adaptive", "disabled", "ephemeral", "image/png",
         "application/pdf", "Warmup", "", "\x00", "\u2028", "\U0001F600", "\\", "\"", "{", "[DONE]"]
KEY_NAMES = ["type", "content", "text", "id", "name", "input", "role", "model", "messages", "max_tokens", "stream",
             "system", "tools", "tool_choice", "stop_sequences", "thinking", "budget_tokens", "source", "media_type",
             "data", "url", "tool_use_id", "is_error", "cache_control", "metadata", "user_id", "input_schema",
             "temperature", "top_p", "top_k", "signature", "disable_parallel_tool_use", "context_management",
             "output_config", "display", "effort", "citations", "title"]
PATHS = ["/v1/messages"] * 14 + ["/v1/messages/count_tokens"] * 4 + [
    "/v1/messages?beta=true", "/healthz", "/", "/v1/models", "/v1/models/claude", "/v1/models/anth-x",
    "/v1/agproxy/accounts", "/v1/agproxy/stats", "/v1/api/event_logging/batch", "/v1/v1/messages", "/nope",
    "/v1/models/%00%ff", "//v1/messages", "/v1/messages/../healthz", "*"]
TOKENS = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b"\xff", b"\xb2", b"\xef\xbb\xbf", b"\r\n\r\n",
          b"Content-Length: 99\r\n", b"Content-Length: -1\r\n", b"Content-Length: \xb2\r\n",
          b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip\r\n", b"0\r\n\r\n", b"ffffffffffffffffff\r\n",
          b"HTTP/1.1", b"HTTP/2.0", b"GET ", b"%00", b"9" * 30, b" \t folded\r\n", b"Host: evil.example\r\n",
          b"Expect: 100-continue\r\n", b"Connection: close\r\n", b"\xc3\x28", b"a" * 5000]
#: which kinds of upstream each group of misbehaviours applies to (see misbehaving.GROUPS)
FAULT_KINDS = {"http": ("anthropic", "openai", "gemini"), "sse": ("anthropic",), "oa_sse": ("openai",),
               "oa_json": ("openai",)}
#: the upstream timeout_s of the misbehaving upstreams: short, so that a hang answers well within --timeout
FAULT_TIMEOUT_S = 3.0
#: HTTP's own 5xx for a client's framing, not agproxy failing: 501 (transfer coding), 505 (version)
CLIENT_5XX = (501, 505)


# -- random requests -----------------------------------------------------------------------------------

def rand_text(r: random.Random) -> str:
    roll = r.random()
    if roll < 0.4:
        return r.choice(WORDS)
    if roll < 0.8:
        return "".join(r.choice("abcxyz 019_-{}\"\\\n\t") for _ in range(r.randint(0, 12)))
    return "".join(chr(r.choice([r.randint(0, 0x7f), r.randint(0x80, 0xffff), r.randint(0x10000, 0x10ffff)]))
                   for _ in range(r.randint(1, 6)))


def rand_json(r: random.Random, depth: int = 0) -> Any:
    kinds = ["null", "bool", "int", "float", "text"] + (["list", "dict"] * 2 if depth < 4 else [])
    kind = r.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return r.random() < 0.5
    if kind == "int":
        return r.choice([0, 1, -1, 5, 2 ** 31, 2 ** 63, -(2 ** 63), 10 ** 20, r.randint(-1000, 10 ** 7)])
    if kind == "float":
        return r.choice([0.5, -0.0, 1e308, 1e-308, float("nan"), float("inf"), float("-inf"), r.random()])
    if kind == "text":
        return rand_text(r)
    if kind == "list":
        return [rand_json(r, depth + 1) for _ in range(r.randint(0, 4))]
    return {(r.choice(KEY_NAMES) if r.random() < 0.7 else rand_text(r)): rand_json(r, depth + 1)
            for _ in range(r.randint(0, 5))}


def rand_block(r: random.Random) -> Dict[str, Any]:
    kind = r.choice(["text", "text", "image", "document", "tool_use", "tool_result", "thinking",
                     "redacted_thinking", "server_tool_use", "web_search_tool_result", "weird"])
    if kind == "text":
        block: Dict[str, Any] = {"type": "text", "text": rand_text(r) or "hi"}
    elif kind in ("image", "document"):
        block = {"type": kind, "source": r.choice([
            {"type": "base64", "media_type": r.choice(["image/png", "application/pdf", "text/plain"]), "data": "AAAA"},
            {"type": "url", "url": "http://127.0.0.1:9/x.png"}, {"type": "text", "media_type": "text/plain",
                                                                "data": "doc"}])}
    elif kind in ("tool_use", "server_tool_use"):
        block = {"type": kind, "id": f"toolu_{r.randint(0, 9)}", "name": r.choice(["Bash", "Read", "web_search"]),
                 "input": {"command": "ls"}}
    elif kind == "tool_result":
        block = {"type": "tool_result", "tool_use_id": f"toolu_{r.randint(0, 9)}", "is_error": r.random() < 0.3,
                 "content": r.choice(["ok", [{"type": "text", "text": "ok"}], []])}
    elif kind == "thinking":
        block = {"type": "thinking", "thinking": "hmm", "signature": rand_text(r)}
    elif kind == "redacted_thinking":
        block = {"type": "redacted_thinking", "data": "abc"}
    else:
        block = {"type": kind}
    if r.random() < 0.2:
        block["cache_control"] = {"type": "ephemeral"}
    return block


def rand_request(r: random.Random) -> Dict[str, Any]:
    messages = []
    for i in range(r.randint(1, 5)):
        role = r.choice(["user", "assistant"]) if r.random() < 0.3 else ("user" if i % 2 == 0 else "assistant")
        content: Any = rand_text(r) or "hi" if r.random() < 0.4 else [rand_block(r) for _ in range(r.randint(1, 3))]
        messages.append({"role": role, "content": content})
    body: Dict[str, Any] = {"model": r.choice(MODELS[:4]) if r.random() < 0.9 else r.choice(MODELS),
                            "max_tokens": r.choice([1, 16, 1024, 64000]), "messages": messages}
    if r.random() < 0.4:
        body["stream"] = True
    if r.random() < 0.3:
        body["system"] = r.choice(["Be brief.", [{"type": "text", "text": "sys", "cache_control": {"type":
                                                                                                    "ephemeral"}}]])
    if r.random() < 0.3:
        body["tools"] = [{"name": "Read", "description": "read", "input_schema": {"type": "object", "$schema": "x"}},
                         {"type": "bash_20250124", "name": "bash"}, {"type": "web_search_20250305",
                                                                     "name": "web_search"}][:r.randint(1, 3)]
        body["tool_choice"] = r.choice([{"type": "auto"}, {"type": "any"}, {"type": "tool", "name": "Read"},
                                        {"type": "none"}, {"type": "tool", "name": "web_search"}])
    if r.random() < 0.2:
        body["thinking"] = r.choice([{"type": "enabled", "budget_tokens": 1024}, {"type": "adaptive"},
                                     {"type": "disabled"}])
    if r.random() < 0.2:
        body["stop_sequences"] = ["###", ""]
    if r.random() < 0.2:
        body["metadata"] = {"user_id": r.choice(["u1", '{"session_id": "s"}', "user_x_session_abc"])}
    return body


def big_request(r: random.Random) -> Dict[str, Any]:
    """A large but legal request: thousands of tool calls, same-role or system messages, or images."""
    n = r.choice([2000, 5000, 10000])
    shape = r.choice(["tools", "results_after_text", "same_role", "system", "images", "blocks"])
    calls = [{"type": "tool_use", "id": f"toolu_{i}", "name": "Bash", "input": {}} for i in range(n)]
    if shape == "tools":
        messages = [{"role": "user", "content": "go"}, {"role": "assistant", "content": calls},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": "ok"}
                                                 for i in reversed(range(n))]}]
    elif shape == "results_after_text":
        messages = [{"role": "user", "content": "go"}, {"role": "assistant", "content": calls},
                    {"role": "user", "content": [b for i in range(n) for b in (
                        {"type": "text", "text": "x"}, {"type": "tool_result", "tool_use_id": f"toolu_{i}"})]}]
    elif shape == "same_role":
        messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]} for _ in range(n)]
    elif shape == "system":
        messages = [{"role": "system" if i % 2 else "user", "content": "s"} for i in range(n)]
    elif shape == "images":
        messages = [{"role": "user", "content": [{"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": "AAAA"}} for _ in range(n // 4)]}]
    else:
        messages = [{"role": "user", "content": [{"type": "text", "text": "w"} for _ in range(n)]}]
    return {"model": r.choice(MODELS[:4]), "max_tokens": 16, "messages": messages}


def replace_somewhere(r: random.Random, value: Any) -> Any:
    """Replace one node of ``value`` (at a random depth) by random JSON, or delete one key."""
    if not isinstance(value, (dict, list)) or not value or r.random() < 0.15:
        return rand_json(r)
    if isinstance(value, dict):
        key = r.choice(list(value))
        if r.random() < 0.15:
            value.pop(key)
        else:
            value[key] = replace_somewhere(r, value[key])
        return value
    index = r.randrange(len(value))
    value[index] = replace_somewhere(r, value[index])
    return value


def json_text(r: random.Random, body: Any) -> bytes:
    text = json.dumps(body, allow_nan=True, ensure_ascii=r.random() < 0.5)
    tweak = r.choice(["none"] * 6 + ["surrogate", "huge", "digits", "deep_list", "deep_object", "dup", "bom",
                                     "latin1", "truncate", "trailing"])
    if tweak == "surrogate":
        text = text.replace('"', '"\\ud800', 1)
    elif tweak == "huge":
        text = re.sub(r"\b\d+\b", "1e400", text, count=1)
    elif tweak == "digits":
        text = re.sub(r"\b\d+\b", "9" * r.choice([4301, 5000, 20000]), text, count=1)
    elif tweak == "deep_list" and text.endswith("}"):
        n = r.choice([50, 200, 1000, 100000])
        text = text[:-1] + ', "x": ' + "[" * n + "]" * n + "}"
    elif tweak == "deep_object" and text.endswith("}"):
        n = r.choice([50, 200, 1000, 50000])
        text = text[:-1] + ', "x": ' + '{"a":' * n + "1" + "}" * n + "}"
    elif tweak == "dup" and text.endswith("}"):
        text = text[:-1] + ', "model": 5, "messages": {}}'
    elif tweak == "bom":
        return b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass")
    elif tweak == "latin1":
        return text.encode("latin-1", "replace")
    elif tweak == "truncate":
        text = text[: r.randint(0, len(text))]
    elif tweak == "trailing":
        text += r.choice([" ", "}", "\x00", " 1", "\n\n{}"])
    return text.encode("utf-8", "surrogatepass")


def http_request(r: random.Random, method: str, path: str, body: Optional[bytes]) -> bytes:
    lines = [f"{method} {path} HTTP/{r.choice(['1.1'] * 12 + ['1.0'])}"]
    host = r.choice(["127.0.0.1"] * 12 + ["localhost:8045", "[::1]", "evil.example", ""])
    if host:
        lines.append(f"Host: {host}")
    if body is not None:
        lines.append("Content-Type: " + r.choice(["application/json"] * 10 + [
            "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded",
            "application/vnd.api+json", ""]))
    extra = [("anthropic-version", "2023-06-01"), ("anthropic-beta", "interleaved-thinking-2025-05-14,context-1m"),
             ("x-api-key", "client-key"), ("Authorization", "Bearer client"), ("Origin", "http://evil.example"),
             ("X-Claude-Code-Session-Id", rand_text(r).replace("\n", "")), ("Accept", "text/event-stream"),
             ("Connection", "close"), ("Expect", "100-continue"), ("Accept-Encoding", "gzip")]
    for name, value in extra:
        if r.random() < 0.15:
            lines.append(f"{name}: {value}")
    head = "\r\n".join(lines).encode("latin-1", "replace")
    if body is None:
        return head + b"\r\n\r\n"
    if r.random() < 0.15 and not head.endswith(b"HTTP/1.0"):
        pieces = [body[i:i + 7] for i in range(0, len(body), 7)] if r.random() < 0.5 else [body]
        chunked = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"
        return head + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    return head + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def mutate_bytes(r: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(r.randint(1, 4)):
        op = r.choice(["insert", "delete", "replace", "duplicate", "truncate", "case"])
        at = r.randint(0, len(out))
        if op == "insert":
            out[at:at] = r.choice(TOKENS) if r.random() < 0.7 else os.urandom(r.randint(1, 8))
        elif op == "delete":
            del out[at:at + r.randint(1, 8)]
        elif op == "replace" and at < len(out):
            out[at] = r.randint(0, 255)
        elif op == "duplicate":
            out[at:at] = out[at:at + r.randint(1, 40)]
        elif op == "truncate":
            del out[at:]
        elif op == "case":
            out[at:at + 12] = bytes(out[at:at + 12]).swapcase()
    return bytes(out)


def fault_models() -> List[str]:
    """The model names that reach a misbehaving upstream, one per (kind, recipe)."""
    return [f"fault.{kind}.{case}" for case, group in sorted(GROUPS.items()) for kind in FAULT_KINDS[group]]


def fault_config(fake: MisbehavingUpstream, config: Dict[str, Any]) -> Dict[str, Any]:
    """``config`` with one upstream per fault model, each with two accounts, ahead of its catch-all rule."""
    accounts = [{"name": "alice", "api_key": KEYS[0]}, {"name": "bob", "api_key": KEYS[1]}]
    upstreams, rules = [], []
    for model in fault_models():
        _, kind, case = model.split(".", 2)
        upstream: Dict[str, Any] = {"name": model, "kind": kind, "base_url": fake.url_for(case, kind, "fuzz"),
                                    "accounts": accounts, "timeout_s": FAULT_TIMEOUT_S,
                                    "connect_timeout_s": FAULT_TIMEOUT_S}
        if kind == "openai":
            upstream["openai"] = {"tokenize": "vllm"}
        upstreams.append(upstream)
        rules.append({"match": model, "upstream": model})
    return dict(config, upstreams=config["upstreams"] + upstreams, model_map=rules + config["model_map"])


def make_case(r: random.Random, mutate: bool = True, faults: float = 0.0) -> Tuple[str, bytes]:
    """(what kind of case, the bytes to send). With ``faults``, that share of the requests that
    generate ask for a model served by a misbehaving upstream (their kind is then ``fault``)."""
    if faults and r.random() < faults:
        body = rand_request(r) if r.random() < 0.8 else replace_somewhere(r, rand_request(r))
        if isinstance(body, dict):
            body["model"] = r.choice(FAULT_MODELS)
        path = r.choice(["/v1/messages"] * 5 + ["/v1/messages/count_tokens"])
        if isinstance(body, dict) and path.endswith("count_tokens"):
            body.pop("max_tokens", None)
        return "fault", http_request(r, "POST", path, json.dumps(body).encode())
    path = r.choice(PATHS)
    if not path.startswith("/v1/messages") and r.random() < 0.7:
        method = r.choice(["GET", "GET", "HEAD", "OPTIONS", "POST", "DELETE", "PATCH"])
        kind, data = "route", http_request(r, method, path, b"{}" if method in ("POST", "PATCH") else None)
    else:
        roll = r.random()
        if roll < 0.004:
            body, kind = big_request(r), "big"
        elif roll < 0.45:
            body = replace_somewhere(r, rand_request(r))
            kind = "field"
        elif roll < 0.6:
            body, kind = rand_json(r), "random_json"
        else:
            body, kind = rand_request(r), "valid"
        if isinstance(body, dict) and path.endswith("count_tokens"):
            body.pop("max_tokens", None)
        data = http_request(r, "POST", path, json_text(r, body))
    if mutate and r.random() < 0.25:
        kind, data = "bytes", mutate_bytes(r, data)
    return kind, data


FAULT_MODELS = fault_models()


def make_session(r: random.Random, faults: float = 0.0) -> Tuple[str, List[Tuple[str, bytes]], int]:
    """A connection's worth: (how it is sent, the requests with their methods, the pause between pieces
    in ms). ``single``: one request (perhaps mutated); ``pipelined``: 2-4 well-formed requests sent
    back to back; ``trickled``: one request sent in small pieces with pauses."""
    roll = r.random()
    if roll < 0.1:
        requests = []
        while len(requests) < r.randint(2, 4):
            kind, data = make_case(r, mutate=False)
            if not data.startswith(b"HEAD ") and b"Expect: 100-continue" not in data:
                requests.append(("GET" if data.startswith(b"GET ") else "POST", data))
        return "pipelined", requests, 0
    kind, data = make_case(r, faults=faults)
    method = "HEAD" if data.startswith(b"HEAD ") else "POST"  # read as HEAD: no body, whatever the status
    if roll < 0.2:  # a fault case stays one: its 5xx are the upstream's
        return "fault" if kind == "fault" else "trickled", [(method, data)], r.randint(0, 3)
    return kind, [(method, data)], 0


# -- running ----------------------------------------------------------------------------------------------

class Proxy:
    def __init__(self, program: Path, config: Path, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and k != "AGPROXY_CONFIG"}
        env["HOME"] = str(cwd)
        self.proc = subprocess.Popen([sys.executable, str(program), "--port", "0", "--config",
                                      str(config)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
        self.port = 0
        self.tail: Deque[str] = collections.deque(maxlen=200)
        self.internal: List[str] = []
        self._traceback_lines = 0
        self.leaks: List[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        if not self.ready.wait(20) or not self.port:
            self.stop()
            raise SystemExit("agproxy did not start:\n" + "".join(self.tail))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.tail.append(line)
            match = READY.match(line.rstrip("\n"))
            if match and not self.ready.is_set():
                self.port = int(match.group(2))
                self.ready.set()
            if ("internal error" in line or line.startswith("Traceback")) and len(self.internal) < 1000:
                self.internal.append(line.rstrip())
                self._traceback_lines = 40
            elif self._traceback_lines and self.internal:  # the traceback's lines, for the report
                self._traceback_lines -= 1
                self.internal[-1] += "\n      " + line.rstrip()
            if leaked(line, KEYS) and len(self.leaks) < 100:
                self.leaks.append(line.rstrip())
        self.ready.set()

    def memory(self) -> Dict[str, str]:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return {}
        return {k: v.strip() for k, v in (line.split(":", 1) for line in status.splitlines() if ":" in line)
                if k in ("VmRSS", "VmHWM")}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)




def send(port: int, data: bytes, timeout: float, half_close: bool = True) -> Answer:
    """One request on a fresh connection, one answer."""
    method = "HEAD" if data.startswith(b"HEAD ") else "POST"
    return send_session(port, [(method, data)], timeout, half_close)[0]


def send_session(port: int, requests: List[Tuple[str, bytes]], timeout: float, half_close: bool = True,
                 pause_ms: int = 0, rng: Optional[random.Random] = None) -> List[Answer]:
    """Send the requests on one connection (in small pieces with ``pause_ms`` between them, if set),
    half-close, and read an answer for each until agproxy says it closes (``Connection: close``)."""
    sock = connect(port, timeout)
    if isinstance(sock, Answer):
        return [sock]
    data = b"".join(d for _, d in requests)
    with sock:
        try:
            if pause_ms and rng is not None:
                at = 0
                while at < len(data):
                    step = rng.randint(1, max(1, len(data) // 8))
                    sock.sendall(data[at:at + step])
                    at += step
                    time.sleep(pause_ms / 1000)
            else:
                sock.sendall(data)
            if half_close and (not data.strip(b"\r\n") or incomplete(data)):  # where a truncated request ends
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        reader = ResponseReader(sock)
        answers = []
        for method, _ in requests:
            answer = reader.read(timeout, method, expect_continue=True)
            answers.append(answer)
            if answer.dropped or answer.problems or "close" in (answer.header("connection") or "").lower():
                break
        return answers


class Tally:
    def __init__(self, keep: int) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()
        self.kinds: collections.Counter = collections.Counter()
        self.examples: Dict[str, List[str]] = collections.defaultdict(list)
        self.keep = keep
        self.failures: List[Tuple[str, bytes]] = []
        self.latencies: List[float] = []
        self.slowest: List[Tuple[float, str]] = []

    def case(self, kind: str) -> None:
        with self.lock:
            self.counts["cases"] += 1
            self.kinds[kind] += 1

    def add(self, kind: str, data: bytes, answer: Answer) -> None:
        labels = []
        if answer.dropped or (answer.status == 0 and not answer.timed_out):
            if data.strip(b"\r\n"):
                labels.append("dropped")
            status_class = "none"
        elif answer.timed_out and answer.status == 0:
            labels.append("no_answer_in_time")
            status_class = "none"
        else:
            status_class = f"{answer.status // 100}xx" if 100 <= answer.status <= 599 else "other"
            if answer.status >= 500:
                if kind == "fault":
                    labels.append("upstream_fault_5xx")
                else:
                    labels.append("client_framing_5xx" if answer.status in CLIENT_5XX else "server_5xx")
            problems = generic_problems(answer, KEYS, allow_500=True)
            if any("control character" in p or "malformed header line" in p for p in answer.problems):
                labels.append("injected_header")
            if any("upstream key" in p for p in problems):
                labels.append("key_leak")
            other = [p for p in problems if "control character" not in p and "malformed header line" not in p
                     and "upstream key" not in p and not p.startswith("agproxy answered 500")]
            if other:
                labels.append("malformed_answer")
        with self.lock:
            self.latencies.append(answer.elapsed)
            if not answer.dropped:
                self.slowest = sorted(self.slowest + [(answer.elapsed, f"[{kind}] {data[:160]!r} -> HTTP "
                                                                      f"{answer.status}")], reverse=True)[:5]
            self.counts["answers"] += 1
            self.counts["class:" + status_class] += 1
            for label in labels:
                self.counts[label] += 1
                if len(self.examples[label]) < self.keep:
                    self.examples[label].append(f"[{kind}] {data[:240]!r}\n        -> {answer.describe(240)}")
                if label not in ALLOWED:
                    self.failures.append((label, data))


FAILING = ("server_5xx", "dropped", "no_answer_in_time", "injected_header", "malformed_answer", "key_leak")
#: labels counted and shown, but not failures: HTTP's own 5xx for a client's framing, and the
#: 5xx a misbehaving upstream earns (its answer is still checked like any other)
ALLOWED = ("client_framing_5xx", "upstream_fault_5xx")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20000, help="requests to send (default 20000)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    parser.add_argument("--minutes", type=float, default=15.0, help="stop sending after this long (default 15)")
    parser.add_argument("--workers", type=int, default=16, help="connections in flight at once (default 16)")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for each answer")
    parser.add_argument("--max-latency", type=float, default=0.0,
                        help="also fail if any answer took longer than this many seconds (default: off)")
    parser.add_argument("--examples", type=int, default=5, help="examples printed per kind of failure")
    parser.add_argument("--agproxy", type=Path, default=ROOT / "agproxy.py",
                        help="the program to run (default agproxy.py; agproxy.pyz works too)")
    parser.add_argument("--faults", type=float, nargs="?", const=0.3, default=0.0,
                        help="send this share of the cases (0.3 when no number is given) to misbehaving upstreams")
    parser.add_argument("--save", type=Path, default=None, help="write each failing request to this directory")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    cases = max(0, min(args.cases, 10_000_000))
    faults = min(max(args.faults, 0.0), 1.0)
    print(f"fuzz: seed {seed}, up to {cases} cases, at most {args.minutes:g} min, {args.workers} workers"
          + (f", {faults:.0%} to {len(FAULT_MODELS)} misbehaving upstreams" if faults else ""), flush=True)

    with tempfile.TemporaryDirectory(prefix="agproxy-fuzz-") as tmp, \
            MisbehavingUpstream(dict(RECIPES, fine=lambda ctx: [Send(good(ctx))])) as fake:
        config = live_config(fake, "fuzz", 10)
        if faults:
            config = fault_config(fake, config)
        path = Path(tmp) / "fuzz-config.json"
        path.write_text(json.dumps(config))
        proxy = Proxy(args.agproxy.resolve(), path, Path(tmp))
        try:
            return run(args, seed, cases, proxy, fake)
        finally:
            proxy.stop()


def run(args: argparse.Namespace, seed: int, cases: int, proxy: Proxy, fake: MisbehavingUpstream) -> int:
    for _ in range(20):  # warm up so "before" is the resident size of a running agproxy, not a fresh one
        send(proxy.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 5, False)
    before = proxy.memory()
    tally = Tally(args.examples)
    master = random.Random(seed)
    deadline = time.monotonic() + args.minutes * 60
    started = time.monotonic()
    sent = 0

    def one(case_seed: int) -> None:
        if time.monotonic() > deadline:
            return
        r = random.Random(case_seed)
        kind, requests, pause_ms = make_session(r, args.faults)
        answers = send_session(proxy.port, requests, args.timeout, pause_ms=pause_ms, rng=r)
        tally.case(kind)
        for (_, data), answer in zip(requests, answers):
            tally.add(kind, data, answer)

    batch = max(1, args.workers * 8)
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        while sent < cases and time.monotonic() < deadline and proxy.proc.poll() is None:
            n = min(batch, cases - sent)
            list(pool.map(one, [master.getrandbits(48) for _ in range(n)]))
            sent += n
            if sent % 2000 < batch:
                done = tally.counts["cases"]
                print(f"  {done} cases, {time.monotonic() - started:.0f} s, "
                      f"failures so far: {sum(tally.counts[k] for k in FAILING)}", flush=True)
    elapsed = time.monotonic() - started
    time.sleep(1.0)
    alive = proxy.proc.poll() is None
    after = proxy.memory()
    health: Optional[Answer] = send(proxy.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close"
                                    b"\r\n\r\n", 5, False) if alive else None
    report(args, seed, tally, elapsed, before, after, alive, health, proxy, fake)
    if args.save is not None and tally.failures:
        args.save.mkdir(parents=True, exist_ok=True)
        for i, (label, data) in enumerate(tally.failures):
            (args.save / f"{i:05d}-{label}.bin").write_bytes(data)
        print(f"failing requests written to {args.save}")
    too_slow = bool(args.max_latency) and any(x > args.max_latency for x in tally.latencies)
    failed = any(tally.counts[k] for k in FAILING) or not alive or proxy.internal or proxy.leaks or \
        health is None or health.status != 200 or too_slow
    print("RESULT: " + ("FAIL" if failed else "PASS"))
    return 1 if failed else 0


def report(args: argparse.Namespace, seed: int, tally: Tally, elapsed: float, before: Dict[str, str],
           after: Dict[str, str], alive: bool, health: Optional[Answer], proxy: Proxy,
           fake: MisbehavingUpstream) -> None:
    counts = tally.counts

    def line(name: str, value: Any) -> None:
        print(f"  {name:<34} {value}")

    print(f"\nagproxy fuzz report (seed {seed}; reproduce: tools/fuzz.py --seed {seed} --cases {args.cases})")
    line("cases (connections)", f"{counts['cases']} in {elapsed:.1f} s ({counts['cases'] / max(elapsed, 0.001):.0f}/s)")
    line("requests answered or not", counts["answers"])
    line("cases by kind", ", ".join(f"{k} {v}" for k, v in sorted(tally.kinds.items())))
    line("answers by status class", ", ".join(f"{k} {counts['class:' + k]}" for k in (
        "1xx", "2xx", "3xx", "4xx", "5xx", "other", "none") if counts["class:" + k]))
    line("5xx (agproxy failing)", counts["server_5xx"])
    line("501/505 (client framing, allowed)", counts["client_framing_5xx"])
    if args.faults:
        line("5xx from misbehaving upstreams", f"{counts['upstream_fault_5xx']} (allowed; of "
                                               f"{tally.kinds['fault']} fault cases)")
    line("dropped (closed without answer)", counts["dropped"])
    line("no answer within the timeout", counts["no_answer_in_time"])
    line("injected/invalid header lines", counts["injected_header"])
    line("other malformed answers", counts["malformed_answer"])
    line("upstream key in an answer", counts["key_leak"])
    line("upstream key in agproxy's log", len(proxy.leaks))
    line("internal errors logged", len(proxy.internal))
    line("agproxy alive at the end", f"{alive}" + (f" (exit code {proxy.proc.returncode})" if not alive else ""))
    line("/healthz at the end", health.status if health is not None else "-")
    if tally.latencies:
        ordered = sorted(tally.latencies)
        pick = [ordered[min(len(ordered) - 1, int(len(ordered) * q))] for q in (0.5, 0.99)]
        line("answer time p50 / p99 / max", f"{pick[0] * 1000:.0f} ms / {pick[1] * 1000:.0f} ms / "
                                            f"{ordered[-1] * 1000:.0f} ms")
        if args.max_latency and ordered[-1] > args.max_latency:
            line("answers slower than --max-latency", sum(1 for x in ordered if x > args.max_latency))
    line("RSS before", before.get("VmRSS", "?"))
    line("RSS after", f"{after.get('VmRSS', '?')} (peak {after.get('VmHWM', '?')})")
    if fake.errors:
        line("fake upstream errors", fake.errors[:3])
    for label in FAILING + ("client_framing_5xx",):  # the upstream 5xx are expected: no examples
        if tally.examples.get(label):
            print(f"\n  examples of {label}:")
            for example in tally.examples[label]:
                print(f"    {example}")
    if tally.slowest:
        print("\n  slowest answers:")
        for took, what in tally.slowest:
            print(f"    {took:.2f} s  {what}")
    if proxy.internal:
        print("\n  internal errors logged (first 10):")
        for entry in proxy.internal[:10]:
            print(f"    {entry[:4000]}")
    if not alive:
        print("\n  agproxy's last log lines:\n" + "".join(f"    {x}" for x in list(proxy.tail)[-30:]))


if __name__ == "__main__":
    sys.exit(main())
