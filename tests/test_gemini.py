"""Gemini upstreams: the translators on their own (hypothesis for schemas and the stream state
machine, the Claude Code corpus against the strict fake's rules), then the anthropic SDK through
agproxy to the strict fake Gemini server: text, thinking, tool loops with parallel calls and
their thought signatures, histories made elsewhere, errors, keys, models and counting."""

from __future__ import annotations

import copy
import json
import urllib.request
from typing import Any, Dict, List

import anthropic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agproxy
from agproxy import GeminiStreamTranslator, anthropic_to_gemini, gemini_schema, gemini_to_anthropic
from tests.corpus import corpus
from tests.fakes.gemini_upstream import (
    SKIP_SIGNATURE,
    Answer,
    Error,
    FakeGemini,
    Raw,
    Refusal,
    call,
    check_schema,
    google_error,
    quota_error,
)
from tests.test_real_streams import message_of

PRO, FLASH_25 = "gemini-3-pro-preview", "gemini-2.5-flash"


def translated(body: Dict[str, Any], model: str = PRO) -> Dict[str, Any]:
    body = copy.deepcopy(body)
    agproxy.sanitize_request(body, agproxy.PROFILE_DEFAULTS["anthropic"])
    return anthropic_to_gemini(body, model, lambda s: True, lambda i: None)[0]


def accepted(body: Dict[str, Any], model: str = PRO, fake: FakeGemini = None) -> None:
    """The strict fake's verdict on a translated request (raises its Refusal)."""
    (fake or FakeGemini()).check(body, model)


# -- schemas -------------------------------------------------------------------------------

def test_schemas_are_converted_to_the_subset_not_stripped():
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": False,
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number", "exclusiveMinimum": 0}}}},
        "properties": {
            "where": {"$ref": "#/$defs/Point"},
            "mode": {"const": "fast"},
            "note": {"type": ["string", "null"], "format": "uri"},
            "kind": {"oneOf": [{"type": "string", "enum": ["a", ""]}, {"type": "integer"}]},
            "both": {"allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]},
                               {"properties": {"b": {"type": "boolean"}}}], "type": "object"},
            "tags": {"type": "array", "items": [{"type": "string"}], "uniqueItems": True},
            "anything": {},
            "map": {"type": "object", "additionalProperties": {"type": "string"}, "propertyNames": {"pattern": "x"}},
        },
        "required": ["where", "ghost"],
    }
    out = gemini_schema(schema)
    check_schema(out, "parameters")
    props = out["properties"]
    assert props["where"]["properties"]["x"] == {"type": "number", "description": "(exclusiveMinimum: 0)"}
    assert props["mode"] == {"type": "string", "enum": ["fast"]}
    assert props["note"] == {"type": "string", "nullable": True, "description": "(format: uri)"}
    assert props["kind"]["anyOf"][0] == {"type": "string", "enum": ["a"], "description": "(may also be empty)"}
    assert props["both"]["required"] == ["a"] and set(props["both"]["properties"]) == {"a", "b"}
    assert props["tags"]["items"] == {"type": "string"} and "uniqueItems" in props["tags"]["description"]
    assert props["anything"]["type"] == "string" and "any JSON value" in props["anything"]["description"]
    assert props["map"] == {"type": "object", "description": "(an object of named values)"}
    assert out["required"] == ["where"]


SIGNED = "c2lnbmVk"


@pytest.mark.parametrize("contents, says", [
    ([{"role": "user", "parts": []}], "contents.parts must not be empty"),
    ([{"role": "user", "parts": [{"thoughtSignature": "x"}]}], "required oneof field 'data'"),
    ([{"role": "assistant", "parts": [{"text": "x"}]}], "valid role"),
    ([{"role": "user", "parts": [{"text": "x"}]}, {"role": "model", "parts": [call("Read", {})]},
      {"role": "user", "parts": [{"functionResponse": {"name": "Read", "response": {}}}]}],
     "missing a thought_signature"),
    ([{"role": "user", "parts": [{"text": "x"}]},
      {"role": "model", "parts": [dict(call("Read", {}), thoughtSignature=SKIP_SIGNATURE),
                                  dict(call("Grep", {}), thoughtSignature=SIGNED)]},
      {"role": "user", "parts": [{"functionResponse": {"name": "Read", "response": {}}},
                                 {"functionResponse": {"name": "Grep", "response": {}}}]}],
     "Corrupted thought signature"),
    ([{"role": "user", "parts": [{"text": "x"}]},
      {"role": "model", "parts": [dict(call("Read", {}), thoughtSignature=SKIP_SIGNATURE), call("Grep", {})]},
      {"role": "user", "parts": [{"functionResponse": {"name": "Read", "response": {}}}]}],
     "number of function response parts"),
])
def test_the_fake_refuses_what_gemini_refuses(contents, says):
    with pytest.raises(Refusal, match=says):
        accepted({"contents": contents})


def test_the_fake_refuses_schemas_and_knobs_gemini_refuses():
    strict_object = {"type": "object", "additionalProperties": False, "properties": {"a": {"type": "string"}}}
    for parameters, says in [(strict_object, 'Unknown name "additionalProperties"'),
                             ({"type": ["string", "null"]}, "Invalid value"),
                             ({"type": "object", "properties": {}}, "should be non-empty"),
                             ({"type": "string", "enum": ["a", ""]}, "enum"),
                             ({"type": "object", "properties": {"a": {"anyOf": [{"type": "array"}]}}},
                              "items: missing field"),
                             ({"type": "object", "properties": {"a": {"description": "x"}}}, "must be specified"),
                             ({"type": "string"}, "should be of type OBJECT")]:
        with pytest.raises(Refusal, match=says):
            accepted({"contents": [{"role": "user", "parts": [{"text": "x"}]}],
                      "tools": [{"functionDeclarations": [{"name": "T", "parameters": parameters}]}]})
    with pytest.raises(Refusal, match="only one of thinking budget and thinking level"):
        accepted({"contents": [{"role": "user", "parts": [{"text": "x"}]}],
                  "generationConfig": {"thinkingConfig": {"thinkingBudget": 100, "thinkingLevel": "low"}}})


