"""Chat Completions answers recorded from real servers (OpenAI, Azure, vLLM, Ollama, llama.cpp,
DeepSeek, Groq, Mistral, Qwen, xAI, Perplexity), read from ``../shared/real-streams/`` (skipped
where that is absent: the recordings are third-party data and stay out of this repository).
Each must come out as the answer ``expect`` describes (derived from the recording alone): text,
thinking, tool calls, stop reason and usage, in valid Anthropic event order, whole and with the
bytes arriving five at a time; and, streamed or not, through the same pipeline agproxy runs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

import agproxy
from tests.test_pipeline import ScriptedResponse, events_of

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "real-streams" / "fixtures"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json")) if FIXTURES.is_dir() else []
STREAMS = [n for n in NAMES if json.loads((FIXTURES / f"{n}.json").read_text()).get("stream")]
BODIES = [n for n in NAMES if n not in STREAMS]

pytestmark = pytest.mark.skipif(not NAMES, reason="../shared/real-streams is not here (a user's clone)")


def fixture(name: str) -> Dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def sse_bytes(recording: Dict[str, Any]) -> bytes:
    """The recording as the server sent it: its exact SSE bytes where kept, else one event per chunk."""
    if recording.get("raw_sse"):
        return recording["raw_sse"].encode()
    data = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in recording["chunks"])
    return data + (b"data: [DONE]\n\n" if recording.get("done", True) else b"")


def seen(message: Dict[str, Any]) -> Dict[str, Any]:
    """An Anthropic Message in ``expect``'s terms."""
    blocks = message["content"]
    out = {"text": "".join(b["text"] for b in blocks if b["type"] == "text"),
           "thinking": "".join(b["thinking"] for b in blocks if b["type"] == "thinking"),
           "tool_calls": [{"name": b["name"], "input": b["input"]} for b in blocks if b["type"] == "tool_use"],
           "stop_reason": message["stop_reason"]}
    usage = message.get("usage") or {}
    out["usage"] = {"output_tokens": usage.get("output_tokens"),
                    "prompt_tokens": (usage.get("input_tokens") or 0) + (usage.get("cache_read_input_tokens") or 0)}
    return out


def wanted(expect: Dict[str, Any]) -> Dict[str, Any]:
    out = {k: expect[k] for k in ("text", "thinking", "tool_calls", "stop_reason")}
    if "usage" in expect:
        out["usage"] = expect["usage"]
    return out


def compare(message: Dict[str, Any], expect: Dict[str, Any]) -> None:
    got, want = seen(message), wanted(expect)
    if "usage" not in want:
        got.pop("usage")
    assert got == want


def well_formed(data: bytes) -> None:
    """The Anthropic event grammar: message_start, blocks opened, filled and closed one at a time
    with increasing indices, message_delta, message_stop; nothing after it."""
    events = agproxy.SSEDecoder().feed(data)
    kinds = [e.event for e in events if e.event != "ping"]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"], kinds
    open_index, next_index = None, 0
    for event in events:
        payload = json.loads(event.data)
        if event.event == "content_block_start":
            assert open_index is None and payload["index"] == next_index
            open_index, next_index = payload["index"], next_index + 1
        elif event.event == "content_block_delta":
            assert payload["index"] == open_index
        elif event.event == "content_block_stop":
            assert payload["index"] == open_index
            open_index = None
    assert open_index is None


def openai_answer(response: Any) -> Any:
    return agproxy.openai_events(response, agproxy.OpenAIStreamTranslator("m", 0))


def message_of(stream: bytes) -> Dict[str, Any]:
    """The Message an Anthropic event stream describes."""
    accumulator = agproxy.MessageAccumulator()
    for event in agproxy.SSEDecoder().feed(stream):
        accumulator.feed(event)
    return accumulator.result()


async def through_the_pipeline(raw: bytes, piece: int, answer_events: Any = openai_answer) -> tuple:
    """The relayed stream (what a streaming client gets) and the assembled Message (what a
    non-streaming one gets), from the same bytes arriving ``piece`` at a time, made Anthropic
    events by ``answer_events`` (a kind's translation of its upstream's stream)."""
    reads: List[Any] = [raw[i:i + piece] for i in range(0, len(raw), piece)]

    def events() -> Any:
        return answer_events(ScriptedResponse(list(reads)))

    relayed = events()
    response = ScriptedResponse([])
    head = await agproxy.first_events(relayed)
    streamed = b"".join([c async for c in agproxy.relay_events(head, relayed, response, "up")])
    return streamed, await agproxy.accumulate_events(events())


@pytest.mark.parametrize("piece", [1 << 20, 5], ids=["whole", "5-bytes"])
@pytest.mark.parametrize("name", STREAMS)
def test_every_recorded_stream_translates_to_what_the_server_said(name: str, piece: int) -> None:
    recording = fixture(name)
    streamed, message = asyncio.run(through_the_pipeline(sse_bytes(recording), piece))
    assert "error" not in events_of(streamed), streamed[-400:]
    well_formed(streamed)
    compare(message, recording["expect"])
    assert message_of(streamed)["content"] == message["content"]  # the stream says what the whole answer says


@pytest.mark.parametrize("name", BODIES)
def test_every_recorded_answer_translates_to_what_the_server_said(name: str) -> None:
    recording = fixture(name)
    compare(agproxy.openai_to_anthropic(recording["body"], "m"), recording["expect"])


async def passed_through(raw: bytes, piece: int, usage_chunk: bool) -> bytes:
    """What a Chat Completions client gets of a recorded stream passed through untranslated (a
    same-protocol passthrough), the bytes arriving ``piece`` at a time, with configured keys."""
    reads: List[Any] = [raw[i:i + piece] for i in range(0, len(raw), piece)]
    native = agproxy.NativeChunks(agproxy.Redactor(["sk-some-configured-key-0123456789"]), "chat", usage_chunk)
    translator = agproxy.OpenAIStreamTranslator("m", 0)
    translator.relayed = True
    relayed = agproxy.openai_events(ScriptedResponse(reads), translator, native)
    head = await agproxy.first_events(relayed)
    return b"".join([c async for c in agproxy.relay_events(head, relayed, ScriptedResponse([]), "up",
                                                           encoder=agproxy.NativeStreamEncoder("chat"))])


@pytest.mark.parametrize("piece", [1 << 20, 5], ids=["whole", "5-bytes"])
@pytest.mark.parametrize("name", STREAMS)
def test_every_recorded_stream_passes_through_to_a_chat_client_as_the_server_sent_it(name: str, piece: int) -> None:
    recording = fixture(name)
    sent = [json.loads(e.data) for e in agproxy.SSEDecoder().feed(sse_bytes(recording))
            if e.data.strip() not in ("", "[DONE]")]
    relayed = asyncio.run(passed_through(sse_bytes(recording), piece, True))
    events = [e.data for e in agproxy.SSEDecoder().feed(relayed)]
    assert events[-1] == "[DONE]" and "error" not in relayed.decode()
    got = [json.loads(data) for data in events[:-1]]
    if any(c.get("choices") and any(ch.get("finish_reason") for ch in c["choices"]) for c in sent):
        assert got == [agproxy.cleaned_chunk(c, "chat") for c in sent]  # a well-formed chunk: as it came
    else:  # a stream whose server gave no finish reason gets one, as the translated one says
        assert got[:-1] == [agproxy.cleaned_chunk(c, "chat") for c in sent]
        assert got[-1]["choices"][0]["finish_reason"] in ("stop", "tool_calls")
    assert sum(1 for c in got if c["object"] != "chat.completion.chunk") == 0
