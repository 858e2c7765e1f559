"""GET /metrics: the Prometheus page, read back with prometheus_client's parser, over real sockets
through the fake upstream; the bounded label registry under hypothesis; the /proc reading."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import agproxy
from tests.conftest import fake_config
from tests.fakes.anthropic_upstream import FakeAnthropic, Json, Sse, text_stream

ALICE, BOB = "sk-upstream-alice", "sk-upstream-bob"
LIMITED = Json(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
               headers=[("retry-after", "60")])


def scrape(proxy: Any, key: Optional[str] = None) -> Tuple[str, str]:
    """The page and its Content-Type."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(proxy.url + "/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode("utf-8"), response.headers["Content-Type"]


Samples = Dict[str, List[Tuple[Dict[str, str], float]]]


def samples(page: str) -> Samples:
    """Every sample of the page by sample name, as prometheus_client's parser reads it."""
    out: Samples = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(v for got, v in found.get(name, []) if all(got.get(k) == x for k, x in labels.items()))


def post(proxy: Any, body: Dict[str, Any], headers: Optional[Dict[str, str]] = None,
         connection: Optional[http.client.HTTPConnection] = None, path: str = "/v1/messages") -> Tuple[int, bytes]:
    conn = connection or http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
    conn.request("POST", path, json.dumps(body),
                 {"content-type": "application/json", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    if connection is None:
        conn.close()
    return response.status, data


def ask(model: str = "m", stream: bool = False) -> Dict[str, Any]:
    return {"model": model, "max_tokens": 50, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


# -- end to end ------------------------------------------------------------------------------------

def test_requests_attempts_states_and_times_show_up(start_agproxy, fake):
    fake.script_for(ALICE, LIMITED)  # the first request rotates from alice to bob; alice rests
    proxy = start_agproxy(fake_config(fake))
    assert post(proxy, ask())[0] == 200
    assert post(proxy, ask(stream=True))[0] == 200
    assert post(proxy, ask(), path="/v1/messages/count_tokens")[0] == 200
    page, content_type = scrape(proxy)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    found = samples(page)
    assert value(found, "agproxy_requests_total", route="messages", status="200", upstream="fake", model="m") == 2
    assert value(found, "agproxy_upstream_attempts_total", upstream="fake", account="alice@example.com",
                 outcome="rate_limited") == 1
    assert value(found, "agproxy_upstream_attempts_total", upstream="fake", account="bob@example.com",
                 outcome="ok") == 3
    assert value(found, "agproxy_requests_total", route="count_tokens", status="200", upstream="fake") == 1
    for account, state in (("alice@example.com", "rate_limited"), ("bob@example.com", "ready")):
        states = {labels["state"]: v for labels, v in found["agproxy_account_state"] if labels["account"] == account}
        assert states == {s: (1 if s == state else 0) for s in ("ready", "rate_limited", "rejected_key", "busy")}
    rests = {labels["account"]: v for labels, v in found["agproxy_account_rest_until_seconds"]}
    assert rests["bob@example.com"] == 0 and 50 < rests["alice@example.com"] - proxy.clock.time() <= 61
    assert value(found, "agproxy_request_duration_seconds_count", route="messages") == 2
    assert value(found, "agproxy_request_duration_seconds_bucket", route="messages", le="+Inf") == 2
    assert value(found, "agproxy_time_to_first_token_seconds_count", upstream="fake", model="m") == 1  # the stream
    assert value(found, "agproxy_build_info", version=agproxy.__version__) == 1
    assert found["agproxy_streams_active"][0][1] == 0
    assert found["agproxy_connections_active"][0][1] >= 1  # the scrape's own
    assert found["process_resident_memory_bytes"][0][1] > 1_000_000
    assert found["process_open_fds"][0][1] > 0 and found["process_max_fds"][0][1] > 0
    assert abs(found["process_start_time_seconds"][0][1] - time.time()) < 3600
    assert "# HELP agproxy_tokens_total " in page and "# TYPE agproxy_lessons_total counter" in page


def test_a_scrape_counts_itself_and_404s_count_without_a_route(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(proxy.url + "/nowhere", timeout=5)
    assert caught.value.code == 404
    scrape(proxy)
    found = samples(scrape(proxy)[0])
    assert value(found, "agproxy_requests_total", route="metrics", status="200") == 1
    assert value(found, "agproxy_requests_total", route="", status="404") == 1


def test_tokens_per_direction(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    post(proxy, ask())  # asked as JSON, streamed upstream (force_stream_internally): 12 in, 5 out (a word a token)
    fake.script(Sse(text_stream("one two three")))  # 12 in, then 3 out in message_delta
    post(proxy, ask(stream=True))
    found = samples(scrape(proxy)[0])
    assert value(found, "agproxy_tokens_total", upstream="fake", model="m", client="", direction="input") == 24
    assert value(found, "agproxy_tokens_total", upstream="fake", model="m", direction="output") == 8


def test_a_slow_stream_is_active_while_it_runs(start_agproxy, fake):
    fake.script(Sse(text_stream("a b c d e f"), delay_s=0.2))
    proxy = start_agproxy(fake_config(fake))
    done = threading.Event()
    threading.Thread(target=lambda: (post(proxy, ask(stream=True)), done.set()), daemon=True).start()
    deadline = time.monotonic() + 5
    active = 0.0
    while active == 0 and time.monotonic() < deadline and not done.is_set():
        active = samples(scrape(proxy)[0])["agproxy_streams_active"][0][1]
    assert active == 1
    assert done.wait(10)
    assert samples(scrape(proxy)[0])["agproxy_streams_active"][0][1] == 0


def test_a_401_to_agproxy_and_the_key_on_the_scrape(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, auth_mode="strict", api_key="sk-local-metrics"))
    assert post(proxy, ask())[0] == 401  # no key
    assert post(proxy, ask(), {"x-api-key": "wrong-key-1234"})[0] == 401
    with pytest.raises(urllib.error.HTTPError) as caught:
        scrape(proxy)
    assert caught.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as caught:
        scrape(proxy, "not-the-key")
    assert caught.value.code == 401
    page, _ = scrape(proxy, "sk-local-metrics")
    found = samples(page)
    assert value(found, "agproxy_requests_total", status="401") == 4  # two asks, two scrapes
    assert value(found, "agproxy_upstream_attempts_total") == 0
    assert "sk-local-metrics" not in page


def test_150_models_make_at_most_101_series(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
    for n in range(150):
        assert post(proxy, ask(f"model-{n}", stream=True), connection=conn)[0] == 200
    conn.close()
    found = samples(scrape(proxy)[0])
    for name in ("agproxy_requests_total", "agproxy_time_to_first_token_seconds_count"):
        models = [labels["model"] for labels, _ in found[name] if labels.get("upstream") == "fake"]
        assert len(models) == 101 and len(set(models)) == 101
        assert models[:100] == [f"model-{n}" for n in range(100)]  # the first 100 seen, then one "other"
        assert value(found, name, model="other") == 50
        assert value(found, name, upstream="fake") == 150


def test_no_key_in_the_page_even_as_a_model_name(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    for model in (ALICE, f"x-{BOB}-y", "claude\"\n\\" + ALICE):
        assert post(proxy, ask(model))[0] == 200
    page, _ = scrape(proxy)
    assert "sk-upstream" not in page and "alice\"" not in page
    models = {labels["model"] for labels, _ in samples(page)["agproxy_requests_total"]}
    assert "[redacted]" in models and "x-[redacted]-y" in models and 'claude"\n\\[redacted]' in models


def test_lessons_and_sanitizer_changes(start_agproxy):
    with FakeAnthropic(reject_fields=["context_management"]) as fake:
        proxy = start_agproxy(fake_config(fake))
        body = dict(ask(), context_management={"edits": []},
                    system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}])
        assert post(proxy, body)[0] == 200  # a 400 names the field; the request healed without it
        page, _ = scrape(proxy)
    found = samples(page)
    assert value(found, "agproxy_lessons_total", upstream="fake", kind="field") == 1
    with urllib.request.urlopen(proxy.url + "/v1/agproxy/stats", timeout=5) as response:
        counters = json.load(response)["counters"]
    changes = {labels["change"]: v for labels, v in found["agproxy_sanitizer_changes_total"]}
    assert changes == {name: n for name, n in counters.items() if ":" in name} and changes


# -- pure: the registry, the states, /proc ----------------------------------------------------------

LABEL_TEXT = st.text(max_size=30)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(LABEL_TEXT, LABEL_TEXT), min_size=1, max_size=130))
def test_any_label_value_reads_back_exactly_or_as_other(pairs):
    counter = agproxy.CounterFamily("t_total", "help", ("a", "b"))
    for pair in pairs:
        counter.inc(pair)
    out: List[str] = []
    counter.render(out)
    read = [(labels, v) for labels, v in samples("".join(out))["t_total"]]
    firsts = [list(dict.fromkeys(p[i] for p in pairs))[:agproxy.MAX_LABEL_VALUES] for i in range(2)]
    expected: Dict[Tuple[str, str], int] = {}
    for a, b in pairs:
        key = (a if a in firsts[0] else "other", b if b in firsts[1] else "other")
        expected[key] = expected.get(key, 0) + 1
    assert {(labels["a"], labels["b"]): v for labels, v in read} == expected
    assert len(read) == len(expected)


def test_label_values_are_made_safe_once_and_bounded():
    shown: List[str] = []
    bound = agproxy.LabelValues(lambda text: shown.append(text) or text.upper())
    assert bound("a\ud800b") == "A?B" and bound("a\ud800b") == "A?B" and shown == ["a?b"]
    for n in range(200):
        bound(str(n))
    assert bound("new") == "other" and len(shown) == agproxy.MAX_LABEL_VALUES


def test_histogram_buckets_are_cumulative():
    histogram = agproxy.HistogramFamily("h_seconds", "help", (0.1, 1.0), ("r",))
    for seconds in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(("x",), seconds)
    out: List[str] = []
    histogram.render(out)
    found = samples("".join(out))
    assert [(labels["le"], v) for labels, v in found["h_seconds_bucket"]] == [("0.1", 2), ("1", 3), ("+Inf", 4)]
    assert found["h_seconds_count"][0][1] == 4 and found["h_seconds_sum"][0][1] == pytest.approx(3.65)


def test_account_gauge_states():
    account = agproxy.Account("a", "k", max_concurrency=1)
    state = agproxy.AccountState()
    assert agproxy.account_gauge_state(state, account, 1000.0) == "ready"
    state.in_flight = 1
    assert agproxy.account_gauge_state(state, account, 1000.0) == "busy"
    state.rest("some-model", 1100.0, 1000.0)  # resting for one model is rate_limited
    assert agproxy.account_gauge_state(state, account, 1000.0) == "rate_limited"
    state.rest("", 1100.0, 1000.0)
    state.rejected_key = True
    assert agproxy.account_gauge_state(state, account, 1000.0) == "rejected_key"
    assert agproxy.account_gauge_state(state, account, 1200.0) == "busy"  # the rests are over


def test_process_metrics_from_proc_text():
    stat = "42 (a (b) c) S " + " ".join(str(n) for n in range(4, 53))
    got = {name: value for name, _, _, value in agproxy.process_metrics(
        stat, "cpu 1 2\nbtime 1700000000\n", "Max open files            1024                 4096      files\n",
        7, 4096, 100)}
    # fields 14 and 15 (utime, stime) are 14 and 15 ticks; 22 (start) 22 ticks; 23 vsize; 24 rss pages
    assert got == {"process_cpu_seconds_total": 0.29, "process_virtual_memory_bytes": 23,
                   "process_resident_memory_bytes": 24 * 4096, "process_start_time_seconds": 1700000000.22,
                   "process_open_fds": 7, "process_max_fds": 1024}
    assert {name for name, *_ in agproxy.process_metrics("", "", "", 3, 4096, 100)} == {"process_open_fds"}
