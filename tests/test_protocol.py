"""The Claude Code protocol layer: profiles, the sanitizer, warmups, self-healing and the
thinking-signature fallback; pure functions first, then end to end through agproxy."""

from __future__ import annotations

import copy
import json
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agproxy
from agproxy import PROFILE_DEFAULTS, learnable_path, rejected_inputs, sanitize_betas, sanitize_request
from tests.conftest import fake_config
from tests.corpus import BETAS, WELL_FORMED, corpus
from tests.fakes.anthropic_upstream import FakeAnthropic, Sse, text_stream, tool_and_thinking_stream
from tests.fakes.strict_rules import violation

COMPATIBLE = PROFILE_DEFAULTS["compatible"]
ANTHROPIC = PROFILE_DEFAULTS["anthropic"]


# -- pure: the sanitizer ------------------------------------------------------------------

def sanitized(body: Dict[str, Any], profile=COMPATIBLE, **kw) -> Dict[str, Any]:
    body = copy.deepcopy(body)
    sanitize_request(body, profile, **kw)
    return body


@pytest.mark.parametrize("name, headers, body", corpus(), ids=[c[0] for c in corpus()])
def test_compatible_profile_output_passes_the_strict_rules(name, headers, body):
    out = sanitized(body)
    beta, _ = sanitize_betas(dict(headers).get("anthropic-beta"), COMPATIBLE)
    assert beta is None
    assert violation([], out) is None


@pytest.mark.parametrize("name, headers, body", [c for c in corpus() if c[0] in WELL_FORMED],
                         ids=[c[0] for c in corpus() if c[0] in WELL_FORMED])
def test_anthropic_profile_leaves_well_formed_requests_alone(name, headers, body):
    out = copy.deepcopy(body)
    assert sanitize_request(out, ANTHROPIC) == {}
    assert out == body
    assert sanitize_betas(BETAS, ANTHROPIC) == (BETAS, {})


def test_merge_puts_tool_results_first_and_keeps_order():
    body = {"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "text", "text": "note"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
    ]}
    out = sanitized(body)
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                                             {"type": "text", "text": "note"}]


def test_interrupted_tool_use_gets_an_error_result():
    body = {"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
    ]}
    out = sanitized(body, ANTHROPIC)
    assert out["messages"][-1] == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                                                "is_error": True,
                                                                "content": agproxy.INTERRUPTED_TOOL_TEXT}]}


def test_system_messages_go_where_the_profile_says():
    body = {"model": "m", "max_tokens": 10, "system": "base", "messages": [
        {"role": "user", "content": "a"}, {"role": "system", "content": "note"},
        {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}
    into_system = sanitized(body)
    assert into_system["system"] == [{"type": "text", "text": "base"}, {"type": "text", "text": "note"}]
    into_user = sanitized(body, agproxy.Profile(system_messages="user"))
    assert into_user["messages"][2] == {"role": "user", "content": [{"type": "text", "text": "note"},
                                                                    {"type": "text", "text": "c"}]}
    assert sanitized(body, ANTHROPIC) == body


def test_adaptive_thinking_becomes_enabled_with_a_budget():
    out = sanitized({"model": "m", "max_tokens": 64000, "messages": [{"role": "user", "content": "x"}],
                     "thinking": {"type": "adaptive", "display": "summarized"}})
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 16000}
    small = sanitized({"model": "m", "max_tokens": 800, "messages": [{"role": "user", "content": "x"}],
                       "thinking": {"type": "adaptive"}})
    assert "thinking" not in small


def test_foreign_thinking_blocks_are_dropped():
    book = agproxy.SignatureBook(limit=2)
    book.record("sig-from-a", "a")
    body = {"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "sig-from-a"},
                                          {"type": "thinking", "thinking": "u", "signature": "sig-unknown"},
                                          {"type": "text", "text": "answer"}]},
        {"role": "user", "content": "more"}]}
    kept = sanitized(body, ANTHROPIC, drop_thinking=book.foreign_to("a"))
    assert kept == body
    out = sanitized(body, ANTHROPIC, drop_thinking=book.foreign_to("b"))
    assert [b.get("signature") for b in out["messages"][1]["content"]] == ["sig-unknown", None]
    book.record("x", "a")
    book.record("y", "a")
    assert book.owner("sig-from-a") is None  # bounded: the oldest went first


