"""The command line, the readiness line, signals, `check`, and the built .pyz."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import agproxy
from tests.conftest import AGPROXY, ROOT, clean_env, fake_config, write_config
from tests.fakes.anthropic_upstream import Json, Sse, text_stream


def run(args, tmp_path, env=None, **kw):
    return subprocess.run([sys.executable, str(AGPROXY), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=30, env=env or clean_env(HOME=str(tmp_path)), **kw)


def test_version(tmp_path):
    result = run(["--version"], tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("agproxy ")


def test_config_error_is_one_line_and_exit_2(tmp_path):
    path = write_config(tmp_path, {"upstreams": [{"name": "a", "kind": "grpc", "base_url": "http://x"}]})
    result = run(["--config", str(path)], tmp_path)
    assert result.returncode == 2
    assert result.stderr == "config: upstreams[0].kind: must be one of anthropic, openai, gemini, demo\n"


def test_usage_error_is_exit_2(tmp_path):
    assert run(["--port", "eighty"], tmp_path).returncode == 2
    assert run(["--port", "70000"], tmp_path).returncode == 2


def test_port_in_use_is_one_plain_line_and_exit_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["--port", str(port)], tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (f"agproxy: cannot listen on 127.0.0.1:{port}: the address is already in use: agproxy may be "
                         f"running there already (see what holds the port with `ss -ltnp 'sport = :{port}'` or "
                         f"`lsof -i :{port}`); stop it, or choose another --port")
    assert "Traceback" not in result.stderr


def test_readiness_line_and_demo_warning(start_agproxy):
    proxy = start_agproxy(None)
    ready = [line for line in proxy.stderr if line.startswith("agproxy listening on")]
    assert ready == [f"agproxy listening on http://127.0.0.1:{proxy.port}\n"]
    assert "built-in demo upstream" in proxy.log()
    with urllib.request.urlopen(proxy.url + "/healthz", timeout=5) as response:
        assert json.load(response)["status"] == "ok"


def test_config_from_environment_variable(start_agproxy, tmp_path):
    path = write_config(tmp_path, {"upstreams": [{"name": "from-env", "kind": "demo"}]}, "env.json")
    proxy = start_agproxy(None, env=clean_env(HOME=str(tmp_path), AGPROXY_CONFIG=str(path)))
    assert str(path) in proxy.log()
    assert "built-in demo" not in proxy.log()


def test_sigterm_lets_a_stream_in_flight_finish_then_exits_0(start_agproxy, fake):
    fake.script(Sse(text_stream("a b c d e f"), delay_s=0.2))
    proxy = start_agproxy(fake_config(fake), process=True)  # the signal is the test
    body = json.dumps({"model": "m", "max_tokens": 5, "stream": True,
                       "messages": [{"role": "user", "content": "x"}]}).encode()
    request = urllib.request.Request(proxy.url + "/v1/messages", body, {"content-type": "application/json"})
    received = {}

    def client():
        with urllib.request.urlopen(request, timeout=10) as response:
            received["body"] = response.read()

    thread = threading.Thread(target=client)
    thread.start()
    while not fake.requests:
        threading.Event().wait(0.05)
    assert proxy.stop(signal.SIGTERM) == 0
    thread.join(10)
    assert b"event: message_stop" in received["body"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1)


def stream_in_background(proxy, received):
    body = json.dumps({"model": "m", "max_tokens": 5, "stream": True,
                       "messages": [{"role": "user", "content": "x"}]}).encode()
    request = urllib.request.Request(proxy.url + "/v1/messages", body, {"content-type": "application/json"})

    def client():
        with urllib.request.urlopen(request, timeout=20) as response:
            received["body"] = response.read()  # a chunked body read to its proper end

    thread = threading.Thread(target=client)
    thread.start()
    return thread


@pytest.mark.parametrize("second_interrupt", [False, True])
def test_a_stream_longer_than_the_grace_ends_with_an_error_event_and_is_logged_cut(start_agproxy, fake,
                                                                                   second_interrupt):
    fake.script(Sse(text_stream(" ".join(["word"] * 50)), delay_s=0.3))  # 15 s of stream
    proxy = start_agproxy(fake_config(fake, shutdown_grace_s=1 if not second_interrupt else 30), process=True)
    received: dict = {}
    thread = stream_in_background(proxy, received)
    while not fake.requests:
        time.sleep(0.05)
    time.sleep(0.5)
    started = time.monotonic()
    proxy.proc.send_signal(signal.SIGINT)
    if second_interrupt:
        time.sleep(0.3)
        proxy.proc.send_signal(signal.SIGINT)
    assert proxy.proc.wait(10) == 0 and time.monotonic() - started < (3 if not second_interrupt else 1.5)
    thread.join(10)
    body = received["body"]
    assert b"event: error" in body and b"shutting down" in body and b"message_stop" not in body
    assert " cut by the shutdown" in proxy.log()
    if second_interrupt:
        assert "second interrupt: stopping at once; 1 request(s) in flight cut" in proxy.log()


def test_requests_still_waiting_when_the_grace_ends_get_an_answer(start_agproxy):
    """SIGTERM with two requests waiting: one for the upstream's first byte, one for the account's
    only max_concurrency slot. When shutdown_grace_s ends, each gets an answer (503 in the Anthropic
    shape saying agproxy is shutting down), not a connection closed without one."""
    from tests.fakes.misbehaving import ALICE_KEY, MisbehavingUpstream
    from tests.wire_check import error_shape_problems, get, post_json

    with MisbehavingUpstream() as fake:
        config = {"auth_mode": "off", "state_file": "", "shutdown_grace_s": 1, "max_retry_attempts": 1,
                  "upstreams": [{"name": "u", "kind": "anthropic", "base_url": fake.url_for("hang", "anthropic", "x"),
                                 "timeout_s": 30, "accounts": [{"name": "a", "api_key": ALICE_KEY,
                                                                "max_concurrency": 1}]}]}
        proxy = start_agproxy(config, process=True)
        answers = {}

        def ask(name, stream):
            body = {"model": "m", "max_tokens": 5, "stream": stream, "messages": [{"role": "user", "content": "x"}]}
            answers[name] = post_json(proxy.port, "/v1/messages", body, 15)

        threads = [threading.Thread(target=ask, args=("first byte", True))]
        threads[0].start()
        while not fake.requests_for("hang", "anthropic", "x"):
            time.sleep(0.05)
        threads.append(threading.Thread(target=ask, args=("slot", False)))
        threads[1].start()
        deadline = time.monotonic() + 10  # both in agproxy's hands (a loaded machine took over 0.5 s)
        while json.loads(get(proxy.port, "/v1/agproxy/status").body or b"{}").get("in_flight") != 2:
            assert time.monotonic() < deadline, "the second request never reached agproxy"
            time.sleep(0.05)
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(10) == 0
        for thread in threads:
            thread.join(10)
    for name in ("first byte", "slot"):
        answer = answers[name]
        assert answer.status == 503 and not error_shape_problems(answer.body, "overloaded_error"), \
            f"{name}: {answer.describe(300)}"
        assert b"shutting down" in answer.body, f"{name}: {answer.describe(300)}"
    assert proxy.log().count(" cut by the shutdown") == 2, proxy.log()


def test_a_request_still_arriving_at_shutdown_gets_an_answer(start_agproxy):
    """SIGTERM while a client is still sending its request's body: it gets the 503 saying agproxy
    is shutting down (idle keep-alive connections are simply closed)."""
    from tests.wire_check import error_shape_problems, read_answer

    proxy = start_agproxy({"upstreams": [{"name": "d", "kind": "demo"}]}, process=True)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"model\": ")
        time.sleep(0.3)
        proxy.proc.send_signal(signal.SIGTERM)
        answer = read_answer(sock, 10)
    assert proxy.proc.wait(10) == 0
    assert answer.status == 503 and not error_shape_problems(answer.body, "overloaded_error"), answer.describe(300)
    assert b"shutting down" in answer.body


def test_sigint_exits_0(start_agproxy):
    proxy = start_agproxy(None)
    assert proxy.stop(signal.SIGINT) == 0


def test_check_probes_upstreams(tmp_path, fake):
    path = write_config(tmp_path, fake_config(fake))
    result = run(["check", "--config", str(path)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok    fake (anthropic) account") == 2
    assert fake.requests[0].target == "/v1/models"
    fake.script(Json(401, {"type": "error", "error": {"type": "authentication_error", "message": "bad key"}}))
    result = run(["check", "--config", str(path)], tmp_path)
    assert result.returncode == 1
    assert "rejected this account's key" in result.stdout
    assert "sk-upstream" not in result.stdout + result.stderr


def test_check_reports_an_unreachable_upstream(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {"upstreams": [{"name": "dead", "kind": "anthropic", "base_url": f"http://127.0.0.1:{port}",
                             "accounts": [{"name": "a", "api_key": "k"}]}]}
    result = run(["check", "--config", str(write_config(tmp_path, config))], tmp_path)
    assert result.returncode == 1 and "FAIL  dead" in result.stdout


def test_check_with_bad_config_is_exit_2(tmp_path):
    result = run(["check", "--config", str(write_config(tmp_path, {"upstreams": []}))], tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("config: upstreams:")


def build(output: Path) -> bytes:
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_pyz.py"), str(ROOT / "zipapp.spec"), str(output)],
                   check=True, capture_output=True)
    return output.read_bytes()


def test_pyz_build_is_reproducible_and_runs_isolated(tmp_path):
    first = build(tmp_path / "a.pyz")
    second = build(tmp_path / "b.pyz")
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, "-I", "-S", str(tmp_path / "a.pyz"), "--version"], cwd=elsewhere,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("agproxy ")


def test_pyz_serves_requests(start_agproxy, tmp_path):
    pyz = tmp_path / "agproxy.pyz"
    build(pyz)
    proxy = start_agproxy(None, command=[sys.executable, "-I", "-S", str(pyz)])
    body = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(proxy.url + "/v1/messages", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.load(response)["content"][0]["text"]


PY39 = next(iter(sorted(Path.home().glob(".pyenv/versions/3.9*/bin/python3.9"))), None) or shutil.which("python3.9")


@pytest.mark.skipif(PY39 is None, reason="no Python 3.9 interpreter on this machine")
def test_runs_on_python_3_9(start_agproxy, fake, tmp_path):
    probe = subprocess.run([str(PY39), "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("python3.9 shim without an interpreter")
    proxy = start_agproxy(fake_config(fake), command=[str(PY39), "-I", str(AGPROXY)])
    body = json.dumps({"model": "m", "max_tokens": 5, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(proxy.url + "/v1/messages", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert b"event: message_stop" in response.read()


def test_state_show_and_clear(tmp_path, fake):
    state = tmp_path / "kept.json"
    path = write_config(tmp_path, fake_config(fake, state_file=str(state)))
    assert "does not exist" in run(["state", "show", "--config", str(path)], tmp_path).stdout
    state.write_text(json.dumps({"format": 1, "accounts": {"fake/alice@example.com": {
        "resting_until": 4e9, "rejected_key": True, "reason": "key rejected (HTTP 401)", "key": "0123"}}}))
    shown = run(["state", "show", "--config", str(path)], tmp_path)
    assert shown.returncode == 0 and "key rejected (HTTP 401)" in shown.stdout
    cleared = run(["state", "clear", "--config", str(path)], tmp_path)
    assert cleared.returncode == 0 and "forgotten" in cleared.stdout and not state.exists()
    assert run(["state", "clear", "--config", str(path)], tmp_path).stdout.startswith("state: ")
    assert run(["state", "wipe"], tmp_path).returncode == 2


def test_help_lists_the_commands(tmp_path):
    out = run(["--help"], tmp_path).stdout
    assert "agproxy check" in out and "agproxy state show|clear" in out


def test_check_fails_a_base_url_that_answers_404_and_says_why(tmp_path):
    from tests.fakes.openai_upstream import FakeOpenAI
    with FakeOpenAI() as fake:
        no_v1 = fake.url[: -len("/v1")]
        config = {"upstreams": [{"name": "local", "kind": "openai", "base_url": no_v1,
                                 "accounts": [{"name": "a", "api_key": ""}]}]}
        result = run(["check", "--config", str(write_config(tmp_path, config))], tmp_path)
        assert result.returncode == 1 and "FAIL  local" in result.stdout
        assert "HTTP 404" in result.stdout and "e.g. http://host:8000/v1" in result.stdout
        config["upstreams"][0]["base_url"] = fake.url
        config["model_map"] = [{"match": "claude-*", "upstream": "local", "model": "qwen-locl"}]
        result = run(["check", "--config", str(write_config(tmp_path, config))], tmp_path)
        assert result.returncode == 0, result.stdout
        assert "ok    local (openai) account a: reachable (HTTP 200) without a key" in result.stdout
        assert "WARN  local: model_map sends 'claude-*' to model 'qwen-locl', which this upstream does not list" \
            in result.stdout and "qwen-local" in result.stdout


def test_check_warns_on_a_limited_account_and_fails_an_anthropic_base_url_with_v1(tmp_path, fake):
    fake.script(Json(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}))
    config = fake_config(fake)
    config["upstreams"].append(dict(config["upstreams"][0], name="doubled", base_url=fake.url + "/v1"))
    result = run(["check", "--config", str(write_config(tmp_path, config))], tmp_path)
    assert "WARN  fake (anthropic) account alice@example.com: reachable, but this account is rate-limited" \
        in result.stdout
    assert "ok    fake (anthropic) account bob@example.com" in result.stdout
    assert "FAIL  doubled (anthropic) account alice@example.com: base_url ends in /v1" in result.stdout
    assert result.returncode == 1


def test_config_errors_name_every_unset_variable_and_the_key_meant(tmp_path):
    config = {"upstreams": [{"name": "a", "kind": "openai", "base_url": "${AGP_TEST_URL}",
                             "accounts": [{"name": "x", "api_key": "${AGP_TEST_KEY}"}]}]}
    result = run(["check", "--config", str(write_config(tmp_path, config))], tmp_path)
    assert result.returncode == 2
    assert "AGP_TEST_URL is not set" in result.stderr and "AGP_TEST_KEY is not set" in result.stderr
    typo = {"auth_mod": "off", "upstreams": [{"name": "d", "kind": "demo"}]}
    result = run(["check", "--config", str(write_config(tmp_path, typo))], tmp_path)
    assert result.returncode == 2 and "unknown key auth_mod (did you mean auth_mode?)" in result.stderr


def test_check_fails_auth_on_without_a_key(tmp_path):
    config = {"auth_mode": "strict", "upstreams": [{"name": "d", "kind": "demo"}]}
    result = run(["check", "--config", str(write_config(tmp_path, config))], tmp_path)
    assert result.returncode == 1 and "FAIL  config: auth_mode is strict but api_key is empty" in result.stdout


def test_check_probes_gemini_keys_and_the_models_it_lists(tmp_path):
    from tests.fakes.gemini_upstream import FakeGemini

    with FakeGemini(page_size=10) as gemini:
        config = {"upstreams": [{"name": "gemini", "kind": "gemini", "base_url": gemini.url,
                                 "accounts": [{"name": "good", "api_key": "gemini-key"},
                                              {"name": "bad", "api_key": "not-a-gemini-key"}]},
                                {"name": "versioned", "kind": "gemini", "base_url": gemini.url + "/v1beta",
                                 "accounts": [{"name": "good", "api_key": "gemini-key"}]}],
                  "model_map": [{"match": "*", "upstream": "gemini", "model": "gemini-9-ultra"}]}
        result = run(["check", "--config", str(write_config(tmp_path, config))], tmp_path)
    assert "ok    gemini (gemini) account good: reachable (HTTP 200)" in result.stdout
    assert ("FAIL  gemini (gemini) account bad: the upstream rejected this account's key (HTTP 400: API key not "
            "valid. Please pass a valid API key.)") in result.stdout  # what Gemini answered, not what it means
    assert "FAIL  versioned (gemini) account good: base_url ends in a version path" in result.stdout
    assert "'gemini-9-ultra', which this upstream does not list (it lists gemini-2.5-flash" in result.stdout
    assert "not-a-gemini-key" not in result.stdout + result.stderr and result.returncode == 1
    with FakeGemini(page_size=2) as paged:  # a list in pages is read whole
        config["upstreams"][0]["base_url"] = paged.url
        config["model_map"] = [{"match": "a*", "upstream": "gemini", "model": "models/gemini-2.5-pro"},
                               {"match": "*", "upstream": "gemini", "model": "gemini-2.5-pro-latest"}]
        result = run(["check", "--config", str(write_config(tmp_path, config))], tmp_path)
    assert "'models/gemini-2.5-pro'" not in result.stdout  # on the list's last page, written models/...
    assert "'gemini-2.5-pro-latest', which this upstream does not list" in result.stdout


def test_a_gemini_key_refused_for_its_project_is_explained_everywhere(tmp_path, start_agproxy):
    """A 403 for a project whose API is off: the client's 502 quotes Gemini, `check` shows the
    saved rest (while the probe says the key is fine), and `state clear` works without the key's
    variable set."""
    from tests.fakes.gemini_upstream import Error, FakeGemini, google_error

    disabled = google_error(403, "Generative Language API has not been used in project 123 before or it is "
                                 "disabled. Enable it by visiting the console then retry.", "PERMISSION_DENIED",
                            [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED"}])
    state = tmp_path / "kept.json"
    with FakeGemini() as gemini:
        gemini.script(Error(403, disabled))
        config = {"upstreams": [{"name": "gemini", "kind": "gemini", "base_url": gemini.url,
                                 "accounts": [{"name": "main", "api_key": "${AGP_TEST_GEMINI_KEY}"}]}],
                  "model_map": [{"match": "*", "upstream": "gemini", "model": "gemini-2.5-flash"}],
                  "state_file": str(state)}
        proxy = start_agproxy(config, env=clean_env(AGP_TEST_GEMINI_KEY="gemini-key"))
        body = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}).encode()
        request = urllib.request.Request(proxy.url + "/v1/messages", body, {"content-type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        said = json.loads(caught.value.read())["error"]["message"]
        assert caught.value.code == 424 and "has not been used in project 123" in said, said
        refused = run(["state", "clear", "--config", str(write_config(tmp_path, config))], tmp_path)
        assert refused.returncode == 1 and "is running with" in refused.stderr and state.exists()
        proxy.stop()
        path = write_config(tmp_path, config)
        checked = run(["check", "--config", str(path)], tmp_path,
                      env=clean_env(HOME=str(tmp_path), AGP_TEST_GEMINI_KEY="gemini-key"))
    assert "ok    gemini (gemini) account main: reachable (HTTP 200)" in checked.stdout
    assert "WARN  account 'main' of upstream 'gemini' rests" in checked.stdout and "state clear" in checked.stdout
    shown = run(["state", "show", "--config", str(path)], tmp_path)
    assert "state: gemini/main rests until 20" in shown.stdout  # in words, before the JSON
    assert "for every model (key rejected (HTTP 403: Generative Language API has not" in shown.stdout
    cleared = run(["state", "clear", "--config", str(path)], tmp_path)  # AGP_TEST_GEMINI_KEY unset here
    assert cleared.returncode == 0 and not state.exists()


@pytest.mark.parametrize("command", [[], ["check"]])
def test_a_number_of_400_digits_and_a_lone_surrogate_are_one_line_and_exit_2(tmp_path, command):
    """Issue 18: an OverflowError traceback (exit 1) and a crash of `check` on printing the name."""
    huge = tmp_path / "huge.json"
    huge.write_text('{"upstreams": [{"name": "d", "kind": "demo", "timeout_s": 1%s}]}' % ("0" * 400))
    result = run([*command, "--config", str(huge)], tmp_path)
    assert (result.returncode, result.stderr) == (
        2, "config: upstreams[0].timeout_s: must be a number up to 1e+09, got a number of 401 digits\n")
    surrogate = tmp_path / "surrogate.json"
    surrogate.write_text('{"upstreams": [{"name": "\\ud800", "kind": "demo"}]}')
    result = run([*command, "--config", str(surrogate)], tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(
        'config: upstreams[0].name: it holds a lone surrogate ("\\ud800")') and result.stderr.count("\n") == 1


def test_state_commands_find_the_default_state_file_when_the_configs_variables_are_unset(tmp_path, fake):
    """Issue 18: with ${VAR}s unset, the placeholder replaced XDG_STATE_HOME too, so `state show`
    and `state clear` looked in http://unset.invalid/agproxy/... and found nothing."""
    config = fake_config(fake)
    config["upstreams"][0]["accounts"] = [{"name": "a", "api_key": "${AGP_TEST_UNSET_KEY}"}]
    path = write_config(tmp_path, config)
    env = {k: v for k, v in clean_env(HOME=str(tmp_path)).items() if k not in ("XDG_STATE_HOME", "AGP_TEST_UNSET_KEY")}
    state = Path(agproxy.default_state_file(env, str(path)))
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"format": 1, "accounts": {"fake/a": {"resting_until": 4e9, "reason": "kept",
                                                                      "key": "0123"}}}))
    shown = run(["state", "show", "--config", str(path)], tmp_path, env=env)
    assert shown.returncode == 0 and '"reason": "kept"' in shown.stdout and "unset.invalid" not in shown.stdout
    cleared = run(["state", "clear", "--config", str(path)], tmp_path, env=env)
    assert cleared.returncode == 0 and str(state) in cleared.stdout and not state.exists()


