"""The Gemini client dialect (issue 21), pure: a ``generateContent`` request as Gemini CLI sends
it in the internal Anthropic form (every output checked by ``validate_messages_request``; any JSON
in is a clean 400 or a valid body), the internal events as a ``streamGenerateContent`` stream (SSE
and JSON array: the same bytes for any batching of the events), a whole Message as a
``GenerateContentResponse``, thought signatures that carry the thinking there and back, errors,
counts and the model list in Gemini's shapes. The judge of what comes out is the google-genai SDK
itself, reading from an ``httpx2.MockTransport`` (no socket), and the line rule of the SDK bundled
in Gemini CLI 0.61.0; the recorded real Gemini streams of ``../shared/real-streams-gemini/`` go
through the upstream translator and this encoder back to a client, where that directory is present."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import httpx2
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from hypothesis import given, settings
from hypothesis import strategies as st

import agproxy
from agproxy import (
    Event,
    GeminiStreamEncoder,
    InvalidRequest,
    anthropic_message_to_gemini,
    gemini_client_tool_names,
    gemini_count_json,
    gemini_count_request_to_anthropic,
    gemini_error_body,
    gemini_include_thoughts,
    gemini_models_list,
    gemini_request_to_anthropic,
    message_events,
    validate_messages_request,
)

MODEL = "models/claude-sonnet-4-6"
PNG = "iVBORw0KGgo="
READ = {"name": "mcp.fs:read"}  # a name Anthropic refuses (MCP tools may have them)
READ_TRAVELS_AS = agproxy._anthropic_tool_name("mcp.fs:read")
SHELL = {"name": "run_shell_command", "description": "Runs a command.",
         "parametersJsonSchema": {"type": "object", "properties": {"command": {"type": "string"}},
                                  "required": ["command"]}}


def translate(body: Dict[str, Any], stream: bool = False, notes: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """The internal form, which must always be a valid Anthropic request."""
    out = gemini_request_to_anthropic(copy.deepcopy(body), MODEL, stream=stream, notes=notes)
    validate_messages_request(out)
    return out


def refused(body: Dict[str, Any], model: str = MODEL) -> str:
    with pytest.raises(InvalidRequest) as caught:
        gemini_request_to_anthropic(body, model)
    assert caught.value.status == 400
    return caught.value.message


def user(*parts: Dict[str, Any]) -> Dict[str, Any]:
    return {"role": "user", "parts": list(parts)}


def model_turn(*parts: Dict[str, Any]) -> Dict[str, Any]:
    return {"role": "model", "parts": list(parts)}


def cli_turn(call_id: str = "toolu_01", signature: str = "skip_thought_signature_validator") -> Dict[str, Any]:
    """A tool loop as Gemini CLI 0.61.0 sends it: the call's id prefixed with its name, the
    synthetic signature on the first call, the result as ``{"output": ...}``."""
    return copy.deepcopy({
        "contents": [
            user({"text": "list the files"}),
            model_turn({"text": "Listing."}, {"functionCall": {"id": f"run_shell_command__{call_id}",
                                                               "name": "run_shell_command", "args": {"command": "ls"}},
                                              "thoughtSignature": signature}),
            user({"functionResponse": {"id": f"run_shell_command__{call_id}", "name": "run_shell_command",
                                       "response": {"output": "a.txt\nb.txt"}}}),
        ],
        "systemInstruction": {"role": "user", "parts": [{"text": "You are an agent."}, {"text": "Be brief."}]},
        "tools": [{"functionDeclarations": [SHELL]}],
        "generationConfig": {"temperature": 1, "topP": 0.95, "topK": 64,
                             "thinkingConfig": {"includeThoughts": True, "thinkingLevel": "HIGH"}},
    })


# -- the request ---------------------------------------------------------------------------------

def test_a_gemini_cli_tool_loop_becomes_alternating_turns_with_the_ids_the_upstream_made() -> None:
    notes: Dict[str, int] = {}
    out = translate(cli_turn(), stream=True, notes=notes)
    assert out["model"] == "claude-sonnet-4-6" and out["stream"] is True
    assert out["system"] == "You are an agent.\nBe brief."
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][1]["content"] == [
        {"type": "text", "text": "Listing."},
        {"type": "tool_use", "id": "toolu_01", "name": "run_shell_command", "input": {"command": "ls"}}]
    assert out["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "toolu_01",
                                              "content": [{"type": "text", "text": "a.txt\nb.txt"}]}]
    assert out["tools"] == [{"name": "run_shell_command", "description": "Runs a command.",
                             "input_schema": SHELL["parametersJsonSchema"]}]
    # the turn answers calls whose thinking is lost (the synthetic signature stands for none): no thinking
    assert "thinking" not in out and notes["thinking_dropped"] == 1
    assert "foreign_thought_signature_dropped" not in notes
    assert out["temperature"] == 1 and "top_p" not in out and out["top_k"] == 64  # never temperature with top_p


def test_a_first_turn_thinks_and_keeps_only_the_sampling_anthropic_takes_with_thinking() -> None:
    body = cli_turn()
    body["contents"] = body["contents"][:1]
    out = translate(body)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 24576}
    assert out["max_tokens"] == agproxy.GEMINI_CLIENT_DEFAULT_MAX_TOKENS + 24576
    assert out["top_p"] == 0.95 and "temperature" not in out and "top_k" not in out


def test_results_go_first_in_their_turn_and_same_role_turns_merge() -> None:
    out = translate({"contents": [
        user({"text": "a"}), user({"text": "b"}),
        model_turn({"functionCall": {"name": "f", "args": {}, "id": "c1"}},
                   {"functionCall": {"name": "g", "args": {"x": 1}, "id": "c2"}}),
        user({"text": "and then"}, {"functionResponse": {"name": "g", "id": "c2", "response": {"error": "boom"}}},
             {"functionResponse": {"name": "f", "id": "c1", "response": {"files": [1, 2]}}}),
    ]})
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert [b["text"] for b in out["messages"][0]["content"]] == ["a", "b"]
    last = out["messages"][2]["content"]
    assert [b["type"] for b in last] == ["tool_result", "tool_result", "text"]
    assert last[0] == {"type": "tool_result", "tool_use_id": "c2", "content": [{"type": "text", "text": "boom"}],
                       "is_error": True}
    assert last[1]["content"] == [{"type": "text", "text": '{"files":[1,2]}'}]


def test_calls_and_responses_without_ids_are_paired_by_name_then_order() -> None:
    out = translate({"contents": [
        user({"text": "go"}),
        model_turn({"functionCall": {"name": "f", "args": {}}}, {"functionCall": {"name": "g", "args": {}}}),
        user({"functionResponse": {"name": "g", "response": {"output": "G"}}},
             {"functionResponse": {"name": "f", "response": {"output": "F"}}}),
    ]})
    calls = [b["id"] for b in out["messages"][1]["content"]]
    assert len(set(calls)) == 2
    results = {b["content"][0]["text"]: b["tool_use_id"] for b in out["messages"][2]["content"]}
    assert results == {"F": calls[0], "G": calls[1]}
    assert "needed" in refused({"contents": [user({"functionResponse": {"name": "f", "response": {}}})]})


def test_names_and_ids_anthropic_refuses_travel_under_valid_ones_and_come_back() -> None:
    body = {"contents": [user({"text": "x"}), model_turn({"functionCall": {"name": "mcp.fs:read", "args": {},
                                                                             "id": "mcp.fs:read__a.b"}}),
                         user({"functionResponse": {"name": "mcp.fs:read", "id": "mcp.fs:read__a.b",
                                                    "response": {"output": "ok"}}})],
            "tools": [{"functionDeclarations": [{"name": "mcp.fs:read"}]}]}
    out = translate(body)
    name = out["tools"][0]["name"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name) and name.startswith("mcp_fs_read_")
    call = out["messages"][1]["content"][0]
    assert call["name"] == name and re.fullmatch(r"[A-Za-z0-9_-]+", call["id"])
    assert out["messages"][2]["content"][0]["tool_use_id"] == call["id"]
    assert gemini_client_tool_names(body) == {name: "mcp.fs:read"}


def test_gemini_schema_becomes_json_schema() -> None:
    parameters = {"type": "OBJECT", "propertyOrdering": ["a", "b"], "required": ["a"], "properties": {
        "a": {"type": "STRING", "enum": ["x", "y"], "format": "enum", "nullable": True, "example": "x"},
        "b": {"type": "ARRAY", "minItems": "1", "items": {"type": "INTEGER", "format": "int64"}},
        "c": {"anyOf": [{"type": "NUMBER"}, {"type": "BOOLEAN"}], "description": "either"}}}
    out = translate({"contents": [user({"text": "x"})],
                     "tools": [{"functionDeclarations": [{"name": "f", "parameters": parameters}]}]})
    assert out["tools"][0]["input_schema"] == {"type": "object", "required": ["a"], "properties": {
        "a": {"type": ["string", "null"], "enum": ["x", "y"], "examples": ["x"]},
        "b": {"type": "array", "minItems": 1, "items": {"type": "integer", "format": "int64"}},
        "c": {"description": "either", "anyOf": [{"type": "number"}, {"type": "boolean"}]}}}
    assert "parameters" in refused({"contents": [user({"text": "x"})], "tools": [{"functionDeclarations": [
        {"name": "f", "parameters": {"type": "STRING"}}]}]})
    assert "not both" in refused({"contents": [user({"text": "x"})], "tools": [{"functionDeclarations": [
        {"name": "f", "parameters": {"type": "OBJECT"}, "parametersJsonSchema": {"type": "object"}}]}]})


def test_google_tools_are_dropped_with_a_note_and_a_function_without_parameters_takes_an_empty_object() -> None:
    notes: Dict[str, int] = {}
    out = translate({"contents": [user({"text": "x"})], "tools": [
        {"googleSearch": {}}, {"codeExecution": {}}, {"functionDeclarations": [{"name": "now"}]}]}, notes=notes)
    assert out["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]
    assert notes["googleSearch_dropped"] == 1 and notes["codeExecution_dropped"] == 1


@pytest.mark.parametrize("config, tools, choice", [
    ({"mode": "AUTO"}, ["f", "g"], None),
    ({"mode": "ANY"}, ["f", "g"], {"type": "any"}),
    ({"mode": "ANY", "allowedFunctionNames": ["g"]}, ["g"], {"type": "tool", "name": "g"}),
    ({"mode": "ANY", "allowedFunctionNames": ["f", "g"]}, ["f", "g"], {"type": "any"}),
    ({"mode": "NONE"}, ["f", "g"], {"type": "none"}),
    ({"mode": "VALIDATED"}, ["f", "g"], None),
])
def test_tool_config_becomes_tool_choice(config: Dict[str, Any], tools: List[str], choice: Any) -> None:
    out = translate({"contents": [user({"text": "x"})],
                     "tools": [{"functionDeclarations": [{"name": "f"}, {"name": "g"}]}],
                     "toolConfig": {"functionCallingConfig": config},
                     "generationConfig": {"thinkingConfig": {"thinkingBudget": 2048}}})
    assert [t["name"] for t in out["tools"]] == tools
    assert out.get("tool_choice") == choice
    assert ("thinking" in out) == (choice is None or choice["type"] == "none")  # a forced call goes without


@pytest.mark.parametrize("thinking, limit, budget, max_tokens", [
    ({"thinkingBudget": 4096}, None, 4096, agproxy.GEMINI_CLIENT_DEFAULT_MAX_TOKENS + 4096),
    ({"thinkingBudget": -1}, None, 8192, agproxy.GEMINI_CLIENT_DEFAULT_MAX_TOKENS + 8192),
    ({"thinkingBudget": 100}, None, 1024, agproxy.GEMINI_CLIENT_DEFAULT_MAX_TOKENS + 1024),
    ({"thinkingBudget": 0}, None, None, agproxy.GEMINI_CLIENT_DEFAULT_MAX_TOKENS),
    ({"thinkingLevel": "low"}, 10000, 2048, 10000),
    ({"thinkingLevel": "HIGH"}, 10000, 5000, 10000),
    ({"thinkingLevel": "MINIMAL"}, None, None, agproxy.GEMINI_CLIENT_DEFAULT_MAX_TOKENS),
    ({"includeThoughts": True}, 1500, None, 1500),
    ({"includeThoughts": True}, None, 8192, agproxy.GEMINI_CLIENT_DEFAULT_MAX_TOKENS + 8192),
])
def test_thinking_config_and_the_answer_limit(thinking: Dict[str, Any], limit: Optional[int], budget: Optional[int],
                                              max_tokens: int) -> None:
    config: Dict[str, Any] = {"thinkingConfig": thinking}
    if limit is not None:
        config["maxOutputTokens"] = limit
    out = translate({"contents": [user({"text": "x"})], "generationConfig": config})
    assert out.get("thinking", {}).get("budget_tokens") == budget
    assert out["max_tokens"] == max_tokens


def test_thoughts_not_asked_for_are_omitted_and_not_shown() -> None:
    body = {"contents": [user({"text": "x"})],
            "generationConfig": {"thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": False}}}
    assert translate(body)["thinking"] == {"type": "enabled", "budget_tokens": 2048, "display": "omitted"}
    assert gemini_include_thoughts(body) is False
    assert gemini_include_thoughts(cli_turn()) is True


@pytest.mark.parametrize("config, schema", [
    ({"responseMimeType": "application/json", "responseJsonSchema": {"type": "object", "properties": {
        "reasoning": {"type": "string"}, "model_choice": {"type": "string", "enum": ["flash", "pro"]}}}},
     {"type": "object", "properties": {"reasoning": {"type": "string"},
                                       "model_choice": {"type": "string", "enum": ["flash", "pro"]}}}),
    ({"responseMimeType": "application/json", "responseSchema": {"type": "OBJECT", "properties": {
        "n": {"type": "INTEGER"}}}}, {"type": "object", "properties": {"n": {"type": "integer"}}}),
    ({"responseMimeType": "application/json"}, {"type": "object"}),
    ({"responseMimeType": "text/plain"}, None),
])
def test_a_json_response_becomes_structured_output(config: Dict[str, Any], schema: Any) -> None:
    out = translate({"contents": [user({"text": "x"})], "generationConfig": config})
    assert out.get("output_config") == (None if schema is None else {"format": {"type": "json_schema",
                                                                                  "schema": schema}})


@pytest.mark.parametrize("fields, words", [
    ({"generationConfig": {"candidateCount": 2}}, "generationConfig.candidateCount: only 1 candidate"),
    ({"generationConfig": {"responseMimeType": "text/x.enum"}}, "generationConfig.responseMimeType"),
    ({"generationConfig": {"responseJsonSchema": {"type": "object"}}}, "must be application/json"),
    ({"generationConfig": {"thinkingConfig": {"thinkingBudget": 1024, "thinkingLevel": "LOW"}}}, "cannot both"),
    ({"generationConfig": {"thinkingConfig": {"thinkingLevel": "huge"}}}, "thinkingLevel"),
    ({"generationConfig": {"maxOutputTokens": 0}}, "generationConfig.maxOutputTokens"),
    ({"generationConfig": {"temperature": 3}}, "generationConfig.temperature"),
    ({"cachedContent": "cachedContents/abc"}, "cachedContent"),
    ({"toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}}, "mode"),
    ({"contents": []}, "contents"),
    ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "contents[0].role"),
    ({"contents": [user({"text": "x", "inlineData": {}})]}, "contents[0].parts[0]: must hold exactly one"),
    ({"contents": [user({"inlineData": {"mimeType": "audio/wav", "data": "AAAA"}})]},
     "contents[0].parts[0].inlineData.mimeType"),
    ({"contents": [user({"fileData": {"mimeType": "image/png",
                                      "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/x"}})]},
     "files uploaded to Google"),
    ({"contents": [user({"fileData": {"mimeType": "image/png", "fileUri": "gs://bucket/a.png"}})]}, "fileUri"),
    ({"systemInstruction": {"parts": [{"inlineData": {"mimeType": "image/png", "data": PNG}}]}},
     "systemInstruction.parts[0]"),
])
def test_what_cannot_be_carried_is_a_400_naming_the_field(fields: Dict[str, Any], words: str) -> None:
    body = dict({"contents": [user({"text": "x"})]}, **fields)
    assert words in refused(body)


def test_the_model_comes_from_the_path() -> None:
    assert gemini_request_to_anthropic({"contents": [user({"text": "x"})]}, "gemini-3-pro")["model"] == "gemini-3-pro"
    assert "model" in refused({"contents": [user({"text": "x"})]}, model="")
    assert "model" in refused({"contents": [user({"text": "x"})]}, model="models/" + "m" * 300)


def test_media_inline_and_by_url() -> None:
    text = base64.b64encode("héllo".encode()).decode()
    out = translate({"contents": [user(
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo_-w"}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
        {"inlineData": {"mimeType": "text/plain; charset=utf-8", "data": text}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/a.jpg"}},
        {"fileData": {"mimeType": "application/pdf", "fileUri": "https://example.com/a.pdf"}})]})
    blocks = out["messages"][0]["content"]
    assert blocks[0] == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                     "data": "iVBORw0KGgo/+w=="}}
    assert blocks[1]["type"] == "document" and blocks[1]["source"]["media_type"] == "application/pdf"
    assert blocks[2]["source"] == {"type": "text", "media_type": "text/plain", "data": "héllo"}
    assert blocks[3]["source"] == {"type": "url", "url": "https://example.com/a.jpg"}
    assert blocks[4] == {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}


def test_images_a_tool_returned_go_with_its_result() -> None:
    out = translate({"contents": [
        user({"text": "look"}), model_turn({"functionCall": {"name": "read", "args": {}, "id": "c"}}),
        user({"functionResponse": {"name": "read", "id": "c", "response": {"output": "an image"},
                                   "parts": [{"inlineData": {"mimeType": "image/png", "data": PNG}}]}},
             {"inlineData": {"mimeType": "image/png", "data": PNG}})]})
    result, image = out["messages"][2]["content"]
    assert [b["type"] for b in result["content"]] == ["text", "image"] and image["type"] == "image"


def test_thought_parts_in_the_history_are_left_out() -> None:
    notes: Dict[str, int] = {}
    out = translate({"contents": [user({"text": "x"}), model_turn({"text": "musing", "thought": True},
                                                                   {"text": "answer"}), user({"text": "y"})]},
                    notes=notes)
    assert out["messages"][1]["content"] == [{"type": "text", "text": "answer"}]
    assert notes["thought_part_dropped"] == 1


def test_a_conversation_that_opens_with_the_model_gets_a_user_turn_first() -> None:
    out = translate({"contents": [model_turn({"text": "hello"}), user({"text": "hi"})]})
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]


def test_count_tokens_takes_contents_or_a_whole_request() -> None:
    plain = gemini_count_request_to_anthropic({"contents": [user({"text": "x"})]}, MODEL)
    validate_messages_request(plain, count_tokens=True)
    assert plain == {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": [{"type": "text",
                                                                                              "text": "x"}]}]}
    whole = gemini_count_request_to_anthropic({"generateContentRequest": dict(cli_turn(), model=MODEL)}, MODEL)
    validate_messages_request(whole, count_tokens=True)
    assert set(whole) == {"model", "system", "messages", "tools"}
    assert gemini_count_json({"input_tokens": 10, "cache_read_input_tokens": 5}) == {"totalTokens": 15}


# -- any JSON in: a clean 400 or a valid body ---------------------------------------------------

WORDS = ["user", "model", "OBJECT", "STRING", "ANY", "NONE", "application/json", "image/png", "HIGH", PNG]
JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 70000)
                    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12) | st.sampled_from(WORDS),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)
FIELDS = ["contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "cachedContent"]


def _paths(value: Any, path: tuple = ()) -> List[tuple]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, path + (index,))
    return found


@st.composite
def mutated(draw: Any) -> Dict[str, Any]:
    """Gemini CLI's tool loop with one place (any depth) replaced by any JSON."""
    body = cli_turn()
    body["generationConfig"]["responseMimeType"] = "application/json"
    body["generationConfig"]["responseJsonSchema"] = {"type": "object"}
    path = draw(st.sampled_from(_paths(body)[1:]))
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = draw(JSON)
    return body