def test_strip_thinking_history_disables_thinking_mid_tool_loop():
    name, _, body = next(c for c in corpus() if c[0] == "tool_loop")
    out = copy.deepcopy(body)
    changes = agproxy.strip_thinking_history(out)
    assert changes["thinking_block_stripped"] == 1 and changes["thinking_disabled_for_turn"] == 1
    assert "thinking" not in out and "context_management" not in out
    assert "thinking" not in json.dumps(out["messages"])


# -- pure: what upstream errors say they reject ------------------------------------------------

@pytest.mark.parametrize("error, fields, betas", [
    ({"type": "error", "error": {"type": "invalid_request_error",
                                 "message": "context_management: Extra inputs are not permitted"}},
     ["context_management"], []),
    ({"error": {"message": "tools.3.custom.input_examples: Extra inputs are not permitted"}},
     ["tools.3.custom.input_examples"], []),
    ({"type": "error", "error": {"message": "Unexpected value(s) `prompt-caching-scope-2026-01-05`, "
                                           "`effort-2025-11-24` for the `anthropic-beta` header. Please consult "
                                           "our documentation at docs.anthropic.com or try again without the header."}},
     [], ["prompt-caching-scope-2026-01-05", "effort-2025-11-24"]),
    ({"type": "error",
      "error": {"message": "Unexpected value(s) afk-mode-2026-01-31 for the anthropic-beta header."}},
     [], ["afk-mode-2026-01-31"]),
    ({"detail": [{"loc": ["body", "output_config"], "msg": "Extra inputs are not permitted",
                  "type": "extra_forbidden"}]},
     ["output_config"], []),
    ({"error": {"message": "Unrecognized request argument supplied: context_management"}},
     ["context_management"], []),
    ({"error": {"message": "unknown field `output_config`, expected one of `model`, `messages`"}},
     ["output_config"], []),
    ({"error": {"message": "{\"message\":\"context_management: Extra inputs are not permitted\"}"}},
     ["context_management"], []),
    ({"error": {"message": "max_tokens: Field required"}}, [], []),
])
def test_rejected_inputs(error, fields, betas):
    assert rejected_inputs(json.dumps(error).encode()) == (fields, betas)


def test_learnable_paths_generalise_and_protect():
    _, _, body = next(c for c in corpus() if c[0] == "first_turn")
    assert learnable_path(body, "context_management") == "context_management"
    assert learnable_path(body, "tools.19.custom.input_examples") == "tools.*.input_examples"
    assert learnable_path(body, "tools.14.defer_loading") == "tools.*.defer_loading"
    assert learnable_path(body, "messages.0.content.1.text.cache_control") == "messages.*.content.*.cache_control"
    for protected in ("model", "messages", "max_tokens", "tools", "messages.0.content", "tools.0.input_schema",
                      "not_there", "tools.99.name", "messages.0.content.1.text.text"):
        assert learnable_path(body, protected) is None, protected


