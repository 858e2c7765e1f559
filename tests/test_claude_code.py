"""The real `claude` CLI (Claude Code) -> agproxy -> fake upstream, offline, with every version
`make test` installs: the newest release and an older one (users update slowly).

`make test` installs them into .cache/claude-code/VERSION when npm is available; without it these
tests are skipped with that reason. AGPROXY_CLAUDE names one other binary to use instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import List

import pytest

from tests.conftest import ROOT, clean_env, fake_config
from tests.fakes.anthropic_upstream import Json, Sse, tool_and_thinking_stream

INSTALLED = ROOT / ".cache" / "claude-code"


def _versions() -> List[Path]:
    if os.environ.get("AGPROXY_CLAUDE"):
        return [Path(os.environ["AGPROXY_CLAUDE"])]
    found = sorted(INSTALLED.glob("*/node_modules/.bin/claude"), reverse=True)
    return found or [INSTALLED / "VERSION" / "node_modules" / ".bin" / "claude"]


@pytest.fixture(params=_versions(), ids=lambda p: p.parent.parent.parent.name)
def cli(request) -> Path:
    if not request.param.exists():
        pytest.skip(f"Claude Code CLI not installed under {INSTALLED} (make claude-cli)")
    return request.param


@pytest.fixture
def claude(cli):
    def run(proxy, prompt: str, tmp_path: Path, *args: str, key: str = "client-key") -> subprocess.CompletedProcess:
        home = tmp_path / "claude-home"
        home.mkdir(exist_ok=True)
        (home / ".claude.json").write_text(json.dumps({"hasCompletedOnboarding": True}))
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        (work / "marker-file-for-ls.txt").write_text("x")
        env = clean_env(HOME=str(home), ANTHROPIC_BASE_URL=proxy.url, ANTHROPIC_AUTH_TOKEN=key,
                        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
        return subprocess.run([str(cli), "-p", prompt, *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
    return run


def test_claude_code_prompt_round_trip(start_agproxy, fake, tmp_path, claude):
    proxy = start_agproxy(fake_config(fake))
    result = claude(proxy, "say hello", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Hello from the fake upstream." in result.stdout
    main = [r for r in fake.requests if r.target == "/v1/messages"][-1]
    assert main.header("x-api-key") in ("sk-upstream-alice", "sk-upstream-bob")
    assert main.json["stream"] is True and main.json["tools"]
    probes = re.findall(r" HEAD (\S+) (\d{3}) ", proxy.log())  # 2.1.197 probes HEAD /, 2.1.332 /api/hello, if at all
    assert all(status == "200" for _, status in probes), probes
    assert "client-key" not in proxy.log()


def test_claude_code_runs_a_tool_the_upstream_asks_for(start_agproxy, fake, tmp_path, claude):
    fake.script(Sse(tool_and_thinking_stream()))  # asks for Bash `ls -la`; the next turn gets the default text
    proxy = start_agproxy(fake_config(fake))
    result = claude(proxy, "list files", tmp_path, "--allowedTools", "Bash")
    assert result.returncode == 0, result.stdout + result.stderr
    turns = [r.json for r in fake.requests if r.target == "/v1/messages"]
    results = [block for turn in turns for message in turn["messages"] if isinstance(message["content"], list)
               for block in message["content"] if block.get("type") == "tool_result"]
    assert results and results[-1]["tool_use_id"] == "toolu_fake_1"
    assert "marker-file-for-ls.txt" in json.dumps(results[-1]["content"])
    assert "Hello from the fake upstream." in result.stdout


def test_claude_code_through_the_compatible_profile_to_a_strict_upstream(start_agproxy, tmp_path, claude):
    """Everything Claude Code really sends is made acceptable to a server that refuses extras."""
    from tests.fakes.anthropic_upstream import FakeAnthropic

    with FakeAnthropic(strict=True) as strict:
        strict.script(Sse(tool_and_thinking_stream()))
        config = fake_config(strict)
        config["upstreams"][0]["profile"] = "compatible"
        proxy = start_agproxy(config)
        result = claude(proxy, "list files", tmp_path, "--allowedTools", "Bash")
        assert result.returncode == 0, result.stdout + result.stderr
        assert strict.rejections == []
        assert "Hello from the fake upstream." in result.stdout
        turns = [r.json for r in strict.requests if r.target == "/v1/messages"]
        assert len(turns) >= 2 and all("cache_control" not in json.dumps(t) for t in turns)


def test_claude_code_heals_past_an_upstream_that_rejects_its_extras(start_agproxy, tmp_path, claude):
    from tests.fakes.anthropic_upstream import FakeAnthropic

    with FakeAnthropic(reject_fields=["context_management", "output_config"]) as picky:
        proxy = start_agproxy(fake_config(picky, state_file=str(tmp_path / "state.json")))
        result = claude(proxy, "say hello", tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Hello from the fake upstream." in result.stdout
        assert "rejects context_management" in proxy.log()


@pytest.mark.parametrize("window", [None, 32768], ids=["any-window", "32k-window"])
def test_claude_code_runs_a_tool_loop_against_an_openai_compatible_server(start_agproxy, tmp_path, claude, window):
    """A whole agentic turn with a local-model style server: Claude Code's real request, translated."""
    from tests.fakes.openai_upstream import Chunks, FakeOpenAI, tool_chunks

    with FakeOpenAI(max_model_len=window) as local:
        local.script(Chunks(tool_chunks([("call_ls", "Bash", '{"command": "ls -la", "description": "List files"}')],
                                 reasoning="Listing the files.", text="Let me look.")))
        config = {"upstreams": [{"name": "local", "kind": "openai", "base_url": local.url,
                                 "accounts": [{"name": "vllm", "api_key": "none"}]}]}
        if window:  # a 32k server, as configured: Claude Code's 64000/128000 max_tokens must be fitted
            config["upstreams"][0]["context_window"] = window
        proxy = start_agproxy(config)
        result = claude(proxy, "list files", tmp_path, "--allowedTools", "Bash")
        assert result.returncode == 0, result.stdout + result.stderr
        assert local.rejections == []
        assert "Hello from the fake OpenAI server." in result.stdout
        second = local.chats[-1]
        tool_messages = [m for m in second["messages"] if m["role"] == "tool"]
        assert tool_messages and tool_messages[0]["tool_call_id"] == "call_ls"
        assert "marker-file-for-ls.txt" in tool_messages[0]["content"]


