"""The deployment recipes in examples/ do what docs/deployment.md says, run for real on this machine.

nginx (Debian's package) runs examples/nginx.conf as shipped, only its ports and log path swapped for
the test's, in front of two agproxy processes. Each instance's one account has its own name, so
``X-Account-Email`` tells which instance answered. Skipped, with the reason, when nginx is absent.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from tests.conftest import ROOT
from tests.fakes.anthropic_upstream import FakeAnthropic, Sse, text_stream

NGINX_EXAMPLE = ROOT / "examples" / "nginx.conf"
#: the key the team's clients send; the instances sit behind nginx, so auth is on, not left to auth_mode auto
TEAM_KEY = "sk-team-example-key"
#: Claude Code sessions, deterministic so that nginx's hash puts them in the same place every run; an odd
#: number, so that round-robin over two instances (no hash) would move each of them
SESSIONS = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"agproxy-test-session-{i}")) for i in range(11)]


def _nginx_binary() -> Optional[str]:
    found = shutil.which("nginx")
    if found:
        return found
    return next((path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)), None)


NGINX = _nginx_binary()
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx-light; "
                                                      ".ci/run installs it where apt-get works)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nginx_site(listen_port: int, instance_ports: List[int], access_log: Path) -> str:
    """examples/nginx.conf with its listen address, its instances and its log path replaced."""
    text = NGINX_EXAMPLE.read_text(encoding="utf-8")
    servers = list(re.finditer(r"^(\s*)server 127\.0\.0\.1:\d+( [^;\n]*)?;\n", text, re.M))
    assert len(servers) >= 2, "examples/nginx.conf no longer lists its instances as `server 127.0.0.1:PORT ...;`"
    indent, options = servers[0].group(1), servers[0].group(2) or ""
    ours = "".join(f"{indent}server 127.0.0.1:{port}{options};\n" for port in instance_ports)
    text = text[:servers[0].start()] + ours + text[servers[-1].end():]
    assert text.count("listen 8080;") == 1 and text.count("/var/log/nginx/agproxy.log") == 1
    return (text.replace("listen 8080;", f"listen 127.0.0.1:{listen_port};")
            .replace("/var/log/nginx/agproxy.log", str(access_log)))


class Nginx:
    """nginx in the foreground with its own config, pid, logs and temp folders under ``folder``."""

    def __init__(self, folder: Path, instance_ports: List[int]) -> None:
        folder.mkdir()
        self.folder = folder
        self.port = _free_port()
        self.access_log = folder / "access.log"
        self.error_log = folder / "error.log"
        (folder / "agproxy.conf").write_text(nginx_site(self.port, instance_ports, self.access_log))
        temp = "\n".join(f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                                 "uwsgi", "scgi"))
        # as root the workers would switch to nobody, who cannot enter pytest's private temp folders
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.config = folder / "nginx.conf"
        self.config.write_text(f"{user}worker_processes 1;\ndaemon off;\npid {folder / 'nginx.pid'};\n"
                               f"error_log {self.error_log} info;\nevents {{ worker_connections 256; }}\n"
                               f"http {{\n{temp}\n    access_log off;\n    include {folder / 'agproxy.conf'};\n}}\n")
        self.command = [str(NGINX), "-p", str(folder), "-e", str(self.error_log), "-c", str(self.config)]
        self.proc: Optional[subprocess.Popen] = None

    def test_config(self) -> subprocess.CompletedProcess:
        """``nginx -t``: the config is valid."""
        return subprocess.run(self.command + ["-t"], capture_output=True, text=True, timeout=30)

    def start(self) -> Nginx:
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}: {self.proc.stderr.read()}"
                                   f"{self.error_log.read_text() if self.error_log.exists() else ''}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not listen within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def instance_config(fake: FakeAnthropic, name: str) -> Dict[str, Any]:
    """One instance: the shared fake upstream through an account named after the instance."""
    return {"auth_mode": "all_except_health", "api_key": TEAM_KEY,
            "upstreams": [{"name": "fake", "kind": "anthropic", "base_url": fake.url, "timeout_s": 30,
                           "accounts": [{"name": f"{name}@example.com", "api_key": f"sk-upstream-{name}"}]}]}


class Answer:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def instance(self) -> str:
        return (self.headers.get("X-Account-Email") or "").split("@")[0]


def _messages_body(stream: bool) -> bytes:
    return json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 20, "stream": stream,
                       "messages": [{"role": "user", "content": "hello"}]}).encode()


def _headers(session: Optional[str]) -> Dict[str, str]:
    headers = {"Content-Type": "application/json", "x-api-key": TEAM_KEY, "anthropic-version": "2023-06-01"}
    if session:
        headers["X-Claude-Code-Session-Id"] = session
    return headers


def ask(port: int, session: Optional[str], stream: bool = False) -> Answer:
    """POST /v1/messages through nginx as Claude Code would, the answer read to its end."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", "/v1/messages", _messages_body(stream), _headers(session))
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