def test_warmup_detection():
    def last(content):
        return {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": content}]}
    assert agproxy.is_warmup(last("Warmup"))
    assert agproxy.is_warmup(last([{"type": "text", "text": "Warmup"}]))
    assert agproxy.is_warmup(last([{"type": "text", "text": "Warmup\nagent: Explore"}]))
    assert agproxy.is_warmup(last([{"type": "tool_result", "tool_use_id": "t", "is_error": True,
                                    "content": "Warmup"}]))
    assert not agproxy.is_warmup(last("Warmup the oven to 200 degrees and then " + "x" * 300))
    assert not agproxy.is_warmup(last([{"type": "text", "text": "Warmups are good"}]))
    assert not agproxy.is_warmup(last("Please warm up"))


def test_session_id_sources():
    assert agproxy.session_id([("X-Claude-Code-Session-Id", "abc")], {}) == "abc"
    meta = {"metadata": {"user_id": json.dumps({"session_id": "s-1"})}}
    assert agproxy.session_id([], meta) == "s-1"
    old = {"metadata": {"user_id": "user_ab12_account__session_0a1b2c3d-4e5f"}}
    assert agproxy.session_id([], old) == "0a1b2c3d-4e5f"


# -- hypothesis: invariants of the sanitized output -------------------------------------------

IDS = st.sampled_from(["t1", "t2", "t3", "t4"])
TEXT = st.sampled_from(["", " ", "hello", "world", "Warmup", "multi\nline"])
BLOCK = st.one_of(
    st.builds(lambda t, c: {"type": "text", "text": t, **({"cache_control": {"type": "ephemeral"}} if c else {})},
              TEXT, st.booleans()),
    st.builds(lambda i: {"type": "tool_use", "id": i, "name": "Bash", "input": {"command": i}}, IDS),
    st.builds(lambda i, t, e: {"type": "tool_result", "tool_use_id": i, "content": t, "is_error": e}, IDS, TEXT,
              st.booleans()),
    st.just({"type": "thinking", "thinking": "hmm", "signature": "sig"}),
    st.just({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}),
)
MESSAGE = st.builds(lambda role, content: {"role": role, "content": content},
                    st.sampled_from(["user", "assistant", "system"]),
                    st.one_of(TEXT, st.lists(BLOCK, max_size=4)))


def _texts(body: Dict[str, Any]) -> str:
    return json.dumps(body)


def _non_empty_texts(messages: List[Dict[str, Any]]) -> List[str]:
    found = []
    for message in messages:
        content = message["content"]
        for block in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            if block.get("type") == "text" and block["text"].strip():
                found.append(block["text"])
            if block.get("type") == "tool_result" and isinstance(block["content"], str) and block["content"].strip():
                found.append(block["content"])
    return found


@settings(max_examples=400, deadline=None)
@given(st.lists(MESSAGE, max_size=8))
def test_sanitized_history_satisfies_a_strict_server_and_loses_nothing(messages):
    body = {"model": "m", "max_tokens": 100, "messages": messages}
    original = copy.deepcopy(body)
    out = sanitized(body)
    assert body == original  # the input is never changed through shared structure
    if out["messages"]:  # (with none left, the upstream's own "messages: required" is the right answer)
        assert violation([], out) is None
    everything = _texts(out)
    for text in _non_empty_texts(messages):
        assert json.dumps(text)[1:-1] in everything
    tool_use_ids = {b["id"] for m in messages if isinstance(m["content"], list) for b in m["content"]
                    if b.get("type") == "tool_use"}
    for tool_id in tool_use_ids:
        assert f'"id": "{tool_id}"' in everything or f"tool call {tool_id}" in everything


@settings(max_examples=200, deadline=None)
@given(st.lists(MESSAGE, max_size=8))
def test_anthropic_profile_output_pairs_tools_and_is_idempotent(messages):
    out = sanitized({"model": "m", "max_tokens": 100, "messages": messages}, ANTHROPIC)
    again = copy.deepcopy(out)
    assert sanitize_request(again, ANTHROPIC) == {}
    assert again == out


# -- end to end ---------------------------------------------------------------------------------

def post(proxy, path: str, body: Dict[str, Any], headers) -> tuple:
    request = urllib.request.Request(proxy.url + path, json.dumps(body).encode(),
                                     dict(headers, **{"content-type": "application/json"}))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def _path(name: str) -> str:
    return "/v1/messages/count_tokens?beta=true" if name == "count_tokens" else "/v1/messages?beta=true"


def test_corpus_through_a_compatible_profile_to_a_strict_upstream(start_agproxy):
    with FakeAnthropic(strict=True) as strict:
        config = fake_config(strict)
        config["upstreams"][0]["profile"] = "compatible"
        proxy = start_agproxy(config)
        for name, headers, body in corpus():
            status, _, data = post(proxy, _path(name), body, headers)
            assert status == 200, (name, data)
        assert strict.rejections == []
        with urllib.request.urlopen(proxy.url + "/v1/agproxy/stats", timeout=5) as response:
            counters = json.load(response)["counters"]
        for kind in ("cache_control", "field:context_management", "system_message_moved", "tool_result_synthesized",
                     "orphan_tool_result_to_text", "first_user_inserted", "betas_dropped", "thinking_adaptive_mapped"):
            assert counters[f"sanitize:{kind}"] > 0, kind
        assert all(r.header("anthropic-beta") is None for r in strict.requests)


def test_corpus_to_a_full_anthropic_upstream_arrives_unchanged_unless_repaired(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, force_stream_internally=False))
    received: Dict[str, Any] = {}
    for name, headers, body in corpus():
        status, _, data = post(proxy, _path(name), body, headers)
        assert status == 200, (name, data)
        sent = fake.requests[-1]
        assert sent.header("anthropic-beta") == dict(headers).get("anthropic-beta")
        if name in WELL_FORMED:
            assert sent.json == body, name
            continue
        assert {k: v for k, v in sent.json.items() if k != "messages"} == \
            {k: v for k, v in body.items() if k != "messages"}, name
        received[name] = sent.json["messages"]
    assert received["interrupted_tool"][2]["content"][0] == {
        "type": "tool_result", "tool_use_id": "toolu_02A", "is_error": True, "content": agproxy.INTERRUPTED_TOOL_TEXT}
    messy = json.dumps(received["messy_history"])
    assert '"text": ""' not in messy and '"text": "  "' not in messy and '"content": ""' not in messy
    assert received["orphan_tool_result"][0]["content"][0]["text"].startswith("[result of tool call toolu_gone]")
    assert received["assistant_first"][0] == {"role": "user", "content": agproxy.CONTINUATION_TEXT}


