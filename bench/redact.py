#!/usr/bin/env python3
"""What the redaction of relayed streams costs per event, in this process (no sockets): the batch
of events every kind's relay hands the client, through the stream's redactor (DeltaRedactor, where
the agproxy has one) and the byte redactor every response goes through. Compares two agproxy.py
files, e.g. ``python bench/redact.py OLD.py agproxy.py``. Keys are the length of real ones."""

from __future__ import annotations

import importlib.util
import random
import sys
import time
from typing import Any, Callable, List

KEYS = ["sk-ant-api03-" + "".join(random.Random(1).choices("abcdefghijklmnopqrstuvwxyz0123456789_-", k=80)),
        "AIzaSy" + "".join(random.Random(2).choices("abcdefghijklmnopqrstuvwxyzABCDEF0123456789", k=33)),
        "gw-token-" + "".join(random.Random(3).choices("0123456789abcdef", k=32))]
WORDS = ("The quick brown fox jumps over the lazy dog; it is a sentence with words, numbers like 42 and "
         "code such as `print(x)` or a path /usr/lib/python3 and some \u00e9t\u00e9 text.\n").split(" ")


def load(path: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"agproxy_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def batches(module: Any, per_batch: int, count: int) -> List[bytes]:
    out, n = [], 0
    for _ in range(count):
        events = []
        for _ in range(per_batch):
            word = WORDS[n % len(WORDS)]
            n += 1
            events.append(module.encode_sse_json("content_block_delta", {
                "type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " " + word}}))
        out.append(b"".join(events))
    return out


def per_event_us(relay: Callable[[bytes], bytes], work: List[bytes], per_batch: int) -> float:
    best = float("inf")
    for _ in range(7):
        started = time.process_time()
        for batch in work:
            relay(batch)
        best = min(best, time.process_time() - started)
    return best / (len(work) * per_batch) * 1e6


def main() -> None:
    for path in sys.argv[1:]:
        module = load(path)
        redactor = module.Redactor(KEYS)
        streams = getattr(module, "DeltaRedactor", None)
        for per_batch in (1, 20):
            work = batches(module, per_batch, 4000 // per_batch)
            if streams is None:
                relay = redactor.data
            else:
                deltas = streams(redactor)
                relay = (lambda r, d: lambda batch: r.data(d.feed(batch)))(redactor, deltas)
            print(f"{path}: {per_batch:>2} events per batch: {per_event_us(relay, work, per_batch):.2f} us per event")


if __name__ == "__main__":
    main()