def _clean_400_or_valid(body: Any) -> None:
    try:
        out = gemini_request_to_anthropic(body, MODEL, stream=True)
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.message
        return
    validate_messages_request(out)
    count = gemini_count_request_to_anthropic(body, MODEL)
    validate_messages_request(count, count_tokens=True)


@settings(max_examples=500, deadline=None)
@given(mutated())
def test_any_request_is_a_clean_400_or_a_valid_anthropic_body(body: Dict[str, Any]) -> None:
    _clean_400_or_valid(body)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=4))
def test_any_json_at_all_is_a_clean_400_or_a_valid_body(body: Dict[str, Any]) -> None:
    _clean_400_or_valid(body)


# -- the stream ----------------------------------------------------------------------------------

def start(message_id: str = "msg_01abc", input_tokens: int = 12) -> Event:
    return Event("message_start", {"type": "message_start", "message": {
        "id": message_id, "type": "message", "role": "assistant", "model": "m", "content": [],
        "stop_reason": None, "usage": {"input_tokens": input_tokens, "output_tokens": 1,
                                       "cache_read_input_tokens": 3}}})


def block(index: int, content: Dict[str, Any]) -> Event:
    return Event("content_block_start", {"type": "content_block_start", "index": index, "content_block": content})


def delta(index: int, payload: Dict[str, Any]) -> Event:
    return Event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": payload})


