"""The relay pipeline's event objects (:class:`agproxy.Event`): decoded once where an answer is
read, encoded once at the edge. What the client gets must be what it got when every stage passed
bytes: the translators' compact encoding, and an upstream's own bytes, event by event, wherever
nothing changed; the stages that used to decode again (the head, the assembled Message, the
signature watch, the usage scaling) read the events' data."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agproxy
from tests.test_pipeline import ScriptedResponse

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)  # what json.loads can give
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | TEXT,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                           max_leaves=8)


def old_encoding(name: str, data: Dict[str, Any]) -> bytes:
    """How the translators wrote an event before events were objects (spelled out, not the function
    that does it now): one data line of compact JSON, non-ASCII as it is, a lone surrogate as "?"."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {name}\ndata: {text}\n\n".encode("utf-8", "replace")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["message_start", "content_block_delta", "message_delta", "error", "ping"]),
       st.dictionaries(TEXT, JSON_VALUES, max_size=4), st.text(max_size=8))
def test_an_event_without_its_bytes_is_encoded_as_the_translators_wrote_it(name, data, surrogates):
    data = dict(data, type=name, text="a\nb\r\u2028" + surrogates)  # line breaks and lone surrogates too
    event = agproxy.Event(name, data)
    assert event.encoded() == old_encoding(name, data) == agproxy.encode_events([event])
    decoded = agproxy.SSEDecoder().feed(event.encoded())
    assert [e.event for e in decoded] == [name] and json.loads(decoded[0].data)["type"] == name


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from([("text_delta", "text"), ("thinking_delta", "thinking"),
                                               ("input_json_delta", "partial_json"), ("signature_delta", "signature")]),
       st.text(max_size=12), st.text(max_size=8))
def test_a_relayed_delta_written_from_its_template_is_what_the_translators_wrote(index, kind, text, surrogates):
    text = "a\nb\r\u2028\"\\\x00\x7f\u00e9\ud800" + text + surrogates  # escapes, non-ASCII, a lone surrogate
    payload = {"type": "content_block_delta", "index": index, "delta": {"type": kind[0], kind[1]: text}}
    relayed = agproxy.delta_event(index, kind[0], kind[1], text, True)
    assert relayed.raw == old_encoding("content_block_delta", payload) == agproxy.encode_events([relayed])
    assert agproxy.delta_event(index, kind[0], kind[1], text, False).data == payload


START = agproxy.encode_sse_json("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None,
    "usage": {"input_tokens": 9, "output_tokens": 1}}})
BLOCK = agproxy.encode_sse_json("content_block_start", {"type": "content_block_start", "index": 0,
                                                        "content_block": {"type": "text", "text": ""}})
END = (agproxy.encode_sse_json("content_block_stop", {"type": "content_block_stop", "index": 0})
       + agproxy.encode_sse_json("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                                   "usage": {"output_tokens": 3}})
       + agproxy.encode_sse_json("message_stop", {"type": "message_stop"}))


def delta(text: str, spaced: bool) -> bytes:
    """A text delta as an upstream may write it: compact, or with spaces (json.dumps' default)."""
    payload = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    data = json.dumps(payload, ensure_ascii=False, separators=(", ", ": ") if spaced else (",", ":"))
    return b"event: content_block_delta\ndata: " + data.encode() + b"\n\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(TEXT, st.booleans()), min_size=1, max_size=8), st.data())
def test_each_passthrough_event_keeps_its_own_bytes_however_the_batches_fall(deltas, data):
    """An upstream's events, non-ASCII text included, cut into batches anywhere between events: each
    event the check gives carries exactly its own bytes, and the batches encode to what came."""
    events = [START, BLOCK] + [delta(text, spaced) for text, spaced in deltas] + [END]
    cuts = sorted(data.draw(st.sets(st.integers(1, len(events) - 1), max_size=4)))
    batches = [b"".join(events[a:b]) for a, b in zip([0] + cuts, cuts + [len(events)])]
    check = agproxy.EventStreamCheck("up")
    relayed = [check.feed(batch) for batch in batches]
    assert [agproxy.encode_events(got) for got in relayed] == batches  # as they came, not encoded again
    for event in (e for got in relayed for e in agproxy.single_events(got)):  # a run of deltas taken apart
        (one,) = agproxy.SSEDecoder().feed(event.raw)
        assert one.event == event.name and json.loads(one.data) == event.data


def test_a_batch_changed_anywhere_is_written_anew_event_by_event_as_before():
    """An event without its name (or a lone surrogate, or an unknown type) makes the check write
    its batch anew: every event from its own data's text, as the bytes-passing relay did."""
    bare = b"data: " + delta("x", True).split(b"data: ", 1)[1]
    check = agproxy.EventStreamCheck("up")
    got = check.feed(START + BLOCK + delta("é", True) + bare)
    spaced = json.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "é"}},
                        ensure_ascii=False)
    assert got[2].raw == agproxy.encode_sse("content_block_delta", spaced)  # its spaces kept
    assert got[3].raw == delta("x", True) and [e.name for e in got][:2] == ["message_start", "content_block_start"]


