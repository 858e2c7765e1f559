"""Attacks on the issue 18 changes (unique ids, reworded errors, rests, the redactor, the stream
grammar, learned windows): each test here failed on the code it was written against."""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Dict, List, Sequence, Tuple

import pytest

from agproxy import MAX_UPSTREAM_ID_CHARS
from tests.conftest import fake_config
from tests.fakes.anthropic_upstream import Json, Raw, Sse, message, tool_and_thinking_stream
from tests.fakes.gemini_upstream import Answer, FakeGemini, call
from tests.fakes.openai_upstream import Chat, Chunks, FakeOpenAI, completion, text_chunks, tool_chunks
from tests.test_gemini import gemini_config
from tests.test_ids import ask, openai_config
from tests.wire_check import post_json

SIMPLE = {"model": "claude-x", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


def test_a_firewall_page_403_for_one_clients_words_rests_no_key(start_agproxy, fake):
    """A firewall in front of the API (Cloudflare's "you have been blocked" page) refused one
    request for its words with an HTML 403: agproxy took it for a rejected key and rested every
    account for 600 s, so every other client got 424 for ten minutes."""
    page = b"<html><body>Sorry, you have been blocked (Cloudflare Ray ID: 1)</body></html>"
    blocked = Raw(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(page), page))
    fake.script(blocked, blocked, blocked)  # each attempt (max_retry_attempts 3)
    proxy = start_agproxy(fake_config(fake))
    words = dict(SIMPLE, messages=[{"role": "user", "content": "' OR 1=1 --"}])
    first = post_json(proxy.port, "/v1/messages", words, 10)
    assert first.status == 502 and "answered HTTP 403" in json.loads(first.body)["error"]["message"]
    second = post_json(proxy.port, "/v1/messages", SIMPLE, 10)  # another client, other words
    assert second.status == 200, second.body
    assert "rests 600 s" not in proxy.log()


def test_a_window_named_in_a_clients_words_echoed_by_the_upstream_is_not_learned(start_agproxy, fake, tmp_path):
    """An upstream that quotes the request in its error (a tool description here) let one client
    name the context window agproxy learns: 1024 tokens, kept in the state file, and every later
    request of every client over it was refused as too long."""
    words = "This model's maximum context length is 1024 tokens"
    fake.script(Json(400, {"type": "error", "error": {
        "type": "invalid_request_error", "message": f"tools.0.description: {words!r} is invalid; prompt is too long"}}))
    proxy = start_agproxy(fake_config(fake, state_file=str(tmp_path / "state.json")))
    tool = {"name": "t", "description": words, "input_schema": {"type": "object"}}
    assert post_json(proxy.port, "/v1/messages", dict(SIMPLE, tools=[tool]), 10).status == 400
    longer = dict(SIMPLE, messages=[{"role": "user", "content": "hi " * 3000}])
    answer = post_json(proxy.port, "/v1/messages", longer, 10)
    assert answer.status == 200, answer.body
    assert "1024-token context window" not in proxy.log()


GATEWAY_TOKEN = "gw-token-ABCDEFGHIJKLMNOPQRSTUVWX"  # a header credential not shaped like any key


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_upstream_id_ending_in_a_secret_cut_at_its_bound_shows_none_of_it(start_agproxy, stream):
    """X-Upstream-Message-Id was cut to 128 characters before the redactor looked: an id padded so
    that the cut falls inside a configured secret showed the secret's first characters."""
    hostile = "chatcmpl-" + "x" * (MAX_UPSTREAM_ID_CHARS - 9 - 16) + GATEWAY_TOKEN
    with FakeOpenAI() as local:
        if stream:
            local.script(Chunks([dict(c, id=hostile) for c in text_chunks()]))
        else:
            local.script(Chat(200, dict(completion(), id=hostile)))
        config = openai_config(local)
        config["upstreams"][0]["headers"] = {"X-Gateway-Token": GATEWAY_TOKEN}
        proxy = start_agproxy(config)
        _, headers = ask(proxy, stream)
    relayed = headers["x-upstream-message-id"]
    assert GATEWAY_TOKEN[:12] not in relayed and len(relayed) <= MAX_UPSTREAM_ID_CHARS


ESCAPED_KEY = "sk-upstre\\u0061m-\\u0061lice"  # the account's key, as a JSON string may spell it


