"""Routes, auth modes, browser and DNS-rebinding guards, over real sockets."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

DEMO = {"name": "demo", "kind": "demo"}


def call(proxy, path, method="GET", body=None, headers=None, host=None):
    """(status, headers, parsed body or raw bytes) for one request."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(proxy.url + path, data=data, method=method, headers=headers or {})
    if body is not None and "Content-Type" not in (headers or {}):
        request.add_header("Content-Type", "application/json")
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status, hdrs, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, hdrs, raw = error.code, error.headers, error.read()
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw


MESSAGE = {"model": "claude-test", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}


def test_pinned_routes_with_demo(start_agproxy):
    proxy = start_agproxy({"upstreams": [DEMO]})
    assert call(proxy, "/", "HEAD")[0] == 200
    assert call(proxy, "/")[0] == 200
    status, _, health = call(proxy, "/healthz")
    assert status == 200 and health == {"status": "ok", "version": health["version"]}
    status, headers, message = call(proxy, "/v1/messages?beta=true", "POST", MESSAGE)
    assert status == 200 and message["type"] == "message" and "hello" in message["content"][0]["text"]
    assert headers["X-Mapped-Model"] == "claude-test" and headers["X-Account-Email"] == "demo"
    status, headers, count = call(proxy, "/v1/messages/count_tokens", "POST",
                                  {"model": "claude-test", "messages": MESSAGE["messages"]})
    assert status == 200 and count["input_tokens"] > 0 and headers["X-Token-Count"] == "estimate"
    status, _, models = call(proxy, "/v1/models")
    assert status == 200 and models["has_more"] is False
    assert models["first_id"] == models["data"][0]["id"] and models["data"][0]["type"] == "model"
    assert {"id", "display_name", "created_at"} <= set(models["data"][0])
    status, _, openai_list = call(proxy, "/v1/models/claude")
    assert status == 200 and openai_list["object"] == "list" and openai_list["data"][0]["object"] == "model"
    status, _, one = call(proxy, "/v1/models/" + models["data"][0]["id"])
    assert status == 200 and one["id"] == models["data"][0]["id"]
    for path in ("/v1/api/event_logging", "/v1/api/event_logging/batch"):
        status, _, raw = call(proxy, path, "POST", {"events": []})
        assert (status, raw) == (200, b"")


def test_count_tokens_grows_with_the_prompt(start_agproxy):
    proxy = start_agproxy({"upstreams": [DEMO]})
    small = call(proxy, "/v1/messages/count_tokens", "POST", {"model": "m", "messages": MESSAGE["messages"]})[2]
    big = call(proxy, "/v1/messages/count_tokens", "POST",
               {"model": "m", "system": "You are a careful assistant. " * 50, "messages": MESSAGE["messages"],
                "tools": [{"name": "Bash", "description": "Run a command", "input_schema": {"type": "object"}}]})[2]
    assert 0 < small["input_tokens"] < big["input_tokens"]