def test_state_clear_refuses_while_any_agproxy_runs_with_the_state_file(start_agproxy, tmp_path, fake):
    """Issue 18: `state clear` succeeded while an agproxy that had restored rests ran (its pid was
    in the file only after its first save), and the rests came back at that save. The lock is
    held by every instance from its start, and the kernel drops it with a process killed -9."""
    state = tmp_path / "kept.json"
    config = fake_config(fake, state_file=str(state))
    path = write_config(tmp_path, config)
    upstream = agproxy.load_config(str(path), {}, {}).upstreams[0]
    rest = {"resting_until": 4e9, "reason": "rate limited (HTTP 429)",
            "key": agproxy.key_fingerprint(upstream, upstream.accounts[0])}
    state.write_text(json.dumps({"format": 1, "pid": 2 ** 22 + 1, "accounts": {"fake/alice@example.com": rest}}))
    first = start_agproxy(config, process=True)
    assert "restored from the state file: account 'alice@example.com'" in first.log()
    assert "another agproxy runs with the state file" not in first.log()
    second = start_agproxy(config, process=True)
    assert f"another agproxy runs with the state file {state}: both save into it" in second.log()
    refused = run(["state", "clear", "--config", str(path)], tmp_path)
    assert refused.returncode == 1 and state.exists(), refused.stdout
    assert f"an agproxy is running with {state}" in refused.stderr and "stop it, then clear" in refused.stderr
    assert first.stop() == 0
    assert run(["state", "clear", "--config", str(path)], tmp_path).returncode == 1  # the second still runs
    second.proc.kill()  # kill -9: no shutdown, no save; the lock goes with the process
    second.proc.wait(10)
    cleared = run(["state", "clear", "--config", str(path)], tmp_path)
    assert cleared.returncode == 0 and not state.exists(), cleared.stderr