def test_a_type_list_and_a_lone_alternative_become_schemas_gemini_takes():
    """Two valid schemas that Gemini refused, the refusal reaching the client as its own 400: a
    type list with "array" (common in MCP tools) lost the array's ``items``, and a lone ``anyOf``
    member took over the node's type (a root object became a string)."""
    several = {"type": "object", "properties": {"paths": {"type": ["string", "array", "null"], "minItems": 1,
                                                          "items": {"type": "string"}, "description": "1 or more"}}}
    out = gemini_schema(several)
    check_schema(out, "parameters")
    assert out["properties"]["paths"] == {"nullable": True, "description": "1 or more", "anyOf": [
        {"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}
    lone = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
            "anyOf": [{"required": ["a"]}]}
    out = gemini_schema(lone)
    assert out == {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
                   "required": ["a"]}
    assert gemini_schema({"anyOf": [{"type": "object", "properties": {"a": {"type": "string"}}}, {"type": "null"}]}) \
        == {"type": "object", "nullable": True, "properties": {"a": {"type": "string"}}}
    union = gemini_schema({"anyOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                                     {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}]})
    assert union["type"] == "object" and set(union["properties"]) == {"a", "b"} and "required" not in union
    assert gemini_schema({"type": "string"}) is None  # not an object: no parameters rather than a 400
    for schema in (several, lone, {"type": "object", "properties": {"q": {"type": ["object", "array"]}}}):
        accepted(translated({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                             "tools": [{"name": "T", "input_schema": schema}]}))


def test_a_tool_without_parameters_declares_none():
    assert gemini_schema({"type": "object", "properties": {}}) is None
    assert gemini_schema({"type": "object"}) is None
    out = translated({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                      "tools": [{"name": "Now", "input_schema": {"type": "object", "properties": {}}}]})
    assert out["tools"] == [{"functionDeclarations": [{"name": "Now"}]}]


def test_a_recursive_ref_ends():
    schema = {"type": "object", "properties": {"node": {"$ref": "#/definitions/Node"}},
              "definitions": {"Node": {"type": "object", "properties": {"child": {"$ref": "#/definitions/Node"}}}}}
    check_schema(gemini_schema(schema), "parameters")


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=5))
SCHEMA_WORDS = st.sampled_from(["type", "properties", "items", "enum", "const", "anyOf", "oneOf", "allOf", "$ref",
                                "required", "additionalProperties", "format", "minimum", "exclusiveMaximum",
                                "nullable", "description", "default", "examples", "$defs", "title", "pattern",
                                "minItems", "propertyNames", "not", "if", "then", "x-extension"])
TYPE_VALUES = st.one_of(st.sampled_from(["string", "number", "integer", "boolean", "array", "object", "null", "any"]),
                        st.lists(st.sampled_from(["string", "null", "integer", "object", "array"]), max_size=3))
SCHEMAS = st.recursive(
    st.one_of(JSON_SCALARS, st.fixed_dictionaries({"type": TYPE_VALUES})),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(SCHEMA_WORDS, inner, max_size=5),
        st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(st.text(max_size=4), inner,
                                                                                         max_size=3)}),
        st.fixed_dictionaries({"$ref": st.sampled_from(["#/$defs/a", "#/definitions/b", "#/nowhere", 3])}),
        st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(st.text(max_size=4), inner,
                                                                                         max_size=2),
                               "anyOf": st.lists(inner, min_size=1, max_size=2)}),
    ),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(SCHEMAS, st.dictionaries(st.sampled_from(["a", "b"]), SCHEMAS, max_size=2))
def test_no_schema_breaks_a_request(schema, definitions):
    """Claude Code's MCP tools bring arbitrary schemas: whatever comes, Gemini's rules hold."""
    if isinstance(schema, dict):
        schema = dict(schema, **{"$defs": definitions, "definitions": definitions})
    out = gemini_schema(schema)
    if out is not None:
        check_schema(out, "parameters")
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "T", "input_schema": schema}]}
    accepted(translated(body))


# -- request translation --------------------------------------------------------------------

@pytest.mark.parametrize("name, headers, body", corpus(), ids=[c[0] for c in corpus()])
def test_claude_code_corpus_translates_into_what_gemini_accepts(name, headers, body):
    if name == "forced_server_tool":
        with pytest.raises(agproxy.InvalidRequest, match="web_search"):
            translated(body)
        return
    out = translated(body)
    accepted(out)
    assert "cache_control" not in json.dumps(out)


def test_translation_details():
    body = {
        "model": "m", "max_tokens": 128000, "system": [{"type": "text", "text": "Be brief."}],
        "stop_sequences": ["1", "2", "3", "4", "5", "6"], "temperature": 0.2, "top_k": 5, "top_p": 0.9,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "tools": [{"name": "Read", "description": "Read a file", "input_schema": {
            "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}],
        "tool_choice": {"type": "tool", "name": "Read"},
        "messages": [
            {"role": "user", "content": "hi"}, {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
                {"type": "text", "text": ""}]},
            {"role": "system", "content": "mid-conversation rule"},
        ],
    }
    out = translated(body)
    accepted(out)
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert out["contents"] == [{"role": "user", "parts": [
        {"text": "hi"}, {"inlineData": {"mimeType": "image/png", "data": "iVBO"}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}}, {"text": "mid-conversation rule"}]}]
    assert out["generationConfig"] == {"maxOutputTokens": 65536, "temperature": 0.2, "topP": 0.9, "topK": 5,
                                       "stopSequences": ["1", "2", "3", "4", "5"],
                                       "thinkingConfig": {"includeThoughts": True, "thinkingLevel": "low"}}
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["Read"]}}
    older = translated(body, FLASH_25)
    accepted(older, FLASH_25)
    assert older["generationConfig"]["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 2000}


@pytest.mark.parametrize("thinking, effort, model, expected", [
    ({"type": "adaptive"}, None, PRO, {"includeThoughts": True, "thinkingLevel": "high"}),
    ({"type": "adaptive"}, "low", PRO, {"includeThoughts": True, "thinkingLevel": "low"}),
    ({"type": "adaptive"}, None, FLASH_25, {"includeThoughts": True, "thinkingBudget": -1}),
    ({"type": "enabled", "budget_tokens": 100000}, None, FLASH_25, {"includeThoughts": True, "thinkingBudget": 24576}),
    ({"type": "disabled"}, "medium", FLASH_25, {"includeThoughts": False, "thinkingBudget": 8192}),
    (None, None, PRO, None),
])
def test_thinking_knobs_never_both(thinking, effort, model, expected):
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    if thinking:
        body["thinking"] = thinking
    if effort:
        body["output_config"] = {"effort": effort}
    out = translated(body, model)
    accepted(out, model)
    assert (out.get("generationConfig") or {}).get("thinkingConfig") == expected


def test_web_search_becomes_google_search_only_alone():
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    alone = translated({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "news?"}],
                        "tools": [search]})
    assert alone["tools"] == [{"googleSearch": {}}]
    mixed = translated({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "news?"}],
                        "tools": [search, {"name": "Read", "input_schema": {"type": "object", "properties": {
                            "p": {"type": "string"}}}}]})
    assert mixed["tools"] == [{"functionDeclarations": [{"name": "Read", "parameters": {
        "type": "object", "properties": {"p": {"type": "string"}}}}]}]


