"""What a broken upstream's answers do, in the pure code that reads them (the fault matrix runs the
same faults through real agproxy processes): JSON nested past any stack, numbers past int()'s
digits, an account out of credit, Anthropic event streams outside the Messages grammar."""

from __future__ import annotations

import json
from typing import Any, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agproxy
from tests.wire_check import grammar_problems, parse_sse

DEEP = b"[" * 100_000 + b"]" * 100_000


def event(name: str, payload: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


START = event("message_start", {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant",
                                                                     "content": [], "usage": {"input_tokens": 3}}})
BLOCK = event("content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}})
DELTA = event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": "Hi"}})
STOP_BLOCK = event("content_block_stop", {"type": "content_block_stop", "index": 0})
END = event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                              "usage": {"output_tokens": 1}}) + event("message_stop", {"type": "message_stop"})
PING = event("ping", {"type": "ping"})


# -- JSON nested past any stack --------------------------------------------------------------------------

@pytest.mark.parametrize("text", [DEEP, b'{"a": ' + DEEP + b"}", b"[" * 81 + b"]" * 81])
def test_upstream_json_nested_too_deep_is_garbage_not_a_crash(text: bytes) -> None:
    with pytest.raises(agproxy.JSONTooDeep):
        agproxy.loads_strict(text)


def test_upstream_json_as_deep_as_a_client_may_send_back_is_read() -> None:
    assert agproxy.loads_strict(b"[" * 80 + b"]" * 80)


@pytest.mark.parametrize("reader", [
    lambda body: agproxy.anthropic_error_from_upstream(400, body, "u"),
    lambda body: agproxy.context_report(body),
    lambda body: agproxy.upstream_error_text(body),
    lambda body: agproxy.upstream_status_of(403, body),
])
def test_an_error_body_nested_too_deep_reads_as_words(reader: Any) -> None:
    reader(b'{"error": {"message": "x", "deep": ' + DEEP + b"}}")


# -- numbers past int()'s digits ------------------------------------------------------------------------

@pytest.mark.parametrize("digits", [11, 4000, 5000, 20000])
def test_a_context_window_with_too_many_digits_is_absent(digits: int) -> None:
    said = agproxy.context_report(json.dumps({"error": {"message": (
        f"This model's maximum context length is {'9' * digits} tokens. However, you requested {'8' * digits} "
        f"tokens ({'7' * digits} in the messages, 64 in the completion).")}}).encode())
    assert said == agproxy.ContextReport(None, None)
    fields = b'{"error": {"message": "the request exceeds the available context size", "n_prompt_tokens": ' + \
        b"8" * min(digits, 4000) + b', "n_ctx": ' + b"9" * min(digits, 4000) + b"}}"
    assert agproxy.context_report(fields) == agproxy.ContextReport(None, None)


def test_a_plausible_context_window_is_still_read() -> None:
    said = agproxy.context_report(b'{"error": {"message": "This model\'s maximum context length is 32768 tokens. '
                                  b'However, you requested 40000 tokens (39000 in the messages, 1000 in the '
                                  b'completion)."}}')
    assert said == agproxy.ContextReport(32768, 39000)


@pytest.mark.parametrize("value", [pytest.param(10 ** 4000, id="10**4000"), 10 ** 10, -1, 1.5, True, "7", None])
def test_an_implausible_token_count_is_absent(value: Any) -> None:
    assert agproxy.upstream_count(value) is None
    assert agproxy.openai_usage({"prompt_tokens": value, "completion_tokens": value})["input_tokens"] in (0, 1)


def test_usage_past_the_bound_is_not_scaled() -> None:
    usage = {"input_tokens": 10 ** 4000, "cache_read_input_tokens": 100}
    agproxy.scale_usage(usage, 1000, 200_000)
    assert usage == {"input_tokens": 10 ** 4000, "cache_read_input_tokens": 20_000}


# -- count_tokens is validated as a request is ----------------------------------------------------------

@pytest.mark.parametrize("field, value", [("stop_sequences", 5), ("stop_sequences", [1]), ("stream", "yes"),
                                          ("temperature", "hot"), ("top_k", 1.5), ("max_tokens", 0),
                                          ("max_tokens", "many")])
