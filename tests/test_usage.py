"""The usage ledger and GET /v1/agproxy/usage: what is counted, grouped, bounded and kept, over real sockets."""

from __future__ import annotations

import csv
import http.client
import io
import json
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agproxy
from tests.conftest import fake_config
from tests.fakes.anthropic_upstream import Json, Sse, text_stream
from tests.fakes.anthropic_upstream import message as answer

KEY = "sk-local-usage-test-key-0123456789"
AUTH = {"x-api-key": KEY}
ALICE = "alice@example.com"
DAY_S = 86400.0


def one_account(fake: Any, **top: Any) -> Dict[str, Any]:
    """The fake upstream with Alice's account alone (two would take turns)."""
    config = fake_config(fake, **top)
    del config["upstreams"][0]["accounts"][1:]
    return config


def call(proxy: Any, path: str, body: Optional[Dict[str, Any]] = None, headers: Optional[Dict[str, str]] = None,
         ) -> Tuple[int, Any, bytes]:
    """(status, headers, body) of one request (a POST when there is a body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(proxy.url + path, data=data, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def message(model: str = "claude-test", text: str = "hello", stream: bool = False) -> Dict[str, Any]:
    return {"model": model, "max_tokens": 16, "stream": stream, "messages": [{"role": "user", "content": text}]}


def usage(proxy: Any, query: str = "", headers: Optional[Dict[str, str]] = None, requests: Optional[int] = None,
          ) -> Dict[str, Any]:
    """The ledger's JSON answer; with ``requests``, once it counts that many (a request is counted
    just after its answer is written, so the next request may come first)."""
    deadline = time.monotonic() + 5
    while True:
        status, _, raw = call(proxy, "/v1/agproxy/usage" + (f"?{query}" if query else ""), headers=headers)
        assert status == 200, raw
        answer = json.loads(raw)
        if requests is None or sum(row["requests"] for row in answer["rows"]) >= requests \
                or time.monotonic() > deadline:
            return answer
        time.sleep(0.02)


def by_key(rows: List[Dict[str, Any]], *keys: str) -> Dict[Tuple[str, ...], Dict[str, Any]]:
    return {tuple(row[k] for k in keys): row for row in rows}


def counts(row: Dict[str, Any]) -> Tuple[int, int]:
    return row["requests"], row["errors"]


def today(proxy: Any) -> str:
    return agproxy.utc_day(proxy.clock.time())


def test_every_request_that_generates_is_counted_refused_failed_and_local_ones_too(start_agproxy, fake):
    """Answered, streamed, failed upstream, unroutable, refused before any routing (401: no upstream,
    account or model), and a warmup answered here (no upstream, no account: nothing was spent there);
    count_tokens, model lists and agproxy's own routes are not generating requests."""
    proxy = start_agproxy(one_account(fake, auth_mode="strict", api_key=KEY, state_file="",
                                      model_map=[{"match": "claude-*", "upstream": "fake"}]))
    assert call(proxy, "/v1/messages?beta=true", message(), AUTH)[0] == 200
    fake.script(Sse(text_stream("one two three")))
    assert call(proxy, "/v1/messages", message(stream=True), AUTH)[0] == 200
    fake.script(Json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}))
    assert call(proxy, "/v1/messages", message(), AUTH)[0] == 400
    assert call(proxy, "/v1/messages", message("gpt-unrouted"), AUTH)[0] == 404
    assert call(proxy, "/v1/messages", message(), {"x-api-key": "wrong"})[0] == 401
    assert call(proxy, "/v1/messages", message(text="Warmup"), AUTH)[0] == 200
    assert call(proxy, "/v1/messages/count_tokens", {"model": "claude-test", "messages": message()["messages"]},
                AUTH)[0] == 200
    assert call(proxy, "/v1/models", headers=AUTH)[0] == 200
    answer = usage(proxy, headers=AUTH, requests=6)
    day = today(proxy)
    assert answer["from"] == answer["to"] == day and answer["group_by"] == ["day", "upstream", "account", "model"]
    rows = by_key(answer["rows"], "day", "upstream", "account", "model")
    assert {key: counts(row) for key, row in rows.items()} == {
        (day, "fake", ALICE, "claude-test"): (3, 1),  # the answer, the stream, the upstream's 400
        (day, "", "", "gpt-unrouted"): (1, 1),  # no rule routes it: 404 before any upstream
        (day, "", "", ""): (1, 1),  # refused at the door: nothing is known of it
        (day, "", "", "claude-test"): (1, 0),  # the warmup
    }
    assert all(set(row) == {"day", "upstream", "account", "model", "requests", "errors", "input_tokens",
                            "output_tokens", "cache_read_tokens", "cache_write_tokens"} for row in answer["rows"])
    assert call(proxy, "/v1/agproxy/usage")[0] == 401  # behind the same auth as every route


