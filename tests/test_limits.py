"""Each client's own limits (issue 20, "Limits"): max_concurrency, requests_per_minute (a sliding
60 s window) and tokens_per_day (UTC), enforced before any upstream is called, refused with a 429
``rate_limit_error`` that names the client and the limit, never confused with an upstream's 429,
kept across a restart and a reload. Several clients at once, over real sockets; the windows and
days move with the test's clock, the waits for a place in real time."""

from __future__ import annotations

import concurrent.futures
import json
import math
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hypothesis import example, given, settings
from hypothesis import strategies as st

import agproxy
from tests.conftest import fake_config
from tests.fakes.anthropic_upstream import Json, Sse, message, text_stream
from tests.test_claude_code import claude, cli  # noqa: F401  (the real Claude Code, as a fixture)
from tests.test_teams import ADMIN, ALICE, BOB, CAROL, LOCAL, ask, call

KEYS = (ALICE, BOB, CAROL, ADMIN, LOCAL)


def limited_config(fake: Any, alice: Dict[str, Any], bob: Optional[Dict[str, Any]] = None, **top: Any
                   ) -> Dict[str, Any]:
    """Three clients: alice with the limits given, bob with his (none by default), carol with none."""
    return fake_config(fake, auth_mode="strict", api_key=LOCAL, admin_api_key=ADMIN, log_format="json", clients=[
        dict({"name": "alice", "api_key": ALICE}, **alice),
        dict({"name": "bob", "api_key": BOB}, **(bob or {})),
        {"name": "carol", "api_key_sha256": agproxy.key_sha256(CAROL)},
    ], **top)