WHOLE_ANSWER_BODIES = [  # (the client's bytes, what the upstream must get: None for "the same JSON, written anew")
    (b'{"model":"claude-fake","max_tokens":5,"messages":[{"role":"user","content":"caf\xc3\xa9 \\"stream\\""}],'
     b'"stream":false}',
     b'{"model":"claude-fake","max_tokens":5,"messages":[{"role":"user","content":"caf\xc3\xa9 \\"stream\\""}],'
     b'"stream":true}'),
    (b'{ "model" : "claude-fake", "max_tokens": 5,\n "messages": [{"role": "user", "content": "hi"}] }\n',
     b'{ "model" : "claude-fake", "max_tokens": 5,\n "messages": [{"role": "user", "content": "hi"}],"stream":true}'),
    (b'{"model":"claude-fake","max_tokens":5,"messages":[{"role":"user","content":"a"}],"stream" :\tfalse\r\n}',
     b'{"model":"claude-fake","max_tokens":5,"messages":[{"role":"user","content":"a"}],"stream":true}'),
    (b'{"model":"claude-fake","stream":false,"max_tokens":5,"messages":[{"role":"user","content":"a"}]}', None),
    (b'{"model":"claude-fake","max_tokens":5,"messages":[{"role":"user","content":"stream"}],'
     b'"metadata":{"user_id":"stream"},"stream":false}',
     b'{"model":"claude-fake","max_tokens":5,"messages":[{"role":"user","content":"stream"}],'
     b'"metadata":{"user_id":"stream"},"stream":true}'),
    (b'{"model":"claude-fake","max_tokens":5,"messages":[{"role":"user","content":"a"}],"str\\u0065am":false}', None),
]


