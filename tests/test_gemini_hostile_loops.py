"""A second, deeper attack on the Gemini kind: the thought-signature round trip, per-model rests
of the account pool, the stray-line reader, the model list and the rejected-key test. Each
test not named ``test_held_up_*`` held a defect until it was fixed; those guard what held up
(simulated tool loops, Claude Code's way of sending them back, against the strict fake)."""

from __future__ import annotations

import asyncio
import copy
import json
import random
from typing import Any, Dict, List, Optional, Tuple

import pytest

import agproxy
from agproxy import Account, AccountPool, Decision, Route, Upstream
from tests.fakes.gemini_upstream import Answer, FakeGemini, call, google_error, quota_error
from tests.test_gemini import TEXT_CHUNKS, gemini_config, stream_bytes
from tests.test_gemini_hostile import FilesCheckingGemini, post
from tests.test_pipeline import ScriptedResponse

PRO, FLASH = "gemini-3-pro-preview", "gemini-3-flash-preview"
NOW = 1_800_000_000.0


def gemini_upstream(name: str = "gemini", accounts: int = 1) -> Upstream:
    return Upstream(name, "gemini", "https://generativelanguage.googleapis.com",
                    tuple(Account(f"key-{i + 1}", f"AIza-key-number-{i + 1}") for i in range(accounts)))


def limited(seconds: float) -> Decision:
    return Decision(True, cooldown_s=seconds, reason="rate limited")


REJECTED = Decision(True, cooldown_s=agproxy.REJECTED_KEY_COOLDOWN_S, rejected_key=True,
                    reason="key rejected (HTTP 403: Permission denied)")


# -- 1. a pretty-printed Google error split inside an 8-space indent is lost ---------------------


def test_an_error_indented_eight_spaces_is_read_however_the_read_splits_its_indent():
    """``StrayLines`` decides what a line is after 8 bytes; 8 bytes of indentation match the
    blank-line rule ``\\s*$``, so the rest of that line is dropped as an SSE line. Google writes
    its errors pretty-printed with 2-space indents, and a 429's ``details`` sit 8 and 10 spaces
    deep: a read that ends right after such an indent loses a line of the JSON, and the quota
    error becomes 'upstream sent something in its stream that is not an event'."""
    error = json.dumps(quota_error(26).body, indent=2).encode()
    raw = stream_bytes(TEXT_CHUNKS, error)
    cut = raw.index(b'        "violations"') + 8  # right after the indent

    async def collect() -> bytes:
        out = b""
        async for batch in agproxy.gemini_events(ScriptedResponse([raw[:cut], raw[cut:]]),
                                                 agproxy.GeminiStreamTranslator("m")):
            out += agproxy.encode_events(batch)
        return out

    events = agproxy.SSEDecoder().feed(asyncio.run(collect()))
    assert events[-1].event == "error" and "rate_limit_error" in events[-1].data


# -- 2. a 403 quoting a file name the client chose still rests every key --------------------------