def test_state_show_reports_sections_of_the_wrong_type_and_a_file_that_is_not_agproxys(tmp_path, fake):
    state = tmp_path / "kept.json"
    path = write_config(tmp_path, fake_config(fake, state_file=str(state)))
    state.write_text('{"format": 1, "learned": {"x": {"fields": 5}}}')
    shown = run(["state", "show", "--config", str(path)], tmp_path)
    assert shown.returncode == 0 and '"fields": 5' in shown.stdout
    assert shown.stderr == f"state: state file {state}: learned.x.fields: must be a list of strings, got 5; that " \
                           "part is ignored\n"
    foreign = write_config(tmp_path, fake_config(fake, state_file=str(path)), "self.json")  # the config as state
    shown = run(["state", "show", "--config", str(foreign)], tmp_path)
    assert shown.returncode == 1 and f"state file {path} is not agproxy's (JSON without \"format\": 1)" in shown.stderr


#: What `check` says of the request it probes an anthropic upstream with.
SHAPED = "a request shaped like Claude Code's (cache_control, an anthropic-beta header, context_management)"


def test_check_says_the_default_profile_does_not_fit_a_strict_compatible_service(tmp_path):
    """`check` said `ok` for a strict Anthropic-compatible service behind `profile: anthropic`,
    and then every Claude Code request got a 400."""
    from tests.fakes.anthropic_upstream import FakeAnthropic

    with FakeAnthropic(strict=True) as strict:
        config = fake_config(strict)
        result = run(["check", "--config", str(write_config(tmp_path, config))], tmp_path)
        probes = [r for r in strict.requests if r.method == "POST"]
        assert result.returncode == 1, result.stdout + result.stderr
        line = next(line for line in result.stdout.splitlines() if line.startswith("FAIL  fake:"))
        assert line.startswith(f"FAIL  fake: profile \"anthropic\" does not fit: count_tokens refused {SHAPED} "
                               "(HTTP 400: Unexpected value(s) `context-management-2025-06-27` for the "
                               "`anthropic-beta` header."), line
        assert line.endswith("and took it without them: set \"profile\": \"compatible\" on upstream 'fake'"), line
        assert [r.target for r in probes] == ["/v1/messages/count_tokens"] * 2  # free calls only
        shaped, basic = probes[0], probes[1]
        assert shaped.header("anthropic-beta") == "context-management-2025-06-27"  # one Claude Code sends
        assert shaped.json["model"] == "claude-fake"  # the first model the upstream lists
        assert "cache_control" in shaped.body.decode() and "context_management" in shaped.json
        assert basic.header("anthropic-beta") is None and "cache_control" not in basic.body.decode()
        assert "ok    fake (anthropic) account alice@example.com: reachable (HTTP 200)" in result.stdout

        config["upstreams"][0]["profile"] = "compatible"
        result = run(["check", "--config", str(write_config(tmp_path, config))], tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"ok    fake: profile \"compatible\" fits: count_tokens refused {SHAPED} (HTTP 400: Unexpected " \
            "value(s)" in result.stdout
        assert "sk-upstream" not in result.stdout + result.stderr


def test_check_says_whether_the_full_profile_fits_an_anthropic_upstream(tmp_path, fake):
    config = fake_config(fake)
    result = run(["check", "--config", str(write_config(tmp_path, config))], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok    fake: profile \"anthropic\" fits: count_tokens took {SHAPED}\n" in result.stdout
    assert [r.target for r in fake.requests if r.method == "POST"] == ["/v1/messages/count_tokens"]
    config["upstreams"][0]["profile"] = "compatible"
    result = run(["check", "--config", str(write_config(tmp_path, config))], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (f"ok    fake: profile \"compatible\" works, and \"anthropic\" would too: count_tokens took {SHAPED} "
            "(the full profile keeps cache_control and betas, so prompt caching saves)") in result.stdout


def test_check_probes_the_profile_on_messages_where_count_tokens_is_absent(tmp_path):
    from tests.fakes.anthropic_upstream import FakeAnthropic

    with FakeAnthropic(strict=True, missing_paths=["/v1/messages/count_tokens"]) as strict:
        result = run(["check", "--config", str(write_config(tmp_path, fake_config(strict)))], tmp_path)
        probes = [r for r in strict.requests if r.method == "POST"]
    assert result.returncode == 1, result.stdout + result.stderr
    assert ("FAIL  fake: profile \"anthropic\" does not fit: /v1/messages (asked for 1 token: this upstream has no "
            f"count_tokens) refused {SHAPED} (HTTP 400: Unexpected value(s)") in result.stdout
    assert [r.target for r in probes] == ["/v1/messages/count_tokens", "/v1/messages", "/v1/messages"]
    assert probes[1].json["max_tokens"] == 1 and probes[2].json["max_tokens"] == 1


def test_the_start_up_log_names_a_base_url_ending_in_the_version_path_agproxy_adds(start_agproxy, fake):
    config = fake_config(fake)
    config["upstreams"][0]["base_url"] = fake.url + "/v1"
    config["upstreams"].append({"name": "g", "kind": "gemini", "base_url": "http://127.0.0.1:9/v1beta",
                                "accounts": [{"name": "k", "api_key": "gemini-key"}]})
    config["upstreams"].append({"name": "local", "kind": "openai", "base_url": "http://127.0.0.1:9/v1",
                                "accounts": [{"name": "k", "api_key": ""}]})
    log = start_agproxy(config).log()
    assert "upstream fake: base_url ends in /v1, and agproxy adds /v1/messages itself" in log
    assert "upstream g: base_url ends in a version path, and agproxy adds /v1beta/models/... itself" in log
    assert "upstream local:" not in log.replace("upstream local: openai", "")  # /v1 is right for openai


def test_check_fails_an_anthropic_upstream_whose_server_has_no_messages_api(tmp_path):
    """An OpenAI-only server (vLLM, Ollama) behind `kind: anthropic` lists models at /v1/models but
    has no /v1/messages: `check` said ok and a WARN of an unknown profile, exit 0, and every Claude
    Code request then got a 404."""
    from tests.fakes.openai_upstream import FakeOpenAI

    with FakeOpenAI() as openai_only:
        root = openai_only.url[: -len("/v1")]
        config = {"upstreams": [{"name": "local", "kind": "anthropic", "base_url": root,
                                 "accounts": [{"name": "a", "api_key": "sk-local"}]}]}
        result = run(["check", "--config", str(write_config(tmp_path, config))], tmp_path)
        probes = [r["target"] for r in openai_only.requests if r["method"] == "POST"]
    assert result.returncode == 1, result.stdout + result.stderr
    assert probes == ["/v1/messages/count_tokens", "/v1/messages"]
    assert (f"FAIL  local: no Anthropic Messages API at {root}/v1/messages (HTTP 404: no route /v1/messages; "
            "count_tokens is absent too): an OpenAI-compatible server (vLLM, Ollama, LM Studio, llama.cpp) takes "
            "\"kind\": \"openai\" with its /v1 base URL") in result.stdout, result.stdout


def test_check_does_not_call_a_404_for_the_probes_model_a_missing_messages_api(tmp_path):
    """A 404 that names the model asked for is "no such model", not "no /v1/messages here"."""
    from tests.fakes.anthropic_upstream import FakeAnthropic

    models = Json(200, {"data": [{"type": "model", "id": "claude-gone", "display_name": "Gone"}], "has_more": False})
    gone = Json(404, {"type": "error", "error": {"type": "not_found_error", "message": "model: claude-gone"}})
    with FakeAnthropic(missing_paths=["/v1/messages/count_tokens"]) as fake:
        fake.script(models, models, gone)  # the probe's list, the list check reads, then /v1/messages
        config = fake_config(fake)
        config["upstreams"][0]["accounts"] = config["upstreams"][0]["accounts"][:1]
        result = run(["check", "--config", str(write_config(tmp_path, config))], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no Anthropic Messages API" not in result.stdout
    assert "WARN  fake: which profile fits is unknown: /v1/messages (asked for 1 token: this upstream has no " \
        "count_tokens) answered" in result.stdout and "HTTP 404: model: claude-gone" in result.stdout


def test_check_warns_of_a_model_map_that_routes_none_of_claude_codes_default_models(tmp_path, fake):
    """Claude Code asks for claude-opus-5-5 (2.1.332) or claude-opus-4-8 (2.1.197) unless told
    otherwise; a model_map without a rule for it gave `ok`, then "There's an issue with the
    selected model" in Claude Code."""
    config = fake_config(fake, model_map=[{"match": "qwen*", "upstream": "fake", "model": "claude-fake"}])
    result = run(["check", "--config", str(write_config(tmp_path, config))], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr  # a warning: --model may name a mapped one
    assert ("WARN  config: model_map routes none of the models Claude Code asks for by default (claude-opus-5-5, "
            "claude-sonnet-5-5, claude-haiku-5-5, claude-opus-4-8, claude-sonnet-5, claude-haiku-4-5-20251001): "
            "Claude Code started without --model NAME or ANTHROPIC_MODEL gets 404 and shows only \"There's an issue "
            "with the selected model\"; add a last rule such as "
            "{\"match\": \"*\", \"upstream\": \"fake\", \"model\": \"claude-fake\"}\n") in result.stdout, result.stdout
    for routes_one in ([{"match": "claude-haiku-4-5*", "upstream": "fake"}], [{"match": "*", "upstream": "fake"}], []):
        config["model_map"] = routes_one
        result = run(["check", "--config", str(write_config(tmp_path, config))], tmp_path)
        assert result.returncode == 0 and "WARN  config" not in result.stdout, result.stdout


def test_check_with_no_config_file_says_so(tmp_path):
    """`check` in a directory without agproxy.json checked the built-in demo and said all was well."""
    result = run(["check"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"WARN  config: no config file found (no --config, no $AGPROXY_CONFIG, no agproxy.json in {tmp_path}, " \
        "no ~/.config/agproxy/config.json): checking the built-in demo upstream" in result.stdout, result.stdout
    write_config(tmp_path, {"upstreams": [{"name": "d", "kind": "demo"}]}, "agproxy.json")
    result = run(["check"], tmp_path)
    assert result.returncode == 0 and "WARN" not in result.stdout, result.stdout


def test_a_traceback_from_the_pyz_shows_its_own_source_lines_not_a_file_of_the_same_name(tmp_path):
    """The bytecode names the archive's module (agproxy.pyz/agproxy.py), not a bare agproxy.py, which
    traceback and linecache would look for in the current directory and quote from whatever is there."""
    pyz = tmp_path / "agproxy.pyz"
    build(pyz)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "agproxy.py").write_text("# decoy\n" * 20_000)
    script = ("import sys, traceback\nsys.path.insert(0, sys.argv[1])\nimport agproxy\n"
              "try:\n    agproxy.parse_json_body(b'{')\nexcept agproxy.AgproxyError:\n    traceback.print_exc()\n")
    result = subprocess.run([sys.executable, "-I", "-S", "-c", script, str(pyz)], cwd=elsewhere,
                            capture_output=True, text=True, timeout=30)
    assert "agproxy.pyz/agproxy.py" in result.stderr and "decoy" not in result.stderr, result.stderr
    assert "raise " in result.stderr, result.stderr  # the line that raised, quoted from the archive's source


PY_OLD = next(iter(sorted(Path.home().glob(".pyenv/versions/3.[678].*/bin/python3.[678]"))), None)


@pytest.mark.skipif(PY_OLD is None, reason="no Python older than 3.9 on this machine")
def test_the_pyz_tells_an_older_python_what_it_needs(tmp_path):
    pyz = tmp_path / "agproxy.pyz"
    build(pyz)
    result = subprocess.run([str(PY_OLD), str(pyz), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and result.stderr.startswith("agproxy needs Python 3.9 or newer; this is Python 3.")
    assert "Traceback" not in result.stderr, result.stderr