def tool_turn(*calls: Dict[str, Any], thinking: List[Dict[str, Any]] = ()) -> Dict[str, Any]:
    return {"role": "assistant", "content": list(thinking) + [
        {"type": "tool_use", "id": c["id"], "name": c["name"], "input": c.get("input", {})} for c in calls]}


def results(*ids: str) -> Dict[str, Any]:
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": i, "content": "ok"} for i in ids]}


def test_a_history_made_elsewhere_gets_gemini_s_documented_stand_in_on_the_current_turn_only():
    anthropic_thinking = {"type": "thinking", "thinking": "hmm", "signature": "EqQBCkYIBxgCKkB0"}
    body = {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "old question"},
        tool_turn({"id": "toolu_1", "name": "Read"}, thinking=[anthropic_thinking]), results("toolu_1"),
        {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": "new question"},
        tool_turn({"id": "toolu_2", "name": "Read"}, {"id": "toolu_3", "name": "Grep"},
                  thinking=[anthropic_thinking]), results("toolu_2", "toolu_3"),
        tool_turn({"id": "toolu_4", "name": "Bash"}), results("toolu_4")]}
    out = translated(body)
    accepted(out)
    model_turns = [c["parts"] for c in out["contents"] if c["role"] == "model"]
    assert "thoughtSignature" not in model_turns[0][0]  # an earlier turn: not checked, nothing invented
    assert model_turns[2][0]["thoughtSignature"] == SKIP_SIGNATURE
    assert "thoughtSignature" not in model_turns[2][1]  # never on the second of parallel calls
    assert model_turns[3][0]["thoughtSignature"] == SKIP_SIGNATURE
    assert "hmm" not in json.dumps(out)  # thinking from another upstream never reaches Gemini


def test_a_tool_loop_claude_code_gathered_into_one_message_is_cut_back_into_gemini_s_answers():
    """Claude Code sends the steps of a tool loop as one assistant message and one user message
    (seen with 2.1.332): each answer's signature must again be on the first call of its own turn."""
    body = {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "unsigned summary", "signature": ""},
            {"type": "text", "text": "Let me look."},
            {"type": "thinking", "thinking": "", "signature": "gemini:call:c2lnMQ=="},
            {"type": "tool_use", "id": "a", "name": "Bash", "input": {"command": "ls"}},
            {"type": "tool_use", "id": "b", "name": "Bash", "input": {"command": "pwd"}},
            {"type": "thinking", "thinking": "", "signature": "gemini:call:c2lnMg=="},
            {"type": "tool_use", "id": "c", "name": "Bash", "input": {"command": "id"}},
            {"type": "text", "text": "One more."},
            {"type": "tool_use", "id": "d", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": i, "content": i} for i in "abcd"]}]}
    out = translated(body)
    shape = [(c["role"], [next(k for k in p if k != "thoughtSignature") + ("+sig" if "thoughtSignature" in p else "")
                          for p in c["parts"]]) for c in out["contents"]]
    assert shape == [("user", ["text"]), ("model", ["text", "functionCall+sig", "functionCall"]),
                     ("user", ["functionResponse", "functionResponse"]), ("model", ["functionCall+sig"]),
                     ("user", ["functionResponse"]), ("model", ["text", "functionCall+sig"]),
                     ("user", ["functionResponse"])]
    assert out["contents"][3]["parts"][0]["thoughtSignature"] == "c2lnMg=="
    assert out["contents"][5]["parts"][1]["thoughtSignature"] == SKIP_SIGNATURE  # its own was lost
    assert [p["functionResponse"]["id"] for c in out["contents"][2::2] for p in c["parts"]] == list("abcd")


def test_calls_and_responses_always_pair():
    body = {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "go"},
        tool_turn({"id": "a", "name": "Read"}, {"id": "b", "name": "Grep"}),
        {"role": "user", "content": [  # b unanswered (interrupted), c answers nothing, order swapped
            {"type": "tool_result", "tool_use_id": "c", "content": "stray"},
            {"type": "tool_result", "tool_use_id": "a", "content": [
                {"type": "text", "text": "file"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]},
            {"type": "text", "text": "and then?"}]}]}
    out = translated(body)
    accepted(out)
    parts = out["contents"][-1]["parts"]
    assert parts[0]["functionResponse"] == {"name": "Read", "id": "a", "response": {"output": "file"}}
    assert parts[1]["functionResponse"]["name"] == "Grep" and "error" in parts[1]["functionResponse"]["response"]
    assert parts[2] == {"inlineData": {"mimeType": "image/png", "data": "iVBO"}}
    assert "stray" in parts[3]["text"] and parts[4] == {"text": "and then?"}


# -- answer translation ---------------------------------------------------------------------

def run_translator(chunks: List[Dict[str, Any]]) -> List[agproxy.SSEEvent]:
    translator = GeminiStreamTranslator("m", 7)
    data = b"".join(agproxy.encode_events(translator.feed(c)) for c in chunks) + \
        agproxy.encode_events(translator.finish())
    return agproxy.SSEDecoder().feed(data)