def test_the_usage_scaler_rewrites_copies_and_leaves_other_events_as_they_came():
    events = agproxy.EventStreamCheck("up").feed(START + BLOCK + delta("hi", True) + END)
    start_data = json.dumps(events[0].data)
    scaled = agproxy.UsageScaler(32000, 200000).scale(events)
    assert json.dumps(events[0].data) == start_data  # the usage the record took is not scaled under it
    assert scaled[0].raw is None and scaled[0].data["message"]["usage"]["input_tokens"] == \
        agproxy.scale_tokens(9, 32000, 200000)
    assert scaled[1:] == events[1:]  # message_delta says only output tokens: nothing to scale, as it came


def _thinking_stream() -> List[bytes]:
    def enc(payload: Dict[str, Any]) -> bytes:
        return agproxy.encode_sse_json(payload["type"], payload)

    def block(index: int, content: Dict[str, Any], deltas: List[Dict[str, Any]]) -> List[bytes]:
        return ([enc({"type": "content_block_start", "index": index, "content_block": content})]
                + [enc({"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
                + [enc({"type": "content_block_stop", "index": index})])
    return ([START]
            + block(0, {"type": "thinking", "thinking": "", "signature": ""},
                    [{"type": "thinking_delta", "thinking": "hm"}, {"type": "signature_delta", "signature": "sig-"},
                     {"type": "signature_delta", "signature": "one"}])
            + block(1, {"type": "text", "text": ""}, [{"type": "text_delta", "text": "signature_delta"}])
            + block(2, {"type": "redacted_thinking", "data": "opaque-two"}, [])
            + block(3, {"type": "thinking", "thinking": "", "signature": "sig-three"}, [])
            + [enc({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}),
               enc({"type": "message_stop"})])


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_the_signature_watch_records_what_the_whole_message_holds_however_the_batches_fall(data):
    events = _thinking_stream()
    cuts = sorted(data.draw(st.sets(st.integers(1, len(events) - 1), max_size=6)))
    check, watched = agproxy.EventStreamCheck("up"), agproxy.SignatureBook()
    watcher = agproxy.SignatureWatcher(watched, "up")
    for a, b in zip([0] + cuts, cuts + [len(events)]):
        watcher.feed(check.feed(b"".join(events[a:b])))
    whole = agproxy.SignatureBook()
    message = asyncio.run(agproxy.accumulate_events(agproxy.anthropic_events(ScriptedResponse([b"".join(events)]),
                                                                             "up")))
    whole.record_message(message, "up")
    assert watched._owners == whole._owners and len(whole._owners) == 3  # sig-one, opaque-two, sig-three
    assert watched.owner("sig-one") == "up" and watched.owner("signature_delta") is None


def test_the_head_and_the_message_come_from_the_events_data():
    async def go() -> tuple:
        events = agproxy.anthropic_events(ScriptedResponse([START, BLOCK + delta("hé", True) + END]), "up")
        head = await agproxy.first_events(events)
        whole = await agproxy.accumulate_events(
            agproxy.anthropic_events(ScriptedResponse([START, BLOCK + delta("hé", True) + END]), "up"))
        return head, whole
    head, whole = asyncio.run(go())
    head = agproxy.single_events(head)  # the delta came as a run (of one)
    assert [e.name for e in head] == ["message_start", "content_block_start", "content_block_delta",
                                      "content_block_stop", "message_delta", "message_stop"]
    assert whole["content"] == [{"type": "text", "text": "hé"}] and whole["usage"]["output_tokens"] == 3
    accumulator = agproxy.MessageAccumulator()
    for event in head:
        accumulator.add(event.name, event.data)
    assert accumulator.result() == whole


def test_an_error_in_the_head_is_raised_from_its_data():
    error = agproxy.encode_sse_json("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                          "message": "busy now"}})
    with pytest.raises(agproxy.AgproxyError, match="busy now") as caught:
        asyncio.run(agproxy.first_events(agproxy.anthropic_events(ScriptedResponse([START + error]), "up")))
    assert caught.value.status == 529


def test_a_head_of_pings_without_end_is_refused():
    ping = agproxy.encode_sse_json("ping", {"type": "ping"})
    reads = [START] + [ping * 100] * (agproxy.MAX_HEAD_EVENTS // 100 + 1)
    with pytest.raises(agproxy.UpstreamFailure, match="without content"):
        asyncio.run(agproxy.first_events(agproxy.anthropic_events(ScriptedResponse(reads), "up")))


# -- the recorded answers of real servers ------------------------------------------------------------

def _recordings() -> List[Any]:
    found = []
    for folder, kind, separator in (("real-streams", "openai", b"\n\n"),
                                    ("real-streams-gemini", "gemini", b"\r\n\r\n")):
        for path in sorted((SHARED / folder / "fixtures").glob("*.json")) if (SHARED / folder).is_dir() else []:
            recording = json.loads(path.read_text())
            if not recording.get("chunks") or recording.get("stream") is False or \
                    recording.get("framing") == "json-array" or recording.get("kind", "stream") != "stream":
                continue
            raw = recording["raw_sse"].encode() if recording.get("raw_sse") else \
                b"".join(b"data: " + json.dumps(c).encode() + separator for c in recording["chunks"])
            if kind == "openai" and not recording.get("raw_sse") and recording.get("done", True):
                raw += b"data: [DONE]\n\n"
            found.append(pytest.param(kind, raw, id=f"{kind}-{path.stem}"))
    return found


RECORDINGS = _recordings()


async def _relayed(events: Any, response: Any) -> bytes:
    head = await agproxy.first_events(events)
    return b"".join([c async for c in agproxy.relay_events(head, events, response, "up")])


@pytest.mark.skipif(not RECORDINGS, reason="../shared/real-streams* is not here (a user's clone)")
@pytest.mark.parametrize("kind, raw", RECORDINGS)
def test_a_recorded_answer_is_relayed_in_the_translators_encoding_and_passes_through_unchanged(kind, raw):
    """Each real recording, translated: every event is compact JSON as the translators wrote it,
    and that answer, sent by an Anthropic upstream (whole, or 7 bytes a read), reaches the client
    byte for byte."""
    def translated(reads: List[bytes]) -> Any:
        response = ScriptedResponse(reads)
        translator = agproxy.OpenAIStreamTranslator("m", 0) if kind == "openai" else \
            agproxy.GeminiStreamTranslator("m", 0)
        events = agproxy.openai_events(response, translator) if kind == "openai" else \
            agproxy.gemini_events(response, translator)
        return events, response

    out = asyncio.run(_relayed(*translated([raw[i:i + 5] for i in range(0, len(raw), 5)])))
    decoded = agproxy.SSEDecoder().feed(out)
    assert out == b"".join(old_encoding(e.event, json.loads(e.data)) for e in decoded)
    for piece in (1 << 20, 7):
        response = ScriptedResponse([out[i:i + piece] for i in range(0, len(out), piece)])
        assert asyncio.run(_relayed(agproxy.anthropic_events(response, "up"), ScriptedResponse([]))) == out


#: What a delta's JSON string may hold on the wire: characters, control ones too, and backslashes
#: with what may or may not make an escape of them.
WIRE_STRING = st.lists(st.sampled_from(['a', 'é', '"', '\\', '\\"', '\\\\', '\\/', '\\n', '\\x', '\\u00e9', '\\u12',
                                        '\\ud83d\\ude00', '\x00', '\x1f', '\x7f', '\n', '\u2028', 'u', '0']),
                       max_size=8).map("".join)


@settings(max_examples=500, deadline=None)
@given(WIRE_STRING, st.sampled_from([("text_delta", "text"), ("thinking_delta", "thinking"),
                                     ("input_json_delta", "partial_json"), ("text_delta", "partial_json")]),
       st.sampled_from(["0", "1", "00", "-0", "1.0", "99999", "100000"]), st.booleans())
def test_a_delta_checked_without_decoding_is_refused_exactly_when_its_data_is_not_json(string, kinds, index, spaced):
    """The check knows a plain delta by one match instead of decoding it: it must take and refuse
    exactly what decoding would (a raw control character, a bad escape, an index out of bounds)."""
    colon, comma = (": ", ", ") if spaced else (":", ",")
    data = (f'{{"type"{colon}"content_block_delta"{comma}"index"{colon}{index}{comma}"delta"{colon}'
            f'{{"type"{colon}"{kinds[0]}"{comma}"{kinds[1]}"{colon}"{string}"}}}}')
    if "\n" in data:
        return  # an SSE line break: another event's data, not this one's
    blocks = b"".join(agproxy.encode_sse_json("content_block_start", {
        "type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}) for i in (0, 1))
    event = f"event: content_block_delta\ndata: {data}\n\n".encode()
    try:
        payload = agproxy.loads_strict(data)
        valid = isinstance(payload["index"], int) and 0 <= payload["index"] < 2
    except ValueError:
        valid = False
    check = agproxy.EventStreamCheck("up")
    check.feed(START + blocks)
    if valid:
        (got,) = agproxy.single_events(check.feed(event))
        assert got.name == "content_block_delta" and got.data == payload
    else:
        with pytest.raises(agproxy.UpstreamFailure):
            check.feed(event)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=8)
chunk_texts = st.one_of(
    json_values.map(json.dumps), json_values.map(lambda v: json.dumps(v, ensure_ascii=False)),
    json_values.map(lambda v: f" {json.dumps(v)}\t"), st.text(max_size=30),
    st.sampled_from(["NaN", "[1e999]", '"\\ud800"', '{"a": "\\udc00x"}', "[DONE]", "", "{}{}", '{"a":1} 2',
                     "[" * 90 + "]" * 90, '{"a":' * 81 + "1" + "}" * 81, "[" * 40 + "]" * 40]),
    st.integers(min_value=60, max_value=100).map(lambda depth: "[" * depth + "]" * depth))


@settings(max_examples=400, deadline=None)
@given(st.lists(chunk_texts, max_size=8))
def test_a_read_s_chunks_decoded_at_once_are_what_each_decodes_to_alone(texts):
    for text, value in zip(texts, agproxy.loads_each(texts)):
        if value is not None:  # the usual chunk, taken at once: exactly what the careful decode gives
            assert value == agproxy.loads_strict(text) and repr(value) == repr(agproxy.loads_strict(text))
    assert len(agproxy.loads_each(texts)) == len(texts)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=30).filter(lambda text: not text.startswith(":")),
                          st.sampled_from(["text", "thinking", "partial_json"]),
                          st.booleans(), st.booleans()), max_size=6))
def test_a_relayed_batch_counts_the_bytes_of_its_deltas_content_however_they_are_written(deltas):
    # (a content that begins with a colon reads as a key's: counted a little short, an estimate still)
    batch, expected = [], 0
    for text, field, spaced, ascii_only in deltas:
        kind = {"text": "text_delta", "thinking": "thinking_delta", "partial_json": "input_json_delta"}[field]
        payload = {"type": "content_block_delta", "index": 0, "delta": {"type": kind, field: text}}
        separators = (", ", ": ") if spaced else (",", ":")
        data = json.dumps(payload, separators=separators, ensure_ascii=ascii_only)
        batch.append(agproxy.Event("content_block_delta", None,
                                   f"event: content_block_delta\ndata: {data}\n\n".encode("utf-8", "replace")))
        expected += len(json.dumps(text, ensure_ascii=ascii_only).encode("utf-8", "replace")) - 2
    facts = agproxy.CallFacts()
    facts.relayed(batch + [agproxy.Event("ping", {"type": "ping"})])
    assert facts.relayed_chars == expected and not facts.final_usage
