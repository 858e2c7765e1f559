"""A translated stream writes the deltas one upstream read brought to one block as ONE event
(issue 22, :class:`agproxy.DeltaRun`): the client joins the same text, arguments and thinking per
block, in the same blocks, to the same final message, however the reads fall; nothing is joined
across blocks, kinds or a signature; a key cut across the joined chunks is still hidden."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any, Dict, List, Tuple

import anthropic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agproxy
from tests.fakes.openai_upstream import Chunks, FakeOpenAI, chunk
from tests.test_fastpaths import RECORDINGS, naive_sse
from tests.test_openai import local_config, sdk
from tests.test_pipeline import ScriptedResponse
from tests.test_real_streams import well_formed


def _story(stream: bytes) -> Tuple[List[Dict[str, Any]], Dict[str, Any], int]:
    """What a client makes of an Anthropic stream: each block (its start without ids, the joined
    string of each delta type, its signatures in order), the final message_delta, and the number
    of delta events."""
    blocks: List[Dict[str, Any]] = []
    final: Dict[str, Any] = {}
    deltas = 0
    for event in agproxy.SSEDecoder().feed(stream):
        data = json.loads(event.data)
        if event.event == "content_block_start":
            block = dict(data["content_block"])
            block.pop("id", None)
            blocks.append({"start": block, "text": {}, "signatures": []})
        elif event.event == "content_block_delta":
            deltas += 1
            delta = data["delta"]
            kind = delta["type"]
            value = delta[{"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json",
                           "signature_delta": "signature"}[kind]]
            if kind == "signature_delta":
                blocks[-1]["signatures"].append(value)
            else:
                blocks[-1]["text"][kind] = blocks[-1]["text"].get(kind, "") + value
        elif event.event == "message_delta":
            final = data
    return blocks, final, deltas


def _translated(name: str, reads: List[bytes], relayed: bool = True) -> bytes:
    """The stream a client gets from an upstream's body arriving as ``reads``."""
    if "gemini" in name:
        translator: Any = agproxy.GeminiStreamTranslator("m", 3)
        events = agproxy.gemini_events
    else:
        translator = agproxy.OpenAIStreamTranslator("m", 3)
        events = agproxy.openai_events
    translator.relayed = relayed

    async def run() -> bytes:
        return b"".join([agproxy.encode_events(batch) async for batch in events(ScriptedResponse(reads), translator)])

    return asyncio.run(run())


def _chunk_by_chunk(name: str, raw: bytes) -> bytes:
    """The stream as it was before joining: one read per upstream event, so no read joins two chunks."""
    return _translated(name, [f"data: {data}\n\n".encode() for _, data in naive_sse(raw)])


GOOD = [(n, r) for n, r in RECORDINGS if b'"error"' not in r]


@pytest.mark.skipif(not GOOD, reason="../shared/real-streams is not here (a user's clone)")
@pytest.mark.parametrize("name,raw", GOOD, ids=[n for n, _ in GOOD])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.randoms(use_true_random=False), relayed=st.booleans())
def test_joined_deltas_tell_the_same_blocks_however_the_reads_fall(name: str, raw: bytes, seed: random.Random,
                                                                   relayed: bool) -> None:
    want_blocks, want_final, want_deltas = _story(_chunk_by_chunk(name, raw))
    cuts = sorted(seed.sample(range(1, len(raw)), min(len(raw) - 1, seed.randint(0, 8))))
    reads = [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]
    stream = _translated(name, reads, relayed)
    well_formed(stream)
    blocks, final, deltas = _story(stream)
    assert blocks == want_blocks
    assert final == want_final
    assert deltas <= want_deltas
    if len(reads) == 1 and want_deltas > len(want_blocks):  # one read: one delta event per block and kind
        assert deltas == sum(len(b["text"]) + len(b["signatures"]) for b in blocks)