def post(proxy: Any, key: str, body: Optional[Dict[str, Any]] = None, path: str = "/v1/messages",
         timeout: float = 30) -> Tuple[int, Dict[str, str], bytes]:
    """POST a request (``ask()`` by default); its status, headers (lowercase names) and body."""
    request = urllib.request.Request(proxy.url + path, data=json.dumps(body or ask()).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def refusal(answer: Tuple[int, Dict[str, str], bytes]) -> Tuple[str, str]:
    """The message and ``retry-after`` of a client-limit 429."""
    status, headers, body = answer
    error = json.loads(body)
    assert status == 429 and error["error"]["type"] == "rate_limit_error", (status, body)
    return error["error"]["message"], headers["retry-after"]


def metrics(proxy: Any) -> str:
    request = urllib.request.Request(proxy.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def upstream_messages(fake: Any) -> int:
    return len([r for r in fake.requests if r.target.split("?")[0] == "/v1/messages"])


def access_lines(proxy: Any) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in proxy.log().splitlines() if '"event": "access"' in line]


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


def test_requests_per_minute_refuses_the_next_request_until_the_oldest_leaves_the_window(start_agproxy, fake):
    proxy = start_agproxy(limited_config(fake, {"requests_per_minute": 3}, {"requests_per_minute": 1}))
    clock = proxy.clock
    sent: List[Tuple[float, float]] = []  # the server's clock just before and after each of alice's requests

    def alice() -> Tuple[int, Dict[str, str], bytes]:
        before = clock.time()
        answer = post(proxy, ALICE)
        sent.append((before, clock.time()))
        return answer

    def leaves_in(first: Tuple[float, float], now: Tuple[float, float]) -> range:
        """The retry-after that says when a request sent within ``first`` leaves a window seen within ``now``."""
        return range(math.ceil(first[0] + 60 - now[1]), math.ceil(first[1] + 60 - now[0]) + 1)

    assert alice()[0] == 200
    clock.advance(20)
    assert [alice()[0] for _ in range(2)] == [200, 200]
    assert post(proxy, BOB)[0] == 200 and post(proxy, CAROL)[0] == 200  # each client has its own window
    clock.advance(15)  # 35 s after the first: it leaves the window in 25 s
    answer = alice()
    message, retry_after = refusal(answer)
    assert int(retry_after) in leaves_in(sent[0], sent[-1]), (retry_after, sent)
    assert "x-should-retry" not in answer[1]  # a retry then is served
    assert "client 'alice'" in message and "requests_per_minute" in message and "3 request(s)" in message
    assert "'bob'" in refusal(post(proxy, BOB))[0]
    assert post(proxy, ALICE, ask(), "/v1/messages/count_tokens")[0] == 200  # only requests that generate
    assert call(proxy, "/v1/models", ALICE)[0] == 200 and call(proxy, "/v1/agproxy/me", ALICE)[0] == 200
    assert upstream_messages(fake) == 5  # no refused request reached the upstream
    clock.advance(25)
    assert alice()[0] == 200
    assert int(refusal(alice())[1]) in leaves_in(sent[1], sent[-1])  # the second request (at 20 s) leaves next
    now = call(proxy, "/v1/agproxy/me", ALICE)[1]["limits_now"]
    assert now["requests_last_minute"] == 3 and now["in_flight"] == now["waiting"] == 0, now


def test_a_client_limit_429_is_never_an_upstreams_in_the_log_metrics_ledger_and_accounts(start_agproxy, fake):
    proxy = start_agproxy(limited_config(fake, {"requests_per_minute": 1}))
    assert post(proxy, ALICE)[0] == 200
    refusal(post(proxy, ALICE))
    page = metrics(proxy)
    assert 'agproxy_client_limited_total{client="alice",limit="requests_per_minute"} 1' in page, page
    assert re.search(r'agproxy_requests_total\{route="messages",status="429",upstream="",'
                     r'model="claude-sonnet-4-5"\} 1', page), page
    assert 'outcome="rate_limited"' not in page  # no attempt at all, so no upstream rate limit
    states = [line for line in page.splitlines() if line.startswith("agproxy_account_state") and line.endswith(" 1")]
    assert len(states) == 2 and all('state="ready"' in line for line in states), states  # no account rests
    wait_for(lambda: len(access_lines(proxy)) >= 2)
    refused = [line for line in access_lines(proxy) if line["status"] == 429]
    assert len(refused) == 1 and refused[0]["client"] == "alice" and refused[0]["upstream"] is None
    assert refused[0]["attempts"] == 0 and "requests_per_minute limit in agproxy's config" in refused[0]["error"]
    status, usage = call(proxy, "/v1/agproxy/usage?group_by=client", ADMIN)
    alice = next(row for row in usage["rows"] if row["client"] == "alice")
    assert alice["requests"] == 2 and alice["errors"] == 1


def test_tokens_per_day_allows_the_crossing_request_and_refuses_the_next_until_utc_midnight(start_agproxy, fake):
    proxy = start_agproxy(limited_config(fake, {"tokens_per_day": 20}))
    assert post(proxy, ALICE)[0] == 200  # 17 tokens: under 20
    status, _, body = post(proxy, ALICE, dict(ask(), stream=True))  # a streamed answer counts too: it crosses
    assert status == 200 and b"message_stop" in body
    assert post(proxy, BOB)[0] == 200
    answer = post(proxy, ALICE)
    message, retry_after = refusal(answer)
    expected = agproxy.seconds_to_utc_midnight(proxy.clock.time())
    assert abs(int(retry_after) - math.ceil(expected)) <= 1, (retry_after, expected)
    assert answer[1]["x-should-retry"] == "false"  # no retry helps for hours
    assert "client 'alice'" in message and "tokens_per_day" in message and "00:00 UTC" in message
    me = call(proxy, "/v1/agproxy/me", ALICE)[1]
    today = me["usage"]["today"]  # the ledger's count agrees
    assert me["limits_now"]["tokens_today"] == sum(today[f"{d}_tokens"] for d in ("input", "output", "cache_read",
                                                                                    "cache_write")) > 20, me
    assert upstream_messages(fake) == 3
    proxy.clock.advance(expected + 1)  # the next UTC day
    assert post(proxy, ALICE)[0] == 200


def test_budgets_and_windows_survive_a_restart(start_agproxy, fake, tmp_path):
    config = limited_config(fake, {"tokens_per_day": 20}, {"requests_per_minute": 2},
                            state_file=str(tmp_path / "state.json"))
    first = start_agproxy(config, process=True)
    assert [post(first, ALICE)[0] for _ in range(2)] == [200, 200]
    assert [post(first, BOB)[0] for _ in range(2)] == [200, 200]
    assert first.stop() == 0
    saved = json.loads((tmp_path / "state.json").read_text())
    kept = saved["client_limits"]
    assert kept["alice"]["tokens"] > 20 and sum(kept["bob"]["window"].values()) == 2, kept
    assert not any(key in json.dumps(saved) for key in KEYS)
    again = start_agproxy(config, process=True)
    assert "tokens_per_day" in refusal(post(again, ALICE))[0]
    message, retry_after = refusal(post(again, BOB))
    assert "requests_per_minute" in message and 50 <= int(retry_after) <= 61, retry_after
    assert post(again, CAROL)[0] == 200
    assert "state file" not in again.log()  # nothing in it was refused


def test_a_state_files_bad_limits_section_is_said_and_skipped(tmp_path):
    problems = agproxy.state_problems({"client_limits": {"alice": {"tokens": "many", "window": [1, 2]},
                                                         "bob": 5}})
    assert any("client_limits.alice.tokens" in p for p in problems) and any("client_limits.bob" in p for p in problems)
    assert any("client_limits.alice.window" in p for p in problems), problems
    limits = agproxy.ClientLimits([agproxy.Client("alice", "0" * 64, requests_per_minute=3)], time.time)
    limits.load_json({"alice": {"tokens": "many", "window": {"x": 1, str(int(time.time())): 10**12}},
                      "nobody": {"day": "2026-01-01", "tokens": 5}})
    assert limits.state(agproxy.Client("alice", "0" * 64)) == {"in_flight": 0, "waiting": 0, "tokens_held": 0,
                                                               "requests_last_minute": 3, "tokens_today": 0}
    assert list(limits.to_json()) == ["alice"]  # nobody's day is over: only what still counts is kept


_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
_JSON = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                         max_size=4), max_leaves=20)
#: what a saved second may be: any text, a number's digits, or digits of any script (² is a digit to str.isdigit)
_SECONDS = st.dictionaries(st.text(max_size=12) | st.integers(0, 2**40).map(str) |
                           st.text(st.characters(whitelist_categories=("Nd", "No")).filter(str.isdigit), min_size=1,
                                   max_size=14),
                           st.integers(), max_size=6)


