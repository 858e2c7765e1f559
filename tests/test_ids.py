"""Message ids: every answer agproxy translates (OpenAI and Gemini kinds, streamed and whole) and
every answer it makes itself (demo, warmups) has an id of its own, never the upstream's.

Claude Code merges assistant turns that share a message id; Ollama's ids repeat (``chatcmpl-`` and
a number below 1000) and some servers send one constant id, so an id taken from the upstream made
two tool turns one and lost a tool result (an endless tool loop; the real CLI's case is in
tests/test_claude_code.py). The upstream's id stays findable in ``X-Upstream-Message-Id``.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any, Dict, Tuple

import pytest

from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.openai_upstream import Chat, Chunks, FakeOpenAI, completion, text_chunks


def ask(proxy: Any, stream: bool, text: str = "hi") -> Tuple[str, Dict[str, str]]:
    """The id of the answer to one request, and the response headers (lower-case names)."""
    body = {"model": "m", "max_tokens": 50, "stream": stream, "messages": [{"role": "user", "content": text}]}
    request = urllib.request.Request(proxy.url + "/v1/messages", json.dumps(body).encode(),
                                     {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        data = response.read().decode()
        headers = {k.lower(): v for k, v in response.getheaders()}
    if not stream:
        return json.loads(data)["id"], headers
    start = next(line for line in data.splitlines() if line.startswith("data:") and "message_start" in line)
    return json.loads(start[5:])["message"]["id"], headers


def openai_config(fake: FakeOpenAI) -> Dict[str, Any]:
    return {"upstreams": [{"name": "local", "kind": "openai", "base_url": fake.url,
                           "accounts": [{"name": "ollama", "api_key": "none"}]}]}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_server_with_one_constant_id_gets_two_answers_with_two_ids(start_agproxy, stream):
    with FakeOpenAI() as local:  # every answer of the fake is "chatcmpl-fake"
        proxy = start_agproxy(openai_config(local))
        first, headers = ask(proxy, stream)
        second, _ = ask(proxy, stream)
    assert first != second
    assert first.startswith("msg_") and "chatcmpl-fake" not in first + second
    assert headers["x-upstream-message-id"] == "chatcmpl-fake"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_gemini_answers_with_one_response_id_get_two_ids(start_agproxy, stream):
    with FakeGemini() as gemini:  # every answer of the fake is "fakeResponse01"
        proxy = start_agproxy({"upstreams": [{"name": "gemini", "kind": "gemini", "base_url": gemini.url,
                                              "accounts": [{"name": "key-1", "api_key": "gemini-key"}]}],
                               "model_map": [{"match": "*", "upstream": "gemini", "model": "gemini-2.5-flash"}]})
        first, headers = ask(proxy, stream)
        second, _ = ask(proxy, stream)
    assert first != second and "fakeResponse01" not in first + second
    assert headers["x-upstream-message-id"] == "fakeResponse01"


HOSTILE_ID = "chatcmpl-1\r\nSet-Cookie: stolen=1\x00" + "x" * 5000


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_hostile_upstream_id_reaches_the_header_cleaned_and_bounded(start_agproxy, stream):
    with FakeOpenAI() as local:
        if stream:
            local.script(Chunks([dict(c, id=HOSTILE_ID) for c in text_chunks()]))
        else:
            local.script(Chat(200, dict(completion(), id=HOSTILE_ID)))
        proxy = start_agproxy(openai_config(local))
        answer_id, headers = ask(proxy, stream)
    assert "set-cookie" not in headers and len(answer_id) < 40
    relayed = headers["x-upstream-message-id"]
    assert relayed.startswith("chatcmpl-1Set-Cookie:stolen=1x") and len(relayed) == 128


def test_a_server_without_ids_gets_no_header(start_agproxy):
    with FakeOpenAI() as local:
        answer = completion()
        del answer["id"]
        local.script(Chat(200, answer))
        proxy = start_agproxy(openai_config(local))
        answer_id, headers = ask(proxy, False)
    assert answer_id.startswith("msg_") and "x-upstream-message-id" not in headers


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_demo_answers_and_local_warmups_have_ids_of_their_own(start_agproxy, stream):
    proxy = start_agproxy({"upstreams": [{"name": "demo", "kind": "demo"}]})
    demo = {ask(proxy, stream)[0] for _ in range(2)}
    warmups = [ask(proxy, stream, "Warmup") for _ in range(2)]
    assert all(h.get("x-warmup-intercepted") == "true" for _, h in warmups)
    assert len(demo | {i for i, _ in warmups}) == 4
