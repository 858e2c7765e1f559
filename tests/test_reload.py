"""Change without a restart: SIGHUP, ``POST /v1/agproxy/reload`` and ``watch_config`` read the
config file again; a bad one is refused and the running config stays; accounts that did not
change keep their rests; requests in flight finish on the config they began with; the flags keep
overriding; a host or port change waits for a restart; every copy of the config is replaced (the
front door, the shell's limits, the redactor's keys, the pool)."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Optional

import anthropic
import pytest

import agproxy
from tests.conftest import fake_config
from tests.fakes.anthropic_upstream import FakeAnthropic, Json, Sse, text_stream


def _get(proxy: Any, path: str, key: Optional[str] = None) -> Any:
    request = urllib.request.Request(proxy.url + path, headers={"x-api-key": key} if key else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _reload(proxy: Any, body: bytes = b"", key: Optional[str] = None) -> Any:
    headers = {"Content-Type": "application/json", **({"x-api-key": key} if key else {})}
    request = urllib.request.Request(proxy.url + "/v1/agproxy/reload", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _rewrite(proxy: Any, config: Dict[str, Any]) -> None:
    Path(proxy.config.source).write_text(json.dumps(config))


def _accounts(proxy: Any, key: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    return {f"{a['upstream']}/{a['account']}": a for a in _get(proxy, "/v1/agproxy/accounts", key)["accounts"]}


def _ask(proxy: Any, key: str = "sk-local", **kw: Any) -> Any:
    client = anthropic.Anthropic(base_url=proxy.url, api_key=key, max_retries=0)
    return client.messages.create(model="claude-x", max_tokens=20, messages=[{"role": "user", "content": "hi"}], **kw)


def test_post_reload_applies_the_file_and_says_what_changed(start_agproxy, fake):
    config = fake_config(fake)
    proxy = start_agproxy(config)
    config["upstreams"][0]["accounts"].append({"name": "carol@example.com", "api_key": "sk-upstream-carol"})
    config["max_retry_attempts"] = 5
    _rewrite(proxy, config)
    status, answer = _reload(proxy)
    assert status == 200 and answer["reloaded"] is True, answer
    assert "upstream 'fake': account 'carol@example.com' added" in answer["changes"]
    assert "max_retry_attempts: 3 -> 5" in answer["changes"]
    assert "fake/carol@example.com" in _accounts(proxy)
    assert "config reloaded from" in proxy.log() and "sk-upstream-carol" not in proxy.log()


def test_a_bad_config_is_refused_and_the_running_one_stays(start_agproxy, fake):
    config = fake_config(fake)
    proxy = start_agproxy(config)
    _rewrite(proxy, dict(config, max_retry_attemps=5))
    status, answer = _reload(proxy)
    assert status == 400 and answer["error"]["type"] == "invalid_request_error"
    assert "max_retry_attemps" in answer["error"]["message"] and "running config stays" in answer["error"]["message"]
    Path(proxy.config.source).write_text("{not json")
    status, answer = _reload(proxy)
    assert status == 400 and "invalid JSON" in answer["error"]["message"]
    assert _ask(proxy).content[0].text  # still serving the config it had
    assert "the config was not reloaded" in proxy.log()


def test_a_reload_takes_no_body(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    status, answer = _reload(proxy, b'{"upstreams": []}')
    assert status == 400 and "empty body" in answer["error"]["message"]


def test_unchanged_accounts_keep_their_rests_and_a_new_key_starts_afresh(start_agproxy, fake):
    config = fake_config(fake)
    proxy = start_agproxy(config)
    limited = Json(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}},
                   [("retry-after", "600")])
    fake.script_for("sk-upstream-alice", limited)
    fake.script_for("sk-upstream-bob", limited)
    with pytest.raises(anthropic.RateLimitError):
        _ask(proxy)
    before = _accounts(proxy)
    assert before["fake/alice@example.com"]["state"] == before["fake/bob@example.com"]["state"] == "rate_limited"
    config["upstreams"][0]["accounts"][1]["api_key"] = "sk-upstream-bob-new"
    _rewrite(proxy, config)
    status, answer = _reload(proxy)
    assert status == 200 and any("'bob@example.com' has a new key" in line for line in answer["changes"]), answer
    after = _accounts(proxy)
    assert after["fake/alice@example.com"]["state"] == "rate_limited"
    assert after["fake/alice@example.com"]["resting_until"] == before["fake/alice@example.com"]["resting_until"]
    assert after["fake/bob@example.com"]["state"] == "ok" and after["fake/bob@example.com"]["requests"] == 0
    assert _ask(proxy).content  # bob's new key answers
    assert fake.keys()[-1] == "sk-upstream-bob-new"


def test_a_stream_in_flight_finishes_on_the_config_it_began_with(start_agproxy, fake):
    config = fake_config(fake)
    proxy = start_agproxy(config)
    fake.script(Sse(text_stream("one two three four five six"), delay_s=0.15))
    result: Dict[str, Any] = {}

    def stream() -> None:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="x", max_retries=0)
        with client.messages.stream(model="claude-x", max_tokens=20,
                                    messages=[{"role": "user", "content": "hi"}]) as events:
            result["text"] = events.get_final_text()

    thread = threading.Thread(target=stream)
    thread.start()
    time.sleep(0.3)
    with FakeAnthropic() as other:
        _rewrite(proxy, fake_config(other))  # the same upstream name, another server, other accounts
        config2 = fake_config(other)
        config2["upstreams"][0]["accounts"] = [{"name": "dave@example.com", "api_key": "sk-upstream-dave"}]
        _rewrite(proxy, config2)
        status, answer = _reload(proxy)
        assert status == 200, answer
        thread.join(10)
        assert result.get("text") == "one two three four five six"
        assert _ask(proxy).content and other.keys() == ["sk-upstream-dave"]
    assert "internal error" not in proxy.log()


def test_every_copy_of_the_config_is_replaced(start_agproxy, fake):
    """The front door (auth turned on), the shell's limits (max_body_bytes) and the redactor (a key
    the reload adds, echoed by the upstream) all follow the reloaded config."""
    config = fake_config(fake)
    proxy = start_agproxy(config)
    config.update(auth_mode="strict", api_key="sk-local-new-key-0123", max_body_bytes=2048)
    config["upstreams"][0]["accounts"][0]["api_key"] = "sk-upstream-echoed-0123456789"
    config["upstreams"][0]["accounts"] = config["upstreams"][0]["accounts"][:1]
    _rewrite(proxy, config)
    assert _reload(proxy)[0] == 200
    with pytest.raises(anthropic.AuthenticationError):
        _ask(proxy, key="sk-local")
    with pytest.raises(anthropic.APIStatusError) as too_big:
        _ask(proxy, key="sk-local-new-key-0123", system="x" * 4096)
    assert too_big.value.status_code == 413
    fake.script(Json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                      "message": "bad key sk-upstream-echoed-0123456789 here"}}))
    with pytest.raises(anthropic.BadRequestError) as echoed:
        _ask(proxy, key="sk-local-new-key-0123")
    assert "sk-upstream-echoed-0123456789" not in str(echoed.value.body)
    assert "sk-upstream-echoed-0123456789" not in proxy.log() and "sk-local-new-key-0123" not in proxy.log()


def test_a_host_change_waits_for_a_restart_and_the_rest_is_applied(start_agproxy, fake):
    """(The port comes from --port, which keeps overriding the file's.)"""
    config = fake_config(fake)
    proxy = start_agproxy(config)
    _rewrite(proxy, dict(config, host="localhost", port=18999, max_retry_attempts=4))
    status, answer = _reload(proxy)
    assert status == 200 and "max_retry_attempts: 3 -> 4" in answer["changes"]
    assert 'host: "127.0.0.1" -> "localhost" needs a restart (until then agproxy keeps "127.0.0.1")' \
        in answer["changes"], answer
    assert not any(line.startswith("port") for line in answer["changes"])
    assert _get(proxy, "/healthz")["status"] == "ok"  # still on the port it listens on
    assert proxy.server.config.max_retry_attempts == 4


def test_the_command_lines_flags_keep_overriding(start_agproxy, fake):
    config = fake_config(fake, log_level="warning")
    proxy = start_agproxy(config, "--log-level", "debug")
    _rewrite(proxy, dict(config, max_retry_attempts=2))
    assert _reload(proxy)[0] == 200
    assert proxy.server.config.log_level == "debug" and proxy.server.config.port != 8045


def test_watch_config_reloads_a_changed_file_and_leaves_a_broken_one(start_agproxy, fake):
    config = fake_config(fake, watch_config=True)
    proxy = start_agproxy(config)
    config["upstreams"][0]["accounts"].append({"name": "erin@example.com", "api_key": "sk-upstream-erin"})
    _rewrite(proxy, config)
    deadline = time.monotonic() + 10
    while "fake/erin@example.com" not in _accounts(proxy) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "fake/erin@example.com" in _accounts(proxy)
    assert "the config file changed: config reloaded" in proxy.log()
    Path(proxy.config.source).write_text('{"upstreams": [{"name": "x", "kind": "nope"}]}')
    deadline = time.monotonic() + 10
    while "the config was not reloaded" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "upstreams[0].kind" in proxy.log()
    assert "fake/erin@example.com" in _accounts(proxy)


def test_sighup_reloads_the_config_file(start_agproxy, fake, tmp_path):
    config = fake_config(fake)
    proxy = start_agproxy(config, process=True)
    path = tmp_path / "agproxy-0.json"
    config["upstreams"][0]["accounts"].append({"name": "frank@example.com", "api_key": "sk-upstream-frank"})
    path.write_text(json.dumps(config))
    proxy.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "SIGHUP: config reloaded" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "account 'frank@example.com' added" in proxy.log(), proxy.log()
    path.write_text("[1, 2")
    proxy.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "SIGHUP: the config was not reloaded" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.proc.poll() is None and "invalid JSON" in proxy.log()
    assert "fake/frank@example.com" in _accounts(proxy)


def test_config_changes_never_show_a_key():
    before = agproxy.config_from_dict({"api_key": "sk-local-old-0123456789", "upstreams": [
        {"name": "u", "kind": "anthropic", "base_url": "http://x", "headers": {"X-Token": "tok-old-0123456789"},
         "accounts": [{"name": "a", "api_key": "sk-upstream-old-0123456789"}]}]}, {}, "c.json")
    after = agproxy.config_from_dict({"api_key": "sk-local-new-0123456789", "upstreams": [
        {"name": "u", "kind": "anthropic", "base_url": "http://x", "headers": {"X-Token": "tok-new-0123456789"},
         "accounts": [{"name": "a", "api_key": "sk-upstream-new-0123456789"}]}]}, {}, "c.json")
    said = " ".join(agproxy.config_changes(before, after))
    assert "api_key changed" in said and "headers changed" in said and "has a new key" in said
    assert "0123456789" not in said


def test_a_config_file_gone_for_a_moment_is_an_error_not_the_demo(start_agproxy, fake, tmp_path):
    """Started from ./agproxy.json (the lookup, no --config): a reload while the file is away must not
    fall back to the built-in demo (auth off, no upstream) but keep the running config."""
    config = fake_config(fake, auth_mode="strict", api_key="sk-local-strict-0123")
    (tmp_path / "agproxy.json").write_text(json.dumps(config))
    proxy = start_agproxy(None)
    (tmp_path / "agproxy.json").rename(tmp_path / "away.json")
    proxy.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "the config was not reloaded" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "cannot read" in proxy.log() and "built-in demo" not in proxy.log().split("listening")[-1], proxy.log()
    with pytest.raises(urllib.error.HTTPError) as refused:
        _get(proxy, "/v1/agproxy/accounts")
    assert refused.value.code == 401
    assert "fake/alice@example.com" in _accounts(proxy, "sk-local-strict-0123")


def test_a_config_path_that_is_not_a_regular_file_is_refused_at_once(start_agproxy, fake):
    """A FIFO in the config's place would block the event loop on open (and /dev/zero never end)."""
    import os
    proxy = start_agproxy(fake_config(fake))
    path = Path(proxy.config.source)
    path.unlink()
    os.mkfifo(path)
    started = time.monotonic()
    status, answer = _reload(proxy)
    assert status == 400 and "is not a regular file" in answer["error"]["message"], answer
    assert time.monotonic() - started < 5
    path.unlink()
    path.symlink_to("/dev/zero")
    status, answer = _reload(proxy)
    assert status == 400 and "is not a regular file" in answer["error"]["message"], answer
    assert _get(proxy, "/healthz")["status"] == "ok"


def test_a_host_served_before_a_reload_is_refused_after_one_that_drops_it(start_agproxy, fake):
    """With auth off, the Host values found served are remembered (each is looked at once): a reload
    whose server_names no longer name one forgets it, so a DNS-rebinding page cannot ride on it."""
    import http.client

    def status_for(host: str) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        connection.request("GET", "/v1/models", headers={"Host": host})
        status = connection.getresponse().status
        connection.close()
        return status

    config = dict(fake_config(fake), server_names=["agproxy.internal"])
    proxy = start_agproxy(config)
    assert [status_for("agproxy.internal:8045") for _ in range(2)] == [200, 200]
    config.pop("server_names")
    _rewrite(proxy, config)
    assert _reload(proxy)[0] == 200
    assert status_for("agproxy.internal:8045") == 421 and status_for("localhost:8045") == 200
