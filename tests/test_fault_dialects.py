"""The fault matrix of the other agents' routes (issue 21): the misbehaving upstream's cases x
upstream kind x way of asking through ``/v1/chat/completions``, ``/v1/responses`` and the Gemini
routes, through real agproxy processes, each answer judged in its client's own protocol.

Ways of asking (:data:`WAYS`): each dialect streamed (Chat, Responses, Gemini's SSE with
``alt=sse`` and its JSON array without), and whole (Chat, Responses, ``generateContent``,
``countTokens``) over the cases that matter (:data:`WHOLE_CASES`). What a client may see is the
Anthropic matrix's expectation (``tests/test_fault_matrix.py``'s ``EXPECT``) for the way of asking
it is like (a stream, a whole answer agproxy streams internally, a count).

Invariants, in the client's protocol: a well-formed HTTP/1.1 answer; an error in the dialect's shape
(OpenAI's ``{"error": {message, type, param, code}}``, Gemini's ``{"error": {code, message,
status}}`` with ``code`` the HTTP status) with an expected status; a stream that ends the protocol's
own way (Chat: ``data: [DONE]`` after a finish_reason, or a ``data: {"error": ...}`` line;
Responses: ``response.completed``/``incomplete``/``failed`` last, ``sequence_number`` from 0 and
increasing; Gemini SSE: a last chunk with a finishReason, or Gemini's bare error JSON, no SSE
comment; Gemini's JSON array: a strict JSON array, its last element a finished chunk or the error);
no upstream key in any byte (or agproxy's log); no agproxy internal error.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Tuple

import pytest

import agproxy
from tests.conftest import Agproxy, clean_env, write_config
from tests.fakes.misbehaving import ALICE_KEY, BOB_KEY, GROUPS, KEYS, MisbehavingUpstream
from tests.test_fault_matrix import (
    BIG_CASES,
    CASE_UPSTREAM_FIELDS,
    CLIENT_DEADLINE_S,
    ECHO_CASES,
    KINDS,
    ONLY_KINDS,
    ONLY_MODES,
    REQUEST_PADDING,
    UPSTREAM_TIMEOUT_S,
    Expect,
    expectation,
    spelled,
    strings_in,
    timeout_for,
)
from tests.test_fault_matrix import (
    Matrix as KindsMatrix,
)
from tests.wire_check import Answer, get, leaked, parse_sse, post_json, program_under_test, strict_json


@dataclasses.dataclass(frozen=True)
class Way:
    """One way of asking: ``name`` (in the fake's URL), the dialect, whether the client streams, and
    the Anthropic matrix's mode whose expectations it shares (``stream``, ``forced``, ``count``)."""

    name: str
    dialect: str  # chat, responses, gemini
    stream: bool
    like: str


WAYS = (Way("chat", "chat", True, "stream"), Way("resp", "responses", True, "stream"),
        Way("gem_sse", "gemini", True, "stream"), Way("gem_array", "gemini", True, "stream"),
        Way("chat_whole", "chat", False, "forced"), Way("resp_whole", "responses", False, "forced"),
        Way("gem_whole", "gemini", False, "forced"), Way("gem_count", "gemini", False, "count"))
WAY = {way.name: way for way in WAYS}
#: the upstreams' timeout_s here: longer than the Anthropic matrix's, since this one runs twice as
#: many cases at once, and on a loaded 2-core machine (CI runs the two matrices side by side) the
#: fake, one thread, met its 5 s late now and then
DIALECT_TIMEOUT_S = max(UPSTREAM_TIMEOUT_S, 8)

#: The cases a whole answer (and a count) is asked through: every status class, 429 with each
#: reset style, garbage, truncation, silence and timeouts, pings only, echoed credentials, deep JSON
#: and huge numbers, an account out of credit. (Streams get every case: that is where the dialects'
#: own code runs.)
WHOLE_CASES = frozenset(
    [case for case in GROUPS if case.startswith(("status_", "deep", "huge_counts", "context_window", "n_ctx"))]
    + ["out_of_credit", "out_of_credit_alice_then_ok", "garbage_instead_of_http", "body_html_200", "body_not_json",
       "body_json_not_message", "body_empty_200", "body_json_when_sse_asked", "body_sse_when_json_asked",
       "chunked_truncated", "cl_short", "reset_mid_body", "reset_after_request", "close_before_any_byte",
       "hang", "headers_then_hang", "slow_head_trickle", "pings_only", "no_length_then_close", "header_echo_key",
       "echo_header_credentials", "echo_header_credentials_401", "sse_ends_before_final_event", "sse_error_first",
       "sse_error_mid_stream", "sse_error_echo_key", "sse_stall", "sse_no_message_start", "sse_lone_surrogate",
       "oa_error_chunk", "oa_error_echo_key", "oa_no_finish_no_done", "oa_stall", "oaj_error_200"])


#: cases of tens of MB each, asked only these ways (the fake, a thread of this process, writes every
#: byte of them; the other ways' error ends are met by lighter cases)
HEAVY = {"sse_line_20mb": ("chat", "gem_array"), "oa_line_20mb": ("resp", "gem_sse")}


def runs() -> List[Tuple[str, str, str]]:
    """(kind, way, case) of every run: the Anthropic matrix's kinds per group, its ONLY_MODES and
    ONLY_KINDS read through each way's ``like``."""
    out = []
    for case, group in GROUPS.items():
        kinds = {"http": KINDS, "sse": ("anthropic",), "oa_sse": ("openai",), "oa_json": ("openai",)}[group]
        for kind in ONLY_KINDS.get(case, kinds):
            for way in WAYS:
                if way.like == "count" and group != "http":
                    continue
                if not way.stream and case not in WHOLE_CASES:
                    continue
                if kind != "anthropic" and (not way.stream or way.name == "gem_array"):
                    continue  # what differs by kind is the adapter, which the Anthropic matrix covers
                    # every way; the dialects' whole answers, errors and arrays are met on one kind
                if way.like not in ONLY_MODES.get(case, (way.like,)) or way.name not in HEAVY.get(case, (way.name,)):
                    continue
                out.append((kind, way.name, case))
    return out


RUNS = runs()


def model_name(kind: str, way: str, case: str) -> str:
    return f"{kind}.{way}.{case}"


def config_for(fake: MisbehavingUpstream, kind: str, ways: Tuple[str, ...], state: Path) -> Dict[str, Any]:
    upstreams, rules = [], []
    for run_kind, way, case in RUNS:
        if run_kind != kind or way not in ways:
            continue
        name = model_name(kind, way, case)
        upstream: Dict[str, Any] = {
            "name": name, "kind": kind, "base_url": fake.url_for(case, kind, way),
            "timeout_s": timeout_for(case, DIALECT_TIMEOUT_S),
            "connect_timeout_s": timeout_for(case, DIALECT_TIMEOUT_S),
            "accounts": [{"name": "alice@example.com", "api_key": ALICE_KEY},
                         {"name": "bob@example.com", "api_key": BOB_KEY}]}
        upstream.update(CASE_UPSTREAM_FIELDS.get(case, {}))
        upstreams.append(upstream)
        rules.append({"match": name, "upstream": name})
    return {"auth_mode": "off", "max_retry_attempts": 2, "state_file": str(state), "upstreams": upstreams,
            "model_map": rules}


def request_for(kind: str, way_name: str, case: str) -> Tuple[str, Dict[str, Any], List[Tuple[str, str]]]:
    """(path, body, headers) of the client's request in its own protocol."""
    way, model = WAY[way_name], model_name(kind, way_name, case)
    text = "hello there" + (" " + "x" * REQUEST_PADDING[case] if case in REQUEST_PADDING else "")
    openai_headers = [("Authorization", "Bearer client-key-not-for-upstream")]
    if way.dialect == "chat":
        body: Dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 64}
        if way.stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return "/v1/chat/completions", body, openai_headers
    if way.dialect == "responses":
        body = {"model": model, "input": [{"type": "message", "role": "user", "content": text}],
                "max_output_tokens": 64, "store": False}
        if way.stream:
            body["stream"] = True
        return "/v1/responses", body, openai_headers
    method = {"gem_sse": "streamGenerateContent?alt=sse", "gem_array": "streamGenerateContent",
              "gem_whole": "generateContent", "gem_count": "countTokens"}[way_name]
    body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if way.like != "count":
        body["generationConfig"] = {"maxOutputTokens": 64}
    return f"/v1beta/models/{model}:{method}", body, [("x-goog-api-key", "client-key-not-for-upstream")]


