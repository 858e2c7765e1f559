"""The OpenAI Responses client dialect (issue 21) on its own, no sockets: a Responses request as the
internal Anthropic request (hypothesis: any JSON is a clean 400 or a valid body), the Anthropic events
as the Responses event stream (hypothesis: any split of the events gives the same bytes; the openai
SDK's own stream parser is the judge of the shape), a Message as a response object, errors in
OpenAI's shape. The request fixtures are written by hand after what Codex CLI 0.171.0 sent to a
logging server (its shapes, not its words)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import httpx2
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agproxy
from agproxy import (
    Event,
    InvalidRequest,
    MessageAccumulator,
    ResponsesStreamEncoder,
    anthropic_message_to_responses,
    responses_error_body,
    responses_error_status,
    responses_reasoning_block,
    responses_reasoning_content,
    responses_request_to_anthropic,
    validate_messages_request,
)

SEP = agproxy.RESPONSES_NAMESPACE_SEPARATOR
GRAMMAR = 'start: "*** Begin Patch" LF body "*** End Patch"\n%import common.LF\n'

#: The tools of a Codex turn, by kind: a function, a namespace of functions, a freeform tool with a
#: Lark grammar, and hosted tools (web_search, tool_search) that no upstream of agproxy runs.
CODEX_TOOLS = [
    {"type": "function", "name": "exec_command", "description": "Run a command.", "strict": False,
     "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"],
                    "additionalProperties": False}},
    {"type": "namespace", "name": "agents", "description": "Sub-agents.", "tools": [
        {"type": "function", "name": "spawn", "description": "Start one.", "strict": False,
         "parameters": {"type": "object", "properties": {"task": {"type": "string"}}}},
        {"type": "function", "name": "wait", "strict": False,
         "parameters": {"type": "object", "properties": {"targets": {"type": "array", "items": {"type": "string"}}}}}]},
    {"type": "custom", "name": "apply_patch", "description": "Edit files. A FREEFORM tool.",
     "format": {"type": "grammar", "syntax": "lark", "definition": GRAMMAR}},
    {"type": "tool_search", "execution": "client", "description": "Find tools.",
     "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}},
    {"type": "web_search", "external_web_access": True},
]


def codex_request(input_items: List[Any], **extra: Any) -> Dict[str, Any]:
    """A request shaped as Codex sends one (fields as observed; the texts are ours)."""
    body = {"model": "gpt-5.5", "instructions": "", "input": input_items, "tools": CODEX_TOOLS,
            "tool_choice": "auto", "parallel_tool_calls": True, "reasoning": {"effort": "high", "summary": "auto"},
            "store": False, "stream": True, "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": "0b6c8c7e-0000-4000-8000-000000000000", "text": {"verbosity": "low"},
            "client_metadata": {"session_id": "s", "turn_id": "t"}}
    body.update(extra)
    return body


def message(role: str, *texts: str) -> Dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "id": f"msg_{role}", "role": role, "content": [{"type": kind, "text": t} for t in texts]}


FIRST_TURN = [message("developer", "You are a coding agent."), message("developer", "Skills: none."),
              message("user", "<environment_context>cwd</environment_context>"), message("user", "list the files")]


# -- requests ----------------------------------------------------------------------------------------

def test_a_codex_turn_becomes_one_system_prompt_one_user_turn_and_the_tools_it_can_carry() -> None:
    changes: Dict[str, int] = {}
    out = responses_request_to_anthropic(codex_request(FIRST_TURN), changes)
    validate_messages_request(out)
    assert out["system"] == "You are a coding agent.\n\nSkills: none."
    assert out["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "<environment_context>cwd</environment_context>"},
        {"type": "text", "text": "list the files"}]}]
    assert out["stream"] is True and out["model"] == "gpt-5.5"
    assert out["max_tokens"] == agproxy.RESPONSES_DEFAULT_MAX_TOKENS
    assert out["thinking"] == {"type": "enabled", "budget_tokens": agproxy.RESPONSES_EFFORT_BUDGETS["high"]}
    assert out["tool_choice"] == {"type": "auto"}
    names = [t["name"] for t in out["tools"]]
    assert names == ["exec_command", f"agents{SEP}spawn", f"agents{SEP}wait", "apply_patch"]
    exec_tool, spawn, _, patch = out["tools"]
    assert exec_tool["input_schema"] == CODEX_TOOLS[0]["parameters"] and exec_tool["description"] == "Run a command."
    assert "Sub-agents." in spawn["description"] and "Start one." in spawn["description"]
    assert patch["input_schema"] == {"type": "object", "properties": {"input": {"type": "string"}},
                                     "required": ["input"]}
    assert GRAMMAR in patch["description"] and "'input'" in patch["description"]
    assert changes == {"responses_hosted_tool_dropped": 2}
    # what agproxy takes and ignores goes nowhere
    for key in ("store", "include", "prompt_cache_key", "client_metadata", "text", "parallel_tool_calls"):
        assert key not in out


def thinking_item(thinking: str, signature: str) -> Dict[str, Any]:
    block = {"type": "thinking", "thinking": thinking, "signature": signature}
    return {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": thinking}],
            "content": None, "encrypted_content": responses_reasoning_content(block)}


def test_a_history_comes_back_as_alternating_turns_with_its_thinking_calls_and_results() -> None:
    history = FIRST_TURN + [
        thinking_item("I should look.", "sig-1"),
        {"type": "function_call", "id": "fc_1", "status": "completed", "name": "exec_command",
         "arguments": "{\"cmd\": \"ls\"}", "call_id": "call_1"},
        {"type": "function_call_output", "id": "fco_1", "call_id": "call_1", "output": "a.txt\n"},
        {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAAB-openai-made-this"},
        {"type": "function_call", "name": "wait", "namespace": "agents", "arguments": "{\"targets\":[\"1\"]}",
         "call_id": "call_2"},
        {"type": "custom_tool_call", "name": "apply_patch", "input": "*** Begin Patch\n*** End Patch\n",
         "call_id": "call_3"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "done"}]},
        {"type": "custom_tool_call_output", "call_id": "call_3", "output": ""},
        message("assistant", "Here they are."),
        message("user", "thanks"),
    ]
    changes: Dict[str, int] = {}
    out = responses_request_to_anthropic(codex_request(history), changes)
    validate_messages_request(out)
    assert [m["role"] for m in out["messages"]] == ["user", "assistant"] * 3 + ["user"]
    assert out["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "I should look.", "signature": "sig-1"},
        {"type": "tool_use", "id": "call_1", "name": "exec_command", "input": {"cmd": "ls"}}]
    assert out["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "a.txt\n"}]
    assert out["messages"][3]["content"] == [
        {"type": "tool_use", "id": "call_2", "name": f"agents{SEP}wait", "input": {"targets": ["1"]}},
        {"type": "tool_use", "id": "call_3", "name": "apply_patch",
         "input": {"input": "*** Begin Patch\n*** End Patch\n"}}]
    assert out["messages"][4]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "done"}]},
        {"type": "tool_result", "tool_use_id": "call_3"}]
    assert out["messages"][5]["content"] == [{"type": "text", "text": "Here they are."}]
    assert changes["responses_foreign_reasoning_dropped"] == 1


def test_a_string_input_images_files_and_every_role() -> None:
    out = responses_request_to_anthropic({"model": "m", "input": "hello", "instructions": "Be brief."})
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    assert out["system"] == "Be brief." and out["stream"] is False
    items = [{"role": "system", "content": "sys"},  # an easy message: no type, a string content
             {"role": "user", "content": [
                 {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"},
                 {"type": "input_image", "image_url": "https://example.com/a.png"},
                 {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
                 {"type": "input_file", "file_url": "https://example.com/b.pdf"}]},
             {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
             {"role": "user", "content": ""}]
    out = responses_request_to_anthropic({"model": "m", "input": items})
    assert out["system"] == "sys"
    assert out["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
        {"type": "document", "title": "a.pdf",
         "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
        {"type": "document", "source": {"type": "url", "url": "https://example.com/b.pdf"}}]
    assert out["messages"][1:] == [{"role": "assistant", "content": [{"type": "text", "text": "no"}]}]


@pytest.mark.parametrize("body, field", [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"background": True}, "background"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
     "input.0.content.0.file_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]},
     "input.0.content.0.file_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x/y.png"}]}]},
     "input.0.content.0.image_url.url"),
    ({"input": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "input.0.content.0.type"),
    ({"input": [{"role": "developer", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
     "input.0.content"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input.0.call_id"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role"),
    ({"input": []}, "input"),
    ({"input": [message("developer", "only a system prompt")]}, "input"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": agproxy.MAX_OUTPUT_TOKENS + 1}, "max_output_tokens"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"text": {"format": {"type": "json_schema"}}}, "text.format.schema"),
    ({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}},
     "tool_choice.name"),
    ({"tools": [{"type": "function", "name": f"a{SEP}b"}, {"type": "namespace", "name": "a",
                                                          "tools": [{"type": "function", "name": "b"}]}]},
     "tools.1.tools.0.name"),
    ({"tool_choice": {"type": "web_search"}, "tools": [{"type": "function", "name": "f"}]}, "tool_choice"),
    ({"stream": "yes"}, "stream"),
])
def test_what_cannot_be_carried_is_a_400_naming_the_field(body: Dict[str, Any], field: str) -> None:
    request = {"model": "m", "input": "hi", **body}
    with pytest.raises(InvalidRequest) as caught:
        responses_request_to_anthropic(request)
    assert caught.value.status == 400
    assert caught.value.message.startswith(f"{field}: "), caught.value.message
    assert responses_error_body(400, "invalid_request_error", caught.value.message)["error"]["param"] == field


def test_settings_tool_choice_and_structured_output() -> None:
    tools = [{"type": "function", "name": "f"}, {"type": "custom", "name": "c"},
             {"type": "namespace", "name": "n", "tools": [{"type": "function", "name": "g"}]}]
    base = {"model": "m", "input": "hi", "tools": tools}
    cases: List[Tuple[Dict[str, Any], Any]] = [
        ({}, {"type": "auto"}), ({"tool_choice": "none"}, {"type": "none"}),
        ({"tool_choice": "required"}, {"type": "any"}),
        ({"tool_choice": {"type": "function", "name": "f"}}, {"type": "tool", "name": "f"}),
        ({"tool_choice": {"type": "custom", "name": "c"}}, {"type": "tool", "name": "c"}),
        ({"tool_choice": {"type": "function", "name": "g", "namespace": "n"}}, {"type": "tool", "name": f"n{SEP}g"}),
        ({"parallel_tool_calls": False}, {"type": "auto", "disable_parallel_tool_use": True}),
    ]
    for extra, choice in cases:
        assert responses_request_to_anthropic({**base, **extra})["tool_choice"] == choice, extra
    allowed = responses_request_to_anthropic({**base, "tool_choice": {
        "type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "f"},
                                                               {"type": "namespace", "name": "n"}]}})
    assert [t["name"] for t in allowed["tools"]] == ["f", f"n{SEP}g"] and allowed["tool_choice"] == {"type": "any"}
    out = responses_request_to_anthropic({"model": "m", "input": "hi", "max_output_tokens": 500, "temperature": 0.2,
                                          "top_p": 0.9, "reasoning": {"effort": "none"}, "user": "u1",
                                          "text": {"format": {"type": "json_schema", "name": "x", "strict": True,
                                                              "schema": {"type": "object", "properties": {}}}}})
    assert (out["max_tokens"], out["temperature"], out["top_p"]) == (500, 0.2, 0.9)
    assert "thinking" not in out and out["metadata"] == {"user_id": "u1"}
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": {"type": "object", "properties": {}}}}
    bare = responses_request_to_anthropic({"model": "m", "input": "hi", "text": {"format": {"type": "json_object"}}})
    assert bare["output_config"] == {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    # a thinking budget stays below max_tokens, and is off where none of Anthropic's fits
    small = responses_request_to_anthropic({"model": "m", "input": "hi", "max_output_tokens": 3000,
                                            "reasoning": {"effort": "high"}})
    assert small["thinking"] == {"type": "enabled", "budget_tokens": 2999}
    tiny = responses_request_to_anthropic({"model": "m", "input": "hi", "max_output_tokens": 900,
                                           "reasoning": {"effort": "low"}})
    assert "thinking" not in tiny


JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 10) | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=20)
PART = st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text", "input_image", "refusal", "x"])},
                             optional={"text": st.text(max_size=6) | JSON, "image_url": st.sampled_from(
                                 ["data:image/png;base64,AA==", "https://e/x.png", "data:,", "ftp://x"]) | JSON,
                                 "refusal": st.text(max_size=4)})
ITEM = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "developer", "system", "tool"])},
                          optional={"type": st.just("message"),
                                    "content": st.text(max_size=6) | st.lists(PART, max_size=3)}),
    st.fixed_dictionaries({"type": st.sampled_from(["function_call", "custom_tool_call"])},
                          optional={"call_id": st.text(max_size=4) | JSON,
                                    "name": st.sampled_from(["f", "", "n"]) | JSON,
                                    "namespace": st.sampled_from(["ns", None]),
                                    "arguments": st.text(max_size=10) | JSON, "input": st.text(max_size=5)}),
    st.fixed_dictionaries({"type": st.sampled_from(["function_call_output", "custom_tool_call_output"])},
                          optional={"call_id": st.text(max_size=4),
                                    "output": st.text(max_size=5) | st.lists(PART, max_size=2)}),
    st.fixed_dictionaries({"type": st.just("reasoning")},
                          optional={"encrypted_content": st.text(max_size=10) | st.builds(
                              lambda t, s: responses_reasoning_content(
                                  {"type": "thinking", "thinking": t, "signature": s}),
                              st.text(max_size=5), st.text(max_size=5))}),
    JSON,
)
TOOL = st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["function", "custom", "namespace", "web_search"])},
                                       optional={"name": st.sampled_from(["f", "g", ""]) | JSON, "parameters": JSON,
                                                 "description": st.text(max_size=4) | JSON,
                                                 "tools": st.lists(st.fixed_dictionaries(
                                                     {"type": st.just("function"),
                                                      "name": st.sampled_from(["a", "b"])}), max_size=2) | JSON}),
                 JSON)
REQUEST = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["m", ""]) | JSON, "input": st.text(max_size=5) | st.lists(ITEM, max_size=5) | JSON,
    "instructions": st.text(max_size=5) | JSON, "tools": st.lists(TOOL, max_size=3) | JSON,
    "tool_choice": st.sampled_from(["auto", "none", "required", {"type": "function", "name": "f"}]) | JSON,
    "parallel_tool_calls": st.booleans() | JSON, "max_output_tokens": st.integers(-1, 2_000_000) | JSON,
    "reasoning": st.fixed_dictionaries({}, optional={"effort": st.sampled_from(["low", "high", "none", "x"])}) | JSON,
    "text": st.fixed_dictionaries({}, optional={"format": st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object", "json_schema", "x"])}, optional={"schema": JSON})}) | JSON,
    "temperature": JSON, "top_p": JSON, "stream": JSON, "store": JSON, "previous_response_id": JSON, "user": JSON})


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=REQUEST)
def test_any_request_is_a_clean_400_or_a_valid_anthropic_body(body: Dict[str, Any]) -> None:
    try:
        out = responses_request_to_anthropic(body)
    except InvalidRequest as exc:
        assert exc.status == 400 and re.match(r"^[A-Za-z_][A-Za-z0-9_.]*: ", exc.message), exc.message
        return
    validate_messages_request(out)
    roles = [m["role"] for m in out["messages"]]
    assert all(a != b for a, b in zip(roles, roles[1:])), roles  # strict alternation
    json.dumps(out)  # plain JSON, nothing the request did not hold


# -- thinking through the client's history -----------------------------------------------------------

@given(thinking=st.text(), signature=st.text(), data=st.text(), redacted=st.booleans())
def test_a_thinking_block_survives_the_round_trip_exactly(thinking: str, signature: str, data: str,
                                                           redacted: bool) -> None:
    block = {"type": "redacted_thinking", "data": data} if redacted else \
        {"type": "thinking", "thinking": thinking, "signature": signature}
    content = responses_reasoning_content(block)
    assert content.startswith(agproxy.RESPONSES_REASONING_PREFIX) and content.isascii()
    assert responses_reasoning_block(content) == block


def ours(raw: bytes) -> str:
    """An encrypted_content with agproxy's prefix around ``raw``."""
    return agproxy.RESPONSES_REASONING_PREFIX + base64.urlsafe_b64encode(raw).decode()


