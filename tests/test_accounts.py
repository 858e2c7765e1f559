"""Account pools and the retry engine: pure decisions, the pool, hypothesis over failure scripts,
and end to end with a fake upstream that behaves differently per key."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from typing import Any, Dict, List, Optional

import anthropic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agproxy
from agproxy import Account, AccountPool, AttemptError, Decision, Outcome, Route, Upstream, decide, rate_limit_reset
from tests.conftest import fake_config
from tests.fakes.anthropic_upstream import (
    FakeAnthropic,
    Hang,
    Json,
    Sse,
    text_stream,
    tool_and_thinking_stream,
)

ALICE, BOB = "sk-upstream-alice", "sk-upstream-bob"
NOW = 1_800_000_000.0


def error(status: int, error_type: str, headers=(), message: Optional[str] = None) -> Json:
    return Json(status, {"type": "error", "error": {"type": error_type, "message": message or f"HTTP {status}"}},
                headers=list(headers))


LIMITED = error(429, "rate_limit_error", [("retry-after", "60")])


# -- pure: reset parsing and decisions ----------------------------------------------------------

def iso(seconds_from_now: float) -> str:
    import datetime
    return datetime.datetime.fromtimestamp(NOW + seconds_from_now, datetime.timezone.utc).isoformat()


@pytest.mark.parametrize("headers, body, expected", [
    ([("retry-after", "17")], b"", 17),
    ([("Retry-After", "Thu, 15 Jan 2027 08:00:10 GMT")], b"", 10),
    ([("anthropic-ratelimit-requests-remaining", "0"), ("anthropic-ratelimit-requests-reset", iso(42)),
      ("anthropic-ratelimit-tokens-remaining", "5000"), ("anthropic-ratelimit-tokens-reset", iso(5))], b"", 42),
    ([("anthropic-ratelimit-tokens-reset", iso(9)), ("anthropic-ratelimit-requests-reset", iso(30))], b"", 9),
    ([("x-ratelimit-remaining-tokens", "0"), ("x-ratelimit-reset-tokens", "6m0s"),
      ("x-ratelimit-reset-requests", "20ms")], b"", 360),
    ([], b'{"error": {"code": 429, "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", '
         b'"retryDelay": "34s"}]}}', 34),
    ([], b'{"error": {"message": "slow down"}}', None),
])
def test_rate_limit_reset_styles(headers, body, expected):
    got = rate_limit_reset(headers, body, NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=0.01)


def test_retry_after_as_a_date():
    import email.utils
    when = email.utils.formatdate(NOW + 90, usegmt=True)
    assert rate_limit_reset([("retry-after", when)], b"", NOW) == pytest.approx(90, abs=1)


def test_decisions():
    assert decide(Outcome(200), 1, 3).reason == "ok"
    brief = decide(Outcome(429, reset_s=1.5), 1, 3)
    assert brief.retry and brief.same_account and brief.wait_s == 1.5 and not brief.cooldown_s
    limited = decide(Outcome(429, reset_s=60), 1, 3)
    assert limited.retry and not limited.same_account and limited.cooldown_s == 60
    assert decide(Outcome(429), 1, 3, limits_in_a_row=2).cooldown_s == 120
    assert decide(Outcome(429), 1, 3, limits_in_a_row=20).cooldown_s == agproxy.MAX_COOLDOWN_S
    overloaded = decide(Outcome(529), 1, 3, jitter=0.0)
    assert overloaded.retry and overloaded.wait_s == 0.5 and not overloaded.cooldown_s
    rejected = decide(Outcome(401), 1, 3)
    assert rejected.retry and rejected.rejected_key and rejected.cooldown_s == agproxy.REJECTED_KEY_COOLDOWN_S
    for status in (500, 502, 504, 0):
        assert decide(Outcome(status, failure="x"), 1, 3).retry
    for status in (400, 404, 413):
        assert not decide(Outcome(status), 1, 3).retry
    assert not decide(Outcome(500), 3, 3).retry
    assert not decide(Outcome(529, committed=True), 1, 3).retry


def pool_of(*accounts: Account, name: str = "up") -> tuple:
    upstream = Upstream(name=name, kind="anthropic", base_url="http://x", accounts=tuple(accounts))
    return AccountPool([upstream]), upstream


def test_pool_prefers_the_sticky_account_then_the_least_loaded():
    pool, up = pool_of(Account("a", "k"), Account("b", "k"), Account("c", "k", weight=3))
    route = Route((up,), "m")
    first = pool.choose(route, "s1", NOW)
    pool.begin(*first)
    pool.finish(*first, Decision(False, reason="ok"), NOW, "s1")
    for _ in range(3):
        assert pool.choose(route, "s1", NOW) == first
    pool.begin(*pool.choose(route, None, NOW))
    busy = {a.name for u, a in [pool.choose(route, None, NOW)]}
    assert busy  # somebody is still free


def test_pool_rests_an_account_and_trials_it_after():
    pool, up = pool_of(Account("a", "k"))
    route = Route((up,), "m")
    pool.begin(up, up.accounts[0])
    assert pool.finish(up, up.accounts[0], decide(Outcome(429, reset_s=10), 1, 1), NOW, None)
    assert pool.choose(route, None, NOW + 5) is None
    error = pool.unavailable(route, NOW + 5)
    assert error.status == 429 and ("retry-after", "5") in error.headers
    assert "all 1 account(s)" in error.message
    choice = pool.choose(route, None, NOW + 11)
    assert choice is not None
    pool.begin(*choice)
    assert pool.choose(route, None, NOW + 11) is None  # one trial at a time
    pool.finish(*choice, Decision(False, reason="ok"), NOW + 12, None)
    assert pool.describe(NOW + 12)[0]["state"] == "ok"


def test_pool_state_round_trips_and_skips_the_past():
    pool, up = pool_of(Account("a", "k"), Account("b", "k"))
    pool.finish(up, up.accounts[0], decide(Outcome(429, reset_s=100), 1, 1), NOW, None)
    pool.finish(up, up.accounts[1], decide(Outcome(401), 1, 1), NOW, None)
    saved = json.loads(json.dumps(pool.to_json(NOW)))
    again, up2 = pool_of(Account("a", "k"), Account("b", "k"))
    again.load_json(saved, NOW + 50)
    states = {d["account"]: d["state"] for d in again.describe(NOW + 50)}
    assert states == {"a": "rate_limited", "b": "rejected_key"}
    later, _ = pool_of(Account("a", "k"), Account("b", "k"))
    later.load_json(saved, NOW + 200)
    assert {d["state"] for d in later.describe(NOW + 200)} == {"ok", "rejected_key"}
    rekeyed, _ = pool_of(Account("a", "k"), Account("b", "a new key"))  # b's key was fixed in the config
    assert len(rekeyed.load_json(saved, NOW + 50)) == 1
    assert {d["account"]: d["state"] for d in rekeyed.describe(NOW + 50)} == {"a": "rate_limited", "b": "ok"}


# -- hypothesis: random failure scripts through the real retry loop ---------------------------------

OUTCOMES = st.sampled_from([200, 200, 429, 529, 500, 401, 400, 0, "model refused"])


@settings(max_examples=300, deadline=None)
@given(scripts=st.lists(st.lists(OUTCOMES, min_size=1, max_size=4), min_size=1, max_size=4),
       max_attempts=st.integers(min_value=1, max_value=5), short_reset=st.booleans(),
       commit_at=st.integers(min_value=0, max_value=6))
def test_retry_loop_invariants(scripts, max_attempts, short_reset, commit_at):
    accounts = [Account(f"acct{i}", "k") for i in range(len(scripts))]
    pool, up = pool_of(*accounts)
    route = Route((up,), "m")
    remaining = {a.name: list(script) for a, script in zip(accounts, scripts)}
    calls: List[tuple] = []
    clock = [NOW]

    async def attempt(upstream: Upstream, account: Account) -> str:
        script = remaining[account.name]
        status = script.pop(0) if len(script) > 1 else script[0]
        committed = len(calls) + 1 == commit_at
        calls.append((account.name, status, committed))
        if status == 200:
            return f"answer from {account.name}"
        reset = 1.0 if short_reset else 30.0
        if status == "model refused":
            raise AttemptError(agproxy.ModelRefused("x"), Outcome(403, committed=committed, model_refused=True))
        failure = agproxy.UpstreamFailure("x") if status == 0 else agproxy.AgproxyError("x", status=status)
        raise AttemptError(failure, Outcome(status, reset_s=reset if status == 429 else None, committed=committed))

    async def sleep(seconds: float) -> None:
        clock[0] += seconds

    async def run() -> Any:
        return await agproxy.run_attempts(pool, route, None, max_attempts, attempt, clock=lambda: clock[0],
                                          sleep=sleep, jitter=lambda: 0.5)

    try:
        result = asyncio.run(run())
    except agproxy.AgproxyError as failure:
        result = failure
    assert 1 <= len(calls) <= max_attempts
    for _, status, committed in calls[:-1]:
        assert not committed, "retried after bytes reached the client"
        assert status not in (200, 400), "retried after a final answer"
    name, status, committed = calls[-1]
    if status == 200:
        assert result == f"answer from {name}"
        return
    assert isinstance(result, agproxy.AgproxyError)
    final = status == 400 or committed or len(calls) == max_attempts
    if final:  # the answer is the last attempt's
        assert result.status == {0: 502, "model refused": 400}.get(status, status)
    else:  # no account could take another attempt: the pool's summary of why
        assert result.status in (429, agproxy.KEY_REJECTED_STATUS, 400)
        said = {s for _, s, _ in calls}
        assert result.status != 400 or "model refused" in said, calls  # a 400 only when a model was refused
        assert said != {"model refused"} or result.status == 400, calls  # and always when only that was
        assert pool.choose(route, None, clock[0]) is None
    tried = {n for n, _, _ in calls}
    healthy_untried = [a for a in accounts if a.name not in tried and remaining[a.name][0] == 200]
    assert final or not healthy_untried, "gave up while a healthy account was untried"


# -- pure: the stream accumulator ------------------------------------------------------------------

def test_accumulator_builds_the_message():
    from tests.fakes.anthropic_upstream import encode_event
    accumulator = agproxy.MessageAccumulator()
    wire = b"".join(encode_event(e, d) for e, d in tool_and_thinking_stream())
    for event in agproxy.SSEDecoder().feed(wire):
        accumulator.feed(event)
    message = accumulator.result()
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "tool_use"]
    assert message["content"][0]["signature"] == "c2lnbmF0dXJlLWZha2U="
    assert message["content"][2]["input"] == {"command": "ls -la"}
    assert message["stop_reason"] == "tool_use" and message["usage"]["output_tokens"] == 31


def test_accumulator_citations_redacted_and_errors():
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant",
                                                                "content": [], "usage": {"input_tokens": 3}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "redacted_thinking", "data": "abc"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "citations_delta", "citation": {"type": "char_location"}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "text_delta", "text": "cited"}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 2}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    accumulator = agproxy.MessageAccumulator()
    for name, data in events:
        accumulator.feed(agproxy.SSEEvent(name, json.dumps(data)))
    message = accumulator.result()
    assert message["content"] == [{"type": "redacted_thinking", "data": "abc"},
                                  {"type": "text", "text": "cited", "citations": [{"type": "char_location"}]}]
    assert message["usage"] == {"input_tokens": 3, "output_tokens": 2}
    with pytest.raises(agproxy.StreamError) as caught:
        agproxy.MessageAccumulator().feed(agproxy.SSEEvent("error", json.dumps(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})))
    assert caught.value.status == 529
    unfinished = agproxy.MessageAccumulator()
    unfinished.feed(agproxy.SSEEvent(*[events[0][0], json.dumps(events[0][1])]))
    with pytest.raises(agproxy.UpstreamFailure):
        unfinished.result()


# -- end to end ------------------------------------------------------------------------------------

def sdk(proxy, **headers) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="x", max_retries=0, default_headers=headers)


def ask(proxy, stream: bool = False, model: str = "m", **headers) -> Any:
    client = sdk(proxy, **headers)
    args = dict(model=model, max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    if stream:
        with client.messages.stream(**args) as s:
            return s.get_final_message()
    return client.messages.with_raw_response.create(**args)


def accounts(proxy) -> Dict[str, Dict[str, Any]]:
    with urllib.request.urlopen(proxy.url + "/v1/agproxy/accounts", timeout=5) as response:
        return {a["account"]: a for a in json.load(response)["accounts"]}


def test_rate_limited_account_rests_and_the_next_one_answers(start_agproxy, fake):
    fake.script_for(ALICE, LIMITED)
    proxy = start_agproxy(fake_config(fake))
    raw = ask(proxy)
    assert raw.headers["x-account-email"] == "bob@example.com"
    assert fake.keys() == [ALICE, BOB]
    ask(proxy)
    ask(proxy, stream=True)
    assert fake.keys() == [ALICE, BOB, BOB, BOB]  # alice is skipped while she rests
    state = accounts(proxy)
    assert state["alice@example.com"]["state"] == "rate_limited"
    assert state["alice@example.com"]["resting_until"] and state["bob@example.com"]["state"] == "ok"
    assert "status 429: rate limited; account rests 60 s for m; retrying on a free account, if any" in proxy.log()


def test_brief_limit_is_waited_out_on_the_same_account(start_agproxy, fake):
    fake.script_for(ALICE, error(429, "rate_limit_error", [("retry-after", "1")]))
    proxy = start_agproxy(fake_config(fake))
    assert ask(proxy).headers["x-account-email"] == "alice@example.com"
    assert fake.keys() == [ALICE, ALICE]
    assert len(proxy.clock.waits) == 1 and 1 <= proxy.clock.waits[0] <= 2  # the reset, and a little jitter


@pytest.mark.parametrize("reply, expected", [
    (error(529, "overloaded_error"), [ALICE, BOB]),
    (error(500, "api_error"), [ALICE, BOB]),
    (error(503, "overloaded_error"), [ALICE, BOB]),
    (Hang(3), [ALICE, BOB]),
    (Sse(text_stream("never"), drop_after=0), [ALICE, BOB]),
    (Sse([("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]),
     [ALICE, BOB]),
])
@pytest.mark.parametrize("stream", [False, True])
def test_failures_before_the_first_byte_rotate(start_agproxy, fake, reply, expected, stream):
    fake.script_for(ALICE, reply)
    config = fake_config(fake)
    config["upstreams"][0]["timeout_s"] = 1
    proxy = start_agproxy(config)
    answer = ask(proxy, stream=stream)
    assert fake.keys() == expected
    assert (answer.content if stream else answer.parse().content)[0].text


def test_no_retry_after_the_first_byte(start_agproxy, fake):
    fake.script_for(ALICE, Sse(text_stream("a b c d"), drop_after=4))
    proxy = start_agproxy(fake_config(fake))
    with pytest.raises(anthropic.APIStatusError):
        ask(proxy, stream=True)
    assert fake.keys() == [ALICE]


def test_forced_internal_streaming_and_retry_of_a_broken_stream(start_agproxy, fake):
    fake.script_for(ALICE, Sse(tool_and_thinking_stream(), drop_after=6))  # breaks before the end
    fake.script_for(BOB, Sse(tool_and_thinking_stream()))
    proxy = start_agproxy(fake_config(fake))
    message = ask(proxy).parse()
    assert fake.keys() == [ALICE, BOB]
    assert all(r.json["stream"] is True for r in fake.requests)
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[0].signature == "c2lnbmF0dXJlLWZha2U=" and message.content[2].input == {"command": "ls -la"}


def test_forced_streaming_can_be_turned_off(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, force_stream_internally=False))
    ask(proxy)
    assert "stream" not in fake.requests[0].json


def test_rejected_key_is_rested_and_logged(start_agproxy, fake):
    fake.script_for(ALICE, error(401, "authentication_error", message="invalid x-api-key"))
    proxy = start_agproxy(fake_config(fake))
    assert ask(proxy).headers["x-account-email"] == "bob@example.com"
    ask(proxy)
    assert fake.keys() == [ALICE, BOB, BOB]
    assert accounts(proxy)["alice@example.com"]["state"] == "rejected_key"
    assert "WARNING agproxy: " in proxy.log() and "key rejected (HTTP 401: invalid x-api-key)" in proxy.log()
    assert ALICE not in proxy.log()


def test_all_accounts_limited_is_429_with_the_soonest_reset(start_agproxy, fake):
    fake.script_for(ALICE, error(429, "rate_limit_error", [("retry-after", "60")]))
    fake.script_for(BOB, error(429, "rate_limit_error", [("retry-after", "30")]))
    proxy = start_agproxy(fake_config(fake))
    for _ in range(2):
        with pytest.raises(anthropic.RateLimitError) as caught:
            ask(proxy)
        assert caught.value.body["error"]["type"] == "rate_limit_error"
        assert 28 <= int(caught.value.response.headers["retry-after"]) <= 30
        assert "all 2 account(s)" in caught.value.message
    assert fake.keys() == [ALICE, BOB]  # the second request never reached the upstream


def limited_solo_account(start_agproxy, fake) -> Any:
    """agproxy with alice alone, whom the upstream has just limited for 3 s (and 3 s have passed)."""
    solo = fake_config(fake)
    solo["upstreams"][0]["accounts"] = solo["upstreams"][0]["accounts"][:1]
    fake.script_for(ALICE, error(429, "rate_limit_error", [("retry-after", "3")]))
    proxy = start_agproxy(solo)
    with pytest.raises(anthropic.RateLimitError):
        ask(proxy)
    proxy.clock.advance(3.1)  # past the 3 s rest
    return proxy


def test_a_rested_account_gets_one_trial_when_its_time_is_up(start_agproxy, fake):
    proxy = limited_solo_account(start_agproxy, fake)
    fake.script_for(ALICE, error(429, "rate_limit_error"))  # still limited: the rest is extended
    with pytest.raises(anthropic.RateLimitError):
        ask(proxy)
    state = accounts(proxy)["alice@example.com"]
    assert state["state"] == "rate_limited" and state["rate_limited"] == 2
    assert fake.keys() == [ALICE, ALICE]


def test_a_cleared_limit_is_used_again_without_a_restart(start_agproxy, fake):
    proxy = limited_solo_account(start_agproxy, fake)
    assert ask(proxy).parse().content[0].text
    assert accounts(proxy)["alice@example.com"]["state"] == "ok"


def test_sticky_sessions_keep_an_account(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    for _ in range(3):
        ask(proxy, **{"X-Claude-Code-Session-Id": "one"})
    ask(proxy, **{"X-Claude-Code-Session-Id": "two"})
    keys = fake.keys()
    assert keys[0] == keys[1] == keys[2] and keys[3] != keys[0]


def test_fallback_upstream_takes_over(start_agproxy, fake):
    with FakeAnthropic() as backup:
        backup_upstream = {"name": "backup", "kind": "anthropic", "base_url": backup.url,
                           "accounts": [{"name": "carol@example.com", "api_key": "sk-carol"}]}
        config = fake_config(fake, model_map=[{"match": "*", "upstream": ["fake", "backup"]}])
        config["upstreams"].append(backup_upstream)
        fake.script_for(ALICE, LIMITED)
        fake.script_for(BOB, LIMITED)
        proxy = start_agproxy(config)
        raw = ask(proxy)
        assert raw.headers["x-account-email"] == "carol@example.com"
        assert fake.keys() == [ALICE, BOB] and backup.keys() == ["sk-carol"]


def test_account_model_globs(start_agproxy, fake):
    config = fake_config(fake)
    config["upstreams"][0]["accounts"][0]["models"] = ["claude-*haiku*"]
    proxy = start_agproxy(config)
    for _ in range(3):
        ask(proxy, model="claude-sonnet-x")
    ask(proxy, model="claude-haiku-y", **{"X-Claude-Code-Session-Id": "h"})
    assert fake.keys()[:3] == [BOB, BOB, BOB]


def test_max_concurrency_queues_for_a_slot(start_agproxy, fake):
    config = fake_config(fake)
    config["upstreams"][0]["accounts"] = [dict(config["upstreams"][0]["accounts"][0], max_concurrency=1)]
    fake.script(Sse(text_stream("slow one"), delay_s=0.3), Sse(text_stream("slow two"), delay_s=0.3))
    proxy = start_agproxy(config)
    results = []
    threads = [threading.Thread(target=lambda: results.append(ask(proxy, stream=True))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == 2
    first, second = fake.requests
    assert second.at - first.at >= 1.0  # the second waited for the first's whole stream


def test_a_limited_account_stays_limited_across_a_restart(start_agproxy, fake, tmp_path):
    state = tmp_path / "state.json"
    fake.script_for(ALICE, error(429, "rate_limit_error", [("retry-after", "600")]))
    proxy = start_agproxy(fake_config(fake, state_file=str(state)))
    ask(proxy)
    assert proxy.stop() == 0
    again = start_agproxy(fake_config(fake, state_file=str(state)))
    ask(again)
    ask(again)
    assert fake.keys() == [ALICE, BOB, BOB, BOB]
    assert accounts(again)["alice@example.com"]["state"] == "rate_limited"


def test_a_key_fixed_in_the_config_works_right_after_a_restart(start_agproxy, fake, tmp_path):
    """A rest belongs to the key (by fingerprint), not to the account's name: the issue was a key
    rejected with 401, fixed in the config, and still refused for an hour after a restart."""
    state = tmp_path / "state.json"
    wrong = fake_config(fake, state_file=str(state))
    wrong["upstreams"][0]["accounts"] = [{"name": "alice@example.com", "api_key": "sk-upstream-typo"}]
    fake.script_for("sk-upstream-typo", error(401, "authentication_error", message="invalid x-api-key"))
    proxy = start_agproxy(wrong)
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(proxy)
    assert caught.value.status_code == 424
    assert proxy.stop() == 0
    saved = state.read_text()
    assert "sk-upstream-typo" not in saved and '"key":"' in saved  # a fingerprint, never the key
    unchanged = start_agproxy(wrong)  # the same wrong key: its rest is restored, and said so
    with pytest.raises(anthropic.APIStatusError):
        ask(unchanged)
    assert "restored from the state file: account 'alice@example.com' of upstream 'fake' rests" in unchanged.log()
    assert unchanged.stop() == 0
    fixed = dict(wrong, upstreams=[dict(wrong["upstreams"][0], accounts=[
        {"name": "alice@example.com", "api_key": ALICE}])])
    again = start_agproxy(fixed)
    assert ask(again).headers["x-account-email"] == "alice@example.com"
    assert fake.keys() == ["sk-upstream-typo", ALICE] and "restored" not in again.log()


def test_the_default_state_file_is_one_per_config():
    env = {"HOME": "/home/u"}
    first, second = agproxy.default_state_file(env, "/etc/a.json"), agproxy.default_state_file(env, "/etc/b.json")
    assert first != second and first.startswith("/home/u/.local/state/agproxy/state-")
    assert agproxy.default_state_file(env) == "/home/u/.local/state/agproxy/state.json"


def test_accounts_page_needs_the_key_when_auth_is_on(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, auth_mode="strict", api_key="sk-local"))
    with pytest.raises(urllib.error.HTTPError) as caught:
        accounts(proxy)
    assert caught.value.code == 401
    request = urllib.request.Request(proxy.url + "/v1/agproxy/accounts", headers={"x-api-key": "sk-local"})
    with urllib.request.urlopen(request, timeout=5) as response:
        listed = json.load(response)["accounts"]
    assert {a["account"] for a in listed} == {"alice@example.com", "bob@example.com"}
    assert "sk-upstream" not in json.dumps(listed)


import urllib.error  # noqa: E402


def test_a_client_that_leaves_stops_the_retries(start_agproxy, fake):
    """A client that resets its connection has left (a half-close would not mean that)."""
    import socket
    import struct
    solo = fake_config(fake)
    solo["upstreams"][0]["accounts"] = solo["upstreams"][0]["accounts"][:1]
    fake.script_for(ALICE, error(429, "rate_limit_error", [("retry-after", "2")]))  # waited out on alice
    proxy = start_agproxy(solo)
    proxy.clock.manual = True  # the 2 s wait lasts until the test moves the clock
    body = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}).encode()
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
        deadline = time.monotonic() + 5
        while not proxy.clock.waits and time.monotonic() < deadline:
            time.sleep(0.02)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    deadline = time.monotonic() + 5
    while " 499 " not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.02)
    proxy.clock.advance(3)
    time.sleep(0.2)
    assert fake.keys() == [ALICE]  # the retry after the 2 s wait never went out
    assert " 499 " in proxy.log()
    assert accounts(proxy)["alice@example.com"]["in_flight"] == 0


def test_a_rate_limit_rests_the_account_for_that_model_only():
    """Anthropic, OpenAI and Gemini count their limits per model: the account serves the others."""
    pool, up = pool_of(Account("a", "k"))
    pool.begin(up, up.accounts[0])
    assert pool.finish(up, up.accounts[0], decide(Outcome(429, reset_s=60), 1, 1), NOW, None, "pro")
    assert pool.choose(Route((up,), "pro"), None, NOW + 5) is None
    assert pool.unavailable(Route((up,), "pro"), NOW + 5).status == 429
    assert pool.choose(Route((up,), "flash"), None, NOW + 5) is not None
    saved = json.loads(json.dumps(pool.to_json(NOW + 5)))
    again, up2 = pool_of(Account("a", "k"))
    assert "for pro" in again.load_json(saved, NOW + 10)[0]
    assert again.choose(Route((up2,), "pro"), None, NOW + 10) is None
    assert again.choose(Route((up2,), "flash"), None, NOW + 10) is not None
    assert list(again.describe(NOW + 10)[0]["models_resting"]) == ["pro"]
    again.finish(up2, up2.accounts[0], decide(Outcome(401), 1, 1), NOW + 10, None, "flash")
    assert again.choose(Route((up2,), "flash"), None, NOW + 11) is None  # a rejected key: every model


def test_model_rests_are_bounded():
    pool, up = pool_of(Account("a", "k"))
    for number in range(500):
        pool.finish(up, up.accounts[0], decide(Outcome(429, reset_s=60 + number), 1, 1), NOW, None, f"m{number}")
    rests = pool.state(up, up.accounts[0]).rests
    assert len(rests) == agproxy.MAX_MODEL_RESTS and "m499" in rests and "m0" not in rests
    assert len(pool.state(up, up.accounts[0]).unproven) <= agproxy.MAX_MODEL_RESTS + 1


def test_all_limited_says_how_many_more_rest_for_a_rejected_key():
    pool, up = pool_of(Account("a", "k"), Account("b", "k"), Account("c", "k"))
    pool.finish(up, up.accounts[0], decide(Outcome(429, reset_s=100), 1, 1), NOW, None, "m")
    pool.finish(up, up.accounts[1], decide(Outcome(429, reset_s=50), 1, 1), NOW, None, "m")
    pool.finish(up, up.accounts[2], decide(Outcome(401), 1, 1), NOW, None, "m")
    error = pool.unavailable(Route((up,), "m"), NOW + 1)
    assert error.status == 429 and "all 2 account(s)" in error.message
    assert "1 more rest with a rejected key" in error.message and ("retry-after", "49") in error.headers


# -- the state file: only agproxy's own is read, written or removed -----------------------------

def _state_clear(tmp_path, config_path) -> Any:
    import subprocess
    import sys

    from tests.conftest import AGPROXY, clean_env
    return subprocess.run([sys.executable, str(AGPROXY), "state", "clear", "--config", str(config_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30, env=clean_env(HOME=str(tmp_path)))


def _special_files(tmp_path) -> List[Any]:
    import os
    import stat
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    found = [("fifo", fifo, "not a regular file")]
    try:  # /dev/null's twin, where root may make one (a container may not let it)
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        found.append(("device", tmp_path / "null", "not a regular file"))
    except (PermissionError, OSError):
        pass
    return found


def test_a_state_file_that_is_not_agproxys_is_never_replaced_nor_removed(start_agproxy, fake, tmp_path):
    """Issue 18: with state_file pointing at the config itself, the first rate limit replaced the
    config and `state clear` deleted it; a FIFO (or /dev/null as root) was replaced too."""
    import os
    import stat
    cases = [("config", tmp_path / "agproxy-0.json", 'JSON without "format": 1')] + _special_files(tmp_path)
    for i, (name, target, reason) in enumerate(cases):
        config_path = tmp_path / f"agproxy-{i}.json"  # where start_agproxy writes its i-th config
        fake.reset()
        fake.script_for(ALICE, LIMITED)
        stray = tmp_path / f"{target.name}.{2 ** 22 + 1}.tmp"  # named as agproxy's temporaries, of no live pid
        stray.write_text("someone else's")
        proxy = start_agproxy(fake_config(fake, state_file=str(target)))
        assert stray.exists()  # nothing is removed beside a file that is not agproxy's either
        before = os.stat(target)
        assert ask(proxy).headers["x-account-email"] == "bob@example.com"  # alice rests: a save is due
        proxy.stop()
        after = os.stat(target)
        assert (after.st_ino, stat.S_IFMT(after.st_mode)) == (before.st_ino, stat.S_IFMT(before.st_mode)), name
        if name == "config":
            assert json.loads(target.read_text())["upstreams"][0]["name"] == "fake"
        log = proxy.log()
        assert f"state file {target} is not agproxy's ({reason}): agproxy neither reads, replaces nor removes it" \
            in log, log
        assert f"not saving the state: {target} is not agproxy's" in log
        cleared = _state_clear(tmp_path, config_path)
        assert cleared.returncode == 1 and f"{target} is not agproxy's state file ({reason}); not removing it" \
            in cleared.stderr, cleared.stderr
        assert os.path.lexists(target) and os.stat(target).st_ino == before.st_ino
        assert not os.path.exists(f"{target}.lock")


def test_a_state_file_whose_sections_have_the_wrong_types_is_reported(start_agproxy, fake, tmp_path):
    """Issue 18: such a file was ignored section by section without a word."""
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"format": 1, "learned": {"x": {"fields": 5}}, "accounts": [],
                                 "windows": {"u": {"models": {"m": "big"}}}}))
    proxy = start_agproxy(fake_config(fake, state_file=str(state)))
    log = proxy.log()
    assert f"state file {state}: learned.x.fields: must be a list of strings, got 5; that part is ignored" in log
    assert f"state file {state}: accounts: must be an object, got []; that part is ignored" in log
    assert 'windows.u.models: must be an object of integers, got {"m": "big"}' in log
    assert ask(proxy).headers["x-account-email"]  # and it serves
    proxy.stop()


def test_state_problems_are_bounded_and_leave_unknown_sections_alone():
    problems = agproxy.state_problems({"format": 1, "future": 5, "pid": "me",
                                       "accounts": {f"u/{i}": {"resting_until": "soon"} for i in range(100)}})
    assert problems[0] == 'pid: must be an integer, got "me"'
    assert problems[1] == 'accounts.u/0.resting_until: must be a number, got "soon"'
    assert len(problems) == agproxy.MAX_STATE_PROBLEMS + 1 and problems[-1] == "and 96 more"
    good = {"format": 1, "pid": 3, "learned": {"u": {"fields": ["a"], "betas": [], "server": "ab"}},
            "accounts": {"u/a": {"resting_until": 1.5, "rejected_key": False, "reason": "r", "models": {"m": 2},
                                 "limits_in_a_row": 1, "key": "k"}}}
    assert agproxy.state_problems(good) == []


# -- learned rejections: junk a client invents cannot crowd out what the upstream really rejects --

def test_a_learned_table_full_of_junk_still_learns_a_known_field():
    """Issue 18: 64 fields a client made up filled the table, and a field the upstream really
    rejects could no longer be learned (an extra 400 on every later request)."""
    learned = agproxy.LearnedRejections()
    learned.learn("u", [f"junk_{i}" for i in range(agproxy.MAX_LEARNED)], [f"beta-{i}" for i in range(64)])
    assert learned.learn("u", ["context_management"], ["real-beta"]) == ["context_management", "beta:real-beta"]
    assert "context_management" in learned.fields("u") and "junk_0" not in learned.fields("u")
    assert len(learned.fields("u")) == len(learned.betas("u")) == agproxy.MAX_LEARNED
    known = [f"tools.*.{name}" for name in ("cache_control", "strict", "defer_loading")]
    learned.learn("u", known)
    for i in range(200):  # a flood of junk never pushes a known field out
        learned.learn("u", [f"more_junk_{i}"])
    assert set(known + ["context_management"]) <= set(learned.fields("u"))


def test_a_made_up_field_in_use_outlives_a_flood_of_junk():
    """An unknown name the upstream rejects on every request stays learned: each use makes it the
    most recently useful, and junk sent once goes first."""
    learned = agproxy.LearnedRejections()
    learned.learn("u", ["x_vendor_field"] + [f"junk_{i}" for i in range(agproxy.MAX_LEARNED - 1)])
    for i in range(300):
        learned.used("u", {"learned:x_vendor_field": 1, "field:other": 1})  # a request it was stripped from
        learned.learn("u", [f"flood_{i}"])
    assert "x_vendor_field" in learned.fields("u") and len(learned.fields("u")) == agproxy.MAX_LEARNED
    again = agproxy.LearnedRejections()  # the order of use survives the state file
    again.load_json(learned.to_json())
    assert again.fields("u") == learned.fields("u")


def test_junk_fields_do_not_make_a_really_rejected_field_cost_a_400_each_time(start_agproxy):
    with FakeAnthropic(strict=True) as strict:
        proxy = start_agproxy(fake_config(strict, state_file=""))
        for i in range(agproxy.MAX_LEARNED + 2):
            assert ask_raw(proxy, {f"junk_{i}": 1}) == 200
        assert ask_raw(proxy, {"context_management": {"edits": []}}) == 200
        calls = len(strict.requests)
        assert ask_raw(proxy, {"context_management": {"edits": []}}) == 200
        assert len(strict.requests) == calls + 1  # stripped before sending: no refused attempt


def ask_raw(proxy, extra: Dict[str, Any]) -> int:
    body = dict(model="m", max_tokens=50, messages=[{"role": "user", "content": "hi"}], **extra)
    request = urllib.request.Request(proxy.url + "/v1/messages", json.dumps(body).encode(),
                                     {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status

def test_a_rate_limit_on_one_model_leaves_the_accounts_other_models_concurrent(start_agproxy, fake):
    """After a rate limit on model A, every later attempt on the account was taken for the trial
    of a rest ended, whatever its model, and a trial runs alone: requests for model B went one at
    a time (three 3 s requests took 3, 5.6 and 5.8 s; with no max_concurrency one waited 30 s for
    a slot and got a 529). Only A's requests wait for A's trial."""
    solo = fake_config(fake)
    solo["upstreams"][0]["accounts"] = solo["upstreams"][0]["accounts"][:1]
    fake.script(LIMITED)
    proxy = start_agproxy(solo)
    with pytest.raises(anthropic.RateLimitError):
        ask(proxy, model="model-a")
    fake.script(*[Sse(text_stream("one two three four five six seven"), delay_s=0.1) for _ in range(3)])
    results: List[Any] = []
    threads = [threading.Thread(target=lambda: results.append(ask(proxy, model="model-b").parse()))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == 3 and all(r.content[0].text.startswith("one two") for r in results)
    assert fake.most_in_flight == 3  # all three ran at once
    assert accounts(proxy)["alice@example.com"]["models_resting"].keys() == {"model-a"}


def test_a_trial_is_per_model_and_per_key():
    """When a model's rest ends, its next attempt is its trial: the model's other requests wait
    for the verdict, other models do not; a rejected key's trial holds every model."""
    pool, up = pool_of(Account("a", "k"))
    account = up.accounts[0]
    pool.finish(up, account, decide(Outcome(429, reset_s=10), 1, 1), NOW, None, "pro")
    assert pool.begin(up, account, "flash") is None  # not a trial: flash never rested
    trial = pool.begin(up, account, "pro")
    assert trial == "pro"
    assert pool.choose(Route((up,), "pro"), None, NOW + 11) is None  # one trial of pro at a time
    assert pool.choose(Route((up,), "flash"), None, NOW + 11) is not None
    assert pool.describe(NOW + 11)[0]["state"] == "probing"
    pool.finish(up, account, Decision(False, reason="ok"), NOW + 11, None, "pro", trial)
    assert pool.choose(Route((up,), "pro"), None, NOW + 11) is not None
    pool.finish(up, account, decide(Outcome(401), 1, 1), NOW + 12, None, "flash")
    key_trial = pool.begin(up, account, "flash")
    assert key_trial == ""
    later = NOW + 12 + agproxy.REJECTED_KEY_COOLDOWN_S + 1
    assert pool.choose(Route((up,), "other"), None, later) is None  # the key's trial holds every model
    pool.finish(up, account, Decision(False, reason="ok"), later, None, "flash", key_trial)
    assert pool.choose(Route((up,), "other"), None, later) is not None
    assert pool.describe(later)[0]["state"] == "ok"


