"""Keep-alives while a model thinks: where the upstream sends no pings of its own (OpenAI, Gemini),
the shell writes the client's protocol's ping whenever the client has been sent nothing for
ping_interval_s, between whole events; where the upstream sends its own (Anthropic), agproxy adds
none. Real sockets, real SDKs, scriptable fakes."""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any, Dict, List

import anthropic
import openai

import agproxy
from tests.conftest import fake_config
from tests.fakes.anthropic_upstream import Sse, text_stream
from tests.fakes.openai_upstream import Chunks, FakeOpenAI, chunk, text_chunks


def openai_config(fake: FakeOpenAI, ping_s: float) -> Dict[str, Any]:
    return {"upstreams": [{"name": "local", "kind": "openai", "base_url": fake.url,
                           "accounts": [{"name": "a", "api_key": "sk-local-1"}]}], "ping_interval_s": ping_s}


def messages_body(stream: bool = True) -> bytes:
    return json.dumps({"model": "m", "max_tokens": 50, "stream": stream,
                       "messages": [{"role": "user", "content": "x"}]}).encode()


def streamed(port: int) -> bytes:
    """A streamed Messages request's whole body, on a connection of its own."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/messages", messages_body(), {"content-type": "application/json"})
        return conn.getresponse().read()
    finally:
        conn.close()


def event_names(data: bytes) -> List[str]:
    return [e.event for e in agproxy.SSEDecoder().feed(data)]


def test_pings_go_out_while_the_upstream_sends_only_chunks_that_translate_to_nothing(start_agproxy):
    """A server that keeps its connection busy with empty deltas is, to the client, silent."""
    empty = [chunk({}) for _ in range(8)]
    with FakeOpenAI() as fake:
        fake.script(Chunks([chunk({"role": "assistant", "content": "a"})] + empty
                           + [chunk({}, "stop")], delay_s=0.1))
        proxy = start_agproxy(openai_config(fake, 0.2))
        data = streamed(proxy.port)
    kinds = event_names(data)
    assert kinds.count("ping") >= 2 and kinds[-1] == "message_stop", kinds
    assert [k for k in kinds if k != "ping"][:3] == ["message_start", "content_block_start", "content_block_delta"]


def test_the_sdks_read_a_stream_with_pings_between_its_events(start_agproxy):
    with FakeOpenAI() as fake:
        fake.script(Chunks(text_chunks("one two three"), delay_s=0.25), Chunks(text_chunks("one two three"),
                                                                               delay_s=0.25))
        proxy = start_agproxy(openai_config(fake, 0.05))
        with anthropic.Anthropic(base_url=proxy.url, api_key="x", max_retries=0) as client:
            with client.messages.stream(model="m", max_tokens=50, messages=[{"role": "user", "content": "x"}]) as s:
                assert s.get_final_text() == "one two three"
        chat = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
        pieces = [c.choices[0].delta.content or "" for c in chat.chat.completions.create(
            model="m", stream=True, messages=[{"role": "user", "content": "x"}]) if c.choices]
        assert "".join(pieces) == "one two three"


def test_no_ping_follows_a_stream_on_its_kept_alive_connection(start_agproxy):
    """A ping written after a stream's last chunk would be read as the next answer's head."""
    with FakeOpenAI() as fake:
        fake.script(*[Chunks(text_chunks("a b"), delay_s=0.12) for _ in range(3)])
        proxy = start_agproxy(openai_config(fake, 0.05))
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            for _ in range(3):
                conn.request("POST", "/v1/messages", messages_body(), {"content-type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                assert response.status == 200 and event_names(data)[-1] == "message_stop"
                assert "ping" in event_names(data)
        finally:
            conn.close()


def test_no_pings_of_agproxys_own_where_the_upstream_sends_its_own(start_agproxy, fake):
    events = text_stream("slow words here")
    fake.script(Sse(events, delay_s=0.15))
    proxy = start_agproxy(dict(fake_config(fake), ping_interval_s=0.05))
    kinds = event_names(streamed(proxy.port))
    assert kinds[-1] == "message_stop" and kinds.count("ping") == [name for name, _ in events].count("ping"), kinds


#: a text long enough that the Responses events repeating it (written in parts of 256 KB) outgrow
#: what the sockets' buffers hold, so the writer waits for the client in the middle of one
LONG_TEXT_BYTES = 8 * 1024 * 1024


def read_until(sock: socket.socket, got: bytearray, marker: bytes) -> None:
    while marker not in got:
        piece = sock.recv(65536)
        assert piece, bytes(got[-200:])
        got += piece


def read_while_it_comes(sock: socket.socket, got: bytearray) -> None:
    sock.settimeout(0.1)
    try:
        while True:
            piece = sock.recv(1 << 20)
            if not piece:
                return
            got += piece
    except socket.timeout:
        pass


def whole_json(data: str) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def test_no_ping_lands_inside_an_event_written_in_parts_when_the_client_resumes(start_agproxy):
    """A Responses event that repeats a long text goes out in parts, each once the client took the
    last; a ping written while the writer waits for the client to read would split that event's data
    line (Codex and the openai SDK then fail on its JSON). The race: the client reads while the loop
    is busy (here held for 0.3 s, as a 2 MB body holds it) past the ping's time, so the loop sees the
    client's read (the transport resumes) and the ping's timer in the same turn, before the writer's."""
    text = "abcdefgh" * (LONG_TEXT_BYTES // 8)
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    chunks = [chunk({"role": "assistant", "content": ""}), chunk({"content": text}), chunk({"tool_calls": [call]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}), chunk({}, "tool_calls")]
    with FakeOpenAI() as fake:
        fake.script(Chunks(chunks, delay_s=0.5))  # the call's end comes in a later read
        proxy = start_agproxy(openai_config(fake, 0.05))
        body = json.dumps({"model": "m", "input": "x", "stream": True, "store": False, "tools": [
            {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}]}).encode()
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        sock.settimeout(20)
        got = bytearray()
        try:
            sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            read_until(sock, got, b"event: response.output_text.done")
            for _ in range(5):  # the writer now waits in the middle of that event
                time.sleep(0.2)
                proxy.loop.call_soon_threadsafe(time.sleep, 0.4)  # the loop busy past the ping's time
                time.sleep(0.05)
                read_while_it_comes(sock, got)  # the client reads all it can while the loop is busy
            sock.settimeout(20)
            while True:
                piece = sock.recv(1 << 20)
                if not piece:
                    break
                got += piece
        finally:
            sock.close()
    head, _, rest = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    data = agproxy.ChunkedReader(agproxy.ProtocolError, 65536).read_through(bytearray(rest))
    events = agproxy.SSEDecoder().feed(data)
    assert events[-1].event == "response.completed"
    broken = [(event.event, event.data[-40:]) for event in events if not whole_json(event.data)]
    assert not broken  # before the fix: [('response.output_text.done', '...abcdefgh')] and more
    done = [json.loads(e.data) for e in events if e.event == "response.output_text.done"]
    assert done[0]["text"] == text
