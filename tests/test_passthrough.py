"""The anthropic SDK -> agproxy -> fake Anthropic upstream, over real sockets."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import anthropic
import pytest

from tests.conftest import fake_config, leave_mid_stream
from tests.fakes.anthropic_upstream import Drop, Json, Sse, text_stream, tool_and_thinking_stream


def sdk(proxy, **kw):
    return anthropic.Anthropic(base_url=proxy.url, api_key="client-key-not-for-upstream", max_retries=0, **kw)


def test_create_relays_message_and_sends_account_key(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    client = sdk(proxy)
    raw = client.messages.with_raw_response.create(
        model="claude-test-model", max_tokens=64, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14", "anthropic-version": "2023-06-01"},
    )
    message = raw.parse()
    assert message.content[0].text == "Hello from the fake upstream."
    assert raw.headers["x-mapped-model"] == "claude-test-model"
    assert raw.headers["x-account-email"] == "alice@example.com"
    assert raw.headers["request-id"].startswith("req_")
    sent = fake.requests[-1]
    assert sent.target == "/v1/messages"
    assert sent.header("x-api-key") == "sk-upstream-alice"
    assert sent.header("authorization") is None
    assert sent.header("anthropic-version") == "2023-06-01"
    assert sent.header("anthropic-beta") == "interleaved-thinking-2025-05-14"
    assert sent.json["messages"] == [{"role": "user", "content": "hi"}]
    assert "client-key-not-for-upstream" not in proxy.log()


def test_accounts_take_turns(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    client = sdk(proxy)
    for _ in range(2):
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert [r.header("x-api-key") for r in fake.requests] == ["sk-upstream-alice", "sk-upstream-bob"]


def test_query_string_is_dropped_and_model_renamed(start_agproxy, fake):
    config = fake_config(fake, model_map=[{"match": "claude-*haiku*", "upstream": "fake", "model": "small-model"},
                                          {"match": "*", "upstream": "fake"}])
    proxy = start_agproxy(config)
    body = json.dumps({"model": "claude-3-5-haiku-latest", "max_tokens": 5,
                       "messages": [{"role": "user", "content": "x"}]}).encode()
    request = urllib.request.Request(proxy.url + "/v1/messages?beta=true", body,
                                     {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["X-Mapped-Model"] == "small-model"
    assert fake.requests[-1].target == "/v1/messages"
    assert fake.requests[-1].json["model"] == "small-model"


def test_stream_text(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    with sdk(proxy).messages.stream(model="claude-test-model", max_tokens=64,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the fake upstream."
    assert final.stop_reason == "end_turn"
    assert fake.requests[-1].header("accept") == "text/event-stream"


def test_stream_tool_use_and_thinking_split_events(start_agproxy, fake):
    fake.script(Sse(tool_and_thinking_stream(), split=True))
    proxy = start_agproxy(fake_config(fake))
    with sdk(proxy).messages.stream(model="claude-test-model", max_tokens=2000,
                                    thinking={"type": "enabled", "budget_tokens": 1024},
                                    messages=[{"role": "user", "content": "list files"}]) as stream:
        final = stream.get_final_message()
    kinds = [block.type for block in final.content]
    assert kinds == ["thinking", "text", "tool_use"]
    assert final.content[0].thinking == "The user wants the files. I will run ls."
    assert final.content[0].signature == "c2lnbmF0dXJlLWZha2U="
    assert final.content[2].input == {"command": "ls -la"}
    assert final.stop_reason == "tool_use"


def test_stream_first_event_arrives_before_the_upstream_finishes(start_agproxy, fake):
    fake.script(Sse(text_stream("one two three four"), delay_s=0.4))
    proxy = start_agproxy(fake_config(fake))
    body = json.dumps({"model": "m", "max_tokens": 5, "stream": True,
                       "messages": [{"role": "user", "content": "x"}]}).encode()
    started = time.monotonic()
    request = urllib.request.Request(proxy.url + "/v1/messages", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        first = response.readline()
        first_at = time.monotonic() - started
        rest = response.read()
        total = time.monotonic() - started
    assert first.startswith(b"event: message_start")
    # 10 events, 0.4 s apart: the first arrives after one pause, the last after ten.
    assert first_at < 1.5 < total
    assert b"event: message_stop" in rest


def test_client_leaving_mid_stream_closes_upstream_within_a_second(start_agproxy, fake):
    fake.script(Sse(text_stream(" ".join(["word"] * 40)), delay_s=0.5))
    proxy = start_agproxy(fake_config(fake))
    noticed = leave_mid_stream(proxy.port, fake.abandoned_at)
    assert noticed is not None, "upstream stream was never closed"
    assert noticed < 1.0


def test_upstream_dropping_mid_stream_becomes_error_event(start_agproxy, fake):
    fake.script(Sse(text_stream("a b c d e"), drop_after=4))
    proxy = start_agproxy(fake_config(fake))
    with pytest.raises(anthropic.APIStatusError) as caught:
        with sdk(proxy).messages.stream(model="m", max_tokens=5,
                                        messages=[{"role": "user", "content": "x"}]) as stream:
            for _ in stream:
                pass
    assert "upstream 'fake'" in str(caught.value)


def test_connections_to_upstream_are_reused(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    client = sdk(proxy)
    for _ in range(3):
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with client.messages.stream(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]) as s:
        s.get_final_message()
    client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert len(fake.requests) == 5
    assert fake.connections == 1


def test_stale_pooled_connection_is_replaced(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    client = sdk(proxy)
    client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    fake.script(Drop())  # the upstream closes the kept-alive connection instead of answering
    message = client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert message.content[0].text


def test_count_tokens_is_forwarded(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    count = sdk(proxy).messages.count_tokens(model="claude-test-model",
                                             messages=[{"role": "user", "content": "hi"}])
    assert count.input_tokens == 4242
    assert fake.requests[-1].target == "/v1/messages/count_tokens"
    assert fake.requests[-1].header("x-api-key") == "sk-upstream-alice"


def test_models_list_comes_from_the_upstream(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, model_map=[{"match": "my-alias", "upstream": "fake"},
                                                       {"match": "*", "upstream": "fake"}]))
    models = list(sdk(proxy).models.list())
    assert [m.id for m in models] == ["my-alias", "claude-fake"]
    assert fake.requests[0].target.startswith("/v1/models")
    assert fake.requests[0].header("x-api-key") == "sk-upstream-alice"
    assert sdk(proxy).models.retrieve("claude-fake").display_name == "Fake"
    assert len(fake.requests) == 1  # cached


def test_models_list_falls_back_when_the_upstream_cannot_list(start_agproxy, fake):
    fake.script(Json(404, {"type": "error", "error": {"type": "not_found_error", "message": "no"}}))
    proxy = start_agproxy(fake_config(fake))
    models = list(sdk(proxy).models.list())
    assert models and all(m.id.startswith("claude-") for m in models)
    assert "could not list" in proxy.log() or "answered HTTP 404" in proxy.log()


@pytest.mark.parametrize("status, error_type", [
    (400, "invalid_request_error"),
    (404, "not_found_error"),
    (429, "rate_limit_error"),
    (500, "api_error"),
    (529, "overloaded_error"),
])
def test_upstream_errors_keep_status_and_type(start_agproxy, fake, status, error_type):
    """The status and the error type are what matter; which exception class an SDK release maps
    them to varies (0.125, the newest for Python 3.9, raises OverloadedError for 529)."""
    fake.script(Json(status, {"type": "error", "error": {"type": error_type, "message": f"upstream says {status}"}},
                     headers=[("retry-after", "7")] if status == 429 else []))
    proxy = start_agproxy(fake_config(fake, max_retry_attempts=1))  # retries are tested in test_accounts.py
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk(proxy).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == status
    assert caught.value.body["error"]["type"] == error_type
    assert f"upstream says {status}" in caught.value.message
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "7"


def test_upstream_rejecting_agproxys_key_is_424_not_401(start_agproxy, fake):
    """Neither 401 (the client's key is fine) nor a 5xx (Claude Code calls those temporary server
    issues): 424, in words that do not say "x-api-key" (Claude Code shows "Not logged in" for them)."""
    rejected = Json(401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
    fake.script(rejected, rejected)
    proxy = start_agproxy(fake_config(fake))
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk(proxy).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 424
    assert caught.value.body["error"]["type"] == "api_error"
    assert ("upstream 'fake' rejected the key of alice@example.com (HTTP 401: invalid x api key, will be tried "
            "again in 600 s), bob@example.com (HTTP 401: invalid x api key, will be tried again in 600 s)"
            ) in caught.value.message
    assert "sk-upstream" not in caught.value.message


def test_agproxy_auth_errors_reach_the_sdk_as_authentication_error(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, auth_mode="strict", api_key="sk-local"))
    with pytest.raises(anthropic.AuthenticationError):
        sdk(proxy).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    ok = anthropic.Anthropic(base_url=proxy.url, api_key="sk-local", max_retries=0)
    assert ok.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]).content


def test_unreachable_upstream_is_502_naming_it(start_agproxy):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    config = {"upstreams": [{"name": "gone", "kind": "anthropic", "base_url": f"http://127.0.0.1:{free_port}",
                             "accounts": [{"name": "a", "api_key": "k"}]}]}
    proxy = start_agproxy(config)
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk(proxy).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502
    assert "'gone'" in caught.value.message


def test_upstream_timeout_is_504(start_agproxy, fake):
    from tests.fakes.anthropic_upstream import Hang
    fake.script(Hang(5))
    config = fake_config(fake, max_retry_attempts=1)
    config["upstreams"][0]["timeout_s"] = 0.5
    proxy = start_agproxy(config)
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk(proxy).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 504


def test_no_key_reaches_the_log_even_at_debug_level(start_agproxy, fake):
    fake.script(Json(401, {"type": "error", "error": {"type": "authentication_error", "message": "bad key"}}))
    proxy = start_agproxy(fake_config(fake, log_level="debug", auth_mode="strict", api_key="sk-local-topsecret",
                                      max_retry_attempts=1))
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-local-topsecret", max_retries=0)
    with pytest.raises(anthropic.APIStatusError):
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=proxy.url, api_key="sk-wrong-guess", max_retries=0).models.list()
    log = proxy.log()
    assert "POST /v1/messages" in log
    for secret in ("sk-local-topsecret", "sk-upstream-alice", "sk-upstream-bob", "sk-wrong-guess"):
        assert secret not in log


def test_stream_closed_cleanly_before_message_stop_becomes_error_event(start_agproxy, fake):
    from tests.fakes.anthropic_upstream import Raw, encode_event
    events = b"".join(encode_event(e, d) for e, d in text_stream("a b c")[:4])
    fake.script(Raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + events))
    proxy = start_agproxy(fake_config(fake))
    body = json.dumps({"model": "m", "max_tokens": 5, "stream": True,
                       "messages": [{"role": "user", "content": "x"}]}).encode()
    request = urllib.request.Request(proxy.url + "/v1/messages", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        data = response.read()
    assert data.startswith(events)
    assert data[len(events):].startswith(b"event: error\ndata: ")
    assert b"ended before message_stop" in data


def test_upstream_error_event_is_relayed_as_is(start_agproxy, fake):
    error = ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    fake.script(Sse(text_stream("a b")[:3] + [error], delay_s=0.2))  # after the first events reached the client
    proxy = start_agproxy(fake_config(fake))
    with pytest.raises(anthropic.APIStatusError) as caught:
        with sdk(proxy).messages.stream(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]) as s:
            s.get_final_message()
    assert "Overloaded" in str(caught.value)


def test_models_list_keeps_only_models_the_map_routes(start_agproxy, fake):
    from tests.fakes.anthropic_upstream import Json as Reply
    fake.script(Reply(200, {"data": [{"type": "model", "id": i, "display_name": i, "created_at": "2025-01-01T00:00:00Z"}
                                     for i in ("claude-opus-x", "claude-haiku-y", "other-model")],
                            "has_more": False, "first_id": "claude-opus-x", "last_id": "other-model"}))
    proxy = start_agproxy(fake_config(fake, model_map=[{"match": "claude-*", "upstream": "fake"}]))
    assert [m.id for m in sdk(proxy).models.list()] == ["claude-opus-x", "claude-haiku-y"]


def test_models_list_does_not_wait_for_upstreams_that_hang(start_agproxy, fake):
    """The upstreams' lists are asked for at once and waited for a few seconds in all: three upstreams
    that never answer, each allowed 15 s, held /v1/models for 45 s when they were asked one by one."""
    from tests.fakes.misbehaving import MisbehavingUpstream
    with MisbehavingUpstream() as hanging:
        upstreams = [{"name": f"hangs{i}", "kind": "anthropic", "base_url": hanging.url_for("hang", "anthropic", "m"),
                      "connect_timeout_s": 15, "accounts": [{"name": "a", "api_key": "k"}]} for i in range(3)]
        config = fake_config(fake)
        config["upstreams"] = upstreams + config["upstreams"]
        proxy = start_agproxy(config)
        request = urllib.request.Request(proxy.url + "/v1/models")
        with urllib.request.urlopen(request, timeout=14) as response:
            listed = json.loads(response.read())
    assert [m["id"] for m in listed["data"]] == ["claude-fake"]
    assert proxy.log().count("no list within") == 3