def test_a_run_ends_at_a_block_a_kind_and_a_signature() -> None:
    """Reasoning, text, two tool calls and text again in one read: one delta per block, in order."""
    chunks = [chunk({"reasoning_content": "Think"}), chunk({"reasoning_content": "ing."}),
              chunk({"content": "Hel"}), chunk({"content": "lo"}),
              chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": '{"a"'}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
              chunk({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "g", "arguments": "{}"}}]}),
              chunk({}, "tool_calls")]
    stream = _translated("openai", [b"".join(b"data: %s\n\n" % json.dumps(c).encode() for c in chunks)
                                    + b"data: [DONE]\n\n"])
    well_formed(stream)
    blocks, final, deltas = _story(stream)
    assert [b["text"] for b in blocks] == [{"thinking_delta": "Thinking."}, {"text_delta": "Hello"},
                                           {"input_json_delta": '{"a": 1}'}, {"input_json_delta": "{}"}]
    assert deltas == 4 and final["delta"]["stop_reason"] == "tool_use"
    gemini = [{"candidates": [{"content": {"parts": [{"text": "a", "thought": True}]}}]},
              {"candidates": [{"content": {"parts": [{"text": "b", "thought": True, "thoughtSignature": "c2ln"}]}}]},
              {"candidates": [{"content": {"parts": [{"text": "x"}]}}]},
              {"candidates": [{"content": {"parts": [{"text": "y"}]}, "finishReason": "STOP"}]}]
    stream = _translated("gemini", [b"".join(b"data: %s\n\n" % json.dumps(c).encode() for c in gemini)])
    well_formed(stream)
    events = [(e.event, json.loads(e.data).get("delta", {}).get("type")) for e in agproxy.SSEDecoder().feed(stream)]
    assert [t for n, t in events if n == "content_block_delta"] == ["thinking_delta", "signature_delta", "text_delta"]
    blocks, _, _ = _story(stream)
    assert blocks[0]["text"] == {"thinking_delta": "ab"} and blocks[1]["text"] == {"text_delta": "xy"}


def test_a_read_of_fifty_text_chunks_reaches_the_sdk_as_fewer_events_with_the_same_text(start_agproxy) -> None:
    words = [f"w{i} " for i in range(50)]
    with FakeOpenAI() as fake:
        fake.script(Chunks([chunk({"role": "assistant", "content": ""})] + [chunk({"content": w}) for w in words]
                           + [chunk({}, "stop")], in_one_write=True))
        proxy = start_agproxy(local_config(fake))
        with sdk(proxy).messages.stream(model="m", max_tokens=500,
                                        messages=[{"role": "user", "content": "hi"}]) as stream:
            events = list(stream)
            message = stream.get_final_message()
    text_events = [e for e in events if e.type == "content_block_delta"]
    assert "".join(e.delta.text for e in text_events) == "".join(words) == message.content[0].text
    assert 1 <= len(text_events) < 10  # the fake writes them in one write: a read or few, not 50
    assert message.stop_reason == "end_turn" and isinstance(message, anthropic.types.Message)


def test_a_key_cut_across_the_chunks_of_one_read_is_hidden(start_agproxy) -> None:
    config_of = local_config  # the upstream account's key is a secret agproxy holds
    with FakeOpenAI() as fake:
        config = config_of(fake)
        key = config["upstreams"][0]["accounts"][0]["api_key"] = "sk-test-" + "k" * 40
        pieces = ["The key is ", key[:10], key[10:30], key[30:], " and that is all."]
        fake.script(Chunks([chunk({"role": "assistant", "content": ""})] + [chunk({"content": p}) for p in pieces]
                           + [chunk({}, "stop")]))
        proxy = start_agproxy(config)
        with sdk(proxy).messages.stream(model="m", max_tokens=500,
                                        messages=[{"role": "user", "content": "hi"}]) as stream:
            text = "".join(stream.text_stream)
    assert key not in text and key[10:30] not in text
    assert text.startswith("The key is ") and text.endswith(" and that is all.")


# -- synthetic hostile chunks (the recordings above are absent from a user's clone) ------------------

