"""Property tests (hypothesis) over what agproxy takes from the outside: bytes from clients and
upstreams, JSON shapes of requests, events and chunks of upstream streams.

(a) ``RequestParser`` over arbitrary bytes and mutated valid requests, fed whole, byte by byte and
    in random pieces: it raises only ``ProtocolError``, and the pieces do not change the requests.
(b) ``ResponseParser`` over arbitrary bytes and mutated upstream answers (the misbehaving fake's
    whole catalogue as seeds): only ``UpstreamFailure``.
(c) A real agproxy process (demo, ``anthropic`` and ``openai`` upstreams behind a well-behaved
    fake): random and hostile JSON shapes of a Messages request to /v1/messages and count_tokens,
    and mutated raw HTTP requests: every answer well formed, never 5xx (HTTP's own 501/505 for
    unsupported framing or versions excepted), no dropped connection.
(d) The pure functions between: ``OpenAIStreamTranslator``, ``MessageAccumulator``,
    ``openai_to_anthropic``, ``SSEDecoder`` and the request pipeline (validate, sanitize,
    translate) over arbitrary shapes: only agproxy's own errors, and nothing they produce that the
    client cannot parse (NaN, Infinity, a Message that is not one).
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agproxy
from tests.conftest import Agproxy, clean_env, write_config
from tests.corpus import corpus
from tests.fakes.misbehaving import KEYS, RECIPES, Action, Ctx, MisbehavingUpstream, Send, good, live_config
from tests.wire_check import (
    Answer,
    generic_problems,
    get,
    incomplete,
    leaked,
    message_problems,
    parse_sse,
    post_json,
    program_under_test,
    read_answer,
    stream_problems,
    strict_json,
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NETWORK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.data_too_large])

# -- strategies: JSON with the names agproxy looks for ------------------------------------------------

KEY_NAMES = ["type", "index", "content", "content_block", "delta", "message", "usage", "text", "partial_json",
             "thinking", "signature", "id", "name", "input", "stop_reason", "stop_sequence", "error", "choices",
             "tool_calls", "function", "arguments", "finish_reason", "prompt_tokens", "completion_tokens",
             "prompt_tokens_details", "cached_tokens", "reasoning_content", "reasoning", "role", "model", "messages",
             "max_tokens", "stream", "system", "tools", "tool_choice", "stop_sequences", "budget_tokens", "source",
             "media_type", "data", "url", "tool_use_id", "is_error", "cache_control", "metadata", "user_id",
             "input_schema", "code", "object", "citation", "input_tokens", "output_tokens", "temperature", "top_p",
             "top_k", "disable_parallel_tool_use", "display", "effort", "context_management", "output_config"]
WORDS = ["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
         "message_stop", "error", "ping", "text", "tool_use", "server_tool_use", "thinking", "redacted_thinking",
         "text_delta", "input_json_delta", "thinking_delta", "signature_delta", "citations_delta", "user",
         "assistant", "system", "tool", "image", "document", "tool_result", "base64", "url", "stop", "length",
         "tool_calls", "content_filter", "auto", "any", "none", "enabled", "adaptive", "disabled", "function",
         "ephemeral", "image/png", "application/pdf", "[DONE]", "", "\ud800", "\x00", "Warmup"]

LEAF = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
        | st.sampled_from([0, 1, -1, 2 ** 63, 10 ** 30, 0.5]) | st.floats(allow_nan=True, allow_infinity=True)
        | st.sampled_from(WORDS) | st.text(max_size=12))
KEYS_ST = st.sampled_from(KEY_NAMES) | st.text(max_size=8)
JSON = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS_ST, inner, max_size=5),
                    max_leaves=24)
OBJECT = st.dictionaries(KEYS_ST, JSON, max_size=6)


def shaped(fields: Dict[str, Any]) -> st.SearchStrategy:
    """Objects that mostly have the expected keys (each value well-typed or garbage)."""
    return st.fixed_dictionaries({}, optional={k: v | JSON for k, v in fields.items()}) | OBJECT


def words(*names: str) -> st.SearchStrategy:
    return st.sampled_from(names) | st.sampled_from(WORDS)


SMALL_INT = st.integers(min_value=-2, max_value=5)
TEXT = st.text(max_size=20) | st.sampled_from(["{", '{"a": 1}', '"}', "[", "\ud800", "```json\n{}\n```"])

TOOL_CALL = shaped({"index": SMALL_INT, "id": TEXT, "type": words("function"),
                    "function": shaped({"name": TEXT, "arguments": TEXT})})
OA_DELTA = shaped({"role": words("assistant"), "content": TEXT, "reasoning_content": TEXT, "reasoning": TEXT,
                   "tool_calls": st.lists(TOOL_CALL, max_size=3)})
OA_CHOICE = shaped({"index": SMALL_INT, "delta": OA_DELTA, "message": OA_DELTA,
                    "finish_reason": words("stop", "length", "tool_calls"), "stop_reason": TEXT})
OA_USAGE = shaped({"prompt_tokens": SMALL_INT | JSON, "completion_tokens": SMALL_INT,
                   "prompt_tokens_details": shaped({"cached_tokens": SMALL_INT})})
OA_CHUNK = shaped({"id": TEXT, "choices": st.lists(OA_CHOICE, max_size=2), "usage": OA_USAGE,
                   "error": shaped({"message": TEXT, "code": SMALL_INT | JSON, "type": TEXT})})

BLOCK = shaped({"type": words("text", "tool_use", "thinking", "redacted_thinking", "server_tool_use"), "text": TEXT,
                "id": TEXT, "name": TEXT, "input": OBJECT, "thinking": TEXT, "signature": TEXT, "data": TEXT})
A_DELTA = shaped({"type": words("text_delta", "input_json_delta", "thinking_delta", "signature_delta",
                                "citations_delta"),
                  "text": TEXT, "partial_json": TEXT, "thinking": TEXT, "signature": TEXT, "citation": JSON,
                  "stop_reason": TEXT, "stop_sequence": TEXT})
A_PAYLOAD = shaped({"type": words("message_start", "content_block_start", "content_block_delta",
                                  "content_block_stop", "message_delta", "message_stop", "error"),
                    "index": SMALL_INT, "content_block": BLOCK, "delta": A_DELTA,
                    "message": shaped({"id": TEXT, "type": words("message"), "role": words("assistant"),
                                       "content": st.lists(BLOCK, max_size=2), "model": TEXT,
                                       "usage": shaped({"input_tokens": SMALL_INT, "output_tokens": SMALL_INT})}),
                    "usage": shaped({"input_tokens": SMALL_INT, "output_tokens": SMALL_INT}),
                    "error": shaped({"type": words("overloaded_error", "api_error"), "message": TEXT})})
A_EVENT = st.tuples(words("message_start", "content_block_start", "content_block_delta", "content_block_stop",
                          "message_delta", "message_stop", "error", "ping", "message") | st.text(max_size=10),
                    A_PAYLOAD.map(lambda v: json.dumps(v)) | TEXT | st.just(""))


# -- (a) the request parser -------------------------------------------------------------------------------

def parse_requests(chunks: List[bytes], **limits: int) -> Tuple[List[Tuple[Any, ...]], Optional[Exception]]:
    """Feed the chunks then the end of input; the requests completed and the error that ended it."""
    parser = agproxy.RequestParser(**limits)
    out: List[Tuple[Any, ...]] = []
    try:
        for chunk in chunks + [b""]:
            parser.feed(chunk)
            for _ in range(100000):
                event = parser.next_event()
                if event in (agproxy.NEED_DATA, agproxy.CLOSED):
                    break
                if isinstance(event, agproxy.RequestReady):
                    request = event.request
                    out.append((request.method, request.target, request.version, tuple(request.headers),
                                request.body))
                else:
                    assert isinstance(event, agproxy.HeadReady), event
            else:
                raise AssertionError("the parser keeps returning events")
            if event == agproxy.CLOSED:
                break
    except agproxy.ProtocolError as exc:
        return out, exc
    return out, None


VALID_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nHost: localhost:8045\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: x\r\n\r\n",
    b"HEAD /healthz HTTP/1.0\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nPOST /v1/messages/count_tokens HTTP/1.1\r\nHost: [::1]:8045\r\n"
    b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\nOrigin: http://localhost:3000\r\n\r\n",
    b"GET http://127.0.0.1:8045/v1/models?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
]
TOKENS = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b"\xff", b"\xb2", b"\xef\xbb\xbf", b"\r\n\r\n",
          b"Content-Length: 99\r\n", b"Content-Length: -1\r\n", b"Content-Length: \xb2\r\n",
          b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n",
          b"ffffffffffffffffff\r\n", b"HTTP/1.1", b"HTTP/2.0", b"GET ", b"%00", b"9" * 30, b" \t folded\r\n",
          b"Host: evil\r\n", b"\xc3\x28", b"a" * 9000]


@st.composite
def mutated(draw: Any, seeds: List[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate", "truncate", "case"]))
        at = draw(st.integers(min_value=0, max_value=len(data)))
        if op == "insert":
            data[at:at] = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[at:at + draw(st.integers(min_value=1, max_value=8))]
        elif op == "replace" and at < len(data):
            data[at] = draw(st.integers(min_value=0, max_value=255))
        elif op == "duplicate":
            end = min(len(data), at + draw(st.integers(min_value=1, max_value=40)))
            data[at:at] = data[at:end]
        elif op == "truncate":
            del data[at:]
        elif op == "case":
            end = min(len(data), at + 12)
            data[at:end] = bytes(data[at:end]).swapcase()
    return bytes(data)


def splits(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    return [p for p in pieces + [data[last:]] if p]


def check_request_parser(data: bytes, cuts: List[int]) -> None:
    for limits in ({}, {"max_header_bytes": 200, "max_body_bytes": 16}):
        whole, whole_error = parse_requests([data], **limits)
        bytewise, bytewise_error = parse_requests([data[i:i + 1] for i in range(len(data))], **limits)
        pieces, pieces_error = parse_requests(splits(data, cuts), **limits)
        for other in (bytewise, pieces):
            shorter, longer = sorted((whole, other), key=len)
            assert longer[:len(shorter)] == shorter, (data, limits)
        if whole_error is None and bytewise_error is None:
            assert whole == bytewise, (data, limits)
        for error in (whole_error, bytewise_error, pieces_error):
            if error is not None:
                assert 400 <= error.status <= 599 and isinstance(error.message, str)


@FAST
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0), max_size=6))
def test_request_parser_arbitrary_bytes(data: bytes, cuts: List[int]) -> None:
    check_request_parser(data, cuts)


@FAST
@given(mutated(VALID_REQUESTS), st.lists(st.integers(min_value=0), max_size=6))
def test_request_parser_mutated_requests(data: bytes, cuts: List[int]) -> None:
    check_request_parser(data, cuts)


def test_request_parser_takes_the_valid_seeds() -> None:
    for seed in VALID_REQUESTS:
        requests, error = parse_requests([seed])
        assert error is None and requests, seed


# -- (b) the response parser -------------------------------------------------------------------------

def recipe_bytes() -> List[bytes]:
    """What the misbehaving fake sends for each recipe (the huge ones cut down), as parser seeds."""
    out = []
    for name, make in sorted(RECIPES.items()):
        for kind in ("anthropic", "openai"):
            for stream in (False, True):
                body = json.dumps({"model": "m", "stream": stream}).encode()
                ctx = Ctx(name, kind, "fuzz", "POST", "/v1/messages" if kind == "anthropic" else "/chat/completions",
                          [("x-api-key", KEYS[0])], body, 1)
                actions: List[Action] = make(ctx)
                data = b"".join(a.data for a in actions if isinstance(a, Send))
                if len(data) > 20000:
                    data = data[:3000] + data[-3000:]
                out.append(data)
    return out


RESPONSE_SEEDS = recipe_bytes()


def parse_response(chunks: List[bytes], method: str) -> Optional[agproxy.ResponseHead]:
    parser = agproxy.ResponseParser(method, max_header_bytes=4096)
    head = None
    for chunk in chunks + [b""]:
        parser.feed(chunk)
        for _ in range(100000):
            event = parser.next_event()
            if event in (agproxy.NEED_DATA, agproxy.END):
                break
            if isinstance(event, agproxy.ResponseHead):
                head = event
            else:
                assert isinstance(event, bytes), event
        else:
            raise AssertionError("the parser keeps returning events")
        if event == agproxy.END:
            break
    return head


def check_response_parser(data: bytes, cuts: List[int], method: str) -> None:
    for chunks in ([data], splits(data, cuts)):
        try:
            parse_response(chunks, method)
        except agproxy.UpstreamFailure:
            pass


@FAST
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0), max_size=6),
       st.sampled_from(["POST", "GET", "HEAD", "CONNECT"]))
def test_response_parser_arbitrary_bytes(data: bytes, cuts: List[int], method: str) -> None:
    check_response_parser(data, cuts, method)


@FAST
@given(mutated(RESPONSE_SEEDS), st.lists(st.integers(min_value=0), max_size=6), st.sampled_from(["POST", "HEAD"]))
def test_response_parser_mutated_answers(data: bytes, cuts: List[int], method: str) -> None:
    check_response_parser(data, cuts, method)


def test_response_parser_over_every_recipe_bytewise() -> None:
    for data in RESPONSE_SEEDS:
        try:
            parse_response([data[i:i + 1] for i in range(min(len(data), 4000))], "POST")
        except agproxy.UpstreamFailure:
            pass


# -- (d) translators, accumulator and the request pipeline --------------------------------------------

def assert_client_safe(value: Any) -> None:
    """What goes to a client must serialize as strict JSON: no NaN, no Infinity. (A lone surrogate
    that came in as a Python string is agproxy's encoder's business: it writes UTF-8 with
    replacement, and what it reads from upstreams has them repaired already.)"""
    json.dumps(value, allow_nan=False, ensure_ascii=False)


def assert_events_safe(pieces: List[bytes]) -> None:
    data = b"".join(pieces)
    if not data:
        return
    events, problems = parse_sse(data)
    assert not problems, (problems, data[:300])
    for name, payload in events:
        value = strict_json(payload)
        assert isinstance(value, dict) and value.get("type") == name, (name, payload[:200])


@FAST
@given(st.lists(OA_CHUNK | OBJECT, max_size=8), st.booleans())
def test_openai_stream_translator_takes_any_chunk(chunks: List[Dict[str, Any]], finish: bool) -> None:
    translator = agproxy.OpenAIStreamTranslator("m", 3, ["###"])
    out: List[bytes] = []
    try:
        for chunk in chunks:
            out += [event.encoded() for event in translator.feed(chunk)]
        if finish:
            out += [event.encoded() for event in translator.finish()]
    except agproxy.AgproxyError:
        return
    assert_events_safe(out)
    if finish:
        end, problems = stream_problems(b"".join(out), strict_events=True)
        assert not problems and end in ("message_stop", "error"), (problems, b"".join(out)[-300:])


@FAST
@given(st.lists(A_EVENT, max_size=12))
def test_message_accumulator_takes_any_event(events: List[Tuple[str, str]]) -> None:
    accumulator = agproxy.MessageAccumulator()
    try:
        for name, data in events:
            accumulator.feed(agproxy.SSEEvent(name, data))
        message = accumulator.result()
    except agproxy.AgproxyError:
        return
    assert isinstance(message, dict) and isinstance(message.get("content"), list), message
    assert_client_safe(message)


@FAST
@given(shaped({"id": TEXT, "choices": st.lists(OA_CHOICE, max_size=2), "usage": OA_USAGE, "model": TEXT}))
def test_openai_to_anthropic_takes_any_completion(response: Dict[str, Any]) -> None:
    try:
        message = agproxy.openai_to_anthropic(response, "m", ["###"])
    except agproxy.AgproxyError:
        return
    assert not message_problems(message), (message_problems(message), message)
    assert_client_safe(message)


@FAST
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=5))
def test_sse_decoder_takes_any_bytes(data: bytes, cuts: List[int]) -> None:
    decoder = agproxy.SSEDecoder(max_event_bytes=128)
    try:
        for piece in splits(data, cuts):
            for event in decoder.feed(piece):
                assert isinstance(event.event, str) and isinstance(event.data, str)
    except agproxy.AgproxyError:
        pass


CONTENT = st.text(max_size=10) | st.lists(BLOCK | shaped({
    "type": words("image", "document", "tool_result"), "source": shaped({"type": words("base64", "url", "text"),
                                                                         "media_type": TEXT, "data": TEXT,
                                                                         "url": TEXT}),
    "tool_use_id": TEXT, "content": st.text(max_size=5) | st.lists(BLOCK, max_size=2), "is_error": JSON,
    "cache_control": JSON}), max_size=3)
MESSAGE = shaped({"role": words("user", "assistant", "system"), "content": CONTENT})
TOOL = shaped({"name": TEXT, "description": TEXT, "input_schema": OBJECT, "type": words("custom", "bash_20250124",
                                                                                       "web_search_20250305"),
               "cache_control": JSON, "defer_loading": JSON})
REQUEST = shaped({
    "model": words("anth-x", "oa-x", "demo-x"), "max_tokens": st.integers(min_value=-1, max_value=10 ** 6),
    "messages": st.lists(MESSAGE, max_size=4), "stream": st.booleans(),
    "system": st.text(max_size=10) | st.lists(BLOCK, max_size=2), "tools": st.lists(TOOL, max_size=3),
    "tool_choice": shaped({"type": words("auto", "any", "tool", "none"), "name": TEXT,
                           "disable_parallel_tool_use": JSON}),
    "stop_sequences": st.lists(TEXT, max_size=3), "temperature": JSON, "top_p": JSON, "top_k": JSON,
    "thinking": shaped({"type": words("enabled", "adaptive", "disabled"), "budget_tokens": JSON, "display": JSON}),
    "metadata": shaped({"user_id": TEXT}), "context_management": JSON, "output_config": JSON,
})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(REQUEST, st.sampled_from(["anthropic", "compatible", "openai"]))
def test_request_pipeline_takes_any_shape(body: Dict[str, Any], profile: str) -> None:
    """What the server does with a request body before any I/O: parse, validate, then sanitize and
    translate for the upstream. Only InvalidRequest (or another agproxy error) may come out."""
    try:
        raw = json.dumps(body).encode()
    except (ValueError, UnicodeEncodeError):
        return
    try:
        parsed = agproxy.parse_json_body(raw)
        agproxy.validate_messages_request(parsed)
        agproxy.is_warmup(parsed)
        agproxy.session_id([], parsed)
        agproxy.estimate_input_tokens(parsed)
        agproxy.sanitize_request(parsed, agproxy.PROFILE_DEFAULTS[profile])
        if profile == "openai":
            translated, _ = agproxy.anthropic_to_openai(parsed, agproxy.OpenAIOptions(), "u")
            assert_client_safe(translated)
        else:
            assert_client_safe(parsed)
    except agproxy.AgproxyError:
        return


CORPUS_BODIES = [body for _, _, body in corpus()]
#: a config's own profile: every change the compatible one makes to a request, but cache_control kept
CUSTOM_PROFILE = dataclasses.replace(agproxy.PROFILE_DEFAULTS["compatible"], cache_control=True)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(REQUEST | st.sampled_from(CORPUS_BODIES), st.sampled_from(["anthropic", "compatible", "openai", "custom"]),
       st.booleans(), st.booleans(), st.sampled_from([None, 1, 2000]))
def test_sanitizing_the_cheap_copy_leaves_the_request_alone(body: Dict[str, Any], profile: str, strip: bool,
                                                           foreign: bool, max_tokens: Optional[int]) -> None:
    """The copy the Anthropic adapter sanitizes (:func:`sanitizable_copy`, which shares the blocks
    with the client's parsed request) comes out of everything ``prepare`` does to it as a deep copy
    would, and the request it was copied from is unchanged (a retry on another upstream starts from it)."""
    try:
        raw = json.dumps(body).encode()
        parsed = agproxy.parse_json_body(raw)
        agproxy.validate_messages_request(parsed)
    except (ValueError, UnicodeEncodeError, agproxy.AgproxyError):
        return
    rules = CUSTOM_PROFILE if profile == "custom" else agproxy.PROFILE_DEFAULTS[profile]
    copied = agproxy.sanitizable_copy(parsed, rules, [])
    if copied is None:
        assert not rules.cache_control
        return
    results = []
    for working in (copied, json.loads(raw)):
        changes: Dict[str, int] = {}
        agproxy._fit_max_tokens(working, max_tokens, changes)
        changes.update(agproxy.sanitize_request(working, rules, drop_thinking=lambda block: foreign))
        if strip:
            changes.update(agproxy.strip_thinking_history(working))
        results.append((json.dumps(working), changes))
    assert results[0] == results[1]
    assert json.dumps(parsed) == raw.decode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(REQUEST | st.sampled_from(CORPUS_BODIES), st.sampled_from([None, 0, 2]), st.booleans(), st.booleans(),
       st.sampled_from([None, 1, 2000]), st.sampled_from(["anthropic", "compatible"]))
def test_a_changed_request_written_from_its_own_text_says_what_json_dumps_says(
        body: Dict[str, Any], indent: Optional[int], rename: bool, stream: bool, max_tokens: Optional[int],
        profile: str) -> None:
    """A request the Anthropic adapter changed is written from the client's own text of the members
    it kept (:func:`spliced_json`, with the places :func:`parse_json_body` noted), however the client
    spaced it: the result is valid JSON and decodes to what ``json.dumps`` of the changed body says."""
    try:
        raw = json.dumps(body, indent=indent, ensure_ascii=bool(rename)).encode()
        spans: Dict[str, Tuple[int, int]] = {}
        parsed = agproxy.parse_json_body(raw, spans)
        agproxy.validate_messages_request(parsed)
    except (ValueError, UnicodeEncodeError, agproxy.AgproxyError):
        return
    assert set(spans) == set(parsed)
    changed = json.loads(raw)
    if rename:
        changed["model"] = "renamed-model"
    if stream:
        changed["stream"] = True
    agproxy._fit_max_tokens(changed, max_tokens, {})
    agproxy.sanitize_request(changed, agproxy.PROFILE_DEFAULTS[profile])
    written = agproxy.spliced_json(raw, spans, parsed, changed)
    assert json.loads(written) == json.loads(json.dumps(changed))
    assert list(json.loads(written)) == list(changed)


def _depth(value: Any) -> int:
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    return 0 if items is None else 1 + max([_depth(item) for item in items], default=0)


@given(JSON, st.integers(min_value=1, max_value=6))
def test_depth_walk_agrees_with_a_recursive_count(value: Any, limit: int) -> None:
    """The level-by-level depth check says "too deep" exactly when the nesting exceeds the limit."""
    assert agproxy._too_deep(value, limit) == (_depth(value) > limit)


COUNT_FIELDS = ["model", "messages", "max_tokens", "stream", "system", "tools", "tool_choice", "stop_sequences",
                "thinking", "metadata", "temperature", "top_p", "top_k"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(COUNT_FIELDS), JSON, st.sampled_from(["anthropic", "compatible", "openai", "gemini"]))
def test_count_tokens_pipeline_takes_any_shape(field: str, value: Any, kind: str) -> None:
    """What count_tokens does with a body before any I/O, for every kind: parse, validate as a count,
    then prepare it as the kind's count does (an ``openai`` tokenizer and Gemini's countTokens get
    the translated request). A valid count with one field holding anything: only agproxy's own
    errors may come out."""
    body: Dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                            "tools": [{"name": "Read", "input_schema": {"type": "object"}}], field: value}
    try:
        raw = json.dumps(body).encode()
    except (ValueError, UnicodeEncodeError):
        return
    try:
        parsed = agproxy.parse_json_body(raw)
        agproxy.validate_messages_request(parsed, count_tokens=True)
        agproxy.estimate_input_tokens(parsed)
        counted = dict(parsed, model="m", max_tokens=1)
        agproxy.sanitize_request(counted, agproxy.PROFILE_DEFAULTS["anthropic" if kind == "gemini" else kind])
        if kind == "openai":
            agproxy.anthropic_to_openai(counted, agproxy.OpenAIOptions(), "u")
        elif kind == "gemini":
            agproxy.anthropic_to_gemini(counted, "gemini-x", lambda signature: True, lambda call_id: None)
    except agproxy.AgproxyError:
        return


# -- (c) a real agproxy process ------------------------------------------------------------------------

class Live:
    def __init__(self, proxy: Agproxy, fake: MisbehavingUpstream) -> None:
        self.proxy = proxy
        self.fake = fake


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("fuzz-live")
    with MisbehavingUpstream({"fine": lambda ctx: [Send(good(ctx))]}) as fake:
        config = live_config(fake, "live", 5)
        path = write_config(tmp, config)
        proxy = Agproxy(["--config", str(path), "--port", "0"], clean_env(HOME=str(tmp)), tmp, program_under_test())
        try:
            yield Live(proxy, fake)
        finally:
            proxy.stop()


def judge_live(answer: Answer, path: str, stream_asked: bool) -> List[str]:
    problems = generic_problems(answer, KEYS)
    if answer.dropped or answer.problems:
        return problems or ["no answer"]
    if answer.status >= 500:
        problems.append(f"status {answer.status} for a client request: {answer.body[:300]!r}")
    if answer.status == 200:
        if path.endswith("count_tokens"):
            try:
                value = strict_json(answer.body)
            except (ValueError, UnicodeDecodeError):
                value = None
            if not isinstance(value, dict) or not isinstance(value.get("input_tokens"), int):
                problems.append(f"count_tokens answered {answer.body[:200]!r}")
        elif stream_asked:
            end, stream_issues = stream_problems(answer.body, strict_events=True)
            problems += stream_issues
            if end != "message_stop":
                problems.append(f"a 200 stream ended with {end}")
        else:
            try:
                problems += message_problems(strict_json(answer.body))
            except (ValueError, UnicodeDecodeError) as exc:
                problems.append(f"a 200 answer that is not strict JSON ({exc})")
    return problems


def hostile_text(body: Any, tweak: str) -> bytes:
    """The request as JSON text, with one hostile change that json.dumps cannot make."""
    text = json.dumps(body, allow_nan=True)
    if tweak == "surrogate":
        text = text.replace('"hi', '"\\ud800hi', 1).replace('"x', '"\\udfff', 1)
    elif tweak == "huge_number":
        text = re.sub(r"\b(\d+)\b", "1e400", text, count=2)
    elif tweak == "long_digits":
        text = re.sub(r"\b(\d+)\b", "9" * 5000, text, count=1)
    elif tweak == "deep":
        text = text[:-1] + ', "deep": ' + "[" * 5000 + "]" * 5000 + "}"
    elif tweak == "deep_object":
        text = text[:-1] + ', "deep": ' + '{"a":' * 3000 + "1" + "}" * 3000 + "}"
    elif tweak == "duplicate_keys":
        text = text[:-1] + ', "model": 5, "messages": null}'
    elif tweak == "nul":
        text = text.replace("hi", "h\\u0000i", 1)
    elif tweak == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    elif tweak == "latin1":
        return text.replace("hi", "h\u00e9").encode("latin-1", "replace")
    return text.encode("utf-8", "surrogatepass")


TWEAKS = ["none", "none", "surrogate", "huge_number", "long_digits", "deep", "deep_object", "duplicate_keys", "nul",
          "bom", "latin1"]
BASE = {"model": "anth-x", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


@NETWORK
@given(REQUEST | JSON, st.sampled_from(TWEAKS), st.sampled_from(["/v1/messages", "/v1/messages/count_tokens"]),
       st.sampled_from(["anth-x", "compat-x", "oa-x", "demo-x", None]))
def test_live_messages_with_any_json_shape(live: Live, body: Any, tweak: str, path: str, model: Optional[str]) -> None:
    if isinstance(body, dict) and model is not None and "model" in body:
        body["model"] = model
    raw = hostile_text(body, tweak)
    answer = post_json(live.proxy.port, path, raw, 15)
    stream_asked = isinstance(body, dict) and body.get("stream") is True
    problems = judge_live(answer, path, stream_asked)
    assert not problems, f"{raw[:300]!r} ({tweak}) -> {answer.describe(300)}: {problems}"


@NETWORK
@given(st.sampled_from(["model", "messages", "max_tokens", "stream", "system", "tools", "tool_choice",
                        "stop_sequences", "thinking", "metadata", "temperature", "messages.0", "messages.0.content",
                        "messages.0.content.0", "messages.0.role", "tools.0", "tools.0.input_schema"]),
       JSON, st.sampled_from(["anth-x", "compat-x", "oa-x", "demo-x"]), st.booleans(),
       st.sampled_from(["/v1/messages", "/v1/messages/count_tokens"]))
def test_live_one_field_wrong(live: Live, where: str, value: Any, model: str, stream: bool, path: str) -> None:
    """A valid request with exactly one field (at any depth) replaced by an arbitrary value."""
    body: Dict[str, Any] = {"model": model, "max_tokens": 16, "stream": stream,
                            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                            "tools": [{"name": "Read", "input_schema": {"type": "object"}}]}
    target: Any = body
    parts = where.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last = parts[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    raw = hostile_text(body, "none")
    answer = post_json(live.proxy.port, path, raw, 15)
    problems = judge_live(answer, path, body.get("stream") is True)
    assert not problems, f"{raw[:300]!r} -> {answer.describe(300)}: {problems}"




def raw_exchange(port: int, data: bytes, timeout: float = 8.0) -> Answer:
    """Send raw bytes (half-closing after a truncated request), read one answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if not data.strip(b"\r\n") or incomplete(data):
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        is_head = data.startswith(b"HEAD ")  # read as HEAD: no body, whatever the status
        return read_answer(sock, timeout, method="HEAD" if is_head else "POST", expect_continue=True)


