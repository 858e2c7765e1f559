"""The sans-IO HTTP/1.1 request parser and response writers, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agproxy
from agproxy import (
    CLOSED,
    NEED_DATA,
    HeadReady,
    ProtocolError,
    RequestParser,
    RequestReady,
    request_body_framing,
)

SIMPLE = b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: y\r\n\r\n")


def parse_all(data: bytes, pieces: int = 1, **limits) -> list:
    """Feed ``data`` in ``pieces``-byte slices (0 = whole) and collect complete requests."""
    parser = RequestParser(**limits)
    done = []
    step = pieces or len(data) or 1
    for i in range(0, len(data), step):
        parser.feed(data[i:i + step])
        while True:
            event = parser.next_event()
            if isinstance(event, RequestReady):
                done.append(event.request)
            elif not isinstance(event, HeadReady):
                break
    return done


@pytest.mark.parametrize("pieces", [0, 1, 3])
def test_content_length_request_whole_and_byte_by_byte(pieces):
    [request] = parse_all(SIMPLE, pieces)
    assert request.method == "POST"
    assert request.path == "/v1/messages"
    assert request.query == "beta=true"
    assert request.header("HOST") == "localhost"
    assert request.body == b"hello"
    assert request.keep_alive


@pytest.mark.parametrize("pieces", [0, 1, 2])
def test_chunked_request(pieces):
    [request] = parse_all(CHUNKED, pieces)
    assert request.body == b"hello world"


def test_pipelined_requests_come_out_in_order():
    get = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
    requests = parse_all(SIMPLE + get + CHUNKED + get)
    assert [r.path for r in requests] == ["/v1/messages", "/healthz", "/v1/messages", "/healthz"]


def test_trailing_partial_request_waits_for_more():
    parser = RequestParser()
    parser.feed(SIMPLE + b"GET /heal")
    assert isinstance(parser.next_event(), HeadReady)
    assert isinstance(parser.next_event(), RequestReady)
    assert parser.next_event() == NEED_DATA
    parser.feed(b"thz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(parser.next_event(), HeadReady)
    event = parser.next_event()
    assert isinstance(event, RequestReady) and event.request.path == "/healthz"


def test_head_is_reported_before_the_body_arrives():
    parser = RequestParser()
    parser.feed(b"POST /v1/messages HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    event = parser.next_event()
    assert isinstance(event, HeadReady) and event.request.expects_continue
    assert parser.next_event() == NEED_DATA
    parser.feed(b"abc")
    assert parser.next_event().request.body == b"abc"


def test_clean_close_between_requests():
    parser = RequestParser()
    parser.feed(b"")
    assert parser.next_event() == CLOSED


def test_close_mid_body_is_an_error():
    parser = RequestParser()
    parser.feed(SIMPLE[:-2])
    parser.feed(b"")
    assert isinstance(parser.next_event(), HeadReady)
    with pytest.raises(ProtocolError):
        parser.next_event()


def test_bare_lf_line_endings_are_accepted():
    [request] = parse_all(b"GET / HTTP/1.1\nHost: a\n\n")
    assert request.path == "/" and request.body == b""


def test_http10_keep_alive_rules():
    [plain] = parse_all(b"GET / HTTP/1.0\r\n\r\n")
    [kept] = parse_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    [closed] = parse_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert (plain.keep_alive, kept.keep_alive, closed.keep_alive) == (False, True, False)


def test_absolute_form_target_keeps_path():
    [request] = parse_all(b"GET http://localhost:8045/v1/models?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert request.target == "/v1/models?x=1"


@pytest.mark.parametrize("data, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET nopath HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX", 400),
    # Latin-1 bytes that str.strip takes for blanks (U+0085, U+00A0): only SP and HTAB pad a value
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x85\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \xa0chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\xa0\r\n\r\nhello", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\x855\r\n\r\nhello", 400),
])
def test_malformed_requests_are_refused_with_a_status(data, status):
    with pytest.raises(ProtocolError) as caught:
        parse_all(data)
    assert caught.value.status == status


def test_header_block_limit_is_431_and_names_the_limit():
    data = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"a" * 2000 + b"\r\n\r\n"
    with pytest.raises(ProtocolError) as caught:
        parse_all(data, max_header_bytes=1024)
    assert caught.value.status == 431
    assert "1024 bytes" in caught.value.message


def test_header_limit_applies_before_the_block_ends():
    parser = RequestParser(max_header_bytes=1024)
    parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"a" * 5000)
    with pytest.raises(ProtocolError) as caught:
        parser.next_event()
    assert caught.value.status == 431


def test_body_limit_is_413_from_content_length_alone():
    parser = RequestParser(max_body_bytes=10)
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
    with pytest.raises(ProtocolError) as caught:
        parser.next_event()
    assert (caught.value.status, caught.value.error_type) == (413, "request_too_large")


def test_chunked_body_limit_is_413():
    data = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n"
    with pytest.raises(ProtocolError) as caught:
        parse_all(data, max_body_bytes=10)
    assert caught.value.status == 413


def test_an_upstream_length_padded_with_latin1_blanks_is_malformed():
    """U+00A0 after the digits is no blank of HTTP's: the length is malformed (502), not 2."""
    parser = agproxy.ResponseParser("POST")
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\xa0\r\n\r\nhi")
    with pytest.raises(agproxy.UpstreamFailure, match="invalid Content-Length"):
        while parser.next_event() != agproxy.END:
            pass