def test_tokens_are_counted_from_answers_json_and_streamed(start_agproxy, fake):
    proxy = start_agproxy(one_account(fake, state_file=""))
    fake.script(Json(200, answer(usage={"input_tokens": 12, "output_tokens": 7, "cache_read_input_tokens": 100,
                                        "cache_creation_input_tokens": 30})))
    assert call(proxy, "/v1/messages", message())[0] == 200
    fake.script(Sse(text_stream("one two three")))  # 12 in (message_start), then 3 out (message_delta's total)
    assert call(proxy, "/v1/messages", message(stream=True))[0] == 200
    row, = usage(proxy, "group_by=account", requests=2)["rows"]
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (
        24, 10, 100, 30)


def test_a_stream_cut_after_its_first_events_is_an_error(start_agproxy, fake):
    """Its status was 200 (sent with the first events), but the answer failed: an event: error ended it."""
    proxy = start_agproxy(one_account(fake, state_file=""))
    fake.script(Sse(text_stream("one two three four"), drop_after=4))
    status, _, raw = call(proxy, "/v1/messages", message(stream=True))
    assert status == 200 and b"event: error" in raw
    row, = usage(proxy, "group_by=model", requests=1)["rows"]
    assert counts(row) == (1, 1)


def test_group_by_and_days(start_agproxy, fake):
    proxy = start_agproxy(one_account(fake, state_file="", model_map=[{"match": "*", "upstream": "fake"}]))
    first = today(proxy)
    for model in ("claude-a", "claude-a", "claude-b"):
        assert call(proxy, "/v1/messages", message(model))[0] == 200
    usage(proxy, requests=3)
    proxy.clock.advance(DAY_S)
    second = today(proxy)
    assert call(proxy, "/v1/messages", message("claude-b"))[0] == 200
    answer = usage(proxy, requests=4)
    assert answer["from"] == first and answer["to"] == second  # from the first day kept to today
    assert {(r["day"], r["model"]): r["requests"] for r in answer["rows"]} == {
        (first, "claude-a"): 2, (first, "claude-b"): 1, (second, "claude-b"): 1}
    assert [(r["model"], r["requests"]) for r in usage(proxy, "group_by=model")["rows"]] == [
        ("claude-a", 2), ("claude-b", 2)]
    total, = usage(proxy, "group_by=")["rows"]  # no key: one row of totals
    assert set(total) == set(agproxy.USAGE_COUNTS) and counts(total) == (4, 0)
    only_second = usage(proxy, f"from={second}&group_by=model,day")
    assert only_second["group_by"] == ["model", "day"]
    assert [(r["model"], r["day"], r["requests"]) for r in only_second["rows"]] == [("claude-b", second, 1)]
    assert [r["requests"] for r in usage(proxy, f"from={first}&to={first}&group_by=upstream")["rows"]] == [3]
    assert usage(proxy, "from=2000-01-01&to=2000-01-31")["rows"] == []


