"""An Anthropic upstream's run of deltas (one read, relayed as one RelayedDeltas, issue 22) to a
client of every protocol, over real sockets, judged by each protocol's own SDK: strings that need
escapes reach each client as they were sent, spaced and compact, ASCII-escaped and raw; a configured
key spread over the run's deltas, or spelled with a JSON escape in text or tool input, reaches none.
(Written by the attack on issue 22's runs and template encoders, which found these sound.)"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

import anthropic
import openai
from google import genai
from google.genai import types

from tests.conftest import fake_config
from tests.fakes.anthropic_upstream import Raw

KEY = "agp-alice-0123456789abcdefghijklmnop"
SECRET = "sk-upstream-alice"  # the fake config's first account's key: a secret agproxy holds
HI = [{"role": "user", "content": "hi"}]
BASH = [{"type": "function", "function": {"name": "Bash", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}}}}]


def team(fake: Any) -> Dict[str, Any]:
    return fake_config(fake, auth_mode="strict", admin_api_key="sk-admin-0123456789abcdef", clients=[
        {"name": "alice", "api_key": KEY, "models": ["claude-*"]}])


def answer(block: Dict[str, Any], kind: str, field: str, pieces: List[str], spaced: bool, ascii_only: bool,
           spelt: Tuple[bytes, bytes] = (b"", b"")) -> Raw:
    """An upstream's whole streamed answer, written at once: one block whose deltas are ``pieces``
    (a run), with ``spelt``'s first bytes written as its second (a JSON escape) where asked."""
    def data(payload: Dict[str, Any]) -> str:
        return json.dumps(payload, separators=(", ", ": ") if spaced else (",", ":"), ensure_ascii=ascii_only)
    events = [("message_start", {"type": "message_start", "message": {
        "id": "msg_up1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": kind, field: p}})
               for p in pieces]
    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                  "usage": {"output_tokens": 9}}), ("message_stop", {"type": "message_stop"})]
    body = b"".join(f"event: {name}\ndata: {data(payload)}\n\n".encode() for name, payload in events)
    if spelt[0]:
        assert spelt[0] in body
        body = body.replace(spelt[0], spelt[1])
    return Raw(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n"
               b"connection: close\r\n\r\n" % len(body) + body)


def texts(proxy: Any, fake: Any, reply: Raw) -> Dict[str, str]:
    """The text each client gets of ``reply``, streamed (and whole, for Messages and Chat)."""
    got: Dict[str, str] = {}
    messages = anthropic.Anthropic(base_url=proxy.url, api_key=KEY, max_retries=0).messages
    chat = openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0)
    gemini = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=proxy.url))
    fake.script(reply)
    with messages.stream(model="claude-x", max_tokens=10, messages=HI) as stream:
        got["messages"] = "".join(stream.text_stream)
    fake.script(reply)
    got["messages whole"] = messages.create(model="claude-x", max_tokens=10, messages=HI).content[0].text
    fake.script(reply)
    got["chat"] = "".join(c.choices[0].delta.content or "" for c in chat.chat.completions.create(
        model="claude-x", stream=True, messages=HI) if c.choices)
    fake.script(reply)
    got["chat whole"] = chat.chat.completions.create(model="claude-x", messages=HI).choices[0].message.content
    fake.script(reply)
    got["responses"] = got["responses done"] = ""
    for event in chat.responses.create(model="claude-x", input="hi", stream=True):
        if event.type == "response.output_text.delta":
            got["responses"] += event.delta
        elif event.type == "response.completed":
            got["responses done"] = event.response.output_text
    fake.script(reply)
    got["gemini"] = "".join(c.text or "" for c in gemini.models.generate_content_stream(model="claude-x",
                                                                                        contents="hi"))
    return got


def test_strings_that_need_escapes_reach_every_client_as_sent(start_agproxy, fake):
    proxy = start_agproxy(team(fake))
    pieces = ['a"b\\c', "\u2028x\u2029", "\x00\x01\x1f", "\U0001F600", "</script>", "é", "\\u0041", "\x7f", "y"]
    for spaced in (False, True):
        for ascii_only in (False, True):
            reply = answer({"type": "text", "text": ""}, "text_delta", "text", pieces, spaced, ascii_only)
            got = texts(proxy, fake, reply)
            assert got == dict.fromkeys(got, "".join(pieces)), (spaced, ascii_only)


def test_a_key_spread_over_a_run_or_spelt_with_an_escape_reaches_no_client(start_agproxy, fake):
    proxy = start_agproxy(team(fake))
    cases = [([f"key: {SECRET[:3]}", SECRET[3:9], SECRET[9:] + " end"], (b"", b"")),
             ([f"key: {SECRET} end"], (b"sk-up", b"\\u0073k-up")),
             (["key: s", "k-upstream-alice end"], (b'"key: s"', b'"key: \\u0073"')),
             (["key: sk-ups", "tream-alice end"], (b'"tream', b'"\\u0074ream'))]
    for pieces, spelt in cases:
        for spaced in (False, True):
            got = texts(proxy, fake, answer({"type": "text", "text": ""}, "text_delta", "text", pieces, spaced, True,
                                            spelt))
            assert all(SECRET not in text and "tream-alice" not in text and text.startswith("key: ")
                       for text in got.values()), (pieces, spelt, got)


def test_a_key_in_a_tool_input_spread_over_a_run_reaches_no_client(start_agproxy, fake):
    proxy = start_agproxy(team(fake))
    tool = {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}
    for pieces in (['{"command": "echo \\u0073', "k-upstream-alice", ' x"}'],
                   ['{"command": "echo \\', 'u0073k-upstream-alice x"}'],
                   ['{"command": "echo s', "k-ups", 'tream-alice x"}']):
        reply = answer(tool, "input_json_delta", "partial_json", pieces, True, True)
        fake.script(reply)
        with anthropic.Anthropic(base_url=proxy.url, api_key=KEY, max_retries=0).messages.stream(
                model="claude-x", max_tokens=10, messages=HI) as stream:
            commands = [stream.get_final_message().content[0].input["command"]]
        fake.script(reply)
        arguments = ""
        for chunk in openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0).chat.completions.create(
                model="claude-x", stream=True, tools=BASH, messages=HI):
            if chunk.choices and chunk.choices[0].delta.tool_calls:
                arguments += chunk.choices[0].delta.tool_calls[0].function.arguments or ""
        commands.append(json.loads(arguments)["command"])
        fake.script(reply)
        gemini = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=proxy.url))
        commands += [part.function_call.args["command"]
                     for chunk in gemini.models.generate_content_stream(model="claude-x", contents="hi")
                     for part in chunk.candidates[0].content.parts or [] if part.function_call]
        assert len(commands) == 3 and all(SECRET not in c and "tream-alice" not in c and c.startswith("echo ")
                                          for c in commands), (pieces, commands)
