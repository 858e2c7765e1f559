"""One gateway for a whole team (issue 20): a key per person or job (``clients``, in plain text or
as its SHA-256), the models and upstreams each may use, ``admin_api_key`` for agproxy's own routes,
the client's name in the record and from there in the log, metrics, ledger and page, ``GET
/v1/agproxy/me`` and ``agproxy keys``. Several clients at once, over real sockets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import anthropic
import pytest

import agproxy
from tests.conftest import AGPROXY, clean_env, fake_config

ALICE = "sk-client-alice-0123456789abcdef"
BOB = "sk-client-bob-0123456789abcdef"
CAROL = "agp-carol-key-0123456789abcdefghijkl"
ADMIN = "sk-admin-0123456789abcdef"
LOCAL = "sk-local-0123456789abcdef"


def team_config(fake: Any, **top: Any) -> Dict[str, Any]:
    config = fake_config(fake, auth_mode="strict", api_key=LOCAL, admin_api_key=ADMIN, log_format="json", clients=[
        {"name": "alice", "api_key": ALICE, "models": ["claude-sonnet-*"]},
        {"name": "bob", "api_key": BOB, "upstreams": ["fake"]},
        {"name": "carol", "api_key_sha256": agproxy.key_sha256(CAROL), "models": ["claude-haiku-*"]},
    ])
    config.update(top)
    return config


def call(proxy: Any, path: str, key: Optional[str], body: Union[Dict[str, Any], bytes, None] = None
         ) -> Tuple[int, Dict[str, Any]]:
    """GET, or POST ``body`` (an empty body for ``{}``; bytes as they are, for what json.dumps
    cannot write, such as a member given twice)."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    if body is None or isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body).encode() if body else b""
    request = urllib.request.Request(proxy.url + path, data=data, headers=headers,
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw[:1] in (b"{", b"[") else {"text": raw.decode()}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def ask(model: str = "claude-sonnet-4-5") -> Dict[str, Any]:
    return {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def test_each_client_gets_only_its_models_and_upstreams(start_agproxy, fake):
    proxy = start_agproxy(team_config(fake))
    assert call(proxy, "/v1/messages", ALICE, ask("claude-sonnet-4-5"))[0] == 200
    status, error = call(proxy, "/v1/messages", ALICE, ask("claude-opus-4-5"))
    assert status == 403 and error["error"]["type"] == "permission_error", error
    assert "'claude-opus-4-5'" in error["error"]["message"] and "alice" in error["error"]["message"]
    assert call(proxy, "/v1/messages", CAROL, ask("claude-haiku-4-5"))[0] == 200  # a key given as its SHA-256
    assert call(proxy, "/v1/messages", CAROL, ask("claude-sonnet-4-5"))[0] == 403
    assert call(proxy, "/v1/messages", BOB, ask("anything-at-all"))[0] == 200
    assert call(proxy, "/v1/messages/count_tokens", ALICE, ask("claude-opus-4-5"))[0] == 403
    assert [m["id"] for m in call(proxy, "/v1/models", BOB)[1]["data"]] == ["claude-fake"]  # what the fake lists
    assert call(proxy, "/v1/models", CAROL)[1]["data"] == []  # none of it is carol's
    assert call(proxy, "/v1/models/claude-opus-4-5", CAROL)[0] == 403  # not a 404 that says what exists
    assert call(proxy, "/v1/messages", LOCAL, ask("claude-opus-4-5"))[0] == 200  # api_key: every model


def test_a_client_limited_to_other_upstreams_is_refused_naming_the_model(start_agproxy, fake):
    config = team_config(fake)
    config["upstreams"].append({"name": "other", "kind": "demo"})
    config["model_map"] = [{"match": "demo-*", "upstream": "other"}, {"match": "*", "upstream": "fake"}]
    proxy = start_agproxy(config)
    status, error = call(proxy, "/v1/messages", BOB, ask("demo-1"))
    assert status == 403 and "'demo-1'" in error["error"]["message"]
    assert "other" not in error["error"]["message"]  # the upstreams outside its entry are not named
    assert call(proxy, "/v1/messages", ALICE, ask("claude-sonnet-4-5"))[0] == 200


def test_a_model_outside_a_clients_entry_is_403_before_it_is_routed(start_agproxy, fake):
    """No 404 "no model_map rule" that would tell a client which models exist beyond its own."""
    config = team_config(fake)
    config["model_map"] = [{"match": "claude-sonnet-*", "upstream": "fake"}]
    proxy = start_agproxy(config)
    for model in ("claude-opus-4-5", "secret-model"):
        status, error = call(proxy, "/v1/messages", ALICE, ask(model))
        assert status == 403 and "model_map" not in error["error"]["message"], error
        assert call(proxy, f"/v1/models/{model}", ALICE)[0] == 403
    assert call(proxy, "/v1/messages", LOCAL, ask("secret-model"))[0] == 404  # api_key: what it was


def test_the_keys_of_two_clients_in_one_request_are_refused(start_agproxy, fake):
    proxy = start_agproxy(team_config(fake))
    request = urllib.request.Request(proxy.url + "/v1/messages", data=json.dumps(ask()).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "x-api-key": ALICE,
                                              "Authorization": f"Bearer {BOB}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    error = json.loads(refused.value.read())["error"]
    assert refused.value.code == 401 and "2 clients" in error["message"] and ALICE not in error["message"]
    request = urllib.request.Request(proxy.url + "/v1/messages", data=json.dumps(ask()).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "x-api-key": "sk-ant-theirs-123",
                                              "Authorization": f"Bearer {ALICE}"})
    with urllib.request.urlopen(request, timeout=10) as answer:  # a stray key beside one client's is harmless
        assert answer.status == 200


def test_with_clients_auth_auto_asks_for_a_key_on_loopback_too(start_agproxy, fake):
    """Behind a reverse proxy on the same machine agproxy binds loopback; auth off would serve
    anyone sending no key (or a wrong one) past every client's models and limits."""
    config = team_config(fake, auth_mode="auto", api_key="")
    assert agproxy.config_from_dict(config, {}, "test").effective_auth_mode() == "all_except_health"
    proxy = start_agproxy(config)
    assert call(proxy, "/v1/messages", None, ask())[0] == 401
    assert call(proxy, "/v1/messages", "sk-nobody-0123456789", ask())[0] == 401
    assert call(proxy, "/v1/messages", ALICE, ask())[0] == 200
    del config["clients"]
    alone = agproxy.config_from_dict(config, {}, "test")
    assert alone.effective_auth_mode() == "off"  # one user's loopback agproxy, as before


def test_check_says_clients_with_auth_off_and_passes_clients_without_an_api_key(tmp_path):
    base = {"upstreams": [{"name": "demo", "kind": "demo"}], "clients": [{"name": "alice", "api_key": ALICE}]}
    for extra, verdict in (({}, None), ({"auth_mode": "strict"}, None), ({"auth_mode": "off"}, "WARN  config:")):
        path = tmp_path / "config.json"
        path.write_text(json.dumps(dict(base, **extra)))
        result = subprocess.run([sys.executable, str(AGPROXY), "check", "--config", str(path)], capture_output=True,
                                text=True, env=clean_env(XDG_STATE_HOME=str(tmp_path)), timeout=60)
        assert result.returncode == 0 and "api_key is empty" not in result.stdout, (extra, result.stdout)
        assert (verdict is not None) == ("auth_mode is off but clients are configured" in result.stdout), result.stdout
        assert ("neither admin_api_key nor api_key" in result.stdout) == (verdict is None)  # no one could administer
        assert ALICE not in result.stdout + result.stderr


def test_clients_written_as_an_object_of_keys_is_refused_without_showing_them(tmp_path):
    with pytest.raises(agproxy.ConfigError) as refused:
        agproxy.config_from_dict({"upstreams": [{"name": "demo", "kind": "demo"}], "clients": {"alice": CAROL}}, {},
                                 "test")
    assert "clients: must be a list" in refused.value.message and CAROL not in refused.value.message
    assert agproxy.Redactor([]).text(f"echoed {CAROL}!") == "echoed [redacted]!"  # agproxy's keys look like keys


def test_unknown_and_missing_keys_are_401(start_agproxy, fake):
    proxy = start_agproxy(team_config(fake))
    status, error = call(proxy, "/v1/messages", "sk-nobody-0123456789", ask())
    assert status == 401 and "invalid API key" in error["error"]["message"]
    status, error = call(proxy, "/v1/messages", None, ask())
    assert status == 401 and "missing API key" in error["error"]["message"]


def test_agproxys_own_routes_need_the_admin_key(start_agproxy, fake):
    proxy = start_agproxy(team_config(fake))
    for path in ("/v1/agproxy/accounts", "/v1/agproxy/stats", "/v1/agproxy/usage", "/v1/agproxy/status",
                 "/metrics"):
        for key in (ALICE, LOCAL):
            status, error = call(proxy, path, key)
            assert status == 403 and error["error"]["type"] == "permission_error", (path, key, error)
        assert call(proxy, path, ADMIN)[0] == 200, path
    status, error = call(proxy, "/v1/agproxy/reload", BOB, {})
    assert status == 403 and "client 'bob'" in error["error"]["message"]
    assert ALICE not in json.dumps(error) and BOB not in json.dumps(error)


def test_without_an_admin_key_api_key_is_the_admin(start_agproxy, fake):
    proxy = start_agproxy(team_config(fake, admin_api_key=""))
    assert call(proxy, "/v1/agproxy/accounts", LOCAL)[0] == 200
    assert call(proxy, "/v1/agproxy/accounts", BOB)[0] == 403


def test_me_shows_a_client_its_models_limits_and_usage_today(start_agproxy, fake):
    config = team_config(fake)
    config["clients"][0].update(requests_per_minute=60, tokens_per_day=100000)
    proxy = start_agproxy(config)
    for _ in range(2):
        assert call(proxy, "/v1/messages", ALICE, ask())[0] == 200
    status, me = call(proxy, "/v1/agproxy/me", ALICE)
    assert status == 200 and me["client"] == "alice" and me["models"] == ["claude-sonnet-*"]
    assert me["limits"]["requests_per_minute"] == 60 and me["limits"]["tokens_per_day"] == 100000
    assert me["usage"]["today"]["requests"] == 2 and me["usage"]["today"]["input_tokens"] == 24
    assert call(proxy, "/v1/agproxy/me", BOB)[1]["usage"]["today"]["requests"] == 0
    assert call(proxy, "/v1/agproxy/me", ADMIN)[0] == 403


def test_the_clients_name_goes_to_the_log_metrics_ledger_and_page_and_no_key_anywhere(start_agproxy, fake):
    proxy = start_agproxy(team_config(fake, log_level="debug"))
    anthropic.Anthropic(base_url=proxy.url, api_key=ALICE, max_retries=0).messages.create(**ask())
    anthropic.Anthropic(base_url=proxy.url, auth_token=BOB, max_retries=0).messages.create(**ask("m-bob"))
    call(proxy, "/v1/messages", CAROL, ask("claude-opus-4-5"))  # refused
    status, usage = call(proxy, "/v1/agproxy/usage?group_by=client", ADMIN)
    assert status == 200
    by_client = {row["client"]: row for row in usage["rows"]}
    assert by_client["alice"]["requests"] == 1 and by_client["bob"]["requests"] == 1
    assert by_client["carol"]["errors"] == 1
    page = urllib.request.urlopen(urllib.request.Request(proxy.url + "/metrics", headers={
        "Authorization": f"Bearer {ADMIN}"}), timeout=10).read().decode()
    assert re.search(r'agproxy_tokens_total\{[^}]*client="alice"[^}]*direction="input"\} 12', page), page
    status, board = call(proxy, "/v1/agproxy/status", ADMIN)
    assert {r.get("client") for r in board["requests"]} >= {"alice", "bob", "carol"}
    access = [json.loads(line) for line in proxy.log().splitlines() if '"event": "access"' in line]
    assert {line.get("client") for line in access} >= {"alice", "bob", "carol"}
    for text in (proxy.log(), page, json.dumps(board), json.dumps(usage)):
        for key in (ALICE, BOB, CAROL, ADMIN, LOCAL):
            assert key not in text


def test_a_reload_that_removes_a_client_locks_it_out_at_once(start_agproxy, fake):
    config = team_config(fake)
    proxy = start_agproxy(config)
    assert call(proxy, "/v1/messages", BOB, ask())[0] == 200
    config["clients"] = [c for c in config["clients"] if c["name"] != "bob"]
    Path(proxy.config.source).write_text(json.dumps(config))
    status, answer = call(proxy, "/v1/agproxy/reload", ADMIN, {})
    assert status == 200 and "client 'bob' removed" in answer["changes"], answer
    assert call(proxy, "/v1/messages", BOB, ask())[0] == 401
    assert call(proxy, "/v1/messages", ALICE, ask())[0] == 200


@pytest.mark.parametrize("clients, said", [
    ([{"name": "a", "api_key": "k-0123456789"}, {"name": "a", "api_key": "k-9876543210"}], "'a' is used twice"),
    ([{"name": "a", "api_key": "k-0123456789"}, {"name": "b", "api_key": "k-0123456789"}],
     "its key is also client 'a''s"),
    ([{"name": "a", "api_key": LOCAL}], "its key is also api_key's"),
    ([{"name": "a", "api_key_sha256": agproxy.key_sha256(ADMIN)}], "its key is also admin_api_key's"),
    ([{"name": "a", "api_key": "k-0123456789", "api_key_sha256": "0" * 64}], "exactly one of"),
    ([{"name": "a"}], "exactly one of"),
    ([{"name": "a", "api_key_sha256": "ABC"}], "64 lowercase hex digits"),
    ([{"name": "a b", "api_key": "k-0123456789"}], "letters, digits"),
    ([{"name": "a", "api_key": "k-0123456789", "upstreams": ["nope"]}], "no upstream is named"),
    ([{"name": "a", "api_key": "k-0123456789", "tokens_per_day": -1}], "tokens_per_day"),
    ([{"name": "a", "api_key": ["k-0123456789-secret"]}], "its value is not shown"),
])
def test_client_entries_are_checked(clients, said):
    raw = {"api_key": LOCAL, "admin_api_key": ADMIN, "upstreams": [{"name": "d", "kind": "demo"}],
           "clients": clients}
    with pytest.raises(agproxy.ConfigError) as refused:
        agproxy.config_from_dict(raw, {}, "c.json")
    assert said in refused.value.message, refused.value.message
    for client in clients:
        assert str(client.get("api_key")) not in refused.value.message or client.get("api_key") is None


def test_keys_new_prints_a_key_once_and_the_entry_to_paste(tmp_path):
    result = subprocess.run([sys.executable, str(AGPROXY), "keys", "new", "ci-job"], capture_output=True, text=True,
                            env=clean_env(HOME=str(tmp_path)), timeout=30)
    assert result.returncode == 0, result.stderr
    key = next(line for line in result.stdout.splitlines() if line.startswith("agp-"))
    assert len(key) >= 32 and re.fullmatch(r"[A-Za-z0-9_-]+", key)
    entry = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert entry == {"name": "ci-job", "api_key_sha256": agproxy.key_sha256(key)}
    assert result.stdout.count(key) == 1  # once, and the line to give the person points at it
    assert "ANTHROPIC_BASE_URL=http://HOST:PORT ANTHROPIC_AUTH_TOKEN=<the key above> claude" in result.stdout
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"upstreams": [{"name": "d", "kind": "demo"}],
                                  "clients": [entry, {"name": "plain", "api_key": "sk-plain-0123456789"}]}))
    listed = subprocess.run([sys.executable, str(AGPROXY), "keys", "list", "--config", str(config)],
                            capture_output=True, text=True, env=clean_env(HOME=str(tmp_path)), timeout=30)
    assert listed.returncode == 0 and listed.stdout.splitlines() == [
        f"ci-job\t{entry['api_key_sha256'][:12]}", f"plain\t{agproxy.key_sha256('sk-plain-0123456789')[:12]}"]
    assert key not in listed.stdout and "sk-plain-0123456789" not in listed.stdout


