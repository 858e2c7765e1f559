"""The healing policy as a playbook: an upstream's error answer and what was sent in, the next
step out (``heal_decision`` is pure, as ``decide`` is for retries)."""

from __future__ import annotations

import json
from typing import Any, Dict

import pytest

import agproxy

SENT: Dict[str, Any] = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                        "context_management": {"edits": []}, "temperature": 0.2,
                        "tools": [{"name": "a", "input_schema": {}, "input_examples": [{}]}]}


def error(message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": message}}).encode()


def decide(status: int, data: bytes, *, beta: str = "", known=(), known_betas=(), heals: int = 0,
           statuses=(400,), thinking: bool = True, stripped: bool = False, window=None, max_tokens=None,
           fitted: bool = False, adaptive: bool = False) -> agproxy.Heal:
    sent = dict(SENT, max_tokens=max_tokens) if max_tokens else SENT
    sent = dict(sent, thinking={"type": "adaptive"}) if adaptive else sent
    return agproxy.heal_decision(status, data, sent, beta or None, known_fields=list(known),
                                 known_betas=list(known_betas), heals=heals, heal_statuses=statuses,
                                 heal_thinking=thinking, thinking_stripped=stripped, window=window, fitted=fitted)


VLLM_BUDGET = error("This model's maximum context length is 32768 tokens. However, you requested 148000 tokens "
                    "(20000 in the messages, 128000 in the completion). Please reduce the length of the messages "
                    "or completion.")
VLLM_NEWER = error("'max_tokens' or 'max_completion_tokens' is too large: 128000. This model's maximum context "
                   "length is 32768 tokens and your request has 20000 input tokens (128000 > 32768 - 20000).")
SGLANG = error("Requested token count exceeds the model's maximum context length of 32768 tokens. You requested a "
               "total of 148000 tokens: 20000 tokens from the input messages and 128000 tokens for the completion.")
LLAMA_CPP = json.dumps({"error": {"code": 400, "message": "the request exceeds the available context size, try "
                                  "increasing it", "type": "exceed_context_size_error", "n_prompt_tokens": 20000,
                                  "n_ctx": 32768}}).encode()
OPENAI_PROMPT = error("This model's maximum context length is 32768 tokens. However, your messages resulted in "
                      "40000 tokens. Please reduce the length of the messages.")


PLAYBOOK = [
    ("a field it rejects", dict(status=400, data=error("context_management: Extra inputs are not permitted")),
     agproxy.Heal("retry", ("context_management",))),
    ("a nested field, generalised", dict(status=400, data=error("tools.0.custom.input_examples: Extra inputs are "
                                                                "not permitted")),
     agproxy.Heal("retry", ("tools.*.input_examples",))),
    ("a field already known", dict(status=400, data=error("temperature: Extra inputs are not permitted"),
                                   known=["temperature"]), agproxy.Heal("fail")),
    ("a field not sent", dict(status=400, data=error("top_k: Extra inputs are not permitted")), agproxy.Heal("fail")),
    ("a field that carries meaning", dict(status=400, data=error("messages: Extra inputs are not permitted")),
     agproxy.Heal("fail")),
    ("a beta it rejects", dict(status=400, beta="a-1,b-2", data=error(
        "Unexpected value(s) `b-2` for the `anthropic-beta` header.")), agproxy.Heal("retry", (), ("b-2",))),
    ("a beta not sent", dict(status=400, beta="a-1", data=error(
        "Unexpected value(s) `b-2` for the `anthropic-beta` header.")), agproxy.Heal("fail")),
    ("out of heals", dict(status=400, heals=agproxy.MAX_HEALS,
                          data=error("temperature: Extra inputs are not permitted")), agproxy.Heal("fail")),
    ("a 422 where the kind heals 422", dict(status=422, statuses=(400, 422), data=json.dumps(
        {"detail": [{"loc": ["body", "temperature"], "msg": "Extra inputs are not permitted"}]}).encode()),
     agproxy.Heal("retry", ("temperature",))),
    ("a 422 where it does not", dict(status=422, data=error("temperature: Extra inputs are not permitted")),
     agproxy.Heal("fail")),
    ("a foreign thinking signature", dict(status=400, data=error("messages.1.content.0: Invalid `signature` in "
                                                                 "`thinking` block")), agproxy.Heal("strip_thinking")),
    ("a signature refusal once only", dict(status=400, stripped=True, data=error(
        "messages.1.content.0: Invalid `signature` in `thinking` block")), agproxy.Heal("fail")),
    ("a signature refusal where the kind has none", dict(status=400, thinking=False, data=error(
        "messages.1.content.0: Invalid `signature` in `thinking` block")), agproxy.Heal("fail")),
    ("an overflow with a window", dict(status=400, window=32768, data=error(
        "This model's maximum context length is 32768 tokens")), agproxy.Heal("overflow", window=32768)),
    ("an overflow that names the window", dict(status=400, data=error(
        "This model's maximum context length is 32768 tokens")), agproxy.Heal("overflow", window=32768)),
    ("an overflow with no window anywhere", dict(status=400, data=error("prompt is too long")), agproxy.Heal("fail")),
    ("a completion budget too big (vLLM)", dict(status=400, max_tokens=128000, data=VLLM_BUDGET),
     agproxy.Heal("fit", max_tokens=32768 - 20000 - 16, window=32768)),
    ("a completion budget too big (newer vLLM)", dict(status=400, max_tokens=128000, data=VLLM_NEWER),
     agproxy.Heal("fit", max_tokens=32768 - 20000 - 16, window=32768)),
    ("a completion budget too big (SGLang)", dict(status=400, max_tokens=128000, data=SGLANG),
     agproxy.Heal("fit", max_tokens=32768 - 20000 - 16, window=32768)),
    ("a completion budget too big (llama.cpp)", dict(status=400, max_tokens=128000, data=LLAMA_CPP),
     agproxy.Heal("fit", max_tokens=32768 - 20000 - 16, window=32768)),
    ("fitted once already", dict(status=400, max_tokens=12000, fitted=True, data=VLLM_BUDGET),
     agproxy.Heal("overflow", prompt_tokens=20000, window=32768)),
    ("a prompt too long for even a small completion", dict(status=400, max_tokens=128000, data=error(
        "This model's maximum context length is 32768 tokens. However, you requested 160000 tokens (32000 in the "
        "messages, 128000 in the completion).")), agproxy.Heal("overflow", prompt_tokens=32000, window=32768)),
    ("a prompt alone too long (OpenAI)", dict(status=400, max_tokens=1000, data=OPENAI_PROMPT),
     agproxy.Heal("overflow", prompt_tokens=40000, window=32768)),
    ("a server error", dict(status=500, data=b"oops"), agproxy.Heal("fail")),
    ("adaptive thinking where only enabled/disabled are known", dict(status=400, adaptive=True, data=error(
        "thinking.type: Input tag 'adaptive' found using 'type' does not match any of the expected tags: "
        "'disabled', 'enabled'")), agproxy.Heal("retry", ("thinking.type=basic",))),
    ("the same, when adaptive thinking was not sent", dict(status=400, data=error(
        "thinking.type: Input tag 'adaptive' found using 'type' does not match any of the expected tags: "
        "'disabled', 'enabled'")), agproxy.Heal("fail")),
]


@pytest.mark.parametrize("case, given, step", PLAYBOOK, ids=[c for c, _, _ in PLAYBOOK])
def test_heal_playbook(case: str, given: Dict[str, Any], step: agproxy.Heal) -> None:
    given = dict(given)
    assert decide(given.pop("status"), given.pop("data"), **given) == step
