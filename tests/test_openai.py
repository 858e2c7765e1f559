"""OpenAI-compatible upstreams: the translators on their own (with hypothesis for the stream state
machine), then the anthropic SDK through agproxy to a strict fake Chat Completions server."""

from __future__ import annotations

import copy
import json
import time
import urllib.request
from typing import Any, Dict, List

import anthropic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agproxy
from agproxy import (
    MessageAccumulator,
    OpenAIOptions,
    OpenAIStreamTranslator,
    SSEDecoder,
    anthropic_to_openai,
    openai_to_anthropic,
    sanitize_request,
)
from tests.conftest import RESET_HANG_UPS, hang_up_on_a_fake, leave_mid_stream
from tests.corpus import corpus
from tests.fakes.openai_upstream import (
    Chat,
    Chunks,
    FakeOpenAI,
    chunk,
    completion,
    prompt_tokens,
    text_chunks,
    tool_chunks,
    violation,
)

OPTIONS = OpenAIOptions()
PROFILE = agproxy.PROFILE_DEFAULTS["openai"]


def translated(body: Dict[str, Any], options: OpenAIOptions = OPTIONS) -> Dict[str, Any]:
    body = copy.deepcopy(body)
    sanitize_request(body, PROFILE)
    return anthropic_to_openai(body, options, "local")[0]


# -- request translation ------------------------------------------------------------------------

@pytest.mark.parametrize("name, headers, body", [c for c in corpus() if c[0] != "media"],
                         ids=[c[0] for c in corpus() if c[0] != "media"])
def test_claude_code_corpus_translates_into_what_a_strict_server_accepts(name, headers, body):
    if name == "forced_server_tool":
        with pytest.raises(agproxy.InvalidRequest, match="web_search"):
            translated(body)
        return
    out = translated(body)
    assert violation(out) is None, json.dumps(out)[:500]
    assert "cache_control" not in json.dumps(out)


def test_pdf_documents_are_refused_clearly():
    _, _, body = next(c for c in corpus() if c[0] == "media")
    with pytest.raises(agproxy.InvalidRequest, match="application/pdf document cannot be sent"):
        translated(body)


def test_translation_details():
    body = {
        "model": "local", "max_tokens": 100, "system": [{"type": "text", "text": "Be brief."}],
        "stop_sequences": ["###"], "temperature": 0.2, "top_k": 5,
        "metadata": {"user_id": "user-1"}, "thinking": {"type": "enabled", "budget_tokens": 2000},
        "tools": [{"name": "Read", "description": "Read a file",
                   "input_schema": {"$schema": "x", "type": "object", "properties": {"path": {"type": "string"}}}},
                  {"type": "bash_20250124", "name": "bash"}, {"type": "web_search_20250305", "name": "web_search"}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                      "data": "AAAA"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "a.py"}},
                {"type": "tool_use", "id": "t2", "name": "bash", "input": {"command": "ls"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [
                    {"type": "text", "text": "print(1)"},
                    {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}]},
                {"type": "tool_result", "tool_use_id": "t2", "is_error": True, "content": "denied"},
                {"type": "text", "text": "go on"}]},
        ]}
    out = translated(body, OpenAIOptions(reasoning_effort=True))
    assert violation(out) is None
    assert out["messages"][0] == {"role": "system", "content": "Be brief."}
    assert out["messages"][1]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assistant = out["messages"][2]
    assert assistant["content"] == "Reading." and "reasoning_content" not in assistant
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["Read", "bash"]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"path": "a.py"}
    assert out["messages"][3] == {"role": "tool", "tool_call_id": "t1", "content": "print(1)"}
    assert out["messages"][4] == {"role": "tool", "tool_call_id": "t2", "content": "Error: denied"}
    assert out["messages"][5]["role"] == "user" and out["messages"][5]["content"][1]["type"] == "image_url"
    assert [t["function"]["name"] for t in out["tools"]] == ["Read", "bash"]
    assert "$schema" not in json.dumps(out["tools"])
    assert out["tool_choice"] == "required" and out["parallel_tool_calls"] is False
    assert out["stop"] == ["###"] and out["temperature"] == 0.2 and "top_k" not in out
    assert out["user"] == "user-1" and out["reasoning_effort"] == "low" and out["max_tokens"] == 100
    with_k = translated(body, OpenAIOptions(top_k=True, max_tokens_field="max_completion_tokens",
                                            thinking_body={"chat_template_kwargs": {"enable_thinking": True}},
                                            reasoning_history=True))
    assert with_k["top_k"] == 5 and with_k["max_completion_tokens"] == 100
    assert with_k["chat_template_kwargs"] == {"enable_thinking": True}
    assert with_k["messages"][2]["reasoning_content"] == "hmm"