@settings(max_examples=300, deadline=None)
@example({"alice": {"window": {"፩": 1}}})  # a digit to str.isdigit, not to int()
@example({"alice": {"window": {"99999999999": 1}}})  # a second to come, which would hold the window shut
@given(st.dictionaries(st.sampled_from(["alice", "bob", "nobody"]),
                       _JSON | st.fixed_dictionaries({}, optional={"day": st.text(max_size=10) | _LEAF,
                                                                   "tokens": st.integers() | _LEAF,
                                                                   "window": _SECONDS | _JSON})) | _JSON)
def test_whatever_a_state_file_says_of_the_limits_is_taken_or_skipped_within_bounds(section):
    clients = [agproxy.Client("alice", "0" * 64, requests_per_minute=3, tokens_per_day=10),
               agproxy.Client("bob", "1" * 64)]
    moment = [time.time()]
    limits = agproxy.ClientLimits(clients, lambda: moment[0], saved=section)
    now = limits.state(clients[0])
    assert now["requests_last_minute"] <= 3 and 0 <= now["tokens_today"] < 2**63
    json.dumps(limits.to_json())
    assert set(limits.to_json()) <= {"alice", "bob", "nobody"}  # a client removed today comes back to its counters
    moment[0] += 61
    assert limits.state(clients[0])["requests_last_minute"] == 0  # nothing a file says outlives its minute


def test_a_reload_keeps_the_counters_of_clients_that_remain_and_locks_a_removed_one_out(start_agproxy, fake):
    config = limited_config(fake, {"requests_per_minute": 2})
    proxy = start_agproxy(config)
    fake.script(Sse(text_stream(), delay_s=0.1), Sse(text_stream(), delay_s=0.1))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = [pool.submit(post, proxy, key, dict(ask(), stream=True)) for key in (ALICE, BOB)]
        wait_for(lambda: fake.in_flight == 2)
        config["clients"] = [c for c in config["clients"] if c["name"] != "bob"]
        Path(proxy.config.source).write_text(json.dumps(config))
        status, answer = call(proxy, "/v1/agproxy/reload", ADMIN, {})
        assert status == 200 and "client 'bob' removed" in answer["changes"], answer
        assert post(proxy, BOB)[0] == 401  # at once, while its request in flight goes on
        assert post(proxy, ALICE)[0] == 200  # the second in alice's window, kept through the reload
        assert "requests_per_minute" in refusal(post(proxy, ALICE))[0]
        for future in slow:
            status, _, body = future.result(30)
            assert status == 200 and b"message_stop" in body
    assert call(proxy, "/v1/agproxy/me", ALICE)[1]["limits_now"]["in_flight"] == 0


