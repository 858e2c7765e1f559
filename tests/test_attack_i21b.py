"""Attacks on issue 21's same-protocol passthrough (Chat Completions in to an ``openai`` upstream):
each test here failed on the code it was written against."""

from __future__ import annotations

import json

from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.openai_upstream import Chat, Chunks, FakeOpenAI, chunk, completion
from tests.test_passthrough import ALICE, HI, chat_client, config_with, post


def test_a_client_sending_both_length_fields_gets_the_one_its_budget_held(start_agproxy, fake):
    """A client sent ``max_completion_tokens: 5`` and ``max_tokens: 1000000``: the internal form (and
    the day budget's hold) took 5, as OpenAI does, but the passthrough sent the upstream 1000000, so
    a client near the end of its tokens_per_day had a whole model's output held as 5 tokens."""
    with FakeOpenAI() as openai_fake, FakeGemini() as gemini_fake:
        proxy = start_agproxy(config_with(fake, openai_fake, gemini_fake))
        openai_fake.script(Chat(200, completion("Hi.")))
        status, _ = post(proxy.url + "/v1/chat/completions",
                         {"model": "qwen3", "messages": HI, "max_completion_tokens": 5, "max_tokens": 1000000},
                         {"Authorization": f"Bearer {ALICE}"})
        assert status == 200
        sent = openai_fake.chats[-1]
        assert sent["max_tokens"] == 5 and "max_completion_tokens" not in sent


def test_a_chunk_the_upstream_spreads_over_several_data_lines_reaches_the_client_as_one(start_agproxy, fake):
    """An upstream wrote each chunk's JSON pretty-printed over several ``data:`` lines (valid SSE: the
    lines join with a newline, JSON whitespace). The passthrough wrote the joined text after one
    ``data: ``, so its other lines reached the client as lines of no field: the openai SDK raised a
    JSONDecodeError on every such stream (google-genai too, on Gemini's)."""
    pieces = [chunk({"role": "assistant", "content": "Hello"}), chunk({"content": " there"}), chunk({}, "stop")]
    spread = [json.dumps(piece, indent=1).replace("\n", "\ndata: ") for piece in pieces]
    with FakeOpenAI() as openai_fake, FakeGemini() as gemini_fake:
        proxy = start_agproxy(config_with(fake, openai_fake, gemini_fake))
        openai_fake.script(Chunks(spread))
        stream = chat_client(proxy).chat.completions.create(model="qwen3", messages=HI, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello there"