def stop(index: int) -> Event:
    return Event("content_block_stop", {"type": "content_block_stop", "index": index})


def end(stop_reason: str = "end_turn", output_tokens: int = 40) -> List[Event]:
    return [Event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason},
                                    "usage": {"output_tokens": output_tokens}}),
            Event("message_stop", {"type": "message_stop"})]


def thinking_then_calls() -> List[Event]:
    """Thinking, text, two tool calls (arguments in pieces), as an Anthropic upstream streams them."""
    return [start(), block(0, {"type": "thinking", "thinking": "", "signature": ""}),
            delta(0, {"type": "thinking_delta", "thinking": "Let me "}),
            delta(0, {"type": "thinking_delta", "thinking": "look."}),
            delta(0, {"type": "signature_delta", "signature": "EqQBsig"}), stop(0),
            block(1, {"type": "text", "text": ""}), delta(1, {"type": "text_delta", "text": "Listing "}),
            Event("ping", {"type": "ping"}), delta(1, {"type": "text_delta", "text": "files."}), stop(1),
            block(2, {"type": "tool_use", "id": "toolu_A", "name": "run_shell_command", "input": {}}),
            delta(2, {"type": "input_json_delta", "partial_json": '{"comm'}),
            delta(2, {"type": "input_json_delta", "partial_json": 'and": "ls"}'}), stop(2),
            block(3, {"type": "tool_use", "id": "toolu_B", "name": READ_TRAVELS_AS, "input": {}}),
            delta(3, {"type": "input_json_delta", "partial_json": '{"path": "a"}'}), stop(3)] + end("tool_use")


