"""Gemini CLI and the google-genai SDK through agproxy (issue 21): Gemini's routes
(``/v1beta/models/{model}:generateContent`` and ``:streamGenerateContent``, ``GET /v1beta/models``)
served from upstreams of each kind, offline, over real sockets, with a client key in
``x-goog-api-key``. The CLI is the real program pinned by the Makefile (GEMINI_CLI_VERSION): a
streamed shell tool loop with ``-m``, and its default model, whose first call is a routing call
asking for structured output. Skipped when the CLI is not installed (``make claude-cli``)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tests.conftest import clean_env, fake_config
from tests.fakes.anthropic_upstream import Json, Sse, message, text_stream, tool_call_stream
from tests.fakes.gemini_upstream import Answer, FakeGemini, call
from tests.fakes.openai_upstream import Chunks, FakeOpenAI, text_chunks, tool_chunks

VERSION = re.search(r"^GEMINI_CLI_VERSION \?= (\S+)", (Path(__file__).parent.parent / "Makefile").read_text(),
                    re.M)[1]
GEMINI = Path(__file__).parent.parent / ".cache" / "gemini-cli" / VERSION / "node_modules" / ".bin" / "gemini"
KEY = "agp-gemini-0123456789abcdefghijklmn"
COMMAND = "echo made-by-gemini-cli > proof.txt"
DONE = "The proof file is written."
SETTINGS = {"security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": False}},
            "privacy": {"usageStatisticsEnabled": False}, "telemetry": {"enabled": False},
            "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False}}


@pytest.fixture
def gemini_cli(tmp_path: Path):
    if not GEMINI.exists():
        pytest.skip(f"Gemini CLI not installed at {GEMINI} (make claude-cli)")

    def run(proxy: Any, *args: str, prompt: str = "write the proof file") -> Tuple[subprocess.CompletedProcess,
                                                                                   Path, float]:
        home, work = tmp_path / "gemini-home", tmp_path / "work"
        (home / ".gemini").mkdir(parents=True, exist_ok=True)
        work.mkdir(exist_ok=True)
        (home / ".gemini" / "settings.json").write_text(json.dumps(SETTINGS))
        env = clean_env(HOME=str(home), GOOGLE_GEMINI_BASE_URL=proxy.url, GEMINI_API_KEY=KEY)
        began = time.monotonic()
        result = subprocess.run([str(GEMINI), "-p", prompt, *args], cwd=work, env=env, capture_output=True,
                                text=True, timeout=180, stdin=subprocess.DEVNULL)
        return result, work, time.monotonic() - began
    return run


def team(fake: Any, **top: Any) -> Dict[str, Any]:
    return fake_config(fake, auth_mode="strict", admin_api_key="sk-admin-0123456789abcdef", clients=[
        {"name": "gemini-user", "api_key": KEY}], **top)


def check_the_loop(result: subprocess.CompletedProcess, work: Path) -> None:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (work / "proof.txt").read_text().strip() == "made-by-gemini-cli"  # the CLI ran the model's command
    assert DONE in result.stdout


def generations(fake: Any) -> List[Dict[str, Any]]:
    return [r.json for r in fake.requests if r.target.startswith("/v1/messages")]


def test_gemini_cli_runs_a_shell_tool_loop_to_an_anthropic_upstream(start_agproxy, fake, gemini_cli):
    proxy = start_agproxy(team(fake))
    fake.script(Sse(tool_call_stream("toolu_gemini_1", "run_shell_command", {"command": COMMAND})),
                Sse(text_stream(DONE)))
    result, work, _ = gemini_cli(proxy, "-m", "claude-sonnet-4-5", "--yolo")
    check_the_loop(result, work)
    first, second = generations(fake)[-2:]
    assert any(t["name"] == "run_shell_command" for t in first["tools"]) and first["stream"] is True
    tool_result = second["messages"][-1]["content"][0]
    assert tool_result["type"] == "tool_result" and tool_result["tool_use_id"] == "toolu_gemini_1"
    assert "gemini-user" in proxy.log()


def test_gemini_cli_with_its_default_model_falls_back_at_once_from_an_upstream_without_structured_output(
        start_agproxy, fake, gemini_cli):
    """Its first call, a routing classifier, asks for JSON by a schema; an upstream that answers
    prose gets a final 424, so the CLI goes on with its default model at once (it retried an answer
    it could not parse five times, for 100 s)."""
    proxy = start_agproxy(team(fake))
    fake.script(Json(200, message("I think the simple model will do.")), Sse(text_stream("Hello there.")))
    result, _, took = gemini_cli(proxy, prompt="say hello")
    assert result.returncode == 0 and "Hello there." in result.stdout, result.stderr[-3000:]
    routing, turn = generations(fake)[-2:]
    assert routing["output_config"]["format"]["type"] == "json_schema" and "output_config" not in turn
    assert took < 60, took  # a correctness bound: five retries with backoff take 100 s
    assert "not JSON" in proxy.log()


def test_gemini_cli_to_openai_and_gemini_upstreams(start_agproxy, fake, gemini_cli):
    with FakeOpenAI() as openai_fake, FakeGemini() as gemini_fake:
        config = team(fake)
        config["upstreams"] += [
            {"name": "local", "kind": "openai", "base_url": openai_fake.url, "accounts": [{"api_key": "k"}]},
            {"name": "gem", "kind": "gemini", "base_url": gemini_fake.url, "accounts": [{"api_key": "gemini-key"}]}]
        config["model_map"] = [{"match": "gemini-*", "upstream": "gem"}, {"match": "qwen*", "upstream": "local"}]
        proxy = start_agproxy(config)
        openai_fake.script(Chunks(tool_chunks([("call_1", "run_shell_command", json.dumps({"command": COMMAND}))])),
                           Chunks(text_chunks(DONE)))
        result, work, _ = gemini_cli(proxy, "-m", "qwen3-coder", "--yolo")
        check_the_loop(result, work)
        (work / "proof.txt").unlink()
        gemini_fake.script(Answer([call("run_shell_command", {"command": COMMAND})]), Answer([{"text": DONE}]))
        result, work, _ = gemini_cli(proxy, "-m", "gemini-2.5-flash", "--yolo")
        check_the_loop(result, work)
        # Gemini to gemini passes through: the CLI's own request, the fake's own signature back on its call
        signed = [p for c in gemini_fake.generations[-1]["contents"] for p in c.get("parts", [])
                  if "functionCall" in p]
        assert signed and signed[-1].get("thoughtSignature") in gemini_fake.issued
        assert "passthrough" in proxy.log()


def test_the_google_genai_sdk(start_agproxy, fake):
    proxy = start_agproxy(team(fake))
    fake.script(Json(200, message("Hello from the fake upstream.")), Sse(text_stream()))
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=proxy.url))
    answer = client.models.generate_content(model="claude-sonnet-4-5", contents="hi")
    assert answer.text == "Hello from the fake upstream." and answer.usage_metadata.prompt_token_count == 12
    streamed = "".join(chunk.text or "" for chunk in client.models.generate_content_stream(
        model="claude-sonnet-4-5", contents="hi"))
    assert streamed == "Hello from the fake upstream."
    assert fake.requests[-1].json["stream"] is True
    listed = [m.name for m in client.models.list()]
    assert "models/claude-fake" in listed
    stranger = genai.Client(api_key="agp-wrong-0123456789abcdefghijk",
                            http_options=types.HttpOptions(base_url=proxy.url))
    with pytest.raises(genai_errors.ClientError) as refused:
        stranger.models.generate_content(model="claude-sonnet-4-5", contents="hi")
    assert refused.value.code == 401 and refused.value.status == "UNAUTHENTICATED"


def limited(fake: Any, **limits: Any) -> Dict[str, Any]:
    """The team, its one client with ``limits``, and a JSON log to count its requests in."""
    config = team(fake, log_format="json")
    config["clients"][0].update(limits)
    return config


def accesses(proxy: Any, status: int) -> List[Dict[str, Any]]:
    """The access lines (log_format json) of the Gemini route's requests answered ``status``."""
    lines = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "access" and line["path"].startswith("/v1beta/models/")
            and line["status"] == status]