def test_a_client_removed_and_put_back_the_same_day_finds_its_budget_spent(start_agproxy, fake):
    config = limited_config(fake, {"tokens_per_day": 20, "requests_per_minute": 3})
    proxy = start_agproxy(config)
    assert [post(proxy, ALICE)[0] for _ in range(2)] == [200, 200]  # 34 tokens: the day's 20 are spent
    alice = config["clients"].pop(0)

    def reload() -> None:
        Path(proxy.config.source).write_text(json.dumps(config))
        assert call(proxy, "/v1/agproxy/reload", ADMIN, {})[0] == 200

    reload()
    assert post(proxy, ALICE)[0] == 401
    config["clients"].insert(0, dict(alice, tokens_per_day=0, name="alice"))
    reload()  # back, without a day budget: her minute window is as it was
    assert post(proxy, ALICE)[0] == 200
    assert "requests_per_minute" in refusal(post(proxy, ALICE))[0]
    config["clients"][0]["tokens_per_day"] = 20
    reload()
    assert "tokens_per_day" in refusal(post(proxy, ALICE))[0]
    assert upstream_messages(fake) == 3


def test_parallel_requests_cannot_spend_a_day_budget_many_times_over(start_agproxy, fake):
    """Each request in flight holds its body's estimate of the budget: one that would cross the
    budget with them waits for them to end, then goes or is refused on what they really spent."""
    proxy = start_agproxy(limited_config(fake, {"tokens_per_day": 20}))
    fake.script(*[Sse(text_stream(), delay_s=0.02) for _ in range(10)])
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: post(proxy, ALICE, dict(ask(), stream=True)), range(10)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200, 200] + [429] * 8, statuses  # the first, then the one that crosses
    assert upstream_messages(fake) == 2 and fake.most_in_flight == 1
    for answer in answers:
        if answer[0] == 429:
            assert "tokens_per_day" in refusal(answer)[0] and answer[1]["x-should-retry"] == "false"
    now = call(proxy, "/v1/agproxy/me", ALICE)[1]["limits_now"]
    assert now["in_flight"] == now["waiting"] == 0 and 20 < now["tokens_today"] < 40, now


def test_a_refused_request_uses_none_of_its_clients_minute_nor_asks_an_upstream(start_agproxy, fake):
    proxy = start_agproxy(limited_config(fake, {"requests_per_minute": 1, "models": ["claude-*"]}))
    assert post(proxy, ALICE, ask("gpt-5"))[0] == 403  # not its model
    assert post(proxy, ALICE, {"model": "claude-sonnet-4-5", "messages": "hi"})[0] == 400
    request = urllib.request.Request(proxy.url + "/v1/messages", data=b"{}", method="POST",
                                     headers={"Content-Type": "text/plain", "Authorization": f"Bearer {ALICE}"})
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as exc:
        assert exc.code == 415
    warmup = {"model": "claude-haiku-4-5", "max_tokens": 1, "messages": [{"role": "user", "content": "Warmup"}]}
    assert post(proxy, ALICE, warmup)[0] == 200  # answered locally: costs nothing
    assert upstream_messages(fake) == 0
    assert post(proxy, ALICE)[0] == 200  # its minute was whole
    message, _ = refusal(post(proxy, ALICE))
    assert "requests_per_minute" in message
    wait_for(lambda: any(line["status"] == 429 for line in access_lines(proxy)))
    refused = [line for line in access_lines(proxy) if line["status"] == 429]
    assert refused[-1]["model"] == "claude-sonnet-4-5" and refused[-1]["upstream"] is None


