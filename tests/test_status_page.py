"""The status page (GET /agproxy) and its data (GET /v1/agproxy/status): over real sockets, and in a
real headless Chromium driven by tests/browser.py."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest

import agproxy
from tests.browser import Browser, find_chromium
from tests.conftest import fake_config
from tests.fakes.anthropic_upstream import Json, Sse, message, text_stream

KEY = "sk-local-page-test-key-1234"
DEMO = {"name": "demo", "kind": "demo"}
ASKED = {"model": "claude-page-test", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}


def call(proxy: Any, path: str, method: str = "GET", body: Optional[Dict[str, Any]] = None,
         headers: Optional[Dict[str, str]] = None) -> Tuple[int, Any, Any]:
    """(status, headers, parsed JSON or raw bytes) of one request."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(proxy.url + path, data=data, method=method, headers=headers or {})
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            status, hdrs, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, hdrs, raw = error.code, error.headers, error.read()
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw


def status_of(proxy: Any, key: str = "") -> Dict[str, Any]:
    status, _, data = call(proxy, "/v1/agproxy/status", headers={"Authorization": f"Bearer {key}"} if key else {})
    assert status == 200, data
    return data


# -- the page's HTML and who may load it ----------------------------------------------------------

@pytest.mark.parametrize("auth", [{}, {"auth_mode": "strict"}, {"auth_mode": "all_except_health"}])
def test_the_page_loads_without_a_key_in_every_auth_mode_and_its_data_needs_it(start_agproxy, auth):
    proxy = start_agproxy({"upstreams": [DEMO], "api_key": KEY, **auth})
    status, headers, page = call(proxy, "/agproxy")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.startswith(b"<!doctype html>") and b"<script>" in page and b"<style>" in page
    # self-contained: no asset from anywhere, and the browser is told to load none
    assert not re.search(rb"""(src|href)\s*=\s*(?!["']?data:)""", page), "the page names an asset"
    assert not re.findall(rb"https?://", page.replace(b"http://www.w3.org/2000/svg", b""))  # but the SVG namespace
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert call(proxy, "/agproxy", "HEAD")[0] == 200
    data_status, _, error = call(proxy, "/v1/agproxy/status")
    if auth:
        assert data_status == 401 and error["error"]["type"] == "authentication_error"
        assert call(proxy, "/v1/agproxy/status", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert status_of(proxy, KEY)["version"] == agproxy.__version__
        assert call(proxy, "/v1/agproxy/accounts")[0] == 401  # only the page's HTML got through
    else:
        assert data_status == 200


def test_root_serves_the_page_to_a_browser_and_json_to_claude_codes_probes(start_agproxy):
    proxy = start_agproxy({"upstreams": [DEMO], "auth_mode": "strict", "api_key": KEY})
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    status, headers, page = call(proxy, "/", headers={"Accept": browser})
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"<title>agproxy</title>" in page
    for method, path, accept in (("HEAD", "/", "*/*"), ("GET", "/", "application/json, text/plain, */*"),
                                 ("GET", "/", ""), ("HEAD", "/", browser), ("HEAD", "/api/hello", browser),
                                 ("GET", "/api/hello", browser)):
        headers_sent = {"x-api-key": KEY, **({"Accept": accept} if accept else {})}
        status, headers, body = call(proxy, path, method, headers=headers_sent)
        assert status == 200 and headers["Content-Type"] == "application/json", (method, path, accept)
        assert method == "HEAD" or body["name"] == "agproxy"
    # a probe of / without the key still needs it (only the browser's HTML is let through)
    assert call(proxy, "/", headers={"Accept": "application/json"})[0] == 401


# -- the origin guard and the page's own requests --------------------------------------------------

def test_the_pages_own_origin_gets_in_and_a_rebinding_page_does_not(start_agproxy):
    proxy = start_agproxy({"upstreams": [DEMO]})  # loopback: auth off, the Host guard on duty
    here = f"127.0.0.1:{proxy.port}"
    same = {"Origin": f"http://{here}", "Host": here}
    status, headers, data = call(proxy, "/v1/agproxy/status", headers=same)
    assert status == 200 and data["version"] == agproxy.__version__  # was 403: origin not in allowed_origins
    assert headers["Access-Control-Allow-Origin"] == f"http://{here}"
    # a page of another origin is still refused
    status, _, error = call(proxy, "/v1/agproxy/status", headers={"Origin": "http://evil.example", "Host": here})
    assert status == 403 and "allowed_origins" in error["error"]["message"]
    # DNS rebinding: evil.example resolves to 127.0.0.1, so its page is same-origin with its own
    # Host; the Host guard refuses that Host, so the same-origin rule lets nothing new in
    rebound = f"evil.example:{proxy.port}"
    status, _, error = call(proxy, "/v1/agproxy/status", headers={"Origin": f"http://{rebound}", "Host": rebound})
    assert status == 421 and "server_names" in error["error"]["message"]
    status, _, _ = call(proxy, "/agproxy", headers={"Origin": f"http://{rebound}", "Host": rebound})
    assert status == 421


def test_with_auth_on_a_rebinding_page_still_needs_the_key(start_agproxy):
    proxy = start_agproxy({"upstreams": [DEMO], "auth_mode": "all_except_health", "api_key": KEY})
    rebound = f"evil.example:{proxy.port}"
    headers = {"Origin": f"http://{rebound}", "Host": rebound}
    assert call(proxy, "/v1/agproxy/status", headers=headers)[0] == 401
    assert call(proxy, "/v1/agproxy/status", headers={**headers, "Authorization": f"Bearer {KEY}"})[0] == 200


# -- the data ------------------------------------------------------------------------------------------

def test_the_data_shows_accounts_requests_errors_and_today(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    first = status_of(proxy)
    assert first["version"] == agproxy.__version__ and first["uptime_s"] >= 0 and first["in_flight"] == 0
    assert re.match(r"\d{4}-\d\d-\d\dT", first["started_at"])
    [upstream] = first["upstreams"]
    assert (upstream["name"], upstream["kind"]) == ("fake", "anthropic")
    assert [(a["account"], a["state"], a["rest_left_s"]) for a in upstream["accounts"]] == [
        ("alice@example.com", "ok", 0), ("bob@example.com", "ok", 0)]
    assert first["requests"] == [] and first["errors"] == [] and first["today"]["models"] == []

    fake.script(Json(200, message(usage={"input_tokens": 30, "output_tokens": 5})))
    assert call(proxy, "/v1/messages", "POST", ASKED)[0] == 200
    fake.script(Sse(text_stream("one two three")))
    assert call(proxy, "/v1/messages", "POST", dict(ASKED, stream=True))[0] == 200
    fake.script(Json(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
                     [("retry-after", "90")]),
                Json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                      "message": "messages.0: that is not allowed"}}))
    assert call(proxy, "/v1/messages", "POST", dict(ASKED, model="claude-other"))[0] == 400
    assert call(proxy, "/v1/messages/count_tokens", "POST", {"model": "claude-page-test",
                                                             "messages": ASKED["messages"]})[0] == 200
    call(proxy, "/healthz")
    call(proxy, "/", "HEAD")

    data = status_of(proxy)
    listed = data["requests"]
    assert [r["path"] for r in listed] == ["/v1/messages/count_tokens"] + ["/v1/messages"] * 3  # newest first
    assert [r["status"] for r in listed[1:]] == [400, 200, 200] and [r["stream"] for r in listed[1:]] == [
        False, True, False]
    for record in listed:
        assert {"time", "request_id", "model", "mapped_model", "upstream", "account", "status", "stream",
                "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "ttft_ms",
                "duration_ms", "error"} <= set(record)
        assert record["duration_ms"] >= 0 and re.match(r"\d{4}-\d\d-\d\dT", record["time"])
    assert listed[-1]["model"] == "claude-page-test" and listed[-1]["upstream"] == "fake"
    assert listed[-1]["ttft_ms"] is not None
    [error] = data["errors"]
    assert error["status"] == 400 and "that is not allowed" in error["error"] and error["model"] == "claude-other"
    # the 429 rested the account that met it, for the model it hit; the page counts down from rest_left_s
    resting = {a["account"]: a for a in data["upstreams"][0]["accounts"]}
    rested = [a for a in resting.values() if a["state"] == "rate_limited"]
    assert len(rested) == 1 and 80 <= rested[0]["rest_left_s"] <= 90
    assert rested[0]["models_resting"].keys() == {"claude-other"}
    today = data["today"]
    assert today["day"] == time.strftime("%Y-%m-%d", time.gmtime())
    models = {r["model"]: r for r in today["models"]}
    assert models.keys() == {"claude-page-test", "claude-other"}  # count_tokens generates nothing
    assert (models["claude-page-test"]["requests"], models["claude-page-test"]["errors"]) == (2, 0)
    assert (models["claude-other"]["requests"], models["claude-other"]["errors"]) == (1, 1)
    assert sum(r["requests"] for r in today["accounts"]) == 3
    assert {(r["upstream"], r["account"]) for r in today["accounts"]} <= {
        ("fake", "alice@example.com"), ("fake", "bob@example.com")}
    assert isinstance(data["lessons"], dict) and isinstance(data["counters"], dict)