def test_a_count_with_a_wrongly_typed_field_is_refused(field: str, value: Any) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], field: value}
    with pytest.raises(agproxy.InvalidRequest, match=field):
        agproxy.validate_messages_request(body, count_tokens=True)


def test_a_count_needs_no_max_tokens() -> None:
    agproxy.validate_messages_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                                      count_tokens=True)


# -- an account out of credit ------------------------------------------------------------------------------

CREDIT_400 = json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or "
    "purchase credits.")}}).encode()


@pytest.mark.parametrize("status, body", [
    (402, b'{"error": {"message": "Insufficient credits", "code": 402}}'),
    (402, b"payment required"),
    (400, CREDIT_400),
    (400, b'{"type": "error", "error": {"type": "invalid_request_error", "message": "You have reached your specified '
          b'API usage limits. You will regain access on 2026-01-01 at 00:00 UTC."}}'),
    (429, b'{"error": {"message": "You exceeded your current quota, please check your plan and billing details.", '
          b'"type": "insufficient_quota", "param": null, "code": "insufficient_quota"}}'),
])
def test_an_account_out_of_credit_is_a_402_that_rests_it_and_tries_the_next(status: int, body: bytes) -> None:
    error = agproxy.anthropic_error_from_upstream(status, body, "up")
    assert (error.status, error.error_type, error.upstream_status) == (402, "billing_error", 402)
    assert "'up'" in error.message and "credit balance is too low" not in error.message.lower()
    decision = agproxy.decide(agproxy.Outcome(402, failure=error.upstream_words), 1, 3)
    assert decision.retry and decision.rejected_key and decision.cooldown_s == agproxy.OUT_OF_CREDIT_COOLDOWN_S
    assert decision.reason.startswith("out of credit (HTTP")


@pytest.mark.parametrize("status, message", [(400, "messages: credit balance is too low, the user says"),
                                             (429, "rate limited")])
def test_words_about_credit_elsewhere_are_not_out_of_credit(status: int, message: str) -> None:
    body = json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": message}}).encode()
    assert agproxy.anthropic_error_from_upstream(status, body, "up").status == status


# -- Anthropic event streams and the Messages grammar -----------------------------------------------------

def relayed(*batches: bytes) -> bytes:
    check = agproxy.EventStreamCheck("up")
    return b"".join(agproxy.encode_events(check.feed(batch)) for batch in batches)


def names(data: bytes) -> List[str]:
    return [name for name, _ in parse_sse(data)[0]]


@pytest.mark.parametrize("batches, says", [
    ((PING + BLOCK,), "content_block_start event before message_start"),
    ((START, DELTA), "not open"),
    ((START + BLOCK, START), "a second message_start"),
    ((START + BLOCK + BLOCK,), "started twice"),
    ((START + BLOCK + STOP_BLOCK + DELTA,), "not open"),
    ((START, STOP_BLOCK), "not open"),
    ((START + BLOCK.replace(b"event: content_block_start", b"event: content_block_delta"),), "named"),
    ((START + b'event: content_block_start\ndata: {"type": "content_block_start", "index": "0"}\n\n',), "index"),
    ((START + b"event: ping\ndata: " + DEEP + b"\n\n",), "not JSON"),
])
def test_a_stream_outside_the_grammar_fails_the_attempt(batches: Tuple[bytes, ...], says: str) -> None:
    with pytest.raises(agproxy.UpstreamFailure, match=says):
        relayed(*batches)


def test_a_stream_in_the_grammar_is_relayed_as_it_came() -> None:
    stream = START + BLOCK + PING + DELTA + STOP_BLOCK + END
    assert relayed(stream) == stream
    assert relayed(START, BLOCK + PING, DELTA, STOP_BLOCK + END) == stream


def test_an_unknown_event_type_is_dropped_and_named_once() -> None:
    check = agproxy.EventStreamCheck("up")
    future = event("future_thing", {"type": "future_thing", "index": 3})
    out = agproxy.encode_events(check.feed(START + future + BLOCK) + check.feed(future + DELTA + STOP_BLOCK + END))
    assert names(out) == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                          "message_delta", "message_stop"]
    assert check.unknown == ["future_thing"]


