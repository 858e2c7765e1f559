"""The upstream client over real sockets: TLS with connection reuse, HTTP(S)_PROXY and NO_PROXY."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import ssl
import subprocess
from pathlib import Path

import anthropic
import pytest

import agproxy
from tests.conftest import clean_env, fake_config
from tests.fakes.anthropic_upstream import FakeAnthropic, Sse, text_stream
from tests.fakes.connect_proxy import FakeProxy


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Path:
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
                   check=True, capture_output=True)
    return folder


@pytest.fixture
def tls_fake(certificate):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")
    with FakeAnthropic(tls=context) as fake:
        yield fake


def ask(proxy, n: int = 1) -> None:
    client = anthropic.Anthropic(base_url=proxy.url, api_key="x", max_retries=0)
    for _ in range(n):
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with client.messages.stream(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]) as stream:
        assert stream.get_final_message().content


def test_https_upstream_reuses_one_tls_connection(start_agproxy, tls_fake, certificate, tmp_path):
    env = clean_env(HOME=str(tmp_path), SSL_CERT_FILE=str(certificate / "cert.pem"))
    proxy = start_agproxy(fake_config(tls_fake), env=env)
    ask(proxy, 3)
    assert len(tls_fake.requests) == 4
    assert tls_fake.connections == 1  # one handshake for four requests


def test_the_next_request_reuses_a_connection_whose_body_end_comes_late(start_agproxy, fake):
    """An answer's end (the terminating chunk, in a packet of its own on a loaded network) can come
    after its client already sent the next request: that request waits for the connection being
    finished instead of opening another (a TLS handshake each, against a real upstream)."""
    fake.script(*[Sse(text_stream(), end_after_s=0.2)] * 3)
    proxy = start_agproxy(fake_config(fake))
    ask(proxy, 2)
    assert [r.connection for r in fake.requests] == [1, 1, 1]


def test_one_request_waits_for_each_connection_being_finished_and_the_others_connect(start_agproxy, fake,
                                                                                    monkeypatch):
    """While one answer's end is being read (its connection then goes back to the pool), one new
    request waits for that connection; a second one at the same time opens a connection of its own
    rather than waiting for a connection the first will take (200 streams ending and beginning at
    once: new ones queued behind each other's drains, ~10 ms at p50 and ~100 ms at p99)."""
    # the order, not the bound, is under test: a longer bound lets a loaded machine's requests arrive
    # while the end is still due (at 0.3 s within 0.5 s, one run at load 6.6 came after it)
    monkeypatch.setattr(agproxy, "_AFTER_STOP_S", 3.0)
    fake.script(*[Sse(text_stream(), end_after_s=1.0)] * 3)  # within the drain's bound (_AFTER_STOP_S)
    proxy = start_agproxy(fake_config(fake))
    client = anthropic.Anthropic(base_url=proxy.url, api_key="x", max_retries=0)

    def ask_once() -> None:
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])

    ask_once()  # its connection's end comes 0.3 s after the answer
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for asked in [pool.submit(ask_once) for _ in range(2)]:
            asked.result(timeout=10)
    # the second connection's request went first; the one that waited took the first connection
    assert [r.connection for r in fake.requests] == [1, 2, 1]


def test_https_upstream_with_an_untrusted_certificate_is_502(start_agproxy, tls_fake):
    proxy = start_agproxy(fake_config(tls_fake))
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(proxy)
    assert caught.value.status_code == 502
    assert "certificate" in caught.value.message.lower()


def test_https_upstream_through_https_proxy(start_agproxy, tls_fake, certificate, tmp_path):
    with FakeProxy() as forward:
        env = clean_env(HOME=str(tmp_path), SSL_CERT_FILE=str(certificate / "cert.pem"),
                        HTTPS_PROXY=f"http://user:pa%40ss@127.0.0.1:{forward.port}")
        proxy = start_agproxy(fake_config(tls_fake), env=env)
        ask(proxy, 2)
        assert [(m, t) for m, t, _ in forward.seen] == [("CONNECT", f"localhost:{tls_fake.port}")]
        assert forward.seen[0][2] == "Basic dXNlcjpwYUBzcw=="  # user:pa@ss
        assert len(tls_fake.requests) == 3


def test_http_upstream_through_http_proxy(start_agproxy, fake, tmp_path):
    with FakeProxy() as forward:
        proxy = start_agproxy(fake_config(fake), env=clean_env(HOME=str(tmp_path), HTTP_PROXY=forward.url))
        ask(proxy)
        assert forward.seen[0][:2] == ("POST", f"{fake.url}/v1/messages")
        assert fake.requests[0].target == "/v1/messages"