def ask(port: int, kind: str, way: str, case: str, deadline: float = CLIENT_DEADLINE_S) -> Answer:
    path, body, headers = request_for(kind, way, case)
    return post_json(port, path, body, deadline, headers)


# -- reading an answer in its client's protocol --------------------------------------------------------

@dataclasses.dataclass
class Reading:
    """What a client made of an answer: how its stream ended (``done``: the protocol's normal end;
    ``error``: its own error end; None: neither), what is wrong with it, the JSON values it holds,
    and the text its pieces join into."""

    end: Optional[str] = None
    problems: List[str] = dataclasses.field(default_factory=list)
    values: List[Any] = dataclasses.field(default_factory=list)
    text: str = ""


def openai_error_problems(value: Any) -> List[str]:
    """OpenAI's error shape: ``{"error": {"message": str, "type": str, "param", "code"}}``."""
    error = value.get("error") if isinstance(value, dict) else None
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return [f"not OpenAI's error shape: {json.dumps(value)[:200]}"]
    problems = []
    if not isinstance(error["message"], str) or not isinstance(error["type"], str):
        problems.append(f"error.message or error.type is not a string: {json.dumps(error)[:200]}")
    if error["code"] is not None and not isinstance(error["code"], str):
        problems.append(f"error.code is neither null nor a string: {error['code']!r}")
    if error["param"] is not None and not isinstance(error["param"], str):
        problems.append(f"error.param is neither null nor a string: {error['param']!r}")
    if error.get("code") == "invalid_api_key":
        problems.append("an upstream's failure reached the client as its own key being invalid")
    return problems