def prime(proxy: Any) -> None:
    """One request of the client, to spend its day or fill its minute."""
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=proxy.url))
    assert client.models.generate_content(model="claude-sonnet-4-5", contents="hi").text


def test_gemini_cli_stops_at_once_on_a_spent_day_and_shows_agproxys_words(start_agproxy, fake, gemini_cli):
    """Found by the attack on issue 21: a spent tokens_per_day was a 429 without details, which
    Gemini CLI retried with its own backoff for minutes (9 requests in 200 s); a per-day
    QuotaFailure is terminal to it, a single request."""
    proxy = start_agproxy(limited(fake, tokens_per_day=10))
    fake.script(Json(200, message("Spent.")))
    prime(proxy)
    result, _, took = gemini_cli(proxy, "-m", "claude-sonnet-4-5", prompt="say hello")
    assert result.returncode != 0 and took < 60, (took, result.stderr[-3000:])  # a bound: it retried for minutes
    assert len(accesses(proxy, 429)) == 1
    assert "tokens_per_day" in result.stderr and "gemini-user" in result.stderr  # agproxy's words, in its report


def test_gemini_cli_waits_out_a_full_minute_window_then_goes_on(start_agproxy, fake, gemini_cli):
    """A full requests_per_minute says its retry-after as a RetryInfo: Gemini CLI waits that long
    once and goes on, instead of trying every 5 to 30 s (five refusals in a minute)."""
    proxy = start_agproxy(limited(fake, requests_per_minute=1))
    fake.script(Json(200, message("First.")), Sse(text_stream("Hello after the minute.")))
    prime(proxy)
    result, _, _ = gemini_cli(proxy, "-m", "claude-sonnet-4-5", prompt="say hello")
    assert result.returncode == 0 and "Hello after the minute." in result.stdout, result.stderr[-3000:]
    assert len(accesses(proxy, 429)) == 1


def test_gemini_cli_stops_at_once_on_a_model_outside_the_clients_entry(start_agproxy, fake, gemini_cli):
    """A 403 is final to Gemini CLI. In -p mode it ends with "An unexpected critical error
    occurred:[object Object]" whatever the server says: Turn.run yields the error as a plain
    ``{message, status}`` object, the non-interactive handleError rethrows it in text output, and
    main()'s catch prints String() of what is not an Error (gemini.js). agproxy's words come in the
    report it prints before that (``_ApiError: {...}``)."""
    proxy = start_agproxy(limited(fake, models=["claude-haiku-*"]))
    result, _, took = gemini_cli(proxy, "-m", "claude-sonnet-4-5", prompt="say hello")
    assert result.returncode != 0 and took < 60, result.stderr[-3000:]
    assert len(accesses(proxy, 403)) == 1
    assert "may not use model 'claude-sonnet-4-5'" in result.stderr
