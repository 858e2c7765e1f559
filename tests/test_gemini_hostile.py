"""The Gemini kind off the happy path, from an independent attack on it: hostile client input, a
broken or malicious Gemini upstream, unbounded growth and quadratic costs. Each test held a
defect until it was fixed; the last (hypothesis) guards what held up from the start."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any, Dict, Optional, Tuple

import pytest

import agproxy
from tests.fakes.gemini_upstream import Answer, Error, FakeGemini, Raw, call, check_schema, google_error
from tests.test_gemini import gemini_config, sdk
from tests.test_pipeline import ScriptedResponse


@pytest.fixture
def fake():
    with FakeGemini(keys=("gemini-key", "gemini-key-2")) as server:
        yield server


def post(proxy: Any, body: Dict[str, Any], path: str = "/v1/messages", timeout: float = 30) -> Tuple[int, bytes]:
    request = urllib.request.Request(proxy.url + path, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def fan_out_schema(fan: int) -> Dict[str, Any]:
    """A few hundred bytes: a recursive definition whose every node refers to itself ``fan`` times
    (a tree, a JSON value, an AST node: common in MCP tool schemas)."""
    node = {"type": "object", "properties": {f"p{i}": {"$ref": "#/$defs/Node"} for i in range(fan)}}
    return dict(node, **{"$defs": {"Node": node}})


# -- 1. a small recursive tool schema blows up exponentially, on the event loop ----------------------


def test_a_recursive_schema_with_fan_out_converts_in_bounded_size():
    """``$ref`` is expanded in place: a definition that refers to itself twice made 2**12 copies,
    three times 3**12 (11 s and 150 MB), four times never ended. A definition is no longer
    expanded inside itself, and one tool's schema has at most 2,000 nodes."""
    for fan in (2, 3, 8):
        schema = fan_out_schema(fan)
        out = agproxy.gemini_schema(schema)
        check_schema(out, "parameters")
        assert len(json.dumps(out)) < 100 * len(json.dumps(schema))
    layered = {"type": "object", "properties": {"a": {"$ref": "#/$defs/L0"}},
               "$defs": {f"L{i}": {"type": "object", "properties": {f"p{k}": {"$ref": f"#/$defs/L{i + 1}"}
                                                                     for k in range(4)}} for i in range(12)}}
    assert len(json.dumps(agproxy.gemini_schema(layered))) < 400_000  # reuse without a cycle: 4**12 places


def test_one_request_with_a_recursive_schema_does_not_stall_every_other_client(start_agproxy, fake):
    """The translation runs on the event loop: a schema that never finished converting held every
    other client. Now the request is answered, and so is every other."""
    proxy = start_agproxy(gemini_config(fake))
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "Eval", "input_schema": fan_out_schema(4)}]}
    status, data = post(proxy, body, "/v1/messages/count_tokens")
    assert status == 200, data[:300]
    assert sdk(proxy).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "y"}]).content


# -- 2. StrayLines parses everything it holds again on every read: quadratic -----------------------


def test_stray_lines_are_parsed_once_however_they_arrive(monkeypatch):
    """``StrayLines.error()`` parsed all stray text again after every read that completed a line
    ending in ``}``: 20,000 such reads held the event loop for 50 s. Now the text is parsed once,
    when its brackets close or the body ends."""
    reads = [b'[{"a":1}\n'] + [b',{"a":1}\n'] * 5000
    parses = []
    real = agproxy.loads_strict
    monkeypatch.setattr(agproxy, "loads_strict", lambda data, *a, **k: parses.append(len(data)) or real(data, *a, **k))

    async def run() -> Optional[str]:
        try:
            async for _ in agproxy.gemini_events(ScriptedResponse(reads), agproxy.GeminiStreamTranslator("m")):
                pass
        except agproxy.UpstreamFailure as exc:
            return exc.message
        return None

    assert asyncio.run(run()) is not None  # garbage: the stream fails, as it should
    assert len(parses) <= 1


# -- 3. a Gemini "Unknown name" 400 can teach agproxy to drop the system prompt forever -----------