# -- response translation -------------------------------------------------------------------------

def test_completion_to_message():
    answer = completion("Done.", reasoning_content="thought", tool_calls=[
        {"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": '{"path": "a"}'}},
        {"type": "function", "function": {"name": "Edit", "arguments": "```json\n{\"path\": \"b\",}\n```"}},
        {"id": "call_3", "type": "function", "function": {"name": "Bash", "arguments": "not json at all"}}])
    answer["usage"]["prompt_tokens_details"] = {"cached_tokens": 20}
    message = openai_to_anthropic(answer, "local")
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "tool_use", "tool_use", "tool_use"]
    assert message["content"][2] == {"type": "tool_use", "id": "call_1", "name": "Read", "input": {"path": "a"}}
    assert message["content"][3]["input"] == {"path": "b"} and message["content"][3]["id"].startswith("toolu_")
    assert message["content"][4]["input"] == {"_unparsed_arguments": "not json at all"}
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {"input_tokens": 1, "output_tokens": 9, "cache_read_input_tokens": 20,
                                "cache_creation_input_tokens": 0}


@pytest.mark.parametrize("finish, expected", [("stop", "end_turn"), ("length", "max_tokens"),
                                              ("tool_calls", "tool_use"), ("content_filter", "refusal")])
def test_finish_reasons(finish, expected):
    answer = completion("x")
    answer["choices"][0]["finish_reason"] = finish
    assert openai_to_anthropic(answer, "m")["stop_reason"] == expected


def test_vllm_names_the_stop_sequence():
    answer = completion("x")
    answer["choices"][0]["stop_reason"] = "###"
    message = openai_to_anthropic(answer, "m", ["###"])
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "###")


# -- the stream state machine ------------------------------------------------------------------------

def run_stream(chunks: List[Any]) -> tuple:
    translator = OpenAIStreamTranslator("local", 5)
    wire = b""
    for item in chunks:
        wire += agproxy.encode_events(translator.feed(item))
    wire += agproxy.encode_events(translator.finish())
    events = SSEDecoder().feed(wire)
    accumulator = MessageAccumulator()
    for event in events:
        accumulator.feed(event)
    return events, accumulator.result()


def well_formed(events: List[agproxy.SSEEvent]) -> None:
    names = [e.event for e in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    open_index, seen = None, []
    for event in events[1:-2]:
        data = json.loads(event.data)
        if event.event == "content_block_start":
            assert open_index is None and data["index"] == len(seen)
            open_index = data["index"]
            seen.append(data["index"])
        elif event.event == "content_block_delta":
            assert data["index"] == open_index
        elif event.event == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        else:
            assert event.event == "ping"
    assert open_index is None


CALLS = st.lists(st.tuples(st.text("abcdef", min_size=1, max_size=6),
                           st.dictionaries(st.sampled_from(["path", "command", "n"]),
                                           st.one_of(st.text(max_size=12), st.integers()), max_size=3)),
                 max_size=3)


@settings(max_examples=300, deadline=None)
@given(reasoning=st.text(max_size=30), text=st.text(max_size=40), calls=CALLS,
       cuts=st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=6),
       ollama=st.booleans(), late_names=st.booleans())
