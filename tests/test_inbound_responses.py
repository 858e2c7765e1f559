"""Responses in (issue 21): the openai SDK's ``responses`` client through agproxy's
``/v1/responses`` over real sockets (Codex CLI's own runs are in test_codex_cli.py): a streamed
and a whole answer, function calls, errors as the SDK raises them, and no kept responses."""

from __future__ import annotations

from typing import Any, Dict

import openai
import pytest

from tests.conftest import fake_config
from tests.fakes.anthropic_upstream import Json, Sse, message, text_stream, tool_and_thinking_stream

KEY = "agp-responses-0123456789abcdefghijk"


def team(fake: Any) -> Dict[str, Any]:
    return fake_config(fake, auth_mode="strict", admin_api_key="sk-admin-0123456789abcdef",
                       clients=[{"name": "rita", "api_key": KEY, "models": ["claude-*"]}])


def client(proxy: Any, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, timeout=20)


SHELL = {"type": "function", "name": "Bash", "description": "Run a shell command.", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}


def test_a_whole_and_a_streamed_answer(start_agproxy, fake):
    proxy = start_agproxy(team(fake))
    fake.script(Json(200, message("Hello from the fake upstream.")), Sse(text_stream()))
    answer = client(proxy).responses.create(model="claude-sonnet-4-5", instructions="Be brief.", input="hi",
                                            store=False)
    assert answer.output_text == "Hello from the fake upstream." and answer.status == "completed"
    assert answer.usage.input_tokens == 12 and answer.model == "claude-sonnet-4-5"
    sent = fake.requests[-1].json
    assert "Be brief." in sent["system"][0]["text"]
    # the prompt is marked for Anthropic's cache, as a Responses client cannot mark it itself
    assert sent["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert sent["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    events = list(client(proxy).responses.create(model="claude-sonnet-4-5", input="hi", stream=True, store=False))
    numbers = [event.sequence_number for event in events]
    assert numbers == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        "Hello from the fake upstream."
    assert events[-1].response.output_text == "Hello from the fake upstream."


def test_a_function_call_and_its_output_go_round(start_agproxy, fake):
    proxy = start_agproxy(team(fake))
    fake.script(Sse(tool_and_thinking_stream()), Sse(text_stream("Two files.")))
    with client(proxy).responses.stream(model="claude-sonnet-4-5", input="list the files", tools=[SHELL],
                                        reasoning={"effort": "medium"}) as stream:
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, c.arguments) for c in calls] == [("Bash", '{"command": "ls -la"}')]
    reasoning = [item for item in final.output if item.type == "reasoning"]
    assert reasoning and reasoning[0].encrypted_content  # the thinking block, for Codex to send back
    history = [{"role": "user", "content": "list the files"}] + [item.model_dump(exclude_none=True)
                                                                 for item in final.output]
    history.append({"type": "function_call_output", "call_id": calls[0].call_id, "output": "a.txt\nb.txt"})
    answer = client(proxy).responses.create(model="claude-sonnet-4-5", input=history, tools=[SHELL],
                                            reasoning={"effort": "medium"})
    assert answer.output_text == "Two files."
    sent = fake.requests[-1].json["messages"]
    assistant = sent[1]["content"]
    assert [b["type"] for b in assistant] == ["thinking", "text", "tool_use"]
    assert assistant[0]["signature"] == "c2lnbmF0dXJlLWZha2U="  # given back to the upstream that made it
    assert sent[2]["content"][0]["type"] == "tool_result"


def test_errors_and_no_kept_responses(start_agproxy, fake):
    proxy = start_agproxy(team(fake))
    with pytest.raises(openai.BadRequestError) as refused:
        client(proxy).responses.create(model="claude-sonnet-4-5", input="hi", previous_response_id="resp_1")
    assert "previous_response_id" in refused.value.message
    # 400 so that Codex CLI stops at once (it retries any other 4xx but 429): the code says which
    with pytest.raises(openai.BadRequestError) as forbidden:
        client(proxy).responses.create(model="gpt-5", input="hi")
    assert forbidden.value.code == "permission_denied" and "gpt-5" in forbidden.value.message
    with pytest.raises(openai.BadRequestError) as stranger:
        client(proxy, "agp-wrong-0123456789abcdefghijkl").responses.create(model="claude-sonnet-4-5", input="hi")
    assert stranger.value.code == "invalid_api_key"
    assert not [r for r in fake.requests if r.target.startswith("/v1/messages")]


def test_a_spent_day_budget_says_insufficient_quota_so_codex_stops_at_once(start_agproxy, fake):
    """Found by the attack on issue 21: Codex CLI sleeps any other 429's retry-after (hours to
    00:00 UTC) and ignores x-should-retry; on insufficient_quota it stops at once."""
    config = team(fake)
    config["clients"][0]["tokens_per_day"] = 10
    proxy = start_agproxy(config)
    client(proxy).responses.create(model="claude-sonnet-4-5", input="hi")
    with pytest.raises(openai.RateLimitError) as spent:
        client(proxy).responses.create(model="claude-sonnet-4-5", input="hi")
    assert spent.value.code == "insufficient_quota" and "tokens_per_day" in spent.value.message
