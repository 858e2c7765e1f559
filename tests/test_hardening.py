"""One test per defect found by attacking agproxy (issue 10), each through a real agproxy process
and real sockets where the defect lived there; the pure pieces are tested without sockets.

Each test failed before its fix. The fault matrix (test_fault_matrix.py) and the fuzz tests
(test_fuzz.py) cover the same ground wholesale; these pin the exact cases the attack found.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List

import pytest

import agproxy
from tests.conftest import AGPROXY, RESET_HANG_UPS, clean_env, fake_config, hang_up_on_a_fake
from tests.fakes.anthropic_upstream import Json, Sse, text_stream
from tests.wire_check import build_request, exchange, get, post_json

ALICE, BOB = "sk-upstream-alice", "sk-upstream-bob"
SIMPLE = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def no_bad_header_bytes(answer: Any) -> None:
    head = bytes(answer.raw).split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line and b"\x00" not in line, line


# -- 1 and 3: header values ------------------------------------------------------------------------

@pytest.mark.parametrize("model", [
    "claude\r\nSet-Cookie: stolen=1\r\n\r\nHTTP/1.1 200 OK\r\nX: y",
    "claude\x00nul",
    "claude-sonnet-4-5-模型",
    "claude-\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
])
def test_a_hostile_or_foreign_model_name_cannot_split_or_drop_the_response(start_agproxy, fake, model):
    config = fake_config(fake)
    config["model_map"] = [{"match": "*", "upstream": "fake"}]
    proxy = start_agproxy(config)
    answer = post_json(proxy.port, "/v1/messages", dict(SIMPLE, model=model), 10)
    assert answer.status == 200, answer.describe()
    no_bad_header_bytes(answer)
    assert answer.header("Set-Cookie") is None
    assert [k for k, _ in answer.headers].count("X-Mapped-Model") == 1
    assert len(fake.requests) == 1  # and the answer the upstream was paid for reached the client


def test_an_account_named_in_any_script_is_reported_encoded(start_agproxy, fake):
    config = fake_config(fake)
    config["upstreams"][0]["accounts"] = [{"name": "佐藤@example.jp", "api_key": ALICE}]
    proxy = start_agproxy(config)
    answer = post_json(proxy.port, "/v1/messages", SIMPLE, 10)
    assert answer.status == 200, answer.describe()
    assert answer.header("X-Account-Email") == "%E4%BD%90%E8%97%A4@example.jp"


def test_the_head_builder_refuses_nothing_and_lets_no_control_character_through():
    head = agproxy.response_head(200, [("X-A", "a\r\nB: c\x00"), ("bad name", "x"), ("X-B", "\ud800é")])
    assert head == b"HTTP/1.1 200 OK\r\nX-A: a  B: c \r\nX-B: %ED%A0%80%C3%A9\r\n\r\n"


# -- 2: absurd resets ----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1e12", "inf", "1e400", "999999999", "nan", "-inf",
                                   "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_no_reset_an_upstream_names_rests_an_account_past_the_maximum(value):
    reset = agproxy.rate_limit_reset([("retry-after", value)], b"", time.time())
    assert reset is None or 0 <= reset <= agproxy.MAX_COOLDOWN_S


def test_a_400_digit_reset_and_a_thousand_limits_in_a_row_are_bounded():
    headers = [("x-ratelimit-reset-requests", "9" * 400), ("x-ratelimit-remaining-requests", "0")]
    assert agproxy.rate_limit_reset(headers, b"", time.time()) == agproxy.MAX_COOLDOWN_S
    assert agproxy.decide(agproxy.Outcome(429), 1, 3, limits_in_a_row=5000).cooldown_s == agproxy.MAX_COOLDOWN_S


def test_an_absurd_retry_after_leaves_the_accounts_page_and_a_restart_working(start_agproxy, fake, tmp_path):
    state = tmp_path / "state.json"
    config = fake_config(fake, state_file=str(state))
    config["upstreams"][0]["accounts"] = config["upstreams"][0]["accounts"][:1]
    fake.script_for(ALICE, Json(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}},
                                [("retry-after", "1e12")]))
    proxy = start_agproxy(config)
    first = post_json(proxy.port, "/v1/messages", SIMPLE, 10)
    assert first.status == 429, first.describe()
    assert first.header("retry-after") in ("3600", str(int(agproxy.MAX_COOLDOWN_S)))
    page = get(proxy.port, "/v1/agproxy/accounts")
    assert page.status == 200, page.describe()
    again = post_json(proxy.port, "/v1/messages", SIMPLE, 10)
    assert again.status == 429, again.describe()
    proxy.stop()
    saved = json.loads(state.read_text())
    assert saved["accounts"]["fake/alice@example.com"]["resting_until"] <= time.time() + agproxy.MAX_COOLDOWN_S + 5
    restarted = start_agproxy(config)
    assert get(restarted.port, "/v1/agproxy/accounts").status == 200


# -- 4: keys never reach a client or the log ------------------------------------------------------

def test_an_upstream_that_echoes_the_key_has_it_redacted_everywhere(start_agproxy, fake):
    alice, bob = "sk-upstream-SECRET-alice-0123456789", "sk-upstream-SECRET-bob-0123456789"
    config = fake_config(fake)
    config["upstreams"][0]["accounts"] = [{"name": "alice", "api_key": alice}, {"name": "bob", "api_key": bob}]
    fake.script_for(alice, Json(401, {"type": "error", "error": {"type": "authentication_error",
                                                                 "message": f"invalid x-api-key {alice}"}}))
    fake.script_for(bob, Json(400, {"type": "error", "error": {
        "type": "invalid_request_error", "message": f"key {bob}, {alice} and sk-ant-api03-abcdefghijklmnop"}},
        [("x-ratelimit-limit-requests", bob)]))
    proxy = start_agproxy(config, "--log-level", "debug")
    echoed = post_json(proxy.port, "/v1/messages", SIMPLE, 10)
    assert echoed.status == 400, echoed.describe()
    assert fake.keys() == [alice, bob]
    for secret in (alice.encode(), bob.encode(), b"sk-ant-api03"):
        assert secret not in bytes(echoed.raw)
    proxy.stop()
    assert alice not in proxy.log()
    assert bob not in proxy.log()


def test_log_lines_have_every_key_hidden(capsys):
    agproxy.configure_logging("debug", agproxy.Redactor(["sk-upstream-SECRET-0123456789"]))
    log = agproxy.logging.getLogger("agproxy")
    log.warning("upstream said %s", "invalid key sk-upstream-SECRET-0123456789")
    try:
        raise ValueError("with sk-upstream-SECRET-0123456789 inside")
    except ValueError:
        log.exception("failed: Bearer abcdefghijklmnopqrstuvwxyz")
    log.handlers[:] = []
    log.propagate = True
    err = capsys.readouterr().err
    assert "SECRET" not in err and "abcdefghijklmnop" not in err and err.count("[redacted]") >= 3, err


# -- 5: a half-close is not a departure -----------------------------------------------------------

def send_and_half_close(sock: socket.socket, data: bytes) -> bytes:
    """Send ``data``, half-close (as curl and load balancers may), read everything until the close."""
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    received = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(received)
        received += chunk


def test_a_client_that_half_closes_after_its_requests_gets_every_answer(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake))
    body = json.dumps(SIMPLE).encode()
    one = build_request("POST", "/v1/messages", body, [("Content-Type", "application/json")])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        received = send_and_half_close(sock, one + one)
    assert received.count(b"HTTP/1.1 200 OK") == 2, bytes(received[:300])
    assert " 499 " not in proxy.log()


def test_a_client_that_resets_is_gone(start_agproxy, fake):
    fake.script(Sse(text_stream(), delay_s=0.5))
    proxy = start_agproxy(fake_config(fake))
    body = json.dumps(dict(SIMPLE, stream=True)).encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(build_request("POST", "/v1/messages", body, [("Content-Type", "application/json")]))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    deadline = time.monotonic() + 10
    while not fake.abandoned_at and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.abandoned_at, "agproxy kept reading the upstream for a client that reset"


@pytest.mark.parametrize("how", RESET_HANG_UPS)
def test_the_fake_counts_a_hang_up_by_reset_as_abandoned(fake, how):
    """agproxy's abort of a stream is a reset when bytes sit unread in its socket: the fake must record
    it in ``abandoned_at`` as it does a FIN (it once met it as a write error and recorded nothing)."""
    fake.script(Sse(text_stream(), delay_s=0.3))
    hang_up_on_a_fake(fake.port, "/v1/messages", json.dumps(dict(SIMPLE, stream=True)).encode(), how)
    deadline = time.monotonic() + 5
    while not fake.abandoned_at and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.abandoned_at, f"the fake missed a hang-up by {how}"


# -- 6: bad requests are 400s naming the field ----------------------------------------------------

BAD_REQUESTS = [
    (b'{"model":"m","max_tokens":5,"messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests deeper"),
    (b'{"model":"m\\ud800","max_tokens":5,"messages":[]}', "surrogate"),
    (b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"\\udfff"}]}', "surrogate"),
    (b'{"model":"m","max_tokens":5,"temperature":NaN,"messages":[]}', "not valid JSON"),
    (b'{"model":"m","max_tokens":5,"temperature":1e400,"messages":[]}', "not valid JSON"),
    (b'{"model":"m","max_tokens":5,"top_p":Infinity,"messages":[]}', "not valid JSON"),
]
BAD_FIELDS = [
    ({"tools": 5}, "tools"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages.0.content.0.text"),
    ({"tools": [{"name": ["a"], "input_schema": {}}]}, "tools.0.name"),
    ({"tools": [{"name": "a", "input_schema": {}}, "Bash"]}, "tools.1"),
    ({"tools": [{"name": "", "input_schema": {}}]}, "tools.0.name"),
    ({"tools": [{"name": "a", "type": 5}]}, "tools.0.type"),
    ({"tools": [{"name": "a", "description": ["x"], "input_schema": {}}]}, "tools.0.description"),
    ({"tools": [{"name": "a", "input_schema": []}]}, "tools.0.input_schema"),
    ({"tools": [{"name": "a", "type": "custom", "input_schema": "{}"}]}, "tools.0.input_schema"),
    ({"stop_sequences": 5}, "stop_sequences"),
    ({"stop_sequences": "END"}, "stop_sequences"),
    ({"tool_choice": {"type": "tool", "name": ["a"]}}, "tool_choice.name"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"thinking": {"type": "enabled", "budget_tokens": "lots"}}, "thinking.budget_tokens"),
    ({"system": [{"type": "text", "text": {"nested": 1}}]}, "system.0.text"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": 5}]}]},
     "messages.0.content.0.tool_use_id"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"model": "m" * 1000}, "model"),
    ({"metadata": "me"}, "metadata"),
    ({"top_k": 1.5}, "top_k"),
]


@pytest.fixture(scope="module")
def demo_proxy(tmp_path_factory):
    from tests.conftest import Agproxy
    home = tmp_path_factory.mktemp("home")
    proxy = Agproxy(["--port", "0"], clean_env(HOME=str(home)), home)
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("body, words", BAD_REQUESTS, ids=[w for _, w in BAD_REQUESTS])
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_malformed_json_is_a_400(demo_proxy, body, words, path):
    answer = post_json(demo_proxy.port, path, body, 20)
    assert answer.status == 400, answer.describe()
    assert words in json.loads(answer.body)["error"]["message"]


@pytest.mark.parametrize("change, field", BAD_FIELDS, ids=[f for _, f in BAD_FIELDS])
def test_a_field_of_the_wrong_type_is_a_400_naming_it(demo_proxy, change, field):
    answer = post_json(demo_proxy.port, "/v1/messages", dict(SIMPLE, **change), 10)
    assert answer.status == 400, answer.describe()
    error = json.loads(answer.body)["error"]
    assert error["type"] == "invalid_request_error" and error["message"].startswith(field + ":"), error


def test_the_openai_path_validates_the_same_way(start_agproxy, tmp_path):
    config = {"upstreams": [{"name": "local", "kind": "openai", "base_url": "http://127.0.0.1:9/v1",
                             "accounts": [{"name": "vllm", "api_key": "none"}]}], "state_file": ""}
    proxy = start_agproxy(config)
    deep = {"type": "text", "text": "x"}
    for _ in range(900):
        deep = [deep]
    for change in ({"system": deep}, {"stop_sequences": "END"}):
        answer = post_json(proxy.port, "/v1/messages", dict(SIMPLE, **change), 10)
        assert answer.status == 400, answer.describe()


# -- 9: what clients can grow ---------------------------------------------------------------------

def test_unknown_fields_do_not_grow_the_counters_without_bound(start_agproxy, fake):
    config = fake_config(fake)
    config["upstreams"][0]["profile"] = "compatible"
    proxy = start_agproxy(config)
    for round_ in range(3):
        extra = {f"field_{round_}_{i}": 1 for i in range(1000)}
        assert post_json(proxy.port, "/v1/messages", dict(SIMPLE, **extra), 20).status == 200
    stats = json.loads(get(proxy.port, "/v1/agproxy/stats").body)
    assert len(stats["counters"]) <= agproxy.MAX_COUNTER_KINDS + 10


def test_learned_rejections_are_bounded_and_a_state_file_cannot_strip_meaning():
    learned = agproxy.LearnedRejections()
    learned.load_json({"u": {"fields": ["messages", "model", "max_tokens", "tools.*.name", "x" * 500] +
                             [f"f{i}" for i in range(500)], "betas": ["b"] * 3}})
    assert "messages" not in learned.fields("u") and "model" not in learned.fields("u")
    assert "tools.*.name" not in learned.fields("u")
    assert len(learned.fields("u")) == agproxy.MAX_LEARNED
    assert learned.betas("u") == ["b"]


# -- 10: busy is not a rejected key ---------------------------------------------------------------

def test_accounts_that_are_only_busy_are_overloaded_not_rejected():
    upstream = agproxy.Upstream("u", "anthropic", "http://x", (agproxy.Account("a", "k", max_concurrency=1),))
    pool = agproxy.AccountPool([upstream])
    route = agproxy.Route((upstream,), "m")
    pool.begin(upstream, upstream.accounts[0])
    assert pool.choose(route, None, time.time()) is None
    error = pool.unavailable(route, time.time())
    assert (error.status, error.error_type) == (529, "overloaded_error")
    assert "busy" in error.message and "api_key" not in error.message
    assert agproxy.header_value(error.headers, "retry-after")


# -- 11: upstream headers -------------------------------------------------------------------------

def test_configured_headers_reach_an_anthropic_upstream(start_agproxy, fake):
    config = fake_config(fake)
    config["upstreams"][0]["headers"] = {"X-Team": "blue"}
    proxy = start_agproxy(config)
    assert post_json(proxy.port, "/v1/messages", SIMPLE, 10).status == 200
    assert fake.requests[-1].header("X-Team") == "blue"


# -- 12 and 15: the HTTP surface -------------------------------------------------------------------

@pytest.mark.parametrize("wire", [
    b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n",
    b"GET http://[::1/ HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_parser_inputs_that_dropped_the_connection_are_400(demo_proxy, wire):
    answer = exchange(demo_proxy.port, wire, 10)
    assert answer.status == 400, answer.describe()


def test_http_10_keep_alive_is_said_in_the_answer(demo_proxy):
    with socket.create_connection(("127.0.0.1", demo_proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = sock.recv(65536)
        assert b"\r\nConnection: keep-alive\r\n" in first
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")  # the same connection still answers
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


# -- 13: state files ------------------------------------------------------------------------------

@pytest.mark.parametrize("content, ours", [
    ('{"format":1,"learned":{"anth":{"fields":5,"betas":{"a":1}}},"accounts":{"x/y":{"resting_until":"soon"}}}', True),
    ('{"format":1,"learned":' + "[" * 5000 + "]" * 5000 + "}", False),
    ('{"format":1,"accounts":{"fake/alice@example.com":{"resting_until":1e308,"limits_in_a_row":1e9}}}', True),
    ("\x00\xff garbage", False),
])
def test_a_bad_state_file_is_reported_and_replaced_only_when_it_is_agproxys(start_agproxy, fake, tmp_path, content,
                                                                            ours):
    """agproxy's own file with bad sections is reported and replaced (its stale temporaries
    removed); a file agproxy cannot recognise as its own (no JSON it can read, or no
    ``"format": 1``) is reported and left alone, with everything beside it."""
    state = tmp_path / "state.json"
    state.write_bytes(content.encode("utf-8", "surrogateescape"))
    stale = tmp_path / "state.json.999999.tmp"
    stale.write_text("{}")
    proxy = start_agproxy(fake_config(fake, state_file=str(state)))
    answer = post_json(proxy.port, "/v1/messages", SIMPLE, 10)
    assert answer.status in (200, 429), answer.describe()
    assert get(proxy.port, "/v1/agproxy/accounts").status == 200
    assert stale.exists() is not ours
    assert ("is not agproxy's" in proxy.log()) is not ours, proxy.log()
    if not ours:
        assert state.read_bytes() == content.encode("utf-8", "surrogateescape")


# -- 14: config gaps ------------------------------------------------------------------------------

@pytest.mark.parametrize("change, words", [
    ({"timeout_s": float("nan")}, "upstreams[0].timeout_s: must be a finite number"),
    ({"base_url": "http://[::1"}, "upstreams[0].base_url: is not a valid URL"),
    ({"base_url": "http://user:pass@127.0.0.1:9"}, "upstreams[0].base_url: must not carry credentials"),
    ({"base_url": "http://127.0.0.1:9/v 1"}, "upstreams[0].base_url: must be a URL of printable ASCII"),
    ({"base_url": "http://127.0.0.1:9/v1\r\nX: y"}, "upstreams[0].base_url: must be a URL of printable ASCII"),
    ({"headers": {"X-A": "a\r\nInjected: 1"}}, "upstreams[0].headers.X-A: must be printable ASCII"),
    ({"accounts": [{"name": "a", "api_key": "ключ-123456"}]}, "upstreams[0].accounts[0].api_key"),
])
def test_config_gaps_are_exit_2_naming_the_key(tmp_path, change, words):
    upstream = {"name": "u", "kind": "anthropic", "base_url": "http://127.0.0.1:9",
                "accounts": [{"name": "a", "api_key": "k"}]}
    upstream.update(change)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"upstreams": [upstream]}))  # NaN is written as NaN, which Python reads
    done = subprocess.run([sys.executable, str(AGPROXY), "--config", str(path), "--port", "0"],
                          capture_output=True, text=True, timeout=20, env=clean_env())
    assert done.returncode == 2, done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "pass" not in done.stderr or "credentials" in done.stderr


def test_a_deeply_nested_config_is_exit_2(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"upstreams": ' + "[" * 100_000 + "]" * 100_000 + "}")
    done = subprocess.run([sys.executable, str(AGPROXY), "--config", str(path)], capture_output=True, text=True,
                          timeout=20, env=clean_env())
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


# -- the limits that were missing -------------------------------------------------------------------

def test_auth_is_checked_on_the_head_before_the_body_is_read(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, auth_mode="strict", api_key="sk-local-key-123"))
    head = (b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 30000000\r\nExpect: 100-continue\r\n\r\n")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(head)  # and not one byte of the body
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"100 Continue" not in answer
    for _ in range(100):  # the access line follows the answer
        if " POST /v1/messages 401 - - " in proxy.log():
            break
        time.sleep(0.02)
    assert " POST /v1/messages 401 - - " in proxy.log()  # the access line says what was refused


def test_a_client_that_never_reads_is_cut_and_frees_the_upstream(start_agproxy, fake):
    big = [("message_start", text_stream()[0][1])]
    chunk = "x" * 60_000
    for _ in range(400):  # ~24 MB of deltas: more than the socket buffers hold
        big.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": chunk}}))
    fake.script(Sse(big))
    proxy = start_agproxy(fake_config(fake, write_timeout_s=1))
    body = json.dumps(dict(SIMPLE, stream=True)).encode()
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.sendall(build_request("POST", "/v1/messages", body, [("Content-Type", "application/json")]))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            accounts = json.loads(get(proxy.port, "/v1/agproxy/accounts").body)["accounts"]
            if all(a["in_flight"] == 0 for a in accounts):
                break
            time.sleep(0.2)
        assert all(a["in_flight"] == 0 for a in accounts), accounts
    finally:
        sock.close()


def test_a_huge_count_tokens_does_not_stall_other_clients(demo_proxy):
    text = "word " * 5_000_000  # 25 MB
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
    results: Dict[str, float] = {}

    def count() -> None:
        answer = post_json(demo_proxy.port, "/v1/messages/count_tokens", body, 120)
        assert answer.status == 200, answer.describe()
        results["count"] = time.monotonic()

    worker = threading.Thread(target=count)
    worker.start()
    time.sleep(0.3)  # the body is being sent and counted
    health: List[float] = []
    while worker.is_alive() and len(health) < 3:
        assert get(demo_proxy.port, "/healthz", 60).status == 200
        health.append(time.monotonic())
    worker.join(120)
    assert "count" in results
    assert health and health[0] < results["count"], "/healthz waited for the count to finish"


# -- shared tables stay as they are (issue 11, found on reading) ---------------------------------------

def test_learned_paths_never_change_the_shared_tool_table_or_the_config():
    options = agproxy.OpenAIOptions(thinking_body={"chat_template_kwargs": {"enable_thinking": True}})
    body = dict(SIMPLE, tools=[{"type": "bash_20250124", "name": "bash"}],
                thinking={"type": "enabled", "budget_tokens": 2000})
    translated, _ = agproxy.anthropic_to_openai(body, options, "u")
    agproxy.drop_path(translated, "tools.*.function.parameters.properties.restart".split("."))
    agproxy.drop_path(translated, "chat_template_kwargs.enable_thinking".split("."))
    assert "restart" in agproxy._TYPED_TOOL_FUNCTIONS["bash"]["parameters"]["properties"]
    assert options.thinking_body == {"chat_template_kwargs": {"enable_thinking": True}}


# -- found by an independent attack after the first round of fixes --------------------------------------

def event(name: str, payload: Any) -> agproxy.SSEEvent:
    return agproxy.SSEEvent(name, json.dumps(payload))


START = {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": [],
                                               "usage": {"input_tokens": 1}}}


def test_the_accumulator_takes_only_a_message_and_nothing_after_its_stop():
    acc = agproxy.MessageAccumulator()
    with pytest.raises(agproxy.UpstreamFailure):
        acc.feed(event("content_block_start", {"type": "content_block_start", "index": 0,
                                               "content_block": {"type": "text", "text": ""}}))
    acc = agproxy.MessageAccumulator()
    for name, payload in [("message_start", START),
                          ("content_block_start", {"type": "content_block_start", "index": 0,
                                                   "content_block": {"type": "text", "text": ""}}),
                          ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "text_delta", "text": "hello"}}),
                          ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                                "type": "error", "id": "evil"}}),
                          ("message_stop", {"type": "message_stop"}),
                          ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "text_delta", "text": "AFTER"}}),
                          ("error", {"type": "error", "error": {"type": "api_error", "message": "late"}})]:
        acc.feed(event(name, payload))
    message = acc.result()
    assert message["content"][0]["text"] == "hello"
    assert (message["type"], message["id"], message["stop_reason"]) == ("message", "m", "end_turn")


@pytest.mark.parametrize("block, delta", [
    ({"type": "text", "text": 5}, {"type": "text_delta", "text": "x"}),
    ({"type": "thinking", "thinking": None}, {"type": "thinking_delta", "thinking": "x"}),
    ({"type": "text", "text": "", "citations": "x"}, {"type": "citations_delta", "citation": {}}),
    ({"type": "text", "text": ""}, {"type": "text_delta", "text": ["x"]}),
])
def test_wrongly_typed_blocks_are_an_upstream_failure(block, delta):
    acc = agproxy.MessageAccumulator()
    acc.feed(event("message_start", START))
    acc.feed(event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}))
    with pytest.raises(agproxy.UpstreamFailure):
        acc.feed(event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}))
        acc.feed(event("message_stop", {"type": "message_stop"}))
        acc.result()


def test_nothing_follows_message_stop_in_a_relayed_stream():
    check = agproxy.EventStreamCheck("u")
    check.feed(b'event: message_start\ndata: {"type":"message_start","message":{}}\n\n')
    stop = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    assert agproxy.encode_events(check.feed(stop + b": comment\n\nevent: error\n\n")) == stop
    assert check.finished


def test_a_date_past_any_calendar_is_no_reset():
    for value in ("Mon, 01 Jan 99999999999999999999 00:00:00 GMT", "99999-01-01T00:00:00Z"):
        assert agproxy.rate_limit_reset([("retry-after", value)], b"", time.time()) is None


def test_keys_in_relayed_header_names_and_json_escapes_are_caught():
    secret = "sk-upstream-SECRET-alice-0123456789"
    redactor = agproxy.Redactor([secret])
    escaped = json.dumps({"text": secret.replace("-", "\\u002d")}).replace("\\\\", "\\").encode()
    assert b"SECRET" in escaped and secret.encode() not in escaped
    assert b"SECRET" not in redactor.data(escaped)
    assert agproxy.relayed_upstream_headers([(f"anthropic-ratelimit-{secret}", "5"),
                                             ("x-ratelimit-remaining-requests", "5"),
                                             ("x-ratelimit-reset-tokens", "1s"), ("x-other", "1")]) == [
        ("x-ratelimit-remaining-requests", "5"), ("x-ratelimit-reset-tokens", "1s")]


def test_an_error_text_that_echoes_the_model_teaches_nothing(start_agproxy, fake):
    config = fake_config(fake)
    proxy = start_agproxy(config)
    echo = Json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                 "message": "temperature: Extra inputs are not permitted "
                                                            "(model 'x' is not served here)"}})
    fake.script(echo, echo)
    answer = post_json(proxy.port, "/v1/messages", dict(SIMPLE, temperature=0.2), 10)
    assert answer.status == 400
    assert json.loads(get(proxy.port, "/v1/agproxy/stats").body)["learned"] in ({}, {"fake": {"fields": [],
                                                                                               "betas": []}})
    assert post_json(proxy.port, "/v1/messages", dict(SIMPLE, temperature=0.2), 10).status == 200
    assert fake.requests[-1].json["temperature"] == 0.2  # still sent: nothing was learned


@pytest.mark.parametrize("upstream_change, words", [
    ({"base_url": "http://a..b"}, "upstreams[0].base_url: has a host name that cannot be looked up"),
    ({"headers": {"Content-Length": "0"}}, "upstreams[0].headers.Content-Length: is set by agproxy"),
    ({"headers": {"Host": "other.example"}}, "upstreams[0].headers.Host: is set by agproxy"),
])
def test_more_config_gaps_are_exit_2(tmp_path, upstream_change, words):
    upstream = dict({"name": "u", "kind": "anthropic", "base_url": "http://127.0.0.1:9",
                     "accounts": [{"name": "a", "api_key": "k"}]}, **upstream_change)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"upstreams": [upstream]}))
    done = subprocess.run([sys.executable, str(AGPROXY), "--config", str(path), "--port", "0"],
                          capture_output=True, text=True, timeout=20, env=clean_env())
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_number_of_thousands_of_digits_in_the_config_is_exit_2(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"max_connections": ' + "9" * 5000 + ', "upstreams": []}')
    done = subprocess.run([sys.executable, str(AGPROXY), "--config", str(path)], capture_output=True, text=True,
                          timeout=20, env=clean_env())
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


def test_a_state_file_that_is_a_fifo_does_not_block_the_start(start_agproxy, fake, tmp_path):
    fifo = tmp_path / "state.json"
    os.mkfifo(fifo)
    proxy = start_agproxy(fake_config(fake, state_file=str(fifo)))
    assert post_json(proxy.port, "/v1/messages", SIMPLE, 10).status == 200
    assert "not a regular file" in proxy.log()


def test_check_hides_a_key_an_upstream_echoes(tmp_path):
    secret = "sk-upstream-SECRET-alice-0123456789"

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(f"HTTP/1.1 abc {secret}\r\n\r\n".encode())

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    thread = threading.Thread(target=lambda: answer(server.accept()[0]), daemon=True)
    thread.start()
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"upstreams": [{"name": "u", "kind": "anthropic", "base_url": f"http://127.0.0.1:{port}",
                                               "accounts": [{"name": "a", "api_key": secret}]}]}))
    done = subprocess.run([sys.executable, str(AGPROXY), "check", "--config", str(path)], capture_output=True,
                          text=True, timeout=30, env=clean_env())
    server.close()
    assert done.returncode == 1 and "FAIL" in done.stdout, done.stdout + done.stderr
    assert "SECRET" not in done.stdout + done.stderr


def test_the_interim_answer_goes_only_to_a_half_closed_http_11_client_before_its_answer(start_agproxy, fake):
    fake.script(Sse(text_stream(), delay_s=0.2), Sse(text_stream(), delay_s=0.2))
    proxy = start_agproxy(fake_config(fake))
    body = json.dumps(SIMPLE).encode()
    for version, interim in ((b"1.1", True), (b"1.0", False)):
        request = build_request("POST", "/v1/messages", body, [("Content-Type", "application/json")])
        request = request.replace(b"HTTP/1.1", b"HTTP/" + version, 1)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            received = send_and_half_close(sock, request)
        if interim:
            assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), bytes(received[:80])
            assert received.count(b"100 Continue") == 1
        else:
            assert received.startswith(b"HTTP/1.1 200 OK\r\n") and b"100 Continue" not in received
        assert b'"type":"message"' in received


# -- the pinned contract: probes and x-should-retry -----------------------------------------------------

def test_head_api_hello_is_200_for_the_newest_claude_code(demo_proxy):
    answer = exchange(demo_proxy.port, build_request("HEAD", "/api/hello"), 10, method="HEAD")
    assert answer.status == 200, answer.describe()


def test_answers_a_retry_cannot_change_say_so_and_the_others_do_not(start_agproxy, fake):
    config = fake_config(fake, auth_mode="strict", api_key="sk-local-key-123", max_retry_attempts=2, state_file="")
    config["model_map"] = [{"match": "claude-*", "upstream": "fake"}]
    proxy = start_agproxy(config)
    key = [("x-api-key", "sk-local-key-123")]
    rejected_key = Json(401, {"type": "error", "error": {"type": "authentication_error", "message": "bad key"}})
    limited = Json(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}},
                   [("retry-after", "30")])
    cases = [
        ("wrong agproxy key", [("x-api-key", "nope")], dict(SIMPLE), [], 401, "false"),
        ("unrouted model", key, dict(SIMPLE, model="gpt-4"), [], 404, "false"),
        ("invalid request", key, dict(SIMPLE, max_tokens=0), [], 400, "false"),
        ("every key rejected", key, dict(SIMPLE), [rejected_key, rejected_key], 424, "false"),
        ("every key rejected, asked again", key, dict(SIMPLE), [], 424, "false"),
        ("rate limited", key, dict(SIMPLE), [limited, limited], 429, None),
    ]
    for name, headers, body, script, status, should_retry in cases:
        if name == "rate limited":
            proxy = start_agproxy(config)  # fresh accounts: the last ones rest for their rejected keys
        fake.script(*script)
        answer = post_json(proxy.port, "/v1/messages", body, 10, headers)
        assert answer.status == status, (name, answer.describe())
        assert answer.header("x-should-retry") == should_retry, (name, answer.headers)
    wrong_type = exchange(proxy.port, build_request("POST", "/v1/messages", b"{}", [
        ("Content-Type", "text/plain"), ("x-api-key", "sk-local-key-123")]), 10)
    assert (wrong_type.status, wrong_type.header("x-should-retry")) == (415, "false")


@pytest.mark.parametrize("name, payload", [
    ("message_start", {"type": "error", "error": {"type": []}}),
    ("error", {"type": "error", "error": {"type": {"a": 1}, "message": "x"}}),
])
def test_an_error_event_of_any_shape_is_an_upstream_error(name, payload):
    with pytest.raises(agproxy.AgproxyError) as caught:
        agproxy.MessageAccumulator().feed(event(name, payload))
    assert caught.value.error_type == "api_error"


def test_a_delta_whose_type_is_not_a_string_is_ignored_not_fatal():
    acc = agproxy.MessageAccumulator()
    acc.feed(event("message_start", START))
    acc.feed(event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": [1]}}))
    acc.feed(event("message_stop", {"type": "message_stop"}))
    assert acc.result()["type"] == "message"


def test_a_client_that_leaves_while_its_pipelined_second_request_waits_is_noticed(start_agproxy, fake):
    """Two pipelined requests and a half-close: the second answer's head is still held back when
    the client resets; the second request is watched as the first was (found by attacking issue 11)."""
    fake.script(Json(200, None), Sse(text_stream(" ".join(["word"] * 40)), delay_s=1.0))
    proxy = start_agproxy(fake_config(fake))
    stream = json.dumps(dict(SIMPLE, stream=True)).encode()
    first = build_request("POST", "/v1/messages", json.dumps(SIMPLE).encode(), [("Content-Type", "application/json")])
    second = build_request("POST", "/v1/messages", stream, [("Content-Type", "application/json")])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(first + second)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while b'"type":"message"' not in received:
            received += sock.recv(65536)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    left = time.monotonic()
    deadline = left + 5
    while not fake.abandoned_at and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.abandoned_at and fake.abandoned_at[0] - left < 1.5
