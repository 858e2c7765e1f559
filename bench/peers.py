#!/usr/bin/env python3
"""agproxy against claude-code-router and LiteLLM on the OpenAI translation path, in one run.

Each gateway takes Anthropic Messages requests and translates them for the same fast fake
OpenAI upstream (bench/upstream.py); 50 concurrent streams of 700 deltas each. Reported per
gateway: deltas/s, CPU per 1,000 deltas, RSS after the run, and start-up to accepting requests.
Each gateway first runs one whole round unmeasured (a JIT, Node's or none, reaches its steady
state), then ROUNDS measured rounds; the table gives their medians, and the ratios of agproxy to
claude-code-router from the same run.
The peers are benchmark-only: installed into .cache/peers (npm for claude-code-router, a venv
for LiteLLM) on first use, never a dependency of agproxy. Usage: python bench/peers.py
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import load  # noqa: E402
from run import cpu_seconds, rss_mb, start_upstream  # noqa: E402

PEERS = os.path.join(ROOT, ".cache", "peers")
CCR_VERSION = "2.0.0"
STREAMS, DELTAS = 50, 700
ROUNDS = 3
MODEL = f"bench-e{DELTAS}-s20-d0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 90) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return time.perf_counter() - started
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("did not start")


def listening_pid(port: int, fallback: int) -> int:
    """The process that listens on ``port`` (a launcher may have started it)."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    if "pid=" in out:
        return int(out.split("pid=")[1].split(",")[0])
    return fallback