def sdk_client(body: bytes, status: int = 200, content_type: str = "text/event-stream") -> genai.Client:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, content=body, headers={"content-type": content_type})

    return genai.Client(api_key="agp-test", http_options=types.HttpOptions(
        base_url="http://agproxy.test", httpx_client=httpx2.Client(transport=httpx2.MockTransport(answer))))


def sdk_stream(body: bytes) -> List[types.GenerateContentResponse]:
    return list(sdk_client(body).models.generate_content_stream(model="claude-sonnet-4-6", contents="hi"))


def cli_lines(body: bytes) -> List[Dict[str, Any]]:
    """The chunks as the SDK bundled in Gemini CLI 0.61.0 reads them: ``^\\s*data: (.*)`` and a
    blank line, from the start of what is left; whatever is left at the end must be whitespace."""
    rule = re.compile(r"^\s*data: (.*)(?:\n\n|\r\r|\r\n\r\n)")
    buffer, chunks = body.decode(), []
    match = rule.match(buffer)
    while match:
        chunks.append(json.loads(match.group(1)))
        buffer = buffer[match.end():]
        match = rule.match(buffer)
    assert not buffer.strip(), f"Gemini CLI would stop here: {buffer[:80]!r}"
    return chunks


def test_thinking_text_and_calls_read_right_in_the_sdk_and_in_gemini_cli() -> None:
    names = gemini_client_tool_names({"tools": [{"functionDeclarations": [SHELL, READ]}]})
    assert names == {READ_TRAVELS_AS: "mcp.fs:read"}
    encoder = GeminiStreamEncoder("claude-sonnet-4-6", names=names)
    body = encoder.ping() + encoder.encode(thinking_then_calls()) + encoder.ping()
    chunks = sdk_stream(body)
    assert [c.response_id for c in chunks] == ["01abc"] * len(chunks)
    assert {c.model_version for c in chunks} == {"claude-sonnet-4-6"}
    parts = [p for c in chunks for p in c.candidates[0].content.parts]
    assert "".join(p.text for p in parts if p.thought) == "Let me look."
    assert "".join(p.text for p in parts if p.text and not p.thought) == "Listing files."
    calls = [p for p in parts if p.function_call]
    assert [(p.function_call.id, p.function_call.name, p.function_call.args) for p in calls] == [
        ("toolu_A", "run_shell_command", {"command": "ls"}), ("toolu_B", "mcp.fs:read", {"path": "a"})]
    assert calls[0].thought_signature and calls[1].thought_signature is None  # the first call of the step
    last = chunks[-1]
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    usage = last.usage_metadata
    assert (usage.prompt_token_count, usage.cached_content_token_count, usage.total_token_count) == (15, 3, 55)
    assert usage.candidates_token_count + usage.thoughts_token_count == 40 and usage.thoughts_token_count > 0
    dumped = [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in chunks]
    assert [c["candidates"][0]["content"]["parts"] for c in cli_lines(body)] == \
        [c["candidates"][0]["content"].get("parts", []) for c in dumped]


