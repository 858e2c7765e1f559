"""agproxy's errors as Codex CLI and Gemini CLI act on them (issue 21, attack findings): the status
and the body each dialect answers, pure, then over real sockets to a fake upstream. The real CLIs
run in tests/test_codex_cli.py and tests/test_gemini_cli.py.

- Gemini's bodies carry google.rpc ``details``: a client's spent day is a per-day ``QuotaFailure``
  (Gemini CLI stops at once), and what agproxy knows of when to come back is a ``RetryInfo``.
- An overload (Anthropic's 529) is 503 on OpenAI's and Gemini's routes, ``server_is_overloaded``
  on ``/v1/responses``; ``/v1/messages`` keeps 529 (Claude Code's contract).
- On ``/v1/responses`` a 4xx that retrying cannot change is a 400, the only 4xx Codex CLI does not
  retry."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Dict, Optional, Tuple

import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from agproxy import (
    DIALECTS,
    AgproxyError,
    ClientLimited,
    gemini_error_body,
    overload_status,
    responses_error_body,
    responses_error_status,
)
from tests.conftest import fake_config
from tests.fakes.anthropic_upstream import Json, Sse, message, text_stream

KEY = "agp-errors-0123456789abcdefghijklmnop"
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
HI = [{"role": "user", "content": "hi"}]
ASK = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": HI}
ROUTES = {"anthropic": ("/v1/messages", ASK),
          "chat": ("/v1/chat/completions", {"model": "claude-sonnet-4-5", "messages": HI}),
          "responses": ("/v1/responses", {"model": "claude-sonnet-4-5", "input": "hi"}),
          "gemini": ("/v1beta/models/claude-sonnet-4-5:generateContent", {"contents": [{"parts": [{"text": "hi"}]}]})}


def details(body: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {detail["@type"]: detail for detail in body["error"].get("details", [])}


# -- pure ----------------------------------------------------------------------------------------

def test_a_gemini_error_body_says_a_per_day_quota_and_when_to_come_back() -> None:
    body = gemini_error_body(429, "rate_limit_error", "over its budget", retry_after_s=3600,
                             quota_id="TokensPerDayPerClient")
    assert body["error"]["code"] == 429 and body["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert body["error"]["message"] == "over its budget"
    found = details(body)
    assert "PerDay" in found[QUOTA_FAILURE]["violations"][0]["quotaId"]
    assert found[RETRY_INFO]["retryDelay"] == "3600s"
    assert "details" not in gemini_error_body(400, "invalid_request_error", "bad")["error"]


def test_the_gemini_dialect_reads_the_error_for_its_details() -> None:
    gemini = DIALECTS["gemini"]
    spent = ClientLimited("carol", "tokens_per_day", "13 of its 10 tokens used today", 40000.2, final=True)
    body = gemini.error_body(spent)
    assert details(body)[QUOTA_FAILURE]["violations"][0]["quotaId"] == "TokensPerDayPerClient"
    assert details(body)[RETRY_INFO]["retryDelay"] == "40001s" and "carol" in body["error"]["message"]
    window = gemini.error_body(ClientLimited("carol", "requests_per_minute", "1 request(s) in the last 60 s", 11.3))
    assert set(details(window)) == {RETRY_INFO} and details(window)[RETRY_INFO]["retryDelay"] == "12s"
    busy = gemini.error_body(ClientLimited("carol", "max_concurrency", "64 wait already", 5))
    assert set(details(busy)) == {RETRY_INFO} and details(busy)[RETRY_INFO]["retryDelay"] == "5s"
    upstream = AgproxyError("rate limited upstream", status=429, headers=[("retry-after", "30")])
    assert details(gemini.error_body(upstream))[RETRY_INFO]["retryDelay"] == "30s"
    overloaded = AgproxyError("busy", status=529, error_type="overloaded_error", headers=[("retry-after", "5")])
    assert gemini.error_status(overloaded) == 503
    body = gemini.error_body(overloaded)
    assert body["error"]["code"] == 503 and body["error"]["status"] == "UNAVAILABLE"
    assert details(body)[RETRY_INFO]["retryDelay"] == "5s"
    assert "details" not in gemini.error_body(AgproxyError("boom", status=500))["error"]


@pytest.mark.parametrize("status, chat, responses, anthropic", [
    (529, 503, 503, 529), (500, 500, 500, 500), (503, 503, 503, 503),
    (400, 400, 400, 400), (401, 401, 400, 401), (403, 403, 400, 403), (404, 404, 400, 404), (413, 413, 400, 413),
    (408, 408, 408, 408), (409, 409, 409, 409), (429, 429, 429, 429),
])
def test_the_status_each_dialect_answers(status: int, chat: int, responses: int, anthropic: int) -> None:
    error = AgproxyError("words", status=status)
    assert DIALECTS["anthropic"].error_status(error) == anthropic
    assert DIALECTS["chat"].error_status(error) == chat == overload_status(status)
    assert DIALECTS["gemini"].error_status(error) == chat
    assert DIALECTS["responses"].error_status(error) == responses == responses_error_status(status)


def test_an_overload_before_any_stream_is_server_is_overloaded_for_codex() -> None:
    body = responses_error_body(529, "overloaded_error", "Overloaded")
    assert body["error"]["code"] == "server_is_overloaded" and body["error"]["message"] == "Overloaded"
    forbidden = responses_error_body(403, "permission_error", "client 'carol' may not use model 'x'")
    assert forbidden["error"]["code"] == "permission_denied"


# -- over sockets --------------------------------------------------------------------------------

def post(proxy: Any, path: str, body: Dict[str, Any], key: str = KEY) -> Tuple[int, Dict[str, str], Dict[str, Any]]:
    request = urllib.request.Request(proxy.url + path, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def team(fake: Any, **limits: Any) -> Dict[str, Any]:
    return fake_config(fake, auth_mode="strict", admin_api_key="sk-admin-0123456789abcdef", max_retry_attempts=1,
                       clients=[{"name": "carol", "api_key": KEY, "models": ["claude-sonnet-*"], **limits}])


def test_an_upstream_overload_is_503_on_the_other_dialects_and_529_on_messages(start_agproxy, fake):
    proxy = start_agproxy(team(fake))
    fake.script(*[Json(529, OVERLOADED, headers=[("retry-after", "7")])] * 4)
    seen = {}
    for name, (path, body) in ROUTES.items():
        seen[name] = post(proxy, path, body)
    assert seen["anthropic"][0] == 529 and seen["anthropic"][2]["error"]["type"] == "overloaded_error"
    assert seen["chat"][0] == 503 and seen["chat"][2]["error"]["type"] == "server_error"
    assert seen["responses"][0] == 503 and seen["responses"][2]["error"]["code"] == "server_is_overloaded"
    status, headers, body = seen["gemini"]
    assert status == 503 and body["error"]["code"] == 503 and body["error"]["status"] == "UNAVAILABLE"
    assert details(body)[RETRY_INFO]["retryDelay"] == "7s" and headers["retry-after"] == "7"


def test_a_model_outside_the_clients_entry_is_final_for_codex(start_agproxy, fake):
    proxy = start_agproxy(team(fake))
    status, headers, body = post(proxy, "/v1/responses", {"model": "gpt-5", "input": "hi"})
    assert status == 400 and body["error"]["code"] == "permission_denied" and "gpt-5" in body["error"]["message"]
    assert headers["x-should-retry"] == "false"
    assert post(proxy, "/v1/messages", dict(ASK, model="gpt-5"))[0] == 403  # Claude Code's contract
    gemini = post(proxy, "/v1beta/models/gpt-5:generateContent", ROUTES["gemini"][1])
    assert gemini[0] == 403 and gemini[2]["error"]["status"] == "PERMISSION_DENIED"
    assert "gpt-5" in gemini[2]["error"]["message"]


def test_a_spent_day_and_a_full_minute_on_gemini_routes(start_agproxy, fake):
    proxy = start_agproxy(team(fake, tokens_per_day=10))
    fake.script(Json(200, message()))
    path, body = ROUTES["gemini"]
    assert post(proxy, path, body)[0] == 200
    status, headers, spent = post(proxy, path, body)
    assert status == 429 and "tokens_per_day" in spent["error"]["message"]
    found = details(spent)
    assert "PerDay" in found[QUOTA_FAILURE]["violations"][0]["quotaId"]
    assert found[RETRY_INFO]["retryDelay"] == headers["retry-after"] + "s"
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=proxy.url))
    with pytest.raises(genai_errors.ClientError) as refused:  # the SDK still reads it
        client.models.generate_content(model="claude-sonnet-4-5", contents="hi")
    assert refused.value.code == 429 and refused.value.status == "RESOURCE_EXHAUSTED"
    assert "tokens_per_day" in refused.value.message and refused.value.details["error"]["details"]


def test_a_full_minute_window_on_gemini_routes_says_its_retry_after(start_agproxy, fake):
    proxy = start_agproxy(team(fake, requests_per_minute=1))
    fake.script(Sse(text_stream()))
    path, body = ROUTES["gemini"]
    assert post(proxy, path, body)[0] == 200
    status, headers, window = post(proxy, path, body)
    assert status == 429 and set(details(window)) == {RETRY_INFO}
    wait: Optional[str] = headers.get("retry-after")
    assert wait and 1 <= int(wait) <= 60 and details(window)[RETRY_INFO]["retryDelay"] == f"{wait}s"


def test_the_openai_sdk_reads_an_overload_as_503(start_agproxy, fake):
    proxy = start_agproxy(team(fake))
    fake.script(*[Json(529, OVERLOADED)] * 2)
    client = openai.OpenAI(api_key=KEY, base_url=proxy.url + "/v1", max_retries=0)
    with pytest.raises(openai.InternalServerError) as chat:
        client.chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    assert chat.value.status_code == 503
    with pytest.raises(openai.InternalServerError) as responses:
        client.responses.create(model="claude-sonnet-4-5", input="hi")
    assert responses.value.status_code == 503 and responses.value.code == "server_is_overloaded"