@pytest.mark.parametrize("raw, expected", WHOLE_ANSWER_BODIES)
def test_a_request_that_wants_its_answer_whole_goes_upstream_as_its_own_bytes_with_stream_made_true(
        start_agproxy, fake, raw, expected):
    """agproxy asks for a stream (force_stream_internally) without encoding the client's JSON again
    where ``stream`` is a change at its end; elsewhere it writes the JSON anew. Either way the
    upstream gets the client's request with ``stream`` true, and the client its whole Message."""
    proxy = start_agproxy(fake_config(fake))
    request = urllib.request.Request(proxy.url + "/v1/messages", raw, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200 and json.load(response)["type"] == "message"
    sent = fake.requests[-1].body
    if expected is not None:
        assert sent == expected
    assert json.loads(sent) == dict(json.loads(raw), stream=True)


def test_strict_upstream_without_the_profile_refuses_the_corpus(start_agproxy):
    """The control for the test above: the strict fake really refuses Claude Code as it is."""
    with FakeAnthropic(strict=True) as strict:
        proxy = start_agproxy(fake_config(strict))
        name, headers, body = corpus()[0]
        status, _, data = post(proxy, _path(name), body, headers)
        assert "anthropic-beta" in strict.rejections[0]  # Claude Code's request as it was sent
        # The anthropic profile heals at most four rejections per request; the strict server has more.
        assert status == 400 and len(strict.rejections) == 5


@pytest.mark.parametrize("stream", [False, True])
def test_warmups_are_answered_locally(start_agproxy, fake, stream):
    proxy = start_agproxy(fake_config(fake))
    for content in ("Warmup", [{"type": "text", "text": "Warmup"}]):
        body = {"model": "claude-haiku-4-5", "max_tokens": 10, "stream": stream,
                "messages": [{"role": "user", "content": content}]}
        status, headers, data = post(proxy, "/v1/messages", body, {})
        assert status == 200 and headers["X-Warmup-Intercepted"] == "true"
        if stream:
            assert b"event: message_stop" in data and b'"text":"OK"' in data
        else:
            assert json.loads(data)["content"] == [{"type": "text", "text": "OK"}]
            assert json.loads(data)["usage"] == {"input_tokens": 1, "output_tokens": 1}
    assert fake.requests == []
    with urllib.request.urlopen(proxy.url + "/v1/agproxy/stats", timeout=5) as response:
        assert json.load(response)["counters"]["warmup_intercepted"] == 2


def test_warmup_interception_can_be_turned_off(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, warmup_interception=False))
    status, headers, _ = post(proxy, "/v1/messages", {"model": "m", "max_tokens": 5,
                                                      "messages": [{"role": "user", "content": "Warmup"}]}, {})
    assert status == 200 and "X-Warmup-Intercepted" not in headers and len(fake.requests) == 1


def test_self_healing_learns_persists_and_logs_once(start_agproxy, tmp_path):
    state = tmp_path / "state.json"
    name, headers, body = corpus()[0]
    with FakeAnthropic(reject_fields=["context_management", "output_config"],
                       reject_betas=["prompt-caching-scope-2026-01-05"]) as picky:
        proxy = start_agproxy(fake_config(picky, state_file=str(state)))
        assert post(proxy, "/v1/messages", body, headers)[0] == 200
        assert len(picky.requests) == 4  # three lessons, then success
        final = picky.requests[-1]
        assert "context_management" not in final.json and "output_config" not in final.json
        assert "prompt-caching-scope-2026-01-05" not in final.header("anthropic-beta")
        assert "effort-2025-11-24" in final.header("anthropic-beta")
        assert final.json["thinking"] == body["thinking"] and final.json["tools"] == body["tools"]
        assert post(proxy, "/v1/messages", body, headers)[0] == 200
        assert len(picky.requests) == 5  # learned: straight through
        assert proxy.log().count("rejects context_management") == 1
        saved = saved_state(state, lambda s: s.get("learned", {}).get("fake", {}).get("fields"))
        assert saved["learned"]["fake"]["fields"] == ["context_management", "output_config"]
        proxy.stop()
        again = start_agproxy(fake_config(picky, state_file=str(state)))
        assert post(again, "/v1/messages", body, headers)[0] == 200
        assert len(picky.requests) == 6  # a restart remembers


def test_self_healing_turns_refused_adaptive_thinking_into_the_basic_form(start_agproxy):
    """An Anthropic-compatible service on the default profile that knows only enabled/disabled
    thinking (Claude Code 2.1.332 sends adaptive): learned once, then sent that way."""
    asked = {"model": "m", "max_tokens": 32000, "thinking": {"type": "adaptive"},
             "messages": [{"role": "user", "content": "x"}]}
    with FakeAnthropic(basic_thinking_only=True) as picky:
        proxy = start_agproxy(fake_config(picky))
        assert post(proxy, "/v1/messages", asked, {})[0] == 200
        assert [r.json["thinking"]["type"] for r in picky.requests] == ["adaptive", "enabled"]
        assert 1024 <= picky.requests[1].json["thinking"]["budget_tokens"] < 32000
        assert post(proxy, "/v1/messages", asked, {})[0] == 200
        assert len(picky.requests) == 3 and picky.requests[2].json["thinking"]["type"] == "enabled"
        assert "thinking.type=basic" in proxy.log()