def test_stream_equals_the_non_stream_translation(reasoning, text, calls, cuts, ollama, late_names):
    def pieces(value: str) -> List[str]:
        out, i, k = [], 0, 0
        while i < len(value):
            step = cuts[k % len(cuts)]
            out.append(value[i:i + step])
            i, k = i + step, k + 1
        return out

    chunks: List[Any] = [chunk({"role": "assistant"}), {"id": "x", "choices": []}]
    chunks += [chunk({"reasoning_content": p}) for p in pieces(reasoning)]
    chunks += [chunk({"content": p}) for p in pieces(text)]
    tool_calls = []
    for index, (name, arguments) in enumerate(calls):
        encoded = json.dumps(arguments)
        call_id = f"call_{index}"
        tool_calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": encoded}})
        if ollama:  # whole calls, no index
            chunks.append(chunk({"tool_calls": [{"id": call_id, "function": {"name": name, "arguments": arguments}}]}))
            continue
        first = {"index": index, "id": call_id, "type": "function", "function": {"arguments": ""}}
        if not late_names:
            first["function"]["name"] = name
        chunks.append(chunk({"tool_calls": [first]}))
        for k, part in enumerate(pieces(encoded)):
            fragment: Dict[str, Any] = {"index": index, "function": {"arguments": part}}
            if late_names and k == 0:
                fragment["function"]["name"] = name
            chunks.append(chunk({"tool_calls": [fragment]}))
    chunks.append(chunk({}, "tool_calls" if calls else "stop"))
    chunks.append({"id": "x", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
    events, streamed = run_stream(chunks)
    well_formed(events)
    whole = completion(text or None, **({"reasoning_content": reasoning} if reasoning else {}),
                       **({"tool_calls": tool_calls} if tool_calls else {}))
    whole["choices"][0]["finish_reason"] = "tool_calls" if calls else "stop"
    whole["usage"] = {"prompt_tokens": 5, "completion_tokens": 3}
    expected = openai_to_anthropic(whole, "local")
    assert streamed["content"] == expected["content"]
    assert streamed["stop_reason"] == expected["stop_reason"]
    assert streamed["usage"]["output_tokens"] == 3


@settings(max_examples=300, deadline=None)
@given(data=st.data(), texts=st.lists(st.text(min_size=1, max_size=5), max_size=5),
       thoughts=st.lists(st.text(min_size=1, max_size=5), max_size=5), calls=CALLS)
def test_any_interleaving_gives_a_well_formed_stream_losing_nothing(data, texts, thoughts, calls):
    streams: List[List[Any]] = [[chunk({"content": t}) for t in texts], [chunk({"reasoning": t}) for t in thoughts]]
    for index, (name, arguments) in enumerate(calls):
        encoded = json.dumps(arguments)
        cuts = sorted(set(data.draw(st.lists(st.integers(min_value=1, max_value=max(1, len(encoded) - 1)),
                                             max_size=4))))
        parts = [encoded[a:b] for a, b in zip([0] + cuts, cuts + [len(encoded)])]
        fragments = [{"index": index, "id": f"c{index}", "function": {"name": name, "arguments": parts[0]}}]
        fragments += [{"index": index, "function": {"arguments": p}} for p in parts[1:]]
        streams.append([chunk({"tool_calls": [f]}) for f in fragments])
    order: List[Any] = []
    while any(streams):
        pick = data.draw(st.sampled_from([i for i, s in enumerate(streams) if s]))
        order.append(streams[pick].pop(0))
        if data.draw(st.booleans()):
            order.append({"choices": []})  # Ollama-style empty chunk
    order.append(chunk({}, "stop"))
    events, message = run_stream(order)
    well_formed(events)
    assert "".join(b.get("text", "") for b in message["content"] if b["type"] == "text") == "".join(texts)
    assert "".join(b.get("thinking", "") for b in message["content"] if b["type"] == "thinking") == "".join(thoughts)
    tools = [b for b in message["content"] if b["type"] == "tool_use"]
    arrival = list(dict.fromkeys(c["choices"][0]["delta"]["tool_calls"][0]["index"] for c in order
                                 if c.get("choices") and c["choices"][0]["delta"].get("tool_calls")))
    assert [(b["id"], b["name"], b["input"]) for b in tools] == \
        [(f"c{i}", calls[i][0], calls[i][1]) for i in arrival]


def test_error_chunk_mid_stream_becomes_an_error_event():
    translator = OpenAIStreamTranslator("local")
    wire = agproxy.encode_events(translator.feed(chunk({"content": "partial"})))
    wire += agproxy.encode_events(translator.feed({"error": {"message": "CUDA out of memory", "code": 500}}))
    events = SSEDecoder().feed(wire)
    assert events[-1].event == "error" and "CUDA out of memory" in events[-1].data
    assert translator.finish() == []


# -- end to end --------------------------------------------------------------------------------------

def local_config(fake: FakeOpenAI, **top: Any) -> Dict[str, Any]:
    config = {"upstreams": [{"name": "local", "kind": "openai", "base_url": fake.url,
                             "accounts": [{"name": "vllm-1", "api_key": "sk-local-1"},
                                          {"name": "vllm-2", "api_key": "sk-local-2"}]}]}
    config.update(top)
    return config


@pytest.fixture
def openai_fake():
    with FakeOpenAI() as fake:
        yield fake


def sdk(proxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="x", max_retries=0)


TOOLS = [{"name": "Read", "description": "Read a file", "input_schema": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}]


@pytest.mark.parametrize("stream", [False, True])
def test_tool_loop_through_a_strict_openai_server(start_agproxy, openai_fake, stream):
    openai_fake.script(Chunks(tool_chunks([("call_a", "Read", '{"path": "a.py"}'),
                                           ("call_b", "Read", '{"path": "b.py"}')], reasoning="Need both files.",
                                          text="Reading both.")))
    proxy = start_agproxy(local_config(openai_fake))
    client = sdk(proxy)
    history = [{"role": "user", "content": "compare a.py and b.py"}]
    args = dict(model="claude-sonnet-x", max_tokens=500, tools=TOOLS, messages=history)
    if stream:
        with client.messages.stream(**args) as s:
            first = s.get_final_message()
    else:
        first = client.messages.create(**args)
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert [b.input for b in first.content[2:]] == [{"path": "a.py"}, {"path": "b.py"}]
    assert first.stop_reason == "tool_use"
    history += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_a", "content": "x = 1"},
                    {"type": "tool_result", "tool_use_id": "call_b", "content": "x = 2", "is_error": False}]}]
    final = client.messages.create(model="claude-sonnet-x", max_tokens=500, tools=TOOLS, messages=history)
    assert final.content[0].text == "Hello from the fake OpenAI server."
    assert openai_fake.rejections == []
    sent = openai_fake.chats[-1]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "tool"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert all(r["headers"] and ("Authorization", "Bearer sk-local-1") in r["headers"]
               or ("Authorization", "Bearer sk-local-2") in r["headers"] for r in openai_fake.requests)