def test_the_signature_a_client_sends_back_brings_the_thinking_back_before_its_step() -> None:
    encoder = GeminiStreamEncoder("m", names={READ_TRAVELS_AS: "mcp.fs:read"})
    chunks = cli_lines(encoder.encode(thinking_then_calls()))
    parts: List[Dict[str, Any]] = []
    # Gemini CLI drops thought parts, joins text parts, keeps the call parts (and their signatures),
    # renames the ids, and answers them
    for part in (p for c in chunks for p in c["candidates"][0]["content"]["parts"] if not p.get("thought")):
        if parts and "text" in parts[-1] and "text" in part:
            parts[-1]["text"] += part["text"]
        else:
            parts.append(part)
    for part in parts:
        if "functionCall" in part:
            part["functionCall"]["id"] = f"{part['functionCall']['name']}__{part['functionCall']['id']}"
    history = {"contents": [user({"text": "go"}), model_turn(*parts), user(*[
        {"functionResponse": {"id": p["functionCall"]["id"], "name": p["functionCall"]["name"],
                              "response": {"output": "done"}}} for p in parts if "functionCall" in p])],
        "tools": [{"functionDeclarations": [SHELL, READ]}],
        "generationConfig": {"thinkingConfig": {"includeThoughts": True, "thinkingBudget": 2048}}}
    notes: Dict[str, int] = {}
    out = translate(history, notes=notes)
    assert out["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "Let me look.", "signature": "EqQBsig"},
        {"type": "text", "text": "Listing files."},
        {"type": "tool_use", "id": "toolu_A", "name": "run_shell_command", "input": {"command": "ls"}},
        {"type": "tool_use", "id": "toolu_B", "name": READ_TRAVELS_AS, "input": {"path": "a"}}]
    assert [b["tool_use_id"] for b in out["messages"][2]["content"]] == ["toolu_A", "toolu_B"]
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 2048}  # the loop's thinking is whole again
    assert notes["thinking_restored"] == 1


