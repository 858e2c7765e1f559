"""The Chat Completions client dialect (issue 21), pure: a client's request in the internal
Anthropic form (every output checked by ``validate_messages_request``, any JSON in a clean 400 or a
valid body), the internal events as a ``chat.completion.chunk`` stream (the same bytes for any
batching of the events), a whole Message as a ``chat.completion``, and errors in OpenAI's shape.
The judge of what comes out is the ``openai`` SDK itself, reading from an ``httpx2.MockTransport``
(no socket); the recorded real streams of ``../shared/real-streams/`` go through an upstream
translator and this encoder back to it, where that directory is present."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState

import agproxy
from agproxy import (
    ChatStreamEncoder,
    Event,
    InvalidRequest,
    anthropic_message_to_chat,
    chat_error_body,
    chat_include_usage,
    chat_request_to_anthropic,
    message_events,
    validate_messages_request,
)

MODEL = "gpt-client-model"
CREATED = 1764000000
PNG = "iVBORw0KGgo="


def translate(body: Dict[str, Any]) -> Dict[str, Any]:
    """The internal form, which must always be a valid Anthropic request."""
    out = chat_request_to_anthropic(copy.deepcopy(body))
    validate_messages_request(out)
    return out


def request(messages: List[Dict[str, Any]], **fields: Any) -> Dict[str, Any]:
    return translate(dict(model="m", messages=messages, **fields))


def refused(body: Dict[str, Any]) -> str:
    with pytest.raises(InvalidRequest) as caught:
        chat_request_to_anthropic(body)
    assert caught.value.status == 400
    return caught.value.message


# -- the request ---------------------------------------------------------------------------------


def test_system_and_developer_messages_become_the_system_prompt_in_order() -> None:
    out = request([{"role": "system", "content": "one"}, {"role": "user", "content": "hi"},
                   {"role": "developer", "content": [{"type": "text", "text": "two"}]}])
    assert out["system"] == "one\n\ntwo"
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_only_system_messages_become_the_user_turn() -> None:
    out = request([{"role": "system", "content": "Say hi"}])
    assert "system" not in out and out["messages"] == [{"role": "user", "content": "Say hi"}]


def test_a_tool_loop_alternates_with_results_first_in_one_user_turn() -> None:
    out = request([
        {"role": "user", "content": "list"},
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "sh", "arguments": '{"cmd": "ls"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "sh", "arguments": "{\"cmd\": \"pwd\""}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "/tmp"}]},
        {"role": "user", "content": "and?"},
    ], tools=[{"type": "function", "function": {"name": "sh", "parameters": {"type": "object"}, "strict": True}}])
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["user", "assistant", "user"]
    assistant = out["messages"][1]["content"]
    assert assistant[0] == {"type": "text", "text": "Looking."}
    assert [b["input"] for b in assistant[1:]] == [{"cmd": "ls"}, {"cmd": "pwd"}]  # the second repaired
    last = out["messages"][2]["content"]
    assert [b["type"] for b in last] == ["tool_result", "tool_result", "text"]
    assert [b["tool_use_id"] for b in last[:2]] == ["call_1", "call_2"]
    assert out["tools"] == [{"name": "sh", "input_schema": {"type": "object"}}]
    assert "tool_choice" not in out


def test_a_user_line_between_a_call_and_its_result_still_puts_the_result_first() -> None:
    out = request([{"role": "user", "content": "go"},
                   {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                         "function": {"name": "f", "arguments": ""}}]},
                   {"role": "user", "content": "(waiting)"},
                   {"role": "tool", "tool_call_id": "c", "content": "done"}])
    assert [b["type"] for b in out["messages"][2]["content"]] == ["tool_result", "text"]
    assert out["messages"][1]["content"][0]["input"] == {}


def test_a_tool_message_that_answers_no_call_stays_where_it_stands_as_text() -> None:
    # it was moved before the user's words (results go first in a user turn), and an anthropic
    # upstream refuses a result for a call it cannot see
    out = request([{"role": "user", "content": "go"},
                   {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                         "function": {"name": "f", "arguments": "{}"}}]},
                   {"role": "user", "content": "(waiting)"},
                   {"role": "tool", "tool_call_id": "stale", "content": "old"},
                   {"role": "tool", "tool_call_id": "c", "content": "done"},
                   {"role": "tool", "tool_call_id": "c", "content": "again"}])
    assert [(b["type"], b.get("tool_use_id") or b.get("text")) for b in out["messages"][2]["content"]] == [
        ("tool_result", "c"), ("text", "(waiting)"), ("text", "[result of tool call stale]\nold"),
        ("text", "[result of tool call c]\nagain")]
    changes: Dict[str, int] = {}
    alone = chat_request_to_anthropic({"model": "m", "messages": [
        {"role": "user", "content": "q"}, {"role": "tool", "tool_call_id": "nope", "content": "r"}]}, changes)
    validate_messages_request(alone)
    assert alone["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "q"}, {"type": "text", "text": "[result of tool call nope]\nr"}]}]
    assert changes == {"orphan_tool_result_to_text": 1}


def test_images_by_data_url_and_by_http_url() -> None:
    out = request([{"role": "user", "content": [
        {"type": "text", "text": "what?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}])
    blocks = out["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}


@pytest.mark.parametrize("url, words", [
    ("data:image/tiff;base64,AAAA", "image/tiff"),
    ("data:image/png,%89PNG", "base64 data: URL"),
    ("ftp://example.com/a.png", "base64 data: URL"),
])
def test_images_that_cannot_be_carried_are_a_400_naming_the_part(url: str, words: str) -> None:
    message = refused({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": url}}]}]})
    assert message.startswith("messages[0].content[1].image_url.url: ") and words in message


def test_a_pdf_given_inline_is_a_document_and_audio_is_refused() -> None:
    out = request([{"role": "user", "content": [
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}]}])
    assert out["messages"][0]["content"][0] == {"type": "document", "title": "a.pdf", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
    assert "messages[0].content[0].type" in refused({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]})
    assert "file_id" in refused({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": "file-1"}}]}]})


def test_reasoning_content_in_the_history_is_left_out() -> None:
    out = request([{"role": "user", "content": "q"},
                   {"role": "assistant", "content": "a", "reasoning_content": "thought"},
                   {"role": "user", "content": "q2"}])
    assert out["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": "a"}]}


@pytest.mark.parametrize("choice, parallel, wanted", [
    ("none", None, {"type": "none"}),
    ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "f"}}, False,
     {"type": "tool", "name": "f", "disable_parallel_tool_use": True}),
    (None, True, None),
])
def test_tool_choice_and_parallel_tool_calls(choice: Any, parallel: Any, wanted: Any) -> None:
    body: Dict[str, Any] = {"tools": [{"type": "function", "function": {"name": "f"}}]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    out = request([{"role": "user", "content": "x"}], **body)
    assert out.get("tool_choice") == wanted
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]


def test_a_tool_choice_naming_no_tool_and_a_tool_not_a_function_are_refused() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    message = refused({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools,
                       "tool_choice": {"type": "function", "function": {"name": "g"}}})
    assert message.startswith("tool_choice.function.name: ")
    message = refused({"model": "m", "messages": [{"role": "user", "content": "x"}],
                       "tools": [{"type": "custom", "custom": {"name": "apply_patch"}}]})
    assert message.startswith("tools[0].type: ")


@pytest.mark.parametrize("fields, max_tokens, budget", [
    ({}, agproxy.CHAT_DEFAULT_MAX_TOKENS, None),
    ({"reasoning_effort": "high"}, agproxy.CHAT_DEFAULT_MAX_TOKENS + 24576, 24576),
    ({"reasoning_effort": "low", "max_completion_tokens": 20000, "max_tokens": 5}, 20000, 2048),
    ({"reasoning_effort": "high", "max_tokens": 4096}, 4096, 2048),  # thinking takes at most half
    ({"reasoning_effort": "medium", "max_tokens": 2000}, 2000, None),  # half is under the minimum
    ({"reasoning_effort": "none", "max_tokens": 100}, 100, None),
])
def test_max_tokens_and_reasoning_effort(fields: Dict[str, Any], max_tokens: int, budget: Optional[int]) -> None:
    out = request([{"role": "user", "content": "x"}], temperature=0.2, **fields)
    assert out["max_tokens"] == max_tokens
    if budget is None:
        assert "thinking" not in out and out["temperature"] == 0.2
    else:
        assert out["thinking"] == {"type": "enabled", "budget_tokens": budget}
        assert "temperature" not in out  # Anthropic refuses a temperature with thinking


def test_a_forced_tool_call_goes_without_thinking() -> None:
    out = request([{"role": "user", "content": "x"}], reasoning_effort="high", tool_choice="required",
                  tools=[{"type": "function", "function": {"name": "f"}}])
    assert "thinking" not in out and out["tool_choice"] == {"type": "any"}


def test_a_turn_that_answers_tool_calls_goes_without_thinking() -> None:
    loop = [{"role": "user", "content": "list"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                  "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "a.txt"}]
    tools = [{"type": "function", "function": {"name": "f"}}]
    out = request(loop, reasoning_effort="high", tools=tools, temperature=0.5)
    assert "thinking" not in out and out["temperature"] == 0.5
    assert out["max_tokens"] == agproxy.CHAT_DEFAULT_MAX_TOKENS
    after = request(loop + [{"role": "assistant", "content": "Done."}, {"role": "user", "content": "next"}],
                    reasoning_effort="high", tools=tools)
    assert after["thinking"] == {"type": "enabled", "budget_tokens": 24576}


def test_with_thinking_only_a_top_p_anthropic_takes_is_kept() -> None:
    out = request([{"role": "user", "content": "x"}], reasoning_effort="low", top_p=0.97, top_k=40)
    assert out["top_p"] == 0.97 and "top_k" not in out
    assert "top_p" not in request([{"role": "user", "content": "x"}], reasoning_effort="low", top_p=0.5)


def test_a_refusal_in_the_history_is_carried_as_text() -> None:
    out = request([{"role": "user", "content": "x"},
                   {"role": "assistant", "content": None, "refusal": "I can't help with that."},
                   {"role": "user", "content": "ok"}])
    assert out["messages"][1]["content"] == [{"type": "text", "text": "I can't help with that."}]


def test_sampling_stop_stream_user_and_unknown_fields() -> None:
    out = request([{"role": "user", "content": "x"}], temperature=1.7, top_p=0.5, stop="END", stream=True,
                  stream_options={"include_usage": True}, user="u-1", seed=7, logprobs=False, store=False,
                  frequency_penalty=0.1, metadata={"k": "v"}, prompt_cache_key="abc")
    assert out["temperature"] == 1 and out["top_p"] == 0.5 and out["stop_sequences"] == ["END"]
    assert out["stream"] is True and out["metadata"] == {"user_id": "u-1"}
    assert set(out) == {"model", "messages", "max_tokens", "temperature", "top_p", "stop_sequences", "stream",
                        "metadata"}
    assert request([{"role": "user", "content": "x"}], stop=["a", "b"])["stop_sequences"] == ["a", "b"]
    assert chat_include_usage({"stream_options": {"include_usage": True}}) is True
    assert chat_include_usage({}) is False


@pytest.mark.parametrize("response_format, schema", [
    ({"type": "text"}, None),
    ({"type": "json_object"}, {"type": "object"}),
    ({"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
        "type": "object", "properties": {"a": {"type": "string"}}}}},
     {"type": "object", "properties": {"a": {"type": "string"}}}),
])
def test_response_format_becomes_structured_output(response_format: Dict[str, Any], schema: Any) -> None:
    out = request([{"role": "user", "content": "x"}], response_format=response_format)
    assert agproxy.output_schema(out) == schema
    assert ("output_config" in out) == (schema is not None)


@pytest.mark.parametrize("fields, param", [
    ({"n": 2}, "n"),
    ({"n": "1"}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 10**9}, "max_completion_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"stop": [1]}, "stop"),
    ({"model": ""}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
])
def test_what_cannot_be_carried_is_a_400_whose_param_names_the_field(fields: Dict[str, Any], param: str) -> None:
    body = dict({"model": "m", "messages": [{"role": "user", "content": "x"}]}, **fields)
    message = refused(body)
    assert chat_error_body(400, "invalid_request_error", message)["error"]["param"] == param


def test_n_other_than_1_is_refused_in_words_that_say_why() -> None:
    message = refused({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 3})
    assert message == "n: only 1 choice per request is supported, got 3"
    assert request([{"role": "user", "content": "x"}], n=1)["messages"]


def test_a_reasoning_effort_of_any_json_is_a_400_not_a_crash() -> None:
    assert refused({"model": "m", "messages": [{"role": "user", "content": "x"}],
                    "reasoning_effort": []}).startswith("reasoning_effort: ")


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False, width=16)
                    | st.sampled_from(["", "x", "auto", "none", "required", "function", "text", "user",
                                       "assistant", "tool", "system", "developer", "image_url", "json_object",
                                       "json_schema", "data:image/png;base64,AA", "https://a.b/c.png", "high",
                                       "{\"a\": 1}", "{", "refusal", "file", "data:text/plain;base64,aGk="]),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.sampled_from(["type", "text", "role", "content", "name", "id", "function",
                                         "arguments", "tool_calls", "tool_call_id", "image_url", "url",
                                         "parameters", "schema", "json_schema", "file", "file_data",
                                         "include_usage", "refusal", "description"]), inner, max_size=4),
                    max_leaves=12)
def mostly(good: Any) -> Any:
    """Values of the right shape (some of them wrong in a way a client could send); anything else
    goes in by :func:`mutated`, one place at a time, so that most requests get through."""
    return good


def any_of(*values: Any) -> Any:
    return st.sampled_from(values)


def places(value: Any, path: tuple = ()) -> List[tuple]:
    """Every path into a JSON value."""
    found = [path]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, inner in items:
        found += places(inner, path + (key,))
    return found


@st.composite
def mutated(draw: Any) -> Dict[str, Any]:
    """A request of the right shape with one place (anywhere in it) replaced by any JSON."""
    body = copy.deepcopy(draw(BODY))  # sampled values are shared: change a copy
    path = draw(st.sampled_from(places(body)[1:]))
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = draw(JSON)
    return body


DATA_URLS = ["data:image/png;base64,AA", "https://a.b/c.png", "data:image/bmp;base64,AA", "ftp://x", "data:,x"]
TEXT_PART = st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=5))
PART = st.one_of(
    TEXT_PART,
    st.builds(lambda u: {"type": "image_url", "image_url": {"url": u}}, any_of(*DATA_URLS)),
    st.builds(lambda u: {"type": "image_url", "image_url": u}, any_of(*DATA_URLS)),
    st.builds(lambda f: {"type": "file", "file": f}, st.fixed_dictionaries({}, optional={
        "file_data": st.sampled_from(["data:application/pdf;base64,JVBE", "data:text/plain;base64,aGk=",
                                      "data:text/plain;base64,/w==", "data:audio/wav;base64,AA"]),
        "file_id": st.just("file-1"), "filename": st.just("a.pdf")})),
    st.builds(lambda t: {"type": "refusal", "refusal": t}, st.text(max_size=3)))
TEXT = st.one_of(st.text(max_size=6), st.lists(TEXT_PART, max_size=2))
CONTENT = st.one_of(st.text(max_size=6), st.lists(PART, max_size=3))
CALL = st.fixed_dictionaries(
    {"id": any_of("c1", "c2", "c3"), "type": any_of("function"),
     "function": mostly(st.fixed_dictionaries({"name": any_of("f", "g", ""), "arguments": mostly(st.sampled_from(
         ["", "{}", '{"a": 1}', '{"a": [1, {"b": null}]', "[1]", "not json", "```json\n{}\n```"]))}))})
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer"]), "content": TEXT}),
    st.fixed_dictionaries({"role": st.just("user"), "content": CONTENT}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": st.none() | TEXT},
                          optional={"tool_calls": mostly(st.lists(CALL, max_size=2)), "reasoning_content": JSON}),
    st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": any_of("c1", "c2"), "content": TEXT}))
TOOL = mostly(st.fixed_dictionaries(
    {"type": any_of("function", "function", "custom"),
     "function": mostly(st.fixed_dictionaries({"name": any_of("f", "g", "")}, optional={
         "parameters": any_of({"type": "object"}, {}), "description": any_of("d", ""), "strict": JSON}))}))
FIELDS = {
    "n": any_of(1, None), "max_tokens": mostly(st.integers(-1, 5000)), "max_completion_tokens": mostly(
        st.integers(0, 5000)), "temperature": mostly(st.floats(0, 2.5)), "top_p": mostly(st.floats(0, 1.2)),
    "top_k": any_of(1, 40, -1), "stop": any_of("END", ["a", "b"], [], None), "stream": any_of(True, False),
    "stream_options": any_of({"include_usage": True}, {}, None), "parallel_tool_calls": any_of(True, False),
    "tool_choice": any_of("auto", "none", "required", {"type": "function", "function": {"name": "f"}},
                          {"type": "function", "function": {"name": "zz"}}, {"type": "allowed_tools"}),
    "reasoning_effort": any_of("none", "minimal", "low", "medium", "high", "xhigh", "max"),
    "response_format": any_of({"type": "text"}, {"type": "json_object"}, {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}}}, {"type": "json_schema", "json_schema": {"name": "x"}}),
    "user": any_of("u", ""), "seed": JSON, "logprobs": JSON, "tools": mostly(st.lists(TOOL, max_size=2)),
}
BODY = st.fixed_dictionaries({"model": st.just("m"),
                              "messages": mostly(st.lists(MESSAGE, min_size=1, max_size=6))}, optional=FIELDS)


@settings(max_examples=500, deadline=None)
@given(BODY | mutated())
def test_any_request_is_a_clean_400_or_a_valid_anthropic_body(body: Dict[str, Any]) -> None:
    try:
        out = chat_request_to_anthropic(copy.deepcopy(body))
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.message
        return
    validate_messages_request(out)
    json.dumps(out)  # plain JSON through and through
    roles = [m["role"] for m in out["messages"]]
    assert all(a != b for a, b in zip(roles, roles[1:]))  # strict alternation
    thinking = out.get("thinking")
    if thinking:
        assert 1024 <= thinking["budget_tokens"] < out["max_tokens"]


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_any_json_at_all_is_a_clean_400_or_a_valid_body(value: Any) -> None:
    body = value if isinstance(value, dict) else {"model": "m", "messages": value}
    try:
        out = chat_request_to_anthropic(body)
    except InvalidRequest:
        return
    validate_messages_request(out)


# -- the answer, judged by the openai SDK ----------------------------------------------------------


def sdk(status: int, body: bytes, content_type: str = "text/event-stream") -> openai.OpenAI:
    """An openai client whose every request is answered ``body`` (no socket)."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, content=body, headers={"content-type": content_type})

    return openai.OpenAI(api_key="k", base_url="http://agproxy.test/v1", max_retries=0,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(answer)))


