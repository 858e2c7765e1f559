"""Shared fixtures: agproxy as a real subprocess on a free port, and the fake upstreams."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

import agproxy
from tests.fakes.anthropic_upstream import FakeAnthropic

ROOT = Path(__file__).resolve().parent.parent
AGPROXY = ROOT / "agproxy.py"
READY = re.compile(r"^agproxy listening on http://(\S+):(\d+)$")
#: Variables that would send agproxy's upstream traffic to a proxy or change its config lookup.
_SCRUBBED = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
             "no_proxy", "AGPROXY_CONFIG")


def clean_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(extra)
    return env


class _Running:
    """What a test sees of a running agproxy, in a process or in this one: its address and log."""

    host: str
    port: int
    stderr: List[str]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return "".join(self.stderr)


class Agproxy(_Running):
    """A running agproxy process; ``stderr`` collects everything it logged."""

    def __init__(self, args: List[str], env: Dict[str, str], cwd: Path, command: Optional[List[str]] = None) -> None:
        self.stderr: List[str] = []
        self.proc = subprocess.Popen(
            (command or [sys.executable, str(AGPROXY)]) + args, cwd=cwd, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.ready = threading.Event()
        self.host, self.port = "", 0
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        if not self.ready.wait(15):
            self.stop()
            raise RuntimeError("agproxy did not start:\n" + "".join(self.stderr))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            match = READY.match(line.rstrip("\n"))
            if match and not self.ready.is_set():
                self.host, self.port = match.group(1), int(match.group(2))
                self.ready.set()
        self.ready.set()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode


class TestClock:
    """Wall-clock time that a test moves: the retry engine's waits pass at once (moving the clock
    on), and ``advance()`` moves it, so rests and resets are tested without sleeping. With
    ``manual`` set, a wait lasts until the test has advanced the clock past its end."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self) -> None:
        self.offset = 0.0
        self.manual = False
        #: the length of every wait the server asked for, in order
        self.waits: List[float] = []

    def time(self) -> float:
        return time.time() + self.offset

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        end = self.offset + max(0.0, seconds)
        if not self.manual:
            self.offset = max(self.offset, end)
        while self.offset < end:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class _Lines:
    """A stream that keeps each line the log handler writes."""

    def __init__(self, lines: List[str]) -> None:
        self.lines = lines

    def write(self, text: str) -> None:
        self.lines.append(text)

    def flush(self) -> None:
        pass