def test_requests_in_flight(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    fake.script(Sse(text_stream("a b c d e f"), delay_s=0.3))
    slow = threading.Thread(target=call, args=(proxy, "/v1/messages", "POST", dict(ASKED, stream=True)))
    slow.start()
    try:
        deadline = time.monotonic() + 5
        while status_of(proxy)["in_flight"] != 1:
            assert time.monotonic() < deadline, "the stream was never counted in flight"
            time.sleep(0.05)
    finally:
        slow.join(10)
    assert status_of(proxy)["in_flight"] == 0


def test_no_key_reaches_the_data(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, auth_mode="strict", api_key=KEY))
    fake.script(Json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                      "message": "bad key sk-upstream-alice in model"}}))
    body = dict(ASKED, model="claude-sk-upstream-alice-" + KEY)
    call(proxy, "/v1/messages", "POST", body, headers={"x-api-key": KEY})
    status, _, raw = call(proxy, "/v1/agproxy/status", headers={"Authorization": f"Bearer {KEY}"})
    text = json.dumps(raw)
    assert status == 200 and raw["requests"] and "sk-upstream-alice" not in text and KEY not in text


def _record(n: int, status: int = 200, model: str = "m") -> agproxy.RequestRecord:
    record = agproxy.RequestRecord(f"req_{n}", "127.0.0.1", "POST", "/v1/messages", model=model, status=status,
                                   upstream="u", account="a", output_tokens=2, ended=time.monotonic())
    return record