@pytest.mark.parametrize("file_name", ["project-notes", "billing"])
def test_a_403_quoting_a_client_chosen_file_name_does_not_rest_every_key(start_agproxy, file_name):
    """The first round's fix judges a 403 by the words of its first sentence; but Gemini's 403 for
    a file its project may not read quotes the file's name in that very sentence ('You do not
    have permission to access the File <name> or it may not exist.'), and the name is the
    client's to choose (an image ``url`` becomes ``fileData``). A name holding 'project',
    'billing' or 'API key' makes it the key's fault: one request rests every key for ten minutes
    and every other client gets 502 'rejected the key'."""
    with FilesCheckingGemini(keys=("gemini-key", "gemini-key-2")) as fake:
        proxy = start_agproxy(gemini_config(fake, keys=("gemini-key", "gemini-key-2")))
        image = {"type": "image", "source": {
            "type": "url", "url": f"https://generativelanguage.googleapis.com/v1beta/files/{file_name}"}}
        status, data = post(proxy, {"model": "m", "max_tokens": 5,
                                    "messages": [{"role": "user", "content": [image, {"type": "text", "text": "?"}]}]})
        assert b"rejected the key" not in data, data
        status, data = post(proxy, {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200, data[:300]


def test_upstream_status_of_does_not_read_a_quoted_name_as_google_blaming_the_key():
    body = json.dumps(google_error(403, "You do not have permission to access the File project-x or it may not "
                                        "exist.", "PERMISSION_DENIED")).encode()
    assert agproxy.upstream_status_of(403, body) == 400


# -- 3. a key rest that ended still colours a model's rate limit as a rejected key ----------------


def test_a_model_rate_limit_outliving_a_key_rest_is_a_429_not_a_rejected_key_502():
    """Model A is rate limited for an hour; the key is then refused once (ten minutes, every model).
    When the ten minutes are over, ``rejected_key`` is still True (only a finished attempt clears
    it), so a request for A, which no account can take, is answered 502 'rejected the key of
    key-1 ... tried again in 3000 s' with ``final`` set (x-should-retry: false: Claude Code gives
    up at once) instead of 429 with retry-after; ``describe`` says 'rejected_key' for the hour,
    and the state file and a restart keep it so."""
    upstream = gemini_upstream()
    account = upstream.accounts[0]
    pool = AccountPool([upstream])
    pool.begin(upstream, account)
    pool.finish(upstream, account, limited(3600), NOW, None, PRO)
    pool.begin(upstream, account)
    pool.finish(upstream, account, REJECTED, NOW + 1, None, FLASH)
    later = NOW + agproxy.REJECTED_KEY_COOLDOWN_S + 60  # the key's rest is over, A's is not
    assert pool.choose(Route((upstream,), PRO), None, later) is None
    error = pool.unavailable(Route((upstream,), PRO), later)
    assert error.status == 429 and error.error_type == "rate_limit_error", error.message
    assert pool.describe(later)[0]["state"] == "rate_limited"


# -- 4. rests of an upstream whose name holds "/" are lost on restart -----------------------------


def test_rests_survive_a_restart_whatever_the_upstream_is_called():
    """The state file keys each account ``upstream/account`` and ``load_json`` splits at the first
    '/': an upstream named ``google/gemini`` (names are free text) never finds its account again,
    so after a restart a rate-limited or rejected key is hammered at once, which the state file
    exists to prevent (README: 'a restart does not hammer a limited key')."""
    upstream = gemini_upstream("google/gemini")
    account = upstream.accounts[0]
    pool = AccountPool([upstream])
    pool.begin(upstream, account)
    pool.finish(upstream, account, limited(900), NOW, None, PRO)
    saved = json.loads(json.dumps(pool.to_json(NOW)))
    restarted = AccountPool([upstream])
    restored = restarted.load_json(saved, NOW + 5)
    assert restored, saved
    assert restarted.choose(Route((upstream,), PRO), None, NOW + 5) is None


# -- 5. clock edge cases: a rest outlives its hour when the wall clock steps back -----------------


def test_a_rest_never_outlasts_an_hour_when_the_wall_clock_steps_back():
    """Rests are absolute wall-clock times (they are saved); nothing bounds them when read. After
    the clock steps back (NTP correcting a fast clock, a VM restored, a laptop resuming with a
    wrong RTC) by a day, a 30-second rest keeps the key out for a day and the client is told
    'free again in 86430 s': past the README's 'never more than an hour, whatever the upstream
    says'. (load_json already caps a saved rest at now + an hour.)"""
    upstream = gemini_upstream()
    account = upstream.accounts[0]
    pool = AccountPool([upstream])
    pool.begin(upstream, account)
    pool.finish(upstream, account, limited(30), NOW, None, PRO)
    stepped_back = NOW - 86_400
    error = pool.unavailable(Route((upstream,), PRO), stepped_back) \
        if pool.choose(Route((upstream,), PRO), None, stepped_back) is None else None
    if error is not None:
        wait = int(dict(error.headers)["retry-after"])
        assert wait <= agproxy.MAX_COOLDOWN_S, error.message


# -- 6. past 64 model rests, the rest just made is the one forgotten ------------------------------


def test_the_rest_just_made_is_never_the_one_forgotten():
    """``AccountState.rest`` keeps 64 model rests and forgets the soonest to end, which may be the
    one it has just made: with 64 models resting for an hour, a 26 s quota on a 65th is dropped
    on the spot and the limited key takes that model's next attempt (and every later one) at once."""
    upstream = gemini_upstream()
    account = upstream.accounts[0]
    pool = AccountPool([upstream])
    for i in range(agproxy.MAX_MODEL_RESTS):
        pool.begin(upstream, account)
        pool.finish(upstream, account, limited(3600), NOW, None, f"model-{i}")
    pool.begin(upstream, account)
    pool.finish(upstream, account, limited(26), NOW + 1, None, PRO)
    assert pool.choose(Route((upstream,), PRO), None, NOW + 2) is None


# -- 7. a model list of 20 huge pages is all kept ------------------------------------------------


class PagingForever:
    """An upstream whose model list never ends and whose every page is as big as it likes."""

    def __init__(self, per_page: int) -> None:
        self.per_page = per_page
        self.fetches = 0

    async def fetch(self, method: str, url: str, headers: Any, body: Optional[bytes] = None, *,
                    deadline_s: float = 0, limit: int = 0) -> Tuple[int, bytes]:
        self.fetches += 1
        start = self.fetches * self.per_page
        page = {"models": [{"name": f"models/m{start + i}"} for i in range(self.per_page)],
                "nextPageToken": str(self.fetches)}
        return 200, json.dumps(page).encode()


def test_a_model_list_that_pages_forever_with_big_pages_is_bounded_in_size():
    """Pages are bounded (20) and so is each page's body (64 MiB), but not what they add up to:
    20 pages of a few million tiny entries are millions of model objects, kept for a minute and
    all written into every /v1/models answer (and matched against every model_map rule). A real
    Gemini lists about fifty. A bound on the models kept (a few thousand) ends it."""
    client = PagingForever(per_page=5_000)
    upstream = gemini_upstream()
    adapter = agproxy.GeminiAdapter.__new__(agproxy.GeminiAdapter)
    models = asyncio.run(agproxy.list_upstream_models(client, adapter, upstream, upstream.accounts[0]))
    assert client.fetches <= agproxy._MAX_MODEL_PAGES
    assert len(models) <= 10_000, len(models)


# -- 8. a tool result's image ends the current turn for signing, not for Gemini -------------------


def test_a_tool_result_with_an_image_still_gets_its_calls_signed(start_agproxy):
    """A Gemini 3 tool loop whose calls were made elsewhere (another upstream, a restart) gets the
    documented stand-in signature on each call of the current turn. The images of tool results
    go after the function responses in the same turn, and ``sign_current_turn`` took that turn
    for the user writing: it signed nothing before it, Gemini answered 400 'missing
    thought_signature', and so did every later request of the session."""
    with FakeGemini() as fake:
        proxy = start_agproxy(gemini_config(fake))
        calls = [{"type": "tool_use", "id": f"toolu_elsewhere_{i}", "name": "Read", "input": {"path": str(i)}}
                 for i in range(2)]
        answers = [{"type": "tool_result", "tool_use_id": c["id"], "content": [{"type": "text", "text": "a shot"},
                                                                                PIXEL]} for c in calls]
        messages = [{"role": "user", "content": "look at both"},
                    {"role": "assistant", "content": [{"type": "text", "text": "Looking."}] + calls},
                    {"role": "user", "content": answers}]
        for _ in range(2):  # the next request of the session too
            status, data = post(proxy, {"model": "m", "max_tokens": 50, "tools": READ, "messages": messages})
            assert status == 200, data[:400]
            messages += [{"role": "assistant", "content": json.loads(data)["content"]},
                         {"role": "user", "content": "and now?"}]
        assert fake.rejections == []
        first_call = next(p for p in fake.generations[0]["contents"][1]["parts"] if "functionCall" in p)
        assert first_call["thoughtSignature"] == "skip_thought_signature_validator"


# -- held up: the signature round trip ---------------------------------------------------------


READ = [{"name": "Read", "description": "Read a file", "input_schema": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}},
        {"name": "mcp__files.v2/find", "description": "A name Gemini refuses",
         "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}]


@pytest.mark.parametrize("switch", [False, True])
def test_held_up_a_whole_tool_loop_sent_back_as_claude_code_sends_it(start_agproxy, switch):
    """Three Gemini answers (thought + text + two parallel calls; one call of a renamed tool;
    two calls) gathered into ONE assistant message and ONE user message whose results come
    shuffled, one with an image, one twice, one for a call that never was, with a reminder text
    after them; the middle answer from another Gemini model when ``switch``. Every request the
    strict fake sees is accepted, and every genuine signature goes back on the call it came with."""
    with FakeGemini() as fake:
        config = gemini_config(fake, force_stream_internally=True)
        config["model_map"] = [{"match": "*flash*", "upstream": "gemini", "model": FLASH},
                               {"match": "*", "upstream": "gemini", "model": PRO}]
        proxy = start_agproxy(config)
        from tests.test_gemini import sdk
        client = sdk(proxy)
        fake.script(Answer([{"text": "Both files.", "thought": True}, {"text": "Reading both now."},
                            call("Read", {"path": "a"}), call("Read", {"path": "b"})]),
                    Answer([call(agproxy.gemini_function_name("mcp__files.v2/find"), {"q": "x"})]),
                    Answer([call("Read", {"path": "c"}), call("Read", {"path": "d"})]),
                    Answer([{"text": "All done here."}]))
        history: List[Dict[str, Any]] = [{"role": "user", "content": "go"}]
        merged: List[Dict[str, Any]] = []
        calls: List[str] = []
        for step in range(3):
            model = "claude-flash" if switch and step == 1 else "claude-x"
            message = client.messages.create(model=model, max_tokens=500, tools=READ,
                                             thinking={"type": "enabled", "budget_tokens": 1024},
                                             messages=history + ([{"role": "assistant", "content": merged},
                                                                  {"role": "user", "content": results(calls)}]
                                                                 if merged else []))
            blocks = [b.model_dump(exclude_none=True) for b in message.content]
            merged += blocks
            calls += [b["id"] for b in blocks if b["type"] == "tool_use"]
        assert [b["name"] for b in merged if b["type"] == "tool_use"] == ["Read", "Read", "mcp__files.v2/find",
                                                                           "Read", "Read"]
        shuffled = results(calls)
        random.Random(7).shuffle(shuffled)
        shuffled[0]["content"] = [{"type": "text", "text": "pic"}, {"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]
        shuffled += [dict(shuffled[1]), {"type": "tool_result", "tool_use_id": "toolu_never", "content": "?"},
                     {"type": "text", "text": "<system-reminder>keep going</system-reminder>"}]
        final = client.messages.create(model="claude-x", max_tokens=500, tools=READ,
                                       messages=history + [{"role": "assistant", "content": merged},
                                                           {"role": "user", "content": shuffled}])
        assert final.content[0].text == "All done here."
        assert fake.rejections == []
        sent = fake.generations[-1]["contents"]
        signed = [p for c in sent for p in c["parts"] if p.get("thoughtSignature", "skip_thought_signature_validator")
                  != "skip_thought_signature_validator"]
        assert all(fake.issued[p["thoughtSignature"]] == ("call", p["functionCall"]["name"]) for p in signed)
        assert len(signed) == (2 if switch else 3)


def results(ids: List[str], images: Optional[random.Random] = None) -> List[Dict[str, Any]]:
    """A tool_result for each id; with ``images``, some hold an image (a screenshot, a file read)."""
    return [{"type": "tool_result", "tool_use_id": i, "content": "ok"} if not images or images.random() < 0.6 else
            {"type": "tool_result", "tool_use_id": i, "content": [{"type": "text", "text": "see"}, PIXEL]}
            for i in ids]


PIXEL = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}


def _simulated_history(seed: int) -> Tuple[Dict[str, Any], Any, Any, FakeGemini]:
    """Turns of Gemini answers (made by the fake's own answer code, so its signatures are in its
    ``issued``), translated to Anthropic as agproxy does, then handled as a client might:
    merged into one message, thinking dropped, results shuffled, duplicated, missing, holding
    images, followed by text; a restart (empty book) and another model now and then."""
    rnd = random.Random(seed)
    fake = FakeGemini(call_ids=rnd.random() < 0.7)
    state = {"book": agproxy.SignatureBook(), "calls": agproxy.CallSignatures()}

    def recorder(model: str):
        def record(call_id: str, signature: str) -> None:
            state["book"].record(signature, model)
            if call_id:
                state["calls"].record(call_id, signature)
        return record

    messages: List[Dict[str, Any]] = []
    for turn in range(rnd.randint(1, 3)):
        messages.append({"role": "user", "content": f"task {turn}"})
        blocks: List[Dict[str, Any]] = []
        calls: List[str] = []
        for _ in range(rnd.randint(0, 4)):
            parts: List[Dict[str, Any]] = []
            if rnd.random() < 0.5:
                parts.append({"text": "thinking it over", "thought": True})
            if rnd.random() < 0.5:
                parts.append({"text": "Let me look at it."})
            parts += [call(rnd.choice(["Read", "Bash"]), {"n": j}) for j in range(rnd.randint(1, 3))]
            model = rnd.choice([PRO, PRO, FLASH])
            answer = agproxy.gemini_to_anthropic(fake._chunks(Answer(parts), model, rnd.random() < 0.5), model,
                                                 recorder(model))
            if rnd.random() < 0.15:
                state.update(book=agproxy.SignatureBook(), calls=agproxy.CallSignatures())
            content = answer["content"]
            if rnd.random() < 0.2:
                content = [b for b in content if b["type"] != "thinking"]
            blocks += content
            calls += [b["id"] for b in content if b["type"] == "tool_use"]
            if rnd.random() < 0.3:  # a client that does not merge
                messages += [{"role": "assistant", "content": blocks},
                             {"role": "user", "content": results(calls, rnd)}]
                blocks, calls = [], []
        if calls:
            answered = results(calls, rnd)
            rnd.shuffle(answered)
            if rnd.random() < 0.3:
                answered = answered[1:]
            if rnd.random() < 0.3:
                answered += answered[:1]
            if rnd.random() < 0.3:
                answered.append({"type": "text", "text": "reminder"})
            messages += [{"role": "assistant", "content": blocks}, {"role": "user", "content": answered}]
        if rnd.random() < 0.7 or turn < 1:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": "done"}]})
    body = {"model": "m", "max_tokens": 5, "messages": messages}
    book, known = state["book"], state["calls"]
    return body, (lambda s: book.owner(s) in (None, PRO)), known.get, fake


@pytest.mark.parametrize("seed", range(400))
def test_held_up_every_simulated_loop_translates_into_what_the_strict_fake_accepts(seed):
    body, trusted, call_signature, fake = _simulated_history(seed)
    out = agproxy.anthropic_to_gemini(copy.deepcopy(body), PRO, trusted, call_signature)[0]
    fake.check(out, PRO)  # the strict fake: genuine signatures, on the very call they came with
    stripped = agproxy.anthropic_to_gemini(copy.deepcopy(body), PRO, lambda s: False, lambda i: None)[0]
    fake.check(stripped, PRO)  # and the heal (every signature dropped) is accepted too