def well_formed(events: List[agproxy.SSEEvent]) -> None:
    kinds = [e.event for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    open_index, expected_index = None, 0
    for event in events[1:-2]:
        payload = json.loads(event.data)
        if event.event == "content_block_start":
            assert open_index is None and payload["index"] == expected_index
            open_index = payload["index"]
            expected_index += 1
        elif event.event == "content_block_delta":
            assert payload["index"] == open_index
        else:
            assert event.event == "content_block_stop" and payload["index"] == open_index
            open_index = None


PARTS = st.one_of(
    st.builds(lambda t: {"text": t}, st.text(max_size=6)),
    st.builds(lambda t: {"text": t, "thought": True}, st.text(max_size=6)),
    st.builds(lambda t, s: {"text": t, "thoughtSignature": s}, st.text(max_size=4), st.sampled_from(["s1", "s2"])),
    st.builds(lambda t, s: {"text": t, "thought": True, "thoughtSignature": s}, st.text(max_size=4),
              st.sampled_from(["s3"])),
    st.builds(lambda n, a, i, s: dict({"functionCall": dict({"name": n, "args": a}, **({"id": i} if i else {}))},
                                      **({"thoughtSignature": s} if s else {})),
              st.sampled_from(["Read", "Bash"]), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
              st.sampled_from([None, "c1", "bad id!"]), st.sampled_from([None, "s4"])),
    st.just({"inlineData": {"mimeType": "image/png", "data": "AA=="}}),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(PARTS, max_size=3), max_size=6), st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", None]))
def test_any_gemini_stream_gives_the_exact_grammar_and_the_same_message_as_a_whole_answer(chunked, finish):
    chunks = [{"candidates": [{"content": {"parts": parts, "role": "model"}, "index": 0}]} for parts in chunked]
    if chunks and finish:
        chunks[-1]["candidates"][0]["finishReason"] = finish
    events = run_translator(chunks)
    well_formed(events)
    accumulator = agproxy.MessageAccumulator()
    for event in events:
        accumulator.feed(event)
    streamed = accumulator.result()
    whole = gemini_to_anthropic(chunks or [{"candidates": []}], "m", input_tokens=7)
    strip = [dict(b, id="") if b["type"] == "tool_use" else b for b in whole["content"]]
    assert [dict(b, id="") if b["type"] == "tool_use" else b for b in streamed["content"]] == strip
    assert not [b for b in streamed["content"] if b["type"] == "text" and not b["text"]]
    texts = "".join(p.get("text", "") for parts in chunked for p in parts if "text" in p and not p.get("thought"))
    assert "".join(b["text"] for b in streamed["content"] if b["type"] == "text") == texts
    calls = [p["functionCall"]["name"] for parts in chunked for p in parts if "functionCall" in p]
    assert [b["name"] for b in streamed["content"] if b["type"] == "tool_use"] == calls
    said = finish if chunks else None
    assert streamed["stop_reason"] == ("tool_use" if calls else {"MAX_TOKENS": "max_tokens", "SAFETY": "refusal"}
                                       .get(said, "end_turn"))


def test_a_failed_tool_call_is_an_error_worth_a_retry():
    translator = GeminiStreamTranslator("m")
    translator.feed({"candidates": [{"finishReason": "MALFORMED_FUNCTION_CALL", "finishMessage": "bad args"}]})
    with pytest.raises(agproxy.UpstreamFailure, match="MALFORMED_FUNCTION_CALL: bad args"):
        translator.finish()


# -- through agproxy, with the anthropic SDK --------------------------------------------------

def gemini_config(fake: FakeGemini, model: str = PRO, keys: List[str] = ("gemini-key",), **top: Any) -> Dict[str, Any]:
    config = {"upstreams": [{"name": "gemini", "kind": "gemini", "base_url": fake.url,
                             "accounts": [{"name": f"key-{i + 1}", "api_key": key} for i, key in enumerate(keys)]}],
              "model_map": [{"match": "*", "upstream": "gemini", "model": model}]}
    config.update(top)
    return config


@pytest.fixture
def fake():
    with FakeGemini(keys=("gemini-key", "gemini-key-2")) as server:
        yield server


def sdk(proxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="x", max_retries=0)


TOOLS = [{"name": "Read", "description": "Read a file", "input_schema": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"],
    "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}}]


def ask(client: anthropic.Anthropic, stream: bool, **args: Any) -> Any:
    if stream:
        with client.messages.stream(**args) as s:
            return s.get_final_message()
    return client.messages.create(**args)


@pytest.mark.parametrize("stream", [False, True])
def test_text_answer(start_agproxy, fake, stream):
    proxy = start_agproxy(gemini_config(fake))
    message = ask(sdk(proxy), stream, model="claude-sonnet-5-5", max_tokens=100,
                  messages=[{"role": "user", "content": "hi"}])
    assert [b.type for b in message.content] == ["text"]  # its signature (unchecked by Gemini) is not carried
    assert message.content[0].text == "Hello from the fake Gemini server."
    assert message.stop_reason == "end_turn" and message.model == PRO  # as for every translated upstream
    assert message.usage.input_tokens == 40 and message.usage.output_tokens == 9
    seen = fake.requests[-1]
    assert seen.target == f"/v1beta/models/{PRO}:streamGenerateContent?alt=sse"  # force_stream_internally
    assert seen.header("x-goog-api-key") in ("gemini-key", "gemini-key-2") and fake.rejections == []


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_loop_with_parallel_calls_and_thinking_keeps_every_signature(start_agproxy, fake, stream):
    fake.script(Answer([{"text": "The files hold the answer.", "thought": True}, {"text": "Reading both."},
                        call("Read", {"path": "a.py"}), call("Read", {"path": "b.py"})]),
                Answer([call("Read", {"path": "c.py"})]),
                Answer([{"text": "All three say x = 1."}]))
    proxy = start_agproxy(gemini_config(fake, force_stream_internally=stream))
    client = sdk(proxy)
    history: List[Dict[str, Any]] = [{"role": "user", "content": "compare the files"}]
    args = dict(model="claude-sonnet-5-5", max_tokens=2000, tools=TOOLS,
                thinking={"type": "enabled", "budget_tokens": 1024})
    first = ask(client, stream, messages=history, **args)
    kinds = [b.type for b in first.content]
    assert kinds == ["thinking", "text", "thinking", "tool_use", "tool_use"]
    assert first.content[0].thinking == "The files hold the answer."
    assert first.content[2].signature.startswith("gemini:call:")
    assert [b.input for b in first.content[3:]] == [{"path": "a.py"}, {"path": "b.py"}]
    assert first.stop_reason == "tool_use"
    calls = [b for b in first.content if b.type == "tool_use"]
    history += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": c.id, "content": "x = 1"}
                                             for c in calls]}]
    second = ask(client, stream, messages=history, **args)
    assert [b.type for b in second.content] == ["thinking", "tool_use"]
    history += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in second.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": second.content[1].id,
                                              "content": "x = 1"}]}]
    final = ask(client, stream, messages=history, **args)
    assert final.content[0].text == "All three say x = 1."
    assert fake.rejections == []
    sent = fake.generations[-1]["contents"]
    assert [c["role"] for c in sent] == ["user", "model", "user", "model", "user"]
    signed = [p for c in sent for p in c["parts"] if "thoughtSignature" in p]
    assert [("functionCall" in p) for p in signed] == [True, True]
    assert all(fake.issued[p["thoughtSignature"]][0] == "call" for p in signed)  # the very ones Gemini gave