def test_thinking_waits_for_the_next_user_turn_in_a_tool_loop_whose_call_came_without_it() -> None:
    call = {"type": "function_call", "name": "exec_command", "arguments": "{}", "call_id": "c1"}
    result = {"type": "function_call_output", "call_id": "c1", "output": "ok"}
    foreign = {"type": "reasoning", "summary": [], "encrypted_content": "gAAAAB-made-elsewhere"}
    changes: Dict[str, int] = {}
    out = responses_request_to_anthropic(codex_request(FIRST_TURN + [foreign, call, result]), changes)
    assert "thinking" not in out and changes["responses_thinking_off_in_tool_loop"] == 1
    ours_first = responses_request_to_anthropic(codex_request(FIRST_TURN + [thinking_item("t", "s"), call, result]))
    assert ours_first["thinking"]["type"] == "enabled"
    next_turn = responses_request_to_anthropic(codex_request(FIRST_TURN + [foreign, call, result,
                                                                           message("user", "and now?")]))
    assert next_turn["thinking"]["type"] == "enabled"


@pytest.mark.parametrize("content", [
    None, "", "gAAAAABo-openai", agproxy.RESPONSES_REASONING_PREFIX, agproxy.RESPONSES_REASONING_PREFIX + "!!!",
    ours(b"[1]"), ours(b'{"type":"text","text":"x"}'), ours(b'{"type":"thinking","thinking":1,"signature":""}'),
    ours(b'{"type":"thinking","thinking":"a"}'), ours(b'\xff\xfe'),
    ours(b'{"type":"thinking","thinking":"a","signature":"","extra":1}'),
])
def test_reasoning_agproxy_did_not_write_is_dropped_not_sent(content: Any) -> None:
    assert responses_reasoning_block(content) is None
    changes: Dict[str, int] = {}
    out = responses_request_to_anthropic({"model": "m", "input": [
        message("user", "hi"), {"type": "reasoning", "summary": [], "encrypted_content": content},
        message("assistant", "hello")]}, changes)
    assert out["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}
    assert changes == {"responses_foreign_reasoning_dropped": 1}


# -- the stream --------------------------------------------------------------------------------------

def ev(name: str, **payload: Any) -> Event:
    return Event(name, dict(payload, type=name))


def text_block(index: int, *pieces: str) -> List[Event]:
    return ([ev("content_block_start", index=index, content_block={"type": "text", "text": ""})]
            + [ev("content_block_delta", index=index, delta={"type": "text_delta", "text": p}) for p in pieces]
            + [ev("content_block_stop", index=index)])


def thinking_block(index: int, pieces: List[str], signature: str) -> List[Event]:
    start = {"type": "thinking", "thinking": "", "signature": ""}
    return ([ev("content_block_start", index=index, content_block=start)]
            + [ev("content_block_delta", index=index, delta={"type": "thinking_delta", "thinking": p}) for p in pieces]
            + [ev("content_block_delta", index=index, delta={"type": "signature_delta", "signature": signature})]
            + [ev("content_block_stop", index=index)])


def tool_block(index: int, call_id: str, name: str, pieces: List[str]) -> List[Event]:
    return ([ev("content_block_start", index=index, content_block={"type": "tool_use", "id": call_id, "name": name,
                                                                    "input": {}})]
            + [ev("content_block_delta", index=index, delta={"type": "input_json_delta", "partial_json": p})
               for p in pieces]
            + [ev("content_block_stop", index=index)])


def answer(blocks: List[List[Event]], stop_reason: str = "end_turn",
           usage: Optional[Dict[str, int]] = None) -> List[Event]:
    start = ev("message_start", message={"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                                         "content": [], "stop_reason": None, "stop_sequence": None,
                                         "usage": {"input_tokens": 50, "cache_read_input_tokens": 20,
                                                   "cache_creation_input_tokens": 5, "output_tokens": 1}})
    events = [start, ev("ping")]
    for block in blocks:
        events += block
    events += [ev("message_delta", delta={"stop_reason": stop_reason, "stop_sequence": None},
                  usage=usage or {"output_tokens": 40}), ev("message_stop")]
    return events


TOOLS_REQUEST = {"model": "gpt-5.5", "input": "hi", "tools": CODEX_TOOLS, "instructions": "",
                 "parallel_tool_calls": True, "reasoning": {"effort": "high", "summary": "auto"}}
A_TURN = answer([thinking_block(0, ["Let me ", "look."], "sig-abc"), text_block(1, "I will ", "list them."),
                 tool_block(2, "toolu_1", "exec_command", ['{"cmd"', ': "ls"}']),
                 tool_block(3, "toolu_2", f"agents{SEP}wait", ['{"targets":["1"]}']),
                 tool_block(4, "toolu_3", "apply_patch", ['{"input": "*** Begin', ' Patch\\n*** End Patch\\n"}'])],
                stop_reason="tool_use")


def sdk_stream(data: bytes) -> Tuple[List[Any], Any]:
    """The events and the final response as the openai SDK's own stream helper reads ``data``."""
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=data)

    client = openai.OpenAI(api_key="sk-test", base_url="http://agproxy.test/v1", max_retries=0,
                           http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    with client.responses.stream(model="gpt-5.5", input="hi") as stream:
        events = list(stream)
    # the helper's get_final_response() knows response.completed only; response.incomplete carries
    # the response the same way
    assert events[-1].type in ("response.completed", "response.incomplete", "response.failed")
    return events, events[-1].response


def sdk_response(body: Dict[str, Any]) -> Any:
    """A non-streaming answer as the openai SDK reads it."""
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=body)

    client = openai.OpenAI(api_key="sk-test", base_url="http://agproxy.test/v1", max_retries=0,
                           http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    return client.responses.create(model="gpt-5.5", input="hi")


def decoded(data: bytes) -> List[Dict[str, Any]]:
    events = agproxy.SSEDecoder().feed(data)
    out = []
    for event in events:
        payload = json.loads(event.data)
        assert payload["type"] == event.event
        out.append(payload)
    return out


def test_a_turn_streams_as_codex_and_the_sdk_read_it() -> None:
    encoder = ResponsesStreamEncoder("gpt-5.5", TOOLS_REQUEST, created_at=1796380000)
    data = encoder.ping() + encoder.encode(A_TURN)
    assert encoder.finished and encoder.encode(A_TURN) == b"" and encoder.ping() == b""
    events = decoded(data)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.output_item.added", "response.custom_tool_call_input.delta", "response.custom_tool_call_input.done",
        "response.output_item.done", "response.completed"]
    sdk_events, final = sdk_stream(data)
    assert [e.type for e in sdk_events] == [e["type"] for e in events]
    assert final.status == "completed" and final.output_text == "I will list them."
    reasoning, said, shell, wait, patch = final.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == "Let me look."
    assert responses_reasoning_block(reasoning.encrypted_content) == {
        "type": "thinking", "thinking": "Let me look.", "signature": "sig-abc"}
    assert (shell.type, shell.name, shell.call_id, json.loads(shell.arguments)) == (
        "function_call", "exec_command", "toolu_1", {"cmd": "ls"})
    assert (wait.name, wait.namespace, wait.arguments) == ("wait", "agents", '{"targets":["1"]}')
    assert (patch.type, patch.name, patch.call_id, patch.input) == (
        "custom_tool_call", "apply_patch", "toolu_3", "*** Begin Patch\n*** End Patch\n")
    usage = final.usage
    assert (usage.input_tokens, usage.input_tokens_details.cached_tokens, usage.output_tokens,
            usage.total_tokens) == (75, 20, 40, 115)
    assert 0 < usage.output_tokens_details.reasoning_tokens <= 40
    assert final.id.startswith("resp_") and final.created_at == 1796380000 and final.model == "gpt-5.5"