def test_an_unknown_name_400_never_strips_the_system_instruction(start_agproxy, fake):
    """``systemInstruction`` is Gemini's ``system``, but only Anthropic's names are protected
    (PROTECTED_TOP_FIELDS): an ``Unknown name "systemInstruction"`` 400 (what Gemini's v1 API and
    gateways built on it answer) is healed by dropping it, the request then succeeds, so the lesson
    is kept for every later request and saved in the state file: Claude Code's whole system prompt
    silently vanishes. ``toolConfig`` (tool_choice) is just as unprotected."""
    fake.script(
        Error(
            400,
            google_error(
                400,
                'Invalid JSON payload received. Unknown name "systemInstruction": Cannot find field.',
                "INVALID_ARGUMENT",
            ),
        )
    )
    proxy = start_agproxy(gemini_config(fake))
    status, _ = post(
        proxy,
        {
            "model": "m",
            "max_tokens": 5,
            "system": "You are a careful coding agent.",
            "messages": [{"role": "user", "content": "x"}],
        },
    )
    post(
        proxy,
        {
            "model": "m",
            "max_tokens": 5,
            "system": "You are a careful coding agent.",
            "messages": [{"role": "user", "content": "y"}],
        },
    )
    assert all("systemInstruction" in sent for sent in fake.generations), (
        f"sent without the system prompt; learned: {proxy.server.learned.fields('gemini')}"
    )


# -- 4. Gemini call ids are taken as they come, duplicates included --------------------------------


def test_tool_use_ids_in_one_answer_are_unique(start_agproxy, fake):
    """Each functionCall's ``id`` becomes the tool_use id if it is well formed, with no check that
    it is new: two calls with one id give two tool_use blocks with one id (the Anthropic API
    refuses such a history), and on the way back both results land on the first call (the
    second is answered 'interrupted'), so the model reads b.py's contents as a.py's."""
    fake.script(Answer([call("Read", {"path": "a.py"}, "dup"), call("Read", {"path": "b.py"}, "dup")]))
    proxy = start_agproxy(gemini_config(fake))
    tools = [{"name": "Read", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}]
    message = sdk(proxy).messages.create(
        model="m", max_tokens=50, tools=tools, messages=[{"role": "user", "content": "x"}]
    )
    ids = [b.id for b in message.content if b.type == "tool_use"]
    assert len(ids) == 2 and len(set(ids)) == 2, ids


# -- 5. tool names Anthropic takes and Gemini refuses ----------------------------------------------


@pytest.mark.parametrize("name", ["1password_lookup", "-dash-first"])
def test_a_tool_name_anthropic_accepts_reaches_gemini_as_a_valid_function_name(start_agproxy, fake, name):
    """Anthropic's tool names are ``[a-zA-Z0-9_-]{1,128}``; Gemini's function names must begin with
    a letter or an underscore. agproxy passes the name as it is, so one MCP tool named so makes
    every request of the session a 400 that the client cannot act on."""
    proxy = start_agproxy(gemini_config(fake))
    status, data = post(
        proxy,
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": name, "input_schema": {"type": "object"}}],
        },
    )
    assert status == 200, data[:300]


# -- 6. a stream that ends without finishReason is reported as a finished answer ------------------