def test_the_board_is_bounded_whatever_clients_send():
    ledger = agproxy.UsageLedger()
    board = agproxy.StatusBoard(time.time(), ledger)
    for n in range(1000):
        record = _record(n, 500 if n % 2 else 200, model=f"invented-{n}")
        board.read(record)
        ledger.add(record, time.time())
    data = board.today(time.time())
    assert len(board.last) == agproxy.STATUS_LAST_REQUESTS and board.last[0].request_id == "req_999"
    assert len(board.errors) == agproxy.STATUS_LAST_ERRORS and board.errors[0].request_id == "req_999"
    assert len(data["models"]) == agproxy.STATUS_MAX_TODAY_KEYS + 1
    other = next(r for r in data["models"] if r["model"] == "(other)")
    assert other["requests"] == 1000 - agproxy.STATUS_MAX_TODAY_KEYS and other["output_tokens"] == 2 * other["requests"]
    assert sum(r["requests"] for r in data["models"]) == 1000 and sum(r["errors"] for r in data["models"]) == 500
    # another day starts empty
    assert board.today(time.time() + 86400) == {"day": agproxy._utc_day(time.time() + 86400),
                                                "accounts": [], "models": [], "clients": []}


# -- in a real browser ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = find_chromium()
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    running = Browser(executable)
    yield running
    running.close()


def _text(page: Any) -> str:
    return page.evaluate("document.body.innerText")


def test_the_page_in_chromium_shows_the_accounts_and_updates_without_a_reload(start_agproxy, fake, browser,
                                                                              tmp_path: Path):
    proxy = start_agproxy(fake_config(fake))
    page = browser.new_page(1400, 900)
    try:
        page.navigate(proxy.url + "/agproxy")
        page.wait_for('document.body.innerText.includes("bob@example.com")')
        text = _text(page)
        assert "alice@example.com" in text and "fake" in text and agproxy.__version__ in text
        page.evaluate("window.notReloaded = true")
        hostile = '<img src=x onerror="window.owned=1">claude-hostile'
        fake.script(Json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                          "message": "<b>bold</b> words from upstream"}}))
        call(proxy, "/v1/messages", "POST", dict(ASKED, model=hostile))
        call(proxy, "/v1/messages", "POST", ASKED)
        page.wait_for('document.body.innerText.includes("claude-page-test")', timeout=15)
        assert page.evaluate("window.notReloaded") is True  # polled, not reloaded
        text = _text(page)
        assert hostile in text and "<b>bold</b> words from upstream" in text  # shown as text
        assert page.evaluate("document.querySelectorAll('img').length") == 0
        assert not page.evaluate("[...document.querySelectorAll('b')].some(b => b.textContent === 'bold')")
        assert page.evaluate("window.owned") is None
        page.screenshot(tmp_path / "status-1400x900.png")
        page.resize(390, 844, mobile=True)
        page.wait_for("document.documentElement.clientWidth === 390")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than a phone
        page.screenshot(tmp_path / "status-390x844.png")
        assert page.problems() == []
        assert all(url.startswith(proxy.url) for url in page.request_urls())  # nothing from elsewhere
    finally:
        page.close()