def test_an_event_without_a_name_is_named_after_its_type() -> None:
    bare = b"".join(b"data: " + e.split(b"data: ", 1)[1] for e in (START, BLOCK, DELTA, STOP_BLOCK))
    out = relayed(bare + END)
    assert names(out) == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                          "message_delta", "message_stop"]


@pytest.mark.parametrize("text", ["a\ud800b", "\udfff", "x\\\ud800"])
def test_a_lone_surrogate_becomes_u_fffd_as_without_a_stream(text: str) -> None:
    delta = event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                          "delta": {"type": "text_delta", "text": text}})
    out = relayed(START + BLOCK + delta + STOP_BLOCK + END)
    events, problems = parse_sse(out)
    assert not problems and not grammar_problems(events)
    streamed = json.loads(events[2][1])["delta"]["text"]
    whole = agproxy.loads_strict(json.dumps({"text": text}))["text"]
    assert streamed == whole and "\ufffd" in streamed


EVENT_NAMES = st.sampled_from(["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                               "message_delta", "message_stop", "ping", "error", "future_thing", ""])


@st.composite
def events(draw: Any) -> bytes:
    """An event near the grammar: a known type (or not), an index near the open ones, its name
    its type (or another, or none), now and then a lone surrogate."""
    kind = draw(EVENT_NAMES) or "message_delta"
    name = draw(st.sampled_from([kind, kind, kind, "", "content_block_delta"]))
    payload: dict = {"type": kind, "index": draw(st.integers(0, 3))}
    if kind == "message_start":
        payload["message"] = {"id": "m", "type": "message", "role": "assistant", "content": []}
    if kind == "content_block_delta":
        payload["delta"] = {"type": "text_delta", "text": draw(st.sampled_from(["a", "\ud800", "b\udc00"]))}
    if kind == "error":
        payload["error"] = {"type": "overloaded_error", "message": "busy"}
    return (f"event: {name}\n" if name else "").encode() + b"data: " + json.dumps(payload).encode() + b"\n\n"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(events(), min_size=1, max_size=4), max_size=8))
def test_what_is_relayed_is_always_in_the_grammar(batches: List[List[bytes]]) -> None:
    """Whatever an upstream sends, what the check lets through (before it fails, if it does) is a
    stream in the Messages grammar, every event named after its type."""
    check = agproxy.EventStreamCheck("up")
    out = bytearray()
    try:
        for batch in batches:
            out += agproxy.encode_events(check.feed(b"".join(batch)))
    except agproxy.UpstreamFailure:
        pass
    found, problems = parse_sse(bytes(out)) if out else ([], [])
    assert not problems and not grammar_problems(found), (bytes(out), grammar_problems(found))
    assert all(name in ("message_start", "content_block_start", "content_block_delta", "content_block_stop",
                        "message_delta", "message_stop", "ping", "error") for name, _ in found)


# -- what Claude Code shows for an upstream out of credit (both pinned versions) --------------------------

from tests.conftest import fake_config  # noqa: E402
from tests.fakes.anthropic_upstream import Json  # noqa: E402
from tests.test_claude_code import claude, cli  # noqa: E402,F401  (the CLI fixtures, each pinned version)


def test_claude_code_shows_which_upstream_is_out_of_credit(start_agproxy, fake, tmp_path, claude):  # noqa: F811
    """Anthropic's own words contain "credit balance is too low", for which Claude Code shows only
    "Credit balance is too low · Add funds: <Anthropic's billing page>" (the user's own Anthropic
    login, not the upstream's account). agproxy's message, naming the upstream, is shown instead."""
    for key in ("sk-upstream-alice", "sk-upstream-bob"):
        fake.script_for(key, *[Json(400, json.loads(CREDIT_400))] * 5)
    proxy = start_agproxy(fake_config(fake, state_file=""))
    result = claude(proxy, "say hello", tmp_path)
    shown = result.stdout + result.stderr
    assert result.returncode != 0 and "out of credit" in shown and "'fake'" in shown, shown
    assert "add funds" not in shown.lower() and "credit balance is too low" not in shown.lower(), shown
    assert sorted(set(fake.keys())) == ["sk-upstream-alice", "sk-upstream-bob"]