def gemini_error_problems(value: Any, status: Optional[int] = None) -> List[str]:
    """Gemini's error shape: ``{"error": {"code": int, "message": str, "status": NAME}}``, with
    google.rpc ``details`` where agproxy knows when to come back (a RetryInfo of whole seconds)."""
    error = value.get("error") if isinstance(value, dict) else None
    if not isinstance(error, dict) or set(error) - {"details"} != {"code", "message", "status"}:
        return [f"not Gemini's error shape: {json.dumps(value)[:200]}"]
    problems = []
    details = error.get("details", [])
    if not isinstance(details, list) or "details" in error and not details:
        problems.append(f"error.details is not a list of details: {details!r:.200}")
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict) or not str(detail.get("@type", "")).startswith("type.googleapis.com/"):
            problems.append(f"error.details holds what is not a google.rpc detail: {detail!r:.200}")
        elif detail["@type"].endswith(".RetryInfo") and not re.fullmatch(r"[0-9]{1,6}s", str(detail.get("retryDelay"))):
            problems.append(f"a RetryInfo's retryDelay is not whole seconds: {detail!r:.200}")
    if not isinstance(error["code"], int) or isinstance(error["code"], bool) or not 400 <= error["code"] <= 599:
        problems.append(f"error.code is not an HTTP error status: {error['code']!r}")
    elif status is not None and error["code"] != status:
        problems.append(f"error.code {error['code']} is not the answer's status {status}")
    if not isinstance(error["message"], str):
        problems.append("error.message is not a string")
    if not isinstance(error["status"], str) or not re.fullmatch(r"[A-Z_]+", error["status"]):
        problems.append(f"error.status is not a google.rpc code name: {error['status']!r}")
    elif error["status"] == "UNAUTHENTICATED":
        problems.append("an upstream's failure reached the client as its own key being refused")
    return problems


def error_problems(dialect: str, value: Any, status: Optional[int] = None) -> List[str]:
    return gemini_error_problems(value, status) if dialect == "gemini" else openai_error_problems(value)