def test_text_stream_arrives_as_anthropic_events(start_agproxy, openai_fake):
    openai_fake.script(Chunks(text_chunks("one two three"), delay_s=0.2))
    proxy = start_agproxy(local_config(openai_fake))
    with sdk(proxy).messages.stream(model="m", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
        pieces = list(s.text_stream)
        message = s.get_final_message()
    assert "".join(pieces) == "one two three" and len(pieces) == 3
    assert message.usage.input_tokens == 21 and message.usage.output_tokens == 3


def test_images_reach_the_server_as_data_urls(start_agproxy, openai_fake):
    proxy = start_agproxy(local_config(openai_fake))
    sdk(proxy).messages.create(model="m", max_tokens=50, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "text", "text": "what is this?"}]}])
    parts = openai_fake.chats[-1]["messages"][0]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def test_quirks_missing_done_and_empty_choices(start_agproxy, openai_fake):
    openai_fake.script(Chunks(text_chunks("no done"), done=False))
    proxy = start_agproxy(local_config(openai_fake))
    with sdk(proxy).messages.stream(model="m", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
        assert s.get_final_message().content[0].text == "no done"


def test_error_in_the_stream_after_output_is_an_error_event(start_agproxy, openai_fake):
    openai_fake.script(Chunks(text_chunks("some words here")[:3] + [{"error": {"message": "engine died"}}],
                              delay_s=0.2))  # the error comes after words reached the client
    proxy = start_agproxy(local_config(openai_fake))
    with pytest.raises(anthropic.APIStatusError) as caught:
        with sdk(proxy).messages.stream(model="m", max_tokens=50,
                                        messages=[{"role": "user", "content": "hi"}]) as s:
            s.get_final_message()
    assert "engine died" in str(caught.value)


def test_a_stream_dropped_before_output_is_retried(start_agproxy, openai_fake):
    openai_fake.script(Chunks(text_chunks(), drop_after=1))
    proxy = start_agproxy(local_config(openai_fake))
    with sdk(proxy).messages.stream(model="m", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
        assert s.get_final_message().content[0].text
    assert len(openai_fake.chats) == 2


@pytest.mark.parametrize("status, exception, error_type", [
    (400, anthropic.BadRequestError, "invalid_request_error"),
    (404, anthropic.NotFoundError, "not_found_error"),
    (413, anthropic.APIStatusError, "request_too_large"),
    (429, anthropic.RateLimitError, "rate_limit_error"),
    (500, anthropic.InternalServerError, "api_error"),
])
def test_openai_errors_become_anthropic_errors(start_agproxy, openai_fake, status, exception, error_type):
    openai_fake.script(Chat(status, {"error": {"message": f"server says {status}", "type": "server_error",
                                               "code": None}}))
    proxy = start_agproxy(local_config(openai_fake, max_retry_attempts=1))
    with pytest.raises(exception) as caught:
        sdk(proxy).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == status and caught.value.body["error"]["type"] == error_type
    assert f"server says {status}" in caught.value.message


def test_rate_limit_rotates_to_the_next_key(start_agproxy, openai_fake):
    openai_fake.script(Chat(429, {"error": {"message": "slow down"}}, headers=[("x-ratelimit-reset-requests", "30s"),
                                                                              ("x-ratelimit-remaining-requests", "0")]))
    proxy = start_agproxy(local_config(openai_fake))
    raw = sdk(proxy).messages.with_raw_response.create(model="m", max_tokens=5,
                                                       messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-account-email"] == "vllm-2"


def test_unknown_argument_is_learned(start_agproxy, openai_fake):
    proxy = start_agproxy(local_config(openai_fake, upstreams=[dict(local_config(openai_fake)["upstreams"][0],
                                                                    extra_body={"top_k": 20})]))
    assert sdk(proxy).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]).content
    assert openai_fake.rejections == ["Unrecognized request argument supplied: top_k"]
    sdk(proxy).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert len(openai_fake.chats) == 3 and "top_k" not in openai_fake.chats[-1]


def test_models_and_counting_with_the_server_tokenizer(start_agproxy, openai_fake):
    config = local_config(openai_fake)
    config["upstreams"][0]["openai"] = {"tokenize": "vllm"}
    proxy = start_agproxy(config)
    ids = [m.id for m in sdk(proxy).models.list()]
    assert ids == ["qwen-local", "llama-local"]
    raw = sdk(proxy).messages.with_raw_response.count_tokens(model="m", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-token-count"] == "upstream-tokenizer" and raw.parse().input_tokens > 0
    assert any(r["target"] == "/tokenize" for r in openai_fake.requests)


def test_pings_while_the_server_thinks(start_agproxy, openai_fake):
    openai_fake.script(Chunks(text_chunks("a b"), delay_s=0.6))
    proxy = start_agproxy(local_config(openai_fake, ping_interval_s=0.2))
    body = json.dumps({"model": "m", "max_tokens": 5, "stream": True,
                       "messages": [{"role": "user", "content": "x"}]}).encode()
    request = urllib.request.Request(proxy.url + "/v1/messages", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        data = response.read()
    assert b"event: ping" in data and data.rstrip().endswith(b'{"type":"message_stop"}')


def test_client_leaving_closes_the_openai_stream(start_agproxy, openai_fake):
    openai_fake.script(Chunks(text_chunks(" ".join(["w"] * 40)), delay_s=0.3))
    proxy = start_agproxy(local_config(openai_fake))
    noticed = leave_mid_stream(proxy.port, openai_fake.abandoned_at)
    assert noticed is not None and noticed < 1.5


@pytest.mark.parametrize("how", RESET_HANG_UPS)
def test_the_fake_counts_a_hang_up_by_reset_as_abandoned(openai_fake, how):
    """agproxy's abort of a stream is a reset when bytes sit unread in its socket: the fake must record
    it in ``abandoned_at`` as it does a FIN (it once met it as a write error and recorded nothing)."""
    openai_fake.script(Chunks(text_chunks(" ".join(["w"] * 40)), delay_s=0.3))
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    hang_up_on_a_fake(openai_fake.port, "/v1/chat/completions", json.dumps(body).encode(), how)
    deadline = time.monotonic() + 5
    while not openai_fake.abandoned_at and time.monotonic() < deadline:
        time.sleep(0.05)
    assert openai_fake.abandoned_at, f"the fake missed a hang-up by {how}"


# -- small windows: the completion budget Claude Code asks for does not fit ---------------------------

CLAUDE_CODE_FIRST = dict(model="claude-opus-5-5", max_tokens=128000,  # what Claude Code 2.1.332 asks for
                         system="You are Claude Code. " * 400, messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("configured", [True, False])
@pytest.mark.parametrize("stream", [False, True])
def test_a_completion_budget_too_big_for_the_window_is_fitted(start_agproxy, configured, stream):
    """With context_window set, max_tokens is fitted before sending; without, the server's own
    error (which names the prompt's size) is healed by one retry with a budget that fits."""
    with FakeOpenAI(max_model_len=32768) as fake:
        proxy = start_agproxy(local_config(fake, upstreams=[dict(local_config(fake)["upstreams"][0],
                                                                 **({"context_window": 32768} if configured else {}))]))
        client = sdk(proxy)
        if stream:
            with client.messages.stream(**CLAUDE_CODE_FIRST) as s:
                answer = s.get_final_message()
        else:
            answer = client.messages.create(**CLAUDE_CODE_FIRST, timeout=30)  # (the SDK wants a stream otherwise)
        assert answer.content[0].text == "Hello from the fake OpenAI server."
        budgets = [c.get("max_completion_tokens") or c.get("max_tokens") for c in fake.chats]
        if configured:
            assert len(budgets) == 1 and budgets[0] < 32768 and fake.rejections == []
        else:
            prompt = prompt_tokens(fake.chats[0])
            assert budgets == [128000, 32768 - prompt - 16] and len(fake.rejections) == 1
        assert "max_tokens_fitted" in json.dumps(get_stats(proxy))


def test_only_a_prompt_that_cannot_fit_a_small_completion_is_too_long(start_agproxy):
    with FakeOpenAI(max_model_len=32768) as fake:
        proxy = start_agproxy(local_config(fake))
        huge = dict(CLAUDE_CODE_FIRST, system="You are Claude Code. " * 6300)  # over 32k tokens by the fake's count
        with pytest.raises(anthropic.BadRequestError) as caught:
            sdk(proxy).messages.create(**huge, timeout=30)
        message = caught.value.body["error"]["message"]
        assert message.startswith("prompt is too long: ") and message.endswith("> 1000000 maximum")
        assert len(fake.chats) == 1  # no retry can make it fit
        assert "does not fit the 32768-token window of upstream 'local'" in proxy.log()


def get_stats(proxy) -> Dict[str, Any]:
    with urllib.request.urlopen(proxy.url + "/v1/agproxy/stats", timeout=5) as response:
        return json.load(response)


def call_chunk(index: Any, call_id: Any, name: str = "", arguments: str = "") -> Dict[str, Any]:
    call: Dict[str, Any] = {"function": dict({"name": name} if name else {}, arguments=arguments)}
    if index is not None:
        call["index"] = index
    if call_id is not None:
        call["id"] = call_id
    return chunk({"tool_calls": [call]})


@pytest.mark.parametrize("chunks, expected", [
    # Ollama and SGLang: two calls back to back, both at index 0, told apart only by their ids
    ([call_chunk(0, "call_a", "Read", '{"path": "a"}'), call_chunk(0, "call_b", "Read", '{"path": "b"}')],
     [("call_a", {"path": "a"}), ("call_b", {"path": "b"})]),
    # the same, the second call's arguments arriving in pieces that name only the index
    ([call_chunk(0, "call_a", "Read", '{"path": "a"}'), call_chunk(0, "call_b", "Read", '{"pa'),
      call_chunk(0, None, "", 'th": "b"}')], [("call_a", {"path": "a"}), ("call_b", {"path": "b"})]),
    # Qwen: later pieces of a call carry id "" and no index: the same call, not a new one
    ([call_chunk(None, "call_q", "Read", '{"pa'), call_chunk(None, "", "", 'th": "q"}')],
     [("call_q", {"path": "q"})]),
])
def test_tool_call_shapes_reported_by_users(chunks, expected):
    _, message = run_stream([chunk({"role": "assistant"})] + chunks + [chunk({}, "tool_calls")])
    assert [(b["id"], b["input"]) for b in message["content"] if b["type"] == "tool_use"] == expected


def test_a_context_window_larger_than_the_servers_is_learned_once_and_kept(start_agproxy, tmp_path):
    """Issue 18: with context_window 131072 against a 32k server, every request was refused once
    and sent again smaller, and the log said so once at INFO without naming the setting."""
    with FakeOpenAI(max_model_len=32768) as fake:
        upstream = dict(local_config(fake)["upstreams"][0], context_window=131072)
        config = local_config(fake, upstreams=[upstream], state_file=str(tmp_path / "state.json"))
        proxy = start_agproxy(config)
        for _ in range(2):
            assert sdk(proxy).messages.create(**CLAUDE_CODE_FIRST, timeout=30).content[0].text
        assert len(fake.rejections) == 1 and len(fake.chats) == 3  # only the first was refused
        said = ("upstream 'local' serves 'claude-opus-5-5' with a 32768-token context window, as its error said, but "
                "upstreams[0].context_window says 131072: set it to 32768")
        assert proxy.log().count(said) == 1 and f"WARNING agproxy: {said}" in proxy.log()
        proxy.stop()
        again = start_agproxy(config)  # a restart remembers it
        assert sdk(again).messages.create(**CLAUDE_CODE_FIRST, timeout=30).content[0].text
        assert len(fake.rejections) == 1 and len(fake.chats) == 4
        assert "restored from the state file: upstream 'local' serves 'claude-opus-5-5' with a 32768-token" in \
            again.log()
        again.stop()
        fixed = start_agproxy(dict(config, upstreams=[dict(upstream, context_window=200000)]))  # the config changed
        assert sdk(fixed).messages.create(**CLAUDE_CODE_FIRST, timeout=30).content[0].text
        assert len(fake.rejections) == 2 and "restored" not in fixed.log()  # what was learned is forgotten


def test_a_tokenizer_route_that_is_absent_is_said_once_and_not_asked_again(start_agproxy):
    """Issue 18: one /context logged `tokenizer of upstream 'vllm' answered HTTP 404; estimating` 27 times."""
    with FakeOpenAI(tokenizer=False) as fake:
        config = local_config(fake)
        config["upstreams"][0]["openai"] = {"tokenize": "vllm"}
        proxy = start_agproxy(config)
        for _ in range(5):
            raw = sdk(proxy).messages.with_raw_response.count_tokens(model="m", messages=[{"role": "user",
                                                                                           "content": "hi"}])
            assert raw.headers["x-token-count"] == "estimate" and raw.parse().input_tokens > 0
        assert [r["target"] for r in fake.requests].count("/tokenize") == 1
        said = (f"tokenizer of upstream 'local' answered HTTP 404: the server has no http://127.0.0.1:{fake.port}"
                "/tokenize (check its openai.tokenize); it is asked again in 3600 s; estimating token counts")
        assert proxy.log().count("tokenizer of upstream") == 1 and f"WARNING agproxy: {said}" in proxy.log()
        proxy.clock.advance(agproxy.TOKENIZER_ABSENT_S + 1)  # an hour on, the server is asked again: still none
        sdk(proxy).messages.count_tokens(model="m", messages=[{"role": "user", "content": "hi"}])
        assert [r["target"] for r in fake.requests].count("/tokenize") == 2
        assert proxy.log().count("tokenizer of upstream") == 1
