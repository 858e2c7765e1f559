"""A small Chrome DevTools Protocol driver over ``--remote-debugging-pipe``, standard library only.

Chromium reads commands from its fd 3 and writes answers and events to its fd 4, each message one
JSON object followed by a NUL byte. One :class:`Browser` runs one headless Chromium with a fresh
profile; each :class:`Page` is one tab, attached with a flat session. Every event a page's session
receives is kept (``Page.events``) so that a test can look at console messages, exceptions and the
URLs of the requests the page made.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

#: Where Debian's package puts Chromium (``apt-get install chromium``), then the names on PATH.
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
#: The flags of a quiet, throwaway headless browser: no GPU, no QUIC, no first-run or background
#: traffic (a test must see only the requests its page makes).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--mute-audio", "--remote-debugging-pipe")
#: How long one protocol command may take: a page load on a loaded 2-core machine stays far below.
COMMAND_TIMEOUT_S = 30.0


class BrowserError(Exception):
    """Chromium answered a command with an error, or did not answer in time, or is gone."""


def find_chromium() -> Optional[str]:
    """The path of a Chromium to run, or None when there is none."""
    for candidate in CHROMIUM_CANDIDATES:
        path = candidate if os.path.isabs(candidate) and os.access(candidate, os.X_OK) else shutil.which(candidate)
        if path:
            return path
    return None


def _high_fd(fd: int) -> int:
    """A close-on-exec copy of ``fd`` numbered 10 or above (so that moving it onto 3 or 4 in the
    child cannot overwrite the other pipe's end), the original closed."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Browser:
    """One headless Chromium driven over its debugging pipe."""

    def __init__(self, executable: str) -> None:
        self._profile = tempfile.mkdtemp(prefix="agproxy-chromium-")
        to_child, commands = (_high_fd(fd) for fd in os.pipe())
        answers, from_child = (_high_fd(fd) for fd in os.pipe())
        # bash (dash takes only one-digit fds) puts the pipe ends on fds 3 and 4, where Chromium looks for them
        script = f'exec "$0" "$@" 3<&{to_child} 4>&{from_child} {to_child}<&- {from_child}>&-'
        self.proc = subprocess.Popen(
            ["/bin/bash", "-c", script, executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
             "about:blank"],
            pass_fds=(to_child, from_child), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if os.environ.get("AGPROXY_BROWSER_LOG") is None else None,
        )
        os.close(to_child)
        os.close(from_child)
        self._out = os.fdopen(commands, "wb", buffering=0)
        self._in = os.fdopen(answers, "rb", buffering=0)
        self._lock = threading.Condition()
        self._next_id = 0
        self._answers: Dict[int, Dict[str, Any]] = {}
        self._sessions: Dict[str, Page] = {}
        self._gone = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # -- the pipe ------------------------------------------------------------------------

    def _read(self) -> None:
        buffer = bytearray()
        while True:
            data = self._in.read(65536)
            if not data:
                break
            buffer += data
            while b"\0" in buffer:
                end = buffer.index(b"\0")
                message = json.loads(bytes(buffer[:end]))
                del buffer[:end + 1]
                self._dispatch(message)
        with self._lock:
            self._gone = True
            self._lock.notify_all()

    def _dispatch(self, message: Dict[str, Any]) -> None:
        with self._lock:
            if "id" in message:
                self._answers[message["id"]] = message
            else:
                page = self._sessions.get(message.get("sessionId", ""))
                if page is not None:
                    page.events.append(message)
            self._lock.notify_all()

    def send(self, method: str, params: Optional[Dict[str, Any]] = None, session: Optional[str] = None,
             timeout: float = COMMAND_TIMEOUT_S) -> Dict[str, Any]:
        """Send one command and wait for its result."""
        with self._lock:
            self._next_id += 1
            number = self._next_id
        message: Dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._out.write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._lock:
            while number not in self._answers:
                left = deadline - time.monotonic()
                if self._gone or left <= 0:
                    raise BrowserError(f"no answer to {method} ({'Chromium is gone' if self._gone else 'timeout'})")
                self._lock.wait(left)
            answer = self._answers.pop(number)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def wait(self, ready: Any, timeout: float) -> bool:
        """Wait until ``ready()`` (called under the lock, after each message) is true; False at the timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0 or self._gone:
                    return False
                self._lock.wait(left)
        return True

    # -- pages -----------------------------------------------------------------------------

    def new_page(self, width: int = 1400, height: int = 900) -> Page:
        """A fresh tab of the given viewport, its console, log, network and page events recorded.
        Each tab gets its own browser context, so that session storage is not shared between tests."""
        context = self.send("Target.createBrowserContext")["browserContextId"]
        target = self.send("Target.createTarget", {"url": "about:blank", "browserContextId": context})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, target)
        with self._lock:
            self._sessions[session] = page
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable")
        page.resize(width, height)
        return page

    def close(self) -> None:
        """Ask Chromium to quit, then make sure it did, and remove its profile."""
        try:
            self.send("Browser.close", timeout=5)
        except BrowserError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._out.close()
        self._reader.join(5)
        self._in.close()
        shutil.rmtree(self._profile, ignore_errors=True)


class Page:
    """One tab: commands go to its session, its events are kept in ``events``."""

    def __init__(self, browser: Browser, session: str, target: str) -> None:
        self.browser = browser
        self.session = session
        self.target = target
        self.events: List[Dict[str, Any]] = []

    def send(self, method: str, params: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return self.browser.send(method, params, self.session)

    def resize(self, width: int, height: int, mobile: bool = False) -> None:
        """Emulate a viewport of that size (a phone's when ``mobile``)."""
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})

    def navigate(self, url: str, timeout: float = COMMAND_TIMEOUT_S) -> None:
        """Load ``url`` and wait for its load event."""
        seen = len(self.events)
        self.send("Page.navigate", {"url": url})
        if not self.browser.wait(lambda: any(e.get("method") == "Page.loadEventFired" for e in self.events[seen:]),
                                 timeout):
            raise BrowserError(f"{url} did not load within {timeout} s")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll a JavaScript expression until it is truthy; its value (BrowserError at the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"{expression!r} was still {value!r} after {timeout} s")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the viewport."""
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def problems(self) -> List[str]:
        """Every console error or warning, uncaught exception and error-level log entry seen so far."""
        found = []
        for event in list(self.events):
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                found.append(f"console.{params['type']}: " + " ".join(str(a.get("value", a.get("description")))
                                                                      for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append("exception: " + str(details.get("exception", {}).get("description") or details))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
                entry = params["entry"]
                found.append(f"log {entry['level']}: {entry.get('text')} {entry.get('url', '')}")
        return found

    def request_urls(self) -> List[str]:
        """The URL of every request the page has made (Network.requestWillBeSent)."""
        return [e["params"]["request"]["url"] for e in list(self.events)
                if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target})