def test_no_proxy_bypasses_the_proxy(start_agproxy, fake, tmp_path):
    with FakeProxy() as forward:
        env = clean_env(HOME=str(tmp_path), HTTP_PROXY=forward.url, NO_PROXY="127.0.0.1,localhost")
        proxy = start_agproxy(fake_config(fake), env=env)
        ask(proxy)
        assert forward.seen == []
        assert len(fake.requests) == 2


def test_a_read_deadline_holds_even_when_the_reading_loses_its_cancellation():
    """agproxy's deadline on reading an answer closes the connection instead of cancelling the
    reader: a reader whose cancellation is lost (nested wait_for on Python 3.11 and older, under
    load) must still end at timeout_s, with a 504, not when the upstream stops trickling."""

    class Response:
        timeout_s = 0.2
        closed = False

        def close(self, force: bool = False) -> None:
            self.closed = True

    response = Response()

    async def reading() -> bytes:  # ends only when its connection closes, whatever is cancelled
        while not response.closed:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass
        return b"what arrived before the close"

    async def run() -> agproxy.UpstreamFailure:
        with pytest.raises(agproxy.UpstreamFailure) as caught:
            await asyncio.wait_for(agproxy._read_by_deadline(response, reading(), "too slow"), 5)
        return caught.value

    failure = asyncio.run(run())
    assert failure.status == 504 and failure.message == "too slow" and response.closed


def test_a_tunnel_to_an_ipv6_upstream_names_it_in_brackets():
    """RFC 9110 9.3.6: CONNECT takes the authority form, so an IPv6 address goes in brackets (the
    head was written by hand and sent ``CONNECT ::1:PORT``); the head is built by encode_head."""
    import asyncio

    async def scenario(proxy_port: int) -> bytes:
        async def echo(reader, writer):
            writer.write(await reader.readexactly(4))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "::1", 0)
        port = server.sockets[0].getsockname()[1]
        sock = await agproxy._connect_tunnel("127.0.0.1", proxy_port, "::1", port, "Basic dTpw")
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"ping")
        answer = await reader.readexactly(4)
        writer.close()
        server.close()
        return answer, port

    with FakeProxy() as forward:
        answer, port = asyncio.run(scenario(forward.port))
    assert answer == b"ping"
    assert forward.seen == [("CONNECT", f"[::1]:{port}", "Basic dTpw")]


def _read_body_of(answer: bytes, pause_s: float, timeout_s: float) -> list:
    """What ``read_chunk`` gives, piece by piece (an exception last), of an upstream that sends
    ``answer``'s head, then its body one byte every ``pause_s``, then holds the connection open."""
    head, body = answer.split(b"\r\n\r\n", 1)

    async def scenario() -> list:
        async def upstream(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head + b"\r\n\r\n")
            for i in range(len(body)):
                await asyncio.sleep(pause_s)
                writer.write(body[i:i + 1])
            await asyncio.sleep(10)

        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        response = await agproxy.UpstreamClient().request("GET", f"http://127.0.0.1:{port}/", [],
                                                           timeout_s=timeout_s)
        pieces: list = []
        try:
            while True:
                piece = await asyncio.wait_for(response.read_chunk(), 5)
                if not piece:
                    break
                pieces.append(piece)
        except agproxy.UpstreamFailure as exc:
            pieces.append(exc)
        server.close()
        return pieces

    return asyncio.run(scenario())


