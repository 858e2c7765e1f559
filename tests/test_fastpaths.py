"""Differential tests of issue 22's fast paths: each is a second implementation of something a
general path (or a plain reference written here) already does, so each is fed the same adversarial
input as that path and must say exactly what it says: the same bytes, the same events, the same
error. Escapes, lone surrogates, U+2028, NUL, non-ASCII, huge numbers, duplicate keys, odd
spacing, CR / CRLF / LF, comments, multi-line data, a BOM, input cut at every offset, nesting at
the depth limit and bodies either side of the sizes that switch paths. The real recorded streams
(``../shared/real-streams*``, skipped where absent) are split at random offsets too."""

from __future__ import annotations

import copy
import datetime
import functools
import json
import math
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import agproxy
from tests import test_secrets as secrets_tests
from tests.conftest import fake_config, raw_request
from tests.fakes.anthropic_upstream import Raw
from tests.test_fuzz import CORPUS_BODIES, REQUEST

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"

# -- strategies -----------------------------------------------------------------------------------

#: text with what breaks escapers: quotes, backslashes, controls, NUL, U+2028/9, DEL, non-ASCII,
#: astral characters and lone surrogates
NASTY_CHARS = st.sampled_from(['"', "\\", "\n", "\r", "\t", "\x00", "\x1f", "\x7f", "\u2028", "\u2029", "é",
                               "\U0001f600", "\ud800", "\udfff", "/", "<", "\ufeff", " ", "a"])
NASTY_TEXT = st.lists(NASTY_CHARS | st.text(max_size=3), max_size=12).map("".join)
SAFE_TEXT = NASTY_TEXT.map(lambda t: re.sub("[\ud800-\udfff]", "", t))  # what JSON bytes can hold


def _scalars() -> st.SearchStrategy[Any]:
    return (st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.sampled_from([0, -1, 10**20, 2**63])
            | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([1.0, -0.0, 1e300, 5e-324])
            | SAFE_TEXT)


JSON_VALUES = st.recursive(_scalars(), lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(SAFE_TEXT, inner, max_size=4), max_leaves=20)


def spaced_json(value: Any, rnd: random.Random, ascii_only: bool) -> str:
    """``value`` as JSON with random whitespace between tokens and random escaping."""
    def ws() -> str:
        return rnd.choice(["", "", " ", "\n", "\r\n", "\t", "  \n "])
    if isinstance(value, dict):
        members = [ws() + json.dumps(k, ensure_ascii=ascii_only) + ws() + ":" + ws() + spaced_json(v, rnd, ascii_only)
                   + ws() for k, v in value.items()]
        return "{" + (",".join(members) if members else ws()) + "}"
    if isinstance(value, list):
        return "[" + (",".join(ws() + spaced_json(v, rnd, ascii_only) + ws() for v in value) or ws()) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON says it, types included (``1``, ``1.0`` and ``True`` differ; ``==`` says not)."""
    return json.dumps(a, sort_keys=False) == json.dumps(b, sort_keys=False)


# -- 1. delta_event's byte template against encode_sse_json -----------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**9), st.sampled_from([("text_delta", "text"), ("thinking_delta", "thinking"),
                                              ("input_json_delta", "partial_json"), ("signature_delta", "signature")]),
       NASTY_TEXT)
def test_delta_template_writes_what_the_general_encoder_writes(index: int, kind: Tuple[str, str], text: str) -> None:
    payload = {"type": "content_block_delta", "index": index, "delta": {"type": kind[0], kind[1]: text}}
    relayed = agproxy.delta_event(index, kind[0], kind[1], text, True)
    assert relayed.raw == agproxy.encode_sse_json("content_block_delta", payload)
    general = agproxy.encode_sse_json("content_block_delta", payload)
    assert relayed.data == json.loads(general.split(b"data: ", 1)[1])  # as the client reads it


# -- 2. ChunkedReader.read_through against read(), chunk by chunk ----------------------------------

def _chunked(pieces: List[bytes], rnd: random.Random) -> bytes:
    out = b""
    for piece in filter(None, pieces):  # (an empty chunk is the last)
        size = b"%x" % len(piece)
        size = rnd.choice([size, size.upper(), b"0" + size, size + b";ext=1", size + b" "])
        out += size + rnd.choice([b"\r\n", b"\n"]) + piece + rnd.choice([b"\r\n", b"\r\n", b"\n"])
    return out + b"0\r\n" + rnd.choice([b"", b"x-trailer: 1\r\n"]) + b"\r\n"


def _response_body(raw: bytes, cuts: List[int], through: bool) -> Tuple[bytes, Optional[str]]:
    """The body :meth:`UpstreamResponse.read_chunk` gives for ``raw`` read in pieces cut at ``cuts``
    (each read's pieces joined; a read whose framing breaks gives its error alone), and its error;
    :attr:`ResponseParser.wants_data` is checked against what next_event says."""
    parser = agproxy.ResponseParser()
    body, start = b"", 0
    parser.feed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    assert isinstance(parser.next_event(), agproxy.ResponseHead)
    if not through:
        parser._chunks.read_through = parser._chunks.read  # the general path: one chunk a call
    try:
        for cut in sorted(set(cuts)) + [len(raw), None]:
            if cut is not None and not raw[start:cut]:
                continue  # (an empty feed is the end of input)
            parser.feed(raw[start:cut] if cut is not None else b"")
            start = cut if cut is not None else start
            read = b""
            while True:
                wanted = parser.wants_data  # (read_chunk reads at once then, without asking next_event)
                event = parser.next_event()
                assert event == agproxy.NEED_DATA or not wanted
                if isinstance(event, bytes):
                    read += event
                    continue
                body += read
                if event == agproxy.END:
                    return body, None
                break
    except agproxy.UpstreamFailure as exc:
        return body, str(exc)
    return body, "no end"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8), st.randoms(use_true_random=False),
       st.lists(st.integers(0, 400), max_size=6), st.sampled_from([None, b"ZZ\r\n", b"5\r\nab", b"\r\n", b"-1\r\n",
                                                                    b"2\r\nabc\r\n", b"ffffffffffffffffff\r\n"]),
       st.integers(0, 10))
def test_chunked_body_read_through_says_what_read_says(pieces: List[bytes], rnd: random.Random, cuts: List[int],
                                                        garbage: Optional[bytes], where: int) -> None:
    """However the reads cut it, and whatever breaks the framing: the same body bytes before the
    same error, read by read. (Within one read, :meth:`ChunkedReader.read_through` raises at once
    where :meth:`ChunkedReader.read` first gives the chunks before the break; ``read_chunk`` drops
    those with the error either way.)"""
    raw = _chunked(pieces, rnd)
    if garbage is not None:
        at = [m.end() for m in re.finditer(rb"\r?\n", raw)]
        raw = raw[:at[where % len(at)]] + garbage
    for cut_set in ([], cuts, list(range(len(raw)))):
        assert _response_body(raw, cut_set, through=True) == _response_body(raw, cut_set, through=False)
    if garbage is None:
        assert _response_body(raw, cuts, through=True) == (b"".join(pieces), None)


#: Chunk data for ChunkedReader.whole_chunks: events, and bytes that look like framing inside data
#: (a CRLF, a CRLF and a size, the last chunk, a bare LF), so that a split can fall inside a chunk.
_FRAMING_LIKE_DATA = st.builds(
    lambda parts, at: b"".join(parts[:at]) + b"e" * 150 + b"".join(parts[at:]),  # an event's size, at least
    st.lists(st.sampled_from([b"\r\n", b"\r\n5\r\n", b"0", b"\r\n0\r\n\r\n", b"f\r\n", b"\n", b"x", b"\r", b""]),
             max_size=3), st.integers(0, 3))


def _usual_chunks(pieces: List[bytes], rnd: random.Random, odd: float) -> bytes:
    """:func:`_chunked`'s framing, each chunk the usual ``size CRLF data CRLF`` but for a share
    ``odd`` of them (written as :func:`_chunked` may: an extension, blanks, bare LFs)."""
    out = b""
    for piece in filter(None, pieces):
        size = b"%x" % len(piece)
        if rnd.random() >= odd:
            out += size + b"\r\n" + piece + b"\r\n"
        else:
            size = rnd.choice([size.upper(), b"0" + size, size + b";ext=1", size + b" "])
            out += size + rnd.choice([b"\r\n", b"\n"]) + piece + rnd.choice([b"\r\n", b"\n"])
    return out + b"0\r\n" + rnd.choice([b"", b"x-trailer: 1\r\n"]) + b"\r\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(_FRAMING_LIKE_DATA, max_size=40), st.randoms(use_true_random=False), st.sampled_from([0, 0.05, 0.3]),
       st.integers(0, 8000))
def test_whole_chunks_are_the_chunks_read_reads(pieces: List[bytes], rnd: random.Random, odd: float,
                                                cut: int) -> None:
    """ChunkedReader.whole_chunks (one split of a read) against read() one chunk at a time, on a
    read cut anywhere: the same chunks' data, the same bytes left, the state at a size line."""
    raw = _usual_chunks(pieces, rnd, odd)[:cut]
    fast, general = (agproxy.ChunkedReader(agproxy._upstream_framing_error, 65536) for _ in range(2))
    left = bytearray(raw)
    taken = fast.whole_chunks(left)
    read_left = bytearray(raw)
    read = [general.read(read_left) for _ in taken]
    if taken:
        assert general.state is agproxy._CHUNK_END and read_left.startswith(b"\r\n")
        del read_left[:2]
    assert (taken, left, fast.state) == (read, read_left, agproxy._CHUNK_SIZE)
    if odd == 0 and len(raw) >= agproxy._MANY_CHUNKS_BYTES and b"\r" not in b"".join(pieces):
        assert raw.startswith(b"0\r\n") or taken  # the usual framing is taken at once


@settings(max_examples=200, deadline=None)
@given(st.lists(_FRAMING_LIKE_DATA, max_size=40), st.randoms(use_true_random=False), st.sampled_from([0, 0.05, 0.3]),
       st.lists(st.integers(0, 8000), max_size=6), st.sampled_from([None, b"ZZ\r\n", b"5\r\nab", b"\r\n", b"-1\r\n",
                                                                     b"2\r\nabc\r\n", b"ffffffffffffffffff\r\n"]),
       st.integers(0, 60))
def test_chunked_reads_of_many_chunks_say_what_read_says(pieces: List[bytes], rnd: random.Random, odd: float,
                                                         cuts: List[int], garbage: Optional[bytes], where: int) -> None:
    """Reads large enough for :meth:`ChunkedReader.whole_chunks`, framing broken anywhere: the
    same body and error through read_through as through read(), read by read."""
    raw = _usual_chunks(pieces, rnd, odd)
    if garbage is not None:
        at = [m.end() for m in re.finditer(rb"\r?\n", raw)]
        raw = raw[:at[where % len(at)]] + garbage
    for cut_set in ([], cuts):
        assert _response_body(raw, cut_set, through=True) == _response_body(raw, cut_set, through=False)
    if garbage is None:
        assert _response_body(raw, cuts, through=True) == (b"".join(pieces), None)


def test_a_read_that_begins_inside_a_chunk_takes_the_whole_chunks_after_it_at_once() -> None:
    """Most reads of a fast stream begin inside a chunk the read before cut: the whole chunks after
    its rest go through whole_chunks too (round 4 split only reads that began at a size line, and a
    third of the passthrough's events went through read_through's loop one chunk at a time)."""
    event = b"event: content_block_delta\ndata: " + b"x" * 120 + b"\n\n"
    raw = b"%x\r\n%b\r\n" % (len(event), event) * 40
    reader = agproxy.ChunkedReader(agproxy._upstream_framing_error, 65536)
    split, taken = reader.whole_chunks, []

    def counted(buffer: bytearray) -> List[bytes]:
        pieces = split(buffer)
        taken.append(len(pieces))
        return pieces

    reader.whole_chunks = counted  # type: ignore[method-assign]
    buffer = bytearray(raw[:50])
    assert reader.read_through(buffer) == event[:46]
    buffer += raw[50:]
    assert reader.read_through(buffer) == event[46:] + event * 39 and not buffer
    assert taken == [39]


# -- 3. SSEDecoder (its LF fast path and its general path) against a plain WHATWG parser ------------

def naive_sse(data: bytes) -> List[Tuple[str, str]]:
    """The WHATWG event-stream parser, written out plainly over the whole input."""
    text = data.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = re.split(r"\r\n|\r|\n", text)
    lines = lines[:-1]  # the last piece has no line end: an incomplete line is never processed
    events, event, buffer = [], "", []
    for line in lines:
        if not line:
            if buffer:
                events.append((event or "message", "\n".join(buffer)))
            event, buffer = "", []
            continue
        if line.startswith(":"):
            continue
        name, sep, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            buffer.append(value)
    return events


SSE_LINES = st.sampled_from(["data: x", "data:x", "data:  x", "data", "data:", "data: {\"a\":\"\\u2028\"}",
                             "event: e", "event:e", "event", "id: 1", "id: a\x00b", "id", "retry: 5", ": comment",
                             ":", "", "", "", "junk", "data: é\U0001f600", "data: \x00", " data: x", "data : x",
                             "\ufeffdata: x", "data: \ufeff"])


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.lists(SSE_LINES, max_size=14), st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1),
       st.lists(st.integers(0, 300), max_size=6))