def test_a_client_that_drops_the_thinking_blocks_still_gets_its_calls_signed(start_agproxy, fake):
    fake.script(Answer([call("Read", {"path": "a.py"})]))
    proxy = start_agproxy(gemini_config(fake))
    client = sdk(proxy)
    history: List[Dict[str, Any]] = [{"role": "user", "content": "read a.py"}]
    first = client.messages.create(model="m", max_tokens=200, tools=TOOLS, messages=history)
    tool_use = next(b for b in first.content if b.type == "tool_use")
    history += [{"role": "assistant", "content": [tool_use.model_dump()]},  # no thinking block
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "x"}]}]
    assert client.messages.create(model="m", max_tokens=200, tools=TOOLS, messages=history).content
    assert fake.rejections == []
    assert fake.generations[-1]["contents"][1]["parts"][0]["thoughtSignature"] in fake.issued


def test_a_refused_signature_heals_with_the_stand_in(start_agproxy, fake):
    forged = {"type": "thinking", "thinking": "", "signature": "gemini:call:Zm9yZ2Vk"}
    history = [{"role": "user", "content": "read"},
               {"role": "assistant", "content": [forged, {"type": "tool_use", "id": "t1", "name": "Read",
                                                          "input": {"path": "a"}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "x"}]}]
    proxy = start_agproxy(gemini_config(fake))
    assert sdk(proxy).messages.create(model="m", max_tokens=50, tools=TOOLS, messages=history).content
    assert fake.rejections == ["Corrupted thought signature. (contents[1].parts[0])"]
    assert fake.generations[-1]["contents"][1]["parts"][0]["thoughtSignature"] == SKIP_SIGNATURE
    assert sdk(proxy).messages.create(model="m", max_tokens=50, tools=TOOLS, messages=history).content
    assert len(fake.rejections) == 1 and len(fake.generations) == 3  # the next turn does not send it again


def test_signatures_from_another_gemini_model_are_not_sent_back(start_agproxy, fake):
    fake.script(Answer([call("Read", {"path": "a.py"})]))
    config = gemini_config(fake)
    config["model_map"] = [{"match": "*pro*", "upstream": "gemini", "model": PRO},
                           {"match": "*", "upstream": "gemini", "model": "gemini-3-flash-preview"}]
    proxy = start_agproxy(config)
    client = sdk(proxy)
    first = client.messages.create(model="x-pro", max_tokens=200, tools=TOOLS,
                                   messages=[{"role": "user", "content": "read"}])
    tool_use = first.content[-1]
    history = [{"role": "user", "content": "read"},
               {"role": "assistant", "content": [b.model_dump() for b in first.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "x"}]}]
    assert client.messages.create(model="x-flash", max_tokens=200, tools=TOOLS, messages=history).content
    assert fake.generations[-1]["contents"][1]["parts"][0]["thoughtSignature"] == SKIP_SIGNATURE
    assert fake.rejections == []


def test_a_prompt_gemini_blocks_is_a_refusal_the_user_can_read(start_agproxy, fake):
    fake.script(Answer(block_reason="PROHIBITED_CONTENT"))
    proxy = start_agproxy(gemini_config(fake))
    message = sdk(proxy).messages.create(model="m", max_tokens=50, messages=[{"role": "user", "content": "x"}])
    assert message.stop_reason == "refusal" and "PROHIBITED_CONTENT" in message.content[0].text


def test_a_malformed_call_is_retried(start_agproxy, fake):
    fake.script(Answer([{"text": "x"}], finish="MALFORMED_FUNCTION_CALL"))
    proxy = start_agproxy(gemini_config(fake))
    message = sdk(proxy).messages.create(model="m", max_tokens=50, messages=[{"role": "user", "content": "x"}])
    assert message.content[0].text == "Hello from the fake Gemini server." and len(fake.generations) == 2