def test_a_body_that_stops_coming_is_cut_at_timeout_s_and_not_taken_for_its_end():
    """A body read until the connection closes: the read that waits timeout_s for more fails (the
    connection agproxy cuts then is not the body's end)."""
    pieces = _read_body_of(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nab", 0.01, 0.3)
    assert b"".join(p for p in pieces if isinstance(p, bytes)) == b"ab"
    assert isinstance(pieces[-1], agproxy.UpstreamFailure) and "timed out" in pieces[-1].message


def test_a_body_that_trickles_is_read_whole_past_timeout_s():
    """timeout_s bounds each wait for the next bytes, not the whole body: one timer per answer,
    moved on lazily, must not cut a read that began after it was set."""
    pieces = _read_body_of(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabcdef", 0.1, 0.25)
    assert pieces == [b"a", b"b", b"c", b"d", b"e", b"f"]


def test_bytes_that_came_after_a_body_in_a_piece_of_their_own_do_not_answer_the_next_request():
    """An upstream that sends a second answer right after the first (a separate write, come before
    the first's end is read): the connection is not pooled with those bytes waiting in it, which
    would answer the next request, maybe another user's."""

    async def scenario() -> tuple:
        connections: list = []

        async def upstream(reader, writer):
            connections.append(writer)
            await reader.readuntil(b"\r\n\r\n")
            if len(connections) == 1:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninjected")
                await asyncio.sleep(1)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
            writer.close()

        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = agproxy.UpstreamClient()
        first = await client.request("GET", f"http://127.0.0.1:{port}/", [])
        await asyncio.sleep(0.2)  # a busy loop: the reader comes back after the extra bytes came
        one = await first.read_all()
        second = await client.request("GET", f"http://127.0.0.1:{port}/", [])
        two = await second.read_all()
        client.shutdown()
        server.close()
        return one, two, len(connections)

    one, two, connections = asyncio.run(scenario())
    assert (one, two, connections) == (b"first", b"second", 2)


@pytest.mark.parametrize("then", ["closes", "stops reading"])
def test_an_answer_that_comes_before_the_whole_body_is_sent_is_the_answer(then):
    """An upstream that refuses a large body on its head (nginx's 413, at 1 MB by default) answers
    at once, then closes or reads no more: that answer is what agproxy gives, not a reset (502) or,
    after timeout_s, a 504 for the body it could not finish sending."""

    async def scenario() -> tuple:
        async def upstream(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 8\r\n\r\ntoo big!")
            await writer.drain()
            if then == "closes":
                writer.close()
            else:
                await asyncio.sleep(5)

        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = agproxy.UpstreamClient()
        response = await client.request("POST", f"http://127.0.0.1:{port}/", [], b"y" * 8_000_000, timeout_s=3)
        answer = response.status, await response.read_all()
        assert not client._idle.get(response._conn.origin)  # its body half sent: never used again
        server.close()
        return answer

    assert asyncio.run(scenario()) == (413, b"too big!")


@pytest.mark.parametrize("end_after_s, drain_after_s, expected", [
    (None, 0, (0, 1, 1)),  # the end in the same read as the last event
    (0.05, 0.3, (0, 1, 1)),  # the end in a read of its own, come before the drain
    (0.2, 0, (1, 0, 1)),  # the end still to come: read in the background
])
def test_the_end_of_a_body_is_read_at_once_when_it_came_with_the_last_event(end_after_s, drain_after_s, expected):
    """A short answer's body end (the terminating chunk) usually comes with its last event or just
    after it: the drain after message_stop reads it at once (no background read, no timer) and the
    connection is back in the pool; an end that comes later is read in the background, then pooled
    just the same."""
    body = b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in (b"event: a\ndata: {}\n\n", b"event: b\ndata: {}\n\n"))

    async def scenario() -> tuple:
        async def upstream(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            if end_after_s is None:
                writer.write(head + body + b"0\r\n\r\n")
            else:
                writer.write(head + body)
                await writer.drain()
                await asyncio.sleep(end_after_s)
                writer.write(b"0\r\n\r\n")
            await asyncio.sleep(2)
            writer.close()

        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = agproxy.UpstreamClient()
        response = await client.request("GET", f"http://127.0.0.1:{port}/", [])
        data = b""
        while data.count(b"\n\n") < 2:
            data += await asyncio.wait_for(response.read_chunk(), 5)
        await asyncio.sleep(drain_after_s)
        draining_before = len(agproxy._DRAINING)
        response.drain()
        in_background = len(agproxy._DRAINING) - draining_before
        pooled_at_once = len(client._idle.get(response._conn.origin) or [])
        await asyncio.sleep(0.5)
        pooled_later = len(client._idle.get(response._conn.origin) or [])
        client.shutdown()
        server.close()
        return in_background, pooled_at_once, pooled_later

    assert asyncio.run(scenario()) == expected


def test_the_addresses_kept_per_url_are_bounded_and_each_request_goes_where_its_url_says():
    """The origin, target and Host of a URL are worked out once and kept (:meth:`UpstreamClient._address`);
    Gemini's URLs name the client's model, so a client inventing models must not grow them without
    bound, and a URL must never be sent to another's target."""

    async def scenario() -> tuple:
        seen: list = []

        async def upstream(reader, writer):
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                seen.append(head.split(b"\r\n")[0].decode())
                await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = agproxy.UpstreamClient()
        count = agproxy._MAX_KEPT_ADDRESSES + 40
        most = 0
        for i in range(count):
            response = await client.request("POST", f"http://127.0.0.1:{port}/v1beta/models/m{i}:generateContent?alt=sse",
                                            [], b"{}")
            assert await response.read_all() == b"ok"
            most = max(most, len(client._addresses))
        client.shutdown()
        server.close()
        await server.wait_closed()
        return seen, most, count

    seen, most, count = asyncio.run(scenario())
    assert seen == [f"POST /v1beta/models/m{i}:generateContent?alt=sse HTTP/1.1" for i in range(count)]
    assert most <= agproxy._MAX_KEPT_ADDRESSES