class InProcessAgproxy(_Running):
    """agproxy's server in this process, on an event loop of its own in a thread, built from the
    same arguments, config file and state file as the command line (``agproxy.log_startup``
    included), with a :class:`TestClock`. It starts in milliseconds, where a process takes
    about 0.3 s; the CLI contract (signals, exit codes, the process's memory) is tested with
    :class:`Agproxy`."""

    def __init__(self, args: List[str], environ: Dict[str, str]) -> None:
        parsed = agproxy._arg_parser(False).parse_args(args)
        overrides = {"host": parsed.host, "port": parsed.port, "log_level": parsed.log_level}
        self.config = agproxy.load_config(parsed.config, overrides, environ)
        self.stderr: List[str] = []
        redactor = agproxy.Redactor(self.config.secrets())
        agproxy.configure_logging(self.config.log_level, redactor, _Lines(self.stderr), self.config.log_format)
        agproxy.log_startup(self.config)
        self.clock = TestClock()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        store = agproxy.StateFile(self.config.state_file)
        self.server = agproxy.Server(self.config, state=store.load(), persist=store.save, clock=self.clock.time,
                                     sleep=self.clock.sleep, redactor=redactor,
                                     load=lambda: agproxy.load_config(parsed.config, overrides, environ))
        self.host, self.port = self.run(self.server.start())
        self.stderr.append(f"agproxy listening on http://{self.host}:{self.port}\n")
        self._stopped = False

    def run(self, coroutine: Any, timeout: float = 10) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Shut down as SIGTERM would (requests in flight finish, the state is saved); 0."""
        if not self._stopped:
            self._stopped = True
            self.run(self.server.shutdown(), timeout + 30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        return 0


@contextlib.contextmanager
def alone_among_workers(tmp_path_factory: pytest.TempPathFactory, name: str = "heavy") -> Iterator[None]:
    """Run a block while no other pytest worker of this run runs one of the same ``name``: the fault
    matrices each start hundreds of requests at once against a fake that is one thread, and two of
    them at once on a 2-core machine met their upstream timeouts (a file lock in the run's shared
    temp directory; a run without workers just takes it)."""
    with open(tmp_path_factory.getbasetemp().parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_config(tmp_path: Path, config: Dict[str, Any], name: str = "agproxy-test.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def fake_config(fake: FakeAnthropic, **top: Any) -> Dict[str, Any]:
    """A config with one anthropic upstream (the fake) holding two accounts."""
    config: Dict[str, Any] = {
        "upstreams": [{
            "name": "fake", "kind": "anthropic", "base_url": fake.url, "timeout_s": 30,
            "accounts": [{"name": "alice@example.com", "api_key": "sk-upstream-alice"},
                         {"name": "bob@example.com", "api_key": "sk-upstream-bob"}],
        }],
    }
    config.update(top)
    return config


@pytest.fixture
def start_agproxy(tmp_path: Path) -> Iterator[Any]:
    """Start agproxy with a config dict (or None for no config at all); stopped after the test. It
    runs in this process (:class:`InProcessAgproxy`) unless the test needs a process: no config
    (the lookup), its own environment or command, or ``process=True`` (signals, memory)."""
    running: List[Agproxy] = []

    def start(config: Optional[Dict[str, Any]] = None, *extra_args: str, env: Optional[Dict[str, str]] = None,
              command: Optional[List[str]] = None, process: bool = False) -> Any:
        args = ["--port", "0", *extra_args]
        if config is not None:
            args = ["--config", str(write_config(tmp_path, config, f"agproxy-{len(running)}.json"))] + args
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        environ = env if env is not None else clean_env(HOME=str(home))
        proc: Any
        if process or config is None or env is not None or command is not None:
            proc = Agproxy(args, environ, tmp_path, command)  # the config lookup and the process are the test
        else:
            proc = InProcessAgproxy(args, environ)
        running.append(proc)
        return proc

    yield start
    for proc in running:
        proc.stop()


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as upstream:
        yield upstream


def raw_request(port: int, data: bytes, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
    """Send raw bytes, return everything the server sends back until it closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


#: The two ways a fake upstream sees agproxy abort a stream with a reset rather than a FIN: its socket
#: closed with bytes still unread in it (what the kernel does then), or closed with SO_LINGER 0.
RESET_HANG_UPS = ["close_with_unread_bytes", "reset"]


def hang_up_on_a_fake(port: int, path: str, body: bytes, how: str) -> None:
    """Ask a fake upstream on ``port`` for ``path`` as agproxy would (a POST of ``body``), read the start of
    its answer, then hang up by ``how`` (one of :data:`RESET_HANG_UPS`) as agproxy's abort of it may."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST %b HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%b" % (path.encode(), len(body), body))
    assert sock.recv(65536).startswith(b"HTTP/1.1 200"), "no answer began"
    if how == "close_with_unread_bytes":
        assert sock.recv(1, socket.MSG_PEEK), "nothing more came"  # waits for the next piece, left unread
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def leave_mid_stream(port: int, abandoned_at: List[float], wait_s: float = 5.0) -> Optional[float]:
    """Start a streaming request, read its first bytes, hang up; return how long the upstream took
    to notice (``abandoned_at`` is the fake's record), or None if it never did."""
    body = json.dumps({"model": "m", "max_tokens": 5, "stream": True,
                       "messages": [{"role": "user", "content": "x"}]}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    left = time.monotonic()
    while not abandoned_at and time.monotonic() < left + wait_s:
        time.sleep(0.02)
    return abandoned_at[0] - left if abandoned_at else None
