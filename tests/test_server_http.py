"""HTTP/1.1 behaviour of the running server, over raw sockets."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from typing import Dict, List, Tuple

import pytest

from tests.conftest import raw_request

DEMO = {"name": "demo", "kind": "demo"}
MESSAGE = json.dumps({"model": "claude-test", "max_tokens": 10,
                      "messages": [{"role": "user", "content": "ping"}]}).encode()


def split_responses(data: bytes) -> List[Tuple[int, Dict[str, str], bytes]]:
    """Cut a byte stream into responses, following Content-Length and chunked framing."""
    out = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 100:
            out.append((status, headers, b""))
            continue
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                body += data[:size]
                data = data[size + 2:]
                if size == 0:
                    break
        else:
            length = int(headers.get("content-length", "0"))
            body, data = data[:length], data[length:]
        out.append((status, headers, body))
    return out


@pytest.fixture
def demo(start_agproxy):
    return start_agproxy({"upstreams": [DEMO], "header_timeout_s": 1.5, "body_timeout_s": 1.5,
                          "idle_timeout_s": 2, "max_body_bytes": 100000, "max_header_bytes": 4096})


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def test_keep_alive_and_pipelining_answer_in_order(demo):
    wire = (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
            + post("/v1/messages", MESSAGE)
            + b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n"
            + b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    responses = split_responses(raw_request(demo.port, wire))
    assert [r[0] for r in responses] == [200, 200, 200, 200]
    assert json.loads(responses[0][2])["status"] == "ok"
    assert json.loads(responses[1][2])["type"] == "message"
    assert "data" in json.loads(responses[2][2])
    assert responses[3][1]["connection"] == "close"


def test_every_response_has_date_type_length_and_request_id(demo):
    wire = (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n"
            b"DELETE /v1/messages HTTP/1.1\r\nHost: localhost\r\n\r\n"
            + post("/v1/messages", b"{not json")
            + b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    responses = split_responses(raw_request(demo.port, wire))
    assert [r[0] for r in responses] == [200, 404, 405, 400, 200]
    for status, headers, body in responses:
        assert headers["date"].endswith("GMT")
        assert headers["content-type"] == "application/json"
        assert int(headers["content-length"]) == len(body)
        assert headers["request-id"].startswith("req_")
        if status >= 400:
            error = json.loads(body)
            assert error["type"] == "error" and error["error"]["message"]
    assert responses[2][1]["allow"] == "POST"


def test_chunked_request_body(demo):
    half = len(MESSAGE) // 2
    wire = (b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + b"%x\r\n%b\r\n" % (half, MESSAGE[:half]) + b"%x\r\n%b\r\n" % (len(MESSAGE) - half, MESSAGE[half:])
            + b"0\r\n\r\n")
    [(status, _, body)] = split_responses(raw_request(demo.port, wire))
    assert status == 200 and "ping" in json.loads(body)["content"][0]["text"]


def test_expect_100_continue(demo):
    with socket.create_connection(("127.0.0.1", demo.port), timeout=5) as sock:
        head = post("/v1/messages", MESSAGE, "Expect: 100-continue\r\nConnection: close\r\n")
        sock.sendall(head[: -len(MESSAGE)])
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(MESSAGE)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert split_responses(data)[0][0] == 200


def test_head_has_length_but_no_body(demo):
    data = raw_request(demo.port, b"HEAD /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    get = raw_request(demo.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    body = get.partition(b"\r\n\r\n")[2]
    assert f"Content-Length: {len(body)}".encode() in head and len(body) > 0  # the GET's length, no body
    assert rest == b""


def test_http10_request_is_answered_and_closed(demo):
    data = raw_request(demo.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200") and b"Connection: close" in data


@pytest.mark.parametrize("wire, status", [
    (b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n", 431),
    (b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Length: 200000\r\n\r\n", 413),
    (b"BLAH\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Header: 1\r\n\r\n", 400),
])
def test_bad_requests_get_an_error_and_the_connection_is_closed(demo, wire, status):
    responses = split_responses(raw_request(demo.port, wire + b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"))
    assert [r[0] for r in responses] == [status]
    assert responses[0][1]["connection"] == "close"
    assert json.loads(responses[0][2])["type"] == "error"


def test_chunked_body_over_the_limit_is_413(demo):
    wire = (b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + b"10000\r\n" + b"x" * 65536 + b"\r\n") * 1
    wire += b"10000\r\n" + b"x" * 65536 + b"\r\n"
    [(status, headers, body)] = split_responses(raw_request(demo.port, wire))
    assert status == 413 and json.loads(body)["error"]["type"] == "request_too_large"


def test_slow_client_is_dropped_while_others_are_served(demo):
    result = {}

    def slowloris():
        with socket.create_connection(("127.0.0.1", demo.port), timeout=10) as sock:
            started = time.monotonic()
            for byte in b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n":
                sock.sendall(bytes([byte]))  # one byte a second, until the server answers
                if select.select([sock], [], [], 1.0)[0]:
                    break
            result["data"], result["after"] = sock.recv(4096), time.monotonic() - started

    thread = threading.Thread(target=slowloris)
    thread.start()
    time.sleep(0.3)
    normal = raw_request(demo.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert normal.startswith(b"HTTP/1.1 200")
    thread.join(15)
    assert result["data"].startswith(b"HTTP/1.1 408")
    assert result["after"] < 4


def test_stalled_body_times_out(demo):
    started = time.monotonic()
    data = raw_request(demo.port, post("/v1/messages", MESSAGE)[:-10], timeout=6)
    assert data.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 4


def test_idle_keep_alive_connection_is_closed(demo):
    with socket.create_connection(("127.0.0.1", demo.port), timeout=6) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        first = b""
        while not first.endswith(b"}"):  # the whole answer, however the segments fall
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(65536) == b""  # closed by the server, quietly
        assert 1.5 < time.monotonic() - started < 4


def test_two_hundred_idle_connections_do_not_block_a_request(demo):
    idle = [socket.create_connection(("127.0.0.1", demo.port), timeout=5) for _ in range(200)]
    try:
        for sock in idle[:100]:
            sock.sendall(b"GET /hea")  # half a request line
        data = raw_request(demo.port, post("/v1/messages", MESSAGE, "Connection: close\r\n"))
        assert data.startswith(b"HTTP/1.1 200")
    finally:
        for sock in idle:
            sock.close()


def test_connection_limit_answers_503(start_agproxy):
    proxy = start_agproxy({"upstreams": [DEMO], "max_connections": 3})
    held = [socket.create_connection(("127.0.0.1", proxy.port), timeout=5) for _ in range(3)]
    try:
        time.sleep(0.2)
        data = raw_request(proxy.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 503")
        assert b"overloaded_error" in data
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    data = raw_request(proxy.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200")


def test_streaming_response_is_chunked_with_sse_headers(demo):
    body = json.dumps({"model": "claude-test", "max_tokens": 10, "stream": True,
                       "messages": [{"role": "user", "content": "ping"}]}).encode()
    [(status, headers, data)] = split_responses(raw_request(demo.port, post("/v1/messages", body,
                                                                           "Connection: close\r\n")))
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert data.count(b"event: message_stop") == 1


def test_http10_stream_ends_with_the_close_even_when_keep_alive_was_asked(demo):
    body = json.dumps({"model": "claude-test", "max_tokens": 10, "stream": True,
                       "messages": [{"role": "user", "content": "ping"}]}).encode()
    wire = (b"POST /v1/messages HTTP/1.0\r\nConnection: keep-alive\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
    started = time.monotonic()
    data = raw_request(demo.port, wire, timeout=5)
    assert time.monotonic() - started < 2  # closed at the end, not after the idle timeout
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"Connection: close" in head and b"Transfer-Encoding" not in head
    assert rest.endswith(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")


# -- a 204 carries no body and no Content-Length (RFC 9110 8.6) ------------------------------------

def test_cors_preflight_204_has_no_content_length(start_agproxy):
    """RFC 9110 8.6: a server MUST NOT send Content-Length in a 204 response."""
    proxy = start_agproxy({"upstreams": [DEMO], "allowed_origins": ["http://localhost:3000"]})
    wire = (b"OPTIONS /v1/messages HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:3000\r\n"
            b"Access-Control-Request-Method: POST\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data = raw_request(proxy.port, wire)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 204 ")
    assert b"content-length" not in head.lower(), head
    assert b"transfer-encoding" not in head.lower(), head
    assert rest.startswith(b"HTTP/1.1 200 "), "the next response must follow the 204's head at once"


# -- request bodies held at once are bounded (max_inflight_body_bytes) -------------------------------

def _open_upload(port: int, length: int) -> socket.socket:
    """A request whose head says ``length`` bytes of body, of which nothing is sent yet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % length)
    return sock


