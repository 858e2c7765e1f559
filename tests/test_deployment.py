"""The deployment recipes in examples/ do what docs/deployment.md says, run for real on this machine.

nginx (Debian's package) runs examples/nginx.conf as shipped, only its ports and log path swapped for
the test's, in front of two agproxy processes. Each instance's one account has its own name, so
``X-Account-Email`` tells which instance answered. Those tests are skipped, with the reason, when nginx
is absent. The systemd unit's command runs with the unit's environment, and the Containerfile's
instructions are carried out by hand, since neither systemd as PID 1 nor a Docker daemon is here.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

import agproxy
from tests.conftest import ROOT, Agproxy, clean_env
from tests.fakes.anthropic_upstream import FakeAnthropic, Json, Sse, text_stream, tool_and_thinking_stream

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
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx-light; "
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
def team(tmp_path: Path, fake: FakeAnthropic, start_agproxy: Any) -> Iterator[Tuple[Nginx, Dict[str, Any]]]:
    """Two agproxy processes, "one" and "two", behind nginx running examples/nginx.conf."""
    instances = {name: start_agproxy(instance_config(fake, name), process=True) for name in ("one", "two")}
    nginx = Nginx(tmp_path / "nginx", [proxy.port for proxy in instances.values()])
    try:
        yield nginx.start(), instances
    finally:
        nginx.stop()


@needs_nginx
def test_the_nginx_example_is_a_valid_config(tmp_path: Path):
    checked = Nginx(tmp_path / "nginx", [8045, 8046]).test_config()
    assert checked.returncode == 0, checked.stderr


@needs_nginx
def test_one_session_stays_on_one_instance_and_sessions_spread_over_both(team: Tuple[Nginx, Dict[str, Any]]):
    nginx, _ = team
    seen = where_sessions_go(nginx.port)
    moved = {session: instances for session, instances in seen.items() if len(set(instances)) != 1}
    assert not moved, f"sessions answered by more than one instance: {moved}"
    assert {instances[0] for instances in seen.values()} == {"one", "two"}
    # a client without a session id (curl, the SDKs) is spread too, not all sent to one instance
    assert {ask(nginx.port, None).instance for _ in range(16)} == {"one", "two"}


class Stream:
    """A streamed /v1/messages through nginx on a socket of its own, read as far as a test asks."""

    def __init__(self, port: int, session: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        body = _messages_body(True)
        head = "".join(f"{name}: {value}\r\n" for name, value in _headers(session).items())
        self.sock.sendall(f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Length: {len(body)}\r\n"
                          "Connection: close\r\n\r\n".encode() + body)
        self.received = bytearray()

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.received:
            chunk = self.sock.recv(65536)
            assert chunk, bytes(self.received)
            self.received += chunk
        return bytes(self.received)

    def close(self) -> None:
        self.sock.close()


@needs_nginx
def test_nginx_passes_each_event_on_as_it_comes(team: Tuple[Nginx, Dict[str, Any]], fake: FakeAnthropic):
    nginx, _ = team
    fake.script(Sse(text_stream("one two three four five six seven eight"), delay_s=0.25))
    stream = Stream(nginx.port, SESSIONS[0])
    try:
        assert stream.read_until(b"event: content_block_delta").startswith(b"HTTP/1.1 200")
        # the first words are here while the upstream is still sending the rest: nothing held the stream back
        assert fake.in_flight == 1
        stream.read_until(b"event: message_stop")
    finally:
        stream.close()


@needs_nginx
def test_a_stopping_instance_finishes_its_stream_while_the_other_takes_new_requests(
        team: Tuple[Nginx, Dict[str, Any]], fake: FakeAnthropic):
    """A rolling restart: SIGTERM to the instance serving a stream; the stream ends whole, and the
    session's next request goes to the other instance."""
    nginx, instances = team
    stopping = ask(nginx.port, SESSIONS[0]).instance
    fake.script(Sse(text_stream("one two three four five six seven eight"), delay_s=0.2))
    stream = Stream(nginx.port, SESSIONS[0])
    try:
        stream.read_until(b"event: content_block_delta")
        instances[stopping].proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while "stopping: no new connections" not in instances[stopping].log() and time.monotonic() < deadline:
            time.sleep(0.02)
        answer = ask(nginx.port, SESSIONS[0])
        assert answer.status == 200 and answer.instance != stopping
        assert stream.read_until(b"event: message_stop").count(b"event: content_block_delta") == 8  # every word
    finally:
        stream.close()
    assert instances[stopping].proc.wait(10) == 0  # a second SIGTERM (stop()) could land after its handler is gone


@needs_nginx
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


@needs_nginx
def test_agproxy_sees_the_host_and_port_the_client_used(team: Tuple[Nginx, Dict[str, Any]]):
    """A base URL ending in /v1 is answered with the base URL to use: nginx's, port included."""
    nginx, _ = team
    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=20)
    conn.request("POST", "/v1/v1/messages", _messages_body(False), _headers(SESSIONS[0]))
    response = conn.getresponse()
    said = json.loads(response.read())["error"]["message"]
    assert response.status == 400 and f"ANTHROPIC_BASE_URL=http://127.0.0.1:{nginx.port}," in said, said