def test_sse_decoder_gives_what_a_plain_parser_gives(bom: bool, lines: List[str], ends: List[str],
                                                     cuts: List[int]) -> None:
    """Events cut at every offset, LF (fast path), CR and CRLF (general path) mixed: the same
    events as the plain parser reads from the whole input."""
    raw = ("\ufeff" if bom else "") + "".join(line + ends[i % len(ends)] for i, line in enumerate(lines))
    data = raw.encode("utf-8", "surrogatepass")
    want = naive_sse(data)
    for cut_set in ([], cuts, list(range(len(data)))):
        decoder, got, start = agproxy.SSEDecoder(), [], 0
        for cut in sorted(set(cut_set)) + [len(data)]:
            got += [(e.event, e.data) for e in decoder.feed(data[start:cut])]
            start = max(start, cut)
        assert got == want, cut_set


CRLF_EVENTS = st.sampled_from([b'data: {"a": 1}\r\n\r\n', b'data: {"b": "x\\r\\ny"}\r\n\r\n', b"data: \xc3\xa9\r\n\r\n",
                               b"data:no-space\r\n\r\n", b"data: \r\n\r\n", b"data: a\r\ndata: b\r\n\r\n",
                               b"data: lf\n\n", b"data: mixed\r\n\n", b"data: cr\r\r", b"event: e\r\ndata: x\r\n\r\n",
                               b": keep-alive\r\n\r\n", b"id: 1\r\ndata: y\r\n\r\n", b"\r\n", b"data: " + b"L" * 90 +
                               b"\r\n\r\n", b'data: {"c": 3}\r\n\r\n', b"\xef\xbb\xbf", b"data: \x00\r\n\r\n",
                               b"data: half"])


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(CRLF_EVENTS, max_size=12), st.randoms(use_true_random=False), st.booleans())
def test_feed_data_crlf_fast_path_gives_what_feed_gives(events: List[bytes], rnd: random.Random,
                                                         between_cr_and_lf: bool) -> None:
    """Gemini's CRLF events (and LF, CR, comments, ids, a BOM, an event over the limit mixed in),
    read at random offsets, or cut between every CR and its LF: :meth:`SSEDecoder.feed_data` (its
    CRLF fast path) gives, read by read, the data of the events the general :meth:`~SSEDecoder.feed`
    gives, and refuses what it refuses."""
    data = b"".join(events)
    if between_cr_and_lf:
        cuts = [at + 1 for at in range(len(data)) if data[at:at + 2] == b"\r\n"]
    else:  # (a read ends mostly inside an event, sometimes at its end)
        ends = [len(b"".join(events[:i])) for i in range(1, len(events))]
        anywhere = rnd.sample(range(len(data) + 1), min(len(data) + 1, rnd.randint(0, 8)))
        cuts = sorted(set(anywhere) | set(rnd.sample(ends, min(len(ends), rnd.randint(0, 3)))))
    general, fast, start = agproxy.SSEDecoder(max_event_bytes=80), agproxy.SSEDecoder(max_event_bytes=80), 0
    for cut in cuts + [len(data), len(data)]:
        read = data[start:cut] + (b"\r\n\r\n" if cut == start == len(data) else b"")  # the body's end, flushed
        start = max(start, cut)
        try:
            want = [event.data for event in general.feed(read)]
        except agproxy.SSEError:
            with pytest.raises(agproxy.SSEError):
                fast.feed_data(read)
            return
        assert fast.feed_data(read) == want, (cuts, read)


@pytest.mark.parametrize("read", [b'data: {"a": 1}\r\n\r\ndata: lf\n\n', b'data: {"a": 1}\r\n\r\ndata: cr\r\r',
                                  b'data: {"a": 1}\r\n\r\ndata: b\r\n', b"data: cr\r\rdata: x\r\n\r\ndata: y"])
def test_a_crlf_read_with_other_line_ends_after_its_last_blank_line_gives_every_event(read: bytes) -> None:
    """What follows a CRLF read's last blank line, whole events or lines ended otherwise, is read as
    :meth:`SSEDecoder.feed` reads it (the cases the hypothesis test above finds only now and then)."""
    assert agproxy.SSEDecoder().feed_data(read) == [event.data for event in agproxy.SSEDecoder().feed(read)]


