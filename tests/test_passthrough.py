"""Same-protocol passthrough (issue 21): a Chat Completions client to an ``openai`` upstream, and a
Gemini client to a ``gemini`` upstream, send their own request and get the upstream's own chunks,
untranslated, over real sockets; what the internal form cannot carry (``seed``, ``logprobs``, a
server's own fields, Google's own tools, grounding) gets through both ways. The record, limits and
ledger still read the answer's facts, and a key the upstream echoes is hidden even when it comes
split across chunks (:class:`agproxy.ChunkRedactor`, with its own property tests here)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Tuple

import openai
from hypothesis import given, settings
from hypothesis import strategies as st

import agproxy
from tests.conftest import fake_config
from tests.fakes.gemini_upstream import Answer, FakeGemini
from tests.fakes.openai_upstream import Chat, Chunks, FakeOpenAI, chunk, completion, text_chunks

ALICE = "agp-alice-0123456789abcdefghijklmnop"
LOCAL_KEY = "sk-local-0123456789abcdefXYZ"
HI = [{"role": "user", "content": "hi"}]


def config_with(fake: Any, openai_fake: FakeOpenAI, gemini_fake: FakeGemini) -> Dict[str, Any]:
    config = fake_config(fake, auth_mode="strict", log_format="json", clients=[
        {"name": "alice", "api_key": ALICE, "models": ["claude-*", "qwen*", "gemini-*"]}])
    config["upstreams"] += [
        {"name": "local", "kind": "openai", "base_url": openai_fake.url, "accounts": [{"api_key": LOCAL_KEY}]},
        {"name": "gem", "kind": "gemini", "base_url": gemini_fake.url, "accounts": [{"api_key": "gemini-key"}]}]
    config["model_map"] = [{"match": "gemini-*", "upstream": "gem"}, {"match": "qwen*", "upstream": "local"},
                           {"match": "*", "upstream": "fake"}]
    return config


def chat_client(proxy: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=ALICE, max_retries=0, timeout=20)


def access_lines(proxy: Any, path: str, count: int = 0) -> List[Dict[str, Any]]:
    """The access lines of requests to ``path`` (waiting a little for ``count`` of them: a stream's
    line is written once its relay has ended, just after the client read its end)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in proxy.log().splitlines() if '"event": "access"' in line]
        lines = [line for line in lines if line["path"].startswith(path)]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def post(url: str, body: Dict[str, Any], headers: Dict[str, str]) -> Tuple[int, bytes]:
    request = urllib.request.Request(url, json.dumps(body).encode(), dict(headers, **{
        "Content-Type": "application/json"}), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


LOGPROBS = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]}


def test_chat_to_openai_carries_what_the_internal_form_cannot_both_ways(start_agproxy, fake):
    with FakeOpenAI(extra_allowed=["logprobs", "top_logprobs", "chat_template_kwargs"]) as openai_fake, \
            FakeGemini() as gemini_fake:
        proxy = start_agproxy(config_with(fake, openai_fake, gemini_fake))
        pieces = [chunk({"role": "assistant", "content": ""}, system_fingerprint="fp_local")]
        pieces += [chunk({"content": word}, system_fingerprint="fp_local") for word in ("Hi", " there")]
        for piece in pieces[1:]:
            piece["choices"][0]["logprobs"] = LOGPROBS
        pieces += [chunk({}, "stop"), {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [],
                                       "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}}]
        openai_fake.script(Chunks(pieces), Chunks(pieces))
        stream = chat_client(proxy).chat.completions.create(
            model="qwen3", messages=HI, stream=True, seed=7, logprobs=True, top_logprobs=1,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}})
        chunks = list(stream)
        sent = openai_fake.chats[-1]
        assert sent["seed"] == 7 and sent["logprobs"] is True and sent["top_logprobs"] == 1
        assert sent["chat_template_kwargs"] == {"enable_thinking": False}
        assert sent["messages"] == HI and sent["stream_options"] == {"include_usage": True}  # agproxy counts
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi there"
        assert chunks[1].choices[0].logprobs.content[0].token == "Hi"
        assert {c.system_fingerprint for c in chunks[:3]} == {"fp_local"}
        assert all(c.choices for c in chunks), "the usage chunk goes only to a client that asked for it"
        asked = list(chat_client(proxy).chat.completions.create(
            model="qwen3", messages=HI, stream=True, stream_options={"include_usage": True}))
        assert asked[-1].choices == [] and asked[-1].usage.prompt_tokens == 11
        lines = access_lines(proxy, "/v1/chat/completions", 2)
        assert [line.get("passthrough") for line in lines] == [True, True]
        assert [(line["input_tokens"], line["output_tokens"]) for line in lines] == [(11, 2), (11, 2)]