@needs_nginx
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


def _newest_claude_code() -> Optional[Path]:
    found = sorted((ROOT / ".cache" / "claude-code").glob("*/node_modules/.bin/claude"), reverse=True)
    return found[0] if found else None


@needs_nginx
@pytest.mark.skipif(_newest_claude_code() is None, reason="Claude Code CLI not installed under .cache/claude-code "
                                                          "(make claude-cli)")
def test_claude_codes_session_stays_on_one_instance(team: Tuple[Nginx, Dict[str, Any]], tmp_path: Path,
                                                   fake: FakeAnthropic):
    """The real CLI through nginx: both turns of its session (the upstream asks for a tool, Claude Code
    sends its result) carry one X-Claude-Code-Session-Id and reach one instance."""
    nginx, instances = team
    fake.script(Sse(tool_and_thinking_stream()))  # asks for Bash `ls -la`; the next turn gets the default
    home, work = tmp_path / "claude-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / ".claude.json").write_text(json.dumps({"hasCompletedOnboarding": True}))
    env = clean_env(HOME=str(home), ANTHROPIC_BASE_URL=f"http://127.0.0.1:{nginx.port}", ANTHROPIC_AUTH_TOKEN=TEAM_KEY,
                    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
    result = subprocess.run([str(_newest_claude_code()), "-p", "list files", "--allowedTools", "Bash"], cwd=work,
                            env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Hello from the fake upstream." in result.stdout
    lines = [line for line in nginx.access_log.read_text().splitlines() if "POST /v1/messages" in line]
    sessions = {re.search(r"session=(\S*)", line).group(1) for line in lines}
    answered_by = {re.search(r"instance=(\S+)", line).group(1) for line in lines}
    assert len(lines) >= 2 and len(sessions) == 1 and "" not in sessions, lines
    assert len(answered_by) == 1 and answered_by <= {f"127.0.0.1:{proxy.port}" for proxy in instances.values()}


# -- the systemd unit ---------------------------------------------------------------------------

UNIT = ROOT / "examples" / "agproxy.service"
RATE_LIMITED = Json(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
                    [("retry-after", "300")])


def unit_settings(path: Path) -> Dict[str, List[str]]:
    """Each key of the unit's [Service] section with its values in order (Environment= may repeat)."""
    settings: Dict[str, List[str]] = {}
    section = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """agproxy.pyz built as `make build` does."""
    built = tmp_path_factory.mktemp("pyz") / "agproxy.pyz"
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_pyz.py"), str(ROOT / "zipapp.spec"), str(built)],
                   check=True, capture_output=True, timeout=120)
    return built


def test_the_unit_sandboxes_agproxy_and_keeps_its_state_in_its_state_directory():
    settings = unit_settings(UNIT)
    for key, value in (("DynamicUser", "yes"), ("ProtectSystem", "strict"), ("StateDirectory", "agproxy"),
                       ("ConfigurationDirectory", "agproxy"), ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                       ("ProtectHome", "yes"), ("Restart", "on-failure"), ("Environment", "XDG_STATE_HOME=%S")):
        assert value in settings.get(key, []), f"{key}={value}"
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "AF_INET" in settings["RestrictAddressFamilies"][0].split()
    # the stop waits for shutdown_grace_s (30 s by default) before systemd would kill agproxy
    assert int(settings["TimeoutStopSec"][0].rstrip("s")) > agproxy.Config.shutdown_grace_s


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed "
                                                                    "(Debian: apt-get install systemd)")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path):
    unit = tmp_path / "agproxy.service"
    shutil.copy(UNIT, unit)
    checked = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "agproxy.service" not in checked.stderr, checked.stderr