def _post(path: str, body: bytes, chunked: bool = False, version: str = "1.1") -> bytes:
    head = f"POST {path} HTTP/{version}\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if chunked:
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


LIVE_SEEDS = [
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    _post("/v1/messages", b'{"model":"demo-x","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'),
    _post("/v1/messages?beta=true", b'{"model":"anth-x","max_tokens":5,"stream":true,'
                                    b'"messages":[{"role":"user","content":"hi"}]}', chunked=True),
    _post("/v1/messages", b'{"model":"oa-x","max_tokens":5,"stream":true,'
                          b'"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}'),
    _post("/v1/messages/count_tokens", b'{"model":"oa-x","messages":[{"role":"user","content":"hi"}]}'),
    b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /v1/agproxy/accounts HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    _post("/v1/api/event_logging/batch", b"{}", version="1.0"),
]


def test_live_seeds_are_answered(live: Live) -> None:
    for seed in LIVE_SEEDS:
        answer = raw_exchange(live.proxy.port, seed)
        assert answer.status == 200 and not answer.problems, (seed[:80], answer.describe(300))


#: HTTP's own 5xx for a client's framing: 501 (a transfer coding it does not implement), 505 (version)
CLIENT_5XX = (501, 505)


@NETWORK
@given(mutated(LIVE_SEEDS))
def test_live_mutated_raw_requests(live: Live, data: bytes) -> None:
    answer = raw_exchange(live.proxy.port, data)
    if answer.dropped and not data.strip(b"\r\n"):
        return  # nothing that could be a request was sent
    problems = generic_problems(answer, KEYS)
    if answer.status >= 500 and answer.status not in CLIENT_5XX:
        problems.append(f"status {answer.status}")
    assert not problems, f"{data[:300]!r} -> {answer.describe(300)}: {problems}"


def test_live_agproxy_is_still_healthy(live: Live) -> None:
    """Runs after the live fuzz tests above: the process lives, logged no internal error and no key."""
    assert live.proxy.proc.poll() is None, live.proxy.log()[-3000:]
    health = get(live.proxy.port, "/healthz")
    assert health.status == 200 and not health.problems, health.describe()
    log = live.proxy.log()
    assert not leaked(log, KEYS)
    internal = [line for line in log.splitlines() if "internal error" in line or line.startswith("Traceback")]
    assert not internal, "\n".join(internal[:20]) + "\n" + log[-4000:]
    assert not live.fake.errors
