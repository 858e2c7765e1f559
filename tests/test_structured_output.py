"""Structured output (issue 21): a request's schema, in the internal form's ``output_config.format``
(where the client dialects put Chat's ``response_format``, Responses' ``text.format`` and Gemini's
``responseJsonSchema``), reaches each upstream kind in its own terms: an ``anthropic`` upstream gets
it as it is, an ``openai`` one as ``response_format``, a ``gemini`` one as ``responseMimeType`` and
``responseJsonSchema``. Pure translators first, then over real sockets to the fakes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Dict, List

import openai
from hypothesis import given
from hypothesis import strategies as st

import agproxy
from tests.conftest import fake_config
from tests.fakes.anthropic_upstream import Json, Sse, message, text_stream
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.openai_upstream import FakeOpenAI

SCHEMA = {"type": "object", "properties": {"model": {"type": "string"}}, "required": ["model"],
          "additionalProperties": False}


def asked(schema: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    return dict({"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "route me"}],
                 "output_config": {"format": {"type": "json_schema", "schema": schema}}}, **extra)


def test_the_schema_is_read_from_output_config_or_the_betas_output_format():
    assert agproxy.output_schema(asked(SCHEMA)) == SCHEMA
    beta = {"model": "m", "output_format": {"type": "json_schema", "schema": SCHEMA}}
    assert agproxy.output_schema(beta) == SCHEMA
    assert agproxy.output_schema({"output_config": {"effort": "high"}}) is None
    assert agproxy.output_schema({"output_config": {"format": {"type": "json_schema", "schema": "x"}}}) is None


def test_an_openai_upstream_gets_response_format():
    out, _ = agproxy.anthropic_to_openai(asked(SCHEMA), agproxy.OpenAIOptions(), "local")
    assert out["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}
    out, _ = agproxy.anthropic_to_openai(asked(agproxy.ANY_JSON_OBJECT), agproxy.OpenAIOptions(), "local")
    assert out["response_format"] == {"type": "json_object"}
    out, _ = agproxy.anthropic_to_openai(dict(asked(SCHEMA), output_config={}), agproxy.OpenAIOptions(), "local")
    assert "response_format" not in out


def test_a_gemini_upstream_gets_the_mime_type_and_the_json_schema():
    out, _ = agproxy.anthropic_to_gemini(asked(SCHEMA), "gemini-3-flash", lambda s: True, lambda i: None)
    assert out["generationConfig"]["responseMimeType"] == "application/json"
    assert out["generationConfig"]["responseJsonSchema"] == SCHEMA
    out, _ = agproxy.anthropic_to_gemini(asked(agproxy.ANY_JSON_OBJECT), "gemini-3-flash", lambda s: True,
                                         lambda i: None)
    assert out["generationConfig"] == {"maxOutputTokens": 64, "responseMimeType": "application/json"}


def post(proxy: Any, body: Dict[str, Any], path: str = "/v1/messages") -> Dict[str, Any]:
    request = urllib.request.Request(proxy.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "anthropic-version": "2023-06-01"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{exc.code}: {exc.read()!r}") from None


def test_over_sockets_each_upstream_kind_receives_the_schema(start_agproxy, tmp_path):
    with FakeOpenAI() as openai_fake, FakeGemini() as gemini_fake:
        config = {"upstreams": [
            {"name": "local", "kind": "openai", "base_url": openai_fake.url, "accounts": [{"api_key": "k"}]},
            {"name": "gem", "kind": "gemini", "base_url": gemini_fake.url, "accounts": [{"api_key": "gemini-key"}]}],
            "model_map": [{"match": "gemini-*", "upstream": "gem"}, {"match": "*", "upstream": "local"}]}
        proxy = start_agproxy(config)
        assert post(proxy, asked(SCHEMA, model="qwen3"))["type"] == "message"
        assert openai_fake.chats[-1]["response_format"]["json_schema"]["schema"] == SCHEMA
        assert post(proxy, asked(SCHEMA, model="gemini-2.5-flash"))["type"] == "message"
        generation = gemini_fake.generations[-1]["generationConfig"]
        assert generation["responseJsonSchema"] == SCHEMA and generation["responseMimeType"] == "application/json"


def test_a_dialects_request_is_marked_for_the_prompt_cache_unless_it_holds_marks():
    body = {"model": "m", "system": "rules", "tools": [{"name": "a", "input_schema": {}}, {"name": "b",
                                                                                         "input_schema": {}}],
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "t", "signature": "s"}]}]}
    agproxy.mark_cache_breakpoints(body)
    assert body["system"] == [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}]
    assert "cache_control" not in body["tools"][0] and body["tools"][1]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in body["messages"][-1]["content"][-1]  # a thinking block takes no mark
    marked = {"model": "m", "system": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}],
              "messages": [{"role": "user", "content": "hi"}]}
    agproxy.mark_cache_breakpoints(marked)
    assert marked["messages"][0]["content"] == "hi"


def test_fenced_json_is_unfenced_and_json_or_prose_is_left_as_it_is():
    def answer(*blocks: Dict[str, Any]) -> Dict[str, Any]:
        return {"role": "assistant", "content": list(blocks), "stop_reason": "end_turn"}

    thinking = {"type": "thinking", "thinking": "t", "signature": "s"}
    fenced = answer(thinking, {"type": "text", "text": "```json\n{\"a\": "}, {"type": "text", "text": "1}\n```\n"})
    assert agproxy.check_structured(fenced, "up") == answer(thinking, {"type": "text", "text": "{\"a\": 1}"})
    assert fenced["content"][1]["text"] == "```json\n{\"a\": "  # the upstream's answer itself is not changed
    plain = answer({"type": "text", "text": " {\"a\": 1} "})
    assert agproxy.check_structured(plain, "up") is plain
    bare_fence = answer({"type": "text", "text": "```\n[1, 2]\n```"})
    assert agproxy.check_structured(bare_fence, "up")["content"] == [{"type": "text", "text": "[1, 2]"}]
    try:
        agproxy.check_structured(answer({"type": "text", "text": "```json\nnot json\n```"}), "up")
    except agproxy.NotStructured as exc:
        assert exc.status == 424
    else:
        raise AssertionError("fenced prose passed as JSON")


def test_over_sockets_each_dialect_gets_the_json_inside_a_fence(start_agproxy, fake):
    # the 424 check took fenced JSON as JSON, and the client got it still fenced
    proxy = start_agproxy(fake_config(fake))
    fake.script(*[Json(200, message("```json\n{\"model\": \"flash\"}\n```"))] * 3)
    question = [{"role": "user", "content": "q"}]
    chat = post(proxy, {"model": "claude-x", "messages": question, "response_format": {
        "type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}}, "/v1/chat/completions")
    assert chat["choices"][0]["message"]["content"] == '{"model": "flash"}'
    responses = post(proxy, {"model": "claude-x", "input": "q", "text": {
        "format": {"type": "json_schema", "name": "s", "schema": SCHEMA}}}, "/v1/responses")
    assert responses["output"][0]["content"][0]["text"] == '{"model": "flash"}'
    gemini = post(proxy, {"contents": [{"role": "user", "parts": [{"text": "q"}]}], "generationConfig": {
        "responseMimeType": "application/json", "responseJsonSchema": SCHEMA}},
                  "/v1beta/models/claude-x:generateContent")
    assert gemini["candidates"][0]["content"]["parts"][0]["text"] == '{"model": "flash"}'
    assert [r.json["output_config"]["format"]["schema"] for r in fake.requests] == [SCHEMA] * 3


def unfenced_text(pieces: List[str]) -> str:
    """The text a client's encoder is given of a text block streamed in ``pieces``."""
    encoder = agproxy.UnfencedStream(agproxy.StreamEncoder())
    events = [agproxy.Event("content_block_start", {"type": "content_block_start", "index": 0,
                                                    "content_block": {"type": "text", "text": ""}})]
    events += [agproxy.Event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                     "delta": {"type": "text_delta", "text": p}}) for p in pieces]
    events.append(agproxy.Event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    out = b"".join(encoder.encode([event]) for event in events)
    return "".join(json.loads(e.data)["delta"]["text"] for e in agproxy.SSEDecoder().feed(out)
                   if e.event == "content_block_delta")


def splits(text: str) -> Any:
    return st.lists(st.integers(0, len(text)), max_size=6).map(
        lambda cuts: [text[a:b] for a, b in zip([0] + sorted(cuts), sorted(cuts) + [len(text)])])


FENCED = "\n```json\n{\"model\": \"a`b\"}\n```\n"
PLAIN = ["{\"model\": \"flash\"}  \n", "```python\nprint(1)\n```", "``", "Sure: ```json\n{}\n```", "", "`{}`"]


@given(st.data())
def test_a_streamed_fence_is_taken_off_however_the_text_is_split(data: Any) -> None:
    assert unfenced_text(data.draw(splits(FENCED))) == "{\"model\": \"a`b\"}"
    plain = data.draw(st.sampled_from(PLAIN))
    assert unfenced_text(data.draw(splits(plain))) == plain  # anything else passes as it is


def test_over_sockets_a_streamed_fence_is_taken_off(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    fake.script(*[Sse(text_stream("```json\n{\"model\": \"flash\"}\n```"))] * 2)  # a word a delta
    chat = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0, timeout=10)
    chunks = chat.chat.completions.create(model="claude-x", messages=[{"role": "user", "content": "q"}], stream=True,
                                          response_format={"type": "json_object"})
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == '{"model": "flash"}'
    with chat.responses.stream(model="claude-x", input="q", text={"format": {
            "type": "json_schema", "name": "s", "schema": SCHEMA}}) as stream:
        final = stream.get_final_response()
    assert final.output_text == '{"model": "flash"}'