def test_chat_to_openai_whole_answer_is_the_upstreams_own_json(start_agproxy, fake):
    with FakeOpenAI(extra_allowed=["logprobs"]) as openai_fake, FakeGemini() as gemini_fake:
        proxy = start_agproxy(config_with(fake, openai_fake, gemini_fake))
        answer = dict(completion("Hello."), system_fingerprint="fp_x", service_tier="default")
        answer["choices"][0]["logprobs"] = LOGPROBS
        openai_fake.script(Chat(200, answer))
        status, data = post(proxy.url + "/v1/chat/completions", {"model": "qwen3", "messages": HI, "logprobs": True},
                            {"Authorization": f"Bearer {ALICE}"})
        assert status == 200 and json.loads(data) == answer
        assert access_lines(proxy, "/v1/chat/completions", 1)[-1]["input_tokens"] == 21
        # to an upstream of another kind the same request is translated, as before
        through_claude = chat_client(proxy).chat.completions.create(model="claude-sonnet-4-5", messages=HI)
        assert through_claude.model == "claude-sonnet-4-5" and through_claude.id.startswith("chatcmpl-")
        assert "passthrough" not in access_lines(proxy, "/v1/chat/completions", 2)[-1]


def test_a_key_the_upstream_echoes_is_hidden_even_split_across_chunks(start_agproxy, fake):
    with FakeOpenAI() as openai_fake, FakeGemini() as gemini_fake:
        proxy = start_agproxy(config_with(fake, openai_fake, gemini_fake))
        text = f"Your key is {LOCAL_KEY} and {ALICE}, fine."
        cuts = [0, 15, 19, 30, 44, 50, 62, len(text)]
        pieces = [chunk({"role": "assistant", "content": ""})]
        pieces += [chunk({"content": text[a:b]}) for a, b in zip(cuts, cuts[1:])]
        pieces += [chunk({}, "stop")]
        openai_fake.script(Chunks(pieces), Chat(200, completion(text)))
        streamed = "".join(c.choices[0].delta.content or "" for c in chat_client(proxy).chat.completions.create(
            model="qwen3", messages=HI, stream=True) if c.choices)
        assert streamed == "Your key is [redacted] and [redacted], fine."
        whole = chat_client(proxy).chat.completions.create(model="qwen3", messages=HI)
        assert whole.choices[0].message.content == "Your key is [redacted] and [redacted], fine."
        assert LOCAL_KEY not in proxy.log() and ALICE not in proxy.log()


def test_a_broken_passthrough_stream_ends_with_an_error_the_sdk_raises(start_agproxy, fake):
    with FakeOpenAI() as openai_fake, FakeGemini() as gemini_fake:
        proxy = start_agproxy(config_with(fake, openai_fake, gemini_fake))
        broken = Chunks(text_chunks("one two three")[:3], done=False, drop_after=3)
        openai_fake.script(broken, broken, broken)
        seen: List[str] = []
        try:
            for piece in chat_client(proxy).chat.completions.create(model="qwen3", messages=HI, stream=True):
                seen.append(piece.choices[0].delta.content or "")
        except openai.APIError as exc:
            assert "upstream 'local'" in str(exc)
        else:
            raise AssertionError("the stream ended as if whole")
        assert "".join(seen) == "one two"