def test_one_client_cannot_hold_every_connection_waiting(start_agproxy, fake, monkeypatch):
    monkeypatch.setattr(agproxy, "MAX_WAITING_PER_CLIENT", 2)
    proxy = start_agproxy(limited_config(fake, {"max_concurrency": 1}))
    fake.script(Sse(text_stream(), delay_s=0.1))
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        held = [pool.submit(post, proxy, ALICE, dict(ask(), stream=True))]
        wait_for(lambda: fake.in_flight == 1)
        held += [pool.submit(post, proxy, ALICE) for _ in range(2)]
        wait_for(lambda: call(proxy, "/v1/agproxy/me", ALICE)[1]["limits_now"]["waiting"] == 2)
        answer = post(proxy, ALICE)  # refused at once, not after a wait
        message, retry_after = refusal(answer)
        assert "2 of its requests wait already" in message and "max_concurrency" in message
        assert int(retry_after) == agproxy.CLIENT_BUSY_RETRY_S and "x-should-retry" not in answer[1]
        assert post(proxy, BOB)[0] == 200  # everyone else is served meanwhile
        assert [future.result(30)[0] for future in held] == [200, 200, 200]


def test_max_concurrency_holds_under_50_parallel_requests_from_one_key(start_agproxy, fake):
    proxy = start_agproxy(limited_config(fake, {"max_concurrency": 4}))
    fake.script(*[Sse(text_stream(), delay_s=0.03) for _ in range(50)])
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: post(proxy, ALICE, dict(ask(), stream=True)), range(50)))
    assert [status for status, _, _ in answers] == [200] * 50
    assert all(b"message_stop" in body for _, _, body in answers)
    assert fake.most_in_flight == 4, fake.most_in_flight  # never more, and the places were used
    assert call(proxy, "/v1/agproxy/me", ALICE)[1]["limits_now"]["in_flight"] == 0


def test_a_request_that_waits_too_long_for_a_place_is_refused(start_agproxy, fake, monkeypatch):
    monkeypatch.setattr(agproxy, "MAX_SLOT_WAIT_S", 0.3)
    proxy = start_agproxy(limited_config(fake, {"max_concurrency": 1}))
    fake.script(Sse(text_stream(), delay_s=0.2))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post, proxy, ALICE, dict(ask(), stream=True))
        wait_for(lambda: fake.in_flight == 1)
        answer = post(proxy, ALICE)
        message, retry_after = refusal(answer)
        # it waited its 30 s already: a client told to retry (Claude Code) waited again, in silence, for minutes
        assert "max_concurrency" in message and retry_after == "5" and answer[1]["x-should-retry"] == "false"
        assert post(proxy, BOB)[0] == 200  # another client is not held up
        assert slow.result(30)[0] == 200
    assert upstream_messages(fake) == 2
    assert 'agproxy_client_limited_total{client="alice",limit="max_concurrency"} 1' in metrics(proxy)


def test_a_client_that_leaves_while_waiting_frees_its_place_at_once(start_agproxy, fake):
    proxy = start_agproxy(limited_config(fake, {"max_concurrency": 1}))
    fake.script(Sse(text_stream(), delay_s=0.25))
    body = json.dumps(ask()).encode()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post, proxy, ALICE, dict(ask(), stream=True))
        wait_for(lambda: fake.in_flight == 1)
        waiter = socket.create_connection((proxy.host, proxy.port), timeout=10)
        waiter.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Authorization: Bearer %b\r\nContent-Length: %d\r\n\r\n%b" % (ALICE.encode(), len(body), body))
        me = lambda: call(proxy, "/v1/agproxy/me", ALICE)[1]["limits_now"]  # noqa: E731
        wait_for(lambda: me()["waiting"] == 1)
        waiter.close()
        wait_for(lambda: me()["waiting"] == 0, timeout=2)  # long before the slow answer ends
        assert me()["in_flight"] == 1 and fake.in_flight == 1
        assert slow.result(30)[0] == 200
    assert post(proxy, ALICE)[0] == 200
    assert upstream_messages(fake) == 2  # the one that left never reached the upstream
    wait_for(lambda: any(line["status"] == 499 for line in access_lines(proxy)))