# -- a model refused to a key ----------------------------------------------------------------------

LITELLM_REFUSAL = Json(401, {"error": {
    "message": "key not allowed to access model. This key can only access models=['small']. Tried to access big",
    "type": "key_model_access_denied", "param": "model", "code": "401"}})
OPENAI_REFUSAL = Json(403, {"error": {"message": "Project `proj_Ab12` does not have access to model `big`",
                                      "type": "invalid_request_error", "param": None, "code": "model_not_found"}})


@pytest.mark.parametrize("status, error, refuses", [
    (401, LITELLM_REFUSAL.body["error"], True),
    (403, OPENAI_REFUSAL.body["error"], True),
    (401, {"message": "x", "type": "team_model_access_denied"}, True),
    (401, {"message": "Authentication Error, API Key not allowed to access model. This token can only access "
                      "models=['mistral']. Tried to access gemini-pro-vision", "type": "auth_error"}, True),
    (403, {"message": "Project `proj_1` does not have access to model `gpt-5`"}, True),
    (401, {"message": "invalid x-api-key", "type": "authentication_error"}, False),
    (403, {"message": "Your API key does not have permission to use the specified resource.",
           "type": "permission_error"}, False),
    # a client's words quoted after the opening never count, nor does a refusal on a 400 or 404
    (401, {"message": "Invalid API key for model 'key not allowed to access model'", "type": "auth_error"}, False),
    (401, {"message": "Incorrect API key provided: Project `p` does not have access to model `x`"}, False),
    (404, OPENAI_REFUSAL.body["error"], False),
    (401, {"message": ["not", "text"], "type": {"not": "hashable"}, "code": []}, False),
])
def test_which_401_and_403_refuse_a_model_and_not_the_key(status, error, refuses):
    assert agproxy.refuses_model(status, {"error": error}) is refuses