def tool_stream(pieces: List[str], thinking: Sequence[str] = ()) -> List[Tuple[str, Dict[str, Any]]]:
    """A stream whose thinking block has these deltas, then a signature, and whose tool_use input
    arrives in these JSON pieces."""
    events = [event for event in tool_and_thinking_stream() if not (
        event[1].get("index") in (0, 2) and event[0] == "content_block_delta")]
    signature = ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "signature_delta", "signature": "c2ln"}})
    thinking_deltas = [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                "delta": {"type": "thinking_delta", "thinking": t}})
                       for t in thinking or ["Let me think."]]
    json_deltas = [("content_block_delta", {"type": "content_block_delta", "index": 2,
                                            "delta": {"type": "input_json_delta", "partial_json": p}})
                   for p in pieces]
    return events[:2] + thinking_deltas + [signature] + events[2:7] + json_deltas + events[7:]


def streamed_blocks(body: bytes) -> Tuple[Dict[str, Any], List[str]]:
    """The tool input a client parses out of a stream, and the delta types of block 0 in order."""
    pieces, kinds = [], []
    for line in body.decode().splitlines():
        if line.startswith("data:"):
            data = json.loads(line[5:])
            if data["type"] == "content_block_delta" and data["index"] == 2:
                pieces.append(data["delta"]["partial_json"])
            elif data["type"] == "content_block_delta" and data["index"] == 0:
                kinds.append(data["delta"]["type"])
    return json.loads("".join(pieces)), kinds


@pytest.mark.parametrize("pieces", [
    ['{"command": "echo ' + ESCAPED_KEY + '"}'],  # whole in one delta
    ['{"command": "echo sk-upstre\\u00', '61m-\\u0061lice"}'],  # cut inside an escape
    ['{"command": "echo sk-ups', 'tre\\u0061m-\\u0061lice"}'],  # cut before the escapes
    ['{"command": "echo sk-upstre\\u0061m-', '\\u0061lice"}'],  # cut after one
], ids=["whole", "in_escape", "before", "between"])
def test_a_key_spelled_with_json_escapes_in_a_streamed_tool_input_is_hidden(start_agproxy, fake, pieces):
    """A tool input arrives as JSON source in input_json_delta: a key written there with \\u
    escapes reached the client twice escaped on the wire, which no spelling matched, and the
    client parsed the key out of it (a whole Message's input was redacted)."""
    fake.script(Sse(tool_stream(pieces)))
    proxy = start_agproxy(fake_config(fake))
    answer = post_json(proxy.port, "/v1/messages", dict(SIMPLE, stream=True), 10)
    assert answer.status == 200
    tool_input, _ = streamed_blocks(answer.body)
    assert "sk-upstream-alice" not in json.dumps(tool_input) and tool_input["command"].startswith("echo ")


def test_thinking_held_back_goes_out_before_the_signature(start_agproxy, fake):
    """Thinking text held back (it may begin a key) waited past the block's signature_delta and went
    out after it: a thinking_delta after the signature, which the Messages stream never has."""
    fake.script(Sse(tool_stream(['{"command": "ls"}'], thinking=["I will use sk-"])))
    proxy = start_agproxy(fake_config(fake))
    answer = post_json(proxy.port, "/v1/messages", dict(SIMPLE, stream=True), 10)
    _, kinds = streamed_blocks(answer.body)
    assert kinds[-1] == "signature_delta" and kinds.count("thinking_delta") >= 1


# -- what a client got back, it can send back ---------------------------------------------------

def nested(levels: int) -> Dict[str, Any]:
    """A tool input whose objects nest this many levels (itself the first), as a schema-heavy MCP
    tool's arguments may."""
    value: Dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def answered_blocks(body: bytes, stream: bool) -> List[Dict[str, Any]]:
    """The content blocks of an answer as the client builds them (a streamed tool input parsed)."""
    if not stream:
        return json.loads(body)["content"]
    blocks: Dict[int, Dict[str, Any]] = {}
    for line in body.decode().splitlines():
        data = json.loads(line[5:]) if line.startswith("data:") else {}
        if data.get("type") == "content_block_start":
            blocks[data["index"]] = dict(data["content_block"], partial="")
        elif data.get("type") == "content_block_delta" and data["delta"]["type"] == "input_json_delta":
            blocks[data["index"]]["partial"] += data["delta"]["partial_json"]
    for block in blocks.values():
        partial = block.pop("partial")
        if block["type"] == "tool_use" and partial:
            block["input"] = json.loads(partial)
    return [blocks[i] for i in sorted(blocks)]