def test_v1_v1_hint_and_404_405(start_agproxy):
    proxy = start_agproxy({"upstreams": [DEMO]})
    status, _, error = call(proxy, "/v1/v1/messages", "POST", MESSAGE)
    assert status == 400 and error["error"]["type"] == "invalid_request_error"  # a 404 Claude Code would not show
    assert "must not end in /v1" in error["error"]["message"]
    call(proxy, "/v1/v1/messages", "POST", MESSAGE)
    assert proxy.log().count("its base URL ends in /v1") == 1  # the operator sees why, once
    status, _, error = call(proxy, "/v2/whatever")
    assert status == 404 and error["type"] == "error"
    status, headers, error = call(proxy, "/v1/messages")
    assert status == 405 and headers["Allow"] == "POST" and error["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, expected", [
    (b"{broken", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    ({"max_tokens": 5, "messages": []}, "model: Field required"),
    ({"model": "m", "max_tokens": 5}, "messages: Field required"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens: Field required"),
    ({"model": "m", "max_tokens": "5", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user"}]}, "messages.0.content"),
    # what the demo answered and agproxy forwarded upstream (with retries) before
    ({"model": "m", "max_tokens": 5, "messages": []}, "messages: at least one message is required"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "bot", "content": "hi"}]}, "messages.0.role"),
    ({"model": "m", "max_tokens": 10 ** 9, "messages": [{"role": "user", "content": "hi"}]},
     "max_tokens: must be at most"),
    (b'{"model": "m", "max_tokens": 1e9, "messages": [{"role": "user", "content": "hi"}]}',
     "max_tokens: must be a positive integer"),
])
def test_invalid_message_requests_are_400_with_a_clear_message(start_agproxy, body, expected):
    proxy = start_agproxy({"upstreams": [DEMO]})
    status, _, error = call(proxy, "/v1/messages", "POST", body)
    assert status == 400 and error["error"]["type"] == "invalid_request_error"
    assert expected in error["error"]["message"]


def test_messages_needs_a_json_content_type(start_agproxy):
    proxy = start_agproxy({"upstreams": [DEMO]})
    status, _, error = call(proxy, "/v1/messages", "POST", json.dumps(MESSAGE).encode(),
                            headers={"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in error["error"]["message"]
    assert call(proxy, "/v1/messages", "POST", json.dumps(MESSAGE).encode(),
                headers={"Content-Type": "application/json; charset=utf-8"})[0] == 200


def test_unmatched_model_is_404_naming_it(start_agproxy):
    proxy = start_agproxy({"upstreams": [DEMO], "model_map": [{"match": "claude-*", "upstream": "demo"}]})
    status, _, error = call(proxy, "/v1/messages", "POST", dict(MESSAGE, model="gpt-4"))
    assert status == 404 and "'gpt-4'" in error["error"]["message"]


KEYED = {"upstreams": [DEMO], "api_key": "sk-local-secret"}


@pytest.mark.parametrize("headers", [
    {"x-api-key": "sk-local-secret"},
    {"Authorization": "Bearer sk-local-secret"},
    {"x-goog-api-key": "sk-local-secret"},
])
def test_each_key_header_is_accepted(start_agproxy, headers):
    proxy = start_agproxy(dict(KEYED, auth_mode="strict"))
    assert call(proxy, "/v1/messages", "POST", MESSAGE, headers=headers)[0] == 200


def test_strict_protects_every_route(start_agproxy):
    proxy = start_agproxy(dict(KEYED, auth_mode="strict"))
    for path in ("/healthz", "/", "/v1/models", "/nope"):
        status, _, error = call(proxy, path)
        assert status == 401 and error["error"]["type"] == "authentication_error"
    status, _, error = call(proxy, "/v1/messages", "POST", MESSAGE, headers={"x-api-key": "wrong"})
    assert status == 401 and "sk-local-secret" not in json.dumps(error)
    assert call(proxy, "/healthz", headers={"x-api-key": "sk-local-secret"})[0] == 200


def test_all_except_health_leaves_healthz_open(start_agproxy):
    proxy = start_agproxy(dict(KEYED, auth_mode="all_except_health"))
    assert call(proxy, "/healthz")[0] == 200
    assert call(proxy, "/v1/models")[0] == 401
    assert call(proxy, "/v1/models", headers={"x-api-key": "sk-local-secret"})[0] == 200


def test_auth_off_ignores_keys(start_agproxy):
    proxy = start_agproxy(dict(KEYED, auth_mode="off"))
    assert call(proxy, "/v1/messages", "POST", MESSAGE, headers={"x-api-key": "anything"})[0] == 200


def test_auto_is_off_on_loopback(start_agproxy):
    proxy = start_agproxy(dict(KEYED, auth_mode="auto"))
    assert call(proxy, "/v1/models")[0] == 200


def test_auto_is_on_when_bound_beyond_loopback(start_agproxy):
    proxy = start_agproxy(dict(KEYED, auth_mode="auto", host="0.0.0.0"))
    assert call(proxy, "/healthz")[0] == 200
    assert call(proxy, "/v1/models")[0] == 401


def test_auth_on_with_empty_key_refuses_everything_and_warns(start_agproxy):
    proxy = start_agproxy({"upstreams": [DEMO], "auth_mode": "strict"})
    status, _, error = call(proxy, "/v1/models", headers={"x-api-key": ""})
    assert status == 401 and "no api_key" in error["error"]["message"]
    assert "api_key is empty" in proxy.log()


def test_browser_origins_are_refused_unless_listed(start_agproxy):
    proxy = start_agproxy({"upstreams": [DEMO], "allowed_origins": ["http://localhost:3000"]})
    status, _, error = call(proxy, "/v1/messages", "POST", MESSAGE, headers={"Origin": "https://evil.example"})
    assert status == 403 and error["error"]["type"] == "permission_error"
    status, headers, _ = call(proxy, "/v1/messages", "POST", MESSAGE, headers={"Origin": "http://localhost:3000"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    status, headers, _ = call(proxy, "/v1/messages", "OPTIONS", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
    assert status == 204 and "POST" in headers["Access-Control-Allow-Methods"]


def test_dns_rebinding_guard_while_auth_is_off(start_agproxy):
    proxy = start_agproxy({"upstreams": [DEMO], "server_names": ["agproxy.internal"]})
    status, _, error = call(proxy, "/v1/models", host="attacker.example:8045")
    assert status == 421 and "attacker.example" in error["error"]["message"]
    for host in ("localhost:8045", "127.0.0.1", "[::1]:8045", "agproxy.internal:8045", "foo.localhost"):
        assert call(proxy, "/v1/models", host=host)[0] == 200, host


def test_foreign_host_is_fine_when_auth_is_on(start_agproxy):
    proxy = start_agproxy(dict(KEYED, auth_mode="strict"))
    assert call(proxy, "/v1/models", host="gateway.corp", headers={"x-api-key": "sk-local-secret"})[0] == 200


def test_a_request_is_admitted_once_whether_or_not_it_has_a_body(start_agproxy):
    proxy = start_agproxy({"upstreams": [DEMO]})
    admitted = []
    check = proxy.server.admit
    proxy.server.admit = lambda request: (admitted.append(request.path), check(request))[1]
    assert call(proxy, "/v1/messages", "POST", MESSAGE)[0] == 200  # checked on its head, before the body
    assert call(proxy, "/healthz")[0] == 200  # no body: checked once the request is whole
    assert admitted == ["/v1/messages", "/healthz"]
    assert call(proxy, "/v1/nowhere", "POST", MESSAGE)[0] == 404 and admitted[-1] == "/v1/nowhere"


def test_a_host_that_only_looks_loopback_is_not_served_while_auth_is_off(start_agproxy):
    """Only spaces and tabs pad a Host value (Latin-1's U+00A0 and U+0085 are not blanks there), and a
    bracketed IPv6 literal is loopback only when nothing but a port follows it."""
    proxy = start_agproxy({"upstreams": [DEMO]})
    for host in ("localhost\xa0:8045", "localhost\x85", "[::1]x", "[::1]:80x", "[::1]evil.example"):
        assert call(proxy, "/v1/models", host=host)[0] == 421, repr(host)
    for host in ("[::1]", "[::1]:8045", " localhost:8045\t", "127.0.0.1:8045"):
        assert call(proxy, "/v1/models", host=host)[0] == 200, repr(host)