def read_chat_stream(body: bytes) -> Reading:
    """A Chat Completions stream: chunks, a finish_reason, (a usage chunk), ``[DONE]``; or an error line."""
    reading = Reading()
    events, reading.problems = parse_sse(body)
    finished = False
    for i, (_, data) in enumerate(events):
        if reading.end is not None:
            reading.problems.append(f"data after the stream's end: {data[:120]!r}")
            break
        if data == "[DONE]":
            reading.end = "done"
            if not finished:
                reading.problems.append("[DONE] without a finish_reason before it")
            continue
        try:
            value = strict_json(data)
        except ValueError as exc:
            reading.problems.append(f"chunk {i} is not strict JSON ({exc}): {data[:120]!r}")
            continue
        reading.values.append(value)
        if isinstance(value, dict) and "error" in value:
            reading.end = "error"
            reading.problems += openai_error_problems(value)
            continue
        if not isinstance(value, dict) or value.get("object") != "chat.completion.chunk" or \
                not isinstance(value.get("choices"), list):
            reading.problems.append(f"chunk {i} is not a chat.completion.chunk: {data[:120]!r}")
            continue
        for choice in value["choices"]:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                reading.problems.append(f"chunk {i} has a choice without a delta: {data[:120]!r}")
                continue
            reading.text += delta.get("content") or ""
            if choice.get("finish_reason") is not None:
                finished = True
    if reading.end is None:
        reading.problems.append(f"the stream stops without [DONE] or an error line (last: "
                                f"{events[-1][1][:120] if events else None!r})")
    return reading


RESPONSES_ENDS = {"response.completed": "done", "response.incomplete": "done", "response.failed": "error"}


def read_responses_stream(body: bytes) -> Reading:
    """A Responses event stream: ``response.created`` first, ``sequence_number`` 0, 1, 2 ...,
    each event named after its data's type, one of :data:`RESPONSES_ENDS` last."""
    reading = Reading()
    events, reading.problems = parse_sse(body)
    last = -1
    for i, (name, data) in enumerate(events):
        if reading.end is not None:
            reading.problems.append(f"event after the stream's end: {name} {data[:120]!r}")
            break
        try:
            value = strict_json(data)
        except ValueError as exc:
            reading.problems.append(f"event {i} ({name}) is not strict JSON ({exc}): {data[:120]!r}")
            continue
        reading.values.append(value)
        kind = value.get("type") if isinstance(value, dict) else None
        if kind != name:
            reading.problems.append(f"event {i} is named {name!r} but its data is a {kind!r}")
        if i == 0 and kind != "response.created":
            reading.problems.append(f"the stream begins with {kind!r}, not response.created")
        number = value.get("sequence_number") if isinstance(value, dict) else None
        if not isinstance(number, int) or isinstance(number, bool) or number <= last or (i == 0 and number != 0):
            reading.problems.append(f"event {i} ({kind}) has sequence_number {number!r} after {last}")
        else:
            last = number
        if kind == "response.output_text.delta":
            reading.text += str(value.get("delta", ""))
        if kind in RESPONSES_ENDS:
            reading.end = RESPONSES_ENDS[kind]
            response = value.get("response")
            if not isinstance(response, dict) or response.get("status") != kind.split(".")[1]:
                reading.problems.append(f"{kind} does not carry a response of that status: {data[:200]!r}")
            elif kind == "response.failed":
                error = response.get("error")
                if not isinstance(error, dict) or not isinstance(error.get("code"), str) or \
                        not isinstance(error.get("message"), str):
                    reading.problems.append(f"response.failed without an error code and message: {data[:200]!r}")
    if reading.end is None:
        reading.problems.append("the stream stops without response.completed, incomplete or failed (last: "
                                f"{events[-1][0] if events else None})")
    return reading


def gemini_chunk_problems(value: Any) -> List[str]:
    """A GenerateContentResponse chunk: candidates whose content has parts."""
    candidates = value.get("candidates") if isinstance(value, dict) else None
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        return [f"not a GenerateContentResponse: {json.dumps(value)[:200]}"]
    content = candidates[0].get("content")
    if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
        return [f"a candidate without content.parts: {json.dumps(value)[:200]}"]
    return []