def streamed(events: List[Event], include_usage: bool = False) -> bytes:
    return ChatStreamEncoder(MODEL, CREATED, include_usage).encode(events)


def what_the_sdk_reads(data: bytes) -> Dict[str, Any]:
    """The answer the openai SDK assembles from a stream (its own accumulator, which follows the
    tool calls by index), in the terms of :func:`expected`."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    chunks = list(sdk(200, data).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                         stream=True))
    for chunk in chunks:
        state.handle_chunk(chunk)
    final = state.current_completion_snapshot
    choice = final.choices[0]
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content", "")
                        for c in chunks if c.choices)
    calls = [{"id": c.id, "name": c.function.name, "input": json.loads(c.function.arguments)}
             for c in choice.message.tool_calls or []]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    return {"text": choice.message.content or "", "reasoning": reasoning, "calls": calls,
            "finish": choice.finish_reason, "usage": usage[0].model_dump(exclude_none=True) if usage else None,
            "model": final.model}


def anthropic_message(content: List[Dict[str, Any]], stop_reason: str = "end_turn") -> Dict[str, Any]:
    return {"id": "msg_01abc", "type": "message", "role": "assistant", "model": "claude-x", "content": content,
            "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 7, "cache_read_input_tokens": 5,
                      "cache_creation_input_tokens": 2}}


def expected(message: Dict[str, Any]) -> Dict[str, Any]:
    blocks = message["content"]
    finish = {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls", "refusal": "content_filter",
              "stop_sequence": "stop"}[message["stop_reason"]]
    return {"text": "".join(b["text"] for b in blocks if b["type"] == "text"),
            "reasoning": "".join(b["thinking"] for b in blocks if b["type"] == "thinking"),
            "calls": [{"id": b["id"], "name": b["name"], "input": b["input"]}
                      for b in blocks if b["type"] == "tool_use"],
            "finish": finish}


TEXT_AND_TOOLS = anthropic_message([
    {"type": "thinking", "thinking": "Let me look.", "signature": "sig"},
    {"type": "text", "text": "I will list the files ✓."},
    {"type": "tool_use", "id": "toolu_1", "name": "exec_command", "input": {"cmd": "ls -la", "n": [1, {"a": None}]}},
    {"type": "tool_use", "id": "toolu_2", "name": "noop", "input": {}},
], "tool_use")


def test_a_stream_of_thinking_text_and_two_tool_calls_reads_right_in_the_openai_sdk() -> None:
    got = what_the_sdk_reads(streamed(message_events(TEXT_AND_TOOLS), include_usage=True))
    assert {k: got[k] for k in ("text", "reasoning", "calls", "finish")} == expected(TEXT_AND_TOOLS)
    assert got["usage"] == {"prompt_tokens": 18, "completion_tokens": 7, "total_tokens": 25,
                            "prompt_tokens_details": {"cached_tokens": 5}}
    assert got["model"] == MODEL


def test_the_stream_ends_with_done_and_carries_usage_only_when_asked() -> None:
    events = message_events(anthropic_message([{"type": "text", "text": "hi"}]))
    plain = streamed(events)
    assert plain.endswith(b"data: [DONE]\n\n") and b'"usage"' not in plain
    with_usage = streamed(events, include_usage=True).split(b"\n\n")
    assert with_usage[-3].startswith(b'data: {"id":"chatcmpl-01abc"') and b'"choices":[]' in with_usage[-3]
    assert what_the_sdk_reads(plain)["usage"] is None


def test_tool_arguments_stream_piece_by_piece_with_id_and_name_only_first() -> None:
    events = message_events(TEXT_AND_TOOLS)
    split: List[Event] = []
    for event in events:  # each input_json_delta split into pieces of 3 characters
        delta = event.data.get("delta", {})
        if delta.get("type") == "input_json_delta":
            text = delta["partial_json"]
            split += [Event("content_block_delta", dict(event.data, delta=dict(delta, partial_json=text[i:i + 3])))
                      for i in range(0, len(text), 3)]
        else:
            split.append(event)
    chunks = [json.loads(line[6:]) for line in streamed(split).decode().split("\n\n")
              if line.startswith("data: {")]
    pieces = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
              if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
    firsts = [p for p in pieces if "id" in p]
    assert [(p["index"], p["id"], p["function"]["name"]) for p in firsts] == [(0, "toolu_1", "exec_command"),
                                                                           (1, "toolu_2", "noop")]
    assert len([p for p in pieces if p["index"] == 0]) > 5
    assert what_the_sdk_reads(streamed(split))["calls"] == expected(TEXT_AND_TOOLS)["calls"]


def test_a_tool_call_with_no_argument_deltas_gets_an_empty_object() -> None:
    events = [e for e in message_events(TEXT_AND_TOOLS)
              if not (e.name == "content_block_delta" and e.data["delta"]["type"] == "input_json_delta"
                      and e.data["index"] == 3)]
    assert what_the_sdk_reads(streamed(events))["calls"][1] == {"id": "toolu_2", "name": "noop", "input": {}}


@pytest.mark.parametrize("stop_reason, finish", [("end_turn", "stop"), ("max_tokens", "length"),
                                                 ("refusal", "content_filter"), ("stop_sequence", "stop"),
                                                 ("pause_turn", "stop")])
def test_finish_reasons(stop_reason: str, finish: str) -> None:
    message = anthropic_message([{"type": "text", "text": "a"}], stop_reason)
    assert what_the_sdk_reads(streamed(message_events(message)))["finish"] == finish
    assert anthropic_message_to_chat(message, MODEL, CREATED)["choices"][0]["finish_reason"] == finish


def test_an_error_in_the_stream_is_raised_by_the_sdk_and_ends_the_stream() -> None:
    encoder = ChatStreamEncoder(MODEL, CREATED)
    events = message_events(anthropic_message([{"type": "text", "text": "partial answer"}]))
    data = encoder.encode(events[:3]) + encoder.error("overloaded_error", "upstream overloaded")
    assert encoder.error("api_error", "again") == b"" and encoder.encode(events[3:]) == b"" and encoder.ping() == b""
    assert data.endswith(b'data: {"error":{"message":"upstream overloaded","type":"server_error","param":null,'
                         b'"code":"overloaded"}}\n\n')
    texts = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in sdk(200, data).chat.completions.create(model=MODEL, messages=[], stream=True):
            texts.append(chunk.choices[0].delta.content or "")
    assert "".join(texts) == "partial answer" and caught.value.message == "upstream overloaded"
    assert caught.value.type == "server_error"


def test_an_error_event_from_upstream_ends_the_stream_the_same_way() -> None:
    events = message_events(anthropic_message([{"type": "text", "text": "a"}]))[:2]
    events.append(Event("error", {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}))
    data = streamed(events)
    assert data.endswith(b'"type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}\n\n')
    assert b"[DONE]" not in data


def test_ping_is_an_sse_comment_the_sdk_skips() -> None:
    encoder = ChatStreamEncoder(MODEL, CREATED)
    events = message_events(anthropic_message([{"type": "text", "text": "hello"}]))
    data = encoder.ping() + encoder.encode(events[:2]) + encoder.ping() + encoder.encode(events[2:])
    assert encoder.ping() == b""  # after [DONE]
    assert what_the_sdk_reads(data)["text"] == "hello"


def test_a_whole_message_reads_right_in_the_openai_sdk() -> None:
    body = anthropic_message_to_chat(TEXT_AND_TOOLS, MODEL, CREATED)
    completion = sdk(200, json.dumps(body).encode(), "application/json").chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}])
    message = completion.choices[0].message
    assert completion.id == "chatcmpl-01abc" and completion.object == "chat.completion"
    assert message.content == "I will list the files ✓." and message.model_extra["reasoning_content"] == "Let me look."
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("toolu_1", "exec_command", {"cmd": "ls -la", "n": [1, {"a": None}]}), ("toolu_2", "noop", {})]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage.prompt_tokens == 18 and completion.usage.prompt_tokens_details.cached_tokens == 5
    only_calls = anthropic_message_to_chat(anthropic_message(TEXT_AND_TOOLS["content"][2:], "tool_use"), MODEL, 1)
    assert only_calls["choices"][0]["message"]["content"] is None
    nothing = anthropic_message_to_chat(anthropic_message([]), MODEL, 1)
    assert nothing["choices"][0]["message"]["content"] == ""


@pytest.mark.parametrize("status, error_type, exception, openai_type", [
    (400, "invalid_request_error", openai.BadRequestError, "invalid_request_error"),
    (401, "authentication_error", openai.AuthenticationError, "authentication_error"),
    (403, "permission_error", openai.PermissionDeniedError, "permission_error"),
    (404, "not_found_error", openai.NotFoundError, "not_found_error"),
    (429, "rate_limit_error", openai.RateLimitError, "rate_limit_error"),
    (402, "billing_error", openai.APIStatusError, "insufficient_quota"),
    (502, "api_error", openai.InternalServerError, "server_error"),
    (529, "overloaded_error", openai.InternalServerError, "server_error"),
    (504, "timeout_error", openai.InternalServerError, "server_error"),
    (500, "no_such_type", openai.InternalServerError, "server_error"),
])
def test_errors_in_openai_shape_as_the_sdk_raises_them(status: int, error_type: str, exception: type,
                                                      openai_type: str) -> None:
    body = chat_error_body(status, error_type, "n: only 1 choice per request is supported, got 2")
    assert set(body["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(exception) as caught:
        sdk(status, json.dumps(body).encode(), "application/json").chat.completions.create(model="m", messages=[])
    assert caught.value.type == openai_type
    assert caught.value.message == f"Error code: {status} - {body['error']['message']}"  # the SDK read the message
    assert caught.value.param == ("n" if error_type == "invalid_request_error" else None)


def test_tool_names_anthropic_refuses_travel_made_valid_and_come_back_as_the_client_named_them() -> None:
    # Chat passed them as they were, and an anthropic upstream answered 400
    odd = ["mcp.files.read", "a b", "名前", "x" * 200, "ok_name-1"]
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in odd]
    history = [{"role": "user", "content": "q"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "c1", "type": "function", "function": {"name": "mcp.files.read", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "c1", "content": "r"}]
    body = dict(model="m", messages=history, tools=tools,
                tool_choice={"type": "function", "function": {"name": "名前"}})
    out = translate(body)
    sent = [t["name"] for t in out["tools"]]
    assert all(agproxy._ANTHROPIC_TOOL_NAME.fullmatch(name) for name in sent) and len(set(sent)) == len(odd)
    assert sent[-1] == "ok_name-1"  # a valid name travels as it is
    assert out["messages"][1]["content"][0]["name"] == sent[0]  # the history's call, under the same name
    assert out["tool_choice"] == {"type": "tool", "name": sent[2]}
    names = agproxy.chat_client_tool_names(body)
    assert names == dict(zip(sent[:-1], odd[:-1]))
    calls = anthropic_message([{"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": {}}
                               for i, name in enumerate(sent)], "tool_use")
    whole = anthropic_message_to_chat(calls, MODEL, CREATED, names)
    assert [c["function"]["name"] for c in whole["choices"][0]["message"]["tool_calls"]] == odd
    got = what_the_sdk_reads(ChatStreamEncoder(MODEL, CREATED, names=names).encode(message_events(calls)))
    assert [c["name"] for c in got["calls"]] == odd


def test_a_message_that_names_no_field_has_no_param() -> None:
    assert chat_error_body(400, "invalid_request_error", "request body is not valid JSON: x")["error"]["param"] is None


# -- any batching, any answer ------------------------------------------------------------------------

WORDS = st.text(st.sampled_from("ab ✓\n\"\\{}"), min_size=0, max_size=12)
BLOCK = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, WORDS),
    st.builds(lambda t: {"type": "thinking", "thinking": t, "signature": "s"}, WORDS),
    st.builds(lambda i, name, value: {"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": value},
              st.integers(0, 99), st.sampled_from(["f", "exec_command"]),
              st.dictionaries(st.sampled_from(["a", "cmd"]), st.none() | st.integers() | WORDS, max_size=2)),
    st.just({"type": "redacted_thinking", "data": "opaque"}),
)


@st.composite
def answers(draw: Any) -> tuple:
    """An Anthropic Message, its events (text and arguments in random pieces), and a batching."""
    content = draw(st.lists(BLOCK, max_size=5))
    seen_ids = set()
    for block in content:  # unique tool ids, as a real answer has
        if block["type"] == "tool_use":
            while block["id"] in seen_ids:
                block["id"] += "x"
            seen_ids.add(block["id"])
    message = anthropic_message(content, draw(st.sampled_from(["end_turn", "max_tokens", "tool_use"])))
    events: List[Event] = []
    for event in message_events(message, text_piece_chars=draw(st.integers(0, 4))):
        delta = event.data.get("delta", {}) if event.name == "content_block_delta" else {}
        if delta.get("type") == "input_json_delta":
            text, cut = delta["partial_json"], draw(st.integers(1, 5))
            for i in range(0, len(text), cut):
                events.append(Event("content_block_delta", dict(event.data, delta=dict(
                    delta, partial_json=text[i:i + cut]))))
        else:
            events.append(event)
        if draw(st.integers(0, 9)) == 0:
            events.append(Event("ping", {"type": "ping"}))
    cuts = sorted(draw(st.lists(st.integers(0, len(events)), max_size=6)))
    batches = [events[a:b] for a, b in zip([0] + cuts, cuts + [len(events)])]
    return message, events, batches, draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(answers())
def test_any_batching_gives_the_same_bytes_and_the_sdk_reads_the_answer(case: tuple) -> None:
    message, events, batches, include_usage = case
    whole = streamed(events, include_usage)
    encoder = ChatStreamEncoder(MODEL, CREATED, include_usage)
    assert b"".join(encoder.encode(batch) for batch in batches) == whole
    got = what_the_sdk_reads(whole)
    assert {k: got[k] for k in ("text", "reasoning", "calls", "finish")} == expected(message)
    assert (got["usage"] is not None) == include_usage


# -- real servers' streams, through an upstream translator and back ---------------------------------

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "real-streams" / "fixtures"
REAL_STREAMS = sorted(p.stem for p in REAL.glob("*.json") if json.loads(p.read_text()).get("stream")) \
    if REAL.is_dir() else []


@pytest.mark.skipif(not REAL_STREAMS, reason="../shared/real-streams is not here (a user's clone)")
@pytest.mark.parametrize("name", REAL_STREAMS)
def test_real_streams_come_back_to_an_openai_client_as_the_server_said(name: str) -> None:
    recording = json.loads((REAL / f"{name}.json").read_text())
    translator = agproxy.OpenAIStreamTranslator("m")
    events: List[Event] = []
    for chunk in recording["chunks"]:
        events += translator.feed(chunk)
    events += translator.finish()
    got = what_the_sdk_reads(streamed(events, include_usage=True))
    want = recording["expect"]
    assert got["text"] == want["text"] and got["reasoning"] == want["thinking"]
    assert [{"name": c["name"], "input": c["input"]} for c in got["calls"]] == want["tool_calls"]
    assert got["finish"] == {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                             "refusal": "content_filter", "stop_sequence": "stop"}[want["stop_reason"]]
    if "usage" in want:
        assert got["usage"]["completion_tokens"] == want["usage"]["output_tokens"]
        assert got["usage"]["prompt_tokens"] == want["usage"]["prompt_tokens"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=5))
def test_a_text_delta_s_chunk_is_the_json_of_its_piece_however_the_text_reads(texts):
    encoder = agproxy.ChatStreamEncoder("m", 7)
    start = agproxy.Event("message_start", {"type": "message_start", "message": {"id": "msg_1", "usage": {}}})
    head = encoder.encode([start])
    deltas = [agproxy.delta_event(0, "text_delta", "text", text, relayed) for text, relayed in
              zip(texts, [True, False] * len(texts))]
    written = encoder.encode(deltas)
    assert head.startswith(b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m",')

    def chunk(text: str) -> bytes:
        body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
                "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}]}
        return f"data: {json.dumps(body, separators=(',', ':'), ensure_ascii=False)}\n\n".encode("utf-8", "replace")

    assert written == b"".join(chunk(text) for text in texts)
