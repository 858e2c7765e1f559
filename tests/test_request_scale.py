"""Large but legal requests (well under max_body_bytes) against a real agproxy: the work agproxy
does on a request (validate, sanitize, translate, estimate) must grow in proportion to its size
and must not hold the event loop, so one big request never stalls every other client.

Each test posts one request of tens of thousands of messages, blocks or tools to an upstream of
each kind (a well-behaved fake) while another client polls ``/healthz`` every 20 ms; the worst
``/healthz`` latency while the big request is served is what the test bounds.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, Iterator, List

import pytest

import agproxy
from tests.conftest import Agproxy, clean_env, write_config
from tests.fakes.misbehaving import KEYS, MisbehavingUpstream, Send, good
from tests.wire_check import get, post_json, program_under_test

#: the worst /healthz latency allowed while one big request is served
MAX_STALL_S = 1.0


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agproxy]:
    tmp = tmp_path_factory.mktemp("scale")
    with MisbehavingUpstream({"fine": lambda ctx: [Send(good(ctx))]}) as fake:
        accounts = [{"name": "alice", "api_key": KEYS[0]}]
        config = {
            "auth_mode": "off", "state_file": "",
            "upstreams": [
                {"name": "demo", "kind": "demo"},
                {"name": "anth", "kind": "anthropic", "base_url": fake.url_for("fine", "anthropic", "scale"),
                 "accounts": accounts},
                {"name": "compat", "kind": "anthropic", "profile": "compatible",
                 "base_url": fake.url_for("fine", "anthropic", "compat"), "accounts": accounts},
                {"name": "oa", "kind": "openai", "base_url": fake.url_for("fine", "openai", "scale"),
                 "accounts": accounts},
            ],
            "model_map": [{"match": "anth-*", "upstream": "anth"}, {"match": "compat-*", "upstream": "compat"},
                          {"match": "oa-*", "upstream": "oa"}, {"match": "*", "upstream": "demo"}],
        }
        running = Agproxy(["--config", str(write_config(tmp, config)), "--port", "0"], clean_env(HOME=str(tmp)),
                          tmp, program_under_test())
        try:
            yield running
        finally:
            running.stop()


def tool_turn_reversed(n: int) -> List[Dict[str, Any]]:
    """One assistant turn with n tool calls, answered in the next turn in reverse order."""
    return [{"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{i}", "name": "Bash", "input": {}}
                                              for i in range(n)]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": "ok"}
                                         for i in range(n - 1, -1, -1)]}]


def results_after_text(n: int) -> List[Dict[str, Any]]:
    """n tool calls whose results come each after a text block (agproxy moves results first)."""
    return [{"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{i}", "name": "Bash", "input": {}}
                                              for i in range(n)]},
            {"role": "user", "content": [block for i in range(n) for block in (
                {"type": "text", "text": "note"},
                {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": "ok"})]}]


def consecutive_user(n: int) -> List[Dict[str, Any]]:
    """n user messages in a row (merged into one turn for compatible and OpenAI upstreams)."""
    return [{"role": "user", "content": [{"type": "text", "text": "hi"}]} for _ in range(n)]


def system_messages(n: int) -> List[Dict[str, Any]]:
    """System-role messages between user messages (folded into the system prompt)."""
    return [{"role": "system" if i % 2 else "user", "content": "s"} for i in range(n)]


SHAPES = {
    "tool_turn_reversed": (tool_turn_reversed, 15000, ("anth-x", "oa-x")),
    "results_after_text": (results_after_text, 15000, ("anth-x", "oa-x")),
    "consecutive_user": (consecutive_user, 30000, ("compat-x", "oa-x")),
    "system_messages": (system_messages, 60000, ("compat-x", "oa-x")),
}


def serve_while_probing(proxy: Agproxy, path: str, body: Dict[str, Any]) -> Dict[str, Any]:
    worst, stop = [0.0], threading.Event()

    def probe() -> None:
        while not stop.is_set():
            started = time.monotonic()
            get(proxy.port, "/healthz", 60)
            worst[0] = max(worst[0], time.monotonic() - started)
            time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    started = time.monotonic()
    try:
        answer = post_json(proxy.port, path, body, 120)
    finally:
        took = time.monotonic() - started
        stop.set()
        prober.join()
    return {"answer": answer, "took": took, "stall": worst[0]}


@pytest.mark.parametrize("shape, model", [(s, m) for s, (_, _, models) in SHAPES.items() for m in models],
                         ids=[f"{s}-{m}" for s, (_, _, models) in SHAPES.items() for m in models])
def test_a_big_request_does_not_stall_other_clients(proxy: Agproxy, shape: str, model: str) -> None:
    build, n, _ = SHAPES[shape]
    result = serve_while_probing(proxy, "/v1/messages", {"model": model, "max_tokens": 16, "messages": build(n)})
    answer = result["answer"]
    assert answer.status == 200, answer.describe(300)
    assert result["stall"] < MAX_STALL_S, (
        f"{shape} (n={n}) to {model}: answered in {result['took']:.1f} s; /healthz waited up to "
        f"{result['stall']:.1f} s meanwhile (the event loop was held)")


@pytest.mark.parametrize("model, path", [("demo-x", "/v1/messages"), ("oa-x", "/v1/messages/count_tokens")])
def test_many_images_are_estimated_quickly(proxy: Agproxy, model: str, path: str) -> None:
    """4,000 tiny images (0.4 MB of request): the token estimate must not cost ~0.5 ms of CPU per image
    (it tokenized a 3,000-character placeholder for each), which a 32 MB body turns into minutes."""
    images = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
              for _ in range(4000)]
    body: Dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": images}]}
    if path == "/v1/messages":
        body["max_tokens"] = 16
    result = serve_while_probing(proxy, path, body)
    assert result["answer"].status == 200, result["answer"].describe(300)
    assert result["took"] < 1.0 and result["stall"] < MAX_STALL_S, (
        f"4000 images to {model} {path}: answered in {result['took']:.1f} s, /healthz stalled {result['stall']:.1f} s")


def _parse(body: bytes) -> Any:
    """Run :meth:`Server._json_body` on ``body`` by hand: the parsed body, or "yielded" where it gave the
    loop back before returning (it needs no state of the server)."""
    request = agproxy.Request("POST", "/v1/messages", (1, 1), [("Content-Type", "application/json")], body)
    step = agproxy.Server._json_body(None, request)  # type: ignore[arg-type]
    try:
        step.send(None)
    except StopIteration as done:
        return done.value
    step.close()
    return "yielded"


def test_a_big_body_gives_the_loop_back_between_its_parse_and_its_preparation() -> None:
    """A 2 MB Claude Code body costs some ms to parse and as many to validate, sanitize and encode:
    the loop runs other streams' events in between, so they wait for one slice, not both; a small
    body goes straight on (a turn of the loop would cost more than it saves)."""
    small, big = (json.dumps({"model": "m", "max_tokens": 10, "messages": tool_turn_reversed(n)}).encode()
                  for n in (10, 5000))
    assert len(big) > agproxy._YIELD_AFTER_PARSE_BYTES > len(small)
    assert _parse(small) == json.loads(small)
    assert _parse(big) == "yielded"