def test_no_key_in_any_debug_log_line_the_metrics_the_page_or_the_refusals(start_agproxy, fake):
    proxy = start_agproxy(limited_config(fake, {"requests_per_minute": 1, "tokens_per_day": 5},
                                         {"max_concurrency": 1}, log_level="debug"))
    answers = [post(proxy, key) for key in (ALICE, ALICE, BOB, CAROL)]
    assert [status for status, _, _ in answers] == [200, 429, 200, 200]
    texts = [proxy.log(), metrics(proxy), json.dumps(call(proxy, "/v1/agproxy/status", ADMIN)[1]),
             json.dumps(call(proxy, "/v1/agproxy/me", ALICE)[1])] + [repr(answer) for answer in answers]
    for text in texts:
        for key in KEYS:
            assert key not in text


def test_claude_code_over_its_day_budget_shows_the_message_and_does_not_retry(start_agproxy, fake, tmp_path,
                                                                            claude):  # noqa: F811
    proxy = start_agproxy(limited_config(fake, {"tokens_per_day": 10}))
    assert post(proxy, ALICE)[0] == 200  # 17 tokens: the budget is spent
    sent = upstream_messages(fake)
    started = time.monotonic()
    result = claude(proxy, "say hello", tmp_path, key=ALICE)
    took = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "tokens_per_day" in output and "alice" in output, output
    assert took < 60, took
    assert upstream_messages(fake) == sent
    refused = [line for line in access_lines(proxy) if line["status"] == 429]
    assert len(refused) == 1, refused  # its request, and no retry of it
    assert ALICE not in proxy.log()


def test_claude_code_past_its_minute_window_waits_the_retry_after_and_goes_on(start_agproxy, fake, tmp_path,
                                                                              claude):  # noqa: F811
    proxy = start_agproxy(limited_config(fake, {"requests_per_minute": 1}))
    assert post(proxy, ALICE)[0] == 200
    proxy.clock.advance(57)  # the window frees in 3 s
    started = time.monotonic()
    result = claude(proxy, "say hello", tmp_path, key=ALICE)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Hello from the fake upstream." in result.stdout
    statuses = [line["status"] for line in access_lines(proxy) if line["path"] == "/v1/messages"]
    assert statuses[:3] == [200, 429, 200], statuses
    assert took < 60, took


def test_a_message_delta_saying_zero_input_tokens_does_not_erase_message_starts_count(start_agproxy, fake):
    """Its counts are running totals: an upstream's ``input_tokens: 0`` there means none more, and
    taken as the count it would let a client's input go free of its day budget."""
    events = text_stream()
    events[-2][1]["usage"] = {"input_tokens": 0, "output_tokens": 6, "cache_read_input_tokens": 0}
    events[0][1]["message"]["usage"] = {"input_tokens": 500, "output_tokens": 1, "cache_read_input_tokens": 40}
    proxy = start_agproxy(limited_config(fake, {"tokens_per_day": 100000}))
    fake.script(Sse(events), Sse(events))
    assert post(proxy, ALICE, dict(ask(), stream=True))[0] == 200
    status, _, body = post(proxy, ALICE)  # assembled from the stream for a client that did not ask for one
    assert status == 200 and json.loads(body)["usage"]["input_tokens"] == 500
    assert call(proxy, "/v1/agproxy/me", ALICE)[1]["limits_now"]["tokens_today"] == 2 * (500 + 6 + 40)
    total = {"input_tokens": 500, "service_tier": "standard"}
    agproxy.merge_usage(total, {"input_tokens": 0, "output_tokens": 3, "service_tier": "priority"})
    assert total == {"input_tokens": 500, "output_tokens": 3, "service_tier": "priority"}


def long_answer(output_tokens: int) -> List[Tuple[str, Dict[str, Any]]]:
    """A streamed answer whose usage says ``output_tokens``."""
    events = text_stream()
    events[-2][1]["usage"] = {"output_tokens": output_tokens}
    return events


def test_a_request_in_flight_holds_its_max_tokens_of_the_day_budget(start_agproxy, fake):
    """Found by the second attack on issue 20: 30 requests at once, each allowed 32000 output
    tokens, spent 120 times a budget of 1000 when a request held only its body's estimate."""
    proxy = start_agproxy(limited_config(fake, {"tokens_per_day": 1000}))
    fake.script(*[Sse(long_answer(4000), delay_s=0.01) for _ in range(10)])
    asked = dict(ask(), stream=True, max_tokens=32000)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: post(proxy, ALICE, asked), range(10)))
    assert sorted(status for status, _, _ in answers) == [200] + [429] * 9
    assert upstream_messages(fake) == 1  # the first crosses the budget; the others waited for it, then were refused
    assert call(proxy, "/v1/agproxy/me", ALICE)[1]["limits_now"]["tokens_held"] == 0


