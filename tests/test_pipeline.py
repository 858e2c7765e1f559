"""The relay pipeline as a playbook: an upstream's bytes in (as its reads deliver them), what the
client is sent out. Every kind's answer goes through first_events, relay_events and
accumulate_events; the scripted response stands for the upstream connection, the pipeline is
the real one."""

from __future__ import annotations

import asyncio
import json
import types
from typing import Any, List, Optional, Sequence, Union

import pytest

import agproxy


class ScriptedResponse:
    """An upstream answer's body as a script of reads: bytes, or a pause in seconds."""

    def __init__(self, reads: Sequence[Union[bytes, float]], timeout_s: float = 5.0) -> None:
        self.reads = list(reads)
        self.timeout_s = timeout_s
        self.closed = False
        self.aborted = False
        self.abandoned = False
        self._draining = False
        self._closing: Optional[asyncio.Event] = None
        self._client = ScriptedResponse._Pool()

    async def read_chunk(self) -> bytes:
        while self.reads and not self.closed:
            step = self.reads.pop(0)
            if isinstance(step, (int, float)):  # a pause that a close ends, as a socket's would
                self._closing = self._closing or asyncio.Event()
                try:
                    await asyncio.wait_for(self._closing.wait(), step)
                except asyncio.TimeoutError:
                    pass
                continue
            return step
        return b""

    drain = agproxy.UpstreamResponse.drain  # the real hand-over to a background reader of the body's end

    def _ended_already(self) -> bool:
        return False  # a script's reads come through read_chunk alone: the background reader takes the rest

    class _Pool:
        """What drain() tells about the background reader: the pool's side, kept here to be looked at."""

        def __init__(self) -> None:
            self.finishing_drains: List[asyncio.Future] = []

        def finishing(self, origin: Any, drain: asyncio.Future) -> None:
            self.finishing_drains.append(drain)

    _conn = types.SimpleNamespace(origin=("http", "scripted", 80))

    def close(self, force: bool = False) -> None:
        if not self._draining or force:
            self.aborted = self.aborted or bool(self.reads)
            self.closed = True
            if self._closing is not None:
                self._closing.set()


def event(kind: str, **payload: Any) -> bytes:
    return agproxy.encode_sse_json(kind, dict(payload, type=kind))