def test_framing_rules():
    assert request_body_framing((1, 1), []) == ("length", 0)
    assert request_body_framing((1, 1), [("Content-Length", "12")]) == ("length", 12)
    assert request_body_framing((1, 1), [("Content-Length", "12, 12")]) == ("length", 12)
    assert request_body_framing((1, 1), [("Transfer-Encoding", "Chunked")]) == ("chunked", 0)
    with pytest.raises(ProtocolError):
        request_body_framing((1, 0), [("Transfer-Encoding", "chunked")])


def test_hop_by_hop_headers_are_stripped():
    headers = [("Connection", "close, X-Private"), ("X-Private", "1"), ("Keep-Alive", "5"),
               ("Transfer-Encoding", "chunked"), ("retry-after", "3")]
    assert agproxy.strip_hop_by_hop(headers) == [("retry-after", "3")]


def test_response_writers():
    head = agproxy.response_head(529, [("Content-Length", "0")])
    assert head == b"HTTP/1.1 529 Overloaded\r\nContent-Length: 0\r\n\r\n"
    assert agproxy.encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert agproxy.http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=50))
def test_parser_on_arbitrary_bytes_raises_only_protocol_error(data, step):
    try:
        parse_all(data, step, max_header_bytes=1024, max_body_bytes=256)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["GET", "POST", "PUT"]),
                          st.text("abcdefghij/-_.", min_size=0, max_size=20),
                          st.binary(max_size=300), st.booleans()), min_size=1, max_size=4),
       st.integers(min_value=1, max_value=64))
def test_any_valid_pipeline_parses_back_exactly(items, step):
    wire = b""
    for method, path, body, chunked in items:
        wire += f"{method} /{path} HTTP/1.1\r\nHost: h\r\n".encode()
        if chunked:
            wire += b"Transfer-Encoding: chunked\r\n\r\n"
            for i in range(0, len(body), 7):
                piece = body[i:i + 7]
                wire += b"%x\r\n%b\r\n" % (len(piece), piece)
            wire += b"0\r\n\r\n"
        else:
            wire += b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    requests = parse_all(wire, step)
    assert [(r.method, r.path, r.body) for r in requests] == [(m, "/" + p, b) for m, p, b, _ in items]


def test_overlong_request_line_is_414():
    parser = RequestParser()
    parser.feed(b"GET /" + b"a" * 9000)
    with pytest.raises(ProtocolError) as caught:
        parser.next_event()
    assert caught.value.status == 414 and "8192 bytes" in caught.value.message


# -- the response parser (upstream side) ----------------------------------------------------------

def parse_response(data: bytes, step: int = 0, method: str = "POST", eof: bool = True) -> tuple:
    parser = agproxy.ResponseParser(method)
    head, body, ended = None, b"", False
    step = step or len(data) or 1
    chunks = [data[i:i + step] for i in range(0, len(data), step)] + ([b""] if eof else [])
    for piece in chunks:
        parser.feed(piece)
        while True:
            event = parser.next_event()
            if isinstance(event, agproxy.ResponseHead):
                head = event
            elif isinstance(event, bytes):
                body += event
            elif event == agproxy.END:
                ended = True
                break
            else:
                break
        if ended:
            break
    return head, body, ended, parser