def test_gemini_to_gemini_keeps_googles_tools_settings_signatures_and_grounding(start_agproxy, fake):
    with FakeOpenAI() as openai_fake, FakeGemini() as gemini_fake:
        proxy = start_agproxy(config_with(fake, openai_fake, gemini_fake))
        url = proxy.url + "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        keyed = {"x-goog-api-key": ALICE}
        body = {"contents": [{"role": "user", "parts": [{"text": "search the news"}]}],
                "tools": [{"googleSearch": {}}],
                "generationConfig": {"thinkingConfig": {"includeThoughts": True}}}
        gemini_fake.script(Answer([{"thought": True, "text": "Let me look."},
                                   {"functionCall": {"name": "lookup", "args": {"q": "news"}}}]))
        status, data = post(url, body, keyed)
        assert status == 200, data
        sent = gemini_fake.generations[-1]
        assert sent["tools"] == [{"googleSearch": {}}], "Google's own tools reach Google (translation drops them)"
        events = [json.loads(line[6:]) for line in data.decode().splitlines() if line.startswith("data: ")]
        parts = [p for e in events for c in e.get("candidates", []) for p in c["content"].get("parts", [])]
        call = next(p for p in parts if "functionCall" in p)
        assert call["thoughtSignature"] in gemini_fake.issued, "the upstream's own signature, byte for byte"
        # the next turn sends it back as it came, and the fake (which checks every signature) takes it
        answered = {"name": "lookup", "response": {"result": "quiet day"}}
        if "id" in call["functionCall"]:
            answered["id"] = call["functionCall"]["id"]
        body["contents"] += [{"role": "model", "parts": [call]},
                             {"role": "user", "parts": [{"functionResponse": answered}]}]
        status, data = post(url.replace(":streamGenerateContent?alt=sse", ":generateContent"), body, keyed)
        assert status == 200, data
        assert gemini_fake.generations[-1]["contents"][1]["parts"][0]["thoughtSignature"] == \
            call["thoughtSignature"]
        assert json.loads(data)["candidates"][0]["content"]["parts"]
        # a signature agproxy made for another upstream's thinking never reaches Gemini
        packed = agproxy._pack_thinking([{"type": "thinking", "thinking": "t", "signature": "s"}])
        body["contents"][1]["parts"][0] = dict(call, thoughtSignature=packed)
        post(url, body, keyed)
        assert "thoughtSignature" not in gemini_fake.generations[-1]["contents"][1]["parts"][0]
        assert [line.get("passthrough") for line in access_lines(proxy, "/v1beta", 3)] == [True, True, True]


def test_gemini_json_array_stream_passes_through_as_one_array(start_agproxy, fake):
    with FakeOpenAI() as openai_fake, FakeGemini() as gemini_fake:
        proxy = start_agproxy(config_with(fake, openai_fake, gemini_fake))
        status, data = post(proxy.url + "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                            {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, {"x-goog-api-key": ALICE})
        array = json.loads(data)
        assert status == 200 and isinstance(array, list) and array
        text = "".join(p.get("text", "") for e in array for c in e.get("candidates", [])
                       for p in c["content"].get("parts", []))
        assert text and array[-1]["candidates"][0]["finishReason"] == "STOP"


# -- the redactor of passthrough chunks, pure --------------------------------------------------------

SECRETS = ["sk-test-0123456789abcdef", "AIzaSyD-secret-key-9876543210"]
REDACTOR = agproxy.Redactor(SECRETS)


def relayed(pieces: List[str], field: str = "content") -> Tuple[List[bytes], str]:
    """Feed chunks carrying ``pieces`` of text; the bytes out, and the text they carry joined."""
    redactor = agproxy.ChunkRedactor(REDACTOR)
    out: List[bytes] = []
    for piece in pieces:
        body = {"choices": [{"index": 0, "delta": {field: piece}}]}
        out += redactor.feed(body, json.dumps(body).encode())
    out += redactor.end()
    text = "".join(json.loads(raw)["choices"][0]["delta"][field] for raw in out)
    return out, text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcsk-0123456789 AIzaSyD", max_size=60), st.sampled_from(SECRETS),
       st.text(alphabet="xyz .", max_size=20), st.lists(st.integers(0, 120), max_size=8))
def test_any_split_of_a_secret_across_chunks_is_hidden_and_the_rest_kept(before, secret, after, cuts):
    text = before + secret + after
    points = sorted({0, len(text), *(c for c in cuts if c < len(text))})
    pieces = [text[a:b] for a, b in zip(points, points[1:])]
    out, joined = relayed(pieces)
    assert not any(s in joined for s in SECRETS)
    assert joined == REDACTOR.spoken(text)
    assert len(out) == len(pieces)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=30), min_size=1, max_size=10))
def test_text_without_a_secret_goes_out_as_its_very_bytes(pieces):
    redactor = agproxy.ChunkRedactor(REDACTOR)
    sent, out = [], []
    for piece in pieces:
        body = {"candidates": [{"content": {"parts": [{"text": piece}]}}]}
        raw = json.dumps(body).encode()
        sent.append(raw)
        out += redactor.feed(body, raw)
    out += redactor.end()
    assert out == sent


def test_a_secret_cut_short_at_the_end_of_the_stream_is_still_hidden():
    _, joined = relayed(["the key: ", SECRETS[0][:6], SECRETS[0][6:14]])
    assert SECRETS[0][:14] not in joined and joined.startswith("the key: ")