START = event("message_start", message={"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                                        "content": [], "stop_reason": None, "usage": {"input_tokens": 3}})
BLOCK = event("content_block_start", index=0, content_block={"type": "text", "text": ""})
DELTA = event("content_block_delta", index=0, delta={"type": "text_delta", "text": "hello"})
END = (event("content_block_stop", index=0) + event("message_delta", delta={"stop_reason": "end_turn"},
                                                     usage={"output_tokens": 1}) + event("message_stop"))
ANSWER = START + BLOCK + DELTA + END


def events_of(data: Union[bytes, List[agproxy.Event]]) -> List[str]:
    if isinstance(data, list):  # the pipeline's events, before the edge encodes them
        return [e.name for e in data]
    return [e.event for e in agproxy.SSEDecoder().feed(data)]


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def relay(reads: Sequence[Union[bytes, float]], timeout_s: float = 5.0) -> bytes:
    response = ScriptedResponse(reads, timeout_s)
    events = agproxy.anthropic_events(response, "up")
    head = await agproxy.first_events(events)
    out = [chunk async for chunk in agproxy.relay_events(head, events, response, "up")]
    await asyncio.sleep(0)  # let a background drain finish
    assert response.closed or response._draining
    return b"".join(out)


# -- the head: what must arrive before the client is committed ------------------------------------

def test_the_head_waits_past_message_start_for_the_first_content_event():
    async def go() -> bytes:
        return await agproxy.first_events(agproxy.anthropic_events(ScriptedResponse([START, b": ping\n\n", BLOCK]),
                                                                   "up"))
    assert events_of(run(go())) == ["message_start", "content_block_start"]


@pytest.mark.parametrize("reads, says", [
    ([START], "ended before message_stop"),  # a stream that dies right after message_start: retried
    ([event("error", error={"type": "overloaded_error", "message": "busy"})], "busy"),
    ([BLOCK + START], "a content_block_start event before message_start"),
    ([b"data: not json\n\n"], "not JSON"),
    ([], "ended before message_stop"),
])
def test_a_head_that_fails_raises_so_the_attempt_can_be_retried(reads, says):
    async def go() -> None:
        await agproxy.first_events(agproxy.anthropic_events(ScriptedResponse(reads), "up"))
    with pytest.raises(agproxy.AgproxyError) as caught:
        run(go())
    assert says in caught.value.message


# -- the relay: what the client gets -----------------------------------------------------------

@pytest.mark.parametrize("split", [1, 7, 64, 10_000])
def test_an_answer_is_relayed_whole_however_its_bytes_arrive(split):
    reads = [ANSWER[i:i + split] for i in range(0, len(ANSWER), split)]
    out = run(relay(reads))
    assert out == ANSWER


def test_nothing_after_message_stop_is_relayed():
    out = run(relay([ANSWER + event("content_block_delta", index=0, delta={"type": "text_delta", "text": "late"})]))
    assert events_of(out)[-1] == "message_stop" and b"late" not in out


def test_a_stream_that_breaks_ends_with_an_error_event_after_its_last_whole_event():
    out = run(relay([START + BLOCK, DELTA[:20]]))
    assert events_of(out) == ["message_start", "content_block_start", "error"]
    assert json.loads(agproxy.SSEDecoder().feed(out)[-1].data)["error"]["type"] == "api_error"


def test_the_relay_itself_never_pings_while_the_upstream_is_silent():
    """Pings are the shell's (tests/test_keep_alive.py): the relay waits on its upstream alone."""
    assert events_of(run(relay([START + BLOCK, 0.3, DELTA + END]))) == events_of(ANSWER)


def test_an_upstream_that_sends_bytes_but_no_event_is_cut_at_timeout_s():
    trickle: List[Union[bytes, float]] = [START + BLOCK] + [b": keep-alive\n", 0.05] * 40  # comments, no blank line
    out = run(relay(trickle, timeout_s=0.5))
    assert events_of(out)[-1] == "error" and b"no event for 0.5 s" in out


def test_observe_sees_and_transform_rewrites_every_batch():
    seen: List[List[agproxy.Event]] = []
    response = ScriptedResponse([START + BLOCK, DELTA, END])

    async def go() -> bytes:
        events = agproxy.anthropic_events(response, "up")
        head = await agproxy.first_events(events)
        return b"".join([c async for c in agproxy.relay_events(head, events, response, "up", observe=seen.append,
                                                                transform=lambda b: b.replace(b"hello", b"HELLO"))])
    out = run(go())
    assert b"".join(agproxy.encode_events(batch) for batch in seen) == ANSWER
    assert out == ANSWER.replace(b"hello", b"HELLO")


# -- the same pipeline for a translated kind -------------------------------------------------------

def chunk(delta: dict, finish: Optional[str] = None) -> bytes:
    return b"data: " + json.dumps({"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                                  ).encode() + b"\n\n"


def test_a_translated_stream_goes_through_the_same_pipeline():
    reads = [chunk({"role": "assistant", "content": ""}), chunk({"content": "hel"}), chunk({"content": "lo"}),
             chunk({}, "stop") + b"data: [DONE]\n\n"]

    async def go() -> tuple:
        response = ScriptedResponse(list(reads))
        events = agproxy.openai_events(response, agproxy.OpenAIStreamTranslator("m", 3))
        head = await agproxy.first_events(events)
        relayed = b"".join([c async for c in agproxy.relay_events(head, events, response, "up")])
        whole = await agproxy.accumulate_events(
            agproxy.openai_events(ScriptedResponse(list(reads)), agproxy.OpenAIStreamTranslator("m", 3)))
        return head, relayed, whole

    head, relayed, whole = run(go())
    assert events_of(head)[0] == "message_start" and len(events_of(head)) >= 2
    assert events_of(relayed)[-1] == "message_stop"
    assert whole["content"] == [{"type": "text", "text": "hello"}] and whole["stop_reason"] == "end_turn"


def test_accumulate_gives_the_message_the_events_describe():
    message = run(agproxy.accumulate_events(agproxy.anthropic_events(ScriptedResponse([ANSWER]), "up")))
    assert message["content"] == [{"type": "text", "text": "hello"}] and message["usage"]["output_tokens"] == 1


# -- found by attacking the pipeline ----------------------------------------------------------------

def test_the_idle_deadline_counts_from_the_last_event_not_the_last_byte():
    """A comment (or a byte of an event) just before timeout_s must not buy another timeout_s."""
    async def go() -> tuple:
        loop = asyncio.get_running_loop()
        started = loop.time()
        out = await relay([START + BLOCK, 0.45, b": keep-alive\n\n", 0.45, b"event: content_b", 30.0],
                          timeout_s=0.5)
        return out, loop.time() - started
    out, took = run(go())
    assert events_of(out)[-1] == "error" and b"no event for 0.5 s" in out and took < 0.8


@pytest.mark.parametrize("batch", [
    # two data lines in one event and stray blank lines: not the plain kind, so decoded (and refused)
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
    b'"text":"x"}}\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}\n\n\n\n',
])
def test_an_event_that_is_not_json_never_passes_the_fast_path(batch):
    check = agproxy.EventStreamCheck("up")
    check.feed(START)
    with pytest.raises(agproxy.UpstreamFailure):
        check.feed(batch)


@pytest.mark.parametrize("batch", [b"hello garbage\n\nevent: message_stop\n\n", b"event: message_delta\n\n",
                                   b": just a comment\n\n"])
def test_lines_that_make_no_event_are_not_relayed(batch):
    check = agproxy.EventStreamCheck("up")
    check.feed(START)
    assert check.feed(batch) == [] and not check.finished
    assert agproxy.encode_events(check.feed(BLOCK)) == BLOCK


def test_a_stream_cut_by_agproxy_does_not_pass_off_its_last_bytes_as_an_event():
    out = run(relay([START + BLOCK, b"event: message_delta\ndata: {}", 30.0], timeout_s=0.3))
    assert events_of(out) == ["message_start", "content_block_start", "error"]