def test_quota_rests_the_key_until_gemini_s_retry_delay(start_agproxy, fake):
    fake.script(quota_error(26))
    proxy = start_agproxy(gemini_config(fake, keys=["gemini-key", "gemini-key-2"]))
    raw = sdk(proxy).messages.with_raw_response.create(model="m", max_tokens=5,
                                                       messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-account-email"] == "key-2"
    server = proxy.server
    upstream = server.config.upstreams[0]
    assert server.pool.state(upstream, upstream.accounts[0]).resting_until - server.clock() == pytest.approx(26, abs=1)


def test_a_rejected_key_rotates_and_all_rejected_is_a_424(start_agproxy, fake):
    proxy = start_agproxy(gemini_config(fake, keys=["wrong-key", "gemini-key"]))
    raw = sdk(proxy).messages.with_raw_response.create(model="m", max_tokens=5,
                                                       messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-account-email"] == "key-2"
    proxy2 = start_agproxy(gemini_config(fake, keys=["wrong-key", "wrong-too"]))
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk(proxy2).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 424 and "wrong" not in caught.value.message


@pytest.mark.parametrize("status, state, exception, error_type", [
    (503, "UNAVAILABLE", anthropic.InternalServerError, "overloaded_error"),
    (400, "INVALID_ARGUMENT", anthropic.BadRequestError, "invalid_request_error"),
    (500, "INTERNAL", anthropic.InternalServerError, "api_error"),
])
def test_gemini_errors_become_anthropic_errors(start_agproxy, fake, status, state, exception, error_type):
    fake.script(*[Error(status, google_error(status, f"gemini says {state}", state))] * 3)
    proxy = start_agproxy(gemini_config(fake, max_retry_attempts=1))
    with pytest.raises(exception) as caught:
        sdk(proxy).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["error"]["type"] == error_type and f"gemini says {state}" in caught.value.message


def test_an_error_written_into_the_stream_after_output_is_an_error_event(start_agproxy, fake):
    error = json.dumps(google_error(500, "backend died", "INTERNAL"), indent=2).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    event = b'data: {"candidates": [{"content": {"parts": [{"text": "partial"}], "role": "model"}}]}\r\n\r\n'
    fake.script(Raw(head + event + error))
    proxy = start_agproxy(gemini_config(fake))
    with pytest.raises(anthropic.APIStatusError) as caught:
        with sdk(proxy).messages.stream(model="m", max_tokens=50, messages=[{"role": "user", "content": "x"}]) as s:
            s.get_final_message()
    assert "backend died" in str(caught.value)


def test_a_stream_dropped_before_output_is_retried(start_agproxy, fake):
    fake.script(Answer([{"text": "never whole"}], drop_after=0))
    proxy = start_agproxy(gemini_config(fake))
    with sdk(proxy).messages.stream(model="m", max_tokens=50, messages=[{"role": "user", "content": "x"}]) as s:
        assert s.get_final_message().content[0].text == "Hello from the fake Gemini server."
    assert len(fake.generations) == 2


def test_an_unknown_field_is_learned(start_agproxy, fake):
    config = gemini_config(fake)
    config["upstreams"][0]["extra_body"] = {"generationConfig": {"maxOutputTokens": 5, "responseLogprobs": True}}
    proxy = start_agproxy(config)
    assert sdk(proxy).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]).content
    assert fake.rejections == ['Invalid JSON payload received. Unknown name "responseLogprobs" at '
                               "'generation_config': Cannot find field."]
    sdk(proxy).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert len(fake.generations) == 3 and "responseLogprobs" not in json.dumps(fake.generations[-1])


def test_models_are_listed_across_pages_and_counted_by_gemini(start_agproxy, fake):
    proxy = start_agproxy(gemini_config(fake, model_map=[{"match": "gemini-*", "upstream": "gemini"}]))
    ids = [m.id for m in sdk(proxy).models.list()]
    assert ids == ["gemini-3-pro-preview", "gemini-3-flash-preview", "gemini-2.5-flash", "gemini-2.5-pro"]
    counted = sdk(proxy).messages.with_raw_response.count_tokens(
        model="gemini-2.5-flash", messages=[{"role": "user", "content": "count me"}], tools=TOOLS)
    assert counted.headers["x-token-count"] == "upstream-tokenizer"
    sent = next(r.json for r in fake.requests if r.target.endswith(":countTokens"))
    assert sent["generateContentRequest"]["contents"] == [{"role": "user", "parts": [{"text": "count me"}]}]
    assert counted.parse().input_tokens == len(json.dumps(sent["generateContentRequest"])) // 4


def test_a_forbidden_key_rotates_too(start_agproxy, fake):
    fake.script(Error(403, google_error(
        403, "Generative Language API has not been used in project 123 before or it is disabled. Enable it by "
             "visiting https://console.developers.google.com/apis/api/generativelanguage.googleapis.com then retry.",
        "PERMISSION_DENIED", [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED"}])))
    proxy = start_agproxy(gemini_config(fake, keys=["gemini-key", "gemini-key-2"]))
    raw = sdk(proxy).messages.with_raw_response.create(model="m", max_tokens=5,
                                                       messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-account-email"] == "key-2"


def test_a_call_gemini_keeps_failing_to_make_is_a_502_that_names_it(start_agproxy, fake):
    fake.script(*[Answer([{"text": "x"}], finish="MALFORMED_FUNCTION_CALL")] * 3)
    proxy = start_agproxy(gemini_config(fake))
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk(proxy).messages.create(model="m", max_tokens=50, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502 and "MALFORMED_FUNCTION_CALL" in caught.value.message
    assert len(fake.generations) == 3


def test_pings_while_gemini_thinks_and_huge_signatures_pass(start_agproxy):
    """Gemini's single events outgrow 128 KB with their signatures; a slow model gets pings."""
    with FakeGemini(signature_bytes=400_000) as slow:
        slow.script(Answer([{"text": "Let me read it."}, call("Read", {"path": "a.py"})], delay_s=1.0))
        proxy = start_agproxy(gemini_config(slow, ping_interval_s=0.5))
        body = json.dumps({"model": "m", "max_tokens": 50, "stream": True, "tools": TOOLS,
                           "messages": [{"role": "user", "content": "x"}]}).encode()
        request = urllib.request.Request(proxy.url + "/v1/messages", body, {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=20) as response:
            data = response.read()
        assert b"event: ping" in data
        message = message_of(data)
        assert len(message["content"][1]["signature"]) > 500_000 and message["content"][2]["input"] == {"path": "a.py"}


def test_calls_without_ids_from_older_models_loop_too(start_agproxy):
    with FakeGemini(call_ids=False) as older:
        older.script(Answer([call("Read", {"path": "a.py"}), call("Read", {"path": "b.py"})]))
        proxy = start_agproxy(gemini_config(older, model=FLASH_25))
        client = sdk(proxy)
        history: List[Dict[str, Any]] = [{"role": "user", "content": "read both"}]
        first = client.messages.create(model="m", max_tokens=200, tools=TOOLS, messages=history)
        calls = [b for b in first.content if b.type == "tool_use"]
        assert len(calls) == 2 and all(c.id.startswith("toolu_") for c in calls) and calls[0].id != calls[1].id
        history += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": c.id, "content": "x"}
                                                 for c in calls]}]
        assert client.messages.create(model="m", max_tokens=200, tools=TOOLS, messages=history).content
        assert older.rejections == []


def stream_bytes(chunks: List[Dict[str, Any]], error: bytes = b"") -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks) + error


TEXT_CHUNKS = [{"candidates": [{"content": {"parts": [{"text": t}], "role": "model"}}]} for t in ("one ", "two")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 400), max_size=12), st.booleans(), st.booleans())
def test_an_error_gemini_writes_into_its_stream_is_seen_however_the_bytes_are_split(cuts, pretty, lf_only):
    from tests.test_pipeline import ScriptedResponse

    error = json.dumps(google_error(503, "The model is overloaded.", "UNAVAILABLE"), indent=2 if pretty else None)
    raw = stream_bytes(TEXT_CHUNKS, error.encode())
    if lf_only:
        raw = raw.replace(b"\r\n", b"\n")
    reads, start = [], 0
    for cut in sorted(set(cuts)):
        reads.append(raw[start:cut])
        start = cut
    reads.append(raw[start:])
    reads = [r for r in reads if r]

    async def collect() -> bytes:
        out = b""
        async for batch in agproxy.gemini_events(ScriptedResponse(reads), GeminiStreamTranslator("m")):
            out += agproxy.encode_events(batch)
        return out

    events = agproxy.SSEDecoder().feed(__import__("asyncio").run(collect()))
    kinds = [e.event for e in events]
    assert kinds[-1] == "error" and "The model is overloaded." in events[-1].data
    assert "".join(json.loads(e.data)["delta"].get("text", "") for e in events
                   if e.event == "content_block_delta") == "one two"


STRAY_OR_NOT = [b"data: {}", b"data:", b"d", b"da", b"dat", b":", b"", b"  ", b"        x", b"event: e", b"retry: 1",
                b'{"error": {', b'"code": 1', b"}}", b"<html>", b"dx"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(STRAY_OR_NOT), max_size=10), st.sampled_from([b"\n", b"\r\n", b"\r"]),
       st.lists(st.integers(1, 120), max_size=6))