def test_a_client_key_works_with_auth_off_too_and_names_the_client(start_agproxy, fake):
    """On loopback (auth off) a request without a key is served as before; one with a client's key is
    that client's, with its models and its name in the record."""
    proxy = start_agproxy(team_config(fake, auth_mode="off"))
    assert call(proxy, "/v1/messages", None, ask("claude-opus-4-5"))[0] == 200
    assert call(proxy, "/v1/messages", ALICE, ask("claude-opus-4-5"))[0] == 403
    time.sleep(0.1)
    assert call(proxy, "/v1/agproxy/me", ALICE)[1]["client"] == "alice"


def test_the_start_says_who_may_do_what_and_warns_of_a_team_without_an_admin(start_agproxy, fake):
    config = team_config(fake, admin_api_key="", api_key="")
    config["clients"].append({"name": "weak", "api_key": "short-key"})
    proxy = start_agproxy(config)
    log = proxy.log()
    assert "auth: strict; api_key not set, 4 client key(s), admin key for agproxy's own routes: none" in log
    assert "neither admin_api_key nor api_key: no key reaches agproxy's own routes" in log
    assert "client 'weak': its key is shorter than 16 characters" in log and "short-key" not in log
    status, error = call(proxy, "/v1/messages", None, ask())
    assert status == 401 and "your own key" in error["error"]["message"]