def where_sessions_go(port: int, rounds: int = 4) -> Dict[str, List[str]]:
    """Each session's instances over ``rounds`` requests, interleaved, streamed and not in turn."""
    seen: Dict[str, List[str]] = {session: [] for session in SESSIONS}
    for turn in range(rounds):
        for session in SESSIONS:
            answer = ask(port, session, stream=turn % 2 == 1)
            assert answer.status == 200, answer.body[:300]
            if turn % 2 == 1:
                assert answer.headers.get("Content-Type", "").startswith("text/event-stream")
                assert b"event: message_stop" in answer.body
            seen[session].append(answer.instance)
    return seen


@pytest.fixture
def fake_upstream() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as upstream:
        yield upstream


@pytest.fixture
def team(tmp_path: Path, fake_upstream: FakeAnthropic, start_agproxy: Any) -> Iterator[Tuple[Nginx, Dict[str, Any]]]:
    """Two agproxy processes, "one" and "two", behind nginx running examples/nginx.conf."""
    instances = {name: start_agproxy(instance_config(fake_upstream, name), process=True) for name in ("one", "two")}
    nginx = Nginx(tmp_path / "nginx", [proxy.port for proxy in instances.values()])
    try:
        yield nginx.start(), instances
    finally:
        nginx.stop()


def test_the_nginx_example_is_a_valid_config(tmp_path: Path):
    checked = Nginx(tmp_path / "nginx", [8045, 8046]).test_config()
    assert checked.returncode == 0, checked.stderr


def test_one_session_stays_on_one_instance_and_sessions_spread_over_both(team: Tuple[Nginx, Dict[str, Any]]):
    nginx, _ = team
    seen = where_sessions_go(nginx.port)
    moved = {session: instances for session, instances in seen.items() if len(set(instances)) != 1}
    assert not moved, f"sessions answered by more than one instance: {moved}"
    assert {instances[0] for instances in seen.values()} == {"one", "two"}
    # a client without a session id (curl, the SDKs) is spread too, not all sent to one instance
    assert {ask(nginx.port, None).instance for _ in range(16)} == {"one", "two"}


def test_nginx_passes_each_event_on_as_it_comes(team: Tuple[Nginx, Dict[str, Any]], fake_upstream: FakeAnthropic):
    nginx, _ = team
    fake_upstream.script(Sse(text_stream("one two three four five six seven eight"), delay_s=0.25))
    with socket.create_connection(("127.0.0.1", nginx.port), timeout=20) as sock:
        body = _messages_body(True)
        head = "".join(f"{k}: {v}\r\n" for k, v in _headers(SESSIONS[0]).items())
        sock.sendall(f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)
        received = bytearray()
        while b"event: content_block_delta" not in received:
            chunk = sock.recv(65536)
            assert chunk, bytes(received)
            received += chunk
        # the first words are here while the upstream is still sending the rest: nothing held the stream back
        assert fake_upstream.in_flight == 1
        while b"event: message_stop" not in received:
            chunk = sock.recv(65536)
            assert chunk, bytes(received)
            received += chunk
    assert b"HTTP/1.1 200" in received[:20]


def test_nginx_log_names_the_instance_and_agproxy_request_id(team: Tuple[Nginx, Dict[str, Any]]):
    nginx, instances = team
    answer = ask(nginx.port, SESSIONS[0])
    request_id = answer.headers.get("request-id")
    assert request_id
    deadline = time.monotonic() + 5
    while f"request_id={request_id}" not in nginx.access_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(line for line in nginx.access_log.read_text().splitlines() if f"request_id={request_id}" in line)
    assert f"instance=127.0.0.1:{instances[answer.instance].port}" in line
    assert f"session={SESSIONS[0]}" in line and TEAM_KEY not in line


def test_the_other_instance_takes_over_a_stopped_ones_sessions(team: Tuple[Nginx, Dict[str, Any]]):
    nginx, instances = team
    before = {session: instances_seen[0] for session, instances_seen in where_sessions_go(nginx.port, 2).items()}
    stopped = before[SESSIONS[0]]
    survivor = "two" if stopped == "one" else "one"
    assert instances[stopped].stop() == 0
    after = where_sessions_go(nginx.port, 2)
    assert all(instances_seen == [survivor, survivor] for instances_seen in after.values()), after
    # the survivor's own sessions did not move
    assert all(after[session][0] == survivor for session, instance in before.items() if instance == survivor)
