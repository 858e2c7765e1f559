"""Chat Completions in (issue 21): the openai SDK, a Chat Completions client, through agproxy's
``/v1/chat/completions`` to upstreams of every kind, over real sockets; the same client keys,
limits, record and ledger as ``/v1/messages``; errors in OpenAI's shape, as the SDK raises them."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List

import openai
import pytest

from tests.conftest import fake_config
from tests.fakes.anthropic_upstream import Json, Sse, message, text_stream, tool_and_thinking_stream
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.openai_upstream import Chat, FakeOpenAI, completion

ALICE = "agp-alice-0123456789abcdefghijklmnop"
ADMIN = "sk-admin-0123456789abcdef"
SHELL = {"type": "function", "function": {"name": "Bash", "description": "Run a shell command.", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}


def team(fake: Any, **top: Any) -> Dict[str, Any]:
    return fake_config(fake, auth_mode="strict", admin_api_key=ADMIN, log_format="json", clients=[
        {"name": "alice", "api_key": ALICE, "models": ["claude-*", "qwen*", "gemini-*"]}], **top)


def client(proxy: Any, key: str = ALICE) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, timeout=20)


def test_a_conversation_json_and_streamed_to_an_anthropic_upstream(start_agproxy, fake):
    proxy = start_agproxy(team(fake))
    fake.script(Json(200, message("Hello from the fake upstream.")), Sse(text_stream()))
    answer = client(proxy).chat.completions.create(
        model="claude-sonnet-4-5", messages=[{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "hi"}])
    assert answer.object == "chat.completion" and answer.model == "claude-sonnet-4-5"
    assert answer.choices[0].message.content == "Hello from the fake upstream."
    assert answer.choices[0].finish_reason == "stop" and answer.usage.prompt_tokens == 12
    sent = fake.requests[-1].json
    assert sent["system"] == "Be brief." or sent["system"][0]["text"] == "Be brief."
    assert sent["messages"] == [{"role": "user", "content": "hi"}] or sent["messages"][0]["role"] == "user"
    chunks = list(client(proxy).chat.completions.create(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake upstream."
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


def test_a_streamed_tool_loop(start_agproxy, fake):
    proxy = start_agproxy(team(fake))
    fake.script(Sse(tool_and_thinking_stream()), Sse(text_stream("Two files.")))
    stream = client(proxy).chat.completions.create(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "list the files"}], tools=[SHELL],
        stream=True)
    calls: Dict[int, Dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.id or ""
            entry["name"] += (call.function.name or "") if call.function else ""
            entry["arguments"] += (call.function.arguments or "") if call.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and list(calls.values()) == [
        {"id": "toolu_fake_1", "name": "Bash", "arguments": '{"command": "ls -la"}'}]
    assert fake.requests[-1].json["tools"][0]["name"] == "Bash"
    history: List[Dict[str, Any]] = [
        {"role": "user", "content": "list the files"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_fake_1", "type": "function", "function": {"name": "Bash",
                                                                    "arguments": '{"command": "ls -la"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_fake_1", "content": "a.txt\nb.txt"}]
    answer = client(proxy).chat.completions.create(model="claude-sonnet-4-5", messages=history, tools=[SHELL])
    assert answer.choices[0].message.content == "Two files."
    sent = fake.requests[-1].json["messages"]
    assert sent[1]["content"][-1]["type"] == "tool_use" and sent[2]["content"][0]["type"] == "tool_result"
    assert sent[2]["content"][0]["tool_use_id"] == "toolu_fake_1"


def test_to_openai_and_gemini_upstreams(start_agproxy, fake):
    with FakeOpenAI() as openai_fake, FakeGemini() as gemini_fake:
        config = team(fake)
        config["upstreams"] += [
            {"name": "local", "kind": "openai", "base_url": openai_fake.url, "accounts": [{"api_key": "k"}]},
            {"name": "gem", "kind": "gemini", "base_url": gemini_fake.url, "accounts": [{"api_key": "gemini-key"}]}]
        config["model_map"] = [{"match": "gemini-*", "upstream": "gem"}, {"match": "qwen*", "upstream": "local"},
                               {"match": "*", "upstream": "fake"}]
        proxy = start_agproxy(config)
        for model in ("qwen3", "gemini-2.5-flash"):
            answer = client(proxy).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content and answer.model == model
            streamed = "".join(c.choices[0].delta.content or "" for c in client(proxy).chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices)
            assert streamed == answer.choices[0].message.content
        schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
        structured = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        openai_fake.script(Chat(200, completion('{"a": "x"}')))
        answer = client(proxy).chat.completions.create(model="qwen3", messages=[{"role": "user", "content": "hi"}],
                                                       response_format=structured)
        assert json.loads(answer.choices[0].message.content) == {"a": "x"}
        assert openai_fake.chats[-1]["response_format"]["json_schema"]["schema"] == schema
        with pytest.raises(openai.APIStatusError) as prose:  # a model that cannot: said at once, not retried
            client(proxy).chat.completions.create(model="qwen3", messages=[{"role": "user", "content": "hi"}],
                                                  response_format=structured)
        assert prose.value.status_code == 424 and "not JSON" in prose.value.message
        # the upstream answered: its attempt counts (the check after it is no retry's)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and " 424 " not in proxy.log():
            time.sleep(0.05)
        refused = [line for line in proxy.log().splitlines() if " 424 " in line and "/v1/chat/completions" in line]
        assert refused and "tries=1" in refused[-1] and "local/" in refused[-1]


def test_errors_come_in_openais_shape_as_the_sdk_raises_them(start_agproxy, fake):
    config = team(fake)
    config["clients"][0]["requests_per_minute"] = 2
    proxy = start_agproxy(config)
    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError) as refused:
        client(proxy, "agp-nobody-0123456789abcdefghij").chat.completions.create(model="claude-sonnet-4-5",
                                                                                 messages=hi)
    assert refused.value.body["type"] == "authentication_error" or refused.value.code == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as bad:
        client(proxy).chat.completions.create(model="claude-sonnet-4-5", messages=hi, n=2)
    assert bad.value.param == "n"
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client(proxy).chat.completions.create(model="gpt-5", messages=hi)
    assert "may not use model 'gpt-5'" in denied.value.message
    assert client(proxy).chat.completions.create(model="claude-sonnet-4-5", messages=hi).choices
    assert client(proxy).chat.completions.create(model="claude-sonnet-4-5", messages=hi).choices
    with pytest.raises(openai.RateLimitError) as limited:
        client(proxy).chat.completions.create(model="claude-sonnet-4-5", messages=hi)
    assert "requests_per_minute" in limited.value.message and limited.value.response.headers["retry-after"]
    request = urllib.request.Request(proxy.url + "/v1/agproxy/usage?group_by=client", headers={
        "Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        rows = {row["client"]: row for row in json.loads(response.read())["rows"]}
    assert rows["alice"]["requests"] == 5 and rows["alice"]["errors"] == 3 and rows["alice"]["input_tokens"] == 24
    access = [json.loads(line) for line in proxy.log().splitlines() if '"event": "access"' in line]
    chats = [line for line in access if line["path"] == "/v1/chat/completions"]
    assert len(chats) == 6 and [line.get("client") for line in chats].count("alice") == 5
    assert {line["model"] for line in chats if line["status"] == 200} == {"claude-sonnet-4-5"}


def test_an_upstream_that_breaks_mid_stream_ends_the_stream_with_an_error_the_sdk_raises(start_agproxy, fake):
    proxy = start_agproxy(team(fake))
    broken = text_stream()[:4]  # message_start, block start, ping, one delta: then the body ends
    fake.script(Sse(broken), Sse(broken), Sse(broken), Sse(broken))
    stream = client(proxy).chat.completions.create(model="claude-sonnet-4-5",
                                                   messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.APIError) as broke:
        for _ in stream:
            pass
    assert "upstream 'fake'" in str(broke.value)


def test_the_model_list_offers_an_upstreams_model_only_where_model_map_sends_it_there(start_agproxy, fake):
    with FakeOpenAI() as openai_fake:  # it lists qwen-local and llama-local
        config = team(fake)
        config["upstreams"].append({"name": "local", "kind": "openai", "base_url": openai_fake.url,
                                    "accounts": [{"api_key": "k"}]})
        config["model_map"] = [{"match": "qwen*", "upstream": "local"}, {"match": "*", "upstream": "fake"}]
        config["clients"][0]["models"] = ["*"]
        proxy = start_agproxy(config)
        listed = {m.id for m in client(proxy).models.list()}
        assert "qwen-local" in listed and "llama-local" not in listed  # the catch-all sends llama-local to fake


def test_each_agent_is_told_its_own_way_to_pick_a_model_and_send_its_key(start_agproxy, fake):
    proxy = start_agproxy(team(fake))
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client(proxy).chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    assert "the request's model" in denied.value.message and "ANTHROPIC_MODEL" not in denied.value.message
    request = urllib.request.Request(proxy.url + "/v1beta/models/gemini-2.5-flash:generateContent",
                                     b'{"contents": []}', {"Content-Type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    words = json.loads(refused.value.read())["error"]["message"]
    assert refused.value.code == 401 and "x-goog-api-key" in words and "GEMINI_API_KEY" in words