CHUNKED_RESPONSE = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                    b"Content-Type: text/event-stream\r\n\r\n5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\nT: 1\r\n\r\n")


@pytest.mark.parametrize("step", [0, 1, 3])
def test_response_framings(step):
    head, body, ended, parser = parse_response(CHUNKED_RESPONSE, step, eof=False)
    assert (head.status, body, ended, parser.reusable) == (200, b"hello, world", True, True)
    head, body, ended, parser = parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabcEXTRA", 0,
                                               eof=False)
    assert (head.status, body, ended, parser.reusable) == (404, b"abc", True, False)  # bytes past the framing
    head, body, ended, parser = parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabc", step,
                                               eof=False)
    assert (head.status, body, ended, parser.reusable) == (404, b"abc", True, True)
    head, body, ended, parser = parse_response(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", step)
    assert (body, ended, parser.reusable) == (b"until the end", True, False)
    head, body, ended, _ = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", step, "HEAD", eof=False)
    assert (body, ended) == (b"", True)
    head, _, _, parser = parse_response(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", step)
    assert not parser.reusable


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"SPDY/3 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Le",
    b"",
])
def test_truncated_or_malformed_responses_raise_upstream_failure(data):
    with pytest.raises(agproxy.UpstreamFailure):
        parse_response(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=40))
def test_response_parser_on_arbitrary_bytes_raises_only_upstream_failure(data, step):
    try:
        parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + data, step)
        parse_response(data, step)
    except agproxy.UpstreamFailure:
        pass


# -- one chunked reader for both directions ------------------------------------------------------

def chunked_outcome(framed: bytes, step: int, response: bool) -> tuple:
    """("body", bytes) or ("refused", None) for a chunked body read by the request or the response parser."""
    try:
        if response:
            head, body, ended, _ = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + framed,
                                                  step)
            return ("body", body) if ended else ("refused", None)
        done = parse_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + framed, step)
        return ("body", done[0].body) if done else ("refused", None)
    except (ProtocolError, agproxy.UpstreamFailure):
        return ("refused", None)


chunk_pieces = st.lists(st.binary(min_size=1, max_size=40), max_size=6)
framing_noise = st.sampled_from([b"", b";ext=1", b" ", b"\t;a=b"])
#: how many bytes each feed brings: a few, or everything at once (the response parser's fast path
#: takes every whole chunk in the buffer at once)
feed_steps = st.one_of(st.integers(min_value=1, max_value=30), st.just(1 << 20))


@settings(max_examples=300, deadline=None)
@given(chunk_pieces, framing_noise, st.sampled_from([b"\r\n", b"\n"]), feed_steps)
def test_both_parsers_read_any_chunked_body_back_exactly(pieces, extension, newline, step):
    framed = b"".join(b"%x%s%s%s%s" % (len(p), extension, newline, p, newline) for p in pieces) + b"0\r\nT: 1\r\n\r\n"
    expected = ("body", b"".join(pieces))
    assert chunked_outcome(framed, step, response=False) == expected
    assert chunked_outcome(framed, step, response=True) == expected


@settings(max_examples=400, deadline=None)
@given(chunk_pieces, st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=3), feed_steps)
def test_both_parsers_agree_on_a_mangled_chunked_body(pieces, at, noise, step):
    framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    at = min(at, len(framed))
    mangled = framed[:at] + noise + framed[at:]
    assert chunked_outcome(mangled, step, response=False) == chunked_outcome(mangled, step, response=True)


def test_a_response_head_with_bare_lf_is_read_even_when_its_body_has_crlf():
    data = (b"HTTP/1.1 200 OK\nContent-Type: text/event-stream\nTransfer-Encoding: chunked\n\n"
            b"5\r\nhello\r\n0\r\n\r\n")
    head, body, ended, _ = parse_response(data, eof=False)
    assert (head.status, head.headers[0], body, ended) == (200, ("Content-Type", "text/event-stream"), b"hello", True)
