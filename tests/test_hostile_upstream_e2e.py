"""Hostile upstreams end to end, over real sockets, from the Anthropic SDK (issue 22's attack, round 6):
each test held a defect until it was fixed."""

from __future__ import annotations

import json
import urllib.request
from typing import Any, List

import anthropic
import openai

from tests.fakes.misbehaving import (
    ALICE_KEY,
    Ctx,
    MisbehavingUpstream,
    Send,
    anthropic_events,
    gemini_events,
    openai_events,
    response,
    sse,
)


def _gemini_then_a_second_answer(ctx: Ctx) -> List[Any]:
    """A whole Gemini answer (its last chunk says finishReason STOP), then the chunks of another."""
    events = gemini_events("Hello from the first answer.") + gemini_events("SECOND ANSWER smuggled in.")
    return [Send(response("200 OK", "text/event-stream", b"".join(events), framing="chunked"))]


def test_gemini_text_after_the_finish_reason_is_not_part_of_the_answer(start_agproxy: Any) -> None:
    """Gemini ends an answer with a chunk that has a finishReason (a stream has no other end marker);
    text in chunks after it belongs to no answer of this request (as events after an Anthropic
    message_stop do not). The translator appended it: the client got two answers run together."""
    with MisbehavingUpstream({"second": _gemini_then_a_second_answer}) as fake:
        config = {"auth_mode": "off", "state_file": "", "max_retry_attempts": 1,
                  "upstreams": [{"name": "g", "kind": "gemini", "base_url": fake.url_for("second", "gemini", "s"),
                                 "accounts": [{"name": "alice", "api_key": ALICE_KEY}], "timeout_s": 5}]}
        proxy = start_agproxy(config)
        client = anthropic.Anthropic(base_url=proxy.url, api_key="client", max_retries=0, timeout=20)
        ask = {"model": "gemini-2.5-flash", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
        whole = client.messages.create(**ask)
        with client.messages.stream(**ask) as stream:
            streamed = stream.get_final_message()
    for message in (whole, streamed):
        assert [block.text for block in message.content] == ["Hello from the first answer."], message
        assert message.stop_reason == "end_turn"


def _openai_then_a_second_answer(ctx: Ctx) -> List[Any]:
    """A Chat Completions answer up to its finish_reason and usage, the text of another, then [DONE]."""
    events = openai_events("Hello from the first answer.", done=False) + openai_events("SECOND ANSWER smuggled in.")
    return [Send(response("200 OK", "text/event-stream", b"".join(events), framing="chunked"))]


def test_openai_text_after_the_finish_reason_is_not_part_of_the_answer(start_agproxy: Any) -> None:
    """A Chat Completions choice ends with its finish_reason; a later chunk may still bring usage (it
    counts) but its text is no part of this answer (as for Gemini above). It was appended."""
    with MisbehavingUpstream({"second": _openai_then_a_second_answer}) as fake:
        config = {"auth_mode": "off", "state_file": "", "max_retry_attempts": 1,
                  "upstreams": [{"name": "o", "kind": "openai", "base_url": fake.url_for("second", "openai", "s"),
                                 "accounts": [{"name": "alice", "api_key": ALICE_KEY}], "timeout_s": 5}]}
        proxy = start_agproxy(config)
        client = anthropic.Anthropic(base_url=proxy.url, api_key="client", max_retries=0, timeout=20)
        ask = {"model": "gpt-4o", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
        whole = client.messages.create(**ask)
        with client.messages.stream(**ask) as stream:
            streamed = stream.get_final_message()
    for message in (whole, streamed):
        assert [block.text for block in message.content] == ["Hello from the first answer."], message
        assert message.stop_reason == "end_turn"
        assert message.usage.output_tokens == 6


def _chat_then_a_second_answer(ctx: Ctx) -> List[Any]:
    """A whole Chat Completions answer (finish_reason stop, its usage chunk), then another's chunks, then [DONE]."""
    first = openai_events("Hello from the first answer.", done=False)
    events = first + openai_events("SECOND ANSWER smuggled in.")
    return [Send(response("200 OK", "text/event-stream", b"".join(events), framing="chunked"))]


def test_chat_text_after_the_finish_reason_is_not_passed_through(start_agproxy: Any) -> None:
    """A Chat client of an openai upstream gets the upstream's own chunks (the passthrough); the
    translator takes nothing after choice 0's finish_reason (an Anthropic client, or a Chat client
    asking for the whole answer, gets the first answer alone), and the passthrough relayed the second
    answer's chunks after it, so the same request streamed said two answers run together."""
    with MisbehavingUpstream({"second": _chat_then_a_second_answer}) as fake:
        config = {"auth_mode": "off", "state_file": "", "max_retry_attempts": 1,
                  "upstreams": [{"name": "o", "kind": "openai", "base_url": fake.url_for("second", "openai", "s"),
                                 "accounts": [{"name": "alice", "api_key": ALICE_KEY}], "timeout_s": 5}]}
        proxy = start_agproxy(config)
        chat = openai.OpenAI(base_url=proxy.url + "/v1", api_key="client", max_retries=0, timeout=20)
        ask = {"model": "qwen3", "messages": [{"role": "user", "content": "hi"}]}
        whole = chat.chat.completions.create(**ask).choices[0].message.content
        chunks = list(chat.chat.completions.create(stream=True, stream_options={"include_usage": True}, **ask))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        client = anthropic.Anthropic(base_url=proxy.url, api_key="client", max_retries=0, timeout=20)
        with client.messages.stream(max_tokens=64, **ask) as stream:
            translated = stream.get_final_message().content[0].text
    assert whole == streamed == translated == "Hello from the first answer."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_gemini_text_after_the_finish_reason_is_not_passed_through(start_agproxy: Any) -> None:
    """The same for a Gemini client of a gemini upstream (its chunks passed through): nothing after
    the chunk with the finishReason, as the translator (fixed for it in e57bea1) takes nothing."""
    with MisbehavingUpstream({"second": _gemini_then_a_second_answer}) as fake:
        config = {"auth_mode": "off", "state_file": "", "max_retry_attempts": 1,
                  "upstreams": [{"name": "g", "kind": "gemini", "base_url": fake.url_for("second", "gemini", "s"),
                                 "accounts": [{"name": "alice", "api_key": ALICE_KEY}], "timeout_s": 5}]}
        proxy = start_agproxy(config)
        body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode()
        texts = []
        for method in ("generateContent", "streamGenerateContent?alt=sse", "streamGenerateContent"):
            request = urllib.request.Request(f"{proxy.url}/v1beta/models/gemini-2.5-flash:{method}", body,
                                             {"Content-Type": "application/json", "x-goog-api-key": "client"})
            with urllib.request.urlopen(request, timeout=20) as answer:
                data = answer.read().decode()
            chunks = [json.loads(line[6:]) for line in data.splitlines() if line.startswith("data: ")] \
                if "alt=sse" in method else json.loads(data)
            chunks = chunks if isinstance(chunks, list) else [chunks]
            texts.append("".join(p.get("text", "") for c in chunks for k in c.get("candidates", [])
                                 for p in k.get("content", {}).get("parts", [])))
    assert texts == ["Hello from the first answer."] * 3


def _an_error_after_the_end(ctx: Ctx) -> List[Any]:
    """A whole answer of the upstream's kind (its end marker and usage), then an error chunk or event."""
    if ctx.kind == "openai":
        events = openai_events("Hello first.", done=False) + [
            sse(None, {"error": {"message": "late failure", "type": "server_error"}}), b"data: [DONE]\n\n"]
    elif ctx.kind == "gemini":
        events = gemini_events("Hello first.") + [
            b'data: {"error": {"code": 500, "message": "late failure", "status": "INTERNAL"}}\r\n\r\n']
    else:
        events = anthropic_events(ctx.model, "Hello first.") + [
            sse("error", {"type": "error", "error": {"type": "api_error", "message": "late failure"}})]
    return [Send(response("200 OK", "text/event-stream", b"".join(events), framing="chunked"))]


def test_an_error_after_the_answer_ended_does_not_undo_it(start_agproxy: Any) -> None:
    """An error an upstream sends after its answer's end marker (Chat's finish_reason, Gemini's
    finishReason) is, like the text after it, no part of the answer, as it is after an Anthropic
    message_stop: the translators made the whole answer a 502 (the first read held it all)."""
    with MisbehavingUpstream({"late": _an_error_after_the_end}) as fake:
        upstreams = [{"name": kind, "kind": kind, "base_url": fake.url_for("late", kind, "s"),
                      "accounts": [{"name": "alice", "api_key": ALICE_KEY}], "timeout_s": 5}
                     for kind in ("openai", "gemini", "anthropic")]
        proxy = start_agproxy({"auth_mode": "off", "state_file": "", "max_retry_attempts": 1, "upstreams": upstreams,
                               "model_map": [{"match": "gemini-*", "upstream": "gemini"},
                                             {"match": "claude-*", "upstream": "anthropic"},
                                             {"match": "*", "upstream": "openai"}]})
        client = anthropic.Anthropic(base_url=proxy.url, api_key="client", max_retries=0, timeout=20)
        texts = []
        for model in ("qwen3", "gemini-2.5-flash", "claude-x"):
            ask = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
            texts.append(client.messages.create(**ask).content[0].text)
            with client.messages.stream(**ask) as stream:
                texts.append(stream.get_final_message().content[0].text)
        chat = openai.OpenAI(base_url=proxy.url + "/v1", api_key="client", max_retries=0, timeout=20)
        chunks = chat.chat.completions.create(model="qwen3", messages=[{"role": "user", "content": "hi"}], stream=True)
        texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
    assert texts == ["Hello first."] * 7