@pytest.mark.parametrize("first", [b"\n", b"\n\n", b": c\n", b"\r"])
def test_a_bom_after_the_stream_began_is_not_taken_off_however_the_reads_fall(first: bytes) -> None:
    """A BOM is taken off the start of a stream only: one after a first read shorter than 3 bytes
    was taken off too (the event read or lost depended on where the reads fell)."""
    data = first + b"\xef\xbb\xbfdata: x\n\n" + b"data: y\n\n"
    want = naive_sse(data)
    assert want == [("message", "y")]
    for cut in range(len(data) + 1):
        decoder = agproxy.SSEDecoder()
        got = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert [(e.event, e.data) for e in got] == want, cut


# -- 4. StrayLines' fast scan against its line-by-line reading, and a plain classifier --------------

def naive_stray(data: bytes) -> bytes:
    """The stray lines of ``data`` (whole): each line that is not an SSE line, LF-ended."""
    lines = re.split(rb"\r\n|\r|\n", data)
    return b"".join(line + b"\n" for line in lines if not agproxy._SSE_FIELD_LINE.match(line))


STRAY_PIECES = st.sampled_from([b"data: {}", b"data:", b"data", b"d", b"da", b"dat", b":", b"", b"  ", b"\t",
                                b"        x", b"event: e", b"event", b"retry: 1", b"id:", b'{"error": {', b'"code": 1',
                                b"}}", b"<html>", b"dx", b"\xef\xbb\xbfdata: x", b"\xef\xbb\xbf:", b"data\x00",
                                b"datax", b"  data: x", b"\xc3\xa9", b"\xff\xfe", b"retry"])


@settings(max_examples=400, deadline=None)
@given(st.lists(STRAY_PIECES, max_size=12), st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=1),
       st.lists(st.integers(0, 200), max_size=8))
def test_stray_lines_fast_scan_finds_what_a_plain_classifier_finds(pieces: List[bytes], ends: List[bytes],
                                                                   cuts: List[int]) -> None:
    raw = b"".join(piece + ends[i % len(ends)] for i, piece in enumerate(pieces))
    for cut_set in ([], cuts, list(range(len(raw)))):
        stray, start, whole = agproxy.StrayLines(), 0, False
        for cut in sorted(set(cut_set)) + [len(raw)]:
            if raw[start:cut]:
                whole = stray.feed(raw[start:cut]) or whole
                start = cut
        stray.end()
        assert bytes(stray.text) == naive_stray(raw), cut_set


# -- 5. the translators' text fast paths against their general paths -------------------------------

_IDS = re.compile(rb"(msg|toolu)_[A-Za-z0-9_-]+")


def _openai_run(chunks: List[Dict[str, Any]], relayed: bool, general: bool) -> bytes:
    translator = agproxy.OpenAIStreamTranslator("m", 3)
    translator.relayed = relayed
    events: List[agproxy.Event] = []
    for chunk in chunks:
        if general:  # one more key the translator does not read: its general path takes the chunk
            chunk = dict(chunk, choices=[dict(c, delta=dict(c.get("delta") or {}, role="assistant"))
                                         for c in chunk.get("choices") or []])
        events += translator.feed(chunk)
    events += translator.finish()
    return _IDS.sub(b"ID", agproxy.encode_events(events))


OPENAI_DELTAS = st.lists(
    st.one_of(NASTY_TEXT.map(lambda t: {"content": t}), NASTY_TEXT.map(lambda t: {"reasoning_content": t}),
              st.just({"content": None}), st.just({"content": ""}),
              st.tuples(st.integers(0, 1), NASTY_TEXT).map(lambda p: {"tool_calls": [
                  {"index": p[0], "id": f"call_{p[0]}", "function": {"name": "f", "arguments": p[1]}}]}),
              st.just({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})),
    max_size=12)