def test_csv_parses_and_is_safe_in_a_spreadsheet(start_agproxy, fake):
    proxy = start_agproxy(one_account(fake, state_file=""))
    for model in ("claude-a", "=HYPERLINK(\"http://x\")", "-2+3", "@SUM(A1)", "with,comma \"quoted\""):
        assert call(proxy, "/v1/messages", message(model))[0] == 200
    usage(proxy, requests=5)
    status, headers, raw = call(proxy, "/v1/agproxy/usage?format=csv&group_by=model,account")
    assert status == 200 and headers["Content-Type"] == "text/csv; charset=utf-8"
    table = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
    assert table[0] == ["model", "account", "requests", "errors", "input_tokens", "output_tokens",
                        "cache_read_tokens", "cache_write_tokens"]
    assert sorted(row[0] for row in table[1:]) == sorted(
        ["claude-a", "'=HYPERLINK(\"http://x\")", "'-2+3", "'@SUM(A1)", "with,comma \"quoted\""])
    assert all(row[1:3] == [ALICE, "1"] for row in table[1:])
    assert raw.endswith(b"\r\n")


@pytest.mark.parametrize("query, parameter", [
    ("from=2026-13-01", "'from'"), ("to=yesterday", "'to'"), ("from=2026-02-30", "'from'"),
    ("from=2026-03-02&to=2026-03-01", "'from'"), ("group_by=day,region", "'group_by'"),
    ("group_by=day,day", "'group_by'"), ("format=xml", "'format'"), ("form=csv", '"form"'),
    ("format=csv&format=json", '"format"'), ("from=%EF%BC%92026-01-01", "'from'"),
])
def test_bad_parameters_are_refused_naming_them(start_agproxy, fake, query, parameter):
    proxy = start_agproxy(one_account(fake, state_file=""))
    status, headers, raw = call(proxy, "/v1/agproxy/usage?" + query)
    error = json.loads(raw)["error"]
    assert status == 400 and error["type"] == "invalid_request_error" and f"parameter {parameter}" in error["message"]
    assert call(proxy, "/healthz")[0] == 200  # and it keeps serving


def test_the_ledger_survives_a_restart_and_the_last_seconds_are_saved_at_sigterm(start_agproxy, fake, tmp_path):
    """Counts are saved at most every LEDGER_SAVE_INTERVAL_S, not at every request; what came since
    the last save is saved when SIGTERM stops agproxy."""
    state = tmp_path / "state.json"
    config = one_account(fake, state_file=str(state))
    proxy = start_agproxy(config, process=True)
    for model in ("claude-a", "claude-a", "claude-b"):
        assert call(proxy, "/v1/messages", message(model))[0] == 200
    before = usage(proxy, requests=3)
    assert not state.exists() or "usage" not in json.loads(state.read_text())  # not one save per request
    assert proxy.stop() == 0
    assert [row[:5] + row[5:7] for row in json.loads(state.read_text())["usage"]["rows"]] == [
        [before["to"], "fake", ALICE, "claude-a", "", 2, 0], [before["to"], "fake", ALICE, "claude-b", "", 1, 0]]
    again = start_agproxy(config, process=True)
    assert usage(again) == before
    assert call(again, "/v1/messages", message("claude-b"))[0] == 200
    assert [r["requests"] for r in usage(again, "group_by=model", requests=4)["rows"]] == [2, 2]


def test_new_counts_are_saved_once_the_interval_has_passed(start_agproxy, fake, tmp_path, monkeypatch):
    monkeypatch.setattr(agproxy, "LEDGER_SAVE_INTERVAL_S", 0.2)
    state = tmp_path / "state.json"
    proxy = start_agproxy(one_account(fake, state_file=str(state)))
    for _ in range(3):
        assert call(proxy, "/v1/messages", message())[0] == 200
    deadline, rows = time.monotonic() + 5, []
    while time.monotonic() < deadline and [row[5] for row in rows] != [3]:  # a slow machine may save twice
        time.sleep(0.05)
        rows = json.loads(state.read_text())["usage"]["rows"] if state.exists() else []
    assert [row[3:6] for row in rows] == [["claude-test", "", 3]]  # running, not stopped


def test_in_memory_only_with_an_empty_state_file(start_agproxy, fake, tmp_path):
    proxy = start_agproxy(one_account(fake, state_file=""))
    assert call(proxy, "/v1/messages", message())[0] == 200
    assert usage(proxy, requests=1)["rows"][0]["requests"] == 1
    proxy.stop()
    assert list(tmp_path.glob("**/*state*")) == []