def test_an_image_holds_what_it_costs_not_its_bytes(start_agproxy, fake):
    """A 1.3 MB screenshot is some 1,500 tokens, not 330,000: a small request beside it goes at once."""
    proxy = start_agproxy(limited_config(fake, {"tokens_per_day": 300000}))
    picture = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                           "data": "iVBORw0KGgo" + "A" * 1_300_000}}
    fake.script(Sse(text_stream(), delay_s=0.3), Sse(text_stream()))
    with_image = dict(ask(), stream=True, messages=[{"role": "user", "content": [picture, {"type": "text",
                                                                                            "text": "what is it"}]}])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post, proxy, ALICE, with_image)
        wait_for(lambda: fake.in_flight == 1, timeout=20)
        held = call(proxy, "/v1/agproxy/me", ALICE)[1]["limits_now"]["tokens_held"]
        assert 1000 < held < 5000, held
        began = time.monotonic()
        assert post(proxy, ALICE)[0] == 200
        assert time.monotonic() - began < agproxy.MAX_SLOT_WAIT_S / 3  # it did not wait for the image
        assert slow.result(30)[0] == 200


def test_an_upstream_that_tells_no_usage_still_spends_the_budget(start_agproxy, fake):
    proxy = start_agproxy(limited_config(fake, {"tokens_per_day": 100}))
    silent = message("a long answer " * 50)
    del silent["usage"]
    fake.script(*[Json(200, silent) for _ in range(5)])
    padded = dict(ask(), messages=[{"role": "user", "content": "tell me about it " * 40}])
    statuses = [post(proxy, ALICE, padded)[0] for _ in range(3)]
    assert statuses == [200, 429, 429], statuses  # its input's estimate (about 160 tokens) counted
    assert call(proxy, "/v1/agproxy/me", ALICE)[1]["limits_now"]["tokens_today"] > 100
    assert agproxy.upstream_count(5000.0) == 5000 and agproxy.upstream_count(5000.5) is None


def test_a_counts_rate_limit_answers_an_estimate_and_rests_no_account(start_agproxy, fake):
    """Found by the second attack on issue 20: a client refused for its limits could still flood
    count_tokens, and the upstream's 429 to it rested both accounts for everyone's messages."""
    proxy = start_agproxy(limited_config(fake, {"requests_per_minute": 1}))
    assert post(proxy, ALICE)[0] == 200
    limited = Json(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "counting too fast"}},
                   [("retry-after", "30")])
    fake.script(limited)  # only the count meets it: the account is asked nothing more
    status, headers, body = post(proxy, ALICE, ask(), "/v1/messages/count_tokens")
    assert status == 200 and headers["x-token-count"] == "estimate" and json.loads(body)["input_tokens"] > 0
    assert post(proxy, BOB)[0] == 200  # no account rests
    states = [line for line in metrics(proxy).splitlines() if line.startswith("agproxy_account_state")
              and line.endswith(" 1")]
    assert all('state="ready"' in line for line in states), states


def test_a_stream_the_client_cuts_counts_the_output_it_was_sent(start_agproxy, fake):
    """Found by the second attack on issue 20: a client that read 19 of 20 deltas and left was
    counted one output token (message_start's), since the usage comes in message_delta."""
    proxy = start_agproxy(limited_config(fake, {"tokens_per_day": 10**6}))
    words = " ".join(f"word{i:04d}" for i in range(400))  # 3,600 characters
    events = text_stream(words)
    events[-2][1]["usage"] = {"output_tokens": 900}
    fake.script(Sse(events[:-2], delay_s=0.001))  # no message_delta: the stream is cut before it
    status, _, body = post(proxy, ALICE, dict(ask(), stream=True))
    assert status == 200 and b"message_delta" not in body
    today = call(proxy, "/v1/agproxy/me", ALICE)[1]["limits_now"]["tokens_today"]
    assert 12 + 800 <= today <= 12 + 1200, today  # about 900 output tokens counted, not 1
