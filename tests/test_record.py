"""One record per request, read by the access log: the JSON log's pinned fields, the text line,
and that every kind of answer fills the record the same way (streamed, whole, translated, warmup,
refused, failed, retried), through real clients (the anthropic SDK, curl-like raw sockets) over
real sockets to fake upstreams."""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List

import anthropic
import pytest

from tests.conftest import fake_config
from tests.fakes.anthropic_upstream import Json, Sse, text_stream
from tests.fakes.openai_upstream import FakeOpenAI
from tests.wire_check import get, post_json

#: The pinned fields of a JSON access line (design.md, "Operations").
ACCESS_FIELDS = {"time", "level", "msg", "event", "request_id", "client_ip", "method", "path", "status", "model",
                 "mapped_model", "upstream", "account", "stream", "attempts", "input_tokens", "output_tokens",
                 "cache_read_tokens", "cache_write_tokens", "ttft_ms", "duration_ms", "bytes_sent", "error"}


def _json_lines(proxy: Any) -> List[Dict[str, Any]]:
    lines = [line for line in proxy.log().splitlines() if line.strip() and not line.startswith("agproxy listening")]
    return [json.loads(line) for line in lines]


def _access(proxy: Any, count: int) -> List[Dict[str, Any]]:
    """The JSON access lines, once there are ``count`` (each is written just after its answer)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in _json_lines(proxy) if line.get("event") == "access"]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def _client(proxy: Any, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=kw.pop("api_key", "sk-local"), max_retries=0, **kw)


def test_every_line_of_the_json_log_is_one_object_and_access_lines_carry_the_pinned_fields(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, log_format="json"))
    fake.script(Sse(text_stream("one two three")))
    with _client(proxy).messages.stream(model="claude-sonnet-4-5", max_tokens=50,
                                        messages=[{"role": "user", "content": "hi"}]) as stream:
        text = stream.get_final_text()
    assert text == "one two three"
    _client(proxy).messages.create(model="claude-sonnet-4-5", max_tokens=50,
                                   messages=[{"role": "user", "content": "hi"}])
    for line in _json_lines(proxy):  # the readiness line is the only plain one
        assert {"time", "level", "msg"} <= set(line) and line["time"].endswith("Z"), line
    streamed, whole = _access(proxy, 2)[:2]
    for line in (streamed, whole):
        assert ACCESS_FIELDS <= set(line), ACCESS_FIELDS - set(line)
        assert line["status"] == 200 and line["upstream"] == "fake"
        assert line["account"] in ("alice@example.com", "bob@example.com")
        assert line["model"] == line["mapped_model"] == "claude-sonnet-4-5" and line["attempts"] == 1
        assert line["client_ip"] == "127.0.0.1" and line["path"] == "/v1/messages" and line["error"] is None
        assert line["ttft_ms"] is not None and 0 < line["ttft_ms"] <= line["duration_ms"]
        assert "client" not in line  # no client names without teams
    assert streamed["stream"] is True and (streamed["input_tokens"], streamed["output_tokens"]) == (12, 3)
    # asked as JSON, streamed from the upstream (force_stream_internally): its default stream, a word a token
    assert whole["stream"] is False and (whole["input_tokens"], whole["output_tokens"]) == (12, 5)
    assert streamed["bytes_sent"] > 300 and whole["bytes_sent"] > 100


def test_bytes_sent_is_the_body_the_client_got(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, log_format="json"))
    answer = post_json(proxy.port, "/v1/messages", {"model": "claude-x", "max_tokens": 5,
                                                    "messages": [{"role": "user", "content": "hi"}]}, 10)
    assert answer.status == 200
    assert _access(proxy, 1)[0]["bytes_sent"] == len(answer.body)


def test_cache_tokens_and_a_retry_on_another_account_are_recorded(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, log_format="json"))
    cached = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
              "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": None,
              "usage": {"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": 1000,
                        "cache_creation_input_tokens": 300}}
    fake.script(Json(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
                     [("retry-after", "120")]), Json(200, cached))
    _client(proxy).messages.create(model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    line = _access(proxy, 1)[0]
    assert line["attempts"] == 2 and line["status"] == 200
    assert (line["cache_read_tokens"], line["cache_write_tokens"], line["input_tokens"]) == (1000, 300, 5)


def test_a_failure_carries_the_upstreams_words(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, log_format="json"))
    fake.script(Json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                      "message": "messages.0.content: the frobnicator is unhappy"}}))
    with pytest.raises(anthropic.BadRequestError):
        _client(proxy).messages.create(model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    line = _access(proxy, 1)[0]
    assert line["status"] == 400 and "the frobnicator is unhappy" in line["error"], line
    assert line["attempts"] == 1


def test_a_refused_request_says_whether_the_key_was_missing_or_wrong(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, log_format="json", auth_mode="strict", api_key="sk-local-right-key"))
    with pytest.raises(anthropic.AuthenticationError):
        _client(proxy, api_key="sk-local-wrong-key").messages.create(
            model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    answer = post_json(proxy.port, "/v1/messages", {"model": "claude-x"}, 10)
    assert answer.status == 401
    wrong, missing = _access(proxy, 2)[:2]
    assert wrong["status"] == missing["status"] == 401 and wrong["path"] == "/v1/messages"
    assert "invalid API key" in wrong["error"] and "missing API key" in missing["error"]
    assert "sk-local-wrong-key" not in proxy.log() and "sk-local-right-key" not in proxy.log()


def test_warmups_and_the_demo_are_recorded_as_local_answers(start_agproxy):
    proxy = start_agproxy({"log_format": "json", "upstreams": [{"name": "demo", "kind": "demo"}]})
    warmup = {"model": "claude-haiku-4-5", "max_tokens": 1, "messages": [{"role": "user", "content": "Warmup"}]}
    assert post_json(proxy.port, "/v1/messages", warmup, 10).status == 200
    _client(proxy).messages.create(model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "hello"}])
    warm, demo = _access(proxy, 2)[:2]
    assert warm["local"] == "warmup" and warm["status"] == 200
    assert demo["upstream"] == "demo" and demo["output_tokens"] > 0 and demo["input_tokens"] > 0


def test_a_translated_stream_records_the_servers_usage(start_agproxy):
    with FakeOpenAI() as server:
        proxy = start_agproxy({"log_format": "json", "upstreams": [
            {"name": "local", "kind": "openai", "base_url": server.url + "/v1",
             "accounts": [{"name": "vllm", "api_key": "none"}]}],
            "model_map": [{"match": "*", "upstream": "local", "model": "qwen"}]})
        with _client(proxy).messages.stream(model="claude-x", max_tokens=50,
                                            messages=[{"role": "user", "content": "hi"}]) as stream:
            stream.get_final_text()
        line = _access(proxy, 1)[0]
    assert line["mapped_model"] == "qwen" and line["stream"] is True
    assert line["input_tokens"] == 21 and line["output_tokens"] > 0


def test_the_text_access_line_holds_the_same_facts(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    fake.script(Sse(text_stream("a b")))
    with _client(proxy).messages.stream(model="claude-x", max_tokens=50,
                                        messages=[{"role": "user", "content": "hi"}]) as stream:
        stream.get_final_text()
    deadline = time.monotonic() + 5
    while "agproxy.access" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.02)
    line = next(line for line in proxy.log().splitlines() if "agproxy.access" in line)
    for fact in ("POST /v1/messages 200", "fake/", "@example.com", "claude-x stream", "tries=1", "in=12",
                 "out=2", "cache_read=0", "ttft="):
        assert fact in line, line


def test_a_probe_and_a_404_are_recorded_too(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, log_format="json"))
    assert get(proxy.port, "/").status == 200
    assert get(proxy.port, "/nowhere").status == 404
    root, nowhere = _access(proxy, 2)[:2]
    assert root["status"] == 200 and root["model"] is None and root["attempts"] == 0
    assert nowhere["status"] == 404 and "no route" in nowhere["error"]


def test_a_stream_that_breaks_or_ends_in_an_upstream_error_event_is_recorded_as_failed(start_agproxy, fake):
    """Its status was 200 (sent with the first events), but an error event ended it: the record says
    why, so the log, the metrics and the ledger do not count it as a success."""
    proxy = start_agproxy(fake_config(fake, log_format="json"))
    fake.script(Sse(text_stream("one two three four"), drop_after=4))
    broken = post_json(proxy.port, "/v1/messages", {"model": "claude-x", "max_tokens": 5, "stream": True,
                                                    "messages": [{"role": "user", "content": "hi"}]}, 10)
    overloaded = text_stream("one two")[:4] + [("error", {"type": "error", "error": {
        "type": "overloaded_error", "message": "the upstream is overloaded right now"}})]
    fake.script(Sse(overloaded, delay_s=0.05))  # apart, so that the first events go out before the error
    said = post_json(proxy.port, "/v1/messages", {"model": "claude-x", "max_tokens": 5, "stream": True,
                                                  "messages": [{"role": "user", "content": "hi"}]}, 10)
    assert broken.status == said.status == 200 and b"event: error" in broken.body and b"event: error" in said.body
    first, second = _access(proxy, 2)[:2]
    assert first["status"] == 200 and "broke mid-response" in first["error"], first
    assert "the upstream is overloaded right now" in second["error"], second
    page = get(proxy.port, "/metrics").body.decode()
    assert 'agproxy_streams_failed_total{upstream="fake",model="claude-x"} 2' in page, page


def test_polls_that_go_well_are_logged_at_debug_and_failures_at_info(start_agproxy, fake):
    """An open status page polls every 3 s and a scraper every 15 s: their access lines would
    drown the requests' in an info log."""
    proxy = start_agproxy(fake_config(fake, log_format="json"))
    for path in ("/metrics", "/healthz", "/v1/agproxy/status", "/v1/models"):
        assert get(proxy.port, path).status == 200
    assert [line["path"] for line in _access(proxy, 1)] == ["/v1/models"]


def test_a_poll_that_fails_is_logged_at_info(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, log_format="json", auth_mode="strict", api_key="sk-local-k-0123"))
    assert get(proxy.port, "/metrics").status == 401
    assert [(line["path"], line["status"]) for line in _access(proxy, 1)] == [("/metrics", 401)]


def test_an_upstreams_words_cannot_forge_a_line_of_the_text_log(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    forged = "nope\n2026-12-04 08:00:00,000 INFO agproxy.access: req_forged FORGED\u2028x\r\n\x85y"
    fake.script(Json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": forged}}))
    with pytest.raises(anthropic.BadRequestError):
        _client(proxy).messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    deadline = time.monotonic() + 5
    while " POST /v1/messages 400 " not in proxy.log() and time.monotonic() < deadline:  # the real access line
        time.sleep(0.02)
    lines = proxy.log().split("\n")
    assert not any(line.startswith("2026-12-04 08:00:00,000") for line in lines), proxy.log()
    assert not any(c in proxy.log() for c in "\u2028\x85\r"), proxy.log()
    assert sum("FORGED" in line for line in lines) >= 2  # said, escaped, in the attempt's line and the access line