def test_what_cannot_be_healed_names_the_profile_that_would(start_agproxy):
    with FakeAnthropic(reject_fields=["system"]) as picky:
        proxy = start_agproxy(fake_config(picky))
        status, _, data = post(proxy, "/v1/messages", {"model": "m", "max_tokens": 5, "system": "be brief",
                                                       "messages": [{"role": "user", "content": "x"}]}, {})
        message = json.loads(data)["error"]["message"]
        assert status == 400 and message.startswith("system: Extra inputs are not permitted")
        assert '"profile": "compatible"' in message and "'fake'" in message


def test_self_healing_never_strips_what_the_request_needs(start_agproxy):
    with FakeAnthropic(reject_fields=["max_tokens"]) as picky:
        proxy = start_agproxy(fake_config(picky))
        status, _, data = post(proxy, "/v1/messages", {"model": "m", "max_tokens": 5,
                                                       "messages": [{"role": "user", "content": "x"}]}, {})
        assert status == 400 and b"max_tokens" in data
        assert len(picky.requests) == 1


def saved_state(path, ready, wait_s: float = 5.0):
    """The state file once ``ready(state)`` holds: agproxy saves it off its event loop, just after
    the answer that changed it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            state = {}
        if ready(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def test_a_corrupt_state_file_is_reported_and_left_alone_and_lessons_kept_in_memory(start_agproxy, tmp_path):
    """A file agproxy cannot read as its own may be anyone's: it is never replaced (issue 18), and
    what agproxy learns is kept in memory meanwhile."""
    state = tmp_path / "state.json"
    state.write_text("{not json")
    with FakeAnthropic(reject_fields=["context_management"]) as picky:
        proxy = start_agproxy(fake_config(picky, state_file=str(state)))
        assert "is not agproxy's (not JSON)" in proxy.log()
        name, headers, body = corpus()[0]
        assert post(proxy, "/v1/messages", body, headers)[0] == 200
        refused = len(picky.requests)
        assert post(proxy, "/v1/messages", body, headers)[0] == 200
        assert len(picky.requests) == refused + 1  # learned: no second 400
    assert state.read_text() == "{not json"


def test_thinking_signatures_follow_the_upstream_that_made_them(start_agproxy):
    with FakeAnthropic(signature_prefix="sigA") as a, FakeAnthropic(signature_prefix="sigB") as b:
        config = {"upstreams": [
            {"name": "a", "kind": "anthropic", "base_url": a.url, "accounts": [{"name": "a1", "api_key": "ka"}]},
            {"name": "b", "kind": "anthropic", "base_url": b.url, "accounts": [{"name": "b1", "api_key": "kb"}]}],
            "model_map": [{"match": "model-a", "upstream": "a"}, {"match": "*", "upstream": "b"}]}
        proxy = start_agproxy(dict(config, log_level="debug"))
        headers = {"X-Claude-Code-Session-Id": "session-1"}
        a.script(Sse(tool_and_thinking_stream(signature="sigA-777")))
        question = {"role": "user", "content": "list files"}
        status, _, data = post(proxy, "/v1/messages", {"model": "model-a", "max_tokens": 4000, "stream": True,
                                                       "thinking": {"type": "enabled", "budget_tokens": 2000},
                                                       "messages": [question]}, headers)
        assert status == 200 and b"sigA-777" in data
        turn = {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "The user wants the files. I will run ls.", "signature": "sigA-777"},
            {"type": "tool_use", "id": "toolu_fake_1", "name": "Bash", "input": {"command": "ls -la"}}]}
        result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_fake_1",
                                               "content": "a.txt"}]}
        follow_up = {"model": "model-b", "max_tokens": 4000, "stream": True,
                     "thinking": {"type": "enabled", "budget_tokens": 2000},
                     "messages": [question, turn, result]}
        b.script(Sse(text_stream("done")))
        status, _, data = post(proxy, "/v1/messages", follow_up, headers)
        assert status == 200 and b"message_stop" in data
        assert len(b.requests) == 1 and "sigA-777" not in b.requests[0].body.decode()

        # A signature agproxy never saw (another gateway made it): the upstream refuses, agproxy retries once.
        unknown = copy.deepcopy(follow_up)
        unknown["messages"][1]["content"][0]["signature"] = "sigZ-elsewhere"
        status, _, data = post(proxy, "/v1/messages", unknown, headers)
        assert status == 200, data
        assert len(b.requests) == 3
        retried = b.requests[-1].json
        assert "thinking" not in retried and "sigZ" not in b.requests[-1].body.decode()
        assert post(proxy, "/v1/messages", unknown, headers)[0] == 200
        assert proxy.log().count("refused thinking signatures made elsewhere") == 1


# -- context window signalling ------------------------------------------------------------------

def test_scaling_is_onto_the_clients_window():
    assert agproxy.scale_tokens(16000, 32000, 200000) == 100000
    assert agproxy.scale_tokens(16000, 300000, 200000) == 16000  # never scaled down
    assert agproxy.client_context_window([("anthropic-beta", "x, context-1m-2025-08-07")]) == 1_000_000
    assert agproxy.client_context_window([]) == 200_000


@pytest.mark.parametrize("model, window", [
    ("claude-opus-5-5", 1_000_000),  # Claude Code 2.1.332's default, 1M without any beta
    ("claude-opus-5", 1_000_000),
    ("claude-sonnet-4-6", 200_000),
    ("claude-sonnet-4-5-20250929", 200_000),  # a dated id
    ("us.anthropic.claude-opus-4-7-v1", 1_000_000),  # a provider's id
    ("claude-sonnet-4-6[1m]", 1_000_000),
    ("claude-opus-4-60", 200_000),  # not claude-opus-4-6, not a known model
    ("qwen3-coder", 200_000),
    (None, 200_000),
])
def test_the_clients_window_is_the_one_claude_code_assumes_for_its_model(model, window):
    assert agproxy.client_context_window([], model) == window
    assert agproxy.client_context_window([("anthropic-beta", "context-1m-2025-08-07")], model) == 1_000_000


def test_the_built_in_model_list_is_current():
    listed = [model for model, _ in agproxy.KNOWN_CLAUDE_MODELS]
    assert listed[0] == "claude-opus-5-5" and "claude-sonnet-4-5" not in listed
    error = agproxy.prompt_too_long(40000, 32000, 200000)
    assert (error.status, error.message) == (400, "prompt is too long: 250000 tokens > 200000 maximum")


def test_usage_scaler_rewrites_only_usage():
    events = agproxy.EventStreamCheck("up").feed(b"".join(encode(e, d) for e, d in text_stream("a b")))
    before = [json.dumps(e.data) for e in events]
    out = agproxy.encode_events(agproxy.UsageScaler(32000, 200000).scale(events))
    assert [json.dumps(e.data) for e in events] == before  # scaled in copies: the answer's own usage stays
    decoded = agproxy.SSEDecoder().feed(out)
    assert [e.event for e in decoded] == [e for e, _ in text_stream("a b")]
    start = json.loads(decoded[0].data)
    assert start["message"]["usage"]["input_tokens"] == agproxy.scale_tokens(12, 32000, 200000)
    for event, (name, original) in zip(decoded, text_stream("a b")):
        if name not in ("message_start", "message_delta"):
            assert json.loads(event.data) == original


def encode(event, data):
    from tests.fakes.anthropic_upstream import encode_event
    return encode_event(event, data)


def test_context_window_scales_usage_and_refuses_what_cannot_fit(start_agproxy, fake):
    config = fake_config(fake)
    config["upstreams"][0]["context_window"] = 32000
    proxy = start_agproxy(config)
    small = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    status, _, data = post(proxy, "/v1/messages", small, {})
    assert status == 200 and json.loads(data)["usage"]["input_tokens"] == 75  # 12 of 32k = 75 of 200k
    status, _, data = post(proxy, "/v1/messages", dict(small, stream=True), {})
    assert b'"input_tokens":75' in data
    status, _, data = post(proxy, "/v1/messages/count_tokens", {"model": "m", "messages": small["messages"]},
                           {"anthropic-beta": "context-1m-2025-08-07"})
    assert json.loads(data) == {"input_tokens": agproxy.scale_tokens(4242, 32000, 1_000_000)}
    huge = dict(small, messages=[{"role": "user", "content": "word " * 40000}])
    status, _, data = post(proxy, "/v1/messages", huge, {})
    error = json.loads(data)["error"]
    assert status == 400 and error["type"] == "invalid_request_error"
    assert error["message"].startswith("prompt is too long: ") and error["message"].endswith("> 200000 maximum")
    assert len(fake.requests) == 3  # the huge one never left
    # Claude Code's default model, whose 1M window Claude Code assumes without any beta
    status, _, data = post(proxy, "/v1/messages", dict(small, model="claude-opus-5-5"), {})
    assert json.loads(data)["usage"]["input_tokens"] == agproxy.scale_tokens(12, 32000, 1_000_000) == 375
    status, _, data = post(proxy, "/v1/messages", dict(huge, model="claude-opus-5-5"), {})
    assert json.loads(data)["error"]["message"].endswith("> 1000000 maximum")


def test_upstream_overflow_error_becomes_prompt_is_too_long(start_agproxy, fake):
    from tests.fakes.anthropic_upstream import Json
    fake.script(Json(400, {"error": {"message": "This model's maximum context length is 32768 tokens. However, "
                                                "you requested 40000 tokens."}}))
    config = fake_config(fake)
    config["upstreams"][0]["context_window"] = 32768
    proxy = start_agproxy(config)
    status, _, data = post(proxy, "/v1/messages", {"model": "m", "max_tokens": 100,
                                                   "messages": [{"role": "user", "content": "hi"}]}, {})
    assert status == 400 and json.loads(data)["error"]["message"].startswith("prompt is too long: 200001 tokens")


BILLING = "x-anthropic-billing-header: cc_version=2.1.332.0b8; cc_entrypoint=sdk-cli;"


@pytest.mark.parametrize("system, expected", [
    ([{"type": "text", "text": BILLING}, {"type": "text", "text": "You are Claude Code."}],
     [{"type": "text", "text": "You are Claude Code."}]),
    ([{"type": "text", "text": BILLING + "\nYou are Claude Code."}],
     [{"type": "text", "text": "You are Claude Code."}]),
    (BILLING + "\n\nYou are Claude Code.", "You are Claude Code."),
    ("You are Claude Code. " + BILLING, "You are Claude Code. " + BILLING),
])
def test_the_billing_header_line_goes_for_every_profile_but_anthropic(system, expected):
    for profile, kept in (("anthropic", True), ("compatible", False), ("openai", False)):
        body = {"model": "m", "max_tokens": 5, "system": system, "messages": [{"role": "user", "content": "hi"}]}
        agproxy.sanitize_request(body, agproxy.PROFILE_DEFAULTS[profile])
        assert body["system"] == (system if kept else expected), profile


def test_the_demo_echoes_what_the_user_typed_not_claude_codes_reminders():
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>\nAs you answer the user's questions, you can use the following "
                                 "context:\n# claudeMd\nbe terse\n</system-reminder>"},
        {"type": "text", "text": "what is 2+2?"},
        {"type": "text", "text": "<system-reminder>The date is 2026-12-02.</system-reminder>", "cache_control": {
            "type": "ephemeral"}}]}]}
    text = agproxy.demo_reply_text(body)
    assert '"what is 2+2?"' in text and "system-reminder" not in text and "claudeMd" not in text
    assert '"hello"' in agproxy.demo_reply_text({"messages": [
        {"role": "user", "content": "hello<system-reminder>unclosed"}]})