def test_a_moderation_403_quoting_the_clients_words_is_the_requests_fault():
    """OpenRouter answers 403 when its moderation flags the input, and quotes the client's words."""
    body = json.dumps({"error": {"code": 403, "message": "Input was flagged", "metadata": {
        "reasons": ["violence"], "flagged_input": "invalid api key", "provider_name": "OpenAI"}}}).encode()
    assert agproxy.upstream_status_of(403, body) == 400
    error = agproxy.anthropic_error_from_upstream(403, body, "router")
    assert error.status == 400 and decide(agproxy._outcome_of(error), 1, 3).cooldown_s == 0


def test_a_refused_model_rests_that_model_on_that_account_only():
    pool, up = pool_of(Account("a", "k"), Account("b", "k"))
    alice, bob = up.accounts
    refused = decide(Outcome(403, failure="HTTP 403: Project `p` does not have access to model `big`",
                            model_refused=True), 1, 3)
    assert refused.retry and refused.model_refused and not refused.rejected_key
    assert refused.cooldown_s == agproxy.MODEL_REFUSED_COOLDOWN_S
    pool.finish(up, alice, refused, NOW, None, "big")
    assert pool.choose(Route((up,), "big"), None, NOW + 1) == (up, bob)
    assert pool.choose(Route((up,), "small"), None, NOW + 1, tried=[("up", "b")]) == (up, alice)
    assert pool.state(up, alice).rate_limited == 0 and pool.state(up, alice).limits_in_a_row == 0
    pool.finish(up, bob, refused, NOW, None, "big")
    error = pool.unavailable(Route((up,), "big"), NOW + 1)
    assert isinstance(error, agproxy.ModelRefused) and error.status == 400
    assert error.error_type == "invalid_request_error"
    assert error.message.startswith("no account of upstream 'up' may use model 'big' (up/a: HTTP 403: Project")
    assert "route 'big' to an upstream whose key may use it (model_map)" in error.message
    assert "tried with it again in 599 s" in error.message
    saved = json.loads(json.dumps(pool.to_json(NOW + 1)))
    again, up2 = pool_of(Account("a", "k"), Account("b", "k"))
    again.load_json(saved, NOW + 2)
    assert isinstance(again.unavailable(Route((up2,), "big"), NOW + 2), agproxy.ModelRefused)
    assert again.choose(Route((up2,), "small"), None, NOW + 2) is not None
    pool.finish(up, alice, decide(Outcome(429, reset_s=60), 1, 3), NOW + 2, None, "big")
    assert pool.unavailable(Route((up,), "big"), NOW + 3).status == 429  # alice is only limited now