def test_the_units_command_runs_with_the_units_environment(tmp_path: Path, pyz: Path, fake: FakeAnthropic):
    """ExecStart by hand, as systemd would run it: the unit's Environment= and EnvironmentFile=, its
    folders moved under tmp_path (%S is /var/lib); the config names its key as a variable."""
    settings = unit_settings(UNIT)
    etc, state_root = tmp_path / "etc" / "agproxy", tmp_path / "var" / "lib"
    etc.mkdir(parents=True)
    state_directory = state_root / settings["StateDirectory"][0]
    state_directory.mkdir(parents=True)  # systemd makes it before the start

    def moved(text: str) -> str:
        return (text.replace("/etc/agproxy", str(etc)).replace("/usr/local/lib/agproxy/agproxy.pyz", str(pyz))
                .replace("%S", str(state_root)))

    (etc / "config.json").write_text(json.dumps({"port": 0, "upstreams": [
        {"name": "anthropic", "kind": "anthropic", "base_url": fake.url, "timeout_s": 30,
         "accounts": [{"name": "team@example.com", "api_key": "${ANTHROPIC_API_KEY}"}]}]}))
    (etc / "agproxy.env").write_text("ANTHROPIC_API_KEY=sk-ant-from-the-environment-file\n")
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    environment_file = Path(moved(settings["EnvironmentFile"][0].lstrip("-")))
    environment.update(line.split("=", 1) for line in environment_file.read_text().splitlines() if "=" in line)
    environment.update(moved(value).split("=", 1) for value in settings["Environment"])
    command = [moved(word) for word in shlex.split(settings["ExecStart"][0])]
    if not os.access(command[0], os.X_OK):
        command[0] = sys.executable
    proxy = Agproxy([], environment, tmp_path, command)
    try:
        fake.script(RATE_LIMITED)
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.request("POST", "/v1/messages", _messages_body(False), {"Content-Type": "application/json"})
        assert conn.getresponse().status == 429
        assert fake.keys() == ["sk-ant-from-the-environment-file"]
        proxy.proc.send_signal(signal.SIGHUP)  # systemctl reload
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        assert proxy.stop() == 0  # systemctl stop: exit 0, so Restart=on-failure leaves it stopped
    saved = [json.loads(path.read_text()) for path in state_directory.glob("*.json")]
    assert [list(state["accounts"]) for state in saved] == [["anthropic/team@example.com"]], proxy.log()
    assert "sk-ant-from-the-environment-file" not in proxy.log()


# -- the container recipe -----------------------------------------------------------------------

CONTAINERFILE = ROOT / "examples" / "Containerfile"


def containerfile_stages(path: Path) -> List[List[Tuple[str, str]]]:
    """The instructions of each stage, (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", "\n".join(line for line in path.read_text(encoding="utf-8").splitlines()
                                             if not line.lstrip().startswith("#")))
    stages: List[List[Tuple[str, str]]] = []
    for line in filter(None, (line.strip() for line in text.splitlines())):
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def test_the_containerfiles_commands_run_by_hand(tmp_path: Path):
    """Each instruction of examples/Containerfile carried out by hand with this Python: the build stage
    makes the .pyz, the image's ENV and command start agproxy on 0.0.0.0 (auth on), the HEALTHCHECK
    passes, the state goes to the VOLUME, and SIGTERM stops it with 0. Port 8045 is swapped for a free one."""
    build, image = containerfile_stages(CONTAINERFILE)
    assert build[0][1].startswith("python:3.12-slim") and image[0][1] == "python:3.12-slim"
    root = tmp_path / "image"
    port = str(_free_port())

    def inside(path: str) -> Path:
        return root / path.lstrip("/")

    def concrete(word: str) -> str:
        return sys.executable if word == "python" else str(inside(word)) if word.startswith("/") \
            else word.replace("8045", port)

    workdir = Path("/")
    for instruction, arguments in build:
        if instruction == "WORKDIR":
            workdir = Path(arguments)
            inside(arguments).mkdir(parents=True)
        elif instruction == "COPY":
            *sources, target = arguments.split()
            for source in sources:
                (inside(str(workdir / target)) / "").mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, inside(str(workdir / target)))
        elif instruction == "RUN":
            subprocess.run([concrete(word) for word in shlex.split(arguments)], cwd=inside(str(workdir)),
                           check=True, capture_output=True, timeout=120)
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    instructions = dict(image[1:])
    for source, target in (words.split()[-2:] for instruction, words in image if instruction == "COPY"):
        origin = inside(source) if source.startswith("/") else ROOT / source  # absolute: from the build stage
        inside(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(origin, inside(target))
    environment.update(word.split("=", 1) for word in shlex.split(instructions["ENV"]))
    environment = {name: str(inside(value)) if value.startswith("/") and name != "PATH" else value
                   for name, value in environment.items()}
    volume = inside(instructions["VOLUME"])
    volume.mkdir(parents=True, exist_ok=True)
    assert instructions["USER"] != "root" and "useradd" in instructions["RUN"]
    assert instructions["EXPOSE"] == "8045"
    command = [concrete(word) for word in json.loads(instructions["ENTRYPOINT"]) + json.loads(instructions["CMD"])]
    assert "0.0.0.0" in command
    proxy = Agproxy([], environment, tmp_path, command)
    try:
        health = json.loads(instructions["HEALTHCHECK"].split(" CMD ", 1)[1])
        checked = subprocess.run([concrete(word) for word in health], env=environment, timeout=30)
        assert checked.returncode == 0
        # bound to 0.0.0.0, auth_mode auto turns auth on: the demo config has no key, so 401
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.request("POST", "/v1/messages", _messages_body(False), {"Content-Type": "application/json"})
        assert conn.getresponse().status == 401
        assert list(volume.iterdir()), "agproxy keeps no state in the VOLUME"
    finally:
        assert proxy.stop() == 0