def test_me_counts_the_last_minute_of_a_client_without_a_minute_limit(start_agproxy, fake):
    proxy = start_agproxy(team_config(fake))
    for _ in range(3):
        assert call(proxy, "/v1/messages", BOB, ask())[0] == 200
    assert call(proxy, "/v1/agproxy/me", BOB)[1]["limits_now"]["requests_last_minute"] == 3


@pytest.mark.parametrize("second", [b'"model"', b'"mod\\u0065l"'])
@pytest.mark.parametrize("padding", [0, 20_000])  # below and above the size read member by member
@pytest.mark.parametrize("stream", [b"", b',"stream":true', b',"stream":false'])
def test_a_model_given_twice_is_refused_not_sent_as_the_client_wrote_it(start_agproxy, fake, second, padding, stream):
    """A body that names its model twice: agproxy reads the last (a model alice may use), and sent
    the client's own bytes, where an upstream that reads the first would serve a model her key does
    not allow. It is refused, whatever the spelling and size, and nothing reaches the upstream."""
    proxy = start_agproxy(team_config(fake))
    pad = b',"metadata":{"user_id":"' + b"u" * padding + b'"}' if padding else b""
    body = (b'{"model":"claude-opus-4-1","max_tokens":16,"messages":[{"role":"user","content":"hi"}]' + pad
            + b"," + second + b':"claude-sonnet-4-5"' + stream + b"}")
    status, answer = call(proxy, "/v1/messages", ALICE, body)
    assert status == 400 and answer["error"]["type"] == "invalid_request_error", answer
    assert "'model' twice" in answer["error"]["message"]
    assert not [r for r in fake.requests if r.target.startswith("/v1/messages")]


def test_a_member_given_twice_inside_the_request_is_read_as_before(start_agproxy, fake):
    """Only the request object's own members are refused when repeated: inside it (a content block
    here) the last saying counts, as it did, and the request goes through."""
    proxy = start_agproxy(team_config(fake))
    body = (b'{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":'
            b'[{"type":"text","text":"first","text":"hi"}]}]}')
    status, answer = call(proxy, "/v1/messages", ALICE, body)
    assert status == 200 and answer["type"] == "message", answer


def test_the_chat_completions_path_refuses_a_model_given_twice(start_agproxy, fake):
    proxy = start_agproxy(team_config(fake))
    body = b'{"model":"claude-opus-4-1","messages":[{"role":"user","content":"hi"}],"model":"claude-sonnet-4-5"}'
    status, answer = call(proxy, "/v1/chat/completions", ALICE, body)
    assert status == 400 and "'model' twice" in answer["error"]["message"], answer
    assert not [r for r in fake.requests if r.target.startswith("/v1/messages")]