@settings(max_examples=300, deadline=None)
@given(OPENAI_DELTAS)
def test_openai_text_fast_path_says_what_the_general_path_says(deltas: List[Dict[str, Any]]) -> None:
    chunks = [{"id": "c", "choices": [{"index": 0, "delta": d}]} for d in deltas]
    chunks.append({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    fast = _openai_run(chunks, True, False)
    assert fast == _openai_run(chunks, False, False) == _openai_run(chunks, True, True)


def _gemini_run(chunks: List[Dict[str, Any]], relayed: bool, general: bool) -> bytes:
    translator = agproxy.GeminiStreamTranslator("m", 3)
    translator.relayed = relayed
    events: List[agproxy.Event] = []
    for chunk in chunks:
        if general:
            chunk = copy.deepcopy(chunk)
            for candidate in chunk.get("candidates") or []:
                for part in (candidate.get("content") or {}).get("parts") or []:
                    part.setdefault("thought", False)
        events += translator.feed(chunk)
    events += translator.finish()
    return _IDS.sub(b"ID", agproxy.encode_events(events))


GEMINI_PARTS = st.lists(st.one_of(NASTY_TEXT.map(lambda t: {"text": t}),
                                  NASTY_TEXT.map(lambda t: {"text": t, "thought": True}),
                                  st.just({"functionCall": {"name": "f", "args": {"a": 1}}}),
                                  st.just({"text": 5}), st.just({})), max_size=12)


@settings(max_examples=300, deadline=None)
@given(GEMINI_PARTS)
def test_gemini_text_fast_path_says_what_the_general_path_says(parts: List[Dict[str, Any]]) -> None:
    chunks = [{"candidates": [{"content": {"role": "model", "parts": [p]}}]} for p in parts]
    chunks.append({"candidates": [{"content": {"parts": []}, "finishReason": "STOP"}],
                   "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2}})
    fast = _gemini_run(chunks, True, False)
    assert fast == _gemini_run(chunks, False, False) == _gemini_run(chunks, True, True)


# -- 6. EventStreamCheck's plain-event match against its decoder path ------------------------------

def _check(batches: List[bytes], runs: bool = True,
           facts: Optional[agproxy.CallFacts] = None) -> Tuple[List[Tuple[str, Any]], Optional[str]]:
    """What the check relays of ``batches`` (name and decoded data of each event, a run of deltas
    taken apart), and its error; ``runs=False`` checks plain deltas one by one; ``facts`` notes
    the relayed batches."""
    check, out = agproxy.EventStreamCheck("up"), []
    if not runs:
        check._events = functools.partial(check._events, runs=False)  # type: ignore[method-assign]
    try:
        for batch in batches:
            relayed_batch = check.feed(batch)
            if facts is not None:
                facts.relayed(relayed_batch)
            for event in agproxy.single_events(relayed_batch):
                relayed = agproxy.SSEDecoder().feed(event.encoded())
                assert [e.event for e in relayed] == [event.name]
                out.append((event.name, json.loads(relayed[0].data)))
    except agproxy.UpstreamFailure as exc:
        return out, str(exc)
    return out, None


def _sse(name: Optional[str], data: str, spelling: int) -> bytes:
    """One event, its event line (if any) and data line spelt with or without the space."""
    line = "" if name is None else ("event: " if spelling % 3 == 0 else "event:") + name + "\n"
    data_line = ("data: " if spelling % 2 == 0 else "data:") + data + "\n"
    return (line + data_line + "\n").encode("utf-8", "surrogatepass")


START_DATA = json.dumps({"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None,
    "usage": {"input_tokens": 3, "output_tokens": 1}}})


def _delta_text(index: Any, kind: str, field: str, text: str, spaced: bool) -> str:
    separators = (", ", ": ") if spaced else (",", ":")
    data = json.dumps({"type": "content_block_delta", "index": index, "delta": {"type": kind, field: text}},
                      separators=separators, ensure_ascii=False)
    return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", data)  # lone ones escaped, as in UTF-8


CHECK_EVENTS = st.lists(st.one_of(
    st.tuples(st.sampled_from([0, 1, 2, "0", 0.0, True]), st.sampled_from([("text_delta", "text"), ("thinking_delta",
              "thinking"), ("input_json_delta", "partial_json"), ("text_delta", "thinking")]), NASTY_TEXT,
              st.booleans()).map(lambda t: ("content_block_delta", _delta_text(t[0], t[1][0], t[1][1], t[2], t[3]))),
    st.sampled_from([0, 1]).map(lambda i: ("content_block_start", json.dumps(
        {"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}))),
    st.sampled_from([0, 1]).map(lambda i: ("content_block_stop",
                                           json.dumps({"type": "content_block_stop", "index": i}))),
    st.just(("ping", '{"type": "ping"}')), st.just(("future_event", '{"type": "future_event"}')),
    st.just(("message_delta",
             '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}')),
    st.just(("message_stop", '{"type":"message_stop"}')),
    st.just(("error", '{"type":"error","error":{"type":"overloaded_error","message":"busy"}}'))), max_size=10)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CHECK_EVENTS, st.lists(st.sampled_from([None, "same", "message"]), min_size=1), st.integers(0, 5),
       st.lists(st.integers(1, 12), max_size=4))
def test_event_check_plain_match_says_what_its_decoder_says(events: List[Tuple[str, str]], naming: List[Optional[str]],
                                                            spelling: int, batch_sizes: List[int]) -> None:
    """The same events as plain batches (the regex match), as one batch with a comment (the
    decoder), and in other batches: the same events relayed, the same error. ``event: message``
    is the WHATWG default name, as no event line is."""
    named = [("message_start", START_DATA)] + events
    encoded = []
    for i, (kind, data) in enumerate(named):
        how = naming[i % len(naming)]
        encoded.append(_sse(None if how is None else kind if how == "same" else "message", data, spelling + i))
    general = _check([b"".join(encoded) + b": a comment\n\n"])
    assert _check([b"".join(encoded)]) == general
    batches, at = [], 0
    for size in batch_sizes + [len(encoded)]:
        if encoded[at:at + size]:
            batches.append(b"".join(encoded[at:at + size]))
        at += size
    in_batches = _check(batches)  # (a batch that fails relays none of its events: the error is compared)
    assert in_batches[1] == general[1]
    if general[1] is None:
        assert in_batches == general


def _assembled(batches: List[bytes], runs: bool) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """The Message the checked events of ``batches`` describe (each run of deltas as the one delta
    it amounts to, or deltas one by one), or the error on the way."""
    check, accumulator = agproxy.EventStreamCheck("up"), agproxy.MessageAccumulator()
    if not runs:
        check._events = functools.partial(check._events, runs=False)  # type: ignore[method-assign]
    try:
        for batch in batches:
            for event in check.feed(batch):
                accumulator.add(event.name, event.data)
        return accumulator.result(), None
    except agproxy.AgproxyError as exc:
        return None, str(exc)


RUN_EVENTS = st.lists(st.one_of(
    st.tuples(st.sampled_from([0, 1, 2]), st.sampled_from([("text_delta", "text"), ("thinking_delta", "thinking"),
              ("input_json_delta", "partial_json"), ("text_delta", "thinking")]), st.booleans(),
              st.lists(NASTY_TEXT, min_size=1, max_size=6)).map(
        lambda t: [("content_block_delta", _delta_text(t[0], t[1][0], t[1][1], text, t[2])) for text in t[3]]),
    st.sampled_from([0, 1, 2]).map(lambda i: [("content_block_start", json.dumps(
        {"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}))]),
    st.sampled_from([0, 1]).map(lambda i: [("content_block_stop",
                                            json.dumps({"type": "content_block_stop", "index": i}))]),
    st.just([("ping", '{"type": "ping"}')]), st.just([("message_stop", '{"type":"message_stop"}')])), max_size=12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RUN_EVENTS, st.lists(st.sampled_from([None, "same", "same", "same", "message"]), min_size=1),
       st.integers(0, 5), st.lists(st.integers(1, 12), max_size=4))
def test_event_check_runs_of_deltas_say_what_the_check_one_by_one_says(
        groups: List[List[Tuple[str, str]]], naming: List[Optional[str]], spelling: int,
        batch_sizes: List[int]) -> None:
    """Deltas of one block one after the other (a run, checked with one match: RelayedDeltas) against
    the same events checked one by one and down the decoder: the same events relayed, the same
    error, the same relayed characters; deltas of blocks not open, after message_stop, with lone
    surrogates or a mismatched field among them."""
    named = [("message_start", START_DATA)] + [event for group in groups for event in group]
    encoded = []
    for i, (kind, data) in enumerate(named):
        how = naming[i % len(naming)]
        encoded.append(_sse(None if how is None else kind if how == "same" else "message", data,
                            spelling if kind == "content_block_delta" else spelling + i))
    batches, at = [], 0
    for size in batch_sizes + [len(encoded)]:
        if encoded[at:at + size]:
            batches.append(b"".join(encoded[at:at + size]))
        at += size
    facts_runs, facts_each = agproxy.CallFacts(), agproxy.CallFacts()
    assert _assembled(batches, True) == _assembled(batches, False)
    with_runs = _check(batches, True, facts_runs)
    assert with_runs == _check(batches, False, facts_each)
    assert facts_runs.relayed_chars == facts_each.relayed_chars
    whole = _check([b"".join(encoded)])
    assert whole[1] == _check([b"".join(encoded) + b": a comment\n\n"])[1]
    if whole[1] is None:
        assert whole == _check([b"".join(encoded)], False) == _check([b"".join(encoded) + b": a comment\n\n"])


_RUN_HEADS = [b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": '
              b'{"type": "text_delta", "text": "',
              b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 1, "delta": '
              b'{"type": "text_delta", "text": "',
              b'event:content_block_delta\ndata:{"type":"content_block_delta","index":0,"delta":'
              b'{"type":"thinking_delta","thinking":"',
              b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 01, "delta": '
              b'{"type": "text_delta", "text": "',
              b'data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "']
#: Pieces of a delta's string: plain, escapes, and what a JSON string may not hold as it is.
_RUN_STRING_PIECES = [b"a", b"~", b"}}", "\u00e9\u2028".encode(), b'"', b"\\", b"\\n", b'\\"', b"\\u00e9",
                      b"\\ud800", b"\n", b"\x01", b"\x7f", b"\r", b'"}}\n\n', b"\n\nevent: content_block_delta\n"]
_RUN_ENDS_SPELT = [b'"}}\n\n', b'"}\n\n', b'"}}\n', b'"}} \n\n', b'"}}\n\n\n', b'"}}\n\n: c\n\n', b'"}}\n\nx']


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(range(len(_RUN_HEADS))),
       st.lists(st.sampled_from([b"a", b"~" * 150, "\u00e9\u2028".encode(), b"}}"]), min_size=1, max_size=12),
       st.lists(st.tuples(st.integers(0, 11), st.sampled_from(["head", "string", "end"]), st.integers(0, 15)),
                max_size=2), st.sampled_from([b"", b"", b": c\n\n", b"\n"]), st.sampled_from([b"", b"", b"x", b"\n"]))
def test_whole_delta_run_is_what_the_run_match_finds(head: int, strings: List[bytes],
                                                     changes: List[Tuple[int, str, int]], prefix: bytes,
                                                     suffix: bytes) -> None:
    """whole_delta_run (a batch as one run, found in a few passes over its bytes) against
    _DELTA_RUN_TEXT matching all of it: the same run where it finds one, and it finds every run
    whose strings hold no escape; a run with one or two events changed (another head, a string with
    a quote, an escape, a control character or a line break, another end) or with stray bytes around it."""
    events = [[_RUN_HEADS[head], string + b"-" * 100, b'"}}\n\n'] for string in strings]  # 1 KB from 5 events
    pieces = {"head": _RUN_HEADS, "end": _RUN_ENDS_SPELT, "string": _RUN_STRING_PIECES}
    for which, part, choice in changes:
        event = events[which % len(events)]
        spelt = pieces[part][choice % len(pieces[part])]
        if part == "string":
            event[1] = spelt + event[1] if which % 2 else event[1] + spelt
        else:
            event[0 if part == "head" else 2] = spelt
    data = prefix + b"".join(b"".join(event) for event in events) + suffix
    fast = agproxy.whole_delta_run(data)
    match = agproxy._DELTA_RUN_TEXT.fullmatch(data.decode("utf-8"))
    if fast is not None:
        assert match is not None
        assert (fast.raw, fast.index, fast.head_size, fast.count) == (
            data, int(match.group(2)), len(match.group(1)), data.count(b"\n\n"))
    elif match is not None:
        assert b"\\" in data  # only a string with an escape takes the match


def test_a_run_of_deltas_is_one_event_of_their_bytes() -> None:
    """Plain deltas of one open block in one read are relayed as one RelayedDeltas, their bytes as they
    came; its characters are its strings', and taken apart it is its events."""
    deltas = [_sse("content_block_delta", _delta_text(0, "text_delta", "text", text, False), 0)
              for text in ("Hel", "lo \\ \"w\"", "orld\u00e9")]
    start = _sse("message_start", START_DATA, 0) + _sse("content_block_start", json.dumps(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}), 0)
    check = agproxy.EventStreamCheck("up")
    relayed = check.feed(start + b"".join(deltas))
    assert [event.name for event in relayed] == ["message_start", "content_block_start", agproxy.RELAYED_DELTAS]
    run = relayed[2]
    assert run.raw == b"".join(deltas) and run.count == 3 and run.index == 0
    assert [event.raw for event in run.events()] == deltas
    assert run.data == {"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": 'Hello \\ "w"orld\u00e9'}}
    facts = agproxy.CallFacts()
    facts.relayed([run])
    each = agproxy.CallFacts()
    each.relayed(run.events())
    assert facts.relayed_chars == each.relayed_chars > 0


def test_an_event_named_message_upstream_goes_through_the_fast_check_as_through_the_decoder(
        start_agproxy: Any, fake: Any) -> None:
    """End to end: an Anthropic-compatible upstream that names every event ``message`` (the default
    name), LF endings: the client gets its answer, as when a comment sent it down the decoder."""
    events = [START_DATA, json.dumps({"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                                                   "text": ""}}),
              _delta_text(0, "text_delta", "text", "hé\u2028llo", False), '{"type":"content_block_stop","index":0}',
              '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}',
              '{"type":"message_stop"}']
    body = b"".join(b"event: message\ndata: " + e.encode() + b"\n\n" for e in events)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    proxy = start_agproxy(fake_config(fake))
    request = json.dumps({"model": "claude-x", "max_tokens": 10, "stream": True,
                          "messages": [{"role": "user", "content": "hi"}]}).encode()
    answers = []
    for tail in (b"", b": keep-alive\n\n"):
        fake.script(Raw(head % len(body + tail) + body + tail))
        reply = raw_request(proxy.port, b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                            b"content-type: application/json\r\nconnection: close\r\n"
                            b"content-length: %d\r\n\r\n" % len(request) + request)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        events = agproxy.SSEDecoder().feed(reply.split(b"\r\n\r\n", 1)[1])
        answers.append([(e.event, json.loads(e.data)["type"]) for e in events if e.event != "ping"])
    assert answers[0] == answers[1]
    assert [kind for kind, _ in answers[0]] == ["message_start", "content_block_start", "content_block_delta",
                                               "content_block_stop", "message_delta", "message_stop"]


# -- 7. parse_json_body with spans (over 16 KB) against without, and against json.loads -------------

def _nested(depth: int, rnd: random.Random) -> Any:
    value: Any = rnd.choice([1, "x", None, [], {}])
    for _ in range(depth - (1 if isinstance(value, (list, dict)) else 0)):
        value = rnd.choice([[value], {"k": value}, [1, value, "z"], {"a": 0, "b": value}])
    return value


def _parsed(raw: bytes, spans: Optional[Dict[str, Tuple[int, int]]]) -> Tuple[str, Any]:
    try:
        return "ok", agproxy.parse_json_body(raw, spans)
    except agproxy.InvalidRequest as exc:
        return "error", (exc.status, exc.error_type, str(exc))


MUTATIONS = [b"", b",", b"}", b"{", b'"', b"\\", b"\x00", b"NaN", b"1e999", b"9" * 5000, b"\xff", b'\\ud800"',
             b" ", b"tru", b"]", b":", b'"k":', b"\r\n"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.dictionaries(SAFE_TEXT, JSON_VALUES, max_size=6), st.randoms(use_true_random=False), st.booleans(),
       st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(MUTATIONS)), max_size=2),
       st.sampled_from([None, 84, 85, 86]), st.booleans())
def test_body_parsed_member_by_member_says_what_the_whole_parse_says(
        body: Dict[str, Any], rnd: random.Random, ascii_only: bool, mutations: List[Tuple[int, bytes]],
        depth: Optional[int], duplicate: bool) -> None:
    if depth is not None:
        body["deep"] = _nested(depth - 1, rnd)
    text = spaced_json(body, rnd, ascii_only)
    if duplicate and len(text) > 2:  # a key given twice: refused alike either way
        text = text[:-1] + ',"deep": [1], "deep" :{"x":"\\u2028"}}'
    raw = text.encode("utf-8")
    for at, piece in mutations:
        at %= len(raw) + 1
        raw = raw[:at] + piece + raw[at:]
    spans: Dict[str, Tuple[int, int]] = {}
    general = _parsed(raw, None)
    assert _parsed(raw, spans) == general
    if general[0] == "ok":
        assert same_json(general[1], json.loads(raw)) and set(spans) == set(general[1])
        for key, (start, end) in spans.items():  # each span is its value's own bytes
            assert same_json(json.loads(raw[start:end]), general[1][key])


def _key_spelled(key: str, escaped: bool) -> str:
    return '"' + "".join(f"\\u{ord(c):04x}" for c in key) + '"' if escaped else json.dumps(key, ensure_ascii=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["model", "max_tokens", "stream", "a/b", "\u00e9\"q"]), JSON_VALUES,
                          st.booleans()), min_size=1, max_size=6),
       st.booleans(), st.booleans())
def test_a_request_object_that_gives_a_member_twice_is_refused_by_either_reading(
        members: List[Tuple[str, Any, bool]], nested_repeat: bool, padded: bool) -> None:
    """The request object's own members, however each key is spelled (escaped or not), repeated or
    not, with or without a repeat inside a member's value (which counts its last saying, as JSON
    parsers mostly do): refused exactly when a member of the top level comes twice, with the first
    such key named, by the whole parse and the member-by-member one alike."""
    parts = [f"{_key_spelled(key, escaped)}:{json.dumps(value)}" for key, value, escaped in members]
    if nested_repeat:
        parts.append('"inner":{"x":1,"x":[2]}')
    if padded:
        parts.append('"pad":"' + "p" * 20_000 + '"')
    raw = ("{" + ",".join(parts) + "}").encode("utf-8")
    keys = [key for key, _, _ in members]
    repeated = next((key for key in keys if keys.count(key) > 1), None)
    for spans in (None, {}):
        outcome, value = _parsed(raw, spans)
        if repeated is None:
            assert outcome == "ok" and same_json(value, json.loads(raw)), value
        else:
            assert outcome == "error" and value[:2] == (400, "invalid_request_error"), value
            assert f"gives {repeated[:80]!r} twice" in value[2], value


@pytest.mark.parametrize("depth", [84, 85, 86, 87])
@pytest.mark.parametrize("padding", [0, 16 * 1024, 70 * 1024])
def test_depth_near_the_limit_is_judged_alike_either_side_of_the_size_switches(depth: int, padding: int) -> None:
    rnd = random.Random(depth)
    raw = json.dumps({"pad": "p" * padding, "deep": _nested(depth - 1, rnd)}).encode()
    reference = 1 + _depth(json.loads(raw)["deep"]) > agproxy.MAX_JSON_DEPTH
    results = {_parsed(raw, spans)[0] for spans in (None, {})}
    assert results == {"error" if reference else "ok"}


def _depth(value: Any) -> int:
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    return 0 if items is None else 1 + max([_depth(item) for item in items], default=0)


# -- 8. spliced_json against json.dumps of the changed body ----------------------------------------

NUMBERS = st.sampled_from([1, 1.0, 0, -0.0, True, False, 10**20, 1e20, 2.5])


@pytest.mark.xfail(strict=True, reason="spliced_json keeps a member whose value is == the client's and of its "
                   "type at the top only: a nested [1.0] changed to [1] goes out as [1.0]. No change prepare "
                   "makes today does that (the pipeline test below is exact); a strict compare would walk "
                   "every block in Python where == runs in C")
def test_a_nested_number_changed_to_an_equal_one_of_another_type_is_spliced_as_json_dumps_writes_it() -> None:
    """The known limit of the property below, pinned by one example (a property that finds it only
    sometimes would make a strict xfail pass by chance)."""
    raw = b'{"model":"m","metadata":[1.0],"stream":true}'
    spans: Dict[str, Tuple[int, int]] = {}
    parsed = agproxy.parse_json_body(raw, spans)
    changed = dict(parsed, metadata=[1])
    assert json.dumps(json.loads(agproxy.spliced_json(raw, spans, parsed, changed))) == json.dumps(changed)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["model", "max_tokens", "stream", "temperature", "metadata", "messages",
                                        "x\u2028", "é"]), JSON_VALUES | NUMBERS, min_size=1, max_size=8),
       st.randoms(use_true_random=False), st.booleans(), st.data())
def test_spliced_body_says_what_json_dumps_says(original: Dict[str, Any], rnd: random.Random, ascii_only: bool,
                                                data: st.DataObject) -> None:
    """``changed`` a copy of the parsed body with some members replaced, some by a value equal to
    the old one by ``==`` but not as JSON at the top (``1`` and ``1.0``, ``1`` and ``True``): the
    spliced bytes decode to exactly what ``json.dumps(changed)`` says. (Nested, as ``[1]`` for
    ``[1.0]``, is the known limit pinned above.)"""
    raw = spaced_json(original, rnd, ascii_only).encode()
    spans: Dict[str, Tuple[int, int]] = {}
    parsed = agproxy.parse_json_body(raw, spans)
    changed = dict(parsed)
    for key in data.draw(st.lists(st.sampled_from(sorted(parsed)), max_size=3)):
        old = parsed[key]
        swaps = [] if isinstance(old, (list, dict)) else [1, 1.0, True, "s"]
        changed[key] = data.draw((st.sampled_from(swaps) if swaps else st.nothing()) | JSON_VALUES | NUMBERS)
        nested_swap = isinstance(old, (list, dict)) and changed[key] == old
        assume(not nested_swap or json.dumps(changed[key]) == json.dumps(old))  # the known limit, above
    if data.draw(st.booleans()):
        changed["model"] = "renamed"
    written = agproxy.spliced_json(raw, spans, parsed, changed)
    assert json.dumps(json.loads(written)) == json.dumps(changed)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CORPUS_BODIES) | REQUEST, st.randoms(use_true_random=False), st.booleans(), st.booleans(),
       st.sampled_from([None, 1, 2000]), st.sampled_from(["anthropic", "compatible", "openai"]), st.booleans())
