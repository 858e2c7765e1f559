"""Gemini API answers recorded by others (gemini-2.5-flash to gemini-3.7-flash, gemma-4), read from
``../shared/real-streams-gemini/`` (skipped where that is absent: they are third-party data and
stay out of this repository). Each must come out as the answer ``expect`` describes: text,
thinking, tool calls, stop reason and usage, in valid Anthropic event order, whole and five bytes
at a time; its errors with the right status, type and wait; and every thought signature in it
must come back, on the next request, on the very part it came on."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

import agproxy
from tests.test_pipeline import ScriptedResponse, events_of
from tests.test_real_streams import message_of, through_the_pipeline, well_formed

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "real-streams-gemini" / "fixtures"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json")) if FIXTURES.is_dir() else []


def fixture(name: str) -> Dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def of_kind(kind: str) -> List[str]:
    return [n for n in NAMES if fixture(n)["kind"] == kind]


pytestmark = pytest.mark.skipif(not NAMES, reason="../shared/real-streams-gemini is not here (a user's clone)")


def sse_bytes(recording: Dict[str, Any]) -> bytes:
    """The recording as Gemini sends it with alt=sse: its exact bytes where kept, else one event per chunk."""
    if recording.get("raw_sse"):
        return recording["raw_sse"].encode()
    return b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in recording["chunks"])


def chunks_of(recording: Dict[str, Any]) -> List[Dict[str, Any]]:
    return recording["chunks"] if recording["kind"] == "stream" else [recording["body"]]


def seen(message: Dict[str, Any]) -> Dict[str, Any]:
    blocks = message["content"]
    usage = message.get("usage") or {}
    return {"text": "".join(b["text"] for b in blocks if b["type"] == "text"),
            "thinking": "".join(b["thinking"] for b in blocks if b["type"] == "thinking"),
            "tool_calls": [{"name": b["name"], "input": b["input"]} for b in blocks if b["type"] == "tool_use"],
            "stop_reason": message["stop_reason"],
            "usage": {"output_tokens": usage.get("output_tokens"),
                      "input": (usage.get("input_tokens") or 0) + (usage.get("cache_read_input_tokens") or 0)}}


def compare(message: Dict[str, Any], expect: Dict[str, Any]) -> None:
    got = seen(message)
    if expect.get("block_reason"):  # the user is told why, in words
        assert expect["block_reason"] in got["text"]
        got["text"] = ""
    want = {k: expect[k] for k in ("text", "thinking", "tool_calls", "stop_reason")}
    usage = got.pop("usage")
    assert got == want
    if "usage" in expect:
        assert usage["output_tokens"] == expect["usage"]["output_tokens"]
        # input plus cache reads make the prompt; Google's own tools' prompt counts as input
        assert usage["input"] == expect["usage"]["prompt_tokens"] + expect["usage"].get("tool_use_prompt_tokens", 0)


def gemini_answer(response: Any) -> Any:
    return agproxy.gemini_events(response, agproxy.GeminiStreamTranslator("m", 0))


def without_ids(blocks: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [dict(b, id="") if b["type"] == "tool_use" else b for b in blocks]


STREAMS = [n for n in of_kind("stream") if fixture(n)["framing"] != "json-array"]


@pytest.mark.parametrize("piece", [1 << 20, 5], ids=["whole", "5-bytes"])
@pytest.mark.parametrize("name", STREAMS)
def test_every_recorded_stream_translates_to_what_gemini_said(name: str, piece: int) -> None:
    recording = fixture(name)
    streamed, message = asyncio.run(through_the_pipeline(sse_bytes(recording), piece, gemini_answer))
    assert "error" not in events_of(streamed), streamed[-400:]
    well_formed(streamed)
    compare(message, recording["expect"])
    assert without_ids(message_of(streamed)["content"]) == without_ids(message["content"])  # ids are made per run
    assert not [b for b in message["content"] if b["type"] == "text" and not b["text"]]  # no empty text blocks


ARRAYS = [n for n in of_kind("stream") if fixture(n)["framing"] == "json-array"]


@pytest.mark.parametrize("name", of_kind("body") + ARRAYS)
def test_every_recorded_answer_translates_to_what_gemini_said(name: str) -> None:
    recording = fixture(name)
    answer = recording["body"] if recording["kind"] == "body" else recording["chunks"]
    message = agproxy.gemini_to_anthropic(answer, "m")
    compare(message, recording["expect"])
    assert not [b for b in message["content"] if b["type"] == "text" and not b["text"]]


@pytest.mark.parametrize("name", of_kind("error"))
def test_every_recorded_error_keeps_its_status_type_and_wait(name: str) -> None:
    recording = fixture(name)
    data = json.dumps(recording["body"]).encode()
    expect = recording["expect"]
    error = agproxy.anthropic_error_from_upstream(recording["status"], data, "gemini")
    assert (error.status, error.error_type) == (expect["status"], expect["error_type"])
    assert expect["message_contains"] in error.message
    if "retry_after_s" in expect:
        assert agproxy.rate_limit_reset([], data, 0.0) == pytest.approx(expect["retry_after_s"])


def signed_parts(chunks: List[Dict[str, Any]]) -> List[Tuple[str, str]]:
    """Each call's signature (or "") in order, as the recording has them (the signature at the end of
    an answer without calls is not carried: Gemini does not check it)."""
    return [("call", part.get("thoughtSignature", "")) for chunk in chunks
            for candidate in (chunk.get("candidates") or [])[:1]
            for part in (candidate.get("content") or {}).get("parts") or [] if "functionCall" in part]


@pytest.mark.parametrize("name", [n for n in NAMES if fixture(n)["kind"] != "error"])
def test_every_signature_goes_back_on_the_part_it_came_on(name: str) -> None:
    recording = fixture(name)
    chunks = chunks_of(recording)
    book = agproxy.SignatureBook()
    message = agproxy.gemini_to_anthropic(chunks, "m", lambda call_id, sig: book.record(sig, "g/m"))
    tool_uses = [b for b in message["content"] if b["type"] == "tool_use"]
    body = {"model": "m", "max_tokens": 100, "messages": [
        {"role": "user", "content": "go"}, {"role": "assistant", "content": message["content"]}]}
    if tool_uses:
        body["messages"].append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": b["id"], "content": "done"} for b in tool_uses]})
    sent, _ = agproxy.anthropic_to_gemini(body, "m", lambda sig: book.owner(sig) in (None, "g/m"), lambda i: None)
    model_turn = next(c for c in sent["contents"] if c["role"] == "model") if message["content"] else {"parts": []}
    back = [("call", p.get("thoughtSignature", "")) for p in model_turn["parts"] if "functionCall" in p]
    assert back == signed_parts(chunks)
    if message["content"]:  # claude -p prints the last block: never an empty thinking block that carries a signature
        assert message["content"][-1]["type"] != "thinking" or message["content"][-1]["thinking"]
    if tool_uses:
        responses = [p["functionResponse"] for p in sent["contents"][-1]["parts"] if "functionResponse" in p]
        assert [(r["id"], r["name"]) for r in responses] == [(b["id"], b["name"]) for b in tool_uses]


async def passed_through(raw: bytes, piece: int, sse: bool) -> bytes:
    """What a Gemini client gets of a recorded stream passed through untranslated, the bytes
    arriving ``piece`` at a time, with configured keys (none of them in the recording)."""
    reads: List[Any] = [raw[i:i + piece] for i in range(0, len(raw), piece)]
    native = agproxy.NativeChunks(agproxy.Redactor(["AIza-some-configured-key-0123456789"]), "gemini")
    translator = agproxy.GeminiStreamTranslator("m", 0)
    translator.relayed = True
    relayed = agproxy.gemini_events(ScriptedResponse(reads), translator, native)
    head = await agproxy.first_events(relayed)
    return b"".join([c async for c in agproxy.relay_events(head, relayed, ScriptedResponse([]), "up",
                                                           encoder=agproxy.NativeStreamEncoder("gemini", sse))])


@pytest.mark.parametrize("sse", [True, False], ids=["sse", "array"])
@pytest.mark.parametrize("piece", [1 << 20, 5], ids=["whole", "5-bytes"])
@pytest.mark.parametrize("name", STREAMS)
def test_every_recorded_stream_passes_through_to_a_gemini_client_as_gemini_sent_it(name: str, piece: int,
                                                                                   sse: bool) -> None:
    recording = fixture(name)
    relayed = asyncio.run(passed_through(sse_bytes(recording), piece, sse))
    got = [json.loads(e.data) for e in agproxy.SSEDecoder().feed(relayed)] if sse else json.loads(relayed)
    assert got == [agproxy.cleaned_chunk(c, "gemini") for c in recording["chunks"]]
    assert got == recording["chunks"]  # every recorded chunk is well-formed: each goes as it came