def test_the_page_in_chromium_asks_for_the_key_and_never_puts_it_in_a_url(start_agproxy, fake, browser,
                                                                          tmp_path: Path):
    proxy = start_agproxy(fake_config(fake, auth_mode="strict", api_key=KEY))
    page = browser.new_page(1400, 900)
    try:
        page.navigate(proxy.url + "/agproxy")
        page.wait_for('!document.getElementById("keycard").hidden')
        assert "alice@example.com" not in _text(page)
        page.screenshot(tmp_path / "key-form.png")
        page.evaluate('document.getElementById("key").value = "not-the-key";'
                      'document.getElementById("keyform").requestSubmit()')
        page.wait_for('document.getElementById("keynote").textContent.includes("refused")')
        page.evaluate(f'document.getElementById("key").value = "{KEY}";'
                      'document.getElementById("keyform").requestSubmit()')
        page.wait_for('document.body.innerText.includes("bob@example.com")')
        assert page.evaluate('sessionStorage.getItem("agproxy-key")') == KEY
        # once given, the key is sent as a header from then on, and a reload does not ask again
        page.navigate(proxy.url + "/agproxy")
        page.wait_for('document.body.innerText.includes("bob@example.com")')
        sent = [e["params"]["request"] for e in page.events if e.get("method") == "Network.requestWillBeSent"]
        data_requests = [r for r in sent if r["url"].endswith("/v1/agproxy/status")]
        assert data_requests[-1]["headers"].get("Authorization") == f"Bearer {KEY}"
        urls = page.request_urls() + [page.evaluate("location.href")]
        assert urls and not [url for url in urls if KEY in url or "not-the-key" in url]
        # only the refusals of the keyless and the wrong try were logged
        assert all("401" in problem for problem in page.problems()) and len(page.problems()) == 2
    finally:
        page.close()


def test_a_key_an_upstream_cut_short_or_a_client_put_in_its_path_is_not_shown(start_agproxy, fake):
    """The page's data, the accounts route and the state file hide what is shaped like a key, as the
    log does: an upstream that quotes most of a key in its 401, a client that puts one in its path."""
    key = "sk-ant-api03-" + "A1b2C3d4E5" * 4
    config = fake_config(fake)
    config["upstreams"][0]["accounts"] = [{"name": "alice@example.com", "api_key": key}]
    proxy = start_agproxy(config)
    fake.script(Json(401, {"type": "error", "error": {"type": "authentication_error",
                                                      "message": "invalid x-api-key " + key[:-3]}}))
    call(proxy, "/v1/messages", "POST", ASKED)
    call(proxy, "/v1/messages/sk-ant-api03-CLIENTPUTKEYINPATH0123456789", "POST", ASKED)
    shown = json.dumps([call(proxy, path)[2] for path in ("/v1/agproxy/status", "/v1/agproxy/accounts")])
    assert key[:-3] not in shown and "CLIENTPUTKEYINPATH" not in shown, shown
    assert "[redacted]" in shown


def test_the_page_in_chromium_shows_each_clients_requests_and_tokens(start_agproxy, fake, browser, tmp_path: Path):
    """Issue 20: the client's name reaches the page: beside the account in the last requests, and as
    a chart of today's tokens per client (shown only when clients are configured and used)."""
    config = fake_config(fake, auth_mode="off",  # as a page with its key: that one is tested above
                         clients=[{"name": "alice-dev", "api_key": "sk-client-alice-0123456789"},
                                  {"name": "ci-nightly", "api_key": "sk-client-ci-0123456789"}])
    proxy = start_agproxy(config)
    for key in ("sk-client-alice-0123456789", "sk-client-ci-0123456789", "sk-client-ci-0123456789"):
        assert call(proxy, "/v1/messages", "POST", ASKED, headers={"x-api-key": key})[0] == 200
    page = browser.new_page(1400, 900)
    try:
        page.navigate(proxy.url + "/agproxy")
        page.wait_for('document.body.innerText.includes("ci-nightly")', timeout=15)
        assert page.evaluate('document.getElementById("clientchart").hidden') is False
        chart = page.evaluate('document.getElementById("byclient").innerText')
        assert "ci-nightly" in chart and "2 req" in chart and "alice-dev" in chart, chart
        assert "sk-client" not in _text(page)
        page.screenshot(tmp_path / "clients-1400x900.png")
        assert page.problems() == []
    finally:
        page.close()
