"""Codex CLI through agproxy (issue 21): the real program, pinned by the Makefile (CODEX_VERSION),
speaks the Responses API to agproxy's ``/v1/responses``, offline, with a client key, to fake
upstreams of each kind over real sockets. Each run is a streamed shell tool loop: the model asks
for ``exec_command``, Codex runs it, sends the result back, and the model's last words end the
run. Skipped when the CLI is not installed (``make claude-cli`` installs it)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from tests.conftest import clean_env, fake_config
from tests.fakes.anthropic_upstream import Json, Sse, text_stream, tool_call_stream
from tests.fakes.gemini_upstream import Answer, FakeGemini, call
from tests.fakes.openai_upstream import Chunks, FakeOpenAI, text_chunks, tool_chunks

VERSION = re.search(r"^CODEX_VERSION \?= (\S+)", (Path(__file__).parent.parent / "Makefile").read_text(), re.M)[1]
CODEX = Path(__file__).parent.parent / ".cache" / "codex" / VERSION / "node_modules" / ".bin" / "codex"
KEY = "agp-codex-0123456789abcdefghijklmnop"
COMMAND = "echo made-by-codex > proof.txt"
DONE = "The file is written."


@pytest.fixture
def codex(tmp_path: Path):
    if not CODEX.exists():
        pytest.skip(f"Codex CLI not installed at {CODEX} (make claude-cli)")

    def run(proxy: Any, model: str, prompt: str = "write the proof file") -> Tuple[subprocess.CompletedProcess, Path]:
        home, work = tmp_path / "codex-home", tmp_path / "work"
        home.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        (home / "config.toml").write_text(f'''model = "{model}"
model_provider = "agproxy"
approval_policy = "never"
sandbox_mode = "danger-full-access"

[model_providers.agproxy]
name = "agproxy"
base_url = "{proxy.url}/v1"
env_key = "AGPROXY_API_KEY"
wire_api = "responses"

[features]
plugins = false
unbounded_connection_retries = false

[analytics]
enabled = false
''')
        env = clean_env(HOME=str(home), CODEX_HOME=str(home), AGPROXY_API_KEY=KEY)
        result = subprocess.run([str(CODEX), "exec", "--skip-git-repo-check", prompt], cwd=work, env=env,
                                capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        return result, work
    return run


def team(fake: Any) -> Dict[str, Any]:
    return fake_config(fake, auth_mode="strict", admin_api_key="sk-admin-0123456789abcdef", clients=[
        {"name": "codex-user", "api_key": KEY}])


def check_the_loop(result: subprocess.CompletedProcess, work: Path) -> None:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (work / "proof.txt").read_text().strip() == "made-by-codex"  # Codex ran the model's command
    assert DONE in result.stdout


def test_codex_runs_a_shell_tool_loop_through_agproxy_to_an_anthropic_upstream(start_agproxy, fake, codex):
    proxy = start_agproxy(team(fake))
    fake.script(Sse(tool_call_stream("toolu_codex_1", "exec_command", {"cmd": COMMAND})), Sse(text_stream(DONE)))
    result, work = codex(proxy, "claude-sonnet-4-5")
    check_the_loop(result, work)
    first, second = [r.json for r in fake.requests if r.target.startswith("/v1/messages")][-2:]
    assert first["stream"] is True and any(t["name"] == "exec_command" for t in first["tools"])
    assert first["system"]  # Codex's instructions, as the system prompt
    result_block = second["messages"][-1]["content"][0]
    assert result_block["type"] == "tool_result" and result_block["tool_use_id"] == "toolu_codex_1"
    assert "codex-user" in proxy.log()


def test_codex_through_agproxy_to_an_openai_upstream(start_agproxy, fake, codex):
    with FakeOpenAI() as upstream:
        config = team(fake)
        config["upstreams"] = [{"name": "local", "kind": "openai", "base_url": upstream.url,
                                "accounts": [{"api_key": "k"}]}]
        proxy = start_agproxy(config)
        upstream.script(Chunks(tool_chunks([("call_1", "exec_command", json.dumps({"cmd": COMMAND}))])),
                        Chunks(text_chunks(DONE)))
        result, work = codex(proxy, "qwen3-coder")
        check_the_loop(result, work)
        assert upstream.chats[-1]["messages"][-1]["role"] == "tool"


def test_codex_through_agproxy_to_a_gemini_upstream(start_agproxy, fake, codex):
    with FakeGemini() as upstream:
        config = team(fake)
        config["upstreams"] = [{"name": "gem", "kind": "gemini", "base_url": upstream.url,
                                "accounts": [{"api_key": "gemini-key"}]}]
        proxy = start_agproxy(config)
        upstream.script(Answer([call("exec_command", {"cmd": COMMAND})]), Answer([{"text": DONE}]))
        result, work = codex(proxy, "gemini-2.5-flash")
        check_the_loop(result, work)


def test_codex_stops_at_once_on_a_model_outside_the_clients_entry(start_agproxy, fake, codex):
    """Found by the attack on issue 21: Codex retried a 403 five times in 6 s. It retries every 4xx
    but 400 and 429 (codex-rs/codex-api/src/api_bridge.rs: any other status is UnexpectedStatus,
    retryable in CodexErr::is_retryable); a 400 is InvalidRequest, final, and it shows the body."""
    config = team(fake)
    config["clients"][0]["models"] = ["claude-haiku-*"]
    proxy = start_agproxy(config)
    result, _ = codex(proxy, "claude-sonnet-4-5", prompt="say hi")
    assert result.returncode != 0
    assert "may not use model 'claude-sonnet-4-5'" in result.stderr, result.stderr[-3000:]
    assert "Reconnecting" not in result.stderr
    assert proxy.log().count("/v1/responses") == 1  # one access line: one request


def test_codex_makes_few_upstream_requests_for_an_overloaded_upstream(start_agproxy, fake, codex):
    """Found by the attack on issue 21: an upstream answering 529 had 90 requests per Codex turn
    (agproxy's 3 attempts for each of Codex's 5 tries of each of its 6 turns). A 503
    server_is_overloaded is tried by Codex's transport five times, then the turn ends."""
    config = team(fake)
    config["max_retry_attempts"] = 3
    proxy = start_agproxy(config)
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    fake.script(*[Json(529, overloaded)] * 100)
    result, _ = codex(proxy, "claude-sonnet-4-5", prompt="say hi")
    assert result.returncode != 0 and "at capacity" in result.stderr, result.stderr[-3000:]
    generations = [r for r in fake.requests if r.target.startswith("/v1/messages")]
    assert len(generations) <= 15, len(generations)