def test_a_request_prepare_changed_is_spliced_exactly_as_json_dumps_writes_it(
        body: Dict[str, Any], rnd: random.Random, rename: bool, stream: bool, max_tokens: Optional[int],
        profile: str, ascii_only: bool) -> None:
    """What prepare does to a request (the cheap copy, renamed, stream forced, max_tokens fitted,
    sanitized), spliced from the client's text however spaced: exactly ``json.dumps``'s JSON,
    number types included."""
    raw = spaced_json(body, rnd, ascii_only).encode("utf-8", "surrogatepass")
    spans: Dict[str, Tuple[int, int]] = {}
    try:
        parsed = agproxy.parse_json_body(raw, spans)
        agproxy.validate_messages_request(parsed)
    except agproxy.AgproxyError:
        return
    rules = agproxy.PROFILE_DEFAULTS[profile]
    changed = agproxy.sanitizable_copy(parsed, rules, []) or json.loads(raw)
    if rename:
        changed["model"] = "renamed"
    if stream:
        changed["stream"] = True
    agproxy._fit_max_tokens(changed, max_tokens, {})
    agproxy.sanitize_request(changed, rules)
    written = agproxy.spliced_json(raw, spans, parsed, changed)
    assert json.dumps(json.loads(written)) == json.dumps(changed)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CORPUS_BODIES) | REQUEST | st.dictionaries(
           st.sampled_from(["model", "stream", "x", "stream\u00e9", "metadata"]),
           JSON_VALUES | st.just("stream") | st.just({"stream": False}), min_size=1, max_size=6),
       st.randoms(use_true_random=False), st.booleans(), st.sampled_from([None, False, True, "last"]))