def test_claude_code_through_a_service_that_refuses_adaptive_thinking(start_agproxy, tmp_path, claude):
    """The default profile, a service that knows only enabled/disabled thinking: healed, not failed."""
    from tests.fakes.anthropic_upstream import FakeAnthropic

    with FakeAnthropic(basic_thinking_only=True) as picky:
        picky.script(Sse(tool_and_thinking_stream()))
        proxy = start_agproxy(fake_config(picky))
        result = claude(proxy, "list files", tmp_path, "--allowedTools", "Bash")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Hello from the fake upstream." in result.stdout
        turns = [r.json for r in picky.requests if r.target == "/v1/messages"]
        assert all(t.get("thinking", {}).get("type") != "adaptive" for t in turns[-2:])


def test_claude_code_on_the_demo(start_agproxy, tmp_path, claude):
    proxy = start_agproxy({"upstreams": [{"name": "demo", "kind": "demo"}]})
    result = claude(proxy, "what is two plus two", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'you said "what is two plus two"' in result.stdout  # the user's words, not Claude Code's reminders


def test_a_wrong_agproxy_key_reaches_the_user_in_seconds(start_agproxy, fake, tmp_path, claude):
    proxy = start_agproxy(fake_config(fake, auth_mode="strict", api_key="sk-agproxy-right-key"))
    started = time.monotonic()
    result = claude(proxy, "say hello", tmp_path, key="sk-agproxy-wrong-key")
    assert time.monotonic() - started < 20 and result.returncode != 0
    assert "401" in result.stdout + result.stderr or "API key" in result.stdout + result.stderr
    assert not [r for r in fake.requests if r.target.startswith("/v1/messages")]


def test_claude_code_shows_which_model_no_key_may_use(start_agproxy, fake, tmp_path, claude):
    """A 401/403 makes Claude Code say "Failed to authenticate" or "Please run /login"; a model
    that no key may use is a 400, whose words it shows as they are."""
    refusal = Json(403, {"error": {"message": "Project `proj_Ab12` does not have access to model `gpt-x`",
                                   "type": "invalid_request_error", "param": None, "code": "model_not_found"}})
    for key in ("sk-upstream-alice", "sk-upstream-bob"):
        fake.script_for(key, *[refusal] * 10)
    proxy = start_agproxy(fake_config(fake))
    result = claude(proxy, "say hello", tmp_path)
    shown = result.stdout + result.stderr
    assert result.returncode != 0 and "API Error: 400 no account of upstream 'fake' may use model" in shown, shown
    assert "does not have access to model" in shown and "authenticate" not in shown and "/login" not in shown


def gemini_claude_config(gemini) -> dict:
    return {"upstreams": [{"name": "gemini", "kind": "gemini", "base_url": gemini.url,
                           "accounts": [{"name": "gemini-1", "api_key": "gemini-key"}]}],
            "model_map": [{"match": "*", "upstream": "gemini", "model": "gemini-3-pro-preview"}]}


def test_claude_code_talks_to_gemini(start_agproxy, tmp_path, claude):
    from tests.fakes.gemini_upstream import FakeGemini

    with FakeGemini() as gemini:
        proxy = start_agproxy(gemini_claude_config(gemini))
        result = claude(proxy, "say hello", tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Hello from the fake Gemini server." in result.stdout
        assert gemini.rejections == []
        main = gemini.generations[-1]
        assert main["tools"][0]["functionDeclarations"]  # every Claude Code tool, its schema in Gemini's subset


def test_claude_code_runs_parallel_tool_calls_on_gemini(start_agproxy, tmp_path, claude):
    """A Bash tool loop where Gemini calls two tools at once: Claude Code's real history comes back
    with each thought signature on the part Gemini gave it, and none invented for the second call."""
    from tests.fakes.gemini_upstream import Answer, FakeGemini, call

    with FakeGemini() as gemini:
        gemini.script(Answer([{"text": "I should list the files.", "thought": True}, {"text": "Let me look."},
                              call("Bash", {"command": "ls -la", "description": "List files"}),
                              call("Bash", {"command": "echo second-call-ran", "description": "Echo"})]),
                      Answer([call("Bash", {"command": "echo third-call-ran", "description": "Echo"})]))

        proxy = start_agproxy(gemini_claude_config(gemini))
        result = claude(proxy, "list files", tmp_path, "--allowedTools", "Bash")
        assert result.returncode == 0, result.stdout + result.stderr
        assert gemini.rejections == []
        assert "Hello from the fake Gemini server." in result.stdout
        last = gemini.generations[-1]["contents"]
        responses = [p["functionResponse"] for c in last for p in c["parts"] if "functionResponse" in p]
        assert [r["name"] for r in responses] == ["Bash", "Bash", "Bash"]
        said = json.dumps(responses)
        assert "marker-file-for-ls.txt" in said and "second-call-ran" in said and "third-call-ran" in said
        signed = [p for c in last for p in c["parts"] if "thoughtSignature" in p and "functionCall" in p]
        assert len(signed) == 2 and all(gemini.issued[p["thoughtSignature"]][0] == "call" for p in signed)


def test_claude_code_keeps_the_turns_of_a_server_with_one_constant_id_apart(start_agproxy, tmp_path, claude):
    """Two tool steps, then text, from a server that gives every answer the same id (the fake's
    ``chatcmpl-fake``). Claude Code merges assistant turns that share an id: with the upstream's id
    the third request held one assistant turn with both calls (and a model then loops). agproxy
    mints each answer's own id, so every step reaches the server as its own turn and the loop ends."""
    from tests.fakes.openai_upstream import Chunks, FakeOpenAI, tool_chunks

    with FakeOpenAI() as local:
        local.script(Chunks(tool_chunks([("call_one", "Bash", '{"command": "echo step-one-ran"}')],
                                        reasoning="First step.", text="Step one.")),
                     Chunks(tool_chunks([("call_two", "Bash", '{"command": "echo step-two-ran"}')],
                                        reasoning="Second step.", text="Step two.")))
        proxy = start_agproxy({"upstreams": [{"name": "local", "kind": "openai", "base_url": local.url,
                                              "accounts": [{"name": "vllm", "api_key": "none"}]}]})
        result = claude(proxy, "run the two steps", tmp_path, "--allowedTools", "Bash")
        assert result.returncode == 0, result.stdout + result.stderr
        assert local.rejections == []
        assert "Hello from the fake OpenAI server." in result.stdout
        assert len(local.chats) == 3
        turns = [(m["role"], [c["id"] for c in m.get("tool_calls") or []] or m.get("tool_call_id"), m.get("content"))
                 for m in local.chats[-1]["messages"] if m["role"] in ("assistant", "tool")]
        assert [(role, calls) for role, calls, _ in turns] == [
            ("assistant", ["call_one"]), ("tool", "call_one"), ("assistant", ["call_two"]), ("tool", "call_two")]
        assert "step-one-ran" in turns[1][2] and "step-two-ran" in turns[3][2]


def test_claude_code_shows_agproxy_s_words_for_a_rejected_anthropic_key(start_agproxy, fake, tmp_path, claude):
    """An upstream that answers "invalid x-api-key": Claude Code shows "Not logged in · Please run
    /login" for any error message holding "x-api-key" (both versions), so agproxy words it "x api
    key"; and the status is one Claude Code does not call a temporary server-side issue."""
    from tests.fakes.anthropic_upstream import Json

    rejected = Json(401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
    fake.script_for("sk-upstream-alice", rejected)
    fake.script_for("sk-upstream-bob", rejected)
    proxy = start_agproxy(fake_config(fake))
    shows_agproxy_s_advice(claude(proxy, "say hello", tmp_path),
                           "rejected the key of alice@example.com (HTTP 401: invalid x api key")


def shows_agproxy_s_advice(result: subprocess.CompletedProcess, words: str) -> None:
    """Claude Code failed showing agproxy's words and advice, none of its own about logging in or
    a temporary server-side issue."""
    said = result.stdout + result.stderr
    assert result.returncode != 0
    assert words in said and "api_key in the agproxy config" in said, said
    assert "login" not in said.lower() and "server-side issue" not in said and "temporary" not in said


def test_claude_code_shows_agproxy_s_words_for_a_rejected_gemini_key(start_agproxy, tmp_path, claude):
    """Gemini's 400 API_KEY_INVALID: agproxy's advice to check the key, and nothing from Claude
    Code calling it a server-side issue that is usually temporary (what it adds to any 5xx)."""
    from tests.fakes.gemini_upstream import FakeGemini

    with FakeGemini(keys=("the-right-key",)) as gemini:
        proxy = start_agproxy(gemini_claude_config(gemini))
        shows_agproxy_s_advice(claude(proxy, "say hello", tmp_path),
                               "upstream 'gemini' rejected the key of gemini-1 (HTTP 400: API key not valid")


def test_claude_code_shows_why_a_base_url_ending_in_v1_fails(start_agproxy, fake, tmp_path, claude):
    """ANTHROPIC_BASE_URL=.../v1: Claude Code asks for /v1/v1/messages. For a 404 it says only
    "There's an issue with the selected model"; agproxy's 400 is shown in agproxy's words."""
    proxy = start_agproxy(fake_config(fake))

    class EndsInV1:
        url = proxy.url + "/v1"

    result = claude(EndsInV1, "say hello", tmp_path)
    said = result.stdout + result.stderr
    assert result.returncode != 0
    assert "the base URL must not end in /v1" in said and "selected model" not in said, said


def test_what_claude_code_s_requests_leave_behind(start_agproxy, fake, tmp_path, claude):
    """A tool loop from the real CLI, then the facts the operations features read: one JSON access
    line per request with its model, tokens, time to first token and attempts; the same requests
    and tokens in /metrics; the last requests on the status page's data. No key anywhere."""
    fake.script(Sse(tool_and_thinking_stream()))
    proxy = start_agproxy(fake_config(fake, log_format="json"))
    result = claude(proxy, "list files", tmp_path, "--allowedTools", "Bash")
    assert result.returncode == 0, result.stdout + result.stderr
    asked = [r for r in fake.requests if r.target.startswith("/v1/messages") and "count_tokens" not in r.target]
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
        access = [line for line in lines if line.get("event") == "access" and line["path"] == "/v1/messages"
                  and line.get("upstream") == "fake" and not line.get("local")]
        if len(access) >= len(asked) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(access) == len(asked) >= 2, (len(access), len(asked))
    for line in access:
        assert line["status"] == 200 and line["attempts"] == 1 and line["input_tokens"] == 12, line
        assert line["output_tokens"] > 0 and line["ttft_ms"] is not None and line["model"].startswith("claude")
    import urllib.request
    with urllib.request.urlopen(proxy.url + "/metrics", timeout=10) as response:
        page = response.read().decode()
    served = sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
                 if line.startswith('agproxy_requests_total{route="messages",status="200",upstream="fake"'))
    assert served == len(access), page
    said_in = sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
                  if line.startswith("agproxy_tokens_total{") and 'direction="input"' in line)
    assert said_in == 12 * len(access)
    with urllib.request.urlopen(proxy.url + "/v1/agproxy/status", timeout=10) as response:
        status = json.loads(response.read())
    assert {r["request_id"] for r in status["requests"]} >= {line["request_id"] for line in access}
    for text in (proxy.log(), page, json.dumps(status)):
        assert "client-key" not in text and "sk-upstream-alice" not in text and "sk-upstream-bob" not in text


def test_claude_code_with_a_client_key_and_a_model_the_client_may_not_use(start_agproxy, fake, tmp_path, claude):
    """A client's key as ANTHROPIC_AUTH_TOKEN works for its models, and a model outside them is a
    403 whose words (naming the model) Claude Code shows, at once."""
    config = fake_config(fake, auth_mode="strict", api_key="sk-local-admin-0123456789", clients=[
        {"name": "dana", "api_key": "sk-client-dana-0123456789", "models": ["claude-haiku-*"]}])
    proxy = start_agproxy(config)
    result = claude(proxy, "say hello", tmp_path, "--model", "claude-haiku-4-5", key="sk-client-dana-0123456789")
    assert result.returncode == 0 and "Hello from the fake upstream." in result.stdout, result.stdout + result.stderr
    started = time.monotonic()
    refused = claude(proxy, "say hello", tmp_path, "--model", "claude-opus-4-5", key="sk-client-dana-0123456789")
    shown = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "may not use model 'claude-opus-4-5'" in shown, shown
    assert time.monotonic() - started < 60
    assert "sk-client-dana-0123456789" not in proxy.log()