def _gemini_text(value: Any) -> str:
    try:
        return "".join(str(part.get("text", "")) for part in value["candidates"][0]["content"]["parts"])
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""


def _read_gemini_values(values: List[Any], reading: Reading) -> None:
    for i, value in enumerate(values):
        if reading.end is not None:
            reading.problems.append(f"chunk after the stream's end: {json.dumps(value)[:120]}")
            break
        reading.values.append(value)
        if isinstance(value, dict) and "error" in value:
            reading.end = "error"
            reading.problems += gemini_error_problems(value)
            continue
        reading.problems += [f"chunk {i}: {p}" for p in gemini_chunk_problems(value)]
        reading.text += _gemini_text(value)
        if isinstance(value, dict) and isinstance(value.get("candidates"), list) and value["candidates"] and \
                isinstance(value["candidates"][0], dict) and value["candidates"][0].get("finishReason"):
            reading.end = "done"
    if reading.end is None:
        reading.problems.append(f"the stream stops without a finishReason or an error (last: "
                                f"{json.dumps(values[-1])[:120] if values else None})")


def read_gemini_sse(body: bytes) -> Reading:
    """``alt=sse``: ``data: {chunk}`` events, the last with a finishReason, or Gemini's error JSON
    bare on its own line at the end; no SSE comment (Gemini CLI's parser stalls on one)."""
    reading = Reading()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Reading(problems=[f"the stream is not UTF-8 ({exc})"])
    if text and not text.endswith("\n"):
        reading.problems.append(f"the stream does not end with a line break: {text[-120:]!r}")
    values = []
    for line in re.split(r"\r\n|\r|\n", text):
        if not line:
            continue
        if line.startswith(":"):
            reading.problems.append(f"an SSE comment, on which Gemini CLI's parser stalls: {line[:80]!r}")
            continue
        data = line[5:].lstrip(" ") if line.startswith("data:") else line
        try:
            value = strict_json(data)
        except ValueError as exc:
            reading.problems.append(f"a line that is neither a data event nor JSON ({exc}): {line[:120]!r}")
            continue
        if not line.startswith("data:") and not (isinstance(value, dict) and "error" in value):
            reading.problems.append(f"a bare line that is not Gemini's error: {line[:120]!r}")
        values.append(value)
    _read_gemini_values(values, reading)
    return reading