def test_stream_made_true_says_what_json_dumps_says(body: Dict[str, Any], rnd: random.Random, ascii_only: bool,
                                                    stream: Any) -> None:
    """``stream_made_true`` on any object however spaced (``stream`` absent, false where it is, or
    false and moved last; strings and nested objects that say "stream"): None, or bytes that decode
    to the object with ``stream`` true, its members in their order (a new ``stream`` last)."""
    body = dict(body)
    if stream is None:
        body.pop("stream", None)
    elif stream == "last":
        body.pop("stream", None)
        body["stream"] = False
    else:
        body["stream"] = stream
    raw = spaced_json(body, rnd, ascii_only).encode("utf-8", "surrogatepass")
    try:
        parsed = agproxy.parse_json_body(raw)
    except agproxy.AgproxyError:
        return
    written = agproxy.stream_made_true(raw, "stream" in parsed)
    if written is None:
        assume(False)
        return
    expected = dict(parsed, stream=True)
    assert same_json(json.loads(written), expected)
    assert list(json.loads(written)) == list(expected)


def test_stream_made_true_writes_in_place_what_it_can_and_nothing_else() -> None:
    """The cases it takes (at the end, or absent; said twice, the first saying kept) and those it
    leaves to the encoder: a ``stream`` that is not last, spelled with an escape, or true already;
    an empty object; one false in a nested object only."""
    take = {b'{"a":1,"stream":false}': b'{"a":1,"stream":true}',
            b'{"a":1 ,\r\n"stream"\t:\nfalse } \n': b'{"a":1 ,"stream":true}',
            b'{"a":"stream"}': b'{"a":"stream","stream":true}',
            b' {"a":{"stream":false}} ': b' {"a":{"stream":false},"stream":true}',
            b'{"a":"\\",\\"stream\\":false}"}': b'{"a":"\\",\\"stream\\":false}","stream":true}',
            b'{"a":"stream","stream":false}': b'{"a":"stream","stream":true}',
            b'{"a":{"stream":1},"stream":false}': b'{"a":{"stream":1},"stream":true}',
            b'{"stream":true,"a":1,"stream":false}': b'{"stream":true,"a":1,"stream":true}'}
    for raw, written in take.items():
        assert agproxy.stream_made_true(raw, "stream" in json.loads(raw)) == written, raw
    for raw in (b'{"stream":false,"a":1}', b'{"str\\u0065am":false,"a":1}', b'{"a":1,"str\\u0065am":false}',
                b'{"a":1,"stream":true}', b'{}', b'{"stream":false}', b'{"stream":false,"a":{"b":1,"stream":false}}'):
        assert agproxy.stream_made_true(raw, "stream" in json.loads(raw)) is None, raw


# -- 9. real recorded streams, split at random offsets ---------------------------------------------

def _recordings() -> List[Tuple[str, bytes]]:
    found = []
    for folder in ("real-streams", "real-streams-gemini"):
        for path in sorted((SHARED / folder / "fixtures").glob("*.json")):
            recording = json.loads(path.read_text())
            if recording.get("raw_sse"):
                found.append((f"{folder}/{path.stem}", recording["raw_sse"].encode()))
            elif recording.get("stream") and recording.get("chunks"):
                found.append((f"{folder}/{path.stem}", b"".join(b"data: " + json.dumps(c).encode() + b"\n\n"
                                                                for c in recording["chunks"])))
    return found


RECORDINGS = _recordings() if SHARED.is_dir() else []


@pytest.mark.skipif(not RECORDINGS, reason="../shared/real-streams is not here (a user's clone)")
@pytest.mark.parametrize("name,raw", RECORDINGS, ids=[n for n, _ in RECORDINGS])
def test_real_streams_split_anywhere_read_as_whole(name: str, raw: bytes) -> None:
    rnd = random.Random(name)
    want = naive_sse(raw)
    for _ in range(20):
        cuts = sorted(rnd.sample(range(len(raw) + 1), min(len(raw) + 1, rnd.randint(1, 12))))
        decoder, got, stray, start = agproxy.SSEDecoder(), [], agproxy.StrayLines(), 0
        for cut in cuts + [len(raw)]:
            got += [(e.event, e.data) for e in decoder.feed(raw[start:cut])]
            stray.feed(raw[start:cut]) if raw[start:cut] else None
            start = cut
        stray.end()
        assert got == want
        assert bytes(stray.text) == naive_stray(raw)
        chunked = _chunked([raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)]) if raw[a:b]], rnd)
        assert _response_body(chunked, rnd.sample(range(len(chunked)), 5), through=True) == (raw, None)
    chunks = [json.loads(d) for _, d in want if d.strip() != "[DONE]"]
    chunks = [c for c in chunks if isinstance(c, dict) and "error" not in c]
    if "gemini" in name:
        translated = _gemini_run(chunks, True, False)
        assert translated == _gemini_run(chunks, False, False) == _gemini_run(chunks, True, True)
    else:
        translated = _openai_run(chunks, True, False)
        assert translated == _openai_run(chunks, False, False) == _openai_run(chunks, True, True)
    # its Anthropic events, as a passthrough upstream would send them, checked whole, event by event
    # and down the decoder: the same events
    events = re.findall(rb"(?:[^\n]+\n)+\n", translated)
    assert b"".join(events) == translated
    general = _check([translated + b": comment\n\n"])
    assert _check([translated]) == _check(events) == general and general[1] is None


# -- 10. the stream redactor's plain-delta path against its decoding path ---------------------------

def _reordered(event: bytes) -> bytes:
    """An event with its data's members in reverse order: no plain delta, the redactor decodes it."""
    name, data = event.split(b"\n", 1)
    payload = json.loads(data[len(b"data: "):])
    return name + b"\ndata: " + json.dumps(dict(reversed(list(payload.items())))).encode() + b"\n\n"


@settings(max_examples=300, deadline=None)
@given(key=secrets_tests.KEYS, how=st.sampled_from(["raw", "json", "url", "base64"]), before=NASTY_TEXT,
       after=NASTY_TEXT, points=st.lists(st.integers(0, 200), max_size=12),
       block=st.sampled_from(sorted(secrets_tests.DELTAS)), style=st.sampled_from(["compact", "spaced", "ascii"]),
       cuts=st.lists(st.integers(0, 30), max_size=6), keyed=st.booleans())