def test_bad_rows_of_a_hand_edited_state_file_are_skipped_and_said(start_agproxy, fake, tmp_path):
    state = tmp_path / "state.json"
    good = ["2026-11-30", "fake", ALICE, "claude-a", "", 3, 1, 10, 20, 0, 0]
    state.write_text(json.dumps({"format": 1, "usage": {"rows": [
        good, ["2026-11-31", "fake", ALICE, "m", "", 1, 0, 0, 0, 0, 0], ["2026-11-30", "fake", ALICE, "m", "", -1, 0, 0,
                                                                         0, 0, 0], "junk", good[:5]]}}))
    proxy = start_agproxy(one_account(fake, state_file=str(state)))
    assert proxy.log().count("state file") >= 4 and "usage.rows[1]: must be [day, upstream" in proxy.log()
    assert "usage.rows[0]" not in proxy.log()
    answer = usage(proxy, "from=2026-11-01&to=2026-11-30")
    assert [counts(row) for row in answer["rows"]] == [(3, 1)] and answer["rows"][0]["model"] == "claude-a"
    assert call(proxy, "/v1/messages", message())[0] == 200  # it serves


def test_a_whole_section_of_the_wrong_type_is_said_and_start_up_goes_on(start_agproxy, fake, tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"format": 1, "usage": ["not", "an", "object"]}))
    proxy = start_agproxy(one_account(fake, state_file=str(state)))
    assert 'usage: must be an object with a list "rows"' in proxy.log()
    assert usage(proxy)["rows"] == []