def test_stray_lines_are_told_apart_however_the_bytes_are_split(lines, newline, cuts):
    raw = newline.join(lines) + newline
    whole = agproxy.StrayLines()
    whole.feed(raw)
    whole.end()
    split, start = agproxy.StrayLines(), 0
    for cut in sorted(set(cuts)) + [len(raw)]:
        if raw[start:cut]:
            split.feed(raw[start:cut])
            start = cut
    split.end()
    assert bytes(split.text) == bytes(whole.text) and split._whole == whole._whole


@pytest.mark.parametrize("garbage", [b"<html>oops</html>\n", b"{not json}\n", b'{"candidates": []}\n'])
def test_stray_lines_that_are_not_an_error_fail_the_stream(garbage):
    from tests.test_pipeline import ScriptedResponse

    async def collect() -> None:
        async for _ in agproxy.gemini_events(ScriptedResponse([stream_bytes(TEXT_CHUNKS, garbage)]),
                                             GeminiStreamTranslator("m")):
            pass

    with pytest.raises(agproxy.UpstreamFailure, match="not"):
        __import__("asyncio").run(collect())


def test_the_last_event_counts_without_its_blank_line():
    from tests.test_pipeline import ScriptedResponse

    last = {"candidates": [{"content": {"parts": [{"text": "end"}], "role": "model"}, "finishReason": "MAX_TOKENS"}]}
    raw = stream_bytes(TEXT_CHUNKS) + b"data: " + json.dumps(last).encode()

    async def collect() -> Dict[str, Any]:
        return await agproxy.accumulate_events(agproxy.gemini_events(ScriptedResponse([raw]),
                                                                     GeminiStreamTranslator("m")))

    message = __import__("asyncio").run(collect())
    assert message["content"][0]["text"] == "one twoend" and message["stop_reason"] == "max_tokens"


def test_a_prompt_too_long_for_gemini_is_said_the_way_claude_code_compacts_on(start_agproxy, fake):
    fake.script(Error(400, google_error(400, "The input token count (1200000) exceeds the maximum number of tokens "
                                             "allowed (1048576).", "INVALID_ARGUMENT")))
    proxy = start_agproxy(gemini_config(fake))
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk(proxy).messages.create(model="claude-sonnet-4-6", max_tokens=50,
                                   messages=[{"role": "user", "content": "x"}])
    assert "prompt is too long" in caught.value.message and len(fake.generations) == 1


def test_extra_body_merges_into_gemini_s_nested_settings():
    request = {"generationConfig": {"maxOutputTokens": 10, "thinkingConfig": {"includeThoughts": True,
                                                                              "thinkingBudget": 2048}}}
    agproxy.merge_gemini_extra(request, {"generationConfig": {"thinkingConfig": {"thinkingLevel": "low"}},
                                         "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT",
                                                             "threshold": "BLOCK_NONE"}]})
    assert request["generationConfig"] == {"maxOutputTokens": 10, "thinkingConfig": {"includeThoughts": True,
                                                                                     "thinkingLevel": "low"}}
    assert request["safetySettings"][0]["threshold"] == "BLOCK_NONE"


def test_a_model_that_does_not_think_is_learned(start_agproxy, fake):
    fake.script(Error(400, google_error(400, "Thinking is not supported for this model.", "INVALID_ARGUMENT")))
    proxy = start_agproxy(gemini_config(fake))
    args = dict(model="m", max_tokens=50, thinking={"type": "enabled", "budget_tokens": 2000},
                messages=[{"role": "user", "content": "x"}])
    assert sdk(proxy).messages.create(**args).content
    assert "thinkingConfig" not in json.dumps(fake.generations[-1])
    sdk(proxy).messages.create(**args)
    assert len(fake.generations) == 3 and "thinkingConfig" not in json.dumps(fake.generations[-1])


def test_gemini_s_signatures_never_reach_another_upstream(start_agproxy, fake):
    """A conversation moved from Gemini to an Anthropic upstream: the blocks carrying Gemini's
    signatures are dropped there, however long ago they were made (no book needed)."""
    from tests.fakes.anthropic_upstream import FakeAnthropic

    fake.script(Answer([call("Read", {"path": "a.py"})]))
    with FakeAnthropic() as claude_upstream:
        config = gemini_config(fake)
        config["upstreams"].append({"name": "claude", "kind": "anthropic", "base_url": claude_upstream.url,
                                    "accounts": [{"name": "c", "api_key": "sk-c"}]})
        config["model_map"] = [{"match": "gem*", "upstream": "gemini", "model": PRO},
                               {"match": "*", "upstream": "claude"}]
        proxy = start_agproxy(config)
        client = sdk(proxy)
        first = client.messages.create(model="gem", max_tokens=200, tools=TOOLS,
                                       messages=[{"role": "user", "content": "read"}])
        assert first.content[0].signature.startswith("gemini:call:")
        history = [{"role": "user", "content": "read"},
                   {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first.content[1].id,
                                                 "content": "x"}]}]
        fresh = start_agproxy(config)  # a restart: the signature book is empty
        assert sdk(fresh).messages.create(model="claude-sonnet-5-5", max_tokens=50, tools=TOOLS,
                                          messages=history).content
        sent = claude_upstream.requests[-1].json
        assert "gemini:" not in json.dumps(sent) and sent["messages"][1]["content"][0]["type"] == "tool_use"