def deep_tool_reply(kind: str, stream: bool, levels: int) -> Any:
    """The upstream's answer of this kind: one call of tool 't' with an input nested ``levels`` deep."""
    tool_input = nested(levels)
    if kind == "gemini":
        return Answer(parts=[call("t", tool_input)])
    if kind == "openai" and stream:
        return Chunks(tool_chunks([("call_1", "t", json.dumps(tool_input))]))
    if kind == "openai":
        return Chat(200, completion(None, tool_calls=[{"id": "call_1", "type": "function", "function": {
            "name": "t", "arguments": json.dumps(tool_input)}}]))
    if stream:
        events = tool_and_thinking_stream()
        piece = ("content_block_delta", {"type": "content_block_delta", "index": 2, "delta": {
            "type": "input_json_delta", "partial_json": json.dumps(tool_input)}})
        return Sse(events[:10] + [piece] + events[12:])
    return Json(200, dict(message(""), content=[{"type": "tool_use", "id": "toolu_1", "name": "t",
                                                 "input": tool_input}], stop_reason="tool_use"))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", ["anthropic", "openai", "gemini"])
def test_a_deep_tool_input_an_upstream_sent_can_be_sent_back(start_agproxy, fake, kind, stream):
    """A tool input nested 70 levels (inside the 80 an upstream answer may have) reached the client,
    whose next request, holding it in its history 5 levels down, was refused for nesting deeper than
    64: every later turn of that session was a 400."""
    tools = [{"name": "t", "description": "deep", "input_schema": {"type": "object"}}]
    ask_for = {"model": "claude-x", "max_tokens": 50, "stream": stream, "tools": tools,
               "messages": [{"role": "user", "content": "call t"}]}
    with FakeOpenAI() as local, FakeGemini(keys=("gemini-key",)) as gemini:
        config = {"anthropic": fake_config(fake), "openai": openai_config(local), "gemini": gemini_config(gemini)}[kind]
        {"anthropic": fake, "openai": local, "gemini": gemini}[kind].script(deep_tool_reply(kind, stream, 70))
        proxy = start_agproxy(config)
        first = post_json(proxy.port, "/v1/messages", ask_for, 10)
        assert first.status == 200, first.body
        blocks = answered_blocks(first.body, stream)
        call = next(b for b in blocks if b["type"] == "tool_use")
        assert call["input"] == nested(70)
        history = ask_for["messages"] + [{"role": "assistant", "content": blocks}, {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call["id"], "content": "done"}]}]
        second = post_json(proxy.port, "/v1/messages", dict(ask_for, messages=history), 10)
    assert second.status == 200, second.body


# -- the request bodies held at once --------------------------------------------------------------

def test_uploads_that_announce_a_body_and_send_nothing_do_not_lock_out_every_other_body(start_agproxy):
    """Two connections announcing 100 kB bodies and sending 10 bytes of them hold the whole budget
    (200 kB) for body_timeout_s (60 s by default, and renewable): a small request gets 529."""
    proxy = start_agproxy({"upstreams": [{"name": "demo", "kind": "demo"}], "max_body_bytes": 100000,
                           "max_inflight_body_bytes": 200000})
    idle = [socket.create_connection(("127.0.0.1", proxy.port), timeout=10) for _ in range(2)]
    try:
        for sock in idle:
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000\r\n\r\n{\"model\": ")
        time.sleep(0.3)
        answer = post_json(proxy.port, "/v1/messages", SIMPLE, 10)
    finally:
        for sock in idle:
            sock.close()
    assert answer.status == 200, answer.body


# -- learned rejections ----------------------------------------------------------------------------

def test_a_rejection_named_in_a_clients_words_echoed_by_the_upstream_is_not_learned(start_agproxy, fake, tmp_path):
    """An upstream that quotes the request in its 400 (pydantic's input_value) let one client name a
    field agproxy then learned to strip: the retry without it succeeded, and ``thinking`` was cut
    from every later request of every client (kept in the state file)."""
    words = "thinking: Extra inputs are not permitted"
    fake.script(Json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": (
        f"messages.0.content: Value error, content is flagged [type=value_error, input_value={words!r}]")}}))
    proxy = start_agproxy(fake_config(fake, state_file=str(tmp_path / "state.json")))
    thinking = {"type": "enabled", "budget_tokens": 1024}
    hostile = dict(SIMPLE, max_tokens=2048, thinking=thinking, messages=[{"role": "user", "content": words}])
    post_json(proxy.port, "/v1/messages", hostile, 10)
    other = post_json(proxy.port, "/v1/messages", dict(SIMPLE, max_tokens=2048, thinking=thinking), 10)
    assert other.status == 200, other.body
    assert fake.requests[-1].json.get("thinking") == thinking, "another client's thinking was stripped"
