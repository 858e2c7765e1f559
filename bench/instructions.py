#!/usr/bin/env python3
"""A paced event's cost, independent of the machine's load: agproxy (the .pyz, built first) runs under
valgrind's callgrind with instrumentation off until the measured streams; a fake upstream in this process
sends each event only once the client has received the one before (one event per upstream read and per
client write, as a model's pace gives), STREAMS streams at once, EVENTS events each. Prints agproxy's
user-space instructions per event (each stream's request included). Dev only (needs valgrind).

Usage: python bench/instructions.py [ROOT] [streams] [events] [kind] (defaults: this checkout, 1, 500,
anthropic; kind openai: the upstream speaks Chat Completions, so the events are translated)."""
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(__file__)))
STREAMS = int(sys.argv[2]) if len(sys.argv) > 2 else 1
EVENTS = int(sys.argv[3]) if len(sys.argv) > 3 else 500
KIND = sys.argv[4] if len(sys.argv) > 4 else "anthropic"
sys.path.insert(0, os.path.join(ROOT, "bench"))
import upstream as fake  # noqa: E402

gates = {}

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            body = await reader.readexactly(length)
            sid = re.search(rb"stream-id (\w+)", body).group(1).decode()
            events = fake.openai_chunks(EVENTS, 20) if KIND == "openai" else fake.anthropic_events("bench", EVENTS, 20)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            gate = gates[sid]
            for i, ev in enumerate(events):
                writer.write(b"%x\r\n%b\r\n" % (len(ev), ev))
                if i >= 1:
                    await gate.get()  # the client has it
            writer.write(b"0\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        pass

async def client(port, sid):
    q = gates[sid] = asyncio.Queue()
    body = json.dumps({"model": "bench", "max_tokens": 100, "stream": True,
                       "messages": [{"role": "user", "content": f"stream-id {sid}"}]}).encode()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body))
    seen = 0
    buf = b""
    while True:
        data = await r.read(65536)
        if not data:
            break
        buf += data
        n = buf.count(b"\n\n")
        buf = buf[buf.rfind(b"\n\n") + 2:] if n else buf
        for _ in range(n):
            seen += 1
            q.put_nowait(1)
        if b"message_stop" in data:
            break
    w.close()
    return seen

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    up_port = server.sockets[0].getsockname()[1]
    wd = tempfile.mkdtemp()
    cfg = {"upstreams": [{"name": "up", "kind": KIND, "base_url": f"http://127.0.0.1:{up_port}",
                          "accounts": [{"name": "bench", "api_key": "k"}]}],
           "max_connections": 4096, "log_level": "warning", "state_file": ""}
    with open(os.path.join(wd, "c.json"), "w") as f:
        json.dump(cfg, f)
    out = os.environ.get("CGOUT") or os.path.join(wd, "cg.out")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools/build_pyz.py"), os.path.join(ROOT, "zipapp.spec"),
                    os.path.join(ROOT, "agproxy.pyz")], check=True, cwd=ROOT, capture_output=True)
    proc = await asyncio.create_subprocess_exec("valgrind", "--tool=callgrind", "--instr-atstart=no",
        f"--callgrind-out-file={out}", sys.executable, os.path.join(ROOT, "agproxy.pyz"), "--config",
        os.path.join(wd, "c.json"), "--port", "0", stderr=asyncio.subprocess.PIPE, cwd=wd)
    while True:
        line = (await proc.stderr.readline()).decode()
        if not line:
            raise SystemExit("no start")
        if line.startswith("agproxy listening on"):
            port = int(line.rsplit(":", 1)[1])
            break
    async def drain_err():
        while await proc.stderr.readline():
            pass
    asyncio.ensure_future(drain_err())
    await asyncio.gather(*(client(port, f"warm{i}") for i in range(STREAMS)))
    subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True)
    seen = await asyncio.gather(*(client(port, f"s{i}") for i in range(STREAMS)))
    subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True)
    await asyncio.sleep(0.5)  # the last stream's end is counted
    proc.terminate()
    await proc.wait()
    await asyncio.sleep(0.5)  # callgrind writes its file as it exits
    total = 0
    with open(out) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
    n = sum(seen)
    print(f"{os.path.basename(ROOT)} ({KIND}): {STREAMS} streams x {EVENTS} events, {n} received; "
          f"{total / n / 1000:.1f} k instructions per event (incl. each stream's request)")

asyncio.run(main())