def test_chunks_held_while_a_secret_may_begin_are_bounded_and_a_key_past_the_bound_is_still_hidden():
    redactor = agproxy.ChunkRedactor(REDACTOR)
    out: List[bytes] = []
    pieces = ["x sk-test-0"] * 8000 + ["123456789abcdef and more"]  # every piece may begin a key
    for piece in pieces:
        body = {"choices": [{"index": 0, "delta": {"content": piece}}]}
        out += redactor.feed(body, json.dumps(body).encode())
        assert redactor.held_chars <= agproxy.MAX_HELD_TEXT_CHARS + 20
    out += redactor.end()
    joined = "".join(json.loads(raw)["choices"][0]["delta"]["content"] for raw in out)
    assert len(out) == len(pieces) and SECRETS[0] not in joined and "123456789abcdef" not in joined
    assert joined.endswith("x [redacted] and more")
    # the bound met just as a key has begun: its start went out, the rest is hidden all the same
    redactor, out = agproxy.ChunkRedactor(REDACTOR), []
    filler = agproxy.MAX_HELD_TEXT_CHARS // len("x sk-test-0") + 1
    for piece in ["x sk-test-0"] * filler + ["123456789abcdef and more"]:
        body = {"choices": [{"index": 0, "delta": {"content": piece}}]}
        out += redactor.feed(body, json.dumps(body).encode())
    out += redactor.end()
    joined = "".join(json.loads(raw)["choices"][0]["delta"]["content"] for raw in out)
    assert joined.endswith("x sk-test-0[redacted] and more") and "0123456789" not in joined


def test_a_key_in_the_text_drops_the_logprobs_that_spell_it_again():
    key = SECRETS[0]
    redactor = agproxy.ChunkRedactor(REDACTOR)
    out: List[bytes] = []
    for token in [key[i:i + 3] for i in range(0, len(key), 3)] + [" ok"]:
        logprobs = {"content": [{"token": token, "logprob": -0.1, "bytes": list(token.encode()), "top_logprobs": []}]}
        body = {"choices": [{"index": 0, "delta": {"content": token}, "logprobs": logprobs}]}
        out += redactor.feed(body, json.dumps(body).encode())
    out += redactor.end()
    chunks = [json.loads(raw) for raw in out]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "[redacted] ok"
    spelled = "".join(bytes(t["bytes"]).decode() for c in chunks for t in
                      ((c["choices"][0].get("logprobs") or {}).get("content") or []))
    assert key[:6] not in spelled and not any(key[i:i + 6] in spelled for i in range(len(key) - 6))
    tokens = [{"token": key[:6], "bytes": list(key[:6].encode())}, {"token": key[6:], "bytes": list(key[6:].encode())}]
    assert not agproxy.native_answer(json.dumps({"choices": [{"index": 0, "message": {"content": "k"}, "logprobs": {
        "content": tokens}}]}).encode(), "chat", REDACTOR)  # tokens that say what the text does not


def test_a_key_split_across_gemini_parts_at_any_position_is_hidden():
    key = SECRETS[1]
    first = {"candidates": [{"index": 0, "content": {"parts": [{"text": "key "}, {"text": key[:10]}]}}]}
    second = {"candidates": [{"index": 0, "content": {"parts": [
        {"thought": True, "text": "hmm"}, {"functionCall": {"name": "f", "args": {}}}, {"text": key[10:] + "."}]}}]}
    redactor = agproxy.ChunkRedactor(REDACTOR)
    out = redactor.feed(first, json.dumps(first).encode()) + redactor.feed(second, json.dumps(second).encode())
    out += redactor.end()
    text = "".join(p.get("text", "") for raw in out for p in json.loads(raw)["candidates"][0]["content"]["parts"]
                   if not p.get("thought"))
    assert text == "key [redacted]."
    whole = {"candidates": [{"content": {"parts": [{"text": key[:10]}, {"text": key[10:]}]}}]}
    assert not agproxy.native_answer(json.dumps(whole).encode(), "gemini", REDACTOR)


def test_many_parts_each_spelling_a_key_cost_linear_time():
    key = SECRETS[0]
    body = {"candidates": [{"index": 0, "content": {"parts": [{"text": key} for _ in range(20000)]}}]}
    redactor = agproxy.ChunkRedactor(REDACTOR)
    started = time.process_time()
    out = redactor.feed(body, json.dumps(body).encode()) + redactor.end()
    spent = time.process_time() - started
    parts = json.loads(out[0])["candidates"][0]["content"]["parts"]
    assert {p["text"] for p in parts} == {"[redacted]"}
    assert spent < 5, f"{spent:.1f} s: quadratic"  # a correctness bound (quadratic took minutes), not a speed goal