def test_ten_thousand_invented_model_names_stay_within_the_cap(start_agproxy, fake, tmp_path, monkeypatch):
    """A client inventing a model name per request (here unroutable: 404s, each still counted) grows
    neither memory nor the state file past the cap; the smallest rows of the oldest day are folded
    into (other) rows and no request is lost from the totals."""
    monkeypatch.setattr(agproxy, "MAX_LEDGER_ROWS", 500)
    state = tmp_path / "state.json"
    proxy = start_agproxy(one_account(fake, state_file=str(state), model_map=[{"match": "claude-*",
                                                                              "upstream": "fake"}]))
    for _ in range(5):
        assert call(proxy, "/v1/messages", message("claude-real"))[0] == 200
    connection = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
    for number in range(10000):
        body = json.dumps(message(f"invented-{number}-" + "x" * 150)).encode()
        connection.request("POST", "/v1/messages", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 404
        response.read()
    connection.close()
    answer = usage(proxy, "group_by=model", requests=10005)
    assert len(proxy.server.usage) <= 500
    assert sum(r["requests"] for r in answer["rows"]) == sum(r["errors"] for r in answer["rows"]) + 5 == 10005
    rows = by_key(answer["rows"], "model")
    assert rows[("claude-real",)]["requests"] == 5 and rows[(agproxy.LEDGER_OTHER,)]["requests"] > 9000
    assert all(len(model) <= agproxy.MAX_LEDGER_NAME_CHARS for model, in rows)
    proxy.stop()
    saved = json.loads(state.read_text())["usage"]["rows"]
    assert len(saved) <= 500 and state.stat().st_size < 500 * 700


def record(model: str, status: int = 200, path: str = "/v1/messages", **facts: Any) -> agproxy.RequestRecord:
    entry = agproxy.RequestRecord("req_1", "127.0.0.1", "POST", path)
    entry.upstream, entry.account, entry.model, entry.status = "up", "acct", model, status
    for name, value in facts.items():
        setattr(entry, name, value)
    return entry


def test_at_the_real_cap_rows_fold_and_totals_hold():
    ledger = agproxy.UsageLedger()
    now = time.time()
    for _ in range(3):
        ledger.add(record("claude-real", input_tokens=100), now)
    for number in range(agproxy.MAX_LEDGER_ROWS + 100):
        ledger.add(record(f"invented-{number}"), now)
    assert len(ledger) <= agproxy.MAX_LEDGER_ROWS
    rows = by_key(ledger.rows("0000-01-01", "9999-12-31", ["model"]), "model")
    assert rows[("claude-real",)]["requests"] == 3  # the biggest rows stay
    assert sum(row["requests"] for row in rows.values()) == agproxy.MAX_LEDGER_ROWS + 103


def test_the_oldest_day_is_folded_first_then_its_accounts():
    ledger = agproxy.UsageLedger()
    old, new = time.time() - 5 * DAY_S, time.time()
    cap = agproxy.MAX_LEDGER_ROWS
    for number in range(cap // 2):
        ledger.add(record(f"old-{number}", account=f"acct-{number % 3}"), old)
    for number in range(cap // 2):
        ledger.add(record(f"new-{number}"), new)
    ledger.add(record("one-more"), new)
    assert len(ledger) <= cap * 0.9
    old_rows = ledger.rows(agproxy.utc_day(old), agproxy.utc_day(old), ["account", "model"])
    new_rows = ledger.rows(agproxy.utc_day(new), agproxy.utc_day(new), ["model"])
    assert len(new_rows) == cap // 2 + 1  # today's rows are untouched
    assert {(r["account"], r["model"]) for r in old_rows} <= {(f"acct-{n}", agproxy.LEDGER_OTHER) for n in range(3)} | {
        (f"acct-{n % 3}", f"old-{n}") for n in range(cap // 2)}
    assert sum(r["requests"] for r in old_rows) == cap // 2


def test_days_older_than_the_kept_ones_roll_up_into_months():
    ledger = agproxy.UsageLedger()
    start = 1767225600.0  # 2026-01-01T00:00:00Z
    for day in range(3):
        ledger.add(record("m", status=500 if day == 2 else 200), start + day * DAY_S)
    later = start + (agproxy.LEDGER_DAYS_KEPT + 1) * DAY_S  # 2026-01-01 and 01-02 are past the kept days
    ledger.add(record("m"), later)
    rows = ledger.rows("2026-01-01", agproxy.utc_day(later), ["day"])
    assert [(r["day"], r["requests"], r["errors"]) for r in rows] == [
        ("2026-01", 2, 0), ("2026-01-03", 1, 1), (agproxy.utc_day(later), 1, 0)]
    assert ledger.first_day() == "2026-01-01"
    assert [r["day"] for r in ledger.rows("2026-01-02", "2026-12-31", ["day"])][0] == "2026-01-03"  # a month
    # counts in a range that holds its first day: its merged days are its first ones


def test_a_key_sent_as_a_model_name_never_appears(start_agproxy, fake, tmp_path):
    state = tmp_path / "state.json"
    proxy = start_agproxy(one_account(fake, auth_mode="strict", api_key=KEY, state_file=str(state)))
    for model in (KEY, "sk-upstream-alice", f"prefix {KEY} suffix"):
        call(proxy, "/v1/messages", message(model), AUTH)
    answer = usage(proxy, "group_by=model", headers=AUTH, requests=3)
    csv_answer = call(proxy, "/v1/agproxy/usage?format=csv&group_by=model", headers=AUTH)[2].decode()
    proxy.stop()
    for text in (json.dumps(answer), csv_answer, state.read_text()):
        assert KEY not in text and "sk-upstream-alice" not in text and agproxy.REDACTED in text


def test_records_of_other_routes_are_not_counted():
    ledger = agproxy.UsageLedger()
    assert not ledger.add(record("m", path="/v1/messages/count_tokens"), time.time())
    get = record("m")
    get.method = "GET"
    assert not ledger.add(get, time.time()) and len(ledger) == 0
    assert ledger.add(record("m"), time.time()) and len(ledger) == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "=c"]), st.sampled_from(["u", "v"]), st.integers(0, 200),
                          st.sampled_from([200, 400, 529]), st.integers(0, 10**6)), max_size=40),
       st.lists(st.sampled_from(agproxy.USAGE_KEYS), unique=True))