def test_a_signature_not_made_here_is_dropped_cleanly() -> None:
    notes: Dict[str, int] = {}
    body = cli_turn(signature=base64.b64encode(b"a real Gemini signature").decode())
    out = translate(body, notes=notes)
    assert [b["type"] for b in out["messages"][1]["content"]] == ["text", "tool_use"]
    assert notes["foreign_thought_signature_dropped"] == 1
    body = cli_turn(signature=base64.b64encode(agproxy._GEMINI_PACKED_THINKING + b"[{]").decode())
    assert [b["type"] for b in translate(body)["messages"][1]["content"]] == ["text", "tool_use"]


def test_without_alt_sse_the_stream_is_one_json_array_written_as_it_goes() -> None:
    encoder = GeminiStreamEncoder("m", sse=False)
    events = thinking_then_calls()
    pieces = [encoder.ping()] + [encoder.encode([event]) for event in events]
    body = b"".join(pieces)
    assert body.startswith(b"[") and body.endswith(b"]")
    array = json.loads(body)
    encoder_sse = GeminiStreamEncoder("m")
    assert array == cli_lines(encoder_sse.encode(events))


def test_thoughts_not_asked_for_are_not_shown_but_still_ride_in_the_signature() -> None:
    chunks = cli_lines(GeminiStreamEncoder("m", include_thoughts=False).encode(thinking_then_calls()))
    parts = [p for c in chunks for p in c["candidates"][0]["content"]["parts"]]
    assert not any(p.get("thought") for p in parts)
    signature = next(p["thoughtSignature"] for p in parts if "thoughtSignature" in p)
    assert base64.urlsafe_b64decode(signature).startswith(agproxy._GEMINI_PACKED_THINKING)


@pytest.mark.parametrize("stop_reason, finish", [("end_turn", "STOP"), ("tool_use", "STOP"),
                                                 ("max_tokens", "MAX_TOKENS"), ("stop_sequence", "STOP"),
                                                 ("refusal", "SAFETY"), ("pause_turn", "STOP")])
def test_finish_reasons(stop_reason: str, finish: str) -> None:
    chunks = cli_lines(GeminiStreamEncoder("m").encode([start()] + end(stop_reason)))
    assert chunks[-1]["candidates"][0]["finishReason"] == finish


@pytest.mark.parametrize("sse", [True, False])
def test_an_error_in_the_stream_is_raised_by_the_sdk_and_ends_the_stream(sse: bool) -> None:
    encoder = GeminiStreamEncoder("m", sse=sse)
    body = encoder.encode(thinking_then_calls()[:8]) + encoder.error("overloaded_error", "Overloaded")
    assert encoder.error("api_error", "again") == b"" and encoder.encode(end()) == b"" and encoder.ping() == b""
    if sse:
        with pytest.raises(genai_errors.ServerError) as caught:
            sdk_stream(body)
        assert caught.value.code == 529 and caught.value.status == "UNAVAILABLE"
        assert body.endswith(b'{"error":{"code":529,"message":"Overloaded","status":"UNAVAILABLE"}}\n')
    else:
        assert json.loads(body)[-1] == {"error": {"code": 529, "message": "Overloaded", "status": "UNAVAILABLE"}}


def test_an_error_event_from_upstream_ends_the_stream_the_same_way() -> None:
    encoder = GeminiStreamEncoder("m")
    body = encoder.encode([start(), Event("error", {"type": "error", "error": {"type": "rate_limit_error",
                                                                              "message": "slow down"}})])
    assert encoder.ended
    with pytest.raises(genai_errors.ClientError) as caught:
        sdk_stream(body)
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"


def test_a_whole_message_reads_right_in_the_sdk() -> None:
    message = {"id": "msg_xyz", "type": "message", "role": "assistant", "model": "m", "stop_reason": "tool_use",
               "content": [{"type": "thinking", "thinking": "hmm", "signature": "s1"},
                           {"type": "text", "text": "Checking."},
                           {"type": "tool_use", "id": "toolu_Z", "name": "run_shell_command",
                            "input": {"command": "ls"}}],
               "usage": {"input_tokens": 7, "output_tokens": 9}}
    answer = anthropic_message_to_gemini(message, "claude-x")
    response = sdk_client(json.dumps(answer).encode(), content_type="application/json").models.generate_content(
        model="claude-x", contents="hi")
    parts = response.candidates[0].content.parts
    assert [(p.text, p.thought) for p in parts[:2]] == [("hmm", True), ("Checking.", None)]
    assert parts[2].function_call.id == "toolu_Z" and parts[2].thought_signature
    assert response.candidates[0].finish_reason == types.FinishReason.STOP and response.response_id == "xyz"
    assert response.usage_metadata.total_token_count == 16 and response.model_version == "claude-x"
    # and the same parts as the stream of it gives, joined
    assert answer["candidates"][0]["content"]["parts"] == [
        p for c in cli_lines(GeminiStreamEncoder("claude-x").encode(message_events(message)))
        for p in c["candidates"][0]["content"]["parts"]]