def test_a_stream_cut_after_some_text_is_not_a_finished_answer(start_agproxy, fake):
    """Gemini ends every answer with a finishReason; a body that ends cleanly after text but
    without one (a gateway or load balancer cutting the stream at a chunk boundary) comes out as
    ``stop_reason: end_turn``: Claude Code takes half an answer for the whole one. (openai_events
    refuses the same case: 'the stream ended before the answer finished'.)"""
    chunk = {"candidates": [{"content": {"parts": [{"text": "The first step is to"}], "role": "model"}}]}
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n"
    event = b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n"
    fake.script(*[Raw(head % len(event) + event)] * 3)
    proxy = start_agproxy(gemini_config(fake))
    status, data = post(
        proxy, {"model": "m", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    )
    assert b'"stop_reason":"end_turn"' not in data, data[-300:]


# -- 7. one client's request can rest every key for an hour ---------------------------------------


class FilesCheckingGemini(FakeGemini):
    """The fake, plus what Gemini does with a ``fileData`` part naming a file of another project
    (or none): 403 PERMISSION_DENIED 'You do not have permission to access the File ... or it
    may not exist.' (google-gemini/deprecated-generative-ai-python#692, python-genai#1218)."""

    def check(self, body: Any, model: str) -> None:
        for content in body.get("contents") or []:
            for part in content.get("parts") or []:
                uri = (part.get("fileData") or {}).get("fileUri")
                if uri is not None:
                    name = uri.rsplit("/", 1)[-1]
                    raise agproxy_refusal(f"You do not have permission to access the File {name} or it may not exist.")
        super().check(body, model)


def agproxy_refusal(message: str) -> Exception:
    from tests.fakes.gemini_upstream import Refusal

    return Refusal(message, 403, "PERMISSION_DENIED")


def test_a_client_naming_a_file_it_cannot_see_does_not_rest_every_key(start_agproxy):
    """A 403 rests the key for an hour and tries the next (README: 'API key not valid' and 403
    PERMISSION_DENIED rest that key). But Gemini's 403 also means 'this request names a file your
    project cannot read', and the file is the client's to name (an image source ``url`` becomes
    ``fileData``): one request with a stale or foreign Files-API URL rests every account, and every
    other client gets 502 'rejected agproxy's key' for an hour. The same goes for a 400 whose
    message merely contains 'API key not valid' (_REJECTED_KEY matches the words anywhere)."""
    with FilesCheckingGemini(keys=("gemini-key", "gemini-key-2")) as fake:
        proxy = start_agproxy(gemini_config(fake, keys=("gemini-key", "gemini-key-2")))
        image = {
            "type": "image",
            "source": {"type": "url", "url": "https://generativelanguage.googleapis.com/v1beta/files/abc123"},
        }
        status, data = post(
            proxy,
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [image, {"type": "text", "text": "what is this?"}]}],
            },
        )
        assert b"rejected the key" not in data, data  # the client's problem, not the key's
        status, data = post(proxy, {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200, data[:300]


def test_a_400_that_quotes_the_client_s_words_does_not_rest_the_key(start_agproxy, fake):
    """``upstream_status_of`` takes any 400 holding 'API key not valid' for a rejected key. Gemini
    quotes the client's own values in many 400s (``Unsupported MIME type: <media_type>``), so a
    client that writes those words where Gemini echoes them rests the key (for an hour) like a
    wrong key would. Only the ErrorInfo ``reason`` (API_KEY_INVALID) says it is the key."""
    fake.script(Error(400, google_error(400, "Unsupported MIME type: API key not valid", "INVALID_ARGUMENT")))
    proxy = start_agproxy(gemini_config(fake, keys=("gemini-key",)))
    image = {"type": "image", "source": {"type": "base64", "media_type": "API key not valid", "data": "iVBO"}}
    status, data = post(proxy, {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [image]}]})
    assert status == 400, data
    status, data = post(proxy, {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200, data[:300]


# -- held up: hostile Gemini streams through the relay pipeline --------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _grammar(data: bytes):
    events = agproxy.SSEDecoder().feed(data)
    kinds = [e.event for e in events if e.event != "ping"]
    evs = [e for e in events if e.event != "ping"]
    assert kinds, data
    assert kinds[0] in ("message_start", "error"), kinds
    if kinds[-1] == "error":
        assert kinds.count("error") == 1
        evs = evs[:-1]
        ended = False
    else:
        assert kinds[-2:] == ["message_delta", "message_stop"], kinds
        evs = evs[:-2]
        ended = True
    if evs and evs[0].event == "message_start":
        evs = evs[1:]
    open_i, open_t, nxt = None, None, 0
    for e in evs:
        p = json.loads(e.data)
        if e.event == "content_block_start":
            assert open_i is None and p["index"] == nxt, kinds
            open_i, open_t = p["index"], p["content_block"]["type"]
            nxt += 1
        elif e.event == "content_block_delta":
            assert p["index"] == open_i
            dt = p["delta"]["type"]
            assert {
                "text_delta": "text",
                "thinking_delta": "thinking",
                "signature_delta": "thinking",
                "input_json_delta": "tool_use",
            }[dt] == open_t, (dt, open_t)
        elif e.event == "content_block_stop":
            assert p["index"] == open_i
            open_i = None
        else:
            raise AssertionError(f"unexpected {e.event} in {kinds}")
    if ended:
        assert open_i is None


async def _pipeline(reads):
    relayed = agproxy.gemini_events(ScriptedResponse(list(reads)), agproxy.GeminiStreamTranslator("m", 0))
    try:
        head = await agproxy.first_events(relayed)
    except agproxy.AgproxyError as e:
        return None, e
    out = b"".join([c async for c in agproxy.relay_events(head, relayed, ScriptedResponse([]), "up")])
    return out, None


JUNK = st.one_of(st.none(), st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2), st.just({}))
SIG = st.sampled_from([None, "s", "", 5])
PART = st.one_of(
    st.fixed_dictionaries(
        {"text": st.one_of(st.text(max_size=4), JUNK)},
        optional={"thought": st.one_of(st.booleans(), JUNK), "thoughtSignature": SIG},
    ),
    st.fixed_dictionaries(
        {
            "functionCall": st.one_of(
                JUNK,
                st.fixed_dictionaries(
                    {},
                    optional={
                        "name": st.one_of(st.just("Read"), JUNK),
                        "args": st.one_of(st.just({"a": 1}), JUNK),
                        "id": st.one_of(st.just("c1"), st.just("bad id"), JUNK),
                    },
                ),
            )
        },
        optional={"thoughtSignature": SIG, "thought": st.booleans()},
    ),
    st.fixed_dictionaries({"thoughtSignature": SIG}),
    JUNK,
)
CAND = st.fixed_dictionaries(
    {},
    optional={
        "content": st.one_of(
            JUNK, st.fixed_dictionaries({}, optional={"parts": st.one_of(st.lists(PART, max_size=3), JUNK)})
        ),
        "finishReason": st.one_of(
            st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "MALFORMED_FUNCTION_CALL", "WHAT"]), JUNK
        ),
        "finishMessage": JUNK,
    },
)
CHUNK = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "candidates": st.one_of(st.lists(st.one_of(CAND, JUNK), max_size=2), JUNK),
            "usageMetadata": st.one_of(
                JUNK,
                st.fixed_dictionaries({"promptTokenCount": st.one_of(st.integers(-10, 10**20), st.floats(), JUNK)}),
            ),
            "promptFeedback": st.one_of(
                JUNK, st.fixed_dictionaries({"blockReason": st.one_of(st.just("SAFETY"), JUNK)})
            ),
            "responseId": st.one_of(st.text(max_size=30), JUNK),
        },
    ),
    st.just({"error": {"code": 503, "message": "boom"}}),
    st.just({"error": {"code": "x"}}),
)
EXTRA = st.sampled_from(
    [
        b"",
        b": keep-alive\r\n\r\n",
        b"\r\n",
        b"event: foo\r\n",
        b"id: 1\r\n",
        b'{"error": {"code": 500, "message": "stray"}}\n',
        b"garbage\n",
        b"data: \r\n\r\n",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(CHUNK, EXTRA), max_size=5), st.lists(st.integers(1, 2000), max_size=6), st.booleans())
def test_held_up_any_hostile_gemini_stream_gives_the_exact_grammar_or_a_clean_failure(chunks, cuts, crlf):
    """Held up (a guard, passes): junk parts, junk candidates, absurd usage, error chunks, stray
    lines and comments, split anywhere: the relayed stream is exact Anthropic grammar or fails
    before its head."""
    sep = b"\r\n\r\n" if crlf else b"\n\n"
    raw = b"".join(b"data: " + json.dumps(c).encode() + sep + x for c, x in chunks)
    reads, start = [], 0
    for cut in sorted(set(cuts)):
        if cut < len(raw):
            reads.append(raw[start:cut])
            start = cut
    reads.append(raw[start:])
    reads = [r for r in reads if r]
    try:
        out, err = asyncio.run(_pipeline(reads))
    except Exception as e:
        raise AssertionError(f"raised {type(e).__name__}: {e} for {raw!r}") from e
    if err is not None:
        return
    try:
        _grammar(out)
    except Exception as e:
        raise AssertionError(f"{e}\nraw={raw!r}\nout={out!r}") from e
    assert b"agproxy failed relaying" not in out, (raw, out)