def test_a_key_cut_across_deltas_is_redacted_alike_plain_or_decoded(
        key: str, how: str, before: str, after: str, points: List[int], block: str, style: str, cuts: List[int],
        keyed: bool) -> None:
    """The same deltas as plain events (the redactor's match) and spelt otherwise (decoded): the
    client joins the same text, a key cut across them hidden the same way, in the same grammar
    (what is held may go out as deltas cut elsewhere)."""
    text = re.sub("[\ud800-\udfff]", "", before + (secrets_tests.spelled(key, how, "") if keyed else "") + after)
    events = secrets_tests.stream_of(secrets_tests.cut(text, points), block, "", style)
    redactor = agproxy.Redactor([key])
    plain = secrets_tests.joined_text(secrets_tests.relayed(events, cuts, redactor))
    decoded = secrets_tests.joined_text(secrets_tests.relayed([_reordered(e) for e in events], cuts, redactor))
    assert plain[0] == decoded[0] and key not in plain[0]
    assert [k for i, k in enumerate(plain[1]) if k != "content_block_delta" or plain[1][i - 1] != k] == \
        [k for i, k in enumerate(decoded[1]) if k != "content_block_delta" or decoded[1][i - 1] != k]


# -- 11. validate_messages_request's blocks against a plain reference -------------------------------

def _reference_blocks(blocks: Any, where: str, nested: bool = False) -> None:
    """The block checks as written before their words were made only for an error: each field's
    path worded first, then checked."""
    def expect(ok: bool, at: str, what: str) -> None:
        if not ok:
            raise agproxy.InvalidRequest(f"{at}: {what}")

    expect(isinstance(blocks, list), where, "must be a list of content blocks")
    for i, block in enumerate(blocks):
        at = f"{where}.{i}"
        expect(isinstance(block, dict), at, "must be an object")
        kind = block.get("type")
        expect(isinstance(kind, str), f"{at}.type", "must be a string")
        if kind == "text":
            expect(isinstance(block.get("text"), str), f"{at}.text", "must be a string")
        elif kind in ("image", "document"):
            expect(isinstance(block.get("source"), dict), f"{at}.source", "must be an object")
        elif kind == "tool_use":
            expect(isinstance(block.get("id"), str), f"{at}.id", "must be a string")
            expect(isinstance(block.get("name"), str), f"{at}.name", "must be a string")
            expect(isinstance(block.get("input", {}), dict), f"{at}.input", "must be an object")
        elif kind == "tool_result":
            expect(isinstance(block.get("tool_use_id"), str), f"{at}.tool_use_id", "must be a string")
            content = block.get("content")
            if content is not None and not isinstance(content, str):
                expect(not nested, f"{at}.content", "cannot hold another tool_result")
                _reference_blocks(content, f"{at}.content", nested=True)
        elif kind == "thinking":
            expect(isinstance(block.get("thinking"), str), f"{at}.thinking", "must be a string")
            expect(isinstance(block.get("signature", ""), str), f"{at}.signature", "must be a string")
        elif kind == "redacted_thinking":
            expect(isinstance(block.get("data"), str), f"{at}.data", "must be a string")


_BLOCK_FIELDS = ("type", "text", "source", "id", "name", "input", "tool_use_id", "content", "thinking", "signature",
                 "data")
_BLOCK_TYPES = st.sampled_from(["text", "image", "document", "tool_use", "tool_result", "thinking",
                                "redacted_thinking", "server_tool_use", 7, None])
_FIELD_VALUES = st.one_of(st.sampled_from(["x", 1, None, True, [], {}, {"type": "base64"}]), _BLOCK_TYPES)


def _blocks(depth: int) -> Any:
    block = st.dictionaries(st.sampled_from(_BLOCK_FIELDS),
                            _FIELD_VALUES if depth == 0 else st.one_of(_FIELD_VALUES, st.deferred(lambda: _blocks(
                                depth - 1))), max_size=5)
    return st.lists(st.one_of(st.fixed_dictionaries({"type": _BLOCK_TYPES}, optional={
        f: _FIELD_VALUES if depth == 0 else st.one_of(_FIELD_VALUES, _blocks(depth - 1)) for f in _BLOCK_FIELDS[1:]}),
        block, st.sampled_from(["x", 1, None])), max_size=4)


@settings(max_examples=400, deadline=None)
@given(blocks=st.one_of(_blocks(2), st.sampled_from(["x", None, {}])), role=st.sampled_from(["user", "assistant", "x"]))
def test_blocks_are_judged_as_the_plain_reference_judges_them(blocks: Any, role: str) -> None:
    """validate_messages_request says of a message's blocks what the plain reference says: the same
    error (its field's path and words) or none."""
    def verdict(check: Any) -> Optional[str]:
        try:
            check()
        except agproxy.InvalidRequest as exc:
            return str(exc)
        return None

    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"},
                                                        {"role": role, "content": blocks}]}
    expected = "messages.1.role: must be 'user' or 'assistant'" if role == "x" else \
        "messages.1.content: must be a string or a list of content blocks" if not isinstance(blocks, (str, list)) \
        else verdict(lambda: _reference_blocks(blocks, "messages.1.content")) if isinstance(blocks, list) else None
    assert verdict(lambda: agproxy.validate_messages_request(body)) == expected


# -- 12. _pair_tools' in-order turns against its general path ---------------------------------------

_TOOL_IDS = st.sampled_from(["t1", "t2", "t3", 7])
_TOOL_BLOCKS = st.one_of(
    st.fixed_dictionaries({"type": st.just("tool_use"), "id": _TOOL_IDS, "name": st.just("Read"),
                           "input": st.just({})}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": _TOOL_IDS, "content": st.just("ok")}),
    st.fixed_dictionaries({"type": st.just("text"), "text": st.sampled_from(["hi", "yes"])}),
    st.just("stray"))
_TURNS = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.one_of(
    st.lists(_TOOL_BLOCKS, max_size=4), st.just("words"))}), max_size=6)


@settings(max_examples=400, deadline=None)
@given(turns=_TURNS)
def test_turns_answered_in_order_are_paired_as_the_general_path_pairs_them(turns: List[Dict[str, Any]]) -> None:
    """_pair_tools with its in-order check (_answered_in_order) and without it (every user turn down
    the general path): the same turns, the same objects where nothing changed, the same counts."""
    fast_changes: Dict[str, int] = {}
    fast = agproxy._pair_tools(turns, fast_changes)
    general_changes: Dict[str, int] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(agproxy, "_answered_in_order", lambda content, expected: False)
        general = agproxy._pair_tools(turns, general_changes)
    assert fast == general and fast_changes == general_changes
    assert [any(t is m for t in turns) for m in fast] == [any(t is m for t in turns) for m in general]


# -- 13. the signature book's one-maker shortcut against its lookup --------------------------------

@settings(max_examples=300, deadline=None)
@given(records=st.lists(st.tuples(st.sampled_from(["s1", "s2", "s3", "s4", "s5", ""]), st.sampled_from(["a", "b"])),
                        max_size=12), limit=st.integers(1, 4))
def test_foreign_thinking_is_found_as_the_lookup_finds_it(records: List[Tuple[str, str]], limit: int) -> None:
    """SignatureBook.foreign_to hashes no signature while every one it holds is the asking
    upstream's (the counts of makers kept through overwrites and evictions): it says what a lookup
    of each signature's owner says, after any records."""
    book = agproxy.SignatureBook(limit)
    for signature, upstream in records:
        book.record(signature, upstream)
    for upstream in ("a", "b", "c"):
        foreign = book.foreign_to(upstream)
        for signature in ("s1", "s2", "s3", "s4", "s5"):
            owner = book.owner(signature)
            assert foreign({"type": "thinking", "signature": signature}) == (owner is not None and owner != upstream)


# -- the request path's memos (small requests) ------------------------------------------------------

_HEADER_NAMES = st.sampled_from(["Host", "host", "HOST", "Content-Type", "content-type", "x-api-key",
                                 "X-Api-Key", "Connection", "Expect", "ß", "x"])


@settings(max_examples=300, deadline=None)
@given(headers=st.lists(st.tuples(_HEADER_NAMES, NASTY_TEXT), max_size=8), names=st.lists(_HEADER_NAMES, max_size=6))
def test_a_requests_header_is_found_as_header_value_finds_it(headers: List[Tuple[str, str]], names: List[str]) -> None:
    request = agproxy.Request("POST", "/v1/messages", (1, 1), headers)
    for name in names:  # the first lookup makes the index, the later ones read it
        assert request.header(name) == agproxy.header_value(headers, name)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.sampled_from(["Server", "sk-abcdefgh123", "Bearer abcdefghijklmnopqrstuv", "up",
                                       "secret-key-of-the-reload-0123"]) | NASTY_TEXT, max_size=6))