@pytest.mark.parametrize("status, error_type, exception, name", [
    (400, "invalid_request_error", genai_errors.ClientError, "INVALID_ARGUMENT"),
    (401, "authentication_error", genai_errors.ClientError, "UNAUTHENTICATED"),
    (403, "permission_error", genai_errors.ClientError, "PERMISSION_DENIED"),
    (404, "not_found_error", genai_errors.ClientError, "NOT_FOUND"),
    (413, "request_too_large", genai_errors.ClientError, "INVALID_ARGUMENT"),
    (424, "api_error", genai_errors.ClientError, "FAILED_PRECONDITION"),
    (429, "rate_limit_error", genai_errors.ClientError, "RESOURCE_EXHAUSTED"),
    (502, "api_error", genai_errors.ServerError, "INTERNAL"),
    (529, "overloaded_error", genai_errors.ServerError, "UNAVAILABLE"),
])
def test_errors_in_gemini_shape_as_the_sdk_raises_them(status: int, error_type: str, exception: type,
                                                       name: str) -> None:
    body = gemini_error_body(status, error_type, "what went wrong")
    assert body == {"error": {"code": status, "message": "what went wrong", "status": name}}
    with pytest.raises(exception) as caught:
        sdk_client(json.dumps(body).encode(), status, "application/json").models.generate_content(
            model="m", contents="hi")
    assert caught.value.code == status and caught.value.status == name and caught.value.message == "what went wrong"


def test_the_model_list_in_gemini_shape_reads_in_the_sdk() -> None:
    listed = gemini_models_list([{"type": "model", "id": "claude-sonnet-4-6", "display_name": "Claude Sonnet 4.6"},
                                 "gemini-3-pro"])
    assert listed["models"][0] == {"name": "models/claude-sonnet-4-6", "version": "001",
                                   "displayName": "Claude Sonnet 4.6",
                                   "supportedGenerationMethods": ["generateContent", "streamGenerateContent",
                                                                  "countTokens"],
                                   "inputTokenLimit": 200_000, "outputTokenLimit": 64_000}
    assert listed["models"][1]["inputTokenLimit"] == 1_048_576
    models = list(sdk_client(json.dumps(listed).encode(), content_type="application/json").models.list())
    assert [m.name for m in models] == ["models/claude-sonnet-4-6", "models/gemini-3-pro"]


# -- any batching gives the same bytes ------------------------------------------------------------

@st.composite
def answers(draw: Any) -> tuple:
    """An answer's events (text, thinking, redacted thinking and tool calls in any order, pieces of
    any size), how they are batched, and how it ends."""
    events = [start()]
    for index in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["text", "thinking", "redacted", "tool"]))
        if kind == "redacted":
            events += [block(index, {"type": "redacted_thinking", "data": draw(st.text(max_size=10))}), stop(index)]
            continue
        opening = {"text": {"type": "text", "text": ""}, "thinking": {"type": "thinking", "thinking": "",
                                                                     "signature": ""},
                   "tool": {"type": "tool_use", "id": f"toolu_{index}", "name": "f", "input": {}}}[kind]
        events.append(block(index, opening))
        for piece in draw(st.lists(st.text(max_size=6), max_size=4)):
            events.append(delta(index, {"text": {"type": "text_delta", "text": piece},
                                        "thinking": {"type": "thinking_delta", "thinking": piece},
                                        "tool": {"type": "input_json_delta", "partial_json": piece}}[kind]))
        if kind == "thinking":
            events.append(delta(index, {"type": "signature_delta", "signature": "sig"}))
        events.append(stop(index))
        if draw(st.booleans()):
            events.append(Event("ping", {"type": "ping"}))
    ending = draw(st.sampled_from(["end", "error", "cut"]))
    if ending == "end":
        events += end(draw(st.sampled_from(["end_turn", "tool_use", "max_tokens"])))
    elif ending == "error":
        events.append(Event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}))
    cuts = sorted(draw(st.lists(st.integers(0, len(events)), max_size=6)))
    return events, cuts, draw(st.booleans()), draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(answers())
def test_any_batching_gives_the_same_bytes_and_the_sdk_reads_the_answer(case: tuple) -> None:
    events, cuts, sse, include_thoughts = case
    whole = GeminiStreamEncoder("m", sse=sse, include_thoughts=include_thoughts).encode(events)
    encoder = GeminiStreamEncoder("m", sse=sse, include_thoughts=include_thoughts)
    batches = [events[a:b] for a, b in zip([0] + cuts, cuts + [len(events)])]
    assert b"".join(encoder.encode(batch) for batch in batches) == whole
    ended = encoder.ended
    body = whole if ended else whole + encoder.error("api_error", "cut")
    if not sse:
        assert isinstance(json.loads(body), list)
        return
    if any(e.name == "error" for e in events) or not ended:
        with pytest.raises(genai_errors.APIError):
            sdk_stream(body)
        return
    chunks = sdk_stream(body)
    text = "".join(p.text or "" for c in chunks for p in c.candidates[0].content.parts or [] if not p.thought)
    wanted = "".join(e.data["delta"]["text"] for e in events if e.name == "content_block_delta"
                     and e.data["delta"]["type"] == "text_delta")
    assert text == wanted
    calls = [p.function_call.id for c in chunks for p in c.candidates[0].content.parts or [] if p.function_call]
    assert calls == [e.data["content_block"]["id"] for e in events if e.name == "content_block_start"
                     and e.data["content_block"]["type"] == "tool_use"]
    assert cli_lines(body)


