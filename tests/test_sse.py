"""The SSE encoder and incremental decoder, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agproxy import SSEDecoder, SSEError, SSEEvent, encode_sse, sse_complete_prefix

STREAM = (b'event: message_start\ndata: {"type":"message_start"}\n\n'
          b": a comment line\n\n"
          b'event: ping\ndata: {"type": "ping"}\n\n'
          b"data: line one\ndata: line two\n\n"
          b"event: content_block_delta\ndata:no-space\nid: 7\n\n")
EXPECTED = [
    SSEEvent("message_start", '{"type":"message_start"}'),
    SSEEvent("ping", '{"type": "ping"}'),
    SSEEvent("message", "line one\nline two"),
    SSEEvent("content_block_delta", "no-space", "7"),
]


def decode(data: bytes, step: int = 0) -> list:
    decoder = SSEDecoder()
    step = step or len(data) or 1
    events = []
    for i in range(0, len(data), step):
        events += decoder.feed(data[i:i + step])
    return events


@pytest.mark.parametrize("step", [0, 1, 2, 5])
def test_events_whole_and_split_anywhere(step):
    assert decode(STREAM, step) == EXPECTED


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
@pytest.mark.parametrize("step", [0, 1])
def test_other_line_endings(newline, step):
    assert decode(STREAM.replace(b"\n", newline), step) == EXPECTED


def test_crlf_split_between_reads_is_one_line_ending():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == [SSEEvent("message", "a")]  # a lone CR ends a line at once
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [SSEEvent("message", "b")]  # that CR's LF is no blank line


def test_leading_bom_is_ignored():
    assert decode(b"\xef\xbb\xbfdata: x\n\n") == [SSEEvent("message", "x")]


def test_incomplete_trailing_event_is_not_dispatched():
    assert decode(b"data: complete\n\ndata: half") == [SSEEvent("message", "complete")]


def test_oversized_event_is_refused():
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(SSEError):
        decoder.feed(b"data: " + b"x" * 200)
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(SSEError):
        for _ in range(20):
            decoder.feed(b"data: 0123456789\n")


def test_encoder_splits_multiline_data():
    assert encode_sse("x", "a\nb") == b"event: x\ndata: a\ndata: b\n\n"
    assert encode_sse(None, "") == b"data: \n\n"
    with pytest.raises(ValueError):
        encode_sse("bad\nname", "x")


def test_complete_prefix_finds_the_last_boundary():
    assert sse_complete_prefix(b"data: a\n\ndata: b") == 9
    assert sse_complete_prefix(b"data: a\r\n\r\n") == 11
    assert sse_complete_prefix(b"data: partial") == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=800), st.integers(min_value=1, max_value=40))
def test_decoder_on_arbitrary_bytes_raises_only_sse_error(data, step):
    decoder = SSEDecoder(max_event_bytes=300)
    try:
        for i in range(0, len(data), step):
            decoder.feed(data[i:i + step])
    except SSEError:
        pass


names = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), min_size=1, max_size=20)
datas = st.text(st.characters(blacklist_characters="\r", blacklist_categories=("Cs",)), max_size=200)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names, datas), max_size=8), st.integers(min_value=1, max_value=30))
def test_encode_then_decode_round_trips(events, step):
    wire = b"".join(encode_sse(name, data) for name, data in events)
    decoded = decode(wire, step)
    assert [(e.event, e.data) for e in decoded] == list(events)


# -- what counts as the answer going on: anything but pings ----------------------------------------

_START = b'event: message_start\ndata: {"type":"message_start","message":{}}\n\n'
_PINGS = [b'event: ping\ndata: {"type": "ping"}\n\n', b'event: ping\ndata: {"type":"ping"}\n\n',
          b'event:ping\ndata:{"type":"ping"}\n\n', b'data: {"type": "ping"}\n\n', b': keep-alive\n\n']
_CONTENT = [b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
            b'"content_block":{"type":"text","text":"event: ping\\ndata: x"}}\n\n',
            b'data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "ping"}}\n\n',
            b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"}}\n\n',
            b'event: message_stop\ndata: {"type":"message_stop"}\n\n']


def _checked(piece: bytes) -> list:
    """A piece of an upstream's stream as the relay gets it: the events the check makes of it."""
    from agproxy import EventStreamCheck
    check = EventStreamCheck("up")
    check.feed(_START)
    return check.feed(piece)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4)), max_size=6))
def test_a_batch_holds_content_unless_it_is_only_pings(picks):
    from agproxy import holds_content
    batch = [event for content, i in picks
             for event in _checked((_CONTENT if content else _PINGS)[i % (len(_CONTENT) if content else len(_PINGS))])]
    assert holds_content(batch) == any(content for content, _ in picks), batch


# -- an event's data alone, the usual read cut in one split -----------------------------------------

_PIECES = [b'data: {"a": 1}\n\n', b'data: {"b": "x y"}\n\n', b"data: [DONE]\n\n", b"data:no-space\n\n",
           b"data: one\ndata: two\n\n", b"event: error\ndata: {}\n\n", b": comment\n\n", b"id: 3\ndata: z\n\n",
           b"data: crlf\r\n\r\n", b"data: cr\r\r", b"\n\n", b"data: \n\n", b"data: data: \n\n", b"retry: 5\n",
           b"\xef\xbb\xbf", b"data: \xc3\xa9\xff\n\n", b"data: " + b"L" * 70 + b"\n\n", b"data: partial"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=12)), max_size=16),
       st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8))
def test_feed_data_gives_the_data_of_the_events_feed_gives_however_the_reads_fall(pieces, steps):
    wire = b"".join(pieces)
    fed, fed_data = SSEDecoder(max_event_bytes=64), SSEDecoder(max_event_bytes=64)
    events: list = []
    datas: list = []
    at, turn = 0, 0
    while at < len(wire):
        read = wire[at:at + steps[turn % len(steps)]]
        at, turn = at + len(read), turn + 1
        try:
            events += fed.feed(read)
        except SSEError:
            with pytest.raises(SSEError):
                fed_data.feed_data(read)
            break
        datas += fed_data.feed_data(read)
        assert datas == [event.data for event in events]
    assert datas == [event.data for event in events]


@pytest.mark.parametrize("step", [0, 4])
def test_a_stream_that_begins_with_a_bom_has_its_cr_line_endings_read_as_such(step):
    wire = b"\xef\xbb\xbfdata: a\r\rdata: bcd"
    assert decode(wire, step) == [SSEEvent("message", "a")]
    decoder = SSEDecoder()
    step = step or len(wire)
    assert [d for i in range(0, len(wire), step) for d in decoder.feed_data(wire[i:i + step])] == ["a"]