def ccr(upstream: int, workdir: str) -> Optional[tuple]:
    folder = os.path.join(PEERS, "ccr")
    binary = os.path.join(folder, "node_modules", ".bin", "ccr")
    if not os.path.exists(binary):
        if not shutil.which("npm"):
            return None
        subprocess.run(["npm", "install", "--prefix", folder, "--no-audit", "--no-fund", "--loglevel=error",
                        f"@musistudio/claude-code-router@{CCR_VERSION}"], check=True)
    home = os.path.join(workdir, "ccr-home")
    os.makedirs(os.path.join(home, ".claude-code-router"), exist_ok=True)
    port = free_port()
    with open(os.path.join(home, ".claude-code-router", "config.json"), "w") as f:
        json.dump({"LOG": False, "PORT": port, "HOST": "127.0.0.1", "Providers": [
            {"name": "bench", "api_base_url": f"http://127.0.0.1:{upstream}/v1/chat/completions", "api_key": "k",
             "models": [MODEL]}], "Router": {"default": f"bench,{MODEL}"}}, f)
    proc = subprocess.Popen([binary, "start"], env=dict(os.environ, HOME=home), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return proc, port, f"claude-code-router {CCR_VERSION} (Node {node_version()})"


def node_version() -> str:
    return subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()


def litellm(upstream: int, workdir: str) -> Optional[tuple]:
    binary = os.path.join(PEERS, "litellm-venv", "bin", "litellm")
    if not os.path.exists(binary):
        venv = os.path.join(PEERS, "litellm-venv")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        result = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "litellm[proxy]"])
        if result.returncode != 0:
            return None
    version = subprocess.run([os.path.join(PEERS, "litellm-venv", "bin", "python"), "-c",
                              "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True).stdout.strip()
    # hosted_vllm/ speaks Chat Completions; LiteLLM's openai/ goes through the Responses API
    config = os.path.join(workdir, "litellm.yaml")
    with open(config, "w") as f:
        f.write(f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: hosted_vllm/{MODEL}\n"
                f"      api_base: http://127.0.0.1:{upstream}/v1\n      api_key: k\n")
    port = free_port()
    # the console script's entry point through the venv's python: the script's shebang names the path
    # the venv was made at, which a moved checkout no longer has
    command = [os.path.join(PEERS, "litellm-venv", "bin", "python"), "-c",
               "import sys; from litellm import run_server; sys.argv[0] = 'litellm'; sys.exit(run_server())"]
    proc = subprocess.Popen(command + ["--config", config, "--port", str(port), "--host", "127.0.0.1",
                             "--num_workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, LITELLM_LOG="ERROR", LITELLM_MASTER_KEY="sk-bench-master-key"),
                            cwd=workdir)
    return proc, port, f"LiteLLM {version}"


def agproxy(upstream: int, workdir: str) -> tuple:
    config = os.path.join(workdir, "agproxy.json")
    with open(config, "w") as f:
        json.dump({"upstreams": [{"name": "oa", "kind": "openai", "base_url": f"http://127.0.0.1:{upstream}/v1",
                                  "accounts": [{"name": "bench", "api_key": "k"}]}],
                   "log_level": "warning", "state_file": "", "max_connections": 4096}, f)
    port = free_port()
    program = os.path.join(ROOT, "agproxy.pyz")
    proc = subprocess.Popen([sys.executable, program if os.path.exists(program) else os.path.join(ROOT, "agproxy.py"),
                             "--config", config, "--port", str(port)], stderr=subprocess.DEVNULL)
    return proc, port, "agproxy (Python " + sys.version.split()[0] + ")"


def measure(start: Any, upstream: int, workdir: str) -> Optional[Dict[str, Any]]:
    launched = start(upstream, workdir)
    if launched is None:
        return None
    proc, port, name = launched
    try:
        startup = wait_for_port(port, proc)
        pid = listening_pid(port, proc.pid)
        body = {"model": MODEL, "max_tokens": 1000, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        key = {"x-api-key": "sk-bench-master-key", "Authorization": "Bearer sk-bench-master-key"}
        asyncio.run(load.run("127.0.0.1", port, "/v1/messages", body, STREAMS, STREAMS, timeout=300,
                             headers=key))  # warm up: one whole round, unmeasured
        rounds = []
        for _ in range(ROUNDS):
            cpu0 = cpu_seconds(pid)
            out = asyncio.run(load.run("127.0.0.1", port, "/v1/messages", body, STREAMS, STREAMS, timeout=300,
                                       headers=key))
            cpu = cpu_seconds(pid) - cpu0
            ok = [r for r in out["results"] if r["ok"]]
            deltas = sum(r["payload"] for r in ok) // 20  # each upstream delta carries 20 "~"
            rounds.append((deltas / out["wall"], cpu / max(1, deltas) * 1e6, len(ok)))
        return {"name": name, "deltas_per_s": statistics.median(r[0] for r in rounds),
                "cpu_ms": statistics.median(r[1] for r in rounds), "ok": min(r[2] for r in rounds),
                "rss": rss_mb(pid), "startup": startup}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    upstream, port = start_upstream()
    rows: List[Dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as workdir:
            for start in (agproxy, ccr, litellm):
                try:
                    result = measure(start, port, workdir)
                except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
                    print(f"{start.__name__}: {exc}", file=sys.stderr)
                    result = None
                if result:
                    rows.append(result)
    finally:
        upstream.terminate()
    lines = [f"## Peers: OpenAI translation path, {STREAMS} concurrent streams x {DELTAS} deltas, same run", "",
             f"Medians of {ROUNDS} rounds, each gateway after one unmeasured round of the same load.", "",
             "| gateway | deltas/s | CPU per 1,000 deltas | RSS after | start-up | streams ok |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['deltas_per_s']:,.0f} | {r['cpu_ms']:.1f} ms | {r['rss']:.0f} MB | "
                     f"{r['startup'] * 1000:.0f} ms | {r['ok']}/{STREAMS} |")
    ours = next((r for r in rows if r["name"].startswith("agproxy")), None)
    theirs = next((r for r in rows if r["name"].startswith("claude-code-router")), None)
    if ours and theirs:
        lines += ["", f"agproxy / claude-code-router in this run: {ours['deltas_per_s'] / theirs['deltas_per_s']:.2f}x "
                      f"the deltas/s, {ours['cpu_ms'] / theirs['cpu_ms']:.2f}x the CPU per delta, "
                      f"{ours['rss'] / theirs['rss']:.2f}x the RSS."]
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(HERE, "PEERS.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
