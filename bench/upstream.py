"""A fast fake upstream for benchmarks: Anthropic SSE, OpenAI and Gemini chunk streams and JSON, shaped
by the model name (``bench-e<events>-s<bytes>-d<ms delay>``), so agproxy forwards the shape unchanged."""

from __future__ import annotations

import asyncio
import json
import re
import sys

SHAPE = re.compile(r"e(\d+)-s(\d+)-d(\d+)")
#: The first events go out together, without the delay, as a real upstream sends its head
#: (message_start and the first content_block_start): the delay stands for the time between tokens.
HEAD_EVENTS = 2


def shape(model: str) -> tuple:
    match = SHAPE.search(model or "")
    return (int(match.group(1)), int(match.group(2)), int(match.group(3)) / 1000) if match else (10, 20, 0.0)


def anthropic_events(model: str, count: int, size: int) -> list:
    text = "~" * size
    start = {"type": "message_start", "message": {"id": "msg_bench", "type": "message", "role": "assistant",
                                                  "model": model, "content": [], "stop_reason": None,
                                                  "stop_sequence": None, "usage": {"input_tokens": 10,
                                                                                   "output_tokens": 1}}}
    events = [("message_start", start),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}})]
    delta = ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": text}})
    events += [delta] * count
    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                     "stop_sequence": None},
                                  "usage": {"output_tokens": count}}),
               ("message_stop", {"type": "message_stop"})]
    return [f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events]


def openai_chunks(count: int, size: int, real: bool = False) -> list:
    """Chat Completions chunks: each a delta of text, then the finish and the usage. ``real``: each
    chunk with the members OpenAI's own carry (``created``, ``system_fingerprint``, a null ``logprobs``
    and ``finish_reason``, no spaces: 277 bytes as an SSE line with a 20-character delta, Gemini's
    here 254); without it the shortest chunk a server may send (158)."""
    text = "~" * size
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "bench"}
    extra = {"logprobs": None, "finish_reason": None} if real else {}
    if real:
        base = {"id": "chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL", "object": "chat.completion.chunk",
                "created": 1727346168, "model": "bench-2024-08-06", "system_fingerprint": "fp_5050236cbd"}
    chunks = [dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, **extra}])]
    chunks += [dict(base, choices=[{"index": 0, "delta": {"content": text}, **extra}])] * count
    chunks.append(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    chunks.append(dict(base, choices=[], usage={"prompt_tokens": 10, "completion_tokens": count}))
    separators = (",", ":") if real else None  # (OpenAI writes its JSON without spaces)
    return [f"data: {json.dumps(c, separators=separators)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


def gemini_chunks(count: int, size: int) -> list:
    """Gemini's stream: each chunk a part of text and the usage so far; the last with finishReason."""
    text = "~" * size
    chunks = [{"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}],
               "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": i + 1, "totalTokenCount": i + 11},
               "modelVersion": "bench", "responseId": "bench"} for i in range(count)]
    chunks[-1]["candidates"][0]["finishReason"] = "STOP"
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks]


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            target = lines[0].split(" ")[1]
            length, close = 0, False
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
                elif line.lower().replace(" ", "") == "connection:close":
                    close = True
            body = json.loads(await reader.readexactly(length)) if length else {}
            model = body.get("model", "") or target  # Gemini names the model in the path
            count, size, delay = shape(model)
            gemini = ":streamGenerateContent" in target
            if target.endswith("/models"):
                payload = json.dumps({"data": [{"id": "bench", "type": "model"}]}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                             % (len(payload), payload))
                continue
            if not body.get("stream") and not gemini:
                payload = json.dumps({"id": "msg_bench", "type": "message", "role": "assistant", "model": model,
                                      "content": [{"type": "text", "text": "~" * size}], "stop_reason": "end_turn",
                                      "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 5}}
                                     ).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                             % (len(payload), payload))
                await writer.drain()
                if close:
                    return
                continue
            events = openai_chunks(count, size, model.endswith("-real")) if target.endswith("/chat/completions") else \
                gemini_chunks(count, size) if gemini else anthropic_events(model, count, size)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i, event in enumerate(events):
                writer.write(b"%x\r\n%b\r\n" % (len(event), event))
                if delay and HEAD_EVENTS - 1 <= i < len(events) - 1:  # the body's end follows the last event
                    await writer.drain()
                    await asyncio.sleep(delay)
                elif writer.transport.get_write_buffer_size() > 262144:
                    await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            if close:
                return
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=2048)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
