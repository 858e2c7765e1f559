#!/usr/bin/env python3
"""How far agproxy's tokenizer-free estimate is from a real Claude tokenizer.

The only Claude tokenizer published for offline use is the one older ``anthropic`` SDKs shipped
(``anthropic/tokenizer.json``, 0.34.2 and before; current models' tokenizers are not published,
so this measures the estimate against a real Claude BPE vocabulary, not today's exact counts).
Needs the ``tokenizers`` package; the SDK wheel is fetched with ``pip download`` into .cache/.

Usage: python bench/token_estimate.py   (prints a table; numbers go to the token-count note of docs/api.md)
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import agproxy  # noqa: E402
from tests.corpus import corpus  # noqa: E402

CACHE = os.path.join(ROOT, ".cache", "claude-tokenizer")


def tokenizer():
    from tokenizers import Tokenizer

    path = os.path.join(CACHE, "tokenizer.json")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", CACHE,
                        "anthropic==0.34.2"], check=True)
        wheel = glob.glob(os.path.join(CACHE, "anthropic-0.34.2*.whl"))[0]
        with zipfile.ZipFile(wheel) as archive, open(path, "wb") as out:
            out.write(archive.read("anthropic/tokenizer.json"))
    return Tokenizer.from_file(path)


def samples():
    stdlib = sysconfig.get_paths()["stdlib"]
    for name in ("json/__init__.py", "argparse.py", "asyncio/streams.py", "http/client.py"):
        with open(os.path.join(stdlib, name), encoding="utf-8") as f:
            text = f.read()
        yield "python source", [text[i:i + 4000] for i in range(0, min(len(text), 40000), 4000)]
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    yield "markdown prose", [readme[i:i + 3000] for i in range(0, len(readme), 3000)]
    import pydoc
    prose = [pydoc.getdoc(obj) for obj in (dict, list, str, json, zipfile, statistics) if pydoc.getdoc(obj)]
    yield "English docstrings", prose
    bodies = [json.dumps(body) for _, _, body in corpus()]
    yield "Claude Code request JSON", bodies
    yield "shell output", ["total 48\ndrwxr-xr-x 5 root root 4096 Nov 25 11:27 .\n-rw-r--r-- 1 root root 120 "
                           "Nov 25 11:27 README.md\n" * 40, "FAILED tests/test_app.py::test_add - assert 4 == 3\n" * 30]


def main():
    tok = tokenizer()
    print(f"{'text kind':28} {'pieces':>6} {'real':>8} {'estimate':>8} {'ratio':>6} {'worst':>6}")
    ratios_all = []
    for kind, texts in samples():
        real = [len(tok.encode(t).ids) for t in texts]
        est = [agproxy.estimate_text_tokens(t) for t in texts]
        ratios = [e / r for e, r in zip(est, real) if r]
        ratios_all += ratios
        worst = max(ratios, key=lambda x: abs(x - 1))
        print(f"{kind:28} {len(texts):6} {sum(real):8} {sum(est):8} {sum(est) / sum(real):6.2f} {worst:6.2f}")
    print(f"{'all pieces: median ratio':28} {statistics.median(ratios_all):.2f}, "
          f"p10 {statistics.quantiles(ratios_all, n=10)[0]:.2f}, p90 {statistics.quantiles(ratios_all, n=10)[-1]:.2f}")


if __name__ == "__main__":
    main()