#: Pieces of text that need escapes, split pairs' halves as JSON escape text, and a key's start.
_HOSTILE_TEXT = st.lists(st.sampled_from(list('ab"\\\n\u2028\x00/{}') + ["\U0001F600", "\\u00", "\\ud83d", "sk-"]),
                         max_size=6).map("".join)
_OPENAI_FRAGMENTS = st.one_of(
    _HOSTILE_TEXT.map(lambda t: {"content": t}),
    _HOSTILE_TEXT.map(lambda t: {"reasoning_content": t}),
    st.tuples(st.sampled_from([0, 1, None]), st.sampled_from([None, "", "c1", "c2"]), st.sampled_from([None, "f", "g"]),
              _HOSTILE_TEXT).map(lambda t: {"tool_calls": [dict(
                  {k: v for k, v in (("index", t[0]), ("id", t[1])) if v is not None},
                  function={k: v for k, v in (("name", t[2]), ("arguments", t[3])) if v is not None})]}))
_GEMINI_PARTS = st.one_of(
    _HOSTILE_TEXT.map(lambda t: {"text": t}),
    _HOSTILE_TEXT.map(lambda t: {"text": t, "thought": True}),
    st.tuples(_HOSTILE_TEXT, st.booleans()).map(lambda t: {"text": t[0], "thought": t[1], "thoughtSignature": "c2ln"}),
    st.tuples(st.sampled_from(["f", "g"]), _HOSTILE_TEXT).map(
        lambda t: {"functionCall": {"name": t[0], "args": {"x": t[1]}}}))


def _delta_order(stream: bytes) -> List[Tuple[int, str]]:
    """The (block, delta type) of a stream's deltas in order, the same one after another counted once."""
    order: List[Tuple[int, str]] = []
    for event in agproxy.SSEDecoder().feed(stream):
        if event.event == "content_block_delta":
            data = json.loads(event.data)
            if not order or order[-1] != (data["index"], data["delta"]["type"]):
                order.append((data["index"], data["delta"]["type"]))
    return order


def _in_reads(events: List[bytes], sizes: List[int]) -> List[bytes]:
    reads, at = [], 0
    for size in sizes + [len(events)]:
        if events[at:at + size]:
            reads.append(b"".join(events[at:at + size]))
        at += size
    return reads


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.tuples(st.just("openai"), st.lists(_OPENAI_FRAGMENTS, max_size=12)),
                 st.tuples(st.just("gemini"), st.lists(st.lists(_GEMINI_PARTS, min_size=1, max_size=3), max_size=8))),
       st.lists(st.integers(1, 5), max_size=5), st.booleans())
def test_hostile_chunks_tell_the_same_blocks_however_the_reads_fall(upstream: Tuple[str, List[Any]], sizes: List[int],
                                                                    relayed: bool) -> None:
    """Text, reasoning and tool calls (parallel ones interleaved, ids and names late or missing)
    whose strings need escapes: joined per read, they tell the same blocks, their deltas' kinds in the
    same order (no thinking joined past its signature), as one chunk per read."""
    name, pieces = upstream
    if name == "openai":
        chunks: List[Dict[str, Any]] = [{"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
        chunks += [{"id": "x", "choices": [{"index": 0, "delta": piece}]} for piece in pieces]
        chunks.append({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    else:
        chunks = [{"candidates": [{"content": {"role": "model", "parts": parts}}], "responseId": "r"}
                  for parts in pieces]
        chunks.append({"candidates": [{"content": {"parts": [{"text": ""}]}, "finishReason": "STOP"}]})
    events = [b"data: %s\n\n" % json.dumps(c, ensure_ascii=bool(i % 2)).encode() for i, c in enumerate(chunks)]
    events += [b"data: [DONE]\n\n"] if name == "openai" else []
    one_by_one = _translated(name, events)
    want = _story(one_by_one)[:2], _delta_order(one_by_one)
    for reads in ([b"".join(events)], _in_reads(events, sizes)):
        stream = _translated(name, reads, relayed)
        well_formed(stream)
        assert (_story(stream)[:2], _delta_order(stream)) == want