def test_a_model_refused_to_one_key_leaves_the_key_to_every_other_model(start_agproxy, fake):
    """OpenAI's "does not have access to model", LiteLLM's "key not allowed to access model" and
    the like rested the key for ten minutes, for every model: one client asking for a model the
    key may not use took the account away from everyone."""
    fake.script_for(ALICE, LITELLM_REFUSAL)
    proxy = start_agproxy(fake_config(fake))
    assert ask(proxy, model="big").headers["x-account-email"] == "bob@example.com"
    for _ in range(3):
        ask(proxy, model="small")
    assert ALICE in fake.keys()[2:]  # alice still serves the other models
    ask(proxy, model="big")
    assert fake.keys()[-1] == BOB  # and rests for "big" only
    state = accounts(proxy)["alice@example.com"]
    assert list(state["models_resting"]) == ["big"] and state["resting_until"]
    assert "WARNING agproxy: " in proxy.log() and "model refused (HTTP 401: key not allowed to access model" \
        in proxy.log()


def test_a_model_no_key_may_use_is_a_400_that_names_it(start_agproxy, fake):
    fake.script_for(ALICE, OPENAI_REFUSAL)
    fake.script_for(BOB, OPENAI_REFUSAL)
    proxy = start_agproxy(fake_config(fake))
    for _ in range(2):
        with pytest.raises(anthropic.BadRequestError) as caught:
            ask(proxy, model="big")
        message = caught.value.message
        assert "no account of upstream 'fake' may use model 'big'" in message
        assert "does not have access to model `big`" in message and "api key" not in message.lower()
        assert caught.value.response.headers["x-should-retry"] == "false"
    assert sorted(fake.keys()) == [ALICE, BOB]  # the second request never reached the upstream
    assert ask(proxy, model="small").parse().content[0].text
