"""Structured output (issue 21): a request's schema, in the internal form's ``output_config.format``
(where the client dialects put Chat's ``response_format``, Responses' ``text.format`` and Gemini's
``responseJsonSchema``), reaches each upstream kind in its own terms: an ``anthropic`` upstream gets
it as it is, an ``openai`` one as ``response_format``, a ``gemini`` one as ``responseMimeType`` and
``responseJsonSchema``. Pure translators first, then over real sockets to the fakes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Dict

import agproxy
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


def post(proxy: Any, body: Dict[str, Any]) -> Dict[str, Any]:
    request = urllib.request.Request(proxy.url + "/v1/messages", data=json.dumps(body).encode(), method="POST",
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