# -- real Gemini streams, through the upstream translator and back to a Gemini client ---------------

REAL = Path(__file__).resolve().parents[2] / "shared" / "real-streams-gemini" / "fixtures"
REAL_NAMES = sorted(p.stem for p in REAL.glob("*.json")) if REAL.is_dir() else []


@pytest.mark.skipif(not REAL_NAMES, reason="../shared/real-streams-gemini is absent")
@pytest.mark.parametrize("name", [n for n in REAL_NAMES if not n.startswith("vercel-error")] or ["none"])
def test_real_streams_come_back_to_a_gemini_client_as_the_server_said(name: str) -> None:
    recording = json.loads((REAL / f"{name}.json").read_text())
    chunks = recording["chunks"] if recording["kind"] == "stream" else [recording["body"]]
    expect = recording["expect"]
    signatures: Dict[str, str] = {}
    translator = agproxy.GeminiStreamTranslator("gemini-x", 0, lambda tool_id, sig: signatures.update({tool_id: sig}))
    events: List[Event] = []
    try:
        for chunk in chunks:
            events += translator.feed(chunk)
        events += translator.finish()
    except agproxy.UpstreamFailure:
        pytest.skip("the upstream translator refuses this answer (an error, not a stream)")
    encoder = GeminiStreamEncoder("gemini-x")
    parts = [p for c in sdk_stream(encoder.encode(events)) for p in c.candidates[0].content.parts or []]
    if "block_reason" not in expect:
        assert "".join(p.text for p in parts if p.text and not p.thought) == expect["text"]
    assert "".join(p.text for p in parts if p.text and p.thought) == expect["thinking"]
    calls = [p for p in parts if p.function_call]
    assert [{"name": p.function_call.name, "input": p.function_call.args} for p in calls] == expect["tool_calls"]
    if not calls:
        return
    # the client sends the calls back: Gemini gets its own signature again, on the first call
    history = {"contents": [user({"text": "go"}), model_turn(*[p.model_dump(mode="json", by_alias=True,
                                                                              exclude_none=True)
                                                              for p in parts if not p.thought])]}
    internal = translate(history)
    request, _ = agproxy.anthropic_to_gemini(internal, "gemini-x", lambda sig: True, signatures.get)
    sent = [p for c in request["contents"] for p in c["parts"] if "functionCall" in p]
    real = [p.get("thoughtSignature") for c in chunks for p in
            ((c.get("candidates") or [{}])[0].get("content") or {}).get("parts", []) if "functionCall" in p]
    if real[0]:
        assert sent[0]["thoughtSignature"] == real[0]


def test_a_json_schema_with_gemini_type_names_is_spelled_as_json_schema() -> None:
    """Gemini CLI's routing call sends its responseJsonSchema with OBJECT, STRING, INTEGER (seen
    offline from Gemini CLI 0.61.0); Gemini takes them, JSON Schema does not."""
    schema = {"type": "OBJECT", "required": ["score"], "properties": {
        "score": {"type": "INTEGER", "description": "1-100"}, "type": {"type": "STRING", "enum": ["OBJECT"]},
        "tags": {"type": ["ARRAY", "NULL"], "items": {"type": "STRING"}}}}
    wanted = {"type": "object", "required": ["score"], "properties": {
        "score": {"type": "integer", "description": "1-100"}, "type": {"type": "string", "enum": ["OBJECT"]},
        "tags": {"type": ["array", "null"], "items": {"type": "string"}}}}
    out = translate({"contents": [user({"text": "x"})], "tools": [{"functionDeclarations": [
        {"name": "f", "parametersJsonSchema": schema}]}],
        "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": schema}})
    assert out["output_config"]["format"]["schema"] == wanted
    assert out["tools"][0]["input_schema"] == wanted


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=4), st.booleans())
def test_a_text_piece_s_chunk_is_the_json_of_its_response_however_the_text_reads(texts, sse):
    encoder = agproxy.GeminiStreamEncoder("gemini-x", sse=sse)
    start = {"type": "message_start", "message": {"id": "msg_abc", "usage": {}}}
    encoder.encode([agproxy.Event("message_start", start),
                    agproxy.Event("content_block_start", {"type": "content_block_start", "index": 0,
                                                          "content_block": {"type": "text", "text": ""}})])
    written = encoder.encode([agproxy.delta_event(0, "text_delta", "text", text, relayed)
                              for text, relayed in zip(texts, [True, False] * len(texts))])
    response_id = encoder._parts.response_id

    def chunk(number: int, text: str) -> str:
        body = json.dumps({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}],
                           "modelVersion": "gemini-x", "responseId": response_id},
                          separators=(",", ":"), ensure_ascii=False)
        return f"data: {body}\n\n" if sse else f"{'[' if number == 0 else ','}\r\n{body}"

    assert written == "".join(chunk(n, text) for n, text in enumerate(texts)).encode("utf-8", "replace")