def read_gemini_array(body: bytes) -> Reading:
    """A stream without ``alt=sse``: one strict JSON array of chunks (the last finished, or the error)."""
    try:
        value = strict_json(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return Reading(problems=[f"the stream is not a strict JSON array ({exc}): ...{body[-200:]!r}"])
    if not isinstance(value, list):
        return Reading(problems=[f"the stream is JSON but not an array: {body[:200]!r}"])
    reading = Reading()
    _read_gemini_values(value, reading)
    return reading


def read_whole(way: Way, body: bytes) -> Reading:
    """A whole answer: Chat's chat.completion, a Responses response, Gemini's generateContent answer
    or countTokens count."""
    try:
        value = strict_json(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return Reading(problems=[f"the body is not strict JSON ({exc})"])
    reading = Reading(end="done", values=[value])
    shown = json.dumps(value)[:200]
    if way.like == "count":
        tokens = value.get("totalTokens") if isinstance(value, dict) else None
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            reading.problems.append(f"countTokens answered {shown}")
    elif way.dialect == "chat":
        choices = value.get("choices") if isinstance(value, dict) else None
        if value.get("object") != "chat.completion" or not isinstance(choices, list) or len(choices) != 1 or \
                not isinstance(choices[0].get("message"), dict) or not isinstance(choices[0].get("finish_reason"),
                                                                                  str):
            reading.problems.append(f"not a finished chat.completion: {shown}")
        else:
            reading.text = str(choices[0]["message"].get("content") or "")
    elif way.dialect == "responses":
        if not isinstance(value, dict) or value.get("object") != "response" or \
                value.get("status") not in ("completed", "incomplete") or not isinstance(value.get("output"), list):
            reading.problems.append(f"not a finished response: {shown}")
    else:
        reading.problems += gemini_chunk_problems(value)
        if not reading.problems and not value["candidates"][0].get("finishReason"):
            reading.problems.append(f"a generateContent answer without a finishReason: {shown}")
        reading.text = _gemini_text(value)
    return reading


STREAM_CONTENT_TYPES = {"chat": "text/event-stream", "resp": "text/event-stream", "gem_sse": "text/event-stream",
                        "gem_array": "application/json"}
STREAM_READERS = {"chat": read_chat_stream, "resp": read_responses_stream, "gem_sse": read_gemini_sse,
                  "gem_array": read_gemini_array}


def read(way: Way, answer: Answer) -> Reading:
    """The answer as its client reads it (a 200: its stream or whole answer)."""
    if way.stream and answer.content_type == STREAM_CONTENT_TYPES[way.name]:
        return STREAM_READERS[way.name](answer.body)
    if answer.content_type != "application/json":
        return Reading(problems=[f"content-type {answer.content_type!r} for a {way.name} client"])
    if way.stream:  # a Chat or Responses client asked for a stream and got a whole answer
        return Reading(problems=[f"a streaming {way.dialect} client got a whole JSON answer"])
    return read_whole(way, answer.body)


# -- judging ------------------------------------------------------------------------------------------

def client_statuses(dialect: str, statuses: Any) -> FrozenSet[int]:
    """What a client of ``dialect`` is answered for each of agproxy's statuses: an overload is 503 on
    OpenAI's and Gemini's routes, and a 4xx no retry changes is 400 on /v1/responses (Codex CLI)."""
    said = agproxy.responses_error_status if dialect == "responses" else agproxy.overload_status
    return frozenset(said(status) for status in statuses)


def judge(kind: str, way_name: str, case: str, answer: Answer, expect: Expect) -> List[str]:
    way = WAY[way_name]
    problems = list(answer.problems)
    if answer.dropped or answer.status == 0:
        return problems or ["no answer"]
    if answer.timed_out:
        return problems + [f"no complete answer within {CLIENT_DEADLINE_S:.0f} s"]
    problems += [f"the upstream key {secret[:14]}... appears in the answer" for secret in leaked(answer.raw, KEYS)]
    if b"internal error in agproxy" in answer.body:
        problems.append("agproxy's own internal error")
    if answer.status in (401, 403):
        problems.append("an upstream's failure reached the client as an authentication/permission error")
    if answer.status != 200:
        if answer.status not in client_statuses(way.dialect, expect.statuses):
            problems.append(f"status {answer.status} is not what the client should see ({expect.describe()})")
        if answer.content_type != "application/json":
            problems.append(f"an error with content-type {answer.content_type!r}")
        try:
            problems += error_problems(way.dialect, strict_json(answer.body), answer.status)
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(f"the error body is not strict JSON ({exc}): {answer.body[:200]!r}")
        return problems
    reading = read(way, answer)
    problems += reading.problems
    if reading.end == "done" and not expect.ok:
        problems.append("the answer ended as a finished one, but the upstream's answer was broken")
    elif reading.end == "error" and not (way.stream and expect.event_error):
        problems.append("the stream ended with an error; expected " + expect.describe())
    return problems


@dataclasses.dataclass
class Result:
    kind: str
    way: str
    case: str
    expect: Expect
    answer: Answer
    problems: List[str]

    def report(self) -> str:
        lines = [f"{self.kind}/{self.way}/{self.case}", f"  expected: {self.expect.describe()}",
                 f"  agproxy:  {self.answer.describe(600)}"]
        return "\n".join(lines + [f"  - {p}" for p in self.problems])


def rate_limit_aftermath(port: int, kind: str, way: str, case: str) -> List[str]:
    """After a 429 with an absurd reset: the accounts page and a further request still work."""
    problems = []
    accounts = get(port, "/v1/agproxy/accounts", CLIENT_DEADLINE_S)
    if accounts.status != 200 or accounts.problems:
        problems.append(f"/v1/agproxy/accounts: {accounts.describe(200)}")
    again = ask(port, kind, way, case)
    if again.status not in (200, 429):
        problems.append(f"the request after answered {again.describe(200)}")
    else:
        problems += [f"the request after: {p}" for p in judge(kind, way, case, again, Expect(frozenset({429}), True))]
    retry_after = again.header("retry-after")
    if again.status == 429 and retry_after is not None and not re.fullmatch(r"\d{1,10}", retry_after):
        problems.append(f"the request after: agproxy's 429 says retry-after {retry_after[:40]!r}")
    return problems


def run_one(port: int, kind: str, way: str, case: str) -> Result:
    expect = expectation(kind, WAY[way].like, case)
    answer = ask(port, kind, way, case)
    problems = judge(kind, way, case, answer, expect)
    if expect.rate_limited and not answer.dropped:
        problems += rate_limit_aftermath(port, kind, way, case)
    return Result(kind, way, case, expect, answer, problems)


# -- the matrix ---------------------------------------------------------------------------------------

STREAM_WAYS = tuple(w.name for w in WAYS if w.stream)
WHOLE_WAYS = tuple(w.name for w in WAYS if not w.stream)
#: runs that take the time of a timeout, idle: started first, so that they overlap
SLOW = {case for case in GROUPS if re.search(r"hang|stall|trickle|forever|pings_only|never_read|199_alone", case)}


def order(run: Tuple[str, str, str]) -> int:
    """Timeouts first, big answers last (once the rest is done, the fake has time for them)."""
    return 0 if run[2] in SLOW else 2 if run[2] in BIG_CASES else 1


class Matrix(KindsMatrix):
    def proxy_for(self, kind: str, way: str) -> Agproxy:
        return self.proxies[f"{kind}-{'stream' if WAY[way].stream else 'whole'}"]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    tmp = tmp_path_factory.mktemp("fault-dialects")
    home = tmp / "home"
    home.mkdir()
    with MisbehavingUpstream() as fake:
        proxies: Dict[str, Agproxy] = {}
        try:
            # one agproxy per kind and streamed or whole, so that the cases spread over the cores
            for kind, (way, ways) in itertools.product(KINDS, (("stream", STREAM_WAYS), ("whole", WHOLE_WAYS))):
                if not any(run[0] == kind and run[1] in ways for run in RUNS):
                    continue  # no run asks this kind this way
                name = f"{kind}-{way}"
                path = write_config(tmp, config_for(fake, kind, ways, tmp / f"state-{name}.json"), f"{name}.json")
                proxies[name] = Agproxy(["--config", str(path), "--port", "0"], clean_env(HOME=str(home)), tmp,
                                        program_under_test())
            result = Matrix(fake, proxies)
            result.run_all(sorted(RUNS, key=order), run_one, 128, tmp_path_factory)
            yield result
        finally:
            for proxy in proxies.values():
                proxy.stop()


@pytest.mark.parametrize("kind, way, case", RUNS, ids=[f"{k}-{w}-{c}" for k, w, c in RUNS])
def test_fault(matrix: Matrix, kind: str, way: str, case: str) -> None:
    result = matrix.results[(kind, way, case)]
    assert not result.problems, result.report()


def test_the_matrix_ran_and_the_fake_is_sound(matrix: Matrix) -> None:
    assert not matrix.fake.errors
    assert matrix.elapsed < 90, f"the matrix took {matrix.elapsed:.0f} s"


def test_agproxy_survives_the_matrix(matrix: Matrix) -> None:
    for name, proxy in matrix.proxies.items():
        assert proxy.proc.poll() is None, f"agproxy ({name}) exited with {proxy.proc.returncode}"
        health = get(proxy.port, "/healthz")
        assert health.status == 200 and not health.problems, health.describe()


def test_no_upstream_key_and_no_internal_error_in_agproxy_log(matrix: Matrix) -> None:
    problems = []
    for name, proxy in matrix.proxies.items():
        lines = proxy.log().splitlines()
        problems += [f"{name}: a key in: {line[:200]}" for line in lines if leaked(line, KEYS)]
        for i, line in enumerate(lines):
            if "internal error" in line or line.startswith("Traceback"):
                tail = next((lines[j] for j in range(i + 1, min(i + 80, len(lines)))
                             if re.match(r"^[A-Za-z_.]+(Error|Exception)\b", lines[j])), "")
                problems.append(f"{name}: {line.strip()[:200]} -> {tail[:200]}")
    distinct = sorted(set(problems))
    assert not distinct, f"{len(problems)} problems in the logs, {len(distinct)} distinct:\n" + "\n".join(distinct[:60])


ECHO_RUNS = [run for run in RUNS if run[2] in ECHO_CASES]


def what_the_client_reads(way: Way, answer: Answer) -> str:
    """Every byte of the answer, every string of every JSON value in it, and the text its pieces
    join into (a credential cut across deltas is whole there)."""
    reading = read(way, answer) if answer.status == 200 else Reading()
    if answer.status != 200:
        try:
            reading.values.append(json.loads(answer.body))
        except ValueError:
            pass
    return "\n".join([bytes(answer.raw).decode("latin-1"), reading.text] + strings_in(reading.values))


@pytest.mark.parametrize("kind, way, case", ECHO_RUNS, ids=[f"{k}-{w}-{c}" for k, w, c in ECHO_RUNS])
def test_echoed_header_credentials_reach_no_byte_the_client_reads(matrix: Matrix, kind: str, way: str,
                                                                   case: str) -> None:
    answer = matrix.results[(kind, way, case)].answer
    assert answer.status in client_statuses(WAY[way].dialect, (200, 424)), answer.describe()  # 424: KEY_REJECTED_STATUS
    read_text = what_the_client_reads(WAY[way], answer)
    if case == "echo_header_credentials" and WAY[way].like != "count":
        assert "Your request had" in read_text, answer.describe()  # the echo did arrive
    found = spelled(read_text)
    assert not found, f"{found} in {answer.describe(2000)}"


def test_echoed_header_credentials_stay_out_of_the_log(matrix: Matrix) -> None:
    found = [f"{name}: {s}" for name, proxy in matrix.proxies.items() for s in spelled(proxy.log())]
    assert not found, found


def test_the_readers_refuse_what_a_client_cannot_read() -> None:
    """The control: each reader finds the fault of a stream its client would choke on."""
    chunk = 'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"a"},"finish_reason":%s}]}\n\n'
    assert read_chat_stream((chunk % "null" + chunk % '"stop"' + "data: [DONE]\n\n").encode()).problems == []
    assert read_chat_stream((chunk % "null").encode()).end is None  # cut: no [DONE]
    assert read_chat_stream((chunk % "null" + "data: [DONE]\n\n").encode()).problems  # no finish_reason
    assert read_chat_stream(b'data: {"error":{"message":"m"}}\n\n').problems  # not OpenAI's whole shape

    def event(kind: str, number: int, **extra: Any) -> str:
        return f"event: {kind}\ndata: {json.dumps(dict(type=kind, sequence_number=number, **extra))}\n\n"
    done = event("response.completed", 2, response={"status": "completed"})
    assert read_responses_stream((event("response.created", 0) + event("response.in_progress", 1) + done).encode()
                                 ).problems == []
    assert read_responses_stream((event("response.created", 0) + done).encode()).problems == []
    assert read_responses_stream((event("response.created", 1) + done).encode()).problems  # not from 0
    assert read_responses_stream((event("response.created", 0) + event("response.in_progress", 2) +
                                  event("response.completed", 2, response={"status": "completed"})).encode()).problems
    assert read_responses_stream(event("response.created", 0).encode()).end is None
    last = '{"candidates":[{"content":{"parts":[]},"finishReason":"STOP"}]}'
    assert read_gemini_sse(f"data: {last}\n\n".encode()).problems == []
    assert read_gemini_sse(f": ping\n\ndata: {last}\n\n".encode()).problems  # a comment
    assert read_gemini_sse(b'data: {"candidates":[{"content":{"parts":[]}}]}\n\n').end is None
    assert read_gemini_sse(b'{"error":{"code":500,"message":"m","status":"INTERNAL"}}\n').end == "error"
    assert read_gemini_array(f"[{last}]".encode()).problems == []
    assert read_gemini_array(f"[{last}".encode()).problems  # not an array: cut