def test_native_stream_encoder_frames_each_protocol():
    verbatim = agproxy.Event(agproxy.VERBATIM, {"chunks": [b'{"a":1}', b'{"b":2}']})
    stop = agproxy.Event("message_stop", {"type": "message_stop"})
    chat = agproxy.NativeStreamEncoder("chat")
    assert chat.encode([verbatim, stop]) == b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    array = agproxy.NativeStreamEncoder("gemini", sse=False)
    written = array.ping() + array.encode([verbatim]) + array.ping() + array.encode([stop])
    assert json.loads(written) == [{"a": 1}, {"b": 2}]
    broken = agproxy.NativeStreamEncoder("gemini", sse=False)
    written = broken.encode([verbatim]) + broken.error("api_error", "upstream 'gem': it broke")
    assert json.loads(written)[-1]["error"]["message"] == "upstream 'gem': it broke"
    assert json.loads(agproxy.NativeStreamEncoder("gemini", sse=False).encode([stop])) == []


GARBAGE_CHUNKS = [
    {"id": "x", "choices": [{"index": 0, "delta": "text"}]},
    {"id": "x", "choices": [{"index": "0", "delta": {"content": {"text": "x"}, "reasoning_content": 5}}]},
    {"id": {"nested": True}, "choices": 7},
    {"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": [5, {"index": {"a": 1}, "function": "Bash"}]}}]},
    {"id": "x", "choices": [], "usage": {"prompt_tokens": "many", "completion_tokens": -1, "total_tokens": 3}},
    {"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": {"why": "stop"}}]},
]


def test_a_chunk_of_the_wrong_types_reaches_the_client_cleaned_never_as_it_came():
    for garbage in GARBAGE_CHUNKS:
        cleaned = agproxy.cleaned_chunk(garbage, "chat")
        if cleaned is None:
            continue
        assert cleaned is not garbage and cleaned["object"] == "chat.completion.chunk"
        for choice in cleaned["choices"]:
            assert isinstance(choice["delta"], dict) and isinstance(choice.get("index", 0), int)
            assert isinstance(choice["delta"].get("content") or "", str)
            assert isinstance(choice.get("finish_reason") or "", str)
            for call in choice["delta"].get("tool_calls") or []:
                assert isinstance(call, dict) and isinstance(call.get("function", {}), dict)
        assert all(isinstance(v, int) for v in (cleaned.get("usage") or {}).values())
    good = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    assert agproxy.cleaned_chunk(good, "chat") is good
    assert not agproxy.native_answer(b'{"choices": [{"message": {"content": {"a": 1}}}]}', "chat", REDACTOR)
    assert agproxy.native_answer(b'{"choices": [{"message": {"content": "a"}}]}', "chat", REDACTOR)


def test_what_spends_or_keeps_on_the_shared_account_is_not_the_clients_to_set():
    sent, changes = agproxy.chat_native_request(
        {"model": "m", "messages": HI, "store": True, "metadata": {"a": "b"}, "service_tier": "priority", "seed": 1},
        "routed", True, agproxy.OpenAIOptions(), 8192)
    assert sent == {"model": "routed", "messages": HI, "seed": 1, "stream": True, "max_tokens": 8192,
                    "stream_options": {"include_usage": True}}
    assert changes == {"dropped:store": 1, "dropped:metadata": 1, "dropped:service_tier": 1}


def test_a_choice_ended_takes_nothing_more_and_the_others_go_on():
    """After a choice's finish reason its later fragments go nowhere; another choice (``n`` 2) and
    the usage chunk still go out (the hostile case end to end is in test_hostile_upstream_e2e)."""
    native = agproxy.NativeChunks(agproxy.Redactor([]), "chat")

    def fed(*choices: Any, **extra: Any) -> List[Any]:
        piece = dict({"id": "c", "object": "chat.completion.chunk", "choices": list(choices)}, **extra)
        return [json.loads(out) for out in native.feed(piece, json.dumps(piece))]

    said = fed({"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"},
               {"index": 1, "delta": {"content": "b"}, "finish_reason": None})
    assert [c["index"] for c in said[0]["choices"]] == [0, 1]
    said = fed({"index": 0, "delta": {"content": "x"}, "finish_reason": None},
               {"index": 1, "delta": {"content": "c"}, "finish_reason": "stop"})
    assert [c["index"] for c in said[0]["choices"]] == [1]
    assert fed({"index": 1, "delta": {"content": "y"}, "finish_reason": None}) == []
    assert fed({"index": 0, "delta": {"content": "z"}, "finish_reason": None},
               usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}) == [
        {"id": "c", "object": "chat.completion.chunk", "choices": [],
         "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}]