class ShapeOnlyGemini(FakeGemini):
    """The fake's rules, with any signature taken as Gemini's own: random histories carry made-up ones."""

    def __init__(self) -> None:
        super().__init__()
        self.issued = type("AnySignature", (dict,), {"get": lambda self, key, default=None: ("any", "")})()

    def _check_signatures(self, parts: List[Dict[str, Any]], index: int, current: bool) -> None:
        calls = [k for k, p in enumerate(parts) if "functionCall" in p]
        for k in calls[1:]:
            if "thoughtSignature" in parts[k] and parts[k]["thoughtSignature"] != SKIP_SIGNATURE:
                raise Refusal(f"Corrupted thought signature. (contents[{index}].parts[{k}]): not the first call")
        if current and calls and "thoughtSignature" not in parts[calls[0]]:
            raise Refusal("Function call is missing a thought_signature in functionCall parts.")


IDS = st.sampled_from(["t1", "t2", "t3", "t4"])
BLOCKS = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, st.sampled_from(["", " ", "words"])),
    st.builds(lambda i, n: {"type": "tool_use", "id": i, "name": n, "input": {"a": 1}}, IDS,
              st.sampled_from(["Read", "Bash"])),
    st.builds(lambda i, e: {"type": "tool_result", "tool_use_id": i, "content": "out", "is_error": e}, IDS,
              st.booleans()),
    st.builds(lambda s, t: {"type": "thinking", "thinking": t, "signature": s},
              st.sampled_from(["", "EqAnthropicSig", "gemini:call:UzE=", "gemini:thought:UzI=", "gemini:text:UzM=",
                               "gemini:call:", "gemini:"]), st.sampled_from(["", "hmm"])),
    st.just({"type": "redacted_thinking", "data": "xyz"}),
    st.just({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}),
    st.just({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}),
)
MESSAGES = st.lists(st.builds(lambda role, content: {"role": role, "content": content},
                              st.sampled_from(["user", "assistant", "system"]),
                              st.one_of(st.sampled_from(["", "hello"]), st.lists(BLOCKS, max_size=5))),
                    min_size=1, max_size=8)


@settings(max_examples=400, deadline=None)
@given(MESSAGES, st.booleans())
def test_any_history_translates_into_what_gemini_accepts(messages, trusted):
    body = {"model": "m", "max_tokens": 5, "messages": messages}
    try:
        out = anthropic_to_gemini(body, PRO, lambda s: trusted, lambda i: None)[0]
    except agproxy.InvalidRequest as exc:
        assert "nothing to send" in exc.message
        return
    ShapeOnlyGemini().check(out, PRO)


def test_tool_names_gemini_refuses_go_by_valid_names_and_come_back_as_they_were(start_agproxy, fake):
    long_name = "mcp__" + "very_long_server_name_" * 4 + "__lookup"
    names = ["1password_lookup", long_name]
    tools = [{"name": n, "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}} for n in names]
    gemini_names = [agproxy.gemini_function_name(n) for n in names]
    assert gemini_names[0].startswith("_1password_lookup_") and len(gemini_names[1]) == 64
    assert agproxy.gemini_function_name("_1password_lookup") == "_1password_lookup"  # no clash with a changed one
    assert agproxy.gemini_function_name(long_name) == gemini_names[1]  # the same every time
    fake.script(Answer([call(gemini_names[0], {"q": "a"}), call(gemini_names[1], {"q": "b"})]))
    proxy = start_agproxy(gemini_config(fake))
    client = sdk(proxy)
    history: List[Dict[str, Any]] = [{"role": "user", "content": "look up"}]
    first = client.messages.create(model="m", max_tokens=100, tools=tools, messages=history,
                                   tool_choice={"type": "tool", "name": long_name})
    assert [b.name for b in first.content if b.type == "tool_use"] == names
    history += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": b.id, "content": "ok"}
                                             for b in first.content if b.type == "tool_use"]}]
    assert client.messages.create(model="m", max_tokens=100, tools=tools, messages=history).content
    assert fake.rejections == []
    sent = fake.generations[0]
    assert [d["name"] for d in sent["tools"][0]["functionDeclarations"]] == gemini_names
    assert sent["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"] == [gemini_names[1]]


def test_a_base_url_with_gemini_s_version_path_is_warned_of_at_start(start_agproxy, fake):
    config = gemini_config(fake)
    config["upstreams"][0]["base_url"] = fake.url + "/v1beta"
    proxy = start_agproxy(config)
    assert "base_url ends in a version path" in proxy.log()


def test_web_search_is_google_search_alone_and_dropped_with_a_log_line_beside_functions(start_agproxy, fake):
    proxy = start_agproxy(gemini_config(fake))
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    sdk(proxy).messages.create(model="m", max_tokens=50, tools=[search], messages=[{"role": "user", "content": "x"}])
    assert fake.generations[-1]["tools"] == [{"googleSearch": {}}]
    sdk(proxy).messages.create(model="m", max_tokens=50, tools=[search] + TOOLS,
                               messages=[{"role": "user", "content": "x"}])
    assert "googleSearch" not in json.dumps(fake.generations[-1]) and "web_search dropped" in proxy.log()


def test_counting_uses_a_key_that_is_not_resting(start_agproxy, fake):
    proxy = start_agproxy(gemini_config(fake, keys=["wrong-key", "gemini-key"]))
    sdk(proxy).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])  # rests key-1
    counted = sdk(proxy).messages.with_raw_response.count_tokens(model="m", messages=[{"role": "user", "content": "x"}])
    assert counted.headers["x-token-count"] == "upstream-tokenizer"
    assert fake.requests[-1].header("x-goog-api-key") == "gemini-key"