def test_the_redactors_remembered_texts_are_what_its_regex_makes_of_them(texts: List[str]) -> None:
    redactor = agproxy.Redactor(["agproxy-test-key-0123456789"])
    for text in texts + texts:  # the second time from the memo
        assert redactor.text(text) == redactor._text.sub(agproxy.REDACTED, text)
    redactor.add(["secret-key-of-the-reload-0123"])  # a reload's key: what was remembered before is not kept
    for text in texts:
        assert redactor.text(text) == redactor._text.sub(agproxy.REDACTED, text)
    long_text = "x" * agproxy._HIDDEN_MEMO_CHARS + "sk-abcdefgh123"
    assert redactor.text(long_text) == "x" * agproxy._HIDDEN_MEMO_CHARS + agproxy.REDACTED


def test_the_redactor_forgets_what_it_remembered_when_full() -> None:
    redactor = agproxy.Redactor()
    for i in range(agproxy._HIDDEN_MEMO_ENTRIES * 2 + 5):
        assert redactor.text(f"request-{i}") == f"request-{i}"
    assert len(redactor._hidden) <= agproxy._HIDDEN_MEMO_ENTRIES
    assert redactor.text("sk-abcdefgh123") == agproxy.REDACTED


@settings(max_examples=300, deadline=None)
@given(moments=st.lists(st.floats(min_value=-86400 * 3, max_value=4e9, allow_nan=False) |
                        st.builds(lambda day, at: day * 86400 + at, st.integers(0, 50000),
                                  st.sampled_from([-1e-6, 0, 0.5, 86399.999])),
                        max_size=8))
def test_the_remembered_utc_day_is_the_one_datetime_gives(moments: List[float]) -> None:
    for moment in moments:  # a day's edges either side, in any order (the second it falls in: no rounding up)
        day = datetime.datetime.fromtimestamp(math.floor(moment), datetime.timezone.utc).date()
        assert agproxy.utc_day(moment) == day.isoformat()


# -- what the ledger counts: one pattern for USAGE_PATHS ------------------------------------------

PATH_PIECES = st.sampled_from(["/v1", "/v1beta", "/models/", "/messages", "/chat/completions", "/responses", ":",
                               "generateContent", "streamGenerateContent", "gemini-2.5", "\n", "/", "x", "*", "?", ""])


@given(st.lists(PATH_PIECES, max_size=8).map("".join) | st.sampled_from(list(agproxy.USAGE_PATHS)),
       st.sampled_from(["POST", "GET", "post"]))
@settings(max_examples=400)
def test_the_usage_path_pattern_says_what_fnmatch_says_of_each_usage_path(path, method):
    import fnmatch

    expected = method == "POST" and any(fnmatch.fnmatchcase(path, pattern) for pattern in agproxy.USAGE_PATHS)
    assert agproxy.generates(method, path) == expected


# -- header blocks read with one match (_plain_header_lines) ------------------------------------------

HEADER_NAMES = st.sampled_from([b"Host", b"x-api-key", b"Content-Length", b"A", b"bad name", b"", b" X", b"X ",
                                b"\xc3\xa9", b"x:y", b"Anthropic-Beta"])
HEADER_VALUES = st.lists(st.sampled_from([b"v", b" ", b"\t", b"\r", b"\x00", b"\x7f", b"\x0b", b"\xa0", b"\xe9",
                                          b":", b",", b"localhost:8045", b"\x85", b"a b", b"\x1f"]), max_size=6)
HEADER_ENDS = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r\r\n"])


@st.composite
def header_blocks(draw) -> bytes:
    lines = draw(st.lists(st.tuples(HEADER_NAMES, st.sampled_from([b":", b": ", b":\t", b""]), HEADER_VALUES,
                                    HEADER_ENDS), max_size=6))
    first_end = draw(HEADER_ENDS)
    return first_end + b"".join(name + colon + b"".join(value) + end for name, colon, value, end in lines)


def _outcome(call):
    try:
        return call()
    except agproxy.AgproxyError as exc:
        return type(exc), exc.message


@given(header_blocks())
@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
def test_a_request_head_reads_the_same_with_one_match_as_line_by_line(block):
    """_parse_request_head's head: the request line, its header lines, the last one's end cut
    and an LF put there (as RequestParser gives it)."""
    head = (b"POST /v1/messages HTTP/1.1" + block).rstrip(b"\r\n") + b"\n"
    fast = _outcome(lambda: agproxy._parse_request_head(head))
    general = _outcome(lambda: agproxy._request_header_lines(head.split(b"\n")[1:]))
    if isinstance(fast, agproxy.Request):
        assert fast.headers == general
    else:  # the head failed: for its header lines (as line by line says), or for what follows them
        assert general == fast or isinstance(general, list)


@given(header_blocks())
@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
def test_an_upstream_head_reads_the_same_with_one_match_as_line_by_line(block):
    data = b"HTTP/1.1 200 OK" + block + b"\r\n\r\n"
    parser = agproxy.ResponseParser("POST")
    parser.feed(data)
    head = _outcome(parser.next_event)
    taken = data[:agproxy._head_end(bytearray(data))]  # the head as the parser cut it
    general = agproxy._response_header_lines(taken.rstrip(b"\r\n").split(b"\n")[1:])
    if isinstance(head, agproxy.ResponseHead):
        assert head.headers == general


@given(st.lists(st.sampled_from([b"\r", b"\n", b"a", b"\r\n", b"\n\n", b"\n\r\n"]), max_size=40))
@settings(max_examples=1500)
def test_a_head_ends_at_the_first_blank_line_of_either_kind(pieces):
    """_head_end looks for a bare LF's blank line only before the CRLF one (a big body after the head
    is not scanned to its end): the same cut as taking whichever of the two comes first."""
    data = bytearray(b"".join(pieces))
    found = sorted((at, len(mark)) for mark in (b"\n\r\n", b"\n\n") for at in [data.find(mark)] if at >= 0)
    assert agproxy._head_end(data) == (found[0][0] + found[0][1] if found else -1)


@pytest.mark.parametrize("framing, status", [(b"Transfer-Encoding: chunked\x85", b"501"),
                                              (b"Content-Length: 5\xa0", b"400")])
def test_a_framing_header_padded_with_latin1_blanks_smuggles_no_request(start_agproxy, fake, framing, status):
    """A head of plain lines (read with one match) whose framing header ends in U+0085 or U+00A0, Latin-1
    bytes that str.strip takes for blanks, HTTP does not: refused and the connection closed, so the
    request hidden after it (where another server would see the body's end) is never answered."""
    proxy = start_agproxy(fake_config(fake))
    reply = raw_request(proxy.port, b"POST /v1/messages/count_tokens HTTP/1.1\r\nHost: 127.0.0.1\r\n" + framing
                        + b"\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 " + status), reply[:200]
    assert reply.count(b"HTTP/1.1 ") == 1, reply[:600]


def test_the_usual_heads_are_read_with_one_match():
    """The fast path is taken by what clients and upstreams send (else the tests above test nothing)."""
    request = (b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: 127.0.0.1:8045\r\nx-api-key: sk-x\r\n"
               b"anthropic-beta: a,b\r\nUser-Agent: claude-cli/2.1.332 (external, cli)\r\nContent-Length: 2\n")
    assert agproxy._plain_header_lines(request[:-1], request.index(b"\n") + 1) == [
        ("Host", "127.0.0.1:8045"), ("x-api-key", "sk-x"), ("anthropic-beta", "a,b"),
        ("User-Agent", "claude-cli/2.1.332 (external, cli)"), ("Content-Length", "2")]
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\nrequest-id:  req_1 "
    assert agproxy._plain_header_lines(answer, answer.index(b"\n") + 1) == [
        ("content-type", "text/event-stream; charset=utf-8"), ("request-id", "req_1")]


# -- JSON written with the C encoder made once (_JSONWriter) ----------------------------------------

ENCODED_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | NASTY_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        NASTY_TEXT | st.integers() | st.booleans() | st.none() | st.floats(), children, max_size=4),
    max_leaves=20)


@given(ENCODED_VALUES)
@settings(max_examples=500)
def test_json_written_by_the_encoder_made_once_is_what_json_dumps_writes(value):
    for writer, options in ((agproxy._COMPACT_JSON, {"separators": (",", ":")}), (agproxy._UTF8_JSON, {}),
                            (agproxy._JSONWriter(json.JSONEncoder()), {"ensure_ascii": True})):
        try:
            expected = json.dumps(value, ensure_ascii=options.pop("ensure_ascii", False), **options)
        except (ValueError, TypeError) as exc:
            with pytest.raises(type(exc)):
                writer.encode(value)
            continue
        assert writer.encode(value) == expected


def test_the_encoder_made_once_refuses_what_json_dumps_refuses():
    for writer in (agproxy._COMPACT_JSON, agproxy._UTF8_JSON):
        with pytest.raises(TypeError):
            writer.encode({"a": object()})
        with pytest.raises(TypeError):
            writer.encode({(1, 2): 3})