def _answered_at_once(sock: socket.socket) -> bytes:
    """What the server sends within half a second (b"" when it is waiting for the body)."""
    ready, _, _ = select.select([sock], [], [], 0.5)
    return sock.recv(65536) if ready else b""


def _uploads_held(port: int, count: int, size: int, settle_s: float) -> list:
    """``count`` uploads of ``size`` bytes that have sent all but a byte of their body, each still
    waiting for it (agproxy holds what has arrived)."""
    uploads = [_open_upload(port, size) for _ in range(count)]
    for sock in uploads:
        sock.sendall(b" " * (size - 1))
    time.sleep(settle_s)
    assert [_answered_at_once(sock) for sock in uploads] == [b""] * count
    return uploads


def _answer_at_its_head(port: int, size: int) -> list:
    """The answer agproxy gives at once to an upload of ``size`` bytes that has sent only its head."""
    sock = _open_upload(port, size)
    answer = split_responses(_answered_at_once(sock))
    sock.close()
    return answer


def test_a_body_past_the_inflight_budget_gets_529_before_it_is_read(start_agproxy):
    """Bodies count as they arrive: four uploads that have sent all but a byte of their 100 kB hold
    the 400 kB budget, so a fifth is refused with 529 overloaded_error at its head, before its body
    is read; once the four are gone, four more are taken again."""
    proxy = start_agproxy({"upstreams": [DEMO], "max_body_bytes": 100000, "max_inflight_body_bytes": 400000})
    size = 100000
    for _ in range(2):
        uploads = _uploads_held(proxy.port, 4, size, 0.3)
        answer = _answer_at_its_head(proxy.port, size)
        assert answer and answer[0][0] == 529, answer
        error = json.loads(answer[0][2])["error"]
        assert error["type"] == "overloaded_error" and "max_inflight_body_bytes" in error["message"], error
        for sock in uploads:
            sock.close()
        time.sleep(0.3)


def test_thirty_mib_bodies_fit_eight_at_a_time_with_the_defaults(start_agproxy):
    """With the defaults (max_body_bytes 32 MiB, max_inflight_body_bytes 256 MiB), eight uploads of
    30 MiB that have arrived but for a byte are held; the ninth is refused at its head."""
    proxy = start_agproxy({"upstreams": [DEMO]})
    size = 30 * 1024 * 1024
    uploads = _uploads_held(proxy.port, 8, size, 0.5)
    try:
        answer = _answer_at_its_head(proxy.port, size)
        assert answer and answer[0][0] == 529, answer
    finally:
        for sock in uploads:
            sock.close()


def test_a_chunked_body_counts_against_the_inflight_budget_as_it_arrives(start_agproxy):
    proxy = start_agproxy({"upstreams": [DEMO], "max_body_bytes": 100000, "max_inflight_body_bytes": 150000})
    held = _open_upload(proxy.port, 100000)
    held.sendall(b" " * 99999)  # all but a byte: held
    time.sleep(0.2)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"%x\r\n%b\r\n" % (60000, b" " * 60000))
        answer = split_responses(_answered_at_once(sock))
    held.close()
    assert answer and answer[0][0] == 529, answer