def test_every_grouping_sums_to_the_same_totals(requests, keys):
    ledger = agproxy.UsageLedger()
    start = 1767225600.0
    for model, upstream, day, status, tokens in requests:
        ledger.add(record(model, status, upstream=upstream, input_tokens=tokens), start + day * DAY_S)
    rows = ledger.rows("0000-01-01", "9999-12-31", keys)
    assert sum(row["requests"] for row in rows) == len(requests)
    assert sum(row["errors"] for row in rows) == sum(status >= 400 for _, _, _, status, _ in requests)
    assert sum(row["input_tokens"] for row in rows) == sum(tokens for *_, tokens in requests)
    assert len({tuple(row[k] for k in keys) for row in rows}) == len(rows)  # one row per group
    assert all(list(row)[:len(keys)] == keys for row in rows)


# -- the query parameter parser ------------------------------------------------------------------------

DAYS = st.dates().map(lambda day: day.isoformat()).filter(lambda day: len(day) == 10)
PARAMETER_NAMES = st.sampled_from(["from", "to", "group_by", "format", "form", "", "from[]", "grouP_by"])
VALUES = st.one_of(DAYS, st.text(max_size=20), st.sampled_from(["json", "csv", "day,model", "", "day,,model"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(PARAMETER_NAMES, VALUES), max_size=5), DAYS, st.one_of(st.none(), DAYS))
def test_any_query_string_is_parsed_or_refused_naming_a_parameter(pairs, today, first):
    query = "&".join(f"{urllib.parse.quote(n)}={urllib.parse.quote(v)}" for n, v in pairs)
    try:
        asked = agproxy.parse_usage_query(query, today, first)
    except agproxy.InvalidRequest as exc:
        assert exc.status == 400 and "parameter" in exc.message
        return
    given_names = [n for n, _ in pairs]
    assert len(set(given_names)) == len(given_names) and set(given_names) <= {"from", "to", "group_by", "format"}
    assert asked.from_day <= asked.to_day and asked.format in ("json", "csv")
    assert set(asked.group_by) <= set(agproxy.USAGE_KEYS) and len(set(asked.group_by)) == len(asked.group_by)
    values = dict(pairs)
    assert asked.to_day == values.get("to", today)
    assert asked.from_day == values.get("from", first or today)


@settings(max_examples=200, deadline=None)
@given(DAYS, DAYS, st.lists(st.sampled_from(agproxy.USAGE_KEYS), unique=True), st.sampled_from(["json", "csv"]))
def test_valid_parameters_are_taken_as_given(one, other, keys, output):
    start, end = sorted((one, other))
    query = urllib.parse.urlencode({"from": start, "to": end, "group_by": ",".join(keys), "format": output})
    assert agproxy.parse_usage_query(query, "2030-01-01", None) == agproxy.UsageQuery(start, end, tuple(keys), output)


def test_defaults_are_the_first_kept_day_to_today():
    asked = agproxy.parse_usage_query("", "2026-12-04", "2026-09-10")
    assert asked == agproxy.UsageQuery("2026-09-10", "2026-12-04", ("day", "upstream", "account", "model"), "json")
    assert agproxy.parse_usage_query("", "2026-12-04", None).from_day == "2026-12-04"


def test_a_full_ledger_of_the_costliest_names_still_fits_the_state_file(tmp_path):
    """Model names of 100 emoji (each escaped as twelve characters in JSON) and counts of 19 digits
    in every row, at the row cap: the state file stays under MAX_STATE_BYTES and reads back, so a
    client inventing such names cannot make agproxy refuse its own state file."""
    ledger = agproxy.UsageLedger()
    now = time.time()
    huge = 10**18
    for n in range(agproxy.MAX_LEDGER_ROWS + 50):
        ledger.add(record(f"{n:06d}" + "\U0001F600" * 94, input_tokens=huge, output_tokens=huge,
                          cache_read_tokens=huge, cache_write_tokens=huge), now)
    assert agproxy.MAX_LEDGER_ROWS * 0.8 <= len(ledger) <= agproxy.MAX_LEDGER_ROWS
    store = agproxy.StateFile(str(tmp_path / "state.json"))
    store.save({"usage": ledger.to_json()})
    size = (tmp_path / "state.json").stat().st_size
    assert size < agproxy.MAX_STATE_BYTES, size
    again = agproxy.UsageLedger()
    assert again.load_json(store.load()["usage"], now) == len(ledger)