def test_the_history_codex_sends_back_is_the_answer_it_was_given() -> None:
    """The output items, given back as Codex gives them, are the Anthropic turn they came from."""
    encoder = ResponsesStreamEncoder("gpt-5.5", TOOLS_REQUEST)
    final = decoded(encoder.encode(A_TURN))[-1]["response"]
    outputs = [{"type": "function_call_output", "call_id": "toolu_1", "output": "a"},
               {"type": "function_call_output", "call_id": "toolu_2", "output": "b"},
               {"type": "custom_tool_call_output", "call_id": "toolu_3", "output": "c"}]
    history = [message("user", "hi")] + final["output"] + outputs
    again = responses_request_to_anthropic(dict(TOOLS_REQUEST, input=history))
    accumulator = MessageAccumulator()
    for event in A_TURN:
        accumulator.add(event.name, event.data)
    assert again["messages"][1]["content"] == accumulator.result()["content"]


def test_ends_other_than_completed() -> None:
    cut = decoded(ResponsesStreamEncoder("m").encode(answer([text_block(0, "partial")], stop_reason="max_tokens")))
    assert cut[-1]["type"] == "response.incomplete"
    assert cut[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    _, final = sdk_stream(b"".join(e for e in [ResponsesStreamEncoder("m").encode(
        answer([text_block(0, "partial")], stop_reason="max_tokens"))]))
    assert final.status == "incomplete" and final.output_text == "partial"
    # an error after the stream began: response.failed, with the items done so far, and nothing after
    encoder = ResponsesStreamEncoder("m")
    head = encoder.encode(A_TURN[:9])
    tail = encoder.error("overloaded_error", "Overloaded")
    assert encoder.finished and encoder.encode(A_TURN[9:]) == b"" and encoder.error("api_error", "x") == b""
    events = decoded(head + tail)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    failed = events[-1]
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": "Overloaded"}  # Codex retries it
    assert [i["type"] for i in failed["response"]["output"]] == ["reasoning"]
    # an upstream's error event inside the stream ends it the same way
    broken = ResponsesStreamEncoder("m").encode(A_TURN[:3] + [ev("error", error={
        "type": "invalid_request_error", "message": "prompt is too long: 300000 tokens > 200000 maximum"})])
    assert decoded(broken)[-1]["response"]["error"]["code"] == "context_length_exceeded"
    # before anything came: created, in_progress, failed
    assert [e["type"] for e in decoded(ResponsesStreamEncoder("m").error("api_error", "boom"))] == [
        "response.created", "response.in_progress", "response.failed"]
    sdk_events, failed_response = sdk_stream(head + tail)
    assert sdk_events[-1].type == "response.failed" and failed_response.error.code == "server_error"


def test_a_long_text_is_held_once_and_repeated_part_by_part_as_the_closing_events_go_out() -> None:
    # 20 MB through /v1/responses peaked at 413 MB: the closing events, each repeating the text,
    # were made all at once (the text joined, as JSON, as bytes, per event) in one write
    pieces = ["y" * 1000 + 'é"\n\ud800'] * 2000  # 2 MB, with what JSON escapes and a lone surrogate
    events = answer([text_block(0, *pieces)])
    encoder = ResponsesStreamEncoder("m")
    head = encoder.encode(events[:-3])  # through the last delta
    parts = list(encoder.encode_parts(events[-3:]))  # content_block_stop .. message_stop
    text_bytes = len(json.dumps("".join(pieces), ensure_ascii=False)[1:-1].encode("utf-8", "replace"))
    assert sum(map(len, parts)) > 4 * text_bytes  # the text goes out four times more
    assert max(map(len, parts)) <= agproxy._HELD_TEXT_PART_BYTES + 4096  # but never more than a part at a time
    closing = decoded(b"".join(parts))
    text = "".join(pieces).replace("\ud800", "?")
    assert [e["type"] for e in closing] == ["response.output_text.done", "response.content_part.done",
                                            "response.output_item.done", "response.completed"]
    assert closing[0]["text"] == closing[1]["part"]["text"] == text
    assert closing[2]["item"]["content"][0]["text"] == closing[3]["response"]["output"][0]["content"][0]["text"] == text
    assert encoder.encode(events) == b""  # finished
    whole = head + b"".join(parts)
    events_seen, final = sdk_stream(whole)
    assert final.status == "completed" and final.output_text == text
    assert "".join(e.delta for e in events_seen if e.type == "response.output_text.delta") == text


def test_a_text_past_the_held_limit_ends_as_an_incomplete_response(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agproxy, "RESPONSES_MAX_HELD_TEXT_BYTES", 10_000)
    events = answer([text_block(0, *["x" * 999 + "é"] * 30)])  # 1001 bytes a piece: 9 fit
    encoder = ResponsesStreamEncoder("m")
    data = b"".join(encoder.encode([event]) for event in events)  # one event at a time, as upstreams send
    stream = decoded(data)
    assert [e["sequence_number"] for e in stream] == list(range(len(stream)))
    deltas = "".join(e["delta"] for e in stream if e["type"] == "response.output_text.delta")
    assert deltas == ("x" * 999 + "é") * 9
    assert stream[-1]["type"] == "response.incomplete"
    assert stream[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert stream[-1]["response"]["output"][0]["content"][0]["text"] == deltas
    assert [e for e in stream if e["type"] == "response.output_text.done"][0]["text"] == deltas
    assert encoder.finished and encoder.error("api_error", "late") == b""
    _, final = sdk_stream(data)
    assert final.status == "incomplete" and final.output_text == deltas


def test_tool_names_anthropic_refuses_travel_made_valid_and_come_back_as_the_client_named_them() -> None:
    # a dot, or a namespace and function flattened past 64 characters, reached an anthropic upstream: a 400
    long_space = "mcp__" + "server" * 10
    tools = [{"type": "function", "name": "files.read", "parameters": {"type": "object"}},
             {"type": "namespace", "name": long_space, "tools": [{"type": "function", "name": "search"}]},
             {"type": "custom", "name": "patch:apply"}]
    history = [message("user", "q"),
               {"type": "function_call", "call_id": "c1", "name": "search", "namespace": long_space, "arguments": "{}"},
               {"type": "function_call_output", "call_id": "c1", "output": "r"},
               {"type": "custom_tool_call", "call_id": "c2", "name": "patch:apply", "input": "x"},
               {"type": "custom_tool_call_output", "call_id": "c2", "output": "ok"}]
    body = {"model": "m", "input": history, "tools": tools, "tool_choice": {"type": "function", "name": "files.read"}}
    out = responses_request_to_anthropic(body)
    validate_messages_request(out)
    sent = [t["name"] for t in out["tools"]]
    assert all(agproxy._ANTHROPIC_TOOL_NAME.fullmatch(name) for name in sent) and len(set(sent)) == 3
    assert out["tool_choice"]["name"] == sent[0]
    calls = [b for m in out["messages"] for b in m["content"] if isinstance(b, dict) and b["type"] == "tool_use"]
    assert [c["name"] for c in calls] == sent[1:]
    blocks = [{"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": {"input": "t"}}
              for i, name in enumerate(sent)]
    expected = [("function_call", "files.read", None), ("function_call", "search", long_space),
                ("custom_tool_call", "patch:apply", None)]
    whole = anthropic_message_to_responses({"content": blocks, "stop_reason": "tool_use"}, body)
    assert [(i["type"], i["name"], i.get("namespace")) for i in whole["output"]] == expected
    events = answer([tool_block(i, f"toolu_{i}", name, ['{"input": "t"}']) for i, name in enumerate(sent)],
                    stop_reason="tool_use")
    done = [e["item"] for e in decoded(ResponsesStreamEncoder("m", body).encode(events))
            if e["type"] == "response.output_item.done"]
    assert [(i["type"], i["name"], i.get("namespace")) for i in done] == expected


def test_a_tool_call_without_arguments_and_unknown_blocks() -> None:
    events = answer([tool_block(0, "toolu_9", "get_goal", []),
                     [ev("content_block_start", index=1, content_block={"type": "server_tool_use", "id": "s",
                                                                          "name": "web_search", "input": {}}),
                      ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": "{}"}),
                      ev("content_block_stop", index=1)],
                     [ev("content_block_start", index=2, content_block={"type": "redacted_thinking", "data": "opaque"}),
                      ev("content_block_stop", index=2)],
                     text_block(3, "a"), text_block(4, "b")], stop_reason="tool_use")
    out = decoded(ResponsesStreamEncoder("m", TOOLS_REQUEST).encode(events))
    final = out[-1]["response"]
    call, redacted, said = final["output"]
    assert call["arguments"] == "{}" and call["name"] == "get_goal" and "namespace" not in call
    deltas = [e["delta"] for e in out if e["type"] == "response.function_call_arguments.delta"]
    assert deltas == ["{}"]
    assert responses_reasoning_block(redacted["encrypted_content"]) == {"type": "redacted_thinking", "data": "opaque"}
    assert redacted["summary"] == []
    assert [p["text"] for p in said["content"]] == ["a", "b"]  # a run of text blocks: one message, two parts
    _, sdk_final = sdk_stream(ResponsesStreamEncoder("m", TOOLS_REQUEST).encode(events))
    assert sdk_final.output_text == "ab"


IDS = re.compile(r"\b(resp|msg|rs|fc|ctc)_[0-9a-f]{32}\b")


def normalized(data: bytes) -> str:
    """The bytes with agproxy's fresh ids numbered in order of appearance."""
    names: Dict[str, str] = {}
    return IDS.sub(lambda m: names.setdefault(m.group(0), f"{m.group(1)}_{len(names)}"), data.decode())


def comparable(items: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Output items without their fresh ids, arguments as what they mean (a stream passes the
    model's own text on; a whole Message has only the parsed input to write again)."""
    out = []
    for item in items:
        item = {k: v for k, v in item.items() if k != "id"}
        if "arguments" in item:
            item["arguments"] = agproxy.parse_tool_arguments(item["arguments"])
        if item["type"] == "custom_tool_call":  # arguments that were not {"input": text} come as they are
            item["input"] = agproxy.parse_tool_arguments(item["input"])
        out.append(item)
    return out


BLOCK = st.one_of(
    st.tuples(st.just("text"), st.lists(st.text(max_size=6), max_size=4)),
    st.tuples(st.just("thinking"), st.lists(st.text(max_size=6), max_size=3), st.text(max_size=6)),
    st.tuples(st.just("tool"), st.sampled_from(["exec_command", f"agents{SEP}spawn", "apply_patch", "unknown"]),
              st.dictionaries(st.sampled_from(["cmd", "input", "task"]), st.text(max_size=8), max_size=2),
              st.integers(1, 9)),
    st.tuples(st.just("redacted"), st.text(max_size=6)),
)


def built(specs: List[Tuple[Any, ...]], stop_reason: str) -> List[Event]:
    blocks = []
    for index, spec in enumerate(specs):
        if spec[0] == "text":
            blocks.append(text_block(index, *spec[1]))
        elif spec[0] == "thinking":
            blocks.append(thinking_block(index, spec[1], spec[2]))
        elif spec[0] == "redacted":
            blocks.append([ev("content_block_start", index=index,
                              content_block={"type": "redacted_thinking", "data": spec[1]}),
                           ev("content_block_stop", index=index)])
        else:
            text = json.dumps(spec[2])
            pieces = [text[i:i + spec[3]] for i in range(0, len(text), spec[3])]
            blocks.append(tool_block(index, f"toolu_{index}", spec[1], pieces))
    return answer(blocks, stop_reason)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(BLOCK, max_size=5), stop_reason=st.sampled_from(["end_turn", "tool_use", "max_tokens"]),
       cuts=st.lists(st.integers(0, 200), max_size=8), data=st.data())
def test_any_split_of_the_events_gives_the_same_stream_and_the_same_answer(
        specs: List[Tuple[Any, ...]], stop_reason: str, cuts: List[int], data: Any) -> None:
    events = built(specs, stop_reason)
    whole = ResponsesStreamEncoder("m", TOOLS_REQUEST, created_at=7).encode(events)
    encoder = ResponsesStreamEncoder("m", TOOLS_REQUEST, created_at=7)
    bounds = sorted({0, len(events), *(c % (len(events) + 1) for c in cuts)})
    pieces = [encoder.encode(events[a:b]) for a, b in zip(bounds, bounds[1:])]
    if data.draw(st.booleans()):
        pieces.insert(1, encoder.ping())
    split = b"".join(pieces)
    assert normalized(split.replace(b": keep-alive\n\n", b"")) == normalized(whole)
    out = decoded(whole)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    added = [e["output_index"] for e in out if e["type"] == "response.output_item.added"]
    done = [e for e in out if e["type"] == "response.output_item.done"]
    assert added == list(range(len(added))) and [e["output_index"] for e in done] == added
    final = out[-1]["response"]
    assert out[-1]["type"] == ("response.incomplete" if stop_reason == "max_tokens" else "response.completed")
    assert final["output"] == [e["item"] for e in done]
    # each text delta run adds up to its done text; arguments likewise
    for kind, field in (("output_text", "text"), ("function_call_arguments", "arguments")):
        for finished in (e for e in out if e["type"] == f"response.{kind}.done"):
            keys = ("item_id", "content_index") if kind == "output_text" else ("item_id",)
            deltas = [e["delta"] for e in out if e["type"] == f"response.{kind}.delta"
                      and all(e.get(k) == finished.get(k) for k in keys)]
            assert "".join(deltas) == finished[field]
    # the streamed answer is the non-streamed one, and the SDK reads both
    accumulator = MessageAccumulator()
    for event in events:
        accumulator.add(event.name, event.data)
    whole_answer = anthropic_message_to_responses(accumulator.result(), TOOLS_REQUEST, model="m", created_at=7)
    assert comparable(whole_answer["output"]) == comparable(final["output"])
    assert whole_answer["usage"]["input_tokens"] == final["usage"]["input_tokens"] == 75
    _, sdk_final = sdk_stream(whole)
    assert sdk_final.output_text == sdk_response(whole_answer).output_text


def test_a_whole_message_as_a_response_object() -> None:
    accumulator = MessageAccumulator()
    for event in A_TURN:
        accumulator.add(event.name, event.data)
    body = anthropic_message_to_responses(accumulator.result(), TOOLS_REQUEST, model="gpt-5.5", created_at=3)
    assert body["object"] == "response" and body["status"] == "completed" and body["store"] is False
    assert body["tools"] == CODEX_TOOLS and body["incomplete_details"] is None
    response = sdk_response(body)
    assert response.output_text == "I will list them."
    assert [i.type for i in response.output] == ["reasoning", "message", "function_call", "function_call",
                                                 "custom_tool_call"]
    assert response.output[3].namespace == "agents" and response.output[4].input.startswith("*** Begin Patch")
    refused = anthropic_message_to_responses({"content": [], "stop_reason": "refusal", "usage": {}})
    assert refused["status"] == "incomplete" and refused["incomplete_details"] == {"reason": "content_filter"}


# -- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("status, error_type, kind, code, sdk_error", [
    (400, "invalid_request_error", "invalid_request_error", None, openai.BadRequestError),
    # a 4xx that retrying cannot change is a 400 (Codex CLI stops only on that): the code says which
    (401, "authentication_error", "invalid_request_error", "invalid_api_key", openai.BadRequestError),
    (403, "permission_error", "invalid_request_error", "permission_denied", openai.BadRequestError),
    (404, "not_found_error", "invalid_request_error", "not_found", openai.BadRequestError),
    (413, "request_too_large", "invalid_request_error", "request_too_large", openai.BadRequestError),
    (429, "rate_limit_error", "requests", "rate_limit_exceeded", openai.RateLimitError),
    (500, "api_error", "server_error", "server_error", openai.InternalServerError),
    (529, "overloaded_error", "server_error", "server_is_overloaded", openai.InternalServerError),
    (502, "something_new", "server_error", "server_error", openai.InternalServerError),
])
def test_errors_in_openai_words(status: int, error_type: str, kind: str, code: Optional[str], sdk_error: type) -> None:
    body = responses_error_body(status, error_type, "words")
    assert body == {"error": {"message": "words", "type": kind, "param": None, "code": code}}

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(responses_error_status(status), json=body)

    client = openai.OpenAI(api_key="sk-test", base_url="http://agproxy.test/v1", max_retries=0,
                           http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    with pytest.raises(sdk_error) as caught:
        client.responses.create(model="m", input="hi")
    assert caught.value.message == "words" or "words" in str(caught.value)
    assert responses_error_body(400, "invalid_request_error", "prompt is too long: 9 tokens")["error"]["code"] == \
        "context_length_exceeded"


# -- real upstream answers, through the Chat Completions translator and this encoder -----------------

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "real-streams" / "fixtures"
REAL_STREAMS = sorted(p.stem for p in REAL.glob("*.json") if json.loads(p.read_text()).get("stream")) \
    if REAL.is_dir() else []


@pytest.mark.skipif(not REAL_STREAMS, reason="../shared/real-streams is not here (a user's clone)")
@pytest.mark.parametrize("name", REAL_STREAMS)
def test_real_upstream_streams_reach_a_responses_client_whole(name: str) -> None:
    recording = json.loads((REAL / f"{name}.json").read_text())
    translator = agproxy.OpenAIStreamTranslator("m", 0)
    translator.relayed = True  # its deltas as the relay carries them: bytes, decoded when asked
    encoder = ResponsesStreamEncoder("m", {"tools": [{"type": "function", "name": c["name"]}
                                                     for c in recording["expect"]["tool_calls"]]})
    data = bytearray()
    for chunk in recording["chunks"]:
        data += encoder.encode(translator.feed(chunk))
    data += encoder.encode(translator.finish())
    _, final = sdk_stream(bytes(data))
    expect = recording["expect"]
    assert final.output_text == expect["text"]
    summaries = "".join(s.text for item in final.output if item.type == "reasoning" for s in item.summary)
    assert summaries == expect["thinking"]
    calls = [(i.name, agproxy.parse_tool_arguments(i.arguments)) for i in final.output if i.type == "function_call"]
    assert calls == [(c["name"], c["input"]) for c in expect["tool_calls"]]


REAL_GEMINI = Path(__file__).resolve().parent.parent.parent / "shared" / "real-streams-gemini" / "fixtures"
GEMINI_ANSWERS = sorted(p.stem for p in REAL_GEMINI.glob("*.json")
                        if json.loads(p.read_text())["kind"] in ("stream", "body")) if REAL_GEMINI.is_dir() else []


@pytest.mark.skipif(not GEMINI_ANSWERS, reason="../shared/real-streams-gemini is not here (a user's clone)")
@pytest.mark.parametrize("name", GEMINI_ANSWERS)
def test_real_gemini_answers_come_back_through_the_clients_history_unchanged(name: str) -> None:
    """Gemini's thought signatures ride in thinking blocks: given to a Responses client and sent back
    in its history, the turn is the one Gemini's answer made, signatures and all."""
    recording = json.loads((REAL_GEMINI / f"{name}.json").read_text())
    made = agproxy.gemini_to_anthropic(recording["body"] if recording["kind"] == "body" else recording["chunks"], "m")
    calls = [b for b in made["content"] if b["type"] == "tool_use"]
    request = {"model": "m", "tools": [{"type": "function", "name": n} for n in {b["name"] for b in calls}]}
    response = anthropic_message_to_responses(made, request)
    assert sdk_response(response).output_text == "".join(b["text"] for b in made["content"] if b["type"] == "text")
    outputs = [{"type": "function_call_output", "call_id": b["id"], "output": "ok"} for b in calls]
    history = [message("user", "hi")] + response["output"] + outputs
    again = responses_request_to_anthropic(dict(request, input=history))
    kept = [b for b in made["content"] if not (b["type"] == "text" and not b["text"])]
    assert again["messages"][1:2] == ([{"role": "assistant", "content": kept}] if kept else [])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=4))
def test_a_text_delta_event_is_the_compact_json_of_its_fields_however_the_text_reads(pieces):
    wire = ResponsesStreamEncoder("m").encode(answer([text_block(0, *pieces)]))
    events = agproxy.SSEDecoder().feed(wire)
    deltas = [event.data for event in events if event.event == "response.output_text.delta"]
    assert [json.loads(data)["delta"] for data in deltas] == pieces
    for data in deltas:  # the very bytes encode_sse_json writes, its fields in their order
        fields = json.loads(data)
        assert list(fields) == ["type", "sequence_number", "item_id", "output_index", "content_index", "delta",
                                "logprobs"]
        assert data == json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
